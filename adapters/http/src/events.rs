//! `GET /v1/events`: completions of the tenant's jobs as server-sent events.

use std::convert::Infallible;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::http::Uri;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::common::{ApiResult, AppState};
use crate::openapi::TenantHeader;
use crate::responses::*;
use crate::schema::{ErrorBody, Link};
use crate::waits::Waits;
use pipeline_core::auth::Scope;

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "images",
    params(TenantHeader),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, description = "One event per finished job of the tenant: `event` is `done` or `failed`, `id` the job id, `data` its status as JSON", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad tenant", body = ErrorBody),
        (status = 429, description = "The tenant has its most long polls and event streams open (`too_many_waits`)", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn events(
    State(state): AppState,
    Extension(waits): Extension<Arc<Waits>>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    let caller = state.auth.caller(&headers, &uri, Scope::Read).await?;
    let ends = tokio::time::sleep(state.auth.stream_deadline(&caller));
    let tenant = caller.tenant;
    // Counted while the stream is open (the guard goes with it).
    let open = waits.enter(&tenant, state.config.max_waits_per_tenant)?;
    let stream = state.results.completions().await?.take_until(ends);
    let events = stream
        .filter(move |s| futures::future::ready(s.tenant == tenant))
        .map(move |s| {
            let _open = &open;
            let data = serde_json::to_string(&s).unwrap_or_default();
            Ok::<_, Infallible>(
                Event::default()
                    .event(s.status.as_str())
                    .id(s.id.to_string())
                    .data(data),
            )
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/events/link",
    tag = "images",
    params(TenantHeader),
    responses(
        (status = 400, description = "Bad tenant", body = ErrorBody),
        (status = 200, description = "A link to `/v1/events` for the caller's tenant that needs no header (signed, valid for `PIPELINE_LINK_TTL`; the bare path when auth is off): for a browser's `EventSource`, which cannot send one", body = Link),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    )
)]
pub(crate) async fn events_link(
    State(state): AppState,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<Link>> {
    let caller = state.auth.caller(&headers, &uri, Scope::Read).await?;
    Ok(Json(Link {
        url: state.auth.link("/v1/events".to_string(), &caller),
    }))
}
