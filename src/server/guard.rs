//! A framing guard in front of hyper's HTTP/1.1 parser: it follows the request stream message by
//! message (head, then a `Content-Length` or chunked body) and refuses smuggling shapes that
//! hyper would otherwise repair quietly.
//!
//! hyper, as RFC 9112 §6.1 allows, drops `Content-Length` when `Transfer-Encoding` is present and
//! carries on. A gateway must not: if anything between the client and gatelet framed the message by
//! `Content-Length`, the two disagree about where the next request starts. So the guard answers
//! `400` and closes for:
//! - both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3: "ought to be handled as an
//!   error");
//! - a `Transfer-Encoding` other than exactly `chunked` (gatelet decodes no other coding);
//! - several `Transfer-Encoding` headers, or several `Content-Length` headers;
//! - obs-fold (a header line starting with a space or tab, RFC 9112 §5.2);
//! - a header line without a colon, or whitespace before the colon (RFC 9112 §5.1).
//!
//! A refusal on the first request of a connection is answered `400` and the connection closed.
//! On a later request of a keep-alive connection, the requests before it are served and the
//! connection is then closed without a response (at the head-read timeout): hyper reads ahead
//! while an earlier response may still be going out, and a 400 written then could land inside it.
//! A malformed chunked body aborts the connection.
//!
//! The guard reads only what hyper asks for and passes it on unchanged; its own state is a few
//! integers plus the head bytes seen so far, capped at the head limit (hyper answers 431 beyond).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use smol::io::{AsyncRead, AsyncWrite};

/// Where the guard is in the request stream.
#[derive(Debug)]
enum Framing {
    /// Reading a head; holds its bytes so far.
    Head,
    /// Inside a `Content-Length` body.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Refused: the response was written, the stream ends.
    Refused,
    /// Past the head limit: hyper answers 431 and closes; stop inspecting.
    Passthrough,
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line (bytes so far).
    Size,
    /// Inside chunk data (remaining, then CRLF).
    Data(u64),
    /// The CRLF after chunk data (bytes still to skip).
    DataEnd(u8),
    /// Trailer section: reading lines until an empty one.
    Trailer,
}

/// Longest chunk-size line (size, extensions) tolerated.
const MAX_CHUNK_LINE: usize = 1024;

/// The guarded stream.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    framing: Framing,
    line: Vec<u8>,
    max_head: usize,
    /// A refusal to write before reporting end of stream.
    pending: Option<(Vec<u8>, usize)>,
    /// Request heads that passed on this connection.
    heads: u32,
    /// A later request was refused: no more bytes reach hyper.
    draining: bool,
}

/// What the guard found wrong with a head, for the 400 body and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smuggling {
    ContentLengthAndTransferEncoding,
    UnsupportedTransferEncoding,
    RepeatedFramingHeader,
    ObsFold,
    MalformedHeaderLine,
    BadChunk,
}

impl Smuggling {
    pub fn describe(self) -> &'static str {
        match self {
            Smuggling::ContentLengthAndTransferEncoding => "both Content-Length and Transfer-Encoding",
            Smuggling::UnsupportedTransferEncoding => "unsupported Transfer-Encoding (only chunked)",
            Smuggling::RepeatedFramingHeader => "repeated Content-Length or Transfer-Encoding",
            Smuggling::ObsFold => "obsolete line folding in a header",
            Smuggling::MalformedHeaderLine => "malformed header line",
            Smuggling::BadChunk => "malformed chunked body",
        }
    }
}

/// Inspects a complete head (request line and headers, ending in an empty line).
/// Returns the body framing or the refusal.
fn inspect_head(head: &[u8]) -> Result<Framing, Smuggling> {
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    // Leading empty lines before a request line are allowed (RFC 9112 §2.2).
    for l in lines.by_ref() {
        if !l.is_empty() {
            break;
        }
    }
    let mut cl: Option<u64> = None;
    let mut te: Option<bool> = None; // Some(true) = exactly chunked
    for l in lines {
        if l.is_empty() {
            break;
        }
        if l[0] == b' ' || l[0] == b'\t' {
            return Err(Smuggling::ObsFold);
        }
        let colon = l.iter().position(|&b| b == b':').ok_or(Smuggling::MalformedHeaderLine)?;
        let name = &l[..colon];
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err(Smuggling::MalformedHeaderLine);
        }
        let value = l[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            if cl.is_some() {
                return Err(Smuggling::RepeatedFramingHeader);
            }
            // An unparsable length is left to hyper, which answers 400.
            let n = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
            cl = Some(n.unwrap_or(0));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te.is_some() {
                return Err(Smuggling::RepeatedFramingHeader);
            }
            te = Some(value.eq_ignore_ascii_case(b"chunked"));
        }
    }
    match (cl, te) {
        (Some(_), Some(_)) => Err(Smuggling::ContentLengthAndTransferEncoding),
        (None, Some(false)) => Err(Smuggling::UnsupportedTransferEncoding),
        (None, Some(true)) => Ok(Framing::Chunked(Chunk::Size)),
        (Some(0), None) | (None, None) => Ok(Framing::Head),
        (Some(n), None) => Ok(Framing::Body(n)),
    }
}

fn refusal(why: Smuggling) -> Vec<u8> {
    let body =
        format!(r#"{{"fault":{{"code":400,"message":"Bad Request","description":"{}"}}}}"#, why.describe());
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<S> Guarded<S> {
    pub fn new(inner: S, max_head: usize) -> Self {
        Guarded {
            inner,
            framing: Framing::Head,
            line: Vec::new(),
            max_head,
            pending: None,
            heads: 0,
            draining: false,
        }
    }

    /// Follows `data` through the framing state machine. Returns a refusal if one is found.
    #[cfg(test)]
    fn observe(&mut self, data: &[u8]) -> Option<Smuggling> {
        self.observe_at(data).map(|(why, _)| why)
    }

    /// [`Guarded::observe`], also saying where in `data` the refused head began (0 when it began
    /// in an earlier read, or for a bad chunked body).
    fn observe_at(&mut self, chunk: &[u8]) -> Option<(Smuggling, usize)> {
        let mut data = chunk;
        while !data.is_empty() {
            match &mut self.framing {
                Framing::Refused | Framing::Passthrough => return None,
                Framing::Head => {
                    let began = if self.line.is_empty() { chunk.len() - data.len() } else { 0 };
                    // Accumulate until the blank line ending the head.
                    let mut end = None;
                    for (i, &b) in data.iter().enumerate() {
                        self.line.push(b);
                        if b == b'\n' && head_complete(&self.line) {
                            end = Some(i + 1);
                            break;
                        }
                        if self.line.len() > self.max_head {
                            self.framing = Framing::Passthrough;
                            self.line = Vec::new();
                            return None;
                        }
                    }
                    let end = end?;
                    data = &data[end..];
                    let head = std::mem::take(&mut self.line);
                    match inspect_head(&head) {
                        Ok(f) => {
                            self.framing = f;
                            self.heads = self.heads.saturating_add(1);
                        }
                        Err(why) => return Some((why, began)),
                    }
                }
                Framing::Body(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[usize::try_from(n).unwrap_or(data.len())..];
                    if *left == 0 {
                        self.framing = Framing::Head;
                    }
                }
                Framing::Chunked(chunk) => match chunk {
                    Chunk::Size => {
                        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                            self.line.extend_from_slice(data);
                            return (self.line.len() > MAX_CHUNK_LINE).then_some((Smuggling::BadChunk, 0));
                        };
                        self.line.extend_from_slice(&data[..nl]);
                        data = &data[nl + 1..];
                        let line = std::mem::take(&mut self.line);
                        let line = line.strip_suffix(b"\r").unwrap_or(&line);
                        let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]).trim_ascii();
                        let size = std::str::from_utf8(size_part)
                            .ok()
                            .filter(|s| !s.is_empty() && s.len() <= 16)
                            .and_then(|s| u64::from_str_radix(s, 16).ok());
                        match size {
                            None => return Some((Smuggling::BadChunk, 0)),
                            Some(0) => *chunk = Chunk::Trailer,
                            Some(n) => *chunk = Chunk::Data(n),
                        }
                    }
                    Chunk::Data(left) => {
                        let n = (*left).min(data.len() as u64);
                        *left -= n;
                        data = &data[usize::try_from(n).unwrap_or(data.len())..];
                        if *left == 0 {
                            *chunk = Chunk::DataEnd(2);
                        }
                    }
                    Chunk::DataEnd(left) => {
                        // Expect CRLF (a bare LF is tolerated by hyper; mirror it loosely).
                        let b = data[0];
                        data = &data[1..];
                        if b == b'\n' {
                            *chunk = Chunk::Size;
                        } else if b == b'\r' && *left == 2 {
                            *left = 1;
                        } else {
                            return Some((Smuggling::BadChunk, 0));
                        }
                    }
                    Chunk::Trailer => {
                        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                            self.line.extend_from_slice(data);
                            return (self.line.len() > self.max_head).then_some((Smuggling::BadChunk, 0));
                        };
                        self.line.extend_from_slice(&data[..nl]);
                        data = &data[nl + 1..];
                        let line = std::mem::take(&mut self.line);
                        if line.strip_suffix(b"\r").unwrap_or(&line).is_empty() {
                            self.framing = Framing::Head;
                        }
                    }
                },
            }
        }
        None
    }
}

/// Whether `buf` ends a head: a blank line after at least one non-blank line.
fn head_complete(buf: &[u8]) -> bool {
    let trimmed = {
        let mut start = 0;
        while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
            start += 1;
        }
        &buf[start..]
    };
    trimmed.ends_with(b"\r\n\r\n") || trimmed.ends_with(b"\n\n") || trimmed.ends_with(b"\n\r\n")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // A pending refusal is written first, then the stream reports its end to hyper.
        while let Some((bytes, written)) = &mut this.pending {
            match Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    this.pending = None;
                }
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    if *written >= bytes.len() {
                        this.pending = None;
                        let _ = Pin::new(&mut this.inner).poll_flush(cx);
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        if matches!(this.framing, Framing::Refused) {
            if this.draining {
                // Withhold everything after the refused head; hyper finishes the response in
                // flight, then its head-read timeout closes the connection.
                return Poll::Pending;
            }
            return Poll::Ready(Ok(0));
        }
        let n = match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if let Some((why, began)) = this.observe_at(&buf[..n]) {
            log::debug!("refused request: {}", why.describe());
            this.framing = Framing::Refused;
            if why == Smuggling::BadChunk {
                // The request being read has a broken body: abort it.
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why.describe())));
            }
            if this.heads > 0 {
                // An earlier request on this connection may still be answering (hyper reads ahead
                // while a response is in flight): a 400 written now could land inside it. Pass on
                // what came before the refused head, then nothing more.
                this.draining = true;
                return if began > 0 { Poll::Ready(Ok(began)) } else { Poll::Pending };
            }
            this.pending = Some((refusal(why), 0));
            // Loop once more to write the refusal and report the end of the stream.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Runs the framing state machine over `data` delivered in two reads, split at `split` (clamped
/// to the length), with an 8 KiB head limit, and returns the first refusal. It exists only for
/// the fuzz target `fuzz/fuzz_targets/framing.rs`, which has no socket to drive [`Guarded`]
/// with; nothing in gatelet calls it.
#[doc(hidden)]
pub fn fuzz_framing(data: &[u8], split: usize) -> Option<Smuggling> {
    let mut guard = Guarded::new((), 8192);
    let (first, second) = data.split_at(split.min(data.len()));
    guard.observe_at(first).or_else(|| guard.observe_at(second)).map(|(why, _)| why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stream: &[u8], split: usize) -> Option<Smuggling> {
        let mut g = Guarded::new((), 8192);
        let (a, b) = stream.split_at(split.min(stream.len()));
        g.observe(a).or_else(|| g.observe(b))
    }

    #[test]
    fn follows_messages_and_refuses_smuggling() {
        let ok: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            // A body that looks like a smuggled head is just a body.
            b"POST / HTTP/1.1\r\nContent-Length: 52\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n",
        ];
        for s in ok {
            for split in 0..s.len() {
                assert_eq!(run(s, split), None, "{} split {split}", String::from_utf8_lossy(s));
            }
        }
        let bad: &[(&[u8], Smuggling)] = &[
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Smuggling::ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Smuggling::ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Smuggling::UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Smuggling::RepeatedFramingHeader),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Smuggling::RepeatedFramingHeader),
            (b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", Smuggling::ObsFold),
            (b"GET / HTTP/1.1\r\nX-A : a\r\n\r\n", Smuggling::MalformedHeaderLine),
            (b"GET / HTTP/1.1\r\nnocolon\r\n\r\n", Smuggling::MalformedHeaderLine),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Smuggling::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX", Smuggling::BadChunk),
            // The second request on a keep-alive connection is inspected too.
            (b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", Smuggling::ContentLengthAndTransferEncoding),
        ];
        for (s, want) in bad {
            for split in 0..s.len() {
                assert_eq!(run(s, split), Some(*want), "{} split {split}", String::from_utf8_lossy(s));
            }
        }
    }
}
