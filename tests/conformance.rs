//! One conformance suite, run against every backend: local directory, memory, S3 (moto),
//! Azure Blob (Azurite) and GCS (the fake in `common/gcs_fake.rs`). `scripts/test.sh` starts
//! the servers; without them the S3 and Azure tests say SKIPPED, unless
//! `REPORTER_TEST_REQUIRE_BACKENDS=1`, where they fail.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Bucket, Proc, Receiver};
use tokio_util::sync::CancellationToken;
use usage_reporter::seed::DEFAULT_SEED_NAME;
use usage_reporter::store::{selftest, Store, StoreError};
use usage_reporter::BuildInfo;
use usage_reporter_core::lease::{Elector, LeaseConfig};

/// A store per racer (its own client), except memory, which only exists once.
fn racers(b: &Bucket, n: usize) -> Vec<Store> {
    (0..n).map(|_| b.store()).collect()
}

fn successes(stores: &[Store], op: &str, memory: bool) -> u64 {
    if memory {
        return stores[0].requests().get(op, "ok");
    }
    stores.iter().map(|s| s.requests().get(op, "ok")).sum()
}

async fn seed_race(b: Bucket) {
    for round in 0..3 {
        let sub = format!("round{round}/{DEFAULT_SEED_NAME}");
        let stores = racers(&b, 40);
        let before = successes(&stores, "create", !b.multi_process());
        let ids = common::agree_all(&stores, &sub).await;
        assert_eq!(ids.len(), 1, "{}: round {round}: {ids:?}", b.name);
        let after = successes(&stores, "create", !b.multi_process());
        assert_eq!(after - before, 1, "{}: one create wins", b.name);
    }
}

async fn corrupted_seed_repair(b: Bucket) {
    let setup = b.store();
    setup
        .create(DEFAULT_SEED_NAME, "{\"UID\":12}")
        .await
        .unwrap();
    let stores = racers(&b, 30);
    let ids = common::agree_all(&stores, DEFAULT_SEED_NAME).await;
    assert_eq!(ids.len(), 1, "{}: {ids:?}", b.name);
    assert_eq!(
        successes(&stores, "update", !b.multi_process()),
        1,
        "{}: one replacement wins",
        b.name
    );
    let seed =
        usage_reporter::seed::Seed::parse(&setup.get(DEFAULT_SEED_NAME).await.unwrap().bytes)
            .unwrap();
    assert_eq!(seed.uid(), ids.iter().next().unwrap());
}

async fn cas_no_lost_update(b: Bucket) {
    let key = "usage/conformance/counter.json";
    b.store().create(key, "0").await.unwrap();
    let per_task = 8;
    let stores = racers(&b, 6);
    let tasks: Vec<_> = stores
        .iter()
        .cloned()
        .map(|s| {
            tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..per_task {
                    loop {
                        let obj = s.get(key).await.unwrap();
                        let n: u64 = std::str::from_utf8(&obj.bytes).unwrap().parse().unwrap();
                        match s.update(key, (n + 1).to_string(), &obj.version).await {
                            Ok(_) => break,
                            Err(e) if e.is_conflict() => conflicts += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let obj = b.store().get(key).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&obj.bytes).unwrap(),
        (6 * per_task).to_string(),
        "{}: lost update",
        b.name
    );
    // A stale version never wins, even with the same bytes as the current content.
    let stale = obj.version.clone();
    let store = b.store();
    store.update(key, "fresh", &stale).await.unwrap();
    let err = store
        .update(key, (6 * per_task).to_string(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Precondition { .. }),
        "{}: {err}",
        b.name
    );
    eprintln!("{}: {conflicts} lost races retried", b.name);
    // Deleting is idempotent on every backend: present, then absent, then never there.
    store.delete(key).await.unwrap();
    store.delete(key).await.unwrap();
    store.delete("usage/conformance/never.json").await.unwrap();
    assert!(
        matches!(store.get(key).await, Err(StoreError::NotFound { .. })),
        "{}",
        b.name
    );
}

async fn selftest_passes(b: Bucket) {
    selftest::check(&b.store(), &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        b.store().list("usage/selftest/").await.unwrap().is_empty(),
        "{}",
        b.name
    );
}

async fn lease_handover_and_failover(b: Bucket) {
    let ttl = Duration::from_secs(3);
    let make = |s: Store| {
        Elector::new(
            s.with_timeout(ttl / 4),
            LeaseConfig::new(ttl),
            uuid::Uuid::new_v4().to_string(),
        )
    };
    let leaders: Vec<_> = racers(&b, 3).into_iter().map(make).collect();
    let stops: Vec<_> = leaders.iter().map(|_| CancellationToken::new()).collect();
    let mut tasks: Vec<_> = leaders
        .iter()
        .zip(&stops)
        .map(|(l, s)| {
            let (l, s) = (l.clone(), s.clone());
            tokio::spawn(async move { l.run(s).await })
        })
        .collect();
    let two = Arc::new(AtomicBool::new(false));
    let done = CancellationToken::new();
    let monitor = {
        let (leaders, two, done) = (leaders.clone(), two.clone(), done.clone());
        tokio::spawn(async move {
            while !done.is_cancelled() {
                if leaders.iter().filter(|l| l.term().is_some()).count() > 1 {
                    two.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let find = |timeout: Duration| {
        let leaders = leaders.clone();
        async move {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Some(i) = leaders.iter().position(|l| l.term().is_some()) {
                    return Some(i);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        }
    };
    let first = find(Duration::from_secs(10)).await.expect("a first leader");
    // Clean stop: released, taken at the next poll (2.4 s), before a TTL would run out.
    stops[first].cancel();
    tasks.remove(first).await.unwrap();
    let t = Instant::now();
    let second = find(Duration::from_secs(10))
        .await
        .expect("a successor after release");
    assert!(
        t.elapsed() < ttl,
        "{}: hand-over waited {:?}",
        b.name,
        t.elapsed()
    );
    assert_ne!(second, first);
    // Crash: no release; a successor within one TTL plus the polling period.
    let idx = if second > first { second - 1 } else { second };
    tasks.remove(idx).abort();
    // An aborted task still claims leadership until its renew deadline: that is the point.
    let t = Instant::now();
    let third = loop {
        if let Some(i) = leaders.iter().position(|l| l.term().is_some()) {
            if i != second && i != first {
                break i;
            }
        }
        assert!(t.elapsed() < ttl * 3, "{}: no failover", b.name);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        t.elapsed() < ttl + LeaseConfig::new(ttl).poll_period + Duration::from_secs(1),
        "{}: failover took {:?}",
        b.name,
        t.elapsed()
    );
    assert!(leaders[third].term().unwrap() >= 3);
    done.cancel();
    monitor.await.unwrap();
    assert!(
        !two.load(Ordering::SeqCst),
        "{}: two leaders at once",
        b.name
    );
    for s in &stops {
        s.cancel();
    }
}

/// The fork case: a deleted or corrupted seed is restored with the same ID by newcomers that
/// never saw it (from the lease record), and after a full wipe two identities converge on the
/// older one.
async fn identity_survives_the_seed(b: Bucket) {
    use usage_reporter::seed::{CheckOutcome, SeedKeeper};
    let store = b.store();
    let keeper = |s: Store| SeedKeeper::new(s, DEFAULT_SEED_NAME, BuildInfo::reporter());
    let a = keeper(store.clone())
        .agree(&CancellationToken::new())
        .await
        .unwrap();
    // A leader keeps the identity in the lease record; a clean stop leaves it there.
    let (_tx, rx) = tokio::sync::watch::channel(a.clone());
    let leader = Elector::new(
        store.clone(),
        LeaseConfig::new(Duration::from_secs(3)),
        uuid::Uuid::new_v4().to_string(),
    )
    .with_payload(Arc::new(move || {
        String::from_utf8_lossy(rx.borrow().raw()).into_owned()
    }));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (leader, stop) = (leader.clone(), stop.clone());
        async move { leader.run(stop).await }
    });
    let t = Instant::now();
    while leader.term().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}: no leader",
            b.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    task.await.unwrap();

    store.delete(DEFAULT_SEED_NAME).await.unwrap();
    let ids = common::agree_all(&racers(&b, 20), DEFAULT_SEED_NAME).await;
    assert_eq!(
        ids,
        [a.uid().to_string()].into(),
        "{}: deleted seed",
        b.name
    );
    assert_eq!(store.get(DEFAULT_SEED_NAME).await.unwrap().bytes, *a.raw());

    let v = store.get(DEFAULT_SEED_NAME).await.unwrap().version;
    store
        .update(DEFAULT_SEED_NAME, "garbage", &v)
        .await
        .unwrap();
    let ids = common::agree_all(&racers(&b, 20), DEFAULT_SEED_NAME).await;
    assert_eq!(
        ids,
        [a.uid().to_string()].into(),
        "{}: corrupted seed",
        b.name
    );
    assert_eq!(store.get(DEFAULT_SEED_NAME).await.unwrap().bytes, *a.raw());

    // Wiped: nothing remembers A, so a newcomer draws B; then A's holder meets it.
    for key in store.list("").await.unwrap() {
        store.delete(&key).await.unwrap();
    }
    let young = keeper(store.clone())
        .agree(&CancellationToken::new())
        .await
        .unwrap();
    assert_ne!(young.uid(), a.uid());
    let k = keeper(store.clone());
    assert!(matches!(k.check(&young).await, CheckOutcome::Intact));
    assert!(
        matches!(k.check(&a).await, CheckOutcome::Reasserted(ref u) if u == young.uid()),
        "{}",
        b.name
    );
    assert!(
        matches!(k.check(&young).await, CheckOutcome::Adopt(ref s) if s.uid() == a.uid()),
        "{}",
        b.name
    );
    assert!(matches!(k.check(&a).await, CheckOutcome::Intact));
    assert_eq!(store.get(DEFAULT_SEED_NAME).await.unwrap().bytes, *a.raw());
}

/// Listing pages through more than 1,000 keys (S3 and Azure answer 1,000 and 5,000 a page).
async fn listing_past_a_thousand_keys(b: Bucket) {
    use futures::StreamExt;
    let store = b.store();
    let n = 1_050;
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let store = store.clone();
            async move {
                let key = format!("usage/reports/{:020}/{:08}.json", i / 100, i);
                store.create(&key, "x").await.unwrap();
            }
        })
        .await;
    let keys = store.list("usage/reports/").await.unwrap();
    assert_eq!(keys.len(), n, "{}", b.name);
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), n, "{}: a key listed twice", b.name);
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "{}: not sorted", b.name);
}

async fn delivery_end_to_end(b: Bucket) {
    if !b.multi_process() {
        return;
    }
    let receiver = Receiver::start().await;
    let args = common::fast_args(&receiver.url(), "2s");
    let procs: Vec<_> = (0..3).map(|_| Proc::run(&b, &args)).collect();
    let ids: Vec<_> = procs.iter().map(|p| p.instance_id()).collect();
    // Four slots of 1 s: the first and the newest are not judged (see check_once_per_slot).
    common::eventually(Duration::from_secs(60), "four slots delivered", || async {
        common::slots_in(&receiver.posts()) >= 4
    })
    .await;
    common::check_once_per_slot(&receiver.posts(), &ids, 4, b.name);
}

macro_rules! backend {
    ($($name:ident => $make:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            async fn bucket() -> Option<Bucket> {
                $make
            }
            backend!(@tests seed_race, corrupted_seed_repair, cas_no_lost_update, selftest_passes,
                lease_handover_and_failover, identity_survives_the_seed, listing_past_a_thousand_keys,
                delivery_end_to_end);
        }
    )*};
    (@tests $($test:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $test() {
            if let Some(b) = bucket().await {
                super::$test(b).await
            }
        }
    )*};
}

backend! {
    local_dir => Some(Bucket::local()),
    memory => Some(Bucket::memory()),
    s3_moto => Bucket::s3(),
    azure_azurite => Bucket::azure(),
    gcs_fake => Some(Bucket::gcs().await),
}

/// S3 with conditional writes turned off in the client: the replica must refuse to run the seed
/// race and the election, in one line, with no seed written.
#[tokio::test]
async fn s3_without_conditional_writes_is_refused() {
    let Some(b) = Bucket::s3() else { return };
    let mut args: Vec<String> = vec!["run".into(), "--listen".into(), "127.0.0.1:0".into()];
    args.extend(b.args());
    args.extend([
        "--store-option".into(),
        "aws_conditional_put=disabled".into(),
    ]);
    let mut p = Proc::spawn(&args);
    let status = p.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(1));
    let log = p.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("reporter: ") && last.contains("does not support conditional writes"),
        "{log}"
    );
    assert!(matches!(
        b.store().get(DEFAULT_SEED_NAME).await,
        Err(StoreError::NotFound { .. })
    ));
}
