//! One replica as a library value: build it, start it, shut it down.
//!
//! [`ReplicaBuilder`] takes the same options as `reporter run`. [`ReplicaBuilder::start`] binds
//! the HTTP endpoint and starts the background work: agree on the seed, then guard it, sample
//! CPU, freeze a report at every slot, and take part in the leader election whose winner
//! delivers. [`Replica::shutdown`] stops all of it, releasing the lease if held.
//!
//! With reporting disabled nothing but the endpoint starts: no store is opened, no request
//! leaves the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::build_info::BuildInfo;
use crate::delivery::{Delivery, DeliveryConfig};
use crate::health::Health;
use crate::lease::{Leader, LeaseConfig};
use crate::report::{ReportSource, MAX_STATIC_METRICS_BYTES};
use crate::retry::{sleep_or_stop, StateLog};
use crate::seed::{CheckOutcome, Seed, SeedKeeper};
use crate::stats::{self, Registry};
use crate::store::{self, Store};
use crate::{http, slots, timefmt};

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad options: `reporter run` exits 2.
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything `reporter run` can set.
#[derive(Debug, Clone)]
pub struct Options {
    pub store: String,
    pub store_options: Vec<(String, String)>,
    pub listen: SocketAddr,
    pub target: String,
    pub stats_url: Option<Url>,
    pub interval: Duration,
    pub lease_ttl: Duration,
    pub collect_delay: Duration,
    pub metrics: Vec<(String, Value)>,
    pub seed_name: String,
    pub reporting_enabled: bool,
    pub seed_check: Duration,
    pub max_report_age: Option<Duration>,
    pub retention: Option<Duration>,
    pub post_timeout: Duration,
    pub cpu_sample_period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: "./reporter-data".to_string(),
            store_options: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 3200)),
            target: "all".to_string(),
            stats_url: None,
            interval: Duration::from_secs(4 * 3600),
            lease_ttl: Duration::from_secs(300),
            collect_delay: Duration::from_secs(60),
            metrics: Vec::new(),
            seed_name: crate::seed::DEFAULT_SEED_NAME.to_string(),
            reporting_enabled: true,
            seed_check: Duration::from_secs(15 * 60),
            max_report_age: None,
            retention: None,
            post_timeout: Duration::from_secs(10),
            cpu_sample_period: Duration::from_secs(60),
        }
    }
}

/// The shortest `--seed-check`.
pub const MIN_SEED_CHECK: Duration = Duration::from_secs(1);
/// The shortest `--post-timeout`.
pub const MIN_POST_TIMEOUT: Duration = Duration::from_millis(100);

/// Builds a [`Replica`].
#[derive(Debug, Clone)]
pub struct ReplicaBuilder {
    options: Options,
    store: Option<Store>,
    registry: Option<Arc<Registry>>,
    build: BuildInfo,
}

impl Default for ReplicaBuilder {
    fn default() -> Self {
        ReplicaBuilder::new()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.options.$name = value;
            self
        }
    };
}

impl ReplicaBuilder {
    pub fn new() -> Self {
        ReplicaBuilder {
            options: Options::default(),
            store: None,
            registry: None,
            build: BuildInfo::reporter(),
        }
    }

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
    setter!(/// How often CPU use is sampled for `cpu_usage` (default 1 min).
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

    /// Reports this registry's metrics (default: [`stats::global`]).
    pub fn registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The version block (default: the reporter's own build).
    pub fn build_info(mut self, build: BuildInfo) -> Self {
        self.build = build;
        self
    }

    fn validate(&self) -> Result<(), StartError> {
        let o = &self.options;
        for (k, _) in &o.metrics {
            if stats::RESERVED.contains(&k.as_str()) {
                return Err(StartError::Config(format!(
                    "--metric {k:?} is reserved for the reporter's built-in metrics"
                )));
            }
        }
        if o.interval < Duration::from_millis(100) {
            return Err(StartError::Config(
                "--interval must be at least 100ms".into(),
            ));
        }
        if o.lease_ttl < Duration::from_millis(300) {
            return Err(StartError::Config(
                "--lease-ttl must be at least 300ms".into(),
            ));
        }
        if o.collect_delay >= o.interval {
            return Err(StartError::Config(format!(
                "--collect-delay ({}) must be shorter than --interval ({})",
                timefmt::format_duration(o.collect_delay),
                timefmt::format_duration(o.interval)
            )));
        }
        if o.seed_check < MIN_SEED_CHECK {
            return Err(StartError::Config(format!(
                "--seed-check must be at least {}: every check reads the store, and more than one a second per replica only loads it",
                timefmt::format_duration(MIN_SEED_CHECK)
            )));
        }
        if let Some(age) = o.max_report_age {
            let floor = o.collect_delay + o.interval;
            if age < floor {
                return Err(StartError::Config(format!(
                    "--max-report-age ({}) must be at least --collect-delay plus --interval ({}): a report needs one interval after its collect delay to be delivered before it is dropped",
                    timefmt::format_duration(age),
                    timefmt::format_duration(floor)
                )));
            }
        }
        if o.post_timeout < MIN_POST_TIMEOUT {
            return Err(StartError::Config(format!(
                "--post-timeout must be at least {}: a shorter deadline fails POSTs the receiver would have answered, and every retry sends the report again",
                timefmt::format_duration(MIN_POST_TIMEOUT)
            )));
        }
        let static_bytes = serde_json::to_vec(&o.metrics).map_or(usize::MAX, |b| b.len());
        if static_bytes > MAX_STATIC_METRICS_BYTES {
            return Err(StartError::Config(format!(
                "--metric values take {static_bytes} bytes; at most {MAX_STATIC_METRICS_BYTES} are allowed, so that a report stays under its size cap"
            )));
        }
        Ok(())
    }

    /// Binds the endpoint and starts the replica's background work.
    pub async fn start(self) -> Result<Replica, StartError> {
        self.validate()?;
        let o = self.options;
        let health = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        let (fatal_tx, fatal_rx) = tokio::sync::watch::channel(None);

        if !o.reporting_enabled {
            let router = http::router(None, health.clone());
            let (addr, http_task) = http::serve(o.listen, router, shutdown.clone())
                .await
                .map_err(|source| StartError::Listen {
                    addr: o.listen,
                    source,
                })?;
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
            });
        }

        // The store call deadline must leave the lease room to renew before it expires.
        let deadline = store::DEFAULT_TIMEOUT.min(o.lease_ttl / 4);
        let store = match self.store {
            Some(s) => s,
            None => store::open(&o.store, &o.store_options)
                .map_err(|e| StartError::Config(e.to_string()))?,
        }
        .with_timeout(deadline)
        .with_health(health.clone());

        let registry = self.registry.unwrap_or_else(|| stats::global().clone());
        let source = Arc::new(ReportSource::new(
            o.target.clone(),
            self.build.clone(),
            o.interval,
            registry,
            o.metrics.clone(),
        ));
        let router = http::router(Some(source.clone()), health.clone());
        let (addr, http_task) = http::serve(o.listen, router, shutdown.clone())
            .await
            .map_err(|source| StartError::Listen {
                addr: o.listen,
                source,
            })?;
        tracing::info!(
            %addr,
            store = %store.describe(),
            instance_id = %source.instance_id(),
            interval = %timefmt::format_duration(o.interval),
            "replica started"
        );
        if o.stats_url.is_none() {
            tracing::info!("no --stats-url: reports are kept in the bucket only");
        }

        let mut tasks = vec![http_task];
        tasks.push(tokio::spawn(sample_cpu(
            source.clone(),
            o.cpu_sample_period,
            shutdown.clone(),
        )));
        let keeper = SeedKeeper::new(store.clone(), o.seed_name.clone(), self.build.clone());
        tasks.push(tokio::spawn(run(
            o,
            store,
            keeper,
            source.clone(),
            health.clone(),
            shutdown.clone(),
            fatal_tx,
        )));
        Ok(Replica {
            addr,
            shutdown,
            tasks,
            source: Some(source),
            health,
            fatal: fatal_rx,
        })
    }
}

async fn sample_cpu(source: Arc<ReportSource>, period: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => source.cpu().sample(),
        }
    }
}

/// Seed first; then the seed guard, the slot loop and the lease with delivery side by side.
async fn run(
    o: Options,
    store: Store,
    keeper: SeedKeeper,
    source: Arc<ReportSource>,
    health: Arc<Health>,
    shutdown: CancellationToken,
    fatal: tokio::sync::watch::Sender<Option<String>>,
) {
    // A valid seed is adopted at once, before any write: reading needs no trust in the
    // store's conditional writes, and a replica with read-only access still reports its ID.
    let existing = match keeper.read().await {
        Ok(crate::seed::ReadOutcome::Valid(seed)) => {
            tracing::info!(cluster_id = seed.uid(), "adopted the cluster seed");
            source.set_seed(seed.clone());
            health.set_seed_known(true);
            Some(seed)
        }
        _ => None,
    };
    match store::selftest::check(&store, &shutdown).await {
        Ok(()) => {}
        Err(store::selftest::SelfTestError::Shutdown) => return,
        Err(e) => {
            let _ = fatal.send(Some(e.to_string()));
            return;
        }
    }
    let seed = match existing {
        Some(seed) => seed,
        None => match keeper.agree(&shutdown).await {
            Ok(seed) => seed,
            Err(crate::seed::AgreeError::Shutdown) => return,
            Err(e) => {
                let _ = fatal.send(Some(e.to_string()));
                return;
            }
        },
    };
    source.set_seed(seed.clone());
    health.set_seed_known(true);
    // The identity this replica holds; it only ever changes to an older one (see `seed`).
    let (identity, identity_rx) = watch::channel(seed);

    let delivery = Delivery::new(
        store.clone(),
        DeliveryConfig::from_options(&o),
        health.clone(),
    );
    let leader = Leader::new(
        store.clone(),
        LeaseConfig::new(o.lease_ttl),
        source.instance_id().to_string(),
        health.clone(),
    )
    .with_identity(identity_rx.clone());
    let guard = guard_seed(
        keeper,
        identity,
        source.clone(),
        o.seed_check,
        shutdown.clone(),
    );
    let slots = freeze_slots(
        identity_rx.clone(),
        source.clone(),
        delivery.clone(),
        shutdown.clone(),
    );
    let lead = crate::delivery::lead(leader, delivery, identity_rx, o.interval, shutdown.clone());
    tokio::join!(guard, slots, lead);
}

/// Re-reads the seed every `period` and keeps the cluster on one identity: restores a vanished
/// or corrupted seed, writes this replica's identity over a younger one, adopts an older one.
async fn guard_seed(
    keeper: SeedKeeper,
    identity: watch::Sender<Seed>,
    source: Arc<ReportSource>,
    period: Duration,
    shutdown: CancellationToken,
) {
    let mut log = StateLog::default();
    loop {
        if sleep_or_stop(period, &shutdown).await {
            return;
        }
        // A lost race is checked again at once, a few times; then at the next period.
        for _ in 0..3 {
            let known = identity.borrow().clone();
            let outcome = keeper.check(&known).await;
            if let CheckOutcome::Failed(e) = &outcome {
                if log.failing(e.kind()) {
                    tracing::warn!(error = %e, "cannot check the cluster seed; will try again");
                }
                break;
            }
            if log.recovered() {
                tracing::info!("cluster seed checked again");
            }
            match outcome {
                CheckOutcome::Raced => continue,
                CheckOutcome::Restored => tracing::warn!(
                    cluster_id = known.uid(),
                    "the cluster seed had vanished; restored it"
                ),
                CheckOutcome::Repaired => tracing::warn!(
                    cluster_id = known.uid(),
                    "the cluster seed was corrupted; restored it"
                ),
                CheckOutcome::Reasserted(younger) => tracing::warn!(
                    cluster_id = known.uid(),
                    replaced = %younger,
                    "the bucket held a younger cluster ID; wrote back the older one, which every replica adopts at its next check"
                ),
                CheckOutcome::Adopt(older) => {
                    tracing::warn!(
                        from = known.uid(),
                        to = older.uid(),
                        "this replica's cluster ID changes to the older one in the bucket: two identities met after the bucket was wiped, and the older wins"
                    );
                    source.set_seed(older.clone());
                    identity.send_replace(older);
                }
                CheckOutcome::Intact | CheckOutcome::Failed(_) => {}
            }
            break;
        }
    }
}

/// How long to sleep at most before looking at the wall clock again, so a clock jump or a
/// suspended host neither skips nor doubles a slot.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Freezes this replica's report at every slot and keeps it in the bucket.
async fn freeze_slots(
    identity: watch::Receiver<Seed>,
    source: Arc<ReportSource>,
    delivery: Delivery,
    shutdown: CancellationToken,
) {
    let interval = source.interval();
    let mut seed = identity.borrow().clone();
    // Nothing is frozen for a slot that passed before this replica started.
    let mut done = slots::last_slot(&seed.created_at(), chrono::Utc::now(), interval);
    loop {
        let now = chrono::Utc::now();
        if identity.borrow().uid() != seed.uid() {
            // Slots follow a new identity; nothing is frozen for one of its slots that passed.
            seed = identity.borrow().clone();
            done = slots::last_slot(&seed.created_at(), now, interval);
        }
        let created = seed.created_at();
        if let Some(due) = slots::slot_to_freeze(&created, now, interval, done) {
            let report = source.freeze(due);
            delivery
                .keep(due, &source.instance_id().to_string(), report, &shutdown)
                .await;
            done = Some(due);
            continue;
        }
        let next = slots::next_slot(&created, now + chrono::Duration::nanoseconds(1), interval);
        let wait = next
            .and_then(|n| (n - now).to_std().ok())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        if sleep_or_stop(wait, &shutdown).await {
            return;
        }
    }
}

/// A running replica.
#[derive(Debug)]
pub struct Replica {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    source: Option<Arc<ReportSource>>,
    health: Arc<Health>,
    fatal: tokio::sync::watch::Receiver<Option<String>>,
}

impl Replica {
    /// The endpoint's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The report builder (None when reporting is disabled).
    pub fn source(&self) -> Option<&Arc<ReportSource>> {
        self.source.as_ref()
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Resolves with a reason if the replica hit an error it cannot work past.
    pub async fn failed(&mut self) -> String {
        loop {
            if let Some(reason) = self.fatal.borrow().clone() {
                return reason;
            }
            if self.fatal.changed().await.is_err() {
                // The run task ended without a fatal error: wait for ever.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops everything; a leader releases its lease first.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
