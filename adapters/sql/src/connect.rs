//! Connecting: the schemes served, the SQLite folder, the migrations, and
//! statement sizes that fit the server's packet limit.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection};

use pipeline_core::{Error, Result};

use crate::blobs::CHUNK_BYTES;
use crate::error::db_error;
use crate::schema::{self, Tables};
use crate::{SqlArchive, redact_url};

/// Most bytes of blob data sent in one INSERT (below MySQL's default 16 MiB packet).
pub(crate) const BLOB_STATEMENT_BYTES: usize = 8 * 1024 * 1024;
/// Most rows in one multi-row INSERT.
pub(crate) const ROWS_PER_STATEMENT: usize = 200;

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
            opts.max_connections(4)
                .map_sqlx_sqlite_opts(|o| {
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
                })
                // SQLite ends a transaction by itself when the disk fills
                // (SQLITE_FULL); the driver's ROLLBACK then fails and it keeps
                // counting the transaction as open, so the connection would
                // refuse every later BEGIN. A connection given back still in a
                // transaction is closed instead of reused.
                .map_sqlx_sqlite_pool_opts(|o| {
                    o.after_release(|conn, _| {
                        use sea_orm::sqlx::Connection;
                        let healthy = !conn.is_in_transaction();
                        Box::pin(async move { Ok(healthy) })
                    })
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
