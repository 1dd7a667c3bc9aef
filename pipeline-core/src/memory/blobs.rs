use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::lock;
use crate::blob::BlobStore;
use crate::error::Result;
use crate::store::Blob;

/// Blob store in a map.
#[derive(Debug, Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<HashMap<String, Blob>>,
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
        lock(&self.blobs)
            .entry(key.to_string())
            .or_insert_with(|| Blob {
                content_type: content_type.to_string(),
                data,
            });
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Blob>> {
        Ok(lock(&self.blobs).get(key).cloned())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        lock(&self.blobs).remove(key);
        Ok(())
    }
}
