//! What every handler shares: state, query and id parsing.

use std::sync::Arc;

use axum::extract::Query;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use uuid::Uuid;

use crate::{ApiError, ApiState};

pub(crate) type AppState = State<Arc<ApiState>>;
pub(crate) type ApiResult<T> = Result<T, ApiError>;

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
