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
//!
//! The concerns live in submodules: `state` (reading the published state back), `blobs`
//! (content-addressed storage and target links), `publish` (uploads and new versions),
//! `rotate` (key rotation) and `vouch` (what a key holder checks before signing on top of
//! what is published); this module holds the layout, initialization and online keys.

mod blobs;
mod publish;
mod rotate;
mod state;
pub mod vouch;

pub use blobs::{BlobHasher, BlobInfo, Collected, blob_info_of, hash_file};
pub use publish::{CheckedUpload, PublishReport, Renewal, image_custom, sign_targets_update};
pub use state::{
    DelegationChain, Expiring, ROOT_EXPIRY_WARNING, RepoState, RoleStatus, SignedWith,
    TARGETS_EXPIRY_WARNING, Warnings,
};

use std::path::{Path, PathBuf};

use chrono::Duration;
use uptane_core::crypto::SigningKey;
use uptane_core::error::UpdateError;
pub use uptane_core::metadata::quote_role;
use uptane_core::sign::{SnapshotBuilder, TimestampBuilder, describe};
use uptane_core::time::UtcTime;

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

fn corrupt(role: &str, reason: impl ToString) -> RepoError {
    RepoError::Corrupt {
        role: role.to_string(),
        reason: reason.to_string(),
    }
}

/// Checks a target name before it is published ([`uptane_core::ids::check_target_name`]).
pub fn check_target_name(name: &str) -> Result<(), RepoError> {
    uptane_core::ids::check_target_name(name).map_err(RepoError::BadTargetName)
}

/// Holds the repository's exclusive lock (`DIR/.lock`) so that the server and command-line
/// tools never publish at the same time.
#[derive(Debug)]
pub struct RepoLock {
    _file: std::fs::File,
}

/// Test fault injection, compiled only with the cargo feature `fault-injection` (which the
/// end-to-end tests enable; a release build has no such hook):
/// `IMAGE_REPO_FAULT_CRASH_AT=<point>` aborts the process at that point of a publish, as a
/// power cut or `kill -9` would (`after-blobs`, `after-role`, `after-snapshot`).
#[cfg(feature = "fault-injection")]
fn fault_point(point: &str) {
    if std::env::var("IMAGE_REPO_FAULT_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("fault injection: aborting at {point}");
        std::process::abort();
    }
}

/// Without the `fault-injection` feature, publishing has no crash points.
#[cfg(not(feature = "fault-injection"))]
fn fault_point(_point: &str) {}

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
    fn offline_signed_metadata_is_reported_before_it_expires() {
        let (_dir, repo, now) = repo();
        let state = repo.state().unwrap();
        assert_eq!(state.expiring(now), Vec::new());
        // Top-level targets (90 days) enters its 14-day window first, then the root.
        let soon = now + Duration::days(80);
        let expiring = state.expiring(soon);
        assert_eq!(expiring.len(), 1, "{expiring:?}");
        assert_eq!(
            (expiring[0].role.as_str(), expiring[0].days_left),
            ("targets", 10)
        );
        assert!(expiring[0].to_string().contains("re-sign it"));
        let later = now + Duration::days(310);
        let roles: Vec<_> = state.expiring(later).into_iter().map(|e| e.role).collect();
        assert_eq!(roles, ["root", "targets"]);
        assert!(
            state.expiring(later)[0]
                .to_string()
                .contains("image-repo rotate-root")
        );
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
        for bad in [
            "",
            "/abs",
            "a//b",
            "../x",
            "a/./b",
            "a\\b",
            "a\0b",
            "cafe\u{301}",
        ] {
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
