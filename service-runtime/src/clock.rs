//! The wall clock the servers sign by and judge expiry, credentials and tokens against: one
//! reading of the system clock for all of them.
//!
//! In a build with the cargo feature `fault-injection` (the tests', `fleet-sim hil`'s and
//! `fleet-sim attacks`'; `cargo build --release` leaves it out, docs/SECURITY.md "Time"),
//! `UPTANE_FAULT_CLOCK_OFFSET_SECS=<seconds>` moves
//! it by that many seconds, so that a test can run a server months ahead without waiting for
//! them (the vehicle parked for 400 days, `fleet-sim hil`). TLS certificates are still
//! judged by the real clock: the offset moves Uptane's time only.

use uptane_core::time::UtcTime;

/// The environment variable of the test clock offset.
pub const FAULT_OFFSET_ENV: &str = "UPTANE_FAULT_CLOCK_OFFSET_SECS";

#[cfg(feature = "fault-injection")]
static OFFSET: std::sync::OnceLock<chrono::Duration> = std::sync::OnceLock::new();

/// Reads the test clock offset once, refusing a value that is not a whole number of seconds a
/// clock can be off by; a program calls it before it reads the clock.
#[cfg(feature = "fault-injection")]
pub fn init() -> anyhow::Result<()> {
    let Ok(text) = std::env::var(FAULT_OFFSET_ENV) else {
        return Ok(());
    };
    let offset = parse_offset(&text)?;
    if OFFSET.get_or_init(|| offset) != &offset {
        anyhow::bail!("{FAULT_OFFSET_ENV} changed while the program ran");
    }
    tracing::warn!(
        offset_secs = offset.num_seconds(),
        "fault injection: the clock is read {} seconds off",
        offset.num_seconds()
    );
    Ok(())
}

/// Without the `fault-injection` feature the clock is the system's, and says so when asked
/// to be moved.
#[cfg(not(feature = "fault-injection"))]
pub fn init() -> anyhow::Result<()> {
    if std::env::var_os(FAULT_OFFSET_ENV).is_some() {
        tracing::warn!("{FAULT_OFFSET_ENV} is set and ignored: this is not a test build");
    }
    Ok(())
}

/// The current time.
pub fn now() -> UtcTime {
    let now = UtcTime::from(std::time::SystemTime::now());
    #[cfg(feature = "fault-injection")]
    let now = now + OFFSET.get().copied().unwrap_or_default();
    now
}

/// `text` as an offset: whole seconds, within what a clock can be off by (about 292 billion
/// years) and what a date can hold.
pub fn parse_offset(text: &str) -> anyhow::Result<chrono::Duration> {
    let seconds: i64 = text.trim().parse().map_err(|_| {
        anyhow::anyhow!("{FAULT_OFFSET_ENV}={text:?} is not a whole number of seconds")
    })?;
    let offset = chrono::Duration::try_seconds(seconds)
        .ok_or_else(|| anyhow::anyhow!("{FAULT_OFFSET_ENV}={seconds} is out of range"))?;
    if !within_dates(offset) {
        anyhow::bail!("{FAULT_OFFSET_ENV}={seconds} is past any date");
    }
    Ok(offset)
}

/// `seconds` as a clock offset, if a clock can be off by that much: a duration, and one that
/// keeps the current time a date (the Primary's `--fault-clock-offset-secs` too).
pub fn offset_of(seconds: i64) -> Option<chrono::Duration> {
    chrono::Duration::try_seconds(seconds).filter(|offset| within_dates(*offset))
}

fn within_dates(offset: chrono::Duration) -> bool {
    UtcTime::from(std::time::SystemTime::now())
        .checked_add_signed(offset)
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_whole_seconds_within_any_date() {
        assert_eq!(parse_offset("86400").unwrap(), chrono::Duration::days(1));
        assert_eq!(parse_offset("-60").unwrap(), chrono::Duration::minutes(-1));
        for bad in [
            "",
            "1.5",
            "a day",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            let error = parse_offset(bad).unwrap_err().to_string();
            assert!(error.contains(FAULT_OFFSET_ENV), "{bad:?}: {error}");
        }
        assert!(
            parse_offset("9000000000000")
                .unwrap_err()
                .to_string()
                .contains("past any date")
        );
    }
}
