//! Rollups: received reports compacted into Parquet for analysts, and the summaries updated.
//!
//! A report the receiver acknowledged is in the inbox, `received/inbox/`, and nowhere else
//! until a rollup takes it; nothing about its timestamps matters. A run lists the inbox, takes
//! up to [`MAX_WINDOW`] reports, and records them, by name, as its window in the state
//! (`receiver/rollup.json`, kept by compare-and-swap) before it writes anything. Then it makes
//! each one a row of exactly one Parquet file, `rollups/day=<slot day>/<window>.parquet`
//! (Hive-style, so DuckDB, ClickHouse, Athena or Spark read the bucket directly), copies it to
//! `received/kept/`, updates the summaries, removes it from the inbox, and only then clears the
//! window. A run that dies or loses its lease anywhere in between is redone, window and all, by
//! the next: the same names, the same rows, the same file names (written over), and summaries
//! that remember the windows they hold. So a receiver paused for minutes between writing a
//! report and linking it into place, a slow upload, or clocks that disagree can delay a report,
//! never skip it; and a run reads and writes what arrived since the last one, not the history.
//!
//! A repeat of a report already rolled up can reach the inbox again only in the moment between
//! its create-if-absent and the check of `kept/` that follows it; the run that lists it sees it
//! in `kept/` and removes it unrolled (a stray).
//!
//! Every write checks `fence` first: a receiver that stopped leading stops writing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::intake;
use super::layout;
use super::summary::{day_of, Day, Row};
use crate::store::{Store, StoreError};
use crate::timefmt;

/// How long after its arrival a report waits before a rollup takes it, by default: none. A
/// wait only batches bursts; nothing depends on it.
pub const DEFAULT_SETTLE: Duration = Duration::ZERO;
/// The most reports one window takes; a longer inbox is rolled up in windows back to back.
pub const MAX_WINDOW: usize = 10_000;
/// The largest summary read (the all-clusters summary grows with clusters, not reports).
const MAX_SUMMARY_BYTES: usize = 512 << 20;
/// Store calls a run makes at once.
const CONCURRENCY: usize = 32;

/// Why a run did not finish; the next run redoes its window.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RollupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A Parquet file could not be written or read; the source is parquet's or arrow's error.
    #[error("cannot write or read Parquet: {0}")]
    Parquet(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A state or summary object is not what this version writes.
    #[error("{key} is corrupted: {why}")]
    Corrupted {
        /// The object.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// This receiver no longer holds the rollup lease; the next leader redoes the window.
    #[error("no longer the rollup leader; the next leader redoes this window")]
    NotLeader,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The window's name.
    pub window: String,
    /// Reports rolled up.
    pub rows: usize,
    /// Parquet files written.
    pub files: usize,
    /// Objects skipped as unreadable or invalid (removed from the inbox).
    pub skipped: usize,
    /// Whether the inbox held more than one window: run again at once.
    pub more: bool,
}

/// The rollup's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// Windows started so far.
    #[serde(default)]
    windows: u64,
    /// A window recorded and not yet finished.
    #[serde(default)]
    pending: Option<Pending>,
}

/// One window: exactly which reports it rolls up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    /// Its name, in file names and in the summaries' memory.
    window: String,
    /// Inbox keys to roll up, each with its arrival (Unix ms, by the store's clock).
    rows: Vec<(String, i64)>,
    /// Inbox keys already in `kept/`: removed, not rolled up again.
    strays: Vec<String>,
    /// When the window was recorded (Unix ms, by the leader's clock): "now" for the summaries.
    at_ms: i64,
    /// Whether the inbox held more than this window.
    more: bool,
}

/// Reads a JSON object kept by CAS; its default when absent.
pub(crate) async fn read_json<T: DeserializeOwned + Default>(
    store: &Store,
    key: &str,
) -> Result<(T, Option<crate::store::Version>), RollupError> {
    match store.get_limited(key, MAX_SUMMARY_BYTES).await {
        Ok(obj) => {
            let value = serde_json::from_slice(&obj.bytes).map_err(|e| RollupError::Corrupted {
                key: key.to_string(),
                why: e.to_string(),
            })?;
            Ok((value, Some(obj.version)))
        }
        Err(StoreError::NotFound { .. }) => Ok((T::default(), None)),
        Err(e) => Err(e.into()),
    }
}

/// Read, change, write back by CAS; again on a lost race. `change` says whether it changed.
/// Nothing is written unless `fence` still holds.
pub(crate) async fn update_json<T: DeserializeOwned + Serialize + Default>(
    store: &Store,
    key: &str,
    fence: &Fence<'_>,
    mut change: impl FnMut(&mut T) -> bool,
) -> Result<T, RollupError> {
    loop {
        let (mut value, version) = read_json::<T>(store, key).await?;
        if !change(&mut value) {
            return Ok(value);
        }
        let bytes = serde_json::to_vec(&value).map_err(|e| RollupError::Corrupted {
            key: key.to_string(),
            why: e.to_string(),
        })?;
        fenced_write(fence)?;
        let written = match &version {
            Some(v) => store.update(key, bytes, v).await,
            None => store.create(key, bytes).await,
        };
        match written {
            Ok(_) => return Ok(value),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether this process may still write as the rollup leader.
pub type Fence<'a> = dyn Fn() -> bool + Send + Sync + 'a;

/// For one-shot runs that hold no lease.
pub fn unfenced() -> impl Fn() -> bool + Send + Sync {
    || true
}

pub(crate) fn fenced_write(fence: &Fence<'_>) -> Result<(), RollupError> {
    if fence() {
        Ok(())
    } else {
        Err(RollupError::NotLeader)
    }
}

/// One rollup run at `now`: redoes the recorded window if there is one, else takes the next.
///
/// # Errors
///
/// [`RollupError`]: what the store said, a Parquet file that could not be written, or the fence
/// finding this process no longer leads; the recorded window is redone by the next run.
pub async fn run_once(
    store: &Store,
    now: DateTime<Utc>,
    settle: Duration,
    fence: &Fence<'_>,
) -> Result<Outcome, RollupError> {
    loop {
        let (state, version) = read_json::<State>(store, layout::ROLLUP_STATE).await?;
        if let Some(pending) = state.pending {
            return apply(store, &pending, fence).await;
        }
        let Some(pending) = next_window(store, now, settle, state.windows).await? else {
            return Ok(Outcome::default());
        };
        // Recorded only over the state read before listing: if another process recorded and
        // finished a window meanwhile, the state changed, and this listing may name reports
        // it rolled up; list again.
        let next = State {
            windows: state.windows + 1,
            pending: Some(pending.clone()),
        };
        let bytes = serde_json::to_vec(&next).map_err(|e| RollupError::Corrupted {
            key: layout::ROLLUP_STATE.to_string(),
            why: e.to_string(),
        })?;
        fenced_write(fence)?;
        let written = match &version {
            Some(v) => store.update(layout::ROLLUP_STATE, bytes, v).await,
            None => store.create(layout::ROLLUP_STATE, bytes).await,
        };
        match written {
            Ok(_) => return apply(store, &pending, fence).await,
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Lists the inbox for the next window (number `seq`); `None` if there is nothing to take.
async fn next_window(
    store: &Store,
    now: DateTime<Utc>,
    settle: Duration,
    seq: u64,
) -> Result<Option<Pending>, RollupError> {
    let ready = now - chrono::Duration::from_std(settle).unwrap_or_default();
    let mut entries: Vec<_> = store
        .entries(layout::INBOX)
        .await?
        .into_iter()
        .filter(|e| e.modified <= ready)
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let more = entries.len() > MAX_WINDOW;
    entries.truncate(MAX_WINDOW);
    // A key already in kept/ is a repeat stored in the moment before its duplicate check.
    let checks: Vec<_> = entries
        .iter()
        .map(|e| store.exists_owned(layout::kept_key(&e.key)))
        .collect();
    let kept: Vec<bool> = futures::stream::iter(checks)
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let (mut rows, mut strays) = (Vec::new(), Vec::new());
    for (e, kept) in entries.into_iter().zip(kept) {
        if kept {
            strays.push(e.key);
        } else {
            rows.push((e.key, e.modified.timestamp_millis()));
        }
    }
    let at_ms = now.timestamp_millis();
    Ok(Some(Pending {
        window: format!("{at_ms:015}-{seq:08}"),
        rows,
        strays,
        at_ms,
        more,
    }))
}

/// Whether a window is recorded and not finished.
pub(crate) async fn pending(store: &Store) -> Result<bool, RollupError> {
    Ok(read_json::<State>(store, layout::ROLLUP_STATE)
        .await?
        .0
        .pending
        .is_some())
}

/// Rolls up one recorded window, then clears it.
async fn apply(
    store: &Store,
    pending: &Pending,
    fence: &Fence<'_>,
) -> Result<Outcome, RollupError> {
    let window = &pending.window;
    let mut out = Outcome {
        window: window.clone(),
        more: pending.more,
        ..Outcome::default()
    };
    let reads: Vec<_> = pending
        .rows
        .iter()
        .map(|(key, ms)| read_row(store, key, *ms, fence))
        .collect();
    let read: Vec<Option<Row>> = futures::stream::iter(reads)
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    out.skipped = read.iter().filter(|r| r.is_none()).count();
    let mut by_day: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for row in read.into_iter().flatten() {
        by_day
            .entry(day_of(row.report.slot()))
            .or_default()
            .push(row);
    }
    for (day, rows) in &by_day {
        let bytes = parquet(rows)?;
        let long = metrics_parquet(rows)?;
        fenced_write(fence)?;
        store.put(&layout::rollup_key(day, window), bytes).await?;
        fenced_write(fence)?;
        store.put(&layout::metrics_key(day, window), long).await?;
        out.files += 1;
        out.rows += rows.len();
    }
    let all: Vec<&Row> = by_day.values().flatten().collect();
    let at = DateTime::<Utc>::from_timestamp_millis(pending.at_ms).unwrap_or_default();
    super::figures::take_window(store, window, &all, at, fence).await?;
    // The days' report counts last: once they show a window, its clusters show too.
    for (day, rows) in &by_day {
        update_json::<Day>(store, &layout::day_key(day), fence, |d| {
            d.day = day.clone();
            d.add(window, rows)
        })
        .await?;
    }
    let deletes: Vec<_> = pending
        .rows
        .iter()
        .map(|(k, _)| k)
        .chain(&pending.strays)
        .map(|key| delete_fenced(store, key, fence))
        .collect();
    futures::stream::iter(deletes)
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    update_json::<State>(store, layout::ROLLUP_STATE, fence, |s| {
        if s.pending.as_ref().map(|p| &p.window) != Some(window) {
            return false;
        }
        s.pending = None;
        true
    })
    .await?;
    Ok(out)
}

async fn delete_fenced(store: &Store, key: &str, fence: &Fence<'_>) -> Result<(), RollupError> {
    fenced_write(fence)?;
    Ok(store.delete(key).await?)
}

/// Reads one report of a window, from the inbox or, on a redo, from `kept/`, and copies it
/// there; `None` for an object that is not a valid report (it is removed from the inbox with
/// the rest, and never copied).
async fn read_row(
    store: &Store,
    key: &str,
    arrived_ms: i64,
    fence: &Fence<'_>,
) -> Result<Option<Row>, RollupError> {
    let kept = layout::kept_key(key);
    let (bytes, in_inbox) = match store.get(key).await {
        Ok(obj) => (obj.bytes, true),
        Err(StoreError::NotFound { .. }) => match store.get(&kept).await {
            Ok(obj) => (obj.bytes, false),
            // Gone from both: forgotten since the window was recorded.
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        },
        Err(e @ (StoreError::TooLarge { .. } | StoreError::NotRegular { .. })) => {
            tracing::warn!(error = %e, "rollup: skipping an object that is not a report");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let received_at = DateTime::<Utc>::from_timestamp_millis(arrived_ms).unwrap_or_default();
    let (signature, body) = layout::split_stored(&bytes);
    // Checked at intake; its shape checked again, so that nothing in the bucket that is not a
    // report becomes a row (its times were judged at intake, by intake's clock).
    let report = match intake::parse_stored(body) {
        Ok(report) => report,
        Err(why) => {
            tracing::warn!(%key, reason = %why, "rollup: skipping an object that is not a report");
            return Ok(None);
        }
    };
    let signed = match signature {
        None => false,
        Some(sig) => match crate::signing::verify(sig, body) {
            Ok(_) => true,
            Err(why) => {
                tracing::warn!(%key, reason = %why, "rollup: skipping a report whose signature does not verify");
                return Ok(None);
            }
        },
    };
    if in_inbox {
        fenced_write(fence)?;
        match store.create(&kept, bytes.clone()).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(Row {
        report,
        received_at,
        signed,
    }))
}

/// The Parquet columns, stable: analysts' queries depend on them.
pub fn schema() -> Schema {
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Schema::new(vec![
        text("clusterID", false),
        Field::new("createdAt", ts.clone(), false),
        Field::new("interval", ts.clone(), false),
        Field::new("intervalPeriod", DataType::Float64, false),
        text("target", false),
        text("instanceID", true),
        text("version", false),
        text("revision", false),
        text("branch", false),
        text("buildDate", false),
        text("runtimeVersion", false),
        text("os", false),
        text("arch", false),
        text("edition", false),
        text("metrics", false),
        Field::new("receivedAt", ts, false),
        Field::new("signed", DataType::Boolean, false),
    ])
}

/// The long-form dataset's columns: one row per (report, metric leaf), stable.
pub fn metrics_schema() -> Schema {
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    Schema::new(vec![
        Field::new("clusterID", DataType::Utf8, false),
        Field::new("interval", ts, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("instanceID", DataType::Utf8, true),
        Field::new("key", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("number", DataType::Float64, true),
    ])
}

fn metrics_parquet(rows: &[Row]) -> Result<Vec<u8>, RollupError> {
    let (mut ids, mut slots, mut targets, mut instances) = (vec![], vec![], vec![], vec![]);
    let (mut keys, mut texts, mut numbers) = (vec![], vec![], vec![]);
    for r in rows {
        let slot = timefmt::unix_nanos(&r.report.slot()).unwrap_or_default();
        for leaf in super::leaves::of_text(&r.report.metrics) {
            ids.push(r.report.cluster_id.as_str());
            slots.push(slot);
            targets.push(r.report.target.as_str());
            instances.push(r.report.instance_id.as_deref());
            keys.push(leaf.key);
            texts.push(leaf.text);
            numbers.push(leaf.number);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(TimestampNanosecondArray::from(slots).with_timezone("UTC")),
        Arc::new(StringArray::from(targets)),
        Arc::new(StringArray::from(instances)),
        Arc::new(StringArray::from(keys)),
        Arc::new(StringArray::from(texts)),
        Arc::new(Float64Array::from(numbers)),
    ];
    let batch = RecordBatch::try_new(Arc::new(metrics_schema()), columns).map_err(parquet_error)?;
    write_parquet(std::slice::from_ref(&batch), batch.schema())
}

/// A parquet or arrow error, its source kept.
pub(crate) fn parquet_error(e: impl std::error::Error + Send + Sync + 'static) -> RollupError {
    RollupError::Parquet(Box::new(e))
}

/// Writes record batches as one Parquet file, as every rollup file is written.
pub(crate) fn write_parquet(
    batches: &[RecordBatch],
    schema: Arc<Schema>,
) -> Result<Vec<u8>, RollupError> {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut buf = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, Some(props))
        .map_err(parquet_error)?;
    for batch in batches {
        writer.write(batch).map_err(parquet_error)?;
    }
    writer.close().map_err(parquet_error)?;
    Ok(buf)
}

fn parquet(rows: &[Row]) -> Result<Vec<u8>, RollupError> {
    let text = |f: &dyn Fn(&Row) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let time = |f: &dyn Fn(&Row) -> DateTime<Utc>| -> ArrayRef {
        let nanos = rows
            .iter()
            .map(|r| timefmt::unix_nanos(&f(r)).unwrap_or_default());
        Arc::new(TimestampNanosecondArray::from_iter_values(nanos).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|r| &r.report.cluster_id),
        time(&|r| r.report.created_at.to_utc()),
        time(&|r| r.report.slot()),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.report.interval_period),
        )),
        text(&|r| &r.report.target),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.report.instance_id.as_deref()),
        )),
        text(&|r| &r.report.version),
        text(&|r| &r.report.revision),
        text(&|r| &r.report.branch),
        text(&|r| &r.report.build_date),
        text(&|r| &r.report.runtime_version),
        text(&|r| &r.report.os),
        text(&|r| &r.report.arch),
        text(&|r| &r.report.edition),
        text(&|r| &r.report.metrics),
        time(&|r| r.received_at),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.signed)))),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema()), columns).map_err(parquet_error)?;
    write_parquet(std::slice::from_ref(&batch), batch.schema())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(cluster: u128, instance: u128, slot: DateTime<Utc>) -> Vec<u8> {
        serde_json::json!({
            "clusterID": uuid::Uuid::from_u128(cluster).to_string(),
            "createdAt": "2026-01-01T00:00:00Z", "interval": timefmt::rfc3339_nano(&slot),
            "intervalPeriod": 3600, "target": "all",
            "instanceID": uuid::Uuid::from_u128(instance).to_string(),
        })
        .to_string()
        .into_bytes()
    }

    async fn rows(store: &Store) -> Vec<String> {
        let mut out = Vec::new();
        for key in store.list("rollups/").await.unwrap() {
            let bytes = store.get_limited(&key, 1 << 30).await.unwrap().bytes;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let col = batch.column_by_name("instanceID").unwrap();
                let ids = col.as_any().downcast_ref::<StringArray>().unwrap();
                out.extend(ids.iter().map(|s| s.unwrap_or_default().to_string()));
            }
        }
        out.sort();
        out
    }

    /// A memory store whose listings are slow, so that racers finish whole windows while
    /// another is still listing.
    #[derive(Debug)]
    struct SlowList(crate::store::cloud::CloudStore);

    #[async_trait::async_trait]
    impl crate::store::Backend for SlowList {
        async fn get(&self, key: &str, limit: usize) -> Result<crate::store::Object, StoreError> {
            self.0.get(key, limit).await
        }
        async fn create(
            &self,
            key: &str,
            bytes: bytes::Bytes,
        ) -> Result<crate::store::Version, StoreError> {
            self.0.create(key, bytes).await
        }
        async fn update(
            &self,
            key: &str,
            bytes: bytes::Bytes,
            expected: &crate::store::Version,
        ) -> Result<crate::store::Version, StoreError> {
            self.0.update(key, bytes, expected).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<crate::store::Entry>, StoreError> {
            let listed = self.0.list(prefix).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            listed
        }
        async fn put(
            &self,
            key: &str,
            bytes: bytes::Bytes,
        ) -> Result<crate::store::Version, StoreError> {
            self.0.put(key, bytes).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.0.delete(key).await
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }

    /// Processes rolling up one bucket at once, without a lease between them (as a
    /// `reporter rollup` beside a receiver could): each report is a row once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_runs_roll_each_report_up_once() {
        let store = Store::new(Arc::new(
            SlowList(crate::store::cloud::CloudStore::memory()),
        ));
        let slot = DateTime::<Utc>::from_timestamp(1_770_000_000, 0).unwrap();
        for round in 0..3u128 {
            for i in 0..200u128 {
                let n = round * 1000 + i;
                let key = layout::inbox_key(
                    &uuid::Uuid::from_u128(n % 7 + 1).to_string(),
                    slot,
                    &uuid::Uuid::from_u128(n + 100).to_string(),
                );
                store
                    .create(&key, report(n % 7 + 1, n + 100, slot))
                    .await
                    .unwrap();
            }
            // Started apart, so that one lists while another records and finishes a window.
            let run = |store: Store, after: u64| async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                loop {
                    let out = run_once(&store, Utc::now(), Duration::ZERO, &unfenced())
                        .await
                        .unwrap();
                    if out.window.is_empty() {
                        return;
                    }
                }
            };
            tokio::join!(
                run(store.clone(), 0),
                run(store.clone(), 150),
                run(store.clone(), 250)
            );
        }
        let rows = rows(&store).await;
        let distinct: std::collections::BTreeSet<_> = rows.iter().collect();
        assert_eq!((rows.len(), distinct.len()), (600, 600));
        assert!(store.list(layout::INBOX).await.unwrap().is_empty());
        assert_eq!(store.list(layout::KEPT).await.unwrap().len(), 600);
    }

    /// A run that loses the lease stops before its next write; the next leader redoes the
    /// window exactly.
    #[tokio::test]
    async fn a_run_past_its_fence_writes_nothing_and_is_redone() {
        let store = Store::memory();
        let slot = DateTime::<Utc>::from_timestamp(1_770_000_000, 0).unwrap();
        for i in 0..10u128 {
            let key = layout::inbox_key(
                &uuid::Uuid::from_u128(1).to_string(),
                slot,
                &uuid::Uuid::from_u128(i + 100).to_string(),
            );
            store.create(&key, report(1, i + 100, slot)).await.unwrap();
        }
        let lost = || false;
        assert!(matches!(
            run_once(&store, Utc::now(), Duration::ZERO, &lost).await,
            Err(RollupError::NotLeader)
        ));
        assert!(store.list("rollups/").await.unwrap().is_empty());
        assert!(store.list("summaries/").await.unwrap().is_empty());
        // Leading for exactly two writes (the window, then the first Parquet file): stopped.
        let writes = std::sync::atomic::AtomicUsize::new(0);
        let brief = || writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2;
        assert!(run_once(&store, Utc::now(), Duration::ZERO, &brief)
            .await
            .is_err());
        let out = run_once(&store, Utc::now(), Duration::ZERO, &unfenced())
            .await
            .unwrap();
        assert_eq!(out.rows, 10);
        assert_eq!(rows(&store).await.len(), 10);
        let again = run_once(&store, Utc::now(), Duration::ZERO, &unfenced())
            .await
            .unwrap();
        assert!(again.window.is_empty());
    }
}
