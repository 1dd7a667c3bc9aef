//! The JSON bodies of the API, as types: the handlers serialize them and
//! the OpenAPI document is generated from them, so the two cannot drift.

use std::collections::BTreeMap;

use pipeline_core::ImageRecord;
use pipeline_core::services::Accepted;
use pipeline_core::store::{JobFailure, JobInfo, JobState, MediaInfo};
use pipeline_core::transform::Param;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Answer to `POST /v1/images`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    /// One entry per uploaded file, in request order.
    pub images: Vec<UploadedImage>,
}

/// One accepted upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedImage {
    /// Job id.
    pub id: Uuid,
    /// Always `pending` at upload.
    pub status: JobState,
    /// Detected input format (`jpeg`, `png`...).
    pub format: String,
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// The transform spec that will be applied, in compact form.
    pub spec: String,
    /// `GET` for the status.
    pub status_url: String,
    /// `GET` for the transformed image.
    pub result_url: String,
    /// `GET` for the image as uploaded.
    pub original_url: String,
}

impl From<&Accepted> for UploadedImage {
    fn from(a: &Accepted) -> Self {
        Self {
            id: a.id,
            status: JobState::Pending,
            format: a.format.clone(),
            width: a.width,
            height: a.height,
            spec: a.spec.clone(),
            status_url: status_path(a.id),
            result_url: result_path(a.id),
            original_url: original_path(a.id),
        }
    }
}

/// Path of a job's status.
pub(crate) fn status_path(id: Uuid) -> String {
    format!("/v1/images/{id}")
}

/// Path of a job's result.
pub(crate) fn result_path(id: Uuid) -> String {
    format!("/v1/images/{id}/result")
}

/// Path of a job's original.
pub(crate) fn original_path(id: Uuid) -> String {
    format!("/v1/images/{id}/original")
}

/// Answer to `GET /v1/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Jobs this API process accepted and has not seen finish: the
    /// caller's tenant's, or every tenant's for the admin scope (and when
    /// auth is off).
    pub in_flight: usize,
    /// Beyond this many, uploads get 503.
    pub max_in_flight: usize,
}

/// Answer to the prototype's `POST /image`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LegacyUploadResponse {
    /// Job id.
    pub id: Uuid,
}

/// Where a job stands (`GET /v1/images/{id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageStatus {
    /// Job id.
    pub id: Uuid,
    /// Owner.
    pub tenant: String,
    /// `pending`, `done` or `failed`.
    pub status: JobState,
    /// Transform spec in compact form.
    pub spec: String,
    /// Unix ms of submission.
    pub submitted_at_ms: i64,
    /// Unix ms of the last change.
    pub updated_at_ms: i64,
    /// What the transformer reported (while the job is in the result store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<JobInfo>,
    /// The uploaded image (once archived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<MediaInfo>,
    /// The transformed image (once archived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<MediaInfo>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobFailure>,
    /// Worker that ran it (once archived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Whether this comes from the archive (the result store's copy expired).
    pub archived: bool,
    /// Why the job's record never reached the archive (save2db gave it up;
    /// it waits in the dead-letter queue for a replay). The result is
    /// served while the result store keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_error: Option<JobFailure>,
    /// `GET` for the transformed image: a signed link (valid for a
    /// while, no credentials needed) when the API authenticates.
    pub result_url: String,
    /// `GET` for the image as uploaded, signed likewise.
    pub original_url: String,
}

/// A job's timeline (`GET /v1/images/{id}/events`).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobEvents {
    /// Job id.
    pub id: Uuid,
    /// Every event the activity log recorded for the job, oldest first:
    /// `image.submitted`, `image.transformed`/`image.failed`,
    /// `image.archived`, `image.archive_failed`, `image.deleted`; each with
    /// its worker, size, duration, error and delivery `attempt`.
    pub events: Vec<pipeline_core::store::ActivityEntry>,
}

impl From<ImageRecord> for ImageStatus {
    fn from(r: ImageRecord) -> Self {
        Self {
            id: r.job_id,
            tenant: r.tenant,
            status: r.state,
            spec: r.spec,
            submitted_at_ms: r.submitted_at_ms,
            updated_at_ms: r.finished_at_ms,
            info: None,
            original: r.original,
            result: r.result,
            error: r.error,
            worker: Some(r.worker),
            archived: true,
            archive_error: None,
            result_url: result_path(r.job_id),
            original_url: original_path(r.job_id),
        }
    }
}

/// A job that is not finished (`202`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Pending {
    /// Job id.
    pub id: Uuid,
    /// Always `pending`.
    pub status: JobState,
}

/// A page of archived jobs (`GET /v1/images`), newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageList {
    /// The jobs of this page.
    pub items: Vec<ListedImage>,
    /// Pass back as `cursor` for the next page; `null` at the end.
    pub next_cursor: Option<Uuid>,
}

/// An archived job in a list, with links to its images.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListedImage {
    /// The archived job.
    #[serde(flatten)]
    pub record: ImageRecord,
    /// `GET` for the transformed image (signed when the API authenticates).
    pub result_url: String,
    /// `GET` for the image as uploaded (signed likewise).
    pub original_url: String,
}

/// A link that needs no credentials (`GET /v1/events/link`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Link {
    /// Path and query, relative to the API's address.
    pub url: String,
}

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Stable code and human message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`corrupt_image`, `not_found`...).
    pub code: String,
    /// What was wrong, for a person.
    pub message: String,
    /// For `job_failed`: the job's own failure code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The catalogue of transforms (`GET /v1/transforms`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Catalogue {
    /// Every registered operation, by name.
    pub operations: Vec<OperationInfo>,
    /// Every preset (`?preset=`), by name.
    pub presets: Vec<PresetInfo>,
    /// The spec applied when an upload names none.
    pub default_transform: String,
    /// Most operations in one spec.
    pub max_operations: usize,
}

/// One operation of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationInfo {
    /// Its name in specs.
    pub name: String,
    /// One line on what it does and its arguments.
    pub usage: String,
    /// Its arguments, in order (`name:arg1:arg2`).
    pub params: Vec<Param>,
}

/// One preset of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresetInfo {
    /// Its name (`?preset=NAME`).
    pub name: String,
    /// The spec it stands for.
    pub spec: String,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves requests.
    pub status: String,
}

/// `GET /readyz`: `status` is `ready` or `not_ready`; every other key is a
/// backend (`broker`, `results`, `archive`, `blobs`) with `ok` or what is
/// wrong.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "broker": "ok", "archive": "ok"}))]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// Each backend checked: `ok`, or its error.
    #[serde(flatten)]
    pub checks: BTreeMap<String, String>,
}

/// Answer to `GET /v1/admin/queues`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    /// The pipeline's queues, in the order a job crosses them.
    pub queues: Vec<QueueInfo>,
}

/// One queue, as the broker counts it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueInfo {
    /// Queue name, without the namespace.
    pub queue: String,
    /// Messages in the queue (what each broker counts: `docs/operations/admin.md`).
    pub messages: u64,
    /// Consumers attached; null where the broker does not tell (NATS).
    pub consumers: Option<u64>,
    /// Messages in its dead-letter queue.
    pub dead_letters: u64,
}

impl From<pipeline_core::services::admin::QueueOverview> for QueueInfo {
    fn from(q: pipeline_core::services::admin::QueueOverview) -> Self {
        Self {
            queue: q.queue,
            messages: q.messages,
            consumers: q.consumers,
            dead_letters: q.dead_letters,
        }
    }
}

/// Answer to `GET /v1/admin/queues/{queue}/dead`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// The queue whose dead letters these are.
    pub queue: String,
    /// Oldest first.
    pub dead_letters: Vec<DeadLetterInfo>,
}

/// One dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterInfo {
    /// Message id.
    pub id: Uuid,
    /// Event (its routing key), for example `image.submitted`.
    pub event: String,
    /// The job it belongs to.
    pub job_id: Uuid,
    /// Tenant owning the job.
    pub tenant: String,
    /// Why it was dead-lettered.
    pub reason: Option<String>,
    /// `rejected`, `exhausted`, `abandoned` or `malformed`.
    pub cause: Option<String>,
    /// Deliveries made before it was dead-lettered.
    pub attempts: Option<u32>,
    /// Unix milliseconds of the decision.
    pub dead_at_ms: Option<i64>,
    /// Unix milliseconds when the message was created.
    pub created_at_ms: i64,
    /// Every header of the message.
    pub headers: BTreeMap<String, String>,
    /// Its parts (name, type, size), without their bytes.
    pub parts: Vec<DeadLetterPart>,
}

/// A part of a dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPart {
    /// Part name, for example `original`.
    pub name: String,
    /// Media type.
    pub content_type: String,
    /// Size in bytes.
    pub bytes: u64,
}

impl From<pipeline_core::services::admin::DeadLetter> for DeadLetterInfo {
    fn from(d: pipeline_core::services::admin::DeadLetter) -> Self {
        Self {
            id: d.id,
            event: d.event,
            job_id: d.job_id,
            tenant: d.tenant,
            reason: d.reason,
            cause: d.cause,
            attempts: d.attempts,
            dead_at_ms: d.dead_at_ms,
            created_at_ms: d.created_at_ms,
            headers: d.headers,
            parts: d
                .parts
                .into_iter()
                .map(|p| DeadLetterPart {
                    name: p.name,
                    content_type: p.content_type,
                    bytes: p.bytes,
                })
                .collect(),
        }
    }
}

/// Answer to `POST /v1/admin/queues/{queue}/dead/replay`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// The queue whose dead letters were replayed.
    pub queue: String,
    /// Published again.
    pub replayed: u64,
    /// Left in the dead-letter queue (undecodable, or their publish failed).
    pub kept: u64,
}

/// Answer to `DELETE /v1/admin/queues/{queue}/dead`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    /// The queue whose dead letters were removed.
    pub queue: String,
    /// How many were removed.
    pub purged: u64,
}
