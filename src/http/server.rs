//! The HTTP server loop: axum's router on hyper's HTTP/1.1, with the limits
//! a service facing the network needs and `axum::serve` does not set.
//!
//! - **Header-read timeout**: a client gets this long to send a request's
//!   headers, and an idle keep-alive connection this long to start its next
//!   request; then the connection is closed. A client that sends half its
//!   headers and stalls holds nothing for long.
//! - **Open connections bounded**: past the bound, new connections wait in
//!   the kernel's accept queue until one closes.
//! - **Shutdown deadline**: after the shutdown signal the listener closes,
//!   requests in flight finish and idle connections close at once; whatever
//!   is still open at the deadline is dropped, so a stop never waits on a
//!   client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The server's limits (`EMAIL2FA_HTTP__*`).
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Time to send a request's headers (and an idle connection's time to
    /// start its next request).
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for open connections after the shutdown signal.
    pub shutdown_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// within [`ServeLimits::shutdown_timeout`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap the connections that ended (their results are unit).
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(
                timeout_ms = limits.shutdown_timeout.as_millis() as u64,
                open = connections.len(),
                "connections still open at the shutdown deadline were dropped"
            );
        }
    }
    connections.abort_all();
    Ok(())
}
