//! Key files: generation, PKCS#8 PEM storage (mode 0600), and key directories.
//!
//! Offline keys (root, targets) live in a key directory the server never reads, one file per
//! key named `<role>-<first 16 hex of the key id>.pem`. Online keys (snapshot, timestamp)
//! live in the repository's `keys/` directory.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use uptane_core::crypto::{KeyId, PublicKey, SigningKey};

use crate::error::RepoError;

/// A new key from the operating system's random generator.
pub fn generate() -> Result<SigningKey, RepoError> {
    SigningKey::generate_with(getrandom::fill).map_err(|e| RepoError::Random(e.to_string()))
}

/// Writes a private key as PKCS#8 PEM, readable by its owner only, atomically.
pub fn write_private(path: &Path, key: &SigningKey) -> Result<(), RepoError> {
    let dir = crate::fsutil::parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| RepoError::io(&dir, e))?;
    let tmp = dir.join(format!(
        ".tmp-{}.partial",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key")
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| RepoError::io(&tmp, e))?;
    file.write_all(key.to_pkcs8_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| RepoError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RepoError::io(path, e))?;
    crate::fsutil::sync_dir(&dir)
}

/// Reads a PKCS#8 PEM private key.
pub fn read_private(path: &Path) -> Result<SigningKey, RepoError> {
    let pem = std::fs::read_to_string(path).map_err(|e| RepoError::io(path, e))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| RepoError::BadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes a public key as its TUF JSON object.
pub fn write_public(path: &Path, key: &PublicKey) -> Result<(), RepoError> {
    let bytes = serde_json::to_vec_pretty(key.to_json()).expect("a JSON value serializes");
    crate::fsutil::write_atomic(path, &bytes)
}

/// Reads a public key from its TUF JSON object, or from a PKCS#8 private key file.
pub fn read_public(path: &Path) -> Result<PublicKey, RepoError> {
    let text = std::fs::read_to_string(path).map_err(|e| RepoError::io(path, e))?;
    if text.contains("PRIVATE KEY") {
        return Ok(read_private(path)?.public_key().clone());
    }
    let bad = |reason: String| RepoError::BadKey {
        path: path.to_path_buf(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    PublicKey::from_json(json).map_err(|e| bad(e.to_string()))
}

/// File name of a key for `role` in a key directory.
pub fn key_file(dir: &Path, role: &str, id: &KeyId) -> PathBuf {
    let short: String = id.as_str().chars().take(16).collect();
    dir.join(format!("{role}-{short}.pem"))
}

/// Every private key in `dir` whose file name starts with `<role>-`.
pub fn load_role_keys(dir: &Path, role: &str) -> Result<Vec<SigningKey>, RepoError> {
    let prefix = format!("{role}-");
    let mut keys = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| RepoError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| RepoError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(&prefix) && name.ends_with(".pem") {
            keys.push(read_private(&entry.path())?);
        }
    }
    Ok(keys)
}

/// Keys from `candidates` that `authorized` lists, at most `threshold` of them: what to sign with.
pub fn signers<'a>(
    candidates: &'a [SigningKey],
    authorized: &[KeyId],
    threshold: u32,
) -> Vec<&'a SigningKey> {
    candidates
        .iter()
        .filter(|k| authorized.contains(&k.key_id()))
        .take(threshold as usize)
        .collect()
}
