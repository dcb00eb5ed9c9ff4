//! The uploader: POSTs each closed usage file, oldest first, as it is (gzip members, `Content-
//! Encoding: gzip`), deletes it after a 2xx, and backs off with jitter on failure. The files are
//! the queue, so nothing is lost across restarts; a file whose acceptance was not seen is sent
//! again with the same `Idempotency-Key` (its name), for the collector to deduplicate.
//!
//! What the collector's answer means ([`verdict`]):
//! - **2xx**: the status line is the acknowledgement. The file is deleted as soon as it arrives;
//!   the response body is not read, so a collector that cuts its body short (or never sends it)
//!   does not get the file again.
//! - **Retry the same file** after a backoff: no answer (connect, TLS, timeout, a connection
//!   closed before the status line), 5xx, 408 and 429 (the collector's own "later"), 425, and
//!   401, 403, 404 and 407. The last four say the device's configuration is wrong (credentials,
//!   URL) — every file would get them, so setting files aside would strand them all until an
//!   operator renamed them back; they wait in the queue instead, and the log says what to fix.
//! - **Any other 4xx** (400, 409, 413, 415, 422, ...): the collector refuses this file for good.
//!   It is renamed `<name>.rejected` ([`spool::set_aside`]), counted
//!   (`gatelet_usage_uploads_rejected_total`), logged with the status and the start of the body,
//!   and the next file goes at once: one bad file never blocks the queue. Set-aside files stay
//!   in the spool, count against `max_spool_bytes` (the first to go when it needs room) and
//!   leave with `gatelet usage export`.
//!
//! One connection per file over HTTP/1.1 (hyper on smol), TLS 1.2+ via the system's OpenSSL
//! (async-native-tls). Credentials come from `upload_auth_file`, are re-read before each upload
//! (so they can be rotated in place), are marked sensitive and never logged; a URL with
//! credentials in it is refused, since URLs are logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::server::io::HyperIo;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use smol::future::FutureExt as _;

use super::UsageError;
use super::config::UsageConfig;
use super::metrics::{UsageMetrics, add};
use super::spool::{self, SpoolFile};

/// Longest an upload (connect, TLS, request, response) may take before it counts as failed: a
/// 256 KiB file over a slow cellular link fits comfortably; a stuck collector does not hold the
/// queue forever.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Delay before the first retry; it doubles on each further failure up to `upload_backoff_max_s`.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Largest credentials file read.
const MAX_AUTH_FILE: u64 = 16 * 1024;
/// Response body bytes kept for the log line of a refused upload.
const ERROR_BODY_KEPT: usize = 512;
/// Longest wait for the body of a refusal (read only for the log line): the status already
/// decided what happens to the file, so a slow or cut body must not hold the queue.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// A parsed `upload_url`: where to connect, and the request target with `{file}` still in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    scheme: Scheme,
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    /// Origin-form request target, percent-encoded, split at each `{file}`.
    target_parts: Vec<String>,
}

/// Characters RFC 3986 allows in a path or query as they are; anything else is percent-encoded
/// (so a ClickHouse URL can be written with plain spaces: `?query=INSERT INTO usage FORMAT …`).
fn allowed_in_target(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

fn percent_encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl UploadTarget {
    pub fn parse(url: &str) -> Result<UploadTarget, UsageError> {
        let bad = |why: &str| UsageError::Config(format!("usage.upload_url {url:?}: {why}"));
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        let (scheme, rest) = if lower.starts_with("https://") {
            (Scheme::Https, &url[8..])
        } else if lower.starts_with("http://") {
            (Scheme::Http, &url[7..])
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("credentials in the URL would be logged; put them in usage.upload_auth_file"));
        }
        if target.contains('#') {
            return Err(bad("a fragment is never sent to a server"));
        }
        let parse_port = |p: &str| p.parse::<u16>().map_err(|_| bad("the port is not a number 1-65535"));
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (h, rest) = inner.split_once(']').ok_or_else(|| bad("an unclosed ["))?;
            match rest {
                "" => (h, None),
                r => (h, Some(parse_port(r.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?)?)),
            }
        } else {
            match authority.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(bad("write an IPv6 address in brackets: http://[::1]:8123/"));
                }
                Some((h, p)) => (h, Some(parse_port(p)?)),
                None => (authority, None),
            }
        };
        if host.is_empty() || port == Some(0) {
            return Err(bad("no host or port"));
        }
        if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
            return Err(bad("the host has characters a host name or IP address cannot have"));
        }
        let port = port.unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        let target = if target.is_empty() {
            "/".to_owned()
        } else if target.starts_with('?') {
            format!("/{target}")
        } else {
            target.to_owned()
        };
        let target_parts: Vec<String> =
            target.split("{file}").map(|p| percent_encode(p, allowed_in_target)).collect();
        let t = UploadTarget {
            scheme,
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            target_parts,
        };
        // What hyper will be given must parse, whatever the file name.
        t.target_for("usage-19700101T000000Z-00000000.ndjson.gz")
            .parse::<Uri>()
            .map_err(|e| bad(&format!("not a valid request target: {e}")))?;
        Ok(t)
    }

    /// The request target for one file: `{file}` replaced by its percent-encoded name.
    pub fn target_for(&self, file_name: &str) -> String {
        let name = percent_encode(file_name, |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        self.target_parts.join(&name)
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::Https
    }
}

/// The `Authorization` value read from `upload_auth_file`. Prints without the secret.
struct Credentials(HeaderValue);

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// Reads the credentials file: `Bearer TOKEN`, `Basic USER:PASSWORD` or `Basic BASE64`. Errors
/// name the file and never its content.
fn read_credentials(path: &Path) -> Result<Credentials, String> {
    let fail = |why: &str| format!("usage.upload_auth_file {}: {why}", path.display());
    let len = std::fs::metadata(path).map_err(|e| fail(&e.to_string()))?.len();
    if len > MAX_AUTH_FILE {
        return Err(fail("too large"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e.to_string()))?;
    let text = text.trim();
    let (scheme, secret) = text
        .split_once(char::is_whitespace)
        .ok_or_else(|| fail("expected `Bearer TOKEN` or `Basic USER:PASSWORD`"))?;
    let secret = secret.trim();
    let value = if scheme.eq_ignore_ascii_case("bearer") {
        format!("Bearer {secret}")
    } else if scheme.eq_ignore_ascii_case("basic") {
        if secret.contains(':') {
            use base64ct::Encoding as _;
            format!("Basic {}", base64ct::Base64::encode_string(secret.as_bytes()))
        } else {
            format!("Basic {secret}")
        }
    } else {
        return Err(fail("expected `Bearer TOKEN` or `Basic USER:PASSWORD`"));
    };
    let mut v = HeaderValue::from_str(&value).map_err(|_| fail("characters a header cannot carry"))?;
    v.set_sensitive(true);
    Ok(Credentials(v))
}

/// What a collector's status means for the file; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delete the file.
    Accepted,
    /// Keep it and send it again after a backoff.
    Retry,
    /// Set it aside (`.rejected`) and go on with the next file.
    Reject,
}

/// The collector's status, read as the module doc says.
pub fn verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Accepted,
        // The collector's "later", and statuses that blame the device's configuration (every
        // file would get them): no file is to blame.
        401 | 403 | 404 | 407 | 408 | 425 | 429 => Verdict::Retry,
        400..=499 => Verdict::Reject,
        // 5xx, and 1xx/3xx a POST should never end with: the collector's fault, for now.
        _ => Verdict::Retry,
    }
}

/// Why one upload failed (and will be retried).
#[derive(Debug)]
enum UploadError {
    Io(std::io::Error),
    Tls(String),
    Http(hyper::Error),
    Refused(StatusCode, String),
    Timeout,
    Setup(String),
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadError::Io(e) => write!(f, "{e}"),
            UploadError::Tls(e) => write!(f, "TLS: {e}"),
            UploadError::Http(e) => write!(f, "HTTP: {e}"),
            UploadError::Refused(s, body) => {
                write!(f, "collector answered {s}")?;
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                // Statuses that blame the device's configuration say which key to look at.
                match s.as_u16() {
                    401 | 403 | 407 => f.write_str(" (check usage.upload_auth_file)"),
                    404 => f.write_str(" (check usage.upload_url)"),
                    _ => Ok(()),
                }
            }
            UploadError::Timeout => write!(f, "no answer within {}s", UPLOAD_TIMEOUT.as_secs()),
            UploadError::Setup(e) => f.write_str(e),
        }
    }
}

impl From<std::io::Error> for UploadError {
    fn from(e: std::io::Error) -> Self {
        UploadError::Io(e)
    }
}

impl From<hyper::Error> for UploadError {
    fn from(e: hyper::Error) -> Self {
        UploadError::Http(e)
    }
}

/// The uploader's state; [`Uploader::run`] is its thread's body.
pub(crate) struct Uploader {
    dir: PathBuf,
    target: UploadTarget,
    auth_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    device: HeaderValue,
    interval: Duration,
    backoff_max: Duration,
    metrics: Arc<UsageMetrics>,
}

/// The wait before retry `n` (0 = first): [`FIRST_RETRY`] doubled `n` times, capped at `max`,
/// times a random factor in [0.75, 1.25) so that a fleet that lost its collector together does
/// not retry in lockstep.
pub fn backoff(n: u32, max: Duration, random: u64) -> Duration {
    let base = FIRST_RETRY.saturating_mul(1u32 << n.min(30)).min(max);
    // random / 2^64 in [0, 1), scaled to [0.75, 1.25): in thousandths to stay in integers.
    let permille = 750 + (random >> 32) * 500 / (1u64 << 32);
    let d = base.saturating_mul(u32::try_from(permille).unwrap_or(1000)) / 1000;
    d.min(max)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // Without OS randomness the jitter degrades to none; retries still back off.
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

/// What became of a file the collector answered.
enum Sent {
    /// Accepted and deleted; or gone before it could be sent (the cap, an export).
    Done,
    /// Refused for good and renamed to its `.rejected` name (`None`: gone meanwhile).
    SetAside(StatusCode, String, Option<PathBuf>),
}

enum Step<T> {
    Done(T),
    Stopped,
}

/// Runs `f` unless `stop` is closed first.
async fn unless_stopped<T>(stop: &smol::channel::Receiver<()>, f: impl Future<Output = T>) -> Step<T> {
    async { Step::Done(f.await) }
        .or(async {
            while stop.recv().await.is_ok() {}
            Step::Stopped
        })
        .await
}

impl Uploader {
    pub(crate) fn new(
        cfg: &UsageConfig,
        target: UploadTarget,
        device_id: Arc<str>,
        metrics: Arc<UsageMetrics>,
    ) -> Uploader {
        let non_empty = |p: &PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        Uploader {
            dir: cfg.spool_dir.clone(),
            target,
            auth_file: non_empty(&cfg.upload_auth_file),
            ca_file: non_empty(&cfg.upload_ca_file),
            // Validated: no control characters; other bytes are legal header text.
            device: HeaderValue::from_bytes(device_id.as_bytes())
                .unwrap_or(HeaderValue::from_static("unknown")),
            interval: Duration::from_secs(cfg.upload_interval_s),
            backoff_max: Duration::from_secs(cfg.upload_backoff_max_s),
            metrics,
        }
    }

    /// Uploads every closed file, oldest first, then waits `upload_interval_s` (or a wake-up
    /// from the writer when the spool passes half its cap); until `stop` is closed.
    pub(crate) async fn run(self, stop: smol::channel::Receiver<()>, wake: smol::channel::Receiver<()>) {
        let mut failures: u32 = 0;
        loop {
            // A spool that cannot be listed is the writer's to report; try again next interval.
            while let Some(file) = spool::list(&self.dir).ok().and_then(|l| l.closed.into_iter().next()) {
                let result = match unless_stopped(&stop, self.upload_one(&file)).await {
                    Step::Done(r) => r,
                    Step::Stopped => return,
                };
                match result {
                    Ok(Sent::Done) => failures = 0,
                    Ok(Sent::SetAside(status, body, aside)) => {
                        // The collector answered: it is reachable, the next file goes at once.
                        failures = 0;
                        add(&self.metrics.uploads_rejected, 1);
                        let body = if body.is_empty() { String::new() } else { format!(": {body}") };
                        let whereto = aside.map_or_else(
                            || "it has left the spool meanwhile".to_owned(),
                            |p| format!("kept as {} for `gatelet usage export`", p.display()),
                        );
                        log::error!(
                            "usage: {} refused {} for good ({status}{body}); {whereto}; going on with the next file",
                            self.target.authority,
                            file.name
                        );
                    }
                    Err(e) => {
                        add(&self.metrics.uploads_failed, 1);
                        let wait = backoff(failures, self.backoff_max, random_u64());
                        failures = failures.saturating_add(1);
                        log::warn!(
                            "usage: upload of {} to {} failed: {e}; retrying in {:.1}s",
                            file.name,
                            self.target.authority,
                            wait.as_secs_f64()
                        );
                        if let Step::Stopped = unless_stopped(&stop, smol::Timer::after(wait)).await {
                            return;
                        }
                    }
                }
            }
            let wait = async {
                smol::Timer::after(self.interval).await;
            }
            .or(async {
                if wake.recv().await.is_err() {
                    // The writer is gone (shutting down): only the timer or `stop` end the wait.
                    std::future::pending::<()>().await;
                }
            });
            if let Step::Stopped = unless_stopped(&stop, wait).await {
                return;
            }
        }
    }

    /// Sends one file; on a 2xx deletes it, on a refusal for good sets it aside. A file that
    /// vanished meanwhile (cap, export) is done.
    async fn upload_one(&self, file: &SpoolFile) -> Result<Sent, UploadError> {
        // This thread is the uploader's own: blocking file work here holds up nothing else.
        let checked = match spool::check_closed(&file.path)? {
            None => None,
            Some(_) => match std::fs::read(&file.path) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            },
        };
        let Some(body) = checked else { return Ok(Sent::Done) };
        let len = body.len() as u64;
        let credentials = match &self.auth_file {
            Some(p) => Some(read_credentials(p).map_err(UploadError::Setup)?),
            None => None,
        };
        let mut req = Request::post(self.target.target_for(&file.name))
            .header(header::HOST, &self.target.authority)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::CONTENT_LENGTH, len)
            .header(header::USER_AGENT, concat!("gatelet/", env!("CARGO_PKG_VERSION")))
            .header("idempotency-key", &file.name)
            .header("x-gatelet-device", self.device.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| UploadError::Setup(format!("request: {e}")))?;
        if let Some(c) = credentials {
            req.headers_mut().insert(header::AUTHORIZATION, c.0);
        }
        let exchange = self.send(req);
        let (status, text) = exchange
            .or(async {
                smol::Timer::after(UPLOAD_TIMEOUT).await;
                Err(UploadError::Timeout)
            })
            .await?;
        match verdict(status) {
            Verdict::Accepted => {}
            Verdict::Retry => return Err(UploadError::Refused(status, text)),
            Verdict::Reject => {
                // A set-aside that fails (read-only flash, a file in the way) is retried like a
                // failed upload: the file stays in the queue rather than be lost.
                let aside = spool::set_aside(file)?;
                return Ok(Sent::SetAside(status, text, aside));
            }
        }
        add(&self.metrics.uploads_ok, 1);
        add(&self.metrics.upload_bytes, len);
        spool::remove_if_present(&file.path)?;
        spool::fsync_dir(&self.dir)?;
        log::debug!("usage: uploaded {} ({len} bytes)", file.name);
        Ok(Sent::Done)
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, String), UploadError> {
        let tcp = smol::net::TcpStream::connect((self.target.host.as_str(), self.target.port)).await?;
        tcp.set_nodelay(true)?;
        if self.target.is_https() {
            let mut connector = async_native_tls::TlsConnector::new()
                .min_protocol_version(Some(async_native_tls::Protocol::Tlsv12));
            if let Some(ca) = &self.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| UploadError::Setup(format!("usage.upload_ca_file {}: {e}", ca.display())))?;
                let cert = async_native_tls::Certificate::from_pem(&pem)
                    .map_err(|e| UploadError::Setup(format!("usage.upload_ca_file {}: {e}", ca.display())))?;
                connector = connector.add_root_certificate(cert);
            }
            let tls = connector
                .connect(self.target.host.as_str(), tcp)
                .await
                .map_err(|e| UploadError::Tls(e.to_string()))?;
            exchange(HyperIo::new(Box::new(tls)), req).await
        } else {
            exchange(HyperIo::new(Box::new(tcp)), req).await
        }
    }
}

/// A connection to the collector, plain or TLS. One type for both: a virtual call per read and
/// write (an upload a minute at most) saves a second copy of hyper's client in the binary.
trait Connection: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin + Send {}

impl<T: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin + Send> Connection for T {}

/// The start of a refusal's body, for the log line: best effort, at most [`ERROR_BODY_KEPT`]
/// bytes and [`ERROR_BODY_WAIT`]; a body cut short or stalled gives what arrived.
async fn body_start(mut body: hyper::body::Incoming) -> String {
    let mut kept = Vec::new();
    let read = async {
        while kept.len() < ERROR_BODY_KEPT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = ERROR_BODY_KEPT - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
    };
    read.or(async {
        smol::Timer::after(ERROR_BODY_WAIT).await;
    })
    .await;
    String::from_utf8_lossy(&kept).trim().replace(['\r', '\n'], " ")
}

/// One request on a fresh HTTP/1.1 connection; returns the status and, for anything but a 2xx,
/// the start of the body. A 2xx body is never read: the status line is the acknowledgement.
async fn exchange(
    io: HyperIo<Box<dyn Connection>>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, String), UploadError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let request = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok((status, String::new()));
        }
        Ok((status, body_start(resp.into_body()).await))
    };
    // The connection future drives the exchange. It may finish first (a server that answers and
    // closes): the response it read is already handed over, so the request is still awaited;
    // had nothing come, the request fails by itself (and UPLOAD_TIMEOUT bounds it either way).
    enum First<T> {
        Request(T),
        Connection,
    }
    let mut request = std::pin::pin!(request);
    let first = async { First::Request((&mut request).await) }
        .or(async {
            let _ = conn.await;
            First::Connection
        })
        .await;
    match first {
        First::Request(r) => r,
        First::Connection => request.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = UploadTarget::parse(
            "http://127.0.0.1:8123/?query=INSERT INTO usage FORMAT JSONEachRow&input_format_skip_unknown_fields=1&insert_deduplication_token={file}",
        )
        .expect("clickhouse url");
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str()), ("127.0.0.1", 8123, "127.0.0.1:8123"));
        assert_eq!(
            t.target_for("usage-20261128T200000Z-00000001.ndjson.gz"),
            "/?query=INSERT%20INTO%20usage%20FORMAT%20JSONEachRow&input_format_skip_unknown_fields=1&insert_deduplication_token=usage-20261128T200000Z-00000001.ndjson.gz"
        );
        let t = UploadTarget::parse("HTTPS://collector.example/usage/{file}").expect("https");
        assert!(t.is_https());
        assert_eq!(t.port, 443);
        assert_eq!(t.target_for("a b+c"), "/usage/a%20b%2Bc");
        let t = UploadTarget::parse("http://[::1]:9000").expect("ipv6");
        assert_eq!((t.host.as_str(), t.port, t.target_for("x").as_str()), ("::1", 9000, "/"));
        for bad in [
            "ftp://x/",
            "http://",
            "http://user:pw@host/",
            "http://host:0/",
            "http://host:99999/",
            "http://::1/",
            "http://ho st/",
            "http://host/#frag",
        ] {
            assert!(UploadTarget::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn verdicts() {
        let v = |code: u16| verdict(StatusCode::from_u16(code).expect("status"));
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(v(code), Verdict::Accepted, "{code}");
        }
        for code in [401, 403, 404, 407, 408, 425, 429, 500, 502, 503, 504, 599, 100, 302, 304] {
            assert_eq!(v(code), Verdict::Retry, "{code}");
        }
        for code in [400, 405, 409, 410, 411, 413, 415, 422, 431, 451, 499] {
            assert_eq!(v(code), Verdict::Reject, "{code}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let max = Duration::from_secs(900);
        for r in [0, u64::MAX / 2, u64::MAX] {
            let first = backoff(0, max, r);
            assert!(first >= Duration::from_millis(750) && first < Duration::from_millis(1250), "{first:?}");
            let fifth = backoff(4, max, r);
            assert!(fifth >= Duration::from_secs(12) && fifth < Duration::from_secs(20), "{fifth:?}");
            assert!(backoff(40, max, r) <= max);
            assert!(backoff(40, max, r) >= max * 3 / 4);
        }
    }

    #[test]
    fn credentials_never_print() {
        let dir = std::env::temp_dir().join(format!("gatelet-usage-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("auth");
        std::fs::write(&p, "Basic alice:s3cret\n").expect("write");
        let c = read_credentials(&p).expect("basic");
        assert_eq!(c.0, "Basic YWxpY2U6czNjcmV0");
        assert!(c.0.is_sensitive());
        assert!(!format!("{c:?}").contains("YWxp"));
        std::fs::write(&p, "bearer tok.en").expect("write");
        assert_eq!(read_credentials(&p).expect("bearer").0, "Bearer tok.en");
        std::fs::write(&p, "s3cret-without-scheme").expect("write");
        let e = read_credentials(&p).expect_err("no scheme");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
