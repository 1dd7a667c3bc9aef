//! The connection to RabbitMQ and its publisher channels, rebuilt as a
//! whole whenever it fails.
//!
//! lapin's own recovery does not survive every failure (a broker shutdown
//! closes connections with `CONNECTION_FORCED`, after which it gives up), so
//! the adapter owns reconnection: a supervisor notices a dead connection,
//! reconnects with bounded exponential backoff, re-declares the topology,
//! and consumers subscribe again. Deliveries of the old connection can no
//! longer be acked; RabbitMQ delivers them again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use pipeline_core::{Error, Result};

use crate::config::redact;
use crate::{Inner, RECONNECT_BACKOFF, unavailable};

/// One live connection with its publisher channels.
pub(crate) struct Link {
    pub conn: Connection,
    pub publishers: Vec<Channel>,
    pub generation: u64,
}

impl Link {
    pub fn alive(&self) -> bool {
        self.conn.status().connected()
    }
}

/// The current link, and the lock that makes one task reconnect at a time.
pub(crate) struct Links {
    current: RwLock<Option<Arc<Link>>>,
    reconnecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

impl Links {
    pub fn new() -> Self {
        Self {
            current: RwLock::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Option<Arc<Link>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forget `generation` if it is still the current link (it failed).
    pub fn invalidate(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|l| l.generation == generation)
            && let Some(old) = current.take()
        {
            tokio::spawn(async move {
                let _ = old.conn.close(320, "replaced".into()).await;
            });
        }
    }
}

impl Inner {
    /// A live link, connecting (once, over every host) if there is none.
    pub(crate) async fn link(&self) -> Result<Arc<Link>> {
        if let Some(link) = self.links.current().filter(|l| l.alive()) {
            return Ok(link);
        }
        let _one_at_a_time = self.links.reconnecting.lock().await;
        if let Some(link) = self.links.current().filter(|l| l.alive()) {
            return Ok(link);
        }
        if let Some(old) = self.links.current() {
            self.links.invalidate(old.generation);
        }
        // A connection that dies while we set it up must not hold the lock
        // for ever.
        let link = tokio::time::timeout(Duration::from_secs(30), self.build_link())
            .await
            .map_err(|_| {
                Error::Timeout("setting up the RabbitMQ connection took over 30 s".into())
            })??;
        Ok(link)
    }

    /// Connect, open the publishing channels, declare the topology, and
    /// make the result the current link (counting a reconnect after the
    /// first).
    async fn build_link(&self) -> Result<Arc<Link>> {
        let conn = self.open_connection().await?;
        let mut publishers = Vec::with_capacity(self.config.publish_channels);
        for _ in 0..self.config.publish_channels {
            let ch = conn
                .create_channel()
                .await
                .map_err(|e| unavailable("open a channel", &e))?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| unavailable("enable publisher confirms", &e))?;
            publishers.push(ch);
        }
        let generation = self.links.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let link = Arc::new(Link {
            conn,
            publishers,
            generation,
        });
        let specs = self.declared_specs();
        if !specs.is_empty() {
            self.declare_on(&link, &specs).await?;
        }
        *self
            .links
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&link));
        if generation > 1 {
            pipeline_core::telemetry::reconnected("rabbitmq");
            tracing::info!(connection = %self.connection_name, generation, "reconnected to RabbitMQ; topology declared again");
        }
        Ok(link)
    }

    async fn open_connection(&self) -> Result<Connection> {
        let props = ConnectionProperties::default()
            .with_connection_name(self.connection_name.clone().into());
        let mut errors = Vec::new();
        for uri in &self.config.uris {
            match Connection::connect(uri, props.clone()).await {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(format!("{}: {e}", redact(uri))),
            }
        }
        Err(Error::Unavailable(format!(
            "cannot connect to RabbitMQ ({})",
            errors.join("; ")
        )))
    }
}

/// Watch the link of `inner` and rebuild it when it dies, so readiness
/// recovers even in a process that is neither publishing nor consuming.
pub(crate) fn supervise(inner: Weak<Inner>) {
    tokio::spawn(async move {
        let mut backoff = RECONNECT_BACKOFF.start();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            if inner.links.current().is_some_and(|l| l.alive()) {
                backoff.reset();
                continue;
            }
            if let Err(e) = inner.link().await {
                let pause = backoff.next_delay();
                tracing::warn!(connection = %inner.connection_name, error = %e, ?pause, "RabbitMQ unreachable; retrying");
                drop(inner);
                tokio::time::sleep(pause).await;
            }
        }
    });
}
