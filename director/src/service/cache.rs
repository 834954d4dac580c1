//! What a polling vehicle asks for on every cycle, kept in memory: its credential row and its
//! current signed `timestamp.json`, so that the common request is answered without a database
//! call.
//!
//! Correctness rests on three rules:
//! - every write made through this process that changes what an entry derives from forgets
//!   the entry after its commit ([`VehicleCache::forget`], [`VehicleCache::forget_all`]);
//! - an entry read from the database is kept only if nothing was forgotten for that vehicle
//!   since the read began ([`VehicleCache::ticket`]), so a read that raced a write never
//!   leaves stale data behind;
//! - the only writes made by other processes (`director rotate-root`, `rotate-online`) change
//!   the root: a cached timestamp is served only if it was signed under the newest root
//!   ([`super::root_watch::RootWatch`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use uptane_core::ids::Vin;
use uptane_core::time::UtcTime;

use super::credentials::AuthRow;

/// A vehicle's signed timestamp as stored, with what decides whether it is still current.
#[derive(Debug, Clone)]
pub struct CachedTimestamp {
    /// The file.
    pub bytes: bytes::Bytes,
    /// When it expires.
    pub expires: UtcTime,
    /// The root version it was signed under.
    pub root_version: u64,
}

#[derive(Debug, Default)]
struct Slot {
    /// The forget count when this vehicle was last forgotten (or, for a slot made while the
    /// vehicle was not cached, the [`Slots::floor`] then): a read whose ticket is older is
    /// not kept.
    changed: u64,
    auth: Option<Arc<AuthRow>>,
    timestamp: Option<Arc<CachedTimestamp>>,
}

/// When full, one vehicle missed in this many is taken in, in place of one picked at random.
///
/// Vehicles poll in a fixed cycle. A full cache that took in every vehicle it missed would,
/// with a fleet larger than itself, drop most vehicles before their next poll: in a
/// simulation of polls in turn, dropping a random vehicle kept 20% of polls answered from
/// memory with a fleet of twice the cache and 0.6% at five times, dropping the oldest none.
/// Keeping what it holds answers the best share there is (capacity over fleet: 50% and
/// 20%); taking in one miss in 16 answered 49% and 18%, and lets vehicles that stopped
/// polling give way.
const ADMIT_ONE_IN: u64 = 16;

#[derive(Debug)]
struct Slots {
    map: HashMap<Vin, Slot>,
    /// The cached vehicles, in no order, so that a random one makes room in constant time.
    keys: Vec<Vin>,
    /// Forgets so far: a ticket is the count when it was taken.
    forgets: u64,
    /// The latest forget of a vehicle that has no slot now (never cached, dropped to make
    /// room, or cleared by a forget-all): a read begun before it is kept for no vehicle
    /// without a slot, as that vehicle's forget may be the one it missed.
    floor: u64,
    /// State of the generator that decides what is taken in and what makes room.
    random: u64,
}

impl Slots {
    /// The next of a xorshift64* sequence: picks only which vehicle's next request reads the
    /// database, so it need not be unpredictable.
    fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Drops a vehicle picked at random; what it was last forgotten at becomes the floor, so
    /// a read of it begun before that forget is still not kept once it has no slot.
    fn drop_one(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let index = (self.next_random() % self.keys.len() as u64) as usize;
        let vin = self.keys.swap_remove(index);
        if let Some(dropped) = self.map.remove(&vin) {
            self.floor = self.floor.max(dropped.changed);
        }
    }
}

/// Proof of when a database read began, for [`VehicleCache::keep_auth`] and
/// [`VehicleCache::keep_timestamp`]: the forget count then.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// The cache of vehicles' credential rows and current timestamps, at most `capacity`
/// vehicles.
#[derive(Debug)]
pub struct VehicleCache {
    slots: RwLock<Slots>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl VehicleCache {
    /// An empty cache for at most `capacity` vehicles (0 turns it off).
    pub fn new(capacity: usize) -> Self {
        let mut seed = [0; 8];
        // Any seed but zero will do (xorshift stays at zero); the system's random bytes only
        // keep two processes from dropping the same vehicles.
        let _ = getrandom::fill(&mut seed);
        Self::with_seed(capacity, u64::from_le_bytes(seed))
    }

    fn with_seed(capacity: usize, seed: u64) -> Self {
        Self {
            slots: RwLock::new(Slots {
                map: HashMap::new(),
                keys: Vec::new(),
                forgets: 0,
                floor: 0,
                random: seed | 1,
            }),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Slots> {
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Slots> {
        self.slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Taken before a database read whose result may be kept.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.read().forgets)
    }

    /// Vehicle `vin`'s credential row, if cached.
    pub fn auth(&self, vin: &Vin) -> Option<Arc<AuthRow>> {
        let found = self.read().map.get(vin).and_then(|s| s.auth.clone());
        self.count(found.is_some());
        found
    }

    /// Vehicle `vin`'s timestamp, if cached.
    pub fn timestamp(&self, vin: &Vin) -> Option<Arc<CachedTimestamp>> {
        let found = self.read().map.get(vin).and_then(|s| s.timestamp.clone());
        self.count(found.is_some());
        found
    }

    /// Keeps `row`, read after `ticket` was taken, unless something was forgotten since.
    pub fn keep_auth(&self, vin: &Vin, ticket: Ticket, row: AuthRow) {
        self.keep(vin, ticket, |slot| slot.auth = Some(Arc::new(row)));
    }

    /// Keeps `timestamp`, read after `ticket` was taken, unless something was forgotten since.
    pub fn keep_timestamp(&self, vin: &Vin, ticket: Ticket, timestamp: CachedTimestamp) {
        self.keep(vin, ticket, |slot| {
            slot.timestamp = Some(Arc::new(timestamp))
        });
    }

    fn keep(&self, vin: &Vin, ticket: Ticket, set: impl FnOnce(&mut Slot)) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.write();
        let slots = &mut *guard;
        if let Some(slot) = slots.map.get_mut(vin) {
            if slot.changed <= ticket.0 {
                set(slot);
            }
            return;
        }
        if slots.floor > ticket.0 {
            return;
        }
        if slots.map.len() >= self.capacity {
            if !slots.next_random().is_multiple_of(ADMIT_ONE_IN) {
                return;
            }
            // The floor checked above covers every forget of `vin`; the one the dropped
            // vehicle may raise it to is kept in the new slot, which is only stricter.
            slots.drop_one();
        }
        let mut slot = Slot {
            changed: slots.floor,
            ..Slot::default()
        };
        set(&mut slot);
        slots.keys.push(vin.clone());
        slots.map.insert(vin.clone(), slot);
    }

    /// Forgets what is cached for `vin` (after a write that changed it committed).
    pub fn forget(&self, vin: &Vin) {
        let mut guard = self.write();
        let slots = &mut *guard;
        slots.forgets += 1;
        if let Some(slot) = slots.map.get_mut(vin) {
            slot.changed = slots.forgets;
            slot.auth = None;
            slot.timestamp = None;
        } else {
            // Not cached: a read of it may be under way, so no read begun before this is
            // kept for a vehicle without a slot (rather than remembering a slot for a vehicle
            // nobody asked about).
            slots.floor = slots.forgets;
        }
    }

    /// Forgets everything (after a write that may change many vehicles committed).
    pub fn forget_all(&self) {
        let mut guard = self.write();
        let slots = &mut *guard;
        slots.forgets += 1;
        slots.floor = slots.forgets;
        slots.map.clear();
        slots.keys.clear();
    }

    /// Requests answered from the cache, and those that were not.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timestamp(n: u8) -> CachedTimestamp {
        CachedTimestamp {
            bytes: bytes::Bytes::from(vec![n]),
            expires: UtcTime::MAX_UTC,
            root_version: 1,
        }
    }

    fn vin(n: u32) -> Vin {
        format!("VIN-{n}").parse().unwrap()
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache = VehicleCache::new(10);
        let v = vin(1);
        // Read, then keep: served from the cache.
        let ticket = cache.ticket();
        cache.keep_timestamp(&v, ticket, timestamp(1));
        assert_eq!(cache.timestamp(&v).unwrap().bytes[0], 1);
        // A read began, a write committed and forgot the vehicle, then the read finished:
        // what it read may predate the write, so it is not kept.
        let ticket = cache.ticket();
        cache.forget(&v);
        assert!(cache.timestamp(&v).is_none());
        cache.keep_timestamp(&v, ticket, timestamp(2));
        assert!(cache.timestamp(&v).is_none());
        // The same for a vehicle never cached before, and for a forget_all.
        let w = vin(2);
        let ticket = cache.ticket();
        cache.forget(&w);
        cache.keep_timestamp(&w, ticket, timestamp(3));
        assert!(cache.timestamp(&w).is_none());
        let ticket = cache.ticket();
        cache.forget_all();
        cache.keep_timestamp(&v, ticket, timestamp(4));
        assert!(cache.timestamp(&v).is_none());
        // A read begun after the write is kept.
        let ticket = cache.ticket();
        cache.keep_timestamp(&v, ticket, timestamp(5));
        assert_eq!(cache.timestamp(&v).unwrap().bytes[0], 5);
        assert_eq!(cache.hits_and_misses().0, 2);
    }

    /// The cache's own invariant: the keys list the vehicles of the map, each once.
    fn consistent(cache: &VehicleCache) -> usize {
        let slots = cache.read();
        assert_eq!(slots.map.len(), slots.keys.len());
        let listed: std::collections::HashSet<&Vin> = slots.keys.iter().collect();
        assert_eq!(listed.len(), slots.keys.len());
        assert!(listed.iter().all(|vin| slots.map.contains_key(*vin)));
        slots.map.len()
    }

    /// Keeps `n`'s timestamp with a new ticket until the full cache takes it in (bounded).
    fn keep_until_taken(cache: &VehicleCache, n: u32) {
        for _ in 0..1000 {
            let ticket = cache.ticket();
            cache.keep_timestamp(&vin(n), ticket, timestamp(n as u8));
            if cache.timestamp(&vin(n)).is_some() {
                return;
            }
        }
        panic!("vehicle {n} never taken in");
    }

    #[test]
    fn a_vehicle_cached_again_does_not_take_a_read_older_than_its_last_forget() {
        // Forgotten while not cached: a read begun before, finishing after another read
        // cached the vehicle again, is not kept.
        let cache = VehicleCache::with_seed(10, 3);
        let old = cache.ticket();
        cache.forget(&vin(1));
        keep_until_taken(&cache, 1);
        cache.keep_timestamp(&vin(1), old, timestamp(99));
        assert_eq!(cache.timestamp(&vin(1)).unwrap().bytes[0], 1);
        // Forgotten while cached, then dropped to make room, then cached again: the same.
        let cache = VehicleCache::with_seed(1, 5);
        keep_until_taken(&cache, 2);
        let old = cache.ticket();
        cache.forget(&vin(2));
        keep_until_taken(&cache, 3);
        assert!(cache.timestamp(&vin(2)).is_none());
        keep_until_taken(&cache, 2);
        cache.keep_timestamp(&vin(2), old, timestamp(99));
        assert_eq!(cache.timestamp(&vin(2)).unwrap().bytes[0], 2);
        assert_eq!(consistent(&cache), 1);
    }

    #[test]
    fn a_full_cache_makes_room_without_staling_reads_of_other_vehicles() {
        let cache = VehicleCache::with_seed(3, 7);
        for n in 0..3 {
            let ticket = cache.ticket();
            cache.keep_timestamp(&vin(n), ticket, timestamp(n as u8));
        }
        // Reads begun now: of each cached vehicle (each then forgotten, a write, before it
        // finishes), and, after those forgets, of the vehicles that will be asked for.
        let before_forgets = cache.ticket();
        for n in 0..3 {
            cache.forget(&vin(n));
        }
        let after_forgets = cache.ticket();
        // Full: new vehicles are taken in now and then, each in place of a cached one.
        let mut kept = Vec::new();
        for n in 10..1000 {
            cache.keep_timestamp(&vin(n), after_forgets, timestamp(1));
            assert!(consistent(&cache) <= 3);
            if cache.timestamp(&vin(n)).is_some() {
                kept.push(n);
            }
        }
        // Taken in about one in 16, though each took the place of another: making room
        // staled no read begun after the forgets of the vehicles dropped.
        assert!((20..120).contains(&kept.len()), "{} taken in", kept.len());
        assert_eq!(consistent(&cache), 3);
        // The reads begun before the forgets may predate the writes: kept for none of the
        // forgotten vehicles, cached or dropped, however often the cache would take one in.
        for n in 0..3 {
            for _ in 0..100 {
                cache.keep_timestamp(&vin(n), before_forgets, timestamp(0));
            }
            assert!(cache.timestamp(&vin(n)).is_none());
        }
        // Off: nothing is kept.
        let off = VehicleCache::new(0);
        let ticket = off.ticket();
        off.keep_timestamp(&vin(1), ticket, timestamp(1));
        assert!(off.timestamp(&vin(1)).is_none());
    }

    #[test]
    fn a_fleet_polling_in_turn_larger_than_the_cache_finds_most_of_it_there() {
        // 1,000 vehicles polling in turn, a cache of 100: at best 10% of polls are answered
        // from memory (a random vehicle making room for each miss would answer almost none;
        // this answers about 8%).
        let cache = VehicleCache::with_seed(100, 1);
        let mut answered = 0;
        for round in 0..10 {
            for n in 0..1000 {
                let found = cache.timestamp(&vin(n)).is_some();
                if round == 9 && found {
                    answered += 1;
                }
                if !found {
                    let ticket = cache.ticket();
                    cache.keep_timestamp(&vin(n), ticket, timestamp(0));
                }
            }
        }
        assert_eq!(consistent(&cache), 100);
        assert!(
            answered >= 60,
            "{answered} of 1,000 polls answered from memory"
        );
    }
}
