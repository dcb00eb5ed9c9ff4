//! The toolkit commands end to end, as a user runs them: the real binary, real files, real keys,
//! and openssl for interop (keys made by openssl sign bundles; keys made by gatelet read by openssl).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gatelet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatelet")).args(args).output().expect("gatelet runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

fn fails(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1, stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).expect("utf-8")
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gatelet-cli-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    d
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pizzashack")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("readdir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).expect("copy");
        }
    }
}

fn openssl(args: &[&str]) -> Output {
    let out =
        Command::new("openssl").args(args).output().expect("openssl is installed (.ci/run installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn keygen_build_verify_and_every_region_of_the_file_matters() {
    let d = tempdir("flow");
    let prefix = d.join("publisher");
    ok(&gatelet(&["keygen", "--out", s(&prefix)]));
    let key = d.join("publisher.key");
    let public = d.join("publisher.pub");
    let bundle = d.join("b.glb");
    let out = ok(&gatelet(&[
        "bundle",
        "build",
        s(&example()),
        "--key",
        s(&key),
        "--out",
        s(&bundle),
        "--serial",
        "17",
    ]));
    assert!(out.contains("serial 17") && out.contains("2 APIs"), "{out}");
    let out = ok(&gatelet(&["bundle", "verify", s(&bundle), "--trusted-key", s(&public)]));
    assert!(out.contains("valid, serial 17"), "{out}");

    // keygen refuses to overwrite.
    assert!(fails(&gatelet(&["keygen", "--out", s(&prefix)])).contains("already exists"));

    // Same inputs and serial: same bytes.
    let again = d.join("again.glb");
    ok(&gatelet(&["bundle", "build", s(&example()), "--key", s(&key), "--out", s(&again), "--serial", "17"]));
    assert_eq!(fs::read(&bundle).expect("read"), fs::read(&again).expect("read"));

    // A single flipped byte anywhere (sampled across header, payload and signature) → exit 1
    // with a reason. Every byte is covered by the unit test of the same path.
    let bytes = fs::read(&bundle).expect("read");
    let flipped = d.join("flipped.glb");
    let mut positions: Vec<usize> = (0..24).collect();
    positions.extend((24..bytes.len()).step_by(37));
    positions.extend(bytes.len() - 64..bytes.len());
    for i in positions {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        fs::write(&flipped, &bad).expect("write");
        let err = fails(&gatelet(&["bundle", "verify", s(&flipped), "--trusted-key", s(&public)]));
        assert!(err.starts_with("gatelet: ") && err.len() > 20, "byte {i}: {err}");
    }

    // The wrong trusted key.
    ok(&gatelet(&["keygen", "--out", s(&d.join("other"))]));
    let err = fails(&gatelet(&["bundle", "verify", s(&bundle), "--trusted-key", s(&d.join("other.pub"))]));
    assert!(err.contains("not a trusted key"), "{err}");
    // Both keys trusted: fine.
    ok(&gatelet(&[
        "bundle",
        "verify",
        s(&bundle),
        "--trusted-key",
        s(&d.join("other.pub")),
        "--trusted-key",
        s(&public),
    ]));
    fs::remove_dir_all(&d).expect("cleanup");
}

#[test]
fn openssl_keys_interoperate_both_ways() {
    let d = tempdir("openssl");
    // openssl → gatelet: an openssl key signs; its openssl-derived public key verifies.
    let key = d.join("ossl.key");
    let public = d.join("ossl.pub");
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", s(&key)]);
    openssl(&["pkey", "-in", s(&key), "-pubout", "-out", s(&public)]);
    let bundle = d.join("b.glb");
    ok(&gatelet(&["bundle", "build", s(&example()), "--key", s(&key), "--out", s(&bundle), "--serial", "3"]));
    ok(&gatelet(&["bundle", "verify", s(&bundle), "--trusted-key", s(&public)]));

    // The bundle signature is plain Ed25519 over DOMAIN || header || payload: openssl verifies it.
    let bytes = fs::read(&bundle).expect("read");
    let (signed, sig) = bytes.split_at(bytes.len() - 64);
    let mut msg = b"gatelet bundle v2\0".to_vec();
    msg.extend_from_slice(signed);
    fs::write(d.join("msg"), msg).expect("write");
    fs::write(d.join("sig"), sig).expect("write");
    openssl(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        s(&public),
        "-rawin",
        "-in",
        s(&d.join("msg")),
        "-sigfile",
        s(&d.join("sig")),
    ]);

    // gatelet → openssl: openssl reads gatelet's private key and derives the same public key.
    ok(&gatelet(&["keygen", "--out", s(&d.join("g"))]));
    let derived = openssl(&["pkey", "-in", s(&d.join("g.key")), "-pubout"]).stdout;
    assert_eq!(derived, fs::read(d.join("g.pub")).expect("read"));
    // And the key id gatelet prints is the documented openssl pipeline's.
    let der = openssl(&["pkey", "-pubin", "-in", s(&d.join("g.pub")), "-outform", "DER"]).stdout;
    let raw: [u8; 32] = der[der.len() - 32..].try_into().expect("32 bytes");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw).expect("point");
    let out =
        ok(&gatelet(&["bundle", "build", s(&example()), "--key", s(&d.join("g.key")), "--out", s(&bundle)]));
    assert!(out.contains(&gatelet::keys::hex(&gatelet::keys::key_id(&vk))), "{out}");
    fs::remove_dir_all(&d).expect("cleanup");
}

#[test]
fn inspect_lists_every_api_operation_tier_and_issuer() {
    let d = tempdir("inspect");
    ok(&gatelet(&["keygen", "--out", s(&d.join("k"))]));
    let bundle = d.join("b.glb");
    ok(&gatelet(&["bundle", "build", s(&example()), "--key", s(&d.join("k.key")), "--out", s(&bundle)]));
    for trusted in [vec![], vec!["--trusted-key", s(&d.join("k.pub"))]] {
        let mut args = vec!["bundle", "inspect", s(&bundle)];
        args.extend(trusted.iter().copied());
        let v: serde_json::Value = serde_json::from_str(&ok(&gatelet(&args))).expect("inspect prints JSON");
        assert_eq!(v["signature_verified"], serde_json::Value::Bool(!trusted.is_empty()));
        let apis = v["apis"].as_array().expect("apis");
        let names: Vec<&str> = apis.iter().map(|a| a["name"].as_str().expect("name")).collect();
        assert_eq!(names, ["Inventory", "PizzaShackAPI"]);
        let ops: Vec<String> = apis
            .iter()
            .flat_map(|a| a["operations"].as_array().expect("ops"))
            .map(|o| format!("{} {} {}", o["method"], o["path"], o["tier"]))
            .collect();
        assert_eq!(ops.len(), 7, "{ops:?}");
        assert!(ops.contains(&r#""POST" "/order" "3PerMin""#.to_owned()), "{ops:?}");
        assert!(ops.contains(&r#""GET" "/order/{orderId}" null"#.to_owned()), "{ops:?}");
        assert_eq!(apis[0]["tier"], "10kPerMin");
        assert!(apis[1]["tier"].is_null());
        let issuers: Vec<&str> = v["issuers"]
            .as_array()
            .expect("issuers")
            .iter()
            .map(|i| i["name"].as_str().expect("n"))
            .collect();
        assert_eq!(issuers, ["central", "partner"]);
        assert_eq!(v["issuers"][1]["keys"][0]["kid"], "partner-2026-11");
        let subs: Vec<&str> = v["policies"]["subscription"]
            .as_array()
            .expect("subscription policies")
            .iter()
            .map(|p| p["name"].as_str().expect("name"))
            .collect();
        for t in ["Gold", "Silver", "Bronze", "Unauthenticated", "Default", "Trial"] {
            assert!(subs.contains(&t), "{t} missing from {subs:?}");
        }
        assert_eq!(v["policies"]["subscription"].as_array().expect("subs").len(), 6);
    }
    fs::remove_dir_all(&d).expect("cleanup");
}

/// Copies the example, applies `edit`, builds, and returns stderr of the failed build.
/// Builds the example project after `edit`, in a fresh directory (returned with the output).
fn edited_build(name: &str, edit: impl FnOnce(&Path)) -> (PathBuf, Output) {
    let d = tempdir(name);
    let project = d.join("project");
    copy_dir(&example(), &project);
    edit(&project);
    ok(&gatelet(&["keygen", "--out", s(&d.join("k"))]));
    let out = gatelet(&[
        "bundle",
        "build",
        s(&project),
        "--key",
        s(&d.join("k.key")),
        "--out",
        s(&d.join("b.glb")),
    ]);
    (d, out)
}

fn broken_build(name: &str, edit: impl FnOnce(&Path)) -> String {
    let (d, out) = edited_build(name, edit);
    let err = fails(&out);
    assert!(!d.join("b.glb").exists(), "a failed build left a bundle");
    fs::remove_dir_all(&d).expect("cleanup");
    err
}

fn replace(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{from} not in {}", path.display());
    fs::write(path, text.replace(from, to)).expect("write");
}

#[test]
fn build_errors_name_the_file_line_and_reason() {
    let err = broken_build("tier", |p| {
        replace(
            &p.join("apis/pizzashack.yaml"),
            "x-wso2-throttling-tier: 3PerMin",
            "x-wso2-throttling-tier: Golden",
        )
    });
    assert!(err.contains("pizzashack.yaml:33:") && err.contains("unknown tier \"Golden\""), "{err}");

    let err = broken_build("key", |p| fs::remove_file(p.join("keys/central.pub")).expect("rm"));
    assert!(err.contains("gatelet.toml") && err.contains("missing key file keys/central.pub"), "{err}");

    let err = broken_build("dup", |p| {
        replace(&p.join("apis/inventory.json"), "/inventory/{version}", "/pizzashack/1.0.0")
    });
    assert!(
        err.contains("pizzashack.yaml:6:")
            && err.contains("inventory.json")
            && err.contains("duplicate context \"/pizzashack/1.0.0\""),
        "{err}"
    );

    let err = broken_build("url", |p| {
        replace(
            &p.join("apis/pizzashack.yaml"),
            "http://127.0.0.1:8081/pizzashack\n",
            "htp://127.0.0.1:8081/x\n",
        )
    });
    assert!(err.contains("pizzashack.yaml:9:") && err.contains("bad URL"), "{err}");

    let err = broken_build("kty", |p| {
        replace(&p.join("keys/partner.jwks.json"), "\"OKP\"", "\"oct\"");
    });
    assert!(err.contains("partner.jwks.json") && err.contains("unsupported key type \"oct\""), "{err}");

    // A scope the scheme does not declare builds, as in WSO2, with a warning naming it.
    let (d, out) = edited_build("scope", |p| {
        replace(
            &p.join("apis/pizzashack.yaml"),
            "- default: [order:admin]\n      x-wso2",
            "- default: [order:nuke]\n      x-wso2",
        )
    });
    ok(&out);
    let warn = String::from_utf8_lossy(&out.stderr);
    assert!(
        warn.contains("pizzashack.yaml:") && warn.contains("scope \"order:nuke\" is not declared"),
        "{warn}"
    );
    fs::remove_dir_all(&d).expect("cleanup");

    let err = broken_build("yaml", |p| replace(&p.join("apis/pizzashack.yaml"), "paths:\n", "paths: [\n"));
    assert!(err.contains("pizzashack.yaml") && err.contains("not valid YAML"), "{err}");

    let err = broken_build("toml", |p| {
        replace(&p.join("gatelet.toml"), "validate_subscription = false", "validate_subscriptions = false")
    });
    assert!(err.contains("gatelet.toml:") && err.contains("validate_subscriptions"), "{err}");

    let err = broken_build("ext", |p| {
        replace(&p.join("apis/pizzashack.yaml"), "x-wso2-cors:", "x-wso2-mutual-ssl: mandatory\nx-wso2-cors:")
    });
    assert!(err.contains("x-wso2-mutual-ssl is not supported"), "{err}");
}

#[test]
fn the_build_time_is_never_later_than_the_builders_clock() {
    let d = tempdir("future");
    let project = d.join("project");
    copy_dir(&example(), &project);
    let prefix = d.join("publisher");
    ok(&gatelet(&["keygen", "--out", s(&prefix)]));
    let key = d.join("publisher.key");
    // One input file dated 2036 (`touch -d 2036-01-01`).
    let y2036 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_082_758_400);
    let file = project.join("apis/pizzashack.yaml");
    fs::File::options().append(true).open(&file).expect("open").set_modified(y2036).expect("set mtime");
    let bundle = d.join("b.glb");
    let out = Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["bundle", "build", s(&project), "--key", s(&key), "--out", s(&bundle), "--serial", "3"])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("runs");
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pizzashack.yaml") && stderr.contains("modified in the future"), "{stderr}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&gatelet(&["bundle", "inspect", s(&bundle)]))).expect("json");
    let created = inspect["created_at"].as_u64().expect("created_at");
    assert!(created <= now && created + 120 > now, "created_at {created}, now {now}");

    // An explicit SOURCE_DATE_EPOCH in the future is refused, naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["bundle", "build", s(&project), "--key", s(&key), "--out", s(&bundle), "--serial", "4"])
        .env("SOURCE_DATE_EPOCH", "2082758400")
        .output()
        .expect("runs");
    let stderr = fails(&out);
    assert!(
        stderr.contains("SOURCE_DATE_EPOCH") && stderr.contains("later than this machine's clock"),
        "{stderr}"
    );
    // One in the past is taken as it is (reproducible builds).
    let out = Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["bundle", "build", s(&project), "--key", s(&key), "--out", s(&bundle), "--serial", "5"])
        .env("SOURCE_DATE_EPOCH", "1767225600")
        .output()
        .expect("runs");
    ok(&out);
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&gatelet(&["bundle", "inspect", s(&bundle)]))).expect("json");
    assert_eq!(inspect["created_at"], 1_767_225_600);
}

/// An API whose `POST /pets` offers an API key or an OAuth2 token with `write:pets`, and whose
/// `DELETE /pets` takes only HTTP basic or an API key.
const PETS: &str = "openapi: 3.0.3
info: {title: Pets, version: 1.0.0}
x-wso2-basePath: /pets/{version}
x-wso2-production-endpoints: {urls: [\"http://127.0.0.1:8080\"]}
paths:
  /pets:
    post:
      security: [{api_key: []}, {oauth2: [write:pets]}]
      responses: {'200': {description: ok}}
    delete:
      security: [{basic: []}, {api_key: []}]
      responses: {'200': {description: ok}}
components:
  securitySchemes:
    api_key: {type: apiKey, in: header, name: X-API-Key}
    basic: {type: http, scheme: basic}
    oauth2:
      type: oauth2
      flows: {clientCredentials: {tokenUrl: https://idp.example/token, scopes: {write:pets: w}}}
";

#[test]
fn schemes_gatelet_cannot_check_are_dropped_with_a_warning_or_fail_the_build() {
    let d = tempdir("pets");
    let project = d.join("project");
    copy_dir(&example(), &project);
    // Without DELETE: the API key alternative of POST is dropped, with a warning, and the build goes on.
    let without_delete = PETS.replace(
        "    delete:\n      security: [{basic: []}, {api_key: []}]\n      responses: {'200': {description: ok}}\n",
        "",
    );
    assert_ne!(without_delete, PETS);
    fs::write(project.join("apis/pets.yaml"), &without_delete).expect("write");
    ok(&gatelet(&["keygen", "--out", s(&d.join("k"))]));
    let bundle = d.join("b.glb");
    let build =
        || gatelet(&["bundle", "build", s(&project), "--key", s(&d.join("k.key")), "--out", s(&bundle)]);
    let out = build();
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = stderr.lines().find(|l| l.contains("api_key")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(warning.starts_with("warning: ") && warning.contains("pets.yaml:8:"), "{warning}");
    assert!(warning.contains("POST /pets") && warning.contains("\"api_key\" (apiKey)"), "{warning}");
    // What the bundle holds: the JWT alternative only.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&gatelet(&["bundle", "inspect", s(&bundle)]))).expect("inspect prints JSON");
    let api = v["apis"].as_array().expect("apis").iter().find(|a| a["name"] == "Pets").expect("Pets");
    assert_eq!(api["operations"][0]["scopes"], serde_json::json!([["write:pets"]]));

    // With DELETE: nothing a JWT may satisfy is left for it, and the build fails, naming why.
    fs::write(project.join("apis/pets.yaml"), PETS).expect("write");
    fs::remove_file(&bundle).expect("rm");
    let err = fails(&build());
    assert!(err.contains("pets.yaml:11:") && err.contains("DELETE /pets"), "{err}");
    assert!(err.contains("\"basic\" (http basic)") && err.contains("\"api_key\" (apiKey)"), "{err}");
    assert!(!bundle.exists(), "a failed build left a bundle");
    fs::remove_dir_all(&d).expect("cleanup");
}
