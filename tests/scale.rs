//! Scale: a 1,000-replica cluster in one process on one real directory, delivering to a real
//! receiver on 127.0.0.1: every replica's report of every slot delivered, once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{key, Receiver};
use usage_reporter::stats::Registry;
use usage_reporter::store::Store;
use usage_reporter::ReplicaBuilder;

/// `n` replicas on `store`, without endpoints, each with its own registry.
pub async fn replicas(store: &Store, n: usize, stats_url: &str) -> Vec<usage_reporter::Replica> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let replica = ReplicaBuilder::new()
            .with_store(store.clone())
            .registry(Arc::new(Registry::new()))
            .without_endpoint()
            // 1,000 reports per 15 s slot: 67 a second to keep up, where this machine's debug
            // build delivers about 130 a second with its other core busy (a 2x margin; at 5 s
            // slots it fell behind).
            .interval(Duration::from_secs(15))
            .collect_delay(Duration::from_secs(2))
            .lease_ttl(Duration::from_secs(30))
            .retention(Duration::from_secs(3600))
            .stats_url(stats_url.parse().unwrap())
            .start()
            .await
            .unwrap();
        out.push(replica);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_replicas_have_every_report_delivered_once() {
    let receiver = Receiver::start().await;
    let bucket = common::Bucket::local();
    let store = bucket.store();
    let started = chrono::Utc::now();
    let cluster = replicas(&store, 1000, &receiver.url()).await;
    let ids: HashSet<String> = cluster.iter().map(|r| r.instance_id().unwrap()).collect();
    assert_eq!(ids.len(), 1000);
    // Two whole slots after every replica started, plus delivery.
    let whole = |posts: &[common::Post]| {
        let mut by_slot: HashMap<String, HashSet<String>> = HashMap::new();
        for p in posts {
            by_slot.entry(key(p).1).or_default().insert(key(p).2);
        }
        by_slot.values().filter(|s| s.len() == 1000).count()
    };
    // Start-up, then up to three slots (one may be partial) plus the collect delay and the
    // pass: 240 s leaves room for a slow start of 1,000 replicas.
    common::eventually(
        Duration::from_secs(240),
        "two whole slots delivered",
        || async { whole(&receiver.posts()) >= 2 },
    )
    .await;
    let posts = receiver.posts();
    let mut seen = HashSet::new();
    for p in &posts {
        let k = key(p);
        assert!(ids.contains(&k.2), "a report of no replica: {k:?}");
        assert!(seen.insert(k.clone()), "delivered twice: {k:?}");
        assert_eq!(p.idempotency_key, format!("{}/{}/{}", k.0, k.1, k.2));
    }
    // One cluster ID for all.
    let clusters: HashSet<_> = posts.iter().map(|p| key(p).0).collect();
    assert_eq!(clusters.len(), 1);
    // Every report kept since the start was delivered, or belongs to the slot in progress.
    let kept = store.list(usage_reporter::layout::REPORTS).await.unwrap();
    let delivered = store.list(usage_reporter::layout::DELIVERED).await.unwrap();
    assert!(kept.len() >= 2000, "{}", kept.len());
    assert!(
        kept.len() - delivered.len() <= 1000,
        "{} kept, {} delivered",
        kept.len(),
        delivered.len()
    );
    eprintln!(
        "1,000 replicas: {} reports delivered in {:?}",
        posts.len(),
        (chrono::Utc::now() - started).to_std().unwrap_or_default()
    );
    for r in cluster {
        r.shutdown().await;
    }
}
