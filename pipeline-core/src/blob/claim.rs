//! The claim check: large parts travel through a blob store, messages
//! carry a reference.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{BlobStore, check_key};
use crate::envelope::Part;
use crate::error::{Error, Result};
use crate::store::Blob;

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
        let len = part.data.len();
        self.store.put(&r.key, &r.content_type, part.data).await?;
        crate::telemetry::blob_bytes("put", len);
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
        crate::telemetry::blob_bytes("get", blob.data.len());
        Ok(Blob {
            content_type: r.content_type.clone(),
            data: blob.data,
        })
    }
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
