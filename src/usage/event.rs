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

use std::fmt;
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageEvent {
    /// When the request arrived (the gateway's clock, floor-corrected).
    pub ts: Timestamp,
    pub request_id: String,
    /// API name; null when no API matched (404).
    pub api: Option<String>,
    pub api_version: Option<String>,
    /// The API's context (`/pizzashack/1.0.0`); null when no API matched.
    pub context: Option<String>,
    /// The operation's path template when one matched, else the normalised request path.
    pub resource: String,
    pub method: String,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Application of the token (`application.id`); null when unauthenticated.
    pub app_id: Option<String>,
    pub app_name: Option<String>,
    /// The token's subject (or application owner).
    pub subscriber: Option<String>,
    /// `PRODUCTION` or `SANDBOX`; null when unauthenticated.
    pub keytype: Option<String>,
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
    pub client_ip: String,
    /// Serial of the bundle that served the request.
    pub bundle_serial: u64,
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
            api: Some(api.to_owned()),
            api_version: Some(version.to_owned()),
            context: Some(context.to_owned()),
            resource: resource.to_owned(),
            method: if (r >> 32) % 4 == 0 { "POST" } else { "GET" }.to_owned(),
            status,
            app_id: authenticated.then(|| format!("app-{app:04}")),
            app_name: authenticated.then(|| format!("Line controller {app}")),
            subscriber: authenticated.then(|| format!("operator{}@factory.example", app % 7)),
            keytype: authenticated.then(|| if app == 0 { "SANDBOX" } else { "PRODUCTION" }.to_owned()),
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
            client_ip: format!("10.20.{}.{}", (r >> 40) % 4, (r >> 48) % 250 + 1),
            bundle_serial: 17,
        }
    }
}

/// The written form of a request: `kind`, the event, the device.
#[derive(Serialize)]
pub(crate) struct RequestRecord<'a> {
    pub kind: &'static str,
    #[serde(flatten)]
    pub event: &'a UsageEvent,
    pub device_id: &'a str,
}

/// The prefix every request line starts with (serde writes fields in declaration order): how
/// the cap counts the request records of a file it deletes.
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
            api: Some("PizzaShack".into()),
            api_version: Some("1.0.0".into()),
            context: Some("/pizzashack/1.0.0".into()),
            resource: "/menu".into(),
            method: "GET".into(),
            status: 200,
            app_id: None,
            app_name: None,
            subscriber: None,
            keytype: Some("PRODUCTION".into()),
            tier: Some("Gold".into()),
            throttled: false,
            over_quota: false,
            error_code: None,
            error_detail: None,
            latency_ms: 1.25,
            backend_latency_ms: Some(0.5),
            request_bytes: 0,
            response_bytes: 123,
            client_ip: "10.0.0.9".into(),
            bundle_serial: 17,
        };
        let line = serde_json::to_string(&RequestRecord { kind: "request", event: &e, device_id: "dev" })
            .expect("json");
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
}
