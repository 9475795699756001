//! Helpers for the receiver's tests: `reporter receive` processes, POSTs, reports, what is
//! stored, and DuckDB over the Parquet files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::{json, Value};

use super::Proc;

/// A `reporter receive` process on `dir`, rolling up every second.
pub fn receiver(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let store = ["--store".to_string(), dir.to_string_lossy().into_owned()];
    receiver_on(&store, extra, &[])
}

/// A `reporter receive` process with these store arguments, extra flags and environment,
/// rolling up every second unless told otherwise.
pub fn receiver_on(store: &[String], extra: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut args: Vec<String> = ["receive", "--listen", "127.0.0.1:0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(store.iter().cloned());
    if !extra.contains(&"--settle") {
        args.extend(["--settle".to_string(), "1s".to_string()]);
    }
    if !extra.contains(&"--rollup-every") {
        args.extend(["--rollup-every".to_string(), "1s".to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let p = Proc::spawn_env(&args, env);
    let addr = p.logged_addr("receiver started");
    (p, addr)
}

/// `(clusterID, interval, instanceID)` of every row of every Parquet file under `rollups/`,
/// read with the parquet crate (works on every backend).
pub async fn parquet_rows(store: &usage_reporter::Store) -> Vec<(String, String, String)> {
    use arrow_array::{Array, StringArray, TimestampNanosecondArray};
    let mut rows = Vec::new();
    for key in store.list("rollups/").await.unwrap() {
        if !key.ends_with(".parquet") {
            continue;
        }
        let bytes = store.get_limited(&key, 1 << 30).await.unwrap().bytes;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let text = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let (ids, instances) = (text("clusterID"), text("instanceID"));
            let slots = batch
                .column_by_name("interval")
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .unwrap()
                .clone();
            for i in 0..batch.num_rows() {
                let instance = if instances.is_null(i) {
                    String::new()
                } else {
                    instances.value(i).to_string()
                };
                rows.push((
                    ids.value(i).to_string(),
                    slots.value(i).to_string(),
                    instance,
                ));
            }
        }
    }
    rows.sort();
    rows
}

pub async fn post(addr: SocketAddr, body: impl Into<reqwest::Body>) -> (u16, Value) {
    post_with(addr, body, &[]).await
}

pub async fn post_with(
    addr: SocketAddr,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/reports"))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn get(addr: SocketAddr, path: &str) -> Value {
    super::get_json(addr, path).await
}

/// Every report file the receiver stored, rolled up or not.
pub fn stored(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("received"))
}

/// Reports stored and not yet rolled up.
pub fn inbox(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("received/inbox"))
}

/// Every file under `root`, sorted.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

/// A report of ours for `cluster`, slot `hours_ago` hours back (on the hour), `instance`.
pub fn report(cluster: &str, hours_ago: i64, instance: &str, version: &str) -> Value {
    let slot = Utc::now() - chrono::Duration::hours(hours_ago);
    let slot = slot.format("%Y-%m-%dT%H:00:00Z").to_string();
    json!({
        "clusterID": cluster, "createdAt": "2026-01-01T00:00:00Z", "interval": slot,
        "intervalPeriod": 3600, "target": "all", "instanceID": instance,
        "version": {"version": version, "revision": "abc", "branch": "main", "buildUser": "",
                    "buildDate": "2026-01-01T00:00:00Z", "rustVersion": "1.95.0"},
        "os": "linux", "arch": "amd64", "edition": "oss", "metrics": {"num_cpu": 2},
    })
}

pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A foreign fixture with recent times filled in.
pub fn fixture(name: &str, hours_ago: i64) -> String {
    let text = std::fs::read_to_string(format!("fixtures/reports/{name}.json")).unwrap();
    let slot = (Utc::now() - chrono::Duration::hours(hours_ago))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    text.replace("CREATED_AT", "2025-06-01T10:20:30.123456789+02:00")
        .replace("INTERVAL", &slot)
}

/// The Python with duckdb and prometheus-client that the test script installs; `None` (the
/// checks of `what` skipped, and said so) when it is not configured, unless the backends are
/// required.
pub fn python(what: &str) -> Option<String> {
    match std::env::var("REPORTER_TEST_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var("REPORTER_TEST_REQUIRE_BACKENDS").is_ok() => {
            panic!("REPORTER_TEST_PYTHON is not set: run scripts/test.sh")
        }
        Err(_) => {
            eprintln!("SKIPPED: {what}: REPORTER_TEST_PYTHON is not set");
            None
        }
    }
}

/// Runs a DuckDB query over the bucket's Parquet files; `None` when no Python with duckdb is
/// configured (the test script always configures it).
pub fn duckdb(dir: &Path, sql: &str) -> Option<Value> {
    let python = python("DuckDB checks")?;
    let script = r#"
import duckdb, json, sys
con = duckdb.connect()
glob = (sys.argv[1] + "/rollups/**/*.parquet").replace("'", "''")
con.execute(f"CREATE VIEW reports AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
rows = con.execute(sys.argv[2]).fetchall()
print(json.dumps([[str(c) if not isinstance(c, (int, float)) else c for c in r] for r in rows]))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, dir.to_str().unwrap(), sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The cluster ID in a bucket's seed, once there is one.
pub async fn seed_of(store: &usage_reporter::Store) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(obj) = store.get("cluster_seed.json").await {
            if let Ok(v) = serde_json::from_slice::<Value>(&obj.bytes) {
                if let Some(id) = v["UID"].as_str() {
                    return id.to_lowercase();
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no seed in the bucket"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Debian's chromium, or `None` (skipped) outside the test script.
pub fn chromium() -> Option<String> {
    let path = std::env::var("REPORTER_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    if Path::new(&path).exists() {
        return Some(path);
    }
    if std::env::var("REPORTER_TEST_REQUIRE_BACKENDS").is_ok() {
        panic!("no chromium at {path}: run scripts/test.sh");
    }
    eprintln!("SKIPPED: browser test: no chromium at {path}");
    None
}

/// Loads `url` in headless chromium with a fresh profile under `profile`, scripts run for up
/// to 10 s of virtual time; what it prints (`--dump-dom` gives the DOM).
pub fn browse(chromium: &str, profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--window-size=1400,1300",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
