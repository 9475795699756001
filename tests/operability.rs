//! What an operator meets first, with real processes, real directories and moto S3: a store
//! misconfigured in each common way, a replica with read-only access, no stats URL, health
//! and readiness probes, JSON logs and levels, metrics, and the small CLI promises.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{get_json, metric_sum, metrics, wait_seed_known, Bucket, Proc, Receiver};

async fn status(addr: std::net::SocketAddr, path: &str) -> u16 {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .map_or(0, |r| r.status().as_u16())
}

// ---------------------------------------------------------------------------------------------
// Say what the store said.

#[test]
fn a_missing_bucket_ends_run_and_seed_show_with_one_line_naming_it() {
    let Ok(endpoint) = std::env::var("REPORTER_TEST_S3_ENDPOINT") else {
        if std::env::var("REPORTER_TEST_REQUIRE_BACKENDS").is_ok() {
            panic!("REPORTER_TEST_S3_ENDPOINT is not set");
        }
        return;
    };
    // An http:// endpoint and no aws_allow_http: plain HTTP is understood.
    let opts = [
        format!("aws_endpoint={endpoint}"),
        "aws_access_key_id=test".into(),
        format!("aws_secret_access_key={}", common::SECRET),
        "aws_region=us-east-1".into(),
    ];
    let mut args: Vec<String> = vec!["--store".into(), "s3://no-such-bucket-4d1f/p".into()];
    for o in &opts {
        args.extend(["--store-option".to_string(), o.clone()]);
    }
    let mut run = vec!["run".to_string(), "--listen".into(), "127.0.0.1:0".into()];
    run.extend(args.clone());
    let started = Instant::now();
    let mut p = Proc::spawn(&run);
    let status = p
        .wait_exit(Duration::from_secs(30))
        .expect("run ends by itself");
    assert_eq!(status.code(), Some(1), "{}", p.log());
    assert!(started.elapsed() < Duration::from_secs(30));
    let log = p.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("reporter: ")
            && last.contains("no-such-bucket-4d1f")
            && last.contains("does not exist")
            && last.contains("create it"),
        "{log}"
    );
    assert!(!log.contains(common::SECRET));
    let mut show = vec!["seed".to_string(), "show".into()];
    show.extend(args);
    let (code, _, err) = common::reporter(&show);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no-such-bucket-4d1f") && err.contains("does not exist"),
        "{err}"
    );
}

/// `reporter ARGS` with no cloud credentials in the environment (and `extra` set): status and
/// stderr, within `limit`.
fn without_credentials(args: &[&str], extra: &[(&str, &str)], limit: Duration) -> (i32, String) {
    let mut cmd = std::process::Command::new(common::bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(extra.iter().copied())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let out = cmd.output().unwrap();
    assert!(started.elapsed() < limit, "{:?}", started.elapsed());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_credentials_end_run_and_receive_with_one_line_naming_what_to_set() {
    // Nothing listens on 127.0.0.1:1: the endpoint and the instance metadata endpoint both
    // refuse, as on a machine without a role.
    let s3 = [
        "--store",
        "s3://bucket/p",
        "--store-option",
        "aws_endpoint=http://127.0.0.1:1",
        "--store-option",
        "aws_metadata_endpoint=http://127.0.0.1:1",
        "--store-option",
        "aws_region=us-east-1",
    ];
    for command in [
        &["run", "--listen", "127.0.0.1:0"][..],
        &["receive", "--listen", "127.0.0.1:0"][..],
    ] {
        let args: Vec<&str> = command.iter().chain(s3.iter()).copied().collect();
        let (code, err) =
            without_credentials(&args, &[("AWS_PROFILE", "prod")], Duration::from_secs(60));
        assert_eq!(code, 1, "{err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("reporter: ")
                && last.contains("no credentials for s3://bucket")
                && last.contains("AWS_ACCESS_KEY_ID"),
            "{err}"
        );
        // Said at start: the profile is not read.
        assert!(err.contains("AWS_PROFILE is set, but profiles"), "{err}");
        assert_eq!(err.matches("WARN").count(), 1, "the profile's only: {err}");
    }
}

#[test]
fn a_store_path_that_cannot_be_a_bucket_is_named() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, err) = common::run_refused(&["--store", file.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a directory"), "{err}");
    let mut p = Proc::spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "/proc/usage-reporter",
    ]);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("run ends by itself");
    assert_eq!(status.code(), Some(1), "{}", p.log());
    let log = p.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("/proc/usage-reporter") && last.contains("does not exist"),
        "{log}"
    );
    for (url, needle) in [("s3://", "needs a bucket"), ("az://", "needs a bucket")] {
        let (code, err) = common::run_refused(&["--store", url]);
        assert_eq!(code, 2, "{url}: {err}");
        assert!(err.contains(needle), "{url}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Read-only replicas still count.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_adopts_the_seed_never_leads_and_sends_its_own_reports() {
    use std::os::unix::fs::PermissionsExt;
    let receiver = Receiver::start().await;
    let bucket = Bucket::local();
    let args = common::fast_args(&receiver.url(), "1s");
    let writer = Proc::run(&bucket, &args);
    wait_seed_known(writer.addr()).await;
    let id = get_json(writer.addr(), "/status/usage-stats").await["clusterID"].clone();
    // Everything readable by all, writable by its owner (root) only.
    let root = Path::new(&bucket.url);
    std::fs::set_permissions(
        root.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let mut run: Vec<String> = vec!["run".into(), "--listen".into(), "127.0.0.1:0".into()];
    run.extend(bucket.args());
    run.extend(args.clone());
    let (reader, _exe) = Proc::spawn_as_nobody(&run);
    let addr = reader.addr();
    let instance = reader.instance_id();
    wait_seed_known(addr).await;
    assert_eq!(get_json(addr, "/status/usage-stats").await["clusterID"], id);
    assert!(
        reader.wait_log(
            "may read the store but not write it",
            Duration::from_secs(30)
        ),
        "{}",
        reader.log()
    );
    common::eventually(Duration::from_secs(30), "three of its reports", || async {
        receiver
            .posts()
            .iter()
            .filter(|p| p.json["instanceID"] == instance.as_str())
            .count()
            >= 3
    })
    .await;
    let log = reader.log();
    let text = metrics(addr).await;
    assert!(text.contains("usage_reporter_read_only 1"), "{text}");
    assert!(text.contains("usage_reporter_leader 0"), "{text}");
    assert!(!log.contains("became leader"), "{log}");
    assert_eq!(status(addr, "/ready").await, 200);
    // Its reports reach the receiver, once per slot, with their key.
    let posts = receiver.posts();
    let own: Vec<_> = posts
        .iter()
        .filter(|p| p.json["instanceID"] == instance.as_str())
        .collect();
    assert!(
        own.len() >= 3,
        "{} of its reports arrived\n{log}",
        own.len()
    );
    let slots: std::collections::HashSet<_> =
        own.iter().map(|p| p.json["interval"].to_string()).collect();
    assert_eq!(slots.len(), own.len(), "a slot sent twice");
    for p in &own {
        assert_eq!(p.json["clusterID"], id);
        assert_eq!(p.idempotency_key, {
            let (c, i, n) = common::key(p);
            format!("{c}/{i}/{n}")
        });
    }
    // And the writer's own reports are delivered as before.
    let writer_id = writer.instance_id();
    assert!(posts
        .iter()
        .any(|p| p.json["instanceID"] == writer_id.as_str()));
}

// ---------------------------------------------------------------------------------------------
// No stats URL is a normal setup.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_stats_url_reports_expire_quietly() {
    let bucket = Bucket::local();
    let p = Proc::run(
        &bucket,
        &[
            "--interval",
            "1s",
            "--lease-ttl",
            "1s",
            "--collect-delay",
            "300ms",
            "--retention",
            "2s",
        ],
    );
    let addr = p.addr();
    wait_seed_known(addr).await;
    // An absence window: seven slots, three retentions, in which no WARN may be logged.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let log = p.log();
    assert!(!log.contains("WARN"), "{log}");
    let text = metrics(addr).await;
    assert_eq!(
        metric_sum(&text, "usage_reporter_reports_dropped_total"),
        0,
        "{text}"
    );
    assert!(
        metric_sum(&text, "usage_reporter_reports_written_total") >= 5,
        "{text}"
    );
    // Nothing piles up: the reports of the last retention and the one in progress.
    let kept = common::objects(&bucket.store(), usage_reporter::layout::REPORTS).await;
    assert!(kept.len() <= 4, "{} reports kept", kept.len());
}

// ---------------------------------------------------------------------------------------------
// Health.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_at_once_and_ready_follows_the_seed_and_the_store() {
    // A store that never answers: alive, not ready, and says why.
    let mut args = vec!["run".to_string(), "--listen".into(), "127.0.0.1:0".into()];
    args.extend(common::unreachable_s3_args());
    let p = Proc::spawn(&args);
    let addr = p.addr();
    assert_eq!(status(addr, "/healthz").await, 200);
    let resp = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.text().await.unwrap().contains("seed is not known"));
    assert!(metrics(addr).await.contains("usage_reporter_ready 0"));
    // A working store: ready once the seed is known.
    let bucket = Bucket::local();
    let p = Proc::run(&bucket, &["--lease-ttl", "1s"]);
    let addr = p.addr();
    assert_eq!(status(addr, "/healthz").await, 200);
    common::eventually(Duration::from_secs(10), "ready", || async {
        status(addr, "/ready").await == 200
    })
    .await;
    assert!(metrics(addr).await.contains("usage_reporter_ready 1"));
    // Disabled reporting: nothing to wait for.
    let p = Proc::spawn(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--reporting-enabled",
        "false",
    ]);
    assert_eq!(status(p.addr(), "/ready").await, 200);
}

// ---------------------------------------------------------------------------------------------
// Logs.

#[test]
fn json_logs_parse_line_by_line_and_levels_apply() {
    let bucket = Bucket::local();
    let mut args: Vec<String> = vec!["--log-format".into(), "json".into(), "run".into()];
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    args.extend(bucket.args());
    let mut p = Proc::spawn(&args);
    assert!(
        p.wait_log("replica started", Duration::from_secs(20)),
        "{}",
        p.log()
    );
    assert!(p.wait_log("seed", Duration::from_secs(20)));
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(10));
    let log = p.log();
    let mut started = false;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["message"] == "replica started" {
            started = true;
            assert!(
                v["addr"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("127.0.0.1:")),
                "{line}"
            );
        }
    }
    assert!(started, "{log}");

    // --log-level warn: no info lines; REPORTER_LOG_LEVEL the same; RUST_LOG wins over both.
    let quiet = |env: &[(&str, &str)], flags: &[&str]| {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(flags)
            .args(["run", "--listen", "127.0.0.1:0", "--store", &bucket.url])
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        // An absence window: no info line may be logged in the first two seconds of a run.
        std::thread::sleep(Duration::from_secs(2));
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned()
    };
    let log = quiet(&[], &["--log-level", "warn"]);
    assert!(!log.contains("INFO"), "{log}");
    let log = quiet(&[("REPORTER_LOG_LEVEL", "warn")], &[]);
    assert!(!log.contains("INFO"), "{log}");
    let log = quiet(&[("RUST_LOG", "info")], &["--log-level", "error"]);
    assert!(log.contains("INFO"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_interval_is_noticed_once() {
    let bucket = Bucket::local();
    let a = Proc::run(
        &bucket,
        &[
            "--interval",
            "1s",
            "--lease-ttl",
            "1s",
            "--collect-delay",
            "300ms",
        ],
    );
    common::eventually(Duration::from_secs(10), "a leads", || async {
        metrics(a.addr()).await.contains("usage_reporter_leader 1")
    })
    .await;
    let b = Proc::run(
        &bucket,
        &[
            "--interval",
            "2s",
            "--lease-ttl",
            "1s",
            "--collect-delay",
            "300ms",
        ],
    );
    b.addr();
    // An absence window: five lease reads by b, and the mismatch logged once, not five times.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = b.log();
    assert_eq!(
        log.matches("report interval differs from the lease holder's")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("ours=2s") && log.contains("leader=1s"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_build_info_and_the_last_delivery_time() {
    let receiver = Receiver::start().await;
    let bucket = Bucket::local();
    let p = Proc::run(&bucket, &common::fast_args(&receiver.url(), "1s"));
    let addr = p.addr();
    let before = metrics(addr).await;
    assert!(
        before.contains(&format!(
            "usage_reporter_build_info{{version=\"{}\",revision=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{before}"
    );
    assert!(
        before.contains("usage_reporter_last_delivery_timestamp_seconds 0.0\n"),
        "{before}"
    );
    common::eventually(Duration::from_secs(10), "a delivery", || async {
        !receiver.posts().is_empty()
    })
    .await;
    // The gauge is set once the POST's answer is read, a moment after the receiver saw it.
    common::eventually(Duration::from_secs(10), "the delivery time set", || async {
        !metrics(addr)
            .await
            .contains("usage_reporter_last_delivery_timestamp_seconds 0.0\n")
    })
    .await;
    let text = metrics(addr).await;
    let last: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_reporter_last_delivery_timestamp_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - last).abs() < 30.0, "{last} vs {now}");
    // A real OpenMetrics client reads it all, and finds each family with its type.
    if let Some(families) = common::openmetrics(&text) {
        let kind = |name: &str| {
            families
                .iter()
                .find(|f| f["name"] == name)
                .map(|f| f["type"].as_str().unwrap_or_default().to_string())
        };
        let expected = [
            ("usage_reporter_build", "info"),
            ("usage_reporter_ready", "gauge"),
            ("usage_reporter_leader", "gauge"),
            ("usage_reporter_last_delivery_timestamp_seconds", "gauge"),
            ("usage_reporter_store_requests", "counter"),
            ("usage_reporter_reports_delivered", "counter"),
            ("usage_reporter_delivery_latency_seconds", "histogram"),
        ];
        for (name, want) in expected {
            assert_eq!(kind(name).as_deref(), Some(want), "{name} in {text}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CLI details.

#[test]
fn cli_details() {
    let (code, _, err) = common::reporter::<&str>(&[]);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("a subcommand is needed"), "{err}");
    let (code, out, _) = common::reporter(&["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")) && out.contains("revision"),
        "{out}"
    );
    let (_, out, _) = common::reporter(&["lease", "show", "--help"]);
    assert!(out.contains("--store") && out.contains("--json"), "{out}");
    assert!(!out.contains("--seed-name"), "{out}");
    let (_, out, _) = common::reporter(&["seed", "show", "--help"]);
    assert!(out.contains("--seed-name"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_lease_json_share_a_key_style_and_a_release_keeps_the_acquisition_time() {
    let bucket = Bucket::local();
    let mut p = Proc::run(&bucket, &["--lease-ttl", "1s"]);
    common::eventually(Duration::from_secs(10), "leader", || async {
        metrics(p.addr()).await.contains("usage_reporter_leader 1")
    })
    .await;
    let (_, out, _) = common::reporter(&["lease", "show", "--json", "--store", &bucket.url]);
    let held: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Pacing: renewals in between, so that a release keeping the acquisition time is seen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(10));
    let (_, out, _) = common::reporter(&["lease", "show", "--json", "--store", &bucket.url]);
    let released: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(released["released"], true, "{released}");
    assert_eq!(
        released["acquiredAt"], held["acquiredAt"],
        "{held} -> {released}"
    );
    assert_ne!(released["renewedAt"], held["renewedAt"]);
    let (_, out, _) = common::reporter(&["seed", "show", "--json", "--store", &bucket.url]);
    let seed: serde_json::Value = serde_json::from_str(&out).unwrap();
    for v in [&seed, &released] {
        for k in v.as_object().unwrap().keys() {
            assert!(!k.contains('_'), "not camelCase: {k} in {v}");
        }
    }
    assert!(seed["clusterID"].is_string() && seed["createdAt"].is_string());
}

#[test]
fn a_mistyped_flag_keeps_the_hint_and_an_empty_store_says_what_to_do() {
    let (code, err) = common::run_refused(&["--stor", "x"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("a similar argument exists: '--store'"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) =
        common::reporter(&["seed", "show", "--store", empty.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("start one with reporter run"), "{err}");
}
