//! The device's small durable state, over sled, and the only module that touches sled.
//!
//! It holds two facts, each durable (flushed) before anyone relies on it:
//! - the **anti-rollback mark**: the serial and payload hash of the newest bundle accepted. A
//!   lower serial is refused, and so is the same serial with a different payload (two different
//!   bundles must never share a serial).
//! - the **clock floor**: the newest Unix time the device has evidence for. It only rises.
//!
//! sled is configured for a small board: a 1 MiB cache (its default is 1 GiB and ignores cgroup v2
//! limits) and no background flush (sled's default fsyncs twice a second); every write here is
//! flushed explicitly, so the flash sees a write only when a fact changes.
//!
//! A store that cannot be opened or holds a value of the wrong shape is an error naming the
//! directory and the recovery; it is never reset silently, since a silent reset would reopen the
//! door to rollback. Recovery (README, "State directory"): stop gatelet, move the directory aside,
//! start again; the bundle installed at `bundle.path` sets the new mark.

use std::fmt;
use std::path::{Path, PathBuf};

const KEY_ROLLBACK: &[u8] = b"rollback_mark";
const KEY_CLOCK_FLOOR: &[u8] = b"clock_floor";
/// sled page cache. The state is a few hundred bytes; 1 MiB is ample and bounded.
const CACHE_BYTES: u64 = 1024 * 1024;
/// Retries (50 ms apart) while another handle's lock is being released: up to 2 s.
const LOCK_RETRIES: u32 = 40;

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
    /// The store could not be opened: the device (disk, permissions, another process holding it,
    /// or corruption).
    Open(PathBuf, String),
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

/// The durable state of one device.
#[derive(Debug)]
pub struct StateStore {
    db: sled::Db,
    dir: PathBuf,
}

impl StateStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::Open(dir.to_owned(), e.to_string()))?;
        // sled releases its file lock from a background thread after the last handle is dropped,
        // so a reopen right after a close (a quick restart, a reload) may find it still held for
        // a moment: retry briefly before calling the store busy.
        let mut attempts = 0;
        let db = loop {
            let opened =
                sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).flush_every_ms(None).open();
            match opened {
                Ok(db) => break db,
                Err(e) if attempts < LOCK_RETRIES && e.to_string().contains("could not acquire lock") => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(StateError::Open(dir.to_owned(), e.to_string())),
            }
        };
        let store = StateStore { db, dir: dir.to_owned() };
        // Read both values now, so corruption is reported at start-up, not at first use.
        store.rollback_mark()?;
        store.clock_floor()?;
        Ok(store)
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

    /// Where the store lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gatelet-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
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
        std::fs::remove_dir_all(&dir).expect("cleanup");
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
        std::fs::remove_dir_all(&dir).expect("cleanup");
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
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
