//! `/v1/admin/queues...`: the pipeline's queues as the broker sees them
//! (depth, consumers, dead letters), the dead letters of one queue with
//! their reason, replaying them (all, or one job's) and purging them.
//! Admin scope.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use pipeline_core::auth::Scope;
use pipeline_core::services::{admin, replay_dead, replay_dead_job};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::common::{ApiResult, AppState, query};
use crate::error::ApiError;
use crate::responses::{Forbidden, Unauthorized, Unavailable};
use crate::schema::{DeadLetterList, Purged, QueueList, Replayed};

/// How long a replay waits for the next dead letter before it ends.
const REPLAY_IDLE: Duration = Duration::from_secs(1);

/// Query of `GET /v1/admin/queues/{queue}/dead`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PeekQuery {
    /// Most dead letters returned, oldest first (1-1000, default 50).
    limit: Option<usize>,
}

/// Query of `POST /v1/admin/queues/{queue}/dead/replay`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReplayQuery {
    /// Replay only this job's dead letters.
    job_id: Option<String>,
    /// Replay at most this many (default: all).
    limit: Option<u64>,
}

fn queue_of(raw: &str) -> ApiResult<&'static str> {
    admin::pipeline_queue(raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "unknown_queue", e.public_message()))
}

#[utoipa::path(
    get,
    path = "/v1/admin/queues",
    tag = "operations",
    responses(
        (status = 200, description = "Every queue of the pipeline: messages, consumers (null where the broker does not tell) and dead letters", body = QueueList),
        (status = 400, description = "Bad tenant", body = crate::schema::ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 501, description = "The broker cannot report its queues", body = crate::schema::ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn queues(
    State(state): AppState,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<QueueList>> {
    state.auth.caller(&headers, &uri, Scope::Admin).await?;
    let queues = admin::overview(state.broker.as_ref()).await?;
    Ok(Json(QueueList {
        queues: queues.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/admin/queues/{queue}/dead",
    tag = "operations",
    params(("queue" = String, Path, description = "transform, api.results, save2db or activity"), PeekQuery),
    responses(
        (status = 200, description = "The queue's dead letters, oldest first, left in place", body = DeadLetterList),
        (status = 400, description = "Unknown queue, bad limit or bad tenant", body = crate::schema::ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "The broker does not have this queue", body = crate::schema::ErrorBody),
        (status = 501, description = "The broker cannot peek at dead letters", body = crate::schema::ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn peek(
    State(state): AppState,
    Path(raw): Path<String>,
    q: Result<Query<PeekQuery>, QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<DeadLetterList>> {
    state.auth.caller(&headers, &uri, Scope::Admin).await?;
    let queue = queue_of(&raw)?;
    let limit = query(q)?.limit.unwrap_or(50);
    if !(1..=admin::MAX_PEEK).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1-{}", admin::MAX_PEEK),
        ));
    }
    let dead = admin::peek_dead(state.broker.as_ref(), queue, limit).await?;
    Ok(Json(DeadLetterList {
        queue: queue.to_string(),
        dead_letters: dead.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/admin/queues/{queue}/dead/replay",
    tag = "operations",
    params(("queue" = String, Path, description = "transform, api.results, save2db or activity"), ReplayQuery),
    responses(
        (status = 200, description = "Dead letters published again (attempt 1, dead-letter headers removed) and those kept", body = Replayed),
        (status = 400, description = "Unknown queue, bad job id or bad tenant", body = crate::schema::ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "The broker does not have this queue", body = crate::schema::ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn replay(
    State(state): AppState,
    Path(raw): Path<String>,
    q: Result<Query<ReplayQuery>, QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<Replayed>> {
    state.auth.caller(&headers, &uri, Scope::Admin).await?;
    let queue = queue_of(&raw)?;
    let q = query(q)?;
    let broker = state.broker.as_ref();
    let report = match q.job_id.as_deref() {
        Some(raw_id) => {
            let id = Uuid::parse_str(raw_id).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "job_id is not a job id (a UUID)",
                )
            })?;
            replay_dead_job(broker, queue, id, REPLAY_IDLE).await?
        }
        None => replay_dead(broker, queue, q.limit.unwrap_or(u64::MAX), REPLAY_IDLE).await?,
    };
    tracing::info!(queue, replayed = report.replayed, kept = report.kept, job_id = ?q.job_id, "dead letters replayed");
    Ok(Json(Replayed {
        queue: queue.to_string(),
        replayed: report.replayed,
        kept: report.kept,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/admin/queues/{queue}/dead",
    tag = "operations",
    params(("queue" = String, Path, description = "transform, api.results, save2db or activity")),
    responses(
        (status = 200, description = "The dead letters waiting in the queue were removed", body = Purged),
        (status = 400, description = "Unknown queue or bad tenant", body = crate::schema::ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "The broker does not have this queue", body = crate::schema::ErrorBody),
        (status = 501, description = "The broker cannot purge dead letters", body = crate::schema::ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn purge(
    State(state): AppState,
    Path(raw): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<Purged>> {
    state.auth.caller(&headers, &uri, Scope::Admin).await?;
    let queue = queue_of(&raw)?;
    let purged = admin::purge_dead(state.broker.as_ref(), queue).await?;
    tracing::warn!(queue, purged, "dead letters purged");
    Ok(Json(Purged {
        queue: queue.to_string(),
        purged,
    }))
}
