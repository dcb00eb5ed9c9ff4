//! Counters for `/metrics`, rendered in the Prometheus text format.
//!
//! Nothing on the request path takes a lock or allocates: requests are counted in
//! [`StatusCounts`], one per API name, made when the bundle loads ([`ApiCounters`]) plus one for
//! requests no API answered (`api="none"`); auth failures and throttling levels in fixed
//! [`LabelCounts`]. Label sets are bounded: APIs come from the bundle, statuses are counted
//! exactly for the first [`STATUS_SLOTS`] distinct ones of an API and by class (`"5xx"`) after
//! that, and reasons and levels are fixed strings; a request cannot mint a new label value.
//!
//! In the exposition every family is one block (`# HELP`, `# TYPE`, then all its samples), as
//! the format requires; [`Metrics::render`] groups samples from other modules by family.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::bundle::Manifest;

/// Distinct statuses counted exactly per API. gatelet itself answers about a dozen (200 from a
/// backend, 204, 400, 401, 403, 404, 405, 408, 413, 429, 431, 499, 500, 502, 503, 504); a
/// backend's rarer statuses beyond the slots are counted by class.
pub const STATUS_SLOTS: usize = 24;

/// Distinct labels a [`LabelCounts`] holds: every token failure reason and throttling level fits
/// with room to spare; anything past it is counted as `other`.
const LABEL_SLOTS: usize = 32;

#[derive(Debug, Default)]
struct StatusSlot {
    /// 0 while the slot is free.
    status: AtomicU16,
    count: AtomicU64,
}

/// Requests answered, by HTTP status, for one label of `gatelet_requests_total`.
#[derive(Debug, Default)]
pub struct StatusCounts {
    slots: [StatusSlot; STATUS_SLOTS],
    /// Statuses that found no free slot, by class (`1xx` … `9xx`).
    by_class: [AtomicU64; 9],
}

impl StatusCounts {
    /// Counts one answer with `status`: the slot already holding it, else the first free one
    /// (claimed with a compare-and-swap), else the status class.
    pub fn add(&self, status: u16) {
        if status != 0 {
            for slot in &self.slots {
                let held = slot.status.load(Ordering::Acquire);
                let mine = held == status
                    || (held == 0
                        && match slot.status.compare_exchange(0, status, Ordering::AcqRel, Ordering::Acquire)
                        {
                            Ok(_) => true,
                            Err(other) => other == status,
                        });
                if mine {
                    slot.count.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.by_class[Self::class(status)].fetch_add(1, Ordering::Relaxed);
    }

    fn class(status: u16) -> usize {
        usize::from(status / 100).clamp(1, 9) - 1
    }

    /// Requests counted with exactly `status` (not those counted by class).
    pub fn get(&self, status: u16) -> u64 {
        self.slots
            .iter()
            .find(|s| s.status.load(Ordering::Acquire) == status)
            .map_or(0, |s| s.count.load(Ordering::Relaxed))
    }

    /// `(status label, count)`: exact statuses ascending, then the classes that counted any.
    fn samples(&self) -> Vec<(String, u64)> {
        let mut exact: Vec<(u16, u64)> = self
            .slots
            .iter()
            .map(|s| (s.status.load(Ordering::Acquire), s.count.load(Ordering::Relaxed)))
            .filter(|&(status, _)| status != 0)
            .collect();
        exact.sort_unstable();
        let mut out: Vec<(String, u64)> = exact.into_iter().map(|(s, n)| (s.to_string(), n)).collect();
        for (i, n) in self.by_class.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                out.push((format!("{}xx", i + 1), n));
            }
        }
        out
    }
}

/// The request counters of one bundle's APIs, made when it loads. The metric is labelled by API
/// name, so the versions of an API share one [`StatusCounts`].
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// By name, sorted.
    named: Vec<(String, Arc<StatusCounts>)>,
    /// For each API of the manifest (by index), its entry in `named`.
    by_api: Vec<usize>,
}

impl ApiCounters {
    /// Counters for `manifest`'s APIs. An API whose name the `previous` bundle had keeps its
    /// counters (the same `Arc`: requests still finishing on the old bundle count there too);
    /// an API the new bundle drops leaves `/metrics` with it, and starts from zero should a later
    /// bundle bring it back (a counter reset, which Prometheus' `rate()` reads as such).
    pub fn new(manifest: &Manifest, previous: Option<&ApiCounters>) -> ApiCounters {
        let mut names: Vec<&str> = manifest.apis.iter().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let named: Vec<(String, Arc<StatusCounts>)> = names
            .into_iter()
            .map(|n| {
                let kept = previous.and_then(|p| p.named(n)).map(Arc::clone);
                (n.to_owned(), kept.unwrap_or_default())
            })
            .collect();
        let by_api = manifest
            .apis
            .iter()
            // Every name was put in `named` just above; 0 is never used (an empty bundle has no
            // APIs to index).
            .map(|a| named.binary_search_by(|(n, _)| n.as_str().cmp(&a.name)).unwrap_or(0))
            .collect();
        ApiCounters { named, by_api }
    }

    fn named(&self, name: &str) -> Option<&Arc<StatusCounts>> {
        self.named.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok().map(|i| &self.named[i].1)
    }

    /// The counters of the API at `index` in the manifest.
    pub fn of(&self, index: usize) -> Option<&Arc<StatusCounts>> {
        self.by_api.get(index).and_then(|&i| self.named.get(i)).map(|(_, c)| c)
    }
}

/// Counts by a fixed label (`&'static str`): slots claimed once, then counted without a lock.
#[derive(Debug, Default)]
pub struct LabelCounts {
    slots: [(OnceLock<&'static str>, AtomicU64); LABEL_SLOTS],
    other: AtomicU64,
}

impl LabelCounts {
    pub fn add(&self, label: &'static str) {
        for (name, count) in &self.slots {
            let held = match name.get() {
                Some(held) => *held,
                None => *name.get_or_init(|| label),
            };
            if held == label {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.other.fetch_add(1, Ordering::Relaxed);
    }

    /// `(label, count)` sorted by label.
    fn samples(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> =
            self.slots.iter().filter_map(|(n, c)| Some((*n.get()?, c.load(Ordering::Relaxed)))).collect();
        let other = self.other.load(Ordering::Relaxed);
        if other > 0 {
            out.push(("other", other));
        }
        out.sort_unstable();
        out
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests no API answered (refused before routing, or routed nowhere): `api="none"`.
    pub unrouted: Arc<StatusCounts>,
    auth_failures: LabelCounts,
    throttled: LabelCounts,
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

/// Escapes a label value (Prometheus text format: backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The family a sample belongs to: its name without labels.
fn family(sample: &str) -> &str {
    sample.split('{').next().unwrap_or(sample)
}

impl Metrics {
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.add(reason);
    }

    pub fn throttled(&self, level: &'static str) {
        self.throttled.add(level);
    }

    /// The Prometheus text exposition of these counters and of `apis`' request counts, plus
    /// `extra` samples from other modules (name with labels, type, help, value). Samples of one
    /// family are written together under one `# HELP`/`# TYPE`, wherever they stand in `extra`.
    pub fn render(&self, apis: &ApiCounters, extra: &[(&str, &str, &str, u64)]) -> String {
        let mut out = String::with_capacity(4096);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut out, "gatelet_requests_total", "counter", "Requests answered, by API and HTTP status.");
        let series = std::iter::once(("none", &self.unrouted))
            .chain(apis.named.iter().filter(|(n, _)| n != "none").map(|(n, c)| (n.as_str(), c)));
        for (api, counts) in series {
            for (status, n) in counts.samples() {
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
        for (reason, n) in self.auth_failures.samples() {
            let _ = writeln!(out, "gatelet_auth_failures_total{{reason=\"{reason}\"}} {n}");
        }
        head(&mut out, "gatelet_throttled_total", "counter", "Requests refused by throttling, by level.");
        for (level, n) in self.throttled.samples() {
            let _ = writeln!(out, "gatelet_throttled_total{{level=\"{level}\"}} {n}");
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
        // Families in the order they first appear, each with all its samples.
        let mut families: Vec<&str> = Vec::new();
        for (name, ..) in extra {
            let f = family(name);
            if !families.contains(&f) {
                families.push(f);
            }
        }
        for f in families {
            let mut samples = extra.iter().filter(|(name, ..)| family(name) == f).peekable();
            if let Some((_, kind, help, _)) = samples.peek() {
                head(&mut out, f, kind, help);
            }
            for (name, _, _, v) in samples {
                let _ = writeln!(out, "{name} {v}");
            }
        }
        out
    }
}

/// Checks a text exposition the way a Prometheus scraper reads it: every sample's family was
/// announced by `# TYPE` just before its block, the samples of a family are contiguous, and no
/// family is announced twice. Returns the first violation.
pub fn check_exposition(text: &str) -> Result<(), String> {
    let mut announced: Vec<&str> = Vec::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or("");
            if announced.contains(&name) {
                return Err(format!("family {name} announced twice"));
            }
            announced.push(name);
            current = Some(name);
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (sample, value) = line.rsplit_once(' ').ok_or_else(|| format!("no value: {line}"))?;
            value.parse::<f64>().map_err(|_| format!("bad value: {line}"))?;
            let f = family(sample);
            if current != Some(f) {
                return Err(if announced.contains(&f) {
                    format!("family {f} is split: {line}")
                } else {
                    format!("sample without its # TYPE block: {line}")
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::model::Api;

    fn manifest(names: &[&str]) -> Manifest {
        Manifest {
            label: "t".into(),
            serial: 1,
            created_at: 0,
            issuers: vec![],
            policies: vec![],
            apis: names
                .iter()
                .map(|n| Api {
                    name: (*n).into(),
                    version: "1".into(),
                    context: format!("/{n}"),
                    tier: None,
                    disable_security: false,
                    auth_header: None,
                    production: None,
                    sandbox: None,
                    cors: None,
                    operations: vec![],
                    https_only: false,
                    api_key_locations: vec![],
                })
                .collect(),
            revoked_jti: vec![],
            scope_rule: crate::bundle::model::ScopeRule::AnyOf,
            default_subscription_tier: None,
        }
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        let apis = ApiCounters::new(&manifest(&["PizzaShack", "a\"b"]), None);
        apis.of(0).expect("api 0").add(200);
        apis.of(0).expect("api 0").add(200);
        apis.of(1).expect("api 1").add(404);
        m.unrouted.add(400);
        m.auth_failure("expired");
        let text = m.render(
            &apis,
            &[
                ("gatelet_x{k=\"1\"}", "gauge", "x.", 3),
                ("gatelet_y", "gauge", "y.", 5),
                ("gatelet_x{k=\"2\"}", "gauge", "x.", 4),
            ],
        );
        assert!(text.contains("gatelet_requests_total{api=\"PizzaShack\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("gatelet_requests_total{api=\"a\\\"b\",status=\"404\"} 1\n"), "{text}");
        assert!(text.contains("gatelet_requests_total{api=\"none\",status=\"400\"} 1\n"), "{text}");
        assert!(text.contains("gatelet_auth_failures_total{reason=\"expired\"} 1\n"));
        assert_eq!(text.matches("# TYPE gatelet_x gauge").count(), 1);
        assert!(text.contains("gatelet_x{k=\"1\"} 3\ngatelet_x{k=\"2\"} 4\n"), "{text}");
        check_exposition(&text).expect("a valid exposition");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("gatelet_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn the_exposition_check_catches_split_and_repeated_families() {
        let ok = "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"2\"} 2\n# TYPE b gauge\nb 1\n";
        assert_eq!(check_exposition(ok), Ok(()));
        let split = "# TYPE a gauge\na{x=\"1\"} 1\n# TYPE b gauge\nb 1\na{x=\"2\"} 2\n";
        assert!(check_exposition(split).expect_err("split").contains("split"));
        let twice = "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\na 2\n";
        assert!(check_exposition(twice).expect_err("twice").contains("twice"));
        assert!(check_exposition("c 1\n").is_err());
    }

    #[test]
    fn statuses_past_the_slots_are_counted_by_class() {
        let c = StatusCounts::default();
        for s in 0..u16::try_from(STATUS_SLOTS).expect("a few slots") {
            c.add(200 + s);
        }
        c.add(200);
        c.add(299);
        c.add(599);
        assert_eq!(c.get(200), 2);
        let samples = c.samples();
        assert_eq!(samples.len(), STATUS_SLOTS + 2, "{samples:?}");
        assert!(samples.contains(&("2xx".to_owned(), 1)) && samples.contains(&("5xx".to_owned(), 1)));
    }

    #[test]
    fn an_api_that_stays_keeps_its_counts_across_a_reload() {
        let old = ApiCounters::new(&manifest(&["Shop", "Gone"]), None);
        old.of(0).expect("shop").add(200);
        old.of(1).expect("gone").add(200);
        let new = ApiCounters::new(&manifest(&["New", "Shop"]), Some(&old));
        assert_eq!(new.of(1).expect("shop").get(200), 1, "Shop kept its count");
        assert_eq!(new.of(0).expect("new").get(200), 0);
        // A request that started on the old bundle and ends after the swap counts where the new
        // bundle reads.
        old.of(0).expect("shop").add(200);
        assert_eq!(new.of(1).expect("shop").get(200), 2);
        let text = Metrics::default().render(&new, &[]);
        assert!(!text.contains("Gone"), "{text}");
    }

    #[test]
    fn labels_are_counted_without_a_lock() {
        let l = LabelCounts::default();
        l.add("b");
        l.add("a");
        l.add("b");
        assert_eq!(l.samples(), vec![("a", 1), ("b", 2)]);
    }
}
