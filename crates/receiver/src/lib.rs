//! `reporter receive`: the other half. Reports in, each stored once, rolled up into Parquet for
//! analysts, and shown on a dashboard.
//!
//! - [`intake`]: what is accepted, and the key a report is stored under;
//! - [`layout`]: where things live in the receiver's bucket;
//! - [`pins`]: signed clusters' pinned keys, the trust model;
//! - [`rollup`]: the inbox to Parquet files and summaries, one recorded window at a time;
//! - [`leaves`]: a report's metrics as dotted leaves, for the long-form dataset;
//! - [`insights`]: replicas merged into a cluster's figures, aggregates a cluster can be added
//!   to and taken back from exactly, what `--min-clusters` lets be shown;
//! - [`figures`]: those aggregates in the bucket, updated by each rollup window;
//! - [`summary`]: the figures the API and the dashboard read;
//! - [`forget`]: retention of raw reports, and removing one cluster on request;
//! - this module: the HTTP service, its rate limit and token, and the rollup leader's loop.
//!
//! It faces strangers, so everything is bounded (see [`usage_reporter_core::serve::Limits`]): connections
//! overall and per client, a deadline for each request's headers and another for its body,
//! reports per second per client (grouped per /24 or /48; behind `--trusted-proxy` the
//! forwarded address), distinct unsigned instances per cluster and slot.
//!
//! Several receivers may share one bucket behind a load balancer: a report's key depends only
//! on the report, so create-if-absent stores it once whichever receiver takes it, and one of
//! them, elected through the same lease as the replicas use (its own object), rolls up.

pub mod cluster_list;
pub mod figures;
pub mod forget;
pub mod insights;
pub mod intake;
pub mod layout;
pub mod leaves;
pub mod pins;
pub mod rollup;
pub mod summary;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use usage_reporter_core::histogram::Histogram;
pub(crate) use usage_reporter_core::{lease, net, retry, signing, store, timefmt};

use crate::lease::{Elector, LeaseConfig};
use crate::store::{OpenError, Store, StoreError};
use summary::{Cluster, Day};

/// The receiver's defaults.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    /// `--store`.
    pub const STORE: &str = "./receiver-data";
    /// `--listen`.
    pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3300));
    /// `--rollup-every`.
    pub const ROLLUP_EVERY: Duration = Duration::from_secs(60);
    /// `--rate-limit`: reports per second one client may send, sustained.
    pub const RATE_LIMIT: f64 = 20.0;
    /// `--rate-burst`: how many reports a client may send at once before the rate applies (a
    /// leader delivering a slot of many replicas sends a burst).
    pub const BURST: f64 = 2000.0;
    /// `--max-connections`.
    pub const MAX_CONNECTIONS: usize = 4096;
    /// `--max-client-connections`: a leader sends 32 reports at once.
    pub const MAX_CLIENT_CONNECTIONS: usize = 64;
    /// `--request-timeout`: a 1 MiB report at 100 KiB/s; Tempo's own client gives up at 5 s.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// `--max-instances`: distinct unsigned instances per cluster and slot.
    pub const MAX_INSTANCES: usize = 1000;
    /// `--min-clusters`: a metric value shared by fewer clusters is never shown.
    pub const MIN_CLUSTERS: u64 = 5;
    /// The shortest `--retention`: raw reports are what tells a repeat from a new report, and a
    /// slot is accepted for 7 days.
    pub const MIN_RETENTION: Duration = Duration::from_secs(8 * 86400);
    /// How often retention runs.
    pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);
}

/// Everything `reporter receive` can set.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// The store URL or path.
    pub store: String,
    /// Store client options.
    pub store_options: Vec<(String, String)>,
    /// The address to serve on.
    pub listen: SocketAddr,
    /// With a token, reading the API and dashboard needs `Authorization: Bearer <token>`.
    pub read_token: Option<String>,
    /// How often the elected receiver rolls up.
    pub rollup_every: Duration,
    /// How long an arrival is left to settle before it is rolled up.
    pub settle: Duration,
    /// Reports per second per client, sustained.
    pub rate_limit: f64,
    /// Reports one client may send at once before the rate applies.
    pub rate_burst: f64,
    /// Peers whose forwarding header is believed.
    pub trusted_proxies: Vec<crate::net::Cidr>,
    /// The header those proxies write.
    pub forwarded_header: crate::net::ForwardedHeader,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one client.
    pub max_client_connections: usize,
    /// A request's body and answer within this.
    pub request_timeout: Duration,
    /// Distinct unsigned instances per cluster and slot.
    pub max_instances: usize,
    /// Raw received reports of slot days older than this are removed; `None` keeps them.
    pub retention: Option<Duration>,
    /// A metric value (or key) shared by fewer clusters is never shown.
    pub min_clusters: u64,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            store: defaults::STORE.to_string(),
            store_options: Vec::new(),
            listen: defaults::LISTEN,
            read_token: None,
            rollup_every: defaults::ROLLUP_EVERY,
            settle: rollup::DEFAULT_SETTLE,
            rate_limit: defaults::RATE_LIMIT,
            rate_burst: defaults::BURST,
            trusted_proxies: Vec::new(),
            forwarded_header: crate::net::ForwardedHeader::default(),
            max_connections: defaults::MAX_CONNECTIONS,
            max_client_connections: defaults::MAX_CLIENT_CONNECTIONS,
            request_timeout: defaults::REQUEST_TIMEOUT,
            max_instances: defaults::MAX_INSTANCES,
            retention: None,
            min_clusters: defaults::MIN_CLUSTERS,
        }
    }
}

/// Why a receiver could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The store URL or its options are wrong.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// An option is out of range.
    #[error("{0}")]
    Invalid(&'static str),
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
}

/// The receiver's own figures, served at `/metrics`.
#[derive(Debug, Default)]
pub struct ReceiverHealth {
    stored: AtomicU64,
    duplicates: AtomicU64,
    rate_limited: AtomicU64,
    store_failures: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    store_latency: Mutex<Histogram>,
    rollups: AtomicU64,
    rolled_up: AtomicU64,
    server: Mutex<Option<Arc<usage_reporter_core::serve::ServerStats>>>,
}

impl ReceiverHealth {
    fn reject(&self, reason: &'static str) {
        let mut m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_default() += 1;
    }

    /// Reports stored so far.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "reporter_receiver_reports_stored_total",
            "Reports stored.",
            &self.stored,
        );
        counter(
            &mut out,
            "reporter_receiver_reports_duplicate_total",
            "Reports answered as duplicates of one already stored.",
            &self.duplicates,
        );
        counter(
            &mut out,
            "reporter_receiver_rate_limited_total",
            "Requests answered 429.",
            &self.rate_limited,
        );
        counter(
            &mut out,
            "reporter_receiver_store_failures_total",
            "Reports answered 503 because the store failed.",
            &self.store_failures,
        );
        counter(
            &mut out,
            "reporter_receiver_rollups_total",
            "Rollup runs finished.",
            &self.rollups,
        );
        counter(
            &mut out,
            "reporter_receiver_rolled_up_total",
            "Reports written to Parquet.",
            &self.rolled_up,
        );
        let _ = writeln!(
            out,
            "# HELP reporter_receiver_reports_rejected_total Reports refused, by reason.\n# TYPE reporter_receiver_reports_rejected_total counter"
        );
        for (reason, n) in self
            .rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "reporter_receiver_reports_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        if let Some(server) = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
            let gauges = [
                (
                    "reporter_receiver_connections",
                    "Connections open.",
                    "gauge",
                    server.open.load(Ordering::Relaxed) as u64,
                ),
                (
                    "reporter_receiver_requests_in_flight",
                    "Requests being answered.",
                    "gauge",
                    server.in_flight.load(Ordering::Relaxed) as u64,
                ),
                (
                    "reporter_receiver_connections_refused_total",
                    "Connections closed at once: their client had too many open.",
                    "counter",
                    load(&server.refused),
                ),
                (
                    "reporter_receiver_connections_evicted_total",
                    "Idle connections closed early because the receiver was busy.",
                    "counter",
                    load(&server.evicted),
                ),
                (
                    "reporter_receiver_requests_timed_out_total",
                    "Requests answered 408: their body did not arrive in time.",
                    "counter",
                    load(&server.timed_out),
                ),
            ];
            for (name, help, kind, v) in gauges {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            }
        }
        self.store_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(
                &mut out,
                "reporter_receiver_store_latency_seconds",
                "Time to store one report.",
            );
        out
    }
}

/// A token bucket per client address, kept in memory only (addresses are never stored or
/// logged). Buckets full again are forgotten, so memory follows the clients of the last
/// seconds.
#[derive(Debug)]
struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimit {
    /// `Ok`, or how long to wait.
    fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

/// The summaries as last read. A request older than [`CACHE_FOR`] lists `summaries/` and reads
/// again only the objects that changed, so a warm request costs one listing, whatever the
/// number of reports or clusters.
#[derive(Debug, Default)]
struct Cache {
    checked: Option<Instant>,
    seen: HashMap<String, chrono::DateTime<Utc>>,
    days: BTreeMap<String, Day>,
    /// The cluster list.
    list: cluster_list::View,
    /// Insights: each cluster active on a day once (the trend), by day.
    daily: BTreeMap<String, Arc<insights::Aggregate>>,
    /// Insights: each cluster once, on the day of its latest slot.
    latest: BTreeMap<String, Arc<insights::Aggregate>>,
}

impl Cache {
    /// The clusters active in these days, each once by its latest slot: the sum of the days'
    /// `latest` aggregates.
    fn active_in(&self, days: &[String]) -> insights::Aggregate {
        figures::sum(
            days.iter()
                .filter_map(|d| self.latest.get(d).map(|a| a.as_ref())),
        )
    }
}

const CACHE_FOR: Duration = Duration::from_secs(2);
/// The most days `/api/v1/summary` covers.
const MAX_DAYS: i64 = 400;

#[derive(Clone)]
struct App {
    store: Store,
    token: Option<Arc<str>>,
    health: Arc<ReceiverHealth>,
    limit: Arc<RateLimit>,
    cache: Arc<tokio::sync::Mutex<Cache>>,
    /// Peers whose forwarding headers are believed.
    proxies: Arc<[crate::net::Cidr]>,
    /// The header they write.
    forwarded_header: crate::net::ForwardedHeader,
    /// Signed clusters' keys.
    pins: Arc<pins::Pins>,
    /// Distinct unsigned instances per cluster and slot.
    max_instances: usize,
    /// Whether storing reports is failing, so it is logged when it starts and ends.
    store_log: Arc<StoreLog>,
    /// The least clusters a shown value must have.
    min_clusters: u64,
    /// Unsigned instances this receiver stored per cluster and slot.
    unsigned: Arc<SlotCounts>,
}

/// Reports stored per `(cluster, slot)`, in memory; forgotten wholesale past 200,000 slots
/// (the count only decides when to list the store, which is exact).
#[derive(Debug, Default)]
struct SlotCounts(Mutex<HashMap<(String, i64), usize>>);

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
struct StoreLog(Mutex<Option<(&'static str, u64)>>);

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

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
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

async fn receive(
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
        app.health.rate_limited.fetch_add(1, Ordering::Relaxed);
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
        Err(pins::PinError::Store(why)) => {
            return store_failed(
                &app,
                &StoreError::Other {
                    key: layout::pin_key(&report.cluster_id),
                    message: why,
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
    app.health
        .store_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .observe(started.elapsed());
    match result {
        Ok(true) => {
            app.store_log.worked();
            if signed_by.is_none() {
                app.unsigned.stored(slot_id);
            }
            app.health.stored.fetch_add(1, Ordering::Relaxed);
            Json(json!({"status": "stored"})).into_response()
        }
        Ok(false) => {
            app.store_log.worked();
            app.health.duplicates.fetch_add(1, Ordering::Relaxed);
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
    app.health.store_failures.fetch_add(1, Ordering::Relaxed);
    app.store_log.failed(e);
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store did not take the report; retry",
    )
}

/// Whether a read may go ahead: no token is set, or the request carries it.
fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(token) = &app.token else {
        return true;
    };
    // The scheme is case-insensitive (RFC 9110); the token is not.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    // Constant time: the comparison does not stop at the first difference.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same
}

/// The read token, checked once for every read route.
async fn require_token(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if authorized(&app, request.headers()) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": "a valid Authorization: Bearer token is needed"})),
    )
        .into_response()
}

/// Brings the cache up to date with the bucket.
async fn refresh(store: &Store, cache: &mut Cache) -> Result<(), StoreError> {
    if cache.checked.is_some_and(|at| at.elapsed() < CACHE_FOR) {
        return Ok(());
    }
    let (list, entries): (Vec<_>, Vec<_>) = store
        .entries(layout::SUMMARIES)
        .await?
        .into_iter()
        .partition(|e| e.key.starts_with(cluster_list::PREFIX));
    cache.list.refresh(store, &list).await?;
    for entry in entries {
        if cache.seen.get(&entry.key) == Some(&entry.modified) {
            continue;
        }
        if let Some((latest, day)) = insight_day(&entry.key) {
            let obj = store.get_limited(&entry.key, 64 << 20).await?;
            if let Ok(a) = serde_json::from_slice::<figures::StoredAggregate>(&obj.bytes) {
                let map = if latest {
                    &mut cache.latest
                } else {
                    &mut cache.daily
                };
                map.insert(day.to_string(), Arc::new(a.aggregate));
            }
        } else if let Some(day) = entry
            .key
            .strip_prefix("summaries/day=")
            .and_then(|k| k.strip_suffix(".json"))
        {
            let obj = store.get_limited(&entry.key, 64 << 20).await?;
            if let Ok(d) = serde_json::from_slice::<Day>(&obj.bytes) {
                cache.days.insert(day.to_string(), d);
            }
        }
        cache.seen.insert(entry.key, entry.modified);
    }
    cache.checked = Some(Instant::now());
    Ok(())
}

/// A read of the API whose store call failed: 503, saying what the store answered.
fn read_failed(e: &StoreError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the store failed: {e}"),
    )
}

/// `(latest, day)` of an insights aggregate's key.
fn insight_day(key: &str) -> Option<(bool, &str)> {
    let rest = key.strip_prefix(figures::AGGREGATES)?;
    let (latest, rest) = match rest.strip_prefix("latest/") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    Some((latest, rest.strip_prefix("day=")?.strip_suffix(".json")?))
}

/// The last `days` days, oldest first, today included.
fn last_days(days: i64) -> Vec<String> {
    let today = Utc::now().date_naive();
    (0..days)
        .rev()
        .map(|d| {
            (today - chrono::Duration::days(d))
                .format("%Y-%m-%d")
                .to_string()
        })
        .collect()
}

/// The insights of the last `days` days: the window's clusters by their latest slot, and
/// each day's.
async fn insights_of(
    app: &App,
    days: i64,
) -> Result<
    (
        insights::Aggregate,
        Vec<(String, Option<Arc<insights::Aggregate>>)>,
    ),
    StoreError,
> {
    let mut cache = app.cache.lock().await;
    refresh(&app.store, &mut cache).await?;
    let days = last_days(days);
    let window = cache.active_in(&days);
    let daily = days
        .into_iter()
        .map(|d| {
            let a = cache.daily.get(&d).cloned();
            (d, a)
        })
        .collect();
    Ok((window, daily))
}

/// What kind of values a key has.
fn kind(k: &insights::KeyAggregate) -> &'static str {
    if k.numeric() && k.values.keys().all(|v| v == "0" || v == "1") && !k.values.is_empty() {
        "flag"
    } else if k.numeric() {
        "number"
    } else {
        "text"
    }
}

#[derive(serde::Deserialize)]
struct DaysQuery {
    days: Option<i64>,
}

/// `GET /api/v1/metrics?days=N`: every key shown, its kind and the clusters reporting it.
async fn metric_keys(State(app): State<App>, Query(q): Query<DaysQuery>) -> Response {
    let n = q.days.unwrap_or(7).clamp(1, MAX_DAYS);
    let (window, _) = match insights_of(&app, n).await {
        Ok(s) => s,
        Err(e) => return read_failed(&e),
    };
    let metrics: Vec<_> = window
        .keys
        .iter()
        .filter(|(_, k)| k.clusters >= app.min_clusters)
        .map(|(key, k)| json!({"key": key, "kind": kind(k), "clusters": k.clusters}))
        .collect();
    Json(json!({"clusters": window.clusters, "metrics": metrics})).into_response()
}

fn values_json(view: &insights::KeyView) -> Vec<serde_json::Value> {
    view.values
        .iter()
        .map(|(v, n)| json!({"value": v, "clusters": n}))
        .collect()
}

/// `GET /api/v1/metrics/<key>?days=N`: its distribution over the window, and day by day.
async fn metric(
    State(app): State<App>,
    axum::extract::Path(key): axum::extract::Path<String>,
    Query(q): Query<DaysQuery>,
) -> Response {
    let n = q.days.unwrap_or(7).clamp(1, MAX_DAYS);
    let (window, daily) = match insights_of(&app, n).await {
        Ok(s) => s,
        Err(e) => return read_failed(&e),
    };
    let min = app.min_clusters;
    let Some(k) = window.keys.get(&key).filter(|k| k.clusters >= min) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no metric {key:?} reported by {min} clusters or more in the last {n} days"),
        );
    };
    let view = k.view(min);
    let days: Vec<_> = daily
        .iter()
        .map(|(day, a)| {
            let (clusters, values) = a
                .as_ref()
                .and_then(|a| a.keys.get(&key))
                .map(|k| {
                    let v = k.view(min);
                    (v.clusters, values_json(&v))
                })
                .unwrap_or_default();
            json!({"day": day, "clusters": clusters, "values": values})
        })
        .collect();
    let mut body = json!({
        "key": key, "clusters": view.clusters, "active": window.clusters,
        "kind": kind(k), "values": values_json(&view), "other": view.other, "days": days,
    });
    if k.numeric() {
        body["quantiles"] = json!(view.quantiles);
        body["zero"] = json!(view.zero);
    }
    Json(body).into_response()
}

/// The summaries of the last `days` days, oldest first (today included; days without reports
/// as zeros; each day's clusters and versions from its insights aggregate), and the clusters
/// active in them, each once by its latest slot.
async fn summaries(app: &App, days: i64) -> Result<(Vec<Day>, insights::Aggregate), StoreError> {
    let mut cache = app.cache.lock().await;
    refresh(&app.store, &mut cache).await?;
    let days = last_days(days);
    let window = cache.active_in(&days);
    let days = days
        .into_iter()
        .map(|d| {
            let mut day = cache.days.get(&d).cloned().unwrap_or_else(|| Day {
                day: d.clone(),
                ..Day::default()
            });
            if let Some(a) = cache.daily.get(&d) {
                day.clusters = a.clusters;
                day.versions = a.versions.clone();
            }
            day
        })
        .collect();
    Ok((days, window))
}

/// Every cluster in the list, most recently seen first.
async fn cluster_list(app: &App) -> Result<Arc<Vec<Cluster>>, StoreError> {
    let mut cache = app.cache.lock().await;
    refresh(&app.store, &mut cache).await?;
    Ok(cache.list.order.clone())
}

async fn summary(State(app): State<App>, Query(q): Query<DaysQuery>) -> Response {
    let n = q.days.unwrap_or(30).clamp(1, MAX_DAYS);
    let (days, active) = match summaries(&app, n).await {
        Ok(s) => s,
        Err(e) => return read_failed(&e),
    };
    let versions = active.versions;
    let replicas = active.replicas;
    let sum = |pick: fn(&Day) -> &BTreeMap<String, u64>| {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for d in &days {
            for (k, v) in pick(d) {
                *m.entry(k.clone()).or_default() += v;
            }
        }
        m
    };
    let body = json!({
        "clusters": active.clusters,
        "instances": active.instances,
        "reports": days.iter().map(|d| d.reports).sum::<u64>(),
        "versions": versions,
        "os": sum(|d| &d.os),
        "arch": sum(|d| &d.arch),
        "targets": sum(|d| &d.targets),
        "replicas": replicas,
        "penetration": insights::penetration(&versions)
            .into_iter()
            .map(|(version, share)| json!({"version": version, "share": share}))
            .collect::<Vec<_>>(),
        "days": days.iter().map(|d| json!({
            "day": d.day, "clusters": d.clusters, "reports": d.reports, "versions": d.versions,
        })).collect::<Vec<_>>(),
    });
    Json(body).into_response()
}

#[derive(serde::Deserialize)]
struct ClustersQuery {
    limit: Option<usize>,
}

async fn clusters(State(app): State<App>, Query(q): Query<ClustersQuery>) -> Response {
    let all = match cluster_list(&app).await {
        Ok(s) => s,
        Err(e) => return read_failed(&e),
    };
    let list: Vec<&Cluster> = all.iter().take(q.limit.unwrap_or(usize::MAX)).collect();
    Json(json!({"clusters": list, "total": all.len()})).into_response()
}

/// The dashboard: one self-contained page, no CDN, charts drawn as SVG by its own script.
pub const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// Series the insights export on `/metrics` at most: per key, and in all.
const EXPORT_PER_KEY: usize = 20;
const EXPORT_TOTAL: usize = 2000;

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The insights of the last 7 days for Grafana: active clusters, clusters per version and per
/// value of each categorical metric, only what `--min-clusters` lets be shown, at most
/// [`EXPORT_PER_KEY`] values a key and [`EXPORT_TOTAL`] series in all.
async fn insights_export(app: &App) -> Result<String, StoreError> {
    use std::fmt::Write;
    let (window, _) = insights_of(app, 7).await?;
    let versions = &window.versions;
    let min = app.min_clusters;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP reporter_insights_active_clusters Clusters with a report in the last 7 days.\n# TYPE reporter_insights_active_clusters gauge\nreporter_insights_active_clusters {}", window.clusters);
    let _ = writeln!(out, "# HELP reporter_insights_clusters_by_version Active clusters (7 days) by the version of their latest slot, versions of at least --min-clusters clusters.\n# TYPE reporter_insights_clusters_by_version gauge");
    let mut series = 0;
    let mut shown: Vec<(&String, &u64)> = versions.iter().filter(|(_, n)| **n >= min).collect();
    shown.sort_by(|a, b| b.1.cmp(a.1));
    for (v, n) in shown.into_iter().take(EXPORT_PER_KEY) {
        let _ = writeln!(
            out,
            "reporter_insights_clusters_by_version{{version=\"{}\"}} {n}",
            label(v)
        );
        series += 1;
    }
    let _ = writeln!(out, "# HELP reporter_insights_metric_clusters Active clusters (7 days) per value of a categorical metric, values of at least --min-clusters clusters.\n# TYPE reporter_insights_metric_clusters gauge");
    'keys: for (key, k) in &window.keys {
        if k.clusters < min || (k.numeric() && k.values.len() > insights::FEW_NUMBERS) {
            continue;
        }
        for (value, n) in k.view(min).values.iter().take(EXPORT_PER_KEY) {
            if series >= EXPORT_TOTAL {
                break 'keys;
            }
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(
                out,
                "reporter_insights_metric_clusters{{key=\"{}\",value=\"{}\"}} {n}",
                label(key),
                label(&value)
            );
            series += 1;
        }
    }
    Ok(out)
}

/// The receiver's own figures, and the insights for a scraper that may read them (with
/// `--read-token`, one that sends it: Prometheus's `authorization` setting).
async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let mut body = app.health.render();
    if authorized(&app, &headers) {
        match insights_export(&app).await {
            Ok(text) => body.push_str(&text),
            // The receiver's own figures still go out; the insights wait for the store.
            Err(e) => tracing::debug!(error = %e, "insights not exported: the store failed"),
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Every error answer is one line of JSON, axum's own rejections (a body over the cap, a
/// bad content type, a body cut short) included; their status and headers are kept.
async fn as_json(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the report is larger than 1 MiB".to_string()
    } else {
        // axum says what was wrong in a short text body: keep it, on one line.
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text).replace(['\n', '\r'], " ");
        match text.trim() {
            "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
            t => t.to_string(),
        }
    };
    let mut fresh = error(status, message);
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            fresh.headers_mut().insert(k, v.clone());
        }
    }
    fresh
}

fn router(app: App) -> Router {
    // Reads may need the token; POSTs, metrics and health never do.
    let reads = Router::new()
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/clusters", get(clusters))
        .route("/api/v1/metrics", get(metric_keys))
        .route("/api/v1/metrics/{key}", get(metric))
        .route("/", get(dashboard))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_token,
        ));
    Router::new()
        .merge(reads)
        .route(
            "/api/v1/reports",
            post(receive).layer(DefaultBodyLimit::max(intake::MAX_BODY_BYTES)),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::map_response(as_json))
        .with_state(app)
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    health: Arc<ReceiverHealth>,
    fatal: tokio::sync::watch::Receiver<Option<String>>,
}

impl ReceiverOptions {
    /// Checks every option; the first one out of range, in one line.
    pub fn validate(&self) -> Result<(), ReceiveError> {
        if !(self.rate_limit > 0.0 && self.rate_limit.is_finite()) {
            return Err(ReceiveError::Invalid(
                "the rate limit must be a positive number",
            ));
        }
        if !(self.rate_burst >= 1.0 && self.rate_burst.is_finite()) {
            return Err(ReceiveError::Invalid("the rate burst must be at least 1"));
        }
        if self.rollup_every < Duration::from_secs(1) {
            return Err(ReceiveError::Invalid("rollups must be at least 1s apart"));
        }
        if self.max_connections < 16 {
            return Err(ReceiveError::Invalid(
                "the connection cap must be at least 16",
            ));
        }
        if self.max_client_connections < 1 {
            return Err(ReceiveError::Invalid(
                "the per-client connection cap must be at least 1",
            ));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(ReceiveError::Invalid(
                "the request timeout must be at least 100ms",
            ));
        }
        if self.min_clusters < 2 {
            return Err(ReceiveError::Invalid(
                "--min-clusters must be at least 2: one cluster's values are its own",
            ));
        }
        if self.max_instances < 1 {
            return Err(ReceiveError::Invalid("the instance cap must be at least 1"));
        }
        if self.retention.is_some_and(|r| r < defaults::MIN_RETENTION) {
            return Err(ReceiveError::Invalid(
                "the retention must be at least 8d: raw reports tell repeats from new reports for the 7 days a slot is accepted",
            ));
        }
        Ok(())
    }
}

impl Receiver {
    /// Opens the store, binds `listen` and starts serving and rolling up.
    pub async fn start(o: ReceiverOptions) -> Result<Receiver, ReceiveError> {
        let store = store::open(&o.store, &o.store_options)?;
        Self::start_with(o, store).await
    }

    /// As [`Receiver::start`], on a store already open.
    pub async fn start_with(o: ReceiverOptions, store: Store) -> Result<Receiver, ReceiveError> {
        o.validate()?;
        let health = Arc::new(ReceiverHealth::default());
        let shutdown = CancellationToken::new();
        let pins: Arc<pins::Pins> = Arc::default();
        let app = App {
            store: store.clone(),
            token: o.read_token.as_deref().map(Arc::from),
            health: health.clone(),
            limit: Arc::new(RateLimit {
                rate: o.rate_limit,
                burst: o.rate_burst,
                buckets: Mutex::default(),
            }),
            cache: Arc::default(),
            proxies: o.trusted_proxies.clone().into(),
            forwarded_header: o.forwarded_header,
            pins: pins.clone(),
            max_instances: o.max_instances,
            store_log: Arc::default(),
            min_clusters: o.min_clusters,
            unsigned: Arc::default(),
        };
        let limits = usage_reporter_core::serve::Limits {
            max_connections: o.max_connections,
            per_client: o.max_client_connections,
            exempt: o.trusted_proxies.clone(),
            request_timeout: o.request_timeout,
        };
        let (addr, http, server) =
            usage_reporter_core::serve::serve(o.listen, router(app), limits, shutdown.clone())
                .await
                .map_err(|source| ReceiveError::Listen {
                    addr: o.listen,
                    source,
                })?;
        *health.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        tracing::info!(%addr, store = %store.describe(), "receiver started");
        let (fatal_tx, fatal) = tokio::sync::watch::channel(None);
        let roll = tokio::spawn(roll_up_while_leading(
            store,
            o.clone(),
            pins,
            health.clone(),
            fatal_tx,
            shutdown.clone(),
        ));
        Ok(Receiver {
            addr,
            shutdown,
            tasks: vec![http, roll],
            health,
            fatal,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The receiver's figures.
    pub fn health(&self) -> &Arc<ReceiverHealth> {
        &self.health
    }

    /// Resolves with the reason if the receiver cannot go on (its bucket does not exist, it
    /// may not write it, or it ignores conditional writes): no retry can fix that.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        loop {
            if let Some(why) = fatal.borrow_and_update().clone() {
                return why;
            }
            if fatal.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Stops serving; a rollup in progress stops at its next write, and only then is the lease
    /// released, so two receivers never roll up at once.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A receiver's side of the rollup election: its lease TTL is twice the rollup period, within
/// 2 s and 5 min.
pub(crate) fn elector(store: &Store, every: Duration) -> Elector {
    let ttl = (every * 2).clamp(Duration::from_secs(2), Duration::from_secs(300));
    Elector::new(
        store.clone().with_timeout(ttl / 4),
        LeaseConfig::new(ttl),
        uuid::Uuid::new_v4().to_string(),
    )
    .with_key(layout::LEASE)
}

/// Who did a job that only the rollup leader may do.
#[derive(Debug)]
pub enum By<T> {
    /// This process, holding the rollup lease: what the job returned.
    Us(T),
    /// The running rollup leader.
    Leader,
}

/// Why a job for the rollup leader was not done.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The job failed.
    #[error(transparent)]
    Rollup(#[from] rollup::RollupError),
    /// Neither the running leader did it nor could this process take the lease in time.
    #[error("no receiver did it within {0}")]
    Waited(String),
}

/// Does `work` as the rollup leader, for one-shot commands: takes the rollup lease if it is
/// free (no receiver running) and does the work under its fence, or, while a running receiver
/// holds it, waits until `done` says that receiver did it; at most `wait`. So only ever one
/// process writes rollups.
pub(crate) async fn as_rollup_leader<T>(
    store: &Store,
    wait: Duration,
    mut done: impl AsyncFnMut() -> Result<bool, StoreError>,
    mut work: impl AsyncFnMut(&rollup::Fence<'_>) -> Result<T, rollup::RollupError>,
) -> Result<By<T>, LeaderError> {
    let elector = elector(store, defaults::ROLLUP_EVERY);
    let release = CancellationToken::new();
    let election = {
        let (elector, release) = (elector.clone(), release.clone());
        tokio::spawn(async move { elector.run(release).await })
    };
    let deadline = tokio::time::Instant::now() + wait;
    let outcome = loop {
        match done().await {
            Ok(true) => break Ok(By::Leader),
            Ok(false) => {}
            Err(e) => break Err(rollup::RollupError::from(e).into()),
        }
        if elector.term().is_some() {
            let fence = || elector.term().is_some();
            break work(&fence).await.map(By::Us).map_err(LeaderError::from);
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(LeaderError::Waited(crate::timefmt::format_duration(wait)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    release.cancel();
    let _ = election.await;
    outcome
}

/// Rolls up every report stored before now, as `reporter rollup` does, window after window.
/// It holds no lease: a run records its window over the state it read before listing, and a
/// recorded window is redone identically by whoever runs next, so it is safe beside a running
/// receiver (do not run it at the same moment as `reporter forget`).
pub async fn roll_up_all(store: &Store) -> Result<rollup::Outcome, rollup::RollupError> {
    let started = Utc::now();
    let mut total = rollup::Outcome::default();
    loop {
        let out = rollup::run_once(store, started, Duration::ZERO, &rollup::unfenced()).await?;
        if out.window.is_empty() {
            cluster_list::compact(store, false, &rollup::unfenced()).await?;
            return Ok(total);
        }
        total.rows += out.rows;
        total.files += out.files;
        total.skipped += out.skipped;
        total.window = out.window;
    }
}

/// One receiver of those sharing the bucket rolls up, every `--rollup-every`, while it holds
/// the lease; it never writes a rollup or a summary past its renew deadline, and releases the
/// lease only once its last run has stopped.
async fn roll_up_while_leading(
    store: Store,
    o: ReceiverOptions,
    pins: Arc<pins::Pins>,
    health: Arc<ReceiverHealth>,
    fatal: tokio::sync::watch::Sender<Option<String>>,
    shutdown: CancellationToken,
) {
    match crate::store::selftest::check(&store, &shutdown).await {
        Ok(crate::store::selftest::Access::ReadWrite) => {}
        Ok(crate::store::selftest::Access::ReadOnly) => {
            fatal.send_replace(Some(format!(
                "the store at {} is read-only to this receiver; it must write reports there: check the credentials' permissions",
                store.describe()
            )));
            return;
        }
        Err(crate::store::selftest::SelfTestError::Shutdown) => return,
        Err(e) => {
            fatal.send_replace(Some(e.to_string()));
            return;
        }
    }
    let every = o.rollup_every;
    let elector = elector(&store, every);
    // The election stops only after the last rollup has: see the end of this function.
    let release = CancellationToken::new();
    let election = {
        let (elector, release) = (elector.clone(), release.clone());
        tokio::spawn(async move { elector.run(release).await })
    };
    let fence = {
        let (elector, shutdown) = (elector.clone(), shutdown.clone());
        move || !shutdown.is_cancelled() && elector.term().is_some()
    };
    let mut log = crate::retry::StateLog::default();
    let mut next_retention = Instant::now();
    let mut wait = every;
    loop {
        if crate::retry::sleep_or_stop(wait, &shutdown).await {
            break;
        }
        wait = every;
        if elector.term().is_none() {
            continue;
        }
        match forget::carry_out_requests(&store, &fence).await {
            Ok(done) => {
                for (cluster, _) in done {
                    pins.forget(&cluster);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a request to forget a cluster failed; it is carried out again at the next run")
            }
        }
        match rollup::run_once(&store, Utc::now(), o.settle, &fence).await {
            Ok(out) => {
                if log.recovered() {
                    tracing::info!("rollups work again");
                }
                health.rollups.fetch_add(1, Ordering::Relaxed);
                health
                    .rolled_up
                    .fetch_add(out.rows as u64, Ordering::Relaxed);
                if out.rows > 0 || out.skipped > 0 {
                    tracing::info!(rows = out.rows, files = out.files, skipped = out.skipped, window = %out.window, "rolled up");
                }
                if out.more {
                    wait = Duration::ZERO;
                } else if !out.window.is_empty() {
                    match cluster_list::compact(&store, false, &fence).await {
                        Ok(0) | Err(rollup::RollupError::NotLeader) => {}
                        Ok(n) => tracing::info!(deltas = n, "cluster list compacted"),
                        Err(e) => {
                            tracing::warn!(error = %e, "compacting the cluster list failed; it is tried again after the next window")
                        }
                    }
                }
            }
            Err(rollup::RollupError::NotLeader) => {}
            Err(e) => {
                if log.failing(e.to_string()) {
                    tracing::warn!(error = %e, "rollup failed; the next run redoes its window");
                }
            }
        }
        if let Some(retention) = o.retention.filter(|_| Instant::now() >= next_retention) {
            next_retention = Instant::now() + defaults::RETENTION_EVERY;
            match forget::expire(&store, Utc::now(), retention, &fence).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "retention: raw reports removed"),
                Err(e) => {
                    tracing::warn!(error = %e, "retention failed; it runs again within the hour")
                }
            }
        }
    }
    release.cancel();
    let _ = election.await;
}
