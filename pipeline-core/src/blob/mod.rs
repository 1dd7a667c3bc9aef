//! Content-addressed byte storage: the [`BlobStore`] trait, its
//! implementations in memory and on the file system, the [`ClaimCheck`]
//! that moves large parts out of messages into it, and the collection of
//! orphans.

mod claim;
mod file;
mod orphans;

pub use claim::{BlobRef, ClaimCheck, DEFAULT_INLINE_MAX, REF_CONTENT_TYPE};
pub use file::FileBlobStore;
pub use orphans::{OrphanReport, collect_orphans};

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

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
