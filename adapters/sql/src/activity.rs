//! The activity log: one row per event, idempotent by message id.

use std::collections::HashSet;

use async_trait::async_trait;
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Order, Query};
use uuid::Uuid;

use pipeline_core::store::{ActivityEntry, ActivityLog};
use pipeline_core::{Error, Result};

use crate::SqlArchive;
use crate::connect::ROWS_PER_STATEMENT;

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
                        "attempt",
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
                        e.attempt.map(i64::from).into(),
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
                    attempt: row
                        .try_get::<Option<i64>>("", "attempt")
                        .map_err(|e| self.err(e))?
                        .and_then(|a| u32::try_from(a).ok()),
                })
            })
            .collect()
    }
}
