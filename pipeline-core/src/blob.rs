//! Content-addressed byte storage (for the claim check).

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::store::Blob;

/// Bytes stored under a key (normally their hex SHA-256).
///
/// # Contract
/// - `put` then `get` returns the same bytes and media type.
/// - `put` of an existing key is a no-op success.
/// - `get` of an unknown key is `None`; `delete` of one is a success.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Store `data` under `key`.
    async fn put(&self, key: &str, content_type: &str, data: Bytes) -> Result<()>;
    /// Read `key`.
    async fn get(&self, key: &str) -> Result<Option<Blob>>;
    /// Remove `key`.
    async fn delete(&self, key: &str) -> Result<()>;
}
