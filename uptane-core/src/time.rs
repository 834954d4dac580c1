//! The one date format TUF metadata uses: `YYYY-MM-DDTHH:MM:SSZ`, always UTC.

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// A point in time, UTC. The core never reads the clock: callers pass `now` in.
pub type UtcTime = DateTime<Utc>;

const FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// Parses `YYYY-MM-DDTHH:MM:SSZ` exactly (no fractions, no offsets, four-digit year).
pub fn parse_expires(text: &str) -> Option<UtcTime> {
    let b = text.as_bytes();
    let shape_ok = b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    NaiveDateTime::parse_from_str(text, FORMAT)
        .ok()
        .map(|n| n.and_utc())
}

/// Formats a time as TUF metadata writes it. Written out digit by digit: chrono's `format`
/// reads its pattern again on every call, 2% of the Director's CPU on a request that signs a
/// vehicle's metadata (`docs/BENCHMARKS.md`). A year outside 0000–9999 or a leap second
/// (which the format cannot state plainly) goes through chrono as before.
pub fn format_expires(time: &UtcTime) -> String {
    let year = time.year();
    if !(0..=9999).contains(&year) || time.nanosecond() >= 1_000_000_000 {
        return time.format(FORMAT).to_string();
    }
    let mut text = *b"0000-00-00T00:00:00Z";
    let fields = [
        (0, 4, year as u32),
        (5, 2, time.month()),
        (8, 2, time.day()),
        (11, 2, time.hour()),
        (14, 2, time.minute()),
        (17, 2, time.second()),
    ];
    for (at, width, mut value) in fields {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    String::from_utf8(text.to_vec()).expect("digits and separators are ASCII")
}

/// Seconds since 1970 as a time, refusing what TUF's date format cannot write (years before
/// 0000 or after 9999) instead of falling back to any default.
pub fn from_unix_seconds(seconds: i64) -> Result<UtcTime, TimeError> {
    DateTime::from_timestamp(seconds, 0)
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or(TimeError::Unrepresentable(seconds))
}

/// A time reading refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// No date corresponds to the reading.
    #[error("time {0} s since 1970 is not a date TUF metadata can state (years 0000 to 9999)")]
    Unrepresentable(i64),
    /// The reading is at or past the expiry of Director metadata that verifies at the time
    /// already trusted: the reading, not the metadata, is wrong.
    #[error(
        "time {} is at or past the expiry {} of the Director metadata that verifies at the trusted time {}: refused, the trusted time stays",
        format_expires(.time), format_expires(.expires), format_expires(.trusted)
    )]
    PastEvidence {
        /// The reading.
        time: UtcTime,
        /// The expiry of the Director metadata.
        expires: UtcTime,
        /// The time kept.
        trusted: UtcTime,
    },
}

/// What verified Director metadata says about the time (`docs/POUF.md`): the Director signed
/// it at `signed_at` and it stops being valid at `expires`; an operator's reset request, by
/// number, rides along (0: none ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// When the Director signed the per-vehicle targets.
    pub signed_at: Option<UtcTime>,
    /// The earliest expiry among the Director metadata verified.
    pub expires: UtcTime,
    /// The latest time reset the operator asked for this vehicle.
    pub reset: u64,
}

/// The time an ECU trusts (Uptane §5.4.2.2, §5.4.3.1): a floor that only moves to times the
/// Director's signed metadata corroborates, never to a bare clock reading, so a spoofed clock
/// jump is never kept and never passed on; and the number of the last operator reset applied.
///
/// The rule, one implementation for the Primary and both Secondary modes:
/// - verify at [`TrustedTime::at`] (the reading, never earlier than the floor);
/// - if that verifies, [`TrustedTime::corroborate`]: the floor becomes the latest of itself,
///   the time verified at, and the Director's signing time. It stays below the expiry of the
///   Director's current metadata, so the Director's next metadata always verifies at it;
/// - if it fails as expired while the reading is earlier than the floor, verify again at the
///   reading: if that verifies and the Director's signed metadata carries a reset newer than
///   the last applied, [`TrustedTime::reset`] lowers the floor (recovery after a bad forward
///   jump of the Director's own clock, an operator's authenticated action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedTime {
    /// The latest corroborated time.
    pub floor: UtcTime,
    /// The last reset applied.
    pub reset: u64,
}

impl TrustedTime {
    /// The time to verify at, given a clock reading: never earlier than the floor.
    pub fn at(&self, reading: UtcTime) -> UtcTime {
        reading.max(self.floor)
    }

    /// Metadata verified at `verified_at` (which the caller got from [`TrustedTime::at`]) with
    /// this evidence: the floor moves up to what is corroborated. `true` if it moved.
    pub fn corroborate(&mut self, verified_at: UtcTime, evidence: &Evidence) -> bool {
        let floor = self
            .floor
            .max(verified_at.min(evidence.expires))
            .max(evidence.signed_at.unwrap_or(self.floor));
        let moved = floor != self.floor;
        self.floor = floor;
        moved
    }

    /// A reading worth verifying again at after an expiry refusal: only one earlier than the
    /// floor (the floor may be the wrong one).
    pub fn recovery_reading(&self, reading: UtcTime) -> Option<UtcTime> {
        (reading < self.floor).then_some(reading)
    }

    /// Metadata verified at the earlier `reading` carries `evidence`: if it asks for a reset
    /// newer than the last applied, the floor goes back to the reading (or the Director's
    /// signing time, if later). `true` if it was applied.
    pub fn reset(&mut self, reading: UtcTime, evidence: &Evidence) -> bool {
        if evidence.reset <= self.reset {
            return false;
        }
        self.floor = reading.max(evidence.signed_at.unwrap_or(reading));
        self.reset = evidence.reset;
        true
    }

    /// A reading from another ECU (a Secondary's `PutTime`) that verification at the trusted
    /// time shows is past the Director's expiry.
    pub fn past_evidence(&self, time: UtcTime, evidence: &Evidence) -> Option<TimeError> {
        (time >= evidence.expires).then_some(TimeError::PastEvidence {
            time,
            expires: evidence.expires,
            trusted: self.floor,
        })
    }
}

pub(crate) fn serialize<S: Serializer>(time: &UtcTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_expires(time))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UtcTime, D::Error> {
    let text = String::deserialize(d)?;
    parse_expires(&text).ok_or_else(|| {
        serde::de::Error::custom(format!("expires {text:?} is not YYYY-MM-DDTHH:MM:SSZ"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn format_expires_writes_what_chrono_writes(
            seconds in -70_000_000_000i64..260_000_000_000,
            leap in any::<bool>(),
        ) {
            let time = DateTime::from_timestamp(seconds, if leap { 1_500_000_000 } else { 0 });
            if let Some(time) = time {
                prop_assert_eq!(format_expires(&time), time.format(FORMAT).to_string());
            }
        }
    }

    #[test]
    fn accepts_only_the_exact_format() {
        let t = parse_expires("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(format_expires(&t), "2030-01-02T03:04:05Z");
        for bad in [
            "2030-01-02T03:04:05",
            "2030-01-02T03:04:05.1Z",
            "2030-01-02 03:04:05Z",
            "2030-01-02T03:04:05+00:00",
            "12030-01-02T03:04:05Z",
            "2030-13-02T03:04:05Z",
            "2030-02-30T03:04:05Z",
        ] {
            assert!(parse_expires(bad).is_none(), "{bad}");
        }
    }

    fn t(text: &str) -> UtcTime {
        parse_expires(text).unwrap()
    }

    #[test]
    fn unrepresentable_seconds_are_refused_not_defaulted() {
        assert_eq!(from_unix_seconds(0).unwrap(), t("1970-01-01T00:00:00Z"));
        for bad in [i64::MAX, i64::MIN, 253_402_300_800 /* year 10000 */] {
            assert_eq!(from_unix_seconds(bad), Err(TimeError::Unrepresentable(bad)));
        }
    }

    fn evidence(signed_at: &str, expires: &str, reset: u64) -> Evidence {
        Evidence {
            signed_at: Some(t(signed_at)),
            expires: t(expires),
            reset,
        }
    }

    #[test]
    fn the_floor_moves_only_to_corroborated_times() {
        let mut trusted = TrustedTime {
            floor: t("2026-01-01T00:00:00Z"),
            reset: 0,
        };
        // A clock reading alone moves nothing; a jump far ahead is verified at, not kept.
        assert_eq!(
            trusted.at(t("3000-01-01T00:00:00Z")),
            t("3000-01-01T00:00:00Z")
        );
        assert_eq!(trusted.floor, t("2026-01-01T00:00:00Z"));
        // A clock behind the floor is read as the floor.
        assert_eq!(
            trusted.at(t("2020-01-01T00:00:00Z")),
            t("2026-01-01T00:00:00Z")
        );
        let e = evidence("2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z", 0);
        assert!(trusted.corroborate(t("2026-06-01T12:00:00Z"), &e));
        assert_eq!(trusted.floor, t("2026-06-01T12:00:00Z"));
        // A clock behind the Director's signing time takes the signing time.
        let mut behind = TrustedTime {
            floor: t("2026-01-01T00:00:00Z"),
            reset: 0,
        };
        assert!(behind.corroborate(t("2026-03-01T00:00:00Z"), &e));
        assert_eq!(behind.floor, t("2026-06-01T00:00:00Z"));
        // Never back.
        assert!(!trusted.corroborate(t("2026-01-05T00:00:00Z"), &e));
        assert_eq!(trusted.floor, t("2026-06-01T12:00:00Z"));
    }

    #[test]
    fn a_reading_past_the_evidence_is_refused_by_name() {
        let trusted = TrustedTime {
            floor: t("2026-06-01T00:00:00Z"),
            reset: 0,
        };
        let e = evidence("2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z", 0);
        assert_eq!(trusted.past_evidence(t("2026-06-01T23:00:00Z"), &e), None);
        let err = trusted
            .past_evidence(t("3000-01-01T00:00:00Z"), &e)
            .unwrap();
        assert_eq!(
            err,
            TimeError::PastEvidence {
                time: t("3000-01-01T00:00:00Z"),
                expires: t("2026-06-02T00:00:00Z"),
                trusted: t("2026-06-01T00:00:00Z"),
            }
        );
        assert!(err.to_string().contains("3000-01-01T00:00:00Z"), "{err}");
    }

    #[test]
    fn only_a_newer_reset_lowers_the_floor() {
        let mut trusted = TrustedTime {
            floor: t("2030-01-01T00:00:00Z"),
            reset: 1,
        };
        let reading = t("2026-06-01T12:00:00Z");
        assert_eq!(trusted.recovery_reading(reading), Some(reading));
        assert_eq!(trusted.recovery_reading(t("2031-01-01T00:00:00Z")), None);
        // A reset already applied (a replay of the metadata that carried it) changes nothing.
        let old = evidence("2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z", 1);
        assert!(!trusted.reset(reading, &old));
        assert_eq!(trusted.floor, t("2030-01-01T00:00:00Z"));
        let new = evidence("2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z", 2);
        assert!(trusted.reset(reading, &new));
        assert_eq!(
            trusted,
            TrustedTime {
                floor: reading,
                reset: 2
            }
        );
    }
}
