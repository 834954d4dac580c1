//! The Director's keys: root keys offline (a key directory the server never reads), targets,
//! snapshot and timestamp keys online in `DIR/keys`, all PKCS#8 PEM with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use uptane_core::crypto::SigningKey;

use crate::error::DirectorError;

/// A new key from the operating system's generator.
pub fn generate() -> Result<SigningKey, DirectorError> {
    SigningKey::generate_with(getrandom::fill)
        .map_err(|e| DirectorError::Internal(format!("random: {e}")))
}

/// Writes a private key readable by its owner only.
pub fn write_private(path: &Path, key: &SigningKey) -> Result<(), DirectorError> {
    write_private_text(path, &key.to_pkcs8_pem())
}

/// Writes a new secret file (mode 0600, never over an existing one): a key, or a database
/// connection string that may hold a password.
pub fn write_private_text(path: &Path, text: &str) -> Result<(), DirectorError> {
    let io = |e: std::io::Error| DirectorError::Internal(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads a private key.
pub fn read_private(path: &Path) -> Result<SigningKey, DirectorError> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| DirectorError::Internal(format!("{}: {e}", path.display())))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| DirectorError::Internal(format!("{}: {e}", path.display())))
}

/// The online keys the server signs per-vehicle metadata with.
#[derive(Debug, Clone)]
pub struct OnlineKeys {
    /// Signs per-vehicle targets.
    pub targets: SigningKey,
    /// Signs per-vehicle snapshots.
    pub snapshot: SigningKey,
    /// Signs per-vehicle timestamps.
    pub timestamp: SigningKey,
}

/// Where `director rotate-online` writes the next key of `role` until the new root lists it.
pub fn next_online_key_path(dir: &Path, role: &str) -> PathBuf {
    dir.join("keys").join(format!("next-{role}.pem"))
}

/// Path of offline root key `key` in the offline key directory.
pub fn offline_root_key_path(offline: &Path, key: &SigningKey) -> PathBuf {
    let short: String = key.key_id().as_str().chars().take(16).collect();
    offline.join(format!("root-{short}.pem"))
}

/// Every offline root key (`root-*.pem`) in `offline`: the signers a new root version needs.
pub fn load_offline_root_keys(offline: &Path) -> Result<Vec<SigningKey>, DirectorError> {
    let io = |e: std::io::Error| DirectorError::Internal(format!("{}: {e}", offline.display()));
    let mut keys = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(offline)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("root-") && n.ends_with(".pem"))
        })
        .collect();
    names.sort();
    for path in names {
        keys.push(read_private(&path)?);
    }
    Ok(keys)
}

/// Path of online key `role` in the Director directory.
pub fn online_key_path(dir: &Path, role: &str) -> PathBuf {
    dir.join("keys").join(format!("{role}.pem"))
}

impl OnlineKeys {
    /// Reads the online keys from `DIR/keys`.
    pub fn load(dir: &Path) -> Result<Self, DirectorError> {
        Ok(Self {
            targets: read_private(&online_key_path(dir, "targets"))?,
            snapshot: read_private(&online_key_path(dir, "snapshot"))?,
            timestamp: read_private(&online_key_path(dir, "timestamp"))?,
        })
    }
}
