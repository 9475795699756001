//! Shared test helpers: buckets on every backend, `reporter` processes, a stats receiver.
#![allow(dead_code)]
#![allow(unreachable_pub)] // a helper module shared by the test crates, not an API

pub mod gcs_fake;
pub mod rx;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use usage_reporter::store::{self, Store};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_reporter")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A bucket on one backend, fresh (its own prefix) for each test.
pub struct Bucket {
    pub name: &'static str,
    pub url: String,
    pub options: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
    _gcs: Option<gcs_fake::GcsFake>,
    memory: Option<Store>,
}

/// Whether backend tests must run (the test script sets this) or may be skipped.
fn required() -> bool {
    std::env::var("REPORTER_TEST_REQUIRE_BACKENDS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

fn missing(name: &str, var: &str) -> Option<Bucket> {
    if required() {
        panic!("{name} backend required but {var} is not set: run scripts/test.sh");
    }
    eprintln!(
        "SKIPPED: {name} backend tests: {var} is not set (scripts/test.sh starts the server)"
    );
    None
}

impl Bucket {
    pub fn local() -> Bucket {
        let dir = tempfile::tempdir().unwrap();
        Bucket {
            name: "local",
            url: dir.path().join("bucket").to_string_lossy().into_owned(),
            options: vec![],
            _dir: Some(dir),
            _gcs: None,
            memory: None,
        }
    }

    pub fn memory() -> Bucket {
        Bucket {
            name: "memory",
            url: "memory://".into(),
            options: vec![],
            _dir: None,
            _gcs: None,
            memory: Some(Store::memory()),
        }
    }

    pub fn s3() -> Option<Bucket> {
        let Ok(endpoint) = std::env::var("REPORTER_TEST_S3_ENDPOINT") else {
            return missing("S3 (moto)", "REPORTER_TEST_S3_ENDPOINT");
        };
        let bucket = std::env::var("REPORTER_TEST_S3_BUCKET").unwrap_or("reporter-test".into());
        Some(Bucket {
            name: "s3",
            url: format!("s3://{bucket}/{}", unique("t")),
            options: s3_options(&endpoint),
            _dir: None,
            _gcs: None,
            memory: None,
        })
    }

    pub fn azure() -> Option<Bucket> {
        if std::env::var("AZURITE_BLOB_STORAGE_URL").is_err() {
            return missing("Azure (Azurite)", "AZURITE_BLOB_STORAGE_URL");
        }
        let container =
            std::env::var("REPORTER_TEST_AZURE_CONTAINER").unwrap_or("reporter-test".into());
        Some(Bucket {
            name: "azure",
            url: format!("az://{container}/{}", unique("t")),
            options: vec![("azure_storage_use_emulator".into(), "true".into())],
            _dir: None,
            _gcs: None,
            memory: None,
        })
    }

    pub async fn gcs() -> Bucket {
        let fake = gcs_fake::GcsFake::start().await;
        Bucket {
            name: "gcs",
            url: format!("gs://reporter-test/{}", unique("t")),
            options: vec![(
                "google_service_account_key".into(),
                fake.service_account_key(),
            )],
            _dir: None,
            _gcs: Some(fake),
            memory: None,
        }
    }

    /// A store handle in this process. Memory buckets share one store.
    pub fn store(&self) -> Store {
        if let Some(m) = &self.memory {
            return m.clone();
        }
        store::open(&self.url, &self.options).unwrap()
    }

    /// `--store URL --store-option k=v ...`
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--store".to_string(), self.url.clone()];
        for (k, v) in &self.options {
            args.push("--store-option".into());
            args.push(format!("{k}={v}"));
        }
        args
    }

    pub fn multi_process(&self) -> bool {
        self.memory.is_none()
    }
}

/// The S3 secret key tests use; it must never show in any output.
pub const SECRET: &str = "secret-sentinel-4d1f";

pub fn s3_options(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("aws_endpoint".into(), endpoint.to_string()),
        ("aws_allow_http".into(), "true".into()),
        ("aws_access_key_id".into(), "test".into()),
        ("aws_secret_access_key".into(), SECRET.into()),
        ("aws_region".into(), "us-east-1".into()),
    ]
}

/// A `reporter` process with its stderr collected.
pub struct Proc {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn<S: AsRef<str>>(args: &[S]) -> Proc {
        Self::spawn_cmd(Command::new(bin()), args)
    }

    /// As [`Proc::spawn`], with these environment variables set.
    pub fn spawn_env<S: AsRef<str>>(args: &[S], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.envs(env.iter().copied());
        Self::spawn_cmd(cmd, args)
    }

    /// `reporter run`, as [`Proc::run`], with at most `nofile` open file descriptors.
    pub fn run_limited<S: AsRef<str>>(bucket: &Bucket, extra: &[S], nofile: u64) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut args = vec!["run".to_string(), "--listen".into(), "127.0.0.1:0".into()];
        args.extend(bucket.args());
        args.extend(extra.iter().map(|s| s.as_ref().to_string()));
        let mut cmd = Command::new(bin());
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn_cmd(cmd, &args)
    }

    /// `reporter ARGS` as the user `nobody` when we are root (root ignores permission bits),
    /// from a copy of the binary that `nobody` can reach wherever this checkout lives. The
    /// returned directory holds the copy; keep it while the process runs.
    pub fn spawn_as_nobody<S: AsRef<str>>(args: &[S]) -> (Proc, tempfile::TempDir) {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let exe_dir = tempfile::tempdir().unwrap();
        let mut exe = std::path::PathBuf::from(bin());
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::fs::set_permissions(exe_dir.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            let copy = exe_dir.path().join("reporter");
            std::fs::copy(&exe, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            exe = copy;
        }
        let mut cmd = Command::new(&exe);
        cmd.current_dir(exe_dir.path());
        if root {
            cmd.uid(65534).gid(65534);
        }
        (Self::spawn_cmd(cmd, args), exe_dir)
    }

    /// Another program (an example service), with these environment variables set.
    pub fn spawn_program<S: AsRef<str>>(
        program: &std::path::Path,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(program);
        cmd.envs(env.iter().copied());
        Self::spawn_cmd(cmd, args)
    }

    fn spawn_cmd<S: AsRef<str>>(mut cmd: Command, args: &[S]) -> Proc {
        cmd.args(args.iter().map(|a| a.as_ref()))
            .env("RUST_LOG", "info")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A copy of the binary just written can be briefly "busy" while another test thread
        // forks (the child holds our write descriptor until it execs): try again.
        let mut attempts = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("spawn reporter"),
            }
        };
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Proc { child, log }
    }

    /// `reporter run` with these extra arguments, listening on a free port.
    pub fn run<S: AsRef<str>>(bucket: &Bucket, extra: &[S]) -> Proc {
        let mut args = vec!["run".to_string(), "--listen".into(), "127.0.0.1:0".into()];
        args.extend(bucket.args());
        args.extend(extra.iter().map(|s| s.as_ref().to_string()));
        Proc::spawn(&args)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The endpoint address from the `replica started` log line.
    pub fn addr(&self) -> SocketAddr {
        self.logged_addr("replica started")
    }

    /// The `addr=` of the first log line containing `needle`.
    pub fn logged_addr(&self, needle: &str) -> SocketAddr {
        assert!(
            self.wait_log(needle, Duration::from_secs(30)),
            "no {needle:?} in the log:\n{}",
            self.log()
        );
        let log = self.log();
        let line = log.lines().find(|l| l.contains(needle)).unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap();
        addr.parse().unwrap()
    }

    pub fn instance_id(&self) -> String {
        self.addr();
        let log = self.log();
        let line = log.lines().find(|l| l.contains("replica started")).unwrap();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("instance_id="))
            .unwrap()
            .to_string()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stdout(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            use std::io::Read;
            let _ = out.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `reporter ARGS` to completion: (status code, stdout, stderr).
pub fn reporter<S: AsRef<str>>(args: &[S]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args.iter().map(|a| a.as_ref()))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn get_text(addr: SocketAddr, path: &str) -> String {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let body = get_text(addr, path).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Waits until the replica at `addr` shows a cluster ID.
pub async fn wait_seed_known(addr: SocketAddr) {
    eventually(Duration::from_secs(10), "seed known", || async {
        get_json(addr, "/status/usage-stats").await["clusterID"] != ""
    })
    .await;
}

/// Waits until `f` holds, polling; panics with `what` on timeout.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One POST the receiver took.
#[derive(Clone, Debug)]
pub struct Post {
    pub body: Bytes,
    pub json: serde_json::Value,
    pub content_type: String,
    pub user_agent: String,
    pub idempotency_key: String,
}

/// A stats endpoint on 127.0.0.1 that records every POST; it can be told to fail.
pub struct Receiver {
    pub addr: SocketAddr,
    pub posts: Arc<Mutex<Vec<Post>>>,
    pub failures: Arc<Mutex<Vec<Post>>>,
    fail_next: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicUsize>,
    redirect: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let posts = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let fail_next = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let redirect = Arc::new(Mutex::new(None::<String>));
        let (p, f, n, d, r) = (
            posts.clone(),
            failures.clone(),
            fail_next.clone(),
            delay_ms.clone(),
            redirect.clone(),
        );
        let app = axum::Router::new().route(
            "/report",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (p, f, n, d, r) = (p.clone(), f.clone(), n.clone(), d.clone(), r.clone());
                async move {
                    let delay = d.load(Ordering::SeqCst) as u64;
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let post = Post {
                        json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                        body,
                        content_type: header(&headers, "content-type"),
                        user_agent: header(&headers, "user-agent"),
                        idempotency_key: header(&headers, "idempotency-key"),
                    };
                    let location = r.lock().unwrap().clone();
                    if let Some(location) = location {
                        f.lock().unwrap().push(post);
                        return (StatusCode::FOUND, [("location", location)]).into_response();
                    }
                    let failing = n
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                        .is_ok();
                    if failing {
                        f.lock().unwrap().push(post);
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    } else {
                        p.lock().unwrap().push(post);
                        StatusCode::OK.into_response()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            posts,
            failures,
            fail_next,
            delay_ms,
            redirect,
            task,
        }
    }

    /// Every POST is answered `302 Found` to `location` (or, with `None`, normally again).
    pub fn set_redirect(&self, location: Option<String>) {
        *self.redirect.lock().unwrap() = location;
    }

    /// Every POST takes this long to answer.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms
            .store(d.as_millis() as usize, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}/report", self.addr)
    }

    /// The next `n` POSTs get a 500.
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `stores.len()` replicas race to agree on the seed `name`; the distinct IDs they adopted.
pub async fn agree_all(stores: &[Store], name: &str) -> HashSet<String> {
    let tasks: Vec<_> = stores
        .iter()
        .map(|s| {
            let keeper = usage_reporter::seed::SeedKeeper::new(
                s.clone(),
                name,
                usage_reporter::BuildInfo::reporter(),
            );
            tokio::spawn(async move {
                let cancel = tokio_util::sync::CancellationToken::new();
                keeper.agree(&cancel).await.unwrap().uid().to_string()
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    ids
}

/// (clusterID, interval, instanceID) of a delivered report.
pub type Key = (String, String, String);

pub fn key(p: &Post) -> Key {
    let s = |k: &str| p.json[k].as_str().unwrap_or_default().to_string();
    (s("clusterID"), s("interval"), s("instanceID"))
}

/// Distinct slots among the posts.
pub fn slots_in(posts: &[Post]) -> usize {
    posts.iter().map(|p| key(p).1).collect::<HashSet<_>>().len()
}

/// Checks that no report was delivered twice, that at least `min_slots` slots were, and that
/// every replica in `ids` is in every slot but the first (which may precede a start) and the
/// newest (whose delivery may be in progress: the leader posts one report at a time).
pub fn check_once_per_slot(
    posts: &[Post],
    ids: &[String],
    min_slots: usize,
    what: &str,
) -> HashSet<Key> {
    let mut seen = HashSet::new();
    let mut by_slot: HashMap<String, HashSet<String>> = HashMap::new();
    for p in posts {
        let k = key(p);
        assert!(seen.insert(k.clone()), "{what}: delivered twice: {k:?}");
        by_slot.entry(k.1).or_default().insert(k.2);
    }
    let mut slots: Vec<_> = by_slot.keys().cloned().collect();
    slots.sort();
    assert!(
        slots.len() >= min_slots,
        "{what}: too few slots delivered: {slots:?}"
    );
    let judged = slots
        .get(1..slots.len().saturating_sub(1))
        .unwrap_or_default();
    for slot in judged {
        for id in ids {
            assert!(
                by_slot[slot].contains(id),
                "{what}: slot {slot} lacks the report of {id}"
            );
        }
    }
    seen
}

/// `reporter run` timings for tests: 1 s slots, the given lease TTL, 300 ms collect delay,
/// nothing cleaned up during the test, delivery to `stats_url`.
pub fn fast_args(stats_url: &str, lease_ttl: &str) -> Vec<String> {
    [
        "--interval",
        "1s",
        "--lease-ttl",
        lease_ttl,
        "--collect-delay",
        "300ms",
        "--retention",
        "1h",
        "--stats-url",
        stats_url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `--store s3://nobucket/p` with options pointing at 127.0.0.1:1, where nothing listens.
pub fn unreachable_s3_args() -> Vec<String> {
    let mut args = vec!["--store".to_string(), "s3://nobucket/p".into()];
    for (k, v) in s3_options("http://127.0.0.1:1") {
        args.push("--store-option".into());
        args.push(format!("{k}={v}"));
    }
    args
}

/// The replica's `/metrics` text; empty if it does not answer.
pub async fn metrics(addr: SocketAddr) -> String {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `/metrics` text as a real OpenMetrics client reads it (the strict parser of PyPI's
/// `prometheus-client`, which refuses a missing `# EOF`, a bad suffix or a bad escape): its
/// families, each `{"name", "type", "samples": [{"name", "labels", "value"}]}`. `None` when
/// no Python is configured (the test script always configures it).
pub fn openmetrics(text: &str) -> Option<Vec<serde_json::Value>> {
    let python = rx::python("OpenMetrics checks")?;
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "samples": [
        {"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The sum of a metric's samples in Prometheus text, over all its labels.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Every key under `prefix` in the bucket, and its bytes.
pub async fn objects(store: &Store, prefix: &str) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    for key in store.list(prefix).await.unwrap() {
        if let Ok(obj) = store.get(&key).await {
            out.push((key, obj.bytes));
        }
    }
    out
}

/// Runs `reporter run` with `args` (no store touched before validation): status and stderr.
pub fn run_refused(args: &[&str]) -> (i32, String) {
    let mut all = vec!["run", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (code, _, err) = reporter(&all);
    (code, err)
}
