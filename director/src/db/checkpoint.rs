//! Checkpoints of the SQLite write-ahead log on disk, kept out of the writer's commits.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that leaves the log at 1,000 pages
//! or more, on the connection that committed. On the Director that is the writer, so every
//! write of that batch, already done, waited for its answer while the whole log was copied
//! into the database and both files were synced: 17% of the writer's time in the
//! signed-first row, with every request of the batch waiting (`docs/BENCHMARKS.md`, "The
//! write-ahead log copied off the writer").
//!
//! Here a thread of its own, on a connection of its own, copies the log (a PASSIVE
//! checkpoint: it neither blocks the writer nor waits for it) once a commit leaves 1,000
//! pages in it. The writer then copies, between two batches, what was committed while that
//! ran, which leaves the log fully copied, so its next transaction writes the log from its
//! beginning again (SQLite restarts a log only then, and only if no reader is still in it,
//! as with its own checkpoints). Should that thread stop, the writer checkpoints inside its
//! commit as SQLite would, once the log holds [`BACKSTOP_PAGES`]. The log's file keeps the
//! largest size it reached, as SQLite's does without a `journal_size_limit`.

use std::ffi::c_int;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use super::DbError;

/// Pages in the log after a commit that start a checkpoint: SQLite's own default.
const CHECKPOINT_PAGES: c_int = 1_000;

/// Pages in the log after a commit at which the writer checkpoints inside the commit, as
/// SQLite would: the checkpoint thread is gone, or still copying (then this one finds it
/// busy and copies nothing), or readers kept the log from starting again.
const BACKSTOP_PAGES: c_int = 8 * CHECKPOINT_PAGES;

/// What the writer keeps of the checkpoints: shared with its commit hook and with the
/// checkpoint thread.
#[derive(Debug, Clone, Default)]
pub(super) struct Checkpoints {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The thread was woken and the writer has not yet finished after it: commits do not
    /// wake it again meanwhile (a second checkpoint of the few pages committed during the
    /// first, with its two syncs, while the writer's would be refused as busy).
    woken: AtomicBool,
    /// The thread finished a checkpoint since the writer last finished one.
    passed: AtomicBool,
    /// Pages in the log after the writer's last commit.
    pages: AtomicI32,
    /// Checkpoints the thread finished.
    passes: AtomicU64,
    /// Checkpoints the writer ran inside a commit ([`BACKSTOP_PAGES`]).
    in_commit: AtomicU64,
    /// The thread's checkpoints that failed (warned at the 1st, 2nd, 4th, 8th, ...).
    failures: AtomicU64,
}

/// What the checkpoints of this process did so far (`/metrics`, `docs/METRICS.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointCounts {
    /// Checkpoints the thread finished.
    pub passes: u64,
    /// Checkpoints the writer ran inside a commit, the log at [`BACKSTOP_PAGES`]: the thread
    /// is gone or could not keep up, or readers kept the log from starting again.
    pub in_commit: u64,
    /// The thread's checkpoints that failed, or found another connection checkpointing.
    pub failures: u64,
}

impl Checkpoints {
    /// What the checkpoints did so far.
    pub(super) fn counts(&self) -> CheckpointCounts {
        CheckpointCounts {
            passes: self.shared.passes.load(Ordering::Relaxed),
            in_commit: self.shared.in_commit.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
        }
    }

    /// Starts the checkpoint thread on a connection of its own to the database at `path`,
    /// and has `writer`'s commits wake it.
    pub(super) fn start(path: &Path, writer: &mut rusqlite::Connection) -> Result<Self, DbError> {
        let conn = rusqlite::Connection::open(path)?;
        // FULL: the database file is synced before the log is started again. This statement
        // also reads the schema, which opens the log: a connection that has not would find
        // no log to copy and report (-1, -1) each time.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let checkpoints = Self::default();
        // One wake-up waiting at most: commits that find one waiting add nothing.
        let (wake, wakes) = std::sync::mpsc::sync_channel::<()>(1);
        let shared = Arc::clone(&checkpoints.shared);
        std::thread::Builder::new()
            .name("director-db-checkpoint".into())
            .spawn(move || {
                // Ends when the writer's connection, and the hook that wakes it, is gone.
                while wakes.recv().is_ok() {
                    match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                        Ok((log, _)) if log >= 0 => {
                            shared.passes.fetch_add(1, Ordering::Relaxed);
                            shared.passed.store(true, Ordering::Release);
                        }
                        // The next commit at 1,000 pages or more tries again.
                        failed => {
                            shared.woken.store(false, Ordering::Release);
                            let n = shared.failures.fetch_add(1, Ordering::Relaxed) + 1;
                            match failed {
                                // Another process (a `director` command) or another handle
                                // on the same file is checkpointing it.
                                Err(e) if is_busy(&e) => {}
                                _ if !n.is_power_of_two() => {}
                                Err(e) => tracing::warn!(
                                    "a checkpoint of the write-ahead log failed ({n} so far): {e}"
                                ),
                                Ok(_) => tracing::warn!(
                                    "a checkpoint found no write-ahead log to copy ({n} so far)"
                                ),
                            }
                        }
                    }
                }
            })
            .map_err(|e| DbError::Join(format!("cannot start the checkpoint thread: {e}")))?;
        checkpoints.hook(writer, Some(wake))?;
        Ok(checkpoints)
    }

    /// Replaces SQLite's automatic checkpoint on `writer` with a hook that wakes the thread
    /// (`wake`, none: no thread) and, past [`BACKSTOP_PAGES`], checkpoints itself.
    fn hook(
        &self,
        writer: &mut rusqlite::Connection,
        wake: Option<std::sync::mpsc::SyncSender<()>>,
    ) -> Result<(), DbError> {
        let shared = Arc::clone(&self.shared);
        writer.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
            shared.pages.store(pages, Ordering::Relaxed);
            if pages >= BACKSTOP_PAGES {
                // As SQLite's own hook does: the transaction is committed whatever this does,
                // so a failure is not the commit's.
                if wal.checkpoint().is_ok() {
                    shared.in_commit.fetch_add(1, Ordering::Relaxed);
                }
            } else if pages >= CHECKPOINT_PAGES
                && let Some(wake) = &wake
                && !shared.woken.swap(true, Ordering::AcqRel)
                && let Err(std::sync::mpsc::TrySendError::Disconnected(())) = wake.try_send(())
            {
                // Said once: `woken` stays set, so this is not reached again.
                tracing::error!(
                    "the checkpoint thread is gone: the writer copies the write-ahead log inside its commits, at {BACKSTOP_PAGES} pages"
                );
            }
            Ok(())
        }))?;
        Ok(())
    }

    /// Between two batches, on the writer: if the thread finished a checkpoint, copies what
    /// was committed while it ran, so that the next transaction starts the log again.
    pub(super) fn finish(&self, writer: &rusqlite::Connection) {
        if !self.shared.passed.swap(false, Ordering::Acquire) {
            return;
        }
        // Busy only while another process or handle checkpoints the same file.
        if let Err(e) = writer.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)
            && !is_busy(&e)
        {
            tracing::warn!("a checkpoint of the write-ahead log failed: {e}");
        }
        // A log that did not start again (a reader was in it) wakes the thread at the next
        // commit.
        self.shared.woken.store(false, Ordering::Release);
    }

    /// Pages in the log after the writer's last commit.
    #[cfg(test)]
    fn pages(&self) -> c_int {
        self.shared.pages.load(Ordering::Relaxed)
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use crate::sql::Conn;

    /// Commits `rows` rows of 8,000 bytes (two pages and more each) through the writer.
    async fn write(db: &Db, rows: usize) {
        db.call(move |conn: &mut Conn| {
            for _ in 0..rows {
                conn.run("INSERT INTO scratch VALUES (randomblob(8000))")?;
            }
            Ok::<_, DbError>(())
        })
        .await
        .unwrap();
    }

    /// `db`'s checkpoints, with a commit hook that never wakes the thread.
    fn never_woken(db: &Db) -> Checkpoints {
        let checkpoints = db.checkpoints.clone().expect("on disk");
        db.call_blocking(|conn: &mut Conn| {
            let writer = conn.as_sqlite_mut().expect("SQLite");
            checkpoints.hook(writer, None)
        })
        .unwrap();
        checkpoints
    }

    /// Returns once the writer has finished its last batch, after its answers: it holds the
    /// connection until then.
    fn after_the_batch(db: &Db) {
        db.call_blocking(|_| Ok::<_, DbError>(())).unwrap();
    }

    fn scratch(db: &Db) {
        db.call_blocking(|conn| conn.run("CREATE TABLE scratch (b BLOB)"))
            .unwrap();
    }

    /// A log past 1,000 pages is copied by the thread, not in the writer's commit, and the
    /// writer's next transactions start it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_thread_copies_the_log_and_the_writer_starts_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("director.db")).unwrap();
        scratch(&db);
        let checkpoints = db.checkpoints.clone().expect("on disk");
        while checkpoints.pages() < CHECKPOINT_PAGES {
            write(&db, 100).await;
        }
        // The thread's checkpoint, woken by that commit (bounded: 30 s).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while db.checkpoint_counts().expect("on disk").passes == 0 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Each small write ends a batch, where the writer copies the rest; one of the next
        // starts the log again (bounded: the thread may be copying when the writer tries).
        let mut restarted = false;
        for _ in 0..100 {
            write(&db, 1).await;
            if checkpoints.pages() < CHECKPOINT_PAGES / 10 {
                restarted = true;
                break;
            }
        }
        assert!(
            restarted,
            "the log was not started again: {} pages",
            checkpoints.pages()
        );
        let counts = db.checkpoint_counts().expect("on disk");
        assert!(
            counts.passes >= 1 && counts.in_commit == 0 && counts.failures == 0,
            "{counts:?}"
        );
    }

    /// A copy that could not take the whole log (here a reader held it back; in service,
    /// commits made while the thread copied) is completed by the writer after its next
    /// batch, and the log then starts again from its beginning; until then it only grows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_copies_what_the_thread_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("director.db");
        let db = Db::open(&path).unwrap();
        scratch(&db);
        // The thread is not woken: this test copies in its place.
        let checkpoints = never_woken(&db);
        let count = |conn: &rusqlite::Connection| {
            conn.query_row("SELECT count(*) FROM scratch", [], |r| r.get::<_, i64>(0))
                .unwrap()
        };
        write(&db, 100).await;
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        assert_eq!(count(&reader), 100);
        write(&db, 100).await;
        let other = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(count(&other), 200);
        let (log, copied) = other
            .wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)
            .unwrap();
        assert!(0 < copied && copied < log, "{copied} of {log} pages copied");
        reader.execute_batch("COMMIT").unwrap();
        // Not all copied: the log is not started again.
        write(&db, 1).await;
        assert!(checkpoints.pages() > log, "{} pages", checkpoints.pages());
        // The writer answers a batch before it looks at `passed`: set after it has looked, or
        // that batch's end would copy the rest and the next write would start the log again.
        after_the_batch(&db);
        checkpoints.shared.passed.store(true, Ordering::Release);
        write(&db, 1).await;
        assert!(checkpoints.pages() > log, "{} pages", checkpoints.pages());
        // The writer copied the rest after that batch: this one starts the log again.
        write(&db, 1).await;
        assert!(checkpoints.pages() < 10, "{} pages", checkpoints.pages());
    }

    /// With no thread to copy it, the writer checkpoints inside its commit once the log
    /// holds [`BACKSTOP_PAGES`], and the log starts again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_thread_the_writer_keeps_the_log_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("director.db")).unwrap();
        scratch(&db);
        let checkpoints = never_woken(&db);
        let mut most = 0;
        for _ in 0..60 {
            write(&db, 100).await;
            most = most.max(checkpoints.pages());
        }
        let counts = db.checkpoint_counts().expect("on disk");
        assert!(counts.in_commit >= 1 && counts.passes == 0, "{counts:?}");
        // A commit adds about 300 pages: the one that passes the backstop is the last.
        assert!(most < BACKSTOP_PAGES + 400, "{most} pages");
    }
}
