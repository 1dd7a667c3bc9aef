//! The job model shared by every role: states, failures, what a
//! transformer reports about an image, and bytes with a media type.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where a job stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, not finished.
    Pending,
    /// Transformed successfully.
    Done,
    /// Failed permanently; see the error.
    Failed,
}

impl JobState {
    /// Lower-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Parse [`as_str`](Self::as_str) output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "done" => Some(Self::Done),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    /// Done or failed.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// Why a job failed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// Stable machine-readable code, for example `corrupt_image`.
    pub code: String,
    /// Human-readable reason.
    pub message: String,
}

/// Facts about one image file.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaInfo {
    /// Format name, for example `jpeg`.
    pub format: String,
    /// Media type, for example `image/jpeg`.
    pub content_type: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// What a transformer reports about a job: the `info` part of its messages.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The uploaded image (absent when it could not even be read).
    pub original: Option<MediaInfo>,
    /// The transformed image (absent when the job failed).
    pub result: Option<MediaInfo>,
    /// Milliseconds spent decoding.
    pub decode_ms: f64,
    /// Milliseconds spent in transforms.
    pub transform_ms: f64,
    /// Milliseconds spent encoding.
    pub encode_ms: f64,
    /// Worker that ran the job.
    pub worker: String,
}

/// Bytes with a media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Media type.
    pub content_type: String,
    /// The bytes.
    pub data: Bytes,
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
