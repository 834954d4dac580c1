//! `Refresh<Repo>`: the TUF client workflow (TUF 1.0.31 §5.3–5.6, Uptane §5.4.4.3–5.4.4.7)
//! as one sans-I/O driver, used by every repository client in the workspace.
//!
//! The driver decides what to read next, from where, and how many bytes to accept; the
//! caller only does the I/O. [`Refresh::next`] says what it needs ([`Step`]): a file kept from
//! an earlier update, a file to download with its byte limit, or nothing more.
//! [`Refresh::feed`] takes the answer and, when it admitted newly downloaded metadata, hands
//! back the verified bytes to keep ([`Accepted`]). The order is the standard's: the root
//! chain (exactly N+1 each time, at most [`Limits::max_root_rotations`] versions, the final
//! root unexpired; [`RootChain`]), timestamp, snapshot, top-level targets, then delegated
//! targets for each target searched ([`Refresh::find`]).
//!
//! The same driver serves three viewpoints: a full-verification client
//! ([`Refresh::new`]), a partial-verification ECU ([`Refresh::partial`]: the Director root
//! chain and targets only, Uptane §5.4.4.1), and a repository reading back what it published
//! ([`Refresh::for_publisher`], a `Refresh<Published>`).
//!
//! ```
//! use std::collections::HashMap;
//! use uptane_core::crypto::SigningKey;
//! use uptane_core::refresh::{Refresh, Step};
//! use uptane_core::sign::{RootBuilder, SnapshotBuilder, TargetsBuilder, TimestampBuilder, describe};
//! use uptane_core::time::parse_expires;
//! use uptane_core::trusted::{ImageRepo, Limits};
//! use uptane_core::verify::Raw;
//!
//! // A repository: one key for every role, one target.
//! let key = SigningKey::from_seed([7; 32]);
//! let expires = parse_expires("2030-01-01T00:00:00Z").unwrap();
//! let now = parse_expires("2029-01-01T00:00:00Z").unwrap();
//! let root = RootBuilder::new(1, expires).all_roles(&key).sign(&[&key]).unwrap();
//! let targets = TargetsBuilder::new(1, expires).target("fw.bin", b"firmware", None);
//! let targets = targets.sign(&[&key]).unwrap();
//! let snapshot = SnapshotBuilder::new(1, expires).role("targets", describe(1, &targets));
//! let snapshot = snapshot.sign(&[&key]).unwrap();
//! let timestamp = TimestampBuilder::new(1, expires, describe(1, &snapshot));
//! let timestamp = timestamp.sign(&[&key]).unwrap();
//! let served = HashMap::from([
//!     ("timestamp.json".to_string(), timestamp),
//!     ("1.snapshot.json".to_string(), snapshot),
//!     ("1.targets.json".to_string(), targets),
//! ]);
//!
//! let mut refresh = Refresh::<ImageRepo>::new(&Raw::new(root), now, Limits::default()).unwrap();
//! refresh.find("fw.bin");
//! // The I/O: here a map; a client downloads over HTTP and keeps what was accepted.
//! loop {
//!     let answer = match refresh.next() {
//!         Step::ReadKept(_) => None,
//!         Step::Fetch { file, .. } => served.get(&file.file_name()).cloned(),
//!         Step::Done => break,
//!     };
//!     refresh.feed(answer).unwrap();
//! }
//! assert_eq!(refresh.target("fw.bin").unwrap().info().length, 8);
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::error::UpdateError;
use crate::ids::HardwareId;
use crate::metadata::{MetaFile, Root, Targets, metadata_file_name};
use crate::time::UtcTime;
use crate::trusted::{
    Director, Freshness, Limits, Listed, Published, SearchStep, TargetSearch, TimestampUpdate,
    TrustedSet, TrustedTarget,
};
use crate::verify::Raw;

/// A metadata file of one role: `N.root.json`, `timestamp.json`, `V.snapshot.json` or
/// `V.<role>.json` (consistent snapshots), or `<role>.json` without a version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetadataFile {
    role: String,
    version: Option<u64>,
}

impl MetadataFile {
    fn new(role: &str, version: Option<u64>) -> Self {
        Self {
            role: role.to_string(),
            version,
        }
    }

    /// The role (`root`, `timestamp`, `snapshot`, `targets` or a delegated role's name).
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The version in the file name, if it has one.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The file name a repository serves it under (role names percent-quoted).
    pub fn file_name(&self) -> String {
        metadata_file_name(&self.role, self.version)
    }
}

impl std::fmt::Display for MetadataFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// What the driver needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The copy of this role kept from an earlier update, if the caller keeps one
    /// (answer `None` otherwise). Kept metadata is verified like downloaded metadata.
    ReadKept(MetadataFile),
    /// Download `file`, reading at most `max_len` bytes (endless data); answer `None` when
    /// the repository says it has no such file (HTTP 403 or 404).
    Fetch {
        /// The file.
        file: MetadataFile,
        /// The most bytes to read.
        max_len: u64,
    },
    /// Nothing more to read until another target is searched.
    Done,
}

/// Newly downloaded metadata the driver admitted: the caller keeps these exact bytes for the
/// next update (TUF §5.3.8, §5.4.5, §5.5.7, §5.6.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The role, and for roots the version.
    pub file: MetadataFile,
    /// The verified bytes.
    pub bytes: Arc<[u8]>,
}

/// A synchronous place metadata comes from (an in-memory bundle, a directory, a test
/// repository), for [`Refresh::run`]. Asynchronous callers write the same three-armed loop
/// over [`Refresh::next`] and [`Refresh::feed`] themselves.
pub trait MetadataSource {
    /// What reading can fail with; it must be able to carry the refresh's refusals.
    type Error: From<UpdateError>;

    /// The copy of `file.role()` kept from an earlier update, if any.
    fn read_kept(&mut self, file: &MetadataFile) -> Result<Option<Vec<u8>>, Self::Error> {
        let _ = file;
        Ok(None)
    }

    /// The file, read up to `max_len` bytes, or `None` when the source does not have it.
    fn fetch(&mut self, file: &MetadataFile, max_len: u64) -> Result<Option<Vec<u8>>, Self::Error>;

    /// Keeps metadata the refresh admitted.
    fn keep(&mut self, accepted: Accepted) -> Result<(), Self::Error> {
        let _ = accepted;
        Ok(())
    }
}

/// Files in memory by file name (`2.root.json`, `timestamp.json`, ...): a repository
/// copied whole, or a test's. Nothing is kept between refreshes.
impl MetadataSource for std::collections::HashMap<String, Vec<u8>> {
    type Error = UpdateError;

    fn fetch(&mut self, file: &MetadataFile, _: u64) -> Result<Option<Vec<u8>>, UpdateError> {
        Ok(self.get(&file.file_name()).cloned())
    }
}

/// Whether a refresh found anything new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The timestamp did not change: the trusted metadata is current as it was.
    Unchanged,
    /// A new timestamp was verified.
    Updated,
}

/// Passes [`Refresh::settle`] may make without I/O (see there).
const SETTLE_BOUND: usize = 1 << 22;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Root,
    KeptTimestamp,
    Timestamp,
    KeptSnapshot,
    Snapshot,
    /// Top-level targets, then the roles searches need (or every role).
    Roles,
    /// Partial verification: Director targets against the root alone.
    PartialTargets,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// Top-level targets, then delegated roles on the way to each searched target.
    Search,
    /// Uptane §5.4.4.1: Director targets only, against the root.
    Partial,
    /// Every delegated role reachable and listed in snapshot (a repository's own view).
    EveryRole,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Load {
    role: String,
    delegator: String,
    kept_tried: bool,
}

/// A step of the walk over every delegated role.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Walk {
    /// Load `role` through `delegator`.
    Visit { role: String, delegator: String },
    /// `role` is trusted: walk its delegations.
    Expand(String),
}

/// Admits partial-verification Director targets (only [`Refresh::partial`] sets it, so only
/// a `Refresh<Director>` has one).
type PartialTargets<Repo> = fn(&mut TrustedSet<Repo>, &Raw<Targets>) -> Result<(), UpdateError>;

/// A search: a target path, and the hardware id it is for (`None`: any hardware).
type SearchKey = (String, Option<String>);

/// One refresh of one repository (see the module documentation).
pub struct Refresh<Repo> {
    set: TrustedSet<Repo>,
    goal: Goal,
    stage: Stage,
    step: Step,
    load: Option<Load>,
    top_level_checked: bool,
    searches: VecDeque<(SearchKey, TargetSearch)>,
    found: BTreeMap<SearchKey, Option<TrustedTarget<Repo>>>,
    walk: Vec<Walk>,
    visited: BTreeSet<String>,
    delegated: Vec<String>,
    outcome: Option<RefreshOutcome>,
    partial_targets: Option<PartialTargets<Repo>>,
    failed: bool,
}

impl<Repo> std::fmt::Debug for Refresh<Repo> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresh")
            .field("set", &self.set)
            .field("goal", &self.goal)
            .field("stage", &self.stage)
            .field("step", &self.step)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<Repo> Refresh<Repo> {
    fn start(set: TrustedSet<Repo>, goal: Goal) -> Result<Self, UpdateError> {
        let mut refresh = Self {
            set,
            goal,
            stage: Stage::Root,
            step: Step::Done,
            load: None,
            top_level_checked: false,
            searches: VecDeque::new(),
            found: BTreeMap::new(),
            walk: Vec::new(),
            visited: BTreeSet::new(),
            delegated: Vec::new(),
            outcome: None,
            partial_targets: None,
            failed: false,
        };
        refresh.settle()?;
        Ok(refresh)
    }

    /// A full-verification client's refresh from `trusted_root`, at `now` (sampled once per
    /// update): root chain, timestamp, snapshot and top-level targets.
    pub fn new(
        trusted_root: &Raw<Root>,
        now: UtcTime,
        limits: Limits,
    ) -> Result<Self, UpdateError> {
        let set = TrustedSet::new(trusted_root, now, limits)?;
        Self::start(set, Goal::Search)
    }

    /// Refuses top-level targets older than `version`, the version this client accepted
    /// before (Uptane §5.4.4.1 step 2, §5.4.4.6: rollback), for clients that keep only the
    /// targets version and not the snapshot that would otherwise catch it. Checked before
    /// the targets are admitted.
    pub fn with_previous_targets_version(mut self, version: Option<u64>) -> Self {
        self.set.set_targets_floor(version);
        self
    }

    /// Searches the delegations for target `path` (TUF §5.6.7) once the top-level metadata
    /// is trusted; [`Self::target`] then has the result. May be called again after
    /// [`Step::Done`] to search another target with the metadata already trusted.
    pub fn find(&mut self, path: &str) {
        self.find_key((path.to_string(), None));
    }

    /// Searches for target `path` for an ECU with hardware id `hardware_id`: a delegation
    /// that lists hardware ids without this one is not followed (Uptane: a supplier's role
    /// covers only the hardware its delegation names). [`Self::target_for_hardware`] then
    /// has the result.
    pub fn find_for_hardware(&mut self, path: &str, hardware_id: &HardwareId) {
        self.find_key((path.to_string(), Some(hardware_id.as_str().to_string())));
    }

    fn find_key(&mut self, key: SearchKey) {
        let queued = self.searches.iter().any(|(k, _)| *k == key);
        if self.goal != Goal::Search || self.found.contains_key(&key) || queued {
            return;
        }
        let search = TargetSearch::new(&key.0, key.1.clone());
        self.searches.push_back((key, search));
        if self.stage == Stage::Done && !self.failed {
            self.stage = Stage::Roles;
            if self.settle().is_err() {
                self.failed = true;
            }
        }
    }

    /// What to do next.
    pub fn next(&self) -> Step {
        if self.failed {
            return Step::Done;
        }
        self.step.clone()
    }

    /// The answer to the [`Step`] last returned by [`Self::next`]: the bytes read or
    /// downloaded, or `None` when there are none. Returns what to keep when newly downloaded
    /// metadata was admitted. After an error the refresh is over: [`Self::next`] says
    /// [`Step::Done`] and nothing more is trusted.
    pub fn feed(&mut self, answer: Option<Vec<u8>>) -> Result<Option<Accepted>, UpdateError> {
        self.feed_shared(answer.map(Arc::from))
    }

    /// [`Self::feed`] for bytes the caller also holds (to write them while they are
    /// checked): an admitted file's [`Accepted::bytes`] are these same bytes, not a copy.
    pub fn feed_shared(
        &mut self,
        answer: Option<Arc<[u8]>>,
    ) -> Result<Option<Accepted>, UpdateError> {
        self.feed_telling(answer, None)
    }

    /// [`Self::feed_shared`], calling `listed` as soon as the bytes are known to be exactly
    /// what their referrer lists (the length and at least one hash: the snapshot as the
    /// timestamp lists it, a targets file as the snapshot does), before their signatures
    /// and contents are checked: an I/O layer may then write them to disk beside that check,
    /// and keep them if they are admitted. `listed` is not called for a root or a
    /// timestamp, for a listing without a hash, or for bytes other than those listed, and
    /// it is called or dropped before this returns.
    pub fn feed_shared_telling(
        &mut self,
        answer: Option<Arc<[u8]>>,
        listed: impl FnOnce() + Send,
    ) -> Result<Option<Accepted>, UpdateError> {
        self.feed_telling(answer, Some(Box::new(listed)))
    }

    fn feed_telling(
        &mut self,
        answer: Option<Arc<[u8]>>,
        listed: Listed<'_>,
    ) -> Result<Option<Accepted>, UpdateError> {
        if self.failed {
            return Err(UpdateError::OutOfOrder("refresh"));
        }
        let result = self.take(answer, listed).and_then(|accepted| {
            self.settle()?;
            Ok(accepted)
        });
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// How the trusted metadata describes the file the last [`Step::Fetch`] asks for: the
    /// length and hashes its referrer lists (the timestamp for the snapshot, the snapshot for
    /// a targets role), or `None` for a root or the timestamp, which nothing describes. An
    /// I/O layer may use it to decide early whether bytes are worth writing to disk; what the
    /// refresh admits is decided by [`Self::feed`], which checks the same listing itself.
    pub fn listed(&self) -> Option<&MetaFile> {
        let Step::Fetch { file, .. } = &self.step else {
            return None;
        };
        match file.role() {
            "root" | "timestamp" => None,
            "snapshot" => self.set.snapshot_meta().ok(),
            role => self.set.targets_meta(role).ok(),
        }
    }

    /// Drives the refresh until [`Step::Done`] over a synchronous `source`.
    pub fn run<S: MetadataSource>(&mut self, source: &mut S) -> Result<(), S::Error> {
        // Each pass feeds one answer; the refresh bounds how many it asks for.
        loop {
            let answer = match self.next() {
                Step::ReadKept(file) => source.read_kept(&file)?,
                Step::Fetch { file, max_len } => source.fetch(&file, max_len)?,
                Step::Done => return Ok(()),
            };
            if let Some(accepted) = self.feed(answer)? {
                source.keep(accepted)?;
            }
        }
    }

    /// The verified metadata. After an error it holds only what passed every check before
    /// the refusal (a check that fails admits nothing); callers stop at the error anyway.
    pub fn trusted(&self) -> &TrustedSet<Repo> {
        &self.set
    }

    /// The verified metadata, ending the refresh.
    pub fn into_trusted(self) -> TrustedSet<Repo> {
        self.set
    }

    /// Whether the timestamp changed, once it was read.
    pub fn outcome(&self) -> Option<RefreshOutcome> {
        self.outcome
    }

    /// The target found for `path` by [`Self::find`]: `None` when no role on a permitted
    /// path lists it (or it was not searched).
    pub fn target(&self, path: &str) -> Option<&TrustedTarget<Repo>> {
        self.found
            .get(&(path.to_string(), None))
            .and_then(Option::as_ref)
    }

    /// The target found for `path` by [`Self::find_for_hardware`] with `hardware_id`.
    pub fn target_for_hardware(
        &self,
        path: &str,
        hardware_id: &HardwareId,
    ) -> Option<&TrustedTarget<Repo>> {
        self.found
            .get(&(path.to_string(), Some(hardware_id.as_str().to_string())))
            .and_then(Option::as_ref)
    }

    /// The delegated roles loaded so far, in the order loaded (what a full-verification
    /// Secondary needs besides the top-level metadata, Uptane §5.4.2.6).
    pub fn delegated_roles(&self) -> &[String] {
        &self.delegated
    }

    fn root_step(&self) -> Step {
        let chain = self.set.chain();
        Step::Fetch {
            file: MetadataFile::new("root", Some(chain.next_version())),
            max_len: chain.max_length(),
        }
    }

    fn after_root(&self) -> Stage {
        match self.goal {
            Goal::Search => Stage::KeptTimestamp,
            Goal::Partial => Stage::PartialTargets,
            Goal::EveryRole => Stage::Timestamp,
        }
    }

    /// Applies an answer to the pending step.
    fn take(
        &mut self,
        answer: Option<Arc<[u8]>>,
        listed: Listed<'_>,
    ) -> Result<Option<Accepted>, UpdateError> {
        let step = std::mem::replace(&mut self.step, Step::Done);
        match step {
            Step::Done => Err(UpdateError::OutOfOrder("refresh")),
            Step::ReadKept(file) => {
                self.take_kept(&file, answer.map(Raw::new));
                Ok(None)
            }
            Step::Fetch { file, .. } => {
                let Some(bytes) = answer else {
                    if self.stage == Stage::Root {
                        // TUF §5.3.3: no N+1 means the trusted root is the newest.
                        self.stage = self.after_root();
                        return Ok(None);
                    }
                    return Err(UpdateError::Missing {
                        file: file.file_name(),
                    });
                };
                let keep = self.take_fetched(Arc::clone(&bytes), listed)?;
                Ok(keep.then_some(Accepted { file, bytes }))
            }
        }
    }

    /// Kept metadata: verified like downloaded metadata; if it does not verify or is not
    /// current, it is forgotten or kept only as the rollback reference, and the current
    /// version is downloaded.
    fn take_kept(&mut self, file: &MetadataFile, kept: Option<Raw<()>>) {
        match self.stage {
            Stage::KeptTimestamp => {
                // A kept timestamp that no longer verifies (its key rotated) is forgotten.
                if let Some(raw) = kept {
                    let _ = self.set.load_local_timestamp(&raw.cast());
                }
                self.stage = Stage::Timestamp;
            }
            Stage::KeptSnapshot => {
                let current = kept.is_some_and(|raw| {
                    matches!(
                        self.set.load_local_snapshot(&raw.cast()),
                        Ok(Freshness::Current)
                    )
                });
                if current {
                    self.load = Some(top_level_load());
                    self.stage = Stage::Roles;
                } else {
                    self.stage = Stage::Snapshot;
                }
            }
            Stage::Roles => {
                let Some(load) = self.load.as_mut() else {
                    return;
                };
                load.kept_tried = true;
                let (role, delegator) = (load.role.clone(), load.delegator.clone());
                if let Some(raw) = kept
                    && role == file.role
                    && self
                        .set
                        .update_delegated_targets(&raw.cast(), &role, &delegator)
                        .is_ok()
                {
                    self.role_loaded();
                }
            }
            _ => {}
        }
    }

    /// Downloaded metadata; says whether the caller keeps it (an unchanged timestamp is not
    /// written again).
    fn take_fetched(&mut self, bytes: Arc<[u8]>, listed: Listed<'_>) -> Result<bool, UpdateError> {
        match self.stage {
            Stage::Root => {
                self.set.update_root(&Raw::new(bytes))?;
            }
            Stage::Timestamp => {
                let update = self.set.update_timestamp(&Raw::new(bytes))?;
                self.stage = match self.goal {
                    Goal::EveryRole => Stage::Snapshot,
                    _ => Stage::KeptSnapshot,
                };
                let outcome = match update {
                    TimestampUpdate::Updated => RefreshOutcome::Updated,
                    TimestampUpdate::Unchanged => RefreshOutcome::Unchanged,
                };
                self.outcome = Some(outcome);
                return Ok(outcome == RefreshOutcome::Updated);
            }
            Stage::Snapshot => {
                self.set.update_snapshot_telling(&Raw::new(bytes), listed)?;
                self.load = Some(top_level_load());
                self.stage = Stage::Roles;
            }
            Stage::Roles => {
                let load = self
                    .load
                    .clone()
                    .ok_or(UpdateError::OutOfOrder("targets"))?;
                self.set.update_delegated_targets_telling(
                    &Raw::new(bytes),
                    &load.role,
                    &load.delegator,
                    listed,
                )?;
                self.role_loaded();
            }
            Stage::PartialTargets => {
                let admit = self
                    .partial_targets
                    .ok_or(UpdateError::OutOfOrder("targets"))?;
                admit(&mut self.set, &Raw::new(bytes))?;
                self.stage = Stage::Done;
            }
            _ => return Err(UpdateError::OutOfOrder("refresh")),
        }
        Ok(true)
    }

    /// The role being loaded is now trusted.
    fn role_loaded(&mut self) {
        if let Some(load) = self.load.take()
            && load.role != "targets"
            && !self.delegated.contains(&load.role)
        {
            self.delegated.push(load.role);
        }
    }

    /// Works out the next step, doing every step that needs no I/O (roles already trusted,
    /// searches that end) on the way.
    fn settle(&mut self) -> Result<(), UpdateError> {
        // Each pass either returns a step or finishes a role, a search or a walk entry, so
        // this ends; the bound only guards against a bug turning it into a busy loop.
        for _ in 0..SETTLE_BOUND {
            let step = match self.stage {
                Stage::Root if self.set.chain().can_rotate() => Some(self.root_step()),
                Stage::Root => {
                    // TUF §5.3.3: past the cap, the chain stops where it is.
                    self.stage = self.after_root();
                    None
                }
                Stage::KeptTimestamp => Some(Step::ReadKept(MetadataFile::new("timestamp", None))),
                Stage::Timestamp => Some(Step::Fetch {
                    file: MetadataFile::new("timestamp", None),
                    max_len: self.set.limits().timestamp,
                }),
                Stage::KeptSnapshot => Some(Step::ReadKept(MetadataFile::new("snapshot", None))),
                Stage::Snapshot => {
                    let request = self.set.snapshot_request()?;
                    Some(Step::Fetch {
                        file: MetadataFile::new("snapshot", request.version),
                        max_len: request.max_length,
                    })
                }
                Stage::Roles => self.role_step()?,
                Stage::PartialTargets => Some(Step::Fetch {
                    file: MetadataFile::new("targets", None),
                    max_len: self.set.limits().targets,
                }),
                Stage::Done => Some(Step::Done),
            };
            if let Some(step) = step {
                self.step = step;
                return Ok(());
            }
        }
        Err(UpdateError::OutOfOrder("refresh"))
    }

    /// The next step while loading targets roles: `None` when progress was made without I/O.
    fn role_step(&mut self) -> Result<Option<Step>, UpdateError> {
        if let Some(load) = &self.load {
            if self.set.role_via(&load.role, &load.delegator).is_some() {
                self.role_loaded();
                return Ok(None);
            }
            if !load.kept_tried && self.goal == Goal::Search {
                return Ok(Some(Step::ReadKept(MetadataFile::new(&load.role, None))));
            }
            let request = self.set.targets_request(&load.role)?;
            return Ok(Some(Step::Fetch {
                file: MetadataFile::new(&load.role, request.version),
                max_len: request.max_length,
            }));
        }
        if !self.top_level_checked {
            self.top_level_checked = true;
            if self.goal == Goal::EveryRole {
                self.walk.push(Walk::Expand("targets".into()));
            }
        }
        match self.goal {
            Goal::EveryRole => self.walk_step(),
            _ => Ok(self.search_step()),
        }
    }

    fn search_step(&mut self) -> Option<Step> {
        let Some((key, search)) = self.searches.front_mut() else {
            self.stage = Stage::Done;
            return None;
        };
        match search.step(&self.set) {
            SearchStep::Load { role, delegator } => {
                self.load = Some(Load {
                    role,
                    delegator,
                    kept_tried: false,
                });
                return None;
            }
            SearchStep::Found(target) => {
                let key = key.clone();
                self.found.insert(key, Some(target));
            }
            SearchStep::NotFound => {
                let key = key.clone();
                self.found.insert(key, None);
            }
        }
        self.searches.pop_front();
        None
    }

    /// A repository's own view: every delegated role reachable from top-level targets,
    /// depth first in delegation order, each once, verified through the first delegator
    /// that reaches it; a role snapshot does not list (delegated, never published) is
    /// skipped.
    fn walk_step(&mut self) -> Result<Option<Step>, UpdateError> {
        match self.walk.pop() {
            None => self.stage = Stage::Done,
            Some(Walk::Expand(role)) => {
                let delegations = self
                    .set
                    .role(&role)
                    .and_then(|t| t.delegations.as_ref())
                    .map(|d| d.roles.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
                    .unwrap_or_default();
                for name in delegations.into_iter().rev() {
                    self.walk.push(Walk::Visit {
                        role: name,
                        delegator: role.clone(),
                    });
                }
            }
            Some(Walk::Visit { role, delegator }) => {
                if self.visited.contains(&role) || !self.set.lists(&role) {
                    return Ok(None);
                }
                if self.visited.len() >= self.set.limits().max_delegations {
                    return Err(UpdateError::TooManyDelegations(
                        self.set.limits().max_delegations,
                    ));
                }
                self.visited.insert(role.clone());
                self.walk.push(Walk::Expand(role.clone()));
                self.load = Some(Load {
                    role,
                    delegator,
                    kept_tried: true,
                });
            }
        }
        Ok(None)
    }
}

fn top_level_load() -> Load {
    Load {
        role: "targets".into(),
        delegator: "root".into(),
        kept_tried: false,
    }
}

impl Refresh<Director> {
    /// Partial verification (Uptane §5.4.4.1): the Director root chain from `trusted_root`,
    /// then the Director targets checked against the final root alone, at `now`.
    pub fn partial(
        trusted_root: &Raw<Root>,
        now: UtcTime,
        limits: Limits,
    ) -> Result<Self, UpdateError> {
        let set = TrustedSet::new(trusted_root, now, limits)?;
        let mut refresh = Self::start(set, Goal::Partial)?;
        refresh.partial_targets = Some(TrustedSet::<Director>::update_partial_targets);
        Ok(refresh)
    }
}

impl Refresh<Published> {
    /// A repository reading back what it published ([`crate::trusted::Viewpoint::Publisher`]):
    /// the root chain from version 1, timestamp, snapshot, and every targets role reachable
    /// from top-level targets and listed in snapshot. What it trusts is a
    /// `TrustedSet<Published>`, which no client check accepts.
    pub fn for_publisher(first_root: &Raw<Root>, limits: Limits) -> Result<Self, UpdateError> {
        let set = TrustedSet::for_publisher(first_root, limits)?;
        Self::start(set, Goal::EveryRole)
    }
}

#[cfg(test)]
mod tests;
