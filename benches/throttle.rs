//! One throttling decision (issue target: well under 1 µs).
//!
//! Baselines measured in the same run, so results read as ratios: an uncontended
//! `Mutex<u64>` increment (the floor of any exact shared counter) and a std `HashMap<String, u64>`
//! lookup-and-increment on a WSO2-shaped key (what a naive per-key counter costs, unbounded).
//!
//! `cargo bench --bench throttle`

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use criterion::{Criterion, criterion_group, criterion_main};
use gatelet::bundle::model::{
    Api, EndpointKind, Endpoints, Manifest, Method, Operation, Policy, PolicyLevel,
};
use gatelet::throttle::{Caller, Decision, Request, Throttle, ThrottleConfig};

const NOW: u64 = 1_764_000_000_000;

fn manifest(quota: u64) -> Manifest {
    let policy = |level, name: &str| Policy {
        level,
        name: name.into(),
        requests: quota,
        window_s: 60,
        stop_on_quota_reach: true,
    };
    Manifest {
        label: "bench".into(),
        serial: 1,
        created_at: 0,
        issuers: vec![],
        policies: vec![
            policy(PolicyLevel::Api, "res"),
            policy(PolicyLevel::Subscription, "Gold"),
            policy(PolicyLevel::Subscription, "Unauthenticated"),
            policy(PolicyLevel::Application, "App"),
        ],
        apis: vec![Api {
            name: "shop".into(),
            version: "1.0.0".into(),
            context: "/shop/1.0.0".into(),
            tier: None,
            disable_security: false,
            auth_header: None,
            production: Some(Endpoints {
                kind: EndpointKind::Single,
                urls: vec![gatelet::url::HttpUrl::parse("http://127.0.0.1:1").expect("valid")],
                timeout_ms: None,
                retries: 0,
                basic_auth: None,
            }),
            sandbox: None,
            cors: None,
            operations: vec![Operation {
                method: Method::Get,
                path: "/items".into(),
                tier: Some("res".into()),
                disable_security: false,
                scopes: vec![],
                production: None,
                sandbox: None,
                bearer: true,
                api_key: false,
            }],
            https_only: false,
            api_key_locations: Vec::new(),
        }],
        revoked_jti: vec![],
        scope_rule: gatelet::bundle::model::ScopeRule::AllOf,
        default_subscription_tier: None,
    }
}

const TOKEN: Caller<'static> = Caller::Token {
    issuer: "bench",
    app_id: "7c1f0a2e-58d4-4d43-9a35-1f6f0f1c2b3d",
    subject: "alice@carbon.super",
    application_tier: Some("App"),
    subscription_tier: Some("Gold"),
};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("throttle");

    // Three levels (resource, subscription, application), every one allowing.
    let t = Throttle::new(&manifest(u64::MAX), &ThrottleConfig::default()).expect("valid");
    let r = Request { api: 0, operation: 0, caller: TOKEN };
    g.bench_function("allow_3_levels", |b| {
        b.iter(|| assert!(matches!(t.check(black_box(&r), black_box(NOW)), Decision::Allow(_))))
    });

    // The same three levels, quota spent: the refusal path.
    let t = Throttle::new(&manifest(1), &ThrottleConfig::default()).expect("valid");
    t.check(&r, NOW);
    g.bench_function("throttle_3_levels", |b| {
        b.iter(|| assert!(matches!(t.check(black_box(&r), black_box(NOW)), Decision::Throttle(_))))
    });

    // A new client address meeting a full table: the worst case, a whole shard scanned, then its
    // overflow bucket.
    let config = ThrottleConfig { unauthenticated_entries: 4096, ..ThrottleConfig::default() };
    let t = Throttle::new(&manifest(u64::MAX), &config).expect("valid");
    let anon = |n: u32| Request {
        api: 0,
        operation: 0,
        caller: Caller::Anonymous { client_ip: IpAddr::V4(Ipv4Addr::from(n)) },
    };
    let mut n = 0u32;
    while t.metrics(NOW).tables[2].overflow == 0 {
        t.check(&anon(n), NOW);
        n += 1;
    }
    g.bench_function("new_key_full_table", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(t.check(&anon(n), NOW))
        })
    });

    // Baselines.
    let counter = Mutex::new(0u64);
    g.bench_function("baseline_mutex_u64_increment", |b| {
        b.iter(|| {
            let mut c = black_box(&counter).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *c += 1;
        })
    });
    let mut map: HashMap<String, u64> = (0..4096).map(|i| (format!("app{i}:/shop/1.0.0:1.0.0"), 0)).collect();
    map.insert("7c1f0a2e-58d4-4d43-9a35-1f6f0f1c2b3d:/shop/1.0.0:1.0.0".into(), 0);
    g.bench_function("baseline_hashmap_lookup_increment", |b| {
        b.iter(|| {
            if let Some(v) = map.get_mut(black_box("7c1f0a2e-58d4-4d43-9a35-1f6f0f1c2b3d:/shop/1.0.0:1.0.0"))
            {
                *v += 1;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
