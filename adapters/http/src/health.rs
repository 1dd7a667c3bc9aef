//! `/healthz` (the process serves) and `/readyz` (its backends answer), for
//! the API and, through [`health_router`], for worker processes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pipeline_core::{BlobStore, Broker, ImageStore};

use crate::common::AppState;
use crate::schema::{Health, Readiness};
use pipeline_core::auth::Scope;

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
    description = "Ready or not; each backend's state and error only for the admin scope (when auth is off, for everyone).",
    responses(
        (status = 200, description = "Every backend answers", body = Readiness),
        (status = 503, description = "A backend does not answer", body = Readiness),
    )
)]
pub(crate) async fn readyz(State(state): AppState, headers: HeaderMap) -> Response {
    let admin = state
        .auth
        .optional_caller(&headers)
        .await
        .is_some_and(|c| c.scopes.allows(Scope::Admin));
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
    let detail = if admin { Detail::Full } else { Detail::None };
    readiness(
        &[
            ("broker", broker),
            ("results", results),
            ("archive", archive),
            ("blobs", blobs),
        ],
        detail,
    )
}

/// How much of a readiness check is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    /// Only ready or not.
    None,
    /// Each check as `ok` or `failed`.
    Names,
    /// Each check's error message.
    Full,
}

/// `200 {"status": "ready", name: "ok"...}` when every check passed, else
/// `503`; failures are logged, and shown as `detail` says.
fn readiness(checks: &[(&str, pipeline_core::Result<()>)], detail: Detail) -> Response {
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    for (name, r) in checks {
        if let Err(e) = r {
            tracing::warn!(check = name, error = %e, "not ready");
        }
    }
    let checks: BTreeMap<String, String> = checks
        .iter()
        .filter(|_| detail != Detail::None)
        .map(|(name, r)| {
            let state = match (r, detail) {
                (Ok(()), _) => "ok".to_string(),
                (Err(e), Detail::Full) => e.to_string(),
                (Err(_), _) => "failed".to_string(),
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

/// `/healthz`, `/readyz` and, when given, `/metrics`, for worker
/// processes: ready while the
/// broker and, when given, the archive and the blob store answer.
pub fn health_router(
    broker: Arc<dyn Broker>,
    archive: Option<Arc<dyn ImageStore>>,
    blobs: Option<Arc<dyn BlobStore>>,
    metrics: Option<crate::MetricsRender>,
) -> Router {
    let scraped = Arc::clone(&broker);
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
            // A worker's health port has no credentials to check: it
            // names what failed, the messages go to the log.
            readiness(
                &[
                    ("broker", broker),
                    ("archive", optional(archive)),
                    ("blobs", optional(blobs)),
                ],
                Detail::Names,
            )
        }
    };
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    match metrics {
        // The health port is internal: its metrics need no credentials.
        Some(m) => router.route(
            "/metrics",
            get(move || {
                let (m, broker) = (m.clone(), Arc::clone(&scraped));
                async move {
                    pipeline_core::telemetry::record_queue_depths(broker.as_ref()).await;
                    pipeline_core::telemetry::record_process();
                    m.response()
                }
            }),
        ),
        None => router,
    }
}
