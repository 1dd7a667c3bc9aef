//! A Redis server restarted under the broker and the result store. Each test
//! runs its own `redis-server` (from `PATH`) on a free port in a temporary
//! directory, so the shared server is never stopped; the server is killed
//! when the test ends, passed or failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pipeline_core::broker::{QueueSpec, Subscription};
use pipeline_core::testkit::broker::{ack_and_forward, receive_until};
use pipeline_core::{Broker, Envelope, ResultStore};
use pipeline_redis::{RedisBroker, RedisResultStore};
use uuid::Uuid;

/// A private Redis server; killed on drop.
struct Server {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl Server {
    fn start(persistent: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(pipeline_core::testkit::unique("redis-restart"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            port,
            dir,
            persistent,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.child = Some(cmd.spawn().expect("redis-server must be on PATH"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `SHUTDOWN` (which writes the AOF when persistent) and wait for exit.
    fn shutdown(&mut self) {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .output()
            .expect("redis-cli");
        let mut child = self.child.take().expect("running");
        let status = child.wait().expect("wait for redis-server");
        assert!(
            status.success(),
            "redis-server exited with {status}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Poll `probe` until it gives `want`, within `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, want: bool, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while probe().await != want {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_across_a_restart_of_a_persistent_server() {
    let mut server = Server::start(true);
    let broker = Arc::new(
        RedisBroker::connect_with(&server.url(), "restart", None, Duration::from_secs(2))
            .await
            .unwrap(),
    );
    let results = RedisResultStore::connect(&server.url(), "restart")
        .await
        .unwrap();
    broker
        .declare(&[QueueSpec::new("work", &["job"], 10)])
        .await
        .unwrap();
    let stream = broker
        .subscribe(Subscription::new("work", 10))
        .await
        .unwrap();
    let (consumer, mut rx) = ack_and_forward(stream);
    let (total, before) = (200, 60);
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let publisher = {
        let b = broker.clone();
        tokio::spawn(async move {
            for i in 0..total {
                let env = Envelope::new("job", Uuid::now_v7(), "t");
                // A publish during the outage fails (retryable) or waits
                // for the reconnection; it is retried until it succeeds.
                let started = Instant::now();
                while let Err(e) = b.publish(env.clone()).await {
                    assert!(e.is_retryable(), "{e}");
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "publish never recovered: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                sent_tx.send(env.id).unwrap();
                if i >= before {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    let mut seen = HashSet::new();
    receive_until(
        &mut rx,
        &mut seen,
        Duration::from_secs(30),
        "stalled before the restart",
        |s| s.len() >= before,
    )
    .await;

    server.shutdown();
    assert!(!publisher.is_finished(), "the restart came too late");
    let both_ready = || async { broker.ready().await.is_ok() && results.ready().await.is_ok() };
    let neither_ready = || async { broker.ready().await.is_ok() || results.ready().await.is_ok() };
    until(
        "broker and results not ready",
        Duration::from_secs(10),
        false,
        neither_ready,
    )
    .await;
    server.spawn();
    until(
        "broker and results ready again",
        Duration::from_secs(30),
        true,
        both_ready,
    )
    .await;

    publisher.await.unwrap();
    let mut sent = HashSet::new();
    while let Ok(id) = sent_rx.try_recv() {
        sent.insert(id);
    }
    assert_eq!(sent.len(), total);
    receive_until(
        &mut rx,
        &mut seen,
        Duration::from_secs(30),
        "messages lost across the restart",
        |s| sent.is_subset(s),
    )
    .await;
    consumer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_and_publishers_carry_on_when_the_server_lost_its_data() {
    let mut server = Server::start(false);
    let broker = RedisBroker::connect_with(&server.url(), "wiped", None, Duration::from_secs(2))
        .await
        .unwrap();
    broker
        .declare(&[QueueSpec::new("work", &["job"], 10)])
        .await
        .unwrap();
    let mut stream = broker
        .subscribe(Subscription::new("work", 4))
        .await
        .unwrap();
    let first = Envelope::new("job", Uuid::now_v7(), "t");
    broker.publish(first.clone()).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("stalled")
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope().id, first.id);
    d.ack().await.unwrap();

    // Restart without persistence: streams, groups and bindings are gone.
    server.shutdown();
    server.spawn();
    until("ready again", Duration::from_secs(30), true, || async {
        broker.ready().await.is_ok()
    })
    .await;
    let second = Envelope::new("job", Uuid::now_v7(), "t");
    let started = Instant::now();
    while let Err(e) = broker.publish(second.clone()).await {
        assert!(started.elapsed() < Duration::from_secs(30), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the consumer did not recover its group")
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope().id, second.id);
    d.ack().await.unwrap();
    // The bindings were stored again for other processes.
    let other = RedisBroker::connect_with(&server.url(), "wiped", None, Duration::from_secs(2))
        .await
        .unwrap();
    other
        .publish(Envelope::new("job", Uuid::now_v7(), "t"))
        .await
        .expect("another process routes with the restored bindings");
}
