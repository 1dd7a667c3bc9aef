//! # pipeline-object-store
//!
//! A [`BlobStore`] on S3-compatible object storage through `object_store`:
//! the claim-check store for deployments whose large files should not live
//! in the database (`PIPELINE_BLOB_URL=s3://bucket/prefix`).
//!
//! Objects are `<prefix>/<k[0..2]>/<k[2..4]>/<key>` with the media type as
//! the object's `Content-Type`. Credentials, region and endpoint come from
//! the usual variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_DEFAULT_REGION`, `AWS_ENDPOINT` for MinIO/Ceph/R2..., and
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).

use std::sync::Arc;

#[cfg(feature = "testkit")]
pub mod testkit;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use pipeline_core::blob::{BlobMeta, BlobStore, check_key};
use pipeline_core::store::Blob;
use pipeline_core::urls::{BackendUrl, redact};
use pipeline_core::{Error, Result};

/// Make ring the process's rustls crypto provider unless one is installed.
/// The workspace builds reqwest's rustls without a provider (no aws-lc in
/// the tree), so any reqwest client in a process that links this crate
/// needs one: call this before building clients.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Blob store on S3 (or any `object_store` backend).
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

fn os_error(what: &str, e: object_store::Error) -> Error {
    let retryable = !matches!(
        e,
        object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    );
    Error::backend("s3", format!("{what}: {e}"), retryable)
}

fn ms_of(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

/// Serve `s3://bucket/prefix` blob-store URLs in `backends`.
pub fn register(backends: &mut pipeline_core::connect::Backends) {
    backends.blobs("s3", |url, _| async move {
        Ok(Arc::new(ObjectBlobStore::from_url(&url)?) as Arc<dyn BlobStore>)
    });
}

impl ObjectBlobStore {
    /// A store for `s3://bucket[/prefix][?option=value&...]`, configured
    /// from the `AWS_*` environment variables, then from the options in the
    /// query string (`object_store`'s S3 keys: `endpoint`, `region`,
    /// `allow_http`, `virtual_hosted_style_request`...). Keep credentials
    /// in the environment, not in the URL.
    pub fn from_url(url: &str) -> Result<Self> {
        let u = BackendUrl::parse(url)?;
        if u.scheme() != "s3" {
            return Err(Error::Config(format!(
                "blob store URL {u}: expected s3://bucket/prefix"
            )));
        }
        let options = u.query_pairs();
        let options: Vec<(&str, &str)> = options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let base = format!(
            "s3://{}{}",
            u.host().unwrap_or_default(),
            u.path().trim_end_matches('/')
        );
        if !u.username().is_empty() || u.password().is_some() {
            return Err(Error::Config(format!(
                "blob store URL {u}: credentials go in the AWS_* variables, not in the URL"
            )));
        }
        Self::from_url_with(&base, &options)
    }

    /// Like [`from_url`](Self::from_url) with the options given apart
    /// (`url` is `s3://bucket[/prefix]`, without a query).
    pub fn from_url_with(url: &str, options: &[(&str, &str)]) -> Result<Self> {
        install_crypto_provider();
        let bad = |why: &str| Error::Config(format!("blob store URL {}: {why}", redact(url)));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            builder = match *key {
                "allow_http" | "aws_allow_http" => builder.with_allow_http(*value == "true"),
                _ => {
                    let k: AmazonS3ConfigKey = key
                        .parse()
                        .map_err(|_| bad(&format!("unknown S3 option {key:?}")))?;
                    builder.with_config(k, *value)
                }
            };
        }
        let store = builder
            .build()
            .map_err(|e| Error::Config(format!("S3 blob store {}: {e}", redact(url))))?;
        Ok(Self::new(Arc::new(store), prefix))
    }

    /// A store over any `object_store` backend, under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: Path::from(prefix.trim_matches('/')),
        }
    }

    fn path(&self, key: &str) -> Result<Path> {
        check_key(key)?;
        let key = key.to_ascii_lowercase();
        Ok(self
            .prefix
            .clone()
            .join(&key[0..2])
            .join(&key[2..4])
            .join(key.as_str()))
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    /// Always writes: the new upload is also what refreshes the object's
    /// age (S3 has no way to touch an object).
    async fn put(&self, key: &str, content_type: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_string().into());
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&path, PutPayload::from_bytes(data), options)
            .await
            .map_err(|e| os_error(&format!("put {path}"), e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Blob>> {
        let path = self.path(key)?;
        let got = match self.store.get(&path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(os_error(&format!("get {path}"), e)),
        };
        let content_type = got
            .attributes
            .get(&Attribute::ContentType)
            .map_or_else(|| "application/octet-stream".to_string(), |v| v.to_string());
        let data = got
            .bytes()
            .await
            .map_err(|e| os_error(&format!("read {path}"), e))?;
        Ok(Some(Blob { content_type, data }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_error(&format!("delete {path}"), e)),
        }
    }

    async fn stored_before(&self, before_ms: i64) -> Result<Vec<BlobMeta>> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|e| os_error("list", e))?;
        Ok(objects
            .into_iter()
            .filter_map(|m| {
                let key = m.location.filename()?.to_string();
                let at = ms_of(m.last_modified);
                (check_key(&key).is_ok() && at < before_ms).then_some(BlobMeta {
                    key,
                    size: m.size,
                    stored_at_ms: at,
                })
            })
            .collect())
    }

    async fn delete_if_stored_before(&self, key: &str, before_ms: i64) -> Result<bool> {
        let path = self.path(key)?;
        let meta = match self.store.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(os_error(&format!("head {path}"), e)),
        };
        if ms_of(meta.last_modified) >= before_ms {
            return Ok(false);
        }
        self.delete(key).await?;
        Ok(true)
    }

    async fn ready(&self) -> Result<()> {
        let probe = self.prefix.clone().join("ready-probe");
        match self.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_error("reach the bucket", e)),
        }
    }
}
