//! Test support: an S3 endpoint for the test suites. `moto_server` (the
//! S3 protocol as the AWS SDKs' own test suites use it) is started once per
//! test process on a free port, unless `PIPELINE_TEST_S3_ENDPOINT` names
//! one (MinIO, Ceph, AWS; credentials from `AWS_*`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The endpoint URL (`http://127.0.0.1:PORT`), started on first use; fails
/// the test when no S3 server can be had.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Ok(e) = std::env::var("PIPELINE_TEST_S3_ENDPOINT") {
            return e;
        }
        assert!(
            Command::new("sh")
                .args(["-c", "command -v moto_server"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "moto_server not found: pip install 'moto[server]' (see .ci/run) or set PIPELINE_TEST_S3_ENDPOINT"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        pipeline_core::testkit::run_while_this_process_lives(
            &[format!("moto_server -H 127.0.0.1 -p {port}")],
            "",
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        format!("http://127.0.0.1:{port}")
    })
}

/// Create a fresh bucket and return the `s3://` URL of `prefix` in it,
/// with the endpoint and test credentials as URL options.
pub async fn bucket_url(prefix: &str) -> String {
    let endpoint = endpoint();
    let bucket = pipeline_core::testkit::unique("bucket");
    crate::install_crypto_provider();
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("S3 endpoint unreachable");
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
    let key = |k: &str| std::env::var(k).unwrap_or_else(|_| "testing".into());
    format!(
        "s3://{bucket}/{prefix}?endpoint={endpoint}&allow_http=true&region=us-east-1&access_key_id={}&secret_access_key={}",
        key("AWS_ACCESS_KEY_ID"),
        key("AWS_SECRET_ACCESS_KEY")
    )
}
