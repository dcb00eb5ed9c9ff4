//! The device's small durable state, over sled, and the only module that touches sled.
//!
//! It holds two facts, each durable (flushed) before anyone relies on it:
//! - the **anti-rollback mark**: the serial and payload hash of the newest bundle accepted. A
//!   lower serial is refused, and so is the same serial with a different payload (two different
//!   bundles must never share a serial).
//! - the **clock floor**: the newest Unix time the device has evidence for. It rises with time,
//!   with each newer bundle's build time, and falls in one case only: a bundle with a *higher
//!   serial* than the mark whose build time is *earlier* than that of the bundle it replaces is
//!   the publisher correcting a build time that ran ahead; the floor is then reset to the new
//!   build time ([`StateStore::record_bundle_time`]). Replaying an older bundle cannot do it: the
//!   anti-rollback mark refuses it first. Beside the floor the store keeps the build time of the
//!   bundle that set the mark (`bundle_created_at`), which is what a correction is judged by.
//!
//! sled is configured for a small board: a 1 MiB cache (its default is 1 GiB and ignores cgroup v2
//! limits) and no background flush (sled's default fsyncs twice a second); every write here is
//! flushed explicitly, so the flash sees a write only when a fact changes.
//!
//! A store that cannot be opened or holds a value of the wrong shape is an error naming the
//! directory and the recovery; it is never reset silently, since a silent reset would reopen the
//! door to rollback. Recovery (README, "State directory"): stop gatelet, move the directory aside,
//! start again; the bundle installed at `bundle.path` sets the new mark.
//!
//! **Reading beside a running daemon** (`gatelet check` while `gatelet run` holds the store).
//! sled takes an exclusive `flock` on its `db` file and has no read-only mode, so a second
//! process cannot open the store itself. [`StateStore::open_copy`] copies the directory into a
//! private temporary directory (mode 0700 under `TMPDIR`, removed when the store is dropped) and
//! opens the copy, read-only by this module's rules: [`StateStore::accept_bundle`] and
//! [`StateStore::raise_clock_floor`] refuse on a copy. The copy is trusted only when it is
//! byte-for-byte equal to the source after copying (each file compared again, and the same set of
//! files), so a write of the daemon during the copy is seen and the copy retried
//! ([`COPY_ATTEMPTS`]); sled's own recovery then checks every record's CRC on the copy, and a
//! copy it cannot read is an error, never an empty store. What the copy shows is the store as of
//! the copy: the daemon flushes each fact before relying on it, and the page cache is shared, so
//! that is everything the daemon has acknowledged (a bundle it accepts a moment later is, as for
//! any check, a later event).
//!
//! Why a copy and not a side file mirroring the two facts: a mirror would add a file write,
//! rename and directory fsync to every fact change (the hourly clock persist included) on the
//! flash, and a second copy of the truth that can disagree with sled after a power cut between
//! the two writes; the copy writes nothing on the device's store and reads the one source of
//! truth. Its cost is small because the store is: measured (sled 0.34, this module's writes), 188
//! bytes after one write, 36 KiB after 1,000, 720 KiB after 20,000 (over two years of hourly
//! clock persists), reopened in 52 ms by a debug build on the development machine. A store above
//! [`MAX_COPY_BYTES`] is not copied, and `check` says to stop gatelet.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

const KEY_ROLLBACK: &[u8] = b"rollback_mark";
const KEY_CLOCK_FLOOR: &[u8] = b"clock_floor";
const KEY_BUNDLE_CREATED: &[u8] = b"bundle_created_at";
/// sled page cache. The state is a few hundred bytes; 1 MiB is ample and bounded.
const CACHE_BYTES: u64 = 1024 * 1024;
/// Retries (50 ms apart) while another handle's lock is being released: up to 2 s.
const LOCK_RETRIES: u32 = 40;
/// Largest store [`StateStore::open_copy`] copies: about 20 times the 720 KiB measured after
/// 20,000 writes, and small enough for a board's tmpfs.
pub const MAX_COPY_BYTES: u64 = 16 * 1024 * 1024;
/// Copies tried when the daemon writes during each: it writes when a fact changes (a bundle
/// accepted, the hourly clock persist), so a second copy practically always finds it still.
pub const COPY_ATTEMPTS: u32 = 3;
/// Deepest directory copied (sled keeps `blobs/` one level down).
const COPY_MAX_DEPTH: u32 = 4;

/// The newest bundle accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackMark {
    pub serial: u64,
    pub payload_sha256: [u8; 32],
}

impl RollbackMark {
    fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.serial.to_be_bytes());
        out[8..].copy_from_slice(&self.payload_sha256);
        out
    }

    fn decode(bytes: &[u8]) -> Option<RollbackMark> {
        let bytes: &[u8; 40] = bytes.try_into().ok()?;
        let mut serial = [0u8; 8];
        serial.copy_from_slice(&bytes[..8]);
        let mut payload_sha256 = [0u8; 32];
        payload_sha256.copy_from_slice(&bytes[8..]);
        Some(RollbackMark { serial: u64::from_be_bytes(serial), payload_sha256 })
    }
}

/// Why the state store refused or failed.
#[derive(Debug)]
pub enum StateError {
    /// The store could not be opened: the device (disk or corruption).
    Open(PathBuf, String),
    /// The store could not be opened for lack of permission: the operator (gatelet run as
    /// another user than the store's owner).
    Denied(PathBuf, String),
    /// Another process holds the store (a running gatelet): the operator.
    Busy(PathBuf),
    /// A running gatelet holds the store and a copy of it could not be read: the device (a
    /// store too large, unreadable, or written during every copy).
    CopyUnreadable(PathBuf, String),
    /// A stored value has the wrong shape: corruption on the device.
    Corrupt(PathBuf, &'static str),
    /// A read, write or flush failed: the device.
    Io(PathBuf, String),
    /// The offered bundle is older than, or conflicts with, the mark: the bundle's publisher.
    Rollback { mark: RollbackMark, offered_serial: u64 },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const RECOVERY: &str =
            "to recover, stop gatelet and move the directory aside (see README, \"State directory\")";
        match self {
            StateError::Open(p, e) => write!(f, "state store {}: cannot open: {e}; {RECOVERY}", p.display()),
            StateError::Denied(p, e) => write!(
                f,
                "state store {}: cannot open: {e}; run gatelet as the user that owns it (the service's user)",
                p.display()
            ),
            StateError::Busy(p) => write!(
                f,
                "state store {} is in use by another process (a running gatelet?); stop it first",
                p.display()
            ),
            StateError::CopyUnreadable(p, e) => write!(
                f,
                "state store {} is in use by a running gatelet and a copy of it could not be read ({e}); stop gatelet and check again",
                p.display()
            ),
            StateError::Corrupt(p, what) => {
                write!(f, "state store {}: {what} is corrupt; {RECOVERY}", p.display())
            }
            StateError::Io(p, e) => write!(f, "state store {}: {e}", p.display()),
            StateError::Rollback { mark, offered_serial } if *offered_serial == mark.serial => write!(
                f,
                "rollback refused: serial {offered_serial} was already accepted with a different payload"
            ),
            StateError::Rollback { mark, offered_serial } => write!(
                f,
                "rollback refused: serial {offered_serial} is older than the accepted serial {}",
                mark.serial
            ),
        }
    }
}

impl std::error::Error for StateError {}

/// A private temporary copy of a store, removed when dropped (after the `sled::Db` on it, which
/// is declared before it in [`StateStore`]).
#[derive(Debug)]
struct TempCopy(PathBuf);

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The durable state of one device.
#[derive(Debug)]
pub struct StateStore {
    db: sled::Db,
    /// The store's directory (in messages, also for a copy).
    dir: PathBuf,
    /// Set when `db` is a copy read beside a running daemon: then nothing is written.
    copy: Option<TempCopy>,
}

/// sled's lock error: an `Io` error it formats itself (sled 0.34 `Config::try_lock`).
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(_)) && e.to_string().contains("could not acquire lock")
}

fn open_error(dir: &Path, e: &sled::Error) -> StateError {
    match e {
        _ if is_lock_error(e) => StateError::Busy(dir.to_owned()),
        sled::Error::Io(io) if io.kind() == io::ErrorKind::PermissionDenied => {
            StateError::Denied(dir.to_owned(), e.to_string())
        }
        _ => StateError::Open(dir.to_owned(), e.to_string()),
    }
}

fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new().path(path).cache_capacity(CACHE_BYTES).flush_every_ms(None)
}

impl StateStore {
    /// Opens (or creates) the store in `dir`. A store another process holds is
    /// [`StateError::Busy`] (after [`LOCK_RETRIES`]).
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        fs::create_dir_all(dir).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => StateError::Denied(dir.to_owned(), e.to_string()),
            _ => StateError::Open(dir.to_owned(), e.to_string()),
        })?;
        // sled releases its file lock from a background thread after the last handle is dropped,
        // so a reopen right after a close (a quick restart, a reload) may find it still held for
        // a moment: retry briefly before calling the store busy.
        let mut attempts = 0;
        let db = loop {
            match sled_config(dir).open() {
                Ok(db) => break db,
                Err(e) if attempts < LOCK_RETRIES && is_lock_error(&e) => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(open_error(dir, &e)),
            }
        };
        StateStore::checked(StateStore { db, dir: dir.to_owned(), copy: None })
    }

    /// Reads both values now, so corruption is reported at start-up, not at first use.
    fn checked(store: StateStore) -> Result<StateStore, StateError> {
        store.rollback_mark()?;
        store.clock_floor()?;
        Ok(store)
    }

    /// Opens a copy of the store in `dir` that a running gatelet holds (see the module doc):
    /// read-only, and removed when dropped. Errors other than corruption of the copy are
    /// [`StateError::CopyUnreadable`].
    pub fn open_copy(dir: &Path) -> Result<StateStore, StateError> {
        let unreadable = |why: String| StateError::CopyUnreadable(dir.to_owned(), why);
        let copy = TempCopy(private_temp_dir().map_err(|e| unreadable(format!("temporary directory: {e}")))?);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match copy_consistent(dir, &copy.0) {
                Ok(()) => break,
                Err(CopyError::Changed) if attempt < COPY_ATTEMPTS => {
                    fs::remove_dir_all(&copy.0)
                        .and_then(|()| create_private_dir(&copy.0))
                        .map_err(|e| unreadable(format!("temporary directory: {e}")))?;
                }
                Err(CopyError::Changed) => {
                    return Err(unreadable(format!("it changed during each of {COPY_ATTEMPTS} copies")));
                }
                Err(CopyError::TooLarge(n)) => {
                    return Err(unreadable(format!("{n} bytes, more than the {MAX_COPY_BYTES} copied")));
                }
                Err(CopyError::Io(what, e)) => return Err(unreadable(format!("{what}: {e}"))),
            }
        }
        let db = sled_config(&copy.0).open().map_err(|e| match e {
            // The copy is private: a lock or permission error there is not the store's.
            _ if is_lock_error(&e) => unreadable(e.to_string()),
            sled::Error::Io(io) if io.kind() == io::ErrorKind::PermissionDenied => unreadable(io.to_string()),
            // Anything else is what the store holds: corruption, reported as for `open`.
            _ => StateError::Open(dir.to_owned(), e.to_string()),
        })?;
        StateStore::checked(StateStore { db, dir: dir.to_owned(), copy: Some(copy) })
    }

    /// Whether this is a copy read beside a running daemon ([`StateStore::open_copy`]).
    pub fn is_copy(&self) -> bool {
        self.copy.is_some()
    }

    fn writable(&self) -> Result<(), StateError> {
        match &self.copy {
            None => Ok(()),
            Some(_) => Err(StateError::Io(
                self.dir.clone(),
                "a copy read beside a running gatelet is read-only".into(),
            )),
        }
    }

    fn io(&self, e: sled::Error) -> StateError {
        StateError::Io(self.dir.clone(), e.to_string())
    }

    fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(drop).map_err(|e| self.io(e))
    }

    /// The newest bundle accepted, if any.
    pub fn rollback_mark(&self) -> Result<Option<RollbackMark>, StateError> {
        match self.db.get(KEY_ROLLBACK).map_err(|e| self.io(e))? {
            None => Ok(None),
            Some(v) => RollbackMark::decode(&v)
                .map(Some)
                .ok_or(StateError::Corrupt(self.dir.clone(), "the anti-rollback mark")),
        }
    }

    /// Whether a bundle with this serial and payload hash would be accepted. Writes nothing.
    pub fn check_rollback(&self, serial: u64, payload_sha256: &[u8; 32]) -> Result<(), StateError> {
        match self.rollback_mark()? {
            Some(mark)
                if serial < mark.serial
                    || (serial == mark.serial && &mark.payload_sha256 != payload_sha256) =>
            {
                Err(StateError::Rollback { mark, offered_serial: serial })
            }
            _ => Ok(()),
        }
    }

    /// Checks and records a bundle as the newest accepted, durably. Accepting the current mark
    /// again (a restart on the same bundle) is a no-op.
    pub fn accept_bundle(&self, serial: u64, payload_sha256: &[u8; 32]) -> Result<(), StateError> {
        self.writable()?;
        let new = RollbackMark { serial, payload_sha256: *payload_sha256 }.encode();
        loop {
            let current = self.db.get(KEY_ROLLBACK).map_err(|e| self.io(e))?;
            if let Some(cur) = &current {
                let mark = RollbackMark::decode(cur)
                    .ok_or(StateError::Corrupt(self.dir.clone(), "the anti-rollback mark"))?;
                if serial < mark.serial || (serial == mark.serial && &mark.payload_sha256 != payload_sha256) {
                    return Err(StateError::Rollback { mark, offered_serial: serial });
                }
                if mark.serial == serial {
                    return Ok(());
                }
            }
            // Compare-and-swap so that two concurrent acceptances cannot both pass the check.
            match self.db.compare_and_swap(KEY_ROLLBACK, current, Some(&new[..])).map_err(|e| self.io(e))? {
                Ok(()) => return self.flush(),
                Err(_) => continue,
            }
        }
    }

    /// The clock floor, in Unix seconds (0 when none is recorded).
    pub fn clock_floor(&self) -> Result<u64, StateError> {
        match self.db.get(KEY_CLOCK_FLOOR).map_err(|e| self.io(e))? {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(&v[..])
                .map(u64::from_be_bytes)
                .map_err(|_| StateError::Corrupt(self.dir.clone(), "the clock floor")),
        }
    }

    /// Raises the clock floor to `t` if `t` is newer, durably; returns the floor now in force.
    pub fn raise_clock_floor(&self, t: u64) -> Result<u64, StateError> {
        self.writable()?;
        loop {
            let current = self.db.get(KEY_CLOCK_FLOOR).map_err(|e| self.io(e))?;
            let floor = match &current {
                None => 0,
                Some(v) => <[u8; 8]>::try_from(&v[..])
                    .map(u64::from_be_bytes)
                    .map_err(|_| StateError::Corrupt(self.dir.clone(), "the clock floor"))?,
            };
            if t <= floor {
                return Ok(floor);
            }
            match self
                .db
                .compare_and_swap(KEY_CLOCK_FLOOR, current, Some(&t.to_be_bytes()[..]))
                .map_err(|e| self.io(e))?
            {
                Ok(()) => {
                    self.flush()?;
                    return Ok(t);
                }
                Err(_) => continue,
            }
        }
    }

    fn read_u64(&self, key: &[u8], what: &'static str) -> Result<Option<u64>, StateError> {
        match self.db.get(key).map_err(|e| self.io(e))? {
            None => Ok(None),
            Some(v) => <[u8; 8]>::try_from(&v[..])
                .map(|b| Some(u64::from_be_bytes(b)))
                .map_err(|_| StateError::Corrupt(self.dir.clone(), what)),
        }
    }

    /// The floor a bundle built at `created_at` would leave, if it were recorded now with
    /// [`StateStore::record_bundle_time`]. Writes nothing (for `check`, and to build a reload
    /// before anything is written).
    pub fn floor_for_bundle(&self, created_at: u64) -> Result<u64, StateError> {
        let floor = self.clock_floor()?;
        let previous = self.read_u64(KEY_BUNDLE_CREATED, "the bundle build time")?;
        Ok(next_floor(previous, floor, created_at).0)
    }

    /// Records the build time of the bundle just accepted as the mark (call it after
    /// [`StateStore::accept_bundle`] succeeded, so only the newest serial gets here) and moves
    /// the floor with it, durably. Returns the floor now in force.
    ///
    /// Normally the floor rises to the build time. When the build time is earlier than the one
    /// recorded for the bundle it replaces, the publisher is correcting a build time that ran
    /// ahead (a wrong clock, a file dated in the future), and the floor is reset to the new
    /// build time, even downwards: a floor in the future would otherwise refuse every token as
    /// expired for good. Only a correctly signed bundle with a higher serial reaches this, so an
    /// attacker replaying an old bundle cannot lower the floor.
    pub fn record_bundle_time(&self, created_at: u64) -> Result<u64, StateError> {
        self.writable()?;
        let floor = self.clock_floor()?;
        let previous = self.read_u64(KEY_BUNDLE_CREATED, "the bundle build time")?;
        let (new_floor, corrected) = next_floor(previous, floor, created_at);
        if corrected {
            log::warn!(
                "clock floor reset from {floor} to {new_floor}: this bundle's build time is earlier than the \
                 previous bundle's ({}), which had run ahead",
                previous.unwrap_or(floor)
            );
        }
        // Both values in one atomic batch: a power cut never leaves a lowered floor without its
        // build time (or the reverse).
        let mut batch = sled::Batch::default();
        batch.insert(KEY_BUNDLE_CREATED, &created_at.to_be_bytes()[..]);
        batch.insert(KEY_CLOCK_FLOOR, &new_floor.to_be_bytes()[..]);
        self.db.apply_batch(batch).map_err(|e| self.io(e))?;
        self.flush()?;
        Ok(new_floor)
    }

    /// Where the store lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The floor after recording a bundle built at `created_at`, given the build time recorded for
/// the previous bundle and the floor in force; and whether it was a correction (a reset that may
/// lower the floor). A store written before build times were recorded has none: the first
/// bundle recorded then sets it without a correction, so an upgrade never lowers a floor.
fn next_floor(previous_created: Option<u64>, floor: u64, created_at: u64) -> (u64, bool) {
    match previous_created {
        Some(prev) if created_at < prev => (created_at, true),
        _ => (floor.max(created_at), false),
    }
}

/// Creates a directory only this user can enter.
fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new().mode(0o700).create(path)
}

/// A new private directory under `TMPDIR` (tmpfs on most boards: the copy does not touch the
/// flash).
fn private_temp_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let mut last = None;
    for n in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!(".gatelet-state-copy-{}-{nanos:x}-{n}", std::process::id()));
        match create_private_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free name")))
}

#[derive(Debug)]
enum CopyError {
    /// The source changed while it was copied (a write of the daemon).
    Changed,
    TooLarge(u64),
    Io(String, io::Error),
}

/// Regular files under `dir` (relative paths, sorted) with their lengths; symbolic links and
/// special files are left out (sled makes none, and a link is never followed).
fn list_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>, CopyError> {
    fn walk(root: &Path, rel: &Path, depth: u32, out: &mut Vec<(PathBuf, u64)>) -> Result<(), CopyError> {
        let here = root.join(rel);
        let entries =
            fs::read_dir(&here).map_err(|e| CopyError::Io(format!("cannot list {}", here.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| CopyError::Io(format!("cannot list {}", here.display()), e))?;
            let rel = rel.join(entry.file_name());
            let meta = match fs::symlink_metadata(root.join(&rel)) {
                Ok(m) => m,
                // Removed since the listing (sled replacing a snapshot): a change.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CopyError::Changed),
                Err(e) => return Err(CopyError::Io(format!("cannot stat {}", root.join(&rel).display()), e)),
            };
            if meta.is_dir() && depth < COPY_MAX_DEPTH {
                walk(root, &rel, depth + 1, out)?;
            } else if meta.is_file() {
                out.push((rel, meta.len()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), 0, &mut out)?;
    out.sort();
    Ok(out)
}

/// Whether two readers yield the same bytes.
fn same_bytes(mut a: impl Read, mut b: impl Read) -> io::Result<bool> {
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = a.read(&mut ba)?;
        if n == 0 {
            return Ok(b.read(&mut bb[..1])? == 0);
        }
        let mut got = 0;
        while got < n {
            match b.read(&mut bb[got..n])? {
                0 => return Ok(false),
                m => got += m,
            }
        }
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Copies the files of `from` into the empty directory `to`, then checks that the source still
/// holds the same files with the same bytes.
fn copy_consistent(from: &Path, to: &Path) -> Result<(), CopyError> {
    let files = list_files(from)?;
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    if total > MAX_COPY_BYTES {
        return Err(CopyError::TooLarge(total));
    }
    let io_err = |what: &str, p: &Path| {
        let what = format!("{what} {}", p.display());
        move |e| CopyError::Io(what.clone(), e)
    };
    for (rel, _) in &files {
        let (src, dst) = (from.join(rel), to.join(rel));
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        let mut input = match fs::File::open(&src) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CopyError::Changed),
            Err(e) => return Err(CopyError::Io(format!("cannot read {}", src.display()), e)),
        };
        let mut output = fs::File::create(&dst).map_err(io_err("cannot create", &dst))?;
        // Never more than listed: a file growing meanwhile is a change, seen below.
        io::copy(&mut (&mut input).take(MAX_COPY_BYTES), &mut output).map_err(io_err("cannot copy", &src))?;
    }
    if list_files(from)? != files {
        return Err(CopyError::Changed);
    }
    for (rel, _) in &files {
        let (src, dst) = (from.join(rel), to.join(rel));
        let source = match fs::File::open(&src) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CopyError::Changed),
            Err(e) => return Err(CopyError::Io(format!("cannot read {}", src.display()), e)),
        };
        let copied = fs::File::open(&dst).map_err(io_err("cannot read", &dst))?;
        if !same_bytes(source, copied).map_err(io_err("cannot compare", &src))? {
            return Err(CopyError::Changed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gatelet-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn rollback_rules_survive_reopen() {
        let dir = temp("rules");
        {
            let s = StateStore::open(&dir).expect("opens");
            assert_eq!(s.rollback_mark().expect("reads"), None);
            s.accept_bundle(5, &[1; 32]).expect("first bundle");
            s.accept_bundle(5, &[1; 32]).expect("same bundle again");
            assert!(matches!(s.accept_bundle(5, &[2; 32]), Err(StateError::Rollback { .. })));
            assert!(matches!(s.accept_bundle(4, &[1; 32]), Err(StateError::Rollback { .. })));
            s.accept_bundle(6, &[3; 32]).expect("newer");
        }
        let s = StateStore::open(&dir).expect("reopens");
        assert_eq!(
            s.rollback_mark().expect("reads"),
            Some(RollbackMark { serial: 6, payload_sha256: [3; 32] })
        );
        assert!(s.check_rollback(5, &[1; 32]).is_err());
        assert!(s.check_rollback(7, &[0; 32]).is_ok());
        drop(s);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_newer_bundle_can_correct_a_build_time_that_ran_ahead() {
        let dir = temp("correct");
        let s = StateStore::open(&dir).expect("opens");
        assert_eq!(s.record_bundle_time(1_000).expect("first"), 1_000);
        assert_eq!(s.raise_clock_floor(1_500).expect("time passes"), 1_500);
        assert_eq!(
            s.record_bundle_time(1_200).expect("newer bundle, built later"),
            1_500,
            "never lowered by a later build"
        );
        // A bundle built with a clock in 2036 raises the floor far ahead…
        assert_eq!(s.record_bundle_time(2_082_758_400).expect("future"), 2_082_758_400);
        assert_eq!(s.raise_clock_floor(2_082_758_460).expect("runs"), 2_082_758_460);
        // …and the next bundle, built on a correct clock, brings it back.
        assert_eq!(s.floor_for_bundle(1_300).expect("preview"), 1_300, "the preview writes nothing");
        assert_eq!(s.clock_floor().expect("reads"), 2_082_758_460);
        assert_eq!(s.record_bundle_time(1_300).expect("correction"), 1_300);
        drop(s);
        let s = StateStore::open(&dir).expect("reopens");
        assert_eq!(s.clock_floor().expect("durable"), 1_300);
        // From there the floor only rises again.
        assert_eq!(s.record_bundle_time(1_300).expect("same bundle, restart"), 1_300);
        assert_eq!(s.raise_clock_floor(1_200).expect("keeps"), 1_300);
        drop(s);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_store_without_a_recorded_build_time_is_never_lowered_on_upgrade() {
        let dir = temp("upgrade");
        let s = StateStore::open(&dir).expect("opens");
        s.raise_clock_floor(5_000).expect("an older gatelet's floor");
        assert_eq!(s.record_bundle_time(4_000).expect("first record"), 5_000);
        assert_eq!(s.record_bundle_time(3_000).expect("a correction from there on"), 3_000);
        drop(s);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn clock_floor_only_rises() {
        let dir = temp("clock");
        let s = StateStore::open(&dir).expect("opens");
        assert_eq!(s.clock_floor().expect("reads"), 0);
        assert_eq!(s.raise_clock_floor(100).expect("raises"), 100);
        assert_eq!(s.raise_clock_floor(50).expect("keeps"), 100);
        drop(s);
        let s = StateStore::open(&dir).expect("reopens");
        assert_eq!(s.clock_floor().expect("reads"), 100);
        drop(s);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_held_store_is_read_through_a_private_read_only_copy() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp("copy");
        let live = StateStore::open(&dir).expect("opens");
        live.accept_bundle(7, &[7; 32]).expect("accepts");
        live.raise_clock_floor(1234).expect("raises");
        // Held: sled's lock is per open file, so this process is refused like any other.
        assert!(matches!(
            sled_config(&dir).open().map_err(|e| open_error(&dir, &e)),
            Err(StateError::Busy(_))
        ));
        let copy = StateStore::open_copy(&dir).expect("a copy opens");
        assert!(copy.is_copy() && !live.is_copy());
        assert_eq!(
            copy.rollback_mark().expect("reads"),
            Some(RollbackMark { serial: 7, payload_sha256: [7; 32] })
        );
        assert_eq!(copy.clock_floor().expect("reads"), 1234);
        assert!(copy.check_rollback(6, &[6; 32]).is_err());
        assert!(copy.accept_bundle(8, &[8; 32]).is_err(), "a copy is never written");
        assert!(copy.raise_clock_floor(5000).is_err(), "a copy is never written");
        let tmp = copy.copy.as_ref().map(|c| c.0.clone()).expect("a temporary directory");
        assert_eq!(fs::metadata(&tmp).expect("stat").permissions().mode() & 0o777, 0o700);
        assert!(tmp.starts_with(std::env::temp_dir()) && !tmp.starts_with(&dir));
        drop(copy);
        assert!(!tmp.exists(), "the copy is removed");
        assert_eq!(live.rollback_mark().expect("reads").map(|m| m.serial), Some(7), "the store untouched");
        // Too large to copy: refused, not read partially.
        fs::File::create(dir.join("padding"))
            .and_then(|f| f.set_len(MAX_COPY_BYTES + 1))
            .expect("sparse file");
        let e = StateStore::open_copy(&dir).expect_err("too large");
        assert!(matches!(e, StateError::CopyUnreadable(..)), "{e}");
        assert!(e.to_string().contains("stop gatelet"), "{e}");
        drop(live);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_copy_is_checked_against_its_source() {
        let (from, to) = (temp("copy-from"), temp("copy-to"));
        fs::create_dir_all(from.join("blobs")).expect("mkdir");
        fs::write(from.join("db"), b"log").expect("write");
        fs::write(from.join("blobs/1"), b"blob").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", from.join("link")).expect("symlink");
        fs::create_dir_all(&to).expect("mkdir");
        copy_consistent(&from, &to).expect("copies");
        assert_eq!(fs::read(to.join("blobs/1")).expect("copied"), b"blob");
        assert!(!to.join("link").exists(), "links are not followed");
        assert!(same_bytes(&b"abc"[..], &b"abc"[..]).expect("reads"));
        assert!(!same_bytes(&b"abc"[..], &b"abd"[..]).expect("reads"));
        assert!(!same_bytes(&b"abc"[..], &b"abcd"[..]).expect("reads"));
        assert!(!same_bytes(&b"abcd"[..], &b"abc"[..]).expect("reads"));
        fs::remove_dir_all(&from).expect("cleanup");
        fs::remove_dir_all(&to).expect("cleanup");
    }

    #[test]
    fn corrupt_value_is_an_error_not_a_reset() {
        let dir = temp("corrupt");
        {
            let db = sled::Config::new().path(&dir).open().expect("raw sled");
            db.insert(KEY_ROLLBACK, &b"short"[..]).expect("insert");
            db.flush().expect("flush");
        }
        let e = StateStore::open(&dir).expect_err("corrupt mark refused");
        assert!(matches!(e, StateError::Corrupt(..)), "{e}");
        assert!(e.to_string().contains("move the directory aside"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
