//! Attacks on time (docs/SECURITY.md, "Time"): a clock an attacker steers, on the vehicle
//! network or through the Primary's own clock source. Each is run against the running fleet;
//! each ends with the vehicle updating normally.

use uptane_core::time::{UtcTime, parse_expires};

use super::{Scenario, World, attacked, scenario};
use crate::forge::ForgingLink;

/// Year 3000, representable, and far past anything the Director signed.
const YEAR_3000: i64 = 32_503_680_000;
/// Ten years, the Primary's clock jump.
const TEN_YEARS: i64 = 10 * 365 * 86_400;

/// The attacks of this module, in the order run.
pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        scenario(
            "a Secondary is sent a time no date corresponds to (i64::MAX)",
            "the Primary-Secondary link with both ends' TLS keys, or the Primary itself",
            "refused by the Secondary (time_tampering); its trusted time and the vehicle's manifests unchanged",
            |w| forged_time(w, i64::MAX),
        ),
        scenario(
            "a Secondary is sent a time past the Director's signed expiry (year 3000)",
            "the Primary-Secondary link with both ends' TLS keys, or the Primary itself",
            "refused by the Secondary (time_tampering); its trusted time and the vehicle's manifests unchanged",
            |w| forged_time(w, YEAR_3000),
        ),
        scenario(
            "the Primary's clock jumps ten years ahead (a spoofed NTP answer, a bad RTC)",
            "the Primary's clock source",
            "refused (freeze); the jump is neither kept nor passed to a Secondary; updates once the clock is right",
            primary_clock_jump,
        ),
    ]
}

/// The time the first Secondary states in its reports, as the Director recorded it.
fn secondary_report_time(w: &World) -> Result<UtcTime, String> {
    let serial = &w.car.secondaries[0].serial;
    let vehicle = w.fleet.vehicle(super::VIN);
    let text = vehicle["ecus"]
        .as_array()
        .and_then(|ecus| ecus.iter().find(|e| e["serial"] == serial.as_str()))
        .and_then(|e| e["last_report_time"].as_str())
        .ok_or_else(|| format!("no report time recorded for {serial}: {vehicle}"))?
        .to_string();
    parse_expires(&text).ok_or_else(|| format!("report time {text:?}"))
}

fn forged_time(w: &mut World, unix_seconds: i64) -> Result<String, String> {
    let since = w.last_event();
    let real = w.car.secondaries[0].real_addr();
    let (fake, link) = ForgingLink::start(&real, &w.car.link_keys(0));
    link.forge_time(unix_seconds);
    let verdict = attacked(
        w,
        |w| {
            w.release(&[1]);
            w.car.secondaries[0].link.set_target(&fake);
        },
        "time_tampering",
    )?;
    let refused = w.security_events_since(since);
    if refused.iter().any(|e| e == "manifest_refused") {
        return Err(format!(
            "the Director refused the vehicle's manifest: {refused:?}"
        ));
    }
    let stated = secondary_report_time(w)?;
    let now = UtcTime::from(std::time::SystemTime::now());
    if stated > now + chrono::Duration::days(2) {
        return Err(format!("the Secondary now states {stated}"));
    }
    Ok(format!("{verdict}; the Secondary still states {stated}"))
}

fn primary_clock_jump(w: &mut World) -> Result<String, String> {
    let state = w.car.primary_dir.join("state.json");
    let trusted = || -> Result<UtcTime, String> {
        let bytes = std::fs::read(&state).map_err(|e| e.to_string())?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let text = value["latest_time"].as_str().unwrap_or_default();
        parse_expires(text).ok_or_else(|| format!("state.json latest_time {text:?}"))
    };
    let before = w.installed();
    let since = w.last_event();
    w.release(&[0, 1, 2]);
    w.car.set_clock_offset_secs(TEN_YEARS);
    let (code, summary) = w.cycle();
    w.car.set_clock_offset_secs(0);
    let verdict = super::refused(w, &before, since, "attack_reported:freeze")
        .map_err(|e| format!("{e} (cycle {code}: {summary})"))?;
    let kept = trusted()?;
    let now = UtcTime::from(std::time::SystemTime::now());
    if kept > now + chrono::Duration::days(2) {
        return Err(format!("the Primary kept the jump: it now trusts {kept}"));
    }
    let stated = secondary_report_time(w)?;
    if stated > now + chrono::Duration::days(2) {
        return Err(format!("the jump reached a Secondary: it states {stated}"));
    }
    Ok(format!(
        "{verdict}; the Primary still trusts {kept}, the Secondary states {stated}; {}",
        w.recover()?
    ))
}
