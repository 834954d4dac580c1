//! `TrustedSet<Repo>`: the verified metadata of one repository during one update, and the
//! checks of the TUF 1.0.31 client workflow (§5.3–5.6) that admit metadata into it.
//!
//! A trusted set lives for one update: it starts from the trusted root and a `now` sampled
//! once, then takes metadata in workflow order (root versions, timestamp, snapshot, targets,
//! delegated targets). Metadata the caller kept from an earlier update goes through the same
//! checks as downloaded metadata, so nothing persisted is trusted without being verified
//! against the current root. Only [`crate::refresh::Refresh`] drives it: that is the one
//! implementation of the workflow's order, file names, limits and loop bounds, and every
//! client is an adapter doing the I/O it asks for.
//!
//! Fast-forward recovery (TUF §5.3.11, Uptane §5.4.4.3 step 4): when a new root rotates the
//! timestamp or snapshot keys, a kept timestamp or snapshot no longer verifies against the
//! root in force and is refused when loaded, so it is forgotten and cannot block versions
//! that restart from 1.

mod root_chain;
mod search;

use std::collections::BTreeMap;
use std::marker::PhantomData;

use crate::error::UpdateError;
use crate::hash::verify_bytes;
use crate::metadata::{MetaFile, Role, Root, Snapshot, Targets, Timestamp};
use crate::time::UtcTime;
use crate::verify::{self, Raw, Verified};

pub use root_chain::RootChain;
use root_chain::check_size;
pub use search::TrustedTarget;
pub(crate) use search::{SearchStep, TargetSearch};

/// Marker: metadata from the Director repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Director {}

/// Marker: metadata from the Image repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRepo {}

/// Marker: a repository's own published metadata, read back by the repository itself
/// ([`Viewpoint::Publisher`]). A distinct type, so that what it admits (expired metadata,
/// online roles signed by an earlier root) can never be taken for a client's view: no
/// Uptane check accepts a `TrustedSet<Published>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {}

/// Size and count limits (endless data attacks). Callers enforce them while streaming; the
/// trusted set checks them again on the bytes it is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest root file.
    pub root: u64,
    /// Largest timestamp file.
    pub timestamp: u64,
    /// Largest snapshot file; a smaller length timestamp lists is the limit instead.
    pub snapshot: u64,
    /// Largest targets file; a smaller length snapshot lists is the limit instead.
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
            // The Image repository's own cap on a targets upload (`--max-targets-bytes`,
            // `--max-delegated-bytes`): what it may publish, a client reads.
            targets: 16 << 20,
            max_root_rotations: 256,
            max_delegations: 32,
        }
    }
}

/// The byte limit for a file `meta` describes: the length it lists, never above `limit`.
/// The listing is signed by the online timestamp or snapshot key, which a server compromise
/// holds; a listed length of 2^62 must not become the limit of the download (endless data).
fn listed_limit(meta: &MetaFile, limit: u64) -> u64 {
    meta.length.map_or(limit, |listed| listed.min(limit))
}

/// Whose view a trusted set takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewpoint {
    /// A client (TUF 1.0.31 §5): every expiry is checked at this time, sampled once per
    /// update.
    Client(UtcTime),
    /// The repository reading back what it published, in order to renew or extend it: no
    /// expiry is checked (expired metadata must stay renewable), and a timestamp or snapshot
    /// signed with the online keys of an earlier root is accepted and reported by
    /// [`TrustedSet::online_keys_current`] (an online key rotation interrupted before
    /// re-signing). Never for clients.
    Publisher,
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
pub(crate) enum Freshness {
    /// Current: no download needed.
    Current,
    /// Verified, and kept as the reference for rollback checks, but not current (expired, or
    /// not the version the newer metadata names): download the current one.
    Stale(UpdateError),
}

/// Where to fetch a file and how many bytes to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRequest {
    /// Version for a consistent-snapshot file name, if the repository uses them.
    pub(crate) version: Option<u64>,
    /// Largest number of bytes to read.
    pub(crate) max_length: u64,
}

struct TrustedTargets {
    meta: Verified<Targets>,
    delegator: String,
}

/// The verified metadata of one repository during one update. Built and fed only by
/// [`crate::refresh::Refresh`]; everything public here reads what was verified.
pub struct TrustedSet<Repo> {
    viewpoint: Viewpoint,
    limits: Limits,
    chain: RootChain,
    timestamp: Option<Verified<Timestamp>>,
    snapshot: Option<Verified<Snapshot>>,
    targets: BTreeMap<String, TrustedTargets>,
    /// The lowest top-level targets version acceptable (the one a client accepted before).
    targets_floor: Option<u64>,
    online_keys_current: bool,
    _repo: PhantomData<fn() -> Repo>,
}

impl<Repo> std::fmt::Debug for TrustedSet<Repo> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedSet")
            .field("viewpoint", &self.viewpoint)
            .field("root", &self.root().common.version)
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

/// Told, at most once, that fetched bytes are exactly what their referrer lists, before the
/// rest of their check (`Refresh::feed_shared_telling`).
pub(crate) type Listed<'a> = Option<Box<dyn FnOnce() + Send + 'a>>;

/// The length and hashes `meta` lists for `role`'s bytes; `listed` is told if they match
/// and the listing names a hash (a length alone does not say what the bytes are).
fn check_against_meta(
    role: &str,
    referrer: &str,
    bytes: &[u8],
    meta: &MetaFile,
    listed: Listed<'_>,
) -> Result<(), UpdateError> {
    verify_bytes(bytes, meta.length, meta.hashes.as_ref()).map_err(|source| {
        UpdateError::DigestMismatch {
            role: role.to_string(),
            referrer: referrer.to_string(),
            source,
        }
    })?;
    if let Some(tell) = listed
        && meta.names_a_hash()
    {
        tell();
    }
    Ok(())
}

impl<Repo> TrustedSet<Repo> {
    /// A client's set: starts from a trusted root, which must be signed by its own
    /// threshold (TUF §5.2). Its expiry is checked only once no newer root is found.
    pub(crate) fn new(root: &Raw<Root>, now: UtcTime, limits: Limits) -> Result<Self, UpdateError> {
        let chain = RootChain::new(root, limits.root, limits.max_root_rotations)?;
        Ok(Self::from_chain(chain, Viewpoint::Client(now), limits))
    }

    /// The repository's own view of what it published ([`Viewpoint::Publisher`]).
    pub(crate) fn for_publisher(root: &Raw<Root>, limits: Limits) -> Result<Self, UpdateError> {
        let chain = RootChain::new(root, limits.root, limits.max_root_rotations)?.keep_earlier();
        Ok(Self::from_chain(chain, Viewpoint::Publisher, limits))
    }

    fn from_chain(chain: RootChain, viewpoint: Viewpoint, limits: Limits) -> Self {
        Self {
            viewpoint,
            limits,
            chain,
            timestamp: None,
            snapshot: None,
            targets: BTreeMap::new(),
            targets_floor: None,
            online_keys_current: true,
            _repo: PhantomData,
        }
    }

    /// Whose view this is.
    pub fn viewpoint(&self) -> Viewpoint {
        self.viewpoint
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The trusted root.
    pub fn root(&self) -> &Verified<Root> {
        self.chain.trusted()
    }

    /// The root chain walked so far.
    pub(crate) fn chain(&self) -> &RootChain {
        &self.chain
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

    /// Every trusted targets role, by name.
    pub fn roles(&self) -> impl Iterator<Item = (&str, &Verified<Targets>)> {
        self.targets
            .iter()
            .map(|(name, t)| (name.as_str(), &t.meta))
    }

    /// A trusted targets role, only if it was verified against `delegator`'s keys.
    pub fn role_via(&self, name: &str, delegator: &str) -> Option<&Verified<Targets>> {
        self.targets
            .get(name)
            .filter(|t| t.delegator == delegator)
            .map(|t| &t.meta)
    }

    /// False when the repository's own view ([`Viewpoint::Publisher`]) found timestamp or
    /// snapshot signed only with the keys of an earlier root: they must be re-signed.
    pub fn online_keys_current(&self) -> bool {
        self.online_keys_current
    }

    /// Refuses top-level targets below `version` from now on (Uptane §5.4.4.1 step 2,
    /// §5.4.4.6: rollback), for clients that keep only the targets version they accepted.
    pub(crate) fn set_targets_floor(&mut self, version: Option<u64>) {
        self.targets_floor = version;
    }

    fn check_targets_floor(&self, role: &str, new: &Targets) -> Result<(), UpdateError> {
        if let Some(floor) = self.targets_floor
            && role == "targets"
            && new.common.version < floor
        {
            return Err(UpdateError::Rollback {
                role: "targets".into(),
                trusted: floor,
                new: new.common.version,
            });
        }
        Ok(())
    }

    fn check_expiry<R: Role>(&self, role: &str, meta: &R) -> Result<(), UpdateError> {
        // TUF §5.3.10, §5.4.4, §5.5.6, §5.6.6; Uptane §5.4.4.3-6: freeze attack.
        match self.viewpoint {
            Viewpoint::Client(now) if meta.common().is_expired(now) => Err(UpdateError::Expired {
                role: role.to_string(),
                expires: meta.common().expires,
            }),
            _ => Ok(()),
        }
    }

    /// Applies root version N+1 (TUF §5.3.4–5.3.8; Uptane §5.4.4.3 step 2), by the rules of
    /// [`RootChain`].
    pub(crate) fn update_root(&mut self, raw: &Raw<Root>) -> Result<(), UpdateError> {
        if self.timestamp.is_some() || !self.targets.is_empty() {
            return Err(UpdateError::OutOfOrder("root"));
        }
        self.chain.apply(raw)
    }

    fn check_final_root(&self) -> Result<(), UpdateError> {
        match self.viewpoint {
            Viewpoint::Client(now) => self.chain.check_final(now),
            Viewpoint::Publisher => Ok(()),
        }
    }

    fn verify_top_level<R: Role>(
        &mut self,
        raw: &Raw<R>,
        role: &str,
    ) -> Result<Verified<R>, UpdateError> {
        let first = verify_with_root(self.root(), raw, role);
        if first.is_err() && role != "targets" && self.viewpoint == Viewpoint::Publisher {
            for earlier in self.chain.earlier() {
                if let Ok(verified) = verify_with_root(earlier, raw, role) {
                    self.online_keys_current = false;
                    return Ok(verified);
                }
            }
        }
        first
    }

    /// Loads a timestamp kept from an earlier update. It must verify against the current
    /// root; then it is the reference for rollback checks even when it has expired.
    pub(crate) fn load_local_timestamp(
        &mut self,
        raw: &Raw<Timestamp>,
    ) -> Result<Freshness, UpdateError> {
        if self.timestamp.is_some() || self.snapshot.is_some() {
            return Err(UpdateError::OutOfOrder("timestamp"));
        }
        self.check_final_root()?;
        check_size("timestamp", raw.as_bytes(), self.limits.timestamp)?;
        let timestamp = self.verify_top_level(raw, "timestamp")?;
        let freshness = match self.check_expiry("timestamp", &*timestamp) {
            Ok(()) => Freshness::Current,
            Err(e) => Freshness::Stale(e),
        };
        self.timestamp = Some(timestamp);
        Ok(freshness)
    }

    /// Applies a downloaded timestamp (TUF §5.4; Uptane §5.4.4.4).
    pub(crate) fn update_timestamp(
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
        self.check_expiry("timestamp", &*new)?;
        self.timestamp = Some(new);
        Ok(TimestampUpdate::Updated)
    }

    fn final_timestamp(&self) -> Result<&Verified<Timestamp>, UpdateError> {
        let timestamp = self
            .timestamp
            .as_ref()
            .ok_or(UpdateError::OutOfOrder("snapshot"))?;
        self.check_expiry("timestamp", &**timestamp)?;
        Ok(timestamp)
    }

    pub(crate) fn snapshot_meta(&self) -> Result<&MetaFile, UpdateError> {
        self.final_timestamp()?
            .snapshot_meta()
            .ok_or(UpdateError::OutOfOrder("snapshot"))
    }

    /// File name version and byte limit for the snapshot the trusted timestamp names.
    pub(crate) fn snapshot_request(&self) -> Result<FileRequest, UpdateError> {
        let meta = self.snapshot_meta()?;
        Ok(FileRequest {
            version: self.root().consistent_snapshot.then_some(meta.version),
            max_length: listed_limit(meta, self.limits.snapshot),
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
        self.check_expiry("snapshot", snapshot)?;
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
    pub(crate) fn load_local_snapshot(
        &mut self,
        raw: &Raw<Snapshot>,
    ) -> Result<Freshness, UpdateError> {
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
    #[cfg(test)]
    pub(crate) fn update_snapshot(&mut self, raw: &Raw<Snapshot>) -> Result<(), UpdateError> {
        self.update_snapshot_telling(raw, None)
    }

    /// [`Self::update_snapshot`], telling `listed` once the bytes are what the timestamp
    /// lists.
    pub(crate) fn update_snapshot_telling(
        &mut self,
        raw: &Raw<Snapshot>,
        listed: Listed<'_>,
    ) -> Result<(), UpdateError> {
        if !self.targets.is_empty() {
            return Err(UpdateError::OutOfOrder("snapshot"));
        }
        let meta = self.snapshot_meta()?;
        check_size(
            "snapshot",
            raw.as_bytes(),
            listed_limit(meta, self.limits.snapshot),
        )?;
        // §5.5.2: length and hashes as timestamp lists them (mix-and-match attack).
        check_against_meta("snapshot", "timestamp", raw.as_bytes(), meta, listed)?;
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

    pub(crate) fn targets_meta(&self, role: &str) -> Result<&MetaFile, UpdateError> {
        self.final_snapshot()?
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| UpdateError::NotInSnapshot { role: role.into() })
    }

    /// Whether the trusted snapshot lists targets role `role`.
    pub(crate) fn lists(&self, role: &str) -> bool {
        self.snapshot
            .as_ref()
            .is_some_and(|s| s.meta.contains_key(&format!("{role}.json")))
    }

    /// File name version and byte limit for targets role `role` as snapshot lists it.
    pub(crate) fn targets_request(&self, role: &str) -> Result<FileRequest, UpdateError> {
        let meta = self.targets_meta(role)?;
        Ok(FileRequest {
            version: self.root().consistent_snapshot.then_some(meta.version),
            max_length: listed_limit(meta, self.limits.targets),
        })
    }

    /// Applies the top-level targets (TUF §5.6; Uptane §5.4.4.6).
    #[cfg(test)]
    pub(crate) fn update_targets(&mut self, raw: &Raw<Targets>) -> Result<(), UpdateError> {
        self.update_delegated_targets(raw, "targets", "root")
    }

    /// Applies targets role `role`, verified against the keys `delegator` gives it (TUF
    /// §5.6.7; Uptane §5.4.4.7). The same role reached through another delegator must be
    /// applied again through that one before [`Self::role_via`] returns it.
    pub(crate) fn update_delegated_targets(
        &mut self,
        raw: &Raw<Targets>,
        role: &str,
        delegator: &str,
    ) -> Result<(), UpdateError> {
        self.update_delegated_targets_telling(raw, role, delegator, None)
    }

    /// [`Self::update_delegated_targets`], telling `listed` once the bytes are what the
    /// snapshot lists.
    pub(crate) fn update_delegated_targets_telling(
        &mut self,
        raw: &Raw<Targets>,
        role: &str,
        delegator: &str,
        listed: Listed<'_>,
    ) -> Result<(), UpdateError> {
        let meta = self.targets_meta(role)?;
        check_size(
            role,
            raw.as_bytes(),
            listed_limit(meta, self.limits.targets),
        )?;
        let expected = meta.version;
        // The hash check against snapshot first (§5.6.2); for a large file it runs beside the
        // signature check on two cores, and a digest mismatch is still what is reported.
        let ((), verified) = crate::both::check_then(
            raw.as_bytes().len(),
            || check_against_meta(role, "snapshot", raw.as_bytes(), meta, listed),
            || self.verify_targets(raw, role, delegator),
        )?;
        let new = verified?;
        // §5.6.3: the version snapshot lists (mix-and-match attack).
        if new.common.version != expected {
            return Err(UpdateError::VersionMismatch {
                role: role.into(),
                referrer: "snapshot".into(),
                expected,
                found: new.common.version,
            });
        }
        self.check_targets_floor(role, &new)?;
        self.check_expiry(role, &*new)?;
        self.insert_targets(role, delegator, new);
        Ok(())
    }

    /// Verifies targets role `role` with the keys `delegator` gives it.
    fn verify_targets(
        &self,
        raw: &Raw<Targets>,
        role: &str,
        delegator: &str,
    ) -> Result<Verified<Targets>, UpdateError> {
        if delegator == "root" {
            if role != "targets" {
                return Err(UpdateError::NotDelegated {
                    role: role.into(),
                    delegator: delegator.into(),
                });
            }
            return verify_with_root(self.root(), raw, "targets");
        }
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
        Ok(verify::verify_role(
            raw,
            role,
            keys,
            &delegation.role_keys(),
        )?)
    }

    fn insert_targets(&mut self, role: &str, delegator: &str, meta: Verified<Targets>) {
        self.targets.insert(
            role.to_string(),
            TrustedTargets {
                meta,
                delegator: delegator.to_string(),
            },
        );
    }
}

impl TrustedSet<Director> {
    /// Partial verification (Uptane §5.4.4.1): the Director targets checked against the root
    /// alone. Signatures, size and expiry as for full verification; the snapshot comparison
    /// of check_targets step 2 is the step partial verification may skip.
    pub(crate) fn update_partial_targets(&mut self, raw: &Raw<Targets>) -> Result<(), UpdateError> {
        if self.timestamp.is_some() || !self.targets.is_empty() {
            return Err(UpdateError::OutOfOrder("targets"));
        }
        self.check_final_root()?;
        check_size("targets", raw.as_bytes(), self.limits.targets)?;
        let new = verify_with_root(self.root(), raw, "targets")?;
        self.check_targets_floor("targets", &new)?;
        self.check_expiry("targets", &*new)?;
        self.insert_targets("targets", "root", new);
        Ok(())
    }
}

/// Verifies top-level role `role` against the keys `root` gives it.
fn verify_with_root<R: Role>(
    root: &Root,
    raw: &Raw<R>,
    role: &str,
) -> Result<Verified<R>, UpdateError> {
    let keys = root
        .role_keys(role)
        .ok_or_else(|| UpdateError::NotDelegated {
            role: role.into(),
            delegator: "root".into(),
        })?;
    Ok(verify::verify_role(raw, role, &root.keys, keys)?)
}

#[cfg(test)]
mod tests;
