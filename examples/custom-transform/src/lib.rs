//! A custom transformer plugin, `invert` (with an optional channel mask),
//! and the registry that adds it to the built-ins. The binaries of this
//! example are full deployables with the plugin inside:
//!
//! - `example-custom-transform` (`src/main.rs`): the whole command line of
//!   `pipeline` (`serve`, `api`, `transformer`, `save2db`...) via
//!   `pipeline::cli::run`;
//! - `invert-worker` (`src/bin/invert-worker.rs`): a transformer embedded
//!   with the builder.

use bytes::Bytes;
use image::DynamicImage;
use pipeline::core::transform::{TransformContext, codec};
use pipeline::{Error, Result, Transform, TransformRegistry};

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

/// The built-in transforms plus [`Invert`].
pub fn registry() -> Result<TransformRegistry> {
    let mut registry = TransformRegistry::with_builtins();
    registry.register(Invert)?;
    Ok(registry)
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
    use std::time::Duration;

    use pipeline::core::JobState;
    use pipeline::{Pipeline, Roles};

    use super::*;

    /// The plugin through a whole in-process pipeline built with the
    /// builder (memory broker and archive).
    async fn through_pipeline(spec: &str) -> Result<pipeline::core::JobStatus> {
        let running = Pipeline::builder()
            .roles(Roles::ALL)
            .registry(registry()?)
            .database_url("memory://")
            .start()
            .await?;
        let submitted = running.submit("example", sample_png()?, Some(spec)).await;
        let done = match submitted {
            Ok(accepted) => running.finished(accepted.id, Duration::from_secs(30)).await,
            Err(e) => Err(e),
        };
        running.shutdown().await?;
        done
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invert_runs_through_the_pipeline() {
        let done = through_pipeline("invert:rg,format:png").await.unwrap();
        assert_eq!(done.state, JobState::Done, "{:?}", done.error);
        let result = done.result.expect("result bytes");
        assert_eq!(result.content_type, "image/png");
        let img = image::load_from_memory(&result.data).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (64, 48));
        assert_eq!(img.get_pixel(10, 40).0, [55, 245, 10]);
    }

    #[test]
    fn invert_passes_the_transform_suite() {
        pipeline_core::testkit::transform::check_transform(&Invert);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_arguments_are_refused_before_publishing() {
        let err = through_pipeline("invert:xyz").await.unwrap_err();
        assert!(err.to_string().contains("channel mask"), "{err}");
    }
}
