//! Deleting jobs (a tenant's request) and expiring old ones (opt-in
//! retention), releasing the blobs nobody refers to any more.
//!
//! A deleted job's row stays as a mark (state `deleted`, no metadata, no
//! blob keys) so that a late duplicate of its archive message finds it
//! and stores nothing; `expire` removes marks as old as the jobs it removes.
//!
//! Races with a concurrent `save` of a job sharing a blob: `save`
//! share-locks the blob rows it reuses (see `existing_locked`), and a
//! release locks the blob row for update before asking whether a job still
//! refers to it, with locking reads (which see the latest committed rows on
//! InnoDB as on PostgreSQL). Whichever comes first, the blob either stays
//! referenced or is written again by the `save`. SQLite runs one writer at
//! a time.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction};
use uuid::Uuid;

use pipeline_core::Result;
use pipeline_core::envelope::now_ms;
use pipeline_core::store::{Deletion, Expiry};

use crate::SqlArchive;

/// `state` of a deleted job's mark.
pub(crate) const DELETED: &str = "deleted";

/// Text columns cleared in a mark.
const CLEARED_TEXT: [&str; 10] = [
    "original_format",
    "original_content_type",
    "original_sha256",
    "result_format",
    "result_content_type",
    "result_sha256",
    "original_blob",
    "result_blob",
    "error_code",
    "error",
];

/// Number columns cleared in a mark.
const CLEARED_NUMBERS: [&str; 6] = [
    "original_width",
    "original_height",
    "original_size",
    "result_width",
    "result_height",
    "result_size",
];

/// A row's owner, state and blob keys.
struct Row {
    job_id: String,
    tenant: String,
    state: String,
    keys: Vec<String>,
}

impl SqlArchive {
    fn row_of(&self, row: &sea_orm::QueryResult) -> Result<Row> {
        let s = |c: &str| row.try_get::<String>("", c).map_err(|e| self.err(e));
        let k = |c: &str| {
            row.try_get::<Option<String>>("", c)
                .map_err(|e| self.err(e))
        };
        Ok(Row {
            job_id: s("job_id")?,
            tenant: s("tenant")?,
            state: s("state")?,
            keys: [k("original_blob")?, k("result_blob")?]
                .into_iter()
                .flatten()
                .collect(),
        })
    }

    fn row_query() -> sea_orm::sea_query::SelectStatement {
        Query::select()
            .columns(["job_id", "tenant", "state", "original_blob", "result_blob"].map(Alias::new))
            .to_owned()
    }

    pub(crate) async fn delete_once(&self, job_id: Uuid, tenant: &str) -> Result<Deletion> {
        let txn = self.begin().await?;
        let q = Self::row_query()
            .from(Alias::new(&self.tables.images))
            .and_where(Expr::col(Alias::new("job_id")).eq(job_id.to_string()))
            .lock_exclusive()
            .to_owned();
        let row = match txn.query_one(&q).await.map_err(|e| self.err(e))? {
            Some(r) => self.row_of(&r)?,
            None => return self.finish(txn, Deletion::default()).await,
        };
        if row.tenant != tenant {
            return self.finish(txn, Deletion::default()).await;
        }
        if row.state == DELETED {
            return self
                .finish(
                    txn,
                    Deletion {
                        found: true,
                        released: Vec::new(),
                    },
                )
                .await;
        }
        let mut mark = Query::update();
        mark.table(Alias::new(&self.tables.images))
            .value(Alias::new("state"), DELETED)
            .value(Alias::new("spec"), "")
            .value(Alias::new("worker"), "")
            // When it was deleted: `expire` removes marks by this time.
            .value(Alias::new("finished_at"), now_ms())
            .and_where(Expr::col(Alias::new("job_id")).eq(job_id.to_string()));
        for c in CLEARED_TEXT {
            mark.value(Alias::new(c), Option::<String>::None);
        }
        for c in CLEARED_NUMBERS {
            mark.value(Alias::new(c), Option::<i64>::None);
        }
        txn.execute(&mark).await.map_err(|e| self.err(e))?;
        let released = self.release(&txn, row.keys).await?;
        self.finish(
            txn,
            Deletion {
                found: true,
                released,
            },
        )
        .await
    }

    pub(crate) async fn expire_once(&self, before_ms: i64, limit: usize) -> Result<Expiry> {
        let txn = self.begin().await?;
        let q = Self::row_query()
            .from(Alias::new(&self.tables.images))
            .and_where(Expr::col(Alias::new("finished_at")).lt(before_ms))
            .order_by(Alias::new("finished_at"), Order::Asc)
            .limit(limit.max(1) as u64)
            .lock_exclusive()
            .to_owned();
        let rows = txn
            .query_all(&q)
            .await
            .map_err(|e| self.err(e))?
            .iter()
            .map(|r| self.row_of(r))
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            return self.finish(txn, Expiry::default()).await;
        }
        let remove = Query::delete()
            .from_table(Alias::new(&self.tables.images))
            .and_where(Expr::col(Alias::new("job_id")).is_in(rows.iter().map(|r| r.job_id.clone())))
            .to_owned();
        txn.execute(&remove).await.map_err(|e| self.err(e))?;
        let marks = rows.iter().filter(|r| r.state == DELETED).count() as u64;
        let jobs = rows.len() as u64 - marks;
        let keys = rows.into_iter().flat_map(|r| r.keys).collect();
        let released = self.release(&txn, keys).await?;
        self.finish(
            txn,
            Expiry {
                jobs,
                marks,
                released,
            },
        )
        .await
    }

    /// Delete the blobs among `keys` that no job refers to any more (after
    /// the caller removed its own references); all of them are released.
    async fn release(
        &self,
        txn: &DatabaseTransaction,
        mut keys: Vec<String>,
    ) -> Result<Vec<String>> {
        keys.sort();
        keys.dedup();
        let mut released = Vec::new();
        for key in keys {
            let lock = Query::select()
                .column(Alias::new("sha256"))
                .from(Alias::new(&self.tables.blobs))
                .and_where(Expr::col(Alias::new("sha256")).eq(key.as_str()))
                .lock_exclusive()
                .to_owned();
            txn.query_one(&lock).await.map_err(|e| self.err(e))?;
            let used = Query::select()
                .column(Alias::new("job_id"))
                .from(Alias::new(&self.tables.images))
                .cond_where(
                    Expr::col(Alias::new("original_blob"))
                        .eq(key.as_str())
                        .or(Expr::col(Alias::new("result_blob")).eq(key.as_str())),
                )
                .limit(1)
                .lock_shared()
                .to_owned();
            if txn
                .query_one(&used)
                .await
                .map_err(|e| self.err(e))?
                .is_some()
            {
                continue;
            }
            for table in [&self.tables.chunks, &self.tables.blobs] {
                let q = Query::delete()
                    .from_table(Alias::new(table))
                    .and_where(Expr::col(Alias::new("sha256")).eq(key.as_str()))
                    .to_owned();
                txn.execute(&q).await.map_err(|e| self.err(e))?;
            }
            released.push(key);
        }
        Ok(released)
    }

    async fn finish<T>(&self, txn: DatabaseTransaction, value: T) -> Result<T> {
        txn.commit().await.map_err(|e| self.err(e))?;
        Ok(value)
    }
}
