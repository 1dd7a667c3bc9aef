//! Backends chosen by URL scheme.

use std::sync::Arc;
use std::time::Duration;

use pipeline_core::blob::FileBlobStore;
use pipeline_core::memory::{
    MemoryArchive, MemoryBlobStore, MemoryBroker, MemoryBrokerConfig, MemoryResultStore,
};
use pipeline_core::{ActivityLog, BlobStore, Broker, Error, ImageStore, ResultStore};
use pipeline_rabbitmq::RabbitBroker;
pub use pipeline_sql::redact_url as redact;
use pipeline_sql::{SqlArchive, redact_url};

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(s, _)| s)
}

/// The broker for `url`; `connection_name` identifies this process on the server.
pub async fn broker(
    url: &str,
    namespace: &str,
    connection_name: &str,
    drain_timeout: Duration,
) -> Result<Arc<dyn Broker>, Error> {
    match scheme(url) {
        "amqp" | "amqps" => Ok(Arc::new(
            RabbitBroker::connect(url, namespace, connection_name).await?,
        )),
        "redis" | "rediss" | "redis-cluster" | "redis-sentinel" => Ok(Arc::new(
            pipeline_redis::RedisBroker::connect(url, namespace).await?,
        )),
        "memory" => {
            let mut config = MemoryBrokerConfig {
                drain_timeout,
                ..MemoryBrokerConfig::default()
            };
            for (key, value) in query_pairs(url) {
                match key {
                    "max_depth" => {
                        config.max_depth =
                            value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                                Error::Config(format!(
                                    "memory broker: max_depth {value:?} is not a positive number"
                                ))
                            })?;
                    }
                    other => {
                        return Err(Error::Config(format!(
                            "memory broker: unknown option {other:?} (known: max_depth)"
                        )));
                    }
                }
            }
            Ok(Arc::new(MemoryBroker::with_config(config)))
        }
        _ => Err(Error::Config(format!(
            "unsupported broker URL {}; supported schemes: memory://, amqp://, amqps://, redis://, rediss://",
            redact_url(url)
        ))),
    }
}

fn query_pairs(url: &str) -> impl Iterator<Item = (&str, &str)> {
    url.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The result store for `url`.
pub async fn results(url: &str, namespace: &str) -> Result<Arc<dyn ResultStore>, Error> {
    match scheme(url) {
        "memory" => Ok(Arc::new(MemoryResultStore::new())),
        "redis" | "rediss" | "redis-cluster" | "redis-sentinel" => Ok(Arc::new(
            pipeline_redis::RedisResultStore::connect(url, namespace).await?,
        )),
        _ => Err(Error::Config(format!(
            "unsupported results URL {}; supported schemes: memory://, redis://, rediss://",
            redact_url(url)
        ))),
    }
}

/// The archive of a deployment: images, activity, and, for an SQL
/// database, its blob table (the default claim-check store).
#[derive(Debug, Clone)]
pub struct Archive {
    /// Archived jobs.
    pub images: Arc<dyn ImageStore>,
    /// The activity log.
    pub activity: Arc<dyn ActivityLog>,
    /// The archive's own blob store.
    pub blobs: Arc<dyn BlobStore>,
}

/// The archive for `url`.
pub async fn archive(url: &str, namespace: &str) -> Result<Archive, Error> {
    let sql = match scheme(url) {
        "memory" => {
            let a = Arc::new(MemoryArchive::new());
            return Ok(Archive {
                images: a.clone(),
                activity: a,
                blobs: Arc::new(MemoryBlobStore::new()),
            });
        }
        "sqlite" => {
            ensure_sqlite_dir(url)?;
            Arc::new(SqlArchive::connect(url, namespace).await?)
        }
        "postgres" | "postgresql" | "mysql" | "mariadb" => {
            Arc::new(SqlArchive::connect(url, namespace).await?)
        }
        _ => {
            return Err(Error::Config(format!(
                "unsupported database URL {}; supported schemes: sqlite://, postgres://, mysql://, memory://",
                redact_url(url)
            )));
        }
    };
    Ok(Archive {
        images: sql.clone(),
        activity: sql.clone(),
        blobs: sql,
    })
}

/// Default archive: an SQLite file under the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./pipeline-data/pipeline.db?mode=rwc";

/// The blob-store URL naming the archive's own blob table (the default).
pub const ARCHIVE_BLOBS: &str = "archive";

/// Whether the blob store named by `url` is the archive's own.
pub fn blobs_in_archive(url: &str) -> bool {
    url.is_empty() || url == ARCHIVE_BLOBS
}

/// The claim-check blob store for `url`: `archive` (the archive database's
/// blob table, the default), `file:///path`, `s3://bucket/prefix`, or
/// `memory://` (one process only).
pub async fn blob_store(url: &str, archive: Option<&Archive>) -> Result<Arc<dyn BlobStore>, Error> {
    if blobs_in_archive(url) {
        return archive.map(|a| a.blobs.clone()).ok_or_else(|| {
            Error::Config("the blob store is the archive, but no archive is configured".into())
        });
    }
    match scheme(url) {
        "file" => Ok(Arc::new(FileBlobStore::from_url(url).await?)),
        "s3" => Ok(Arc::new(pipeline_object_store::ObjectBlobStore::from_url(
            url,
        )?)),
        "memory" => Ok(Arc::new(MemoryBlobStore::new())),
        _ => Err(Error::Config(format!(
            "unsupported blob store URL {}; supported: archive (the database), file:///path, s3://bucket/prefix, memory://",
            redact_url(url)
        ))),
    }
}

/// Create the folder of an SQLite file so `?mode=rwc` can create the file.
fn ensure_sqlite_dir(url: &str) -> Result<(), Error> {
    let path = url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(())
}
