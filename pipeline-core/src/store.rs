//! Archive contracts: finished jobs with their images and metadata, and
//! the activity log.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
pub use crate::job::{Blob, JobFailure, JobInfo, JobState, MediaInfo, sha256_hex};

/// One finished job to archive (done or failed).
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveRecord {
    /// Job id (the idempotency key).
    pub job_id: Uuid,
    /// Owner.
    pub tenant: String,
    /// `Done` or `Failed`.
    pub state: JobState,
    /// Transform spec in compact form.
    pub spec: String,
    /// The uploaded bytes.
    pub original: Option<Blob>,
    /// The transformed bytes.
    pub result: Option<Blob>,
    /// Dimensions, formats, hashes, timings.
    pub info: JobInfo,
    /// Failure reason.
    pub error: Option<JobFailure>,
    /// Unix ms of submission.
    pub submitted_at_ms: i64,
    /// Unix ms when the transformer finished.
    pub finished_at_ms: i64,
}

/// Longest tenant an archive keeps.
pub const MAX_TENANT_LEN: usize = 128;
/// Longest worker name an archive keeps.
pub const MAX_WORKER_LEN: usize = 255;
/// Longest failure code an archive keeps.
pub const MAX_ERROR_CODE_LEN: usize = 64;
/// Longest content type an archive keeps.
pub const MAX_CONTENT_TYPE_LEN: usize = 100;
/// Longest format name an archive keeps.
pub const MAX_FORMAT_LEN: usize = 16;

impl ArchiveRecord {
    /// Refuse a record whose fields exceed what every archive keeps (the
    /// `MAX_*_LEN` limits), so a store never truncates one silently.
    pub fn check(&self) -> Result<()> {
        let too_long = |what: &str, value: &str, max: usize| {
            (value.len() > max).then(|| {
                crate::Error::invalid(format!(
                    "job {}: {what} is {} bytes, the archive keeps at most {max}",
                    self.job_id,
                    value.len()
                ))
            })
        };
        let mut problems = vec![
            too_long("the tenant", &self.tenant, MAX_TENANT_LEN),
            too_long("the worker", &self.info.worker, MAX_WORKER_LEN),
        ];
        if let Some(e) = &self.error {
            problems.push(too_long("the error code", &e.code, MAX_ERROR_CODE_LEN));
        }
        for m in [&self.info.original, &self.info.result]
            .into_iter()
            .flatten()
        {
            problems.push(too_long("a format", &m.format, MAX_FORMAT_LEN));
            problems.push(too_long(
                "a content type",
                &m.content_type,
                MAX_CONTENT_TYPE_LEN,
            ));
        }
        for b in [&self.original, &self.result].into_iter().flatten() {
            problems.push(too_long(
                "a content type",
                &b.content_type,
                MAX_CONTENT_TYPE_LEN,
            ));
        }
        match problems.into_iter().flatten().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Content keys (hex SHA-256) of the original and the result: the key a
    /// [`BlobRef`](crate::blob::BlobRef) names, or, for bytes, taken from
    /// `info` when it describes the same bytes (the transformer hashed them
    /// already), computed otherwise.
    pub fn blob_keys(&self) -> (Option<String>, Option<String>) {
        fn key(blob: &Option<Blob>, info: &Option<MediaInfo>) -> Option<String> {
            let blob = blob.as_ref()?;
            if let Ok(Some(r)) = crate::blob::BlobRef::of_blob(blob) {
                return Some(r.key);
            }
            match info {
                Some(i) if i.size == blob.data.len() as u64 && i.sha256.len() == 64 => {
                    Some(i.sha256.clone())
                }
                _ => Some(sha256_hex(&blob.data)),
            }
        }
        (
            key(&self.original, &self.info.original),
            key(&self.result, &self.info.result),
        )
    }
}

/// An archived job as read back.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Job id.
    pub job_id: Uuid,
    /// Owner.
    pub tenant: String,
    /// `Done` or `Failed`.
    pub state: JobState,
    /// Transform spec in compact form.
    pub spec: String,
    /// The uploaded image.
    pub original: Option<MediaInfo>,
    /// The transformed image.
    pub result: Option<MediaInfo>,
    /// Failure reason.
    pub error: Option<JobFailure>,
    /// Worker that ran the job.
    pub worker: String,
    /// Unix ms of submission.
    pub submitted_at_ms: i64,
    /// Unix ms when the transformer finished.
    pub finished_at_ms: i64,
    /// Unix ms when the archive stored it.
    pub archived_at_ms: i64,
}

/// One page of a listing.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// Newest first.
    pub items: Vec<ImageRecord>,
    /// Pass back to get the next page; `None` at the end.
    pub next_cursor: Option<Uuid>,
}

impl Page {
    /// A page from up to `limit + 1` records read newest first: the extra
    /// one only tells that more follow.
    pub fn from_overfetch(mut items: Vec<ImageRecord>, limit: usize) -> Self {
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|r| r.job_id)
        } else {
            None
        };
        Self { items, next_cursor }
    }
}

/// What [`ImageStore::delete`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deletion {
    /// Whether the tenant has such a job in the archive, or had and
    /// deleted it before.
    pub found: bool,
    /// Blob keys no archived job refers to any more. The store removed
    /// those it holds itself; a claim-check blob store elsewhere is the
    /// caller's to clean.
    pub released: Vec<String>,
}

/// What [`ImageStore::expire`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expiry {
    /// Jobs removed.
    pub jobs: u64,
    /// Marks of deleted jobs removed (they count toward the limit).
    pub marks: u64,
    /// Blob keys released (as in [`Deletion::released`]).
    pub released: Vec<String>,
}

/// The permanent archive of jobs.
///
/// # Contract
/// - `save` stores a batch atomically: all records or none. A record
///   [`ArchiveRecord::check`] refuses fails the batch with a permanent
///   (non-retryable) error.
/// - `save` is idempotent by job id: saving a job again (double delivery)
///   changes nothing and creates no duplicate row; the first write wins.
/// - Blobs are content-addressed by SHA-256: identical bytes are stored once
///   however many jobs share them.
/// - `get`, `original` and `result` return exactly what was saved, or `None`
///   for an unknown job (never an error).
/// - `list` returns a tenant's jobs newest first, never another tenant's,
///   and walking the cursors visits each job exactly once.
/// - A part saved as a [`BlobRef`](crate::blob::BlobRef) (claim check) is
///   kept as a reference: `original`/`result` return a blob holding the
///   reference, to resolve with [`ClaimCheck::resolve`](crate::ClaimCheck::resolve)
///   (a store that is also the blob store may return the bytes).
/// - `referenced` tells which blob keys a saved job still points to.
/// - `delete` removes a tenant's archived job and releases its blobs (a
///   blob another job refers to stays), leaving a mark: the job then reads
///   as unknown everywhere, and saving it again changes nothing (a late
///   duplicate cannot bring it back). Idempotent (`found` again the second
///   time); a job that is not archived, or is another tenant's, is left
///   alone with `found: false`.
/// - `expire` removes jobs finished before a time for good (and the marks
///   of deleted jobs older than that), releasing blobs as `delete` does,
///   safely against a concurrent `save` of a job sharing a blob.
#[async_trait]
pub trait ImageStore: Send + Sync + fmt::Debug {
    /// Store finished jobs (see the contract).
    async fn save(&self, records: &[ArchiveRecord]) -> Result<()>;
    /// The archived record of a job.
    async fn get(&self, job_id: Uuid) -> Result<Option<ImageRecord>>;
    /// The original bytes of a job.
    async fn original(&self, job_id: Uuid) -> Result<Option<Blob>>;
    /// The transformed bytes of a job.
    async fn result(&self, job_id: Uuid) -> Result<Option<Blob>>;
    /// A tenant's jobs, newest first, after `cursor`, at most `limit`.
    async fn list(&self, tenant: &str, cursor: Option<Uuid>, limit: usize) -> Result<Page>;
    /// `Ok` while the store is reachable.
    async fn ready(&self) -> Result<()>;
    /// Which of `keys` an archived job refers to (original or result).
    async fn referenced(&self, keys: &[String]) -> Result<std::collections::HashSet<String>>;
    /// Delete `tenant`'s job (see the contract).
    async fn delete(&self, job_id: Uuid, tenant: &str) -> Result<Deletion>;
    /// Remove up to `limit` jobs finished before `finished_before_ms`.
    async fn expire(&self, finished_before_ms: i64, limit: usize) -> Result<Expiry>;
}

/// One event of the activity log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityEntry {
    /// Id of the message the event came from (the idempotency key).
    pub message_id: Uuid,
    /// Unix ms of the event.
    pub at_ms: i64,
    /// Event name.
    pub event: String,
    /// Job id.
    pub job_id: Uuid,
    /// Owner.
    pub tenant: String,
    /// Worker that emitted the event, if any.
    pub worker: Option<String>,
    /// Bytes carried by the message.
    pub size: u64,
    /// Processing time, if reported.
    pub duration_ms: Option<f64>,
    /// Error, if the event is a failure.
    pub error: Option<String>,
    /// Delivery number of the message the worker handled (1 = first try),
    /// if reported.
    #[serde(default)]
    pub attempt: Option<u32>,
}

/// Where the activity log is kept.
///
/// # Contract
/// - `append` is idempotent by `message_id`: a redelivered event is recorded once.
/// - `for_job` returns a job's entries oldest first.
#[async_trait]
pub trait ActivityLog: Send + Sync + fmt::Debug {
    /// Record entries.
    async fn append(&self, entries: &[ActivityEntry]) -> Result<()>;
    /// A job's entries, oldest first.
    async fn for_job(&self, job_id: Uuid) -> Result<Vec<ActivityEntry>>;
    /// `Ok` while the log is reachable.
    async fn ready(&self) -> Result<()> {
        Ok(())
    }
}
