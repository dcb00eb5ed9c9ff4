//! What a bundle says: the manifest carried, postcard-encoded, in the signed payload.
//!
//! Field order is the wire order (postcard has no field names): changing it is a format change
//! (see `bundle-format/SPEC.md`, "Evolution"). [`Manifest::check`] holds every semantic rule a
//! bundle must meet; the builder calls it before signing and the reader after decoding, so a
//! bundle that verifies is one the data plane can run without a surprise.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::url::HttpUrl;

/// Most APIs in one bundle.
pub const MAX_APIS: usize = 4096;
/// Most operations in one API.
pub const MAX_OPERATIONS: usize = 1024;
/// Most issuers in one bundle.
pub const MAX_ISSUERS: usize = 64;
/// Most keys for one issuer (a rotation overlap needs two or three).
pub const MAX_ISSUER_KEYS: usize = 16;
/// Most throttling policies in one bundle.
pub const MAX_POLICIES: usize = 1024;
/// Most revoked token ids in one bundle.
pub const MAX_REVOKED: usize = 100_000;
/// Most URLs in one endpoint list.
pub const MAX_ENDPOINT_URLS: usize = 16;
/// Longest string anywhere in a manifest (URLs, names, paths).
pub const MAX_STRING: usize = 2048;
/// Longest throttling window: a day, the largest unit WSO2 policies use.
pub const MAX_WINDOW_S: u32 = 86_400;

/// The tier name that means "no check" at every level.
pub const UNLIMITED: &str = "Unlimited";

/// The signed content of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Free-form name of the deployment (`label` in the project's gatelet.toml).
    pub label: String,
    /// Anti-rollback serial: a device refuses a lower one.
    pub serial: u64,
    /// Unix seconds when the project was built; evidence for the device's clock floor.
    pub created_at: u64,
    pub issuers: Vec<Issuer>,
    pub policies: Vec<Policy>,
    pub apis: Vec<Api>,
    /// Token ids (`jti`) refused whatever their signature.
    pub revoked_jti: Vec<String>,
    /// How the builder read several scopes in one security requirement. Already applied to every
    /// [`Operation::scopes`]; carried so that `bundle inspect` can say which reading built it.
    pub scope_rule: ScopeRule,
    /// The subscription tier of a caller whose token names no subscription tier for the API
    /// (issuers that do not validate subscriptions; API Manager 3.2+ and Keycloak tokens carry
    /// no `subscribedAPIs`). A [`PolicyLevel::Subscription`] policy or [`UNLIMITED`]; `None`: no
    /// subscription-level check for such callers.
    pub default_subscription_tier: Option<String>,
}

/// How several scopes listed in one OpenAPI security requirement combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScopeRule {
    /// WSO2's reading: any one of the listed scopes is enough.
    #[default]
    AnyOf,
    /// OpenAPI's reading: every listed scope is needed.
    AllOf,
}

impl ScopeRule {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeRule::AnyOf => "any-of",
            ScopeRule::AllOf => "all-of",
        }
    }
}

/// A token issuer trusted by the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuer {
    /// Short name used in the project and in metrics.
    pub name: String,
    /// The exact `iss` claim value.
    pub issuer: String,
    /// When set, `aud` must contain it.
    pub audience: Option<String>,
    pub keys: Vec<IssuerKey>,
    /// When true, a token must list the API in `subscribedAPIs`.
    pub validate_subscription: bool,
    /// Algorithms the issuer's tokens may use; empty: any the key's type allows.
    pub algorithms: Vec<JwsAlg>,
    /// Its JWTs are accepted as bearer tokens (`Authorization` or the API's token header).
    pub tokens: bool,
    /// Its JWTs are accepted as WSO2 API keys (from an API's `apiKey` scheme locations).
    pub api_keys: bool,
}

/// One public key of an issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerKey {
    /// The JWKS `kid`, or the key's RFC 7638 thumbprint when it came from a PEM file.
    pub kid: String,
    pub key: PublicKey,
    /// The one algorithm this key verifies, when its JWK names one (`alg`).
    pub alg: Option<JwsAlg>,
    /// SHA-1 of the DER certificate the key came from (a token's `x5t`).
    pub x5t: Option<[u8; 20]>,
    /// SHA-256 of the DER certificate the key came from (a token's `x5t#S256`).
    pub x5t_s256: Option<[u8; 32]>,
}

impl IssuerKey {
    /// An Ed25519 key from a PEM file or an OKP JWK, with no algorithm pin or certificate.
    pub fn ed25519(kid: String, raw: [u8; 32]) -> IssuerKey {
        IssuerKey { kid, key: PublicKey::Ed25519(raw), alg: None, x5t: None, x5t_s256: None }
    }
}

/// A verification key. The variant decides which algorithms it can ever verify: an RSA key only
/// RS*/PS*, an EC key only the ES* of its own curve, an Ed25519 key only EdDSA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublicKey {
    /// The raw 32-byte RFC 8032 public key.
    Ed25519([u8; 32]),
    /// DER SubjectPublicKeyInfo of an RSA key of at least [`MIN_RSA_BITS`] bits.
    Rsa(Vec<u8>),
    /// DER SubjectPublicKeyInfo of a P-256 key.
    EcP256(Vec<u8>),
    /// DER SubjectPublicKeyInfo of a P-384 key.
    EcP384(Vec<u8>),
}

impl PublicKey {
    /// `kty`/curve as JOSE names it, for messages and `bundle inspect`.
    pub fn kind(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "Ed25519",
            PublicKey::Rsa(_) => "RSA",
            PublicKey::EcP256(_) => "P-256",
            PublicKey::EcP384(_) => "P-384",
        }
    }

    /// Whether this key may verify a token signed with `alg`.
    pub fn allows(&self, alg: JwsAlg) -> bool {
        use JwsAlg::*;
        matches!(
            (self, alg),
            (PublicKey::Ed25519(_), EdDsa)
                | (PublicKey::Rsa(_), Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512)
                | (PublicKey::EcP256(_), Es256)
                | (PublicKey::EcP384(_), Es384)
        )
    }
}

/// Smallest RSA modulus accepted for a token key.
pub const MIN_RSA_BITS: u32 = 2048;
/// Largest RSA modulus accepted (verification cost grows with it; 8192 is far beyond any IdP).
pub const MAX_RSA_BITS: u32 = 8192;
/// Longest DER public key kept (an 8192-bit RSA SPKI is about 1 KiB).
pub const MAX_KEY_DER: usize = 1100;

/// The JWS algorithms gatelet verifies. `none` and `HS*` have no variant: they can never be
/// named, pinned or accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwsAlg {
    /// `EdDSA` (RFC 8037) or `Ed25519` (RFC 9864), with an Ed25519 key.
    EdDsa,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
}

impl JwsAlg {
    pub const ALL: [JwsAlg; 9] = [
        JwsAlg::EdDsa,
        JwsAlg::Rs256,
        JwsAlg::Rs384,
        JwsAlg::Rs512,
        JwsAlg::Ps256,
        JwsAlg::Ps384,
        JwsAlg::Ps512,
        JwsAlg::Es256,
        JwsAlg::Es384,
    ];

    /// The JOSE name (`alg`).
    pub fn as_str(self) -> &'static str {
        match self {
            JwsAlg::EdDsa => "EdDSA",
            JwsAlg::Rs256 => "RS256",
            JwsAlg::Rs384 => "RS384",
            JwsAlg::Rs512 => "RS512",
            JwsAlg::Ps256 => "PS256",
            JwsAlg::Ps384 => "PS384",
            JwsAlg::Ps512 => "PS512",
            JwsAlg::Es256 => "ES256",
            JwsAlg::Es384 => "ES384",
        }
    }

    /// From a JOSE `alg` value (exact, case-sensitive as RFC 7515 says). `Ed25519` is RFC 9864's
    /// name for the same check as `EdDSA` with an Ed25519 key.
    pub fn parse(s: &str) -> Option<JwsAlg> {
        if s == "Ed25519" {
            return Some(JwsAlg::EdDsa);
        }
        JwsAlg::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The throttling level a policy belongs to. Resource-level tiers use [`PolicyLevel::Api`]
/// policies, as WSO2's resource policies serve both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyLevel {
    Api,
    Application,
    Subscription,
}

impl PolicyLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyLevel::Api => "api",
            PolicyLevel::Application => "application",
            PolicyLevel::Subscription => "subscription",
        }
    }
}

/// A named limit: `requests` per `window_s` seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub level: PolicyLevel,
    pub name: String,
    pub requests: u64,
    pub window_s: u32,
    /// When false, requests over quota pass and are marked in the usage record.
    pub stop_on_quota_reach: bool,
}

/// One API: a context and its operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Api {
    pub name: String,
    pub version: String,
    /// The base path the gateway serves it under, e.g. `/pizzashack/1.0.0`.
    pub context: String,
    /// API-level tier (an [`PolicyLevel::Api`] policy or [`UNLIMITED`]).
    pub tier: Option<String>,
    pub disable_security: bool,
    /// Lower-case header carrying the token, when not `authorization`.
    pub auth_header: Option<String>,
    pub production: Option<Endpoints>,
    pub sandbox: Option<Endpoints>,
    pub cors: Option<Cors>,
    pub operations: Vec<Operation>,
    /// `x-wso2-transports` without `http`: the API is never served over plain HTTP.
    pub https_only: bool,
    /// Where an API key may be presented (the API's `apiKey` security schemes).
    pub api_key_locations: Vec<ApiKeyLocation>,
}

/// Where an `apiKey` security scheme reads its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyLocation {
    /// `in: query` (true) or `in: header` (false).
    pub query: bool,
    /// The parameter or header name; a header name is lower case.
    pub name: String,
}

/// HTTP methods an operation may declare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    #[default]
    Get,
    Put,
    Post,
    Delete,
    Options,
    Head,
    Patch,
    Trace,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::Get,
        Method::Put,
        Method::Post,
        Method::Delete,
        Method::Options,
        Method::Head,
        Method::Patch,
        Method::Trace,
    ];

    /// The upper-case token used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Head => "HEAD",
            Method::Patch => "PATCH",
            Method::Trace => "TRACE",
        }
    }

    /// From an OpenAPI path-item key (lower case) or a request line (upper case).
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(s))
    }
}

/// One operation of an API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub method: Method,
    /// Path template relative to the context, e.g. `/menu/{id}`.
    pub path: String,
    /// Resource-level tier (an [`PolicyLevel::Api`] policy or [`UNLIMITED`]).
    pub tier: Option<String>,
    pub disable_security: bool,
    /// What a bearer JWT must hold: it passes when it holds every scope of at least one inner
    /// list. Empty: any valid token, no scope needed.
    ///
    /// Every alternative here is a JWT's. An inner list is never empty ([`Manifest::check`]
    /// refuses it): "no scope" is only ever said by the empty outer list, so a requirement for
    /// a credential gatelet does not check (an API key, HTTP basic), which "needs no scope",
    /// cannot be encoded as one a JWT meets. The builder drops such requirements.
    pub scopes: Vec<Vec<String>>,
    /// Operation-level endpoints override the API's.
    pub production: Option<Endpoints>,
    pub sandbox: Option<Endpoints>,
    /// A bearer JWT (meeting [`Operation::scopes`]) is accepted.
    pub bearer: bool,
    /// An API key from one of the API's [`Api::api_key_locations`] is accepted.
    pub api_key: bool,
}

/// How several endpoint URLs are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointKind {
    /// One URL.
    #[default]
    Single,
    /// The first URL that answers.
    Failover,
    /// Round robin.
    LoadBalance,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Single => "single",
            EndpointKind::Failover => "failover",
            EndpointKind::LoadBalance => "load_balance",
        }
    }
}

/// A backend endpoint list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub kind: EndpointKind,
    /// Parsed as the bundle decodes (serialised as written).
    pub urls: Vec<HttpUrl>,
    /// Backend response deadline for this list (`advanceEndpointConfig.timeoutInMillis`);
    /// `None`: the device's `upstream.response_timeout_ms`.
    pub timeout_ms: Option<u32>,
    /// Extra attempts for a request that was never sent (the connection failed), on the next URL
    /// of the list (`advanceEndpointConfig.retryConfig.count`). A request that reached a backend
    /// is never sent twice.
    pub retries: u8,
    /// HTTP basic credentials sent to the backend (`securityConfig`).
    pub basic_auth: Option<BasicAuth>,
}

/// Credentials for a backend. The password is in the signed bundle in clear (bundles are
/// integrity-protected, not encrypted): `bundle inspect` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth").field("username", &self.username).field("password", &"(hidden)").finish()
    }
}

/// Most retries an endpoint list may ask for.
pub const MAX_RETRIES: u8 = 8;
/// Longest per-endpoint timeout: 10 minutes.
pub const MAX_ENDPOINT_TIMEOUT_MS: u32 = 600_000;

/// `x-wso2-cors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    pub allow_headers: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_credentials: bool,
    /// `Access-Control-Expose-Headers` on actual (not preflight) responses.
    pub expose_headers: Vec<String>,
}

/// A manifest rule the content breaks. The fault is the bundle's author (or its builder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! invalid {
    ($($arg:tt)*) => { return Err(Invalid(format!($($arg)*))) };
}

fn check_str(what: &str, s: &str) -> Result<(), Invalid> {
    if s.len() > MAX_STRING {
        invalid!("{what}: longer than {MAX_STRING} bytes");
    }
    if s.chars().any(char::is_control) {
        invalid!("{what}: contains control characters");
    }
    Ok(())
}

fn check_nonempty(what: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty() {
        invalid!("{what}: empty");
    }
    check_str(what, s)
}

/// A context: `/` followed by non-empty segments, no dot segments, no trailing slash, only
/// characters that need no percent-encoding.
pub fn check_context(context: &str) -> Result<(), String> {
    check_path_like(context, false)
}

/// An operation path template: like a context, and `{name}` segments for parameters; `/` alone
/// is the API root.
pub fn check_path_template(path: &str) -> Result<(), String> {
    if path == "/" {
        return Ok(());
    }
    check_path_like(path, true)
}

fn check_path_like(path: &str, templates: bool) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} does not start with '/'"));
    };
    if path.len() > MAX_STRING {
        return Err(format!("longer than {MAX_STRING} bytes"));
    }
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(format!("{path:?} has an empty segment or a trailing '/'"));
        }
        if seg == "." || seg == ".." {
            return Err(format!("{path:?} has a dot segment"));
        }
        let literal_ok =
            |l: &str| l.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,:@=".contains(&b));
        if templates && (seg.contains('{') || seg.contains('}')) {
            // `{id}`, or parameters inside a segment as OpenAPI allows (`test.{id}`,
            // `{name}.{ext}`), with a literal between any two parameters.
            let parts = template_parts(seg).map_err(|why| format!("{path:?}: segment {seg:?}: {why}"))?;
            for part in &parts {
                if let TemplatePart::Literal(l) = part {
                    if !literal_ok(l) {
                        return Err(format!(
                            "{path:?}: segment {seg:?} has characters that need percent-encoding"
                        ));
                    }
                }
            }
            continue;
        }
        // `;` is refused in request paths (path parameters), so a template cannot hold one.
        let ok = seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b));
        if !ok {
            return Err(format!("{path:?}: segment {seg:?} has characters that need percent-encoding"));
        }
    }
    Ok(())
}

/// One part of a path-template segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// `{name}`: one or more characters of the request's segment.
    Param,
}

/// Most parameters in one segment (`{a}.{b}.{c}.{d}`).
pub const MAX_PARAMS_PER_SEGMENT: usize = 4;

/// The parts of one template segment: literals and `{name}` parameters, never two parameters
/// side by side (where one ends would be anyone's guess).
pub fn template_parts(seg: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = seg;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(TemplatePart::Literal(rest.to_owned()));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b'}' => return Err("a '}' without its '{'".into()),
            Some(i) => {
                if i > 0 {
                    parts.push(TemplatePart::Literal(rest[..i].to_owned()));
                }
                let after = &rest[i + 1..];
                let end = after.find('}').ok_or("a '{' without its '}'")?;
                let name = &after[..end];
                if name.is_empty()
                    || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
                {
                    return Err(format!("parameter name {name:?}: use letters, digits, '_', '-' or '.'"));
                }
                if matches!(parts.last(), Some(TemplatePart::Param)) {
                    return Err("two parameters with nothing between them".into());
                }
                parts.push(TemplatePart::Param);
                rest = &after[end + 1..];
            }
        }
    }
    if parts.iter().filter(|p| **p == TemplatePart::Param).count() > MAX_PARAMS_PER_SEGMENT {
        return Err(format!("more than {MAX_PARAMS_PER_SEGMENT} parameters"));
    }
    Ok(parts)
}

/// A template path with every parameter name blanked (`/a/{}.{}`): two templates with the same
/// shape match the same requests.
pub fn template_shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            c if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

fn check_endpoints(what: &str, ep: &Endpoints) -> Result<(), Invalid> {
    if ep.urls.is_empty() {
        invalid!("{what}: no URLs");
    }
    if ep.urls.len() > MAX_ENDPOINT_URLS {
        invalid!("{what}: more than {MAX_ENDPOINT_URLS} URLs");
    }
    if ep.kind == EndpointKind::Single && ep.urls.len() != 1 {
        invalid!("{what}: a single endpoint has exactly one URL");
    }
    for url in &ep.urls {
        check_str(what, url.as_str())?;
    }
    if ep.retries > MAX_RETRIES {
        invalid!("{what}: more than {MAX_RETRIES} retries");
    }
    if let Some(t) = ep.timeout_ms {
        if t == 0 || t > MAX_ENDPOINT_TIMEOUT_MS {
            invalid!("{what}: timeout must be 1 to {MAX_ENDPOINT_TIMEOUT_MS} ms");
        }
    }
    if let Some(b) = &ep.basic_auth {
        check_nonempty(&format!("{what}: basic auth user name"), &b.username)?;
        check_str(&format!("{what}: basic auth password"), &b.password)?;
        if b.username.contains(':') {
            invalid!("{what}: a basic auth user name cannot contain ':' (RFC 7617)");
        }
    }
    Ok(())
}

/// Most API key locations of one API.
pub const MAX_API_KEY_LOCATIONS: usize = 8;

/// A lower-case HTTP header name (RFC 9110 token characters, no upper case).
pub fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl PublicKey {
    /// The key is usable: an Ed25519 point not of small order, an RSA key of
    /// [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`] bits, or an EC key on the curve its variant names.
    pub fn check(&self) -> Result<(), String> {
        use openssl::nid::Nid;
        use openssl::pkey::{Id, PKey};
        let der = match self {
            PublicKey::Ed25519(raw) => {
                return match ed25519_dalek::VerifyingKey::from_bytes(raw) {
                    Ok(v) if !v.is_weak() => Ok(()),
                    _ => Err("not a usable Ed25519 public key".into()),
                };
            }
            PublicKey::Rsa(d) | PublicKey::EcP256(d) | PublicKey::EcP384(d) => d,
        };
        if der.len() > MAX_KEY_DER {
            return Err(format!("longer than {MAX_KEY_DER} bytes"));
        }
        let pkey = PKey::public_key_from_der(der).map_err(|_| "not a DER public key".to_owned())?;
        match self {
            PublicKey::Rsa(_) => {
                if pkey.id() != Id::RSA {
                    return Err("not an RSA key".into());
                }
                let bits = pkey.bits();
                if bits < MIN_RSA_BITS {
                    return Err(format!("RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"));
                }
                if bits > MAX_RSA_BITS {
                    return Err(format!("RSA key of {bits} bits; at most {MAX_RSA_BITS} are accepted"));
                }
                // e = 1 makes every padded digest its own signature (anyone could sign), an even e
                // is not an RSA exponent, and a huge e makes each verification as slow as a
                // private-key operation, at the choice of whoever sends a token.
                let rsa = pkey.rsa().map_err(|_| "not an RSA key".to_owned())?;
                let e = rsa.e();
                if !e.is_bit_set(0) || e.num_bits() < 2 || e.num_bits() > 32 {
                    return Err("RSA public exponent must be odd, at least 3 and below 2^32".into());
                }
                Ok(())
            }
            PublicKey::EcP256(_) | PublicKey::EcP384(_) => {
                let want =
                    if matches!(self, PublicKey::EcP256(_)) { Nid::X9_62_PRIME256V1 } else { Nid::SECP384R1 };
                let ec = pkey.ec_key().map_err(|_| "not an EC key".to_owned())?;
                if ec.group().curve_name() != Some(want) {
                    return Err(format!("not a {} key", self.kind()));
                }
                ec.check_key().map_err(|_| "not a valid point on its curve".to_owned())?;
                Ok(())
            }
            PublicKey::Ed25519(_) => Ok(()),
        }
    }
}

impl Manifest {
    /// Every semantic rule of a bundle; see `bundle-format/SPEC.md`, "Semantic checks".
    pub fn check(&self) -> Result<(), Invalid> {
        check_str("label", &self.label)?;
        if self.issuers.len() > MAX_ISSUERS {
            invalid!("more than {MAX_ISSUERS} issuers");
        }
        if self.policies.len() > MAX_POLICIES {
            invalid!("more than {MAX_POLICIES} policies");
        }
        if self.apis.len() > MAX_APIS {
            invalid!("more than {MAX_APIS} APIs");
        }
        if self.revoked_jti.len() > MAX_REVOKED {
            invalid!("more than {MAX_REVOKED} revoked token ids");
        }

        let mut names = HashSet::new();
        let mut iss = HashSet::new();
        for i in &self.issuers {
            let at = format!("issuer {:?}", i.name);
            check_nonempty(&at, &i.name)?;
            check_nonempty(&format!("{at}: issuer"), &i.issuer)?;
            if let Some(aud) = &i.audience {
                check_nonempty(&format!("{at}: audience"), aud)?;
            }
            if !names.insert(i.name.as_str()) {
                invalid!("{at}: duplicate issuer name");
            }
            if !iss.insert(i.issuer.as_str()) {
                invalid!("{at}: another issuer already has iss {:?}", i.issuer);
            }
            if i.keys.is_empty() {
                invalid!("{at}: no keys");
            }
            if i.keys.len() > MAX_ISSUER_KEYS {
                invalid!("{at}: more than {MAX_ISSUER_KEYS} keys");
            }
            let mut kids = HashSet::new();
            for k in &i.keys {
                check_nonempty(&format!("{at}: kid"), &k.kid)?;
                if !kids.insert(k.kid.as_str()) {
                    invalid!("{at}: duplicate kid {:?}", k.kid);
                }
                if let Err(why) = k.key.check() {
                    invalid!("{at}: key {:?}: {why}", k.kid);
                }
                if let Some(alg) = k.alg {
                    if !k.key.allows(alg) {
                        invalid!(
                            "{at}: key {:?} is {} and cannot verify {}",
                            k.kid,
                            k.key.kind(),
                            alg.as_str()
                        );
                    }
                }
            }
            if !i.tokens && !i.api_keys {
                invalid!("{at}: accepts neither tokens nor API keys");
            }
            let mut pinned = HashSet::new();
            for a in &i.algorithms {
                if !pinned.insert(*a) {
                    invalid!("{at}: algorithm {} listed twice", a.as_str());
                }
                if !i.keys.iter().any(|k| k.key.allows(*a) && k.alg.is_none_or(|ka| ka == *a)) {
                    invalid!(
                        "{at}: algorithm {} is allowed but no key of the issuer can verify it",
                        a.as_str()
                    );
                }
            }
        }

        let mut policies = HashSet::new();
        for p in &self.policies {
            let at = format!("{} policy {:?}", p.level.as_str(), p.name);
            check_nonempty(&at, &p.name)?;
            if p.name == UNLIMITED {
                invalid!("{at}: {UNLIMITED} is built in and cannot be defined");
            }
            if !policies.insert((p.level, p.name.as_str())) {
                invalid!("{at}: defined twice");
            }
            if p.requests == 0 {
                invalid!("{at}: requests must be at least 1");
            }
            if p.window_s == 0 || p.window_s > MAX_WINDOW_S {
                invalid!("{at}: window must be 1 to {MAX_WINDOW_S} seconds");
            }
        }
        let tier_ok = |t: &Option<String>| match t {
            None => true,
            Some(t) => t == UNLIMITED || policies.contains(&(PolicyLevel::Api, t.as_str())),
        };
        if let Some(t) = &self.default_subscription_tier {
            if t != UNLIMITED && !policies.contains(&(PolicyLevel::Subscription, t.as_str())) {
                invalid!("default subscription tier {t:?} is not a subscription policy");
            }
        }

        let mut contexts = HashSet::new();
        let mut names = HashSet::new();
        for api in &self.apis {
            let at = format!("API {:?} {:?}", api.name, api.version);
            check_nonempty(&at, &api.name)?;
            check_nonempty(&format!("{at}: version"), &api.version)?;
            if let Err(e) = check_context(&api.context) {
                invalid!("{at}: context {e}");
            }
            if !contexts.insert(api.context.as_str()) {
                invalid!("{at}: context {:?} is used by another API", api.context);
            }
            // Tokens name APIs by name and version (`subscribedAPIs`): two APIs sharing both would
            // let a subscription to one authorise the other.
            if !names.insert((api.name.as_str(), api.version.as_str())) {
                invalid!("{at}: another API has the same name and version");
            }
            if !tier_ok(&api.tier) {
                invalid!("{at}: unknown API tier {:?}", api.tier.as_deref().unwrap_or(""));
            }
            if let Some(h) = &api.auth_header {
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
                {
                    invalid!("{at}: auth header {h:?} is not a lower-case header name");
                }
            }
            for (kind, ep) in [("production", &api.production), ("sandbox", &api.sandbox)] {
                if let Some(ep) = ep {
                    check_endpoints(&format!("{at}: {kind} endpoints"), ep)?;
                }
            }
            if api.api_key_locations.len() > MAX_API_KEY_LOCATIONS {
                invalid!("{at}: more than {MAX_API_KEY_LOCATIONS} API key locations");
            }
            for loc in &api.api_key_locations {
                check_nonempty(&format!("{at}: API key parameter"), &loc.name)?;
                if !loc.query && !is_header_name(&loc.name) {
                    invalid!("{at}: API key header {:?} is not a lower-case header name", loc.name);
                }
            }
            if let Some(c) = &api.cors {
                for s in c
                    .allow_origins
                    .iter()
                    .chain(&c.allow_headers)
                    .chain(&c.allow_methods)
                    .chain(&c.expose_headers)
                {
                    check_str(&format!("{at}: cors"), s)?;
                }
            }
            if api.operations.is_empty() {
                invalid!("{at}: no operations");
            }
            if api.operations.len() > MAX_OPERATIONS {
                invalid!("{at}: more than {MAX_OPERATIONS} operations");
            }
            let mut ops = HashSet::new();
            for op in &api.operations {
                let oat = format!("{at}: {} {}", op.method.as_str(), op.path);
                if let Err(e) = check_path_template(&op.path) {
                    invalid!("{oat}: path {e}");
                }
                // Templates that differ only in parameter names (`/{id}` and `/{name}`) match the
                // same requests: one would silently shadow the other.
                let shape = template_shape(&op.path);
                if !ops.insert((op.method, shape)) {
                    invalid!("{oat}: declared twice (or as a template matching the same paths)");
                }
                if !tier_ok(&op.tier) {
                    invalid!("{oat}: unknown resource tier {:?}", op.tier.as_deref().unwrap_or(""));
                }
                if !op.disable_security && !api.disable_security {
                    if !op.bearer && !op.api_key {
                        invalid!(
                            "{oat}: accepts neither a token nor an API key (say disable_security for none)"
                        );
                    }
                    if op.api_key && api.api_key_locations.is_empty() {
                        invalid!("{oat}: accepts an API key but the API has no API key location");
                    }
                }
                if !op.bearer && !op.scopes.is_empty() {
                    invalid!("{oat}: scopes are for bearer tokens, which this operation does not accept");
                }
                for alt in &op.scopes {
                    if alt.is_empty() {
                        invalid!(
                            "{oat}: empty scope alternative (any token would meet it; say \"no scope\" with no alternatives)"
                        );
                    }
                    for s in alt {
                        check_nonempty(&format!("{oat}: scope"), s)?;
                        if s.contains(' ') {
                            invalid!("{oat}: scope {s:?} contains a space");
                        }
                    }
                }
                for (kind, ep) in [("production", &op.production), ("sandbox", &op.sandbox)] {
                    if let Some(ep) = ep {
                        check_endpoints(&format!("{oat}: {kind} endpoints"), ep)?;
                    }
                }
                let has_any = api.production.is_some()
                    || api.sandbox.is_some()
                    || op.production.is_some()
                    || op.sandbox.is_some();
                if !has_any {
                    invalid!("{oat}: no production or sandbox endpoint");
                }
            }
        }
        for j in &self.revoked_jti {
            check_nonempty("revoked jti", j)?;
        }
        Ok(())
    }

    /// Looks up a policy by level and name.
    pub fn policy(&self, level: PolicyLevel, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.level == level && p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_public_exponents() {
        use openssl::bn::BigNum;
        use openssl::rsa::Rsa;
        let n = Rsa::generate(2048).expect("key").n().to_owned().expect("n");
        let der = |e: BigNum| {
            let rsa = Rsa::from_public_components(n.to_owned().expect("n"), e).expect("rsa");
            openssl::pkey::PKey::from_rsa(rsa).expect("pkey").public_key_to_der().expect("der")
        };
        let e = |v: u64| BigNum::from_slice(&v.to_be_bytes()).expect("e");
        assert_eq!(PublicKey::Rsa(der(e(65537))).check(), Ok(()));
        assert_eq!(PublicKey::Rsa(der(e(3))).check(), Ok(()));
        for bad in [1, 4, 65536, (1 << 40) + 1] {
            let err = PublicKey::Rsa(der(e(bad))).check().expect_err("refused");
            assert!(err.contains("exponent"), "e = {bad}: {err}");
        }
    }

    #[test]
    fn paths() {
        for ok in ["/a", "/a/b", "/pizzashack/1.0.0", "/a:b"] {
            assert!(check_context(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "/", "/a/", "//a", "/a/../b", "/a/./b", "/a b", "/a?b", "/a%20"] {
            assert!(check_context(bad).is_err(), "{bad}");
        }
        for ok in [
            "/",
            "/menu",
            "/order/{orderId}",
            "/a/{x}/b",
            "/pet/test.{petId}",
            "/files/{name}.{ext}",
            "/order/x{id}",
        ] {
            assert!(check_path_template(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/order/{}",
            "/order/{id",
            "/order/id}",
            "/a//b",
            "/f/{a}{b}",
            "/f/{a}.{b}.{c}.{d}.{e}",
            "/a;b",
            "/f/{a b}",
        ] {
            assert!(check_path_template(bad).is_err(), "{bad}");
        }
        assert_eq!(template_shape("/files/{name}.{ext}/x/{id}"), "/files/{}.{}/x/{}");
    }
}
