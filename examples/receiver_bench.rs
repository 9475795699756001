//! Load and data for `scripts/bench-receiver.sh`; see that script.
//!
//! ```text
//! receiver_bench load URL N CONCURRENCY   POST N distinct reports; print reports per second
//! receiver_bench fill DIR N               store N reports of today under DIR/received/
//! receiver_bench design-point DIR         90 days of summaries for 100,000 clusters of 3
//! receiver_bench attack ADDR IDLE SLOW N  open IDLE idle and SLOW slow-body connections
//!                                         (from 127.1.x.y and 127.2.x.y, 20 per address),
//!                                         then time N legitimate POSTs; print p50 p99 max ms
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use usage_reporter::receiver::layout;
use usage_reporter::receiver::summary::{Cluster, Clusters, Day};

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
        "metrics": {"num_cpu": 8, "memstats": {"resident_bytes": 12345678, "virtual_bytes": 98765432},
                    "num_threads": 9, "cpu_usage": 1.5, "queries": {"total": 1234, "rate": 0.08}},
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
                    let received = usage_reporter::receiver::intake::parse(
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

fn design_point(dir: &str) {
    let clusters = 100_000u128;
    let today = Utc::now().date_naive();
    let mut all = Clusters::default();
    for c in 0..clusters {
        let id = uuid::Uuid::from_u128(0x1000_0000_0000_4000_8000_0000_0000_0000 + c).to_string();
        all.clusters.insert(
            id.clone(),
            Cluster {
                cluster_id: id,
                created_at: "2026-01-01T00:00:00Z".into(),
                first_seen: "2026-01-01T00:00:00Z".into(),
                last_seen: format!("{}T20:00:00Z", today.format("%Y-%m-%d")),
                version: format!("1.{}.0", c % 7),
                targets: ["ingester", "querier", "distributor"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                instances: 3,
                reports: 90 * 18,
                last_interval: format!("{}T20:00:00Z", today.format("%Y-%m-%d")),
                signed: true,
                instance_ids: true,
            },
        );
    }
    let root = std::path::Path::new(dir);
    std::fs::create_dir_all(root.join("summaries")).unwrap();
    std::fs::write(
        root.join(layout::CLUSTERS),
        serde_json::to_vec(&all).unwrap(),
    )
    .unwrap();
    for d in 0..90 {
        let day = (today - chrono::Duration::days(d))
            .format("%Y-%m-%d")
            .to_string();
        let mut s = Day {
            day: day.clone(),
            clusters: clusters as u64,
            reports: clusters as u64 * 18,
            ..Day::default()
        };
        for v in 0..7 {
            s.versions.insert(format!("1.{v}.0"), clusters as u64 / 7);
        }
        s.os.insert("linux".into(), clusters as u64 * 18);
        s.arch.insert("amd64".into(), clusters as u64 * 9);
        s.arch.insert("arm64".into(), clusters as u64 * 9);
        for t in ["ingester", "querier", "distributor"] {
            s.targets.insert(t.into(), clusters as u64 * 6);
        }
        std::fs::write(
            root.join(layout::day_key(&day)),
            serde_json::to_vec(&s).unwrap(),
        )
        .unwrap();
    }
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
            "usage: receiver_bench load URL N CONCURRENCY | fill DIR N | design-point DIR | attack ADDR IDLE SLOW N"
        ),
    }
}
