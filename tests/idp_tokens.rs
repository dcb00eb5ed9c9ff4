//! Tokens from the identity providers people run (issue 10, section 1), end to end through a real
//! `gatelet run`: keys and certificates made by the openssl CLI, key sets shaped like Keycloak's
//! and Entra ID's, tokens signed by PyJWT (tests/interop/idp_tokens.py) with the WSO2 claim
//! shape, and `gatelet token mint`'s RSA/EC tokens checked by PyJWT in turn.
//!
//! PyJWT and cryptography come from PyPI into a venv under the target directory (as
//! tests/interop/pyjwt.sh does); without python3 or openssl the test cannot run, which fails
//! under `CI=1`.

mod common;
mod usage_util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const GATELET: &str = env!("CARGO_BIN_EXE_gatelet");

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The venv's python with PyJWT and cryptography, set up on first use; `None` (after
/// `cannot_run`) when there is no python3 or PyPI is out of reach.
fn pyjwt(test: &str) -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let venv = target.join("interop-venv");
    let py = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py).args(["-c", "import jwt, cryptography"]).output().is_ok_and(|o| o.status.success())
    };
    if ready(&py) {
        return Some(py);
    }
    let setup = run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).and_then(|_| {
        run(Command::new(&py).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "PyJWT[crypto]",
            "cryptography",
        ]))
    });
    match setup {
        Ok(_) if ready(&py) => Some(py),
        Ok(_) => {
            usage_util::cannot_run(test, "PyJWT installed but not importable");
            None
        }
        Err(e) => {
            usage_util::cannot_run(test, &format!("no python3 venv with PyJWT: {e}"));
            None
        }
    }
}

fn openssl(args: &[&str]) -> Result<String, String> {
    run(Command::new("openssl").args(args))
}

/// Keys and certificates, made by the openssl CLI.
fn make_keys(dir: &Path) -> Result<(), String> {
    let p = |name: &str| dir.join(name).to_str().expect("utf-8").to_owned();
    for (name, args) in [
        ("wso2.key", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..]),
        ("kc.key", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        ("entra.key", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"]),
        ("other.key", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        ("short.key", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]),
        ("ec256.key", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("ec384.key", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
        ("ed.key", &["-algorithm", "ed25519"]),
    ] {
        let out = p(name);
        let mut a = vec!["genpkey"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-out", &out]);
        openssl(&a)?;
    }
    for name in ["wso2", "kc", "entra"] {
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &p(&format!("{name}.key")),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
            "-out",
            &p(&format!("{name}.crt")),
        ])?;
    }
    std::fs::create_dir_all(dir.join("project/keys")).map_err(|e| e.to_string())?;
    std::fs::copy(dir.join("wso2.crt"), dir.join("project/keys/wso2.crt")).map_err(|e| e.to_string())?;
    for name in ["ec256", "ed", "short"] {
        openssl(&[
            "pkey",
            "-in",
            &p(&format!("{name}.key")),
            "-pubout",
            "-out",
            &p(&format!("project/keys/{name}.pub")),
        ])?;
    }
    Ok(())
}

fn write_project(dir: &Path, backend: SocketAddr) {
    let p = dir.join("project");
    std::fs::create_dir_all(p.join("apis")).expect("mkdir");
    std::fs::write(
        p.join("gatelet.toml"),
        r#"label = "idp"
[[issuer]]
name = "wso2"
issuer = "https://wso2.example/oauth2/token"
keys = ["keys/wso2.crt", "keys/ec256.pub", "keys/ed.pub"]
validate_subscription = true
[[issuer]]
name = "keycloak"
issuer = "https://keycloak.example/realms/shop"
jwks = "keys/keycloak.jwks.json"
[[issuer]]
name = "entra"
issuer = "https://login.microsoftonline.com/tenant/v2.0"
jwks = "keys/entra.jwks.json"
algorithms = ["RS256"]
"#,
    )
    .expect("write");
    std::fs::write(
        p.join("apis/shop.yaml"),
        format!(
            "openapi: 3.0.3
info: {{title: Shop, version: 1.0.0}}
x-wso2-basePath: /shop/{{version}}
x-wso2-production-endpoints: {{urls: [\"http://{backend}/backend\"]}}
security: [{{oauth: []}}]
paths:
  /items/{{id}}:
    get: {{responses: {{'200': {{description: ok}}}}}}
components:
  securitySchemes:
    oauth:
      type: oauth2
      flows: {{clientCredentials: {{tokenUrl: https://issuer.test/token, scopes: {{}}}}}}
"
        ),
    )
    .expect("write");
}

/// `gatelet run` on a fresh bundle of the project; the child (killed when dropped) and its HTTP
/// address.
fn start_gateway(dir: &Path) -> (Stop, SocketAddr) {
    let d = dir.display();
    run(Command::new(GATELET).args(["keygen", "--out"]).arg(dir.join("publisher"))).expect("keygen");
    std::fs::create_dir_all(dir.join("inbox")).expect("inbox");
    run(Command::new(GATELET)
        .args(["bundle", "build"])
        .arg(dir.join("project"))
        .arg("--key")
        .arg(dir.join("publisher.key"))
        .arg("--out")
        .arg(dir.join("bundle.glb"))
        .args(["--serial", "1"]))
    .expect("the project builds");
    let config = dir.join("gatelet.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [bundle]\npath = \"{d}/bundle.glb\"\ntrusted_keys = [\"{d}/publisher.pub\"]\ninbox = \"{d}/inbox\"\n\
             [state]\ndir = \"{d}/state\"\n[usage]\nspool_dir = \"{d}/spool\"\n"
        ),
    )
    .expect("config");
    let mut child = Stop(
        Command::new(GATELET)
            .args(["run", "--config", path_str(&config)])
            .stderr(Stdio::piped())
            .spawn()
            .expect("gatelet runs"),
    );
    let stderr = child.0.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("gatelet logs its listener");
        if let Some(a) = line.split("listening http ").nth(1) {
            return (child, a.trim().parse().expect("address"));
        }
    }
}

struct Stop(Child);
impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PyJWT verifies a token `gatelet token mint` made; argv: token, alg, public key or certificate.
const PYJWT_CHECK: &str = "\
    import jwt, sys\n\
    from cryptography import x509\n\
    from cryptography.hazmat.primitives import serialization\n\
    t, alg, pem = sys.argv[1:4]\n\
    data = open(pem, 'rb').read()\n\
    cert = b'CERTIFICATE' in data\n\
    load = lambda d: x509.load_pem_x509_certificate(d).public_key()\n\
    key = load(data) if cert else serialization.load_pem_public_key(data)\n\
    h = jwt.get_unverified_header(t)\n\
    assert h['alg'] == alg, h\n\
    c = jwt.decode(t, key, algorithms=[alg])\n\
    assert c['application']['id'] == 42, c\n\
    assert c['tierInfo']['Gold']['stopOnQuotaReach'] is True, c\n\
    assert c['subscribedAPIs'][0]['subscriptionTier'] == 'Gold', c\n";

#[test]
fn idp_tokens_through_gatelet_run() {
    const TEST: &str = "idp_tokens_through_gatelet_run";
    let Some(py) = pyjwt(TEST) else { return };
    let dir = tempdir("idp");
    if let Err(e) = make_keys(&dir) {
        usage_util::cannot_run(TEST, &format!("openssl CLI: {e}"));
        return;
    }
    let backend = start_backend();
    write_project(&dir, backend);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/idp_tokens.py");
    let cases = run(Command::new(&py).arg(&script).arg(&dir).arg(now.to_string())).expect("PyJWT mints");
    let (_gateway, gw) = start_gateway(&dir);

    let mut failures = Vec::new();
    let mut count = 0;
    for line in cases.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, status, code, text, token] = f[..] else { panic!("bad case line {line}") };
        count += 1;
        let r = get(gw, "/shop/1.0.0/items/1", Some(token));
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let ok = if status == "200" {
            r.status == 200 && r.json()["uri"] == "/backend/items/1"
        } else {
            r.status.to_string() == status
                && r.fault_code().to_string() == code
                && r.json()["fault"]["description"].as_str().is_some_and(|d| d.contains(text))
        };
        if !ok {
            failures.push(format!("{name}: expected {status} {code} {text:?}, got {} {body}", r.status));
        }
    }
    assert_eq!(count, 23, "every PyJWT case ran");
    assert!(failures.is_empty(), "{} of {count} cases wrong:\n{}", failures.len(), failures.join("\n"));

    // gatelet's own tokens, RSA and EC, with WSO2 shapes from --claims: accepted by the gateway
    // and by PyJWT.
    std::fs::write(
        dir.join("claims.json"),
        r#"{"application": {"owner": "admin", "tier": "Unlimited", "name": "App", "id": 42},
            "tierInfo": {"Gold": {"stopOnQuotaReach": true}}, "aut": "APPLICATION"}"#,
    )
    .expect("claims");
    let mint = |key: &str, extra: &[&str]| {
        run(Command::new(GATELET)
            .args(["token", "mint", "--key"])
            .arg(dir.join(key))
            .args([
                "--issuer",
                "https://wso2.example/oauth2/token",
                "--subject",
                "admin",
                "--api",
                "Shop:1.0.0",
            ])
            .args(["--tier", "Gold", "--claims"])
            .arg(dir.join("claims.json"))
            .args(extra))
        .map(|t| t.trim().to_owned())
    };
    let cert = dir.join("wso2.crt");
    let minted = [
        ("RS256", mint("wso2.key", &["--x5t-cert", path_str(&cert), "--x5t-wso2"]).expect("mint")),
        ("PS256", mint("wso2.key", &["--alg", "PS256", "--x5t-cert", path_str(&cert)]).expect("mint")),
        ("ES256", mint("ec256.key", &[]).expect("mint")),
        ("EdDSA", mint("ed.key", &[]).expect("mint")),
    ];
    for (alg, token) in &minted {
        let r = get(gw, "/shop/1.0.0/items/2", Some(token));
        assert_eq!(r.status, 200, "gatelet-minted {alg}: {}", String::from_utf8_lossy(&r.body));
        let pem = match *alg {
            "ES256" => dir.join("project/keys/ec256.pub"),
            "EdDSA" => dir.join("project/keys/ed.pub"),
            _ => cert.clone(),
        };
        run(Command::new(&py).args(["-c", PYJWT_CHECK, token, alg]).arg(&pem))
            .unwrap_or_else(|e| panic!("PyJWT refuses gatelet's {alg} token: {e}"));
    }
    // The WSO2 x5t form in the header, and no kid beside it.
    let header = minted[0].1.split('.').next().expect("header");
    let header: serde_json::Value = serde_json::from_slice(
        &<base64ct::Base64UrlUnpadded as base64ct::Encoding>::decode_vec(header).expect("b64"),
    )
    .expect("json");
    let x5t = header["x5t"].as_str().expect("x5t");
    assert!(x5t.ends_with('=') || x5t.len() == 56, "WSO2's padded base64 of the hex SHA-1: {x5t}");
    assert!(header.get("kid").is_none(), "{header}");
}

#[test]
fn short_rsa_key_refused_at_build_time() {
    const TEST: &str = "short_rsa_key_refused_at_build_time";
    let dir = tempdir("idp-short");
    if let Err(e) = make_keys(&dir) {
        usage_util::cannot_run(TEST, &format!("openssl CLI: {e}"));
        return;
    }
    write_project(&dir, "127.0.0.1:9".parse().expect("address"));
    let p = dir.join("project");
    std::fs::write(
        p.join("gatelet.toml"),
        "[[issuer]]\nname = \"old\"\nissuer = \"https://old.example/\"\nkeys = [\"keys/short.pub\"]\n",
    )
    .expect("write");
    let err = gatelet::project::compile(&p, 1).expect_err("a 1024-bit key is refused").to_string();
    assert!(err.contains("keys/short.pub") && err.contains("1024 bits"), "{err}");
    // An unknown name in an algorithm pin is a build error too.
    std::fs::write(
        p.join("gatelet.toml"),
        "[[issuer]]\nname = \"x\"\nissuer = \"https://x.example/\"\nkeys = [\"keys/ec256.pub\"]\nalgorithms = [\"HS256\"]\n",
    )
    .expect("write");
    let err = gatelet::project::compile(&p, 1).expect_err("HS256 cannot be pinned").to_string();
    assert!(err.contains("unknown algorithm \"HS256\""), "{err}");
    // A pin no key of the issuer can meet: RS256 with only a P-256 key.
    std::fs::write(
        p.join("gatelet.toml"),
        "[[issuer]]\nname = \"x\"\nissuer = \"https://x.example/\"\nkeys = [\"keys/ec256.pub\"]\nalgorithms = [\"RS256\"]\n",
    )
    .expect("write");
    let err = gatelet::project::compile(&p, 1).expect_err("no key for the pin").to_string();
    assert!(err.contains("RS256"), "{err}");
}
