//! Fixed-window counters and the fixed-size table that holds the caller levels' counters.
//!
//! A [`Table`] is allocated once, at start, and never grows: `shards × SHARD_SLOTS` slots, each
//! shard behind its own lock. A slot holds a key — a 64-bit hash keyed per process, never the key
//! string — and a [`Counter`]. Inside a shard, keys are placed by linear probing from a home slot;
//! slots are never emptied again, only reused once their key's window has ended and its hold
//! after it has passed, so a key is always found before the first empty slot of its probe
//! sequence. A table may also have overflow buckets: shared counters for keys that find no slot.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Slots behind one lock. 64 keeps a full scan of a shard (a new key meeting a full shard) to
/// 1.5 KiB of memory; with keys spread uniformly, shards fill evenly enough that a table reaches
/// about 80% of its capacity before the first shard is full.
pub const SHARD_SLOTS: usize = 64;

/// The key of a slot that has never held one. A real key that hashes to it is moved to 1.
const EMPTY: u64 = 0;

/// A count of requests in a fixed window that ends at `end_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counter {
    pub end_ms: u64,
    pub count: u64,
}

/// The end of the window of `window_ms` that contains `now_ms`. Windows are aligned to multiples
/// of their length since the Unix epoch, as WSO2 aligns them (`ts - ts % unit`).
pub(crate) fn window_end(now_ms: u64, window_ms: u64) -> u64 {
    (now_ms - now_ms % window_ms.max(1)).saturating_add(window_ms)
}

impl Counter {
    /// The count that applies at `now_ms`, and the end of its window.
    ///
    /// A counter whose window has ended counts nothing. One that ends later than the current
    /// window (the clock was stepped back, or the key moved to a tier with another window) keeps
    /// its count — never a reset that grants requests — but only until the current window ends,
    /// so a clock step cannot lock a caller out for longer than one window.
    pub fn current(self, now_ms: u64, window_ms: u64) -> (u64, u64) {
        let end = window_end(now_ms, window_ms);
        if self.end_ms <= now_ms { (0, end) } else { (self.count, self.end_ms.min(end)) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    counter: Counter,
}

/// The slots behind one lock.
pub(crate) struct Shard {
    slots: [Slot; SHARD_SLOTS],
}

/// Where a key is, or could go, in its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The key's slot.
    Found(usize),
    /// The key is not there; this slot is empty or its key's window and hold have passed, and can
    /// take it.
    Vacant(usize),
    /// The key is not there and every slot is held; the first of them frees then.
    Full { next_free_ms: u64 },
}

/// `x` mapped onto `0..n` by its high bits (the home slot uses the low bits).
fn scale(x: u64, n: usize) -> usize {
    let n64 = n as u64;
    // (x >> 32) < 2^32 and n < 2^32 (bounded by MAX_TABLE_ENTRIES), so the product fits in a
    // u64 and the result is below n, which is a usize.
    #[allow(clippy::cast_possible_truncation)]
    let i = (((x >> 32) * n64) >> 32) as usize;
    i
}

/// The slot a key's probe sequence starts at.
fn home(key: u64) -> usize {
    // Below SHARD_SLOTS, which is a usize.
    #[allow(clippy::cast_possible_truncation)]
    let h = (key % SHARD_SLOTS as u64) as usize;
    h
}

/// A hash as a table key: never [`EMPTY`].
pub(crate) fn as_key(hash: u64) -> u64 {
    if hash == EMPTY { 1 } else { hash }
}

impl Shard {
    const NEW: Shard =
        Shard { slots: [Slot { key: EMPTY, counter: Counter { end_ms: 0, count: 0 } }; SHARD_SLOTS] };

    /// Looks `key` up; when it is absent, finds the first slot that can take it: an empty one,
    /// or one whose window ended at least `hold_ms` ago.
    pub fn probe(&self, key: u64, now_ms: u64, hold_ms: u64) -> Probe {
        let start = home(key);
        let mut vacant = None;
        let mut next_free_ms = u64::MAX;
        for step in 0..SHARD_SLOTS {
            let i = (start + step) % SHARD_SLOTS;
            let slot = &self.slots[i];
            if slot.key == key {
                return Probe::Found(i);
            }
            if slot.key == EMPTY {
                // Nothing was ever placed past the first empty slot of a probe sequence.
                return Probe::Vacant(vacant.unwrap_or(i));
            }
            let free_at = slot.counter.end_ms.saturating_add(hold_ms);
            if free_at <= now_ms {
                vacant.get_or_insert(i);
            } else {
                next_free_ms = next_free_ms.min(free_at);
            }
        }
        match vacant {
            Some(i) => Probe::Vacant(i),
            None => Probe::Full { next_free_ms },
        }
    }

    pub fn counter(&self, i: usize) -> Counter {
        self.slots[i % SHARD_SLOTS].counter
    }

    /// Stores `key`'s counter in slot `i` (from [`Shard::probe`] under the same lock).
    pub fn set(&mut self, i: usize, key: u64, counter: Counter) {
        self.slots[i % SHARD_SLOTS] = Slot { key, counter };
    }

    fn occupied(&self) -> usize {
        self.slots.iter().filter(|s| s.key != EMPTY).count()
    }

    fn live(&self, now_ms: u64) -> usize {
        self.slots.iter().filter(|s| s.key != EMPTY && s.counter.end_ms > now_ms).count()
    }
}

/// A fixed set of counters for keys hashed elsewhere.
pub(crate) struct Table {
    shards: Box<[Mutex<Shard>]>,
    /// How long after its window ends a slot stays its key's (see [`Shard::probe`]).
    hold_ms: u64,
    /// Shared counters for keys that find their shard full; none for a table without overflow.
    overflow: Box<[Mutex<Counter>]>,
    /// Requests that met a full shard and no room in an overflow bucket (refused, or passed
    /// over quota for a non-stopping tier).
    full: AtomicU64,
    /// Requests that met a full shard and were admitted under an overflow bucket.
    overflowed: AtomicU64,
}

impl Table {
    /// A table of at least `entries` slots (rounded up to whole shards), whose slots stay their
    /// key's for `hold_ms` after its window, and with `overflow_buckets` shared counters.
    /// Allocates once.
    pub fn new(entries: usize, hold_ms: u64, overflow_buckets: usize) -> Table {
        let shards = entries.div_ceil(SHARD_SLOTS).max(1);
        Table {
            shards: (0..shards).map(|_| Mutex::new(Shard::NEW)).collect(),
            hold_ms,
            overflow: (0..overflow_buckets).map(|_| Mutex::new(Counter::default())).collect(),
            full: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    pub fn hold_ms(&self) -> u64 {
        self.hold_ms
    }

    /// The overflow bucket that `spill` (a hash) picks; `None` when the table has none.
    ///
    /// Lock it only after releasing the key's shard lock, and before any route counter, so that
    /// it adds no lock-order cycle. Like a shard, a bucket cannot be left torn by a panic (one
    /// store per update), so a poisoned lock may be taken as it is.
    pub fn overflow(&self, spill: u64) -> Option<&Mutex<Counter>> {
        self.overflow.get(scale(spill, self.overflow.len()))
    }

    pub fn note_overflow(&self) {
        self.overflowed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn overflow_count(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Locks the shard that holds `key`.
    ///
    /// A panic while a shard is locked cannot leave it torn (every update is one slot store), so
    /// a poisoned lock is taken as it is.
    pub fn lock(&self, key: u64) -> MutexGuard<'_, Shard> {
        let i = scale(key, self.shards.len());
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn note_full(&self) {
        self.full.fetch_add(1, Ordering::Relaxed);
    }

    pub fn full_count(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.shards.len() * SHARD_SLOTS
    }

    /// Slots that hold a key, live or not yet reused.
    pub fn occupied(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).occupied()).sum()
    }

    /// Slots whose window has not ended at `now_ms`.
    pub fn live(&self, now_ms: u64) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).live(now_ms)).sum()
    }

    /// Bytes this table holds, all allocated by [`Table::new`].
    pub fn bytes(&self) -> usize {
        size_of::<Table>()
            + self.shards.len() * size_of::<Mutex<Shard>>()
            + self.overflow.len() * size_of::<Mutex<Counter>>()
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("capacity", &self.capacity())
            .field("hold_ms", &self.hold_ms)
            .field("overflow_buckets", &self.overflow.len())
            .field("full", &self.full_count())
            .field("overflowed", &self.overflow_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_their_length() {
        assert_eq!(window_end(0, 60_000), 60_000);
        assert_eq!(window_end(59_999, 60_000), 60_000);
        assert_eq!(window_end(60_000, 60_000), 120_000);
        assert_eq!(window_end(1_700_000_012_345, 1_000), 1_700_000_013_000);
        // No overflow at the end of time.
        assert_eq!(window_end(u64::MAX, 60_000), u64::MAX);
    }

    #[test]
    fn counter_rolls_and_survives_a_clock_step_back() {
        let c = Counter { end_ms: 60_000, count: 7 };
        assert_eq!(c.current(10_000, 60_000), (7, 60_000));
        assert_eq!(c.current(59_999, 60_000), (7, 60_000));
        assert_eq!(c.current(60_000, 60_000), (0, 120_000));
        // Clock stepped back an hour: the count stays, for at most the current window.
        let c = Counter { end_ms: 3_660_000, count: 7 };
        assert_eq!(c.current(30_000, 60_000), (7, 60_000));
    }

    fn key_in_shard0(table: &Table, n: u64) -> u64 {
        // Keys whose high bits map to shard 0 and whose home slot is 0.
        let k = as_key(n << 6);
        assert_eq!(scale(k, table.shards.len()), 0);
        k
    }

    #[test]
    fn probe_finds_reuses_and_reports_full() {
        let table = Table::new(SHARD_SLOTS, 0, 0);
        assert_eq!(table.capacity(), SHARD_SLOTS);
        let mut shard = table.lock(1);
        let keys: Vec<u64> = (1..=SHARD_SLOTS as u64).map(|n| key_in_shard0(&table, n)).collect();
        for (n, &k) in keys.iter().enumerate() {
            // All share home slot 0: each lands on the next free slot.
            assert_eq!(shard.probe(k, 0, 0), Probe::Vacant(n));
            shard.set(n, k, Counter { end_ms: 1_000 + n as u64, count: 1 });
        }
        for (n, &k) in keys.iter().enumerate() {
            assert_eq!(shard.probe(k, 0, 0), Probe::Found(n));
        }
        let newcomer = key_in_shard0(&table, 1_000);
        assert_eq!(shard.probe(newcomer, 500, 0), Probe::Full { next_free_ms: 1_000 });
        // Once the first two windows end, the first expired slot is offered, and existing keys
        // past it are still found.
        assert_eq!(shard.probe(newcomer, 1_001, 0), Probe::Vacant(0));
        shard.set(0, newcomer, Counter { end_ms: 2_000, count: 1 });
        assert_eq!(shard.probe(newcomer, 1_001, 0), Probe::Found(0));
        assert_eq!(shard.probe(keys[1], 1_001, 0), Probe::Found(1));
        assert_eq!(shard.probe(keys[0], 1_001, 0), Probe::Vacant(1));
        drop(shard);
        assert_eq!(table.occupied(), SHARD_SLOTS);
        assert_eq!(table.live(1_001), SHARD_SLOTS - 1);
    }

    #[test]
    fn a_held_slot_is_not_offered_until_its_hold_has_passed() {
        let table = Table::new(SHARD_SLOTS, 1_000, 0);
        let mut shard = table.lock(1);
        let keys: Vec<u64> = (1..=SHARD_SLOTS as u64).map(|n| key_in_shard0(&table, n)).collect();
        for (n, &k) in keys.iter().enumerate() {
            shard.set(n, k, Counter { end_ms: 1_000, count: 1 });
        }
        let newcomer = key_in_shard0(&table, 1_000);
        // The windows ended at 1 s, but their keys hold the slots for one more second.
        assert_eq!(shard.probe(newcomer, 1_000, table.hold_ms()), Probe::Full { next_free_ms: 2_000 });
        assert_eq!(shard.probe(newcomer, 1_999, table.hold_ms()), Probe::Full { next_free_ms: 2_000 });
        assert_eq!(shard.probe(keys[7], 1_999, table.hold_ms()), Probe::Found(7));
        assert_eq!(shard.probe(newcomer, 2_000, table.hold_ms()), Probe::Vacant(0));
    }

    #[test]
    fn overflow_buckets_are_fixed_and_spread() {
        assert!(Table::new(SHARD_SLOTS, 0, 0).overflow(7).is_none());
        let t = Table::new(SHARD_SLOTS, 0, 64);
        assert_eq!(t.overflow.len(), 64);
        assert!(t.bytes() >= 64 * size_of::<Counter>() + SHARD_SLOTS * size_of::<Slot>());
        let state = std::hash::RandomState::new();
        let mut seen = [0usize; 64];
        for n in 0..64_000u32 {
            seen[scale(std::hash::BuildHasher::hash_one(&state, n), 64)] += 1;
        }
        assert!(seen.iter().all(|&c| (750..1250).contains(&c)), "{seen:?}");
        let bucket = |spill| t.overflow(spill).expect("a bucket").lock().expect("not poisoned");
        *bucket(u64::MAX) = Counter { end_ms: 5, count: 1 };
        assert_eq!(*bucket(u64::MAX), Counter { end_ms: 5, count: 1 });
        assert_eq!(*bucket(0), Counter::default());
    }

    #[test]
    fn sizes_round_up_to_whole_shards() {
        assert_eq!(Table::new(1, 0, 0).capacity(), SHARD_SLOTS);
        assert_eq!(Table::new(SHARD_SLOTS + 1, 0, 0).capacity(), 2 * SHARD_SLOTS);
        let t = Table::new(4096, 0, 0);
        assert_eq!(t.capacity(), 4096);
        assert!(t.bytes() >= 4096 * size_of::<Slot>());
    }

    #[test]
    fn keys_spread_over_shards() {
        let t = Table::new(64 * SHARD_SLOTS, 0, 0);
        let state = std::hash::RandomState::new();
        let mut seen = vec![0usize; t.shards.len()];
        for n in 0..64_000u32 {
            seen[scale(std::hash::BuildHasher::hash_one(&state, n), t.shards.len())] += 1;
        }
        // 1000 expected per shard; a uniform spread stays well inside ±25%.
        assert!(seen.iter().all(|&c| (750..1250).contains(&c)), "{seen:?}");
    }
}
