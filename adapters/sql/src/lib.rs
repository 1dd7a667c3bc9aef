//! # pipeline-sql
//!
//! The archive of the pipeline on SQL through sea-orm: [`SqlArchive`]
//! implements [`ImageStore`] and [`ActivityLog`] on SQLite, PostgreSQL and
//! MySQL/MariaDB with the same migrations. Tables are prefixed with the
//! namespace (`pipeline_images`, `pipeline_blobs`, `pipeline_activity`).
//! Blobs are content-addressed by SHA-256 and stored once; saves are batched
//! in one transaction and idempotent by job id.

mod activity;
mod blobs;
mod connect;
mod error;
mod images;
mod keys;
mod retention;
mod schema;

pub use blobs::CHUNK_BYTES;

pub use connect::{register, schemes};

use std::fmt;
use std::time::Duration;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

use pipeline_core::{Error, Result};

use crate::error::db_error;
use crate::schema::Tables;

/// Longest a readiness ping may take.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Archive on an SQL database.
#[derive(Clone)]
pub struct SqlArchive {
    pub(crate) db: DatabaseConnection,
    pub(crate) backend: &'static str,
    pub(crate) tables: Tables,
    /// Most blob bytes in one multi-row INSERT.
    pub(crate) statement_bytes: usize,
    /// Blobs above this are stored as chunks of this size.
    pub(crate) chunk_bytes: usize,
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

impl SqlArchive {
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
            &self.tables.keys,
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
    pub(crate) async fn ping(&self) -> Result<()> {
        match tokio::time::timeout(READY_TIMEOUT, self.db.ping()).await {
            Ok(r) => r.map_err(|e| self.err(e)),
            Err(_) => Err(Error::Unavailable(format!(
                "{}: no answer to a ping within {} s",
                self.backend,
                READY_TIMEOUT.as_secs()
            ))),
        }
    }

    pub(crate) fn err(&self, e: sea_orm::DbErr) -> Error {
        db_error(self.backend, e)
    }

    pub(crate) async fn begin(&self) -> Result<sea_orm::DatabaseTransaction> {
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
}
