//! Refusals of unauthenticated or unauthorized requests, aggregated before they reach the
//! append-only event log: a flood of them (no credential at all is enough to be refused)
//! must not become a row, and an fsync, per request.
//!
//! The first refusal of each kind (same event kind, vehicle, actor, attack and detail) in a
//! window is recorded at once, so an operator sees it; the rest are counted in memory and
//! recorded as one event per kind when the window ends. At most [`MAX_KINDS`] kinds are kept
//! per window; refusals beyond them are counted together. So a window adds at most
//! `2 * MAX_KINDS + 1` rows, whatever the request rate (`service_runtime::throttle`).

use chrono::Duration;
use service_runtime::throttle::{Tally, Throttle};
use uptane_core::error::AttackKind;
use uptane_core::time::{UtcTime, format_expires};

use super::events::NewEvent;

/// Distinct kinds of refusal kept per window.
pub const MAX_KINDS: usize = 64;

/// One kind of refusal: everything an event of it records.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Kind {
    kind: String,
    vin: Option<String>,
    actor: String,
    attack: Option<AttackKind>,
    detail: String,
}

impl Kind {
    fn of(event: &NewEvent<'_>) -> Self {
        Self {
            kind: event.kind.to_string(),
            vin: event.vin.map(str::to_string),
            actor: event.actor.to_string(),
            attack: event.attack,
            detail: event.detail.to_string(),
        }
    }
}

/// A summary of what a window counted, to record as one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary(Tally<Kind>);

impl Summary {
    /// The event kind it summarizes (`refusals_not_itemized` for the overflow).
    pub fn kind(&self) -> &str {
        self.0
            .kind
            .as_ref()
            .map_or("refusals_not_itemized", |k| &k.kind)
    }

    /// How many refusals it stands for.
    pub fn count(&self) -> u64 {
        self.0.count
    }

    /// Appends it to the event log.
    pub fn record(&self, conn: &crate::sql::Conn) -> Result<(), crate::error::DirectorError> {
        let (from, to) = (UtcTime::from(self.0.from), UtcTime::from(self.0.to));
        let span = format!("from {} to {}", format_expires(&from), format_expires(&to));
        match &self.0.kind {
            Some(k) => {
                let detail = format!("{} more like this {span}: {}", self.0.count, k.detail);
                let mut event = NewEvent::security(&k.kind, &k.actor, &detail);
                event.vin = k.vin.as_deref();
                event.attack = k.attack;
                event.record(conn, to)
            }
            None => {
                let detail = format!(
                    "{} refusals {span} beyond {MAX_KINDS} distinct kinds, not itemized",
                    self.0.count
                );
                NewEvent::security("refusals_not_itemized", "unknown", &detail).record(conn, to)
            }
        }
    }
}

/// The refusals of one Director process, by window.
#[derive(Debug)]
pub struct RefusalLog(Throttle<Kind>);

impl RefusalLog {
    /// Windows of `window`.
    pub fn new(window: Duration) -> Self {
        let window = window
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(60));
        Self(Throttle::new(window, MAX_KINDS))
    }

    /// A refusal at `now`: whether to record it now (the first of its kind in the window).
    /// Summaries of a window that ended come back for the caller to record.
    pub fn note(&self, event: &NewEvent<'_>, now: UtcTime) -> (bool, Vec<Summary>) {
        let (first, ended) = self.0.note(&Kind::of(event), now.into());
        (first, ended.into_iter().map(Summary).collect())
    }

    /// The summaries of a window that ended by `now` (the server calls this every window).
    pub fn due(&self, now: UtcTime) -> Vec<Summary> {
        self.0.due(now.into()).into_iter().map(Summary).collect()
    }

    /// Every summary so far, window ended or not (at shutdown).
    pub fn drain(&self, now: UtcTime) -> Vec<Summary> {
        self.0.drain(now.into()).into_iter().map(Summary).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> UtcTime {
        uptane_core::time::parse_expires("2030-01-01T00:00:00Z").unwrap()
            + Duration::seconds(seconds)
    }

    #[test]
    fn a_summary_is_an_event_saying_how_many() {
        let db = crate::db::Db::for_tests().unwrap();
        let log = RefusalLog::new(Duration::seconds(60));
        let event = NewEvent::security("vehicle_auth_refused", "unknown", "no credential")
            .vin("VIN1")
            .attack(AttackKind::WrongVehicle);
        for i in 0..5 {
            log.note(&event, at(i));
        }
        let summaries = log.due(at(60));
        db.call_blocking(move |conn| {
            for s in &summaries {
                s.record(conn)?;
            }
            Ok::<_, crate::error::DirectorError>(())
        })
        .unwrap();
        db.call_blocking(move |conn| {
            let security = crate::service::EventFilter {
                security_only: true,
                ..Default::default()
            };
            let events =
                crate::service::recent_events(conn, &security, crate::service::Page::newest(10))?;
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].kind, "vehicle_auth_refused");
            assert_eq!(events[0].vin.as_deref(), Some("VIN1"));
            assert_eq!(events[0].attack, Some(AttackKind::WrongVehicle));
            assert!(
                events[0].detail.starts_with("4 more like this from 2030-01-01T00:00:00Z to 2030-01-01T00:01:00Z: no credential"),
                "{}",
                events[0].detail
            );
            Ok::<_, crate::error::DirectorError>(())
        })
        .unwrap();
    }
}
