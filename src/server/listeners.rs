//! The listeners: accept loops, one connection's life (first head, framing guard, hyper), and
//! the shutdown signal that ends both.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;

use super::gateway::{Gateway, StartError};
use super::guard;
use super::io::HyperIo;
use super::rt;
use super::tls::TlsAcceptor;

/// A shutdown signal every task can wait on: closing the channel wakes all receivers.
#[derive(Debug, Clone)]
pub struct Shutdown(smol::channel::Receiver<()>);

/// The sending half of [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(smol::channel::Sender<()>);

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = smol::channel::bounded(1);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Resolves when shutdown was triggered.
    pub async fn wait(&self) {
        let _ = self.0.recv().await;
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_closed()
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.close();
    }
}
/// The listeners' TLS identity: PEM certificate chain and key; TLS 1.3 and 1.2 only.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
    TlsAcceptor::from_pem_files(cert, key)
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Http,
    Https,
    Admin,
}

/// Accepts connections on `listener` (registered on the calling worker) until shutdown, and
/// serves each with hyper as a task of the same worker.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: rt::Listener,
    role: Role,
    tls: Option<TlsAcceptor>,
    limit: Arc<rt::ConnLimit>,
    shutdown: Shutdown,
) {
    loop {
        // Room first, then a connection: a worker never holds a place while it waits for a
        // client, so the places go to the workers whose clients are waiting.
        let ready = smol::future::or(
            async {
                limit.room().await;
                listener.readable().await;
                true
            },
            async {
                shutdown.wait().await;
                false
            },
        )
        .await;
        if !ready {
            return;
        }
        let Some((stream, peer, permit)) = listener.accept_within(&limit).await else { continue };
        let gw = Arc::clone(&gw);
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        rt::spawn(async move {
            // Admin connections are not client traffic: they neither count nor delay a drain.
            let counted = role != Role::Admin;
            if counted {
                gw.metrics.connections_active.fetch_add(1, Ordering::Relaxed);
                gw.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
            }
            match tls {
                None => connection(Arc::clone(&gw), stream, peer, role, shutdown).await,
                Some(acceptor) => {
                    let timeout = Duration::from_millis(gw.config.server.header_read_timeout_ms);
                    match acceptor.accept_within(stream, timeout).await {
                        Some(Ok(s)) => connection(Arc::clone(&gw), s, peer, role, shutdown).await,
                        Some(Err(e)) => log::debug!("TLS handshake with {peer}: {e}"),
                        None => log::debug!("TLS handshake with {peer}: timeout"),
                    }
                }
            }
            if counted {
                gw.metrics.connections_active.fetch_sub(1, Ordering::Relaxed);
            }
            drop(permit);
        })
        .detach();
    }
}

async fn connection<S>(gw: Arc<Gateway>, mut stream: S, peer: SocketAddr, role: Role, shutdown: Shutdown)
where
    S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &gw.config.server;
    // The first head is read before hyper starts: a client that is slow to send it (or sends
    // nothing) holds the bytes it sent, charged to the head budget, and not hyper's buffers.
    let max_head = cfg.max_header_bytes as usize;
    let head_timeout = Duration::from_millis(cfg.header_read_timeout_ms);
    let first = smol::future::or(
        async { Some(guard::read_first_head(&mut stream, &gw.head_budget, max_head).await) },
        async {
            smol::future::or(rt::Sleep::after(head_timeout), async {
                shutdown.wait().await;
            })
            .await;
            None
        },
    )
    .await;
    let prefix = match first {
        Some(Ok(prefix)) => prefix,
        Some(Err(guard::FirstHead::Shed)) => {
            log::debug!("connection {peer}: unfinished head shed (head memory budget)");
            return;
        }
        // No head in time (slowloris, an idle connection), or shutting down: close.
        None => return,
    };
    let events =
        Arc::new(ConnEvents { gw: Arc::clone(&gw), peer, last_line: std::sync::Mutex::new(Vec::new()) });
    let mut guarded =
        guard::Guarded::new(stream, max_head).with_prefix(prefix).with_budget(Arc::clone(&gw.head_budget));
    if role != Role::Admin {
        guarded = guarded.with_events(Arc::clone(&events) as Arc<dyn guard::GuardEvents>);
    }
    let io = HyperIo::new(guarded);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(rt::HyperTimer)
        .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms))
        .max_buf_size((cfg.max_header_bytes as usize).max(8192))
        .max_header_size(cfg.max_header_bytes as usize)
        .keep_alive(true);
    let svc_gw = Arc::clone(&gw);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let gw = Arc::clone(&svc_gw);
        async move {
            let resp = match role {
                Role::Admin => gw.admin(&req),
                Role::Http | Role::Https => gw.handle(req, peer, role == Role::Https).await,
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    // The connection owns the stream (and the guard in it); when this block ends both are gone,
    // and what the guard saw last is in `events`.
    let result = {
        let conn = builder.serve_connection(io, service);
        smol::pin!(conn);
        let done = smol::future::or(async { Some(conn.as_mut().await) }, async {
            shutdown.wait().await;
            None
        })
        .await;
        match done {
            Some(r) => r,
            None => {
                // Finish the request in flight (if any), then close.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        log::debug!("connection {peer}: {e}");
        // hyper answered a head its parser refused (400, or 431 past max_header_bytes): one
        // record each, like the guard's refusals.
        if role != Role::Admin && e.is_parse() {
            let line = events.last_line.lock().map(|l| l.clone()).unwrap_or_default();
            let (status, detail) = if e.is_parse_too_large() {
                (431, "request head larger than server.max_header_bytes")
            } else {
                (400, "malformed request head (HTTP parser)")
            };
            gw.record_refusal(peer, &line, status, None, detail);
        }
    }
}

/// What a connection's framing guard reports, turned into records and counts.
struct ConnEvents {
    gw: Arc<Gateway>,
    peer: SocketAddr,
    last_line: std::sync::Mutex<Vec<u8>>,
}

impl guard::GuardEvents for ConnEvents {
    fn refused(&self, why: guard::Smuggling, request_line: &[u8], answered: bool) {
        let detail = if answered {
            why.describe().to_owned()
        } else {
            format!(
                "{}; a later request of a keep-alive connection: closed without an answer",
                why.describe()
            )
        };
        self.gw.record_refusal(self.peer, request_line, 400, answered.then_some(900906), &detail);
    }

    fn closed(&self, last_request_line: &[u8]) {
        if let Ok(mut l) = self.last_line.lock() {
            l.extend_from_slice(last_request_line);
        }
    }
}
