use pipeline_core::Error;
use sea_orm::DbErr;

/// Map a sea-orm error into the core error, classifying transient failures.
pub(crate) fn db_error(backend: &'static str, e: DbErr) -> Error {
    let message = e.to_string();
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
