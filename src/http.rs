//! The local HTTP endpoint every replica serves.
//!
//! - `GET /status/usage-stats`: this replica's live report as JSON. Reading it never resets a
//!   counter. With reporting disabled: 200 and the text `usage-stats is not enabled`.
//! - `GET /metrics`: the reporter's own health in OpenMetrics text (Prometheus reads it).
//! - `GET /healthz`: 200 while the process serves. `GET /ready`: 200 once the seed is known and
//!   the store answered recently, 503 with the reason otherwise.
//!
//! The server itself, and its bounds, are [`usage_reporter_core::serve`]'s.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;

use crate::health::Health;
use crate::report::ReportSource;
pub use usage_reporter_core::serve::{serve, Limits, ServerStats, MAX_CONNECTIONS};

/// What the endpoint says with reporting disabled, as Tempo says it.
pub const DISABLED_TEXT: &str = "usage-stats is not enabled";

#[derive(Clone)]
struct AppState {
    /// Whether reporting is enabled: without it, `/ready` has nothing to wait for.
    enabled: bool,
    health: Arc<Health>,
}

fn usage_stats(source: Option<&ReportSource>) -> Response {
    let Some(source) = source else {
        return (StatusCode::OK, DISABLED_TEXT).into_response();
    };
    let report = source.live(chrono::Utc::now());
    match serde_json::to_vec_pretty(&report) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            usage_reporter_core::metrics::CONTENT_TYPE,
        )],
        health.render(),
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
    if !state.enabled {
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

/// The replica's own endpoint: the report, `/metrics`, `/healthz` and `/ready`.
pub(crate) fn router(source: Option<Arc<ReportSource>>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/status/usage-stats", usage_stats_route(source.clone()))
        .route("/metrics", get(metrics).with_state(health.clone()))
        .merge(health_router(source.is_some(), health))
}

/// `GET` of the live report, state included, so it mounts on any router.
pub(crate) fn usage_stats_route<S: Clone + Send + Sync + 'static>(
    source: Option<Arc<ReportSource>>,
) -> MethodRouter<S> {
    get(move || {
        let source = source.clone();
        async move { usage_stats(source.as_deref()) }
    })
}

/// `/healthz` and `/ready`.
pub(crate) fn health_router<S: Clone + Send + Sync + 'static>(
    enabled: bool,
    health: Arc<Health>,
) -> Router<S> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ready", get(ready))
        .with_state(AppState { enabled, health })
}
