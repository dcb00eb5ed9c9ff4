//! The `[usage]` section of `gatelet.toml`, embedded by [`crate::config::Config`].
//!
//! Every key is optional; `upload_url`, `upload_auth_file`, `upload_ca_file` and `device_id` use
//! the empty string for "not set", so that every key has a default of the right type for the
//! `GATELET_USAGE_<KEY>` environment overrides.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::UsageError;
use super::upload::UploadTarget;

/// The smallest `max_spool_bytes` accepted: room for a few flushes of a busy gateway. Below it the
/// cap would drop files faster than they can be closed.
pub const MIN_SPOOL_BYTES: u64 = 64 * 1024;
/// Largest `queue_capacity`: the queue holds boxed events (a few hundred bytes each, strings
/// included), so this bounds the memory a stalled writer can make the request path fill.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;

/// The `[usage]` section: where usage files go, how often they are made durable, when they are
/// closed, how large the spool may grow and where closed files are uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Directory of the spool: `.part` files being written and closed `usage-*.ndjson.gz` files.
    pub spool_dir: PathBuf,
    /// Hard cap on the bytes of usage files in `spool_dir` (closed files and the `.part`); when a
    /// flush would pass it, the oldest closed files are deleted first, and the loss is counted.
    pub max_spool_bytes: u64,
    /// The longest an event waits in memory before it is appended (one gzip member) and fsynced:
    /// the most usage a power cut may lose.
    pub flush_interval_ms: u64,
    /// A `.part` file is closed once it holds this many (compressed) bytes.
    pub rotate_bytes: u64,
    /// A `.part` file is closed once it is this old, so that usage reaches the collector.
    pub rotate_interval_s: u64,
    /// Collector URL (`http://` or `https://`); `{file}` is replaced by the URL-encoded file name.
    /// Empty: files stay in the spool for `gatelet usage export`.
    pub upload_url: String,
    /// How often the uploader looks for closed files when the spool is below half its cap (above
    /// it, every closed file is uploaded as soon as it is closed).
    pub upload_interval_s: u64,
    /// Longest wait between two failed upload attempts; the first retry comes after about a
    /// second, then the wait doubles up to this.
    pub upload_backoff_max_s: u64,
    /// A file holding the collector's credentials, one line: `Bearer TOKEN`, or `Basic USER:PASSWORD`
    /// (or `Basic BASE64`). Read before each upload, never logged. Empty: no `Authorization`.
    pub upload_auth_file: PathBuf,
    /// Extra trusted root certificate (PEM) for an HTTPS collector with a private CA; the system
    /// roots stay trusted. Empty: system roots only.
    pub upload_ca_file: PathBuf,
    /// `device_id` of every record and the `X-Gatelet-Device` header. Empty: the host name.
    pub device_id: String,
    /// Events the request path may queue ahead of the writer; a full queue drops and counts.
    pub queue_capacity: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            spool_dir: PathBuf::from("/var/lib/gatelet/spool"),
            max_spool_bytes: 64 * 1024 * 1024,
            flush_interval_ms: 1000,
            rotate_bytes: 256 * 1024,
            rotate_interval_s: 300,
            upload_url: String::new(),
            upload_interval_s: 300,
            upload_backoff_max_s: 900,
            upload_auth_file: PathBuf::new(),
            upload_ca_file: PathBuf::new(),
            device_id: String::new(),
            queue_capacity: 8192,
        }
    }
}

impl UsageConfig {
    /// Checks every value; `gatelet check` and [`super::Spooler::start`] call it. The fault is the
    /// device configuration's author.
    pub fn validate(&self) -> Result<(), UsageError> {
        let bad = |msg: String| Err(UsageError::Config(msg));
        if self.spool_dir.as_os_str().is_empty() {
            return bad("usage.spool_dir is empty".into());
        }
        if self.max_spool_bytes < MIN_SPOOL_BYTES {
            return bad(format!("usage.max_spool_bytes must be at least {MIN_SPOOL_BYTES}"));
        }
        if self.rotate_bytes == 0 || self.rotate_bytes > self.max_spool_bytes / 2 {
            return bad(format!(
                "usage.rotate_bytes must be 1 to half of usage.max_spool_bytes ({}), so that a closed \
                 file can be dropped to make room for the next",
                self.max_spool_bytes / 2
            ));
        }
        for (key, v) in [
            ("usage.flush_interval_ms", self.flush_interval_ms),
            ("usage.rotate_interval_s", self.rotate_interval_s),
            ("usage.upload_interval_s", self.upload_interval_s),
            ("usage.upload_backoff_max_s", self.upload_backoff_max_s),
        ] {
            if v == 0 {
                return bad(format!("{key} must be at least 1"));
            }
        }
        // An hour bounds what a power cut may lose, and keeps Duration arithmetic far from overflow.
        if self.flush_interval_ms > 3_600_000 {
            return bad("usage.flush_interval_ms must be at most 3600000".into());
        }
        // A year bounds every interval: far beyond any use, far from Instant + Duration overflow.
        for (key, v) in [
            ("usage.rotate_interval_s", self.rotate_interval_s),
            ("usage.upload_interval_s", self.upload_interval_s),
            ("usage.upload_backoff_max_s", self.upload_backoff_max_s),
        ] {
            if v > 31_536_000 {
                return bad(format!("{key} must be at most 31536000 (a year)"));
            }
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity) {
            return bad(format!("usage.queue_capacity must be 1 to {MAX_QUEUE_CAPACITY}"));
        }
        if !self.upload_url.is_empty() {
            UploadTarget::parse(&self.upload_url)?;
        }
        if self.device_id.len() > 255 || self.device_id.chars().any(char::is_control) {
            return bad(
                "usage.device_id must be at most 255 characters, none of them control characters".into()
            );
        }
        Ok(())
    }

    /// `device_id`, or the host name when it is empty.
    pub fn resolved_device_id(&self) -> String {
        if !self.device_id.is_empty() {
            return self.device_id.clone();
        }
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_owned())
            .find(|s| !s.is_empty() && s.len() <= 255 && !s.chars().any(char::is_control))
            .unwrap_or_else(|| "unknown".to_owned())
    }

    pub(crate) fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub(crate) fn rotate_interval(&self) -> Duration {
        Duration::from_secs(self.rotate_interval_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_product_brief() {
        let c = UsageConfig::default();
        c.validate().expect("defaults valid");
        assert_eq!(c.max_spool_bytes, 67_108_864);
        assert_eq!(c.flush_interval_ms, 1000);
        assert_eq!(c.rotate_bytes, 262_144);
        assert_eq!(c.rotate_interval_s, 300);
        assert_eq!(c.upload_interval_s, 300);
        assert_eq!(c.upload_backoff_max_s, 900);
        // Every key has a default of a concrete type, as the environment overrides need.
        let t = toml::Table::try_from(&c).expect("serializes");
        assert_eq!(t.len(), 12);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = toml::from_str::<UsageConfig>("spool_dri = \"/x\"").expect_err("typo");
        assert!(e.to_string().contains("spool_dri"), "{e}");
        let c: UsageConfig =
            toml::from_str("flush_interval_ms = 250\nupload_url = \"http://127.0.0.1:1/{file}\"")
                .expect("partial section");
        assert_eq!(c.flush_interval_ms, 250);
        assert_eq!(c.rotate_bytes, 262_144);
        c.validate().expect("valid");
        for bad in [
            "max_spool_bytes = 1000",
            "rotate_bytes = 0",
            "max_spool_bytes = 1048576\nrotate_bytes = 600000",
            "flush_interval_ms = 0",
            "queue_capacity = 0",
            "upload_url = \"ftp://x/\"",
            "upload_url = \"http://\"",
            "device_id = \"a\\nb\"",
        ] {
            let c: UsageConfig = toml::from_str(bad).expect("parses");
            assert!(c.validate().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn device_id_defaults_to_the_host_name() {
        let c = UsageConfig::default();
        let id = c.resolved_device_id();
        assert!(!id.is_empty());
        let c = UsageConfig { device_id: "press-7".into(), ..UsageConfig::default() };
        assert_eq!(c.resolved_device_id(), "press-7");
    }
}
