//! A fixed-capacity, thread-safe cache of verified tokens, so a repeated token costs a hash and a
//! lookup, not a signature check.
//!
//! # Shape
//! A set-associative table: `sets` (a power of two) × [`WAYS`] slots, all allocated when the
//! cache is made and never again. A token can live only in the set its tag picks, so a lookup
//! compares at most four tags under one small lock, and memory cannot grow whatever arrives:
//! a flood of distinct tokens only replaces entries. Only tokens that verified are ever inserted,
//! so an attacker without a signing key cannot fill it at all; with stolen valid tokens they can
//! only evict, costing later requests a signature check.
//!
//! Each set has its own mutex (held for a few comparisons, never across a signature check), so
//! the threads of the data plane rarely meet on one.
//!
//! # Eviction
//! Within a set: an empty slot, else a slot whose token is past its deadline (`exp` + skew),
//! else CLOCK (second chance): a hit sets a slot's reference bit; the hand clears set bits until
//! it finds a clear one. Frequently used tokens stay; one-off tokens go first.
//!
//! # The key: a 128-bit keyed hash of the whole token
//! A false hit would let an unverified token ride on another token's verification, so the tag
//! must not collide, even for someone trying. It is two SipHash-1-3 outputs under std's
//! `RandomState` (a secret 128-bit key seeded from the OS random source, fresh per process and
//! varied per cache) over two domain-separated inputs: 128 bits no outsider can compute, since
//! they never see the key or a tag. 64 bits alone would leave a patient attacker a chance of
//! about `entries × attempts / 2^64`: not negligible over a year of traffic against thousands of
//! entries. SHA-256 would need no secret, but on cores without the ARMv8 crypto extension (the
//! Raspberry Pi 3's and 4's) it costs several µs per KiB (estimate, not measured on a board),
//! more than the whole cached path may take; SipHash runs at a few cycles per byte everywhere.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

/// Slots per set: enough that a few hot tokens landing in one set do not evict each other, few
/// enough that a lookup is four comparisons.
pub const WAYS: usize = 4;

/// The 128-bit tag of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag([u64; 2]);

#[derive(Debug)]
struct Set<V> {
    tags: [Tag; WAYS],
    /// Last second the entry can be valid; 0 marks an empty slot together with `values`.
    deadlines: [u64; WAYS],
    values: [Option<Arc<V>>; WAYS],
    referenced: [bool; WAYS],
    hand: usize,
}

impl<V> Set<V> {
    fn empty() -> Self {
        Set {
            tags: [Tag([0; 2]); WAYS],
            deadlines: [0; WAYS],
            values: [const { None }; WAYS],
            referenced: [false; WAYS],
            hand: 0,
        }
    }

    fn victim(&mut self, now: u64) -> usize {
        if let Some(i) = self.values.iter().position(Option::is_none) {
            return i;
        }
        if let Some(i) = self.deadlines.iter().position(|&d| d <= now) {
            return i;
        }
        // Second chance: at most one full turn clears every bit, so this ends within 2 × WAYS.
        loop {
            let i = self.hand % WAYS;
            self.hand = (i + 1) % WAYS;
            if self.referenced[i] {
                self.referenced[i] = false;
            } else {
                return i;
            }
        }
    }
}

/// The cache. `V` is [`super::VerifiedToken`] in the gateway; generic so it can be tested alone.
#[derive(Debug)]
pub struct Cache<V> {
    sets: Box<[Mutex<Set<V>>]>,
    hasher: RandomState,
}

impl<V> Cache<V> {
    /// A cache of at least `capacity` entries (rounded up to a power of two of sets); 0 disables
    /// caching.
    pub fn new(capacity: usize) -> Self {
        let sets = if capacity == 0 { 0 } else { capacity.div_ceil(WAYS).next_power_of_two() };
        Cache { sets: (0..sets).map(|_| Mutex::new(Set::empty())).collect(), hasher: RandomState::new() }
    }

    /// How many entries it can hold.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// How many entries it holds now.
    pub fn len(&self) -> usize {
        self.sets
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).values.iter().flatten().count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tag of a token under this cache's key.
    pub fn tag(&self, token: &str) -> Tag {
        Tag([self.hasher.hash_one((0u8, token)), self.hasher.hash_one((1u8, token))])
    }

    fn set(&self, tag: Tag) -> Option<&Mutex<Set<V>>> {
        // The low bits of the tag pick the set (the number of sets is a power of two).
        let mask = self.sets.len().wrapping_sub(1) as u64;
        self.sets.get(usize::try_from(tag.0[0] & mask).ok()?)
    }

    /// The entry for `tag`, marked as recently used. Deadlines are not checked here: the caller
    /// runs the full time rules on every hit.
    pub fn get(&self, tag: Tag) -> Option<Arc<V>> {
        // A panic while a set is locked cannot leave it half-written (every write is one
        // assignment), so a poisoned lock is safe to use.
        let mut set = self.set(tag)?.lock().unwrap_or_else(PoisonError::into_inner);
        let i = (0..WAYS).find(|&i| set.tags[i] == tag && set.values[i].is_some())?;
        set.referenced[i] = true;
        set.values[i].clone()
    }

    /// Stores `value` under `tag` until `deadline` (inclusive upper bound on its usefulness).
    pub fn insert(&self, tag: Tag, value: Arc<V>, deadline: u64, now: u64) {
        let Some(set) = self.set(tag) else { return };
        let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
        let i = match (0..WAYS).find(|&i| set.tags[i] == tag && set.values[i].is_some()) {
            Some(i) => i,
            None => set.victim(now),
        };
        set.tags[i] = tag;
        set.deadlines[i] = deadline;
        set.referenced[i] = false;
        // The evicted value is dropped here, under the lock; it is only freed if no request
        // still holds it, which costs a free() at most.
        set.values[i] = Some(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_rounding_and_disabled() {
        assert_eq!(Cache::<u32>::new(0).capacity(), 0);
        assert_eq!(Cache::<u32>::new(1).capacity(), WAYS);
        assert_eq!(Cache::<u32>::new(1000).capacity(), 1024);
        assert_eq!(Cache::<u32>::new(1024).capacity(), 1024);
        let off = Cache::new(0);
        let t = off.tag("x");
        off.insert(t, Arc::new(1u32), 100, 0);
        assert!(off.get(t).is_none());
    }

    #[test]
    fn hit_miss_and_distinct_tags() {
        let c = Cache::new(64);
        let (a, b) = (c.tag("token-a"), c.tag("token-b"));
        assert_ne!(a, b);
        assert_eq!(a, c.tag("token-a"), "deterministic within a cache");
        assert_ne!(a, Cache::<u32>::new(64).tag("token-a"), "keyed per cache");
        assert!(c.get(a).is_none());
        c.insert(a, Arc::new(1u32), 100, 0);
        assert_eq!(c.get(a).as_deref(), Some(&1));
        assert!(c.get(b).is_none());
        // Re-inserting the same tag replaces, not duplicates.
        c.insert(a, Arc::new(2u32), 100, 0);
        assert_eq!(c.get(a).as_deref(), Some(&2));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn flood_never_grows_past_capacity() {
        let c = Cache::new(256);
        let cap = c.capacity();
        for i in 0..100_000u32 {
            let t = c.tag(&format!("tok-{i}"));
            c.insert(t, Arc::new(i), u64::MAX, 0);
        }
        assert_eq!(c.len(), cap, "full, and not one more");
        // The most recent insert is there.
        assert_eq!(c.get(c.tag("tok-99999")).as_deref(), Some(&99_999));
    }

    impl<V> Cache<V> {
        /// Presence without touching the reference bit.
        fn contains(&self, tag: Tag) -> bool {
            let set = self.set(tag).expect("enabled").lock().expect("not poisoned");
            (0..WAYS).any(|i| set.tags[i] == tag && set.values[i].is_some())
        }
    }

    /// A one-set cache, so every tag competes for the same four slots.
    #[test]
    fn eviction_prefers_empty_then_expired_then_unreferenced() {
        let c = Cache::new(WAYS);
        assert_eq!(c.sets.len(), 1);
        let t: Vec<Tag> = (0..7).map(|i| c.tag(&format!("t{i}"))).collect();
        for (i, &tag) in t[..4].iter().enumerate() {
            // t1 is good until second 50; the others until 1000. Empty slots are used first.
            c.insert(tag, Arc::new(i), if i == 1 { 50 } else { 1000 }, 0);
        }
        assert!(t[..4].iter().all(|&tag| c.contains(tag)));
        // At second 60, t1 is past its deadline: it makes room although no one used the others.
        c.insert(t[4], Arc::new(4), 1000, 60);
        assert!(!c.contains(t[1]));
        assert!([0, 2, 3, 4].iter().all(|&i| c.contains(t[i])));
        // Slots now hold [t0, t4, t2, t3]. Use t0 and t2; the hand (at slot 0) spares t0,
        // clearing its bit, and evicts t4, the first unreferenced entry it meets.
        let _ = c.get(t[0]);
        let _ = c.get(t[2]);
        c.insert(t[5], Arc::new(5), 1000, 60);
        assert!(!c.contains(t[4]));
        assert!([0, 2, 3, 5].iter().all(|&i| c.contains(t[i])));
        // The hand goes on from slot 2: t2 gets its second chance, t3 (never used) goes.
        c.insert(t[6], Arc::new(6), 1000, 60);
        assert!(!c.contains(t[3]));
        assert!([0, 2, 5, 6].iter().all(|&i| c.contains(t[i])));
        assert_eq!(c.len(), WAYS);
    }

    #[test]
    fn second_chance_keeps_the_hot_entry() {
        let c = Cache::new(WAYS);
        let hot = c.tag("hot");
        c.insert(hot, Arc::new(0u32), 1000, 0);
        for i in 0..1000u32 {
            let _ = c.get(hot);
            c.insert(c.tag(&format!("cold-{i}")), Arc::new(i), 1000, 0);
        }
        assert!(c.get(hot).is_some(), "a token used between every insert is never evicted");
    }

    #[test]
    fn concurrent_use() {
        let c = Arc::new(Cache::new(128));
        let threads: Vec<_> = (0..4u32)
            .map(|n| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for i in 0..5000u32 {
                        let t = c.tag(&format!("{n}-{}", i % 300));
                        match c.get(t) {
                            Some(v) => assert_eq!(*v, i % 300, "a hit returns its own value"),
                            None => c.insert(t, Arc::new(i % 300), u64::MAX, 0),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert!(c.len() <= c.capacity());
    }
}
