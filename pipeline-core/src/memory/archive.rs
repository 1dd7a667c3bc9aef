use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use uuid::Uuid;

use super::lock;
use crate::auth::{ApiKey, KeyStore};
use crate::envelope::now_ms;
use crate::error::{Error, Result};
use crate::store::{
    ActivityEntry, ActivityLog, ArchiveRecord, Blob, Deletion, Expiry, ImageRecord, ImageStore,
    Page,
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
    /// Deleted jobs: tenant and when.
    deleted: HashMap<Uuid, (String, i64)>,
    /// API keys by id.
    keys: BTreeMap<String, ApiKey>,
}

impl State {
    /// Drop the blobs among `keys` no job refers to any more; all of them
    /// are released.
    fn release(&mut self, keys: [Option<String>; 2]) -> Vec<String> {
        let mut released = Vec::new();
        for key in keys.into_iter().flatten() {
            let used = self
                .images
                .values()
                .any(|(_, o, r)| o.as_ref() == Some(&key) || r.as_ref() == Some(&key));
            if !used && !released.contains(&key) {
                self.blobs.remove(&key);
                released.push(key);
            }
        }
        released
    }
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
        for r in records {
            r.check()?;
        }
        let mut state = lock(&self.state);
        let now = now_ms();
        for r in records {
            if state.images.contains_key(&r.job_id) || state.deleted.contains_key(&r.job_id) {
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

    async fn delete(&self, job_id: Uuid, tenant: &str) -> Result<Deletion> {
        let mut state = lock(&self.state);
        if let Some((t, _)) = state.deleted.get(&job_id) {
            return Ok(Deletion {
                found: t == tenant,
                released: Vec::new(),
            });
        }
        if state
            .images
            .get(&job_id)
            .is_none_or(|(r, _, _)| r.tenant != tenant)
        {
            return Ok(Deletion::default());
        }
        let Some((_, original, result)) = state.images.remove(&job_id) else {
            return Ok(Deletion::default());
        };
        state.deleted.insert(job_id, (tenant.to_string(), now_ms()));
        Ok(Deletion {
            found: true,
            released: state.release([original, result]),
        })
    }

    async fn expire(&self, finished_before_ms: i64, limit: usize) -> Result<Expiry> {
        let mut state = lock(&self.state);
        let old: Vec<Uuid> = state
            .images
            .iter()
            .filter(|(_, (r, _, _))| r.finished_at_ms < finished_before_ms)
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        let mut expiry = Expiry::default();
        for id in old {
            if let Some((_, original, result)) = state.images.remove(&id) {
                expiry.jobs += 1;
                let released = state.release([original, result]);
                expiry.released.extend(released);
            }
        }
        let room = limit.saturating_sub(expiry.jobs as usize);
        let marks: Vec<Uuid> = state
            .deleted
            .iter()
            .filter(|(_, (_, at))| *at < finished_before_ms)
            .map(|(id, _)| *id)
            .take(room)
            .collect();
        for id in marks {
            state.deleted.remove(&id);
            expiry.marks += 1;
        }
        Ok(expiry)
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

#[async_trait]
impl KeyStore for MemoryArchive {
    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let mut state = lock(&self.state);
        if state.keys.contains_key(&key.id) {
            return Err(Error::AlreadyExists(format!("key {}", key.id)));
        }
        state.keys.insert(key.id.clone(), key.clone());
        Ok(())
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKey>> {
        Ok(lock(&self.state).keys.get(id).cloned())
    }

    async fn keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let mut keys: Vec<ApiKey> = lock(&self.state)
            .keys
            .values()
            .filter(|k| tenant.is_none_or(|t| k.tenant == t))
            .cloned()
            .collect();
        keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, id: &str, at_ms: i64) -> Result<bool> {
        let mut state = lock(&self.state);
        match state.keys.get_mut(id) {
            Some(k) => {
                k.revoked_at_ms.get_or_insert(at_ms);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
