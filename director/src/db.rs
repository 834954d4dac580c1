//! SQLite storage: one connection in WAL mode behind a small async wrapper, migrations
//! embedded and keyed on `PRAGMA user_version`.
//!
//! The storage seam is [`Db::call`]: every repository function takes a `&mut Connection`
//! and does its multi-row writes in one transaction, so a PostgreSQL backend can later
//! implement the same functions.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_init.sql"),
    include_str!("migrations/002_indexes.sql"),
    include_str!("migrations/003_typed.sql"),
    include_str!("migrations/004_credentials.sql"),
    include_str!("migrations/005_root_versions.sql"),
    include_str!("migrations/006_time.sql"),
    include_str!("migrations/007_retention.sql"),
];

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A previous call panicked while holding the connection.
    #[error("database connection poisoned")]
    Poisoned,
    /// The blocking task failed.
    #[error("database task failed: {0}")]
    Join(String),
}

/// The database handle: cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::from_connection(Connection::open(path)?)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self, DbError> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> Result<Self, DbError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: an acknowledged manifest, assignment or event survives a power cut.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection in a blocking task.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().map_err(|_| DbError::Poisoned)?;
            f(&mut conn)
        })
        .await
        .map_err(|e| DbError::Join(e.to_string()))?
    }

    /// Runs `f` on the connection on this thread (command-line tools, tests).
    pub fn call_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E>,
        E: From<DbError>,
    {
        let mut conn = self.conn.lock().map_err(|_| DbError::Poisoned)?;
        f(&mut conn)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_events_are_append_only() {
        let db = Db::open_in_memory().unwrap();
        db.call_blocking(|conn| {
            migrate(conn)?;
            conn.execute(
                "INSERT INTO events (at, kind, severity, actor, detail) VALUES ('t', 'k', 'info', 'a', 'd')",
                [],
            )?;
            assert!(conn.execute("UPDATE events SET detail = 'x'", []).is_err());
            assert!(conn.execute("DELETE FROM events", []).is_err());
            Ok::<_, DbError>(())
        })
        .unwrap();
    }
}
