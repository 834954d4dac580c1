//! SQLite storage in WAL mode: one writer thread committing the writes waiting for it
//! together (group commit), a pool of read-only connections, migrations embedded and keyed
//! on `PRAGMA user_version`.
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
    include_str!("migrations/008_listing_indexes.sql"),
];

/// Manifests, registrations and every other write of this many requests at most share one
/// durable commit.
const MAX_BATCH: usize = 256;

/// Read-only connections beside the writer (on-disk databases only: WAL lets them read
/// while the writer commits).
const READERS: usize = 4;

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
    /// The transaction a write shared with others could not be committed, so none of them
    /// took effect.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// The writer thread is gone (the database was closed, or it panicked).
    #[error("the database writer stopped")]
    WriterGone,
}

/// What a write job leaves to do once its batch's commit is known: answer its caller.
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: runs on the writer thread inside the batch's transaction.
type Job = Box<dyn FnOnce(&mut Connection) -> Completion + Send>;

/// The database handle: cheap to clone.
///
/// Every call that may write goes to one writer thread, which runs the calls waiting for it
/// inside one transaction, each in its own savepoint, and commits them with one fsync (group
/// commit): a call's result is handed back only after the commit that made it durable, so an
/// acknowledged manifest survives `kill -9`. A call that fails keeps the writes it chose to
/// keep (a refusal's security event) as it would on its own connection; one that panics is
/// rolled back to its savepoint. If the commit fails, every call of the batch gets the error.
/// Pure reads ([`Db::read`]) run on a pool of read-only connections and never wait for the
/// writer.
#[derive(Debug, Clone)]
pub struct Db {
    /// The writer connection: the writer thread holds it for a batch; command-line tools
    /// and tests take it in between ([`Db::call_blocking`]).
    conn: Arc<Mutex<Connection>>,
    writer: std::sync::mpsc::SyncSender<Job>,
    readers: Arc<Readers>,
    path: Option<Arc<Path>>,
}

#[derive(Debug, Default)]
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: std::sync::atomic::AtomicUsize,
}

/// Prepared statements kept per connection: every statement of the request paths (rusqlite
/// keeps 16 by default, fewer than the manifest and metadata paths use between them).
const STATEMENT_CACHE: usize = 64;

/// Makes `conn` keep what it has prepared: a statement cache for every statement of the
/// request paths, and SQLite's query planner stability guarantee. Without the guarantee
/// SQLite's planner marks some statements (here a join, or an `ORDER BY`, over `vin = ?1
/// AND status IN (...)`) as worth planning again for other values of a parameter, and
/// rusqlite clears a statement's bindings when it returns it to the cache, which expires a
/// statement so marked: the cached statement was parsed and planned anew on every call (a
/// fifth of the Director's time signing vehicle metadata). Under the guarantee a plan never
/// adapts to values, so a partial index or a `LIKE ?` prefix search would not be used for a
/// bound parameter; our queries use neither and have one good plan whatever the values.
fn keep_plans(conn: &Connection) -> Result<(), DbError> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// A read-only connection to the on-disk database at `path`, as the read pool and the root
/// watch use.
pub(crate) fn open_read_only(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "query_only", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    keep_plans(&conn)?;
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let writer = Connection::open(path)?;
        let db = Self::from_connection(writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(open_read_only(path)?));
        }
        Ok(Self {
            readers: Arc::new(Readers {
                conns: readers,
                next: Default::default(),
            }),
            path: Some(Arc::from(path)),
            ..db
        })
    }

    /// An in-memory database, for tests (reads go through the writer).
    pub fn open_in_memory() -> Result<Self, DbError> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> Result<Self, DbError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: an acknowledged manifest, assignment or event survives a power cut.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        keep_plans(&conn)?;
        migrate(&mut conn)?;
        // Bounded: a flood of writes waits for the queue instead of growing it.
        let conn = Arc::new(Mutex::new(conn));
        let (writer, jobs) = std::sync::mpsc::sync_channel::<Job>(4 * MAX_BATCH);
        let batches = Arc::clone(&conn);
        std::thread::Builder::new()
            .name("director-db-writer".into())
            .spawn(move || write_batches(&batches, jobs))
            .map_err(|e| DbError::Join(format!("cannot start the database writer: {e}")))?;
        Ok(Self {
            conn,
            writer,
            readers: Arc::default(),
            path: None,
        })
    }

    /// The database file (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` on the writer connection, as part of the next group commit; resolves once
    /// that commit is durable.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = job(f, move |r| drop(tx.send(r)));
        match self.writer.try_send(queued) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(queued)) => {
                // The queue is full: wait for room off the async threads.
                let writer = self.writer.clone();
                tokio::task::spawn_blocking(move || writer.send(queued))
                    .await
                    .map_err(|e| DbError::Join(e.to_string()))?
                    .map_err(|_| DbError::WriterGone)?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                return Err(DbError::WriterGone.into());
            }
        }
        rx.await
            .map_err(|_| DbError::Join("a database call panicked".into()))?
    }

    /// Runs `f` on the writer connection on this thread, between two batches and in its own
    /// transactions (command-line tools, tests).
    pub fn call_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E>,
        E: From<DbError>,
    {
        let mut conn = self.conn.lock().map_err(|_| DbError::Poisoned)?;
        f(&mut conn)
    }

    /// Runs `f`, which only reads, on a read-only connection (on the writer for an in-memory
    /// database). It sees every write whose call has returned.
    ///
    /// When a connection is free, `f` runs right here: the reads of the request paths are
    /// answered from SQLite's page cache in microseconds (and a manifest's signature checks
    /// are CPU work like any other on this thread), while a hop to a blocking thread and back
    /// cost two context switches a call, a third of the Director's time under load (issue
    /// 15). Only a caller that would wait for a connection goes to a blocking thread.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        if self.readers.conns.is_empty() {
            return self.call(move |conn| f(conn)).await;
        }
        if let Some(conn) = self.readers.free() {
            // A panic in `f` is this call's error, as on a blocking thread, not the task's.
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                in_snapshot(&conn, f)
            }))
            .unwrap_or_else(|_| Err(DbError::Join("a database read panicked".into()).into()));
        }
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || in_snapshot(&readers.next_in_turn(), f))
            .await
            .map_err(|e| DbError::Join(e.to_string()))?
    }
}

impl Readers {
    /// A connection nobody is using, if there is one. A poisoned lock is taken over: a
    /// query-only connection holds nothing half-written, and a read transaction a panic left
    /// open is ended (`in_snapshot` ends its own; this covers any other).
    fn free(&self) -> Option<std::sync::MutexGuard<'_, Connection>> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (0..self.conns.len()).find_map(|i| {
            match self.conns[(start + i) % self.conns.len()].try_lock() {
                Ok(guard) => Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(taken_over(p.into_inner())),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        })
    }

    /// A free connection, or else the next in turn once it is free (blocks).
    fn next_in_turn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.free().unwrap_or_else(|| {
            let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.conns[start % self.conns.len()]
                .lock()
                .unwrap_or_else(|p| taken_over(p.into_inner()))
        })
    }
}

/// A read connection whose lock was poisoned, with no transaction left open.
fn taken_over(
    conn: std::sync::MutexGuard<'_, Connection>,
) -> std::sync::MutexGuard<'_, Connection> {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn
}

/// Runs `f` in one read transaction: one snapshot for every statement of the call. The
/// transaction ends however `f` ends (a panic included): an open one would pin its snapshot
/// and keep checkpoints from finishing.
fn in_snapshot<T, E: From<DbError>>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    struct Snapshot<'a>(&'a Connection);
    impl Drop for Snapshot<'_> {
        fn drop(&mut self) {
            let _ = self
                .0
                .prepare_cached("ROLLBACK")
                .and_then(|mut end| end.execute([]));
        }
    }
    conn.prepare_cached("BEGIN")
        .and_then(|mut begin| begin.execute([]))
        .map_err(|e| E::from(DbError::from(e)))?;
    let snapshot = Snapshot(conn);
    f(snapshot.0)
}

/// A write job for `f` whose outcome, once its batch's commit is known, goes to `answer`.
fn job<T, E, F>(f: F, answer: impl FnOnce(Result<T, E>) + Send + 'static) -> Job
where
    F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    Box::new(move |conn: &mut Connection| -> Completion {
        let result = f(conn);
        Box::new(move |committed: Result<(), String>| {
            answer(match committed {
                Ok(()) => result,
                Err(e) => Err(E::from(DbError::Commit(e))),
            })
        })
    })
}

/// The writer thread: runs waiting jobs in batches, one transaction and one commit each.
fn write_batches(conn: &Mutex<Connection>, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter().take(MAX_BATCH - 1));
        // A panic is caught per job, so the lock is poisoned only by a `call_blocking`
        // caller's panic; the connection itself is still sound.
        let mut conn = conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut done: Vec<Completion> = Vec::with_capacity(batch.len());
        if !conn.is_autocommit() {
            // A transaction left open (a COMMIT and its ROLLBACK both failed): end it, or
            // every later batch would fail to begin.
            let _ = conn.execute_batch("ROLLBACK");
        }
        let mut failed = conn
            .execute_batch("BEGIN IMMEDIATE")
            .err()
            .map(|e| e.to_string());
        for job in batch {
            if failed.is_some() {
                // Dropping the job answers its caller with an error.
                continue;
            }
            if let Err(e) = run_cached(&conn, "SAVEPOINT call") {
                failed = Some(e.to_string());
                continue;
            }
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (a full disk, an I/O error):
                // nothing of this batch will be committed.
                failed = Some("the transaction was rolled back by SQLite".into());
                if let Ok(completion) = ran {
                    done.push(completion);
                }
                continue;
            }
            let ended = match ran {
                Ok(completion) => {
                    done.push(completion);
                    run_cached(&conn, "RELEASE call")
                }
                // The panicking call's writes go; its caller sees the panic as a failed call.
                Err(_) => conn.execute_batch("ROLLBACK TO call; RELEASE call"),
            };
            if let Err(e) = ended {
                failed = Some(e.to_string());
            }
        }
        let outcome = match failed {
            Some(e) => Err(e),
            None => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
        };
        if outcome.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for completion in done {
            completion(outcome.clone());
        }
    }
}

/// Runs one statement from the connection's cache: the writer opens and releases a savepoint
/// per call, and parsing them again each time was a twentieth of its work under load.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.savepoint()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that panics is that call's error, on the calling thread as on a blocking one,
    /// and leaves no transaction open on its connection (the next read there begins one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_panics_is_an_error_and_ends_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("director.db")).unwrap();
        for _ in 0..2 * READERS {
            let read: Result<(), DbError> = db.read(|_| panic!("a read that fails")).await;
            assert!(matches!(read, Err(DbError::Join(_))), "{read:?}");
        }
        for _ in 0..2 * READERS {
            let one: Result<i64, DbError> = db
                .read(|conn| Ok(conn.query_row("SELECT 1", [], |r| r.get(0))?))
                .await;
            assert_eq!(one.unwrap(), 1);
        }
    }

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
