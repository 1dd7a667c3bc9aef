//! The broker and result-store suites on a real Redis Cluster: three
//! `redis-server --cluster-enabled yes` nodes (from `PATH`) on free ports,
//! joined with `redis-cli --cluster create`, started once for this test
//! binary and stopped when it exits. Keys of one queue share a hash tag, so
//! the scripts and multi-key commands stay within one slot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pipeline_core::testkit::command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pipeline_redis::{RedisBroker, RedisResultStore};

fn free_port() -> u16 {
    // The cluster bus listens on port + 10000: stay below 55535.
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// The cluster URL, the cluster started on first use.
fn cluster_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let dir = std::env::temp_dir().join(pipeline_core::testkit::unique("redis-cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let servers: Vec<String> = ports
            .iter()
            .map(|p| {
                format!(
                    "redis-server --port {p} --bind 127.0.0.1 --cluster-enabled yes \
                     --cluster-config-file nodes-{p}.conf --dir {dir} --save '' --appendonly no \
                     --logfile {dir}/{p}.log",
                    dir = dir.display()
                )
            })
            .collect();
        pipeline_core::testkit::run_while_this_process_lives(
            &servers,
            &format!("rm -rf {}", dir.display()),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for p in &ports {
            while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
                assert!(Instant::now() < deadline, "redis-server {p} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(nodes.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        command("redis-cli", &create, None);
        for p in &ports {
            loop {
                let info = command(
                    "redis-cli",
                    &["-p", &p.to_string(), "cluster", "info"],
                    None,
                );
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ok on {p}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        format!(
            "redis-cluster://{}?node={}&node={}",
            nodes[0], nodes[1], nodes[2]
        )
    })
}

async fn broker() -> Arc<RedisBroker> {
    let ns = pipeline_core::testkit::unique("cl");
    Arc::new(
        RedisBroker::connect_with(cluster_url(), &ns, None, Duration::from_secs(60))
            .await
            .expect("connect to the cluster"),
    )
}

async fn delete_keys(broker: Arc<RedisBroker>) {
    broker.delete_all().await.expect("delete the test's keys");
}

pipeline_core::broker_conformance!(broker(), cleanup = delete_keys);

mod results {
    use super::*;

    async fn store() -> Arc<RedisResultStore> {
        let ns = pipeline_core::testkit::unique("clres");
        Arc::new(
            RedisResultStore::connect(cluster_url(), &ns)
                .await
                .expect("connect to the cluster"),
        )
    }

    async fn delete_keys(store: Arc<RedisResultStore>) {
        store.delete_all().await.expect("delete the test's keys");
    }

    pipeline_core::results_conformance!(store(), cleanup = delete_keys);
}

/// The queues of one namespace spread over the nodes (the hash tags are
/// per queue, not per namespace), and `delete_all` finds them everywhere.
/// Five tags land on one node of three by chance about once in 80
/// namespaces: a namespace is tried again (at most five) before failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_spread_over_the_nodes() {
    use pipeline_core::Broker;
    let ports: Vec<String> = cluster_url()
        .split(['?', '&'])
        .filter_map(|p| p.rsplit_once(':').map(|(_, port)| port.to_string()))
        .collect();
    assert_eq!(ports.len(), 3, "{}", cluster_url());
    let mut spreads = Vec::new();
    for _ in 0..5 {
        let ns = pipeline_core::testkit::unique("spread");
        let b = RedisBroker::connect_with(cluster_url(), &ns, None, Duration::from_secs(60))
            .await
            .unwrap();
        b.declare(&pipeline_core::services::topology(3))
            .await
            .unwrap();
        let keys_on = |port: &str| -> usize {
            let pattern = format!("{{{ns}*");
            command(
                "redis-cli",
                &["-p", port, "--scan", "--pattern", &pattern],
                None,
            )
            .lines()
            .count()
        };
        let per_node: Vec<usize> = ports.iter().map(|p| keys_on(p)).collect();
        // 4 queues with their dead-letter streams, and the bindings.
        assert_eq!(b.delete_all().await.unwrap(), 9);
        let left: usize = ports.iter().map(|p| keys_on(p)).sum();
        assert_eq!(left, 0);
        if per_node.iter().filter(|n| **n > 0).count() >= 2 {
            return;
        }
        spreads.push(per_node);
    }
    panic!("five namespaces' keys each sat on one node: {spreads:?}");
}
