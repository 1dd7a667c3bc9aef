//! The process's Prometheus recorder: installed once, rendered by
//! `/metrics` on the API and health ports.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pipeline_core::Error;
use pipeline_http::MetricsRender;

/// Histogram buckets, in seconds (latencies) and records (batch sizes):
/// 1 ms to 10 min.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    600.0,
];

/// How often histograms are folded (without it their samples pile up
/// between scrapes).
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder as the process's global recorder (the
/// first call; later calls return the same), and describe every metric.
pub fn install() -> Result<MetricsRender, Error> {
    let handle = match HANDLE.get() {
        Some(h) => h.clone(),
        None => {
            let handle = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .map_err(|e| Error::Config(format!("metrics buckets: {e}")))?
                .install_recorder()
                .map_err(|e| Error::Config(format!("cannot install the metrics recorder: {e}")))?;
            pipeline_core::telemetry::describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP);
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| Error::Config(format!("cannot start the metrics upkeep: {e}")))?;
            HANDLE.get_or_init(|| handle).clone()
        }
    };
    Ok(MetricsRender::new(move || handle.render()))
}
