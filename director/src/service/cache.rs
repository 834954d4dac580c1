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
    /// Raised by every forget: a read that began under another value is not kept.
    generation: u64,
    auth: Option<Arc<AuthRow>>,
    timestamp: Option<Arc<CachedTimestamp>>,
}

/// Proof of when a database read began, for [`VehicleCache::keep_auth`] and
/// [`VehicleCache::keep_timestamp`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
    generation: u64,
}

/// The cache of vehicles' credential rows and current timestamps, at most `capacity`
/// vehicles.
#[derive(Debug)]
pub struct VehicleCache {
    slots: RwLock<HashMap<Vin, Slot>>,
    /// Raised by [`VehicleCache::forget_all`].
    epoch: AtomicU64,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl VehicleCache {
    /// An empty cache for at most `capacity` vehicles (0 turns it off).
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: RwLock::default(),
            epoch: AtomicU64::new(0),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Vin, Slot>> {
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Vin, Slot>> {
        self.slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Taken before a database read whose result may be kept.
    pub fn ticket(&self, vin: &Vin) -> Ticket {
        // The epoch first: a forget_all after this makes the ticket stale either way.
        let epoch = self.epoch.load(Ordering::SeqCst);
        let generation = self.read().get(vin).map_or(0, |s| s.generation);
        Ticket { epoch, generation }
    }

    /// Vehicle `vin`'s credential row, if cached.
    pub fn auth(&self, vin: &Vin) -> Option<Arc<AuthRow>> {
        let found = self.read().get(vin).and_then(|s| s.auth.clone());
        self.count(found.is_some());
        found
    }

    /// Vehicle `vin`'s timestamp, if cached.
    pub fn timestamp(&self, vin: &Vin) -> Option<Arc<CachedTimestamp>> {
        let found = self.read().get(vin).and_then(|s| s.timestamp.clone());
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
        let mut slots = self.write();
        if self.epoch.load(Ordering::SeqCst) != ticket.epoch {
            return;
        }
        if !slots.contains_key(vin) && slots.len() >= self.capacity {
            // Full: make room by dropping any one vehicle (its next request reads the
            // database). Its generation goes with it, so every ticket taken before is made
            // stale, as a forget_all would.
            if let Some(victim) = slots.keys().next().cloned() {
                slots.remove(&victim);
            }
            self.epoch.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let slot = slots.entry(vin.clone()).or_default();
        if slot.generation == ticket.generation {
            set(slot);
        }
    }

    /// Forgets what is cached for `vin` (after a write that changed it committed).
    pub fn forget(&self, vin: &Vin) {
        let mut slots = self.write();
        if let Some(slot) = slots.get_mut(vin) {
            slot.generation += 1;
            slot.auth = None;
            slot.timestamp = None;
        } else {
            // Not cached: a read of it may be under way, so every ticket is made stale
            // (rather than remembering a slot for a vehicle nobody asked about).
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Forgets everything (after a write that may change many vehicles committed).
    pub fn forget_all(&self) {
        let mut slots = self.write();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        slots.clear();
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
        let ticket = cache.ticket(&v);
        cache.keep_timestamp(&v, ticket, timestamp(1));
        assert_eq!(cache.timestamp(&v).unwrap().bytes[0], 1);
        // A read began, a write committed and forgot the vehicle, then the read finished:
        // what it read may predate the write, so it is not kept.
        let ticket = cache.ticket(&v);
        cache.forget(&v);
        assert!(cache.timestamp(&v).is_none());
        cache.keep_timestamp(&v, ticket, timestamp(2));
        assert!(cache.timestamp(&v).is_none());
        // The same for a vehicle never cached before, and for a forget_all.
        let w = vin(2);
        let ticket = cache.ticket(&w);
        cache.forget(&w);
        cache.keep_timestamp(&w, ticket, timestamp(3));
        assert!(cache.timestamp(&w).is_none());
        let ticket = cache.ticket(&v);
        cache.forget_all();
        cache.keep_timestamp(&v, ticket, timestamp(4));
        assert!(cache.timestamp(&v).is_none());
        // A read begun after the write is kept.
        let ticket = cache.ticket(&v);
        cache.keep_timestamp(&v, ticket, timestamp(5));
        assert_eq!(cache.timestamp(&v).unwrap().bytes[0], 5);
        assert_eq!(cache.hits_and_misses().0, 2);
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_and_making_room_stales_tickets() {
        let cache = VehicleCache::new(3);
        for n in 0..3 {
            let ticket = cache.ticket(&vin(n));
            cache.keep_timestamp(&vin(n), ticket, timestamp(n as u8));
        }
        let waiting = cache.ticket(&vin(0));
        let ticket = cache.ticket(&vin(9));
        cache.keep_timestamp(&vin(9), ticket, timestamp(9));
        assert!(cache.read().len() <= 3);
        // Room was made: a ticket taken before is stale, whichever vehicle was dropped.
        cache.forget(&vin(0));
        cache.keep_timestamp(&vin(0), waiting, timestamp(0));
        assert!(cache.timestamp(&vin(0)).is_none());
        // Off: nothing is kept.
        let off = VehicleCache::new(0);
        let ticket = off.ticket(&vin(1));
        off.keep_timestamp(&vin(1), ticket, timestamp(1));
        assert!(off.timestamp(&vin(1)).is_none());
    }
}
