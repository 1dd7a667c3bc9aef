use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

use super::lock;
use crate::error::Result;
use crate::results::{JobStatus, JobSummary, ResultStore};

/// Result store for one process: a map with expiry and a broadcast of completions.
#[derive(Debug)]
pub struct MemoryResultStore {
    entries: Mutex<Entries>,
    done: broadcast::Sender<JobSummary>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Uuid, (JobStatus, Instant)>,
    puts_since_sweep: usize,
}

impl Default for MemoryResultStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryResultStore {
    /// An empty store.
    pub fn new() -> Self {
        let (done, _) = broadcast::channel(4096);
        Self {
            entries: Mutex::new(Entries::default()),
            done,
        }
    }

    fn current(&self, job_id: Uuid) -> Option<JobStatus> {
        let entries = lock(&self.entries);
        entries
            .map
            .get(&job_id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(s, _)| s.clone())
    }
}

#[async_trait]
impl ResultStore for MemoryResultStore {
    async fn put(&self, status: JobStatus, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let terminal = status.state.is_terminal();
        let summary = terminal.then(|| status.summary());
        {
            let mut entries = lock(&self.entries);
            if let Some((old, expires)) = entries.map.get(&status.job_id)
                && *expires > now
                && old.state.is_terminal()
            {
                return Ok(());
            }
            entries.map.insert(status.job_id, (status, now + ttl));
            entries.puts_since_sweep += 1;
            if entries.puts_since_sweep >= 1024 {
                entries.puts_since_sweep = 0;
                entries.map.retain(|_, (_, expires)| *expires > now);
            }
        }
        if let Some(summary) = summary {
            // No receiver is fine: nobody is waiting.
            let _ = self.done.send(summary);
        }
        Ok(())
    }

    async fn get(&self, job_id: Uuid) -> Result<Option<JobStatus>> {
        Ok(self.current(job_id))
    }

    async fn wait(&self, job_id: Uuid, timeout: Duration) -> Result<Option<JobStatus>> {
        let mut rx = self.done.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.current(job_id);
            match &status {
                None => return Ok(None),
                Some(s) if s.state.is_terminal() => return Ok(status),
                Some(_) => {}
            }
            // Wait for any completion (or lag), then look again.
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => return Ok(self.current(job_id)),
                    Ok(Ok(s)) if s.id != job_id => continue,
                    Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(self.current(job_id)),
                }
            }
        }
    }

    async fn completions(&self) -> Result<BoxStream<'static, JobSummary>> {
        Ok(crate::results::completion_stream(&self.done))
    }

    async fn ready(&self) -> Result<()> {
        Ok(())
    }

    async fn delete(&self, job_id: Uuid) -> Result<()> {
        lock(&self.entries).map.remove(&job_id);
        Ok(())
    }
}
