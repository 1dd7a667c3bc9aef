//! [`ResultStore`] on Redis: one hash per job with a TTL, completions
//! announced on a Pub/Sub channel that wakes waiters in every API process.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::prelude::{
    ClientLike, EventInterface, HashesInterface, KeysInterface, LuaInterface, PubsubInterface,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use pipeline_core::results::{JobStatus, JobSummary, ResultStore};
use pipeline_core::store::{Blob, JobFailure, JobInfo, JobState};
use pipeline_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{new_client, redact, redis_error};

/// Writes a status unless a terminal one is there; announces terminal ones.
const PUT: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'state')
if cur == 'done' or cur == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'meta', ARGV[2], 'data', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[1] ~= 'pending' then redis.call('PUBLISH', ARGV[5], ARGV[2]) end
return 1
"#;

/// Everything of a [`JobStatus`] but the bytes.
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
}

impl Meta {
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

/// Result store shared by every API process through Redis.
pub struct RedisResultStore {
    client: Client,
    namespace: String,
    channel: String,
    done: broadcast::Sender<JobSummary>,
    _subscriber: SubscriberClient,
}

impl std::fmt::Debug for RedisResultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisResultStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisResultStore {
    /// Connect to `url` for `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let (config, _) = crate::config_from_url(url)?;
        let client = new_client(&config)?;
        client
            .init()
            .await
            .map_err(|e| redis_error(&format!("connect to {}", redact(url)), e))?;
        let subscriber = fred::prelude::Builder::from_config(config)
            .set_policy(fred::prelude::ReconnectPolicy::new_exponential(
                0, 100, 5_000, 2,
            ))
            .build_subscriber_client()
            .map_err(|e| Error::Config(format!("Redis subscriber: {e}")))?;
        subscriber
            .init()
            .await
            .map_err(|e| redis_error("connect the subscriber", e))?;
        // Subscriptions are restored after every reconnection.
        drop(subscriber.manage_subscriptions());
        let channel = format!("{{{namespace}}}:done");
        let (done, _) = broadcast::channel(4096);
        let mut messages = subscriber.message_rx();
        let tx = done.clone();
        let wanted = channel.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(m) if *m.channel == *wanted => {
                        let meta: Option<Meta> =
                            m.value.as_str().and_then(|s| serde_json::from_str(&s).ok());
                        if let Some(meta) = meta {
                            let _ = tx.send(meta.into_status(None).summary());
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        subscriber
            .subscribe(channel.clone())
            .await
            .map_err(|e| redis_error("SUBSCRIBE", e))?;
        Ok(Self {
            client,
            namespace: namespace.to_string(),
            channel,
            done,
            _subscriber: subscriber,
        })
    }

    /// Delete every job record of this namespace (tests, decommissioning).
    /// Returns how many there were.
    pub async fn delete_all(&self) -> Result<u64> {
        // Glob-escape the namespace; the records share its hash tag, so a
        // cluster client scans the one node that holds them.
        let mut pattern = String::new();
        for c in format!("{{{}}}:job:", self.namespace).chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let keys: Vec<fred::types::Key> = self
            .client
            .scan_buffered(pattern, Some(500), None)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| redis_error("SCAN", e))?;
        let mut deleted = 0;
        for chunk in keys.chunks(500) {
            let n: u64 = self
                .client
                .del(chunk.to_vec())
                .await
                .map_err(|e| redis_error("DEL", e))?;
            deleted += n;
        }
        Ok(deleted)
    }

    fn key(&self, job: Uuid) -> String {
        format!("{{{}}}:job:{job}", self.namespace)
    }

    fn decode_meta(job: Uuid, meta: &[u8]) -> Result<Meta> {
        serde_json::from_slice(meta)
            .map_err(|e| Error::backend("redis", format!("bad result record of {job}: {e}"), false))
    }

    async fn current(&self, job: Uuid) -> Result<Option<JobStatus>> {
        let fields: HashMap<String, Bytes> = self
            .client
            .hgetall(self.key(job))
            .await
            .map_err(|e| redis_error("HGETALL", e))?;
        let Some(meta) = fields.get("meta") else {
            return Ok(None);
        };
        let meta = Self::decode_meta(job, meta)?;
        let result = match (&meta.result_type, fields.get("data")) {
            (Some(t), Some(data)) => Some(Blob {
                content_type: t.clone(),
                data: data.clone(),
            }),
            _ => None,
        };
        Ok(Some(meta.into_status(result)))
    }
}

#[async_trait]
impl ResultStore for RedisResultStore {
    async fn put(&self, status: JobStatus, ttl: Duration) -> Result<()> {
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
        };
        let meta = serde_json::to_string(&meta)
            .map_err(|e| Error::backend("redis", format!("encode a status: {e}"), false))?;
        let data = status.result.map(|b| b.data).unwrap_or_default();
        let args: Vec<fred::prelude::Value> = vec![
            status.state.as_str().into(),
            meta.into(),
            data.into(),
            (ttl.as_millis().max(1) as i64).into(),
            self.channel.clone().into(),
        ];
        let _: i64 = self
            .client
            .eval(PUT, vec![self.key(status.job_id)], args)
            .await
            .map_err(|e| redis_error("store a status", e))?;
        Ok(())
    }

    async fn get(&self, job_id: Uuid) -> Result<Option<JobStatus>> {
        self.current(job_id).await
    }

    /// Reads the `meta` field only: the bytes stay in Redis.
    async fn summary(&self, job_id: Uuid) -> Result<Option<JobSummary>> {
        let meta: Option<Bytes> = self
            .client
            .hget(self.key(job_id), "meta")
            .await
            .map_err(|e| redis_error("HGET", e))?;
        meta.map(|m| Ok(Self::decode_meta(job_id, &m)?.into_status(None).summary()))
            .transpose()
    }

    async fn wait(&self, job_id: Uuid, timeout: Duration) -> Result<Option<JobStatus>> {
        // Woken by the announcements; a missed one (reconnection) is
        // caught by looking again every 2 s.
        pipeline_core::results::wait_announced(
            &self.done,
            job_id,
            timeout,
            Duration::from_secs(2),
            || self.current(job_id),
        )
        .await
    }

    async fn completions(&self) -> Result<BoxStream<'static, JobSummary>> {
        Ok(pipeline_core::results::completion_stream(&self.done))
    }

    async fn ready(&self) -> Result<()> {
        crate::bounded_ping(&self.client).await
    }

    async fn delete(&self, job_id: Uuid) -> Result<()> {
        let _: i64 = self
            .client
            .del(self.key(job_id))
            .await
            .map_err(|e| redis_error("DEL", e))?;
        Ok(())
    }
}
