//! The Director's database: SQLite in WAL mode (the default) or PostgreSQL, behind one
//! handle. One writer thread commits the writes waiting for it together (group commit), a
//! pool of read connections answers reads, and migrations are embedded for both engines
//! (keyed on SQLite's `PRAGMA user_version`, on PostgreSQL's `schema_version` table).
//!
//! The storage seam is [`Db::call`] and [`Db::read`]: every repository function takes a
//! [`Conn`] and does its multi-row writes in one savepoint, so the service is written once
//! for both engines ([`crate::sql`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::sql::{Conn, Engine};

mod checkpoint;
mod queue;
pub use checkpoint::CheckpointCounts;
use checkpoint::Checkpoints;

/// Where the Director keeps its state: `sqlite:PATH` (or a bare path) or
/// `postgres://user@host:port/name` (`postgresql://` too).
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (it may hold a password: never printed whole).
    Postgres(String),
}

impl std::str::FromStr for Database {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            // Checked when connecting, not here: a parser's refusal would be echoed with the
            // string, password included.
            Ok(Database::Postgres(s.to_owned()))
        } else {
            let path = s.strip_prefix("sqlite:").unwrap_or(s);
            if path.is_empty() {
                return Err("name a SQLite file (sqlite:PATH) or postgres://…".into());
            }
            Ok(Database::Sqlite(PathBuf::from(path)))
        }
    }
}

impl DbError {
    /// Whether PostgreSQL refused because of other transactions, not this one's content: a
    /// deadlock it broke, a serialization failure, a lock not granted within `lock_timeout`.
    pub fn is_contention(&self) -> bool {
        use postgres::error::SqlState;
        matches!(self, DbError::Postgres(e) if e.as_db_error().is_some_and(|db| {
            [SqlState::T_R_DEADLOCK_DETECTED, SqlState::T_R_SERIALIZATION_FAILURE, SqlState::LOCK_NOT_AVAILABLE]
                .contains(db.code())
        }))
    }

    /// Whether PostgreSQL could not be reached or is not serving (the link cut, the server
    /// restarting or shutting down, out of connections): the request may succeed later,
    /// here or on another replica.
    pub fn is_unavailable(&self) -> bool {
        use postgres::error::SqlState;
        match self {
            DbError::Unavailable(_) => true,
            DbError::Postgres(e) => match e.as_db_error() {
                // The link, not a mistake of ours (a type or parameter error is not this).
                None => e.is_closed() || io_cause(e),
                Some(db) => [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                ]
                .contains(db.code()),
            },
            _ => false,
        }
    }

    /// The constraint a write broke by repeating a unique key, if that is why it failed: on
    /// PostgreSQL, a row another replica inserted first.
    pub fn repeated_key(&self) -> Option<String> {
        match self {
            DbError::Postgres(e) => e
                .as_db_error()
                .filter(|db| *db.code() == postgres::error::SqlState::UNIQUE_VIOLATION)
                .map(|db| db.constraint().unwrap_or("a unique key").to_owned()),
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, message))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                Some(message.clone().unwrap_or_else(|| "a unique key".into()))
            }
            _ => None,
        }
    }
}

impl Database {
    /// The SQLite file of a Director directory (its database unless it names another).
    pub fn sqlite_file(dir: &Path) -> PathBuf {
        dir.join("director.db")
    }

    /// As `--database` takes it: the inverse of parsing, a password included (unlike
    /// `Display`).
    pub fn to_arg(&self) -> String {
        match self {
            Database::Sqlite(path) => format!("sqlite:{}", path.display()),
            Database::Postgres(url) => url.clone(),
        }
    }

    /// The file of a Director directory that names its database when it is not
    /// DIR/director.db (written by `director init --database postgres://…`).
    pub fn file_in(dir: &Path) -> PathBuf {
        dir.join("database")
    }

    /// The file `director migrate --to` writes beside a SQLite database it moved.
    pub fn moved_marker(dir: &Path) -> PathBuf {
        dir.join("director.db-moved")
    }

    /// The database a Director directory uses: the one DIR/database names, else SQLite in
    /// DIR/director.db (unless it was moved to PostgreSQL: then DIR/database is missing,
    /// and serving the state from before the move would accept spent nonces again).
    pub fn of_dir(dir: &Path) -> Result<Self, String> {
        let file = Self::file_in(dir);
        match std::fs::read_to_string(&file) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|e| format!("{} does not name a database: {e}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let marker = Self::moved_marker(dir);
                if let Ok(to) = std::fs::read_to_string(&marker) {
                    return Err(format!(
                        "{}'s SQLite database was moved to {} ({} says so), but {} is \
                         missing: write the connection string there",
                        dir.display(),
                        to.trim(),
                        marker.display(),
                        file.display()
                    ));
                }
                Ok(Database::Sqlite(Self::sqlite_file(dir)))
            }
            Err(e) => Err(format!("could not read {}: {e}", file.display())),
        }
    }

    /// A new, empty database for a test on the PostgreSQL server `DIRECTOR_TEST_POSTGRES`
    /// names (`postgres://…`, as a user who may create databases); `None` when it names none.
    pub fn fresh_for_tests() -> Result<Option<Self>, DbError> {
        match std::env::var("DIRECTOR_TEST_POSTGRES") {
            Ok(server) if !server.is_empty() => Self::fresh_on(&server).map(Some),
            _ => Ok(None),
        }
    }

    /// A new, empty database on the PostgreSQL server `server` names (`postgres://…`, as a
    /// user who may create databases), for a test.
    pub fn fresh_on(server: &str) -> Result<Self, DbError> {
        let mut name = [0u8; 8];
        getrandom::fill(&mut name).map_err(|e| DbError::Join(format!("no randomness: {e}")))?;
        let name = format!("director_test_{}", hex::encode(name));
        let target = crate::pg::PgTarget::new(server)?;
        off_runtime(|| -> Result<(), DbError> {
            let mut admin = target.connect()?;
            admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
            Ok(())
        })?;
        // The URL of the new database: the server's, with its name replaced and its
        // settings (TLS among them) kept.
        let (base, query) = server.split_once('?').unwrap_or((server, ""));
        let (prefix, _) = base.rsplit_once('/').unwrap_or((base, ""));
        let mut url = if prefix.ends_with('/') || prefix.ends_with(':') {
            format!("{base}/{name}")
        } else {
            format!("{prefix}/{name}")
        };
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        Ok(Database::Postgres(url))
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for Database {
    /// The database without any password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Database::Postgres(url) => f.write_str(&crate::pg::redacted(url)),
        }
    }
}

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_init.sql"),
    include_str!("migrations/002_indexes.sql"),
    include_str!("migrations/003_typed.sql"),
    include_str!("migrations/004_credentials.sql"),
    include_str!("migrations/005_root_versions.sql"),
    include_str!("migrations/006_time.sql"),
    include_str!("migrations/007_retention.sql"),
    include_str!("migrations/008_listing_indexes.sql"),
    include_str!("migrations/009_campaigns.sql"),
    include_str!("migrations/010_cancel_requests.sql"),
    include_str!("migrations/011_nonce_retention.sql"),
    include_str!("migrations/012_content_counts.sql"),
];

/// PostgreSQL's migrations: the schema SQLite's migrations reach, in PostgreSQL's terms.
const PG_MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/001_init.sql"),
    include_str!("migrations/postgres/002_no_truncate.sql"),
    include_str!("migrations/postgres/003_byte_order.sql"),
    include_str!("migrations/postgres/004_event_order.sql"),
    include_str!("migrations/postgres/005_campaigns.sql"),
    include_str!("migrations/postgres/006_cancel_requests.sql"),
    include_str!("migrations/postgres/007_nonce_retention.sql"),
    include_str!("migrations/postgres/008_content_counts.sql"),
];

/// Manifests, registrations and every other write of this many requests at most share one
/// durable commit.
const MAX_BATCH: usize = 256;

/// On SQLite on disk, when the last batch held several writes (they come faster than they
/// are committed), the next waits for as many, for this long at most after the last stopped
/// waiting (each write runs as it is drawn, a few at a time while the batch waits,
/// [`Gathering`], [`WAKE_STEP`]).
/// Taking each write as it came committed about one write per commit at a fleet's steady
/// rate (1,015 `fsync`s a second for 1,333 manifests a second, `docs/BENCHMARKS.md`), and
/// every commit costs an `fsync`, the write-ahead log's frames of every page it touched, and
/// the page cache of every read connection, which SQLite drops at the next read transaction
/// that finds the database changed. A lone writer never waits (its batches hold one write);
/// a few writers that each wait for their answer, once they share a batch, go at the pace of
/// the slowest, 4 ms at most apart (two to four of them: 14–20% fewer writes a second, and
/// 64 in flight 11% fewer; a fleet, each vehicle sending when its cycle is due, held 160,000
/// vehicles at p99 11.6 ms with the spacing and not without it: `docs/BENCHMARKS.md`). Not
/// on PostgreSQL (not measured) nor in memory (reads go through the writer there). Waiting
/// only when a write was already queued at the commit's end kept 889 of the 1,015 `fsync`s
/// a second and was not kept.
const COMMIT_SPACING: std::time::Duration = std::time::Duration::from_millis(4);

/// While a batch waits for company, the writer is woken once this many more writes wait (or
/// all it still waits for, if fewer), and runs them, instead of once per write: each wake-up
/// cost the async thread that sent the write a `futex` call, and the writer a sleep and a
/// wake-up (`queue.rs`). Few enough that the writer's work on the batch still overlaps the
/// signing and checking of the writes still to come.
const WAKE_STEP: usize = 8;

/// Read-only connections beside the writer (on-disk databases only: WAL lets them read
/// while the writer commits).
const READERS: usize = 4;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused, or the connection to it failed.
    #[error("postgres: {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    /// A statement that must return a row returned none.
    #[error("the query returned no row")]
    NoRow,
    /// A column did not hold what the schema says.
    #[error("column {index}: {message}")]
    Column {
        /// The column's index in the row.
        index: usize,
        /// What it held instead.
        message: String,
    },
    /// A previous call panicked while holding the connection.
    #[error("database connection poisoned")]
    Poisoned,
    /// The blocking task failed.
    #[error("database task failed: {0}")]
    Join(String),
    /// The PostgreSQL connection string asks for what the Director refuses, or names a file
    /// it cannot use ([`crate::pg`]).
    #[error("the PostgreSQL connection string: {0}")]
    Settings(String),
    /// The database could not be reached or is not serving, so the write was not made:
    /// worth trying again.
    #[error("the database does not answer: {0}")]
    Unavailable(String),
    /// The transaction a write shared with others could not be committed, so none of them
    /// took effect.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// The write was rolled back with the others of its batch, though nothing was wrong
    /// with it: worth trying again.
    #[error("nothing was committed: {0}")]
    RolledBack(String),
    /// The writer thread is gone (the database was closed, or it panicked).
    #[error("the database writer stopped")]
    WriterGone,
}

/// Whether `e` was caused by the network (a connection refused, reset or timed out).
fn io_cause(e: &postgres::Error) -> bool {
    causes(e).any(|cause| cause.is::<std::io::Error>())
}

/// The errors under `e`, the nearest first.
fn causes(e: &postgres::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(e), |cause| cause.source())
}

/// What PostgreSQL said: the server's message and code when it refused (the client's
/// own text is only "db error" then), else the client's error.
fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The client's text alone is "error performing TLS handshake": say why.
            causes(e).fold(e.to_string(), |message, cause| {
                format!("{message}: {cause}")
            })
        }
    }
}

/// Why a batch's writes were not committed.
#[derive(Debug, Clone)]
struct NotCommitted {
    why: String,
    /// The error each call of the batch is told: [`DbError::Unavailable`] when the database
    /// could not be reached or is not serving ([`DbError::is_unavailable`]),
    /// [`DbError::RolledBack`] when another call's failure took the calls' writes with it,
    /// else [`DbError::Commit`].
    as_error: fn(String) -> DbError,
}

impl NotCommitted {
    fn of(e: &DbError) -> Self {
        Self {
            why: e.to_string(),
            as_error: if e.is_unavailable() {
                DbError::Unavailable
            } else {
                DbError::Commit
            },
        }
    }

    fn error(self) -> DbError {
        (self.as_error)(self.why)
    }
}

/// What a write job leaves to do once its batch's commit is known: answer its caller.
type Completion = Box<dyn FnOnce(Result<(), NotCommitted>) + Send>;
/// A write: runs on the writer thread inside the batch's transaction, or is told why it
/// cannot (the batch's transaction could not begin). Also says whether the call succeeded: a
/// call that failed is answered with its own error.
type Job = Box<dyn FnOnce(Result<&mut Conn, &NotCommitted>) -> (bool, Completion) + Send>;

/// The database handle: cheap to clone.
///
/// Every call that may write goes to one writer thread, which runs the calls waiting for it
/// inside one transaction and commits them with one fsync (group commit): a call's result is
/// handed back only after the commit that made it durable, so an acknowledged manifest
/// survives `kill -9`. A call that fails keeps the writes it chose to keep (a refusal's
/// security event) as it would on its own connection. On PostgreSQL each call runs in its
/// own savepoint, to which a failed statement or a panic rolls back; on SQLite a call that
/// panics rolls back the transaction, the calls already run in it are told to try again,
/// and from then on each call has a savepoint too. If the commit fails, every call of the
/// batch gets the error.
/// Pure reads ([`Db::read`]) run on a pool of read-only connections and never wait for the
/// writer.
#[derive(Debug, Clone)]
pub struct Db {
    /// The writer connection: the writer thread holds it for a batch, from its first write
    /// to its commit (the wait for company included: SQLite's write lock with it, so another
    /// process's write waits within its busy timeout); command-line tools and tests take it
    /// in between ([`Db::call_blocking`]).
    conn: Arc<Mutex<Conn>>,
    writer: queue::Sender<Job>,
    readers: Arc<Readers>,
    path: Option<Arc<Path>>,
    engine: Engine,
    /// On SQLite on disk: the write-ahead log's checkpoints, off the writer's commits.
    checkpoints: Option<Checkpoints>,
}

#[derive(Debug, Default)]
struct Readers {
    conns: Vec<Mutex<Conn>>,
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
fn keep_plans(conn: &rusqlite::Connection) -> Result<(), DbError> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// The SQLite writer connection `conn`, set up and migrated, and for a database on disk
/// (at `path`) its log's checkpoints.
fn sqlite_writer(
    mut conn: rusqlite::Connection,
    path: Option<&Path>,
) -> Result<(Conn, Option<Checkpoints>), DbError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: an acknowledged manifest, assignment or event survives a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    keep_plans(&conn)?;
    keep_c_heap(&conn);
    let checkpoints = path
        .map(|path| Checkpoints::start(path, &mut conn))
        .transpose()?;
    let mut conn = Conn::sqlite(conn);
    migrate(&mut conn)?;
    Ok((conn, checkpoints))
}

/// Keeps the C library's allocator from handing memory back to the kernel after every
/// write: once per process, has SQLite (which allocates through the C library's `malloc`)
/// take and free two 16 MiB blocks.
///
/// glibc gives the top of a thread's heap back (`madvise`, which also interrupts the other
/// core to flush its TLB) whenever more than its trim threshold, 128 KiB at first, is free
/// there; the next allocation then faults in fresh zeroed pages. SQLite takes and frees a
/// 64 KiB sub-journal chunk at each outermost savepoint a write uses (every manifest's
/// record has one), so the writer paid that on nearly every manifest: about 40 µs of its
/// ~360 µs of CPU (`docs/BENCHMARKS.md`). When glibc frees an `mmap`ped block larger than
/// its mmap threshold (and at most 32 MiB on 64-bit), it raises that threshold to the
/// block's size and the trim threshold to twice it (mallopt(3), M_MMAP_THRESHOLD): 16 and
/// 32 MiB here. So C allocations below 16 MiB then come from the heaps (each may keep up to
/// 32 MiB free); Rust's are on mimalloc and unaffected. An operator who sets glibc's
/// `trim_threshold`, `top_pad`, `mmap_threshold` or `mmap_max` tunable (or its `MALLOC_*_`
/// variable) turns this adjustment off, and that setting wins. On other C libraries it is
/// two short-lived allocations. Best effort: a failure (a memory limit) is logged, not fatal.
fn keep_c_heap(conn: &rusqlite::Connection) {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return;
    }
    // A zero blob takes no memory until the concatenation writes it out.
    let freed: rusqlite::Result<i64> =
        conn.query_row("SELECT length(zeroblob(16777000) || x'00')", [], |r| {
            r.get(0)
        });
    match freed {
        Ok(_) => {
            let _ = DONE.set(());
        }
        Err(e) => tracing::warn!("the C heap's trim threshold stays as it was: {e}"),
    }
}

/// A read-only connection to the on-disk database at `path`, as the read pool and the root
/// watch use.
pub(crate) fn open_read_only(path: &Path) -> Result<rusqlite::Connection, DbError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "query_only", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    keep_plans(&conn)?;
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) `database` and applies migrations.
    pub fn connect(database: &Database) -> Result<Self, DbError> {
        match database {
            Database::Sqlite(path) => Self::open(path),
            Database::Postgres(url) => Self::open_postgres(url),
        }
    }

    /// Opens (creating if needed) the SQLite database at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let (writer, checkpoints) = sqlite_writer(rusqlite::Connection::open(path)?, Some(path))?;
        let readers = (0..READERS)
            .map(|_| open_read_only(path).map(Conn::sqlite))
            .collect::<Result<_, _>>()?;
        Self::start(writer, readers, Some(path), checkpoints)
    }

    /// Connects to the PostgreSQL database at `url` and applies migrations.
    ///
    /// The connection is made off the async threads: the `postgres` client runs its own
    /// runtime and may not be driven from inside another.
    pub fn open_postgres(url: &str) -> Result<Self, DbError> {
        let target = crate::pg::PgTarget::new(url)?;
        off_runtime(move || {
            let mut writer = Conn::postgres(target.clone())?;
            migrate_postgres(&mut writer)?;
            let readers = (0..READERS)
                .map(|_| Conn::postgres(target.clone()))
                .collect::<Result<_, _>>()?;
            Self::start(writer, readers, None, None)
        })
    }

    /// A fresh database for a test: a new database on the PostgreSQL server that
    /// `DIRECTOR_TEST_POSTGRES` names (`postgres://…`, a database the user may create
    /// databases from), or else an in-memory SQLite database. CI runs the Director's tests
    /// both ways (`.ci/run`).
    pub fn for_tests() -> Result<Self, DbError> {
        match Database::fresh_for_tests()? {
            Some(database) => Self::connect(&database),
            None => Self::open_in_memory(),
        }
    }

    /// An in-memory database, for tests (reads go through the writer).
    pub fn open_in_memory() -> Result<Self, DbError> {
        let (writer, _) = sqlite_writer(rusqlite::Connection::open_in_memory()?, None)?;
        Self::start(writer, Vec::new(), None, None)
    }

    /// Starts the writer thread on `conn`, with `readers` for [`Db::read`] (none: reads go
    /// through the writer), the database file at `path`, if there is one, and its log's
    /// `checkpoints`, if kept off the writer's commits.
    fn start(
        conn: Conn,
        readers: Vec<Conn>,
        path: Option<&Path>,
        checkpoints: Option<Checkpoints>,
    ) -> Result<Self, DbError> {
        let engine = conn.engine();
        // Bounded: a flood of writes waits for the queue instead of growing it.
        let conn = Arc::new(Mutex::new(conn));
        let (writer, jobs) = queue::bounded::<Job>(4 * MAX_BATCH);
        let batches = Arc::clone(&conn);
        let spacing = (engine == Engine::Sqlite && path.is_some()).then_some(COMMIT_SPACING);
        let finish = checkpoints.clone();
        std::thread::Builder::new()
            .name("director-db-writer".into())
            .spawn(move || write_batches(&batches, jobs, spacing, finish.as_ref()))
            .map_err(|e| DbError::Join(format!("cannot start the database writer: {e}")))?;
        Ok(Self {
            conn,
            writer,
            readers: Arc::new(Readers {
                conns: readers.into_iter().map(Mutex::new).collect(),
                next: Default::default(),
            }),
            path: path.map(Arc::from),
            engine,
            checkpoints,
        })
    }

    /// The engine behind this database.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The database file (`None` in memory and on PostgreSQL).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What the write-ahead log's checkpoints did so far (`None` in memory and on
    /// PostgreSQL, which have none of their own).
    pub fn checkpoint_counts(&self) -> Option<CheckpointCounts> {
        self.checkpoints.as_ref().map(Checkpoints::counts)
    }

    /// Runs `f` on the writer connection, as part of the next group commit; resolves once
    /// that commit is durable.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = job(f, move |r| drop(tx.send(r)));
        match self.writer.try_send(queued) {
            Ok(()) => {}
            Err(queue::TrySendError::Full(queued)) => {
                // The queue is full: wait for room off the async threads.
                let writer = self.writer.clone();
                tokio::task::spawn_blocking(move || writer.send(queued))
                    .await
                    .map_err(|e| DbError::Join(e.to_string()))?
                    .map_err(|_| DbError::WriterGone)?;
            }
            Err(queue::TrySendError::Disconnected(_)) => {
                return Err(DbError::WriterGone.into());
            }
        }
        rx.await
            .map_err(|_| DbError::Join("a database call panicked".into()))?
    }

    /// Runs `f` on the writer connection on this thread, between two batches and in its own
    /// transactions (command-line tools, tests). On PostgreSQL `f` runs in one transaction.
    pub fn call_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send,
        T: Send,
        E: From<DbError> + Send,
    {
        let mut guard = self.conn.lock().map_err(|_| DbError::Poisoned)?;
        let conn: &mut Conn = &mut guard;
        match self.engine {
            Engine::Sqlite => f(conn),
            Engine::Postgres => off_runtime(move || {
                conn.reconnect_if_lost()?;
                conn.batch("BEGIN")?;
                let result = f(conn);
                let ended = match &result {
                    Ok(_) => conn.batch("COMMIT"),
                    Err(_) => conn.batch("ROLLBACK"),
                };
                match (result, ended) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(e.into()),
                }
            }),
        }
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
        F: FnOnce(&Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        if self.readers.conns.is_empty() {
            return self.call(move |conn| f(conn)).await;
        }
        // The `postgres` client blocks on its own runtime: never on an async thread.
        let here = self.engine == Engine::Sqlite;
        if let Some(conn) = here.then(|| self.readers.free()).flatten() {
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
    fn free(&self) -> Option<std::sync::MutexGuard<'_, Conn>> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (0..self.conns.len()).find_map(|i| {
            let slot = &self.conns[(start + i) % self.conns.len()];
            match slot.try_lock() {
                Ok(guard) => Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    slot.clear_poison();
                    Some(taken_over(p.into_inner()))
                }
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        })
    }

    /// A free connection, or else the next in turn once it is free (blocks).
    fn next_in_turn(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.free().unwrap_or_else(|| {
            let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.conns[start % self.conns.len()]
                .lock()
                .unwrap_or_else(|p| taken_over(p.into_inner()))
        })
    }
}

/// A read connection whose lock was poisoned, with no transaction left open.
fn taken_over(conn: std::sync::MutexGuard<'_, Conn>) -> std::sync::MutexGuard<'_, Conn> {
    if conn.engine() == Engine::Postgres || !conn.is_autocommit() {
        // PostgreSQL only warns when no transaction is open.
        let _ = conn.batch("ROLLBACK");
    }
    conn
}

/// Runs `f` in one read transaction: one snapshot for every statement of the call. The
/// transaction ends however `f` ends (a panic included): an open one would pin its snapshot
/// and keep checkpoints from finishing.
fn in_snapshot<T, E: From<DbError>>(
    conn: &Conn,
    f: impl FnOnce(&Conn) -> Result<T, E>,
) -> Result<T, E> {
    struct Snapshot<'a>(&'a Conn);
    impl Drop for Snapshot<'_> {
        fn drop(&mut self) {
            let _ = self.0.run("ROLLBACK");
        }
    }
    let begin = match conn.engine() {
        Engine::Sqlite => "BEGIN",
        // One snapshot for every statement, as SQLite's read transaction gives.
        Engine::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    };
    conn.reconnect_if_lost().map_err(E::from)?;
    conn.run(begin).map_err(E::from)?;
    let snapshot = Snapshot(conn);
    f(snapshot.0)
}

/// Runs `f`, which may block on a PostgreSQL client (which refuses to block on a thread that
/// drives async tasks): as is when no runtime drives this thread, announced as blocking to a
/// multi-threaded runtime, and on a thread of its own beside a current-thread runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => f(),
    }
}

/// A write job for `f` whose outcome, once its batch's commit is known, goes to `answer`.
fn job<T, E, F>(f: F, answer: impl FnOnce(Result<T, E>) + Send + 'static) -> Job
where
    F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    Box::new(
        move |conn: Result<&mut Conn, &NotCommitted>| -> (bool, Completion) {
            let result = match conn {
                Ok(conn) => f(conn),
                Err(why) => Err(E::from(why.clone().error())),
            };
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |committed: Result<(), NotCommitted>| {
                answer(match committed {
                    Ok(()) => result,
                    Err(e) => Err(E::from(e.error())),
                })
            });
            (ok, completion)
        },
    )
}

/// The writer thread: runs jobs in batches, one transaction and one commit each, each job
/// as it is drawn into its batch ([`Gathering`]).
fn write_batches(
    conn: &Mutex<Conn>,
    jobs: queue::Receiver<Job>,
    spacing: Option<std::time::Duration>,
    checkpoints: Option<&Checkpoints>,
) {
    // PostgreSQL does not say whether a transaction is open: whether the last one's end failed.
    let mut open_after_failure = false;
    // SQLite runs calls without a savepoint each (`run_sqlite_call`) until one panics; from
    // then on a savepoint each again, so that a bug costs no more than one batch.
    let mut savepoints = false;
    let mut last: Option<LastBatch> = None;
    while let Some(first) = jobs.recv() {
        // The batch is drawn while it runs: each write runs as it comes (a few at a time while
        // the batch waits for company, `WAKE_STEP`), so the writer's work on the first
        // overlaps the signing and checking of the later ones on other threads, and only the
        // last ones' writes and the commit are left once all are in.
        let mut batch = Gathering::new(first, &jobs, spacing.zip(last));
        // A panic is caught per job, so the lock is poisoned only by a `call_blocking`
        // caller's panic; the connection itself is still sound.
        let mut conn = conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sqlite = conn.engine() == Engine::Sqlite;
        let mut done: Vec<Completion> = Vec::with_capacity(last.map_or(1, |l| l.held));
        if (sqlite && !conn.is_autocommit()) || (!sqlite && open_after_failure) {
            // A transaction left open (a COMMIT and its ROLLBACK both failed): end it, or
            // every later batch would fail to begin.
            let _ = conn.run("ROLLBACK");
        }
        let mut failed = conn
            .reconnect_if_lost()
            .and_then(|()| conn.run(if sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" }))
            .err()
            .map(|e| NotCommitted::of(&e));
        let began = failed.is_none();
        if !began {
            // The writes already waiting are told why without waiting for more.
            batch.stop_waiting();
        }
        // Once a write of a begun transaction fails, the batch draws no more: the writes
        // still queued go to the next transaction.
        while (failed.is_none() || !began)
            && let Some(job) = batch.next()
        {
            if let Some(why) = &failed {
                // Not run: the transaction did not begin; its caller is told why (a database
                // that does not answer is worth trying again).
                done.push(job(Err(why)).1);
                continue;
            }
            if sqlite && !savepoints {
                let ran = run_sqlite_call(&mut conn, job, &mut done);
                if ran.panicked {
                    tracing::error!(
                        "a database write panicked: its batch was rolled back; each write now runs in a savepoint of its own"
                    );
                    savepoints = true;
                }
                failed = ran.failed;
                continue;
            }
            if let Err(e) = conn.run("SAVEPOINT call") {
                let why = NotCommitted::of(&e);
                done.push(job(Err(&why)).1);
                failed = Some(why);
                continue;
            }
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(&mut conn))));
            if sqlite && conn.is_autocommit() {
                // SQLite rolled the whole transaction back (a full disk, an I/O error):
                // nothing of this batch will be committed.
                failed = Some(NotCommitted {
                    why: "the transaction was rolled back by SQLite".into(),
                    as_error: DbError::Commit,
                });
                if let Ok((_, completion)) = ran {
                    done.push(completion);
                }
                continue;
            }
            let ended = match ran {
                Ok((ok, completion)) => match conn.run("RELEASE call") {
                    Ok(()) => {
                        done.push(completion);
                        Ok(())
                    }
                    // PostgreSQL: a statement of this call failed (a unique key another
                    // replica took first, a deadlock), which aborts the transaction until it
                    // is rolled back to the call's savepoint. The call's writes go and the
                    // batch goes on. A call that failed is answered with its own error; one
                    // that went on after the failure, with the failure.
                    Err(e) if !sqlite => {
                        let why = NotCommitted::of(&e);
                        done.push(if ok {
                            Box::new(move |_| completion(Err(why)))
                        } else {
                            Box::new(move |_| completion(Ok(())))
                        });
                        conn.batch("ROLLBACK TO call; RELEASE call")
                    }
                    Err(e) => {
                        done.push(completion);
                        Err(e)
                    }
                },
                // The panicking call's writes go; its caller sees the panic as a failed call.
                Err(_) => conn.batch("ROLLBACK TO call; RELEASE call"),
            };
            if let Err(e) = ended {
                failed = Some(NotCommitted::of(&e));
            }
        }
        batch.stop_waiting();
        last = Some(LastBatch {
            begun: batch.waited,
            held: batch.held,
        });
        let outcome = match failed {
            Some(e) => Err(e),
            // Never "try again": a COMMIT whose link broke may have committed.
            None => conn.batch("COMMIT").map_err(|e| NotCommitted {
                why: e.to_string(),
                as_error: DbError::Commit,
            }),
        };
        if outcome.is_err() && (!sqlite || !conn.is_autocommit()) {
            open_after_failure = conn.batch("ROLLBACK").is_err();
        }
        for completion in done {
            completion(outcome.clone());
        }
        // Answered first: this copies what the log gained while the checkpoint thread ran.
        if let (Some(checkpoints), Some(writer)) = (checkpoints, conn.as_sqlite()) {
            checkpoints.finish(writer);
        }
    }
}

/// When a batch stopped waiting for company (its spacing counts from there), and how many
/// writes it held.
#[derive(Debug, Clone, Copy)]
struct LastBatch {
    begun: std::time::Instant,
    held: usize,
}

/// The batch that begins with `first`, drawn one write at a time: with it, the writes
/// waiting, [`MAX_BATCH`] at most, and, when `gathering` names a spacing and the last batch,
/// as many as that batch held if they come within the spacing of the moment it stopped
/// waiting ([`COMMIT_SPACING`]). After a batch of one it takes only what is waiting. Writes
/// that arrive while the batch runs join it, up to the cap.
struct Gathering<'a, T> {
    first: Option<T>,
    jobs: &'a queue::Receiver<T>,
    /// Until when, and for how many in all, it waits for writes still to come.
    wait: Option<(std::time::Instant, usize)>,
    /// When it stopped waiting (when it was made, if it had nothing to wait for): the next
    /// batch's spacing counts from here, as it counted from the end of the gathering when a
    /// batch was gathered before it ran.
    waited: std::time::Instant,
    held: usize,
}

impl<'a, T> Gathering<'a, T> {
    fn new(
        first: T,
        jobs: &'a queue::Receiver<T>,
        gathering: Option<(std::time::Duration, LastBatch)>,
    ) -> Self {
        let mut batch = Self {
            first: Some(first),
            jobs,
            wait: gathering.map(|(spacing, last)| (last.begun + spacing, last.held)),
            waited: std::time::Instant::now(),
            held: 0,
        };
        batch.stop_waiting_once_held();
        batch
    }

    /// From now on it takes only what is waiting. The wait ended now, or at its deadline if
    /// that passed first (while a write ran, or before the batch was made).
    fn stop_waiting(&mut self) {
        if let Some((not_before, _)) = self.wait.take() {
            self.waited = std::time::Instant::now().min(not_before).max(self.waited);
        }
    }

    fn stop_waiting_once_held(&mut self) {
        if let Some((_, want)) = self.wait
            && self.held.max(1) >= want
        {
            self.stop_waiting();
        }
    }

    fn draw(&mut self) -> Option<T> {
        if let Some(job) = self.jobs.try_recv() {
            return Some(job);
        }
        if let Some((not_before, want)) = self.wait {
            // Woken once a few more wait, or all the batch still waits for if fewer: not at
            // each write ([`WAKE_STEP`]).
            let step = want.saturating_sub(self.held).clamp(1, WAKE_STEP);
            if let Some(job) = self.jobs.recv_when(step, Some(not_before)) {
                return Some(job);
            }
            // The spacing is over, or every sender is gone.
            self.stop_waiting();
        }
        None
    }
}

impl<T> Iterator for Gathering<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.held >= MAX_BATCH {
            return None;
        }
        let job = self.first.take().or_else(|| self.draw());
        if job.is_some() {
            self.held += 1;
            self.stop_waiting_once_held();
        }
        job
    }
}

/// What [`run_sqlite_call`] leaves: why the rest of the batch cannot be committed, if it
/// cannot, and whether the call panicked.
struct SqliteCall {
    failed: Option<NotCommitted>,
    panicked: bool,
}

/// Runs one call of a batch on SQLite, inside the batch's transaction and without a
/// savepoint of its own.
///
/// On SQLite a statement that fails with a constraint or a trigger's `RAISE(ABORT)` (all
/// this schema has) undoes only itself, so a call that fails keeps what it chose to keep
/// without a savepoint of the batch's; a full disk, an I/O error or a lost lock may roll
/// the whole transaction back, which `is_autocommit` tells. The savepoint per call served
/// only a call that panics, for two statements per call (`docs/BENCHMARKS.md`, "The writer
/// keeps its heap"). A panicking call's writes cannot be told from the others': the
/// transaction is rolled back, each call already run in it is told nothing of it was
/// committed and to try again, and the rest of the batch runs in a new transaction.
fn run_sqlite_call(conn: &mut Conn, job: Job, done: &mut Vec<Completion>) -> SqliteCall {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(&mut *conn))));
    match ran {
        Ok((_, completion)) => {
            done.push(completion);
            SqliteCall {
                failed: conn.is_autocommit().then(|| NotCommitted {
                    why: "the transaction was rolled back by SQLite".into(),
                    as_error: DbError::Commit,
                }),
                panicked: false,
            }
        }
        Err(_) => {
            let why = NotCommitted {
                why:
                    "another write of the same commit panicked, so the transaction was rolled back"
                        .into(),
                // Nothing of theirs was committed, and nothing was wrong with them.
                as_error: DbError::RolledBack,
            };
            if !conn.is_autocommit() {
                // If the transaction is still open after this, the BEGIN below fails and
                // the rest of the batch is told why.
                let _ = conn.run("ROLLBACK");
            }
            for completion in done.drain(..) {
                completion(Err(why.clone()));
            }
            SqliteCall {
                failed: conn
                    .run("BEGIN IMMEDIATE")
                    .err()
                    .map(|e| NotCommitted::of(&e)),
                panicked: true,
            }
        }
    }
}

fn migrate(conn: &mut Conn) -> Result<(), DbError> {
    let sqlite = conn
        .as_sqlite()
        .ok_or_else(|| DbError::Join("SQLite migrations on another engine".into()))?;
    let current: i64 = sqlite.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.savepoint()?;
        tx.batch(sql)?;
        tx.batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

/// Applies PostgreSQL's migrations not yet applied, under a lock every Director process
/// takes (replicas may start together).
fn migrate_postgres(conn: &mut Conn) -> Result<(), DbError> {
    conn.batch("BEGIN")?;
    let migrated = (|| {
        // A constant of this schema: serializes migrations across processes.
        conn.batch("SELECT pg_advisory_xact_lock(7261626)")?;
        conn.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let current: Option<i64> = conn.value("SELECT MAX(version) FROM schema_version", &[])?;
        for (i, sql) in PG_MIGRATIONS
            .iter()
            .enumerate()
            .skip(current.unwrap_or(0).max(0) as usize)
        {
            conn.batch(sql)?;
            conn.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                crate::params![(i + 1) as i64],
            )?;
        }
        Ok::<_, DbError>(())
    })();
    match migrated {
        Ok(()) => conn.batch("COMMIT"),
        Err(e) => {
            let _ = conn.batch("ROLLBACK");
            Err(e)
        }
    }
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
            let one: Result<i64, DbError> = db.read(|conn| conn.value("SELECT 1", &[])).await;
            assert_eq!(one.unwrap(), 1);
        }
    }

    type Call = Box<dyn FnOnce(&mut Conn) -> Result<(), DbError> + Send>;

    /// A call that writes `detail` and then ends as `end` says.
    fn writes(detail: &'static str, end: &'static str) -> Call {
        Box::new(move |conn| {
            conn.execute(
                "INSERT INTO events (at, kind, severity, actor, detail) VALUES ('9999', 'batch', 'info', 'a', ?1)",
                crate::params![detail],
            )?;
            match end {
                "ok" => Ok(()),
                "refuses" => Err(DbError::Settings("refused by the call".into())),
                _ => panic!("a write that fails"),
            }
        })
    }

    /// Runs `calls` as one batch: a first call, which writes nothing, holds the writer until
    /// they are all queued behind it, in order, and they are drawn into its batch as it ends.
    /// Returns its answer and theirs.
    async fn one_batch(db: &Db, calls: Vec<Call>) -> Vec<Result<(), DbError>> {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let db = db.clone();
            async move {
                db.call(move |_: &mut Conn| {
                    started_tx.send(()).unwrap();
                    released.recv().unwrap();
                    Ok::<_, DbError>(())
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || started.recv())
            .await
            .unwrap()
            .unwrap();
        let mut queued: Vec<_> = calls.into_iter().map(|c| Box::pin(db.call(c))).collect();
        // One poll each queues the calls, in this order.
        std::future::poll_fn(|cx| {
            for call in &mut queued {
                assert!(call.as_mut().poll(cx).is_pending());
            }
            std::task::Poll::Ready(())
        })
        .await;
        release.send(()).unwrap();
        let mut answers = vec![first.await.unwrap()];
        for call in queued {
            answers.push(call.await);
        }
        answers
    }

    /// A call that panics inside a group commit, on both engines: its writes are not stored,
    /// a later call of the same batch still commits, and the writes stored are exactly those
    /// of the calls whose own answer came back (an acknowledgement, or a refusal that keeps
    /// its writes). SQLite rolls the batch back and tells the calls already run in it to try
    /// again, then gives each call a savepoint, as PostgreSQL always does, so that a second
    /// panic costs only itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_panics_in_a_batch_leaves_exactly_the_answered_writes() {
        let db = Db::for_tests().unwrap();
        let sqlite = db.engine() == Engine::Sqlite;
        let mut kept = Vec::new();
        for round in ["1", "2"] {
            let name = |what: &str| -> &'static str { format!("{what} {round}").leak() };
            let answers = one_batch(
                &db,
                vec![
                    writes(name("before"), "ok"),
                    writes(name("refused"), "refuses"),
                    writes(name("panics"), "panics"),
                    writes(name("after"), "ok"),
                ],
            )
            .await;
            let [holder, before, refused, panicked, after] = &answers[..] else {
                unreachable!()
            };
            assert!(
                matches!(panicked, Err(DbError::Join(why)) if why.contains("panicked")),
                "{panicked:?}"
            );
            after.as_ref().unwrap();
            kept.push(name("after"));
            if sqlite && round == "1" {
                for told in [holder, before, refused] {
                    assert!(
                        matches!(told, Err(DbError::RolledBack(why)) if why.contains("another write of the same commit panicked")),
                        "{told:?}"
                    );
                }
            } else {
                holder.as_ref().unwrap();
                before.as_ref().unwrap();
                assert!(
                    matches!(refused, Err(DbError::Settings(why)) if why == "refused by the call"),
                    "{refused:?}"
                );
                kept.extend([name("before"), name("refused")]);
            }
        }
        let mut stored: Vec<String> = db
            .read(|conn| {
                conn.query("SELECT detail FROM events WHERE kind = 'batch'", &[], |r| {
                    r.get(0)
                })
            })
            .await
            .unwrap();
        stored.sort_unstable();
        kept.sort_unstable();
        assert_eq!(stored, kept);
    }

    /// On both engines: applying the migrations again changes nothing, and the event log
    /// refuses updates and deletions of what is recent.
    #[test]
    fn migrations_apply_once_and_events_are_append_only() {
        let db = Db::for_tests().unwrap();
        {
            let mut guard = db.conn.lock().unwrap();
            let conn: &mut Conn = &mut guard;
            match db.engine() {
                Engine::Sqlite => migrate(conn).unwrap(),
                Engine::Postgres => off_runtime(move || migrate_postgres(conn)).unwrap(),
            }
        }
        db.call_blocking(|conn| {
            conn.execute(
                "INSERT INTO events (at, kind, severity, actor, detail) VALUES ('9999', 'k', 'info', 'a', 'd')",
                &[],
            )?;
            let mut refusals = vec!["UPDATE events SET detail = 'x'", "DELETE FROM events"];
            if conn.engine() == Engine::Postgres {
                // Row triggers do not see TRUNCATE; statement triggers refuse it.
                refusals.extend(["TRUNCATE events", "TRUNCATE retention"]);
            }
            for refused in refusals {
                // In a savepoint: on PostgreSQL a failed statement ends the transaction.
                let tried = conn.savepoint()?;
                let error = tried.execute(refused, &[]).unwrap_err().to_string();
                assert!(error.contains("append-only"), "{refused}: {error}");
            }
            assert_eq!(conn.value::<i64>("SELECT COUNT(*) FROM events", &[])?, 1);
            Ok::<_, DbError>(())
        })
        .unwrap();
    }

    /// A database made before the vehicles' counts of their entries (migration 012) gets
    /// them counted from the entries it holds: only open entries not cancelled are listed.
    /// (PostgreSQL's migration 008 counts the same way.)
    #[test]
    fn the_counts_of_entries_start_from_what_an_older_database_holds() {
        let mut conn = Conn::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        for sql in &MIGRATIONS[..11] {
            conn.batch(sql).unwrap();
        }
        conn.batch("PRAGMA user_version = 11").unwrap();
        conn.batch(
            "INSERT INTO vehicles (vin, credential_sha256, created_at) VALUES ('V1', 'c1', 't'), ('V2', 'c2', 't');
             INSERT INTO assignments (id, correlation_id, created_at, created_by) VALUES (1, 'a1', 't', 'op');
             INSERT INTO assignment_ecus (assignment_id, vin, ecu_serial, filename, length, hashes, hardware_id,
                                          release_counter, status, updated_at, cancel_requested_at)
             VALUES (1, 'V1', 'E1', 'f', 1, '{}', 'hw', 1, 'pending', 't', NULL),
                    (1, 'V1', 'E2', 'f', 1, '{}', 'hw', 1, 'delivered', 't', NULL),
                    (1, 'V1', 'E3', 'f', 1, '{}', 'hw', 1, 'delivered', 't', 't'),
                    (1, 'V1', 'E4', 'f', 1, '{}', 'hw', 1, 'installed', 't', NULL),
                    (1, 'V2', 'E5', 'f', 1, '{}', 'hw', 1, 'cancelled', 't', NULL);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let counts = |conn: &Conn| {
            conn.query(
                "SELECT COALESCE(c.targeted, 0), COALESCE(c.changes, 0)
                 FROM vehicles v LEFT JOIN vehicle_contents c ON c.vin = v.vin ORDER BY v.vin",
                &[],
                |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)),
            )
            .unwrap()
        };
        assert_eq!(counts(&conn), vec![(2, 0), (0, 0)]);
        // From then on the triggers count.
        conn.batch("UPDATE assignment_ecus SET status = 'installed' WHERE ecu_serial = 'E1'")
            .unwrap();
        assert_eq!(counts(&conn), vec![(1, 1), (0, 0)]);
    }

    /// The batch [`Gathering`] draws, all of it.
    fn gather<T>(
        first: T,
        jobs: &queue::Receiver<T>,
        gathering: Option<(std::time::Duration, LastBatch)>,
    ) -> Vec<T> {
        Gathering::new(first, jobs, gathering).collect()
    }

    /// A batch takes what is waiting, [`MAX_BATCH`] at most, and after a batch of one no
    /// more, however long the spacing: a lone writer never waits.
    #[test]
    fn a_batch_takes_what_waits_and_after_one_write_no_more() {
        let (send, jobs) = queue::bounded(1024);
        let long = std::time::Duration::from_secs(10);
        for i in 1..=MAX_BATCH + 10 {
            send.send(i).unwrap();
        }
        assert_eq!(gather(0, &jobs, None), (0..MAX_BATCH).collect::<Vec<_>>());
        let now = std::time::Instant::now();
        let after_one = Some((
            long,
            LastBatch {
                begun: now,
                held: 1,
            },
        ));
        assert_eq!(gather(0, &jobs, after_one).len(), 1 + 11);
        assert_eq!(gather(0, &jobs, after_one), [0]);
        assert!(now.elapsed() < long, "a batch after a batch of one waited");
    }

    /// The wait ends at the spacing after the last batch began, not after the call: a batch
    /// that began long ago lets the next take only what waits; and a sender gone ends it.
    #[test]
    fn a_batch_waits_only_until_the_spacing_after_the_last_began_or_the_senders_go() {
        let (send, jobs) = queue::bounded(1024);
        let spacing = std::time::Duration::from_secs(5);
        let called = std::time::Instant::now();
        let long_ago = called.checked_sub(2 * spacing).unwrap_or(called);
        let after_three_long_ago = Some((
            spacing,
            LastBatch {
                begun: long_ago,
                held: 3,
            },
        ));
        assert_eq!(gather(0, &jobs, after_three_long_ago), [0]);
        assert!(called.elapsed() < spacing, "waited past the spacing");
        // A deadline already past when the batch is made: its wait ended then, not when the
        // batch first looked (after its first write ran).
        let mut stale = Gathering::new(0, &jobs, after_three_long_ago);
        let made = std::time::Instant::now();
        assert_eq!(stale.by_ref().collect::<Vec<_>>(), [0]);
        assert!(stale.waited <= made);
        send.send(1).unwrap();
        drop(send);
        let after_three_now = Some((
            spacing,
            LastBatch {
                begun: std::time::Instant::now(),
                held: 3,
            },
        ));
        let called = std::time::Instant::now();
        assert_eq!(gather(0, &jobs, after_three_now), [0, 1]);
        assert!(
            called.elapsed() < spacing,
            "waited for a sender that was gone"
        );
    }

    /// Once as many came as the last batch held, the wait ends there (the next batch's
    /// spacing counts from that moment), and a write that comes while the batch runs joins it
    /// without a wait.
    #[test]
    fn a_batch_stops_waiting_once_held_and_takes_what_comes_while_it_runs() {
        let (send, jobs) = queue::bounded(1024);
        let long = std::time::Duration::from_secs(10);
        let begun = std::time::Instant::now();
        let mut batch = Gathering::new(0, &jobs, Some((long, LastBatch { begun, held: 2 })));
        assert_eq!(batch.next(), Some(0));
        send.send(1).unwrap();
        let second_sent = std::time::Instant::now();
        assert_eq!(batch.next(), Some(1));
        assert!(batch.wait.is_none() && batch.waited >= second_sent);
        let waited = batch.waited;
        send.send(2).unwrap();
        assert_eq!(batch.next(), Some(2));
        assert_eq!(batch.next(), None);
        assert_eq!(batch.held, 3);
        assert_eq!(batch.waited, waited);
        assert!(begun.elapsed() < long, "waited after the wait had ended");
    }

    /// A batch told to stop waiting (a transaction that did not begin) takes only what
    /// waits, and its wait ends then.
    #[test]
    fn a_batch_told_to_stop_waiting_takes_only_what_waits() {
        let (send, jobs) = queue::bounded(1024);
        let long = std::time::Duration::from_secs(10);
        let begun = std::time::Instant::now();
        send.send(1).unwrap();
        let mut batch = Gathering::new(0, &jobs, Some((long, LastBatch { begun, held: 3 })));
        let stopped = std::time::Instant::now();
        batch.stop_waiting();
        assert!(batch.waited >= stopped);
        assert_eq!(batch.by_ref().collect::<Vec<_>>(), [0, 1]);
        assert!(begun.elapsed() < long, "waited after being told to stop");
        drop(send);
    }

    /// After a batch of several writes, the next waits for as many (the first and two sent
    /// later here), and no longer than the spacing after the last began.
    #[test]
    fn a_batch_after_several_writes_waits_for_as_many_within_the_spacing() {
        let (send, jobs) = queue::bounded(1024);
        let long = std::time::Duration::from_secs(10);
        let later = std::thread::spawn(move || {
            // Sent late, so that a batch that did not wait would miss them (this test
            // passes whatever the delay; the delay only makes it catch a batch that does
            // not wait).
            std::thread::sleep(std::time::Duration::from_millis(20));
            send.send(1).unwrap();
            send.send(2).unwrap();
            send
        });
        let after_three = |spacing| {
            let begun = std::time::Instant::now();
            (begun, Some((spacing, LastBatch { begun, held: 3 })))
        };
        let (begun, gathering) = after_three(long);
        assert_eq!(gather(0, &jobs, gathering), [0, 1, 2]);
        assert!(begun.elapsed() < long, "waited past the last write");
        let send = later.join().unwrap();
        send.send(1).unwrap();
        let short = std::time::Duration::from_millis(20);
        let (begun, gathering) = after_three(short);
        assert_eq!(gather(0, &jobs, gathering), [0, 1]);
        let waited = begun.elapsed();
        assert!(short <= waited && waited < long, "{waited:?}");
    }

    /// A batch waiting for many is woken [`WAKE_STEP`] writes at a time, then for exactly the
    /// rest: it ends with the last write it waited for, not at the spacing. (Each write here
    /// is sent only once the writer sleeps on a count, and as many as it asked for.)
    #[test]
    fn a_batch_waiting_for_many_is_woken_a_few_at_a_time_then_at_the_last() {
        let (send, jobs) = queue::bounded(1024);
        let long = std::time::Duration::from_secs(10);
        let sender = std::thread::spawn(move || {
            let (mut asks, mut sent) = (Vec::new(), 1);
            while sent < 20 {
                let asked = send.asked();
                asks.push(asked);
                for _ in 0..asked {
                    send.send(sent).unwrap();
                    sent += 1;
                }
            }
            asks
        });
        let begun = std::time::Instant::now();
        let gathering = Some((long, LastBatch { begun, held: 20 }));
        assert_eq!(gather(0, &jobs, gathering), (0..20).collect::<Vec<_>>());
        assert!(begun.elapsed() < long, "waited past the last write");
        assert_eq!(sender.join().unwrap(), [WAKE_STEP, WAKE_STEP, 3]);
    }
}
