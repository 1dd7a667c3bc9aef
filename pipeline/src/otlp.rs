//! OpenTelemetry trace export: the spans of the pipeline's jobs, sent to
//! an OTLP collector over HTTP with the JSON encoding (feature `otlp`).
//!
//! The exported spans are the ones that carry W3C ids of their own
//! ([`pipeline_core::trace`]): an upload request, its jobs' submission,
//! the transform, the stored result and the archive and activity records.
//! They keep the ids the logs and the message headers carry, so a trace
//! seen in a tracing backend is the one the logs name. Warnings and errors
//! logged inside such a span become its events; an error marks it failed.
//!
//! Spans queue in memory (bounded) and leave in batches from a task of
//! their own; a full queue or an unreachable collector drops spans and
//! counts them ([`pipeline_core::telemetry::OTLP_SPANS`]), never slowing
//! a job down.
//!
//! ```no_run
//! # async fn f() -> pipeline::Result<()> {
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//! let config = pipeline::otlp::OtlpConfig::new("http://127.0.0.1:4318/v1/traces", "my-api")?;
//! let (layer, exporter) = pipeline::otlp::start(config)?;
//! tracing_subscriber::registry().with(layer).init();
//! // ... run the pipeline ...
//! exporter.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pipeline_core::telemetry::OTLP_SPANS;
use pipeline_core::{Error, Result};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Where and how spans are sent.
#[derive(Clone)]
pub struct OtlpConfig {
    endpoint: reqwest::Url,
    headers: Vec<(String, String)>,
    resource: BTreeMap<String, String>,
    timeout: Duration,
    schedule_delay: Duration,
    max_batch: usize,
    max_queue: usize,
}

impl fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are often credentials: names only.
        let headers: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint_redacted())
            .field("headers", &headers)
            .field("resource", &self.resource)
            .field("timeout", &self.timeout)
            .field("schedule_delay", &self.schedule_delay)
            .field("max_batch", &self.max_batch)
            .field("max_queue", &self.max_queue)
            .finish()
    }
}

/// The resource attribute holding the process id (an integer).
const PID: &str = "process.pid";
/// Default of `OTEL_EXPORTER_OTLP_TIMEOUT`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `OTEL_BSP_SCHEDULE_DELAY`.
const DEFAULT_DELAY: Duration = Duration::from_secs(5);
/// Default of `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
const DEFAULT_BATCH: usize = 512;
/// Default of `OTEL_BSP_MAX_QUEUE_SIZE`.
const DEFAULT_QUEUE: usize = 2048;

impl OtlpConfig {
    /// Send to `endpoint` (the whole URL, such as
    /// `http://collector:4318/v1/traces`) as the service `service_name`,
    /// with the OpenTelemetry defaults for the rest.
    pub fn new(endpoint: &str, service_name: &str) -> Result<Self> {
        let endpoint = parse_endpoint(endpoint)?;
        let mut resource = BTreeMap::new();
        resource.insert("service.name".to_string(), service_name.to_string());
        resource.insert(
            "service.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        resource.insert(
            "service.instance.id".to_string(),
            uuid::Uuid::now_v7().to_string(),
        );
        resource.insert(PID.to_string(), std::process::id().to_string());
        Ok(Self {
            endpoint,
            headers: Vec::new(),
            resource,
            timeout: DEFAULT_TIMEOUT,
            schedule_delay: DEFAULT_DELAY,
            max_batch: DEFAULT_BATCH,
            max_queue: DEFAULT_QUEUE,
        })
    }

    /// The configuration the standard `OTEL_*` variables describe, or
    /// `None` when they ask for no export (no endpoint set,
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
    /// `default_service` names the service unless `OTEL_SERVICE_NAME` does.
    /// A value this exporter cannot honour (another protocol than
    /// `http/json`, a malformed header list) is an error, not ignored.
    pub fn from_env(default_service: &str) -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok(), default_service)
    }

    fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Self>> {
        let var = |k: &str| {
            var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(Error::Config(format!(
                    "OTEL_TRACES_EXPORTER={other}: this program exports to `otlp` or `none`"
                )));
            }
        }
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(full), _) => full,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(p) = protocol.filter(|p| p != "http/json") {
            return Err(Error::Config(format!(
                "OTLP protocol {p:?}: this program sends OTLP over HTTP as JSON only; set OTEL_EXPORTER_OTLP_PROTOCOL=http/json (collectors take it on port 4318)"
            )));
        }
        let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string());
        let mut config = Self::new(&endpoint, &service)?;
        if let Some(list) = var("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in parse_pairs("OTEL_RESOURCE_ATTRIBUTES", &list)? {
                // OTEL_SERVICE_NAME wins over a service.name given here.
                if k == "service.name" && var("OTEL_SERVICE_NAME").is_some() {
                    continue;
                }
                config.resource.insert(k, v);
            }
        }
        let mut headers = BTreeMap::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(list) = var(name) {
                for (k, v) in parse_pairs(name, &list)? {
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                        Error::Config(format!("{name}: {k:?} is not a header name"))
                    })?;
                    reqwest::header::HeaderValue::from_str(&v).map_err(|_| {
                        Error::Config(format!("{name}: the value of {k:?} is not a header value"))
                    })?;
                    headers.insert(k.to_ascii_lowercase(), v);
                }
            }
        }
        config.headers = headers.into_iter().collect();
        let millis = |name: &str| -> Result<Option<Duration>> {
            var(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| Error::Config(format!("{name}={v}: expected milliseconds")))
                })
                .transpose()
        };
        if let Some(t) =
            millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")?.or(millis("OTEL_EXPORTER_OTLP_TIMEOUT")?)
        {
            config.timeout = t;
        }
        if let Some(d) = millis("OTEL_BSP_SCHEDULE_DELAY")? {
            config = config.schedule_delay(d);
        }
        let count = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| match v.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(Error::Config(format!(
                        "{name}={v}: expected a positive count"
                    ))),
                })
                .transpose()
        };
        if let Some(n) = count("OTEL_BSP_MAX_QUEUE_SIZE")? {
            config.max_queue = n;
        }
        if let Some(n) = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
            config.max_batch = n;
        }
        config.max_batch = config.max_batch.min(config.max_queue);
        Ok(Some(config))
    }

    /// Send batches every `delay` at the latest (`OTEL_BSP_SCHEDULE_DELAY`).
    pub fn schedule_delay(mut self, delay: Duration) -> Self {
        self.schedule_delay = delay.max(Duration::from_millis(1));
        self
    }

    /// Give up one request to the collector after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Add a header to every request (an API key, for example).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The URL the spans are sent to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// [`OtlpConfig::endpoint`] without a user name or password, for logs.
    pub fn endpoint_redacted(&self) -> String {
        let mut url = self.endpoint.clone();
        if !url.username().is_empty() || url.password().is_some() {
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        url.to_string()
    }

    /// The resource attributes every span is sent with.
    pub fn resource(&self) -> &BTreeMap<String, String> {
        &self.resource
    }
}

fn parse_endpoint(endpoint: &str) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| Error::Config(format!("OTLP endpoint {endpoint:?}: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(Error::Config(format!(
            "OTLP endpoint {endpoint:?}: scheme {other:?}, expected http or https"
        ))),
    }
}

/// `k1=v1,k2=v2` with percent-encoded values (the `OTEL_*` list format).
fn parse_pairs(name: &str, list: &str) -> Result<Vec<(String, String)>> {
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("{name}: {item:?} is not key=value")))?;
            let k = percent_decode(k.trim())
                .filter(|k| !k.is_empty())
                .ok_or_else(|| Error::Config(format!("{name}: bad key in {item:?}")))?;
            let v = percent_decode(v.trim())
                .ok_or_else(|| Error::Config(format!("{name}: bad escape in {item:?}")))?;
            Ok((k, v))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Start exporting with `config` (on the current Tokio runtime): the layer
/// to add to the subscriber, and the exporter to shut down last.
pub fn start<S>(config: OtlpConfig) -> Result<(Filtered<OtlpLayer, OtlpFilter, S>, OtlpExporter)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Config("OTLP export needs a Tokio runtime".into()))?;
    let client = crate::cli::http_client_builder()
        .timeout(config.timeout)
        .build()
        .map_err(|e| Error::Config(format!("OTLP client: {e}")))?;
    let (tx, rx) = mpsc::channel(config.max_queue);
    let sender = Sender {
        client,
        body: Body::new(&config.resource),
        config,
        warned: None,
        unreported: 0,
    };
    let task = runtime.spawn(sender.run(rx));
    let layer = OtlpLayer { tx: tx.clone() };
    Ok((layer.with_filter(OtlpFilter), OtlpExporter { tx, task }))
}

/// The exporting task: [`OtlpExporter::shutdown`] sends what is left.
#[derive(Debug)]
pub struct OtlpExporter {
    tx: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpExporter {
    /// Send every span ended so far; `false` if that took over `within`.
    pub async fn flush(&self, within: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        tokio::time::timeout(within, async {
            self.tx.send(Message::Flush(done)).await.is_ok() && wait.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Send every span ended so far (for at most `within`), then stop.
    pub async fn shutdown(self, within: Duration) {
        if !self.flush(within).await {
            tracing::warn!(
                "the OpenTelemetry collector did not take the last spans within {:.0} s",
                within.as_secs_f64()
            );
        }
        self.task.abort();
    }
}

enum Message {
    Span(Box<Value>),
    Flush(oneshot::Sender<()>),
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Span(_) => f.write_str("Span"),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

/// Which spans and events the exporter sees: spans with W3C ids of their
/// own, and warnings and errors (decided once per call site).
#[derive(Debug, Clone, Copy)]
pub struct OtlpFilter;

impl OtlpFilter {
    fn wants(meta: &Metadata<'_>) -> bool {
        if meta.is_span() {
            meta.fields().field("trace_id").is_some() && meta.fields().field("span_id").is_some()
        } else {
            *meta.level() <= Level::WARN
        }
    }
}

impl<S> Filter<S> for OtlpFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        Self::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        // The pipeline's spans are at INFO; events from WARN.
        Some(tracing::level_filters::LevelFilter::INFO)
    }
}

/// The layer that turns the pipeline's spans into OTLP spans (see
/// [`start`]).
#[derive(Debug)]
pub struct OtlpLayer {
    tx: mpsc::Sender<Message>,
}

/// What is known of a span until it ends.
struct Open {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    metadata_name: &'static str,
    start: u64,
    fields: Vec<(String, Value)>,
    events: Vec<Value>,
    error: Option<String>,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Collects a span's or an event's fields as OTLP attribute values.
#[derive(Default)]
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, json!({ "stringValue": value }));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, json!({ "boolValue": value }));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, json!({ "intValue": value.to_string() }));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        // OTLP integers are signed 64-bit: larger ones go as text.
        if i64::try_from(value).is_ok() {
            self.put(field, json!({ "intValue": value.to_string() }));
        } else {
            self.put(field, json!({ "stringValue": value.to_string() }));
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities.
        if value.is_finite() {
            self.put(field, json!({ "doubleValue": value }));
        } else {
            self.put(field, json!({ "stringValue": value.to_string() }));
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, json!({ "stringValue": value.to_string() }));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, json!({ "stringValue": format!("{value:?}") }));
    }
}

/// The message of a span's `error` field, once recorded: the span failed.
fn error_of(fields: &[(String, Value)]) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == "error")
        .and_then(|(_, v)| v["stringValue"].as_str())
        .map(str::to_string)
}

fn take_string(fields: &mut Vec<(String, Value)>, name: &str) -> String {
    match fields.iter().position(|(k, _)| k == name) {
        Some(i) => {
            let (_, v) = fields.remove(i);
            v["stringValue"].as_str().unwrap_or_default().to_string()
        }
        None => String::new(),
    }
}

/// An attribute name: the span's own field names under `pipeline.`.
fn attribute_key(field: &str) -> String {
    if field.contains('.') {
        field.to_string()
    } else {
        format!("pipeline.{field}")
    }
}

fn attributes(fields: Vec<(String, Value)>) -> Vec<Value> {
    fields
        .into_iter()
        .map(|(k, v)| json!({ "key": attribute_key(&k), "value": v }))
        .collect()
}

/// OTLP span kinds.
const KIND_INTERNAL: u8 = 1;
const KIND_SERVER: u8 = 2;
const KIND_PRODUCER: u8 = 4;
const KIND_CONSUMER: u8 = 5;

impl Open {
    fn finish(mut self, end: u64) -> Value {
        let stage = self
            .fields
            .iter()
            .find(|(k, _)| k == "stage")
            .and_then(|(_, v)| v["stringValue"].as_str())
            .map(str::to_string);
        let kind = match (self.metadata_name, stage.as_deref()) {
            ("request", _) => KIND_SERVER,
            ("job", Some("submit")) => KIND_PRODUCER,
            ("job", _) => KIND_CONSUMER,
            _ => KIND_INTERNAL,
        };
        let name = stage.unwrap_or_else(|| self.metadata_name.to_string());
        let mut span = json!({
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "name": name,
            "kind": kind,
            "startTimeUnixNano": self.start.to_string(),
            "endTimeUnixNano": end.max(self.start).to_string(),
            "attributes": attributes(std::mem::take(&mut self.fields)),
        });
        if !self.parent_span_id.is_empty() {
            span["parentSpanId"] = json!(self.parent_span_id);
        }
        if !self.events.is_empty() {
            span["events"] = Value::Array(self.events);
        }
        if let Some(message) = self.error {
            span["status"] = json!({ "code": 2, "message": message });
        }
        span
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let mut fields = fields.0;
        let trace_id = take_string(&mut fields, "trace_id");
        let span_id = take_string(&mut fields, "span_id");
        let parent_span_id = take_string(&mut fields, "parent_span_id");
        if !is_hex(&trace_id, 32) || !is_hex(&span_id, 16) {
            return;
        }
        if let Some(span) = ctx.span(id) {
            let error = error_of(&fields);
            span.extensions_mut().insert(Open {
                trace_id,
                span_id,
                parent_span_id,
                metadata_name: attrs.metadata().name(),
                start: unix_nanos(),
                fields,
                events: Vec::new(),
                error,
            });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        // Formatting a value may log: not while holding the span's lock.
        let mut recorded = Fields::default();
        values.record(&mut recorded);
        if let Some(open) = span.extensions_mut().get_mut::<Open>() {
            let mut fields = Fields(std::mem::take(&mut open.fields));
            for (k, v) in recorded.0 {
                match fields.0.iter_mut().find(|(name, _)| *name == k) {
                    Some(slot) => slot.1 = v,
                    None => fields.0.push((k, v)),
                }
            }
            open.fields = fields.0;
            if let Some(message) = error_of(&open.fields) {
                open.error = Some(message);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let mut spans = scope.filter(|span| span.extensions().get::<Open>().is_some());
        let Some(span) = spans.next() else {
            return;
        };
        // Formatting a value may log: not while holding the span's lock.
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = take_string(&mut fields, "message");
        let level = *event.metadata().level();
        fields.push((
            "level".to_string(),
            json!({ "stringValue": level.as_str() }),
        ));
        let record = json!({
            "timeUnixNano": unix_nanos().to_string(),
            "name": message,
            "attributes": attributes(fields),
        });
        if let Some(open) = span.extensions_mut().get_mut::<Open>() {
            if level == Level::ERROR {
                open.error = Some(message);
            }
            open.events.push(record);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        let value = open.finish(unix_nanos());
        if self.tx.try_send(Message::Span(Box::new(value))).is_err() {
            metrics::counter!(OTLP_SPANS, "outcome" => "dropped").increment(1);
        }
    }
}

/// The fixed part of every request body.
struct Body {
    resource: Value,
}

impl Body {
    fn new(resource: &BTreeMap<String, String>) -> Self {
        let attributes: Vec<Value> = resource
            .iter()
            .map(|(k, v)| match v.parse::<i64>() {
                Ok(n) if k == PID => json!({ "key": k, "value": { "intValue": n.to_string() } }),
                _ => json!({ "key": k, "value": { "stringValue": v } }),
            })
            .collect();
        Self {
            resource: json!({ "attributes": attributes }),
        }
    }

    fn with(&self, spans: Vec<Value>) -> Value {
        json!({
            "resourceSpans": [{
                "resource": self.resource,
                "scopeSpans": [{
                    "scope": { "name": "pipeline", "version": env!("CARGO_PKG_VERSION") },
                    "spans": spans,
                }],
            }],
        })
    }
}

/// Pauses before the second and third tries of a batch.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];
/// At most one warning about failed exports per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

struct Sender {
    client: reqwest::Client,
    config: OtlpConfig,
    body: Body,
    warned: Option<Instant>,
    unreported: u64,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut batch = Vec::with_capacity(self.config.max_batch);
        let mut tick = tokio::time::interval(self.config.schedule_delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Span(span)) => {
                        batch.push(*span);
                        if batch.len() >= self.config.max_batch {
                            self.send(std::mem::take(&mut batch)).await;
                        }
                    }
                    Some(Message::Flush(done)) => {
                        if !batch.is_empty() {
                            self.send(std::mem::take(&mut batch)).await;
                        }
                        let _ = done.send(());
                    }
                    None => {
                        if !batch.is_empty() {
                            self.send(batch).await;
                        }
                        return;
                    }
                },
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.send(std::mem::take(&mut batch)).await;
                    }
                }
            }
        }
    }

    /// Send one batch, trying again after a refusal a collector may
    /// recover from; count what became of its spans.
    async fn send(&mut self, spans: Vec<Value>) {
        let count = spans.len() as u64;
        let body = match serde_json::to_vec(&self.body.with(spans)) {
            Ok(b) => b,
            Err(e) => {
                self.failed(count, &format!("encoding: {e}"));
                return;
            }
        };
        let mut pauses = RETRY_PAUSES.iter();
        loop {
            let mut request = self
                .client
                .post(self.config.endpoint.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            for (k, v) in &self.config.headers {
                request = request.header(k.as_str(), v.as_str());
            }
            let (retry, why) = match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let answer: Value = r.json().await.unwrap_or(Value::Null);
                    let rejected = rejected_spans(&answer).min(count);
                    metrics::counter!(OTLP_SPANS, "outcome" => "exported")
                        .increment(count - rejected);
                    if rejected > 0 {
                        metrics::counter!(OTLP_SPANS, "outcome" => "rejected").increment(rejected);
                        let message = answer["partialSuccess"]["errorMessage"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        self.warn(&format!(
                            "the OpenTelemetry collector rejected {rejected} of {count} spans: {message}"
                        ));
                    }
                    return;
                }
                Ok(r) => {
                    let status = r.status();
                    let retry = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                    let text = r.text().await.unwrap_or_default();
                    let text: String = text.chars().take(200).collect();
                    (retry, format!("{status}: {text}"))
                }
                Err(e) => (e.is_connect() || e.is_timeout(), e.to_string()),
            };
            match pauses.next() {
                Some(pause) if retry => tokio::time::sleep(*pause).await,
                _ => {
                    self.failed(count, &why);
                    return;
                }
            }
        }
    }

    fn failed(&mut self, count: u64, why: &str) {
        metrics::counter!(OTLP_SPANS, "outcome" => "failed").increment(count);
        self.unreported += count;
        let message = format!(
            "{} spans not sent to the OpenTelemetry collector at {}: {why}",
            self.unreported,
            self.config.endpoint_redacted()
        );
        if self.warn(&message) {
            self.unreported = 0;
        }
    }

    /// Log `message`, at most once per [`WARN_EVERY`]; whether it was.
    fn warn(&mut self, message: &str) -> bool {
        if self.warned.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return false;
        }
        self.warned = Some(Instant::now());
        tracing::warn!("{message}");
        true
    }
}

/// `partialSuccess.rejectedSpans` of a collector's answer (an int64, sent
/// as a string in JSON; 0 when absent).
fn rejected_spans(answer: &Value) -> u64 {
    let v = &answer["partialSuccess"]["rejectedSpans"];
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
