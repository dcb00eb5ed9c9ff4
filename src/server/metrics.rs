//! Counters for `/metrics`, rendered in the Prometheus text format.
//!
//! Label sets are bounded: APIs come from the bundle (at most 4096), statuses are three digits,
//! and reasons and levels are fixed strings; a request cannot mint a new label value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most distinct (api, status) pairs kept; beyond it, counts go to `api="other"`.
const MAX_REQUEST_SERIES: usize = 16_384;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    throttled: Mutex<BTreeMap<&'static str, u64>>,
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub requests_in_flight: AtomicU64,
    pub bundle_serial: AtomicU64,
    pub bundle_reloads_ok: AtomicU64,
    pub bundle_reloads_failed: AtomicU64,
    pub clock_floor_seconds: AtomicU64,
    pub backend_errors: AtomicU64,
    pub backend_timeouts: AtomicU64,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_insert(0) += 1;
    }
}

/// Escapes a label value (Prometheus text format: backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn request(&self, api: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            let key = if m.len() >= MAX_REQUEST_SERIES && !m.contains_key(&(api.to_owned(), status)) {
                ("other".to_owned(), status)
            } else {
                (api.to_owned(), status)
            };
            *m.entry(key).or_insert(0) += 1;
        }
    }

    pub fn auth_failure(&self, reason: &'static str) {
        bump(&self.auth_failures, reason);
    }

    pub fn throttled(&self, level: &'static str) {
        bump(&self.throttled, level);
    }

    /// Total requests counted with `status` (for tests and logs).
    pub fn requests_with_status(&self, status: u16) -> u64 {
        self.requests
            .lock()
            .map(|m| m.iter().filter(|((_, s), _)| *s == status).map(|(_, n)| n).sum())
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of these counters, plus `extra` lines from other modules.
    pub fn render(&self, extra: &[(&str, &str, &str, u64)]) -> String {
        let mut out = String::with_capacity(4096);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut out, "gatelet_requests_total", "counter", "Requests answered, by API and HTTP status.");
        if let Ok(m) = self.requests.lock() {
            for ((api, status), n) in m.iter() {
                let _ =
                    writeln!(out, "gatelet_requests_total{{api=\"{}\",status=\"{status}\"}} {n}", label(api));
            }
        }
        head(
            &mut out,
            "gatelet_auth_failures_total",
            "counter",
            "Requests refused by token validation, by reason.",
        );
        if let Ok(m) = self.auth_failures.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(out, "gatelet_auth_failures_total{{reason=\"{reason}\"}} {n}");
            }
        }
        head(&mut out, "gatelet_throttled_total", "counter", "Requests refused by throttling, by level.");
        if let Ok(m) = self.throttled.lock() {
            for (level, n) in m.iter() {
                let _ = writeln!(out, "gatelet_throttled_total{{level=\"{level}\"}} {n}");
            }
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let simple = [
            (
                "gatelet_connections_active",
                "gauge",
                "Open client connections.",
                load(&self.connections_active),
            ),
            (
                "gatelet_connections_total",
                "counter",
                "Client connections accepted.",
                load(&self.connections_total),
            ),
            (
                "gatelet_requests_in_flight",
                "gauge",
                "Requests being handled.",
                load(&self.requests_in_flight),
            ),
            ("gatelet_bundle_serial", "gauge", "Serial of the active bundle.", load(&self.bundle_serial)),
            (
                "gatelet_clock_floor_seconds",
                "gauge",
                "The clock floor in force (Unix seconds).",
                load(&self.clock_floor_seconds),
            ),
            (
                "gatelet_backend_errors_total",
                "counter",
                "Requests answered 502: backend unreachable or failed.",
                load(&self.backend_errors),
            ),
            (
                "gatelet_backend_timeouts_total",
                "counter",
                "Requests answered 504: backend too slow.",
                load(&self.backend_timeouts),
            ),
        ];
        for (name, kind, help, v) in simple {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        head(&mut out, "gatelet_bundle_reloads_total", "counter", "Bundle reload attempts, by result.");
        let _ =
            writeln!(out, "gatelet_bundle_reloads_total{{result=\"ok\"}} {}", load(&self.bundle_reloads_ok));
        let _ = writeln!(
            out,
            "gatelet_bundle_reloads_total{{result=\"failed\"}} {}",
            load(&self.bundle_reloads_failed)
        );
        for (name, kind, help, v) in extra {
            // Several samples of one family share its HELP/TYPE lines.
            let base = name.split('{').next().unwrap_or(name);
            if !out.contains(&format!("# TYPE {base} ")) {
                head(&mut out, base, kind, help);
            }
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("PizzaShack", 200);
        m.request("PizzaShack", 200);
        m.request("a\"b", 404);
        m.auth_failure("expired");
        let text =
            m.render(&[("gatelet_x{k=\"1\"}", "gauge", "x.", 3), ("gatelet_x{k=\"2\"}", "gauge", "x.", 4)]);
        assert!(text.contains("gatelet_requests_total{api=\"PizzaShack\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("gatelet_requests_total{api=\"a\\\"b\",status=\"404\"} 1\n"), "{text}");
        assert!(text.contains("gatelet_auth_failures_total{reason=\"expired\"} 1\n"));
        assert_eq!(text.matches("# TYPE gatelet_x gauge").count(), 1);
        assert!(text.contains("gatelet_x{k=\"2\"} 4\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("gatelet_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
