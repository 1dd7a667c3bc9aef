//! `pipeline upload`: send a tree of images to a server, fetch every result
//! into `--out` (mirroring the tree), and resume where a stopped run left
//! off without sending any file twice (see [`manifest`]).

mod manifest;
mod outputs;
mod progress;
mod walk;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use pipeline_core::Error;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Serialize;
use tokio::sync::Semaphore;
use uuid::Uuid;

use manifest::{Entry, Manifest, Reason, State};
use outputs::Outputs;
use progress::Progress;

/// Settings of `pipeline upload`.
#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    /// Files or directories to send (directories recursively); `-` reads
    /// paths from standard input, one per line.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Where the results go, mirroring the input tree.
    #[arg(long)]
    pub out: PathBuf,
    /// Base URL of the server.
    #[arg(
        long,
        env = "PIPELINE_SERVER_URL",
        default_value = "http://127.0.0.1:4555"
    )]
    pub url: String,
    /// Transform spec (default: the server's).
    #[arg(long, conflicts_with = "preset")]
    pub transform: Option<String>,
    /// Named preset of the server.
    #[arg(long)]
    pub preset: Option<String>,
    /// Uploads at once (results are awaited four times as many at once).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// The resume manifest [default: OUT/.pipeline-upload.jsonl].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// API key, sent as `Authorization: Bearer`.
    #[arg(long, env = "PIPELINE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Tenant (`X-Tenant`), for servers that take it from the header.
    #[arg(long, env = "PIPELINE_TENANT")]
    pub tenant: Option<String>,
    /// Attempts of one request when the server is busy (503, 429) or
    /// unreachable.
    #[arg(long, default_value_t = 10)]
    pub retries: u32,
    /// Longest wait for one result, in seconds.
    #[arg(long, default_value_t = 600)]
    pub result_timeout: u64,
    /// Send again the files an earlier run recorded as failed.
    #[arg(long)]
    pub retry_failed: bool,
    /// Print the summary as JSON on standard output (no progress).
    #[arg(long)]
    pub json: bool,
}

/// How a file ended in this run.
#[derive(Debug, Clone)]
enum Outcome {
    /// Its result was fetched in this run.
    Done { bytes_sent: u64 },
    /// Done in an earlier run: nothing sent.
    AlreadyDone,
    /// Refused or failed (now or, without `--retry-failed`, before).
    Failed(Reason),
}

/// The summary of a run.
#[derive(Debug, Default, Serialize)]
struct Summary {
    /// Files whose result this run fetched.
    done: usize,
    /// Files done by an earlier run (nothing sent).
    already_done: usize,
    /// Files refused or failed, with why.
    failed: Vec<FailedFile>,
    /// Files that are not images (or could not be read).
    skipped: Vec<SkippedFile>,
    /// Files not finished because the run was interrupted.
    remaining: usize,
    /// Bytes uploaded.
    bytes_sent: u64,
    /// Seconds the run took.
    seconds: f64,
    /// Whether Ctrl-C (or SIGTERM) stopped it.
    interrupted: bool,
    /// The manifest a new run resumes from.
    manifest: String,
}

#[derive(Debug, Serialize)]
struct FailedFile {
    path: String,
    code: String,
    message: String,
}

#[derive(Debug, Serialize)]
struct SkippedFile {
    /// Lossy where the name is not UTF-8: the JSON summary must print.
    path: String,
    why: String,
}

/// `pipeline upload`: exit 0 when every image is done, 1 when some failed
/// or the run could not start, 130 when interrupted.
pub(crate) fn run(args: UploadArgs) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let json = args.json;
    match runtime.block_on(upload(args)) {
        Ok(summary) if summary.interrupted => ExitCode::from(130),
        Ok(summary) if summary.failed.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What every file's task shares.
struct Ctx {
    client: reqwest::Client,
    post_url: reqwest::Url,
    base: String,
    out: PathBuf,
    manifest: Manifest,
    uploads: Semaphore,
    retries: u32,
    result_timeout: Duration,
    retry_failed: bool,
    progress: Progress,
    outputs: Outputs,
    /// The query of the uploads (`transform=...`, `preset=...` or empty).
    transform: String,
}

async fn upload(args: UploadArgs) -> Result<Summary, Error> {
    let started = Instant::now();
    let mut roots = Vec::new();
    for p in &args.paths {
        if p.as_os_str() == "-" {
            roots.extend(walk::read_list(std::io::stdin().lock())?);
        } else {
            roots.push(p.clone());
        }
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Error::Config(format!("--out {}: {e}", args.out.display())))?;
    let out = args
        .out
        .canonicalize()
        .map_err(|e| Error::Config(format!("--out {}: {e}", args.out.display())))?;
    let manifest_path = args
        .manifest
        .clone()
        .unwrap_or_else(|| out.join(".pipeline-upload.jsonl"));
    // The output and the manifest are never inputs of their own run.
    let skip = [out.clone(), manifest_path.clone()];
    // Folders are walked from their real path (so that `--out` inside one
    // is recognised); files keep the path they were named by, which is
    // where their result goes.
    let roots: Vec<PathBuf> = roots
        .into_iter()
        .map(|r| {
            if r.is_dir() {
                r.canonicalize().unwrap_or(r)
            } else {
                r
            }
        })
        .collect();
    let found = walk::collect(&roots, &skip)?;
    let manifest = Manifest::open(&manifest_path)?;

    let mut summary = Summary {
        skipped: found
            .skipped
            .into_iter()
            .map(|s| SkippedFile {
                path: s.file.to_string_lossy().into_owned(),
                why: s.why,
            })
            .collect(),
        manifest: manifest_path.to_string_lossy().into_owned(),
        ..Summary::default()
    };
    let total_bytes = found.inputs.iter().map(|i| i.size).sum();
    let mode = if args.json {
        progress::Mode::Quiet
    } else if std::io::stderr().is_terminal() {
        progress::Mode::Bars
    } else {
        progress::Mode::Lines
    };
    let progress = Progress::new(mode, found.inputs.len() as u64, total_bytes);
    for s in &summary.skipped {
        progress.note(&format!("skipped {}: {}", s.path, s.why));
    }
    let ctx = Arc::new(Ctx {
        client: super::http_client_builder()
            .default_headers(auth_headers(&args)?)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?,
        transform: post_url(&args)?.query().unwrap_or_default().to_string(),
        post_url: post_url(&args)?,
        base: args.url.trim_end_matches('/').to_string(),
        out,
        uploads: Semaphore::new(usize::from(args.concurrency)),
        retries: args.retries.max(1),
        result_timeout: Duration::from_secs(args.result_timeout),
        retry_failed: args.retry_failed,
        outputs: Outputs::new(
            found.inputs.iter().map(|i| i.rel.as_str()),
            manifest.outputs(),
        ),
        manifest,
        progress,
    });

    preflight(&ctx.client, &ctx.base).await?;
    let total = found.inputs.len();
    let mut files = futures::stream::iter(found.inputs.into_iter().map(|input| {
        let ctx = ctx.clone();
        async move {
            let rel = input.rel.clone();
            let outcome = process(&ctx, input).await;
            (rel, outcome)
        }
    }))
    .buffer_unordered(usize::from(args.concurrency) * 4);

    let mut finished = 0usize;
    let mut stop = std::pin::pin!(interrupted());
    loop {
        tokio::select! {
            next = files.next() => {
                let Some((rel, outcome)) = next else { break };
                finished += 1;
                match outcome {
                    Ok(Outcome::Done { bytes_sent }) => {
                        summary.done += 1;
                        summary.bytes_sent += bytes_sent;
                        ctx.progress.file_done();
                    }
                    Ok(Outcome::AlreadyDone) => {
                        summary.already_done += 1;
                        ctx.progress.file_done();
                    }
                    Ok(Outcome::Failed(reason)) => {
                        ctx.progress.note(&format!("failed {rel}: {} ({})", reason.message, reason.code));
                        ctx.progress.file_done();
                        summary.failed.push(FailedFile { path: rel, code: reason.code, message: reason.message });
                    }
                    // The run cannot go on (the manifest or the output
                    // cannot be written): stop, what is recorded stays.
                    Err(e) => {
                        ctx.progress.finish();
                        return Err(e);
                    }
                }
            }
            () = &mut stop => {
                summary.interrupted = true;
                break;
            }
        }
    }
    // Dropping the stream cancels the files in progress: each is in the
    // manifest as sending (sent again under its key) or accepted (its
    // result fetched) for the next run.
    drop(files);
    ctx.progress.finish();
    summary.remaining = total - finished;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.failed.sort_by(|a, b| a.path.cmp(&b.path));
    print_summary(&summary, args.json);
    Ok(summary)
}

/// Resolves at Ctrl-C or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn auth_headers(args: &UploadArgs) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::new();
    if let Some(key) = &args.api_key {
        let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| Error::Config("the API key holds characters a header cannot".into()))?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    if let Some(tenant) = &args.tenant {
        let v = HeaderValue::from_str(tenant)
            .map_err(|_| Error::Config("the tenant holds characters a header cannot".into()))?;
        headers.insert("x-tenant", v);
    }
    Ok(headers)
}

fn post_url(args: &UploadArgs) -> Result<reqwest::Url, Error> {
    let base = args.url.trim_end_matches('/');
    let mut url = reqwest::Url::parse(&format!("{base}/v1/images"))
        .map_err(|e| Error::Config(format!("server URL {}: {e}", args.url)))?;
    if let Some(t) = &args.transform {
        url.query_pairs_mut().append_pair("transform", t);
    }
    if let Some(p) = &args.preset {
        url.query_pairs_mut().append_pair("preset", p);
    }
    Ok(url)
}

/// Take one file as far as it goes: skip it, send it, fetch its result.
/// Errors are the run's (manifest, output directory); the file's own
/// failures are [`Outcome::Failed`].
async fn process(ctx: &Ctx, input: walk::Input) -> Result<Outcome, Error> {
    let path = input.file.clone();
    let data = match tokio::fs::read(&path).await {
        Ok(d) => Bytes::from(d),
        Err(e) => {
            return Ok(Outcome::Failed(Reason {
                code: "unreadable".into(),
                message: format!("cannot read {}: {e}", path.display()),
            }));
        }
    };
    let hash_of = data.clone();
    let sha256 = tokio::task::spawn_blocking(move || pipeline_core::job::sha256_hex(&hash_of))
        .await
        .map_err(|e| Error::Config(format!("hashing: {e}")))?;
    let mut entry = match ctx.manifest.get(&input.rel) {
        Some(e) if e.sha256 == sha256 && e.transform == ctx.transform => e.clone(),
        // New, changed since the last run, or asked with another
        // transform: a new job.
        _ => Entry {
            path: input.rel.clone(),
            sha256,
            size: data.len() as u64,
            transform: ctx.transform.clone(),
            key: Uuid::now_v7(),
            id: None,
            state: State::Sending,
            output: None,
            reason: None,
        },
    };
    match entry.state {
        State::Done => {
            if entry
                .output
                .as_deref()
                .is_some_and(|o| ctx.out.join(o).is_file())
            {
                ctx.progress.carried(entry.size);
                return Ok(Outcome::AlreadyDone);
            }
            // The result was removed since: fetch it again (the job is
            // the same; the server still has it or says it does not).
            entry.state = State::Accepted;
        }
        State::Failed if !ctx.retry_failed => {
            ctx.progress.carried(entry.size);
            let reason = entry.reason.clone().unwrap_or_else(|| Reason {
                code: "failed".into(),
                message: "failed in an earlier run".into(),
            });
            return Ok(Outcome::Failed(reason));
        }
        State::Failed => {
            entry = Entry {
                key: Uuid::now_v7(),
                id: None,
                state: State::Sending,
                reason: None,
                output: None,
                ..entry
            };
        }
        State::Sending | State::Accepted => {}
    }
    let mut bytes_sent = 0;
    if entry.state == State::Sending {
        ctx.manifest.record(&entry)?;
        let sent = {
            let _permit = ctx
                .uploads
                .acquire()
                .await
                .map_err(|e| Error::Config(format!("upload slots: {e}")))?;
            send(ctx, &input, &entry, data).await
        };
        match sent {
            Ok((n, id)) => {
                bytes_sent = n;
                entry.id = Some(id);
                entry.state = State::Accepted;
                ctx.manifest.record(&entry)?;
            }
            Err(reason) if RUN_LEVEL.contains(&reason.code.as_str()) => {
                // Every other file would get the same answer.
                return Err(Error::InvalidInput(format!(
                    "the server refused the upload: {} ({})",
                    reason.message, reason.code
                )));
            }
            Err(reason) => return fail(ctx, entry, reason),
        }
    } else {
        // Sent by an earlier run.
        ctx.progress.carried(entry.size);
    }
    match fetch(ctx, &entry).await {
        Ok(output) => {
            entry.state = State::Done;
            entry.output = Some(output);
            ctx.manifest.record(&entry)?;
            Ok(Outcome::Done { bytes_sent })
        }
        Err(Fetch::Failed(reason)) => fail(ctx, entry, reason),
        Err(Fetch::Fatal(e)) => Err(e),
    }
}

/// Record `entry` as failed. A failure of the transport (the server
/// stayed unreachable or busy) is not recorded: the next run tries again.
fn fail(ctx: &Ctx, mut entry: Entry, reason: Reason) -> Result<Outcome, Error> {
    if !TRANSIENT.contains(&reason.code.as_str()) {
        entry.state = State::Failed;
        entry.reason = Some(reason.clone());
        ctx.manifest.record(&entry)?;
    }
    Ok(Outcome::Failed(reason))
}

/// Refusals that are about the run, not the file (the spec, the key, the
/// URL): they stop the run.
const RUN_LEVEL: &[&str] = &[
    "key_ignored",
    "invalid_idempotency_key",
    "invalid_input",
    "invalid_tenant",
    "unauthorized",
    "forbidden",
    "missing_key",
    "invalid_key",
    "key_expired",
    "key_revoked",
    "wrong_tenant",
    "missing_tenant",
    "invalid_scopes",
    "http_401",
    "http_403",
    "http_404",
    "not_found",
    "http_405",
];

/// Failure codes of this client that a later run may get past.
const TRANSIENT: &[&str] = &["unreachable", "busy", "result_timeout", "server_error"];

/// Upload one file under the entry's key; the bytes sent and the job id,
/// or why not.
async fn send(
    ctx: &Ctx,
    input: &walk::Input,
    entry: &Entry,
    data: Bytes,
) -> Result<(u64, Uuid), Reason> {
    let name = input
        .rel
        .rsplit('/')
        .next()
        .unwrap_or(&input.rel)
        .to_string();
    let len = data.len() as u64;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let part =
            reqwest::multipart::Part::stream_with_length(data.clone(), len).file_name(name.clone());
        let form = reqwest::multipart::Form::new().part("files", part);
        let sent = ctx
            .client
            .post(ctx.post_url.clone())
            .header("idempotency-key", entry.key.to_string())
            .timeout(upload_timeout(len))
            .multipart(form)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                if attempt >= ctx.retries {
                    return Err(reason(
                        "unreachable",
                        format!("upload failed: {}", chain(&e)),
                    ));
                }
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        };
        let status = resp.status();
        if status == StatusCode::ACCEPTED || status == StatusCode::OK {
            ctx.progress.bytes(len);
            let echoed = resp
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == entry.key.to_string());
            let answer: serde_json::Value = resp.json().await.unwrap_or_default();
            let id = answer["images"][0]["id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok());
            return match id {
                Some(id) if echoed => Ok((len, id)),
                _ => Err(reason(
                    "key_ignored",
                    format!(
                        "the server did not confirm Idempotency-Key {} (job {}): it (or a proxy before it) ignores the key, so a resumed run could send files twice",
                        entry.key, answer["images"][0]["id"]
                    ),
                )),
            };
        }
        let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
        let err = error_of(resp).await;
        let retry = matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) || (status == StatusCode::CONFLICT && err.code == "idempotency_key_in_use")
            || status.is_server_error();
        if !retry {
            // Refused for good: its bytes were sent all the same.
            ctx.progress.bytes(len);
            return Err(err);
        }
        if attempt >= ctx.retries {
            let code = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
                "server_error"
            } else {
                "busy"
            };
            return Err(reason(
                code,
                format!("{} after {attempt} attempts: {}", status, err.message),
            ));
        }
        ctx.progress.note_wait(&input.rel, status.as_u16(), wait);
        tokio::time::sleep(wait).await;
    }
}

enum Fetch {
    Failed(Reason),
    Fatal(Error),
}

/// Wait for the job's result and write it under `--out`; its path there.
async fn fetch(ctx: &Ctx, entry: &Entry) -> Result<String, Fetch> {
    let job = entry.id.unwrap_or(entry.key);
    let url = format!("{}/v1/images/{job}/result?wait=30", ctx.base);
    let deadline = Instant::now() + ctx.result_timeout;
    let mut attempt = 0;
    loop {
        if Instant::now() >= deadline {
            return Err(Fetch::Failed(reason(
                "result_timeout",
                format!(
                    "no result within {} s (job {})",
                    ctx.result_timeout.as_secs(),
                    job
                ),
            )));
        }
        let asked = Instant::now();
        let resp = match ctx
            .client
            .get(&url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                attempt += 1;
                if attempt >= ctx.retries {
                    return Err(Fetch::Failed(reason(
                        "unreachable",
                        format!("result fetch failed: {}", chain(&e)),
                    )));
                }
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        };
        match resp.status() {
            StatusCode::OK => {
                let content_type = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let bytes = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        attempt += 1;
                        if attempt >= ctx.retries {
                            return Err(Fetch::Failed(reason(
                                "unreachable",
                                format!("result fetch failed: {e}"),
                            )));
                        }
                        continue;
                    }
                };
                let rel = ctx.outputs.claim(&entry.path, &content_type);
                write_atomically(&ctx.out.join(&rel), &bytes)
                    .await
                    .map_err(Fetch::Fatal)?;
                return Ok(rel);
            }
            StatusCode::ACCEPTED => {
                // A server that answers at once instead of waiting (or a
                // proxy cutting the long poll short) is asked again after
                // its Retry-After, not in a tight loop.
                let pause = retry_after(resp.headers()).unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(pause.saturating_sub(asked.elapsed())).await;
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                // Too many waits open for the tenant, or a busy server:
                // asked again after its Retry-After, until the deadline.
                let pause = retry_after(resp.headers()).unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(pause).await;
            }
            StatusCode::UNPROCESSABLE_ENTITY => {
                let err = error_of(resp).await;
                return Err(Fetch::Failed(err));
            }
            StatusCode::NOT_FOUND => {
                return Err(Fetch::Failed(reason(
                    "job_gone",
                    format!(
                        "the server no longer knows job {} (expired or deleted); run with --retry-failed to send the file again",
                        job
                    ),
                )));
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let err = error_of(resp).await;
                return Err(Fetch::Fatal(Error::InvalidInput(format!(
                    "the server refused to give results: {} ({})",
                    err.message, err.code
                ))));
            }
            _ => {
                // Busy, a proxy's error, a server error: asked again, and
                // left for the next run when it lasts.
                let wait = retry_after(resp.headers());
                let err = error_of(resp).await;
                attempt += 1;
                if attempt >= ctx.retries {
                    return Err(Fetch::Failed(reason("server_error", err.message)));
                }
                tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
            }
        }
    }
}

/// An error with its causes (reqwest's own message does not say
/// "connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Fail fast when the server cannot be reached at all.
async fn preflight(client: &reqwest::Client, base: &str) -> Result<(), Error> {
    let url = format!("{base}/healthz");
    match client
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(Error::Unavailable(format!(
            "{url} answered {}: is this a pipeline server?",
            r.status()
        ))),
        Err(e) => Err(Error::Unavailable(format!(
            "cannot reach the server at {base}: {}",
            chain(&e)
        ))),
    }
}

fn reason(code: &str, message: String) -> Reason {
    Reason {
        code: code.into(),
        message,
    }
}

/// The server's error (`{"error":{"code","message","reason"}}`), or the
/// status when the body is not one (a proxy's page, say). A failed job's
/// code is its reason (`corrupt_image`, `timeout`...).
async fn error_of(resp: reqwest::Response) -> Reason {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let err = parsed.as_ref().map(|v| &v["error"]);
    let code = err
        .and_then(|e| e["reason"].as_str().or_else(|| e["code"].as_str()))
        .map(str::to_string);
    let message = err.and_then(|e| e["message"].as_str()).map(str::to_string);
    match (code, message) {
        (Some(code), Some(message)) => Reason { code, message },
        _ => Reason {
            code: format!("http_{}", status.as_u16()),
            message: format!(
                "{status}: {}",
                text.chars().take(200).collect::<String>().trim()
            ),
        },
    }
}

/// `Retry-After` in seconds, capped at a minute.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.clamp(1, 60)))
}

/// Longest an upload of `len` bytes may take: a minute, plus the time to
/// send it at 256 KiB/s.
fn upload_timeout(len: u64) -> Duration {
    Duration::from_secs(60 + len / (256 * 1024))
}

/// Growing pause between attempts of an unreachable server.
fn backoff(attempt: u32) -> Duration {
    pipeline_core::Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
        .with_jitter()
        .delay(attempt)
}

/// Write `bytes` to `path` through a temporary file renamed over it, so a
/// reader (or the next run) never sees half a result.
async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.part", Uuid::now_v7().simple()));
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, bytes).await.map_err(io)?;
    if let Err(e) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io(e));
    }
    Ok(())
}

/// Failures listed by the text summary, at most.
const SHOWN_FAILURES: usize = 20;

fn print_summary(s: &Summary, json: bool) {
    if json {
        match serde_json::to_string_pretty(s) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: summary: {e}"),
        }
        return;
    }
    let rate = (s.done as f64) / s.seconds.max(1e-3);
    let mb = s.bytes_sent as f64 / 1e6;
    eprintln!(
        "{}: {} done ({} in earlier runs), {} failed, {} skipped, {} remaining; {:.1} MB sent in {:.1} s ({:.1} files/s, {:.1} MB/s)",
        if s.interrupted {
            "interrupted"
        } else {
            "finished"
        },
        s.done + s.already_done,
        s.already_done,
        s.failed.len(),
        s.skipped.len(),
        s.remaining,
        mb,
        s.seconds,
        rate,
        mb / s.seconds.max(1e-3),
    );
    for f in s.failed.iter().take(SHOWN_FAILURES) {
        eprintln!("  failed {}: {} ({})", f.path, f.message, f.code);
    }
    if s.failed.len() > SHOWN_FAILURES {
        eprintln!(
            "  ... and {} more (--json lists them all)",
            s.failed.len() - SHOWN_FAILURES
        );
    }
    if s.interrupted || !s.failed.is_empty() {
        eprintln!(
            "  run the same command again to resume (manifest {})",
            s.manifest
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("0"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(1)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("9999"),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(60)));
    }
}
