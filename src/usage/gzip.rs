//! Gzip members (RFC 1952), written one per flush and verified one by one.
//!
//! A usage file is a concatenation of complete members, which `zcat`, DuckDB, ClickHouse and
//! Spark read as one stream. [`MemberEncoder`] frames the raw DEFLATE stream itself (header,
//! CRC-32, ISIZE). Its compressor (a few hundred KiB of tables) exists only while a member has
//! bytes: allocated at the member's first bytes, freed when the member is written, so an idle
//! device holds none; at one member per flush the allocation is noise. [`scan`] walks a file member by member with flate2's decoder, which
//! checks each member's CRC-32 and ISIZE, and reports where the last complete member ends.

use std::io::{self, BufRead, Read, Write};

use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

use super::event::REQUEST_LINE_PREFIX;

/// Fixed member header: magic, CM=deflate, no flags, MTIME=0 (the records carry their times),
/// XFL=0, OS=255 (unknown): every member's header is the same ten bytes.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Uncompressed bytes staged before they are handed to the compressor: fewer, larger calls.
const STAGE_BYTES: usize = 32 * 1024;

/// Builds one gzip member at a time from lines.
pub struct MemberEncoder {
    enc: Option<DeflateEncoder<Vec<u8>>>,
    crc: Crc,
    stage: Vec<u8>,
    level: Compression,
}

impl std::fmt::Debug for MemberEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberEncoder").field("input_bytes", &self.input_bytes()).finish_non_exhaustive()
    }
}

impl MemberEncoder {
    pub fn new(level: Compression) -> MemberEncoder {
        MemberEncoder { enc: None, crc: Crc::new(), stage: Vec::with_capacity(STAGE_BYTES), level }
    }

    /// Uncompressed bytes in the member so far.
    pub fn input_bytes(&self) -> u64 {
        u64::from(self.crc.amount()) + self.stage.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.input_bytes() == 0
    }

    /// Appends bytes (whole lines, by the callers' convention).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stage.extend_from_slice(bytes);
        if self.stage.len() >= STAGE_BYTES {
            self.drain_stage()?;
        }
        Ok(())
    }

    fn drain_stage(&mut self) -> io::Result<()> {
        if self.stage.is_empty() {
            return Ok(());
        }
        self.crc.update(&self.stage);
        let level = self.level;
        self.enc.get_or_insert_with(|| DeflateEncoder::new(HEADER.to_vec(), level)).write_all(&self.stage)?;
        self.stage.clear();
        Ok(())
    }

    /// Completes the member and returns its bytes; the encoder is ready for the next member
    /// (its compressor is freed until that member's first bytes).
    /// ISIZE is the input length modulo 2^32 (RFC 1952), which `Crc::amount` already is.
    pub fn finish(&mut self) -> io::Result<Vec<u8>> {
        self.drain_stage()?;
        let enc = match self.enc.take() {
            Some(enc) => enc,
            None => DeflateEncoder::new(HEADER.to_vec(), self.level),
        };
        let mut member = enc.finish()?;
        member.extend_from_slice(&self.crc.sum().to_le_bytes());
        member.extend_from_slice(&self.crc.amount().to_le_bytes());
        self.crc.reset();
        Ok(member)
    }

    /// Drops what the member holds (a batch that cannot be written).
    pub fn discard(&mut self) {
        self.stage.clear();
        self.crc.reset();
        self.enc = None;
    }
}

/// What [`scan`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan {
    /// Bytes from the start of the file through the end of the last complete, verified member.
    pub valid_len: u64,
    /// The file's length: anything past `valid_len` is a torn or corrupt tail.
    pub total_len: u64,
    pub members: u64,
    /// Lines in the verified members.
    pub lines: u64,
    /// Lines that are request records (`"kind":"request"`).
    pub request_lines: u64,
}

impl Scan {
    pub fn is_intact(&self) -> bool {
        self.valid_len == self.total_len
    }
}

/// A `BufRead` that counts what its reader consumed: where a member ended.
struct Counting<R> {
    inner: R,
    consumed: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.consumed += amt as u64;
        self.inner.consume(amt);
    }
}

/// Counts lines, and lines that start with the request prefix, across write boundaries.
#[derive(Default)]
struct LineCounter {
    lines: u64,
    requests: u64,
    /// Bytes of the current line seen so far, up to the prefix's length.
    pos: usize,
    /// Whether the current line still matches the prefix.
    matching: bool,
}

impl LineCounter {
    fn new() -> LineCounter {
        LineCounter { matching: true, ..LineCounter::default() }
    }

    fn feed(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                self.lines += 1;
                if self.matching && self.pos >= REQUEST_LINE_PREFIX.len() {
                    self.requests += 1;
                }
                self.pos = 0;
                self.matching = true;
            } else if self.pos < REQUEST_LINE_PREFIX.len() {
                self.matching &= REQUEST_LINE_PREFIX[self.pos] == b;
                self.pos += 1;
            }
        }
    }
}

/// Walks the members of `r` (a whole file), verifying each; stops at the first incomplete or
/// corrupt one. Only an error reading `r` itself is an `Err`: corruption is a short `valid_len`.
pub fn scan<R: BufRead>(r: R) -> io::Result<Scan> {
    let mut input = Counting { inner: r, consumed: 0 };
    let mut out = Scan::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if input.fill_buf()?.is_empty() {
            break;
        }
        let start = input.consumed;
        let mut counter = LineCounter::new();
        let mut dec = flate2::bufread::GzDecoder::new(&mut input);
        let ok = loop {
            match dec.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => counter.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Truncated or corrupt member (bad header, deflate data, CRC or ISIZE). A read
                // error of the file itself looks the same here; the caller only trusts what
                // verified either way.
                Err(_) => break false,
            }
        };
        // A header with FLG bits (name, comment, extra) is legal gzip but never ours; members
        // of ours are accepted either way, since the checks above are what guard the content.
        drop(dec);
        if !ok || input.consumed == start {
            break;
        }
        out.members += 1;
        out.lines += counter.lines;
        out.request_lines += counter.requests;
        out.valid_len = input.consumed;
    }
    // The rest of the file, unread: its length.
    loop {
        let n = input.fill_buf()?.len();
        if n == 0 {
            break;
        }
        input.consume(n);
    }
    out.total_len = input.consumed;
    Ok(out)
}

/// [`scan`] over a byte slice.
pub fn scan_bytes(bytes: &[u8]) -> Scan {
    // Reading a slice cannot fail.
    scan(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(enc: &mut MemberEncoder, lines: &[&str]) -> Vec<u8> {
        for l in lines {
            enc.write(l.as_bytes()).expect("write");
            enc.write(b"\n").expect("write");
        }
        enc.finish().expect("finish")
    }

    #[test]
    fn members_concatenate_into_one_stream() {
        let mut enc = MemberEncoder::new(Compression::default());
        let mut file = member(&mut enc, &[r#"{"kind":"request","a":1}"#, r#"{"kind":"usage_dropped"}"#]);
        file.extend(member(&mut enc, &[r#"{"kind":"request","a":2}"#]));
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&file[..]).read_to_string(&mut text).expect("multi-member gzip");
        assert_eq!(
            text,
            "{\"kind\":\"request\",\"a\":1}\n{\"kind\":\"usage_dropped\"}\n{\"kind\":\"request\",\"a\":2}\n"
        );
        let s = scan_bytes(&file);
        assert_eq!((s.members, s.lines, s.request_lines), (2, 3, 2));
        assert!(s.is_intact());
    }

    #[test]
    fn large_members_cross_the_stage() {
        let mut enc = MemberEncoder::new(Compression::fast());
        let line = format!("{{\"kind\":\"request\",\"pad\":\"{}\"}}", "x".repeat(1000));
        let lines: Vec<&str> = std::iter::repeat_n(line.as_str(), 200).collect();
        let file = member(&mut enc, &lines);
        let s = scan_bytes(&file);
        assert_eq!((s.members, s.lines, s.request_lines), (1, 200, 200));
    }

    #[test]
    fn corrupt_tail_is_not_valid() {
        let mut enc = MemberEncoder::new(Compression::default());
        let mut file = member(&mut enc, &["one"]);
        let first = file.len() as u64;
        let mut second = member(&mut enc, &["two"]);
        let crc_at = second.len() - 8;
        second[crc_at] ^= 1;
        file.extend(&second);
        let s = scan_bytes(&file);
        assert_eq!((s.valid_len, s.members, s.lines), (first, 1, 1));
        assert_eq!(s.total_len, file.len() as u64);
        // Trailing zeros (a file extended without its data) are not a member either.
        let mut file = member(&mut enc, &["one"]);
        file.extend([0u8; 100]);
        assert_eq!(scan_bytes(&file).valid_len, first);
        // Nor is an empty file anything.
        assert_eq!(scan_bytes(&[]), Scan::default());
    }

    #[test]
    fn discard_leaves_a_clean_encoder() {
        let mut enc = MemberEncoder::new(Compression::default());
        enc.write(b"lost\n").expect("write");
        enc.discard();
        assert!(enc.is_empty());
        let file = member(&mut enc, &["kept"]);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&file[..]).read_to_string(&mut text).expect("gzip");
        assert_eq!(text, "kept\n");
    }
}
