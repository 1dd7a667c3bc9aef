use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::lock;
use crate::blob::{BlobMeta, BlobStore, check_key};
use crate::envelope::now_ms;
use crate::error::Result;
use crate::store::Blob;

/// Blob store in a map.
#[derive(Debug, Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<HashMap<String, (Blob, i64)>>,
}

impl MemoryBlobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn put(&self, key: &str, content_type: &str, data: Bytes) -> Result<()> {
        check_key(key)?;
        let now = now_ms();
        lock(&self.blobs)
            .entry(key.to_string())
            .and_modify(|(_, at)| *at = now)
            .or_insert_with(|| {
                (
                    Blob {
                        content_type: content_type.to_string(),
                        data,
                    },
                    now,
                )
            });
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Blob>> {
        Ok(lock(&self.blobs).get(key).map(|(b, _)| b.clone()))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        lock(&self.blobs).remove(key);
        Ok(())
    }

    async fn delete_if_stored_before(&self, key: &str, before_ms: i64) -> Result<bool> {
        let mut blobs = lock(&self.blobs);
        match blobs.get(key) {
            Some((_, at)) if *at < before_ms => {
                blobs.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn stored_before(&self, before_ms: i64) -> Result<Vec<BlobMeta>> {
        Ok(lock(&self.blobs)
            .iter()
            .filter(|(_, (_, at))| *at < before_ms)
            .map(|(k, (b, at))| BlobMeta {
                key: k.clone(),
                size: b.data.len() as u64,
                stored_at_ms: *at,
            })
            .collect())
    }
}
