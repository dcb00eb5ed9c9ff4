//! Token validation (issue 3 targets: uncached near ed25519-dalek's own verify cost, cached under
//! 2 µs).
//!
//! Baseline measured in the same run, so results read as ratios: one raw `verify_strict` of the
//! token's signing input with ed25519-dalek, the floor any uncached check pays.
//!
//! The `alg/` group (issue 10) times one signature check per algorithm through the same
//! `jws::verify` the validator calls, with keys prepared once as a bundle load prepares them;
//! `bench/token_algs.sh` runs it beside `openssl speed` and prints the ratios.
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
                urls: vec![gatelet::url::HttpUrl::parse("http://127.0.0.1:8081").expect("valid")],
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
    algorithms(c);
}

/// One verification per algorithm: RSA 2048 and 4096 (PKCS#1 v1.5 and PSS), P-256, P-384, and
/// Ed25519 (`verify_strict`), over a signing input the size of the WSO2-shaped token's.
fn algorithms(c: &mut Criterion) {
    use gatelet::bundle::model::{JwsAlg, PublicKey};
    use gatelet::token::jws::{VerifyKey, verify};
    use gatelet::token::mint::TokenKey;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;

    let input = "x".repeat(900);
    let rsa =
        |bits| TokenKey::new(PKey::from_rsa(Rsa::generate(bits).expect("RSA")).expect("pkey")).expect("key");
    let ec = |nid| {
        let group = EcGroup::from_curve_name(nid).expect("curve");
        TokenKey::new(PKey::from_ec_key(EcKey::generate(&group).expect("EC")).expect("pkey")).expect("key")
    };
    let ed = TokenKey::new(PKey::generate_ed25519().expect("Ed25519")).expect("key");
    let ed_raw = {
        let der = ed.public_der();
        let raw: [u8; 32] = der[der.len() - 32..].try_into().expect("32 bytes");
        raw
    };
    let (rsa2048, rsa4096, p256, p384) =
        (rsa(2048), rsa(4096), ec(Nid::X9_62_PRIME256V1), ec(Nid::SECP384R1));
    let cases = [
        ("alg/RS256 rsa2048", &rsa2048, JwsAlg::Rs256, PublicKey::Rsa(rsa2048.public_der())),
        ("alg/PS256 rsa2048", &rsa2048, JwsAlg::Ps256, PublicKey::Rsa(rsa2048.public_der())),
        ("alg/RS256 rsa4096", &rsa4096, JwsAlg::Rs256, PublicKey::Rsa(rsa4096.public_der())),
        ("alg/ES256 p256", &p256, JwsAlg::Es256, PublicKey::EcP256(p256.public_der())),
        ("alg/ES384 p384", &p384, JwsAlg::Es384, PublicKey::EcP384(p384.public_der())),
        ("alg/EdDSA ed25519", &ed, JwsAlg::EdDsa, PublicKey::Ed25519(ed_raw)),
    ];
    let mut g = c.benchmark_group("alg");
    g.sample_size(30).measurement_time(std::time::Duration::from_secs(2));
    for (name, key, alg, public) in cases {
        let sig = key.sign(alg, input.as_bytes()).expect("signed");
        let vk = VerifyKey::new(&public).expect("bundle key");
        assert!(verify(&vk, alg, input.as_bytes(), &sig), "{name}");
        g.bench_function(name.trim_start_matches("alg/"), |b| {
            b.iter(|| assert!(verify(&vk, alg, black_box(input.as_bytes()), black_box(&sig))))
        });
    }
    g.finish();
}

criterion_group!(token_benches, benches);
criterion_main!(token_benches);
