//! Memory that streamed responses may hold at once: bytes a handler has read ahead of the
//! socket (from a file, say) and the transport has not yet written or dropped.
//!
//! The accept loop gives each connection one [`Allowance`] (1 MiB by default), shared by all
//! its HTTP/2 streams and put into every request's extensions. Without it, an
//! unauthenticated client could make the server hold three chunks per stream (hyper's
//! HTTP/2 takes a body's chunk whole, whatever the peer's window, and one is read ahead), 32
//! streams on each of 1,024 connections. A handler that streams reserves before each read
//! and keeps the [`Reserved`] with the bytes until they are dropped. A handler may also give
//! a single response a small allowance of its own, so that it can still make progress when
//! other streams of its connection hold the shared one (`image-repo`'s downloads do).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one connection's responses may hold by default: four 256 KiB chunks, what a single
/// fast download holds at most (HTTP/1.1: hyper queues two while under about 400 KiB, one
/// more handed over, one read ahead; HTTP/2: one queued per stream, `http.rs`
/// `HTTP2_SEND_BUFFER_BYTES`, one handed over, one read ahead).
pub const DEFAULT_BYTES: usize = 1 << 20;

/// The unit of an allowance.
const KIB: usize = 1024;

/// Memory that responses may hold; clones share it.
#[derive(Debug, Clone)]
pub struct Allowance {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

/// Part of an allowance, given back when dropped.
#[derive(Debug)]
pub struct Reserved {
    _permit: OwnedSemaphorePermit,
}

impl Allowance {
    /// An allowance of `bytes` (rounded up to a KiB, at least one).
    pub fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(KIB).max(1))
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// The allowance's size, in bytes: what a single reservation may take at most.
    pub fn total_bytes(&self) -> usize {
        self.total_kib as usize * KIB
    }

    /// What is not reserved now, in bytes.
    pub fn available_bytes(&self) -> usize {
        self.kib.available_permits() * KIB
    }

    /// `bytes` of the allowance (rounded up to a KiB; a request larger than the whole
    /// allowance takes all of it, so ask for at most [`Self::total_bytes`]) if free now,
    /// without waiting. It never takes memory that a waiting [`Self::reserve`] is owed.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reserved> {
        Arc::clone(&self.kib)
            .try_acquire_many_owned(self.units(bytes))
            .ok()
            .map(|permit| Reserved { _permit: permit })
    }

    /// `bytes` of the allowance once free; waiters are served in the order they were first
    /// polled. The future owns what it needs, so a stream can keep it across polls; dropping
    /// it gives back whatever it had been granted.
    pub fn reserve(
        &self,
        bytes: usize,
    ) -> impl std::future::Future<Output = Option<Reserved>> + Send + 'static {
        let units = self.units(bytes);
        let kib = Arc::clone(&self.kib);
        // The semaphore is never closed; `None` would mean it was.
        async move {
            kib.acquire_many_owned(units)
                .await
                .ok()
                .map(|permit| Reserved { _permit: permit })
        }
    }

    fn units(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(KIB))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn reservations_share_one_allowance_until_dropped() {
        let memory = Allowance::new(4 * 256 * KIB);
        let other_stream = memory.clone();
        let held: Vec<Reserved> = (0..4)
            .map(|_| memory.try_reserve(256 * KIB).expect("within the allowance"))
            .collect();
        assert!(
            other_stream.try_reserve(1).is_none(),
            "the allowance is shared"
        );
        assert_eq!(memory.available_bytes(), 0);
        drop(held);
        assert_eq!(other_stream.available_bytes(), memory.total_bytes());
    }

    #[test]
    fn a_request_is_rounded_up_and_never_more_than_the_whole() {
        let memory = Allowance::new(8 * KIB);
        let one = memory.try_reserve(1).unwrap();
        assert_eq!(memory.available_bytes(), 7 * KIB);
        drop(one);
        let all = memory
            .try_reserve(1 << 30)
            .expect("clamped to the allowance");
        assert_eq!(memory.available_bytes(), 0);
        drop(all);
        assert_eq!(Allowance::new(0).total_bytes(), KIB);
    }

    #[tokio::test]
    async fn a_waiting_reservation_is_woken_when_memory_is_given_back() {
        let memory = Allowance::new(KIB);
        let held = memory.try_reserve(KIB).unwrap();
        let mut waiting = Box::pin(memory.reserve(KIB));
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "nothing is free yet"
        );
        // Queued now: memory given back goes to it, not to a later `try_reserve`.
        drop(held);
        assert!(memory.try_reserve(KIB).is_none());
        let granted = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken");
        assert!(granted.is_some());
    }

    #[tokio::test]
    async fn a_waiter_dropped_gives_back_what_it_was_granted() {
        let memory = Allowance::new(4 * KIB);
        let held = memory.try_reserve(3 * KIB).unwrap();
        let mut waiting = Box::pin(memory.reserve(2 * KIB));
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(waiting);
        drop(held);
        assert_eq!(memory.available_bytes(), 4 * KIB);
    }
}
