//! Decoding, transforming and encoding one image.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use image::ImageFormat;

use super::codec::{self, ImageLimits, JpegDecoder, OutputFormat, Probe};
use super::registry::{TransformContext, TransformRegistry};
use super::spec::TransformSpec;
use crate::error::{Error, ImageErrorKind, Result};

/// The outcome of one job.
#[derive(Debug, Clone)]
pub struct Processed {
    /// Encoded result.
    pub data: Bytes,
    /// Result format.
    pub format: ImageFormat,
    /// Result width.
    pub width: u32,
    /// Result height.
    pub height: u32,
    /// What the source header said.
    pub source: Probe,
    /// Milliseconds decoding.
    pub decode_ms: f64,
    /// Milliseconds transforming.
    pub transform_ms: f64,
    /// Milliseconds encoding.
    pub encode_ms: f64,
}

/// Decode, transform and encode one image.
#[derive(Debug, Clone)]
pub struct Processor {
    registry: Arc<TransformRegistry>,
    limits: ImageLimits,
    jpeg_decoder: JpegDecoder,
}

impl Processor {
    /// A processor using `registry` and `limits`.
    pub fn new(registry: Arc<TransformRegistry>, limits: ImageLimits) -> Self {
        Self {
            registry,
            limits,
            jpeg_decoder: JpegDecoder::default(),
        }
    }

    /// This processor, decoding JPEG images with `decoder`.
    pub fn with_jpeg_decoder(mut self, decoder: JpegDecoder) -> Self {
        self.jpeg_decoder = decoder;
        self
    }

    /// The registry.
    pub fn registry(&self) -> &TransformRegistry {
        &self.registry
    }

    /// The limits.
    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    /// Run `spec` on `data` (CPU-bound: call it on a blocking pool),
    /// within the limits: each operation's output size is checked before
    /// it runs (when the operation can tell it) and after, the time limit
    /// between the stages, the result's size before and after encoding.
    pub fn process(&self, data: &[u8], spec: &TransformSpec) -> Result<Processed> {
        let t0 = Instant::now();
        let deadline = self.limits.job_timeout.map(|t| (t0 + t, t));
        let in_time = |after: &str| -> Result<()> {
            match deadline {
                Some((at, limit)) if Instant::now() > at => Err(Error::image(
                    ImageErrorKind::Timeout,
                    format!(
                        "the job ran over its time limit of {:.1} s ({after})",
                        limit.as_secs_f64()
                    ),
                )),
                _ => Ok(()),
            }
        };
        let decoded = codec::decode_with(data, &self.limits, self.jpeg_decoder)?;
        let t1 = Instant::now();
        let source_format = codec::format_name(decoded.probe.format);
        metrics::histogram!(crate::telemetry::CODEC_SECONDS, "step" => "decode", "format" => source_format)
            .record((t1 - t0).as_secs_f64());
        in_time("after decoding")?;
        let mut ctx = TransformContext {
            source_format: decoded.probe.format,
            output: OutputFormat {
                format: decoded.probe.format,
                quality: codec::DEFAULT_QUALITY,
            },
            orientation: decoded.orientation,
        };
        let mut image = decoded.image;
        let count = spec.ops.len();
        for (i, op) in spec.ops.iter().enumerate() {
            let t = self.registry.lookup(&op.name)?;
            if let Some((w, h)) = t.output_size(&op.args, image.width(), image.height()) {
                self.limits.check_output(&op.name, w, h)?;
            }
            let began = Instant::now();
            image = t.apply(image, &op.args, &mut ctx)?;
            metrics::histogram!(crate::telemetry::TRANSFORM_OPERATION_SECONDS, "operation" => op.name.clone())
                .record(began.elapsed().as_secs_f64());
            self.limits
                .check_output(&op.name, image.width(), image.height())?;
            in_time(&format!(
                "after operation {} of {count}, {}",
                i + 1,
                op.name
            ))?;
        }
        let t2 = Instant::now();
        self.limits.check_encoding(&image, ctx.output.format)?;
        let encoded = codec::encode(&image, ctx.output)?;
        self.limits
            .check_result_size(encoded.len() as u64, ctx.output.format)?;
        let t3 = Instant::now();
        metrics::histogram!(crate::telemetry::CODEC_SECONDS, "step" => "encode", "format" => codec::format_name(ctx.output.format))
            .record((t3 - t2).as_secs_f64());
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
        Ok(Processed {
            data: Bytes::from(encoded),
            format: ctx.output.format,
            width: image.width(),
            height: image.height(),
            source: decoded.probe,
            decode_ms: ms(t0, t1),
            transform_ms: ms(t1, t2),
            encode_ms: ms(t2, t3),
        })
    }

    /// See [`check_spec`].
    pub fn check_spec(&self, spec: &TransformSpec, probe: &Probe) -> Result<()> {
        check_spec(&self.registry, &self.limits, spec, probe)
    }
}

/// Check at upload what can be told without the pixels: the output size of
/// each operation of `spec`, from the header's size, up to the first
/// operation that cannot tell its own (`Transform::output_size`); the rest
/// is checked when the job runs, before each operation.
pub fn check_spec(
    registry: &TransformRegistry,
    limits: &ImageLimits,
    spec: &TransformSpec,
    probe: &Probe,
) -> Result<()> {
    let (mut w, mut h) = (probe.width, probe.height);
    for op in &spec.ops {
        let t = registry.lookup(&op.name)?;
        let Some((ow, oh)) = t.output_size(&op.args, w, h) else {
            return Ok(());
        };
        limits.check_output(&op.name, ow, oh)?;
        (w, h) = (ow, oh);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use image::{DynamicImage, RgbImage};

    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(RgbImage::new(w, h))
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn processor(limits: ImageLimits) -> Processor {
        Processor::new(Arc::new(TransformRegistry::with_builtins()), limits)
    }

    fn kind(e: &Error) -> Option<ImageErrorKind> {
        match e {
            Error::Image { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    #[test]
    fn an_operation_over_the_pixel_limit_is_refused_before_it_runs() {
        let p = processor(ImageLimits::default());
        let spec = TransformSpec::parse("resize:16384x16384:exact").unwrap();
        let err = p.process(&png(1, 1), &spec).unwrap_err();
        assert_eq!(kind(&err), Some(ImageErrorKind::TooManyPixels), "{err}");
        assert!(
            err.to_string()
                .contains("resize would make a 16384x16384 image"),
            "{err}"
        );
        // And at upload, from the header alone.
        let probe = codec::probe(&png(1, 1), p.limits()).unwrap();
        let err = p.check_spec(&spec, &probe).unwrap_err();
        assert!(err.to_string().contains("40000000 pixels"), "{err}");
        // A fit inside the box keeps the aspect ratio: 1x1 -> 6000x6000 is
        // 36 Mpx, under the limit; the chain's second step is not.
        let ok = TransformSpec::parse("resize:6000x6000").unwrap();
        p.check_spec(&ok, &probe).unwrap();
        let chained = TransformSpec::parse("resize:6000x6000,rotate:90,resize:8000x8000").unwrap();
        assert!(p.check_spec(&chained, &probe).is_err());
    }

    #[test]
    fn a_result_too_large_for_its_format_is_refused_before_encoding() {
        let p = processor(ImageLimits {
            max_result_bytes: 10_000,
            ..ImageLimits::default()
        });
        let bmp = TransformSpec::parse("format:bmp").unwrap();
        let err = p.process(&png(100, 100), &bmp).unwrap_err();
        assert_eq!(kind(&err), Some(ImageErrorKind::ResultTooLarge), "{err}");
        // The same pixels compress under the limit as PNG.
        let small = TransformSpec::parse("format:png").unwrap();
        p.process(&png(100, 100), &small).unwrap();
    }

    #[test]
    fn a_job_over_its_time_ends_with_timeout() {
        let p = processor(ImageLimits {
            job_timeout: Some(Duration::ZERO),
            ..ImageLimits::default()
        });
        let spec = TransformSpec::parse("grayscale").unwrap();
        let err = p.process(&png(8, 8), &spec).unwrap_err();
        assert_eq!(kind(&err), Some(ImageErrorKind::Timeout), "{err}");
        assert_eq!(err.code(), "timeout");
        assert!(!err.is_retryable());
    }

    #[test]
    fn predicted_sizes_are_the_sizes_made() {
        let registry = TransformRegistry::with_builtins();
        let specs = [
            "resize:50x50",
            "resize:50x",
            "resize:x7",
            "resize:64x20:fill",
            "resize:13x17:exact",
            "thumbnail:9",
            "thumbnail:40x11",
            "crop:1x1:0:0",
            "rotate:90",
            "flip:h",
            "grayscale",
            "format:png",
        ];
        for (w, h) in [(37u32, 23u32), (23, 37), (5, 5), (100, 1), (1, 100)] {
            let source = DynamicImage::ImageRgb8(RgbImage::new(w, h));
            for text in specs {
                let spec = TransformSpec::parse(text).unwrap();
                let op = &spec.ops[0];
                let t = registry.lookup(&op.name).unwrap();
                let predicted = t.output_size(&op.args, w, h).unwrap();
                let mut ctx = TransformContext {
                    source_format: ImageFormat::Png,
                    output: OutputFormat {
                        format: ImageFormat::Png,
                        quality: 85,
                    },
                    orientation: image::metadata::Orientation::NoTransforms,
                };
                let made = t.apply(source.clone(), &op.args, &mut ctx).unwrap();
                assert_eq!(
                    predicted,
                    (made.width(), made.height()),
                    "{text} on {w}x{h}"
                );
            }
        }
    }
}
