//! The flags (and `PIPELINE_*` variables) of every role.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use pipeline_core::services::Validation;
use pipeline_core::{Error, TransformRegistry};

use crate::settings::{
    ARCHIVE_BLOBS, DEFAULT_DATABASE_URL, Settings, Urls, parse_preset, parse_presets,
};
use crate::{Pipeline, PipelineBuilder, Roles};

/// Upload checks.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ValidateMode {
    /// Check the header and the file's integrity (PNG checksums, JPEG
    /// segments; other formats are decoded).
    Structure,
    /// Decode the whole image at upload.
    Full,
    /// Read the header only (format, dimensions).
    Header,
}

impl From<ValidateMode> for Validation {
    fn from(mode: ValidateMode) -> Self {
        match mode {
            ValidateMode::Structure => Validation::Structure,
            ValidateMode::Full => Validation::Full,
            ValidateMode::Header => Validation::Header,
        }
    }
}

/// How the API authenticates.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuthArg {
    /// `none` when listening on a loopback address only, `keys` otherwise.
    Auto,
    /// API keys: `Authorization: Bearer <key>` (`pipeline keys create`).
    Keys,
    /// A proxy in front authenticates and names the tenant in
    /// `--trusted-header`.
    TrustedHeader,
    /// No authentication, wherever the API listens.
    None,
}

/// Settings of `pipeline serve` and of every role; each flag also reads
/// an environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the API listens on (port 0 picks a free port).
    #[arg(long, env = "PIPELINE_LISTEN", default_value = "127.0.0.1:4555")]
    pub listen: String,
    /// Broker: memory://, amqp://, amqps://, redis://, rediss://,
    /// redis-cluster://, redis-sentinel://
    #[arg(
        long,
        env = "PIPELINE_BROKER_URL",
        default_value = "memory://",
        hide_env_values = true
    )]
    pub broker_url: String,
    /// Archive database: sqlite://, postgres://, mysql://, mariadb:// (or memory://).
    #[arg(long, env = "PIPELINE_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Result store: memory://, redis://, rediss://, redis-cluster://, redis-sentinel://
    #[arg(
        long,
        env = "PIPELINE_RESULTS_URL",
        default_value = "memory://",
        hide_env_values = true
    )]
    pub results_url: String,
    /// Prefix of every queue, key and table this system creates.
    #[arg(long, env = "PIPELINE_NAMESPACE", default_value = "pipeline")]
    pub namespace: String,
    /// Transform spec used when an upload gives none.
    #[arg(long, env = "PIPELINE_DEFAULT_TRANSFORM", default_value = "stamp")]
    pub default_transform: String,
    /// A named preset, NAME=SPEC (repeatable; in the variable, separated by
    /// ';'). Replaces a built-in preset of the same name.
    #[arg(
        long = "preset",
        env = "PIPELINE_PRESETS",
        value_delimiter = ';',
        value_name = "NAME=SPEC"
    )]
    pub presets: Vec<String>,
    /// A file of presets, one `name = spec` per line (`#` comments).
    #[arg(long, env = "PIPELINE_PRESETS_FILE")]
    pub presets_file: Option<PathBuf>,
    /// Largest upload in bytes.
    #[arg(long, env = "PIPELINE_MAX_UPLOAD_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_upload_bytes: usize,
    /// Serve the web app's files (index.html, app.js, app.css) from this
    /// directory instead of the built-in copies: for working on the page.
    #[arg(long, env = "PIPELINE_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Where files above the inline limit go (claim check): `archive` (the
    /// database's blob table), `file:///path`, `s3://bucket/prefix` (AWS_*
    /// variables), `memory://` (one process).
    #[arg(long, env = "PIPELINE_BLOB_URL", default_value = ARCHIVE_BLOBS, hide_env_values = true)]
    pub blob_url: String,
    /// Files (originals, results) above this many bytes travel by reference
    /// through the blob store instead of inside messages.
    #[arg(long, env = "PIPELINE_INLINE_MAX", default_value_t = pipeline_core::blob::DEFAULT_INLINE_MAX)]
    pub inline_max: usize,
    /// Largest image in pixels (width x height), checked from the header.
    #[arg(long, env = "PIPELINE_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// Largest width or height in pixels, of an upload or of anything a
    /// transform makes.
    #[arg(long, env = "PIPELINE_MAX_DIMENSION", default_value_t = 16_384)]
    pub max_dimension: u32,
    /// Largest encoded result in bytes (a BMP or TIFF of a large image is
    /// refused before it is encoded).
    #[arg(long, env = "PIPELINE_MAX_RESULT_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_result_bytes: u64,
    /// Seconds a job may take in a transformer (decode, operations,
    /// encode) before it fails with `timeout`; 0 for no limit.
    #[arg(long, env = "PIPELINE_JOB_TIMEOUT", default_value_t = 120)]
    pub job_timeout: u64,
    /// Jobs accepted and not finished, at most; beyond it uploads get 503.
    #[arg(long, env = "PIPELINE_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Seconds a client has to send a request's headers (then the
    /// connection is closed); also how long an idle connection stays open.
    #[arg(long, env = "PIPELINE_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds an upload's whole body has to arrive (then 408).
    #[arg(long, env = "PIPELINE_BODY_TIMEOUT", default_value_t = 60)]
    pub body_timeout: u64,
    /// Name the host and process id in a transformer's id (a job's
    /// `worker`, which clients see); by default the id is random.
    #[arg(long, env = "PIPELINE_WORKER_ID_HOST")]
    pub worker_id_host: bool,
    /// Long polls (`?wait=`) and event streams one tenant may have open at
    /// once (beyond: 429).
    #[arg(long, env = "PIPELINE_MAX_WAITS_PER_TENANT", default_value_t = 64)]
    pub max_waits_per_tenant: usize,
    /// HTTP connections open at once, at most (more wait to be accepted).
    #[arg(long, env = "PIPELINE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// How uploads are checked.
    #[arg(
        long,
        env = "PIPELINE_VALIDATE",
        value_enum,
        default_value = "structure"
    )]
    pub validate: ValidateMode,
    /// Transforms at once in a transformer (default: the number of cores).
    #[arg(long, env = "PIPELINE_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Seconds a result stays in the result store before GET falls back to the archive.
    #[arg(long, env = "PIPELINE_RESULT_TTL", default_value_t = 3600)]
    pub result_ttl: u64,
    /// Deliveries of one message before it is dead-lettered.
    #[arg(long, env = "PIPELINE_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Records saved per archive transaction, at most.
    #[arg(long, env = "PIPELINE_BATCH", default_value_t = 64)]
    pub batch: usize,
    /// Seconds to finish accepted work at shutdown.
    #[arg(long, env = "PIPELINE_DRAIN_TIMEOUT", default_value_t = 60)]
    pub drain_timeout: u64,
    /// Seconds the start waits for an unreachable broker or store (retrying)
    /// before it gives up.
    #[arg(long, env = "PIPELINE_CONNECT_TIMEOUT", default_value_t = 60)]
    pub connect_timeout: u64,
    /// Log as JSON lines.
    #[arg(long, env = "PIPELINE_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Serve `/healthz` and `/readyz` on this address (for worker
    /// processes: ready while the broker, the archive and the blob store
    /// they use answer).
    #[arg(long, env = "PIPELINE_HEALTH_LISTEN")]
    pub health_listen: Option<String>,
    /// How the API authenticates.
    #[arg(long, env = "PIPELINE_AUTH", value_enum, default_value = "auto")]
    pub auth: AuthArg,
    /// With `--auth trusted-header`: the header in which the proxy names
    /// the tenant (it must drop that header from clients' requests).
    #[arg(long, env = "PIPELINE_TRUSTED_HEADER", default_value = "X-Tenant")]
    pub trusted_header: String,
    /// Secret signing result and original links, at least 32 bytes, the
    /// same on every API process (default: random per process).
    #[arg(long, env = "PIPELINE_URL_SECRET", hide_env_values = true)]
    pub url_secret: Option<String>,
    /// The link secret before the last rotation: its links still pass.
    #[arg(long, env = "PIPELINE_URL_SECRET_PREVIOUS", hide_env_values = true)]
    pub url_secret_previous: Option<String>,
    /// Seconds a signed link stays valid.
    #[arg(long, env = "PIPELINE_LINK_TTL", default_value_t = 3600)]
    pub link_ttl: u64,
    /// Seconds an API process trusts a key it looked up: the longest a
    /// revocation takes to reach it.
    #[arg(long, env = "PIPELINE_KEY_CACHE", default_value_t = 5)]
    pub key_cache: u64,
    /// Jobs in flight per tenant, at most (beyond: 429 quota_exceeded); 0
    /// for no limit but --max-in-flight.
    #[arg(long, env = "PIPELINE_TENANT_MAX_IN_FLIGHT", default_value_t = 0)]
    pub tenant_max_in_flight: usize,
    /// Requests per second per tenant, sustained (beyond: 429
    /// rate_limited); 0 for no limit.
    #[arg(long, env = "PIPELINE_TENANT_RATE", default_value_t = 0.0)]
    pub tenant_rate: f64,
    /// Requests a tenant may send at once after a quiet time (default:
    /// two seconds' worth of --tenant-rate).
    #[arg(long, env = "PIPELINE_TENANT_BURST", default_value_t = 0)]
    pub tenant_burst: u32,
    /// Upload bytes per second per tenant, sustained (beyond: 429
    /// rate_limited); 0 for no limit. The burst is two seconds' worth, and
    /// at least --max-upload-bytes.
    #[arg(long, env = "PIPELINE_TENANT_BYTES_RATE", default_value_t = 0)]
    pub tenant_bytes_rate: u64,
}

impl ServeArgs {
    /// The values of the `PIPELINE_*` variables alone (defaults for the
    /// others), for programs that take no flags.
    pub fn from_env() -> Result<Self, Error> {
        #[derive(Debug, clap::Parser)]
        struct EnvOnly {
            #[command(flatten)]
            args: ServeArgs,
        }
        <EnvOnly as clap::Parser>::try_parse_from(["pipeline"])
            .map(|c| c.args)
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The settings these flags describe.
    pub fn settings(&self) -> Result<Settings, Error> {
        let mut presets = match &self.presets_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!(
                        "cannot read the presets file {}: {e}",
                        path.display()
                    ))
                })?;
                parse_presets(&text)?
            }
            None => Default::default(),
        };
        for entry in self.presets.iter().filter(|e| !e.trim().is_empty()) {
            let (name, spec) = parse_preset(entry)?;
            presets.insert(name, spec);
        }
        let defaults = Settings::default();
        Ok(Settings {
            namespace: self.namespace.clone(),
            default_transform: self.default_transform.clone(),
            presets,
            max_upload_bytes: self.max_upload_bytes,
            web_dir: self.web_dir.clone(),
            inline_max: self.inline_max,
            limits: pipeline_core::transform::ImageLimits {
                max_width: self.max_dimension,
                max_height: self.max_dimension,
                max_pixels: self.max_pixels,
                max_result_bytes: self.max_result_bytes,
                job_timeout: (self.job_timeout > 0).then(|| Duration::from_secs(self.job_timeout)),
                ..defaults.limits
            },
            max_in_flight: self.max_in_flight,
            validation: self.validate.into(),
            concurrency: self.concurrency,
            result_ttl: Duration::from_secs(self.result_ttl),
            max_attempts: self.max_attempts,
            retry: defaults.retry,
            batch: self.batch,
            drain_timeout: Duration::from_secs(self.drain_timeout),
            connect_timeout: Duration::from_secs(self.connect_timeout),
            request_grace: defaults.request_grace,
            transport: crate::Transport {
                header_timeout: Duration::from_secs(self.header_timeout.max(1)),
                max_connections: self.max_connections.max(1),
            },
            body_timeout: Duration::from_secs(self.body_timeout.max(1)),
            worker_id_with_host: self.worker_id_host,
            max_waits_per_tenant: self.max_waits_per_tenant.max(1),
            tenant_max_in_flight: self.tenant_max_in_flight,
            tenant_rates: self.tenant_rates()?,
            metrics: None,
            auth: crate::AuthSettings {
                mode: match self.auth {
                    AuthArg::Auto => crate::AuthChoice::Auto,
                    AuthArg::Keys => crate::AuthChoice::Keys,
                    AuthArg::TrustedHeader => {
                        crate::AuthChoice::TrustedHeader(self.trusted_header.clone())
                    }
                    AuthArg::None => crate::AuthChoice::None,
                },
                url_secret: self.url_secret.clone().filter(|s| !s.is_empty()),
                url_secret_previous: self.url_secret_previous.clone().filter(|s| !s.is_empty()),
                link_ttl: self.link_ttl()?,
                key_cache: Duration::from_secs(self.key_cache),
            },
        })
    }

    fn link_ttl(&self) -> Result<Duration, Error> {
        const MAX: u64 = 30 * 86_400;
        if !(1..=MAX).contains(&self.link_ttl) {
            return Err(Error::Config(format!(
                "PIPELINE_LINK_TTL must be 1 to {MAX} seconds (30 days), not {}",
                self.link_ttl
            )));
        }
        Ok(Duration::from_secs(self.link_ttl))
    }

    fn tenant_rates(&self) -> Result<pipeline_http::RateLimits, Error> {
        if !self.tenant_rate.is_finite() || self.tenant_rate < 0.0 {
            return Err(Error::Config(format!(
                "PIPELINE_TENANT_RATE must be 0 or a positive number, not {}",
                self.tenant_rate
            )));
        }
        let burst = if self.tenant_burst > 0 {
            self.tenant_burst
        } else {
            (self.tenant_rate * 2.0)
                .ceil()
                .clamp(1.0, f64::from(u32::MAX)) as u32
        };
        Ok(pipeline_http::RateLimits {
            requests_per_second: self.tenant_rate,
            request_burst: burst,
            bytes_per_second: self.tenant_bytes_rate,
            byte_burst: self
                .tenant_bytes_rate
                .saturating_mul(2)
                .max(self.max_upload_bytes as u64),
        })
    }

    /// The backend URLs.
    pub fn urls(&self) -> Urls {
        Urls {
            broker: self.broker_url.clone(),
            database: self.database_url.clone(),
            results: self.results_url.clone(),
            blobs: self.blob_url.clone(),
        }
    }

    /// A builder for `roles` with these flags and `registry`.
    pub fn builder(
        &self,
        roles: Roles,
        registry: TransformRegistry,
    ) -> Result<PipelineBuilder, Error> {
        let mut b = Pipeline::builder()
            .roles(roles)
            .settings(self.settings()?)
            .urls(self.urls())
            .registry(registry);
        if roles.api {
            b = b.listen(self.listen.clone());
        }
        if let Some(health) = &self.health_listen {
            b = b.health_listen(health.clone());
        }
        Ok(b)
    }
}
