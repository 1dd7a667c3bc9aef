use pipeline_core::Error;
use sea_orm::DbErr;

/// Map a sea-orm error into the core error, classifying transient failures.
pub(crate) fn db_error(backend: &'static str, e: DbErr) -> Error {
    let message = e.to_string();
    if is_full(&message) {
        return Error::StorageFull { backend, message };
    }
    let retryable = match &e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(_) | DbErr::Query(_) => {
            let m = message.to_ascii_lowercase();
            [
                "database is locked",
                "busy",
                "connection",
                "broken pipe",
                "deadlock",
                "gone away",
                "timed out",
                "pool",
                "shutting down",
                "too many",
                "lost",
                "i/o",
                "io error",
            ]
            .iter()
            .any(|needle| m.contains(needle))
        }
        _ => false,
    };
    Error::backend(backend, message, retryable)
}

/// Whether a database message says it has no room left: SQLite's
/// `SQLITE_FULL`, PostgreSQL's `disk_full` (53100) and out-of-space file
/// errors, MySQL/MariaDB's "table is full" (1114) and errno 28.
fn is_full(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "database or disk is full",
        "no space left on device",
        "could not extend file",
        "disk full",
        "is full",
        "errno: 28",
        "errcode: 28",
        "53100",
        "quota exceeded",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_messages_are_storage_full() {
        for m in [
            "Execution Error: error returned from database: (code: 13) database or disk is full",
            "error returned from database: could not extend file \"base/16384/2619\": No space left on device",
            "error returned from database: 1114 (HY000): The table 'pipeline_images' is full",
            "Error writing file '/tmp/MYfd=42' (Errcode: 28 \"No space left on device\")",
        ] {
            let e = db_error("test", DbErr::Custom(m.into()));
            assert!(matches!(e, Error::StorageFull { .. }), "{m}: {e}");
            assert!(e.is_retryable());
        }
        let e = db_error("test", DbErr::Custom("syntax error near FROM".into()));
        assert!(!matches!(e, Error::StorageFull { .. }), "{e}");
    }

    #[test]
    fn an_exhausted_pool_is_retryable() {
        let e = db_error(
            "test",
            DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout),
        );
        assert!(e.is_retryable(), "{e}");
        assert!(!matches!(e, Error::StorageFull { .. }), "{e}");
    }
}
