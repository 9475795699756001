//! `POST /api/v1/reports`: the rate limit, the checks of [`crate::intake`], the signature or
//! the instance cap, then one create-if-absent write; a report is acknowledged only once it is
//! stored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::json;

use crate::store::{Store, StoreError};
use crate::{error, intake, layout, pins, App};

/// Reports stored per `(cluster, slot)`, in memory; forgotten wholesale past 200,000 slots
/// (the count only decides when to list the store, which is exact).
#[derive(Debug, Default)]
pub(crate) struct SlotCounts(Mutex<HashMap<(String, i64), usize>>);

impl SlotCounts {
    fn seen(&self, slot: &(String, i64)) -> usize {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(slot).copied().unwrap_or(0)
    }

    fn stored(&self, slot: (String, i64)) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= 200_000 {
            m.clear();
        }
        *m.entry(slot).or_default() += 1;
    }
}

/// Store failures on the request path, logged when they start (with the error) and when they
/// end (with how many requests failed), never per request.
#[derive(Debug, Default)]
pub(crate) struct StoreLog(Mutex<Option<(&'static str, u64)>>);

impl StoreLog {
    fn failed(&self, e: &StoreError) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            Some((kind, n)) if *kind == e.kind() => *n += 1,
            _ => {
                tracing::warn!(error = %e, "the store is failing: reports are answered 503 until it works again");
                *state = Some((e.kind(), 1));
            }
        }
    }

    fn worked(&self) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = state.take() {
            tracing::info!(failed_requests = n, "the store works again");
        }
    }
}

fn refuse(
    app: &App,
    status: StatusCode,
    reason: &'static str,
    why: impl std::fmt::Display,
) -> Response {
    app.health.reject(reason);
    error(status, why)
}

pub(crate) async fn receive(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = crate::net::client_group(crate::net::client_address(
        peer.ip(),
        &app.proxies,
        app.forwarded_header,
        &headers,
    ));
    if let Err(wait) = app.limit.check(client) {
        app.health.rate_limited();
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            Json(json!({"error": "too many reports from this client; retry later"})),
        )
            .into_response();
    }
    let report = match intake::parse(&body, Utc::now()) {
        Ok(r) => r,
        Err(why) => return refuse(&app, StatusCode::BAD_REQUEST, why.reason(), why),
    };
    if let Some(key) = headers.get("idempotency-key") {
        let key = key.to_str().unwrap_or_default();
        if let Err(why) = intake::check_idempotency_key(key, &body) {
            return refuse(&app, StatusCode::BAD_REQUEST, why.reason(), why);
        }
    }
    let signature = match headers.get(crate::signing::HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            let why = crate::signing::SignatureError::Malformed;
            return refuse(&app, StatusCode::BAD_REQUEST, "signature", why);
        }
    };
    let signed_by = match signature.map(|s| crate::signing::verify(s, &body)) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(why)) => return refuse(&app, StatusCode::FORBIDDEN, "signature", why),
    };
    match app
        .pins
        .check(&app.store, &report.cluster_id, signed_by)
        .await
    {
        Ok(()) => {}
        Err(pins::PinError::Refused(why)) => {
            return refuse(&app, StatusCode::FORBIDDEN, "not_signed_by_cluster", why)
        }
        Err(pins::PinError::Store(e)) => return store_failed(&app, &e),
        Err(e) => {
            return store_failed(
                &app,
                &StoreError::Other {
                    key: layout::pin_key(&report.cluster_id),
                    message: e.to_string(),
                },
            )
        }
    }
    let instance = report.instance_key();
    // Listing the slot's instances costs two store requests: only once this receiver alone
    // has stored a quarter of the cap there (so several receivers overshoot by at most a
    // quarter of the cap each).
    let slot_id = (report.cluster_id.clone(), report.slot().timestamp());
    if signed_by.is_none() && app.unsigned.seen(&slot_id) * 4 >= app.max_instances {
        match instances(&app.store, &report, &instance).await {
            Ok(n) if n >= app.max_instances => {
                let why = format!("this cluster's slot already has {n} unsigned instances, the most accepted; sign reports to send more");
                return refuse(&app, StatusCode::FORBIDDEN, "too_many_instances", why);
            }
            Ok(_) => {}
            Err(e) => return store_failed(&app, &e),
        }
    }
    let key = layout::inbox_key(&report.cluster_id, report.slot(), &instance);
    let object = layout::stored_object(signature, &body);
    let started = Instant::now();
    let result = store_once(&app.store, &key, object).await;
    app.health.store_took(started.elapsed());
    match result {
        Ok(true) => {
            app.store_log.worked();
            if signed_by.is_none() {
                app.unsigned.stored(slot_id);
            }
            app.health.report_stored(true);
            Json(json!({"status": "stored"})).into_response()
        }
        Ok(false) => {
            app.store_log.worked();
            app.health.report_stored(false);
            Json(json!({"status": "duplicate"})).into_response()
        }
        Err(e) => store_failed(&app, &e),
    }
}

/// Stores a report in the inbox once: `true` if stored, `false` if it was already (in the
/// inbox, or rolled up and kept). A create that succeeds for a report rolled up earlier (the
/// inbox forgets what it rolled up) is taken back.
async fn store_once(store: &Store, key: &str, object: Vec<u8>) -> Result<bool, StoreError> {
    match store.create(key, object).await {
        Ok(_) => {}
        Err(StoreError::AlreadyExists { .. }) => return Ok(false),
        Err(e) => return Err(e),
    }
    if store.exists(&layout::kept_key(key)).await? {
        // Rolled up already. Should this delete fail, the next rollup finds the key in kept/
        // and removes it without a row.
        let _ = store.delete(key).await;
        return Ok(false);
    }
    Ok(true)
}

/// Distinct instances already stored for the report's cluster and slot, not counting its own.
async fn instances(
    store: &Store,
    report: &intake::Received,
    instance: &str,
) -> Result<usize, StoreError> {
    let mut names = std::collections::HashSet::new();
    for prefix in layout::slot_prefixes(&report.cluster_id, report.slot()) {
        for key in store.list(&prefix).await? {
            names.insert(key.rsplit('/').next().unwrap_or_default().to_string());
        }
    }
    names.remove(&format!("{instance}.json"));
    Ok(names.len())
}

fn store_failed(app: &App, e: &StoreError) -> Response {
    app.health.store_failed();
    app.store_log.failed(e);
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store did not take the report; retry",
    )
}
