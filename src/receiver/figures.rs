//! The insights in the bucket: each rollup window updates them by what it brings, never by
//! re-reading all clusters.
//!
//! ```text
//! receiver/insights/<clusterID>.json        a cluster's latest slot of each of its last 8 days, with
//!                                           each replica's metric leaves in it
//! summaries/insights/day=<D>.json           each cluster active on day D once, by its latest slot that day
//! summaries/insights/latest/day=<D>.json    each cluster once, counted on the day of its latest slot
//! ```
//!
//! A window reads the state of each cluster it has reports of, works out how that cluster's
//! figures change (see [`super::insights`]), takes the old figures back from the aggregates and
//! adds the new ones, and only then writes the cluster's new state. The aggregates remember
//! the windows they took, so a redone window changes nothing twice. Summing the `latest`
//! aggregates of the last N days counts every cluster active in them once, by its latest slot:
//! what `/api/v1/metrics?days=N` shows. The `day=` aggregates are the trend, day by day.
//!
//! Reports without an instance ID (Tempo's shape) do not count for a cluster whose reports of
//! that slot carry one.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::insights::{merge, Aggregate, Figures};
use super::leaves::Leaf;
use super::rollup::{fenced_write, read_json, update_json, Fence, RollupError};
use super::summary::{day_of, remember, Row};
use crate::store::{Store, StoreError};

/// Per-cluster states.
pub const STATES: &str = "receiver/insights/";
/// The aggregates.
pub const AGGREGATES: &str = "summaries/insights/";
/// Days of slots a cluster's state keeps: intake accepts slots up to 7 days old.
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

/// A cluster's latest slot of one day, and each replica's leaves in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DaySlot {
    slot: DateTime<Utc>,
    instances: BTreeMap<String, Vec<Kept>>,
}

impl DaySlot {
    /// The cluster's figures in this slot: its replicas merged; reports without an instance
    /// ID only when none has one.
    fn figures(&self) -> Figures {
        let ours = self.instances.keys().any(|k| !k.starts_with("target-"));
        let leaves: Vec<Vec<Leaf>> = self
            .instances
            .iter()
            .filter(|(k, _)| !ours || !k.starts_with("target-"))
            .map(|(_, kept)| {
                kept.iter()
                    .map(|(key, text, number)| Leaf {
                        key: key.clone(),
                        text: text.clone(),
                        number: *number,
                    })
                    .collect()
            })
            .collect();
        merge(leaves.iter().map(Vec::as_slice))
    }
}

/// A cluster's latest slot of each of its last days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ClusterState {
    days: BTreeMap<String, DaySlot>,
}

impl ClusterState {
    fn latest(&self) -> Option<(&String, &DaySlot)> {
        self.days.iter().next_back()
    }

    /// Takes a report in: a later slot of its day replaces that day's, the same slot adds a
    /// replica, an earlier one changes nothing.
    fn take(&mut self, row: &Row) {
        let slot = row.report.slot();
        let day = self.days.entry(day_of(slot)).or_insert_with(|| DaySlot {
            slot,
            instances: BTreeMap::new(),
        });
        if slot > day.slot {
            *day = DaySlot {
                slot,
                instances: BTreeMap::new(),
            };
        }
        if slot == day.slot {
            let leaves = super::leaves::of_text(&row.report.metrics)
                .into_iter()
                .map(|l| (l.key, l.text, l.number))
                .collect();
            day.instances.insert(row.report.instance_key(), leaves);
        }
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

/// One change to an aggregate: a cluster's figures in or out.
type Change = (String, Figures, bool);

/// The changes a cluster's new state makes, old figures out before new ones in.
fn changes(old: &ClusterState, new: &ClusterState) -> Vec<Change> {
    let mut out = Vec::new();
    for (day, slot) in &new.days {
        let before = old.days.get(day);
        if before == Some(slot) {
            continue;
        }
        if let Some(b) = before {
            out.push((daily_key(day), b.figures(), false));
        }
        out.push((daily_key(day), slot.figures(), true));
    }
    if old.latest() != new.latest() {
        if let Some((day, slot)) = old.latest() {
            out.push((latest_key(day), slot.figures(), false));
        }
        if let Some((day, slot)) = new.latest() {
            out.push((latest_key(day), slot.figures(), true));
        }
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
    let mut by_key: BTreeMap<String, Vec<(Figures, bool)>> = BTreeMap::new();
    for (key, figures, up) in changes {
        by_key.entry(key).or_default().push((figures, up));
    }
    for (key, changes) in by_key {
        update_json::<StoredAggregate>(store, &key, fence, |a| {
            if !remember(&mut a.windows, memo) {
                return false;
            }
            for (figures, up) in &changes {
                a.aggregate.apply(figures, *up);
            }
            true
        })
        .await?;
    }
    Ok(())
}

/// Takes a window's rows into the insights (the rollup calls this once its Parquet files are
/// written).
pub async fn take_window(
    store: &Store,
    window: &str,
    rows: &[Row],
    now: DateTime<Utc>,
    fence: &Fence<'_>,
) -> Result<(), RollupError> {
    let mut by_cluster: HashMap<&str, Vec<&Row>> = HashMap::new();
    for row in rows {
        by_cluster
            .entry(&row.report.cluster_id)
            .or_default()
            .push(row);
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
    for ((cluster, rows), (old, _)) in by_cluster.iter().zip(olds) {
        let mut new = old.clone();
        for row in rows {
            new.take(row);
        }
        all_changes.extend(changes(&old, &new));
        new.days.retain(|day, _| *day >= oldest_kept);
        if new != old {
            writes.push((state_key(cluster), new));
        }
    }
    // The aggregates first: a window redone after the states were written finds nothing to
    // change, and the aggregates remember they took it.
    apply_changes(store, window, all_changes, fence).await?;
    let puts: Vec<_> = writes
        .iter()
        .map(|(key, state)| put_state(store, key, state, fence))
        .collect();
    futures::stream::iter(puts)
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
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

/// Takes a cluster out of every aggregate and removes its state (`reporter forget`); `memo`
/// makes a redone forget take it out once.
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
