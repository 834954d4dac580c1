//! The append-only event log: what happened, to which vehicle and ECU, caused by whom, and
//! for security events the attack it was.

use crate::params;
use crate::sql::{Conn, Engine, Row};
use serde::Serialize;
use uptane_core::error::AttackKind;
use uptane_core::time::UtcTime;

use super::now_text;
use super::page::{Page, PageQuery};
use super::refusals::RefusalLog;
use crate::error::DirectorError;

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// What happened (`vehicle_registered`, `manifest_refused`, ...).
    pub kind: &'a str,
    /// Whether it is a security event (logged at `warn` too).
    pub security: bool,
    /// The attack it was, for a refusal or a reported attack.
    pub attack: Option<AttackKind>,
    /// The vehicle, if any.
    pub vin: Option<&'a str>,
    /// The ECU, if any.
    pub ecu: Option<&'a str>,
    /// Who caused it (`operator:LABEL`, `vehicle:VIN`, `cli`, ...).
    pub actor: &'a str,
    /// Details.
    pub detail: &'a str,
}

impl<'a> NewEvent<'a> {
    /// An informational event.
    pub fn info(kind: &'a str, actor: &'a str, detail: &'a str) -> Self {
        Self {
            kind,
            security: false,
            attack: None,
            vin: None,
            ecu: None,
            actor,
            detail,
        }
    }

    /// A security event.
    pub fn security(kind: &'a str, actor: &'a str, detail: &'a str) -> Self {
        Self {
            security: true,
            ..Self::info(kind, actor, detail)
        }
    }

    /// About vehicle `vin`.
    pub fn vin(mut self, vin: &'a str) -> Self {
        self.vin = Some(vin);
        self
    }

    /// About ECU `ecu`, if one.
    pub fn ecu(mut self, ecu: Option<&'a str>) -> Self {
        self.ecu = ecu;
        self
    }

    /// The attack it was.
    pub fn attack(mut self, attack: AttackKind) -> Self {
        self.attack = Some(attack);
        self
    }

    /// Appends it to the log at `now`, its detail as [`storable`] makes it.
    pub fn record(&self, conn: &Conn, now: UtcTime) -> Result<(), DirectorError> {
        let detail = storable(self.detail);
        if self.security {
            tracing::warn!(
                kind = self.kind,
                attack = self.attack.map(AttackKind::as_str),
                vin = self.vin,
                ecu = self.ecu,
                actor = self.actor,
                detail = %detail,
                "security event"
            );
        }
        conn.execute(
            "INSERT INTO events (at, kind, severity, vin, ecu_serial, actor, detail, attack)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                now_text(now),
                self.kind,
                if self.security { "security" } else { "info" },
                self.vin,
                self.ecu,
                self.actor,
                detail,
                self.attack.map(AttackKind::as_str),
            ],
        )?;
        Ok(())
    }
}

/// The longest detail an event keeps, in bytes. Some details carry what a request sent (a
/// refused manifest's reason, an ECU's attack report): bounded here, no caller makes one event
/// fill the log, a log line or an operator's terminal.
pub const MAX_DETAIL_BYTES: usize = 4096;

/// `detail` as the Director keeps it: control characters other than a line break made
/// `\u{FFFD}` (PostgreSQL refuses a NUL in text, which would refuse on one engine a manifest
/// the other keeps), at most [`MAX_DETAIL_BYTES`] ([`uptane_core::text::bounded`]).
pub(crate) fn storable(detail: &str) -> std::borrow::Cow<'_, str> {
    uptane_core::text::bounded(
        detail,
        MAX_DETAIL_BYTES,
        uptane_core::text::LineBreaks::Keep,
    )
}

impl NewEvent<'_> {
    /// Appends a refusal through `log`: the first of its kind in a window at once, the rest
    /// as one summary when the window ends (`refusals.rs`).
    pub fn record_refusal(
        &self,
        conn: &Conn,
        now: UtcTime,
        log: &RefusalLog,
    ) -> Result<(), DirectorError> {
        let (first, ended) = log.note(self, now);
        for summary in &ended {
            summary.record(conn)?;
        }
        if first {
            self.record(conn, now)
        } else {
            Ok(())
        }
    }
}

/// An event from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: String,
    /// What.
    pub kind: String,
    /// `info` or `security`.
    pub severity: String,
    /// The attack, for a security event that names one.
    pub attack: Option<AttackKind>,
    /// Vehicle, if any.
    pub vin: Option<String>,
    /// ECU, if any.
    pub ecu_serial: Option<String>,
    /// Who caused it.
    pub actor: String,
    /// Details.
    pub detail: String,
}

fn attack_from_text(text: Option<String>) -> Option<AttackKind> {
    let text = text?;
    serde_json::from_value(serde_json::Value::String(text)).ok()
}

const EVENT_COLUMNS: &str = "id, at, kind, severity, vin, ecu_serial, actor, detail, attack";

fn event_row(r: &Row<'_>) -> Result<Event, crate::db::DbError> {
    Ok(Event {
        id: r.get(0)?,
        at: r.get(1)?,
        kind: r.get(2)?,
        severity: r.get(3)?,
        vin: r.get(4)?,
        ecu_serial: r.get(5)?,
        actor: r.get(6)?,
        detail: r.get(7)?,
        attack: attack_from_text(r.get(8)?),
    })
}

/// On PostgreSQL, the transaction id below which every transaction that may have written
/// this database's events had ended when this read's snapshot was taken: the oldest
/// transaction the snapshot lists as running, leaving out those seen (a moment after the
/// snapshot) running in another database of the server; with none, the snapshot's next
/// transaction id. (`ORDER BY … LIMIT 1`, not `min`: `min` over xid8 is PostgreSQL 15's.)
const HORIZON: &str = "coalesce(
        (SELECT x FROM pg_snapshot_xip(pg_current_snapshot()) AS x
         WHERE NOT EXISTS (
             SELECT 1 FROM pg_stat_activity a
             WHERE a.backend_xid = CAST(x AS xid)
               AND a.datname IS DISTINCT FROM current_database())
         ORDER BY x LIMIT 1),
        pg_snapshot_xmax(pg_current_snapshot()))";

/// Events after the event `after` (0: from the start), oldest first, optionally of one
/// vehicle or only security events: how a reader follows the log (`director events
/// --follow`), passing the id of the last event it was given, starting from
/// [`follow_position`].
///
/// On SQLite the one writer commits ids in order, so "after" is by id. On PostgreSQL
/// replicas commit ids out of order (id 10's transaction may commit after id 11's): paging by
/// id would pass 10 for good. There the log is read in the order of the transactions that
/// wrote it (`tx`, the top-level transaction id), and only below [`HORIZON`]: anything that
/// commits later has a transaction id at least the horizon, so it sorts after every event
/// already given. An event shows once every older transaction of the Director's database
/// ended: a transaction held open (an operator's `psql` session, a prepared transaction)
/// holds followers back until it ends. An `after` that names no event (removed by the
/// retention period, or never given) is refused: where it stood in the order is not known.
pub fn events(
    conn: &Conn,
    vin: Option<&str>,
    security_only: bool,
    after: i64,
    limit: u32,
) -> Result<Vec<Event>, DirectorError> {
    const FILTERS: &str = "(CAST(?2 AS TEXT) IS NULL OR vin = ?2)
               AND (CAST(?3 AS BIGINT) = 0 OR severity = 'security')";
    if conn.engine() == Engine::Sqlite {
        return Ok(conn.query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE id > ?1 AND {FILTERS} ORDER BY id LIMIT ?4"
            ),
            params![after, vin, security_only, limit],
            event_row,
        )?);
    }
    // Where the event `after` stands (the start: before every event, whose tx is above 0).
    let cursor: String = if after == 0 {
        "0".into()
    } else {
        conn.query_opt(
            "SELECT CAST(tx AS TEXT) FROM events WHERE id = ?1",
            params![after],
            |r| r.get(0),
        )?
        .ok_or_else(|| {
            DirectorError::NotFound(format!(
                "no event {after} (removed by the retention period, or never given): follow \
                 again from GET /api/v1/events/position"
            ))
        })?
    };
    Ok(conn.query(
        &format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE (tx, id) > (CAST(CAST(?5 AS TEXT) AS xid8), ?1) AND {FILTERS}
               AND tx < {HORIZON}
             ORDER BY tx, id LIMIT ?4"
        ),
        params![after, vin, security_only, limit, cursor],
        event_row,
    )?)
}

/// Where a new follower of the log starts ([`events`]' `after`): the last event a follower
/// reading now would be given, 0 when there is none yet.
pub fn follow_position(conn: &Conn) -> Result<i64, DirectorError> {
    let sql = match conn.engine() {
        Engine::Sqlite => "SELECT coalesce(max(id), 0) FROM events".to_string(),
        Engine::Postgres => format!(
            "SELECT coalesce((SELECT id FROM events WHERE tx < {HORIZON}
                              ORDER BY tx DESC, id DESC LIMIT 1), 0)"
        ),
    };
    Ok(conn.value(&sql, params![])?)
}

/// The statement of [`recent_events`] with the filters given, its parameters in order: the
/// cursor, the VIN, the time, the limit.
/// A page of the newest events, newest first, optionally of one vehicle or only security
/// events; an event's cursor is its id. SQLite finds a page of one vehicle's or of the
/// security events from their indexes (`008_listing_indexes.sql`), not by scanning the log.
/// Which events a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this vehicle's.
    pub vin: Option<String>,
    /// Only security events.
    pub security_only: bool,
    /// Only kinds that start with this (`attack_reported` matches
    /// `attack_reported:rollback`).
    pub kind: Option<String>,
}

fn recent_events_query(filter: &EventFilter, page: Page) -> PageQuery {
    let mut query = page.query(
        &format!("SELECT {EVENT_COLUMNS} FROM events WHERE"),
        "id",
        "at",
    );
    if let Some(vin) = &filter.vin {
        query = query.filter("vin = ?", vin.clone());
    }
    if filter.security_only {
        query = query.condition("severity = 'security'");
    }
    if let Some(kind) = &filter.kind {
        query = query.filter(
            "LOWER(kind) LIKE LOWER(?) ESCAPE '\\'",
            super::page::like_pattern(kind, true),
        );
    }
    query
}

/// A page of the newest events (see [`recent_events_query`]).
pub fn recent_events(
    conn: &Conn,
    filter: &EventFilter,
    page: Page,
) -> Result<Vec<Event>, DirectorError> {
    recent_events_query(filter, page).rows(conn, event_row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    /// The events (id, kind) a follower is given after event `after`.
    fn follow(db: &Db, after: i64) -> Vec<(i64, String)> {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(db.read(move |conn| events(conn, None, false, after, 100)))
            .unwrap()
            .into_iter()
            .map(|e| (e.id, e.kind))
            .collect()
    }

    /// What a follower is given after event `after` once it is given `count` events: a
    /// transaction of another database of the server that ended just before a read may
    /// still hold that read back (it cannot be told apart from one of this database), so
    /// a follower is given an event at one of its next reads, as `--follow` polls.
    fn follow_until(db: &Db, after: i64, count: usize) -> Vec<(i64, String)> {
        let mut seen = follow(db, after);
        for _ in 0..200 {
            if seen.len() >= count {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            seen = follow(db, after);
        }
        seen
    }

    /// Two writers of the log beside the Director (as two replicas are): raw connections to
    /// the test's database, which the returned handle reads.
    fn writers() -> (Db, Conn, Conn, Option<tempfile::TempDir>) {
        match crate::db::Database::fresh_for_tests().unwrap() {
            Some(crate::db::Database::Postgres(url)) => {
                let db = Db::open_postgres(&url).unwrap();
                let target = crate::pg::PgTarget::new(&url).unwrap();
                let a = Conn::postgres(target.clone()).unwrap();
                let b = Conn::postgres(target).unwrap();
                (db, a, b, None)
            }
            _ => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("director.db");
                let db = Db::open(&path).unwrap();
                let a = Conn::sqlite(rusqlite::Connection::open(&path).unwrap());
                let b = Conn::sqlite(rusqlite::Connection::open(&path).unwrap());
                (db, a, b, Some(dir))
            }
        }
    }

    #[test]
    fn a_follower_is_given_every_event_once_whatever_order_writers_commit_in() {
        let (db, a, b, _dir) = writers();
        let now: UtcTime = "2026-12-04T00:00:00Z".parse().unwrap();
        let record = |conn: &Conn, kind: &str| NewEvent::info(kind, "op", "").record(conn, now);
        let kinds =
            |seen: &[(i64, String)]| seen.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>();
        if db.engine() == Engine::Sqlite {
            // One writer at a time: an event shows when its transaction commits, in id order.
            a.run("BEGIN IMMEDIATE").unwrap();
            record(&a, "first").unwrap();
            assert!(follow(&db, 0).is_empty());
            a.run("COMMIT").unwrap();
            record(&b, "second").unwrap();
            let seen = follow(&db, 0);
            assert_eq!(kinds(&seen), ["first", "second"]);
            let position = tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(db.read(follow_position))
                .unwrap();
            assert_eq!(position, seen[1].0);
            return;
        }
        // A takes the smaller id and commits last: a follower that had passed B's id would
        // never see A's event.
        a.run("BEGIN").unwrap();
        record(&a, "a").unwrap();
        b.run("BEGIN").unwrap();
        record(&b, "b").unwrap();
        b.run("COMMIT").unwrap();
        assert!(follow(&db, 0).is_empty(), "B waits for the older A");
        a.run("COMMIT").unwrap();
        let seen = follow_until(&db, 0, 2);
        assert_eq!(kinds(&seen), ["a", "b"]);
        assert!(seen[0].0 < seen[1].0);
        let last = seen[1].0;

        // C's transaction is older but takes the larger id: given before D, then nothing
        // twice after D's id.
        a.run("BEGIN").unwrap();
        a.run("SELECT pg_current_xact_id()").unwrap();
        b.run("BEGIN").unwrap();
        record(&b, "d").unwrap();
        b.run("COMMIT").unwrap();
        record(&a, "c").unwrap();
        assert!(follow(&db, last).is_empty(), "D waits for the older C");
        a.run("COMMIT").unwrap();
        let seen = follow_until(&db, last, 2);
        assert_eq!(kinds(&seen), ["c", "d"]);
        assert!(seen[0].0 > seen[1].0, "C's id is the larger: {seen:?}");
        assert!(follow(&db, seen[1].0).is_empty(), "nothing given twice");
        let last = seen[1].0;
        // A new follower starts after the last event a follower is given (D, not C's larger
        // id), and an id that names no event is refused rather than guessed at.
        let position = |db: &Db| {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(db.read(follow_position))
                .unwrap()
        };
        let mut at = position(&db);
        for _ in 0..200 {
            if at == last {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            at = position(&db);
        }
        assert_eq!(at, last);
        let unknown = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(db.read(|conn| events(conn, None, false, 999_999, 10)))
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("no event 999999"), "{unknown}");

        // A transaction of another database of the server holds nothing back.
        let Some(crate::db::Database::Postgres(elsewhere)) =
            crate::db::Database::fresh_for_tests().unwrap()
        else {
            unreachable!("the test server gives a second database");
        };
        let other = Conn::postgres(crate::pg::PgTarget::new(&elsewhere).unwrap()).unwrap();
        other.run("BEGIN").unwrap();
        other.run("SELECT pg_current_xact_id()").unwrap();
        record(&a, "e").unwrap();
        assert_eq!(kinds(&follow_until(&db, last, 1)), ["e"]);
        other.run("ROLLBACK").unwrap();
    }

    #[test]
    fn a_detail_is_kept_to_its_bound_and_says_it_was_cut() {
        let db = Db::for_tests().unwrap();
        let now: UtcTime = "2026-12-04T00:00:00Z".parse().unwrap();
        let huge = "é".repeat(1 << 20);
        db.call_blocking(|conn| {
            NewEvent::security("probe", "anonymous", &huge).record(conn, now)?;
            NewEvent::info("short", "op", "fits").record(conn, now)
        })
        .unwrap();
        let mut events = db
            .call_blocking(|conn| recent_events(conn, &EventFilter::default(), Page::newest(10)))
            .unwrap();
        events.reverse();
        let cut = &events[0].detail;
        assert!(cut.len() <= MAX_DETAIL_BYTES, "{}", cut.len());
        assert!(cut.starts_with("éé"));
        assert!(
            cut.ends_with(&format!("… ({} bytes, cut)", huge.len())),
            "{cut}"
        );
        assert_eq!(events[1].detail, "fits");
    }

    /// A NUL would be refused by PostgreSQL alone: the same detail is kept on both engines.
    #[test]
    fn a_detail_keeps_no_control_character_but_line_breaks() {
        let db = Db::for_tests().unwrap();
        let now: UtcTime = "2026-12-04T00:00:00Z".parse().unwrap();
        db.call_blocking(|conn| {
            NewEvent::security("probe", "anonymous", "a\u{0}b\u{1b}[31mc\nd").record(conn, now)
        })
        .unwrap();
        let events = db
            .call_blocking(|conn| recent_events(conn, &EventFilter::default(), Page::newest(1)))
            .unwrap();
        assert_eq!(events[0].detail, "a\u{FFFD}b\u{FFFD}[31mc\nd");
    }

    #[test]
    fn a_page_of_one_vehicle_or_of_security_events_is_found_from_an_index() {
        let db = Db::open_in_memory().unwrap();
        let plan = |sql: String| {
            db.call_blocking(move |conn| {
                let conn = conn.as_sqlite().expect("SQLite");
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let n = stmt.parameter_count();
                let rows = stmt.query_map(
                    rusqlite::params_from_iter(std::iter::repeat_n(&1i64, n)),
                    |r| r.get::<_, String>(3),
                )?;
                Ok::<_, DirectorError>(rows.collect::<Result<Vec<_>, _>>()?.join("; "))
            })
            .unwrap()
        };
        let by_vin = plan(
            recent_events_query(
                &EventFilter {
                    vin: Some("VIN1".into()),
                    ..Default::default()
                },
                Page::newest(10),
            )
            .sql(),
        );
        assert!(by_vin.contains("events_by_vin"), "{by_vin}");
        let security = plan(
            recent_events_query(
                &EventFilter {
                    security_only: true,
                    ..Default::default()
                },
                Page::newest(10),
            )
            .sql(),
        );
        assert!(security.contains("events_by_severity"), "{security}");
    }
}
