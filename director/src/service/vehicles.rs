//! Vehicles and their ECUs: registration (by an operator or with a provisioning token),
//! the vehicle credential, the inventory records, and ECU replacement.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uptane_core::crypto::PublicKey;
use uptane_core::error::AttackKind;
use uptane_core::hash::sha256_hex;
use uptane_core::ids::{EcuSerial, HardwareId, Vin};
use uptane_core::manifest::InstalledImage;
use uptane_core::time::UtcTime;

use super::events::NewEvent;
use super::tokens::{self, random_token};
use super::{assignments, bad, exists, now_text};
use crate::error::DirectorError;

/// An ECU to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEcu {
    /// ECU serial, unique in the fleet.
    pub serial: EcuSerial,
    /// Hardware id.
    pub hardware_id: HardwareId,
    /// The ECU's public key, as a TUF key object.
    pub public_key: Value,
    /// Whether it is the vehicle's Primary (exactly one is).
    #[serde(default)]
    pub primary: bool,
}

/// A vehicle to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewVehicle {
    /// Vehicle identifier.
    pub vin: Vin,
    /// Its ECUs.
    pub ecus: Vec<NewEcu>,
}

fn check_key(serial: &str, key: &Value) -> Result<String, DirectorError> {
    let parsed =
        PublicKey::from_json(key.clone()).map_err(|e| bad(format!("ECU {serial}: {e}")))?;
    if let Some(why) = parsed.unusable_reason() {
        return Err(bad(format!("ECU {serial}: unusable key: {why}")));
    }
    Ok(serde_json::to_string(key).expect("a JSON value serializes"))
}

fn insert_ecu(tx: &Transaction<'_>, vin: &Vin, ecu: &NewEcu) -> Result<(), DirectorError> {
    let key = check_key(ecu.serial.as_str(), &ecu.public_key)?;
    let taken = exists(tx, "ecus", "serial", ecu.serial.as_str())?;
    if taken {
        return Err(DirectorError::Conflict(format!(
            "ECU {} is already registered",
            ecu.serial
        )));
    }
    tx.execute(
        "INSERT INTO ecus (serial, vin, hardware_id, public_key, is_primary) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            ecu.serial.as_str(),
            vin.as_str(),
            ecu.hardware_id.as_str(),
            key,
            ecu.primary
        ],
    )?;
    Ok(())
}

/// Registers a vehicle and its ECUs; returns the vehicle's credential (shown once).
pub fn register_vehicle(
    conn: &mut Connection,
    vehicle: &NewVehicle,
    actor: &str,
    now: UtcTime,
) -> Result<String, DirectorError> {
    let tx = conn.transaction()?;
    let credential = insert_vehicle(&tx, vehicle, actor, now)?;
    tx.commit()?;
    Ok(credential)
}

fn insert_vehicle(
    tx: &Transaction<'_>,
    vehicle: &NewVehicle,
    actor: &str,
    now: UtcTime,
) -> Result<String, DirectorError> {
    if vehicle.ecus.iter().filter(|e| e.primary).count() != 1 {
        return Err(bad("a vehicle has exactly one Primary ECU"));
    }
    let serials: BTreeSet<&str> = vehicle.ecus.iter().map(|e| e.serial.as_str()).collect();
    if serials.len() != vehicle.ecus.len() {
        return Err(bad("ECU serials must be unique"));
    }
    let credential = random_token("dvc")?;
    if exists(tx, "vehicles", "vin", vehicle.vin.as_str())? {
        return Err(DirectorError::Conflict(format!(
            "vehicle {} is already registered",
            vehicle.vin
        )));
    }
    tx.execute(
        "INSERT INTO vehicles (vin, credential_sha256, created_at) VALUES (?1, ?2, ?3)",
        params![
            vehicle.vin.as_str(),
            sha256_hex(credential.as_bytes()),
            now_text(now)
        ],
    )?;
    for ecu in &vehicle.ecus {
        insert_ecu(tx, &vehicle.vin, ecu)?;
    }
    let detail = format!(
        "{} ECUs: {}",
        vehicle.ecus.len(),
        serials.into_iter().collect::<Vec<_>>().join(", ")
    );
    NewEvent::info("vehicle_registered", actor, &detail)
        .vin(vehicle.vin.as_str())
        .record(tx, now)?;
    Ok(credential)
}

/// A Primary registers its vehicle with a provisioning token. The token is checked and a
/// one-time token used inside the registration's transaction, by a conditional update that
/// must change exactly one row: a crash cannot leave it unused after a registration, and no
/// two registrations can share it.
pub fn register_with_provisioning(
    conn: &mut Connection,
    token: &str,
    vehicle: &NewVehicle,
    now: UtcTime,
) -> Result<String, DirectorError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let refusal = match tokens::provisioning_token(&tx, token)? {
        None => Err((
            "unknown provisioning token".to_string(),
            "invalid provisioning token",
        )),
        Some(t) if t.revoked || (t.one_time && t.used) => Err((
            format!("token {:?} revoked or used", t.label),
            "provisioning token revoked or already used",
        )),
        Some(t) => Ok(t),
    };
    let stored = match refusal {
        Ok(stored) => stored,
        Err((detail, answer)) => {
            drop(tx);
            NewEvent::security("provisioning_refused", "vehicle", &detail)
                .vin(vehicle.vin.as_str())
                .record(conn, now)?;
            return Err(DirectorError::Unauthorized(answer.into()));
        }
    };
    let credential = insert_vehicle(&tx, vehicle, &format!("provisioning:{}", stored.label), now)?;
    if stored.one_time && !tokens::use_provisioning_token(&tx, token)? {
        return Err(DirectorError::Conflict(
            "provisioning token used concurrently".into(),
        ));
    }
    tx.commit()?;
    Ok(credential)
}

/// Which vehicle a credential belongs to; refuses other vehicles' resources.
pub fn authorize_vehicle(
    conn: &Connection,
    vin: &Vin,
    credential: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let owner: Option<String> = conn
        .query_row(
            "SELECT vin FROM vehicles WHERE credential_sha256 = ?1",
            [sha256_hex(credential.as_bytes())],
            |r| r.get(0),
        )
        .optional()?;
    match owner {
        None => Err(DirectorError::Unauthorized(
            "invalid vehicle credential".into(),
        )),
        Some(owner) if vin != owner.as_str() => {
            let actor = format!("vehicle:{owner}");
            let detail = format!("tried to access vehicle {vin}");
            NewEvent::security("cross_vehicle_access", &actor, &detail)
                .vin(&owner)
                .attack(AttackKind::WrongVehicle)
                .record(conn, now)?;
            Err(DirectorError::Forbidden(format!(
                "this credential belongs to another vehicle, not {vin}"
            )))
        }
        Some(_) => Ok(()),
    }
}

/// One ECU as the inventory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EcuRecord {
    /// Serial.
    pub serial: String,
    /// Hardware id.
    pub hardware_id: String,
    /// Whether it is the Primary.
    pub primary: bool,
    /// The ECU's public key.
    pub public_key: Value,
    /// What it last reported as installed.
    pub installed: Option<InstalledImage>,
    /// Its last report counter.
    pub last_report_counter: Option<u64>,
    /// When its last report arrived.
    pub last_report_at: Option<String>,
    /// Attacks its last report named.
    pub attacks_reported: Value,
}

/// A vehicle with its ECUs and assignments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VehicleRecord {
    /// VIN.
    pub vin: String,
    /// Registration time.
    pub created_at: String,
    /// ECUs.
    pub ecus: Vec<EcuRecord>,
    /// Assignments, newest first.
    pub assignments: Vec<assignments::AssignmentEcu>,
}

fn ecus_of(conn: &Connection, vin: &str) -> Result<Vec<EcuRecord>, DirectorError> {
    let mut stmt = conn.prepare_cached(
        "SELECT serial, hardware_id, is_primary, public_key, installed_filename, installed_length, installed_hashes,
                installed_release_counter, last_report_counter, last_report_at, attacks_reported
         FROM ecus WHERE vin = ?1 ORDER BY is_primary DESC, serial",
    )?;
    let rows = stmt.query_map([vin], |r| {
        let filename: Option<String> = r.get(4)?;
        let hashes: Option<String> = r.get(6)?;
        let installed = filename.map(|filename| InstalledImage {
            filename,
            length: r.get::<_, Option<i64>>(5).ok().flatten().unwrap_or(0) as u64,
            hashes: hashes
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_default(),
            release_counter: r.get::<_, i64>(7).unwrap_or(0) as u64,
        });
        let key: String = r.get(3)?;
        let attacks: Option<String> = r.get(10)?;
        Ok(EcuRecord {
            serial: r.get(0)?,
            hardware_id: r.get(1)?,
            primary: r.get(2)?,
            public_key: serde_json::from_str(&key).unwrap_or(Value::Null),
            installed,
            last_report_counter: r.get::<_, Option<i64>>(8)?.map(|c| c as u64),
            last_report_at: r.get(9)?,
            attacks_reported: attacks
                .and_then(|a| serde_json::from_str(&a).ok())
                .unwrap_or(json!([])),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A vehicle's record, or `NotFound`.
pub fn vehicle(conn: &Connection, vin: &Vin) -> Result<VehicleRecord, DirectorError> {
    let created_at: Option<String> = conn
        .query_row(
            "SELECT created_at FROM vehicles WHERE vin = ?1",
            [vin.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let created_at =
        created_at.ok_or_else(|| DirectorError::NotFound(format!("no vehicle {vin}")))?;
    Ok(VehicleRecord {
        vin: vin.to_string(),
        created_at,
        ecus: ecus_of(conn, vin.as_str())?,
        assignments: assignments::assignments(conn, Some(vin))?,
    })
}

/// Every VIN, in order.
pub fn vehicles(conn: &Connection, limit: u32) -> Result<Vec<String>, DirectorError> {
    let mut stmt = conn.prepare("SELECT vin FROM vehicles ORDER BY vin LIMIT ?1")?;
    let rows = stmt.query_map([limit], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Replacement of one ECU: an explicit, logged operator action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcuReplacement {
    /// Serial of the new ECU.
    pub serial: EcuSerial,
    /// Its hardware id.
    pub hardware_id: HardwareId,
    /// Its public key.
    pub public_key: Value,
}

/// Replaces ECU `old` of `vin` with a new one; its active assignments are cancelled.
pub fn replace_ecu(
    conn: &mut Connection,
    vin: &Vin,
    old: &EcuSerial,
    new: &EcuReplacement,
    actor: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let tx = conn.transaction()?;
    let primary: Option<bool> = tx
        .query_row(
            "SELECT is_primary FROM ecus WHERE serial = ?1 AND vin = ?2",
            params![old.as_str(), vin.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let primary = primary
        .ok_or_else(|| DirectorError::NotFound(format!("vehicle {vin} has no ECU {old}")))?;
    assignments::cancel_open_entries(&tx, old, "ECU replaced", now)?;
    tx.execute("DELETE FROM ecus WHERE serial = ?1", [old.as_str()])?;
    insert_ecu(
        &tx,
        vin,
        &NewEcu {
            serial: new.serial.clone(),
            hardware_id: new.hardware_id.clone(),
            public_key: new.public_key.clone(),
            primary,
        },
    )?;
    let detail = format!("{old} replaced by {}", new.serial);
    NewEvent::info("ecu_replaced", actor, &detail)
        .vin(vin.as_str())
        .ecu(Some(new.serial.as_str()))
        .record(&tx, now)?;
    tx.commit()?;
    Ok(())
}
