//! The read side: `/api/v1/summary`, `/api/v1/clusters`, `/api/v1/metrics[/<key>]` and the
//! dashboard, over the rollup's summaries and insight aggregates, cached for [`CACHE_FOR`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;

use crate::store::{Store, StoreError};
use crate::summary::{Cluster, Day};
use crate::{cluster_list, error, figures, insights, layout, App};

/// The read routes (the caller puts the token check in front of them).
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/clusters", get(clusters))
        .route("/api/v1/metrics", get(metric_keys))
        .route("/api/v1/metrics/{key}", get(metric))
        .route("/", get(dashboard))
}

/// The summaries as last read. A request older than [`CACHE_FOR`] lists `summaries/` and reads
/// again only the objects that changed, so a warm request costs one listing, whatever the
/// number of reports or clusters.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    checked: Option<Instant>,
    seen: HashMap<String, chrono::DateTime<Utc>>,
    days: BTreeMap<String, Day>,
    /// The cluster list.
    list: cluster_list::View,
    /// Insights: each cluster active on a day once (the trend), by day.
    daily: BTreeMap<String, Arc<insights::Aggregate>>,
    /// Insights: each cluster once, on the day of its latest slot.
    latest: BTreeMap<String, Arc<insights::Aggregate>>,
}

impl Cache {
    /// The clusters active in these days, each once by its latest slot: the sum of the days'
    /// `latest` aggregates.
    fn active_in(&self, days: &[String]) -> insights::Aggregate {
        figures::sum(
            days.iter()
                .filter_map(|d| self.latest.get(d).map(|a| a.as_ref())),
        )
    }
}

const CACHE_FOR: Duration = Duration::from_secs(2);
/// The most days `/api/v1/summary` covers.
const MAX_DAYS: i64 = 400;

/// Brings the cache up to date with the bucket.
async fn refresh(store: &Store, cache: &mut Cache) -> Result<(), StoreError> {
    if cache.checked.is_some_and(|at| at.elapsed() < CACHE_FOR) {
        return Ok(());
    }
    let (list, entries): (Vec<_>, Vec<_>) = store
        .entries(layout::SUMMARIES)
        .await?
        .into_iter()
        .partition(|e| e.key.starts_with(cluster_list::PREFIX));
    cache.list.refresh(store, &list).await?;
    for entry in entries {
        if cache.seen.get(&entry.key) == Some(&entry.modified) {
            continue;
        }
        if let Some((latest, day)) = insight_day(&entry.key) {
            let obj = store.get_limited(&entry.key, 64 << 20).await?;
            if let Ok(a) = serde_json::from_slice::<figures::StoredAggregate>(&obj.bytes) {
                let map = if latest {
                    &mut cache.latest
                } else {
                    &mut cache.daily
                };
                map.insert(day.to_string(), Arc::new(a.aggregate));
            }
        } else if let Some(day) = entry
            .key
            .strip_prefix("summaries/day=")
            .and_then(|k| k.strip_suffix(".json"))
        {
            let obj = store.get_limited(&entry.key, 64 << 20).await?;
            if let Ok(d) = serde_json::from_slice::<Day>(&obj.bytes) {
                cache.days.insert(day.to_string(), d);
            }
        }
        cache.seen.insert(entry.key, entry.modified);
    }
    cache.checked = Some(Instant::now());
    Ok(())
}

/// A read of the API whose store call failed: 503, saying what the store answered.
fn read_failed(e: &StoreError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the store failed: {e}"),
    )
}

/// `(latest, day)` of an insights aggregate's key.
fn insight_day(key: &str) -> Option<(bool, &str)> {
    let rest = key.strip_prefix(figures::AGGREGATES)?;
    let (latest, rest) = match rest.strip_prefix("latest/") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    Some((latest, rest.strip_prefix("day=")?.strip_suffix(".json")?))
}

/// The last `days` days, oldest first, today included.
fn last_days(days: i64) -> Vec<String> {
    let today = Utc::now().date_naive();
    (0..days)
        .rev()
        .map(|d| {
            (today - chrono::Duration::days(d))
                .format("%Y-%m-%d")
                .to_string()
        })
        .collect()
}

/// The insights of the last `days` days: the window's clusters by their latest slot, and
/// each day's.
pub(crate) async fn insights_of(
    app: &App,
    days: i64,
) -> Result<
    (
        insights::Aggregate,
        Vec<(String, Option<Arc<insights::Aggregate>>)>,
    ),
    StoreError,
> {
    let mut cache = app.cache.lock().await;
    refresh(&app.store, &mut cache).await?;
    let days = last_days(days);
    let window = cache.active_in(&days);
    let daily = days
        .into_iter()
        .map(|d| {
            let a = cache.daily.get(&d).cloned();
            (d, a)
        })
        .collect();
    Ok((window, daily))
}

/// What kind of values a key has.
fn kind(k: &insights::KeyAggregate) -> &'static str {
    if k.numeric() && k.values.keys().all(|v| v == "0" || v == "1") && !k.values.is_empty() {
        "flag"
    } else if k.numeric() {
        "number"
    } else {
        "text"
    }
}

#[derive(serde::Deserialize)]
struct DaysQuery {
    days: Option<i64>,
}

/// `GET /api/v1/metrics?days=N`: every key shown, its kind and the clusters reporting it.
async fn metric_keys(State(app): State<App>, Query(q): Query<DaysQuery>) -> Response {
    let n = q.days.unwrap_or(7).clamp(1, MAX_DAYS);
    let (window, _) = match insights_of(&app, n).await {
        Ok(s) => s,
        Err(e) => return read_failed(&e),
    };
    let metrics: Vec<_> = window
        .keys
        .iter()
        .filter(|(_, k)| k.clusters >= app.min_clusters)
        .map(|(key, k)| json!({"key": key, "kind": kind(k), "clusters": k.clusters}))
        .collect();
    Json(json!({"clusters": window.clusters, "metrics": metrics})).into_response()
}

fn values_json(view: &insights::KeyView) -> Vec<serde_json::Value> {
    view.values
        .iter()
        .map(|(v, n)| json!({"value": v, "clusters": n}))
        .collect()
}

/// `GET /api/v1/metrics/<key>?days=N`: its distribution over the window, and day by day.
async fn metric(
    State(app): State<App>,
    axum::extract::Path(key): axum::extract::Path<String>,
    Query(q): Query<DaysQuery>,
) -> Response {
    let n = q.days.unwrap_or(7).clamp(1, MAX_DAYS);
    let (window, daily) = match insights_of(&app, n).await {
        Ok(s) => s,
        Err(e) => return read_failed(&e),
    };
    let min = app.min_clusters;
    let Some(k) = window.keys.get(&key).filter(|k| k.clusters >= min) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no metric {key:?} reported by {min} clusters or more in the last {n} days"),
        );
    };
    let view = k.view(min);
    let days: Vec<_> = daily
        .iter()
        .map(|(day, a)| {
            let (clusters, values) = a
                .as_ref()
                .and_then(|a| a.keys.get(&key))
                .map(|k| {
                    let v = k.view(min);
                    (v.clusters, values_json(&v))
                })
                .unwrap_or_default();
            json!({"day": day, "clusters": clusters, "values": values})
        })
        .collect();
    let mut body = json!({
        "key": key, "clusters": view.clusters, "active": window.clusters,
        "kind": kind(k), "values": values_json(&view), "other": view.other, "days": days,
    });
    if k.numeric() {
        body["quantiles"] = json!(view.quantiles);
        body["zero"] = json!(view.zero);
    }
    Json(body).into_response()
}

/// The summaries of the last `days` days, oldest first (today included; days without reports
/// as zeros; each day's clusters and versions from its insights aggregate), and the clusters
/// active in them, each once by its latest slot.
async fn summaries(app: &App, days: i64) -> Result<(Vec<Day>, insights::Aggregate), StoreError> {
    let mut cache = app.cache.lock().await;
    refresh(&app.store, &mut cache).await?;
    let days = last_days(days);
    let window = cache.active_in(&days);
    let days = days
        .into_iter()
        .map(|d| {
            let mut day = cache.days.get(&d).cloned().unwrap_or_else(|| Day {
                day: d.clone(),
                ..Day::default()
            });
            if let Some(a) = cache.daily.get(&d) {
                day.clusters = a.clusters;
                day.versions = a.versions.clone();
            }
            day
        })
        .collect();
    Ok((days, window))
}

/// Every cluster in the list, most recently seen first.
async fn cluster_list(app: &App) -> Result<Arc<Vec<Cluster>>, StoreError> {
    let mut cache = app.cache.lock().await;
    refresh(&app.store, &mut cache).await?;
    Ok(cache.list.order.clone())
}

async fn summary(State(app): State<App>, Query(q): Query<DaysQuery>) -> Response {
    let n = q.days.unwrap_or(30).clamp(1, MAX_DAYS);
    let (days, active) = match summaries(&app, n).await {
        Ok(s) => s,
        Err(e) => return read_failed(&e),
    };
    let versions = active.versions;
    let replicas = active.replicas;
    let sum = |pick: fn(&Day) -> &BTreeMap<String, u64>| {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for d in &days {
            for (k, v) in pick(d) {
                *m.entry(k.clone()).or_default() += v;
            }
        }
        m
    };
    let body = json!({
        "clusters": active.clusters,
        "instances": active.instances,
        "reports": days.iter().map(|d| d.reports).sum::<u64>(),
        "versions": versions,
        "os": sum(|d| &d.os),
        "arch": sum(|d| &d.arch),
        "targets": sum(|d| &d.targets),
        "replicas": replicas,
        "penetration": insights::penetration(&versions)
            .into_iter()
            .map(|(version, share)| json!({"version": version, "share": share}))
            .collect::<Vec<_>>(),
        "days": days.iter().map(|d| json!({
            "day": d.day, "clusters": d.clusters, "reports": d.reports, "versions": d.versions,
        })).collect::<Vec<_>>(),
    });
    Json(body).into_response()
}

#[derive(serde::Deserialize)]
struct ClustersQuery {
    limit: Option<usize>,
}

async fn clusters(State(app): State<App>, Query(q): Query<ClustersQuery>) -> Response {
    let all = match cluster_list(&app).await {
        Ok(s) => s,
        Err(e) => return read_failed(&e),
    };
    let list: Vec<&Cluster> = all.iter().take(q.limit.unwrap_or(usize::MAX)).collect();
    Json(json!({"clusters": list, "total": all.len()})).into_response()
}

/// The dashboard: one self-contained page, no CDN, charts drawn as SVG by its own script.
pub const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}
