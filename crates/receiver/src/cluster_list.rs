//! The list of clusters `/api/v1/clusters` serves, kept so that a rollup window writes only
//! what it changed:
//!
//! ```text
//! summaries/clusters/delta-<window>.json   the clusters one window (or forget) changed
//! summaries/clusters/base.json             the deltas folded so far, and which they were
//! ```
//!
//! Each entry carries its cluster's revision (see [`next_rev`]), so deltas fold in any order:
//! the highest revision of a cluster wins, and a forgotten cluster's entry is a tombstone.
//! Once [`COMPACT_AT`] deltas are waiting, the rollup leader folds them into the base and
//! removes them: the only step whose cost is the whole list (32 MB at 100,000 clusters), a few
//! times a day at one window a minute, against 4.5 GB of reports a day at that size. A reader
//! skips the deltas the base names as folded, so a tombstone dropped from the base cannot let
//! an older entry back.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::rollup::{fenced_write, read_json, Fence, RollupError};
use super::summary::Cluster;
use crate::store::{Store, StoreError};

/// Where the list lives.
pub const PREFIX: &str = "summaries/clusters/";
/// The folded list.
pub const BASE: &str = "summaries/clusters/base.json";
/// Where the deltas' keys start.
const DELTAS: &str = "summaries/clusters/delta-";
/// Deltas that make the leader fold them.
pub const COMPACT_AT: usize = 256;
/// Largest base read (a million clusters fit).
const MAX_BASE_BYTES: usize = 1 << 30;

/// `summaries/clusters/delta-<name>.json`
pub fn delta_key(name: &str) -> String {
    format!("{DELTAS}{name}.json")
}

/// A cluster's revision after `old`, at `now_ms`: higher than any before it, and than the
/// revision of an earlier forget of it, as long as clocks do not go back.
pub fn next_rev(old: u64, now_ms: i64) -> u64 {
    (old + 1).max(u64::try_from(now_ms).unwrap_or(0))
}

/// One cluster at one revision; `cluster: None` once it is forgotten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The cluster ID.
    pub id: String,
    /// Its revision: the highest wins.
    pub rev: u64,
    /// Its state, or `None` for a tombstone.
    pub cluster: Option<Cluster>,
}

/// What one window changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The changed clusters.
    pub entries: Vec<Entry>,
}

/// The folded list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Base {
    /// The deltas folded in (by key); a reader skips them.
    pub folded: Vec<String>,
    /// The clusters, by ID (no tombstones).
    pub clusters: BTreeMap<String, Entry>,
}

/// Folds an entry in: the higher revision wins.
fn fold(into: &mut HashMap<String, Entry>, e: Entry) {
    match into.get(&e.id) {
        Some(have) if have.rev >= e.rev => {}
        _ => {
            into.insert(e.id.clone(), e);
        }
    }
}

/// Writes one window's delta (the same bytes again on a redo).
///
/// # Errors
///
/// What the store said, or [`RollupError`] if the fence finds this process no longer leads.
pub async fn write_delta(
    store: &Store,
    name: &str,
    entries: Vec<Entry>,
    fence: &Fence<'_>,
) -> Result<(), RollupError> {
    if entries.is_empty() {
        return Ok(());
    }
    let key = delta_key(name);
    let bytes = serde_json::to_vec(&Delta { entries }).map_err(|e| RollupError::Corrupted {
        key: key.clone(),
        why: e.to_string(),
    })?;
    fenced_write(fence)?;
    store.put(&key, bytes).await?;
    Ok(())
}

async fn deltas(store: &Store) -> Result<Vec<String>, RollupError> {
    Ok(store
        .list(PREFIX)
        .await?
        .into_iter()
        .filter(|k| k.starts_with(DELTAS))
        .collect())
}

async fn read_delta(store: &Store, key: String) -> Result<Option<Delta>, StoreError> {
    match store.get_limited(&key, MAX_BASE_BYTES).await {
        Ok(obj) => match serde_json::from_slice(&obj.bytes) {
            Ok(d) => Ok(Some(d)),
            Err(e) => {
                tracing::warn!(%key, error = %e, "cluster list: skipping a delta that does not parse");
                Ok(None)
            }
        },
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads these deltas, 16 at a time, in order (`None` for one gone or unreadable).
async fn read_deltas(store: &Store, keys: &[String]) -> Result<Vec<Option<Delta>>, StoreError> {
    futures::stream::iter(keys.iter().cloned().map(|k| read_delta(store, k)))
        .buffered(16)
        .try_collect()
        .await
}

/// Folds the waiting deltas into the base once there are [`COMPACT_AT`] of them (or any, with
/// `force`); how many it folded.
///
/// # Errors
///
/// What the store said, or [`RollupError`] if the fence finds this process no longer leads.
pub async fn compact(store: &Store, force: bool, fence: &Fence<'_>) -> Result<usize, RollupError> {
    let keys = deltas(store).await?;
    if keys.is_empty() || (!force && keys.len() < COMPACT_AT) {
        return Ok(0);
    }
    let (base, _) = read_json::<Base>(store, BASE).await?;
    let folded_before: HashSet<&String> = base.folded.iter().collect();
    let fresh: Vec<String> = keys
        .iter()
        .filter(|k| !folded_before.contains(k))
        .cloned()
        .collect();
    let read = read_deltas(store, &fresh).await?;
    let mut all: HashMap<String, Entry> = base
        .clusters
        .into_values()
        .map(|e| (e.id.clone(), e))
        .collect();
    for delta in read.into_iter().flatten() {
        for e in delta.entries {
            fold(&mut all, e);
        }
    }
    let next = Base {
        folded: keys.clone(),
        clusters: all
            .into_iter()
            .filter(|(_, e)| e.cluster.is_some())
            .collect(),
    };
    let bytes = serde_json::to_vec(&next).map_err(|e| RollupError::Corrupted {
        key: BASE.to_string(),
        why: e.to_string(),
    })?;
    fenced_write(fence)?;
    store.put(BASE, bytes).await?;
    // Removed only once the base that names them is written; a crash between leaves deltas
    // the base skips, removed by the next compaction.
    for key in &keys {
        fenced_write(fence)?;
        match store.delete(key).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(keys.len())
}

/// The list as a reader keeps it: base and deltas folded, brought up to date by
/// [`View::refresh`] at the cost of the deltas it has not read yet.
#[derive(Debug, Default)]
pub struct View {
    base_modified: Option<DateTime<Utc>>,
    skip: HashSet<String>,
    read: HashSet<String>,
    entries: HashMap<String, Entry>,
    /// Clusters, most recently seen first.
    pub order: std::sync::Arc<Vec<Cluster>>,
}

impl View {
    /// Reads what changed under [`PREFIX`] since the last call; `listed` is its listing (key
    /// and modification time).
    ///
    /// # Errors
    ///
    /// What the store said; the view is left as it was.
    pub async fn refresh(
        &mut self,
        store: &Store,
        listed: &[crate::store::Entry],
    ) -> Result<(), StoreError> {
        let mut changed = false;
        let base = listed.iter().find(|e| e.key == BASE).map(|e| e.modified);
        if base != self.base_modified {
            let b: Base = match store.get_limited(BASE, MAX_BASE_BYTES).await {
                Ok(obj) => serde_json::from_slice(&obj.bytes).unwrap_or_else(|e| {
                    tracing::warn!(key = BASE, error = %e, "cluster list: the base does not parse; reading deltas only");
                    Base::default()
                }),
                Err(StoreError::NotFound { .. }) => Base::default(),
                Err(e) => return Err(e),
            };
            self.skip = b.folded.into_iter().collect();
            self.read.clear();
            self.entries = b
                .clusters
                .into_values()
                .map(|e| (e.id.clone(), e))
                .collect();
            self.base_modified = base;
            changed = true;
        }
        let new: Vec<String> = listed
            .iter()
            .map(|e| &e.key)
            .filter(|k| k.starts_with(DELTAS))
            .filter(|k| !self.skip.contains(*k) && !self.read.contains(*k))
            .cloned()
            .collect();
        let read = read_deltas(store, &new).await?;
        for (key, delta) in new.into_iter().zip(read) {
            for e in delta.into_iter().flat_map(|d| d.entries) {
                fold(&mut self.entries, e);
            }
            self.read.insert(key);
            changed = true;
        }
        if changed {
            let mut order: Vec<Cluster> = self
                .entries
                .values()
                .filter_map(|e| e.cluster.clone())
                .collect();
            order.sort_by(|a, b| {
                b.last_seen
                    .cmp(&a.last_seen)
                    .then(a.cluster_id.cmp(&b.cluster_id))
            });
            self.order = std::sync::Arc::new(order);
        }
        Ok(())
    }
}
