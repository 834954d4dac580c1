//! Retention: what a flood or plain years of traffic add to the event log and the manifest
//! history is removed once older than the retention period (`--retention-days`). The event
//! log stays append-only inside the period (`migrations/007_retention.sql`); the newest
//! manifest of each vehicle is always kept. So are the report nonces the manifests carried
//! (`migrations/011_nonce_retention.sql`): past the period, the ECU's report counter, which
//! rises with every report accepted, refuses a replayed report on its own (Uptane §5.3.2.1
//! step 4: "nonce or counter").

use crate::params;
use crate::sql::Conn;
use chrono::Duration;
use uptane_core::time::UtcTime;

use super::events::NewEvent;
use super::now_text;
use crate::error::DirectorError;

/// Rows removed by one pass, at most, so that a first sweep over years of history does not
/// hold the database for long; the next pass continues.
const BATCH: i64 = 10_000;

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

/// Removes events, manifests and report nonces older than `period` before `now`, in batches of
/// [`BATCH`] per transaction; records what it removed as an event.
pub fn sweep(conn: &mut Conn, period: Duration, now: UtcTime) -> Result<Swept, DirectorError> {
    let cutoff = now_text(now - period);
    let mut swept = Swept::default();
    loop {
        let tx = conn.savepoint()?;
        tx.execute(
            "UPDATE retention SET events_before = ?1 WHERE id = 1 AND events_before < ?1",
            params![&cutoff],
        )?;
        let events = tx.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?1 LIMIT ?2)",
            params![cutoff, BATCH],
        )?;
        let manifests = tx.execute(
            "DELETE FROM manifests WHERE id IN (
                 SELECT id FROM manifests WHERE received_at < ?1
                     AND id NOT IN (SELECT MAX(id) FROM manifests GROUP BY vin)
                 LIMIT ?2)",
            params![cutoff, BATCH],
        )?;
        let nonces = tx.execute(
            "DELETE FROM seen_nonces WHERE (ecu_serial, nonce) IN (
                 SELECT ecu_serial, nonce FROM seen_nonces WHERE seen_at < ?1 LIMIT ?2)",
            params![cutoff, BATCH],
        )?;
        tx.commit()?;
        swept.events += events;
        swept.manifests += manifests;
        swept.nonces += nonces;
        if [events, manifests, nonces]
            .iter()
            .all(|&n| n < BATCH as usize)
        {
            break;
        }
    }
    if swept != Swept::default() {
        let detail = format!(
            "removed {} events, {} manifests and {} report nonces older than {cutoff}",
            swept.events, swept.manifests, swept.nonces
        );
        NewEvent::info("retention_sweep", "director", &detail).record(conn, now)?;
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn at(text: &str) -> UtcTime {
        uptane_core::time::parse_expires(text).unwrap()
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
            // One nonce kept before nonces had a time (it counts as the oldest), one seen
            // before the period, one inside it.
            for (nonce, seen_at) in [
                ("untimed", String::new()),
                ("old", now_text(old)),
                ("recent", now_text(recent)),
            ] {
                conn.execute(
                    "INSERT INTO seen_nonces (ecu_serial, nonce, seen_at) VALUES ('ecu', ?1, ?2)",
                    params![nonce, seen_at],
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
                    nonces: 2,
                }
            );
            let nonces: Vec<String> = conn.query(
                "SELECT nonce FROM seen_nonces ORDER BY nonce",
                params![],
                |r| r.get(0),
            )?;
            assert_eq!(
                nonces,
                ["recent"],
                "only the nonce seen inside the period stays"
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
}
