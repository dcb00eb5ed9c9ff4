//! The uploader against collectors started by the tests (HTTP/1.1 written by hand over smol
//! sockets, plain and TLS): refusals and a lost acknowledgement first, then acceptance. Every
//! event arrives exactly once in content (duplicates only under one idempotency key), files
//! leave the spool only after a 2xx, retries back off, and the headers are the documented ones.

mod usage_util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatelet::usage::{Spooler, Timestamp, UsageConfig, UsageEvent, spool};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use usage_util::*;

/// What the collector does with attempt number `i` (0-based, over all requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// Read the whole request, then close without answering (an acknowledgement lost).
    Hangup,
}

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    answer: Answer,
    /// Whether the file named by the idempotency key was still in the spool after a refusal.
    kept_after_refusal: Option<bool>,
}

struct Collector {
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    policy: &(dyn Fn(usize) -> Answer + Sync),
    log: &Mutex<Vec<Received>>,
    spool_dir: &Path,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let target = request_line.next().unwrap_or("").to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).expect("content-length");
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let attempt = log.lock().expect("log").len();
    let answer = policy(attempt);
    let mut r =
        Received { at: Instant::now(), method, target, headers, body, answer, kept_after_refusal: None };
    match answer {
        Answer::Status(code) => {
            let text = if code == 200 { "ok" } else { "not now" };
            let resp = format!(
                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.flush().await;
        }
        Answer::Hangup => {}
    }
    drop(s);
    if answer != Answer::Status(200) {
        // The uploader has seen the failure; the file must still be there.
        smol::Timer::after(Duration::from_millis(100)).await;
        let name = r.headers.get("idempotency-key").cloned().unwrap_or_default();
        r.kept_after_refusal = Some(spool_dir.join(name).exists());
    }
    log.lock().expect("log").push(r);
}

impl Collector {
    fn start(
        spool_dir: &Path,
        tls: Option<async_native_tls::TlsAcceptor>,
        policy: impl Fn(usize) -> Answer + Send + Sync + 'static,
    ) -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (log2, dir) = (Arc::clone(&log), spool_dir.to_owned());
        std::thread::spawn(move || {
            smol::block_on(async move {
                let listener = smol::net::TcpListener::try_from(listener).expect("async listener");
                // One connection at a time, as the uploader sends; the thread ends with the test.
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { return };
                    match &tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, &policy, &log2, &dir).await;
                            }
                        }
                        None => serve(tcp, &policy, &log2, &dir).await,
                    }
                }
            });
        });
        Collector { addr, log }
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().expect("log").clone()
    }
}

fn wait_for_empty_spool(dir: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let l = spool::list(dir).expect("list");
        if l.closed.is_empty() && l.parts.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "spool not empty: {} closed, {} .part",
            l.closed.len(),
            l.parts.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events(range: std::ops::Range<u64>) -> Vec<UsageEvent> {
    range.map(|n| UsageEvent::synthetic(n, Timestamp(1_795_896_000_000 + n))).collect()
}

fn record_all(s: &Spooler, evs: &[UsageEvent]) {
    let r = s.recorder();
    for e in evs {
        r.record_waiting(e.clone()).expect("spooler running");
    }
}

/// Request lines in the bodies the collector accepted, by idempotency key.
fn accepted_lines(received: &[Received]) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for r in received.iter().filter(|r| r.answer == Answer::Status(200)) {
        let key = r.headers["idempotency-key"].clone();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::MultiGzDecoder::new(&r.body[..]), &mut text)
            .expect("body is gzip");
        let prev = out.insert(key.clone(), text.lines().map(str::to_owned).collect::<Vec<_>>());
        assert!(prev.is_none(), "{key} accepted twice");
    }
    out
}

#[test]
fn uploads_retry_then_deliver_every_event_once() {
    let dir = tempdir("upload");
    let auth = dir.with_extension("auth");
    std::fs::write(&auth, "Bearer t0k3n-secret\n").expect("auth file");
    // A previous run left closed files and no uploader: the files are the queue.
    let earlier = events(0..1500);
    let s = Spooler::start(&config(&dir)).expect("starts");
    record_all(&s, &earlier);
    s.shutdown();
    let left = spool::list(&dir).expect("list").closed;
    assert!(left.len() >= 2);

    let collector = Collector::start(&dir, None, |i| match i {
        0 | 1 => Answer::Status(503),
        2 => Answer::Hangup,
        _ => Answer::Status(200),
    });
    let cfg = UsageConfig {
        upload_url: format!("http://{}/ingest/{{file}}?device=x", collector.addr),
        upload_interval_s: 1,
        upload_backoff_max_s: 2,
        upload_auth_file: auth.clone(),
        ..config(&dir)
    };
    let s = Spooler::start(&cfg).expect("starts with an uploader");
    let later = events(1500..3000);
    record_all(&s, &later);
    s.close_current_file();
    wait_for_empty_spool(&dir, Duration::from_secs(60));
    s.shutdown();

    let got = collector.received();
    // Headers and target, every attempt.
    for r in &got {
        let key = &r.headers["idempotency-key"];
        assert!(spool::parse_name(key).is_some_and(|(_, part)| !part), "key {key}");
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, format!("/ingest/{key}?device=x"));
        assert_eq!(r.headers["content-type"], "application/x-ndjson");
        assert_eq!(r.headers["content-encoding"], "gzip");
        assert_eq!(r.headers["x-gatelet-device"], "test-device");
        assert_eq!(r.headers["authorization"], "Bearer t0k3n-secret");
        assert_eq!(r.headers["content-length"], r.body.len().to_string());
    }
    // Refused files stayed in the spool; a retried file was sent again byte for byte.
    let refused: Vec<&Received> = got.iter().filter(|r| r.answer != Answer::Status(200)).collect();
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|r| r.kept_after_refusal == Some(true)), "a file left before a 2xx");
    let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for r in &got {
        let prev = bodies.insert(&r.headers["idempotency-key"], &r.body);
        assert!(prev.is_none_or(|p| p == &r.body[..]), "same key, different content");
    }
    // Oldest first: the leftovers of the previous run went before the new files.
    assert_eq!(got[0].headers["idempotency-key"], left[0].name);
    // Exactly the events, each once, in order of the files' sequence numbers.
    let accepted = accepted_lines(&got);
    let mut names: Vec<&String> = accepted.keys().collect();
    names.sort_by_key(|n| spool::parse_name(n).map(|(seq, _)| seq));
    let lines: Vec<String> = names.iter().flat_map(|n| accepted[*n].iter().cloned()).collect();
    let (requests, losses) = split_kinds(&lines);
    assert!(losses.is_empty());
    let want: Vec<String> = earlier.iter().chain(&later).map(|e| expected_line(e, "test-device")).collect();
    assert_eq!(requests.len(), want.len());
    for (a, b) in requests.iter().zip(&want) {
        assert_eq!(*a, b);
    }
    // Backoff: about 1 s, then 2 s (the configured cap), then 2 s again.
    let gaps: Vec<Duration> = got.windows(2).take(3).map(|w| w[1].at.duration_since(w[0].at)).collect();
    println!("gaps between the first attempts: {gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(700) && gaps[0] < Duration::from_millis(2000), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1400), "{gaps:?}");
    // Uncapped, the third wait would be at least 3 s.
    assert!(gaps[2] >= Duration::from_millis(1400) && gaps[2] < Duration::from_millis(2900), "{gaps:?}");
    let m = s.metrics().snapshot();
    assert_eq!(m.uploads_failed, 3);
    assert_eq!(m.uploads_ok, accepted.len() as u64);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    std::fs::remove_file(&auth).expect("cleanup");
}

fn openssl_cert(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("collector.crt"), dir.join("collector.key"));
    let out = std::process::Command::new("openssl")
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
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .ok()?;
    out.status.success().then_some((cert, key))
}

#[test]
fn uploads_over_https_trusting_a_private_ca() {
    let dir = tempdir("upload-tls");
    let certs = tempdir("upload-tls-certs");
    let Some((cert, key)) = openssl_cert(&certs) else {
        println!("SKIPPED uploads_over_https_trusting_a_private_ca: openssl is not installed");
        return;
    };
    let identity = native_tls::Identity::from_pkcs8(
        &std::fs::read(&cert).expect("cert"),
        &std::fs::read(&key).expect("key"),
    )
    .expect("identity");
    let acceptor =
        async_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).expect("acceptor"));
    let collector = Collector::start(&dir, Some(acceptor), |_| Answer::Status(200));
    let url = format!("https://localhost:{}/usage", collector.addr.port());
    // Without the collector's CA the upload fails (and the file stays).
    let cfg = UsageConfig {
        upload_url: url.clone(),
        upload_interval_s: 1,
        upload_backoff_max_s: 1,
        ..config(&dir)
    };
    let s = Spooler::start(&cfg).expect("starts");
    record_all(&s, &events(0..100));
    s.close_current_file();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.metrics().snapshot().uploads_failed == 0 {
        assert!(Instant::now() < deadline, "an untrusted collector was not refused");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.shutdown();
    assert!(collector.received().is_empty(), "no request reached an untrusted collector");
    let waiting = spool::list(&dir).expect("list").closed.len();
    assert!(waiting >= 1, "the refused file left the spool");
    // With upload_ca_file, it goes through.
    let cfg = UsageConfig { upload_ca_file: cert.clone(), ..cfg };
    let s = Spooler::start(&cfg).expect("starts");
    wait_for_empty_spool(&dir, Duration::from_secs(20));
    s.shutdown();
    let accepted = accepted_lines(&collector.received());
    assert_eq!(accepted.values().map(Vec::len).sum::<usize>(), 100);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    std::fs::remove_dir_all(&certs).expect("cleanup");
}
