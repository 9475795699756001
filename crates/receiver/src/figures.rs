//! The insights in the bucket: each rollup window updates them by what it brings, never by
//! re-reading all clusters.
//!
//! ```text
//! receiver/insights/<clusterID>.json        a cluster's latest slot (its replicas' versions and
//!                                           leaves merged), the days it counts in, its
//!                                           cluster-list entry, its reports not due yet
//! receiver/ahead.json                       clusters with reports not due yet
//! summaries/insights/day=<D>.json           each cluster active on day D once, by its latest slot that day
//! summaries/insights/latest/day=<D>.json    each cluster once, counted on the day of its latest slot
//! ```
//!
//! A window reads the state of each cluster it has reports of, works out how that cluster's
//! figures change (see [`super::insights`]), takes the old figures back from the aggregates and
//! adds the new ones, writes the clusters it changed to the cluster list
//! ([`super::cluster_list`]), and only then writes the clusters' new states. The aggregates
//! remember the windows they took and a state the windows it took, so a redone window changes
//! nothing twice. Summing the `latest` aggregates of the last N days counts every cluster
//! active in them once, by its latest slot: what `/api/v1/metrics?days=N` and
//! `/api/v1/summary?days=N` show (versions and replicas included). The `day=` aggregates are
//! the trend, day by day. What a window reads and writes grows with its reports, never with
//! all clusters.
//!
//! Reports without an instance ID (Tempo's shape) do not count for a cluster whose reports
//! carry one; a report whose slot is ahead of the rollup's clock counts once due.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::cluster_list::{self, next_rev, Entry};
use super::insights::{add_replica, figures_of, lowest_version, Aggregate, Counted, Partials};
use super::leaves::Leaf;
use super::rollup::{fenced_write, read_json, update_json, Fence, RollupError};
use super::summary::{day_of, remember, Cluster, Row};
use crate::store::{Store, StoreError};

/// Per-cluster states.
pub const STATES: &str = "receiver/insights/";
/// The aggregates.
pub const AGGREGATES: &str = "summaries/insights/";
/// Days a cluster's state remembers it counts in: intake accepts slots up to 7 days old.
const DAYS_KEPT: i64 = 8;

/// `receiver/insights/<cluster>.json`
pub fn state_key(cluster: &str) -> String {
    format!("{STATES}{cluster}.json")
}

/// `summaries/insights/day=<day>.json`
pub fn daily_key(day: &str) -> String {
    format!("{AGGREGATES}day={day}.json")
}

/// `summaries/insights/latest/day=<day>.json`
pub fn latest_key(day: &str) -> String {
    format!("{AGGREGATES}latest/day={day}.json")
}

/// One leaf as kept in a state: `(key, text, number)`.
type Kept = (String, Option<String>, Option<f64>);

fn kept_leaves(row: &Row) -> Vec<Kept> {
    super::leaves::of_text(&row.report.metrics)
        .into_iter()
        .map(|l| (l.key, l.text, l.number))
        .collect()
}

/// A cluster's slot: its replicas' versions, and their metric leaves merged so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DaySlot {
    slot: DateTime<Utc>,
    /// Replicas merged in (instance keys), and their versions.
    versions: BTreeMap<String, String>,
    /// Their leaves, merged.
    keys: Partials,
}

impl DaySlot {
    fn new(slot: DateTime<Utc>) -> Self {
        DaySlot {
            slot,
            ..DaySlot::default()
        }
    }

    fn day(&self) -> String {
        day_of(self.slot)
    }

    /// Merges a replica in, once.
    fn add(&mut self, instance: String, version: String, leaves: &[Kept]) {
        if self.versions.contains_key(&instance) {
            return;
        }
        let leaves: Vec<Leaf> = leaves
            .iter()
            .map(|(key, text, number)| Leaf {
                key: key.clone(),
                text: text.clone(),
                number: *number,
            })
            .collect();
        add_replica(&mut self.keys, &leaves);
        self.versions.insert(instance, version);
    }

    /// Whether only reports without an instance ID (Tempo's shape) made it.
    fn foreign_only(&self) -> bool {
        self.versions.keys().all(|k| k.starts_with("target-"))
    }

    /// The cluster in this slot as the aggregates count it.
    fn counted(&self) -> Counted {
        Counted {
            figures: figures_of(&self.keys),
            version: lowest_version(self.versions.values().map(String::as_str)),
            instances: self.versions.len() as u64,
        }
    }
}

/// A report whose slot was ahead of the receiver's clock when rolled up: it joins its
/// cluster's figures once due, so a slot sent from the future cannot take over before its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AheadRow {
    slot: DateTime<Utc>,
    instance: String,
    version: String,
    leaves: Vec<Kept>,
}

/// What the receiver keeps of one cluster: its latest slot, the days it is counted in, its
/// entry in the cluster list, and reports not due yet. A few kilobytes, whatever its history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ClusterState {
    /// Its latest slot: what the `latest` aggregate of its day, and that day's, count.
    #[serde(default)]
    latest: Option<DaySlot>,
    /// The days (of the last [`DAYS_KEPT`]) whose `day=` aggregate counts it.
    #[serde(default)]
    counted: BTreeSet<String>,
    /// Slots of earlier days not counted yet, taken in this window (never stored).
    #[serde(skip)]
    late: BTreeMap<String, DaySlot>,
    /// Its entry in the cluster list (its counters; the latest slot's fields are derived).
    #[serde(default)]
    cluster: Option<Cluster>,
    /// Reports whose slot is not due yet.
    #[serde(default)]
    ahead: Vec<AheadRow>,
    /// Its revision in the cluster list.
    #[serde(default)]
    rev: u64,
    /// Windows taken, so that a redone window counts its reports once.
    #[serde(default)]
    taken: VecDeque<String>,
}

/// Windows a state remembers: a window is only redone right after a crash.
const TAKEN_KEPT: usize = 2;

impl ClusterState {
    /// Whether its reports carry instance IDs (ours): then one without (Tempo's shape) never
    /// moves its figures.
    fn ours(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.instance_ids)
    }

    /// Counts a report in its list entry, and keeps it aside if its slot is not due at `now`;
    /// the report to place if it is.
    fn record(&mut self, row: &Row, now: DateTime<Utc>) -> Option<AheadRow> {
        let r = &row.report;
        let at = crate::timefmt::rfc3339_nano(&row.received_at);
        let c = self.cluster.get_or_insert_with(|| Cluster {
            cluster_id: r.cluster_id.clone(),
            created_at: crate::timefmt::rfc3339_nano(&r.created_at),
            first_seen: at.clone(),
            last_seen: at.clone(),
            ..Cluster::default()
        });
        c.reports += 1;
        c.signed |= row.signed;
        c.targets.insert(r.target.clone());
        if at < c.first_seen {
            c.first_seen = at.clone();
        }
        if at > c.last_seen {
            c.last_seen = at;
        }
        let ahead = AheadRow {
            slot: r.slot(),
            instance: r.instance_key(),
            version: r.version.clone(),
            leaves: kept_leaves(row),
        };
        if ahead.slot > now {
            self.ahead.push(ahead);
            None
        } else {
            Some(ahead)
        }
    }

    /// Takes a window's reports in at `now`, with those kept aside that are due: the latest
    /// slot first, so that earlier days count as earlier days, whatever the reports' order.
    fn take(&mut self, rows: &[&Row], now: DateTime<Utc>) {
        let (mut due, ahead) = std::mem::take(&mut self.ahead)
            .into_iter()
            .partition::<Vec<_>, _>(|a| a.slot <= now);
        self.ahead = ahead;
        for row in rows {
            due.extend(self.record(row, now));
        }
        due.sort_by_key(|a| std::cmp::Reverse(a.slot));
        for a in due {
            self.place(a);
        }
    }

    /// A due report into the figures: a later slot than the latest becomes the latest, the
    /// same slot adds a replica, an earlier slot of the same day changes nothing, and a slot of
    /// an earlier day counts in that day only if nothing did yet. The first report with an
    /// instance ID makes the cluster ours; after that, reports without one are not counted.
    fn place(&mut self, a: AheadRow) {
        let has_instance = !a.instance.starts_with("target-");
        if !has_instance && self.ours() {
            return;
        }
        if has_instance && !self.ours() {
            if let Some(c) = self.cluster.as_mut() {
                c.instance_ids = true;
            }
            if self.latest.as_ref().is_some_and(DaySlot::foreign_only) {
                self.latest = None;
            }
        }
        let day = day_of(a.slot);
        let slot = match &mut self.latest {
            Some(l) if a.slot == l.slot => l,
            Some(l) if day < l.day() => {
                if self.counted.contains(&day) {
                    return;
                }
                let late = self.late.entry(day).or_insert_with(|| DaySlot::new(a.slot));
                if a.slot > late.slot {
                    *late = DaySlot::new(a.slot);
                }
                if a.slot != late.slot {
                    return;
                }
                late
            }
            Some(l) if a.slot < l.slot => return,
            _ => self.latest.insert(DaySlot::new(a.slot)),
        };
        slot.add(a.instance, a.version, &a.leaves);
    }

    /// Its list entry, the latest slot's fields brought up to date.
    fn entry(&self) -> Option<Cluster> {
        let mut c = self.cluster.clone()?;
        if let Some(slot) = &self.latest {
            let counted = slot.counted();
            c.version = counted.version;
            c.instances = counted.instances;
            c.last_interval = crate::timefmt::rfc3339_nano(&slot.slot);
        }
        Some(c)
    }
}

/// An aggregate as kept, with the windows it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredAggregate {
    /// The figures (not flattened: serde's flatten cannot read the histograms' number keys).
    pub aggregate: Aggregate,
    /// Windows (and forget requests) applied.
    #[serde(default)]
    pub windows: VecDeque<String>,
}

/// One change to an aggregate: a cluster's slot in or out.
type Change = (String, Counted, bool);

/// The changes a cluster's new state makes, old figures out before new ones in. A day's
/// aggregate counts the cluster by its latest slot of that day while that day held its latest
/// slot (or, for a late report of a day it had none of, by that slot).
fn changes(old: &ClusterState, new: &ClusterState) -> Vec<Change> {
    let mut out = Vec::new();
    if old.latest != new.latest {
        if let Some(o) = &old.latest {
            out.push((latest_key(&o.day()), o.counted(), false));
            if new.latest.as_ref().is_none_or(|n| n.day() == o.day()) {
                out.push((daily_key(&o.day()), o.counted(), false));
            }
        }
        if let Some(n) = &new.latest {
            out.push((latest_key(&n.day()), n.counted(), true));
            out.push((daily_key(&n.day()), n.counted(), true));
        }
    }
    for (day, slot) in &new.late {
        out.push((daily_key(day), slot.counted(), true));
    }
    out
}

/// Applies changes, each aggregate once per `memo` (a window, or a forget request).
async fn apply_changes(
    store: &Store,
    memo: &str,
    changes: Vec<Change>,
    fence: &Fence<'_>,
) -> Result<(), RollupError> {
    let mut by_key: BTreeMap<String, Vec<(Counted, bool)>> = BTreeMap::new();
    for (key, figures, up) in changes {
        by_key.entry(key).or_default().push((figures, up));
    }
    for (key, changes) in by_key {
        update_json::<StoredAggregate>(store, &key, fence, |a| {
            if !remember(&mut a.windows, memo) {
                return false;
            }
            for (figures, up) in &changes {
                a.aggregate.apply_cluster(figures, *up);
            }
            true
        })
        .await?;
    }
    Ok(())
}

/// Clusters with reports not due yet, and the earliest slot: each window takes in those due.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AheadIndex {
    due: BTreeMap<String, DateTime<Utc>>,
}

/// Where the clusters with reports not due yet are kept.
pub const AHEAD: &str = "receiver/ahead.json";
/// Clusters the index holds at most; beyond, a cluster's early report is taken in with its
/// next one.
const AHEAD_MAX: usize = 10_000;

/// Takes a window's rows into the insights and the cluster list (the rollup calls this once
/// its Parquet files are written); also takes in earlier reports whose slot is now due.
///
/// # Errors
///
/// What the store said, or [`RollupError`] if the fence finds this process no longer leads; a
/// redo of the window takes each report in once.
pub async fn take_window(
    store: &Store,
    window: &str,
    rows: &[&Row],
    now: DateTime<Utc>,
    fence: &Fence<'_>,
) -> Result<(), RollupError> {
    let mut by_cluster: HashMap<&str, Vec<&Row>> = HashMap::new();
    for row in rows.iter().copied() {
        by_cluster
            .entry(&row.report.cluster_id)
            .or_default()
            .push(row);
    }
    let (index, _) = read_json::<AheadIndex>(store, AHEAD).await?;
    for (cluster, _) in index.due.iter().filter(|(_, slot)| **slot <= now) {
        by_cluster.entry(cluster).or_default();
    }
    let reads: Vec<_> = by_cluster
        .keys()
        .map(|cluster| read_state(store, state_key(cluster)))
        .collect();
    let olds: Vec<_> = futures::stream::iter(reads)
        .buffered(32)
        .try_collect()
        .await?;
    let oldest_kept = day_of(now - chrono::Duration::days(DAYS_KEPT));
    let mut all_changes = Vec::new();
    let mut writes = Vec::new();
    let mut entries = Vec::new();
    let mut ahead = index.clone();
    for ((cluster, rows), (old, _)) in by_cluster.iter().zip(olds) {
        let mut new = old.clone();
        if !new.taken.iter().any(|w| w == window) {
            new.taken.push_back(window.to_string());
            while new.taken.len() > TAKEN_KEPT {
                new.taken.pop_front();
            }
            new.take(rows, now);
            all_changes.extend(changes(&old, &new));
            let late = std::mem::take(&mut new.late);
            new.counted.extend(late.into_keys());
            if let Some(l) = &new.latest {
                new.counted.insert(l.day());
            }
            new.counted.retain(|day| *day >= oldest_kept);
            new.rev = next_rev(old.rev, now.timestamp_millis());
            writes.push((state_key(cluster), new.clone()));
        }
        match new.ahead.iter().map(|a| a.slot).min() {
            Some(slot) if ahead.due.len() < AHEAD_MAX || ahead.due.contains_key(*cluster) => {
                ahead.due.insert(cluster.to_string(), slot);
            }
            _ => {
                ahead.due.remove(*cluster);
            }
        }
        if let Some(c) = new.entry() {
            entries.push(Entry {
                id: cluster.to_string(),
                rev: new.rev,
                cluster: Some(c),
            });
        }
    }
    // The aggregates first: a window redone after the states were written finds nothing to
    // change, and the aggregates remember they took it. The list's delta is the same on a redo.
    apply_changes(store, window, all_changes, fence).await?;
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    cluster_list::write_delta(store, window, entries, fence).await?;
    let puts: Vec<_> = writes
        .iter()
        .map(|(key, state)| put_state(store, key, state, fence))
        .collect();
    futures::stream::iter(puts)
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    if ahead != index {
        let touched: Vec<&str> = by_cluster.keys().copied().collect();
        update_json::<AheadIndex>(store, AHEAD, fence, |i| {
            let before = i.clone();
            for c in &touched {
                match ahead.due.get(*c) {
                    Some(slot) => i.due.insert(c.to_string(), *slot),
                    None => i.due.remove(*c),
                };
            }
            *i != before
        })
        .await?;
    }
    Ok(())
}

async fn read_state(
    store: &Store,
    key: String,
) -> Result<(ClusterState, Option<crate::store::Version>), RollupError> {
    read_json::<ClusterState>(store, &key).await
}

async fn put_state(
    store: &Store,
    key: &str,
    state: &ClusterState,
    fence: &Fence<'_>,
) -> Result<(), RollupError> {
    let bytes = serde_json::to_vec(state).map_err(|e| RollupError::Corrupted {
        key: key.to_string(),
        why: e.to_string(),
    })?;
    fenced_write(fence)?;
    store.put(key, bytes).await?;
    Ok(())
}

/// Takes a cluster out of every aggregate, writes its tombstone in the cluster list and
/// removes its state (`reporter forget`); `memo` makes a redone forget take it out once.
///
/// # Errors
///
/// What the store said, or [`RollupError`] if the fence finds this process no longer leads; a
/// redo takes the cluster out once.
pub async fn forget(
    store: &Store,
    cluster: &str,
    memo: &str,
    fence: &Fence<'_>,
) -> Result<(), RollupError> {
    let key = state_key(cluster);
    let (old, _) = read_json::<ClusterState>(store, &key).await?;
    let changes = changes(&old, &ClusterState::default());
    // `changes` adds nothing for an empty new state; only the takings back remain.
    apply_changes(store, memo, changes, fence).await?;
    let now = Utc::now().timestamp_millis();
    let tombstone = Entry {
        id: cluster.to_string(),
        rev: next_rev(old.rev, now),
        cluster: None,
    };
    cluster_list::write_delta(store, &format!("{now:015}-{memo}"), vec![tombstone], fence).await?;
    update_json::<AheadIndex>(store, AHEAD, fence, |i| i.due.remove(cluster).is_some()).await?;
    fenced_write(fence)?;
    match store.delete(&key).await {
        Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The aggregates of these days, merged: `latest` ones for a window's figures, `day=` ones for
/// one day's.
pub fn sum<'a>(aggregates: impl IntoIterator<Item = &'a Aggregate>) -> Aggregate {
    let mut total = Aggregate::default();
    for a in aggregates {
        total.merge(a);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt;

    fn at(s: &str) -> DateTime<Utc> {
        timefmt::parse_rfc3339(s).unwrap().to_utc()
    }

    fn row(cluster: &str, slot: &str, instance: Option<&str>, version: &str) -> Row {
        let body = serde_json::json!({
            "clusterID": cluster, "createdAt": "2026-01-01T00:00:00Z", "interval": slot,
            "intervalPeriod": 3600, "target": "all", "instanceID": instance,
            "version": {"version": version}, "os": "linux", "arch": "amd64",
            "metrics": {"feature_enabled_x": 1},
        });
        let report = super::super::intake::parse(body.to_string().as_bytes(), at(slot)).unwrap();
        Row {
            received_at: report.slot(),
            report,
            signed: false,
        }
    }

    const A: &str = "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";
    const B: &str = "0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";
    const C: &str = "1b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(std::sync::Arc::new(
            crate::store::local::LocalDir::new(dir.path()).unwrap(),
        ));
        (dir, store)
    }

    /// Takes one report in, in its own window.
    async fn take(store: &Store, window: &str, row: Row, now: DateTime<Utc>) {
        take_window(
            store,
            window,
            &[&row],
            now,
            &super::super::rollup::unfenced(),
        )
        .await
        .unwrap();
    }

    async fn state(store: &Store, cluster: &str) -> ClusterState {
        read_json::<ClusterState>(store, &state_key(cluster))
            .await
            .unwrap()
            .0
    }

    async fn latest(store: &Store, day: &str) -> Aggregate {
        read_json::<StoredAggregate>(store, &latest_key(day))
            .await
            .unwrap()
            .0
            .aggregate
    }

    #[tokio::test]
    async fn a_window_taken_twice_counts_once_and_replicas_make_one_cluster() {
        let (_dir, store) = store();
        let fence = super::super::rollup::unfenced();
        let now = at("2026-02-02T00:00:00Z");
        let rows = [
            row(A, "2026-02-01T00:00:00Z", Some(B), "1.1.0"),
            row(A, "2026-02-01T00:00:00Z", Some(A), "1.0.0"),
            row(B, "2026-02-01T01:00:00Z", None, "2.0.0"),
        ];
        take_window(&store, "w1", &rows.iter().collect::<Vec<_>>(), now, &fence)
            .await
            .unwrap();
        let first = (state(&store, A).await, latest(&store, "2026-02-01").await);
        take_window(&store, "w1", &rows.iter().collect::<Vec<_>>(), now, &fence)
            .await
            .unwrap();
        assert_eq!(
            (state(&store, A).await, latest(&store, "2026-02-01").await),
            first
        );
        let (a, agg) = first;
        let entry = a.entry().unwrap();
        assert_eq!((entry.instances, entry.reports), (2, 2));
        assert_eq!(
            entry.version, "1.0.0",
            "a cluster mid-upgrade counts at its lowest"
        );
        assert_eq!((agg.clusters, agg.instances), (2, 3));
        assert_eq!(agg.versions["1.0.0"], 1);
        assert_eq!(agg.replicas["2"], 1);
        // A newer slot moves the cluster in the aggregates; an older one changes nothing.
        take(
            &store,
            "w2",
            row(A, "2026-02-01T04:00:00Z", Some(B), "1.1.0"),
            now,
        )
        .await;
        take(
            &store,
            "w3",
            row(A, "2026-01-31T04:00:00Z", Some(B), "0.9.0"),
            now,
        )
        .await;
        let a = state(&store, A).await.entry().unwrap();
        assert_eq!(
            (a.instances, a.reports, a.version.as_str()),
            (1, 4, "1.1.0")
        );
        assert_eq!(a.first_seen, "2026-01-31T04:00:00Z");
        let agg = latest(&store, "2026-02-01").await;
        assert_eq!(agg.clusters, 2);
        assert_eq!(agg.versions.get("1.0.0"), None);
        assert_eq!(agg.versions["1.1.0"], 1);
        // The day of 2026-01-31 has A in its trend, but not in `latest`.
        assert_eq!(latest(&store, "2026-01-31").await.clusters, 0);
    }

    #[tokio::test]
    async fn one_window_with_several_days_of_a_cluster_counts_it_on_each_day() {
        let (_dir, store) = store();
        let fence = super::super::rollup::unfenced();
        let rows = [
            row(A, "2026-01-30T10:00:00Z", Some(A), "1.0.0"),
            row(A, "2026-02-01T10:00:00Z", Some(A), "1.2.0"),
            row(A, "2026-01-31T10:00:00Z", Some(A), "1.1.0"),
            row(A, "2026-01-31T04:00:00Z", Some(A), "1.0.5"),
        ];
        let now = at("2026-02-01T12:00:00Z");
        take_window(&store, "w1", &rows.iter().collect::<Vec<_>>(), now, &fence)
            .await
            .unwrap();
        for (day, version) in [
            ("2026-01-30", "1.0.0"),
            ("2026-01-31", "1.1.0"),
            ("2026-02-01", "1.2.0"),
        ] {
            let (daily, _) = read_json::<StoredAggregate>(&store, &daily_key(day))
                .await
                .unwrap();
            assert_eq!(daily.aggregate.clusters, 1, "{day}");
            assert_eq!(daily.aggregate.versions[version], 1, "{day}");
        }
        assert_eq!(latest(&store, "2026-02-01").await.clusters, 1);
        assert_eq!(latest(&store, "2026-01-31").await.clusters, 0);
    }

    #[tokio::test]
    async fn a_future_slot_or_a_report_without_instance_id_does_not_take_over() {
        let (_dir, store) = store();
        let fence = super::super::rollup::unfenced();
        let now = at("2026-02-01T08:00:00Z");
        let ours = [
            row(A, "2026-02-01T08:00:00Z", Some(A), "1.0.0"),
            row(A, "2026-02-01T08:00:00Z", Some(B), "1.0.0"),
        ];
        take_window(&store, "w1", &ours.iter().collect::<Vec<_>>(), now, &fence)
            .await
            .unwrap();
        // Nine minutes ahead, and a Tempo-shaped report of a later slot: neither moves it.
        let foreign = [
            row(A, "2026-02-01T08:09:00Z", Some(C), "9.9.9-HIJACK"),
            row(A, "2026-02-01T09:00:00Z", None, "6.6.6"),
        ];
        take_window(
            &store,
            "w2",
            &foreign.iter().collect::<Vec<_>>(),
            now,
            &fence,
        )
        .await
        .unwrap();
        let a = state(&store, A).await.entry().unwrap();
        assert_eq!((a.instances, a.version.as_str()), (2, "1.0.0"));
        assert_eq!(latest(&store, "2026-02-01").await.versions["1.0.0"], 1);
        // Once due, a window without any report of A takes the early one in.
        take_window(&store, "w3", &[], at("2026-02-01T08:10:00Z"), &fence)
            .await
            .unwrap();
        let a = state(&store, A).await.entry().unwrap();
        assert_eq!((a.instances, a.version.as_str()), (1, "9.9.9-HIJACK"));
        let (index, _) = read_json::<AheadIndex>(&store, AHEAD).await.unwrap();
        assert_eq!(
            index.due.get(A),
            Some(&at("2026-02-01T09:00:00Z")),
            "{index:?}"
        );
        // Due at 09:00, the Tempo-shaped one still does not move a cluster of ours.
        take_window(&store, "w3b", &[], at("2026-02-01T09:00:00Z"), &fence)
            .await
            .unwrap();
        let a = state(&store, A).await;
        assert!(a.ahead.is_empty());
        assert_eq!(a.entry().unwrap().version, "9.9.9-HIJACK");
        let (index, _) = read_json::<AheadIndex>(&store, AHEAD).await.unwrap();
        assert!(index.due.is_empty(), "{index:?}");
        // A cluster first seen through reports without instance IDs takes ours when they come.
        take(
            &store,
            "w4",
            row(B, "2026-02-01T08:00:00Z", None, "2.0.0"),
            now,
        )
        .await;
        take(
            &store,
            "w5",
            row(B, "2026-02-01T08:00:00Z", Some(A), "2.1.0"),
            now,
        )
        .await;
        let b = state(&store, B).await.entry().unwrap();
        assert_eq!(
            (b.instances, b.version.as_str(), b.instance_ids),
            (1, "2.1.0", true)
        );
    }

    #[tokio::test]
    async fn the_cluster_list_folds_deltas_and_forgets() {
        let (_dir, store) = store();
        let fence = super::super::rollup::unfenced();
        let now = at("2026-02-02T00:00:00Z");
        take(
            &store,
            "w1",
            row(A, "2026-02-01T00:00:00Z", Some(A), "1.0.0"),
            now,
        )
        .await;
        take(
            &store,
            "w2",
            row(B, "2026-02-01T00:00:00Z", Some(B), "1.0.0"),
            now,
        )
        .await;
        let view = |store: Store| async move {
            let mut v = cluster_list::View::default();
            let listed = store.entries(cluster_list::PREFIX).await.unwrap();
            v.refresh(&store, &listed).await.unwrap();
            let mut ids: Vec<String> = v.order.iter().map(|c| c.cluster_id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(view(store.clone()).await, [B, A]);
        assert_eq!(
            cluster_list::compact(&store, true, &fence).await.unwrap(),
            2
        );
        take(
            &store,
            "w3",
            row(A, "2026-02-01T04:00:00Z", Some(A), "1.1.0"),
            now,
        )
        .await;
        assert_eq!(view(store.clone()).await, [B, A]);
        forget(&store, A, "forget-1", &fence).await.unwrap();
        cluster_list::compact(&store, true, &fence).await.unwrap();
        assert_eq!(view(store.clone()).await, [B]);
        let base = store
            .get_limited(cluster_list::BASE, 1 << 20)
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&base.bytes).contains(A));
        assert_eq!(latest(&store, "2026-02-01").await.clusters, 1);
    }
}
