//! The [`Transform`] plugin trait and the [`TransformRegistry`] of
//! transforms by name.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use image::{DynamicImage, ImageFormat, metadata::Orientation};

use super::codec::OutputFormat;
use super::spec::TransformSpec;
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
        for t in super::builtins::all() {
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

    pub(crate) fn lookup(&self, name: &str) -> Result<&Arc<dyn Transform>> {
        self.transforms.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.transforms.keys().map(String::as_str).collect();
            Error::invalid(format!(
                "unknown transform {name:?}; known transforms: {}",
                known.join(", ")
            ))
        })
    }
}
