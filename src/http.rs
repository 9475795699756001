//! The local HTTP endpoint every replica serves.
//!
//! - `GET /status/usage-stats`: this replica's live report as JSON. Reading it never resets a
//!   counter. With reporting disabled: 200 and the text `usage-stats is not enabled`.
//! - `GET /metrics`: the reporter's own health in Prometheus text format.
//! - `GET /healthz`: 200 while the process serves. `GET /ready`: 200 once the seed is known and
//!   the store answered recently, 503 with the reason otherwise.
//!
//! The endpoint is bounded, so idle or slow clients cannot take memory or file descriptors from
//! the replica's real work (the store, the lease): at most [`MAX_CONNECTIONS`] at once (past
//! that, new ones wait in the kernel's backlog, costing the process nothing), request headers
//! within [`HEADER_READ_TIMEOUT`] (also between requests on a kept-alive connection), and a
//! connection closes gracefully once it is [`MAX_CONNECTION_AGE`] old.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::health::Health;
use crate::report::ReportSource;

/// What the endpoint says with reporting disabled, as Tempo says it.
pub const DISABLED_TEXT: &str = "usage-stats is not enabled";

#[derive(Clone)]
struct AppState {
    source: Option<Arc<ReportSource>>,
    health: Arc<Health>,
}

async fn usage_stats(State(state): State<AppState>) -> Response {
    let Some(source) = &state.source else {
        return (StatusCode::OK, DISABLED_TEXT).into_response();
    };
    let report = source.live(chrono::Utc::now());
    match serde_json::to_vec_pretty(&report) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.health.render(),
    )
        .into_response()
}

/// 200 while the process serves.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 once the seed is known and the store answered recently (always, with reporting
/// disabled: there is nothing to wait for); 503 with the reason otherwise.
async fn ready(State(state): State<AppState>) -> Response {
    if state.source.is_none() {
        return (StatusCode::OK, "ready (usage reporting disabled)\n").into_response();
    }
    match state.health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// The router, for tests and for services that mount it in their own server.
pub fn router(source: Option<Arc<ReportSource>>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/status/usage-stats", get(usage_stats))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/ready", get(ready))
        .with_state(AppState { source, health })
}

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a client may take to send a request's headers, or to start the next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection is served before it is closed gracefully.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// Binds `addr` and serves until `shutdown` fires. Returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(accept(listener, router, shutdown));
    Ok((local, task))
}

async fn accept(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    let mut failing = false;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    if !failing {
                        tracing::warn!(error = %e, "HTTP endpoint cannot accept connections; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        failing = false;
        // Handlers may ask for the peer (the receiver's rate limit does, and keeps it in memory
        // only): `ConnectInfo<SocketAddr>`, as axum's own server gives it.
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let router = router.clone();
                async move { router.oneshot(req).await }
            });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
                _ = shutdown.cancelled() => {}
            }
            // Finish the request in flight, if any, then close.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
}
