//! Counters of the usage pipeline, shared by the request path, the writer and the uploader, and
//! read by the admin listener's `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Relaxed atomics: each value is an independent counter or gauge, read for monitoring only.
#[derive(Debug, Default)]
pub struct UsageMetrics {
    /// Events accepted into the queue by [`super::UsageRecorder::try_record`].
    pub events_queued: AtomicU64,
    /// Events refused because the queue was full (or the spooler was shut down).
    pub events_dropped_queue_full: AtomicU64,
    /// Events appended and fsynced to a usage file.
    pub events_written: AtomicU64,
    /// Events lost because the flash refused a write (full, read-only, I/O error).
    pub events_dropped_write_failed: AtomicU64,
    /// Request records in closed files deleted by the spool cap.
    pub events_dropped_cap: AtomicU64,
    pub files_dropped_cap: AtomicU64,
    pub bytes_dropped_cap: AtomicU64,
    /// Compressed bytes appended to usage files (what the flash was asked to store).
    pub bytes_written: AtomicU64,
    /// Gzip members appended (one per flush): the number of fsyncs of usage data.
    pub members_written: AtomicU64,
    /// Failed creates, writes, fsyncs and renames in the spool.
    pub write_errors: AtomicU64,
    /// 1 while the writer can write, 0 while it drops usage and retries.
    pub spool_writable: AtomicU64,
    /// Bytes of usage files in the spool (closed and `.part`), as of the writer's last look.
    pub spool_bytes: AtomicU64,
    /// Closed files waiting for upload or export, as of the writer's last look.
    pub spool_files: AtomicU64,
    /// Files set aside after a refusal for good (`.rejected`), waiting for export, as of the
    /// writer's last look.
    pub spool_rejected_files: AtomicU64,
    pub files_closed: AtomicU64,
    pub uploads_ok: AtomicU64,
    /// Attempts that will be retried (network, TLS, timeout, 5xx, 408, 429, 401/403/404).
    pub uploads_failed: AtomicU64,
    /// Files the collector refused for good (another 4xx), set aside as `.rejected`.
    pub uploads_rejected: AtomicU64,
    pub upload_bytes: AtomicU64,
}

/// A plain copy of [`UsageMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub events_queued: u64,
    pub events_dropped_queue_full: u64,
    pub events_written: u64,
    pub events_dropped_write_failed: u64,
    pub events_dropped_cap: u64,
    pub files_dropped_cap: u64,
    pub bytes_dropped_cap: u64,
    pub bytes_written: u64,
    pub members_written: u64,
    pub write_errors: u64,
    pub spool_writable: u64,
    pub spool_bytes: u64,
    pub spool_files: u64,
    pub spool_rejected_files: u64,
    pub files_closed: u64,
    pub uploads_ok: u64,
    pub uploads_failed: u64,
    pub uploads_rejected: u64,
    pub upload_bytes: u64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl UsageMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            events_queued: g(&self.events_queued),
            events_dropped_queue_full: g(&self.events_dropped_queue_full),
            events_written: g(&self.events_written),
            events_dropped_write_failed: g(&self.events_dropped_write_failed),
            events_dropped_cap: g(&self.events_dropped_cap),
            files_dropped_cap: g(&self.files_dropped_cap),
            bytes_dropped_cap: g(&self.bytes_dropped_cap),
            bytes_written: g(&self.bytes_written),
            members_written: g(&self.members_written),
            write_errors: g(&self.write_errors),
            spool_writable: g(&self.spool_writable),
            spool_bytes: g(&self.spool_bytes),
            spool_files: g(&self.spool_files),
            spool_rejected_files: g(&self.spool_rejected_files),
            files_closed: g(&self.files_closed),
            uploads_ok: g(&self.uploads_ok),
            uploads_failed: g(&self.uploads_failed),
            uploads_rejected: g(&self.uploads_rejected),
            upload_bytes: g(&self.upload_bytes),
        }
    }

    /// Every sample as `(name with labels, type, help, value)`, the shape the admin listener's
    /// `/metrics` renders (samples of one name are adjacent, so one `# HELP`/`# TYPE` covers them).
    pub fn samples(&self) -> Vec<(String, &'static str, &'static str, u64)> {
        let s = self.snapshot();
        const DROPPED: &str =
            "Usage events lost: queue full, flash refused the write, or deleted by the spool cap.";
        let mut out: Vec<(String, &'static str, &'static str, u64)> = [
            ("queue_full", s.events_dropped_queue_full),
            ("write_failed", s.events_dropped_write_failed),
            ("spool_cap", s.events_dropped_cap),
        ]
        .into_iter()
        .map(|(reason, v)| {
            (format!("gatelet_usage_events_dropped_total{{reason=\"{reason}\"}}"), "counter", DROPPED, v)
        })
        .collect();
        let rows: [(&str, &'static str, &'static str, u64); 15] = [
            ("events_written_total", "counter", "Usage events appended and fsynced.", s.events_written),
            ("bytes_written_total", "counter", "Compressed bytes appended to usage files.", s.bytes_written),
            ("flushes_total", "counter", "Gzip members appended (fsyncs of usage data).", s.members_written),
            (
                "write_errors_total",
                "counter",
                "Failed writes, fsyncs and renames in the spool.",
                s.write_errors,
            ),
            ("files_closed_total", "counter", "Usage files closed.", s.files_closed),
            (
                "files_dropped_total",
                "counter",
                "Closed usage files deleted by the spool cap.",
                s.files_dropped_cap,
            ),
            (
                "bytes_dropped_total",
                "counter",
                "Bytes of usage files deleted by the spool cap.",
                s.bytes_dropped_cap,
            ),
            (
                "spool_bytes",
                "gauge",
                "Bytes of usage files in the spool (set-aside ones included).",
                s.spool_bytes,
            ),
            ("spool_files", "gauge", "Closed usage files waiting for upload or export.", s.spool_files),
            (
                "spool_rejected_files",
                "gauge",
                "Usage files the collector refused for good, set aside (.rejected) for export.",
                s.spool_rejected_files,
            ),
            ("spool_writable", "gauge", "1 while the spool accepts writes.", s.spool_writable),
            ("uploads_ok_total", "counter", "Usage files accepted by the collector.", s.uploads_ok),
            ("uploads_failed_total", "counter", "Failed usage file uploads, retried.", s.uploads_failed),
            (
                "uploads_rejected_total",
                "counter",
                "Usage files the collector refused for good (a 4xx blaming the file), set aside.",
                s.uploads_rejected,
            ),
            ("upload_bytes_total", "counter", "Bytes of usage files uploaded.", s.upload_bytes),
        ];
        out.extend(rows.into_iter().map(|(n, k, h, v)| (format!("gatelet_usage_{n}"), k, h, v)));
        out
    }

    /// Appends the Prometheus text exposition of [`UsageMetrics::samples`].
    pub fn render_prometheus(&self, out: &mut String) {
        let mut last_family = String::new();
        for (name, kind, help, v) in self.samples() {
            let family = name.split('{').next().unwrap_or(&name);
            if family != last_family {
                let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
                last_family = family.to_owned();
            }
            let _ = writeln!(out, "{name} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_every_counter() {
        let m = UsageMetrics::default();
        add(&m.events_dropped_queue_full, 3);
        add(&m.uploads_ok, 2);
        add(&m.uploads_rejected, 1);
        let mut out = String::new();
        m.render_prometheus(&mut out);
        assert!(out.contains("gatelet_usage_events_dropped_total{reason=\"queue_full\"} 3\n"), "{out}");
        assert!(out.contains("\ngatelet_usage_uploads_ok_total 2\n"), "{out}");
        assert!(out.contains("\ngatelet_usage_uploads_rejected_total 1\n"), "{out}");
        assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), 18);
        assert_eq!(out.matches("# TYPE gatelet_usage_events_dropped_total counter").count(), 1);
        assert_eq!(m.samples().len(), 18);
    }
}
