//! # pipeline-http
//!
//! The HTTP API of the pipeline as an axum [`Router`]: `/v1/images` (upload,
//! status, result, original, list), `/v1/events` (server-sent completions),
//! the prototype's `/image` routes, `/healthz`, `/readyz`, `/openapi.json`
//! and a small upload page at `/`. Embed it with [`router`].

mod error;
mod handlers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use pipeline_core::services::Submitter;
use pipeline_core::{Broker, ImageStore, ResultStore};

pub use error::ApiError;

/// Limits and defaults of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest file accepted, in bytes.
    pub max_upload_bytes: usize,
    /// Most files in one multipart upload.
    pub max_files: usize,
    /// Longest `?wait=` honoured.
    pub max_wait: Duration,
}

impl Default for ApiConfig {
    /// 25 MiB per file, 32 files, waits up to 60 s.
    fn default() -> Self {
        Self {
            max_upload_bytes: 25 * 1024 * 1024,
            max_files: 32,
            max_wait: Duration::from_secs(60),
        }
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Validates and publishes uploads.
    pub submitter: Submitter,
    /// Status and results.
    pub results: Arc<dyn ResultStore>,
    /// Archive fallback after the result TTL.
    pub archive: Arc<dyn ImageStore>,
    /// For readiness.
    pub broker: Arc<dyn Broker>,
    /// Limits.
    pub config: ApiConfig,
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    let body_limit = state
        .config
        .max_upload_bytes
        .saturating_mul(state.config.max_files)
        .saturating_add(1024 * 1024);
    Router::new()
        .route("/", get(handlers::index))
        .route("/v1/images", post(handlers::upload).get(handlers::list))
        .route("/v1/images/{id}", get(handlers::status))
        .route("/v1/images/{id}/result", get(handlers::result))
        .route("/v1/images/{id}/original", get(handlers::original))
        .route("/v1/events", get(handlers::events))
        .route("/image", post(handlers::legacy_upload))
        .route("/image/{id}", get(handlers::legacy_get))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/openapi.json", get(handlers::openapi))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(Arc::new(state))
}
