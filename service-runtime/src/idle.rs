//! A connection closed after a time with no progress: an idle keep-alive connection, a body
//! that stopped arriving, or a client that stopped reading the answer. Every byte read or
//! written starts the time again, so a large transfer that keeps moving is never cut
//! ([`Idle`]); and a connection on which no request has run for that time is closed too,
//! whatever bytes it moves ([`RequestActivity`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `IO` that fails with `TimedOut` once `timeout` passes without a byte either way.
#[derive(Debug)]
pub struct Idle<IO> {
    io: IO,
    timeout: Duration,
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
            progress: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn progressed(&mut self) {
        self.progress = Instant::now();
    }

    /// A write's outcome: bytes written are progress; pending checks the deadline.
    fn written(
        &mut self,
        polled: Poll<std::io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
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
        this.written(polled, cx)
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
        this.written(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The requests of one connection, for closing it once none has run for a while: bytes
/// alone are not activity (an HTTP/2 client answering or sending PINGs, or sending frames
/// the server ignores, moves bytes without ever asking for anything, and would hold its
/// connection, and a connection slot, for ever).
#[derive(Debug)]
pub struct RequestActivity {
    state: std::sync::Mutex<ActivityState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    /// When the last request ended (or the connection began).
    since: Instant,
}

impl Default for RequestActivity {
    fn default() -> Self {
        Self {
            state: std::sync::Mutex::new(ActivityState {
                in_flight: 0,
                since: Instant::now(),
            }),
            changed: tokio::sync::Notify::new(),
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
        InFlight(std::sync::Arc::clone(self))
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

/// A running request of a [`RequestActivity`].
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<RequestActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let last = {
            let mut state = self.0.state();
            state.in_flight -= 1;
            state.since = Instant::now();
            state.in_flight == 0
        };
        if last {
            self.0.changed.notify_waiters();
        }
    }
}

/// A response body that keeps its request counted as running until it is sent or dropped.
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    _running: InFlight,
}

impl<B> Tracked<B> {
    /// `body`, its request running while it lives.
    pub fn new(body: B, running: InFlight) -> Self {
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
        let activity = std::sync::Arc::new(RequestActivity::default());
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
        let fresh = RequestActivity::default();
        let started = Instant::now();
        fresh.idle_for(timeout).await;
        assert_eq!(started.elapsed(), timeout);
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
