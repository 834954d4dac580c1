//! Atomic file writes (`service_runtime::files`) with the repository's errors. Served files
//! are world-readable like any web content; secrets are written elsewhere.

use std::path::{Path, PathBuf};

use crate::error::RepoError;

/// Writes `bytes` to `path` atomically, readable by all (0644).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    service_runtime::files::write_atomic_with_mode(path, bytes, 0o644)
        .map_err(|e| RepoError::io(path, e))
}

/// Flushes a directory's entries (after a rename) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), RepoError> {
    service_runtime::files::sync_dir(dir).map_err(|e| RepoError::io(dir, e))
}

/// The directory holding `path`.
pub fn parent_dir(path: &Path) -> PathBuf {
    service_runtime::files::parent_dir(path)
}
