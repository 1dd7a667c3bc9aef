//! Start the real `pipeline` binary for end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

pub mod hosts;
pub mod procs;
pub mod proxy;

/// An HTTP client with a 60 s timeout.
pub fn client() -> reqwest::Client {
    pipeline::cli::http_client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Status and `error.code` of an error answer (which must have a message).
pub async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("error body is JSON");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_string();
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "no message: {body}"
    );
    (status, code)
}

/// A running `pipeline serve` on a free port with its own data folder.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    /// The first line it printed.
    pub first_line: String,
}

impl Server {
    /// Start with `extra` flags; waits for the "listening" line.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(None, extra)
    }

    /// Start on the archive `db` (default: a file in its data folder).
    pub fn start_on(db: Option<&str>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db.map(str::to_string).unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", dir.path().join("e2e.db").display())
        });
        let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--database-url", &db])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pipeline");
        let line = pipeline_core::testkit::process::first_line(
            &mut child,
            "pipeline serve",
            std::time::Duration::from_secs(60),
        );
        let base = line
            .trim()
            .strip_prefix("pipeline listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            // The address, before the auth note.
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        Self {
            child,
            base,
            dir,
            first_line: line,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn database_url(&self) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            self.dir.path().join("e2e.db").display()
        )
    }

    /// SIGTERM and wait for a clean exit (bounded).
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "pipeline exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pipeline did not stop within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `pipeline keys ARGS` on `server`'s database; its standard output.
pub fn keys_command(server: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("keys")
        .args(args)
        .args(["--database-url", &server.database_url()])
        .output()
        .expect("run pipeline keys");
    assert!(
        out.status.success(),
        "pipeline keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// A new key of `tenant` with `scopes` on `server`'s database.
pub fn create_key(server: &Server, tenant: &str, scopes: &str) -> String {
    keys_command(server, &["create", "--tenant", tenant, "--scopes", scopes])
        .trim()
        .to_string()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A white image with a coloured band at the bottom, encoded as `format`.
pub fn image_bytes(format: ImageFormat, w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        if y > h / 2 {
            Rgb([seed, (x % 256) as u8, (y % 256) as u8])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .expect("encode");
    out.into_inner()
}

pub fn mime(format: ImageFormat) -> &'static str {
    format.to_mime_type()
}
