//! `[backend_jwt]` through a real `gatelet run`: `sign` sends the backend a JWT the device signs
//! (Ed25519 from `gatelet keygen`, or RSA from `openssl genpkey`) that openssl verifies with the
//! device's public key and that carries WSO2's backend claims; `none` sends nothing; `forward`
//! (the default) sends the caller's token as before; a bad key file stops the start, naming it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use base64ct::{Base64UrlUnpadded, Encoding};
use common::*;
use gatelet::config::{Config, Overrides};
use gatelet::daemon::{self, Running};
use serde_json::Value;

fn start(f: &Fixture, extra: &str) -> Result<(Running, SocketAddr), String> {
    let path = f.config(1, extra);
    let config = Config::resolve(Some(&path), std::iter::empty(), &Overrides::default()).map_err(|e| e.0)?;
    let running = daemon::start(config).map_err(|e| e.0)?;
    let http = running.bound.http.expect("http bound");
    Ok((running, http))
}

fn cannot_run(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run under CI: {why}");
    }
    println!("SKIPPED {test}: {why}");
}

fn openssl_available() -> bool {
    Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success())
}

/// Runs openssl with `args`; true when it exits 0.
fn openssl(args: &[&str]) -> bool {
    let out = Command::new("openssl").args(args).output().expect("openssl runs");
    if !out.status.success() {
        eprintln!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// The JWT's header and claims, after openssl verified its signature with `public_pem` (`rsa`:
/// RS256 with `openssl dgst`, else Ed25519 with `openssl pkeyutl -rawin`).
fn verify_with_openssl(dir: &Path, jwt: &str, public_pem: &Path, rsa: bool) -> (Value, Value) {
    let (input, sig) = jwt.rsplit_once('.').expect("three segments");
    let (header, claims) = input.split_once('.').expect("three segments");
    let input_file = dir.join("jwt-input");
    let sig_file = dir.join("jwt-sig");
    std::fs::write(&input_file, input).expect("write");
    std::fs::write(&sig_file, Base64UrlUnpadded::decode_vec(sig).expect("base64url signature"))
        .expect("write");
    let (i, s, k) = (path_str(&input_file), path_str(&sig_file), path_str(public_pem));
    let verified = if rsa {
        openssl(&["dgst", "-sha256", "-verify", k, "-signature", s, i])
    } else {
        openssl(&["pkeyutl", "-verify", "-pubin", "-inkey", k, "-rawin", "-in", i, "-sigfile", s])
    };
    assert!(verified, "openssl does not verify the backend JWT with the device's public key");
    // And a flipped byte of the input is refused by the same command (the check can fail).
    let mut tampered = input.as_bytes().to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    std::fs::write(&input_file, tampered).expect("write");
    let refused = if rsa {
        !openssl(&["dgst", "-sha256", "-verify", k, "-signature", s, i])
    } else {
        !openssl(&["pkeyutl", "-verify", "-pubin", "-inkey", k, "-rawin", "-in", i, "-sigfile", s])
    };
    assert!(refused, "openssl accepted a tampered JWT: the check proves nothing");
    let json = |seg: &str| -> Value {
        serde_json::from_slice(&Base64UrlUnpadded::decode_vec(seg).expect("base64url")).expect("JSON")
    };
    (json(header), json(claims))
}

fn backend_header(r: &Resp, name: &str) -> Option<String> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["headers"].get(name).and_then(Value::as_str).map(str::to_owned)
}

fn check_wso2_claims(claims: &Value, ttl: u64) {
    let w = |n: &str| claims[format!("http://wso2.org/claims/{n}")].clone();
    assert_eq!(claims["iss"], "wso2.org/products/am");
    assert_eq!(w("subscriber"), "alice");
    assert_eq!(w("applicationname"), "App");
    assert_eq!(w("applicationid"), "app-1");
    assert_eq!(w("apicontext"), "/shop/1.0.0");
    assert_eq!(w("version"), "1.0.0");
    assert_eq!(w("apiname"), "Shop");
    assert_eq!(w("tier"), "Gold");
    assert_eq!(w("keytype"), "PRODUCTION");
    assert_eq!(w("enduser"), "alice");
    assert_eq!(claims["idp"], "test", "the bundle's issuer that vouched for the caller");
    let (iat, exp) = (claims["iat"].as_u64().expect("iat"), claims["exp"].as_u64().expect("exp"));
    assert_eq!(exp - iat, ttl);
}

#[test]
fn sign_with_an_ed25519_device_key() {
    if !openssl_available() {
        return cannot_run("sign_with_an_ed25519_device_key", "openssl is not installed");
    }
    let f = Fixture::new("backend-jwt-ed25519");
    let device = gatelet::keys::generate().expect("key");
    let (key_path, pub_path) =
        gatelet::keys::write_key_pair(&f.dir.join("backend"), &device).expect("keygen");
    let extra = format!(
        "[backend_jwt]\nmode = \"sign\"\nkey = \"{}\"\nttl_s = 120\nheader = \"X-Backend-JWT\"\n",
        key_path.display()
    );
    let (running, gw) = start(&f, &extra).expect("starts");
    let t = f.token(|_| {});
    let r = get(gw, "/shop/1.0.0/items/1", Some(&t));
    let jwt = backend_header(&r, "x-backend-jwt").expect("a signed JWT");
    assert_ne!(jwt, t);
    assert!(backend_header(&r, "x-jwt-assertion").is_none(), "{:?}", r.json());
    let (header, claims) = verify_with_openssl(&f.dir, &jwt, &pub_path, false);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], gatelet::keys::jwk_thumbprint(&device.verifying_key()));
    check_wso2_claims(&claims, 120);
    // Cached: the next request of the same caller on the same API carries the same JWT.
    let again = backend_header(&get(gw, "/shop/1.0.0/items/2", Some(&t)), "x-backend-jwt");
    assert_eq!(again.as_deref(), Some(jwt.as_str()));
    // A client cannot pass its own.
    let r = send(
        gw,
        "GET",
        "/shop/1.0.0/items/1",
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("X-Backend-JWT", "forged"),
            ("X_Backend_JWT", "forged"),
        ],
        b"",
    );
    assert_eq!(backend_header(&r, "x-backend-jwt").as_deref(), Some(jwt.as_str()));
    assert!(r.json()["headers"].get("x_backend_jwt").is_none());
    // No principal, no JWT.
    assert!(backend_header(&get(gw, "/shop/1.0.0/open", None), "x-backend-jwt").is_none());
    running.shutdown();
}

#[test]
fn sign_with_an_rsa_device_key_from_openssl() {
    if !openssl_available() {
        return cannot_run("sign_with_an_rsa_device_key_from_openssl", "openssl is not installed");
    }
    let f = Fixture::new("backend-jwt-rsa");
    let key = f.dir.join("rsa.key");
    let public = f.dir.join("rsa.pub");
    assert!(openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        path_str(&key)
    ]));
    assert!(openssl(&["pkey", "-in", path_str(&key), "-pubout", "-out", path_str(&public)]));
    let extra = format!("[backend_jwt]\nmode = \"sign\"\nkey = \"{}\"\n", key.display());
    let (running, gw) = start(&f, &extra).expect("starts");
    let t = f.token(|_| {});
    let jwt = backend_header(&get(gw, "/shop/1.0.0/items/1", Some(&t)), "x-jwt-assertion").expect("JWT");
    let (header, claims) = verify_with_openssl(&f.dir, &jwt, &public, true);
    assert_eq!(header["alg"], "RS256");
    check_wso2_claims(&claims, 300);
    running.shutdown();
}

#[test]
fn none_sends_nothing_and_forward_sends_the_token() {
    let f = Fixture::new("backend-jwt-none");
    let t = f.token(|_| {});
    let (running, gw) = start(&f, "[backend_jwt]\nmode = \"none\"\n").expect("starts");
    let r = send(
        gw,
        "GET",
        "/shop/1.0.0/items/1",
        &[("Authorization", &format!("Bearer {t}")), ("X-JWT-Assertion", "forged")],
        b"",
    );
    assert!(backend_header(&r, "x-jwt-assertion").is_none(), "{:?}", r.json());
    running.shutdown();
    let (running, gw) = start(&f, "").expect("starts");
    assert_eq!(backend_header(&get(gw, "/shop/1.0.0/items/1", Some(&t)), "x-jwt-assertion"), Some(t));
    running.shutdown();
}

#[test]
fn a_bad_device_key_stops_the_start_naming_the_file() {
    let f = Fixture::new("backend-jwt-badkey");
    let bad = f.dir.join("backend.key");
    std::fs::write(&bad, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        .expect("write");
    for path in [bad.clone(), f.dir.join("missing.key")] {
        let extra = format!("[backend_jwt]\nmode = \"sign\"\nkey = \"{}\"\n", path.display());
        let e = start(&f, &extra).map(|(r, _)| r.shutdown()).expect_err("refused");
        assert!(e.contains("backend_jwt.key") && e.contains(path_str(&path)), "{e}");
    }
}
