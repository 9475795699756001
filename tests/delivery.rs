//! Elector election and delivery with real `reporter run` processes and a real receiver on
//! 127.0.0.1: every slot delivered, once per replica; leaders killed at random moments; clean
//! hand-over; a failing receiver; a receiver down past the age bound.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{eventually, Bucket, Proc, Receiver};

/// Short timings for tests: 1 s slots, 1 s lease.
fn fast(receiver: &Receiver, extra: &[&str]) -> Vec<String> {
    let mut v = common::fast_args(&receiver.url(), "1s");
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

use common::{metric_sum as counter, metrics};

async fn is_leader(addr: SocketAddr) -> bool {
    metrics(addr)
        .await
        .lines()
        .any(|l| l == "usage_reporter_leader 1")
}

async fn leader_index(procs: &[Proc], addrs: &[SocketAddr], timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for (i, a) in addrs.iter().enumerate() {
            if procs[i].child_alive() && is_leader(*a).await {
                return Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

trait Alive {
    fn child_alive(&self) -> bool;
}

impl Alive for Proc {
    fn child_alive(&self) -> bool {
        unsafe { libc::kill(self.child.id() as i32, 0) == 0 }
    }
}

use common::{key, Key};

/// Every report kept in a local bucket, as (interval, instanceID) from the file's content.
fn kept_reports(bucket: &Bucket) -> HashSet<Key> {
    let mut out = HashSet::new();
    let root = Path::new(&bucket.url).join("usage/reports");
    for slot in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(slot.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap();
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            out.insert((s("clusterID"), s("interval"), s("instanceID")));
        }
    }
    out
}

fn assert_aligned(posts: &[common::Post]) {
    for p in posts {
        let created =
            usage_reporter_core::timefmt::parse_rfc3339(p.json["createdAt"].as_str().unwrap())
                .unwrap();
        let slot =
            usage_reporter_core::timefmt::parse_rfc3339(p.json["interval"].as_str().unwrap())
                .unwrap();
        let d = (slot - created).num_nanoseconds().unwrap();
        assert!(
            d > 0 && d % 1_000_000_000 == 0,
            "slot not aligned on createdAt: {}",
            p.json
        );
        assert_eq!(p.content_type, "application/json");
        assert!(
            p.user_agent.starts_with("usage-reporter/"),
            "{}",
            p.user_agent
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slot_delivered_once_per_live_replica() {
    let receiver = Receiver::start().await;
    let bucket = Bucket::local();
    let procs: Vec<_> = (0..4)
        .map(|_| Proc::run(&bucket, &fast(&receiver, &[])))
        .collect();
    let ids: Vec<_> = procs.iter().map(|p| p.instance_id()).collect();
    // Six slots of 1 s, with a generous deadline for a busy machine.
    eventually(Duration::from_secs(60), "six slots delivered", || async {
        common::slots_in(&receiver.posts()) >= 6
    })
    .await;
    let posts = receiver.posts();
    assert_aligned(&posts);
    let seen = common::check_once_per_slot(&posts, &ids, 5, "local");
    // Whatever the bucket holds was delivered, or is about to be (the slot in progress).
    let kept = kept_reports(&bucket);
    let undelivered: Vec<_> = kept.difference(&seen).collect();
    assert!(undelivered.len() <= 4 * 2, "{undelivered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_slot_and_repeats_at_most_once_per_kill() {
    let receiver = Receiver::start().await;
    // A slow receiver stretches every delivery pass over most of the slot, so kills at random
    // moments often land in the middle of one.
    receiver.set_delay(Duration::from_millis(150));
    let bucket = Bucket::local();
    let mut procs: Vec<_> = (0..3)
        .map(|_| Proc::run(&bucket, &fast(&receiver, &[])))
        .collect();
    let mut addrs: Vec<_> = procs.iter().map(|p| p.addr()).collect();
    let kills = 6;
    let mut failovers = Vec::new();
    for k in 0..kills {
        let leader = leader_index(&procs, &addrs, Duration::from_secs(10))
            .await
            .expect("a leader");
        // A random moment within the slot, often in the middle of a delivery pass.
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
        tokio::time::sleep(Duration::from_millis(700 + jitter)).await;
        let leader = leader_index(&procs, &addrs, Duration::from_secs(10))
            .await
            .unwrap_or(leader);
        procs[leader].signal(libc::SIGKILL);
        let _ = procs[leader].wait_exit(Duration::from_secs(5));
        let killed = Instant::now();
        let next = leader_index(&procs, &addrs, Duration::from_secs(10)).await;
        assert!(next.is_some(), "kill {k}: no new leader");
        failovers.push(killed.elapsed());
        // Replace the dead replica.
        procs[leader] = Proc::run(&bucket, &fast(&receiver, &[]));
        addrs[leader] = procs[leader].addr();
    }
    // Let the last slots be delivered, then stop everyone cleanly.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in &procs {
        p.signal(libc::SIGTERM);
    }
    for p in &mut procs {
        assert_eq!(
            p.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
            Some(0)
        );
    }
    let posts = receiver.posts();
    assert_aligned(&posts);
    let mut counts: HashMap<Key, usize> = HashMap::new();
    for p in &posts {
        *counts.entry(key(p)).or_default() += 1;
    }
    let repeats: usize = counts.values().map(|c| c - 1).sum();
    assert!(
        counts.values().all(|c| *c <= 2),
        "a report sent three times: {counts:?}"
    );
    // A pass has up to 32 reports in flight at once: a leader killed between their POSTs and
    // their records may cause each of them (here at most the 3 of a slot) one repeat.
    assert!(repeats <= kills * 3, "{repeats} repeats for {kills} kills");
    // No slot lost: every report kept in the bucket, even by replicas killed after keeping it,
    // was delivered except those of the last slots still within their collect delay.
    let kept = kept_reports(&bucket);
    let delivered: HashSet<_> = counts.keys().cloned().collect();
    let missing: Vec<_> = kept.difference(&delivered).collect();
    let last_slots: HashSet<_> = {
        let mut slots: Vec<_> = kept.iter().map(|k| k.1.clone()).collect();
        slots.sort();
        slots.dedup();
        slots.into_iter().rev().take(2).collect()
    };
    assert!(
        missing.iter().all(|k| last_slots.contains(&k.1)),
        "kept but never delivered: {missing:?}"
    );
    // A new leader within one TTL plus the polling period (1 s + 0.8 s), with slack.
    for d in &failovers {
        assert!(
            *d < Duration::from_secs(5),
            "failover took {d:?}: {failovers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_and_a_follower_takes_over_before_the_ttl() {
    let receiver = Receiver::start().await;
    let bucket = Bucket::local();
    // A long TTL makes "waiting out the TTL" visible.
    let args = common::fast_args(&receiver.url(), "10s");
    let mut procs: Vec<_> = (0..3).map(|_| Proc::run(&bucket, &args)).collect();
    let addrs: Vec<_> = procs.iter().map(|p| p.addr()).collect();
    let leader = leader_index(&procs, &addrs, Duration::from_secs(20))
        .await
        .expect("a leader");
    procs[leader].signal(libc::SIGTERM);
    let status = procs[leader].wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0));
    let stopped = Instant::now();
    assert!(
        procs[leader].log().contains("released the leader lease"),
        "{}",
        procs[leader].log()
    );
    let (code, out, _) = common::reporter(&["lease", "show", "--json", "--store", &bucket.url]);
    assert_eq!(code, 0);
    let lease: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Released, or already taken by a follower quicker than this read: never still the
    // stopped leader's.
    let stopped_id = procs[leader].instance_id();
    assert_ne!(lease["holder"], serde_json::json!(stopped_id), "{lease}");
    let next = leader_index(&procs, &addrs, Duration::from_secs(20))
        .await
        .expect("a successor");
    assert_ne!(next, leader);
    // At its next poll (8 s at most), not after the 10 s TTL plus a poll.
    assert!(
        stopped.elapsed() < Duration::from_millis(9_500),
        "{:?}",
        stopped.elapsed()
    );
    let (_, out, _) = common::reporter(&["lease", "show", "--json", "--store", &bucket.url]);
    let lease: serde_json::Value = serde_json::from_str(&out).unwrap();
    let logs: Vec<_> = procs.iter().map(|p| p.log()).collect();
    assert_eq!(lease["term"], 2, "{lease}\n{}", logs.join("\n----\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_gets_everything_once_with_the_same_bytes() {
    let receiver = Receiver::start().await;
    receiver.fail_next(8);
    let bucket = Bucket::local();
    let procs: Vec<_> = (0..2)
        .map(|_| Proc::run(&bucket, &fast(&receiver, &[])))
        .collect();
    for p in &procs {
        p.addr();
    }
    // Until the 8 failed POSTs are all retried and delivered.
    eventually(
        Duration::from_secs(60),
        "every failed report delivered",
        || async {
            let posts = receiver.posts();
            let failures = receiver.failures.lock().unwrap().clone();
            failures.len() == 8
                && failures
                    .iter()
                    .all(|f| posts.iter().any(|p| key(p) == key(f)))
        },
    )
    .await;
    let posts = receiver.posts();
    let failures = receiver.failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 8, "the receiver failed 8 POSTs");
    let mut delivered: HashMap<Key, &common::Post> = HashMap::new();
    for p in &posts {
        assert!(
            delivered.insert(key(p), p).is_none(),
            "delivered twice: {:?}",
            key(p)
        );
    }
    for f in &failures {
        let ok = delivered
            .get(&key(f))
            .unwrap_or_else(|| panic!("failed report never delivered: {:?}", key(f)));
        assert_eq!(ok.body, f.body, "a retry changed the bytes");
    }
    let mut failed = 0;
    for p in &procs {
        failed += counter(
            &metrics(p.addr()).await,
            "usage_reporter_reports_failed_total",
        );
    }
    assert_eq!(failed, 8, "every failed POST counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_past_the_age_bound_drops_and_counts_old_reports() {
    // A port where nothing listens yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/report");
    let bucket = Bucket::local();
    let args = |url: &str| -> Vec<String> {
        [
            "--interval",
            "1s",
            "--lease-ttl",
            "1s",
            "--collect-delay",
            "200ms",
            "--max-report-age",
            "2s",
            "--retention",
            "1h",
            "--stats-url",
            url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let procs: Vec<_> = (0..2).map(|_| Proc::run(&bucket, &args(&url))).collect();
    let addrs: Vec<_> = procs.iter().map(|p| p.addr()).collect();
    // An absence window: nine 1 s slots with the receiver down, four and a half age bounds,
    // during which nothing may pile up.
    tokio::time::sleep(Duration::from_secs(9)).await;
    // Nothing piles up: at most the reports younger than the age bound, plus the slot in progress.
    let kept = kept_reports(&bucket);
    assert!(kept.len() <= 2 * 5, "{} reports kept", kept.len());
    let mut dropped = 0u64;
    for a in &addrs {
        dropped += counter(&metrics(*a).await, "usage_reporter_reports_dropped_total");
    }
    assert!(dropped >= 4, "dropped {dropped}");
    assert!(procs.iter().any(|p| p
        .log()
        .contains("dropping a report older than the age bound")));
    // The receiver comes back: fresh reports are delivered, none older than the bound.
    let receiver = Receiver::start_on(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let back = chrono::Utc::now();
    eventually(
        Duration::from_secs(30),
        "fresh reports delivered",
        || async { receiver.posts().len() >= 2 },
    )
    .await;
    let posts = receiver.posts();
    for p in &posts {
        let slot =
            usage_reporter_core::timefmt::parse_rfc3339(p.json["interval"].as_str().unwrap())
                .unwrap();
        assert!(
            back - slot.to_utc() < chrono::Duration::seconds(4),
            "stale report delivered: {}",
            p.json["interval"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_does_not_act_when_it_resumes() {
    let receiver = Receiver::start().await;
    let bucket = Bucket::local();
    let procs: Vec<_> = (0..3)
        .map(|_| Proc::run(&bucket, &fast(&receiver, &[])))
        .collect();
    let addrs: Vec<_> = procs.iter().map(|p| p.addr()).collect();
    let pauses = 3;
    for _ in 0..pauses {
        let leader = leader_index(&procs, &addrs, Duration::from_secs(10))
            .await
            .expect("a leader");
        // SIGSTOP for three TTLs: the others take over meanwhile.
        procs[leader].signal(libc::SIGSTOP);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let others: Vec<_> = (0..procs.len()).filter(|i| *i != leader).collect();
        let mut taken = false;
        for i in &others {
            taken |= is_leader(addrs[*i]).await;
        }
        assert!(taken, "nobody took over from a stopped leader");
        procs[leader].signal(libc::SIGCONT);
        // An absence window: the resumed process must not act as leader in the next two TTLs.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut counts: HashMap<Key, usize> = HashMap::new();
    for p in receiver.posts() {
        *counts.entry(key(&p)).or_default() += 1;
    }
    let repeats: usize = counts.values().map(|c| c - 1).sum();
    // A process stopped exactly between its leadership check and its POSTs may repeat the
    // reports it had in flight (at most the 3 of a slot here), once each; nothing else may.
    assert!(
        counts.values().all(|c| *c <= 2),
        "a report sent three times: {counts:?}"
    );
    assert!(
        repeats <= pauses * 3,
        "{repeats} repeats for {pauses} pauses: {counts:?}"
    );
    for p in &procs {
        assert!(!p.log().contains("panicked"), "{}", p.log());
    }
}
