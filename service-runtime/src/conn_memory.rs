//! Memory one connection's streamed responses may hold at once: bytes a handler has read
//! ahead of the socket (from a file, say) and the transport has not yet written or dropped.
//!
//! One allowance per connection, shared by all its HTTP/2 streams: a client that opens 32
//! streams and reads none of them holds no more than one that opens a single stream, and a
//! server holds at most its connection cap times the allowance in all. Without it, an
//! unauthenticated client could make the server hold a chunk or two per stream (hyper's
//! HTTP/2 sends a body's chunk whole into the stream's queue whatever the peer's window),
//! 32 streams on each of 1,024 connections. The accept loop puts a [`ConnectionMemory`] into
//! every request's extensions; a handler that streams reserves before each read and keeps
//! the [`Reserved`] with the bytes until they are dropped.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one connection's responses may hold by default: enough for a single download to run
/// at full speed (hyper buffers up to about 400 KiB, one chunk is read ahead).
pub const DEFAULT_BYTES: usize = 1 << 20;

/// The unit of the allowance.
const KIB: usize = 1024;

/// A connection's allowance; clones share it.
#[derive(Debug, Clone)]
pub struct ConnectionMemory {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

/// Part of a connection's allowance, given back when dropped.
#[derive(Debug)]
pub struct Reserved(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionMemory {
    /// An allowance of `bytes` (at least one KiB).
    pub fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(KIB).max(1))
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// The allowance's size, in bytes.
    pub fn total_bytes(&self) -> usize {
        self.total_kib as usize * KIB
    }

    /// What is not reserved now, in bytes.
    pub fn available_bytes(&self) -> usize {
        self.kib.available_permits() * KIB
    }

    /// `bytes` of the allowance (rounded up to a KiB; a request larger than the whole
    /// allowance takes all of it) if free now, without waiting.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reserved> {
        Arc::clone(&self.kib)
            .try_acquire_many_owned(self.units(bytes))
            .ok()
            .map(Reserved)
    }

    /// `bytes` of the allowance once free (in the order asked); the future owns what it
    /// needs, so a stream can keep it across polls.
    pub fn reserve(
        &self,
        bytes: usize,
    ) -> impl std::future::Future<Output = Option<Reserved>> + Send + 'static {
        let units = self.units(bytes);
        let kib = Arc::clone(&self.kib);
        // The semaphore is never closed; `None` would mean it was.
        async move { kib.acquire_many_owned(units).await.ok().map(Reserved) }
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

    #[test]
    fn reservations_share_one_allowance_until_dropped() {
        let memory = ConnectionMemory::new(4 * 256 * KIB);
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
        let memory = ConnectionMemory::new(8 * KIB);
        let one = memory.try_reserve(1).unwrap();
        assert_eq!(memory.available_bytes(), 7 * KIB);
        drop(one);
        let all = memory
            .try_reserve(1 << 30)
            .expect("clamped to the allowance");
        assert_eq!(memory.available_bytes(), 0);
        drop(all);
        assert_eq!(ConnectionMemory::new(0).total_bytes(), KIB);
    }

    #[tokio::test]
    async fn a_waiting_reservation_is_granted_when_memory_is_given_back() {
        let memory = ConnectionMemory::new(KIB);
        let held = memory.try_reserve(KIB).unwrap();
        let mut waiting = Box::pin(memory.reserve(KIB));
        use futures_util::FutureExt;
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "nothing is free yet"
        );
        drop(held);
        assert!(waiting.await.is_some());
    }
}
