//! Cold start: every role and two APIs started at once against a fresh
//! namespace (what systemd, compose or a test harness does), ten times per
//! database. Migrations are serialised across processes, so none dies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use pipeline_core::testkit::process::Process;
use pipeline_core::testkit::unique;

const ROUNDS: usize = 10;

/// The processes of one deployment.
const ROLES: [&str; 6] = [
    "api",
    "api",
    "transformer",
    "save2db",
    "save2db",
    "activity",
];

/// Start every role at once on `database` in a fresh namespace; each must
/// print its first line (it started) and stop cleanly on SIGTERM.
fn start_all_at_once(database: &str, ns: &str) {
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = ROLES
        .iter()
        .map(|role| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
            cmd.arg(role)
                .env("PIPELINE_DATABASE_URL", database)
                .env("PIPELINE_NAMESPACE", ns)
                .env("PIPELINE_LISTEN", "127.0.0.1:0")
                .env("PIPELINE_CONCURRENCY", "1")
                .env("RUST_LOG", "warn");
            let tx = tx.clone();
            let name = format!("{role} ({ns})");
            std::thread::spawn(move || {
                let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Process::start(cmd, &name, Duration::from_secs(60))
                }));
                let _ = tx.send((name, started.map(|(p, _)| p).map_err(|_| ())));
            })
        })
        .collect();
    drop(tx);
    let mut running = Vec::new();
    let mut died = Vec::new();
    for (name, started) in rx {
        match started {
            Ok(p) => running.push(p),
            Err(()) => died.push(name),
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    for mut p in running {
        let status = p.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "a process did not stop cleanly"
        );
    }
    assert!(died.is_empty(), "died at start: {died:?}");
}

#[test]
fn sqlite() {
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}?mode=rwc", dir.path().join("cold.db").display());
        start_all_at_once(&db, "pipeline");
    }
}

async fn drop_namespace(url: &str, ns: &str) {
    let archive = pipeline_sql::SqlArchive::connect(url, ns).await.unwrap();
    archive.drop_tables().await.unwrap();
}

fn on_server(url: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..ROUNDS {
        let ns = unique("cold").replace('-', "_");
        start_all_at_once(url, &ns);
        runtime.block_on(drop_namespace(url, &ns));
    }
}

#[test]
fn postgres() {
    on_server(
        &std::env::var("PIPELINE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    );
}

#[test]
fn mariadb() {
    on_server(
        &std::env::var("PIPELINE_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
    );
}
