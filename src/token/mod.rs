//! Self-contained tokens: local JWT validation (EdDSA, RS*, PS*, ES256/384) with the WSO2 claim
//! profile (PRODUCT.md section 4). Pure: a token string, a bundle's manifest and a time go in, a
//! [`Principal`] or a [`TokenError`] comes out; no sockets, no files.
//!
//! ```text
//! token ─► size ─► cache? ──hit──────────────────────────────► time rules ─┐
//!                    └─miss─► jws::parse (3 segments, base64url, header:   │
//!                             alg known, no crit, typ) ─► strict JSON      │
//!                             payload ─► iss → issuer ─► pin, kid/x5t →    │
//!                             key of a fitting type ─► verify (Ed25519:    │
//!                             verify_strict; RSA/EC: OpenSSL) ─► claims ─► │
//!                             revoked? ─► time ────────────────────────────┤
//!                                                          (cached) ◄──────┤
//!                                                                          ▼
//!                             authorize(api, op): subscription, scope ─► Principal
//! ```
//!
//! The split matters for the cache: [`Validator::verify`] does everything that depends only on
//! the token (and is cached per token), [`Validator::authorize`] what depends on the route, so one
//! cached token serves every API and operation it is used on.
//!
//! Use: build one [`Validator`] per verified bundle (a bundle swap builds a new one, with an
//! empty cache), read the time from a [`Clock`], then per request
//! [`Validator::validate`]`(token, api, op, clock.now().now)`. Map an error to the response with
//! [`TokenError::http_status`], [`TokenError::fault_code`] and [`TokenError::reason`].

pub mod api_key;
pub mod cache;
pub mod claims;
pub mod clock;
pub mod error;
pub mod json;
pub mod jws;
pub mod mint;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::bundle::Manifest;
use crate::bundle::model::{Api, JwsAlg, Operation, PublicKey};

pub use claims::{Application, KeyType, SubscribedApi, VerifiedToken};
pub use clock::{Clock, FloorOrigin, ManualTime, Reading, SystemTime, TimeSource};
pub use error::{Malformed, TokenError};
pub use mint::{MintRequest, mint};

/// `clock_skew_s` default (PRODUCT.md section 2), as Envoy's `clock_skew_seconds`.
pub const DEFAULT_CLOCK_SKEW_S: u64 = 60;
/// Cached tokens by default. Entries hold the claims (a few hundred bytes for a typical token,
/// at most about [`jws::MAX_TOKEN_LEN`]), so the worst case is about 9 MiB and the typical one
/// well under 1 MiB.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;
/// Keys tried for a token without `kid` (PRODUCT.md section 4). An issuer with more keys needs
/// tokens that name theirs: trying only some would make a valid token fail depending on the key
/// order, which is worse than a clear "kid required".
pub const MAX_KEYS_WITHOUT_KID: usize = 4;

/// How the validator behaves; from the device configuration's `[auth]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatorConfig {
    /// Tolerance for `exp`, `nbf` and `iat` between the issuer's clock and ours.
    pub clock_skew_s: u64,
    /// Verified tokens kept (rounded up to a multiple of [`cache::WAYS`] × a power of two);
    /// 0 turns the cache off.
    pub cache_capacity: usize,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        ValidatorConfig { clock_skew_s: DEFAULT_CLOCK_SKEW_S, cache_capacity: DEFAULT_CACHE_CAPACITY }
    }
}

#[derive(Debug)]
struct TrustedKey {
    kid: String,
    /// What the key's type allows, and its JWK `alg` when it names one.
    public: PublicKey,
    alg: Option<JwsAlg>,
    x5t: Option<[u8; 20]>,
    x5t_s256: Option<[u8; 32]>,
    /// Parsed once per bundle.
    key: jws::VerifyKey,
}

impl TrustedKey {
    /// The key may verify a token signed with `alg`: its type allows it (an RSA key never an EC
    /// or EdDSA token, an EC key only its own curve), and its JWK `alg`, if any, is `alg`.
    fn fits(&self, alg: JwsAlg) -> bool {
        self.public.allows(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

#[derive(Debug)]
struct TrustedIssuer {
    name: String,
    audience: Option<String>,
    validate_subscription: bool,
    /// The issuer's pin; empty: any algorithm its keys allow.
    algorithms: Vec<JwsAlg>,
    keys: Vec<TrustedKey>,
    tokens: bool,
    api_keys: bool,
}

impl TrustedIssuer {
    /// The keys to try for a token, by the header's key references: the key its `kid` names;
    /// else (no `kid`, or one that names no key: WSO2 API Manager 3.2+ writes a `kid` of its own
    /// making beside the certificate's `x5t`) the key whose certificate thumbprint the header
    /// carries; else, with no reference at all, every key that fits the algorithm, at most
    /// [`MAX_KEYS_WITHOUT_KID`] of them.
    fn candidates(&self, h: &jws::Jws<'_>) -> Result<Vec<&TrustedKey>, TokenError> {
        if !self.algorithms.is_empty() && !self.algorithms.contains(&h.alg) {
            return Err(TokenError::AlgNotPinned(h.alg));
        }
        let named = h.kid.as_deref().and_then(|kid| self.keys.iter().find(|k| k.kid == kid)).or_else(|| {
            self.keys.iter().find(|k| {
                (h.x5t.is_some() && k.x5t == h.x5t) || (h.x5t_s256.is_some() && k.x5t_s256 == h.x5t_s256)
            })
        });
        if let Some(k) = named {
            return if k.fits(h.alg) { Ok(vec![k]) } else { Err(TokenError::KeyAlgMismatch(h.alg)) };
        }
        if h.kid.is_some() || h.x5t.is_some() || h.x5t_s256.is_some() {
            return Err(TokenError::UnknownKid);
        }
        let fitting: Vec<&TrustedKey> = self.keys.iter().filter(|k| k.fits(h.alg)).collect();
        if fitting.is_empty() {
            return Err(TokenError::KeyAlgMismatch(h.alg));
        }
        if fitting.len() > MAX_KEYS_WITHOUT_KID {
            return Err(TokenError::KidRequired);
        }
        Ok(fitting)
    }
}

/// Everything needed to validate tokens against one bundle, prepared once: issuers by `iss`,
/// decompressed keys, the revoked set, and the cache of verified tokens.
#[derive(Debug)]
pub struct Validator {
    issuers: Vec<TrustedIssuer>,
    by_iss: HashMap<String, usize>,
    revoked: HashSet<String>,
    clock_skew_s: u64,
    cache: cache::Cache<VerifiedToken>,
    /// The manifest's `default_subscription_tier`.
    default_subscription_tier: Option<Arc<str>>,
}

/// An authenticated and authorised caller, for one request: the verified token (shared with the
/// cache) and the subscription entry that matched the API, if any.
#[derive(Debug, Clone)]
pub struct Principal {
    token: Arc<VerifiedToken>,
    subscription: Option<usize>,
    /// The bundle's default subscription tier, for a token that names none for the API.
    default_tier: Option<Arc<str>>,
}

impl Principal {
    /// The verified claims.
    pub fn token(&self) -> &VerifiedToken {
        &self.token
    }

    /// The `subscribedAPIs` entry for the API, when the token lists it.
    pub fn subscription(&self) -> Option<&SubscribedApi> {
        self.subscription.and_then(|i| self.token.subscribed_apis.get(i))
    }

    /// The subscription throttling tier: the one the token gives for the API, else the bundle's
    /// default subscription tier (tokens without `subscribedAPIs`, API Manager 3.2+ and Keycloak),
    /// else none.
    pub fn subscription_tier(&self) -> Option<&str> {
        self.subscription().and_then(|s| s.tier.as_deref()).or(self.default_tier.as_deref())
    }

    /// The application throttling tier, when the token gives one.
    pub fn application_tier(&self) -> Option<&str> {
        self.token.application.as_ref().and_then(|a| a.tier.as_deref())
    }
}

impl Validator {
    /// Prepares validation for `manifest`'s issuers and revoked list: each key is parsed once
    /// here (an Ed25519 point decompressed, an RSA or EC key made an OpenSSL key), never per
    /// request. Keys that do not parse are skipped with a warning ([`Manifest::check`] already
    /// refuses them); weak Ed25519 keys are kept and refused by `verify_strict` at every use.
    pub fn new(manifest: &Manifest, config: &ValidatorConfig) -> Validator {
        let mut issuers = Vec::with_capacity(manifest.issuers.len());
        let mut by_iss = HashMap::with_capacity(manifest.issuers.len());
        for i in &manifest.issuers {
            let keys = i
                .keys
                .iter()
                .filter_map(|k| match jws::VerifyKey::new(&k.key) {
                    Ok(key) => Some(TrustedKey {
                        kid: k.kid.clone(),
                        public: k.key.clone(),
                        alg: k.alg,
                        x5t: k.x5t,
                        x5t_s256: k.x5t_s256,
                        key,
                    }),
                    Err(why) => {
                        log::warn!("issuer {:?}: key {:?} skipped: {why}", i.name, k.kid);
                        None
                    }
                })
                .collect();
            by_iss.insert(i.issuer.clone(), issuers.len());
            issuers.push(TrustedIssuer {
                name: i.name.clone(),
                audience: i.audience.clone(),
                validate_subscription: i.validate_subscription,
                algorithms: i.algorithms.clone(),
                keys,
                tokens: i.tokens,
                api_keys: i.api_keys,
            });
        }
        Validator {
            issuers,
            by_iss,
            revoked: manifest.revoked_jti.iter().cloned().collect(),
            clock_skew_s: config.clock_skew_s,
            cache: cache::Cache::new(config.cache_capacity),
            default_subscription_tier: manifest.default_subscription_tier.as_deref().map(Arc::from),
        }
    }

    /// Entries in the verified-token cache, and its capacity.
    pub fn cache_usage(&self) -> (usize, usize) {
        (self.cache.len(), self.cache.capacity())
    }

    /// Authenticates: everything about the token that does not depend on the route. Cached: a
    /// token seen before costs a hash and a lookup, then the time rules run again.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<VerifiedToken>, TokenError> {
        // Before hashing, so a huge header is never read twice.
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > jws::MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let tag = self.cache.tag(token);
        if let Some(hit) = self.cache.get(tag) {
            hit.check_times(now, self.clock_skew_s)?;
            return Ok(hit);
        }
        let verified = Arc::new(self.verify_uncached(token, now)?);
        self.cache.insert(tag, Arc::clone(&verified), verified.deadline(self.clock_skew_s), now);
        Ok(verified)
    }

    /// [`Validator::verify`] without the cache.
    pub fn verify_uncached(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        let jws = jws::parse(token)?;
        // The payload must be read before the signature is checked: `iss` says whose key to use.
        // It is bounded (MAX_TOKEN_LEN) and strictly parsed; nothing in it is trusted until the
        // signature verifies.
        let payload = json::parse_object(&jws.payload).map_err(TokenError::Malformed)?;
        let iss = match payload.get("iss") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(TokenError::BadClaim("iss")),
            None => return Err(TokenError::MissingClaim("iss")),
        };
        let issuer = self
            .by_iss
            .get(iss.as_str())
            .and_then(|&i| self.issuers.get(i))
            .ok_or(TokenError::UnknownIssuer)?;
        let key = issuer
            .candidates(&jws)?
            .into_iter()
            .find(|k| jws::verify(&k.key, jws.alg, jws.signing_input.as_bytes(), &jws.signature))
            .ok_or(TokenError::BadSignature)?;
        let view = claims::IssuerView {
            name: &issuer.name,
            audience: issuer.audience.as_deref(),
            validate_subscription: issuer.validate_subscription,
            kid: &key.kid,
            tokens: issuer.tokens,
            api_keys: issuer.api_keys,
        };
        let verified = claims::read(&payload, &view)?;
        if verified.jti.as_ref().is_some_and(|j| self.revoked.contains(j)) {
            return Err(TokenError::Revoked);
        }
        verified.check_times(now, self.clock_skew_s)?;
        Ok(verified)
    }

    /// Authorises a verified token for one operation: the subscription (when the issuer
    /// validates subscriptions; WSO2 matches the API name and the version, or `*`), then the
    /// scopes (every scope of at least one of the operation's alternatives).
    ///
    /// Whether the operation needs a token at all (`disable_security`) is the caller's decision.
    pub fn authorize(
        &self,
        token: &Arc<VerifiedToken>,
        api: &Api,
        op: &Operation,
    ) -> Result<Principal, TokenError> {
        let subscription = token
            .subscribed_apis
            .iter()
            .position(|s| s.name == api.name && (s.version == api.version || s.version == "*"));
        if token.validate_subscription && subscription.is_none() {
            return Err(TokenError::NotSubscribed);
        }
        // An empty alternative opens nothing: a verified bundle has none (see
        // `Operation::scopes`), and one built by other means must not turn "a credential we do
        // not check" into "any token".
        let scoped = op.scopes.is_empty()
            || op
                .scopes
                .iter()
                .any(|alt| !alt.is_empty() && alt.iter().all(|need| token.scopes.iter().any(|s| s == need)));
        if !scoped {
            return Err(TokenError::MissingScope);
        }
        Ok(Principal {
            token: Arc::clone(token),
            subscription,
            default_tier: self.default_subscription_tier.clone(),
        })
    }

    /// [`Validator::verify`] then [`Validator::authorize`]: the data plane's one call per request.
    pub fn validate(
        &self,
        token: &str,
        api: &Api,
        op: &Operation,
        now: u64,
    ) -> Result<Principal, TokenError> {
        let verified = self.verify(token, now)?;
        if !verified.bearer_ok {
            return Err(TokenError::ApiKeyAsBearer);
        }
        self.authorize(&verified, api, op)
    }
}

/// The token of an `Authorization: Bearer <token>` value (RFC 6750 §2.1; the scheme is
/// case-insensitive). `None` when the scheme is not Bearer or the token is empty.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    (!token.is_empty()).then_some(token)
}

/// A decision as JSON, for `gatelet token verify` and logs.
pub fn decision_json(result: &Result<Principal, TokenError>) -> Value {
    match result {
        Ok(p) => {
            let t = p.token();
            json!({
                "decision": "allow",
                "issuer": t.issuer,
                "kid": t.kid,
                "subject": t.subject,
                "jti": t.jti,
                "expires_at": t.expires_at,
                "keytype": t.key_type.as_str(),
                "application": t.application.as_ref().map(|a| json!({
                    "id": a.id, "name": a.name, "tier": a.tier, "owner": a.owner,
                })),
                "subscription": p.subscription().map(|s| json!({
                    "name": s.name, "version": s.version, "context": s.context, "tier": s.tier,
                })),
                "subscription_tier": p.subscription_tier(),
                "application_tier": p.application_tier(),
                "scopes": t.scopes,
            })
        }
        Err(e) => json!({
            "decision": "deny",
            "status": e.http_status(),
            "fault_code": e.fault_code(),
            "reason": e.reason(),
            "message": e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::model::{EndpointKind, Endpoints, Issuer, IssuerKey, Method};
    use crate::keys;
    use base64ct::{Base64UrlUnpadded, Encoding};
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::{Digest, Sha256};

    const NOW: u64 = 1_800_000_000;
    const CENTRAL: &str = "https://apim.example.com/oauth2/token";
    const PARTNER: &str = "https://idp.partner.example/";
    const RING: &str = "https://ring.example/";

    fn central_key() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }
    fn partner_keys() -> [SigningKey; 2] {
        [SigningKey::from_bytes(&[2; 32]), SigningKey::from_bytes(&[4; 32])]
    }
    fn ring_keys() -> Vec<SigningKey> {
        (10..15).map(|b| SigningKey::from_bytes(&[b; 32])).collect()
    }
    fn outsider_key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }
    /// The identity point: small order.
    fn weak_point() -> [u8; 32] {
        let mut p = [0u8; 32];
        p[0] = 1;
        p
    }

    fn issuer_key(kid: &str, k: &SigningKey) -> IssuerKey {
        IssuerKey::ed25519(kid.into(), k.verifying_key().to_bytes())
    }

    fn op(method: Method, path: &str, scopes: &[&[&str]]) -> Operation {
        Operation {
            method,
            path: path.into(),
            tier: None,
            disable_security: false,
            scopes: scopes.iter().map(|alt| alt.iter().map(|s| (*s).to_owned()).collect()).collect(),
            production: None,
            sandbox: None,
            bearer: true,
            api_key: false,
        }
    }

    fn api(name: &str, version: &str, context: &str) -> Api {
        Api {
            name: name.into(),
            version: version.into(),
            context: context.into(),
            tier: None,
            disable_security: false,
            auth_header: None,
            production: Some(Endpoints {
                kind: EndpointKind::Single,
                urls: vec![crate::url::HttpUrl::parse("http://127.0.0.1:8081").expect("valid")],
                timeout_ms: None,
                retries: 0,
                basic_auth: None,
            }),
            sandbox: None,
            cors: None,
            operations: vec![
                op(Method::Get, "/menu", &[]),
                op(Method::Post, "/order", &[&["order:write"]]),
                op(Method::Get, "/order/{id}", &[&["order:read"], &["order:admin"]]),
                op(Method::Delete, "/order/{id}", &[&["order:admin", "order:write"]]),
            ],
            https_only: false,
            api_key_locations: Vec::new(),
        }
    }

    fn manifest() -> Manifest {
        let c = central_key();
        let [p1, p2] = partner_keys();
        let m = Manifest {
            label: "test".into(),
            serial: 1,
            created_at: NOW - 86_400,
            issuers: vec![
                Issuer {
                    name: "central".into(),
                    issuer: CENTRAL.into(),
                    audience: Some("gatelet".into()),
                    keys: vec![issuer_key(&keys::jwk_thumbprint(&c.verifying_key()), &c)],
                    validate_subscription: true,
                    algorithms: Vec::new(),
                    tokens: true,
                    api_keys: false,
                },
                Issuer {
                    name: "partner".into(),
                    issuer: PARTNER.into(),
                    audience: None,
                    keys: vec![issuer_key("p1", &p1), issuer_key("p2", &p2)],
                    validate_subscription: false,
                    algorithms: Vec::new(),
                    tokens: true,
                    api_keys: false,
                },
                Issuer {
                    name: "ring".into(),
                    issuer: RING.into(),
                    audience: None,
                    keys: ring_keys()
                        .iter()
                        .enumerate()
                        .map(|(i, k)| issuer_key(&format!("r{i}"), k))
                        .collect(),
                    validate_subscription: false,
                    algorithms: Vec::new(),
                    tokens: true,
                    api_keys: false,
                },
            ],
            policies: vec![],
            apis: vec![
                api("PizzaShackAPI", "1.0.0", "/pizzashack/1.0.0"),
                api("Inventory", "2.0", "/inventory/2.0"),
            ],
            revoked_jti: vec!["0d3c6c1e-revoked-example".into()],
            scope_rule: crate::bundle::model::ScopeRule::AllOf,
            default_subscription_tier: None,
        };
        m.check().expect("the test manifest is a valid bundle manifest");
        m
    }

    fn validator() -> Validator {
        Validator::new(&manifest(), &ValidatorConfig::default())
    }

    fn b64(b: &[u8]) -> String {
        Base64UrlUnpadded::encode_string(b)
    }

    /// Signs exactly the given header and payload text with Ed25519.
    fn sign_raw(key: &SigningKey, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let sig = key.sign(input.as_bytes()).to_bytes();
        format!("{input}.{}", b64(&sig))
    }

    fn central_header() -> String {
        json!({"alg":"EdDSA","typ":"JWT","kid": keys::jwk_thumbprint(&central_key().verifying_key())})
            .to_string()
    }

    /// A central token that passes every rule for GET /order/{id} of PizzaShackAPI 1.0.0.
    fn good_claims() -> Value {
        json!({
            "iss": CENTRAL, "sub": "alice", "aud": ["gatelet", "other"], "exp": NOW + 600,
            "nbf": NOW - 10, "iat": NOW - 10, "jti": "3f0c-1", "scope": "order:read",
            "keytype": "PRODUCTION",
            "application": {"id": 7, "name": "App", "tier": "10PerMin", "owner": "alice"},
            "subscribedAPIs": [{"name": "PizzaShackAPI", "version": "1.0.0",
                                "context": "/pizzashack/1.0.0", "subscriptionTier": "Gold"}],
        })
    }

    fn central_token(claims: &Value) -> String {
        sign_raw(&central_key(), &central_header(), &claims.to_string())
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().expect("object").remove(key);
        claims
    }

    fn route(m: &Manifest, api_idx: usize, op_idx: usize) -> (Api, Operation) {
        let a = m.apis[api_idx].clone();
        let o = a.operations[op_idx].clone();
        (a, o)
    }

    /// GET /order/{id} of PizzaShackAPI.
    fn check(v: &Validator, token: &str) -> Result<Principal, TokenError> {
        let (a, o) = route(&manifest(), 0, 2);
        v.validate(token, &a, &o, NOW)
    }

    fn assert_refused(token: &str, want: TokenError, code: u32) {
        let got = check(&validator(), token).map(drop);
        assert_eq!(got, Err(want.clone()), "token {}", &token[..token.len().min(120)]);
        assert_eq!(want.fault_code(), code, "{want}");
    }

    fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let inner = Sha256::new().chain_update(k.map(|b| b ^ 0x36)).chain_update(msg).finalize();
        Sha256::new().chain_update(k.map(|b| b ^ 0x5c)).chain_update(inner).finalize().into()
    }

    #[test]
    fn accepts_a_good_token_and_reports_the_principal() {
        let v = validator();
        let p = check(&v, &central_token(&good_claims())).expect("accepted");
        let t = p.token();
        assert_eq!(
            (t.issuer.as_str(), t.subject.as_str(), t.jti.as_deref()),
            ("central", "alice", Some("3f0c-1"))
        );
        assert_eq!(t.kid, keys::jwk_thumbprint(&central_key().verifying_key()));
        assert_eq!((t.expires_at, t.key_type), (NOW + 600, KeyType::Production));
        assert_eq!(p.subscription_tier(), Some("Gold"));
        assert_eq!(p.application_tier(), Some("10PerMin"));
        assert_eq!(t.application.as_ref().and_then(|a| a.id.as_deref()), Some("7"));
        assert_eq!(t.scopes, ["order:read"]);
        let j = decision_json(&Ok(p));
        assert_eq!(j["decision"], "allow");
        assert_eq!(j["subscription_tier"], "Gold");
        assert_eq!(j["keytype"], "PRODUCTION");
    }

    // --- The issue's "Must show" list, each with its fault code. ---

    #[test]
    fn alg_none() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let t = format!("{header}.{}.", b64(good_claims().to_string().as_bytes()));
        assert_refused(&t, TokenError::AlgRefused("none".into()), 900_901);
        // With a signature segment too.
        let t = format!("{header}.{}.{}", b64(good_claims().to_string().as_bytes()), b64(&[0; 64]));
        assert_refused(&t, TokenError::AlgRefused("none".into()), 900_901);
    }

    #[test]
    fn hs256_signed_with_the_public_key_as_secret() {
        // The HMAC is right (RFC 4231 test case 2), so the refusal below is not an accident.
        assert_eq!(
            keys::hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let secret = central_key().verifying_key().to_bytes();
        for header in [
            json!({"alg":"HS256","typ":"JWT"}),
            json!({"alg":"HS256","kid": keys::jwk_thumbprint(&central_key().verifying_key())}),
        ] {
            let input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(good_claims().to_string().as_bytes())
            );
            let t = format!("{input}.{}", b64(&hmac_sha256(&secret, input.as_bytes())));
            assert_refused(&t, TokenError::AlgRefused("HS256".into()), 900_901);
        }
        // The same MAC under an EdDSA header: 32 bytes is no Ed25519 signature.
        let input =
            format!("{}.{}", b64(central_header().as_bytes()), b64(good_claims().to_string().as_bytes()));
        let t = format!("{input}.{}", b64(&hmac_sha256(&secret, input.as_bytes())));
        assert_refused(&t, TokenError::Malformed(Malformed::SignatureLength), 900_901);
    }

    #[test]
    fn rs256_and_es256_against_an_ed25519_issuer() {
        let header = b64(br#"{"alg":"RS256","typ":"JWT","kid":"rsa-1"}"#);
        let t = format!("{header}.{}.{}", b64(good_claims().to_string().as_bytes()), b64(&[0x5a; 256]));
        assert_refused(&t, TokenError::UnknownKid, 900_901);
        // Under the Ed25519 key's own kid, or with no kid: no key of the issuer can verify it.
        let kid = keys::jwk_thumbprint(&central_key().verifying_key());
        let header = b64(json!({"alg":"RS256","kid":kid}).to_string().as_bytes());
        let t = format!("{header}.{}.{}", b64(good_claims().to_string().as_bytes()), b64(&[0x5a; 256]));
        assert_refused(&t, TokenError::KeyAlgMismatch(JwsAlg::Rs256), 900_901);
        let header = b64(br#"{"alg":"ES256"}"#);
        let t = format!("{header}.{}.{}", b64(good_claims().to_string().as_bytes()), b64(&[0x5a; 64]));
        assert_refused(&t, TokenError::KeyAlgMismatch(JwsAlg::Es256), 900_901);
    }

    /// RSA and EC issuers (issue 10): keys made with OpenSSL here, tokens signed the way
    /// `token mint` signs them (checked against PyJWT in `tests/idp_tokens.rs`).
    mod idp {
        use super::*;
        use crate::bundle::model::JwsAlg::{self, *};
        use crate::token::mint::TokenKey;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        use openssl::pkey::{PKey, Private};
        use openssl::rsa::Rsa;
        use std::sync::OnceLock;

        const IDP: &str = "https://idp.example/realms/r";
        const PINNED: &str = "https://pinned.example/";

        struct Keys {
            rsa: TokenKey,
            rsa_other: TokenKey,
            p256: TokenKey,
            p384: TokenKey,
        }

        fn ec(nid: Nid) -> PKey<Private> {
            let group = EcGroup::from_curve_name(nid).expect("curve");
            PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
        }

        fn rsa() -> PKey<Private> {
            PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("pkey")
        }

        fn keys() -> &'static Keys {
            static KEYS: OnceLock<Keys> = OnceLock::new();
            KEYS.get_or_init(|| Keys {
                rsa: TokenKey::new(rsa()).expect("rsa"),
                rsa_other: TokenKey::new(rsa()).expect("rsa"),
                p256: TokenKey::new(ec(Nid::X9_62_PRIME256V1)).expect("p256"),
                p384: TokenKey::new(ec(Nid::SECP384R1)).expect("p384"),
            })
        }

        fn public(k: &TokenKey) -> PublicKey {
            let der = k.public_der();
            match k.default_alg() {
                Rs256 => PublicKey::Rsa(der),
                Es256 => PublicKey::EcP256(der),
                Es384 => PublicKey::EcP384(der),
                _ => unreachable!("RSA and EC keys only here"),
            }
        }

        fn ikey(kid: &str, k: &TokenKey, alg: Option<JwsAlg>) -> IssuerKey {
            IssuerKey { kid: kid.into(), key: public(k), alg, x5t: None, x5t_s256: None }
        }

        fn issuer(name: &str, iss: &str, keys: Vec<IssuerKey>, algorithms: Vec<JwsAlg>) -> Issuer {
            Issuer {
                name: name.into(),
                issuer: iss.into(),
                audience: None,
                keys,
                validate_subscription: false,
                algorithms,
                tokens: true,
                api_keys: false,
            }
        }

        /// `idp`: an RSA key (kid "rsa", certificate thumbprints [1; 20] / [2; 32]), an RSA key
        /// pinned to RS512 by its JWK `alg`, a P-256 and a P-384 key, and five Ed25519 keys.
        /// `pinned`: the RSA key and the P-256 key, algorithms pinned to PS256 and ES256.
        fn manifest() -> Manifest {
            let k = keys();
            let mut m = super::manifest();
            let mut rsa = ikey("rsa", &k.rsa, None);
            rsa.x5t = Some([1; 20]);
            rsa.x5t_s256 = Some([2; 32]);
            let mut idp_keys = vec![
                rsa,
                ikey("rs512-only", &k.rsa_other, Some(Rs512)),
                ikey("p256", &k.p256, None),
                ikey("p384", &k.p384, None),
            ];
            idp_keys.extend(ring_keys().iter().enumerate().map(|(i, r)| issuer_key(&format!("ed{i}"), r)));
            m.issuers.push(issuer("idp", IDP, idp_keys, Vec::new()));
            m.issuers.push(issuer(
                "pinned",
                PINNED,
                vec![ikey("rsa", &k.rsa, None), ikey("p256", &k.p256, None)],
                vec![Ps256, Es256],
            ));
            m.check().expect("valid manifest");
            m
        }

        fn claims(iss: &str) -> String {
            json!({"iss": iss, "sub": "bob", "exp": NOW + 600, "iat": NOW,
                   "application": {"id": "12", "name": "App", "tier": "Unlimited"}})
            .to_string()
        }

        fn sign(k: &TokenKey, alg: JwsAlg, header: Value, iss: &str) -> String {
            let mut h = header;
            h["alg"] = json!(alg.as_str());
            let input = format!("{}.{}", b64(h.to_string().as_bytes()), b64(claims(iss).as_bytes()));
            let sig = k.sign(alg, input.as_bytes()).expect("signed");
            format!("{input}.{}", b64(&sig))
        }

        fn verify(t: &str) -> Result<String, TokenError> {
            let v = Validator::new(&manifest(), &ValidatorConfig::default());
            v.verify_uncached(t, NOW).map(|t| t.kid)
        }

        #[test]
        fn every_algorithm_with_its_key() {
            let k = keys();
            for alg in [Rs256, Rs384, Rs512, Ps256, Ps384, Ps512] {
                let t = sign(&k.rsa, alg, json!({"kid": "rsa"}), IDP);
                assert_eq!(verify(&t), Ok("rsa".to_owned()), "{}", alg.as_str());
            }
            assert_eq!(verify(&sign(&k.p256, Es256, json!({"kid":"p256"}), IDP)), Ok("p256".to_owned()));
            assert_eq!(verify(&sign(&k.p384, Es384, json!({"kid":"p384"}), IDP)), Ok("p384".to_owned()));
            // No kid: only the keys that fit the algorithm count (five Ed25519 keys do not).
            assert_eq!(verify(&sign(&k.p384, Es384, json!({}), IDP)), Ok("p384".to_owned()));
            assert_eq!(verify(&sign(&k.rsa, Ps384, json!({}), IDP)), Ok("rsa".to_owned()));
            assert_eq!(verify(&sign(&k.rsa_other, Rs512, json!({}), IDP)), Ok("rs512-only".to_owned()));
            let ed = sign_raw(&ring_keys()[0], r#"{"alg":"EdDSA"}"#, &claims(IDP));
            assert_eq!(verify(&ed), Err(TokenError::KidRequired));
        }

        #[test]
        fn key_confusion_is_refused() {
            let k = keys();
            // An RSA-signed token under the EC key's kid, an ES384 token under the P-256 key's.
            let t = sign(&k.rsa, Rs256, json!({"kid":"p256"}), IDP);
            assert_eq!(verify(&t), Err(TokenError::KeyAlgMismatch(Rs256)));
            let t = sign(&k.p384, Es384, json!({"kid":"p256"}), IDP);
            assert_eq!(verify(&t), Err(TokenError::KeyAlgMismatch(Es384)));
            // An EC signature of the right length under the RSA key's kid.
            let t = sign(&k.p256, Es256, json!({"kid":"rsa"}), IDP);
            assert_eq!(verify(&t), Err(TokenError::KeyAlgMismatch(Es256)));
            // The key's JWK alg restricts it further.
            let t = sign(&k.rsa_other, Rs256, json!({"kid":"rs512-only"}), IDP);
            assert_eq!(verify(&t), Err(TokenError::KeyAlgMismatch(Rs256)));
            // The issuer's pin: RS256 by the right key is still refused, PS256 passes.
            let t = sign(&k.rsa, Rs256, json!({"kid":"rsa"}), PINNED);
            assert_eq!(verify(&t), Err(TokenError::AlgNotPinned(Rs256)));
            assert_eq!(verify(&sign(&k.rsa, Ps256, json!({"kid":"rsa"}), PINNED)), Ok("rsa".to_owned()));
            // HS256 with the RSA public key (SPKI DER) as the HMAC secret.
            let input = format!("{}.{}", b64(br#"{"alg":"HS256","kid":"rsa"}"#), b64(claims(IDP).as_bytes()));
            let t = format!("{input}.{}", b64(&hmac_sha256(&k.rsa.public_der(), input.as_bytes())));
            assert_eq!(verify(&t), Err(TokenError::AlgRefused("HS256".into())));
            let t = format!("{}.{}.", b64(br#"{"alg":"none","kid":"rsa"}"#), b64(claims(IDP).as_bytes()));
            assert_eq!(verify(&t), Err(TokenError::AlgRefused("none".into())));
        }

        #[test]
        fn signatures_are_checked_exactly() {
            let k = keys();
            // Another RSA key under this kid.
            let t = sign(&k.rsa_other, Rs256, json!({"kid":"rsa"}), IDP);
            assert_eq!(verify(&t), Err(TokenError::BadSignature));
            // PKCS#1 v1.5 presented as PSS and the other way round.
            let rs = sign(&k.rsa, Rs256, json!({"kid":"rsa"}), IDP);
            let (_, sig) = rs.rsplit_once('.').expect("dots");
            let h = b64(br#"{"alg":"PS256","kid":"rsa"}"#);
            let t = format!("{h}.{}.{sig}", b64(claims(IDP).as_bytes()));
            assert_eq!(verify(&t), Err(TokenError::BadSignature));
            // Shorter than any RSA modulus gatelet accepts; longer than this key's modulus by a
            // leading zero byte (the same number): only the exact length is verified.
            let raw = Base64UrlUnpadded::decode_vec(sig).expect("b64");
            let (input, _) = rs.rsplit_once('.').expect("dots");
            let t = format!("{input}.{}", b64(&raw[1..]));
            assert_eq!(verify(&t), Err(TokenError::Malformed(Malformed::SignatureLength)));
            let t = format!("{input}.{}", b64(&[&[0u8][..], &raw].concat()));
            assert_eq!(verify(&t), Err(TokenError::BadSignature));
            // ECDSA in DER (what some libraries emit by mistake) is not JWS's R || S.
            let es = sign(&k.p256, Es256, json!({"kid":"p256"}), IDP);
            let (input, sig) = es.rsplit_once('.').expect("dots");
            let raw = Base64UrlUnpadded::decode_vec(sig).expect("b64");
            let der = openssl::ecdsa::EcdsaSig::from_private_components(
                openssl::bn::BigNum::from_slice(&raw[..32]).expect("r"),
                openssl::bn::BigNum::from_slice(&raw[32..]).expect("s"),
            )
            .and_then(|s| s.to_der())
            .expect("DER");
            let t = format!("{input}.{}", b64(&der));
            assert_eq!(verify(&t), Err(TokenError::Malformed(Malformed::SignatureLength)));
            // R || S with S = 0 and a flipped bit.
            let mut zero = raw.clone();
            zero[32..].fill(0);
            assert_eq!(verify(&format!("{input}.{}", b64(&zero))), Err(TokenError::BadSignature));
            let mut flipped = raw;
            flipped[5] ^= 1;
            assert_eq!(verify(&format!("{input}.{}", b64(&flipped))), Err(TokenError::BadSignature));
        }

        #[test]
        fn certificate_thumbprints_select_the_key() {
            let k = keys();
            let sha1 = [1u8; 20];
            let hex = keys::hex(&sha1);
            for x5t in [
                b64(&sha1),                                       // RFC 7515
                base64ct::Base64::encode_string(hex.as_bytes()),  // WSO2 API Manager 3.x
                Base64UrlUnpadded::encode_string(hex.as_bytes()), // some WSO2 versions
            ] {
                let t = sign(&k.rsa, Rs256, json!({"x5t": x5t}), IDP);
                assert_eq!(verify(&t), Ok("rsa".to_owned()), "x5t {x5t}");
                // A kid of WSO2's own making that names no key: the x5t still finds it.
                let t = sign(&k.rsa, Rs256, json!({"kid": format!("{x5t}_RS256"), "x5t": x5t}), IDP);
                assert_eq!(verify(&t), Ok("rsa".to_owned()), "x5t {x5t} beside an unknown kid");
            }
            let t = sign(&k.rsa, Rs256, json!({"x5t#S256": b64(&[2; 32])}), IDP);
            assert_eq!(verify(&t), Ok("rsa".to_owned()));
            let t = sign(&k.rsa, Rs256, json!({"x5t": b64(&[3; 20])}), IDP);
            assert_eq!(verify(&t), Err(TokenError::UnknownKid));
            let t = sign(&k.rsa, Rs256, json!({"kid": "nope"}), IDP);
            assert_eq!(verify(&t), Err(TokenError::UnknownKid));
            // The thumbprint names the RSA key: an EC token under it is confusion.
            let t = sign(&k.p256, Es256, json!({"x5t": b64(&sha1)}), IDP);
            assert_eq!(verify(&t), Err(TokenError::KeyAlgMismatch(Es256)));
        }
    }

    #[test]
    fn wrong_kid() {
        let header = json!({"alg":"EdDSA","kid":"not-a-key-of-central"}).to_string();
        let t = sign_raw(&central_key(), &header, &good_claims().to_string());
        assert_refused(&t, TokenError::UnknownKid, 900_901);
        // A kid of another issuer does not reach across issuers either.
        let t = sign_raw(&partner_keys()[0], r#"{"alg":"EdDSA","kid":"p1"}"#, &good_claims().to_string());
        assert_refused(&t, TokenError::UnknownKid, 900_901);
    }

    #[test]
    fn expired() {
        // Expired beyond the skew; within the skew still accepted.
        let t = central_token(&with(good_claims(), "exp", json!(NOW - 61)));
        assert_refused(&t, TokenError::Expired, 900_903);
        let t = central_token(&with(good_claims(), "exp", json!(NOW - 59)));
        assert!(check(&validator(), &t).is_ok());
    }

    #[test]
    fn nbf_in_the_future() {
        let t = central_token(&with(good_claims(), "nbf", json!(NOW + 3600)));
        assert_refused(&t, TokenError::NotYetValid, 900_901);
    }

    #[test]
    fn iat_far_in_the_future() {
        let t = central_token(&with(good_claims(), "iat", json!(NOW + 86_400)));
        assert_refused(&t, TokenError::IssuedInFuture, 900_901);
    }

    #[test]
    fn wrong_iss() {
        let t = central_token(&with(good_claims(), "iss", json!("https://evil.example/")));
        assert_refused(&t, TokenError::UnknownIssuer, 900_901);
        // iss must match exactly: no trailing-slash or case games.
        let t = central_token(&with(good_claims(), "iss", json!(format!("{CENTRAL}/"))));
        assert_refused(&t, TokenError::UnknownIssuer, 900_901);
        let t = central_token(&without(good_claims(), "iss"));
        assert_refused(&t, TokenError::MissingClaim("iss"), 900_901);
        let t = central_token(&with(good_claims(), "iss", json!([CENTRAL])));
        assert_refused(&t, TokenError::BadClaim("iss"), 900_901);
    }

    #[test]
    fn wrong_aud() {
        let t = central_token(&with(good_claims(), "aud", json!("someone-else")));
        assert_refused(&t, TokenError::WrongAudience, 900_901);
        let t = central_token(&without(good_claims(), "aud"));
        assert_refused(&t, TokenError::WrongAudience, 900_901);
        let t = central_token(&with(good_claims(), "aud", json!("gatelet")));
        assert!(check(&validator(), &t).is_ok(), "aud as a plain string");
    }

    #[test]
    fn revoked_jti() {
        let t = central_token(&with(good_claims(), "jti", json!("0d3c6c1e-revoked-example")));
        assert_refused(&t, TokenError::Revoked, 900_901);
    }

    #[test]
    fn missing_subscription() {
        let m = manifest();
        let v = validator();
        // Listed for PizzaShackAPI only: Inventory is refused.
        let t = central_token(&good_claims());
        let (inv, inv_op) = route(&m, 1, 0);
        assert_eq!(v.validate(&t, &inv, &inv_op, NOW).map(drop), Err(TokenError::NotSubscribed));
        assert_eq!(TokenError::NotSubscribed.fault_code(), 900_908);
        // Another version of the same API is not a subscription; "*" covers every version.
        let other = with(
            good_claims(),
            "subscribedAPIs",
            json!([{"name": "PizzaShackAPI", "version": "2.0.0"},
                   {"name": "Inventory", "version": "*", "subscriptionTier": "Silver"}]),
        );
        let t = central_token(&other);
        assert_refused(&t, TokenError::NotSubscribed, 900_908);
        let p = v.validate(&t, &inv, &inv_op, NOW).expect("wildcard version");
        assert_eq!(p.subscription_tier(), Some("Silver"));
        // No subscribedAPIs at all.
        assert_refused(
            &central_token(&without(good_claims(), "subscribedAPIs")),
            TokenError::NotSubscribed,
            900_908,
        );
        // An issuer that does not validate subscriptions lets it through, with no tier.
        let partner = sign_raw(
            &partner_keys()[0],
            r#"{"alg":"EdDSA","kid":"p1"}"#,
            &json!({"iss": PARTNER, "sub": "bob", "exp": NOW + 60, "scope": "order:read"}).to_string(),
        );
        let p = check(&v, &partner).expect("partner does not validate subscriptions");
        assert_eq!((p.subscription_tier(), p.token().issuer.as_str()), (None, "partner"));
    }

    #[test]
    fn missing_scope() {
        let m = manifest();
        let v = validator();
        let read_only = central_token(&good_claims());
        let (a, post_order) = route(&m, 0, 1);
        assert_eq!(v.validate(&read_only, &a, &post_order, NOW).map(drop), Err(TokenError::MissingScope));
        assert_eq!(TokenError::MissingScope.fault_code(), 900_910);
        assert_refused(&central_token(&without(good_claims(), "scope")), TokenError::MissingScope, 900_910);
        // Alternatives: order:admin alone also opens GET /order/{id}.
        assert!(check(&v, &central_token(&with(good_claims(), "scope", json!("order:admin")))).is_ok());
        // All of an alternative: DELETE needs order:admin AND order:write.
        let (_, delete) = route(&m, 0, 3);
        let admin = central_token(&with(good_claims(), "scope", json!("order:admin")));
        assert_eq!(v.validate(&admin, &a, &delete, NOW).map(drop), Err(TokenError::MissingScope));
        let both = central_token(&with(good_claims(), "scope", json!("order:write order:admin")));
        assert!(v.validate(&both, &a, &delete, NOW).is_ok());
        // A scope name is matched whole, not as a prefix.
        let prefix = central_token(&with(good_claims(), "scope", json!("order:reader order")));
        assert_refused(&prefix, TokenError::MissingScope, 900_910);
        // No scope needed: GET /menu.
        let (_, menu) = route(&m, 0, 0);
        assert!(v.validate(&central_token(&without(good_claims(), "scope")), &a, &menu, NOW).is_ok());
    }

    #[test]
    fn an_empty_scope_alternative_opens_nothing() {
        // `[[], ["order:write"]]` could only come from a requirement that needs no JWT scope
        // (an API key, HTTP basic): the bundle check refuses it, and should an operation like
        // it reach the validator anyway, a token without the scope is still refused.
        let mut m = manifest();
        m.apis[0].operations[1].scopes = vec![vec![], vec!["order:write".into()]];
        let e = m.check().expect_err("an empty alternative is refused");
        assert!(e.0.contains("POST /order") && e.0.contains("empty scope alternative"), "{e}");
        let v = validator();
        let (a, post_order) = route(&m, 0, 1);
        let scopeless = central_token(&without(good_claims(), "scope"));
        assert_eq!(v.validate(&scopeless, &a, &post_order, NOW).map(drop), Err(TokenError::MissingScope));
        let writer = central_token(&with(good_claims(), "scope", json!("order:write")));
        assert!(v.validate(&writer, &a, &post_order, NOW).is_ok());
        // The one way to say "any valid token" is no alternative at all.
        let (_, menu) = route(&m, 0, 0);
        assert!(menu.scopes.is_empty());
        assert!(v.validate(&scopeless, &a, &menu, NOW).is_ok());
    }

    #[test]
    fn payload_tampered() {
        let t = central_token(&good_claims());
        let (h, rest) = t.split_once('.').expect("dots");
        let (_, s) = rest.split_once('.').expect("dots");
        let forged = b64(with(good_claims(), "sub", json!("admin")).to_string().as_bytes());
        assert_refused(&format!("{h}.{forged}.{s}"), TokenError::BadSignature, 900_901);
        // The header is covered too.
        let h2 = b64(json!({"alg":"Ed25519","kid": keys::jwk_thumbprint(&central_key().verifying_key())})
            .to_string()
            .as_bytes());
        assert_refused(&format!("{h2}.{rest}"), TokenError::BadSignature, 900_901);
    }

    #[test]
    fn signature_tampered() {
        let t = central_token(&good_claims());
        let (input, sig) = t.rsplit_once('.').expect("dots");
        let mut raw = Base64UrlUnpadded::decode_vec(sig).expect("b64");
        raw[0] ^= 0x01;
        assert_refused(&format!("{input}.{}", b64(&raw)), TokenError::BadSignature, 900_901);
        // Signed by a key the issuer does not have, under its kid.
        let t = sign_raw(&outsider_key(), &central_header(), &good_claims().to_string());
        assert_refused(&t, TokenError::BadSignature, 900_901);
    }

    #[test]
    fn non_canonical_signature_s_at_least_ell() {
        let t = central_token(&good_claims());
        let (input, sig) = t.rsplit_once('.').expect("dots");
        let mut raw = Base64UrlUnpadded::decode_vec(sig).expect("b64");
        // S + ℓ: the same scalar, a different encoding. Little-endian addition.
        const ELL: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (i, l) in ELL.iter().enumerate() {
            let v = u16::from(raw[32 + i]) + u16::from(*l) + carry;
            raw[32 + i] = v.to_le_bytes()[0];
            carry = v >> 8;
        }
        assert_eq!(carry, 0);
        assert_refused(&format!("{input}.{}", b64(&raw)), TokenError::BadSignature, 900_901);
    }

    #[test]
    fn small_order_public_key() {
        // A bundle cannot carry one (Manifest::check refuses it) ...
        let mut m = manifest();
        m.issuers[0].keys.push(IssuerKey::ed25519("weak".into(), weak_point()));
        assert!(m.check().is_err());
        // ... and a validator built around the check still refuses the universal forgery
        // R = identity, S = 0 that plain Ed25519 verification accepts for a small-order key.
        let v = Validator::new(&m, &ValidatorConfig::default());
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"EdDSA","kid":"weak"}"#),
            b64(with(good_claims(), "sub", json!("admin")).to_string().as_bytes())
        );
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&weak_point());
        let t = format!("{input}.{}", b64(&sig));
        let (a, o) = route(&m, 0, 2);
        let got = v.validate(&t, &a, &o, NOW).map(drop);
        assert_eq!(got, Err(TokenError::BadSignature));
        assert_eq!(TokenError::BadSignature.fault_code(), 900_901);
    }

    #[test]
    fn one_megabyte_token() {
        let big = format!("{}.{}.{}", b64(central_header().as_bytes()), "A".repeat(1 << 20), b64(&[0; 64]));
        assert_refused(&big, TokenError::TooLarge, 900_901);
        // Just over the limit, even when the rest is a valid token.
        let padded = with(good_claims(), "pad", json!("x".repeat(jws::MAX_TOKEN_LEN)));
        assert_refused(&central_token(&padded), TokenError::TooLarge, 900_901);
    }

    #[test]
    fn bad_base64() {
        let t = central_token(&good_claims());
        let (h, rest) = t.split_once('.').expect("dots");
        for bad in [
            format!("{h}=.{rest}"),
            format!("{}.{rest}", h.replace('e', "+")),
            format!("{h}.{}", rest.replacen('.', "%.", 1)),
            format!("{h}.{}", rest.replacen('.', "\n.", 1)),
            format!("{}*", &t[..t.len() - 1]),
        ] {
            let got = check(&validator(), &bad).map(drop);
            assert!(
                matches!(
                    got,
                    Err(TokenError::Malformed(
                        Malformed::Base64 | Malformed::SignatureLength | Malformed::Segments
                    ))
                ),
                "{bad}: {got:?}"
            );
            assert_eq!(got.map_err(|e| e.fault_code()), Err(900_901));
        }
    }

    #[test]
    fn wrong_segment_count() {
        let t = central_token(&good_claims());
        let (input, _) = t.rsplit_once('.').expect("dots");
        assert_refused(input, TokenError::Malformed(Malformed::Segments), 900_901);
        assert_refused(&format!("{t}.{}", b64(b"{}")), TokenError::Malformed(Malformed::Segments), 900_901);
        assert_refused("abc", TokenError::Malformed(Malformed::Segments), 900_901);
        assert_refused("", TokenError::Missing, 900_902);
    }

    // --- The other rules. ---

    #[test]
    fn duplicate_claims_are_refused_even_when_signed() {
        let payload = format!(
            r#"{{"iss":"{CENTRAL}","sub":"alice","sub":"admin","aud":"gatelet","exp":{}}}"#,
            NOW + 60
        );
        let t = sign_raw(&central_key(), &central_header(), &payload);
        assert_refused(&t, TokenError::Malformed(Malformed::DuplicateKey), 900_901);
    }

    #[test]
    fn crit_and_typ() {
        let kid = keys::jwk_thumbprint(&central_key().verifying_key());
        let t = sign_raw(
            &central_key(),
            &json!({"alg":"EdDSA","kid":kid,"crit":["exp"]}).to_string(),
            &good_claims().to_string(),
        );
        assert_refused(&t, TokenError::CritRefused, 900_901);
        let t = sign_raw(
            &central_key(),
            &json!({"alg":"EdDSA","kid":kid,"typ":"logout+jwt"}).to_string(),
            &good_claims().to_string(),
        );
        assert_refused(&t, TokenError::TypRefused, 900_901);
        let t = sign_raw(
            &central_key(),
            &json!({"alg":"EdDSA","kid":kid,"typ":"at+jwt"}).to_string(),
            &good_claims().to_string(),
        );
        assert!(check(&validator(), &t).is_ok());
    }

    #[test]
    fn both_algorithm_names() {
        let kid = keys::jwk_thumbprint(&central_key().verifying_key());
        for alg in ["EdDSA", "Ed25519"] {
            let t = sign_raw(
                &central_key(),
                &json!({"alg":alg,"kid":kid}).to_string(),
                &good_claims().to_string(),
            );
            assert!(check(&validator(), &t).is_ok(), "{alg}");
        }
    }

    #[test]
    fn keys_without_kid() {
        let v = validator();
        let claims =
            json!({"iss": PARTNER, "sub": "bob", "exp": NOW + 60, "scope": "order:read"}).to_string();
        // Either of partner's two keys, found without a kid.
        for k in partner_keys() {
            let t = sign_raw(&k, r#"{"alg":"EdDSA"}"#, &claims);
            let p = check(&v, &t).expect("found by trial");
            assert!(p.token().kid == "p1" || p.token().kid == "p2");
        }
        assert_eq!(
            check(&v, &sign_raw(&partner_keys()[1], r#"{"alg":"EdDSA"}"#, &claims)).expect("ok").token().kid,
            "p2"
        );
        // An outsider's signature after trying both.
        assert_refused(
            &sign_raw(&outsider_key(), r#"{"alg":"EdDSA"}"#, &claims),
            TokenError::BadSignature,
            900_901,
        );
        // Five keys: more than MAX_KEYS_WITHOUT_KID, a kid is required ...
        let ring = json!({"iss": RING, "sub": "carol", "exp": NOW + 60, "scope": "order:read"}).to_string();
        assert_refused(
            &sign_raw(&ring_keys()[0], r#"{"alg":"EdDSA"}"#, &ring),
            TokenError::KidRequired,
            900_901,
        );
        // ... and works with it.
        let t = sign_raw(&ring_keys()[4], r#"{"alg":"EdDSA","kid":"r4"}"#, &ring);
        assert_eq!(check(&v, &t).expect("by kid").token().kid, "r4");
    }

    #[test]
    fn sandbox_key_type() {
        let t = central_token(&with(good_claims(), "keytype", json!("SANDBOX")));
        assert_eq!(check(&validator(), &t).expect("ok").token().key_type, KeyType::Sandbox);
        let t = central_token(&with(good_claims(), "keytype", json!("DEV")));
        assert_refused(&t, TokenError::BadClaim("keytype"), 900_901);
    }

    #[test]
    fn rfc8037_key_as_an_issuer() {
        // The RFC 8037 A.1 key as a PEM issuer key: its kid is the A.3 thumbprint, and a token it
        // signs validates.
        let text = include_str!("../../tests/data/rfc8037-appendix-a.txt");
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("{name} = "))).expect("vector field")
        };
        let d = Base64UrlUnpadded::decode_vec(field("A.1 d")).expect("d");
        let key = SigningKey::from_bytes(&d.try_into().expect("32 bytes"));
        assert_eq!(keys::jwk_thumbprint(&key.verifying_key()), field("A.3 thumbprint"));
        let mut m = manifest();
        m.issuers[0].keys = vec![issuer_key(field("A.3 thumbprint"), &key)];
        let v = Validator::new(&m, &ValidatorConfig::default());
        let req = MintRequest {
            issuer: CENTRAL.into(),
            subject: "rfc".into(),
            audience: Some("gatelet".into()),
            apis: vec!["PizzaShackAPI:1.0.0".into()],
            scope: Some("order:read".into()),
            ..MintRequest::default()
        };
        let t = mint(&key, &req, NOW, "j").expect("minted");
        let (a, o) = route(&m, 0, 2);
        assert_eq!(v.validate(&t, &a, &o, NOW).expect("valid").token().subject, "rfc");
    }

    #[test]
    fn minted_tokens_round_trip() {
        let m = manifest();
        let v = validator();
        let req = MintRequest {
            issuer: CENTRAL.into(),
            subject: "alice".into(),
            audience: Some("gatelet".into()),
            apis: vec!["PizzaShackAPI:1.0.0".into()],
            app_id: Some("app-1".into()),
            app_tier: Some("10PerMin".into()),
            tier: Some("Gold".into()),
            scope: Some("order:read order:write".into()),
            key_type: Some("SANDBOX".into()),
            ttl_s: Some(300),
            ..MintRequest::default()
        };
        let t = mint(&central_key(), &req, NOW, "jti-x").expect("minted");
        let (a, o) = route(&m, 0, 1);
        let p = v.validate(&t, &a, &o, NOW).expect("valid");
        assert_eq!(p.subscription_tier(), Some("Gold"));
        assert_eq!(p.application_tier(), Some("10PerMin"));
        assert_eq!(p.token().key_type, KeyType::Sandbox);
        assert_eq!(v.validate(&t, &a, &o, NOW + 300 + 60).map(drop), Err(TokenError::Expired));
        // Partner's JWKS kid.
        let preq = MintRequest {
            issuer: PARTNER.into(),
            subject: "bob".into(),
            kid: Some("p2".into()),
            ..MintRequest::default()
        };
        let t = mint(&partner_keys()[1], &preq, NOW, "j2").expect("minted");
        assert_eq!(v.validate(&t, &a, &m.apis[0].operations[0], NOW).expect("valid").token().kid, "p2");
    }

    // --- The cache. ---

    #[test]
    fn cache_serves_repeats_and_rechecks_time() {
        let v = validator();
        let t = central_token(&good_claims());
        assert_eq!(v.cache_usage().0, 0);
        let a = v.verify(&t, NOW).expect("verified");
        let b = v.verify(&t, NOW + 1).expect("cached");
        assert!(Arc::ptr_eq(&a, &b), "second use is a cache hit");
        assert_eq!(v.cache_usage().0, 1);
        // A cached token still expires.
        assert_eq!(v.verify(&t, NOW + 600 + 60).map(drop), Err(TokenError::Expired));
        // And is still authorised per route: the same cached token, two operations.
        let m = manifest();
        let (api0, get_order) = route(&m, 0, 2);
        let (_, post_order) = route(&m, 0, 1);
        assert!(v.authorize(&b, &api0, &get_order).is_ok());
        assert_eq!(v.authorize(&b, &api0, &post_order).map(drop), Err(TokenError::MissingScope));
    }

    #[test]
    fn refused_tokens_are_not_cached() {
        let v = validator();
        let t = central_token(&good_claims());
        let (input, sig) = t.rsplit_once('.').expect("dots");
        let mut raw = Base64UrlUnpadded::decode_vec(sig).expect("b64");
        raw[5] ^= 4;
        let forged = format!("{input}.{}", b64(&raw));
        for _ in 0..3 {
            assert_eq!(v.verify(&forged, NOW).map(drop), Err(TokenError::BadSignature));
        }
        assert_eq!(
            v.verify(&central_token(&with(good_claims(), "exp", json!(NOW - 100))), NOW).map(drop),
            Err(TokenError::Expired)
        );
        assert_eq!(v.cache_usage().0, 0);
        // The genuine token is still verified on its own merits afterwards.
        assert!(v.verify(&t, NOW).is_ok());
    }

    #[test]
    fn a_token_verified_before_it_is_valid_is_not_cached_early() {
        let v = validator();
        let t = central_token(&with(with(good_claims(), "nbf", json!(NOW + 1000)), "exp", json!(NOW + 5000)));
        assert_eq!(v.verify(&t, NOW).map(drop), Err(TokenError::NotYetValid));
        assert!(v.verify(&t, NOW + 1000).is_ok());
        // Cached now; an earlier clock reading (clock stepped back) is still refused.
        assert_eq!(v.verify(&t, NOW).map(drop), Err(TokenError::NotYetValid));
    }

    #[test]
    fn a_new_bundle_starts_with_an_empty_cache_and_its_own_revocations() {
        let t = central_token(&good_claims());
        let old = validator();
        assert!(old.verify(&t, NOW).is_ok());
        let mut m = manifest();
        m.revoked_jti.push("3f0c-1".into());
        let new = Validator::new(&m, &ValidatorConfig::default());
        assert_eq!(new.cache_usage().0, 0);
        assert_eq!(new.verify(&t, NOW).map(drop), Err(TokenError::Revoked));
    }

    #[test]
    fn cache_off_still_validates() {
        let v =
            Validator::new(&manifest(), &ValidatorConfig { cache_capacity: 0, ..ValidatorConfig::default() });
        let t = central_token(&good_claims());
        let a = v.verify(&t, NOW).expect("ok");
        let b = v.verify(&t, NOW).expect("ok");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(v.cache_usage(), (0, 0));
    }

    #[test]
    fn shared_across_threads() {
        let v = Arc::new(Validator::new(
            &manifest(),
            &ValidatorConfig { cache_capacity: 8, ..Default::default() },
        ));
        let tokens: Arc<Vec<String>> = Arc::new(
            (0..10).map(|i| central_token(&with(good_claims(), "jti", json!(format!("j{i}"))))).collect(),
        );
        // More tokens than entries, so hits, misses and evictions interleave across threads.
        // Kept small: every miss is a signature check, slow in a debug build.
        let threads: Vec<_> = (0..3)
            .map(|n| {
                let (v, tokens) = (Arc::clone(&v), Arc::clone(&tokens));
                std::thread::spawn(move || {
                    for i in 0..30 {
                        let j = (i * 7 + n) % tokens.len();
                        let t = v.verify(&tokens[j], NOW).expect("valid");
                        assert_eq!(
                            t.jti.as_deref(),
                            Some(format!("j{j}").as_str()),
                            "never another token's claims"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        let (len, cap) = v.cache_usage();
        assert!(len <= cap && cap == 8);
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER x"), Some("x"));
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearerx abc"), None);
    }

    #[test]
    fn deny_json() {
        let j = decision_json(&Err(TokenError::Expired));
        assert_eq!(
            j,
            json!({"decision": "deny", "status": 401, "fault_code": 900903, "reason": "expired",
                   "message": "token expired"})
        );
        let j = decision_json(&Err(TokenError::MissingScope));
        assert_eq!((j["status"].as_u64(), j["fault_code"].as_u64()), (Some(403), Some(900_910)));
    }
}
