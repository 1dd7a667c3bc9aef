use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use uuid::Uuid;

use super::lock;
use crate::envelope::now_ms;
use crate::error::Result;
use crate::store::{
    ActivityEntry, ActivityLog, ArchiveRecord, Blob, ImageRecord, ImageStore, Page,
};

/// Archive and activity log in memory (tests, demos).
#[derive(Debug, Default)]
pub struct MemoryArchive {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Ordered by job id: v7 ids sort by time.
    images: BTreeMap<Uuid, (ImageRecord, Option<String>, Option<String>)>,
    blobs: HashMap<String, Blob>,
    activity: BTreeMap<Uuid, ActivityEntry>,
}

impl MemoryArchive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct blobs stored (for tests of deduplication).
    pub fn blob_count(&self) -> usize {
        lock(&self.state).blobs.len()
    }
}

#[async_trait]
impl ImageStore for MemoryArchive {
    async fn save(&self, records: &[ArchiveRecord]) -> Result<()> {
        let mut state = lock(&self.state);
        let now = now_ms();
        for r in records {
            if state.images.contains_key(&r.job_id) {
                continue;
            }
            let (original, result) = r.blob_keys();
            for (key, blob) in [(&original, &r.original), (&result, &r.result)] {
                if let (Some(k), Some(b)) = (key, blob) {
                    state.blobs.entry(k.clone()).or_insert_with(|| b.clone());
                }
            }
            let record = ImageRecord {
                job_id: r.job_id,
                tenant: r.tenant.clone(),
                state: r.state,
                spec: r.spec.clone(),
                original: r.info.original.clone(),
                result: r.info.result.clone(),
                error: r.error.clone(),
                worker: r.info.worker.clone(),
                submitted_at_ms: r.submitted_at_ms,
                finished_at_ms: r.finished_at_ms,
                archived_at_ms: now,
            };
            state.images.insert(r.job_id, (record, original, result));
        }
        Ok(())
    }

    async fn get(&self, job_id: Uuid) -> Result<Option<ImageRecord>> {
        Ok(lock(&self.state)
            .images
            .get(&job_id)
            .map(|(r, _, _)| r.clone()))
    }

    async fn original(&self, job_id: Uuid) -> Result<Option<Blob>> {
        let state = lock(&self.state);
        Ok(state
            .images
            .get(&job_id)
            .and_then(|(_, k, _)| k.as_ref())
            .and_then(|k| state.blobs.get(k).cloned()))
    }

    async fn result(&self, job_id: Uuid) -> Result<Option<Blob>> {
        let state = lock(&self.state);
        Ok(state
            .images
            .get(&job_id)
            .and_then(|(_, _, k)| k.as_ref())
            .and_then(|k| state.blobs.get(k).cloned()))
    }

    async fn referenced(&self, keys: &[String]) -> Result<std::collections::HashSet<String>> {
        let state = lock(&self.state);
        let used: std::collections::HashSet<&String> = state
            .images
            .values()
            .flat_map(|(_, o, r)| [o.as_ref(), r.as_ref()])
            .flatten()
            .collect();
        Ok(keys.iter().filter(|k| used.contains(k)).cloned().collect())
    }

    async fn list(&self, tenant: &str, cursor: Option<Uuid>, limit: usize) -> Result<Page> {
        let state = lock(&self.state);
        let limit = limit.max(1);
        let items: Vec<ImageRecord> = state
            .images
            .iter()
            .rev()
            .filter(|(id, _)| cursor.is_none_or(|c| **id < c))
            .filter(|(_, (r, _, _))| r.tenant == tenant)
            .take(limit + 1)
            .map(|(_, (r, _, _))| r.clone())
            .collect();
        Ok(Page::from_overfetch(items, limit))
    }

    async fn ready(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl ActivityLog for MemoryArchive {
    async fn append(&self, entries: &[ActivityEntry]) -> Result<()> {
        let mut state = lock(&self.state);
        for e in entries {
            state
                .activity
                .entry(e.message_id)
                .or_insert_with(|| e.clone());
        }
        Ok(())
    }

    async fn for_job(&self, job_id: Uuid) -> Result<Vec<ActivityEntry>> {
        let state = lock(&self.state);
        let mut out: Vec<ActivityEntry> = state
            .activity
            .values()
            .filter(|e| e.job_id == job_id)
            .cloned()
            .collect();
        out.sort_by_key(|e| (e.at_ms, e.message_id));
        Ok(out)
    }
}
