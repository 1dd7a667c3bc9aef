//! `/healthz` (the process serves) and `/readyz` (its backends answer), for
//! the API and, through [`health_router`], for worker processes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pipeline_core::{BlobStore, Broker, ImageStore};

use crate::common::AppState;
use crate::schema::{Health, Readiness};

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process serves requests", body = Health))
)]
pub(crate) async fn healthz() -> Response {
    Json(Health {
        status: "ok".into(),
    })
    .into_response()
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Every backend answers", body = Readiness),
        (status = 503, description = "A backend does not answer", body = Readiness),
    )
)]
pub(crate) async fn readyz(State(state): AppState) -> Response {
    let blobs = async {
        match state.submitter.claim_check() {
            Some(c) => c.store().ready().await,
            None => Ok(()),
        }
    };
    let (broker, results, archive, blobs) = tokio::join!(
        state.broker.ready(),
        state.results.ready(),
        state.archive.ready(),
        blobs
    );
    readiness(&[
        ("broker", broker),
        ("results", results),
        ("archive", archive),
        ("blobs", blobs),
    ])
}

/// `200 {"status": "ready", name: "ok"...}` when every check passed, else
/// `503` with each failure's message.
fn readiness(checks: &[(&str, pipeline_core::Result<()>)]) -> Response {
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let checks: BTreeMap<String, String> = checks
        .iter()
        .map(|(name, r)| {
            let state = match r {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            ((*name).to_string(), state)
        })
        .collect();
    let (status, word) = if ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    let body = Readiness {
        status: word.into(),
        checks,
    };
    (status, Json(body)).into_response()
}

/// `/healthz` and `/readyz` alone, for worker processes: ready while the
/// broker and, when given, the archive and the blob store answer.
pub fn health_router(
    broker: Arc<dyn Broker>,
    archive: Option<Arc<dyn ImageStore>>,
    blobs: Option<Arc<dyn BlobStore>>,
) -> Router {
    let readyz = move || {
        let (broker, archive, blobs) = (broker.clone(), archive.clone(), blobs.clone());
        async move {
            let optional = |r: Option<pipeline_core::Result<()>>| r.unwrap_or(Ok(()));
            let archive = async {
                match &archive {
                    Some(a) => Some(a.ready().await),
                    None => None,
                }
            };
            let blobs = async {
                match &blobs {
                    Some(b) => Some(b.ready().await),
                    None => None,
                }
            };
            let (broker, archive, blobs) = tokio::join!(broker.ready(), archive, blobs);
            readiness(&[
                ("broker", broker),
                ("archive", optional(archive)),
                ("blobs", optional(blobs)),
            ])
        }
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}
