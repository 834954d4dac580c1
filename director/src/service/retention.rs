//! Retention: what a flood or plain years of traffic add to the event log and the manifest
//! history is removed once older than the retention period (`--retention-days`). The event
//! log stays append-only inside the period (`migrations/007_retention.sql`); the newest
//! manifest of each vehicle is always kept. So are the report nonces the manifests carried
//! (`migrations/011_nonce_retention.sql`): past the period, the ECU's report counter, which
//! rises with every report accepted, refuses a replayed report on its own (Uptane §5.3.2.1
//! step 4: "nonce or counter"). A nonce of an ECU with no counter recorded (one just
//! registered, or replaced by a unit of another key under the same serial) is kept until it
//! has one; a unit replaced by itself (same serial, same key) keeps its counter
//! (`vehicles::replace_ecu`).
//!
//! Each call of [`sweep_batch`] removes at most [`BATCH`] rows of one kind, and the service
//! runs each as a write of its own, so a first sweep over years of history never holds the
//! writer long.

use crate::params;
use crate::sql::Conn;
use chrono::Duration;
use uptane_core::time::UtcTime;

use super::events::NewEvent;
use super::now_text;
use crate::error::DirectorError;

/// Rows of one kind removed by one [`sweep_batch`], at most.
pub const BATCH: usize = 10_000;

/// What a sweep removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Events older than the period.
    Events,
    /// Manifests older than the period (not a vehicle's newest).
    Manifests,
    /// Report nonces seen before the period.
    Nonces,
}

impl Kind {
    /// Every kind, in the order swept.
    pub const ALL: [Kind; 3] = [Kind::Events, Kind::Manifests, Kind::Nonces];
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Events older than the period.
    pub events: usize,
    /// Manifests older than the period (not a vehicle's newest).
    pub manifests: usize,
    /// Report nonces seen before the period.
    pub nonces: usize,
}

impl Swept {
    /// Counts `n` more rows of `kind`.
    fn add(&mut self, kind: Kind, n: usize) {
        match kind {
            Kind::Events => self.events += n,
            Kind::Manifests => self.manifests += n,
            Kind::Nonces => self.nonces += n,
        }
    }
}

/// The order of a sweep: every kind in turn, batch after batch, until a batch removes fewer
/// than [`BATCH`] rows. One rule for [`sweep`] and the service's sweep, which runs each batch
/// as a write of its own.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Index into [`Kind::ALL`] of the kind being swept.
    at: usize,
    swept: Swept,
}

impl Sweep {
    /// The kind the next batch removes; `None` once every kind is done.
    pub fn next(&self) -> Option<Kind> {
        Kind::ALL.get(self.at).copied()
    }

    /// Counts a batch of the current kind that removed `n` rows: a short batch ends its kind.
    pub fn removed(&mut self, n: usize) {
        if let Some(kind) = self.next() {
            self.swept.add(kind, n);
            if n < BATCH {
                self.at += 1;
            }
        }
    }

    /// What the batches so far removed.
    pub fn swept(&self) -> Swept {
        self.swept
    }
}

/// Removes at most [`BATCH`] rows of `kind` older than `period` before `now`; how many.
pub fn sweep_batch(
    conn: &mut Conn,
    kind: Kind,
    period: Duration,
    now: UtcTime,
) -> Result<usize, DirectorError> {
    let cutoff = now_text(now - period);
    let tx = conn.savepoint()?;
    let removed = match kind {
        Kind::Events => {
            tx.execute(
                "UPDATE retention SET events_before = ?1 WHERE id = 1 AND events_before < ?1",
                params![&cutoff],
            )?;
            tx.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?1 LIMIT ?2)",
                params![cutoff, BATCH as i64],
            )?
        }
        // A manifest with a newer one of its vehicle (one probe of `manifests_by_vin`, which
        // holds the id: a batch never reads the whole table).
        Kind::Manifests => tx.execute(
            "DELETE FROM manifests WHERE id IN (
                 SELECT m.id FROM manifests m WHERE m.received_at < ?1
                     AND EXISTS (SELECT 1 FROM manifests n WHERE n.vin = m.vin AND n.id > m.id)
                 LIMIT ?2)",
            params![cutoff, BATCH as i64],
        )?,
        Kind::Nonces => {
            // Nonces kept before they had a time ('') count as seen when they began to be
            // timed: past the period from then, they go too. Those of an ECU that has no
            // counter yet stay (those of a serial no longer registered go).
            let timed_from: String =
                tx.value("SELECT nonces_timed_from FROM retention WHERE id = 1", &[])?;
            let from = if timed_from < cutoff { "" } else { "0" };
            tx.execute(
                "DELETE FROM seen_nonces WHERE (ecu_serial, nonce) IN (
                     SELECT n.ecu_serial, n.nonce FROM seen_nonces n
                     WHERE n.seen_at >= ?1 AND n.seen_at < ?2
                       AND NOT EXISTS (SELECT 1 FROM ecus e
                                       WHERE e.serial = n.ecu_serial AND e.last_report_counter IS NULL)
                     LIMIT ?3)",
                params![from, cutoff, BATCH as i64],
            )?
        }
    };
    tx.commit()?;
    Ok(removed)
}

/// Records what a sweep removed as an event (nothing if it removed nothing). It runs after
/// the last batch: a sweep stopped part way has removed rows (all past the period) that no
/// event counts, and the next sweep counts only its own.
pub fn record(
    conn: &Conn,
    swept: Swept,
    period: Duration,
    now: UtcTime,
) -> Result<(), DirectorError> {
    if swept == Swept::default() {
        return Ok(());
    }
    let detail = format!(
        "removed {} events, {} manifests and {} report nonces older than {}",
        swept.events,
        swept.manifests,
        swept.nonces,
        now_text(now - period)
    );
    NewEvent::info("retention_sweep", "director", &detail).record(conn, now)
}

/// The whole sweep on one connection: every kind, batch after batch, then the event.
pub fn sweep(conn: &mut Conn, period: Duration, now: UtcTime) -> Result<Swept, DirectorError> {
    let mut sweep = Sweep::default();
    while let Some(kind) = sweep.next() {
        let n = sweep_batch(conn, kind, period, now)?;
        sweep.removed(n);
    }
    record(conn, sweep.swept(), period, now)?;
    Ok(sweep.swept())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn at(text: &str) -> UtcTime {
        uptane_core::time::parse_expires(text).unwrap()
    }

    #[test]
    fn a_sweep_takes_each_kind_until_a_batch_comes_back_short() {
        let mut sweep = Sweep::default();
        let mut order = Vec::new();
        // Events: two full batches and a short one; manifests: none; nonces: one short.
        for n in [BATCH, BATCH, 7, 0, 3] {
            order.push(sweep.next().unwrap());
            sweep.removed(n);
        }
        assert_eq!(
            order,
            [
                Kind::Events,
                Kind::Events,
                Kind::Events,
                Kind::Manifests,
                Kind::Nonces
            ]
        );
        assert_eq!(sweep.next(), None);
        sweep.removed(BATCH);
        assert_eq!(
            sweep.swept(),
            Swept {
                events: 2 * BATCH + 7,
                manifests: 0,
                nonces: 3
            }
        );
    }

    #[test]
    fn only_what_is_older_than_the_period_goes_and_each_vehicles_newest_manifest_stays() {
        let db = Db::for_tests().unwrap();
        db.call_blocking(|conn| {
            let old = at("2030-01-01T00:00:00Z");
            let recent = at("2031-06-01T00:00:00Z");
            for t in [old, old, recent] {
                NewEvent::info("x", "test", "d").record(conn, t)?;
            }
            for (vin, t) in [("A", old), ("A", old), ("A", recent), ("B", old)] {
                conn.execute(
                    "INSERT INTO manifests (vin, received_at, body) VALUES (?1, ?2, ?3)",
                    params![vin, now_text(t), b"\0".as_slice()],
                )?;
            }
            conn.execute(
                "UPDATE retention SET nonces_timed_from = ?1",
                params![now_text(old)],
            )?;
            // ECU `ecu` has reported (its counter refuses a replay); `fresh` was just replaced
            // and has not, so its nonces are all that refuses one.
            conn.execute(
                "INSERT INTO vehicles (vin, credential_sha256, created_at) VALUES ('V', 'x', ?1)",
                params![now_text(old)],
            )?;
            for (serial, counter) in [("ecu", Some(7_i64)), ("fresh", None)] {
                conn.execute(
                    "INSERT INTO ecus (serial, vin, hardware_id, public_key, is_primary, last_report_counter)
                     VALUES (?1, 'V', 'hw', '{}', 0, ?2)",
                    params![serial, counter],
                )?;
            }
            // Nonces kept before nonces had a time (seen when the migration ran, before
            // `old`), seen before the period, and inside it.
            for (serial, nonce, seen_at) in [
                ("ecu", "untimed", String::new()),
                ("ecu", "old", now_text(old)),
                ("ecu", "recent", now_text(recent)),
                ("fresh", "fresh-old", now_text(old)),
                ("gone", "gone-old", now_text(old)),
            ] {
                conn.execute(
                    "INSERT INTO seen_nonces (ecu_serial, nonce, seen_at) VALUES (?1, ?2, ?3)",
                    params![serial, nonce, seen_at],
                )?;
            }
            // Each refusal in a savepoint: on PostgreSQL a failed statement ends the
            // transaction.
            fn refused(conn: &Conn, sql: &str, params: &[&dyn crate::sql::ToParam]) -> String {
                let tried = conn.savepoint().unwrap();
                tried.execute(sql, params).unwrap_err().to_string()
            }
            // Inside the period, the log is append-only.
            let error = refused(
                conn,
                "DELETE FROM events WHERE at = ?1",
                params![now_text(recent)],
            );
            assert!(error.contains("append-only"), "{error}");
            let swept = sweep(conn, Duration::days(365), at("2031-07-01T00:00:00Z"))?;
            assert_eq!(
                swept,
                Swept {
                    events: 2,
                    manifests: 2,
                    nonces: 3,
                }
            );
            let nonces: Vec<String> = conn.query(
                "SELECT nonce FROM seen_nonces ORDER BY nonce",
                params![],
                |r| r.get(0),
            )?;
            assert_eq!(
                nonces,
                ["fresh-old", "recent"],
                "the nonce seen inside the period stays, and those of an ECU with no counter"
            );
            let left: i64 =
                conn.query_row("SELECT COUNT(*) FROM manifests", params![], |r| r.get(0))?;
            assert_eq!(left, 2, "A's newest and B's only manifest stay");
            let kinds: Vec<String> =
                conn.query("SELECT kind FROM events ORDER BY id", params![], |r| {
                    r.get(0)
                })?;
            assert_eq!(kinds, ["x", "retention_sweep"]);
            // The cutoff never goes back, and still protects what is recent.
            let error = refused(
                conn,
                "UPDATE retention SET events_before = '2000-01-01T00:00:00Z'",
                params![],
            );
            assert!(error.contains("only moves forward"), "{error}");
            let error = refused(conn, "DELETE FROM events", params![]);
            assert!(error.contains("append-only"), "{error}");
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }

    /// Nonces kept before they had a time count as seen when the upgrade ran: a first sweep
    /// after it keeps them for a whole period, then removes them.
    #[test]
    fn nonces_kept_before_the_upgrade_stay_a_period_from_it() {
        let db = Db::for_tests().unwrap();
        db.call_blocking(|conn| {
            let upgraded = at("2030-01-01T00:00:00Z");
            conn.execute(
                "UPDATE retention SET nonces_timed_from = ?1",
                params![now_text(upgraded)],
            )?;
            conn.execute(
                "INSERT INTO vehicles (vin, credential_sha256, created_at) VALUES ('V', 'x', ?1)",
                params![now_text(upgraded)],
            )?;
            conn.execute(
                "INSERT INTO ecus (serial, vin, hardware_id, public_key, is_primary, last_report_counter)
                 VALUES ('ecu', 'V', 'hw', '{}', 0, 3)",
                params![],
            )?;
            conn.execute(
                "INSERT INTO seen_nonces (ecu_serial, nonce, seen_at) VALUES ('ecu', 'n', '')",
                params![],
            )?;
            let year = Duration::days(365);
            let within = sweep(conn, year, upgraded + Duration::days(300))?;
            assert_eq!(within.nonces, 0);
            let after = sweep(conn, year, upgraded + Duration::days(366))?;
            assert_eq!(after.nonces, 1);
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }
}
