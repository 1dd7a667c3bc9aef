//! `GET /metrics`: the process's metrics in the Prometheus text format,
//! rendered by whatever recorder the program installed
//! ([`MetricsRender`]).

use std::fmt;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use pipeline_core::auth::Scope;

use crate::common::{ApiResult, AppState};
use crate::error::ApiError;
use crate::responses::{Forbidden, Unauthorized};

/// Renders the process's metrics as Prometheus text (for example a
/// `metrics_exporter_prometheus::PrometheusHandle::render`).
#[derive(Clone)]
pub struct MetricsRender(Arc<dyn Fn() -> String + Send + Sync>);

impl MetricsRender {
    /// A renderer calling `render`.
    pub fn new(render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Self(Arc::new(render))
    }

    pub(crate) fn response(&self) -> Response {
        let mut resp = (self.0)().into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }
}

impl fmt::Debug for MetricsRender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetricsRender")
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    description = "The process's metrics in the Prometheus text format (admin scope when auth is on). 404 when the program installed no metrics recorder.",
    responses(
        (status = 200, description = "Prometheus exposition", content_type = "text/plain", body = String),
        (status = 400, description = "Bad tenant", body = crate::schema::ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "No metrics in this process", body = crate::schema::ErrorBody),
    )
)]
pub(crate) async fn metrics(
    State(state): AppState,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    state.auth.caller(&headers, &uri, Scope::Admin).await?;
    let Some(render) = &state.config.metrics else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "this process records no metrics",
        ));
    };
    metrics::gauge!(pipeline_core::telemetry::IN_FLIGHT)
        .set(state.submitter.in_flight().len() as f64);
    pipeline_core::telemetry::record_queue_depths(state.broker.as_ref()).await;
    pipeline_core::telemetry::record_process();
    Ok(render.response())
}
