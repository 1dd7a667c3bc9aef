//! The role services wired on the in-memory backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use image::DynamicImage;
use pipeline_core::Backoff;
use pipeline_core::broker::{Capabilities, DeliveryStream, QueueSpec, Subscription};
use pipeline_core::envelope::events;
use pipeline_core::memory::{MemoryArchive, MemoryBroker, MemoryResultStore};
use pipeline_core::services::{
    self, ActivityRecorder, ResultsConsumer, Save2Db, SubmitConfig, Submitter, Transformer,
    TransformerConfig, Upload,
};
use pipeline_core::transform::{BlockingPool, ImageLimits, Processor, TransformContext, codec};
use pipeline_core::{
    ActivityLog, Broker, Envelope, ImageStore, JobState, Result, ResultStore, Transform,
    TransformRegistry,
};

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
            return Err(pipeline_core::Error::Unavailable("injected outage".into()));
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

struct Pipeline {
    broker: Arc<dyn Broker>,
    results: Arc<dyn ResultStore>,
    archive: Arc<MemoryArchive>,
    submitter: Submitter,
    workers: Vec<tokio::task::JoinHandle<Result<()>>>,
}

async fn pipeline(broker: Arc<dyn Broker>) -> Pipeline {
    let mut registry = TransformRegistry::with_builtins();
    registry.register(Explode).unwrap();
    let registry = Arc::new(registry);
    broker.declare(&services::topology(5)).await.unwrap();
    let results: Arc<dyn ResultStore> = Arc::new(MemoryResultStore::new());
    let archive = Arc::new(MemoryArchive::new());
    let pool = BlockingPool::new(2);
    let transformer = Transformer::new(
        broker.clone(),
        Processor::new(registry.clone(), ImageLimits::default()),
        pool.clone(),
        TransformerConfig {
            worker_id: "test-worker".into(),
            default_spec: registry.parse("stamp").unwrap(),
            prefetch: 4,
            retry: Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
        },
    );
    let never = std::future::pending::<()>;
    let workers = vec![
        tokio::spawn(transformer.run(never())),
        tokio::spawn(
            ResultsConsumer::new(broker.clone(), results.clone(), Duration::from_secs(60), 8)
                .run(never()),
        ),
        tokio::spawn(Save2Db::new(broker.clone(), archive.clone(), 8).run(never())),
        tokio::spawn(ActivityRecorder::new(broker.clone(), archive.clone(), 8).run(never())),
    ];
    let submitter = Submitter::new(
        broker.clone(),
        results.clone(),
        registry,
        pool,
        SubmitConfig::default(),
    )
    .await
    .unwrap();
    Pipeline {
        broker,
        results,
        archive,
        submitter,
        workers,
    }
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

impl Pipeline {
    async fn submit(&self, spec: &str) -> uuid::Uuid {
        let data = png();
        let spec = self.submitter.resolve_spec(Some(spec), None).unwrap();
        let probe = self.submitter.validate(data.clone()).await.unwrap();
        self.submitter
            .submit(
                Upload {
                    tenant: "t".into(),
                    filename: None,
                    data,
                },
                probe,
                &spec,
            )
            .await
            .unwrap()
            .id
    }

    async fn finish(self) -> Arc<MemoryArchive> {
        self.broker.close().await.unwrap();
        for w in self.workers {
            w.await.unwrap().unwrap();
        }
        self.archive
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_transform_fails_its_job_and_the_worker_lives_on() {
    let p = pipeline(Arc::new(MemoryBroker::new())).await;
    let bad = p.submit("explode").await;
    let good = p.submit("grayscale").await;
    let bad_status = p
        .results
        .wait(bad, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bad_status.state, JobState::Failed);
    let err = bad_status.error.unwrap();
    assert_eq!(err.code, "panicked");
    assert!(err.message.contains("a plugin bug"), "{}", err.message);
    let good_status = p
        .results
        .wait(good, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(good_status.state, JobState::Done);
    let archive = p.finish().await;
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
    let p = pipeline(flaky.clone()).await;
    let id = p.submit("stamp").await;
    let status = p
        .results
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.state, JobState::Done);
    let archive = p.finish().await;
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

/// An archive that can be switched off: while down, saves fail with an
/// error that does not even claim to be transient, and `ready` fails.
#[derive(Debug, Default)]
struct Switchable {
    inner: MemoryArchive,
    down: std::sync::atomic::AtomicBool,
    refused: AtomicUsize,
}

#[async_trait]
impl ImageStore for Switchable {
    async fn save(&self, records: &[pipeline_core::ArchiveRecord]) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(pipeline_core::Error::backend(
                "test",
                "server closed the connection unexpectedly",
                false,
            ));
        }
        self.inner.save(records).await
    }
    async fn get(&self, id: uuid::Uuid) -> Result<Option<pipeline_core::ImageRecord>> {
        self.inner.get(id).await
    }
    async fn original(&self, id: uuid::Uuid) -> Result<Option<pipeline_core::Blob>> {
        self.inner.original(id).await
    }
    async fn result(&self, id: uuid::Uuid) -> Result<Option<pipeline_core::Blob>> {
        self.inner.result(id).await
    }
    async fn list(
        &self,
        tenant: &str,
        cursor: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<pipeline_core::store::Page> {
        self.inner.list(tenant, cursor, limit).await
    }
    async fn ready(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(pipeline_core::Error::Unavailable("switched off".into()))
        } else {
            Ok(())
        }
    }
    async fn referenced(&self, keys: &[String]) -> Result<std::collections::HashSet<String>> {
        self.inner.referenced(keys).await
    }
}

fn archived_event() -> Envelope {
    use pipeline_core::envelope::{Part, parts};
    use pipeline_core::store::{JobInfo, MediaInfo};
    let media = MediaInfo {
        format: "png".into(),
        content_type: "image/png".into(),
        width: 1,
        height: 1,
        size: 3,
        sha256: pipeline_core::store::sha256_hex(b"abc"),
    };
    let info = JobInfo {
        original: Some(media.clone()),
        result: Some(media),
        decode_ms: 0.0,
        transform_ms: 0.0,
        encode_ms: 0.0,
        worker: "w".into(),
    };
    Envelope::new(events::ARCHIVED, uuid::Uuid::now_v7(), "t")
        .with_part(Part::new(
            parts::ORIGINAL,
            "image/png",
            Bytes::from_static(b"abc"),
        ))
        .with_part(Part::new(
            parts::RESULT,
            "image/png",
            Bytes::from_static(b"abc"),
        ))
        .with_part(Part::new(
            parts::INFO,
            "application/json",
            Bytes::from(serde_json::to_vec(&info).unwrap()),
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save2db_holds_batches_while_the_store_is_down() {
    let broker = Arc::new(MemoryBroker::new());
    broker.declare(&services::topology(2)).await.unwrap();
    let store = Arc::new(Switchable::default());
    store.down.store(true, Ordering::SeqCst);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Save2Db::new(broker.clone(), store.clone(), 8).run(async {
        let _ = stop_rx.await;
    }));
    let jobs: Vec<Envelope> = (0..20).map(|_| archived_event()).collect();
    for e in &jobs {
        broker.publish(e.clone()).await.unwrap();
    }
    // Several saves refused: more than the 2 attempts the queue allows.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.refused.load(Ordering::SeqCst) < 4 {
        assert!(std::time::Instant::now() < deadline, "save2db never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        broker.depth("save2db.dead"),
        0,
        "dead-lettered during the outage"
    );
    store.down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for e in &jobs {
        while store.inner.get(e.job_id).await.unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "not saved after the store came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(broker.depth("save2db.dead"), 0);
    let _ = stop_tx.send(());
    worker.await.unwrap().unwrap();
}
