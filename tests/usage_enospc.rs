//! A full flash (ENOSPC on a small tmpfs) and a read-only one: the request path never blocks,
//! usage is dropped and counted (metrics and `usage_dropped` records), the writer does not spin
//! while it waits, and writing resumes when the flash takes writes again. Needs root to mount
//! the tmpfs; skipped with a message otherwise (a failure under CI). Alone in its binary, so the one writer thread
//! named `gatelet-usage-w` is this test's.

mod usage_util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gatelet::usage::{self, Spooler, Timestamp, UsageConfig, UsageEvent, spool};
use usage_util::*;

fn record_all(s: &Spooler, events: &[UsageEvent]) {
    let r = s.recorder();
    for e in events {
        // The test wants every event: wait for room instead of dropping.
        r.record_waiting(e.clone()).expect("spooler running");
    }
}

/// CPU time (clock ticks) used so far by the spooler's writer thread.
fn writer_cpu_ticks() -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").expect("/proc").filter_map(Result::ok) {
        if std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "gatelet-usage-w") {
            let stat = std::fs::read_to_string(t.path().join("stat")).expect("stat");
            let rest = stat.rsplit_once(')').expect("stat format").1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name.
            total += f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        }
    }
    total
}

fn sh(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).status().is_ok_and(|s| s.success())
}

/// Records events for `dur` at a steady pace, returning the next event number and how long each
/// `try_record` took.
fn record_for(s: &Spooler, from: u64, dur: Duration) -> (u64, Vec<Duration>) {
    let r = s.recorder();
    let end = Instant::now() + dur;
    let mut n = from;
    let mut took = Vec::new();
    while Instant::now() < end {
        let e = UsageEvent::synthetic(n, Timestamp::now());
        let t0 = Instant::now();
        let _ = r.try_record(e);
        took.push(t0.elapsed());
        n += 1;
        if n % 50 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    (n, took)
}

#[test]
fn full_or_read_only_flash_drops_and_recovers() {
    if !is_root() {
        cannot_run("full_or_read_only_flash_drops_and_recovers", "mounting a tmpfs needs root");
        return;
    }
    let mnt = tempdir("enospc");
    if !sh("mount", &["-t", "tmpfs", "-o", "size=192k", "tmpfs", mnt.to_str().expect("utf-8")]) {
        cannot_run("full_or_read_only_flash_drops_and_recovers", "mount -t tmpfs failed here");
        return;
    }
    let unmount = scopeguard(&mnt);
    let dir = mnt.join("spool");
    // The cap (1 MiB) is far above the file system's 192 KiB: the flash fills first.
    let cfg = UsageConfig {
        max_spool_bytes: 1024 * 1024,
        rotate_bytes: 32 * 1024,
        flush_interval_ms: 20,
        queue_capacity: 50_000,
        ..config(&dir)
    };
    let s = Spooler::start(&cfg).expect("starts");
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.metrics().snapshot().write_errors == 0 {
        assert!(Instant::now() < deadline, "the tmpfs never filled");
        n = record_for(&s, n, Duration::from_millis(100)).0;
    }
    // Full: the writer drops and counts, the request path does not notice.
    let (next, took) = record_for(&s, n, Duration::from_millis(500));
    n = next;
    let full = s.metrics().snapshot();
    assert_eq!(full.spool_writable, 0);
    assert!(full.events_dropped_write_failed > 0);
    assert_non_blocking(took, "while the flash is full");
    // Every file on the full flash is still whole (the torn .part is cut at the next start).
    for f in spool::list(&dir).expect("list").closed {
        zcat(&f.path);
    }
    // Space returns (an upload took the closed files): writing resumes within the retry period.
    // Loss records already in those files (a small member may fit while the flash is nearly
    // full) are counted before they go.
    let mut reported_before = 0;
    for f in spool::list(&dir).expect("list").closed {
        let text = zcat(&f.path);
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        reported_before += loss_sum(&split_kinds(&lines).1, "events_write_failed");
        std::fs::remove_file(f.path).expect("free space");
    }
    let resume = Instant::now() + usage::RETRY_AFTER_IO_ERROR + Duration::from_secs(10);
    while s.metrics().snapshot().spool_writable == 0 {
        assert!(Instant::now() < resume, "writing did not resume after space returned");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = s.metrics().snapshot();
    // About 30 KiB compressed: fits in the space freed.
    record_all(&s, &(n..n + 300).map(|i| UsageEvent::synthetic(i, Timestamp::now())).collect::<Vec<_>>());
    let next = n + 300;
    s.flush();
    let after = s.metrics().snapshot();
    assert_eq!(after.events_written - before.events_written, after.events_queued - before.events_queued);
    assert!(next > n);

    s.shutdown();
    let m = s.metrics().snapshot();
    // Everything on flash reads back, and the losses are written down as records.
    let lines = closed_lines(&dir);
    let (requests, losses) = split_kinds(&lines);
    assert!(!requests.is_empty());
    assert!(loss_sum(&losses, "events_write_failed") > 0, "the loss while full is in a record");
    assert_eq!(
        reported_before + loss_sum(&losses, "events_write_failed"),
        m.events_dropped_write_failed,
        "every loss since the first file left is recorded"
    );
    assert!(spool::list(&dir).expect("list").parts.is_empty());

    // A read-only flash (Linux refuses to remount while a file is open for writing, so the
    // gateway restarts on it, as after an ext4 errors=remount-ro at boot): the spooler starts,
    // drops and counts, and resumes once the flash is writable again.
    assert!(sh("mount", &["-o", "remount,ro", mnt.to_str().expect("utf-8")]), "remount ro");
    let s = Spooler::start(&cfg).expect("starts on a read-only flash");
    let (next2, took) = record_for(&s, next, Duration::from_millis(300));
    assert_non_blocking(took, "on a read-only flash");
    let ro = s.metrics().snapshot();
    assert!(ro.write_errors > 0 && ro.spool_writable == 0 && ro.events_dropped_write_failed > 0, "{ro:?}");
    // Waiting to retry costs no CPU: no spinning on a deadline in the past.
    let ticks = writer_cpu_ticks();
    std::thread::sleep(Duration::from_millis(1500));
    let spent = writer_cpu_ticks() - ticks;
    assert!(spent < 30, "the failing writer used {spent} clock ticks in 1.5 s of quiet");
    assert!(sh("mount", &["-o", "remount,rw", mnt.to_str().expect("utf-8")]), "remount rw");
    let resume = Instant::now() + usage::RETRY_AFTER_IO_ERROR + Duration::from_secs(10);
    while s.metrics().snapshot().spool_writable == 0 {
        assert!(Instant::now() < resume, "writing did not resume after the remount");
        std::thread::sleep(Duration::from_millis(100));
    }
    let files_before = spool::list(&dir).expect("list").closed.len();
    record_all(
        &s,
        &(next2..next2 + 100).map(|i| UsageEvent::synthetic(i, Timestamp::now())).collect::<Vec<_>>(),
    );
    s.shutdown();
    let m = s.metrics().snapshot();
    let l = spool::list(&dir).expect("list");
    assert_eq!(l.closed.len(), files_before + 1);
    let text = zcat(&l.closed[files_before].path);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let (requests, losses) = split_kinds(&lines);
    assert_eq!(requests.len(), 100);
    assert_eq!(loss_sum(&losses, "events_write_failed"), m.events_dropped_write_failed);
    drop(unmount);
}

/// Unmounts (and removes) the tmpfs when the test ends, passing or not.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scopeguard(p: &Path) -> Unmount {
    Unmount(p.to_owned())
}
