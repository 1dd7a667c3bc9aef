//! The roles assembled by the builder on the in-memory backends, with
//! injected faults: a panicking plugin, a broker outage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use image::DynamicImage;
use pipeline::core::broker::{Capabilities, DeliveryStream, QueueSpec, Subscription};
use pipeline::core::envelope::events;
use pipeline::core::memory::{MemoryArchive, MemoryBlobStore, MemoryBroker};
use pipeline::core::transform::{TransformContext, codec};
use pipeline::core::{ActivityLog, Backoff, Broker, Envelope, ImageStore, JobState, Result};
use pipeline::{Archive, Pipeline, Running, Transform, TransformRegistry};
struct Explode;
impl Transform for Explode {
    fn name(&self) -> &str {
        "explode"
    }
    fn usage(&self) -> &str {
        "explode"
    }
    fn validate(&self, _: &[String]) -> Result<()> {
        Ok(())
    }
    fn apply(
        &self,
        _: DynamicImage,
        _: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        panic!("a plugin bug");
    }
}

use pipeline::core::testkit::transform::Outage;

/// Fails the first `failures` publishes of one event, then behaves.
#[derive(Debug)]
struct Flaky {
    inner: MemoryBroker,
    event: &'static str,
    failures: AtomicUsize,
}

#[async_trait]
impl Broker for Flaky {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn declare(&self, queues: &[QueueSpec]) -> Result<()> {
        self.inner.declare(queues).await
    }
    async fn publish(&self, envelope: Envelope) -> Result<()> {
        if envelope.event == self.event
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(pipeline::Error::Unavailable("injected outage".into()));
        }
        self.inner.publish(envelope).await
    }
    async fn subscribe(&self, s: Subscription) -> Result<DeliveryStream> {
        self.inner.subscribe(s).await
    }
    async fn ready(&self) -> Result<()> {
        self.inner.ready().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Every role on `broker` and a memory archive, with [`Explode`]
/// registered and fast retries.
async fn start(broker: Arc<dyn Broker>) -> (Running, Arc<MemoryArchive>) {
    let mut registry = TransformRegistry::with_builtins();
    registry.register(Explode).unwrap();
    registry.register(Outage).unwrap();
    let archive = Arc::new(MemoryArchive::new());
    let running = Pipeline::builder()
        .broker(broker)
        .archive(Archive {
            images: archive.clone(),
            activity: archive.clone(),
            blobs: Arc::new(MemoryBlobStore::new()),
            keys: archive.clone(),
        })
        .registry(registry)
        .configure(|s| {
            s.concurrency = Some(2);
            s.batch = 8;
            s.retry = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
            s.max_attempts = 3;
        })
        .start()
        .await
        .unwrap();
    (running, archive)
}

async fn submit(running: &Running, spec: &str) -> uuid::Uuid {
    running.submit("t", png(), Some(spec)).await.unwrap().id
}

fn png() -> Bytes {
    let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        40,
        30,
        image::Rgb([255, 255, 255]),
    ));
    Bytes::from(
        codec::encode(
            &img,
            codec::OutputFormat {
                format: image::ImageFormat::Png,
                quality: 85,
            },
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_transform_fails_its_job_and_the_worker_lives_on() {
    let (p, archive) = start(Arc::new(MemoryBroker::new())).await;
    let bad = submit(&p, "explode").await;
    let good = submit(&p, "grayscale").await;
    let bad_status = p.finished(bad, Duration::from_secs(10)).await.unwrap();
    assert_eq!(bad_status.state, JobState::Failed);
    let err = bad_status.error.unwrap();
    assert_eq!(err.code, "panicked");
    assert!(err.message.contains("a plugin bug"), "{}", err.message);
    let good_status = p.finished(good, Duration::from_secs(10)).await.unwrap();
    assert_eq!(good_status.state, JobState::Done);
    p.shutdown().await.unwrap();
    assert_eq!(
        archive.get(bad).await.unwrap().unwrap().state,
        JobState::Failed
    );
    assert!(
        archive.original(bad).await.unwrap().is_some(),
        "the failed job's original is archived"
    );
    assert_eq!(
        archive.get(good).await.unwrap().unwrap().state,
        JobState::Done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_outage_is_retried_and_archived_once() {
    let flaky = Arc::new(Flaky {
        inner: MemoryBroker::new(),
        event: events::ARCHIVED,
        failures: AtomicUsize::new(2),
    });
    let (p, archive) = start(flaky.clone()).await;
    let id = submit(&p, "stamp").await;
    let status = p.finished(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.state, JobState::Done);
    p.shutdown().await.unwrap();
    assert_eq!(
        flaky.failures.load(Ordering::SeqCst),
        0,
        "the outage was hit"
    );
    let rec = archive.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Done);
    let page = archive.list("t", None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    // Each attempt published image.transformed; the activity log has one
    // entry per message, and the result store kept the first result.
    let events: Vec<String> = archive
        .for_job(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        events.iter().filter(|e| *e == events::ARCHIVED).count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == events::SUBMITTED).count(),
        1,
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_out_of_attempts_ends_failed_for_every_reader() {
    let broker = Arc::new(MemoryBroker::new());
    let (p, archive) = start(broker.clone()).await;
    let id = submit(&p, "outage").await;
    let status = p.finished(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    let err = status.error.unwrap();
    assert_eq!(err.code, "retries_exhausted");
    assert!(
        err.message.contains("gave up after 3 attempts")
            && err.message.contains("a backend was unavailable")
            && !err.message.contains("is down"),
        "{}",
        err.message
    );
    // Its in-flight slot is released when the result store announces it.
    let submitter = p.submitter().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !submitter.in_flight().is_empty() {
        assert!(std::time::Instant::now() < deadline, "slot never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.shutdown().await.unwrap();
    let record = archive.get(id).await.unwrap().expect("archived");
    assert_eq!(record.state, JobState::Failed);
    assert_eq!(record.error.unwrap().code, "retries_exhausted");
    assert_eq!(broker.depth("transform.dead"), 0, "not dead-lettered");
}
