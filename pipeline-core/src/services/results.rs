//! The API's results consumer: fills the result store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use super::consume::consume_concurrently;
use super::queues;
use crate::backoff::Backoff;
use crate::broker::{Broker, Delivery};
use crate::envelope::{Envelope, events, headers, now_ms, parts};
use crate::error::Result;
use crate::results::{JobStatus, ResultStore};
use crate::store::{Blob, JobFailure, JobInfo, JobState};

/// Consumes `image.transformed` and `image.failed` and records them in the
/// [`ResultStore`] with a TTL; acks after the store took them.
#[derive(Debug, Clone)]
pub struct ResultsConsumer {
    broker: Arc<dyn Broker>,
    results: Arc<dyn ResultStore>,
    ttl: Duration,
    prefetch: usize,
    retry: Backoff,
    max_attempts: u32,
}

impl ResultsConsumer {
    /// A consumer keeping results for `ttl`.
    pub fn new(
        broker: Arc<dyn Broker>,
        results: Arc<dyn ResultStore>,
        ttl: Duration,
        prefetch: usize,
    ) -> Self {
        Self {
            broker,
            results,
            ttl,
            prefetch: prefetch.max(1),
            retry: Backoff::default(),
            max_attempts: 5,
        }
    }

    /// Deliveries of an event before it is given up (the queue's
    /// `max_attempts`; 5 by default): on the last one that cannot be
    /// stored, the job is stored as failed (code `retries_exhausted`,
    /// without the result), so readers see it end and its in-flight slot
    /// is released; the transformed result stays in the archive.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Backoff between deliveries of an event that could not be stored.
    pub fn with_retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }

    /// Consume until `shutdown` resolves or the broker closes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        consume_concurrently(
            self.broker.as_ref(),
            queues::API_RESULTS,
            self.prefetch,
            shutdown,
            |d| {
                let this = self.clone();
                async move { this.handle(d).await }
            },
        )
        .await
    }

    async fn handle(&self, delivery: Delivery) {
        let span = crate::trace::reader_span("api", "result", delivery.envelope());
        self.handle_in_span(delivery).instrument(span).await;
    }

    async fn handle_in_span(&self, delivery: Delivery) {
        let Some(status) = status_of(delivery.envelope()) else {
            // Not an event for this queue: nothing to record.
            if let Err(e) = delivery.ack().await {
                tracing::warn!(error = %e, "ack failed");
            }
            return;
        };
        let job_id = status.job_id;
        let fallback = status.clone();
        crate::telemetry::redelivery(queues::API_RESULTS, delivery.attempt());
        let outcome = status.state.as_str();
        let code = status
            .error
            .as_ref()
            .map_or_else(|| "none".to_string(), |e| e.code.clone());
        let took = crate::telemetry::since_upload(delivery.envelope());
        let settled = match self.results.put(status, self.ttl).await {
            Ok(()) => {
                record_end(outcome, code.clone(), took);
                tracing::debug!(outcome, code, "job result stored");
                delivery.ack().await
            }
            Err(e) if delivery.attempt() >= self.max_attempts => {
                self.give_up(delivery, fallback, &e).await
            }
            Err(e) => {
                let delay = self.retry.delay(delivery.attempt());
                tracing::warn!(%job_id, error = %e, ?delay, "result not stored; retrying");
                delivery.nack(delay, e.to_string()).await
            }
        };
        if let Err(e) = settled {
            tracing::warn!(%job_id, error = %e, "settling failed; it will be redelivered");
        }
    }

    /// The event could not be stored on its last delivery: store the job
    /// as failed without its bytes (what a store refusing the result, for
    /// its size say, still takes), or, if even that fails, let the
    /// delivery policy dead-letter the event.
    async fn give_up(
        &self,
        delivery: Delivery,
        status: JobStatus,
        error: &crate::Error,
    ) -> Result<()> {
        let attempts = delivery.attempt();
        let message = format!(
            "the result could not be stored after {attempts} attempts: {}",
            error.public_message()
        );
        tracing::warn!(job_id = %status.job_id, attempts, %error, "result given up");
        let failed = JobStatus {
            state: JobState::Failed,
            result: None,
            updated_at_ms: now_ms(),
            error: Some(JobFailure {
                code: RETRIES_EXHAUSTED.into(),
                message: message.clone(),
            }),
            ..status
        };
        let took = crate::telemetry::since_upload(delivery.envelope());
        match self.results.put(failed, self.ttl).await {
            Ok(()) => {
                record_end(
                    JobState::Failed.as_str(),
                    RETRIES_EXHAUSTED.to_string(),
                    took,
                );
                delivery.ack().await
            }
            Err(e) => {
                let reason = format!("{message}; storing the failure failed too: {e}");
                delivery.nack(Duration::ZERO, reason).await
            }
        }
    }
}

/// Count a job's end, and its time from the upload.
fn record_end(outcome: &'static str, code: String, took: Option<Duration>) {
    use crate::telemetry::{JOB_SECONDS, JOBS};
    metrics::counter!(JOBS, "outcome" => outcome, "code" => code).increment(1);
    if let Some(t) = took {
        metrics::histogram!(JOB_SECONDS).record(t.as_secs_f64());
    }
}

/// Failure code of a job whose transient failures used up its attempts.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";

/// The job status an event announces, if it is a terminal event.
pub(crate) fn status_of(env: &Envelope) -> Option<JobStatus> {
    let state = match env.event.as_str() {
        events::TRANSFORMED => JobState::Done,
        events::FAILED => JobState::Failed,
        _ => return None,
    };
    let info: Option<JobInfo> = env
        .part(parts::INFO)
        .and_then(|p| serde_json::from_slice(&p.data).ok());
    let submitted_at_ms = env
        .header(headers::SUBMITTED_AT_MS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(env.created_at_ms);
    let error = (state == JobState::Failed).then(|| failure_of(env));
    Some(JobStatus {
        job_id: env.job_id,
        tenant: env.tenant.clone(),
        state,
        spec: env.spec.clone(),
        submitted_at_ms,
        updated_at_ms: now_ms(),
        result: env.part(parts::RESULT).map(|p| Blob {
            content_type: p.content_type.clone(),
            data: p.data.clone(),
        }),
        info,
        error,
    })
}

/// The failure carried by an `image.failed` event.
pub(crate) fn failure_of(env: &Envelope) -> JobFailure {
    JobFailure {
        code: env
            .header(headers::ERROR_CODE)
            .unwrap_or("failed")
            .to_string(),
        message: env
            .header(headers::ERROR)
            .unwrap_or("the job failed without a reason")
            .to_string(),
    }
}
