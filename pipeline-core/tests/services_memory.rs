//! A role service alone on the in-memory broker: save2db through a store
//! outage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pipeline_core::envelope::events;
use pipeline_core::memory::{MemoryArchive, MemoryBroker};
use pipeline_core::services::{self, Save2Db};
use pipeline_core::{Broker, Envelope, ImageStore, Result};

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
    async fn delete(&self, id: uuid::Uuid, tenant: &str) -> Result<pipeline_core::store::Deletion> {
        self.inner.delete(id, tenant).await
    }
    async fn expire(&self, before: i64, limit: usize) -> Result<pipeline_core::store::Expiry> {
        self.inner.expire(before, limit).await
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
