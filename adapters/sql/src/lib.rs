//! # pipeline-sql
//!
//! The archive of the pipeline on SQL through sea-orm: [`SqlArchive`]
//! implements [`ImageStore`] and [`ActivityLog`] on SQLite, PostgreSQL and
//! MySQL/MariaDB with the same migrations. Tables are prefixed with the
//! namespace (`pipeline_images`, `pipeline_blobs`, `pipeline_activity`).
//! Blobs are content-addressed by SHA-256 and stored once; saves are batched
//! in one transaction and idempotent by job id.

mod blobs;
mod error;
mod schema;

pub use blobs::CHUNK_BYTES;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Order, Query};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, QueryResult,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use uuid::Uuid;

use pipeline_core::envelope::now_ms;
use pipeline_core::store::{
    ActivityEntry, ActivityLog, ArchiveRecord, Blob, ImageRecord, ImageStore, JobFailure, JobState,
    MediaInfo, Page,
};
use pipeline_core::{Backoff, Error, Result};

use crate::error::db_error;
use crate::schema::Tables;

/// Most bytes of blob data sent in one INSERT (below MySQL's default 16 MiB packet).
const BLOB_STATEMENT_BYTES: usize = 8 * 1024 * 1024;
/// Longest a readiness ping may take.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Most rows in one multi-row INSERT.
const ROWS_PER_STATEMENT: usize = 200;

/// The server's `max_allowed_packet` (MySQL/MariaDB).
async fn max_allowed_packet(db: &DatabaseConnection) -> Result<usize> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            DatabaseBackend::MySql,
            "SELECT CAST(@@max_allowed_packet AS SIGNED) AS p",
        ))
        .await
        .map_err(|e| db_error("mysql", e))?
        .ok_or_else(|| Error::backend("mysql", "no max_allowed_packet", false))?;
    let p: i64 = row.try_get("", "p").map_err(|e| db_error("mysql", e))?;
    Ok(usize::try_from(p).unwrap_or(0))
}

/// Statement and chunk sizes that fit a server packet of `packet` bytes:
/// half of it at most (room for the statement and the protocol), never more
/// than the defaults.
fn statement_sizes(packet: usize) -> Result<(usize, usize)> {
    let half = packet / 2;
    if half < 16 * 1024 {
        return Err(Error::Config(format!(
            "the server's max_allowed_packet is {packet} bytes; the archive needs at least 32 KiB"
        )));
    }
    Ok((BLOB_STATEMENT_BYTES.min(half), CHUNK_BYTES.min(half)))
}

/// Whether a database error is a transaction conflict worth running again.
fn is_conflict(message: &str) -> bool {
    message.contains("Deadlock found")
        || message.contains("40001")
        || message.contains("could not serialize")
}

/// Pauses between runs of a transaction the database rolled back.
const CONFLICT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(2), Duration::from_millis(50)).with_jitter();

/// Run `op` again, up to 5 times in all, while the database reports a
/// conflict (a deadlock or serialization failure rolled it back, so running
/// it again is safe).
pub(crate) async fn retry_conflicts<T, F, Fut>(op: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = CONFLICT_BACKOFF.start();
    loop {
        match op().await {
            Err(Error::Backend { message, .. })
                if backoff.failures() < 4 && is_conflict(&message) =>
            {
                tracing::debug!(attempt = backoff.failures() + 1, %message, "transaction conflicted; retrying");
                backoff.wait().await;
            }
            other => return other,
        }
    }
}

/// A blob to store and its content key.
type KeyedBlob<'a> = (String, &'a Blob);

/// A record with the content keys of its original and result.
type Keyed<'a> = (&'a ArchiveRecord, Option<String>, Option<String>);

/// Archive on an SQL database.
#[derive(Clone)]
pub struct SqlArchive {
    db: DatabaseConnection,
    backend: &'static str,
    tables: Tables,
    /// Most blob bytes in one multi-row INSERT.
    statement_bytes: usize,
    /// Blobs above this are stored as chunks of this size.
    chunk_bytes: usize,
}

impl fmt::Debug for SqlArchive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlArchive")
            .field("backend", &self.backend)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

pub use pipeline_core::urls::redact as redact_url;

/// The URL schemes this build serves (by its `sqlite`, `postgres` and
/// `mysql` features).
pub fn schemes() -> &'static [&'static str] {
    &[
        #[cfg(feature = "sqlite")]
        "sqlite",
        #[cfg(feature = "postgres")]
        "postgres",
        #[cfg(feature = "postgres")]
        "postgresql",
        #[cfg(feature = "mysql")]
        "mysql",
        #[cfg(feature = "mysql")]
        "mariadb",
    ]
}

/// Serve every scheme of [`schemes`] as an archive (images, activity and
/// the archive's own blob table) in `backends`.
pub fn register(backends: &mut pipeline_core::connect::Backends) {
    for scheme in schemes() {
        backends.archive(scheme, |url, options| async move {
            let archive = Arc::new(SqlArchive::connect(&url, &options.namespace).await?);
            Ok(pipeline_core::connect::Archive::of(archive))
        });
    }
}

/// Create the folder of an SQLite file so `?mode=rwc` can create the file.
/// The path is read as sqlx reads it: what follows `sqlite://` up to `?`,
/// percent-decoded.
#[cfg(feature = "sqlite")]
fn ensure_sqlite_dir(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or_default();
    let (raw_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy();
    let in_memory = path.is_empty() || path == ":memory:" || query.contains("mode=memory");
    if in_memory {
        return Ok(());
    }
    if let Some(dir) = std::path::Path::new(path.as_ref()).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(())
}

impl SqlArchive {
    /// Connect to `url` (`sqlite://`, `postgres://`, `mysql://`), and create
    /// or upgrade the tables of `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let tables = Tables::new(namespace)?;
        let backend = match pipeline_core::urls::scheme_of(url).as_deref() {
            #[cfg(feature = "sqlite")]
            Some("sqlite") => {
                ensure_sqlite_dir(url)?;
                "sqlite"
            }
            #[cfg(feature = "postgres")]
            Some("postgres" | "postgresql") => "postgres",
            #[cfg(feature = "mysql")]
            Some("mysql" | "mariadb") => "mysql",
            _ => {
                let known: Vec<String> = schemes().iter().map(|s| format!("{s}://")).collect();
                return Err(Error::Config(format!(
                    "unsupported database URL {}; supported schemes: {}",
                    redact_url(url),
                    known.join(", ")
                )));
            }
        };
        let url = if let Some(rest) = url.strip_prefix("mariadb://") {
            format!("mysql://{rest}")
        } else {
            url.to_string()
        };
        let mut opts = ConnectOptions::new(url.clone());
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10));
        #[cfg(feature = "sqlite")]
        if backend == "sqlite" {
            // WAL lets readers run beside the writer; writers queue on the
            // busy timeout instead of failing.
            opts.max_connections(4).map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30))
                    // Images are stored as blobs of hundreds of KB: large
                    // pages mean fewer overflow pages to chain, checksum and
                    // checkpoint (applies to new database files); checkpoint
                    // every 256 MiB of WAL rather than every 64 MiB, which
                    // cut kernel time by 40% in the PNG benchmark.
                    .page_size(65536)
                    .pragma("wal_autocheckpoint", "4096")
            });
        }
        if backend != "sqlite" {
            opts.max_connections(16);
        }
        let db = Database::connect(opts).await.map_err(|e| {
            let mut err = db_error(backend, e);
            if let Error::Backend { message, .. } = &mut err {
                *message = format!("cannot connect to {}: {message}", redact_url(&url));
            }
            err
        })?;
        schema::migrate(&db, backend, &tables).await?;
        let (statement_bytes, chunk_bytes) = if backend == "mysql" {
            statement_sizes(max_allowed_packet(&db).await?)?
        } else {
            (BLOB_STATEMENT_BYTES, CHUNK_BYTES)
        };
        Ok(Self {
            db,
            backend,
            tables,
            statement_bytes,
            chunk_bytes,
        })
    }

    /// The database kind: `sqlite`, `postgres` or `mysql`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Rows in the blobs table (for tests and maintenance).
    pub async fn blob_count(&self) -> Result<u64> {
        self.count(&self.tables.blobs).await
    }

    /// Rows in the images table.
    pub async fn image_count(&self) -> Result<u64> {
        self.count(&self.tables.images).await
    }

    /// Rows in the activity table.
    pub async fn activity_count(&self) -> Result<u64> {
        self.count(&self.tables.activity).await
    }

    async fn count(&self, table: &str) -> Result<u64> {
        let q = Query::select()
            .expr_as(
                Expr::col(sea_orm::sea_query::Asterisk).count(),
                Alias::new("n"),
            )
            .from(Alias::new(table))
            .to_owned();
        let row = self.db.query_one(&q).await.map_err(|e| self.err(e))?;
        let n: i64 = match row {
            Some(r) => r.try_get("", "n").map_err(|e| self.err(e))?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Drop every table of the namespace (tests and `pipeline` maintenance).
    pub async fn drop_tables(&self) -> Result<()> {
        for t in [
            &self.tables.images,
            &self.tables.blobs,
            &self.tables.chunks,
            &self.tables.activity,
            &self.tables.migrations,
        ] {
            let stmt = sea_orm::sea_query::Table::drop()
                .table(Alias::new(t))
                .if_exists()
                .to_owned();
            self.db.execute(&stmt).await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// A ping that answers within [`READY_TIMEOUT`]: while the server is
    /// down, the pool keeps retrying to connect for its whole acquire
    /// timeout, and readiness must not hang that long.
    async fn ping(&self) -> Result<()> {
        match tokio::time::timeout(READY_TIMEOUT, self.db.ping()).await {
            Ok(r) => r.map_err(|e| self.err(e)),
            Err(_) => Err(Error::Unavailable(format!(
                "{}: no answer to a ping within {} s",
                self.backend,
                READY_TIMEOUT.as_secs()
            ))),
        }
    }

    fn err(&self, e: sea_orm::DbErr) -> Error {
        db_error(self.backend, e)
    }

    async fn begin(&self) -> Result<sea_orm::DatabaseTransaction> {
        let options = TransactionOptions {
            sqlite_transaction_mode: (self.db.get_database_backend() == DatabaseBackend::Sqlite)
                .then_some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        self.db
            .begin_with_options(options)
            .await
            .map_err(|e| self.err(e))
    }

    async fn existing<C: ConnectionTrait>(
        &self,
        conn: &C,
        table: &str,
        key: &str,
        values: Vec<String>,
    ) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in values.chunks(ROWS_PER_STATEMENT) {
            let q = Query::select()
                .column(Alias::new(key))
                .from(Alias::new(table))
                .and_where(Expr::col(Alias::new(key)).is_in(chunk.iter().cloned()))
                .to_owned();
            for row in conn.query_all(&q).await.map_err(|e| self.err(e))? {
                found.insert(row.try_get::<String>("", key).map_err(|e| self.err(e))?);
            }
        }
        Ok(found)
    }

    async fn insert_blobs<C: ConnectionTrait>(
        &self,
        conn: &C,
        blobs: Vec<(String, &Blob)>,
    ) -> Result<()> {
        let now = now_ms();
        let mut start = 0;
        while start < blobs.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < blobs.len()
                && (end == start
                    || (bytes + blobs[end].1.data.len() <= self.statement_bytes
                        && end - start < ROWS_PER_STATEMENT))
            {
                bytes += blobs[end].1.data.len();
                end += 1;
            }
            let mut insert = Query::insert();
            insert
                .into_table(Alias::new(&self.tables.blobs))
                .columns(["sha256", "media_type", "size", "data", "created_at"].map(Alias::new));
            for (key, blob) in &blobs[start..end] {
                insert
                    .values([
                        key.clone().into(),
                        blob.content_type.clone().into(),
                        (blob.data.len() as i64).into(),
                        blob.data.to_vec().into(),
                        now.into(),
                    ])
                    .map_err(|e| Error::backend(self.backend, e.to_string(), false))?;
            }
            insert.on_conflict(
                OnConflict::column(Alias::new("sha256"))
                    .do_nothing_on([Alias::new("sha256")])
                    .to_owned(),
            );
            conn.execute(&insert).await.map_err(|e| self.err(e))?;
            start = end;
        }
        Ok(())
    }

    async fn insert_images<C: ConnectionTrait>(
        &self,
        conn: &C,
        records: &[Keyed<'_>],
    ) -> Result<()> {
        let now = now_ms();
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            let mut insert = Query::insert();
            insert.into_table(Alias::new(&self.tables.images)).columns(
                [
                    "job_id",
                    "tenant",
                    "state",
                    "spec",
                    "original_format",
                    "original_content_type",
                    "original_width",
                    "original_height",
                    "original_size",
                    "original_sha256",
                    "result_format",
                    "result_content_type",
                    "result_width",
                    "result_height",
                    "result_size",
                    "result_sha256",
                    "original_blob",
                    "result_blob",
                    "error_code",
                    "error",
                    "worker",
                    "decode_ms",
                    "transform_ms",
                    "encode_ms",
                    "submitted_at",
                    "finished_at",
                    "archived_at",
                ]
                .map(Alias::new),
            );
            for (r, original_key, result_key) in chunk {
                // A reference of a job with no media info (a failed job)
                // still records the type and size it points to.
                let media =
                    |m: &Option<MediaInfo>, b: &Option<Blob>| -> [sea_orm::sea_query::Expr; 6] {
                        let r = b
                            .as_ref()
                            .and_then(|b| pipeline_core::BlobRef::of_blob(b).ok().flatten());
                        [
                            m.as_ref().map(|m| m.format.clone()).into(),
                            m.as_ref()
                                .map(|m| m.content_type.clone())
                                .or_else(|| r.as_ref().map(|r| r.content_type.clone()))
                                .into(),
                            m.as_ref().map(|m| i64::from(m.width)).into(),
                            m.as_ref().map(|m| i64::from(m.height)).into(),
                            m.as_ref()
                                .map(|m| m.size as i64)
                                .or_else(|| r.as_ref().map(|r| r.size as i64))
                                .into(),
                            m.as_ref()
                                .map(|m| m.sha256.clone())
                                .or_else(|| r.as_ref().map(|r| r.key.clone()))
                                .into(),
                        ]
                    };
                let mut row: Vec<sea_orm::sea_query::Expr> = vec![
                    r.job_id.to_string().into(),
                    r.tenant.clone().into(),
                    r.state.as_str().into(),
                    r.spec.clone().into(),
                ];
                row.extend(media(&r.info.original, &r.original));
                row.extend(media(&r.info.result, &r.result));
                row.extend([
                    original_key.clone().into(),
                    result_key.clone().into(),
                    r.error.as_ref().map(|e| e.code.clone()).into(),
                    r.error.as_ref().map(|e| e.message.clone()).into(),
                    r.info.worker.clone().into(),
                    r.info.decode_ms.into(),
                    r.info.transform_ms.into(),
                    r.info.encode_ms.into(),
                    r.submitted_at_ms.into(),
                    r.finished_at_ms.into(),
                    now.into(),
                ]);
                insert
                    .values(row)
                    .map_err(|e| Error::backend(self.backend, e.to_string(), false))?;
            }
            insert.on_conflict(
                OnConflict::column(Alias::new("job_id"))
                    .do_nothing_on([Alias::new("job_id")])
                    .to_owned(),
            );
            conn.execute(&insert).await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn record_of(&self, row: &QueryResult) -> Result<ImageRecord> {
        let get_s = |c: &str| row.try_get::<String>("", c).map_err(|e| self.err(e));
        let get_os = |c: &str| {
            row.try_get::<Option<String>>("", c)
                .map_err(|e| self.err(e))
        };
        let get_i = |c: &str| row.try_get::<i64>("", c).map_err(|e| self.err(e));
        let get_oi = |c: &str| row.try_get::<Option<i64>>("", c).map_err(|e| self.err(e));
        let media = |side: &str| -> Result<Option<MediaInfo>> {
            let Some(format) = get_os(&format!("{side}_format"))? else {
                return Ok(None);
            };
            Ok(Some(MediaInfo {
                format,
                content_type: get_os(&format!("{side}_content_type"))?.unwrap_or_default(),
                width: get_oi(&format!("{side}_width"))?.unwrap_or_default() as u32,
                height: get_oi(&format!("{side}_height"))?.unwrap_or_default() as u32,
                size: get_oi(&format!("{side}_size"))?.unwrap_or_default() as u64,
                sha256: get_os(&format!("{side}_sha256"))?.unwrap_or_default(),
            }))
        };
        let job_id = get_s("job_id")?;
        let state = get_s("state")?;
        let error = match (get_os("error_code")?, get_os("error")?) {
            (None, None) => None,
            (code, message) => Some(JobFailure {
                code: code.unwrap_or_default(),
                message: message.unwrap_or_default(),
            }),
        };
        Ok(ImageRecord {
            job_id: Uuid::parse_str(&job_id).map_err(|e| {
                Error::backend(
                    self.backend,
                    format!("bad job id {job_id:?} in the archive: {e}"),
                    false,
                )
            })?,
            tenant: get_s("tenant")?,
            state: JobState::parse(&state).ok_or_else(|| {
                Error::backend(
                    self.backend,
                    format!("bad state {state:?} in the archive"),
                    false,
                )
            })?,
            spec: get_s("spec")?,
            original: media("original")?,
            result: media("result")?,
            error,
            worker: get_s("worker")?,
            submitted_at_ms: get_i("submitted_at")?,
            finished_at_ms: get_i("finished_at")?,
            archived_at_ms: get_i("archived_at")?,
        })
    }

    async fn save_once(&self, fresh: &[&ArchiveRecord]) -> Result<()> {
        let txn = self.begin().await?;
        let known = self
            .existing(
                &txn,
                &self.tables.images,
                "job_id",
                fresh.iter().map(|r| r.job_id.to_string()).collect(),
            )
            .await?;
        let fresh: Vec<Keyed<'_>> = fresh
            .iter()
            .copied()
            .filter(|r| !known.contains(&r.job_id.to_string()))
            .map(|r| {
                let (original_key, result_key) = r.blob_keys();
                (r, original_key, result_key)
            })
            .collect();
        let mut blobs: HashMap<String, &Blob> = HashMap::new();
        for (r, original_key, result_key) in &fresh {
            for (key, blob) in [(original_key, &r.original), (result_key, &r.result)] {
                // A claim-check reference is kept as the key alone: its bytes
                // are in the blob store (this table, when it is the store).
                if let (Some(k), Some(b)) = (key, blob)
                    && b.content_type != pipeline_core::blob::REF_CONTENT_TYPE
                {
                    blobs.entry(k.clone()).or_insert(b);
                }
            }
        }
        let stored = self
            .existing(
                &txn,
                &self.tables.blobs,
                "sha256",
                blobs.keys().cloned().collect(),
            )
            .await?;
        let (large, small): (Vec<KeyedBlob<'_>>, Vec<KeyedBlob<'_>>) = blobs
            .into_iter()
            .filter(|(k, _)| !stored.contains(k))
            .partition(|(_, b)| b.data.len() > self.chunk_bytes);
        self.insert_blobs(&txn, small).await?;
        let now = now_ms();
        for (key, blob) in large {
            self.insert_chunked(&txn, &key, blob, now).await?;
        }
        self.insert_images(&txn, &fresh).await?;
        txn.commit().await.map_err(|e| self.err(e))
    }
}

#[async_trait]
impl ImageStore for SqlArchive {
    async fn save(&self, records: &[ArchiveRecord]) -> Result<()> {
        // First write wins, also within a batch.
        let mut seen = HashSet::new();
        let fresh: Vec<&ArchiveRecord> = records.iter().filter(|r| seen.insert(r.job_id)).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        // Concurrent writers of the same keys can deadlock on InnoDB's gap
        // locks (or fail serialization on PostgreSQL): the database rolled
        // the transaction back, so running it again is safe.
        retry_conflicts(|| self.save_once(&fresh)).await
    }

    async fn get(&self, job_id: Uuid) -> Result<Option<ImageRecord>> {
        let q = Query::select()
            .expr(Expr::col(sea_orm::sea_query::Asterisk))
            .from(Alias::new(&self.tables.images))
            .and_where(Expr::col(Alias::new("job_id")).eq(job_id.to_string()))
            .to_owned();
        match self.db.query_one(&q).await.map_err(|e| self.err(e))? {
            Some(row) => self.record_of(&row).map(Some),
            None => Ok(None),
        }
    }

    async fn original(&self, job_id: Uuid) -> Result<Option<Blob>> {
        self.blob_of(job_id, "original_blob").await
    }

    async fn result(&self, job_id: Uuid) -> Result<Option<Blob>> {
        self.blob_of(job_id, "result_blob").await
    }

    async fn referenced(&self, keys: &[String]) -> Result<HashSet<String>> {
        self.referenced_keys(keys).await
    }

    async fn list(&self, tenant: &str, cursor: Option<Uuid>, limit: usize) -> Result<Page> {
        let limit = limit.clamp(1, 1000);
        let mut q = Query::select();
        q.expr(Expr::col(sea_orm::sea_query::Asterisk))
            .from(Alias::new(&self.tables.images))
            .and_where(Expr::col(Alias::new("tenant")).eq(tenant))
            .order_by(Alias::new("job_id"), Order::Desc)
            .limit(limit as u64 + 1);
        if let Some(c) = cursor {
            q.and_where(Expr::col(Alias::new("job_id")).lt(c.to_string()));
        }
        let rows = self.db.query_all(&q).await.map_err(|e| self.err(e))?;
        let items = rows
            .iter()
            .map(|r| self.record_of(r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, limit))
    }

    async fn ready(&self) -> Result<()> {
        self.ping().await
    }
}

#[async_trait]
impl ActivityLog for SqlArchive {
    async fn ready(&self) -> Result<()> {
        self.ping().await
    }

    async fn append(&self, entries: &[ActivityEntry]) -> Result<()> {
        let mut seen = HashSet::new();
        let entries: Vec<&ActivityEntry> = entries
            .iter()
            .filter(|e| seen.insert(e.message_id))
            .collect();
        for chunk in entries.chunks(ROWS_PER_STATEMENT) {
            let mut insert = Query::insert();
            insert
                .into_table(Alias::new(&self.tables.activity))
                .columns(
                    [
                        "message_id",
                        "at_ms",
                        "event",
                        "job_id",
                        "tenant",
                        "worker",
                        "size",
                        "duration_ms",
                        "error",
                    ]
                    .map(Alias::new),
                );
            for e in chunk {
                insert
                    .values([
                        e.message_id.to_string().into(),
                        e.at_ms.into(),
                        e.event.clone().into(),
                        e.job_id.to_string().into(),
                        e.tenant.clone().into(),
                        e.worker.clone().into(),
                        (e.size as i64).into(),
                        e.duration_ms.into(),
                        e.error.clone().into(),
                    ])
                    .map_err(|err| Error::backend(self.backend, err.to_string(), false))?;
            }
            insert.on_conflict(
                OnConflict::column(Alias::new("message_id"))
                    .do_nothing_on([Alias::new("message_id")])
                    .to_owned(),
            );
            self.db.execute(&insert).await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    async fn for_job(&self, job_id: Uuid) -> Result<Vec<ActivityEntry>> {
        let q = Query::select()
            .expr(Expr::col(sea_orm::sea_query::Asterisk))
            .from(Alias::new(&self.tables.activity))
            .and_where(Expr::col(Alias::new("job_id")).eq(job_id.to_string()))
            .order_by(Alias::new("at_ms"), Order::Asc)
            .order_by(Alias::new("message_id"), Order::Asc)
            .to_owned();
        let rows = self.db.query_all(&q).await.map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| {
                let s = |c: &str| row.try_get::<String>("", c).map_err(|e| self.err(e));
                let id = s("message_id")?;
                let job = s("job_id")?;
                let parse = |v: &str| {
                    Uuid::parse_str(v).map_err(|e| {
                        Error::backend(self.backend, format!("bad uuid {v:?}: {e}"), false)
                    })
                };
                Ok(ActivityEntry {
                    message_id: parse(&id)?,
                    at_ms: row.try_get("", "at_ms").map_err(|e| self.err(e))?,
                    event: s("event")?,
                    job_id: parse(&job)?,
                    tenant: s("tenant")?,
                    worker: row.try_get("", "worker").map_err(|e| self.err(e))?,
                    size: u64::try_from(row.try_get::<i64>("", "size").map_err(|e| self.err(e))?)
                        .unwrap_or(0),
                    duration_ms: row.try_get("", "duration_ms").map_err(|e| self.err(e))?,
                    error: row.try_get("", "error").map_err(|e| self.err(e))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_fit_the_server_packet() {
        // MariaDB's default: the defaults.
        assert_eq!(
            statement_sizes(16 * 1024 * 1024).unwrap(),
            (BLOB_STATEMENT_BYTES, CHUNK_BYTES)
        );
        // MySQL 5.7's default of 4 MiB: 2 MiB statements and chunks.
        assert_eq!(
            statement_sizes(4 * 1024 * 1024).unwrap(),
            (2 * 1024 * 1024, 2 * 1024 * 1024)
        );
        assert!(statement_sizes(1024).is_err());
    }
}
