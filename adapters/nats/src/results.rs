//! [`ResultStore`] on JetStream key-value: one bucket per namespace, one
//! key per job. A terminal status is never replaced (compare-and-set on
//! the key's revision); completions reach every API process through a
//! watch of the bucket, which also wakes waiters (no polling).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use pipeline_core::envelope::now_ms;
use pipeline_core::results::{JobStatus, JobSummary, ResultStore};
use pipeline_core::store::{Blob, JobFailure, JobInfo, JobState};
use pipeline_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{check_namespace, connect_client, nats_error, parse_url};

/// How long the bucket keeps a key at most, whatever its status's TTL
/// (statuses expire by their own time before that).
const BUCKET_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

/// Tries of a compare-and-set before giving up (each loses only to another
/// writer of the same job).
const CAS_TRIES: usize = 16;

/// Everything of a [`JobStatus`] but the bytes, and its expiry.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    job_id: Uuid,
    tenant: String,
    state: JobState,
    spec: String,
    submitted_at_ms: i64,
    updated_at_ms: i64,
    info: Option<JobInfo>,
    error: Option<JobFailure>,
    result_type: Option<String>,
    expires_at_ms: i64,
}

impl Meta {
    fn expired(&self) -> bool {
        self.expires_at_ms <= now_ms()
    }

    fn into_status(self, result: Option<Blob>) -> JobStatus {
        JobStatus {
            job_id: self.job_id,
            tenant: self.tenant,
            state: self.state,
            spec: self.spec,
            submitted_at_ms: self.submitted_at_ms,
            updated_at_ms: self.updated_at_ms,
            result,
            info: self.info,
            error: self.error,
        }
    }
}

/// A value: the meta's length (4 bytes, big endian), the meta as JSON,
/// then the result's bytes.
fn encode(status: &JobStatus, ttl: Duration) -> Result<Bytes> {
    let meta = Meta {
        job_id: status.job_id,
        tenant: status.tenant.clone(),
        state: status.state,
        spec: status.spec.clone(),
        submitted_at_ms: status.submitted_at_ms,
        updated_at_ms: status.updated_at_ms,
        info: status.info.clone(),
        error: status.error.clone(),
        result_type: status.result.as_ref().map(|b| b.content_type.clone()),
        expires_at_ms: now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
    };
    let json = serde_json::to_vec(&meta)
        .map_err(|e| Error::backend("nats", format!("encode a status: {e}"), false))?;
    let data = status
        .result
        .as_ref()
        .map(|b| b.data.clone())
        .unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + json.len() + data.len());
    out.put_u32(u32::try_from(json.len()).unwrap_or(u32::MAX));
    out.put_slice(&json);
    out.put_slice(&data);
    Ok(out.freeze())
}

fn decode(value: &Bytes) -> Result<(Meta, Bytes)> {
    let bad = |why: &str| Error::backend("nats", format!("bad result record: {why}"), false);
    if value.len() < 4 {
        return Err(bad("too short"));
    }
    let len = u32::from_be_bytes([value[0], value[1], value[2], value[3]]) as usize;
    let json = value.get(4..4 + len).ok_or_else(|| bad("truncated"))?;
    let meta: Meta = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    Ok((meta, value.slice(4 + len..)))
}

/// Job statuses in a JetStream key-value bucket, shared by every API process.
pub struct NatsResultStore {
    client: async_nats::Client,
    store: kv::Store,
    bucket: String,
    done: broadcast::Sender<JobSummary>,
    _watch: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NatsResultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsResultStore")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl Drop for NatsResultStore {
    fn drop(&mut self) {
        self._watch.abort();
    }
}

impl NatsResultStore {
    /// Connect to `url` (as for the broker: `storage`, `replicas`) and
    /// open or create the bucket `<namespace>-results`.
    pub async fn connect(url: &str, namespace: &str, client_name: &str) -> Result<Self> {
        check_namespace(namespace)?;
        let (u, options) = parse_url(url)?;
        let client = connect_client(&u, client_name).await?;
        let js = jetstream::new(client.clone());
        let bucket = format!("{namespace}-results");
        // The bucket's stream is made here as the client library would
        // make it: its `create_key_value` first asks for the account's
        // details in a form servers before 2.10 do not answer.
        js.get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: BUCKET_MAX_AGE,
            storage: options.storage,
            num_replicas: options.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error(&format!("create the bucket {bucket}"), e))?;
        let store = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| nats_error(&format!("open the bucket {bucket}"), e))?;
        let (done, _) = broadcast::channel(4096);
        let mut changes = store
            .watch_all()
            .await
            .map_err(|e| nats_error("watch the results", e))?;
        let tx = done.clone();
        let watch = tokio::spawn(async move {
            // The watch rebuilds itself after a reconnection; errors on
            // the way are skipped.
            while let Some(change) = changes.next().await {
                let Ok(entry) = change else { continue };
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                if let Ok((meta, _)) = decode(&entry.value)
                    && meta.state.is_terminal()
                {
                    let _ = tx.send(meta.into_status(None).summary());
                }
            }
        });
        Ok(Self {
            client,
            store,
            bucket,
            done,
            _watch: watch,
        })
    }

    /// Delete the bucket and every status in it (tests, decommissioning).
    pub async fn delete_all(&self) -> Result<()> {
        let js = jetstream::new(self.client.clone());
        match js.delete_key_value(&self.bucket).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(nats_error("delete the bucket", e)),
        }
    }

    /// The live (not expired) record of `job`, with its revision.
    async fn current(&self, job: Uuid) -> Result<Option<(Meta, Bytes, u64)>> {
        let entry = self
            .store
            .entry(job.to_string())
            .await
            .map_err(|e| nats_error("read a status", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let (meta, data) = decode(&entry.value)?;
        if meta.expired() {
            return Ok(None);
        }
        Ok(Some((meta, data, entry.revision)))
    }

    async fn status(&self, job: Uuid) -> Result<Option<JobStatus>> {
        Ok(self.current(job).await?.map(|(meta, data, _)| {
            let result = meta
                .result_type
                .clone()
                .map(|content_type| Blob { content_type, data });
            meta.into_status(result)
        }))
    }
}

#[async_trait]
impl ResultStore for NatsResultStore {
    async fn put(&self, status: JobStatus, ttl: Duration) -> Result<()> {
        let key = status.job_id.to_string();
        let value = encode(&status, ttl)?;
        for _ in 0..CAS_TRIES {
            let entry = self
                .store
                .entry(key.clone())
                .await
                .map_err(|e| nats_error("read a status", e))?;
            let written = match entry.filter(|e| e.operation == kv::Operation::Put) {
                Some(e) => {
                    if let Ok((old, _)) = decode(&e.value)
                        && !old.expired()
                        && old.state.is_terminal()
                    {
                        // The first result wins.
                        return Ok(());
                    }
                    match self
                        .store
                        .update(key.clone(), value.clone(), e.revision)
                        .await
                    {
                        Ok(_) => true,
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                        Err(e) => return Err(nats_error("store a status", e)),
                    }
                }
                None => match self.store.create(key.clone(), value.clone()).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(nats_error("store a status", e)),
                },
            };
            if written {
                return Ok(());
            }
        }
        Err(Error::Unavailable(format!(
            "the status of {key} kept changing under {CAS_TRIES} writes"
        )))
    }

    async fn get(&self, job_id: Uuid) -> Result<Option<JobStatus>> {
        self.status(job_id).await
    }

    async fn wait(&self, job_id: Uuid, timeout: Duration) -> Result<Option<JobStatus>> {
        // Woken by the announcements; a missed one (reconnection) is
        // caught by looking again every 2 s.
        pipeline_core::results::wait_announced(
            &self.done,
            job_id,
            timeout,
            Duration::from_secs(2),
            || self.status(job_id),
        )
        .await
    }

    async fn completions(&self) -> Result<BoxStream<'static, JobSummary>> {
        Ok(pipeline_core::results::completion_stream(&self.done))
    }

    async fn ready(&self) -> Result<()> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Error::Unavailable(format!("NATS connection is {state:?}"))),
        }
    }

    async fn delete(&self, job_id: Uuid) -> Result<()> {
        self.store
            .purge(job_id.to_string())
            .await
            .map_err(|e| nats_error("delete a status", e))
    }
}
