//! Security requirements on the wire: an operation that offers a scheme gatelet cannot check (an
//! API key, HTTP basic) beside a JWT requirement never lets a JWT in without the JWT's scopes.

mod common;

use std::net::SocketAddr;

use common::*;
use gatelet::config::{Config, Overrides};
use gatelet::daemon::{self, Running};

fn start(f: &Fixture) -> (Running, SocketAddr) {
    let path = f.config(1, "");
    let config = Config::resolve(Some(&path), std::iter::empty(), &Overrides::default()).expect("config");
    let running = daemon::start(config).expect("gateway starts");
    let http = running.bound.http.expect("http bound");
    (running, http)
}

#[test]
fn an_api_key_alternative_does_not_let_a_scopeless_jwt_through() {
    let f = Fixture::new("apikey-alternative");
    let b = f.backend;
    std::fs::write(
        f.dir.join("project/apis/pets.yaml"),
        format!(
            "openapi: 3.0.3
info: {{title: Pets, version: 1.0.0}}
x-wso2-basePath: /pets/{{version}}
x-wso2-production-endpoints: {{urls: [\"http://{b}/pets-backend\"]}}
paths:
  /pets:
    post:
      security: [{{api_key: []}}, {{oauth2: [write:pets]}}]
      responses: {{'200': {{description: ok}}}}
components:
  securitySchemes:
    api_key: {{type: apiKey, in: header, name: X-API-Key}}
    oauth2:
      type: oauth2
      flows: {{clientCredentials: {{tokenUrl: https://issuer.test/token, scopes: {{write:pets: w}}}}}}
"
        ),
    )
    .expect("write pets.yaml");
    let (running, gw) = start(&f);
    let subscribed = |c: &mut serde_json::Map<String, serde_json::Value>| {
        c.insert("subscribedAPIs".into(), serde_json::json!([{"name": "Pets", "version": "1.0.0"}]));
    };

    // A valid, subscribed token without the scope: refused for the scope.
    let scopeless = f.token(subscribed);
    let auth = format!("Bearer {scopeless}");
    let r = send(gw, "POST", "/pets/1.0.0/pets", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 403, "a scope-less JWT passed: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.fault_code(), 900910);

    // The same token with the scope: forwarded.
    let writer = f.token(|c| {
        subscribed(c);
        c.insert("scope".into(), "write:pets".into());
    });
    let auth = format!("Bearer {writer}");
    let r = send(gw, "POST", "/pets/1.0.0/pets", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["uri"], "/pets-backend/pets");

    // The API key alternative is an API key's: something that is not a valid key is refused as
    // invalid credentials, and never lets the request through.
    let r = send(gw, "POST", "/pets/1.0.0/pets", &[("X-API-Key", "anything")], b"");
    assert_eq!((r.status, r.fault_code()), (401, 900901));
    // A JWT of a tokens-only issuer is not an API key, even a valid one with the scope.
    let r = send(gw, "POST", "/pets/1.0.0/pets", &[("X-API-Key", &writer)], b"");
    assert_eq!((r.status, r.fault_code()), (401, 900901));

    running.shutdown();
}
