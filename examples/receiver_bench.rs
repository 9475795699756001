//! Load and data for `scripts/bench-receiver.sh`; see that script.
//!
//! ```text
//! receiver_bench load URL N CONCURRENCY   POST N distinct reports; print reports per second
//! receiver_bench fill DIR N               store N reports of today under DIR/received/
//! receiver_bench design-point DIR         90 days of summaries, insights and the cluster list
//!                                         for 100,000 clusters of 3 (50 metric keys a report)
//! receiver_bench window-bytes DIR WINDOWS roll up WINDOWS one-minute windows of the design
//!                                         point (417 clusters of 3 each, slots 4 h apart per
//!                                         cluster, 9 days); print the reports' bytes and the
//!                                         bytes written per window over the last day
//! receiver_bench attack ADDR IDLE SLOW N  open IDLE idle and SLOW slow-body connections
//!                                         (from 127.1.x.y and 127.2.x.y, 20 per address),
//!                                         then time N legitimate POSTs; print p50 p99 max ms
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use usage_reporter_receiver::cluster_list::{self, Base, Entry};
use usage_reporter_receiver::insights::{self, Aggregate, Counted};
use usage_reporter_receiver::layout;
use usage_reporter_receiver::summary::{Cluster, Day};

/// 50 metric leaves shaped like Tempo's report: memory statistics, counters with total and
/// rate, 0/1 feature flags, a few settings and backends; varied by cluster `c`.
fn metrics(c: usize) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "memstats".into(),
        json!({"alloc": 48_723_456 + c, "total_alloc": 9_023_456_123u64 + c as u64, "sys": 112_233_445,
               "heap_alloc": 48_723_456 + c, "heap_inuse": 56_789_012 + 7 * c, "stack_inuse": 2_359_296,
               "pause_total_ns": 123_456_789 + c, "num_gc": 4321 + c % 100}),
    );
    m.insert("num_cpu".into(), json!([2, 4, 8, 16][c % 4]));
    m.insert("num_goroutine".into(), json!(400 + c % 50));
    for name in [
        "distributor_bytes_received",
        "distributor_spans_received",
        "ingester_traces_created",
        "ingester_blocks_flushed",
        "querier_queries",
        "compactor_blocks",
        "frontend_queries",
        "receiver_requests",
        "metrics_generator_spans",
        "tenant_count",
    ] {
        m.insert(
            name.into(),
            json!({"total": 1000 * (c % 97) + 17, "rate": (c % 13) as f64 * 0.1}),
        );
    }
    for (i, f) in [
        "feature_enabled_multitenancy",
        "feature_enabled_search",
        "feature_enabled_metrics_generator",
        "feature_enabled_traceql",
        "feature_enabled_streaming",
        "receiver_enabled_otlp",
        "receiver_enabled_jaeger",
        "receiver_enabled_zipkin",
        "receiver_enabled_kafka",
        "receiver_enabled_opencensus",
    ]
    .iter()
    .enumerate()
    {
        m.insert((*f).into(), json!((c * 7 + i).is_multiple_of(i + 2) as u8));
    }
    m.insert(
        "storage_backend".into(),
        json!(["s3", "gcs", "azure", "local"][c % 4]),
    );
    m.insert("ring_replication_factor".into(), json!([1, 3, 3, 5][c % 4]));
    m.insert(
        "compression".into(),
        json!(["zstd", "snappy", "none"][c % 3]),
    );
    m.insert("wal_encoding".into(), json!(["snappy", "zstd"][c % 2]));
    m.insert(
        "deployment_mode".into(),
        json!(["monolithic", "microservices"][c % 2]),
    );
    m.insert("block_retention_hours".into(), json!([336, 720, 48][c % 3]));
    m.insert("max_bytes_per_trace".into(), json!(5_000_000));
    m.insert("num_tenants_configured".into(), json!(c % 20));
    m.insert("edition".into(), json!("oss"));
    serde_json::Value::Object(m)
}

fn report(i: usize, slot: &str) -> serde_json::Value {
    // Three replicas per cluster; cluster and instance IDs derived from i, so runs repeat.
    let cluster =
        uuid::Uuid::from_u128(0x1000_0000_0000_4000_8000_0000_0000_0000 + (i / 3) as u128);
    let instance = uuid::Uuid::from_u128(0x2000_0000_0000_4000_8000_0000_0000_0000 + i as u128);
    let target = ["ingester", "querier", "distributor"][i % 3];
    let arch = ["amd64", "arm64"][i % 2];
    json!({
        "clusterID": cluster.to_string(), "createdAt": "2026-01-01T00:00:00Z", "interval": slot,
        "intervalPeriod": 14400, "target": target,
        "instanceID": instance.to_string(),
        "version": {"version": format!("1.{}.0", i % 7), "revision": "0123456789", "branch": "main",
                    "buildUser": "", "buildDate": "2026-01-01T00:00:00Z", "rustVersion": "1.95.0"},
        "os": "linux", "arch": arch, "edition": "oss",
        "metrics": metrics(i / 3),
    })
}

fn slot() -> String {
    (Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string()
}

async fn load(url: String, n: usize, concurrency: usize) {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let slot = slot();
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, url, slot) =
                (client.clone(), next.clone(), url.clone(), slot.clone());
            tokio::spawn(async move {
                let mut failed = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return failed;
                    }
                    let body = report(i, &slot).to_string();
                    match client.post(&url).body(body).send().await {
                        Ok(r) if r.status().is_success() => {}
                        _ => failed += 1,
                    }
                }
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(n);
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{:.0} {failed}", n as f64 / secs);
}

async fn fill(dir: String, n: usize) {
    let store = usage_reporter::store::open(&dir, &[]).expect("store");
    let slot = slot();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, next, slot) = (store.clone(), next.clone(), slot.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let r = report(i, &slot);
                    let received = usage_reporter_receiver::intake::parse(
                        r.to_string().as_bytes(),
                        Utc::now(),
                    )
                    .expect("valid");
                    let key = layout::inbox_key(
                        &received.cluster_id,
                        received.slot(),
                        &received.instance_key(),
                    );
                    store.create(&key, r.to_string()).await.expect("stored");
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn connect_from(
    src: std::net::Ipv4Addr,
    to: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(src.into(), 0))?;
    socket.connect(to).await
}

async fn attack(addr: std::net::SocketAddr, idle: u32, slow: u32, n: usize) {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    for i in 0..idle {
        let src = std::net::Ipv4Addr::new(127, 1, (i / 20) as u8, 1 + (i % 20) as u8);
        held.push(connect_from(src, addr).await.expect("idle connection"));
    }
    for i in 0..slow {
        let src = std::net::Ipv4Addr::new(127, 2, (i / 20) as u8, 1 + (i % 20) as u8);
        let mut s = connect_from(src, addr).await.expect("slow connection");
        let head = "POST /api/v1/reports HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{";
        s.write_all(head.as_bytes()).await.expect("slow head");
        held.push(s);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let url = format!("http://{addr}/api/v1/reports");
    let slot = slot();
    let mut ms = Vec::new();
    for i in 0..n {
        let body = report(1_000_000 + i, &slot).to_string();
        let started = Instant::now();
        let ok = client
            .post(&url)
            .body(body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        ms.push(if ok {
            started.elapsed().as_secs_f64() * 1000.0
        } else {
            f64::INFINITY
        });
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    println!("{:.1} {:.1} {:.1}", at(0.5), at(0.99), ms[ms.len() - 1]);
    drop(held);
}

/// One day's insights aggregate for `clusters` clusters of the design point.
fn design_aggregate(clusters: usize) -> Aggregate {
    let mut a = Aggregate::default();
    for c in 0..clusters {
        let leaves = usage_reporter_receiver::leaves::of_text(&metrics(c).to_string());
        a.apply_cluster(
            &Counted {
                figures: insights::merge([leaves.as_slice()]),
                version: format!("1.{}.0", c % 7),
                instances: 3,
            },
            true,
        );
    }
    a
}

fn design_point(dir: &str) {
    let clusters = 100_000usize;
    let today = Utc::now().date_naive();
    let day_of = |d: i64| {
        (today - chrono::Duration::days(d))
            .format("%Y-%m-%d")
            .to_string()
    };
    let mut base = Base::default();
    for c in 0..clusters {
        let id = uuid::Uuid::from_u128(0x1000_0000_0000_4000_8000_0000_0000_0000 + c as u128)
            .to_string();
        let cluster = Cluster {
            cluster_id: id.clone(),
            created_at: "2026-01-01T00:00:00Z".into(),
            first_seen: "2026-01-01T00:00:00Z".into(),
            last_seen: format!("{}T20:00:00Z", day_of(0)),
            version: format!("1.{}.0", c % 7),
            targets: ["ingester", "querier", "distributor"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            instances: 3,
            reports: 90 * 18,
            last_interval: format!("{}T20:00:00Z", day_of(0)),
            signed: true,
            instance_ids: true,
        };
        base.clusters.insert(
            id.clone(),
            Entry {
                id,
                rev: 1,
                cluster: Some(cluster),
            },
        );
    }
    let root = std::path::Path::new(dir);
    let write = |key: &str, bytes: Vec<u8>| {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    };
    write(cluster_list::BASE, serde_json::to_vec(&base).expect("json"));
    let stored =
        |a: &Aggregate| serde_json::to_vec(&json!({"aggregate": a, "windows": []})).expect("json");
    let daily = stored(&design_aggregate(clusters));
    write(
        &usage_reporter_receiver::figures::latest_key(&day_of(0)),
        daily.clone(),
    );
    for d in 0..90 {
        let day = day_of(d);
        let mut s = Day {
            day: day.clone(),
            reports: clusters as u64 * 18,
            ..Day::default()
        };
        s.os.insert("linux".into(), clusters as u64 * 18);
        s.arch.insert("amd64".into(), clusters as u64 * 9);
        s.arch.insert("arm64".into(), clusters as u64 * 9);
        for t in ["ingester", "querier", "distributor"] {
            s.targets.insert(t.into(), clusters as u64 * 6);
        }
        write(
            &layout::day_key(&day),
            serde_json::to_vec(&s).expect("json"),
        );
        write(
            &usage_reporter_receiver::figures::daily_key(&day),
            daily.clone(),
        );
    }
}

/// Counts the bytes written through it.
#[derive(Debug)]
struct Counting {
    inner: usage_reporter::store::local::LocalDir,
    written: AtomicUsize,
    /// By the key's first two segments, for the breakdown.
    by_prefix: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
}

impl Counting {
    fn count(&self, key: &str, n: usize) {
        self.written.fetch_add(n, Ordering::Relaxed);
        let prefix: String = key.split('/').take(2).collect::<Vec<_>>().join("/");
        let prefix = if prefix.contains("day=") || prefix.ends_with(".json") {
            key.split('/').next().unwrap_or_default().to_string()
        } else {
            prefix
        };
        *self
            .by_prefix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(prefix)
            .or_default() += n;
    }
}

#[async_trait::async_trait]
impl usage_reporter::store::Backend for Counting {
    async fn get(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<usage_reporter::store::Object, usage_reporter::store::StoreError> {
        self.inner.get(key, limit).await
    }
    async fn create(
        &self,
        key: &str,
        bytes: bytes::Bytes,
    ) -> Result<usage_reporter::store::Version, usage_reporter::store::StoreError> {
        self.count(key, bytes.len());
        self.inner.create(key, bytes).await
    }
    async fn update(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        expected: &usage_reporter::store::Version,
    ) -> Result<usage_reporter::store::Version, usage_reporter::store::StoreError> {
        self.count(key, bytes.len());
        self.inner.update(key, bytes, expected).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<usage_reporter::store::Entry>, usage_reporter::store::StoreError> {
        self.inner.list(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        bytes: bytes::Bytes,
    ) -> Result<usage_reporter::store::Version, usage_reporter::store::StoreError> {
        self.count(key, bytes.len());
        self.inner.put(key, bytes).await
    }
    async fn delete(&self, key: &str) -> Result<(), usage_reporter::store::StoreError> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Steady-state bytes written per one-minute window at the design point: 417 clusters of 3
/// report in each minute (100,000 clusters every 4 h); a cluster's slots are 4 h apart.
async fn window_bytes(dir: String, windows: usize) {
    use usage_reporter::store::Backend;
    let counting = Arc::new(Counting {
        inner: usage_reporter::store::local::LocalDir::new(&dir).expect("dir"),
        written: AtomicUsize::new(0),
        by_prefix: Default::default(),
    });
    let store = usage_reporter::store::Store::new(counting.clone());
    let per_window = 417usize;
    let groups = 6; // a cluster reports every 6 windows, each 40 simulated minutes apart
    let t0 = Utc::now() - chrono::Duration::minutes(40 * windows as i64 + 60);
    let (mut report_bytes, mut written, mut measured) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    for w in 0..windows {
        let slot = t0 + chrono::Duration::minutes(40 * w as i64);
        let slot_text = slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let now = slot + chrono::Duration::minutes(1);
        let mut bytes = 0;
        for c in 0..per_window {
            for r in 0..3 {
                let i = ((w % groups) * per_window + c) * 3 + r;
                let body = report(i, &slot_text).to_string();
                let received =
                    usage_reporter_receiver::intake::parse(body.as_bytes(), now).expect("valid");
                let key = layout::inbox_key(
                    &received.cluster_id,
                    received.slot(),
                    &received.instance_key(),
                );
                bytes += body.len();
                counting
                    .inner
                    .create(&key, body.into())
                    .await
                    .expect("stored");
            }
        }
        let before = counting.written.load(Ordering::Relaxed);
        if w + 36 == windows {
            counting
                .by_prefix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        let fence = usage_reporter_receiver::rollup::unfenced();
        // Rolled up at the real time: the rollup takes what was stored before it.
        usage_reporter_receiver::rollup::run_once(
            &store,
            Utc::now(),
            std::time::Duration::ZERO,
            &fence,
        )
        .await
        .expect("rollup");
        cluster_list::compact(&store, false, &fence)
            .await
            .expect("compact");
        // The last simulated day (36 windows): every cluster's state holds 8 days by then.
        if w + 36 >= windows {
            report_bytes += bytes;
            written += counting.written.load(Ordering::Relaxed) - before;
            measured += 1;
        }
    }
    for (prefix, n) in counting
        .by_prefix
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        eprintln!("{prefix}: {} bytes a window", n / measured.max(1));
    }
    println!(
        "{} {} {:.2} {:.1}",
        report_bytes / measured.max(1),
        written / measured.max(1),
        written as f64 / report_bytes.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "load" => {
            load(
                arg(2),
                arg(3).parse().unwrap_or(1000),
                arg(4).parse().unwrap_or(32),
            )
            .await
        }
        "fill" => fill(arg(2), arg(3).parse().unwrap_or(1000)).await,
        "design-point" => design_point(&arg(2)),
        "window-bytes" => window_bytes(arg(2), arg(3).parse().unwrap_or(330)).await,
        "attack" => {
            attack(
                arg(2).parse().expect("ADDR"),
                arg(3).parse().unwrap_or(2000),
                arg(4).parse().unwrap_or(500),
                arg(5).parse().unwrap_or(100),
            )
            .await
        }
        _ => eprintln!(
            "usage: receiver_bench load URL N CONCURRENCY | fill DIR N | design-point DIR | window-bytes DIR WINDOWS | attack ADDR IDLE SLOW N"
        ),
    }
}
