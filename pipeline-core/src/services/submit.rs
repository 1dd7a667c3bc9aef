//! Submitting uploads: validation, backpressure, status, publish.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tracing::Instrument;
use uuid::Uuid;

use crate::blob::ClaimCheck;
use crate::broker::Broker;
use crate::envelope::{Envelope, Part, events, headers, now_ms, parts};
use crate::error::{Error, Result};
use crate::memory::lock;
use crate::results::{JobStatus, ResultStore};
use crate::store::sha256_hex;
use crate::transform::codec::{self, ImageLimits, Probe, content_type};
use crate::transform::{BlockingPool, TransformRegistry, TransformSpec};

/// How deeply uploads are checked before they are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Format and dimensions from the header only (cheapest).
    Header,
    /// The header plus the file's integrity without decoding pixels: PNG
    /// checksums and end chunk, the JPEG segment chain and end marker; other
    /// formats are decoded in full. Refuses truncated and damaged files.
    Structure,
    /// A full decode: truncated and corrupt files are refused at upload.
    Full,
}

/// Settings of the submitter.
#[derive(Debug, Clone)]
pub struct SubmitConfig {
    /// Spec used when an upload names none.
    pub default_spec: String,
    /// Named specs (`?preset=`).
    pub presets: BTreeMap<String, String>,
    /// How uploads are checked.
    pub validation: Validation,
    /// Pixel and format limits.
    pub limits: ImageLimits,
    /// How long the status and result stay in the result store.
    pub result_ttl: Duration,
    /// Jobs accepted by this process and not finished, at most.
    pub max_in_flight: usize,
    /// Of those, at most this many per tenant (0: no such limit).
    pub max_in_flight_per_tenant: usize,
}

impl Default for SubmitConfig {
    fn default() -> Self {
        Self {
            default_spec: "stamp".into(),
            presets: default_presets(),
            validation: Validation::Structure,
            limits: ImageLimits::default(),
            result_ttl: Duration::from_secs(3600),
            max_in_flight: 1024,
            max_in_flight_per_tenant: 0,
        }
    }
}

/// The job id an idempotency `key` (a UUID v7 made by the client) names
/// for `tenant`: the key's 48-bit time (so jobs still sort by time) and
/// 74 bits of SHA-256 over the tenant and the key. The same key from the
/// same tenant always names the same job; the same key from two tenants
/// names two jobs, so a key can never reach, or tell of, another tenant's
/// job.
pub fn keyed_job_id(tenant: &str, key: Uuid) -> Uuid {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("pipeline-idempotency-v1\n{tenant}\n{key}").as_bytes());
    let mut bytes = *key.as_bytes();
    for (b, d) in bytes[6..].iter_mut().zip(digest.iter()) {
        *b = *d;
    }
    // Version 7, RFC 4122 variant.
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// Built-in presets.
pub fn default_presets() -> BTreeMap<String, String> {
    [
        ("stamp", "stamp"),
        ("thumbnail", "auto-orient,thumbnail:256"),
        ("web", "auto-orient,resize:1600x1600,format:jpeg:82"),
        ("grayscale", "grayscale"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// One file to submit.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Owner.
    pub tenant: String,
    /// Client-side file name, if any.
    pub filename: Option<String>,
    /// The bytes.
    pub data: Bytes,
    /// The request's trace context: the job's messages continue it (a new
    /// trace when `None`).
    pub trace: Option<crate::trace::TraceContext>,
}

/// A job accepted for processing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    /// The job id.
    pub id: Uuid,
    /// Detected input format.
    pub format: String,
    /// Input width.
    pub width: u32,
    /// Input height.
    pub height: u32,
    /// Spec that will be applied.
    pub spec: String,
}

impl Accepted {
    /// The answer for job `id`, made from `probe` with `spec`.
    fn new(id: Uuid, probe: &Probe, spec: String) -> Self {
        Self {
            id,
            format: codec::format_name(probe.format).to_string(),
            width: probe.width,
            height: probe.height,
            spec,
        }
    }
}

/// Jobs accepted by this process and not yet finished, in all and per
/// tenant. Released when the result store announces their completion.
#[derive(Debug)]
pub struct InFlight {
    jobs: Mutex<Jobs>,
    max: usize,
    max_per_tenant: usize,
    max_age: Duration,
}

#[derive(Debug, Default)]
struct Jobs {
    by_id: HashMap<Uuid, (Instant, Arc<str>)>,
    by_tenant: HashMap<Arc<str>, usize>,
}

impl Jobs {
    fn remove(&mut self, job: Uuid) {
        if let Some((_, tenant)) = self.by_id.remove(&job)
            && let Some(n) = self.by_tenant.get_mut(&tenant)
        {
            *n -= 1;
            if *n == 0 {
                self.by_tenant.remove(&tenant);
            }
        }
    }

    /// Forget entries older than `max_age` (their completion was missed).
    fn expire(&mut self, max_age: Duration) {
        let now = Instant::now();
        let old: Vec<Uuid> = self
            .by_id
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) >= max_age)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.remove(id);
        }
    }

    fn of(&self, tenant: &str) -> usize {
        self.by_tenant.get(tenant).copied().unwrap_or(0)
    }
}

impl InFlight {
    /// At most `max` jobs in all; entries older than `max_age` are
    /// forgotten.
    pub fn new(max: usize, max_age: Duration) -> Self {
        Self {
            jobs: Mutex::default(),
            max: max.max(1),
            max_per_tenant: 0,
            max_age,
        }
    }

    /// At most `max` jobs per tenant as well (0: no such limit).
    pub fn with_max_per_tenant(mut self, max: usize) -> Self {
        self.max_per_tenant = max;
        self
    }

    fn refuse_full(&self, jobs: &Jobs, tenant: &str, n: usize) -> Result<()> {
        if jobs.by_id.len() + n > self.max {
            return Err(Error::Unavailable(format!(
                "{} jobs are in flight, the limit is {}; retry shortly",
                jobs.by_id.len(),
                self.max
            )));
        }
        if self.max_per_tenant > 0 && jobs.of(tenant) + n > self.max_per_tenant {
            return Err(Error::Quota(format!(
                "tenant {tenant:?} has {} jobs in flight, its limit is {}; retry when some finish",
                jobs.of(tenant),
                self.max_per_tenant
            )));
        }
        Ok(())
    }

    /// Count `job` of `tenant` in, or refuse when full
    /// ([`Error::Unavailable`]), when the tenant has its most jobs in
    /// flight ([`Error::Quota`]), or when `job` is in flight already
    /// ([`Error::AlreadyExists`]).
    pub fn try_acquire(&self, job: Uuid, tenant: &str) -> Result<()> {
        let mut jobs = lock(&self.jobs);
        if jobs.by_id.contains_key(&job) {
            return Err(Error::AlreadyExists(format!(
                "job {job} is being submitted"
            )));
        }
        if jobs.by_id.len() >= self.max
            || (self.max_per_tenant > 0 && jobs.of(tenant) >= self.max_per_tenant)
        {
            jobs.expire(self.max_age);
        }
        self.refuse_full(&jobs, tenant, 1)?;
        let tenant: Arc<str> = Arc::from(tenant);
        *jobs.by_tenant.entry(tenant.clone()).or_insert(0) += 1;
        jobs.by_id.insert(job, (Instant::now(), tenant));
        Ok(())
    }

    /// Refuse early when `n` more jobs of `tenant` would not fit (before
    /// any work on them).
    pub fn check_room(&self, tenant: &str, n: usize) -> Result<()> {
        let jobs = lock(&self.jobs);
        self.refuse_full(&jobs, tenant, n)
    }

    /// Count `job` out.
    pub fn release(&self, job: Uuid) {
        lock(&self.jobs).remove(job);
    }

    /// Jobs counted in.
    pub fn len(&self) -> usize {
        lock(&self.jobs).by_id.len()
    }

    /// Jobs of `tenant` counted in.
    pub fn len_of(&self, tenant: &str) -> usize {
        lock(&self.jobs).of(tenant)
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most jobs counted in at once.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// Validates uploads and publishes them as `image.submitted`.
#[derive(Debug, Clone)]
pub struct Submitter {
    broker: Arc<dyn Broker>,
    results: Arc<dyn ResultStore>,
    registry: Arc<TransformRegistry>,
    pool: BlockingPool,
    config: Arc<SubmitConfig>,
    in_flight: Arc<InFlight>,
    claim: Option<ClaimCheck>,
}

impl Submitter {
    /// A submitter; it follows the result store's completions to release
    /// in-flight slots (a background task that ends with the store).
    pub async fn new(
        broker: Arc<dyn Broker>,
        results: Arc<dyn ResultStore>,
        registry: Arc<TransformRegistry>,
        pool: BlockingPool,
        config: SubmitConfig,
    ) -> Result<Self> {
        let in_flight = Arc::new(
            InFlight::new(config.max_in_flight, config.result_ttl)
                .with_max_per_tenant(config.max_in_flight_per_tenant),
        );
        let mut done = results.completions().await?;
        let tracker = Arc::clone(&in_flight);
        tokio::spawn(async move {
            while let Some(s) = done.next().await {
                tracker.release(s.id);
            }
        });
        // Validate the configured specs once, at start.
        registry.parse(&config.default_spec)?;
        for (name, spec) in &config.presets {
            registry
                .parse(spec)
                .map_err(|e| Error::Config(format!("preset {name:?}: {e}")))?;
        }
        Ok(Self {
            broker,
            results,
            registry,
            pool,
            config: Arc::new(config),
            in_flight,
            claim: None,
        })
    }

    /// Send originals above the claim check's limit by reference (without
    /// one, every original travels in the message).
    pub fn with_claim_check(mut self, claim: ClaimCheck) -> Self {
        self.claim = Some(claim);
        self
    }

    /// The claim check, to resolve references when serving bytes.
    pub fn claim_check(&self) -> Option<&ClaimCheck> {
        self.claim.as_ref()
    }

    /// The in-flight tracker.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// The registry used to validate specs.
    pub fn registry(&self) -> &TransformRegistry {
        &self.registry
    }

    /// The configuration.
    pub fn config(&self) -> &SubmitConfig {
        &self.config
    }

    /// The spec for an upload: `spec`, else the `preset`, else the default.
    pub fn resolve_spec(&self, spec: Option<&str>, preset: Option<&str>) -> Result<TransformSpec> {
        match (spec, preset) {
            (Some(_), Some(_)) => Err(Error::invalid("give either transform or preset, not both")),
            (Some(s), None) => self.registry.parse(s),
            (None, Some(p)) => {
                let s = self.config.presets.get(p).ok_or_else(|| {
                    let known: Vec<&str> = self.config.presets.keys().map(String::as_str).collect();
                    Error::invalid(format!(
                        "unknown preset {p:?}; known presets: {}",
                        known.join(", ")
                    ))
                })?;
                self.registry.parse(s)
            }
            (None, None) => self.registry.parse(&self.config.default_spec),
        }
    }

    /// Check an upload against the limits (on the blocking pool for a full decode).
    pub async fn validate(&self, data: Bytes) -> Result<Probe> {
        let limits = self.config.limits.clone();
        match self.config.validation {
            Validation::Header => codec::probe(&data, &limits),
            Validation::Structure => {
                self.pool
                    .run(move || codec::check_structure(&data, &limits))
                    .await
            }
            Validation::Full => {
                self.pool
                    .run(move || codec::decode(&data, &limits).map(|d| d.probe))
                    .await
            }
        }
    }

    /// Refuse a spec whose operations would make an image over the limits
    /// from this upload (as far as can be told before decoding it).
    pub fn check_spec(&self, spec: &TransformSpec, probe: &Probe) -> Result<()> {
        crate::transform::check_spec(&self.registry, &self.config.limits, spec, probe)
    }

    /// A large original goes to the blob store (hashed on the CPU pool).
    async fn check_in(&self, part: Part) -> Result<Part> {
        match &self.claim {
            Some(claim) if claim.is_large(part.data.len()) => {
                let data = part.data.clone();
                let key = self.pool.run(move || Ok(sha256_hex(&data))).await?;
                claim.check_in(part, &key).await
            }
            _ => Ok(part),
        }
    }

    /// Accept a validated upload: record it as pending and publish it.
    pub async fn submit(
        &self,
        upload: Upload,
        probe: Probe,
        spec: &TransformSpec,
    ) -> Result<Accepted> {
        self.submit_as(Uuid::now_v7(), upload, probe, spec).await
    }

    /// [`Submitter::submit`] under a job id the caller chose (an
    /// idempotency key: a UUID v7, so that jobs still sort by time). The
    /// caller checks first that no job has this id; one being submitted by
    /// this process is refused with [`Error::AlreadyExists`].
    pub async fn submit_as(
        &self,
        job_id: Uuid,
        upload: Upload,
        probe: Probe,
        spec: &TransformSpec,
    ) -> Result<Accepted> {
        self.in_flight.try_acquire(job_id, &upload.tenant)?;
        self.submit_acquired(job_id, upload, probe, spec).await
    }

    /// [`Submitter::submit_as`] for a job id the caller has counted in
    /// already ([`InFlight::try_acquire`]), for example to look for an
    /// earlier job of that id while no other request can take it. On
    /// failure the id is counted out and the job left unknown (nothing
    /// stays in the result store), so the same id can be submitted again.
    pub async fn submit_acquired(
        &self,
        job_id: Uuid,
        upload: Upload,
        probe: Probe,
        spec: &TransformSpec,
    ) -> Result<Accepted> {
        let parent = upload.trace;
        in_submit_span(job_id, parent, |trace| {
            self.submit_traced(job_id, upload, probe, spec, trace)
        })
        .await
    }

    async fn submit_traced(
        &self,
        job_id: Uuid,
        upload: Upload,
        probe: Probe,
        spec: &TransformSpec,
        trace: crate::trace::TraceContext,
    ) -> Result<Accepted> {
        let began = Instant::now();
        let spec_text = spec.to_string();
        let now = now_ms();
        let pending = JobStatus::pending(job_id, upload.tenant.clone(), spec_text.clone(), now);
        if let Err(e) = self
            .results
            .put(pending.clone(), self.config.result_ttl)
            .await
        {
            self.in_flight.release(job_id);
            return Err(e);
        }
        let env = match self
            .job_message(job_id, upload, &probe, &spec_text, now, &trace)
            .await
        {
            Ok(env) => env,
            Err(e) => {
                self.forget(job_id).await;
                return Err(e);
            }
        };
        if let Err(e) = self.publish_job(env).await {
            self.forget(job_id).await;
            return Err(e);
        }
        metrics::histogram!(crate::telemetry::UPLOAD_PUBLISH).record(began.elapsed().as_secs_f64());
        Ok(Accepted::new(job_id, &probe, spec_text))
    }

    /// Publish again the job `job_id`, still pending, from the same upload
    /// sent again (an `Idempotency-Key` retry after a lost answer: the first
    /// request may have died between recording the job and publishing it).
    /// The status is left as it is, whatever happens; a job that was in
    /// fact queued is then transformed twice, which every consumer takes
    /// (results and archive rows are written by job id).
    pub async fn republish(
        &self,
        job_id: Uuid,
        upload: Upload,
        probe: Probe,
        spec: &TransformSpec,
    ) -> Result<Accepted> {
        let parent = upload.trace;
        in_submit_span(job_id, parent, |trace| async move {
            let spec_text = spec.to_string();
            let env = self
                .job_message(job_id, upload, &probe, &spec_text, now_ms(), &trace)
                .await?;
            self.publish_job(env).await?;
            tracing::info!(%job_id, "a pending job sent again with its key was published again");
            Ok(Accepted::new(job_id, &probe, spec_text))
        })
        .await
    }

    /// The `image.submitted` message of a job (a large original checked in
    /// to the blob store first), carrying the trace context `trace`.
    async fn job_message(
        &self,
        job_id: Uuid,
        upload: Upload,
        probe: &Probe,
        spec_text: &str,
        now: i64,
        trace: &crate::trace::TraceContext,
    ) -> Result<Envelope> {
        let original = Part::new(parts::ORIGINAL, content_type(probe.format), upload.data);
        let original = self.check_in(original).await?;
        let mut env = Envelope::new(events::SUBMITTED, job_id, upload.tenant)
            .with_spec(spec_text)
            .with_header(headers::SUBMITTED_AT_MS, now.to_string())
            .with_header(headers::TRACEPARENT, trace.traceparent())
            .with_part(original);
        if let Some(name) = upload.filename.filter(|n| !n.is_empty()) {
            env = env.with_header(headers::FILENAME, name);
        }
        tracing::debug!(spec = %spec_text, "job submitted");
        Ok(env)
    }

    /// Publish a job's message; a refusal is an `Unavailable` error.
    async fn publish_job(&self, env: Envelope) -> Result<()> {
        self.broker.publish(env).await.map_err(|e| match e {
            Error::Closed(m) => Error::Unavailable(format!("shutting down: {m}")),
            e if e.is_retryable() => e,
            e => Error::Unavailable(format!("the broker refused the job: {e}")),
        })
    }

    /// Undo a submission that failed before its job was queued: count the
    /// id out and remove its pending status (the client was told by an
    /// error, and may send the same id again). Best effort: a status left
    /// behind expires with the result TTL.
    async fn forget(&self, job_id: Uuid) {
        self.in_flight.release(job_id);
        if let Err(e) = self.results.delete(job_id).await {
            tracing::warn!(job = %job_id, error = %e, "could not remove the status of a job that was not queued");
        }
    }
}

/// Run `submission` of job `job_id` in its `submit` span, the child of the
/// upload's `parent` (given the span's trace context); a failure marks the
/// span failed.
async fn in_submit_span<F, Fut>(
    job_id: Uuid,
    parent: Option<crate::trace::TraceContext>,
    submission: F,
) -> Result<Accepted>
where
    F: FnOnce(crate::trace::TraceContext) -> Fut,
    Fut: std::future::Future<Output = Result<Accepted>>,
{
    let trace = crate::trace::TraceContext::following(parent.as_ref());
    let span = crate::trace::span_at("api", "submit", job_id, &trace, parent.as_ref());
    let submitted = submission(trace).instrument(span.clone()).await;
    if let Err(e) = &submitted {
        crate::trace::failed(&span, e);
    }
    submitted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_one_job_per_tenant() {
        let key = Uuid::now_v7();
        let a = keyed_job_id("a", key);
        assert_eq!(a, keyed_job_id("a", key));
        assert_ne!(a, keyed_job_id("b", key));
        assert_ne!(a, key);
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        // The key's time is kept, so jobs sort by time.
        assert_eq!(a.get_timestamp(), key.get_timestamp());
        assert_eq!(a.as_bytes()[..6], key.as_bytes()[..6]);
    }

    #[test]
    fn jobs_in_flight_are_counted_per_tenant() {
        let f = InFlight::new(10, Duration::from_secs(60)).with_max_per_tenant(2);
        let (j1, j2, j3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        f.try_acquire(j1, "a").unwrap();
        f.try_acquire(j2, "a").unwrap();
        assert!(matches!(f.try_acquire(j3, "a"), Err(Error::Quota(_))));
        assert!(matches!(f.check_room("a", 1), Err(Error::Quota(_))));
        f.try_acquire(j3, "b").unwrap();
        assert!(matches!(
            f.try_acquire(j3, "b"),
            Err(Error::AlreadyExists(_))
        ));
        f.release(j1);
        assert_eq!(f.len_of("a"), 1);
        f.check_room("a", 1).unwrap();
        assert!(matches!(f.check_room("a", 2), Err(Error::Quota(_))));
        assert_eq!(f.len(), 2);
    }
}
