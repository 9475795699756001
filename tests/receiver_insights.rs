//! Insights as an operator meets them: 20 synthetic clusters of 1 to 3 replicas, with known
//! feature flags, backends and replication factors, sent to a real `reporter receive`, rolled
//! up by `reporter rollup`; the API's shares are exact, each cluster counts once whatever its
//! replicas, a value that fewer than `--min-clusters` clusters share appears nowhere, and
//! DuckDB over the long-form Parquet agrees.

mod common;

use common::rx::{duckdb, get, post, receiver, report, uuid};
use serde_json::{json, Value};

const SECRET: &str = "host-4.secret.internal";
/// A value shared by 6 clusters that tries to break out of its label's quotes on `/metrics`.
const HOSTILE: &str = "x\"} 1\nreporter_insights_active_clusters 999\n# \\";

/// Cluster `i`'s report from replica `r` of its slot `hours_ago` back.
fn synthetic(
    cluster: &str,
    i: usize,
    r: usize,
    instance: &str,
    hours_ago: i64,
    flag_on: bool,
) -> Value {
    let backend = match i {
        0..10 => "s3",
        10..16 => "gcs",
        _ => SECRET,
    };
    let mut rep = report(cluster, hours_ago, instance, "2.9.0");
    rep["metrics"] = json!({
        // Enabled on the first replica only: the cluster has it if any replica has.
        "feature_enabled_search": if flag_on && r == 0 { 1 } else { 0 },
        "receiver_enabled_otlp": i.is_multiple_of(2),
        "storage_backend": backend,
        "ring_replication_factor": if i < 15 { 3 } else { 1 },
        "distributor_bytes_received": {"total": 1000 * (i + 1), "rate": 0.5},
        "memstats": {"heap_inuse": 1_000_000 + i * 1000},
        "ingest_mode": if i < 6 { HOSTILE } else { "plain" },
    });
    rep
}

fn values(v: &Value) -> Vec<(Value, u64)> {
    v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["value"].clone(), x["clusters"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insights_count_clusters_once_exactly_and_never_show_a_value_few_share() {
    let data = tempfile::tempdir().unwrap();
    let (_rx, addr) = receiver(data.path(), &["--rollup-every", "1h"]);
    let ids: Vec<String> = (0..20).map(|_| uuid()).collect();
    let replicas = |i: usize| 1 + i % 3;
    let instances: Vec<Vec<String>> = (0..20)
        .map(|i| (0..replicas(i)).map(|_| uuid()).collect())
        .collect();
    let mut reports = 0;
    for (i, id) in ids.iter().enumerate() {
        for (r, instance) in instances[i].iter().enumerate() {
            let body = synthetic(id, i, r, instance, 1, i < 12).to_string();
            assert_eq!(post(addr, body).await.0, 200);
            reports += 1;
        }
    }
    assert_eq!(reports, 39);
    let (code, out, err) = common::reporter(&["rollup", "--store", data.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rolled up 39 reports"), "{out}");
    let metric = |key: &'static str| async move {
        get(addr, &format!("/api/v1/metrics/{key}?days=7")).await
    };
    common::eventually(
        std::time::Duration::from_secs(10),
        "insights read",
        || async { get(addr, "/api/v1/metrics?days=7").await["clusters"] == 20 },
    )
    .await;

    let all = get(addr, "/api/v1/metrics?days=7").await;
    let keys: Vec<&str> = all["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    for k in [
        "feature_enabled_search",
        "storage_backend",
        "ring_replication_factor",
        "distributor_bytes_received.total",
        "memstats.heap_inuse",
    ] {
        assert!(keys.contains(&k), "{k} not in {keys:?}");
    }
    let flag = metric("feature_enabled_search").await;
    assert_eq!(
        (
            flag["active"].as_u64(),
            flag["clusters"].as_u64(),
            flag["kind"].as_str()
        ),
        (Some(20), Some(20), Some("flag"))
    );
    assert_eq!(values(&flag), [(json!(1), 12), (json!(0), 8)], "{flag}");
    let otlp = metric("receiver_enabled_otlp").await;
    assert_eq!(
        values(&otlp),
        [(json!("false"), 10), (json!("true"), 10)],
        "{otlp}"
    );
    let rf = metric("ring_replication_factor").await;
    assert_eq!(values(&rf), [(json!(3), 15), (json!(1), 5)], "{rf}");
    let backend = metric("storage_backend").await;
    assert_eq!(
        values(&backend),
        [(json!("s3"), 10), (json!("gcs"), 6)],
        "{backend}"
    );
    assert_eq!(backend["other"], 4);
    assert!(backend.get("quantiles").is_none(), "text has no quantiles");
    let bytes = metric("distributor_bytes_received.total").await;
    assert_eq!(bytes["kind"], "number");
    let q = &bytes["quantiles"];
    for p in ["p5", "p25", "p50", "p75", "p95"] {
        assert!(q[p].is_number(), "{p} missing: {bytes}");
    }
    assert!(
        values(&bytes).is_empty(),
        "20 distinct numbers are not listed as values"
    );
    // Grafana's series: what passes --min-clusters, nothing else.
    let exported = common::get_text(addr, "/metrics").await;
    assert!(
        exported.contains("reporter_insights_active_clusters 20"),
        "{exported}"
    );
    assert!(
        exported
            .contains("reporter_insights_metric_clusters{key=\"storage_backend\",value=\"s3\"} 10"),
        "{exported}"
    );
    assert!(
        exported.contains(
            "reporter_insights_metric_clusters{key=\"ring_replication_factor\",value=\"1\"} 5"
        ),
        "{exported}"
    );
    assert!(
        exported.contains("reporter_insights_clusters_by_version{version=\"2.9.0\"} 20"),
        "{exported}"
    );
    assert!(
        !exported.contains("memstats.heap_inuse"),
        "20 distinct numbers are not categories"
    );
    // A real OpenMetrics client reads the export whole: the hostile value is one label value,
    // exactly as sent, and the series it tried to forge is not there.
    if let Some(families) = common::openmetrics(&exported) {
        let family = |name: &str| {
            families
                .iter()
                .find(|f| f["name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {exported}"))
                .clone()
        };
        let active = family("reporter_insights_active_clusters");
        assert_eq!(
            active["samples"].as_array().map(Vec::len),
            Some(1),
            "{active}"
        );
        assert_eq!(active["samples"][0]["value"], 20.0);
        let by_value = family("reporter_insights_metric_clusters");
        let hostile: Vec<&Value> = by_value["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["labels"]["key"] == "ingest_mode" && s["labels"]["value"] == HOSTILE)
            .collect();
        assert_eq!(hostile.len(), 1, "{by_value}");
        assert_eq!(hostile[0]["value"], 6.0);
        let own = family("reporter_receiver_reports_stored");
        assert_eq!(own["type"], "counter");
        assert_eq!(own["samples"][0]["value"], 39.0, "{own}");
    }
    // The trend: today's (or, near midnight, yesterday's) slots hold all 20 clusters.
    let busiest = flag["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["clusters"].as_u64().unwrap())
        .max();
    assert_eq!(busiest, Some(20));
    let missing = get(addr, "/api/v1/metrics/nope?days=7").await;
    assert!(
        missing["error"].as_str().unwrap().contains("no metric"),
        "{missing}"
    );

    // A value of 4 clusters appears nowhere a reader can look.
    let mut seen = String::new();
    for path in [
        "/api/v1/metrics?days=30",
        "/api/v1/metrics/storage_backend?days=30",
        "/api/v1/summary?days=30",
        "/api/v1/clusters",
        "/metrics",
        "/",
    ] {
        seen.push_str(&common::get_text(addr, path).await);
    }
    assert!(!seen.contains("secret"), "a value of 4 clusters was shown");

    // DuckDB over the long form agrees with every value the API shows.
    if let Some(rows) = duckdb(
        data.path(),
        &format!("SELECT text, count(DISTINCT clusterID) FROM read_parquet('{}/metrics/**/*.parquet', hive_partitioning = true) WHERE key = 'storage_backend' GROUP BY text ORDER BY 2 DESC, 1", data.path().display()),
    ) {
        assert_eq!(rows, json!([["s3", 10], ["gcs", 6], [SECRET, 4]]));
    }

    // The dashboard answers at a glance, in a real browser: adoption bars, version
    // penetration, a chooser for any key; still nothing of the 4 clusters.
    if let Some(chromium) = common::rx::chromium() {
        let profile = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}/");
        let dom = common::rx::browse(&chromium, profile.path(), &url, &["--dump-dom"]);
        assert!(dom.contains("data-loaded=\"true\""), "{dom}");
        let adoption = &dom[dom.find("data-chart=\"adoption\"").expect("adoption chart")..];
        assert!(
            adoption.contains("data-name=\"feature_enabled_search\" data-share=\"60%\""),
            "{adoption}"
        );
        let table = &dom[dom
            .find("data-table=\"penetration\"")
            .expect("penetration table")..];
        assert!(table.contains("<td>2.9.0</td><td>100%</td>"), "{table}");
        assert!(dom.contains("<option value=\"storage_backend\">storage_backend</option>"));
        assert!(dom.contains("data-chart=\"metric\""));
        assert!(!dom.contains("secret"), "a value of 4 clusters in the page");
        let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("insights.png");
        common::rx::browse(
            &chromium,
            profile.path(),
            &url,
            &[&format!("--screenshot={}", shot.display())],
        );
        assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    }

    // A cluster moves on to a later slot with the flag off: it counts once, by its latest.
    for (r, instance) in instances[0].iter().enumerate() {
        assert_eq!(
            post(
                addr,
                synthetic(&ids[0], 0, r, instance, 0, false).to_string()
            )
            .await
            .0,
            200
        );
    }
    let (code, _, err) = common::reporter(&["rollup", "--store", data.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    common::eventually(
        std::time::Duration::from_secs(10),
        "the new slot counted",
        || async {
            values(&metric("feature_enabled_search").await) == [(json!(1), 11), (json!(0), 9)]
        },
    )
    .await;
    assert_eq!(get(addr, "/api/v1/metrics?days=7").await["clusters"], 20);
}
