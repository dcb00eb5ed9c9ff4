//! Shared parts of the usage tests: temp spools, reading a spool back (with flate2 and with the
//! system's `zcat`), and the exact line a request record must be.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gatelet::usage::spool;
use gatelet::usage::{UsageConfig, UsageEvent};

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gatelet-usage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A spool config for tests: fast flushes, small files.
pub fn config(dir: &Path) -> UsageConfig {
    UsageConfig {
        spool_dir: dir.to_owned(),
        flush_interval_ms: 50,
        rotate_bytes: 8 * 1024,
        device_id: "test-device".into(),
        ..UsageConfig::default()
    }
}

/// The exact line the spooler must write for `e`: `kind` first, the event's fields in order,
/// `device_id` last.
/// Made field by field with serde_json, independently of the spooler's own writer.
pub fn expected_line(e: &UsageEvent, device_id: &str) -> String {
    use serde_json::{Value, json};
    let api = e.api.as_deref();
    let fields: [(&str, Value); 24] = [
        ("kind", json!("request")),
        ("ts", json!(e.ts.to_string())),
        ("request_id", json!(e.request_id)),
        ("api", json!(api.map(|a| &a.name))),
        ("api_version", json!(api.map(|a| &a.version))),
        ("context", json!(api.map(|a| &a.context))),
        ("resource", json!(e.resource)),
        ("method", json!(e.method)),
        ("status", json!(e.status)),
        ("app_id", json!(e.app_id)),
        ("app_name", json!(e.app_name)),
        ("subscriber", json!(e.subscriber)),
        ("keytype", json!(e.keytype)),
        ("tier", json!(e.tier)),
        ("throttled", json!(e.throttled)),
        ("over_quota", json!(e.over_quota)),
        ("error_code", json!(e.error_code)),
        ("error_detail", json!(e.error_detail)),
        ("latency_ms", json!(e.latency_ms)),
        ("backend_latency_ms", json!(e.backend_latency_ms)),
        ("request_bytes", json!(e.request_bytes)),
        ("response_bytes", json!(e.response_bytes)),
        ("client_ip", json!(e.client_ip.to_string())),
        ("bundle_serial", json!(e.bundle_serial)),
    ];
    let mut line = String::from("{");
    for (k, v) in fields {
        line += &format!(
            "{}:{},",
            serde_json::to_string(k).expect("key"),
            serde_json::to_string(&v).expect("value")
        );
    }
    line + &format!("\"device_id\":{}}}", serde_json::to_string(device_id).expect("string"))
}

/// Decompresses one file with flate2 (all members).
pub fn gunzip(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read usage file");
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text).expect("a complete gzip stream");
    text
}

/// Decompresses one file with the system's `zcat`, which must exit 0 (no trailing garbage, no
/// truncated member).
pub fn zcat(path: &Path) -> String {
    let out = Command::new("zcat").arg(path).output().expect("zcat runs (apt-get install gzip)");
    assert!(out.status.success(), "zcat {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Every line of every closed file, oldest file first, read with `zcat` and checked against
/// flate2's reading.
pub fn closed_lines(dir: &Path) -> Vec<String> {
    let listing = spool::list(dir).expect("list spool");
    let mut lines = Vec::new();
    for f in &listing.closed {
        let text = zcat(&f.path);
        assert_eq!(text, gunzip(&f.path), "zcat and flate2 disagree on {}", f.name);
        assert!(text.is_empty() || text.ends_with('\n'), "{} ends mid-line", f.name);
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

/// Request lines and `usage_dropped` records.
pub fn split_kinds(lines: &[String]) -> (Vec<&String>, Vec<serde_json::Value>) {
    let mut requests = Vec::new();
    let mut losses = Vec::new();
    for l in lines {
        if l.starts_with("{\"kind\":\"request\",") {
            requests.push(l);
        } else {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            assert_eq!(v["kind"], "usage_dropped", "unknown record {l}");
            losses.push(v);
        }
    }
    (requests, losses)
}

/// Sum of one field over `usage_dropped` records.
pub fn loss_sum(losses: &[serde_json::Value], field: &str) -> u64 {
    losses.iter().map(|v| v[field].as_u64().expect("a count")).sum()
}

/// `n` of a synthetic event's request id (`…-n`).
pub fn seq_of(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    let id = v["request_id"].as_str().expect("request_id");
    id.rsplit('-').next().and_then(|n| n.parse().ok()).expect("synthetic request id")
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// try_record never waits for the writer; a busy test machine may still preempt a call, so the
/// bound is on the 99th percentile (far below one fsync), the maximum is printed.
pub fn assert_non_blocking(mut took: Vec<Duration>, when: &str) {
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    println!("try_record {when}: {} calls, p99 {p99:?}, max {:?}", took.len(), took[took.len() - 1]);
    assert!(p99 < Duration::from_millis(1), "try_record {when}: p99 {p99:?}");
}

/// A test that cannot run here: under CI (`CI` set, as `.ci/run` does) that is a failure, never
/// a silent pass; on a developer's machine it says so and returns.
pub fn cannot_run(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run under CI: {why}");
    }
    println!("SKIPPED {test}: {why}");
}
