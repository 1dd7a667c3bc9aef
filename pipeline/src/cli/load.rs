//! `pipeline load`: drive a running server over HTTP and report images/s
//! and latency percentiles.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use pipeline_core::Error;

/// Settings of `pipeline load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:4555")]
    pub url: String,
    /// Image to upload.
    #[arg(long)]
    pub file: PathBuf,
    /// Uploads in total.
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// Clients working at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Transform spec (default: the server's).
    #[arg(long)]
    pub transform: Option<String>,
    /// Start at most this many uploads per second in all (paced evenly),
    /// to measure latency below the server's limit; default: as fast as
    /// the clients go.
    #[arg(long)]
    pub rate: Option<f64>,
    /// API key, when the server runs with PIPELINE_AUTH=keys.
    #[arg(long, env = "PIPELINE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Pause after a 503 (the server's in-flight limit): short, growing with
/// the refusals of one client.
const REFUSED_PAUSE: pipeline_core::Backoff =
    pipeline_core::Backoff::new(Duration::from_millis(5), Duration::from_millis(50)).with_jitter();

/// What a load run measured.
#[derive(Debug)]
pub struct LoadReport {
    ok: usize,
    failed: usize,
    rejected: usize,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl LoadReport {
    /// Results per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// One line of figures after `label`.
    pub fn print(&self, label: &str) {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{label}: {} ok, {} failed, {} refused (503) in {:.2} s = {:.1} images/s; upload->result latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.ok,
            self.failed,
            self.rejected,
            self.elapsed.as_secs_f64(),
            self.rate(),
            ms(0.50),
            ms(0.95),
            ms(0.99),
            self.latency.max() as f64 / 1000.0,
        );
    }
}

pub(crate) fn read(path: &Path) -> Result<Bytes, Error> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
}

fn mime_of(data: &[u8]) -> &'static str {
    image::guess_format(data).map_or("application/octet-stream", |f| f.to_mime_type())
}

/// Upload `requests` copies of `data` with `concurrency` clients; each waits
/// for its result (through the result link of the upload's answer, signed
/// when the server authenticates). Latency runs from the start of the
/// upload to the result. `api_key` goes in an `Authorization` header;
/// with `rate`, upload `i` starts no earlier than `i / rate` seconds in.
pub async fn drive(
    url: &str,
    data: Bytes,
    requests: usize,
    concurrency: usize,
    transform: Option<&str>,
    api_key: Option<&str>,
    rate: Option<f64>,
) -> Result<LoadReport, Error> {
    if let Some(r) = rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
        return Err(Error::Config(format!(
            "the rate must be a positive number of uploads per second, not {r}"
        )));
    }
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .map_err(|_| Error::Config("the API key holds characters a header cannot".into()))?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let client = super::http_client_builder()
        .default_headers(headers)
        .pool_max_idle_per_host(concurrency * 2)
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
    let mut post_url = format!("{}/v1/images", url.trim_end_matches('/'));
    if let Some(t) = transform {
        let mut u = reqwest::Url::parse(&post_url)
            .map_err(|e| Error::Config(format!("server URL {url}: {e}")))?;
        u.query_pairs_mut().append_pair("transform", t);
        post_url = u.to_string();
    }
    let mime = mime_of(&data);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, data, post_url, base) = (
            client.clone(),
            next.clone(),
            data.clone(),
            post_url.clone(),
            url.trim_end_matches('/').to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .map_err(|e| Error::Config(e.to_string()))?;
            let (mut ok, mut failed, mut rejected) = (0usize, 0usize, 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                if let Some(rate) = rate {
                    let at = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                }
                let t0 = Instant::now();
                let resp = client
                    .post(&post_url)
                    .header("content-type", mime)
                    .body(data.clone())
                    .send()
                    .await
                    .map_err(|e| Error::Unavailable(format!("upload failed: {e}")))?;
                if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    rejected += 1;
                    // The server is full: back off a little, then take the
                    // same upload again.
                    tokio::time::sleep(REFUSED_PAUSE.delay(rejected as u32)).await;
                    next.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                if resp.status() != reqwest::StatusCode::ACCEPTED {
                    failed += 1;
                    continue;
                }
                let body: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| Error::Unavailable(format!("bad upload answer: {e}")))?;
                let link = body["images"][0]["result_url"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let sep = if link.contains('?') { '&' } else { '?' };
                let result_url = format!("{base}{link}{sep}wait=30");
                loop {
                    let r = client
                        .get(&result_url)
                        .send()
                        .await
                        .map_err(|e| Error::Unavailable(format!("fetch failed: {e}")))?;
                    match r.status().as_u16() {
                        200 => {
                            let bytes = r
                                .bytes()
                                .await
                                .map_err(|e| Error::Unavailable(format!("fetch failed: {e}")))?;
                            if bytes.is_empty() {
                                failed += 1;
                            } else {
                                ok += 1;
                                let _ = hist.record(t0.elapsed().as_micros() as u64);
                            }
                            break;
                        }
                        202 => continue,
                        _ => {
                            failed += 1;
                            break;
                        }
                    }
                }
            }
            Ok::<_, Error>((ok, failed, rejected, hist))
        }));
    }
    let mut report = LoadReport {
        ok: 0,
        failed: 0,
        rejected: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 600_000_000, 3)
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    for t in tasks {
        let (ok, failed, rejected, hist) = t
            .await
            .map_err(|e| Error::Config(format!("client task: {e}")))??;
        report.ok += ok;
        report.failed += failed;
        report.rejected += rejected;
        let _ = report.latency.add(hist);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// `pipeline load`.
pub(crate) async fn load(args: LoadArgs) -> Result<(), Error> {
    let data = read(&args.file)?;
    let report = drive(
        &args.url,
        data,
        args.requests,
        args.concurrency,
        args.transform.as_deref(),
        args.api_key.as_deref(),
        args.rate,
    )
    .await?;
    report.print(&format!("{} via {}", args.file.display(), args.url));
    if report.failed > 0 {
        return Err(Error::Unavailable(format!(
            "{} uploads failed",
            report.failed
        )));
    }
    Ok(())
}
