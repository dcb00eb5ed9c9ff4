//! The spool writer: one thread that owns the `.part` file. It drains the event queue into a gzip
//! member, appends the member and fsyncs once per flush, closes files by rename, keeps the spool
//! under its cap, and when the flash refuses a write, drops usage (counted) and retries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use flate2::Compression;

use super::Clock;
use super::config::UsageConfig;
use super::event::{Loss, LossRecord, UsageEvent};
use super::gzip::MemberEncoder;
use super::metrics::{UsageMetrics, add};
use super::spool::{self, PART_SUFFIX, SpoolFile};

/// A batch is flushed early once it holds this much uncompressed NDJSON (about 3,000 requests):
/// it bounds the writer's memory under a flood, and a member of ~100 KiB compressed is a
/// flash-friendly write.
pub const BATCH_MAX_BYTES: u64 = 1024 * 1024;
/// After the flash refused a write (full, read-only, I/O error), writing is retried this often:
/// soon enough that usage resumes promptly when space returns, rarely enough not to spin.
pub const RETRY_AFTER_IO_ERROR: Duration = Duration::from_secs(5);
/// The writer re-reads the directory this often, so the spool gauges and the cap see files the
/// uploader or an export removed.
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);
/// zlib level 4. Measured in one run (`cargo bench --bench usage`, synthetic records of ~590 bytes
/// in members of 1,000): against level 6, level 4 takes 0.49x the compressor's time for 1.07x the
/// flash (55 KB per 1,000 requests against 52 KB); level 2 takes 0.34x for 1.28x, level 1 0.16x for
/// 1.54x. Level 6's compressor was 8% of a proxied request's CPU (`bench/cost.sh` under perf); level
/// 4 halves that at little wear, while the faster levels would write a third to a half more to flash.
pub const COMPRESSION: u32 = 4;

/// While events arrive, the writer looks at the queue this often; each look that finds nothing
/// doubles the wait, up to [`POLL_IDLE`]. Senders never wake it per event (a wake costs the
/// request path a system call): only control messages and a queue filling past
/// [`WriterWake`]'s threshold do.
const POLL_ACTIVE: Duration = Duration::from_millis(20);
const POLL_IDLE: Duration = Duration::from_secs(1);
/// Events taken between looks at the flush and rotation deadlines while the queue stays full.
const MAINTAIN_EVERY: usize = 64;

/// How senders reach a writer that sleeps between looks at the queue.
#[derive(Debug)]
pub(crate) struct WriterWake {
    thread: OnceLock<Thread>,
    /// Events sent and not yet taken.
    pending: AtomicUsize,
    /// A sender that brings `pending` to this wakes the writer (an eighth of the queue, so a
    /// burst after a quiet spell is taken long before the queue is full).
    threshold: usize,
}

impl WriterWake {
    pub(crate) fn new(queue_capacity: usize) -> WriterWake {
        WriterWake {
            thread: OnceLock::new(),
            pending: AtomicUsize::new(0),
            threshold: (queue_capacity / 8).max(1),
        }
    }

    pub(crate) fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Before an event is sent.
    pub(crate) fn sending(&self) {
        if self.pending.fetch_add(1, Ordering::Relaxed) + 1 == self.threshold {
            self.unpark();
        }
    }

    /// The send failed: the event never reached the queue.
    pub(crate) fn not_sent(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// The writer took `n` events off the queue (counted in batches: the request path's
    /// threads write this counter too, and a write per event would bounce its cache line).
    fn taken(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
    }
}

/// What the queue carries to the writer.
#[derive(Debug)]
pub(crate) enum Msg {
    Event(Box<UsageEvent>),
    /// Flush the batch (and close the `.part` when `close`), then acknowledge.
    Flush {
        close: bool,
        done: SyncSender<()>,
    },
    /// Flush, close the `.part`, acknowledge and exit.
    Shutdown {
        done: SyncSender<()>,
    },
}

#[derive(Debug)]
struct Part {
    file: File,
    path: PathBuf,
    name: String,
    seq: u64,
    len: u64,
    opened_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Writable,
    /// Usage is dropped until `retry_at`, when recovery and writing are tried again.
    Failed {
        retry_at: Instant,
    },
}

enum AppendError {
    /// The member alone is larger than the cap allows, even with every closed file gone.
    NoRoom,
    Io(io::Error),
}

impl From<io::Error> for AppendError {
    fn from(e: io::Error) -> Self {
        AppendError::Io(e)
    }
}

pub(crate) struct Writer {
    dir: PathBuf,
    cfg: UsageConfig,
    device_id: Arc<str>,
    clock: Clock,
    metrics: Arc<UsageMetrics>,
    /// Wakes the uploader when the closed files pass half the cap.
    wake_uploader: Option<smol::channel::Sender<()>>,
    enc: MemberEncoder,
    batch_events: u64,
    /// When the oldest unflushed event (or unreported loss) arrived: the flush deadline's start.
    batch_since: Option<Instant>,
    line: Vec<u8>,
    part: Option<Part>,
    /// Closed files as of the last look, oldest first; only ever larger than the truth (the
    /// uploader and exports only remove, or rename a closed file to `.rejected`, which the
    /// stale view still counts under its old name), so the cap it enforces is never exceeded.
    closed: Vec<SpoolFile>,
    closed_bytes: u64,
    /// Files set aside after a refusal for good, as of the last look: counted against the cap,
    /// and the first to go when it needs room (they leave only by export).
    rejected: Vec<SpoolFile>,
    rejected_bytes: u64,
    last_rescan: Instant,
    next_seq: u64,
    health: Health,
    /// When the current run of write failures began (logged once, cleared by the next append
    /// that succeeds).
    failing_since: Option<Instant>,
    /// Losses not yet written in a `usage_dropped` record.
    pending: Loss,
    /// The queue-full counter as of the last `usage_dropped` record written.
    queue_full_reported: u64,
    last_serial: Option<u64>,
}

impl Writer {
    pub(crate) fn new(
        cfg: UsageConfig,
        device_id: Arc<str>,
        clock: Clock,
        metrics: Arc<UsageMetrics>,
        wake_uploader: Option<smol::channel::Sender<()>>,
    ) -> Writer {
        let now = Instant::now();
        Writer {
            dir: cfg.spool_dir.clone(),
            cfg,
            device_id,
            clock,
            metrics,
            wake_uploader,
            enc: MemberEncoder::new(Compression::new(COMPRESSION)),
            batch_events: 0,
            batch_since: None,
            line: Vec::with_capacity(1024),
            part: None,
            closed: Vec::new(),
            closed_bytes: 0,
            rejected: Vec::new(),
            rejected_bytes: 0,
            last_rescan: now,
            next_seq: 0,
            health: Health::Failed { retry_at: now },
            failing_since: None,
            pending: Loss::default(),
            queue_full_reported: 0,
            last_serial: None,
        }
    }

    /// The thread's body: start-up recovery, then events until shutdown.
    pub(crate) fn run(mut self, rx: Receiver<Msg>, wake: &WriterWake) {
        let _ = wake.thread.set(std::thread::current());
        self.start_up(Instant::now());
        let mut quiet_looks = 0u32;
        loop {
            let mut taken = 0usize;
            loop {
                match rx.try_recv() {
                    Ok(Msg::Event(e)) => {
                        taken += 1;
                        self.on_event(&e);
                    }
                    Ok(Msg::Flush { close, done }) => {
                        self.flush(Instant::now());
                        if close {
                            self.close_or_fail(Instant::now());
                        }
                        let _ = done.send(());
                    }
                    Ok(Msg::Shutdown { done }) => {
                        self.shut_down();
                        let _ = done.send(());
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.shut_down();
                        return;
                    }
                }
                // Flushes fall due while a flood keeps the queue full: look at the clock often.
                if taken % MAINTAIN_EVERY == 0 && taken > 0 {
                    wake.taken(MAINTAIN_EVERY);
                    self.maintain(Instant::now());
                }
            }
            wake.taken(taken % MAINTAIN_EVERY);
            let now = Instant::now();
            self.maintain(now);
            if taken > 0 {
                // Events came while this look drained the queue: look again at once, so a flood
                // keeps the writer busy rather than parked.
                quiet_looks = 0;
                continue;
            }
            quiet_looks = quiet_looks.saturating_add(1).min(16);
            let poll = POLL_ACTIVE.saturating_mul(1 << (quiet_looks - 1).min(6)).min(POLL_IDLE);
            let wait = self.next_deadline(now).saturating_duration_since(now).min(poll);
            if !wait.is_zero() {
                std::thread::park_timeout(wait);
            }
        }
    }

    fn shut_down(&mut self) {
        let now = Instant::now();
        self.flush(now);
        self.close_or_fail(now);
        self.update_gauges();
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        // While failing, events are dropped as they arrive; the only timer is the retry.
        if let Health::Failed { retry_at } = self.health {
            return retry_at;
        }
        let mut d = (self.last_rescan + RESCAN_INTERVAL).max(now);
        if let Some(since) = self.batch_since {
            d = d.min(since + self.cfg.flush_interval());
        }
        if let Some(p) = &self.part {
            d = d.min(p.opened_at + self.cfg.rotate_interval());
        }
        d
    }

    /// Creates the directory, recovers `.part` files, lists the spool and enforces the cap. On
    /// failure usage is dropped until the next retry.
    fn start_up(&mut self, now: Instant) {
        let result = (|| -> io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let r = spool::recover(&self.dir)?;
            if r.closed + r.removed > 0 {
                log::info!(
                    "usage: recovered {} .part file(s) ({} lines kept, {} torn bytes cut), removed {} empty",
                    r.closed,
                    r.lines,
                    r.truncated_bytes,
                    r.removed
                );
            }
            self.rescan(now)?;
            match self.make_room(0) {
                Ok(_) => Ok(()),
                Err(AppendError::Io(e)) => Err(e),
                Err(AppendError::NoRoom) => Ok(()),
            }
        })();
        match result {
            Ok(()) => {
                self.health = Health::Writable;
                if self.unreported().0.is_empty() {
                    self.mark_writable(now);
                } else {
                    // The losses are written down at the next flush, events or not; that append
                    // tells whether the flash takes writes again.
                    self.batch_since.get_or_insert(now);
                }
            }
            Err(e) => self.fail(&e, now),
        }
        self.update_gauges();
    }

    fn mark_writable(&mut self, now: Instant) {
        if let Some(since) = self.failing_since.take() {
            log::info!(
                "usage: spool {} writable again after {}s",
                self.dir.display(),
                now.saturating_duration_since(since).as_secs()
            );
        }
        self.metrics.spool_writable.store(1, Ordering::Relaxed);
    }

    fn fail(&mut self, e: &io::Error, now: Instant) {
        add(&self.metrics.write_errors, 1);
        self.metrics.spool_writable.store(0, Ordering::Relaxed);
        if self.failing_since.is_none() {
            self.failing_since = Some(now);
            log::error!(
                "usage: spool {}: {e}; dropping usage (counted) and retrying every {}s",
                self.dir.display(),
                RETRY_AFTER_IO_ERROR.as_secs()
            );
        }
        // The .part, if any, is left as it is: recovery cuts it to its last verified member.
        self.part = None;
        if self.batch_events > 0 {
            self.pending.events_write_failed += self.batch_events;
            add(&self.metrics.events_dropped_write_failed, self.batch_events);
            self.batch_events = 0;
        }
        self.batch_since = None;
        self.enc.discard();
        self.health = Health::Failed { retry_at: now + RETRY_AFTER_IO_ERROR };
    }

    fn on_event(&mut self, e: &UsageEvent) {
        self.last_serial = Some(e.bundle_serial);
        if self.health != Health::Writable {
            self.pending.events_write_failed += 1;
            add(&self.metrics.events_dropped_write_failed, 1);
            return;
        }
        self.line.clear();
        e.write_line(&self.device_id, &mut self.line);
        if let Err(e) = self.enc.write(&self.line) {
            self.drop_batch_failed(&e);
            return;
        }
        self.batch_events += 1;
        // The clock is read when a batch starts, not per event: the flush deadline runs from
        // the batch's first event, and the periodic look (`maintain`) reads it anyway.
        if self.batch_since.is_none() {
            self.batch_since = Some(Instant::now());
        }
        // Never more uncompressed than `rotate_bytes` either, so a member is at most about a
        // file's size and always fits under the cap (validated: rotate_bytes <= half of it).
        if self.enc.input_bytes() >= BATCH_MAX_BYTES.min(self.cfg.rotate_bytes) {
            self.flush(Instant::now());
        }
    }

    /// The compressor itself failed (it writes to memory: practically never). The batch is lost.
    fn drop_batch_failed(&mut self, e: &io::Error) {
        log::error!("usage: compressor failed: {e}");
        self.enc.discard();
        self.pending.events_write_failed += self.batch_events;
        add(&self.metrics.events_dropped_write_failed, self.batch_events);
        self.batch_events = 0;
        self.batch_since = None;
    }

    /// Unreported losses, including queue drops counted by the request path since the last record.
    fn unreported(&self) -> (Loss, u64) {
        let queue_full = self.metrics.events_dropped_queue_full.load(Ordering::Relaxed);
        let mut loss = self.pending;
        loss.events_queue_full += queue_full.saturating_sub(self.queue_full_reported);
        (loss, queue_full)
    }

    fn maintain(&mut self, now: Instant) {
        if let Health::Failed { retry_at } = self.health {
            if now < retry_at {
                return;
            }
            self.start_up(now);
            if self.health != Health::Writable {
                return;
            }
        }
        let (loss, _) = self.unreported();
        if !loss.is_empty() {
            self.batch_since.get_or_insert(now);
        }
        if self.batch_since.is_some_and(|since| now >= since + self.cfg.flush_interval()) {
            self.flush(now);
        }
        if self.part.as_ref().is_some_and(|p| now >= p.opened_at + self.cfg.rotate_interval()) {
            self.flush(now);
            self.close_or_fail(now);
        }
        if now >= self.last_rescan + RESCAN_INTERVAL {
            if let Err(e) = self.rescan(now) {
                log::warn!("usage: cannot list spool {}: {e}", self.dir.display());
                self.last_rescan = now;
            }
            self.update_gauges();
        }
    }

    /// Appends the batch (and a `usage_dropped` record when something was lost) as one gzip
    /// member, fsyncs it, and closes the file when it reached `rotate_bytes`.
    fn flush(&mut self, now: Instant) {
        let (loss, queue_full) = self.unreported();
        if self.batch_events == 0 && loss.is_empty() {
            self.batch_since = None;
            return;
        }
        if self.health != Health::Writable {
            return;
        }
        if !loss.is_empty() {
            self.line.clear();
            let record = LossRecord {
                kind: "usage_dropped",
                ts: (self.clock)(),
                device_id: &self.device_id,
                bundle_serial: self.last_serial,
                loss,
            };
            if serde_json::to_writer(&mut self.line, &record).is_ok() {
                self.line.push(b'\n');
                if let Err(e) = self.enc.write(&self.line) {
                    self.drop_batch_failed(&e);
                    return;
                }
            }
        }
        let member = match self.enc.finish() {
            Ok(m) => m,
            Err(e) => {
                self.drop_batch_failed(&e);
                return;
            }
        };
        let events = self.batch_events;
        self.batch_events = 0;
        self.batch_since = None;
        match self.append(&member, now) {
            Ok(()) => {
                self.mark_writable(now);
                add(&self.metrics.events_written, events);
                add(&self.metrics.bytes_written, member.len() as u64);
                add(&self.metrics.members_written, 1);
                // The record written covered everything up to `loss`; losses noted since (cap
                // drops made while appending) stay pending for the next member.
                self.pending = subtract(self.pending, loss);
                self.queue_full_reported = queue_full;
                if self.part.as_ref().is_some_and(|p| p.len >= self.cfg.rotate_bytes) {
                    self.close_or_fail(now);
                }
            }
            Err(AppendError::NoRoom) => {
                self.pending.events_capped += events;
                add(&self.metrics.events_dropped_cap, events);
            }
            Err(AppendError::Io(e)) => {
                self.pending.events_write_failed += events;
                add(&self.metrics.events_dropped_write_failed, events);
                self.fail(&e, now);
            }
        }
        self.update_gauges();
    }

    fn append(&mut self, member: &[u8], now: Instant) -> Result<(), AppendError> {
        let m = member.len() as u64;
        if !self.make_room(m)? {
            return Err(AppendError::NoRoom);
        }
        if self.part.is_none() {
            self.open_part(now)?;
        }
        let Some(part) = self.part.as_mut() else {
            return Err(AppendError::Io(io::Error::other("no open .part")));
        };
        part.file.write_all(member)?;
        // fdatasync: the data and the size needed to read it back, not the timestamps.
        part.file.sync_data()?;
        part.len += m;
        Ok(())
    }

    fn open_part(&mut self, now: Instant) -> io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let name = spool::closed_name((self.clock)(), seq);
        let path = self.dir.join(format!("{name}{PART_SUFFIX}"));
        let file = OpenOptions::new().append(true).create_new(true).open(&path)?;
        // The new name must survive a power cut as well as the data appended to it.
        spool::fsync_dir(&self.dir)?;
        self.part = Some(Part { file, path, name, seq, len: 0, opened_at: now });
        Ok(())
    }

    fn close_or_fail(&mut self, now: Instant) {
        if let Err(e) = self.close_part() {
            self.fail(&e, now);
        }
    }

    /// Renames the `.part` to its closed name. Its members were fsynced when appended.
    fn close_part(&mut self) -> io::Result<()> {
        let Some(part) = self.part.take() else { return Ok(()) };
        drop(part.file);
        if part.len == 0 {
            return spool::remove_if_present(&part.path).map(|_| ());
        }
        let mut name = part.name;
        if self.dir.join(&name).exists() {
            // Never overwrite a closed file (only a hand-made copy could be there).
            name = spool::closed_name((self.clock)(), self.next_seq);
            self.next_seq += 1;
        }
        let path = self.dir.join(&name);
        fs::rename(&part.path, &path)?;
        spool::fsync_dir(&self.dir)?;
        self.closed_bytes += part.len;
        self.closed.push(SpoolFile { name, path, seq: part.seq, len: part.len });
        add(&self.metrics.files_closed, 1);
        self.update_gauges();
        if self.closed_bytes >= self.cfg.max_spool_bytes / 2 {
            if let Some(w) = &self.wake_uploader {
                let _ = w.try_send(());
            }
        }
        Ok(())
    }

    fn rescan(&mut self, now: Instant) -> io::Result<()> {
        let listing = spool::list(&self.dir)?;
        self.next_seq = self.next_seq.max(listing.max_seq.map_or(0, |s| s.saturating_add(1)));
        self.closed_bytes = listing.closed_bytes();
        self.rejected_bytes = listing.rejected_bytes();
        self.closed = listing.closed;
        self.rejected = listing.rejected;
        self.last_rescan = now;
        Ok(())
    }

    /// Makes room for `m` more bytes under the cap: deletes set-aside files, then the oldest
    /// closed files, and closes the `.part` so that it can go too when nothing else is left.
    /// `Ok(false)`: `m` alone is too large.
    fn make_room(&mut self, m: u64) -> Result<bool, AppendError> {
        let max = self.cfg.max_spool_bytes;
        let used = |w: &Writer| w.closed_bytes + w.rejected_bytes + w.part.as_ref().map_or(0, |p| p.len);
        if used(self) + m <= max {
            return Ok(true);
        }
        self.rescan(Instant::now())?;
        while used(self) + m > max {
            // Set-aside files first: the collector will not take them, the others it may.
            let victim = if !self.rejected.is_empty() {
                let oldest = self.rejected.remove(0);
                self.rejected_bytes -= oldest.len;
                Some(oldest)
            } else if !self.closed.is_empty() {
                let oldest = self.closed.remove(0);
                self.closed_bytes -= oldest.len;
                Some(oldest)
            } else {
                None
            };
            if let Some(oldest) = victim {
                let loss = spool::drop_for_cap(&oldest)?;
                add(&self.metrics.events_dropped_cap, loss.events_capped);
                add(&self.metrics.files_dropped_cap, loss.files_capped);
                add(&self.metrics.bytes_dropped_cap, loss.bytes_capped);
                self.pending.add(&loss);
            } else if self.part.is_some() {
                self.close_part()?;
            } else {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn update_gauges(&self) {
        let part = self.part.as_ref().map_or(0, |p| p.len);
        self.metrics.spool_bytes.store(self.closed_bytes + self.rejected_bytes + part, Ordering::Relaxed);
        self.metrics.spool_files.store(self.closed.len() as u64, Ordering::Relaxed);
        self.metrics.spool_rejected_files.store(self.rejected.len() as u64, Ordering::Relaxed);
    }
}

fn subtract(a: Loss, b: Loss) -> Loss {
    Loss {
        events_queue_full: a.events_queue_full.saturating_sub(b.events_queue_full),
        events_write_failed: a.events_write_failed.saturating_sub(b.events_write_failed),
        events_capped: a.events_capped.saturating_sub(b.events_capped),
        files_capped: a.files_capped.saturating_sub(b.files_capped),
        bytes_capped: a.bytes_capped.saturating_sub(b.bytes_capped),
    }
}
