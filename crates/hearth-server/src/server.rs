//! Start-up and shutdown of the orchestrator.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::models::ModelManager;
use crate::routes::router;
use crate::state::AppState;

/// Largest request body accepted (images come later and are the big ones).
const MAX_BODY_BYTES: usize = 16 << 20;

/// Run the server until SIGINT or SIGTERM. `on_ready` gets the bound address.
pub async fn serve(
    config: ServerConfig,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let runtime_dir = create_runtime_dir()?;
    let models = Arc::new(ModelManager::new(
        config.models.clone(),
        config.worker.clone(),
        runtime_dir.clone(),
    ));
    let state = AppState {
        models: models.clone(),
        request_timeout: config.request_timeout,
    };
    if config.preload {
        for spec in &config.models {
            models
                .worker(&spec.id)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
    }
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    on_ready(listener.local_addr()?);
    // Token chunks are small writes: without TCP_NODELAY, Nagle holds each one back until
    // the client acknowledges the previous one.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(%e, "could not set TCP_NODELAY");
        }
    });

    let app = router(state).layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let grace = config.shutdown_grace;
    let mut stopped = stop_rx.clone();
    tokio::select! {
        result = server => result?,
        // In-flight requests get the grace period, then the process moves on.
        _ = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!("grace period over; closing remaining connections"),
    }
    tracing::info!("stopping workers");
    for worker in models.running_workers().await {
        worker.shutdown();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for worker in models.running_workers().await {
        worker.kill();
    }
    let _ = std::fs::remove_dir_all(&runtime_dir);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
}

/// A private directory (mode 0700) for worker sockets.
fn create_runtime_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("hearth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
