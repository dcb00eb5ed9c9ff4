//! The data plane on the wire: a real listener, a real backend, real tokens and bundles.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use gatelet::config::{Config, Overrides};
use gatelet::daemon::{self, Running};

fn start(f: &Fixture, serial: u64, extra: &str) -> (Running, SocketAddr, SocketAddr) {
    let path = f.config(serial, extra);
    let config = Config::resolve(Some(&path), std::iter::empty(), &Overrides::default()).expect("config");
    let running = daemon::start(config).expect("gateway starts");
    let http = running.bound.http.expect("http bound");
    let admin = running.bound.admin.expect("admin bound");
    (running, http, admin)
}

#[test]
fn tokens_scopes_subscriptions_routes_and_forwarding() {
    let f = Fixture::new("pipeline");
    let (running, gw, admin) = start(&f, 10, "");
    let token = f.token(|_| {});

    // Valid token: the backend's answer, with the context stripped and the query kept.
    let r = get(gw, "/shop/1.0.0/items/42?color=red", Some(&token));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echo = r.json();
    assert_eq!(echo["uri"], "/backend/items/42?color=red");
    let h = &echo["headers"];
    assert_eq!(h["x-jwt-assertion"], token.as_str(), "the backend gets the validated token");
    assert!(h.get("authorization").is_none(), "Authorization is not forwarded");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "gw.test");
    assert_eq!(h["host"], f.backend.to_string());
    assert!(r.header("x-request-id").is_some());

    // Paths are normalised once, for routing and forwarding alike.
    let r = get(gw, "/shop//1.0.0/./items/%34%32/", Some(&token));
    assert_eq!(r.json()["uri"], "/backend/items/42");

    // Sandbox key type → sandbox endpoint.
    let sandbox = f.token(|c| {
        c.insert("keytype".into(), "SANDBOX".into());
    });
    assert_eq!(get(gw, "/shop/1.0.0/items/1", Some(&sandbox)).json()["uri"], "/sandbox/items/1");

    // Missing, malformed, expired.
    let r = get(gw, "/shop/1.0.0/items/1", None);
    assert_eq!((r.status, r.fault_code()), (401, 900902));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = get(gw, "/shop/1.0.0/items/1", Some("not.a.token"));
    assert_eq!((r.status, r.fault_code()), (401, 900901));
    assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""));
    let expired = f.token(|c| {
        c.insert("exp".into(), 1_000_000_000.into());
        c.insert("iat".into(), 999_999_000.into());
    });
    let r = get(gw, "/shop/1.0.0/items/1", Some(&expired));
    assert_eq!((r.status, r.fault_code()), (401, 900903));
    let other_key = {
        let kid = gatelet::keys::jwk_thumbprint(&f.issuer.verifying_key());
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), ISSUER.into());
        claims.insert("sub".into(), "mallory".into());
        claims.insert("aud".into(), "gatelet".into());
        claims.insert("exp".into(), 4_000_000_000u64.into());
        gatelet::token::mint::sign(&key(9), &kid, &claims).expect("signs")
    };
    assert_eq!(get(gw, "/shop/1.0.0/items/1", Some(&other_key)).status, 401);

    // Scope and subscription → 403.
    let r = get(gw, "/shop/1.0.0/admin", Some(&token));
    assert_eq!((r.status, r.fault_code()), (403, 900910));
    let admin_token = f.token(|c| {
        c.insert("scope".into(), "shop:admin".into());
    });
    assert_eq!(get(gw, "/shop/1.0.0/admin", Some(&admin_token)).status, 200);
    let unsubscribed = f.token(|c| {
        c.insert("subscribedAPIs".into(), serde_json::json!([{"name": "Other", "version": "1.0.0"}]));
    });
    let r = get(gw, "/shop/1.0.0/items/1", Some(&unsubscribed));
    assert_eq!((r.status, r.fault_code()), (403, 900908));

    // Open resource: no token needed, and no forged assertion reaches the backend, however spelled.
    let r = send(
        gw,
        "GET",
        "/shop/1.0.0/open",
        &[("X-JWT-Assertion", "forged"), ("X_JWT_Assertion", "forged")],
        b"",
    );
    assert_eq!(r.status, 200);
    let headers = r.json()["headers"].as_object().expect("headers").clone();
    assert!(
        headers.keys().all(|k| !k.replace('_', "-").eq_ignore_ascii_case("x-jwt-assertion")),
        "{headers:?}"
    );
    // Paths a backend could resolve differently from the router are refused.
    for p in ["/shop/1.0.0/items/..;/admin", "/shop/1.0.0/items/a%2Fb", "/shop/1.0.0/items/a%5cb"] {
        assert_eq!(get(gw, p, Some(&token)).status, 400, "{p}");
    }

    // CORS (x-wso2-cors): the preflight is answered without a token; answers carry the headers
    // for an allowed origin, faults included; other origins get none.
    let r = send(
        gw,
        "OPTIONS",
        "/shop/1.0.0/items/1",
        &[("Origin", "https://app.example"), ("Access-Control-Request-Method", "GET")],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let auth = format!("Bearer {token}");
    let r = send(
        gw,
        "GET",
        "/shop/1.0.0/items/1",
        &[("Origin", "https://app.example"), ("Authorization", &auth)],
        b"",
    );
    assert_eq!((r.status, r.header("access-control-allow-origin")), (200, Some("https://app.example")));
    let r = send(gw, "GET", "/shop/1.0.0/items/1", &[("Origin", "https://app.example")], b"");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (401, Some("https://app.example")));
    let r = send(
        gw,
        "GET",
        "/shop/1.0.0/items/1",
        &[("Origin", "https://evil.example"), ("Authorization", &auth)],
        b"",
    );
    assert_eq!((r.status, r.header("access-control-allow-origin")), (200, None));

    // Unknown path and method.
    let r = get(gw, "/nope/items", Some(&token));
    assert_eq!((r.status, r.fault_code()), (404, 900906));
    let r = send(gw, "DELETE", "/shop/1.0.0/items/1", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));

    // Request bodies stream through; an oversized declared body is refused before forwarding.
    let auth = format!("Bearer {token}");
    let r = send(gw, "POST", "/shop/1.0.0/items", &[("Authorization", &auth)], &[b'a'; 5000]);
    assert_eq!(r.json()["body_bytes"], 5000);
    let r = send(
        gw,
        "POST",
        "/shop/1.0.0/items",
        &[("Authorization", &auth), ("Content-Length", "99999999999")],
        b"",
    );
    assert_eq!(r.status, 413);
    // A large response streams back whole.
    let r = get(gw, "/shop/1.0.0/big?bytes=3000000", Some(&token));
    assert_eq!((r.status, r.body.len()), (200, 3_000_000));

    // Admin endpoints.
    assert_eq!(get(admin, "/healthz", None).json()["status"], "healthy");
    assert_eq!(get(admin, "/readyz", None).status, 200);
    let metrics = String::from_utf8(get(admin, "/metrics", None).body).expect("text");
    assert!(metrics.contains("gatelet_requests_total{api=\"Shop\",status=\"200\"}"), "{metrics}");
    assert!(metrics.contains("gatelet_auth_failures_total{reason=\"expired\"} 1"), "{metrics}");
    assert!(metrics.contains("gatelet_bundle_serial 10"), "{metrics}");
    // The exposition as a scraper reads it: each family one block, announced once (the
    // throttling tables' families used to interleave).
    assert!(metrics.contains("gatelet_throttle_table_entries{"), "{metrics}");
    if let Err(e) = gatelet::server::metrics::check_exposition(&metrics) {
        panic!("/metrics is not a valid exposition: {e}\n{metrics}");
    }
    running.shutdown();
}

#[test]
fn throttling_backend_failures_and_limits() {
    let f = Fixture::new("limits");
    let (running, gw, admin) = start(&f, 10, "max_header_bytes = 8192");
    let token = f.token(|_| {});

    // 3 per day: exactly three pass, then 429 with the headers.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(gw, "/shop/1.0.0/limited", Some(&token)));
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes, [200, 200, 200, 429, 429, 429]);
    let throttled = statuses.iter().find(|r| r.status == 429).expect("a 429");
    assert_eq!(throttled.fault_code(), 900802);
    let retry: u64 = throttled.header("retry-after").expect("Retry-After").parse().expect("seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    let to_midnight = 86_400 - now % 86_400;
    assert!(retry.abs_diff(to_midnight) <= 2, "Retry-After {retry}, window ends in {to_midnight}");
    assert!(throttled.header("ratelimit-policy").expect("policy").contains("q=3;w=86400"));
    assert!(throttled.header("ratelimit").expect("ratelimit").contains("r=0"));
    assert!(statuses[0].header("ratelimit").is_some(), "successful responses carry the headers too");

    // Failover: the first URL refuses connections, the second answers.
    let r = get(gw, "/shop/1.0.0/failover", Some(&token));
    assert_eq!(r.json()["uri"], "/second/failover");
    // Load balancing: successive requests rotate through the list.
    let uris: Vec<String> = (0..4)
        .map(|_| {
            get(gw, "/shop/1.0.0/balanced", Some(&token)).json()["uri"].as_str().expect("uri").to_owned()
        })
        .collect();
    assert!(uris.contains(&"/x/balanced".to_owned()) && uris.contains(&"/y/balanced".to_owned()), "{uris:?}");
    assert_ne!(uris[0], uris[1], "{uris:?}");

    // Backend down → 502, backend slow → 504.
    let r = get(gw, "/shop/1.0.0/down", Some(&token));
    assert_eq!((r.status, r.fault_code()), (502, 101503));
    // The caller is told the backend failed, not where it lives nor what the OS said.
    let body = String::from_utf8_lossy(&r.body).into_owned();
    for leak in ["127.0.0.1", "http://", "os error", "refused"] {
        assert!(!body.contains(leak), "fault body leaks {leak:?}: {body}");
    }
    let r = get(gw, "/shop/1.0.0/slow?ms=3000", Some(&token));
    assert_eq!((r.status, r.fault_code()), (504, 101504));

    // Oversized head → 431.
    let big = "x".repeat(9000);
    let r = send(gw, "GET", "/shop/1.0.0/items/1", &[("X-Big", &big)], b"");
    assert_eq!(r.status, 431);

    // CL + TE → 400 and the connection closed.
    let mut s = TcpStream::connect(gw).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(
        b"POST /shop/1.0.0/items HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /shop/1.0.0/open HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .expect("write");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("server closes");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "nothing after the 400: {text}");
    // The same shape after a good request on a keep-alive connection: the good one is answered,
    // then the connection is closed without a response that could land inside another.
    let mut s = TcpStream::connect(gw).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(
        b"GET /shop/1.0.0/open HTTP/1.1\r\nHost: x\r\n\r\nPOST /shop/1.0.0/items HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .expect("write");
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "only the good request is answered: {text}");
    // Obs-fold and an unsupported coding too.
    for raw in [
        &b"GET /shop/1.0.0/open HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n"[..],
        &b"POST /shop/1.0.0/items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
    ] {
        let mut s = TcpStream::connect(gw).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.write_all(raw).expect("write");
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("server closes");
        assert!(
            String::from_utf8_lossy(&all).starts_with("HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&all)
        );
    }

    // Keep-alive: several requests on one connection.
    let mut s = TcpStream::connect(gw).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    for _ in 0..3 {
        s.write_all(b"GET /shop/1.0.0/open HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        assert_eq!(read_response(&mut reader).expect("response").status, 200);
    }

    let metrics = String::from_utf8(get(admin, "/metrics", None).body).expect("text");
    assert!(metrics.contains("gatelet_throttled_total{level=\"resource\"}"), "{metrics}");
    assert!(metrics.contains("gatelet_backend_timeouts_total 1"), "{metrics}");
    running.shutdown();
}

#[test]
fn slowloris_connections_do_not_starve_a_normal_client() {
    let f = Fixture::new("slowloris");
    // A head timeout well above the time a loaded CI machine may take to serve one request, so
    // "served before the stalled connections time out" is what the test measures.
    let path = f.config_with_head_timeout(10, "", 4000);
    let config = Config::resolve(Some(&path), std::iter::empty(), &Overrides::default()).expect("config");
    let running = daemon::start(config).expect("gateway starts");
    let gw = running.bound.http.expect("http bound");
    // 100 connections that send half a head and stall.
    let mut idle: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(gw).expect("connect");
            s.write_all(b"GET /shop/1.0.0/open HTTP/1.1\r\nHost: x\r\nX-Slow: ").expect("write");
            s
        })
        .collect();
    let start = std::time::Instant::now();
    let r = get(gw, "/shop/1.0.0/open", None);
    assert_eq!(r.status, 200);
    assert!(start.elapsed() < Duration::from_secs(3), "served in {:?}", start.elapsed());
    // The head-read timeout (4 s here) closes them: each read ends when the server closes, within
    // a deadline well past the timeout.
    let closed = idle
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut buf = Vec::new();
            match s.read_to_end(&mut buf) {
                Ok(_) => true,
                Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            }
        })
        .filter(|&closed| closed)
        .count();
    assert_eq!(closed, 100, "stalled connections are closed by the head timeout");

    // An idle keep-alive connection is closed after the same timeout.
    let mut s = TcpStream::connect(gw).expect("connect");
    s.write_all(b"GET /shop/1.0.0/open HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    assert_eq!(read_response(&mut reader).expect("response").status, 200);
    let idle_start = std::time::Instant::now();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("closed by the server");
    let idle = idle_start.elapsed();
    assert!(
        idle >= Duration::from_millis(3000) && idle < Duration::from_millis(8000),
        "closed after {idle:?}"
    );
    running.shutdown();
}

#[test]
fn max_connections_holds_new_clients_until_one_leaves() {
    let f = Fixture::new("maxconn");
    let (running, gw, admin) = start(&f, 10, "max_connections = 2");
    let hold: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(gw).expect("connect")).collect();
    let metrics = || String::from_utf8(get(admin, "/metrics", None).body).expect("text");
    assert!(eventually(Duration::from_secs(5), || metrics().contains("gatelet_connections_active 2")));
    // The third client is accepted by the kernel but not served while two are open: no answer
    // within half a second (a served request takes milliseconds).
    let mut third = TcpStream::connect(gw).expect("connect");
    third.write_all(b"GET /shop/1.0.0/open HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
    third.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let mut byte = [0u8; 1];
    let early = third.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a third connection was served beyond max_connections: {early:?}"
    );
    assert!(metrics().contains("gatelet_connections_active 2"), "{}", metrics());
    drop(hold);
    third.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    assert_eq!(read_response(&mut BufReader::new(third)).expect("served once one left").status, 200);
    running.shutdown();
}

#[test]
fn reload_keeps_the_old_bundle_on_bad_input_and_switches_on_a_newer_one() {
    let f = Fixture::new("reload");
    let (running, gw, admin) = start(&f, 10, "");
    let inbox = f.dir.join("inbox");
    let serial = || get(admin, "/readyz", None).json()["bundle_serial"].as_u64().expect("serial");
    assert_eq!(serial(), 10);

    // Tampered: one byte flipped.
    let mut tampered = f.bundle(20);
    let n = tampered.len();
    tampered[n / 2] ^= 1;
    std::fs::write(inbox.join("a-tampered.glb"), &tampered).expect("write");
    assert!(eventually(Duration::from_secs(5), || inbox.join(".refused-a-tampered.glb").exists()));
    assert_eq!(serial(), 10);
    // Older.
    std::fs::write(inbox.join("b-older.glb"), f.bundle(5)).expect("write");
    assert!(eventually(Duration::from_secs(5), || inbox.join(".refused-b-older.glb").exists()));
    assert_eq!(serial(), 10);
    // Names starting with '.' are ignored: a newer bundle under such a name is still there, and
    // still not in force, after the inbox took the file written after it.
    std::fs::write(inbox.join(".partial.glb"), f.bundle(40)).expect("write");
    // Newer: swapped in, installed at bundle.path, file removed.
    std::fs::write(inbox.join("c-newer.glb"), f.bundle(30)).expect("write");
    assert!(eventually(Duration::from_secs(5), || serial() == 30));
    assert!(eventually(Duration::from_secs(5), || !inbox.join("c-newer.glb").exists()));
    assert!(inbox.join(".partial.glb").exists());
    assert_eq!(serial(), 30);
    let installed = std::fs::read(f.dir.join("bundle.glb")).expect("installed");
    assert_eq!(installed, f.bundle(30), "the accepted bundle is installed for the next boot");
    assert_eq!(get(gw, "/shop/1.0.0/open", None).status, 200);
    let metrics = String::from_utf8(get(admin, "/metrics", None).body).expect("text");
    assert!(metrics.contains("gatelet_bundle_reloads_total{result=\"failed\"} 2"), "{metrics}");
    assert!(metrics.contains("gatelet_bundle_reloads_total{result=\"ok\"} 1"), "{metrics}");

    // SIGHUP-style reload of a replaced bundle.path with an older serial: refused.
    std::fs::write(f.dir.join("bundle.glb"), f.bundle(25)).expect("write");
    running.reload();
    let metrics = || String::from_utf8(get(admin, "/metrics", None).body).expect("text");
    assert!(
        eventually(Duration::from_secs(5), || metrics()
            .contains("gatelet_bundle_reloads_total{result=\"failed\"} 3")),
        "{}",
        metrics()
    );
    assert_eq!(serial(), 30);
    running.shutdown();

    // A restart comes back on the installed bundle... which is now the older file written
    // above: the rollback mark refuses it at start-up.
    let path = f.dir.join("gatelet.toml");
    let config = Config::resolve(Some(&path), std::iter::empty(), &Overrides::default()).expect("config");
    let err = daemon::start(config).expect_err("rollback refused at start");
    assert!(err.to_string().contains("rollback refused"), "{err}");
}

#[test]
fn https_listener_with_a_certificate_made_by_the_test() {
    let f = Fixture::new("tls");
    let cert = f.dir.join("tls.crt");
    let key = f.dir.join("tls.key");
    let ok = self_signed_cert(&cert, &key).expect("openssl runs");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // An HTTPS backend with the same private CA, reached through server.backend_ca_file.
    let tls_backend = start_tls_backend(&cert, &key);
    std::fs::write(
        f.dir.join("project/apis/secure.yaml"),
        format!(
            "openapi: 3.0.3\ninfo: {{title: Secure, version: '1'}}\nx-wso2-basePath: /secure/{{version}}\n\
             x-wso2-production-endpoints: {{urls: [\"https://localhost:{}/tls\"]}}\nx-wso2-disable-security: true\n\
             paths:\n  /hello:\n    get: {{responses: {{'200': {{description: ok}}}}}}\n",
            tls_backend.port()
        ),
    )
    .expect("write");
    let extra = format!(
        "listen_tls = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nbackend_ca_file = \"{}\"",
        cert.display(),
        key.display(),
        cert.display()
    );
    let (running, _, _) = start(&f, 10, &extra);
    let addr = running.bound.https.expect("https bound");
    let root = native_tls::Certificate::from_pem(&std::fs::read(&cert).expect("cert")).expect("pem");
    let connector =
        native_tls::TlsConnector::builder().add_root_certificate(root).build().expect("connector");
    let tcp = TcpStream::connect(addr).expect("connect");
    let mut tls = connector.connect("localhost", tcp).expect("TLS handshake");
    let token = f.token(|_| {});
    write!(tls, "GET /shop/1.0.0/items/7 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .expect("write");
    let r = read_response(&mut BufReader::new(tls)).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    // TLS 1.1 is never offered.
    let old = native_tls::TlsConnector::builder()
        .add_root_certificate(
            native_tls::Certificate::from_pem(&std::fs::read(&cert).expect("cert")).expect("pem"),
        )
        .min_protocol_version(Some(native_tls::Protocol::Tlsv10))
        .max_protocol_version(Some(native_tls::Protocol::Tlsv11))
        .build()
        .expect("connector");
    assert!(old.connect("localhost", TcpStream::connect(addr).expect("connect")).is_err());
    // TLS 1.3 and 1.2 are both served, each pinned in turn by the client.
    for (version, name) in [(native_tls::Protocol::Tlsv13, "1.3"), (native_tls::Protocol::Tlsv12, "1.2")] {
        let pinned = native_tls::TlsConnector::builder()
            .add_root_certificate(
                native_tls::Certificate::from_pem(&std::fs::read(&cert).expect("cert")).expect("pem"),
            )
            .min_protocol_version(Some(version))
            .max_protocol_version(Some(version))
            .build()
            .expect("connector");
        let mut tls = pinned
            .connect("localhost", TcpStream::connect(addr).expect("connect"))
            .unwrap_or_else(|e| panic!("TLS {name} handshake: {e}"));
        write!(tls, "GET /shop/1.0.0/items/7 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .expect("write");
        let r = read_response(&mut BufReader::new(tls)).expect("response");
        assert_eq!(r.status, 200, "over TLS {name}");
    }
    // And by a client no one here wrote: openssl s_client asking for 1.3 only.
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-tls1_3", "-brief", "-connect", &addr.to_string(), "-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("Protocol version: TLSv1.3"), "{said}");
    // Forwarding to an HTTPS backend, verified against the configured CA.
    let r = get(running.bound.http.expect("http"), "/secure/1/hello", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["uri"], "/tls/hello");
    running.shutdown();

    // Without the CA the backend's certificate is not trusted: 502, never an unverified connection.
    let path = f.config(11, "listen_tls = \"\"\nbackend_ca_file = \"\"");
    let config = Config::resolve(Some(&path), std::iter::empty(), &Overrides::default()).expect("config");
    let running = daemon::start(config).expect("starts");
    let r = get(running.bound.http.expect("http"), "/secure/1/hello", None);
    assert_eq!((r.status, r.fault_code()), (502, 101503));
    running.shutdown();
}

#[test]
fn sigterm_drains_an_in_flight_request_and_exits_zero() {
    let f = Fixture::new("sigterm");
    let path = f.config(10, "");
    // A stand-in for systemd's notification socket.
    let notify_path = f.dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["run", "--config", path_str(&path)])
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gatelet runs");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut http, mut admin) = (None, None);
    while http.is_none() || admin.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("gatelet logs its listeners");
        if let Some(a) = line.split("listening http ").nth(1) {
            http = Some(a.trim().parse::<SocketAddr>().expect("address"));
        }
        if let Some(a) = line.split("listening admin ").nth(1) {
            admin = Some(a.trim().parse::<SocketAddr>().expect("address"));
        }
    }
    let (gw, admin) = (http.expect("bound"), admin.expect("bound"));
    let pid = child.id().to_string();

    // SIGHUP re-reads bundle.path: a newer bundle there is swapped in.
    std::fs::write(f.dir.join("bundle.glb"), f.bundle(11)).expect("write");
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    let serial = || get(admin, "/readyz", None).json()["bundle_serial"].as_u64();
    assert!(eventually(Duration::from_secs(5), || serial() == Some(11)), "SIGHUP reload");

    let token = f.token(|_| {});
    let slow = std::thread::spawn(move || get(gw, "/shop/1.0.0/slow?ms=800", Some(&token)));
    let in_flight = || {
        String::from_utf8(get(admin, "/metrics", None).body)
            .expect("text")
            .contains("gatelet_requests_in_flight 1")
    };
    assert!(eventually(Duration::from_secs(5), in_flight), "the slow request is in flight");
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let r = slow.join().expect("request thread");
    assert_eq!(r.status, 200, "the in-flight request finished");
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(0));
    // New connections are refused once it stopped.
    assert!(TcpStream::connect(gw).is_err());
    // systemd heard READY=1 once serving and STOPPING=1 at the end.
    notify.set_nonblocking(true).expect("nonblocking");
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = notify.recv(&mut buf) {
        heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    assert_eq!(heard.first().map(String::as_str), Some("READY=1"), "{heard:?}");
    assert!(heard.windows(2).any(|w| w == ["RELOADING=1", "READY=1"]), "{heard:?}");
    assert_eq!(heard.last().map(String::as_str), Some("STOPPING=1"), "{heard:?}");
}

#[test]
fn check_validates_like_run_and_demo_serves_its_curl_line() {
    let f = Fixture::new("check");
    let path = f.config(10, "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["check", "--config", path_str(&path)])
        .output()
        .expect("check runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("serial 10") && stdout.contains("1 APIs"), "{stdout}");
    // A tampered bundle fails the check with a reason.
    let mut bytes = std::fs::read(f.dir.join("bundle.glb")).expect("read");
    bytes[40] ^= 1;
    std::fs::write(f.dir.join("bundle.glb"), bytes).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["check", "--config", path_str(&path)])
        .output()
        .expect("check runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad signature"));
    // An unknown key in the config is named.
    std::fs::write(&path, "[server]\nlisten_port = 1\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["check", "--config", path_str(&path)])
        .output()
        .expect("check runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_port"));

    // demo: the printed curl line with the token works, the one without gets 401.
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("demo runs");
    let stdout = demo.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines_iter();
    let line = lines
        .find(|l| l.starts_with("curl -i -H 'Authorization: Bearer "))
        .expect("a curl line with a token");
    let token = line.split("Bearer ").nth(1).and_then(|t| t.split('\'').next()).expect("token");
    let url = line.rsplit(' ').next().expect("url");
    let rest = url.strip_prefix("http://").expect("http url");
    let (addr, path) = rest.split_at(rest.find('/').expect("path"));
    let addr: SocketAddr = addr.parse().expect("address");
    let r = get(addr, path, Some(token));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["echo"], "gatelet demo backend");
    assert_eq!(get(addr, path, None).status, 401);
    // As the demo says: ordering is limited to 3 a minute. Seven tries: even straddling a minute
    // boundary, at most six pass.
    let auth = format!("Bearer {token}");
    let orders: Vec<u16> = (0..7)
        .map(|_| send(addr, "POST", "/pizzashack/1.0.0/order", &[("Authorization", &auth)], b"").status)
        .collect();
    let passed = orders.iter().filter(|&&c| c == 200).count();
    assert!((3..=6).contains(&passed) && orders.contains(&429), "{orders:?}");
    let pid = demo.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    assert_eq!(demo.wait().expect("exits").code(), Some(0));
}

trait LinesIter {
    fn lines_iter(self) -> Box<dyn Iterator<Item = String>>;
}

impl<R: std::io::BufRead + 'static> LinesIter for R {
    fn lines_iter(self) -> Box<dyn Iterator<Item = String>> {
        Box::new(self.lines().map_while(Result::ok))
    }
}

#[test]
fn every_request_outcome_becomes_one_usage_record_on_flash() {
    use std::io::Read as _;
    let f = Fixture::new("usage");
    let (running, gw, _) = start(&f, 10, "");
    let token = f.token(|_| {});
    let mut sent = Vec::new();
    for path in [
        "/shop/1.0.0/items/1",
        "/shop/1.0.0/limited",
        "/shop/1.0.0/limited",
        "/shop/1.0.0/limited",
        "/shop/1.0.0/limited",
    ] {
        sent.push(get(gw, path, Some(&token)).status);
    }
    sent.push(get(gw, "/shop/1.0.0/items/1", None).status);
    sent.push(get(gw, "/nowhere", None).status);
    assert_eq!(sent, [200, 200, 200, 200, 429, 401, 404]);
    // A client that gives up while the backend works: the request still leaves one record (499)
    // and the in-flight gauge comes back down.
    let mut s = TcpStream::connect(gw).expect("connect");
    write!(s, "GET /shop/1.0.0/slow?ms=1500 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
        .expect("write");
    let admin = running.bound.admin.expect("admin");
    let in_flight = || {
        String::from_utf8(get(admin, "/metrics", None).body)
            .expect("text")
            .contains("gatelet_requests_in_flight 1")
    };
    assert!(eventually(Duration::from_secs(5), in_flight), "the slow request reached the backend's wait");
    drop(s);
    let gauge = || {
        String::from_utf8(get(admin, "/metrics", None).body)
            .expect("text")
            .contains("gatelet_requests_in_flight 0")
    };
    assert!(eventually(Duration::from_secs(3), gauge), "in-flight gauge back to 0");
    running.shutdown();

    // Shutdown flushed and closed the spool: only closed files, each a valid gzip stream.
    let spool = f.dir.join("spool");
    let mut records = Vec::new();
    for entry in std::fs::read_dir(&spool).expect("spool dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        assert!(name.starts_with("usage-") && name.ends_with(".ndjson.gz"), "unexpected file {name}");
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).expect("open"))
            .read_to_string(&mut text)
            .expect("gzip");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
            if v["kind"] == "request" {
                records.push(v);
            }
        }
    }
    records.sort_by_key(|r| {
        r["request_id"].as_str().map(|id| {
            let (_, n) = id.rsplit_once('-').expect("prefix-seq");
            u64::from_str_radix(n, 16).expect("hex seq")
        })
    });
    let statuses: Vec<u64> = records.iter().map(|r| r["status"].as_u64().expect("status")).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429, 401, 404, 499], "{records:#?}");
    assert_eq!(records[7]["resource"], "/slow");
    let first = &records[0];
    assert_eq!(first["api"], "Shop");
    assert_eq!(first["context"], "/shop/1.0.0");
    assert_eq!(first["resource"], "/items/{id}");
    assert_eq!(first["app_id"], "app-1");
    assert_eq!(first["subscriber"], "alice");
    assert_eq!(first["keytype"], "PRODUCTION");
    assert_eq!(first["tier"], "Gold");
    assert_eq!(first["bundle_serial"], 10);
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert!(first["error_code"].is_null());
    assert!(first["response_bytes"].as_u64().expect("bytes") > 0);
    assert!(first["backend_latency_ms"].as_f64().is_some());
    assert_eq!(
        (records[4]["throttled"].as_bool(), records[4]["error_code"].as_u64()),
        (Some(true), Some(900802))
    );
    assert_eq!(records[5]["error_code"], 900902);
    assert!(records[5]["app_id"].is_null());
    assert!(records[6]["api"].is_null());
    assert_eq!(records[6]["error_code"], 900906);
}

#[test]
fn path_parameters_never_reach_a_less_protected_route() {
    let f = Fixture::new("pathparam");
    let b = f.backend;
    // Across APIs: a public API whose context is a prefix of a protected one.
    std::fs::write(
        f.dir.join("project/apis/svc.yaml"),
        format!(
            "openapi: 3.0.3\ninfo: {{title: Svc, version: '1'}}\nx-wso2-basePath: /svc/{{version}}\n\
             x-wso2-production-endpoints: {{urls: [\"http://{b}/svc\"]}}\nx-wso2-disable-security: true\n\
             paths:\n  /{{section}}/users:\n    get: {{responses: {{'200': {{description: ok}}}}}}\n"
        ),
    )
    .expect("write");
    std::fs::write(
        f.dir.join("project/apis/svc-admin.yaml"),
        format!(
            "openapi: 3.0.3\ninfo: {{title: SvcAdmin, version: '1'}}\nx-wso2-basePath: /svc/{{version}}/admin\n\
             x-wso2-production-endpoints: {{urls: [\"http://{b}/svc/admin\"]}}\nsecurity: [{{oauth: []}}]\n\
             paths:\n  /users:\n    get: {{responses: {{'200': {{description: ok}}}}}}\n\
             components:\n  securitySchemes:\n    oauth: {{type: oauth2, flows: {{clientCredentials: {{tokenUrl: https://issuer.test/token, scopes: {{}}}}}}}}\n"
        ),
    )
    .expect("write");
    // Within one API: a protected literal beside a public template.
    std::fs::write(
        f.dir.join("project/apis/inner.yaml"),
        format!(
            "openapi: 3.0.3\ninfo: {{title: Inner, version: '1'}}\nx-wso2-basePath: /inner/{{version}}\n\
             x-wso2-production-endpoints: {{urls: [\"http://{b}/inner\"]}}\nsecurity: [{{oauth: []}}]\n\
             paths:\n  /admin/users:\n    get: {{responses: {{'200': {{description: ok}}}}}}\n\
             \x20 /{{section}}/users:\n    get:\n      x-wso2-disable-security: true\n      responses: {{'200': {{description: ok}}}}\n\
             components:\n  securitySchemes:\n    oauth: {{type: oauth2, flows: {{clientCredentials: {{tokenUrl: https://issuer.test/token, scopes: {{}}}}}}}}\n"
        ),
    )
    .expect("write");
    let (running, gw, _) = start(&f, 10, "");
    for protected in ["/svc/1/admin/users", "/inner/1/admin/users"] {
        assert_eq!(get(gw, protected, None).status, 401, "{protected}");
    }
    for shape in [
        "/svc/1/admin;x/users",
        "/svc/1/admin;/users",
        "/inner/1/admin;x/users",
        "/inner/1/admin;jsessionid=1/users",
        "/inner/1/admin/users;x",
    ] {
        let r = get(gw, shape, None);
        assert_eq!(r.status, 400, "{shape}: {}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains("path parameter"), "{shape}");
    }
    // The public routes still serve, and an encoded ';' is data, forwarded as it came.
    let r = get(gw, "/svc/1/shop/users", None);
    assert_eq!((r.status, r.json()["uri"].as_str()), (200, Some("/svc/shop/users")));
    let r = get(gw, "/inner/1/a%3Bb/users", None);
    assert_eq!((r.status, r.json()["uri"].as_str()), (200, Some("/inner/a%3Bb/users")));
    running.shutdown();
}

/// Sends raw request bytes on a fresh connection and reads one response.
fn raw(addr: SocketAddr, request: &str) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    read_response(&mut BufReader::new(s)).expect("response")
}

#[test]
fn forwarding_headers_are_gatelets_own_and_host_follows_rfc_9112() {
    let f = Fixture::new("forwarding");
    let (running, gw, _) = start(&f, 10, "");
    let open = "/shop/1.0.0/open";
    let spoofs = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Host: evil.example\r\n\
                  X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n";
    // Underscore spellings, which CGI/WSGI/Rack backends read as the same variables.
    let underscores = "X_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX_Forwarded_Host: evil.example\r\n";
    let r =
        raw(gw, &format!("GET {open} HTTP/1.1\r\nHost: gw.test\r\n{underscores}Connection: close\r\n\r\n"));
    let h = r.json()["headers"].clone();
    for k in ["x_forwarded_for", "x_real_ip", "x_forwarded_host"] {
        assert!(h.get(k).is_none(), "{k} reached the backend: {h}");
    }
    let r = raw(gw, &format!("GET {open} HTTP/1.1\r\nHost: gw.test\r\n{spoofs}Connection: close\r\n\r\n"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "gw.test");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["forwarded"], "for=127.0.0.1;host=\"gw.test\";proto=http");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    // HTTP/1.0 may omit Host; the client's X-Forwarded-Host still never reaches the backend.
    let r = raw(gw, &format!("GET {open} HTTP/1.0\r\n{spoofs}\r\n"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let h = &r.json()["headers"];
    assert!(h.get("x-forwarded-host").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    // RFC 9112 §3.2: HTTP/1.1 without Host, two Host lines, a list-valued Host → 400.
    for bad in [
        format!("GET {open} HTTP/1.1\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n"),
        format!("GET {open} HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n"),
        format!("GET {open} HTTP/1.1\r\nHost: a.test, b.test\r\nConnection: close\r\n\r\n"),
        format!("GET {open} HTTP/1.1\r\nHost: user@a.test\r\nConnection: close\r\n\r\n"),
    ] {
        let r = raw(gw, &bad);
        assert_eq!((r.status, r.fault_code()), (400, 900906), "{bad}");
    }
    // Absolute form: the URI's authority wins over Host.
    let r = raw(
        gw,
        &format!("GET http://real.test{open} HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["headers"]["x-forwarded-host"], "real.test");
    running.shutdown();

    // Behind a configured proxy the chain is kept and extended.
    let (running, gw, _) = start(&f, 11, "trusted_proxies = [\"127.0.0.0/8\"]");
    let r = raw(gw, &format!("GET {open} HTTP/1.1\r\nHost: gw.test\r\n{spoofs}Connection: close\r\n\r\n"));
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 7.7.7.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "evil.example");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["forwarded"], "for=6.6.6.6, for=127.0.0.1;host=\"gw.test\";proto=http");
    assert_eq!(h["x-real-ip"], "6.6.6.6");
    running.shutdown();
}

/// The fixture's project sealed with `serial`, as if built on a machine whose clock read
/// `created_at`.
fn bundle_built_at(f: &Fixture, serial: u64, created_at: u64) -> Vec<u8> {
    let mut m = gatelet::project::compile(&f.dir.join("project"), serial).expect("compiles").manifest;
    m.created_at = created_at;
    gatelet::bundle::seal(&m, &f.publisher).expect("seals")
}

#[test]
fn a_build_time_that_ran_ahead_is_corrected_by_a_newer_bundle_and_never_by_a_replay() {
    const Y2036: u64 = 2_082_758_400;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    let f = Fixture::new("future");
    let path = f.config(10, "");
    // A publisher whose clock read 2036 signed serial 10.
    std::fs::write(f.dir.join("bundle.glb"), bundle_built_at(&f, 10, Y2036)).expect("write");
    let boot = || {
        let config = Config::resolve(Some(&path), std::iter::empty(), &Overrides::default()).expect("config");
        let running = daemon::start(config).expect("starts");
        let (gw, admin) = (running.bound.http.expect("http"), running.bound.admin.expect("admin"));
        (running, gw, admin)
    };
    let (running, gw, admin) = boot();
    let token = f.token(|_| {});
    let r = get(gw, "/shop/1.0.0/items/1", Some(&token));
    assert_eq!((r.status, r.fault_code()), (401, 900903), "the floor ran ahead: every token is expired");
    let serial = || get(admin, "/readyz", None).json()["bundle_serial"].as_u64().expect("serial");

    // The corrected bundle, serial 11 built now, brings the floor back without a shell.
    let inbox = f.dir.join("inbox");
    std::fs::write(inbox.join("b-corrected.glb"), bundle_built_at(&f, 11, now)).expect("write");
    assert!(eventually(Duration::from_secs(5), || serial() == 11));
    assert_eq!(get(gw, "/shop/1.0.0/items/1", Some(&token)).status, 200);
    // Replaying the old bundle cannot raise it again (nor lower it): anti-rollback refuses it.
    std::fs::write(inbox.join("c-replay.glb"), bundle_built_at(&f, 10, Y2036)).expect("write");
    assert!(eventually(Duration::from_secs(5), || inbox.join(".refused-c-replay.glb").exists()));
    assert_eq!(get(gw, "/shop/1.0.0/items/1", Some(&token)).status, 200);
    running.shutdown();

    // The correction is durable: a restart keeps it (the periodic and shutdown persistence of the
    // floor did not put 2036 back).
    let (running, gw, _) = boot();
    assert_eq!(get(gw, "/shop/1.0.0/items/1", Some(&token)).status, 200);
    running.shutdown();

    // Usage records carry the wall clock, not 2036, even while the floor ran ahead.
    let mut stamps = Vec::new();
    for entry in std::fs::read_dir(f.dir.join("spool")).expect("spool") {
        use std::io::Read as _;
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        assert!(!name.starts_with("usage-2036"), "a usage file named by the floor: {name}");
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).expect("open"))
            .read_to_string(&mut text)
            .expect("gzip");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            assert!(!v["ts"].as_str().expect("ts").starts_with("2036"), "{line}");
            if v["kind"] == "request" {
                stamps.push(v["ts"].as_str().expect("ts").to_owned());
            }
        }
    }
    assert!(stamps.len() >= 4, "{stamps:?}");
    for ts in &stamps {
        assert!(!ts.starts_with("2036"), "a usage record stamped with the floor: {stamps:?}");
    }
}

#[test]
fn a_clients_broken_or_stalled_body_is_the_clients_fault() {
    let f = Fixture::new("clientbody");
    let (running, gw, admin) = start(&f, 10, "body_idle_timeout_ms = 400\nmax_body_bytes = 100000");
    let token = f.token(|_| {});
    let head =
        format!("POST /shop/1.0.0/items HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n");
    // Malformed chunk sizes: a sign, a bare LF.
    for body in ["+5\r\nhello\r\n0\r\n\r\n", "5\nhello\r\n0\r\n\r\n", "5\r\nhello\n0\r\n\r\n"] {
        let r = raw(gw, &format!("{head}Transfer-Encoding: chunked\r\n\r\n{body}"));
        assert_eq!(
            (r.status, r.fault_code()),
            (400, 900906),
            "{body:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A client that stops sending its body: 408 after the body idle timeout, not the backend's
    // 504 (backend_timeout_ms is 1000 here, longer than 400 but it must not run meanwhile).
    let mut s = TcpStream::connect(gw).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "{head}Content-Length: 10\r\n\r\nabc").expect("write");
    let started = std::time::Instant::now();
    let r = read_response(&mut BufReader::new(s)).expect("response");
    assert_eq!((r.status, r.fault_code()), (408, 900906), "{}", String::from_utf8_lossy(&r.body));
    assert!(started.elapsed() < Duration::from_secs(5));
    // A streamed body past max_body_bytes, with no Content-Length to refuse it early: 413.
    let chunk = format!("{:x}\r\n{}\r\n", 60_000, "a".repeat(60_000));
    let r = raw(gw, &format!("{head}Transfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"));
    assert_eq!((r.status, r.fault_code()), (413, 900906), "{}", String::from_utf8_lossy(&r.body));
    // A complete chunked body still goes through.
    let r = raw(
        gw,
        &format!("{head}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["body_bytes"], 5);
    let metrics = String::from_utf8(get(admin, "/metrics", None).body).expect("text");
    for m in ["gatelet_backend_errors_total 0", "gatelet_backend_timeouts_total 0"] {
        assert!(metrics.contains(m), "a client fault moved a backend metric: {m}\n{metrics}");
    }
    running.shutdown();
}

#[test]
fn refusals_before_the_pipeline_leave_a_record_and_a_count() {
    use std::io::Read as _;
    let f = Fixture::new("probes");
    let (running, gw, admin) = start(&f, 10, "");
    // The framing guard: CL + TE on the first request → 400 and closed.
    let r = raw(
        gw,
        "POST /shop/1.0.0/items HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!((r.status, r.fault_code()), (400, 900906));
    // hyper's parser: a head past max_header_bytes → 431; a malformed request line → 400.
    let big =
        format!("GET /shop/1.0.0/big HTTP/1.1\r\nHost: gw.test\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(raw(gw, &big).status, 431);
    assert_eq!(
        raw(gw, "GET /shop/1.0.0/x HTTP/1.1\r\nHost: gw.test\r\nBad\u{1}Header: x\r\n\r\n").status,
        400
    );
    // A smuggling shape on a later request of a keep-alive connection: no answer, still a record.
    let mut s = TcpStream::connect(gw).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        s,
        "GET /shop/1.0.0/open HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /shop/1.0.0/open HTTP/1.1\r\nHost: gw.test\r\nX-A: a\r\n b\r\n\r\n"
    )
    .expect("write");
    let mut reader = BufReader::new(s);
    assert_eq!(read_response(&mut reader).expect("first is answered").status, 200);
    let metrics = || String::from_utf8(get(admin, "/metrics", None).body).expect("text");
    assert!(
        eventually(Duration::from_secs(5), || metrics()
            .contains("gatelet_requests_total{api=\"none\",status=\"400\"} 3")),
        "{}",
        metrics()
    );
    assert!(metrics().contains("gatelet_requests_total{api=\"none\",status=\"431\"} 1"), "{}", metrics());
    drop(reader);
    running.shutdown();

    let mut records = Vec::new();
    for entry in std::fs::read_dir(f.dir.join("spool")).expect("spool") {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(entry.expect("entry").path()).expect("open"))
            .read_to_string(&mut text)
            .expect("gzip");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            if v["kind"] == "request" && v["status"] != 200 {
                records.push(v);
            }
        }
    }
    let mut seen: Vec<(u64, String, String)> = records
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().expect("status"),
                r["method"].as_str().expect("method").to_owned(),
                r["error_detail"].as_str().expect("a reason").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 4, "{records:#?}");
    assert_eq!((seen[0].0, seen[0].1.as_str()), (400, "GET"));
    assert!(
        seen.iter()
            .any(|(s, m, d)| *s == 400 && m == "POST" && d.contains("Content-Length and Transfer-Encoding"))
    );
    assert!(
        seen.iter()
            .any(|(s, _, d)| *s == 400 && d.contains("line folding") && d.contains("without an answer"))
    );
    assert!(seen.iter().any(|(s, _, d)| *s == 400 && d.contains("HTTP parser")));
    assert!(seen.iter().any(|(s, m, _)| *s == 431 && m == "GET"));
    assert!(records.iter().all(|r| r["client_ip"] == "127.0.0.1" && r["api"].is_null()));
    assert!(records.iter().any(|r| r["resource"] == "/shop/1.0.0/items"), "{records:#?}");
}

#[test]
fn a_backend_that_stops_taking_the_body_times_out() {
    // A backend that accepts and never reads nor answers.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let sink_addr = sink.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in sink.incoming() {
            held.push(s);
        }
    });
    let f = Fixture::new("sinkbackend");
    std::fs::write(
        f.dir.join("project/apis/sink.yaml"),
        format!(
            "openapi: 3.0.3\ninfo: {{title: Sink, version: '1'}}\nx-wso2-basePath: /sink/{{version}}\n\
             x-wso2-production-endpoints: {{urls: [\"http://{sink_addr}/\"]}}\nx-wso2-disable-security: true\n\
             paths:\n  /upload:\n    post: {{responses: {{'200': {{description: ok}}}}}}\n"
        ),
    )
    .expect("write");
    let (running, gw, admin) = start(&f, 10, "max_body_bytes = 67108864");
    let mut s = TcpStream::connect(gw).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let len = 48 * 1024 * 1024;
    write!(s, "POST /sink/1/upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {len}\r\n\r\n")
        .expect("write");
    let mut writer = s.try_clone().expect("clone");
    let closer = s.try_clone().expect("clone");
    // The client keeps sending (more than loopback buffers hold); it is the backend that stops.
    std::thread::spawn(move || {
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..(len / chunk.len()) {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let r = read_response(&mut BufReader::new(s)).expect("an answer, not a hang");
    assert_eq!((r.status, r.fault_code()), (504, 101504), "{}", String::from_utf8_lossy(&r.body));
    let _ = closer.shutdown(std::net::Shutdown::Both); // the gateway may have closed it already
    let metrics = String::from_utf8(get(admin, "/metrics", None).body).expect("text");
    assert!(metrics.contains("gatelet_backend_timeouts_total 1"), "{metrics}");
    running.shutdown();
}

#[test]
fn a_definition_without_x_wso2_base_path_is_served_under_its_servers_path() {
    let f = Fixture::new("nobasepath");
    let b = f.backend;
    // WSO2 Microgateway style: the context from a relative servers[0] URL, a scope the scheme
    // does not declare (a warning, still required).
    std::fs::write(
        f.dir.join("project/apis/inventory.yaml"),
        format!(
            "openapi: 3.0.3\ninfo: {{title: Inventory, version: '1'}}\nservers: [{{url: /inventory/v1}}]\n\
             x-wso2-production-endpoints: {{urls: [\"http://{b}/inv\"]}}\n\
             paths:\n  /items/{{id}}:\n    get:\n      security: [{{oauth: [inventory:read]}}]\n      responses: {{'200': {{description: ok}}}}\n\
             \x20 /files/{{name}}.{{ext}}:\n    get:\n      x-wso2-disable-security: true\n      responses: {{'200': {{description: ok}}}}\n\
             \x20 /q:\n    get:\n      x-wso2-disable-security: true\n      x-wso2-production-endpoints: {{urls: [\"http://{b}/inv?key=k\"]}}\n      responses: {{'200': {{description: ok}}}}\n\
             components:\n  securitySchemes:\n    oauth: {{type: oauth2, flows: {{clientCredentials: {{tokenUrl: https://issuer.test/token, scopes: {{}}}}}}}}\n"
        ),
    )
    .expect("write");
    let (running, gw, _) = start(&f, 10, "");
    let sub = |c: &mut serde_json::Map<String, serde_json::Value>| {
        c.insert(
            "subscribedAPIs".into(),
            serde_json::json!([{"name": "Inventory", "version": "1", "subscriptionTier": "Gold"}]),
        );
    };
    let without = f.token(sub);
    let r = get(gw, "/inventory/v1/items/7", Some(&without));
    assert_eq!((r.status, r.fault_code()), (403, 900910), "the undeclared scope is still required");
    let with = f.token(|c| {
        sub(c);
        c.insert("scope".into(), "inventory:read".into());
    });
    let r = get(gw, "/inventory/v1/items/7", Some(&with));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["uri"], "/inv/items/7");
    // A path template inside a segment, as OpenAPI allows.
    let r = get(gw, "/inventory/v1/files/report.csv", None);
    assert_eq!((r.status, r.json()["uri"].as_str()), (200, Some("/inv/files/report.csv")));
    assert_eq!(get(gw, "/inventory/v1/files/report", None).status, 404);
    // An endpoint URL's query comes first, then the caller's.
    assert_eq!(get(gw, "/inventory/v1/q?a=1", None).json()["uri"], "/inv/q?key=k&a=1");
    assert_eq!(get(gw, "/inventory/v1/q", None).json()["uri"], "/inv/q?key=k");
    running.shutdown();
}
