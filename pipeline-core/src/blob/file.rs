//! [`BlobStore`] in a directory (`file:///path`): one file per blob under
//! `<root>/<k[0..2]>/<k[2..4]>/<key>`, its media type beside it in
//! `<key>.type`. Writes go to a temporary file renamed into place, so a
//! reader never sees half a blob. Usable by several processes (and hosts,
//! on a shared file system with atomic rename).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobMeta, BlobStore, check_key};
use crate::error::{Error, Result};
use crate::store::Blob;

/// Blob store in a directory.
#[derive(Debug, Clone)]
pub struct FileBlobStore {
    root: PathBuf,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    if matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded) {
        return Error::StorageFull {
            backend: "file",
            message: format!("{what} {}: {e}", path.display()),
        };
    }
    // A read-only disk may clear up; a permission problem will not.
    let retryable = !matches!(
        e.kind(),
        ErrorKind::PermissionDenied | ErrorKind::InvalidInput
    );
    Error::backend("file", format!("{what} {}: {e}", path.display()), retryable)
}

impl FileBlobStore {
    /// A store in `root`, created if missing.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        tokio::fs::create_dir_all(root.join("tmp"))
            .await
            .map_err(|e| io_error("create", &root, e))?;
        Ok(Self { root })
    }

    /// A store for a `file:///path` URL.
    pub async fn from_url(url: &str) -> Result<Self> {
        let parsed = crate::urls::BackendUrl::parse(url)?;
        let local = parsed
            .host()
            .is_none_or(|h| h.is_empty() || h == "localhost");
        let path = parsed.path();
        if parsed.scheme() != "file"
            || !local
            || !path.starts_with('/')
            || parsed.url().query().is_some()
        {
            return Err(Error::Config(format!(
                "blob store URL {parsed}: expected file:///absolute/path"
            )));
        }
        Self::open(path).await
    }

    /// The directory of the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        let key = key.to_ascii_lowercase();
        Ok(self.root.join(&key[0..2]).join(&key[2..4]).join(key))
    }
}

fn type_path(path: &Path) -> PathBuf {
    path.with_extension("type")
}

fn ms_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl BlobStore for FileBlobStore {
    async fn put(&self, key: &str, content_type: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{key}.{}", uuid::Uuid::now_v7()));
        let content_type = content_type.to_string();
        tokio::task::spawn_blocking(move || put_blocking(&path, &tmp, &content_type, &data))
            .await
            .map_err(|e| Error::backend("file", format!("blob store task: {e}"), true))?
    }

    async fn get(&self, key: &str) -> Result<Option<Blob>> {
        let path = self.path(key)?;
        let data = match tokio::fs::read(&path).await {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &path, e)),
        };
        let content_type = match tokio::fs::read_to_string(type_path(&path)).await {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => "application/octet-stream".into(),
            Err(e) => return Err(io_error("read", &type_path(&path), e)),
        };
        Ok(Some(Blob {
            content_type,
            data: Bytes::from(data),
        }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        for p in [path.clone(), type_path(&path)] {
            match tokio::fs::remove_file(&p).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", &p, e)),
            }
        }
        Ok(())
    }

    async fn delete_if_stored_before(&self, key: &str, before_ms: i64) -> Result<bool> {
        let path = self.path(key)?;
        let modified = match tokio::fs::metadata(&path).await {
            Ok(m) => m.modified().map_err(|e| io_error("stat", &path, e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("stat", &path, e)),
        };
        if ms_of(modified) >= before_ms {
            return Ok(false);
        }
        self.delete(key).await?;
        Ok(true)
    }

    async fn stored_before(&self, before_ms: i64) -> Result<Vec<BlobMeta>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || walk(&root, before_ms))
            .await
            .map_err(|e| Error::backend("file", format!("blob store task: {e}"), true))?
    }

    async fn ready(&self) -> Result<()> {
        tokio::fs::metadata(self.root.join("tmp"))
            .await
            .map(|_| ())
            .map_err(|e| io_error("open", &self.root, e))
    }
}

/// Refresh an existing blob, or write a new one through a temporary file.
/// Times are set explicitly: the file system's own clock is coarse and can
/// lag the real one by milliseconds.
fn put_blocking(path: &Path, tmp: &Path, content_type: &str, data: &[u8]) -> Result<()> {
    match std::fs::File::options().write(true).open(path) {
        Ok(f) => {
            return f
                .set_modified(SystemTime::now())
                .map_err(|e| io_error("refresh", path, e));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("refresh", path, e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    }
    let types = type_path(path);
    std::fs::write(&types, content_type.as_bytes()).map_err(|e| io_error("write", &types, e))?;
    let written = std::fs::write(tmp, data)
        .and_then(|()| std::fs::File::options().write(true).open(tmp))
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(|e| io_error("write", tmp, e))
        .and_then(|()| std::fs::rename(tmp, path).map_err(|e| io_error("rename into", path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// Blobs under `root` last written before `before_ms`; also removes
/// temporary files a crashed writer left for more than an hour.
fn walk(root: &Path, before_ms: i64) -> Result<Vec<BlobMeta>> {
    let read = |p: &Path| std::fs::read_dir(p).map_err(|e| io_error("list", p, e));
    let mut out = Vec::new();
    for a in read(root)? {
        let a = a.map_err(|e| io_error("list", root, e))?.path();
        let name = a.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == "tmp" {
            let stale = SystemTime::now() - Duration::from_secs(3600);
            for t in read(&a)?.flatten() {
                let old = t
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m < stale);
                if old {
                    let _ = std::fs::remove_file(t.path());
                }
            }
            continue;
        }
        if !a.is_dir() || name.len() != 2 {
            continue;
        }
        for b in read(&a)? {
            let b = b.map_err(|e| io_error("list", &a, e))?.path();
            if !b.is_dir() {
                continue;
            }
            for f in read(&b)? {
                let f = f.map_err(|e| io_error("list", &b, e))?;
                let name = f.file_name();
                let Some(key) = name.to_str().filter(|k| check_key(k).is_ok()) else {
                    continue;
                };
                let meta = f.metadata().map_err(|e| io_error("stat", &f.path(), e))?;
                let at = ms_of(
                    meta.modified()
                        .map_err(|e| io_error("stat", &f.path(), e))?,
                );
                if at < before_ms {
                    out.push(BlobMeta {
                        key: key.to_string(),
                        size: meta.len(),
                        stored_at_ms: at,
                    });
                }
            }
        }
    }
    Ok(out)
}
