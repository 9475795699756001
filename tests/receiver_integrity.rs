//! The receiver on the open internet, tried as an attacker and as an unlucky operator would:
//! real `reporter receive` processes, real sockets on loopback (attackers on their own source
//! addresses in 127.0.0.0/8), local directories and moto S3.
//!
//! - every acknowledged report is a row of exactly one Parquet file, with a receiver stalled
//!   between writing a report and linking it into place, or paused at random (SIGSTOP);
//! - idle, slow-body and too many connections do not keep a legitimate request waiting;
//! - a signed cluster cannot be impersonated; a future slot, a report without instanceID or
//!   fake instances do not move what the API shows;
//! - forwarded addresses are believed only from trusted proxies;
//! - shutdown ends leadership before it returns; `forget` and retention leave nothing behind;
//! - errors are one line of JSON, logs say a failing store once.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::rx::{
    duckdb, files_under, get, inbox, parquet_rows, post, post_with, receiver, receiver_on, report,
    stored, uuid,
};
use common::{eventually, Bucket, Proc};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use usage_reporter_core::signing::ClusterKey;

/// The `(clusterID, interval, instanceID)` a report is rolled up as.
fn identity(r: &Value) -> (String, String, String) {
    let slot = chrono::DateTime::parse_from_rfc3339(r["interval"].as_str().unwrap())
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap();
    (
        r["clusterID"].as_str().unwrap().to_string(),
        slot.to_string(),
        r["instanceID"].as_str().unwrap_or_default().to_string(),
    )
}

/// Posts every report to one of `addrs` (in turn), 16 at once; the identities acknowledged
/// (200, stored or duplicate). Other answers (a receiver paused past the client's patience)
/// are not acknowledged and promise nothing.
async fn post_all(addrs: &[SocketAddr], reports: Vec<Value>) -> Vec<(String, String, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let queue = Arc::new(std::sync::Mutex::new(
        reports.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (client, acked, queue, addrs) =
                (client.clone(), acked.clone(), queue.clone(), addrs.to_vec());
            tokio::spawn(async move {
                loop {
                    let Some((i, r)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let addr = addrs[i % addrs.len()];
                    let sent = client
                        .post(format!("http://{addr}/api/v1/reports"))
                        .json(&r)
                        .send()
                        .await;
                    if let Ok(resp) = sent {
                        if resp.status() == 200 {
                            acked.lock().unwrap().push(identity(&r));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let out = acked.lock().unwrap().clone();
    out
}

/// Waits until the inbox is empty, then checks that every acknowledged report is a row of
/// exactly one Parquet file, and that there is no other row.
async fn every_ack_rolled_up_once(
    store: &usage_reporter::Store,
    acked: &[(String, String, String)],
) {
    eventually(Duration::from_secs(60), "the inbox emptied", || async {
        store.list("received/inbox/").await.unwrap().is_empty()
    })
    .await;
    let rows = parquet_rows(store).await;
    let mut count = BTreeMap::<&(String, String, String), usize>::new();
    for r in &rows {
        *count.entry(r).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "rows in two files: {twice:?}");
    let acked: HashSet<_> = acked.iter().collect();
    let missing: Vec<_> = acked.iter().filter(|a| !count.contains_key(**a)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged reports in no Parquet file: {missing:?}",
        missing.len()
    );
    assert_eq!(rows.len(), acked.len(), "rows that nobody acknowledged");
}

fn reports(n: usize, hours_ago: i64) -> Vec<Value> {
    (0..n)
        .map(|i| report(&uuid(), hours_ago + (i % 3) as i64, &uuid(), "1.0.0"))
        .collect()
}

// --- No acknowledged report is ever lost -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_stalled_between_writing_and_linking_a_report_loses_none() {
    let data = tempfile::tempdir().unwrap();
    let store_args = [
        "--store".to_string(),
        data.path().to_string_lossy().into_owned(),
    ];
    // A takes 2.5 s between writing each report and linking it into place, longer than a
    // rollup period and its settle time together; B is quick and rolls up meanwhile.
    let (_a, a) = receiver_on(
        &store_args,
        &["--settle", "100ms"],
        &[("REPORTER_TEST_STALL_BEFORE_LINK", "received/inbox/=2500")],
    );
    let (_b, b) = receiver_on(&store_args, &["--settle", "100ms"], &[]);
    let mut acked = Vec::new();
    for _ in 0..3 {
        acked.extend(post_all(&[a, b], reports(40, 1)).await);
    }
    assert_eq!(acked.len(), 120, "every POST answered 200");
    let store = usage_reporter::store::open(data.path().to_str().unwrap(), &[]).unwrap();
    every_ack_rolled_up_once(&store, &acked).await;
    // A real reader agrees.
    if let Some(n) = duckdb(
        data.path(),
        "SELECT count(DISTINCT (clusterID, instanceID)), count(*) FROM reports",
    ) {
        assert_eq!(n, json!([[120, 120]]));
    }
}

/// Two receivers, one SIGSTOPped for 1 to 3 s at random moments while reports pour in.
async fn paused_at_random(store_args: &[String], store: usage_reporter::Store) {
    let _heavy = HEAVY.lock().await;
    let (a_proc, a) = receiver_on(store_args, &["--settle", "200ms"], &[]);
    let (_b, b) = receiver_on(store_args, &["--settle", "200ms"], &[]);
    let pid = a_proc.child.id() as i32;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pauses = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let chaos = {
        let (stop, pauses) = (stop.clone(), pauses.clone());
        std::thread::spawn(move || {
            let mut seed = 0x9e3779b97f4a7c15u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                std::thread::sleep(Duration::from_millis(200 + seed % 600));
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                std::thread::sleep(Duration::from_millis(1000 + (seed >> 20) % 2000));
                unsafe { libc::kill(pid, libc::SIGCONT) };
                pauses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    // Reports pour in until A has been paused 8 times and 200 were acknowledged (at most 60
    // batches): how many a pause lets through depends on the machine's load, not the code.
    let mut acked = Vec::new();
    for _ in 0..60 {
        acked.extend(post_all(&[a, b], reports(40, 1)).await);
        if pauses.load(std::sync::atomic::Ordering::Relaxed) >= 8 && acked.len() >= 200 {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    chaos.join().unwrap();
    let pauses = pauses.load(std::sync::atomic::Ordering::Relaxed);
    assert!(pauses >= 8, "only {pauses} pauses");
    assert!(acked.len() >= 200, "{} acknowledged", acked.len());
    every_ack_rolled_up_once(&store, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_paused_at_random_loses_no_acknowledged_report_on_a_local_directory() {
    let data = tempfile::tempdir().unwrap();
    let store_args = [
        "--store".to_string(),
        data.path().to_string_lossy().into_owned(),
    ];
    let store = usage_reporter::store::open(data.path().to_str().unwrap(), &[]).unwrap();
    paused_at_random(&store_args, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_paused_at_random_loses_no_acknowledged_report_on_s3() {
    let Some(bucket) = Bucket::s3() else { return };
    paused_at_random(&bucket.args(), bucket.store()).await;
}

// --- No slow client stalls it ----------------------------------------------------------------

/// A connection from `src` (an address of 127.0.0.0/8) to `to`.
async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    socket.connect(to).await
}

/// Runs the futures 100 at a time; their outputs in order.
async fn batches<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    use futures::StreamExt;
    futures::stream::iter(futures).buffered(100).collect().await
}

/// The tests that open thousands of connections or pause processes run one at a time, so
/// that they do not starve each other of the machine's two cores.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a fresh legitimate client waits for a stored report and for `/healthz`.
async fn legitimate_latency(addr: SocketAddr) -> Duration {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let r = report(&uuid(), 1, &uuid(), "1.0.0");
    let resp = client
        .post(format!("http://{addr}/api/v1/reports"))
        .json(&r)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_body_connections_do_not_keep_a_legitimate_request_waiting() {
    let data = tempfile::tempdir().unwrap();
    let _heavy = HEAVY.lock().await;
    let (_rx, addr) = receiver(data.path(), &["--request-timeout", "3s"]);
    // 2,000 idle connections from 100 addresses, 20 each (under the per-client cap), and 500
    // requests whose bodies never complete, from 25 more; opened 100 at a time, well within
    // the 5 s header timeout that ends the idle ones.
    let idle: Vec<TcpStream> = batches((0..2000u32).map(|i| {
        connect_from(
            Ipv4Addr::new(127, 1, (i / 20) as u8, 1 + (i % 20) as u8),
            addr,
        )
    }))
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let mut slow: Vec<TcpStream> = batches((0..500u32).map(|i| {
        slow_body_from(
            Ipv4Addr::new(127, 2, (i / 20) as u8, 1 + (i % 20) as u8),
            addr,
        )
    }))
    .await;
    // Connected, they may still wait in the kernel's accept queue: until the receiver has
    // taken them (the header timeout starts there).
    eventually(
        Duration::from_secs(10),
        "2,400 connections open",
        || async {
            common::metric_sum(
                &common::metrics(addr).await,
                "reporter_receiver_connections",
            ) >= 2400
        },
    )
    .await;
    // Within the header timeout of the idle ones and the body deadline of the slow ones.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        worst = worst.max(legitimate_latency(addr).await);
    }
    // The target is 1 s (BENCHMARKS.md has the figures); the bound is generous for a busy
    // machine, and far below what the stall was (20 to 60 s).
    assert!(
        worst < Duration::from_secs(3),
        "a legitimate request waited {worst:?}"
    );
    // A slow body is cut at the deadline with a 408 of one JSON line.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), slow[0].read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("3s"), "{v}");
    // Idle ones go at the header timeout (5 s): nothing is held for ever.
    eventually(
        Duration::from_secs(30),
        "idle and slow connections closed",
        || async {
            common::metric_sum(
                &common::metrics(addr).await,
                "reporter_receiver_connections",
            ) < 50
        },
    )
    .await;
    drop((idle, slow));
}

/// A request whose body never comes, from `src`.
async fn slow_body_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let mut s = connect_from(src, to).await.unwrap();
    s.write_all(b"POST /api/v1/reports HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{")
        .await
        .unwrap();
    s
}

/// Whether the server closed `s` (EOF or reset) within 300 ms.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_connection_and_idle_ones_give_way() {
    let data = tempfile::tempdir().unwrap();
    let (_rx, addr) = receiver(
        data.path(),
        &["--max-connections", "64", "--max-client-connections", "8"],
    );
    // One client (one /24, many addresses in it) with 8 requests in flight: more connections
    // from it are closed at once.
    let _heavy = HEAVY.lock().await;
    let mut busy = Vec::new();
    for i in 0..8u8 {
        busy.push(slow_body_from(Ipv4Addr::new(127, 3, 0, 1 + i), addr).await);
    }
    eventually(Duration::from_secs(10), "8 requests in flight", || async {
        common::metric_sum(
            &common::metrics(addr).await,
            "reporter_receiver_requests_in_flight",
        ) >= 8
    })
    .await;
    let mut refused = 0;
    for i in 0..10u8 {
        let mut s = connect_from(Ipv4Addr::new(127, 3, 0, 100 + i), addr)
            .await
            .unwrap();
        if closed(&mut s).await {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 10,
        "connections past the per-client cap are closed at once"
    );
    // A client holding idle connections at its cap does not lock out its neighbours: its
    // oldest idle one gives way to each new one.
    let mut idle = Vec::new();
    for i in 0..30u8 {
        idle.push(
            connect_from(Ipv4Addr::new(127, 5, 0, 1 + i), addr)
                .await
                .unwrap(),
        );
    }
    let mut gave_way = 0;
    for s in &mut idle {
        if closed(s).await {
            gave_way += 1;
        }
    }
    assert_eq!(gave_way, 22, "the oldest idle connections closed");
    let neighbour = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 5, 0, 250)))
        .build()
        .unwrap();
    let resp = neighbour
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Many clients, idle, past 3/4 of the cap: the oldest idle ones are closed to make room,
    // so a legitimate request does not wait for the 5 s header timeout.
    let mut others = Vec::new();
    for i in 0..120u32 {
        if let Ok(s) = connect_from(Ipv4Addr::new(127, 4, i as u8, 1), addr).await {
            others.push(s);
        }
    }
    let waited = legitimate_latency(addr).await;
    assert!(
        waited < Duration::from_secs(3),
        "a legitimate request waited {waited:?}"
    );
    let m = common::metrics(addr).await;
    assert!(
        common::metric_sum(&m, "reporter_receiver_connections_refused_total") >= 10,
        "{m}"
    );
    assert!(
        common::metric_sum(&m, "reporter_receiver_connections_evicted_total") > 0,
        "{m}"
    );
    drop((busy, idle, others));
}

// --- No one can rewrite another cluster's story ----------------------------------------------

/// A signed POST of `r` with `key`.
async fn post_signed(addr: SocketAddr, r: &Value, key: &ClusterKey) -> (u16, Value) {
    let body = serde_json::to_vec(r).unwrap();
    let sig = key.header(&body);
    post_with(addr, body, &[("reporter-signature", sig.as_str())]).await
}

/// POSTs a report that must be accepted.
async fn stored_ok(addr: SocketAddr, body: String) {
    let (status, answer) = post(addr, body).await;
    assert_eq!(status, 200, "{answer}");
}

/// The cluster as the API shows it.
async fn cluster(addr: SocketAddr, id: &str) -> Value {
    let all = get(addr, "/api/v1/clusters").await;
    all["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["clusterID"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits for a rollup that ran after now: a marker report for a new cluster shows in the API.
async fn rolled_up_since_now(addr: SocketAddr) {
    let marker = uuid();
    let (status, _) = post(addr, report(&marker, 1, &uuid(), "marker").to_string()).await;
    assert_eq!(status, 200);
    eventually(
        Duration::from_secs(30),
        "a rollup after the posts",
        || async { !cluster(addr, &marker).await.is_null() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_cluster_cannot_be_impersonated_nor_its_instances_faked() {
    let data = tempfile::tempdir().unwrap();
    let (rx, addr) = receiver(data.path(), &[]);
    let bucket = Bucket::local();
    let url = format!("http://{addr}/api/v1/reports");
    let mut procs: Vec<_> = (0..3)
        .map(|_| Proc::run(&bucket, &common::fast_args(&url, "1s")))
        .collect();
    let id = common::rx::seed_of(&bucket.store()).await;
    eventually(Duration::from_secs(30), "3 instances shown", || async {
        cluster(addr, &id).await["instances"] == 3
    })
    .await;
    for p in &procs {
        p.signal(libc::SIGTERM);
    }
    for p in &mut procs {
        p.wait_exit(Duration::from_secs(10));
    }
    rolled_up_since_now(addr).await;
    let before = cluster(addr, &id).await;
    assert_eq!(before["signed"], true, "{before}");
    let slot = before["lastInterval"].as_str().unwrap().to_string();
    let real = before["version"].clone();
    let instances = before["instances"].clone();
    // 50 fake instances of its latest slot: unsigned, or signed by a stranger's key.
    let stranger = ClusterKey::generate().unwrap();
    let fake = |version: &str| {
        let mut r = report(&id, 0, &uuid(), version);
        r["interval"] = json!(slot);
        r["createdAt"] = json!(before["createdAt"]);
        r
    };
    for i in 0..50 {
        let r = fake("1.0.0");
        let (status, answer) = if i % 2 == 0 {
            post(addr, r.to_string()).await
        } else {
            post_signed(addr, &r, &stranger).await
        };
        assert_eq!(status, 403, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("refused"),
            "{answer}"
        );
    }
    // A forged slot nine minutes ahead (inside the clock-skew allowance), and a Tempo-shaped
    // report without instanceID: refused too.
    let mut ahead = fake("9.9.9-HIJACK");
    ahead["interval"] = json!((chrono::Utc::now() + chrono::Duration::minutes(9)).to_rfc3339());
    assert_eq!(post(addr, ahead.to_string()).await.0, 403);
    let mut tempo = fake("6.6.6");
    tempo.as_object_mut().unwrap().remove("instanceID");
    assert_eq!(post(addr, tempo.to_string()).await.0, 403);
    // A signature that does not verify over the body.
    let body = serde_json::to_vec(&fake("1.0.0")).unwrap();
    let sig = stranger.header(b"other bytes");
    assert_eq!(
        post_with(addr, body, &[("reporter-signature", sig.as_str())])
            .await
            .0,
        403
    );
    rolled_up_since_now(addr).await;
    let after = cluster(addr, &id).await;
    assert_eq!(
        (&after["instances"], &after["version"]),
        (&instances, &real),
        "{after}"
    );
    assert_eq!(after["reports"], before["reports"]);
    let m = common::metrics(addr).await;
    assert!(
        m.contains("reporter_receiver_reports_rejected_total{reason=\"not_signed_by_cluster\"} "),
        "{m}"
    );
    assert!(
        common::metric_sum(&m, "reporter_receiver_reports_rejected_total") >= 53,
        "{m}"
    );
    drop(rx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_cluster_keeps_its_state_against_future_slots_foreign_shapes_and_floods() {
    let data = tempfile::tempdir().unwrap();
    let (_rx, addr) = receiver(data.path(), &["--max-instances", "5"]);
    let victim = uuid();
    for _ in 0..3 {
        stored_ok(addr, report(&victim, 1, &uuid(), "1.0.0").to_string()).await;
    }
    rolled_up_since_now(addr).await;
    let before = cluster(addr, &victim).await;
    assert_eq!(
        (&before["instances"], &before["version"]),
        (&json!(3), &json!("1.0.0"))
    );
    // Nine minutes ahead: stored (clocks differ), but not the latest until its time.
    let mut ahead = report(&victim, 0, &uuid(), "9.9.9-HIJACK");
    ahead["interval"] = json!((chrono::Utc::now() + chrono::Duration::minutes(9)).to_rfc3339());
    let (status, answer) = post(addr, ahead.to_string()).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("stored")),
        "{answer}"
    );
    // Tempo-shaped (no instanceID), a later slot: stored, never the state of a cluster whose
    // reports carry instance IDs.
    let mut tempo = report(&victim, 0, "", "6.6.6");
    tempo.as_object_mut().unwrap().remove("instanceID");
    assert_eq!(post(addr, tempo.to_string()).await.0, 200);
    rolled_up_since_now(addr).await;
    let after = cluster(addr, &victim).await;
    assert_eq!(
        (&after["instances"], &after["version"]),
        (&json!(3), &json!("1.0.0")),
        "{after}"
    );
    assert_eq!(after["signed"], false);
    // At most 5 unsigned instances per cluster and slot: the rest refused and counted.
    let flooded = uuid();
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(
            post(addr, report(&flooded, 2, &uuid(), "1.0.0").to_string())
                .await
                .0,
        );
    }
    assert_eq!(answers, [200, 200, 200, 200, 200, 403, 403, 403]);
    let m = common::metrics(addr).await;
    assert!(
        m.contains("reporter_receiver_reports_rejected_total{reason=\"too_many_instances\"} 3"),
        "{m}"
    );
}

// --- Behind a load balancer ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_believed_only_from_a_trusted_proxy() {
    let data = tempfile::tempdir().unwrap();
    let (_rx, addr) = receiver(
        data.path(),
        &[
            "--trusted-proxy",
            "127.0.0.1/32",
            "--rate-limit",
            "0.001",
            "--rate-burst",
            "2",
        ],
    );
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
            .build()
            .unwrap()
    };
    let status = |client: reqwest::Client, header: (&'static str, String)| async move {
        client
            .post(format!("http://{addr}/api/v1/reports"))
            .header(header.0, header.1)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let proxy = from([127, 0, 0, 1]);
    let xff = |a: &str| ("x-forwarded-for", format!("{a}, 127.0.0.1"));
    // Through the proxy, each forwarded client has its own allowance (400: the body is not a
    // report, but it was let through the rate limit).
    assert_eq!(status(proxy.clone(), xff("203.0.113.5")).await, 400);
    assert_eq!(status(proxy.clone(), xff("203.0.113.5")).await, 400);
    assert_eq!(status(proxy.clone(), xff("203.0.113.5")).await, 429);
    // Its neighbour in the same /24 is the same client; another /24 is another.
    assert_eq!(status(proxy.clone(), xff("203.0.113.77")).await, 429);
    assert_eq!(status(proxy.clone(), xff("198.51.100.7")).await, 400);
    // A client's own Forwarded header, passed on by an X-Forwarded-For proxy, is not
    // believed: the client is then the proxy itself (its own allowance, then 429).
    let fwd = |a: &str| ("forwarded", format!("for=\"[{a}]:443\";proto=https"));
    assert_eq!(status(proxy.clone(), fwd("2001:db8:9::1")).await, 400);
    assert_eq!(status(proxy.clone(), fwd("2001:db8:9::2")).await, 400);
    assert_eq!(status(proxy.clone(), fwd("2001:db8:7::3")).await, 429);
    // From an untrusted peer the header is ignored: changing it does not buy a new allowance.
    let stranger = from([127, 0, 2, 2]);
    assert_eq!(status(stranger.clone(), xff("192.0.2.1")).await, 400);
    assert_eq!(status(stranger.clone(), xff("192.0.2.2")).await, 400);
    assert_eq!(status(stranger.clone(), xff("192.0.3.3")).await, 429);
    // Proxies that write RFC 7239's Forwarded: read that one, grouped by /48 for IPv6.
    let (_rx2, addr) = receiver(
        data.path(),
        &[
            "--trusted-proxy",
            "127.0.0.1",
            "--forwarded-header",
            "forwarded",
            "--rate-limit",
            "0.001",
            "--rate-burst",
            "2",
        ],
    );
    let status = |header: (&'static str, String)| async move {
        from([127, 0, 0, 1])
            .post(format!("http://{addr}/api/v1/reports"))
            .header(header.0, header.1)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(fwd("2001:db8:1::5")).await, 400);
    assert_eq!(status(fwd("2001:db8:1::6")).await, 400);
    assert_eq!(status(fwd("2001:db8:1:ffff::9")).await, 429);
    assert_eq!(status(fwd("2001:db8:2::1")).await, 400);
}

// --- Shutdown, retention, forgetting ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_mid_rollup_stops_before_it_releases_the_lease() {
    let data = tempfile::tempdir().unwrap();
    let (mut a, _) = receiver(data.path(), &["--rollup-every", "2s", "--settle", "1ms"]);
    assert!(
        a.wait_log("became leader", Duration::from_secs(30)),
        "{}",
        a.log()
    );
    let (_b, _) = receiver(data.path(), &["--rollup-every", "2s", "--settle", "1ms"]);
    // A big inbox, planted as a slow store would leave it: the next rollups take a while.
    let store = usage_reporter::store::open(data.path().to_str().unwrap(), &[]).unwrap();
    let mut planted = Vec::new();
    for r in reports(3000, 1) {
        let id = identity(&r);
        let slot = chrono::DateTime::parse_from_rfc3339(r["interval"].as_str().unwrap())
            .unwrap()
            .to_utc();
        let key = usage_reporter_receiver::layout::inbox_key(&id.0, slot, &id.2);
        store.create(&key, r.to_string()).await.unwrap();
        planted.push(id);
    }
    let lease = data.path().join("receiver/lease.json");
    let holder = || -> String {
        let v: Value =
            serde_json::from_slice(&std::fs::read(&lease).unwrap_or_default()).unwrap_or_default();
        v["holder"].as_str().unwrap_or_default().to_string()
    };
    let leader = holder();
    eventually(Duration::from_secs(30), "a rollup in progress", || async {
        let state =
            std::fs::read_to_string(data.path().join("receiver/rollup.json")).unwrap_or_default();
        state.contains("\"pending\":{")
    })
    .await;
    a.signal(libc::SIGTERM);
    // Watch the lease: once A has let go, A must be gone at once; with the old order it went
    // on rolling up for 15 s or more after releasing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while holder() == leader && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(holder(), leader, "the lease was never released");
    assert!(
        a.wait_exit(Duration::from_secs(1)).is_some(),
        "A still running after releasing the lease:\n{}",
        a.log()
    );
    let log = a.log();
    let released = log.find("no longer leader").unwrap_or(usize::MAX);
    assert!(
        log.rfind("rolled up").is_none_or(|last| last < released),
        "{log}"
    );
    // B finishes A's window and the rest: each report once.
    every_ack_rolled_up_once(&store, &planted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_leaves_nothing_of_a_cluster_and_retention_removes_old_raw_reports() {
    let data = tempfile::tempdir().unwrap();
    // Retention: raw reports of a slot day 20 days back (planted as an old receiver left
    // them, before it starts) go; their rollups stay; today's raw reports stay.
    let old_day = (chrono::Utc::now() - chrono::Duration::days(20))
        .format("%Y-%m-%d")
        .to_string();
    let old_raw = data.path().join(format!(
        "received/kept/day={old_day}/{}/00000000000000000001/a.json",
        uuid()
    ));
    std::fs::create_dir_all(old_raw.parent().unwrap()).unwrap();
    std::fs::write(&old_raw, "{}").unwrap();
    std::fs::create_dir_all(data.path().join("summaries")).unwrap();
    std::fs::write(
        data.path().join(format!("summaries/day={old_day}.json")),
        format!(r#"{{"day":"{old_day}","reports":0,"os":{{}},"arch":{{}},"targets":{{}}}}"#),
    )
    .unwrap();
    let old_rollup = data
        .path()
        .join(format!("rollups/day={old_day}/old.parquet"));
    std::fs::create_dir_all(old_rollup.parent().unwrap()).unwrap();
    // An empty file of the reports' schema, as a day whose rows were all forgotten could be.
    let schema = std::sync::Arc::new(usage_reporter_receiver::rollup::schema());
    let mut file = Vec::new();
    parquet::arrow::ArrowWriter::try_new(&mut file, schema, None)
        .unwrap()
        .close()
        .unwrap();
    std::fs::write(&old_rollup, file).unwrap();
    let (mut rx, addr) = receiver(data.path(), &["--retention", "8d"]);
    let (x, y) = (uuid(), uuid());
    let key = ClusterKey::generate().unwrap();
    for (hours, instance) in [(1, uuid()), (1, uuid()), (2, uuid())] {
        assert_eq!(
            post_signed(addr, &report(&x, hours, &instance, "1.0.0"), &key)
                .await
                .0,
            200
        );
    }
    for _ in 0..2 {
        stored_ok(addr, report(&y, 1, &uuid(), "2.0.0").to_string()).await;
    }
    rolled_up_since_now(addr).await;
    assert!(data.path().join(format!("receiver/keys/{x}.json")).exists());
    // The receiver is running: the rollup leader carries the request out.
    let (code, out, err) = common::reporter(&[
        "forget",
        "--store",
        data.path().to_str().unwrap(),
        "--cluster",
        &x,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("forgot cluster {x}")), "{out}");
    let anything_of = |id: &str| -> Vec<String> {
        files_under(data.path())
            .into_iter()
            .filter(|p| {
                p.to_string_lossy().contains(id)
                    || std::fs::read(p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(id))
            })
            .map(|p| p.display().to_string())
            .collect()
    };
    assert_eq!(anything_of(&x), Vec::<String>::new());
    assert!(!anything_of(&y).is_empty());
    if let Some(v) = duckdb(data.path(), &format!("SELECT count(*) FILTER (WHERE clusterID = '{x}'), count(*) FILTER (WHERE clusterID = '{y}') FROM read_parquet('{}/rollups/day=*/0*.parquet')", data.path().display())) {
        assert_eq!(v, json!([[0, 2]]));
    }
    eventually(Duration::from_secs(10), "the API forgot it too", || async {
        cluster(addr, &x).await.is_null()
    })
    .await;
    let summary = get(addr, "/api/v1/summary?days=2").await;
    assert_eq!(summary["clusters"], 2, "y and the marker: {summary}");
    // The forgotten cluster may come back, and its first signed report pins a key again.
    assert_eq!(
        post_signed(addr, &report(&x, 1, &uuid(), "1.0.1"), &key)
            .await
            .0,
        200
    );
    eventually(
        Duration::from_secs(30),
        "old raw reports expired",
        || async { !old_raw.exists() },
    )
    .await;
    assert!(old_rollup.exists(), "rollups are kept");
    assert!(!inbox(data.path()).is_empty() || !stored(data.path()).is_empty());
    // With no receiver running, forget takes the rollup lease itself and says what it removed.
    rx.signal(libc::SIGTERM);
    rx.wait_exit(Duration::from_secs(10))
        .expect("the receiver stops");
    let (code, out, err) = common::reporter(&[
        "forget",
        "--store",
        data.path().to_str().unwrap(),
        "--cluster",
        &y,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 raw reports, 2 Parquet rows"), "{out}");
    assert_eq!(anything_of(&y), Vec::<String>::new());
    // Bad input: one line.
    let (code, _, err) = common::reporter(&[
        "forget",
        "--store",
        data.path().to_str().unwrap(),
        "--cluster",
        "nope",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("not a cluster ID"), "{err}");
}

// --- Operable ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_logged_when_it_starts_and_ends_not_per_request() {
    let data = tempfile::tempdir().unwrap();
    let (rx, addr) = receiver(data.path(), &[]);
    stored_ok(addr, report(&uuid(), 1, &uuid(), "1.0.0").to_string()).await;
    eventually(
        Duration::from_secs(30),
        "the first report rolled up",
        || async { inbox(data.path()).is_empty() },
    )
    .await;
    // The inbox becomes a file: no report can be stored under it.
    let inbox_dir = data.path().join("received/inbox");
    let _ = std::fs::remove_dir_all(&inbox_dir);
    std::fs::write(&inbox_dir, "not a directory").unwrap();
    for _ in 0..300 {
        let (status, answer) = post(addr, report(&uuid(), 1, &uuid(), "1.0.0").to_string()).await;
        assert_eq!(status, 503, "{answer}");
    }
    std::fs::remove_file(&inbox_dir).unwrap();
    stored_ok(addr, report(&uuid(), 1, &uuid(), "1.0.0").to_string()).await;
    // The log is written by the receiver's process; wait for it rather than race it.
    eventually(Duration::from_secs(10), "the recovery logged", || async {
        rx.log().contains("the store works again")
    })
    .await;
    let log = rx.log();
    assert_eq!(log.matches("the store is failing").count(), 1, "{log}");
    let recovered: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the store works again"))
        .collect();
    assert_eq!(recovered.len(), 1, "{log}");
    assert!(
        recovered[0].contains("failed_requests=300"),
        "{}",
        recovered[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_bucket_cannot_exist_ends_with_one_line() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let store = file.path().join("sub");
    let mut p = Proc::spawn(&[
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store.to_str().unwrap(),
    ]);
    let status = p.wait_exit(Duration::from_secs(30)).expect("receive exits");
    assert_eq!(status.code(), Some(1));
    let log = p.log();
    let last = log
        .lines()
        .filter(|l| l.starts_with("reporter:"))
        .collect::<Vec<_>>();
    assert_eq!(last.len(), 1, "{}", p.log());
    assert!(last[0].contains("does not exist"), "{}", last[0]);
    if let Some(s3) = Bucket::s3() {
        let mut args: Vec<String> = ["receive", "--listen", "127.0.0.1:0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut store_args = s3.args();
        store_args[1] = "s3://no-such-bucket-here/p".into();
        args.extend(store_args);
        let mut p = Proc::spawn(&args);
        let status = p.wait_exit(Duration::from_secs(30)).expect("receive exits");
        assert_eq!(status.code(), Some(1), "{}", p.log());
        assert!(p.log().contains("no-such-bucket-here"), "{}", p.log());
    }
}

/// Sends raw bytes on a fresh connection; the whole answer.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn json_error(answer: &str, status: u16) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{answer}"
    );
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(!body.contains('\n'), "one line: {answer}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert!(
        !v["error"].as_str().unwrap_or_default().is_empty(),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_one_line_of_json_and_the_bearer_scheme_is_case_insensitive() {
    let data = tempfile::tempdir().unwrap();
    let (_rx, addr) = receiver(data.path(), &["--read-token", "s3cret"]);
    json_error(
        &raw(
            addr,
            b"GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await,
        404,
    );
    json_error(
        &raw(
            addr,
            b"GET /api/v1/reports HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await,
        405,
    );
    json_error(
        &raw(
            addr,
            b"POST /api/v1/reports HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
        )
        .await,
        400,
    );
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(600 * 1024)
    );
    json_error(&raw(addr, huge.as_bytes()).await, 431);
    json_error(
        &raw(
            addr,
            b"GET /api/v1/summary HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await,
        401,
    );
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let req = format!("GET /api/v1/summary HTTP/1.1\r\nhost: x\r\nauthorization: {scheme} s3cret\r\nconnection: close\r\n\r\n");
        let answer = raw(addr, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{scheme}: {answer}");
    }
}
