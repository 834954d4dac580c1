//! The minimum speed a transfer is held to, one rule for every transfer of the workspace:
//! the Primary's downloads from a repository (`primary-ecu` `repo/fetch.rs`) and uploads to a
//! Secondary (`primary-ecu` `secondary.rs`), and the servers' responses to a client that
//! reads them (`crate::idle::RequestActivity::sent_below`). Uptane's slow-retrieval defence
//! (threat model, "slow retrieval") on the vehicle's side; on the servers', a client that reads
//! just fast enough to keep a connection alive must not hold it, and a connection slot, for
//! ever.
//!
//! Past a grace period the speed is judged over a sliding window (the grace period, or longer
//! for downloads, at least a second), so that a fast start cannot buy a slow remainder, and
//! since the start while the transfer is younger than a window; once every byte is handed
//! over, the whole transfer's average is judged instead. Sans I/O: the caller
//! says how long the transfer has run and how many bytes moved, so tests inject time.

use std::collections::VecDeque;
use std::time::Duration;

/// The slowest a transfer may run, after a grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinSpeed {
    /// Bytes per second (0: no check).
    pub bytes_per_sec: u64,
    /// How long a transfer runs before the check applies.
    pub grace: Duration,
}

impl Default for MinSpeed {
    fn default() -> Self {
        Self {
            bytes_per_sec: 0,
            grace: Duration::from_secs(5),
        }
    }
}

/// Samples closer together than this are one: the window holds a bounded number of them
/// however many chunks a fast transfer moves.
const SAMPLE_SPACING: Duration = Duration::from_millis(250);

/// One transfer's speed, observed as it runs.
#[derive(Debug, Clone)]
pub struct SpeedMonitor {
    min: MinSpeed,
    window: Duration,
    /// (time since the start, bytes moved by then), oldest first, spanning about a window.
    samples: VecDeque<(Duration, u64)>,
}

impl SpeedMonitor {
    /// A transfer starting now, held to `min` over windows as long as its grace period.
    pub fn new(min: MinSpeed) -> Self {
        Self::with_window(min, min.grace)
    }

    /// A transfer starting now, held to `min` over windows of `window` (at least the grace
    /// period and a second): a download over a mobile network may pause for as long as its
    /// read timeout allows without being taken for an attack.
    pub fn with_window(min: MinSpeed, window: Duration) -> Self {
        Self {
            min,
            window: window.max(min.grace).max(Duration::from_secs(1)),
            samples: VecDeque::from([(Duration::ZERO, 0)]),
        }
    }

    /// `bytes` moved in the `elapsed` time since the start: the speed in bytes per second
    /// over the last window when it is below the minimum, else `None`.
    pub fn observe(&mut self, elapsed: Duration, bytes: u64) -> Option<u64> {
        if self.min.bytes_per_sec == 0 {
            return None;
        }
        if self
            .samples
            .back()
            .is_none_or(|(at, _)| elapsed >= *at + SAMPLE_SPACING)
        {
            self.samples.push_back((elapsed, bytes));
        }
        while self.samples.len() > 1 && elapsed.saturating_sub(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
        let (since, then) = self.samples[0];
        let span = elapsed.saturating_sub(since);
        // Younger than a window, the transfer is judged since its start, once past the grace
        // period (the oldest sample is then the start).
        if span < self.window && elapsed <= self.min.grace {
            return None;
        }
        self.below(bytes.saturating_sub(then), span)
    }

    /// Every one of `total` bytes handed over after `elapsed`: the whole transfer's average
    /// when it is below the minimum (past the grace period), else `None`.
    pub fn finished(&self, elapsed: Duration, total: u64) -> Option<u64> {
        if self.min.bytes_per_sec == 0 || elapsed <= self.min.grace {
            return None;
        }
        self.below(total, elapsed)
    }

    fn below(&self, bytes: u64, span: Duration) -> Option<u64> {
        let seconds = span.as_secs_f64();
        ((bytes as f64) < self.min.bytes_per_sec as f64 * seconds)
            .then(|| (bytes as f64 / seconds) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn monitor(bytes_per_sec: u64, grace_secs: u64) -> SpeedMonitor {
        SpeedMonitor::new(MinSpeed {
            bytes_per_sec,
            grace: Duration::from_secs(grace_secs),
        })
    }

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn nothing_is_judged_within_the_grace_period() {
        let mut m = monitor(100 * KIB, 2);
        for ms in (0..2_000).step_by(100) {
            assert_eq!(m.observe(at(ms), 0), None, "{ms} ms");
        }
        // Past it, a transfer that moved nothing is too slow.
        assert_eq!(m.observe(at(2_000), 0), Some(0));
    }

    #[test]
    fn a_steady_transfer_above_the_minimum_is_never_stopped() {
        let mut m = monitor(100 * KIB, 1);
        for ms in (0..60_000).step_by(50) {
            assert_eq!(m.observe(at(ms), ms * 150 * KIB / 1000), None, "{ms} ms");
        }
    }

    #[test]
    fn a_fast_start_does_not_buy_a_trickle_after_it() {
        let mut m = monitor(100 * KIB, 1);
        // 10 MiB in the first second: the whole transfer's average stays far above the
        // minimum for minutes, but the last window's is what counts.
        let burst = 10 * 1024 * KIB;
        assert_eq!(m.observe(at(1_000), burst), None);
        let mut stopped = None;
        for ms in (1_250..10_000).step_by(250) {
            // 10 KiB/s from then on.
            let bytes = burst + (ms - 1_000) * 10 * KIB / 1000;
            if let Some(rate) = m.observe(at(ms), bytes) {
                stopped = Some((ms, rate));
                break;
            }
        }
        let (ms, rate) = stopped.expect("the trickle is stopped");
        assert!(ms <= 2_250, "stopped only at {ms} ms");
        assert!((9 * KIB..=11 * KIB).contains(&rate), "{rate} B/s");
    }

    #[test]
    fn the_finished_transfer_is_judged_by_its_average_after_the_grace_period() {
        let m = monitor(100 * KIB, 2);
        assert_eq!(m.finished(at(1_500), KIB), None, "within the grace period");
        assert_eq!(m.finished(at(4_000), 1_000 * KIB), None, "250 KiB/s");
        assert_eq!(m.finished(at(4_000), 200 * KIB), Some(51_200));
    }

    #[test]
    fn a_pause_shorter_than_a_longer_window_is_not_taken_for_slow_retrieval() {
        let min = MinSpeed {
            bytes_per_sec: 100 * KIB,
            grace: Duration::from_secs(5),
        };
        let mut m = SpeedMonitor::with_window(min, Duration::from_secs(30));
        // 10 MiB in 5 s, then a 10 s radio dropout, then on at 1 MiB/s.
        let fast = 10 * 1024 * KIB;
        for ms in (0..=5_000).step_by(250) {
            assert_eq!(m.observe(at(ms), fast * ms / 5_000), None);
        }
        for ms in (5_250..15_000).step_by(250) {
            assert_eq!(m.observe(at(ms), fast), None, "{ms} ms");
        }
        // A window of the grace period alone would have stopped it.
        let mut short = SpeedMonitor::new(min);
        short.observe(at(5_000), fast);
        assert!(short.observe(at(10_500), fast).is_some());
    }

    #[test]
    fn a_zero_minimum_disables_the_check() {
        let mut m = monitor(0, 0);
        assert_eq!(m.observe(at(60_000), 0), None);
        assert_eq!(m.finished(at(60_000), 0), None);
    }

    #[test]
    fn the_window_holds_a_bounded_number_of_samples() {
        let mut m = monitor(1, 5);
        // A million chunks in ten seconds.
        for i in 0..1_000_000u64 {
            m.observe(Duration::from_micros(i * 10), i);
        }
        assert!(m.samples.len() <= 22, "{} samples", m.samples.len());
    }
}
