//! Two independent computations over one large document, on two cores when the document is
//! large enough to pay for a thread. A 10,000-target targets file is about 3 MiB: its
//! snapshot hash check, its canonical form and its typed reading each take several
//! milliseconds and need nothing from each other (issue 15: a refresh within 25 ms).
//!
//! No I/O and no shared state: each side is a pure function of its inputs, and the result is
//! the same as running them one after the other (which is what happens for small documents,
//! or when no thread can be started).

use std::sync::{Mutex, PoisonError};

/// Below this, a thread costs more than it saves.
pub(crate) const PARALLEL_BYTES: usize = 1 << 20;

/// Runs `a` and `b`, `a` on a scoped thread of its own when `len` is at least
/// [`PARALLEL_BYTES`]; a panic in either is passed on as it would be in sequence.
pub(crate) fn both<A: Send, B>(
    len: usize,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B,
) -> (A, B) {
    if len < PARALLEL_BYTES {
        return (a(), b());
    }
    // `a` stays here until a thread takes it: if no thread can be started, it runs below.
    let task = Mutex::new(Some(a));
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("uptane-core".into())
            .spawn_scoped(scope, || {
                let a = task.lock().unwrap_or_else(PoisonError::into_inner).take();
                a.map(|a| a())
            });
        let b = b();
        let ran = match spawned {
            Ok(handle) => match handle.join() {
                Ok(ran) => ran,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            Err(_) => None,
        };
        let a = match ran {
            Some(a) => a,
            None => {
                let a = task.lock().unwrap_or_else(PoisonError::into_inner).take();
                a.expect("a task that did not run on a thread is still here")()
            }
        };
        (a, b)
    })
}

/// Runs `check`, then `then` only if it passed; for a large document both at once, `check`'s
/// failure still reported first. What a check refuses (bytes that are not what a referrer
/// listed) is read only when both run at once, and then only to be dropped.
pub(crate) fn check_then<C: Send, E: Send, T>(
    len: usize,
    check: impl FnOnce() -> Result<C, E> + Send,
    then: impl FnOnce() -> T,
) -> Result<(C, T), E> {
    if len < PARALLEL_BYTES {
        let checked = check()?;
        return Ok((checked, then()));
    }
    let (checked, done) = both(len, check, then);
    Ok((checked?, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_run_once_whatever_the_size() {
        for len in [0, PARALLEL_BYTES] {
            let (a, b) = both(len, || len + 1, || len + 2);
            assert_eq!((a, b), (len + 1, len + 2));
        }
    }

    #[test]
    fn a_small_document_that_fails_its_check_is_not_read() {
        let mut read = false;
        let checked: Result<((), ()), &str> = check_then(10, || Err("mismatch"), || read = true);
        assert_eq!(checked, Err("mismatch"));
        assert!(!read);
        let checked: Result<((), bool), &str> =
            check_then(PARALLEL_BYTES, || Err("mismatch"), || true);
        assert_eq!(checked, Err("mismatch"));
    }

    #[test]
    fn a_panic_on_the_thread_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| both(PARALLEL_BYTES, || panic!("a"), || 1));
        assert!(caught.is_err());
    }
}
