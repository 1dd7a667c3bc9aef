//! Archiving jobs: blobs stored once by content key, image rows inserted
//! if absent, in one transaction (run again when the database rolled it
//! back on a conflict); reading them back.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Order, Query};
use sea_orm::{ConnectionTrait, QueryResult};
use uuid::Uuid;

use pipeline_core::envelope::now_ms;
use pipeline_core::store::{
    ArchiveRecord, Blob, Deletion, Expiry, ImageRecord, ImageStore, JobFailure, JobState,
    MediaInfo, Page,
};
use pipeline_core::{Backoff, Error, Result};

use crate::SqlArchive;
use crate::connect::ROWS_PER_STATEMENT;
use crate::retention::DELETED;

/// Whether a database error is a transaction conflict worth running again.
/// Whether the database rolled the transaction back because of another
/// one (a deadlock or a serialization failure): running it again is safe.
/// MySQL/MariaDB say "Deadlock found" (1213), PostgreSQL "deadlock
/// detected" (40P01) or "could not serialize" (40001).
fn is_conflict(message: &str) -> bool {
    message.contains("Deadlock found")
        || message.contains("deadlock detected")
        || message.contains("40P01")
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

impl SqlArchive {
    /// Which of `values` the `key` column of `table` holds.
    pub(crate) async fn existing<C: ConnectionTrait>(
        &self,
        conn: &C,
        table: &str,
        key: &str,
        values: Vec<String>,
    ) -> Result<HashSet<String>> {
        self.existing_rows(conn, table, key, values, false).await
    }

    /// [`existing`](Self::existing), share-locking the rows found until the
    /// transaction ends: a blob about to be referenced by a new job cannot
    /// be deleted under it (see `retention.rs`).
    pub(crate) async fn existing_locked<C: ConnectionTrait>(
        &self,
        conn: &C,
        table: &str,
        key: &str,
        values: Vec<String>,
    ) -> Result<HashSet<String>> {
        self.existing_rows(conn, table, key, values, true).await
    }

    async fn existing_rows<C: ConnectionTrait>(
        &self,
        conn: &C,
        table: &str,
        key: &str,
        values: Vec<String>,
        lock: bool,
    ) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in values.chunks(ROWS_PER_STATEMENT) {
            let mut q = Query::select();
            q.column(Alias::new(key))
                .from(Alias::new(table))
                .and_where(Expr::col(Alias::new(key)).is_in(chunk.iter().cloned()));
            if lock {
                q.lock_shared();
            }
            for row in conn.query_all(&q).await.map_err(|e| self.err(e))? {
                found.insert(row.try_get::<String>("", key).map_err(|e| self.err(e))?);
            }
        }
        Ok(found)
    }

    pub(crate) async fn insert_blobs<C: ConnectionTrait>(
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
            .existing_locked(
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
        for r in records {
            r.check()?;
        }
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
            .and_where(Expr::col(Alias::new("state")).ne(DELETED))
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
            .and_where(Expr::col(Alias::new("state")).ne(DELETED))
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

    async fn delete(&self, job_id: Uuid, tenant: &str) -> Result<Deletion> {
        retry_conflicts(|| self.delete_once(job_id, tenant)).await
    }

    async fn expire(&self, finished_before_ms: i64, limit: usize) -> Result<Expiry> {
        retry_conflicts(|| self.expire_once(finished_before_ms, limit)).await
    }
}

#[cfg(test)]
mod conflict_tests {
    use super::is_conflict;

    #[test]
    fn deadlocks_of_every_database_are_conflicts() {
        for m in [
            "Execution Error: error returned from database: deadlock detected at line 1147",
            "1213 (40001): Deadlock found when trying to get lock; try restarting transaction",
            "could not serialize access due to concurrent update",
        ] {
            assert!(is_conflict(m), "{m}");
        }
        assert!(!is_conflict(
            "duplicate key value violates unique constraint"
        ));
    }
}
