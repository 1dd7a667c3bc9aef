//! Content-addressed byte storage, and the claim check that moves large
//! parts out of messages into it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::Part;
use crate::error::{Error, Result};
use crate::store::Blob;

/// A stored blob as listed for maintenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Its key.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// Unix ms of the last `put` of this key (some stores keep whole
    /// seconds only).
    pub stored_at_ms: i64,
}

/// Bytes stored under a key (the hex SHA-256 of the bytes).
///
/// # Contract
/// - `put` then `get` returns the same bytes and media type.
/// - `put` of an existing key succeeds, keeps the bytes, and refreshes the
///   blob's `stored_at_ms` (so a blob reused by a new job is never taken
///   for an old orphan).
/// - `get` of an unknown key is `None`; `delete` of one is a success.
/// - `stored_before(t)` lists every blob whose last `put` is older than `t`;
///   `delete_if_stored_before(k, t)` removes `k` only if that still holds.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Store `data` under `key`.
    async fn put(&self, key: &str, content_type: &str, data: Bytes) -> Result<()>;
    /// Read `key`.
    async fn get(&self, key: &str) -> Result<Option<Blob>>;
    /// Remove `key`.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Blobs last stored before `before_ms` (Unix ms).
    async fn stored_before(&self, before_ms: i64) -> Result<Vec<BlobMeta>>;
    /// Remove `key` only if its last `put` is older than `before_ms`;
    /// `true` if it was removed. Atomic where the backend allows (SQL,
    /// memory); elsewhere checked just before deleting.
    async fn delete_if_stored_before(&self, key: &str, before_ms: i64) -> Result<bool>;
    /// Whether the store can be used now.
    async fn ready(&self) -> Result<()> {
        Ok(())
    }
}

/// Refuse a key that is not a hex SHA-256 (keys become file names, object
/// names and SQL values).
pub fn check_key(key: &str) -> Result<()> {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "blob key {key:?} is not a hex SHA-256"
        )))
    }
}

/// Media type of a part (or [`Blob`]) that holds a [`BlobRef`] instead of
/// the bytes.
pub const REF_CONTENT_TYPE: &str = "application/vnd.pipeline.blob-ref+json";

/// Where the bytes of a part went: the body of a reference part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Key in the blob store (hex SHA-256 of the bytes).
    pub key: String,
    /// Media type of the bytes.
    pub content_type: String,
    /// Size of the bytes.
    pub size: u64,
}

impl BlobRef {
    /// The reference carried by `content_type`/`data`, if it is one.
    pub fn parse(content_type: &str, data: &[u8]) -> Result<Option<Self>> {
        if content_type != REF_CONTENT_TYPE {
            return Ok(None);
        }
        let r: Self = serde_json::from_slice(data)
            .map_err(|e| Error::invalid(format!("bad blob reference: {e}")))?;
        check_key(&r.key).map_err(|e| Error::invalid(format!("bad blob reference: {e}")))?;
        Ok(Some(r))
    }

    /// The reference in `blob`, if it holds one.
    pub fn of_blob(blob: &Blob) -> Result<Option<Self>> {
        Self::parse(&blob.content_type, &blob.data)
    }

    /// A blob holding this reference.
    pub fn to_blob(&self) -> Blob {
        Blob {
            content_type: REF_CONTENT_TYPE.to_string(),
            // Serializing three plain fields cannot fail.
            data: Bytes::from(serde_json::to_vec(self).unwrap_or_default()),
        }
    }
}

/// Default of `PIPELINE_INLINE_MAX`: parts above 4 MiB travel by reference.
/// An archive message carries the original and the result, so it stays
/// under 8 MiB + headers: below RabbitMQ 4's 16 MiB default message limit,
/// MariaDB's 16 MiB default packet, and small enough that brokers and the
/// result store keep many jobs in memory.
pub const DEFAULT_INLINE_MAX: usize = 4 * 1024 * 1024;

/// The claim check: parts larger than `inline_max` are stored in a
/// [`BlobStore`] and replaced by a [`BlobRef`] part; readers swap the
/// reference back for the bytes.
#[derive(Debug, Clone)]
pub struct ClaimCheck {
    store: Arc<dyn BlobStore>,
    inline_max: usize,
}

impl ClaimCheck {
    /// Parts above `inline_max` bytes go to `store`.
    pub fn new(store: Arc<dyn BlobStore>, inline_max: usize) -> Self {
        Self { store, inline_max }
    }

    /// The blob store.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// Largest part carried inline.
    pub fn inline_max(&self) -> usize {
        self.inline_max
    }

    /// Whether `len` bytes travel by reference.
    pub fn is_large(&self, len: usize) -> bool {
        len > self.inline_max
    }

    /// Store `part` if it is large (its bytes hash to `sha256`) and return
    /// the part to send: a reference, or `part` itself.
    pub async fn check_in(&self, part: Part, sha256: &str) -> Result<Part> {
        if !self.is_large(part.data.len()) || part.content_type == REF_CONTENT_TYPE {
            return Ok(part);
        }
        let r = BlobRef {
            key: sha256.to_string(),
            content_type: part.content_type.clone(),
            size: part.data.len() as u64,
        };
        self.store.put(&r.key, &r.content_type, part.data).await?;
        let blob = r.to_blob();
        Ok(Part::new(part.name, blob.content_type, blob.data))
    }

    /// The bytes of `part`: fetched when it is a reference.
    pub async fn check_out(&self, part: &Part) -> Result<Part> {
        let Some(r) = BlobRef::parse(&part.content_type, &part.data)? else {
            return Ok(part.clone());
        };
        let blob = self.fetch(&r).await?;
        Ok(Part::new(part.name.clone(), blob.content_type, blob.data))
    }

    /// `blob` itself, or the bytes it refers to.
    pub async fn resolve(&self, blob: Blob) -> Result<Blob> {
        match BlobRef::of_blob(&blob)? {
            Some(r) => self.fetch(&r).await,
            None => Ok(blob),
        }
    }

    async fn fetch(&self, r: &BlobRef) -> Result<Blob> {
        let blob = self.store.get(&r.key).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "blob {} ({} bytes) is not in the blob store",
                r.key, r.size
            ))
        })?;
        if blob.data.len() as u64 != r.size {
            return Err(Error::backend(
                "blob",
                format!(
                    "blob {} has {} bytes, the reference says {}",
                    r.key,
                    blob.data.len(),
                    r.size
                ),
                false,
            ));
        }
        Ok(Blob {
            content_type: r.content_type.clone(),
            data: blob.data,
        })
    }
}

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
    use super::*;
    use crate::memory::MemoryBlobStore;
    use crate::store::sha256_hex;

    #[tokio::test]
    async fn large_parts_travel_by_reference_and_come_back() {
        let check = ClaimCheck::new(Arc::new(MemoryBlobStore::new()), 10);
        let small = Part::new("original", "image/png", Bytes::from_static(b"0123456789"));
        assert_eq!(check.check_in(small.clone(), "x").await.unwrap(), small);
        let data = Bytes::from_static(b"0123456789a");
        let large = Part::new("original", "image/png", data.clone());
        let r = check
            .check_in(large.clone(), &sha256_hex(&data))
            .await
            .unwrap();
        assert_eq!(r.content_type, REF_CONTENT_TYPE);
        assert_eq!(r.name, "original");
        // Checking a reference in again keeps it.
        assert_eq!(check.check_in(r.clone(), "y").await.unwrap(), r);
        assert_eq!(check.check_out(&r).await.unwrap(), large);
        let blob = Blob {
            content_type: r.content_type.clone(),
            data: r.data.clone(),
        };
        assert_eq!(check.resolve(blob).await.unwrap().data, data);
    }

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

    #[tokio::test]
    async fn missing_and_bad_references_are_errors() {
        let check = ClaimCheck::new(Arc::new(MemoryBlobStore::new()), 10);
        let missing = BlobRef {
            key: "a".repeat(64),
            content_type: "image/png".into(),
            size: 3,
        }
        .to_blob();
        let err = check.resolve(missing).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let bad = Part::new("original", REF_CONTENT_TYPE, Bytes::from_static(b"{}"));
        assert!(check.check_out(&bad).await.is_err());
        let bad_key = Part::new(
            "original",
            REF_CONTENT_TYPE,
            Bytes::from_static(br#"{"key":"../etc/passwd","content_type":"x","size":1}"#),
        );
        assert!(check.check_out(&bad_key).await.is_err());
    }
}
