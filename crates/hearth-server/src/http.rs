//! The HTTP/1.1 listener: our own accept loop around hyper instead of `axum::serve`, for what
//! axum's does not bound:
//! - at most `max_connections` connections at once; past it the loop stops accepting, and
//!   new connections wait in the kernel's listen backlog until one closes;
//! - a request's head must arrive within `header_timeout`, counted from when the connection
//!   opens or its previous response ends, so a slowloris client and an idle keep-alive
//!   connection are both closed after it (bodies have their own timeout, in `extract.rs`;
//!   a response being written, SSE streams included, is not timed here).
//!
//! Each connection's requests carry `ConnectInfo<SocketAddr>` (the rate limiter keys on it)
//! and every socket gets TCP_NODELAY. Shutdown stops accepting, lets each connection finish
//! the request it is serving (idle ones close at once) and returns when all have closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::HttpConfig;

/// Serve `app` until `shutdown` completes, then drain the open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()>,
) {
    let max = config.max_connections.clamp(1, u32::MAX as usize) as u32;
    let slots = Arc::new(Semaphore::new(max as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Token chunks are small writes: without TCP_NODELAY, Nagle holds each one back
        // until the client acknowledges the previous one.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(%e, "could not set TCP_NODELAY");
        }
        let service = PerConnection {
            app: app.clone(),
            remote,
        };
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut connection = pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%remote, %e, "connection ended with an error");
                    }
                }
                _ = async { stop.wait_for(|stopped| *stopped).await.map(|_| ()) } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it closes: all slots back, all connections gone.
    let _ = slots.acquire_many(max).await;
}

/// The router as a hyper service, with the client's address attached to each request.
#[derive(Clone)]
struct PerConnection {
    app: Router,
    remote: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PerConnection {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.remote));
        // A router is always ready: no `poll_ready` needed before `call`.
        let mut app = self.app.clone();
        tower_service::Service::call(&mut app, request.map(Body::new))
    }
}

/// Connection-level failures (the client hung up before we took it) are nothing; anything
/// else (out of file descriptors) gets a pause so the loop does not spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(500)).await;
}
