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
    pub files_closed: AtomicU64,
    pub uploads_ok: AtomicU64,
    pub uploads_failed: AtomicU64,
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
    pub files_closed: u64,
    pub uploads_ok: u64,
    pub uploads_failed: u64,
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
            files_closed: g(&self.files_closed),
            uploads_ok: g(&self.uploads_ok),
            uploads_failed: g(&self.uploads_failed),
            upload_bytes: g(&self.upload_bytes),
        }
    }

    /// Appends the Prometheus text exposition of these metrics (`gatelet_usage_*`).
    pub fn render_prometheus(&self, out: &mut String) {
        let s = self.snapshot();
        let dropped = [
            ("queue_full", s.events_dropped_queue_full),
            ("write_failed", s.events_dropped_write_failed),
            ("spool_cap", s.events_dropped_cap),
        ];
        let rows: [(&str, &str, &str, u64); 13] = [
            (
                "gatelet_usage_events_written_total",
                "counter",
                "Usage events appended and fsynced.",
                s.events_written,
            ),
            (
                "gatelet_usage_bytes_written_total",
                "counter",
                "Compressed bytes appended to usage files.",
                s.bytes_written,
            ),
            (
                "gatelet_usage_flushes_total",
                "counter",
                "Gzip members appended (fsyncs of usage data).",
                s.members_written,
            ),
            (
                "gatelet_usage_write_errors_total",
                "counter",
                "Failed writes, fsyncs and renames in the spool.",
                s.write_errors,
            ),
            ("gatelet_usage_files_closed_total", "counter", "Usage files closed.", s.files_closed),
            (
                "gatelet_usage_files_dropped_total",
                "counter",
                "Closed usage files deleted by the spool cap.",
                s.files_dropped_cap,
            ),
            (
                "gatelet_usage_bytes_dropped_total",
                "counter",
                "Bytes of usage files deleted by the spool cap.",
                s.bytes_dropped_cap,
            ),
            ("gatelet_usage_spool_bytes", "gauge", "Bytes of usage files in the spool.", s.spool_bytes),
            (
                "gatelet_usage_spool_files",
                "gauge",
                "Closed usage files waiting for upload or export.",
                s.spool_files,
            ),
            ("gatelet_usage_spool_writable", "gauge", "1 while the spool accepts writes.", s.spool_writable),
            (
                "gatelet_usage_uploads_ok_total",
                "counter",
                "Usage files accepted by the collector.",
                s.uploads_ok,
            ),
            ("gatelet_usage_uploads_failed_total", "counter", "Failed usage file uploads.", s.uploads_failed),
            ("gatelet_usage_upload_bytes_total", "counter", "Bytes of usage files uploaded.", s.upload_bytes),
        ];
        let _ = writeln!(out, "# HELP gatelet_usage_events_dropped_total Usage events lost, by reason.");
        let _ = writeln!(out, "# TYPE gatelet_usage_events_dropped_total counter");
        for (reason, v) in dropped {
            let _ = writeln!(out, "gatelet_usage_events_dropped_total{{reason=\"{reason}\"}} {v}");
        }
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
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
        let mut out = String::new();
        m.render_prometheus(&mut out);
        assert!(out.contains("gatelet_usage_events_dropped_total{reason=\"queue_full\"} 3\n"), "{out}");
        assert!(out.contains("\ngatelet_usage_uploads_ok_total 2\n"), "{out}");
        assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), 16);
    }
}
