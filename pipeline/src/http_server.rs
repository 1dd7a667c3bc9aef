//! The HTTP/1 server of the API and health endpoints: a header-read
//! timeout (a client that trickles its headers is cut off), a cap on open
//! connections (beyond it, new ones wait in the listen backlog), and a
//! graceful stop (connections finish their request in progress, then
//! close). axum's own `serve` sets no timer, so hyper's header timeout
//! would never fire there.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits of the connections a server takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// Time a client has to send a request's headers (and that an idle
    /// kept-alive connection stays open).
    pub header_timeout: Duration,
    /// Connections open at once, at most.
    pub max_connections: usize,
}

impl Default for Transport {
    /// Headers within 10 s, 1024 connections.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Serve `router` on `listener` until `stop` resolves, then let open
/// connections finish their request in progress (the caller bounds how
/// long).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    transport: Transport,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(transport.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Some(transport.header_timeout));
    let mut stop = std::pin::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        // No upgrades: the API has no WebSocket route.
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
