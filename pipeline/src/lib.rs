#![doc = include_str!("../README.md")]

mod assemble;
mod auth;
pub mod backends;
mod builder;
#[cfg(feature = "cli")]
pub mod cli;
mod http_server;
#[cfg(feature = "otlp")]
pub mod otlp;
mod running;
mod settings;

pub use auth::{AuthChoice, AuthSettings};
pub use builder::{Pipeline, PipelineBuilder};
pub use http_server::Transport;
pub use pipeline_core::connect::{Archive, Backends, ConnectOptions};
pub use pipeline_core::services::Validation;
pub use pipeline_core::transform::ImageLimits;
pub use pipeline_core::{Error, Result, Transform, TransformRegistry};
pub use running::{Running, StopHandle};
pub use settings::{
    ARCHIVE_BLOBS, DEFAULT_DATABASE_URL, Roles, Settings, Urls, parse_preset, parse_presets,
};

/// `docs/embedding.md`, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/embedding.md")]
pub struct EmbeddingGuide;

/// The core crate: traits, envelope, transforms, services, memory backends.
pub use pipeline_core as core;
/// The HTTP API crate (axum router).
pub use pipeline_http as http;
