use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::StreamExt;
use pipeline_core::results::JobStatus;
use pipeline_core::services::{Accepted, Upload};
use pipeline_core::store::{Blob, ImageRecord, JobFailure, JobState};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{ApiError, ApiState};

type AppState = State<Arc<ApiState>>;
type ApiResult<T> = Result<T, ApiError>;

const DEFAULT_TENANT: &str = "default";

fn tenant(headers: &HeaderMap) -> ApiResult<String> {
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

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("bad query string: {}", e.body_text()),
        )
    })
}

fn job_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(raw))
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadQuery {
    transform: Option<String>,
    preset: Option<String>,
}

struct File {
    name: String,
    data: Bytes,
}

/// Read the uploaded files of a request: multipart fields with a file name
/// (or named `file`/`files`/`image`), or a raw image body.
async fn read_files(
    state: &ApiState,
    req: Request,
    only_field: Option<&str>,
) -> ApiResult<(Vec<File>, Option<String>, Option<String>)> {
    let max = state.config.max_upload_bytes;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let too_large = |name: &str| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{name} is larger than the limit of {max} bytes"),
        )
    };
    if content_type.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.body_text()))?;
        let mut files = Vec::new();
        let (mut transform, mut preset) = (None, None);
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    return Err(too_large("the request"));
                }
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_multipart",
                        e.body_text(),
                    ));
                }
            };
            let field_name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(str::to_string);
            let is_file = match only_field {
                Some(wanted) => field_name == wanted,
                None => {
                    file_name.is_some() || matches!(field_name.as_str(), "file" | "files" | "image")
                }
            };
            if !is_file {
                if only_field.is_none() && matches!(field_name.as_str(), "transform" | "preset") {
                    let text = field.text().await.map_err(|e| {
                        ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.body_text())
                    })?;
                    if field_name == "transform" {
                        transform = Some(text)
                    } else {
                        preset = Some(text)
                    }
                }
                continue;
            }
            if files.len() >= state.config.max_files {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_files",
                    format!("at most {} files per request", state.config.max_files),
                ));
            }
            let name = file_name.unwrap_or_else(|| field_name.clone());
            let mut field = field;
            let mut buf = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if buf.len() + chunk.len() > max {
                            return Err(too_large(&name));
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                        return Err(too_large(&name));
                    }
                    Err(e) => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_multipart",
                            e.body_text(),
                        ));
                    }
                }
            }
            files.push(File {
                name,
                data: Bytes::from(buf),
            });
        }
        return Ok((files, transform, preset));
    }
    if only_field.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_file",
            "send multipart/form-data with the image in a field named \"image\"",
        ));
    }
    if content_type.starts_with("image/") || content_type.starts_with("application/octet-stream") {
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            && len > max
        {
            return Err(too_large("the body"));
        }
        let body = axum::body::to_bytes(req.into_body(), max)
            .await
            .map_err(|_| too_large("the body"))?;
        return Ok((
            vec![File {
                name: "body".into(),
                data: body,
            }],
            None,
            None,
        ));
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "send multipart/form-data with one or more files, or a raw body with an image/* content type (got {:?})",
            if content_type.is_empty() {
                "none"
            } else {
                content_type.as_str()
            }
        ),
    ))
}

/// Validate every file first, then submit them all: a bad file refuses the
/// whole request, so a client never has to untangle a half-accepted batch.
async fn accept(
    state: &ApiState,
    tenant: String,
    files: Vec<File>,
    transform: Option<String>,
    preset: Option<String>,
) -> ApiResult<Vec<Accepted>> {
    if files.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_file",
            "the request contains no file",
        ));
    }
    let spec = state
        .submitter
        .resolve_spec(
            transform.as_deref().filter(|s| !s.is_empty()),
            preset.as_deref().filter(|s| !s.is_empty()),
        )
        .map_err(ApiError::from)?;
    // Refuse before spending a decode on work that cannot be queued.
    state.submitter.in_flight().check_room(files.len())?;
    let mut probes = Vec::with_capacity(files.len());
    for f in &files {
        if f.data.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "empty_file",
                format!("{}: the file is empty", f.name),
            ));
        }
        let probe = state
            .submitter
            .validate(f.data.clone())
            .await
            .map_err(|e| ApiError::from(e).in_file(&f.name))?;
        probes.push(probe);
    }
    let mut accepted = Vec::with_capacity(files.len());
    for (f, probe) in files.into_iter().zip(probes) {
        let upload = Upload {
            tenant: tenant.clone(),
            filename: Some(f.name),
            data: f.data,
        };
        accepted.push(state.submitter.submit(upload, probe, &spec).await?);
    }
    Ok(accepted)
}

pub(crate) async fn upload(
    State(state): AppState,
    q: Result<Query<UploadQuery>, QueryRejection>,
    req: Request,
) -> ApiResult<Response> {
    let q = query(q)?;
    let tenant = tenant(req.headers())?;
    let (files, transform, preset) = read_files(&state, req, None).await?;
    let accepted = accept(
        &state,
        tenant,
        files,
        q.transform.or(transform),
        q.preset.or(preset),
    )
    .await?;
    let images: Vec<Value> = accepted
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "status": "pending",
                "format": a.format,
                "width": a.width,
                "height": a.height,
                "spec": a.spec,
                "status_url": format!("/v1/images/{}", a.id),
                "result_url": format!("/v1/images/{}/result", a.id),
                "original_url": format!("/v1/images/{}/original", a.id),
            })
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "images": images }))).into_response())
}

pub(crate) async fn legacy_upload(State(state): AppState, req: Request) -> ApiResult<Response> {
    let tenant = tenant(req.headers())?;
    let (files, _, _) = read_files(&state, req, Some("image")).await?;
    if files.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_file",
            "the form has no field named \"image\"",
        ));
    }
    let accepted = accept(&state, tenant, files, None, None).await?;
    let id = accepted.first().map(|a| a.id);
    Ok((StatusCode::OK, Json(json!({ "id": id }))).into_response())
}

/// Where a job stands, from the result store or else the archive.
enum Found {
    Live(JobStatus),
    Archived(ImageRecord),
}

async fn find(
    state: &ApiState,
    id: Uuid,
    tenant: &str,
    wait: Duration,
) -> ApiResult<Option<Found>> {
    let live = if wait.is_zero() {
        state.results.get(id).await?
    } else {
        state.results.wait(id, wait).await?
    };
    if let Some(s) = live {
        return Ok((s.tenant == tenant).then_some(Found::Live(s)));
    }
    Ok(state
        .archive
        .get(id)
        .await?
        .filter(|r| r.tenant == tenant)
        .map(Found::Archived))
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
    let body = Json(
        json!({ "error": { "code": "job_failed", "message": err.message, "reason": err.code } }),
    );
    (StatusCode::UNPROCESSABLE_ENTITY, body).into_response()
}

fn pending(id: Uuid) -> Response {
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "status": "pending" })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

#[derive(Debug, Deserialize)]
pub(crate) struct WaitQuery {
    wait: Option<f64>,
}

fn wait_of(state: &ApiState, q: WaitQuery) -> ApiResult<Duration> {
    match q.wait {
        None => Ok(Duration::ZERO),
        Some(w) if w.is_finite() && w >= 0.0 => {
            Ok(Duration::from_secs_f64(w).min(state.config.max_wait))
        }
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "wait must be a number of seconds >= 0",
        )),
    }
}

pub(crate) async fn status(
    State(state): AppState,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = job_id(&raw)?;
    let tenant = tenant(&headers)?;
    match find(&state, id, &tenant, Duration::ZERO).await? {
        Some(Found::Live(s)) => {
            let mut v = serde_json::to_value(s.summary()).unwrap_or_default();
            v["archived"] = json!(false);
            Ok(Json(v).into_response())
        }
        Some(Found::Archived(r)) => Ok(Json(json!({
            "id": r.job_id,
            "tenant": r.tenant,
            "status": r.state,
            "spec": r.spec,
            "submitted_at_ms": r.submitted_at_ms,
            "updated_at_ms": r.finished_at_ms,
            "original": r.original,
            "result": r.result,
            "error": r.error,
            "worker": r.worker,
            "archived": true,
        }))
        .into_response()),
        None => Err(ApiError::not_found(&raw)),
    }
}

pub(crate) async fn result(
    State(state): AppState,
    Path(raw): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = job_id(&raw)?;
    let tenant = tenant(&headers)?;
    let wait = wait_of(&state, query(q)?)?;
    let found = find(&state, id, &tenant, wait).await?;
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

pub(crate) async fn original(
    State(state): AppState,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = job_id(&raw)?;
    let tenant = tenant(&headers)?;
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
    match state.results.get(id).await? {
        // Known but not archived yet.
        Some(s) if s.tenant == tenant => Ok(pending(id)),
        _ => Err(ApiError::not_found(&raw)),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn list(
    State(state): AppState,
    q: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = query(q)?;
    let tenant = tenant(&headers)?;
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
    Ok(Json(json!({ "items": page.items, "next_cursor": page.next_cursor })).into_response())
}

pub(crate) async fn events(State(state): AppState, headers: HeaderMap) -> ApiResult<Response> {
    let tenant = tenant(&headers)?;
    let stream = state.results.completions().await?;
    let events = stream
        .filter(move |s| futures::future::ready(s.tenant == tenant))
        .map(|s| {
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

pub(crate) async fn legacy_get(
    State(state): AppState,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = job_id(&raw)?;
    let tenant = tenant(&headers)?;
    let found = find(&state, id, &tenant, Duration::ZERO).await?;
    result_of(&state, found, &raw, StatusCode::NO_CONTENT.into_response()).await
}

pub(crate) async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

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
pub(crate) fn readiness(checks: &[(&str, pipeline_core::Result<()>)]) -> Response {
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let mut body = serde_json::Map::new();
    body.insert(
        "status".into(),
        json!(if ok { "ready" } else { "not_ready" }),
    );
    for (name, r) in checks {
        let state = match r {
            Ok(()) => json!("ok"),
            Err(e) => json!(e.to_string()),
        };
        body.insert((*name).to_string(), state);
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::Value::Object(body))).into_response()
}

pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../assets/openapi.json"),
    )
        .into_response()
}

pub(crate) async fn index() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
