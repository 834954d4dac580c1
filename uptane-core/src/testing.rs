//! Test fixtures: fixed-seed keys and a small in-memory repository that publishes signed
//! metadata with the builders. For tests of this crate and of the services (feature
//! `testing`); never for production.

use std::collections::BTreeMap;

use crate::crypto::SigningKey;
use crate::metadata::{DelegatedRole, Targets};
use crate::sign::{RootBuilder, SnapshotBuilder, TargetsBuilder, TimestampBuilder, describe};
use crate::time::{UtcTime, parse_expires};

/// A deterministic key: the same `n` always gives the same key.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32])
}

/// `report` signed by `key` with a field of its own, `vendor`, holding `levels` nested arrays:
/// a report as deep as its signer likes, for the depth a manifest can carry.
pub fn nested_report(
    report: &crate::manifest::EcuVersionReport,
    levels: usize,
    key: &SigningKey,
) -> Vec<u8> {
    let mut vendor = serde_json::json!([]);
    for _ in 1..levels {
        vendor = serde_json::json!([vendor]);
    }
    let mut signed = serde_json::to_value(report).expect("a report serializes");
    signed["vendor"] = vendor;
    crate::sign::sign_value(&signed, &[key]).expect("JSON without floats is canonical")
}

/// A fixed "now" for tests: 2030-01-01.
pub fn now() -> UtcTime {
    parse_expires("2030-01-01T00:00:00Z").expect("valid literal")
}

/// An expiry well after [`now`].
pub fn later() -> UtcTime {
    parse_expires("2031-01-01T00:00:00Z").expect("valid literal")
}

/// An expiry before [`now`].
pub fn earlier() -> UtcTime {
    parse_expires("2029-01-01T00:00:00Z").expect("valid literal")
}

/// A delegated role's metadata and signing keys.
#[derive(Debug, Clone)]
pub struct DelegatedFixture {
    /// Its current content.
    pub targets: Targets,
    /// Keys that sign it.
    pub keys: Vec<SigningKey>,
}

/// A repository in memory: keys, current content, and the signed files it last published.
#[derive(Debug, Clone)]
pub struct RepoFixture {
    /// Root keys.
    pub root_keys: Vec<SigningKey>,
    /// Timestamp key.
    pub timestamp_key: SigningKey,
    /// Snapshot key.
    pub snapshot_key: SigningKey,
    /// Targets key.
    pub targets_key: SigningKey,
    /// Expiry for every role.
    pub expires: UtcTime,
    /// Signed root versions, index 0 is version 1.
    pub roots: Vec<Vec<u8>>,
    /// Top-level targets content (version is bumped by publish).
    pub targets: Targets,
    /// Delegated roles by name, in delegation order of their delegator.
    pub delegated: BTreeMap<String, DelegatedFixture>,
    /// Published timestamp.
    pub timestamp: Vec<u8>,
    /// Published snapshot.
    pub snapshot: Vec<u8>,
    /// Published targets files by role name.
    pub targets_files: BTreeMap<String, Vec<u8>>,
    /// Current versions of timestamp, snapshot.
    pub versions: (u64, u64),
}

impl RepoFixture {
    /// A repository with root version 1 and everything published at version 1.
    pub fn new() -> Self {
        let root_keys = vec![key(1)];
        let (timestamp_key, snapshot_key, targets_key) = (key(2), key(3), key(4));
        let expires = later();
        let root = RootBuilder::new(1, expires)
            .key("root", root_keys[0].public_key())
            .key("timestamp", timestamp_key.public_key())
            .key("snapshot", snapshot_key.public_key())
            .key("targets", targets_key.public_key())
            .sign(&[&root_keys[0]])
            .expect("fixture signs");
        let mut repo = Self {
            root_keys,
            timestamp_key,
            snapshot_key,
            targets_key,
            expires,
            roots: vec![root],
            targets: TargetsBuilder::new(0, expires).build(),
            delegated: BTreeMap::new(),
            timestamp: Vec::new(),
            snapshot: Vec::new(),
            targets_files: BTreeMap::new(),
            versions: (0, 0),
        };
        repo.publish();
        repo
    }

    /// The first root, to pin in a client.
    pub fn initial_root(&self) -> &[u8] {
        &self.roots[0]
    }

    /// Adds a target to the top-level targets (published by the next [`Self::publish`]).
    pub fn add_target(&mut self, path: &str, content: &[u8], custom: Option<serde_json::Value>) {
        self.targets =
            TargetsBuilder::from_targets(&self.targets, self.targets.common.version, self.expires)
                .target(path, content, custom)
                .build();
    }

    /// Delegates `role` from `delegator` (`targets` or a delegated role) with one new key.
    pub fn delegate(&mut self, delegator: &str, role: DelegatedRole, keys: Vec<SigningKey>) {
        let publics: Vec<_> = keys.iter().map(|k| k.public_key()).collect();
        let parent = if delegator == "targets" {
            &mut self.targets
        } else {
            &mut self
                .delegated
                .get_mut(delegator)
                .expect("delegator exists")
                .targets
        };
        *parent = TargetsBuilder::from_targets(parent, parent.common.version, self.expires)
            .delegate(role.clone(), &publics)
            .build();
        self.delegated
            .entry(role.name.clone())
            .or_insert(DelegatedFixture {
                targets: TargetsBuilder::new(0, self.expires).build(),
                keys,
            });
    }

    /// Delegates every `(delegator, role, terminating)` in order, all paths (`*`), each role
    /// signed by `key` alone.
    pub fn delegate_all(&mut self, key: &SigningKey, roles: &[(&str, &str, bool)]) {
        let public = key.public_key().clone();
        for (delegator, role, terminating) in roles {
            let delegation = crate::sign::delegated_role(role, &[&public], 1, &["*"], *terminating);
            self.delegate(delegator, delegation, vec![key.clone()]);
        }
    }

    /// Adds a target to delegated role `role`.
    pub fn add_delegated_target(&mut self, role: &str, path: &str, content: &[u8]) {
        let d = self.delegated.get_mut(role).expect("role exists");
        d.targets =
            TargetsBuilder::from_targets(&d.targets, d.targets.common.version, self.expires)
                .target(path, content, None)
                .build();
    }

    /// Signs a new version of every targets role, then snapshot and timestamp.
    pub fn publish(&mut self) {
        let expires = self.expires;
        self.targets.common.version += 1;
        self.targets.common.expires = expires;
        let mut files = BTreeMap::new();
        files.insert(
            "targets".to_string(),
            crate::sign::sign(&self.targets, &[&self.targets_key]).expect("fixture signs"),
        );
        for (name, d) in &mut self.delegated {
            d.targets.common.version += 1;
            d.targets.common.expires = expires;
            let keys: Vec<&SigningKey> = d.keys.iter().collect();
            files.insert(
                name.clone(),
                crate::sign::sign(&d.targets, &keys).expect("fixture signs"),
            );
        }
        self.targets_files = files;
        self.versions.1 += 1;
        self.publish_snapshot_only();
    }

    /// Signs a new snapshot (listing the current targets files) and timestamp.
    pub fn publish_snapshot_only(&mut self) {
        let mut snapshot = SnapshotBuilder::new(self.versions.1, self.expires);
        snapshot = snapshot.role(
            "targets",
            describe(self.targets.common.version, &self.targets_files["targets"]),
        );
        for (name, d) in &self.delegated {
            snapshot = snapshot.role(
                name,
                describe(d.targets.common.version, &self.targets_files[name]),
            );
        }
        self.snapshot = snapshot.sign(&[&self.snapshot_key]).expect("fixture signs");
        self.publish_timestamp_only();
    }

    /// Signs a new timestamp naming the current snapshot.
    pub fn publish_timestamp_only(&mut self) {
        self.versions.0 += 1;
        self.timestamp = TimestampBuilder::new(
            self.versions.0,
            self.expires,
            describe(self.versions.1, &self.snapshot),
        )
        .sign(&[&self.timestamp_key])
        .expect("fixture signs");
    }

    /// Publishes root version N+1 from `builder`, signed by the old and the new root keys.
    pub fn rotate_root(&mut self, builder: RootBuilder, new_root_keys: Vec<SigningKey>) {
        let mut signers: Vec<&SigningKey> = self.root_keys.iter().collect();
        for k in &new_root_keys {
            if !signers.iter().any(|s| s.key_id() == k.key_id()) {
                signers.push(k);
            }
        }
        let bytes = builder.sign(&signers).expect("fixture signs");
        self.roots.push(bytes);
        self.root_keys = new_root_keys;
    }

    /// What the repository serves as `file` (the current version of each role, every root
    /// version), or `None`: answers a [`crate::refresh::Refresh`]'s fetches in tests.
    pub fn file(&self, file: &crate::refresh::MetadataFile) -> Option<Vec<u8>> {
        let current = |version: u64| file.version().is_none_or(|v| v == version);
        match file.role() {
            "root" => {
                let index = usize::try_from(file.version()?.checked_sub(1)?).ok()?;
                self.roots.get(index).cloned()
            }
            "timestamp" => Some(self.timestamp.clone()),
            "snapshot" => current(self.versions.1).then(|| self.snapshot.clone()),
            role => {
                let version = if role == "targets" {
                    self.targets.common.version
                } else {
                    self.delegated.get(role)?.targets.common.version
                };
                current(version).then(|| self.targets_files.get(role).cloned())?
            }
        }
    }

    /// The version the next root will have.
    pub fn next_root_version(&self) -> u64 {
        self.roots.len() as u64 + 1
    }
}

impl crate::refresh::MetadataSource for RepoFixture {
    type Error = crate::error::UpdateError;

    fn fetch(
        &mut self,
        file: &crate::refresh::MetadataFile,
        _max_len: u64,
    ) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.file(file))
    }
}

impl Default for RepoFixture {
    fn default() -> Self {
        Self::new()
    }
}
