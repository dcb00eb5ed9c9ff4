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

use std::fmt;
use std::path::{Path, PathBuf};

const KEY_ROLLBACK: &[u8] = b"rollback_mark";
const KEY_CLOCK_FLOOR: &[u8] = b"clock_floor";
const KEY_BUNDLE_CREATED: &[u8] = b"bundle_created_at";
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
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_store_without_a_recorded_build_time_is_never_lowered_on_upgrade() {
        let dir = temp("upgrade");
        let s = StateStore::open(&dir).expect("opens");
        s.raise_clock_floor(5_000).expect("an older gatelet's floor");
        assert_eq!(s.record_bundle_time(4_000).expect("first record"), 5_000);
        assert_eq!(s.record_bundle_time(3_000).expect("a correction from there on"), 3_000);
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
