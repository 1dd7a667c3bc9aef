//! A custom transformer plugin: `invert`, with an optional channel mask
//! argument, registered by name and run through the in-memory pipeline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use image::DynamicImage;
use pipeline_core::memory::{MemoryArchive, MemoryBroker, MemoryResultStore};
use pipeline_core::services::{
    self, ActivityRecorder, ResultsConsumer, Save2Db, SubmitConfig, Submitter, Transformer,
    TransformerConfig, Upload,
};
use pipeline_core::transform::{BlockingPool, ImageLimits, Processor, TransformContext, codec};
use pipeline_core::{Broker, Error, JobStatus, Result, ResultStore, Transform, TransformRegistry};

/// Inverts the colour channels: `invert` (all) or `invert:rgb`, `invert:r`...
#[derive(Debug)]
pub struct Invert;

impl Invert {
    /// Typed parameters: which channels to invert.
    fn channels(args: &[String]) -> Result<[bool; 3]> {
        match args {
            [] => Ok([true; 3]),
            [mask] if !mask.is_empty() && mask.chars().all(|c| "rgb".contains(c)) => {
                Ok([mask.contains('r'), mask.contains('g'), mask.contains('b')])
            }
            _ => Err(Error::invalid(format!(
                "invert: {args:?} is not a channel mask like rgb, r or gb"
            ))),
        }
    }
}

impl Transform for Invert {
    fn name(&self) -> &str {
        "invert"
    }

    fn usage(&self) -> &str {
        "invert[:CHANNELS] (CHANNELS among r, g, b; default all)"
    }

    fn validate(&self, args: &[String]) -> Result<()> {
        Self::channels(args).map(|_| ())
    }

    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        let mask = Self::channels(args)?;
        let mut rgb = image.into_rgb8();
        for p in rgb.pixels_mut() {
            for (c, on) in mask.iter().enumerate() {
                if *on {
                    p[c] = 255 - p[c];
                }
            }
        }
        Ok(DynamicImage::ImageRgb8(rgb))
    }
}

/// Run one image through a whole in-memory pipeline whose registry has the
/// built-ins plus [`Invert`]; returns the finished job.
pub async fn run_through_pipeline(image: Bytes, spec: &str) -> Result<JobStatus> {
    let mut registry = TransformRegistry::with_builtins();
    registry.register(Invert)?;
    let registry = Arc::new(registry);

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
            default_spec: registry.parse("invert")?,
            prefetch: 4,
            retry: pipeline_core::Backoff::default(),
        },
    );
    let never = futures_pending;
    let workers = [
        tokio::spawn(transformer.run(never())),
        tokio::spawn(
            ResultsConsumer::new(broker.clone(), results.clone(), Duration::from_secs(60), 8)
                .run(never()),
        ),
        tokio::spawn(Save2Db::new(broker.clone(), archive.clone(), 16).run(never())),
        tokio::spawn(ActivityRecorder::new(broker.clone(), archive, 16).run(never())),
    ];

    let submitter = Submitter::new(
        broker.clone(),
        results.clone(),
        registry,
        pool,
        SubmitConfig::default(),
    )
    .await?;
    let spec = submitter.resolve_spec(Some(spec), None)?;
    let probe = submitter.validate(image.clone()).await?;
    let accepted = submitter
        .submit(
            Upload {
                tenant: "example".into(),
                filename: None,
                data: image,
            },
            probe,
            &spec,
        )
        .await?;
    let done = results
        .wait(accepted.id, Duration::from_secs(30))
        .await?
        .ok_or_else(|| Error::NotFound(format!("job {}", accepted.id)))?;

    // Close drains the queues (archive, activity), then the workers end.
    broker.close().await?;
    for w in workers {
        w.await.map_err(|e| Error::Closed(e.to_string()))??;
    }
    Ok(done)
}

async fn futures_pending() {
    std::future::pending::<()>().await
}

/// A small red PNG to try it on.
pub fn sample_png() -> Result<Bytes> {
    let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        64,
        48,
        image::Rgb([200, 10, 10]),
    ));
    let out = codec::encode(
        &img,
        codec::OutputFormat {
            format: image::ImageFormat::Png,
            quality: 85,
        },
    )?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use pipeline_core::JobState;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invert_runs_through_the_pipeline() {
        let done = run_through_pipeline(sample_png().unwrap(), "invert:rg,format:png")
            .await
            .unwrap();
        assert_eq!(done.state, JobState::Done, "{:?}", done.error);
        let result = done.result.expect("result bytes");
        assert_eq!(result.content_type, "image/png");
        let img = image::load_from_memory(&result.data).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (64, 48));
        assert_eq!(img.get_pixel(10, 40).0, [55, 245, 10]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_arguments_are_refused_before_publishing() {
        let err = run_through_pipeline(sample_png().unwrap(), "invert:xyz")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("channel mask"), "{err}");
    }
}
