//! The Director's rules, as functions over a SQLite connection: registration, assignments,
//! per-vehicle signed metadata, and vehicle version manifests. Handlers stay thin; every
//! multi-row write happens in one transaction.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uptane_core::crypto::PublicKey;
use uptane_core::hash::{Hashes, sha256_hex};
use uptane_core::manifest::{
    EcuVersionReport, InstalledImage, VehicleVersionManifest, verify_ecu_report,
    verify_vehicle_manifest,
};
use uptane_core::metadata::TargetFile;
use uptane_core::sign::{RootBuilder, SnapshotBuilder, TargetsBuilder, TimestampBuilder, describe};
use uptane_core::time::{UtcTime, format_expires, parse_expires};
use uptane_core::uptane::{director_target_custom, director_targets_custom};
use uptane_core::verify::{Raw, Verified};

use crate::error::DirectorError;
use crate::keys::OnlineKeys;

/// Timing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of per-vehicle targets, snapshot and timestamp (short: a day by default).
    pub metadata_lifetime: Duration,
    /// Re-sign when the metadata would expire within this.
    pub renew_margin: Duration,
    /// How far in the future a report's time may be.
    pub clock_skew: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            metadata_lifetime: Duration::days(1),
            renew_margin: Duration::hours(1),
            clock_skew: Duration::minutes(5),
        }
    }
}

fn bad(message: impl Into<String>) -> DirectorError {
    DirectorError::BadRequest(message.into())
}

/// Checks an identifier (VIN, ECU serial, hardware id): 1 to 64 characters of
/// `A-Z a-z 0-9 . _ : -`.
pub fn check_id(kind: &str, id: &str) -> Result<(), DirectorError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid {kind} {id:?}: 1-64 characters of A-Z a-z 0-9 . _ : -"
        )))
    }
}

/// Whether `table` has a row whose `column` is `value` (both names are literals of this module).
fn exists(conn: &Connection, table: &str, column: &str, value: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(&format!(
        "SELECT EXISTS(SELECT 1 FROM {table} WHERE {column} = ?1)"
    ))?
    .query_row([value], |r| r.get(0))
}

fn random_token(prefix: &str) -> Result<String, DirectorError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| DirectorError::Internal(format!("random: {e}")))?;
    Ok(format!("{prefix}_{}", hex::encode(secret)))
}

fn now_text(now: UtcTime) -> String {
    format_expires(&now)
}

/// Appends an event to the log.
#[allow(clippy::too_many_arguments)] // one column each; a struct would only rename them
pub fn record_event(
    conn: &Connection,
    now: UtcTime,
    kind: &str,
    security: bool,
    vin: Option<&str>,
    ecu: Option<&str>,
    actor: &str,
    detail: &str,
) -> Result<(), DirectorError> {
    if security {
        tracing::warn!(kind, vin, ecu, actor, detail, "security event");
    }
    conn.execute(
        "INSERT INTO events (at, kind, severity, vin, ecu_serial, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![now_text(now), kind, if security { "security" } else { "info" }, vin, ecu, actor, detail],
    )?;
    Ok(())
}

// ---------------------------------------------------------------- tokens

/// Creates an operator API token; returns it (only its hash is stored).
pub fn create_api_token(
    conn: &Connection,
    label: &str,
    now: UtcTime,
) -> Result<String, DirectorError> {
    let token = random_token("dat")?;
    conn.execute(
        "INSERT INTO api_tokens (sha256, label, created_at) VALUES (?1, ?2, ?3)",
        params![sha256_hex(token.as_bytes()), label, now_text(now)],
    )?;
    record_event(
        conn,
        now,
        "api_token_created",
        false,
        None,
        None,
        "cli",
        label,
    )?;
    Ok(token)
}

/// The label of a valid operator token.
pub fn check_api_token(conn: &Connection, token: &str) -> Result<String, DirectorError> {
    conn.query_row(
        "SELECT label FROM api_tokens WHERE sha256 = ?1 AND revoked = 0",
        [sha256_hex(token.as_bytes())],
        |row| row.get(0),
    )
    .optional()?
    .ok_or_else(|| DirectorError::Unauthorized("invalid API token".into()))
}

/// Creates a provisioning token (one-time or fleet-wide) with which Primaries register.
pub fn create_provisioning_token(
    conn: &Connection,
    label: &str,
    one_time: bool,
    actor: &str,
    now: UtcTime,
) -> Result<String, DirectorError> {
    let token = random_token("dpt")?;
    conn.execute(
        "INSERT INTO provisioning_tokens (sha256, label, one_time, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![sha256_hex(token.as_bytes()), label, one_time, now_text(now)],
    )?;
    record_event(
        conn,
        now,
        "provisioning_token_created",
        false,
        None,
        None,
        actor,
        label,
    )?;
    Ok(token)
}

/// Revokes every provisioning token with `label`; returns how many.
pub fn revoke_provisioning_tokens(
    conn: &Connection,
    label: &str,
    actor: &str,
    now: UtcTime,
) -> Result<usize, DirectorError> {
    let n = conn.execute(
        "UPDATE provisioning_tokens SET revoked = 1 WHERE label = ?1 AND revoked = 0",
        [label],
    )?;
    if n == 0 {
        return Err(DirectorError::NotFound(format!(
            "no active provisioning token labelled {label:?}"
        )));
    }
    record_event(
        conn,
        now,
        "provisioning_token_revoked",
        false,
        None,
        None,
        actor,
        label,
    )?;
    Ok(n)
}

// ---------------------------------------------------------------- vehicles

/// An ECU to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEcu {
    /// ECU serial, unique in the fleet.
    pub serial: String,
    /// Hardware id.
    pub hardware_id: String,
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
    pub vin: String,
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

fn insert_ecu(tx: &Transaction<'_>, vin: &str, ecu: &NewEcu) -> Result<(), DirectorError> {
    check_id("ECU serial", &ecu.serial)?;
    check_id("hardware id", &ecu.hardware_id)?;
    let key = check_key(&ecu.serial, &ecu.public_key)?;
    let taken = exists(tx, "ecus", "serial", &ecu.serial)?;
    if taken {
        return Err(DirectorError::Conflict(format!(
            "ECU {} is already registered",
            ecu.serial
        )));
    }
    tx.execute(
        "INSERT INTO ecus (serial, vin, hardware_id, public_key, is_primary) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![ecu.serial, vin, ecu.hardware_id, key, ecu.primary],
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
    check_id("VIN", &vehicle.vin)?;
    if vehicle.ecus.iter().filter(|e| e.primary).count() != 1 {
        return Err(bad("a vehicle has exactly one Primary ECU"));
    }
    let serials: BTreeSet<&str> = vehicle.ecus.iter().map(|e| e.serial.as_str()).collect();
    if serials.len() != vehicle.ecus.len() {
        return Err(bad("ECU serials must be unique"));
    }
    let credential = random_token("dvc")?;
    let tx = conn.transaction()?;
    if exists(&tx, "vehicles", "vin", &vehicle.vin)? {
        return Err(DirectorError::Conflict(format!(
            "vehicle {} is already registered",
            vehicle.vin
        )));
    }
    tx.execute(
        "INSERT INTO vehicles (vin, credential_sha256, created_at) VALUES (?1, ?2, ?3)",
        params![
            vehicle.vin,
            sha256_hex(credential.as_bytes()),
            now_text(now)
        ],
    )?;
    for ecu in &vehicle.ecus {
        insert_ecu(&tx, &vehicle.vin, ecu)?;
    }
    let detail = format!(
        "{} ECUs: {}",
        vehicle.ecus.len(),
        serials.into_iter().collect::<Vec<_>>().join(", ")
    );
    record_event(
        &tx,
        now,
        "vehicle_registered",
        false,
        Some(&vehicle.vin),
        None,
        actor,
        &detail,
    )?;
    tx.commit()?;
    Ok(credential)
}

/// A Primary registers its vehicle with a provisioning token.
pub fn register_with_provisioning(
    conn: &mut Connection,
    token: &str,
    vehicle: &NewVehicle,
    now: UtcTime,
) -> Result<String, DirectorError> {
    let digest = sha256_hex(token.as_bytes());
    let row: Option<(String, bool, bool, bool)> = conn
        .query_row(
            "SELECT label, one_time, used, revoked FROM provisioning_tokens WHERE sha256 = ?1",
            [&digest],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((label, one_time, used, revoked)) = row else {
        record_event(
            conn,
            now,
            "provisioning_refused",
            true,
            Some(&vehicle.vin),
            None,
            "vehicle",
            "unknown provisioning token",
        )?;
        return Err(DirectorError::Unauthorized(
            "invalid provisioning token".into(),
        ));
    };
    if revoked || (one_time && used) {
        record_event(
            conn,
            now,
            "provisioning_refused",
            true,
            Some(&vehicle.vin),
            None,
            "vehicle",
            &format!("token {label:?} revoked or used"),
        )?;
        return Err(DirectorError::Unauthorized(
            "provisioning token revoked or already used".into(),
        ));
    }
    let credential = register_vehicle(conn, vehicle, &format!("provisioning:{label}"), now)?;
    conn.execute(
        "UPDATE provisioning_tokens SET used = 1 WHERE sha256 = ?1",
        [&digest],
    )?;
    Ok(credential)
}

/// Which vehicle a credential belongs to; refuses other vehicles' resources.
pub fn authorize_vehicle(
    conn: &Connection,
    vin: &str,
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
        Some(owner) if owner != vin => {
            record_event(
                conn,
                now,
                "cross_vehicle_access",
                true,
                Some(&owner),
                None,
                &format!("vehicle:{owner}"),
                &format!("tried to access vehicle {vin}"),
            )?;
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
    pub assignments: Vec<AssignmentEcu>,
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
pub fn vehicle(conn: &Connection, vin: &str) -> Result<VehicleRecord, DirectorError> {
    let created_at: Option<String> = conn
        .query_row(
            "SELECT created_at FROM vehicles WHERE vin = ?1",
            [vin],
            |r| r.get(0),
        )
        .optional()?;
    let created_at =
        created_at.ok_or_else(|| DirectorError::NotFound(format!("no vehicle {vin}")))?;
    Ok(VehicleRecord {
        vin: vin.to_string(),
        created_at,
        ecus: ecus_of(conn, vin)?,
        assignments: assignments(conn, Some(vin))?,
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
    pub serial: String,
    /// Its hardware id.
    pub hardware_id: String,
    /// Its public key.
    pub public_key: Value,
}

/// Replaces ECU `old` of `vin` with a new one; its active assignments are cancelled.
pub fn replace_ecu(
    conn: &mut Connection,
    vin: &str,
    old: &str,
    new: &EcuReplacement,
    actor: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let tx = conn.transaction()?;
    let primary: Option<bool> = tx
        .query_row(
            "SELECT is_primary FROM ecus WHERE serial = ?1 AND vin = ?2",
            params![old, vin],
            |r| r.get(0),
        )
        .optional()?;
    let primary = primary
        .ok_or_else(|| DirectorError::NotFound(format!("vehicle {vin} has no ECU {old}")))?;
    tx.execute(
        "UPDATE assignment_ecus SET status = 'cancelled', detail = 'ECU replaced', updated_at = ?1
         WHERE ecu_serial = ?2 AND status IN ('pending', 'delivered')",
        params![now_text(now), old],
    )?;
    tx.execute("DELETE FROM ecus WHERE serial = ?1", [old])?;
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
    record_event(
        &tx,
        now,
        "ecu_replaced",
        false,
        Some(vin),
        Some(&new.serial),
        actor,
        &format!("{old} replaced by {}", new.serial),
    )?;
    tx.commit()?;
    Ok(())
}

// ---------------------------------------------------------------- assignments

/// An operator's assignment request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignRequest {
    /// Image (target name) in the Image repository.
    pub image: String,
    /// Vehicles; empty means every registered vehicle (then `hardware_id` is required).
    #[serde(default)]
    pub vins: Vec<String>,
    /// Only ECUs with this hardware id.
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// Only these ECU serials.
    #[serde(default)]
    pub ecus: Vec<String>,
}

/// One ECU's part of an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssignmentEcu {
    /// The assignment's correlation id.
    pub correlation_id: String,
    /// Vehicle.
    pub vin: String,
    /// ECU serial.
    pub ecu_serial: String,
    /// Image file name.
    pub filename: String,
    /// Image length.
    pub length: u64,
    /// Image hashes.
    pub hashes: Hashes,
    /// Hardware id.
    pub hardware_id: String,
    /// Release counter.
    pub release_counter: u64,
    /// `pending`, `delivered`, `installed`, `failed` or `cancelled`.
    pub status: String,
    /// Why, for failed and cancelled.
    pub detail: String,
    /// Last change.
    pub updated_at: String,
}

fn image_hardware_ids(info: &TargetFile) -> Vec<String> {
    info.custom
        .as_ref()
        .and_then(|c| c.get("hardwareIds"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Creates an assignment of `image` (whose verified Image repository entry is `info`) to
/// the ECUs `request` selects; returns its correlation id and ECU entries. An ECU's earlier
/// assignment that is still pending or delivered is superseded.
pub fn assign(
    conn: &mut Connection,
    request: &AssignRequest,
    info: &TargetFile,
    actor: &str,
    now: UtcTime,
) -> Result<(String, Vec<AssignmentEcu>), DirectorError> {
    if request.vins.is_empty() && request.hardware_id.is_none() && request.ecus.is_empty() {
        return Err(bad("name vehicles, ECUs, or a hardware id"));
    }
    for vin in &request.vins {
        check_id("VIN", vin)?;
    }
    let hardware_ids = image_hardware_ids(info);
    let release_counter = info
        .custom
        .as_ref()
        .and_then(|c| c.get("releaseCounter"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let tx = conn.transaction()?;
    let ecus_where =
        |filter: Option<(&str, &str)>| -> rusqlite::Result<Vec<(String, String, String, u64)>> {
            let sql = "SELECT serial, vin, hardware_id, installed_release_counter FROM ecus";
            let map = |r: &rusqlite::Row<'_>| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
            };
            match filter {
                Some((column, value)) => tx
                    .prepare_cached(&format!("{sql} WHERE {column} = ?1"))?
                    .query_map([value], map)?
                    .collect(),
                None => tx.prepare_cached(sql)?.query_map([], map)?.collect(),
            }
        };
    let mut candidates = Vec::new();
    if !request.vins.is_empty() {
        for vin in &request.vins {
            if !exists(&tx, "vehicles", "vin", vin)? {
                return Err(DirectorError::NotFound(format!("no vehicle {vin}")));
            }
            candidates.extend(ecus_where(Some(("vin", vin)))?);
        }
    } else if !request.ecus.is_empty() {
        for serial in &request.ecus {
            let found = ecus_where(Some(("serial", serial)))?;
            if found.is_empty() {
                return Err(DirectorError::NotFound(format!("no ECU {serial}")));
            }
            candidates.extend(found);
        }
    } else {
        candidates.extend(ecus_where(None)?);
    }
    if !request.ecus.is_empty() {
        let wanted: BTreeSet<&String> = request.ecus.iter().collect();
        candidates.retain(|c| wanted.contains(&c.0));
        for serial in &request.ecus {
            if !candidates.iter().any(|c| &c.0 == serial) {
                return Err(DirectorError::NotFound(format!(
                    "no ECU {serial} in the named vehicles"
                )));
            }
        }
    }
    if let Some(hw) = &request.hardware_id {
        candidates.retain(|c| &c.2 == hw);
    }
    for (serial, _, hw, installed) in &candidates {
        if !hardware_ids.contains(hw) {
            if !request.ecus.is_empty() || request.hardware_id.is_some() {
                return Err(bad(format!(
                    "image {} is for hardware {hardware_ids:?}, ECU {serial} is {hw}",
                    request.image
                )));
            }
            continue;
        }
        if release_counter < *installed {
            return Err(bad(format!(
                "image {} has release counter {release_counter}, below the {installed} ECU {serial} runs",
                request.image
            )));
        }
    }
    candidates.retain(|c| hardware_ids.contains(&c.2));
    if candidates.is_empty() {
        return Err(bad(format!(
            "no selected ECU has a hardware id the image is for ({hardware_ids:?})"
        )));
    }
    let correlation_id = format!("asg-{}", &random_token("x")?[2..18]);
    tx.execute(
        "INSERT INTO assignments (correlation_id, created_at, created_by) VALUES (?1, ?2, ?3)",
        params![correlation_id, now_text(now), actor],
    )?;
    let id = tx.last_insert_rowid();
    let hashes = serde_json::to_string(&info.hashes).expect("hashes serialize");
    for (serial, vin, hw, _) in &candidates {
        tx.execute(
            "UPDATE assignment_ecus SET status = 'cancelled', detail = ?1, updated_at = ?2
             WHERE ecu_serial = ?3 AND status IN ('pending', 'delivered')",
            params![
                format!("superseded by {correlation_id}"),
                now_text(now),
                serial
            ],
        )?;
        tx.execute(
            "INSERT INTO assignment_ecus (assignment_id, vin, ecu_serial, filename, length, hashes, hardware_id, release_counter, status, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9)",
            params![id, vin, serial, request.image, info.length as i64, hashes, hw, release_counter as i64, now_text(now)],
        )?;
    }
    let vins: BTreeSet<&str> = candidates.iter().map(|c| c.1.as_str()).collect();
    record_event(
        &tx,
        now,
        "assignment_created",
        false,
        None,
        None,
        actor,
        &format!(
            "{correlation_id}: {} to {} ECUs in {} vehicles",
            request.image,
            candidates.len(),
            vins.len()
        ),
    )?;
    tx.commit()?;
    let entries = assignments_by_correlation(conn, &correlation_id)?;
    Ok((correlation_id, entries))
}

const ASSIGNMENT_COLUMNS: &str = "a.correlation_id, e.vin, e.ecu_serial, e.filename, e.length, e.hashes, e.hardware_id, e.release_counter, e.status, e.detail, e.updated_at";

fn assignment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AssignmentEcu> {
    let hashes: String = r.get(5)?;
    Ok(AssignmentEcu {
        correlation_id: r.get(0)?,
        vin: r.get(1)?,
        ecu_serial: r.get(2)?,
        filename: r.get(3)?,
        length: r.get::<_, i64>(4)? as u64,
        hashes: serde_json::from_str(&hashes).unwrap_or_default(),
        hardware_id: r.get(6)?,
        release_counter: r.get::<_, i64>(7)? as u64,
        status: r.get(8)?,
        detail: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

fn assignments_by_correlation(
    conn: &Connection,
    correlation_id: &str,
) -> Result<Vec<AssignmentEcu>, DirectorError> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignment_ecus e JOIN assignments a ON a.id = e.assignment_id WHERE a.correlation_id = ?1 ORDER BY e.vin, e.ecu_serial"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([correlation_id], assignment_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Assignment entries, newest first, optionally of one vehicle.
pub fn assignments(
    conn: &Connection,
    vin: Option<&str>,
) -> Result<Vec<AssignmentEcu>, DirectorError> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignment_ecus e JOIN assignments a ON a.id = e.assignment_id
         WHERE ?1 IS NULL OR e.vin = ?1 ORDER BY a.id DESC, e.vin, e.ecu_serial LIMIT 10000"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([vin], assignment_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Cancels the entries of an assignment not yet delivered; refuses if none can be.
pub fn cancel_assignment(
    conn: &mut Connection,
    correlation_id: &str,
    actor: &str,
    now: UtcTime,
) -> Result<usize, DirectorError> {
    let tx = conn.transaction()?;
    if !exists(&tx, "assignments", "correlation_id", correlation_id)? {
        return Err(DirectorError::NotFound(format!(
            "no assignment {correlation_id}"
        )));
    }
    let n = tx.execute(
        "UPDATE assignment_ecus SET status = 'cancelled', detail = 'cancelled by operator', updated_at = ?1
         WHERE status = 'pending' AND assignment_id = (SELECT id FROM assignments WHERE correlation_id = ?2)",
        params![now_text(now), correlation_id],
    )?;
    if n == 0 {
        return Err(DirectorError::Conflict(format!(
            "assignment {correlation_id} has no pending entries: delivered ones can no longer be cancelled"
        )));
    }
    record_event(
        &tx,
        now,
        "assignment_cancelled",
        false,
        None,
        None,
        actor,
        &format!("{correlation_id}: {n} ECUs"),
    )?;
    tx.commit()?;
    Ok(n)
}

// ---------------------------------------------------------------- per-vehicle metadata

/// Signs and stores the Director's root version 1 (called by `director init`).
pub fn store_initial_root(
    conn: &Connection,
    root_keys: &[&uptane_core::crypto::SigningKey],
    threshold: u32,
    online: &OnlineKeys,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let mut builder = RootBuilder::new(1, now + Duration::days(365))
        .threshold("root", threshold)
        .key("targets", online.targets.public_key())
        .key("snapshot", online.snapshot.public_key())
        .key("timestamp", online.timestamp.public_key());
    for key in root_keys {
        builder = builder.key("root", key.public_key());
    }
    let bytes = builder
        .sign(root_keys)
        .map_err(|e| DirectorError::Internal(e.to_string()))?;
    conn.execute("INSERT INTO roots (version, body) VALUES (1, ?1)", [bytes])?;
    Ok(())
}

/// Root version `version`, if published.
pub fn root(conn: &Connection, version: u64) -> Result<Option<Vec<u8>>, DirectorError> {
    Ok(conn
        .query_row(
            "SELECT body FROM roots WHERE version = ?1",
            [version as i64],
            |r| r.get(0),
        )
        .optional()?)
}

struct StoredMetadata {
    content_sha256: String,
    targets_version: u64,
    snapshot_version: u64,
    timestamp_version: u64,
    expires: UtcTime,
}

fn active_entries(conn: &Connection, vin: &str) -> Result<Vec<AssignmentEcu>, DirectorError> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignment_ecus e JOIN assignments a ON a.id = e.assignment_id
         WHERE e.vin = ?1 AND e.status IN ('pending', 'delivered') ORDER BY e.ecu_serial"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([vin], assignment_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Makes sure vehicle `vin` has current signed targets, snapshot and timestamp: re-signed
/// (with versions going up) when its assignments changed or the metadata nears expiry.
pub fn refresh_vehicle_metadata(
    conn: &mut Connection,
    keys: &OnlineKeys,
    vin: &str,
    policy: &Policy,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let tx = conn.transaction()?;
    let entries = active_entries(&tx, vin)?;
    let content = json!(
        entries
            .iter()
            .map(|e| json!([
                e.correlation_id,
                e.ecu_serial,
                e.filename,
                e.length,
                e.hashes,
                e.hardware_id,
                e.release_counter
            ]))
            .collect::<Vec<_>>()
    );
    let content_sha256 = sha256_hex(content.to_string().as_bytes());
    let stored: Option<StoredMetadata> = tx
        .query_row(
            "SELECT content_sha256, targets_version, snapshot_version, timestamp_version, expires FROM vehicle_metadata WHERE vin = ?1",
            [vin],
            |r| {
                Ok(StoredMetadata {
                    content_sha256: r.get(0)?,
                    targets_version: r.get::<_, i64>(1)? as u64,
                    snapshot_version: r.get::<_, i64>(2)? as u64,
                    timestamp_version: r.get::<_, i64>(3)? as u64,
                    expires: parse_expires(&r.get::<_, String>(4)?).unwrap_or(now),
                })
            },
        )
        .optional()?;
    if let Some(s) = &stored
        && s.content_sha256 == content_sha256
        && s.expires - now > policy.renew_margin
    {
        return Ok(());
    }
    let (tv, sv, tsv) = stored.as_ref().map_or((1, 1, 1), |s| {
        (
            s.targets_version + 1,
            s.snapshot_version + 1,
            s.timestamp_version + 1,
        )
    });
    let expires = now + policy.metadata_lifetime;
    let latest_correlation = entries
        .iter()
        .map(|e| e.correlation_id.as_str())
        .max()
        .unwrap_or("");
    let mut by_file: BTreeMap<&str, Vec<&AssignmentEcu>> = BTreeMap::new();
    for e in &entries {
        by_file.entry(e.filename.as_str()).or_default().push(e);
    }
    let mut builder =
        TargetsBuilder::new(tv, expires).custom(director_targets_custom(vin, latest_correlation));
    for (filename, group) in by_file {
        let first = group[0];
        let mut custom =
            director_target_custom(&first.ecu_serial, &first.hardware_id, first.release_counter);
        for e in &group[1..] {
            custom["ecuIdentifiers"][&e.ecu_serial] = json!({"hardwareId": e.hardware_id});
        }
        custom["correlationId"] = json!(first.correlation_id);
        builder = builder.target_with(filename, first.length, first.hashes.clone(), Some(custom));
    }
    let sign_err = |e: uptane_core::cjson::CanonicalError| DirectorError::Internal(e.to_string());
    let targets = builder.sign(&[&keys.targets]).map_err(sign_err)?;
    let snapshot = SnapshotBuilder::new(sv, expires)
        .role("targets", describe(tv, &targets))
        .sign(&[&keys.snapshot])
        .map_err(sign_err)?;
    let timestamp = TimestampBuilder::new(tsv, expires, describe(sv, &snapshot))
        .sign(&[&keys.timestamp])
        .map_err(sign_err)?;
    tx.execute(
        "INSERT INTO vehicle_metadata (vin, content_sha256, targets_version, snapshot_version, timestamp_version, targets, snapshot, timestamp, expires)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (vin) DO UPDATE SET content_sha256 = ?2, targets_version = ?3, snapshot_version = ?4,
             timestamp_version = ?5, targets = ?6, snapshot = ?7, timestamp = ?8, expires = ?9",
        params![vin, content_sha256, tv as i64, sv as i64, tsv as i64, targets, snapshot, timestamp, format_expires(&expires)],
    )?;
    tx.commit()?;
    Ok(())
}

/// A file of vehicle `vin`'s Director repository: `N.root.json`, `timestamp.json` (re-signed
/// first when needed), or the current `V.snapshot.json` / `V.targets.json`. Serving the
/// targets marks the assignments in it delivered.
pub fn vehicle_file(
    conn: &mut Connection,
    keys: &OnlineKeys,
    vin: &str,
    file: &str,
    policy: &Policy,
    now: UtcTime,
) -> Result<Vec<u8>, DirectorError> {
    let missing = || DirectorError::NotFound(format!("no metadata file {file:?}"));
    if let Some(version) = file.strip_suffix(".root.json") {
        let version: u64 = version.parse().map_err(|_| missing())?;
        return root(conn, version)?.ok_or_else(missing);
    }
    if file == "timestamp.json" {
        refresh_vehicle_metadata(conn, keys, vin, policy, now)?;
    }
    let (version, role) = file
        .strip_suffix(".json")
        .and_then(|f| f.split_once('.'))
        .map_or((None, file.trim_end_matches(".json")), |(v, r)| {
            (v.parse::<u64>().ok(), r)
        });
    let column = match (role, version) {
        ("timestamp", None) => "timestamp",
        ("snapshot", Some(_)) => "snapshot",
        ("targets", Some(_)) => "targets",
        _ => return Err(missing()),
    };
    let row: Option<(Vec<u8>, i64, i64)> = conn
        .query_row(
            &format!("SELECT {column}, snapshot_version, targets_version FROM vehicle_metadata WHERE vin = ?1"),
            [vin],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let (bytes, snapshot_version, targets_version) = row.ok_or_else(missing)?;
    match (column, version) {
        ("snapshot", Some(v)) if v != snapshot_version as u64 => return Err(missing()),
        ("targets", Some(v)) if v != targets_version as u64 => return Err(missing()),
        _ => {}
    }
    if column == "targets" {
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE assignment_ecus SET status = 'delivered', updated_at = ?1 WHERE vin = ?2 AND status = 'pending'",
            params![now_text(now), vin],
        )?;
        if n > 0 {
            record_event(
                &tx,
                now,
                "assignment_delivered",
                false,
                Some(vin),
                None,
                &format!("vehicle:{vin}"),
                &format!("{n} ECUs received their targets"),
            )?;
        }
        tx.commit()?;
    }
    Ok(bytes)
}

// ---------------------------------------------------------------- manifests

/// What an accepted manifest changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestOutcome {
    /// The stored manifest's id.
    pub manifest_id: i64,
    /// Assignment entries now installed.
    pub installed: Vec<String>,
    /// Assignment entries now failed.
    pub failed: Vec<String>,
    /// Attacks the ECUs reported.
    pub attacks_reported: usize,
    /// ECUs the Primary could not reach this time.
    pub unreachable: Vec<String>,
}

struct EcuRow {
    key: PublicKey,
    primary: bool,
    last_counter: Option<u64>,
}

/// Verifies a vehicle version manifest and records it (Uptane §5.4.2.1; Director §5.3.2.1):
/// the Primary's signature against the inventory key, every ECU report against its ECU's
/// key, every inventory ECU present and no other, every nonce unseen and every counter
/// higher than before, report times not in the future. A refusal is logged as a security
/// event and changes nothing else; an accepted manifest updates installed images and
/// assignment outcomes in one transaction.
pub fn process_manifest(
    conn: &mut Connection,
    vin: &str,
    bytes: &[u8],
    policy: &Policy,
    now: UtcTime,
) -> Result<ManifestOutcome, DirectorError> {
    match check_manifest(conn, vin, bytes, policy, now) {
        Ok((reports, unreachable)) => record_manifest(conn, vin, bytes, reports, &unreachable, now),
        Err((ecu, reason)) => {
            record_event(
                conn,
                now,
                "manifest_refused",
                true,
                Some(vin),
                ecu.as_deref(),
                &format!("vehicle:{vin}"),
                &reason,
            )?;
            Err(DirectorError::ManifestRefused(reason))
        }
    }
}

type Refusal = (Option<String>, String);

/// The verified reports, and the ECUs declared unreachable with why.
type CheckedManifest = (Vec<Verified<EcuVersionReport>>, BTreeMap<String, String>);

fn check_manifest(
    conn: &Connection,
    vin: &str,
    bytes: &[u8],
    policy: &Policy,
    now: UtcTime,
) -> Result<CheckedManifest, Refusal> {
    let internal = |e: rusqlite::Error| (None, format!("storage: {e}"));
    let mut stmt = conn
        .prepare_cached(
            "SELECT serial, public_key, is_primary, last_report_counter FROM ecus WHERE vin = ?1",
        )
        .map_err(internal)?;
    let rows: Vec<(String, String, bool, Option<i64>)> = stmt
        .query_map([vin], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .and_then(|rows| rows.collect())
        .map_err(internal)?;
    let mut inventory = BTreeMap::new();
    for (serial, key, primary, counter) in rows {
        let key = serde_json::from_str(&key)
            .ok()
            .and_then(|k| PublicKey::from_json(k).ok())
            .ok_or((Some(serial.clone()), "stored key unreadable".to_string()))?;
        inventory.insert(
            serial,
            EcuRow {
                key,
                primary,
                last_counter: counter.map(|c| c as u64),
            },
        );
    }
    let (primary_serial, primary) = inventory.iter().find(|(_, e)| e.primary).ok_or((
        None,
        format!("vehicle {vin} has no Primary in the inventory"),
    ))?;
    let manifest = verify_vehicle_manifest(
        &Raw::<VehicleVersionManifest>::new(bytes.to_vec()),
        &primary.key,
    )
    .map_err(|e| {
        (
            Some(primary_serial.clone()),
            format!("vehicle manifest: {e}"),
        )
    })?;
    if manifest.vin != vin {
        return Err((None, format!("manifest is for vehicle {:?}", manifest.vin)));
    }
    if &manifest.primary_ecu_serial != primary_serial {
        return Err((
            None,
            format!(
                "manifest names Primary {:?}, the inventory has {primary_serial}",
                manifest.primary_ecu_serial
            ),
        ));
    }
    for serial in manifest.unreachable_ecus.keys() {
        if !inventory.contains_key(serial) {
            return Err((Some(serial.clone()), format!("unknown ECU {serial}")));
        }
        if serial == primary_serial || manifest.ecu_version_reports.contains_key(serial) {
            return Err((
                Some(serial.clone()),
                format!("ECU {serial} is both reported and declared unreachable"),
            ));
        }
    }
    for serial in inventory.keys() {
        if !manifest.ecu_version_reports.contains_key(serial)
            && !manifest.unreachable_ecus.contains_key(serial)
        {
            return Err((
                Some(serial.clone()),
                format!("no version report from ECU {serial}"),
            ));
        }
    }
    let mut reports = Vec::new();
    let mut nonces = BTreeSet::new();
    for serial in manifest.ecu_version_reports.keys() {
        let Some(ecu) = inventory.get(serial) else {
            return Err((Some(serial.clone()), format!("unknown ECU {serial}")));
        };
        let raw = manifest
            .report(serial)
            .ok_or((Some(serial.clone()), "unreadable report".to_string()))?;
        let report = verify_ecu_report(&raw, &ecu.key)
            .map_err(|e| (Some(serial.clone()), format!("ECU {serial} report: {e}")))?;
        if &report.ecu_serial != serial {
            return Err((
                Some(serial.clone()),
                format!(
                    "report under {serial} is signed for ECU {}",
                    report.ecu_serial
                ),
            ));
        }
        let seen: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM seen_nonces WHERE ecu_serial = ?1 AND nonce = ?2)",
                params![serial, report.nonce],
                |r| r.get(0),
            )
            .map_err(internal)?;
        if seen || report.nonce.is_empty() || !nonces.insert((serial.clone(), report.nonce.clone()))
        {
            return Err((
                Some(serial.clone()),
                format!("ECU {serial} report replays nonce {:?}", report.nonce),
            ));
        }
        if let Some(last) = ecu.last_counter
            && report.report_counter <= last
        {
            return Err((
                Some(serial.clone()),
                format!(
                    "ECU {serial} report counter {} is not above {last}",
                    report.report_counter
                ),
            ));
        }
        if report.latest_time > now + policy.clock_skew {
            return Err((
                Some(serial.clone()),
                format!(
                    "ECU {serial} report time {} is in the future",
                    format_expires(&report.latest_time)
                ),
            ));
        }
        reports.push(report);
    }
    Ok((reports, manifest.unreachable_ecus.clone()))
}

fn record_manifest(
    conn: &mut Connection,
    vin: &str,
    bytes: &[u8],
    reports: Vec<Verified<EcuVersionReport>>,
    unreachable: &BTreeMap<String, String>,
    now: UtcTime,
) -> Result<ManifestOutcome, DirectorError> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO manifests (vin, received_at, body) VALUES (?1, ?2, ?3)",
        params![vin, now_text(now), bytes],
    )?;
    let manifest_id = tx.last_insert_rowid();
    let actor = format!("vehicle:{vin}");
    let mut outcome = ManifestOutcome {
        manifest_id,
        installed: Vec::new(),
        failed: Vec::new(),
        attacks_reported: 0,
        unreachable: unreachable.keys().cloned().collect(),
    };
    for (serial, reason) in unreachable {
        record_event(
            &tx,
            now,
            "ecu_unreachable",
            false,
            Some(vin),
            Some(serial),
            &actor,
            reason,
        )?;
    }
    let active = active_entries(&tx, vin)?;
    for report in &reports {
        let serial = &report.ecu_serial;
        let image = &report.installed_image;
        tx.execute(
            "INSERT INTO seen_nonces (ecu_serial, nonce) VALUES (?1, ?2)",
            params![serial, report.nonce],
        )?;
        tx.execute(
            "UPDATE ecus SET installed_filename = ?1, installed_length = ?2, installed_hashes = ?3, installed_release_counter = ?4,
                    last_report_counter = ?5, last_report_at = ?6, attacks_reported = ?7 WHERE serial = ?8",
            params![
                image.filename,
                image.length as i64,
                serde_json::to_string(&image.hashes).expect("hashes serialize"),
                image.release_counter as i64,
                report.report_counter as i64,
                now_text(now),
                serde_json::to_string(&report.attacks_detected).expect("attacks serialize"),
                serial
            ],
        )?;
        for attack in &report.attacks_detected {
            outcome.attacks_reported += 1;
            record_event(
                &tx,
                now,
                &format!("attack_reported:{}", attack.kind),
                true,
                Some(vin),
                Some(serial),
                &actor,
                &attack.detail,
            )?;
        }
        for entry in active.iter().filter(|e| &e.ecu_serial == serial) {
            let matches = image.filename == entry.filename
                && image.length == entry.length
                && entry
                    .hashes
                    .get("sha256")
                    .is_some_and(|h| image.hashes.get("sha256") == Some(h));
            let last = report.last_install.as_ref();
            let failed = last
                .filter(|l| {
                    l.get("correlation_id").and_then(Value::as_str)
                        == Some(entry.correlation_id.as_str())
                })
                .and_then(|l| l.get("result").and_then(Value::as_str))
                .filter(|r| *r != "installed" && *r != "in_progress")
                .map(str::to_string);
            let (status, detail) = if matches {
                ("installed", String::new())
            } else if let Some(result) = failed {
                let detail = last
                    .and_then(|l| l.get("detail"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                ("failed", format!("{result}: {detail}"))
            } else {
                continue;
            };
            tx.execute(
                "UPDATE assignment_ecus SET status = ?1, detail = ?2, updated_at = ?3
                 WHERE ecu_serial = ?4 AND assignment_id = (SELECT id FROM assignments WHERE correlation_id = ?5)",
                params![status, detail, now_text(now), serial, entry.correlation_id],
            )?;
            let what = format!("{} on {serial}: {status} {detail}", entry.correlation_id);
            record_event(
                &tx,
                now,
                &format!("assignment_{status}"),
                status == "failed",
                Some(vin),
                Some(serial),
                &actor,
                what.trim(),
            )?;
            if status == "installed" {
                outcome
                    .installed
                    .push(format!("{}:{serial}", entry.correlation_id));
            } else {
                outcome
                    .failed
                    .push(format!("{}:{serial}", entry.correlation_id));
            }
        }
    }
    tx.commit()?;
    Ok(outcome)
}

/// An event from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: String,
    /// What.
    pub kind: String,
    /// `info` or `security`.
    pub severity: String,
    /// Vehicle, if any.
    pub vin: Option<String>,
    /// ECU, if any.
    pub ecu_serial: Option<String>,
    /// Who caused it.
    pub actor: String,
    /// Details.
    pub detail: String,
}

/// Events after `after`, oldest first, optionally of one vehicle or only security events.
pub fn events(
    conn: &Connection,
    vin: Option<&str>,
    security_only: bool,
    after: i64,
    limit: u32,
) -> Result<Vec<Event>, DirectorError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, kind, severity, vin, ecu_serial, actor, detail FROM events
         WHERE id > ?1 AND (?2 IS NULL OR vin = ?2) AND (?3 = 0 OR severity = 'security') ORDER BY id LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![after, vin, security_only, limit], |r| {
        Ok(Event {
            id: r.get(0)?,
            at: r.get(1)?,
            kind: r.get(2)?,
            severity: r.get(3)?,
            vin: r.get(4)?,
            ecu_serial: r.get(5)?,
            actor: r.get(6)?,
            detail: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
