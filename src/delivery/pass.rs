//! One delivery pass of the leader: list, read records back, and each report's turn.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::layout::{parse_key, record_key, report_key, DELIVERED, REPORTS};
use crate::seed::Seed;
use crate::store::StoreError;
use crate::timefmt;

use super::*;

/// What one report's turn in a pass came to.
pub(super) enum Turn {
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

/// A listing of the reports and records in the bucket.
pub(super) struct Listing {
    /// Reports, oldest first.
    pub(super) reports: Vec<(DateTime<Utc>, String)>,
    pub(super) delivered: HashSet<(DateTime<Utc>, String)>,
    /// Keys under `usage/reports/` that are not reports' keys.
    pub(super) foreign: Vec<String>,
}

impl Delivery {
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

    pub(super) async fn list(&self) -> Result<Listing, StoreError> {
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
    pub(super) fn forget_gone(&self, listing: &Listing) {
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
    pub(super) async fn check_records(
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
    pub(super) async fn turn(
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
}
