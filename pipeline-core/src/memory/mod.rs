//! In-memory backends: always compiled, no servers, for one process and tests.

mod archive;
mod blobs;
mod broker;
mod results;

pub use archive::MemoryArchive;
pub use blobs::MemoryBlobStore;
pub use broker::{MemoryBroker, MemoryBrokerConfig};
pub use results::MemoryResultStore;

use std::sync::{Mutex, MutexGuard};

/// Lock a mutex, ignoring poisoning: every critical section here leaves the
/// data consistent, so a panic elsewhere does not invalidate it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
