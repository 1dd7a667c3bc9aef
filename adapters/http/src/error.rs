//! JSON errors with stable codes.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pipeline_core::{Error, ImageErrorKind};
use serde_json::json;

/// An error answer: status, stable `code`, human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What was wrong, for a person.
    pub message: String,
    /// Seconds to wait before retrying, when the error knows (else 503,
    /// 507, 429 and a passing 409 say 1).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 404 for a job id.
    pub fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no image with id {id:?}"),
        )
    }

    /// 503 for the in-flight limit, whose message (how many jobs, the
    /// limit) is the server's own and safe to show.
    pub(crate) fn busy(e: Error) -> Self {
        match e {
            Error::Unavailable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            e => e.into(),
        }
    }

    /// Prefix the message with the file it is about.
    pub fn in_file(mut self, name: &str) -> Self {
        self.message = format!("{name}: {}", self.message);
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match &e {
            Error::InvalidInput(m) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_input", m.clone())
            }
            Error::Image { kind, message } => {
                let status = match kind {
                    ImageErrorKind::NotAnImage | ImageErrorKind::UnsupportedFormat => {
                        StatusCode::UNSUPPORTED_MEDIA_TYPE
                    }
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                Self::new(status, kind.code(), message.clone())
            }
            Error::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m.clone()),
            Error::Unsupported(m) => {
                Self::new(StatusCode::NOT_IMPLEMENTED, "unsupported", m.clone())
            }
            Error::Quota(m) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", m.clone())
            }
            Error::StorageFull { .. } => {
                tracing::error!(error = %message, "a store is full");
                Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    "a store has no room left; retry later",
                )
            }
            e if e.is_retryable() => {
                tracing::warn!(error = %message, "backend unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a backend is temporarily unavailable; retry shortly",
                )
            }
            Error::Closed(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the service is shutting down; retry shortly",
            ),
            _ => {
                tracing::error!(error = %message, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut resp = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::INSUFFICIENT_STORAGE
            || self.status == StatusCode::TOO_MANY_REQUESTS
            // A conflict that passes (a job still running); a key of
            // another job stays a conflict.
            || (self.status == StatusCode::CONFLICT && self.code != "idempotency_key_conflict")
        {
            let seconds = self.retry_after.unwrap_or(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE
            || self.status == StatusCode::REQUEST_TIMEOUT
        {
            // The rest of the body was never read: the connection cannot
            // carry another request, and a client must not reuse it.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
