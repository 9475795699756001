//! The report and the live endpoint: golden shape, key order and types, statistics against a
//! reference, counters under endpoint reads, privacy, disabled mode, several processes.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Bucket, Proc};
use proptest::prelude::*;
use serde_json::json;
use usage_reporter::report::ReportSource;
use usage_reporter::seed::Seed;
use usage_reporter::stats::{Registry, Statistics};
use usage_reporter::{BuildInfo, ReplicaBuilder, Store};
use usage_reporter_core::timefmt;

fn fixed_seed() -> Seed {
    Seed::parse(br#"{"UID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","created_at":"2024-08-09T18:28:28.123456789+02:00"}"#)
        .unwrap()
}

#[test]
fn golden_report() {
    let registry = Arc::new(Registry::new());
    registry.string("storage_backend").unwrap().set("s3");
    registry.int("tenants").unwrap().set(42);
    registry.float("ratio").unwrap().set(0.25);
    registry.counter("queries").unwrap().add(600);
    let s = registry.statistics("query_seconds").unwrap();
    for x in [100.0, 200.0, 300.0] {
        s.record(x);
    }
    let w = registry.words("distinct_users").unwrap();
    for word in ["foo", "bar", "foo"] {
        w.add(word);
    }
    let source = ReportSource::new(
        "ingester".into(),
        BuildInfo::service("1.2.3"),
        Duration::from_secs(4 * 3600),
        registry,
        vec![
            ("region".into(), json!("eu")),
            ("replicas".into(), json!(3)),
            ("weight".into(), json!(1.5)),
        ],
    );
    source.set_seed(fixed_seed());
    let slot = timefmt::parse_rfc3339("2024-08-10T12:28:28.123456789Z")
        .unwrap()
        .to_utc();
    let frozen = source.freeze(slot);
    // What the leader vets before a POST: its own frozen report, with every metric kind, passes.
    let bytes = serde_json::to_vec(&frozen).unwrap();
    assert_eq!(
        usage_reporter::shape::check(&bytes, 4.0 * 3600.0),
        Ok(()),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let report = serde_json::to_value(frozen).unwrap();
    insta::assert_json_snapshot!(report, {
        ".instanceID" => "[uuid]",
        ".version.rustVersion" => "[rust]",
        ".os" => "[os]",
        ".arch" => "[arch]",
        ".metrics.num_cpu" => "[n]",
        ".metrics.num_threads" => "[n]",
        ".metrics.cpu_usage" => "[pct]",
        ".metrics.memstats.resident_bytes" => "[bytes]",
        ".metrics.memstats.virtual_bytes" => "[bytes]",
        ".metrics.queries.rate" => "[rate]",
    });
}

#[test]
fn report_keys_and_types_match_the_contract() {
    let source = ReportSource::new(
        "all".into(),
        BuildInfo::reporter(),
        Duration::from_millis(1500),
        Arc::new(Registry::new()),
        vec![],
    );
    source.set_seed(fixed_seed());
    let r = serde_json::to_value(source.live(chrono::Utc::now())).unwrap();
    let o = r.as_object().unwrap();
    let keys: Vec<_> = o.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "clusterID",
            "createdAt",
            "interval",
            "intervalPeriod",
            "target",
            "instanceID",
            "version",
            "os",
            "arch",
            "edition",
            "metrics"
        ]
    );
    for k in [
        "clusterID",
        "createdAt",
        "interval",
        "target",
        "instanceID",
        "os",
        "arch",
        "edition",
    ] {
        assert!(o[k].is_string(), "{k}");
    }
    assert_eq!(r["intervalPeriod"], json!(1.5));
    assert!(r["version"].is_object() && r["metrics"].is_object());
    assert_eq!(r["edition"], "oss");
    uuid::Uuid::parse_str(r["instanceID"].as_str().unwrap()).unwrap();
    // Timestamps parse as RFC 3339 (what Go's time.Time unmarshals).
    for k in ["createdAt", "interval"] {
        assert!(
            timefmt::parse_rfc3339(r[k].as_str().unwrap()).is_some(),
            "{k}"
        );
    }
    let m = r["metrics"].as_object().unwrap();
    assert!(m["num_cpu"].as_u64().unwrap() >= 1);
    assert!(m["memstats"]["resident_bytes"].as_u64().unwrap() > 0);
    assert!(m["cpu_usage"].is_number());
}

fn two_pass(xs: &[f64]) -> (f64, f64, f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let min = xs.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (mean, var, min, max)
}

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-9 * scale.max(1.0)
}

proptest! {
    #[test]
    fn statistics_match_a_two_pass_reference(xs in prop::collection::vec(-1e6f64..1e6, 1..400), threads in 1usize..6) {
        let s = Arc::new(Statistics::default());
        // Spread over threads, so several shards are merged.
        std::thread::scope(|scope| {
            for chunk in xs.chunks(xs.len().div_ceil(threads)) {
                let s = s.clone();
                scope.spawn(move || for x in chunk { s.record(*x) });
            }
        });
        let (mean, var, min, max) = two_pass(&xs);
        let v = s.value();
        let scale = xs.iter().map(|x| x * x).fold(0.0, f64::max);
        prop_assert_eq!(v["count"].as_u64().unwrap(), xs.len() as u64);
        prop_assert!(close(v["avg"].as_f64().unwrap(), mean, 1e6), "{} vs {}", v["avg"], mean);
        prop_assert!(close(v["stdvar"].as_f64().unwrap(), var, scale), "{} vs {}", v["stdvar"], var);
        prop_assert_eq!(v["min"].as_f64().unwrap(), min);
        prop_assert_eq!(v["max"].as_f64().unwrap(), max);
    }
}

#[test]
fn statistics_are_stable_for_large_offsets() {
    // The naive sum-of-squares formula loses every digit here.
    let s = Statistics::default();
    for x in [1e9 + 4.0, 1e9 + 7.0, 1e9 + 13.0, 1e9 + 16.0] {
        s.record(x);
    }
    assert_eq!(s.value()["stdvar"], json!(22.5));
}

#[test]
fn many_threads_lose_no_updates() {
    let r = Registry::new();
    let c = r.counter("c").unwrap();
    let s = r.statistics("s").unwrap();
    let w = r.words("w").unwrap();
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (c, s, w) = (c.clone(), s.clone(), w.clone());
            scope.spawn(move || {
                for i in 0..20_000 {
                    c.inc();
                    s.record(1.0);
                    w.add(&format!("{}", (t * 20_000 + i) % 5_000));
                }
            });
        }
    });
    assert_eq!(c.total(), 160_000);
    assert_eq!(s.count(), 160_000);
    assert_eq!(w.count(), 5_000);
}

/// A replica in this process on a memory store, with its own registry.
async fn replica(registry: Arc<Registry>) -> usage_reporter::Replica {
    ReplicaBuilder::new()
        .with_store(Store::memory())
        .listen("127.0.0.1:0".parse().unwrap())
        .interval(Duration::from_secs(3600))
        .registry(registry)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn counter_rate_is_measured_and_reads_change_nothing() {
    let registry = Arc::new(Registry::new());
    let r = replica(registry.clone()).await;
    let c = registry.counter("requests").unwrap();
    c.add(500);
    let started = std::time::Instant::now();
    // Pacing, not a wait for a condition: the rate needs at least the 0.5 s the bound uses.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut last_rate = f64::MAX;
    for _ in 0..5 {
        let v = common::get_json(r.local_addr(), "/status/usage-stats").await;
        assert_eq!(v["metrics"]["requests"]["total"], json!(500));
        let rate = v["metrics"]["requests"]["rate"].as_f64().unwrap();
        // Over a measured interval: no more than 500 / 0.5 s, falling as time passes.
        assert!(rate > 0.0 && rate <= 500.0 / 0.5 + 1e-9, "{rate}");
        assert!(rate <= last_rate);
        last_rate = rate;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(last_rate >= 500.0 / (elapsed + 1.0), "{last_rate}");
    // Freezing the slot resets it; reading again shows the fresh slot.
    // A slot frozen over the same registry (as the replica freezes one at each slot).
    let slot = ReportSource::new(
        "ingester".into(),
        BuildInfo::reporter(),
        Duration::from_secs(3600),
        registry.clone(),
        Vec::new(),
    );
    let frozen = slot.freeze(chrono::Utc::now());
    assert_eq!(frozen.metrics["requests"]["total"], json!(500));
    let v = common::get_json(r.local_addr(), "/status/usage-stats").await;
    assert_eq!(v["metrics"]["requests"]["total"], json!(0));
    assert_eq!(v["metrics"]["requests"]["rate"], json!(0.0));
    r.shutdown().await;
}

#[tokio::test]
async fn live_report_shows_the_seed_and_the_slot_in_progress() {
    let registry = Arc::new(Registry::new());
    let r = replica(registry).await;
    common::wait_seed_known(r.local_addr()).await;
    let v = common::get_json(r.local_addr(), "/status/usage-stats").await;
    let created = timefmt::parse_rfc3339(v["createdAt"].as_str().unwrap()).unwrap();
    let slot = timefmt::parse_rfc3339(v["interval"].as_str().unwrap()).unwrap();
    let now = chrono::Utc::now();
    assert!(slot.to_utc() >= now - chrono::Duration::seconds(1));
    assert_eq!(
        (slot - created).num_nanoseconds().unwrap() % 3_600_000_000_000,
        0
    );
    let metrics = common::get_text(r.local_addr(), "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "usage_reporter_seed_known 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("usage_reporter_store_requests_total{operation=\"create\""),
        "{metrics}"
    );
    r.shutdown().await;
}

/// Values that must never show up in a report made on this machine.
fn private_values(store_path: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut buf = [0u8; 256];
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        v.push(String::from_utf8_lossy(&buf[..end]).into_owned());
    }
    if let Ok(out) = std::process::Command::new("hostname").arg("-I").output() {
        v.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
    }
    v.push("127.0.0.1".into());
    let uid = unsafe { libc::geteuid() };
    let pw = unsafe { libc::getpwuid(uid) };
    if !pw.is_null() {
        let name = unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) };
        v.push(name.to_string_lossy().into_owned());
    }
    v.push(std::env::current_dir().unwrap().display().to_string());
    v.push(store_path.to_string());
    v.push("PRIVACY-SENTINEL-7f3a".into());
    // Every environment value long enough to be recognisable.
    // (Cargo also hands the build script's compile-time values to tests as REPORTER_*; those
    // are the build's version block, not the environment of a running replica.)
    v.extend(
        std::env::vars()
            .filter(|(k, _)| !k.starts_with("REPORTER_"))
            .map(|(_, val)| val)
            .filter(|val| val.len() >= 6),
    );
    v.retain(|s| !s.is_empty());
    v
}

#[tokio::test]
async fn a_report_carries_nothing_about_the_host_user_paths_or_environment() {
    let bucket = Bucket::local();
    let p = Proc::run(&bucket, &["--target", "querier"]);
    let addr = p.addr();
    common::wait_seed_known(addr).await;
    let body = common::get_text(addr, "/status/usage-stats").await;
    let private = private_values(&bucket.url);
    assert!(private.len() > 5, "{private:?}");
    assert_private(&body, &private, "live report");
    // And the frozen report kept in the bucket, made with an environment sentinel set.
    let mut args = vec![
        "run".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--interval".into(),
        "1s".into(),
        "--collect-delay".into(),
        "100ms".into(),
    ];
    args.extend(bucket.args());
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(&args)
        .env("SECRET_TOKEN", "PRIVACY-SENTINEL-7f3a")
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let dir = std::path::Path::new(&bucket.url).join("usage/reports");
    common::eventually(Duration::from_secs(30), "a frozen report", || async {
        !walk(&dir).is_empty()
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let reports = walk(&dir);
    assert!(!reports.is_empty());
    for path in reports {
        let text = std::fs::read_to_string(&path).unwrap();
        assert_private(&text, &private, &path.display().to_string());
    }
}

/// No private value in a report: values of 4 characters or more nowhere in its text; shorter
/// ones (a host named `vm`) not as any whole key or string value, since as substrings they
/// would match UUIDs and metric names by chance.
fn assert_private(report: &str, private: &[String], what: &str) {
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    strings(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let json: serde_json::Value = serde_json::from_str(report).unwrap();
    let mut all = Vec::new();
    strings(&json, &mut all);
    for value in private {
        if value.chars().count() >= 4 {
            assert!(
                !report.contains(value.as_str()),
                "{what} contains {value:?}:\n{report}"
            );
        } else {
            assert!(
                !all.contains(value),
                "{what} has {value:?} as a key or value:\n{report}"
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn several_processes_show_one_cluster_id() {
    let bucket = Bucket::local();
    let procs: Vec<_> = (0..5)
        .map(|i| {
            Proc::run(
                &bucket,
                &["--target", if i % 2 == 0 { "ingester" } else { "querier" }],
            )
        })
        .collect();
    let mut ids = HashSet::new();
    let mut instances = HashSet::new();
    for p in &procs {
        let addr = p.addr();
        common::wait_seed_known(addr).await;
        let v = common::get_json(addr, "/status/usage-stats").await;
        ids.insert(v["clusterID"].as_str().unwrap().to_string());
        instances.insert(v["instanceID"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(instances.len(), 5);
}

#[tokio::test]
async fn disabled_reporting_touches_neither_store_nor_network() {
    // A listener that counts connections stands in for both the store and the receiver.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap: SocketAddr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("data");
    for store in [vec!["--store".to_string(), local.display().to_string()], {
        let mut a = vec!["--store".to_string(), "s3://bucket/p".into()];
        for (k, v) in common::s3_options(&format!("http://{trap}")) {
            a.push("--store-option".into());
            a.push(format!("{k}={v}"));
        }
        a
    }] {
        let mut args = vec![
            "run".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--reporting-enabled".into(),
            "false".into(),
            "--interval".into(),
            "1s".into(),
            "--collect-delay".into(),
            "100ms".into(),
            "--stats-url".into(),
            format!("http://{trap}/report"),
        ];
        args.extend(store);
        let mut p = Proc::spawn(&args);
        let addr = p.addr();
        let resp = reqwest::get(format!("http://{addr}/status/usage-stats"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "usage-stats is not enabled");
        // An absence window: two slots and more, in which a disabled replica must touch
        // neither the store nor the trap receiver.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        p.signal(libc::SIGTERM);
        assert_eq!(
            p.wait_exit(Duration::from_secs(10)).unwrap().code(),
            Some(0)
        );
        let log = p.log();
        assert!(
            log.lines().count() <= 3,
            "a line at start and at shutdown, no spam:\n{log}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "disabled reporter made a connection"
    );
    assert!(
        !local.exists(),
        "disabled reporter created its store directory"
    );
}
