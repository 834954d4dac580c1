//! Assignments: which image each selected ECU is to install, and where each ECU's part
//! stands ([`AssignmentStatus`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uptane_core::hash::Hashes;
use uptane_core::ids::{EcuSerial, HardwareId, Vin};
use uptane_core::metadata::TargetFile;
use uptane_core::time::UtcTime;

use super::events::NewEvent;
use super::page::Page;
use super::tokens::random_token;
use super::{bad, exists, now_text};
use crate::db::DbError;
use crate::error::DirectorError;
use crate::params;
use crate::sql::{Column, Conn, Param, Row, ToParam, Value as SqlValue};

/// An operator's assignment request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignRequest {
    /// Image (target name) in the Image repository.
    pub image: String,
    /// Vehicles; empty means every registered vehicle (then `hardware_id` is required).
    #[serde(default)]
    pub vins: Vec<Vin>,
    /// Only ECUs with this hardware id.
    #[serde(default)]
    pub hardware_id: Option<HardwareId>,
    /// Only these ECU serials.
    #[serde(default)]
    pub ecus: Vec<EcuSerial>,
}

/// Where one ECU's part of an assignment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentStatus {
    /// Created; the vehicle has not fetched targets that include it.
    Pending,
    /// The vehicle fetched the signed targets that include it.
    Delivered,
    /// The ECU reported the image installed.
    Installed,
    /// The ECU reported a failure, or refused it.
    Failed,
    /// Cancelled by an operator, superseded, or the ECU was replaced.
    Cancelled,
}

impl AssignmentStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentStatus::Pending => "pending",
            AssignmentStatus::Delivered => "delivered",
            AssignmentStatus::Installed => "installed",
            AssignmentStatus::Failed => "failed",
            AssignmentStatus::Cancelled => "cancelled",
        }
    }

    /// Whether nothing will change it any more.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            AssignmentStatus::Pending | AssignmentStatus::Delivered
        )
    }
}

impl std::fmt::Display for AssignmentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToParam for AssignmentStatus {
    fn param(&self) -> Param<'_> {
        Param::Text(self.as_str())
    }
}

impl Column for AssignmentStatus {
    fn column(value: SqlValue<'_>) -> Result<Self, String> {
        match value {
            SqlValue::Text("pending") => Ok(AssignmentStatus::Pending),
            SqlValue::Text("delivered") => Ok(AssignmentStatus::Delivered),
            SqlValue::Text("installed") => Ok(AssignmentStatus::Installed),
            SqlValue::Text("failed") => Ok(AssignmentStatus::Failed),
            SqlValue::Text("cancelled") => Ok(AssignmentStatus::Cancelled),
            other => Err(format!("unknown assignment status {other:?}")),
        }
    }
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
    /// Where it stands.
    pub status: AssignmentStatus,
    /// Why, for failed and cancelled.
    pub detail: String,
    /// Last change.
    pub updated_at: String,
    /// Where the next page of a listing starts (`before`).
    pub cursor: i64,
    /// When an operator cancelled it after the vehicle had received it: it is left out of
    /// the vehicle's targets and waits for the ECU's word.
    pub cancel_requested_at: Option<String>,
    /// When the vehicle fetched targets without it (after a cancel request).
    pub withdrawn_at: Option<String>,
}

pub(crate) fn image_hardware_ids(info: &TargetFile) -> Vec<String> {
    info.custom_value()
        .and_then(|c| c.get("hardwareIds"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What an assignment created, and what it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assigned {
    /// Its correlation id.
    pub correlation_id: String,
    /// Its ECU entries.
    pub ecus: Vec<AssignmentEcu>,
    /// The earlier entries of the same ECUs, pending or delivered, that it cancelled (as
    /// they stood before): the operator is told, not left to find out.
    pub superseded: Vec<AssignmentEcu>,
}

/// Creates an assignment of `image` (whose verified Image repository entry is `info`) to
/// the ECUs `request` selects. An ECU's earlier assignment that is still pending or
/// delivered is superseded.
pub fn assign(
    conn: &Conn,
    request: &AssignRequest,
    info: &TargetFile,
    actor: &str,
    now: UtcTime,
) -> Result<Assigned, DirectorError> {
    if request.vins.is_empty() && request.hardware_id.is_none() && request.ecus.is_empty() {
        return Err(bad("name vehicles, ECUs, or a hardware id"));
    }
    // Every ECU refuses a Director targets file with such a name (Uptane G-4), and with it
    // the vehicle's whole update: refused here, before it is assigned.
    uptane_core::ids::check_target_name(&request.image).map_err(|e| bad(e.to_string()))?;
    let hardware_ids = image_hardware_ids(info);
    let release_counter = info
        .custom_value()
        .and_then(|c| c.get("releaseCounter"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    // Both are kept in signed 64-bit columns: a larger one (a supplier's metadata may list
    // it) would make every later read of these ECUs' rows fail, fleet-wide for a hardware id.
    if i64::try_from(info.length).is_err() || i64::try_from(release_counter).is_err() {
        return Err(bad(format!(
            "{}: a length or release counter above 2^63 - 1 cannot be assigned",
            request.image
        )));
    }
    let tx = conn.savepoint()?;
    let ecus_where =
        |filter: Option<(&str, &str)>| -> Result<Vec<(String, String, String, u64)>, DbError> {
            let sql = "SELECT serial, vin, hardware_id, installed_release_counter FROM ecus";
            let map = |r: &Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<u64>(3)?));
            match filter {
                Some((column, value)) => {
                    tx.query(&format!("{sql} WHERE {column} = ?1"), params![value], map)
                }
                None => tx.query(sql, params![], map),
            }
        };
    let gather = || -> Result<Vec<(String, String, String, u64)>, DirectorError> {
        let mut candidates = Vec::new();
        if !request.vins.is_empty() {
            for vin in &request.vins {
                if !exists(&tx, "vehicles", "vin", vin.as_str())? {
                    return Err(DirectorError::NotFound(format!("no vehicle {vin}")));
                }
                candidates.extend(ecus_where(Some(("vin", vin.as_str())))?);
            }
        } else if !request.ecus.is_empty() {
            for serial in &request.ecus {
                let found = ecus_where(Some(("serial", serial.as_str())))?;
                if found.is_empty() {
                    return Err(DirectorError::NotFound(format!("no ECU {serial}")));
                }
                candidates.extend(found);
            }
        } else {
            candidates.extend(ecus_where(None)?);
        }
        Ok(candidates)
    };
    // An assignment or a manifest on another replica at the same time waits for these
    // ECUs (locked in serial order, and the vehicles' counts below in VIN order, so two
    // assignments alone never deadlock), and what is checked below is read again after the
    // locks: current, not what was read before them (an installed release counter raised
    // meanwhile, an ECU replaced).
    let mut locked = gather()?;
    locked.sort();
    locked.dedup();
    for (serial, ..) in &locked {
        tx.lock_row("ecus", "serial", serial)?;
    }
    let mut candidates = gather()?;
    candidates.sort();
    candidates.dedup();
    if !request.ecus.is_empty() {
        let wanted: BTreeSet<&str> = request.ecus.iter().map(EcuSerial::as_str).collect();
        candidates.retain(|c| wanted.contains(c.0.as_str()));
        for serial in &request.ecus {
            if !candidates.iter().any(|c| serial == c.0.as_str()) {
                return Err(DirectorError::NotFound(format!(
                    "no ECU {serial} in the named vehicles"
                )));
            }
        }
    }
    if let Some(hw) = &request.hardware_id {
        candidates.retain(|c| hw == c.2.as_str());
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
    let id: i64 = tx.value(
        "INSERT INTO assignments (correlation_id, created_at, created_by) VALUES (?1, ?2, ?3) RETURNING id",
        params![correlation_id, now_text(now), actor],
    )?;
    let hashes = serde_json::to_string(&info.hashes).expect("hashes serialize");
    let why = format!("superseded by {correlation_id}");
    let mut superseded = Vec::new();
    // Vehicle by vehicle, in VIN order: each entry written counts in its vehicle's
    // `vehicle_contents` row (migration 012), which two assignments on two replicas then take
    // in the same order.
    candidates.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    for (serial, vin, hw, _) in &candidates {
        superseded.extend(open_entries_of(&tx, serial)?);
        cancel_open_entries_of(&tx, serial, &why, now)?;
        tx.execute(
            "INSERT INTO assignment_ecus (assignment_id, vin, ecu_serial, filename, length, hashes, hardware_id, release_counter, status, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![id, vin, serial, request.image, info.length as i64, hashes, hw, release_counter as i64, AssignmentStatus::Pending, now_text(now)],
        )?;
    }
    // The name now stands for other bytes (re-published): open entries for the old bytes
    // can never be approved by the Image repository again, and one targets file cannot
    // list one name with two contents; they end here, saying why.
    let republished = format!(
        "image {} was re-published with other content; superseded by {correlation_id}",
        request.image
    );
    tx.execute(
        "UPDATE assignment_ecus SET status = ?1, detail = ?2, updated_at = ?3
         WHERE filename = ?4 AND (length != ?5 OR hashes != ?6) AND status IN (?7, ?8)",
        params![
            AssignmentStatus::Cancelled,
            republished,
            now_text(now),
            request.image,
            info.length as i64,
            hashes,
            AssignmentStatus::Pending,
            AssignmentStatus::Delivered
        ],
    )?;
    let vins: BTreeSet<&str> = candidates.iter().map(|c| c.1.as_str()).collect();
    let detail = format!(
        "{correlation_id}: {} to {} ECUs in {} vehicles",
        request.image,
        candidates.len(),
        vins.len()
    );
    NewEvent::info("assignment_created", actor, &detail).record(&tx, now)?;
    super::fault::point("assignment-before-commit");
    tx.commit()?;
    let ecus = assignments_by_correlation(conn, &correlation_id)?;
    Ok(Assigned {
        correlation_id,
        ecus,
        superseded,
    })
}

/// ECU `serial`'s entries that are pending or delivered.
fn open_entries_of(conn: &Conn, serial: &str) -> Result<Vec<AssignmentEcu>, DirectorError> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignment_ecus e JOIN assignments a ON a.id = e.assignment_id
         WHERE e.ecu_serial = ?1 AND e.status IN (?2, ?3) ORDER BY a.id"
    );
    Ok(conn.query(
        &sql,
        params![
            serial,
            AssignmentStatus::Pending,
            AssignmentStatus::Delivered
        ],
        assignment_row,
    )?)
}

const ASSIGNMENT_COLUMNS: &str = "a.correlation_id, e.vin, e.ecu_serial, e.filename, e.length, e.hashes, e.hardware_id, e.release_counter, e.status, e.detail, e.updated_at, e.rowid, e.cancel_requested_at, e.withdrawn_at";

fn assignment_row(r: &Row<'_>) -> Result<AssignmentEcu, DbError> {
    let hashes: String = r.get(5)?;
    Ok(AssignmentEcu {
        correlation_id: r.get(0)?,
        vin: r.get(1)?,
        ecu_serial: r.get(2)?,
        filename: r.get(3)?,
        length: r.get(4)?,
        hashes: serde_json::from_str(&hashes).unwrap_or_default(),
        hardware_id: r.get(6)?,
        release_counter: r.get(7)?,
        status: r.get(8)?,
        detail: r.get(9)?,
        updated_at: r.get(10)?,
        cursor: r.get(11)?,
        cancel_requested_at: r.get(12)?,
        withdrawn_at: r.get(13)?,
    })
}

fn assignments_by_correlation(
    conn: &Conn,
    correlation_id: &str,
) -> Result<Vec<AssignmentEcu>, DirectorError> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignment_ecus e JOIN assignments a ON a.id = e.assignment_id WHERE a.correlation_id = ?1 ORDER BY e.vin, e.ecu_serial"
    );
    Ok(conn.query(&sql, params![correlation_id], assignment_row)?)
}

/// The entries of the assignments campaign `campaign_id` made (each for its vehicle), by
/// VIN then ECU serial.
pub(crate) fn campaign_entries(
    conn: &Conn,
    campaign_id: i64,
) -> Result<Vec<AssignmentEcu>, DirectorError> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM campaign_assignments ca
         JOIN assignment_ecus e ON e.assignment_id = ca.assignment_id AND e.vin = ca.vin
         JOIN assignments a ON a.id = e.assignment_id
         WHERE ca.campaign_id = ?1 ORDER BY e.vin, e.ecu_serial"
    );
    Ok(conn.query(&sql, params![campaign_id], assignment_row)?)
}

/// Assignment entries, newest first, optionally of one vehicle.
pub fn assignments(
    conn: &Conn,
    vin: Option<&Vin>,
    page: Page,
) -> Result<Vec<AssignmentEcu>, DirectorError> {
    // One vehicle's entries are found from `assignment_ecus_by_vin`.
    let mut query = page.query(
        &format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM assignment_ecus e JOIN assignments a ON a.id = e.assignment_id WHERE"
        ),
        "e.rowid",
        "a.created_at",
    );
    if let Some(vin) = vin {
        query = query.filter("e.vin = ?", vin.as_str().to_string());
    }
    query.rows(conn, assignment_row)
}

/// How many entries there are in each status (the overview and the metrics).
pub fn entry_counts(conn: &Conn) -> Result<std::collections::BTreeMap<String, i64>, DirectorError> {
    Ok(conn
        .query(
            "SELECT status, COUNT(*) FROM assignment_ecus GROUP BY status",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .into_iter()
        .collect())
}

/// What an operator's cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CancelOutcome {
    /// Entries not yet delivered: cancelled now.
    pub cancelled: usize,
    /// Entries the vehicle already received: left out of its targets from now on, and
    /// closed by the ECU's word (cancelled, or installed when the cancel came too late).
    pub cancel_requested: usize,
}

/// Cancels an assignment: its entries not yet delivered end now; those already delivered
/// are withdrawn from the vehicles' targets and end when each ECU says how its update ended
/// (`record_manifest`). Refuses if every entry has ended already.
pub fn cancel_assignment(
    conn: &mut Conn,
    correlation_id: &str,
    actor: &str,
    now: UtcTime,
) -> Result<CancelOutcome, DirectorError> {
    let tx = conn.savepoint()?;
    if !exists(&tx, "assignments", "correlation_id", correlation_id)? {
        return Err(DirectorError::NotFound(format!(
            "no assignment {correlation_id}"
        )));
    }
    // Each vehicle's row first (in VIN order, so two cancels alone never deadlock): a
    // replica storing metadata it signed before this cancel holds it while it checks that
    // the vehicle's assignments are still what it signed (`metadata::store_vehicle_metadata`),
    // so the two are one after the other, whichever comes first.
    let entries = assignments_by_correlation(&tx, correlation_id)?;
    let mut locked = BTreeSet::new();
    for entry in entries.iter().filter(|e| !e.status.is_final()) {
        if locked.insert(entry.vin.as_str()) {
            tx.lock_row("vehicles", "vin", &entry.vin)?;
        }
    }
    // Read again under the locks: what the listing read may have changed meanwhile.
    let entries = assignments_by_correlation(&tx, correlation_id)?;
    let CancelOutcome {
        cancelled,
        cancel_requested,
    } = cancel_entries(&tx, &entries, "cancelled by operator", now)?;
    if cancelled + cancel_requested == 0 {
        return Err(DirectorError::Conflict(format!(
            "assignment {correlation_id} has no open entries left to cancel: each was installed, \
             failed, cancelled, or has a cancel requested already"
        )));
    }
    NewEvent::info(
        "assignment_cancelled",
        actor,
        &format!(
            "{correlation_id}: {cancelled} ECUs cancelled, {cancel_requested} already delivered \
             asked to cancel"
        ),
    )
    .record(&tx, now)?;
    tx.commit()?;
    Ok(CancelOutcome {
        cancelled,
        cancel_requested,
    })
}

/// Cancels `entries` (those not final; the rest are left), saying `why` of those that end
/// at once: a pending entry its vehicle cannot have seen ends now; one already signed into
/// the targets the vehicle is served ([`served_entries`]), or delivered, is left out of the
/// vehicle's targets from now on and ends on the ECU's word (`cancel_requested_at`,
/// `record_manifest`). The caller holds the vehicles' rows (`lock_row`, in VIN order).
pub(crate) fn cancel_entries(
    tx: &Conn,
    entries: &[AssignmentEcu],
    why: &str,
    now: UtcTime,
) -> Result<CancelOutcome, DirectorError> {
    let mut served: std::collections::HashMap<&str, ServedEntries> =
        std::collections::HashMap::new();
    let mut outcome = CancelOutcome {
        cancelled: 0,
        cancel_requested: 0,
    };
    for entry in entries {
        let delivered = match entry.status {
            AssignmentStatus::Pending => {
                if !served.contains_key(entry.vin.as_str()) {
                    served.insert(&entry.vin, served_entries(tx, &entry.vin)?);
                }
                served[entry.vin.as_str()].contains(&entry.correlation_id, &entry.ecu_serial)
            }
            AssignmentStatus::Delivered => true,
            _ => continue,
        };
        if !delivered {
            outcome.cancelled += tx.execute(
                "UPDATE assignment_ecus SET status = ?1, detail = ?2, updated_at = ?3
                 WHERE rowid = ?4 AND status = ?5",
                params![
                    AssignmentStatus::Cancelled,
                    why,
                    now_text(now),
                    entry.cursor,
                    AssignmentStatus::Pending
                ],
            )?;
        } else if entry.cancel_requested_at.is_none() {
            outcome.cancel_requested += tx.execute(
                "UPDATE assignment_ecus SET status = ?1, cancel_requested_at = ?2, updated_at = ?2
                 WHERE rowid = ?3 AND status IN (?4, ?1) AND cancel_requested_at IS NULL",
                params![
                    AssignmentStatus::Delivered,
                    now_text(now),
                    entry.cursor,
                    AssignmentStatus::Pending
                ],
            )?;
        }
    }
    Ok(outcome)
}

/// The entries (correlation id, ECU serial) signed into the targets vehicle `vin` is
/// served now. The Director signs a vehicle's targets at its timestamp request, so an entry
/// among them may reach the ECU whatever is decided before the vehicle fetches them: a
/// cancel or a campaign's withdrawal treats such a pending entry as delivered, never as
/// one the vehicle cannot see.
pub(crate) fn served_entries(conn: &Conn, vin: &str) -> Result<ServedEntries, DirectorError> {
    let text: Option<String> = conn.query_opt(
        "SELECT targets_entries FROM vehicle_metadata WHERE vin = ?1",
        params![vin],
        |r| r.get(0),
    )?;
    match text {
        None => Ok(ServedEntries::default()),
        Some(text) => ServedEntries::parse(&text),
    }
}

/// The entries (correlation id, ECU serial) of one signed targets file, as its
/// `targets_entries` column keeps them.
#[derive(Debug, Default)]
pub(crate) struct ServedEntries(Vec<(String, String)>);

impl ServedEntries {
    /// Reads the `targets_entries` column (JSON pairs of correlation id and ECU serial).
    pub(crate) fn parse(text: &str) -> Result<Self, DirectorError> {
        serde_json::from_str(text)
            .map(Self)
            .map_err(|e| DirectorError::Internal(format!("stored targets entries: {e}")))
    }

    /// Whether entry (`correlation_id`, `serial`) is among them.
    pub(crate) fn contains(&self, correlation_id: &str, serial: &str) -> bool {
        self.0
            .iter()
            .any(|(c, s)| c == correlation_id && s == serial)
    }
}

/// Notes, of vehicle `vin`'s entries with a cancel requested, those the targets it just
/// fetched (`included`: correlation id, ECU serial) no longer contain: from then on an ECU
/// report silent about such an entry closes it (`record_manifest`). Returns how many.
pub(crate) fn mark_withdrawn(
    conn: &Conn,
    vin: &str,
    included: &ServedEntries,
    now: UtcTime,
) -> Result<usize, DirectorError> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignment_ecus e JOIN assignments a ON a.id = e.assignment_id
         WHERE e.vin = ?1 AND e.status = ?2 AND e.cancel_requested_at IS NOT NULL AND e.withdrawn_at IS NULL"
    );
    let open = conn.query(
        &sql,
        params![vin, AssignmentStatus::Delivered],
        assignment_row,
    )?;
    let mut n = 0;
    for entry in open
        .iter()
        .filter(|e| !included.contains(&e.correlation_id, &e.ecu_serial))
    {
        n += conn.execute(
            "UPDATE assignment_ecus SET withdrawn_at = ?1 WHERE rowid = ?2",
            params![now_text(now), entry.cursor],
        )?;
    }
    Ok(n)
}

/// The entries of vehicle `vin` not yet final, by ECU serial.
fn active_entries_sql() -> String {
    format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignment_ecus e JOIN assignments a ON a.id = e.assignment_id
         WHERE e.vin = ?1 AND e.status IN ('pending', 'delivered') ORDER BY e.ecu_serial"
    )
}

pub(crate) fn active_entries(conn: &Conn, vin: &str) -> Result<Vec<AssignmentEcu>, DirectorError> {
    Ok(conn.query(&active_entries_sql(), params![vin], assignment_row)?)
}

/// How many vehicles' `vehicle_contents` count of the entries their targets list (kept by
/// the triggers of migration 012) differs from the entries themselves, as
/// [`targeted_entries`] selects them: 0 unless a trigger miscounted.
pub fn miscounted_vehicles(conn: &Conn) -> Result<i64, crate::db::DbError> {
    conn.value(
        "SELECT COUNT(*) FROM (SELECT vin, COUNT(*) FILTER (
                 WHERE status IN ('pending', 'delivered') AND cancel_requested_at IS NULL) AS listed
             FROM assignment_ecus GROUP BY vin) e
         FULL JOIN vehicle_contents c ON c.vin = e.vin
         WHERE COALESCE(e.listed, 0) <> COALESCE(c.targeted, 0)",
        &[],
    )
}

/// The entries of vehicle `vin` its targets list: those not final, less those an operator
/// cancelled after delivery (withdrawn, waiting for the ECU's word).
pub(crate) fn targeted_entries(
    conn: &Conn,
    vin: &str,
) -> Result<Vec<AssignmentEcu>, DirectorError> {
    let mut entries = active_entries(conn, vin)?;
    entries.retain(|e| e.cancel_requested_at.is_none());
    Ok(entries)
}

/// Cancels `serial`'s entries that are not final, saying why.
fn cancel_open_entries_of(
    conn: &Conn,
    serial: &str,
    why: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    conn.execute(
        "UPDATE assignment_ecus SET status = ?1, detail = ?2, updated_at = ?3
         WHERE ecu_serial = ?4 AND status IN (?5, ?6)",
        params![
            AssignmentStatus::Cancelled,
            why,
            now_text(now),
            serial,
            AssignmentStatus::Pending,
            AssignmentStatus::Delivered
        ],
    )?;
    Ok(())
}

/// Cancels ECU `serial`'s entries that are not final (the ECU was replaced).
pub(crate) fn cancel_open_entries(
    conn: &Conn,
    serial: &EcuSerial,
    why: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    cancel_open_entries_of(conn, serial.as_str(), why, now)
}

/// Sets the outcome of ECU `serial`'s entry in assignment `correlation_id`.
pub(crate) fn set_outcome(
    conn: &Conn,
    correlation_id: &str,
    serial: &str,
    status: AssignmentStatus,
    detail: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    conn.execute(
        "UPDATE assignment_ecus SET status = ?1, detail = ?2, updated_at = ?3
         WHERE ecu_serial = ?4 AND assignment_id = (SELECT id FROM assignments WHERE correlation_id = ?5)",
        params![
            status,
            super::events::storable(detail),
            now_text(now),
            serial,
            correlation_id
        ],
    )?;
    Ok(())
}

/// Marks delivered the pending entries among `entries` (correlation id, ECU serial): the
/// ones inside the targets a vehicle just fetched, and no others. Returns how many.
pub(crate) fn mark_delivered(
    conn: &Conn,
    vin: &str,
    entries: &ServedEntries,
    now: UtcTime,
) -> Result<usize, DirectorError> {
    let mut n = 0;
    for (correlation_id, serial) in &entries.0 {
        n += conn.execute(
            "UPDATE assignment_ecus SET status = ?1, updated_at = ?2
             WHERE vin = ?3 AND ecu_serial = ?4 AND status = ?5
               AND assignment_id = (SELECT id FROM assignments WHERE correlation_id = ?6)",
            params![
                AssignmentStatus::Delivered,
                now_text(now),
                vin,
                serial,
                AssignmentStatus::Pending,
                correlation_id
            ],
        )?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    /// The query every metadata signing makes is parsed and planned once per connection, not
    /// on every call: SQLite would plan it again each time it is taken from the statement
    /// cache unless the connection keeps its plans (`db.rs` `keep_plans`), which cost a fifth
    /// of signing vehicle metadata.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_active_entries_query_is_planned_once_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("director.db")).unwrap();
        let replanned = db
            .read(|conn| {
                for vin in ["VIN-1", "VIN-2", "VIN-3"] {
                    active_entries(conn, vin)?;
                }
                let stmt = conn
                    .as_sqlite()
                    .expect("SQLite")
                    .prepare_cached(&active_entries_sql())?;
                Ok::<_, DirectorError>(stmt.get_status(rusqlite::StatementStatus::RePrepare))
            })
            .await
            .unwrap();
        assert_eq!(replanned, 0);
    }

    /// A release counter or length a signed 64-bit column cannot hold is refused before it
    /// is kept: every later read of the ECUs' rows would fail.
    #[test]
    fn an_image_whose_numbers_do_not_fit_is_not_assigned() {
        let db = Db::for_tests().unwrap();
        let request = AssignRequest {
            image: "fw.bin".into(),
            vins: vec![Vin::new("VIN-1").unwrap()],
            hardware_id: None,
            ecus: vec![],
        };
        let info = |length: u64, counter: u64| -> TargetFile {
            serde_json::from_value(serde_json::json!({
                "length": length,
                "hashes": {"sha256": "00".repeat(32)},
                "custom": {"releaseCounter": counter, "hardwareIds": ["hw"]},
            }))
            .unwrap()
        };
        let now: UtcTime = "2026-12-06T00:00:00Z".parse().unwrap();
        for info in [info(3, 1 << 63), info(1 << 63, 1)] {
            let err = db
                .call_blocking(|conn| assign(conn, &request, &info, "op", now))
                .unwrap_err();
            assert!(
                matches!(&err, DirectorError::BadRequest(m) if m.contains("above 2^63 - 1")),
                "{err}"
            );
        }
        // In range, it goes on to the vehicle (not registered here).
        let err = db
            .call_blocking(|conn| assign(conn, &request, &info(3, 1), "op", now))
            .unwrap_err();
        assert!(matches!(err, DirectorError::NotFound(_)), "{err}");
    }
}
