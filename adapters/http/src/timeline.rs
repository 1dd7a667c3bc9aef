//! A job's activity timeline (`GET /v1/images/{id}/events`), and what it
//! tells about a job the archive never took.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::Uri;
use pipeline_core::envelope::events;
use pipeline_core::store::{ActivityEntry, JobFailure, JobState};
use uuid::Uuid;

use crate::ApiState;
use crate::common::{ApiResult, AppState, job_id};
use crate::error::ApiError;
use crate::openapi::TenantHeader;
use crate::responses::*;
use crate::schema::{ErrorBody, ImageStatus, JobEvents};
use pipeline_core::auth::Scope;

/// Failure code of a job whose record save2db gave up.
pub(crate) const ARCHIVE_FAILED: &str = "archive_failed";

/// The tenant's entries of a job, oldest first (none for another tenant).
pub(crate) async fn entries(
    state: &ApiState,
    id: Uuid,
    tenant: &str,
) -> ApiResult<Vec<ActivityEntry>> {
    let mut entries = state.activity.for_job(id).await?;
    entries.retain(|e| e.tenant == tenant);
    Ok(entries)
}

/// Why the job's archiving failed, if save2db gave its record up.
pub(crate) fn archive_failure(entries: &[ActivityEntry]) -> Option<JobFailure> {
    entries
        .iter()
        .rev()
        .find(|e| e.event == events::ARCHIVE_FAILED)
        .map(|e| JobFailure {
            code: ARCHIVE_FAILED.into(),
            message: e
                .error
                .clone()
                .unwrap_or_else(|| "the archive did not take the job".into()),
        })
}

/// The status of a job known only from its timeline: finished, but its
/// record never reached the archive and the result store forgot it.
pub(crate) fn unarchived_status(id: Uuid, entries: &[ActivityEntry]) -> Option<ImageStatus> {
    let archive_error = archive_failure(entries)?;
    let finished = entries
        .iter()
        .find(|e| e.event == events::TRANSFORMED || e.event == events::FAILED)?;
    let submitted = entries.first()?;
    let status = if finished.event == events::TRANSFORMED {
        JobState::Done
    } else {
        JobState::Failed
    };
    Some(ImageStatus {
        id,
        tenant: finished.tenant.clone(),
        status,
        spec: String::new(),
        submitted_at_ms: submitted.at_ms,
        updated_at_ms: finished.at_ms,
        info: None,
        original: None,
        result: None,
        error: finished.error.as_ref().map(|m| JobFailure {
            code: "failed".into(),
            message: m.clone(),
        }),
        worker: None,
        archived: false,
        archive_error: Some(archive_error),
        result_url: crate::schema::result_path(id),
        original_url: crate::schema::original_path(id),
    })
}

#[utoipa::path(
    get,
    path = "/v1/images/{id}/events",
    tag = "images",
    params(("id" = String, Path, description = "Job id (a UUID)"), TenantHeader),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, description = "The job's timeline: every event recorded by the activity log, oldest first, with the delivery attempt that produced it", body = JobEvents),
        (status = 400, description = "Bad tenant", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn job_events(
    State(state): AppState,
    Path(raw): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<JobEvents>> {
    let tenant = state.auth.caller(&headers, &uri, Scope::Read).await?.tenant;
    let id = job_id(&raw)?;
    let entries = entries(&state, id, &tenant).await?;
    if entries.is_empty() {
        // Known but not logged yet (the activity role lags), or unknown.
        let live = state
            .results
            .summary(id)
            .await?
            .filter(|s| s.tenant == tenant);
        let archived = match live {
            Some(_) => true,
            None => state
                .archive
                .get(id)
                .await?
                .is_some_and(|r| r.tenant == tenant),
        };
        if !archived {
            return Err(ApiError::not_found(&raw));
        }
    }
    Ok(Json(JobEvents {
        id,
        events: entries,
    }))
}
