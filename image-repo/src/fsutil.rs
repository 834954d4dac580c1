//! Atomic file writes: temporary file in the same directory, fsync, rename, fsync of the
//! directory. A `kill -9` at any instant leaves the old or the new content, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::RepoError;

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| RepoError::io(&dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(|e| RepoError::io(&dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| RepoError::io(path, e))?;
    // Served files are world-readable like any web content; secrets are written elsewhere.
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| RepoError::io(path, e))?;
    }
    tmp.persist(path)
        .map_err(|e| RepoError::io(path, e.error))?;
    sync_dir(&dir)
}

/// Flushes a directory's entries (after a rename) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), RepoError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| RepoError::io(dir, e))
}

/// The directory holding `path`.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
