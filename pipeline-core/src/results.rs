//! The result store: job status and transformed bytes, shared by API instances.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Serialize;
use uuid::Uuid;

use crate::error::Result;
use crate::store::{Blob, JobFailure, JobInfo, JobState};

/// Status of one job as the API serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    /// Job id.
    pub job_id: Uuid,
    /// Owner.
    pub tenant: String,
    /// Where it stands.
    pub state: JobState,
    /// Transform spec in compact form.
    pub spec: String,
    /// Unix ms of submission.
    pub submitted_at_ms: i64,
    /// Unix ms of the last change.
    pub updated_at_ms: i64,
    /// Transformed bytes once done.
    pub result: Option<Blob>,
    /// Transformer report once finished.
    pub info: Option<JobInfo>,
    /// Reason once failed.
    pub error: Option<JobFailure>,
}

impl JobStatus {
    /// A freshly submitted job.
    pub fn pending(
        job_id: Uuid,
        tenant: impl Into<String>,
        spec: impl Into<String>,
        now_ms: i64,
    ) -> Self {
        Self {
            job_id,
            tenant: tenant.into(),
            state: JobState::Pending,
            spec: spec.into(),
            submitted_at_ms: now_ms,
            updated_at_ms: now_ms,
            result: None,
            info: None,
            error: None,
        }
    }

    /// The status without the result bytes (for events and listings).
    pub fn summary(&self) -> JobSummary {
        JobSummary {
            id: self.job_id,
            tenant: self.tenant.clone(),
            status: self.state,
            spec: self.spec.clone(),
            submitted_at_ms: self.submitted_at_ms,
            updated_at_ms: self.updated_at_ms,
            info: self.info.clone(),
            error: self.error.clone(),
        }
    }
}

/// Serializable view of a [`JobStatus`] without bytes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSummary {
    /// Job id.
    pub id: Uuid,
    /// Owner.
    pub tenant: String,
    /// Where it stands.
    pub status: JobState,
    /// Transform spec.
    pub spec: String,
    /// Unix ms of submission.
    pub submitted_at_ms: i64,
    /// Unix ms of the last change.
    pub updated_at_ms: i64,
    /// Transformer report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<JobInfo>,
    /// Failure reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobFailure>,
}

/// Short-lived job status and results.
///
/// # Contract
/// - `put` keeps the status for `ttl`; after that `get` returns `None`.
/// - `summary` is `get` without the bytes: the same status, or `None`.
/// - A terminal status (done, failed) is never replaced: neither by
///   `pending` nor by a second terminal status (the first result wins).
/// - `wait` returns as soon as the job is terminal, or its current status
///   when `timeout` passes; `None` for an unknown job. It is woken by the
///   `put`, not by polling.
/// - `completions` yields every terminal status put after it was called.
/// - `delete` forgets a job: `get` returns `None` afterwards (a job
///   deleted on purpose, see `DELETE /v1/images/{id}`).
#[async_trait]
pub trait ResultStore: Send + Sync + fmt::Debug {
    /// Record a status.
    async fn put(&self, status: JobStatus, ttl: Duration) -> Result<()>;
    /// The current status.
    async fn get(&self, job_id: Uuid) -> Result<Option<JobStatus>>;
    /// The current status without the result bytes, for callers that only
    /// need where a job stands. The default takes [`ResultStore::get`]
    /// apart; a store that keeps the bytes apart leaves them where they are.
    async fn summary(&self, job_id: Uuid) -> Result<Option<JobSummary>> {
        Ok(self.get(job_id).await?.map(|s| s.summary()))
    }
    /// Wait until the job is terminal or `timeout` passes.
    async fn wait(&self, job_id: Uuid, timeout: Duration) -> Result<Option<JobStatus>>;
    /// Terminal statuses as they arrive (results without bytes).
    async fn completions(&self) -> Result<BoxStream<'static, JobSummary>>;
    /// `Ok` while the store is reachable.
    async fn ready(&self) -> Result<()>;
    /// Forget a job.
    async fn delete(&self, job_id: Uuid) -> Result<()>;
}

/// The completions a store announces on `done`, as a stream for
/// [`ResultStore::completions`]; a reader too slow for the channel skips
/// what it missed (waiters look the status up again).
pub fn completion_stream(
    done: &tokio::sync::broadcast::Sender<JobSummary>,
) -> BoxStream<'static, JobSummary> {
    use futures::StreamExt;
    tokio_stream::wrappers::BroadcastStream::new(done.subscribe())
        .filter_map(|r| async move { r.ok() })
        .boxed()
}

/// [`ResultStore::wait`] for a store shared through a server that
/// announces completions on `done` (fed by its notifications): look the
/// status up with `current`, then again each time `job_id` is announced,
/// until it is terminal or `timeout` passes. An announcement missed while
/// the notifications were reconnecting is caught by looking again every
/// `resync`.
pub async fn wait_announced<F, Fut>(
    done: &tokio::sync::broadcast::Sender<JobSummary>,
    job_id: Uuid,
    timeout: Duration,
    resync: Duration,
    current: F,
) -> Result<Option<JobStatus>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<JobStatus>>>,
{
    use tokio::time::Instant;
    let mut rx = done.subscribe();
    let deadline = Instant::now() + timeout;
    loop {
        let status = current().await?;
        match &status {
            None => return Ok(None),
            Some(s) if s.state.is_terminal() => return Ok(status),
            Some(_) => {}
        }
        let wake = Instant::now() + resync;
        loop {
            match tokio::time::timeout_at(deadline.min(wake), rx.recv()).await {
                Err(_) if Instant::now() >= deadline => return current().await,
                Err(_) => break,
                Ok(Ok(s)) if s.id != job_id => continue,
                Ok(_) => break,
            }
        }
    }
}
