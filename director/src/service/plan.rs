//! The typed parts of a rollout plan, each parsed from the text an operator writes and shown
//! back in the same form: names, shares (`5%`), waves (`1%`, `group:pilots`), soak times
//! (`10m`) and maintenance windows (`mon-fri 01:00-05:00`, in the vehicle's time zone).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uptane_core::time::UtcTime;

/// The serde form of a type written as text: `TryFrom<String>` through its `FromStr`, and
/// back to `String` through its `Display`.
macro_rules! string_form {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                text.parse()
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.to_string()
            }
        }
    };
}

/// A group's or a campaign's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, so it is safe in a URL
/// path and a table cell.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let ok = (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(text))
        } else {
            Err(format!(
                "{text:?} is not a name: 1 to 64 letters, digits, '.', '_' or '-'"
            ))
        }
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Self::try_from(text.to_string())
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A share of a whole, in hundredths of a percent (`5%` is 500, `0.5%` is 50).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Share(u32);

impl Share {
    /// All of it.
    pub const ALL: Share = Share(10_000);

    /// `ceil(self × count)`: the members a wave of this share reaches, at least one of any
    /// non-empty whole when the share is not zero.
    pub fn of(self, count: u64) -> u64 {
        (count * u64::from(self.0)).div_ceil(10_000)
    }

    /// Whether `part` of `whole` is more than this share.
    pub fn exceeded_by(self, part: u64, whole: u64) -> bool {
        part * 10_000 > u64::from(self.0) * whole
    }
}

impl FromStr for Share {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a share: write a percentage such as 5% or 0.5%");
        let number = text.trim().strip_suffix('%').ok_or_else(bad)?;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty()
            || fraction.len() > 2
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
            || whole.len() > 3
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let fraction: u32 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
        let share = whole * 100 + fraction;
        if share > 10_000 {
            return Err(format!("{text:?} is more than 100%"));
        }
        Ok(Share(share))
    }
}

string_form!(Share);

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 % 100 {
            0 => write!(f, "{}%", self.0 / 100),
            cents if cents % 10 == 0 => write!(f, "{}.{}%", self.0 / 100, cents / 10),
            cents => write!(f, "{}.{cents:02}%", self.0 / 100),
        }
    }
}

/// One wave of a campaign: a share of the target group (cumulative: `10%` then `50%` means
/// the second wave brings the total to half), or the members of another group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Wave {
    /// Up to this share of the target group, picked at random.
    Share(Share),
    /// The target group's members that are also in this group.
    Group(Name),
}

impl FromStr for Wave {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().strip_prefix("group:") {
            Some(group) => Ok(Wave::Group(group.parse()?)),
            None => Ok(Wave::Share(text.parse()?)),
        }
    }
}

string_form!(Wave);

impl fmt::Display for Wave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wave::Share(share) => share.fmt(f),
            Wave::Group(group) => write!(f, "group:{group}"),
        }
    }
}

/// Checks a list of waves: at least one, at most 20, shares rising.
pub fn check_waves(waves: &[Wave]) -> Result<(), String> {
    if waves.is_empty() || waves.len() > 20 {
        return Err("a campaign has 1 to 20 waves".into());
    }
    let mut last = None;
    for wave in waves {
        if let Wave::Share(share) = wave {
            if *share == Share(0) {
                return Err("a wave of 0% reaches nobody".into());
            }
            if last.is_some_and(|l| l >= *share) {
                return Err(format!(
                    "wave shares are cumulative and must rise: {share} comes after {}",
                    last.unwrap_or(Share(0))
                ));
            }
            last = Some(*share);
        }
    }
    Ok(())
}

/// A duration written `90s`, `10m`, `2h`, `1d` or `0`.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration: write 0, 90s, 10m, 2h or 1d");
    if text == "0" {
        return Ok(0);
    }
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number
        .checked_mul(unit)
        .filter(|secs| *secs <= 365 * 86_400)
        .ok_or_else(|| format!("{text:?} is longer than a year"))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A weekly maintenance window in the vehicle's local time: on the named days, from `start`
/// to `end` (minutes after midnight); a window whose end is not after its start ends the
/// next day (`22:00-04:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    /// Bit `d` for weekday `d` (0 = Monday).
    days: u8,
    start: u16,
    end: u16,
}

impl Window {
    /// Whether local time `minute` (after midnight) of weekday `day` (0 = Monday) is inside.
    pub fn contains(&self, day: u8, minute: u16) -> bool {
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.start < self.end {
            on(day) && (self.start..self.end).contains(&minute)
        } else {
            (on(day) && minute >= self.start) || (on((day + 6) % 7) && minute < self.end)
        }
    }
}

fn parse_days(text: &str) -> Result<u8, String> {
    if text == "daily" {
        return Ok(0x7f);
    }
    let day = |name: &str| {
        DAYS.iter()
            .position(|d| *d == name)
            .map(|i| i as u8)
            .ok_or_else(|| format!("{name:?} is not a day: mon, tue, … sun, or daily"))
    };
    let mut days = 0u8;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    days |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days |= 1 << day(part)?,
        }
    }
    Ok(days)
}

fn parse_minute(text: &str) -> Result<u16, String> {
    let bad = || format!("{text:?} is not a time: write HH:MM, 00:00 to 24:00");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl FromStr for Window {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (days, times) = text.trim().split_once(' ').ok_or_else(|| {
            format!("{text:?} is not a window: write DAYS HH:MM-HH:MM, e.g. mon-fri 01:00-05:00")
        })?;
        let (start, end) = times
            .trim()
            .split_once('-')
            .ok_or_else(|| format!("{times:?} is not a time range: write HH:MM-HH:MM"))?;
        let (start, end) = (parse_minute(start)?, parse_minute(end)?);
        if start == end {
            return Err(format!("{text:?} opens and closes at the same time"));
        }
        let (start, end) = if end == 24 * 60 {
            (start, 0)
        } else {
            (start, end)
        };
        if start == 24 * 60 {
            return Err(format!(
                "{text:?} opens at 24:00: write 00:00 of the next day"
            ));
        }
        Ok(Window {
            days: parse_days(&days.to_ascii_lowercase())?,
            start,
            end,
        })
    }
}

string_form!(Window);

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = (0..7)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| DAYS[d])
            .collect();
        let days = if days.len() == 7 {
            "daily".to_string()
        } else {
            days.join(",")
        };
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let end = if self.end == 0 {
            "24:00".to_string()
        } else {
            hm(self.end)
        };
        write!(f, "{days} {}-{end}", hm(self.start))
    }
}

/// A vehicle's time zone (its `timezone` attribute: an IANA name such as `Europe/Berlin`, or
/// UTC when it has none).
#[derive(Debug, Clone)]
pub struct Zone(jiff::tz::TimeZone);

impl Zone {
    /// UTC.
    pub fn utc() -> Self {
        Zone(jiff::tz::TimeZone::UTC)
    }

    /// The zone named `name` in this machine's time zone database.
    pub fn named(name: &str) -> Result<Self, String> {
        jiff::tz::TimeZone::get(name)
            .map(Zone)
            .map_err(|_| format!("{name:?} is not a time zone this Director knows (an IANA name such as Europe/Berlin)"))
    }

    /// Whether `now` falls inside one of `windows` in this zone; always, when there are none.
    pub fn open(&self, windows: &[Window], now: UtcTime) -> bool {
        if windows.is_empty() {
            return true;
        }
        let Ok(at) = jiff::Timestamp::from_second(now.timestamp()) else {
            return false;
        };
        let local = at.to_zoned(self.0.clone());
        let day = local.weekday().to_monday_zero_offset() as u8;
        let minute = (local.hour() as u16) * 60 + local.minute() as u16;
        windows.iter().any(|w| w.contains(day, minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_read_and_print_as_percentages() {
        for (text, shown) in [
            ("5%", "5%"),
            ("0.5%", "0.5%"),
            ("0.05%", "0.05%"),
            ("100%", "100%"),
            ("12.25%", "12.25%"),
        ] {
            assert_eq!(text.parse::<Share>().unwrap().to_string(), shown);
        }
        for bad in ["5", "101%", "-1%", "1.234%", "%", "abc%", "1000%"] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
        let ten: Share = "10%".parse().unwrap();
        assert_eq!(ten.of(20), 2);
        assert_eq!(ten.of(21), 3);
        assert_eq!("1%".parse::<Share>().unwrap().of(20), 1);
        assert!(ten.exceeded_by(3, 20));
        assert!(!ten.exceeded_by(2, 20));
    }

    #[test]
    fn waves_rise_and_name_groups() {
        let waves: Vec<Wave> = ["group:pilots", "10%", "50%", "100%"]
            .iter()
            .map(|w| w.parse().unwrap())
            .collect();
        assert!(check_waves(&waves).is_ok());
        assert_eq!(waves[0].to_string(), "group:pilots");
        let falling: Vec<Wave> = ["50%", "10%"].iter().map(|w| w.parse().unwrap()).collect();
        assert!(check_waves(&falling).unwrap_err().contains("must rise"));
        assert!(check_waves(&[]).is_err());
        assert!("group:no/slash".parse::<Wave>().is_err());
    }

    #[test]
    fn windows_hold_their_days_and_cross_midnight() {
        let w: Window = "mon-fri 01:00-05:00".parse().unwrap();
        assert_eq!(w.to_string(), "mon,tue,wed,thu,fri 01:00-05:00");
        assert!(w.contains(0, 60));
        assert!(!w.contains(0, 300));
        assert!(!w.contains(5, 120));
        let night: Window = "sat 22:00-04:00".parse().unwrap();
        assert!(night.contains(5, 23 * 60));
        assert!(night.contains(6, 3 * 60));
        assert!(!night.contains(5, 3 * 60));
        let wrap: Window = "fri-mon 00:00-24:00".parse().unwrap();
        assert!(wrap.contains(6, 0) && wrap.contains(0, 1439) && !wrap.contains(1, 10));
        for bad in [
            "mon",
            "mon 01:00",
            "xyz 01:00-02:00",
            "mon 01:00-01:00",
            "mon 25:00-26:00",
            "mon 1:00-2:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_window_opens_in_the_vehicles_zone() {
        let window: Window = "daily 02:00-03:00".parse().unwrap();
        let at = |text: &str| -> UtcTime { text.parse().unwrap() };
        let utc = Zone::utc();
        assert!(utc.open(&[window], at("2026-12-04T02:30:00Z")));
        assert!(!utc.open(&[window], at("2026-12-04T01:30:00Z")));
        // Berlin is UTC+1 in December: 02:30 there is 01:30 UTC.
        let berlin = Zone::named("Europe/Berlin").unwrap();
        assert!(berlin.open(&[window], at("2026-12-04T01:30:00Z")));
        assert!(!berlin.open(&[window], at("2026-12-04T02:30:00Z")));
        assert!(Zone::named("Mars/Olympus").is_err());
        assert!(utc.open(&[], at("2026-12-04T12:00:00Z")));
    }

    #[test]
    fn durations_and_names() {
        assert_eq!(parse_duration_secs("10m").unwrap(), 600);
        assert_eq!(parse_duration_secs("0").unwrap(), 0);
        assert!(parse_duration_secs("10").is_err());
        assert!(parse_duration_secs("400d").is_err());
        assert!("pilot-fleet_1.a".parse::<Name>().is_ok());
        assert!("has space".parse::<Name>().is_err());
        assert!("".parse::<Name>().is_err());
    }
}
