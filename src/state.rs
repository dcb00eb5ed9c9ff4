//! The device's small durable state, in two small files of its own format; the only module that
//! writes them.
//!
//! It holds two facts, each durable (fsynced) before anyone relies on it:
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
//! **On disk.** All the facts fit in one fixed-size record ([`RECORD_LEN`] bytes: a magic, the
//! format version, a sequence number, the facts, and a SHA-256 of all that). Two slot files,
//! `state.0` and `state.1`, hold the last two records; record `n` always lives in slot `n % 2`.
//! A change writes the next record over the *older* slot and fsyncs it before the call returns,
//! so the newer slot is never touched while it is the only copy of the truth: a power cut during
//! a write leaves at worst a torn older slot, whose checksum fails, and the other slot's record,
//! which is the last one acknowledged. A slot file that does not exist yet is created whole
//! (written beside under `state.N.new`, fsynced, renamed, directory fsynced), so a slot that exists
//! always held a complete record once. Reading takes the valid record with the highest sequence
//! number. A write touches one 112-byte block of the flash and no directory, and only when a fact
//! changes.
//!
//! A store whose slots exist but where none holds a valid record, or that holds a record of the
//! wrong shape, is an error naming the directory and the recovery; it is never reset silently,
//! since a silent reset would reopen the door to rollback. Recovery (README, "State directory"):
//! stop gatelet, move the directory aside, start again; the bundle installed at `bundle.path`
//! sets the new mark. (Someone able to write the directory can also write a valid older record,
//! since the checksum is not a MAC: the store's protection is the directory's ownership and mode.)
//!
//! **A store from an older gatelet** (sled's files `conf`, `db`, `blobs/`, `snap.*`, and no slot):
//! its facts are not carried over; gatelet logs one warning line naming the directory and starts
//! as a new store, so the bundle installed at `bundle.path` sets the mark, as it did when that
//! store was first made, and the floor restarts from that bundle's build time and the wall clock.
//! sled's files are left in place (an older gatelet put back on the device still finds them) and
//! can be removed.
//!
//! **Exclusive use.** A store is opened by one process at a time: an advisory `flock` on the
//! directory, held while the [`StateStore`] lives and released by the kernel when the process
//! exits. **Reading beside a running daemon** (`gatelet check` while `gatelet run` holds the
//! store) needs no lock: [`StateStore::open_copy`] reads the two slots, read-only by this module's
//! rules ([`StateStore::accept_bundle`] and the floor updates refuse on it). A slot caught in the
//! middle of a write fails its checksum and the other slot's record is read, which is the state
//! the daemon had acknowledged just before; the read is retried ([`READ_ATTEMPTS`]) if neither
//! slot is readable at that instant. What it shows is the store as of the read (a bundle the
//! daemon accepts a moment later is, as for any check, a later event).

use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sha2::{Digest as _, Sha256};

/// The two slot files, and the names each is first written under before it exists.
const SLOT_NAMES: [&str; 2] = ["state.0", "state.1"];
const NEW_SLOT_NAMES: [&str; 2] = ["state.0.new", "state.1.new"];
/// Files of a sled store from an older gatelet (see the module doc).
const LEGACY_SLED_FILES: [&str; 2] = ["conf", "db"];

const MAGIC: &[u8; 8] = b"GLTSTATE";
/// Version of the record layout below; a record of another version is refused, never guessed at.
const FORMAT_VERSION: u32 = 1;
/// magic 8 | version 4 | flags 4 | sequence 8 | mark serial 8 | mark payload hash 32 |
/// clock floor 8 | bundle build time 8 | SHA-256 of the 80 bytes before it 32. Big-endian.
pub const RECORD_LEN: usize = 112;
const BODY_LEN: usize = RECORD_LEN - 32;
/// Flags: which of the optional facts the record holds.
const HAS_MARK: u32 = 1;
const HAS_BUNDLE_CREATED: u32 = 2;
/// Reads of both slots tried by [`StateStore::open_copy`] when neither is valid at that instant
/// (the daemon wrote one while the other was read, twice): writes are rare (a bundle accepted,
/// the hourly clock persist), so a second read practically always finds them still.
pub const READ_ATTEMPTS: u32 = 3;

/// The newest bundle accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackMark {
    pub serial: u64,
    pub payload_sha256: [u8; 32],
}

/// Everything the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Facts {
    mark: Option<RollbackMark>,
    /// Unix seconds; 0 when none is recorded.
    clock_floor: u64,
    bundle_created_at: Option<u64>,
}

/// One slot's content: the facts and the sequence number that orders the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Record {
    seq: u64,
    facts: Facts,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// What one slot file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Missing,
    /// A torn write, or bytes that are not a record.
    Invalid,
    /// A record of another format version (a newer gatelet's).
    OtherVersion(u32),
    Valid(Record),
}

impl Record {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        let f = &self.facts;
        let flags = if f.mark.is_some() { HAS_MARK } else { 0 }
            | if f.bundle_created_at.is_some() { HAS_BUNDLE_CREATED } else { 0 };
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[12..16].copy_from_slice(&flags.to_be_bytes());
        out[16..24].copy_from_slice(&self.seq.to_be_bytes());
        if let Some(mark) = &f.mark {
            out[24..32].copy_from_slice(&mark.serial.to_be_bytes());
            out[32..64].copy_from_slice(&mark.payload_sha256);
        }
        out[64..72].copy_from_slice(&f.clock_floor.to_be_bytes());
        out[72..80].copy_from_slice(&f.bundle_created_at.unwrap_or(0).to_be_bytes());
        let sum = Sha256::digest(&out[..BODY_LEN]);
        out[BODY_LEN..].copy_from_slice(&sum);
        out
    }

    /// Reads a slot's bytes. Unknown flags, or an absent fact with bytes set, are not a record
    /// this version wrote: [`Slot::Invalid`].
    fn decode(bytes: &[u8]) -> Slot {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Slot::Invalid;
        }
        match be_u32(bytes, 8) {
            FORMAT_VERSION => {}
            // Refused, never guessed at: a torn write of this version never changes these bytes.
            v => return Slot::OtherVersion(v),
        }
        if bytes.len() != RECORD_LEN || Sha256::digest(&bytes[..BODY_LEN])[..] != bytes[BODY_LEN..] {
            return Slot::Invalid;
        }
        let flags = be_u32(bytes, 12);
        if flags & !(HAS_MARK | HAS_BUNDLE_CREATED) != 0 {
            return Slot::Invalid;
        }
        let mark = if flags & HAS_MARK != 0 {
            let mut payload_sha256 = [0u8; 32];
            payload_sha256.copy_from_slice(&bytes[32..64]);
            Some(RollbackMark { serial: be_u64(bytes, 24), payload_sha256 })
        } else if bytes[24..64].iter().any(|&b| b != 0) {
            return Slot::Invalid;
        } else {
            None
        };
        let bundle_created_at = match be_u64(bytes, 72) {
            t if flags & HAS_BUNDLE_CREATED != 0 => Some(t),
            0 => None,
            _ => return Slot::Invalid,
        };
        Slot::Valid(Record {
            seq: be_u64(bytes, 16),
            facts: Facts { mark, clock_floor: be_u64(bytes, 64), bundle_created_at },
        })
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
    /// A running gatelet holds the store and its slots could not be read beside it: the device
    /// or the operator (a slot unreadable, or being written during each read).
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
                "state store {} is in use by a running gatelet and could not be read beside it ({e}); stop gatelet and check again",
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

/// Why the slots could not be read.
#[derive(Debug)]
enum ReadError {
    Io(String, io::Error),
    Corrupt(&'static str),
    OtherVersion(u32),
    /// Slots exist and none holds a valid record (or a read beside a writer caught both mid-write).
    NoValidRecord,
}

impl ReadError {
    fn into_state_error(self, dir: &Path) -> StateError {
        match self {
            ReadError::Io(what, e) if e.kind() == io::ErrorKind::PermissionDenied => {
                StateError::Denied(dir.to_owned(), format!("{what}: {e}"))
            }
            ReadError::Io(what, e) => StateError::Open(dir.to_owned(), format!("{what}: {e}")),
            ReadError::Corrupt(what) => StateError::Corrupt(dir.to_owned(), what),
            ReadError::OtherVersion(v) => StateError::Open(
                dir.to_owned(),
                format!(
                    "a slot holds state format {v}, which this gatelet does not read (written by a newer gatelet?)"
                ),
            ),
            ReadError::NoValidRecord => StateError::Corrupt(dir.to_owned(), "each copy of the state"),
        }
    }
}

/// Reads one slot file. A slot is never large: anything longer than a record is not one.
fn read_slot(dir: &Path, slot: usize) -> Result<Slot, ReadError> {
    let path = dir.join(SLOT_NAMES[slot]);
    let io_err = |e| ReadError::Io(format!("cannot read {}", SLOT_NAMES[slot]), e);
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Slot::Missing),
        Err(e) => return Err(io_err(e)),
        // A link or a special file is never followed or opened (a FIFO would block the open).
        Ok(m) if !m.is_file() => return Err(io_err(io::Error::other("not a regular file"))),
        Ok(_) => {}
    }
    let mut bytes = Vec::with_capacity(RECORD_LEN + 1);
    match fs::File::open(&path) {
        Ok(f) => f.take(RECORD_LEN as u64 + 1).read_to_end(&mut bytes).map_err(io_err)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Slot::Missing),
        Err(e) => return Err(io_err(e)),
    };
    Ok(Record::decode(&bytes))
}

/// The newest valid record of the two slots; `None` for a store never written.
fn read_record(dir: &Path) -> Result<Option<Record>, ReadError> {
    let slots = [read_slot(dir, 0)?, read_slot(dir, 1)?];
    let mut newest: Option<Record> = None;
    for (i, slot) in slots.iter().enumerate() {
        match *slot {
            Slot::OtherVersion(v) => return Err(ReadError::OtherVersion(v)),
            Slot::Valid(r) if slot_of(r.seq) != i => return Err(ReadError::Corrupt("the slot numbering")),
            Slot::Valid(r) if newest.is_none_or(|n| r.seq > n.seq) => newest = Some(r),
            _ => {}
        }
    }
    match (newest, slots) {
        (Some(r), _) => Ok(Some(r)),
        (None, [Slot::Missing, Slot::Missing]) => Ok(None),
        (None, _) => Err(ReadError::NoValidRecord),
    }
}

/// The slot record `seq` lives in.
fn slot_of(seq: u64) -> usize {
    usize::from(seq % 2 == 1)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// A step of a write, seen by the crash-point tests.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone)]
enum Step {
    /// Bytes written to a file, not yet synced.
    Written(PathBuf),
    /// A file's data synced.
    Synced(PathBuf),
    /// A rename, durable once the directory is synced.
    Renamed(PathBuf, PathBuf),
    DirSynced,
}

#[cfg(test)]
type StepHook = Box<dyn FnMut(&Step) + Send>;

/// What the lock guards.
struct Inner {
    record: Record,
    #[cfg(test)]
    hook: Option<StepHook>,
}

/// The file operations of a write, each seen by the crash-point tests as it completes (an
/// operation left out or moved is seen as such).
impl Inner {
    fn write(&mut self, file: &fs::File, path: &Path, bytes: &[u8]) -> io::Result<()> {
        file.write_all_at(bytes, 0)?;
        self.note(|| Step::Written(path.to_owned()));
        Ok(())
    }

    fn sync(&mut self, file: &fs::File, path: &Path) -> io::Result<()> {
        file.sync_data()?;
        self.note(|| Step::Synced(path.to_owned()));
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)?;
        self.note(|| Step::Renamed(from.to_owned(), to.to_owned()));
        Ok(())
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        fsync_dir(dir)?;
        self.note(|| Step::DirSynced);
        Ok(())
    }

    #[cfg(test)]
    fn note(&mut self, step: impl FnOnce() -> Step) {
        if let Some(hook) = &mut self.hook {
            hook(&step());
        }
    }

    #[cfg(not(test))]
    fn note(&mut self, _: impl FnOnce() -> Step) {}
}

/// The durable state of one device.
pub struct StateStore {
    /// The store's directory.
    dir: PathBuf,
    /// The directory, open and `flock`ed while this store lives; `None` for a read beside a
    /// running daemon ([`StateStore::open_copy`]), which writes nothing.
    lock: Option<fs::File>,
    /// The newest record, as on disk: this process is the only writer while it holds the lock.
    inner: Mutex<Inner>,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // try_lock: formatting a store while one of its writes holds the lock must not deadlock.
        let record = self.inner.try_lock().map(|inner| inner.record).ok();
        f.debug_struct("StateStore")
            .field("dir", &self.dir)
            .field("read_only", &self.lock.is_none())
            .field("record", &record)
            .finish()
    }
}

fn open_error(dir: &Path, e: &io::Error) -> StateError {
    match e.kind() {
        io::ErrorKind::PermissionDenied => StateError::Denied(dir.to_owned(), e.to_string()),
        _ => StateError::Open(dir.to_owned(), e.to_string()),
    }
}

impl StateStore {
    /// Opens (or creates) the store in `dir`. A store another process holds is
    /// [`StateError::Busy`]. Writes nothing: a new store's first slot is written by its first
    /// change.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        let existed = dir.is_dir();
        fs::create_dir_all(dir).map_err(|e| open_error(dir, &e))?;
        if !existed {
            // The directory's own entry, so that the first fact written is not lost with it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent).map_err(|e| open_error(dir, &e))?;
            }
        }
        let lock = fs::File::open(dir).map_err(|e| open_error(dir, &e))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(StateError::Busy(dir.to_owned())),
            Err(e) => return Err(open_error(dir, &io::Error::from(e))),
        }
        let record = read_record(dir).map_err(|e| e.into_state_error(dir))?;
        if record.is_none() && LEGACY_SLED_FILES.iter().any(|f| dir.join(f).exists()) {
            log::warn!(
                "state store {}: holds a store of an older gatelet (sled), which is not read: the \
                 anti-rollback mark starts again from the bundle installed now; sled's files (conf, db, \
                 blobs/, snap.*) are left in place and can be removed",
                dir.display()
            );
        }
        Ok(StateStore::with(dir, Some(lock), record.unwrap_or_default()))
    }

    fn with(dir: &Path, lock: Option<fs::File>, record: Record) -> StateStore {
        StateStore {
            dir: dir.to_owned(),
            lock,
            inner: Mutex::new(Inner {
                record,
                #[cfg(test)]
                hook: None,
            }),
        }
    }

    /// Reads the store in `dir` that a running gatelet holds (see the module doc): read-only,
    /// without its lock. A slot that cannot be read is [`StateError::CopyUnreadable`]; a store
    /// that holds no valid record after [`READ_ATTEMPTS`] reads is corrupt, as for `open`.
    pub fn open_copy(dir: &Path) -> Result<StateStore, StateError> {
        let mut attempt = 0;
        let record = loop {
            attempt += 1;
            match read_record(dir) {
                Ok(r) => break r.unwrap_or_default(),
                Err(ReadError::NoValidRecord) if attempt < READ_ATTEMPTS => std::thread::yield_now(),
                Err(ReadError::Io(what, e)) => {
                    return Err(StateError::CopyUnreadable(dir.to_owned(), format!("{what}: {e}")));
                }
                Err(e) => return Err(e.into_state_error(dir)),
            }
        };
        Ok(StateStore::with(dir, None, record))
    }

    /// Whether this is a read beside a running daemon ([`StateStore::open_copy`]).
    pub fn is_copy(&self) -> bool {
        self.lock.is_none()
    }

    fn writable(&self) -> Result<(), StateError> {
        match &self.lock {
            Some(_) => Ok(()),
            None => {
                Err(StateError::Io(self.dir.clone(), "a read beside a running gatelet is read-only".into()))
            }
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held left the record as it was before the write (the record
        // is replaced only once the write is durable), so the value is still the truth.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn facts(&self) -> Facts {
        self.inner().record.facts
    }

    /// Makes `facts` the store's content, durably, unless they already are. Called with the lock
    /// held, so check and write are one step for the threads of this process.
    fn commit(&self, inner: &mut Inner, facts: Facts) -> Result<(), StateError> {
        self.writable()?;
        if inner.record.facts == facts {
            return Ok(());
        }
        let seq = inner
            .record
            .seq
            .checked_add(1)
            .ok_or(StateError::Corrupt(self.dir.clone(), "the record sequence number"))?;
        let next = Record { seq, facts };
        self.write_slot(inner, slot_of(seq), &next.encode()).map_err(|e| {
            StateError::Io(self.dir.clone(), format!("cannot write {}: {e}", SLOT_NAMES[slot_of(seq)]))
        })?;
        inner.record = next;
        Ok(())
    }

    /// Writes a record into a slot, durably: over the slot in place when it exists (it holds the
    /// older record), else as a new file made whole before it takes the slot's name.
    fn write_slot(&self, inner: &mut Inner, slot: usize, bytes: &[u8; RECORD_LEN]) -> io::Result<()> {
        let path = self.dir.join(SLOT_NAMES[slot]);
        match fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => {
                inner.write(&file, &path, bytes)?;
                if file.metadata()?.len() != RECORD_LEN as u64 {
                    file.set_len(RECORD_LEN as u64)?;
                }
                inner.sync(&file, &path)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let new = self.dir.join(NEW_SLOT_NAMES[slot]);
                let file =
                    fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&new)?;
                inner.write(&file, &new, bytes)?;
                inner.sync(&file, &new)?;
                inner.rename(&new, &path)?;
                inner.sync_dir(&self.dir)
            }
            Err(e) => Err(e),
        }
    }

    /// The newest bundle accepted, if any.
    pub fn rollback_mark(&self) -> Result<Option<RollbackMark>, StateError> {
        Ok(self.facts().mark)
    }

    /// Whether a bundle with this serial and payload hash would be accepted. Writes nothing.
    pub fn check_rollback(&self, serial: u64, payload_sha256: &[u8; 32]) -> Result<(), StateError> {
        check_mark(self.facts().mark, serial, payload_sha256)
    }

    /// Checks and records a bundle as the newest accepted, durably. Accepting the current mark
    /// again (a restart on the same bundle) writes nothing.
    pub fn accept_bundle(&self, serial: u64, payload_sha256: &[u8; 32]) -> Result<(), StateError> {
        self.writable()?;
        let mut inner = self.inner();
        let mut facts = inner.record.facts;
        check_mark(facts.mark, serial, payload_sha256)?;
        facts.mark = Some(RollbackMark { serial, payload_sha256: *payload_sha256 });
        self.commit(&mut inner, facts)
    }

    /// The clock floor, in Unix seconds (0 when none is recorded).
    pub fn clock_floor(&self) -> Result<u64, StateError> {
        Ok(self.facts().clock_floor)
    }

    /// Raises the clock floor to `t` if `t` is newer, durably; returns the floor now in force.
    pub fn raise_clock_floor(&self, t: u64) -> Result<u64, StateError> {
        self.writable()?;
        let mut inner = self.inner();
        let mut facts = inner.record.facts;
        if t <= facts.clock_floor {
            return Ok(facts.clock_floor);
        }
        facts.clock_floor = t;
        self.commit(&mut inner, facts)?;
        Ok(t)
    }

    /// The floor a bundle built at `created_at` would leave, if it were recorded now with
    /// [`StateStore::record_bundle_time`]. Writes nothing (for `check`, and to build a reload
    /// before anything is written).
    pub fn floor_for_bundle(&self, created_at: u64) -> Result<u64, StateError> {
        let facts = self.facts();
        Ok(next_floor(facts.bundle_created_at, facts.clock_floor, created_at).0)
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
        let mut inner = self.inner();
        let mut facts = inner.record.facts;
        let (new_floor, corrected) = next_floor(facts.bundle_created_at, facts.clock_floor, created_at);
        if corrected {
            log::warn!(
                "clock floor reset from {} to {new_floor}: this bundle's build time is earlier than the \
                 previous bundle's ({}), which had run ahead",
                facts.clock_floor,
                facts.bundle_created_at.unwrap_or(facts.clock_floor)
            );
        }
        // Both values in one record: a power cut never leaves a lowered floor without its build
        // time (or the reverse).
        facts.bundle_created_at = Some(created_at);
        facts.clock_floor = new_floor;
        self.commit(&mut inner, facts)?;
        Ok(new_floor)
    }

    /// Where the store lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether a bundle with this serial and payload hash may follow the mark.
fn check_mark(mark: Option<RollbackMark>, serial: u64, payload_sha256: &[u8; 32]) -> Result<(), StateError> {
    match mark {
        Some(mark)
            if serial < mark.serial || (serial == mark.serial && &mark.payload_sha256 != payload_sha256) =>
        {
            Err(StateError::Rollback { mark, offered_serial: serial })
        }
        _ => Ok(()),
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

    /// Every file of a directory with its bytes.
    fn contents(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
        let mut out: Vec<_> = fs::read_dir(dir)
            .expect("lists")
            .map(|e| {
                let e = e.expect("entry");
                (e.file_name(), fs::read(e.path()).unwrap_or_default())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_held_store_is_refused_to_others_and_read_beside_its_holder() {
        let dir = temp("held");
        let live = StateStore::open(&dir).expect("opens");
        live.accept_bundle(7, &[7; 32]).expect("accepts");
        live.raise_clock_floor(1234).expect("raises");
        // Held: the lock is per open file, so this process is refused like any other.
        assert!(matches!(StateStore::open(&dir), Err(StateError::Busy(_))));
        let before = contents(&dir);
        let copy = StateStore::open_copy(&dir).expect("read beside the holder");
        assert!(copy.is_copy() && !live.is_copy());
        assert_eq!(
            copy.rollback_mark().expect("reads"),
            Some(RollbackMark { serial: 7, payload_sha256: [7; 32] })
        );
        assert_eq!(copy.clock_floor().expect("reads"), 1234);
        assert!(copy.check_rollback(6, &[6; 32]).is_err());
        assert!(copy.accept_bundle(8, &[8; 32]).is_err(), "never written");
        assert!(copy.raise_clock_floor(5000).is_err(), "never written");
        assert!(copy.record_bundle_time(5000).is_err(), "never written");
        drop(copy);
        assert_eq!(contents(&dir), before, "reading beside wrote nothing");
        // A slot that cannot be read: said, not taken for an empty store.
        fs::rename(dir.join("state.1"), dir.join("aside")).expect("move");
        fs::create_dir(dir.join("state.1")).expect("mkdir");
        let e = StateStore::open_copy(&dir).expect_err("unreadable");
        assert!(matches!(e, StateError::CopyUnreadable(..)), "{e}");
        assert!(e.to_string().contains("stop gatelet"), "{e}");
        fs::remove_dir(dir.join("state.1")).expect("rmdir");
        fs::rename(dir.join("aside"), dir.join("state.1")).expect("move back");
        // Released with the store, at once: no retry needed.
        drop(live);
        let s = StateStore::open(&dir).expect("reopens at once");
        assert_eq!(s.clock_floor().expect("reads"), 1234);
        drop(s);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn facts(serial: u64, floor: u64) -> Facts {
        Facts {
            mark: Some(RollbackMark {
                serial,
                payload_sha256: [u8::try_from(serial % 256).expect("byte"); 32],
            }),
            clock_floor: floor,
            bundle_created_at: Some(floor / 2),
        }
    }

    #[test]
    fn a_record_round_trips_and_any_bit_flip_is_caught() {
        for r in [Record::default(), Record { seq: 9, facts: facts(3, 1_700_000_000) }] {
            let bytes = r.encode();
            assert_eq!(Record::decode(&bytes), Slot::Valid(r));
            for bit in 0..RECORD_LEN * 8 {
                let mut flipped = bytes;
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    matches!(Record::decode(&flipped), Slot::Invalid | Slot::OtherVersion(_)),
                    "bit {bit} flipped went unseen"
                );
            }
            for len in [0, 11, 12, BODY_LEN, RECORD_LEN - 1] {
                assert_eq!(Record::decode(&bytes[..len]), Slot::Invalid, "{len} bytes");
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert_eq!(Record::decode(&longer), Slot::Invalid);
        }
    }

    fn write_slots(dir: &Path, slots: [Option<&[u8]>; 2]) {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).expect("mkdir");
        for (i, bytes) in slots.iter().enumerate() {
            if let Some(b) = bytes {
                fs::write(dir.join(SLOT_NAMES[i]), b).expect("write");
            }
        }
    }

    #[test]
    fn the_newest_valid_slot_is_read_and_a_store_without_one_is_an_error_not_a_reset() {
        let dir = temp("slots");
        let older = Record { seq: 4, facts: facts(1, 100) }.encode();
        let newer = Record { seq: 5, facts: facts(2, 200) }.encode();
        let mut torn = newer;
        torn[40..].copy_from_slice(&older[40..]);
        let read = |slots| {
            write_slots(&dir, slots);
            StateStore::open(&dir).map(|s| s.facts())
        };
        assert_eq!(read([Some(&older), Some(&newer)]).expect("both"), facts(2, 200));
        assert_eq!(read([Some(&older), Some(&torn)]).expect("newer torn"), facts(1, 100));
        assert_eq!(read([Some(&older), None]).expect("one slot"), facts(1, 100));
        for (slots, what) in [
            ([Some(&torn[..]), None], "the only slot torn"),
            ([Some(&[0xA5; RECORD_LEN][..]), Some(&[][..])], "both slots garbage"),
            ([Some(&newer[..]), Some(&older[..])], "records in the wrong slots"),
        ] {
            let e = read(slots).expect_err(what);
            assert!(matches!(e, StateError::Corrupt(..)), "{what}: {e}");
            assert!(e.to_string().contains("move the directory aside"), "{e}");
            // A read beside a daemon says the same, after its retries.
            let e = StateStore::open_copy(&dir).expect_err(what);
            assert!(matches!(e, StateError::Corrupt(..)), "{what}: {e}");
        }
        let mut future = Record { seq: 6, facts: facts(3, 300) }.encode();
        future[8..12].copy_from_slice(&2u32.to_be_bytes());
        let e = read([Some(&future), Some(&newer)]).expect_err("a newer format");
        assert!(e.to_string().contains("state format 2"), "{e}");
        // Nothing was rewritten by any of these opens.
        assert_eq!(fs::read(dir.join("state.0")).expect("reads"), future);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_store_of_an_older_gatelet_starts_again_and_is_left_in_place() {
        let dir = temp("sled");
        // sled 0.34's files (their content is never read).
        fs::create_dir_all(dir.join("blobs")).expect("mkdir");
        fs::write(dir.join("conf"), b"segment_size: 524288\nuse_compression: false\n").expect("write");
        fs::write(dir.join("db"), [0xA5; 512]).expect("write");
        fs::write(dir.join("snap.0000000000000060"), [1; 64]).expect("write");
        let sled_files = contents(&dir);
        let s = StateStore::open(&dir).expect("opens");
        assert_eq!(s.rollback_mark().expect("reads"), None, "the installed bundle sets the mark");
        assert_eq!(s.clock_floor().expect("reads"), 0);
        s.accept_bundle(3, &[3; 32]).expect("accepts");
        drop(s);
        let s = StateStore::open(&dir).expect("reopens");
        assert_eq!(s.rollback_mark().expect("reads").map(|m| m.serial), Some(3));
        assert!(s.check_rollback(2, &[2; 32]).is_err());
        drop(s);
        let left: Vec<_> =
            contents(&dir).into_iter().filter(|(n, _)| !n.to_string_lossy().starts_with("state.")).collect();
        assert_eq!(left, sled_files, "sled's files untouched");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// What a power cut could leave of the two slots, followed step by step through a write
    /// ([`Step`]): a file written and not yet synced may hold its old bytes, its new bytes or a
    /// mix; a rename, or a file created, not yet followed by a directory sync may not have
    /// happened.
    struct PowerCut {
        dir: PathBuf,
        /// Per slot, every content it could be found with (`None`: absent).
        images: [Vec<Option<Vec<u8>>>; 2],
        /// Per slot, whether its directory entry is durable.
        entry_durable: [bool; 2],
        /// Per slot, the possible contents of a file renamed onto it, until the directory sync.
        renamed: [Option<Vec<Option<Vec<u8>>>>; 2],
        /// New files written beside: bytes, and whether synced.
        beside: Vec<(PathBuf, Vec<u8>, bool)>,
        /// The facts before the write under way, and those it writes.
        before: Facts,
        writing: Option<Facts>,
        steps: usize,
        failures: Vec<String>,
    }

    fn slot_index(p: &Path) -> Option<usize> {
        SLOT_NAMES.iter().position(|n| p.file_name() == Some(std::ffi::OsStr::new(n)))
    }

    fn torn(old: Option<&Vec<u8>>, new: &[u8]) -> Vec<u8> {
        let mut t = old.cloned().unwrap_or_else(|| vec![0; new.len()]);
        t.resize(new.len(), 0);
        t[..new.len() / 2].copy_from_slice(&new[..new.len() / 2]);
        t
    }

    fn union(
        mut a: Vec<Option<Vec<u8>>>,
        b: impl IntoIterator<Item = Option<Vec<u8>>>,
    ) -> Vec<Option<Vec<u8>>> {
        for x in b {
            if !a.contains(&x) {
                a.push(x);
            }
        }
        a
    }

    impl PowerCut {
        fn new(dir: &Path) -> PowerCut {
            PowerCut {
                dir: dir.to_owned(),
                images: [vec![None], vec![None]],
                entry_durable: [true; 2],
                renamed: [None, None],
                beside: Vec::new(),
                before: Facts::default(),
                writing: None,
                steps: 0,
                failures: Vec::new(),
            }
        }

        fn step(&mut self, step: &Step) {
            self.steps += 1;
            match step {
                Step::Written(p) => {
                    let new = fs::read(p).expect("written file");
                    match Record::decode(&new) {
                        Slot::Valid(r) => self.writing = Some(r.facts),
                        other => self.failures.push(format!("{step:?} wrote {other:?}")),
                    }
                    match slot_index(p) {
                        Some(i) => {
                            if self.images[i] == [None] {
                                self.entry_durable[i] = false;
                            }
                            let torn: Vec<_> =
                                self.images[i].iter().map(|o| Some(torn(o.as_ref(), &new))).collect();
                            self.images[i] = union(union(self.images[i].clone(), [Some(new)]), torn);
                        }
                        None => self.beside.push((p.clone(), new, false)),
                    }
                }
                Step::Synced(p) => {
                    let now = fs::read(p).expect("synced file");
                    match slot_index(p) {
                        Some(i) if self.entry_durable[i] => self.images[i] = vec![Some(now)],
                        Some(i) => self.images[i] = vec![Some(now), None],
                        None => {
                            for b in self.beside.iter_mut().filter(|b| &b.0 == p) {
                                (b.1, b.2) = (now.clone(), true);
                            }
                        }
                    }
                }
                Step::Renamed(from, to) => {
                    let i = slot_index(to).expect("renamed onto a slot");
                    let (bytes, synced) = self
                        .beside
                        .iter()
                        .find(|b| &b.0 == from)
                        .map(|b| (b.1.clone(), b.2))
                        .expect("renamed a file written beside");
                    let inode = if synced {
                        vec![Some(bytes)]
                    } else {
                        vec![Some(bytes.clone()), Some(Vec::new()), Some(torn(None, &bytes))]
                    };
                    self.images[i] = union(self.images[i].clone(), inode.clone());
                    self.renamed[i] = Some(inode);
                }
                Step::DirSynced => {
                    for i in 0..2 {
                        if let Some(inode) = self.renamed[i].take() {
                            self.images[i] = inode;
                        }
                        self.entry_durable[i] = true;
                        if self.images[i] != [None] {
                            self.images[i].retain(Option::is_some);
                        }
                    }
                }
            }
            self.check(&format!("a power cut after {step:?}"), None);
            // A process kill keeps the page cache: the files as they are now.
            let got = read_record(&self.dir).map(|r| r.unwrap_or_default().facts);
            if !matches!(&got, Ok(f) if *f == self.before || Some(*f) == self.writing) {
                self.failures.push(format!("a kill after {step:?}: {got:?}"));
            }
        }

        /// Every image a power cut could leave must open and show the facts before the write or
        /// those it writes; once the write has returned, only `after`.
        fn check(&mut self, when: &str, after: Option<Facts>) {
            let dir = temp("power-cut-image");
            for a in self.images[0].clone() {
                for b in self.images[1].clone() {
                    write_slots(&dir, [a.as_deref(), b.as_deref()]);
                    let got = read_record(&dir).map(|r| r.unwrap_or_default().facts);
                    let ok = match (&got, after) {
                        (Ok(f), Some(after)) => *f == after,
                        (Ok(f), None) => *f == self.before || Some(*f) == self.writing,
                        (Err(_), _) => false,
                    };
                    if !ok {
                        self.failures.push(format!(
                            "{when}: {got:?}, expected {:?} or {:?}",
                            self.before, self.writing
                        ));
                    }
                }
            }
            let _ = fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn every_crash_point_of_a_write_leaves_the_facts_before_or_after_it() {
        let dir = temp("crash-points");
        let store = StateStore::open(&dir).expect("opens");
        let model = std::sync::Arc::new(Mutex::new(PowerCut::new(&dir)));
        let m = model.clone();
        store.inner().hook = Some(Box::new(move |step| m.lock().expect("model").step(step)));
        type Op = Box<dyn Fn(&StateStore) -> Result<u64, StateError>>;
        let ops: Vec<(&str, Op)> = vec![
            ("accept 1", Box::new(|s| s.accept_bundle(1, &[1; 32]).map(|()| 0))),
            ("build time", Box::new(|s| s.record_bundle_time(1_000))),
            ("floor", Box::new(|s| s.raise_clock_floor(2_000))),
            ("floor again", Box::new(|s| s.raise_clock_floor(3_000))),
            ("same bundle", Box::new(|s| s.accept_bundle(1, &[1; 32]).map(|()| 0))),
            ("accept 2", Box::new(|s| s.accept_bundle(2, &[2; 32]).map(|()| 0))),
            ("build time ahead", Box::new(|s| s.record_bundle_time(9_000))),
            ("accept 3", Box::new(|s| s.accept_bundle(3, &[3; 32]).map(|()| 0))),
            ("correction", Box::new(|s| s.record_bundle_time(4_000))),
        ];
        let mut steps = Vec::new();
        for (name, op) in &ops {
            {
                let mut m = model.lock().expect("model");
                (m.before, m.writing, m.steps) = (store.facts(), None, 0);
            }
            op(&store).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut m = model.lock().expect("model");
            steps.push((*name, m.steps));
            m.check(&format!("a power cut once {name} returned"), Some(store.facts()));
            assert!(m.failures.is_empty(), "{name}: {:#?}", m.failures);
        }
        // The sequence seen: each new slot made whole beside (4 steps), then writes in place (2);
        // no write at all when nothing changes.
        assert_eq!(
            steps,
            [
                ("accept 1", 4),
                ("build time", 4),
                ("floor", 2),
                ("floor again", 2),
                ("same bundle", 0),
                ("accept 2", 2),
                ("build time ahead", 2),
                ("accept 3", 2),
                ("correction", 2)
            ]
        );
        drop(store);
        let s = StateStore::open(&dir).expect("reopens");
        assert_eq!(s.clock_floor().expect("reads"), 4_000);
        drop(s);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
