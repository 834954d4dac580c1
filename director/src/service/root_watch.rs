//! The newest Director root's version, as the current-metadata path needs it on every request
//! without a database read.
//!
//! New roots are published by other processes (`director rotate-root`, `rotate-online`), so the
//! server cannot learn of them in memory. Each publication, once committed, writes 8 fresh
//! random bytes to a signal file beside the database (`director.db-root-signal`,
//! [`announce`]); a request reads those 8 bytes (one `pread`, no lock, no SQLite transaction)
//! and reads the roots table again only when they changed since its last read. The bytes are
//! only a hint that something changed: the version always comes from the database, so a torn
//! or forged signal costs one extra read, never a wrong answer. A publication whose signal
//! was lost (its process died after the commit; the file was replaced while the server runs,
//! which is logged) is still seen within [`FULL_CHECK_EVERY`], when the table is read again
//! regardless, and at once by a server that served the new root to a vehicle.
//!
//! Before this, each request asked SQLite whether the database had changed
//! (`PRAGMA data_version`): a read transaction, whose shared-memory locks cost two `fcntl`
//! calls and, with both cores asking, a contended mutex: a fifth of the server's time on
//! the current-metadata path (docs/BENCHMARKS.md).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sql::Conn;

use crate::error::DirectorError;

/// How long a publication whose signal was lost can go unseen.
pub const FULL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The signal file of the database at `db`.
pub fn signal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-root-signal");
    PathBuf::from(name)
}

/// Tells running servers on the database `conn` is connected to that a new root was committed.
/// Call after the commit. A failure is logged, not returned: the root is published either way,
/// and servers see it within [`FULL_CHECK_EVERY`].
pub fn announce(conn: &Conn) {
    // PostgreSQL: servers read the roots table at their full check.
    let Some(conn) = conn.as_sqlite() else {
        return;
    };
    let path = match conn.path() {
        Some("") => return,
        Some(db) => signal_path(Path::new(db)),
        None => {
            tracing::warn!(
                "the database's path is not UTF-8: running servers see the new root within a second"
            );
            return;
        }
    };
    let written = (|| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.write_all_at(&fresh()?, 0)
    })();
    if let Err(e) = written {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "could not signal the new root; running servers see it within a second"
        );
    }
}

/// A new signal: random, so that two publications never write the same one.
fn fresh() -> std::io::Result<[u8; 8]> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes)
}

/// The newest root's version, read from the database when the signal changed or
/// [`FULL_CHECK_EVERY`] passed.
#[derive(Debug)]
pub struct RootWatch {
    watched: Option<Watched>,
}

#[derive(Debug)]
struct Watched {
    signal: File,
    /// Where the signal is: a file put there after `signal` was opened (the old one removed)
    /// is one publishers write and this server does not read.
    signal_path: PathBuf,
    conn: Mutex<Conn>,
    /// The signal when `version` was read (published after `version`).
    seen: AtomicU64,
    version: AtomicU64,
    /// Milliseconds after `start` at which the table is read again regardless.
    due_ms: AtomicU64,
    /// Raised by [`RootWatch::served`]: a read of the table that began before it does not
    /// put the next one off.
    forced: AtomicU64,
    start: Instant,
    every: Duration,
    /// Whether the signal's trouble (unreadable, replaced) was logged.
    warned: AtomicBool,
}

impl RootWatch {
    /// Watches the database at `path` (`None`: an in-memory database, for which the watch has
    /// nothing to say).
    pub fn open(path: Option<&Path>) -> Result<Self, DirectorError> {
        Self::with_full_check(path, FULL_CHECK_EVERY)
    }

    /// [`RootWatch::open`], reading the table regardless every `every`.
    pub fn with_full_check(path: Option<&Path>, every: Duration) -> Result<Self, DirectorError> {
        let Some(path) = path else {
            return Ok(Self { watched: None });
        };
        let conn = crate::db::open_read_only(path)?;
        // Named as publishers name it: after SQLite's full name of the database file.
        let db_file = match conn.path() {
            Some(name) if !name.is_empty() => PathBuf::from(name),
            _ => path.to_path_buf(),
        };
        let signal_path = signal_path(&db_file);
        let signal = open_signal(&signal_path).map_err(|e| {
            DirectorError::Internal(format!("opening {}: {e}", signal_path.display()))
        })?;
        Ok(Self {
            watched: Some(Watched {
                signal,
                signal_path,
                conn: Mutex::new(Conn::sqlite(conn)),
                // Due at once: the first call reads the table.
                seen: AtomicU64::new(0),
                version: AtomicU64::new(0),
                due_ms: AtomicU64::new(0),
                forced: AtomicU64::new(0),
                start: Instant::now(),
                every,
                warned: AtomicBool::new(false),
            }),
        })
    }

    /// Root `version` was just read from the database and served: if it is newer than the
    /// one known, the next call reads the table (a vehicle that fetched a new root asks for
    /// its timestamp next, maybe before the publisher's signal was written).
    pub fn served(&self, version: u64) {
        if let Some(w) = &self.watched
            && version > w.version.load(Ordering::SeqCst)
        {
            w.forced.fetch_add(1, Ordering::SeqCst);
            w.due_ms.store(0, Ordering::SeqCst);
        }
    }

    /// The newest root's version (`None` for an in-memory database). A root whose
    /// publication (`announce` included) finished before this call began is seen.
    pub fn latest(&self) -> Result<Option<u64>, DirectorError> {
        let Some(w) = &self.watched else {
            return Ok(None);
        };
        let mut bytes = [0u8; 8];
        // A short or unreadable signal reads as changed: the table is read.
        let signal = match w.signal.read_exact_at(&mut bytes, 0) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => u64::MAX,
        };
        let now_ms = w.start.elapsed().as_millis() as u64;
        if let Some(version) = w.current(signal, now_ms) {
            return Ok(Some(version));
        }
        let conn = w
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another request read the table for this signal while this one waited.
        if let Some(version) = w.current(signal, now_ms) {
            return Ok(Some(version));
        }
        let forced = w.forced.load(Ordering::SeqCst);
        // Read after the signal: everything committed before it was written is seen.
        let version = super::rotation::latest_version(&conn)?;
        // Under the lock, so versions are stored in the order they were read (never down).
        w.version.store(version, Ordering::SeqCst);
        let every = u64::try_from(w.every.as_millis()).unwrap_or(u64::MAX);
        w.due_ms
            .store(now_ms.saturating_add(every), Ordering::SeqCst);
        // A root served meanwhile keeps its call for a read of the table.
        if w.forced.load(Ordering::SeqCst) != forced {
            w.due_ms.store(0, Ordering::SeqCst);
        }
        w.seen.store(signal, Ordering::Release);
        w.check_signal(signal);
        Ok(Some(version))
    }
}

impl Watched {
    /// The version known, if it is current for `signal` at `now_ms`.
    fn current(&self, signal: u64, now_ms: u64) -> Option<u64> {
        // Acquire pairs with the Release in `latest`: a matching `seen` brings its `version`.
        (signal == self.seen.load(Ordering::Acquire)
            && signal != u64::MAX
            && now_ms < self.due_ms.load(Ordering::SeqCst))
        .then(|| self.version.load(Ordering::SeqCst))
    }

    /// Logs, once, a signal this server cannot use: unreadable, or replaced by another file.
    /// New roots are then seen within [`FULL_CHECK_EVERY`] rather than at once.
    fn check_signal(&self, signal: u64) {
        use std::os::unix::fs::MetadataExt;
        let replaced = || {
            let (Ok(open), Ok(there)) =
                (self.signal.metadata(), std::fs::metadata(&self.signal_path))
            else {
                return true;
            };
            (open.dev(), open.ino()) != (there.dev(), there.ino())
        };
        let trouble = if signal == u64::MAX {
            Some("cannot be read")
        } else if replaced() {
            Some("was removed or replaced since the server started (restart it)")
        } else {
            None
        };
        if let Some(trouble) = trouble
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                path = %self.signal_path.display(),
                "the root signal {trouble}: new roots are seen within a second, not at once"
            );
        }
    }
}

/// Opens the signal to read it, creating it (with a first signal) if it is missing. Only
/// read: a signal made by another user (a publisher run with `sudo`) does not stop a server.
fn open_signal(path: &Path) -> std::io::Result<File> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(file) => file.write_all_at(&fresh()?, 0)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params;

    fn insert_root(conn: &Conn, version: u64) {
        conn.execute(
            "INSERT INTO roots (version, body) VALUES (?1, x'00')",
            params![version as i64],
        )
        .unwrap();
    }

    /// A root published by another connection (here standing for `director rotate-root`'s
    /// process) and announced is seen by the next call; one committed without its signal
    /// (a process that died in between) is not, until the full check is due.
    #[test]
    fn an_announced_root_is_seen_at_once_and_an_unannounced_one_at_the_full_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.db");
        drop(crate::db::Db::open(&path).unwrap());
        let other = Conn::sqlite(rusqlite::Connection::open(&path).unwrap());
        insert_root(&other, 1);
        let watch = RootWatch::with_full_check(Some(&path), Duration::from_secs(3600)).unwrap();
        assert_eq!(watch.latest().unwrap(), Some(1));
        for version in 2..=4 {
            insert_root(&other, version);
            announce(&other);
            assert_eq!(watch.latest().unwrap(), Some(version));
            assert_eq!(watch.latest().unwrap(), Some(version));
        }
        // Not announced: the signal is unchanged and the full check an hour away.
        insert_root(&other, 5);
        assert_eq!(watch.latest().unwrap(), Some(4));
        // The same watch with the full check always due sees it.
        let always = RootWatch::with_full_check(Some(&path), Duration::ZERO).unwrap();
        assert_eq!(always.latest().unwrap(), Some(5));
        insert_root(&other, 6);
        assert_eq!(always.latest().unwrap(), Some(6));
        // Not announced, but a vehicle was served it: seen by the next call.
        insert_root(&other, 7);
        assert_eq!(watch.latest().unwrap(), Some(4));
        watch.served(7);
        assert_eq!(watch.latest().unwrap(), Some(7));
        // A signal cut short reads as changed.
        insert_root(&other, 8);
        std::fs::write(signal_path(&path), b"").unwrap();
        assert_eq!(watch.latest().unwrap(), Some(8));
        assert_eq!(RootWatch::open(None).unwrap().latest().unwrap(), None);
    }
}
