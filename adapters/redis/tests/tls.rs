//! `rediss://` against a real Redis with TLS: a private `redis-server
//! --tls-port` with a certificate from a test CA made by `openssl`; the
//! adapter trusts it through the URL's `ca_file` option.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pipeline_core::broker::{QueueSpec, Subscription};
use pipeline_core::results::JobStatus;
use pipeline_core::{Broker, Envelope, ResultStore};
use pipeline_redis::{RedisBroker, RedisResultStore};

fn openssl(dir: &Path, args: &[&str]) {
    pipeline_core::testkit::command("openssl", args, Some(dir));
}

/// A TLS-only Redis on a free port; its CA file.
fn tls_redis(dir: &Path) -> (u16, String) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pipeline-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.display();
    pipeline_core::testkit::run_while_this_process_lives(
        &[format!(
            "redis-server --port 0 --tls-port {port} --bind 127.0.0.1 \
             --tls-cert-file {d}/server.pem --tls-key-file {d}/server.key \
             --tls-ca-cert-file {d}/ca.pem --tls-auth-clients no \
             --save '' --appendonly no --dir {d}"
        )],
        "",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server with TLS did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (port, format!("{d}/ca.pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_results_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca) = tls_redis(dir.path());
    let url = format!("rediss://127.0.0.1:{port}?ca_file={ca}");
    let broker = RedisBroker::connect(&url, "tls")
        .await
        .expect("TLS connect");
    broker
        .declare(&[QueueSpec::new("work", &["job"], 3)])
        .await
        .unwrap();
    let mut s = broker
        .subscribe(Subscription::new("work", 4))
        .await
        .unwrap();
    let sent = Envelope::new("job", uuid::Uuid::now_v7(), "t");
    broker.publish(sent.clone()).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("stalled")
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope().id, sent.id);
    d.ack().await.unwrap();
    broker.ready().await.unwrap();

    let results = RedisResultStore::connect(&url, "tls")
        .await
        .expect("TLS connect");
    let status = JobStatus::pending(uuid::Uuid::now_v7(), "t", "stamp", 1);
    results
        .put(status.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        results.get(status.job_id).await.unwrap().unwrap().job_id,
        status.job_id
    );

    // The server's certificate is not trusted by the system's roots.
    let untrusted = format!("rediss://127.0.0.1:{port}");
    let err = RedisBroker::connect(&untrusted, "tls").await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // A CA file needs TLS; a missing one is named.
    let err = RedisBroker::connect(&format!("redis://127.0.0.1:{port}?ca_file={ca}"), "tls")
        .await
        .unwrap_err();
    assert!(matches!(err, pipeline_core::Error::Config(_)), "{err}");
    let err = RedisBroker::connect(
        &format!("rediss://127.0.0.1:{port}?ca_file=/nope.pem"),
        "tls",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("/nope.pem"), "{err}");
}
