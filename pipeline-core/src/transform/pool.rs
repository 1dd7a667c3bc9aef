use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{Error, ImageErrorKind, Result};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads for CPU-bound work (normally one per core).
///
/// Threads take the next job from a shared queue themselves, so a core never
/// waits for the async runtime to hand it work while jobs are queued. A
/// panic inside a job becomes an [`ImageErrorKind::Panicked`] error for that
/// job only; the thread carries on. The threads end when the last clone of
/// the pool is dropped.
#[derive(Debug, Clone)]
pub struct BlockingPool {
    jobs: mpsc::Sender<Job>,
    size: usize,
}

impl BlockingPool {
    /// A pool of `size` threads.
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..size {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("pipeline-cpu-{n}"))
                .spawn(move || {
                    loop {
                        // Hold the lock only to take one job.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a CPU thread; the pool runs with fewer");
            }
        }
        Self { jobs, size }
    }

    /// A pool with one thread per available core.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// How many jobs run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Run `f` on a pool thread and wait for its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(Error::image(
                    ImageErrorKind::Panicked,
                    format!("the decoder or a transform panicked: {msg}"),
                ))
            });
            // The caller may have gone away (cancelled); nothing to do then.
            let _ = tx.send(outcome);
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::Closed("the CPU pool has no threads".into()))?;
        rx.await
            .map_err(|_| Error::Closed("the CPU pool dropped a job".into()))?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[tokio::test]
    async fn panic_is_contained() {
        let pool = BlockingPool::new(2);
        let err = pool.run::<(), _>(|| panic!("boom")).await.unwrap_err();
        assert_eq!(err.code(), "panicked");
        assert!(err.to_string().contains("boom"));
        assert_eq!(pool.run(|| Ok(41 + 1)).await.unwrap(), 42);
    }

    #[tokio::test]
    async fn at_most_size_jobs_run_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = BlockingPool::new(3);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..12).map(|_| {
            let (running, peak) = (running.clone(), peak.clone());
            pool.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        });
        for r in futures::future::join_all(jobs).await {
            r.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }
}
