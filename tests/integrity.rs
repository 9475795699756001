//! Integrity under attack and accident, with real `reporter run` processes, a real receiver on
//! 127.0.0.1, real directories and (where the store matters) moto S3:
//! 1. a deleted, corrupted or wiped seed never forks the cluster ID;
//! 2. links and garbage under `usage/reports/` are never sent;
//! 3. one oversized object does not stall delivery; `--metric` has a size cap;
//! 4. a report whose record cannot be written is not POSTed again; every POST carries an
//!    `Idempotency-Key`; a slow receiver within `--post-timeout` gets each report once;
//! 5. idle and slowloris connections cannot starve the replica;
//! 6. a redirecting receiver loses no report and learns nothing;
//! 7. duration flags have floors.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{
    eventually, get_json, key, metric_sum, metrics, wait_seed_known, Bucket, Proc, Receiver,
};
use usage_reporter::layout::{report_key, DELIVERED, LEASE_KEY, REPORTS};
use usage_reporter::seed::DEFAULT_SEED_NAME;
use usage_reporter::store::{Store, StoreError};

fn fast(receiver: &Receiver) -> Vec<String> {
    common::fast_args(&receiver.url(), "1s")
}

async fn cluster_id(addr: SocketAddr) -> String {
    get_json(addr, "/status/usage-stats").await["clusterID"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The seed bytes the lease record remembers.
async fn lease_seed(store: &Store) -> String {
    match store.get(LEASE_KEY).await {
        Ok(obj) => serde_json::from_slice::<serde_json::Value>(&obj.bytes)
            .ok()
            .and_then(|v| v["seed"].as_str().map(str::to_string))
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Deletes every object under the bucket's prefix.
async fn wipe(store: &Store) {
    for key in store.list("").await.unwrap() {
        store.delete(&key).await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. One cluster ID for ever.

const SEED_ARGS: [&str; 8] = [
    "--lease-ttl",
    "1s",
    "--interval",
    "1s",
    "--collect-delay",
    "300ms",
    "--seed-check",
    "1h",
];

/// Replicas run with ID A; the seed is deleted, then overwritten with garbage; each time a
/// replica that never saw it starts, and must adopt A and put A's exact bytes back.
async fn a_lost_seed_is_restored_with_the_same_id_by_a_newcomer(b: Bucket) {
    let store = b.store();
    let olds: Vec<_> = (0..2).map(|_| Proc::run(&b, &SEED_ARGS)).collect();
    for p in &olds {
        wait_seed_known(p.addr()).await;
    }
    let id = cluster_id(olds[0].addr()).await;
    assert_eq!(cluster_id(olds[1].addr()).await, id);
    let original = store.get(DEFAULT_SEED_NAME).await.unwrap().bytes;
    let text = String::from_utf8(original.to_vec()).unwrap();
    eventually(
        Duration::from_secs(10),
        "the lease remembers the seed",
        || {
            let (store, text) = (store.clone(), text.clone());
            async move { lease_seed(&store).await == text }
        },
    )
    .await;

    store.delete(DEFAULT_SEED_NAME).await.unwrap();
    let newcomer = Proc::run(&b, &SEED_ARGS);
    wait_seed_known(newcomer.addr()).await;
    assert_eq!(cluster_id(newcomer.addr()).await, id, "{}", newcomer.log());
    assert_eq!(store.get(DEFAULT_SEED_NAME).await.unwrap().bytes, original);
    assert!(
        newcomer.log().contains("restored it from the lease record"),
        "{}",
        newcomer.log()
    );

    let v = store.get(DEFAULT_SEED_NAME).await.unwrap().version;
    store
        .update(DEFAULT_SEED_NAME, "garbage", &v)
        .await
        .unwrap();
    let newcomer = Proc::run(&b, &SEED_ARGS);
    wait_seed_known(newcomer.addr()).await;
    assert_eq!(cluster_id(newcomer.addr()).await, id, "{}", newcomer.log());
    assert_eq!(store.get(DEFAULT_SEED_NAME).await.unwrap().bytes, original);
    for p in &olds {
        assert_eq!(cluster_id(p.addr()).await, id);
    }
}

/// Stops `procs` where none holds the local store's lock (a stopped holder would block the
/// newcomer's self-test until it resumes).
fn stop_outside_the_lock(procs: &[Proc], bucket: &Bucket) {
    let lock = Path::new(&bucket.url).join(".usage-reporter.lock");
    for _ in 0..100 {
        for p in procs {
            p.signal(libc::SIGSTOP);
        }
        let free = match std::fs::File::open(&lock) {
            Ok(f) => f.try_lock().is_ok(),
            Err(_) => true,
        };
        if free {
            return;
        }
        for p in procs {
            p.signal(libc::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the store lock was always held");
}

/// Everything is wiped while replicas with ID A are stopped; a newcomer finds nothing and draws
/// B. Once they resume, the whole cluster converges on A, the older, within a seed check or
/// two, and each change is logged once.
async fn a_wiped_bucket_converges_on_the_older_id(b: Bucket) {
    let store = b.store();
    let args = [
        "--lease-ttl",
        "1s",
        "--interval",
        "1s",
        "--collect-delay",
        "300ms",
        "--seed-check",
        "1s",
    ];
    let olds: Vec<_> = (0..2).map(|_| Proc::run(&b, &args)).collect();
    for p in &olds {
        wait_seed_known(p.addr()).await;
    }
    let a = cluster_id(olds[0].addr()).await;
    let original = store.get(DEFAULT_SEED_NAME).await.unwrap().bytes;
    if b.name == "local" {
        stop_outside_the_lock(&olds, &b);
    } else {
        for p in &olds {
            p.signal(libc::SIGSTOP);
        }
    }
    wipe(&store).await;
    let newcomer = Proc::run(&b, &args);
    wait_seed_known(newcomer.addr()).await;
    let young = cluster_id(newcomer.addr()).await;
    assert_ne!(young, a, "nothing was left to remember A");
    for p in &olds {
        p.signal(libc::SIGCONT);
    }
    let all: Vec<SocketAddr> = olds.iter().chain([&newcomer]).map(|p| p.addr()).collect();
    eventually(Duration::from_secs(15), "one cluster ID again", || {
        let (all, a, store) = (all.clone(), a.clone(), store.clone());
        async move {
            for addr in &all {
                if cluster_id(*addr).await != a {
                    return false;
                }
            }
            store
                .get(DEFAULT_SEED_NAME)
                .await
                .is_ok_and(|o| o.bytes.starts_with(format!("{{\"UID\":\"{a}\"").as_bytes()))
        }
    })
    .await;
    assert_eq!(store.get(DEFAULT_SEED_NAME).await.unwrap().bytes, original);
    // And it stays there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for addr in &all {
        assert_eq!(cluster_id(*addr).await, a);
    }
    let logs: Vec<String> = olds.iter().chain([&newcomer]).map(|p| p.log()).collect();
    assert_eq!(
        newcomer.log().matches("changes to the older one").count(),
        1,
        "{}",
        newcomer.log()
    );
    let reasserted: usize = logs
        .iter()
        .map(|l| l.matches("wrote back the older one").count())
        .sum();
    assert_eq!(reasserted, 1, "{}", logs.join("\n----\n"));
}

mod local_dir {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_seed_is_restored_with_the_same_id_by_a_newcomer() {
        super::a_lost_seed_is_restored_with_the_same_id_by_a_newcomer(Bucket::local()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wiped_bucket_converges_on_the_older_id() {
        super::a_wiped_bucket_converges_on_the_older_id(Bucket::local()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_or_garbage_report_does_not_stall_delivery() {
        super::an_oversized_or_garbage_report_does_not_stall_delivery(Bucket::local()).await
    }
}

mod s3_moto {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_seed_is_restored_with_the_same_id_by_a_newcomer() {
        if let Some(b) = Bucket::s3() {
            super::a_lost_seed_is_restored_with_the_same_id_by_a_newcomer(b).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wiped_bucket_converges_on_the_older_id() {
        if let Some(b) = Bucket::s3() {
            super::a_wiped_bucket_converges_on_the_older_id(b).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_or_garbage_report_does_not_stall_delivery() {
        if let Some(b) = Bucket::s3() {
            super::an_oversized_or_garbage_report_does_not_stall_delivery(b).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Only valid reports leave.

fn slot_dir(bucket: &Bucket, slot: chrono::DateTime<Utc>) -> std::path::PathBuf {
    let key = report_key(slot, &uuid::Uuid::new_v4().to_string());
    let dir = Path::new(&bucket.url)
        .join(key)
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_garbage_under_reports_are_never_sent() {
    let receiver = Receiver::start().await;
    let bucket = Bucket::local();
    let p = Proc::run(&bucket, &fast(&receiver));
    let addr = p.addr();
    wait_seed_known(addr).await;
    let id = cluster_id(addr).await;
    // A file elsewhere on the host, as /etc/passwd would be.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("passwd");
    std::fs::write(&secret, "root:x:0:0:SENTINEL-7f3a:/root:/bin/bash\n").unwrap();
    std::fs::write(outside.path().join("x.json"), "SENTINEL-7f3a").unwrap();

    let slot = Utc::now() - chrono::Duration::milliseconds(500);
    let dir = slot_dir(&bucket, slot);
    let name = || format!("{}.json", uuid::Uuid::new_v4());
    let link = dir.join(name());
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let garbage = dir.join(name());
    std::fs::write(&garbage, "garbage").unwrap();
    // A well-formed report whose instanceID is not its key's.
    let mismatched = dir.join(name());
    let fake = serde_json::json!({
        "clusterID": id, "createdAt": "2024-01-01T00:00:00Z", "interval": "2024-01-01T04:00:00Z",
        "intervalPeriod": 1, "instanceID": uuid::Uuid::new_v4().to_string(), "metrics": {"SENTINEL-7f3a": 1},
    });
    std::fs::write(&mismatched, fake.to_string()).unwrap();
    let stray = dir.join("notes.txt");
    std::fs::write(&stray, "SENTINEL-7f3a").unwrap();
    // A slot directory that is a link out of the bucket.
    let linked_dir = Path::new(&bucket.url)
        .join(REPORTS)
        .join(usage_reporter::slots::slot_key(
            slot - chrono::Duration::seconds(1),
        ));
    std::os::unix::fs::symlink(outside.path(), &linked_dir).unwrap();
    let planted = [&link, &garbage, &mismatched, &stray, &linked_dir];

    eventually(Duration::from_secs(60), "delivery goes on", || async {
        receiver.posts().len() >= 2 && common::slots_in(&receiver.posts()) >= 3
    })
    .await;
    let posts = receiver.posts();
    assert!(posts.len() >= 2, "delivery went on: {} posts", posts.len());
    for post in &posts {
        let body = String::from_utf8_lossy(&post.body);
        assert!(!body.contains("SENTINEL"), "sent: {body}");
        assert_eq!(post.json["clusterID"], id.as_str());
        let (c, i, n) = key(post);
        assert_eq!(post.idempotency_key, format!("{c}/{i}/{n}"));
    }
    for path in planted {
        assert!(
            std::fs::symlink_metadata(path).is_err(),
            "{} left in the bucket",
            path.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "root:x:0:0:SENTINEL-7f3a:/root:/bin/bash\n",
        "the link's target was touched"
    );
    assert!(outside.path().join("x.json").exists());
    let text = metrics(addr).await;
    assert_eq!(
        metric_sum(&text, "usage_reporter_reports_rejected_total"),
        5,
        "{text}"
    );
    let log = p.log();
    for path in planted {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            log.lines().filter(|l| l.contains(&name)).count(),
            1,
            "{name} logged once:\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. One bad object cannot stall the others.

async fn an_oversized_or_garbage_report_does_not_stall_delivery(b: Bucket) {
    let receiver = Receiver::start().await;
    let store = b.store();
    let procs: Vec<_> = (0..2).map(|_| Proc::run(&b, &fast(&receiver))).collect();
    let ids: Vec<_> = procs.iter().map(|p| p.instance_id()).collect();
    for p in &procs {
        wait_seed_known(p.addr()).await;
    }
    // Older than any real report, so a pass meets them first.
    let slot = Utc::now() - chrono::Duration::milliseconds(900);
    let huge = report_key(slot, &uuid::Uuid::new_v4().to_string());
    store.create(&huge, vec![b'x'; 2 << 20]).await.unwrap();
    let garbage = report_key(slot, &uuid::Uuid::new_v4().to_string());
    store
        .create(&garbage, "{\"not\":\"a report\"")
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "four slots delivered", || async {
        common::slots_in(&receiver.posts()) >= 4
    })
    .await;
    common::check_once_per_slot(&receiver.posts(), &ids, 3, b.name);
    for k in [&huge, &garbage] {
        assert!(
            matches!(store.get(k).await, Err(StoreError::NotFound { .. })),
            "{}: {k} left in the bucket",
            b.name
        );
    }
    let logs: String = procs.iter().map(|p| p.log()).collect();
    assert!(logs.contains("larger than"), "{logs}");
}

#[test]
fn static_metrics_over_the_cap_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("never");
    let big = |k: &str| format!("{k}={}", "v".repeat(40_000));
    let (a, b) = (big("a"), big("b"));
    let (code, err) = common::run_refused(&[
        "--store",
        store.to_str().unwrap(),
        "--metric",
        &a,
        "--metric",
        &b,
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--metric") && err.contains("65536"), "{err}");
    assert!(!store.exists());
}

// ---------------------------------------------------------------------------------------------
// 4. Bounded repeats.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_whose_records_cannot_be_written_are_posted_once() {
    let receiver = Receiver::start().await;
    let bucket = Bucket::local();
    // `usage/delivered` is a file: no record can ever be written under it.
    let usage = Path::new(&bucket.url).join("usage");
    std::fs::create_dir_all(&usage).unwrap();
    std::fs::write(usage.join("delivered"), "not a directory").unwrap();
    let procs: Vec<_> = (0..2)
        .map(|_| Proc::run(&bucket, &fast(&receiver)))
        .collect();
    let ids: Vec<_> = procs.iter().map(|p| p.instance_id()).collect();
    eventually(Duration::from_secs(60), "five slots delivered", || async {
        common::slots_in(&receiver.posts()) >= 5
    })
    .await;
    // Every report once, every slot delivered.
    common::check_once_per_slot(&receiver.posts(), &ids, 4, "unwritable records");
    for p in &procs {
        let warnings = p.log().matches("could not record it").count();
        assert!(warnings <= 1, "logged {warnings} times:\n{}", p.log());
    }
    let logs: String = procs.iter().map(|p| p.log()).collect();
    assert!(logs.contains("could not record it"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_within_the_post_timeout_gets_each_report_once_with_its_key() {
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(900));
    let bucket = Bucket::local();
    let args = [
        "--interval",
        "3s",
        "--lease-ttl",
        "1s",
        "--collect-delay",
        "300ms",
        "--retention",
        "1h",
        "--post-timeout",
        "3s",
        "--stats-url",
        &receiver.url(),
    ];
    let procs: Vec<_> = (0..2).map(|_| Proc::run(&bucket, &args)).collect();
    let ids: Vec<_> = procs.iter().map(|p| p.instance_id()).collect();
    eventually(Duration::from_secs(90), "three slots delivered", || async {
        common::slots_in(&receiver.posts()) >= 3
    })
    .await;
    let posts = receiver.posts();
    // Each report once (a slot still being delivered may lack one; the others are whole).
    let seen = common::check_once_per_slot(&posts, &[], 2, "slow receiver");
    let mut whole = std::collections::HashMap::<String, usize>::new();
    for (_, slot, id) in &seen {
        assert!(ids.contains(id));
        *whole.entry(slot.clone()).or_default() += 1;
    }
    assert!(
        whole.values().filter(|n| **n == 2).count() >= 2,
        "{whole:?}"
    );
    for post in &posts {
        let (c, i, n) = key(post);
        assert_eq!(post.idempotency_key, format!("{c}/{i}/{n}"));
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A bounded endpoint.

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_cannot_starve_the_replica() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // This test holds many sockets itself.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let receiver = Receiver::start().await;
    let bucket = Bucket::local();
    let p = Proc::run_limited(&bucket, &fast(&receiver), 256);
    let addr = p.addr();
    wait_seed_known(addr).await;
    let mut held = Vec::new();
    for i in 0..1000 {
        let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_millis(50),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        else {
            continue;
        };
        if i % 4 == 0 {
            // Slowloris: headers that never end.
            let _ = s
                .write_all(b"GET /status/usage-stats HTTP/1.1\r\nHost: x\r\n")
                .await;
        }
        held.push(s);
    }
    assert!(held.len() >= 200, "only {} connections opened", held.len());
    let attack = Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fds = open_fds(p.child.id());
    assert!(
        fds <= usage_reporter::http::MAX_CONNECTIONS + 64,
        "{fds} descriptors open during the attack"
    );
    // Past the header timeout, the server has closed what it accepted and serves new clients.
    eventually(Duration::from_secs(15), "the endpoint answers", || async {
        tokio::time::timeout(
            Duration::from_secs(1),
            reqwest::get(format!("http://{addr}/status/usage-stats")),
        )
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()))
    })
    .await;
    let mut closed = 0;
    for s in held.iter_mut().take(20) {
        let mut buf = [0u8; 512];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            closed += 1;
        } else if let Ok(Err(_)) =
            tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 10,
        "only {closed} of 20 idle connections were closed"
    );
    // The replica kept its store and its leadership: slots during the attack were delivered.
    let during: HashSet<String> = receiver
        .posts()
        .iter()
        .map(|p| p.json["interval"].as_str().unwrap_or_default().to_string())
        .filter(|s| {
            usage_reporter_core::timefmt::parse_rfc3339(s).is_some_and(|t| t.to_utc() > attack)
        })
        .collect();
    assert!(
        during.len() >= 2,
        "slots delivered during the attack: {during:?}\n{}",
        p.log()
    );
    let log = p.log();
    assert!(!log.contains("os error 24"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// 6. Redirects are not followed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirecting_receiver_loses_no_report_and_learns_nothing() {
    // Another host, which records any request it gets.
    let seen = Arc::new(AtomicUsize::new(0));
    let referers = Arc::new(Mutex::new(Vec::<String>::new()));
    let (s, r) = (seen.clone(), referers.clone());
    let thief = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            if let Some(v) = headers.get("referer") {
                r.lock()
                    .unwrap()
                    .push(v.to_str().unwrap_or_default().to_string());
            }
            "thanks"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, thief).await });

    let receiver = Receiver::start().await;
    receiver.set_redirect(Some(format!("http://{thief_addr}/steal")));
    let bucket = Bucket::local();
    let url = format!("{}?token=SECRET-TOKEN", receiver.url());
    let p = Proc::run(&bucket, &common::fast_args(&url, "1s"));
    let ids = vec![p.instance_id()];
    wait_seed_known(p.addr()).await;
    eventually(
        Duration::from_secs(30),
        "the receiver asked, twice",
        || async { receiver.failures.lock().unwrap().len() >= 2 },
    )
    .await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the other host was contacted: {:?}",
        referers.lock().unwrap()
    );
    assert!(
        !receiver.failures.lock().unwrap().is_empty(),
        "the receiver was asked"
    );
    assert!(receiver.posts().is_empty());
    assert!(
        common::objects(&bucket.store(), DELIVERED).await.is_empty(),
        "a redirected report was recorded as delivered"
    );
    // Logged once the pass's attempts are spent.
    assert!(p.wait_log("302", Duration::from_secs(10)), "{}", p.log());
    assert!(!p.log().contains("SECRET-TOKEN"), "{}", p.log());
    // The receiver is fixed: the reports of the redirected slots arrive, once each.
    let fixed = Utc::now();
    receiver.set_redirect(None);
    eventually(Duration::from_secs(60), "five slots delivered", || async {
        common::slots_in(&receiver.posts()) >= 5
    })
    .await;
    let posts = receiver.posts();
    common::check_once_per_slot(&posts, &ids, 4, "after redirects");
    assert!(
        posts.iter().any(|p| {
            usage_reporter_core::timefmt::parse_rfc3339(
                p.json["interval"].as_str().unwrap_or_default(),
            )
            .is_some_and(|t| t.to_utc() < fixed - chrono::Duration::seconds(1))
        }),
        "the reports of the redirected slots were lost"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// 7. Floors.

#[test]
fn harmful_durations_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("never");
    let store = store.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--seed-check", "1ns"],
            "--seed-check must be at least 1s",
        ),
        (
            vec!["--max-report-age", "1ns"],
            "--max-report-age (1ns) must be at least",
        ),
        (
            vec!["--post-timeout", "1ms"],
            "--post-timeout must be at least 100ms",
        ),
        (vec!["--interval", "1ns"], "--interval must be at least"),
        (vec!["--lease-ttl", "1ns"], "--lease-ttl must be at least"),
    ] {
        let mut all = vec!["--store", store];
        all.extend(args);
        let started = Instant::now();
        let (code, err) = common::run_refused(&all);
        assert_eq!(code, 2, "{all:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{all:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    assert!(
        !Path::new(store).exists(),
        "a refused run touched the store"
    );
}
