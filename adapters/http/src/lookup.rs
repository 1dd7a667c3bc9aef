//! Reading jobs back: status, result, original, the list of archived
//! jobs, and the prototype's `GET /image/{id}`. A job is looked up in the
//! result store, then in the archive; another tenant's job is a 404.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::Uri;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pipeline_core::results::{JobStatus, JobSummary};
use pipeline_core::store::{Blob, ImageRecord, JobFailure, JobState};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::common::{ApiResult, AppState, job_id, query};
use crate::error::ApiError;
use crate::openapi::TenantHeader;
use crate::responses::*;
use crate::schema::{
    ErrorBody, ErrorDetail, ImageList, ImageStatus, ListedImage, Pending, original_path,
    result_path,
};
use crate::waits::Waits;
use crate::{ApiState, timeline};
use pipeline_core::auth::Scope;

/// Where a job stands, from the result store (`L`: its status with or
/// without the bytes) or else the archive.
#[allow(clippy::large_enum_variant)] // `L` (a status) is about as large as the record
enum Found<L = JobStatus> {
    Live(L),
    Archived(ImageRecord),
}

/// The archived job `id` of `tenant`, if any.
async fn archived<L>(state: &ApiState, id: Uuid, tenant: &str) -> ApiResult<Option<Found<L>>> {
    Ok(state
        .archive
        .get(id)
        .await?
        .filter(|r| r.tenant == tenant)
        .map(Found::Archived))
}

/// The job `id` of `tenant`, waiting up to `wait` (counted in `waits`)
/// for a pending one to finish. Another tenant's job is `None` at once:
/// waiting on it would tell that it exists.
async fn find(
    state: &ApiState,
    id: Uuid,
    tenant: &str,
    wait: Option<(Duration, &Arc<Waits>)>,
) -> ApiResult<Option<Found>> {
    let live = match (state.results.get(id).await?, wait) {
        (Some(s), _) if s.tenant != tenant => return Ok(None),
        (Some(s), Some((wait, waits))) if s.state == JobState::Pending && !wait.is_zero() => {
            let _open = waits.enter(tenant, state.config.max_waits_per_tenant)?;
            state.results.wait(id, wait).await?.unwrap_or(s)
        }
        (Some(s), _) => s,
        (None, _) => return archived(state, id, tenant).await,
    };
    Ok((live.tenant == tenant).then_some(Found::Live(live)))
}

/// [`find`] without the result bytes and without waiting (the status
/// route: a result store that keeps the bytes apart does not read them).
async fn find_summary(
    state: &ApiState,
    id: Uuid,
    tenant: &str,
) -> ApiResult<Option<Found<JobSummary>>> {
    match state.results.summary(id).await? {
        Some(s) => Ok((s.tenant == tenant).then_some(Found::Live(s))),
        None => archived(state, id, tenant).await,
    }
}

/// The bytes of `blob`, fetched from the blob store when it holds a
/// claim-check reference.
async fn blob_response(state: &ApiState, blob: Blob) -> ApiResult<Response> {
    if blob.content_type != pipeline_core::blob::REF_CONTENT_TYPE {
        return Ok(bytes_response(blob));
    }
    let Some(claim) = state.submitter.claim_check() else {
        return Err(ApiError::from(pipeline_core::Error::Config(
            "the image is in a blob store this API is not configured with (PIPELINE_BLOB_URL)"
                .into(),
        )));
    };
    Ok(bytes_response(claim.resolve(blob).await?))
}

fn bytes_response(blob: Blob) -> Response {
    let mut resp = (StatusCode::OK, blob.data).into_response();
    if let Ok(v) = HeaderValue::from_str(&blob.content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn failed(error: Option<JobFailure>) -> Response {
    let err = error.unwrap_or_else(|| JobFailure {
        code: "failed".into(),
        message: "the job failed without a reason".into(),
    });
    let body = Json(ErrorBody {
        error: ErrorDetail {
            code: "job_failed".into(),
            message: err.message,
            reason: Some(err.code),
        },
    });
    (StatusCode::UNPROCESSABLE_ENTITY, body).into_response()
}

fn pending(id: Uuid) -> Response {
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(Pending {
            id,
            status: JobState::Pending,
        }),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Query of the routes that can wait for a job.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitQuery {
    /// Seconds to wait for the job to finish (long poll), at most the
    /// server's limit (60 s by default).
    #[param(minimum = 0)]
    wait: Option<f64>,
}

fn wait_of(state: &ApiState, q: WaitQuery) -> ApiResult<Duration> {
    match q.wait {
        None => Ok(Duration::ZERO),
        // Capped before converting: a huge number must not overflow.
        Some(w) if w.is_finite() && w >= 0.0 => Ok(Duration::from_secs_f64(
            w.min(state.config.max_wait.as_secs_f64()),
        )),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "wait must be a number of seconds >= 0",
        )),
    }
}

/// `status` as JSON, with links signed for `caller`.
fn linked(state: &ApiState, caller: &Caller, mut status: ImageStatus) -> Response {
    status.result_url = state.auth.link(result_path(status.id), caller);
    status.original_url = state.auth.link(original_path(status.id), caller);
    Json(status).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/images/{id}",
    tag = "images",
    params(("id" = String, Path, description = "Job id (a UUID)"), TenantHeader),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, description = "Where the job stands", body = ImageStatus),
        (status = 400, description = "Bad tenant", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn status(
    State(state): AppState,
    Path(raw): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    let caller = state.auth.caller(&headers, &uri, Scope::Read).await?;
    let tenant = caller.tenant.clone();
    let id = job_id(&raw)?;
    match find_summary(&state, id, &tenant).await? {
        Some(Found::Live(s)) => {
            // A finished job not in the archive: did save2db give it up?
            let archive_error = if s.status.is_terminal() && state.archive.get(id).await?.is_none()
            {
                timeline::archive_failure(&timeline::entries(&state, id, &tenant).await?)
            } else {
                None
            };
            Ok(linked(
                &state,
                &caller,
                ImageStatus {
                    id: s.id,
                    tenant: s.tenant,
                    status: s.status,
                    spec: s.spec,
                    submitted_at_ms: s.submitted_at_ms,
                    updated_at_ms: s.updated_at_ms,
                    info: s.info,
                    original: None,
                    result: None,
                    error: s.error,
                    worker: None,
                    archived: false,
                    archive_error,
                    result_url: result_path(id),
                    original_url: original_path(id),
                },
            ))
        }
        Some(Found::Archived(r)) => Ok(linked(&state, &caller, ImageStatus::from(r))),
        None => {
            let entries = timeline::entries(&state, id, &tenant).await?;
            match timeline::unarchived_status(id, &entries) {
                Some(status) => Ok(linked(&state, &caller, status)),
                None => Err(ApiError::not_found(&raw)),
            }
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/images/{id}/result",
    tag = "images",
    params(("id" = String, Path, description = "Job id (a UUID)"), WaitQuery, TenantHeader),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, response = Image),
        (status = 202, response = NotReady),
        (status = 400, description = "Bad `wait` or tenant", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 422, description = "The job failed: `reason` says why", body = ErrorBody),
        (status = 429, description = "With `?wait`: the tenant has its most long polls and event streams open (`too_many_waits`)", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn result(
    State(state): AppState,
    Extension(waits): Extension<Arc<Waits>>,
    Path(raw): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    let tenant = state.auth.caller(&headers, &uri, Scope::Read).await?.tenant;
    let id = job_id(&raw)?;
    let wait = wait_of(&state, query(q)?)?;
    let found = find(&state, id, &tenant, Some((wait, &waits))).await?;
    result_of(&state, found, &raw, pending(id)).await
}

/// The result bytes of a found job, its failure, or `not_ready` while pending.
async fn result_of(
    state: &ApiState,
    found: Option<Found>,
    raw: &str,
    not_ready: Response,
) -> ApiResult<Response> {
    match found {
        Some(Found::Live(s)) => match (s.state, s.result) {
            (JobState::Done, Some(blob)) => blob_response(state, blob).await,
            (JobState::Failed, _) => Ok(failed(s.error)),
            _ => Ok(not_ready),
        },
        Some(Found::Archived(r)) => archived_result(state, r).await,
        None => Err(ApiError::not_found(raw)),
    }
}

async fn archived_result(state: &ApiState, r: ImageRecord) -> ApiResult<Response> {
    if r.state == JobState::Failed {
        return Ok(failed(r.error));
    }
    match state.archive.result(r.job_id).await? {
        Some(blob) => blob_response(state, blob).await,
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the archived job has no result",
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/images/{id}/original",
    tag = "images",
    params(("id" = String, Path, description = "Job id (a UUID)"), TenantHeader),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, response = Image),
        (status = 202, response = NotReady),
        (status = 400, description = "Bad tenant", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn original(
    State(state): AppState,
    Path(raw): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    let tenant = state.auth.caller(&headers, &uri, Scope::Read).await?.tenant;
    let id = job_id(&raw)?;
    if let Some(r) = state.archive.get(id).await?.filter(|r| r.tenant == tenant) {
        return match state.archive.original(r.job_id).await? {
            Some(blob) => blob_response(&state, blob).await,
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "the archived job has no original",
            )),
        };
    }
    match state.results.summary(id).await? {
        // Known but not archived yet.
        Some(s) if s.tenant == tenant => Ok(pending(id)),
        _ => Err(ApiError::not_found(&raw)),
    }
}

/// Query of `GET /v1/images`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Jobs per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/images",
    tag = "images",
    params(ListQuery, TenantHeader),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, description = "Archived jobs of the tenant, newest first", body = ImageList),
        (status = 400, description = "Bad cursor, limit or tenant", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn list(
    State(state): AppState,
    q: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    let caller = state.auth.caller(&headers, &uri, Scope::Read).await?;
    let tenant = caller.tenant.clone();
    let q = query(q)?;
    let cursor = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(Uuid::parse_str(c).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "cursor is not a value returned by this API",
            )
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be 1-500",
        ));
    }
    let page = state.archive.list(&tenant, cursor, limit).await?;
    let items = page
        .items
        .into_iter()
        .map(|record| ListedImage {
            result_url: state.auth.link(result_path(record.job_id), &caller),
            original_url: state.auth.link(original_path(record.job_id), &caller),
            record,
        })
        .collect();
    Ok(Json(ImageList {
        items,
        next_cursor: page.next_cursor,
    })
    .into_response())
}

#[utoipa::path(
    get,
    path = "/image/{id}",
    tag = "prototype",
    params(("id" = String, Path, description = "Job id (a UUID)"), TenantHeader),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, response = Image),
        (status = 204, description = "Not ready yet"),
        (status = 400, description = "Bad tenant", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 422, description = "The job failed: `reason` says why", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn legacy_get(
    State(state): AppState,
    Path(raw): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    let tenant = state.auth.caller(&headers, &uri, Scope::Read).await?.tenant;
    let id = job_id(&raw)?;
    let found = find(&state, id, &tenant, None).await?;
    result_of(&state, found, &raw, StatusCode::NO_CONTENT.into_response()).await
}
