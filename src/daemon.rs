//! `gatelet run` and `gatelet check`: start-up, reload and shutdown around [`crate::server`].
//!
//! Start-up: config → trusted keys → bundle verified → rollback accepted in the state store →
//! routes built → listeners bound → `READY=1`. Any failure is one line and a non-zero exit.
//! Reload (SIGHUP, or a file in the inbox): verify → rollback check → build → install → swap;
//! a failure keeps the bundle in force. Shutdown (SIGTERM/SIGINT): stop accepting, let requests
//! in flight finish (bounded by `drain_timeout_s`), flush usage, persist the clock floor, exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use smol::stream::StreamExt;

use crate::config::Config;
use crate::server::{self, Gateway, Role, Shutdown, StartError, UsageSink};
use crate::usage::{self, Spooler, Timestamp, UsageEvent};

/// Largest file taken from the inbox (same limit as any bundle).
const INBOX_MAX: u64 = crate::bundle::format::MAX_FILE;
/// How often the clock floor is persisted while running: rarely, to spare the flash.
const CLOCK_PERSIST_EVERY: Duration = Duration::from_secs(3600);

pub(crate) fn notify(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(state) {
            log::warn!("sd_notify: {e}");
        }
    }
}

/// `gatelet check`: everything `run` does before binding, without changing anything. Returns
/// the summary to print. A rollback check that could not be made (a corrupt store, one this user
/// cannot open, or one a running gatelet holds and whose copy cannot be read: see
/// [`crate::state`]) is an error, so that the exit status can be trusted.
pub fn check(config: &Config) -> Result<String, StartError> {
    if crate::provision::pending(config) {
        return crate::provision::check(config);
    }
    let prepared = server::prepare(config, false)?;
    let m = prepared.bundle.manifest();
    // Build what run builds (routes, validator, throttle), so a bundle run would refuse fails here.
    let active = server::Active::new(prepared.bundle.clone(), config, prepared.floor)?;
    if !config.server.listen_tls.is_empty() {
        server::tls_acceptor(&config.server.tls_cert, &config.server.tls_key)?;
    }
    server::backend_root(&config.server.backend_ca_file)?;
    // `prepare` without `accept` fails when the rollback check could not be made, so a store is
    // always there; its absence would be a check not made, never a pass.
    let Some(state) = &prepared.state else {
        return Err(StartError("rollback not checked: the state store was not opened".into()));
    };
    let copy = if state.is_copy() { "; read beside the running gatelet that holds the store" } else { "" };
    let rollback = match state.rollback_mark() {
        Ok(Some(mark)) => format!("ok (last accepted serial {}{copy})", mark.serial),
        Ok(None) => format!("ok (no bundle accepted yet{copy})"),
        Err(e) => return Err(StartError(e.to_string())),
    };
    let ops: usize = m.apis.iter().map(|a| a.operations.len()).sum();
    Ok(format!(
        "config: ok\nbundle {}: ok, serial {}, label {:?}, signed by key id {}\n  {} APIs, {} operations, {} issuers, {} policies, {} revoked ids\nrollback: {rollback}\nlisteners: http {} https {} admin {}\n",
        config.bundle.path.display(),
        active.bundle.serial(),
        m.label,
        crate::keys::hex(&active.bundle.key_id()),
        m.apis.len(),
        ops,
        m.issuers.len(),
        m.policies.len(),
        m.revoked_jti.len(),
        or_off(&config.server.listen),
        or_off(&config.server.listen_tls),
        or_off(&config.server.admin_listen),
    ))
}

fn or_off(s: &str) -> &str {
    if s.is_empty() { "off" } else { s }
}

/// The bound addresses of a running gateway.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// A started gateway: stop it with [`Running::shutdown`].
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub bound: Bound,
    trigger: server::ShutdownTrigger,
    workers: Vec<std::thread::JoinHandle<()>>,
    stop_workers: Option<smol::channel::Sender<()>>,
    reload_tx: std::sync::mpsc::Sender<ReloadMsg>,
    reload_thread: Option<std::thread::JoinHandle<()>>,
    /// Installed before `READY=1`, so a reload sent the moment systemd sees the service ready
    /// is a reload, not SIGHUP's default (terminate).
    signals: std::sync::Mutex<Option<async_signal::Signals>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("bound", &self.bound).finish_non_exhaustive()
    }
}

enum ReloadMsg {
    Reload,
    Stop,
}

/// One listening socket per worker (see [`server::rt::bind`]); none when `addr` is empty.
fn bind(addr: &str, count: usize, what: &str) -> Result<Vec<std::net::TcpListener>, StartError> {
    if addr.is_empty() {
        return Ok(Vec::new());
    }
    server::rt::bind(addr, count).map_err(|e| StartError(format!("{what} listener {addr}: {e}")))
}

/// Data-plane workers: `server.threads`, or one per CPU when it is 0.
fn workers(config: &Config) -> usize {
    match config.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// The listeners, bound: by [`start`], or before it while waiting for the first bundle
/// ([`crate::provision`]), which hands them over still bound so no connection is refused. The
/// data-plane listeners are one socket per worker sharing the port; the admin listener is one.
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Vec<std::net::TcpListener>,
    pub https: Vec<std::net::TcpListener>,
    pub admin: Vec<std::net::TcpListener>,
}

impl Listeners {
    pub fn bind(config: &Config) -> Result<Listeners, StartError> {
        let threads = workers(config);
        Ok(Listeners {
            http: bind(&config.server.listen, threads, "http")?,
            https: bind(&config.server.listen_tls, threads, "https")?,
            admin: bind(&config.server.admin_listen, 1, "admin")?,
        })
    }
}

/// The usage spooler as the data plane's sink.
struct SpoolSink(Spooler);

impl UsageSink for SpoolSink {
    fn record(&self, event: UsageEvent) {
        // A full queue drops and counts; the request never waits.
        let _ = self.0.try_record(event);
    }

    fn metrics(&self) -> Vec<(String, &'static str, &'static str, u64)> {
        self.0.metrics().samples()
    }

    fn shutdown(&self) {
        self.0.shutdown();
    }
}

/// Starts the usage spooler with the clock request records use: the wall clock when it is
/// plausible (even if a floor ran ahead of it), else never earlier than `floor_s`.
fn start_usage(config: &usage::UsageConfig, floor_s: u64) -> Result<Spooler, StartError> {
    let floor_ms = floor_s.saturating_mul(1000);
    let plausible_ms = server::PLAUSIBLE_WALL_CLOCK_S.saturating_mul(1000);
    let clock: usage::Clock = Arc::new(move || {
        let now = Timestamp::now().0;
        Timestamp(if now >= plausible_ms { now } else { now.max(floor_ms) })
    });
    Spooler::start_with_clock(config, clock).map_err(|e| StartError(format!("usage: {e}")))
}

/// Starts the gateway: verifies and accepts the bundle, starts the usage spooler, binds the
/// listeners and serves on a thread pool.
pub fn start(config: Config) -> Result<Running, StartError> {
    start_on(config, None)
}

/// [`start`] on listeners already bound (`None`: bind them after the bundle is accepted).
pub fn start_on(config: Config, listeners: Option<Listeners>) -> Result<Running, StartError> {
    let threads = workers(&config);
    let prepared = server::prepare(&config, true)?;
    let tls = if config.server.listen_tls.is_empty() {
        None
    } else {
        Some(server::tls_acceptor(&config.server.tls_cert, &config.server.tls_key)?)
    };
    let Listeners { http, https, admin } = match listeners {
        Some(l) => l,
        None => Listeners::bind(&config)?,
    };
    let floor = prepared.floor.max(prepared.bundle.manifest().created_at);
    let spooler = start_usage(&config.usage, floor)?;
    let usage: Option<Box<dyn UsageSink>> = Some(Box::new(SpoolSink(spooler)));
    let gateway = Arc::new(Gateway::new(config, prepared, usage)?);
    let first = |l: &[std::net::TcpListener]| l.first().and_then(|l| l.local_addr().ok());
    let bound = Bound { http: first(&http), https: first(&https), admin: first(&admin) };
    let (trigger, shutdown) = Shutdown::new();
    // One limit for all workers' client connections; the admin listener has its own small one,
    // so a flood of clients cannot lock out health checks.
    let clients = server::rt::ConnLimit::new(gateway.config.server.max_connections as usize);
    let mut http = http.into_iter();
    let mut https = https.into_iter();
    let mut admin = admin.into_iter();
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let mut workers = Vec::new();
    for i in 0..threads {
        let mut mine = Vec::new();
        if let Some(l) = http.next() {
            mine.push((l, Role::Http, None, Arc::clone(&clients)));
        }
        if let Some(l) = https.next() {
            mine.push((l, Role::Https, tls.clone(), Arc::clone(&clients)));
        }
        if let Some(l) = admin.next() {
            mine.push((l, Role::Admin, None, server::rt::ConnLimit::new(16)));
        }
        let gw = Arc::clone(&gateway);
        let sd = shutdown.clone();
        let stop = stop_rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("gatelet-{i}"))
            .spawn(move || {
                let ran = server::rt::run(move || async move {
                    for (l, role, tls, limit) in mine {
                        match server::rt::Listener::new(l) {
                            Ok(l) => server::rt::spawn(server::serve(
                                Arc::clone(&gw),
                                l,
                                role,
                                tls,
                                limit,
                                sd.clone(),
                            ))
                            .detach(),
                            Err(e) => log::error!("worker {i}: listener not served: {e}"),
                        }
                    }
                    let _ = stop.recv().await;
                });
                if let Err(e) = ran {
                    log::error!("worker {i} stopped: {e}");
                }
            })
            .map_err(|e| StartError(format!("worker thread: {e}")))?;
        workers.push(handle);
    }
    // Reloads run on their own thread: file IO and signature checks stay off the workers. The
    // same thread pings the watchdog and persists the clock floor.
    let (reload_tx, reload_rx) = std::sync::mpsc::channel();
    let reload_thread = {
        let gw = Arc::clone(&gateway);
        std::thread::Builder::new()
            .name("gatelet-reload".into())
            .spawn(move || reload_loop(&gw, &reload_rx))
            .map_err(|e| StartError(format!("reload thread: {e}")))?
    };
    for (name, addr) in [("http", bound.http), ("https", bound.https), ("admin", bound.admin)] {
        if let Some(a) = addr {
            log::info!("listening {name} {a}");
        }
    }
    let a = gateway.active();
    let (floor, origin) =
        (gateway.metrics.clock_floor_seconds.load(Ordering::Relaxed), a.bundle.manifest().created_at);
    log::info!(
        "ready: bundle serial {} ({} APIs), clock floor {floor} (bundle created {origin}), {threads} worker(s)",
        a.bundle.serial(),
        a.bundle.manifest().apis.len()
    );
    let signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(|e| StartError(format!("signal handlers: {e}")))?;
    notify(&[sd_notify::NotifyState::Ready]);
    Ok(Running {
        gateway,
        bound,
        trigger,
        workers,
        stop_workers: Some(stop_tx),
        reload_tx,
        reload_thread: Some(reload_thread),
        signals: std::sync::Mutex::new(Some(signals)),
    })
}

fn reload_loop(gw: &Gateway, rx: &std::sync::mpsc::Receiver<ReloadMsg>) {
    // Without an inbox there is nothing to poll: the thread wakes only for the clock floor, the
    // watchdog and SIGHUP.
    let poll = if gw.config.bundle.inbox.is_empty() {
        CLOCK_PERSIST_EVERY
    } else {
        Duration::from_millis(gw.config.bundle.inbox_poll_ms)
    };
    let watchdog = sd_notify::watchdog_enabled().map(|period| period / 2);
    let mut next_inbox = Instant::now() + poll;
    let mut next_ping = Instant::now();
    let mut next_persist = Instant::now() + CLOCK_PERSIST_EVERY;
    loop {
        let now = Instant::now();
        if let Some(every) = watchdog {
            if now >= next_ping {
                notify(&[sd_notify::NotifyState::Watchdog]);
                next_ping = now + every;
            }
        }
        if now >= next_persist {
            gw.persist_clock();
            next_persist = now + CLOCK_PERSIST_EVERY;
        }
        if now >= next_inbox {
            process_inbox(gw);
            next_inbox = Instant::now() + poll;
        }
        let mut due = next_inbox.min(next_persist);
        if watchdog.is_some() {
            due = due.min(next_ping);
        }
        match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(ReloadMsg::Stop) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(ReloadMsg::Reload) => {
                notify(&[sd_notify::NotifyState::Reloading]);
                reload_installed(gw);
                process_inbox(gw);
                notify(&[sd_notify::NotifyState::Ready]);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// SIGHUP: the operator may have replaced the installed bundle file.
fn reload_installed(gw: &Gateway) {
    let path = &gw.config.bundle.path;
    match crate::bundle::read_file(path) {
        Err(e) => {
            gw.metrics.bundle_reloads_failed.fetch_add(1, Ordering::Relaxed);
            log::warn!("reload {}: {e}; keeping serial {}", path.display(), gw.active().bundle.serial());
        }
        Ok(bytes) => match gw.reload_from(&bytes, false) {
            Ok(Some(serial)) => log::info!("reload {}: now serving serial {serial}", path.display()),
            Ok(None) => log::info!("reload {}: unchanged", path.display()),
            Err(e) => log::warn!(
                "reload {}: refused: {e}; keeping serial {}",
                path.display(),
                gw.active().bundle.serial()
            ),
        },
    }
}

/// Takes every bundle file in the inbox (names starting with `.` are ignored, so writers write
/// then rename), oldest name first.
pub fn process_inbox(gw: &Gateway) {
    let inbox = &gw.config.bundle.inbox;
    if inbox.is_empty() {
        return;
    }
    for file in inbox_files(inbox) {
        let outcome = read_inbox_file(&file).and_then(|bytes| gw.reload_from(&bytes, true));
        match outcome {
            Ok(Some(serial)) => {
                log::info!("inbox {}: accepted, now serving serial {serial}", file.display());
                remove(&file);
            }
            Ok(None) => {
                log::info!("inbox {}: same bundle as the one in force", file.display());
                remove(&file);
            }
            Err(e) => {
                log::warn!(
                    "inbox {}: refused: {e}; keeping serial {}",
                    file.display(),
                    gw.active().bundle.serial()
                );
                set_aside(&file);
            }
        }
    }
}

/// The bundle files in the inbox, oldest name first (names starting with `.` are not taken).
pub(crate) fn inbox_files(inbox: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(inbox) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

pub(crate) fn read_inbox_file(file: &Path) -> Result<Vec<u8>, StartError> {
    let m = std::fs::metadata(file).map_err(|e| StartError(e.to_string()))?;
    if m.len() > INBOX_MAX {
        return Err(StartError(format!("larger than {INBOX_MAX} bytes")));
    }
    crate::bundle::read_file(file).map_err(|e| StartError(e.to_string()))
}

pub(crate) fn remove(file: &Path) {
    if let Err(e) = std::fs::remove_file(file) {
        log::warn!("inbox {}: cannot remove: {e}", file.display());
    }
}

/// Renames a refused file to `.refused-<name>`, which the inbox then ignores.
pub(crate) fn set_aside(file: &Path) {
    let Some(name) = file.file_name() else { return };
    let mut aside = std::ffi::OsString::from(".refused-");
    aside.push(name);
    let target = file.with_file_name(aside);
    if let Err(e) = std::fs::rename(file, &target) {
        log::warn!("inbox {}: cannot move aside: {e}", file.display());
        remove(file);
    }
}

impl Running {
    /// Asks for a reload, as SIGHUP does.
    pub fn reload(&self) {
        let _ = self.reload_tx.send(ReloadMsg::Reload);
    }

    /// Stops accepting, drains requests in flight (at most `drain_timeout_s`), stops the workers.
    pub fn shutdown(mut self) {
        notify(&[sd_notify::NotifyState::Stopping]);
        self.gateway.set_draining();
        self.trigger.trigger();
        let deadline = Instant::now() + Duration::from_secs(self.gateway.config.server.drain_timeout_s);
        while Instant::now() < deadline && self.gateway.metrics.connections_active.load(Ordering::Relaxed) > 0
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.gateway.metrics.connections_active.load(Ordering::Relaxed);
        if left > 0 {
            log::warn!("drain timeout: closing {left} connections");
        }
        let _ = self.reload_tx.send(ReloadMsg::Stop);
        if let Some(t) = self.reload_thread.take() {
            let _ = t.join();
        }
        self.gateway.shutdown_usage();
        self.gateway.persist_clock();
        drop(self.stop_workers.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    /// Blocks until SIGTERM or SIGINT, serving SIGHUP reloads meanwhile.
    pub fn wait_for_signals(&self) -> Result<(), StartError> {
        use async_signal::Signal;
        let Some(mut signals) = self.signals.lock().ok().and_then(|mut s| s.take()) else {
            return Err(StartError("signals already being waited for".into()));
        };
        smol::block_on(async {
            while let Some(sig) = signals.next().await {
                match sig {
                    Ok(Signal::Hup) => {
                        log::info!("SIGHUP: reloading");
                        self.reload();
                    }
                    Ok(s) => {
                        log::info!("{s:?}: shutting down");
                        return;
                    }
                    Err(e) => log::warn!("signal: {e}"),
                }
            }
        });
        Ok(())
    }
}

/// `gatelet run`: start (first waiting for a first bundle, when there is none yet but an inbox:
/// [`crate::provision`]), serve until SIGTERM/SIGINT, drain, exit.
pub fn run(config: Config) -> Result<(), StartError> {
    let listeners = if crate::provision::pending(&config) {
        match crate::provision::wait_for_first_bundle(&config)? {
            Some(l) => Some(l),
            None => return Ok(()),
        }
    } else {
        None
    };
    let running = start_on(config, listeners)?;
    running.wait_for_signals()?;
    running.shutdown();
    Ok(())
}
