//! The summaries the dashboard and the query API read, kept beside the rollups so that reading
//! them costs the same whether the bucket holds a thousand reports or a billion:
//!
//! - `summaries/day=<YYYY-MM-DD>.json` ([`Day`]): per day of slots, active clusters, reports,
//!   clusters by version, reports by os, arch and target;
//! - `summaries/ids/day=<YYYY-MM-DD>.json` ([`DayClusters`]): the clusters active that day and
//!   their version, which makes `Day::clusters` exact; only the rollup reads it;
//! - `summaries/clusters.json` ([`Clusters`]): every cluster's latest state.
//!
//! Each is updated by compare-and-swap and remembers which rollup windows it holds, so a
//! window applied twice (a rollup that died before recording its progress) counts once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::intake::Received;
use crate::timefmt;

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
    /// Distinct clusters with a report that day.
    pub clusters: u64,
    /// Reports that day.
    pub reports: u64,
    /// Clusters by the version they ran (their last that day).
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

/// The clusters active on one day, and their version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DayClusters {
    /// Cluster ID to version.
    pub clusters: BTreeMap<String, String>,
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

impl Cluster {
    /// Takes a report of `slot` into the latest state: a later slot replaces it, the same slot
    /// adds an instance, an earlier one changes nothing; a report with an instance ID replaces a
    /// state made of reports without, and one without never moves a state made of reports with.
    fn advance(&mut self, slot: DateTime<Utc>, version: &str, has_instance: bool) {
        if !has_instance && self.instance_ids {
            return;
        }
        let last = timefmt::parse_rfc3339(&self.last_interval).map(|t| t.to_utc());
        match last {
            _ if has_instance && !self.instance_ids => {}
            Some(l) if slot < l => return,
            Some(l) if slot == l => {
                self.instances += 1;
                return;
            }
            _ => {}
        }
        self.instance_ids = has_instance;
        self.last_interval = timefmt::rfc3339_nano(&slot);
        self.instances = 1;
        self.version = version.to_string();
    }
}

/// A report whose slot was ahead of the receiver's clock when rolled up: it joins its
/// cluster's latest state once its slot is due, not before, so a slot sent from the future
/// cannot take over what the API shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ahead {
    /// The cluster.
    pub cluster: String,
    /// The slot.
    pub slot: DateTime<Utc>,
    /// Its version.
    pub version: String,
    /// Whether it had an instance ID.
    pub has_instance: bool,
}

/// Every cluster's latest state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Clusters {
    /// By cluster ID.
    pub clusters: BTreeMap<String, Cluster>,
    /// Rollup windows applied.
    #[serde(default)]
    pub windows: VecDeque<String>,
    /// Reports whose slot is not due yet.
    #[serde(default)]
    pub ahead: Vec<Ahead>,
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

impl DayClusters {
    /// Adds the rows' clusters (a union: applying twice changes nothing).
    pub fn add(&mut self, rows: &[Row]) -> bool {
        let mut changed = false;
        let mut latest: BTreeMap<&str, (&Row, DateTime<Utc>)> = BTreeMap::new();
        for row in rows {
            let e = latest
                .entry(&row.report.cluster_id)
                .or_insert((row, row.report.slot()));
            if row.report.slot() > e.1 {
                *e = (row, row.report.slot());
            }
        }
        for (id, (row, _)) in latest {
            let version = if row.report.version.is_empty() {
                "unknown".to_string()
            } else {
                row.report.version.clone()
            };
            if self.clusters.get(id) != Some(&version) {
                self.clusters.insert(id.to_string(), version);
                changed = true;
            }
        }
        changed
    }
}

impl Day {
    /// Adds a window's rows of this day; `false` if the window was applied already.
    pub fn add(&mut self, window: &str, rows: &[Row], clusters: &DayClusters) -> bool {
        if !remember(&mut self.windows, window) {
            return false;
        }
        for row in rows {
            self.reports += 1;
            bump(&mut self.os, &row.report.os);
            bump(&mut self.arch, &row.report.arch);
            bump(&mut self.targets, &row.report.target);
        }
        self.clusters = clusters.clusters.len() as u64;
        self.versions.clear();
        for version in clusters.clusters.values() {
            bump(&mut self.versions, version);
        }
        true
    }
}

impl Clusters {
    /// Adds a window's rows, rolled up at `now`; `false` if the window was applied already.
    pub fn add(&mut self, window: &str, rows: &[Row], now: DateTime<Utc>) -> bool {
        if !remember(&mut self.windows, window) {
            return false;
        }
        let (due, ahead): (Vec<Ahead>, Vec<Ahead>) = std::mem::take(&mut self.ahead)
            .into_iter()
            .partition(|a| a.slot <= now);
        self.ahead = ahead;
        for a in due {
            if let Some(c) = self.clusters.get_mut(&a.cluster) {
                c.advance(a.slot, &a.version, a.has_instance);
            }
        }
        for row in rows {
            let r = &row.report;
            let at = timefmt::rfc3339_nano(&row.received_at);
            let c = self
                .clusters
                .entry(r.cluster_id.clone())
                .or_insert_with(|| Cluster {
                    cluster_id: r.cluster_id.clone(),
                    created_at: timefmt::rfc3339_nano(&r.created_at),
                    first_seen: at.clone(),
                    last_seen: at.clone(),
                    ..Cluster::default()
                });
            c.reports += 1;
            c.signed |= row.signed;
            c.targets.insert(r.target.clone());
            if row.received_at < parse(&c.first_seen) {
                c.first_seen = at.clone();
            }
            if row.received_at > parse(&c.last_seen) {
                c.last_seen = at;
            }
            if r.slot() > now {
                self.ahead.push(Ahead {
                    cluster: r.cluster_id.clone(),
                    slot: r.slot(),
                    version: r.version.clone(),
                    has_instance: r.instance_id.is_some(),
                });
            } else {
                c.advance(r.slot(), &r.version, r.instance_id.is_some());
            }
        }
        true
    }
}

fn parse(s: &str) -> DateTime<Utc> {
    timefmt::parse_rfc3339(s).map_or(DateTime::<Utc>::MIN_UTC, |t| t.to_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cluster: &str, slot: &str, instance: Option<&str>, version: &str) -> Row {
        let body = serde_json::json!({
            "clusterID": cluster, "createdAt": "2026-01-01T00:00:00Z", "interval": slot,
            "intervalPeriod": 3600, "target": "all", "instanceID": instance,
            "version": {"version": version}, "os": "linux", "arch": "amd64",
        });
        let report = super::super::intake::parse(
            body.to_string().as_bytes(),
            timefmt::parse_rfc3339(slot).unwrap().to_utc(),
        )
        .unwrap();
        Row {
            received_at: report.slot(),
            report,
            signed: false,
        }
    }

    const A: &str = "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";
    const B: &str = "0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";

    #[test]
    fn a_window_applied_twice_counts_once() {
        let rows = vec![
            row(A, "2026-02-01T00:00:00Z", Some(B), "1.0"),
            row(A, "2026-02-01T00:00:00Z", Some(A), "1.0"),
            row(B, "2026-02-01T01:00:00Z", None, "2.0"),
        ];
        let mut ids = DayClusters::default();
        assert!(ids.add(&rows));
        assert!(!ids.add(&rows), "a union changes nothing the second time");
        let mut day = Day::default();
        assert!(day.add("w1", &rows, &ids));
        assert!(!day.add("w1", &rows, &ids));
        assert_eq!((day.clusters, day.reports), (2, 3));
        assert_eq!(day.versions["1.0"], 1);
        let mut all = Clusters::default();
        let now = timefmt::parse_rfc3339("2026-02-02T00:00:00Z")
            .unwrap()
            .to_utc();
        assert!(all.add("w1", &rows, now));
        assert!(!all.add("w1", &rows, now));
        assert_eq!(all.clusters[A].instances, 2);
        assert_eq!(all.clusters[A].reports, 2);
        // A newer slot resets the replica count; an older one leaves it.
        all.add("w2", &[row(A, "2026-02-01T04:00:00Z", Some(B), "1.1")], now);
        all.add("w3", &[row(A, "2026-01-31T04:00:00Z", Some(B), "0.9")], now);
        let a = &all.clusters[A];
        assert_eq!((a.instances, a.reports, a.version.as_str()), (1, 4, "1.1"));
        assert_eq!(a.first_seen, "2026-01-31T04:00:00Z");
    }

    #[test]
    fn a_future_slot_or_a_report_without_instance_id_does_not_take_over() {
        let now = timefmt::parse_rfc3339("2026-02-01T08:00:00Z")
            .unwrap()
            .to_utc();
        let mut all = Clusters::default();
        all.add(
            "w1",
            &[
                row(A, "2026-02-01T08:00:00Z", Some(A), "1.0"),
                row(A, "2026-02-01T08:00:00Z", Some(B), "1.0"),
            ],
            now,
        );
        // Nine minutes ahead, and a Tempo-shaped report of a later slot: neither moves it.
        all.add(
            "w2",
            &[
                row(A, "2026-02-01T08:09:00Z", Some(B), "9.9.9-HIJACK"),
                row(A, "2026-02-01T09:00:00Z", None, "6.6.6"),
            ],
            now,
        );
        let a = &all.clusters[A];
        assert_eq!((a.instances, a.version.as_str()), (2, "1.0"));
        // Once due, the future slot counts; a report without instance ID still does not.
        let later = timefmt::parse_rfc3339("2026-02-01T08:10:00Z")
            .unwrap()
            .to_utc();
        all.add("w3", &[], later);
        assert_eq!(all.clusters[A].version, "9.9.9-HIJACK");
        assert_eq!(all.ahead.len(), 1, "the 09:00 slot is not due yet");
        let nine = timefmt::parse_rfc3339("2026-02-01T09:00:00Z")
            .unwrap()
            .to_utc();
        all.add("w3b", &[], nine);
        assert!(all.ahead.is_empty());
        assert_eq!(
            all.clusters[A].version, "9.9.9-HIJACK",
            "due, still without instance ID"
        );
        // A cluster first seen through reports without instance IDs takes ours when they come.
        all.add("w4", &[row(B, "2026-02-01T08:00:00Z", None, "2.0")], later);
        all.add(
            "w5",
            &[row(B, "2026-02-01T04:00:00Z", Some(A), "2.1")],
            later,
        );
        let b = &all.clusters[B];
        assert_eq!(
            (b.instances, b.version.as_str(), b.instance_ids),
            (1, "2.1", true)
        );
    }
}
