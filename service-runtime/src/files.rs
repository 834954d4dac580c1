//! Files written atomically: a temporary file in the same directory, fsync, rename, fsync of
//! the directory. A `kill -9` at any instant leaves either the old or the new content.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Writes `bytes` to `path` atomically, creating its directory; the file is private (0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with_mode(path, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically with permissions `mode`, creating its directory.
pub fn write_atomic_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    StagedFile::write(path, bytes, mode)?.rename()?;
    sync_dir(&parent_dir(path))
}

/// Bytes written and synced to a temporary file beside the path they are meant for, not yet
/// under its name: [`write_atomic`] in two halves, so a caller can write while it still
/// checks the bytes and give them the name only if they pass. Dropped, the temporary file
/// is removed.
#[derive(Debug)]
pub struct StagedFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl StagedFile {
    /// Writes `bytes` (permissions `mode`) to a temporary file in `path`'s directory,
    /// creating it, and syncs the file.
    pub fn write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = parent_dir(path);
        std::fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .suffix(".partial")
            .tempfile_in(&dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        tmp.as_file().sync_all()?;
        Ok(Self {
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The path the bytes are meant for.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the synced file over its path. After a crash either the old or the new
    /// content is there; the new one only for certain once the directory is synced
    /// ([`sync_dir`]).
    pub fn rename(self) -> std::io::Result<()> {
        self.tmp.persist(&self.path).map(drop).map_err(|e| e.error)
    }
}

/// Flushes a directory entry change (a rename) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes a value as pretty JSON, atomically.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomic(
        path,
        &serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
    )
}

/// Reads a JSON file; errors name the file.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    let bytes = std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("root.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic_with_mode(&path, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn a_staged_file_takes_its_name_only_when_renamed_and_is_gone_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets.json");
        write_atomic(&path, b"old").unwrap();
        let entries = || std::fs::read_dir(dir.path()).unwrap().count();

        let dropped = StagedFile::write(&path, b"refused", 0o600).unwrap();
        assert_eq!(entries(), 2, "the staged bytes are on disk beside the path");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        drop(dropped);
        assert_eq!(entries(), 1, "a dropped staged file is removed");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");

        let staged = StagedFile::write(&path, b"new", 0o600).unwrap();
        assert_eq!(staged.path(), path);
        staged.rename().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(entries(), 1);
    }

    #[test]
    fn json_round_trips_and_names_the_file_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save_json(&path, &vec![1, 2, 3]).unwrap();
        assert_eq!(load_json::<Vec<u32>>(&path).unwrap(), [1, 2, 3]);
        std::fs::write(&path, b"{").unwrap();
        let error = load_json::<Vec<u32>>(&path).unwrap_err();
        assert!(error.to_string().contains("state.json"), "{error}");
    }
}
