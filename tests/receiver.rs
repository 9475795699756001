//! `reporter receive` and `reporter rollup` as users meet them: real processes on real
//! directories, real replicas delivering to it over loopback, Tempo's, Loki's and Mimir's
//! report shapes, every kind of bad input, Parquet read back by a real DuckDB (PyPI `duckdb`)
//! and the dashboard rendered by a real headless Chromium (Debian's `chromium`).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use common::rx::{
    chromium, duckdb, fixture, get, inbox, post, post_with, receiver, report, stored, uuid,
};
use common::{eventually, Proc};
use serde_json::{json, Value};

/// `reporter rollup`, once a second has passed: windows end on whole seconds.
/// `reporter rollup`, right away: it takes every report stored before it started.
fn rollup_by_hand(dir: &Path) -> String {
    let (code, out, err) = common::reporter(&["rollup", "--store", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_deliver_to_a_receiver_whose_api_shows_one_cluster() {
    let data = tempfile::tempdir().unwrap();
    let (_rx, addr) = receiver(data.path(), &[]);
    let bucket = common::Bucket::local();
    let url = format!("http://{addr}/api/v1/reports");
    let mut procs: Vec<_> = (0..3)
        .map(|_| Proc::run(&bucket, &common::fast_args(&url, "1s")))
        .collect();
    let ids: HashSet<String> = procs.iter().map(|p| p.instance_id()).collect();
    // Nine reports rolled up (the rollup runs every second) before the replicas stop. Only the
    // rolled-up copies count: while a report is being rolled up it is briefly in both places.
    eventually(
        Duration::from_secs(60),
        "nine reports rolled up",
        || async {
            let inbox = data.path().join("received/inbox");
            stored(data.path())
                .iter()
                .filter(|f| !f.starts_with(&inbox))
                .count()
                >= 9
        },
    )
    .await;
    for p in &procs {
        p.signal(libc::SIGTERM);
    }
    for p in &mut procs {
        p.wait_exit(Duration::from_secs(10));
    }
    // Once rolled up, every report is in kept/ and none in the inbox.
    eventually(Duration::from_secs(15), "the inbox emptied", || async {
        inbox(data.path()).is_empty()
    })
    .await;
    let files = stored(data.path());
    assert!(files.len() >= 9, "{} reports stored", files.len());
    // Every slot directory holds one report per replica at most; some hold all three.
    let mut per_slot = std::collections::HashMap::<PathBuf, usize>::new();
    for f in &files {
        *per_slot
            .entry(f.parent().unwrap().to_path_buf())
            .or_default() += 1;
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(ids.contains(&name), "{name}");
    }
    assert!(per_slot.values().any(|n| *n == 3), "{per_slot:?}");
    // The API, once the last arrivals are rolled up.
    let n = files.len() as u64;
    eventually(
        Duration::from_secs(15),
        "every report summarised",
        || async { get(addr, "/api/v1/summary?days=2").await["reports"] == n },
    )
    .await;
    let summary = get(addr, "/api/v1/summary?days=2").await;
    assert_eq!(summary["clusters"], 1, "{summary}");
    let clusters = get(addr, "/api/v1/clusters").await;
    let list = clusters["clusters"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{clusters}");
    let c = &list[0];
    assert_eq!(c["reports"], n);
    let latest = per_slot
        .iter()
        .max_by_key(|(k, _)| k.to_path_buf())
        .map(|(_, n)| *n as u64)
        .unwrap();
    assert_eq!(c["instances"], latest, "{c}");
    assert_eq!(summary["instances"], latest);
    for k in [
        "clusterID",
        "createdAt",
        "firstSeen",
        "lastSeen",
        "version",
        "targets",
    ] {
        assert!(!c[k].is_null(), "{k} missing: {c}");
    }
    // Our replicas sign: the cluster is shown signed, and its stored objects carry the
    // signature line before the bytes received.
    assert_eq!(c["signed"], true, "{c}");
    let stored_bytes = std::fs::read(&files[0]).unwrap();
    let text = String::from_utf8(stored_bytes).unwrap();
    let (sig, body) = text.split_once('\n').unwrap();
    let sig = sig.strip_prefix('#').expect("a signature line");
    // A replay, signed, is a duplicate and stores nothing; unsigned it is refused.
    let (status, answer) = post_with(addr, body.to_string(), &[("reporter-signature", sig)]).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate")),
        "{answer}"
    );
    let (status, answer) = post(addr, body.to_string()).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(stored(data.path()).len(), files.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_on_one_bucket_store_each_report_once() {
    let data = tempfile::tempdir().unwrap();
    let (_a, a) = receiver(data.path(), &[]);
    let (_b, b) = receiver(data.path(), &[]);
    let cluster = uuid();
    let reports: Vec<Vec<u8>> = (0..20)
        .map(|i| serde_json::to_vec(&report(&cluster, i % 3, &uuid(), "1.0.0")).unwrap())
        .collect();
    let mut tasks = Vec::new();
    for r in &reports {
        for addr in [a, b] {
            let r = r.clone();
            tasks.push(tokio::spawn(async move { post(addr, r).await }));
        }
    }
    let mut outcomes = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        *outcomes
            .entry(body["status"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(outcomes["stored"], 20, "{outcomes:?}");
    assert_eq!(outcomes["duplicate"], 20, "{outcomes:?}");
    assert_eq!(stored(data.path()).len(), 20);
    // Stored as the exact bytes received.
    let mut on_disk: Vec<Vec<u8>> = stored(data.path())
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let mut sent = reports.clone();
    on_disk.sort();
    sent.sort();
    assert_eq!(on_disk, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_reports_are_accepted_and_bad_input_is_refused_storing_nothing() {
    let data = tempfile::tempdir().unwrap();
    let (rx, addr) = receiver(data.path(), &[]);
    for name in ["tempo", "loki", "mimir"] {
        let body = fixture(name, 1);
        let (status, answer) = post(addr, body.clone()).await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("stored")),
            "{name}: {answer}"
        );
        // Exact bytes, indentation and all.
        assert!(
            stored(data.path())
                .iter()
                .any(|p| std::fs::read_to_string(p).unwrap() == body),
            "{name} not stored as sent"
        );
    }
    // Loki builds a report again on each retry: other counters, same cluster, slot and target.
    let retry = fixture("loki", 1).replace("\"num_goroutine\":120", "\"num_goroutine\":121");
    let (status, answer) = post(addr, retry).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate"))
    );
    let kept = stored(data.path()).len();
    assert_eq!(kept, 3);

    let good = report(&uuid(), 1, &uuid(), "1.0.0");
    let with = |k: &str, v: Value| {
        let mut r = good.clone();
        r[k] = v;
        r.to_string()
    };
    let without = |k: &str| {
        let mut r = good.clone();
        r.as_object_mut().unwrap().remove(k);
        r.to_string()
    };
    let future = (Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    let old = (Utc::now() - chrono::Duration::days(8))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "not JSON"),
        ("[1,2,3]".into(), "not a JSON object"),
        (without("clusterID"), "clusterID"),
        (with("clusterID", json!("not-a-uuid")), "clusterID"),
        (
            with("clusterID", json!("00000000-0000-0000-0000-000000000000")),
            "clusterID",
        ),
        (with("createdAt", json!("yesterday")), "createdAt"),
        (with("interval", json!(17)), "interval"),
        (
            with("interval", json!("2025-12-31T00:00:00Z")),
            "before createdAt",
        ),
        (with("interval", json!(future)), "future"),
        (with("interval", json!(old)), "7 days"),
        (with("intervalPeriod", json!(-1)), "intervalPeriod"),
        (with("intervalPeriod", json!(1e12)), "intervalPeriod"),
        (with("instanceID", json!("me")), "instanceID"),
        (with("target", json!("x".repeat(1000))), "target"),
        (with("metrics", json!("lots")), "metrics"),
    ];
    for (body, needle) in &cases {
        let (status, answer) = post(addr, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let e = answer["error"].as_str().unwrap_or_default();
        assert!(
            e.contains(needle) && !e.contains('\n'),
            "{needle}: {answer}"
        );
    }
    let (status, answer) = post_with(
        addr,
        good.to_string(),
        &[("idempotency-key", "another/report/entirely")],
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let mut huge = good.clone();
    huge["metrics"]["pad"] = json!("x".repeat(2 << 20));
    let (status, answer) = post(addr, huge.to_string()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].is_string());
    assert_eq!(
        stored(data.path()).len(),
        kept,
        "a refused report was stored"
    );
    // The matching key is fine.
    let key = format!(
        "{}/{}/{}",
        good["clusterID"].as_str().unwrap(),
        good["interval"].as_str().unwrap(),
        good["instanceID"].as_str().unwrap()
    );
    let (status, _) = post_with(addr, good.to_string(), &[("idempotency-key", key.as_str())]).await;
    assert_eq!(status, 200);
    // No client address is kept or logged: the only address in the log is our own.
    for f in stored(data.path()) {
        assert!(!std::fs::read_to_string(f).unwrap().contains("127.0.0.1"));
    }
    let log = rx.log();
    let own = addr.to_string();
    for line in log.lines() {
        assert!(
            !line.contains("127.0.0.1") || line.contains(&own),
            "a client address in the log: {line}"
        );
    }
    let metrics = common::metrics(addr).await;
    assert!(
        common::metric_sum(&metrics, "reporter_receiver_reports_rejected_total") >= 16,
        "{metrics}"
    );
    assert_eq!(
        common::metric_sum(&metrics, "reporter_receiver_reports_stored_total"),
        4
    );
    assert_eq!(
        common::metric_sum(&metrics, "reporter_receiver_reports_duplicate_total"),
        1
    );
    assert!(
        metrics.contains("reporter_receiver_store_latency_seconds_count 5"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_told_when_to_retry_and_reads_can_need_a_token() {
    let data = tempfile::tempdir().unwrap();
    let (_rx, addr) = receiver(
        data.path(),
        &[
            "--rate-limit",
            "0.5",
            "--rate-burst",
            "3",
            "--read-token",
            "s3cret",
        ],
    );
    let cluster = uuid();
    let mut answers = Vec::new();
    for _ in 0..5 {
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/api/v1/reports"))
            .body(report(&cluster, 1, &uuid(), "1").to_string())
            .send()
            .await
            .unwrap();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        answers.push((resp.status().as_u16(), retry));
    }
    assert_eq!(
        answers.iter().map(|a| a.0).collect::<Vec<_>>(),
        [200, 200, 200, 429, 429],
        "{answers:?}"
    );
    let wait: u64 = answers[3].1.as_ref().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{answers:?}");
    assert_eq!(stored(data.path()).len(), 3);
    // Reads need the token; POSTs never do (above).
    for path in ["/", "/api/v1/summary", "/api/v1/clusters"] {
        let url = format!("http://{addr}{path}");
        let bare = reqwest::get(&url).await.unwrap().status().as_u16();
        assert_eq!(bare, 401, "{path}");
        let wrong = reqwest::Client::new()
            .get(&url)
            .bearer_auth("s3cre")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(wrong, 401, "{path}");
        let right = reqwest::Client::new()
            .get(&url)
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(right, 200, "{path}");
    }
    assert_eq!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_read_back_by_duckdb_match_the_api_survive_a_redo_and_take_late_reports() {
    let data = tempfile::tempdir().unwrap();
    // Rolls up rarely: this test rolls up by hand.
    let (_rx, addr) = receiver(data.path(), &["--rollup-every", "1h"]);
    let clusters: Vec<String> = (0..3).map(|_| uuid()).collect();
    let mut sent = 0;
    for (i, c) in clusters.iter().enumerate() {
        for hours_ago in [1, 2, 26] {
            for _ in 0..(i + 1) {
                let version = if hours_ago == 26 { "1.0.0" } else { "1.1.0" };
                let (status, _) =
                    post(addr, report(c, hours_ago, &uuid(), version).to_string()).await;
                assert_eq!(status, 200);
                sent += 1;
            }
        }
    }
    for name in ["tempo", "loki"] {
        assert_eq!(post(addr, fixture(name, 3)).await.0, 200);
        sent += 1;
    }
    // What the inbox held, to put it back below as a crashed rollup would have left it.
    let inbox_before: Vec<(PathBuf, Vec<u8>, i64)> = inbox(data.path())
        .into_iter()
        .map(|p| {
            let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
            let ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            (p.clone(), std::fs::read(&p).unwrap(), ms)
        })
        .collect();
    assert_eq!(inbox_before.len(), sent);
    let out = rollup_by_hand(data.path());
    assert!(out.contains(&format!("rolled up {sent} reports")), "{out}");
    assert!(rollup_by_hand(data.path()).contains("rolled up 0 reports"));
    let summary = get(addr, "/api/v1/summary?days=3").await;
    assert_eq!(summary["reports"], sent, "{summary}");
    assert_eq!(summary["clusters"], 5, "{summary}");

    let Some(rows) = duckdb(
        data.path(),
        "SELECT count(*), count(DISTINCT clusterID), count(DISTINCT (clusterID, interval, coalesce(instanceID, target))) FROM reports",
    ) else {
        return;
    };
    assert_eq!(rows, json!([[sent, 5, sent]]), "every report once");
    // The README's query: active clusters per version per day, against the API's days.
    let per_day = duckdb(
        data.path(),
        "SELECT strftime(interval, '%Y-%m-%d') AS day, version, count(DISTINCT clusterID) FROM reports GROUP BY ALL ORDER BY ALL",
    )
    .unwrap();
    for day in summary["days"].as_array().unwrap() {
        let mut expected = serde_json::Map::new();
        for row in per_day.as_array().unwrap() {
            if row[0] == day["day"] {
                let version = row[1].as_str().unwrap();
                let prior = expected.get(version).and_then(Value::as_u64).unwrap_or(0);
                expected.insert(version.to_string(), json!(prior + row[2].as_u64().unwrap()));
            }
        }
        assert_eq!(day["versions"], Value::Object(expected.clone()), "{day}");
        let n: u64 = per_day
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r[0] == day["day"])
            .map(|r| r[2].as_u64().unwrap())
            .sum();
        if n > 0 {
            assert!(
                day["clusters"].as_u64().unwrap() <= n && day["clusters"].as_u64().unwrap() > 0
            );
        }
    }
    let columns = duckdb(data.path(), "SELECT column_name FROM (DESCRIBE reports)").unwrap();
    let names: Vec<&str> = columns
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    for c in [
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
        "metrics",
        "receivedAt",
        "day",
    ] {
        assert!(names.contains(&c), "{c} not in {names:?}");
    }
    let cpus = duckdb(
        data.path(),
        "SELECT max(CAST(json_extract(metrics, '$.num_cpu') AS INTEGER)) FROM reports",
    )
    .unwrap();
    assert_eq!(cpus, json!([[8]]));

    // A rollup that died after writing its files, summaries and kept copies, before it
    // emptied the inbox and cleared its window: put both back as they were, and run again.
    // Nothing is counted twice.
    let state_path = data.path().join("receiver/rollup.json");
    let state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let file = std::fs::read_dir(data.path().join("rollups"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".parquet"))
        .unwrap();
    let window = file.trim_end_matches(".parquet").to_string();
    let at_ms: i64 = window.split('-').next().unwrap().parse().unwrap();
    let rows: Vec<Value> = inbox_before
        .iter()
        .map(|(p, _, ms)| json!([p.strip_prefix(data.path()).unwrap().to_str().unwrap(), ms]))
        .collect();
    std::fs::write(
        &state_path,
        json!({"windows": state["windows"], "pending": {
            "window": window, "rows": rows, "strays": [], "at_ms": at_ms, "more": false,
        }})
        .to_string(),
    )
    .unwrap();
    for (p, bytes, _) in &inbox_before {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let out = rollup_by_hand(data.path());
    assert!(out.contains(&format!("rolled up {sent} reports")), "{out}");
    assert!(inbox(data.path()).is_empty());
    assert_eq!(
        duckdb(data.path(), "SELECT count(*) FROM reports").unwrap(),
        json!([[sent]])
    );
    // The API reads the summaries again within its 2 s cache.
    eventually(
        Duration::from_secs(15),
        "the API shows every report",
        || async { get(addr, "/api/v1/summary?days=3").await["reports"] == sent },
    )
    .await;

    // A late report (a slot of yesterday, arriving now) lands in a later window, once.
    let late = report(&clusters[0], 27, &uuid(), "1.0.0");
    assert_eq!(post(addr, late.to_string()).await.0, 200);
    assert!(rollup_by_hand(data.path()).contains("rolled up 1 reports"));
    let rows = duckdb(
        data.path(),
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE instanceID = '{}') FROM reports",
            late["instanceID"].as_str().unwrap()
        ),
    )
    .unwrap();
    assert_eq!(rows, json!([[sent + 1, 1]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_its_figures_and_charts_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let data = tempfile::tempdir().unwrap();
    let (_rx, addr) = receiver(data.path(), &[]);
    for (n, version) in [(3, "1.2.0"), (2, "1.3.0"), (1, "1.3.0")] {
        let cluster = uuid();
        for hours_ago in [1, 30, 60] {
            for _ in 0..n {
                post(
                    addr,
                    report(&cluster, hours_ago, &uuid(), version).to_string(),
                )
                .await;
            }
        }
    }
    post(addr, fixture("tempo", 2)).await;
    eventually(Duration::from_secs(15), "rolled up", || async {
        get(addr, "/api/v1/summary?days=90").await["clusters"] == 4
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/");
    let browse = |extra: &[&str]| common::rx::browse(&chromium, profile.path(), &url, extra);
    let dom = browse(&["--dump-dom"]);
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    assert!(dom.contains("<b id=\"clusters-count\">4</b>"), "{dom}");
    let chart = |name: &str| -> String {
        let start = dom
            .find(&format!("data-chart=\"{name}\""))
            .unwrap_or_else(|| panic!("no {name} chart"));
        let end = dom[start..].find("</svg>").unwrap() + start;
        dom[start..end].to_string()
    };
    assert!(chart("active").contains("<polyline"));
    assert!(chart("active").matches("<circle").count() >= 3);
    for v in ["1.2.0", "1.3.0"] {
        assert!(
            chart("versions").contains(&format!("data-series=\"{v}\"")),
            "{v}"
        );
    }
    assert!(chart("os").contains("data-name=\"linux\""));
    assert!(chart("arch").contains("data-name=\"amd64\""));
    assert!(chart("targets").contains("data-name=\"ingester\""));
    assert!(chart("replicas").contains("data-name=\"3\""));
    assert_eq!(dom.matches("<td class=\"mono\">").count(), 4);
    // A screenshot for the README (docs/dashboard.png is the one committed).
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browse(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_on_s3_stores_once_and_rolls_up_every_report() {
    let Some(bucket) = common::Bucket::s3() else {
        return;
    };
    let mut args: Vec<String> = [
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--rollup-every",
        "1s",
        "--settle",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(bucket.args());
    let p = Proc::spawn(&args);
    let addr = p.logged_addr("receiver started");
    let cluster = uuid();
    let reports: Vec<String> = (0..12)
        .map(|i| report(&cluster, i % 2, &uuid(), "2.0.0").to_string())
        .collect();
    for r in &reports {
        assert_eq!(post(addr, r.clone()).await.1["status"], "stored");
    }
    for r in &reports[..4] {
        assert_eq!(post(addr, r.clone()).await.1["status"], "duplicate");
    }
    assert_eq!(post(addr, fixture("mimir", 1)).await.1["status"], "stored");
    eventually(
        Duration::from_secs(20),
        "every report rolled up",
        || async { get(addr, "/api/v1/summary?days=2").await["reports"] == 13 },
    )
    .await;
    let summary = get(addr, "/api/v1/summary?days=2").await;
    assert_eq!(summary["clusters"], 2, "{summary}");
    let store = bucket.store();
    let parquet: Vec<String> = store
        .list("rollups/")
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    assert!(!parquet.is_empty());
    assert_eq!(store.list("received/").await.unwrap().len(), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_form_metrics_dataset_has_a_row_per_leaf_and_duckdb_reads_it() {
    let data = tempfile::tempdir().unwrap();
    let (_rx, addr) = receiver(data.path(), &["--rollup-every", "1h"]);
    let (a, b) = (uuid(), uuid());
    let with = |cluster: &str, metrics: Value| {
        let mut r = report(cluster, 1, &uuid(), "1.0.0");
        r["metrics"] = metrics;
        r.to_string()
    };
    let posts = [
        with(
            &a,
            json!({"feature_enabled_x": true, "storage_backend": "s3", "ring": {"replication_factor": 3}}),
        ),
        with(
            &a,
            json!({"feature_enabled_x": false, "storage_backend": "s3", "ring": {"replication_factor": 3}}),
        ),
        with(
            &b,
            json!({"feature_enabled_x": false, "storage_backend": "gcs", "zones": ["a", "b"], "none": null}),
        ),
    ];
    for body in posts {
        assert_eq!(post(addr, body).await.0, 200);
    }
    // Right after the POSTs: every one rolled up.
    assert!(rollup_by_hand(data.path()).contains("rolled up 3 reports"));
    let glob = format!("{}/metrics/**/*.parquet", data.path().display());
    let Some(rows) = duckdb(
        data.path(),
        &format!("SELECT key, count(*), count(text), count(number), min(number), max(number) FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY key ORDER BY key"),
    ) else {
        return;
    };
    assert_eq!(
        rows,
        json!([
            ["feature_enabled_x", 3, 3, 3, 0.0, 1.0],
            ["none", 1, 0, 0, "None", "None"],
            ["ring.replication_factor", 2, 0, 2, 3.0, 3.0],
            ["storage_backend", 3, 3, 0, "None", "None"],
            ["zones.0", 1, 1, 0, "None", "None"],
            ["zones.1", 1, 1, 0, "None", "None"],
        ])
    );
    // The README's query: the share of active clusters with a feature enabled in the last 7
    // days (a cluster counts if any of its replicas reported it).
    let share = duckdb(
        data.path(),
        &format!("SELECT count(DISTINCT clusterID) FILTER (WHERE key = 'feature_enabled_x' AND number = 1) / count(DISTINCT clusterID) FROM read_parquet('{glob}', hive_partitioning = true) WHERE interval >= now() - INTERVAL 7 DAY"),
    )
    .unwrap();
    assert_eq!(share, json!([[0.5]]));
    // Columns and the Hive partition, as the contract names them.
    let cols = duckdb(
        data.path(),
        &format!("SELECT column_name FROM (DESCRIBE SELECT * FROM read_parquet('{glob}', hive_partitioning = true))"),
    )
    .unwrap();
    assert_eq!(
        cols,
        json!([
            ["clusterID"],
            ["interval"],
            ["target"],
            ["instanceID"],
            ["key"],
            ["text"],
            ["number"],
            ["day"]
        ])
    );
}
