//! Body types of the data plane: one type for everything sent to clients and backends, and a
//! wrapper that counts bytes, enforces a limit, and reports when the body is done.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

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

/// Shared view of a metered body: bytes so far, and whether the limit tripped.
#[derive(Debug, Default)]
pub struct Meter {
    pub bytes: AtomicU64,
    pub over_limit: AtomicBool,
}

/// Counts the bytes of `inner`, fails with [`TooLarge`] past `limit`, and calls `done` once with
/// the byte count when the body ends, fails, or is dropped unread.
pub struct Metered<B> {
    inner: B,
    limit: u64,
    meter: Arc<Meter>,
    done: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl<B> std::fmt::Debug for Metered<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("limit", &self.limit)
            .field("meter", &self.meter)
            .finish_non_exhaustive()
    }
}

impl<B> Metered<B> {
    pub fn new(inner: B, limit: u64, meter: Arc<Meter>, done: Option<Box<dyn FnOnce(u64) + Send>>) -> Self {
        Metered { inner, limit, meter, done }
    }

    fn finish(&mut self) {
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
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
