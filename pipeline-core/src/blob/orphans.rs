//! Collecting blobs that no archived job refers to.

use super::BlobStore;
use crate::error::Result;

/// What [`collect_orphans`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Blobs older than the grace period.
    pub old: u64,
    /// Of those, still referenced by an archived job.
    pub referenced: u64,
    /// Orphans removed (or, in a dry run, that would be).
    pub removed: u64,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Orphans stored again while the sweep ran (kept).
    pub revived: u64,
}

/// Remove blobs no archived job refers to and that nobody stored for
/// `grace`: originals of jobs that never reached the archive (failed to
/// publish, dead-lettered and dropped) and results of transforms that were
/// redone. A blob a job may still need is never older than `grace`: its
/// `put` refreshes it, and jobs live in queues for minutes, not the
/// default grace of days (see `docs/backends/sql.md`). With `dry_run`,
/// nothing is deleted.
pub async fn collect_orphans(
    blobs: &dyn BlobStore,
    archive: &dyn crate::ImageStore,
    grace: std::time::Duration,
    dry_run: bool,
) -> Result<OrphanReport> {
    let before = crate::envelope::now_ms() - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let old = blobs.stored_before(before).await?;
    let mut report = OrphanReport {
        old: old.len() as u64,
        ..OrphanReport::default()
    };
    for chunk in old.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|m| m.key.clone()).collect();
        let used = archive.referenced(&keys).await?;
        report.referenced += used.len() as u64;
        for meta in chunk.iter().filter(|m| !used.contains(&m.key)) {
            let removed = dry_run || blobs.delete_if_stored_before(&meta.key, before).await?;
            if removed {
                report.removed += 1;
                report.removed_bytes += meta.size;
            } else {
                report.revived += 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::blob::BlobRef;
    use crate::memory::MemoryBlobStore;
    use crate::store::sha256_hex;

    #[tokio::test]
    async fn orphans_are_removed_and_referenced_blobs_kept() {
        use crate::ImageStore;
        use crate::memory::MemoryArchive;
        let store = MemoryBlobStore::new();
        let archive = MemoryArchive::new();
        let mut record = crate::testkit::store::record("t", b"original", b"result");
        let (orig, _) = record.blob_keys();
        let orig = orig.unwrap();
        let r = BlobRef {
            key: orig.clone(),
            content_type: "image/png".into(),
            size: 8,
        };
        record.original = Some(r.to_blob());
        store
            .put(&orig, "image/png", Bytes::from_static(b"original"))
            .await
            .unwrap();
        archive.save(&[record]).await.unwrap();
        let orphan = sha256_hex(b"orphan");
        store
            .put(&orphan, "image/png", Bytes::from_static(b"orphan"))
            .await
            .unwrap();
        let zero = std::time::Duration::ZERO;
        // Within the grace period nothing is old.
        let grace = std::time::Duration::from_secs(3600);
        let none = collect_orphans(&store, &archive, grace, false)
            .await
            .unwrap();
        assert_eq!(none, OrphanReport::default());
        let t = crate::envelope::now_ms();
        while crate::envelope::now_ms() <= t {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let dry = collect_orphans(&store, &archive, zero, true).await.unwrap();
        assert_eq!((dry.old, dry.referenced, dry.removed), (2, 1, 1));
        assert!(
            store.get(&orphan).await.unwrap().is_some(),
            "dry run deleted"
        );
        let done = collect_orphans(&store, &archive, zero, false)
            .await
            .unwrap();
        assert_eq!((done.removed, done.removed_bytes), (1, 6));
        assert!(store.get(&orphan).await.unwrap().is_none());
        assert!(
            store.get(&orig).await.unwrap().is_some(),
            "referenced blob removed"
        );
    }
}
