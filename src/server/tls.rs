//! The listeners' TLS: OpenSSL's server, TLS 1.3 and 1.2 only, over smol's async streams.
//!
//! native-tls builds its server context from Mozilla's "intermediate v4" profile, which switches
//! TLS 1.3 off, and offers no way to switch it back on. gatelet therefore configures OpenSSL
//! directly (the `openssl` crate binds the same libssl native-tls already links, so the device
//! carries no extra library) with Mozilla's intermediate v5 profile: TLS 1.2 and 1.3, AEAD cipher
//! suites with forward secrecy. The clients gatelet runs itself (backends, the usage collector)
//! stay on native-tls, whose client side offers 1.3.
//!
//! OpenSSL's `SslStream` wants a blocking `Read + Write`; [`Bridge`] gives it one over an async
//! stream by polling it with the waker of the task that is polling the TLS stream, and answering
//! `WouldBlock` where the async stream is pending. OpenSSL surfaces that as `WANT_READ` /
//! `WANT_WRITE`, which become `Poll::Pending` again here.

use std::io::{self, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use openssl::ssl::{ErrorCode, Ssl, SslAcceptor, SslFiletype, SslMethod, SslStream, SslVersion};
use smol::io::{AsyncRead, AsyncWrite};

use super::StartError;

/// The server side of TLS for `listen_tls`: one context, shared by every connection.
#[derive(Clone)]
pub struct TlsAcceptor(Arc<SslAcceptor>);

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl TlsAcceptor {
    /// The listener's identity from a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8 or traditional). Refuses a key that does not match the certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
        let fail = |what: &str, e: openssl::error::ErrorStack| {
            StartError(format!("TLS identity from {} and {}: {what}: {e}", cert.display(), key.display()))
        };
        for p in [cert, key] {
            // A plain read first, so a missing or unreadable file says so in words.
            std::fs::metadata(p).map_err(|e| StartError(format!("{}: {e}", p.display())))?;
        }
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(|e| fail("TLS context", e))?;
        // Mozilla's profile already starts at 1.2; said again here because it is the contract.
        b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(|e| fail("minimum version", e))?;
        b.set_max_proto_version(None).map_err(|e| fail("maximum version", e))?;
        b.set_certificate_chain_file(cert).map_err(|e| fail("certificate chain", e))?;
        b.set_private_key_file(key, SslFiletype::PEM).map_err(|e| fail("private key", e))?;
        b.check_private_key().map_err(|e| fail("the key does not match the certificate", e))?;
        Ok(TlsAcceptor(Arc::new(b.build())))
    }

    /// [`TlsAcceptor::accept`] within `timeout` (a client that starts a handshake and stalls
    /// holds a connection place only that long); `None` on timeout.
    pub async fn accept_within<S>(
        &self,
        io: S,
        timeout: std::time::Duration,
    ) -> Option<io::Result<TlsStream<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        smol::future::or(async { Some(self.accept(io).await) }, async {
            super::rt::Sleep::after(timeout).await;
            None
        })
        .await
    }

    /// Runs the server handshake over `io`.
    pub async fn accept<S>(&self, io: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ssl = Ssl::new(self.0.context()).map_err(io::Error::other)?;
        let stream = SslStream::new(ssl, Bridge { io, waker: None }).map_err(io::Error::other)?;
        let mut tls = TlsStream(stream);
        std::future::poll_fn(|cx| {
            tls.with(cx, |s| match s.accept() {
                Ok(()) => Ok(()),
                Err(e) => Err(ssl_error(e)),
            })
        })
        .await?;
        Ok(tls)
    }
}

/// Maps an OpenSSL error to I/O: `WANT_READ`/`WANT_WRITE` caused by the bridge are `WouldBlock`.
fn ssl_error(e: openssl::ssl::Error) -> io::Error {
    if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) && e.io_error().is_none() {
        return io::Error::from(io::ErrorKind::WouldBlock);
    }
    match e.into_io_error() {
        Ok(io) => io,
        Err(e) => io::Error::other(e),
    }
}

/// A blocking-looking view of an async stream, valid during one poll.
#[derive(Debug)]
struct Bridge<S> {
    io: S,
    /// The waker of the poll in progress; `None` outside a poll (then everything would block).
    waker: Option<Waker>,
}

impl<S: AsyncRead + Unpin> Read for Bridge<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(waker) = &self.waker else { return Err(io::ErrorKind::WouldBlock.into()) };
        match Pin::new(&mut self.io).poll_read(&mut Context::from_waker(waker), buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for Bridge<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(waker) = &self.waker else { return Err(io::ErrorKind::WouldBlock.into()) };
        match Pin::new(&mut self.io).poll_write(&mut Context::from_waker(waker), buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let Some(waker) = &self.waker else { return Err(io::ErrorKind::WouldBlock.into()) };
        match Pin::new(&mut self.io).poll_flush(&mut Context::from_waker(waker)) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A TLS connection accepted by [`TlsAcceptor`].
#[derive(Debug)]
pub struct TlsStream<S>(SslStream<Bridge<S>>);

impl<S> TlsStream<S> {
    /// Runs `f` with the bridge wired to `cx`; `WouldBlock` becomes `Pending`.
    fn with<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut SslStream<Bridge<S>>) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        let bridge = self.0.get_mut();
        match &mut bridge.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        let r = f(&mut self.0);
        self.0.get_mut().waker = None;
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            r => Poll::Ready(r),
        }
    }

    /// The negotiated protocol version, e.g. `TLSv1.3`.
    pub fn version(&self) -> &'static str {
        self.0.ssl().version_str()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.with(cx, |s| s.read(buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.with(cx, |s| s.write(buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(cx, |s| s.flush())
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Best effort close_notify, then close the socket.
        match self.with(cx, |s| match s.shutdown() {
            Ok(_) => Ok(()),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(()),
            Err(e) => Err(ssl_error(e)),
        }) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) | Poll::Ready(Err(_)) => {}
        }
        Pin::new(&mut self.0.get_mut().io).poll_close(cx)
    }
}
