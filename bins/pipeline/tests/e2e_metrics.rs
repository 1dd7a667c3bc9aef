//! `/metrics` of a running `pipeline serve`, scraped after a run: the text
//! parses as Prometheus exposition format, and the counters equal what the
//! test sent (uploads by outcome on both upload routes, bytes, jobs by outcome and code, the
//! transformer's outcomes, archived records, histogram counts, in-flight).
//! Then each role as its own process, on RabbitMQ and on Redis, scraped on
//! its own port (per-operation and codec times, upload to archived, blob
//! store bytes); and a cut broker connection counted as a reconnect.
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

/// `/metrics` of `addr` (host:port), parsed strictly.
async fn scrape_at(addr: &str) -> Vec<Sample> {
    let r = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{addr}");
    parse(&r.text().await.unwrap())
}

/// The role processes over the real RabbitMQ, each scraped on its own
/// port after a run: each counts exactly the jobs it handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_process_counts_its_own_jobs_on_rabbitmq() {
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("metrics").replace('-', "_");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let env = common::procs::rabbit_env(&ns, &db);
    every_role_process_counts_its_own_jobs(env, dir.path(), &db, &ns).await;
}

/// The same over the real Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_process_counts_its_own_jobs_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("metrics").replace('-', "_");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let redis = std::env::var("PIPELINE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let sep = if redis.contains('?') { '&' } else { '?' };
    let env = vec![
        ("PIPELINE_BROKER_URL", format!("{redis}{sep}key_ttl_s=900")),
        ("PIPELINE_DATABASE_URL", db.clone()),
        ("PIPELINE_NAMESPACE", ns.clone()),
        ("PIPELINE_LISTEN", "127.0.0.1:0".to_string()),
        ("PIPELINE_CONCURRENCY", "1".to_string()),
    ];
    every_role_process_counts_its_own_jobs(env, dir.path(), &db, &ns).await;
}

/// A PNG of random pixels (it does not compress).
fn noise_png(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// Originals over this many bytes go through the blob store in the
/// per-role runs.
const INLINE_MAX: usize = 1024;

async fn every_role_process_counts_its_own_jobs(
    mut env: Vec<(&'static str, String)>,
    dir: &std::path::Path,
    db: &str,
    ns: &str,
) {
    use common::procs::{fetch_result, spawn, spawn_api, wait_archived};
    const DONE: usize = 8;
    const FAILED: usize = 2;
    env.push((
        "PIPELINE_BLOB_URL",
        format!("file://{}", dir.join("blobs").display()),
    ));
    env.push(("PIPELINE_INLINE_MAX", INLINE_MAX.to_string()));
    let health = |role: &str| {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut e = env.clone();
        e.push(("PIPELINE_HEALTH_LISTEN", addr.clone()));
        (role.to_string(), addr, e)
    };
    let (_api, base) = spawn_api(&env);
    let mut workers = Vec::new();
    let mut ports = BTreeMap::new();
    for (role, bin) in [
        ("transformer", env!("CARGO_BIN_EXE_pipeline-transformer")),
        ("save2db", env!("CARGO_BIN_EXE_pipeline-save2db")),
        ("activity", env!("CARGO_BIN_EXE_pipeline-activity")),
    ] {
        let (name, addr, e) = health(role);
        let name: &'static str = Box::leak(name.into_boxed_str());
        workers.push(spawn(bin, name, &e).0);
        ports.insert(role, addr);
    }
    let http = client();
    let mut ids = Vec::new();
    let mut large_bytes = 0;
    for n in 0..DONE + FAILED {
        let url = if n < FAILED {
            format!("{base}/v1/images?transform=crop:500x500:0:0")
        } else {
            format!("{base}/v1/images?transform=grayscale")
        };
        // Every other original is over the inline limit.
        let png = if n % 2 == 0 {
            noise_png(64, 48, n as u64)
        } else {
            image_bytes(ImageFormat::Png, 8, 6, n as u8)
        };
        if png.len() > INLINE_MAX {
            large_bytes += png.len();
        }
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
    for id in &ids[FAILED..] {
        fetch_result(&http, &base, id, Duration::from_secs(60)).await;
    }
    wait_archived(db, ns, (DONE + FAILED) as u64, || {}).await;
    // The activity writer counts every event: submitted, transformed and
    // archived for a job done; submitted and failed for a failed one.
    let activity_events = (DONE * 3 + FAILED * 2) as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let activity = loop {
        let s = scrape_at(&ports["activity"]).await;
        if value(
            &s,
            "pipeline_archived_records_total",
            &[("queue", "activity")],
        ) >= activity_events
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the activity log lags");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The API has seen every end once the failed ones are read too.
    for id in &ids[..FAILED] {
        let r = http
            .get(format!("{base}/v1/images/{id}/result?wait=30"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "job {id} failed");
    }
    let api = {
        let r = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        parse(&r.text().await.unwrap())
    };
    let transformer = scrape_at(&ports["transformer"]).await;
    let save2db = scrape_at(&ports["save2db"]).await;
    let (done, failed, jobs) = (DONE as f64, FAILED as f64, (DONE + FAILED) as f64);

    let v = |s: &[Sample], n: &str, l: &[(&str, &str)]| value(s, n, l);
    assert_eq!(
        v(&api, "pipeline_uploads_total", &[("outcome", "accepted")]),
        jobs
    );
    assert_eq!(v(&api, "pipeline_upload_publish_seconds_count", &[]), jobs);
    assert_eq!(v(&api, "pipeline_jobs_total", &[("outcome", "done")]), done);
    assert_eq!(
        v(&api, "pipeline_jobs_total", &[("outcome", "failed")]),
        failed
    );
    assert_eq!(
        v(&api, "pipeline_transformer_jobs_total", &[]),
        0.0,
        "not the API's"
    );
    assert_eq!(
        v(
            &transformer,
            "pipeline_transformer_jobs_total",
            &[("outcome", "done")]
        ),
        done
    );
    assert_eq!(
        v(
            &transformer,
            "pipeline_transformer_jobs_total",
            &[("outcome", "failed")]
        ),
        failed
    );
    assert_eq!(
        v(&transformer, "pipeline_transform_seconds_count", &[]),
        jobs
    );
    assert_eq!(
        v(&transformer, "pipeline_queue_wait_seconds_count", &[]),
        jobs
    );
    assert_eq!(
        v(&transformer, "pipeline_uploads_total", &[]),
        0.0,
        "not the transformer's"
    );
    assert_eq!(
        v(
            &save2db,
            "pipeline_archived_records_total",
            &[("queue", "save2db")]
        ),
        jobs
    );
    assert_eq!(
        v(
            &activity,
            "pipeline_archived_records_total",
            &[("queue", "activity")]
        ),
        activity_events
    );
    // Per operation and codec step: the crops fail in the operation, the
    // grayscale ones are encoded.
    assert_eq!(
        v(
            &transformer,
            "pipeline_transform_operation_seconds_count",
            &[("operation", "grayscale")]
        ),
        done
    );
    assert_eq!(
        v(
            &transformer,
            "pipeline_transform_operation_seconds_count",
            &[("operation", "crop")]
        ),
        0.0
    );
    assert_eq!(
        v(
            &transformer,
            "pipeline_codec_seconds_count",
            &[("step", "decode"), ("format", "png")]
        ),
        jobs
    );
    assert_eq!(
        v(
            &transformer,
            "pipeline_codec_seconds_count",
            &[("step", "encode"), ("format", "png")]
        ),
        done
    );
    // Upload to archived, once per job.
    assert_eq!(v(&save2db, "pipeline_archived_seconds_count", &[]), jobs);
    // The large originals: stored once by the API, fetched once by the
    // transformer.
    assert!(large_bytes > 0);
    assert_eq!(
        v(&api, "pipeline_blob_bytes_total", &[("op", "put")]),
        large_bytes as f64
    );
    assert_eq!(
        v(&transformer, "pipeline_blob_bytes_total", &[("op", "get")]),
        large_bytes as f64
    );
    // Every process reads the same queues from the broker, and its own
    // CPU and memory; none lost its broker connection.
    for (role, s) in [
        ("api", &api),
        ("transformer", &transformer),
        ("save2db", &save2db),
        ("activity", &activity),
    ] {
        assert_eq!(
            v(s, "pipeline_queue_dead_letters", &[("queue", "transform")]),
            0.0,
            "{role}"
        );
        assert!(
            s.iter().any(|(n, l, _)| n == "pipeline_queue_messages"
                && l.get("queue").map(String::as_str) == Some("save2db")),
            "{role}: no queue gauge"
        );
        assert!(v(s, "process_cpu_seconds_total", &[]) > 0.0, "{role}");
        assert_eq!(v(s, "pipeline_broker_reconnects_total", &[]), 0.0, "{role}");
        assert!(
            v(s, "process_resident_memory_max_bytes", &[]) > 1e6,
            "{role}"
        );
        eprintln!(
            "{role}: {:.2} s CPU, peak RSS {:.1} MB",
            v(s, "process_cpu_seconds_total", &[]),
            v(s, "process_resident_memory_max_bytes", &[]) / 1e6
        );
    }
    drop(workers);
}

/// The API's broker connection cut (a proxy between them) and given back:
/// the new connection counts in `pipeline_broker_reconnects_total`, and
/// uploads are accepted again.
async fn a_lost_broker_connection_counts_as_a_reconnect(
    broker: &str,
    upstream: &str,
    url_at: impl Fn(u16) -> String,
) {
    use common::procs::{http_status, spawn_api};
    let proxy = common::proxy::Proxy::start(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("reconnect").replace('-', "_");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let env = vec![
        ("PIPELINE_BROKER_URL", url_at(proxy.port)),
        ("PIPELINE_DATABASE_URL", db),
        ("PIPELINE_NAMESPACE", ns),
        ("PIPELINE_LISTEN", "127.0.0.1:0".to_string()),
    ];
    let (_api, base) = spawn_api(&env);
    let http = client();
    let upload = || async {
        http.post(format!("{base}/v1/images"))
            .header("content-type", "image/png")
            .body(image_bytes(ImageFormat::Png, 8, 6, 1))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(upload().await, 202);
    let reconnects = || async {
        let r = http.get(format!("{base}/metrics")).send().await.unwrap();
        let samples = parse(&r.text().await.unwrap());
        value(
            &samples,
            "pipeline_broker_reconnects_total",
            &[("broker", broker)],
        )
    };
    assert_eq!(reconnects().await, 0.0);
    proxy.cut();
    let addr = base.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_status(&addr, "/readyz") != 503 {
        assert!(Instant::now() < deadline, "the API did not see the cut");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = reconnects().await;
        if n >= 1.0 {
            eprintln!("{broker}: {n} reconnects counted after one cut");
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while upload().await != 202 {
        assert!(Instant::now() < deadline, "uploads are not accepted again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_rabbitmq_connection_counts_as_a_reconnect() {
    a_lost_broker_connection_counts_as_a_reconnect("rabbitmq", "127.0.0.1:5672", |port| {
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f?expires_ms=600000")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_connection_counts_as_a_reconnect() {
    a_lost_broker_connection_counts_as_a_reconnect("redis", "127.0.0.1:6379", |port| {
        format!("redis://127.0.0.1:{port}?key_ttl_s=900")
    })
    .await;
}
