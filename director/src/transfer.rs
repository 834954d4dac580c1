//! Moving a Director's state from SQLite to PostgreSQL (`director migrate --to postgres://…`):
//! every row of every table, with its ids and cursors, copied from one read snapshot of the
//! SQLite database into a new PostgreSQL database in one transaction, then counted on both
//! sides. Nothing is half-moved: the copy commits whole or not at all, and the SQLite file is
//! only read.

use crate::db::{Database, Db, DbError};
use crate::sql::{Conn, OwnedValue, ToParam};

/// The tables, parents before children, each with the columns both schemas share. Tables
/// whose SQLite rows are paged by the implicit `rowid` have a `rowid` column on PostgreSQL,
/// copied too, so listing cursors stay valid.
const TABLES: &[(&str, &[&str])] = &[
    (
        "vehicles",
        &[
            "rowid",
            "vin",
            "credential_sha256",
            "created_at",
            "credential_issued_at",
            "credential_expires_at",
            "credential_revoked_at",
            "next_credential_sha256",
            "next_credential_expires_at",
            "tls_fingerprint",
            "time_reset",
        ],
    ),
    (
        "ecus",
        &[
            "serial",
            "vin",
            "hardware_id",
            "public_key",
            "is_primary",
            "installed_filename",
            "installed_length",
            "installed_hashes",
            "installed_release_counter",
            "last_report_counter",
            "last_report_at",
            "attacks_reported",
            "last_report_time",
        ],
    ),
    ("seen_nonces", &["ecu_serial", "nonce", "seen_at"]),
    ("manifests", &["id", "vin", "received_at", "body"]),
    (
        "assignments",
        &["id", "correlation_id", "created_at", "created_by"],
    ),
    (
        "assignment_ecus",
        &[
            "rowid",
            "assignment_id",
            "vin",
            "ecu_serial",
            "filename",
            "length",
            "hashes",
            "hardware_id",
            "release_counter",
            "status",
            "detail",
            "updated_at",
            "cancel_requested_at",
            "withdrawn_at",
        ],
    ),
    (
        "vehicle_metadata",
        &[
            "vin",
            "content_sha256",
            "targets_version",
            "snapshot_version",
            "timestamp_version",
            "targets",
            "snapshot",
            "timestamp",
            "expires",
            "targets_entries",
            "root_version",
        ],
    ),
    ("roots", &["version", "body"]),
    (
        "api_tokens",
        &[
            "rowid",
            "sha256",
            "label",
            "created_at",
            "revoked",
            "expires_at",
            "revoked_at",
        ],
    ),
    (
        "provisioning_tokens",
        &[
            "rowid",
            "sha256",
            "label",
            "one_time",
            "used",
            "revoked",
            "created_at",
            "expires_at",
            "max_uses",
            "uses",
        ],
    ),
    ("vehicle_attributes", &["vin", "name", "value"]),
    (
        "vehicle_groups",
        &["id", "name", "filter", "created_at", "created_by"],
    ),
    ("group_members", &["group_id", "vin"]),
    (
        "campaigns",
        &[
            "id",
            "name",
            "spec",
            "pinned",
            "seed",
            "state",
            "reason",
            "wave",
            "wave_started_at",
            "wave_finished_at",
            "accepted_failures",
            "created_at",
            "created_by",
            "updated_at",
        ],
    ),
    (
        "campaign_vehicles",
        &[
            "campaign_id",
            "vin",
            "rank",
            "wave",
            "state",
            "detail",
            "attempts",
            "updated_at",
        ],
    ),
    (
        "campaign_assignments",
        &["campaign_id", "vin", "assignment_id"],
    ),
    (
        "events",
        &[
            "id",
            "at",
            "kind",
            "severity",
            "vin",
            "ecu_serial",
            "actor",
            "detail",
            "attack",
        ],
    ),
];

/// Identity columns on PostgreSQL whose sequences continue after the copied rows.
const IDENTITIES: &[(&str, &str)] = &[
    ("vehicles", "rowid"),
    ("manifests", "id"),
    ("assignments", "id"),
    ("assignment_ecus", "rowid"),
    ("api_tokens", "rowid"),
    ("provisioning_tokens", "rowid"),
    ("vehicle_groups", "id"),
    ("campaigns", "id"),
    ("events", "id"),
];

/// Rows read from SQLite at a time.
const PAGE: i64 = 1000;

/// How many rows one table holds on each side after a move.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counted {
    /// The table.
    pub table: &'static str,
    /// Rows in the SQLite database.
    pub source: i64,
    /// Rows in the PostgreSQL database.
    pub target: i64,
}

/// Why a move failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// Reading or writing failed; nothing was committed to the target.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The target already holds a Director's state.
    #[error(
        "the target database already holds a Director (root version 1): move into a new, empty database"
    )]
    NotEmpty,
    /// The copy was committed, but the Director directory could not be told.
    #[error("{0}")]
    Naming(String),
    /// A table's counts differ after the copy (then nothing was committed).
    #[error("{table}: {in_sqlite} rows in SQLite, {in_postgres} on PostgreSQL")]
    Differs {
        /// The table.
        table: &'static str,
        /// Rows in the source.
        in_sqlite: i64,
        /// Rows in the target.
        in_postgres: i64,
    },
    /// After the copy, PostgreSQL's count of the entries a vehicle's targets list differs
    /// from the copied entries, for this many vehicles (then nothing was committed).
    #[error(
        "{vehicles} vehicles' counts of the entries their targets list differ from their entries on PostgreSQL"
    )]
    Miscounted {
        /// How many vehicles.
        vehicles: i64,
    },
}

/// Copies the SQLite database at `source` into the PostgreSQL database `target` (migrated
/// here, and empty), all in one transaction, and returns each table's counts, which are
/// equal. The source's write lock is held from before the copy until `then` (which names
/// the new database for the Director) has run after the commit: no command line writes to
/// SQLite what the copy would leave behind. The SQLite file is not changed.
pub fn sqlite_to_postgres(
    source: &std::path::Path,
    target: &Database,
    then: impl FnOnce() -> Result<(), MoveError>,
) -> Result<Vec<Counted>, MoveError> {
    // The source's own migrations first, so both schemas are the newest.
    drop(Db::open(source)?);
    let lock = rusqlite::Connection::open(source).map_err(DbError::from)?;
    lock.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(DbError::from)?;
    let from = Conn::sqlite(lock);
    // Other writers wait (and give up after their busy timeout); this connection reads one
    // snapshot, which is therefore the last state.
    // (Closing the connection on an error ends the transaction and its lock.)
    from.run("BEGIN IMMEDIATE")?;
    let to = Db::connect(target)?;
    if to.engine() != crate::sql::Engine::Postgres {
        return Err(DbError::Join("the target of a move is a PostgreSQL database".into()).into());
    }
    let (counts, from) = to.call_blocking(move |to| {
        if to.value::<i64>("SELECT COUNT(*) FROM roots", &[])? > 0 {
            return Err(MoveError::NotEmpty);
        }
        copy_all(&from, to).map(|counts| (counts, from))
    })?;
    let named = then();
    let _ = from.run("ROLLBACK");
    named.map(|()| counts)
}

fn copy_all(from: &Conn, to: &Conn) -> Result<Vec<Counted>, MoveError> {
    for (table, columns) in TABLES {
        copy_table(from, to, table, columns)?;
    }
    // The retention cutoff (its row exists on both sides; the cutoff only moves forward),
    // and when the source began to time report nonces.
    let cutoff: String = from.value("SELECT events_before FROM retention WHERE id = 1", &[])?;
    to.execute(
        "UPDATE retention SET events_before = ?1 WHERE id = 1 AND events_before < ?1",
        crate::params![cutoff],
    )?;
    let timed_from: String =
        from.value("SELECT nonces_timed_from FROM retention WHERE id = 1", &[])?;
    to.execute(
        "UPDATE retention SET nonces_timed_from = ?1 WHERE id = 1",
        crate::params![timed_from],
    )?;
    for (table, column) in IDENTITIES {
        // The next id after the copied ones (`setval` of an empty table: 1, not yet used).
        to.query(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                               COALESCE(MAX({column}), 0) + 1, false) FROM {table}"
            ),
            &[],
            |_| Ok(()),
        )?;
    }
    let mut counts = Vec::with_capacity(TABLES.len());
    for (table, _) in TABLES {
        let count = format!("SELECT COUNT(*) FROM {table}");
        let counted = Counted {
            table,
            source: from.value(&count, &[])?,
            target: to.value(&count, &[])?,
        };
        if counted.source != counted.target {
            return Err(MoveError::Differs {
                table,
                in_sqlite: counted.source,
                in_postgres: counted.target,
            });
        }
        counts.push(counted);
    }
    // `vehicle_contents` is not copied: the target's triggers counted it as the entries came.
    // Checked against the copied entries themselves, vehicle by vehicle.
    let miscounted = crate::service::assignments::miscounted_vehicles(to)?;
    if miscounted > 0 {
        return Err(MoveError::Miscounted {
            vehicles: miscounted,
        });
    }
    Ok(counts)
}

/// Copies every row of `table`, a page at a time in SQLite's row order.
fn copy_table(from: &Conn, to: &Conn, table: &str, columns: &[&str]) -> Result<(), DbError> {
    let list = columns.join(", ");
    let read =
        format!("SELECT rowid, {list} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT {PAGE}");
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let write = format!(
        "INSERT INTO {table} ({list}) OVERRIDING SYSTEM VALUE VALUES ({})",
        placeholders.join(", ")
    );
    let mut after = 0i64;
    loop {
        let rows = from.query(&read, crate::params![after], |r| {
            let position: i64 = r.get(0)?;
            let values = (1..=columns.len())
                .map(|i| r.get::<OwnedValue>(i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((position, values))
        })?;
        let Some((last, _)) = rows.last() else {
            return Ok(());
        };
        after = *last;
        for (_, values) in &rows {
            let params: Vec<&dyn ToParam> = values.iter().map(|v| v as &dyn ToParam).collect();
            to.execute(&write, &params)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column of every copied table is copied: a column added by a migration and not
    /// listed here would be lost silently by a move.
    #[test]
    fn every_column_of_the_schema_is_copied() {
        let db = Db::open_in_memory().unwrap();
        for (table, columns) in TABLES {
            let table = table.to_string();
            let schema: Vec<String> = db
                .call_blocking(move |conn| {
                    let conn = conn.as_sqlite().expect("SQLite");
                    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
                    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
                    Ok::<_, crate::error::DirectorError>(names.collect::<Result<Vec<_>, _>>()?)
                })
                .unwrap();
            for column in &schema {
                assert!(columns.contains(&column.as_str()), "{column} is not copied");
            }
        }
    }
}
