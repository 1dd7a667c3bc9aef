//! The message envelope: metadata plus binary parts.
//!
//! The wire form is documented in `docs/wire-format.md` and implemented in
//! [`crate::wire`].

use std::collections::BTreeMap;

use bytes::Bytes;
use uuid::Uuid;

/// Well-known event names, used as routing keys.
pub mod events {
    /// An image was accepted by the API and waits for a transformer.
    pub const SUBMITTED: &str = "image.submitted";
    /// The transformed image, for the API's result store.
    pub const TRANSFORMED: &str = "image.transformed";
    /// Original + transformed + info, for the archive.
    pub const ARCHIVED: &str = "image.archived";
    /// A job failed permanently; carries the reason (and the original).
    pub const FAILED: &str = "image.failed";
    /// save2db gave a job's record up (refused by the archive, or out of
    /// attempts): the record is in the dead-letter queue, not the archive.
    pub const ARCHIVE_FAILED: &str = "image.archive_failed";
    /// A job was deleted from the result store and the archive.
    pub const DELETED: &str = "image.deleted";
}

/// Well-known header names.
pub mod headers {
    /// Id of the worker that produced the event.
    pub const WORKER: &str = "worker";
    /// Processing time in milliseconds.
    pub const DURATION_MS: &str = "duration-ms";
    /// Total size of the parts a message had, on a copy delivered without
    /// them (a queue declared with [`QueueSpec::without_parts`](crate::broker::QueueSpec::without_parts)).
    pub const PAYLOAD_BYTES: &str = "payload-bytes";
    /// Stable error code of a failed job.
    pub const ERROR_CODE: &str = "error-code";
    /// Human-readable error of a failed job.
    pub const ERROR: &str = "error";
    /// Deliveries a job had when it was given up.
    pub const ATTEMPTS: &str = "attempts";
    /// Delivery number of the message a worker handled when it emitted the
    /// event (1 = first try).
    pub const ATTEMPT: &str = "attempt";
    /// Prefix of every dead-letter header (removed when a message is replayed).
    pub const DEAD_LETTER_PREFIX: &str = "dead-letter-";
    /// Why a message was dead-lettered, for a person.
    pub const DEAD_LETTER_REASON: &str = "dead-letter-reason";
    /// `rejected`, `exhausted`, `abandoned` or `malformed`.
    pub const DEAD_LETTER_CAUSE: &str = "dead-letter-cause";
    /// Queue a dead-lettered message came from, without the namespace.
    pub const DEAD_LETTER_QUEUE: &str = "dead-letter-queue";
    /// Deliveries made before it was dead-lettered.
    pub const DEAD_LETTER_ATTEMPTS: &str = "dead-letter-attempts";
    /// Unix milliseconds at which it was dead-lettered.
    pub const DEAD_LETTER_AT_MS: &str = "dead-letter-at-ms";
    /// W3C `traceparent` of the span that produced the message
    /// ([`crate::trace`]).
    pub const TRACEPARENT: &str = "traceparent";
    /// Unix milliseconds at which the job was submitted.
    pub const SUBMITTED_AT_MS: &str = "submitted-at-ms";
    /// Original file name given by the client, if any.
    pub const FILENAME: &str = "filename";
}

/// Well-known part names.
pub mod parts {
    /// The image as uploaded.
    pub const ORIGINAL: &str = "original";
    /// The transformed image.
    pub const RESULT: &str = "result";
    /// JSON [`crate::store::JobInfo`] describing a finished job.
    pub const INFO: &str = "info";
}

/// One binary part of a message: bytes with a media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Name of the part within the message, for example `original`.
    pub name: String,
    /// Media type, for example `image/jpeg`.
    pub content_type: String,
    /// The bytes, shared without copying.
    pub data: Bytes,
}

impl Part {
    /// A new part.
    pub fn new(name: impl Into<String>, content_type: impl Into<String>, data: Bytes) -> Self {
        Self {
            name: name.into(),
            content_type: content_type.into(),
            data,
        }
    }
}

/// A message: metadata plus zero or more binary parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id of this message (one per publish).
    pub id: Uuid,
    /// Event name; also the routing key.
    pub event: String,
    /// The job this message belongs to.
    pub job_id: Uuid,
    /// Tenant owning the job.
    pub tenant: String,
    /// Delivery attempt, starting at 1; maintained by the broker.
    pub attempt: u32,
    /// Unix milliseconds when the message was created.
    pub created_at_ms: i64,
    /// Transform spec in compact form; empty for none.
    pub spec: String,
    /// Small string metadata (see [`headers`]).
    pub headers: BTreeMap<String, String>,
    /// Binary parts.
    pub parts: Vec<Part>,
}

impl Envelope {
    /// A new message for `job_id` with a fresh id and the current time.
    pub fn new(event: impl Into<String>, job_id: Uuid, tenant: impl Into<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            event: event.into(),
            job_id,
            tenant: tenant.into(),
            attempt: 1,
            created_at_ms: now_ms(),
            spec: String::new(),
            headers: BTreeMap::new(),
            parts: Vec::new(),
        }
    }

    /// Builder-style: set the spec.
    pub fn with_spec(mut self, spec: impl Into<String>) -> Self {
        self.spec = spec.into();
        self
    }

    /// Builder-style: add a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Builder-style: add a part.
    pub fn with_part(mut self, part: Part) -> Self {
        self.parts.push(part);
        self
    }

    /// The part called `name`, if present.
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// The header called `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Total size of all parts in bytes.
    pub fn payload_len(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    /// Size of the parts this message was published with: its own, or on
    /// a copy without parts, the size its [`headers::PAYLOAD_BYTES`] says.
    pub fn payload_size(&self) -> u64 {
        match self.header(headers::PAYLOAD_BYTES) {
            Some(v) if self.parts.is_empty() => v.parse().unwrap_or(0),
            _ => self.payload_len() as u64,
        }
    }

    /// This message without its parts, for a queue whose consumers do not
    /// read them: same id, metadata and headers, plus
    /// [`headers::PAYLOAD_BYTES`] (when it had parts).
    pub fn without_parts(&self) -> Self {
        let mut copy = Self {
            id: self.id,
            event: self.event.clone(),
            job_id: self.job_id,
            tenant: self.tenant.clone(),
            attempt: self.attempt,
            created_at_ms: self.created_at_ms,
            spec: self.spec.clone(),
            headers: self.headers.clone(),
            parts: Vec::new(),
        };
        if !self.parts.is_empty() {
            copy.headers.insert(
                headers::PAYLOAD_BYTES.into(),
                self.payload_len().to_string(),
            );
        }
        copy
    }

    /// A copy of this message as a new event of the same job: fresh id and
    /// time, same tenant, spec and headers, no parts.
    pub fn follow_up(&self, event: impl Into<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            event: event.into(),
            job_id: self.job_id,
            tenant: self.tenant.clone(),
            attempt: 1,
            created_at_ms: now_ms(),
            spec: self.spec.clone(),
            headers: self.headers.clone(),
            parts: Vec::new(),
        }
    }
}

/// Current time as Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
