//! The report: one per replica per slot, in the contract's key order.
//!
//! [`ReportSource`] holds what a replica reports about itself (target, instance ID, version,
//! static metrics, the metric registry, a CPU sampler) and builds either the live report that
//! `/status/usage-stats` serves ([`ReportSource::live`], which changes nothing) or the frozen
//! report of a slot ([`ReportSource::freeze`], which restarts counters and the CPU maximum).
//!
//! Privacy: a report carries only what is listed here. No hostname, address, user name, path
//! or environment value is ever read into it; `buildUser` stays empty.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::build_info::BuildInfo;
use crate::process::{go_arch, go_os, memstats, num_threads, CpuSampler};
use crate::seed::Seed;
use crate::slots;
use crate::stats::Registry;
use crate::timefmt;

/// The largest report that is kept and sent (1 MiB): a frozen report past it is not kept (logged
/// and counted as dropped), and an object past it under `usage/reports/` is never sent.
pub const MAX_REPORT_BYTES: usize = crate::store::MAX_OBJECT_BYTES;

/// The most the static metrics (`--metric`) may take in a report, as JSON (64 KiB), so that they
/// can never push a report past [`MAX_REPORT_BYTES`]; refused at start.
pub const MAX_STATIC_METRICS_BYTES: usize = 64 * 1024;

/// The JSON body sent for one replica and one slot.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed's UID.
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    /// The seed's `created_at`.
    #[serde(rename = "createdAt")]
    pub created_at: String,
    /// The slot: `createdAt + k * interval`, in the seed's zone.
    pub interval: String,
    /// The interval in seconds.
    #[serde(rename = "intervalPeriod")]
    pub interval_period: Value,
    /// The replica's role.
    pub target: String,
    /// A random UUID drawn when the process starts.
    #[serde(rename = "instanceID")]
    pub instance_id: String,
    /// The build.
    pub version: BuildInfo,
    /// The OS, by Go's name.
    pub os: String,
    /// The architecture, by Go's name.
    pub arch: String,
    /// Always `oss`.
    pub edition: String,
    /// Built-in, registered and static metrics.
    pub metrics: Map<String, Value>,
}

/// `intervalPeriod` in seconds: an integer when whole, as Go's receivers print it.
fn seconds_value(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

/// Builds this replica's reports.
#[derive(Debug)]
pub struct ReportSource {
    instance_id: Uuid,
    target: String,
    build: BuildInfo,
    interval: Duration,
    registry: Arc<Registry>,
    static_metrics: Vec<(String, Value)>,
    seed: RwLock<Option<Seed>>,
    cpu: CpuSampler,
    /// The report's `edition`: `oss` unless the embedding service says otherwise.
    edition: String,
}

impl ReportSource {
    /// A source for a replica with this role, build, interval, registry and static metrics.
    pub fn new(
        target: String,
        build: BuildInfo,
        interval: Duration,
        registry: Arc<Registry>,
        static_metrics: Vec<(String, Value)>,
    ) -> Self {
        ReportSource {
            instance_id: Uuid::new_v4(),
            target,
            build,
            interval,
            registry,
            static_metrics,
            seed: RwLock::new(None),
            cpu: CpuSampler::default(),
            edition: "oss".to_string(),
        }
    }

    /// Reports `edition` instead of `oss`.
    pub fn with_edition(mut self, edition: String) -> Self {
        self.edition = edition;
        self
    }

    /// This process's instance ID.
    pub fn instance_id(&self) -> Uuid {
        self.instance_id
    }

    /// The report period.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The metrics registry reported.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The CPU sampler.
    pub fn cpu(&self) -> &CpuSampler {
        &self.cpu
    }

    /// The cluster identity reports carry from now on.
    pub fn set_seed(&self, seed: Seed) {
        if let Ok(mut s) = self.seed.write() {
            *s = Some(seed);
        }
    }

    /// The cluster identity, once known.
    pub fn seed(&self) -> Option<Seed> {
        self.seed.read().ok().and_then(|s| s.clone())
    }

    fn metrics(&self, registered: Map<String, Value>, cpu_usage: f64) -> Map<String, Value> {
        let mut m = Map::new();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        m.insert("num_cpu".into(), json!(cpus));
        m.insert("memstats".into(), memstats());
        if let Some(n) = num_threads() {
            m.insert("num_threads".into(), json!(n));
        }
        m.insert("cpu_usage".into(), json!(cpu_usage));
        for (k, v) in registered {
            m.entry(k).or_insert(v);
        }
        for (k, v) in &self.static_metrics {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        m
    }

    fn build(&self, slot: Option<DateTime<Utc>>, metrics: Map<String, Value>) -> Report {
        let seed = self.seed();
        let (cluster_id, created_at, interval) = match (&seed, slot) {
            (Some(seed), Some(slot)) => (
                seed.uid().to_string(),
                timefmt::rfc3339_nano(&seed.created_at()),
                timefmt::rfc3339_nano(&timefmt::in_zone_of(slot, &seed.created_at())),
            ),
            _ => (
                String::new(),
                timefmt::GO_ZERO_TIME.to_string(),
                timefmt::GO_ZERO_TIME.to_string(),
            ),
        };
        Report {
            cluster_id,
            created_at,
            interval,
            interval_period: seconds_value(self.interval),
            target: self.target.clone(),
            instance_id: self.instance_id.to_string(),
            version: self.build.clone(),
            os: go_os().to_string(),
            arch: go_arch().to_string(),
            edition: self.edition.clone(),
            metrics,
        }
    }

    /// The report so far for the slot in progress. Changes nothing.
    pub fn live(&self, now: DateTime<Utc>) -> Report {
        let slot = self
            .seed()
            .and_then(|s| slots::next_slot(&s.created_at(), now, self.interval));
        let metrics = self.metrics(self.registry.snapshot(), self.cpu.max());
        self.build(slot, metrics)
    }

    /// The report of `slot`, which ends now: counters and the CPU maximum restart.
    pub fn freeze(&self, slot: DateTime<Utc>) -> Report {
        let registered = self.registry.freeze(Instant::now());
        let metrics = self.metrics(registered, self.cpu.take_max());
        self.build(Some(slot), metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> ReportSource {
        ReportSource::new(
            "ingester".into(),
            BuildInfo::reporter(),
            crate::defaults::INTERVAL,
            Arc::new(Registry::new()),
            vec![("region_count".into(), json!(3))],
        )
    }

    #[test]
    fn report_before_the_seed_and_metric_order() {
        let r = serde_json::to_value(source().live(Utc::now())).unwrap();
        assert_eq!(r["intervalPeriod"], json!(14400));
        assert_eq!(r["clusterID"], json!(""));
        assert_eq!(r["createdAt"], json!(timefmt::GO_ZERO_TIME));
        let m: Vec<_> = r["metrics"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(&m[..2], ["num_cpu", "memstats"]);
        assert_eq!(m.last().unwrap(), "region_count");
    }

    #[test]
    fn live_report_follows_the_seed() {
        let s = source();
        let seed = Seed::parse(
            br#"{"UID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","created_at":"2024-01-01T02:00:00+02:00"}"#,
        )
        .unwrap();
        s.set_seed(seed);
        let now = timefmt::parse_rfc3339("2024-01-02T01:00:00Z")
            .unwrap()
            .to_utc();
        let r = s.live(now);
        assert_eq!(r.cluster_id, "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e");
        assert_eq!(r.created_at, "2024-01-01T02:00:00+02:00");
        // Slots every 4 h from 2024-01-01T00:00Z: the one in progress at 01:00Z is 04:00Z.
        assert_eq!(r.interval, "2024-01-02T06:00:00+02:00");
    }
}
