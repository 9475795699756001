//! Leader election through one lease object, `usage/lease.json`, kept by compare-and-swap.
//!
//! Modelled on Kubernetes client-go's leader election:
//! - expiry is judged by each observer on its own monotonic clock, from when it last saw the
//!   record change; the holder's timestamps are for people, never trusted;
//! - the leader renews every `renew_period`, and stops acting as leader once `renew_deadline`
//!   has passed since the start of its last successful renewal, which is shorter than the TTL
//!   any observer waits, so two replicas never act as leader in the same instant;
//! - `term` (a fencing number) grows on every change of holder, and every write carries a fresh
//!   nonce, so identical bytes never repeat and a stale `If-Match` can never succeed;
//! - a leader that shuts down releases the lease (`holder` empty), and followers take it at their
//!   next poll without waiting out the TTL;
//! - every write carries an opaque payload of its user's ([`Elector::with_payload`]; the sender
//!   keeps the cluster seed's exact bytes there, so the identity survives the loss of the seed
//!   object), stored in the record's `seed` field.
//!
//! Store requests per hour at the default `--lease-ttl 5m`: a follower polls every 4 min
//! (15 GETs), the leader renews every 2.5 min (24 conditional PUTs). A failed renewal is
//! retried every 15 s until the renew deadline (3 min 20 s).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::system_clock;
pub use crate::clock::Clock;
use crate::retry::StateLog;
use crate::store::{Store, StoreError, Version};
use crate::timefmt;

/// The replicas' lease object, relative to the store prefix.
pub const LEASE_KEY: &str = "usage/lease.json";

/// Told whether this replica may act as leader, and in which term, on every change and renewal.
pub type OnLeading = Arc<dyn Fn(Option<u64>) + Send + Sync>;

/// Read at every write of the lease: the payload it carries (see [`Elector::with_payload`]).
pub type Payload = Arc<dyn Fn() -> String + Send + Sync>;

/// The lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holder's instance ID; empty when released.
    pub holder: String,
    /// The fencing number; grows with every change of holder.
    pub term: u64,
    /// When the term began, by the holder's clock.
    pub acquired_at: String,
    /// The last write, by the holder's clock.
    pub renewed_at: String,
    /// The holder's TTL.
    pub ttl_ms: u64,
    /// Fresh on every write, so that bytes never repeat.
    pub nonce: String,
    /// The holder's payload: for the replicas, the cluster seed's bytes as the holder knows
    /// them; empty if it knows none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub seed: String,
    /// The holder's report interval in milliseconds, so a replica set differently notices.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LeaseRecord {
    /// Reads a lease record; the error says what is wrong with the bytes.
    ///
    /// # Errors
    ///
    /// Bytes that are not a lease record's JSON, with serde's account of where.
    pub fn parse(bytes: &[u8]) -> Result<LeaseRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The record's bytes; an error, never empty bytes, if it cannot be encoded.
    fn bytes(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|e| StoreError::Other {
            key: LEASE_KEY.to_string(),
            message: format!("cannot encode the lease record: {e}"),
        })
    }
}

/// The lease's timing, all derived from the TTL.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// How long an observer waits for a change before taking over.
    pub ttl: Duration,
    /// A leader that has not renewed within this stops acting as leader.
    pub renew_deadline: Duration,
    /// How often the leader renews.
    pub renew_period: Duration,
    /// How often a follower reads the lease.
    pub poll_period: Duration,
    /// How soon a failed renewal is tried again.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Timings derived from the TTL.
    pub fn new(ttl: Duration) -> Self {
        LeaseConfig {
            ttl,
            renew_deadline: ttl * 2 / 3,
            renew_period: ttl / 2,
            poll_period: ttl * 4 / 5,
            retry_period: ttl / 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leading {
    term: u64,
    /// When the last successful write of the lease started, on our clock.
    renewed: Instant,
}

/// One replica's side of the election.
#[derive(Clone)]
pub struct Elector {
    store: Store,
    cfg: LeaseConfig,
    me: String,
    /// Told of leadership on every change and renewal (a replica's `/metrics`).
    on_leading: Option<OnLeading>,
    clock: Clock,
    leading: watch::Sender<Option<Leading>>,
    /// What every write carries in its `seed` field; nothing when `None`.
    payload: Option<Payload>,
    interval: Option<Duration>,
    key: &'static str,
    /// The other interval last logged, so a mismatch is logged once.
    mismatch: Arc<std::sync::Mutex<Option<u64>>>,
    /// Wakes a follower to read the lease now (see [`Elector::wake`]).
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector").field("me", &self.me).finish()
    }
}

/// What the follower last saw, and when (on its own clock) it last changed.
struct Observed {
    version: Version,
    record: Option<LeaseRecord>,
    since: Instant,
}

impl Elector {
    /// This replica (`me`, its instance ID) in the election on `store`.
    pub fn new(store: Store, cfg: LeaseConfig, me: String) -> Self {
        Elector {
            store,
            cfg,
            me,
            on_leading: None,
            clock: system_clock(),
            leading: watch::channel(None).0,
            payload: None,
            interval: None,
            key: LEASE_KEY,
            mismatch: Arc::default(),
            wake: Arc::default(),
        }
    }

    /// Has a follower read the lease now rather than at its next poll: the replica calls it
    /// when a delivery falls due, so a leader that released the lease shortly before is
    /// replaced at once, not a poll period later (one read per follower per slot).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Uses another lease object (the receivers' rollup lease, say) than the replicas' one.
    pub fn with_key(mut self, key: &'static str) -> Self {
        self.key = key;
        self
    }

    /// Writes this replica's report interval into the lease, and compares it with the holder's.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Logs, once per other value, a holder whose interval differs from ours.
    fn compare_interval(&self, record: &LeaseRecord) {
        let Some(mine) = self.interval else { return };
        let theirs = record.interval_ms;
        if theirs == 0 || theirs == mine.as_millis() as u64 || record.holder == self.me {
            return;
        }
        let mut last = self.mismatch.lock().unwrap_or_else(|e| e.into_inner());
        if *last != Some(theirs) {
            *last = Some(theirs);
            tracing::warn!(
                ours = %timefmt::format_duration(mine),
                leader = %timefmt::format_duration(Duration::from_millis(theirs)),
                "this replica's report interval differs from the lease holder's: its reports fall in slots the others do not have; give every replica the same interval"
            );
        }
    }

    /// Keeps `payload()` in every write (the replicas: the cluster seed they hold, read at
    /// each write so a later change of it is carried too).
    pub fn with_payload(mut self, payload: Payload) -> Self {
        self.payload = Some(payload);
        self
    }

    /// Calls `f` with the term while this replica may act as leader, `None` otherwise, at every
    /// change and renewal.
    pub fn on_leading(mut self, f: OnLeading) -> Self {
        self.on_leading = Some(f);
        self
    }

    /// Uses this clock instead of the system's (tests skew it).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The timings.
    pub fn config(&self) -> LeaseConfig {
        self.cfg
    }

    /// The term, if this replica may act as leader at this instant.
    pub fn term(&self) -> Option<u64> {
        let now = (self.clock)();
        match *self.leading.borrow() {
            Some(l) if now.saturating_duration_since(l.renewed) < self.cfg.renew_deadline => {
                Some(l.term)
            }
            _ => None,
        }
    }

    /// Notified whenever leadership is gained or lost (not on renewals).
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        let (tx, rx) = watch::channel(self.term());
        let mut inner = self.leading.subscribe();
        tokio::spawn(async move {
            while inner.changed().await.is_ok() {
                let term = inner.borrow().map(|l| l.term);
                // Renewals change the inner value; only a change of term is news.
                tx.send_if_modified(|current| {
                    let changed = *current != term;
                    *current = term;
                    changed
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }

    fn set_leading(&self, l: Option<Leading>) {
        let was = self.leading.borrow().map(|l| l.term);
        self.leading.send_replace(l);
        let now = l.map(|l| l.term);
        if was != now {
            match now {
                Some(term) => tracing::info!(term, "became leader"),
                None => tracing::info!("no longer leader"),
            }
        }
        if let Some(f) = &self.on_leading {
            f(now);
        }
    }

    fn record(&self, term: u64, acquired_at: Option<&str>) -> LeaseRecord {
        let now = timefmt::rfc3339_nano(&Utc::now());
        LeaseRecord {
            holder: self.me.clone(),
            term,
            acquired_at: acquired_at.map_or_else(|| now.clone(), str::to_string),
            renewed_at: now,
            ttl_ms: self.cfg.ttl.as_millis() as u64,
            nonce: uuid::Uuid::new_v4().simple().to_string(),
            seed: self.payload.as_ref().map(|p| p()).unwrap_or_default(),
            interval_ms: self.interval.map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Runs the election until `shutdown`; then releases the lease if held.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut observed: Option<Observed> = None;
        let mut max_term = 0u64;
        let mut log = StateLog::default();
        loop {
            let wait = match self.step(&mut observed, &mut max_term).await {
                Ok(wait) => {
                    if log.recovered() {
                        tracing::info!("lease: store reachable again");
                    }
                    wait
                }
                Err(e) => {
                    if log.failing(e.kind()) {
                        tracing::warn!(error = %e, "lease: store call failed; retrying");
                    }
                    if self.leading.borrow().is_some() {
                        self.cfg.retry_period
                    } else {
                        self.cfg.poll_period.min(self.cfg.retry_period * 2)
                    }
                }
            };
            // Step down at the deadline even while a retry is pending.
            let stale = self.leading.borrow().filter(|_| self.term().is_none());
            if let Some(l) = stale {
                tracing::warn!(term = l.term, "lease not renewed within the renew deadline");
                self.set_leading(None);
                observed = None;
            }
            let woken = async {
                if self.leading.borrow().is_none() {
                    self.wake.notified().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release(&observed).await;
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
                _ = woken => {}
            }
        }
    }

    /// One round: renew if leading, else read and maybe acquire. Returns how long to wait.
    async fn step(
        &self,
        observed: &mut Option<Observed>,
        max_term: &mut u64,
    ) -> Result<Duration, StoreError> {
        let leading = *self.leading.borrow();
        if let (Some(l), Some(obs)) = (leading, observed.as_ref()) {
            let started = (self.clock)();
            let acquired = obs.record.as_ref().map(|r| r.acquired_at.clone());
            let record = self.record(l.term, acquired.as_deref());
            match self
                .store
                .update(self.key, record.bytes()?, &obs.version)
                .await
            {
                Ok(version) => {
                    *observed = Some(Observed {
                        version,
                        record: Some(record),
                        since: started,
                    });
                    // Nobody wrote the lease since our last write, so nobody took over: we
                    // may act until `started + renew_deadline`.
                    self.set_leading(Some(Leading {
                        term: l.term,
                        renewed: started,
                    }));
                    return Ok(self.cfg.renew_period);
                }
                Err(e) if e.is_conflict() => {
                    tracing::warn!(term = l.term, "lease taken over by another replica");
                    self.set_leading(None);
                    *observed = None;
                    // Fall through to read the new holder.
                }
                Err(e) => return Err(e),
            }
        }
        let started = (self.clock)();
        let (version, record) = match self.store.get(self.key).await {
            Ok(obj) => (obj.version, LeaseRecord::parse(&obj.bytes).ok()),
            Err(StoreError::NotFound { .. }) => {
                let record = self.record(next_term(*max_term), None);
                return match self.store.create(self.key, record.bytes()?).await {
                    Ok(version) => {
                        *max_term = record.term;
                        self.take(observed, version, record, started);
                        Ok(self.cfg.renew_period)
                    }
                    Err(e) if e.is_conflict() => Ok(self.cfg.retry_period),
                    Err(e) => Err(e),
                };
            }
            Err(StoreError::TooLarge { version, .. }) => (version, None),
            Err(e) => return Err(e),
        };
        if let Some(r) = &record {
            *max_term = (*max_term).max(r.term);
            self.compare_interval(r);
        }
        let changed = observed.as_ref().is_none_or(|o| o.version != version);
        if changed {
            *observed = Some(Observed {
                version: version.clone(),
                record: record.clone(),
                since: started,
            });
        }
        let since = observed.as_ref().map_or(started, |o| o.since);
        // The holder's TTL if it is longer than ours: a holder renews on its own timings, and a
        // follower configured shorter (a one-shot command beside receivers, say) must not take
        // a lease that is only between two of its renewals.
        // (At most ten times ours: a foreign or damaged record cannot make us wait for ever.)
        let ttl = record.as_ref().map_or(self.cfg.ttl, |r| {
            let theirs = Duration::from_millis(r.ttl_ms).min(self.cfg.ttl * 10);
            self.cfg.ttl.max(theirs)
        });
        let expired = started.saturating_duration_since(since) >= ttl;
        let free = match &record {
            None => {
                if changed {
                    tracing::warn!("lease object is corrupted; taking it over once it expires");
                }
                expired
            }
            Some(r) if r.holder.is_empty() => true,
            // Still ours after we lost track (a failed renewal): a successful CAS proves nobody
            // else wrote it since.
            Some(r) if r.holder == self.me => true,
            Some(_) => expired,
        };
        if !free {
            // Poll again at the usual period, or right when the lease would expire if it stays
            // as it is, so a dead leader is replaced within one TTL plus one polling period.
            let expires_in = (since + ttl).saturating_duration_since(started);
            return Ok(self
                .cfg
                .poll_period
                .min(expires_in + Duration::from_millis(1)));
        }
        let record_new = self.record(next_term(*max_term), None);
        match self
            .store
            .update(self.key, record_new.bytes()?, &version)
            .await
        {
            Ok(version) => {
                *max_term = record_new.term;
                self.take(observed, version, record_new, started);
                Ok(self.cfg.renew_period)
            }
            Err(e) if e.is_conflict() => {
                *observed = None;
                Ok(self.cfg.retry_period)
            }
            Err(e) => Err(e),
        }
    }

    fn take(
        &self,
        observed: &mut Option<Observed>,
        version: Version,
        record: LeaseRecord,
        started: Instant,
    ) {
        let term = record.term;
        *observed = Some(Observed {
            version,
            record: Some(record),
            since: started,
        });
        self.set_leading(Some(Leading {
            term,
            renewed: started,
        }));
    }

    /// Hands the lease back so a follower takes it at its next poll.
    async fn release(&self, observed: &Option<Observed>) {
        let Some(l) = *self.leading.borrow() else {
            return;
        };
        self.set_leading(None);
        let Some(obs) = observed else {
            return;
        };
        // The acquisition time stays, so `lease show` tells when the last term began.
        let acquired = obs.record.as_ref().map(|r| r.acquired_at.clone());
        let mut record = self.record(l.term, acquired.as_deref());
        record.holder = String::new();
        let result = match record.bytes() {
            Ok(bytes) => self.store.update(self.key, bytes, &obs.version).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => tracing::info!(term = l.term, "released the leader lease"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the leader lease; it expires on its own")
            }
        }
    }
}

/// The largest term a lease holds: integers above 2^53 lose precision in the JSON readers
/// operators use, and no real history reaches it (a change of holder every millisecond for
/// 285,000 years).
pub const MAX_TERM: u64 = (1 << 53) - 1;

/// The term after `max`, the largest seen. Past [`MAX_TERM`] the record can only be foreign
/// or damaged, and terms start again at 1 (logged): never 0, never a wrap. Fencing does not
/// rest on terms alone: every write is a compare-and-swap on the version read.
pub fn next_term(max: u64) -> u64 {
    if max >= MAX_TERM {
        tracing::warn!(
            term = max,
            "the lease's term is past the largest a lease holds; terms start again at 1"
        );
        1
    } else {
        max + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_never_wrap() {
        assert_eq!(next_term(0), 1);
        assert_eq!(next_term(41), 42);
        assert_eq!(next_term(MAX_TERM - 1), MAX_TERM);
        assert_eq!(next_term(MAX_TERM), 1);
        assert_eq!(next_term(u64::MAX), 1);
    }
    use crate::clock::tokio_clock;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn leader(store: &Store, ttl: Duration, clock: Clock) -> Elector {
        Elector::new(
            store.clone(),
            LeaseConfig::new(ttl),
            uuid::Uuid::new_v4().to_string(),
        )
        .with_clock(clock)
    }

    /// A clock that runs at `rate` times real (tokio) time from a common origin.
    fn skewed(origin: Instant, rate: f64) -> Clock {
        Arc::new(move || {
            let real = Instant::now().saturating_duration_since(origin);
            origin + real.mul_f64(rate)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn never_two_leaders_with_skewed_clocks_and_churn() {
        let store = Store::memory();
        let ttl = Duration::from_secs(10);
        let origin = Instant::now();
        let rates = [0.85, 0.95, 1.0, 1.05, 1.15];
        let leaders: Vec<_> = rates
            .iter()
            .map(|r| leader(&store, ttl, skewed(origin, *r)))
            .collect();
        let stops: Vec<_> = leaders.iter().map(|_| CancellationToken::new()).collect();
        let mut tasks = Vec::new();
        for (l, s) in leaders.iter().zip(&stops) {
            let (l, s) = (l.clone(), s.clone());
            tasks.push(tokio::spawn(async move { l.run(s).await }));
        }
        let violated = Arc::new(AtomicBool::new(false));
        let ever_led = Arc::new(AtomicUsize::new(0));
        let monitor = {
            let leaders = leaders.clone();
            let violated = violated.clone();
            let ever_led = ever_led.clone();
            tokio::spawn(async move {
                for _ in 0..20_000 {
                    let acting: Vec<_> = leaders.iter().filter_map(|l| l.term()).collect();
                    if acting.len() > 1 {
                        violated.store(true, Ordering::SeqCst);
                    }
                    if !acting.is_empty() {
                        ever_led.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        // Kill (no release) the current leader a few times, and stop one cleanly.
        for round in 0..3 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            if let Some(i) = leaders.iter().position(|l| l.term().is_some()) {
                if round == 2 {
                    stops[i].cancel();
                } else {
                    tasks[i].abort();
                }
            }
        }
        monitor.await.unwrap();
        assert!(
            !violated.load(Ordering::SeqCst),
            "two replicas acted as leader at once"
        );
        assert!(
            ever_led.load(Ordering::SeqCst) > 10_000,
            "leadership was mostly vacant"
        );
        for s in &stops {
            s.cancel();
        }
    }

    /// Steady-state request volume over one (virtual) hour at the default TTL.
    #[tokio::test(start_paused = true)]
    async fn lease_request_volume_at_the_default_ttl() {
        let shared = Store::memory();
        // The replicas' default `--lease-ttl`.
        let ttl = Duration::from_secs(300);
        // A clone per replica, each with its own request counts.
        let stores: Vec<_> = (0..3)
            .map(|_| Store::new(shared.backend().clone()))
            .collect();
        let leaders: Vec<_> = stores
            .iter()
            .map(|s| leader(s, ttl, tokio_clock()))
            .collect();
        let stop = CancellationToken::new();
        for l in &leaders {
            let (l, stop) = (l.clone(), stop.clone());
            tokio::spawn(async move { l.run(stop).await });
        }
        // Settle, then count one hour.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let before: Vec<_> = stores.iter().map(|s| s.requests().total()).collect();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let per_hour: Vec<_> = stores
            .iter()
            .zip(&before)
            .map(|(s, b)| s.requests().total() - b)
            .collect();
        let leader_idx = leaders.iter().position(|l| l.term().is_some()).unwrap();
        for (i, n) in per_hour.iter().enumerate() {
            if i == leader_idx {
                assert_eq!(*n, 24, "leader renewals per hour");
            } else {
                assert_eq!(*n, 15, "follower polls per hour");
            }
        }
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn subscribers_hear_of_new_terms_not_of_renewals() {
        let store = Store::memory();
        let a = leader(&store, Duration::from_secs(10), tokio_clock());
        let mut terms = a.subscribe();
        let changes = Arc::new(AtomicUsize::new(0));
        let c = changes.clone();
        tokio::spawn(async move {
            while terms.changed().await.is_ok() {
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        let stop = CancellationToken::new();
        tokio::spawn({
            let (a, stop) = (a.clone(), stop.clone());
            async move { a.run(stop).await }
        });
        // Twenty renewals.
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(a.term(), Some(1));
        assert_eq!(changes.load(Ordering::SeqCst), 1);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn clean_release_hands_over_at_the_next_poll() {
        let store = Store::memory();
        let ttl = Duration::from_secs(60);
        let a = leader(&store, ttl, tokio_clock());
        let b = leader(&store, ttl, tokio_clock());
        let sa = CancellationToken::new();
        let ta = tokio::spawn({
            let (a, sa) = (a.clone(), sa.clone());
            async move { a.run(sa).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(a.term(), Some(1));
        let sb = CancellationToken::new();
        tokio::spawn({
            let (b, sb) = (b.clone(), sb.clone());
            async move { b.run(sb).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(b.term(), None);
        sa.cancel();
        ta.await.unwrap();
        let released = LeaseRecord::parse(&store.get(LEASE_KEY).await.unwrap().bytes).unwrap();
        assert!(released.holder.is_empty());
        // b polls every 48 s: it must lead before a TTL (60 s) would have run out.
        tokio::time::sleep(LeaseConfig::new(ttl).poll_period + Duration::from_secs(1)).await;
        assert_eq!(b.term(), Some(2));
        sb.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_before_anyone_takes_over() {
        let store = Store::memory();
        let ttl = Duration::from_secs(30);
        let a = leader(&store, ttl, tokio_clock());
        let sa = CancellationToken::new();
        tokio::spawn({
            let (a, sa) = (a.clone(), sa.clone());
            async move { a.run(sa).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(a.term(), Some(1));
        // Someone corrupts the lease: a's renewals fail from now on.
        let v = store.get(LEASE_KEY).await.unwrap().version;
        store.update(LEASE_KEY, "garbage", &v).await.unwrap();
        tokio::time::sleep(ttl).await;
        assert_eq!(a.term(), None, "the old leader must stop acting");
        // The corrupted lease is taken over once it expired on an observer's clock.
        tokio::time::sleep(ttl * 2).await;
        let r = LeaseRecord::parse(&store.get(LEASE_KEY).await.unwrap().bytes).unwrap();
        assert!(r.term >= 2);
        sa.cancel();
    }
}
