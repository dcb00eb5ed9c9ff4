//! The request pipeline, without sockets: what to do with a request, from its head, the bundle
//! in force, the caller's address and the time.
//!
//! ```text
//! Host (400) ─► normalise path (400) ─► CORS preflight (204) ─► route (404/405)
//!   ─► HTTPS-only API over HTTP (403) ─► bearer token or API key (401/403)
//!   ─► throttle (429/500) ─► endpoint for the key type (403) ─► Content-Length (413) ─► Forward
//! ```
//!
//! [`decide`] reads nothing but its arguments: no clock, no socket, no configuration file. The
//! throttle counts an allowed request and the token cache keeps a verified token, as they would
//! for a request that arrived over the network, so unit tests drive it exactly as a listener
//! does. What is done with the decision (building the backend request, relaying the answer) is
//! [`super::forward`]'s; how a refusal is answered is [`super::faults`]'.

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri, Version};

use crate::bundle::model::{Api, Cors, Endpoints, Operation};
use crate::router::{self, Miss, Router};
use crate::throttle::{self, Caller, RateLimitHeaders};
use crate::token::{self, KeyType, Principal, Reading, TokenError};

use super::forwarded::{self, HostError};
use super::gateway::Active;
use super::upstream::UpstreamError;

/// What the pipeline reads of a request: its head, never its body.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
}

impl<'a> Head<'a> {
    pub fn of<B>(request: &'a Request<B>) -> Head<'a> {
        Head {
            method: request.method(),
            uri: request.uri(),
            version: request.version(),
            headers: request.headers(),
        }
    }
}

/// Who is asking, as the listener saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The TCP peer (a trusted proxy's `X-Forwarded-For` may name another caller).
    pub addr: SocketAddr,
    /// Whether the request came in on the HTTPS listener.
    pub tls: bool,
}

/// A refusal on the request path, mapped to status, fault code and metric in one place
/// ([`super::faults`]). [`decide`] produces those up to `BodyTooLarge`; the rest happen while
/// forwarding, or before the pipeline runs (`NotReady`).
#[derive(Debug)]
pub enum Refusal {
    BadPath(router::PathError),
    /// No, several or a malformed `Host` (RFC 9112 §3.2).
    BadHost(HostError),
    NotFound,
    MethodNotAllowed(Vec<&'static str>),
    Token(TokenError),
    /// A valid token whose key type has no endpoint on this API.
    NoEndpointForKeyType(KeyType),
    Throttled(throttle::Throttled),
    ThrottleFailed(throttle::Unchecked),
    /// `Content-Length` (or, while forwarding, the body itself) above `server.max_body_bytes`.
    BodyTooLarge,
    /// An HTTPS-only API (`x-wso2-transports: [https]`) asked for on the plain-HTTP listener.
    HttpsRequired,
    /// The client's body broke: malformed chunked framing, or the connection cut mid-body.
    BadBody(String),
    /// The client stopped sending its body for longer than `body_idle_timeout_ms`.
    BodyStalled,
    Upstream(UpstreamError),
    NotReady,
}

/// The credential a request was let in with, as presented (for the backend JWT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The operation has security disabled.
    None,
    Bearer(String),
    ApiKey(String),
}

/// A request to forward: where, and what the backend request is built from.
#[derive(Debug)]
pub struct Forward<'a> {
    /// The operation's list, else the API's; production or sandbox by the key type.
    pub endpoints: &'a Endpoints,
    pub key_type: KeyType,
    /// The request path below the API's context (`/` for the API root).
    pub path: String,
    /// The caller's query, `?` included (empty when none), API-key parameters removed.
    pub query: String,
    /// The host the client named (for `X-Forwarded-Host` and `Forwarded`).
    pub host: Option<HeaderValue>,
    /// The header the API reads its token from (removed before forwarding).
    pub auth_header: HeaderName,
    pub credential: Credential,
    /// Rate-limit headers for the answer (`server.ratelimit_headers`).
    pub ratelimit: Option<RateLimitHeaders>,
    /// Passed over quota at a level whose tier does not stop (marks the usage record).
    pub over_quota: bool,
    /// The time the request was decided at (Unix seconds, floored), for the backend JWT.
    pub now: u64,
}

/// What to do with a request.
// One verdict lives on the stack per request; boxing the large variant would allocate per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Verdict<'a> {
    Forward(Forward<'a>),
    /// A CORS preflight the gateway answers itself: 204 with these headers.
    Preflight(HeaderMap),
    Refuse(Refusal),
}

/// The API a request was routed to.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    /// Index in the manifest's `apis` (and in the bundle's request counters).
    pub index: usize,
    pub api: &'a Api,
    /// The operation, once the method matched (a preflight knows the API only).
    pub op: Option<&'a Operation>,
}

/// A decision and what the pipeline learnt on the way, for the usage record and the answer.
#[derive(Debug)]
pub struct Decision<'a> {
    pub verdict: Verdict<'a>,
    /// The API, when routing got that far.
    pub routed: Option<Routed<'a>>,
    /// The resource for the usage record: the operation's path template once routed, else the
    /// normalised path (empty when the path was refused).
    pub resource: String,
    /// The authenticated caller (none for an operation with security disabled, or a refusal
    /// before authentication).
    pub principal: Option<Principal>,
    /// `Access-Control-*` headers for every answer of an API with `x-wso2-cors`, faults
    /// included (a preflight carries its own in [`Verdict::Preflight`]).
    pub cors: Option<HeaderMap>,
}

impl<'a> Decision<'a> {
    fn refuse(mut self, refusal: Refusal) -> Decision<'a> {
        self.verdict = Verdict::Refuse(refusal);
        self
    }
}

/// Decides what to do with a request: forward it (and where), answer a preflight, or refuse it.
/// `now` is the one reading of the clock the request is decided with (tokens' expiry,
/// throttling windows, the backend JWT).
pub fn decide<'a>(active: &'a Active, head: Head<'_>, peer: Peer, now: Reading) -> Decision<'a> {
    let mut d = Decision {
        verdict: Verdict::Refuse(Refusal::NotFound),
        routed: None,
        resource: String::new(),
        principal: None,
        cors: None,
    };
    let manifest = active.bundle.manifest();
    let host = match forwarded::request_host(head.version, head.uri, head.headers) {
        Ok(h) => h,
        Err(e) => return d.refuse(Refusal::BadHost(e)),
    };
    let path = match router::normalize_path(head.uri.path()) {
        Ok(p) => p,
        Err(e) => return d.refuse(Refusal::BadPath(e)),
    };
    d.resource.clone_from(&path);

    // CORS preflight (x-wso2-cors): answered by the gateway, before authentication, for the
    // resource and method the browser asks about.
    let origin = head.headers.get(header::ORIGIN);
    if *head.method == Method::OPTIONS {
        let asked = head.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).and_then(|v| v.to_str().ok());
        if let (Some(origin), Some(asked)) = (origin, asked) {
            if let Ok(route) = active.router.route(&path, asked) {
                if let Some((api, _)) = router::operation(manifest, route) {
                    // An HTTPS-only API is refused over HTTP below, preflight included.
                    if let Some(cors) = api.cors.as_ref().filter(|_| peer.tls || !api.https_only) {
                        d.routed = Some(Routed { index: route.api, api, op: None });
                        let mut h = HeaderMap::new();
                        cors_headers(cors, origin, true, &mut h);
                        d.verdict = Verdict::Preflight(h);
                        return d;
                    }
                }
            }
        }
    }
    let route = match active.router.route(&path, head.method.as_str()) {
        Ok(r) => r,
        Err(Miss::NotFound) => return d.refuse(Refusal::NotFound),
        Err(Miss::MethodNotAllowed { api, .. })
            if !peer.tls && manifest.apis.get(api).is_some_and(|a| a.https_only) =>
        {
            return d.refuse(Refusal::HttpsRequired);
        }
        Err(Miss::MethodNotAllowed { api, path_template }) => {
            return d.refuse(Refusal::MethodNotAllowed(active.router.allowed(api, path_template)));
        }
    };
    let Some((api, op)) = router::operation(manifest, route) else { return d.refuse(Refusal::NotFound) };
    if let (Some(cors), Some(origin)) = (&api.cors, origin) {
        let mut h = HeaderMap::new();
        cors_headers(cors, origin, false, &mut h);
        d.cors = Some(h);
    }
    let below_context = Router::strip_context(&api.context, &path).unwrap_or("/").to_owned();
    d.routed = Some(Routed { index: route.api, api, op: Some(op) });
    d.resource.clone_from(&op.path);
    // Before authentication: over plain HTTP, the gateway does not even say whether the
    // credentials would have been good.
    if api.https_only && !peer.tls {
        return d.refuse(Refusal::HttpsRequired);
    }

    // Authenticate.
    let auth_header: HeaderName = match &api.auth_header {
        Some(h) => HeaderName::from_bytes(h.as_bytes()).unwrap_or(header::AUTHORIZATION),
        None => header::AUTHORIZATION,
    };
    let mut credential = Credential::None;
    if !op.disable_security {
        // A bearer token when the operation takes one and one is presented; else an API key
        // from the API's locations when the operation takes one.
        let bearer = if op.bearer {
            head.headers.get(&auth_header).and_then(|v| v.to_str().ok()).and_then(token::bearer_token)
        } else {
            None
        };
        let result = match bearer {
            Some(t) => {
                credential = Credential::Bearer(t.to_owned());
                active.validator.validate(t, api, op, now.now)
            }
            None => match op.api_key.then(|| api_key_of(api, head.headers, head.uri.query())).flatten() {
                Some(key) => {
                    let client = forwarded::client_address(
                        head.headers,
                        peer.addr.ip(),
                        &active.settings.trusted_proxies,
                    );
                    let referer = head.headers.get(header::REFERER).and_then(|v| v.to_str().ok());
                    let r = active.validator.validate_api_key(&key, api, client, referer, now.now);
                    credential = Credential::ApiKey(key);
                    r
                }
                None => Err(TokenError::Missing),
            },
        };
        match result {
            Ok(p) => d.principal = Some(p),
            Err(e) => return d.refuse(Refusal::Token(e)),
        }
    }

    // Throttle, before anything is forwarded.
    let caller = match &d.principal {
        None => Caller::Anonymous { client_ip: peer.addr.ip() },
        Some(p) => Caller::Token {
            issuer: &p.token().issuer,
            app_id: p.token().application.as_ref().and_then(|a| a.id.as_deref()).unwrap_or(""),
            subject: &p.token().subject,
            application_tier: p.application_tier(),
            subscription_tier: p.subscription_tier(),
        },
    };
    let decision = active
        .throttle
        .check(&throttle::Request { api: route.api, operation: route.operation, caller }, now.now_ms());
    let ratelimit = decision.headers(active.settings.ratelimit_headers);
    let over_quota = match decision {
        throttle::Decision::Allow(a) => a.over_quota,
        throttle::Decision::Throttle(t) => return d.refuse(Refusal::Throttled(t)),
        throttle::Decision::Fail(u) => return d.refuse(Refusal::ThrottleFailed(u)),
    };

    // Where to.
    let key_type = d.principal.as_ref().map_or(KeyType::Production, |p| p.token().key_type);
    let Some(endpoints) = pick_endpoints(api, op, key_type) else {
        return d.refuse(Refusal::NoEndpointForKeyType(key_type));
    };
    let declared =
        head.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > active.settings.max_body_bytes) {
        return d.refuse(Refusal::BodyTooLarge);
    }
    // An API key in the query string never reaches the backend (nor any log: the usage record
    // carries the path only).
    let key_params: Vec<&str> =
        api.api_key_locations.iter().filter(|l| l.query).map(|l| l.name.as_str()).collect();
    let query = match head.uri.query() {
        None => String::new(),
        Some(q) if key_params.is_empty() => format!("?{q}"),
        Some(q) => match token::api_key::strip_query_params(q, &key_params) {
            kept if kept.is_empty() => String::new(),
            kept => format!("?{kept}"),
        },
    };
    d.verdict = Verdict::Forward(Forward {
        endpoints,
        key_type,
        path: below_context,
        query,
        host,
        auth_header,
        credential,
        ratelimit,
        over_quota,
        now: now.now,
    });
    d
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

#[cfg(test)]
mod tests {
    //! The pipeline driven directly: a real bundle (compiled from a project on disk, sealed and
    //! verified), real signed tokens and API keys, and a clock set by hand. No socket anywhere.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use ed25519_dalek::SigningKey;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use hyper::http::request::Parts;
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::config::{BackendJwtConfig, BackendJwtMode, Config};
    use crate::server::backend_jwt::BackendJwt;
    use crate::server::forward::backend_head;
    use crate::throttle::Level;
    use crate::token::{ManualTime, TimeSource};

    const IDP: &str = "https://idp.test";
    const APIM: &str = "https://apim.test/keys";
    /// When the bundle was built; the tests' clock starts a little later.
    const BUILT: u64 = 1_800_000_000;
    const MAX_BODY: u64 = 1000;

    struct Fx {
        active: Active,
        time: Arc<ManualTime>,
        idp: SigningKey,
        apim: SigningKey,
        jti: AtomicU64,
    }

    fn project(dir: &std::path::Path, idp: &SigningKey, apim: &SigningKey) {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("apis")).expect("mkdir");
        std::fs::create_dir_all(dir.join("keys")).expect("mkdir");
        for (file, k) in [("keys/idp.pub", idp), ("keys/apim.pub", apim)] {
            let pem = k.verifying_key().to_public_key_pem(Default::default()).expect("pem");
            std::fs::write(dir.join(file), pem).expect("write key");
        }
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
        write(
            "gatelet.toml",
            &format!(
                "label = \"unit\"\n\
                 [[issuer]]\nname = \"idp\"\nissuer = \"{IDP}\"\naudience = \"gatelet\"\nkeys = [\"keys/idp.pub\"]\n\
                 validate_subscription = true\n\
                 [[issuer]]\nname = \"apim\"\nissuer = \"{APIM}\"\nkeys = [\"keys/apim.pub\"]\napi_keys = true\ntokens = false\n\
                 [policies.api]\nOneApi = {{ requests = 1, per = \"1m\" }}\n\
                 [policies.subscription]\nOneSub = {{ requests = 1, per = \"1m\" }}\n\
                 Unauthenticated = {{ requests = 1, per = \"1m\" }}\n\
                 [policies.application]\nOneApp = {{ requests = 1, per = \"1m\" }}\n"
            ),
        );
        let ok = "{responses: {'200': {description: ok}}}";
        let schemes = "components:
  securitySchemes:
    oauth: {type: oauth2, flows: {clientCredentials: {tokenUrl: 'https://idp.test/token', scopes: {shop:admin: admin}}}}
    header_key: {type: apiKey, in: header, name: X-API-Key}
    query_key: {type: apiKey, in: query, name: api_key}
";
        write(
            "apis/shop.yaml",
            &format!(
                "openapi: 3.0.3
info: {{title: Shop, version: 1.0.0}}
x-wso2-basePath: /shop/{{version}}
x-wso2-production-endpoints: {{urls: ['http://prod.test:8080/base?fixed=1']}}
x-wso2-sandbox-endpoints: {{urls: ['http://sandbox.test/sb']}}
x-wso2-cors: {{access-control-allow-origins: ['https://app.example'], access-control-allow-methods: [GET, POST], access-control-allow-headers: [authorization], access-control-allow-credentials: true}}
security: [{{oauth: []}}, {{header_key: []}}, {{query_key: []}}]
paths:
  /items/{{id}}:
    get: {ok}
  /items:
    post: {ok}
  /admin:
    get:
      security: [{{oauth: [shop:admin]}}]
      responses: {{'200': {{description: ok}}}}
  /limited:
    get:
      x-wso2-throttling-tier: OneApi
      responses: {{'200': {{description: ok}}}}
  /open:
    get:
      x-wso2-disable-security: true
      responses: {{'200': {{description: ok}}}}
{schemes}"
            ),
        );
        write(
            "apis/tight.yaml",
            &format!(
                "openapi: 3.0.3
info: {{title: Tight, version: 1.0.0}}
x-wso2-basePath: /tight
x-wso2-throttling-tier: OneApi
x-wso2-production-endpoints: {{urls: ['http://prod.test/t']}}
security: [{{oauth: []}}]
paths:
  /x:
    get: {ok}
{schemes}"
            ),
        );
        write(
            "apis/secure.yaml",
            &format!(
                "openapi: 3.0.3
info: {{title: Secure, version: 1.0.0}}
x-wso2-basePath: /secure
x-wso2-transports: [https]
x-wso2-production-endpoints: {{urls: ['https://prod.test/s']}}
security: [{{oauth: []}}]
paths:
  /x:
    get: {ok}
{schemes}"
            ),
        );
    }

    fn fx(name: &str) -> Fx {
        let idp = SigningKey::from_bytes(&[2; 32]);
        let apim = SigningKey::from_bytes(&[3; 32]);
        let publisher = SigningKey::from_bytes(&[1; 32]);
        let dir = std::env::temp_dir().join(format!("gatelet-pipeline-{}-{name}", std::process::id()));
        project(&dir, &idp, &apim);
        let manifest = crate::project::compile_at(&dir, 1, BUILT).expect("project compiles").manifest;
        let sealed = crate::bundle::seal(&manifest, &publisher).expect("seals");
        let bundle = crate::bundle::verify(&sealed, &[publisher.verifying_key()]).expect("verifies");
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config::default();
        config.server.max_body_bytes = MAX_BODY;
        let time = Arc::new(ManualTime::new(BUILT + 100));
        let active = Active::build(bundle, &config, 0, Arc::clone(&time) as Arc<dyn TimeSource>, None)
            .expect("builds");
        Fx { active, time, idp, apim, jti: AtomicU64::new(0) }
    }

    impl Fx {
        fn now(&self) -> u64 {
            self.time.unix_now()
        }

        fn sign(&self, key: &SigningKey, claims: Map<String, Value>) -> String {
            token::mint::sign(key, &crate::keys::jwk_thumbprint(&key.verifying_key()), &claims)
                .expect("signs")
        }

        /// A token from the IdP, subscribed to every API, Unlimited tiers; `edit` adjusts it.
        fn token(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
            let now = self.now();
            let sub = |name: &str| json!({"name": name, "version": "1.0.0", "subscriptionTier": "Unlimited"});
            let mut c = json!({
                "iss": IDP, "sub": "alice", "aud": "gatelet", "iat": now, "exp": now + 600,
                "jti": format!("t-{}", self.jti.fetch_add(1, Ordering::Relaxed)), "keytype": "PRODUCTION",
                "application": {"id": "app-1", "name": "App", "tier": "Unlimited"},
                "subscribedAPIs": [sub("Shop"), sub("Tight"), sub("Secure")],
            })
            .as_object()
            .expect("object")
            .clone();
            edit(&mut c);
            self.sign(&self.idp, c)
        }

        /// A WSO2 API key from the API-key issuer for Shop; `edit` adjusts it.
        fn api_key(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
            let now = self.now();
            let mut c = json!({
                "iss": APIM, "sub": "bob", "iat": now, "exp": now + 600,
                "jti": format!("k-{}", self.jti.fetch_add(1, Ordering::Relaxed)), "keytype": "PRODUCTION",
                "token_type": "apiKey",
                "application": {"id": 7, "name": "KeyApp", "tier": "Unlimited"},
                "subscribedAPIs": [{"name": "Shop", "version": "1.0.0", "subscriptionTier": "Unlimited"}],
                "permittedIP": "", "permittedReferer": "",
            })
            .as_object()
            .expect("object")
            .clone();
            edit(&mut c);
            self.sign(&self.apim, c)
        }

        fn decide_on<'a>(&'a self, req: &Request<()>, tls: bool) -> Decision<'a> {
            let peer = Peer { addr: "192.0.2.10:5555".parse().expect("addr"), tls };
            decide(&self.active, Head::of(req), peer, self.active.now())
        }

        fn decide<'a>(&'a self, req: &Request<()>) -> Decision<'a> {
            self.decide_on(req, false)
        }
    }

    fn get(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        request("GET", uri, headers)
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri).header("host", "gw.test");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn refusal(d: Decision<'_>) -> Refusal {
        match d.verdict {
            Verdict::Refuse(r) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn forward<'r, 'a>(d: &'r Decision<'a>) -> &'r Forward<'a> {
        match &d.verdict {
            Verdict::Forward(f) => f,
            other => panic!("not forwarded: {other:?}"),
        }
    }

    fn token_error(d: Decision<'_>) -> TokenError {
        match refusal(d) {
            Refusal::Token(e) => e,
            other => panic!("not a token refusal: {other:?}"),
        }
    }

    fn throttled_at(d: Decision<'_>) -> Level {
        match refusal(d) {
            Refusal::Throttled(t) => t.level,
            other => panic!("not throttled: {other:?}"),
        }
    }

    #[test]
    fn a_bad_path_or_host_is_refused_before_routing() {
        let f = fx("bad");
        let d = f.decide(&get("/shop/1.0.0/items/a;b", &[]));
        assert!(d.routed.is_none());
        assert!(matches!(refusal(d), Refusal::BadPath(_)));
        let no_host = Request::builder().uri("/shop/1.0.0/items/1").body(()).expect("request");
        assert!(matches!(refusal(f.decide(&no_host)), Refusal::BadHost(HostError::Missing)));
        let two = get("/shop/1.0.0/items/1", &[("host", "other.test")]);
        assert!(matches!(refusal(f.decide(&two)), Refusal::BadHost(HostError::Repeated)));
    }

    #[test]
    fn routing_refusals() {
        let f = fx("route");
        let d = f.decide(&get("/nowhere", &[]));
        assert_eq!(d.resource, "/nowhere");
        assert!(matches!(refusal(d), Refusal::NotFound));
        match refusal(f.decide(&request("DELETE", "/shop/1.0.0/items", &[]))) {
            Refusal::MethodNotAllowed(allowed) => assert_eq!(allowed, vec!["POST"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_token_fault_class() {
        let f = fx("token");
        let items = "/shop/1.0.0/items/1";
        let e = token_error(f.decide(&get(items, &[])));
        assert_eq!((e.http_status(), e.fault_code()), (401, 900_902), "missing");

        let good = f.token(|_| {});
        let (body, sig) = good.rsplit_once('.').expect("jws");
        let forged = format!("{body}.{}{}", if sig.starts_with('A') { "B" } else { "A" }, &sig[1..]);
        let e = token_error(f.decide(&get(items, &[("authorization", &bearer(&forged))])));
        assert_eq!((e.http_status(), e.fault_code(), e.reason()), (401, 900_901, "bad_signature"));

        // Expiry is read on the injected clock: the same token, ten minutes and a bit later.
        let short = f.token(|c| c["exp"] = json!(f.now() + 60));
        assert!(matches!(
            f.decide(&get(items, &[("authorization", &bearer(&short))])).verdict,
            Verdict::Forward(_)
        ));
        f.time.advance(120);
        let e = token_error(f.decide(&get(items, &[("authorization", &bearer(&short))])));
        assert_eq!((e.http_status(), e.fault_code(), e.reason()), (401, 900_903, "expired"));

        let unsubscribed = f.token(|c| c["subscribedAPIs"] = json!([]));
        let e = token_error(f.decide(&get(items, &[("authorization", &bearer(&unsubscribed))])));
        assert_eq!((e.http_status(), e.fault_code(), e.reason()), (403, 900_908, "not_subscribed"));

        let d = f.decide(&get("/shop/1.0.0/admin", &[("authorization", &bearer(&good))]));
        assert_eq!(d.resource, "/admin", "the usage record names the operation even when refused");
        let e = token_error(d);
        assert_eq!((e.http_status(), e.fault_code(), e.reason()), (403, 900_910, "missing_scope"));
        let admin = f.token(|c| {
            c.insert("scope".into(), json!("shop:admin"));
        });
        assert!(matches!(
            f.decide(&get("/shop/1.0.0/admin", &[("authorization", &bearer(&admin))])).verdict,
            Verdict::Forward(_)
        ));
    }

    #[test]
    fn api_keys() {
        let f = fx("keys");
        let key = f.api_key(|_| {});
        let d = f.decide(&get("/shop/1.0.0/items/1", &[("x-api-key", &key)]));
        assert_eq!(forward(&d).credential, Credential::ApiKey(key.clone()));
        assert_eq!(d.principal.as_ref().map(|p| p.token().subject.as_str()), Some("bob"));

        // From the query: accepted, and the parameter never reaches the backend.
        let d = f.decide(&get(&format!("/shop/1.0.0/items/1?a=1&api_key={key}&b=2"), &[]));
        assert_eq!(forward(&d).query, "?a=1&b=2");
        let d = f.decide(&get(&format!("/shop/1.0.0/items/1?api_key={key}"), &[]));
        assert_eq!(forward(&d).query, "", "nothing left: no '?' either");

        // An API key is not a bearer token, nor a bearer token an API key.
        let e = token_error(f.decide(&get("/shop/1.0.0/items/1", &[("authorization", &bearer(&key))])));
        assert_eq!(e.reason(), "api_key_as_bearer");
        let token = f.token(|_| {});
        let e = token_error(f.decide(&get("/shop/1.0.0/items/1", &[("x-api-key", &token)])));
        assert_eq!(e.reason(), "not_an_api_key");
        // An operation that takes bearer tokens only ignores an API key.
        let e = token_error(f.decide(&get("/shop/1.0.0/admin", &[("x-api-key", &key)])));
        assert_eq!(e.reason(), "missing_token");

        // permittedIP is met by the TCP peer (no trusted proxy here).
        let elsewhere = f.api_key(|c| c["permittedIP"] = json!("10.0.0.1"));
        let e = token_error(f.decide(&get("/shop/1.0.0/items/1", &[("x-api-key", &elsewhere)])));
        assert_eq!((e.http_status(), e.reason()), (403, "ip_not_permitted"));
        let here = f.api_key(|c| c["permittedIP"] = json!("192.0.2.10"));
        assert!(matches!(
            f.decide(&get("/shop/1.0.0/items/1", &[("x-api-key", &here)])).verdict,
            Verdict::Forward(_)
        ));
    }

    #[test]
    fn throttled_at_each_level_and_released_by_the_clock() {
        let f = fx("throttle");
        let twice = |path: &str, token: &str| {
            let auth = bearer(token);
            let headers: &[(&str, &str)] = if token.is_empty() { &[] } else { &[("authorization", &auth)] };
            assert!(matches!(f.decide(&get(path, headers)).verdict, Verdict::Forward(_)), "first {path}");
            throttled_at(f.decide(&get(path, headers)))
        };
        let t = f.token(|_| {});
        assert_eq!(twice("/tight/x", &t), Level::Api);
        assert_eq!(twice("/shop/1.0.0/limited", &t), Level::Resource);
        let sub = f.token(|c| {
            c["sub"] = json!("sub-user");
            c["subscribedAPIs"] = json!([{"name": "Shop", "version": "1.0.0", "subscriptionTier": "OneSub"}]);
        });
        assert_eq!(twice("/shop/1.0.0/items/1", &sub), Level::Subscription);
        let app = f.token(|c| c["application"] = json!({"id": "app-2", "name": "A2", "tier": "OneApp"}));
        assert_eq!(twice("/shop/1.0.0/items/2", &app), Level::Application);
        assert_eq!(twice("/shop/1.0.0/open", ""), Level::Unauthenticated);

        // The window is read on the injected clock: a minute later the API level admits again.
        assert_eq!(throttled_at(f.decide(&get("/tight/x", &[("authorization", &bearer(&t))]))), Level::Api);
        f.time.advance(60);
        let t = f.token(|_| {});
        assert!(matches!(
            f.decide(&get("/tight/x", &[("authorization", &bearer(&t))])).verdict,
            Verdict::Forward(_)
        ));

        // A tier the bundle does not define is a configuration fault, never a pass.
        let unknown = f.token(|c| c["application"] = json!({"id": "app-3", "name": "A3", "tier": "Nope"}));
        let d = f.decide(&get("/shop/1.0.0/items/3", &[("authorization", &bearer(&unknown))]));
        assert!(matches!(refusal(d), Refusal::ThrottleFailed(_)));
    }

    #[test]
    fn https_only_apis_and_endpoints_by_key_type() {
        let f = fx("https");
        let t = f.token(|_| {});
        let auth = bearer(&t);
        let d = f.decide(&get("/secure/x", &[("authorization", &auth)]));
        assert_eq!(d.routed.map(|r| r.api.name.as_str()), Some("Secure"));
        assert!(d.principal.is_none(), "refused before the credentials are looked at");
        assert!(matches!(refusal(d), Refusal::HttpsRequired));
        // Even the 405 of an HTTPS-only API is not given over HTTP.
        assert!(matches!(refusal(f.decide(&request("POST", "/secure/x", &[]))), Refusal::HttpsRequired));
        assert!(matches!(
            f.decide_on(&get("/secure/x", &[("authorization", &auth)]), true).verdict,
            Verdict::Forward(_)
        ));

        // Secure has no sandbox endpoints.
        let sandbox = f.token(|c| c["keytype"] = json!("SANDBOX"));
        let d = f.decide_on(&get("/secure/x", &[("authorization", &bearer(&sandbox))]), true);
        assert!(matches!(refusal(d), Refusal::NoEndpointForKeyType(KeyType::Sandbox)));

        // Shop has both: production and sandbox tokens go to their own.
        let d = f.decide(&get("/shop/1.0.0/items/9?x=1", &[("authorization", &auth)]));
        let fw = forward(&d);
        assert_eq!(fw.endpoints.urls[0].as_str(), "http://prod.test:8080/base?fixed=1");
        assert_eq!(
            (fw.path.as_str(), fw.query.as_str(), fw.key_type),
            ("/items/9", "?x=1", KeyType::Production)
        );
        let d = f.decide(&get("/shop/1.0.0/items/9", &[("authorization", &bearer(&sandbox))]));
        assert_eq!(forward(&d).endpoints.urls[0].as_str(), "http://sandbox.test/sb");
    }

    #[test]
    fn cors_preflight_and_cors_on_answers() {
        let f = fx("cors");
        let preflight = request(
            "OPTIONS",
            "/shop/1.0.0/items",
            &[("origin", "https://app.example"), ("access-control-request-method", "POST")],
        );
        let d = f.decide(&preflight);
        assert!(d.principal.is_none(), "a preflight needs no credentials");
        let Verdict::Preflight(h) = d.verdict else { panic!("not a preflight: {:?}", d.verdict) };
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-methods"], "GET, POST");
        assert_eq!(h["access-control-allow-credentials"], "true");
        // A method the resource does not have is no preflight: routed as OPTIONS, which it lacks.
        let other = request(
            "OPTIONS",
            "/shop/1.0.0/items",
            &[("origin", "https://app.example"), ("access-control-request-method", "PUT")],
        );
        assert!(matches!(refusal(f.decide(&other)), Refusal::MethodNotAllowed(_)));
        // A refusal of an API with CORS carries its headers, so the browser app can read it.
        let d = f.decide(&get("/shop/1.0.0/items/1", &[("origin", "https://app.example")]));
        assert_eq!(
            d.cors.as_ref().map(|h| h["access-control-allow-origin"].clone()),
            Some(HeaderValue::from_static("https://app.example"))
        );
        assert!(matches!(refusal(d), Refusal::Token(TokenError::Missing)));
    }

    #[test]
    fn a_declared_body_over_the_limit() {
        let f = fx("body");
        let t = f.token(|_| {});
        let big = (MAX_BODY + 1).to_string();
        let req =
            request("POST", "/shop/1.0.0/items", &[("authorization", &bearer(&t)), ("content-length", &big)]);
        assert!(matches!(refusal(f.decide(&req)), Refusal::BodyTooLarge));
        let fits = MAX_BODY.to_string();
        let req = request(
            "POST",
            "/shop/1.0.0/items",
            &[("authorization", &bearer(&t)), ("content-length", &fits)],
        );
        assert!(matches!(f.decide(&req).verdict, Verdict::Forward(_)));
    }

    fn backend_parts(f: &Fx, req: Request<()>, mode: BackendJwtMode) -> Parts {
        let jwt =
            BackendJwt::new(&BackendJwtConfig { mode, ..BackendJwtConfig::default() }).expect("backend jwt");
        let d = f.decide(&req);
        let fw = forward(&d);
        let (mut parts, ()) = req.clone_head().into_parts();
        let peer = Peer { addr: "192.0.2.10:5555".parse().expect("addr"), tls: false };
        backend_head(&mut parts, &f.active, &jwt, &d, fw, peer, "req-1");
        parts
    }

    trait CloneHead {
        fn clone_head(&self) -> Request<()>;
    }

    impl CloneHead for Request<()> {
        fn clone_head(&self) -> Request<()> {
            let mut r = Request::new(());
            *r.method_mut() = self.method().clone();
            *r.uri_mut() = self.uri().clone();
            *r.version_mut() = self.version();
            *r.headers_mut() = self.headers().clone();
            r
        }
    }

    #[test]
    fn the_backend_never_sees_headers_gatelet_owns() {
        let f = fx("strip");
        let t = f.token(|_| {});
        let req = get(
            "/shop/1.0.0/items/1",
            &[
                ("authorization", &bearer(&t)),
                ("x-jwt-assertion", "forged"),
                ("x_jwt_assertion", "forged"),
                ("x-forwarded-for", "10.9.9.9"),
                ("x-real-ip", "10.9.9.9"),
                ("x-request-id", "mine"),
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "hop"),
                ("te", "trailers"),
                ("x-kept", "yes"),
            ],
        );
        let p = backend_parts(&f, req, BackendJwtMode::None);
        let h = &p.headers;
        for gone in ["authorization", "x-jwt-assertion", "x_jwt_assertion", "connection", "x-secret", "te"] {
            assert!(h.get(gone).is_none(), "{gone} reached the backend: {h:?}");
        }
        assert_eq!(h["x-forwarded-for"], "192.0.2.10", "the peer, not what the client claimed");
        assert_eq!(h["x-real-ip"], "192.0.2.10");
        assert_eq!(h["x-request-id"], "req-1");
        assert_eq!(h["x-forwarded-host"], "gw.test");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(p.version, Version::HTTP_11);

        // An API key header is the caller's credential: removed too.
        let key = f.api_key(|_| {});
        let p = backend_parts(
            &f,
            get("/shop/1.0.0/items/1", &[("x-api-key", &key), ("x_api_key", "x")]),
            BackendJwtMode::Forward,
        );
        assert!(
            p.headers.get("x-api-key").is_none() && p.headers.get("x_api_key").is_none(),
            "{:?}",
            p.headers
        );
    }

    #[test]
    fn backend_jwt_modes() {
        let f = fx("jwt");
        let t = f.token(|_| {});
        let with_token = || get("/shop/1.0.0/items/1", &[("authorization", &bearer(&t))]);
        let p = backend_parts(&f, with_token(), BackendJwtMode::Forward);
        assert_eq!(p.headers["x-jwt-assertion"], t.as_str(), "forward: the caller's token as presented");
        let p = backend_parts(&f, with_token(), BackendJwtMode::None);
        assert!(p.headers.get("x-jwt-assertion").is_none());
        // An API key is never forwarded as it came.
        let key = f.api_key(|_| {});
        let p =
            backend_parts(&f, get("/shop/1.0.0/items/1", &[("x-api-key", &key)]), BackendJwtMode::Forward);
        assert!(p.headers.get("x-jwt-assertion").is_none(), "{:?}", p.headers);
        // No caller, nothing to assert.
        let p = backend_parts(
            &f,
            get("/shop/1.0.0/open", &[("x-jwt-assertion", "forged")]),
            BackendJwtMode::Forward,
        );
        assert!(p.headers.get("x-jwt-assertion").is_none());
    }
}
