//! First boot: `gatelet run` on a board that has its config and an inbox, but no bundle yet.
//!
//! A freshly flashed board carries the device config and the publisher's key; its first bundle
//! arrives later through the inbox (an update agent, rsync, a USB stick). Until then `run` binds
//! its listeners and says why it is not serving: `/healthz` 200, `/readyz` 503 ("waiting for the
//! first bundle"), every data-plane request a 503 fault (101503), and systemd a `STATUS=` line.
//! The first inbox file that verifies against the trusted keys, passes the rollback check and
//! builds is installed at `bundle.path`; the listeners are then handed over, still bound, to the
//! normal start ([`crate::daemon::start_on`]), which records the rollback mark as every start
//! does. A refused file is set aside as `.refused-<name>`, as on any reload. A bundle put at
//! `bundle.path` by other means is taken too (on the next poll or SIGHUP).
//!
//! Without an inbox there is no way for a bundle to arrive, so a missing bundle stays a start-up
//! error there.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use smol::stream::StreamExt;

use crate::config::Config;
use crate::daemon::{self, Listeners};
use crate::server::body::full;
use crate::server::guard::Guarded;
use crate::server::io::HyperIo;
use crate::server::{self, ProxyBody, StartError, TlsAcceptor, rt};
use crate::state::StateStore;

/// What `/readyz`, the data plane's faults, `check` and systemd's status say meanwhile.
pub const WAITING: &str = "waiting for the first bundle";
/// Connections served at once while waiting: enough for health checks and retrying clients,
/// few enough that a flood holds little memory (every answer is a small fixed one).
const MAX_CONNECTIONS: usize = 64;

/// Whether `run` should wait for its first bundle: an inbox is configured and nothing is at
/// `bundle.path`.
pub fn pending(config: &Config) -> bool {
    !config.bundle.inbox.is_empty()
        && matches!(std::fs::symlink_metadata(&config.bundle.path),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

fn trusted_keys(config: &Config) -> Result<Vec<ed25519_dalek::VerifyingKey>, StartError> {
    config
        .bundle
        .trusted_keys
        .iter()
        .map(|p| crate::keys::load_verifying_key(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError(format!("trusted key: {e}")))
}

/// `gatelet check` before the first bundle: everything that can be checked without one (trusted
/// keys, backend JWT key, TLS files, backend CA), and a clear line that `run` will wait.
pub fn check(config: &Config) -> Result<String, StartError> {
    let keys = trusted_keys(config)?;
    server::backend_jwt::BackendJwt::new(&config.backend_jwt)?;
    if !config.server.listen_tls.is_empty() {
        server::tls_acceptor(&config.server.tls_cert, &config.server.tls_key)?;
    }
    server::backend_root(&config.server.backend_ca_file)?;
    Ok(format!(
        "config: ok ({} trusted keys)\nbundle {}: none yet; `run` starts {WAITING} in the inbox {}\n",
        keys.len(),
        config.bundle.path.display(),
        config.bundle.inbox,
    ))
}

/// Binds the listeners, answers 503 on them and watches the inbox until a bundle is installed at
/// `bundle.path`. Returns the listeners, still bound, for [`daemon::start_on`]; `None` when
/// SIGTERM or SIGINT came first.
pub fn wait_for_first_bundle(config: &Config) -> Result<Option<Listeners>, StartError> {
    let trusted = trusted_keys(config)?;
    let tls = if config.server.listen_tls.is_empty() {
        None
    } else {
        Some(server::tls_acceptor(&config.server.tls_cert, &config.server.tls_key)?)
    };
    // Before anything is logged or bound: a SIGHUP sent the moment the wait is announced is a
    // look at the inbox, not SIGHUP's default (terminate).
    let mut signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(|e| StartError(format!("signal handlers: {e}")))?;
    let listeners = Listeners::bind(config)?;
    // Every socket of each group (the kernel spreads connections over them), each as a
    // duplicate: the worker closes it when it stops, the original stays bound.
    let mut served = Vec::new();
    for (name, group, admin, tls) in [
        ("http", &listeners.http, false, None),
        ("https", &listeners.https, false, tls),
        ("admin", &listeners.admin, true, None),
    ] {
        if let Some(a) = group.first().and_then(|l| l.local_addr().ok()) {
            log::info!("listening {name} {a}");
        }
        for l in group {
            let dup = l.try_clone().map_err(|e| StartError(format!("{name} listener: {e}")))?;
            served.push((dup, admin, tls.clone()));
        }
    }
    let inbox = config.bundle.inbox.clone();
    log::info!("no bundle at {}: {WAITING} in the inbox {inbox}", config.bundle.path.display());
    daemon::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("{WAITING} in {inbox}")),
    ]);
    let head_timeout = Duration::from_millis(config.server.header_read_timeout_ms);
    let poll = Duration::from_millis(config.bundle.inbox_poll_ms);
    let installed = Arc::new(AtomicBool::new(false));
    let (config, done) = (config.clone(), Arc::clone(&installed));
    // The data plane's runtime on this thread, with its socket, TLS and hyper types: the answers
    // cost no second copy of the HTTP server. It stops when the inbox loop (its root) ends, which
    // closes the duplicates and cancels the connections still open.
    rt::run(move || async move {
        let limit = rt::ConnLimit::new(MAX_CONNECTIONS);
        for (l, admin, tls) in served {
            match rt::Listener::new(l) {
                Ok(l) => rt::spawn(serve(l, admin, tls, Arc::clone(&limit), head_timeout)).detach(),
                Err(e) => log::error!("listener not served while {WAITING}: {e}"),
            }
        }
        if let Some(period) = sd_notify::watchdog_enabled() {
            rt::spawn(async move {
                loop {
                    daemon::notify(&[sd_notify::NotifyState::Watchdog]);
                    rt::Sleep::after(period / 2).await;
                }
            })
            .detach();
        }
        loop {
            let (config, trusted) = (config.clone(), trusted.clone());
            if smol::unblock(move || !pending(&config) || take_first(&config, &trusted)).await {
                done.store(true, Ordering::Relaxed);
                return;
            }
            let stop = smol::future::or(
                async {
                    rt::Sleep::after(poll).await;
                    false
                },
                async {
                    match signals.next().await {
                        Some(Ok(async_signal::Signal::Hup)) => {
                            log::info!("SIGHUP: looking at the inbox");
                            false
                        }
                        Some(Ok(s)) => {
                            log::info!("{s:?}: shutting down before the first bundle");
                            true
                        }
                        Some(Err(e)) => {
                            log::warn!("signal: {e}");
                            false
                        }
                        None => true,
                    }
                },
            )
            .await;
            if stop {
                return;
            }
        }
    })
    .map_err(|e| StartError(format!("serving while {WAITING}: {e}")))?;
    if !installed.load(Ordering::Relaxed) {
        daemon::notify(&[sd_notify::NotifyState::Stopping]);
        return Ok(None);
    }
    Ok(Some(listeners))
}

/// Installs the first inbox file that would start, setting aside those that would not. Returns
/// whether one was installed.
fn take_first(config: &Config, trusted: &[ed25519_dalek::VerifyingKey]) -> bool {
    for file in daemon::inbox_files(&config.bundle.inbox) {
        match install(config, trusted, &file) {
            Ok(serial) => {
                log::info!(
                    "inbox {}: first bundle, serial {serial}, installed at {}",
                    file.display(),
                    config.bundle.path.display()
                );
                daemon::remove(&file);
                return true;
            }
            Err(e) => {
                log::warn!("inbox {}: refused: {e}; still {WAITING}", file.display());
                daemon::set_aside(&file);
            }
        }
    }
    false
}

/// What start-up would do with `file`, short of recording the rollback mark (the start that
/// follows records it): verify, rollback check, build; then install it at `bundle.path`.
fn install(config: &Config, trusted: &[ed25519_dalek::VerifyingKey], file: &Path) -> Result<u64, StartError> {
    let bytes = daemon::read_inbox_file(file)?;
    let bundle = crate::bundle::verify(&bytes, trusted).map_err(|e| StartError(e.to_string()))?;
    let state = StateStore::open(&config.state.dir).map_err(|e| StartError(e.to_string()))?;
    state.check_rollback(bundle.serial(), &bundle.payload_sha256()).map_err(|e| StartError(e.to_string()))?;
    let floor =
        state.floor_for_bundle(bundle.manifest().created_at).map_err(|e| StartError(e.to_string()))?;
    drop(state);
    let serial = bundle.serial();
    server::Active::new(bundle, config, floor)?;
    crate::toolkit::write_atomically(&config.bundle.path, &bytes)
        .map_err(|e| StartError(format!("installing at {}: {e}", config.bundle.path.display())))?;
    Ok(serial)
}

async fn serve(
    listener: rt::Listener,
    admin: bool,
    tls: Option<TlsAcceptor>,
    limit: Arc<rt::ConnLimit>,
    head_timeout: Duration,
) {
    loop {
        limit.room().await;
        listener.readable().await;
        let Some((stream, _, permit)) = listener.accept_within(&limit).await else { continue };
        let tls = tls.clone();
        rt::spawn(async move {
            match tls {
                None => connection(stream, admin, head_timeout).await,
                Some(acceptor) => {
                    if let Some(Ok(s)) = acceptor.accept_within(stream, head_timeout).await {
                        connection(s, admin, head_timeout).await;
                    }
                }
            }
            drop(permit);
        })
        .detach();
    }
}

async fn connection<S>(stream: S, admin: bool, head_timeout: Duration)
where
    S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(answer(&req, admin))
    });
    // The data plane's connection type, with its framing checks off: every answer here is a
    // fixed one. One request per connection: nothing is held open across the hand-over.
    let io = HyperIo::new(Guarded::passthrough(stream));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(rt::HyperTimer)
        .header_read_timeout(head_timeout)
        .keep_alive(false)
        .serve_connection(io, service)
        .await;
}

/// The answer to every request while waiting.
pub fn answer<B>(req: &Request<B>, admin: bool) -> Response<ProxyBody> {
    let (status, body) = if !admin {
        let fault = serde_json::json!({"fault": {
            "code": 101503, "message": "Service Unavailable", "description": WAITING}});
        (StatusCode::SERVICE_UNAVAILABLE, fault.to_string())
    } else {
        match req.uri().path() {
            "/healthz" => (StatusCode::OK, r#"{"status":"healthy"}"#.to_owned()),
            "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, format!(r#"{{"status":"{WAITING}"}}"#)),
            "/metrics" => {
                let text = "# HELP gatelet_waiting_for_first_bundle 1 until the first bundle is installed.\n\
                            # TYPE gatelet_waiting_for_first_bundle gauge\ngatelet_waiting_for_first_bundle 1\n";
                let mut r = Response::new(full(Bytes::from_static(text.as_bytes())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return r;
            }
            _ => (StatusCode::NOT_FOUND, r#"{"status":"not found"}"#.to_owned()),
        }
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
