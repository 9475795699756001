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
//! - `options`: [`ReceiverOptions`], their [`defaults`] and checks;
//! - `receive`: `POST /api/v1/reports`, behind `rate_limit`'s token buckets;
//! - `api`: the read API and the dashboard, behind `auth`'s read token;
//! - `metrics`: `/metrics`, the receiver's own figures ([`ReceiverHealth`]) and the insights;
//! - this module: the router, the receiver's lifecycle and the rollup leader's loop.
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

mod api;
mod auth;
mod metrics;
mod options;
mod rate_limit;
mod receive;

use api::Cache;
use rate_limit::RateLimit;
use receive::{SlotCounts, StoreLog};

pub use api::DASHBOARD;
pub use metrics::ReceiverHealth;
pub use options::{defaults, ReceiveError, ReceiverOptions};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use usage_reporter_core::{lease, net, retry, signing, store, timefmt};

use crate::lease::{Elector, LeaseConfig};
use crate::store::{Store, StoreError};

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

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
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
    let reads = api::routes().route_layer(axum::middleware::from_fn_with_state(
        app.clone(),
        auth::require_token,
    ));
    Router::new()
        .merge(reads)
        .route(
            "/api/v1/reports",
            post(receive::receive).layer(DefaultBodyLimit::max(intake::MAX_BODY_BYTES)),
        )
        .route("/metrics", get(metrics::metrics))
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

impl Receiver {
    /// Opens the store, binds `listen` and starts serving and rolling up.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), usage_reporter_receiver::ReceiveError> {
    /// use usage_reporter_receiver::{Receiver, ReceiverOptions};
    ///
    /// let mut options = ReceiverOptions::default();
    /// options.store = "s3://usage-reports/v1".into();
    /// options.min_clusters = 10;
    /// let receiver = Receiver::start(options).await?;
    /// eprintln!("receiving on {}", receiver.local_addr());
    /// let why = receiver.failed().await; // only what no retry can fix
    /// eprintln!("receiver stopped: {why}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ReceiveError`]: a store URL or option that cannot be used, an option out of range, or
    /// an address that cannot be bound.
    pub async fn start(o: ReceiverOptions) -> Result<Receiver, ReceiveError> {
        let store = store::open(&o.store, &o.store_options)?;
        Self::start_with(o, store).await
    }

    /// As [`Receiver::start`], on a store already open.
    ///
    /// # Errors
    ///
    /// [`ReceiveError`]: an option out of range, or an address that cannot be bound.
    pub async fn start_with(o: ReceiverOptions, store: Store) -> Result<Receiver, ReceiveError> {
        o.validate()?;
        let health = Arc::new(ReceiverHealth::default());
        let shutdown = CancellationToken::new();
        let pins: Arc<pins::Pins> = Arc::default();
        let app = App {
            store: store.clone(),
            token: o.read_token.as_deref().map(Arc::from),
            health: health.clone(),
            limit: Arc::new(RateLimit::new(o.rate_limit, o.rate_burst)),
            cache: Arc::default(),
            proxies: o.trusted_proxies.clone().into(),
            forwarded_header: o.forwarded_header,
            pins: pins.clone(),
            max_instances: o.max_instances,
            store_log: Arc::default(),
            min_clusters: o.min_clusters,
            unsigned: Arc::default(),
        };
        let mut limits = usage_reporter_core::serve::Limits::default();
        limits.max_connections = o.max_connections;
        limits.per_client = o.max_client_connections;
        limits.exempt = o.trusted_proxies.clone();
        limits.request_timeout = o.request_timeout;
        let (addr, http, server) =
            usage_reporter_core::serve::serve(o.listen, router(app), limits, shutdown.clone())
                .await
                .map_err(|source| ReceiveError::Listen {
                    addr: o.listen,
                    source,
                })?;
        health.set_server(server);
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

    /// Stops serving; a rollup in progress stops at its next write (every write checks the
    /// fence, which fails once shutdown starts), and only then is the lease released, so two
    /// receivers never roll up at once. Waits at most [`SHUTDOWN_WAIT`]: a store that does not
    /// answer cannot hold a process's exit (its lease then expires on its own).
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        if tokio::time::timeout(SHUTDOWN_WAIT, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                waited = ?SHUTDOWN_WAIT,
                "the receiver did not stop in time (the store is not answering); its lease expires on its own"
            );
        }
    }
}

/// How long [`Receiver::shutdown`] waits for serving and rolling up to stop.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

impl Drop for Receiver {
    /// Stops serving and rolling up, without waiting: as [`Receiver::shutdown`] but unawaited.
    fn drop(&mut self) {
        self.shutdown.cancel();
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
#[non_exhaustive]
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
///
/// # Errors
///
/// [`rollup::RollupError`]: what the store said, or a Parquet file that could not be written;
/// the windows recorded before stay rolled up.
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
                health.rolled_up(out.rows as u64);
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
