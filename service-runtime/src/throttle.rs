//! Counting what a flood repeats, so that a log or a table gets one line per kind and window
//! instead of one per request: the first occurrence of each kind in a window passes, the rest
//! are counted and handed back as one total per kind when the window ends. At most
//! `max_kinds` kinds are kept per window; occurrences beyond them are counted together.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// What a window counted beyond the first occurrence of each kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally<K> {
    /// The kind (`None`: the kinds beyond the limit, together).
    pub kind: Option<K>,
    /// Occurrences not passed on.
    pub count: u64,
    /// When the window began.
    pub from: SystemTime,
    /// When it ended.
    pub to: SystemTime,
}

#[derive(Debug)]
struct Window<K> {
    started: Option<SystemTime>,
    counted: BTreeMap<K, u64>,
    others: u64,
}

impl<K> Default for Window<K> {
    fn default() -> Self {
        Self {
            started: None,
            counted: BTreeMap::new(),
            others: 0,
        }
    }
}

/// Occurrences by kind, in windows of a fixed length; time is passed in.
#[derive(Debug)]
pub struct Throttle<K> {
    window: Duration,
    max_kinds: usize,
    state: Mutex<Window<K>>,
}

impl<K: Ord + Clone> Throttle<K> {
    /// Windows of `window`, at most `max_kinds` kinds each.
    pub fn new(window: Duration, max_kinds: usize) -> Self {
        Self {
            window,
            max_kinds,
            state: Mutex::new(Window::default()),
        }
    }

    /// One occurrence of `kind` at `now`: whether to pass it on (the first of its kind in
    /// the window), and the tallies of a window that ended.
    pub fn note(&self, kind: &K, now: SystemTime) -> (bool, Vec<Tally<K>>) {
        let mut window = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ended = self.roll(&mut window, now);
        let full = window.counted.len() >= self.max_kinds;
        let first = match window.counted.get_mut(kind) {
            Some(n) => {
                *n += 1;
                false
            }
            None if full => {
                window.others += 1;
                false
            }
            None => {
                window.counted.insert(kind.clone(), 0);
                true
            }
        };
        (first, ended)
    }

    /// The tallies of a window that ended by `now` (call it every window).
    pub fn due(&self, now: SystemTime) -> Vec<Tally<K>> {
        let mut window = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.roll(&mut window, now)
    }

    /// Every tally so far, window ended or not (at shutdown).
    pub fn drain(&self, now: SystemTime) -> Vec<Tally<K>> {
        let mut window = self.state.lock().unwrap_or_else(|p| p.into_inner());
        tallies(std::mem::take(&mut *window), now)
    }

    fn roll(&self, window: &mut Window<K>, now: SystemTime) -> Vec<Tally<K>> {
        match window.started {
            None => {
                window.started = Some(now);
                Vec::new()
            }
            Some(started) if now >= started + self.window => {
                let ended = std::mem::take(window);
                window.started = Some(now);
                tallies(ended, started + self.window)
            }
            Some(_) => Vec::new(),
        }
    }
}

fn tallies<K>(window: Window<K>, to: SystemTime) -> Vec<Tally<K>> {
    let Some(from) = window.started else {
        return Vec::new();
    };
    let mut out: Vec<Tally<K>> = window
        .counted
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, count)| Tally {
            kind: Some(kind),
            count,
            from,
            to,
        })
        .collect();
    if window.others > 0 {
        out.push(Tally {
            kind: None,
            count: window.others,
            from,
            to,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000 + seconds)
    }

    #[test]
    fn a_flood_passes_once_and_is_tallied_once_per_window() {
        let throttle = Throttle::new(Duration::from_secs(60), 8);
        let mut passed = 0;
        for i in 0..10_000 {
            let (first, ended) = throttle.note(&"missing token", at(i % 30));
            passed += usize::from(first);
            assert!(ended.is_empty());
        }
        assert_eq!(passed, 1);
        assert!(throttle.due(at(59)).is_empty());
        let tallies = throttle.due(at(61));
        assert_eq!(tallies.len(), 1);
        assert_eq!(tallies[0].kind, Some("missing token"));
        assert_eq!(tallies[0].count, 9_999);
        assert_eq!((tallies[0].from, tallies[0].to), (at(0), at(60)));
        // A new window passes the next one again.
        assert!(throttle.note(&"missing token", at(62)).0);
        assert!(throttle.due(at(200)).is_empty(), "nothing more was counted");
    }

    #[test]
    fn kinds_are_bounded_and_the_rest_counted_together() {
        let throttle = Throttle::new(Duration::from_secs(60), 64);
        let passed = (0..1_000)
            .filter(|i| throttle.note(&format!("VIN{i}"), at(1)).0)
            .count();
        assert_eq!(passed, 64);
        let tallies = throttle.drain(at(2));
        assert_eq!(tallies.len(), 1);
        assert_eq!(tallies[0].kind, None);
        assert_eq!(tallies[0].count, 1_000 - 64);
    }
}
