//! What the receiver removes: raw reports past `--retention`, and everything of one cluster on
//! request (`reporter forget`), as privacy law asks of operators.
//!
//! Retention removes `received/kept/day=<D>/` for slot days `D` older than the retention; the
//! Parquet rollups and summaries stay. Its progress, the first day not yet expired, is kept in
//! `receiver/retention.json`.
//!
//! Forgetting a cluster first rolls up the whole inbox, so that every stored report is in
//! exactly one place, then removes its raw reports (inbox and kept), its rows from every
//! Parquet file of the days it was seen (files rewritten, or removed once empty), its entries
//! in the day summaries (counts taken back exactly) and the all-clusters summary, and its
//! pinned key. Reports of the cluster that arrive while it runs are not forgotten.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout;
use super::rollup::{self, fenced_write, read_json, update_json, Fence, RollupError};
use super::summary::{day_of, Clusters, Day, DayClusters};
use crate::store::Store;

/// Retention's progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Retention {
    /// Raw reports of slot days before this one are removed.
    expired_before: String,
}

const RETENTION_STATE: &str = "receiver/retention.json";
/// The largest Parquet file read back.
const MAX_PARQUET_BYTES: usize = 1 << 30;

/// The slot days that have been rolled up, oldest first.
async fn days(store: &Store) -> Result<Vec<String>, RollupError> {
    let mut days: Vec<String> = store
        .list(layout::DAY_IDS)
        .await?
        .iter()
        .filter_map(|k| layout::day_of_ids_key(k).map(str::to_string))
        .collect();
    days.sort();
    Ok(days)
}

/// Deletes every object under `prefix` (only those `keep` refuses); how many.
async fn delete_all(
    store: &Store,
    prefix: &str,
    fence: &Fence<'_>,
    mut chosen: impl FnMut(&str) -> bool,
) -> Result<usize, RollupError> {
    let mut n = 0;
    for key in store.list(prefix).await? {
        if chosen(&key) {
            fenced_write(fence)?;
            store.delete(&key).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes raw reports of slot days older than `retention`; how many.
pub async fn expire(
    store: &Store,
    now: DateTime<Utc>,
    retention: Duration,
    fence: &Fence<'_>,
) -> Result<usize, RollupError> {
    let cutoff = day_of(now - chrono::Duration::from_std(retention).unwrap_or_default());
    let (state, _) = read_json::<Retention>(store, RETENTION_STATE).await?;
    let mut removed = 0;
    for day in days(store).await? {
        if day >= cutoff {
            break;
        }
        if day < state.expired_before {
            continue;
        }
        removed += delete_all(store, &layout::kept_day_prefix(&day), fence, |_| true).await?;
    }
    update_json::<Retention>(store, RETENTION_STATE, fence, |s| {
        if s.expired_before >= cutoff {
            return false;
        }
        s.expired_before = cutoff.clone();
        true
    })
    .await?;
    Ok(removed)
}

/// What forgetting a cluster removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Forgotten {
    /// Raw reports removed.
    pub raw: usize,
    /// Parquet rows removed.
    pub rows: usize,
    /// Parquet files rewritten or removed.
    pub files: usize,
    /// Days whose summaries changed.
    pub days: usize,
}

/// Removes everything the receiver holds of `cluster`.
pub async fn forget(
    store: &Store,
    cluster: &str,
    fence: &Fence<'_>,
) -> Result<Forgotten, RollupError> {
    // Everything stored so far into Parquet first, so nothing is half in the inbox.
    loop {
        let out = rollup::run_once(store, Utc::now(), Duration::ZERO, fence).await?;
        if out.window.is_empty() {
            break;
        }
    }
    let mut gone = Forgotten {
        raw: delete_all(store, layout::INBOX, fence, |k| {
            layout::cluster_of(k) == Some(cluster)
        })
        .await?,
        ..Forgotten::default()
    };
    for day in days(store).await? {
        let (ids, _) = read_json::<DayClusters>(store, &layout::day_ids_key(&day)).await?;
        let raw = delete_all(
            store,
            &layout::kept_cluster_prefix(&day, cluster),
            fence,
            |_| true,
        )
        .await?;
        if !ids.clusters.contains_key(cluster) && raw == 0 {
            continue;
        }
        gone.raw += raw;
        let mut removed = Removed::default();
        for key in store.list(&layout::rollup_day_prefix(&day)).await? {
            if !key.ends_with(".parquet") {
                continue;
            }
            let bytes = store.get_limited(&key, MAX_PARQUET_BYTES).await?.bytes;
            let Some(kept) = without(bytes, cluster, &mut removed)? else {
                continue;
            };
            fenced_write(fence)?;
            match kept {
                Some(file) => store.put(&key, file).await.map(|_| ())?,
                None => store.delete(&key).await?,
            }
            gone.files += 1;
        }
        gone.rows += removed.rows as usize;
        let ids = update_json::<DayClusters>(store, &layout::day_ids_key(&day), fence, |d| {
            d.clusters.remove(cluster).is_some()
        })
        .await?;
        update_json::<Day>(store, &layout::day_key(&day), fence, |d| {
            removed.take_from(d, &ids)
        })
        .await?;
        gone.days += 1;
    }
    update_json::<Clusters>(store, layout::CLUSTERS, fence, |c| {
        let before = c.ahead.len();
        c.ahead.retain(|a| a.cluster != cluster);
        c.clusters.remove(cluster).is_some() || c.ahead.len() != before
    })
    .await?;
    fenced_write(fence)?;
    store.delete(&layout::pin_key(cluster)).await?;
    Ok(gone)
}

/// The rows taken out of a day, by what its summary counts.
#[derive(Debug, Default)]
struct Removed {
    rows: u64,
    os: BTreeMap<String, u64>,
    arch: BTreeMap<String, u64>,
    targets: BTreeMap<String, u64>,
}

impl Removed {
    /// Takes the removed rows out of a day's summary; whether anything changed.
    fn take_from(&self, d: &mut Day, ids: &DayClusters) -> bool {
        let take = |m: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
            for (k, n) in from {
                let k = if k.is_empty() { "unknown" } else { k.as_str() };
                if let Some(v) = m.get_mut(k) {
                    *v = v.saturating_sub(*n);
                    if *v == 0 {
                        m.remove(k);
                    }
                }
            }
        };
        d.reports = d.reports.saturating_sub(self.rows);
        take(&mut d.os, &self.os);
        take(&mut d.arch, &self.arch);
        take(&mut d.targets, &self.targets);
        d.clusters = ids.clusters.len() as u64;
        d.versions.clear();
        for v in ids.clusters.values() {
            *d.versions.entry(v.clone()).or_default() += 1;
        }
        true
    }
}

/// A Parquet file without the rows of `cluster`: `None` if it had none, `Some(None)` if
/// nothing is left.
fn without(
    bytes: bytes::Bytes,
    cluster: &str,
    removed: &mut Removed,
) -> Result<Option<Option<Vec<u8>>>, RollupError> {
    let failed = |e: &dyn std::fmt::Display| RollupError::Parquet(e.to_string());
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| failed(&e))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| failed(&e))?;
    let mut kept = Vec::new();
    let mut any = false;
    for batch in reader {
        let batch = batch.map_err(|e| failed(&e))?;
        let column = |name: &str| -> Option<&StringArray> {
            batch
                .column_by_name(name)?
                .as_any()
                .downcast_ref::<StringArray>()
        };
        let ids = column("clusterID").ok_or_else(|| failed(&"no clusterID column"))?;
        let keep: BooleanArray = (0..ids.len())
            .map(|i| Some(ids.is_null(i) || ids.value(i) != cluster))
            .collect();
        for i in (0..ids.len()).filter(|i| !keep.value(*i)) {
            any = true;
            removed.rows += 1;
            for (name, map) in [
                ("os", &mut removed.os),
                ("arch", &mut removed.arch),
                ("target", &mut removed.targets),
            ] {
                let v = column(name)
                    .map(|c| c.value(i).to_string())
                    .unwrap_or_default();
                *map.entry(v).or_default() += 1;
            }
        }
        let left =
            arrow_select::filter::filter_record_batch(&batch, &keep).map_err(|e| failed(&e))?;
        if left.num_rows() > 0 {
            kept.push(left);
        }
    }
    if !any {
        return Ok(None);
    }
    if kept.is_empty() {
        return Ok(Some(None));
    }
    let batches: Vec<RecordBatch> = kept;
    Ok(Some(Some(rollup::write_parquet(
        &batches,
        Arc::clone(&schema),
    )?)))
}

/// Who carried out a forget request.
#[derive(Debug)]
pub enum By {
    /// This process, holding the rollup lease: what it removed.
    Us(Forgotten),
    /// The running rollup leader, at its next run.
    Leader,
}

/// Why a forget request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// Removing failed; the request stays and is carried out again.
    #[error(transparent)]
    Rollup(#[from] RollupError),
    /// Nobody carried it out in time.
    #[error("no receiver carried out the request within {0}; it stays in the bucket (receiver/forget/), and the rollup leader carries it out at its next run")]
    Waited(String),
}

/// Asks for `cluster` to be forgotten, and waits up to `wait` for it: carried out by the
/// running rollup leader, or by this process if it can take the rollup lease (no receiver
/// running), so that only ever one process writes rollups.
pub async fn carry_out(store: &Store, cluster: &str, wait: Duration) -> Result<By, ForgetError> {
    let request = layout::forget_request_key(cluster);
    let body = serde_json::json!({"requestedAt": crate::timefmt::rfc3339_nano(&Utc::now())});
    store
        .put(&request, body.to_string())
        .await
        .map_err(RollupError::from)?;
    let elector = super::elector(store, super::defaults::ROLLUP_EVERY);
    let release = tokio_util::sync::CancellationToken::new();
    let election = {
        let (elector, release) = (elector.clone(), release.clone());
        tokio::spawn(async move { elector.run(release).await })
    };
    let deadline = tokio::time::Instant::now() + wait;
    let outcome = loop {
        if !store.exists(&request).await.map_err(RollupError::from)? {
            break Ok(By::Leader);
        }
        if elector.term().is_some() {
            let fence = || elector.term().is_some();
            break carry_out_requests(store, &fence)
                .await
                .map(|mut done| {
                    By::Us(
                        done.iter_mut()
                            .find(|(c, _)| c == cluster)
                            .map(|(_, g)| std::mem::take(g))
                            .unwrap_or_default(),
                    )
                })
                .map_err(ForgetError::from);
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(ForgetError::Waited(crate::timefmt::format_duration(wait)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    release.cancel();
    let _ = election.await;
    outcome
}

/// Carries out every forget request in the bucket (the rollup leader calls this before each
/// rollup); what each removed.
pub async fn carry_out_requests(
    store: &Store,
    fence: &Fence<'_>,
) -> Result<Vec<(String, Forgotten)>, RollupError> {
    let mut done = Vec::new();
    for key in store.list(layout::FORGET_REQUESTS).await? {
        let Some(cluster) = layout::cluster_of_forget_request(&key) else {
            continue;
        };
        let gone = forget(store, cluster, fence).await?;
        tracing::info!(
            cluster,
            raw = gone.raw,
            rows = gone.rows,
            files = gone.files,
            days = gone.days,
            "forgot a cluster on request"
        );
        fenced_write(fence)?;
        store.delete(&key).await?;
        done.push((cluster.to_string(), gone));
    }
    Ok(done)
}
