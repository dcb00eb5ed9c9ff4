//! The spool directory: file names, listing, crash recovery of `.part` files, and the checks run
//! before a closed file leaves the device.
//!
//! Names: `usage-<YYYYMMDDTHHMMSSZ>-<seq>.ndjson.gz` when closed, the same plus `.part` while it
//! is written. The time is when the file was opened (UTC, basic ISO 8601: no `:` for FAT
//! sticks); `seq` rises across restarts (one more than the highest in the directory), and it,
//! not the time, orders files: a board without a battery-backed clock may restart in 1970.
//! A `.part` becomes closed by a rename, so a closed name always holds complete members.
//!
//! A closed file the collector refused for good (a 4xx that blames the file) is renamed to the
//! same plus `.rejected`: never uploaded again, taken by `usage export`, and still counted
//! against `max_spool_bytes` (the flash is as full with it as without the rename); when the cap
//! needs room, set-aside files go before any file that can still be delivered.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use super::event::{Loss, Timestamp};
use super::gzip::{self, Scan};

pub const PREFIX: &str = "usage-";
pub const CLOSED_SUFFIX: &str = ".ndjson.gz";
pub const PART_SUFFIX: &str = ".part";
/// Appended to a closed file's name when the collector refused it for good.
pub const REJECTED_SUFFIX: &str = ".rejected";

/// A closed file's name.
pub fn closed_name(opened: Timestamp, seq: u64) -> String {
    // `basic()` is ASCII by construction.
    let t = String::from_utf8_lossy(&opened.basic()).into_owned();
    format!("{PREFIX}{t}-{seq:08}{CLOSED_SUFFIX}")
}

/// `(seq, is_part)` of a spool file name; `None` for anything else in the directory (hidden
/// files, an export's temporary files, an operator's notes), which the spool never touches.
pub fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (rest, part) = match name.strip_suffix(PART_SUFFIX) {
        Some(r) => (r, true),
        None => (name, false),
    };
    let rest = rest.strip_prefix(PREFIX)?.strip_suffix(CLOSED_SUFFIX)?;
    let (time, seq) = rest.split_once('-')?;
    let time_ok = time.len() == 16
        && time.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !time_ok || seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((seq.parse().ok()?, part))
}

/// The name a closed file is set aside under.
pub fn rejected_name(closed: &str) -> String {
    format!("{closed}{REJECTED_SUFFIX}")
}

/// What a spool file name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Closed,
    Part,
    Rejected,
}

fn kind_of(name: &str) -> Option<(u64, Kind)> {
    if let Some(closed) = name.strip_suffix(REJECTED_SUFFIX) {
        return match parse_name(closed)? {
            (seq, false) => Some((seq, Kind::Rejected)),
            (_, true) => None,
        };
    }
    parse_name(name).map(|(seq, part)| (seq, if part { Kind::Part } else { Kind::Closed }))
}

/// One usage file in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolFile {
    pub name: String,
    pub path: PathBuf,
    pub seq: u64,
    pub len: u64,
}

/// The usage files of a spool directory.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Closed files, oldest (lowest seq) first: the upload queue.
    pub closed: Vec<SpoolFile>,
    pub parts: Vec<SpoolFile>,
    /// Closed files the collector refused for good (`.rejected`), oldest first; `name` and
    /// `path` are the set-aside ones.
    pub rejected: Vec<SpoolFile>,
    /// Highest seq of any usage file, closed, written or set aside.
    pub max_seq: Option<u64>,
}

impl Listing {
    pub fn closed_bytes(&self) -> u64 {
        self.closed.iter().map(|f| f.len).sum()
    }

    pub fn rejected_bytes(&self) -> u64 {
        self.rejected.iter().map(|f| f.len).sum()
    }
}

/// Lists the spool. A file that vanishes between the directory read and its `stat` (an upload or
/// export took it) is skipped.
pub fn list(dir: &Path) -> io::Result<Listing> {
    let mut out = Listing::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((seq, kind)) = kind_of(name) else { continue };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.is_file() {
            continue;
        }
        out.max_seq = out.max_seq.max(Some(seq));
        let f = SpoolFile { name: name.to_owned(), path: entry.path(), seq, len: meta.len() };
        match kind {
            Kind::Closed => out.closed.push(f),
            Kind::Part => out.parts.push(f),
            Kind::Rejected => out.rejected.push(f),
        }
    }
    for files in [&mut out.closed, &mut out.parts, &mut out.rejected] {
        files.sort_by(|a, b| (a.seq, &a.name).cmp(&(b.seq, &b.name)));
    }
    Ok(out)
}

/// Makes a directory's entries (a created, renamed or removed file) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What start-up recovery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// `.part` files closed (renamed), truncated first when they had a torn tail.
    pub closed: u64,
    /// `.part` files that held no complete member, removed.
    pub removed: u64,
    /// Bytes of torn or corrupt tails cut off.
    pub truncated_bytes: u64,
    /// Lines in the members kept.
    pub lines: u64,
}

/// Closes every `.part` left in `dir` by a crash: each is cut to its last complete, verified gzip
/// member (CRC-32 and ISIZE checked) and renamed to its closed name; one with no complete member
/// is removed. Run only while no writer has the directory (the spooler runs it before writing).
pub fn recover(dir: &Path) -> io::Result<Recovery> {
    let listing = list(dir)?;
    let mut next_seq = listing.max_seq.map_or(0, |s| s.saturating_add(1));
    let mut out = Recovery::default();
    for part in &listing.parts {
        let f = OpenOptions::new().read(true).write(true).open(&part.path)?;
        let scan = gzip::scan(BufReader::new(&f))?;
        if scan.valid_len == 0 {
            drop(f);
            fs::remove_file(&part.path)?;
            out.removed += 1;
            log::warn!("usage: removed {} (no complete gzip member)", part.path.display());
            continue;
        }
        if !scan.is_intact() {
            f.set_len(scan.valid_len)?;
            out.truncated_bytes += scan.total_len - scan.valid_len;
            log::warn!(
                "usage: cut {} bytes of torn tail from {}",
                scan.total_len - scan.valid_len,
                part.path.display()
            );
        }
        f.sync_all()?;
        drop(f);
        let mut target = part.path.with_file_name(part.name.strip_suffix(PART_SUFFIX).unwrap_or(&part.name));
        if target.exists() {
            // Only a hand-made copy can collide; never overwrite a closed file.
            target = dir.join(closed_name(Timestamp::now(), next_seq));
            next_seq += 1;
        }
        fs::rename(&part.path, &target)?;
        out.closed += 1;
        out.lines += scan.lines;
    }
    if out.closed + out.removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(out)
}

/// Checks a closed file before it leaves the device (upload, export): one whose tail does not
/// verify (flash corruption; the writer never closes such a file) is cut to its verified members,
/// or removed when none verifies. Returns the scan of what remains, `None` when the file is gone.
pub fn check_closed(path: &Path) -> io::Result<Option<Scan>> {
    // Read-only first: a flash gone read-only must still be uploadable and exportable.
    let scan = match File::open(path) {
        Ok(f) => gzip::scan(BufReader::new(f))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if scan.is_intact() && scan.valid_len > 0 {
        return Ok(Some(scan));
    }
    log::error!(
        "usage: {} is corrupt after byte {} of {}; keeping the {} verified members",
        path.display(),
        scan.valid_len,
        scan.total_len,
        scan.members
    );
    if scan.valid_len == 0 {
        remove_if_present(path)?;
        return Ok(None);
    }
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(scan.valid_len)?;
    f.sync_all()?;
    Ok(Some(Scan { total_len: scan.valid_len, ..scan }))
}

/// Removes a file; one already gone is fine (another process moved it first).
pub fn remove_if_present(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames a closed file the collector refused for good to its `.rejected` name; returns that
/// path, or `None` when the file is gone (the cap or an export took it meanwhile). An existing
/// file of that name is never overwritten (seq numbers are unique, so only a hand-made copy can
/// be there): that is an error, and the file stays in the queue.
pub fn set_aside(file: &SpoolFile) -> io::Result<Option<PathBuf>> {
    let target = file.path.with_file_name(rejected_name(&file.name));
    if !file.path.exists() {
        return Ok(None);
    }
    if target.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already exists; move it away so that {} can be set aside",
                target.display(),
                file.name
            ),
        ));
    }
    match fs::rename(&file.path, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    if let Some(dir) = target.parent() {
        fsync_dir(dir)?;
    }
    Ok(Some(target))
}

/// Deletes a closed (or set-aside) file to keep the spool under its cap, and says what was lost:
/// its bytes and the request records it held (counted before it goes). A file already taken by
/// the uploader or an export is no loss; one the uploader set aside since the listing still
/// takes room, and goes under its new name.
pub fn drop_for_cap(file: &SpoolFile) -> io::Result<Loss> {
    let aside = file.path.with_file_name(rejected_name(&file.name));
    let mut path = &file.path;
    let opened = match File::open(path) {
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                && kind_of(&file.name).map(|k| k.1) == Some(Kind::Closed) =>
        {
            path = &aside;
            File::open(path)
        }
        other => other,
    };
    let lines = match opened {
        Ok(f) => gzip::scan(BufReader::new(f)).map(|s| s.request_lines).unwrap_or(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loss::default()),
        Err(e) => return Err(e),
    };
    if !remove_if_present(path)? {
        return Ok(Loss::default());
    }
    let shown = if *path == aside { rejected_name(&file.name) } else { file.name.clone() };
    log::warn!("usage: spool cap reached, dropped {shown} ({} bytes, {lines} requests)", file.len);
    Ok(Loss { events_capped: lines, files_capped: 1, bytes_capped: file.len, ..Loss::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = closed_name(Timestamp(1_795_896_000_123), 42);
        assert_eq!(n, "usage-20261128T200000Z-00000042.ndjson.gz");
        assert_eq!(parse_name(&n), Some((42, false)));
        assert_eq!(parse_name(&format!("{n}.part")), Some((42, true)));
        let big = closed_name(Timestamp(0), 123_456_789_012);
        assert_eq!(parse_name(&big), Some((123_456_789_012, false)));
        for other in [
            "usage-20261128T200000Z-00000042.ndjson",
            ".usage-20261128T200000Z-00000042.ndjson.gz.tmp",
            "usage-20261128T200000Z-.ndjson.gz",
            "usage-2026112XT200000Z-1.ndjson.gz",
            "usage-20261128T200000Z-1x.ndjson.gz",
            "usage-20261128T200000Z-99999999999999999999999.ndjson.gz",
            "notes.txt",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert_eq!(kind_of(&rejected_name(&n)), Some((42, Kind::Rejected)));
        assert_eq!(parse_name(&rejected_name(&n)), None, "never in the upload queue");
        assert_eq!(kind_of(&format!("{n}.part.rejected")), None);
        assert_eq!(kind_of("notes.txt.rejected"), None);
    }

    #[test]
    fn set_aside_files_are_listed_apart_and_numbered_past() {
        let dir = std::env::temp_dir().join(format!("gatelet-spool-aside-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        for seq in [3, 5] {
            fs::write(dir.join(closed_name(Timestamp(0), seq)), b"x").expect("write");
        }
        let l = list(&dir).expect("list");
        let oldest = &l.closed[0];
        let aside = set_aside(oldest).expect("renamed").expect("was there");
        assert_eq!(aside, dir.join(rejected_name(&oldest.name)));
        let nine = closed_name(Timestamp(0), 9);
        fs::write(dir.join(&nine), b"xyz").expect("write");
        fs::rename(dir.join(&nine), dir.join(rejected_name(&nine))).expect("rename");
        let l = list(&dir).expect("list");
        assert_eq!(l.closed.iter().map(|f| f.seq).collect::<Vec<_>>(), [5]);
        assert_eq!(l.rejected.iter().map(|f| f.seq).collect::<Vec<_>>(), [3, 9]);
        assert_eq!((l.max_seq, l.rejected_bytes()), (Some(9), 4));
        // Gone meanwhile: nothing to do. Never over another file of the set-aside name.
        assert_eq!(set_aside(oldest).expect("gone is fine"), None);
        fs::write(&oldest.path, b"again").expect("write");
        assert!(set_aside(oldest).is_err());
        assert!(oldest.path.exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
