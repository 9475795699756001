//! The local HTTP endpoint every replica serves.
//!
//! - `GET /status/usage-stats`: this replica's live report as JSON. Reading it never resets a
//!   counter. With reporting disabled: 200 and the text `usage-stats is not enabled`.
//! - `GET /metrics`: the reporter's own health in Prometheus text format.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::report::ReportSource;

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

/// The router, for tests and for services that mount it in their own server.
pub fn router(source: Option<Arc<ReportSource>>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/status/usage-stats", get(usage_stats))
        .route("/metrics", get(metrics))
        .with_state(AppState { source, health })
}

/// Binds `addr` and serves until `shutdown` fires. Returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok((local, task))
}
