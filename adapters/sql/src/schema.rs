//! Tables and migrations. Table names carry the namespace, so the schema is
//! built at run time with sea-query, which writes each database's own types.

use sea_orm::sea_query::{Alias, ColumnDef, ExprTrait, Index, Table, TableCreateStatement};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, SqliteTransactionMode, Statement,
    TransactionOptions, TransactionTrait,
};

use pipeline_core::{Error, Result};

use crate::error::db_error;

/// Table names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub images: String,
    pub blobs: String,
    pub chunks: String,
    pub activity: String,
    pub keys: String,
    pub migrations: String,
}

impl Tables {
    pub fn new(namespace: &str) -> Result<Self> {
        let ok = !namespace.is_empty()
            && namespace.len() <= 40
            && namespace.starts_with(|c: char| c.is_ascii_lowercase())
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(Error::Config(format!(
                "namespace {namespace:?} must be 1-40 characters of a-z, 0-9 and '_', starting with a letter"
            )));
        }
        Ok(Self {
            images: format!("{namespace}_images"),
            blobs: format!("{namespace}_blobs"),
            chunks: format!("{namespace}_blob_chunks"),
            activity: format!("{namespace}_activity"),
            keys: format!("{namespace}_api_keys"),
            migrations: format!("{namespace}_migrations"),
        })
    }
}

fn col(name: &str) -> ColumnDef {
    ColumnDef::new(Alias::new(name))
}

/// Bytes of any size the database allows: LONGBLOB on MySQL (BLOB is 64 KiB),
/// bytea on PostgreSQL, BLOB on SQLite.
fn bytes_col(backend: DatabaseBackend, name: &str) -> ColumnDef {
    let mut c = col(name);
    match backend {
        DatabaseBackend::MySql => c.custom(Alias::new("LONGBLOB")),
        DatabaseBackend::Postgres => c.custom(Alias::new("BYTEA")),
        _ => c.blob(),
    };
    c.not_null();
    c
}

fn media_cols(t: &mut TableCreateStatement, side: &str) {
    t.col(col(&format!("{side}_format")).string_len(16).null())
        .col(col(&format!("{side}_content_type")).string_len(100).null())
        .col(col(&format!("{side}_width")).big_integer().null())
        .col(col(&format!("{side}_height")).big_integer().null())
        .col(col(&format!("{side}_size")).big_integer().null())
        .col(col(&format!("{side}_sha256")).string_len(64).null());
}

/// Migration 1: images, blobs, activity.
fn v1(backend: DatabaseBackend, t: &Tables) -> Vec<Statement> {
    let mut images = Table::create();
    images
        .table(Alias::new(&t.images))
        .if_not_exists()
        .col(col("job_id").string_len(36).not_null().primary_key())
        .col(col("tenant").string_len(128).not_null())
        .col(col("state").string_len(16).not_null())
        .col(col("spec").text().not_null());
    media_cols(&mut images, "original");
    media_cols(&mut images, "result");
    images
        .col(col("original_blob").string_len(64).null())
        .col(col("result_blob").string_len(64).null())
        .col(col("error_code").string_len(64).null())
        .col(col("error").text().null())
        .col(col("worker").string_len(255).not_null())
        .col(col("decode_ms").double().not_null())
        .col(col("transform_ms").double().not_null())
        .col(col("encode_ms").double().not_null())
        .col(col("submitted_at").big_integer().not_null())
        .col(col("finished_at").big_integer().not_null())
        .col(col("archived_at").big_integer().not_null());

    let mut blobs = Table::create();
    blobs
        .table(Alias::new(&t.blobs))
        .if_not_exists()
        .col(col("sha256").string_len(64).not_null().primary_key())
        .col(col("media_type").string_len(100).not_null())
        .col(col("size").big_integer().not_null())
        .col(bytes_col(backend, "data"))
        .col(col("created_at").big_integer().not_null());

    let mut activity = Table::create();
    activity
        .table(Alias::new(&t.activity))
        .if_not_exists()
        .col(col("message_id").string_len(36).not_null().primary_key())
        .col(col("at_ms").big_integer().not_null())
        .col(col("event").string_len(64).not_null())
        .col(col("job_id").string_len(36).not_null())
        .col(col("tenant").string_len(128).not_null())
        .col(col("worker").string_len(255).null())
        .col(col("size").big_integer().not_null())
        .col(col("duration_ms").double().null())
        .col(col("error").text().null());

    let by_tenant = Index::create()
        .if_not_exists()
        .name(format!("{}_tenant_job", t.images))
        .table(Alias::new(&t.images))
        .col(Alias::new("tenant"))
        .col(Alias::new("job_id"))
        .to_owned();
    let by_job = Index::create()
        .if_not_exists()
        .name(format!("{}_job", t.activity))
        .table(Alias::new(&t.activity))
        .col(Alias::new("job_id"))
        .to_owned();

    let mut out = vec![
        backend.build(&images),
        backend.build(&blobs),
        backend.build(&activity),
    ];
    // MySQL has no CREATE INDEX IF NOT EXISTS; the migration table makes
    // sure indexes are created once.
    let mut by_tenant = by_tenant;
    let mut by_job = by_job;
    if backend == DatabaseBackend::MySql {
        by_tenant = Index::create()
            .name(format!("{}_tenant_job", t.images))
            .table(Alias::new(&t.images))
            .col(Alias::new("tenant"))
            .col(Alias::new("job_id"))
            .to_owned();
        by_job = Index::create()
            .name(format!("{}_job", t.activity))
            .table(Alias::new(&t.activity))
            .col(Alias::new("job_id"))
            .to_owned();
    }
    out.push(backend.build(&by_tenant));
    out.push(backend.build(&by_job));
    out
}

/// Migration 2: blobs larger than one statement may carry are split into
/// chunk rows (MySQL's packet limit); blobs are listed by age for cleanup.
fn v2(backend: DatabaseBackend, t: &Tables) -> Vec<Statement> {
    let chunks_col = Table::alter()
        .table(Alias::new(&t.blobs))
        .add_column(col("chunks").integer().not_null().default(0))
        .to_owned();
    let mut chunks = Table::create();
    chunks
        .table(Alias::new(&t.chunks))
        .if_not_exists()
        .col(col("sha256").string_len(64).not_null())
        .col(col("seq").integer().not_null())
        .col(bytes_col(backend, "data"))
        .primary_key(
            Index::create()
                .col(Alias::new("sha256"))
                .col(Alias::new("seq")),
        );
    let mut by_age = Index::create();
    by_age
        .name(format!("{}_created", t.blobs))
        .table(Alias::new(&t.blobs))
        .col(Alias::new("created_at"));
    if backend != DatabaseBackend::MySql {
        by_age.if_not_exists();
    }
    let mut out = vec![
        backend.build(&chunks_col),
        backend.build(&chunks),
        backend.build(&by_age.to_owned()),
    ];
    // Cleanup asks which blobs jobs still point to.
    for column in ["original_blob", "result_blob"] {
        let mut by_blob = Index::create();
        by_blob
            .name(format!("{}_{column}", t.images))
            .table(Alias::new(&t.images))
            .col(Alias::new(column));
        if backend != DatabaseBackend::MySql {
            by_blob.if_not_exists();
        }
        out.push(backend.build(&by_blob.to_owned()));
    }
    out
}

/// Migration 3: the delivery attempt of each activity event; jobs by
/// finish time (retention), activity by time.
fn v3(backend: DatabaseBackend, t: &Tables) -> Vec<Statement> {
    let attempt = Table::alter()
        .table(Alias::new(&t.activity))
        .add_column(col("attempt").big_integer().null())
        .to_owned();
    let mut out = vec![backend.build(&attempt)];
    for (table, column) in [(&t.images, "finished_at"), (&t.activity, "at_ms")] {
        let mut index = Index::create();
        index
            .name(format!("{table}_{column}"))
            .table(Alias::new(table.as_str()))
            .col(Alias::new(column));
        if backend != DatabaseBackend::MySql {
            index.if_not_exists();
        }
        out.push(backend.build(&index.to_owned()));
    }
    out
}

/// Migration 4: API keys, stored hashed.
fn v4(backend: DatabaseBackend, t: &Tables) -> Vec<Statement> {
    let mut keys = Table::create();
    keys.table(Alias::new(&t.keys))
        .if_not_exists()
        .col(col("id").string_len(16).not_null().primary_key())
        .col(col("tenant").string_len(128).not_null())
        .col(col("scopes").string_len(64).not_null())
        .col(col("label").string_len(255).not_null())
        .col(col("created_at_ms").big_integer().not_null())
        .col(col("expires_at_ms").big_integer().null())
        .col(col("revoked_at_ms").big_integer().null())
        .col(col("hash").string_len(64).not_null());
    let mut by_tenant = Index::create();
    by_tenant
        .name(format!("{}_tenant", t.keys))
        .table(Alias::new(&t.keys))
        .col(Alias::new("tenant"));
    if backend != DatabaseBackend::MySql {
        by_tenant.if_not_exists();
    }
    vec![backend.build(&keys), backend.build(&by_tenant.to_owned())]
}

/// Apply the migrations not yet recorded in the namespace's migration
/// table, one process at a time: several processes starting together on a
/// fresh namespace would otherwise race on `CREATE TABLE IF NOT EXISTS`
/// (PostgreSQL then fails one with a duplicate `pg_type` key).
///
/// The lock lives as long as one transaction on one connection:
/// PostgreSQL's `pg_advisory_xact_lock` (and the DDL is transactional, so
/// a migration applies whole or not at all), MySQL/MariaDB's `GET_LOCK`
/// (released explicitly; DDL commits by itself there), SQLite's `BEGIN
/// IMMEDIATE` (the database's write lock; others wait on the busy timeout).
pub(crate) async fn migrate(
    db: &DatabaseConnection,
    backend_name: &'static str,
    t: &Tables,
) -> Result<()> {
    let backend = db.get_database_backend();
    let err = |e| db_error(backend_name, e);
    let options = TransactionOptions {
        sqlite_transaction_mode: (backend == DatabaseBackend::Sqlite)
            .then_some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    };
    let txn = db.begin_with_options(options).await.map_err(err)?;
    let lock_name = t.migrations.clone();
    match backend {
        DatabaseBackend::Postgres => {
            let sql = format!("SELECT pg_advisory_xact_lock({})", lock_key(&lock_name));
            txn.execute_raw(Statement::from_string(backend, sql))
                .await
                .map_err(err)?;
        }
        DatabaseBackend::MySql => {
            let sql = format!("SELECT GET_LOCK('{lock_name}', {MIGRATION_LOCK_WAIT_S}) AS got");
            let got: Option<i64> = txn
                .query_one_raw(Statement::from_string(backend, sql))
                .await
                .map_err(err)?
                .and_then(|row| row.try_get("", "got").ok());
            if got != Some(1) {
                return Err(Error::Unavailable(format!(
                    "another process held the migration lock of {lock_name} for {MIGRATION_LOCK_WAIT_S} s"
                )));
            }
        }
        _ => {}
    }
    let applied = apply(&txn, backend, backend_name, t).await;
    if backend == DatabaseBackend::MySql {
        let sql = format!("SELECT RELEASE_LOCK('{lock_name}')");
        if let Err(e) = txn.execute_raw(Statement::from_string(backend, sql)).await {
            tracing::warn!(error = %e, "releasing the migration lock failed");
        }
    }
    match applied {
        Ok(()) => txn.commit().await.map_err(err),
        Err(e) => {
            let _ = txn.rollback().await;
            Err(e)
        }
    }
}

/// Longest wait for another process's migrations (MySQL/MariaDB).
const MIGRATION_LOCK_WAIT_S: u32 = 120;

/// A stable 63-bit key for `name` (FNV-1a), for PostgreSQL's advisory locks.
fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// Create the migration table and apply the missing migrations on `conn`.
async fn apply<C: ConnectionTrait>(
    conn: &C,
    backend: DatabaseBackend,
    backend_name: &'static str,
    t: &Tables,
) -> Result<()> {
    let mut table = Table::create();
    table
        .table(Alias::new(&t.migrations))
        .if_not_exists()
        .col(col("version").big_integer().not_null().primary_key())
        .col(col("name").string_len(255).not_null())
        .col(col("applied_at").big_integer().not_null());
    conn.execute(&table)
        .await
        .map_err(|e| db_error(backend_name, e))?;

    let migrations: [(i64, &str, Vec<Statement>); 4] = [
        (1, "images, blobs, activity", v1(backend, t)),
        (2, "blob chunks, blobs by age", v2(backend, t)),
        (3, "activity attempts, jobs by finish time", v3(backend, t)),
        (4, "API keys", v4(backend, t)),
    ];
    for (version, name, statements) in migrations {
        let q = sea_orm::sea_query::Query::select()
            .column(Alias::new("version"))
            .from(Alias::new(&t.migrations))
            .and_where(sea_orm::sea_query::Expr::col(Alias::new("version")).eq(version))
            .to_owned();
        if conn
            .query_one(&q)
            .await
            .map_err(|e| db_error(backend_name, e))?
            .is_some()
        {
            continue;
        }
        for stmt in statements {
            if let Err(e) = conn.execute_raw(stmt).await {
                let msg = e.to_string();
                // A database upgraded by a version without the lock may
                // hold an index or column already.
                let raced = [
                    "Duplicate key name",
                    "already exists",
                    "Duplicate column",
                    "duplicate column",
                ];
                if raced.iter().any(|m| msg.contains(m)) {
                    continue;
                }
                return Err(db_error(backend_name, e));
            }
        }
        let insert = sea_orm::sea_query::Query::insert()
            .into_table(Alias::new(&t.migrations))
            .columns([
                Alias::new("version"),
                Alias::new("name"),
                Alias::new("applied_at"),
            ])
            .values([
                version.into(),
                name.into(),
                pipeline_core::envelope::now_ms().into(),
            ])
            .map_err(|e| Error::backend(backend_name, e.to_string(), false))?
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(Alias::new("version"))
                    .do_nothing_on([Alias::new("version")])
                    .to_owned(),
            )
            .to_owned();
        conn.execute(&insert)
            .await
            .map_err(|e| db_error(backend_name, e))?;
        tracing::info!(version, name, "applied archive migration");
    }
    Ok(())
}
