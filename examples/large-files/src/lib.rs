//! Large files by reference: the in-memory pipeline with a claim check on a
//! directory. Uploads above the inline limit are stored in the directory
//! and the messages carry a reference; the transformer stores its large
//! result there too; the archive keeps references; readers resolve them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pipeline::core::blob::FileBlobStore;
use pipeline::core::memory::MemoryArchive;
use pipeline::core::store::Blob;
use pipeline::core::{BlobRef, BlobStore, ClaimCheck, ImageStore};
use pipeline::{Archive, Error, Pipeline, Result};

/// What came out of [`run_by_reference`].
#[derive(Debug)]
pub struct Outcome {
    /// How the original was archived: a reference, as the message carried it.
    pub archived_original: Option<BlobRef>,
    /// How the result reached the result store.
    pub result_reference: Option<BlobRef>,
    /// The result's bytes, resolved through the blob store.
    pub result: Blob,
    /// Blobs in the directory (original and result).
    pub blobs_stored: usize,
}

/// A noise PNG of `side` x `side` pixels (about 3 bytes a pixel: noise does
/// not compress).
pub fn noise_png(side: u32) -> Result<Bytes> {
    let mut rng = fastrand::Rng::with_seed(1);
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::invalid(format!("encode the sample: {e}")))?;
    Ok(Bytes::from(out.into_inner()))
}

/// Send `image` through the in-memory pipeline with files above
/// `inline_max` bytes going to a blob store in `dir`.
pub async fn run_by_reference(dir: &Path, image: Bytes, inline_max: usize) -> Result<Outcome> {
    let blobs: Arc<dyn BlobStore> = Arc::new(FileBlobStore::open(dir).await?);
    let archive = Arc::new(MemoryArchive::new());
    let running = Pipeline::builder()
        .archive(Archive {
            images: archive.clone(),
            activity: archive.clone(),
            blobs: blobs.clone(),
            keys: archive.clone(),
        })
        .blobs(blobs.clone())
        .configure(|s| s.inline_max = inline_max)
        .start()
        .await?;
    let accepted = running.submit("example", image, None).await?;
    let done = running
        .finished(accepted.id, Duration::from_secs(60))
        .await?;
    let result = done
        .result
        .ok_or_else(|| Error::NotFound(format!("job {} has no result", accepted.id)))?;
    let result_reference = BlobRef::of_blob(&result)?;
    let result = ClaimCheck::new(blobs.clone(), inline_max)
        .resolve(result)
        .await?;
    // The in-memory broker drains its queues (archive, activity) first.
    running.shutdown().await?;
    let archived = archive
        .original(accepted.id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("job {} not archived", accepted.id)))?;
    Ok(Outcome {
        archived_original: BlobRef::of_blob(&archived)?,
        result_reference,
        result,
        blobs_stored: blobs.stored_before(i64::MAX).await?.len(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_image_travels_by_reference() {
        let dir = tempfile::tempdir().unwrap();
        let image = noise_png(1200).unwrap();
        assert!(image.len() > 4_000_000);
        let out = run_by_reference(dir.path(), image.clone(), 1024 * 1024)
            .await
            .unwrap();
        let original = out.archived_original.expect("archived by reference");
        assert_eq!(original.size, image.len() as u64);
        assert!(
            out.result_reference.is_some(),
            "the result went by reference"
        );
        let img = image::load_from_memory(&out.result.data).unwrap();
        assert_eq!((img.width(), img.height()), (1200, 1200));
        assert_eq!(out.blobs_stored, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_image_stays_inline() {
        let dir = tempfile::tempdir().unwrap();
        let image = noise_png(100).unwrap();
        let out = run_by_reference(dir.path(), image, 1024 * 1024)
            .await
            .unwrap();
        assert!(out.archived_original.is_none());
        assert!(out.result_reference.is_none());
        assert_eq!(out.blobs_stored, 0);
    }
}
