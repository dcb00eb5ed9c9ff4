//! Property tests (proptest) for three promises gatelet makes:
//!
//! - paths are normalised once, idempotently, and a routed path never leaves its API's context
//!   (PRODUCT.md section 5, "Paths are normalised once");
//! - any single-bit change of a signed bundle is refused (section 1, "refuses anything tampered");
//! - a limit of N admits at most N per window, whatever the interleaving of callers and times
//!   (section 5, "never N+1"), and exactly what a simple model of WSO2's fixed windows admits.
//!
//! Case counts keep the file well under a minute in a debug build; `PROPTEST_CASES` raises them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ed25519_dalek::SigningKey;
use gatelet::bundle::model::{
    Api, EndpointKind, Endpoints, Manifest, Method, Operation, Policy, PolicyLevel, ScopeRule,
};
use gatelet::bundle::{self, Bundle};
use gatelet::router::{self, Router};
use gatelet::throttle::{Caller, Decision, Request, Throttle, ThrottleConfig};
use proptest::prelude::*;
use proptest::sample::select;

fn op(method: Method, path: &str, tier: Option<&str>) -> Operation {
    Operation {
        method,
        path: path.into(),
        tier: tier.map(Into::into),
        disable_security: false,
        scopes: vec![],
        production: None,
        sandbox: None,
        bearer: true,
        api_key: false,
    }
}

fn api(name: &str, context: &str, tier: Option<&str>, operations: Vec<Operation>) -> Api {
    Api {
        name: name.into(),
        version: "1".into(),
        context: context.into(),
        tier: tier.map(Into::into),
        disable_security: false,
        auth_header: None,
        production: Some(Endpoints {
            kind: EndpointKind::Single,
            urls: vec![gatelet::url::HttpUrl::parse("http://127.0.0.1:9/").expect("valid")],
            timeout_ms: None,
            retries: 0,
            basic_auth: None,
        }),
        sandbox: None,
        cors: None,
        operations,
        https_only: false,
        api_key_locations: Vec::new(),
    }
}

fn policy(level: PolicyLevel, name: &str, requests: u64, window_s: u32, stop: bool) -> Policy {
    Policy { level, name: name.into(), requests, window_s, stop_on_quota_reach: stop }
}

fn manifest(apis: Vec<Api>, policies: Vec<Policy>) -> Manifest {
    let m = Manifest {
        label: "properties".into(),
        serial: 7,
        created_at: 1_795_000_000,
        issuers: vec![],
        policies,
        apis,
        revoked_jti: vec![],
        scope_rule: ScopeRule::AllOf,
        default_subscription_tier: None,
    };
    m.check().expect("test manifest is valid");
    m
}

// ---------------------------------------------------------------------------------------------
// (a) Path normalisation and routing.

/// Contexts that nest (`/svc/1` and `/svc/1/admin`, `/shop` and `/shop/1.0.0`), each API with
/// parameter templates of one to three segments so that most paths under a context route.
fn routing_manifest() -> Manifest {
    let ops = || {
        vec![
            op(Method::Get, "/", None),
            op(Method::Get, "/{a}", None),
            op(Method::Get, "/{a}/{b}", None),
            op(Method::Get, "/{a}/{b}/{c}", None),
            op(Method::Get, "/items/{id}", None),
        ]
    };
    manifest(
        vec![
            api("Shop", "/shop/1.0.0", None, ops()),
            api("ShopRoot", "/shop", None, ops()),
            api("Svc", "/svc/1", None, ops()),
            api("SvcAdmin", "/svc/1/admin", None, ops()),
            api("Dots", "/a.b/c..d", None, ops()),
        ],
        vec![],
    )
}

/// Path segments chosen to hit the normaliser's cases: contexts' own segments, dot segments
/// raw and percent-encoded, empty segments, escapes of unreserved and reserved bytes, non-ASCII,
/// path parameters, and near-dots that are ordinary names.
const SEGMENTS: &[&str] = &[
    "",
    "",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2E",
    "%2E.",
    "shop",
    "1.0.0",
    "svc",
    "1",
    "admin",
    "items",
    "42",
    "a.b",
    "c..d",
    "...",
    ".a",
    "a.",
    "%41",
    "%7e",
    "%7E",
    "%20",
    "%3B",
    "%25",
    "caf\u{e9}",
    "x;y",
    "admin;x",
    "~",
    "-_",
    "users",
    "%C3%A9",
    "%c3%a9",
    "%3a",
];

fn raw_path() -> impl Strategy<Value = String> {
    prop::collection::vec(select(SEGMENTS), 0..10).prop_map(|segs| format!("/{}", segs.join("/")))
}

/// What RFC 3986 §5.2.4 and §6.2.2 make of a path built from [`SEGMENTS`], computed on its own:
/// unreserved escapes decoded, other escapes upper-cased, non-ASCII encoded, empty segments
/// dropped, dot segments resolved without climbing above the root.
fn model_normalise(raw: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for seg in raw.split('/') {
        let mut s = String::new();
        let b = seg.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let v = u8::from_str_radix(&seg[i + 1..i + 3], 16).expect("SEGMENTS has valid escapes");
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    s.push(char::from(v));
                } else {
                    s.push_str(&format!("%{v:02X}"));
                }
                i += 3;
            } else if b[i] >= 0x80 {
                s.push_str(&format!("%{:02X}", b[i]));
                i += 1;
            } else {
                s.push(char::from(b[i]));
                i += 1;
            }
        }
        match s.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn normalisation_is_idempotent_and_never_routes_outside_a_context(raw in raw_path()) {
        let m = routing_manifest();
        let router = Router::new(&m);
        let Ok(n) = router::normalize_path(&raw) else { return Ok(()) };
        prop_assert_eq!(router::normalize_path(&n), Ok(n.clone()), "idempotent");
        prop_assert_eq!(&n, &model_normalise(&raw), "RFC 3986 normal form");
        prop_assert!(n.starts_with('/'));
        prop_assert!(!n.contains("//"), "{n:?}");
        prop_assert!(n.split('/').all(|s| s != "." && s != ".."), "{n:?}");
        if let Ok(route) = router.route(&n, "GET") {
            let context = &m.apis[route.api].context;
            prop_assert!(
                n == *context || n.starts_with(&format!("{context}/")),
                "{raw:?} → {n:?} routed to {context:?}"
            );
            // The longest context containing the path is the one that routes it.
            for other in &m.apis {
                let inside = n == other.context || n.starts_with(&format!("{}/", other.context));
                prop_assert!(!inside || other.context.len() <= context.len(), "{n:?}: {:?} is longer", other.context);
            }
        }
    }

    /// Climbing out with `..` from inside a context lands where the model says, and what routes
    /// afterwards is inside the context it routes to: no traversal reaches another API while
    /// still being matched against the first.
    #[test]
    fn dot_segments_cannot_escape_a_context(
        context in select(&["/shop/1.0.0", "/svc/1", "/svc/1/admin", "/a.b/c..d"][..]),
        ups in 0usize..5,
        dots in select(&["..", "%2e%2e", ".%2E", "%2E."][..]),
        tail in prop::collection::vec(select(SEGMENTS), 0..4),
    ) {
        let m = routing_manifest();
        let router = Router::new(&m);
        let raw = format!("{context}/{}{}", format!("{dots}/").repeat(ups), tail.join("/"));
        let Ok(n) = router::normalize_path(&raw) else { return Ok(()) };
        prop_assert_eq!(&n, &model_normalise(&raw));
        if let Ok(route) = router.route(&n, "GET") {
            let c = &m.apis[route.api].context;
            prop_assert!(n == *c || n.starts_with(&format!("{c}/")), "{raw:?} → {n:?} routed to {c:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Bundles: every single-bit change is refused.

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// RFC 8032 §7.1 TEST 1, the signer of `bundle-format/vectors/valid.glb`.
fn vector_key() -> SigningKey {
    let hex = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    let bytes: Vec<u8> =
        (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect();
    SigningKey::from_bytes(&bytes.try_into().expect("32 bytes"))
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let bit = bit % (b.len() * 8);
    b[bit / 8] ^= 1 << (bit % 8);
    b
}

fn verify(bytes: &[u8]) -> Result<Bundle, bundle::BundleError> {
    bundle::verify(bytes, &[vector_key().verifying_key()])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The published valid vector: intact it verifies; with any one bit flipped — magic,
    /// version, flags, key id, length, payload or signature — it is refused.
    #[test]
    fn any_bit_flip_of_the_valid_vector_is_refused(bit in any::<usize>()) {
        let valid = std::fs::read(root().join("bundle-format/vectors/valid.glb")).expect("valid.glb");
        prop_assert!(verify(&valid).is_ok());
        let changed = flip(&valid, bit);
        prop_assert!(verify(&changed).is_err(), "bit {} flipped and still accepted", bit % (valid.len() * 8));
    }

    /// A bundle built here, with a generated label, serial and API set: the same holds.
    #[test]
    fn any_bit_flip_of_a_fresh_bundle_is_refused(
        label in "[a-z0-9 -]{0,24}",
        serial in any::<u64>(),
        apis in 0usize..4,
        bit in any::<usize>(),
    ) {
        let apis = (0..apis)
            .map(|i| api(&format!("Api{i}"), &format!("/api{i}/v1"), None, vec![op(Method::Get, "/items/{id}", None)]))
            .collect();
        let mut m = manifest(apis, vec![]);
        m.label = label;
        m.serial = serial;
        let sealed = bundle::seal(&m, &vector_key()).expect("seals");
        let b = verify(&sealed).expect("intact bundle verifies");
        prop_assert_eq!(b.manifest(), &m);
        prop_assert!(verify(&flip(&sealed, bit)).is_err(), "bit {} flipped and still accepted", bit % (sealed.len() * 8));
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Throttling: never more than N per window.

/// Route tiers on two APIs, subscription, application and unauthenticated tiers, one of them not
/// stopping (passes over quota, marked). Windows of 1 to 3 s so that generated times cross many.
fn throttle_manifest() -> Manifest {
    manifest(
        vec![
            api("A", "/a", Some("Api3Per1s"), vec![op(Method::Get, "/x", None), op(Method::Get, "/y", None)]),
            api("B", "/b", None, vec![op(Method::Get, "/x", Some("Api5Per2s")), op(Method::Get, "/y", None)]),
        ],
        vec![
            policy(PolicyLevel::Api, "Api3Per1s", 3, 1, true),
            policy(PolicyLevel::Api, "Api5Per2s", 5, 2, true),
            policy(PolicyLevel::Subscription, "Gold", 4, 1, true),
            policy(PolicyLevel::Subscription, "Silver", 2, 3, true),
            policy(PolicyLevel::Subscription, "Unauthenticated", 3, 2, true),
            policy(PolicyLevel::Application, "App6Per3s", 6, 3, true),
            policy(PolicyLevel::Application, "Soft2Per1s", 2, 1, false),
        ],
    )
}

/// A caller, always with the same tiers (as a real application's token carries them).
#[derive(Debug, Clone, Copy)]
struct Profile {
    issuer: &'static str,
    app_id: &'static str,
    subject: &'static str,
    application_tier: Option<&'static str>,
    subscription_tier: Option<&'static str>,
    anonymous: Option<[u8; 4]>,
}

const fn token(
    issuer: &'static str,
    app_id: &'static str,
    subject: &'static str,
    application_tier: Option<&'static str>,
    subscription_tier: Option<&'static str>,
) -> Profile {
    Profile { issuer, app_id, subject, application_tier, subscription_tier, anonymous: None }
}

const fn anonymous(ip: [u8; 4]) -> Profile {
    Profile {
        issuer: "",
        app_id: "",
        subject: "",
        application_tier: None,
        subscription_tier: None,
        anonymous: Some(ip),
    }
}

/// Two users of one application share its subscription; an app-less token's subject holds its
/// own; another issuer's `app1` is another holder; one non-stopping application tier.
const PROFILES: [Profile; 8] = [
    token("central", "app1", "alice", Some("App6Per3s"), Some("Gold")),
    token("central", "app1", "bob", Some("App6Per3s"), Some("Gold")),
    token("central", "app2", "alice", None, Some("Silver")),
    token("central", "", "carol", Some("Soft2Per1s"), Some("Gold")),
    token("partner", "app1", "alice", Some("App6Per3s"), Some("Gold")),
    token("central", "app3", "dave", None, None),
    anonymous([192, 0, 2, 1]),
    anonymous([192, 0, 2, 2]),
];

/// (API, operation) pairs of [`throttle_manifest`].
const ROUTES: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];

fn request(p: &Profile, route: usize) -> Request<'static> {
    let (api, operation) = ROUTES[route];
    let caller = match p.anonymous {
        Some(ip) => Caller::Anonymous { client_ip: IpAddr::V4(Ipv4Addr::from(ip)) },
        None => Caller::Token {
            issuer: p.issuer,
            app_id: p.app_id,
            subject: p.subject,
            application_tier: p.application_tier,
            subscription_tier: p.subscription_tier,
        },
    };
    Request { api, operation, caller }
}

/// The counters a request touches, as WSO2's fixed windows define them (README, "Throttling"):
/// (counter name, quota, window in ms, stops on quota).
fn levels(m: &Manifest, p: &Profile, route: usize) -> Vec<(String, u64, u64, bool)> {
    let (ai, oi) = ROUTES[route];
    let a = &m.apis[ai];
    let tier = |level: PolicyLevel, name: &str| {
        let p = m.policies.iter().find(|p| p.level == level && p.name == name).expect("tier defined");
        (p.requests, u64::from(p.window_s) * 1000, p.stop_on_quota_reach)
    };
    let mut out = Vec::new();
    // An API-level tier overrides operation tiers and is one counter for the whole API.
    match (&a.tier, &a.operations[oi].tier) {
        (Some(t), _) => {
            let (q, w, s) = tier(PolicyLevel::Api, t);
            out.push((format!("api {}", a.name), q, w, s));
        }
        (None, Some(t)) => {
            let (q, w, s) = tier(PolicyLevel::Api, t);
            out.push((format!("resource {} {oi}", a.name), q, w, s));
        }
        (None, None) => {}
    }
    if let Some(ip) = p.anonymous {
        let (q, w, s) = tier(PolicyLevel::Subscription, "Unauthenticated");
        out.push((format!("anonymous {ip:?} {}", a.name), q, w, s));
        return out;
    }
    if let Some(t) = p.subscription_tier {
        let holder =
            if p.app_id.is_empty() { format!("sub {}", p.subject) } else { format!("app {}", p.app_id) };
        let (q, w, s) = tier(PolicyLevel::Subscription, t);
        out.push((format!("subscription {} {holder} {}", p.issuer, a.name), q, w, s));
    }
    if let Some(t) = p.application_tier {
        let (q, w, s) = tier(PolicyLevel::Application, t);
        out.push((format!("application {} {} {}", p.issuer, p.app_id, p.subject), q, w, s));
    }
    out
}

/// Generated traffic: (caller, route, milliseconds since the previous request). Time only moves
/// forward, as the gateway's floored clock reads it; a clock stepped back is the unit test
/// `clock_stepped_back_never_resets_a_count`'s subject (src/throttle/mod.rs).
fn traffic() -> impl Strategy<Value = Vec<(usize, usize, u64)>> {
    prop::collection::vec(
        (0..PROFILES.len(), 0..ROUTES.len(), prop_oneof![4 => 0u64..50, 1 => 0u64..2500]),
        1..300,
    )
}

/// 2026-11-19, a few milliseconds before a second boundary, so the first window is short.
const T0: u64 = 1_795_000_000_000 - 17;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn never_more_than_n_per_window_and_exactly_what_fixed_windows_admit(traffic in traffic()) {
        let m = throttle_manifest();
        let t = Throttle::new(&m, &ThrottleConfig::default()).expect("throttle");
        // Counter name → (window index, count in it): the model.
        let mut model: HashMap<String, (u64, u64)> = HashMap::new();
        // (counter, window index) → requests admitted that the counter's policy stops: the bound.
        let mut admitted: HashMap<(String, u64), u64> = HashMap::new();
        let mut now = T0;
        for (i, &(who, route, gap)) in traffic.iter().enumerate() {
            now += gap;
            let p = &PROFILES[who];
            let lv = levels(&m, p, route);
            let count = |name: &str, w: u64, model: &HashMap<String, (u64, u64)>| {
                model.get(name).filter(|(win, _)| *win == now / w).map_or(0, |(_, c)| *c)
            };
            let refuse = lv.iter().any(|(name, q, w, stop)| *stop && count(name, *w, &model) >= *q);
            let over = lv.iter().any(|(name, q, w, _)| count(name, *w, &model) >= *q);
            let decision = t.check(&request(p, route), now);
            match &decision {
                Decision::Allow(a) => {
                    prop_assert!(!refuse, "request {i} ({p:?}, route {route}) at +{} ms admitted over quota", now - T0);
                    prop_assert_eq!(a.over_quota, over, "request {}: over-quota mark", i);
                    for (name, q, w, stop) in &lv {
                        let c = count(name, *w, &model) + 1;
                        model.insert(name.clone(), (now / w, c));
                        if *stop {
                            let n = admitted.entry((name.clone(), now / w)).or_default();
                            *n += 1;
                            prop_assert!(*n <= *q, "{name}: {n} admitted in one window of {w} ms, limit {q}");
                        }
                    }
                }
                Decision::Throttle(th) => {
                    prop_assert!(refuse, "request {i} ({p:?}, route {route}) refused under quota: {th:?}");
                }
                Decision::Fail(f) => prop_assert!(false, "request {i}: {f}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Real threads on one throttle, every request inside one window: each stopping counter
    /// admits at most its quota whatever the interleaving, and a request that no level limits
    /// always passes. Then the same threads all on API A as a caller without tiers, so that
    /// only API A's counter (3 per second) applies: exactly 3 pass, however many try.
    #[test]
    fn concurrent_callers_never_exceed_n(
        plans in prop::collection::vec(prop::collection::vec((0..PROFILES.len(), 0..ROUTES.len()), 1..60), 2..5),
    ) {
        let m = throttle_manifest();
        // 1 ms into a window that is a multiple of every policy's (1, 2 and 3 s).
        let now = 1_795_000_000_000u64 / 6000 * 6000 + 1;
        let run = |plans: &[Vec<(usize, usize)>]| -> Vec<(usize, usize, bool)> {
            let t = Throttle::new(&m, &ThrottleConfig::default()).expect("throttle");
            std::thread::scope(|s| {
                let handles: Vec<_> = plans
                    .iter()
                    .map(|plan| {
                        let t = &t;
                        s.spawn(move || {
                            plan.iter()
                                .map(|&(who, route)| {
                                    let d = t.check(&request(&PROFILES[who], route), now);
                                    (who, route, matches!(d, Decision::Allow(_)))
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles.into_iter().flat_map(|h| h.join().expect("thread")).collect()
            })
        };

        let mut admitted: HashMap<String, (u64, u64)> = HashMap::new();
        for (who, route, ok) in run(&plans) {
            let lv = levels(&m, &PROFILES[who], route);
            if lv.is_empty() {
                prop_assert!(ok, "{:?} on route {route}: no level applies, yet refused", PROFILES[who]);
            }
            if !ok {
                continue;
            }
            for (name, q, _, stop) in lv {
                if stop {
                    admitted.entry(name).or_insert((q, 0)).1 += 1;
                }
            }
        }
        for (name, (q, n)) in &admitted {
            prop_assert!(n <= q, "{name}: {n} admitted in one window, limit {q}");
        }

        // dave (PROFILES[5]) has no tiers: on API A only A's own counter applies.
        let only_a: Vec<Vec<(usize, usize)>> = plans.iter().map(|p| vec![(5, 0); p.len()]).collect();
        let tried = only_a.iter().map(Vec::len).sum::<usize>();
        let passed = run(&only_a).iter().filter(|r| r.2).count();
        prop_assert_eq!(passed, tried.min(3), "API A's 3 per second under {} threads", only_a.len());
    }
}
