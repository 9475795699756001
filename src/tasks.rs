//! Every background task of a running replica, in one place, all stopped by one
//! `CancellationToken`:
//!
//! ```text
//! run: read seed ─ store self-test ─ agree on seed, then side by side:
//!      ├─ election       (lease::Elector::run)
//!      ├─ guard_seed     restore, reassert or adopt the cluster ID every --seed-check
//!      ├─ freeze_slots   freeze and keep this replica's report at every slot
//!      └─ deliver        while leader: a delivery pass after each slot's collect delay
//! sample_cpu             the CPU maximum for cpu_usage
//! ```
//!
//! The modules below know one thing each (the seed, the lease, reports in the bucket); only
//! this one knows when each of them runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::delivery::{Delivery, Kept};
use crate::health::Health;
use crate::lease::{Elector, LeaseConfig};
use crate::report::ReportSource;
use crate::retry::{backoff, sleep_or_stop, StateLog};
use crate::seed::{AgreeError, CheckOutcome, ReadOutcome, Seed, SeedKeeper};
use crate::slots;
use crate::store::selftest::{self, Access, SelfTestError};
use crate::store::Store;

/// The timings the tasks run on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub interval: Duration,
    pub lease_ttl: Duration,
    pub seed_check: Duration,
}

/// What the tasks work with.
pub(crate) struct Parts {
    pub store: Store,
    pub keeper: SeedKeeper,
    pub source: Arc<ReportSource>,
    pub delivery: Delivery,
    pub health: Arc<Health>,
}

/// Why a running replica stopped working for good; nothing retries past these.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Fatal {
    /// The store does not honour conditional writes.
    #[error(transparent)]
    Store(Arc<SelfTestError>),
    /// The seed could not be agreed on (the store cannot replace a corrupted one).
    #[error(transparent)]
    Seed(Arc<AgreeError>),
}

pub(crate) async fn sample_cpu(
    source: Arc<ReportSource>,
    period: Duration,
    shutdown: CancellationToken,
) {
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

/// Seed first; then the seed guard, the slot loop, the election and delivery side by side,
/// until `shutdown`. A failure no retry can fix goes to `fatal`.
pub(crate) async fn run(
    plan: Plan,
    parts: Parts,
    shutdown: CancellationToken,
    fatal: watch::Sender<Option<Fatal>>,
) {
    let Parts {
        store,
        keeper,
        source,
        delivery,
        health,
    } = parts;
    // A valid seed is adopted at once, before any write: reading needs no trust in the
    // store's conditional writes, and a replica with read-only access still reports its ID.
    let existing = match keeper.read().await {
        Ok(ReadOutcome::Valid(seed)) => {
            tracing::info!(cluster_id = seed.uid(), "adopted the cluster seed");
            source.set_seed(seed.clone());
            health.set_seed_known(true);
            Some(seed)
        }
        _ => None,
    };
    let access = match selftest::check(&store, &shutdown).await {
        Ok(access) => access,
        Err(SelfTestError::Shutdown) => return,
        Err(e) => {
            let _ = fatal.send(Some(Fatal::Store(Arc::new(e))));
            return;
        }
    };
    if access == Access::ReadOnly {
        health.set_read_only(true);
        // It reads only the seed, once per seed check.
        health.set_ready_window(plan.seed_check * 2 + Duration::from_secs(60));
        read_only(plan, existing, keeper, source, delivery, health, shutdown).await;
        return;
    }
    let seed = match existing {
        Some(seed) => seed,
        None => match keeper.agree(&shutdown).await {
            Ok(seed) => seed,
            Err(AgreeError::Shutdown) => return,
            Err(e) => {
                let _ = fatal.send(Some(Fatal::Seed(Arc::new(e))));
                return;
            }
        },
    };
    source.set_seed(seed.clone());
    health.set_seed_known(true);
    // The identity this replica holds; it only ever changes to an older one (see `seed`).
    let (identity, identity_rx) = watch::channel(seed);

    let elector = Elector::new(
        store.clone(),
        LeaseConfig::new(plan.lease_ttl),
        source.instance_id().to_string(),
    )
    .on_leading({
        let health = health.clone();
        Arc::new(move |term| health.set_leader(term.is_some(), term.unwrap_or(0)))
    })
    .with_payload({
        let seed = identity_rx.clone();
        Arc::new(move || String::from_utf8_lossy(seed.borrow().raw()).into_owned())
    })
    .with_interval(plan.interval);
    let election = {
        let (elector, shutdown) = (elector.clone(), shutdown.clone());
        async move { elector.run(shutdown).await }
    };
    let guard = guard_seed(
        keeper,
        identity,
        source.clone(),
        plan.seed_check,
        shutdown.clone(),
    );
    let slots = freeze_slots(
        identity_rx.clone(),
        source.clone(),
        delivery.clone(),
        Sink::Bucket,
        shutdown.clone(),
    );
    let deliveries = deliver(
        elector,
        delivery,
        identity_rx,
        plan.interval,
        shutdown.clone(),
    );
    tokio::join!(election, guard, slots, deliveries);
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
                CheckOutcome::Adopt(older) => adopt(&source, &identity, older),
                CheckOutcome::Intact | CheckOutcome::Failed(_) => {}
            }
            break;
        }
    }
}

/// How long to sleep at most before looking at the wall clock again, so a clock jump or a
/// suspended host neither skips nor doubles a slot.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Switches this replica to an older identity, once: reports and every task follow it.
fn adopt(source: &ReportSource, identity: &watch::Sender<Seed>, older: Seed) {
    tracing::warn!(
        from = identity.borrow().uid(),
        to = older.uid(),
        "this replica's cluster ID changes to the older one in the bucket: two identities met after the bucket was wiped, and the older wins"
    );
    source.set_seed(older.clone());
    identity.send_replace(older);
}

/// Where frozen reports go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Kept in the bucket, for the leader to deliver.
    Bucket,
    /// Sent to the stats URL by this replica itself (it cannot write the bucket).
    Direct,
}

/// A replica that can read the bucket but not write it: it adopts the seed (waiting for a
/// writer to create one), follows the cluster to an older ID, serves its report, never takes
/// part in the election, and sends its own report of each slot to the stats URL, at most once.
async fn read_only(
    plan: Plan,
    existing: Option<Seed>,
    keeper: SeedKeeper,
    source: Arc<ReportSource>,
    delivery: Delivery,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    tracing::warn!(
        "this replica may read the store but not write it: it adopts the cluster seed, sends its own reports to the stats URL and never leads"
    );
    if delivery.config().stats_url.is_none() {
        tracing::warn!("read-only and no stats URL: this replica's reports go nowhere");
    }
    let mut log = StateLog::default();
    let mut delays = backoff(Duration::from_secs(1), Duration::from_secs(60));
    let seed = match existing {
        Some(seed) => seed,
        None => loop {
            match keeper.read().await {
                Ok(ReadOutcome::Valid(seed)) => {
                    tracing::info!(cluster_id = seed.uid(), "adopted the cluster seed");
                    break seed;
                }
                Ok(_) => {
                    if log.failing("absent") {
                        tracing::warn!("no valid cluster seed yet; waiting for a replica with write access to create it");
                    }
                }
                Err(e) => {
                    if log.failing(e.kind()) {
                        tracing::warn!(error = %e, "cannot read the cluster seed; retrying");
                    }
                }
            }
            if sleep_or_stop(delays.next().unwrap_or(Duration::from_secs(60)), &shutdown).await {
                return;
            }
        },
    };
    source.set_seed(seed.clone());
    health.set_seed_known(true);
    let (identity, identity_rx) = watch::channel(seed);
    let follow = async {
        // Only reads: a newer identity is never written, an older one is adopted.
        while !sleep_or_stop(plan.seed_check, &shutdown).await {
            if let Ok(ReadOutcome::Valid(bucket)) = keeper.read().await {
                let known = identity.borrow().clone();
                if bucket.uid() != known.uid() && bucket.precedes(&known) {
                    adopt(&source, &identity, bucket);
                }
            }
        }
    };
    let slots = freeze_slots(
        identity_rx,
        source.clone(),
        delivery,
        Sink::Direct,
        shutdown.clone(),
    );
    tokio::join!(follow, slots);
}

/// Freezes this replica's report at every slot and keeps it in the bucket, or sends it.
async fn freeze_slots(
    identity: watch::Receiver<Seed>,
    source: Arc<ReportSource>,
    delivery: Delivery,
    sink: Sink,
    shutdown: CancellationToken,
) {
    let interval = source.interval();
    let mut seed = identity.borrow().clone();
    // Whether the store refuses this replica's writes: logged when it starts and ends.
    let mut refused = crate::retry::StateLog::default();
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
            let instance = source.instance_id().to_string();
            let direct = match sink {
                Sink::Bucket => match delivery
                    .keep(due, &instance, report.clone(), &shutdown)
                    .await
                {
                    Kept::Refused(e) => {
                        if refused.failing(e.kind()) {
                            tracing::warn!(error = %e, "the store refuses this replica's writes: it sends its own reports straight to the stats URL, as a read-only replica does, until the store takes them again");
                        }
                        true
                    }
                    Kept::Stored => {
                        if refused.recovered() {
                            tracing::info!("the store takes this replica's reports again; they go through the bucket");
                        }
                        false
                    }
                    Kept::Dropped => false,
                },
                Sink::Direct => true,
            };
            if direct {
                // Sending may retry for most of the slot: the next slot must not wait for it.
                let (delivery, seed, shutdown) = (delivery.clone(), seed.clone(), shutdown.clone());
                tokio::spawn(async move {
                    delivery
                        .send_own(due, &instance, report, &seed, &shutdown)
                        .await
                });
            }
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

/// While leader, runs a delivery pass `collect_delay` after every slot, when leadership is
/// gained, and again with backoff while reports are pending.
async fn deliver(
    leader: Elector,
    delivery: Delivery,
    seed: watch::Receiver<Seed>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut terms = leader.subscribe();
    let collect = delivery.config().collect_delay;
    let mut due_now = false;
    let mut retry_at: Option<Instant> = None;
    let mut retry_delays = backoff(Duration::from_secs(1), interval.max(Duration::from_secs(1)));
    let mut last_pass_slot: Option<DateTime<Utc>> = None;
    let mut last_woken: Option<DateTime<Utc>> = None;
    let mut listening = true;
    loop {
        // The identity can change (a fork healing); slots follow it.
        let current = seed.borrow().clone();
        let created = current.created_at();
        let now = Utc::now();
        // The slot whose collection window has closed most recently.
        let window = slots::last_slot(
            &created,
            now - chrono::Duration::from_std(collect).unwrap_or_default(),
            interval,
        );
        if window.is_some() && window != last_pass_slot {
            due_now = true;
        }
        if retry_at.is_some_and(|t| Instant::now() >= t) {
            due_now = true;
        }
        if due_now && leader.term().is_some() {
            due_now = false;
            last_pass_slot = window;
            match delivery.pass(&|| leader.term(), &current, &shutdown).await {
                Ok(out) if out.pending == 0 => {
                    retry_at = None;
                    retry_delays =
                        backoff(Duration::from_secs(1), interval.max(Duration::from_secs(1)));
                    if out.delivered + out.dropped + out.rejected > 0 {
                        tracing::info!(
                            delivered = out.delivered,
                            dropped = out.dropped,
                            rejected = out.rejected,
                            "delivery pass done"
                        );
                    }
                }
                Ok(_) | Err(_) => {
                    let wait = retry_delays.next().unwrap_or(interval);
                    retry_at = Some(Instant::now() + wait);
                }
            }
            continue;
        }
        if leader.term().is_none() {
            // A delivery falls due: read the lease now, so that a leader that released it
            // shortly before is replaced in time rather than a poll period later.
            if window.is_some() && window != last_woken {
                last_woken = window;
                leader.wake();
            }
            // Not leader: the windows that close meanwhile, and any retry, are the next
            // leader's business.
            last_pass_slot = window;
            due_now = false;
            retry_at = None;
        }
        let next_window = slots::next_slot(
            &created,
            now - chrono::Duration::from_std(collect).unwrap_or_default()
                + chrono::Duration::nanoseconds(1),
            interval,
        )
        .map(|s| s + chrono::Duration::from_std(collect).unwrap_or_default());
        let mut wait = next_window
            .and_then(|t| (t - now).to_std().ok())
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(5));
        if let Some(t) = retry_at {
            wait = wait.min(t.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            changed = terms.changed(), if listening => match changed {
                // A new leader continues where the old one stopped.
                Ok(()) => due_now |= terms.borrow().is_some(),
                // The election has ended; the periodic checks above still run.
                Err(_) => listening = false,
            },
        }
    }
}
