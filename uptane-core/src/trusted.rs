//! `TrustedSet<Repo>`: the TUF 1.0.31 client workflow (§5.3–5.6) as a pure state machine.
//!
//! A trusted set lives for one update: it starts from the trusted root and a `now` sampled
//! once, then takes metadata in workflow order (root versions, timestamp, snapshot, targets,
//! delegated targets). Metadata the caller kept from an earlier update goes through the same
//! checks as downloaded metadata, so nothing persisted is trusted without being verified
//! against the current root. The caller does the I/O: which file to fetch next, with which
//! size limit, follows from the state (see [`TrustedSet::snapshot_request`] and friends).
//!
//! Fast-forward recovery (TUF §5.3.11, Uptane §5.4.4.3 step 4): when a new root rotates the
//! timestamp or snapshot keys, a kept timestamp or snapshot no longer verifies against the
//! root in force and is refused by [`TrustedSet::load_local_timestamp`] or
//! [`TrustedSet::load_local_snapshot`], so it is forgotten and cannot block versions that
//! restart from 1.
//!
//! ```
//! use uptane_core::crypto::SigningKey;
//! use uptane_core::sign::{RootBuilder, TimestampBuilder, describe};
//! use uptane_core::trusted::{ImageRepo, Limits, TrustedSet};
//! use uptane_core::verify::Raw;
//! use uptane_core::error::UpdateError;
//!
//! let key = SigningKey::from_seed([7; 32]);
//! let expires = uptane_core::time::parse_expires("2030-01-01T00:00:00Z").unwrap();
//! let now = uptane_core::time::parse_expires("2029-01-01T00:00:00Z").unwrap();
//! let root = RootBuilder::new(1, expires).all_roles(&key).sign(&[&key]).unwrap();
//! let mut set = TrustedSet::<ImageRepo>::new(&Raw::new(root), now, Limits::default()).unwrap();
//!
//! let ts = |v| TimestampBuilder::new(v, expires, describe(1, b"")).sign(&[&key]).unwrap();
//! set.update_timestamp(&Raw::new(ts(2))).unwrap();
//! // A lower version is a rollback attack.
//! let err = set.update_timestamp(&Raw::new(ts(1))).unwrap_err();
//! assert!(matches!(err, UpdateError::Rollback { .. }));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use crate::error::{UpdateError, VerifyError};
use crate::hash::verify_bytes;
use crate::metadata::{MetaFile, Role, Root, Snapshot, TargetFile, Targets, Timestamp};
use crate::time::UtcTime;
use crate::verify::{self, Raw, Verified};

/// Marker: metadata from the Director repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Director {}

/// Marker: metadata from the Image repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRepo {}

/// Size and count limits (endless data attacks). Callers enforce them while streaming; the
/// trusted set checks them again on the bytes it is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest root file.
    pub root: u64,
    /// Largest timestamp file.
    pub timestamp: u64,
    /// Largest snapshot file when timestamp lists no length.
    pub snapshot: u64,
    /// Largest targets file when snapshot lists no length.
    pub targets: u64,
    /// Most new root versions accepted in one update.
    pub max_root_rotations: u64,
    /// Most delegated roles visited in one target search.
    pub max_delegations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            root: 512_000,
            timestamp: 16_384,
            snapshot: 2_000_000,
            targets: 5_000_000,
            max_root_rotations: 256,
            max_delegations: 32,
        }
    }
}

/// What happened to a new timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampUpdate {
    /// It replaced the trusted one.
    Updated,
    /// Same version as the trusted one, which stays (TUF §5.4.3.2).
    Unchanged,
}

/// Whether metadata kept from an earlier update can be used as the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Current: no download needed.
    Current,
    /// Verified, and kept as the reference for rollback checks, but not current (expired, or
    /// not the version the newer metadata names): download the current one.
    Stale(UpdateError),
}

/// Where to fetch a file and how many bytes to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    /// Version for a consistent-snapshot file name, if the repository uses them.
    pub version: Option<u64>,
    /// Largest number of bytes to read.
    pub max_length: u64,
}

struct TrustedTargets {
    meta: Verified<Targets>,
    delegator: String,
}

/// The verified metadata of one repository during one update.
pub struct TrustedSet<Repo> {
    now: UtcTime,
    limits: Limits,
    root: Verified<Root>,
    rotations: u64,
    timestamp: Option<Verified<Timestamp>>,
    snapshot: Option<Verified<Snapshot>>,
    targets: BTreeMap<String, TrustedTargets>,
    _repo: PhantomData<fn() -> Repo>,
}

impl<Repo> std::fmt::Debug for TrustedSet<Repo> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedSet")
            .field("now", &self.now)
            .field("root", &self.root.common.version)
            .field(
                "timestamp",
                &self.timestamp.as_ref().map(|t| t.common.version),
            )
            .field(
                "snapshot",
                &self.snapshot.as_ref().map(|s| s.common.version),
            )
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn check_size(role: &str, bytes: &[u8], limit: u64) -> Result<(), UpdateError> {
    let length = bytes.len() as u64;
    if length > limit {
        return Err(VerifyError::TooLarge {
            role: role.to_string(),
            length,
            limit,
        }
        .into());
    }
    Ok(())
}

fn check_expiry<R: Role>(role: &str, meta: &R, now: UtcTime) -> Result<(), UpdateError> {
    // TUF §5.3.10, §5.4.4, §5.5.6, §5.6.6; Uptane §5.4.4.3-6: freeze attack.
    if meta.common().is_expired(now) {
        return Err(UpdateError::Expired {
            role: role.to_string(),
            expires: meta.common().expires,
        });
    }
    Ok(())
}

fn check_against_meta(
    role: &str,
    referrer: &str,
    bytes: &[u8],
    meta: &MetaFile,
) -> Result<(), UpdateError> {
    verify_bytes(bytes, meta.length, meta.hashes.as_ref()).map_err(|source| {
        UpdateError::DigestMismatch {
            role: role.to_string(),
            referrer: referrer.to_string(),
            source,
        }
    })
}

impl<Repo> TrustedSet<Repo> {
    /// Starts from a trusted root, which must be signed by its own threshold (TUF §5.2).
    /// Its expiry is checked only once no newer root is found ([`Self::update_timestamp`]).
    pub fn new(root: &Raw<Root>, now: UtcTime, limits: Limits) -> Result<Self, UpdateError> {
        check_size("root", root.as_bytes(), limits.root)?;
        let root = verify::verify_root_self_signed(root)?;
        Ok(Self {
            now,
            limits,
            root,
            rotations: 0,
            timestamp: None,
            snapshot: None,
            targets: BTreeMap::new(),
            _repo: PhantomData,
        })
    }

    /// The time this update runs at.
    pub fn now(&self) -> UtcTime {
        self.now
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The trusted root.
    pub fn root(&self) -> &Verified<Root> {
        &self.root
    }

    /// The trusted timestamp, if any.
    pub fn timestamp(&self) -> Option<&Verified<Timestamp>> {
        self.timestamp.as_ref()
    }

    /// The trusted snapshot, if any.
    pub fn snapshot(&self) -> Option<&Verified<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// The trusted top-level targets, if any.
    pub fn targets(&self) -> Option<&Verified<Targets>> {
        self.targets.get("targets").map(|t| &t.meta)
    }

    /// A trusted targets role (top-level `targets` or delegated), however it was reached.
    pub fn role(&self, name: &str) -> Option<&Verified<Targets>> {
        self.targets.get(name).map(|t| &t.meta)
    }

    /// A trusted targets role, only if it was verified against `delegator`'s keys.
    pub fn role_via(&self, name: &str, delegator: &str) -> Option<&Verified<Targets>> {
        self.targets
            .get(name)
            .filter(|t| t.delegator == delegator)
            .map(|t| &t.meta)
    }

    /// Applies root version N+1 (TUF §5.3.4–5.3.8; Uptane §5.4.4.3 step 2).
    pub fn update_root(&mut self, raw: &Raw<Root>) -> Result<(), UpdateError> {
        if self.timestamp.is_some() {
            return Err(UpdateError::OutOfOrder("root"));
        }
        if self.rotations >= self.limits.max_root_rotations {
            return Err(UpdateError::TooManyRootRotations(
                self.limits.max_root_rotations,
            ));
        }
        check_size("root", raw.as_bytes(), self.limits.root)?;
        // §5.3.5: signed by a threshold of the trusted root's keys and of its own.
        let new = verify::verify_root_rotation(&self.root, raw)?;
        let trusted = self.root.common.version;
        let version = new.common.version;
        // §5.3.6 / Uptane §5.4.4.3 step 2.4: the version is exactly N+1.
        if version <= trusted {
            return Err(UpdateError::Rollback {
                role: "root".into(),
                trusted,
                new: version,
            });
        }
        if version != trusted + 1 {
            return Err(UpdateError::VersionMismatch {
                role: "root".into(),
                referrer: "file name".into(),
                expected: trusted + 1,
                found: version,
            });
        }
        self.root = new;
        self.rotations += 1;
        Ok(())
    }

    fn check_final_root(&self) -> Result<(), UpdateError> {
        // §5.3.10: only the final root must be unexpired.
        check_expiry("root", &*self.root, self.now)
    }

    fn verify_top_level<R: Role>(
        &self,
        raw: &Raw<R>,
        role: &str,
    ) -> Result<Verified<R>, UpdateError> {
        let keys = self
            .root
            .role_keys(role)
            .ok_or_else(|| UpdateError::NotDelegated {
                role: role.into(),
                delegator: "root".into(),
            })?;
        Ok(verify::verify_role(raw, role, &self.root.keys, keys)?)
    }

    /// Loads a timestamp kept from an earlier update. It must verify against the current
    /// root; then it is the reference for rollback checks even when it has expired.
    pub fn load_local_timestamp(&mut self, raw: &Raw<Timestamp>) -> Result<Freshness, UpdateError> {
        if self.timestamp.is_some() || self.snapshot.is_some() {
            return Err(UpdateError::OutOfOrder("timestamp"));
        }
        self.check_final_root()?;
        check_size("timestamp", raw.as_bytes(), self.limits.timestamp)?;
        let timestamp = self.verify_top_level(raw, "timestamp")?;
        let freshness = match check_expiry("timestamp", &*timestamp, self.now) {
            Ok(()) => Freshness::Current,
            Err(e) => Freshness::Stale(e),
        };
        self.timestamp = Some(timestamp);
        Ok(freshness)
    }

    /// Applies a downloaded timestamp (TUF §5.4; Uptane §5.4.4.4).
    pub fn update_timestamp(
        &mut self,
        raw: &Raw<Timestamp>,
    ) -> Result<TimestampUpdate, UpdateError> {
        if self.snapshot.is_some() {
            return Err(UpdateError::OutOfOrder("timestamp"));
        }
        self.check_final_root()?;
        check_size("timestamp", raw.as_bytes(), self.limits.timestamp)?;
        let new = self.verify_top_level(raw, "timestamp")?;
        if let Some(trusted) = &self.timestamp {
            // §5.4.3.1: the timestamp version never goes down (rollback attack).
            let (old_v, new_v) = (trusted.common.version, new.common.version);
            if new_v < old_v {
                return Err(UpdateError::Rollback {
                    role: "timestamp".into(),
                    trusted: old_v,
                    new: new_v,
                });
            }
            // §5.4.3.2: an equal version keeps the trusted timestamp.
            if new_v == old_v {
                return Ok(TimestampUpdate::Unchanged);
            }
            // §5.4.3.3: the snapshot version it names never goes down.
            let old_s = trusted.snapshot_meta().map_or(0, |m| m.version);
            let new_s = new.snapshot_meta().map_or(0, |m| m.version);
            if new_s < old_s {
                return Err(UpdateError::Rollback {
                    role: "snapshot".into(),
                    trusted: old_s,
                    new: new_s,
                });
            }
        }
        check_expiry("timestamp", &*new, self.now)?;
        self.timestamp = Some(new);
        Ok(TimestampUpdate::Updated)
    }

    fn final_timestamp(&self) -> Result<&Verified<Timestamp>, UpdateError> {
        let timestamp = self
            .timestamp
            .as_ref()
            .ok_or(UpdateError::OutOfOrder("snapshot"))?;
        check_expiry("timestamp", &**timestamp, self.now)?;
        Ok(timestamp)
    }

    fn snapshot_meta(&self) -> Result<&MetaFile, UpdateError> {
        self.final_timestamp()?
            .snapshot_meta()
            .ok_or(UpdateError::OutOfOrder("snapshot"))
    }

    /// File name version and byte limit for the snapshot the trusted timestamp names.
    pub fn snapshot_request(&self) -> Result<FileRequest, UpdateError> {
        let meta = self.snapshot_meta()?;
        Ok(FileRequest {
            version: self.root.consistent_snapshot.then_some(meta.version),
            max_length: meta.length.unwrap_or(self.limits.snapshot),
        })
    }

    fn check_snapshot_rollback(&self, new: &Snapshot) -> Result<(), UpdateError> {
        let Some(trusted) = &self.snapshot else {
            return Ok(());
        };
        if new.common.version < trusted.common.version {
            return Err(UpdateError::Rollback {
                role: "snapshot".into(),
                trusted: trusted.common.version,
                new: new.common.version,
            });
        }
        // §5.5.5: no targets role disappears or goes down.
        for (name, old) in &trusted.meta {
            let role = name.strip_suffix(".json").unwrap_or(name).to_string();
            match new.meta.get(name) {
                None => return Err(UpdateError::RoleRemoved { role }),
                Some(m) if m.version < old.version => {
                    return Err(UpdateError::Rollback {
                        role,
                        trusted: old.version,
                        new: m.version,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn check_final_snapshot(&self, snapshot: &Snapshot) -> Result<(), UpdateError> {
        check_expiry("snapshot", snapshot, self.now)?;
        let expected = self.snapshot_meta()?.version;
        // §5.5.3: the version timestamp names (mix-and-match attack).
        if snapshot.common.version != expected {
            return Err(UpdateError::VersionMismatch {
                role: "snapshot".into(),
                referrer: "timestamp".into(),
                expected,
                found: snapshot.common.version,
            });
        }
        Ok(())
    }

    /// Loads a snapshot kept from an earlier update: verified against the current root, and
    /// then the reference for rollback checks even when it is not current.
    pub fn load_local_snapshot(&mut self, raw: &Raw<Snapshot>) -> Result<Freshness, UpdateError> {
        if self.snapshot.is_some() || !self.targets.is_empty() {
            return Err(UpdateError::OutOfOrder("snapshot"));
        }
        self.final_timestamp()?;
        check_size("snapshot", raw.as_bytes(), self.limits.snapshot)?;
        let snapshot = self.verify_top_level(raw, "snapshot")?;
        let freshness = match self.check_final_snapshot(&snapshot) {
            Ok(()) => Freshness::Current,
            Err(e) => Freshness::Stale(e),
        };
        self.snapshot = Some(snapshot);
        Ok(freshness)
    }

    /// Applies a downloaded snapshot (TUF §5.5; Uptane §5.4.4.5).
    pub fn update_snapshot(&mut self, raw: &Raw<Snapshot>) -> Result<(), UpdateError> {
        if !self.targets.is_empty() {
            return Err(UpdateError::OutOfOrder("snapshot"));
        }
        let meta = self.snapshot_meta()?;
        check_size(
            "snapshot",
            raw.as_bytes(),
            meta.length.unwrap_or(self.limits.snapshot),
        )?;
        // §5.5.2: length and hashes as timestamp lists them (mix-and-match attack).
        check_against_meta("snapshot", "timestamp", raw.as_bytes(), meta)?;
        let new = self.verify_top_level(raw, "snapshot")?;
        self.check_snapshot_rollback(&new)?;
        self.check_final_snapshot(&new)?;
        self.snapshot = Some(new);
        Ok(())
    }

    fn final_snapshot(&self) -> Result<&Verified<Snapshot>, UpdateError> {
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or(UpdateError::OutOfOrder("targets"))?;
        self.check_final_snapshot(snapshot)?;
        Ok(snapshot)
    }

    fn targets_meta(&self, role: &str) -> Result<&MetaFile, UpdateError> {
        self.final_snapshot()?
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| UpdateError::NotInSnapshot { role: role.into() })
    }

    /// File name version and byte limit for targets role `role` as snapshot lists it.
    pub fn targets_request(&self, role: &str) -> Result<FileRequest, UpdateError> {
        let meta = self.targets_meta(role)?;
        Ok(FileRequest {
            version: self.root.consistent_snapshot.then_some(meta.version),
            max_length: meta.length.unwrap_or(self.limits.targets),
        })
    }

    /// Applies the top-level targets (TUF §5.6; Uptane §5.4.4.6).
    pub fn update_targets(&mut self, raw: &Raw<Targets>) -> Result<(), UpdateError> {
        self.update_delegated_targets(raw, "targets", "root")
    }

    /// Applies targets role `role`, verified against the keys `delegator` gives it (TUF
    /// §5.6.7; Uptane §5.4.4.7). The same role reached through another delegator must be
    /// applied again through that one before [`Self::role_via`] returns it.
    pub fn update_delegated_targets(
        &mut self,
        raw: &Raw<Targets>,
        role: &str,
        delegator: &str,
    ) -> Result<(), UpdateError> {
        let meta = self.targets_meta(role)?;
        check_size(
            role,
            raw.as_bytes(),
            meta.length.unwrap_or(self.limits.targets),
        )?;
        check_against_meta(role, "snapshot", raw.as_bytes(), meta)?;
        let expected = meta.version;
        let new = if delegator == "root" {
            if role != "targets" {
                return Err(UpdateError::NotDelegated {
                    role: role.into(),
                    delegator: delegator.into(),
                });
            }
            self.verify_top_level(raw, "targets")?
        } else {
            let parent = self
                .targets
                .get(delegator)
                .ok_or_else(|| UpdateError::NotDelegated {
                    role: role.into(),
                    delegator: delegator.into(),
                })?;
            let delegations = parent.meta.delegations.as_ref();
            let delegation = delegations
                .and_then(|d| d.roles.iter().find(|r| r.name == role))
                .ok_or_else(|| UpdateError::NotDelegated {
                    role: role.into(),
                    delegator: delegator.into(),
                })?;
            let keys = &delegations.expect("found a role in them").keys;
            verify::verify_role(raw, role, keys, &delegation.role_keys())?
        };
        // §5.6.3: the version snapshot lists (mix-and-match attack).
        if new.common.version != expected {
            return Err(UpdateError::VersionMismatch {
                role: role.into(),
                referrer: "snapshot".into(),
                expected,
                found: new.common.version,
            });
        }
        check_expiry(role, &*new, self.now)?;
        self.targets.insert(
            role.to_string(),
            TrustedTargets {
                meta: new,
                delegator: delegator.to_string(),
            },
        );
        Ok(())
    }
}

/// A target entry found by a delegation search: signed by a role whose every delegation on
/// the path from top-level targets covers this target path.
pub struct TrustedTarget<Repo> {
    path: String,
    info: TargetFile,
    role: String,
    _repo: PhantomData<fn() -> Repo>,
}

impl<Repo> Clone for TrustedTarget<Repo> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            info: self.info.clone(),
            role: self.role.clone(),
            _repo: PhantomData,
        }
    }
}

impl<Repo> PartialEq for TrustedTarget<Repo> {
    fn eq(&self, other: &Self) -> bool {
        (&self.path, &self.info, &self.role) == (&other.path, &other.info, &other.role)
    }
}

impl<Repo> std::fmt::Debug for TrustedTarget<Repo> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedTarget")
            .field("path", &self.path)
            .field("role", &self.role)
            .field("info", &self.info)
            .finish()
    }
}

impl<Repo> TrustedTarget<Repo> {
    /// The target path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Length, hashes and custom fields.
    pub fn info(&self) -> &TargetFile {
        &self.info
    }

    /// The role that signed it.
    pub fn role(&self) -> &str {
        &self.role
    }
}

/// What a [`TargetSearch`] needs next.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchStep<Repo> {
    /// Apply targets role `role` through `delegator` to the trusted set, then step again.
    Load {
        /// The role to load.
        role: String,
        /// The delegator whose keys must verify it.
        delegator: String,
    },
    /// The target, from the first role in search order that lists it.
    Found(TrustedTarget<Repo>),
    /// No role on a permitted path lists it.
    NotFound,
}

/// Pre-order depth-first search of the delegation graph for one target path (TUF §5.6.7,
/// Uptane §5.4.4.7): roles in listed order, a terminating role ends the search after its
/// subtree, each role visited once (cycles), at most `max_delegations` roles.
#[derive(Debug, Clone)]
pub struct TargetSearch {
    path: String,
    stack: Vec<(String, String)>,
    visited: BTreeSet<String>,
}

impl TargetSearch {
    /// A search for `path`, starting at top-level targets.
    pub fn new(path: &str) -> Self {
        Self {
            path: path.to_string(),
            stack: vec![("targets".to_string(), "root".to_string())],
            visited: BTreeSet::new(),
        }
    }

    /// The next step, given what `set` holds now.
    pub fn step<Repo>(&mut self, set: &TrustedSet<Repo>) -> SearchStep<Repo> {
        loop {
            if self.visited.len() > set.limits.max_delegations {
                return SearchStep::NotFound;
            }
            let Some((role, delegator)) = self.stack.last().cloned() else {
                return SearchStep::NotFound;
            };
            if self.visited.contains(&role) {
                self.stack.pop();
                continue;
            }
            let Some(targets) = set.role_via(&role, &delegator) else {
                return SearchStep::Load { role, delegator };
            };
            self.stack.pop();
            if let Some(info) = targets.targets.get(&self.path) {
                return SearchStep::Found(TrustedTarget {
                    path: self.path.clone(),
                    info: info.clone(),
                    role,
                    _repo: PhantomData,
                });
            }
            self.visited.insert(role.clone());
            let mut children = Vec::new();
            for delegation in targets.roles_for_target(&self.path) {
                children.push((delegation.name.clone(), role.clone()));
                if delegation.terminating {
                    self.stack.clear();
                    break;
                }
            }
            self.stack.extend(children.into_iter().rev());
        }
    }
}

#[cfg(test)]
mod tests;
