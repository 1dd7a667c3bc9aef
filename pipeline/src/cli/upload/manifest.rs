//! The resume manifest of `pipeline upload`: one JSON line per change of a
//! file's state, appended as it happens, so that a run stopped at any point
//! (Ctrl-C, a crash, a kill) knows on the next start what each file became.
//!
//! A file is identified by its path under its input root and its content
//! hash: a file changed since the last run is a new file. Before its upload
//! a file is recorded as `sending` with the idempotency key the upload
//! carries, so an upload whose answer was lost is sent again under the same
//! key and the server answers with the job it made the first time.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pipeline_core::Error;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The upload was sent (or about to be) under `key`; no answer seen.
    Sending,
    /// The server accepted it as job `key`; the result is not fetched yet.
    Accepted,
    /// The result is in the output directory.
    Done,
    /// The server refused the file or the job failed: `reason` says why.
    Failed,
}

/// Why a file failed: the server's stable code and its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// Stable code (`corrupt_image`, `payload_too_large`...).
    pub code: String,
    /// For a person.
    pub message: String,
}

/// Attempts at the manifest's lock, 10 ms apart.
const LOCK_TRIES: u32 = 100;

/// One line of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path under the input root, `/`-separated.
    pub path: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The query the file was sent with (`transform=...`, `preset=...`,
    /// or empty for the server's default): another one is another job.
    #[serde(default)]
    pub transform: String,
    /// The idempotency key of the upload.
    pub key: Uuid,
    /// The job the server made of it (known once it answered; the server
    /// derives it from the tenant and the key, so a resend learns it too).
    /// Manifests of servers that made the key the job id have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Where the file stands.
    pub state: State,
    /// The result's path under the output directory (when done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Why it failed (when failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// The manifest file: the last entry of each path, and the file appended to.
#[derive(Debug)]
pub struct Manifest {
    path: PathBuf,
    file: Mutex<File>,
    last: HashMap<String, Entry>,
    /// Held (locked) while the manifest is open.
    _lock: File,
}

impl Manifest {
    /// Open (or create) the manifest at `path`, read what earlier runs
    /// recorded, and rewrite it with one line per file.
    ///
    /// A line that does not parse can only be the last one of a run killed
    /// while writing it: it is dropped (that file's previous state counts).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let io = |what: &str, e: std::io::Error| {
            Error::Config(format!("manifest {}: {what}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create its directory", e))?;
        }
        // One run at a time: another one's compaction would swap the file
        // under this one's appends.
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("cannot create its lock file", e))?;
        // A lock can outlive its holder by a moment (a process forked while
        // it was held keeps it until it execs): try for a second.
        let mut tries = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < LOCK_TRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Config(format!(
                        "manifest {} is in use by another pipeline upload",
                        path.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io("cannot lock", e)),
            }
        }
        let mut last = HashMap::new();
        match std::fs::read(path) {
            // Lines as bytes: a line torn in the middle of a character
            // must not stop the others from being read.
            Ok(bytes) => {
                for line in bytes.split(|b| *b == b'\n') {
                    if let Ok(entry) = serde_json::from_slice::<Entry>(line) {
                        last.insert(entry.path.clone(), entry);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot read", e)),
        }
        // Compact: one line per file, written aside and renamed over, so a
        // crash here leaves the old manifest or the new one.
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut out = File::create(&tmp).map_err(|e| io("cannot write", e))?;
            let mut entries: Vec<&Entry> = last.values().collect();
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            for e in entries {
                writeln!(out, "{}", line_of(e)?).map_err(|e| io("cannot write", e))?;
            }
            out.sync_all().map_err(|e| io("cannot write", e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| io("cannot replace", e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io("cannot open", e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            last,
            _lock: lock,
        })
    }

    /// What the earlier runs recorded last for `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.last.get(path)
    }

    /// `(output, path)` of every file with a result path.
    pub fn outputs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.last
            .values()
            .filter_map(|e| Some((e.output.as_deref()?, e.path.as_str())))
    }

    /// Append `entry` (one `write` of a whole line, so lines of concurrent
    /// files never interleave). A `sending` entry is on disk before this
    /// returns (its key must survive a power cut: without it, the file
    /// would be sent again under a new key).
    pub fn record(&self, entry: &Entry) -> Result<(), Error> {
        let mut line = line_of(entry)?;
        line.push('\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| Error::Config("manifest lock poisoned".into()))?;
        let failed = |e: std::io::Error| {
            Error::Config(format!(
                "manifest {}: cannot write: {e}",
                self.path.display()
            ))
        };
        file.write_all(line.as_bytes()).map_err(failed)?;
        if entry.state == State::Sending {
            file.sync_data().map_err(failed)?;
        }
        Ok(())
    }
}

fn line_of(entry: &Entry) -> Result<String, Error> {
    serde_json::to_string(entry).map_err(|e| Error::Config(format!("manifest entry: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, state: State) -> Entry {
        Entry {
            path: path.into(),
            sha256: "ab".into(),
            size: 2,
            transform: String::new(),
            key: Uuid::now_v7(),
            id: None,
            state,
            output: None,
            reason: None,
        }
    }

    #[test]
    fn the_last_entry_of_a_path_wins_and_a_torn_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let sending = entry("a.jpg", State::Sending);
        let done = Entry {
            state: State::Done,
            output: Some("a.jpg".into()),
            ..sending.clone()
        };
        {
            let m = Manifest::open(&path).unwrap();
            assert!(m.get("a.jpg").is_none());
            m.record(&sending).unwrap();
            m.record(&entry("b.jpg", State::Accepted)).unwrap();
            m.record(&done).unwrap();
        }
        // A run killed in the middle of a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"path":"b.jpg","sha256":"ab","si"#)
            .unwrap();
        drop(f);

        let m = Manifest::open(&path).unwrap();
        assert_eq!(m.get("a.jpg"), Some(&done));
        assert_eq!(m.get("b.jpg").map(|e| e.state), Some(State::Accepted));
        // Compacted: one line per file, the torn one gone.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn one_run_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let first = Manifest::open(&path).unwrap();
        let err = Manifest::open(&path).unwrap_err().to_string();
        assert!(err.contains("in use by another pipeline upload"), "{err}");
        drop(first);
        Manifest::open(&path).unwrap();
    }
}
