//! Per-vehicle Director metadata: the Director's root, and each vehicle's targets, snapshot
//! and timestamp, signed on demand with the online keys and served only to that vehicle.

use std::collections::BTreeMap;

use crate::params;
use crate::sql::Conn;
use chrono::Duration;
use serde_json::json;
use uptane_core::hash::sha256_hex;
use uptane_core::sign::{RootBuilder, SnapshotBuilder, TargetsBuilder, TimestampBuilder, describe};
use uptane_core::time::{UtcTime, format_expires, from_unix_seconds, parse_expires};
use uptane_core::uptane::{director_target_custom, director_targets_custom, with_signing_time};

use super::events::NewEvent;
use super::rotation::{ActiveKeys, KeyRing};
use super::{Policy, assignments};
use crate::error::DirectorError;
use crate::keys::OnlineKeys;

/// Signs and stores the Director's root version 1 (called by `director init`), expiring
/// after `lifetime`.
pub fn store_initial_root(
    conn: &Conn,
    root_keys: &[&uptane_core::crypto::SigningKey],
    threshold: u32,
    online: &OnlineKeys,
    lifetime: Duration,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let mut builder = RootBuilder::new(1, now + lifetime)
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
    conn.execute(
        "INSERT INTO roots (version, body) VALUES (1, ?1)",
        params![bytes],
    )?;
    Ok(())
}

/// Root version `version`, if published.
pub fn root(conn: &Conn, version: u64) -> Result<Option<Vec<u8>>, DirectorError> {
    Ok(conn.query_opt(
        "SELECT body FROM roots WHERE version = ?1",
        params![version as i64],
        |r| r.get(0),
    )?)
}

struct StoredMetadata {
    content_sha256: String,
    root_version: u64,
    targets_version: u64,
    snapshot_version: u64,
    timestamp_version: u64,
    expires: UtcTime,
}

/// What a vehicle's targets are made of, beside the entries themselves: the database's count
/// of changes to its assignment entries and of the entries its targets list
/// (`vehicle_contents`, kept by triggers on every insert, update and delete of an entry,
/// migration 012), and the operator's time reset.
#[derive(Debug, Clone, Copy)]
struct Basis {
    changes: i64,
    reset: u64,
    targeted: i64,
}

/// Vehicle `vin`'s [`Basis`] and its stored metadata, in one statement; `None` for a VIN that
/// is not registered.
fn basis_and_stored(
    conn: &Conn,
    vin: &str,
) -> Result<Option<(Basis, Option<StoredMetadata>)>, DirectorError> {
    let row = conn.query_opt(
        "SELECT COALESCE(c.changes, 0), v.time_reset, COALESCE(c.targeted, 0), m.content_sha256,
                m.targets_version, m.snapshot_version, m.timestamp_version, m.expires, m.root_version
         FROM vehicles v LEFT JOIN vehicle_metadata m ON m.vin = v.vin
             LEFT JOIN vehicle_contents c ON c.vin = v.vin
         WHERE v.vin = ?1",
        params![vin],
        |r| {
            let basis = Basis {
                changes: r.get(0)?,
                reset: r.get::<i64>(1)? as u64,
                targeted: r.get(2)?,
            };
            let stored = match r.get::<Option<String>>(3)? {
                None => None,
                Some(content_sha256) => Some(StoredMetadata {
                    content_sha256,
                    targets_version: r.get::<i64>(4)? as u64,
                    snapshot_version: r.get::<i64>(5)? as u64,
                    timestamp_version: r.get::<i64>(6)? as u64,
                    // An expiry that does not parse is treated as reached: the metadata is
                    // signed again, never served on a guess.
                    expires: parse_expires(&r.get::<String>(7)?).unwrap_or(UtcTime::MIN_UTC),
                    root_version: r.get::<i64>(8)? as u64,
                }),
            };
            Ok((basis, stored))
        },
    )?;
    Ok(row)
}

/// Makes sure vehicle `vin` has current signed targets, snapshot and timestamp: re-signed
/// (with versions going up) when its assignments changed, the metadata nears expiry, or it
/// was signed under an older root (whose online keys may have been replaced).
pub fn refresh_vehicle_metadata(
    conn: &mut Conn,
    active: &ActiveKeys,
    vin: &str,
    policy: &Policy,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let tx = conn.savepoint()?;
    if let Some(signed) = sign_vehicle_metadata(&tx, active, vin, policy, now)? {
        store_vehicle_metadata(&tx, &signed)?;
    }
    tx.commit()?;
    Ok(())
}

/// A vehicle's metadata, signed, to be stored in place of the versions it was signed after.
#[derive(Debug)]
pub struct SignedMetadata {
    vin: String,
    after: Option<(u64, u64, u64)>,
    /// What the vehicle's row said when this was signed: stored only if it still says so.
    basis: Basis,
    content_sha256: String,
    versions: (u64, u64, u64),
    targets: Vec<u8>,
    snapshot: Vec<u8>,
    timestamp: Vec<u8>,
    expires: UtcTime,
    included: String,
    /// The root version whose keys signed it.
    pub root_version: u64,
}

impl SignedMetadata {
    /// Its timestamp as it reads once stored (the expiry to the second, as signed).
    pub fn timestamp(&self) -> StoredTimestamp {
        StoredTimestamp {
            bytes: self.timestamp.clone(),
            expires: from_unix_seconds(self.expires.timestamp()).unwrap_or(UtcTime::MIN_UTC),
            root_version: self.root_version,
        }
    }
}

/// What vehicle `vin`'s targets are made of: the entries assigned to it and the operator
/// time reset, with a digest that tells whether signed metadata still lists them.
struct Content {
    entries: Vec<assignments::AssignmentEcu>,
    sha256: String,
}

/// Vehicle `vin`'s [`Content`], read in the transaction that read `basis`: its entries are
/// read only if its row counts any.
fn content(conn: &Conn, vin: &str, basis: &Basis) -> Result<Content, DirectorError> {
    let entries = if basis.targeted > 0 {
        assignments::targeted_entries(conn, vin)?
    } else {
        Vec::new()
    };
    let listed = json!(
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
    // A new operator time reset must reach the vehicle: it is content like an assignment.
    let sha256 = sha256_hex(json!([listed, basis.reset]).to_string().as_bytes());
    Ok(Content { entries, sha256 })
}

/// The metadata vehicle `vin` should be served if what is stored is not current (see
/// [`refresh_vehicle_metadata`]), signed; `None` if it is current. Only reads, so it runs on
/// a read connection and the signing stays off the writer.
pub fn sign_vehicle_metadata(
    tx: &Conn,
    active: &ActiveKeys,
    vin: &str,
    policy: &Policy,
    now: UtcTime,
) -> Result<Option<SignedMetadata>, DirectorError> {
    let (basis, stored) = basis_and_stored(tx, vin)?
        .ok_or_else(|| DirectorError::NotFound(format!("no vehicle {vin}")))?;
    let Content {
        entries,
        sha256: content_sha256,
    } = content(tx, vin, &basis)?;
    if let Some(s) = &stored
        && s.content_sha256 == content_sha256
        && s.root_version == active.root_version
        && s.expires - now > policy.renew_margin
    {
        return Ok(None);
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
    // One targets entry per name, so one content per name: ECUs assigned the same name and
    // bytes share an entry; if a name has two contents (an assignment made as the name was
    // re-published; `assign` cancels the older one, so this is a fallback), the most recently
    // changed entry's content is listed and the rest wait.
    let mut by_file: BTreeMap<&str, Vec<&assignments::AssignmentEcu>> = BTreeMap::new();
    for e in &entries {
        let group = by_file.entry(e.filename.as_str()).or_default();
        match group.first() {
            Some(first) if (first.length, &first.hashes) != (e.length, &e.hashes) => {
                if (&e.updated_at, &e.correlation_id) > (&first.updated_at, &first.correlation_id) {
                    group.clear();
                    group.push(e);
                }
            }
            _ => group.push(e),
        }
    }
    let custom = with_signing_time(
        director_targets_custom(vin, latest_correlation),
        &now,
        basis.reset,
    );
    let mut builder = TargetsBuilder::new(tv, expires).custom(custom);
    for (filename, group) in &by_file {
        let first = group[0];
        let mut custom =
            director_target_custom(&first.ecu_serial, &first.hardware_id, first.release_counter);
        // Each ECU names the assignment it belongs to: ECUs sharing one file may be in several
        // (`uptane_core::uptane::update_correlation_id`).
        for e in group.iter() {
            custom["ecuIdentifiers"][&e.ecu_serial] =
                json!({"hardwareId": e.hardware_id, "correlationId": e.correlation_id});
        }
        custom["correlationId"] = json!(first.correlation_id);
        builder = builder.target_with(filename, first.length, first.hashes.clone(), Some(custom));
    }
    let keys = &active.online;
    let sign_err = |e: uptane_core::cjson::CanonicalError| DirectorError::Internal(e.to_string());
    let targets = builder.sign(&[&keys.targets]).map_err(sign_err)?;
    let snapshot = SnapshotBuilder::new(sv, expires)
        .role("targets", describe(tv, &targets))
        .sign(&[&keys.snapshot])
        .map_err(sign_err)?;
    let timestamp = TimestampBuilder::new(tsv, expires, describe(sv, &snapshot))
        .sign(&[&keys.timestamp])
        .map_err(sign_err)?;
    // What this targets version contains, so serving it marks exactly these delivered.
    let included: Vec<(&str, &str)> = by_file
        .values()
        .flatten()
        .map(|e| (e.correlation_id.as_str(), e.ecu_serial.as_str()))
        .collect();
    let included = serde_json::to_string(&included).expect("pairs of strings serialize");
    Ok(Some(SignedMetadata {
        vin: vin.to_owned(),
        after: stored
            .as_ref()
            .map(|s| (s.targets_version, s.snapshot_version, s.timestamp_version)),
        basis,
        content_sha256,
        versions: (tv, sv, tsv),
        targets,
        snapshot,
        timestamp,
        expires,
        included,
        root_version: active.root_version,
    }))
}

/// Stores `signed` if the vehicle's stored versions are still the ones it was signed after
/// and what its targets are made of is unchanged; `false` (nothing stored) if another request
/// stored newer ones first, so a version is never repeated with other content, or if an
/// assignment changed since it was signed.
pub fn store_vehicle_metadata(conn: &Conn, signed: &SignedMetadata) -> Result<bool, DirectorError> {
    // Two replicas signing this vehicle's next versions at once: the second waits here and
    // then finds the versions it signed after gone, so it stores nothing.
    conn.lock_row("vehicles", "vin", &signed.vin)?;
    let Some((now, stored)) = basis_and_stored(conn, &signed.vin)? else {
        return Ok(false);
    };
    let stored = stored.map(|s| (s.targets_version, s.snapshot_version, s.timestamp_version));
    super::fault::point("metadata-before-store");
    if stored != signed.after {
        return Ok(false);
    }
    // Signed on a read connection: an assignment cancelled, superseded or made since (the
    // operator's cancel found nothing of it in the served targets, and marked it final) must
    // not be stored and served after all. Every change to the vehicle's entries raised its
    // count of changes (the database's triggers), so an unchanged count and time reset, read
    // here on the writer after the row lock, say the signed content is still what it lists.
    // (On PostgreSQL a cancel locks the vehicle's row first, so it committed before this read
    // or waits for this store; an entry written meanwhile by a path that does not lock the
    // row, an assignment or a delivery, is signed at the vehicle's next request.)
    if (now.changes, now.reset) != (signed.basis.changes, signed.basis.reset) {
        return Ok(false);
    }
    let (tv, sv, tsv) = signed.versions;
    conn.execute("INSERT INTO vehicle_metadata (vin, content_sha256, targets_version, snapshot_version, timestamp_version, targets, snapshot, timestamp, expires, targets_entries, root_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (vin) DO UPDATE SET content_sha256 = ?2, targets_version = ?3, snapshot_version = ?4,
             timestamp_version = ?5, targets = ?6, snapshot = ?7, timestamp = ?8, expires = ?9, targets_entries = ?10, root_version = ?11", params![
            signed.vin,
            signed.content_sha256,
            tv as i64,
            sv as i64,
            tsv as i64,
            signed.targets,
            signed.snapshot,
            signed.timestamp,
            format_expires(&signed.expires),
            signed.included,
            signed.root_version as i64
        ],
    )?;
    Ok(true)
}

/// A file of vehicle `vin`'s Director repository: `N.root.json`, `timestamp.json` (re-signed
/// first when needed), or the current `V.snapshot.json` / `V.targets.json`. Serving the
/// targets marks the assignments in it delivered.
pub fn vehicle_file(
    conn: &mut Conn,
    keys: &KeyRing,
    vin: &str,
    file: &str,
    policy: &Policy,
    now: UtcTime,
) -> Result<Vec<u8>, DirectorError> {
    if file == "timestamp.json" {
        // Only the timestamp request signs, so only it needs the current keys.
        let active = keys.current(conn)?;
        refresh_vehicle_metadata(conn, &active, vin, policy, now)?;
    }
    let stored = stored_file(conn, vin, file)?;
    if stored.role == StoredRole::Targets {
        mark_delivered(conn, vin, &stored.included, now)?;
    }
    Ok(stored.bytes)
}

/// Which of a vehicle's stored files a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredRole {
    /// `N.root.json`, version N.
    Root(u64),
    /// `timestamp.json`.
    Timestamp,
    /// `V.snapshot.json`.
    Snapshot,
    /// `V.targets.json`: serving it marks what it contains delivered.
    Targets,
}

/// A stored file of a vehicle's repository, as read.
#[derive(Debug)]
pub struct StoredFile {
    /// Which file.
    pub role: StoredRole,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// For the targets: the (correlation id, ECU) pairs it contains, as stored.
    pub included: String,
}

/// Which role `file` names, without reading anything.
pub fn stored_role(file: &str) -> Result<StoredRole, DirectorError> {
    let missing = || DirectorError::NotFound(format!("no metadata file {file:?}"));
    if file.ends_with(".root.json") {
        return uptane_core::metadata::root_version_of(file)
            .map(StoredRole::Root)
            .ok_or_else(missing);
    }
    let (version, role) = file
        .strip_suffix(".json")
        .and_then(|f| f.split_once('.'))
        .map_or((None, file.trim_end_matches(".json")), |(v, r)| {
            (v.parse::<u64>().ok(), r)
        });
    match (role, version) {
        ("timestamp", None) => Ok(StoredRole::Timestamp),
        ("snapshot", Some(_)) => Ok(StoredRole::Snapshot),
        ("targets", Some(_)) => Ok(StoredRole::Targets),
        _ => Err(missing()),
    }
}

/// Reads a file of vehicle `vin`'s repository as stored (only reads).
pub fn stored_file(conn: &Conn, vin: &str, file: &str) -> Result<StoredFile, DirectorError> {
    let missing = || DirectorError::NotFound(format!("no metadata file {file:?}"));
    let role = stored_role(file)?;
    let version = file.split('.').next().and_then(|v| v.parse::<u64>().ok());
    if let StoredRole::Root(version) = role {
        let bytes = root(conn, version)?.ok_or_else(missing)?;
        return Ok(StoredFile {
            role,
            bytes,
            included: String::new(),
        });
    }
    let column = match role {
        StoredRole::Timestamp => "timestamp",
        StoredRole::Snapshot => "snapshot",
        _ => "targets",
    };
    let row: Option<(Vec<u8>, i64, i64, String)> = conn
        .query_opt(&format!("SELECT {column}, snapshot_version, targets_version, targets_entries FROM vehicle_metadata WHERE vin = ?1"), params![vin],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let (bytes, snapshot_version, targets_version, included) = row.ok_or_else(missing)?;
    match (role, version) {
        (StoredRole::Snapshot, Some(v)) if v != snapshot_version as u64 => return Err(missing()),
        (StoredRole::Targets, Some(v)) if v != targets_version as u64 => return Err(missing()),
        _ => {}
    }
    Ok(StoredFile {
        role,
        bytes,
        included,
    })
}

/// A vehicle's stored `timestamp.json`, with its expiry and the root it was signed under.
#[derive(Debug)]
pub struct StoredTimestamp {
    /// The file.
    pub bytes: Vec<u8>,
    /// When it expires (the earliest time if the stored text does not parse: then it is
    /// never taken as current).
    pub expires: UtcTime,
    /// The root version it was signed under.
    pub root_version: u64,
}

/// Reads vehicle `vin`'s stored timestamp (only reads).
pub fn stored_timestamp(conn: &Conn, vin: &str) -> Result<StoredTimestamp, DirectorError> {
    conn.query_opt(
        "SELECT timestamp, expires, root_version FROM vehicle_metadata WHERE vin = ?1",
        params![vin],
        |r| {
            Ok(StoredTimestamp {
                bytes: r.get(0)?,
                expires: parse_expires(&r.get::<String>(1)?).unwrap_or(UtcTime::MIN_UTC),
                root_version: r.get::<i64>(2)? as u64,
            })
        },
    )?
    .ok_or_else(|| DirectorError::NotFound("no metadata file \"timestamp.json\"".into()))
}

/// Marks the entries a served targets file contains delivered (only those: an assignment
/// created after it was signed is not delivered by it), and the cancelled entries it leaves
/// out withdrawn.
pub fn mark_delivered(
    conn: &mut Conn,
    vin: &str,
    included: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let included = assignments::ServedEntries::parse(included)?;
    let tx = conn.savepoint()?;
    let n = assignments::mark_delivered(&tx, vin, &included, now)?;
    let actor = format!("vehicle:{vin}");
    if n > 0 {
        let detail = format!("{n} ECUs received their targets");
        NewEvent::info("assignment_delivered", &actor, &detail)
            .vin(vin)
            .record(&tx, now)?;
    }
    let withdrawn = assignments::mark_withdrawn(&tx, vin, &included, now)?;
    if withdrawn > 0 {
        let detail = format!("{withdrawn} ECUs received targets that withdraw a cancelled update");
        NewEvent::info("assignment_withdrawn", &actor, &detail)
            .vin(vin)
            .record(&tx, now)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use crate::service::assignments::{AssignRequest, AssignmentStatus, assign, assignments};
    use crate::service::vehicles::{NewEcu, NewVehicle, register_vehicle};
    use uptane_core::metadata::{TargetFile, Targets};
    use uptane_core::testing::key;
    use uptane_core::uptane::image_target_custom;

    fn image(bytes: &[u8]) -> TargetFile {
        TargetFile {
            length: bytes.len() as u64,
            hashes: uptane_core::hash::standard_hashes(bytes),
            custom: Some(image_target_custom(&["hw-door"], 2).into()),
        }
    }

    #[test]
    fn a_name_re_published_with_other_bytes_is_listed_once_with_its_new_bytes() {
        let db = Db::for_tests().unwrap();
        let now = uptane_core::time::parse_expires("2030-01-01T00:00:00Z").unwrap();
        db.call_blocking(|conn| {
            let ecu = |serial: &str, n: u8, primary| NewEcu {
                serial: serial.parse().unwrap(),
                hardware_id: if primary { "hw-gw" } else { "hw-door" }.parse().unwrap(),
                public_key: key(n).public_key().to_json().clone(),
                primary,
            };
            let vehicle = NewVehicle {
                vin: "VIN-R".parse().unwrap(),
                ecus: vec![
                    ecu("GW", 1, true),
                    ecu("DOOR-L", 2, false),
                    ecu("DOOR-R", 3, false),
                ],
                tls_fingerprint: None,
            };
            register_vehicle(conn, &vehicle, Duration::days(1), "operator:x", now)?;
            let request = |serial: &str| AssignRequest {
                image: "door.bin".into(),
                vins: vec!["VIN-R".parse().unwrap()],
                hardware_id: None,
                ecus: vec![serial.parse().unwrap()],
            };
            // A name every ECU would refuse (Uptane G-4) is refused before it is assigned.
            let mut spoofed = request("DOOR-L");
            spoofed.image = "door-\u{202E}nib.exe".into();
            let refused = assign(conn, &spoofed, &image(b"door v1"), "op", now);
            assert!(
                matches!(&refused, Err(DirectorError::BadRequest(m)) if m.contains("invisible")),
                "{refused:?}"
            );
            let old =
                assign(conn, &request("DOOR-L"), &image(b"door v1"), "op", now)?.correlation_id;
            let new = assign(
                conn,
                &request("DOOR-R"),
                &image(b"door v1 fixed"),
                "op",
                now,
            )?
            .correlation_id;
            // The entry for the old bytes ends, saying why.
            let listed = assignments(conn, Some(&vehicle.vin), crate::service::Page::newest(100))?;
            let left = listed.iter().find(|e| e.correlation_id == old).unwrap();
            assert_eq!(left.status, AssignmentStatus::Cancelled);
            assert!(
                left.detail.contains("re-published with other content"),
                "{left:?}"
            );
            // The vehicle's targets list the name once, with the new bytes, for the right ECU.
            let keys = KeyRing::fixed(crate::keys::OnlineKeys {
                targets: key(10),
                snapshot: key(11),
                timestamp: key(12),
            });
            let bytes = vehicle_file(
                conn,
                &keys,
                "VIN-R",
                "1.targets.json",
                &Policy::default(),
                now,
            );
            assert!(
                bytes.is_err(),
                "not signed before the timestamp is asked for"
            );
            vehicle_file(
                conn,
                &keys,
                "VIN-R",
                "timestamp.json",
                &Policy::default(),
                now,
            )?;
            let bytes = vehicle_file(
                conn,
                &keys,
                "VIN-R",
                "1.targets.json",
                &Policy::default(),
                now,
            )?;
            let targets: Targets = serde_json::from_value(
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["signed"].clone(),
            )
            .unwrap();
            let door = &targets.targets["door.bin"];
            assert_eq!(door.hashes, image(b"door v1 fixed").hashes);
            let ecus = door.custom_value().unwrap()["ecuIdentifiers"]
                .as_object()
                .unwrap();
            assert_eq!(ecus.keys().collect::<Vec<_>>(), ["DOOR-R"]);
            assert_eq!(door.custom_value().unwrap()["correlationId"], new.as_str());
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }
}
