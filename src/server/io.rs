//! hyper's I/O traits over smol's streams, without touching memory the peer did not send.
//!
//! hyper hands its read buffer over as uninitialised memory. The generic adapter zeroes all of
//! it before every read, so each connection's 8 KiB buffer (and a slow head's grown 16 or 32 KiB
//! one) becomes resident at once: 1,000 idle connections cost 16 MiB that way. gatelet forbids
//! `unsafe`, so it cannot read into uninitialised memory either; instead each read lands in one
//! per-thread scratch buffer, and only the bytes received are copied into hyper's buffer. Memory
//! a connection holds is then what its peer sent, which is what the head budget
//! ([`super::guard::HeadBudget`]) charges. The copy costs less than the zeroing it replaces.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::ReadBufCursor;
use smol::io::{AsyncRead, AsyncWrite};

/// Largest single read: hyper's own first buffer is 8 KiB; twice that lets a response body
/// stream in fewer reads.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// One scratch buffer per executor thread, zeroed once.
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// A smol stream as hyper I/O.
#[derive(Debug)]
pub struct HyperIo<S>(S);

impl<S> HyperIo<S> {
    pub fn new(inner: S) -> Self {
        HyperIo(inner)
    }
}

fn read_into<S: AsyncRead + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    scratch: &mut [u8],
    buf: &mut ReadBufCursor<'_>,
) -> Poll<io::Result<()>> {
    let want = buf.remaining().min(scratch.len());
    match Pin::new(inner).poll_read(cx, &mut scratch[..want]) {
        Poll::Ready(Ok(n)) => {
            buf.put_slice(&scratch[..n]);
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let inner = &mut self.0;
        SCRATCH_BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => read_into(inner, cx, &mut scratch, &mut buf),
            // Only if a read were nested inside another on this thread; never in gatelet, but a
            // small stack buffer keeps it correct rather than a panic.
            Err(_) => read_into(inner, cx, &mut [0u8; 1024], &mut buf),
        })
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
