//! Definitions as WSO2 API Microgateway 3.x users wrote them (`tests/wso2/`, issue 10 section 2):
//! every one builds, and a copy with real loopback servers behind it runs through `gatelet run`
//! (the binary), reached with a raw HTTP client and a TLS client no one here wrote (native-tls
//! over the system's OpenSSL).

mod common;
mod usage_util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use ed25519_dalek::pkcs8::EncodePublicKey;

/// The backend's credentials in `09-endpoint-config.yaml`, as `printf 'gatelet-backend:s3cr3t-Pa55'
/// | base64` encodes them.
const PASSWORD: &str = "s3cr3t-Pa55";
const BASIC: &str = "Basic Z2F0ZWxldC1iYWNrZW5kOnMzY3IzdC1QYTU1";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wso2")
}

fn gatelet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatelet"))
}

#[test]
fn every_definition_in_the_corpus_builds() {
    // The corpus's issuer key is the one the runtime test signs with.
    let pem = key(2).verifying_key().to_public_key_pem(Default::default()).expect("pem");
    assert_eq!(std::fs::read_to_string(corpus().join("keys/issuer.pub")).expect("key"), pem);

    let files = std::fs::read_dir(corpus().join("apis")).expect("apis").count();
    let c = gatelet::project::compile(&corpus(), 1).expect("the corpus builds as it stands");
    assert_eq!(c.manifest.apis.len(), files, "one API per definition");
    assert_eq!(c.manifest.scope_rule, gatelet::bundle::model::ScopeRule::AnyOf);
    // Exactly the warnings WSO2 users should see: the undeclared scope, the retry settings
    // gatelet reads but does not apply, and the API's backend password kept from the three
    // operations whose own endpoints are other backends.
    assert_eq!(c.warnings.len(), 5, "{:#?}", c.warnings);
    for op in ["GET /flaky:", "GET /flaky-no-retry:", "POST /sent-once:"] {
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains(op) && w.contains("not given to this operation's endpoints")),
            "{op} {:#?}",
            c.warnings
        );
    }
    assert!(c.warnings.iter().any(|w| w.contains("03-relative-server.yaml:15: scope \"inventory:read\"")));
    assert!(c.warnings.iter().any(|w| w.contains("09-endpoint-config.yaml:48:")
        && w.contains("backOffFactor, intervalInMillis, maxWaitIntervalInMillis, statusCodes ignored")));
    let by_name = |n: &str| c.manifest.apis.iter().find(|a| a.name == n).unwrap_or_else(|| panic!("{n}"));
    assert_eq!(by_name("Petstore").context, "/petstore/v1");
    assert_eq!(by_name("LegacyOrders").context, "/legacy/v2");
    assert_eq!(by_name("Inventory").context, "/inventory/v3");
    assert!(by_name("Payments").https_only);
    assert!(by_name("CorsOff").cors.is_none());
    for n in ["CorsCamel", "CorsSnake", "CorsKebab"] {
        let cors = by_name(n).cors.clone().expect("cors");
        assert_eq!(cors.expose_headers, ["X-Total-Count", "ETag"], "{n}");
        assert!(cors.allow_credentials, "{n}");
    }
    let orders = &by_name("LegacyOrders").operations[0];
    assert_eq!(orders.scopes, [vec!["orders:admin".to_owned()], vec!["orders:read".to_owned()]]);

    // The CLI a user runs: builds, and `bundle inspect` never shows the backend's password.
    let dir = tempdir("wso2-cli");
    let key_prefix = dir.join("publisher");
    assert!(
        gatelet().args(["keygen", "--out", path_str(&key_prefix)]).output().expect("keygen").status.success()
    );
    let glb = dir.join("corpus.glb");
    let out = gatelet()
        .args(["bundle", "build", path_str(&corpus()), "--key"])
        .arg(key_prefix.with_extension("key"))
        .args(["--out", path_str(&glb), "--serial", "7"])
        .output()
        .expect("build runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    let out = gatelet().args(["bundle", "inspect", path_str(&glb)]).output().expect("inspect runs");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(json.contains("\"scope_rule\": \"any-of\""), "{json}");
    assert!(json.contains("(hidden)") && json.contains("gatelet-backend"), "{json}");
    assert!(!json.contains(PASSWORD) && !json.contains(&BASIC[6..]), "the password shows: {json}");
}

/// An HTTPS server whose first connection is closed before the TLS handshake (a request on it
/// can never have been sent); later ones get `200 ok`. Returns its port and the connection count.
fn flaky_tls(cert: &Path, key: &Path) -> (u16, Arc<AtomicUsize>) {
    let identity = native_tls::Identity::from_pkcs8(
        &std::fs::read(cert).expect("cert"),
        &std::fs::read(key).expect("key"),
    )
    .expect("identity");
    let acceptor = native_tls::TlsAcceptor::new(identity).expect("acceptor");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                drop(stream);
                continue;
            }
            let Ok(mut tls) = acceptor.accept(stream) else { continue };
            read_head(&mut tls);
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (port, count)
}

/// A server that reads a request and closes without answering: the request was sent.
fn silent() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            read_head(&mut stream);
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

fn read_head(s: &mut impl Read) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
}

/// `gatelet run` as a child, with its log lines collected.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = gatelet()
            .args(["run", "--config", path_str(config)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gatelet run starts");
        let stderr = child.stderr.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().expect("lines").push(line.clone());
                let _ = tx.send(line);
            }
        });
        Daemon { child, lines, rx }
    }

    /// Waits for a log line containing `what` and returns it.
    fn wait_for(&self, what: &str) -> String {
        loop {
            match self.rx.recv_timeout(Duration::from_secs(20)) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(e) => panic!("no log line with {what:?} ({e}): {:#?}", self.lines.lock().expect("lines")),
            }
        }
    }

    /// A line already logged that contains `what`.
    fn seen(&self, what: &str) -> Option<String> {
        self.lines.lock().expect("lines").iter().find(|l| l.contains(what)).cloned()
    }

    fn listening(&self, role: &str) -> SocketAddr {
        let line = self.wait_for(&format!("listening {role} "));
        line.rsplit(' ').next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    }

    /// SIGTERM, exit 0; returns every log line.
    fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        assert_eq!(self.child.wait().expect("exits").code(), Some(0));
        // The reader thread ends at EOF, after the last line.
        while self.rx.recv_timeout(Duration::from_secs(10)).is_ok() {}
        self.lines.lock().expect("lines").clone()
    }
}

/// Copies the corpus to `f`'s project with the placeholders replaced.
fn install_corpus(f: &Fixture, hosts: &[(&str, String)], scopes: &str) {
    let project = f.dir.join("project");
    let _ = std::fs::remove_dir_all(&project);
    for sub in ["apis", "keys"] {
        std::fs::create_dir_all(project.join(sub)).expect("mkdir");
        for e in std::fs::read_dir(corpus().join(sub)).expect("corpus") {
            let path = e.expect("entry").path();
            let mut text = std::fs::read_to_string(&path).expect("read");
            for (placeholder, host) in hosts {
                text = text.replace(placeholder, host);
            }
            std::fs::write(project.join(sub).join(path.file_name().expect("name")), text).expect("write");
        }
    }
    let toml = std::fs::read_to_string(corpus().join("gatelet.toml")).expect("toml");
    assert!(toml.contains("scopes = \"any-of\""));
    std::fs::write(
        project.join("gatelet.toml"),
        toml.replace("scopes = \"any-of\"", &format!("scopes = \"{scopes}\"")),
    )
    .expect("write");
}

fn https_get(addr: SocketAddr, cert: &Path, path: &str, token: &str) -> Resp {
    let root = native_tls::Certificate::from_pem(&std::fs::read(cert).expect("cert")).expect("pem");
    let connector =
        native_tls::TlsConnector::builder().add_root_certificate(root).build().expect("connector");
    let mut tls = connector.connect("localhost", TcpStream::connect(addr).expect("connect")).expect("TLS");
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    read_response(&mut BufReader::new(tls)).expect("response")
}

#[test]
fn the_corpus_routes_authorises_throttles_and_reaches_its_backends_through_gatelet_run() {
    let f = Fixture::new("wso2-run");
    let cert = f.dir.join("tls.crt");
    let key_file = f.dir.join("tls.key");
    let made = self_signed_cert(&cert, &key_file);
    match made {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("openssl req failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            usage_util::cannot_run(
                "wso2 corpus at run time",
                &format!("no openssl to make a certificate: {e}"),
            );
            return;
        }
    }
    let (flaky, flaky_seen) = flaky_tls(&cert, &key_file);
    let (flaky_once, flaky_once_seen) = flaky_tls(&cert, &key_file);
    let (silent_addr, silent_seen) = silent();
    let (untouched_addr, untouched_seen) = silent();
    let hosts = [
        ("__BACKEND__", f.backend.to_string()),
        ("__FLAKY_NO_RETRY__", format!("localhost:{flaky_once}")),
        ("__FLAKY__", format!("localhost:{flaky}")),
        ("__SILENT__", silent_addr.to_string()),
        ("__UNTOUCHED__", untouched_addr.to_string()),
    ];
    install_corpus(&f, &hosts, "any-of");
    let tls = format!(
        "listen_tls = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nbackend_ca_file = \"{}\"",
        cert.display(),
        key_file.display(),
        cert.display()
    );
    let config = f.config(10, &tls);
    let d = Daemon::start(&config);
    let gw = d.listening("http");
    let gws = d.listening("https");
    let admin = d.listening("admin");
    d.wait_for("ready: bundle serial 10");

    let subscribed: Vec<serde_json::Value> = [
        ("Petstore", "1.0.5"),
        ("LegacyOrders", "v2"),
        ("Inventory", "3"),
        ("CorsCamel", "1.0.0"),
        ("CorsSnake", "1.0.0"),
        ("CorsKebab", "1.0.0"),
        ("Payments", "1.0.0"),
        ("Warehouse", "1.0.0"),
    ]
    .iter()
    .map(|(n, v)| serde_json::json!({"name": n, "version": v, "subscriptionTier": "Gold"}))
    .collect();
    let token = |scope: &str| {
        f.token(|c| {
            c.insert("subscribedAPIs".into(), subscribed.clone().into());
            if !scope.is_empty() {
                c.insert("scope".into(), scope.into());
            }
        })
    };
    let plain = token("");

    // Context and backend from servers[0] with variables; the caller's Authorization never
    // reaches a backend without credentials of its own.
    let r = get(gw, "/petstore/v1/pets", Some(&plain));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["uri"], "/petstore/v1/pets");
    assert!(r.json()["headers"].get("authorization").is_none(), "{}", r.json());
    assert_eq!(r.json()["headers"]["x-jwt-assertion"], plain.as_str());
    // A resource tier of 3 a day: exactly 3 pass.
    let codes: Vec<u16> = (0..4).map(|_| get(gw, "/petstore/v1/pets/1", Some(&plain)).status).collect();
    assert_eq!(codes, [200, 200, 200, 429]);

    // Swagger 2 basePath and host; two scopes in one requirement are alternatives.
    for scope in ["orders:read", "orders:admin", "profile orders:admin"] {
        let r = get(gw, "/legacy/v2/orders/7", Some(&token(scope)));
        assert_eq!(r.status, 200, "{scope}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["uri"], "/legacy/v2/orders/7");
    }
    let r = get(gw, "/legacy/v2/orders/7", Some(&plain));
    assert_eq!((r.status, r.fault_code()), (403, 900910));

    // Relative server URL as context; undeclared scope still required; templates inside a
    // segment; the endpoint's query first.
    assert_eq!(get(gw, "/inventory/v3/items/1", Some(&plain)).fault_code(), 900910);
    let r = get(gw, "/inventory/v3/items/1", Some(&token("inventory:read")));
    assert_eq!((r.status, r.json()["uri"].as_str()), (200, Some("/inv/items/1")));
    assert_eq!(get(gw, "/inventory/v3/files/stock.csv", None).json()["uri"], "/inv/files/stock.csv");
    assert_eq!(get(gw, "/inventory/v3/pet/test.42", None).json()["uri"], "/inv/pet/test.42");
    assert_eq!(get(gw, "/inventory/v3/pet/42", None).status, 404);
    assert_eq!(
        get(gw, "/inventory/v3/report?day=1", None).json()["uri"],
        "/inv/report?apikey=backend-key&day=1"
    );

    // CORS in each spelling: expose headers on actual responses, not on preflights.
    let auth = format!("Bearer {plain}");
    for spelling in ["camel", "snake", "kebab"] {
        let path = format!("/cors-{spelling}/1.0.0/things");
        let r =
            send(gw, "GET", &path, &[("Authorization", &auth), ("Origin", "https://app.example.com")], b"");
        assert_eq!(r.status, 200, "{spelling}");
        assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"), "{spelling}");
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"), "{spelling}");
        assert_eq!(r.header("access-control-expose-headers"), Some("X-Total-Count, ETag"), "{spelling}");
        let r = send(
            gw,
            "OPTIONS",
            &path,
            &[("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "GET")],
            b"",
        );
        assert_eq!(r.status, 204, "{spelling}");
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"), "{spelling}");
        assert_eq!(r.header("access-control-expose-headers"), None, "{spelling}");
    }
    let r = send(gw, "GET", "/cors-off/1.0.0/things", &[("Origin", "https://app.example.com")], b"");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (200, None));

    // HTTPS only: refused on the HTTP listener before authentication, served on HTTPS.
    for t in [Some(plain.as_str()), None] {
        let r = get(gw, "/payments/1.0.0/balance", t);
        assert_eq!((r.status, r.fault_code()), (403, 900906), "{}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["fault"]["description"].as_str().is_some_and(|d| d.contains("HTTPS only")));
    }
    let r = send(
        gw,
        "OPTIONS",
        "/payments/1.0.0/balance",
        &[("Origin", "https://a"), ("Access-Control-Request-Method", "GET")],
        b"",
    );
    assert_eq!(r.status, 403, "a preflight too");
    let r = https_get(gws, &cert, "/payments/1.0.0/balance", &plain);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        (r.json()["uri"].as_str(), r.json()["headers"]["x-forwarded-proto"].as_str()),
        (Some("/pay/balance"), Some("https"))
    );

    // securityConfig: the backend gets the endpoint's basic credentials, never the caller's.
    let r = get(gw, "/warehouse/1.0.0/whoami", Some(&plain));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["headers"]["authorization"], BASIC);
    assert_eq!(r.json()["headers"]["x-jwt-assertion"], plain.as_str());
    // advanceEndpointConfig.timeoutInMillis replaces the device's 1 s, both ways.
    let r = get(gw, "/warehouse/1.0.0/patient/slow?ms=1500", Some(&plain));
    assert_eq!(r.status, 200, "3 s for this endpoint: {}", String::from_utf8_lossy(&r.body));
    let r = get(gw, "/warehouse/1.0.0/impatient/slow?ms=700", Some(&plain));
    assert_eq!((r.status, r.fault_code()), (504, 101504), "200 ms for this one");
    // retryConfig.count: a request that never left is tried again; without it, it is not.
    let r = get(gw, "/warehouse/1.0.0/flaky", None);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(flaky_seen.load(Ordering::SeqCst), 2);
    let r = get(gw, "/warehouse/1.0.0/flaky-no-retry", None);
    assert_eq!((r.status, r.fault_code()), (502, 101503));
    assert_eq!(flaky_once_seen.load(Ordering::SeqCst), 1);
    // A request a backend received is never sent again, whatever the retry count.
    let r = send(gw, "POST", "/warehouse/1.0.0/sent-once", &[], b"");
    assert_eq!((r.status, r.fault_code()), (502, 101503));
    assert_eq!((silent_seen.load(Ordering::SeqCst), untouched_seen.load(Ordering::SeqCst)), (1, 0));

    // OpenAPI's all-of reading, by project setting, through the inbox.
    install_corpus(&f, &hosts, "all-of");
    let inbox = f.dir.join("inbox");
    std::fs::write(inbox.join(".next"), f.bundle(11)).expect("write");
    std::fs::rename(inbox.join(".next"), inbox.join("next.glb")).expect("rename");
    d.wait_for("now serving serial 11");
    let r = get(gw, "/legacy/v2/orders/7", Some(&token("orders:read")));
    assert_eq!((r.status, r.fault_code()), (403, 900910), "both scopes are needed now");
    assert_eq!(get(gw, "/legacy/v2/orders/7", Some(&token("orders:admin orders:read"))).status, 200);
    let metrics = String::from_utf8(get(admin, "/metrics", None).body).expect("text");
    assert!(metrics.contains("gatelet_requests_total{api=\"Payments\",status=\"403\"} 2"), "{metrics}");

    let log = d.stop();
    let all = log.join("\n");
    assert!(!all.contains(PASSWORD) && !all.contains(&BASIC[6..]), "the password is in the log");
    assert!(!all.contains("HTTPS-only APIs"), "an HTTPS listener is configured");
    // Each refusal is one usage record, like the others.
    let lines = usage_util::closed_lines(&f.dir.join("spool"));
    let refused = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["api"] == "Payments" && r["status"] == 403 && r["error_code"] == 900906)
        .count();
    assert_eq!(refused, 2, "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains(PASSWORD)));

    // Without an HTTPS listener the operator is told which APIs cannot be served.
    let config = f.config(12, "listen_tls = \"\"");
    let d = Daemon::start(&config);
    let gw = d.listening("http");
    d.wait_for("ready: bundle serial 12");
    // Said at start, before the listeners.
    let warning = d.seen("HTTPS-only APIs").expect("a warning naming the APIs");
    assert!(
        warning.contains("Payments 1.0.0 (/payments/1.0.0)") && warning.contains("listen_tls"),
        "{warning}"
    );
    assert_eq!(get(gw, "/payments/1.0.0/balance", Some(&plain)).status, 403);
    d.stop();
}
