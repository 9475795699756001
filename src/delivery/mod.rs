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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

use crate::health::Health;
use crate::retry::StateLog;
use crate::signing::ClusterKey;
use crate::store::{Store, StoreError};

mod outbox;
mod pass;
mod post;
mod vet;

use pass::{Listing, Turn};
use vet::is_record;
pub(crate) use vet::{vet, Rejection, Verdict};

/// How the leader delivers.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryConfig {
    /// Where reports go; `None` keeps them in the bucket.
    pub(crate) stats_url: Option<Url>,
    /// The report period.
    pub(crate) interval: Duration,
    /// How long after a slot its reports are left to arrive.
    pub(crate) collect_delay: Duration,
    /// Undelivered reports older than this are dropped.
    pub(crate) max_age: Duration,
    /// Delivered reports are deleted after this.
    pub(crate) retention: Duration,
    /// POST attempts per report in one pass.
    pub(crate) attempts: usize,
    /// The deadline of one POST, connection included (`--post-timeout`).
    pub(crate) request_timeout: Duration,
    /// Reports a pass reads, POSTs and records at once.
    pub(crate) concurrency: usize,
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

impl Delivery {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::MAX_REPORT_BYTES;
    use crate::seed::Seed;
    use crate::timefmt;
    use serde_json::Value;

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
