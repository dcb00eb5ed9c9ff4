//! Shared parts of the wire-level tests: a throwaway project and keys, a real backend server,
//! and a small raw HTTP/1.1 client over std sockets (so the tests see exactly the bytes).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePublicKey;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use smol_hyper::rt::FuturesIo;

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gatelet-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The test backend: echoes what it received as JSON; `/slow?ms=N` waits first; `/big?bytes=N`
/// answers N bytes.
async fn backend(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    if path.ends_with("/slow") {
        let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(2000);
        smol::Timer::after(Duration::from_millis(ms)).await;
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (k.as_str().to_owned(), serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()))
        })
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if path.ends_with("/big") {
        let n = query.get("bytes").and_then(|v| v.parse().ok()).unwrap_or(1000);
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; n]))));
    }
    let v = serde_json::json!({"method": method, "uri": uri, "headers": headers, "body_bytes": body.len()});
    Ok(Response::new(Full::new(Bytes::from(v.to_string()))))
}

/// Starts the test backend on a loopback port.
pub fn start_backend() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    gatelet::demo::spawn_http_server(listener, backend).expect("backend thread");
    addr
}

/// Starts the test backend behind TLS (PEM certificate chain and PKCS#8 key).
pub fn start_tls_backend(cert: &Path, key: &Path) -> SocketAddr {
    let identity = native_tls::Identity::from_pkcs8(
        &std::fs::read(cert).expect("cert"),
        &std::fs::read(key).expect("key"),
    )
    .expect("identity");
    let acceptor: async_native_tls::TlsAcceptor =
        native_tls::TlsAcceptor::new(identity).expect("acceptor").into();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let listener = smol::net::TcpListener::try_from(listener).expect("async listener");
        let ex = Arc::new(smol::Executor::new());
        smol::block_on(ex.run(async {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                ex.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(FuturesIo::new(tls), hyper::service::service_fn(backend))
                        .await;
                })
                .detach();
            }
        }));
    });
    addr
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

pub const ISSUER: &str = "https://issuer.test/";

/// A project, its keys and a place for everything a gateway needs.
pub struct Fixture {
    pub dir: PathBuf,
    pub publisher: SigningKey,
    pub issuer: SigningKey,
    pub backend: SocketAddr,
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

impl Fixture {
    pub fn new(name: &str) -> Fixture {
        let dir = tempdir(name);
        let f = Fixture { dir, publisher: key(1), issuer: key(2), backend: start_backend() };
        f.write_project();
        std::fs::write(
            f.dir.join("publisher.pub"),
            f.publisher.verifying_key().to_public_key_pem(Default::default()).expect("pem"),
        )
        .expect("write");
        std::fs::create_dir_all(f.dir.join("inbox")).expect("inbox");
        f
    }

    fn write_project(&self) {
        let p = self.dir.join("project");
        std::fs::create_dir_all(p.join("apis")).expect("mkdir");
        std::fs::create_dir_all(p.join("keys")).expect("mkdir");
        std::fs::write(
            p.join("keys/issuer.pub"),
            self.issuer.verifying_key().to_public_key_pem(Default::default()).expect("pem"),
        )
        .expect("write");
        std::fs::write(
            p.join("gatelet.toml"),
            format!(
                "label = \"it\"\n[[issuer]]\nname = \"test\"\nissuer = \"{ISSUER}\"\naudience = \"gatelet\"\n\
                 keys = [\"keys/issuer.pub\"]\nvalidate_subscription = true\n\
                 [policies.api]\n\"3PerDay\" = {{ requests = 3, per = \"1d\" }}\n"
            ),
        )
        .expect("write");
        let b = self.backend;
        let down = closed_port();
        std::fs::write(
            p.join("apis/shop.yaml"),
            format!(
                "openapi: 3.0.3
info: {{title: Shop, version: 1.0.0}}
x-wso2-basePath: /shop/{{version}}
x-wso2-production-endpoints: {{urls: [\"http://{b}/backend\"]}}
x-wso2-sandbox-endpoints: {{urls: [\"http://{b}/sandbox\"]}}
x-wso2-cors: {{access-control-allow-origins: [\"https://app.example\"], access-control-allow-methods: [GET, POST], access-control-allow-headers: [authorization], access-control-allow-credentials: true}}
security: [{{oauth: []}}]
paths:
  /items/{{id}}:
    get: {{responses: {{'200': {{description: ok}}}}}}
  /items:
    post: {{responses: {{'200': {{description: ok}}}}}}
  /admin:
    get:
      security: [{{oauth: [shop:admin]}}]
      responses: {{'200': {{description: ok}}}}
  /limited:
    get:
      x-wso2-throttling-tier: 3PerDay
      responses: {{'200': {{description: ok}}}}
  /open:
    get:
      x-wso2-disable-security: true
      responses: {{'200': {{description: ok}}}}
  /slow:
    get: {{responses: {{'200': {{description: ok}}}}}}
  /big:
    get: {{responses: {{'200': {{description: ok}}}}}}
  /down:
    get:
      x-wso2-production-endpoints: {{urls: [\"http://127.0.0.1:{down}/\"]}}
      responses: {{'200': {{description: ok}}}}
  /failover:
    get:
      x-wso2-production-endpoints: {{type: failover, urls: [\"http://127.0.0.1:{down}/first\", \"http://{b}/second\"]}}
      responses: {{'200': {{description: ok}}}}
  /balanced:
    get:
      x-wso2-production-endpoints: {{type: load_balance, urls: [\"http://{b}/x\", \"http://{b}/y\"]}}
      responses: {{'200': {{description: ok}}}}
components:
  securitySchemes:
    oauth:
      type: oauth2
      flows: {{clientCredentials: {{tokenUrl: https://issuer.test/token, scopes: {{shop:admin: admin}}}}}}
"
            ),
        )
        .expect("write");
    }

    /// Builds the project into a bundle with `serial`, returning the bytes.
    pub fn bundle(&self, serial: u64) -> Vec<u8> {
        let m =
            gatelet::project::compile(&self.dir.join("project"), serial).expect("project compiles").manifest;
        gatelet::bundle::seal(&m, &self.publisher).expect("seals")
    }

    /// Writes the bundle with `serial` as the installed bundle and returns the config text.
    pub fn config(&self, serial: u64, extra: &str) -> PathBuf {
        self.config_with_head_timeout(serial, extra, 1500)
    }

    /// [`Fixture::config`] with another `header_read_timeout_ms`.
    pub fn config_with_head_timeout(&self, serial: u64, extra: &str, head_timeout_ms: u64) -> PathBuf {
        std::fs::write(self.dir.join("bundle.glb"), self.bundle(serial)).expect("write bundle");
        let d = self.dir.display();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nheader_read_timeout_ms = {head_timeout_ms}\n\
             backend_timeout_ms = 1000\nbackend_connect_timeout_ms = 500\ndrain_timeout_s = 10\nthreads = 2\n{extra}\n\
             [bundle]\npath = \"{d}/bundle.glb\"\ntrusted_keys = [\"{d}/publisher.pub\"]\ninbox = \"{d}/inbox\"\ninbox_poll_ms = 100\n\
             [state]\ndir = \"{d}/state\"\n[usage]\nspool_dir = \"{d}/spool\"\nflush_interval_ms = 100\n[log]\nlevel = \"debug\"\n"
        );
        let path = self.dir.join("gatelet.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// A token from the test issuer; `edit` adjusts the claims.
    pub fn token(&self, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
        let mut claims = serde_json::json!({
            "iss": ISSUER,
            "sub": "alice",
            "aud": "gatelet",
            "exp": now + 600,
            "iat": now,
            "jti": format!("jti-{now}"),
            "application": {"id": "app-1", "name": "App", "tier": "Unlimited", "owner": "alice"},
            "subscribedAPIs": [{"name": "Shop", "version": "1.0.0", "subscriptionTier": "Gold"}],
        })
        .as_object()
        .expect("object")
        .clone();
        edit(&mut claims);
        let kid = gatelet::keys::jwk_thumbprint(&self.issuer.verifying_key());
        gatelet::token::mint::sign(&self.issuer, &kid, &claims).expect("signs")
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn fault_code(&self) -> u64 {
        self.json()["fault"]["code"].as_u64().expect("fault code")
    }
}

/// Reads one response from `r` (Content-Length or chunked or until close).
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let get = |n: &str| {
        headers.iter().find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if status != 204 && status != 304 {
        r.read_to_end(&mut body)?;
    }
    Ok(Resp { status, headers, body })
}

/// Sends one request on a fresh connection and reads the response.
pub fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_length = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_length && (!body.is_empty() || method == "POST") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    read_response(&mut BufReader::new(s)).expect("response")
}

pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    send(addr, "GET", path, &headers, b"")
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// Makes a self-signed P-256 certificate for `localhost` with the openssl CLI, valid a day:
/// `cert` and `key` (PEM). The output of `openssl req`, or the error of not running it.
pub fn self_signed_cert(cert: &Path, key: &Path) -> std::io::Result<std::process::Output> {
    std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        .args(["-keyout", path_str(key), "-out", path_str(cert)])
        .output()
}
