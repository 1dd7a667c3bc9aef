//! The archive database goes away under a running save2db (a TCP proxy in
//! front of the real PostgreSQL / MariaDB is cut: its connections die and
//! new ones are dropped), while uploads go on over the real RabbitMQ.
//! save2db's `/readyz` turns 503, nothing is dead-lettered, and once the
//! database is back every job is archived exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{
    fetch_all, http_status, rabbit_env, spawn, spawn_api, upload_batch, wait_archived,
};
use common::proxy::Proxy;

/// One database at a time: the two tests share the machine's 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn dead_letters(ns: &str) -> u64 {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages"])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(ns) && l.contains(".dead"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn outage_of(db_direct: &str, db_proxied: impl Fn(u16) -> String, upstream: &str) {
    let _serial = SERIAL.lock().await;
    let proxy = Arc::new(Proxy::start(upstream).await);
    let ns = pipeline_core::testkit::unique("outage").replace('-', "_");
    let env = rabbit_env(&ns, db_direct);
    let (_api, base) = spawn_api(&env);
    let (_t, _) = spawn(
        env!("CARGO_BIN_EXE_pipeline-transformer"),
        "transformer",
        &env,
    );
    let (_activity, _) = spawn(env!("CARGO_BIN_EXE_pipeline-activity"), "activity", &env);
    let health = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut save_env = env.clone();
    save_env.retain(|(k, _)| *k != "PIPELINE_DATABASE_URL");
    save_env.push(("PIPELINE_DATABASE_URL", db_proxied(proxy.port)));
    save_env.push(("PIPELINE_HEALTH_LISTEN", health.clone()));
    let (_save, _) = spawn(env!("CARGO_BIN_EXE_pipeline-save2db"), "save2db", &save_env);
    assert_eq!(http_status(&health, "/readyz"), 200, "save2db is ready");

    // The database goes away once half the uploads are in.
    let n = 120;
    let cut = proxy.clone();
    let ids = upload_batch(&base, n, move || cut.cut()).await;
    until(
        "save2db /readyz 503 during the outage",
        Duration::from_secs(30),
        || http_status(&health, "/readyz") == 503,
    )
    .await;
    // Every job still finishes (results do not need the archive)...
    fetch_all(&base, &ids).await;
    // ...while the archive lags behind: the jobs after the cut wait.
    let archive = pipeline_sql::SqlArchive::connect(db_direct, &ns)
        .await
        .unwrap();
    let during = archive.image_count().await.unwrap();
    assert!(
        during < n as u64,
        "all {during} jobs archived: the outage was not seen"
    );
    // Held long enough for several retries with backoff.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(http_status(&health, "/readyz"), 503);
    assert_eq!(dead_letters(&ns), 0, "dead letters during the outage");

    proxy.restore();
    until(
        "save2db /readyz 200 after the outage",
        Duration::from_secs(60),
        || http_status(&health, "/readyz") == 200,
    )
    .await;
    let archive = wait_archived(db_direct, &ns, n as u64, || {}).await;
    for id in &ids {
        assert!(
            pipeline_core::ImageStore::get(&archive, *id)
                .await
                .unwrap()
                .is_some(),
            "job {id} not archived"
        );
    }
    assert_eq!(dead_letters(&ns), 0, "dead letters after the outage");
    eprintln!("{db_direct}: {during} of {n} archived during the outage, all {n} after");
    archive.drop_tables().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_under_save2db_loses_nothing() {
    outage_of(
        "postgres://postgres@127.0.0.1:5432/test",
        |port| format!("postgres://postgres@127.0.0.1:{port}/test"),
        "127.0.0.1:5432",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_outage_under_save2db_loses_nothing() {
    outage_of(
        "mysql://root@127.0.0.1:3306/test",
        |port| format!("mysql://root@127.0.0.1:{port}/test"),
        "127.0.0.1:3306",
    )
    .await;
}
