//! Reports and delivery records in the bucket: keeping a frozen report (and finding out
//! whether a timed-out create took), recording a delivery, removing what may not leave,
//! cleaning up after retention.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::layout::{record_key, report_key};
use crate::report::{Report, MAX_REPORT_BYTES};
use crate::retry::{backoff, sleep_or_stop};
use crate::store::StoreError;
use crate::timefmt;

use super::*;

impl Delivery {
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
    pub(super) async fn confirm(
        &self,
        slot: DateTime<Utc>,
        key: &str,
        shutdown: &CancellationToken,
    ) {
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

    /// Writes the delivery record; `false` if the store did not take it.
    pub(super) async fn record(
        &self,
        slot: DateTime<Utc>,
        instance: &str,
        leader: &Term<'_>,
    ) -> bool {
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
    pub(super) async fn reject(&self, key: &str, why: Rejection) -> Turn {
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
    pub(super) async fn clean_up(&self, listing: &Listing, now: DateTime<Utc>) {
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
}
