//! A connection closed after a time with no progress: an idle keep-alive connection, a body
//! that stopped arriving, or a client that stopped reading the answer. Every byte read or
//! written starts the time again, so a large transfer that keeps moving is never cut
//! ([`Idle`]); a connection on which no request has run for that time is closed too,
//! whatever bytes it moves ([`RequestActivity::idle_for`]); and one whose responses are read
//! slower than a minimum speed, however regularly, is dropped
//! ([`RequestActivity::sent_below`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::speed::{MinSpeed, SpeedMonitor};

/// Bytes a connection has written to its socket, ever: counted by [`Idle`], judged by
/// [`RequestActivity::sent_below`].
#[derive(Debug, Clone, Default)]
pub struct Written(std::sync::Arc<AtomicU64>);

impl Written {
    /// Bytes written so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// `IO` that fails with `TimedOut` once `timeout` passes without a byte either way, and
/// counts the bytes written to it.
#[derive(Debug)]
pub struct Idle<IO> {
    io: IO,
    timeout: Duration,
    written: Written,
    /// When a byte last moved.
    progress: Instant,
    /// Armed for `progress + timeout` as of when it was last set; moved forward only when it
    /// fires, so a busy connection costs a clock read per operation, not a timer update.
    deadline: Pin<Box<Sleep>>,
}

impl<IO> Idle<IO> {
    /// Wraps `io`.
    pub fn new(io: IO, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            written: Written::default(),
            progress: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The count of bytes written to it, shared.
    pub fn written(&self) -> Written {
        self.written.clone()
    }

    fn progressed(&mut self) {
        self.progress = Instant::now();
    }

    /// A write's outcome: bytes written are progress; pending checks the deadline.
    fn wrote(
        &mut self,
        polled: Poll<std::io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                    self.written.add(n);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.expired(cx),
        }
    }

    /// Pending: fails if the time without progress is up (the deadline's waker is
    /// registered either way).
    fn expired<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        loop {
            match self.deadline.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    let due = self.progress + self.timeout;
                    if due <= Instant::now() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no progress for {} s", self.timeout.as_secs()),
                        )));
                    }
                    // Bytes moved since it was armed: re-arm from the last of them.
                    self.deadline.as_mut().reset(due);
                }
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Idle<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.expired(cx),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Idle<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        this.wrote(polled, cx)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.expired(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The requests of one connection, for closing it once none has run for a while: bytes
/// alone are not activity (an HTTP/2 client answering or sending PINGs, or sending frames
/// the server ignores, moves bytes without ever asking for anything, and would hold its
/// connection, and a connection slot, for ever). And its responses, for dropping it when they
/// are read too slowly: a client that reads a large download a little at a time (small
/// HTTP/2 window updates, or a TCP segment now and then) moves bytes often enough for
/// [`Idle`], and has a request running.
#[derive(Debug)]
pub struct RequestActivity {
    state: std::sync::Mutex<ActivityState>,
    changed: tokio::sync::Notify,
    /// What the connection has written to its socket.
    sent: Written,
    /// The memory its streamed responses hold: bytes read ahead of the socket, some perhaps
    /// of a body already handed over whole (hyper's HTTP/2 takes a chunk whole and queues it
    /// for the peer's window), so still unread by the client.
    queued: crate::conn_memory::Allowance,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    /// When the last request ended (or the connection began).
    since: Instant,
    /// Responses whose bodies are being sent: handed to the connection, not yet ended.
    sending: usize,
    /// While `sending` is above zero: since when, without a break.
    sending_since: Option<Instant>,
    /// The time some response was being sent, over the stretches that have ended.
    sent_for: Duration,
}

impl ActivityState {
    /// The connection's sending clock: the time during which some response of the connection
    /// was being sent, all stretches together. Its speed is judged on this clock, so the time
    /// a handler takes, or between requests, is not the client's; and one clock for the
    /// connection's life, so a client that ends its download (an HTTP/2 reset) and asks for
    /// the rest again is not given a new grace period.
    fn sending_clock(&self, now: Instant) -> Duration {
        self.sent_for
            + self
                .sending_since
                .map_or(Duration::ZERO, |since| now - since)
    }
}

impl RequestActivity {
    /// For a connection whose socket's writes are counted by `sent` ([`Idle::written`]) and
    /// whose streamed responses hold `queued`.
    pub fn new(sent: Written, queued: crate::conn_memory::Allowance) -> Self {
        Self {
            state: std::sync::Mutex::new(ActivityState {
                in_flight: 0,
                since: Instant::now(),
                sending: 0,
                sending_since: None,
                sent_for: Duration::ZERO,
            }),
            changed: tokio::sync::Notify::new(),
            sent,
            queued,
        }
    }
}

impl RequestActivity {
    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request begins; it is running until the guard (kept with its response body until
    /// the body is sent or dropped) is dropped.
    pub fn begin(self: &std::sync::Arc<Self>) -> InFlight {
        // Nobody is woken: a waiter finds the request when its timer fires.
        self.state().in_flight += 1;
        InFlight {
            activity: std::sync::Arc::clone(self),
            sending: false,
        }
    }

    /// Completes once no request has run for `timeout`. Woken only when the last running
    /// request ends or its timer fires, not at every request of a busy connection.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read, so an end in between is not missed.
            changed.as_mut().enable();
            let due = {
                let state = self.state();
                (state.in_flight == 0).then(|| state.since + timeout)
            };
            match due {
                Some(due) if due <= Instant::now() => return,
                // Requests that run and end meanwhile move `since`: looked at when it fires.
                Some(due) => tokio::time::sleep_until(due).await,
                None => changed.await,
            }
        }
    }
}

/// How often [`RequestActivity::sent_below`] looks at the bytes sent.
const SPEED_TICK: std::time::Duration = std::time::Duration::from_secs(1);

impl RequestActivity {
    /// Completes, with the speed reached in bytes per second, once the connection's socket
    /// takes its responses slower than `min` ([`SpeedMonitor`] on the connection's sending
    /// clock, [`ActivityState::sending_clock`]: past the grace period, over a sliding window
    /// as long; all the responses being sent at once count together). Never while no
    /// response is being sent, nor with a minimum of 0. Looks once a second, rather than being
    /// woken at every response of a busy connection. The clock also runs while bytes of a
    /// response handed over whole are still queued, unread ([`Self::new`]'s `queued`).
    ///
    /// The bytes are all those the socket took, whatever they carry: the connection takes a
    /// body's bytes a chunk (or a whole file's allowance) at a time ahead of the socket, far
    /// too coarse to judge by. A client may pay for its bytes with PINGs, each answered,
    /// rather than by reading, or with small responses between downloads: either way,
    /// keeping a response unread costs it the minimum.
    pub async fn sent_below(&self, min: MinSpeed) -> u64 {
        if min.bytes_per_sec == 0 {
            return std::future::pending().await;
        }
        let mut ticks = tokio::time::interval_at(Instant::now() + SPEED_TICK, SPEED_TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut monitor = SpeedMonitor::new(min);
        // Time with no body being sent but bytes of one queued, summed a tick at a time.
        let mut queued_for = Duration::ZERO;
        // When it last looked, the bodies' clock then, and the whole clock then.
        let mut looked = (Instant::now(), Duration::ZERO, Duration::ZERO);
        loop {
            ticks.tick().await;
            let now = Instant::now();
            let (bodies, sending) = {
                let state = self.state();
                (state.sending_clock(now), state.sending > 0)
            };
            if !sending && self.queued.available_bytes() < self.queued.total_bytes() {
                // The part of the second no body was being sent (a body that ended since the
                // last look has its time on the bodies' clock already).
                queued_for += (now - looked.0).saturating_sub(bodies.saturating_sub(looked.1));
            }
            let clock = bodies + queued_for;
            let moved = clock != looked.2;
            looked = (now, bodies, clock);
            // The clock stood still since the last look: nothing to judge. A response sent
            // and ended between two looks moved it, and is judged.
            if moved && let Some(speed) = monitor.observe(clock, self.sent.get()) {
                return speed;
            }
        }
    }
}

/// A running request of a [`RequestActivity`].
#[derive(Debug)]
pub struct InFlight {
    activity: std::sync::Arc<RequestActivity>,
    /// Its response's body has been handed to the connection.
    sending: bool,
}

impl InFlight {
    /// The response's body is handed to the connection: it is being sent from now on.
    fn sending(&mut self) {
        if self.sending {
            return;
        }
        self.sending = true;
        let mut state = self.activity.state();
        state.sending += 1;
        if state.sending_since.is_none() {
            state.sending_since = Some(Instant::now());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let last = {
            let mut state = self.activity.state();
            state.in_flight -= 1;
            let now = Instant::now();
            state.since = now;
            if self.sending {
                state.sending -= 1;
                if state.sending == 0
                    && let Some(since) = state.sending_since.take()
                {
                    state.sent_for += now - since;
                }
            }
            state.in_flight == 0
        };
        if last {
            self.activity.changed.notify_waiters();
        }
    }
}

/// A response body that keeps its request counted as running until it is sent or dropped,
/// and as being sent from when it is handed to the connection ([`RequestActivity::sent_below`]).
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    _running: InFlight,
}

impl<B> Tracked<B> {
    /// `body`, its request running while it lives, being sent from now on.
    pub fn new(body: B, mut running: InFlight) -> Self {
        running.sending();
        Self {
            body,
            _running: running,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_once_no_request_ran_for_the_timeout() {
        let (_, activity, _) = counted(crate::conn_memory::Allowance::new(1));
        let timeout = Duration::from_secs(60);
        let started = Instant::now();
        // A request runs for 100 s: not idle meanwhile, idle 60 s after it ends.
        let running = activity.begin();
        let ender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            drop(running);
        });
        activity.idle_for(timeout).await;
        assert_eq!(started.elapsed(), Duration::from_secs(160));
        ender.await.unwrap();
        // No request at all: idle after the timeout.
        let (_, fresh, _) = counted(crate::conn_memory::Allowance::new(1));
        let started = Instant::now();
        fresh.idle_for(timeout).await;
        assert_eq!(started.elapsed(), timeout);
    }

    /// A connection's activity, its socket's writes counted by the `Written` returned and its
    /// streamed responses holding `queue`, and the minimum these tests hold it to: 4 KiB/s
    /// past 10 s.
    fn counted(
        queue: crate::conn_memory::Allowance,
    ) -> (Written, std::sync::Arc<RequestActivity>, MinSpeed) {
        let written = Written::default();
        let activity = std::sync::Arc::new(RequestActivity::new(written.clone(), queue));
        let min = MinSpeed {
            bytes_per_sec: 4096,
            grace: Duration::from_secs(10),
        };
        (written, activity, min)
    }

    /// A response being sent for `running` while the socket takes `per_second` bytes each
    /// second for `seconds`, as it would for a client reading at that speed.
    async fn sent_for(running: InFlight, written: &Written, per_second: usize, seconds: u64) {
        let _response = Tracked::new(String::new(), running);
        for _ in 0..seconds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            written.add(per_second);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn responses_read_slower_than_the_minimum_are_caught_and_nothing_else_is() {
        let (written, activity, min) = counted(crate::conn_memory::Allowance::new(1024));
        let watch = activity.sent_below(min);
        tokio::pin!(watch);
        // A handler that takes 100 s is not the client's slowness...
        let running = activity.begin();
        tokio::select! {
            speed = &mut watch => panic!("caught while the handler ran: {speed} B/s"),
            () = tokio::time::sleep(Duration::from_secs(100)) => {}
        }
        // ...its response read at 8 KiB/s for a minute is fast enough...
        tokio::select! {
            speed = &mut watch => panic!("caught at 8 KiB/s: {speed} B/s"),
            () = sent_for(running, &written, 8192, 60) => {}
        }
        // ...and nor is the time between requests, however little the socket takes (a PING
        // answered now and then).
        tokio::select! {
            speed = &mut watch => panic!("caught between requests: {speed} B/s"),
            () = async {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    written.add(17);
                }
            } => {}
        }
        // A response read at 1 KiB/s is caught within a window: the fast one before it buys
        // nothing past that.
        let started = Instant::now();
        let speed = tokio::select! {
            speed = &mut watch => speed,
            () = sent_for(activity.begin(), &written, 1024, 600) => {
                panic!("a response read at 1 KiB/s was never caught")
            }
        };
        assert!(speed < 4096, "{speed} B/s");
        assert!(
            started.elapsed() <= min.grace + 2 * SPEED_TICK,
            "caught only after {:?}",
            started.elapsed()
        );
    }

    /// A response held unread.
    async fn held_for(running: InFlight, time: Duration) {
        let _response = Tracked::new(String::new(), running);
        tokio::time::sleep(time).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_asked_for_again_gets_no_new_grace_period() {
        let queue = crate::conn_memory::Allowance::new(1024);
        let (written, activity, min) = counted(queue);
        let grace = min.grace;
        let watch = activity.sent_below(min);
        tokio::pin!(watch);
        // Nothing read for 90% of the grace period, then the download reset (an HTTP/2
        // RST_STREAM) and, a while later, asked for again from where it stopped.
        tokio::select! {
            speed = &mut watch => panic!("caught within the grace period: {speed} B/s"),
            () = held_for(activity.begin(), grace * 9 / 10) => {}
        }
        tokio::select! {
            speed = &mut watch => panic!("caught while nothing was sent: {speed} B/s"),
            () = tokio::time::sleep(Duration::from_secs(30)) => written.add(1024),
        }
        let started = Instant::now();
        tokio::select! {
            _ = &mut watch => {}
            () = held_for(activity.begin(), grace * 9 / 10) => {
                panic!("the second request got a grace period of its own")
            }
        }
        assert!(started.elapsed() <= grace / 10 + 2 * SPEED_TICK);
    }

    /// A response of one chunk, handed over whole (its body ended at once) while its bytes
    /// wait unread in the connection's queue: judged as being sent, as a range request of a
    /// chunk read at a trickle would otherwise never be.
    #[tokio::test(start_paused = true)]
    async fn bytes_queued_unread_keep_the_clock_running() {
        let queue = crate::conn_memory::Allowance::new(1 << 20);
        let (_, activity, min) = counted(queue.clone());
        let grace = min.grace;
        let watch = activity.sent_below(min);
        tokio::pin!(watch);
        // Handed over and ended, nothing queued: nothing to judge.
        drop(Tracked::new(String::new(), activity.begin()));
        tokio::select! {
            speed = &mut watch => panic!("caught with nothing queued: {speed} B/s"),
            () = tokio::time::sleep(Duration::from_secs(100)) => {}
        }
        // Handed over and ended, 256 KiB queued and never read: caught.
        let chunk = queue.try_reserve(256 * 1024).unwrap();
        drop(Tracked::new(String::new(), activity.begin()));
        let started = Instant::now();
        tokio::select! {
            _ = &mut watch => {}
            () = tokio::time::sleep(Duration::from_secs(600)) => panic!("queued bytes never judged"),
        }
        assert!(
            started.elapsed() <= grace + 2 * SPEED_TICK,
            "{:?}",
            started.elapsed()
        );
        drop(chunk);
    }

    /// Responses unread for most of each second, none of them at the moment the clock is
    /// looked at (once a second): judged all the same once their time adds up to the grace
    /// period.
    #[tokio::test(start_paused = true)]
    async fn responses_that_end_between_two_looks_are_judged() {
        let (_, activity, min) = counted(crate::conn_memory::Allowance::new(1024));
        let watch = activity.sent_below(min);
        tokio::pin!(watch);
        // Its first look is a second from its first poll.
        let started = Instant::now();
        let responses = async {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                held_for(activity.begin(), Duration::from_millis(800)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            _ = &mut watch => {}
            () = responses => panic!("responses ending between looks were never judged"),
        }
        // 0.8 s of each second counts: the grace period has passed after 12.5 s.
        let caught = started.elapsed();
        assert!(
            caught >= Duration::from_secs(12) && caught <= Duration::from_secs(15),
            "{caught:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_responses_keep_the_clock_running() {
        let (_, activity, min) = counted(crate::conn_memory::Allowance::new(1024));
        let grace = min.grace;
        // One response unread for 9 s, a second from 5 s on: never a moment with nothing
        // sent, so the grace period ends 10 s after the first began.
        let started = Instant::now();
        let first = held_for(activity.begin(), Duration::from_secs(9));
        let second = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            held_for(activity.begin(), Duration::from_secs(600)).await;
        };
        tokio::select! {
            _ = activity.sent_below(min) => {}
            _ = futures_util::future::join(first, second) => panic!("never caught"),
        }
        let caught = started.elapsed();
        assert!(
            caught >= grace && caught <= grace + 2 * SPEED_TICK,
            "{caught:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_minimum_catches_nothing() {
        let (written, activity, _) = counted(crate::conn_memory::Allowance::new(1024));
        let min = MinSpeed {
            bytes_per_sec: 0,
            grace: Duration::from_secs(1),
        };
        tokio::select! {
            speed = activity.sent_below(min) => panic!("caught: {speed} B/s"),
            () = sent_for(activity.begin(), &written, 1, 30) => {}
        }
    }

    #[tokio::test]
    async fn the_bytes_written_are_counted() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut idle = Idle::new(near, Duration::from_secs(10));
        let written = idle.written();
        idle.write_all(b"twelve bytes").await.unwrap();
        assert_eq!(written.get(), 12);
        let mut got = [0u8; 12];
        far.read_exact(&mut got).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_cut_and_a_moving_one_is_not() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut idle = Idle::new(near, Duration::from_secs(10));
        // Bytes every 9 s for a minute: never cut.
        let talker = tokio::spawn(async move {
            for _ in 0..7 {
                tokio::time::sleep(Duration::from_secs(9)).await;
                far.write_all(b"x").await.unwrap();
            }
            far
        });
        let mut got = [0u8; 7];
        idle.read_exact(&mut got).await.unwrap();
        let _far = talker.await.unwrap();
        // Then silence: cut 10 s later.
        let started = Instant::now();
        let err = idle.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
