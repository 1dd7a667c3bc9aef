//! # pipeline-core
//!
//! The core of the pipeline SDK: traits for pluggable backends ([`Broker`],
//! [`ImageStore`], [`ActivityLog`], [`ResultStore`], [`BlobStore`]), the
//! message [`Envelope`] and its [`wire`] codec, image [`transform`]s, the
//! role [`services`] that hold all the logic, and in-memory backends
//! ([`memory`]). Adapters for real servers live in their own crates and
//! depend on this one only.

pub mod auth;
pub mod backoff;
pub mod blob;

pub mod broker;
pub mod connect;
pub mod envelope;
pub mod error;
pub mod job;
pub mod memory;
pub mod results;
pub mod services;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod trace;
pub mod transform;
pub mod urls;
pub mod wire;

pub use backoff::Backoff;
pub use blob::{BlobMeta, BlobRef, BlobStore, ClaimCheck, OrphanReport, collect_orphans};
pub use broker::{Broker, Capabilities, Delivery, DeliveryStream, QueueSpec, Subscription};
pub use envelope::{Envelope, Part};
pub use error::{Error, ImageErrorKind, Result};
pub use results::{JobStatus, JobSummary, ResultStore};
pub use store::{
    ActivityEntry, ActivityLog, ArchiveRecord, Blob, ImageRecord, ImageStore, JobState,
};
pub use transform::TransformSpec;
#[cfg(feature = "image")]
pub use transform::{Transform, TransformRegistry};
