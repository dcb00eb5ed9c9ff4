//! Token validation (issue 3 targets: uncached near ed25519-dalek's own verify cost, cached under
//! 2 µs).
//!
//! Baseline measured in the same run, so results read as ratios: one raw `verify_strict` of the
//! token's signing input with ed25519-dalek, the floor any uncached check pays.
//!
//! `cargo bench --bench token`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signature, SigningKey};
use gatelet::bundle::Manifest;
use gatelet::bundle::model::{Api, EndpointKind, Endpoints, Issuer, IssuerKey, Method, Operation};
use gatelet::keys;
use gatelet::token::{MintRequest, Validator, ValidatorConfig, mint};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://apim.example.com/oauth2/token";

fn manifest(key: &SigningKey) -> Manifest {
    let op = |method, path: &str, scope: &str| Operation {
        method,
        path: path.into(),
        tier: None,
        disable_security: false,
        scopes: vec![vec![scope.to_owned()]],
        production: None,
        sandbox: None,
        bearer: true,
        api_key: false,
    };
    Manifest {
        label: "bench".into(),
        serial: 1,
        created_at: NOW - 86_400,
        issuers: vec![Issuer {
            name: "central".into(),
            issuer: ISS.into(),
            audience: Some("gatelet".into()),
            keys: vec![IssuerKey::ed25519(
                keys::jwk_thumbprint(&key.verifying_key()),
                key.verifying_key().to_bytes(),
            )],
            validate_subscription: true,
            algorithms: Vec::new(),
            tokens: true,
            api_keys: false,
        }],
        policies: vec![],
        apis: vec![Api {
            name: "PizzaShackAPI".into(),
            version: "1.0.0".into(),
            context: "/pizzashack/1.0.0".into(),
            tier: None,
            disable_security: false,
            auth_header: None,
            production: Some(Endpoints {
                kind: EndpointKind::Single,
                urls: vec!["http://127.0.0.1:8081".into()],
                timeout_ms: None,
                retries: 0,
                basic_auth: None,
            }),
            sandbox: None,
            cors: None,
            operations: vec![op(Method::Get, "/order/{id}", "order:read")],
            https_only: false,
            api_key_locations: Vec::new(),
        }],
        revoked_jti: (0..1000).map(|i| format!("revoked-{i}")).collect(),
        scope_rule: gatelet::bundle::model::ScopeRule::AllOf,
        default_subscription_tier: None,
    }
}

fn benches(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let m = manifest(&key);
    let (api, op) = (&m.apis[0], &m.apis[0].operations[0]);
    // A token shaped like WSO2's: application, two subscriptions, scopes.
    let request = MintRequest {
        issuer: ISS.into(),
        subject: "alice@carbon.super".into(),
        audience: Some("gatelet".into()),
        apis: vec!["PizzaShackAPI:1.0.0".into(), "Inventory:2.0".into()],
        app_id: Some("7".into()),
        app_tier: Some("10PerMin".into()),
        tier: Some("Gold".into()),
        scope: Some("order:read order:write default".into()),
        ..MintRequest::default()
    };
    let token = mint(&key, &request, NOW, "3f0c6b5e-8d7a-4c1e-9b2f-0a1d2c3e4f50").expect("minted");
    eprintln!("token: {} bytes", token.len());
    let validator = Validator::new(&m, &ValidatorConfig::default());
    assert!(validator.validate(&token, api, op, NOW).is_ok(), "the bench token is valid");

    let mut g = c.benchmark_group("token");
    g.bench_function("verify uncached (parse + verify_strict + claims)", |b| {
        b.iter(|| black_box(validator.verify_uncached(black_box(&token), NOW).expect("valid")))
    });
    g.bench_function("validate cached (hash + lookup + time + subscription + scope)", |b| {
        b.iter(|| black_box(validator.validate(black_box(&token), api, op, NOW).expect("valid")))
    });
    let (input, sig) = token.rsplit_once('.').expect("three segments");
    let two_segments = input.to_owned();
    g.bench_function("reject malformed (two segments)", |b| {
        b.iter(|| black_box(validator.validate(black_box(&two_segments), api, op, NOW).expect_err("refused")))
    });
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ASCII");
    g.bench_function("reject bad signature (never cached)", |b| {
        b.iter(|| black_box(validator.validate(black_box(&forged), api, op, NOW).expect_err("refused")))
    });
    let raw: [u8; 64] = <base64ct::Base64UrlUnpadded as base64ct::Encoding>::decode_vec(sig)
        .expect("base64url")
        .try_into()
        .expect("64 bytes");
    let signature = Signature::from_bytes(&raw);
    let vk = key.verifying_key();
    g.bench_function("baseline: ed25519-dalek verify_strict of the signing input", |b| {
        b.iter(|| vk.verify_strict(black_box(input.as_bytes()), &signature).expect("valid"))
    });
    g.finish();
}

criterion_group!(token_benches, benches);
criterion_main!(token_benches);
