//! Forwarding to backends: hyper's HTTP/1.1 client on smol, a bounded keep-alive pool per
//! backend, connect and response timeouts, failover and round-robin lists, HTTP and HTTPS.
//!
//! A connection returns to its pool only once its response has been read to the end (hyper's
//! `SendRequest::ready` says so), so a pooled connection is always idle. Only a request that was
//! never sent (the connection failed before any byte of it went out) is tried again, on the next
//! URL of its list: once a request has been sent, it may have had effects, and a gateway must not
//! repeat it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::server::io::HyperIo;
use crate::server::rt::{self, Sleep};
use hyper::client::conn::http1::SendRequest;

use crate::bundle::model::{EndpointKind, Endpoints, HttpUrl};

use super::ProxyBody;
use super::body::Meter;

/// Why a backend gave no response. The fault is the backend's (or the network's).
#[derive(Debug)]
pub enum UpstreamError {
    /// No URL of the list accepted a connection in time: 502, 101503.
    Unreachable(String),
    /// The response head did not arrive in time: 504, 101504.
    Timeout,
    /// The connection failed after the request was sent: 502, 101503.
    Failed(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Unreachable(e) => write!(f, "backend unreachable: {e}"),
            UpstreamError::Timeout => f.write_str("backend did not answer in time"),
            UpstreamError::Failed(e) => write!(f, "backend connection failed: {e}"),
        }
    }
}

/// At most one backend warning a second reaches the log (journald, on flash): a flapping backend
/// under load would otherwise write thousands of lines a minute. The rest are counted and the
/// count is said in the next line that gets through; `gatelet_backend_errors_total` counts all.
#[derive(Debug)]
pub struct LogLimiter {
    second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub const fn new() -> Self {
        LogLimiter { second: AtomicU64::new(u64::MAX), suppressed: AtomicU64::new(0) }
    }

    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.second.load(Ordering::Relaxed);
        if last != now
            && self.second.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new()
    }
}

/// Backend connection and forwarding warnings.
pub static BACKEND_WARNINGS: LogLimiter = LogLimiter::new();

/// " (N similar lines suppressed)" when N > 0.
pub fn suppressed_note(n: u64) -> String {
    if n == 0 { String::new() } else { format!(" ({n} similar lines suppressed)") }
}

/// Resolves `timeout` after the request body has been sent. While the client is still sending
/// it, the backend is not late: a client that stalls is stopped by its own idle timeout (and it
/// is the client's fault, not the backend's). A backend that stops taking the body (no bytes
/// move for `timeout` while the client has more) is late, like one that does not answer.
async fn response_deadline(timeout: Duration, body: &Meter) {
    let mut seen = body.bytes.load(Ordering::Relaxed);
    loop {
        if let Some(done) = body.done_at.get() {
            Sleep::until(*done + timeout).await;
            return;
        }
        Sleep::after(timeout).await;
        let now = body.bytes.load(Ordering::Relaxed);
        let waiting_on_client = body.waiting_on_sender.load(Ordering::Relaxed);
        if body.done_at.get().is_none() && now == seen && !waiting_on_client {
            return;
        }
        seen = now;
    }
}

/// A backend connection: the request side, and the switch that closes it if a request on it
/// is abandoned (the connection's task would otherwise wait on the backend forever).
struct Conn {
    sender: SendRequest<ProxyBody>,
    abort: smol::channel::Sender<()>,
}

type PoolKey = (bool, String, u16);

/// How long a pool remembers its busiest moment: idle connections are kept up to the most that
/// were in use at once within the last one or two of these windows.
const PEAK_WINDOW: Duration = Duration::from_secs(60);

/// One worker's connections to one backend.
#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    /// Connections out with a request now.
    in_use: usize,
    /// Most in use at once in this window, and in the one before.
    peak: usize,
    peak_before: usize,
    window_start: Option<Instant>,
}

impl Pool {
    fn lease(&mut self) {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
    }

    /// Idle connections worth keeping: never fewer than `floor` (`backend_pool_size`), and as
    /// many as the recent load had in use at once, so steady load never closes a connection it
    /// will open again a moment later.
    fn keep(&mut self, floor: usize, now: Instant) -> usize {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= PEAK_WINDOW {
            self.peak_before = self.peak;
            self.peak = self.in_use;
            self.window_start = Some(now);
        }
        floor.max(self.peak).max(self.peak_before)
    }
}

thread_local! {
    /// Each worker keeps its own connections: a request and its backend connection live on one
    /// thread, and no lock is taken to lend or return one.
    static POOLS: RefCell<HashMap<PoolKey, Pool>> = RefCell::new(HashMap::new());
}

fn with_pool<R>(key: &PoolKey, f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
    POOLS
        .try_with(|p| {
            let mut pools = p.borrow_mut();
            if let Some(pool) = pools.get_mut(key) {
                return Some(f(pool));
            }
            Some(f(pools.entry(key.clone()).or_default()))
        })
        .ok()
        .flatten()
}

/// A connection lent to one request: when it is dropped (returned, failed or abandoned) the
/// pool's count of connections in use goes down.
struct Lease {
    key: PoolKey,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = with_pool(&self.key, |p| p.in_use = p.in_use.saturating_sub(1));
    }
}

/// Connections to every backend, per worker (and kept across bundle swaps).
pub struct Upstreams {
    pool_size: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// Round-robin position, shared by all load-balanced lists (fair enough, and one atomic).
    next: AtomicUsize,
    tls: async_native_tls::TlsConnector,
    /// Connections opened, over the gateway's life (`gatelet_backend_connects_total`).
    connects: AtomicU64,
    /// Idle connections in all workers' pools.
    idle: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").field("pool_size", &self.pool_size).finish_non_exhaustive()
    }
}

impl Upstreams {
    pub fn new(
        pool_size: usize,
        connect_timeout: Duration,
        response_timeout: Duration,
        extra_root: Option<async_native_tls::Certificate>,
    ) -> Upstreams {
        let mut tls = async_native_tls::TlsConnector::new()
            .min_protocol_version(Some(async_native_tls::Protocol::Tlsv12));
        if let Some(root) = extra_root {
            tls = tls.add_root_certificate(root);
        }
        Upstreams {
            pool_size,
            connect_timeout,
            response_timeout,
            next: AtomicUsize::new(0),
            tls,
            connects: AtomicU64::new(0),
            idle: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Backend connections opened so far.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Idle pooled connections, all workers together.
    pub fn idle(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }

    fn take_idle(&self, key: &PoolKey) -> Option<(Conn, Lease)> {
        with_pool(key, |p| {
            while let Some(c) = p.idle.pop() {
                self.idle.fetch_sub(1, Ordering::Relaxed);
                if c.sender.is_ready() {
                    p.lease();
                    return Some(c);
                }
            }
            None
        })
        .flatten()
        .map(|c| (c, Lease { key: key.clone() }))
    }

    fn put_idle(&self, key: PoolKey, mut conn: Conn, lease: Lease) {
        // Wait until the response has been read to the end, then offer the connection back.
        let floor = self.pool_size;
        let idle = Arc::clone(&self.idle);
        rt::spawn(async move {
            if conn.sender.ready().await.is_ok() {
                drop(lease);
                let _ = with_pool(&key, |p| {
                    if p.idle.len() < p.keep(floor, Instant::now()) {
                        p.idle.push(conn);
                        idle.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })
        .detach();
    }

    async fn connect(&self, url: &HttpUrl) -> Result<(Conn, Lease), String> {
        let connect = async {
            let addrs: Vec<SocketAddr> = match url.host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, url.port)],
                Err(_) => {
                    // A name: resolved off the worker (the system resolver blocks).
                    let target = (url.host.clone(), url.port);
                    smol::unblock(move || target.to_socket_addrs().map(Iterator::collect))
                        .await
                        .map_err(|e| format!("resolving {}: {e}", url.host))?
                }
            };
            let mut last = format!("{}: no address", url.host);
            for addr in addrs {
                match rt::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(last)
        };
        let tcp = smol::future::or(connect, async {
            Sleep::after(self.connect_timeout).await;
            Err(format!("connect timeout after {} ms", self.connect_timeout.as_millis()))
        })
        .await?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        let key: PoolKey = (url.tls, url.host.clone(), url.port);
        let _ = with_pool(&key, Pool::lease);
        let lease = Lease { key };
        let conn = if url.tls {
            let tls = smol::future::or(
                async { self.tls.connect(url.host.as_str(), tcp).await.map_err(|e| format!("TLS: {e}")) },
                async {
                    Sleep::after(self.connect_timeout).await;
                    Err("TLS handshake timeout".to_owned())
                },
            )
            .await?;
            self.handshake(tls).await?
        } else {
            self.handshake(tcp).await?
        };
        Ok((conn, lease))
    }

    async fn handshake<S>(&self, stream: S) -> Result<Conn, String>
    where
        S: smol::io::AsyncRead + smol::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(HyperIo::new(stream)).await.map_err(|e| e.to_string())?;
        let (abort, aborted) = smol::channel::bounded::<()>(1);
        // The task holds a sender too, so only an explicit `close` (not a drop) ends it early.
        let keep_open = abort.clone();
        rt::spawn(async move {
            let _keep_open = keep_open;
            let ended = smol::future::or(async { conn.await.map_err(|e| e.to_string()) }, async {
                let _ = aborted.recv().await;
                Err("abandoned: the backend did not answer in time".to_owned())
            })
            .await;
            if let Err(e) = ended {
                log::debug!("backend connection closed: {e}");
            }
        })
        .detach();
        Ok(Conn { sender, abort })
    }

    /// Picks the URL order for one request: failover tries the list in order; load balancing
    /// starts at the next position in the rotation. Each URL comes once, then `retries` more
    /// attempts continue round the list (a single URL is tried again).
    fn order<'e>(&self, endpoints: &'e Endpoints) -> impl Iterator<Item = &'e HttpUrl> {
        let n = endpoints.urls.len();
        let start = match endpoints.kind {
            EndpointKind::LoadBalance => self.next.fetch_add(1, Ordering::Relaxed) % n.max(1),
            EndpointKind::Single | EndpointKind::Failover => 0,
        };
        let attempts = if n == 0 { 0 } else { n + usize::from(endpoints.retries) };
        (0..attempts).map(move |i| &endpoints.urls[(start + i) % n])
    }

    /// Sends `request` to the first URL of `endpoints` that takes it, with the URI set to the
    /// URL's path followed by `resource` and `query` and `Host` set to the URL's authority. A
    /// pooled connection that turns out closed before the request left is replaced by a fresh
    /// one; a fresh connection that fails before the request left counts as an attempt, like a
    /// failed connect (see [`Upstreams::order`]); a request that left is never sent again. The
    /// list's `timeout_ms`, when set, replaces the device's response timeout.
    pub async fn send(
        &self,
        endpoints: &Endpoints,
        resource: &str,
        query: &str,
        request: hyper::Request<ProxyBody>,
        body: &Meter,
    ) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError> {
        let mut last_err = String::from("no endpoint");
        let mut unsent = Some(request);
        let timeout =
            endpoints.timeout_ms.map_or(self.response_timeout, |t| Duration::from_millis(u64::from(t)));
        for url in self.order(endpoints) {
            // Parsed when the bundle was decoded; printed as written.
            let raw = url;
            let key: PoolKey = (url.tls, url.host.clone(), url.port);
            for fresh in [false, true] {
                let pooled = if fresh { None } else { self.take_idle(&key) };
                let (mut conn, lease) = match pooled {
                    Some(s) => s,
                    None => match self.connect(url).await {
                        Ok(s) => s,
                        Err(e) => {
                            if let Some(suppressed) = BACKEND_WARNINGS.admit() {
                                log::warn!("backend {raw}: {e}{}", suppressed_note(suppressed));
                            }
                            last_err = format!("{raw}: {e}");
                            break;
                        }
                    },
                };
                let Some(mut req) = unsent.take() else {
                    return Err(UpstreamError::Failed("request already sent".into()));
                };
                if let Err(e) = retarget(&mut req, url, resource, query) {
                    return Err(UpstreamError::Failed(e));
                }
                let response =
                    smol::future::or(async { Some(conn.sender.try_send_request(req).await) }, async {
                        response_deadline(timeout, body).await;
                        None
                    })
                    .await;
                match response {
                    None => {
                        // The request may be stuck half-sent: close the connection, which also
                        // releases the client's body it was carrying.
                        conn.abort.close();
                        return Err(UpstreamError::Timeout);
                    }
                    Some(Ok(resp)) => {
                        self.put_idle(key, conn, lease);
                        return Ok(resp);
                    }
                    Some(Err(mut e)) => match e.take_message() {
                        // Not sent: the pooled connection was stale. Try a fresh one.
                        Some(req) if !fresh => {
                            log::debug!("pooled backend connection was closed; reconnecting");
                            unsent = Some(req);
                        }
                        // Not sent on a fresh connection either: the next attempt, if any.
                        Some(req) => {
                            unsent = Some(req);
                            last_err = format!("{raw}: {}", e.into_error());
                            break;
                        }
                        None => return Err(UpstreamError::Failed(e.into_error().to_string())),
                    },
                }
            }
        }
        Err(UpstreamError::Unreachable(last_err))
    }
}

/// Points a request at `url`: origin-form URI (the URL's path, then the resource and query) and
/// the `Host` header. The API root (`/`) under an endpoint with a path is the path itself
/// (`/ctx` → `http://backend/base`, not `/base/`).
/// The query a backend receives: the endpoint URL's own parameters first, then the caller's
/// (`caller` is `?...` or empty). Both are sent as they are; a parameter in both appears twice,
/// endpoint first.
fn combined_query(endpoint: &str, caller: &str) -> String {
    match (endpoint.is_empty(), caller.strip_prefix('?')) {
        (true, _) => caller.to_owned(),
        (false, None | Some("")) => format!("?{endpoint}"),
        (false, Some(c)) => format!("?{endpoint}&{c}"),
    }
}

fn retarget(
    req: &mut hyper::Request<ProxyBody>,
    url: &HttpUrl,
    resource: &str,
    query: &str,
) -> Result<(), String> {
    let resource = if resource == "/" && !url.path.is_empty() { "" } else { resource };
    let path = format!("{}{resource}{}", url.path, combined_query(&url.query, query));
    *req.uri_mut() = path.parse().map_err(|e| format!("bad backend URI {path:?}: {e}"))?;
    let value = hyper::header::HeaderValue::from_str(&url.host_header()).map_err(|e| e.to_string())?;
    req.headers_mut().insert(hyper::header::HOST, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_query_comes_first() {
        assert_eq!(combined_query("", "?a=1"), "?a=1");
        assert_eq!(combined_query("", ""), "");
        assert_eq!(combined_query("key=k", ""), "?key=k");
        assert_eq!(combined_query("key=k", "?"), "?key=k");
        assert_eq!(combined_query("key=k", "?a=1&key=x"), "?key=k&a=1&key=x");
    }

    #[test]
    fn one_warning_a_second_and_a_count_of_the_rest() {
        let l = LogLimiter::new();
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        // The next second (set back by hand rather than waited for).
        l.second.store(0, Ordering::Relaxed);
        assert_eq!(l.admit(), Some(2));
        assert_eq!(suppressed_note(2), " (2 similar lines suppressed)");
        assert_eq!(suppressed_note(0), "");
    }
}
