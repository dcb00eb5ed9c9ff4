//! Usage: one record per request, spooled to flash as gzip NDJSON and uploaded or exported.
//!
//! ```text
//!  request path ──try_record──► bounded queue (full: drop + count, never wait)
//!      ──► writer thread: batch ──every flush_interval_ms──► one gzip member appended to
//!          usage-<time>-<seq>.ndjson.gz.part + fdatasync ──rotate_bytes / rotate_interval_s──►
//!          rename to usage-<time>-<seq>.ndjson.gz + fsync(dir)
//!      ──► uploader thread: POST each closed file as it is, delete after a 2xx status line,
//!          set aside as `.rejected` after a 4xx that blames the file, back off on anything
//!          else   (or `gatelet usage export --to DIR`: copy, fsync, delete)
//! ```
//!
//! - **Power cuts**: a file is a sequence of complete gzip members, each fsynced when appended,
//!   so a cut loses at most the batch in memory (`flush_interval_ms`). At start-up [`recover`]
//!   cuts a `.part` back to its last member that verifies (CRC-32, ISIZE) and closes it.
//! - **Flash wear**: append-only, one write and one fdatasync per flush, one rename per file; no
//!   per-event open/close, no rewrite.
//! - **Cap**: the spool never holds more than `max_spool_bytes` (set-aside `.rejected` files
//!   included); set-aside files go first, then the oldest closed files; the loss is counted in
//!   [`UsageMetrics`] and written as a `usage_dropped` record (see [`event`]) into the next
//!   member.
//! - **Full or read-only flash**: usage is dropped and counted, the request path never notices,
//!   and writing is retried every [`writer::RETRY_AFTER_IO_ERROR`].
//!
//! The data plane starts a [`Spooler`] from the `[usage]` section, hands a [`UsageRecorder`] to
//! its request handlers, reads [`Spooler::metrics`] in `/metrics`, and calls
//! [`Spooler::shutdown`] on SIGTERM.

pub mod config;
pub mod event;
pub mod export;
pub mod gzip;
pub mod metrics;
pub mod spool;
pub mod upload;
mod writer;

use std::fmt;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

pub use config::UsageConfig;
pub use event::{ApiLabels, Loss, Timestamp, UsageEvent, method_label};
pub use export::{ExportReport, export};
pub use metrics::{MetricsSnapshot, UsageMetrics};
pub use spool::{Recovery, recover};
pub use writer::{BATCH_MAX_BYTES, COMPRESSION, RETRY_AFTER_IO_ERROR};

use metrics::add;
use writer::{Msg, Writer, WriterWake};

/// The wall clock used for file names and `usage_dropped` records. The data plane passes its
/// floor-corrected clock; [`Spooler::start`] uses the system clock.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Why the usage pipeline refused or failed.
#[derive(Debug)]
pub enum UsageError {
    /// A `[usage]` value is invalid: the device configuration's author.
    Config(String),
    /// A file operation failed (export, start-up): the device, or the export's destination.
    Io(String, std::io::Error),
    /// A thread could not be started: the device (out of memory or thread limit).
    Spawn(std::io::Error),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::Config(m) => f.write_str(m),
            UsageError::Io(what, e) => write!(f, "{what}: {e}"),
            UsageError::Spawn(e) => write!(f, "cannot start the usage threads: {e}"),
        }
    }
}

impl std::error::Error for UsageError {}

/// Why an event was not queued. Either way it is counted in
/// [`UsageMetrics::events_dropped_queue_full`] and reported in the next `usage_dropped` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The writer is behind by `queue_capacity` events.
    QueueFull,
    /// The spooler was shut down.
    ShutDown,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dropped::QueueFull => "usage queue full",
            Dropped::ShutDown => "usage spooler shut down",
        })
    }
}

/// The request path's handle: cheap to clone, never blocks, never grows memory past the queue.
#[derive(Clone)]
pub struct UsageRecorder {
    tx: SyncSender<Msg>,
    metrics: Arc<UsageMetrics>,
    wake: Arc<WriterWake>,
}

impl fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorder").finish_non_exhaustive()
    }
}

impl UsageRecorder {
    /// Queues one event for the writer; when the queue is full the event is dropped and counted.
    pub fn try_record(&self, event: UsageEvent) -> Result<(), Dropped> {
        self.wake.sending();
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {
                add(&self.metrics.events_queued, 1);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.wake.not_sent();
                add(&self.metrics.events_dropped_queue_full, 1);
                Err(Dropped::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.wake.not_sent();
                add(&self.metrics.events_dropped_queue_full, 1);
                Err(Dropped::ShutDown)
            }
        }
    }

    /// Queues one event, waiting for room when the queue is full. For tools, benchmarks and
    /// tests that want every event; never on the request path, which must not wait.
    pub fn record_waiting(&self, event: UsageEvent) -> Result<(), Dropped> {
        self.wake.sending();
        match self.tx.send(Msg::Event(Box::new(event))) {
            Ok(()) => {
                add(&self.metrics.events_queued, 1);
                Ok(())
            }
            Err(_) => {
                self.wake.not_sent();
                add(&self.metrics.events_dropped_queue_full, 1);
                Err(Dropped::ShutDown)
            }
        }
    }
}

struct Threads {
    writer: JoinHandle<()>,
    uploader: Option<(JoinHandle<()>, smol::channel::Sender<()>)>,
}

/// The running usage pipeline: the writer thread and, when `upload_url` is set, the uploader.
pub struct Spooler {
    recorder: UsageRecorder,
    metrics: Arc<UsageMetrics>,
    device_id: Arc<str>,
    threads: Mutex<Option<Threads>>,
}

impl fmt::Debug for Spooler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spooler").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

impl Spooler {
    /// Starts the pipeline with the system clock. See [`Spooler::start_with_clock`].
    pub fn start(config: &UsageConfig) -> Result<Spooler, UsageError> {
        Spooler::start_with_clock(config, Arc::new(Timestamp::now))
    }

    /// Validates `config` and starts the writer (which recovers `.part` files first) and the
    /// uploader. A spool that cannot be written (missing mount, full, read-only) is no error:
    /// usage is dropped and counted until it can. `device_id` is `config.device_id` or the host
    /// name. Only an invalid configuration or a thread that cannot start fails.
    pub fn start_with_clock(config: &UsageConfig, clock: Clock) -> Result<Spooler, UsageError> {
        config.validate()?;
        let device_id: Arc<str> = Arc::from(config.resolved_device_id());
        let metrics = Arc::new(UsageMetrics::default());
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let wake = Arc::new(WriterWake::new(config.queue_capacity));

        let uploader = if config.upload_url.is_empty() {
            None
        } else {
            let target = upload::UploadTarget::parse(&config.upload_url)?;
            let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
            let (wake_tx, wake_rx) = smol::channel::bounded::<()>(1);
            let ctx = upload::Uploader::new(config, target, Arc::clone(&device_id), Arc::clone(&metrics));
            let handle = std::thread::Builder::new()
                .name("gatelet-usage-upload".into())
                .spawn(move || smol::block_on(ctx.run(stop_rx, wake_rx)))
                .map_err(UsageError::Spawn)?;
            Some((handle, stop_tx, wake_tx))
        };
        let writer = Writer::new(
            config.clone(),
            Arc::clone(&device_id),
            clock,
            Arc::clone(&metrics),
            uploader.as_ref().map(|(_, _, w)| w.clone()),
        );
        let writer = match std::thread::Builder::new().name("gatelet-usage-writer".into()).spawn({
            let wake = Arc::clone(&wake);
            move || writer.run(rx, &wake)
        }) {
            Ok(h) => h,
            Err(e) => {
                if let Some((h, stop, _)) = uploader {
                    drop(stop);
                    let _ = h.join();
                }
                return Err(UsageError::Spawn(e));
            }
        };
        Ok(Spooler {
            recorder: UsageRecorder { tx, metrics: Arc::clone(&metrics), wake },
            metrics,
            device_id,
            threads: Mutex::new(Some(Threads { writer, uploader: uploader.map(|(h, s, _)| (h, s)) })),
        })
    }

    /// A handle for the request path.
    pub fn recorder(&self) -> UsageRecorder {
        self.recorder.clone()
    }

    /// Same as [`UsageRecorder::try_record`].
    pub fn try_record(&self, event: UsageEvent) -> Result<(), Dropped> {
        self.recorder.try_record(event)
    }

    pub fn metrics(&self) -> &Arc<UsageMetrics> {
        &self.metrics
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Appends and fsyncs what the writer holds, and returns once it is durable (tests, tools).
    pub fn flush(&self) {
        self.ask_writer(false);
    }

    /// Like [`Spooler::flush`], and closes the current file so that it can be uploaded or
    /// exported now.
    pub fn close_current_file(&self) {
        self.ask_writer(true);
    }

    fn ask_writer(&self, close: bool) {
        let (done, wait) = mpsc::sync_channel(1);
        // A blocking send: it waits for queue space, which the writer frees continuously.
        if self.recorder.tx.send(Msg::Flush { close, done }).is_ok() {
            self.recorder.wake.unpark();
            let _ = wait.recv();
        }
    }

    /// Stops the uploader (an upload in flight is abandoned; its file stays and is sent again,
    /// with the same `Idempotency-Key`, after the next start), makes the writer append and
    /// fsync what it holds and close its file, and returns when both threads have exited.
    /// Blocks for about one flush: call it from a blocking context (or `smol::unblock`).
    /// Idempotent; events recorded afterwards are dropped and counted.
    pub fn shutdown(&self) {
        let threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(threads) = threads else { return };
        if let Some((_, stop)) = &threads.uploader {
            stop.close();
        }
        let (done, wait) = mpsc::sync_channel(1);
        if self.recorder.tx.send(Msg::Shutdown { done }).is_ok() {
            self.recorder.wake.unpark();
            let _ = wait.recv();
        }
        let _ = threads.writer.join();
        if let Some((h, _)) = threads.uploader {
            let _ = h.join();
        }
    }
}

impl Drop for Spooler {
    fn drop(&mut self) {
        self.shutdown();
    }
}
