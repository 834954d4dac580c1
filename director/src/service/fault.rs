//! Test fault injection, compiled only with the cargo feature `fault-injection` (which the
//! end-to-end tests enable; a release build has no such hook). At a named point:
//! - `DIRECTOR_FAULT_CRASH_AT=<point>` aborts the process, as a power cut or `kill -9` would;
//! - `DIRECTOR_FAULT_STALL_AT=<point>` holds the writer there for `DIRECTOR_FAULT_STALL_MS`
//!   milliseconds (default 200), inside its transaction: what a slow disk or a busy database
//!   does, and what lets a test make two replicas' transactions overlap.
//!
//! Points: `registration-before-commit`, `manifest-before-commit` (after an accepted
//! manifest's nonces and counters are written), `metadata-before-store` (after the stored
//! versions are read, before new ones are written), `assignment-before-commit` (after an
//! assignment's entries are written), `renewal-before-authorize` (a credential renewal,
//! before it is authorized again under the vehicle's row lock).

/// Fault point `point`.
#[cfg(feature = "fault-injection")]
pub(crate) fn point(point: &str) {
    if std::env::var("DIRECTOR_FAULT_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("fault injection: aborting at {point}");
        std::process::abort();
    }
    if std::env::var("DIRECTOR_FAULT_STALL_AT").is_ok_and(|p| p == point) {
        let ms = std::env::var("DIRECTOR_FAULT_STALL_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(200);
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Without the `fault-injection` feature, there are no fault points.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn point(_point: &str) {}
