//! The HTTP server of both a replica's endpoint and the receiver, bounded by [`Limits`] so that
//! idle or slow clients cannot take memory or file descriptors from the real work, nor keep a
//! legitimate request waiting: a cap on connections overall (idle ones closed early when busy;
//! past the cap, new ones wait in the kernel's backlog, costing the process nothing) and per
//! client, request headers within [`HEADER_READ_TIMEOUT`] (also between requests on a
//! kept-alive connection), the body and answer within [`Limits::request_timeout`], and a
//! connection closed gracefully once it is [`MAX_CONNECTION_AGE`] old.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::net::Cidr;

/// How a server bounds its clients, so that idle, slow or many connections cannot keep a
/// legitimate request waiting.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Connections at once. Past three quarters of it, idle connections (kept alive between
    /// requests, or not yet past their headers) are closed, oldest first, down to half; at it,
    /// new connections wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Connections at once from one client (its /24 or /48, see [`crate::net::client_group`]);
    /// past it, a new one is closed at once.
    pub per_client: usize,
    /// Peers exempt from `per_client`: trusted proxies carry many clients on their connections.
    pub exempt: Vec<Cidr>,
    /// Once its headers are in, a request's body must arrive and its answer be ready within
    /// this; past it the client gets a 408 and the connection is closed.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// A replica's endpoint: a few scrapers and operators.
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            per_client: MAX_CONNECTIONS,
            exempt: Vec::new(),
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// A replica endpoint's connections at once.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a client may take to send a request's headers, or to start the next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request's body and answer may take once its headers are in.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection is served before it is closed gracefully.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// What a server did to hold its bounds, for its `/metrics`.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections closed at once: their client had too many open.
    pub refused: AtomicU64,
    /// Idle connections closed early because the server was busy.
    pub evicted: AtomicU64,
    /// Requests answered 408: their body or answer took too long.
    pub timed_out: AtomicU64,
    /// Requests being answered now.
    pub in_flight: AtomicUsize,
}

/// One open connection, as the accept loop sees it.
#[derive(Debug)]
struct Conn {
    /// The client group it counts against, `None` for an exempt peer.
    group: Option<IpAddr>,
    /// Requests being answered on it; 0 means idle, and so closable early.
    in_flight: AtomicUsize,
    /// Cancelled to close it gracefully.
    close: CancellationToken,
}

/// Every open connection, oldest first.
#[derive(Debug, Default)]
struct Conns {
    inner: Mutex<ConnsInner>,
    /// Notified whenever a connection closes.
    closed: Notify,
}

#[derive(Debug, Default)]
struct ConnsInner {
    next: u64,
    open: BTreeMap<u64, Arc<Conn>>,
    per_group: HashMap<IpAddr, usize>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Registers a connection unless its group is at `cap` with none of its connections idle;
    /// at the cap, the group's oldest idle connection is asked to close to make room, so one
    /// host holding idle connections cannot lock its neighbours out.
    fn open(self: &Arc<Self>, group: Option<IpAddr>, cap: usize) -> Option<ConnGuard> {
        let mut inner = self.lock();
        if let Some(g) = group {
            if inner.per_group.get(&g).copied().unwrap_or(0) >= cap {
                let idle = inner.open.values().find(|c| {
                    c.group == Some(g)
                        && c.in_flight.load(Ordering::Acquire) == 0
                        && !c.close.is_cancelled()
                })?;
                idle.close.cancel();
            }
            *inner.per_group.entry(g).or_default() += 1;
        }
        let id = inner.next;
        inner.next += 1;
        let conn = Arc::new(Conn {
            group,
            in_flight: AtomicUsize::new(0),
            close: CancellationToken::new(),
        });
        inner.open.insert(id, conn.clone());
        Some(ConnGuard {
            conns: self.clone(),
            id,
            conn,
        })
    }

    /// Asks up to `n` idle connections, oldest first, to close; how many were asked.
    fn close_idle(&self, n: usize) -> usize {
        let inner = self.lock();
        let mut asked = 0;
        for conn in inner.open.values() {
            if asked == n {
                break;
            }
            if conn.in_flight.load(Ordering::Acquire) == 0 && !conn.close.is_cancelled() {
                conn.close.cancel();
                asked += 1;
            }
        }
        asked
    }
}

/// Unregisters its connection when the connection's task ends.
struct ConnGuard {
    conns: Arc<Conns>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut inner = self.conns.lock();
        inner.open.remove(&self.id);
        if let Some(g) = self.conn.group {
            if let Some(n) = inner.per_group.get_mut(&g) {
                *n -= 1;
                if *n == 0 {
                    inner.per_group.remove(&g);
                }
            }
        }
        drop(inner);
        self.conns.closed.notify_waiters();
    }
}

/// Takes one back from a gauge when dropped.
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request in flight on its connection for as long as it lives.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds `addr` and serves until `shutdown` fires, within `limits`. Returns the bound address,
/// the task, and the server's figures.
///
/// # Errors
///
/// The address cannot be bound (taken, or not this host's), as the system said.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>, Arc<ServerStats>)> {
    let listener = listen(addr)?;
    let local = listener.local_addr()?;
    let stats = Arc::new(ServerStats::default());
    let task = tokio::spawn(accept(listener, router, limits, stats.clone(), shutdown));
    Ok((local, task, stats))
}

/// Connections the kernel queues before they are accepted: a burst (a slot's deliveries, a
/// crowd of scrapers) waits there rather than having its SYNs dropped and retried a second
/// later.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Waits until a new connection may be taken: closes idle ones when busy, and past the cap
/// waits for one to close. `false` on shutdown.
async fn room(
    conns: &Conns,
    limits: &Limits,
    stats: &ServerStats,
    shutdown: &CancellationToken,
) -> bool {
    let busy = (limits.max_connections * 3 / 4).max(1);
    loop {
        let n = conns.len();
        if n >= busy {
            let asked = conns.close_idle(n - limits.max_connections / 2);
            stats.evicted.fetch_add(asked as u64, Ordering::Relaxed);
        }
        if n < limits.max_connections {
            return true;
        }
        let closed = conns.closed.notified();
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = closed => {}
            // Connections asked to close may be past their request: look again soon.
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

async fn accept(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
) {
    let conns = Arc::new(Conns::default());
    let connections = TaskTracker::new();
    let mut failing = false;
    loop {
        if !room(&conns, &limits, &stats, &shutdown).await {
            break;
        }
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    if !failing {
                        tracing::warn!(error = %e, "HTTP endpoint cannot accept connections; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if failing {
            tracing::info!("HTTP endpoint accepts connections again");
            failing = false;
        }
        let group = (!crate::net::trusted(&limits.exempt, peer.ip()))
            .then(|| crate::net::client_group(peer.ip()));
        let Some(guard) = conns.open(group, limits.per_client) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let service = request_service(router.clone(), peer, guard.conn.clone(), &limits, &stats);
        let (shutdown, stats) = (shutdown.clone(), stats.clone());
        let request_timeout = limits.request_timeout;
        connections.spawn(async move {
            let close = guard.conn.close.clone();
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(JsonErrors::new(stream)), service);
            let mut conn = std::pin::pin!(conn);
            let closing = async {
                tokio::select! {
                    _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
                    _ = shutdown.cancelled() => {}
                    _ = close.cancelled() => {}
                }
            };
            let finished = tokio::select! {
                _ = conn.as_mut() => true,
                _ = closing => false,
            };
            if !finished {
                // Finish the request in flight, if any (it has its own deadline), then close.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(request_timeout, conn.as_mut()).await;
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(guard);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
}

/// One connection's requests: the peer in `ConnectInfo` (as axum's own server gives it; the
/// receiver's rate limit reads it, in memory only), counted in flight, within the deadline.
fn request_service(
    router: Router,
    peer: SocketAddr,
    conn: Arc<Conn>,
    limits: &Limits,
    stats: &Arc<ServerStats>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send,
> + Clone {
    let deadline = limits.request_timeout;
    let stats = stats.clone();
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let (router, stats) = (router.clone(), stats.clone());
        let in_flight = InFlight::new(conn.clone());
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        async move {
            let _in_flight = in_flight;
            let _counted = Decrement(&stats.in_flight);
            match tokio::time::timeout(deadline, router.oneshot(req)).await {
                Ok(answer) => answer,
                Err(_) => {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    let body = serde_json::json!({"error": format!(
                        "the request's body and answer did not finish within {}",
                        crate::timefmt::format_duration(deadline)
                    )});
                    Ok((
                        StatusCode::REQUEST_TIMEOUT,
                        [(header::CONNECTION, "close")],
                        axum::Json(body),
                    )
                        .into_response())
                }
            }
        }
    })
}

/// The connection's bytes, with the error answers hyper writes by itself made one line of
/// JSON like every other error. hyper answers a request it cannot parse (a bad
/// `Content-Length`, headers over its limit, a broken request line) with a status and no
/// body; such a response, and any other body-less 4xx or 5xx, gets `{"error": "..."}`.
/// Everything else passes through untouched.
struct JsonErrors<S> {
    inner: S,
    /// A rewritten response not yet written whole, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S> JsonErrors<S> {
    fn new(inner: S) -> Self {
        JsonErrors {
            inner,
            pending: None,
        }
    }
}

/// The JSON version of a body-less error response, if `head` is one.
fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    // A body-less head is short; a long buffer (a body, a tail after a partial write) is not
    // one, and is not scanned.
    if head.len() > 4096 || !head.starts_with(b"HTTP/1.") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let status: u16 = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    let (headers, rest) = text.split_once("\r\n\r\n")?;
    if status < 400 || !rest.is_empty() {
        return None;
    }
    let mut lines = headers.split("\r\n");
    let status_line = lines.next()?;
    let others: Vec<&str> = lines.collect();
    if !others
        .iter()
        .any(|l| l.eq_ignore_ascii_case("content-length: 0"))
    {
        return None;
    }
    let message = match status {
        400 => "the request is not HTTP/1.1 that can be read (request line, a header or Content-Length)",
        404 => "no such route",
        405 => "this route does not take that method",
        414 => "the request's URI is too long",
        431 => "the request's headers are too large",
        _ => "the request cannot be answered",
    };
    let body = serde_json::json!({ "error": message }).to_string();
    let mut out = format!("{status_line}\r\n");
    for l in others {
        let name = l.split(':').next().unwrap_or_default();
        if !name.eq_ignore_ascii_case("content-length")
            && !name.eq_ignore_ascii_case("content-type")
        {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

impl<S: tokio::io::AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is pending; ready once it is all written.
    fn drive(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonErrors<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonErrors<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = self.get_mut();
        match this.drive(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if let Some(rewritten) = with_json_body(buf) {
            this.pending = Some((rewritten, 0));
            if let Poll::Ready(Err(e)) = this.drive(cx) {
                return Poll::Ready(Err(e));
            }
            // The caller's bytes are taken: the rest is written by flush.
            return Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.drive(cx))?;
        std::pin::Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.drive(cx))?;
        std::pin::Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then hands each response head over in one buffer.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_less_error_answers_get_a_json_line_and_nothing_else_changes() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(with_json_body(hyper_400).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ndate: x\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("Content-Length"));
        // A response with a body, a success, or a partial head pass untouched.
        for same in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n",
            b"{\"clusterID\":1}",
        ] {
            assert!(with_json_body(same).is_none());
        }
    }
}
