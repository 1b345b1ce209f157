//! Start-up and shutdown of the orchestrator.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::from_fn_with_state;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{AccessConfig, ServerConfig};
use crate::gate::Gate;
use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::models::ModelManager;
use crate::registry::Registry;
use crate::routes::router;
use crate::state::AppState;
use crate::worker::SpawnContext;
use crate::{access, gate, guard, http, supervisor};

/// Run the server until SIGINT or SIGTERM. `on_ready` gets the bound address.
pub async fn serve(
    config: ServerConfig,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let runtime_dir = create_runtime_dir()?;
    let metrics = Arc::new(Metrics::new());
    let registry = open_registry(&config.lifecycle.state_dir);
    let models = Arc::new(ModelManager::new(
        config.models.clone(),
        config.worker.clone(),
        config.queue.clone(),
        config.lifecycle.clone(),
        SpawnContext {
            runtime_dir: runtime_dir.clone(),
            registry,
            metrics: metrics.clone(),
        },
    ));
    let state = AppState {
        models: models.clone(),
        metrics,
        request_timeout: config.request_timeout,
        max_body_bytes: config.max_body_bytes,
        body_timeout: config.http.body_timeout,
        responses: Arc::default(),
        media: Arc::new(config.media.clone()),
    };
    if config.preload {
        for spec in &config.models {
            models
                .worker(&spec.id)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
    }
    supervisor::start(models.clone(), config.lifecycle.ping_interval);
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    on_ready(listener.local_addr()?);

    let guard = Guard::new(
        &config.host,
        &config.access.allowed_hosts,
        config.max_body_bytes,
    );
    let app = app(state, &config.access, guard)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = http::serve(listener, app, &config.http, async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let grace = config.shutdown_grace;
    let mut stopped = stop_rx.clone();
    tokio::select! {
        _ = server => {}
        // In-flight requests get the grace period, then the process moves on.
        _ = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!("grace period over; closing remaining connections"),
    }
    tracing::info!("stopping workers");
    models.stop_all().await;
    let _ = std::fs::remove_dir_all(&runtime_dir);
    Ok(())
}

/// The routes inside their middleware, outermost first: CORS (preflights never need a
/// key), request id + access log + rejection counts, OpenAI-shaped errors, the Host and
/// Content-Length checks; then routing; then API keys and the rate limit, and, for a POST
/// route whose method matched, the Content-Type check (`routes/mod.rs`).
fn app(state: AppState, access: &AccessConfig, guard: Arc<Guard>) -> Result<Router> {
    let gate = Gate::new(access);
    gate.start_housekeeping();
    let routes = router(state.clone()).layer(from_fn_with_state(gate, gate::check));
    // The routes as one service, so the layers below see the router's own responses whole
    // (a 405 gets its `Allow` header from the router, outside any route's layers).
    // A handler that panics (a bug) answers 500 — in OpenAI's shape, by `shape_errors` —
    // instead of dropping the connection without a response.
    let mut app = Router::new()
        .fallback_service(routes)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(from_fn_with_state(guard, guard::check))
        .layer(axum::middleware::from_fn(guard::shape_errors))
        .layer(axum::middleware::from_fn(
            crate::routes::shape_anthropic_errors,
        ))
        .layer(from_fn_with_state(state, access::track));
    if !access.cors_origins.is_empty() {
        app = app.layer(cors(&access.cors_origins)?);
    }
    Ok(app)
}

fn cors(origins: &[String]) -> Result<CorsLayer> {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).with_context(|| format!("bad CORS origin {o:?}")))
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    // Anthropic's browser clients send `x-api-key` and `anthropic-version`.
    let headers = [
        "authorization",
        "content-type",
        "x-priority",
        "x-request-id",
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
    ]
    .map(HeaderName::from_static);
    let exposed = [
        "x-request-id",
        "retry-after",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ]
    .map(HeaderName::from_static);
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers(headers)
        .expose_headers(exposed))
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

/// The worker registry, after killing workers a dead server left behind. Without one (an
/// unwritable state directory) the server still runs; PDEATHSIG remains the first defence.
fn open_registry(state_dir: &std::path::Path) -> Option<Arc<Registry>> {
    let registry = match Registry::open(state_dir) {
        Ok(registry) => registry,
        Err(e) => {
            tracing::warn!(dir = %state_dir.display(), %e, "no worker registry");
            return None;
        }
    };
    match registry.sweep_orphans() {
        Ok(killed) if !killed.is_empty() => {
            tracing::warn!(?killed, "removed workers left by a server that died")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%e, "could not read the worker registry"),
    }
    Some(Arc::new(registry))
}

/// A private directory (mode 0700) for worker sockets.
fn create_runtime_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(crate::registry::socket_dir_name(std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
