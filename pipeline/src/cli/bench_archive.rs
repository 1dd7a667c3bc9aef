//! `pipeline bench-archive`: archive throughput of each database, with
//! batching, the way save2db writes (several writers, batches of records).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use pipeline_core::store::{ArchiveRecord, Blob, JobInfo, JobState, MediaInfo, sha256_hex};
use pipeline_core::{BlobRef, Error, ImageStore};
use uuid::Uuid;

/// Settings of `pipeline bench-archive`.
#[derive(Debug, Clone, Args)]
pub struct ArchiveBenchArgs {
    /// Databases to measure, one after the other (each in a fresh namespace
    /// whose tables are dropped at the end).
    #[arg(long, required = true, num_args = 1..)]
    pub database_url: Vec<String>,
    /// Records saved per run.
    #[arg(long, default_value_t = 2000)]
    pub records: usize,
    /// Records per transaction (save2db's `PIPELINE_BATCH`).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Concurrent writers (save2db processes).
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Bytes of each original and of each result.
    #[arg(long, default_value_t = 200_000)]
    pub blob_bytes: usize,
}

fn media(data: &Bytes, sha256: String) -> MediaInfo {
    MediaInfo {
        format: "jpeg".into(),
        content_type: "image/jpeg".into(),
        width: 800,
        height: 600,
        size: data.len() as u64,
        sha256,
    }
}

/// `n` distinct records: blobs are windows of one random buffer at
/// different offsets (no copies), hashed before the clock starts, as the
/// transformer hashes them in the pipeline. With `references`, the blobs
/// are claim-check references instead of bytes.
fn records(n: usize, size: usize, references: bool) -> Vec<ArchiveRecord> {
    let mut pool = vec![0u8; n * 64 + size + 64];
    fastrand::fill(&mut pool);
    let pool = Bytes::from(pool);
    (0..n)
        .map(|i| {
            let original = pool.slice(i * 64..i * 64 + size);
            let result = pool.slice(i * 64 + 32..i * 64 + 32 + size);
            let (os, rs) = (sha256_hex(&original), sha256_hex(&result));
            let blob = |data: &Bytes, key: &str| {
                if references {
                    BlobRef {
                        key: key.to_string(),
                        content_type: "image/jpeg".into(),
                        size: data.len() as u64,
                    }
                    .to_blob()
                } else {
                    Blob {
                        content_type: "image/jpeg".into(),
                        data: data.clone(),
                    }
                }
            };
            ArchiveRecord {
                job_id: Uuid::now_v7(),
                tenant: "bench".into(),
                state: JobState::Done,
                spec: "stamp".into(),
                original: Some(blob(&original, &os)),
                result: Some(blob(&result, &rs)),
                info: JobInfo {
                    original: Some(media(&original, os)),
                    result: Some(media(&result, rs)),
                    decode_ms: 1.0,
                    transform_ms: 1.0,
                    encode_ms: 1.0,
                    worker: "bench".into(),
                },
                error: None,
                submitted_at_ms: 0,
                finished_at_ms: 0,
            }
        })
        .collect()
}

/// Save `records` in batches from `writers` tasks; wall time and batch latencies.
async fn run(
    store: Arc<pipeline_sql::SqlArchive>,
    records: Arc<Vec<ArchiveRecord>>,
    batch: usize,
    writers: usize,
) -> Result<(Duration, Histogram<u64>), Error> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers.max(1) {
        let (store, records, next) = (store.clone(), records.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).map_err(|e| Error::Config(e.to_string()))?;
            loop {
                let start = next.fetch_add(batch, Ordering::SeqCst);
                if start >= records.len() {
                    return Ok::<_, Error>(hist);
                }
                let end = (start + batch).min(records.len());
                let t = Instant::now();
                store.save(&records[start..end]).await?;
                let _ = hist.record(t.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut all = Histogram::<u64>::new(3).map_err(|e| Error::Config(e.to_string()))?;
    for t in tasks {
        let h = t
            .await
            .map_err(|e| Error::Config(format!("bench task: {e}")))??;
        all.add(&h).map_err(|e| Error::Config(e.to_string()))?;
    }
    Ok((started.elapsed(), all))
}

/// Measure each database, bytes then references.
pub(crate) async fn bench_archive(args: ArchiveBenchArgs) -> Result<(), Error> {
    println!(
        "archive: {} records per run, batches of {}, {} writers, {} KB original + {} KB result",
        args.records,
        args.batch,
        args.writers,
        args.blob_bytes / 1000,
        args.blob_bytes / 1000
    );
    for url in &args.database_url {
        for references in [false, true] {
            let ns = format!("bench_{}", fastrand::u32(..));
            let store = Arc::new(pipeline_sql::SqlArchive::connect(url, &ns).await?);
            let recs = Arc::new(records(args.records, args.blob_bytes, references));
            let outcome = run(store.clone(), recs, args.batch, args.writers).await;
            let stored = store.image_count().await;
            store.drop_tables().await?;
            let (wall, hist) = outcome?;
            if stored? != args.records as u64 {
                return Err(Error::Config(format!("{url}: not every record was stored")));
            }
            let secs = wall.as_secs_f64();
            let rows = args.records as f64 / secs;
            let mb = if references {
                0.0
            } else {
                (args.records * args.blob_bytes * 2) as f64 / 1e6 / secs
            };
            println!(
                "{} ({}): {rows:.0} rows/s, {mb:.1} MB/s of blobs; batch p50 {:.1} / p99 {:.1} ms",
                pipeline_sql::redact_url(url),
                if references {
                    "claim-check references"
                } else {
                    "bytes in the archive"
                },
                hist.value_at_quantile(0.5) as f64 / 1000.0,
                hist.value_at_quantile(0.99) as f64 / 1000.0,
            );
        }
    }
    Ok(())
}
