//! Transforms: the `Transform` plugin trait, the registry, the built-in
//! operations and the job processor that decodes, transforms and encodes
//! (feature `image`, on by default), plus what needs no codec: the
//! [`TransformSpec`] language and the [`BlockingPool`] for CPU-bound work.

#[cfg(feature = "image")]
mod builtins;
#[cfg(feature = "image")]
pub mod codec;
mod pool;
#[cfg(feature = "image")]
mod processor;
#[cfg(feature = "image")]
mod registry;
mod spec;
#[cfg(feature = "image")]
mod stamp;
#[cfg(feature = "image")]
mod structure;

#[cfg(feature = "image")]
pub use codec::{ImageLimits, JpegDecoder, OutputFormat, Probe};
pub use pool::BlockingPool;
#[cfg(feature = "image")]
pub use processor::{Processed, Processor, check_spec};
#[cfg(feature = "image")]
pub use registry::{Param, ParamKind, Transform, TransformContext, TransformRegistry};
pub use spec::{MAX_OPERATIONS, Operation, TransformSpec};
#[cfg(feature = "image")]
pub use stamp::{draw_text, stamp_text};
