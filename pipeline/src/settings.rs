//! What a deployment runs and with which limits.

use std::collections::BTreeMap;
use std::time::Duration;

use pipeline_core::blob::DEFAULT_INLINE_MAX;
use pipeline_core::services::Validation;
use pipeline_core::transform::ImageLimits;

/// Default archive: an SQLite file under the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./pipeline-data/pipeline.db?mode=rwc";

/// The blob-store URL naming the archive's own blob table (the default).
pub const ARCHIVE_BLOBS: &str = "archive";

/// The roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// HTTP API with its results consumer.
    pub api: bool,
    /// Transformer workers.
    pub transformer: bool,
    /// Archive writer.
    pub save2db: bool,
    /// Activity log writer.
    pub activity: bool,
}

impl Roles {
    /// Everything, as `pipeline serve` runs.
    pub const ALL: Roles = Roles {
        api: true,
        transformer: true,
        save2db: true,
        activity: true,
    };
    /// Only the API (`pipeline-api`).
    pub const API: Roles = Roles::only(true, false, false, false);
    /// Only transformers (`pipeline-transformer`).
    pub const TRANSFORMER: Roles = Roles::only(false, true, false, false);
    /// Only the archive writer (`pipeline-save2db`).
    pub const SAVE2DB: Roles = Roles::only(false, false, true, false);
    /// Only the activity log (`pipeline-activity`).
    pub const ACTIVITY: Roles = Roles::only(false, false, false, true);

    const fn only(api: bool, transformer: bool, save2db: bool, activity: bool) -> Self {
        Self {
            api,
            transformer,
            save2db,
            activity,
        }
    }

    /// `all`, `api`, `transformer`, `save2db`, `activity` or `mixed`.
    pub fn name(self) -> &'static str {
        match (self.api, self.transformer, self.save2db, self.activity) {
            (true, true, true, true) => "all",
            (true, false, false, false) => "api",
            (false, true, false, false) => "transformer",
            (false, false, true, false) => "save2db",
            (false, false, false, true) => "activity",
            _ => "mixed",
        }
    }

    /// Whether nothing runs.
    pub fn is_empty(self) -> bool {
        !(self.api || self.transformer || self.save2db || self.activity)
    }
}

/// Where the backends are, as URLs (each kind may instead be given as a
/// value to the builder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    /// `memory://`, `amqp://`, `redis://`...
    pub broker: String,
    /// `sqlite://`, `postgres://`, `mysql://`, `memory://`.
    pub database: String,
    /// `memory://`, `redis://`...
    pub results: String,
    /// [`ARCHIVE_BLOBS`], `file:///path`, `s3://bucket/prefix`, `memory://`.
    pub blobs: String,
}

impl Default for Urls {
    /// The embedded defaults: memory broker and results, an SQLite file,
    /// blobs in the archive.
    fn default() -> Self {
        Self {
            broker: "memory://".into(),
            database: DEFAULT_DATABASE_URL.into(),
            results: "memory://".into(),
            blobs: ARCHIVE_BLOBS.into(),
        }
    }
}

/// Limits and knobs of a deployment; [`Default`] gives those of `pipeline
/// serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prefix of every queue, key and table this system creates.
    pub namespace: String,
    /// Transform spec used when an upload gives none.
    pub default_transform: String,
    /// Named specs on top of the built-in presets (a name given here
    /// replaces a built-in one).
    pub presets: BTreeMap<String, String>,
    /// Largest upload in bytes.
    pub max_upload_bytes: usize,
    /// Serve the web app from this directory instead of the built-in copy
    /// (for working on the page).
    pub web_dir: Option<std::path::PathBuf>,
    /// Files above this many bytes travel through the blob store.
    pub inline_max: usize,
    /// Pixel and dimension limits, checked from the header.
    pub limits: ImageLimits,
    /// Jobs accepted and not finished, at most; beyond it uploads get 503.
    pub max_in_flight: usize,
    /// How uploads are checked.
    pub validation: Validation,
    /// Transforms at once in a transformer (`None`: one per core).
    pub concurrency: Option<usize>,
    /// How long a result stays in the result store.
    pub result_ttl: Duration,
    /// Deliveries of one message before it is dead-lettered.
    pub max_attempts: u32,
    /// Delays between the attempts of a job that failed transiently.
    pub retry: pipeline_core::Backoff,
    /// Records saved per archive transaction, at most.
    pub batch: usize,
    /// Time to finish accepted work at shutdown.
    pub drain_timeout: Duration,
    /// How long the start waits for an unreachable backend (broker,
    /// stores) before it gives up: a role started while its broker or
    /// database is down, or its host cut off, comes up once they answer.
    pub connect_timeout: Duration,
    /// How long open requests (long polls, event streams) may run on after
    /// the stop.
    pub request_grace: Duration,
    /// Header timeout and connection cap of the HTTP servers.
    pub transport: crate::Transport,
    /// Time an upload's whole body has to arrive (then 408).
    pub body_timeout: Duration,
    /// Long polls and event streams one tenant may have open at once.
    pub max_waits_per_tenant: usize,
    /// Whether a transformer's id (a job's `worker`, which clients see)
    /// names its host and process id; by default it is random.
    pub worker_id_with_host: bool,
    /// How the API authenticates, and its signed links.
    pub auth: crate::AuthSettings,
    /// Jobs in flight per tenant, at most (0: only `max_in_flight`).
    pub tenant_max_in_flight: usize,
    /// Request and upload byte rates per tenant (0: none).
    pub tenant_rates: pipeline_http::RateLimits,
    /// Serves `/metrics` on the API and health ports (the command line
    /// sets a Prometheus recorder, [`crate::metrics`]); none: no metrics
    /// route.
    pub metrics: Option<pipeline_http::MetricsRender>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: "pipeline".into(),
            default_transform: "stamp".into(),
            presets: BTreeMap::new(),
            max_upload_bytes: 64 * 1024 * 1024,
            web_dir: None,
            inline_max: DEFAULT_INLINE_MAX,
            limits: ImageLimits {
                max_width: 16_384,
                max_height: 16_384,
                max_pixels: 40_000_000,
                max_result_bytes: 128 * 1024 * 1024,
                job_timeout: Some(Duration::from_secs(120)),
                ..ImageLimits::default()
            },
            max_in_flight: 256,
            validation: Validation::Structure,
            concurrency: None,
            result_ttl: Duration::from_secs(3600),
            max_attempts: 5,
            retry: pipeline_core::Backoff::default(),
            batch: 64,
            drain_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(60),
            request_grace: Duration::from_secs(10),
            transport: crate::Transport::default(),
            body_timeout: Duration::from_secs(60),
            worker_id_with_host: false,
            max_waits_per_tenant: 64,
            auth: crate::AuthSettings::default(),
            tenant_max_in_flight: 0,
            tenant_rates: pipeline_http::RateLimits::default(),
            metrics: None,
        }
    }
}

/// Read presets, one per line: `name = spec` (`#` starts a comment).
/// Names are 1-64 characters of `a-z`, `0-9`, `-`, `_`; specs are checked
/// against the transforms when the pipeline starts.
///
/// ```
/// let presets = pipeline::parse_presets("# ours\nsmall = thumbnail:64\nbanner=resize:1200x300:fill\n")?;
/// assert_eq!(presets["banner"], "resize:1200x300:fill");
/// # Ok::<(), pipeline::Error>(())
/// ```
pub fn parse_presets(text: &str) -> Result<BTreeMap<String, String>, pipeline_core::Error> {
    let mut presets = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (name, spec) = parse_preset(line)
            .map_err(|e| pipeline_core::Error::Config(format!("presets, line {}: {e}", n + 1)))?;
        presets.insert(name, spec);
    }
    Ok(presets)
}

/// One preset written `name=spec` (spaces around `=` allowed).
pub fn parse_preset(entry: &str) -> Result<(String, String), pipeline_core::Error> {
    let bad = |why: &str| pipeline_core::Error::Config(format!("preset {entry:?}: {why}"));
    let (name, spec) = entry
        .split_once('=')
        .ok_or_else(|| bad("expected name=spec"))?;
    let (name, spec) = (name.trim(), spec.trim());
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        return Err(bad(
            "the name must be 1-64 characters of a-z, 0-9, '-', '_'",
        ));
    }
    if spec.is_empty() {
        return Err(bad("the spec is empty"));
    }
    Ok((name.to_string(), spec.to_string()))
}
