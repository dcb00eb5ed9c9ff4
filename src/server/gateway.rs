//! The gateway: the bundle in force ([`Active`]), start-up ([`prepare`]), reload and the clock
//! floor, and the usage record a request starts with.
//!
//! The bundle in force is an [`Active`] behind an `Arc`: a reload builds a new one and swaps the
//! pointer, so requests in flight finish on the bundle they started with. Time comes from the one
//! [`TimeSource`] the gateway was built with; an `Active`'s clock reads it, floored.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::bundle::{self, Bundle};
use crate::config::Config;
use crate::router::{self, Router};
use crate::state::{StateError, StateStore};
use crate::throttle::{self, Throttle};
use crate::token::{self, Reading, TimeSource, Validator};
use crate::usage::{ApiLabels, Timestamp, UsageEvent, method_label};

use super::backend_jwt;
use super::forwarded::TrustedProxies;
use super::guard;
use super::metrics::{ApiCounters, Metrics};
use super::upstream::Upstreams;

/// Why the gateway could not start or reload. One line each, for the operator.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// The device settings the request pipeline reads, taken from the configuration with each
/// bundle (so that a pipeline decision needs nothing but an [`Active`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `server.trusted_proxies`: whose `X-Forwarded-For` names the caller.
    pub trusted_proxies: TrustedProxies,
    /// `server.ratelimit_headers`: rate-limit headers on forwarded answers too.
    pub ratelimit_headers: bool,
    /// `server.max_body_bytes`.
    pub max_body_bytes: u64,
}

impl Settings {
    pub fn new(config: &Config) -> Result<Settings, StartError> {
        Ok(Settings {
            trusted_proxies: TrustedProxies::parse(&config.server.trusted_proxies).map_err(StartError)?,
            ratelimit_headers: config.server.ratelimit_headers,
            max_body_bytes: config.server.max_body_bytes,
        })
    }
}

/// Everything derived from one verified bundle.
pub struct Active {
    pub bundle: Bundle,
    pub(super) router: Router,
    pub(super) validator: Validator,
    pub(super) throttle: Throttle,
    pub(super) clock: token::Clock<Arc<dyn TimeSource>>,
    pub(super) settings: Settings,
    /// Request counts of this bundle's APIs (kept across reloads for the APIs that stay).
    pub(super) counters: ApiCounters,
    /// Each API's name, version and context for usage records, by manifest index.
    pub(super) labels: Vec<Arc<ApiLabels>>,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active").field("serial", &self.bundle.serial()).finish_non_exhaustive()
    }
}

impl Active {
    /// Builds routes, validator and throttle for a verified bundle, on the system clock.
    pub fn new(bundle: Bundle, config: &Config, persisted_floor: u64) -> Result<Active, StartError> {
        Active::build(bundle, config, persisted_floor, Arc::new(token::SystemTime), None)
    }

    /// [`Active::new`] reading time from `time`, and keeping the request counters of the APIs
    /// `previous` (the bundle it replaces) also has.
    pub fn build(
        bundle: Bundle,
        config: &Config,
        persisted_floor: u64,
        time: Arc<dyn TimeSource>,
        previous: Option<&Active>,
    ) -> Result<Active, StartError> {
        let m = bundle.manifest();
        let validator = Validator::new(
            m,
            &token::ValidatorConfig {
                clock_skew_s: config.auth.clock_skew_s,
                cache_capacity: config.auth.token_cache_entries as usize,
            },
        );
        let entries = config.throttle.table_entries as usize;
        let throttle = Throttle::new(
            m,
            &throttle::ThrottleConfig {
                subscription_entries: entries,
                application_entries: entries,
                unauthenticated_entries: entries,
            },
        )
        .map_err(|e| StartError(format!("throttling: {e}")))?;
        let clock = token::Clock::new(time, m.created_at, persisted_floor);
        if config.server.listen_tls.is_empty() {
            let https_only: Vec<String> = m
                .apis
                .iter()
                .filter(|a| a.https_only)
                .map(|a| format!("{} {} ({})", a.name, a.version, a.context))
                .collect();
            if !https_only.is_empty() {
                log::warn!(
                    "server.listen_tls is off, so these HTTPS-only APIs (x-wso2-transports: [https]) cannot be \
                     served and every request for them is refused: {}",
                    https_only.join(", ")
                );
            }
        }
        let counters = ApiCounters::new(m, previous.map(|p| &p.counters));
        let labels = m
            .apis
            .iter()
            .map(|a| {
                Arc::new(ApiLabels {
                    name: a.name.clone(),
                    version: a.version.clone(),
                    context: a.context.clone(),
                })
            })
            .collect();
        Ok(Active {
            labels,
            router: Router::new(m),
            validator,
            throttle,
            clock,
            settings: Settings::new(config)?,
            counters,
            bundle,
        })
    }

    /// The time now, floored: the one reading a request is decided and recorded with.
    pub fn now(&self) -> Reading {
        self.clock.now()
    }
}

/// Where usage records go (the usage spooler, or nowhere).
pub trait UsageSink: Send + Sync {
    fn record(&self, record: UsageEvent);
    /// Extra `/metrics` samples: (name with labels, type, help, value).
    fn metrics(&self) -> Vec<(String, &'static str, &'static str, u64)> {
        Vec::new()
    }
    /// Flushes and closes what it holds (at shutdown, after requests drained).
    fn shutdown(&self) {}
}

/// The running gateway, shared by every connection.
pub struct Gateway {
    pub config: Config,
    trusted: Vec<ed25519_dalek::VerifyingKey>,
    active: RwLock<Arc<Active>>,
    state: StateStore,
    pub metrics: Metrics,
    pub(super) upstreams: Arc<Upstreams>,
    /// What the backend is told about the caller (`[backend_jwt]`).
    pub(super) backend_jwt: backend_jwt::BackendJwt,
    /// Memory all unfinished request heads may hold together.
    pub(super) head_budget: Arc<guard::HeadBudget>,
    pub(super) usage: Option<Box<dyn UsageSink>>,
    /// Where every reading of the time comes from (each bundle's clock reads it).
    time: Arc<dyn TimeSource>,
    ready: AtomicBool,
    request_seq: AtomicU64,
    request_prefix: String,
    reload_lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// The outcome of [`prepare`]: a verified bundle accepted by the rollback rules.
#[derive(Debug)]
pub struct Prepared {
    pub trusted: Vec<ed25519_dalek::VerifyingKey>,
    pub bundle: Bundle,
    pub state: Option<StateStore>,
    /// The persisted clock floor (0 when the state store was not opened).
    pub floor: u64,
    /// `[backend_jwt]`, its key read.
    pub backend_jwt: backend_jwt::BackendJwt,
}

/// Start-up up to (not including) the listeners, exactly as `run` and `check` share it:
/// trusted keys → bundle read and verified → rollback checked. With `accept`, the bundle is
/// recorded as the new mark (`run`); without, only checked (`check`).
pub fn prepare(config: &Config, accept: bool) -> Result<Prepared, StartError> {
    let trusted = config
        .bundle
        .trusted_keys
        .iter()
        .map(|p| crate::keys::load_verifying_key(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError(format!("trusted key: {e}")))?;
    let backend_jwt = backend_jwt::BackendJwt::new(&config.backend_jwt)?;
    let path = &config.bundle.path;
    let bytes = bundle::read_file(path).map_err(|e| StartError(format!("bundle {}: {e}", path.display())))?;
    let bundle = bundle::verify(&bytes, &trusted)
        .map_err(|e| StartError(format!("bundle {}: {e}", path.display())))?;
    let state = match StateStore::open(&config.state.dir) {
        Ok(s) => Some(s),
        // `check` beside a running daemon: read a copy of its store; a check that could not be
        // made is a failure, never a pass (scripts and ExecStartPre trust the exit status).
        Err(StateError::Busy(dir)) if !accept => {
            Some(StateStore::open_copy(&dir).map_err(|e| StartError(format!("rollback not checked: {e}")))?)
        }
        Err(e) if !accept => return Err(StartError(format!("rollback not checked: {e}"))),
        Err(e) => return Err(StartError(e.to_string())),
    };
    let mut floor = 0;
    if let Some(s) = &state {
        let hash = bundle.payload_sha256();
        if accept {
            s.accept_bundle(bundle.serial(), &hash)
                .map_err(|e| StartError(format!("bundle {}: {e}", path.display())))?;
            floor =
                s.record_bundle_time(bundle.manifest().created_at).map_err(|e| StartError(e.to_string()))?;
        } else {
            s.check_rollback(bundle.serial(), &hash)
                .map_err(|e| StartError(format!("bundle {}: {e}", path.display())))?;
            floor =
                s.floor_for_bundle(bundle.manifest().created_at).map_err(|e| StartError(e.to_string()))?;
        }
    }
    Ok(Prepared { trusted, bundle, state, floor, backend_jwt })
}

impl Gateway {
    pub fn new(
        config: Config,
        prepared: Prepared,
        usage: Option<Box<dyn UsageSink>>,
    ) -> Result<Gateway, StartError> {
        Gateway::with_time(config, prepared, usage, Arc::new(token::SystemTime))
    }

    /// [`Gateway::new`] reading time from `time` (tests set it by hand).
    pub fn with_time(
        config: Config,
        prepared: Prepared,
        usage: Option<Box<dyn UsageSink>>,
        time: Arc<dyn TimeSource>,
    ) -> Result<Gateway, StartError> {
        let state = match prepared.state {
            Some(s) => s,
            None => StateStore::open(&config.state.dir).map_err(|e| StartError(e.to_string()))?,
        };
        let active = Active::build(prepared.bundle, &config, prepared.floor, Arc::clone(&time), None)?;
        let upstreams = Arc::new(Upstreams::new(
            config.server.backend_pool_size as usize,
            Duration::from_millis(config.server.backend_connect_timeout_ms),
            Duration::from_millis(config.server.backend_timeout_ms),
            backend_root(&config.server.backend_ca_file)?,
        ));
        let head_budget = guard::HeadBudget::new(
            usize::try_from(config.server.max_head_memory_bytes).unwrap_or(usize::MAX),
        );
        let metrics = Metrics::default();
        metrics.bundle_serial.store(active.bundle.serial(), Ordering::Relaxed);
        metrics.clock_floor_seconds.store(active.clock.floor().0, Ordering::Relaxed);
        let mut prefix = [0u8; 4];
        getrandom::getrandom(&mut prefix).map_err(|e| StartError(format!("randomness: {e}")))?;
        Ok(Gateway {
            config,
            trusted: prepared.trusted,
            active: RwLock::new(Arc::new(active)),
            state,
            metrics,
            upstreams,
            backend_jwt: prepared.backend_jwt,
            head_budget,
            usage,
            time,
            ready: AtomicBool::new(true),
            request_seq: AtomicU64::new(0),
            request_prefix: crate::keys::hex(&prefix),
            reload_lock: std::sync::Mutex::new(()),
        })
    }

    /// The bundle in force.
    pub fn active(&self) -> Arc<Active> {
        match self.active.read() {
            Ok(a) => Arc::clone(&a),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Whether a verified bundle is active and the gateway is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks the gateway as draining: `/readyz` turns 503.
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    /// Flushes the usage sink (at shutdown).
    pub fn shutdown_usage(&self) {
        if let Some(u) = &self.usage {
            u.shutdown();
        }
    }

    /// Verifies `bytes` as a new bundle and, if it is newer, makes it active: rollback-checked,
    /// recorded in the state store, installed at `bundle.path` when `install`, then swapped in
    /// for new requests. On any failure the bundle in force stays. Returns the new serial, or
    /// `None` when the bundle is the one already active.
    pub fn reload_from(&self, bytes: &[u8], install: bool) -> Result<Option<u64>, StartError> {
        let _one_at_a_time =
            self.reload_lock.lock().map_err(|_| StartError("reload lock poisoned".into()))?;
        let result = (|| {
            let bundle = bundle::verify(bytes, &self.trusted).map_err(|e| StartError(e.to_string()))?;
            let current = self.active();
            if bundle.serial() == current.bundle.serial()
                && bundle.payload_sha256() == current.bundle.payload_sha256()
            {
                return Ok(None);
            }
            let hash = bundle.payload_sha256();
            self.state.check_rollback(bundle.serial(), &hash).map_err(|e| StartError(e.to_string()))?;
            let created_at = bundle.manifest().created_at;
            let floor = self.state.floor_for_bundle(created_at).map_err(|e| StartError(e.to_string()))?;
            let active =
                Active::build(bundle, &self.config, floor, Arc::clone(&self.time), Some(current.as_ref()))?;
            if install {
                crate::toolkit::write_atomically(&self.config.bundle.path, bytes).map_err(|e| {
                    StartError(format!("installing at {}: {e}", self.config.bundle.path.display()))
                })?;
            }
            self.state.accept_bundle(active.bundle.serial(), &hash).map_err(|e| StartError(e.to_string()))?;
            if let Err(e) = self.state.record_bundle_time(created_at) {
                log::warn!("clock floor not recorded for serial {}: {e}", active.bundle.serial());
            }
            let serial = active.bundle.serial();
            self.metrics.bundle_serial.store(serial, Ordering::Relaxed);
            self.metrics.clock_floor_seconds.store(active.clock.floor().0, Ordering::Relaxed);
            match self.active.write() {
                Ok(mut a) => *a = Arc::new(active),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(active),
            }
            Ok(Some(serial))
        })();
        match &result {
            Ok(Some(_)) => {
                self.metrics.bundle_reloads_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(_) => {
                self.metrics.bundle_reloads_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Persists the clock floor (the current time, floored): called periodically and at shutdown,
    /// so a device rebooting without a clock starts from the last time it knew.
    ///
    /// What is persisted is evidence, not the wall clock: the active bundle's floor plus the
    /// monotonic time since it was loaded. True time is at least that, so a wall clock that is
    /// wrong *ahead* (a board that booted into 2099) can never become a permanent floor that
    /// expires every token. It runs under the reload lock, so a floor that a reload has just
    /// corrected downwards is never raised again from the bundle it replaced.
    pub fn persist_clock(&self) {
        let Ok(_one_at_a_time) = self.reload_lock.lock() else { return };
        let now = self.active().clock.floor().0;
        if let Err(e) = self.state.raise_clock_floor(now) {
            log::warn!("clock floor not persisted: {e}");
        }
    }

    /// Records a request refused before the pipeline saw it (by the framing guard, or by hyper's
    /// parser): one usage record and one `gatelet_requests_total{api="none"}` count, so probes
    /// leave a trace. `request_line` is what the client sent, possibly cut short.
    pub(super) fn record_refusal(
        &self,
        peer: SocketAddr,
        request_line: &[u8],
        status: u16,
        code: Option<u32>,
        detail: &str,
    ) {
        self.metrics.unrouted.add(status);
        let Some(usage) = &self.usage else { return };
        let line = String::from_utf8_lossy(request_line);
        let mut parts = line.split(' ');
        let method: String = parts.next().unwrap_or("").chars().take(16).collect();
        // Never the query: it may hold an API key (`?apikey=...`), in any form of target.
        let path = parts.next().unwrap_or("").split(['?', '#']).next().unwrap_or("");
        let resource = router::normalize_path(path).unwrap_or_else(|_| path.chars().take(256).collect());
        let active = self.active();
        let mut record = self.arrived(&active, active.now(), &method, peer);
        record.resource = resource;
        record.status = status;
        record.error_code = code;
        record.error_detail = Some(detail.to_owned());
        usage.record(record);
    }

    /// The usage record of a request as it arrives: when, which, from whom, under which bundle;
    /// the pipeline fills in the rest.
    pub(super) fn arrived(
        &self,
        active: &Active,
        now: Reading,
        method: &str,
        peer: SocketAddr,
    ) -> UsageEvent {
        UsageEvent {
            ts: Timestamp(usage_ms(now)),
            request_id: self.next_request_id(),
            api: None,
            resource: String::new(),
            method: method_label(method),
            status: 0,
            app_id: None,
            app_name: None,
            subscriber: None,
            keytype: None,
            tier: None,
            throttled: false,
            over_quota: false,
            error_code: None,
            error_detail: None,
            latency_ms: 0.0,
            backend_latency_ms: None,
            request_bytes: 0,
            response_bytes: 0,
            client_ip: peer.ip(),
            bundle_serial: active.bundle.serial(),
        }
    }

    fn next_request_id(&self) -> String {
        format!("{}-{:x}", self.request_prefix, self.request_seq.fetch_add(1, Ordering::Relaxed))
    }
}

/// The extra root certificate for HTTPS backends, if configured.
pub fn backend_root(path: &Path) -> Result<Option<async_native_tls::Certificate>, StartError> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read(path)
        .map_err(|e| StartError(format!("server.backend_ca_file {}: {e}", path.display())))?;
    async_native_tls::Certificate::from_pem(&pem)
        .map(Some)
        .map_err(|e| StartError(format!("server.backend_ca_file {}: {e}", path.display())))
}

/// The earliest wall clock gatelet believes (2026-01-01T00:00:00Z, before any gatelet release):
/// a clock behind it is a board that booted without a real-time clock.
pub const PLAUSIBLE_WALL_CLOCK_S: u64 = 1_767_225_600;

/// The time stamped on a usage record: the wall clock when it is plausible, even if a clock floor
/// ran ahead of it (a bundle built with a wrong clock must not push every record into the
/// future); the floored time only on a board whose clock is not set.
pub fn usage_ms(reading: Reading) -> u64 {
    if reading.wall >= PLAUSIBLE_WALL_CLOCK_S { reading.wall_ms } else { reading.now_ms() }
}
