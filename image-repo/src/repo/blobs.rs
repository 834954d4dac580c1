//! Content-addressed blobs (`blobs/<sha256>`, with their length and hashes), and the
//! `targets/` links that serve them under consistent-snapshot names.

use super::Repository;
use super::corrupt;
use crate::error::RepoError;
use crate::fsutil::write_atomic;
use serde::Deserialize;
use serde::Serialize;
use std::path::Path;
use std::path::PathBuf;
use uptane_core::hash::Hashes;
use uptane_core::hash::standard_hashes;
use uptane_core::metadata::TargetFile;

/// Length and hashes of a stored blob, computed when its bytes were received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// Length in bytes.
    pub length: u64,
    /// sha256 and sha512.
    pub hashes: Hashes,
}

/// Hashes bytes as they arrive: length, sha256, sha512.
#[derive(Default)]
pub struct BlobHasher {
    length: u64,
    sha256: sha2::Sha256,
    sha512: sha2::Sha512,
}

impl std::fmt::Debug for BlobHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobHasher")
            .field("length", &self.length)
            .finish()
    }
}

impl BlobHasher {
    /// Feeds bytes.
    pub fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest;
        self.length += chunk.len() as u64;
        self.sha256.update(chunk);
        self.sha512.update(chunk);
    }

    /// Bytes so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Length and hashes.
    pub fn finish(self) -> BlobInfo {
        use sha2::Digest;
        BlobInfo {
            length: self.length,
            hashes: Hashes::from([
                ("sha256".to_string(), hex::encode(self.sha256.finalize())),
                ("sha512".to_string(), hex::encode(self.sha512.finalize())),
            ]),
        }
    }
}

/// Length and hashes of the file at `path`, read in 1 MiB blocks, each also handed to `sink`.
pub fn hash_file(
    path: &Path,
    mut sink: impl FnMut(&[u8]) -> Result<(), RepoError>,
) -> Result<BlobInfo, RepoError> {
    use std::io::Read;
    let mut input = std::fs::File::open(path).map_err(|e| RepoError::io(path, e))?;
    let mut hasher = BlobHasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(|e| RepoError::io(path, e))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
    }
}

/// Length and hashes of bytes in memory.
pub fn blob_info_of(bytes: &[u8]) -> BlobInfo {
    BlobInfo {
        length: bytes.len() as u64,
        hashes: standard_hashes(bytes),
    }
}

impl Repository {
    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs_dir().join(sha256)
    }

    /// Length and hashes of a stored blob, if the store has it.
    pub fn blob_info(&self, sha256: &str) -> Result<Option<BlobInfo>, RepoError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let path = self.blobs_dir().join(format!("{sha256}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| corrupt("blob", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::io(&path, e)),
        }
    }

    /// Stores a blob whose bytes are in `tmp` (a file inside the blob directory) with the
    /// given length and hashes: renamed into place with its description.
    pub fn store_blob(
        &self,
        tmp: tempfile::NamedTempFile,
        info: &BlobInfo,
    ) -> Result<String, RepoError> {
        let sha256 = info
            .hashes
            .get("sha256")
            .cloned()
            .ok_or_else(|| RepoError::Invalid("blob without sha256".into()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| RepoError::io(tmp.path(), e))?;
        let dest = self.blob_path(&sha256);
        tmp.persist(&dest)
            .map_err(|e| RepoError::io(&dest, e.error))?;
        let description = serde_json::to_vec(info).expect("blob info serializes");
        write_atomic(
            &self.blobs_dir().join(format!("{sha256}.json")),
            &description,
        )?;
        Ok(sha256)
    }

    /// A temporary file in the blob store, for bytes being received.
    pub fn blob_tempfile(&self) -> Result<tempfile::NamedTempFile, RepoError> {
        let dir = self.blobs_dir();
        std::fs::create_dir_all(&dir).map_err(|e| RepoError::io(&dir, e))?;
        tempfile::Builder::new()
            .prefix(".upload-")
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(|e| RepoError::io(&dir, e))
    }

    /// Copies a local file into the blob store, hashing it on the way.
    pub fn import_file(&self, path: &Path) -> Result<BlobInfo, RepoError> {
        use std::io::Write;
        let mut tmp = self.blob_tempfile()?;
        let tmp_path = tmp.path().to_path_buf();
        let info = hash_file(path, |chunk| {
            tmp.write_all(chunk)
                .map_err(|e| RepoError::io(&tmp_path, e))
        })?;
        self.store_blob(tmp, &info)?;
        Ok(info)
    }

    pub(super) fn check_blob(&self, path: &str, info: &TargetFile) -> Result<(), RepoError> {
        let mismatch = |reason: String| RepoError::BlobMismatch {
            path: path.to_string(),
            reason,
        };
        let sha256 = info
            .hashes
            .get("sha256")
            .ok_or_else(|| mismatch("no sha256 hash listed".into()))?;
        let blob = self
            .blob_info(&sha256.to_ascii_lowercase())?
            .ok_or_else(|| mismatch(format!("no uploaded blob with sha256 {sha256}")))?;
        if blob.length != info.length {
            return Err(mismatch(format!(
                "blob is {} bytes, metadata says {}",
                blob.length, info.length
            )));
        }
        for (alg, digest) in &info.hashes {
            match blob.hashes.get(alg) {
                Some(actual) if actual.eq_ignore_ascii_case(digest) => {}
                Some(actual) => {
                    return Err(mismatch(format!(
                        "{alg} of the blob is {actual}, metadata says {digest}"
                    )));
                }
                None => return Err(mismatch(format!("unsupported hash algorithm {alg:?}"))),
            }
        }
        Ok(())
    }

    /// Hard-links the blob of `path` under every hash-prefixed name clients may request;
    /// returns the directory, which the caller syncs once for all links.
    pub(super) fn link_target(&self, path: &str, info: &TargetFile) -> Result<PathBuf, RepoError> {
        let sha256 = info.hashes["sha256"].to_ascii_lowercase();
        let blob = self.blob_path(&sha256);
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (self.targets_dir().join(dir), name),
            None => (self.targets_dir(), path),
        };
        std::fs::create_dir_all(&dir).map_err(|e| RepoError::io(&dir, e))?;
        for digest in info.hashes.values() {
            let link = dir.join(format!("{}.{name}", digest.to_ascii_lowercase()));
            if link.exists() {
                continue;
            }
            let tmp = dir.join(format!(".tmp-link-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::fs::hard_link(&blob, &tmp).map_err(|e| RepoError::io(&tmp, e))?;
            std::fs::rename(&tmp, &link).map_err(|e| RepoError::io(&link, e))?;
        }
        Ok(dir)
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Collected {
    /// Blobs no published role lists, removed.
    pub blobs: usize,
    /// Uploads interrupted (a process killed while receiving), removed.
    pub partial_uploads: usize,
    /// Bytes freed.
    pub bytes: u64,
}

impl Repository {
    /// Removes what an uploader left and no published metadata lists, once it is older than
    /// `grace` (so an upload waiting for the metadata that lists it is kept): blobs that no
    /// targets role of the current state names (uploads whose metadata was refused, or never
    /// came), and partial uploads. Published images stay: `targets/` links them.
    pub fn collect_garbage(
        &self,
        now: std::time::SystemTime,
        grace: std::time::Duration,
    ) -> Result<Collected, RepoError> {
        // Not beside a publish: one could link a blob this found unlisted as it removes it.
        let _lock = self.lock()?;
        let state = self.state()?;
        let listed: std::collections::BTreeSet<String> = state
            .roles
            .values()
            .flat_map(|role| role.targets.values())
            .filter_map(|info| info.hashes.get("sha256"))
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let dir = self.blobs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Collected::default()),
            Err(e) => return Err(RepoError::io(&dir, e)),
        };
        let old_enough = |path: &Path| -> Result<Option<u64>, RepoError> {
            let meta = std::fs::metadata(path).map_err(|e| RepoError::io(path, e))?;
            let modified = meta.modified().map_err(|e| RepoError::io(path, e))?;
            Ok((now.duration_since(modified).unwrap_or_default() >= grace).then_some(meta.len()))
        };
        let mut collected = Collected::default();
        let mut unlisted = std::collections::BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(|e| RepoError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".upload-") {
                if let Some(len) = old_enough(&path)? {
                    std::fs::remove_file(&path).map_err(|e| RepoError::io(&path, e))?;
                    collected.partial_uploads += 1;
                    collected.bytes += len;
                }
                continue;
            }
            // A blob is `SHA256` and `SHA256.json`; either may be left alone by a crash.
            let sha256 = name.strip_suffix(".json").unwrap_or(&name);
            if sha256.len() == 64
                && sha256.bytes().all(|b| b.is_ascii_hexdigit())
                && !listed.contains(sha256)
                && old_enough(&path)?.is_some()
            {
                unlisted.insert(sha256.to_string());
            }
        }
        for sha256 in unlisted {
            for path in [self.blob_path(&sha256), dir.join(format!("{sha256}.json"))] {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                match std::fs::remove_file(&path) {
                    Ok(()) => collected.bytes += len,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(RepoError::io(&path, e)),
                }
            }
            collected.blobs += 1;
        }
        Ok(collected)
    }
}
