//! Rollups: received reports compacted into Parquet for analysts, and the summaries updated.
//!
//! A run takes a window of arrival times, `(watermark, now - settle]` in whole seconds (S3
//! stamps objects to the second), and makes every report
//! the store took in it a row of exactly one Parquet file,
//! `rollups/day=<slot day>/<window>.parquet` (Hive-style, so DuckDB, ClickHouse, Athena or
//! Spark read the bucket directly). Late reports arrive later, so they fall in a later window:
//! never lost, never counted twice. The state, `receiver/rollup.json`, is kept by
//! compare-and-swap: a run first records the window it is about to roll up, and records the
//! new watermark only once its files and summaries are written. A run that dies in between is
//! redone, window and all, by the next: the same file names (written over) and summaries that
//! remember the windows they hold.
//!
//! Only the slot days a window can touch are listed: the receiver refuses slots more than
//! [`MAX_AGE`] old, so a window needs those days and no others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::intake::{self, MAX_AGE};
use super::layout;
use super::summary::{day_of, Clusters, Day, DayClusters, Row};
use crate::store::{Store, StoreError};
use crate::timefmt;

/// How long after its arrival a report is left for the store's listing to settle before it
/// is rolled up.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);
/// The largest summary read (the all-clusters summary grows with clusters, not reports).
const MAX_SUMMARY_BYTES: usize = 512 << 20;

/// Why a run did not finish; the next run redoes its window.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A Parquet file could not be written.
    #[error("cannot write Parquet: {0}")]
    Parquet(String),
    /// A state or summary object is not what this version writes.
    #[error("{key} is corrupted: {why}")]
    Corrupted {
        /// The object.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The window, `<from ms>-<to ms>`.
    pub window: String,
    /// Reports rolled up.
    pub rows: usize,
    /// Parquet files written.
    pub files: usize,
    /// Objects skipped as unreadable or invalid.
    pub skipped: usize,
}

/// The rollup's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// Reports that arrived at or before this (Unix ms) are rolled up.
    watermark_ms: i64,
    /// A window recorded and not yet finished.
    pending: Option<(i64, i64)>,
}

fn window_id(from: i64, to: i64) -> String {
    format!("{from:015}-{to:015}")
}

/// Reads a JSON object kept by CAS; its default when absent.
async fn read_json<T: DeserializeOwned + Default>(
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
async fn update_json<T: DeserializeOwned + Serialize + Default>(
    store: &Store,
    key: &str,
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

/// One rollup run at `now`.
pub async fn run_once(
    store: &Store,
    now: DateTime<Utc>,
    settle: Duration,
) -> Result<Outcome, RollupError> {
    // Whole seconds: S3 stamps objects to the second, so a window never ends inside a second
    // whose objects could still be stamped into it.
    let end = (now - chrono::Duration::from_std(settle).unwrap_or_default()).timestamp() * 1000;
    // Record the window first, so that a run that dies is redone exactly.
    let state = update_json::<State>(store, layout::ROLLUP_STATE, |s| {
        if s.pending.is_some() || end <= s.watermark_ms {
            return false;
        }
        s.pending = Some((s.watermark_ms, end));
        true
    })
    .await?;
    let Some((from, to)) = state.pending else {
        return Ok(Outcome::default());
    };
    let window = window_id(from, to);
    let mut out = Outcome {
        window: window.clone(),
        ..Outcome::default()
    };

    let rows = collect(store, from, to, &mut out).await?;
    let mut by_day: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for row in rows {
        by_day
            .entry(day_of(row.report.slot()))
            .or_default()
            .push(row);
    }
    for (day, rows) in &by_day {
        let bytes = parquet(rows)?;
        store.put(&layout::rollup_key(day, &window), bytes).await?;
        out.files += 1;
        out.rows += rows.len();
        let ids =
            update_json::<DayClusters>(store, &layout::day_ids_key(day), |d| d.add(rows)).await?;
        update_json::<Day>(store, &layout::day_key(day), |d| {
            d.day = day.clone();
            d.add(&window, rows, &ids)
        })
        .await?;
    }
    let all: Vec<Row> = by_day.into_values().flatten().collect();
    update_json::<Clusters>(store, layout::CLUSTERS, |c| c.add(&window, &all)).await?;
    update_json::<State>(store, layout::ROLLUP_STATE, |s| {
        if s.pending != Some((from, to)) {
            return false;
        }
        s.pending = None;
        s.watermark_ms = to;
        true
    })
    .await?;
    Ok(out)
}

/// The reports that arrived in `(from, to]`, read and checked again.
async fn collect(
    store: &Store,
    from: i64,
    to: i64,
    out: &mut Outcome,
) -> Result<Vec<Row>, RollupError> {
    let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    // The first run looks at everything; later ones at the days a new arrival can be in.
    let prefixes: Vec<String> = if from == 0 {
        vec![layout::RECEIVED.to_string()]
    } else {
        let mut day = at(from) - MAX_AGE - chrono::Duration::days(1);
        let mut days = Vec::new();
        while day <= at(to) + chrono::Duration::days(1) {
            days.push(layout::received_day_prefix(&day_of(day)));
            day += chrono::Duration::days(1);
        }
        days
    };
    let mut rows = Vec::new();
    for prefix in prefixes {
        for entry in store.entries(&prefix).await? {
            let ms = entry.modified.timestamp_millis();
            if ms <= from || ms > to {
                continue;
            }
            let bytes = match store.get(&entry.key).await {
                Ok(obj) => obj.bytes,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e @ (StoreError::TooLarge { .. } | StoreError::NotRegular { .. })) => {
                    tracing::warn!(error = %e, "rollup: skipping an object that is not a report");
                    out.skipped += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // Checked at intake; checked again, with the arrival as "now", so that nothing in
            // the bucket that is not a report becomes a row.
            match intake::parse(&bytes, entry.modified) {
                Ok(report) => rows.push(Row {
                    report,
                    received_at: entry.modified,
                }),
                Err(why) => {
                    tracing::warn!(key = %entry.key, reason = %why, "rollup: skipping an object that is not a report");
                    out.skipped += 1;
                }
            }
        }
    }
    Ok(rows)
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
    ])
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
    ];
    let failed = |e: &dyn std::fmt::Display| RollupError::Parquet(e.to_string());
    let batch = RecordBatch::try_new(Arc::new(schema()), columns).map_err(|e| failed(&e))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut buf = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))
        .map_err(|e| failed(&e))?;
    writer.write(&batch).map_err(|e| failed(&e))?;
    writer.close().map_err(|e| failed(&e))?;
    Ok(buf)
}
