//! `gatelet demo`: the gateway on its embedded default, for a laptop, in seconds.
//!
//! Throwaway keys (publisher and token issuer), the built-in pizzashack project compiled into a
//! signed bundle, an echo backend on a loopback port that answers with what it received (so the
//! `X-JWT-Assertion` and `X-Forwarded-*` headers can be seen), a temporary state directory, HTTP
//! on localhost. Prints ready-to-paste `curl` lines, runs until Ctrl-C, then removes its files.

use crate::server::guard::Guarded;
use crate::server::io::HyperIo;
use crate::server::rt;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{Config, Overrides};
use crate::keys;
use crate::server::body::{ProxyBody, full};

/// The example project, embedded so the binary needs no files.
const PROJECT: &[(&str, &str)] = &[
    ("gatelet.toml", include_str!("../examples/pizzashack/gatelet.toml")),
    ("apis/pizzashack.yaml", include_str!("../examples/pizzashack/apis/pizzashack.yaml")),
    ("apis/inventory.json", include_str!("../examples/pizzashack/apis/inventory.json")),
    ("keys/partner.jwks.json", include_str!("../examples/pizzashack/keys/partner.jwks.json")),
];
/// The backend addresses the example uses, all pointed at the echo backend.
const EXAMPLE_BACKENDS: &[&str] =
    &["http://127.0.0.1:8081", "http://127.0.0.1:8082", "http://127.0.0.1:8083", "http://127.0.0.1:8084"];

type DemoResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Answers every request with a JSON description of it.
async fn echo(req: Request<Incoming>) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    // Repeated headers are shown joined with ", " (as a list header reads), so none hides.
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes());
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_owned(), serde_json::Value::String(v.into()));
            }
        }
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let v = serde_json::json!({
        "echo": "gatelet demo backend",
        "method": method,
        "uri": uri,
        "headers": headers,
        "body_bytes": body.len(),
    });
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    text.push('\n');
    let mut resp = Response::new(full(Bytes::from(text)));
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// Serves HTTP/1.1 on `listener` with `handler`, on a thread of its own (the demo's echo backend,
/// and the backends of tests and benches).
pub fn spawn_http_server<F, Fut, B>(listener: std::net::TcpListener, handler: F) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, std::convert::Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("gatelet-http-server".into()).spawn(move || {
        // The data plane's runtime and connection type (its framing checks off): no second copy
        // of hyper's server in the binary for the demo.
        let ran = rt::run(move || async move {
            let listener = match rt::Listener::new(listener) {
                Ok(l) => l,
                Err(e) => {
                    log::error!("http server: {e}");
                    return;
                }
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                rt::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            HyperIo::new(Guarded::passthrough(stream)),
                            hyper::service::service_fn(handler),
                        )
                        .await;
                })
                .detach();
            }
        });
        if let Err(e) = ran {
            log::error!("http server: {e}");
        }
    })?;
    Ok(())
}

/// Starts the echo backend on a loopback port. Returns its address.
pub fn start_echo_backend() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    spawn_http_server(listener, echo)?;
    Ok(addr)
}

/// Writes the embedded project to `dir` with the issuer key and backends of this demo.
fn write_project(dir: &Path, issuer_pub_pem: &str, backend: SocketAddr) -> DemoResult<()> {
    for (name, text) in PROJECT {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut text = (*text).to_owned();
        for b in EXAMPLE_BACKENDS {
            text = text.replace(b, &format!("http://{backend}"));
        }
        // The Swagger file names its backend by host.
        text = text.replace("\"127.0.0.1:8084\"", &format!("\"{backend}\""));
        std::fs::write(path, text)?;
    }
    std::fs::write(dir.join("keys/central.pub"), issuer_pub_pem)?;
    Ok(())
}

/// Everything `demo` sets up, so tests can drive it without signals.
#[derive(Debug)]
pub struct Demo {
    pub dir: PathBuf,
    pub config: Config,
    /// A valid token for the `central` issuer (Gold, scopes order:read order:write).
    pub token: String,
    pub backend: SocketAddr,
}

/// Prepares the demo in a fresh temporary directory.
pub fn prepare(listen: Option<&str>) -> DemoResult<Demo> {
    let dir = std::env::temp_dir().join(format!("gatelet-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let backend = start_echo_backend()?;

    use ed25519_dalek::pkcs8::EncodePublicKey;
    let publisher = keys::generate()?;
    let issuer = keys::generate()?;
    let issuer_pem = issuer.verifying_key().to_public_key_pem(Default::default())?;
    let project = dir.join("project");
    write_project(&project, &issuer_pem, backend)?;
    let compiled = crate::project::compile(&project, crate::toolkit::now_unix())?;
    let bundle = crate::bundle::seal(&compiled.manifest, &publisher)?;
    let bundle_path = dir.join("bundle.glb");
    std::fs::write(&bundle_path, bundle)?;
    let publisher_pub = dir.join("publisher.pub");
    std::fs::write(&publisher_pub, publisher.verifying_key().to_public_key_pem(Default::default())?)?;

    let d = dir.to_string_lossy();
    let file = dir.join("gatelet.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:9090\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [bundle]\npath = \"{d}/bundle.glb\"\ntrusted_keys = [\"{d}/publisher.pub\"]\ninbox = \"{d}/inbox\"\n\
             [state]\ndir = \"{d}/state\"\n[usage]\nspool_dir = \"{d}/spool\"\n"
        ),
    )?;
    let config =
        Config::resolve(Some(&file), std::iter::empty(), &Overrides { listen: listen.map(str::to_owned) })?;
    let request = crate::token::MintRequest {
        issuer: "https://apim.example.com/oauth2/token".into(),
        subject: "demo-user".into(),
        audience: Some("gatelet".into()),
        apis: vec!["PizzaShackAPI:1.0.0".into()],
        app_id: Some("demo-app".into()),
        app_tier: Some("50PerMin".into()),
        tier: Some("Gold".into()),
        scope: Some("order:read order:write".into()),
        ttl_s: Some(24 * 3600),
        ..Default::default()
    };
    let jti = crate::token::mint::random_jti()?;
    let token = crate::token::mint(&issuer, &request, crate::toolkit::now_unix(), &jti)?;
    Ok(Demo { dir, config, token, backend })
}

/// `gatelet demo`.
pub fn run(listen: Option<&str>) -> DemoResult<()> {
    let demo = prepare(listen)?;
    let running = match crate::daemon::start(demo.config.clone()) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&demo.dir);
            return Err(Box::new(e));
        }
    };
    let http = running.bound.http.map(|a| a.to_string()).unwrap_or_default();
    let admin = running.bound.admin.map(|a| a.to_string()).unwrap_or_default();
    println!(
        "\ngatelet demo: serving the pizzashack bundle on http://{http} (echo backend {backend}).\n\n\
         A valid token (issuer central, Gold tier, scopes order:read order:write, 24 h):\n\n\
         curl -i -H 'Authorization: Bearer {token}' http://{http}/pizzashack/1.0.0/order/42\n\n\
         Without a token (401, fault 900902):\n\n\
         curl -i http://{http}/pizzashack/1.0.0/order/42\n\n\
         An open resource (x-wso2-disable-security), throttled per client IP:\n\n\
         curl -i http://{http}/pizzashack/1.0.0/menu\n\n\
         Ordering is limited to 3 a minute (the 4th gets 429 with Retry-After and RateLimit headers):\n\n\
         for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}}\\n' -X POST -H 'Authorization: Bearer {token}' http://{http}/pizzashack/1.0.0/order; done\n\n\
         Metrics: curl http://{admin}/metrics\n\nCtrl-C to stop.\n",
        backend = demo.backend,
        token = demo.token,
    );
    let waited = running.wait_for_signals();
    running.shutdown();
    let _ = std::fs::remove_dir_all(&demo.dir);
    waited?;
    Ok(())
}
