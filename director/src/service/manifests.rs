//! Vehicle version manifests (Uptane §5.4.2.1; Director §5.3.2.1): checked by
//! `uptane_core::manifest::check_vehicle_manifest` against the inventory, then recorded.

use std::collections::BTreeMap;

use serde::Serialize;
use uptane_core::crypto::PublicKey;
use uptane_core::error::AttackKind;
use uptane_core::ids::{EcuSerial, Vin};
use uptane_core::manifest::{
    CheckedManifest, InstallResult, InventoryEcu, ManifestError, VehicleInventory,
    check_vehicle_manifest,
};
use uptane_core::time::{UtcTime, format_expires, parse_expires};

use super::assignments::{self, AssignmentStatus};
use super::events::NewEvent;
use super::refusals::RefusalLog;
use super::{Policy, now_text};
use crate::error::DirectorError;
use crate::params;
use crate::sql::Conn;

/// What an accepted manifest changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestOutcome {
    /// The stored manifest's id.
    pub manifest_id: i64,
    /// Assignment entries now installed.
    pub installed: Vec<String>,
    /// Assignment entries now failed.
    pub failed: Vec<String>,
    /// Assignment entries now cancelled (an operator's cancel the ECU carried out).
    pub cancelled: Vec<String>,
    /// Attacks the ECUs reported.
    pub attacks_reported: usize,
    /// Their kinds, for the metrics.
    #[serde(skip)]
    pub attack_kinds: Vec<uptane_core::error::AttackKind>,
    /// ECUs the Primary could not reach this time.
    pub unreachable: Vec<String>,
}

/// An ECU's inventory row as stored: key, whether it is the Primary, last report counter
/// and time.
type InventoryRow = (String, String, bool, Option<i64>, Option<String>);

/// The vehicle's inventory rows, as stored.
fn inventory_rows(conn: &Conn, vin: &Vin) -> Result<Vec<InventoryRow>, DirectorError> {
    Ok(conn.query(
        "SELECT serial, public_key, is_primary, last_report_counter, last_report_time FROM ecus WHERE vin = ?1 ORDER BY serial",
        params![vin.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?)
}

/// The vehicle as its inventory rows describe it, for the manifest checks (each ECU key
/// decoded: the costly part, done only when a check runs).
fn inventory(vin: &Vin, rows: &[InventoryRow]) -> Result<VehicleInventory, DirectorError> {
    let mut ecus = BTreeMap::new();
    for (serial, key, primary, counter, last_time) in rows {
        let unreadable =
            |what: &str| DirectorError::Internal(format!("ECU {serial}: stored {what} unreadable"));
        let key = serde_json::from_str(key)
            .ok()
            .and_then(|k| PublicKey::from_json(k).ok())
            .ok_or_else(|| unreadable("key"))?;
        let id = EcuSerial::new(serial.as_str()).map_err(|_| unreadable("serial"))?;
        let last_time = last_time
            .as_ref()
            .map(|t| parse_expires(t).ok_or_else(|| unreadable("report time")))
            .transpose()?;
        ecus.insert(
            id,
            InventoryEcu {
                key,
                primary: *primary,
                last_counter: counter.map(|c| c as u64),
                last_time,
            },
        );
    }
    Ok(VehicleInventory {
        vin: vin.clone(),
        ecus,
    })
}

/// A manifest checked against the inventory as it was read (`rows`), not yet recorded.
#[derive(Debug)]
pub struct Checked {
    vin: Vin,
    body: Vec<u8>,
    rows: Vec<InventoryRow>,
    result: Result<CheckedManifest, ManifestError>,
}

/// Verifies a vehicle version manifest (parsing, every signature, nonces, counters and
/// times) against the inventory. Only reads: it runs on a read connection, beside other
/// requests, so the signature checks are not serialized behind the writer.
pub fn check(
    conn: &Conn,
    vin: &Vin,
    body: Vec<u8>,
    policy: &Policy,
    now: UtcTime,
) -> Result<Checked, DirectorError> {
    let rows = inventory_rows(conn, vin)?;
    let result = check_against(conn, &inventory(vin, &rows)?, &body, policy, now)?;
    Ok(Checked {
        vin: vin.clone(),
        body,
        rows,
        result,
    })
}

fn check_against(
    conn: &Conn,
    inventory: &VehicleInventory,
    body: &[u8],
    policy: &Policy,
    now: UtcTime,
) -> Result<Result<CheckedManifest, ManifestError>, DirectorError> {
    Ok(check_vehicle_manifest(
        body,
        inventory,
        now,
        policy.clock_skew,
        |ecu, nonce| {
            conn.value::<bool>(
                "SELECT EXISTS(SELECT 1 FROM seen_nonces WHERE ecu_serial = ?1 AND nonce = ?2)",
                params![ecu.as_str(), nonce],
            )
        },
    )?)
}

/// Records a checked manifest (on the writer): an accepted one updates installed images and
/// assignment outcomes, a refused one is logged as a security event naming the attack. If
/// the vehicle's ECUs reported or changed since the check (another manifest of the same
/// vehicle recorded in between), the check runs again here, so no nonce or counter is
/// accepted twice.
pub fn record(
    conn: &mut Conn,
    checked: Checked,
    policy: &Policy,
    now: UtcTime,
    log: &RefusalLog,
) -> Result<ManifestOutcome, DirectorError> {
    let Checked {
        vin,
        body,
        rows,
        mut result,
    } = checked;
    // Another replica may record a manifest of this vehicle at the same time: it waits here,
    // and the inventory read next includes what it recorded (its nonces, its counters).
    conn.lock_row("vehicles", "vin", vin.as_str())?;
    let current = inventory_rows(conn, &vin)?;
    if current != rows {
        result = check_against(conn, &inventory(&vin, &current)?, &body, policy, now)?;
    }
    match result {
        Ok(checked) => record_manifest(conn, &vin, &body, &checked, now),
        Err(refusal) => Err(refused(conn, &vin, refusal, now, log)),
    }
}

/// [`check`] then [`record`] on one connection.
pub fn process_manifest(
    conn: &mut Conn,
    vin: &Vin,
    bytes: &[u8],
    policy: &Policy,
    now: UtcTime,
    log: &RefusalLog,
) -> Result<ManifestOutcome, DirectorError> {
    let checked = check(conn, vin, bytes.to_vec(), policy, now)?;
    record(conn, checked, policy, now, log)
}

fn refused(
    conn: &Conn,
    vin: &Vin,
    refusal: ManifestError,
    now: UtcTime,
    log: &RefusalLog,
) -> DirectorError {
    let actor = format!("vehicle:{vin}");
    let detail = refusal.to_string();
    let logged = NewEvent::security("manifest_refused", &actor, &detail)
        .vin(vin.as_str())
        .ecu(refusal.ecu().map(EcuSerial::as_str))
        .attack(refusal.attack())
        .record_refusal(conn, now, log);
    match logged {
        Ok(()) => DirectorError::ManifestRefused(refusal),
        Err(e) => e,
    }
}

/// How an ECU's report closes one of its open entries, if it does: the image running closes
/// it installed; the ECU's own result for it (its `last_install` naming the entry's
/// correlation id) failed, rolled back or cancelled closes it so. An entry an operator
/// cancelled after delivery is closed cancelled by the ECU's word that it abandoned it, or,
/// once the vehicle fetched targets without it, by a report that says nothing of it (the ECU
/// never started it); the image running closes it installed, saying the cancel came too late.
fn entry_outcome(
    entry: &assignments::AssignmentEcu,
    running: bool,
    last_install: Option<&uptane_core::manifest::LastInstall>,
) -> Option<(AssignmentStatus, String)> {
    let own = last_install.filter(|l| l.correlation_id == entry.correlation_id);
    let cancel = entry.cancel_requested_at.as_deref();
    Some(match (running, own, cancel) {
        (true, _, None) => (AssignmentStatus::Installed, String::new()),
        (true, _, Some(at)) => (
            AssignmentStatus::Installed,
            format!("the cancel requested at {at} came too late: the ECU had installed it"),
        ),
        (false, Some(last), Some(at)) if last.result == InstallResult::Cancelled => (
            AssignmentStatus::Cancelled,
            format!(
                "cancelled by operator at {at}; the ECU abandoned it: {}",
                last.detail
            ),
        ),
        (false, Some(last), _) if last.result.is_failure() => (
            AssignmentStatus::Failed,
            format!("{}: {}", last.result, last.detail),
        ),
        (false, None, Some(at)) if entry.withdrawn_at.is_some() => (
            AssignmentStatus::Cancelled,
            format!("cancelled by operator at {at}; the ECU had not started it"),
        ),
        _ => return None,
    })
}

/// Records an accepted manifest in one transaction: the manifest, every nonce, what each
/// ECU runs, the attacks it reported, and the outcome of its assignment.
fn record_manifest(
    conn: &mut Conn,
    vin: &Vin,
    bytes: &[u8],
    checked: &CheckedManifest,
    now: UtcTime,
) -> Result<ManifestOutcome, DirectorError> {
    let vin_text = vin.as_str();
    let tx = conn.savepoint()?;
    // Statements are prepared once per connection (`Conn::execute`).
    let manifest_id: i64 = tx.value(
        "INSERT INTO manifests (vin, received_at, body) VALUES (?1, ?2, ?3) RETURNING id",
        params![vin_text, now_text(now), bytes],
    )?;
    let actor = format!("vehicle:{vin}");
    let mut outcome = ManifestOutcome {
        manifest_id,
        installed: Vec::new(),
        failed: Vec::new(),
        cancelled: Vec::new(),
        attacks_reported: 0,
        attack_kinds: Vec::new(),
        unreachable: checked
            .unreachable
            .keys()
            .map(ToString::to_string)
            .collect(),
    };
    for went_back in &checked.times_went_back {
        NewEvent::security("report_time_went_back", &actor, &went_back.to_string())
            .vin(vin_text)
            .ecu(Some(went_back.ecu.as_str()))
            .attack(AttackKind::TimeTampering)
            .record(&tx, now)?;
    }
    for (serial, reason) in &checked.unreachable {
        NewEvent::info("ecu_unreachable", &actor, reason)
            .vin(vin_text)
            .ecu(Some(serial.as_str()))
            .record(&tx, now)?;
    }
    let active = assignments::active_entries(&tx, vin_text)?;
    for report in &checked.reports {
        let serial = report.ecu_serial.as_str();
        let image = &report.installed_image;
        tx.execute(
            "INSERT INTO seen_nonces (ecu_serial, nonce, seen_at) VALUES (?1, ?2, ?3)",
            params![serial, report.nonce, now_text(now)],
        )?;
        tx.execute(
            "UPDATE ecus SET installed_filename = ?1, installed_length = ?2, installed_hashes = ?3, installed_release_counter = ?4,
                    last_report_counter = ?5, last_report_at = ?6, attacks_reported = ?7,
                    last_report_time = ?9 WHERE serial = ?8",
            params![
                image.filename,
                image.length as i64,
                serde_json::to_string(&image.hashes).expect("hashes serialize"),
                image.release_counter as i64,
                report.report_counter as i64,
                now_text(now),
                serde_json::to_string(&report.attacks_detected).expect("attacks serialize"),
                serial,
                format_expires(&report.latest_time)
            ],
        )?;
        for attack in &report.attacks_detected {
            outcome.attacks_reported += 1;
            outcome.attack_kinds.push(attack.kind);
            NewEvent::security(
                &format!("attack_reported:{}", attack.kind),
                &actor,
                &attack.detail,
            )
            .vin(vin_text)
            .ecu(Some(serial))
            .attack(attack.kind)
            .record(&tx, now)?;
        }
        for entry in active.iter().filter(|e| e.ecu_serial == serial) {
            let matches = image.is(&entry.filename, entry.length, &entry.hashes);
            let Some((status, detail)) =
                entry_outcome(entry, matches, report.last_install.as_ref())
            else {
                continue;
            };
            assignments::set_outcome(&tx, &entry.correlation_id, serial, status, &detail, now)?;
            let what = format!("{} on {serial}: {status} {detail}", entry.correlation_id);
            let kind = format!("assignment_{status}");
            let event = if status == AssignmentStatus::Failed {
                NewEvent::security(&kind, &actor, what.trim())
            } else {
                NewEvent::info(&kind, &actor, what.trim())
            };
            event.vin(vin_text).ecu(Some(serial)).record(&tx, now)?;
            let closed = format!("{}:{serial}", entry.correlation_id);
            match status {
                AssignmentStatus::Installed => outcome.installed.push(closed),
                AssignmentStatus::Cancelled => outcome.cancelled.push(closed),
                _ => outcome.failed.push(closed),
            }
        }
    }
    super::fault::point("manifest-before-commit");
    tx.commit()?;
    Ok(outcome)
}
