//! The archive's blob table as a [`BlobStore`] (the default claim-check
//! store when the archive is SQL), and blobs of any size: a blob above
//! [`CHUNK_BYTES`] is written as chunk rows, one statement each, so no
//! statement exceeds MySQL's packet limit.

use std::collections::HashSet;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query};

use pipeline_core::blob::{BlobMeta, BlobRef, BlobStore, check_key};
use pipeline_core::envelope::now_ms;
use pipeline_core::store::Blob;
use pipeline_core::{Error, Result};

use crate::SqlArchive;

/// Largest blob stored in its row; larger ones are split into chunks of
/// this size. Below MySQL/MariaDB's default 16 MiB packet and InnoDB's limit
/// of a tenth of the redo log per row (96 MiB by default on MariaDB 10.11);
/// on a MySQL server with a smaller `max_allowed_packet`, half the packet.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

impl SqlArchive {
    /// Write a blob larger than the chunk size on `conn` (inside the
    /// caller's transaction): its row, then its chunks.
    pub(crate) async fn insert_chunked<C: ConnectionTrait>(
        &self,
        conn: &C,
        key: &str,
        blob: &Blob,
        now: i64,
    ) -> Result<()> {
        let chunks = blob.data.len().div_ceil(self.chunk_bytes);
        let mut row = Query::insert();
        row.into_table(Alias::new(&self.tables.blobs))
            .columns(
                [
                    "sha256",
                    "media_type",
                    "size",
                    "data",
                    "created_at",
                    "chunks",
                ]
                .map(Alias::new),
            )
            .values([
                key.into(),
                blob.content_type.clone().into(),
                (blob.data.len() as i64).into(),
                Vec::<u8>::new().into(),
                now.into(),
                (chunks as i64).into(),
            ])
            .map_err(|e| Error::backend(self.backend, e.to_string(), false))?
            .on_conflict(
                OnConflict::column(Alias::new("sha256"))
                    .do_nothing_on([Alias::new("sha256")])
                    .to_owned(),
            );
        conn.execute(&row).await.map_err(|e| self.err(e))?;
        for (seq, chunk) in blob.data.chunks(self.chunk_bytes).enumerate() {
            let mut insert = Query::insert();
            insert
                .into_table(Alias::new(&self.tables.chunks))
                .columns(["sha256", "seq", "data"].map(Alias::new))
                .values([key.into(), (seq as i64).into(), chunk.to_vec().into()])
                .map_err(|e| Error::backend(self.backend, e.to_string(), false))?
                .on_conflict(
                    OnConflict::columns([Alias::new("sha256"), Alias::new("seq")])
                        .do_nothing_on([Alias::new("sha256")])
                        .to_owned(),
                );
            conn.execute(&insert).await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Read a stored blob by key, reassembling chunks one query at a time
    /// (memory: the blob plus one chunk).
    pub(crate) async fn read_blob(&self, key: &str) -> Result<Option<Blob>> {
        let q = Query::select()
            .columns(["media_type", "size", "chunks", "data"].map(Alias::new))
            .from(Alias::new(&self.tables.blobs))
            .and_where(Expr::col(Alias::new("sha256")).eq(key))
            .to_owned();
        let Some(row) = self.db.query_one(&q).await.map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let content_type: String = row.try_get("", "media_type").map_err(|e| self.err(e))?;
        let chunks: i32 = row.try_get("", "chunks").map_err(|e| self.err(e))?;
        if chunks == 0 {
            let data: Vec<u8> = row.try_get("", "data").map_err(|e| self.err(e))?;
            return Ok(Some(Blob {
                content_type,
                data: Bytes::from(data),
            }));
        }
        let size: i64 = row.try_get("", "size").map_err(|e| self.err(e))?;
        let mut data = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        for seq in 0..chunks {
            let q = Query::select()
                .column(Alias::new("data"))
                .from(Alias::new(&self.tables.chunks))
                .and_where(Expr::col(Alias::new("sha256")).eq(key))
                .and_where(Expr::col(Alias::new("seq")).eq(seq))
                .to_owned();
            let row = self.db.query_one(&q).await.map_err(|e| self.err(e))?;
            let Some(row) = row else {
                return Err(Error::backend(
                    self.backend,
                    format!("blob {key}: chunk {seq} of {chunks} is missing"),
                    false,
                ));
            };
            let chunk: Vec<u8> = row.try_get("", "data").map_err(|e| self.err(e))?;
            data.extend_from_slice(&chunk);
        }
        if data.len() as i64 != size {
            return Err(Error::backend(
                self.backend,
                format!(
                    "blob {key}: {} bytes in chunks, {size} expected",
                    data.len()
                ),
                false,
            ));
        }
        Ok(Some(Blob {
            content_type,
            data: data.freeze(),
        }))
    }

    /// The blob a job's `column` (`original_blob` or `result_blob`) points
    /// to: the bytes when this database holds them, else the reference
    /// (stored in another blob store by the claim check).
    pub(crate) async fn blob_of(&self, job_id: uuid::Uuid, column: &str) -> Result<Option<Blob>> {
        let side = column.trim_end_matches("_blob");
        let (type_col, size_col) = (format!("{side}_content_type"), format!("{side}_size"));
        let q = Query::select()
            .columns([column, &type_col, &size_col].map(Alias::new))
            .from(Alias::new(&self.tables.images))
            .and_where(Expr::col(Alias::new("job_id")).eq(job_id.to_string()))
            .to_owned();
        let Some(row) = self.db.query_one(&q).await.map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let Some(key) = row
            .try_get::<Option<String>>("", column)
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        if let Some(blob) = self.read_blob(&key).await? {
            return Ok(Some(blob));
        }
        let content_type: Option<String> = row.try_get("", &type_col).map_err(|e| self.err(e))?;
        let size: Option<i64> = row.try_get("", &size_col).map_err(|e| self.err(e))?;
        Ok(Some(
            BlobRef {
                key,
                content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
                size: size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
            }
            .to_blob(),
        ))
    }

    /// Which of `keys` an archived job points to.
    pub(crate) async fn referenced_keys(&self, keys: &[String]) -> Result<HashSet<String>> {
        let mut used = HashSet::new();
        for column in ["original_blob", "result_blob"] {
            used.extend(
                self.existing(&self.db, &self.tables.images, column, keys.to_vec())
                    .await?,
            );
        }
        Ok(used)
    }

    async fn put_once(&self, key: &str, blob: &Blob) -> Result<()> {
        let txn = self.begin().await?;
        let now = now_ms();
        let stored = self
            .existing(&txn, &self.tables.blobs, "sha256", vec![key.to_string()])
            .await?;
        if stored.is_empty() {
            if blob.data.len() > self.chunk_bytes {
                self.insert_chunked(&txn, key, blob, now).await?;
            } else {
                self.insert_blobs(&txn, vec![(key.to_string(), blob)])
                    .await?;
            }
        } else {
            let touch = Query::update()
                .table(Alias::new(&self.tables.blobs))
                .value(Alias::new("created_at"), now)
                .and_where(Expr::col(Alias::new("sha256")).eq(key))
                .to_owned();
            txn.execute(&touch).await.map_err(|e| self.err(e))?;
        }
        txn.commit().await.map_err(|e| self.err(e))
    }
}

#[async_trait]
impl BlobStore for SqlArchive {
    async fn put(&self, key: &str, content_type: &str, data: Bytes) -> Result<()> {
        check_key(key)?;
        let blob = Blob {
            content_type: content_type.to_string(),
            data,
        };
        crate::images::retry_conflicts(|| self.put_once(key, &blob)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Blob>> {
        check_key(key)?;
        self.read_blob(key).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let txn = self.begin().await?;
        for table in [&self.tables.chunks, &self.tables.blobs] {
            let q = Query::delete()
                .from_table(Alias::new(table))
                .and_where(Expr::col(Alias::new("sha256")).eq(key))
                .to_owned();
            txn.execute(&q).await.map_err(|e| self.err(e))?;
        }
        txn.commit().await.map_err(|e| self.err(e))
    }

    async fn delete_if_stored_before(&self, key: &str, before_ms: i64) -> Result<bool> {
        check_key(key)?;
        let txn = self.begin().await?;
        let row = Query::delete()
            .from_table(Alias::new(&self.tables.blobs))
            .and_where(Expr::col(Alias::new("sha256")).eq(key))
            .and_where(Expr::col(Alias::new("created_at")).lt(before_ms))
            .to_owned();
        let removed = txn
            .execute(&row)
            .await
            .map_err(|e| self.err(e))?
            .rows_affected()
            > 0;
        if removed {
            let chunks = Query::delete()
                .from_table(Alias::new(&self.tables.chunks))
                .and_where(Expr::col(Alias::new("sha256")).eq(key))
                .to_owned();
            txn.execute(&chunks).await.map_err(|e| self.err(e))?;
        }
        txn.commit().await.map_err(|e| self.err(e))?;
        Ok(removed)
    }

    async fn stored_before(&self, before_ms: i64) -> Result<Vec<BlobMeta>> {
        let q = Query::select()
            .columns(["sha256", "size", "created_at"].map(Alias::new))
            .from(Alias::new(&self.tables.blobs))
            .and_where(Expr::col(Alias::new("created_at")).lt(before_ms))
            .to_owned();
        let rows = self.db.query_all(&q).await.map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(BlobMeta {
                    key: r.try_get("", "sha256").map_err(|e| self.err(e))?,
                    size: u64::try_from(r.try_get::<i64>("", "size").map_err(|e| self.err(e))?)
                        .unwrap_or(0),
                    stored_at_ms: r.try_get("", "created_at").map_err(|e| self.err(e))?,
                })
            })
            .collect()
    }

    async fn ready(&self) -> Result<()> {
        ImageStore::ready(self).await
    }
}

use pipeline_core::ImageStore;
