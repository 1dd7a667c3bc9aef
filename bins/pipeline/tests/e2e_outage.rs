//! The archive database goes away under a running save2db while uploads go
//! on over the real RabbitMQ: a TCP proxy in front of the real PostgreSQL /
//! MariaDB is cut (its connections die, new ones are dropped), or a
//! PostgreSQL server of the test's own is stopped and started again (the
//! shared server is never restarted).
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
use pipeline_core::testkit::servers::{Kind, Server};

/// One database at a time: the two tests share the machine's 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn dead_letters(ns: &str) -> u64 {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages"])
        .output()
        .expect("rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl list_queues: {out:?}");
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

/// How the database goes away under save2db.
enum Outage {
    /// save2db reaches the database through a proxy that is cut.
    Proxy(Arc<Proxy>),
    /// The test's own PostgreSQL server is stopped and started again.
    Restart(Arc<std::sync::Mutex<Server>>),
}

async fn outage_of(db_direct: &str, db_for_save2db: String, outage: Outage) {
    let _serial = SERIAL.lock().await;
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
    save_env.push(("PIPELINE_DATABASE_URL", db_for_save2db));
    save_env.push(("PIPELINE_HEALTH_LISTEN", health.clone()));
    let (_save, _) = spawn(env!("CARGO_BIN_EXE_pipeline-save2db"), "save2db", &save_env);
    assert_eq!(http_status(&health, "/readyz"), 200, "save2db is ready");

    // The database goes away once half the uploads are in.
    let n = 120;
    let cut: Box<dyn FnOnce() + Send> = match &outage {
        Outage::Proxy(p) => {
            let p = p.clone();
            Box::new(move || p.cut())
        }
        Outage::Restart(server) => {
            let server = server.clone();
            Box::new(move || server.lock().unwrap().stop())
        }
    };
    let ids = upload_batch(&base, n, cut).await;
    until(
        "save2db /readyz 503 during the outage",
        Duration::from_secs(30),
        || http_status(&health, "/readyz") == 503,
    )
    .await;
    // Every job still finishes (results do not need the archive).
    fetch_all(&base, &ids).await;
    // Held long enough for several retries with backoff.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(http_status(&health, "/readyz"), 503);
    assert_eq!(dead_letters(&ns), 0, "dead letters during the outage");

    match &outage {
        Outage::Proxy(p) => p.restore(),
        Outage::Restart(server) => server.lock().unwrap().resume(),
    }
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
    archive.drop_tables().await.unwrap();
}

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_under_save2db_loses_nothing() {
    let proxy = Arc::new(Proxy::start("127.0.0.1:5432").await);
    let url = format!("postgres://postgres@127.0.0.1:{}/test", proxy.port);
    outage_of(POSTGRES, url, Outage::Proxy(proxy)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_outage_under_save2db_loses_nothing() {
    let proxy = Arc::new(Proxy::start("127.0.0.1:3306").await);
    let url = format!("mysql://root@127.0.0.1:{}/test", proxy.port);
    outage_of(MARIADB, url, Outage::Proxy(proxy)).await;
}

/// The server restarted: its sessions are terminated by the server, new
/// connections are refused until it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_save2db_loses_nothing() {
    let server = Server::start(Kind::Postgres, &[]);
    let url = server.url();
    outage_of(
        &url,
        url.clone(),
        Outage::Restart(Arc::new(std::sync::Mutex::new(server))),
    )
    .await;
}
