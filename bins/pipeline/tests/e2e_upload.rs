//! `pipeline upload` against a real `pipeline serve`: a tree of 1,000
//! images with 10 corrupt ones, interrupted with SIGINT and then killed
//! with SIGKILL part-way, started again until it finishes. Every good
//! file's result is in `--out`, the corrupt ones are reported with their
//! reasons, and the archive holds exactly one job per good file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Server, client, image_bytes};
use image::ImageFormat;
use serde_json::Value;

const GOOD: usize = 990;
const CORRUPT: usize = 10;

/// Writes the tree: images in nested folders (distinct bytes each), a few
/// corrupt JPEGs, and files that are not images. Returns each good file's
/// path under the root with its SHA-256.
fn make_tree(root: &Path) -> HashMap<String, String> {
    let mut good = HashMap::new();
    for i in 0..GOOD {
        let dir = format!("set-{}/part-{}", i % 10, (i / 10) % 3);
        std::fs::create_dir_all(root.join(&dir)).unwrap();
        let (format, ext) = if i % 2 == 0 {
            (ImageFormat::Png, "png")
        } else {
            (ImageFormat::Jpeg, "jpg")
        };
        // Size and band colour vary, so no two files have the same bytes.
        let bytes = image_bytes(format, 24 + (i % 17) as u32, 16 + (i / 17) as u32, i as u8);
        let rel = format!("{dir}/img-{i:04}.{ext}");
        std::fs::write(root.join(&rel), &bytes).unwrap();
        good.insert(rel, pipeline_core::job::sha256_hex(&bytes));
    }
    let jpeg = image_bytes(ImageFormat::Jpeg, 200, 150, 7);
    std::fs::create_dir_all(root.join("broken")).unwrap();
    for i in 0..CORRUPT {
        // A JPEG cut short: its signature says image, its data is not one.
        let cut = &jpeg[..jpeg.len() / 3 + i];
        std::fs::write(root.join(format!("broken/corrupt-{i}.jpg")), cut).unwrap();
    }
    std::fs::write(root.join("README.txt"), "not an image").unwrap();
    std::fs::write(root.join("set-0/notes.jpg"), "named like one, is not").unwrap();
    good
}

fn uploader(base: &str, tree: &Path, out: &Path, json: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    cmd.args(["upload", "--url", base, "--transform", "grayscale"])
        .args(["--concurrency", "8", "--result-timeout", "120"])
        .arg("--out")
        .arg(out)
        .arg(tree)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if json {
        cmd.arg("--json");
    }
    cmd.spawn().expect("spawn pipeline upload")
}

/// Reads the uploader's progress lines until `files` are finished, then
/// sends `signal`; returns its exit status (bounded waits).
fn interrupt_after(mut child: Child, files: usize, signal: &str) -> ExitStatus {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                panic!("no progress to {files} files ({e})");
            }
        };
        let done = line
            .strip_prefix("progress: ")
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.parse::<usize>().ok());
        if done.is_some_and(|n| n >= files) {
            eprintln!("interrupting at: {line}");
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_bounded(&mut child, Duration::from_secs(60))
}

fn wait_bounded(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pipeline upload did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every job of the archive (all pages), once the archive writer stored
/// `at_least` of them (bounded).
async fn archive(base: &str, at_least: usize) -> Vec<Value> {
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut items = Vec::new();
        let mut cursor = String::new();
        loop {
            let url = format!("{base}/v1/images?limit=500&cursor={cursor}");
            let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => break,
            }
        }
        if items.len() >= at_least || Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_is_uploaded_once_across_interruptions() {
    let server = Server::start(&["--max-in-flight", "64"]);
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    let out = work.path().join("out");
    let good = make_tree(&tree);
    let started = Instant::now();

    let first = interrupt_after(uploader(&server.base, &tree, &out, false), 300, "-INT");
    assert_eq!(first.code(), Some(130), "Ctrl-C exits with 130: {first}");
    let at_first = started.elapsed();
    let second = interrupt_after(uploader(&server.base, &tree, &out, false), 650, "-KILL");
    assert!(!second.success(), "killed: {second}");
    let at_second = started.elapsed();

    let mut last = uploader(&server.base, &tree, &out, true);
    let status = wait_bounded(&mut last, Duration::from_secs(300));
    let summary: Value = serde_json::from_reader(last.stdout.take().unwrap()).unwrap();
    eprintln!(
        "interrupted at {:.1} s and {:.1} s, finished at {:.1} s: {summary}",
        at_first.as_secs_f64(),
        at_second.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "failures exit 1: {status}");
    let done = summary["done"].as_u64().unwrap() + summary["already_done"].as_u64().unwrap();
    assert_eq!(done as usize, GOOD, "{summary}");
    assert!(
        summary["already_done"].as_u64().unwrap() >= 300,
        "the last run redid earlier work: {summary}"
    );
    assert_eq!(summary["remaining"], 0);
    assert_eq!(summary["interrupted"], false);
    let failed = summary["failed"].as_array().unwrap();
    assert_eq!(failed.len(), CORRUPT, "{summary}");
    for f in failed {
        assert!(
            f["path"].as_str().unwrap().starts_with("broken/corrupt-"),
            "{f}"
        );
        assert!(!f["code"].as_str().unwrap().is_empty(), "{f}");
        assert!(!f["message"].as_str().unwrap().is_empty(), "{f}");
    }
    let skipped: Vec<&str> = summary["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");

    // Every good file's result, at its path in the mirrored tree.
    for rel in good.keys() {
        let path: PathBuf = out.join(rel);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let img = image::load_from_memory(&bytes).unwrap();
        assert!(img.width() >= 24 && img.height() >= 16, "{rel}");
    }

    // One archived job per good file: none was sent twice.
    let jobs = archive(&server.base, GOOD).await;
    let mut per_hash: HashMap<&str, usize> = HashMap::new();
    for job in &jobs {
        if let Some(h) = job["original"]["sha256"].as_str() {
            *per_hash.entry(h).or_default() += 1;
        }
    }
    for (rel, hash) in &good {
        assert_eq!(
            per_hash.get(hash.as_str()).copied().unwrap_or(0),
            1,
            "{rel}: jobs in the archive"
        );
    }
    let good_jobs: usize = good.values().map(|h| per_hash[h.as_str()]).sum();
    eprintln!(
        "archive: {} jobs, {good_jobs} of them for the {GOOD} good files",
        jobs.len()
    );
    assert!(jobs.len() <= GOOD + CORRUPT, "{} jobs", jobs.len());
}

/// A server with room for one job at a time answers most uploads 503 with
/// `Retry-After`: the uploader waits and retries until every file is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_is_waited_for_not_failed() {
    let server = Server::start(&["--max-in-flight", "1"]);
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for i in 0..24u32 {
        let bytes = image_bytes(ImageFormat::Png, 40 + i, 30, i as u8);
        std::fs::write(tree.join(format!("{i:02}.png")), bytes).unwrap();
    }
    let out = work.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["upload", "--url", &server.base, "--transform", "grayscale"])
        .args(["--concurrency", "8", "--retries", "100"])
        .arg("--out")
        .arg(&out)
        .arg(&tree)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(120));
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{status}\n{log}");
    let waits = log.lines().filter(|l| l.contains("answered 503")).count();
    eprintln!("{waits} uploads were refused with 503 and retried");
    assert!(
        waits > 0,
        "the server never refused: the test proves nothing\n{log}"
    );
    assert!(log.contains("finished: 24 done"), "{log}");
    for i in 0..24 {
        assert!(out.join(format!("{i:02}.png")).is_file(), "{i:02}.png");
    }
}
