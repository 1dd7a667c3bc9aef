//! The save2db role: finished jobs into the archive, batched.

use std::future::Future;
use std::sync::Arc;

use super::consume::{Parsed, Settling, consume_batches};
use super::queues;
use super::results::failure_of;
use crate::backoff::Backoff;
use crate::broker::{Broker, Delivery};
use crate::envelope::{events, headers, now_ms, parts};
use crate::error::Result;
use crate::store::{ArchiveRecord, Blob, ImageStore, JobInfo, JobState};

/// Consumes `image.archived` and `image.failed` and saves them in batches of
/// whatever is waiting (up to `batch`); acks only after the commit.
///
/// A record it gives up (unusable, refused by the archive, or still failing
/// on its last attempt) is dead-lettered after an `image.archive_failed`
/// event naming the reason, so the activity log and the API tell that the
/// job's archiving failed; the dead-letter queue keeps the record for a
/// replay once the cause is fixed.
#[derive(Debug, Clone)]
pub struct Save2Db {
    broker: Arc<dyn Broker>,
    store: Arc<dyn ImageStore>,
    batch: usize,
    retry: Backoff,
    max_attempts: u32,
}

impl Save2Db {
    /// A writer saving up to `batch` records per transaction.
    pub fn new(broker: Arc<dyn Broker>, store: Arc<dyn ImageStore>, batch: usize) -> Self {
        Self {
            broker,
            store,
            batch: batch.max(1),
            retry: Backoff::default(),
            max_attempts: 5,
        }
    }

    /// Deliveries of a record before it is given up (the queue's
    /// `max_attempts`; 5 by default).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Backoff between deliveries of a record that could not be saved.
    pub fn with_retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }

    /// Consume until `shutdown` resolves or the broker closes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let store = Arc::clone(&self.store);
        consume_batches(
            self.broker.as_ref(),
            queues::SAVE2DB,
            self.batch,
            Settling {
                retry: self.retry,
                max_attempts: self.max_attempts,
                announce: Some((self.broker.as_ref(), events::ARCHIVE_FAILED)),
            },
            shutdown,
            record_of,
            |records: Vec<ArchiveRecord>| {
                let store = Arc::clone(&store);
                async move { store.save(&records).await }
            },
            || {
                let store = Arc::clone(&self.store);
                async move { store.ready().await }
            },
        )
        .await
    }
}

pub(crate) fn record_of(d: &Delivery) -> Parsed<ArchiveRecord> {
    let env = d.envelope();
    let state = match env.event.as_str() {
        events::ARCHIVED => JobState::Done,
        events::FAILED => JobState::Failed,
        other => return Err(format!("save2db does not handle {other:?} events")),
    };
    let blob = |name: &str| {
        env.part(name).map(|p| Blob {
            content_type: p.content_type.clone(),
            data: p.data.clone(),
        })
    };
    let info: JobInfo = match env.part(parts::INFO) {
        Some(p) => {
            serde_json::from_slice(&p.data).map_err(|e| format!("info part is not valid: {e}"))?
        }
        None if state == JobState::Failed => JobInfo {
            original: None,
            result: None,
            decode_ms: 0.0,
            transform_ms: 0.0,
            encode_ms: 0.0,
            worker: env.header(headers::WORKER).unwrap_or_default().to_string(),
        },
        None => return Err("archived event without an info part".into()),
    };
    let result = blob(parts::RESULT);
    if state == JobState::Done && (result.is_none() || info.result.is_none()) {
        return Err("archived event without a result".into());
    }
    Ok(ArchiveRecord {
        job_id: env.job_id,
        tenant: env.tenant.clone(),
        state,
        spec: env.spec.clone(),
        original: blob(parts::ORIGINAL),
        result,
        info,
        error: (state == JobState::Failed).then(|| failure_of(env)),
        submitted_at_ms: env
            .header(headers::SUBMITTED_AT_MS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(env.created_at_ms),
        finished_at_ms: if env.created_at_ms > 0 {
            env.created_at_ms
        } else {
            now_ms()
        },
    })
}
