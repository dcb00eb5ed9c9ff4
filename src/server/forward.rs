//! Forwarding: one request from its arrival to its usage record. The pipeline's decision is
//! carried out here: the backend request is built from a [`Forward`] (hop-by-hop and
//! gatelet-owned headers stripped, the backend JWT, the endpoint's credentials, forwarding
//! headers), sent through the backend pool, and its answer relayed with the rate-limit and CORS
//! headers; the request's usage record is handed over when the answer's body ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};

use crate::bundle::model::BasicAuth;
use crate::throttle::{self, RateLimitHeaders};
use crate::token::{Principal, Reading};
use crate::usage::UsageEvent;

use super::backend_jwt::BackendJwt;
use super::body::{BoxError, Meter, Metered, ProxyBody, full};
use super::forwarded;
use super::gateway::{Active, Gateway};
use super::metrics::StatusCounts;
use super::pipeline::{self, Credential, Decision, Forward, Head, Peer, Refusal, Verdict};
use super::upstream;

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

/// Status recorded for a request whose client went away before it was answered (as nginx logs).
const CLIENT_CLOSED: u16 = 499;

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

/// Writes IETF rate-limit headers (lower-case names) into `h`.
pub(super) fn insert_ratelimit(h: &mut HeaderMap, rl: &RateLimitHeaders) {
    for (name, value) in rl.fields() {
        let lower = match name {
            throttle::RATELIMIT_POLICY => "ratelimit-policy",
            throttle::RATELIMIT => "ratelimit",
            _ => "retry-after",
        };
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(HeaderName::from_static(lower), v);
        }
    }
}

/// Turns the client's request head into the backend's, for a request the pipeline forwards:
/// hop-by-hop headers, the credential and every header gatelet owns (underscore spellings too)
/// are removed; the backend JWT (`[backend_jwt]`), the endpoint's basic credentials, the
/// forwarding headers and `X-Request-Id` are set. The URI and `Host` are the backend pool's
/// (they depend on which URL of the list takes the request).
pub fn backend_head(
    parts: &mut Parts,
    active: &Active,
    backend_jwt: &BackendJwt,
    decision: &Decision<'_>,
    forward: &Forward<'_>,
    peer: Peer,
    request_id: &str,
) {
    strip_hop_by_hop(&mut parts.headers);
    strip_spoofable(&mut parts.headers, &forward.auth_header);
    strip_spoofable(&mut parts.headers, backend_jwt.header());
    let h = &mut parts.headers;
    h.remove(&forward.auth_header);
    h.remove(header::AUTHORIZATION);
    if let Some(routed) = &decision.routed {
        for loc in routed.api.api_key_locations.iter().filter(|l| !l.query) {
            if let Ok(name) = HeaderName::from_bytes(loc.name.as_bytes()) {
                strip_spoofable(h, &name);
                h.remove(name);
            }
        }
    }
    // The backend gets what `[backend_jwt]` says, never a client-supplied assertion.
    h.remove(HeaderName::from_static("x-jwt-assertion"));
    h.remove(backend_jwt.header());
    if let (Some(p), Some(routed)) = (&decision.principal, &decision.routed) {
        let (credential, by_api_key) = match &forward.credential {
            Credential::None => ("", false),
            Credential::Bearer(t) => (t.as_str(), false),
            Credential::ApiKey(k) => (k.as_str(), true),
        };
        if let Some(v) = backend_jwt.value(credential, by_api_key, p, routed.api, forward.now) {
            h.insert(backend_jwt.header().clone(), v);
        }
    }
    // The endpoint's own credentials (securityConfig), never the caller's (removed above).
    if let Some(b) = &forward.endpoints.basic_auth {
        h.insert(header::AUTHORIZATION, basic_authorization(b));
    }
    let trusted = &active.settings.trusted_proxies;
    let via_proxy = !trusted.is_empty() && trusted.contains(peer.addr.ip());
    forwarded::set_forwarding(h, peer.addr.ip(), peer.tls, forward.host.as_ref(), via_proxy);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    parts.version = hyper::Version::HTTP_11;
}

/// Fills the usage record with what the pipeline learnt: API, resource (moved out of the
/// decision), caller.
fn note(active: &Active, decision: &mut Decision<'_>, record: &mut UsageEvent) {
    record.resource = std::mem::take(&mut decision.resource);
    if let Some(r) = &decision.routed {
        record.api = active.labels.get(r.index).cloned();
    }
    if let Some(p) = &decision.principal {
        note_principal(p, record);
    }
}

fn note_principal(p: &Principal, record: &mut UsageEvent) {
    let t = p.token();
    record.subscriber = Some(t.subject.clone());
    record.keytype = Some(t.key_type.as_str());
    if let Some(app) = &t.application {
        record.app_id.clone_from(&app.id);
        record.app_name.clone_from(&app.name);
    }
    record.tier = p.subscription_tier().or(p.application_tier()).map(str::to_owned);
}

/// One request in flight: holds its usage record until the response body is done, and on drop
/// (however that happens) lowers the in-flight gauge, counts the request if it was never
/// answered, and hands the record to the usage sink.
struct InFlight {
    gw: Arc<Gateway>,
    record: Option<UsageEvent>,
    /// Where the request is counted: its API's counters once routed, else `api="none"`.
    counts: Arc<StatusCounts>,
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
            self.counts.add(CLIENT_CLOSED);
        }
        record.latency_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if let Some(u) = &self.gw.usage {
            u.record(record);
        }
    }
}

impl Gateway {
    /// Handles one request end to end.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
        tls: bool,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        self.metrics.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        let active = self.active();
        let now = active.now();
        let record = self.arrived(&active, now, req.method().as_str(), peer);
        // From here on the record belongs to a guard: whatever happens to this future (a client
        // that disconnects while the backend works drops it), the in-flight gauge comes back down
        // and the request leaves exactly one usage record.
        let mut flight = InFlight {
            gw: Arc::clone(&self),
            record: Some(record),
            counts: Arc::clone(&self.metrics.unrouted),
            start,
            answered: false,
        };
        let InFlight { record, counts, .. } = &mut flight;
        let Some(record) = record.as_mut() else { return Response::new(full(Bytes::new())) };
        let mut cors = None;
        let result =
            self.carry_out(&active, req, Peer { addr: peer, tls }, now, record, &mut cors, counts).await;
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
        counts.add(record.status);
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

    /// Decides, then forwards (or answers a preflight). `cors_out` gets the CORS headers for the
    /// answer; `counts` the request's API counters once routed.
    #[allow(clippy::too_many_arguments)]
    async fn carry_out(
        &self,
        active: &Active,
        req: Request<Incoming>,
        peer: Peer,
        now: Reading,
        record: &mut UsageEvent,
        cors_out: &mut Option<HeaderMap>,
        counts: &mut Arc<StatusCounts>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        if !self.is_ready() {
            return Err(Refusal::NotReady);
        }
        let mut decision = pipeline::decide(active, Head::of(&req), peer, now);
        note(active, &mut decision, record);
        if let Some(c) = decision.routed.and_then(|r| active.counters.of(r.index)) {
            counts.clone_from(c);
        }
        *cors_out = decision.cors.take();
        let verdict = std::mem::replace(&mut decision.verdict, Verdict::Refuse(Refusal::NotFound));
        let forward = match verdict {
            Verdict::Forward(f) => f,
            Verdict::Preflight(h) => {
                let mut resp = Response::new(full(Bytes::new()));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp.headers_mut().extend(h);
                return Ok(resp);
            }
            Verdict::Refuse(r) => return Err(r),
        };
        record.over_quota = forward.over_quota;
        let max_body = active.settings.max_body_bytes;
        let (mut parts, incoming) = req.into_parts();
        backend_head(&mut parts, active, &self.backend_jwt, &decision, &forward, peer, &record.request_id);
        let meter = Arc::new(Meter::default());
        let body = Metered::new(incoming, max_body, Arc::clone(&meter), None)
            .idle_timeout(Duration::from_millis(self.config.server.body_idle_timeout_ms))
            .boxed_unsync();
        let upstream_req = Request::from_parts(parts, body);
        let sent = Instant::now();
        let result =
            self.upstreams.send(forward.endpoints, &forward.path, &forward.query, upstream_req, &meter).await;
        record.request_bytes = meter.bytes.load(Ordering::Relaxed);
        let resp = match result {
            Ok(r) => r,
            // A forward that failed because of the request body is the client's fault.
            Err(_) if meter.over_limit.load(Ordering::Relaxed) => return Err(Refusal::BodyTooLarge),
            Err(_) if meter.stalled.load(Ordering::Relaxed) => return Err(Refusal::BodyStalled),
            Err(e) if meter.failed.load(Ordering::Relaxed) => {
                log::debug!("{} {}: request body: {e}", record.method, record.resource);
                return Err(Refusal::BadBody(e.to_string()));
            }
            Err(e) => {
                if let Some(n) = upstream::BACKEND_WARNINGS.admit() {
                    log::warn!("{} {}: {e}{}", record.method, record.resource, upstream::suppressed_note(n));
                }
                return Err(Refusal::Upstream(e));
            }
        };
        record.backend_latency_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(rl) = &forward.ratelimit {
            insert_ratelimit(&mut parts.headers, rl);
        }
        Ok(Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync()))
    }
}
