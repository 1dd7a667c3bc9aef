//! Large files by reference: the in-memory pipeline with a claim check on a
//! directory. Uploads above the inline limit are stored in the directory
//! and the messages carry a reference; the transformer stores its large
//! result there too; the archive keeps references; readers resolve them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pipeline_core::blob::FileBlobStore;
use pipeline_core::memory::{MemoryArchive, MemoryBroker, MemoryResultStore};
use pipeline_core::services::{
    self, ActivityRecorder, ResultsConsumer, Save2Db, SubmitConfig, Submitter, Transformer,
    TransformerConfig, Upload,
};
use pipeline_core::store::Blob;
use pipeline_core::transform::{BlockingPool, ImageLimits, Processor};
use pipeline_core::{
    BlobRef, BlobStore, Broker, ClaimCheck, Error, ImageStore, Result, ResultStore,
    TransformRegistry,
};

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
    let claim = ClaimCheck::new(blobs.clone(), inline_max);
    let registry = Arc::new(TransformRegistry::with_builtins());
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let results: Arc<dyn ResultStore> = Arc::new(MemoryResultStore::new());
    let archive = Arc::new(MemoryArchive::new());
    broker.declare(&services::topology(3)).await?;

    let pool = BlockingPool::per_core();
    let transformer = Transformer::new(
        broker.clone(),
        Processor::new(registry.clone(), ImageLimits::default()),
        pool.clone(),
        TransformerConfig {
            worker_id: services::worker_id("example"),
            default_spec: registry.parse("stamp")?,
            prefetch: 2,
            retry: pipeline_core::Backoff::default(),
        },
    )
    .with_claim_check(claim.clone());
    let never = || std::future::pending::<()>();
    let workers = [
        tokio::spawn(transformer.run(never())),
        tokio::spawn(
            ResultsConsumer::new(broker.clone(), results.clone(), Duration::from_secs(60), 8)
                .run(never()),
        ),
        tokio::spawn(Save2Db::new(broker.clone(), archive.clone(), 16).run(never())),
        tokio::spawn(ActivityRecorder::new(broker.clone(), archive.clone(), 16).run(never())),
    ];

    let submitter = Submitter::new(
        broker.clone(),
        results.clone(),
        registry,
        pool,
        SubmitConfig::default(),
    )
    .await?
    .with_claim_check(claim.clone());
    let spec = submitter.resolve_spec(None, None)?;
    let probe = submitter.validate(image.clone()).await?;
    let upload = Upload {
        tenant: "example".into(),
        filename: Some("noise.png".into()),
        data: image,
    };
    let accepted = submitter.submit(upload, probe, &spec).await?;
    let done = results
        .wait(accepted.id, Duration::from_secs(60))
        .await?
        .ok_or_else(|| Error::NotFound(format!("job {}", accepted.id)))?;
    let result = done
        .result
        .ok_or_else(|| Error::NotFound(format!("job {} has no result", accepted.id)))?;
    let result_reference = BlobRef::of_blob(&result)?;
    let result = claim.resolve(result).await?;

    // Close drains the queues (archive, activity), then the workers end.
    broker.close().await?;
    for w in workers {
        w.await.map_err(|e| Error::Closed(e.to_string()))??;
    }
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
