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
//! - a header line without a colon, whitespace before the colon (RFC 9112 §5.1), or a bare CR.
//!
//! A refusal on the first request of a connection is answered `400` and the connection closed.
//! On a later request of a keep-alive connection, the requests before it are served and the
//! connection is then closed without a response (at the head-read timeout): hyper reads ahead
//! while an earlier response may still be going out, and a 400 written then could land inside it.
//! A malformed chunked body (a size that is not 1-16 hex digits, a bare LF) fails the body after
//! the good bytes before it were passed on: the pipeline answers 400 and the connection closes.
//! Every refusal is reported through [`GuardEvents`], so it leaves a usage record and a count.
//!
//! **Memory.** The guard reads only what hyper asks for and passes it on unchanged. It scans each
//! head byte by byte and keeps no copy of it: a few integers, the header name and framing value
//! being read (at most [`NAME_KEPT`] and [`VALUE_KEPT`] bytes) and the first
//! [`REQUEST_LINE_KEPT`] bytes of the request line (for the usage record of a refusal). The bytes
//! of an unfinished head live once, in hyper's read buffer, and are charged to a [`HeadBudget`]
//! shared by all connections: past the budget, the connections that have held an unfinished head
//! longest are closed first. A client sending its head in one go is never charged.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use smol::io::{AsyncRead, AsyncWrite};

/// Where the guard is in the request stream.
#[derive(Debug)]
enum Framing {
    /// Reading a head.
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
    /// Reading a chunk-size line.
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
/// Chunk-size line bytes kept: 16 hex digits, whitespace, then `;` must come within them.
const CHUNK_LINE_KEPT: usize = 32;
/// Request-line bytes kept, for the usage record of a refused request.
pub const REQUEST_LINE_KEPT: usize = 256;
/// Header-name bytes kept: enough to recognise `transfer-encoding` (17) and `content-length` (14).
pub const NAME_KEPT: usize = 32;
/// Framing-header value bytes kept: a `Content-Length` has at most 20 digits, and `chunked` is 7;
/// anything longer is not a value gatelet accepts.
pub const VALUE_KEPT: usize = 64;

/// Which framing header a header line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Field {
    #[default]
    Other,
    ContentLength,
    TransferEncoding,
}

/// The incremental scan of one head.
#[derive(Debug)]
struct HeadScan {
    /// Bytes of this head so far (leading blank lines included).
    len: usize,
    /// The request line was seen (blank lines before it are skipped, RFC 9112 §2.2).
    started: bool,
    in_request_line: bool,
    /// No byte of the current line yet.
    line_start: bool,
    /// A CR was seen: the next byte must be LF.
    cr: bool,
    name: [u8; NAME_KEPT],
    name_len: usize,
    name_long: bool,
    colon: bool,
    field: Field,
    value: [u8; VALUE_KEPT],
    value_len: usize,
    value_long: bool,
    content_length: Option<u64>,
    /// `Some(true)`: exactly `chunked`.
    transfer_encoding: Option<bool>,
    /// The first bytes of this head's request line (kept until the next head starts).
    request_line: Vec<u8>,
}

impl Default for HeadScan {
    fn default() -> Self {
        HeadScan {
            len: 0,
            started: false,
            in_request_line: false,
            line_start: true,
            cr: false,
            name: [0; NAME_KEPT],
            name_len: 0,
            name_long: false,
            colon: false,
            field: Field::Other,
            value: [0; VALUE_KEPT],
            value_len: 0,
            value_long: false,
            content_length: None,
            transfer_encoding: None,
            request_line: Vec::new(),
        }
    }
}

impl HeadScan {
    /// Starts the next head, keeping the request-line buffer's allocation.
    fn reset(&mut self) {
        let mut line = std::mem::take(&mut self.request_line);
        line.clear();
        *self = HeadScan { request_line: line, ..HeadScan::default() };
    }

    /// Takes one byte; `Some` when the head is complete.
    fn push(&mut self, b: u8) -> Result<Option<Framing>, Smuggling> {
        self.len += 1;
        if self.cr {
            self.cr = false;
            if b != b'\n' {
                // A bare CR: RFC 9112 §2.2 lets a recipient treat the element as invalid.
                return Err(Smuggling::MalformedHeaderLine);
            }
            return self.end_line();
        }
        match b {
            b'\r' => {
                self.cr = true;
                Ok(None)
            }
            b'\n' => self.end_line(),
            _ => self.byte(b).map(|()| None),
        }
    }

    /// Takes the leading bytes of `data` that cannot change the scan's outcome in one step: the
    /// rest of the request line, or of a value that is not a framing header, up to the next CR
    /// or LF. Returns how many it took (0: the next byte needs [`HeadScan::push`]). Most of a head
    /// is such bytes (a bearer token alone is hundreds), and a byte-by-byte scan of them was the
    /// guard's largest cost.
    fn skip_run(&mut self, data: &[u8]) -> usize {
        if self.cr || self.line_start || !(self.in_request_line || (self.colon && self.field == Field::Other))
        {
            return 0;
        }
        let n = memchr::memchr2(b'\r', b'\n', data).unwrap_or(data.len());
        if self.in_request_line {
            let room = REQUEST_LINE_KEPT.saturating_sub(self.request_line.len());
            self.request_line.extend_from_slice(&data[..n.min(room)]);
        }
        self.len += n;
        n
    }

    fn byte(&mut self, b: u8) -> Result<(), Smuggling> {
        if self.line_start {
            self.line_start = false;
            if !self.started {
                self.started = true;
                self.in_request_line = true;
                self.request_line.clear();
            } else if b == b' ' || b == b'\t' {
                return Err(Smuggling::ObsFold);
            }
        }
        if self.in_request_line {
            if self.request_line.len() < REQUEST_LINE_KEPT {
                self.request_line.push(b);
            }
            return Ok(());
        }
        if !self.colon {
            if b == b':' {
                if self.name_len == 0 {
                    return Err(Smuggling::MalformedHeaderLine);
                }
                self.colon = true;
                let name = &self.name[..self.name_len];
                self.field = if self.name_long {
                    Field::Other
                } else if name == b"content-length" {
                    Field::ContentLength
                } else if name == b"transfer-encoding" {
                    Field::TransferEncoding
                } else {
                    Field::Other
                };
                return Ok(());
            }
            if b.is_ascii_whitespace() {
                return Err(Smuggling::MalformedHeaderLine);
            }
            if self.name_len < NAME_KEPT {
                self.name[self.name_len] = b.to_ascii_lowercase();
                self.name_len += 1;
            } else {
                self.name_long = true;
            }
        } else if self.field != Field::Other {
            if self.value_len < VALUE_KEPT {
                self.value[self.value_len] = b;
                self.value_len += 1;
            } else {
                self.value_long = true;
            }
        }
        Ok(())
    }

    fn end_line(&mut self) -> Result<Option<Framing>, Smuggling> {
        if self.line_start {
            // A blank line: before the request line it is skipped; after, it ends the head.
            return if self.started { self.finish().map(Some) } else { Ok(None) };
        }
        if self.in_request_line {
            self.in_request_line = false;
        } else {
            self.end_header()?;
        }
        self.line_start = true;
        self.name_len = 0;
        self.name_long = false;
        self.colon = false;
        self.field = Field::Other;
        self.value_len = 0;
        self.value_long = false;
        Ok(None)
    }

    fn end_header(&mut self) -> Result<(), Smuggling> {
        if !self.colon {
            return Err(Smuggling::MalformedHeaderLine);
        }
        let value = self.value[..self.value_len].trim_ascii();
        match self.field {
            Field::Other => {}
            Field::ContentLength => {
                if self.content_length.is_some() {
                    return Err(Smuggling::RepeatedFramingHeader);
                }
                // Anything but digits is left to hyper, which answers 400.
                let n = (!self.value_long && !value.is_empty() && value.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
                    .flatten();
                self.content_length = Some(n.unwrap_or(0));
            }
            Field::TransferEncoding => {
                if self.transfer_encoding.is_some() {
                    return Err(Smuggling::RepeatedFramingHeader);
                }
                self.transfer_encoding = Some(!self.value_long && value.eq_ignore_ascii_case(b"chunked"));
            }
        }
        Ok(())
    }

    fn finish(&self) -> Result<Framing, Smuggling> {
        match (self.content_length, self.transfer_encoding) {
            (Some(_), Some(_)) => Err(Smuggling::ContentLengthAndTransferEncoding),
            (None, Some(false)) => Err(Smuggling::UnsupportedTransferEncoding),
            (None, Some(true)) => Ok(Framing::Chunked(Chunk::Size)),
            (Some(0), None) | (None, None) => Ok(Framing::Head),
            (Some(n), None) => Ok(Framing::Body(n)),
        }
    }
}

/// The scan of one chunk-size or trailer line.
#[derive(Debug, Default)]
struct LineScan {
    kept: [u8; CHUNK_LINE_KEPT],
    kept_len: usize,
    len: usize,
    last: u8,
}

impl LineScan {
    fn push(&mut self, b: u8) {
        if self.kept_len < CHUNK_LINE_KEPT {
            self.kept[self.kept_len] = b;
            self.kept_len += 1;
        }
        self.len += 1;
        self.last = b;
    }

    /// Whether the line (without its LF) ends in CR, as RFC 9112 requires.
    fn ends_in_cr(&self) -> bool {
        self.len > 0 && self.last == b'\r'
    }
}

/// What the guard found wrong, for the 400 body, the log and the usage record.
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

fn refusal(why: Smuggling) -> Vec<u8> {
    let body = format!(
        r#"{{"fault":{{"code":900906,"message":"Bad Request","description":"{}"}}}}"#,
        why.describe()
    );
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Where the guard reports what it refused (the data plane turns it into a usage record and a
/// count). `request_line` is the first bytes of the refused request's line, as the client sent.
pub trait GuardEvents: Send + Sync {
    /// A head was refused: answered 400 (`answered`), or, on a later request of a keep-alive
    /// connection, closed without an answer.
    fn refused(&self, why: Smuggling, request_line: &[u8], answered: bool);
    /// The connection's stream is gone; `last_request_line` is the line of the last head the
    /// guard saw (complete or not), for a refusal hyper made after it (400, 431).
    fn closed(&self, _last_request_line: &[u8]) {}
}

/// The memory all unfinished heads may hold together (in hyper's read buffers), and who holds it.
#[derive(Debug)]
pub struct HeadBudget {
    limit: usize,
    used: AtomicUsize,
    shed: AtomicU64,
    next: AtomicU64,
    /// Connections holding an unfinished head, oldest first.
    holders: Mutex<BTreeMap<u64, Arc<Holder>>>,
}

#[derive(Debug, Default)]
struct Holder {
    charged: AtomicUsize,
    shed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// hyper's read buffer starts at 8 KiB: an unfinished head in it (on a later request of a
/// keep-alive connection) is charged at least that much, and what it grows to.
const READ_BUFFER_MIN: usize = 8192;

/// What an unfinished head of `len` bytes costs in hyper's read buffer: at least its first
/// 8 KiB, and hyper doubles the buffer as a head outgrows it.
fn hyper_buffer_cost(len: usize) -> usize {
    if len == 0 { 0 } else { len.max(READ_BUFFER_MIN).next_power_of_two() }
}

impl HeadBudget {
    pub fn new(limit: usize) -> Arc<HeadBudget> {
        Arc::new(HeadBudget {
            limit,
            used: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            next: AtomicU64::new(0),
            holders: Mutex::new(BTreeMap::new()),
        })
    }

    /// Bytes charged to unfinished heads now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections closed to stay within the budget, since start.
    pub fn shed_total(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Charges `cost` bytes of unfinished head to `slot` (0 releases it), then sheds the oldest
    /// holders while the budget is exceeded.
    fn charge(&self, slot: &mut Option<(u64, Arc<Holder>)>, cost: usize, waker: &Waker) {
        if cost == 0 {
            self.release(slot);
            return;
        }
        let (_, holder) = slot.get_or_insert_with(|| {
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            let h = Arc::new(Holder::default());
            if let Ok(mut m) = self.holders.lock() {
                m.insert(seq, Arc::clone(&h));
            }
            (seq, h)
        });
        if holder.shed.load(Ordering::Relaxed) {
            return;
        }
        let old = holder.charged.swap(cost, Ordering::Relaxed);
        if cost >= old {
            self.used.fetch_add(cost - old, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(old - cost, Ordering::Relaxed);
        }
        if let Ok(mut w) = holder.waker.lock() {
            match &*w {
                Some(current) if current.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            }
        }
        if self.used() > self.limit {
            self.shed_oldest();
        }
    }

    fn release(&self, slot: &mut Option<(u64, Arc<Holder>)>) {
        if let Some((seq, holder)) = slot.take() {
            self.used.fetch_sub(holder.charged.swap(0, Ordering::Relaxed), Ordering::Relaxed);
            if let Ok(mut m) = self.holders.lock() {
                m.remove(&seq);
            }
        }
    }

    fn shed_oldest(&self) {
        let Ok(mut holders) = self.holders.lock() else { return };
        while self.used() > self.limit {
            let Some((_, oldest)) = holders.pop_first() else { break };
            self.used.fetch_sub(oldest.charged.swap(0, Ordering::Relaxed), Ordering::Relaxed);
            oldest.shed.store(true, Ordering::Relaxed);
            self.shed.fetch_add(1, Ordering::Relaxed);
            let waker = oldest.waker.lock().ok().and_then(|mut w| w.take());
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// How reading a connection's first head ended, when it did not yield one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstHead {
    /// Closed to keep unfinished heads within their budget (the oldest go first).
    Shed,
}

/// Reads a connection's first request head before hyper is started, so that a client that is
/// slow to send it holds only the bytes it sent (charged exactly to `budget`), not hyper's
/// buffers and connection state. Returns the bytes read: a whole head (and whatever followed it
/// in the same reads), or less if the stream ended or passed `max_head` (hyper then answers 431
/// or closes). The caller bounds the time.
pub async fn read_first_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    budget: &HeadBudget,
    max_head: usize,
) -> Result<Vec<u8>, FirstHead> {
    let mut buf: Vec<u8> = Vec::new();
    let mut slot = None;
    let mut scratch = [0u8; 2048];
    let mut start = None;
    let result = std::future::poll_fn(|cx| {
        loop {
            if slot.as_ref().is_some_and(|(_, h): &(u64, Arc<Holder>)| h.shed.load(Ordering::Relaxed)) {
                return Poll::Ready(Err(FirstHead::Shed));
            }
            let n = match Pin::new(&mut *stream).poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(n)) => n,
                // An error or the end: hyper sees the same and closes.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    budget.charge(&mut slot, buf.capacity(), cx.waker());
                    return Poll::Pending;
                }
            };
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            // Exact growth: what a slow client holds is what it sent.
            buf.reserve_exact(n);
            let before = buf.len();
            buf.extend_from_slice(&scratch[..n]);
            if buf.len() > max_head || head_complete(&buf, before, &mut start) {
                return Poll::Ready(Ok(()));
            }
        }
    })
    .await;
    budget.release(&mut slot);
    result.map(|()| buf)
}

/// Whether `buf` holds a whole head: a blank line after a non-blank one (leading blank lines
/// skipped, as RFC 9112 §2.2 allows). Only what may end in the bytes from `new` on is looked at,
/// so a client sending one byte at a time costs linear time. The framing checks proper run
/// later, in [`Guarded`].
fn head_complete(buf: &[u8], new: usize, start: &mut Option<usize>) -> bool {
    if start.is_none() {
        // Blank so far: the request line can only begin in the new bytes.
        *start = buf[new..].iter().position(|&b| b != b'\r' && b != b'\n').map(|i| new + i);
    }
    let Some(start) = *start else { return false };
    let from = new.saturating_sub(2).max(start);
    let rest = &buf[from..];
    rest.windows(2).any(|w| w == b"\n\n") || rest.windows(3).any(|w| w == b"\n\r\n")
}

/// The guarded stream.
pub struct Guarded<S> {
    inner: S,
    framing: Framing,
    head: HeadScan,
    line: LineScan,
    max_head: usize,
    /// A refusal to write before reporting end of stream.
    pending: Option<(Vec<u8>, usize)>,
    /// Request heads that passed on this connection.
    heads: u32,
    /// A later request was refused: no more bytes reach hyper.
    draining: bool,
    /// A chunked body was refused after its good bytes were passed on: the next read fails.
    failed_body: bool,
    budget: Option<Arc<HeadBudget>>,
    slot: Option<(u64, Arc<Holder>)>,
    events: Option<Arc<dyn GuardEvents>>,
    /// Bytes read before hyper started ([`read_first_head`]), served to it first.
    prefix: Vec<u8>,
    prefix_at: usize,
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("framing", &self.framing)
            .field("heads", &self.heads)
            .finish_non_exhaustive()
    }
}

impl<S> Guarded<S> {
    pub fn new(inner: S, max_head: usize) -> Self {
        Guarded {
            inner,
            framing: Framing::Head,
            head: HeadScan::default(),
            line: LineScan::default(),
            max_head,
            pending: None,
            heads: 0,
            draining: false,
            failed_body: false,
            budget: None,
            slot: None,
            events: None,
            prefix: Vec::new(),
            prefix_at: 0,
        }
    }

    /// A guard that checks nothing: bytes pass through unchanged. For the fixed answers given
    /// before the first bundle ([`crate::provision`]), which share the data plane's connection
    /// type (and so its one copy of hyper's server) but not its framing rules.
    pub fn passthrough(inner: S) -> Self {
        let mut g = Guarded::new(inner, usize::MAX);
        g.framing = Framing::Passthrough;
        g
    }

    /// Serves `prefix` (bytes already read from `inner`) before reading more; they go through
    /// the framing checks like any other bytes.
    pub fn with_prefix(mut self, prefix: Vec<u8>) -> Self {
        self.prefix = prefix;
        self.prefix_at = 0;
        self
    }

    /// Charges unfinished heads to `budget`.
    pub fn with_budget(mut self, budget: Arc<HeadBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Reports refusals to `events`.
    pub fn with_events(mut self, events: Arc<dyn GuardEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// Follows `data` through the framing state machine. Returns a refusal if one is found.
    #[cfg(test)]
    fn observe(&mut self, data: &[u8]) -> Option<Smuggling> {
        self.observe_at(data).map(|(why, _)| why)
    }

    /// Follows `chunk` through the framing state machine. On a refusal, also says where in
    /// `chunk` the refused element began (0 when it began in an earlier read).
    fn observe_at(&mut self, chunk: &[u8]) -> Option<(Smuggling, usize)> {
        let mut data = chunk;
        while !data.is_empty() {
            let here = chunk.len() - data.len();
            match &mut self.framing {
                Framing::Refused | Framing::Passthrough => return None,
                Framing::Head => {
                    if self.head.len == 0 {
                        self.head.reset();
                    }
                    let began = if self.head.len == 0 { here } else { 0 };
                    let mut done = None;
                    let mut i = 0;
                    while i < data.len() {
                        let run = self.head.skip_run(&data[i..]);
                        if run > 0 {
                            i += run;
                        } else {
                            match self.head.push(data[i]) {
                                Err(why) => return Some((why, began)),
                                Ok(Some(f)) => {
                                    done = Some((i + 1, f));
                                    break;
                                }
                                Ok(None) => {}
                            }
                            i += 1;
                        }
                        if self.head.len > self.max_head {
                            // hyper answers 431 and closes; the request line stays for the record.
                            self.framing = Framing::Passthrough;
                            return None;
                        }
                    }
                    let (end, framing) = done?;
                    data = &data[end..];
                    self.framing = framing;
                    self.head.len = 0;
                    self.heads = self.heads.saturating_add(1);
                }
                Framing::Body(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[usize::try_from(n).unwrap_or(data.len())..];
                    if *left == 0 {
                        self.framing = Framing::Head;
                    }
                }
                Framing::Chunked(chunk) => {
                    // Where the element being read began in this read (0: in an earlier one). A
                    // refusal passes on what came before it, so hyper has the head and the good
                    // chunks, and answers the request; the bad bytes never reach it.
                    let began = if self.line.len == 0 { here } else { 0 };
                    match chunk {
                        Chunk::Size => {
                            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                                data.iter().for_each(|&b| self.line.push(b));
                                return (self.line.len > MAX_CHUNK_LINE)
                                    .then_some((Smuggling::BadChunk, began));
                            };
                            data[..nl].iter().for_each(|&b| self.line.push(b));
                            data = &data[nl + 1..];
                            let line = std::mem::take(&mut self.line);
                            if line.len > MAX_CHUNK_LINE {
                                return Some((Smuggling::BadChunk, began));
                            }
                            match chunk_size(&line) {
                                None => return Some((Smuggling::BadChunk, began)),
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
                            // Exactly CRLF after chunk data: a bare LF is one of the shapes on which
                            // parsers disagree about where the chunk ends.
                            let b = data[0];
                            data = &data[1..];
                            match (*left, b) {
                                (2, b'\r') => *left = 1,
                                (1, b'\n') => *chunk = Chunk::Size,
                                _ => return Some((Smuggling::BadChunk, here)),
                            }
                        }
                        Chunk::Trailer => {
                            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                                data.iter().for_each(|&b| self.line.push(b));
                                return (self.line.len > self.max_head)
                                    .then_some((Smuggling::BadChunk, began));
                            };
                            data[..nl].iter().for_each(|&b| self.line.push(b));
                            data = &data[nl + 1..];
                            let line = std::mem::take(&mut self.line);
                            if line.len > self.max_head || !line.ends_in_cr() {
                                return Some((Smuggling::BadChunk, began));
                            }
                            if line.len == 1 {
                                self.framing = Framing::Head;
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Bytes of an unfinished head hyper holds (0 between requests or once the head is done).
    fn unfinished_head(&self) -> usize {
        match self.framing {
            Framing::Head => self.head.len,
            _ => 0,
        }
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(&mut self.slot);
        }
        if let Some(e) = &self.events {
            e.closed(&self.head.request_line);
        }
    }
}

/// The size of a chunk-size line (without its LF), by RFC 9112 §7.1: 1 to 16 hex digits and
/// nothing else before an optional `;extension`, ending in CR. `u64::from_str_radix` alone would
/// take `+5`, and a bare LF ending is read differently by different parsers: both are refused.
fn chunk_size(line: &LineScan) -> Option<u64> {
    if !line.ends_in_cr() {
        return None;
    }
    let kept = &line.kept[..line.kept_len];
    // The size, and the ';' of an extension if any, must come within the kept bytes.
    let size = match kept.iter().position(|&b| b == b';') {
        // Whitespace may precede the extension (RFC 9112 §7.1.1, BWS).
        Some(semi) => kept[..semi].trim_ascii_end(),
        None if line.len == line.kept_len => &kept[..kept.len() - 1],
        None => return None,
    };
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
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
        if this.slot.as_ref().is_some_and(|(_, h)| h.shed.load(Ordering::Relaxed)) {
            // Closed to keep unfinished heads within their memory budget (oldest first).
            log::debug!("unfinished head shed: head memory budget exceeded");
            if let Some(b) = &this.budget {
                b.release(&mut this.slot);
            }
            this.framing = Framing::Refused;
            return Poll::Ready(Ok(0));
        }
        if matches!(this.framing, Framing::Refused) {
            if std::mem::take(&mut this.failed_body) {
                let why = Smuggling::BadChunk.describe();
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
            }
            if this.draining {
                // Withhold everything after the refused head; hyper finishes the response in
                // flight, then its head-read timeout closes the connection.
                return Poll::Pending;
            }
            return Poll::Ready(Ok(0));
        }
        let n = if this.prefix_at < this.prefix.len() {
            let rest = &this.prefix[this.prefix_at..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            this.prefix_at += n;
            if this.prefix_at == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_at = 0;
            }
            n
        } else {
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            }
        };
        let refused = this.observe_at(&buf[..n]);
        if let Some(budget) = &this.budget {
            let held = if refused.is_some() { 0 } else { hyper_buffer_cost(this.unfinished_head()) };
            if held > 0 || this.slot.is_some() {
                budget.charge(&mut this.slot, held, cx.waker());
            }
        }
        if let Some((why, began)) = refused {
            log::debug!("refused request: {}", why.describe());
            this.framing = Framing::Refused;
            if why == Smuggling::BadChunk {
                // The request being read has a broken body. Pass on what came before the bad
                // bytes (the head, good chunks), then fail the stream: hyper's body reports the
                // error, the pipeline answers 400 (and records it), and the connection closes.
                if began > 0 {
                    this.failed_body = true;
                    return Poll::Ready(Ok(began));
                }
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why.describe())));
            }
            let answered = this.heads == 0;
            if let Some(e) = &this.events {
                e.refused(why, &this.head.request_line, answered);
            }
            if !answered {
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

    #[test]
    fn the_head_budget_sheds_the_oldest_holders_first() {
        let budget = HeadBudget::new(3 * READ_BUFFER_MIN);
        let waker = Waker::noop();
        let mut slots: Vec<Option<(u64, Arc<Holder>)>> = (0..4).map(|_| None).collect();
        for slot in &mut slots[..3] {
            budget.charge(slot, hyper_buffer_cost(100), waker);
        }
        assert_eq!(budget.used(), 3 * READ_BUFFER_MIN, "a small head is charged hyper's whole buffer");
        assert_eq!(budget.shed_total(), 0);
        // A fourth unfinished head: the oldest holder goes.
        budget.charge(&mut slots[3], hyper_buffer_cost(100), waker);
        let shed: Vec<bool> =
            slots.iter().map(|s| s.as_ref().is_some_and(|(_, h)| h.shed.load(Ordering::Relaxed))).collect();
        assert_eq!(shed, [true, false, false, false]);
        assert_eq!((budget.used(), budget.shed_total()), (3 * READ_BUFFER_MIN, 1));
        // A head that grows is charged what it holds; the oldest remaining holder goes next.
        budget.charge(&mut slots[3], hyper_buffer_cost(2 * READ_BUFFER_MIN - 1), waker);
        assert!(slots[1].as_ref().is_some_and(|(_, h)| h.shed.load(Ordering::Relaxed)));
        assert_eq!(budget.used(), 3 * READ_BUFFER_MIN);
        // Finished heads release their charge; the shed ones hold nothing.
        for slot in &mut slots {
            budget.release(slot);
        }
        assert_eq!(budget.used(), 0);
        assert!(budget.holders.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_first_head_is_read_whole_and_charged_while_it_waits() {
        let budget = HeadBudget::new(1 << 20);
        for (input, want) in [
            (
                &b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next"[..],
                &b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next"[..],
            ),
            (b"\r\n\r\nGET / HTTP/1.1\n\n", b"\r\n\r\nGET / HTTP/1.1\n\n"),
            (b"GET / HTTP/1.1\r\nHost: a", b"GET / HTTP/1.1\r\nHost: a"),
        ] {
            let mut stream = input;
            let got = smol::block_on(read_first_head(&mut stream, &budget, 8192)).expect("read");
            assert_eq!(got, want);
            assert_eq!(budget.used(), 0, "released once read");
        }
        // Byte by byte, the end of the head is found where it is.
        let mut start = None;
        let head = b"\r\nGET / HTTP/1.1\r\nA: b\r\n\r\n";
        let ends: Vec<usize> =
            (1..=head.len()).filter(|&n| head_complete(&head[..n], n - 1, &mut start)).collect();
        assert_eq!(ends, [head.len()]);
    }

    #[test]
    fn the_guard_keeps_no_copy_of_a_head() {
        // A 16 KB head in many small reads: the guard's own memory stays what it was.
        let mut g = Guarded::new((), 32 * 1024);
        assert_eq!(g.observe(b"GET /a HTTP/1.1\r\n"), None);
        for _ in 0..1000 {
            assert_eq!(g.observe(b"X-Pad: 0123456789\r\n"), None);
        }
        assert!(g.head.len > 16_000);
        assert_eq!(g.head.request_line, b"GET /a HTTP/1.1");
        assert!(g.head.request_line.capacity() <= REQUEST_LINE_KEPT * 2);
        assert_eq!(g.observe(b"\r\n"), None);
        assert!(matches!(g.framing, Framing::Head) && g.head.len == 0, "the head completed");
    }

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
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nA ;x\r\n0123456789\r\n0\r\n\r\n",
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
            // A bare CR inside a value or the request line (the scan takes those in runs).
            (b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\rdef\r\n\r\n", Smuggling::MalformedHeaderLine),
            (b"GET /a\rb HTTP/1.1\r\n\r\n", Smuggling::MalformedHeaderLine),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Smuggling::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX", Smuggling::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", Smuggling::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n", Smuggling::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\n", Smuggling::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n", Smuggling::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", Smuggling::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", Smuggling::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\n\r\n", Smuggling::BadChunk),
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
