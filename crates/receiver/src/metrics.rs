//! `GET /metrics`: the receiver's own figures (prometheus-client handles, updated as reports
//! arrive and rollups finish), then, for a scraper that may read them, the insights of the last
//! 7 days that `--min-clusters` lets be shown, in OpenMetrics text.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use usage_reporter_core::metrics::{encode, label_value, latency_histogram, CONTENT_TYPE};
use usage_reporter_core::serve::ServerStats;

use crate::store::StoreError;
use crate::{api, auth, insights, App};

/// The receiver's own figures, served at `/metrics`.
#[derive(Debug)]
pub struct ReceiverHealth {
    stored: Counter,
    duplicates: Counter,
    rate_limited: Counter,
    store_failures: Counter,
    rejected: Family<[(&'static str, &'static str); 1], Counter>,
    store_latency: Histogram,
    rollups: Counter,
    rolled_up: Counter,
    /// The HTTP server's connection figures, once it listens.
    server: OnceLock<Arc<ServerStats>>,
}

impl Default for ReceiverHealth {
    fn default() -> Self {
        ReceiverHealth {
            stored: Counter::default(),
            duplicates: Counter::default(),
            rate_limited: Counter::default(),
            store_failures: Counter::default(),
            rejected: Family::default(),
            store_latency: latency_histogram(),
            rollups: Counter::default(),
            rolled_up: Counter::default(),
            server: OnceLock::new(),
        }
    }
}

impl ReceiverHealth {
    pub(crate) fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    pub(crate) fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// How long one report's store write took, whatever it answered.
    pub(crate) fn store_took(&self, took: Duration) {
        self.store_latency.observe(took.as_secs_f64());
    }

    /// One report stored (`true`) or answered as a duplicate (`false`).
    pub(crate) fn report_stored(&self, new: bool) {
        if new {
            self.stored.inc();
        } else {
            self.duplicates.inc();
        }
    }

    pub(crate) fn store_failed(&self) {
        self.store_failures.inc();
    }

    pub(crate) fn rolled_up(&self, rows: u64) {
        self.rollups.inc();
        self.rolled_up.inc_by(rows);
    }

    pub(crate) fn set_server(&self, server: Arc<ServerStats>) {
        let _ = self.server.set(server);
    }

    /// Reports stored so far.
    pub fn stored(&self) -> u64 {
        self.stored.get()
    }

    /// Registers every `reporter_receiver_*` family in `registry` (live handles).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("reporter_receiver");
        let counters = [
            ("reports_stored", "Reports stored", &self.stored),
            (
                "reports_duplicate",
                "Reports answered as duplicates of one already stored",
                &self.duplicates,
            ),
            ("rate_limited", "Requests answered 429", &self.rate_limited),
            (
                "store_failures",
                "Reports answered 503 because the store failed",
                &self.store_failures,
            ),
            ("rollups", "Rollup runs finished", &self.rollups),
            ("rolled_up", "Reports written to Parquet", &self.rolled_up),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "reports_rejected",
            "Reports refused, by reason",
            self.rejected.clone(),
        );
        if let Some(server) = self.server.get() {
            r.register_collector(Box::new(ServerFigures(server.clone())));
        }
        r.register_with_unit(
            "store_latency",
            "Time to store one report",
            Unit::Seconds,
            self.store_latency.clone(),
        );
    }

    /// The OpenMetrics text of the receiver's own families.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        encode(&[&registry])
    }
}

/// The server's atomics, read at each scrape.
#[derive(Debug)]
struct ServerFigures(Arc<ServerStats>);

impl Collector for ServerFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let gauges = [
            (
                "connections",
                "Connections open.",
                s.open.load(Ordering::Relaxed),
            ),
            (
                "requests_in_flight",
                "Requests being answered.",
                s.in_flight.load(Ordering::Relaxed),
            ),
        ];
        // A collector's help is written as given (a registered metric's gets its final stop).
        for (name, help, v) in gauges {
            let gauge = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "connections_refused",
                "Connections closed at once: their client had too many open.",
                &s.refused,
            ),
            (
                "connections_evicted",
                "Idle connections closed early because the receiver was busy.",
                &s.evicted,
            ),
            (
                "requests_timed_out",
                "Requests answered 408: their body did not arrive in time.",
                &s.timed_out,
            ),
        ];
        for (name, help, v) in counters {
            let counter = ConstCounter::new(v.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Series the insights export on `/metrics` at most: per key, and in all.
const EXPORT_PER_KEY: usize = 20;
const EXPORT_TOTAL: usize = 2000;

/// The insights of the last 7 days for Grafana, as one scrape sees them.
#[derive(Debug)]
struct Insights {
    /// Clusters with a report in the last 7 days.
    active: u64,
    /// Clusters by the version of their latest slot, most first (label values escaped).
    versions: Vec<([(&'static str, String); 1], u64)>,
    /// Clusters per (key, value) of a categorical metric (escaped).
    values: Vec<([(&'static str, String); 2], u64)>,
}

/// Active clusters, clusters per version and per value of each categorical metric, only what
/// `--min-clusters` lets be shown, at most [`EXPORT_PER_KEY`] values a key and
/// [`EXPORT_TOTAL`] series in all.
async fn insights(app: &App) -> Result<Insights, StoreError> {
    let (window, _) = api::insights_of(app, 7).await?;
    let min = app.min_clusters;
    let mut versions: Vec<_> = window
        .versions
        .iter()
        .filter(|(_, n)| **n >= min)
        .map(|(v, n)| ([("version", label_value(v))], *n))
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.1));
    versions.truncate(EXPORT_PER_KEY);
    let mut values = Vec::new();
    'keys: for (key, k) in &window.keys {
        if k.clusters < min || (k.numeric() && k.values.len() > insights::FEW_NUMBERS) {
            continue;
        }
        for (value, n) in k.view(min).values.iter().take(EXPORT_PER_KEY) {
            if versions.len() + values.len() >= EXPORT_TOTAL {
                break 'keys;
            }
            let value = match value {
                serde_json::Value::String(s) => label_value(s),
                other => label_value(&other.to_string()),
            };
            values.push(([("key", label_value(key)), ("value", value)], *n));
        }
    }
    Ok(Insights {
        active: window.clusters,
        versions,
        values,
    })
}

impl Collector for Insights {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let active = ConstGauge::new(i64::try_from(self.active).unwrap_or(i64::MAX));
        active.encode(encoder.encode_descriptor(
            "active_clusters",
            "Clusters with a report in the last 7 days.",
            None,
            active.metric_type(),
        )?)?;
        gauges(
            &mut encoder,
            "clusters_by_version",
            "Active clusters (7 days) by the version of their latest slot, versions of at least --min-clusters clusters.",
            &self.versions,
        )?;
        gauges(
            &mut encoder,
            "metric_clusters",
            "Active clusters (7 days) per value of a categorical metric, values of at least --min-clusters clusters.",
            &self.values,
        )
    }
}

/// One gauge family, a series per label set; nothing at all for no series.
fn gauges<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(S, u64)],
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, n) in series {
        let gauge = ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX));
        gauge.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// The receiver's own figures, and the insights for a scraper that may read them (with
/// `--read-token`, one that sends it: Prometheus's `authorization` setting).
pub(crate) async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let mut registry = Registry::default();
    app.health.register(&mut registry);
    if auth::authorized(&app, &headers) {
        match insights(&app).await {
            Ok(insights) => registry
                .sub_registry_with_prefix("reporter_insights")
                .register_collector(Box::new(insights)),
            // The receiver's own figures still go out; the insights wait for the store.
            Err(e) => tracing::debug!(error = %e, "insights not exported: the store failed"),
        }
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode(&[&registry])).into_response()
}
