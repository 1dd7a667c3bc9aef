//! The transformer role: submitted image in, result and archive record out.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::Instrument;

use super::consume::consume_concurrently;
use super::queues;
use crate::backoff::Backoff;
use crate::blob::{BlobRef, ClaimCheck, REF_CONTENT_TYPE};
use crate::broker::{Broker, Delivery};
use crate::envelope::{Envelope, Part, events, headers, parts};
use crate::error::{Error, Result};
use crate::store::{JobInfo, MediaInfo, sha256_hex};
use crate::transform::codec::{content_type, format_name};
use crate::transform::{BlockingPool, Processed, Processor, TransformSpec};

use super::RETRIES_EXHAUSTED;

/// Settings of a transformer.
#[derive(Debug, Clone)]
pub struct TransformerConfig {
    /// Name reported in events and the archive.
    pub worker_id: String,
    /// Spec applied when a job carries none.
    pub default_spec: TransformSpec,
    /// Deliveries held at once; keep it a little above the pool size so the
    /// pool never waits for the broker.
    pub prefetch: usize,
    /// Backoff for transient failures (publishing downstream).
    pub retry: Backoff,
    /// Deliveries of a job before it is given up: the last one that fails
    /// transiently publishes `image.failed` (code `retries_exhausted`), so
    /// the job ends `failed` for every reader instead of waiting, pending,
    /// in the dead-letter queue. Use the queue's `max_attempts`.
    pub max_attempts: u32,
}

/// Subscribes to submitted images, transforms them on a bounded blocking
/// pool and publishes `image.transformed` + `image.archived`, or
/// `image.failed` for a permanent failure. A message is acked only after
/// the downstream publishes are confirmed.
#[derive(Debug, Clone)]
pub struct Transformer {
    broker: Arc<dyn Broker>,
    processor: Processor,
    pool: BlockingPool,
    config: Arc<TransformerConfig>,
    claim: Option<ClaimCheck>,
}

impl Transformer {
    /// A transformer publishing to `broker`, running `processor` on `pool`.
    pub fn new(
        broker: Arc<dyn Broker>,
        processor: Processor,
        pool: BlockingPool,
        config: TransformerConfig,
    ) -> Self {
        Self {
            broker,
            processor,
            pool,
            config: Arc::new(config),
            claim: None,
        }
    }

    /// Fetch originals sent by reference and send results above the claim
    /// check's limit by reference (without one, a reference part fails the
    /// job and every result travels in the message).
    pub fn with_claim_check(mut self, claim: ClaimCheck) -> Self {
        self.claim = Some(claim);
        self
    }

    /// Consume until `shutdown` resolves or the broker closes; in-flight jobs finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let prefetch = self.config.prefetch.max(1);
        tracing::info!(worker = %self.config.worker_id, prefetch, pool = self.pool.size(), "transformer started");
        consume_concurrently(
            self.broker.as_ref(),
            queues::TRANSFORM,
            prefetch,
            shutdown,
            |d| {
                let this = self.clone();
                async move { this.handle(d).await }
            },
        )
        .await?;
        tracing::info!(worker = %self.config.worker_id, "transformer stopped");
        Ok(())
    }

    /// Process one delivery and settle it, in a span continuing the
    /// job's trace ([`crate::trace`]).
    pub async fn handle(&self, delivery: Delivery) {
        let mut env = delivery.envelope().clone();
        let span = crate::trace::job_span("transformer", "transform", &mut env);
        self.handle_in_span(delivery, env).instrument(span).await;
    }

    async fn handle_in_span(&self, delivery: Delivery, mut env: Envelope) {
        // Every follow-up tells which delivery of the job produced it.
        env.headers
            .insert(headers::ATTEMPT.to_string(), delivery.attempt().to_string());
        let started = Instant::now();
        crate::telemetry::redelivery(super::queues::TRANSFORM, delivery.attempt());
        if delivery.attempt() == 1
            && let Some(waited) = crate::telemetry::since_upload(&env)
        {
            metrics::histogram!(crate::telemetry::QUEUE_WAIT).record(waited.as_secs_f64());
        }
        let delivery_attempt = delivery.attempt();
        let outcome = self.transform(&env).await;
        metrics::histogram!(crate::telemetry::TRANSFORM_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let mut ended = if outcome.is_ok() { "done" } else { "failed" };
        let published = match outcome {
            Ok((processed, hashes, original_len)) => {
                match self
                    .success_events(&env, original_len, processed, hashes, started)
                    .await
                {
                    Ok((transformed, archived)) => futures::future::try_join(
                        self.broker.publish(transformed),
                        self.broker.publish(archived),
                    )
                    .await
                    .map(|_| ()),
                    Err(e) => Err(e),
                }
            }
            Err(e) if e.is_retryable() => Err(e),
            Err(e) => {
                tracing::info!(job_id = %env.job_id, code = e.code(), error = %e, "job failed");
                crate::trace::failed(&tracing::Span::current(), &format!("{}: {e}", e.code()));
                self.broker
                    .publish(self.failure_event(&env, e.code(), &e.public_message(), started))
                    .await
            }
        };
        let settled = match published {
            Ok(()) => delivery.ack().await,
            Err(e) if delivery.attempt() >= self.config.max_attempts => {
                ended = "given_up";
                self.give_up(delivery, &env, &e, started).await
            }
            Err(e) => {
                ended = "retried";
                crate::trace::failed(&tracing::Span::current(), &e);
                let delay = self.config.retry.delay(delivery.attempt());
                tracing::warn!(job_id = %env.job_id, error = %e, ?delay, "job not finished; retrying");
                delivery.nack(delay, e.to_string()).await
            }
        };
        metrics::counter!(crate::telemetry::TRANSFORMS, "outcome" => ended).increment(1);
        tracing::debug!(
            outcome = ended,
            attempt = delivery_attempt,
            "job transformed"
        );
        if let Err(e) = settled {
            tracing::warn!(job_id = %env.job_id, error = %e, "settling failed; the job will be redelivered");
        }
    }

    /// The job failed transiently on its last attempt: publish its terminal
    /// failure and ack, or, if even that fails, let the delivery policy
    /// dead-letter it.
    async fn give_up(
        &self,
        delivery: Delivery,
        env: &Envelope,
        error: &Error,
        started: Instant,
    ) -> Result<()> {
        let attempts = delivery.attempt();
        let message = format!(
            "gave up after {attempts} attempts: {}",
            error.public_message()
        );
        tracing::warn!(job_id = %env.job_id, attempts, error = %error, "job failed: retries exhausted");
        crate::trace::failed(&tracing::Span::current(), &message);
        let failed = self
            .failure_event(env, RETRIES_EXHAUSTED, &message, started)
            .with_header(headers::ATTEMPTS, attempts.to_string());
        match self.broker.publish(failed).await {
            Ok(()) => delivery.ack().await,
            Err(e) => {
                let reason = format!("{message}; publishing the failure failed too: {e}");
                delivery.nack(std::time::Duration::ZERO, reason).await
            }
        }
    }

    /// Run the job on the pool; also hash both images there (hashing a few
    /// MB is CPU work that must not stall the async threads). An original
    /// sent by reference is not hashed again: its key is its SHA-256.
    async fn transform(&self, env: &Envelope) -> Result<(Processed, (String, String), usize)> {
        let original = env
            .part(parts::ORIGINAL)
            .ok_or_else(|| Error::invalid("the message carries no original image"))?;
        let known_sha = BlobRef::parse(&original.content_type, &original.data)?.map(|r| r.key);
        let original = match &self.claim {
            Some(claim) => claim.check_out(original).await?,
            None if original.content_type == REF_CONTENT_TYPE => {
                return Err(Error::Config(
                    "the original was sent by reference and this transformer has no blob store (PIPELINE_BLOB_URL)".into(),
                ));
            }
            None => original.clone(),
        };
        let spec = if env.spec.trim().is_empty() {
            self.config.default_spec.clone()
        } else {
            self.processor.registry().parse(&env.spec)?
        };
        let processor = self.processor.clone();
        let data = original.data.clone();
        let (processed, hashes) = self
            .pool
            .run(move || {
                let p = processor.process(&data, &spec)?;
                let original_sha = known_sha.unwrap_or_else(|| sha256_hex(&data));
                let hashes = (original_sha, sha256_hex(&p.data));
                Ok((p, hashes))
            })
            .await?;
        Ok((processed, hashes, original.data.len()))
    }

    fn info(
        &self,
        original: Option<MediaInfo>,
        result: Option<MediaInfo>,
        p: Option<&Processed>,
    ) -> JobInfo {
        JobInfo {
            original,
            result,
            decode_ms: p.map_or(0.0, |p| p.decode_ms),
            transform_ms: p.map_or(0.0, |p| p.transform_ms),
            encode_ms: p.map_or(0.0, |p| p.encode_ms),
            worker: self.config.worker_id.clone(),
        }
    }

    /// `image.transformed` (the result) and `image.archived` (the original
    /// as it came, bytes or reference, and the result); a large result is
    /// checked in first.
    async fn success_events(
        &self,
        env: &Envelope,
        original_len: usize,
        p: Processed,
        (original_sha, result_sha): (String, String),
        started: Instant,
    ) -> Result<(Envelope, Envelope)> {
        let original = env
            .part(parts::ORIGINAL)
            .ok_or_else(|| Error::invalid("the message carries no original image"))?;
        let original_info = MediaInfo {
            format: format_name(p.source.format).to_string(),
            content_type: content_type(p.source.format).to_string(),
            width: p.source.width,
            height: p.source.height,
            size: original_len as u64,
            sha256: original_sha,
        };
        let result_type = content_type(p.format);
        let result_info = MediaInfo {
            format: format_name(p.format).to_string(),
            content_type: result_type.to_string(),
            width: p.width,
            height: p.height,
            size: p.data.len() as u64,
            sha256: result_sha.clone(),
        };
        let result_sha_key = result_sha;
        let info = self.info(Some(original_info), Some(result_info), Some(&p));
        let info_part = Part::new(parts::INFO, "application/json", json_bytes(&info));
        let mut result_part = Part::new(parts::RESULT, result_type, p.data);
        if let Some(claim) = &self.claim {
            result_part = claim.check_in(result_part, &result_sha_key).await?;
        }
        let duration = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0);
        let stamp = |e: Envelope| {
            e.with_header(headers::WORKER, self.config.worker_id.clone())
                .with_header(headers::DURATION_MS, duration.clone())
        };
        let transformed = stamp(env.follow_up(events::TRANSFORMED))
            .with_part(result_part.clone())
            .with_part(info_part.clone());
        let archived = stamp(env.follow_up(events::ARCHIVED))
            .with_part(original.clone())
            .with_part(result_part)
            .with_part(info_part);
        Ok((transformed, archived))
    }

    fn failure_event(
        &self,
        env: &Envelope,
        code: &str,
        message: &str,
        started: Instant,
    ) -> Envelope {
        let info = self.info(None, None, None);
        let mut failed = env
            .follow_up(events::FAILED)
            .with_header(headers::WORKER, self.config.worker_id.clone())
            .with_header(
                headers::DURATION_MS,
                format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
            )
            .with_header(headers::ERROR_CODE, code)
            .with_header(headers::ERROR, message)
            .with_part(Part::new(
                parts::INFO,
                "application/json",
                json_bytes(&info),
            ));
        if let Some(original) = env.part(parts::ORIGINAL) {
            failed = failed.with_part(original.clone());
        }
        failed
    }
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    // Serializing plain structs of strings and numbers cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}
