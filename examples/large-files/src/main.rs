//! Run with: cargo run --release -p example-large-files
//!
//! Sends a 12 MB noise PNG through the in-memory pipeline with every file
//! above 1 MiB going by reference to a temporary directory.

use example_large_files::{noise_png, run_by_reference};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let image = noise_png(2000)?;
    println!("uploading {:.1} MB", image.len() as f64 / 1e6);
    let out = run_by_reference(dir.path(), image, 1024 * 1024).await?;
    if let Some(r) = &out.archived_original {
        println!(
            "original archived by reference: {} ({} bytes)",
            r.key, r.size
        );
    }
    if let Some(r) = &out.result_reference {
        println!("result sent by reference: {} ({} bytes)", r.key, r.size);
    }
    println!(
        "result resolved: {} bytes of {}; {} blobs in {}",
        out.result.data.len(),
        out.result.content_type,
        out.blobs_stored,
        dir.path().display()
    );
    Ok(())
}
