//! The repository on disk: layout, state loading, verification of uploads, and publishing.
//!
//! ```text
//! DIR/metadata/   N.root.json, V.targets.json, V.<quoted role>.json, V.snapshot.json, timestamp.json
//! DIR/targets/    <dir>/<sha256>.<name> and <dir>/<sha512>.<name>: hard links into blobs/
//! DIR/blobs/      <sha256> (content) and <sha256>.json (length and hashes): not served
//! DIR/keys/       snapshot.pem, timestamp.pem (online keys, mode 0600, not served)
//! DIR/tokens.json upload tokens, stored as SHA-256 hashes
//! ```
//!
//! Publishing writes blobs and links first, then the role's new versioned file, then a new
//! snapshot, and replaces `timestamp.json` last. Clients see nothing new until that rename,
//! so a `kill -9` at any point leaves the previous, complete state published.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::Duration;
use serde::{Deserialize, Serialize};
use uptane_core::crypto::SigningKey;
use uptane_core::error::{UpdateError, VerifyError};
use uptane_core::hash::{Hashes, standard_hashes};
pub use uptane_core::metadata::quote_role;
use uptane_core::metadata::{
    DelegatedRole, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp, metadata_file_name,
};
use uptane_core::refresh::{MetadataFile, MetadataSource, Refresh};
use uptane_core::sign::{self, SnapshotBuilder, TimestampBuilder, describe};
use uptane_core::time::{UtcTime, format_expires};
use uptane_core::trusted::{ImageRepo, Limits, RootChain};
use uptane_core::verify::{self, Raw, Verified};

use crate::error::RepoError;
use crate::fsutil::{sync_dir, write_atomic};
use crate::keys;

/// How long each role's metadata stays valid when (re)signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Root.
    pub root: Duration,
    /// Top-level and delegated targets.
    pub targets: Duration,
    /// Snapshot.
    pub snapshot: Duration,
    /// Timestamp.
    pub timestamp: Duration,
}

impl Default for Expiry {
    fn default() -> Self {
        Self {
            root: Duration::days(365),
            targets: Duration::days(90),
            snapshot: Duration::days(7),
            timestamp: Duration::days(1),
        }
    }
}

/// Key counts and thresholds for a new repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    /// Number of root keys.
    pub root_keys: usize,
    /// Root threshold.
    pub root_threshold: u32,
    /// Number of targets keys.
    pub targets_keys: usize,
    /// Targets threshold.
    pub targets_threshold: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            root_keys: 1,
            root_threshold: 1,
            targets_keys: 1,
            targets_threshold: 1,
        }
    }
}

/// Length and hashes of a stored blob, computed when its bytes were received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// Length in bytes.
    pub length: u64,
    /// sha256 and sha512.
    pub hashes: Hashes,
}

/// The published metadata, verified.
#[derive(Debug)]
pub struct RepoState {
    /// Latest root.
    pub root: Verified<Root>,
    /// Current timestamp.
    pub timestamp: Verified<Timestamp>,
    /// Current snapshot.
    pub snapshot: Verified<Snapshot>,
    /// Every targets role reachable from top-level targets, by name.
    pub roles: BTreeMap<String, Verified<Targets>>,
    /// False when the published timestamp or snapshot is signed by keys of an earlier root
    /// only (an online key rotation not yet followed by re-signing): they must be re-signed.
    pub online_keys_current: bool,
}

/// A chain of delegations from top-level targets down to a role, and the keys of the last
/// delegator.
#[derive(Debug, Clone)]
pub struct DelegationChain {
    /// Delegations along the chain, top first; the last is the role itself.
    pub delegations: Vec<DelegatedRole>,
    /// Name of the role that delegates to the target role.
    pub delegator: String,
}

fn corrupt(role: &str, reason: impl ToString) -> RepoError {
    RepoError::Corrupt {
        role: role.to_string(),
        reason: reason.to_string(),
    }
}

/// Limits for reading back the repository's own published state. Generous, since it is
/// what this repository wrote, but finite, so a planted file cannot make it read forever.
const OWN_STATE_LIMITS: Limits = Limits {
    root: 4 << 20,
    timestamp: 1 << 20,
    snapshot: 256 << 20,
    targets: 1 << 30,
    max_root_rotations: 1 << 20,
    max_delegations: 1 << 20,
};

/// Reads the published files through a caller's `read(file name in metadata/)`, remembering
/// the last one read (what a refusal is about).
struct Published<F> {
    read: F,
    last: String,
}

impl<F> MetadataSource for Published<F>
where
    F: Fn(&str) -> Result<Option<Vec<u8>>, RepoError>,
{
    type Error = RepoError;

    fn fetch(&mut self, file: &MetadataFile, _: u64) -> Result<Option<Vec<u8>>, RepoError> {
        self.last = file.file_name();
        (self.read)(&self.last)
    }
}

impl RepoState {
    /// Loads and verifies the published state through `read(file name in metadata/)`, as a
    /// client would (`uptane_core::refresh::Refresh`), from the repository's own viewpoint:
    /// expiry is not checked, since a repository must be able to renew expired metadata,
    /// and timestamp or snapshot still signed with an earlier root's online keys are
    /// accepted so that they can be re-signed.
    pub fn load(
        read: impl Fn(&str) -> Result<Option<Vec<u8>>, RepoError>,
    ) -> Result<Self, RepoError> {
        let first = read("1.root.json")?.ok_or_else(|| {
            RepoError::Layout("no 1.root.json: not an initialized repository".into())
        })?;
        let mut refresh = Refresh::<ImageRepo>::for_publisher(&Raw::new(first), OWN_STATE_LIMITS)
            .map_err(|e| corrupt("root", e))?;
        let mut files = Published {
            read,
            last: String::new(),
        };
        // A file the published metadata names but that is missing or does not verify means
        // the repository is corrupt; I/O errors stay what they are.
        refresh.run(&mut files).map_err(|e| match e {
            RepoError::Update(e) => corrupt(&files.last, e),
            other => other,
        })?;
        let set = refresh.into_trusted();
        let missing = |role: &str| corrupt(role, "missing");
        Ok(Self {
            root: set.root().clone(),
            timestamp: set
                .timestamp()
                .cloned()
                .ok_or_else(|| missing("timestamp"))?,
            snapshot: set.snapshot().cloned().ok_or_else(|| missing("snapshot"))?,
            roles: set
                .roles()
                .map(|(name, meta)| (name.to_string(), meta.clone()))
                .collect(),
            online_keys_current: set.online_keys_current(),
        })
    }

    /// The top-level targets.
    pub fn targets(&self) -> &Verified<Targets> {
        &self.roles["targets"]
    }

    /// Every chain of delegations from top-level targets to `role` (cycles cut).
    pub fn chains_to(&self, role: &str) -> Vec<DelegationChain> {
        let mut found = Vec::new();
        let mut stack: Vec<(String, Vec<DelegatedRole>)> =
            vec![("targets".to_string(), Vec::new())];
        let mut steps = 0;
        while let Some((name, path)) = stack.pop() {
            steps += 1;
            if steps > 10_000 {
                break;
            }
            let Some(meta) = self.roles.get(&name) else {
                continue;
            };
            let Some(delegations) = &meta.delegations else {
                continue;
            };
            for delegation in &delegations.roles {
                if path.iter().any(|d| d.name == delegation.name) {
                    continue;
                }
                let mut chain = path.clone();
                chain.push(delegation.clone());
                if delegation.name == role {
                    found.push(DelegationChain {
                        delegations: chain,
                        delegator: name.clone(),
                    });
                } else {
                    stack.push((delegation.name.clone(), chain));
                }
            }
        }
        found
    }
}

/// Checks a target path is safe to store: relative, no empty, `.` or `..` segments, no NUL
/// or backslash.
pub fn check_target_name(name: &str) -> Result<(), RepoError> {
    let bad = name.is_empty()
        || name.len() > 1024
        || name.contains(['\0', '\\'])
        || name
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        return Err(RepoError::BadTargetName(name.to_string()));
    }
    Ok(())
}

/// Holds the repository's exclusive lock (`DIR/.lock`) so that the server and command-line
/// tools never publish at the same time.
#[derive(Debug)]
pub struct RepoLock {
    _file: std::fs::File,
}

/// Test and HIL fault injection: `IMAGE_REPO_FAULT_CRASH_AT=<point>` aborts the process at
/// that point of a publish, as a power cut or `kill -9` would (`after-blobs`, `after-role`,
/// `after-snapshot`).
fn fault_point(point: &str) {
    if std::env::var("IMAGE_REPO_FAULT_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("fault injection: aborting at {point}");
        std::process::abort();
    }
}

/// An image repository directory.
#[derive(Debug, Clone)]
pub struct Repository {
    dir: PathBuf,
    expiry: Expiry,
}

impl Repository {
    /// Opens an initialized repository.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, RepoError> {
        let dir = dir.into();
        if !dir.join("metadata").join("1.root.json").exists() {
            return Err(RepoError::Layout(format!(
                "{} is not an initialized image repository (no metadata/1.root.json)",
                dir.display()
            )));
        }
        Ok(Self {
            dir,
            expiry: Expiry::default(),
        })
    }

    /// Takes the repository's exclusive lock, waiting for another publisher to finish.
    pub fn lock(&self) -> Result<RepoLock, RepoError> {
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| RepoError::io(&path, e))?;
        file.lock().map_err(|e| RepoError::io(&path, e))?;
        Ok(RepoLock { _file: file })
    }

    /// Uses `expiry` when signing.
    pub fn with_expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }

    /// The repository directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Served metadata directory.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// Served targets directory.
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    /// Content-addressed blob store.
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    /// Creates keys and version 1 of every role. Root and targets keys go to `offline_keys`;
    /// snapshot and timestamp keys to `DIR/keys`.
    pub fn init(
        dir: impl Into<PathBuf>,
        offline_keys: &Path,
        options: InitOptions,
        expiry: Expiry,
        now: UtcTime,
    ) -> Result<Self, RepoError> {
        let dir = dir.into();
        if dir.join("metadata").join("1.root.json").exists() {
            return Err(RepoError::Layout(format!(
                "{} is already a repository",
                dir.display()
            )));
        }
        for (role, count, threshold) in [
            ("root", options.root_keys, options.root_threshold),
            ("targets", options.targets_keys, options.targets_threshold),
        ] {
            if threshold == 0 || count < threshold as usize {
                return Err(RepoError::Invalid(format!(
                    "{role}: threshold {threshold} needs 1 to {count} keys"
                )));
            }
        }
        for sub in ["metadata", "targets", "blobs", "keys"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| RepoError::io(&path, e))?;
        }
        std::fs::create_dir_all(offline_keys).map_err(|e| RepoError::io(offline_keys, e))?;
        let generate = |n: usize| {
            (0..n)
                .map(|_| keys::generate())
                .collect::<Result<Vec<_>, _>>()
        };
        let root_keys = generate(options.root_keys)?;
        let targets_keys = generate(options.targets_keys)?;
        let snapshot_key = keys::generate()?;
        let timestamp_key = keys::generate()?;
        for key in &root_keys {
            keys::write_private(&keys::key_file(offline_keys, "root", &key.key_id()), key)?;
        }
        for key in &targets_keys {
            keys::write_private(&keys::key_file(offline_keys, "targets", &key.key_id()), key)?;
        }
        let repo = Self { dir, expiry };
        keys::write_private(&repo.online_key_path("snapshot"), &snapshot_key)?;
        keys::write_private(&repo.online_key_path("timestamp"), &timestamp_key)?;

        let mut builder = uptane_core::sign::RootBuilder::new(1, now + expiry.root)
            .threshold("root", options.root_threshold)
            .threshold("targets", options.targets_threshold)
            .key("snapshot", snapshot_key.public_key())
            .key("timestamp", timestamp_key.public_key());
        for key in &root_keys {
            builder = builder.key("root", key.public_key());
        }
        for key in &targets_keys {
            builder = builder.key("targets", key.public_key());
        }
        let signers: Vec<&SigningKey> = root_keys.iter().collect();
        let root = builder
            .sign(&signers)
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        let targets = uptane_core::sign::TargetsBuilder::new(1, now + expiry.targets)
            .sign(
                &targets_keys
                    .iter()
                    .take(options.targets_threshold as usize)
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        write_atomic(&repo.metadata_dir().join("1.root.json"), &root)?;
        write_atomic(&repo.metadata_dir().join("1.targets.json"), &targets)?;
        let snapshot = SnapshotBuilder::new(1, now + expiry.snapshot)
            .role("targets", describe(1, &targets))
            .sign(&[&snapshot_key])
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        write_atomic(&repo.metadata_dir().join("1.snapshot.json"), &snapshot)?;
        let timestamp = TimestampBuilder::new(1, now + expiry.timestamp, describe(1, &snapshot))
            .sign(&[&timestamp_key])
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        write_atomic(&repo.metadata_dir().join("timestamp.json"), &timestamp)?;
        Ok(repo)
    }

    fn online_key_path(&self, role: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{role}.pem"))
    }

    fn next_online_key_path(&self, role: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{role}.next.pem"))
    }

    /// The online key of `role` (snapshot or timestamp) that the latest root authorizes. A
    /// rotation writes the new key as `<role>.next.pem` before the root that lists it, so a
    /// crash between the two leaves a usable key either way.
    pub fn online_key(&self, state: &RepoState, role: &str) -> Result<SigningKey, RepoError> {
        let authorized = &state
            .root
            .role_keys(role)
            .ok_or_else(|| corrupt("root", format!("no {role} role")))?
            .keyids;
        let next = self.next_online_key_path(role);
        if next.exists() {
            let key = keys::read_private(&next)?;
            if authorized.contains(&key.key_id()) {
                std::fs::rename(&next, self.online_key_path(role))
                    .map_err(|e| RepoError::io(&next, e))?;
                sync_dir(&self.dir.join("keys"))?;
                return Ok(key);
            }
        }
        let key = keys::read_private(&self.online_key_path(role))?;
        if !authorized.contains(&key.key_id()) {
            return Err(RepoError::NotEnoughKeys {
                role: role.to_string(),
                have: 0,
                threshold: 1,
            });
        }
        Ok(key)
    }

    /// Reads and verifies the published state.
    pub fn state(&self) -> Result<RepoState, RepoError> {
        let dir = self.metadata_dir();
        RepoState::load(|name| match std::fs::read(dir.join(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::io(&dir.join(name), e)),
        })
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs_dir().join(sha256)
    }

    /// Length and hashes of a stored blob, if the store has it.
    pub fn blob_info(&self, sha256: &str) -> Result<Option<BlobInfo>, RepoError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let path = self.blobs_dir().join(format!("{sha256}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| corrupt("blob", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::io(&path, e)),
        }
    }

    /// Stores a blob whose bytes are in `tmp` (a file inside the blob directory) with the
    /// given length and hashes: renamed into place with its description.
    pub fn store_blob(
        &self,
        tmp: tempfile::NamedTempFile,
        info: &BlobInfo,
    ) -> Result<String, RepoError> {
        let sha256 = info
            .hashes
            .get("sha256")
            .cloned()
            .ok_or_else(|| RepoError::Invalid("blob without sha256".into()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| RepoError::io(tmp.path(), e))?;
        let dest = self.blob_path(&sha256);
        tmp.persist(&dest)
            .map_err(|e| RepoError::io(&dest, e.error))?;
        let description = serde_json::to_vec(info).expect("blob info serializes");
        write_atomic(
            &self.blobs_dir().join(format!("{sha256}.json")),
            &description,
        )?;
        Ok(sha256)
    }

    /// A temporary file in the blob store, for bytes being received.
    pub fn blob_tempfile(&self) -> Result<tempfile::NamedTempFile, RepoError> {
        let dir = self.blobs_dir();
        std::fs::create_dir_all(&dir).map_err(|e| RepoError::io(&dir, e))?;
        tempfile::Builder::new()
            .prefix(".upload-")
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(|e| RepoError::io(&dir, e))
    }

    /// Copies a local file into the blob store, hashing it on the way.
    pub fn import_file(&self, path: &Path) -> Result<BlobInfo, RepoError> {
        use std::io::Write;
        let mut tmp = self.blob_tempfile()?;
        let tmp_path = tmp.path().to_path_buf();
        let info = hash_file(path, |chunk| {
            tmp.write_all(chunk)
                .map_err(|e| RepoError::io(&tmp_path, e))
        })?;
        self.store_blob(tmp, &info)?;
        Ok(info)
    }

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
        for dir in linked_dirs {
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

    fn check_blob(&self, path: &str, info: &TargetFile) -> Result<(), RepoError> {
        let mismatch = |reason: String| RepoError::BlobMismatch {
            path: path.to_string(),
            reason,
        };
        let sha256 = info
            .hashes
            .get("sha256")
            .ok_or_else(|| mismatch("no sha256 hash listed".into()))?;
        let blob = self
            .blob_info(&sha256.to_ascii_lowercase())?
            .ok_or_else(|| mismatch(format!("no uploaded blob with sha256 {sha256}")))?;
        if blob.length != info.length {
            return Err(mismatch(format!(
                "blob is {} bytes, metadata says {}",
                blob.length, info.length
            )));
        }
        for (alg, digest) in &info.hashes {
            match blob.hashes.get(alg) {
                Some(actual) if actual.eq_ignore_ascii_case(digest) => {}
                Some(actual) => {
                    return Err(mismatch(format!(
                        "{alg} of the blob is {actual}, metadata says {digest}"
                    )));
                }
                None => return Err(mismatch(format!("unsupported hash algorithm {alg:?}"))),
            }
        }
        Ok(())
    }

    /// Hard-links the blob of `path` under every hash-prefixed name clients may request;
    /// returns the directory, which the caller syncs once for all links.
    fn link_target(&self, path: &str, info: &TargetFile) -> Result<PathBuf, RepoError> {
        let sha256 = info.hashes["sha256"].to_ascii_lowercase();
        let blob = self.blob_path(&sha256);
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (self.targets_dir().join(dir), name),
            None => (self.targets_dir(), path),
        };
        std::fs::create_dir_all(&dir).map_err(|e| RepoError::io(&dir, e))?;
        for digest in info.hashes.values() {
            let link = dir.join(format!("{}.{name}", digest.to_ascii_lowercase()));
            if link.exists() {
                continue;
            }
            let tmp = dir.join(format!(".tmp-link-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::fs::hard_link(&blob, &tmp).map_err(|e| RepoError::io(&tmp, e))?;
            std::fs::rename(&tmp, &link).map_err(|e| RepoError::io(&link, e))?;
        }
        Ok(dir)
    }

    /// Publishes a new snapshot listing `changed` roles (others as before), then a new
    /// timestamp; returns their versions.
    fn publish_snapshot(
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
    fn publish_timestamp(
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
        self.publish_role_with(&state, "targets", bytes, now)
    }

    /// Publishes root version N+1 from `root` (edited from the current one), signed with
    /// every authorized key in `offline_keys` of the current and the new root.
    fn publish_root(
        &self,
        state: &RepoState,
        root: Root,
        offline_keys: &Path,
    ) -> Result<u64, RepoError> {
        let candidates = keys::load_role_keys(offline_keys, "root")?;
        let old = state
            .root
            .role_keys("root")
            .ok_or_else(|| corrupt("root", "no root role"))?;
        let new = root
            .role_keys("root")
            .ok_or_else(|| RepoError::Invalid("new root has no root role".into()))?;
        let mut signers = keys::signers(&candidates, &old.keyids, old.threshold);
        for key in keys::signers(&candidates, &new.keyids, new.threshold) {
            if !signers.iter().any(|k| k.key_id() == key.key_id()) {
                signers.push(key);
            }
        }
        let bytes = sign::sign(&root, &signers).map_err(|e| RepoError::Invalid(e.to_string()))?;
        // The new root must pass the chain rule every client applies: version N+1, signed by
        // a threshold of the old root keys and of the new ones.
        let mut chain = RootChain::new(&state.root.to_raw(), u64::MAX, 1)?;
        chain.apply(&Raw::new(bytes.clone())).map_err(|e| match e {
            UpdateError::Verify(VerifyError::Threshold {
                valid, threshold, ..
            }) => RepoError::NotEnoughKeys {
                role: "root".into(),
                have: valid as usize,
                threshold,
            },
            UpdateError::Verify(other) => RepoError::Signature(other),
            other => RepoError::Invalid(other.to_string()),
        })?;
        let version = root.common.version;
        write_atomic(
            &self.metadata_dir().join(format!("{version}.root.json")),
            &bytes,
        )?;
        Ok(version)
    }

    /// Root rotation: replaces the root keys with `count` new ones (threshold `threshold`),
    /// signed by the old and the new keys. The old roots stay published for clients' chains.
    pub fn rotate_root_keys(
        &self,
        offline_keys: &Path,
        count: usize,
        threshold: u32,
        now: UtcTime,
    ) -> Result<u64, RepoError> {
        if threshold == 0 || count < threshold as usize {
            return Err(RepoError::Invalid(format!(
                "threshold {threshold} needs 1 to {count} keys"
            )));
        }
        let _lock = self.lock()?;
        let state = self.state()?;
        let new_keys = (0..count)
            .map(|_| keys::generate())
            .collect::<Result<Vec<_>, _>>()?;
        for key in &new_keys {
            keys::write_private(&keys::key_file(offline_keys, "root", &key.key_id()), key)?;
        }
        let mut builder = uptane_core::sign::RootBuilder::from_root(
            &state.root,
            state.root.common.version + 1,
            now + self.expiry.root,
        );
        for id in state
            .root
            .role_keys("root")
            .map(|r| r.keyids.clone())
            .unwrap_or_default()
        {
            builder = builder.remove_key("root", &id);
        }
        for key in &new_keys {
            builder = builder.key("root", key.public_key());
        }
        self.publish_root(
            &state,
            builder.threshold("root", threshold).build(),
            offline_keys,
        )
    }

    /// Online key rotation for `role` (snapshot or timestamp): a new key, a new root listing
    /// it, then a new snapshot and timestamp signed with it.
    pub fn rotate_online_key(
        &self,
        offline_keys: &Path,
        role: &str,
        now: UtcTime,
    ) -> Result<u64, RepoError> {
        if role != "snapshot" && role != "timestamp" {
            return Err(RepoError::Invalid(format!("{role} is not an online role")));
        }
        let _lock = self.lock()?;
        let state = self.state()?;
        let old = self.online_key(&state, role)?;
        let new = keys::generate()?;
        keys::write_private(&self.next_online_key_path(role), &new)?;
        let root = uptane_core::sign::RootBuilder::from_root(
            &state.root,
            state.root.common.version + 1,
            now + self.expiry.root,
        )
        .remove_key(role, &old.key_id())
        .key(role, new.public_key())
        .build();
        let version = self.publish_root(&state, root, offline_keys)?;
        let state = self.state()?;
        self.publish_snapshot(&state, BTreeMap::new(), now)?;
        Ok(version)
    }
}

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
    sign::sign(&targets, &signers).map_err(|e| RepoError::Invalid(e.to_string()))
}

/// Uptane image custom fields for a target.
pub fn image_custom(hardware_ids: &[String], release_counter: u64) -> serde_json::Value {
    serde_json::json!({"hardwareIds": hardware_ids, "releaseCounter": release_counter})
}

fn check_authorized(
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
        .custom
        .as_ref()
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

/// Hashes bytes as they arrive: length, sha256, sha512.
#[derive(Default)]
pub struct BlobHasher {
    length: u64,
    sha256: sha2::Sha256,
    sha512: sha2::Sha512,
}

impl std::fmt::Debug for BlobHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobHasher")
            .field("length", &self.length)
            .finish()
    }
}

impl BlobHasher {
    /// Feeds bytes.
    pub fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest;
        self.length += chunk.len() as u64;
        self.sha256.update(chunk);
        self.sha512.update(chunk);
    }

    /// Bytes so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Length and hashes.
    pub fn finish(self) -> BlobInfo {
        use sha2::Digest;
        BlobInfo {
            length: self.length,
            hashes: Hashes::from([
                ("sha256".to_string(), hex::encode(self.sha256.finalize())),
                ("sha512".to_string(), hex::encode(self.sha512.finalize())),
            ]),
        }
    }
}

/// Length and hashes of the file at `path`, read in 1 MiB blocks, each also handed to `sink`.
pub fn hash_file(
    path: &Path,
    mut sink: impl FnMut(&[u8]) -> Result<(), RepoError>,
) -> Result<BlobInfo, RepoError> {
    use std::io::Read;
    let mut input = std::fs::File::open(path).map_err(|e| RepoError::io(path, e))?;
    let mut hasher = BlobHasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(|e| RepoError::io(path, e))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
    }
}

/// Length and hashes of bytes in memory.
pub fn blob_info_of(bytes: &[u8]) -> BlobInfo {
    BlobInfo {
        length: bytes.len() as u64,
        hashes: standard_hashes(bytes),
    }
}

impl From<UpdateError> for RepoError {
    fn from(e: UpdateError) -> Self {
        RepoError::Update(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, Repository, UtcTime) {
        let dir = tempfile::tempdir().unwrap();
        let now = uptane_core::testing::now();
        let repo = Repository::init(
            dir.path().join("repo"),
            &dir.path().join("keys"),
            InitOptions::default(),
            Expiry::default(),
            now,
        )
        .unwrap();
        (dir, repo, now)
    }

    #[test]
    fn renews_timestamp_and_snapshot_before_they_expire() {
        let (_dir, repo, now) = repo();
        let margin = Duration::hours(12);
        assert_eq!(repo.renew_online(now, margin).unwrap(), Renewal::None);
        assert_eq!(
            repo.renew_online(now + Duration::hours(13), margin)
                .unwrap(),
            Renewal::Timestamp(2)
        );
        assert_eq!(
            repo.renew_online(now + Duration::days(7) - Duration::hours(1), margin)
                .unwrap(),
            Renewal::Snapshot {
                snapshot: 2,
                timestamp: 3
            }
        );
        let state = repo.state().unwrap();
        assert!(state.timestamp.common.expires > now + Duration::days(7));
    }

    #[test]
    fn online_key_rotation_is_published_and_signed_with_the_new_key() {
        let (dir, repo, now) = repo();
        let keys = dir.path().join("keys");
        let before = repo.state().unwrap();
        repo.rotate_online_key(&keys, "timestamp", now).unwrap();
        let after = repo.state().unwrap();
        assert!(after.online_keys_current);
        assert_eq!(after.root.common.version, 2);
        assert_ne!(
            after.root.role_keys("timestamp").unwrap().keyids,
            before.root.role_keys("timestamp").unwrap().keyids
        );
        assert!(matches!(
            repo.rotate_online_key(&keys, "targets", now),
            Err(RepoError::Invalid(_))
        ));
    }

    #[test]
    fn root_rotation_needs_the_old_keys() {
        let (dir, repo, now) = repo();
        let empty = dir.path().join("no-keys");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(
            repo.rotate_root_keys(&empty, 1, 1, now),
            Err(RepoError::NotEnoughKeys { .. })
        ));
        assert_eq!(
            repo.rotate_root_keys(&dir.path().join("keys"), 3, 2, now)
                .unwrap(),
            2
        );
        assert_eq!(
            repo.state()
                .unwrap()
                .root
                .role_keys("root")
                .unwrap()
                .threshold,
            2
        );
    }

    #[test]
    fn refuses_unsafe_target_names() {
        for bad in ["", "/abs", "a//b", "../x", "a/./b", "a\\b", "a\0b"] {
            assert!(check_target_name(bad).is_err(), "{bad:?}");
        }
        check_target_name("dir/sub/file-1.2.bin").unwrap();
    }

    #[test]
    fn refuses_to_initialize_twice_or_with_impossible_thresholds() {
        let (dir, _repo, now) = repo();
        assert!(matches!(
            Repository::init(
                dir.path().join("repo"),
                &dir.path().join("keys"),
                InitOptions::default(),
                Expiry::default(),
                now
            ),
            Err(RepoError::Layout(_))
        ));
        let options = InitOptions {
            root_keys: 2,
            root_threshold: 3,
            ..InitOptions::default()
        };
        assert!(matches!(
            Repository::init(
                dir.path().join("other"),
                &dir.path().join("k2"),
                options,
                Expiry::default(),
                now
            ),
            Err(RepoError::Invalid(_))
        ));
    }
}
