//! Key rotation: new root keys, and new online (snapshot, timestamp) keys, each through a
//! new root version that clients accept only by the root-chain rules.

use super::RepoState;
use super::Repository;
use super::corrupt;
use crate::error::RepoError;
use crate::fsutil::write_atomic;
use crate::keys;
use std::collections::BTreeMap;
use std::path::Path;
use uptane_core::error::UpdateError;
use uptane_core::error::VerifyError;
use uptane_core::metadata::Root;
use uptane_core::sign;
use uptane_core::time::UtcTime;
use uptane_core::trusted::RootChain;
use uptane_core::verify::Raw;

impl Repository {
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
