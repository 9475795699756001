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

/// Upper bounds, in seconds, of the delivery latency histogram.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

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
    latency: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
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
        self.reports_delivered.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            let secs = latency.as_secs_f64();
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
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
        let name = "usage_reporter_delivery_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a report's first delivery attempt to its success.\n# TYPE {name} histogram"
        );
        if let Ok(h) = self.latency.lock() {
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum {}", h.sum);
            let _ = writeln!(out, "{name}_count {}", h.count);
        }
        out
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
