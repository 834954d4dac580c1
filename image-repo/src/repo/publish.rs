//! Publishing: uploads checked against the delegation chain and the stored bytes, a role's
//! new version, then snapshot and timestamp, renewed before they expire.

use super::DelegationChain;
use super::RepoState;
use super::check_target_name;
use super::corrupt;
use super::fault_point;
use super::vouch;
use super::{Expiry, Repository};
use crate::error::RepoError;
use crate::fsutil::sync_dir;
use crate::fsutil::write_atomic;
use crate::keys;
use chrono::Duration;
use serde::Serialize;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use uptane_core::crypto::KeyId;
use uptane_core::metadata::MetaFile;
use uptane_core::metadata::TargetFile;
use uptane_core::metadata::Targets;
use uptane_core::metadata::metadata_file_name;
use uptane_core::sign;
use uptane_core::sign::SnapshotBuilder;
use uptane_core::sign::TimestampBuilder;
use uptane_core::sign::describe;
use uptane_core::time::UtcTime;
use uptane_core::time::format_expires;
use uptane_core::verify;
use uptane_core::verify::Raw;
use uptane_core::verify::Verified;

/// Metadata that passed every upload check.
#[derive(Debug)]
pub struct CheckedUpload {
    /// The verified metadata.
    pub metadata: Verified<Targets>,
    /// Targets new or changed since the published version of the role.
    pub new_targets: Vec<(String, TargetFile)>,
}

/// What [`Repository::renew_online`] re-signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing was close to expiry.
    None,
    /// A new timestamp version.
    Timestamp(u64),
    /// New snapshot and timestamp versions.
    Snapshot {
        /// Snapshot version.
        snapshot: u64,
        /// Timestamp version.
        timestamp: u64,
    },
}

/// What a publish produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    /// Role published.
    pub role: String,
    /// Its new version.
    pub version: u64,
    /// Number of targets it lists.
    pub targets: usize,
    /// New snapshot version.
    pub snapshot_version: u64,
    /// New timestamp version.
    pub timestamp_version: u64,
}

/// Signs the next version of top-level targets after `edit`, with the offline targets keys.
pub fn sign_targets_update(
    state: &RepoState,
    offline_keys: &Path,
    expiry: Expiry,
    now: UtcTime,
    edit: impl FnOnce(
        uptane_core::sign::TargetsBuilder,
    ) -> Result<uptane_core::sign::TargetsBuilder, RepoError>,
) -> Result<Vec<u8>, RepoError> {
    let current = state.targets();
    let builder = uptane_core::sign::TargetsBuilder::from_targets(
        current,
        current.common.version + 1,
        now + expiry.targets,
    );
    let targets = edit(builder)?.build();
    let authorized = state
        .root
        .role_keys("targets")
        .ok_or_else(|| corrupt("root", "no targets role"))?;
    let candidates = keys::load_role_keys(offline_keys, "targets")?;
    let signers = keys::signers(&candidates, &authorized.keyids, authorized.threshold);
    if signers.len() < authorized.threshold as usize {
        return Err(RepoError::NotEnoughKeys {
            role: "targets".into(),
            have: signers.len(),
            threshold: authorized.threshold,
        });
    }
    let memory = vouch::memory_in(offline_keys);
    vouch::check(
        "targets",
        current,
        &candidates.iter().collect::<Vec<_>>(),
        &memory,
    )?;
    let bytes = sign::sign(&targets, &signers).map_err(|e| RepoError::Invalid(e.to_string()))?;
    vouch::remember("targets", Some(current), &bytes, &memory)?;
    Ok(bytes)
}

/// Uptane image custom fields for a target.
pub fn image_custom(hardware_ids: &[String], release_counter: u64) -> serde_json::Value {
    serde_json::json!({"hardwareIds": hardware_ids, "releaseCounter": release_counter})
}

/// Refuses `new` (the next version of `role`) if it delegates a role name that another
/// published role delegates with other keys or another threshold. The repository reads each
/// delegated role back through the first delegator that reaches it, and vehicles search the
/// same way: a supplier delegating another supplier's name to its own key would otherwise
/// make that supplier's metadata unverifiable, and with it the repository's whole state
/// (no publish, no renewal of the timestamp, the fleet frozen within a day).
fn check_delegation_names(state: &RepoState, role: &str, new: &Targets) -> Result<(), RepoError> {
    let Some(delegations) = &new.delegations else {
        return Ok(());
    };
    fn signature(d: &uptane_core::metadata::DelegatedRole) -> (BTreeSet<&KeyId>, u32) {
        (d.keyids.iter().collect(), d.threshold)
    }
    for delegated in &delegations.roles {
        for (other, metadata) in &state.roles {
            if other == role {
                continue;
            }
            let Some(theirs) = metadata.delegations.as_ref() else {
                continue;
            };
            if theirs
                .roles
                .iter()
                .any(|d| d.name == delegated.name && signature(d) != signature(delegated))
            {
                return Err(RepoError::DelegationConflict {
                    role: role.to_string(),
                    delegated: delegated.name.clone(),
                    other: other.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The repository stores a target as `<dir>/<digest hex>.<file name>` for each digest listed
/// (consistent snapshots): each must fit a file name's 255 bytes. Refused here (400), not
/// found when the link is made (a 500, with the links made before it left behind).
fn check_stored_name(path: &str, info: &TargetFile) -> Result<(), RepoError> {
    let (dirs, file) = path
        .rsplit_once('/')
        .map_or((None, path), |(d, f)| (Some(d), f));
    let too_long = |len: usize| {
        RepoError::BadTargetName(uptane_core::ids::TargetNameError::SegmentLength(
            path.chars().take(80).collect(),
            len,
        ))
    };
    let prefix = info.hashes.values().map(|h| h.len() + 1).max().unwrap_or(0);
    if prefix + file.len() > 255 {
        return Err(too_long(file.len()));
    }
    match dirs.and_then(|d| d.split('/').find(|segment| segment.len() > 255)) {
        Some(segment) => Err(too_long(segment.len())),
        None => Ok(()),
    }
}

pub(super) fn check_authorized(
    role: &str,
    chain: &DelegationChain,
    path: &str,
    info: &TargetFile,
) -> Result<(), RepoError> {
    // Every delegation on the chain must cover the path (TUF §5.6.7.2).
    if !chain.delegations.iter().all(|d| d.covers(path)) {
        return Err(RepoError::PathNotDelegated {
            role: role.to_string(),
            path: path.to_string(),
        });
    }
    let listed: Vec<&str> = info
        .custom_value()
        .and_then(|c| c.get("hardwareIds"))
        .and_then(|h| h.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for delegation in &chain.delegations {
        let Some(allowed) = &delegation.hardware_ids else {
            continue;
        };
        // Uptane §5.4.4.7 step 4a: a delegation limited to hardware ids covers only those.
        let allowed: BTreeSet<&str> = allowed.iter().map(String::as_str).collect();
        if listed.is_empty() {
            return Err(RepoError::HardwareNotDelegated {
                role: role.to_string(),
                path: path.to_string(),
                hardware_id: String::new(),
            });
        }
        if let Some(hw) = listed.iter().find(|hw| !allowed.contains(*hw)) {
            return Err(RepoError::HardwareNotDelegated {
                role: role.to_string(),
                path: path.to_string(),
                hardware_id: hw.to_string(),
            });
        }
    }
    Ok(())
}

impl Repository {
    /// Verifies uploaded (or locally signed) metadata for targets role `role` against the
    /// published trust chain and the stored blobs, then publishes it with a new snapshot and
    /// timestamp. Refused metadata changes nothing that is served.
    pub fn publish_role(
        &self,
        role: &str,
        bytes: Vec<u8>,
        now: UtcTime,
    ) -> Result<PublishReport, RepoError> {
        let _lock = self.lock()?;
        let state = self.state()?;
        self.publish_role_with(&state, role, bytes, now)
    }

    fn publish_role_with(
        &self,
        state: &RepoState,
        role: &str,
        bytes: Vec<u8>,
        now: UtcTime,
    ) -> Result<PublishReport, RepoError> {
        let checked = self.check_upload(state, role, &bytes, now)?;
        let mut linked_dirs = BTreeSet::new();
        for (path, info) in &checked.new_targets {
            linked_dirs.insert(self.link_target(path, info)?);
        }
        // The links, and every directory made for them: a new `targets/<dir>` is an entry
        // in its parent, lost with a power cut unless the parent is synced too.
        let targets = self.targets_dir();
        let mut to_sync = BTreeSet::new();
        for dir in linked_dirs {
            let mut at = Some(dir.as_path());
            while let Some(dir) = at.filter(|d| d.starts_with(&targets)) {
                to_sync.insert(dir.to_path_buf());
                at = dir.parent();
            }
        }
        if let Some(parent) = targets.parent() {
            to_sync.insert(parent.to_path_buf());
        }
        for dir in to_sync {
            sync_dir(&dir)?;
        }
        fault_point("after-blobs");
        let new = checked.metadata;
        let version = new.common.version;
        write_atomic(
            &self
                .metadata_dir()
                .join(metadata_file_name(role, Some(version))),
            &bytes,
        )?;
        fault_point("after-role");
        let mut changed = BTreeMap::new();
        changed.insert(role.to_string(), describe(version, &bytes));
        let (snapshot_version, timestamp_version) = self.publish_snapshot(state, changed, now)?;
        Ok(PublishReport {
            role: role.to_string(),
            version,
            targets: new.targets.len(),
            snapshot_version,
            timestamp_version,
        })
    }

    /// The checks an upload must pass; returns the verified new metadata and the targets
    /// that are new or changed since the published version.
    pub fn check_upload(
        &self,
        state: &RepoState,
        role: &str,
        bytes: &[u8],
        now: UtcTime,
    ) -> Result<CheckedUpload, RepoError> {
        let raw = Raw::<Targets>::new(bytes.to_vec());
        let (new, chain) = if role == "targets" {
            let keys = state
                .root
                .role_keys("targets")
                .ok_or_else(|| corrupt("root", "no targets role"))?;
            (
                verify::verify_role(&raw, role, &state.root.keys, keys)?,
                None,
            )
        } else {
            let chains = state.chains_to(role);
            if chains.is_empty() {
                return Err(RepoError::UnknownRole(role.to_string()));
            }
            let mut last_err = None;
            let mut accepted = None;
            for chain in chains {
                let delegator = &state.roles[&chain.delegator];
                let keys = &delegator
                    .delegations
                    .as_ref()
                    .expect("a chain passes through delegations")
                    .keys;
                let delegation = chain.delegations.last().expect("a chain is never empty");
                match verify::verify_role(&raw, role, keys, &delegation.role_keys()) {
                    Ok(verified) => {
                        accepted = Some((verified, chain));
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            match accepted {
                Some((verified, chain)) => (verified, Some(chain)),
                None => return Err(last_err.expect("at least one chain was tried").into()),
            }
        };
        if let Some(current) = state.roles.get(role) {
            if new.common.version <= current.common.version {
                return Err(RepoError::VersionNotIncreased {
                    role: role.to_string(),
                    current: current.common.version,
                    new: new.common.version,
                });
            }
        } else if let Some(listed) = state.snapshot.meta.get(&format!("{role}.json"))
            && new.common.version <= listed.version
        {
            return Err(RepoError::VersionNotIncreased {
                role: role.to_string(),
                current: listed.version,
                new: new.common.version,
            });
        }
        check_delegation_names(state, role, &new)?;
        if new.common.is_expired(now) {
            return Err(RepoError::Expired {
                role: role.to_string(),
                expires: format_expires(&new.common.expires),
            });
        }
        let current = state.roles.get(role);
        let mut new_targets = Vec::new();
        for (path, info) in &new.targets {
            check_target_name(path)?;
            check_stored_name(path, info)?;
            if let Some(chain) = &chain {
                check_authorized(role, chain, path, info)?;
            }
            // Entries published before were checked then; only new bytes need a look.
            if current.and_then(|c| c.targets.get(path)) != Some(info) {
                self.check_blob(path, info)?;
                new_targets.push((path.clone(), info.clone()));
            }
        }
        Ok(CheckedUpload {
            metadata: new,
            new_targets,
        })
    }

    /// Publishes a new snapshot listing `changed` roles (others as before), then a new
    /// timestamp; returns their versions.
    pub(super) fn publish_snapshot(
        &self,
        state: &RepoState,
        changed: BTreeMap<String, MetaFile>,
        now: UtcTime,
    ) -> Result<(u64, u64), RepoError> {
        let snapshot_key = self.online_key(state, "snapshot")?;
        let version = state.snapshot.common.version + 1;
        let mut builder = SnapshotBuilder::new(version, now + self.expiry.snapshot);
        for (name, meta) in &state.snapshot.meta {
            let role = name.strip_suffix(".json").unwrap_or(name);
            builder = builder.role(role, meta.clone());
        }
        for (role, meta) in changed {
            builder = builder.role(&role, meta);
        }
        let bytes = builder
            .sign(&[&snapshot_key])
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        write_atomic(
            &self.metadata_dir().join(format!("{version}.snapshot.json")),
            &bytes,
        )?;
        fault_point("after-snapshot");
        let timestamp_version = self.publish_timestamp(state, describe(version, &bytes), now)?;
        Ok((version, timestamp_version))
    }

    /// Publishes a new timestamp naming `snapshot`; returns its version.
    pub(super) fn publish_timestamp(
        &self,
        state: &RepoState,
        snapshot: MetaFile,
        now: UtcTime,
    ) -> Result<u64, RepoError> {
        let key = self.online_key(state, "timestamp")?;
        let version = state.timestamp.common.version + 1;
        let bytes = TimestampBuilder::new(version, now + self.expiry.timestamp, snapshot)
            .sign(&[&key])
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        write_atomic(&self.metadata_dir().join("timestamp.json"), &bytes)?;
        Ok(version)
    }

    /// Re-signs timestamp (and snapshot) when they would expire within `margin`.
    pub fn renew_online(&self, now: UtcTime, margin: Duration) -> Result<Renewal, RepoError> {
        let _lock = self.lock()?;
        let state = self.state()?;
        if !state.online_keys_current || state.snapshot.common.expires - now < margin {
            let (snapshot, timestamp) = self.publish_snapshot(&state, BTreeMap::new(), now)?;
            return Ok(Renewal::Snapshot {
                snapshot,
                timestamp,
            });
        }
        if state.timestamp.common.expires - now < margin {
            let meta = state
                .timestamp
                .snapshot_meta()
                .cloned()
                .ok_or_else(|| corrupt("timestamp", "no snapshot.json"))?;
            return Ok(Renewal::Timestamp(
                self.publish_timestamp(&state, meta, now)?,
            ));
        }
        Ok(Renewal::None)
    }

    /// Signs new top-level targets with the offline keys in `offline_keys` after `edit`, and
    /// publishes them.
    pub fn update_targets(
        &self,
        offline_keys: &Path,
        now: UtcTime,
        edit: impl FnOnce(
            uptane_core::sign::TargetsBuilder,
        ) -> Result<uptane_core::sign::TargetsBuilder, RepoError>,
    ) -> Result<PublishReport, RepoError> {
        let _lock = self.lock()?;
        let state = self.state()?;
        let bytes = sign_targets_update(&state, offline_keys, self.expiry, now, edit)?;
        let report = self.publish_role_with(&state, "targets", bytes, now)?;
        vouch::published("targets", &vouch::memory_in(offline_keys))?;
        Ok(report)
    }
}
