//! The reporter's own health, served at `GET /metrics` in Prometheus text format.
//!
//! These figures describe the reporter, never the service it reports on, and never leave the
//! process except through that endpoint. Writing them is cheap (atomics, or a short lock on the
//! rare store-request path); rendering builds the text on demand.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use usage_reporter_core::histogram::Histogram;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The reporter's own figures, shared by every part of one replica.
#[derive(Debug, Default)]
pub struct Health {
    seed_known: AtomicBool,
    leader: AtomicBool,
    term: AtomicU64,
    store_requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    reports_written: AtomicU64,
    reports_delivered: AtomicU64,
    reports_failed: AtomicU64,
    reports_dropped: AtomicU64,
    reports_rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Unix milliseconds of the last store call that got an answer; 0 before any.
    last_answer_ms: AtomicU64,
    /// How recent that answer must be for `/ready`, in milliseconds; 0 means 10 minutes.
    ready_window_ms: AtomicU64,
    /// Unix milliseconds of the last delivered report; 0 before any.
    last_delivery_ms: AtomicU64,
    read_only: AtomicBool,
    latency: Mutex<Histogram>,
}

impl Health {
    /// Whether the seed is known.
    pub fn set_seed_known(&self, known: bool) {
        self.seed_known.store(known, Ordering::Relaxed);
    }

    /// Whether the seed is known.
    pub fn seed_known(&self) -> bool {
        self.seed_known.load(Ordering::Relaxed)
    }

    /// Leadership and the term last seen.
    pub fn set_leader(&self, leader: bool, term: u64) {
        self.leader.store(leader, Ordering::Relaxed);
        self.term.store(term, Ordering::Relaxed);
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Counts one store call.
    pub fn store_request(&self, op: &'static str, outcome: &'static str) {
        // Any answer, even "not found" or "denied", shows the store is there.
        if !matches!(outcome, "timeout" | "error") {
            self.last_answer_ms.store(now_ms(), Ordering::Relaxed);
        }
        if let Ok(mut map) = self.store_requests.lock() {
            *map.entry((op, outcome)).or_default() += 1;
        }
    }

    /// Store requests so far with this operation and outcome.
    pub fn store_requests(&self, op: &str, outcome: &str) -> u64 {
        self.store_requests
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|((o, r), _)| *o == op && *r == outcome)
                    .map(|(_, n)| *n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Store requests so far, all operations and outcomes.
    pub fn store_requests_total(&self) -> u64 {
        self.store_requests
            .lock()
            .map(|m| m.values().sum())
            .unwrap_or(0)
    }

    /// Counts a report kept in the bucket.
    pub fn report_written(&self) {
        self.reports_written.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a delivered report and its latency.
    pub fn report_delivered(&self, latency: Duration) {
        self.last_delivery_ms.store(now_ms(), Ordering::Relaxed);
        self.reports_delivered.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            h.observe(latency);
        }
    }

    /// Counts a failed POST attempt.
    pub fn report_failed(&self) {
        self.reports_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a report dropped undelivered.
    pub fn report_dropped(&self) {
        self.reports_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// An object under `usage/reports/` that was not a report of this cluster, by reason.
    pub fn report_rejected(&self, reason: &'static str) {
        if let Ok(mut map) = self.reports_rejected.lock() {
            *map.entry(reason).or_default() += 1;
        }
    }

    /// Rejected objects so far, all reasons.
    pub fn rejected(&self) -> u64 {
        self.reports_rejected
            .lock()
            .map(|m| m.values().sum())
            .unwrap_or(0)
    }

    /// How recently the store must have answered for [`Health::ready`].
    pub fn set_ready_window(&self, window: Duration) {
        self.ready_window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks a replica that may read the store but not write it.
    pub fn set_read_only(&self, read_only: bool) {
        self.read_only.store(read_only, Ordering::Relaxed);
    }

    /// `Ok` once the seed is known and the store answered within the ready window; else why not.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.seed_known() {
            return Err("the cluster seed is not known yet");
        }
        let window = match self.ready_window_ms.load(Ordering::Relaxed) {
            0 => 10 * 60 * 1000,
            w => w,
        };
        let last = self.last_answer_ms.load(Ordering::Relaxed);
        if now_ms().saturating_sub(last) > window {
            return Err("the store has not answered recently");
        }
        Ok(())
    }

    /// Reports delivered so far.
    pub fn delivered(&self) -> u64 {
        self.reports_delivered.load(Ordering::Relaxed)
    }

    /// Reports dropped so far.
    pub fn dropped(&self) -> u64 {
        self.reports_dropped.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let build = crate::build_info::BuildInfo::reporter();
        let _ = writeln!(
            out,
            "# HELP usage_reporter_build_info The reporter's version and git revision; always 1.\n# TYPE usage_reporter_build_info gauge\nusage_reporter_build_info{{version=\"{}\",revision=\"{}\"}} 1",
            build.version, build.revision
        );
        gauge(
            &mut out,
            "usage_reporter_ready",
            "1 while /ready answers 200: the seed is known and the store answered recently.",
            u64::from(self.ready().is_ok()),
        );
        gauge(
            &mut out,
            "usage_reporter_read_only",
            "1 if this replica may read the store but not write it (it sends its own reports, never leads).",
            u64::from(self.read_only.load(Ordering::Relaxed)),
        );
        let _ = writeln!(
            out,
            "# HELP usage_reporter_last_delivery_timestamp_seconds Unix time of the last report this replica delivered; 0 before any. Alert on time() minus this.\n# TYPE usage_reporter_last_delivery_timestamp_seconds gauge\nusage_reporter_last_delivery_timestamp_seconds {}",
            self.last_delivery_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        gauge(
            &mut out,
            "usage_reporter_seed_known",
            "1 once this replica knows the cluster seed.",
            u64::from(self.seed_known()),
        );
        gauge(
            &mut out,
            "usage_reporter_leader",
            "1 while this replica holds the leader lease.",
            u64::from(self.is_leader()),
        );
        gauge(
            &mut out,
            "usage_reporter_lease_term",
            "Term of the lease as last seen by this replica.",
            self.term.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP usage_reporter_store_requests_total Store requests by operation and outcome.\n# TYPE usage_reporter_store_requests_total counter"
        );
        if let Ok(map) = self.store_requests.lock() {
            for ((op, outcome), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "usage_reporter_store_requests_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        counter(
            &mut out,
            "usage_reporter_reports_written_total",
            "Reports this replica froze and kept in the bucket.",
            self.reports_written.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "usage_reporter_reports_delivered_total",
            "Reports this replica delivered as leader.",
            self.delivered(),
        );
        counter(
            &mut out,
            "usage_reporter_reports_failed_total",
            "Delivery attempts that failed (each retry counts).",
            self.reports_failed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "usage_reporter_reports_dropped_total",
            "Reports dropped undelivered because they grew older than the age bound.",
            self.dropped(),
        );
        let _ = writeln!(
            out,
            "# HELP usage_reporter_reports_rejected_total Objects under usage/reports/ never sent because they were not reports of this cluster (removed), by reason.\n# TYPE usage_reporter_reports_rejected_total counter"
        );
        if let Ok(map) = self.reports_rejected.lock() {
            for (reason, n) in map.iter() {
                let _ = writeln!(
                    out,
                    "usage_reporter_reports_rejected_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        if let Ok(h) = self.latency.lock() {
            h.render(
                &mut out,
                "usage_reporter_delivery_latency_seconds",
                "Time from a report's first delivery attempt to its success.",
            );
        }
        out
    }
}

impl usage_reporter_core::store::StoreObserver for Health {
    fn request(&self, op: &'static str, outcome: &'static str) {
        self.store_request(op, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histogram() {
        let h = Health::default();
        h.store_request("get", "ok");
        h.store_request("get", "ok");
        h.store_request("create", "already_exists");
        h.report_delivered(Duration::from_millis(30));
        h.set_leader(true, 7);
        let text = h.render();
        assert!(text
            .contains("usage_reporter_store_requests_total{operation=\"get\",outcome=\"ok\"} 2"));
        assert!(text.contains("outcome=\"already_exists\"} 1"));
        assert!(text.contains("usage_reporter_leader 1"));
        assert!(text.contains("usage_reporter_lease_term 7"));
        assert!(text.contains("usage_reporter_delivery_latency_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("usage_reporter_delivery_latency_seconds_bucket{le=\"0.05\"} 1"));
        assert_eq!(h.store_requests_total(), 3);
    }
}
