//! Body types of the data plane: one type for everything sent to clients and backends, and a
//! wrapper that counts bytes, enforces a limit, and reports when the body is done.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use smol::future::Future as _;

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy sends: fixed fault bodies and streamed ones alike.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A fixed body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The request body grew past the configured limit.
#[derive(Debug)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body larger than the configured limit")
    }
}

impl std::error::Error for TooLarge {}

/// The client sent no body bytes for longer than the body idle timeout.
#[derive(Debug)]
pub struct BodyStalled;

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client stopped sending its request body")
    }
}

impl std::error::Error for BodyStalled {}

/// Shared view of a metered body: bytes so far, how it ended, and when.
///
/// For a request body these say whose fault a failed forward was: a body that broke (malformed
/// chunked framing, a connection cut mid-body) or stalled is the client's, never the backend's.
#[derive(Debug, Default)]
pub struct Meter {
    pub bytes: AtomicU64,
    pub over_limit: AtomicBool,
    /// The body failed on the sending side (for a request: the client's framing or connection).
    pub failed: AtomicBool,
    /// No bytes arrived for longer than the idle timeout.
    pub stalled: AtomicBool,
    /// When the body ended (completely, by failure, or dropped).
    pub done_at: OnceLock<Instant>,
    /// The last poll found no bytes from the sender: the body waits on the client (not on the
    /// backend taking what was sent).
    pub waiting_on_sender: AtomicBool,
}

/// Counts the bytes of `inner`, fails with [`TooLarge`] past `limit`, and calls `done` once with
/// the byte count when the body ends, fails, or is dropped unread.
pub struct Metered<B> {
    inner: B,
    limit: u64,
    meter: Arc<Meter>,
    done: Option<Box<dyn FnOnce(u64) + Send>>,
    /// Longest wait for the next frame, and its timer (armed while waiting).
    idle: Option<(Duration, Option<super::rt::Sleep>)>,
}

impl<B> std::fmt::Debug for Metered<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("limit", &self.limit)
            .field("meter", &self.meter)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Metered<B> {
    pub fn new(inner: B, limit: u64, meter: Arc<Meter>, done: Option<Box<dyn FnOnce(u64) + Send>>) -> Self {
        if inner.is_end_stream() {
            // Nothing will be polled: the body is done before it starts.
            let _ = meter.done_at.set(Instant::now());
        }
        Metered { inner, limit, meter, done, idle: None }
    }

    /// Fails the body with [`BodyStalled`] when no frame arrives for `timeout`.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle = Some((timeout, None));
        self
    }
}

impl<B> Metered<B> {
    fn finish(&mut self) {
        let _ = self.meter.done_at.set(Instant::now());
        if let Some(done) = self.done.take() {
            done(self.meter.bytes.load(Ordering::Relaxed));
        }
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.meter.waiting_on_sender.store(polled.is_pending(), Ordering::Relaxed);
        if let Some((timeout, timer)) = &mut this.idle {
            if polled.is_pending() {
                let t = timer.get_or_insert_with(|| super::rt::Sleep::after(*timeout));
                if Pin::new(t).poll(cx).is_ready() {
                    this.meter.stalled.store(true, Ordering::Relaxed);
                    this.finish();
                    return Poll::Ready(Some(Err(Box::new(BodyStalled))));
                }
            } else {
                // Progress: the next wait starts its own clock.
                *timer = None;
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total =
                        this.meter.bytes.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if total > this.limit {
                        this.meter.over_limit.store(true, Ordering::Relaxed);
                        this.finish();
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.meter.failed.store(true, Ordering::Relaxed);
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
