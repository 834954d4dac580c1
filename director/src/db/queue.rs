//! The writer's queue of jobs: bounded, many senders, one receiver (the writer thread).
//!
//! Unlike `std::sync::mpsc`, whose every send wakes a receiver that sleeps, a sender here
//! wakes the receiver only once as many jobs wait as it asked for. While the writer gathers
//! a batch it asks for a few at a time ([`super::WAKE_STEP`]), not one: in the signed-first
//! row each write woke the writer, a `futex` call on the async thread that sent it and a
//! sleep and a wake-up on the writer, about a tenth of the Director's CPU
//! (`docs/BENCHMARKS.md`, "The writer woken once for several writes").

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// A bounded queue of `T` with the receiver's wake-ups asked for by count.
pub(super) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            jobs: VecDeque::new(),
            wake_at: 0,
            waiting_for_room: 0,
            senders: 1,
            receiver: true,
            #[cfg(test)]
            wakes: 0,
        }),
        arrived: Condvar::new(),
        room: Condvar::new(),
        capacity,
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// The receiver sleeps here until `wake_at` jobs wait, or every sender is gone.
    arrived: Condvar,
    /// Senders sleep here until there is room.
    room: Condvar,
    capacity: usize,
}

struct State<T> {
    jobs: VecDeque<T>,
    /// The receiver sleeps until this many jobs wait (0: it is not sleeping, or was woken).
    wake_at: usize,
    /// Senders sleeping until there is room: only then does a job taken wake one.
    waiting_for_room: usize,
    senders: usize,
    receiver: bool,
    /// The receiver's wake-ups by a job queued.
    #[cfg(test)]
    wakes: usize,
}

impl<T> Shared<T> {
    /// Nothing panics while holding the lock but an allocation failure, which aborts: a
    /// poisoned lock holds a sound queue.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
impl<T> Shared<T> {
    /// Waits (bounded: 30 s) until `condition` holds of the queue's state.
    fn until(&self, condition: impl Fn(&State<T>) -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !condition(&self.lock()) {
            assert!(Instant::now() < deadline, "the condition never held");
            std::thread::yield_now();
        }
    }
}

/// Why [`Sender::try_send`] did not queue a job (given back).
pub(super) enum TrySendError<T> {
    /// The queue holds its capacity.
    Full(T),
    /// The receiver is gone.
    Disconnected(T),
}

/// Queues jobs. Once every sender is gone, the receiver takes what is left and then stops.
pub(super) struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `job` unless the queue is full or the receiver gone.
    pub(super) fn try_send(&self, job: T) -> Result<(), TrySendError<T>> {
        let state = self.0.lock();
        if !state.receiver {
            return Err(TrySendError::Disconnected(job));
        }
        if state.jobs.len() >= self.0.capacity {
            return Err(TrySendError::Full(job));
        }
        self.push(state, job);
        Ok(())
    }

    /// Queues `job`, waiting for room as long as it takes; gives it back if the receiver is
    /// gone.
    pub(super) fn send(&self, job: T) -> Result<(), T> {
        let mut state = self.0.lock();
        loop {
            if !state.receiver {
                return Err(job);
            }
            if state.jobs.len() < self.0.capacity {
                self.push(state, job);
                return Ok(());
            }
            state.waiting_for_room += 1;
            state = self
                .0
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting_for_room -= 1;
        }
    }

    /// How many jobs the receiver sleeps until, once it sleeps on a count (bounded: 30 s).
    /// Only while this is the one sender: another could wake it meanwhile.
    #[cfg(test)]
    pub(super) fn asked(&self) -> usize {
        self.0.until(|s| s.wake_at != 0);
        self.0.lock().wake_at
    }

    fn push(&self, mut state: MutexGuard<'_, State<T>>, job: T) {
        state.jobs.push_back(job);
        let wake = state.wake_at != 0 && state.jobs.len() >= state.wake_at;
        if wake {
            // Once: the senders that follow before it runs do not call again.
            state.wake_at = 0;
            #[cfg(test)]
            {
                state.wakes += 1;
            }
        }
        drop(state);
        if wake {
            self.0.arrived.notify_one();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(Arc::clone(&self.0))
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.0.arrived.notify_one();
        }
    }
}

/// Takes jobs in the order they were queued.
pub(super) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next job, waiting as long as it takes; `None` once every sender is gone and no job
    /// waits.
    pub(super) fn recv(&self) -> Option<T> {
        self.recv_when(1, None)
    }

    /// The next job if one waits.
    pub(super) fn try_recv(&self) -> Option<T> {
        self.take(self.0.lock())
    }

    /// The next job, once `at_least` jobs wait, or sooner if `deadline` passes or every
    /// sender goes (then `None` if none waits).
    pub(super) fn recv_when(&self, at_least: usize, deadline: Option<Instant>) -> Option<T> {
        // More than the queue holds would never come: its senders would wait for room.
        let at_least = at_least.clamp(1, self.0.capacity.max(1));
        let mut state = self.0.lock();
        while state.jobs.len() < at_least && state.senders > 0 {
            state.wake_at = at_least;
            state = match deadline {
                None => self
                    .0
                    .arrived
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    self.0
                        .arrived
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        state.wake_at = 0;
        self.take(state)
    }

    fn take(&self, mut state: MutexGuard<'_, State<T>>) -> Option<T> {
        let job = state.jobs.pop_front();
        let waiting = job.is_some() && state.waiting_for_room > 0;
        drop(state);
        if waiting {
            self.0.room.notify_one();
        }
        job
    }
}

impl<T> Drop for Receiver<T> {
    /// The jobs left are dropped (their callers learn that the writer is gone), outside the
    /// lock: a job may own a sender, whose drop takes it.
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver = false;
        let left = std::mem::take(&mut state.jobs);
        let waiting = state.waiting_for_room > 0;
        drop(state);
        drop(left);
        if waiting {
            self.0.room.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A receiver that asked for three is not woken by the first two (they leave its request
    /// in place) and is by the third, which takes the first job.
    #[test]
    fn the_receiver_is_woken_once_as_many_wait_as_it_asked() {
        let (send, jobs) = bounded(16);
        let shared = Arc::clone(&jobs.0);
        let receiver = std::thread::spawn(move || (jobs.recv_when(3, None), jobs));
        shared.until(|s| s.wake_at == 3);
        send.try_send(1).ok().unwrap();
        send.try_send(2).ok().unwrap();
        assert_eq!(shared.lock().wakes, 0, "woken before three waited");
        send.try_send(3).ok().unwrap();
        let (first, jobs) = receiver.join().unwrap();
        assert_eq!(first, Some(1));
        assert_eq!(shared.lock().wakes, 1);
        assert_eq!(jobs.try_recv(), Some(2));
        assert_eq!(jobs.recv_when(5, Some(Instant::now())), Some(3));
        assert_eq!(jobs.try_recv(), None);
    }

    /// At its deadline a receiver takes what waits, fewer than it asked for, or nothing.
    #[test]
    fn at_the_deadline_the_receiver_takes_what_waits() {
        let (send, jobs) = bounded(16);
        send.try_send(1).ok().unwrap();
        let soon = Instant::now() + Duration::from_millis(1);
        assert_eq!(jobs.recv_when(4, Some(soon)), Some(1));
        assert_eq!(jobs.recv_when(4, Some(soon)), None);
        assert!(Instant::now() >= soon);
        assert_eq!(jobs.0.lock().wake_at, 0);
    }

    /// Every sender gone ends a wait, whatever was asked for, once the jobs left are taken.
    #[test]
    fn every_sender_gone_ends_the_wait() {
        let (send, jobs) = bounded(16);
        let other = send.clone();
        let shared = Arc::clone(&jobs.0);
        let receiver = std::thread::spawn(move || {
            let first = jobs.recv_when(10, None);
            (first, jobs.recv())
        });
        shared.until(|s| s.wake_at == 10);
        other.try_send(7).ok().unwrap();
        drop(other);
        assert_eq!(shared.lock().wakes, 0, "woken with a sender left");
        drop(send);
        assert_eq!(receiver.join().unwrap(), (Some(7), None));
    }

    /// A full queue refuses `try_send`; `send` waits for room, and is given it by the next
    /// job taken.
    #[test]
    fn a_full_queue_refuses_or_makes_the_sender_wait_for_room() {
        let (send, jobs) = bounded(2);
        send.try_send(1).ok().unwrap();
        send.try_send(2).ok().unwrap();
        assert!(matches!(send.try_send(3), Err(TrySendError::Full(3))));
        let shared = Arc::clone(&jobs.0);
        let sender = std::thread::spawn(move || send.send(3));
        shared.until(|s| s.waiting_for_room == 1);
        assert_eq!(jobs.try_recv(), Some(1));
        assert!(sender.join().unwrap().is_ok());
        assert_eq!(
            (jobs.recv(), jobs.recv(), jobs.recv()),
            (Some(2), Some(3), None)
        );
    }

    /// The receiver gone, a job is given back, also to a sender waiting for room, and the
    /// jobs it left are dropped, senders they own included.
    #[test]
    fn the_receiver_gone_gives_the_job_back_and_drops_the_jobs_left() {
        let (send, jobs) = bounded::<(u32, Option<Sender<u32>>)>(1);
        // A job that owns a sender (of another queue here), as a write can own a database
        // handle: its drop must not wait for the lock the receiver's drop holds.
        let (owned, owned_jobs) = bounded::<u32>(1);
        send.try_send((1, Some(owned))).ok().unwrap();
        let shared = Arc::clone(&jobs.0);
        let other = send.clone();
        let sender = std::thread::spawn(move || other.send((2, None)).map_err(|(n, _)| n));
        shared.until(|s| s.waiting_for_room == 1);
        drop(jobs);
        assert_eq!(sender.join().unwrap(), Err(2));
        assert!(matches!(
            send.try_send((3, None)),
            Err(TrySendError::Disconnected((3, None)))
        ));
        assert!(shared.lock().jobs.is_empty());
        assert_eq!(
            owned_jobs.0.lock().senders,
            0,
            "the job left was not dropped"
        );
    }
}
