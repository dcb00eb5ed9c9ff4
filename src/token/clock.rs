//! The validator's "now": the wall clock, never earlier than the best evidence of time.
//!
//! Many boards have no battery-backed clock and boot at 1970 (or at the image's build date)
//! until NTP answers, which offline it may never do. Taken at face value, such a clock accepts
//! every token that ever expired. So "now" is `max(wall clock, floor)`, where the floor is the
//! newest time we have evidence for: the running bundle's `created_at` (it cannot have been
//! built in the future of the device) and the floor persisted in the [`StateStore`]. Which floor
//! was used is reported with every reading, so it can be logged and shown.
//!
//! The source of wall-clock time is injected ([`TimeSource`]), so tests drive time by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bundle::Manifest;
use crate::state::{StateError, StateStore};

/// Where wall-clock time comes from.
pub trait TimeSource: Send + Sync {
    /// Seconds since the Unix epoch.
    fn unix_now(&self) -> u64;

    /// Seconds on a monotonic clock (any origin), used to move the floor forward while the wall
    /// clock is behind it. The default never moves, which suits hand-set clocks.
    fn monotonic_s(&self) -> u64 {
        0
    }

    /// Milliseconds since the Unix epoch, for throttling windows and usage records. The default
    /// is [`TimeSource::unix_now`] in whole seconds, which suits hand-set clocks.
    fn unix_now_ms(&self) -> u64 {
        self.unix_now().saturating_mul(1000)
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemTime;

impl TimeSource for SystemTime {
    fn unix_now(&self) -> u64 {
        // A clock before 1970 reads as 0; the floor then takes over.
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    fn unix_now_ms(&self) -> u64 {
        let ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    fn monotonic_s(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_secs()
    }
}

/// A clock set by hand, for tests and the demo. Held in milliseconds; set in seconds or
/// milliseconds.
#[derive(Debug, Default)]
pub struct ManualTime(AtomicU64);

impl ManualTime {
    pub fn new(t: u64) -> Self {
        ManualTime(AtomicU64::new(t.saturating_mul(1000)))
    }
    pub fn set(&self, t: u64) {
        self.0.store(t.saturating_mul(1000), Ordering::Relaxed);
    }
    pub fn set_ms(&self, t_ms: u64) {
        self.0.store(t_ms, Ordering::Relaxed);
    }
    pub fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds.saturating_mul(1000), Ordering::Relaxed);
    }
}

impl TimeSource for ManualTime {
    fn unix_now(&self) -> u64 {
        self.0.load(Ordering::Relaxed) / 1000
    }
    fn unix_now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl<T: TimeSource + ?Sized> TimeSource for Arc<T> {
    fn unix_now(&self) -> u64 {
        (**self).unix_now()
    }
    fn monotonic_s(&self) -> u64 {
        (**self).monotonic_s()
    }
    fn unix_now_ms(&self) -> u64 {
        (**self).unix_now_ms()
    }
}

impl<T: TimeSource + ?Sized> TimeSource for Box<T> {
    fn unix_now(&self) -> u64 {
        (**self).unix_now()
    }
    fn monotonic_s(&self) -> u64 {
        (**self).monotonic_s()
    }
    fn unix_now_ms(&self) -> u64 {
        (**self).unix_now_ms()
    }
}

/// Which evidence set the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorOrigin {
    /// No evidence (both zero): the wall clock is taken as it is.
    None,
    /// The running bundle's `created_at`.
    BundleCreated,
    /// The floor persisted in the state store (newer than the bundle).
    StateStore,
}

impl FloorOrigin {
    /// A stable label for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FloorOrigin::None => "none",
            FloorOrigin::BundleCreated => "bundle_created_at",
            FloorOrigin::StateStore => "state_store",
        }
    }
}

/// One reading of the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// What the validator uses: `max(wall, floor)`.
    pub now: u64,
    /// What the wall clock said.
    pub wall: u64,
    /// What the wall clock said, in milliseconds (`wall` is this in whole seconds).
    pub wall_ms: u64,
    pub floor: u64,
    pub origin: FloorOrigin,
}

impl Reading {
    /// True when the wall clock was behind the floor and the floor was used instead.
    pub fn floored(&self) -> bool {
        self.wall < self.floor
    }

    /// `now` in milliseconds: the wall clock's milliseconds when it agrees with the floored
    /// second, else the start of that second.
    pub fn now_ms(&self) -> u64 {
        if self.wall_ms / 1000 == self.now { self.wall_ms } else { self.now.saturating_mul(1000) }
    }
}

/// Wall clock plus floor. Built once per bundle (the floor depends on it).
///
/// The floor is evidence of a time that has passed; while the clock runs, time keeps passing, so
/// the floor in force is the floor at construction plus the monotonic time since. A board without
/// a real-time clock that boots into 1970 therefore still sees tokens expire and throttling
/// windows roll.
#[derive(Debug)]
pub struct Clock<S = SystemTime> {
    source: S,
    floor: u64,
    origin: FloorOrigin,
    /// `source.monotonic_s()` at construction.
    mono_origin: u64,
}

impl<S: TimeSource> Clock<S> {
    /// A clock whose floor is the larger of the bundle's creation time and the persisted floor.
    pub fn new(source: S, bundle_created_at: u64, persisted_floor: u64) -> Self {
        let (floor, origin) = if persisted_floor > bundle_created_at {
            (persisted_floor, FloorOrigin::StateStore)
        } else if bundle_created_at > 0 {
            (bundle_created_at, FloorOrigin::BundleCreated)
        } else {
            (0, FloorOrigin::None)
        };
        let mono_origin = source.monotonic_s();
        Clock { source, floor, origin, mono_origin }
    }

    /// [`Clock::new`] with the floor read from the device's state store. Reads only; raising the
    /// persisted floor is the daemon's decision (a wrong clock written there would stay).
    pub fn from_state(source: S, manifest: &Manifest, state: &StateStore) -> Result<Self, StateError> {
        Ok(Clock::new(source, manifest.created_at, state.clock_floor()?))
    }

    pub fn now(&self) -> Reading {
        // One read of the wall clock: seconds and milliseconds of a reading always agree.
        let wall_ms = self.source.unix_now_ms();
        let wall = wall_ms / 1000;
        let floor = self.current_floor();
        Reading { now: wall.max(floor), wall, wall_ms, floor, origin: self.origin }
    }

    /// The floor in force (the floor at construction plus the monotonic time since) and where
    /// it came from.
    pub fn floor(&self) -> (u64, FloorOrigin) {
        (self.current_floor(), self.origin)
    }

    fn current_floor(&self) -> u64 {
        if self.floor == 0 {
            return 0;
        }
        self.floor.saturating_add(self.source.monotonic_s().saturating_sub(self.mono_origin))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Board {
        wall: AtomicU64,
        mono: AtomicU64,
    }

    impl TimeSource for Board {
        fn unix_now(&self) -> u64 {
            self.wall.load(Ordering::Relaxed)
        }
        fn monotonic_s(&self) -> u64 {
            self.mono.load(Ordering::Relaxed)
        }
        fn unix_now_ms(&self) -> u64 {
            self.wall.load(Ordering::Relaxed) * 1000 + 250
        }
    }

    #[test]
    fn a_floored_clock_keeps_moving() {
        // A board without an RTC: the wall clock says 1970, the floor says 2026.
        let board = Board { wall: AtomicU64::new(5), mono: AtomicU64::new(100) };
        let clock = Clock::new(board, 1_795_000_000, 0);
        assert_eq!(clock.now().now, 1_795_000_000);
        clock.source.mono.store(100 + 3600, Ordering::Relaxed);
        let r = clock.now();
        assert_eq!(r.now, 1_795_003_600, "an hour later, the floored time is an hour later");
        assert!(r.floored());
        // Once the wall clock is set and ahead of the floor, it wins.
        clock.source.wall.store(1_796_000_000, Ordering::Relaxed);
        assert_eq!(clock.now().now, 1_796_000_000);
    }

    use super::*;

    #[test]
    fn wrapped_sources_keep_every_reading() {
        // A clock behind `Arc<dyn _>` or `Box<dyn _>` (how the gateway and the toolkit hold
        // theirs) must read what the source reads: a wrapper that fell back to a default method
        // would freeze the floor (monotonic) or lose the milliseconds.
        let board = || Board { wall: AtomicU64::new(1_800_000_000), mono: AtomicU64::new(7) };
        let arc: Arc<dyn TimeSource> = Arc::new(board());
        let boxed: Box<dyn TimeSource> = Box::new(board());
        for s in [&arc as &dyn TimeSource, &boxed as &dyn TimeSource] {
            assert_eq!(s.unix_now(), 1_800_000_000);
            assert_eq!(s.monotonic_s(), 7);
            assert_eq!(s.unix_now_ms(), 1_800_000_000_000 + 250);
        }
        let ms = ManualTime::new(5);
        ms.set_ms(5_432);
        let c = Clock::new(Arc::new(ms) as Arc<dyn TimeSource>, 0, 0);
        let r = c.now();
        assert_eq!((r.now, r.wall, r.wall_ms, r.now_ms()), (5, 5, 5_432, 5_432));
    }

    #[test]
    fn floor_from_the_newest_evidence() {
        let c = Clock::new(ManualTime::new(0), 1_700_000_000, 0);
        assert_eq!(c.floor(), (1_700_000_000, FloorOrigin::BundleCreated));
        let c = Clock::new(ManualTime::new(0), 1_700_000_000, 1_800_000_000);
        assert_eq!(c.floor(), (1_800_000_000, FloorOrigin::StateStore));
        let c = Clock::new(ManualTime::new(0), 1_700_000_000, 1_600_000_000);
        assert_eq!(c.floor(), (1_700_000_000, FloorOrigin::BundleCreated));
        let c = Clock::new(ManualTime::new(5), 0, 0);
        assert_eq!(c.floor(), (0, FloorOrigin::None));
        assert!(!c.now().floored());
    }

    #[test]
    fn a_board_booting_in_1970_uses_the_floor() {
        let time = Arc::new(ManualTime::new(12));
        let c = Clock::new(Arc::clone(&time), 1_700_000_000, 0);
        let r = c.now();
        assert_eq!(
            r,
            Reading {
                now: 1_700_000_000,
                wall: 12,
                wall_ms: 12_000,
                floor: 1_700_000_000,
                origin: FloorOrigin::BundleCreated
            }
        );
        assert!(r.floored());
        // Once NTP (or an operator) sets the clock, it is used as is.
        time.set(1_750_000_000);
        let r = c.now();
        assert_eq!((r.now, r.floored()), (1_750_000_000, false));
        time.advance(10);
        assert_eq!(c.now().now, 1_750_000_010);
    }

    #[test]
    fn floor_read_from_the_state_store() {
        let dir = std::env::temp_dir().join(format!("gatelet-clock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateStore::open(&dir).expect("opens");
        state.raise_clock_floor(1_900_000_000).expect("raised");
        let manifest = Manifest {
            label: "t".into(),
            serial: 1,
            created_at: 1_700_000_000,
            issuers: vec![],
            policies: vec![],
            apis: vec![],
            revoked_jti: vec![],
            scope_rule: crate::bundle::model::ScopeRule::AllOf,
            default_subscription_tier: None,
        };
        let c = Clock::from_state(ManualTime::new(3), &manifest, &state).expect("reads");
        let r = c.now();
        assert_eq!((r.now, r.origin, r.floored()), (1_900_000_000, FloorOrigin::StateStore, true));
        drop(state);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn system_time_is_plausible() {
        assert!(SystemTime.unix_now() > 1_600_000_000);
    }
}
