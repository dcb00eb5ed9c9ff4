//! The usage writer: events per second through the real spooler (queue, JSON, gzip members,
//! fdatasync per flush, rotation, to files in the temp dir), and compressed bytes written per
//! 1,000 requests.
//!
//! Baselines in the same run, so results read as ratios: writing the same records as NDJSON lines
//! in memory (the spooler's serialisation alone), gzip of that NDJSON in memory as one stream
//! (levels 6 and 1), and the compressed size and time of each zlib level the spooler could use.
//!
//! `cargo bench --bench usage`

use std::hint::black_box;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flate2::Compression;
use flate2::write::GzEncoder;
use gatelet::usage::COMPRESSION;
use gatelet::usage::gzip::MemberEncoder;
use gatelet::usage::{Spooler, Timestamp, UsageConfig, UsageEvent, spool};

const EVENTS: u64 = 20_000;

fn events() -> Vec<UsageEvent> {
    (0..EVENTS).map(|n| UsageEvent::synthetic(n, Timestamp(1_795_896_000_000 + n * 3))).collect()
}

/// The NDJSON the spooler writes for these events (device_id last, as it stamps it).
fn ndjson(evs: &[UsageEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in evs {
        e.write_line("bench-device", &mut out);
    }
    out
}

fn config(dir: &Path) -> UsageConfig {
    UsageConfig {
        spool_dir: dir.to_owned(),
        device_id: "bench-device".into(),
        queue_capacity: 8192,
        ..UsageConfig::default()
    }
}

/// Spools `evs` through a fresh spooler and returns the time from the first event to the
/// shutdown (everything appended, fsynced and closed).
fn spool_all(dir: &Path, evs: &[UsageEvent]) -> Duration {
    let _ = std::fs::remove_dir_all(dir);
    let s = Spooler::start(&config(dir)).expect("starts");
    let r = s.recorder();
    let t0 = Instant::now();
    for e in evs {
        // The writer's sustained rate, with the request path's own call: a refused event is
        // offered again (spinning, as a busy gateway keeps offering new ones) rather than waited
        // for with `record_waiting`, whose park/unpark per slot would slow the writer.
        while r.try_record(e.clone()).is_err() {
            std::thread::yield_now();
        }
    }
    s.shutdown();
    let took = t0.elapsed();
    assert_eq!(s.metrics().snapshot().events_written, evs.len() as u64);
    took
}

fn benches(c: &mut Criterion) {
    let evs = events();
    let text = ndjson(&evs);
    let dir = std::env::temp_dir().join(format!("gatelet-bench-usage-{}", std::process::id()));

    // Bytes to flash per 1,000 requests: the spooler's files, against one gzip stream of the same
    // NDJSON, and by members' size (a quiet device flushes small members every second).
    spool_all(&dir, &evs);
    let listing = spool::list(&dir).expect("list");
    let spooled = listing.closed_bytes();
    let mut one = GzEncoder::new(Vec::new(), Compression::new(COMPRESSION));
    one.write_all(&text).expect("gzip");
    let one = one.finish().expect("gzip").len() as u64;
    eprintln!(
        "usage: {EVENTS} requests, NDJSON {} bytes ({} per request); spooled {} bytes in {} files = {} bytes per 1,000 requests; one gzip stream at the spooler's level in memory: {} per 1,000",
        text.len(),
        text.len() as u64 / EVENTS,
        spooled,
        listing.closed.len(),
        spooled * 1000 / EVENTS,
        one * 1000 / EVENTS
    );
    for per_member in [10usize, 100, 1000] {
        let mut enc = MemberEncoder::new(Compression::new(COMPRESSION));
        let mut total = 0u64;
        let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        for chunk in lines.chunks(per_member) {
            for l in chunk {
                enc.write(l).expect("write");
            }
            total += enc.finish().expect("member").len() as u64;
        }
        eprintln!(
            "usage: members of {per_member} requests: {} bytes per 1,000 requests",
            total * 1000 / EVENTS
        );
    }

    // Compression level: flash bytes against the writer's CPU, members of 1,000 requests (a
    // busy device's flush). Printed, not a criterion group: one pass of 20,000 requests per level
    // is enough to rank them, and the ratios are what the level choice rests on.
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    let mut level_6 = None;
    for level in [6u32, 1, 2, 3, 4] {
        let mut best = Duration::MAX;
        let mut total = 0u64;
        for _ in 0..5 {
            let t0 = Instant::now();
            let mut enc = MemberEncoder::new(Compression::new(level));
            total = 0;
            for chunk in lines.chunks(1000) {
                for l in chunk {
                    enc.write(l).expect("write");
                }
                total += enc.finish().expect("member").len() as u64;
            }
            best = best.min(t0.elapsed());
        }
        let (t6, b6) = *level_6.get_or_insert((best, total));
        eprintln!(
            "usage: gzip level {level}: {:.2} µs per request ({:.2}x level 6), {} bytes per 1,000 requests ({:.2}x level 6)",
            best.as_secs_f64() * 1e6 / EVENTS as f64,
            best.as_secs_f64() / t6.as_secs_f64(),
            total * 1000 / EVENTS,
            total as f64 / b6 as f64
        );
    }

    let mut g = c.benchmark_group("usage-20000-requests");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    g.bench_function("spooler: queue + JSON + gzip members + fdatasync + rotate", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| spool_all(&dir, &evs)).sum())
    });
    g.bench_function("baseline: NDJSON serialisation in memory", |b| {
        b.iter(|| black_box(ndjson(black_box(&evs))))
    });
    g.bench_function("baseline: gzip level 6 of the NDJSON in memory", |b| {
        b.iter(|| {
            let mut e = GzEncoder::new(Vec::new(), Compression::new(6));
            e.write_all(black_box(&text)).expect("gzip");
            black_box(e.finish().expect("gzip"))
        })
    });
    g.bench_function("baseline: gzip level 1 of the NDJSON in memory", |b| {
        b.iter(|| {
            let mut e = GzEncoder::new(Vec::new(), Compression::new(1));
            e.write_all(black_box(&text)).expect("gzip");
            black_box(e.finish().expect("gzip"))
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(usage, benches);
criterion_main!(usage);
