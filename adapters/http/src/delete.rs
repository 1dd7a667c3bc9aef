//! `DELETE /v1/images/{id}`: a tenant's job removed from the result store
//! and the archive (a privacy request), its blobs released.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::http::{HeaderMap, StatusCode};
use pipeline_core::envelope::{events, now_ms};
use pipeline_core::store::ActivityEntry;
use uuid::Uuid;

use crate::common::{ApiResult, AppState, job_id};
use crate::error::ApiError;
use crate::openapi::TenantHeader;
use crate::responses::*;
use crate::schema::ErrorBody;
use crate::timeline;
use pipeline_core::auth::Scope;

#[utoipa::path(
    delete,
    path = "/v1/images/{id}",
    tag = "images",
    params(("id" = String, Path, description = "Job id (a UUID)"), TenantHeader),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 204, description = "Deleted (also when it was deleted before): the status, result, original and archive row are gone, blobs no other job shares are removed, and the timeline records `image.deleted`"),
        (status = 400, description = "Bad tenant", body = ErrorBody),
        (status = 404, response = NotFound),
        (status = 409, description = "The job is not finished, or not archived yet: retry after `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn delete(
    State(state): AppState,
    Path(raw): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<StatusCode> {
    let tenant = state
        .auth
        .caller(&headers, &uri, Scope::Upload)
        .await?
        .tenant;
    let id = job_id(&raw)?;
    let started_ms = now_ms();
    let live = state
        .results
        .summary(id)
        .await?
        .filter(|s| s.tenant == tenant);
    if live.as_ref().is_some_and(|s| !s.status.is_terminal()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_in_progress",
            "the job is not finished; delete it once it is",
        ));
    }
    let deletion = state.archive.delete(id, &tenant).await?;
    if !deletion.found {
        let Some(_) = live else {
            return Err(ApiError::not_found(&raw));
        };
        // Finished, not archived: wait for save2db, unless it gave the
        // record up (then only the result store holds the job).
        let entries = timeline::entries(&state, id, &tenant).await?;
        if timeline::archive_failure(&entries).is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_not_archived",
                "the job is finished but not archived yet; retry shortly",
            ));
        }
    }
    state.results.delete(id).await?;
    if let Some(claim) = state.submitter.claim_check() {
        for key in &deletion.released {
            // A blob stored again since the delete began belongs to a newer
            // job and stays.
            if let Err(e) = claim.store().delete_if_stored_before(key, started_ms).await {
                tracing::warn!(%id, key, error = %e, "a released blob was not removed; gc-blobs will");
            }
        }
    }
    let timeline = timeline::entries(&state, id, &tenant).await?;
    if !timeline.iter().any(|e| e.event == events::DELETED) {
        record_deletion(&state, id, &tenant).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The `image.deleted` entry of the job's timeline.
async fn record_deletion(state: &crate::ApiState, id: Uuid, tenant: &str) -> ApiResult<()> {
    let entry = ActivityEntry {
        message_id: Uuid::now_v7(),
        at_ms: now_ms(),
        event: events::DELETED.into(),
        job_id: id,
        tenant: tenant.to_string(),
        worker: None,
        size: 0,
        duration_ms: None,
        error: None,
        attempt: None,
    };
    state.activity.append(std::slice::from_ref(&entry)).await?;
    Ok(())
}
