//! The metrics the pipeline records, through the `metrics` facade: nothing
//! is recorded until a program installs a recorder (the command line
//! installs a Prometheus one, `pipeline::metrics`). Names follow Prometheus
//! conventions (units in the name, `_total` counters); labels are bounded
//! sets (outcomes, codes, queues, tenants), never job ids.

use std::time::Duration;

use crate::broker::Broker;
use crate::envelope::{Envelope, headers, now_ms};

/// Uploads by `outcome` (`accepted`, `replayed`, or the refusal's code)
/// and `tenant`.
pub const UPLOADS: &str = "pipeline_uploads_total";
/// Bytes of uploads by `outcome` and `tenant`.
pub const UPLOAD_BYTES: &str = "pipeline_upload_bytes_total";
/// Upload to published, seconds.
pub const UPLOAD_PUBLISH: &str = "pipeline_upload_publish_seconds";
/// Jobs whose end the API recorded, by `outcome` (`done`, `failed`) and
/// `code` (the failure code, `none` when done).
pub const JOBS: &str = "pipeline_jobs_total";
/// Upload to result available (the API recorded the end), seconds.
pub const JOB_SECONDS: &str = "pipeline_job_seconds";
/// Jobs a transformer finished, by `outcome` (`done`, `failed`, `retried`,
/// `given_up`).
pub const TRANSFORMS: &str = "pipeline_transformer_jobs_total";
/// Upload to the start of its transform (time in the queue), seconds.
pub const QUEUE_WAIT: &str = "pipeline_queue_wait_seconds";
/// A transform (decode, operations, encode), seconds.
pub const TRANSFORM_SECONDS: &str = "pipeline_transform_seconds";
/// One operation of a transform, seconds, by `operation` (a registered
/// transform's name).
pub const TRANSFORM_OPERATION_SECONDS: &str = "pipeline_transform_operation_seconds";
/// Decoding or encoding one image, seconds, by `step` (`decode`, `encode`)
/// and `format`.
pub const CODEC_SECONDS: &str = "pipeline_codec_seconds";
/// Deliveries after the first, by `queue`.
pub const REDELIVERIES: &str = "pipeline_redeliveries_total";
/// Records saved by save2db or the activity writer, by `queue`.
pub const ARCHIVED: &str = "pipeline_archived_records_total";
/// One archive batch transaction, seconds, by `queue`.
pub const ARCHIVE_BATCH_SECONDS: &str = "pipeline_archive_batch_seconds";
/// Upload to its record committed by save2db, seconds.
pub const ARCHIVED_SECONDS: &str = "pipeline_archived_seconds";
/// Records in one archive batch, by `queue`.
pub const ARCHIVE_BATCH_RECORDS: &str = "pipeline_archive_batch_records";
/// Jobs accepted by this API process and not finished.
pub const IN_FLIGHT: &str = "pipeline_jobs_in_flight";
/// Messages in each queue, by `queue`, read from the broker at each scrape.
pub const QUEUE_MESSAGES: &str = "pipeline_queue_messages";
/// Consumers of each queue, by `queue` (where the broker tells).
pub const QUEUE_CONSUMERS: &str = "pipeline_queue_consumers";
/// Messages in each queue's dead-letter queue, by `queue`.
pub const QUEUE_DEAD_LETTERS: &str = "pipeline_queue_dead_letters";
/// Scrapes that could not read the queue counts from the broker (the
/// gauges keep their last value).
pub const QUEUE_STATS_FAILURES: &str = "pipeline_queue_stats_failures_total";

/// Connections to the broker made again after a loss, by `broker`.
pub const RECONNECTS: &str = "pipeline_broker_reconnects_total";
/// Bytes written to and read from the claim-check blob store, by `op`
/// (`put`, `get`).
pub const BLOB_BYTES: &str = "pipeline_blob_bytes_total";
/// Spans sent to the OpenTelemetry collector, by `outcome` (`exported`,
/// `rejected` by the collector, `failed` to send, `dropped` with the
/// queue full).
pub const OTLP_SPANS: &str = "pipeline_otlp_spans_total";

/// CPU time of this process, user and system, seconds (Linux). A gauge
/// holding a counter's value: the `metrics` crate's counters are integers.
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
/// Resident memory of this process, bytes (Linux).
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// Highest resident memory of this process so far, bytes (Linux).
pub const PROCESS_RSS_PEAK: &str = "process_resident_memory_max_bytes";
/// Open file descriptors of this process (Linux).
pub const PROCESS_FDS: &str = "process_open_fds";
/// Threads of this process (Linux).
pub const PROCESS_THREADS: &str = "process_threads";

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, 100 in
/// the ABI of every Linux architecture.
const USER_HZ: f64 = 100.0;

/// Read this process's CPU time, memory, descriptors and threads from
/// `/proc/self` into the process metrics (nothing where there is no
/// `/proc`).
pub fn record_process() {
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // After the command name (which may hold spaces and parentheses)
        // comes field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            metrics::gauge!(PROCESS_CPU).set((user + system) as f64 / USER_HZ);
        }
        if let Some(threads) = field(20) {
            metrics::gauge!(PROCESS_THREADS).set(threads as f64);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(rss) = status_bytes(&status, "VmRSS:") {
            metrics::gauge!(PROCESS_RSS).set(rss as f64);
        }
        if let Some(peak) = status_bytes(&status, "VmHWM:") {
            metrics::gauge!(PROCESS_RSS_PEAK).set(peak as f64);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(PROCESS_FDS).set(fds.count() as f64);
    }
}

/// A `kB` field of `/proc/<pid>/status` text (`VmRSS:`, `VmHWM:`...), in bytes.
fn status_bytes(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// This process's peak resident memory so far, in bytes (Linux; `None`
/// where there is no `/proc`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_bytes(&status, "VmHWM:")
}

/// Longest a scrape waits for the broker's queue counts.
const QUEUE_STATS_WITHIN: Duration = Duration::from_secs(2);

/// Read every queue's counts from `broker` into the queue gauges (bounded
/// in time; a broker without counts records nothing).
pub async fn record_queue_depths(broker: &dyn Broker) {
    let read =
        tokio::time::timeout(QUEUE_STATS_WITHIN, crate::services::admin::overview(broker)).await;
    match read {
        Ok(Ok(queues)) => {
            for q in queues {
                let queue = q.queue;
                metrics::gauge!(QUEUE_MESSAGES, "queue" => queue.clone()).set(q.messages as f64);
                metrics::gauge!(QUEUE_DEAD_LETTERS, "queue" => queue.clone())
                    .set(q.dead_letters as f64);
                if let Some(c) = q.consumers {
                    metrics::gauge!(QUEUE_CONSUMERS, "queue" => queue).set(c as f64);
                }
            }
        }
        Ok(Err(crate::Error::Unsupported(_))) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading the queue counts failed");
            metrics::counter!(QUEUE_STATS_FAILURES).increment(1);
        }
        Err(_) => {
            tracing::debug!("the broker did not give the queue counts in time");
            metrics::counter!(QUEUE_STATS_FAILURES).increment(1);
        }
    }
}

/// Seconds since the upload of the job `env` belongs to, if it says.
pub fn since_upload(env: &Envelope) -> Option<Duration> {
    let at: i64 = env.header(headers::SUBMITTED_AT_MS)?.parse().ok()?;
    let ms = now_ms().saturating_sub(at).max(0);
    Some(Duration::from_millis(ms.unsigned_abs()))
}

/// Count a delivery after the first.
pub fn redelivery(queue: &str, attempt: u32) {
    if attempt > 1 {
        metrics::counter!(REDELIVERIES, "queue" => queue.to_string()).increment(1);
    }
}

/// Count a connection to `broker` made again after a loss.
pub fn reconnected(broker: &'static str) {
    metrics::counter!(RECONNECTS, "broker" => broker).increment(1);
}

/// Count `bytes` moved to or from the blob store (`op`: `put`, `get`).
pub fn blob_bytes(op: &'static str, bytes: usize) {
    metrics::counter!(BLOB_BYTES, "op" => op).increment(bytes as u64);
}

/// Describe every metric, for the exposition's `# HELP` lines.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        UPLOADS,
        "Uploads by outcome (accepted, replayed, or the refusal's code) and tenant"
    );
    describe_counter!(
        UPLOAD_BYTES,
        Unit::Bytes,
        "Bytes of uploads by outcome and tenant"
    );
    describe_histogram!(
        UPLOAD_PUBLISH,
        Unit::Seconds,
        "Upload received to job published"
    );
    describe_counter!(
        JOBS,
        "Jobs whose end the API recorded, by outcome and failure code"
    );
    describe_histogram!(JOB_SECONDS, Unit::Seconds, "Upload to result available");
    describe_counter!(
        TRANSFORMS,
        "Jobs a transformer finished, by outcome (done, failed, retried, given_up)"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Upload to the start of its transform"
    );
    describe_histogram!(
        TRANSFORM_SECONDS,
        Unit::Seconds,
        "One transform: decode, operations, encode"
    );
    describe_histogram!(
        TRANSFORM_OPERATION_SECONDS,
        Unit::Seconds,
        "One operation of a transform, by operation"
    );
    describe_histogram!(
        CODEC_SECONDS,
        Unit::Seconds,
        "Decoding or encoding one image, by step and format"
    );
    describe_histogram!(
        ARCHIVED_SECONDS,
        Unit::Seconds,
        "Upload to its record committed by save2db"
    );
    describe_counter!(
        RECONNECTS,
        "Connections to the broker made again after a loss, by broker"
    );
    describe_counter!(
        BLOB_BYTES,
        Unit::Bytes,
        "Bytes written to (put) and read from (get) the blob store"
    );
    describe_counter!(
        OTLP_SPANS,
        "Spans for the OpenTelemetry collector, by outcome (exported, rejected, failed, dropped)"
    );
    describe_counter!(REDELIVERIES, "Deliveries after the first, by queue");
    describe_counter!(
        ARCHIVED,
        "Records saved by save2db or the activity writer, by queue"
    );
    describe_histogram!(
        ARCHIVE_BATCH_SECONDS,
        Unit::Seconds,
        "One archive batch transaction, by queue"
    );
    describe_histogram!(
        ARCHIVE_BATCH_RECORDS,
        "Records in one archive batch, by queue"
    );
    describe_gauge!(
        IN_FLIGHT,
        "Jobs accepted by this API process and not finished"
    );
    describe_gauge!(
        QUEUE_MESSAGES,
        "Messages in each queue, read from the broker"
    );
    describe_gauge!(
        QUEUE_CONSUMERS,
        "Consumers of each queue, read from the broker"
    );
    describe_gauge!(
        QUEUE_DEAD_LETTERS,
        "Messages in each queue's dead-letter queue, read from the broker"
    );
    describe_gauge!(
        PROCESS_CPU,
        Unit::Seconds,
        "CPU time of this process, user and system"
    );
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory of this process");
    describe_gauge!(
        PROCESS_RSS_PEAK,
        Unit::Bytes,
        "Highest resident memory of this process so far"
    );
    describe_gauge!(PROCESS_FDS, "Open file descriptors of this process");
    describe_gauge!(PROCESS_THREADS, "Threads of this process");
    describe_counter!(
        QUEUE_STATS_FAILURES,
        "Scrapes that could not read the queue counts from the broker"
    );
}
