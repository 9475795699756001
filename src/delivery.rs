//! Reports in the bucket, and their delivery by the leader.
//!
//! Layout under the store prefix:
//! - `usage/reports/<slot>/<instanceID>.json`: a replica's frozen report for a slot, the exact
//!   bytes that will be POSTed; written once with create-if-absent.
//! - `usage/delivered/<slot>/<instanceID>.json`: the record that it was delivered.
//!
//! `<slot>` is the slot's Unix time in nanoseconds, 20 digits, so keys sort by time.
//!
//! A delivery pass (leader only): list both prefixes; for every report without a record, oldest
//! first, once its slot is `collect_delay` old: check leadership on our own clock, POST (retries
//! with exponential backoff and jitter, the same bytes each time), then write the record. A
//! leader that dies between a POST and its record causes that one report to be sent again by
//! the next leader; nothing else can repeat a report. Reports older than `max_age` are dropped
//! with a log line and a counter; delivered ones are deleted after `retention`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::health::Health;
use crate::lease::Leader;
use crate::replica::Options;
use crate::report::Report;
use crate::retry::{backoff, sleep_or_stop};
use crate::seed::Seed;
use crate::slots;
use crate::store::{Store, StoreError};
use crate::timefmt;

pub const REPORTS: &str = "usage/reports/";
pub const DELIVERED: &str = "usage/delivered/";

/// How the leader delivers.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub stats_url: Option<Url>,
    pub interval: Duration,
    pub collect_delay: Duration,
    pub max_age: Duration,
    pub retention: Duration,
    /// POST attempts per report in one pass.
    pub attempts: usize,
    pub request_timeout: Duration,
}

impl DeliveryConfig {
    pub fn from_options(o: &Options) -> Self {
        DeliveryConfig {
            stats_url: o.stats_url.clone(),
            interval: o.interval,
            collect_delay: o.collect_delay,
            max_age: o.max_report_age.unwrap_or(o.interval * 6),
            retention: o.retention.unwrap_or(o.interval * 2),
            attempts: 5,
            request_timeout: Duration::from_secs(5),
        }
    }
}

fn report_key(slot: DateTime<Utc>, instance: &str) -> String {
    format!("{REPORTS}{}/{instance}.json", slots::slot_key(slot))
}

fn record_key(slot: DateTime<Utc>, instance: &str) -> String {
    format!("{DELIVERED}{}/{instance}.json", slots::slot_key(slot))
}

/// `(slot, instance)` from `usage/reports/<slot>/<instance>.json` (or the delivered form).
fn parse_key(key: &str, prefix: &str) -> Option<(DateTime<Utc>, String)> {
    let rest = key.strip_prefix(prefix)?;
    let (slot, file) = rest.split_once('/')?;
    let instance = file.strip_suffix(".json")?;
    if instance.is_empty() || instance.contains('/') {
        return None;
    }
    Some((slots::parse_slot_key(slot)?, instance.to_string()))
}

/// What a pass left behind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassOutcome {
    pub delivered: usize,
    pub dropped: usize,
    /// Reports that are due but were not delivered (failures, lost leadership).
    pub pending: usize,
}

#[derive(Clone, Debug)]
pub struct Delivery {
    store: Store,
    cfg: DeliveryConfig,
    health: Arc<Health>,
    client: reqwest::Client,
}

impl Delivery {
    pub fn new(store: Store, cfg: DeliveryConfig, health: Arc<Health>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .user_agent(crate::build_info::user_agent())
            .build()
            .unwrap_or_default();
        Delivery {
            store,
            cfg,
            health,
            client,
        }
    }

    /// Keeps a frozen report in the bucket, retrying store failures until the next slot.
    pub async fn keep(
        &self,
        slot: DateTime<Utc>,
        instance: &str,
        report: Report,
        shutdown: &CancellationToken,
    ) {
        let bytes = match serde_json::to_vec(&report) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize a report");
                return;
            }
        };
        let key = report_key(slot, instance);
        let give_up = Instant::now() + self.cfg.interval;
        let mut delays = backoff(Duration::from_millis(200), Duration::from_secs(30));
        let mut warned = false;
        loop {
            match self.store.create(&key, bytes.clone()).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {
                    self.health.report_written();
                    tracing::debug!(slot = %timefmt::rfc3339_nano(&slot), "report kept in the bucket");
                    return;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "cannot keep this slot's report in the bucket; retrying");
                        warned = true;
                    }
                }
            }
            let wait = delays.next().unwrap_or(Duration::from_secs(30));
            if Instant::now() + wait > give_up {
                tracing::error!(slot = %timefmt::rfc3339_nano(&slot), "gave up keeping this slot's report: the store did not take it before the next slot");
                self.health.report_dropped();
                return;
            }
            if sleep_or_stop(wait, shutdown).await {
                return;
            }
        }
    }

    /// One delivery pass; see the module docs.
    pub async fn pass(
        &self,
        leader: &Leader,
        shutdown: &CancellationToken,
    ) -> Result<PassOutcome, StoreError> {
        let reports = self.store.list(REPORTS).await?;
        let delivered: HashSet<(DateTime<Utc>, String)> = self
            .store
            .list(DELIVERED)
            .await?
            .iter()
            .filter_map(|k| parse_key(k, DELIVERED))
            .collect();
        let mut items: Vec<_> = reports
            .iter()
            .filter_map(|k| parse_key(k, REPORTS))
            .collect();
        items.sort();
        let now = Utc::now();
        let age = |slot: DateTime<Utc>| (now - slot).to_std().unwrap_or_default();
        let mut out = PassOutcome::default();
        let mut present = HashSet::new();
        for (slot, instance) in items {
            present.insert((slot, instance.clone()));
            if shutdown.is_cancelled() {
                break;
            }
            if delivered.contains(&(slot, instance.clone())) {
                if age(slot) > self.cfg.retention {
                    // The report goes first: a record without a report is harmless, a report
                    // without its record would be sent again.
                    if self
                        .store
                        .delete(&report_key(slot, &instance))
                        .await
                        .is_ok()
                    {
                        let _ = self.store.delete(&record_key(slot, &instance)).await;
                    }
                }
                continue;
            }
            if age(slot) < self.cfg.collect_delay {
                continue;
            }
            if age(slot) > self.cfg.max_age {
                tracing::warn!(
                    slot = %timefmt::rfc3339_nano(&slot),
                    instance_id = %instance,
                    max_age = %timefmt::format_duration(self.cfg.max_age),
                    "dropping a report older than the age bound, undelivered"
                );
                self.health.report_dropped();
                out.dropped += 1;
                let _ = self.store.delete(&report_key(slot, &instance)).await;
                continue;
            }
            let Some(url) = &self.cfg.stats_url else {
                continue;
            };
            if leader.term().is_none() {
                out.pending += 1;
                break;
            }
            let bytes = match self.store.get(&report_key(slot, &instance)).await {
                Ok(obj) => obj.bytes,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            match self.post(url, bytes, leader, shutdown).await {
                Ok(latency) => {
                    let term = leader.term().unwrap_or_default();
                    let record = serde_json::json!({
                        "delivered_at": timefmt::rfc3339_nano(&Utc::now()),
                        "term": term,
                    });
                    match self
                        .store
                        .create(&record_key(slot, &instance), record.to_string())
                        .await
                    {
                        Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "delivered a report but could not record it; it may be sent once more");
                        }
                    }
                    self.health.report_delivered(latency);
                    out.delivered += 1;
                }
                Err(reason) => {
                    tracing::warn!(
                        slot = %timefmt::rfc3339_nano(&slot),
                        reason = %reason,
                        "report not delivered; will retry on a later pass"
                    );
                    out.pending += 1;
                    break;
                }
            }
        }
        // Records whose report is gone are left from an interrupted clean-up.
        for (slot, instance) in delivered {
            if !present.contains(&(slot, instance.clone())) && age(slot) > self.cfg.retention {
                let _ = self.store.delete(&record_key(slot, &instance)).await;
            }
        }
        Ok(out)
    }

    /// POSTs one report, retrying with backoff while still leader. The same bytes every time.
    async fn post(
        &self,
        url: &Url,
        body: Bytes,
        leader: &Leader,
        shutdown: &CancellationToken,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        // Retries scale with the interval: 500 ms to 30 s at hours, faster for short slots.
        let mut delays = backoff(
            Duration::from_millis(500).min(self.cfg.interval / 10),
            Duration::from_secs(30).min(self.cfg.interval / 2),
        );
        let mut last = String::new();
        for attempt in 0..self.cfg.attempts {
            if attempt > 0 {
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                if sleep_or_stop(wait, shutdown).await {
                    break;
                }
            }
            if leader.term().is_none() {
                return Err("no longer leader".to_string());
            }
            let result = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(resp) if resp.status().is_success() => return Ok(started.elapsed()),
                Ok(resp) => last = format!("receiver answered {}", resp.status()),
                Err(e) => {
                    last = format!("request failed: {}", crate::store::redact(&e.to_string()))
                }
            }
            self.health.report_failed();
        }
        Err(last)
    }
}

/// Runs the election and, while leader, a delivery pass `collect_delay` after every slot, when
/// leadership is gained, and again with backoff while reports are pending.
pub async fn lead(
    leader: Leader,
    delivery: Delivery,
    seed: Seed,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let election = {
        let (leader, shutdown) = (leader.clone(), shutdown.clone());
        tokio::spawn(async move { leader.run(shutdown).await })
    };
    let mut terms = leader.subscribe();
    let created = seed.created_at();
    let collect = delivery.cfg.collect_delay;
    let mut due_now = false;
    let mut retry_at: Option<Instant> = None;
    let mut retry_delays = backoff(Duration::from_secs(1), interval.max(Duration::from_secs(1)));
    let mut last_pass_slot: Option<DateTime<Utc>> = None;
    let mut listening = true;
    loop {
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
            match delivery.pass(&leader, &shutdown).await {
                Ok(out) if out.pending == 0 => {
                    retry_at = None;
                    retry_delays =
                        backoff(Duration::from_secs(1), interval.max(Duration::from_secs(1)));
                    if out.delivered + out.dropped > 0 {
                        tracing::info!(
                            delivered = out.delivered,
                            dropped = out.dropped,
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
    let _ = election.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let slot = timefmt::parse_rfc3339("2024-05-01T12:00:00.5Z")
            .unwrap()
            .to_utc();
        let k = report_key(slot, "abc");
        assert_eq!(parse_key(&k, REPORTS), Some((slot, "abc".to_string())));
        assert_eq!(
            parse_key(&record_key(slot, "abc"), DELIVERED),
            Some((slot, "abc".to_string()))
        );
        assert_eq!(parse_key("usage/reports/xx/abc.json", REPORTS), None);
        assert_eq!(
            parse_key("usage/reports/00000000000000000001/.json", REPORTS),
            None
        );
    }
}
