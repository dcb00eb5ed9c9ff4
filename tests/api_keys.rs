//! WSO2 API keys and tokens without subscriptions through a real `gatelet run`: keys from a
//! header and from a query parameter, the query key kept from the backend and the usage file,
//! `permittedIP` (behind a trusted proxy too) and `permittedReferer`, issuer roles, the
//! subscription check, and the project's default subscription tier throttling tokens that name
//! none.

mod common;

use std::io::Read;
use std::net::SocketAddr;

use common::*;
use gatelet::config::{Config, Overrides};
use gatelet::daemon::{self, Running};
use serde_json::{Map, Value, json};

const KEYS_ISSUER: &str = "https://apim.test/apikeys";

/// A project with a tokens-only issuer that does not validate subscriptions (a Keycloak), an
/// API-key-only issuer, `Default` redefined to 3 a day, and an API taking keys from a header or
/// a query parameter.
fn fixture(name: &str) -> Fixture {
    let f = Fixture::new(name);
    let p = f.dir.join("project");
    use ed25519_dalek::pkcs8::EncodePublicKey;
    std::fs::write(
        p.join("keys/apikeys.pub"),
        key(3).verifying_key().to_public_key_pem(Default::default()).expect("pem"),
    )
    .expect("write");
    std::fs::write(
        p.join("gatelet.toml"),
        format!(
            "label = \"keys\"\n\
             [[issuer]]\nname = \"idp\"\nissuer = \"{ISSUER}\"\naudience = \"gatelet\"\nkeys = [\"keys/issuer.pub\"]\n\
             [[issuer]]\nname = \"apim\"\nissuer = \"{KEYS_ISSUER}\"\nkeys = [\"keys/apikeys.pub\"]\n\
             api_keys = true\ntokens = false\n\
             [policies.subscription]\nDefault = {{ requests = 3, per = \"1d\" }}\n"
        ),
    )
    .expect("write");
    let b = f.backend;
    std::fs::write(
        p.join("apis/pets.yaml"),
        format!(
            "openapi: 3.0.3
info: {{title: Pets, version: 1.0.0}}
x-wso2-basePath: /pets/{{version}}
x-wso2-production-endpoints: {{urls: [\"http://{b}/pets-backend\"]}}
security: [{{header_key: []}}, {{query_key: []}}, {{oauth2: []}}]
paths:
  /pets:
    get: {{responses: {{'200': {{description: ok}}}}}}
  /counted:
    get:
      security: [{{oauth2: []}}]
      responses: {{'200': {{description: ok}}}}
components:
  securitySchemes:
    header_key: {{type: apiKey, in: header, name: X-API-Key}}
    query_key: {{type: apiKey, in: query, name: api_key}}
    oauth2:
      type: oauth2
      flows: {{clientCredentials: {{tokenUrl: https://issuer.test/token, scopes: {{}}}}}}
"
        ),
    )
    .expect("write");
    let _ = std::fs::remove_file(p.join("apis/shop.yaml"));
    f
}

fn start(f: &Fixture, extra: &str) -> (Running, SocketAddr) {
    let path = f.config(1, extra);
    let config = Config::resolve(Some(&path), std::iter::empty(), &Overrides::default()).expect("config");
    let running = daemon::start(config).expect("gateway starts");
    let http = running.bound.http.expect("http bound");
    (running, http)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs()
}

/// A WSO2 API Manager API key for Pets (the claims of the key in WSO2's documentation), from
/// the API-key issuer; `edit` adjusts the claims.
fn api_key(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut c = json!({
        "iss": KEYS_ISSUER, "sub": "admin@carbon.super", "jti": format!("key-{}", now()),
        "iat": now(), "exp": now() + 600, "keytype": "PRODUCTION", "token_type": "apiKey",
        "application": {"owner": "admin", "tier": "Unlimited", "name": "DefaultApplication", "id": 1},
        "tierInfo": {"Gold": {"stopOnQuotaReach": true, "spikeArrestLimit": 0, "spikeArrestUnit": null}},
        "subscribedAPIs": [{"subscriberTenantDomain": "carbon.super", "name": "Pets",
            "context": "/pets/1.0.0", "publisher": "admin", "version": "1.0.0", "subscriptionTier": "Gold"}],
        "permittedIP": "", "permittedReferer": ""
    })
    .as_object()
    .expect("object")
    .clone();
    edit(&mut c);
    let k = key(3);
    gatelet::token::mint::sign(&k, &gatelet::keys::jwk_thumbprint(&k.verifying_key()), &c).expect("signs")
}

fn ok(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Every usage line written so far, after the gateway shut down (which closes the spool).
fn usage_text(f: &Fixture) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(f.dir.join("spool")).expect("spool") {
        let path = entry.expect("entry").path();
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).expect("open"))
            .read_to_string(&mut text)
            .expect("gzip");
        all.push_str(&text);
    }
    all
}

#[test]
fn api_keys_from_a_header_and_from_the_query_never_reach_the_backend_or_the_usage_file() {
    let f = fixture("apikeys-locations");
    let (running, gw) = start(&f, "");
    let k = api_key(|_| {});

    // From the header: accepted; the backend gets neither the key nor an assertion of it.
    let r = send(gw, "GET", "/pets/1.0.0/pets?x=1", &[("X-API-Key", &k)], b"");
    let echo = ok(&r);
    assert_eq!(echo["uri"], "/pets-backend/pets?x=1");
    assert!(echo["headers"].get("x-api-key").is_none(), "{echo}");
    assert!(echo["headers"].get("x-jwt-assertion").is_none(), "an API key is never forwarded: {echo}");

    // From the query string: accepted, and removed from what is forwarded; other parameters stay.
    let r = send(gw, "GET", &format!("/pets/1.0.0/pets?a=1&api_key={k}&b=2"), &[], b"");
    let echo = ok(&r);
    assert_eq!(echo["uri"], "/pets-backend/pets?a=1&b=2");
    let r = send(gw, "GET", &format!("/pets/1.0.0/pets?api_key={k}"), &[], b"");
    assert_eq!(ok(&r)["uri"], "/pets-backend/pets");
    let sig = k.rsplit('.').next().expect("signature");
    assert!(!String::from_utf8_lossy(&r.body).contains(sig), "the backend saw the key");

    // A broken key in the query: refused as invalid credentials.
    let r = send(gw, "GET", "/pets/1.0.0/pets?api_key=not-a-jwt", &[], b"");
    assert_eq!((r.status, r.fault_code()), (401, 900901));
    // No credential at all: missing.
    let r = send(gw, "GET", "/pets/1.0.0/pets", &[], b"");
    assert_eq!((r.status, r.fault_code()), (401, 900902));

    // Refused before routing (ambiguous framing), with a path that does not normalise, in origin
    // and absolute form: the refusal's usage record names the path, never the query.
    for target in ["/pets/1.0.0/pets;x?api_key=LEAKED-KEY-1", "http://gw/pets/1.0.0/p;x?api_key=LEAKED-KEY-2"]
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(gw).expect("connect");
        write!(
            c,
            "POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        .expect("write");
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    }

    running.shutdown();
    let usage = usage_text(&f);
    assert!(usage.lines().filter(|l| l.contains("\"api\":\"Pets\"")).count() >= 5, "{usage}");
    assert!(!usage.contains(sig) && !usage.contains("not-a-jwt"), "a key reached the usage file: {usage}");
    assert!(usage.contains("pets;x"), "the framing refusals were recorded: {usage}");
    assert!(!usage.contains("LEAKED-KEY"), "a refused request's query reached the usage file: {usage}");
}

#[test]
fn roles_subscriptions_and_restrictions() {
    let f = fixture("apikeys-rules");
    let (running, gw) = start(&f, "trusted_proxies = [\"127.0.0.1\"]");

    // An API key where a bearer token is expected, and a bearer token where an API key is.
    let k = api_key(|_| {});
    let r = send(gw, "GET", "/pets/1.0.0/pets", &[("Authorization", &format!("Bearer {k}"))], b"");
    assert_eq!((r.status, r.fault_code()), (401, 900901), "{}", String::from_utf8_lossy(&r.body));
    let t = f.token(|c| {
        c.remove("subscribedAPIs");
    });
    let r = send(gw, "GET", "/pets/1.0.0/pets", &[("X-API-Key", &t)], b"");
    assert_eq!((r.status, r.fault_code()), (401, 900901), "{}", String::from_utf8_lossy(&r.body));
    // The same token as a bearer token: fine.
    ok(&get(gw, "/pets/1.0.0/pets", Some(&t)));

    // Not subscribed to this API.
    let other = api_key(|c| {
        c.insert("subscribedAPIs".into(), json!([{"name": "Other", "version": "1.0.0"}]));
    });
    let r = send(gw, "GET", "/pets/1.0.0/pets", &[("X-API-Key", &other)], b"");
    assert_eq!((r.status, r.fault_code()), (403, 900908));

    // permittedIP, against the caller as the trusted proxy (127.0.0.1) reports it.
    let site = api_key(|c| {
        c.insert("permittedIP".into(), json!("10.0.0.0/8, 2001:db8::/32"));
    });
    let r = send(gw, "GET", "/pets/1.0.0/pets", &[("X-API-Key", &site)], b"");
    assert_eq!((r.status, r.fault_code()), (403, 900908), "the proxy itself is not in the site");
    ok(&send(gw, "GET", "/pets/1.0.0/pets", &[("X-API-Key", &site), ("X-Forwarded-For", "10.1.2.3")], b""));
    let r =
        send(gw, "GET", "/pets/1.0.0/pets", &[("X-API-Key", &site), ("X-Forwarded-For", "192.0.2.1")], b"");
    assert_eq!(r.status, 403);
    let local = api_key(|c| {
        c.insert("permittedIP".into(), json!("127.0.0.1"));
    });
    ok(&send(gw, "GET", "/pets/1.0.0/pets", &[("X-API-Key", &local), ("X-Forwarded-For", "127.0.0.1")], b""));
    // A trusted proxy that does not say whom it forwards for: the caller is unknown, and no
    // restriction is met (not even one naming the proxy's own address).
    let r = send(gw, "GET", "/pets/1.0.0/pets", &[("X-API-Key", &local)], b"");
    assert_eq!((r.status, r.fault_code()), (403, 900908));

    // permittedReferer.
    let web = api_key(|c| {
        c.insert("permittedReferer".into(), json!("www.example.com/shop/*"));
    });
    ok(&send(
        gw,
        "GET",
        "/pets/1.0.0/pets",
        &[("X-API-Key", &web), ("Referer", "https://www.example.com/shop/a")],
        b"",
    ));
    for referer in [Some("https://evil.example/www.example.com/shop/"), None] {
        let mut h = vec![("X-API-Key", web.as_str())];
        h.extend(referer.map(|r| ("Referer", r)));
        let r = send(gw, "GET", "/pets/1.0.0/pets", &h, b"");
        assert_eq!((r.status, r.fault_code()), (403, 900908), "{referer:?}");
    }
    running.shutdown();
}

#[test]
fn a_token_without_subscriptions_is_throttled_at_the_default_tier() {
    let f = fixture("apikeys-default-tier");
    let (running, gw) = start(&f, "");
    // A Keycloak-style token: no subscribedAPIs, an issuer that does not validate subscriptions.
    let t = f.token(|c| {
        c.remove("subscribedAPIs");
    });
    for _ in 0..3 {
        ok(&get(gw, "/pets/1.0.0/counted", Some(&t)));
    }
    let r = get(gw, "/pets/1.0.0/counted", Some(&t));
    assert_eq!((r.status, r.fault_code()), (429, 900804), "{}", String::from_utf8_lossy(&r.body));
    // Another application has its own subscription counter.
    let other = f.token(|c| {
        c.remove("subscribedAPIs");
        c.insert("application".into(), json!({"id": "app-2", "tier": "Unlimited"}));
    });
    ok(&get(gw, "/pets/1.0.0/counted", Some(&other)));
    running.shutdown();
}
