//! Vehicles and their ECUs: registration (by an operator or with a provisioning token),
//! the vehicle credential, the inventory records, and ECU replacement.

use std::collections::BTreeSet;

use crate::params;
use crate::sql::Conn;
use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use service_runtime::tls::Fingerprint;
use uptane_core::crypto::PublicKey;
use uptane_core::ids::{EcuSerial, HardwareId, Vin};
use uptane_core::manifest::InstalledImage;
use uptane_core::time::UtcTime;

use super::credentials::{self, IssuedCredential};
use super::events::NewEvent;
use super::page::Page;
use super::refusals::RefusalLog;
use super::tokens;
use super::{assignments, bad, exists};
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
    /// The client certificate to bind to it (an operator registering a vehicle whose
    /// Primary's certificate it knows). A Primary registering itself binds the certificate
    /// it shows on the connection instead, which proves it holds the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<Fingerprint>,
}

/// `key` parsed, if it is usable, with the text to store.
fn check_key(serial: &str, key: &Value) -> Result<(PublicKey, String), DirectorError> {
    let parsed =
        PublicKey::from_json(key.clone()).map_err(|e| bad(format!("ECU {serial}: {e}")))?;
    if let Some(why) = parsed.unusable_reason() {
        return Err(bad(format!("ECU {serial}: unusable key: {why}")));
    }
    let text = serde_json::to_string(key).expect("a JSON value serializes");
    Ok((parsed, text))
}

/// Whether the stored key `stored` (JSON text) and `new` are one key material.
fn same_key_material(stored: &str, new: &PublicKey) -> bool {
    let stored = serde_json::from_str(stored)
        .ok()
        .and_then(|json| PublicKey::from_json(json).ok())
        .and_then(|k| k.material());
    stored.is_some() && stored == new.material()
}

/// Registers `ecu` of vehicle `vin`; its key as parsed.
fn insert_ecu(tx: &Conn, vin: &Vin, ecu: &NewEcu) -> Result<PublicKey, DirectorError> {
    let (parsed, key) = check_key(ecu.serial.as_str(), &ecu.public_key)?;
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
    Ok(parsed)
}

/// Registers a vehicle and its ECUs, binding the certificate the body names; returns the
/// vehicle's credential (shown once), valid for `lifetime`.
pub fn register_vehicle(
    conn: &mut Conn,
    vehicle: &NewVehicle,
    lifetime: Duration,
    actor: &str,
    now: UtcTime,
) -> Result<IssuedCredential, DirectorError> {
    let tx = conn.savepoint()?;
    let credential = insert_vehicle(&tx, vehicle, vehicle.tls_fingerprint, lifetime, actor, now)?;
    tx.commit()?;
    Ok(credential)
}

fn insert_vehicle(
    tx: &Conn,
    vehicle: &NewVehicle,
    certificate: Option<Fingerprint>,
    lifetime: Duration,
    actor: &str,
    now: UtcTime,
) -> Result<IssuedCredential, DirectorError> {
    if vehicle.ecus.iter().filter(|e| e.primary).count() != 1 {
        return Err(bad("a vehicle has exactly one Primary ECU"));
    }
    let serials: BTreeSet<&str> = vehicle.ecus.iter().map(|e| e.serial.as_str()).collect();
    if serials.len() != vehicle.ecus.len() {
        return Err(bad("ECU serials must be unique"));
    }
    if exists(tx, "vehicles", "vin", vehicle.vin.as_str())? {
        return Err(DirectorError::Conflict(format!(
            "vehicle {} is already registered",
            vehicle.vin
        )));
    }
    let credential = credentials::insert(tx, &vehicle.vin, certificate, lifetime, now)?;
    for ecu in &vehicle.ecus {
        insert_ecu(tx, &vehicle.vin, ecu)?;
    }
    let bound = match certificate {
        Some(f) => format!("; client certificate {f} bound"),
        None => String::new(),
    };
    let detail = format!(
        "{} ECUs: {}{bound}",
        vehicle.ecus.len(),
        serials.into_iter().collect::<Vec<_>>().join(", ")
    );
    NewEvent::info("vehicle_registered", actor, &detail)
        .vin(vehicle.vin.as_str())
        .record(tx, now)?;
    Ok(credential)
}

/// A Primary registers its vehicle with a provisioning token, binding the client
/// certificate it showed on the connection (`certificate`), if any. The token is checked and
/// used inside the registration's transaction, by a conditional update that must change
/// exactly one row: a crash at any instant leaves either both the registration and the use
/// or neither, and no two registrations can share a one-time token.
/// A provisioning token refused: a security event (through the refusal log; the VIN of a
/// request whose token failed is not recorded), and the answer.
fn refuse_provisioning(
    conn: &Conn,
    refusal: &tokens::ProvisioningRefusal,
    now: UtcTime,
    log: &RefusalLog,
) -> DirectorError {
    let recorded = NewEvent::security("provisioning_refused", "vehicle", &refusal.detail())
        .record_refusal(conn, now, log);
    match recorded {
        Ok(()) => DirectorError::Unauthorized(refusal.answer().into()),
        Err(e) => e,
    }
}

/// Checks a provisioning token without using it, before the registration's body is read.
pub fn check_provisioning_token(
    conn: &Conn,
    token: &str,
    now: UtcTime,
    log: &RefusalLog,
) -> Result<(), DirectorError> {
    match tokens::check_provisioning_token(conn, token, now)? {
        Ok(_) => Ok(()),
        Err(refusal) => Err(refuse_provisioning(conn, &refusal, now, log)),
    }
}

pub fn register_with_provisioning(
    conn: &mut Conn,
    token: &str,
    vehicle: &NewVehicle,
    certificate: Option<Fingerprint>,
    lifetime: Duration,
    now: UtcTime,
    log: &RefusalLog,
) -> Result<IssuedCredential, DirectorError> {
    if vehicle
        .tls_fingerprint
        .is_some_and(|named| Some(named) != certificate)
    {
        return Err(bad(
            "a Primary registering itself binds the client certificate it shows on the \
             connection, not one named in the body",
        ));
    }
    // Inside the writer's batch, which holds the write lock: the token is used by this call
    // alone.
    let tx = conn.savepoint()?;
    let label = match tokens::use_provisioning_token(&tx, token, now)? {
        Ok(label) => label,
        Err(refusal) => {
            drop(tx);
            return Err(refuse_provisioning(conn, &refusal, now, log));
        }
    };
    let credential = insert_vehicle(
        &tx,
        vehicle,
        certificate,
        lifetime,
        &format!("provisioning:{label}"),
        now,
    )?;
    super::fault::point("registration-before-commit");
    tx.commit()?;
    Ok(credential)
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
    /// The time its last report stated (the latest time the ECU could verify).
    pub last_report_time: Option<String>,
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
    /// Attributes operators set (`director vehicle set-attribute`).
    pub attributes: std::collections::BTreeMap<String, String>,
    /// When its newest manifest arrived.
    pub last_manifest_at: Option<String>,
}

fn ecus_of(conn: &Conn, vin: &str) -> Result<Vec<EcuRecord>, DirectorError> {
    Ok(conn.query(
        "SELECT serial, hardware_id, is_primary, public_key, installed_filename, installed_length, installed_hashes,
                installed_release_counter, last_report_counter, last_report_at, attacks_reported,
                last_report_time
         FROM ecus WHERE vin = ?1 ORDER BY is_primary DESC, serial",
        params![vin],
        |r| {
        let filename: Option<String> = r.get(4)?;
        let hashes: Option<String> = r.get(6)?;
        let installed = filename.map(|filename| InstalledImage {
            filename,
            length: r.get::<Option<i64>>(5).ok().flatten().unwrap_or(0) as u64,
            hashes: hashes
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_default(),
            release_counter: r.get::<i64>(7).unwrap_or(0) as u64,
        });
        let key: String = r.get(3)?;
        let attacks: Option<String> = r.get(10)?;
        Ok(EcuRecord {
            serial: r.get(0)?,
            hardware_id: r.get(1)?,
            primary: r.get(2)?,
            public_key: serde_json::from_str(&key).unwrap_or(Value::Null),
            installed,
            last_report_counter: r.get::<Option<i64>>(8)?.map(|c| c as u64),
            last_report_at: r.get(9)?,
            last_report_time: r.get(11)?,
            attacks_reported: attacks
                .and_then(|a| serde_json::from_str(&a).ok())
                .unwrap_or(json!([])),
        })
        },
    )?)
}

/// A vehicle's record, or `NotFound`.
pub fn vehicle(conn: &Conn, vin: &Vin) -> Result<VehicleRecord, DirectorError> {
    let created_at: Option<String> = conn.query_opt(
        "SELECT created_at FROM vehicles WHERE vin = ?1",
        params![vin.as_str()],
        |r| r.get(0),
    )?;
    let created_at =
        created_at.ok_or_else(|| DirectorError::NotFound(format!("no vehicle {vin}")))?;
    Ok(VehicleRecord {
        vin: vin.to_string(),
        created_at,
        ecus: ecus_of(conn, vin.as_str())?,
        assignments: assignments::assignments(conn, Some(vin), Page::newest(Page::DEFAULT_LIMIT))?,
        attributes: super::groups::attributes(conn, vin.as_str())?,
        last_manifest_at: conn.query_opt(
            "SELECT received_at FROM manifests WHERE vin = ?1 ORDER BY id DESC LIMIT 1",
            params![vin.as_str()],
            |r| r.get(0),
        )?,
    })
}

/// A page of the registered vehicles, the newest first; with `search`, only those whose VIN
/// contains it (in any case).
pub fn vehicles(
    conn: &Conn,
    page: Page,
    search: Option<&str>,
) -> Result<Vec<VehicleSummary>, DirectorError> {
    let mut query = page.query(
        "SELECT rowid, vin, created_at FROM vehicles WHERE",
        "rowid",
        "created_at",
    );
    if let Some(search) = search {
        query = query.filter(
            "UPPER(vin) LIKE ? ESCAPE '\\'",
            super::page::like_pattern(&search.to_uppercase(), false),
        );
    }
    query.rows(conn, |r| {
        Ok(VehicleSummary {
            cursor: r.get(0)?,
            vin: r.get(1)?,
            registered_at: r.get(2)?,
        })
    })
}

/// One vehicle in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VehicleSummary {
    /// Where the next page starts (`before`).
    pub cursor: i64,
    /// The vehicle.
    pub vin: String,
    /// When it was registered.
    pub registered_at: String,
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
    conn: &mut Conn,
    vin: &Vin,
    old: &EcuSerial,
    new: &EcuReplacement,
    actor: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let tx = conn.savepoint()?;
    // A manifest of this vehicle being recorded on another replica (checked against the old
    // ECU's key) finishes first, or waits and is checked against the new inventory.
    tx.lock_row("vehicles", "vin", vin.as_str())?;
    type OldRow = (bool, String, Option<i64>, Option<String>);
    let row: Option<OldRow> = tx.query_opt(
        "SELECT is_primary, public_key, last_report_counter, last_report_time FROM ecus
         WHERE serial = ?1 AND vin = ?2",
        params![old.as_str(), vin.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let (primary, old_key, counter, last_time) =
        row.ok_or_else(|| DirectorError::NotFound(format!("vehicle {vin} has no ECU {old}")))?;
    assignments::cancel_open_entries(&tx, old, "ECU replaced", now)?;
    tx.execute("DELETE FROM ecus WHERE serial = ?1", params![old.as_str()])?;
    let new_key = insert_ecu(
        &tx,
        vin,
        &NewEcu {
            serial: new.serial.clone(),
            hardware_id: new.hardware_id.clone(),
            public_key: new.public_key.clone(),
            primary,
        },
    )?;
    // The same serial and the same key are the same unit, whose report counter goes on: it
    // keeps the last one accepted, which refuses a replay of its old reports once their
    // nonces are swept (`retention.rs`). A new key cannot sign the old reports.
    if new.serial == *old && same_key_material(&old_key, &new_key) {
        tx.execute(
            "UPDATE ecus SET last_report_counter = ?1, last_report_time = ?2 WHERE serial = ?3",
            params![counter, last_time, old.as_str()],
        )?;
    }
    let detail = format!("{old} replaced by {}", new.serial);
    NewEvent::info("ecu_replaced", actor, &detail)
        .vin(vin.as_str())
        .ecu(Some(new.serial.as_str()))
        .record(&tx, now)?;
    tx.commit()?;
    Ok(())
}
