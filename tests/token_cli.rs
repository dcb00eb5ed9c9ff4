//! `gatelet token mint` and `gatelet token verify` end to end, as an operator runs them: the real
//! binary, the pizzashack example's issuers and development keys, a freshly built bundle.
//! (Interop with a JWT library no one here wrote is `tests/interop/pyjwt.sh`.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const CENTRAL: &str = "https://apim.example.com/oauth2/token";
const PARTNER: &str = "https://idp.partner.example/";

fn gatelet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatelet")).args(args).output().expect("gatelet runs")
}

fn example(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pizzashack").join(rel).display().to_string()
}

struct Fixture {
    dir: PathBuf,
    bundle: String,
    publisher: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("gatelet-token-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let prefix = dir.join("publisher").display().to_string();
    assert!(gatelet(&["keygen", "--out", &prefix]).status.success());
    let bundle = dir.join("p.glb").display().to_string();
    let key = format!("{prefix}.key");
    let out = gatelet(&["bundle", "build", &example(""), "--key", &key, "--out", &bundle, "--serial", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Fixture { dir, bundle, publisher: format!("{prefix}.pub") }
}

fn mint(args: &[&str]) -> String {
    let mut all = vec!["token", "mint"];
    all.extend_from_slice(args);
    let out = gatelet(&all);
    assert!(out.status.success(), "mint failed: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf-8");
    assert!(token.ends_with('\n') && token.trim().split('.').count() == 3, "{token}");
    token.trim().to_owned()
}

/// Runs `token verify`; returns the exit code and the decision JSON.
fn verify(f: &Fixture, method: &str, path: &str, token: Option<&str>, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "token",
        "verify",
        "--bundle",
        &f.bundle,
        "--trusted-key",
        &f.publisher,
        "--api",
        "PizzaShackAPI:1.0.0",
        "--method",
        method,
        "--path",
        path,
    ];
    args.extend_from_slice(extra);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatelet"));
    cmd.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
    match token {
        Some(t) => {
            cmd.arg(t).stdin(Stdio::null());
        }
        None => {
            cmd.stdin(Stdio::piped());
        }
    }
    let mut child = cmd.spawn().expect("gatelet runs");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b"  ").expect("stdin");
    }
    let out = child.wait_with_output().expect("exits");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().expect("exit code"), json)
}

#[test]
fn minted_tokens_are_judged_as_the_gateway_would() {
    let f = fixture("judged");
    let central_key = example("dev-keys/central.key");
    let token = mint(&[
        "--key",
        &central_key,
        "--issuer",
        CENTRAL,
        "--subject",
        "alice",
        "--audience",
        "gatelet",
        "--api",
        "PizzaShackAPI:1.0.0",
        "--tier",
        "Gold",
        "--app-id",
        "7",
        "--app-tier",
        "5PerMin",
        "--scope",
        "order:read",
    ]);

    // Allowed, with the principal; concrete path and template both find GET /order/{orderId}.
    let (code, d) = verify(&f, "GET", "/order/42", Some(&token), &[]);
    assert_eq!(code, 0, "{d}");
    assert_eq!(d["decision"], "allow");
    assert_eq!((d["issuer"].as_str(), d["subject"].as_str()), (Some("central"), Some("alice")));
    assert_eq!(
        (d["subscription_tier"].as_str(), d["application_tier"].as_str()),
        (Some("Gold"), Some("5PerMin"))
    );
    assert_eq!(d["operation"], "GET /order/{orderId}");
    let (code, _) = verify(&f, "GET", "/pizzashack/1.0.0/order/{orderId}", Some(&token), &[]);
    assert_eq!(code, 0);

    // The same token without the scope POST /order needs: 403, 900910, exit 1.
    let (code, d) = verify(&f, "POST", "/order", Some(&token), &[]);
    assert_eq!(code, 1);
    assert_eq!((d["status"].as_u64(), d["fault_code"].as_u64()), (Some(403), Some(900_910)));
    assert_eq!(d["reason"], "missing_scope");

    // A wall clock far in the past is floored at the bundle's creation time, and says so;
    // the token's iat is then ahead of that floor.
    let (code, d) = verify(&f, "GET", "/order/42", Some(&token), &["--now", "100"]);
    assert_eq!(code, 1);
    assert_eq!(d["clock"]["floored"], true);
    assert_eq!(d["clock"]["floor_origin"], "bundle_created_at");
    assert_eq!(d["clock"]["wall"], 100);
    // Far in the future: expired.
    let (code, d) = verify(&f, "GET", "/order/42", Some(&token), &["--now", "99999999999"]);
    assert_eq!((code, d["fault_code"].as_u64(), d["reason"].as_str()), (1, Some(900_903), Some("expired")));

    // No token on stdin: missing credentials.
    let (code, d) = verify(&f, "GET", "/order/42", None, &[]);
    assert_eq!((code, d["fault_code"].as_u64()), (1, Some(900_902)));
}

#[test]
fn partner_tokens_with_a_jwks_kid() {
    let f = fixture("partner");
    let partner_key = example("dev-keys/partner.key");
    let token = mint(&[
        "--key",
        &partner_key,
        "--kid",
        "partner-2026-11",
        "--issuer",
        PARTNER,
        "--subject",
        "bob",
        "--scope",
        "order:admin",
        "--keytype",
        "SANDBOX",
    ]);
    let (code, d) = verify(&f, "GET", "/order/1", Some(&token), &[]);
    assert_eq!(code, 0, "{d}");
    assert_eq!((d["kid"].as_str(), d["keytype"].as_str()), (Some("partner-2026-11"), Some("SANDBOX")));
    // Without --kid, the token carries the thumbprint, which is not the JWKS kid.
    let token = mint(&["--key", &partner_key, "--issuer", PARTNER, "--subject", "bob"]);
    let (code, d) = verify(&f, "GET", "/order/1", Some(&token), &[]);
    assert_eq!((code, d["reason"].as_str()), (1, Some("unknown_kid")));
    // Signed by central's key under partner's kid.
    let token = mint(&[
        "--key",
        &example("dev-keys/central.key"),
        "--kid",
        "partner-2026-11",
        "--issuer",
        PARTNER,
        "--subject",
        "mallory",
        "--scope",
        "order:admin",
    ]);
    let (code, d) = verify(&f, "GET", "/order/1", Some(&token), &[]);
    assert_eq!((code, d["reason"].as_str()), (1, Some("bad_signature")));
}

#[test]
fn operator_mistakes_are_errors_not_decisions() {
    let f = fixture("mistakes");
    let out = gatelet(&["token", "mint", "--key", &example("dev-keys/central.key"), "--issuer", CENTRAL]);
    assert!(!out.status.success(), "--subject is required");
    let out = gatelet(&[
        "token",
        "mint",
        "--key",
        &example("dev-keys/central.key"),
        "--issuer",
        CENTRAL,
        "--subject",
        "a",
        "--keytype",
        "prod",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PRODUCTION or SANDBOX"));
    for (api, method, path, want) in [
        ("Nope:1", "GET", "/menu", "no such API"),
        ("PizzaShackAPI:1.0.0", "BREW", "/menu", "unknown"),
        ("PizzaShackAPI:1.0.0", "GET", "/nowhere", "no operation"),
    ] {
        let out = gatelet(&[
            "token",
            "verify",
            "--bundle",
            &f.bundle,
            "--trusted-key",
            &f.publisher,
            "--api",
            api,
            "--method",
            method,
            "--path",
            path,
            "x.y.z",
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty(), "no decision printed for an operator error");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
