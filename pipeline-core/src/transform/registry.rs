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
    /// Its arguments, in order, for catalogues and generated forms
    /// (`GET /v1/transforms`). The default describes none.
    fn params(&self) -> Vec<Param> {
        Vec::new()
    }
    /// Whether `apply` gives the same pixels for the same input and
    /// arguments (the default); the stamp, which draws the time and random
    /// characters, is not.
    fn deterministic(&self) -> bool {
        true
    }
    /// The size `apply` gives an image of `width` x `height`, when it can
    /// be told from the arguments alone. It is checked against the limits
    /// before `apply` runs, and at upload, so a spec that would make a huge
    /// image is refused before it allocates anything. `None` (the default)
    /// means unknown: the output is then checked only after `apply`.
    /// A transform that can enlarge an image should say by how much.
    fn output_size(&self, args: &[String], width: u32, height: u32) -> Option<(u32, u32)> {
        let _ = (args, width, height);
        None
    }
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

/// What kind of value an argument takes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// A whole number.
    Integer,
    /// A decimal number.
    Number,
    /// `WxH`, `Wx`, `xH` or `N` pixels.
    Size,
    /// One of [`Param::choices`].
    Choice,
    /// Free text.
    Text,
}

/// One argument of a transform.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Param {
    /// Its name in usage lines and forms.
    pub name: String,
    /// What it takes.
    pub kind: ParamKind,
    /// Whether it must be given (optional ones come last).
    pub required: bool,
    /// What it does.
    pub description: String,
    /// The accepted values of a [`ParamKind::Choice`].
    pub choices: Vec<String>,
    /// Smallest value (numbers; each side of a size).
    pub min: Option<f64>,
    /// Largest value.
    pub max: Option<f64>,
    /// Value when left out.
    pub default: Option<String>,
}

impl Param {
    /// A required argument.
    pub fn new(name: &str, kind: ParamKind, description: &str) -> Self {
        Self {
            name: name.to_string(),
            kind,
            required: true,
            description: description.to_string(),
            choices: Vec::new(),
            min: None,
            max: None,
            default: None,
        }
    }

    /// Optional, with `default` (if it has one).
    pub fn optional(mut self, default: Option<&str>) -> Self {
        self.required = false;
        self.default = default.map(str::to_string);
        self
    }

    /// Bounds of a number (or of each side of a size).
    pub fn range(mut self, min: f64, max: f64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }

    /// The values of a choice.
    pub fn choices(mut self, choices: &[&str]) -> Self {
        self.choices = choices.iter().map(|c| c.to_string()).collect();
        self
    }
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

    /// Every transform, by name.
    pub fn transforms(&self) -> impl Iterator<Item = &Arc<dyn Transform>> {
        self.transforms.values()
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
