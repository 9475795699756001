//! The reporter's own health, served at `GET /metrics` (OpenMetrics text) and registrable in a
//! service's own prometheus-client registry.
//!
//! These figures describe the reporter, never the service it reports on, and never leave the
//! process except through a scrape. They live in prometheus-client's handles (atomics); the
//! store's request counts are the store's own ([`RequestCounts`]), registered here, not copied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use usage_reporter_core::metrics::latency_histogram;
use usage_reporter_core::store::RequestCounts;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `/ready` answers 200: shared with the collector that shows it at each scrape.
#[derive(Debug, Default)]
struct Readiness {
    seed_known: Gauge,
    /// Unix milliseconds of the last store call that got an answer; 0 before any.
    last_answer_ms: AtomicU64,
    /// How recent that answer must be, in milliseconds; 0 means 10 minutes.
    window_ms: AtomicU64,
}

impl Readiness {
    fn check(&self) -> Result<(), &'static str> {
        if self.seed_known.get() == 0 {
            return Err("the cluster seed is not known yet");
        }
        let window = match self.window_ms.load(Ordering::Relaxed) {
            0 => 10 * 60 * 1000,
            w => w,
        };
        let last = self.last_answer_ms.load(Ordering::Relaxed);
        if now_ms().saturating_sub(last) > window {
            return Err("the store has not answered recently");
        }
        Ok(())
    }
}

/// `usage_reporter_ready`, computed at each scrape (it changes with the clock, not with events).
#[derive(Debug)]
struct ReadyGauge(Arc<Readiness>);

impl Collector for ReadyGauge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(i64::from(self.0.check().is_ok()));
        let metric = encoder.encode_descriptor(
            "ready",
            "1 while /ready answers 200: the seed is known and the store answered recently.",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// The reporter's own figures, shared by every part of one replica.
#[derive(Debug)]
pub struct Health {
    ready: Arc<Readiness>,
    leader: Gauge,
    term: Gauge,
    read_only: Gauge,
    /// The store's own counts, set once the store is opened (none with reporting disabled).
    store_requests: OnceLock<RequestCounts>,
    reports_written: Counter,
    reports_delivered: Counter,
    reports_failed: Counter,
    reports_dropped: Counter,
    reports_rejected: Family<[(&'static str, &'static str); 1], Counter>,
    /// Unix seconds of the last delivered report; 0 before any.
    last_delivery: Gauge<f64, AtomicU64>,
    latency: Histogram,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            ready: Arc::default(),
            leader: Gauge::default(),
            term: Gauge::default(),
            read_only: Gauge::default(),
            store_requests: OnceLock::new(),
            reports_written: Counter::default(),
            reports_delivered: Counter::default(),
            reports_failed: Counter::default(),
            reports_dropped: Counter::default(),
            reports_rejected: Family::default(),
            last_delivery: Gauge::default(),
            latency: latency_histogram(),
        }
    }
}

impl Health {
    /// Whether the seed is known.
    pub fn set_seed_known(&self, known: bool) {
        self.ready.seed_known.set(i64::from(known));
    }

    /// Whether the seed is known.
    pub fn seed_known(&self) -> bool {
        self.ready.seed_known.get() != 0
    }

    /// Leadership and the term last seen.
    pub fn set_leader(&self, leader: bool, term: u64) {
        self.leader.set(i64::from(leader));
        self.term.set(i64::try_from(term).unwrap_or(i64::MAX));
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader.get() != 0
    }

    /// Shows the store's request counts on `/metrics` (the first store given; one per replica).
    pub fn count_store(&self, counts: RequestCounts) {
        let _ = self.store_requests.set(counts);
    }

    /// Store requests so far, all operations and outcomes.
    pub fn store_requests_total(&self) -> u64 {
        self.store_requests.get().map_or(0, RequestCounts::total)
    }

    /// Counts a report kept in the bucket.
    pub fn report_written(&self) {
        self.reports_written.inc();
    }

    /// Counts a delivered report and its latency.
    pub fn report_delivered(&self, latency: Duration) {
        self.last_delivery.set(now_ms() as f64 / 1000.0);
        self.reports_delivered.inc();
        self.latency.observe(latency.as_secs_f64());
    }

    /// Counts a failed POST attempt.
    pub fn report_failed(&self) {
        self.reports_failed.inc();
    }

    /// Counts a report dropped undelivered.
    pub fn report_dropped(&self) {
        self.reports_dropped.inc();
    }

    /// An object under `usage/reports/` that was not a report of this cluster, by reason.
    pub fn report_rejected(&self, reason: &'static str) {
        self.reports_rejected
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// How recently the store must have answered for [`Health::ready`].
    pub fn set_ready_window(&self, window: Duration) {
        self.ready
            .window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks a replica that may read the store but not write it.
    pub fn set_read_only(&self, read_only: bool) {
        self.read_only.set(i64::from(read_only));
    }

    /// `Ok` once the seed is known and the store answered within the ready window; else why not.
    pub fn ready(&self) -> Result<(), &'static str> {
        self.ready.check()
    }

    /// Reports delivered so far.
    pub fn delivered(&self) -> u64 {
        self.reports_delivered.get()
    }

    /// Reports dropped so far.
    pub fn dropped(&self) -> u64 {
        self.reports_dropped.get()
    }

    /// Registers every `usage_reporter_*` family in `registry` (handles, not copies: a scrape
    /// of it shows the live figures). Register one replica once per registry.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("usage_reporter");
        let build = crate::build_info::BuildInfo::reporter();
        r.register(
            "build",
            "The reporter's version and git revision; always 1",
            Info::new([("version", build.version), ("revision", build.revision)]),
        );
        r.register_collector(Box::new(ReadyGauge(self.ready.clone())));
        let gauges = [
            (
                "read_only",
                "1 if this replica may read the store but not write it (it sends its own reports, never leads)",
                &self.read_only,
            ),
            (
                "seed_known",
                "1 once this replica knows the cluster seed",
                &self.ready.seed_known,
            ),
            (
                "leader",
                "1 while this replica holds the leader lease",
                &self.leader,
            ),
            (
                "lease_term",
                "Term of the lease as last seen by this replica",
                &self.term,
            ),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
        r.register_with_unit(
            "last_delivery_timestamp",
            "Unix time of the last report this replica delivered; 0 before any. Alert on time() minus this",
            Unit::Seconds,
            self.last_delivery.clone(),
        );
        if let Some(counts) = self.store_requests.get() {
            r.register(
                "store_requests",
                "Store requests by operation and outcome",
                counts.clone(),
            );
        }
        let counters = [
            (
                "reports_written",
                "Reports this replica froze and kept in the bucket",
                &self.reports_written,
            ),
            (
                "reports_delivered",
                "Reports this replica delivered as leader",
                &self.reports_delivered,
            ),
            (
                "reports_failed",
                "Delivery attempts that failed (each retry counts)",
                &self.reports_failed,
            ),
            (
                "reports_dropped",
                "Reports dropped undelivered because they grew older than the age bound",
                &self.reports_dropped,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "reports_rejected",
            "Objects under usage/reports/ never sent because they were not reports of this cluster (removed), by reason",
            self.reports_rejected.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "Time from a report's first delivery attempt to its success",
            Unit::Seconds,
            self.latency.clone(),
        );
    }

    /// The OpenMetrics text of every family, for `/metrics`.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        usage_reporter_core::metrics::encode(&[&registry])
    }
}

impl usage_reporter_core::store::StoreObserver for Health {
    fn request(&self, _op: &'static str, outcome: &'static str) {
        // Any answer, even "not found" or "denied", shows the store is there.
        if !matches!(outcome, "timeout" | "error") {
            self.ready.last_answer_ms.store(now_ms(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use usage_reporter_core::store::{Store, StoreObserver};

    #[tokio::test]
    async fn renders_the_store_counts_gauges_and_histogram() {
        let h = Arc::new(Health::default());
        let store = Store::memory().with_observer(h.clone());
        h.count_store(store.requests().clone());
        assert!(store.get("a").await.is_err());
        assert!(store.get("b").await.is_err());
        h.report_delivered(Duration::from_millis(30));
        h.set_leader(true, 7);
        h.report_rejected("foreign");
        let text = h.render();
        assert!(
            text.contains(
                "usage_reporter_store_requests_total{operation=\"get\",outcome=\"not_found\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("usage_reporter_leader 1\n"), "{text}");
        assert!(text.contains("usage_reporter_lease_term 7\n"), "{text}");
        assert!(text.contains("usage_reporter_reports_delivered_total 1\n"));
        assert!(text.contains("usage_reporter_reports_rejected_total{reason=\"foreign\"} 1\n"));
        assert!(text.contains("usage_reporter_delivery_latency_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("usage_reporter_delivery_latency_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(
            text.contains("usage_reporter_build_info{version=\""),
            "{text}"
        );
        // Not ready: the seed is not known, though the store answered.
        assert!(text.contains("usage_reporter_ready 0\n"), "{text}");
        h.set_seed_known(true);
        assert!(h.render().contains("usage_reporter_ready 1\n"));
        assert_eq!(h.store_requests_total(), 2);
        h.request("get", "timeout");
        assert_eq!(
            h.store_requests_total(),
            2,
            "an observer call is not a count"
        );
    }

    #[test]
    fn registers_in_a_service_registry_beside_its_own_families() {
        let h = Health::default();
        let mut registry = Registry::default();
        let own: Counter = Counter::default();
        own.inc();
        registry.register("service_requests", "The service's own", own);
        h.register(&mut registry);
        h.report_written();
        let text = usage_reporter_core::metrics::encode(&[&registry]);
        assert!(text.contains("service_requests_total 1\n"), "{text}");
        assert!(
            text.contains("usage_reporter_reports_written_total 1\n"),
            "{text}"
        );
    }
}
