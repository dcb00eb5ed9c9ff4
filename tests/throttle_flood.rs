//! A flood of 1,000,000 distinct client addresses through a throttle table of 4,096 entries:
//! memory stays flat (same bytes, not one allocation), established clients are still throttled
//! to exactly their quota, the flood gets no more than the table's free entries and the overflow
//! buckets' quota, and authenticated callers, in their own tables, are untouched.
//!
//! Allocations are counted by a wrapping global allocator; this file holds a single test so
//! nothing else runs while it counts.

use std::alloc::System;
use std::net::{IpAddr, Ipv4Addr};

use gatelet::bundle::model::{
    Api, EndpointKind, Endpoints, Manifest, Method, Operation, Policy, PolicyLevel,
};
use gatelet::throttle::{
    Caller, Cause, Decision, Level, OVERFLOW_BUCKETS, Request, Throttle, ThrottleConfig,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const T0: u64 = 1_764_000_000_000;
const FLOOD: u32 = 1_000_000;
const TABLE: usize = 4096;
const ESTABLISHED: u32 = 50;
const QUOTA: u64 = 100;

fn manifest() -> Manifest {
    let policy = |level, name: &str| Policy {
        level,
        name: name.into(),
        requests: QUOTA,
        window_s: 60,
        stop_on_quota_reach: true,
    };
    Manifest {
        label: "flood".into(),
        serial: 1,
        created_at: 0,
        issuers: vec![],
        policies: vec![
            policy(PolicyLevel::Subscription, "Unauthenticated"),
            policy(PolicyLevel::Application, "App"),
        ],
        apis: vec![Api {
            name: "open".into(),
            version: "1.0.0".into(),
            context: "/open/1.0.0".into(),
            tier: None,
            disable_security: true,
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
                path: "/".into(),
                tier: None,
                disable_security: true,
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

fn from(ip: u32) -> Request<'static> {
    Request { api: 0, operation: 0, caller: Caller::Anonymous { client_ip: IpAddr::V4(Ipv4Addr::from(ip)) } }
}

#[test]
fn million_distinct_keys_through_a_small_table() {
    let config = ThrottleConfig { unauthenticated_entries: TABLE, ..ThrottleConfig::default() };
    let throttle = Throttle::new(&manifest(), &config).expect("valid");
    let established = |i: u32| from(0x0a00_0000 + i); // 10.0.0.x
    // 100.64.0.0/10 and up: never 10.0.0.x; 3,907 /24 networks, so every overflow bucket is reached.
    let flood = |i: u32| from(0x6440_0000 + i);
    let app = Request {
        api: 0,
        operation: 0,
        caller: Caller::Token {
            issuer: "flood",
            app_id: "app",
            subject: "alice",
            application_tier: Some("App"),
            subscription_tier: None,
        },
    };

    // Before the flood, each established client spends 40 of its 100.
    for i in 0..ESTABLISHED {
        for _ in 0..40 {
            assert!(matches!(throttle.check(&established(i), T0), Decision::Allow(_)));
        }
    }
    let before = throttle.metrics(T0);

    let mut passed = [0u64; ESTABLISHED as usize];
    let mut refused_quota = [0u64; ESTABLISHED as usize];
    let mut app_passed = 0u64;
    let (mut flood_in, mut flood_full) = (0u64, 0u64);
    let region = Region::new(GLOBAL);
    for n in 0..FLOOD {
        // The whole flood inside one 60 s window: no entry expires, the table stays full.
        let now = T0 + u64::from(n) / 20;
        match throttle.check(&flood(n), now) {
            Decision::Allow(_) => flood_in += 1,
            Decision::Throttle(t) if t.cause == Cause::TableFull && t.level == Level::Unauthenticated => {
                flood_full += 1
            }
            other => panic!("flood key {n}: {other:?}"),
        }
        // Every 10,000 flood keys, each established client and the app try once more.
        if n % 10_000 == 0 {
            for i in 0..ESTABLISHED {
                match throttle.check(&established(i), now) {
                    Decision::Allow(_) => passed[i as usize] += 1,
                    Decision::Throttle(t) if t.cause == Cause::QuotaExceeded => {
                        refused_quota[i as usize] += 1
                    }
                    other => panic!("established {i}: {other:?}"),
                }
            }
            app_passed += u64::from(matches!(throttle.check(&app, now), Decision::Allow(_)));
        }
    }
    let change = region.change();
    let after = throttle.metrics(T0 + 50_000);

    assert_eq!((change.allocations, change.reallocations), (0, 0), "{change:?}");
    assert_eq!(after.bytes, before.bytes);
    let anon = after.tables[2];
    assert_eq!(anon.capacity, TABLE);
    // Every overflow bucket was spent, exactly: the flood got its quota there and no more.
    assert_eq!(anon.overflow, OVERFLOW_BUCKETS as u64 * QUOTA, "{anon:?}");
    // The rest of what passed went to keys that found a free entry.
    let in_slots = flood_in - anon.overflow;
    assert!(anon.live <= TABLE && anon.live as u64 == u64::from(ESTABLISHED) + in_slots, "{anon:?}");
    // A million keys fill every shard.
    assert_eq!(anon.live, TABLE, "{anon:?}");
    assert_eq!(flood_in + flood_full, u64::from(FLOOD));
    assert_eq!(anon.full, flood_full);

    // 100 attempts each during the flood: exactly the 60 left of their quota passed.
    assert_eq!(passed, [QUOTA - 40; ESTABLISHED as usize]);
    assert_eq!(refused_quota, [40; ESTABLISHED as usize]);
    // The authenticated app, in its own table, got its whole quota.
    assert_eq!(app_passed, QUOTA);

    // The window ends: the entries stay with the keys seen in it for one more window, so a
    // newcomer is served under the refilled overflow buckets, and established clients in their
    // own entries.
    assert!(matches!(throttle.check(&flood(FLOOD + 1), T0 + 60_000), Decision::Allow(_)));
    assert!(matches!(throttle.check(&established(0), T0 + 60_000), Decision::Allow(_)));
    assert_eq!(throttle.metrics(T0 + 60_000).tables[2].overflow, anon.overflow + 1);
}
