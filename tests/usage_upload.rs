//! The uploader against collectors started by the tests (HTTP/1.1 written by hand over smol
//! sockets, plain and TLS): refusals and a lost acknowledgement first, then acceptance. Every
//! event arrives exactly once in content (duplicates only under one idempotency key), files
//! leave the spool only after a 2xx, retries back off, and the headers are the documented ones.
//! A 2xx whose body is cut short is still the acknowledgement (the file is sent once); a file
//! the collector refuses for good is set aside as `.rejected` (counted, exported, and counted
//! against the cap) while the files after it go.

mod usage_util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatelet::usage::{Spooler, Timestamp, UsageConfig, UsageEvent, spool};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use usage_util::*;

/// What the collector does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// `200` with `Content-Length: 100`, then 10 bytes of body and a close: the status line
    /// arrived, the body did not.
    CutOk,
    /// Read the whole request, then close without answering (an acknowledgement lost).
    Hangup,
}

impl Answer {
    /// Whether the uploader saw a 2xx status line.
    fn acknowledged(self) -> bool {
        matches!(self, Answer::Status(200..=299) | Answer::CutOk)
    }
}

/// Where the file of a refused request was when the uploader's next request arrived (by then
/// the uploader had finished with the refusal: it sends one request at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Still in the spool under its name, to be sent again.
    Kept,
    /// Renamed `<name>.rejected`.
    SetAside,
    Gone,
}

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    answer: Answer,
    /// For a request not acknowledged: what became of its file, seen at the next request.
    after_refusal: Option<Fate>,
}

struct Collector {
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn fate(spool_dir: &Path, name: &str) -> Fate {
    if spool_dir.join(name).exists() {
        Fate::Kept
    } else if spool_dir.join(format!("{name}.rejected")).exists() {
        Fate::SetAside
    } else {
        Fate::Gone
    }
}

/// What the collector does with request number `i` (0-based, over all requests) for a file.
type Policy = dyn Fn(usize, &str) -> Answer + Send + Sync;

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    policy: &Policy,
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
    let key = headers.get("idempotency-key").cloned().unwrap_or_default();
    let attempt = {
        let mut log = log.lock().expect("log");
        // This request shows the uploader is done with the previous answer.
        if let Some(prev) = log.last_mut().filter(|p| !p.answer.acknowledged()) {
            prev.after_refusal = Some(fate(spool_dir, &prev.headers["idempotency-key"]));
        }
        log.len()
    };
    let answer = policy(attempt, &key);
    log.lock().expect("log").push(Received {
        at: Instant::now(),
        method,
        target,
        headers,
        body,
        answer,
        after_refusal: None,
    });
    let resp = match answer {
        Answer::Status(code) => {
            let text = if (200..300).contains(&code) { "ok" } else { "not now" };
            format!("HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len())
        }
        Answer::CutOk => {
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\n0123456789".to_owned()
        }
        Answer::Hangup => String::new(),
    };
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.flush().await;
}

impl Collector {
    fn start(
        spool_dir: &Path,
        tls: Option<async_native_tls::TlsAcceptor>,
        policy: impl Fn(usize, &str) -> Answer + Send + Sync + 'static,
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
    for r in received.iter().filter(|r| r.answer.acknowledged()) {
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

    // Refusals that are not the file's fault: the same file again, after a backoff.
    let collector = Collector::start(&dir, None, |i, _| match i {
        0 => Answer::Status(503),
        1 => Answer::Status(429),
        // Credentials the collector does not take: the device's configuration, not the file.
        2 => Answer::Status(401),
        3 => Answer::Hangup,
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
    let refused: Vec<&Received> = got.iter().filter(|r| !r.answer.acknowledged()).collect();
    assert_eq!(refused.len(), 4);
    assert!(refused.iter().all(|r| r.after_refusal == Some(Fate::Kept)), "a file left before a 2xx");
    assert!(refused.iter().all(|r| r.headers["idempotency-key"] == left[0].name), "the same file retried");
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
    assert_eq!(m.uploads_failed, 4);
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
        cannot_run("uploads_over_https_trusting_a_private_ca", "openssl is not installed");
        return;
    };
    let identity = native_tls::Identity::from_pkcs8(
        &std::fs::read(&cert).expect("cert"),
        &std::fs::read(&key).expect("key"),
    )
    .expect("identity");
    let acceptor =
        async_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).expect("acceptor"));
    let collector = Collector::start(&dir, Some(acceptor), |_, _| Answer::Status(200));
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

/// Closed files left by a run without an uploader: the queue the next tests start from.
fn leave_closed_files(dir: &Path, evs: &[UsageEvent]) -> Vec<spool::SpoolFile> {
    let s = Spooler::start(&config(dir)).expect("starts");
    record_all(&s, evs);
    s.shutdown();
    spool::list(dir).expect("list").closed
}

fn upload_config(dir: &Path, collector: &Collector) -> UsageConfig {
    UsageConfig {
        upload_url: format!("http://{}/ingest", collector.addr),
        upload_interval_s: 1,
        upload_backoff_max_s: 1,
        ..config(dir)
    }
}

/// Polls `done` until it holds; fails with `what` after `within`.
fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sample(s: &Spooler, name: &str) -> Option<u64> {
    s.metrics().samples().into_iter().find(|(n, ..)| n == name).map(|(.., v)| v)
}

#[test]
fn a_2xx_whose_body_is_cut_short_acknowledges_the_file_once() {
    let dir = tempdir("upload-cut");
    let left = leave_closed_files(&dir, &events(0..1500));
    assert!(left.len() >= 2);
    let collector = Collector::start(&dir, None, |_, _| Answer::CutOk);
    let s = Spooler::start(&upload_config(&dir, &collector)).expect("starts with an uploader");
    wait_for_empty_spool(&dir, Duration::from_secs(30));
    s.shutdown();
    let sent: Vec<String> =
        collector.received().iter().map(|r| r.headers["idempotency-key"].clone()).collect();
    let want: Vec<String> = left.iter().map(|f| f.name.clone()).collect();
    assert_eq!(sent, want, "each file sent exactly once, oldest first");
    let m = s.metrics().snapshot();
    assert_eq!((m.uploads_ok, m.uploads_failed), (left.len() as u64, 0));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_file_refused_for_good_is_set_aside_and_the_next_ones_go() {
    let dir = tempdir("upload-rejected");
    let left = leave_closed_files(&dir, &events(0..1500));
    assert!(left.len() >= 3);
    // The oldest file, the one every later file waits behind, is refused whenever it comes.
    let refused = left[0].name.clone();
    let refused_bytes = std::fs::read(&left[0].path).expect("read");
    let bad = refused.clone();
    let collector =
        Collector::start(
            &dir,
            None,
            move |_, key| {
                if key == bad { Answer::Status(400) } else { Answer::Status(200) }
            },
        );
    let s = Spooler::start(&upload_config(&dir, &collector)).expect("starts with an uploader");
    let aside = dir.join(format!("{refused}.rejected"));
    wait_until(Duration::from_secs(30), "the refused file set aside and the others delivered", || {
        spool::list(&dir).expect("list").closed.is_empty() && aside.exists()
    });
    s.shutdown();

    let got = collector.received();
    let sent: Vec<&str> = got.iter().map(|r| r.headers["idempotency-key"].as_str()).collect();
    let want: Vec<&str> = left.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(sent, want, "the refused file sent once, then each later file once");
    assert_eq!(got[0].answer, Answer::Status(400));
    assert_eq!(got[0].after_refusal, Some(Fate::SetAside), "set aside before the next file went");
    let accepted = accepted_lines(&got);
    assert_eq!(accepted.len(), left.len() - 1);
    assert_eq!(std::fs::read(&aside).expect("set-aside file"), refused_bytes, "kept as it was");
    let m = s.metrics().snapshot();
    assert_eq!((m.uploads_ok, m.uploads_failed), (left.len() as u64 - 1, 0));
    assert_eq!(sample(&s, "gatelet_usage_uploads_rejected_total"), Some(1));
    let mut text = String::new();
    s.metrics().render_prometheus(&mut text);
    assert!(text.contains("\ngatelet_usage_uploads_rejected_total 1\n"), "{text}");

    // It stays out of the upload queue across a restart...
    let s = Spooler::start(&upload_config(&dir, &collector)).expect("restarts");
    s.close_current_file();
    s.shutdown();
    assert!(aside.exists());
    assert_eq!(collector.received().len(), got.len(), "nothing sent again");
    // ...and `usage export` takes it, under its .rejected name.
    let to = tempdir("upload-rejected-export");
    let report = gatelet::usage::export(&dir, &to).expect("exports");
    let moved: Vec<&str> = report.moved.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(moved, [format!("{refused}.rejected")]);
    assert!(!aside.exists());
    assert_eq!(std::fs::read(to.join(format!("{refused}.rejected"))).expect("exported"), refused_bytes);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    std::fs::remove_dir_all(&to).expect("cleanup");
}

#[test]
fn set_aside_files_count_against_the_cap_and_go_first() {
    let dir = tempdir("upload-rejected-cap");
    let left = leave_closed_files(&dir, &events(0..600));
    assert!(left.len() >= 2);
    // As the uploader leaves a file the collector refused for good.
    let aside = dir.join(format!("{}.rejected", left[0].name));
    std::fs::rename(&left[0].path, &aside).expect("set aside");
    let aside_len = std::fs::metadata(&aside).expect("stat").len();
    let aside_requests = gunzip(&aside).lines().count() as u64;
    let cap = gatelet::usage::config::MIN_SPOOL_BYTES;
    let on_disk = |dir: &Path| -> u64 {
        std::fs::read_dir(dir).expect("ls").map(|e| e.expect("entry").metadata().expect("stat").len()).sum()
    };
    assert!(on_disk(&dir) < cap);
    let s = Spooler::start(&UsageConfig { max_spool_bytes: cap, ..config(&dir) }).expect("starts");
    // Record until the cap first has to delete a file.
    let mut n = 600;
    while s.metrics().snapshot().files_dropped_cap == 0 {
        assert!(n < 20_000, "the cap never deleted a file");
        record_all(&s, &events(n..n + 50));
        s.flush();
        n += 50;
        assert!(on_disk(&dir) <= cap, "the spool passed its cap");
    }
    s.shutdown();
    assert!(!aside.exists(), "the set-aside file went first");
    assert!(
        left[1..].iter().all(|f| f.path.exists()),
        "deliverable files kept while a set-aside one was there"
    );
    let m = s.metrics().snapshot();
    assert_eq!(
        (m.files_dropped_cap, m.bytes_dropped_cap, m.events_dropped_cap),
        (1, aside_len, aside_requests)
    );
    // The loss is written down like any other cap loss.
    let (_, losses) = split_kinds(&closed_lines(&dir));
    assert_eq!(loss_sum(&losses, "files_capped"), 1);
    assert_eq!(loss_sum(&losses, "events_capped"), aside_requests);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
