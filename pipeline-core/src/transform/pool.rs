use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::{Error, ImageErrorKind, Result};

/// A bounded pool for CPU-bound work on tokio's blocking threads.
///
/// At most `size` closures run at once (normally the number of cores); a
/// panic inside one becomes an [`ImageErrorKind::Panicked`] error for that
/// call only.
#[derive(Debug, Clone)]
pub struct BlockingPool {
    permits: Arc<Semaphore>,
    size: usize,
}

impl BlockingPool {
    /// A pool running at most `size` closures at once.
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// A pool sized to the available cores.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// How many closures may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Run `f` on a blocking thread once a slot is free.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let _permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed("blocking pool closed".into()))?;
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(Error::image(
                    ImageErrorKind::Panicked,
                    format!("the decoder or a transform panicked: {msg}"),
                ))
            }
            Err(e) => Err(Error::Closed(format!("blocking task cancelled: {e}"))),
        }
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
}
