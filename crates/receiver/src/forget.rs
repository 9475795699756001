//! What the receiver removes: raw reports past `--retention`, and everything of one cluster on
//! request (`reporter forget`), as privacy law asks of operators.
//!
//! Retention removes `received/kept/day=<D>/` for slot days `D` older than the retention; the
//! Parquet rollups and summaries stay. Its progress, the first day not yet expired, is kept in
//! `receiver/retention.json`.
//!
//! Forgetting a cluster first rolls up the whole inbox, so that every stored report is in
//! exactly one place, then removes its raw reports (inbox and kept), its rows from every
//! Parquet file of both datasets (`rollups/`, `metrics/`) of the days it was seen (files rewritten, or removed once empty), its entries
//! in the day summaries (counts taken back exactly), the insights and the all-clusters
//! summary, and its pinned key. Reports of the cluster that arrive while it runs are not forgotten.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout;
use super::rollup::{self, fenced_write, read_json, update_json, Fence, RollupError};
use super::summary::{day_of, remember, Day};
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
        .list(layout::SUMMARIES)
        .await?
        .iter()
        .filter_map(|k| layout::day_of_day_key(k).map(str::to_string))
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
///
/// # Errors
///
/// What the store said; what was removed before stays removed.
pub async fn expire(
    store: &Store,
    now: DateTime<Utc>,
    retention: Duration,
    fence: &Fence<'_>,
) -> Result<usize, RollupError> {
    let cutoff = day_of(now - chrono::Duration::from_std(retention).unwrap_or_default());
    // Never while a window is recorded: it may name reports whose only copy is in kept/.
    if rollup::pending(store).await? {
        return Ok(0);
    }
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

/// Removes everything the receiver holds of `cluster`. Redone after a crash (with the same
/// `nonce`), it takes each day's counts back once.
///
/// # Errors
///
/// What the store said, or [`RollupError`] if the fence finds this process no longer leads;
/// redone, it finishes the job.
pub async fn forget(
    store: &Store,
    cluster: &str,
    nonce: &str,
    fence: &Fence<'_>,
) -> Result<Forgotten, RollupError> {
    // Everything stored before now into Parquet first, so that nothing of it is half in the
    // inbox; reports that arrive meanwhile may or may not be forgotten.
    let before: HashSet<String> = store.list(layout::INBOX).await?.into_iter().collect();
    loop {
        let inbox: HashSet<String> = store.list(layout::INBOX).await?.into_iter().collect();
        if before.is_disjoint(&inbox) {
            break;
        }
        rollup::run_once(store, Utc::now(), Duration::ZERO, fence).await?;
    }
    let mut gone = Forgotten {
        raw: delete_all(store, layout::INBOX, fence, |k| {
            before.contains(k) && layout::cluster_of(k) == Some(cluster)
        })
        .await?,
        ..Forgotten::default()
    };
    let memo = format!("forget-{nonce}");
    for day in days(store).await? {
        let raw = delete_all(
            store,
            &layout::kept_cluster_prefix(&day, cluster),
            fence,
            |_| true,
        )
        .await?;
        gone.raw += raw;
        // Read first; take the counts back (once per request); then rewrite the files. A redo
        // reads every day again: files already rewritten have no rows of the cluster, and the
        // day's summary remembers the request.
        let mut removed = Removed::default();
        let mut rewrites = Vec::new();
        for dataset in layout::DATASETS {
            // Only the reports dataset's rows are what the day's summary counts.
            let mut uncounted = Removed::default();
            let counts = if dataset == "rollups/" {
                &mut removed
            } else {
                &mut uncounted
            };
            for key in store
                .list(&layout::dataset_day_prefix(dataset, &day))
                .await?
            {
                if !key.ends_with(".parquet") {
                    continue;
                }
                let bytes = store.get_limited(&key, MAX_PARQUET_BYTES).await?.bytes;
                if let Some(kept) = without(bytes, cluster, counts)? {
                    rewrites.push((key, kept));
                }
            }
        }
        if rewrites.is_empty() && raw == 0 {
            continue;
        }
        update_json::<Day>(store, &layout::day_key(&day), fence, |d| {
            remember(&mut d.windows, &memo) && removed.take_from(d)
        })
        .await?;
        for (key, kept) in rewrites {
            fenced_write(fence)?;
            match kept {
                Some(file) => store.put(&key, file).await.map(|_| ())?,
                None => store.delete(&key).await?,
            }
            gone.files += 1;
        }
        gone.rows += removed.rows as usize;
        gone.days += 1;
    }
    super::figures::forget(store, cluster, &memo, fence).await?;
    // Folded now, so that neither its earlier entries nor its tombstone keep its ID.
    super::cluster_list::compact(store, true, fence).await?;
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
    fn take_from(&self, d: &mut Day) -> bool {
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
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(crate::rollup::parquet_error)?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(crate::rollup::parquet_error)?;
    let mut kept = Vec::new();
    let mut any = false;
    for batch in reader {
        let batch = batch.map_err(crate::rollup::parquet_error)?;
        let column = |name: &str| -> Option<&StringArray> {
            batch
                .column_by_name(name)?
                .as_any()
                .downcast_ref::<StringArray>()
        };
        let ids = column("clusterID")
            .ok_or_else(|| RollupError::Parquet("no clusterID column".into()))?;
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
        let left = arrow_select::filter::filter_record_batch(&batch, &keep)
            .map_err(crate::rollup::parquet_error)?;
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

/// Why a forget request was not carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForgetError {
    /// Removing failed; the request stays and is carried out again.
    #[error(transparent)]
    Rollup(#[from] RollupError),
    /// Nobody carried it out in time.
    #[error("no receiver carried out the request within {0}; it stays in the bucket (receiver/forget/), and the rollup leader carries it out at its next run")]
    Waited(String),
}

impl From<super::LeaderError> for ForgetError {
    fn from(e: super::LeaderError) -> Self {
        match e {
            super::LeaderError::Rollup(e) => ForgetError::Rollup(e),
            super::LeaderError::Waited(w) => ForgetError::Waited(w),
        }
    }
}

/// A forget request: its nonce lets a redone forget take a day's counts back once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    requested_at: String,
    nonce: String,
}

/// Asks for `cluster` to be forgotten, and waits up to `wait` for it: carried out by the
/// running rollup leader, or by this process if it can take the rollup lease (no receiver
/// running), so that only ever one process writes rollups.
///
/// # Errors
///
/// [`ForgetError`]: what the store said, or that no receiver carried the request out within
/// `wait` (it stays in the bucket, for the next rollup leader).
pub async fn carry_out(
    store: &Store,
    cluster: &str,
    wait: Duration,
) -> Result<super::By<Forgotten>, ForgetError> {
    let request = layout::forget_request_key(cluster);
    let body = Request {
        requested_at: crate::timefmt::rfc3339_nano(&Utc::now()),
        nonce: uuid::Uuid::new_v4().simple().to_string(),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    // Create, not overwrite: a request already there keeps its nonce.
    match store.create(&request, bytes).await {
        Ok(_) | Err(crate::store::StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(RollupError::from(e).into()),
    }
    let outcome = super::as_rollup_leader(
        store,
        wait,
        async || Ok(!store.exists(&request).await?),
        async |fence: &Fence<'_>| {
            let mut done = carry_out_requests(store, fence).await?;
            Ok(done
                .iter_mut()
                .find(|(c, _)| c == cluster)
                .map(|(_, g)| std::mem::take(g))
                .unwrap_or_default())
        },
    )
    .await?;
    Ok(outcome)
}

/// Carries out every forget request in the bucket (the rollup leader calls this before each
/// rollup); what each removed.
///
/// # Errors
///
/// What the store said, or [`RollupError`] if the fence finds this process no longer leads;
/// requests not carried out stay for the next run.
pub async fn carry_out_requests(
    store: &Store,
    fence: &Fence<'_>,
) -> Result<Vec<(String, Forgotten)>, RollupError> {
    let mut done = Vec::new();
    for key in store.list(layout::FORGET_REQUESTS).await? {
        let Some(cluster) = layout::cluster_of_forget_request(&key) else {
            continue;
        };
        let (request, _) = read_json::<Request>(store, &key).await?;
        let nonce = if request.nonce.is_empty() {
            key.clone()
        } else {
            request.nonce
        };
        let gone = forget(store, cluster, &nonce, fence).await?;
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
