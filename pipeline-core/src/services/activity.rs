//! The activity log role: every event, into the log table and the trace.

use std::future::Future;
use std::sync::Arc;

use super::consume::{Parsed, Settling, consume_batches};
use super::queues;
use crate::backoff::Backoff;
use crate::broker::{Broker, Delivery};
use crate::envelope::headers;
use crate::error::Result;
use crate::store::{ActivityEntry, ActivityLog};

/// Records every event (time, job, tenant, worker, size, duration, error)
/// in the [`ActivityLog`] and as a `tracing` event.
#[derive(Debug, Clone)]
pub struct ActivityRecorder {
    broker: Arc<dyn Broker>,
    log: Arc<dyn ActivityLog>,
    batch: usize,
}

impl ActivityRecorder {
    /// A recorder writing up to `batch` entries at once.
    pub fn new(broker: Arc<dyn Broker>, log: Arc<dyn ActivityLog>, batch: usize) -> Self {
        Self {
            broker,
            log,
            batch: batch.max(1),
        }
    }

    /// Consume until `shutdown` resolves or the broker closes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let log = Arc::clone(&self.log);
        consume_batches(
            self.broker.as_ref(),
            queues::ACTIVITY,
            self.batch,
            Settling {
                retry: Backoff::default(),
                // The broker's policy dead-letters at the queue's limit.
                max_attempts: u32::MAX,
                announce: None,
            },
            shutdown,
            entry_of,
            |entries: Vec<ActivityEntry>| {
                let log = Arc::clone(&log);
                async move {
                    log.append(&entries).await?;
                    for e in &entries {
                        tracing::info!(
                            target: "pipeline::activity",
                            event = %e.event,
                            job_id = %e.job_id,
                            tenant = %e.tenant,
                            worker = e.worker.as_deref().unwrap_or("-"),
                            size = e.size,
                            duration_ms = e.duration_ms,
                            error = e.error.as_deref(),
                            "activity"
                        );
                    }
                    Ok(())
                }
            },
            || {
                let log = Arc::clone(&self.log);
                async move { log.ready().await }
            },
        )
        .await
    }
}

pub(crate) fn entry_of(d: &Delivery) -> Parsed<ActivityEntry> {
    let env = d.envelope();
    Ok(ActivityEntry {
        message_id: env.id,
        at_ms: env.created_at_ms,
        event: env.event.clone(),
        job_id: env.job_id,
        tenant: env.tenant.clone(),
        worker: env.header(headers::WORKER).map(str::to_string),
        size: env.payload_size(),
        duration_ms: env
            .header(headers::DURATION_MS)
            .and_then(|v| v.parse().ok()),
        error: env.header(headers::ERROR).map(str::to_string),
        attempt: env.header(headers::ATTEMPT).and_then(|v| v.parse().ok()),
    })
}
