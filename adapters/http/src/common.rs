//! What every handler shares: state, the tenant, query and id parsing.

use std::sync::Arc;

use axum::extract::Query;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, StatusCode};
use uuid::Uuid;

use crate::{ApiError, ApiState};

pub(crate) type AppState = State<Arc<ApiState>>;
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Tenant of requests without an `X-Tenant` header.
pub(crate) const DEFAULT_TENANT: &str = "default";

/// The tenant of a request: its `X-Tenant` header, or the default.
pub(crate) fn tenant(headers: &HeaderMap) -> ApiResult<String> {
    let Some(v) = headers.get("x-tenant") else {
        return Ok(DEFAULT_TENANT.to_string());
    };
    let t = v.to_str().unwrap_or_default();
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(t.to_string())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            "X-Tenant must be 1-128 characters of A-Z, a-z, 0-9, '-', '_', '.'",
        ))
    }
}

/// The query string, or a 400 saying what is wrong with it.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("bad query string: {}", e.body_text()),
        )
    })
}

/// A job id from the path; anything else is an unknown image.
pub(crate) fn job_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(raw))
}
