//! Decoding, transforming and encoding one image.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use image::ImageFormat;

use super::codec::{self, ImageLimits, OutputFormat, Probe};
use super::registry::{TransformContext, TransformRegistry};
use super::spec::TransformSpec;
use crate::error::Result;

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
}

impl Processor {
    /// A processor using `registry` and `limits`.
    pub fn new(registry: Arc<TransformRegistry>, limits: ImageLimits) -> Self {
        Self { registry, limits }
    }

    /// The registry.
    pub fn registry(&self) -> &TransformRegistry {
        &self.registry
    }

    /// The limits.
    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    /// Run `spec` on `data` (CPU-bound: call it on a blocking pool).
    pub fn process(&self, data: &[u8], spec: &TransformSpec) -> Result<Processed> {
        let t0 = Instant::now();
        let decoded = codec::decode(data, &self.limits)?;
        let t1 = Instant::now();
        let mut ctx = TransformContext {
            source_format: decoded.probe.format,
            output: OutputFormat {
                format: decoded.probe.format,
                quality: codec::DEFAULT_QUALITY,
            },
            orientation: decoded.orientation,
        };
        let mut image = decoded.image;
        for op in &spec.ops {
            let t = self.registry.lookup(&op.name)?;
            image = t.apply(image, &op.args, &mut ctx)?;
        }
        let t2 = Instant::now();
        let encoded = codec::encode(&image, ctx.output)?;
        let t3 = Instant::now();
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
}
