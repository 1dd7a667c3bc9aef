//! Uploads: `POST /v1/images` (multipart or a raw body) and the
//! prototype's `POST /image`. Every file is checked before any is
//! submitted, so a request is accepted whole or refused whole.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pipeline_core::services::{Accepted, Upload};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::common::{ApiResult, AppState, query, tenant};
use crate::error::ApiError;
use crate::openapi::TenantHeader;
use crate::responses::*;
use crate::schema::{ErrorBody, LegacyUploadResponse, UploadResponse, UploadedImage};

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

#[utoipa::path(
    post,
    path = "/v1/images",
    tag = "images",
    params(UploadQuery, TenantHeader),
    request_body(
        description = "multipart/form-data with one or more files (fields named `files`, `file`, `image`, or any field with a file name; optional `transform` and `preset` text fields), or a raw image body",
        content(
            (UploadForm = "multipart/form-data"),
            ("image/jpeg"), ("image/png"), ("image/webp"), ("image/gif"), ("image/bmp"), ("image/tiff"),
            ("application/octet-stream")
        )
    ),
    responses(
        (status = 202, description = "Accepted: every file is pending", body = UploadResponse),
        (status = 400, description = "Bad request (spec, preset, multipart, tenant, empty file, no file)", body = ErrorBody),
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
    let images = accepted.iter().map(UploadedImage::from).collect();
    Ok((StatusCode::ACCEPTED, Json(UploadResponse { images })).into_response())
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
        (status = 200, description = "Accepted", body = LegacyUploadResponse),
        (status = 400, description = "No `image` field, or a bad form or tenant", body = ErrorBody),
        (status = 413, description = "The image is too large", body = ErrorBody),
        (status = 415, description = "Not an image, or not multipart/form-data", body = ErrorBody),
        (status = 422, description = "A corrupt image, or one over the pixel limits", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
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
    let id = accepted.first().map(|a| a.id).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "no_file", "the form has no image")
    })?;
    Ok((StatusCode::OK, Json(LegacyUploadResponse { id })).into_response())
}
