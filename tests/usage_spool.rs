//! The usage spooler end to end on real files: events in, gzip NDJSON out (read back with the
//! system's `zcat`), rotation, recovery of a `.part` cut at every byte, loss records, and
//! `gatelet usage export`. A full or read-only flash: `tests/usage_enospc.rs`.

mod usage_util;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
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

fn events(range: std::ops::Range<u64>) -> Vec<UsageEvent> {
    range.map(|n| UsageEvent::synthetic(n, Timestamp(1_795_896_000_000 + n))).collect()
}

#[test]
fn events_in_are_exactly_the_lines_out() {
    let dir = tempdir("exact");
    let cfg = UsageConfig { queue_capacity: 10_000, ..config(&dir) };
    let s = Spooler::start(&cfg).expect("starts");
    let evs = events(0..5000);
    record_all(&s, &evs);
    s.shutdown();
    let listing = spool::list(&dir).expect("list");
    assert!(listing.parts.is_empty(), "shutdown leaves no .part");
    assert!(listing.closed.len() >= 3, "8 KiB files: several rotations ({})", listing.closed.len());
    for f in &listing.closed {
        // A file is closed once it reaches rotate_bytes; the last member may take it past.
        assert!(f.len < cfg.rotate_bytes * 2, "{} is {} bytes", f.name, f.len);
    }
    let lines = closed_lines(&dir);
    let (requests, losses) = split_kinds(&lines);
    assert!(losses.is_empty(), "nothing was lost: {losses:?}");
    assert_eq!(requests.len(), evs.len());
    for (line, e) in requests.iter().zip(&evs) {
        assert_eq!(**line, expected_line(e, "test-device"));
    }
    let m = s.metrics().snapshot();
    assert_eq!((m.events_queued, m.events_written, m.events_dropped_queue_full), (5000, 5000, 0));
    assert_eq!(m.files_closed, listing.closed.len() as u64);
    assert_eq!(m.bytes_written, listing.closed_bytes());
    assert_eq!(m.spool_writable, 1);
    assert_eq!(s.try_record(evs[0].clone()), Err(usage::Dropped::ShutDown));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn files_close_by_age_and_flushes_are_timely() {
    let dir = tempdir("age");
    let cfg = UsageConfig { rotate_interval_s: 1, flush_interval_ms: 100, ..config(&dir) };
    let s = Spooler::start(&cfg).expect("starts");
    record_all(&s, &events(0..10));
    // Within a flush interval (and some scheduling slack) the events are on flash in the .part,
    // long before the file closes by age.
    let flushed = Instant::now() + Duration::from_millis(900);
    while s.metrics().snapshot().events_written < 10 {
        assert!(Instant::now() < flushed, "events not flushed within 9 flush intervals");
        std::thread::sleep(Duration::from_millis(10));
    }
    let l = spool::list(&dir).expect("list");
    assert_eq!((l.parts.len(), l.closed.len()), (1, 0));
    // Past rotate_interval_s the .part is closed even though no more events came.
    let deadline = Instant::now() + Duration::from_secs(5);
    while spool::list(&dir).expect("list").closed.is_empty() {
        assert!(Instant::now() < deadline, "the file was not closed by age");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(spool::list(&dir).expect("list").parts.is_empty());
    assert_eq!(split_kinds(&closed_lines(&dir)).0.len(), 10);
    drop(s);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Builds a .part of three members (the spooler's own), returning its bytes and the offsets
/// where each member ends (measured from the file's length after each flush, not by parsing).
fn three_member_part(dir: &Path) -> (Vec<u8>, Vec<usize>, Vec<UsageEvent>) {
    let s = Spooler::start(&config(dir)).expect("starts");
    let evs = events(100..130);
    let mut ends = Vec::new();
    for chunk in evs.chunks(10) {
        record_all(&s, chunk);
        s.flush();
        let part = spool::list(dir).expect("list").parts.pop().expect("a .part");
        ends.push(usize::try_from(part.len).expect("small"));
    }
    let part = spool::list(dir).expect("list").parts.pop().expect("a .part");
    let bytes = std::fs::read(&part.path).expect("read .part");
    s.shutdown();
    (bytes, ends, evs)
}

#[test]
fn a_part_cut_anywhere_recovers_every_complete_member() {
    let dir = tempdir("cut-src");
    let (bytes, ends, evs) = three_member_part(&dir);
    assert_eq!(ends.len(), 3);
    assert_eq!(*ends.last().expect("3"), bytes.len());
    let work = tempdir("cut");
    let name = format!("{}.part", spool::closed_name(Timestamp(0), 7));
    for cut in 0..=bytes.len() {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("mkdir");
        std::fs::write(work.join(&name), &bytes[..cut]).expect("write cut .part");
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        let r = usage::recover(&work).expect("recovery");
        let l = spool::list(&work).expect("list");
        assert!(l.parts.is_empty(), "cut {cut}: a .part is left");
        if complete == 0 {
            assert_eq!((r.removed, l.closed.len()), (1, 0), "cut {cut}");
            continue;
        }
        assert_eq!((r.closed, l.closed.len()), (1, 1), "cut {cut}");
        let kept = ends[complete - 1];
        assert_eq!(l.closed[0].len, kept as u64, "cut {cut}: truncated to the last complete member");
        assert_eq!(r.truncated_bytes, (cut - kept) as u64);
        // flate2 reads every cut; the system's zcat (a process per call) a sample of them and
        // every cut at or next to a member boundary.
        let near_boundary = ends.iter().any(|&e| e.abs_diff(cut) <= 1);
        let lines: Vec<String> = if near_boundary || cut % 61 == 0 {
            closed_lines(&work)
        } else {
            gunzip(&l.closed[0].path).lines().map(str::to_owned).collect()
        };
        let want: Vec<String> =
            evs[..complete * 10].iter().map(|e| expected_line(e, "test-device")).collect();
        assert_eq!(lines, want, "cut {cut}");
    }
    // A flipped byte inside the last member: that member is cut, the others stay.
    let mut corrupt = bytes.clone();
    corrupt[ends[1] + (ends[2] - ends[1]) / 2] ^= 0x40;
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("mkdir");
    std::fs::write(work.join(&name), &corrupt).expect("write");
    usage::recover(&work).expect("recovery");
    assert_eq!(closed_lines(&work).len(), 20);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    std::fs::remove_dir_all(&work).expect("cleanup");
}

#[test]
fn start_up_recovers_a_torn_part_and_numbers_after_it() {
    let dir = tempdir("restart");
    let (bytes, ends, evs) = three_member_part(&dir);
    for f in spool::list(&dir).expect("list").closed {
        std::fs::remove_file(f.path).expect("clear");
    }
    // A crash mid-append: two members and half of the third, plus a junk tail.
    let mut torn = bytes[..ends[1] + 5].to_vec();
    torn.extend([0u8; 64]);
    std::fs::write(dir.join(format!("{}.part", spool::closed_name(Timestamp(0), 41))), &torn).expect("write");
    let s = Spooler::start(&config(&dir)).expect("starts");
    record_all(&s, &events(500..505));
    s.shutdown();
    let l = spool::list(&dir).expect("list");
    assert_eq!(l.closed.iter().map(|f| f.seq).collect::<Vec<_>>(), [41, 42]);
    let lines = closed_lines(&dir);
    let mut want: Vec<String> = evs[..20].iter().map(|e| expected_line(e, "test-device")).collect();
    want.extend(events(500..505).iter().map(|e| expected_line(e, "test-device")));
    assert_eq!(lines, want);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_full_queue_drops_counts_and_reports() {
    let dir = tempdir("queue");
    let cfg = UsageConfig { queue_capacity: 4, ..config(&dir) };
    let s = Arc::new(Spooler::start(&cfg).expect("starts"));
    let mut producers = Vec::new();
    for t in 0..4u64 {
        let r = s.recorder();
        producers.push(std::thread::spawn(move || {
            let mut took = Vec::with_capacity(20_000);
            for n in 0..20_000 {
                let e = UsageEvent::synthetic(t * 1_000_000 + n, Timestamp::now());
                let t0 = Instant::now();
                let _ = r.try_record(e);
                took.push(t0.elapsed());
            }
            took
        }));
    }
    let took: Vec<Duration> = producers.into_iter().flat_map(|p| p.join().expect("producer")).collect();
    s.shutdown();
    let m = s.metrics().snapshot();
    assert_eq!(m.events_queued + m.events_dropped_queue_full, 80_000);
    assert!(m.events_dropped_queue_full > 0, "a 4-slot queue under 4 busy producers drops");
    let lines = closed_lines(&dir);
    let (requests, losses) = split_kinds(&lines);
    assert_eq!(requests.len() as u64, m.events_queued);
    assert_eq!(requests.len() as u64, m.events_written);
    assert_eq!(
        loss_sum(&losses, "events_queue_full"),
        m.events_dropped_queue_full,
        "every drop is in a record"
    );
    for l in &losses {
        assert_eq!(l["device_id"], "test-device");
        assert_eq!(l["bundle_serial"], 17);
    }
    // The drops show try_record did not wait for room.
    assert_non_blocking(took, "with a full queue");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

fn gatelet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gatelet"))
        .args(args)
        .env_remove("GATELET_USAGE_SPOOL_DIR")
        .output()
        .expect("gatelet runs")
}

#[test]
fn export_moves_closed_files_and_leaves_parts() {
    let dir = tempdir("export-spool");
    let to = tempdir("export-to").join("stick");
    let s = Spooler::start(&config(&dir)).expect("starts");
    record_all(&s, &events(0..2000));
    s.close_current_file();
    record_all(&s, &events(2000..2010));
    s.flush();
    let before = spool::list(&dir).expect("list");
    assert_eq!(before.parts.len(), 1, "the writer's current file");
    let originals: Vec<(String, Vec<u8>)> =
        before.closed.iter().map(|f| (f.name.clone(), std::fs::read(&f.path).expect("read"))).collect();
    let out = gatelet(&[
        "usage",
        "export",
        "--to",
        to.to_str().expect("utf-8"),
        "--spool-dir",
        dir.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("moved {} usage file(s)", originals.len())), "{stdout}");
    for (name, bytes) in &originals {
        assert_eq!(&std::fs::read(to.join(name)).expect("exported"), bytes, "{name} moved as it was");
        assert!(!dir.join(name).exists(), "{name} still in the spool");
    }
    let after = spool::list(&dir).expect("list");
    assert_eq!((after.closed.len(), after.parts.len()), (0, 1), "the .part is the writer's");
    assert!(
        std::fs::read_dir(&to).expect("ls").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .starts_with('.'))
    );

    // The rest, after shutdown, through --config's [usage] spool_dir.
    s.shutdown();
    let conf = dir.with_extension("toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[usage]\nspool_dir = {:?}\n",
            dir.to_str().expect("utf-8")
        ),
    )
    .expect("write config");
    let out = gatelet(&[
        "usage",
        "export",
        "--to",
        to.to_str().expect("utf-8"),
        "--config",
        conf.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(spool::list(&dir).expect("list").closed.is_empty());
    let mut all = Vec::new();
    for f in spool::list(&to).expect("list").closed {
        all.extend(zcat(&f.path).lines().map(str::to_owned));
    }
    let want: Vec<String> = events(0..2010).iter().map(|e| expected_line(e, "test-device")).collect();
    assert_eq!(all, want);

    // A different file of the same name at the destination is never overwritten.
    let s = Spooler::start(&config(&dir)).expect("starts");
    record_all(&s, &events(0..3));
    s.shutdown();
    let mine = spool::list(&dir).expect("list").closed.pop().expect("one file");
    std::fs::write(to.join(&mine.name), b"another device's file").expect("write");
    let out = gatelet(&[
        "usage",
        "export",
        "--to",
        to.to_str().expect("utf-8"),
        "--spool-dir",
        dir.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&mine.name));
    assert!(mine.path.exists(), "the conflicting file stays in the spool");
    // A bad config is named.
    std::fs::write(&conf, "[usage]\nspool_dri = \"/x\"\n").expect("write config");
    let out = gatelet(&[
        "usage",
        "export",
        "--to",
        to.to_str().expect("utf-8"),
        "--config",
        conf.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spool_dri"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
    std::fs::remove_dir_all(to.parent().expect("parent")).expect("cleanup");
    std::fs::remove_file(conf).expect("cleanup");
}
