//! The summaries the dashboard and the query API read, kept beside the rollups so that reading
//! them costs the same whether the bucket holds a thousand reports or a billion:
//!
//! - `summaries/day=<YYYY-MM-DD>.json` ([`Day`]): per day of slots, reports, and reports by
//!   os, arch and target; the day's clusters and their versions are read from the insights'
//!   `day=` aggregate ([`super::figures`]), which counts each cluster once;
//! - the cluster list of [`Cluster`] entries ([`super::cluster_list`]).
//!
//! A `Day` is updated by compare-and-swap and remembers which rollup windows it holds, so a
//! window applied twice (a rollup that died before recording its progress) counts once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::intake::Received;

/// Windows remembered per summary: a window is only ever re-applied right after a crash.
const WINDOWS_KEPT: usize = 64;

/// A received report and when it arrived: one Parquet row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The report.
    pub report: Received,
    /// When the store took it.
    pub received_at: DateTime<Utc>,
    /// Whether it carried a valid signature of its cluster's key.
    pub signed: bool,
}

/// The `YYYY-MM-DD` (UTC) of a slot.
pub fn day_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// One day of slots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Distinct clusters with a report that day: filled in when read, as `versions`.
    #[serde(default, skip_serializing)]
    pub clusters: u64,
    /// Reports that day.
    pub reports: u64,
    /// Clusters by the version they ran (their last slot that day): filled in when read,
    /// from the insights' aggregate of the day.
    #[serde(default, skip_serializing)]
    pub versions: BTreeMap<String, u64>,
    /// Reports by OS.
    pub os: BTreeMap<String, u64>,
    /// Reports by architecture.
    pub arch: BTreeMap<String, u64>,
    /// Reports by target.
    pub targets: BTreeMap<String, u64>,
    /// Rollup windows applied.
    #[serde(default)]
    pub windows: VecDeque<String>,
}

/// One cluster's latest state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// The cluster ID.
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    /// The seed's `createdAt`.
    pub created_at: String,
    /// The first report's arrival.
    pub first_seen: String,
    /// The last report's arrival.
    pub last_seen: String,
    /// The version in its latest slot.
    pub version: String,
    /// Every target it reported.
    pub targets: BTreeSet<String>,
    /// Replicas that reported its latest slot.
    pub instances: u64,
    /// Reports stored.
    pub reports: u64,
    /// Its latest slot that is not in the future.
    pub last_interval: String,
    /// Whether its reports are signed (its key is pinned).
    #[serde(default)]
    pub signed: bool,
    /// Whether its reports carry instance IDs (ours); then reports without one (Tempo's shape)
    /// never move its latest state.
    #[serde(default, rename = "instanceIDs")]
    pub instance_ids: bool,
}

/// Remembers a window (or a forget request) applied; `false` if it already was.
pub(crate) fn remember(windows: &mut VecDeque<String>, window: &str) -> bool {
    if windows.iter().any(|w| w == window) {
        return false;
    }
    windows.push_back(window.to_string());
    while windows.len() > WINDOWS_KEPT {
        windows.pop_front();
    }
    true
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    let key = if key.is_empty() { "unknown" } else { key };
    *map.entry(key.to_string()).or_default() += 1;
}

impl Day {
    /// Adds a window's rows of this day; `false` if the window was applied already.
    pub fn add(&mut self, window: &str, rows: &[Row]) -> bool {
        if !remember(&mut self.windows, window) {
            return false;
        }
        for row in rows {
            self.reports += 1;
            bump(&mut self.os, &row.report.os);
            bump(&mut self.arch, &row.report.arch);
            bump(&mut self.targets, &row.report.target);
        }
        true
    }
}
