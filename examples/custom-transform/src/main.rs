//! Run with: cargo run -p example-custom-transform
//!
//! Registers the `invert` plugin next to the built-in transforms, sends a
//! red PNG through the in-memory pipeline and prints what came back.

use example_custom_transform::{run_through_pipeline, sample_png};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let done = run_through_pipeline(sample_png()?, "invert,format:png").await?;
    let result = done.result.ok_or("the job produced no result")?;
    println!(
        "job {} is {:?}: {} bytes of {} (spec {})",
        done.job_id,
        done.state,
        result.data.len(),
        result.content_type,
        done.spec
    );
    Ok(())
}
