//! Reports in the bucket, and their delivery by the leader.
//!
//! Keys are in [`crate::layout`]: a replica's frozen report for a slot is
//! `usage/reports/<slot>/<instanceID>.json`, the exact bytes that will be POSTed, written once
//! with create-if-absent; `usage/delivered/<slot>/<instanceID>.json` records its delivery.
//!
//! A delivery pass (leader only) lists both prefixes and walks the reports without a record,
//! oldest first, once their slot is `collect_delay` old. For each one it checks leadership on
//! its own clock, reads the bytes, vets them, POSTs them (retries with exponential backoff and
//! jitter, the same bytes each time, an `Idempotency-Key` header, redirects never followed),
//! then writes the record. A leader that dies between a POST and its record causes that one
//! report to be sent again by the next leader. A record that cannot be written is retried by
//! the same leader, never the POST. Reports older than `max_age` are dropped with a log line
//! and a counter; delivered ones are deleted after `retention`.
//!
//! Only bytes that are a report of this cluster, whose `interval` and `instanceID` match their
//! key, within [`MAX_REPORT_BYTES`], ever leave. Anything else under `usage/reports/` (garbage,
//! an oversized object, a link, a key that is not ours) is logged once, counted and removed; a
//! valid report of another cluster ID (left from a fork being healed) is held, unsent, until it
//! ages out. One bad object never stops the pass.
//!
//! Every POST is signed with the cluster's key ([`crate::signing`]), read from the bucket (and
//! created there by a writer the first time); while it cannot be read, reports go unsigned.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::health::Health;
use crate::layout::{parse_key, record_key, report_key, DELIVERED, REPORTS, SIGNING_KEY};
use crate::report::{Report, MAX_REPORT_BYTES};
use crate::retry::{backoff, sleep_or_stop, StateLog};
use crate::seed::Seed;
use crate::signing::ClusterKey;
use crate::store::{Store, StoreError};
use crate::timefmt;

/// How the leader delivers.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Where reports go; `None` keeps them in the bucket.
    pub stats_url: Option<Url>,
    /// The report period.
    pub interval: Duration,
    /// How long after a slot its reports are left to arrive.
    pub collect_delay: Duration,
    /// Undelivered reports older than this are dropped.
    pub max_age: Duration,
    /// Delivered reports are deleted after this.
    pub retention: Duration,
    /// POST attempts per report in one pass.
    pub attempts: usize,
    /// The deadline of one POST, connection included (`--post-timeout`).
    pub request_timeout: Duration,
    /// Reports a pass reads, POSTs and records at once.
    pub concurrency: usize,
}

/// Whether this replica may act as leader at this instant, and in which term: asked before
/// every POST and written into every record. The election (`lease::Elector::term`) answers it.
pub(crate) type Term<'a> = dyn Fn() -> Option<u64> + Send + Sync + 'a;

/// What a pass left behind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PassOutcome {
    /// Reports POSTed with a 2xx.
    pub delivered: usize,
    /// Reports dropped past the age bound.
    pub dropped: usize,
    /// Objects under `usage/reports/` that were not reports of this cluster, removed.
    pub rejected: usize,
    /// Reports that are due but were not delivered (failures, lost leadership), or delivered
    /// but not yet recorded.
    pub pending: usize,
}

/// Why an object under `usage/reports/` is never sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejection {
    /// A key under `usage/reports/` that no replica writes.
    #[error("its key is not usage/reports/<slot>/<instanceID>.json")]
    BadKey,
    /// Past the report size cap.
    #[error("larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    /// A link, a directory, a pipe or a device.
    #[error("{0}")]
    NotRegular(&'static str),
    /// Bytes that are not a report of this cluster matching the key.
    #[error("not a report: {0}")]
    Invalid(String),
    /// Not exactly the shape of a report this version freezes.
    #[error("not a report of this version's shape: {0}")]
    Shape(crate::shape::ShapeError),
}

impl Rejection {
    /// The `reason` label of `usage_reporter_reports_rejected_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Rejection::BadKey => "bad_key",
            Rejection::TooLarge => "too_large",
            Rejection::NotRegular(_) => "not_regular",
            Rejection::Invalid(_) => "invalid",
            Rejection::Shape(e) => e.reason(),
        }
    }
}

/// What vetting a report's bytes decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A report of this cluster matching its key; the `Idempotency-Key` to send it with.
    Send(String),
    /// A valid report of another cluster ID: held, never sent.
    OtherCluster(String),
    /// Never to be sent.
    Reject(Rejection),
}

/// Vets bytes read at `usage/reports/<slot>/<instance>.json` for the cluster `seed`, whose
/// interval is `interval`: only exactly what this version freezes is sent
/// ([`crate::shape`]).
pub(crate) fn vet(
    bytes: &[u8],
    seed: &Seed,
    slot: DateTime<Utc>,
    instance: &str,
    interval: Duration,
) -> Verdict {
    let invalid = |why: &str| Verdict::Reject(Rejection::Invalid(why.to_string()));
    if bytes.len() > MAX_REPORT_BYTES {
        return Verdict::Reject(Rejection::TooLarge);
    }
    if let Err(e) = crate::shape::check(bytes, interval.as_secs_f64()) {
        return Verdict::Reject(Rejection::Shape(e));
    }
    let Ok(Value::Object(report)) = serde_json::from_slice::<Value>(bytes) else {
        return invalid("not a JSON object");
    };
    let text = |k: &str| report.get(k).and_then(Value::as_str);
    let time = |k: &str| text(k).and_then(timefmt::parse_rfc3339);
    let Some(cluster) = text("clusterID").filter(|c| uuid::Uuid::parse_str(c).is_ok()) else {
        return invalid("clusterID is missing or not a UUID");
    };
    if cluster != seed.uid() {
        return Verdict::OtherCluster(cluster.to_string());
    }
    if time("createdAt").map(|t| t.to_utc()) != Some(seed.created_at().to_utc()) {
        return invalid("createdAt is not the cluster seed's");
    }
    if time("interval").map(|t| t.to_utc()) != Some(slot) {
        return invalid("interval does not match the slot in its key");
    }
    if !report
        .get("intervalPeriod")
        .and_then(Value::as_f64)
        .is_some_and(|p| p > 0.0)
    {
        return invalid("intervalPeriod is not a positive number");
    }
    if text("instanceID") != Some(instance) {
        return invalid("instanceID does not match its key");
    }
    let interval = text("interval").unwrap_or_default();
    Verdict::Send(format!("{cluster}/{interval}/{instance}"))
}

/// What became of a report handed to [`Delivery::keep`].
#[derive(Debug)]
pub(crate) enum Kept {
    /// In the bucket.
    Stored,
    /// Not kept, and said so (too large, given up, shutdown).
    Dropped,
    /// The store refuses writes: the caller sends the report directly.
    Refused(StoreError),
}

/// Why a POST did not deliver a report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// A 3xx, which is never followed.
    #[error("the receiver answered {0} (redirects are not followed; point --stats-url at the final URL)")]
    Redirect(reqwest::StatusCode),
    /// Any other status but a 2xx.
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
    /// No answer: connection, timeout, TLS; with its causes.
    #[error("the request failed: {0}")]
    Request(String),
    /// Leadership was lost before the POST.
    #[error("no longer leader")]
    NotLeader,
    /// Shutdown came first.
    #[error("shutting down")]
    Shutdown,
}

/// What one report's turn in a pass came to.
enum Turn {
    Delivered,
    Dropped,
    Rejected,
    /// Nothing to do now (too young, held, recorded late, no stats URL).
    Skipped,
    /// Delivered but not recorded yet: the pass goes on, and a retry pass is scheduled.
    Unrecorded,
    /// The receiver, the store or leadership failed: the pass starts no other turn.
    Stop,
    /// Not tried: an earlier turn failed, or shutdown came.
    NotTried,
}

/// What the leader remembers between passes.
#[derive(Debug, Default)]
struct Memory {
    /// POSTed with a 2xx and not recorded: only the record is retried, never the POST.
    unrecorded: HashSet<(DateTime<Utc>, String)>,
    /// Keys already logged as rejected or held, so that each is logged once.
    noted: HashSet<String>,
    /// Whether writing records is failing, so that it is logged once.
    records: StateLog,
    /// Whether reading the signing key is failing, so that it is logged once.
    signing: StateLog,
    /// Whether POSTs are failing (and how many attempts failed since), logged on change.
    posts: StateLog,
    failed_posts: u64,
    /// Whether reading reports to deliver is failing, logged on change.
    reads: StateLog,
    /// Whether keeping reports in the bucket is failing, logged on change.
    keeps: StateLog,
    /// Delivery records read back (or written) by this leader and found to be records.
    verified: HashSet<(DateTime<Utc>, String)>,
    /// Objects at a record's key that are not records: their report is sent, and the object
    /// replaced by the real record.
    bad_records: HashSet<(DateTime<Utc>, String)>,
}

/// A delivery record, exactly: what [`Delivery::record`] writes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Parsed to be checked, never read.
struct Record {
    delivered_at: String,
    term: u64,
}

/// Whether bytes are a delivery record.
fn is_record(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Record>(bytes)
        .is_ok_and(|r| timefmt::parse_rfc3339(&r.delivered_at).is_some())
}

/// Keeps reports in the bucket and, for the leader, delivers them.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    store: Store,
    cfg: DeliveryConfig,
    health: Arc<Health>,
    client: reqwest::Client,
    memory: Arc<Mutex<Memory>>,
    /// The cluster's signing key, once read; read again until it is.
    key: Arc<tokio::sync::OnceCell<ClusterKey>>,
}

/// A listing of the reports and records in the bucket.
struct Listing {
    /// Reports, oldest first.
    reports: Vec<(DateTime<Utc>, String)>,
    delivered: HashSet<(DateTime<Utc>, String)>,
    /// Keys under `usage/reports/` that are not reports' keys.
    foreign: Vec<String>,
}

impl PostError {
    /// What kind of failure it is, for logging on change.
    fn kind(&self) -> String {
        match self {
            PostError::Redirect(code) | PostError::Status(code) => format!("status {code}"),
            PostError::Request(_) => "request".into(),
            PostError::NotLeader => "not leader".into(),
            PostError::Shutdown => "shutdown".into(),
        }
    }
}

impl Delivery {
    /// Logs a failed POST when failures start or change kind, with the receiver's answer;
    /// never once per report or per attempt.
    fn post_failed(&self, e: &PostError) {
        if matches!(e, PostError::NotLeader | PostError::Shutdown) {
            return;
        }
        let mut memory = self.memory();
        memory.failed_posts += 1;
        if memory.posts.failing(e.kind()) {
            tracing::warn!(error = %e, "deliveries are failing; retried on every pass, logged again when they work or fail differently");
        }
    }

    /// Logs the end of a failure, with how many attempts it cost.
    fn post_worked(&self) {
        let mut memory = self.memory();
        if memory.posts.recovered() {
            tracing::info!(
                failed_attempts = memory.failed_posts,
                "deliveries work again"
            );
        }
        memory.failed_posts = 0;
    }

    /// A delivery handle; fails only if the HTTP client cannot be built.
    pub(crate) fn new(
        store: Store,
        cfg: DeliveryConfig,
        health: Arc<Health>,
        user_agent: String,
    ) -> Result<Self, reqwest::Error> {
        usage_reporter_core::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .user_agent(user_agent)
            // A followed 302 turns the POST into a body-less GET elsewhere and takes the URL,
            // token and all, along as Referer: a redirect is a failed attempt.
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .build()?;
        Ok(Delivery {
            store,
            cfg,
            health,
            client,
            memory: Arc::default(),
            key: Arc::default(),
        })
    }

    /// How this handle delivers.
    pub(crate) fn config(&self) -> &DeliveryConfig {
        &self.cfg
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a frozen report in the bucket, retrying store failures until the next slot; a
    /// store that refuses writes (denied, read-only, full) is answered at once, for the caller
    /// to send the report directly.
    pub(crate) async fn keep(
        &self,
        slot: DateTime<Utc>,
        instance: &str,
        report: Report,
        shutdown: &CancellationToken,
    ) -> Kept {
        let bytes = match serde_json::to_vec(&report) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize a report");
                return Kept::Dropped;
            }
        };
        if bytes.len() > MAX_REPORT_BYTES {
            tracing::error!(
                slot = %timefmt::rfc3339_nano(&slot),
                bytes = bytes.len(),
                cap = MAX_REPORT_BYTES,
                "this slot's report is larger than the report size cap and is not kept; shorten the service's string metrics"
            );
            self.health.report_dropped();
            return Kept::Dropped;
        }
        let key = report_key(slot, instance);
        let give_up = Instant::now() + self.cfg.interval;
        let mut delays = backoff(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            match self.store.create(&key, bytes.clone()).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {
                    self.health.report_written();
                    tracing::debug!(slot = %timefmt::rfc3339_nano(&slot), "report kept in the bucket");
                    if self.memory().keeps.recovered() {
                        tracing::info!("reports are kept in the bucket again");
                    }
                    return Kept::Stored;
                }
                Err(e) if e.refuses_writes() => return Kept::Refused(e),
                Err(e) => {
                    if self.memory().keeps.failing(e.kind()) {
                        tracing::warn!(error = %e, "cannot keep reports in the bucket; retrying until each slot's next, logged again when it works");
                    }
                }
            }
            let wait = delays.next().unwrap_or(Duration::from_secs(30));
            if Instant::now() + wait > give_up {
                // A create that timed out may still be applied: only a report that is still
                // not there once it would be too old to deliver is lost.
                let (this, key, shutdown) = (self.clone(), key.clone(), shutdown.clone());
                tokio::spawn(async move { this.confirm(slot, &key, &shutdown).await });
                return Kept::Dropped;
            }
            if sleep_or_stop(wait, shutdown).await {
                return Kept::Dropped;
            }
        }
    }

    /// Reads a report the store did not acknowledge back until it is there (counted kept) or
    /// would be past the age bound (counted dropped, at ERROR): a create that timed out can
    /// still be applied when a paused or slow store catches up.
    async fn confirm(&self, slot: DateTime<Utc>, key: &str, shutdown: &CancellationToken) {
        let cap = (self.cfg.interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(300));
        let mut wait = Duration::from_millis(250);
        loop {
            match self.store.get(key).await {
                Ok(_) => {
                    self.health.report_written();
                    tracing::info!(slot = %timefmt::rfc3339_nano(&slot), "the store took this slot's report after all");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "reading an unacknowledged report back"),
            }
            let too_old = (Utc::now() - slot)
                .to_std()
                .is_ok_and(|age| age + wait > self.cfg.max_age);
            if too_old {
                tracing::error!(slot = %timefmt::rfc3339_nano(&slot), "lost this slot's report: the store did not take it before it was too old to deliver");
                self.health.report_dropped();
                return;
            }
            if sleep_or_stop(wait, shutdown).await {
                return;
            }
            wait = (wait * 2).min(cap);
        }
    }

    /// Sends this replica's own frozen report straight to the stats URL, for a replica that
    /// cannot write the bucket: retries until the next slot, at most one 2xx per slot, the same
    /// bytes and `Idempotency-Key` every time.
    pub(crate) async fn send_own(
        &self,
        slot: DateTime<Utc>,
        instance: &str,
        report: Report,
        seed: &Seed,
        shutdown: &CancellationToken,
    ) {
        let Some(url) = &self.cfg.stats_url else {
            return;
        };
        let bytes = match serde_json::to_vec(&report) {
            Ok(b) if b.len() <= MAX_REPORT_BYTES => Bytes::from(b),
            _ => {
                tracing::error!(slot = %timefmt::rfc3339_nano(&slot), "this slot's report cannot be encoded within the report size cap; not sent");
                self.health.report_dropped();
                return;
            }
        };
        let Verdict::Send(key) = vet(&bytes, seed, slot, instance, self.cfg.interval) else {
            return;
        };
        let give_up = Instant::now() + self.cfg.interval;
        let mut delays = backoff(
            Duration::from_secs(1).min(self.cfg.interval / 10),
            Duration::from_secs(300).min(self.cfg.interval / 2),
        );
        loop {
            match self
                .post(url, bytes.clone(), &key, &|| Some(0), shutdown, false)
                .await
            {
                Ok(latency) => {
                    self.post_worked();
                    self.health.report_delivered(latency);
                    return;
                }
                Err(PostError::Shutdown) => return,
                Err(e) => {
                    let wait = delays.next().unwrap_or(Duration::from_secs(300));
                    if Instant::now() + wait > give_up {
                        tracing::error!(slot = %timefmt::rfc3339_nano(&slot), error = %e, "gave up sending this slot's report before the next slot");
                        self.health.report_dropped();
                        return;
                    }
                    self.post_failed(&e);
                    if sleep_or_stop(wait, shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// One delivery pass for the cluster `seed`; see the module docs.
    pub(crate) async fn pass(
        &self,
        leader: &Term<'_>,
        seed: &Seed,
        shutdown: &CancellationToken,
    ) -> Result<PassOutcome, StoreError> {
        let listing = self.list().await?;
        self.forget_gone(&listing);
        let mut out = PassOutcome::default();
        for key in &listing.foreign {
            self.reject(key, Rejection::BadKey).await;
            out.rejected += 1;
        }
        let now = Utc::now();
        let bad_records = self.check_records(&listing, now).await;
        // Up to `concurrency` reports are read, POSTed and recorded at once, oldest first, so
        // a pass takes about (reports / concurrency) round trips, and holds at most that many
        // reports' bytes. Once one turn fails (the receiver, the store, leadership), no new one
        // starts; those under way finish.
        let failed = AtomicBool::new(false);
        // Owned items: the futures borrow nothing from the listing's iterator.
        let due: Vec<(DateTime<Utc>, String)> = listing
            .reports
            .iter()
            .filter(|item| !listing.delivered.contains(item) || bad_records.contains(item))
            .cloned()
            .collect();
        let failed = &failed;
        let mut turns = futures::stream::iter(due)
            .map(|(slot, instance)| async move {
                if failed.load(Ordering::Relaxed) || shutdown.is_cancelled() {
                    return Turn::NotTried;
                }
                let turn = self
                    .turn(slot, &instance, now, leader, seed, shutdown)
                    .await;
                if matches!(turn, Turn::Stop) {
                    failed.store(true, Ordering::Relaxed);
                }
                turn
            })
            .buffer_unordered(self.cfg.concurrency.max(1));
        while let Some(turn) = turns.next().await {
            match turn {
                Turn::Delivered => out.delivered += 1,
                Turn::Dropped => out.dropped += 1,
                Turn::Rejected => out.rejected += 1,
                Turn::Skipped => {}
                Turn::Unrecorded | Turn::Stop | Turn::NotTried => out.pending += 1,
            }
        }
        drop(turns);
        self.clean_up(&listing, now).await;
        Ok(out)
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let mut reports = Vec::new();
        let mut foreign = Vec::new();
        for key in self.store.list(REPORTS).await? {
            match parse_key(&key, REPORTS) {
                Some(item) => reports.push(item),
                None => foreign.push(key),
            }
        }
        reports.sort();
        let delivered = self
            .store
            .list(DELIVERED)
            .await?
            .iter()
            .filter_map(|k| parse_key(k, DELIVERED))
            .collect();
        Ok(Listing {
            reports,
            delivered,
            foreign,
        })
    }

    /// Forgets what it remembered of objects that are gone, so memory stays bounded.
    fn forget_gone(&self, listing: &Listing) {
        let present: HashSet<&(DateTime<Utc>, String)> = listing.reports.iter().collect();
        let keys: HashSet<String> = listing
            .reports
            .iter()
            .flat_map(|(s, i)| [report_key(*s, i), record_key(*s, i)])
            .chain(listing.foreign.iter().cloned())
            .collect();
        let mut memory = self.memory();
        memory.unrecorded.retain(|item| present.contains(item));
        memory.verified.retain(|item| present.contains(item));
        memory.bad_records.retain(|item| present.contains(item));
        memory.noted.retain(|k| keys.contains(k));
    }

    /// Reads back, once per leadership, each record of a report still within the age bound:
    /// only a regular object that parses as a record marks its report delivered. Anything
    /// else is logged once and counted, and its report sent; the real record replaces it.
    async fn check_records(
        &self,
        listing: &Listing,
        now: DateTime<Utc>,
    ) -> HashSet<(DateTime<Utc>, String)> {
        let unchecked: Vec<(DateTime<Utc>, String)> = {
            let memory = self.memory();
            listing
                .reports
                .iter()
                .filter(|item| listing.delivered.contains(*item))
                .filter(|item| !memory.verified.contains(*item))
                .filter(|(slot, _)| (now - *slot).to_std().is_ok_and(|a| a <= self.cfg.max_age))
                .cloned()
                .collect()
        };
        let checked: Vec<_> = futures::stream::iter(unchecked)
            .map(|item| async move {
                let key = record_key(item.0, &item.1);
                let good = match self.store.get(&key).await {
                    Ok(obj) => Some(is_record(&obj.bytes)),
                    Err(StoreError::NotRegular { .. } | StoreError::TooLarge { .. }) => Some(false),
                    // Gone meanwhile: the listing is stale, the next pass sees it.
                    Err(StoreError::NotFound { .. }) => None,
                    // Read again on a later pass; until then the record counts.
                    Err(e) => {
                        tracing::debug!(%key, error = %e, "cannot read a delivery record back yet");
                        None
                    }
                };
                (item, key, good)
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        let mut memory = self.memory();
        for (item, key, good) in checked {
            match good {
                Some(true) => {
                    memory.verified.insert(item);
                }
                Some(false) => {
                    if memory.noted.insert(key.clone()) {
                        tracing::warn!(%key, "not a delivery record: its report is sent, and the object replaced by the record");
                        self.health.report_rejected("not_a_record");
                    }
                    memory.bad_records.insert(item);
                }
                None => {}
            }
        }
        memory.bad_records.clone()
    }

    /// One undelivered report's turn.
    async fn turn(
        &self,
        slot: DateTime<Utc>,
        instance: &str,
        now: DateTime<Utc>,
        leader: &Term<'_>,
        seed: &Seed,
        shutdown: &CancellationToken,
    ) -> Turn {
        let age = (now - slot).to_std().unwrap_or_default();
        let item = (slot, instance.to_string());
        if self.memory().unrecorded.contains(&item) {
            return match self.record(slot, instance, leader).await {
                true => Turn::Skipped,
                false => Turn::Unrecorded,
            };
        }
        if self.cfg.stats_url.is_none() {
            // Kept in the bucket only, by choice: they expire after the retention, quietly.
            if age > self.cfg.retention {
                let _ = self.store.delete(&report_key(slot, instance)).await;
            }
            return Turn::Skipped;
        }
        if age < self.cfg.collect_delay {
            return Turn::Skipped;
        }
        if age > self.cfg.max_age {
            tracing::warn!(
                slot = %timefmt::rfc3339_nano(&slot),
                instance_id = %instance,
                max_age = %timefmt::format_duration(self.cfg.max_age),
                "dropping a report older than the age bound, undelivered"
            );
            self.health.report_dropped();
            let _ = self.store.delete(&report_key(slot, instance)).await;
            return Turn::Dropped;
        }
        let Some(url) = &self.cfg.stats_url else {
            return Turn::Skipped;
        };
        if leader().is_none() {
            return Turn::Stop;
        }
        let key = report_key(slot, instance);
        let bytes = match self.store.get(&key).await {
            Ok(obj) => {
                if self.memory().reads.recovered() {
                    tracing::info!("reports to deliver are read again");
                }
                obj.bytes
            }
            Err(StoreError::NotFound { .. }) => return Turn::Skipped,
            Err(StoreError::TooLarge { .. }) => {
                return self.reject(&key, Rejection::TooLarge).await;
            }
            Err(StoreError::NotRegular { what, .. }) => {
                return self.reject(&key, Rejection::NotRegular(what)).await;
            }
            Err(e) => {
                if self.memory().reads.failing(e.kind()) {
                    tracing::warn!(error = %e, "cannot read reports to deliver; retried on every pass, logged again when it works");
                }
                return Turn::Stop;
            }
        };
        let idempotency_key = match vet(&bytes, seed, slot, instance, self.cfg.interval) {
            Verdict::Send(k) => k,
            Verdict::Reject(why) => return self.reject(&key, why).await,
            Verdict::OtherCluster(other) => {
                if self.memory().noted.insert(key.clone()) {
                    tracing::warn!(
                        %key,
                        cluster_id = %other,
                        kept = seed.uid(),
                        "holding a report of another cluster ID, unsent, until it ages out"
                    );
                }
                return Turn::Skipped;
            }
        };
        match self
            .post(url, bytes, &idempotency_key, leader, shutdown, true)
            .await
        {
            Ok(latency) => {
                self.post_worked();
                self.health.report_delivered(latency);
                if !self.record(slot, instance, leader).await {
                    self.memory().unrecorded.insert(item);
                    return Turn::Unrecorded;
                }
                Turn::Delivered
            }
            Err(e) => {
                self.post_failed(&e);
                Turn::Stop
            }
        }
    }

    /// Writes the delivery record; `false` if the store did not take it.
    async fn record(&self, slot: DateTime<Utc>, instance: &str, leader: &Term<'_>) -> bool {
        let record = serde_json::json!({
            "delivered_at": timefmt::rfc3339_nano(&Utc::now()),
            "term": leader().unwrap_or_default(),
        });
        let item = (slot, instance.to_string());
        let key = record_key(slot, instance);
        let replace = self.memory().bad_records.contains(&item);
        let result = if replace {
            self.store.put(&key, record.to_string()).await
        } else {
            self.store.create(&key, record.to_string()).await
        };
        let mut memory = self.memory();
        match result {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {
                if !replace || result.is_ok() {
                    memory.bad_records.remove(&item);
                    memory.verified.insert(item);
                }
                if memory.records.recovered() {
                    tracing::info!("delivery records are written again");
                }
                true
            }
            Err(e) => {
                if memory.records.failing(e.kind()) {
                    tracing::warn!(error = %e, "delivered a report but could not record it; the record is retried, the report is not sent again by this leader");
                }
                false
            }
        }
    }

    /// Logs (once), counts and removes an object that must never be sent.
    async fn reject(&self, key: &str, why: Rejection) -> Turn {
        if self.memory().noted.insert(key.to_string()) {
            tracing::warn!(%key, reason = %why, "not a report of this cluster; it is never sent, and is removed");
            self.health.report_rejected(why.reason());
        }
        match self.store.delete(key).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => tracing::debug!(error = %e, "cannot remove a rejected object yet"),
        }
        Turn::Rejected
    }

    /// Deletes delivered reports past the retention (the report first: a record without a
    /// report is harmless, a report without its record would be sent again), and records left
    /// from an interrupted clean-up.
    async fn clean_up(&self, listing: &Listing, now: DateTime<Utc>) {
        let old = |slot: &DateTime<Utc>| {
            (now - *slot)
                .to_std()
                .is_ok_and(|age| age > self.cfg.retention)
        };
        let present: HashSet<&(DateTime<Utc>, String)> = listing.reports.iter().collect();
        let expired: Vec<(DateTime<Utc>, String)> = listing
            .reports
            .iter()
            .filter(|item| {
                old(&item.0)
                    && (listing.delivered.contains(item) || self.memory().unrecorded.contains(item))
            })
            .cloned()
            .collect();
        futures::stream::iter(expired)
            .for_each_concurrent(self.cfg.concurrency.max(1), |item| async move {
                if self
                    .store
                    .delete(&report_key(item.0, &item.1))
                    .await
                    .is_ok()
                {
                    self.memory().unrecorded.remove(&item);
                    let _ = self.store.delete(&record_key(item.0, &item.1)).await;
                }
            })
            .await;
        let orphans: Vec<(DateTime<Utc>, String)> = listing
            .delivered
            .iter()
            .filter(|item| !present.contains(item) && old(&item.0))
            .cloned()
            .collect();
        futures::stream::iter(orphans)
            .for_each_concurrent(self.cfg.concurrency.max(1), |(slot, instance)| async move {
                let _ = self.store.delete(&record_key(slot, &instance)).await;
            })
            .await;
    }

    /// The cluster's signing key: read from the bucket, created there first if `create` (a
    /// replica that can write), `None` while neither works (logged once, then its end).
    async fn signing_key(&self, create: bool) -> Option<ClusterKey> {
        let got = self
            .key
            .get_or_try_init(|| async {
                match self.store.get(SIGNING_KEY).await {
                    Ok(obj) => ClusterKey::parse(&obj.bytes).map_err(|e| e.to_string()),
                    Err(StoreError::NotFound { .. }) if create => {
                        let key = ClusterKey::generate().map_err(|e| e.to_string())?;
                        match self.store.create(SIGNING_KEY, key.to_object()).await {
                            Ok(_) => Ok(key),
                            Err(StoreError::AlreadyExists { .. }) => {
                                let obj = self
                                    .store
                                    .get(SIGNING_KEY)
                                    .await
                                    .map_err(|e| e.to_string())?;
                                ClusterKey::parse(&obj.bytes).map_err(|e| e.to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
        let mut memory = self.memory();
        match got {
            Ok(key) => {
                if memory.signing.recovered() {
                    tracing::info!("signing key read: reports are signed again");
                }
                Some(key.clone())
            }
            Err(e) => {
                if memory.signing.failing(e.clone()) {
                    tracing::warn!(key = SIGNING_KEY, error = %e, "cannot read the cluster's signing key: reports go unsigned, and a receiver that pinned this cluster's key refuses them; restore the object if it was damaged");
                }
                None
            }
        }
    }

    /// POSTs one report, retrying with backoff while still leader. The same bytes every time,
    /// signed if the key can be read (created if `create_key` and there is none yet).
    async fn post(
        &self,
        url: &Url,
        body: Bytes,
        idempotency_key: &str,
        leader: &Term<'_>,
        shutdown: &CancellationToken,
        create_key: bool,
    ) -> Result<Duration, PostError> {
        let started = Instant::now();
        // Retries scale with the interval: 500 ms to 30 s at hours, faster for short slots.
        let mut delays = backoff(
            Duration::from_millis(500).min(self.cfg.interval / 10),
            Duration::from_secs(30).min(self.cfg.interval / 2),
        );
        let mut last = PostError::Shutdown;
        for attempt in 0..self.cfg.attempts {
            if attempt > 0 {
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                if sleep_or_stop(wait, shutdown).await {
                    break;
                }
            }
            if leader().is_none() {
                return Err(PostError::NotLeader);
            }
            // On every attempt: a key that could not be read at the first may be by the next.
            let signature = self.signing_key(create_key).await.map(|k| k.header(&body));
            let mut request = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", idempotency_key);
            if let Some(signature) = &signature {
                request = request.header(crate::signing::HEADER, signature);
            }
            let result = request.body(body.clone()).send().await;
            last = match result {
                Ok(resp) if resp.status().is_success() => return Ok(started.elapsed()),
                Ok(resp) if resp.status().is_redirection() => PostError::Redirect(resp.status()),
                Ok(resp) => PostError::Status(resp.status()),
                Err(e) => PostError::Request(crate::store::redact(&crate::store::error_chain(&e))),
            };
            self.health.report_failed();
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed::parse(br#"{"UID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","created_at":"2024-01-01T02:00:00+02:00"}"#).unwrap()
    }

    const INSTANCE: &str = "0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";
    const FOUR_HOURS: Duration = Duration::from_secs(4 * 3600);

    fn report(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
        let mut m = serde_json::json!({
            "clusterID": "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e",
            "createdAt": "2024-01-01T02:00:00+02:00",
            "interval": "2024-01-01T06:00:00+02:00",
            "intervalPeriod": 14400,
            "target": "all",
            "instanceID": INSTANCE,
            "version": {"version": "1.0.0", "revision": "", "branch": "", "buildUser": "",
                        "buildDate": "", "rustVersion": "1.95.0"},
            "os": "linux", "arch": "amd64", "edition": "oss",
            "metrics": {},
        });
        edit(m.as_object_mut().unwrap());
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn only_reports_of_this_cluster_matching_their_key_are_sent() {
        let slot = timefmt::parse_rfc3339("2024-01-01T04:00:00Z")
            .unwrap()
            .to_utc();
        let seed = seed();
        assert_eq!(
            vet(&report(|_| {}), &seed, slot, INSTANCE, FOUR_HOURS),
            Verdict::Send(format!(
                "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e/2024-01-01T06:00:00+02:00/{INSTANCE}"
            ))
        );
        let other = "ab0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";
        assert_eq!(
            vet(
                &report(|m| {
                    m.insert("clusterID".into(), other.into());
                }),
                &seed,
                slot,
                INSTANCE,
                FOUR_HOURS
            ),
            Verdict::OtherCluster(other.into())
        );
        let invalid: Vec<Vec<u8>> = vec![
            b"root:x:0:0:root:/root:/bin/bash".to_vec(),
            b"[1,2]".to_vec(),
            report(|m| {
                m.remove("clusterID");
            }),
            report(|m| {
                m.insert("clusterID".into(), "nope".into());
            }),
            report(|m| {
                m.insert("createdAt".into(), "2024-01-01T00:00:01Z".into());
            }),
            report(|m| {
                m.insert("interval".into(), "2024-01-01T08:00:00Z".into());
            }),
            report(|m| {
                m.insert("interval".into(), 5.into());
            }),
            report(|m| {
                m.insert("intervalPeriod".into(), 0.into());
            }),
            report(|m| {
                m.insert("instanceID".into(), other.into());
            }),
        ];
        for bytes in invalid {
            assert!(
                matches!(
                    vet(&bytes, &seed, slot, INSTANCE, FOUR_HOURS),
                    Verdict::Reject(Rejection::Invalid(_) | Rejection::Shape(_))
                ),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let huge = report(|m| {
            m.insert("pad".into(), "x".repeat(MAX_REPORT_BYTES).into());
        });
        assert_eq!(
            vet(&huge, &seed, slot, INSTANCE, FOUR_HOURS),
            Verdict::Reject(Rejection::TooLarge)
        );
    }
}
