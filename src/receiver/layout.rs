//! Where the receiver keeps things under its store prefix.
//!
//! ```text
//! received/day=<slot day>/<clusterID>/<slot ns>/<instance key>.json   a report, the bytes received
//! rollups/day=<slot day>/<window>.parquet                            rolled-up reports
//! summaries/day=<slot day>.json                                      a day's figures
//! summaries/ids/day=<slot day>.json                                  a day's clusters
//! summaries/clusters.json                                            every cluster's latest state
//! receiver/rollup.json                                               the rollup's progress
//! receiver/lease.json                                                which receiver rolls up
//! ```
//!
//! A report's key depends only on `(clusterID, interval, instance key)`, so a repeat, sent to
//! any receiver on the bucket, meets the same key and its create-if-absent fails.

use chrono::{DateTime, Utc};

use super::summary::day_of;

/// Received reports.
pub const RECEIVED: &str = "received/";
/// The all-clusters summary.
pub const CLUSTERS: &str = "summaries/clusters.json";
/// The rollup's progress.
pub const ROLLUP_STATE: &str = "receiver/rollup.json";
/// The rollup leader's lease.
pub const LEASE: &str = "receiver/lease.json";

/// `received/day=<day>/`
pub fn received_day_prefix(day: &str) -> String {
    format!("{RECEIVED}day={day}/")
}

/// The key of a report of `cluster` for `slot` from `instance`.
pub fn received_key(cluster: &str, slot: DateTime<Utc>, instance: &str) -> String {
    format!(
        "{}{cluster}/{}/{instance}.json",
        received_day_prefix(&day_of(slot)),
        crate::slots::slot_key(slot)
    )
}

/// `rollups/day=<day>/<window>.parquet`
pub fn rollup_key(day: &str, window: &str) -> String {
    format!("rollups/day={day}/{window}.parquet")
}

/// `summaries/day=<day>.json`
pub fn day_key(day: &str) -> String {
    format!("summaries/day={day}.json")
}

/// `summaries/ids/day=<day>.json`
pub fn day_ids_key(day: &str) -> String {
    format!("summaries/ids/day={day}.json")
}
