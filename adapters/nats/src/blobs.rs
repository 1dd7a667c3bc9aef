//! [`BlobStore`] on the JetStream object store: one bucket per namespace,
//! one object per content key, the media type in its description.

use async_nats::jetstream;
use async_nats::jetstream::object_store::{self, ObjectInfo, ObjectMetadata, ObjectStore};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use pipeline_core::Result;
use pipeline_core::blob::{BlobMeta, BlobStore, check_key};
use pipeline_core::store::Blob;
use tokio::io::AsyncReadExt;

use crate::{check_namespace, connect_client, nats_error, parse_url};

/// Claim-check blobs in a JetStream object store bucket.
pub struct NatsBlobStore {
    client: async_nats::Client,
    bucket: ObjectStore,
    name: String,
}

impl std::fmt::Debug for NatsBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBlobStore")
            .field("bucket", &self.name)
            .finish_non_exhaustive()
    }
}

/// Unix ms of an object's last `put`.
fn stored_at_ms(info: &ObjectInfo) -> i64 {
    info.modified
        .map_or(0, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

impl NatsBlobStore {
    /// Connect to `url` (as for the broker: `storage`, `replicas`) and
    /// open or create the bucket `<namespace>-blobs`.
    pub async fn connect(url: &str, namespace: &str, client_name: &str) -> Result<Self> {
        check_namespace(namespace)?;
        let (u, options) = parse_url(url)?;
        let client = connect_client(&u, client_name).await?;
        let js = jetstream::new(client.clone());
        let name = format!("{namespace}-blobs");
        let bucket = match js.get_object_store(&name).await {
            Ok(b) => b,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: name.clone(),
                    storage: options.storage,
                    num_replicas: options.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_error(&format!("create the object store {name}"), e))?,
        };
        Ok(Self {
            client,
            bucket,
            name,
        })
    }

    /// Delete the bucket and every blob in it (tests, decommissioning).
    pub async fn delete_all(&self) -> Result<()> {
        let js = jetstream::new(self.client.clone());
        match js.delete_object_store(&self.name).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(nats_error("delete the object store", e)),
        }
    }

    async fn info(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match self.bucket.info(key).await {
            Ok(i) if !i.deleted => Ok(Some(i)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(nats_error(&format!("blob {key}"), e)),
        }
    }
}

#[async_trait]
impl BlobStore for NatsBlobStore {
    async fn put(&self, key: &str, content_type: &str, data: Bytes) -> Result<()> {
        check_key(key)?;
        // Putting the same name again replaces the object: the bytes are
        // the same (the key is their hash) and its time is refreshed.
        let meta = ObjectMetadata {
            name: key.to_string(),
            description: Some(content_type.to_string()),
            ..Default::default()
        };
        self.bucket
            .put(meta, &mut data.as_ref())
            .await
            .map_err(|e| nats_error(&format!("put blob {key}"), e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Blob>> {
        check_key(key)?;
        let mut object = match self.bucket.get(key).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(nats_error(&format!("get blob {key}"), e)),
        };
        let content_type = object
            .info()
            .description
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        let mut data = Vec::with_capacity(object.info().size);
        object
            .read_to_end(&mut data)
            .await
            .map_err(|e| nats_error(&format!("read blob {key}"), e))?;
        Ok(Some(Blob {
            content_type,
            data: Bytes::from(data),
        }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        match self.bucket.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(nats_error(&format!("delete blob {key}"), e)),
        }
    }

    async fn stored_before(&self, before_ms: i64) -> Result<Vec<BlobMeta>> {
        let mut list = self
            .bucket
            .list()
            .await
            .map_err(|e| nats_error("list blobs", e))?;
        let mut out = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| nats_error("list blobs", e))?;
            let at = stored_at_ms(&info);
            if !info.deleted && at < before_ms {
                out.push(BlobMeta {
                    key: info.name.clone(),
                    size: info.size as u64,
                    stored_at_ms: at,
                });
            }
        }
        Ok(out)
    }

    async fn delete_if_stored_before(&self, key: &str, before_ms: i64) -> Result<bool> {
        check_key(key)?;
        // Checked just before deleting (the object store has no
        // conditional delete).
        match self.info(key).await? {
            Some(info) if stored_at_ms(&info) < before_ms => {
                self.delete(key).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn ready(&self) -> Result<()> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(pipeline_core::Error::Unavailable(format!(
                "NATS connection is {state:?}"
            ))),
        }
    }
}
