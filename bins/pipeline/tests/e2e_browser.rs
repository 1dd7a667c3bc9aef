//! The web app in a real Chromium (`tests/browser/app.test.mjs`, driven by
//! playwright-core) against a real `pipeline serve`: 25 files dropped, 2 of
//! them corrupt; progress, results, errors, reload, comparison, the
//! transform builder and the operations view, each saved as a screenshot.
//! Then with API keys (`tests/browser/keys.test.mjs`): the key prompt after
//! a 401, a refused key, uploads, live results and images through signed
//! links, renewed links, a read-only key refused.
//!
//! Needs Node.js, `/usr/bin/chromium` and `tests/browser/node_modules`
//! (`scripts/test-setup.sh` installs them). Without them the test fails and
//! says so: it is never skipped quietly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, image_bytes};
use image::ImageFormat;

/// The whole browser run, at most.
const WITHIN: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// 23 images (the samples and generated ones) and 2 corrupt files.
fn files(dir: &Path) {
    let samples = repo().join("samples");
    let mut n = 0;
    for name in [
        "photo-800x600.jpg",
        "photo-800x600.png",
        "blue.jpg",
        "red.png",
        "green.png",
    ] {
        n += 1;
        std::fs::copy(samples.join(name), dir.join(format!("{n:02}-{name}"))).unwrap();
    }
    while n < 23 {
        n += 1;
        let (format, ext) = if n % 2 == 0 {
            (ImageFormat::Png, "png")
        } else {
            (ImageFormat::Jpeg, "jpg")
        };
        let bytes = image_bytes(format, 320 + 8 * n, 200 + 4 * n, (n * 11) as u8);
        std::fs::write(dir.join(format!("{n:02}-generated.{ext}")), bytes).unwrap();
    }
    let jpeg = std::fs::read(samples.join("photo-800x600.jpg")).unwrap();
    std::fs::write(dir.join("corrupt-1.jpg"), &jpeg[..jpeg.len() / 4]).unwrap();
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(dir.join("corrupt-2.png"), noise).unwrap();
}

/// Run `script` (in `tests/browser`) against `server` with the files of
/// [`files`] and `env`; its screenshots go to `shots` (kept under target/
/// for a person to look at).
fn run_node(script: &str, server: &Server, shots: &str, env: &[(&str, &str)]) {
    let browser_dir = repo().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs /usr/bin/chromium and tests/browser/node_modules: run scripts/test-setup.sh"
    );
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("files");
    std::fs::create_dir_all(&input).unwrap();
    files(&input);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join(shots);
    let _ = std::fs::remove_dir_all(&shots);

    let mut child = Command::new("node")
        .arg(script)
        .current_dir(&browser_dir)
        .env("BASE_URL", &server.base)
        .env("FILES_DIR", &input)
        .env("OUT_DIR", &shots)
        .env("TEST_TIMEOUT_MS", (WITHIN.as_millis() - 10_000).to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node (Node.js 20) must be installed");
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser test {script} ran over {WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the browser test {script} failed: {status}"
    );
    let mut taken: Vec<String> = std::fs::read_dir(&shots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    taken.sort();
    eprintln!("screenshots in {}: {taken:?}", shots.display());
    assert!(taken.len() >= 6, "screenshots: {taken:?}");
}

#[test]
fn the_web_app_works_in_chromium() {
    let server = Server::start(&[]);
    run_node("app.test.mjs", &server, "browser-screenshots", &[]);
}

/// A key of tenant `acme` with `scopes` on the server's database.
fn key(server: &Server, scopes: &str) -> String {
    common::create_key(server, "acme", scopes)
}

#[test]
fn the_web_app_works_with_api_keys_in_chromium() {
    let server = Server::start(&[
        "--auth",
        "keys",
        "--url-secret",
        "0123456789abcdef0123456789abcdef-browser",
    ]);
    let (full, read) = (key(&server, "upload,read"), key(&server, "read"));
    run_node(
        "keys.test.mjs",
        &server,
        "browser-screenshots-keys",
        &[("API_KEY", &full), ("READ_KEY", &read)],
    );
}
