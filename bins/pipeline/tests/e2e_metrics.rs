//! `/metrics` of a running `pipeline serve`, scraped after a run: the text
//! parses as Prometheus exposition format, and the counters equal what the
//! test sent (uploads by outcome on both upload routes, bytes, jobs by outcome and code, the
//! transformer's outcomes, archived records, histogram counts, in-flight).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Server, client, image_bytes};
use image::ImageFormat;

const GOOD: usize = 12;
const BAD_SPEC: usize = 2;
const CORRUPT: usize = 3;

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parse the text format strictly: every sample line is
/// `name{label="value",...} number`, and every sample belongs to a family
/// declared by a `# TYPE` line (histograms through `_bucket`, `_sum`,
/// `_count`).
fn parse(text: &str) -> Vec<Sample> {
    let mut families = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            families.insert(name);
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "{line}");
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (n.to_string(), labels)
            }
            None => (head.to_string(), BTreeMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(&name);
        assert!(families.contains(family), "no # TYPE for {name}");
        samples.push((name, labels, value));
    }
    samples
}

/// The value of `name` with exactly `labels` among its labels (summed
/// over the others); 0 when absent.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn scrape(server: &Server) -> Vec<Sample> {
    let r = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        r.headers()
    );
    parse(&r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_was_sent() {
    let server = Server::start(&["--default-transform", "grayscale"]);
    let http = client();
    let mut ids = Vec::new();
    let mut accepted_bytes = 0usize;
    let mut corrupt_bytes = 0usize;
    for n in 0..GOOD + BAD_SPEC {
        let png = image_bytes(ImageFormat::Png, 64, 48, n as u8);
        // A crop outside the image fails in the transformer.
        let url = if n < BAD_SPEC {
            server.url("/v1/images?transform=crop:500x500:0:0")
        } else {
            server.url("/v1/images")
        };
        accepted_bytes += png.len();
        let r = http
            .post(url)
            .header("content-type", "image/png")
            .body(png)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: serde_json::Value = r.json().await.unwrap();
        ids.push(body["images"][0]["id"].as_str().unwrap().to_string());
    }
    // One through the prototype's route: counted as an accepted upload.
    let png = image_bytes(ImageFormat::Png, 64, 48, 200);
    let mut form = b"--X\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    form.extend_from_slice(&png);
    form.extend_from_slice(b"\r\n--X--\r\n");
    accepted_bytes += form.len();
    let r = http
        .post(server.url("/image"))
        .header("content-type", "multipart/form-data; boundary=X")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    ids.push(body["id"].as_str().unwrap().to_string());
    for n in 0..CORRUPT {
        let png = image_bytes(ImageFormat::Png, 64, 48, n as u8);
        let cut = png[..png.len() / 2].to_vec();
        corrupt_bytes += cut.len();
        let r = http
            .post(server.url("/v1/images"))
            .header("content-type", "image/png")
            .body(cut)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
    }
    for id in &ids {
        let r = http
            .get(server.url(&format!("/v1/images/{id}/result?wait=30")))
            .send()
            .await
            .unwrap();
        assert!([200, 422].contains(&r.status().as_u16()));
    }
    // Every record archived (failed jobs are kept too).
    let jobs = (GOOD + BAD_SPEC + 1) as f64;
    let started = Instant::now();
    let samples = loop {
        let s = scrape(&server).await;
        if value(
            &s,
            "pipeline_archived_records_total",
            &[("queue", "save2db")],
        ) >= jobs
        {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "archive did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    let t = ("tenant", "default");
    assert_eq!(
        v("pipeline_uploads_total", &[("outcome", "accepted"), t]),
        jobs
    );
    assert_eq!(
        v("pipeline_uploads_total", &[("outcome", "corrupt_image"), t]),
        CORRUPT as f64
    );
    assert_eq!(
        v("pipeline_upload_bytes_total", &[("outcome", "accepted"), t]),
        accepted_bytes as f64
    );
    assert_eq!(
        v(
            "pipeline_upload_bytes_total",
            &[("outcome", "corrupt_image"), t]
        ),
        corrupt_bytes as f64
    );
    let done = (GOOD + 1) as f64;
    assert_eq!(
        v(
            "pipeline_jobs_total",
            &[("outcome", "done"), ("code", "none")]
        ),
        done
    );
    assert_eq!(
        v(
            "pipeline_jobs_total",
            &[("outcome", "failed"), ("code", "transform_failed")]
        ),
        BAD_SPEC as f64
    );
    assert_eq!(
        v("pipeline_transformer_jobs_total", &[("outcome", "done")]),
        done
    );
    assert_eq!(
        v("pipeline_transformer_jobs_total", &[("outcome", "failed")]),
        BAD_SPEC as f64
    );
    assert_eq!(
        v("pipeline_archived_records_total", &[("queue", "save2db")]),
        jobs
    );
    for histogram in [
        "pipeline_upload_publish_seconds",
        "pipeline_queue_wait_seconds",
        "pipeline_transform_seconds",
        "pipeline_job_seconds",
    ] {
        assert_eq!(v(&format!("{histogram}_count"), &[]), jobs, "{histogram}");
        let inf = v(&format!("{histogram}_bucket"), &[("le", "+Inf")]);
        assert_eq!(inf, jobs, "{histogram} +Inf bucket");
    }
    assert_eq!(v("pipeline_jobs_in_flight", &[]), 0.0);
    assert_eq!(v("pipeline_redeliveries_total", &[]), 0.0);
    // Queue counts, read from the broker at the scrape: the transform and
    // results queues are drained (the archive has every job), nothing is
    // dead.
    for queue in ["transform", "api.results", "save2db", "activity"] {
        let labels = [("queue", queue)];
        for gauge in ["pipeline_queue_messages", "pipeline_queue_dead_letters"] {
            assert!(
                samples.iter().any(
                    |(n, l, _)| n == gauge && l.get("queue").map(String::as_str) == Some(queue)
                ),
                "{gauge} of {queue} missing"
            );
        }
        assert_eq!(v("pipeline_queue_dead_letters", &labels), 0.0, "{queue}");
        assert_eq!(v("pipeline_queue_consumers", &labels), 1.0, "{queue}");
    }
    // The process's own figures, from /proc.
    assert!(v("process_cpu_seconds_total", &[]) > 0.0);
    assert!(v("process_resident_memory_bytes", &[]) > 1e6);
    assert!(v("process_resident_memory_max_bytes", &[]) >= v("process_resident_memory_bytes", &[]));
    assert!(v("process_open_fds", &[]) >= 3.0);
    assert!(v("process_threads", &[]) >= 2.0);
    for queue in ["transform", "api.results"] {
        assert_eq!(
            v("pipeline_queue_messages", &[("queue", queue)]),
            0.0,
            "{queue}"
        );
    }
    eprintln!(
        "{} samples; {jobs} jobs: {done} done (one by POST /image), {BAD_SPEC} failed, {CORRUPT} refused at upload",
        samples.len()
    );
}
