//! What a key holder checks before signing the next version of a role on top of what a
//! repository says is published.
//!
//! Signing commands (`add`, `remove`, `delegate`, `renew`, `supplier-add`) read the current
//! version of the role from the repository, edit it and sign the result with offline (or a
//! supplier's) keys. The repository is what those keys protect against: a compromised
//! server can forge its whole published state (its root is only self-signed, its snapshot
//! and timestamp keys are online), hand the holder a role listing the attacker's images or
//! a delegation to the attacker's key, and receive it back signed by the real keys. So the
//! current version is believed only if
//!
//! - one of the holder's own keys signed it (its content is what a holder of these keys
//!   approved; the rest of the forged state does not matter, as only this role is signed),
//!   and
//! - it is not older than what these keys last signed from this directory (a server
//!   replaying an earlier version, to have an image that was removed listed again): the
//!   directory remembers, per role, the version and digest it last signed, and the one it
//!   signed on top of until the signed one is seen published (an upload that failed is
//!   signed again on the same version), in `signed-versions.json`; and a role of which a
//!   version these keys signed was seen published is never started again from nothing.
//!
//! The first version of a role (none published yet) is built from nothing, so there is
//! nothing to believe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uptane_core::crypto::SigningKey;
use uptane_core::hash::sha256_hex;
use uptane_core::metadata::Targets;
use uptane_core::verify::{Verified, verify_signed_by};

use crate::error::RepoError;
use crate::fsutil::write_atomic;

/// The memory file's name, in an offline keys directory.
pub const MEMORY_FILE: &str = "signed-versions.json";

/// A version of a role, as its bytes' digest pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pinned {
    version: u64,
    sha256: String,
}

impl Pinned {
    fn of(targets: &Verified<Targets>) -> Self {
        Self {
            version: targets.common.version,
            sha256: sha256_hex(targets.as_bytes()),
        }
    }
}

/// What a directory's keys last did to one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Signed {
    /// The version they signed on top of.
    on: Option<Pinned>,
    /// The version they signed.
    signed: Pinned,
    /// Whether the version they signed was seen published (its upload answered, or the
    /// repository showing it): until then it may have been refused.
    #[serde(default)]
    seen: bool,
}

/// Where the keys of `offline_keys` remember what they signed.
pub fn memory_in(offline_keys: &Path) -> PathBuf {
    offline_keys.join(MEMORY_FILE)
}

/// Where a supplier's key file `key` remembers what it signed: beside it.
pub fn memory_beside(key: &Path) -> PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".signed-versions.json");
    key.with_file_name(name)
}

fn read(memory: &Path) -> Result<BTreeMap<String, Signed>, RepoError> {
    match std::fs::read(memory) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Invalid(format!("{}: unreadable: {e}", memory.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(RepoError::io(memory, e)),
    }
}

/// Checks that `current`, the published version of `role` the holder of `ours` is about to
/// sign on top of, is one to believe (see the module's text).
pub fn check(
    role: &str,
    current: &Verified<Targets>,
    ours: &[&SigningKey],
    memory: &Path,
) -> Result<(), RepoError> {
    let raw = current.to_raw();
    if !ours
        .iter()
        .any(|key| verify_signed_by(&raw, key.public_key()).is_ok())
    {
        return Err(RepoError::NotVouched {
            role: role.to_string(),
            reason: format!(
                "the published version {} carries no signature of the keys signing now: the repository may be forging it",
                current.common.version
            ),
        });
    }
    let mut all = read(memory)?;
    let Some(last) = all.get_mut(role) else {
        return Ok(());
    };
    let now = Pinned::of(current);
    if now == last.signed && !last.seen {
        // What they signed is published: the version it was signed on is history now.
        last.seen = true;
        write(memory, &all)?;
        return Ok(());
    }
    // What these keys signed, what they signed on while what they signed is not seen
    // published (its upload failed or was refused), or a version as high or higher that
    // these keys signed (another holder of them signed since: the signature checked above
    // says it is theirs).
    if now == last.signed
        || (!last.seen && Some(&now) == last.on.as_ref())
        || now.version >= last.signed.version
    {
        return Ok(());
    }
    let last_signed = last.signed.version;
    Err(RepoError::NotVouched {
        role: role.to_string(),
        reason: format!(
            "the published version {} is not the version {} these keys last signed ({}), nor later: the repository may be replaying an older one",
            now.version,
            last_signed,
            memory.display()
        ),
    })
}

/// Remembers that the keys of `memory` signed `signed` on top of `on`, before it leaves.
pub fn remember(
    role: &str,
    on: Option<&Verified<Targets>>,
    signed: &[u8],
    memory: &Path,
) -> Result<(), RepoError> {
    let version = serde_json::from_slice::<serde_json::Value>(signed)
        .ok()
        .and_then(|v| v["signed"]["version"].as_u64())
        .ok_or_else(|| RepoError::Invalid("signed metadata without a version".into()))?;
    let mut all = read(memory)?;
    all.insert(
        role.to_string(),
        Signed {
            on: on.map(Pinned::of),
            signed: Pinned {
                version,
                sha256: sha256_hex(signed),
            },
            seen: false,
        },
    );
    write(memory, &all)
}

/// Remembers that what these keys last signed for `role` was published: the version it was
/// signed on is no longer one to sign on again.
pub fn published(role: &str, memory: &Path) -> Result<(), RepoError> {
    let mut all = read(memory)?;
    match all.get_mut(role) {
        Some(last) if !last.seen => {
            last.seen = true;
            write(memory, &all)
        }
        _ => Ok(()),
    }
}

/// Refuses to start `role` from nothing if a version these keys signed of it was seen
/// published: a repository saying it has none would have the next one signed over an empty
/// list, and older versions of it believed again after. (One that was refused, or whose
/// upload failed, may be followed by another first version.)
pub fn check_none(role: &str, memory: &Path) -> Result<(), RepoError> {
    match read(memory)?.get(role) {
        Some(last) if last.seen => Err(RepoError::NotVouched {
            role: role.to_string(),
            reason: format!(
                "the repository says it has no metadata for it, but these keys signed version {} ({})",
                last.signed.version,
                memory.display()
            ),
        }),
        _ => Ok(()),
    }
}

fn write(memory: &Path, all: &BTreeMap<String, Signed>) -> Result<(), RepoError> {
    let bytes = serde_json::to_vec_pretty(all).expect("the memory serializes");
    write_atomic(memory, &bytes)
}

/// Signs `next`, the next version of delegated role `role`, with a supplier's `key` (read
/// from `key_file`, beside which the memory is kept), after checking `current`, the
/// published version it was built on, if there is one.
pub fn sign_delegated(
    role: &str,
    current: Option<&Verified<Targets>>,
    next: &Targets,
    key: &SigningKey,
    key_file: &Path,
) -> Result<Vec<u8>, RepoError> {
    let memory = memory_beside(key_file);
    match current {
        Some(current) => check(role, current, &[key], &memory)?,
        None => check_none(role, &memory)?,
    }
    let bytes =
        uptane_core::sign::sign(next, &[key]).map_err(|e| RepoError::Invalid(e.to_string()))?;
    remember(role, current, &bytes, &memory)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use uptane_core::sign::TargetsBuilder;
    use uptane_core::testing::{key, later};
    use uptane_core::verify::{Raw, verify_signed_by};

    use super::*;

    /// Version `version` of a role, listing `image`, signed by `signer`.
    fn targets(version: u64, image: &str, signer: &SigningKey) -> (Verified<Targets>, Vec<u8>) {
        let bytes = TargetsBuilder::new(version, later())
            .target(image, image.as_bytes(), None)
            .sign(&[signer])
            .unwrap();
        let verified = verify_signed_by(&Raw::new(bytes.clone()), signer.public_key()).unwrap();
        (verified, bytes)
    }

    fn refused(r: Result<(), RepoError>, says: &str) {
        match r {
            Err(RepoError::NotVouched { reason, .. }) => assert!(reason.contains(says), "{reason}"),
            other => panic!("expected a refusal saying {says:?}, got {other:?}"),
        }
    }

    /// A server holding its online keys can forge its whole state, but not a signature of the
    /// keys about to sign: content they never signed is not signed on top of.
    #[test]
    fn a_version_the_signing_keys_never_signed_is_not_signed_on() {
        let dir = tempfile::tempdir().unwrap();
        let memory = memory_in(dir.path());
        let (forged, _) = targets(7, "attacker.bin", &key(66));
        refused(
            check("targets", &forged, &[&key(1)], &memory),
            "carries no signature of the keys signing now",
        );
        let (ours, _) = targets(7, "fw.bin", &key(1));
        check("targets", &ours, &[&key(2), &key(1)], &memory).unwrap();
    }

    /// What these keys signed last, or signed on while its upload is not seen published, or
    /// as high a version they signed, is believed; an earlier version they signed (an image
    /// since removed) is not, nor the version they signed on once the signed one was seen.
    #[test]
    fn an_older_version_than_the_keys_last_signed_is_not_signed_on() {
        let dir = tempfile::tempdir().unwrap();
        let memory = memory_in(dir.path());
        let k = key(1);
        let (v1, _) = targets(1, "old.bin", &k);
        let (v2, v2_bytes) = targets(2, "fixed.bin", &k);
        let (v3, _) = targets(3, "later.bin", &k);
        remember("targets", Some(&v1), &v2_bytes, &memory).unwrap();
        // The upload of version 2 failed: signed again on version 1.
        check("targets", &v1, &[&k], &memory).unwrap();
        check("targets", &v3, &[&k], &memory).unwrap();
        // Another holder of the keys signed another version 2 first.
        let (other_v2, _) = targets(2, "other.bin", &k);
        check("targets", &other_v2, &[&k], &memory).unwrap();
        // Version 2 seen published: version 1 is a replay from now on.
        check("targets", &v2, &[&k], &memory).unwrap();
        refused(
            check("targets", &v1, &[&k], &memory),
            "the repository may be replaying an older one",
        );
        // Or told so by the upload's answer.
        remember("acme", Some(&v1), &v2_bytes, &memory).unwrap();
        published("acme", &memory).unwrap();
        refused(
            check("acme", &v1, &[&k], &memory),
            "is not the version 2 these keys last signed",
        );
        // Each role is remembered on its own.
        check("bosch", &v1, &[&k], &memory).unwrap();
    }

    #[test]
    fn a_supplier_signs_on_its_own_last_version_only() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("acme.pem");
        let k = key(5);
        let (next, _) = targets(1, "acme/fw.bin", &k);
        // Refused by the repository (never published): a first version may be signed again.
        sign_delegated("acme", None, &next, &k, &key_file).unwrap();
        let first = sign_delegated("acme", None, &next, &k, &key_file).unwrap();
        let v1 = verify_signed_by(&Raw::new(first), k.public_key()).unwrap();
        assert!(memory_beside(&key_file).exists());
        let (next, _) = targets(2, "acme/fw2.bin", &k);
        sign_delegated("acme", Some(&v1), &next, &k, &key_file).unwrap();
        let (forged, _) = targets(2, "acme/evil.bin", &key(66));
        assert!(matches!(
            sign_delegated("acme", Some(&forged), &next, &k, &key_file),
            Err(RepoError::NotVouched { .. })
        ));
        // A repository saying the role has no metadata, once a version these keys signed
        // was seen published.
        published("acme", &memory_beside(&key_file)).unwrap();
        assert!(matches!(
            sign_delegated("acme", None, &next, &k, &key_file),
            Err(RepoError::NotVouched { reason, .. }) if reason.contains("says it has no metadata")
        ));
    }
}
