//! Uploads: `POST /v1/images` (multipart or a raw body) and the
//! prototype's `POST /image`. Every file is checked before any is
//! submitted, so a request is accepted whole or refused whole.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pipeline_core::services::{Accepted, Upload, keyed_job_id};
use pipeline_core::trace::TraceContext;
use pipeline_core::transform::Probe;
use serde::Deserialize;
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ApiState;
use crate::auth::Caller;
use crate::common::{ApiResult, AppState, query};
use crate::error::ApiError;
use crate::openapi::TenantHeader;
use crate::responses::*;
use crate::schema::{ErrorBody, LegacyUploadResponse, UploadResponse, UploadedImage};
use pipeline_core::auth::Scope;

/// The `Idempotency-Key` header of `POST /v1/images`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct KeyHeader {
    /// A UUID version 7 made by the client for this one file: it becomes
    /// the job id, and sending the same key again answers with that job
    /// instead of making another (safe retries after a lost answer or a
    /// crash). At most 5 minutes ahead of the server's clock.
    #[param(rename = "Idempotency-Key", format = Uuid)]
    idempotency_key: Option<String>,
}

/// Query of `POST /v1/images`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    /// Transform spec, for example `resize:800x600:fill,format:webp` (see
    /// `GET /v1/transforms`); not with `preset`.
    transform: Option<String>,
    /// Name of a preset (see `GET /v1/transforms`); not with `transform`.
    preset: Option<String>,
}

/// The multipart form of `POST /v1/images`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct UploadForm {
    /// The image files.
    #[schema(value_type = Vec<String>, format = Binary)]
    files: Vec<Vec<u8>>,
    /// Transform spec (as the query parameter).
    transform: Option<String>,
    /// Preset name (as the query parameter).
    preset: Option<String>,
}

/// The multipart form of the prototype's `POST /image`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct LegacyUploadForm {
    /// The image file.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

struct File {
    name: String,
    data: Bytes,
}

/// [`read_files`] within the body timeout: a client that sends its body
/// too slowly gets 408 and its connection closed.
async fn read_within_time(
    state: &ApiState,
    req: Request,
    only_field: Option<&str>,
) -> ApiResult<(Vec<File>, Option<String>, Option<String>)> {
    let limit = state.config.body_timeout;
    tokio::time::timeout(limit, read_files(state, req, only_field))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    limit.as_secs()
                ),
            ))
        })
}

/// An upload's caller, admitted from the headers: credentials, the
/// upload scope, the request rate, the byte rate. `tenant` is set once the
/// caller is known.
async fn admit(
    state: &ApiState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    tenant: &mut Option<String>,
) -> ApiResult<Caller> {
    let caller = state.auth.caller(headers, uri, Scope::Upload).await?;
    *tenant = Some(caller.tenant.clone());
    charge_declared(state, &caller, headers)?;
    Ok(caller)
}

/// Count a request's `Content-Length` against its tenant's byte rate,
/// before the body is read (the server reads no more than it declares).
/// With a byte rate set, a body without a length (chunked) is refused
/// with 411: it could not be counted before it is read.
fn charge_declared(state: &ApiState, caller: &Caller, headers: &HeaderMap) -> ApiResult<()> {
    match declared_length(headers) {
        Some(n) => state.auth.charge_bytes(caller, n),
        None if state.auth.meters_bytes() => Err(ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "this server meters upload bytes: send a Content-Length",
        )),
        None => Ok(()),
    }
}

/// Form fields besides the files, at most (`transform`, `preset`, and
/// fields this API ignores).
const MAX_OTHER_FIELDS: usize = 16;

/// Longest transform spec or preset name, in bytes (a spec of the most
/// operations with long arguments stays far below).
pub(crate) const MAX_SPEC_BYTES: usize = 4096;

/// A text field, read up to [`MAX_SPEC_BYTES`].
async fn read_text(
    mut field: axum::extract::multipart::Field<'_>,
    name: &str,
) -> ApiResult<String> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.body_text())
    };
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad)? {
        if buf.len() + chunk.len() > MAX_SPEC_BYTES {
            return Err(spec_too_long(name));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_multipart",
            format!("the {name} field is not UTF-8"),
        )
    })
}

fn spec_too_long(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "spec_too_long",
        format!("{name} is longer than {MAX_SPEC_BYTES} bytes"),
    )
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
        let mut fields = 0usize;
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
            fields += 1;
            if fields > state.config.max_files + MAX_OTHER_FIELDS {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "too_many_fields",
                    format!(
                        "at most {} fields per form ({} files and {MAX_OTHER_FIELDS} others)",
                        state.config.max_files + MAX_OTHER_FIELDS,
                        state.config.max_files
                    ),
                ));
            }
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
                    let text = read_text(field, &field_name).await?;
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

/// What became of an upload.
enum Outcome {
    /// New jobs, one per file, in request order.
    Accepted(Vec<Accepted>),
    /// The idempotency key names a job of this tenant already: that job.
    Replayed(Accepted),
}

/// Validate every file first, then submit them all: a bad file refuses the
/// whole request, so a client never has to untangle a half-accepted batch.
/// With an idempotency `key`, the one file is submitted under that job id,
/// unless a job has that id already.
#[allow(clippy::too_many_arguments)]
async fn accept(
    state: &Arc<ApiState>,
    tenant: String,
    files: Vec<File>,
    transform: Option<String>,
    preset: Option<String>,
    key: Option<Uuid>,
    trace: TraceContext,
) -> ApiResult<Outcome> {
    if files.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_file",
            "the request contains no file",
        ));
    }
    if key.is_some() && files.len() != 1 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_needs_one_file",
            "an upload with an Idempotency-Key carries exactly one file",
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
    state
        .submitter
        .in_flight()
        .check_room(&tenant, files.len())
        .map_err(ApiError::busy)?;
    let probes = probe_all(state, &files).await?;
    for (f, probe) in files.iter().zip(&probes) {
        state
            .submitter
            .check_spec(&spec, probe)
            .map_err(|e| ApiError::from(e).in_file(&f.name))?;
    }
    // Submitted on a task of its own: a client hanging up must not stop a
    // job between its pending status and its publication.
    let state = state.clone();
    let submitted = tokio::spawn(async move {
        let submitter = &state.submitter;
        if let Some(key) = key {
            // The job this key names for this tenant (another tenant's
            // same key names another job).
            let job = keyed_job_id(&tenant, key);
            // Counted in first: while this request looks for an earlier
            // job of the key, no other request of this process can make
            // one.
            let owned = match submitter.in_flight().try_acquire(job, &tenant) {
                Ok(()) => true,
                // A job of this key is in flight here already (or being
                // submitted by a request still running).
                Err(pipeline_core::Error::AlreadyExists(_)) => false,
                Err(e) => return Err(ApiError::busy(e)),
            };
            let release = || {
                if owned {
                    submitter.in_flight().release(job);
                }
            };
            let earlier = match earlier_job(&state, job, &tenant).await {
                Ok(found) => found,
                Err(e) => {
                    release();
                    return Err(e);
                }
            };
            let mut pairs = files.into_iter().zip(probes);
            let Some((f, probe)) = pairs.next() else {
                release();
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "no_file", "no file"));
            };
            let upload = Upload {
                tenant: tenant.clone(),
                filename: Some(f.name),
                data: f.data,
                trace: Some(trace),
            };
            match earlier {
                // Still pending and no request of this process submitting
                // it: the request that recorded it may have died before
                // publishing it. Publish it again (a repeat is harmless).
                Some(Earlier::Job {
                    tenant: ref owner,
                    pending: true,
                    ..
                }) if owned && *owner == tenant => {
                    return match submitter.republish(job, upload, probe, &spec).await {
                        Ok(a) => Ok(Outcome::Replayed(a)),
                        Err(e) => {
                            release();
                            Err(e.into())
                        }
                    };
                }
                Some(earlier) => {
                    release();
                    return replayed(earlier, &tenant, job, &probe).map(Outcome::Replayed);
                }
                None => {}
            }
            if !owned {
                // The other request has not recorded its job yet.
                return Err(key_in_use());
            }
            let accepted = submitter.submit_acquired(job, upload, probe, &spec).await?;
            return Ok(Outcome::Accepted(vec![accepted]));
        }
        // Every job counted in before any is published: a batch that does
        // not fit is refused whole.
        let mut jobs = Vec::with_capacity(files.len());
        for _ in &files {
            let job = Uuid::now_v7();
            if let Err(e) = submitter.in_flight().try_acquire(job, &tenant) {
                for j in jobs {
                    submitter.in_flight().release(j);
                }
                return Err(ApiError::busy(e));
            }
            jobs.push(job);
        }
        let mut accepted = Vec::with_capacity(files.len());
        let mut pending = files.into_iter().zip(probes).zip(jobs);
        while let Some(((f, probe), job)) = pending.next() {
            let upload = Upload {
                tenant: tenant.clone(),
                filename: Some(f.name),
                data: f.data,
                trace: Some(trace),
            };
            match submitter.submit_acquired(job, upload, probe, &spec).await {
                Ok(a) => accepted.push(a),
                Err(e) => {
                    for (_, j) in pending {
                        submitter.in_flight().release(j);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(Outcome::Accepted(accepted))
    });
    submitted.await.unwrap_or_else(|e| {
        Err(ApiError::from(pipeline_core::Error::Unavailable(format!(
            "the submission stopped: {e}"
        ))))
    })
}

/// Check every file (structure and limits), in request order.
async fn probe_all(state: &ApiState, files: &[File]) -> ApiResult<Vec<Probe>> {
    let mut probes = Vec::with_capacity(files.len());
    for f in files {
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
    Ok(probes)
}

/// Header naming the job an upload creates, so that sending it again
/// (after a lost answer or a crash) creates nothing twice.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Keys may run ahead of the server's clock by this much.
const KEY_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// The request's idempotency key: a UUID v7 (it becomes the job id, and job
/// ids sort by time) not far in the future.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<Uuid>> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!("Idempotency-Key must be a UUID version 7 made by the client ({why})"),
        )
    };
    let key = v
        .to_str()
        .ok()
        .and_then(|t| Uuid::parse_str(t.trim()).ok())
        .ok_or_else(|| bad("not a UUID"))?;
    if key.get_version_num() != 7 {
        return Err(bad("not version 7"));
    }
    let now_ms = u64::try_from(pipeline_core::envelope::now_ms()).unwrap_or(0);
    let (secs, nanos) = key.get_timestamp().map(|t| t.to_unix()).unwrap_or((0, 0));
    let key_ms = secs.saturating_mul(1000) + u64::from(nanos / 1_000_000);
    if key_ms > now_ms.saturating_add(KEY_CLOCK_SKEW_MS) {
        return Err(bad("its time is in the future"));
    }
    Ok(Some(key))
}

fn key_in_use() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is being processed; retry shortly",
    )
}

/// A job an idempotency key named before.
enum Earlier {
    /// It exists: its owner and spec, and whether it is still pending in
    /// the result store.
    Job {
        tenant: String,
        spec: String,
        pending: bool,
    },
    /// It was deleted: the key cannot make it again.
    Deleted,
}

/// The job `job` (a key's) already, if any: in the result store, in the
/// archive, or deleted by `tenant` (its timeline ends with
/// `image.deleted`).
async fn earlier_job(state: &ApiState, job: Uuid, tenant: &str) -> ApiResult<Option<Earlier>> {
    if let Some(s) = state.results.summary(job).await? {
        return Ok(Some(Earlier::Job {
            tenant: s.tenant,
            spec: s.spec,
            pending: s.status == pipeline_core::store::JobState::Pending,
        }));
    }
    if let Some(r) = state.archive.get(job).await? {
        return Ok(Some(Earlier::Job {
            tenant: r.tenant,
            spec: r.spec,
            pending: false,
        }));
    }
    let deleted = state
        .activity
        .for_job(job)
        .await?
        .iter()
        .any(|e| e.event == pipeline_core::envelope::events::DELETED && e.tenant == tenant);
    Ok(deleted.then_some(Earlier::Deleted))
}

/// The answer to a repeated keyed upload: the job it made before.
fn replayed(earlier: Earlier, tenant: &str, job: Uuid, probe: &Probe) -> ApiResult<Accepted> {
    match earlier {
        Earlier::Job {
            tenant: owner,
            spec,
            ..
        } if owner == tenant => Ok(Accepted {
            id: job,
            format: pipeline_core::transform::codec::format_name(probe.format).to_string(),
            width: probe.width,
            height: probe.height,
            spec,
        }),
        // Only by a 74-bit collision of two tenants' keys.
        Earlier::Job { .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_conflict",
            "this Idempotency-Key names another job; make a new key",
        )),
        Earlier::Deleted => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_conflict",
            "this Idempotency-Key named a job that was deleted; make a new key",
        )),
    }
}

#[utoipa::path(
    post,
    path = "/v1/images",
    tag = "images",
    params(UploadQuery, TenantHeader, KeyHeader),
    request_body(
        description = "multipart/form-data with one or more files (fields named `files`, `file`, `image`, or any field with a file name; optional `transform` and `preset` text fields), or a raw image body",
        content(
            (UploadForm = "multipart/form-data"),
            ("image/jpeg"), ("image/png"), ("image/webp"), ("image/gif"), ("image/bmp"), ("image/tiff"),
            ("application/octet-stream")
        )
    ),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 202, description = "Accepted: every file is pending", body = UploadResponse),
        (status = 200, description = "The Idempotency-Key names a job of this tenant already: that job, nothing new (header `Idempotent-Replayed: true`)", body = UploadResponse),
        (status = 400, description = "Bad request (spec, preset, multipart, tenant, empty file, no file, bad Idempotency-Key or one with several files)", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key is being used by a request in progress (`idempotency_key_in_use`, retry after `Retry-After`) or names another tenant's job (`idempotency_key_conflict`)", body = ErrorBody),
        (status = 413, description = "A file or the request is too large, or too many files", body = ErrorBody),
        (status = 415, description = "Not an image, or a format the deployment does not accept", body = ErrorBody),
        (status = 422, description = "A corrupt image, or one over the pixel limits", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn upload(
    State(state): AppState,
    q: Result<Query<UploadQuery>, QueryRejection>,
    req: Request,
) -> ApiResult<Response> {
    let bytes = declared_length(req.headers()).unwrap_or(0);
    let mut tenant = None;
    let answer = upload_counted(state, q, req, &mut tenant).await;
    count_upload(&answer, tenant, bytes, "replayed");
    answer.map(|(resp, _)| resp)
}

/// The request's place in its trace, and its span: a child of its valid
/// `traceparent`, else a new trace. Every job of the request continues it.
fn request_trace(headers: &HeaderMap) -> (TraceContext, tracing::Span) {
    let parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let trace = TraceContext::following(parent.as_ref());
    let span = pipeline_core::trace::request_span("upload", &trace, parent.as_ref());
    (trace, span)
}

/// Mark the request's span failed with the answer's code and message.
fn request_failed(span: &tracing::Span, e: &ApiError) {
    pipeline_core::trace::failed(
        span,
        &format!("{} {}: {}", e.status.as_u16(), e.code, e.message),
    );
}

/// `traceresponse` (W3C Trace Context level 2): the trace the upload's
/// jobs continue, so a client can find them in the logs.
fn trace_response(resp: &mut Response, trace: &TraceContext) {
    if let Ok(v) = HeaderValue::from_str(&trace.traceparent()) {
        resp.headers_mut().insert("traceresponse", v);
    }
}

/// A request's `Content-Length`, if it declares one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Count an upload's files and bytes by outcome and tenant: `accepted`,
/// `ok_outcome` for a 200 (a replay on `POST /v1/images`), or the
/// refusal's code (a refused request counts 1).
fn count_upload(
    answer: &ApiResult<(Response, usize)>,
    tenant: Option<String>,
    bytes: u64,
    ok_outcome: &'static str,
) {
    let (outcome, files) = match answer {
        Ok((resp, files)) if resp.status() == StatusCode::OK => (ok_outcome.to_string(), *files),
        Ok((_, files)) => ("accepted".to_string(), *files),
        Err(e) => (e.code.to_string(), 1),
    };
    let tenant = tenant.unwrap_or_else(|| "-".to_string());
    use pipeline_core::telemetry::{UPLOAD_BYTES, UPLOADS};
    metrics::counter!(UPLOADS, "outcome" => outcome.clone(), "tenant" => tenant.clone())
        .increment(files as u64);
    metrics::counter!(UPLOAD_BYTES, "outcome" => outcome, "tenant" => tenant).increment(bytes);
}

/// [`upload`], with the caller's tenant once known; the answer and the
/// number of files it accepted.
async fn upload_counted(
    state: Arc<ApiState>,
    q: Result<Query<UploadQuery>, QueryRejection>,
    req: Request,
    counted_tenant: &mut Option<String>,
) -> ApiResult<(Response, usize)> {
    let caller = admit(&state, req.headers(), req.uri(), counted_tenant).await?;
    let tenant = caller.tenant.clone();
    let q = query(q)?;
    for (name, value) in [("transform", &q.transform), ("preset", &q.preset)] {
        if value.as_ref().is_some_and(|v| v.len() > MAX_SPEC_BYTES) {
            return Err(spec_too_long(name));
        }
    }
    let key = idempotency_key(req.headers())?;
    // Admission before the body: a full server refuses at once, without
    // reading (and buffering) what the client sends.
    state
        .submitter
        .in_flight()
        .check_room(&tenant, 1)
        .map_err(ApiError::busy)?;
    let (trace, span) = request_trace(req.headers());
    let (files, transform, preset) = read_within_time(&state, req, None)
        .instrument(span.clone())
        .await
        .inspect_err(|e| request_failed(&span, e))?;
    let outcome = accept(
        &state,
        tenant.clone(),
        files,
        q.transform.or(transform),
        q.preset.or(preset),
        key,
        trace,
    )
    .instrument(span.clone())
    .await
    .inspect_err(|e| request_failed(&span, e))?;
    let (status, accepted) = match outcome {
        Outcome::Accepted(a) => (StatusCode::ACCEPTED, a),
        Outcome::Replayed(a) => (StatusCode::OK, vec![a]),
    };
    // Signed links grant reading: only to a caller that may read.
    let sign = caller.scopes.allows(Scope::Read);
    let files = accepted.len();
    let images = accepted
        .iter()
        .map(|a| {
            let mut image = UploadedImage::from(a);
            if sign {
                image.status_url = state.auth.link(image.status_url, &caller);
                image.result_url = state.auth.link(image.result_url, &caller);
                image.original_url = state.auth.link(image.original_url, &caller);
            }
            image
        })
        .collect();
    let mut resp = (status, Json(UploadResponse { images })).into_response();
    trace_response(&mut resp, &trace);
    if status == StatusCode::OK {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Some(key) = key
        && let Ok(v) = HeaderValue::from_str(&key.to_string())
    {
        // Says that the key was seen (a proxy may drop the header).
        resp.headers_mut().insert("idempotency-key", v);
    }
    Ok((resp, files))
}

#[utoipa::path(
    post,
    path = "/image",
    tag = "prototype",
    params(TenantHeader),
    request_body(
        description = "multipart/form-data with the image in a field named `image` (the Python prototype's route)",
        content((LegacyUploadForm = "multipart/form-data"))
    ),
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, description = "Accepted", body = LegacyUploadResponse),
        (status = 400, description = "No `image` field, or a bad form or tenant", body = ErrorBody),
        (status = 413, description = "The image is too large", body = ErrorBody),
        (status = 415, description = "Not an image, or not multipart/form-data", body = ErrorBody),
        (status = 422, description = "A corrupt image, or one over the pixel limits", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn legacy_upload(State(state): AppState, req: Request) -> ApiResult<Response> {
    let bytes = declared_length(req.headers()).unwrap_or(0);
    let mut tenant = None;
    let answer = legacy_counted(state, req, &mut tenant).await;
    // The prototype's route answers 200 for an accepted upload.
    count_upload(&answer, tenant, bytes, "accepted");
    answer.map(|(resp, _)| resp)
}

/// [`legacy_upload`], with the caller's tenant once known.
async fn legacy_counted(
    state: Arc<ApiState>,
    req: Request,
    counted_tenant: &mut Option<String>,
) -> ApiResult<(Response, usize)> {
    let caller = admit(&state, req.headers(), req.uri(), counted_tenant).await?;
    let tenant = caller.tenant.clone();
    state
        .submitter
        .in_flight()
        .check_room(&tenant, 1)
        .map_err(ApiError::busy)?;
    let (trace, span) = request_trace(req.headers());
    let (files, _, _) = read_within_time(&state, req, Some("image"))
        .instrument(span.clone())
        .await
        .inspect_err(|e| request_failed(&span, e))?;
    if files.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_file",
            "the form has no field named \"image\"",
        ));
    }
    let Outcome::Accepted(accepted) = accept(&state, tenant, files, None, None, None, trace)
        .instrument(span.clone())
        .await
        .inspect_err(|e| request_failed(&span, e))?
    else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_file",
            "the form has no image",
        ));
    };
    let id = accepted.first().map(|a| a.id).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "no_file", "the form has no image")
    })?;
    let mut resp = (StatusCode::OK, Json(LegacyUploadResponse { id })).into_response();
    trace_response(&mut resp, &trace);
    Ok((resp, 1))
}
