//! The one date format TUF metadata uses: `YYYY-MM-DDTHH:MM:SSZ`, always UTC.

use chrono::{DateTime, NaiveDateTime, Utc};
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

/// Formats a time as TUF metadata writes it.
pub fn format_expires(time: &UtcTime) -> String {
    time.format(FORMAT).to_string()
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
}
