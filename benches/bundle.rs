//! Building and verifying a 1,000-API bundle (issue target: verify + decode under 20 ms).
//!
//! Baselines measured in the same run, so results read as ratios: SHA-256 over the same bundle
//! bytes, and one raw `verify_strict` over them (the floor any signed-bundle check pays).
//!
//! `cargo bench --bench bundle`

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use gatelet::bundle;
use sha2::Digest;

const APIS: usize = 1000;

/// A project of `APIS` OpenAPI files, 5 operations each, in a temp dir.
fn project() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatelet-bench-bundle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("apis")).expect("mkdir");
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/pizzashack");
    std::fs::create_dir_all(dir.join("keys")).expect("mkdir");
    for f in ["central.pub", "partner.jwks.json"] {
        std::fs::copy(example.join("keys").join(f), dir.join("keys").join(f)).expect("copy key");
    }
    std::fs::copy(example.join("gatelet.toml"), dir.join("gatelet.toml")).expect("copy toml");
    for i in 0..APIS {
        let mut y = String::new();
        let _ = write!(
            y,
            "openapi: 3.0.3\ninfo: {{title: Api{i}, version: 1.0.{i}}}\nx-wso2-basePath: /api{i}/{{version}}\n\
             x-wso2-production-endpoints: {{urls: [\"http://127.0.0.1:{port}/svc{i}\"]}}\n\
             x-wso2-throttling-tier: 10kPerMin\nsecurity: [{{default: [read]}}]\npaths:\n",
            port = 8000 + i % 100
        );
        for p in ["/items", "/items/{id}", "/orders", "/orders/{id}", "/status"] {
            let _ = write!(y, "  {p}:\n    get: {{responses: {{'200': {{description: ok}}}}}}\n");
        }
        y.push_str(
            "components:\n  securitySchemes:\n    default:\n      type: oauth2\n      flows:\n        \
             implicit:\n          authorizationUrl: https://x.example/a\n          scopes: {read: r}\n",
        );
        std::fs::write(dir.join("apis").join(format!("api{i:04}.yaml")), y).expect("write");
    }
    dir
}

fn benches(c: &mut Criterion) {
    let dir = project();
    let key = SigningKey::from_bytes(&[7; 32]);
    let trusted = [key.verifying_key()];
    let manifest = gatelet::project::compile(&dir, 1).expect("compiles").manifest;
    let bytes = bundle::seal(&manifest, &key).expect("seals");
    eprintln!("bundle: {} APIs, {} bytes", manifest.apis.len(), bytes.len());

    let mut g = c.benchmark_group("bundle-1000-apis");
    g.sample_size(10);
    g.bench_function("build (compile project + seal)", |b| {
        b.iter(|| {
            let m = gatelet::project::compile(&dir, 1).expect("compiles").manifest;
            black_box(bundle::seal(&m, &key).expect("seals"))
        })
    });
    g.bench_function("seal (encode + sign)", |b| {
        b.iter(|| black_box(bundle::seal(&manifest, &key).expect("seals")))
    });
    g.finish();

    let mut g = c.benchmark_group("verify-1000-apis");
    g.bench_function("verify + decode + checks", |b| {
        b.iter(|| black_box(bundle::verify(black_box(&bytes), &trusted).expect("verifies")))
    });
    g.bench_function("baseline: sha256 of the file", |b| {
        b.iter(|| black_box(sha2::Sha256::digest(black_box(&bytes))))
    });
    let sig = key.sign(&bytes);
    g.bench_function("baseline: one verify_strict over the file", |b| {
        b.iter(|| key.verifying_key().verify_strict(black_box(&bytes), &sig).expect("valid"))
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(group, benches);
criterion_main!(group);
