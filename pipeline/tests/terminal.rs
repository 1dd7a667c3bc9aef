//! Every job ends, on every broker: a persistent failure injected into the
//! transformer, the results consumer and save2db, with the roles the
//! builder assembles and the HTTP API read back over a real socket.
//!
//! - transformer: a plugin whose backend is down fails every attempt; the
//!   job ends `failed` (`retries_exhausted`) on the status, result,
//!   prototype and timeline routes, the archive says so, and its in-flight
//!   slot is released;
//! - results consumer: a result store that refuses the job's result; the
//!   job ends `failed` (`retries_exhausted`) for readers, the slot is
//!   released, and the archive keeps the result the transformer made;
//! - save2db: an archive that refuses the job's record; the record is
//!   dead-lettered after an `image.archive_failed` event, the status says
//!   the archiving failed, and the result is still served.
//!
//! Run on the in-memory broker, RabbitMQ, Redis and NATS JetStream (the
//! shared servers, in a namespace of the test's own, removed afterwards).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use image::DynamicImage;
use pipeline::core::broker::{Subscription, dead_letter_queue};
use pipeline::core::envelope::{events, headers};
use pipeline::core::memory::{MemoryArchive, MemoryBlobStore, MemoryBroker, MemoryResultStore};
use pipeline::core::results::{JobStatus, JobSummary, ResultStore};
use pipeline::core::store::{ArchiveRecord, Deletion, Expiry, ImageRecord, Page};
use pipeline::core::{ActivityLog, Backoff, Blob, Broker, ImageStore, JobState, Result};
use pipeline::{Archive, Pipeline, Running, TransformRegistry};
use serde_json::Value;
use uuid::Uuid;

/// The spec whose result the result store refuses.
const REFUSED_RESULT: &str = "brightness:7";
/// The spec whose record the archive refuses.
const REFUSED_RECORD: &str = "brightness:9";
/// Deliveries before a job is given up.
const ATTEMPTS: u32 = 3;

use pipeline::core::testkit::transform::Outage;

/// A result store that cannot take the result of [`REFUSED_RESULT`] jobs.
#[derive(Debug, Default)]
struct RefusingResults(MemoryResultStore);

#[async_trait]
impl ResultStore for RefusingResults {
    async fn put(&self, status: JobStatus, ttl: Duration) -> Result<()> {
        if status.spec == REFUSED_RESULT && status.result.is_some() {
            return Err(pipeline::Error::backend(
                "test",
                "the result store refuses this result",
                true,
            ));
        }
        self.0.put(status, ttl).await
    }
    async fn get(&self, id: Uuid) -> Result<Option<JobStatus>> {
        self.0.get(id).await
    }
    async fn wait(&self, id: Uuid, timeout: Duration) -> Result<Option<JobStatus>> {
        self.0.wait(id, timeout).await
    }
    async fn completions(&self) -> Result<BoxStream<'static, JobSummary>> {
        self.0.completions().await
    }
    async fn ready(&self) -> Result<()> {
        self.0.ready().await
    }
    async fn delete(&self, id: Uuid) -> Result<()> {
        self.0.delete(id).await
    }
}

/// An archive that refuses the record of [`REFUSED_RECORD`] jobs for good.
#[derive(Debug, Default)]
struct RefusingArchive(MemoryArchive);

#[async_trait]
impl ImageStore for RefusingArchive {
    async fn save(&self, records: &[ArchiveRecord]) -> Result<()> {
        if records.iter().any(|r| r.spec == REFUSED_RECORD) {
            return Err(pipeline::Error::invalid("the archive refuses this record"));
        }
        self.0.save(records).await
    }
    async fn get(&self, id: Uuid) -> Result<Option<ImageRecord>> {
        self.0.get(id).await
    }
    async fn original(&self, id: Uuid) -> Result<Option<Blob>> {
        self.0.original(id).await
    }
    async fn result(&self, id: Uuid) -> Result<Option<Blob>> {
        self.0.result(id).await
    }
    async fn list(&self, tenant: &str, cursor: Option<Uuid>, limit: usize) -> Result<Page> {
        self.0.list(tenant, cursor, limit).await
    }
    async fn ready(&self) -> Result<()> {
        Ok(())
    }
    async fn referenced(&self, keys: &[String]) -> Result<std::collections::HashSet<String>> {
        self.0.referenced(keys).await
    }
    async fn delete(&self, id: Uuid, tenant: &str) -> Result<Deletion> {
        self.0.delete(id, tenant).await
    }
    async fn expire(&self, before: i64, limit: usize) -> Result<Expiry> {
        self.0.expire(before, limit).await
    }
}

struct Setup {
    running: Running,
    base: String,
    archive: Arc<RefusingArchive>,
    activity: Arc<MemoryArchive>,
    http: reqwest::Client,
}

async fn start(broker: Arc<dyn Broker>) -> Setup {
    let mut registry = TransformRegistry::with_builtins();
    registry.register(Outage).unwrap();
    let archive = Arc::new(RefusingArchive::default());
    let activity = Arc::new(MemoryArchive::new());
    let running = Pipeline::builder()
        .broker(broker)
        .results(Arc::new(RefusingResults::default()))
        .archive(Archive {
            images: archive.clone(),
            activity: activity.clone(),
            blobs: Arc::new(MemoryBlobStore::new()),
            keys: activity.clone(),
        })
        .registry(registry)
        .listen("127.0.0.1:0")
        .configure(|s| {
            s.concurrency = Some(2);
            s.batch = 8;
            s.retry = Backoff::new(Duration::from_millis(20), Duration::from_millis(100));
            s.max_attempts = ATTEMPTS;
            // Fits the 1 MB messages of a NATS server's defaults (larger
            // files go by reference through the blob store).
            s.inline_max = 448 * 1024;
        })
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", running.addr().unwrap());
    Setup {
        running,
        base,
        archive,
        activity,
        http: pipeline::cli::http_client_builder().build().unwrap(),
    }
}

fn png() -> Vec<u8> {
    let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        40,
        30,
        image::Rgb([200, 100, 50]),
    ));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

impl Setup {
    async fn upload(&self, spec: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/images?transform={spec}", self.base))
            .header("content-type", "image/png")
            .body(png())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
        let body: Value = resp.json().await.unwrap();
        body["images"][0]["id"].as_str().unwrap().to_string()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The status once `check` holds, within `within`.
    async fn status_until(
        &self,
        id: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (code, body) = self.get(&format!("/v1/images/{id}")).await;
            if code == 200 && check(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never reached the expected state: {code} {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn slots_released(&self) {
        let submitter = self.running.submitter().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !submitter.in_flight().is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} in-flight slots never released",
                submitter.in_flight().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every reader says `failed` with `code`.
    async fn failed_everywhere(&self, id: &str, code: &str) {
        let status = self
            .status_until(id, Duration::from_secs(30), |b| b["status"] == "failed")
            .await;
        assert_eq!(status["error"]["code"], code, "{status}");
        // Clients get a fixed sentence, not the backend's own words.
        let message = status["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("is down") && !message.contains("refuses"),
            "a backend's message reached the client: {message}"
        );
        let (c, body) = self.get(&format!("/v1/images/{id}/result")).await;
        assert_eq!(c, 422, "{body}");
        assert_eq!(body["error"]["reason"], code, "{body}");
        let (c, body) = self.get(&format!("/image/{id}")).await;
        assert_eq!(c, 422, "{body}");
    }

    /// The timeline's event names, once it holds `event`.
    async fn timeline_with(&self, id: &str, event: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (c, body) = self.get(&format!("/v1/images/{id}/events")).await;
            assert_eq!(c, 200, "{body}");
            let events = body["events"].as_array().unwrap().clone();
            if events.iter().any(|e| e["event"] == event) {
                return events;
            }
            assert!(Instant::now() < deadline, "no {event} in {body}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn every_job_ends(broker: Arc<dyn Broker>) {
    let s = start(broker.clone()).await;
    let started = Instant::now();
    let outage = s.upload("outage").await;
    let unstorable = s.upload(REFUSED_RESULT).await;
    let unarchivable = s.upload(REFUSED_RECORD).await;

    // Transformer: out of attempts.
    s.failed_everywhere(&outage, "retries_exhausted").await;
    let (_, status) = s.get(&format!("/v1/images/{outage}")).await;
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("a backend was unavailable"),
        "{status}"
    );
    let timeline = s.timeline_with(&outage, events::FAILED).await;
    let failed = timeline
        .iter()
        .find(|e| e["event"] == events::FAILED)
        .unwrap();
    assert_eq!(failed["attempt"], ATTEMPTS, "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains(&format!("gave up after {ATTEMPTS} attempts")),
        "{failed}"
    );

    // Results consumer: the result cannot be stored.
    s.failed_everywhere(&unstorable, "retries_exhausted").await;
    let status = s.get(&format!("/v1/images/{unstorable}")).await.1;
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be stored"),
        "{status}"
    );

    // save2db: the record is refused; the result is served.
    let status = s
        .status_until(&unarchivable, Duration::from_secs(30), |b| {
            b["archive_error"].is_object()
        })
        .await;
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(
        status["archive_error"]["code"], "archive_failed",
        "{status}"
    );
    let result = s
        .http
        .get(format!("{}/v1/images/{unarchivable}/result", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    let timeline = s.timeline_with(&unarchivable, events::ARCHIVE_FAILED).await;
    let names: Vec<&str> = timeline
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(names.contains(&events::TRANSFORMED), "{names:?}");
    s.slots_released().await;
    let elapsed = started.elapsed();

    // The refused record waits in save2db's dead-letter queue, once.
    let mut dead = s
        .running
        .broker()
        .subscribe(Subscription::new(dead_letter_queue("save2db"), 4))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(15), dead.next())
        .await
        .expect("a dead letter")
        .expect("stream open")
        .unwrap();
    assert_eq!(d.envelope().job_id.to_string(), unarchivable);
    assert!(
        d.envelope()
            .header(headers::DEAD_LETTER_REASON)
            .is_some_and(|r| r.contains("refuses this record")),
        "{:?}",
        d.envelope().headers
    );
    d.ack().await.unwrap();
    drop(dead);

    s.running.shutdown().await.unwrap();
    let archived = |id: &str| {
        let archive = s.archive.clone();
        let id = Uuid::parse_str(id).unwrap();
        async move { archive.get(id).await.unwrap() }
    };
    let record = archived(&outage).await.expect("the failure is archived");
    assert_eq!(record.state, JobState::Failed);
    assert_eq!(
        record.error.unwrap().code,
        "retries_exhausted",
        "the archive says failed too"
    );
    // The transformer did its work: the archive keeps the result it made.
    assert_eq!(
        archived(&unstorable).await.expect("archived").state,
        JobState::Done
    );
    assert!(archived(&unarchivable).await.is_none());
    assert!(
        !s.activity
            .for_job(Uuid::parse_str(&unarchivable).unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    println!(
        "terminal states: 3 injected failures ended within {:.2} s (max_attempts {ATTEMPTS})",
        elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_on_memory() {
    tokio::time::timeout(
        Duration::from_secs(120),
        every_job_ends(Arc::new(MemoryBroker::new())),
    )
    .await
    .expect("within 2 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_on_rabbitmq() {
    let url = std::env::var("PIPELINE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let ns = pipeline_core::testkit::unique("term");
    let broker = pipeline_rabbitmq::RabbitBroker::connect(&url, &ns, &ns)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {url}: {e}"));
    pipeline_core::testkit::run_case(
        Arc::new(broker),
        |b| every_job_ends(b as Arc<dyn Broker>),
        |b| async move {
            b.delete_all().await.unwrap();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_on_redis() {
    let url = std::env::var("PIPELINE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ns = pipeline_core::testkit::unique("term");
    let broker = pipeline_redis::RedisBroker::connect(&url, &ns)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url}: {e}"));
    pipeline_core::testkit::run_case(
        Arc::new(broker),
        |b| every_job_ends(b as Arc<dyn Broker>),
        |b| async move {
            b.delete_all().await.unwrap();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_on_nats() {
    let url =
        std::env::var("PIPELINE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let ns = pipeline_core::testkit::unique("term");
    let broker = pipeline_nats::NatsBroker::connect(&url, &ns, &ns)
        .await
        .unwrap_or_else(|e| panic!("NATS at {url}: {e}"));
    pipeline_core::testkit::run_case(
        Arc::new(broker),
        |b| every_job_ends(b as Arc<dyn Broker>),
        |b| async move {
            b.delete_all().await.unwrap();
        },
    )
    .await;
}
