//! One replica as a library value: build it, start it, shut it down.
//!
//! [`ReplicaBuilder`] takes the same options as `reporter run` ([`Options`], in
//! [`crate::options`]). [`ReplicaBuilder::start`] checks them, binds the HTTP endpoint and
//! starts the background work of [`crate::tasks`]. [`Replica::shutdown`] stops all of it,
//! releasing the lease if held.
//!
//! With reporting disabled nothing but the endpoint starts: no store is opened, no request
//! leaves the process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::build_info::BuildInfo;
use crate::delivery::Delivery;
use crate::health::Health;
pub use crate::options::{OptionError, Options, Setting};
use crate::report::ReportSource;
use crate::seed::SeedKeeper;
use crate::stats::{self, Registry};
use crate::store::{self, OpenError, Store};
pub(crate) use crate::tasks::Fatal;
use crate::tasks::{self, Parts, Plan};
use crate::{http, timefmt};

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// An option is out of range.
    #[error(transparent)]
    Invalid(#[from] OptionError),
    /// The store URL or its options are wrong.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The HTTP client for deliveries could not be built (TLS roots, most likely).
    #[error("cannot build the HTTP client: {}", store::error_chain(.0))]
    Client(#[source] reqwest::Error),
    /// The object store given to [`ReplicaBuilder::object_store`] cannot do the conditional
    /// writes the seed and the lease rest on.
    #[error("{0} cannot compare-and-swap, which the leader lease needs; for a local directory pass its path to ReplicaBuilder::store instead (the crate's own local backend can)")]
    NoConditionalWrites(String),
    /// The endpoint's address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Builds a [`Replica`].
#[derive(Debug, Clone)]
pub struct ReplicaBuilder {
    options: Options,
    store: Option<Store>,
    registry: Option<Arc<Registry>>,
    build: BuildInfo,
    edition: String,
    endpoint: bool,
}

impl Default for ReplicaBuilder {
    fn default() -> Self {
        ReplicaBuilder::new()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: String) => {
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.options.$name = value.into();
            self
        }
    };
    ($(#[$doc:meta])* $name:ident: Option<$ty:ty>) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.options.$name = Some(value);
            self
        }
    };
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.options.$name = value;
            self
        }
    };
}

impl ReplicaBuilder {
    /// A builder with every option at its default.
    pub fn new() -> Self {
        ReplicaBuilder {
            options: Options::default(),
            store: None,
            registry: None,
            build: BuildInfo::reporter(),
            edition: "oss".to_string(),
            endpoint: true,
        }
    }

    /// A builder with these options.
    pub fn from_options(options: Options) -> Self {
        ReplicaBuilder {
            options,
            ..ReplicaBuilder::new()
        }
    }

    setter!(/// The store URL or path (`--store`).
        store: String);
    setter!(/// Store client options (`--store-option`).
        store_options: Vec<(String, String)>);
    setter!(/// The HTTP endpoint's address (`--listen`).
        listen: SocketAddr);
    setter!(/// This replica's role (`--target`).
        target: String);
    setter!(/// Where the leader POSTs reports (`--stats-url`).
        stats_url: Option<Url>);
    setter!(/// The report period (`--interval`).
        interval: Duration);
    setter!(/// The leader lease duration (`--lease-ttl`).
        lease_ttl: Duration);
    setter!(/// The leader's wait after a slot (`--collect-delay`).
        collect_delay: Duration);
    setter!(/// The seed object's name (`--seed-name`).
        seed_name: String);
    setter!(/// `false` disables everything but the endpoint (`--reporting-enabled`).
        reporting_enabled: bool);
    setter!(/// How often the seed is checked and restored (`--seed-check`).
        seed_check: Duration);
    setter!(/// Reports older than this are dropped (`--max-report-age`).
        max_report_age: Option<Duration>);
    setter!(/// How long delivered reports stay in the bucket (`--retention`).
        retention: Option<Duration>);
    setter!(/// The deadline of one POST to the stats URL (`--post-timeout`).
        post_timeout: Duration);
    setter!(/// How often CPU use is sampled for `cpu_usage` (default 1 min; not a flag).
        cpu_sample_period: Duration);

    /// Adds a static metric (`--metric`).
    pub fn metric(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.options.metrics.push((key.into(), value.into()));
        self
    }

    /// Uses this store instead of opening `--store`.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses the service's own object store, under `prefix` (`""` for the bucket's root): S3,
    /// GCS, Azure or memory, as object_store builds them. [`start`](Self::start) refuses
    /// object_store's `LocalFileSystem`, which cannot compare-and-swap: for a directory give
    /// its path to [`store`](Self::store) instead, which uses this crate's own local backend.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use object_store::memory::InMemory; // or the service's AmazonS3, GoogleCloudStorage...
    ///
    /// let store: Arc<dyn object_store::ObjectStore> = Arc::new(InMemory::new());
    /// let replica = usage_reporter::ReplicaBuilder::new()
    ///     .object_store(store, "usage")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn object_store(
        mut self,
        store: Arc<dyn object_store::ObjectStore>,
        prefix: impl Into<String>,
    ) -> Self {
        let describe = store.to_string();
        let prefix = prefix.into();
        let backend = store::cloud::CloudStore::new(
            store,
            object_store::path::Path::from(prefix.as_str()),
            describe,
        );
        self.store = Some(Store::new(Arc::new(backend)));
        self
    }

    /// The report's `edition` (default `oss`).
    pub fn edition(mut self, edition: impl Into<String>) -> Self {
        self.edition = edition.into();
        self
    }

    /// Reports this registry's metrics (default: [`stats::global`]).
    pub fn registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Serves no HTTP endpoint: for running many replicas in one process (tests, benchmarks),
    /// or for a service that mounts [`Replica::usage_stats`] on its own router. `local_addr` is then
    /// the unspecified address.
    pub fn without_endpoint(mut self) -> Self {
        self.endpoint = false;
        self
    }

    /// The version block (default: the reporter's own build).
    pub fn build_info(mut self, build: BuildInfo) -> Self {
        self.build = build;
        self
    }

    /// Checks the options, binds the endpoint and starts the replica's background work.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), usage_reporter::StartError> {
    /// use std::time::Duration;
    /// use usage_reporter::{BuildInfo, ReplicaBuilder};
    ///
    /// let replica = ReplicaBuilder::new()
    ///     .store("/var/lib/my-service/usage") // or s3://bucket/prefix, gs://, az://
    ///     .target("querier")
    ///     .build_info(BuildInfo::service(env!("CARGO_PKG_VERSION")))
    ///     .interval(Duration::from_secs(4 * 3600))
    ///     .start()
    ///     .await?;
    /// println!("serving the report on {}", replica.local_addr());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// An option out of range ([`StartError::Invalid`]), a store URL or option that cannot be
    /// used ([`StartError::Store`]), an object store without compare-and-swap
    /// ([`StartError::NoConditionalWrites`]), an HTTP client that cannot be built, or an
    /// endpoint address that cannot be bound. What the store itself answers comes later,
    /// through [`Replica::failed`] (and the log), since a store may be down at start.
    pub async fn start(self) -> Result<Replica, StartError> {
        self.options.validate()?;
        if let Some(s) = &self.store {
            let described = s.describe();
            // object_store names its local store, and wrappers such as LimitStore name it too.
            if described.contains("LocalFileSystem") {
                return Err(StartError::NoConditionalWrites(format!(
                    "object_store's {described}"
                )));
            }
        }
        let o = self.options;
        let health = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        let (fatal_tx, fatal_rx) = watch::channel(None);

        let serve = |source: Option<Arc<ReportSource>>| {
            let router = http::router(source, health.clone());
            let (listen, shutdown) = (o.listen, shutdown.clone());
            async move {
                http::serve(listen, router, http::Limits::default(), shutdown)
                    .await
                    .map(|(addr, task, _)| (addr, task))
                    .map_err(|source| StartError::Listen {
                        addr: listen,
                        source,
                    })
            }
        };
        if !o.reporting_enabled {
            let (addr, http_task) = serve(None).await?;
            tracing::info!(
                %addr,
                "replica started with usage reporting disabled: endpoint only, no store, no network"
            );
            return Ok(Replica {
                addr,
                shutdown,
                tasks: vec![http_task],
                source: None,
                health,
                fatal: fatal_rx,
                watched: Arc::default(),
            });
        }

        // The store call deadline must leave the lease room to renew before it expires.
        let deadline = store::DEFAULT_TIMEOUT.min(o.lease_ttl / 4);
        // A handle of its own over the backend: this replica's request counts are its own,
        // even when a caller gives several replicas one `Store`.
        let store = match self.store {
            Some(s) => Store::new(s.backend().clone()),
            None => store::open(&o.store, &o.store_options)?,
        }
        .with_timeout(deadline)
        .with_observer(health.clone());
        health.count_store(store.requests().clone());
        // Every replica reads or writes the lease at least every 4/5 of its TTL.
        health.set_ready_window(o.lease_ttl * 2);
        let user_agent = crate::build_info::user_agent(&self.build);
        let delivery = Delivery::new(store.clone(), o.delivery(), health.clone(), user_agent)
            .map_err(StartError::Client)?;

        let registry = self.registry.unwrap_or_else(|| stats::global().clone());
        let source = Arc::new(
            ReportSource::new(
                o.target.clone(),
                self.build.clone(),
                o.interval,
                registry,
                o.metrics.clone(),
            )
            .with_edition(self.edition.clone()),
        );
        let mut tasks = Vec::new();
        let addr = if self.endpoint {
            let (addr, http_task) = serve(Some(source.clone())).await?;
            tasks.push(http_task);
            addr
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        tracing::info!(
            %addr,
            store = %store.describe(),
            instance_id = %source.instance_id(),
            interval = %timefmt::format_duration(o.interval),
            "replica started"
        );
        if o.stats_url.is_none() {
            tracing::info!("no stats URL: reports are kept in the bucket only");
        }

        tasks.push(tokio::spawn(tasks::sample_cpu(
            source.clone(),
            o.cpu_sample_period,
            shutdown.clone(),
        )));
        let keeper = SeedKeeper::new(store.clone(), o.seed_name.clone(), self.build.clone());
        let plan = Plan {
            interval: o.interval,
            lease_ttl: o.lease_ttl,
            seed_check: o.seed_check,
        };
        let parts = Parts {
            store,
            keeper,
            source: source.clone(),
            delivery,
            health: health.clone(),
        };
        tasks.push(tokio::spawn(tasks::run(
            plan,
            parts,
            shutdown.clone(),
            fatal_tx,
        )));
        let watched = Arc::new(AtomicBool::new(false));
        tasks.push(tokio::spawn(log_unwatched(
            fatal_rx.clone(),
            watched.clone(),
            shutdown.clone(),
        )));
        Ok(Replica {
            addr,
            shutdown,
            tasks,
            source: Some(source),
            health,
            fatal: fatal_rx,
            watched,
        })
    }
}

/// How long [`Replica::shutdown`] waits for the background work to stop (a leader's release
/// of the lease included) before it abandons it.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// A running replica. Dropping it stops its background work: each task ends at its next step,
/// a leader releasing the lease if the runtime lets it finish; [`Replica::shutdown`] waits for
/// that (within a bound).
#[derive(Debug)]
pub struct Replica {
    addr: SocketAddr,
    shutdown: CancellationToken,
    /// The background tasks, awaited by `shutdown`; empty once it ran.
    tasks: Vec<JoinHandle<()>>,
    source: Option<Arc<ReportSource>>,
    health: Arc<Health>,
    fatal: watch::Receiver<Option<Fatal>>,
    /// Whether anyone asked [`Replica::failed`]: if not, a fatal error is logged, so that it is
    /// never silent; if so, the caller says it (the CLI prints it as its last line).
    watched: Arc<AtomicBool>,
}

/// The reporter's own metrics (`usage_reporter_*`: readiness, leadership, store requests by
/// operation and outcome, reports written, delivered, failed and dropped, delivery latency).
/// Cloning it is cheap.
///
/// Register them in the service's own prometheus-client registry, so that its scrape shows
/// them beside its own families:
///
/// ```no_run
/// # async fn demo(replica: usage_reporter::Replica) {
/// use usage_reporter::prometheus_client::registry::Registry;
///
/// let mut registry = Registry::default();
/// // ... the service registers its own families ...
/// replica.metrics().register(&mut registry);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReporterMetrics(Arc<Health>);

impl ReporterMetrics {
    /// Registers every `usage_reporter_*` family in `registry`: live handles, not copies.
    /// Register one replica once per registry (twice would show each family twice).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.0.register(registry);
    }

    /// The families alone in OpenMetrics text, `# EOF` included: what the replica's own
    /// `/metrics` serves, for a service without a prometheus-client registry.
    pub fn render(&self) -> String {
        self.0.render()
    }
}

/// Logs a fatal error at ERROR unless the embedding service awaits [`Replica::failed`].
async fn log_unwatched(
    mut fatal: watch::Receiver<Option<Fatal>>,
    watched: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let reason = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = fatal.wait_for(Option::is_some) => match r {
            Ok(r) => r.clone(),
            Err(_) => return,
        },
    };
    if let (Some(reason), false) = (reason, watched.load(Ordering::Relaxed)) {
        tracing::error!(error = %reason, "usage reporting stopped for good");
    }
}

impl Replica {
    /// The endpoint's bound address (the unspecified address without an endpoint).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This process's instance ID, as its reports carry it (`None` with reporting disabled).
    pub fn instance_id(&self) -> Option<String> {
        self.source.as_ref().map(|s| s.instance_id().to_string())
    }

    /// The cluster ID, once the seed is known.
    pub fn cluster_id(&self) -> Option<String> {
        self.source.as_ref()?.seed().map(|s| s.uid().to_string())
    }

    /// Whether this replica leads (delivers every replica's reports) at this moment.
    pub fn is_leader(&self) -> bool {
        self.health.is_leader()
    }

    /// This replica's live report, as `GET /status/usage-stats` serves it (`None` with
    /// reporting disabled). Reading it changes nothing.
    pub fn report(&self) -> Option<serde_json::Value> {
        let source = self.source.as_ref()?;
        serde_json::to_value(source.live(chrono::Utc::now())).ok()
    }

    /// The reporter's own metrics, as the endpoint's `/metrics` serves them: a cheap handle
    /// for a service that exposes them on its own metrics route.
    pub fn metrics(&self) -> ReporterMetrics {
        ReporterMetrics(self.health.clone())
    }

    /// The handler of `GET /status/usage-stats`, to mount on the service's own router:
    ///
    /// ```no_run
    /// # fn demo(replica: &usage_reporter::Replica) -> axum::Router {
    /// axum::Router::new().route("/status/usage-stats", replica.usage_stats())
    /// # }
    /// ```
    pub fn usage_stats<S: Clone + Send + Sync + 'static>(&self) -> axum::routing::MethodRouter<S> {
        http::usage_stats_route(self.source.clone())
    }

    /// `GET /healthz` and `GET /ready` (see the crate's README), to merge into the service's
    /// router if it has no such routes of its own.
    ///
    /// ```no_run
    /// # fn demo(replica: &usage_reporter::Replica, app: axum::Router) -> axum::Router {
    /// app.merge(replica.health_routes())
    /// # }
    /// ```
    pub fn health_routes<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        http::health_router(self.source.is_some(), self.health.clone())
    }

    /// Resolves if the replica hits an error it cannot work past (a store that cannot do
    /// conditional writes, a seed that cannot be agreed on); pending for ever otherwise. The
    /// future borrows nothing, so it can be a server's graceful-shutdown signal.
    ///
    /// ```no_run
    /// # async fn demo(replica: usage_reporter::Replica) {
    /// let failed = replica.failed();
    /// tokio::spawn(async move {
    ///     let fatal = failed.await;
    ///     // Reporting has stopped; the service goes on. Tell the operator.
    ///     eprintln!("usage reporting stopped: {fatal}");
    /// });
    /// # }
    /// ```
    pub fn failed(&self) -> impl std::future::Future<Output = Fatal> + Send + 'static {
        self.watched.store(true, Ordering::Relaxed);
        let mut fatal = self.fatal.clone();
        async move {
            loop {
                if let Some(reason) = fatal.borrow_and_update().clone() {
                    return reason;
                }
                if fatal.changed().await.is_err() {
                    // The run task ended without a fatal error: wait for ever.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Stops everything, a leader releasing its lease first, waiting at most
    /// [`SHUTDOWN_WAIT`] (a store that does not answer cannot hold a service's shutdown).
    ///
    /// ```no_run
    /// # async fn demo(replica: usage_reporter::Replica, app: axum::Router) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(async {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///     })
    ///     .await?;
    /// replica.shutdown().await; // the lease is released: a follower leads at once
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        if tokio::time::timeout(SHUTDOWN_WAIT, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                wait = %timefmt::format_duration(SHUTDOWN_WAIT),
                "the reporter's background work did not stop in time; abandoned (the lease, if held, expires after its TTL)"
            );
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
