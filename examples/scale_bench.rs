//! Measurements for `scripts/bench.sh`; see that script. Each prints one line of numbers.
//!
//! ```text
//! scale_bench slot N STORE [KEY=VALUE...]   a `reporter run` leader and N - 1 replicas in this
//!                                           process deliver one slot to a receiver here:
//!                                           seconds from the collect delay to the last report,
//!                                           duplicates, missing, the leader's store requests
//!                                           per report and its peak resident MiB
//! scale_bench seed N STORE [KEY=VALUE...]   N `reporter run` processes start at once: p50, p99
//!                                           and max ms to the seed, and p50 ms to a listening
//!                                           endpoint (the baseline)
//! scale_bench status ADDR SECONDS CONC      GET /status/usage-stats from CONC connections:
//!                                           requests per second and p99 ms; then /healthz
//! ```

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use chrono::Utc;
use usage_reporter::stats::Registry;
use usage_reporter::{slots, ReplicaBuilder};

fn options(args: &[String]) -> Vec<(String, String)> {
    args.iter()
        .filter_map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (arrival time, idempotency key) of every POST.
type Posts = Arc<Mutex<Vec<(Instant, String)>>>;

async fn receiver() -> (String, Posts) {
    let posts: Posts = Arc::default();
    let p = posts.clone();
    let app = axum::Router::new().route(
        "/r",
        axum::routing::post(move |headers: HeaderMap, _body: Bytes| {
            let p = p.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                p.lock().unwrap().push((Instant::now(), key));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/r", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, posts)
}

/// Resident MiB of a process.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Sum of the store requests a `reporter run` at `addr` counted.
async fn store_requests(addr: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()
        .map(|r| r.text());
    let text = match text {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    requests_in(&text)
}

/// The store requests a `/metrics` text counts, all operations and outcomes.
fn requests_in(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("usage_reporter_store_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Whether the `reporter run` at `addr` says it leads.
async fn is_leader(addr: &str) -> bool {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(r) => r
            .text()
            .await
            .unwrap_or_default()
            .contains("usage_reporter_leader 1"),
        Err(_) => false,
    }
}

async fn slot(n: usize, store_url: &str, opts: Vec<(String, String)>) {
    let (url, posts) = receiver().await;
    let store = usage_reporter::store::open(store_url, &opts).expect("store");
    let interval = Duration::from_secs(20);
    let collect = Duration::from_secs(2);
    // The leader is a real `reporter run` process, started first so that it wins the lease,
    // so that its memory and store requests are its own; the other n - 1 run in this process.
    let bin = std::env::var("REPORTER_BIN").unwrap_or("target/release/reporter".into());
    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--listen", "127.0.0.1:0", "--store", store_url]);
    for (k, v) in &opts {
        cmd.args(["--store-option", &format!("{k}={v}")]);
    }
    cmd.args([
        "--interval",
        "20s",
        "--collect-delay",
        "2s",
        "--lease-ttl",
        "60s",
    ]);
    cmd.args(["--retention", "1h", "--stats-url", &url]);
    let mut leader = cmd
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the leader");
    let lines = BufReader::new(leader.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(a) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
            {
                let _ = tx.send(a.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("leader started");
    loop {
        let text = reqwest::get(format!("http://{addr}/metrics")).await;
        if let Ok(r) = text {
            if r.text()
                .await
                .unwrap_or_default()
                .contains("usage_reporter_leader 1")
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut replicas = Vec::new();
    for _ in 1..n {
        replicas.push(
            ReplicaBuilder::new()
                .with_store(store.clone())
                .registry(Arc::new(Registry::new()))
                .without_endpoint()
                .interval(interval)
                .collect_delay(collect)
                .lease_ttl(Duration::from_secs(60))
                .retention(Duration::from_secs(3600))
                .stats_url(url.parse().unwrap())
                .start()
                .await
                .expect("replica"),
        );
    }
    let created = loop {
        let known = replicas.iter().all(|r| r.cluster_id().is_some());
        let created = replicas[0]
            .report()
            .and_then(|r| usage_reporter_core::timefmt::parse_rfc3339(r["createdAt"].as_str()?));
        if let (true, Some(created)) = (known, created) {
            break created;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The first slot that starts after every replica knows the seed.
    let target = slots::next_slot(
        &created,
        Utc::now() + chrono::Duration::seconds(1),
        interval,
    )
    .expect("a slot");
    let due = target + chrono::Duration::from_std(collect).unwrap();
    let slot_text = usage_reporter_core::timefmt::rfc3339_nano(
        &usage_reporter_core::timefmt::in_zone_of(target, &created),
    );
    let before_due = (due - Utc::now() - chrono::Duration::milliseconds(300))
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(before_due).await;
    let before = store_requests(&addr).await;
    let before_inproc: Vec<u64> = replicas
        .iter()
        .map(|r| requests_in(&r.metrics().render()))
        .collect();
    let due_at = Instant::now() + (due - Utc::now()).to_std().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut peak: f64 = 0.0;
    loop {
        peak = peak.max(rss_mib(leader.id()));
        let n_slot = posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, k)| k.contains(&slot_text))
            .count();
        if n_slot >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut after = store_requests(&addr).await;
    let mut before = before;
    // The row is the leader's: the process measured must have led throughout. Should the lease
    // have moved to a replica in this process, that one's requests are counted; should nobody
    // be known to have led, the row says so rather than print a number for a follower.
    let still_leader = is_leader(&addr).await;
    let mut measured = true;
    if !still_leader || after == before {
        match replicas.iter().position(|r| r.is_leader()) {
            Some(i) => {
                eprintln!("the lease moved into the benchmark process; counting replica {i}");
                before = before_inproc[i];
                after = requests_in(&replicas[i].metrics().render());
            }
            None => {
                eprintln!(
                    "no process is known to have led the pass: the requests row is not measured"
                );
                measured = false;
            }
        }
    }
    let posts = posts.lock().unwrap().clone();
    let of_slot: Vec<_> = posts
        .iter()
        .filter(|(_, k)| k.contains(&slot_text))
        .collect();
    let last = of_slot.iter().map(|(t, _)| *t).max().unwrap_or(due_at);
    let distinct: HashSet<&String> = of_slot.iter().map(|(_, k)| k).collect();
    let duplicates = of_slot.len() - distinct.len();
    let missing = n.saturating_sub(distinct.len());
    let per_report = if measured {
        after.saturating_sub(before) as f64 / n as f64
    } else {
        f64::NAN
    };
    let seconds = last.saturating_duration_since(due_at).as_secs_f64();
    println!("{seconds:.2} {duplicates} {missing} {per_report:.2} {peak:.1}");
    let _ = leader.kill();
    let _ = leader.wait();
    for r in replicas {
        r.shutdown().await;
    }
}

fn seed(n: usize, store_url: &str, opts: &[(String, String)]) {
    let bin = std::env::var("REPORTER_BIN").unwrap_or("target/release/reporter".into());
    let mut children = Vec::new();
    for _ in 0..n {
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--listen", "127.0.0.1:0", "--store", store_url]);
        for (k, v) in opts {
            cmd.args(["--store-option", &format!("{k}={v}")]);
        }
        let started = Instant::now();
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().unwrap();
        let times = Arc::new(Mutex::new((None::<f64>, None::<f64>)));
        let t = times.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let mut g = t.lock().unwrap();
                if line.contains("replica started") && g.0.is_none() {
                    g.0 = Some(ms);
                }
                if line.contains("cluster seed") && g.1.is_none() {
                    g.1 = Some(ms);
                }
            }
        });
        children.push((child, times));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && children.iter().any(|(_, t)| t.lock().unwrap().1.is_none()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut to_seed: Vec<f64> = children
        .iter()
        .filter_map(|(_, t)| t.lock().unwrap().1)
        .collect();
    let mut to_listen: Vec<f64> = children
        .iter()
        .filter_map(|(_, t)| t.lock().unwrap().0)
        .collect();
    for (mut c, _) in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    to_seed.sort_by(f64::total_cmp);
    to_listen.sort_by(f64::total_cmp);
    println!(
        "{:.0} {:.0} {:.0} {:.0} {}",
        percentile(&to_seed, 0.5),
        percentile(&to_seed, 0.99),
        to_seed.last().copied().unwrap_or(f64::NAN),
        percentile(&to_listen, 0.5),
        n - to_seed.len()
    );
}

async fn hammer(addr: &str, path: &str, seconds: u64, conc: usize) -> (f64, f64) {
    let url = format!("http://{addr}{path}");
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut lat = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    if let Ok(r) = client.get(&url).send().await {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / seconds as f64, percentile(&all, 0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "slot" => slot(arg(2).parse().unwrap_or(10), &arg(3), options(&args[4..])).await,
        "seed" => seed(arg(2).parse().unwrap_or(10), &arg(3), &options(&args[4..])),
        "status" => {
            let (secs, conc) = (arg(3).parse().unwrap_or(5), arg(4).parse().unwrap_or(8));
            let (rps, p99) = hammer(&arg(2), "/status/usage-stats", secs, conc).await;
            let (base_rps, base_p99) = hammer(&arg(2), "/healthz", secs, conc).await;
            println!("{rps:.0} {p99:.2} {base_rps:.0} {base_p99:.2}");
        }
        _ => {
            eprintln!("usage: scale_bench slot N STORE [K=V...] | seed N STORE [K=V...] | status ADDR SECONDS CONC")
        }
    }
}
