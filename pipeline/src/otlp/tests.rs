use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use pipeline_core::trace::{TraceContext, request_span, span_at};
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// What an in-process collector received: each request's headers and body.
#[derive(Clone, Default)]
struct Collector {
    requests: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    /// Answer 503 to this many requests first.
    refuse: Arc<Mutex<u32>>,
}

impl Collector {
    fn spans(&self) -> Vec<Value> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .flat_map(|(_, body)| {
                body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }
}

async fn take(
    State(c): State<Collector>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    {
        let mut refuse = c.refuse.lock().unwrap();
        if *refuse > 0 {
            *refuse -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "busy".into());
        }
    }
    let value: Value = serde_json::from_str(&body).unwrap();
    c.requests.lock().unwrap().push((headers, value));
    (StatusCode::OK, "{}".into())
}

/// A collector on a free port: its `/v1/traces` URL.
async fn collector(c: Collector) -> String {
    let app = axum::Router::new()
        .route("/v1/traces", post(take))
        .with_state(c);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1/traces")
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "current_thread")]
async fn spans_reach_the_collector_with_their_ids_and_events() {
    let c = Collector::default();
    let url = collector(c.clone()).await;
    let config = OtlpConfig::new(&url, "pipeline-test")
        .unwrap()
        .header("x-api-key", "secret")
        .schedule_delay(Duration::from_secs(3600));
    let (layer, exporter) = start(config).unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    let caller =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let request = caller.child();
    let job = request.child();
    let job_id = uuid::Uuid::now_v7();
    tracing::subscriber::with_default(subscriber, || {
        let r = request_span("upload", &request, Some(&caller));
        r.in_scope(|| {
            let s = span_at("api", "submit", job_id, &job, Some(&request));
            s.in_scope(|| {
                tracing::info!("not an event of the span: below WARN");
                tracing::warn!(attempt = 2u64, "publish slow");
                tracing::error!("publish failed");
            });
        });
        // A span without ids of its own is not exported.
        let _plain = tracing::info_span!("plain").entered();
    });
    assert!(exporter.flush(Duration::from_secs(10)).await);
    let spans = c.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let submit = spans.iter().find(|s| s["name"] == "submit").unwrap();
    let upload = spans.iter().find(|s| s["name"] == "upload").unwrap();
    assert_eq!(upload["traceId"], caller.trace_id());
    assert_eq!(upload["spanId"], request.span_id());
    assert_eq!(upload["parentSpanId"], caller.span_id());
    assert_eq!(upload["kind"], KIND_SERVER);
    assert_eq!(submit["traceId"], caller.trace_id());
    assert_eq!(submit["spanId"], job.span_id());
    assert_eq!(submit["parentSpanId"], request.span_id());
    assert_eq!(submit["kind"], KIND_PRODUCER);
    assert_eq!(
        attr(submit, "pipeline.job_id")["stringValue"],
        job_id.to_string()
    );
    assert_eq!(attr(submit, "pipeline.role")["stringValue"], "api");
    // Times: the request holds the job.
    let t = |s: &Value, k: &str| s[k].as_str().unwrap().parse::<u64>().unwrap();
    assert!(t(upload, "startTimeUnixNano") <= t(submit, "startTimeUnixNano"));
    assert!(t(submit, "endTimeUnixNano") <= t(upload, "endTimeUnixNano"));
    assert!(t(submit, "startTimeUnixNano") > 1_600_000_000_000_000_000);
    // The warning and the error are the job's events; the error fails it.
    let events = submit["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["name"], "publish slow");
    assert_eq!(attr(&events[0], "pipeline.attempt")["intValue"], "2");
    assert_eq!(attr(&events[0], "pipeline.level")["stringValue"], "WARN");
    assert_eq!(submit["status"]["code"], 2);
    assert_eq!(submit["status"]["message"], "publish failed");
    assert!(upload.get("status").is_none());
    // The request: JSON, the configured header, the resource.
    let requests = c.requests.lock().unwrap().clone();
    let (headers, body) = &requests[0];
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-api-key"], "secret");
    let resource = &body["resourceSpans"][0]["resource"];
    assert_eq!(
        attr(resource, "service.name")["stringValue"],
        "pipeline-test"
    );
    assert_eq!(
        attr(resource, "process.pid")["intValue"],
        std::process::id().to_string()
    );
    exporter.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_span_marked_failed_has_an_error_status() {
    let c = Collector::default();
    let url = collector(c.clone()).await;
    let config = OtlpConfig::new(&url, "t")
        .unwrap()
        .schedule_delay(Duration::from_secs(3600));
    let (layer, exporter) = start(config).unwrap();
    let ctx = TraceContext::new_root();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        let span = span_at("transformer", "transform", uuid::Uuid::now_v7(), &ctx, None);
        span.in_scope(|| {
            // Values JSON cannot carry as numbers go as text.
            tracing::warn!(big = u64::MAX, odd = f64::NAN, "odd values");
        });
        pipeline_core::trace::failed(&span, &"corrupt_image: the data is truncated");
    });
    assert!(exporter.flush(Duration::from_secs(10)).await);
    let spans = c.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["status"]["code"], 2);
    assert_eq!(
        spans[0]["status"]["message"],
        "corrupt_image: the data is truncated"
    );
    let event = &spans[0]["events"][0];
    assert_eq!(
        attr(event, "pipeline.big")["stringValue"],
        u64::MAX.to_string()
    );
    assert_eq!(attr(event, "pipeline.odd")["stringValue"], "NaN");
}

#[tokio::test(flavor = "current_thread")]
async fn a_busy_collector_gets_the_batch_again() {
    let c = Collector::default();
    *c.refuse.lock().unwrap() = 1;
    let url = collector(c.clone()).await;
    let config = OtlpConfig::new(&url, "t")
        .unwrap()
        .schedule_delay(Duration::from_secs(3600));
    let (layer, exporter) = start(config).unwrap();
    let ctx = TraceContext::new_root();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        drop(span_at(
            "transformer",
            "transform",
            uuid::Uuid::now_v7(),
            &ctx,
            None,
        ));
    });
    assert!(exporter.flush(Duration::from_secs(10)).await);
    assert_eq!(*c.refuse.lock().unwrap(), 0, "the 503 was answered");
    let spans = c.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["name"], "transform");
    assert_eq!(spans[0]["kind"], KIND_CONSUMER);
    assert!(spans[0].get("parentSpanId").is_none(), "a root span");
}

#[tokio::test(flavor = "current_thread")]
async fn an_unreachable_collector_costs_the_jobs_nothing() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = OtlpConfig::new(&format!("http://127.0.0.1:{port}/v1/traces"), "t")
        .unwrap()
        .timeout(Duration::from_secs(1));
    let (layer, exporter) = start(config).unwrap();
    let ctx = TraceContext::new_root();
    let began = Instant::now();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        for _ in 0..100 {
            drop(span_at(
                "save2db",
                "archive",
                uuid::Uuid::now_v7(),
                &ctx,
                None,
            ));
        }
    });
    // Ending spans does not wait for the collector.
    assert!(began.elapsed() < Duration::from_secs(1));
    // The flush tries three times, then gives the batch up.
    assert!(exporter.flush(Duration::from_secs(20)).await);
    exporter.shutdown(Duration::from_secs(5)).await;
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn the_standard_variables_configure_the_export() {
    // Nothing set: no export.
    assert!(OtlpConfig::from_vars(vars(&[]), "svc").unwrap().is_none());
    let c = OtlpConfig::from_vars(
        vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%3Db,X-Team=ops"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=images"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=ignored",
            ),
            ("OTEL_SERVICE_NAME", "api-eu"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
        ]),
        "svc",
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.endpoint(), "http://collector:4318/v1/traces");
    assert_eq!(
        c.headers,
        vec![
            ("api-key".to_string(), "a=b".to_string()),
            ("x-team".to_string(), "images".to_string())
        ]
    );
    assert_eq!(c.resource()["service.name"], "api-eu");
    assert_eq!(c.resource()["deployment.environment"], "prod");
    assert_eq!(c.timeout, Duration::from_millis(2500));
    assert_eq!(c.schedule_delay, Duration::from_millis(200));
    assert_eq!(c.endpoint_redacted(), "http://collector:4318/v1/traces");
    assert_eq!((c.max_queue, c.max_batch), (100, 100));
    // The traces endpoint is taken as it is; the default service name.
    let c = OtlpConfig::from_vars(
        vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://c.example/otlp/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]),
        "pipeline-api",
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.endpoint(), "https://c.example/otlp/traces");
    assert_eq!(c.resource()["service.name"], "pipeline-api");
    // No delay at all is the shortest one there is; credentials stay out
    // of what is printed.
    let c = OtlpConfig::from_vars(
        vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://user:pw@c.example"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ]),
        "svc",
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.schedule_delay, Duration::from_millis(1));
    assert_eq!(c.endpoint_redacted(), "https://c.example/v1/traces");
    assert!(!format!("{c:?}").contains("pw"));
    // Turned off.
    for off in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let v = vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), off]);
        assert!(
            OtlpConfig::from_vars(v, "svc").unwrap().is_none(),
            "{off:?}"
        );
    }
}

#[test]
fn what_cannot_be_honoured_is_refused() {
    for (bad, says) in [
        (("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), "http/json"),
        (
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            "http/json",
        ),
        (("OTEL_TRACES_EXPORTER", "zipkin"), "zipkin"),
        (("OTEL_EXPORTER_OTLP_HEADERS", "novalue"), "key=value"),
        (("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz"), "escape"),
        (
            ("OTEL_EXPORTER_OTLP_HEADERS", "bad header=v"),
            "header name",
        ),
        (("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"), "milliseconds"),
        (("OTEL_BSP_MAX_QUEUE_SIZE", "0"), "positive"),
        (
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318"),
            "scheme",
        ),
        (
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url"),
            "OTLP endpoint",
        ),
    ] {
        let v = vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), bad]);
        let e = OtlpConfig::from_vars(v, "svc").unwrap_err().to_string();
        assert!(e.contains(says), "{bad:?}: {e}");
    }
}

#[test]
fn a_collector_may_reject_part_of_a_batch() {
    assert_eq!(rejected_spans(&json!({})), 0);
    assert_eq!(
        rejected_spans(&json!({"partialSuccess": {"rejectedSpans": "3"}})),
        3
    );
    assert_eq!(
        rejected_spans(&json!({"partialSuccess": {"rejectedSpans": 2}})),
        2
    );
}

#[test]
fn the_config_does_not_print_header_values() {
    let c = OtlpConfig::new("http://c:4318/v1/traces", "s")
        .unwrap()
        .header("authorization", "Bearer hunter2");
    let printed = format!("{c:?}");
    assert!(printed.contains("authorization"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
}
