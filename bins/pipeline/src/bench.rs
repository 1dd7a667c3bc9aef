//! Load generator and benchmark.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use pipeline_core::Error;
use pipeline_core::TransformRegistry;
use pipeline_core::transform::{ImageLimits, Processor};
use tokio::sync::watch;

use crate::serve::{Roles, ServeArgs, ValidateMode};

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
}

/// Settings of `pipeline bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Images to measure, one after the other.
    #[arg(long, required = true, num_args = 1..)]
    pub file: Vec<PathBuf>,
    /// Uploads per image.
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// Clients working at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds of the bare transform measurement per image.
    #[arg(long, default_value_t = 5.0)]
    pub bare_seconds: f64,
    /// Transform spec.
    #[arg(long, default_value = "stamp")]
    pub transform: String,
    /// Upload checks of the in-process server.
    #[arg(long, value_enum, default_value = "structure")]
    pub validate: ValidateMode,
    /// Transforms at once in the in-process server (default: the cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Broker of the in-process server.
    #[arg(long, default_value = "memory://")]
    pub broker_url: String,
    /// Archive of the in-process server (default: a new SQLite file).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Claim-check store of the in-process server (as `serve`'s).
    #[arg(long, default_value = crate::backends::ARCHIVE_BLOBS)]
    pub blob_url: String,
    /// Files above this many bytes travel by reference (as `serve`'s).
    #[arg(long, default_value_t = pipeline_core::blob::DEFAULT_INLINE_MAX)]
    pub inline_max: usize,
}

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
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, label: &str) {
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

fn read(path: &PathBuf) -> Result<Bytes, Error> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
}

fn mime_of(data: &[u8]) -> &'static str {
    image::guess_format(data).map_or("application/octet-stream", |f| f.to_mime_type())
}

/// Upload `requests` copies of `data` with `concurrency` clients; each waits
/// for its result. Latency runs from the start of the upload to the result.
pub async fn drive(
    url: &str,
    data: Bytes,
    requests: usize,
    concurrency: usize,
    transform: Option<&str>,
) -> Result<LoadReport, Error> {
    let client = crate::http_client_builder()
        .pool_max_idle_per_host(concurrency * 2)
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
    let mut post_url = format!("{}/v1/images", url.trim_end_matches('/'));
    if let Some(t) = transform {
        post_url.push_str("?transform=");
        post_url.push_str(&t.replace(',', "%2C").replace(':', "%3A"));
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
            while next.fetch_add(1, Ordering::Relaxed) < requests {
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
                    tokio::time::sleep(Duration::from_millis(20)).await;
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
                let id = body["images"][0]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let result_url = format!("{base}/v1/images/{id}/result?wait=30");
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
pub async fn load(args: LoadArgs) -> Result<(), Error> {
    let data = read(&args.file)?;
    let report = drive(
        &args.url,
        data,
        args.requests,
        args.concurrency,
        args.transform.as_deref(),
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

/// Decode + transform + encode on every core for `seconds`; images/s.
fn bare_rate(data: &Bytes, spec: &str, seconds: f64) -> Result<(f64, f64), Error> {
    let registry = Arc::new(TransformRegistry::with_builtins());
    let spec = registry.parse(spec)?;
    let processor = Processor::new(registry, ImageLimits::default());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Warm up once (font parse, allocator).
    processor.process(data, &spec)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let counts: Vec<Result<usize, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while Instant::now() < deadline {
                        processor.process(data, &spec)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Config("bench thread panicked".into())))
            })
            .collect()
    });
    let total: usize = counts.into_iter().sum::<Result<usize, Error>>()?;
    let elapsed = started.elapsed().as_secs_f64();
    let rate = total as f64 / elapsed;
    Ok((rate, threads as f64 * 1000.0 / rate))
}

/// `pipeline bench`.
pub async fn bench(args: BenchArgs) -> Result<(), Error> {
    for file in &args.file {
        let data = read(file)?;
        let (spec, secs, d) = (args.transform.clone(), args.bare_seconds, data.clone());
        let (rate, per_image_ms) = tokio::task::spawn_blocking(move || bare_rate(&d, &spec, secs))
            .await
            .map_err(|e| Error::Config(format!("bench task: {e}")))??;
        println!(
            "{}: bare transform ({}) on all cores: {rate:.1} images/s ({per_image_ms:.2} ms per image per core)",
            file.display(),
            args.transform
        );
        let dir = tempfile::tempdir().map_err(|e| Error::Config(format!("temp dir: {e}")))?;
        let serve = ServeArgs {
            listen: "127.0.0.1:0".into(),
            broker_url: args.broker_url.clone(),
            database_url: args.database_url.clone().unwrap_or_else(|| {
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("bench.db").display()
                )
            }),
            results_url: "memory://".into(),
            namespace: format!("bench_{}", std::process::id()),
            default_transform: args.transform.clone(),
            max_upload_bytes: 64 * 1024 * 1024,
            blob_url: args.blob_url.clone(),
            inline_max: args.inline_max,
            max_pixels: 100_000_000,
            max_dimension: 16_384,
            max_in_flight: 4096,
            validate: args.validate,
            concurrency: args.workers,
            result_ttl: 600,
            max_attempts: 5,
            batch: 64,
            drain_timeout: 60,
            log_json: false,
            health_listen: None,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(crate::serve::run_until(
            serve,
            Roles::ALL,
            stop_rx,
            move |addr| {
                if let Some(addr) = addr {
                    let _ = addr_tx.send(addr);
                }
            },
        ));
        let addr = addr_rx
            .await
            .map_err(|_| Error::Config("the in-process server did not start".into()))?;
        let report = drive(
            &format!("http://{addr}"),
            data,
            args.requests,
            args.concurrency,
            None,
        )
        .await?;
        report.print(&format!(
            "{}: in-process pipeline over HTTP ({} clients, broker {})",
            file.display(),
            args.concurrency,
            crate::backends::redact(&args.broker_url)
        ));
        println!(
            "{}: pipeline / bare transform = {:.0}%",
            file.display(),
            100.0 * report.rate() / rate
        );
        let _ = stop_tx.send(true);
        server
            .await
            .map_err(|e| Error::Config(format!("server task: {e}")))??;
    }
    Ok(())
}
