//! Drives the real usage spooler without the data plane: writes N synthetic request records
//! (`UsageEvent::synthetic`) through `Spooler`, closes the current file, and with `--upload-url`
//! runs the uploader until the spool is empty. Used by `tests/interop/usage_duckdb_clickhouse.sh`;
//! handy to fill a spool by hand.
//!
//! ```sh
//! cargo run --example usage_load -- --spool-dir /tmp/spool --events 5000
//! cargo run --example usage_load -- --spool-dir /tmp/spool --events 0 \
//!     --upload-url 'http://127.0.0.1:8123/?query=INSERT INTO usage FORMAT JSONEachRow&input_format_skip_unknown_fields=1'
//! ```
//!
//! Prints the spooler's metrics as JSON; exits 1 if the spool did not empty within
//! `--drain-timeout-s`, or if an event was dropped.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;
use gatelet::usage::{Spooler, Timestamp, UsageConfig, UsageEvent, spool};

/// Write synthetic usage through the real spooler, and optionally upload it.
#[derive(FromArgs, Debug)]
struct Args {
    /// spool directory
    #[argh(option)]
    spool_dir: PathBuf,
    /// number of request records to write
    #[argh(option)]
    events: u64,
    /// first event number (request ids end in -N)
    #[argh(option, default = "0")]
    first: u64,
    /// device_id of the records
    #[argh(option, default = "String::from(\"load-device\")")]
    device_id: String,
    /// rotate_bytes (default 262144)
    #[argh(option, default = "262_144")]
    rotate_bytes: u64,
    /// collector URL; when set, upload until the spool is empty
    #[argh(option)]
    upload_url: Option<String>,
    /// longest wait for the spool to empty (default 120)
    #[argh(option, default = "120")]
    drain_timeout_s: u64,
}

fn main() -> ExitCode {
    let a: Args = argh::from_env();
    let cfg = UsageConfig {
        spool_dir: a.spool_dir.clone(),
        device_id: a.device_id,
        rotate_bytes: a.rotate_bytes,
        flush_interval_ms: 100,
        upload_url: a.upload_url.clone().unwrap_or_default(),
        upload_interval_s: 1,
        upload_backoff_max_s: 5,
        ..UsageConfig::default()
    };
    let s = match Spooler::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("usage_load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let base = Timestamp::now().0;
    for n in a.first..a.first + a.events {
        let e = UsageEvent::synthetic(n, Timestamp(base + n - a.first));
        // Every event is wanted here: wait for room instead of dropping.
        if s.recorder().record_waiting(e).is_err() {
            eprintln!("usage_load: the spooler stopped");
            return ExitCode::FAILURE;
        }
    }
    s.close_current_file();
    let wrote = started.elapsed();
    let mut ok = true;
    if a.upload_url.is_some() {
        let deadline = Instant::now() + Duration::from_secs(a.drain_timeout_s);
        while spool::list(&a.spool_dir).map(|l| !l.closed.is_empty()).unwrap_or(true) {
            if Instant::now() > deadline {
                eprintln!("usage_load: the spool did not empty within {} s", a.drain_timeout_s);
                ok = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    s.shutdown();
    let m = s.metrics().snapshot();
    ok &= m.events_dropped_queue_full == 0 && m.events_dropped_write_failed == 0 && m.events_dropped_cap == 0;
    println!(
        "{{\"events_written\":{},\"bytes_written\":{},\"files_closed\":{},\"uploads_ok\":{},\"uploads_failed\":{},\"dropped\":{},\"write_seconds\":{:.3}}}",
        m.events_written,
        m.bytes_written,
        m.files_closed,
        m.uploads_ok,
        m.uploads_failed,
        m.events_dropped_queue_full + m.events_dropped_write_failed + m.events_dropped_cap,
        wrote.as_secs_f64()
    );
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
