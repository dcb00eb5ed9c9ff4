//! The bodies of gatelet's fuzz targets, one function per target, each taking the fuzzer's bytes.
//!
//! They live here, not in `fuzz_targets/`, so that the main crate's `tests/fuzz_regressions.rs`
//! can include this same file (`#[path]`) and feed it every saved finding and every seed on each
//! `cargo test`: a finding stays fixed, and a harness that no longer builds fails the main suite
//! instead of rotting unnoticed. So this file uses only gatelet and gatelet's own dependencies.
//!
//! Each function panics when an invariant breaks; a returned value means the input was handled.
//! Every fixture (keys, manifests, router) is fixed: an input always replays the same way.

use std::path::Path;
use std::sync::OnceLock;

use base64ct::{Base64UrlUnpadded, Encoding};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use gatelet::bundle::model::{
    Api, EndpointKind, Endpoints, Issuer, IssuerKey, Manifest, Method, Operation, Policy, PolicyLevel,
    ScopeRule,
};
use gatelet::bundle::{self, format};
use gatelet::config::{Config, Overrides};
use gatelet::router::{self, Router};
use gatelet::server::guard;
use gatelet::token::{TokenError, Validator, ValidatorConfig};
use serde_json::{Value, json};

/// The target names, as `fuzz/Cargo.toml` names the binaries and `fuzz/seeds/` the folders.
pub const TARGETS: [&str; 5] = ["bundle", "token", "router", "config", "framing"];

/// Runs the target called `name` on `data`. Panics on an unknown name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "bundle" => bundle(data),
        "token" => token(data),
        "router" => route(data),
        "config" => config(data),
        "framing" => framing(data),
        _ => panic!("no fuzz target {name:?}"),
    }
}

fn from_hex(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("a constant of 64 hex digits");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// bundle: decode and verify.

/// RFC 8032 §7.1 TEST 1: the key that signed `bundle-format/vectors/valid.glb`.
const VECTOR_KEY: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// RFC 8032 §7.1 TEST 2: the vectors' "other" key, trusted too so the key-id search has a choice.
const OTHER_KEY: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";

fn vector_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&from_hex(VECTOR_KEY)))
}

fn trusted() -> &'static [VerifyingKey; 2] {
    static KEYS: OnceLock<[VerifyingKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [SigningKey::from_bytes(&from_hex(OTHER_KEY)).verifying_key(), vector_key().verifying_key()]
    })
}

/// Two runs per input. First the bytes as a bundle file, as `bundle verify` and the inbox read
/// them: the fuzzer cannot forge a signature, so this exercises framing, limits and key
/// selection. Then the same bytes' payload (the declared payload when the header parses, else all
/// of them) signed with the trusted vector key: this reaches the postcard decoder and the semantic
/// checks, which only signed bytes ever reach.
pub fn bundle(data: &[u8]) {
    let verified = bundle::verify(data, trusted());
    let unverified = format::decode_unverified(data);
    if let Ok(b) = &verified {
        // `inspect` must read what `verify` accepted, and the same way.
        let (header, manifest) = unverified.as_ref().expect("a verified bundle decodes unverified");
        assert_eq!(manifest, b.manifest(), "inspect and verify read different manifests");
        assert_eq!(header.key_id, b.key_id());
        assert_eq!(b.size(), data.len());
        runnable(b);
    }
    if let Ok((header, manifest)) = &unverified {
        let _ = bundle::inspect_json(header, manifest, false);
    }

    let payload = match format::parse_header(data) {
        Ok(h) => &data[format::HEADER_LEN..format::HEADER_LEN + h.payload_len as usize],
        Err(_) => data,
    };
    let sealed = format::danger_seal_unchecked_payload(payload, vector_key());
    let Ok(b) = bundle::verify(&sealed, trusted()) else { return };
    runnable(&b);
    // What decoded and passed the checks encodes, signs and verifies back to itself.
    let again = bundle::seal(b.manifest(), vector_key()).expect("a verified manifest seals again");
    let b2 = bundle::verify(&again, trusted()).expect("a resealed manifest verifies");
    assert_eq!(b2.manifest(), b.manifest(), "encode/decode round trip changed the manifest");
}

/// What the daemon does with a verified bundle must work: "a bundle that verifies is one the data
/// plane can run without a surprise" (src/bundle/model.rs).
fn runnable(b: &bundle::Bundle) {
    let mut config = Config::default();
    // The smallest tables: this is about building, not capacity, and keeps executions fast.
    config.throttle.table_entries = u32::try_from(gatelet::throttle::MIN_TABLE_ENTRIES).expect("small");
    config.auth.token_cache_entries = 1;
    gatelet::server::Active::new(b.clone(), &config, 0).expect("a verified bundle builds its data plane");
    let m = b.manifest();
    let header = format::Header { version: format::VERSION, flags: 0, key_id: b.key_id(), payload_len: 0 };
    let _ = bundle::inspect_json(&header, m, true);
    for api in &m.apis {
        // Contexts are checked to be normal, so the router sees them as the client's paths do.
        assert_eq!(router::normalize_path(&api.context).as_deref(), Ok(api.context.as_str()), "context");
        let endpoints = api.operations.iter().flat_map(|o| o.production.iter().chain(&o.sandbox));
        for ep in api.production.iter().chain(&api.sandbox).chain(endpoints) {
            for url in &ep.urls {
                // Parsed as the bundle decoded: its text parses again to the same URL.
                assert_eq!(bundle::model::HttpUrl::parse(url.as_str()).as_ref(), Ok(url), "endpoint URL");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// token: JWS parsing, claims, authorisation.

/// The issuer of `tests/common`'s fixture (key seed 2, same `iss` and audience), so tokens the
/// gateway tests mint are valid here too.
pub const TOKEN_ISSUER: &str = "https://issuer.test/";
/// The time tokens are checked at (2026-11-19); seeds are minted for it.
pub const TOKEN_NOW: u64 = 1_795_000_000;
const SKEW_S: u64 = 60;

fn issuer_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&[2; 32]))
}

fn endpoints() -> Option<Endpoints> {
    Some(Endpoints {
        kind: EndpointKind::Single,
        urls: vec![gatelet::url::HttpUrl::parse("http://127.0.0.1:8080/backend").expect("valid")],
        timeout_ms: None,
        retries: 0,
        basic_auth: None,
    })
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

fn api(name: &str, version: &str, context: &str, operations: Vec<Operation>) -> Api {
    Api {
        name: name.into(),
        version: version.into(),
        context: context.into(),
        tier: None,
        disable_security: false,
        auth_header: None,
        production: endpoints(),
        sandbox: None,
        cors: None,
        operations,
        https_only: false,
        api_key_locations: Vec::new(),
    }
}

fn token_manifest() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| {
        let m = Manifest {
            label: "fuzz".into(),
            serial: 1,
            created_at: TOKEN_NOW - 3600,
            issuers: vec![
                Issuer {
                    name: "test".into(),
                    issuer: TOKEN_ISSUER.into(),
                    audience: Some("gatelet".into()),
                    keys: vec![IssuerKey::ed25519(
                        gatelet::keys::jwk_thumbprint(&issuer_key().verifying_key()),
                        issuer_key().verifying_key().to_bytes(),
                    )],
                    validate_subscription: true,
                    algorithms: Vec::new(),
                    tokens: true,
                    api_keys: false,
                },
                Issuer {
                    name: "open".into(),
                    issuer: "https://open.test/".into(),
                    audience: None,
                    keys: vec![IssuerKey::ed25519(
                        "open-1".into(),
                        SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes(),
                    )],
                    validate_subscription: false,
                    algorithms: Vec::new(),
                    tokens: true,
                    api_keys: false,
                },
            ],
            policies: vec![],
            apis: vec![
                api(
                    "Shop",
                    "1.0.0",
                    "/shop/1.0.0",
                    vec![
                        op(Method::Get, "/items/{id}", &[]),
                        op(Method::Get, "/admin", &[&["shop:admin"]]),
                        op(Method::Post, "/items", &[&["shop:write", "shop:read"], &["shop:admin"]]),
                    ],
                ),
                api("Other", "2", "/other/2", vec![op(Method::Get, "/x", &[])]),
            ],
            revoked_jti: vec!["revoked-1".into()],
            scope_rule: ScopeRule::AllOf,
            default_subscription_tier: None,
        };
        m.check().expect("the token fixture is a valid manifest");
        m
    })
}

/// The token target's manifest and a fresh validator for it (a small cache, so that every input
/// starts from an empty one and replays the same way).
pub fn token_fixture() -> (&'static Manifest, Validator) {
    let m = token_manifest();
    (m, Validator::new(m, &ValidatorConfig { clock_skew_s: SKEW_S, cache_capacity: 8 }))
}

/// A token with the fixture's usual claims, as `tests/common`'s `Fixture::token` mints them.
pub fn fixture_claims() -> serde_json::Map<String, Value> {
    json!({
        "iss": TOKEN_ISSUER,
        "sub": "alice",
        "aud": "gatelet",
        "exp": TOKEN_NOW + 600,
        "iat": TOKEN_NOW,
        "jti": "jti-1",
        "scope": "shop:read shop:write",
        "application": {"id": "app-1", "name": "App", "tier": "Unlimited", "owner": "alice"},
        "subscribedAPIs": [{"name": "Shop", "version": "1.0.0", "subscriptionTier": "Gold"}],
    })
    .as_object()
    .expect("an object literal")
    .clone()
}

/// The signing input of a token from its header and payload bytes, as an issuer writes it.
fn signed(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let input =
        format!("{}.{}", Base64UrlUnpadded::encode_string(header), Base64UrlUnpadded::encode_string(payload));
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", Base64UrlUnpadded::encode_string(&sig.to_bytes()))
}

/// Input shapes:
/// - starting with `{`: a protected header and a payload, separated by the first newline, which
///   the harness signs with the fixture issuer's key (or, when the payload begins
///   `{"iss":"https://open.test/"`, with the second issuer's, which checks no audience and no
///   subscription): this reaches the claim rules and authorisation, which only signed tokens reach;
/// - anything else: the token as it arrives in `Authorization: Bearer` (UTF-8, else dropped).
///
/// Checked: a token is never accepted with a non-canonical signature encoding; an accepted token
/// meets every rule the validator promises (issuer, audience, time, revocation, subscription,
/// scopes); the cached answer equals the uncached one.
pub fn token(data: &[u8]) {
    let (m, validator) = token_fixture();
    let (token, header_payload) = match data.split_first() {
        Some((b'{', _)) => {
            let (h, p) = match data.iter().position(|&b| b == b'\n') {
                Some(nl) => (&data[..nl], &data[nl + 1..]),
                None => (data, &b""[..]),
            };
            let key = if p.starts_with(br#"{"iss":"https://open.test/""#) {
                SigningKey::from_bytes(&[3; 32])
            } else {
                issuer_key().clone()
            };
            (signed(&key, h, p), Some((h, p)))
        }
        _ => match std::str::from_utf8(data) {
            Ok(s) => (s.to_owned(), None),
            Err(_) => return,
        },
    };
    if let Some(t) = gatelet::token::bearer_token(&token) {
        assert!(!t.is_empty() && !t.starts_with(' ') && !t.ends_with(' '), "bearer_token: {t:?}");
    }
    let uncached = validator.verify_uncached(&token, TOKEN_NOW);
    for (ai, a) in m.apis.iter().enumerate() {
        for (oi, o) in a.operations.iter().enumerate() {
            let first = validator.validate(&token, a, o, TOKEN_NOW);
            let cached = validator.validate(&token, a, o, TOKEN_NOW);
            assert_eq!(
                outcome(&first),
                outcome(&cached),
                "cached answer differs for API {ai} operation {oi}"
            );
            match (&first, &uncached) {
                (Ok(_), Ok(_)) => {}
                (Err(e), Err(u)) => assert_eq!(e, u, "cached and uncached verification disagree"),
                (Err(_), Ok(_)) => {} // authorisation refused a verified token
                (Ok(_), Err(u)) => panic!("validate accepted what verify_uncached refused: {u:?}"),
            }
            let Ok(p) = first else { continue };
            let t = p.token();
            let _ = gatelet::token::decision_json(&Ok(p.clone()));
            // Only signed input reaches here: the raw form must be byte-for-byte canonical.
            if header_payload.is_none() {
                let sig = token.rsplit('.').next().expect("three segments");
                let bytes = Base64UrlUnpadded::decode_vec(sig).expect("accepted signature decodes");
                assert_eq!(Base64UrlUnpadded::encode_string(&bytes), sig, "non-canonical signature accepted");
            }
            let issuer = m.issuers.iter().find(|i| i.name == t.issuer).expect("issuer of the bundle");
            assert!(issuer.keys.iter().any(|k| k.kid == t.kid), "key of that issuer");
            assert!(TOKEN_NOW < t.expires_at.saturating_add(SKEW_S), "expired token accepted");
            assert!(t.not_before.is_none_or(|nbf| nbf <= TOKEN_NOW + SKEW_S), "nbf");
            assert!(t.issued_at.is_none_or(|iat| iat <= TOKEN_NOW + SKEW_S), "iat");
            assert!(t.jti.as_deref().is_none_or(|j| !m.revoked_jti.iter().any(|r| r == j)), "revoked");
            if issuer.validate_subscription {
                let s = p.subscription().expect("a subscription where the issuer validates them");
                assert!(s.name == a.name && (s.version == a.version || s.version == "*"), "subscribed");
            }
            assert!(
                o.scopes.is_empty()
                    || o.scopes.iter().any(|alt| alt.iter().all(|need| t.scopes.contains(need))),
                "accepted without the operation's scopes"
            );
            if let Some((_, payload)) = header_payload {
                // The claims the validator read are the payload's.
                let claims: Value = serde_json::from_slice(payload).expect("accepted payload is JSON");
                if let Some(aud) = &issuer.audience {
                    let ok = match &claims["aud"] {
                        Value::String(s) => s == aud,
                        Value::Array(v) => v.iter().any(|x| x.as_str() == Some(aud)),
                        _ => false,
                    };
                    assert!(ok, "audience {aud:?} missing from {:?}", claims["aud"]);
                }
                assert_eq!(claims["sub"].as_str(), Some(t.subject.as_str()), "subject");
                assert_eq!(claims["iss"].as_str(), Some(issuer.issuer.as_str()), "iss");
            }
        }
    }
}

fn outcome<T>(r: &Result<T, TokenError>) -> Result<(), TokenError> {
    r.as_ref().map(|_| ()).map_err(Clone::clone)
}

// ---------------------------------------------------------------------------------------------
// router: normalisation and routing.

/// The router target's fixed manifest (five APIs whose contexts nest and overlap) and its router.
pub fn router_fixture() -> &'static (Manifest, Router) {
    static R: OnceLock<(Manifest, Router)> = OnceLock::new();
    R.get_or_init(|| {
        let m = Manifest {
            label: "fuzz".into(),
            serial: 1,
            created_at: 0,
            issuers: vec![],
            policies: vec![Policy {
                level: PolicyLevel::Api,
                name: "10PerMin".into(),
                requests: 10,
                window_s: 60,
                stop_on_quota_reach: true,
            }],
            apis: vec![
                api(
                    "Shop",
                    "1.0.0",
                    "/shop/1.0.0",
                    vec![
                        op(Method::Get, "/items/{id}", &[]),
                        op(Method::Post, "/items", &[]),
                        op(Method::Get, "/items/latest", &[]),
                        op(Method::Get, "/files/{name}.{ext}", &[]),
                        op(Method::Get, "/pet/test.{petId}", &[]),
                        op(Method::Get, "/", &[]),
                    ],
                ),
                api(
                    "ShopLegacy",
                    "0",
                    "/shop",
                    vec![op(Method::Get, "/{any}", &[]), op(Method::Get, "/1.0.0/x", &[])],
                ),
                api(
                    "Svc",
                    "1",
                    "/svc/1",
                    vec![
                        op(Method::Get, "/{a}/{b}", &[]),
                        op(Method::Get, "/public", &[]),
                        op(Method::Delete, "/{a}", &[]),
                    ],
                ),
                api("SvcAdmin", "1", "/svc/1/admin", vec![op(Method::Get, "/users", &[&["admin"]])]),
                api(
                    "Odd",
                    "1",
                    "/o,v=1/a.b~c",
                    vec![op(Method::Put, "/{x}/y", &[]), op(Method::Get, "/", &[])],
                ),
            ],
            revoked_jti: vec![],
            scope_rule: ScopeRule::AllOf,
            default_subscription_tier: None,
        };
        m.check().expect("the router fixture is a valid manifest");
        let r = Router::new(&m);
        (m, r)
    })
}

const METHODS: [&str; 10] =
    ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "get", "CONNECT"];

/// Input: a method selector byte, then the request target's path (UTF-8, lossily).
///
/// Checked: normalising twice changes nothing; a normal path starts with `/`, is ASCII, and has no
/// empty (`//`), `.` or `..` segment; a routed path lies inside its API's context, under the
/// longest context that contains it, and matches its operation's template segment by segment.
pub fn route(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let method = METHODS[usize::from(sel) % METHODS.len()];
    let raw = String::from_utf8_lossy(rest);
    let Ok(path) = router::normalize_path(&raw) else { return };
    assert_eq!(router::normalize_path(&path).as_deref(), Ok(path.as_str()), "not idempotent on {raw:?}");
    assert!(path.starts_with('/') && path.is_ascii(), "{path:?}");
    assert!(path == "/" || !path.ends_with('/'), "trailing slash kept: {path:?}");
    // A path parameter is refused, never routed: servlet backends would strip it and serve
    // another resource than the one routed (`/admin;x/users`).
    assert!(!path.contains(';'), "path parameter routed: {path:?} from {raw:?}");
    for seg in path[1..].split('/') {
        assert!(path == "/" || !seg.is_empty(), "empty segment in {path:?} from {raw:?}");
        assert!(seg != "." && seg != "..", "dot segment in {path:?} from {raw:?}");
    }
    let (m, r) = router_fixture();
    let Ok(route) = r.route(&path, method) else { return };
    let (a, o) = router::operation(m, route).expect("a route points into the manifest");
    let resource = Router::strip_context(&a.context, &path).expect("routed path lies inside its context");
    assert!(
        path == a.context || path.starts_with(&format!("{}/", a.context)),
        "{path:?} outside {:?}",
        a.context
    );
    for other in &m.apis {
        assert!(
            other.context.len() <= a.context.len() || Router::strip_context(&other.context, &path).is_none(),
            "{path:?} routed to {:?} though the longer context {:?} contains it",
            a.context,
            other.context
        );
    }
    assert_eq!(o.method.as_str(), method, "method");
    let got: Vec<&str> = resource.split('/').filter(|s| !s.is_empty()).collect();
    let want: Vec<&str> = o.path.split('/').filter(|s| !s.is_empty()).collect();
    assert_eq!(got.len(), want.len(), "{path:?} against template {:?}", o.path);
    for (g, w) in got.iter().zip(&want) {
        assert!(segment_fits(g, w), "{path:?}: segment {g:?} against {w:?}");
    }
}

/// Whether a request segment fits a template segment, written apart from the router: literal
/// pieces in order, each `{param}` standing for one or more characters (tried every way).
fn segment_fits(got: &str, template: &str) -> bool {
    if !template.contains('{') {
        return got == template;
    }
    // Split into literal pieces; a parameter sits between consecutive pieces.
    let mut pieces: Vec<(&str, bool)> = Vec::new(); // (literal, followed by a parameter)
    let mut rest = template;
    loop {
        match rest.find('{') {
            None => {
                pieces.push((rest, false));
                break;
            }
            Some(i) => {
                pieces.push((&rest[..i], true));
                let close = rest[i..].find('}').map_or(rest.len(), |c| i + c + 1);
                rest = &rest[close..];
            }
        }
    }
    fn fit(g: &[u8], pieces: &[(&str, bool)]) -> bool {
        let Some(((lit, param), more)) = pieces.split_first() else { return g.is_empty() };
        let Some(after) = g.strip_prefix(lit.as_bytes()) else { return false };
        if !param {
            return fit(after, more);
        }
        (1..=after.len()).any(|k| fit(&after[k..], more))
    }
    fit(got.as_bytes(), &pieces)
}

// ---------------------------------------------------------------------------------------------
// config: the device's gatelet.toml.

/// Input: TOML text, optionally followed by a NUL and `NAME=value` lines used as the environment.
///
/// Checked: a configuration that resolves serialises back to TOML that resolves to the same
/// configuration (nothing read is lost or changed by the defaults and environment), and the same
/// text resolves the same way twice.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (toml_text, env_text) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let origin = Path::new("fuzz.toml");
    let cli = Overrides::default();
    let first = Config::resolve_text(toml_text, origin, env.clone(), &cli);
    let second = Config::resolve_text(toml_text, origin, env, &cli);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "same input, different configuration"),
        (Err(a), Err(b)) => assert_eq!(a.0, b.0),
        _ => panic!("same input, different outcome"),
    }
    let Ok(c) = first else { return };
    let written = to_toml(&c);
    let reread = Config::resolve_text(&written, origin, Vec::new(), &cli)
        .unwrap_or_else(|e| panic!("a resolved configuration does not resolve again: {e}\n{written}"));
    assert_eq!(reread, c, "round trip through TOML changed the configuration");
}

/// A configuration as TOML text. gatelet builds `toml` without its writer (footprint), so this is
/// a small one for the shapes a `Config` has: sections of strings, integers, booleans and lists.
pub fn to_toml(c: &Config) -> String {
    fn value(v: &toml::Value) -> String {
        match v {
            toml::Value::String(s) => {
                let mut out = String::from("\"");
                for ch in s.chars() {
                    match ch {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if c.is_control() => out.push_str(&format!("\\U{:08X}", u32::from(c))),
                        c => out.push(c),
                    }
                }
                out.push('"');
                out
            }
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) => format!("[{}]", a.iter().map(value).collect::<Vec<_>>().join(", ")),
            other => panic!("a configuration value of an unexpected type: {other:?}"),
        }
    }
    let table = toml::Table::try_from(c).expect("a configuration converts to a TOML table");
    let mut out = String::new();
    for (section, keys) in &table {
        let keys = keys.as_table().expect("every top-level key is a section");
        out.push_str(&format!("[{section}]\n"));
        for (k, v) in keys {
            out.push_str(&format!("{k} = {}\n", value(v)));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// framing: the HTTP head framing guard.

/// Input: a split position (two bytes, little-endian), then the bytes a client sends.
///
/// Checked: the guard's verdict does not depend on how the bytes are split into reads (TCP
/// segmentation is the client's to choose, so a split must never turn a refusal into a pass).
pub fn framing(data: &[u8]) {
    let Some((split, stream)) = data.split_first_chunk::<2>() else { return };
    let split = usize::from(u16::from_le_bytes(*split));
    let whole = guard::fuzz_framing(stream, stream.len());
    let parts = guard::fuzz_framing(stream, split);
    assert_eq!(whole, parts, "verdict depends on the read split at {split}");
}

// ---------------------------------------------------------------------------------------------
// Seeds.

/// The seed corpus of every target, as (target, file name, bytes). `tests/fuzz_regressions.rs`
/// writes them under `fuzz/seeds/` when asked to (see there); `root` is the repository.
pub fn seeds(root: &Path) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    // bundle: every test vector, valid and invalid.
    let vectors = root.join("bundle-format/vectors");
    let mut files = vec![vectors.join("valid.glb")];
    let mut invalid: Vec<_> = std::fs::read_dir(vectors.join("invalid"))
        .expect("bundle-format/vectors/invalid")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "glb"))
        .collect();
    invalid.sort();
    files.extend(invalid);
    for f in files {
        let name = f.file_name().expect("file name").to_string_lossy().into_owned();
        out.push(("bundle", name, std::fs::read(&f).expect("vector")));
    }

    // token: minted as the gateway tests mint them, raw and as header/payload to sign.
    let kid = gatelet::keys::jwk_thumbprint(&issuer_key().verifying_key());
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string();
    let mut claim_sets: Vec<(&str, serde_json::Map<String, Value>)> = vec![("fixture", fixture_claims())];
    let mut edit = |name, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = fixture_claims();
        f(&mut c);
        claim_sets.push((name, c));
    };
    edit("admin-scope", &|c| {
        c.insert("scope".into(), "shop:admin".into());
    });
    edit("expired", &|c| {
        c.insert("exp".into(), (TOKEN_NOW - 3600).into());
    });
    edit("nbf-ahead", &|c| {
        c.insert("nbf".into(), (TOKEN_NOW + 3600).into());
    });
    edit("revoked", &|c| {
        c.insert("jti".into(), "revoked-1".into());
    });
    edit("aud-array", &|c| {
        c.insert("aud".into(), json!(["x", "gatelet"]));
    });
    edit("wildcard-version", &|c| {
        c.insert(
            "subscribedAPIs".into(),
            json!([{"name": "Shop", "version": "*"}, {"name": "Other", "version": "2"}]),
        );
    });
    edit("sandbox", &|c| {
        c.insert("keytype".into(), "SANDBOX".into());
    });
    for (name, claims) in &claim_sets {
        let payload = Value::Object(claims.clone()).to_string();
        out.push((
            "token",
            format!("{name}.jwt"),
            signed(issuer_key(), header.as_bytes(), payload.as_bytes()).into_bytes(),
        ));
        out.push(("token", format!("{name}.signme"), format!("{header}\n{payload}").into_bytes()));
    }
    let open = json!({"iss": "https://open.test/", "sub": "bob", "exp": TOKEN_NOW + 60}).to_string();
    out.push((
        "token",
        "open-issuer.signme".into(),
        format!("{{\"alg\":\"Ed25519\",\"kid\":\"open-1\"}}\n{open}").into_bytes(),
    ));
    // RFC 8037 A.4: a real Ed25519 JWS from another key (its payload is not JSON claims).
    out.push((
        "token",
        "rfc8037-a4.jwt".into(),
        b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg".to_vec(),
    ));
    out.push((
        "token",
        "alg-none.jwt".into(),
        b"eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0LyJ9.".to_vec(),
    ));

    // router: a method selector, then a path; the shapes the review tried.
    let paths: &[&str] = &[
        "/shop/1.0.0/items/42",
        "/shop/1.0.0/items/latest",
        "/shop/1.0.0//items/./42/",
        "/shop/1.0.0/items/../items/%34%32",
        "/shop/x/../1.0.0/items/1",
        "/shop/1.0.0/%2e%2e/1.0.0/x",
        "/shop/1.0.0/items/%2F",
        "/shop/1.0.0/items/caf\u{e9}",
        "/svc/1/admin/users",
        "/svc/1/admin;x/users",
        "/svc/1/admin/users;jsessionid=1",
        "/svc/1/public",
        "/svc/1/..;/admin/users",
        "/shop/1.0.0/files/report.tar.gz",
        "/shop/1.0.0/files/.x",
        "/shop/1.0.0/pet/test.42",
        "/o,v=1/a.b~c/z/y",
        "/o,v=1/a%2Eb~c/",
        "/../../etc/passwd",
        "//shop//1.0.0//items//7",
        "/shop/1.0.0/items/a%20b%zz",
    ];
    for (i, p) in paths.iter().enumerate() {
        let mut bytes = vec![if p.contains("items/4") && i % 2 == 1 { 1 } else { 0 }];
        bytes.extend_from_slice(p.as_bytes());
        out.push(("router", format!("path-{i:02}"), bytes));
    }
    out.push(("router", "post-items".into(), b"\x01/shop/1.0.0/items".to_vec()));
    out.push(("router", "delete-svc".into(), b"\x03/svc/1/x".to_vec()));

    // config: the defaults written out, the brief's example, the test fixture's, and overrides.
    out.push(("config", "defaults.toml".into(), to_toml(&Config::default()).into_bytes()));
    out.push(("config", "product-example.toml".into(), PRODUCT_EXAMPLE.as_bytes().to_vec()));
    out.push(("config", "test-fixture.toml".into(), TEST_FIXTURE.as_bytes().to_vec()));
    out.push((
        "config",
        "env-overrides".into(),
        format!(
            "{TEST_FIXTURE}\0GATELET_SERVER_LISTEN=127.0.0.1:8080\nGATELET_BUNDLE_TRUSTED_KEYS=/a.pub, /b.pub\n\
             GATELET_SERVER_RATELIMIT_HEADERS=no\nGATELET_USAGE_MAX_SPOOL_BYTES=1048576\nGATELET_LOG_LEVEL=debug\n"
        )
        .into_bytes(),
    ));
    out.push(("config", "empty".into(), Vec::new()));

    // framing: the guard's own unit-test streams, split in the middle.
    let streams: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A : a\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX",
        b"\r\n\nGET / HTTP/1.1\n\nPOST / HTTP/1.1\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n",
    ];
    for (i, s) in streams.iter().enumerate() {
        let split = u16::try_from(s.len() / 2).expect("short stream");
        let mut bytes = split.to_le_bytes().to_vec();
        bytes.extend_from_slice(s);
        out.push(("framing", format!("stream-{i:02}"), bytes));
    }
    out
}

/// PRODUCT.md section 2's example configuration.
const PRODUCT_EXAMPLE: &str = r#"[server]
listen = "0.0.0.0:9090"
listen_tls = ""
tls_cert = "/etc/gatelet/tls.crt"
tls_key = "/etc/gatelet/tls.key"
admin_listen = "127.0.0.1:9091"
max_connections = 1024
[bundle]
path = "/var/lib/gatelet/bundle.glb"
trusted_keys = ["/etc/gatelet/publisher.pub"]
inbox = "/var/lib/gatelet/inbox"
[state]
dir = "/var/lib/gatelet/state"
[auth]
clock_skew_s = 60
[usage]
spool_dir = "/var/lib/gatelet/spool"
max_spool_bytes = 67108864
flush_interval_ms = 1000
rotate_bytes = 262144
rotate_interval_s = 300
upload_url = ""
upload_interval_s = 300
device_id = ""
[log]
level = "info"
"#;

/// The shape `tests/common`'s fixture writes.
const TEST_FIXTURE: &str = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nheader_read_timeout_ms = 1500\n\
backend_timeout_ms = 1000\nbackend_connect_timeout_ms = 500\ndrain_timeout_s = 10\nthreads = 2\n\n\
[bundle]\npath = \"/tmp/g/bundle.glb\"\ntrusted_keys = [\"/tmp/g/publisher.pub\"]\ninbox = \"/tmp/g/inbox\"\ninbox_poll_ms = 100\n\
[state]\ndir = \"/tmp/g/state\"\n[usage]\nspool_dir = \"/tmp/g/spool\"\nflush_interval_ms = 100\n[log]\nlevel = \"debug\"\n";
