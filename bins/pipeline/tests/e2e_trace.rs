//! One job followed across processes by its trace: an upload with a W3C
//! `traceparent` goes through separate API, transformer, save2db and
//! activity processes on the real RabbitMQ; the JSON log of each holds a
//! line for the job with the same `trace_id`, and the spans chain (each
//! role's parent is the span that published what it read). The same
//! spans reach an OpenTelemetry collector (one in this test, taking OTLP
//! over HTTP) from each process, with the ids the logs show.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::{api_base, fetch_result, rabbit_env, spawn_to, wait_archived};
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The `job` span of every log line of `path` about `trace`, with the
/// line's message.
fn job_lines(path: &std::path::Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["span"]["trace_id"] == TRACE)
        .map(|v| {
            (
                v["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["span"].clone(),
            )
        })
        .collect()
}

/// The span of the line of `lines` whose message is `message`.
fn span_of(lines: &[(String, Value)], message: &str, what: &str) -> Value {
    lines
        .iter()
        .find(|(m, _)| m == message)
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| panic!("no {message:?} line in the {what} log: {lines:?}"))
}

/// An OTLP/HTTP collector on a free port: its base URL, and every span it
/// got with the service that sent it.
async fn collector() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let keep = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: String| {
            let keep = Arc::clone(&keep);
            async move {
                let v: Value = serde_json::from_str(&body).unwrap();
                for rs in v["resourceSpans"].as_array().unwrap() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|a| a["key"] == "service.name")
                        .map(|a| a["value"]["stringValue"].as_str().unwrap().to_string())
                        .unwrap();
                    for ss in rs["scopeSpans"].as_array().unwrap() {
                        for span in ss["spans"].as_array().unwrap() {
                            keep.lock().unwrap().push((service.clone(), span.clone()));
                        }
                    }
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

/// The one span named `name` sent by `service` in the trace whose `key`
/// is `value` (a redelivery makes a span of its own: the span the logs
/// name is picked by its id).
fn exported(
    spans: &[(String, Value)],
    service: &str,
    name: &str,
    (key, value): (&str, &Value),
) -> Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|(s, v)| {
            s == service && v["name"] == name && v["traceId"] == TRACE && &v[key] == value
        })
        .map(|(_, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name} {key}={value}: {spans:#?}");
    found[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_followed_across_processes_by_its_trace() {
    let dir = tempfile::tempdir().unwrap();
    let ns = pipeline_core::testkit::unique("trace").replace('-', "_");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let mut env = rabbit_env(&ns, &db);
    env.push(("PIPELINE_LOG_JSON", "true".into()));
    env.push(("RUST_LOG", "warn,pipeline_core=debug".into()));
    let (otlp, spans) = collector().await;
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "200".into()));
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let file = |name: &str| std::fs::File::create(log(name)).unwrap();
    let bin = |b: &str| b.to_string();
    let (api, line) = spawn_to(
        &bin(env!("CARGO_BIN_EXE_pipeline-api")),
        "api",
        &env,
        file("api"),
    );
    let base = api_base(&line);
    let (transformer, _) = spawn_to(
        &bin(env!("CARGO_BIN_EXE_pipeline-transformer")),
        "transformer",
        &env,
        file("transformer"),
    );
    let (save2db, _) = spawn_to(
        &bin(env!("CARGO_BIN_EXE_pipeline-save2db")),
        "save2db",
        &env,
        file("save2db"),
    );
    let (activity, _) = spawn_to(
        &bin(env!("CARGO_BIN_EXE_pipeline-activity")),
        "activity",
        &env,
        file("activity"),
    );

    let http = common::client();
    let png = common::image_bytes(image::ImageFormat::Png, 64, 48, 7);
    let r = http
        .post(format!("{base}/v1/images"))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answer = r.headers()["traceresponse"].to_str().unwrap().to_string();
    assert!(answer.starts_with(&format!("00-{TRACE}-")), "{answer}");
    let request_span = answer.split('-').nth(2).unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    let id = body["images"][0]["id"].as_str().unwrap().to_string();
    fetch_result(&http, &base, &id, Duration::from_secs(60)).await;
    wait_archived(&db, &ns, 1, || {}).await;
    // The activity log records the job's three events.
    let archive = pipeline_sql::SqlArchive::connect(&db, &ns).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        use pipeline_core::ActivityLog;
        let events = archive.for_job(id.parse().unwrap()).await.unwrap();
        if events.len() >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "activity: {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stop them all so their logs are complete.
    for mut p in [api, transformer, save2db, activity] {
        let pid = p.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while p.child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "a role did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let api_lines = job_lines(&log("api"));
    let submitted = span_of(&api_lines, "job submitted", "api");
    assert_eq!(submitted["job_id"], id);
    assert_eq!(submitted["role"], "api");
    assert_eq!(submitted["parent_span_id"], request_span.as_str());
    let transformed = span_of(
        &job_lines(&log("transformer")),
        "job transformed",
        "transformer",
    );
    assert_eq!(transformed["job_id"], id);
    assert_eq!(transformed["parent_span_id"], submitted["span_id"]);
    let saved = span_of(&job_lines(&log("save2db")), "record saved", "save2db");
    assert_eq!(saved["job_id"], id);
    assert_eq!(saved["role"], "save2db");
    assert_eq!(saved["parent_span_id"], transformed["span_id"]);
    let stored = span_of(&api_lines, "job result stored", "api");
    assert_eq!(stored["parent_span_id"], transformed["span_id"]);
    let activity_lines = job_lines(&log("activity"));
    let parents: Vec<&Value> = activity_lines
        .iter()
        .filter(|(m, _)| m == "record saved")
        .map(|(_, s)| &s["parent_span_id"])
        .collect();
    assert!(
        parents.contains(&&submitted["span_id"]),
        "{activity_lines:?}"
    );
    assert!(
        parents.contains(&&transformed["span_id"]),
        "{activity_lines:?}"
    );
    eprintln!(
        "trace {TRACE}: request {request_span} -> api {} -> transformer {} -> save2db {}",
        submitted["span_id"], transformed["span_id"], saved["span_id"]
    );

    // The collector got the same spans, each from its process (the last
    // ones flushed as the processes stopped).
    let spans = spans.lock().unwrap().clone();
    let upload = exported(
        &spans,
        "pipeline-api",
        "upload",
        ("spanId", &Value::from(request_span.as_str())),
    );
    assert_eq!(upload["parentSpanId"], CALLER_SPAN);
    assert_eq!(upload["kind"], 2, "server");
    assert!(upload.get("status").is_none(), "{upload}");
    let submit = exported(
        &spans,
        "pipeline-api",
        "submit",
        ("spanId", &submitted["span_id"]),
    );
    assert_eq!(submit["parentSpanId"], request_span.as_str());
    let transform = exported(
        &spans,
        "pipeline-transformer",
        "transform",
        ("spanId", &transformed["span_id"]),
    );
    assert_eq!(transform["parentSpanId"], submitted["span_id"]);
    assert!(transform.get("status").is_none(), "{transform}");
    let archive = exported(
        &spans,
        "pipeline-save2db",
        "archive",
        ("spanId", &saved["span_id"]),
    );
    assert_eq!(archive["parentSpanId"], transformed["span_id"]);
    exported(
        &spans,
        "pipeline-api",
        "result",
        ("parentSpanId", &transformed["span_id"]),
    );
    let activity: Vec<&Value> = spans
        .iter()
        .filter(|(s, v)| s == "pipeline-activity" && v["traceId"] == TRACE)
        .map(|(_, v)| v)
        .collect();
    // Three events (one more span for each redelivery, if any).
    assert!(activity.len() >= 3, "{activity:#?}");
    for parent in [&submitted["span_id"], &transformed["span_id"]] {
        assert!(
            activity.iter().any(|a| &a["parentSpanId"] == parent),
            "no activity span under {parent}: {activity:#?}"
        );
    }
    let nanos = |v: &Value, k: &str| v[k].as_str().unwrap().parse::<u128>().unwrap();
    for (a, b) in [
        (&upload, &submit),
        (&submit, &transform),
        (&transform, &archive),
    ] {
        assert!(
            nanos(a, "startTimeUnixNano") <= nanos(b, "startTimeUnixNano"),
            "{a} starts after {b}"
        );
    }
    for s in [&upload, &submit, &transform, &archive] {
        let job = s["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "pipeline.job_id");
        if s != &upload {
            assert_eq!(job.unwrap()["value"]["stringValue"], id.as_str());
        }
    }
    eprintln!(
        "collector: {} spans of the trace from 4 processes",
        spans.iter().filter(|(_, v)| v["traceId"] == TRACE).count()
    );
}
