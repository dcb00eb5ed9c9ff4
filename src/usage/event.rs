//! The usage record: one JSON object per line. Two kinds share the files:
//!
//! - `"kind":"request"`: one per request, whatever its outcome (served, refused by auth, throttled,
//!   backend fault), with the fields of the product brief (section 6) and `device_id` stamped by
//!   the spooler.
//! - `"kind":"usage_dropped"`: usage the device lost since the previous such record, written into
//!   the next member flushed (so into the current or the next file):
//!   `{"kind":"usage_dropped","ts":…,"device_id":…,"bundle_serial":…,"events_queue_full":N,
//!   "events_write_failed":N,"events_capped":N,"files_capped":N,"bytes_capped":N}` —
//!   events refused because the queue was full, events lost because the flash refused the write
//!   (full, read-only, I/O error), and closed files deleted by the spool cap with the request
//!   records and bytes they held. `SUM()` over these records is the loss; request rows are
//!   `WHERE kind = 'request'`.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// A wall-clock instant in milliseconds since the Unix epoch, written as RFC 3339 UTC with
/// milliseconds (`2026-11-28T20:00:00.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

/// 9999-12-31T23:59:59.999Z: the last instant a four-digit year can write; later ones are clamped.
const MAX_MS: u64 = 253_402_300_799_999;

/// Civil date of a day count since 1970-01-01 (proleptic Gregorian), after Howard Hinnant's
/// `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>), unsigned since
/// every input here is on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Writes `v` as exactly `out.len()` decimal digits (the caller keeps `v` in range).
fn digits(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + u8::try_from(v % 10).unwrap_or(0);
        v /= 10;
    }
}

/// The broken-down UTC time of a clamped millisecond count.
struct Civil {
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
    milli: u64,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    /// Times before the epoch (a board whose clock was never set) read as the epoch.
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn civil(self) -> Civil {
        let ms = self.0.min(MAX_MS);
        let (year, month, day) = civil_from_days(ms / 86_400_000);
        let in_day = ms % 86_400_000;
        Civil {
            year,
            month,
            day,
            hour: in_day / 3_600_000,
            minute: in_day / 60_000 % 60,
            second: in_day / 1000 % 60,
            milli: in_day % 1000,
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn rfc3339(self) -> [u8; 24] {
        let c = self.civil();
        let mut b = *b"0000-00-00T00:00:00.000Z";
        digits(&mut b[0..4], c.year);
        digits(&mut b[5..7], c.month);
        digits(&mut b[8..10], c.day);
        digits(&mut b[11..13], c.hour);
        digits(&mut b[14..16], c.minute);
        digits(&mut b[17..19], c.second);
        digits(&mut b[20..23], c.milli);
        b
    }

    /// `YYYYMMDDTHHMMSSZ`: the ISO 8601 basic form used in file names (no `:`, which FAT file
    /// systems on USB sticks refuse).
    pub fn basic(self) -> [u8; 16] {
        let c = self.civil();
        let mut b = *b"00000000T000000Z";
        digits(&mut b[0..4], c.year);
        digits(&mut b[4..6], c.month);
        digits(&mut b[6..8], c.day);
        digits(&mut b[9..11], c.hour);
        digits(&mut b[11..13], c.minute);
        digits(&mut b[13..15], c.second);
        b
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only ASCII digits and punctuation were written.
        f.write_str(std::str::from_utf8(&self.rfc3339()).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One request's usage, as the data plane records it. `device_id` is not a field: the spooler
/// stamps its own on every record it writes.
///
/// Made on the request path, written on the writer's thread: what comes from the bundle is
/// shared ([`ApiLabels`], made once per bundle), the fixed vocabularies are static, and the
/// client's address stays an address until the writer formats it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    /// When the request arrived (the gateway's clock, floor-corrected).
    pub ts: Timestamp,
    pub request_id: String,
    /// The API that matched: `api`, `api_version` and `context` in the record, all null when
    /// no API matched (404).
    pub api: Option<Arc<ApiLabels>>,
    /// The operation's path template when one matched, else the normalised request path.
    pub resource: String,
    pub method: Cow<'static, str>,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Application of the token (`application.id`); null when unauthenticated.
    pub app_id: Option<String>,
    pub app_name: Option<String>,
    /// The token's subject (or application owner).
    pub subscriber: Option<String>,
    /// `PRODUCTION` or `SANDBOX`; null when unauthenticated.
    pub keytype: Option<&'static str>,
    /// Throttling tier applied (subscription tier, else the application's).
    pub tier: Option<String>,
    pub throttled: bool,
    /// Passed over quota at a tier with `stop_on_quota_reach = false` (WSO2's
    /// `ALLOWED_ON_QUOTA_REACHED`): served, but to be billed or reviewed as over quota.
    pub over_quota: bool,
    /// WSO2 fault code sent (900901, 900800, 101503, …); null when the request was served.
    pub error_code: Option<u32>,
    /// Why it was refused, for the operator: the backend's error (which the caller never sees),
    /// the framing guard's or the HTTP parser's reason. Null when the request was served.
    pub error_detail: Option<String>,
    /// Time from the request's arrival to the response's last byte.
    pub latency_ms: f64,
    /// Time spent waiting on the backend; null when no backend was called.
    pub backend_latency_ms: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The client's address as seen by the gateway (the TCP peer).
    pub client_ip: IpAddr,
    /// Serial of the bundle that served the request.
    pub bundle_serial: u64,
}

/// An API's name, version and context as usage records carry them: made once when a bundle
/// loads and shared by every record of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLabels {
    pub name: String,
    pub version: String,
    pub context: String,
}

/// The method as a record carries it: the standard ones without an allocation.
pub fn method_label(m: &str) -> Cow<'static, str> {
    const STANDARD: [&str; 9] =
        ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT"];
    match STANDARD.iter().find(|s| **s == m) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(m.to_owned()),
    }
}

/// Appends `s` as a JSON string (RFC 8259 §7): quotes, backslashes and control characters
/// escaped, everything else as it is (the input is UTF-8 already). Escapes as serde_json writes
/// them, so records read the same whichever wrote them.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&b[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(c >> 4)],
                    HEX[usize::from(c & 15)],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// A finite number as serde_json writes it (shortest round-trip form); null otherwise, as JSON
/// has no NaN or infinity.
fn json_f64(out: &mut Vec<u8>, v: f64) {
    if serde_json::to_writer(&mut *out, &v).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn json_bool(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

impl UsageEvent {
    /// Appends this request's NDJSON line (with its newline) as the spooler writes it: `kind`
    /// first, the fields of the product brief in its order, `device_id` last.
    pub fn write_line(&self, device_id: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(REQUEST_LINE_PREFIX);
        out.extend_from_slice(b"\"ts\":\"");
        out.extend_from_slice(&self.ts.rfc3339());
        out.extend_from_slice(b"\",\"request_id\":");
        json_str(out, &self.request_id);
        let api = self.api.as_deref();
        out.extend_from_slice(b",\"api\":");
        json_opt_str(out, api.map(|a| a.name.as_str()));
        out.extend_from_slice(b",\"api_version\":");
        json_opt_str(out, api.map(|a| a.version.as_str()));
        out.extend_from_slice(b",\"context\":");
        json_opt_str(out, api.map(|a| a.context.as_str()));
        out.extend_from_slice(b",\"resource\":");
        json_str(out, &self.resource);
        out.extend_from_slice(b",\"method\":");
        json_str(out, &self.method);
        out.extend_from_slice(b",\"status\":");
        json_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"app_id\":");
        json_opt_str(out, self.app_id.as_deref());
        out.extend_from_slice(b",\"app_name\":");
        json_opt_str(out, self.app_name.as_deref());
        out.extend_from_slice(b",\"subscriber\":");
        json_opt_str(out, self.subscriber.as_deref());
        out.extend_from_slice(b",\"keytype\":");
        json_opt_str(out, self.keytype);
        out.extend_from_slice(b",\"tier\":");
        json_opt_str(out, self.tier.as_deref());
        out.extend_from_slice(b",\"throttled\":");
        json_bool(out, self.throttled);
        out.extend_from_slice(b",\"over_quota\":");
        json_bool(out, self.over_quota);
        out.extend_from_slice(b",\"error_code\":");
        match self.error_code {
            Some(c) => json_u64(out, u64::from(c)),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"error_detail\":");
        json_opt_str(out, self.error_detail.as_deref());
        out.extend_from_slice(b",\"latency_ms\":");
        json_f64(out, self.latency_ms);
        out.extend_from_slice(b",\"backend_latency_ms\":");
        match self.backend_latency_ms {
            Some(v) => json_f64(out, v),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"request_bytes\":");
        json_u64(out, self.request_bytes);
        out.extend_from_slice(b",\"response_bytes\":");
        json_u64(out, self.response_bytes);
        out.extend_from_slice(b",\"client_ip\":\"");
        // An address's text is digits, dots, hex and colons: nothing to escape.
        let _ = write!(out, "{}", self.client_ip);
        out.extend_from_slice(b"\",\"bundle_serial\":");
        json_u64(out, self.bundle_serial);
        out.extend_from_slice(b",\"device_id\":");
        json_str(out, device_id);
        out.extend_from_slice(b"}\n");
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl UsageEvent {
    /// Event number `n` of a plausible synthetic workload, for tests, benches and
    /// `examples/usage_load.rs`: a random-looking 128-bit request id (`request_id` ends in `-n`, so
    /// a reader can recover `n`), four APIs, mostly 200s with some 401s, 429s and 502s, varied
    /// latencies, sizes and client addresses. Deterministic in `n`.
    pub fn synthetic(n: u64, ts: Timestamp) -> UsageEvent {
        let r = splitmix64(n);
        let r2 = splitmix64(r);
        const APIS: [(&str, &str, &str, &[&str]); 4] = [
            ("PizzaShack", "1.0.0", "/pizzashack/1.0.0", &["/menu", "/order", "/order/{orderId}"]),
            ("Inventory", "2.1.0", "/inventory/2.1.0", &["/items", "/items/{id}"]),
            ("Telemetry", "1.0.0", "/telemetry/1.0.0", &["/readings"]),
            ("Maintenance", "0.9.0", "/maint/0.9.0", &["/jobs", "/jobs/{id}/close"]),
        ];
        let (api, version, context, resources) = APIS[usize::from(u8::try_from(r % 4).unwrap_or(0))];
        let resource = resources[usize::try_from(r >> 8).unwrap_or(0) % resources.len()];
        let outcome = (r >> 16) % 100;
        let (status, error_code, throttled) = match outcome {
            0..=2 => (401, Some(900_901), false),
            3..=4 => (429, Some(900_802), true),
            5 => (502, Some(101_503), false),
            _ => (200, None, false),
        };
        let authenticated = status != 401;
        let app = (r >> 24) % 20;
        let backend = status == 200 || status == 502;
        let backend_ms = ((r2 % 5000) as f64) / 100.0;
        UsageEvent {
            ts,
            request_id: format!("{:016x}{:016x}-{n}", r, r2),
            api: Some(Arc::new(ApiLabels {
                name: api.to_owned(),
                version: version.to_owned(),
                context: context.to_owned(),
            })),
            resource: resource.to_owned(),
            method: Cow::Borrowed(if (r >> 32) % 4 == 0 { "POST" } else { "GET" }),
            status,
            app_id: authenticated.then(|| format!("app-{app:04}")),
            app_name: authenticated.then(|| format!("Line controller {app}")),
            subscriber: authenticated.then(|| format!("operator{}@factory.example", app % 7)),
            keytype: authenticated.then_some(if app == 0 { "SANDBOX" } else { "PRODUCTION" }),
            tier: authenticated.then(|| {
                ["Gold", "Silver", "Bronze", "Unlimited"][usize::try_from(app % 4).unwrap_or(0)].to_owned()
            }),
            throttled,
            over_quota: false,
            error_detail: (status == 502).then(|| "connection refused".to_owned()),
            error_code,
            latency_ms: if backend { backend_ms + 0.35 } else { 0.12 },
            backend_latency_ms: backend.then_some(backend_ms),
            request_bytes: if (r >> 32) % 4 == 0 { 180 + (r2 >> 20) % 900 } else { 0 },
            response_bytes: 64 + (r2 >> 30) % 4000,
            client_ip: IpAddr::V4(std::net::Ipv4Addr::new(
                10,
                20,
                u8::try_from((r >> 40) % 4).unwrap_or(0),
                u8::try_from((r >> 48) % 250 + 1).unwrap_or(1),
            )),
            bundle_serial: 17,
        }
    }
}

/// The written form of a request: `kind`, the event, the device.
pub(crate) const REQUEST_LINE_PREFIX: &[u8] = br#"{"kind":"request","#;

/// What the spool lost since the last `usage_dropped` record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Loss {
    pub events_queue_full: u64,
    pub events_write_failed: u64,
    pub events_capped: u64,
    pub files_capped: u64,
    pub bytes_capped: u64,
}

impl Loss {
    pub fn is_empty(&self) -> bool {
        *self == Loss::default()
    }

    pub(crate) fn add(&mut self, o: &Loss) {
        self.events_queue_full += o.events_queue_full;
        self.events_write_failed += o.events_write_failed;
        self.events_capped += o.events_capped;
        self.files_capped += o.files_capped;
        self.bytes_capped += o.bytes_capped;
    }
}

#[derive(Serialize)]
pub(crate) struct LossRecord<'a> {
    pub kind: &'static str,
    pub ts: Timestamp,
    pub device_id: &'a str,
    /// Serial of the bundle of the last request recorded (null before the first).
    pub bundle_serial: Option<u64>,
    #[serde(flatten)]
    pub loss: Loss,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: u64) -> String {
        Timestamp(ms).to_string()
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ts(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(ts(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(ts(1_709_251_199_001), "2024-02-29T23:59:59.001Z");
        assert_eq!(ts(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(ts(1_795_896_000_123), "2026-11-28T20:00:00.123Z");
        assert_eq!(ts(MAX_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(ts(u64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(&Timestamp(1_795_896_000_123).basic(), b"20261128T200000Z");
    }

    /// Every day from 1970 to 2400 against a day-by-day calendar walk.
    #[test]
    fn civil_dates_walk_the_calendar() {
        let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..(430 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn from_system_time_before_epoch_is_epoch() {
        let t = UNIX_EPOCH - std::time::Duration::from_secs(5);
        assert_eq!(Timestamp::from_system_time(t), Timestamp(0));
    }

    #[test]
    fn request_record_shape() {
        let e = UsageEvent {
            ts: Timestamp(1_795_896_000_123),
            request_id: "r1".into(),
            api: Some(Arc::new(ApiLabels {
                name: "PizzaShack".into(),
                version: "1.0.0".into(),
                context: "/pizzashack/1.0.0".into(),
            })),
            resource: "/menu".into(),
            method: method_label("GET"),
            status: 200,
            app_id: None,
            app_name: None,
            subscriber: None,
            keytype: Some("PRODUCTION"),
            tier: Some("Gold".into()),
            throttled: false,
            over_quota: false,
            error_code: None,
            error_detail: None,
            latency_ms: 1.25,
            backend_latency_ms: Some(0.5),
            request_bytes: 0,
            response_bytes: 123,
            client_ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)),
            bundle_serial: 17,
        };
        let mut out = Vec::new();
        e.write_line("dev", &mut out);
        assert_eq!(out.pop(), Some(b'\n'));
        let line = String::from_utf8(out).expect("utf-8");
        assert!(line.as_bytes().starts_with(REQUEST_LINE_PREFIX), "{line}");
        assert_eq!(
            line,
            r#"{"kind":"request","ts":"2026-11-28T20:00:00.123Z","request_id":"r1","api":"PizzaShack","api_version":"1.0.0","context":"/pizzashack/1.0.0","resource":"/menu","method":"GET","status":200,"app_id":null,"app_name":null,"subscriber":null,"keytype":"PRODUCTION","tier":"Gold","throttled":false,"over_quota":false,"error_code":null,"error_detail":null,"latency_ms":1.25,"backend_latency_ms":0.5,"request_bytes":0,"response_bytes":123,"client_ip":"10.0.0.9","bundle_serial":17,"device_id":"dev"}"#
        );
        let loss = LossRecord {
            kind: "usage_dropped",
            ts: Timestamp(0),
            device_id: "dev",
            bundle_serial: None,
            loss: Loss { events_queue_full: 3, ..Loss::default() },
        };
        assert_eq!(
            serde_json::to_string(&loss).expect("json"),
            r#"{"kind":"usage_dropped","ts":"1970-01-01T00:00:00.000Z","device_id":"dev","bundle_serial":null,"events_queue_full":3,"events_write_failed":0,"events_capped":0,"files_capped":0,"bytes_capped":0}"#
        );
    }

    /// The line as serde_json reads it back, for every field, over synthetic records and over
    /// strings with every escape JSON has (quotes, backslashes, each control character, non-ASCII,
    /// `\u{2028}`), and each string escaped byte for byte as serde_json escapes it.
    #[test]
    fn request_lines_read_back_as_written() {
        use serde_json::{Value, json};
        let nasty: String = (0u8..0x20).map(char::from).chain("\"\\/é€😀\u{2028}\u{7f}".chars()).collect();
        for n in 0..500u64 {
            let mut e = UsageEvent::synthetic(n, Timestamp(1_795_896_000_000 + n * 7919));
            if n % 3 == 0 {
                e.resource = format!("/x/{nasty}/{n}");
                e.app_name = Some(nasty.clone());
                e.method = method_label("PURGE");
                e.client_ip = "2001:db8::7".parse().expect("address");
                e.error_detail = Some(format!("backend said \"{nasty}\""));
                e.latency_ms = f64::NAN;
            }
            if n % 5 == 0 {
                e.api = None;
                e.backend_latency_ms = Some(1e-7 * n as f64);
            }
            let mut out = Vec::new();
            e.write_line("dev\u{1}", &mut out);
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line per record");
            let v: Value = serde_json::from_slice(&out).expect("valid JSON");
            // Through serde_json's own text and parser, as its float parsing rounds differently.
            let num = |f: f64| {
                if f.is_finite() {
                    serde_json::from_str::<Value>(&serde_json::to_string(&f).expect("json")).expect("number")
                } else {
                    Value::Null
                }
            };
            let expected = json!({
                "kind": "request", "ts": e.ts.to_string(), "request_id": e.request_id,
                "api": e.api.as_ref().map(|a| &a.name), "api_version": e.api.as_ref().map(|a| &a.version),
                "context": e.api.as_ref().map(|a| &a.context), "resource": e.resource,
                "method": e.method, "status": e.status, "app_id": e.app_id, "app_name": e.app_name,
                "subscriber": e.subscriber, "keytype": e.keytype, "tier": e.tier,
                "throttled": e.throttled, "over_quota": e.over_quota, "error_code": e.error_code,
                "error_detail": e.error_detail, "latency_ms": num(e.latency_ms),
                "backend_latency_ms": e.backend_latency_ms.map(num),
                "request_bytes": e.request_bytes, "response_bytes": e.response_bytes,
                "client_ip": e.client_ip.to_string(), "bundle_serial": e.bundle_serial,
                "device_id": "dev\u{1}",
            });
            assert_eq!(v, expected, "record {n}");
            let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
            assert_eq!(keys.len(), 25);
            let text = String::from_utf8(out.clone()).expect("utf-8");
            for s in [Some(&e.resource), Some(&e.request_id), e.app_name.as_ref()].into_iter().flatten() {
                let escaped = serde_json::to_string(s).expect("json");
                assert!(text.contains(&escaped), "{s:?} escaped as serde_json does: {escaped}");
            }
        }
    }
}
