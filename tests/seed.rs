//! Cluster identity on real local directories and real processes: the seed race, corrupted
//! seeds, foreign seeds, failing stores, bad arguments.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{reporter, Bucket, Proc};
use usage_reporter::seed::{Seed, DEFAULT_SEED_NAME};
use usage_reporter::store::Store;

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(dir),
    )
    .unwrap()
    .map(|e| e.unwrap().path())
    .collect();
    v.sort();
    v
}

/// `n` tasks race on `store`; returns the distinct cluster IDs they agreed on.
async fn race_tasks(store: &Store, n: usize) -> HashSet<String> {
    common::agree_all(&vec![store.clone(); n], DEFAULT_SEED_NAME).await
}

fn seed_on_disk(bucket: &Bucket) -> Seed {
    let bytes = std::fs::read(Path::new(&bucket.url).join(DEFAULT_SEED_NAME)).unwrap();
    Seed::parse(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_tasks_one_seed_one_create_repeatedly() {
    for round in 0..10 {
        let bucket = Bucket::local();
        let store = bucket.store();
        let ids = race_tasks(&store, 100).await;
        assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
        assert_eq!(store.requests().get("create", "ok"), 1, "round {round}");
        assert_eq!(seed_on_disk(&bucket).uid(), ids.iter().next().unwrap());
    }
}

/// Cluster ID and whether this process created the seed, from its log.
fn outcome(p: &Proc) -> (String, bool) {
    const FINAL: [&str; 3] = [
        "created the cluster seed",
        "adopted the cluster seed",
        "replaced the corrupted cluster seed",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let log = p.log();
        if let Some(line) = log.lines().find(|l| FINAL.iter().any(|f| l.contains(f))) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no seed outcome:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cluster_id="))
        .unwrap()
        .trim_matches('"')
        .to_string();
    (id, !line.contains("adopted"))
}

#[test]
fn twenty_four_processes_one_seed_repeatedly() {
    for round in 0..3 {
        let bucket = Bucket::local();
        let procs: Vec<_> = (0..24)
            .map(|_| Proc::run(&bucket, &[] as &[&str]))
            .collect();
        let outcomes: Vec<_> = procs.iter().map(outcome).collect();
        let ids: HashSet<_> = outcomes.iter().map(|(id, _)| id.clone()).collect();
        let creators = outcomes.iter().filter(|(_, c)| *c).count();
        assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
        assert_eq!(creators, 1, "round {round}: exactly one successful create");
        assert_eq!(&seed_on_disk(&bucket).uid(), ids.iter().next().unwrap());
    }
}

fn huge_object() -> Vec<u8> {
    let mut v = b"{\"UID\":\"".to_vec();
    v.extend(std::iter::repeat_n(b'a', 2 << 20));
    v.extend_from_slice(b"\"}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_corrupted_form_is_replaced_once_by_racing_tasks() {
    let mut forms: Vec<(String, Vec<u8>)> = fixtures("corrupted")
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    forms.push(("huge".into(), huge_object()));
    for (name, bytes) in forms {
        for round in 0..3 {
            let bucket = Bucket::local();
            std::fs::create_dir_all(&bucket.url).unwrap();
            std::fs::write(Path::new(&bucket.url).join(DEFAULT_SEED_NAME), &bytes).unwrap();
            let store = bucket.store();
            let ids = race_tasks(&store, 50).await;
            assert_eq!(ids.len(), 1, "{name} round {round}: {ids:?}");
            assert_eq!(
                store.requests().get("update", "ok"),
                1,
                "{name} round {round}: exactly one replacement"
            );
            assert_eq!(store.requests().get("create", "ok"), 0, "{name}");
            assert_eq!(&seed_on_disk(&bucket).uid(), ids.iter().next().unwrap());
        }
    }
}

#[test]
fn corrupted_seed_raced_by_processes() {
    for form in ["{}", "xxx"] {
        let bucket = Bucket::local();
        std::fs::create_dir_all(&bucket.url).unwrap();
        std::fs::write(Path::new(&bucket.url).join(DEFAULT_SEED_NAME), form).unwrap();
        let procs: Vec<_> = (0..12)
            .map(|_| Proc::run(&bucket, &[] as &[&str]))
            .collect();
        let ids: HashSet<_> = procs.iter().map(|p| outcome(p).0).collect();
        assert_eq!(ids.len(), 1, "{form}: {ids:?}");
        let replaced = procs
            .iter()
            .filter(|p| p.log().contains("replaced the corrupted cluster seed"))
            .count();
        assert_eq!(replaced, 1, "{form}: one replacement write wins");
        assert_eq!(&seed_on_disk(&bucket).uid(), ids.iter().next().unwrap());
    }
}

#[tokio::test]
async fn foreign_seeds_are_adopted_unchanged() {
    for path in fixtures("seeds") {
        let original = std::fs::read(&path).unwrap();
        let expected = Seed::parse(&original).unwrap();
        let bucket = Bucket::local();
        std::fs::create_dir_all(&bucket.url).unwrap();
        let seed_path = Path::new(&bucket.url).join(DEFAULT_SEED_NAME);
        std::fs::write(&seed_path, &original).unwrap();

        let (code, out, err) = reporter(&["seed", "show", "--json", "--store", &bucket.url]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["clusterID"], expected.uid(), "{}", path.display());

        let p = Proc::run(&bucket, &[] as &[&str]);
        let addr = p.addr();
        let (id, created) = outcome(&p);
        assert!(!created);
        assert_eq!(id, expected.uid());
        let report = common::get_json(addr, "/status/usage-stats").await;
        assert_eq!(report["clusterID"], expected.uid());
        let created_at: &str = report["createdAt"].as_str().unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&original).unwrap();
        // Same instant, same zone, same digits as the foreign writer's RFC 3339 (Go trims
        // trailing zeros exactly as we do).
        assert_eq!(
            created_at,
            raw["created_at"].as_str().unwrap(),
            "{}",
            path.display()
        );
        drop(p);
        assert_eq!(
            std::fs::read(&seed_path).unwrap(),
            original,
            "{} rewritten",
            path.display()
        );
    }
}

#[tokio::test]
async fn a_vanished_seed_is_restored_with_the_same_identity_by_a_running_replica() {
    let bucket = Bucket::local();
    let p = Proc::run(&bucket, &["--seed-check", "1s"]);
    let (id, _) = outcome(&p);
    let seed_path = Path::new(&bucket.url).join(DEFAULT_SEED_NAME);
    let original = std::fs::read(&seed_path).unwrap();
    std::fs::remove_file(&seed_path).unwrap();
    common::eventually(Duration::from_secs(10), "seed restored", || async {
        std::fs::read(&seed_path).is_ok()
    })
    .await;
    assert_eq!(std::fs::read(&seed_path).unwrap(), original);
    // Corrupted while running: repaired with the same bytes.
    std::fs::write(&seed_path, "{}").unwrap();
    common::eventually(Duration::from_secs(10), "seed repaired", || async {
        std::fs::read(&seed_path).unwrap_or_default() == original
    })
    .await;
    assert_eq!(seed_on_disk(&bucket).uid(), id);
}

#[test]
fn seed_show_reports_absent_corrupted_and_unreachable_in_one_line() {
    let bucket = Bucket::local();
    let (code, _, err) = reporter(&["seed", "show", "--store", &bucket.url]);
    assert_eq!(code, 1);
    assert!(err.contains("no cluster seed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    std::fs::create_dir_all(&bucket.url).unwrap();
    std::fs::write(Path::new(&bucket.url).join(DEFAULT_SEED_NAME), "{").unwrap();
    let (code, _, err) = reporter(&["seed", "show", "--store", &bucket.url]);
    assert_eq!(code, 1);
    assert!(err.contains("corrupted"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // An S3 endpoint on 127.0.0.1 where nothing listens.
    let started = Instant::now();
    let mut args = vec!["seed".to_string(), "show".into()];
    args.extend(common::unreachable_s3_args());
    let (code, _, err) = reporter(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot read the cluster seed"), "{err}");
    assert!(!err.contains("corrupted"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains(common::SECRET), "secret in output: {err}");
    // Bounded retries: three attempts, not ten minutes of them.
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn run_against_an_unreachable_store_retries_quietly_and_claims_no_corruption() {
    let mut args = vec!["run".to_string(), "--listen".into(), "127.0.0.1:0".into()];
    args.extend(common::unreachable_s3_args());
    let mut p = Proc::spawn(&args);
    p.addr();
    // An absence window: four seconds of retries in which nothing may claim corruption.
    std::thread::sleep(Duration::from_secs(4));
    p.signal(libc::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(0));
    let log = p.log();
    assert!(!log.contains("corrupted"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains(common::SECRET), "secret in the log: {log}");
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        (1..=2).contains(&warnings),
        "log once per state change, not per attempt:\n{log}"
    );
}

/// A directory this test's child process cannot write: mode 555, and when we are root the
/// child runs as `nobody`, since root ignores permission bits.
#[test]
fn read_only_directory_is_not_corruption() {
    use std::os::unix::fs::PermissionsExt;
    let bucket = Bucket::local();
    let dir = Path::new(&bucket.url);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(
        dir.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let (mut p, _exe) =
        common::Proc::spawn_as_nobody(&["run", "--listen", "127.0.0.1:0", "--store", &bucket.url]);
    assert!(
        p.wait_log(
            "waiting for a replica with write access",
            Duration::from_secs(10)
        ),
        "{}",
        p.log()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
    let log = p.log();
    assert!(log.contains("may read the store but not write it"), "{log}");
    assert!(!log.contains("corrupted"), "{log}");
    assert!(!dir.join(DEFAULT_SEED_NAME).exists());
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let cases: &[&[&str]] = &[
        &["run", "--interval", "4x"],
        &["run", "--interval", "0s"],
        &["run", "--lease-ttl", "-5m"],
        &["run", "--listen", "nonsense"],
        &["run", "--store", "ftp://host/x"],
        &["run", "--store", "file://relative"],
        &["run", "--store", "s3://b/p", "--store-option", "novalue"],
        &[
            "run",
            "--store",
            "s3://b/p",
            "--store-option",
            "not_a_key=1",
        ],
        &["run", "--stats-url", "not a url"],
        &["run", "--stats-url", "ftp://x/y"],
        &["run", "--metric", "novalue"],
        &["run", "--metric", "num_cpu=3"],
        &["run", "--reporting-enabled", "maybe"],
        &["run", "--interval", "1s", "--collect-delay", "2s"],
        &["run", "--seed-name", "../escape"],
        &["seed", "show", "--store", ""],
        &["seed"],
        &["bogus"],
        &["run", "--no-such-flag"],
    ];
    for args in cases {
        let (code, _, err) = reporter(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let (code, out, _) = reporter(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("run"));
}

#[test]
fn seed_show_prints_id_age_and_version() {
    let bucket = Bucket::local();
    std::fs::create_dir_all(&bucket.url).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/seeds/tempo.json");
    std::fs::copy(&fixture, Path::new(&bucket.url).join(DEFAULT_SEED_NAME)).unwrap();
    let (code, out, err) = reporter(&["seed", "show", "--store", &bucket.url]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("clusterID: 3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e"),
        "{out}"
    );
    assert!(
        out.contains("createdAt: 2024-08-09T18:28:28.123456789Z ("),
        "{out}"
    );
    assert!(
        out.contains(" ago)") && out.contains("\"goVersion\":\"go1.22.5\""),
        "{out}"
    );
    // The same through file:// and a custom seed name.
    std::fs::copy(
        &fixture,
        Path::new(&bucket.url).join("tempo_cluster_seed.json"),
    )
    .unwrap();
    let url = format!("file://{}", bucket.url);
    let (code, out, _) = reporter(&[
        "seed",
        "show",
        "--json",
        "--store",
        &url,
        "--seed-name",
        "tempo_cluster_seed.json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["ageSeconds"].as_u64().unwrap() > 86400 * 365);
}

#[test]
fn flags_are_read_from_the_environment() {
    let bucket = Bucket::local();
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["run", "--listen", "127.0.0.1:0"])
            .env("REPORTER_STORE", &bucket.url);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let out = run(&[("REPORTER_INTERVAL", "4x")])
        .wait_with_output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = run(&[("REPORTER_TARGET", "compactor")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Path::new(&bucket.url).join(DEFAULT_SEED_NAME).exists() {
        assert!(Instant::now() < deadline, "REPORTER_STORE was not used");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn processes_killed_during_the_race_leave_a_valid_seed() {
    for round in 0..5 {
        let bucket = Bucket::local();
        let mut procs: Vec<_> = (0..16)
            .map(|_| Proc::run(&bucket, &[] as &[&str]))
            .collect();
        // SIGKILL every other process at a random moment of its first 30 ms.
        for (i, p) in procs.iter_mut().enumerate() {
            if i % 2 == 0 {
                let delay = uuid::Uuid::new_v4().as_u128() % 30;
                std::thread::sleep(Duration::from_millis(delay as u64));
                p.kill();
            }
        }
        let survivors: Vec<_> = procs.iter().skip(1).step_by(2).collect();
        let ids: HashSet<_> = survivors.iter().map(|p| outcome(p).0).collect();
        assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
        // Never a partial seed: what is on disk parses, and a newcomer adopts it.
        assert_eq!(&seed_on_disk(&bucket).uid(), ids.iter().next().unwrap());
        let late = Proc::run(&bucket, &[] as &[&str]);
        assert_eq!(outcome(&late), (ids.into_iter().next().unwrap(), false));
    }
}
