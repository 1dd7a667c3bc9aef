//! Maintenance commands: `pipeline gc-blobs` (claim-check blobs no archived
//! job needs), `pipeline expire` (opt-in retention) and `pipeline
//! replay-dead` (dead letters published again).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use pipeline_core::{BlobStore, Error};

use crate::settings::{ARCHIVE_BLOBS, DEFAULT_DATABASE_URL};

/// The archive and blob store a maintenance command works on.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Archive database (as for `serve`).
    #[arg(
        long,
        env = "PIPELINE_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL, hide_env_values = true
    )]
    pub database_url: String,
    /// Blob store (as for `serve`).
    #[arg(long, env = "PIPELINE_BLOB_URL", default_value = ARCHIVE_BLOBS, hide_env_values = true)]
    pub blob_url: String,
    /// Namespace (table prefix).
    #[arg(long, env = "PIPELINE_NAMESPACE", default_value = "pipeline")]
    pub namespace: String,
}

impl StoreArgs {
    /// The archive, and the blob store (the archive's own table or another).
    async fn connect(
        &self,
    ) -> Result<(pipeline_core::connect::Archive, Arc<dyn BlobStore>), Error> {
        let backends = crate::backends::compiled();
        let options = pipeline_core::connect::ConnectOptions::new(self.namespace.clone());
        let archive = backends
            .connect_archive(&self.database_url, &options)
            .await?;
        let blobs = if crate::assemble::blobs_in_archive(&self.blob_url) {
            archive.blobs.clone()
        } else {
            backends.connect_blobs(&self.blob_url, &options).await?
        };
        Ok((archive, blobs))
    }
}

/// Options of `pipeline gc-blobs`.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Where the archive and the blobs are.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only blobs nobody stored for this many hours are candidates. Keep it
    /// above the longest time a message can wait in a queue, dead-letter
    /// queues included.
    #[arg(long, default_value_t = 168)]
    pub older_than_hours: u64,
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Sweep once and print the report.
pub(crate) async fn gc_blobs(args: GcArgs) -> Result<(), Error> {
    let (archive, blobs) = args.store.connect().await?;
    let grace = Duration::from_secs(args.older_than_hours.saturating_mul(3600));
    let r = pipeline_core::collect_orphans(
        blobs.as_ref(),
        archive.images.as_ref(),
        grace,
        args.dry_run,
    )
    .await?;
    println!(
        "{} blobs older than {} h: {} referenced by archived jobs, {} orphans {} ({:.1} MB){}",
        r.old,
        args.older_than_hours,
        r.referenced,
        r.removed,
        if args.dry_run { "to remove" } else { "removed" },
        r.removed_bytes as f64 / 1e6,
        if r.revived > 0 {
            format!(", {} stored again meanwhile and kept", r.revived)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Options of `pipeline expire`.
#[derive(Debug, Clone, Args)]
pub struct ExpireArgs {
    /// Where the archive and the blobs are.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Remove jobs finished more than this many days ago, with their blobs
    /// (those no newer job shares). Unset, retention is off: the archive
    /// keeps everything for ever and the command refuses to run.
    #[arg(long, env = "PIPELINE_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Jobs removed per transaction.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// Remove the jobs older than the retention, batch by batch, and print the
/// report. Safe while the pipeline runs: a blob a job being archived now
/// shares is kept.
pub(crate) async fn expire(args: ExpireArgs) -> Result<(), Error> {
    let Some(days) = args.retention_days else {
        return Err(Error::Config(
            "retention is off: set PIPELINE_RETENTION_DAYS (or --retention-days) to the days a finished job is kept".into(),
        ));
    };
    if days == 0 {
        return Err(Error::Config(
            "PIPELINE_RETENTION_DAYS must be at least 1".into(),
        ));
    }
    let (archive, blobs) = args.store.connect().await?;
    let started = pipeline_core::envelope::now_ms();
    let cutoff = started - i64::from(days) * 86_400_000;
    let (mut jobs, mut marks, mut released, mut removed) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let e = archive.images.expire(cutoff, args.batch.max(1)).await?;
        jobs += e.jobs;
        marks += e.marks;
        released += e.released.len() as u64;
        for key in &e.released {
            // Gone already when the blob store is the archive's own table;
            // one stored again since the run began belongs to a newer job.
            if blobs.delete_if_stored_before(key, started).await? {
                removed += 1;
            }
        }
        if e.jobs + e.marks == 0 {
            break;
        }
    }
    let blobs_note = if crate::assemble::blobs_in_archive(&args.store.blob_url) {
        format!("{released} blobs no other job shares removed")
    } else {
        format!("{released} blobs released, {removed} removed from the blob store")
    };
    println!(
        "expired {jobs} jobs finished more than {days} days ago and {marks} marks of deleted jobs; {blobs_note}"
    );
    Ok(())
}

/// Options of `pipeline replay-dead`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Broker (as for `serve`; the in-memory broker has nothing to replay
    /// from another process).
    #[arg(long, env = "PIPELINE_BROKER_URL", hide_env_values = true)]
    pub broker_url: String,
    /// Namespace (queue prefix).
    #[arg(long, env = "PIPELINE_NAMESPACE", default_value = "pipeline")]
    pub namespace: String,
    /// Whose dead letters: transform, api.results, save2db or activity.
    #[arg(long)]
    pub queue: String,
    /// Replay at most this many.
    #[arg(long, default_value_t = u64::MAX)]
    pub limit: u64,
    /// Stop once the dead-letter queue stays empty this long.
    #[arg(long, default_value_t = 2000)]
    pub idle_ms: u64,
}

/// Replay a queue's dead letters and print the report.
pub(crate) async fn replay_dead(args: ReplayArgs) -> Result<(), Error> {
    use pipeline_core::services::queues;
    let known = [
        queues::TRANSFORM,
        queues::API_RESULTS,
        queues::SAVE2DB,
        queues::ACTIVITY,
    ];
    if !known.contains(&args.queue.as_str()) {
        return Err(Error::Config(format!(
            "unknown queue {:?}; the pipeline's queues: {}",
            args.queue,
            known.join(", ")
        )));
    }
    let broker = crate::cli::admin::BrokerArgs {
        broker_url: Some(args.broker_url.clone()),
        namespace: args.namespace.clone(),
    }
    .connect("replay")
    .await?;
    let report = pipeline_core::services::replay_dead(
        broker.as_ref(),
        &args.queue,
        args.limit,
        Duration::from_millis(args.idle_ms.max(1)),
    )
    .await;
    broker.close().await?;
    let report = report?;
    println!(
        "{}.dead: {} replayed, {} kept",
        args.queue, report.replayed, report.kept
    );
    Ok(())
}
