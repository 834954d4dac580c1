//! Builders that create and sign every kind of metadata; the repositories and tests use them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::cjson::{self, CanonicalError};
use crate::crypto::{KeyId, PublicKey, SigningKey};
use crate::hash::{Hashes, sha256_hex, standard_hashes};
use crate::metadata::{
    Common, DelegatedRole, Delegations, MetaFile, Role, RoleKeys, Root, Snapshot, TargetFile,
    Targets, Timestamp,
};
use crate::time::UtcTime;

/// Signs the canonical form of `signed` with each key and returns the envelope bytes
/// (`{"signatures": [...], "signed": {...}}`).
pub fn sign_value(signed: &Value, keys: &[&SigningKey]) -> Result<Vec<u8>, CanonicalError> {
    let canonical = cjson::canonicalize(signed)?;
    let signatures: Vec<Value> = keys
        .iter()
        .map(|k| json!({"keyid": k.key_id(), "sig": k.sign_hex(&canonical)}))
        .collect();
    let envelope = json!({"signatures": signatures, "signed": signed});
    serde_json::to_vec(&envelope).map_err(|e| CanonicalError::NotJson(e.to_string()))
}

/// Signs any serializable role value.
///
/// The value is written once as compact JSON text and canonicalized from that text: no
/// intermediate `serde_json::Value`, which matters for targets files with 100,000 entries.
/// The canonical form itself becomes `signed` in the envelope whenever it is valid JSON (it
/// is, unless a string holds a control character, which canonical JSON writes raw and JSON
/// must escape; then the compact text is written). A verifier canonicalizes what it reads
/// before checking a signature, and text already in canonical form is copied straight
/// through: reading a 10,000-target file in field order instead re-sorted every target
/// entry, twice the canonicalizing time (issue 15).
pub fn sign<T: Serialize>(signed: &T, keys: &[&SigningKey]) -> Result<Vec<u8>, CanonicalError> {
    let text = serde_json::to_vec(signed).map_err(|e| CanonicalError::NotJson(e.to_string()))?;
    let canonical = cjson::canonicalize_json_text(&text)?;
    let signatures: Vec<Value> = keys
        .iter()
        .map(|k| json!({"keyid": k.key_id(), "sig": k.sign_hex(&canonical)}))
        .collect();
    let signatures =
        serde_json::to_vec(&signatures).map_err(|e| CanonicalError::NotJson(e.to_string()))?;
    let written = if canonical.iter().any(|&b| b < 0x20) {
        &text
    } else {
        &canonical
    };
    let mut envelope = Vec::with_capacity(written.len() + signatures.len() + 32);
    envelope.extend_from_slice(b"{\"signatures\":");
    envelope.extend_from_slice(&signatures);
    envelope.extend_from_slice(b",\"signed\":");
    envelope.extend_from_slice(written);
    envelope.push(b'}');
    Ok(envelope)
}

/// Describes published metadata bytes for snapshot or timestamp: version, length and sha256
/// (the POUF's choice, as for images: a listed sha512 is checked, but listing one would add
/// a third of a large targets file's verification time to every client's refresh).
pub fn describe(version: u64, bytes: &[u8]) -> MetaFile {
    MetaFile {
        version,
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes::from([("sha256".to_string(), sha256_hex(bytes))])),
    }
}

/// Builds root metadata.
#[derive(Debug, Clone)]
pub struct RootBuilder {
    root: Root,
}

impl RootBuilder {
    /// An empty root at `version`, with consistent snapshots on.
    pub fn new(version: u64, expires: UtcTime) -> Self {
        let roles = ["root", "timestamp", "snapshot", "targets"]
            .into_iter()
            .map(|r| {
                (
                    r.to_string(),
                    RoleKeys {
                        keyids: Vec::new(),
                        threshold: 1,
                    },
                )
            })
            .collect();
        Self {
            root: Root {
                common: Common::new(Root::TYPE, version, expires),
                consistent_snapshot: true,
                keys: BTreeMap::new(),
                roles,
            },
        }
    }

    /// Starts from an existing root (for rotation): same keys, the given version and expiry.
    pub fn from_root(root: &Root, version: u64, expires: UtcTime) -> Self {
        let mut root = root.clone();
        root.common = Common::new(Root::TYPE, version, expires);
        Self { root }
    }

    /// Authorizes `key` for top-level role `role`.
    pub fn key(mut self, role: &str, key: &PublicKey) -> Self {
        let id = key.key_id();
        self.root.keys.insert(id.clone(), key.clone());
        if let Some(r) = self.root.roles.get_mut(role)
            && !r.keyids.contains(&id)
        {
            r.keyids.push(id);
        }
        self
    }

    /// Removes `key` from `role` (and from `keys` when no role uses it any more).
    pub fn remove_key(mut self, role: &str, key: &KeyId) -> Self {
        if let Some(r) = self.root.roles.get_mut(role) {
            r.keyids.retain(|k| k != key);
        }
        if !self.root.roles.values().any(|r| r.keyids.contains(key)) {
            self.root.keys.remove(key);
        }
        self
    }

    /// Uses `key` for all four top-level roles (threshold 1): handy for tests and demos.
    pub fn all_roles(self, key: &SigningKey) -> Self {
        ["root", "timestamp", "snapshot", "targets"]
            .into_iter()
            .fold(self, |b, role| b.key(role, key.public_key()))
    }

    /// Sets the threshold of `role`.
    pub fn threshold(mut self, role: &str, threshold: u32) -> Self {
        if let Some(r) = self.root.roles.get_mut(role) {
            r.threshold = threshold;
        }
        self
    }

    /// Sets `consistent_snapshot`.
    pub fn consistent_snapshot(mut self, on: bool) -> Self {
        self.root.consistent_snapshot = on;
        self
    }

    /// The root value.
    pub fn build(self) -> Root {
        self.root
    }

    /// Signs the root with `keys`.
    pub fn sign(self, keys: &[&SigningKey]) -> Result<Vec<u8>, CanonicalError> {
        sign(&self.root, keys)
    }
}

/// Builds timestamp metadata.
#[derive(Debug, Clone)]
pub struct TimestampBuilder {
    timestamp: Timestamp,
}

impl TimestampBuilder {
    /// A timestamp at `version` naming `snapshot` (see [`describe`]).
    pub fn new(version: u64, expires: UtcTime, snapshot: MetaFile) -> Self {
        Self {
            timestamp: Timestamp {
                common: Common::new(Timestamp::TYPE, version, expires),
                meta: BTreeMap::from([("snapshot.json".to_string(), snapshot)]),
            },
        }
    }

    /// The timestamp value.
    pub fn build(self) -> Timestamp {
        self.timestamp
    }

    /// Signs it.
    pub fn sign(self, keys: &[&SigningKey]) -> Result<Vec<u8>, CanonicalError> {
        sign(&self.timestamp, keys)
    }
}

/// Builds snapshot metadata.
#[derive(Debug, Clone)]
pub struct SnapshotBuilder {
    snapshot: Snapshot,
}

impl SnapshotBuilder {
    /// An empty snapshot at `version`.
    pub fn new(version: u64, expires: UtcTime) -> Self {
        Self {
            snapshot: Snapshot {
                common: Common::new(Snapshot::TYPE, version, expires),
                meta: BTreeMap::new(),
            },
        }
    }

    /// Lists targets role `role` (e.g. `targets`) with `meta`.
    pub fn role(mut self, role: &str, meta: MetaFile) -> Self {
        self.snapshot.meta.insert(format!("{role}.json"), meta);
        self
    }

    /// The snapshot value.
    pub fn build(self) -> Snapshot {
        self.snapshot
    }

    /// Signs it.
    pub fn sign(self, keys: &[&SigningKey]) -> Result<Vec<u8>, CanonicalError> {
        sign(&self.snapshot, keys)
    }
}

/// Builds targets metadata, top-level or delegated.
#[derive(Debug, Clone)]
pub struct TargetsBuilder {
    targets: Targets,
}

impl TargetsBuilder {
    /// Empty targets at `version`.
    pub fn new(version: u64, expires: UtcTime) -> Self {
        Self {
            targets: Targets {
                common: Common::new(Targets::TYPE, version, expires),
                targets: BTreeMap::new(),
                delegations: None,
                custom: None,
            },
        }
    }

    /// Starts from existing targets with a new version and expiry.
    pub fn from_targets(targets: &Targets, version: u64, expires: UtcTime) -> Self {
        let mut targets = targets.clone();
        targets.common = Common::new(Targets::TYPE, version, expires);
        Self { targets }
    }

    /// Adds a target describing `content` (sha256 and sha512), with `custom` fields.
    pub fn target(self, path: &str, content: &[u8], custom: Option<Value>) -> Self {
        self.target_info(
            path,
            TargetFile {
                length: content.len() as u64,
                hashes: standard_hashes(content),
                custom: custom.map(Into::into),
            },
        )
    }

    /// Adds a target with explicit length and hashes.
    pub fn target_with(
        self,
        path: &str,
        length: u64,
        hashes: Hashes,
        custom: Option<Value>,
    ) -> Self {
        self.target_info(
            path,
            TargetFile {
                length,
                hashes,
                custom: custom.map(Into::into),
            },
        )
    }

    /// Adds a target entry.
    pub fn target_info(mut self, path: &str, info: TargetFile) -> Self {
        self.targets.targets.insert(path.to_string(), info);
        self
    }

    /// Removes a target.
    pub fn remove_target(mut self, path: &str) -> Self {
        self.targets.targets.remove(path);
        self
    }

    /// Delegates to `role`, signed by `keys`.
    pub fn delegate(mut self, role: DelegatedRole, keys: &[&PublicKey]) -> Self {
        let delegations = self.targets.delegations.get_or_insert_with(|| Delegations {
            keys: BTreeMap::new(),
            roles: Vec::new(),
        });
        for key in keys {
            delegations.keys.insert(key.key_id(), (*key).clone());
        }
        delegations.roles.retain(|r| r.name != role.name);
        delegations.roles.push(role);
        self
    }

    /// Sets the top-level `custom` object.
    pub fn custom(mut self, custom: Value) -> Self {
        self.targets.custom = Some(custom);
        self
    }

    /// The targets value.
    pub fn build(self) -> Targets {
        self.targets
    }

    /// Signs it.
    pub fn sign(self, keys: &[&SigningKey]) -> Result<Vec<u8>, CanonicalError> {
        sign(&self.targets, keys)
    }
}

/// A delegation to `name` for `paths`, signed by `keys` with `threshold`.
pub fn delegated_role(
    name: &str,
    keys: &[&PublicKey],
    threshold: u32,
    paths: &[&str],
    terminating: bool,
) -> DelegatedRole {
    DelegatedRole {
        name: name.to_string(),
        keyids: keys.iter().map(|k| k.key_id()).collect(),
        threshold,
        terminating,
        paths: Some(paths.iter().map(|p| p.to_string()).collect()),
        path_hash_prefixes: None,
        hardware_ids: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{key, now};
    use crate::verify::{Raw, verify_role};

    /// The `signed` text of an envelope, as written.
    fn signed_text(envelope: &[u8]) -> Vec<u8> {
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            signed: &'a serde_json::value::RawValue,
        }
        let envelope: Envelope<'_> = serde_json::from_slice(envelope).unwrap();
        envelope.signed.get().as_bytes().to_vec()
    }

    fn verifies(bytes: Vec<u8>, by: &SigningKey) -> Targets {
        let keys = BTreeMap::from([(by.key_id(), by.public_key().clone())]);
        let authorized = RoleKeys {
            keyids: vec![by.key_id()],
            threshold: 1,
        };
        let verified =
            verify_role(&Raw::<Targets>::new(bytes), "targets", &keys, &authorized).unwrap();
        (*verified).clone()
    }

    #[test]
    fn what_is_signed_is_written_in_canonical_form() {
        let k = key(1);
        let bytes = TargetsBuilder::new(3, now())
            .target("b.bin", b"b", Some(serde_json::json!({"z": 1, "a": "é/"})))
            .target("a.bin", b"a", None)
            .sign(&[&k])
            .unwrap();
        let text = signed_text(&bytes);
        // Field order would put "_type", "spec_version", "version" first, and "length"
        // before "hashes": written sorted, the text is its own canonical form.
        assert_eq!(cjson::canonicalize_json_text(&text).unwrap(), text);
        assert!(text.starts_with(br#"{"_type":"targets","expires":"#));
        let read = verifies(bytes, &k);
        assert_eq!(read.common.version, 3);
        assert_eq!(read.targets.len(), 2);
    }

    #[test]
    fn a_control_character_is_written_escaped_and_still_verifies() {
        let k = key(1);
        let bytes = TargetsBuilder::new(1, now())
            .target(
                "a.bin",
                b"a",
                Some(serde_json::json!({"note": "line\nbreak"})),
            )
            .sign(&[&k])
            .unwrap();
        // Canonical JSON writes the newline raw, which JSON forbids: the text keeps it
        // escaped, and the signature (over the canonical form) still verifies.
        assert!(!bytes.contains(&b'\n'));
        let read = verifies(bytes, &k);
        let custom = read.targets["a.bin"].custom.as_ref().unwrap();
        assert_eq!(custom.value()["note"], "line\nbreak");
    }
}
