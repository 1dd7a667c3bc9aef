//! Transforms: the `Transform` plugin trait, the registry, the built-in
//! operations and the job processor that decodes, transforms and encodes.

mod builtins;
pub mod codec;
mod pool;
mod spec;
mod stamp;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use image::{DynamicImage, ImageFormat, metadata::Orientation};

pub use codec::{ImageLimits, OutputFormat, Probe};
pub use pool::BlockingPool;
pub use spec::{MAX_OPERATIONS, Operation, TransformSpec};
pub use stamp::{draw_text, stamp_text};

use crate::error::{Error, Result};

/// What a transform can see and change besides the pixels.
#[derive(Debug, Clone)]
pub struct TransformContext {
    /// Format of the uploaded image.
    pub source_format: ImageFormat,
    /// Format and quality the result will be encoded in (initially the source's).
    pub output: OutputFormat,
    /// EXIF orientation of the source, not yet applied.
    pub orientation: Orientation,
}

/// A named, pure, CPU-bound operation on a decoded image.
///
/// # Contract
/// - `validate` accepts exactly the arguments `apply` accepts, without an
///   image, so bad specs are refused at upload time with a clear message.
/// - `apply` is deterministic for given pixels and arguments, except where
///   documented (the `stamp` draws the time and random characters).
/// - Errors are returned, not panicked; a panic is still contained by the
///   worker and fails only its job.
pub trait Transform: Send + Sync + 'static {
    /// The name used in specs.
    fn name(&self) -> &str;
    /// One line on what it does and its arguments, for error messages and docs.
    fn usage(&self) -> &str;
    /// Check arguments.
    fn validate(&self, args: &[String]) -> Result<()>;
    /// Transform `image`.
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        ctx: &mut TransformContext,
    ) -> Result<DynamicImage>;
}

/// Transforms by name.
#[derive(Clone, Default)]
pub struct TransformRegistry {
    transforms: BTreeMap<String, Arc<dyn Transform>>,
}

impl fmt::Debug for TransformRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransformRegistry")
            .field("transforms", &self.transforms.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TransformRegistry {
    /// A registry without any transform.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry with the built-in transforms.
    pub fn with_builtins() -> Self {
        let mut r = Self::empty();
        for t in builtins::all() {
            r.transforms.insert(t.name().to_string(), t);
        }
        r
    }

    /// Add a transform; its name must be new.
    pub fn register(&mut self, transform: impl Transform) -> Result<()> {
        let name = transform.name().to_string();
        if self.transforms.contains_key(&name) {
            return Err(Error::AlreadyExists(format!(
                "transform {name:?} is already registered"
            )));
        }
        self.transforms.insert(name, Arc::new(transform));
        Ok(())
    }

    /// The transform called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Transform>> {
        self.transforms.get(name)
    }

    /// Names and usage lines of every transform.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.transforms
            .values()
            .map(|t| (t.name().to_string(), t.usage().to_string()))
            .collect()
    }

    /// Check every operation of `spec` (known name, valid arguments).
    pub fn validate(&self, spec: &TransformSpec) -> Result<()> {
        for op in &spec.ops {
            let t = self.lookup(&op.name)?;
            t.validate(&op.args).map_err(|e| match e {
                Error::InvalidInput(m) => {
                    Error::InvalidInput(format!("{m} (usage: {})", t.usage()))
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// Parse and validate a spec string.
    pub fn parse(&self, spec: &str) -> Result<TransformSpec> {
        let spec = TransformSpec::parse(spec)?;
        self.validate(&spec)?;
        Ok(spec)
    }

    fn lookup(&self, name: &str) -> Result<&Arc<dyn Transform>> {
        self.transforms.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.transforms.keys().map(String::as_str).collect();
            Error::invalid(format!(
                "unknown transform {name:?}; known transforms: {}",
                known.join(", ")
            ))
        })
    }
}

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
