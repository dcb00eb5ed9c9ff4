//! The spool across process deaths, with a child process that writes usage through the real
//! spooler (the `#[ignore]`d `usage_child`, re-executed by the tests below):
//!
//! - `usage_survives_sigkill`: the child records events at a steady pace and reports how many it
//!   recorded and how many the writer made durable; the parent kills it with SIGKILL at a random
//!   moment, many rounds over the same spool. Every closed file decompresses fully with `zcat`
//!   before recovery, every file after it; each round's events on flash are an exact prefix of
//!   what was recorded, hold everything acknowledged durable, and lose at most the last flush
//!   interval (plus scheduling slack); nothing from earlier rounds changes.
//! - `cap_holds_under_a_flood`: the child floods the spooler; the parent freezes it with SIGSTOP
//!   at random moments (every thread stopped between two system calls) and measures the spool on
//!   disk, which must never exceed `max_spool_bytes`.

mod usage_util;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatelet::usage::{self, Spooler, Timestamp, UsageConfig, UsageEvent, spool};
use usage_util::*;

const DIR_ENV: &str = "GATELET_USAGE_CHILD_DIR";
const MODE_ENV: &str = "GATELET_USAGE_CHILD_MODE";
const BASE_ENV: &str = "GATELET_USAGE_CHILD_BASE";
/// Event numbers of round r are ROUND_SPAN * r + i, so rounds never overlap.
const ROUND_SPAN: u64 = 1_000_000_000;
const FLUSH_MS: u64 = 50;
const FLOOD_CAP: u64 = 256 * 1024;

/// The two parent tests run one after the other: the flood would otherwise take the CPU the
/// steady child needs to flush on time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn steady_config(dir: &Path) -> UsageConfig {
    UsageConfig {
        flush_interval_ms: FLUSH_MS,
        rotate_bytes: 16 * 1024,
        rotate_interval_s: 1,
        queue_capacity: 100_000,
        ..config(dir)
    }
}

fn flood_config(dir: &Path) -> UsageConfig {
    UsageConfig {
        max_spool_bytes: FLOOD_CAP,
        rotate_bytes: 32 * 1024,
        flush_interval_ms: 20,
        queue_capacity: 20_000,
        ..config(dir)
    }
}

/// The child's body. Run only as a child process; ignored in a normal test run.
#[test]
#[ignore = "child process of usage_survives_sigkill and cap_holds_under_a_flood"]
fn usage_child() {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("run by the parent tests"));
    let base: u64 = std::env::var(BASE_ENV).ok().and_then(|b| b.parse().ok()).unwrap_or(0);
    let flood = std::env::var(MODE_ENV).is_ok_and(|m| m == "flood");
    let cfg = if flood { flood_config(&dir) } else { steady_config(&dir) };
    let s = Spooler::start(&cfg).expect("child starts the spooler");
    let r = s.recorder();
    println!("started");
    let mut n = base;
    let mut last_report = Instant::now();
    loop {
        let e = UsageEvent::synthetic(n, Timestamp::now());
        if flood {
            let _ = r.try_record(e);
        } else {
            r.record_waiting(e).expect("spooler running");
            // A few thousand requests a second: a busy board, and a pace an unoptimised test
            // build's writer keeps up with, so what a kill loses is the flush interval's worth.
            if n % 4 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            if last_report.elapsed() >= Duration::from_millis(1) {
                // Recorded through n; the writer made `events_written` of them durable (FIFO).
                println!("at {n} written {}", s.metrics().snapshot().events_written);
                last_report = Instant::now();
            }
        }
        n += 1;
    }
}

/// The child, killed (and reaped) however the test ends: a failed assertion must not leave a
/// flooding or stopped process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.id().to_string()]).stderr(Stdio::null()).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(dir: &Path, mode: &str, base: u64) -> ChildGuard {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "usage_child", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(MODE_ENV, mode)
        .env(BASE_ENV, base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    ChildGuard(child)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("randomness");
    u64::from_le_bytes(b)
}

/// What a round saw before the kill.
struct Round {
    /// (recorded through n, durable count, when the parent read it)
    reports: Vec<(u64, u64, Instant)>,
    killed_at: Instant,
}

fn run_round(dir: &Path, base: u64) -> Round {
    let mut child = spawn_child(dir, "steady", base);
    let stdout = child.0.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send((line, Instant::now()));
        }
    });
    let mut reports = Vec::new();
    let take = |(line, at): (String, Instant), reports: &mut Vec<(u64, u64, Instant)>| {
        let mut w = line.split_whitespace();
        if let (Some("at"), Some(n), Some("written"), Some(d)) = (w.next(), w.next(), w.next(), w.next()) {
            reports.push((n.parse().expect("n"), d.parse().expect("durable"), at));
        }
    };
    // One round in eight is killed during start-up (recovery of the previous round's .part).
    if random_u64() % 8 == 0 {
        std::thread::sleep(Duration::from_micros(random_u64() % 30_000));
    } else {
        let first = rx.recv_timeout(Duration::from_secs(30)).expect("child starts");
        take(first, &mut reports);
        let deadline = Instant::now() + Duration::from_micros(random_u64() % 400_000);
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                take(l, &mut reports);
            }
        }
    }
    let killed_at = Instant::now();
    child.0.kill().expect("SIGKILL");
    child.0.wait().expect("reaped");
    reader.join().expect("reader");
    while let Ok(l) = rx.try_recv() {
        take(l, &mut reports);
    }
    Round { reports, killed_at }
}

/// Event numbers on flash, per round, in file order. Closed files never change, so each is
/// read (with `zcat`, checked against flate2) once and remembered by name and length.
fn events_by_round(dir: &Path, seen: &mut BTreeMap<(String, u64), Vec<u64>>) -> BTreeMap<u64, Vec<u64>> {
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for f in spool::list(dir).expect("list").closed {
        let ns = seen.entry((f.name.clone(), f.len)).or_insert_with(|| {
            let text = zcat(&f.path);
            assert_eq!(text, gunzip(&f.path), "zcat and flate2 disagree on {}", f.name);
            text.lines().filter(|l| l.starts_with("{\"kind\":\"request\",")).map(seq_of).collect()
        });
        for &n in ns.iter() {
            out.entry(n / ROUND_SPAN).or_default().push(n);
        }
    }
    out
}

#[test]
fn usage_survives_sigkill() {
    let _serial = one_at_a_time();
    let dir = tempdir("sigkill");
    let rounds = 30;
    // Slack over the flush interval for the fsync itself and for a busy 2-core machine.
    let slack = Duration::from_millis(300);
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    let mut worst_lost_age = Duration::ZERO;
    let mut total_lost = 0u64;
    let mut files = BTreeMap::new();
    for round in 0..rounds {
        let base = round * ROUND_SPAN;
        let seen = run_round(&dir, base);
        // Closed names only ever hold complete members, crash or not.
        events_by_round(&dir, &mut files);
        // The next start's recovery.
        usage::recover(&dir).expect("recovery");
        assert!(spool::list(&dir).expect("list").parts.is_empty());
        let by_round = events_by_round(&dir, &mut files);
        for (r, n) in &counts {
            assert_eq!(by_round.get(r).map_or(0, Vec::len), *n, "round {round} changed what round {r} left");
        }
        let mine = by_round.get(&round).cloned().unwrap_or_default();
        let expected: Vec<u64> = (base..base + mine.len() as u64).collect();
        assert_eq!(mine, expected, "round {round}: not an exact prefix of what was recorded");
        let on_flash = mine.len() as u64;
        let acked = seen.reports.iter().map(|r| r.1).max().unwrap_or(0);
        assert!(on_flash >= acked, "round {round}: {acked} acknowledged durable, {on_flash} on flash");
        let recorded = seen.reports.iter().map(|r| r.0 + 1 - base).max().unwrap_or(0);
        total_lost += recorded.saturating_sub(on_flash);
        // The oldest event lost was recorded before the report that first named it.
        if let Some(first_lost) = seen.reports.iter().filter(|r| r.0 - base >= on_flash).map(|r| r.2).min() {
            let age = seen.killed_at.duration_since(first_lost);
            worst_lost_age = worst_lost_age.max(age);
            assert!(
                age <= Duration::from_millis(FLUSH_MS) + slack,
                "round {round}: lost an event recorded {age:?} before the kill"
            );
        }
        counts.insert(round, mine.len());
    }
    let total: usize = counts.values().sum();
    println!(
        "{rounds} rounds, {total} events on flash, {total_lost} lost to kills; oldest lost event was recorded at most {worst_lost_age:?} before its kill (flush interval {FLUSH_MS} ms)"
    );
    assert!(total > 1000, "the child made too little progress to test anything ({total} events)");
    assert!(spool::list(&dir).expect("list").closed.len() as u64 > rounds, "files were rotated");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Waits until every thread of `pid` is stopped (state T), i.e. between two system calls.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc");
        let all = tasks.filter_map(Result::ok).all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
                .unwrap_or(true)
        });
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "child did not stop");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn spool_bytes(dir: &Path) -> u64 {
    let l = spool::list(dir).expect("list");
    l.closed_bytes() + l.parts.iter().map(|p| p.len).sum::<u64>()
}

#[test]
fn cap_holds_under_a_flood() {
    let _serial = one_at_a_time();
    let dir = tempdir("flood");
    let mut child = spawn_child(&dir, "flood", 0);
    let mut stdout = BufReader::new(child.0.stdout.take().expect("piped"));
    // The test harness prints its own lines first.
    let mut line = String::new();
    while !line.trim_end().ends_with("started") {
        line.clear();
        assert!(stdout.read_line(&mut line).expect("child output") > 0, "child ended before starting");
    }
    let pid = child.0.id();
    let mut largest = 0;
    // At least 60 frozen samples, and on until the flood has made the writer drop its oldest
    // file, then 20 more, so the record of that loss has been flushed (how long the flood takes
    // to fill the cap depends on the machine's load, not on the property checked).
    let mut samples = 0;
    let mut gone_at: Option<u32> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_micros(random_u64() % 30_000));
        signal(pid, "-STOP");
        wait_stopped(pid);
        let used = spool_bytes(&dir);
        largest = largest.max(used);
        assert!(used <= FLOOD_CAP, "spool holds {used} bytes, cap {FLOOD_CAP}");
        let first_gone = spool::list(&dir).ok().and_then(|l| l.closed.first().map(|f| f.seq > 0));
        signal(pid, "-CONT");
        samples += 1;
        if first_gone == Some(true) && gone_at.is_none() {
            gone_at = Some(samples);
        }
        let settled = gone_at.is_some_and(|g| samples >= g + 20);
        if samples >= 60 && (settled || Instant::now() > deadline) {
            break;
        }
    }
    child.0.kill().expect("SIGKILL");
    child.0.wait().expect("reaped");
    usage::recover(&dir).expect("recovery");
    let used = spool_bytes(&dir);
    assert!(used <= FLOOD_CAP);
    let l = spool::list(&dir).expect("list");
    let oldest = l.closed.first().expect("files").seq;
    println!(
        "{samples} frozen samples: largest spool {largest} bytes (cap {FLOOD_CAP}); oldest file left is #{oldest}"
    );
    assert!(oldest > 0, "the flood overflowed the cap, so the oldest files must have been dropped");
    assert!(largest > FLOOD_CAP / 2, "the flood never came near the cap ({largest} bytes)");
    // What was dropped is written down in the files that remain.
    let lines = closed_lines(&dir);
    let (_, losses) = split_kinds(&lines);
    assert!(loss_sum(&losses, "files_capped") > 0, "no usage_dropped record names the dropped files");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
