//! The data plane: listeners, the request pipeline, the admin endpoints, reload and shutdown.
//!
//! ```text
//! accept (connection limit, TCP_NODELAY, TLS) ─► guard (smuggling shapes → 400 + close)
//!   ─► hyper HTTP/1.1 (head timeout, head size → 431) ─► Gateway::handle:
//!        normalise path ─► route (404/405) ─► token (401/403) ─► throttle (429/500)
//!        ─► forward (502/504) ─► response ─► usage record when the body ends
//! ```
//!
//! `Gateway::fault` is the one place a refusal becomes a status, a fault body and a metric.
//! The bundle in force is an [`Active`] behind an `Arc`: a reload builds a new one and swaps the
//! pointer, so requests in flight finish on the bundle they started with.

pub mod backend_jwt;
pub mod body;
pub mod forwarded;
pub mod guard;
pub mod io;
pub mod metrics;
pub mod rt;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::bundle::model::{Api, BasicAuth, Cors, Endpoints, Operation};
use crate::bundle::{self, Bundle};
use crate::config::Config;
use crate::router::{self, Miss, Router};
use crate::state::{StateError, StateStore};
use crate::throttle::{self, Caller, Decision, Throttle};
use crate::token::{self, KeyType, Principal, TokenError, Validator};
use crate::usage::{Timestamp, UsageEvent};

pub use body::{BoxError, ProxyBody};
use body::{Meter, Metered, full};
use io::HyperIo;
use metrics::Metrics;
pub use tls::TlsAcceptor;
use upstream::{UpstreamError, Upstreams};

/// Why the gateway could not start or reload. One line each, for the operator.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Everything derived from one verified bundle.
pub struct Active {
    pub bundle: Bundle,
    router: Router,
    validator: Validator,
    throttle: Throttle,
    clock: token::Clock,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active").field("serial", &self.bundle.serial()).finish_non_exhaustive()
    }
}

impl Active {
    /// Builds routes, validator and throttle for a verified bundle.
    pub fn new(bundle: Bundle, config: &Config, persisted_floor: u64) -> Result<Active, StartError> {
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
        let clock = token::Clock::new(token::SystemTime, m.created_at, persisted_floor);
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
        Ok(Active { router: Router::new(m), validator, throttle, clock, bundle })
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
    upstreams: Arc<Upstreams>,
    trusted_proxies: forwarded::TrustedProxies,
    /// What the backend is told about the caller (`[backend_jwt]`).
    backend_jwt: backend_jwt::BackendJwt,
    /// Memory all unfinished request heads may hold together.
    head_budget: Arc<guard::HeadBudget>,
    usage: Option<Box<dyn UsageSink>>,
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

fn fault_body(code: u32, message: &str, description: &str) -> Bytes {
    let v = serde_json::json!({"fault": {"code": code, "message": message, "description": description}});
    Bytes::from(v.to_string())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers gatelet sets for the backend, or consumes: a client's copy is never forwarded.
const OWNED: [&str; 8] = [
    "x-jwt-assertion",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-request-id",
];

/// Removes client headers that a backend could read as one gatelet sets: `X_JWT_Assertion` is a
/// different header to HTTP, but CGI, WSGI and Rack map `_` and `-` to the same variable, so
/// underscore spellings of owned headers (and of the API's token header) are dropped.
fn strip_spoofable(headers: &mut HeaderMap, auth_header: &HeaderName) {
    let spoofs: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            let dashed = k.as_str().replace('_', "-");
            OWNED.contains(&dashed.as_str()) || dashed == auth_header.as_str()
        })
        .cloned()
        .collect();
    for k in spoofs {
        headers.remove(&k);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(h);
    }
    headers.remove(HeaderName::from_static("proxy-connection"));
}

/// A refusal on the request path, mapped to status, fault code and metric in [`Gateway::fault`].
enum Refusal {
    BadPath(router::PathError),
    /// No, several or a malformed `Host` (RFC 9112 §3.2).
    BadHost(forwarded::HostError),
    NotFound,
    MethodNotAllowed(Vec<&'static str>),
    Token(TokenError),
    /// A valid token whose key type has no endpoint on this API.
    NoEndpointForKeyType(KeyType),
    Throttled(throttle::Throttled),
    ThrottleFailed(throttle::Unchecked),
    BodyTooLarge,
    /// The client's body broke: malformed chunked framing, or the connection cut mid-body.
    BadBody(String),
    /// The client stopped sending its body for longer than `body_idle_timeout_ms`.
    BodyStalled,
    Upstream(UpstreamError),
    NotReady,
    /// An HTTPS-only API (`x-wso2-transports: [https]`) asked for on the plain-HTTP listener.
    HttpsRequired,
}

impl Gateway {
    pub fn new(
        config: Config,
        prepared: Prepared,
        usage: Option<Box<dyn UsageSink>>,
    ) -> Result<Gateway, StartError> {
        let state = match prepared.state {
            Some(s) => s,
            None => StateStore::open(&config.state.dir).map_err(|e| StartError(e.to_string()))?,
        };
        let active = Active::new(prepared.bundle, &config, prepared.floor)?;
        let upstreams = Arc::new(Upstreams::new(
            config.server.backend_pool_size as usize,
            Duration::from_millis(config.server.backend_connect_timeout_ms),
            Duration::from_millis(config.server.backend_timeout_ms),
            backend_root(&config.server.backend_ca_file)?,
        ));
        let head_budget = guard::HeadBudget::new(
            usize::try_from(config.server.max_head_memory_bytes).unwrap_or(usize::MAX),
        );
        let trusted_proxies =
            forwarded::TrustedProxies::parse(&config.server.trusted_proxies).map_err(StartError)?;
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
            trusted_proxies,
            backend_jwt: prepared.backend_jwt,
            head_budget,
            usage,
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
            let active = Active::new(bundle, &self.config, floor)?;
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
    fn record_refusal(
        &self,
        peer: SocketAddr,
        request_line: &[u8],
        status: u16,
        code: Option<u32>,
        detail: &str,
    ) {
        self.metrics.request("none", status);
        let Some(usage) = &self.usage else { return };
        let line = String::from_utf8_lossy(request_line);
        let mut parts = line.split(' ');
        let method: String = parts.next().unwrap_or("").chars().take(16).collect();
        // Never the query: it may hold an API key (`?apikey=...`), in any form of target.
        let path = parts.next().unwrap_or("").split(['?', '#']).next().unwrap_or("");
        let resource = router::normalize_path(path).unwrap_or_else(|_| path.chars().take(256).collect());
        let mut record = self.arrived(&self.active(), method, peer);
        record.resource = resource;
        record.status = status;
        record.error_code = code;
        record.error_detail = Some(detail.to_owned());
        usage.record(record);
    }

    /// The usage record of a request as it arrives: when, which, from whom, under which bundle;
    /// the pipeline fills in the rest.
    fn arrived(&self, active: &Active, method: String, peer: SocketAddr) -> UsageEvent {
        UsageEvent {
            ts: Timestamp(usage_ms(active.clock.now())),
            request_id: self.next_request_id(),
            api: None,
            api_version: None,
            context: None,
            resource: String::new(),
            method,
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
            client_ip: peer.ip().to_string(),
            bundle_serial: active.bundle.serial(),
        }
    }

    fn next_request_id(&self) -> String {
        format!("{}-{:x}", self.request_prefix, self.request_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// The one place a refusal becomes a response and a metric.
    fn fault(&self, refusal: &Refusal, record: &mut UsageEvent) -> Response<ProxyBody> {
        let (status, code, message, description): (u16, u32, &str, String) = match refusal {
            Refusal::BadPath(e) => (400, 900906, "Bad Request", e.to_string()),
            Refusal::BadHost(e) => (400, 900906, "Bad Request", e.to_string()),
            Refusal::NotFound => (
                404,
                900906,
                "No matching resource found for given API Request",
                "the method and path match no API resource".into(),
            ),
            Refusal::MethodNotAllowed(_) => {
                (405, 900906, "Method not allowed", "the resource does not accept this method".into())
            }
            Refusal::Token(e) => {
                self.metrics.auth_failure(e.reason());
                let message = match e.fault_code() {
                    900902 => "Missing Credentials",
                    900903 => "Invalid Credentials",
                    900908 => "Resource forbidden",
                    900910 => "The access token does not allow you to access the requested resource",
                    _ => "Invalid Credentials",
                };
                (e.http_status(), e.fault_code(), message, e.to_string())
            }
            Refusal::NoEndpointForKeyType(k) => {
                self.metrics.auth_failure("no_endpoint_for_keytype");
                (403, 900908, "Resource forbidden", format!("this API has no {} endpoint", k.as_str()))
            }
            Refusal::Throttled(t) => {
                self.metrics.throttled(t.level.as_str());
                record.throttled = true;
                (429, t.level.fault_code(), "Message throttled out", "You have exceeded your quota".into())
            }
            Refusal::ThrottleFailed(u) => {
                (throttle::FAIL_STATUS, throttle::FAIL_CODE, "Internal Server Error", u.to_string())
            }
            Refusal::BodyTooLarge => (
                413,
                900906,
                "Payload Too Large",
                format!("request body larger than {} bytes", self.config.server.max_body_bytes),
            ),
            // The client's faults: no backend metric moves.
            Refusal::BadBody(detail) => {
                record.error_detail = Some(detail.clone());
                (400, 900906, "Bad Request", "the request body is malformed or incomplete".into())
            }
            Refusal::BodyStalled => (
                408,
                900906,
                "Request Timeout",
                format!("no request body bytes for {} ms", self.config.server.body_idle_timeout_ms),
            ),
            Refusal::Upstream(UpstreamError::Timeout) => {
                self.metrics.backend_timeouts.fetch_add(1, Ordering::Relaxed);
                (504, 101504, "Gateway Timeout", "the backend did not answer in time".into())
            }
            Refusal::Upstream(e) => {
                self.metrics.backend_errors.fetch_add(1, Ordering::Relaxed);
                // The caller learns that the backend failed, never where it lives or what the OS
                // said: that goes to the log and the usage record.
                record.error_detail = Some(e.to_string());
                (502, 101503, "Runtime Error", "the backend could not be reached or failed to answer".into())
            }
            Refusal::NotReady => (503, 101503, "Service Unavailable", "no verified bundle is active".into()),
            // 403, not a redirect: whatever the request carried has already crossed the network in
            // clear, and a redirect would have clients resend it silently instead of fixing the
            // URL. Not 421 either: the HTTPS listener is another origin, not another connection
            // to this one. 900906 is what Microgateway answered (the API was not on its HTTP
            // listener at all).
            Refusal::HttpsRequired => (
                403,
                900906,
                "HTTPS Required",
                "this API is served over HTTPS only (x-wso2-transports); call the gateway's HTTPS listener"
                    .into(),
            ),
        };
        record.status = status;
        record.error_code = Some(code);
        let mut resp = Response::new(full(fault_body(code, message, &description)));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if status == 401 {
            // RFC 6750 §3: error="invalid_token" only when a token was presented.
            let presented = !matches!(refusal, Refusal::Token(TokenError::Missing));
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(if presented { "Bearer error=\"invalid_token\"" } else { "Bearer" }),
            );
        }
        if let Refusal::MethodNotAllowed(allowed) = refusal {
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                h.insert(header::ALLOW, v);
            }
        }
        if let Refusal::Throttled(t) = refusal {
            if let Some(rl) = Decision::Throttle(t.clone()).headers(true) {
                for (name, value) in rl.fields() {
                    if let Ok(v) = HeaderValue::from_str(value) {
                        h.insert(HeaderName::from_static(name_lower(name)), v);
                    }
                }
            }
        }
        resp
    }

    /// Handles one request end to end.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        self.metrics.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        let active = self.active();
        let record = self.arrived(&active, req.method().as_str().to_owned(), peer);
        // From here on the record belongs to a guard: whatever happens to this future (a client
        // that disconnects while the backend works drops it), the in-flight gauge comes back down
        // and the request leaves exactly one usage record.
        let mut flight = InFlight { gw: Arc::clone(&self), record: Some(record), start, answered: false };
        let Some(record) = flight.record.as_mut() else { return Response::new(full(Bytes::new())) };
        let mut cors = None;
        let result = self.pipeline(&active, req, peer, tls, record, &mut cors).await;
        let mut response = match result {
            Ok(resp) => resp,
            Err(refusal) => self.fault(&refusal, record),
        };
        // CORS headers on every answer of an API with x-wso2-cors, faults included, so a browser
        // app can read why it was refused.
        if let Some(h) = cors {
            response.headers_mut().extend(h);
        }
        if let Ok(v) = HeaderValue::from_str(&record.request_id) {
            response.headers_mut().insert(HeaderName::from_static("x-request-id"), v);
        }
        record.status = response.status().as_u16();
        self.metrics.request(record.api.as_deref().unwrap_or("none"), record.status);
        flight.answered = true;
        // The usage record is written when the response body has been sent (or dropped).
        let done: Box<dyn FnOnce(u64) + Send> = Box::new(move |bytes| {
            if let Some(r) = flight.record.as_mut() {
                r.response_bytes = bytes;
            }
            drop(flight);
        });
        let (parts, body) = response.into_parts();
        let metered = Metered::new(body, u64::MAX, Arc::new(Meter::default()), Some(done));
        Response::from_parts(parts, metered.boxed_unsync())
    }

    async fn pipeline(
        &self,
        active: &Active,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
        record: &mut UsageEvent,
        cors_out: &mut Option<HeaderMap>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        if !self.is_ready() {
            return Err(Refusal::NotReady);
        }
        let manifest = active.bundle.manifest();
        let host =
            forwarded::request_host(req.version(), req.uri(), req.headers()).map_err(Refusal::BadHost)?;
        let path = router::normalize_path(req.uri().path()).map_err(Refusal::BadPath)?;
        record.resource.clone_from(&path);

        // CORS preflight (x-wso2-cors): answered by the gateway, before authentication, for the
        // resource and method the browser asks about.
        let origin = req.headers().get(header::ORIGIN).cloned();
        if req.method() == hyper::Method::OPTIONS {
            let asked =
                req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD).and_then(|v| v.to_str().ok());
            if let (Some(origin), Some(asked)) = (&origin, asked) {
                if let Ok(route) = active.router.route(&path, asked) {
                    if let Some((api, _)) = router::operation(manifest, route) {
                        // An HTTPS-only API is refused over HTTP below, preflight included.
                        if let Some(cors) = api.cors.as_ref().filter(|_| tls || !api.https_only) {
                            record.api = Some(api.name.clone());
                            record.api_version = Some(api.version.clone());
                            record.context = Some(api.context.clone());
                            let mut resp = Response::new(full(Bytes::new()));
                            *resp.status_mut() = StatusCode::NO_CONTENT;
                            cors_headers(cors, origin, true, resp.headers_mut());
                            return Ok(resp);
                        }
                    }
                }
            }
        }
        let route = active.router.route(&path, req.method().as_str()).map_err(|miss| match miss {
            Miss::NotFound => Refusal::NotFound,
            Miss::MethodNotAllowed { api, .. }
                if !tls && manifest.apis.get(api).is_some_and(|a| a.https_only) =>
            {
                Refusal::HttpsRequired
            }
            Miss::MethodNotAllowed { api, path_template } => {
                Refusal::MethodNotAllowed(active.router.allowed(api, path_template))
            }
        })?;
        let Some((api, op)) = router::operation(manifest, route) else { return Err(Refusal::NotFound) };
        if let (Some(cors), Some(origin)) = (&api.cors, &origin) {
            let mut h = HeaderMap::new();
            cors_headers(cors, origin, false, &mut h);
            *cors_out = Some(h);
        }
        let resource = Router::strip_context(&api.context, &path).unwrap_or("/").to_owned();
        record.api = Some(api.name.clone());
        record.api_version = Some(api.version.clone());
        record.context = Some(api.context.clone());
        record.resource.clone_from(&op.path);
        // Before authentication: over plain HTTP, the gateway does not even say whether the
        // credentials would have been good.
        if api.https_only && !tls {
            return Err(Refusal::HttpsRequired);
        }

        // Authenticate.
        let reading = active.clock.now();
        let auth_header: HeaderName = match &api.auth_header {
            Some(h) => HeaderName::from_bytes(h.as_bytes()).unwrap_or(header::AUTHORIZATION),
            None => header::AUTHORIZATION,
        };
        // The credential as presented (a bearer token or an API key), for the backend JWT.
        let mut credential = String::new();
        let mut by_api_key = false;
        let principal: Option<Principal> = if op.disable_security {
            None
        } else {
            // A bearer token when the operation takes one and one is presented; else an API key
            // from the API's locations when the operation takes one.
            let bearer = if op.bearer {
                req.headers().get(&auth_header).and_then(|v| v.to_str().ok()).and_then(token::bearer_token)
            } else {
                None
            };
            let result = match bearer {
                Some(t) => {
                    credential = t.to_owned();
                    active.validator.validate(t, api, op, reading.now)
                }
                None => match op.api_key.then(|| api_key_of(api, req.headers(), req.uri().query())).flatten()
                {
                    Some(key) => {
                        by_api_key = true;
                        let client =
                            forwarded::client_address(req.headers(), peer.ip(), &self.trusted_proxies);
                        let referer = req.headers().get(header::REFERER).and_then(|v| v.to_str().ok());
                        let r = active.validator.validate_api_key(&key, api, client, referer, reading.now);
                        credential = key;
                        r
                    }
                    None => Err(TokenError::Missing),
                },
            };
            let p = result.map_err(Refusal::Token)?;
            let t = p.token();
            record.subscriber = Some(t.subject.clone());
            record.keytype = Some(t.key_type.as_str().to_owned());
            if let Some(app) = &t.application {
                record.app_id.clone_from(&app.id);
                record.app_name.clone_from(&app.name);
            }
            record.tier = p.subscription_tier().or(p.application_tier()).map(str::to_owned);
            Some(p)
        };

        // Throttle, before anything is forwarded.
        let caller = match &principal {
            None => Caller::Anonymous { client_ip: peer.ip() },
            Some(p) => Caller::Token {
                issuer: &p.token().issuer,
                app_id: p.token().application.as_ref().and_then(|a| a.id.as_deref()).unwrap_or(""),
                subject: &p.token().subject,
                application_tier: p.application_tier(),
                subscription_tier: p.subscription_tier(),
            },
        };
        let decision = active.throttle.check(
            &throttle::Request { api: route.api, operation: route.operation, caller },
            now_ms(reading.now),
        );
        let ratelimit = decision.headers(self.config.server.ratelimit_headers);
        match decision {
            Decision::Allow(a) => record.over_quota = a.over_quota,
            Decision::Throttle(t) => return Err(Refusal::Throttled(t)),
            Decision::Fail(u) => return Err(Refusal::ThrottleFailed(u)),
        }

        // Forward.
        let key_type = principal.as_ref().map_or(KeyType::Production, |p| p.token().key_type);
        let endpoints = pick_endpoints(api, op, key_type).ok_or(Refusal::NoEndpointForKeyType(key_type))?;
        let max_body = self.config.server.max_body_bytes;
        if let Some(len) =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            if len > max_body {
                return Err(Refusal::BodyTooLarge);
            }
        }
        let (mut parts, incoming) = req.into_parts();
        // An API key in the query string never reaches the backend (nor any log: the usage
        // record carries the path only).
        let key_params: Vec<&str> =
            api.api_key_locations.iter().filter(|l| l.query).map(|l| l.name.as_str()).collect();
        let query = match parts.uri.query() {
            None => String::new(),
            Some(q) if key_params.is_empty() => format!("?{q}"),
            Some(q) => match token::api_key::strip_query_params(q, &key_params) {
                kept if kept.is_empty() => String::new(),
                kept => format!("?{kept}"),
            },
        };
        strip_hop_by_hop(&mut parts.headers);
        strip_spoofable(&mut parts.headers, &auth_header);
        strip_spoofable(&mut parts.headers, self.backend_jwt.header());
        let h = &mut parts.headers;
        h.remove(&auth_header);
        h.remove(header::AUTHORIZATION);
        for loc in api.api_key_locations.iter().filter(|l| !l.query) {
            if let Ok(name) = HeaderName::from_bytes(loc.name.as_bytes()) {
                strip_spoofable(h, &name);
                h.remove(name);
            }
        }
        // The backend gets what `[backend_jwt]` says, never a client-supplied assertion.
        h.remove(HeaderName::from_static("x-jwt-assertion"));
        h.remove(self.backend_jwt.header());
        if let Some(p) = &principal {
            if let Some(v) = self.backend_jwt.value(&credential, by_api_key, p, api, reading.now) {
                h.insert(self.backend_jwt.header().clone(), v);
            }
        }
        // The endpoint's own credentials (securityConfig), never the caller's (removed above).
        if let Some(b) = &endpoints.basic_auth {
            h.insert(header::AUTHORIZATION, basic_authorization(b));
        }
        let via_proxy = !self.trusted_proxies.is_empty() && self.trusted_proxies.contains(peer.ip());
        forwarded::set_forwarding(h, peer.ip(), tls, host.as_ref(), via_proxy);
        if let Ok(v) = HeaderValue::from_str(&record.request_id) {
            h.insert(HeaderName::from_static("x-request-id"), v);
        }
        let meter = Arc::new(Meter::default());
        let body = Metered::new(incoming, max_body, Arc::clone(&meter), None)
            .idle_timeout(Duration::from_millis(self.config.server.body_idle_timeout_ms))
            .boxed_unsync();
        let mut upstream_req = Request::from_parts(parts, body);
        *upstream_req.version_mut() = hyper::Version::HTTP_11;
        let sent = Instant::now();
        let result = self.upstreams.send(endpoints, &resource, &query, upstream_req, &meter).await;
        record.request_bytes = meter.bytes.load(Ordering::Relaxed);
        let resp = match result {
            Ok(r) => r,
            // A forward that failed because of the request body is the client's fault.
            Err(_) if meter.over_limit.load(Ordering::Relaxed) => return Err(Refusal::BodyTooLarge),
            Err(_) if meter.stalled.load(Ordering::Relaxed) => return Err(Refusal::BodyStalled),
            Err(e) if meter.failed.load(Ordering::Relaxed) => {
                log::debug!("{} {}: request body: {e}", record.method, path);
                return Err(Refusal::BadBody(e.to_string()));
            }
            Err(e) => {
                if let Some(n) = upstream::BACKEND_WARNINGS.admit() {
                    log::warn!("{} {}: {e}{}", record.method, path, upstream::suppressed_note(n));
                }
                return Err(Refusal::Upstream(e));
            }
        };
        record.backend_latency_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(rl) = ratelimit {
            for (name, value) in rl.fields() {
                if let Ok(v) = HeaderValue::from_str(value) {
                    parts.headers.insert(HeaderName::from_static(name_lower(name)), v);
                }
            }
        }
        Ok(Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync()))
    }

    /// The admin endpoints: `/healthz`, `/readyz`, `/metrics`.
    pub fn admin(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let json = |status: StatusCode, body: &str| {
            let mut r = Response::new(full(body.to_owned()));
            *r.status_mut() = status;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        };
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
            return json(StatusCode::METHOD_NOT_ALLOWED, r#"{"status":"method not allowed"}"#);
        }
        match req.uri().path() {
            "/healthz" => json(StatusCode::OK, r#"{"status":"healthy"}"#),
            "/readyz" if self.is_ready() => {
                let a = self.active();
                json(
                    StatusCode::OK,
                    &serde_json::json!({"status": "ready", "bundle_serial": a.bundle.serial()}).to_string(),
                )
            }
            "/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#),
            "/metrics" => {
                let mut r = Response::new(full(self.render_metrics()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            _ => json(StatusCode::NOT_FOUND, r#"{"status":"not found"}"#),
        }
    }

    fn render_metrics(&self) -> String {
        let active = self.active();
        self.metrics.clock_floor_seconds.store(active.clock.floor().0, Ordering::Relaxed);
        let t = active.throttle.metrics(now_ms(active.clock.now().now));
        let (cached, capacity) = active.validator.cache_usage();
        let mut extra: Vec<(String, &'static str, &'static str, u64)> = vec![
            (
                "gatelet_throttle_memory_bytes".into(),
                "gauge",
                "Memory held by throttling tables.",
                t.bytes as u64,
            ),
            ("gatelet_token_cache_entries".into(), "gauge", "Verified tokens cached.", cached as u64),
            (
                "gatelet_token_cache_capacity".into(),
                "gauge",
                "Capacity of the verified-token cache.",
                capacity as u64,
            ),
            (
                "gatelet_head_memory_bytes".into(),
                "gauge",
                "Memory held by unfinished request heads (charged to the head budget).",
                self.head_budget.used() as u64,
            ),
            (
                "gatelet_head_memory_budget_bytes".into(),
                "gauge",
                "The budget for unfinished request heads (server.max_head_memory_bytes).",
                self.head_budget.limit() as u64,
            ),
            (
                "gatelet_heads_shed_total".into(),
                "counter",
                "Connections closed because unfinished heads exceeded their budget (oldest first).",
                self.head_budget.shed_total(),
            ),
            (
                "gatelet_backend_idle_connections".into(),
                "gauge",
                "Pooled idle backend connections.",
                self.upstreams.idle() as u64,
            ),
            (
                "gatelet_backend_connects_total".into(),
                "counter",
                "Backend connections opened (steady load within the pool opens none).",
                self.upstreams.connects(),
            ),
        ];
        for table in &t.tables {
            extra.push((
                format!(
                    "gatelet_throttle_table_entries{{table=\"{}\",state=\"live\"}}",
                    table.level.as_str()
                ),
                "gauge",
                "Throttling table entries, by table and state.",
                table.live as u64,
            ));
            extra.push((
                format!(
                    "gatelet_throttle_table_entries{{table=\"{}\",state=\"capacity\"}}",
                    table.level.as_str()
                ),
                "gauge",
                "Throttling table entries, by table and state.",
                table.capacity as u64,
            ));
            extra.push((
                format!("gatelet_throttle_table_full_total{{table=\"{}\"}}", table.level.as_str()),
                "counter",
                "New keys refused because their throttling table was full.",
                table.full,
            ));
            extra.push((
                format!("gatelet_throttle_table_overflow_total{{table=\"{}\"}}", table.level.as_str()),
                "counter",
                "New keys admitted under a shared overflow bucket because their throttling table was full.",
                table.overflow,
            ));
        }
        if let Some(u) = &self.usage {
            extra.extend(u.metrics());
        }
        let borrowed: Vec<(&str, &str, &str, u64)> =
            extra.iter().map(|(n, k, h, v)| (n.as_str(), *k, *h, *v)).collect();
        self.metrics.render(&borrowed)
    }
}

/// `Access-Control-*` headers for an allowed `origin` (nothing when it is not allowed).
fn cors_headers(cors: &Cors, origin: &HeaderValue, preflight: bool, h: &mut HeaderMap) {
    let Ok(o) = origin.to_str() else { return };
    let any = cors.allow_origins.iter().any(|a| a == "*");
    if !any && !cors.allow_origins.iter().any(|a| a.eq_ignore_ascii_case(o)) {
        return;
    }
    // With credentials, "*" is not allowed by browsers: echo the origin instead.
    let allow = if any && !cors.allow_credentials { HeaderValue::from_static("*") } else { origin.clone() };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if cors.allow_credentials {
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if !preflight && !cors.expose_headers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", ")) {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
    if preflight {
        for (name, list) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers),
        ] {
            if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
                h.insert(name, v);
            }
        }
    }
}

/// `Authorization: Basic` (RFC 7617) for a backend; marked sensitive so that it is never printed.
fn basic_authorization(b: &BasicAuth) -> HeaderValue {
    let encoded = <base64ct::Base64 as base64ct::Encoding>::encode_string(
        format!("{}:{}", b.username, b.password).as_bytes(),
    );
    // Base64 output and the "Basic " prefix are visible ASCII: always a valid header value.
    let mut v =
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or(HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

fn name_lower(name: &'static str) -> &'static str {
    match name {
        throttle::RATELIMIT_POLICY => "ratelimit-policy",
        throttle::RATELIMIT => "ratelimit",
        _ => "retry-after",
    }
}

fn now_ms(now_s: u64) -> u64 {
    // The validator's clock is in whole seconds; sub-second precision comes from the wall clock
    // when it agrees with the floored time.
    let wall =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let wall = u64::try_from(wall).unwrap_or(u64::MAX);
    if wall / 1000 == now_s { wall } else { now_s.saturating_mul(1000) }
}

/// The earliest wall clock gatelet believes (2026-01-01T00:00:00Z, before any gatelet release):
/// a clock behind it is a board that booted without a real-time clock.
pub const PLAUSIBLE_WALL_CLOCK_S: u64 = 1_767_225_600;

/// The time stamped on a usage record: the wall clock when it is plausible, even if a clock floor
/// ran ahead of it (a bundle built with a wrong clock must not push every record into the
/// future); the floored time only on a board whose clock is not set.
fn usage_ms(reading: token::Reading) -> u64 {
    if reading.wall >= PLAUSIBLE_WALL_CLOCK_S {
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let wall = u64::try_from(wall).unwrap_or(u64::MAX);
        // The reading's wall clock and this one were read a moment apart; keep the reading's
        // second if they disagree (a clock step in between).
        if wall / 1000 == reading.wall { wall } else { reading.wall.saturating_mul(1000) }
    } else {
        now_ms(reading.now)
    }
}

/// The API key of a request: the first of the API's locations (a header, or a query parameter)
/// that holds a non-empty value.
fn api_key_of(api: &Api, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    api.api_key_locations.iter().find_map(|loc| {
        let v = if loc.query {
            token::api_key::query_param(query?, &loc.name)?
        } else {
            headers.get(loc.name.as_str())?.to_str().ok()?.trim().to_owned()
        };
        (!v.is_empty()).then_some(v)
    })
}

/// The endpoint list for a request: the operation's, else the API's; production or sandbox by
/// the token's key type.
fn pick_endpoints<'a>(api: &'a Api, op: &'a Operation, key_type: KeyType) -> Option<&'a Endpoints> {
    match key_type {
        KeyType::Production => op.production.as_ref().or(api.production.as_ref()),
        KeyType::Sandbox => op.sandbox.as_ref().or(api.sandbox.as_ref()),
    }
}

/// Status recorded for a request whose client went away before it was answered (as nginx logs).
const CLIENT_CLOSED: u16 = 499;

/// One request in flight: holds its usage record until the response body is done, and on drop
/// (however that happens) lowers the in-flight gauge and hands the record to the usage sink.
struct InFlight {
    gw: Arc<Gateway>,
    record: Option<UsageEvent>,
    start: Instant,
    /// Whether a response was produced (and counted in `gatelet_requests_total`).
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gw.metrics.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(mut record) = self.record.take() else { return };
        if !self.answered {
            record.status = CLIENT_CLOSED;
            self.gw.metrics.request(record.api.as_deref().unwrap_or("none"), CLIENT_CLOSED);
        }
        record.latency_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if let Some(u) = &self.gw.usage {
            u.record(record);
        }
    }
}

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
        let Some(permit) = limit.try_acquire() else { continue };
        let (stream, peer) = match listener.try_accept() {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                // Out of descriptors or memory: wait a little rather than spin on the error.
                drop(permit);
                log::warn!("accept: {e}");
                rt::Sleep::after(Duration::from_millis(50)).await;
                continue;
            }
        };
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
                    let handshake = smol::future::or(async { Some(acceptor.accept(stream).await) }, async {
                        rt::Sleep::after(timeout).await;
                        None
                    })
                    .await;
                    match handshake {
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
