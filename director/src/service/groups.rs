//! Vehicle groups and attributes. A static group is a list of VINs; a dynamic group is a
//! filter over what vehicles report (hardware ids, installed images) and what operators set
//! on them (attributes), evaluated whenever it is read, so a vehicle registered later is a
//! member as soon as it matches.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uptane_core::ids::{HardwareId, Vin};
use uptane_core::time::UtcTime;

use super::events::NewEvent;
use super::plan::{Name, Zone};
use super::{bad, exists, now_text};
use crate::error::DirectorError;
use crate::params;
use crate::sql::Conn;

/// The attribute whose value is a vehicle's time zone (maintenance windows are local).
pub const TIMEZONE: &str = "timezone";

/// A dynamic group's filter: a vehicle matches when every condition given holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFilter {
    /// One of its ECUs has one of these hardware ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hardware_ids: Vec<HardwareId>,
    /// One of its ECUs reports one of these images installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// It has each of these attributes with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// Values one condition of a filter may list.
pub const MAX_FILTER_VALUES: usize = 64;

impl GroupFilter {
    fn is_empty(&self) -> bool {
        self.hardware_ids.is_empty() && self.images.is_empty() && self.attributes.is_empty()
    }

    fn check(&self) -> Result<(), DirectorError> {
        if self.is_empty() {
            return Err(bad("a dynamic group's filter needs at least one condition"));
        }
        if [
            self.hardware_ids.len(),
            self.images.len(),
            self.attributes.len(),
        ]
        .iter()
        .any(|n| *n > MAX_FILTER_VALUES)
        {
            return Err(bad(format!(
                "a filter lists at most {MAX_FILTER_VALUES} values per condition"
            )));
        }
        for image in &self.images {
            uptane_core::ids::check_target_name(image).map_err(|e| bad(e.to_string()))?;
        }
        for (name, value) in &self.attributes {
            check_attribute(name, value)?;
        }
        Ok(())
    }
}

/// An operator's request for a new group: `vins` (static) or `filter` (dynamic).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// Its name.
    pub name: Name,
    /// The members of a static group.
    #[serde(default)]
    pub vins: Option<Vec<Vin>>,
    /// The filter of a dynamic group.
    #[serde(default)]
    pub filter: Option<GroupFilter>,
}

/// A group as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// `static` or `dynamic`.
    pub kind: &'static str,
    /// A dynamic group's filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<GroupFilter>,
    /// Its members now.
    pub members: usize,
    /// When and by whom it was made.
    pub created_at: String,
    /// Who made it.
    pub created_by: String,
}

/// A group and its members now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDetail {
    /// The group.
    #[serde(flatten)]
    pub info: GroupInfo,
    /// Its members' VINs, in order (at most [`MAX_SHOWN`]).
    pub vins: Vec<String>,
}

/// Members a group's detail lists at most.
pub const MAX_SHOWN: usize = 1000;

/// Members a static group may hold, and VINs one change may name.
pub const MAX_STATIC: usize = 10_000;

fn check_attribute_name(name: &str) -> Result<(), DirectorError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{name:?} is not an attribute name: 1 to 64 of a-z, 0-9, '.', '_', '-'"
        )))
    }
}

fn check_attribute(name: &str, value: &str) -> Result<(), DirectorError> {
    check_attribute_name(name)?;
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(bad(format!(
            "the value of {name} must be 1 to 256 characters, none of them control characters"
        )));
    }
    if name == TIMEZONE {
        Zone::named(value).map_err(bad)?;
    }
    Ok(())
}

/// Creates a group.
pub fn create_group(
    conn: &Conn,
    group: &NewGroup,
    actor: &str,
    now: UtcTime,
) -> Result<GroupDetail, DirectorError> {
    let filter = match (&group.vins, &group.filter) {
        (Some(_), None) => None,
        (None, Some(filter)) => {
            filter.check()?;
            Some(serde_json::to_string(filter).expect("a filter serializes"))
        }
        _ => {
            return Err(bad(
                "a group has either vins (static) or a filter (dynamic)",
            ));
        }
    };
    let tx = conn.savepoint()?;
    if exists(&tx, "vehicle_groups", "name", group.name.as_str())? {
        return Err(DirectorError::Conflict(format!(
            "a group named {} exists",
            group.name
        )));
    }
    let id: i64 = tx.value(
        "INSERT INTO vehicle_groups (name, filter, created_at, created_by) VALUES (?1, ?2, ?3, ?4) RETURNING id",
        params![group.name.as_str(), filter, now_text(now), actor],
    )?;
    if let Some(vins) = &group.vins {
        add_vins(&tx, id, vins)?;
    }
    let kind = if filter.is_some() {
        "dynamic"
    } else {
        "static"
    };
    NewEvent::info(
        "group_created",
        actor,
        &format!("{kind} group {}", group.name),
    )
    .record(&tx, now)?;
    tx.commit()?;
    self::group(conn, &group.name)
}

fn add_vins(conn: &Conn, id: i64, vins: &[Vin]) -> Result<(), DirectorError> {
    if vins.len() > MAX_STATIC {
        return Err(bad(format!("at most {MAX_STATIC} VINs at once")));
    }
    for vin in vins {
        if !exists(conn, "vehicles", "vin", vin.as_str())? {
            return Err(DirectorError::NotFound(format!("no vehicle {vin}")));
        }
        conn.execute(
            "INSERT INTO group_members (group_id, vin) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![id, vin.as_str()],
        )?;
    }
    let count: i64 = conn.value(
        "SELECT COUNT(*) FROM group_members WHERE group_id = ?1",
        params![id],
    )?;
    if count as usize > MAX_STATIC {
        return Err(bad(format!(
            "a static group holds at most {MAX_STATIC} vehicles"
        )));
    }
    Ok(())
}

/// Adds and removes members of static group `name`.
pub fn change_members(
    conn: &Conn,
    name: &Name,
    add: &[Vin],
    remove: &[Vin],
    actor: &str,
    now: UtcTime,
) -> Result<GroupDetail, DirectorError> {
    let tx = conn.savepoint()?;
    let (id, filter) = group_row(&tx, name)?;
    if filter.is_some() {
        return Err(bad(format!(
            "{name} is a dynamic group: its members are the vehicles its filter matches"
        )));
    }
    add_vins(&tx, id, add)?;
    for vin in remove {
        tx.execute(
            "DELETE FROM group_members WHERE group_id = ?1 AND vin = ?2",
            params![id, vin.as_str()],
        )?;
    }
    NewEvent::info(
        "group_changed",
        actor,
        &format!("{name}: {} added, {} removed", add.len(), remove.len()),
    )
    .record(&tx, now)?;
    tx.commit()?;
    group(conn, name)
}

fn group_row(conn: &Conn, name: &Name) -> Result<(i64, Option<GroupFilter>), DirectorError> {
    let row: Option<(i64, Option<String>)> = conn.query_opt(
        "SELECT id, filter FROM vehicle_groups WHERE name = ?1",
        params![name.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (id, filter) = row.ok_or_else(|| DirectorError::NotFound(format!("no group {name}")))?;
    let filter = filter
        .map(|f| serde_json::from_str(&f))
        .transpose()
        .map_err(|e| DirectorError::Internal(format!("group {name}'s stored filter: {e}")))?;
    Ok((id, filter))
}

/// Refuses (404) a group that does not exist, without evaluating its members.
pub fn check_exists(conn: &Conn, name: &Name) -> Result<(), DirectorError> {
    group_row(conn, name).map(|_| ())
}

/// The VINs of group `name` now.
pub fn members(conn: &Conn, name: &Name) -> Result<BTreeSet<String>, DirectorError> {
    let (id, filter) = group_row(conn, name)?;
    let Some(filter) = filter else {
        return Ok(conn
            .query(
                "SELECT vin FROM group_members WHERE group_id = ?1",
                params![id],
                |r| r.get(0),
            )?
            .into_iter()
            .collect());
    };
    let mut matched: Option<BTreeSet<String>> = None;
    let mut narrow = |found: Vec<String>| {
        let found: BTreeSet<String> = found.into_iter().collect();
        matched = Some(match matched.take() {
            Some(m) => m.intersection(&found).cloned().collect(),
            None => found,
        });
    };
    // Each value listed widens its condition; the conditions narrow each other.
    if !filter.hardware_ids.is_empty() {
        let mut found = Vec::new();
        for hardware_id in &filter.hardware_ids {
            found.extend(conn.query(
                "SELECT DISTINCT vin FROM ecus WHERE hardware_id = ?1",
                params![hardware_id.as_str()],
                |r| r.get::<String>(0),
            )?);
        }
        narrow(found);
    }
    if !filter.images.is_empty() {
        let mut found = Vec::new();
        for image in &filter.images {
            found.extend(conn.query(
                "SELECT DISTINCT vin FROM ecus WHERE installed_filename = ?1",
                params![image],
                |r| r.get::<String>(0),
            )?);
        }
        narrow(found);
    }
    for (name, value) in &filter.attributes {
        narrow(conn.query(
            "SELECT vin FROM vehicle_attributes WHERE name = ?1 AND value = ?2",
            params![name, value],
            |r| r.get(0),
        )?);
    }
    Ok(matched.unwrap_or_default())
}

fn info(conn: &Conn, name: &Name) -> Result<(GroupInfo, BTreeSet<String>), DirectorError> {
    let (_, filter) = group_row(conn, name)?;
    let (created_at, created_by): (String, String) = conn.query_row(
        "SELECT created_at, created_by FROM vehicle_groups WHERE name = ?1",
        params![name.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let vins = members(conn, name)?;
    Ok((
        GroupInfo {
            name: name.to_string(),
            kind: if filter.is_some() {
                "dynamic"
            } else {
                "static"
            },
            filter,
            members: vins.len(),
            created_at,
            created_by,
        },
        vins,
    ))
}

/// Group `name` and its members now.
pub fn group(conn: &Conn, name: &Name) -> Result<GroupDetail, DirectorError> {
    let (info, vins) = info(conn, name)?;
    Ok(GroupDetail {
        info,
        vins: vins.into_iter().take(MAX_SHOWN).collect(),
    })
}

/// Groups a listing shows at most.
pub const MAX_LISTED: i64 = 1000;

/// Every group, by name (at most [`MAX_LISTED`]).
pub fn groups(conn: &Conn) -> Result<Vec<GroupInfo>, DirectorError> {
    let names: Vec<String> = conn.query(
        "SELECT name FROM vehicle_groups ORDER BY name",
        params![],
        |r| r.get(0),
    )?;
    names
        .into_iter()
        .map(|n| {
            let name: Name = n.parse().map_err(|e: String| {
                DirectorError::Internal(format!("a stored group name: {e}"))
            })?;
            Ok(info(conn, &name)?.0)
        })
        .collect()
}

/// Sets (`Some`) and removes (`None`) attributes of vehicle `vin`; returns them all.
pub fn set_attributes(
    conn: &Conn,
    vin: &Vin,
    changes: &BTreeMap<String, Option<String>>,
    actor: &str,
    now: UtcTime,
) -> Result<BTreeMap<String, String>, DirectorError> {
    if changes.is_empty() || changes.len() > 64 {
        return Err(bad("name 1 to 64 attributes to set or remove"));
    }
    for (name, value) in changes {
        match value {
            Some(value) => check_attribute(name, value)?,
            None => check_attribute_name(name)?,
        }
    }
    let tx = conn.savepoint()?;
    if !exists(&tx, "vehicles", "vin", vin.as_str())? {
        return Err(DirectorError::NotFound(format!("no vehicle {vin}")));
    }
    for (name, value) in changes {
        match value {
            Some(value) => tx.execute(
                "INSERT INTO vehicle_attributes (vin, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (vin, name) DO UPDATE SET value = ?3",
                params![vin.as_str(), name, value],
            )?,
            None => tx.execute(
                "DELETE FROM vehicle_attributes WHERE vin = ?1 AND name = ?2",
                params![vin.as_str(), name],
            )?,
        };
    }
    let attributes = attributes(&tx, vin.as_str())?;
    if attributes.len() > 64 {
        return Err(bad("a vehicle has at most 64 attributes"));
    }
    let names: Vec<&str> = changes.keys().map(String::as_str).collect();
    NewEvent::info("vehicle_attributes_changed", actor, &names.join(", "))
        .vin(vin.as_str())
        .record(&tx, now)?;
    tx.commit()?;
    Ok(attributes)
}

/// Vehicle `vin`'s attributes.
pub fn attributes(conn: &Conn, vin: &str) -> Result<BTreeMap<String, String>, DirectorError> {
    Ok(conn
        .query(
            "SELECT name, value FROM vehicle_attributes WHERE vin = ?1 ORDER BY name",
            params![vin],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .into_iter()
        .collect())
}
