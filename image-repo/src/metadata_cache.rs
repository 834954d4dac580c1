//! The metadata files vehicles ask for, kept in memory: only the current ones.
//!
//! Every vehicle asks for `timestamp.json` at every poll, and for the snapshot and targets
//! files it names when they change; these are served from memory, re-read whenever the
//! file's inode, length or mtime changes (every publish replaces files by rename). Older
//! versions stay on disk and anyone may ask for them, so they are not kept: each is streamed
//! from the file within its connection's memory allowance, as images are. Before, every file
//! asked for was kept for good, and asking for each old version of a large targets file in
//! turn grew the server by the size of the whole metadata directory.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use uptane_core::metadata::metadata_file_name;

/// What a file of the metadata directory is to the cache.
#[derive(Debug)]
pub enum Lookup {
    /// A current file, from memory.
    Current(Bytes),
    /// A file that exists but is not current: to be streamed from disk.
    Older,
    /// No such file.
    Missing,
}

#[derive(Debug, Clone)]
struct CachedFile {
    identity: FileIdentity,
    bytes: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    inode: u64,
    length: u64,
    modified_ns: i64,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            inode: meta.ino(),
            length: meta.len(),
            modified_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        }
    }
}

/// The current metadata files of one directory.
#[derive(Debug, Default)]
pub struct MetadataCache {
    files: RwLock<HashMap<String, CachedFile>>,
    /// The names the timestamp of this identity leads to: worked out (the snapshot parsed)
    /// once per timestamp, not at every request for an older file.
    current: RwLock<Option<(FileIdentity, Arc<BTreeSet<String>>)>>,
}

impl MetadataCache {
    /// `file` (a name already checked to be a plain `.json` file name) of `dir`.
    pub async fn lookup(&self, dir: &Path, file: &str) -> Lookup {
        let Some(identity) = identity(&dir.join(file)) else {
            return Lookup::Missing;
        };
        if let Some(bytes) = self.cached(file, identity) {
            return Lookup::Current(bytes);
        }
        let Some(current) = self.current_names(dir).await else {
            // No readable timestamp: nothing is current but the roots.
            return if is_root(file) {
                self.read(dir, file).await
            } else {
                Lookup::Older
            };
        };
        if is_root(file) || current.contains(file) {
            let found = self.read(dir, file).await;
            self.keep_only(&current);
            found
        } else {
            Lookup::Older
        }
    }

    fn cached(&self, file: &str, identity: FileIdentity) -> Option<Bytes> {
        let files = self.files.read().ok()?;
        files
            .get(file)
            .filter(|c| c.identity == identity)
            .map(|c| c.bytes.clone())
    }

    /// Reads `file` and keeps it.
    async fn read(&self, dir: &Path, file: &str) -> Lookup {
        let path = dir.join(file);
        let Some(identity) = identity(&path) else {
            return Lookup::Missing;
        };
        if let Some(bytes) = self.cached(file, identity) {
            return Lookup::Current(bytes);
        }
        let Ok(bytes) = tokio::fs::read(&path).await else {
            return Lookup::Missing;
        };
        let bytes = Bytes::from(bytes);
        if let Ok(mut files) = self.files.write() {
            files.insert(
                file.to_string(),
                CachedFile {
                    identity,
                    bytes: bytes.clone(),
                },
            );
        }
        Lookup::Current(bytes)
    }

    /// The names the current timestamp leads to: itself, its snapshot, and every role file
    /// that snapshot lists.
    async fn current_names(&self, dir: &Path) -> Option<Arc<BTreeSet<String>>> {
        let stamp = identity(&dir.join("timestamp.json"))?;
        if let Ok(current) = self.current.read()
            && let Some((of, names)) = current.as_ref()
            && *of == stamp
        {
            return Some(Arc::clone(names));
        }
        let names = Arc::new(self.work_out_current(dir).await?);
        if let Ok(mut current) = self.current.write() {
            *current = Some((stamp, Arc::clone(&names)));
        }
        Some(names)
    }

    async fn work_out_current(&self, dir: &Path) -> Option<BTreeSet<String>> {
        let Lookup::Current(timestamp) = self.read(dir, "timestamp.json").await else {
            return None;
        };
        let mut names = BTreeSet::from(["timestamp.json".to_string()]);
        let snapshot_version = serde_json::from_slice::<serde_json::Value>(&timestamp)
            .ok()?["signed"]["meta"]["snapshot.json"]["version"]
            .as_u64()?;
        let snapshot_file = metadata_file_name("snapshot", Some(snapshot_version));
        names.insert(snapshot_file.clone());
        if let Lookup::Current(snapshot) = self.read(dir, &snapshot_file).await
            && let Ok(snapshot) = serde_json::from_slice::<serde_json::Value>(&snapshot)
            && let Some(meta) = snapshot["signed"]["meta"].as_object()
        {
            for (name, listed) in meta {
                if let (Some(role), Some(version)) =
                    (name.strip_suffix(".json"), listed["version"].as_u64())
                {
                    names.insert(metadata_file_name(role, Some(version)));
                }
            }
        }
        Some(names)
    }

    /// Forgets the files that are no longer current (roots stay: all are served for ever).
    fn keep_only(&self, current: &BTreeSet<String>) {
        if let Ok(mut files) = self.files.write() {
            files.retain(|name, _| is_root(name) || current.contains(name));
        }
    }

    /// How many files are kept, for tests.
    pub fn len(&self) -> usize {
        self.files.read().map_or(0, |f| f.len())
    }

    /// Whether no file is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn identity(path: &Path) -> Option<FileIdentity> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| FileIdentity::of(&meta))
}

fn is_root(file: &str) -> bool {
    uptane_core::metadata::root_version_of(file).is_some()
}
