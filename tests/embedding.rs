//! The library embedded as the README shows: a service's own axum router, its own
//! `Arc<dyn ObjectStore>` (moto S3 where the test script started it, else object_store's
//! memory store), its own tracing subscriber, its own Prometheus registry; three instances on
//! one store in this process, then three processes of `examples/axum_service.rs` on one moto
//! bucket, their leader killed.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{eventually, Receiver};
use object_store::ObjectStore;
use usage_reporter::stats::Registry;
use usage_reporter::{Replica, ReplicaBuilder, StartError};

/// The service's own store: moto S3 under a fresh prefix, or one shared memory store.
fn object_store() -> (Arc<dyn ObjectStore>, String) {
    let prefix = format!("embedding-{}", uuid::Uuid::new_v4().simple());
    let Ok(endpoint) = std::env::var("REPORTER_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs the S3 half: REPORTER_TEST_S3_ENDPOINT must be set"
        );
        return (Arc::new(object_store::memory::InMemory::new()), prefix);
    };
    let bucket = std::env::var("REPORTER_TEST_S3_BUCKET").unwrap_or("reporter-test".into());
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key(common::SECRET)
        .build()
        .expect("an S3 client for moto");
    (Arc::new(s3), prefix)
}

/// One instance of the service: its own router with the report mounted, its own listener.
async fn service(
    store: Arc<dyn ObjectStore>,
    prefix: &str,
    stats_url: &str,
) -> (Replica, SocketAddr) {
    let registry = Arc::new(Registry::new());
    registry.counter("requests").unwrap().add(3);
    registry.int("shards").unwrap().add(4);
    registry.float("load").unwrap().add(0.5);
    let replica = ReplicaBuilder::new()
        .object_store(store, prefix)
        .target("querier")
        .edition("enterprise")
        .build_info(usage_reporter::BuildInfo::service("9.9.9"))
        .registry(registry)
        .interval(Duration::from_secs(1))
        .collect_delay(Duration::from_millis(300))
        .lease_ttl(Duration::from_secs(1))
        .retention(Duration::from_secs(3600))
        .stats_url(stats_url.parse().unwrap())
        .without_endpoint()
        .start()
        .await
        .expect("starts");
    // The service's own Prometheus registry, with the reporter's families registered beside
    // its own, served on its own `/metrics`.
    let mut metrics = usage_reporter::prometheus_client::registry::Registry::default();
    let served: usage_reporter::prometheus_client::metrics::counter::Counter = Default::default();
    metrics.register("service_pages", "Pages the service served", served.clone());
    replica.metrics().register(&mut metrics);
    let metrics = Arc::new(metrics);
    let app = Router::new()
        .route("/", get(|| async { "the service's own route\n" }))
        .route(
            "/metrics",
            get(move || {
                let (metrics, served) = (metrics.clone(), served.clone());
                async move {
                    served.inc();
                    let mut text = String::new();
                    usage_reporter::prometheus_client::encoding::text::encode(&mut text, &metrics)
                        .unwrap();
                    text
                }
            }),
        )
        .route("/status/usage-stats", replica.usage_stats())
        .merge(replica.health_routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (replica, addr)
}

fn subscriber() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("usage_reporter=info")
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_their_own_store_and_router_deliver_every_report_once() {
    subscriber();
    let receiver = Receiver::start().await;
    let (store, prefix) = object_store();
    let mut services = Vec::new();
    for _ in 0..3 {
        services.push(service(store.clone(), &prefix, &receiver.url()).await);
    }
    let ids: Vec<String> = services
        .iter()
        .map(|(r, _)| r.instance_id().unwrap())
        .collect();
    // Each router serves its own live report and the service's own route beside it.
    eventually(Duration::from_secs(30), "the seed known", || async {
        services.iter().all(|(r, _)| r.cluster_id().is_some())
    })
    .await;
    let cluster = services[0].0.cluster_id();
    for ((replica, addr), id) in services.iter().zip(&ids) {
        assert_eq!(replica.cluster_id(), cluster);
        let report = common::get_json(*addr, "/status/usage-stats").await;
        assert_eq!(report["instanceID"], id.as_str(), "{report}");
        assert_eq!(report["clusterID"], cluster.as_deref().unwrap(), "{report}");
        assert_eq!(report["metrics"]["requests"]["total"], 3, "{report}");
        assert_eq!(report["metrics"]["shards"], 4, "{report}");
        assert_eq!(report["metrics"]["load"], 0.5, "{report}");
        assert_eq!(report["edition"], "enterprise", "{report}");
        assert_eq!(report["version"]["version"], "9.9.9", "{report}");
        let own = common::get_text(*addr, "/").await;
        assert_eq!(own, "the service's own route\n");
    }
    eventually(Duration::from_secs(30), "ready", || async {
        let mut all = true;
        for (_, addr) in &services {
            let r = reqwest::get(format!("http://{addr}/ready")).await;
            all &= r.is_ok_and(|r| r.status() == 200);
        }
        all
    })
    .await;
    // One leader, and every report of every whole slot delivered once.
    eventually(Duration::from_secs(60), "four slots delivered", || async {
        common::slots_in(&receiver.posts()) >= 4
    })
    .await;
    let leaders = services.iter().filter(|(r, _)| r.is_leader()).count();
    assert!(leaders <= 1, "{leaders} leaders at once");
    common::check_once_per_slot(&receiver.posts(), &ids, 4, "embedded");
    // The User-Agent names the service's version beside the reporter's.
    let agent = format!(
        "usage-reporter/{} (service 9.9.9)",
        env!("CARGO_PKG_VERSION")
    );
    for p in receiver.posts() {
        assert_eq!(p.user_agent, agent);
    }
    // The service's own `/metrics` shows its families and the reporter's: store requests are
    // counted, the instances delivered reports (never more than the receiver got since), and
    // a real OpenMetrics client reads it all.
    let mut delivered = 0;
    for (_, addr) in &services {
        let text = common::get_text(*addr, "/metrics").await;
        assert!(text.contains("service_pages_total "), "{text}");
        assert!(
            common::metric_sum(&text, "usage_reporter_store_requests_total") > 0,
            "{text}"
        );
        delivered += common::metric_sum(&text, "usage_reporter_reports_delivered_total");
        if let Some(families) = common::openmetrics(&text) {
            assert!(families
                .iter()
                .any(|f| f["name"] == "usage_reporter_leader"));
        }
    }
    let posts = receiver.posts().len() as u64;
    assert!(
        delivered > 0 && delivered <= posts,
        "{delivered} delivered, {posts} received"
    );
    for (replica, _) in services {
        replica.shutdown().await;
    }
}

#[tokio::test]
async fn object_stores_local_file_system_is_refused_at_start_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let err = ReplicaBuilder::new()
        .object_store(Arc::new(local), "usage")
        .without_endpoint()
        .start()
        .await
        .expect_err("LocalFileSystem cannot compare-and-swap");
    assert!(matches!(err, StartError::NoConditionalWrites(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("LocalFileSystem"), "{message}");
    assert!(message.contains("ReplicaBuilder::store"), "{message}");
    // Nothing was written: the refusal comes before any store access.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_replica_stops_writing() {
    subscriber();
    let receiver = Receiver::start().await;
    let (store, prefix) = object_store();
    let (kept, _) = service(store.clone(), &prefix, &receiver.url()).await;
    let (dropped, _) = service(store.clone(), &prefix, &receiver.url()).await;
    let gone = dropped.instance_id().unwrap();
    let reports = object_store::path::Path::from(format!("{prefix}/usage/reports"));
    let slots_of = |id: String| {
        let (store, reports) = (store.clone(), reports.clone());
        async move {
            use futures::TryStreamExt;
            let all: Vec<_> = store.list(Some(&reports)).try_collect().await.unwrap();
            let mut slots: Vec<String> = all
                .iter()
                .filter(|o| o.location.filename() == Some(&format!("{id}.json")))
                .filter_map(|o| o.location.parts().nth(3).map(|p| p.as_ref().to_string()))
                .collect();
            slots.sort();
            slots
        }
    };
    eventually(
        Duration::from_secs(30),
        "the dropped one writes",
        || async { !slots_of(gone.clone()).await.is_empty() },
    )
    .await;
    drop(dropped);
    // Give the tasks a slot to notice, then the survivor keeps writing and the other does not.
    let mut before = slots_of(gone.clone()).await;
    let kept_id = kept.instance_id().unwrap();
    let at_drop = slots_of(kept_id.clone()).await.len();
    eventually(Duration::from_secs(30), "three more slots kept", || async {
        slots_of(kept_id.clone()).await.len() >= at_drop + 3
    })
    .await;
    let after = slots_of(gone.clone()).await;
    // At most the slot being frozen as it was dropped.
    before.sort();
    assert!(
        after.len() <= before.len() + 1,
        "a dropped replica kept writing: {} slots at drop, {} now",
        before.len(),
        after.len()
    );
    // The dropped one no longer renews the lease: the survivor leads within a TTL (1 s) or
    // two, and delivers its own reports of slots after the drop.
    eventually(Duration::from_secs(10), "the survivor leads", || async {
        kept.is_leader()
    })
    .await;
    let delivered = |posts: &[common::Post]| {
        posts
            .iter()
            .filter(|p| common::key(p).2 == kept_id.as_str())
            .count()
    };
    let at_lead = delivered(&receiver.posts());
    eventually(Duration::from_secs(30), "the survivor delivers", || async {
        delivered(&receiver.posts()) > at_lead
    })
    .await;
    kept.shutdown().await;
}

/// The example service (`examples/axum_service.rs`), which the test script builds by name
/// (`cargo build --examples`) before the tests; `None` if it is not built.
fn example_service() -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(common::bin())
        .parent()?
        .join("examples")
        .join("axum_service");
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("REPORTER_TEST_REQUIRE_BACKENDS").is_err(),
        "{} is missing: the test script builds it (cargo build --examples) before the tests",
        path.display()
    );
    eprintln!("SKIPPED: the example service is not built (cargo build --examples builds it)");
    None
}

/// The example service's `/metrics` says it leads.
async fn leads(addr: SocketAddr) -> bool {
    common::metrics(addr)
        .await
        .lines()
        .any(|l| l == "usage_reporter_leader 1")
}

/// Three processes of the example service on one moto bucket: one leads; SIGKILLed, another
/// leads within the lease TTL (1 s, 10 s allowed for a loaded machine); every slot holds the
/// survivors' reports, none sent more than twice (a kill between a POST and its record may
/// repeat that slot's reports, 3 at most), and SIGINT stops the others cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_of_the_example_service_survive_their_leader_being_killed() {
    let Some(program) = example_service() else {
        return;
    };
    let Ok(endpoint) = std::env::var("REPORTER_TEST_S3_ENDPOINT") else {
        assert!(std::env::var("CI").is_err(), "CI runs this on moto");
        eprintln!("SKIPPED: processes on one bucket need moto (REPORTER_TEST_S3_ENDPOINT)");
        return;
    };
    let bucket = std::env::var("REPORTER_TEST_S3_BUCKET").unwrap_or("reporter-test".into());
    let receiver = Receiver::start().await;
    let (url, prefix) = (
        receiver.url(),
        format!("example-{}", uuid::Uuid::new_v4().simple()),
    );
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_BUCKET_NAME", bucket.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", common::SECRET),
        ("USAGE_STATS_URL", url.as_str()),
        ("USAGE_PREFIX", prefix.as_str()),
        ("USAGE_INTERVAL_SECS", "1"),
        ("USAGE_LEASE_TTL_SECS", "1"),
    ];
    let mut procs: Vec<_> = (0..3)
        .map(|_| common::Proc::spawn_program(&program, &["127.0.0.1:0"], &env))
        .collect();
    let addrs: Vec<SocketAddr> = procs.iter().map(|p| p.logged_addr("serving")).collect();
    let mut ids = Vec::new();
    for addr in &addrs {
        let report = common::get_json(*addr, "/status/usage-stats").await;
        ids.push(
            report["instanceID"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    eventually(Duration::from_secs(60), "three slots delivered", || async {
        common::slots_in(&receiver.posts()) >= 3
    })
    .await;
    let leader = std::sync::Mutex::new(None);
    eventually(Duration::from_secs(10), "one leader", || async {
        for (i, addr) in addrs.iter().enumerate() {
            if leads(*addr).await {
                *leader.lock().unwrap() = Some(i);
                return true;
            }
        }
        false
    })
    .await;
    let killed = leader.into_inner().unwrap().expect("a leader");
    procs[killed].signal(libc::SIGKILL);
    let _ = procs[killed].wait_exit(Duration::from_secs(5));
    let slots_at_kill = common::slots_in(&receiver.posts());
    let survivors: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    eventually(Duration::from_secs(10), "a new leader", || async {
        for i in &survivors {
            if leads(addrs[*i]).await {
                return true;
            }
        }
        false
    })
    .await;
    eventually(Duration::from_secs(60), "three more slots", || async {
        common::slots_in(&receiver.posts()) >= slots_at_kill + 3
    })
    .await;
    for i in &survivors {
        procs[*i].signal(libc::SIGINT);
    }
    for i in &survivors {
        let status = procs[*i].wait_exit(Duration::from_secs(15));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{}",
            procs[*i].log()
        );
    }

    let posts = receiver.posts();
    let mut counts: std::collections::HashMap<common::Key, usize> = Default::default();
    let mut by_slot: std::collections::BTreeMap<String, std::collections::HashSet<String>> =
        Default::default();
    for p in &posts {
        let k = common::key(p);
        *counts.entry(k.clone()).or_default() += 1;
        by_slot.entry(k.1).or_default().insert(k.2);
    }
    let repeats: usize = counts.values().map(|c| c - 1).sum();
    assert!(
        counts.values().all(|c| *c <= 2),
        "sent three times: {counts:?}"
    );
    assert!(repeats <= 3, "{repeats} repeats for one kill");
    // Every slot but the first and the last (half-delivered when the wait ended) holds both
    // survivors' reports, before the kill and after it.
    let slots: Vec<_> = by_slot.keys().cloned().collect();
    for slot in &slots[1..slots.len() - 1] {
        for i in &survivors {
            assert!(
                by_slot[slot].contains(&ids[*i]),
                "slot {slot} lacks the report of survivor {}",
                ids[*i]
            );
        }
    }
    assert!(
        by_slot.values().any(|s| s.contains(&ids[killed])),
        "the killed leader's reports were delivered before it died"
    );
}
