//! `pipeline gc-blobs`: remove claim-check blobs no archived job needs.

use std::time::Duration;

use clap::Args;
use pipeline_core::Error;

use crate::backends;

/// Options of `pipeline gc-blobs`.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Archive database (as for `serve`).
    #[arg(
        long,
        env = "PIPELINE_DATABASE_URL",
        default_value = "sqlite://./pipeline-data/pipeline.db?mode=rwc"
    )]
    pub database_url: String,
    /// Blob store (as for `serve`).
    #[arg(long, env = "PIPELINE_BLOB_URL", default_value = "archive")]
    pub blob_url: String,
    /// Namespace (table prefix).
    #[arg(long, env = "PIPELINE_NAMESPACE", default_value = "pipeline")]
    pub namespace: String,
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
pub async fn gc_blobs(args: GcArgs) -> Result<(), Error> {
    let archive = backends::archive(&args.database_url, &args.namespace).await?;
    let blobs = backends::blob_store(&args.blob_url, Some(&archive)).await?;
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
