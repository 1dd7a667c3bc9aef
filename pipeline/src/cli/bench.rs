//! `pipeline bench`: the bare transform rate on every core, then an
//! in-process pipeline driven over HTTP, in one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use pipeline_core::transform::{ImageLimits, JpegDecoder, Processor};
use pipeline_core::{Error, TransformRegistry};

use super::ValidateMode;
use super::load::{drive, read};
use crate::settings::ARCHIVE_BLOBS;
use crate::{Pipeline, Roles};

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
    #[arg(long, default_value = ARCHIVE_BLOBS)]
    pub blob_url: String,
    /// Files above this many bytes travel by reference (as `serve`'s).
    #[arg(long, default_value_t = pipeline_core::blob::DEFAULT_INLINE_MAX)]
    pub inline_max: usize,
}

/// Decode + transform + encode on every core for `seconds`; images/s and
/// milliseconds per image per core.
fn bare_rate(
    registry: Arc<TransformRegistry>,
    data: &Bytes,
    spec: &str,
    seconds: f64,
    jpeg: JpegDecoder,
) -> Result<(f64, f64), Error> {
    let spec = registry.parse(spec)?;
    let processor = Processor::new(registry, ImageLimits::default()).with_jpeg_decoder(jpeg);
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

/// The fastest decoder this build has for `data`: libjpeg-turbo for a JPEG
/// when built with it, else the pipeline's own; `None` when that is the
/// pipeline's own (the reference is then the bare rate).
fn reference_decoder(data: &[u8]) -> Option<(JpegDecoder, &'static str)> {
    #[cfg(feature = "turbojpeg")]
    if image::guess_format(data).ok() == Some(image::ImageFormat::Jpeg) {
        return Some((JpegDecoder::LibjpegTurbo, "libjpeg-turbo decode + encode"));
    }
    let _ = data;
    None
}

/// Measures `bare_rate` off the async runtime.
async fn measure(
    registry: &Arc<TransformRegistry>,
    data: &Bytes,
    spec: &str,
    seconds: f64,
    jpeg: JpegDecoder,
) -> Result<(f64, f64), Error> {
    let (r, d, spec) = (registry.clone(), data.clone(), spec.to_string());
    tokio::task::spawn_blocking(move || bare_rate(r, &d, &spec, seconds, jpeg))
        .await
        .map_err(|e| Error::Config(format!("bench task: {e}")))?
}

/// `pipeline bench`, with the transforms of `registry`.
pub async fn bench(args: BenchArgs, registry: TransformRegistry) -> Result<(), Error> {
    let registry = Arc::new(registry);
    for file in &args.file {
        let data = read(file)?;
        let name = file.display();
        let (rate, per_image_ms) = measure(
            &registry,
            &data,
            &args.transform,
            args.bare_seconds,
            JpegDecoder::Rust,
        )
        .await?;
        println!(
            "{name}: bare transform ({}) on all cores: {rate:.1} images/s ({per_image_ms:.2} ms per image per core)",
            args.transform
        );
        let reference = match reference_decoder(&data) {
            Some((decoder, label)) => {
                let (r, ms) = measure(
                    &registry,
                    &data,
                    &args.transform,
                    args.bare_seconds,
                    decoder,
                )
                .await?;
                println!(
                    "{name}: reference transform ({label}) on all cores: {r:.1} images/s ({ms:.2} ms per image per core)"
                );
                // The reference is the fastest path, whichever it is.
                r.max(rate)
            }
            None => rate,
        };
        let dir = tempfile::tempdir().map_err(|e| Error::Config(format!("temp dir: {e}")))?;
        let database = args.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("bench.db").display()
            )
        });
        let running = Pipeline::builder()
            .roles(Roles::ALL)
            .registry((*registry).clone())
            .broker_url(args.broker_url.clone())
            .database_url(database)
            .blob_url(args.blob_url.clone())
            .listen("127.0.0.1:0")
            .configure(|s| {
                s.namespace = format!("bench_{}", std::process::id());
                s.default_transform = args.transform.clone();
                s.inline_max = args.inline_max;
                s.limits.max_pixels = 100_000_000;
                s.max_in_flight = 4096;
                s.validation = args.validate.into();
                s.concurrency = args.workers;
                s.result_ttl = Duration::from_secs(600);
            })
            .start()
            .await?;
        let addr = running
            .addr()
            .ok_or_else(|| Error::Config("the in-process server has no address".into()))?;
        let report = drive(
            &format!("http://{addr}"),
            data,
            args.requests,
            args.concurrency,
            None,
            None,
            None,
        )
        .await;
        running.shutdown().await?;
        let report = report?;
        report.print(&format!(
            "{name}: in-process pipeline over HTTP ({} clients, broker {})",
            args.concurrency,
            pipeline_core::urls::redact(&args.broker_url)
        ));
        println!(
            "{name}: pipeline / bare transform = {:.0}%, pipeline / reference = {:.0}%, peak RSS {}",
            100.0 * report.rate() / rate,
            100.0 * report.rate() / reference,
            pipeline_core::telemetry::peak_rss_bytes()
                .map_or("unknown".to_string(), |b| format!("{} MiB", b >> 20))
        );
    }
    Ok(())
}
