//! The one error type of the SDK.

use std::fmt;

/// Result alias used throughout the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the SDK reports, classified by what the caller can do about it.
///
/// Adapters map their private errors (lapin, fred, sea-orm...) into these
/// variants; no backend type appears here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The thing asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The input is wrong and will stay wrong: retrying cannot help.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An image could not be processed (corrupt, unsupported, over a limit).
    #[error("{kind}: {message}")]
    Image {
        /// Stable machine-readable code, for example `corrupt_image`.
        kind: ImageErrorKind,
        /// Human-readable detail.
        message: String,
    },
    /// A message frame could not be decoded.
    #[error("malformed frame: {0}")]
    MalformedFrame(String),
    /// A backend is unreachable or overloaded; retrying later may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The component was closed.
    #[error("closed: {0}")]
    Closed(String),
    /// A configuration value is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The backend cannot do this operation (an optional method it does
    /// not implement).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A store has no room left (a full disk, a database or table that
    /// cannot grow). Retryable: the work is held until room is made, never
    /// dropped or dead-lettered.
    #[error("{backend} is full: {message}")]
    StorageFull {
        /// Which backend, for example `postgres` or `file`.
        backend: &'static str,
        /// The backend's message, already free of credentials.
        message: String,
    },
    /// A tenant used up one of its quotas (jobs in flight, request or
    /// byte rate); retrying later may succeed.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// A backend reported an error that fits no other variant.
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend, for example `sqlite` or `rabbitmq`.
        backend: &'static str,
        /// The backend's message, already free of credentials.
        message: String,
        /// Whether the operation may succeed when retried.
        retryable: bool,
    },
}

/// Why an image was rejected. The `Display` form is the stable code used in
/// HTTP error bodies and failure records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ImageErrorKind {
    /// The bytes are not an image of any known format.
    NotAnImage,
    /// A known format the deployment does not accept.
    UnsupportedFormat,
    /// The header or data is damaged or truncated.
    CorruptImage,
    /// Width, height or pixel count over the configured limit.
    TooManyPixels,
    /// A transform could not be applied (bad geometry, for instance).
    TransformFailed,
    /// The encoder could not write the requested output.
    EncodeFailed,
    /// A decoder or transform panicked; the job fails, the worker lives on.
    Panicked,
    /// The job ran over its time limit (`ImageLimits::job_timeout`).
    Timeout,
    /// The encoded result would be over `ImageLimits::max_result_bytes`.
    ResultTooLarge,
}

impl ImageErrorKind {
    /// Stable code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotAnImage => "not_an_image",
            Self::UnsupportedFormat => "unsupported_format",
            Self::CorruptImage => "corrupt_image",
            Self::TooManyPixels => "too_many_pixels",
            Self::TransformFailed => "transform_failed",
            Self::EncodeFailed => "encode_failed",
            Self::Panicked => "panicked",
            Self::Timeout => "timeout",
            Self::ResultTooLarge => "result_too_large",
        }
    }
}

impl fmt::Display for ImageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Error {
    /// Shorthand for an [`Error::Image`].
    pub fn image(kind: ImageErrorKind, message: impl Into<String>) -> Self {
        Self::Image {
            kind,
            message: message.into(),
        }
    }

    /// Shorthand for an [`Error::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// Shorthand for a backend error.
    pub fn backend(backend: &'static str, message: impl Into<String>, retryable: bool) -> Self {
        Self::Backend {
            backend,
            message: message.into(),
            retryable,
        }
    }

    /// Whether the same operation may succeed if tried again later.
    ///
    /// Transient failures (outages, timeouts) are retryable; bad input and bad
    /// images are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::Timeout(_) | Self::StorageFull { .. } | Self::Quota(_) => {
                true
            }
            Self::Backend { retryable, .. } => *retryable,
            Self::NotFound(_)
            | Self::AlreadyExists(_)
            | Self::InvalidInput(_)
            | Self::Image { .. }
            | Self::MalformedFrame(_)
            | Self::Closed(_)
            | Self::Config(_)
            | Self::Unsupported(_) => false,
        }
    }

    /// A stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::InvalidInput(_) => "invalid_input",
            Self::Image { kind, .. } => kind.code(),
            Self::MalformedFrame(_) => "malformed_frame",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Closed(_) => "closed",
            Self::Config(_) => "config",
            Self::Unsupported(_) => "unsupported",
            Self::StorageFull { .. } => "storage_full",
            Self::Quota(_) => "quota_exceeded",
            Self::Backend { .. } => "backend",
        }
    }

    /// What may be shown to a client about this error: the whole message
    /// when it is about the client's own input, else a fixed sentence
    /// naming the kind of failure. Backend messages (driver text, host
    /// names, file paths) stay in the logs.
    pub fn public_message(&self) -> String {
        match self {
            Self::NotFound(m)
            | Self::AlreadyExists(m)
            | Self::InvalidInput(m)
            | Self::Quota(m)
            | Self::Unsupported(m) => m.clone(),
            Self::Image { message, .. } => message.clone(),
            Self::MalformedFrame(_) => "a message of the job could not be read".into(),
            Self::Unavailable(_) => "a backend was unavailable".into(),
            Self::Timeout(_) => "a backend did not answer in time".into(),
            Self::Closed(_) => "the service was shutting down".into(),
            Self::Config(_) => "the service is misconfigured".into(),
            Self::StorageFull { .. } => "a store had no room left".into(),
            Self::Backend { retryable, .. } => if *retryable {
                "a backend was unavailable"
            } else {
                "a backend refused the operation"
            }
            .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(Error::Unavailable("x".into()).is_retryable());
        assert!(Error::backend("sqlite", "locked", true).is_retryable());
        assert!(!Error::backend("sqlite", "syntax", false).is_retryable());
        assert!(!Error::image(ImageErrorKind::CorruptImage, "eof").is_retryable());
        assert_eq!(
            Error::image(ImageErrorKind::TooManyPixels, "big").code(),
            "too_many_pixels"
        );
        let full = Error::StorageFull {
            backend: "file",
            message: "write /var/lib/x: No space left on device".into(),
        };
        assert!(full.is_retryable());
        assert_eq!(full.code(), "storage_full");
    }

    #[test]
    fn public_messages_keep_backend_details_out() {
        let secret = "postgres://admin:hunter2@db-7.internal/prod: connection refused";
        for e in [
            Error::backend("postgres", secret, true),
            Error::backend("postgres", secret, false),
            Error::Unavailable(secret.into()),
            Error::Timeout(secret.into()),
            Error::Config(secret.into()),
            Error::MalformedFrame(secret.into()),
            Error::StorageFull {
                backend: "postgres",
                message: secret.into(),
            },
        ] {
            let public = e.public_message();
            assert!(
                !public.contains("db-7") && !public.contains("hunter2"),
                "{public}"
            );
            assert!(!public.is_empty());
        }
        // About the client's own input: said whole.
        let bad = Error::image(ImageErrorKind::CorruptImage, "truncated PNG chunk");
        assert_eq!(bad.public_message(), "truncated PNG chunk");
    }
}
