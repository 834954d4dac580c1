//! The TUF client workflow (TUF 1.0.31 §5.3–5.7) over HTTP, for one repository.

use std::path::{Path, PathBuf};

use uptane_core::error::{AttackKind, UpdateError};
use uptane_core::hash::StreamVerifier;
pub use uptane_core::metadata::quote_role;
use uptane_core::metadata::{TargetFile, metadata_file_name};
use uptane_core::time::UtcTime;
use uptane_core::trusted::{
    Freshness, Limits, SearchStep, TargetSearch, TimestampUpdate, TrustedSet, TrustedTarget,
};
use uptane_core::verify::Raw;

use super::fetch::{FetchError, Fetcher};
use service_runtime::files::write_atomic;

/// Why a refresh or a target download failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The trusted set refused metadata.
    #[error("{role}: {source}")]
    Update {
        /// Role being updated.
        role: String,
        /// Why.
        #[source]
        source: Box<UpdateError>,
    },
    /// A download failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Reading or writing local state failed.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No trusted role lists the target (on a path the delegations permit).
    #[error("no trusted metadata lists target {0:?}")]
    TargetNotFound(String),
}

impl ClientError {
    /// The attack a failure points to, if any.
    pub fn attack(&self) -> Option<AttackKind> {
        match self {
            ClientError::Update { source, .. } => Some(source.attack()),
            ClientError::Fetch(FetchError::TooLarge { .. }) => Some(AttackKind::EndlessData),
            ClientError::Fetch(FetchError::TooSlow { .. }) => Some(AttackKind::SlowRetrieval),
            // Not a missing next root (that ends the root update): a file the metadata
            // says exists was refused.
            ClientError::Fetch(FetchError::Status { .. }) => Some(AttackKind::DropRequest),
            ClientError::Fetch(FetchError::Digest { source, .. }) => Some(match source {
                uptane_core::hash::DigestError::TooLong { .. } => AttackKind::EndlessData,
                _ => AttackKind::ArbitrarySoftware,
            }),
            _ => None,
        }
    }
}

fn update_err(role: &str) -> impl FnOnce(UpdateError) -> ClientError + '_ {
    move |source| ClientError::Update {
        role: role.to_string(),
        source: Box::new(source),
    }
}

/// A directory of trusted metadata: `<quoted role>.json`, the exact bytes received.
#[derive(Debug, Clone)]
pub struct MetadataDir {
    dir: PathBuf,
    keep_root_history: bool,
}

impl MetadataDir {
    /// Metadata kept in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            keep_root_history: false,
        }
    }

    /// Metadata kept in `dir`, with every root version also kept as `N.root.json`: a Primary
    /// forwards the whole chain to Secondaries that may trust any older version.
    pub fn with_root_history(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            keep_root_history: true,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `bytes` as root version `version` (and as the current root).
    pub fn store_root(&self, version: u64, bytes: &[u8]) -> Result<(), ClientError> {
        if self.keep_root_history {
            let path = self.dir.join(metadata_file_name("root", Some(version)));
            write_atomic(&path, bytes).map_err(|source| ClientError::Io { path, source })?;
        }
        self.store("root", bytes)
    }

    /// The kept root versions, oldest first (with [`MetadataDir::with_root_history`]).
    pub fn root_history(&self) -> Result<Vec<Vec<u8>>, ClientError> {
        let io = |source| ClientError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut versions = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".root.json"))
                .and_then(|v| v.parse::<u64>().ok())
            {
                versions.push(version);
            }
        }
        versions.sort_unstable();
        versions
            .into_iter()
            .map(|v| {
                let path = self.dir.join(metadata_file_name("root", Some(v)));
                std::fs::read(&path).map_err(|source| ClientError::Io { path, source })
            })
            .collect()
    }

    /// Where role `role` is kept.
    pub fn path(&self, role: &str) -> PathBuf {
        self.dir.join(metadata_file_name(role, None))
    }

    /// The kept bytes of `role`, if any.
    pub fn load(&self, role: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(role)).ok()
    }

    /// Replaces the kept bytes of `role` atomically.
    pub fn store(&self, role: &str, bytes: &[u8]) -> Result<(), ClientError> {
        let path = self.path(role);
        write_atomic(&path, bytes).map_err(|source| ClientError::Io { path, source })
    }
}

/// Whether a refresh found anything new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The timestamp did not change: the trusted metadata is current as it was.
    Unchanged,
    /// New metadata was verified and persisted.
    Updated,
}

fn base_url(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// One update of one repository: a trusted set, the place it persists to, and the fetcher.
#[derive(Debug)]
pub struct Updater<Repo> {
    metadata_url: String,
    fetcher: Fetcher,
    dir: MetadataDir,
    set: TrustedSet<Repo>,
    delegated_roles: Vec<String>,
}

impl<Repo> Updater<Repo> {
    /// Starts from the trusted `root.json` in `dir`, at `now` (sampled once per update).
    pub fn new(
        metadata_url: &str,
        dir: MetadataDir,
        fetcher: Fetcher,
        now: UtcTime,
        limits: Limits,
    ) -> Result<Self, ClientError> {
        let root_path = dir.path("root");
        let root = std::fs::read(&root_path).map_err(|source| ClientError::Io {
            path: root_path,
            source,
        })?;
        let set = TrustedSet::new(&Raw::new(root), now, limits).map_err(update_err("root"))?;
        Ok(Self {
            metadata_url: base_url(metadata_url),
            fetcher,
            dir,
            set,
            delegated_roles: Vec::new(),
        })
    }

    /// The metadata directory.
    pub fn dir(&self) -> &MetadataDir {
        &self.dir
    }

    /// The delegated roles target searches have loaded, in the order loaded.
    pub fn delegated_roles(&self) -> &[String] {
        &self.delegated_roles
    }

    /// The verified metadata.
    pub fn trusted(&self) -> &TrustedSet<Repo> {
        &self.set
    }

    fn url(&self, role: &str, version: Option<u64>) -> String {
        format!("{}{}", self.metadata_url, metadata_file_name(role, version))
    }

    /// Root, timestamp, snapshot and top-level targets, in that order (TUF §5.3–5.6).
    pub async fn refresh(&mut self) -> Result<RefreshOutcome, ClientError> {
        self.update_root().await?;
        let outcome = self.update_timestamp().await?;
        self.update_snapshot().await?;
        self.load_targets("targets", "root").await?;
        Ok(outcome)
    }

    async fn update_root(&mut self) -> Result<(), ClientError> {
        let limits = *self.set.limits();
        for _ in 0..limits.max_root_rotations {
            let next = self.set.root().common.version + 1;
            let url = self.url("root", Some(next));
            let bytes = match self.fetcher.fetch_bounded(&url, limits.root).await {
                Ok(bytes) => bytes,
                // TUF §5.3.3: no N+1 means the trusted root is the newest.
                Err(e) if matches!(e.status(), Some(403 | 404)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            self.set
                .update_root(&Raw::new(bytes.clone()))
                .map_err(update_err("root"))?;
            self.dir.store_root(next, &bytes)?;
        }
        Ok(())
    }

    async fn update_timestamp(&mut self) -> Result<RefreshOutcome, ClientError> {
        if let Some(local) = self.dir.load("timestamp") {
            // A kept timestamp that no longer verifies (e.g. its key rotated) is forgotten.
            let _ = self.set.load_local_timestamp(&Raw::new(local));
        }
        let limit = self.set.limits().timestamp;
        let bytes = self
            .fetcher
            .fetch_bounded(&self.url("timestamp", None), limit)
            .await?;
        match self
            .set
            .update_timestamp(&Raw::new(bytes.clone()))
            .map_err(update_err("timestamp"))?
        {
            TimestampUpdate::Unchanged => Ok(RefreshOutcome::Unchanged),
            TimestampUpdate::Updated => {
                self.dir.store("timestamp", &bytes)?;
                Ok(RefreshOutcome::Updated)
            }
        }
    }

    async fn update_snapshot(&mut self) -> Result<(), ClientError> {
        if let Some(local) = self.dir.load("snapshot")
            && let Ok(Freshness::Current) = self.set.load_local_snapshot(&Raw::new(local))
        {
            return Ok(());
        }
        let request = self
            .set
            .snapshot_request()
            .map_err(update_err("snapshot"))?;
        let bytes = self
            .fetcher
            .fetch_bounded(&self.url("snapshot", request.version), request.max_length)
            .await?;
        self.set
            .update_snapshot(&Raw::new(bytes.clone()))
            .map_err(update_err("snapshot"))?;
        self.dir.store("snapshot", &bytes)
    }

    /// Makes targets role `role`, verified through `delegator`, trusted: from memory, from
    /// the metadata directory if still current, or downloaded.
    async fn load_targets(&mut self, role: &str, delegator: &str) -> Result<(), ClientError> {
        if self.set.role_via(role, delegator).is_some() {
            return Ok(());
        }
        if let Some(local) = self.dir.load(role)
            && self
                .set
                .update_delegated_targets(&Raw::new(local), role, delegator)
                .is_ok()
        {
            return Ok(());
        }
        let request = self.set.targets_request(role).map_err(update_err(role))?;
        let bytes = self
            .fetcher
            .fetch_bounded(&self.url(role, request.version), request.max_length)
            .await?;
        self.set
            .update_delegated_targets(&Raw::new(bytes.clone()), role, delegator)
            .map_err(update_err(role))?;
        self.dir.store(role, &bytes)
    }

    /// Finds `path` by the delegation search (TUF §5.6.7), loading roles as needed.
    pub async fn find_target(&mut self, path: &str) -> Result<TrustedTarget<Repo>, ClientError> {
        let mut search = TargetSearch::new(path);
        loop {
            match search.step(&self.set) {
                SearchStep::Load { role, delegator } => {
                    self.load_targets(&role, &delegator).await?;
                    if !self.delegated_roles.contains(&role) {
                        self.delegated_roles.push(role);
                    }
                }
                SearchStep::Found(target) => return Ok(target),
                SearchStep::NotFound => return Err(ClientError::TargetNotFound(path.to_string())),
            }
        }
    }

    /// The URL of a target's bytes: with consistent snapshots, the basename is prefixed with
    /// one of its hashes (TUF §5.7.3).
    pub fn target_url(&self, target_base_url: &str, path: &str, info: &TargetFile) -> String {
        let base = base_url(target_base_url);
        match info.hashes.values().next() {
            Some(hash) if self.set.root().consistent_snapshot => match path.rsplit_once('/') {
                Some((dir, name)) => format!("{base}{dir}/{hash}.{name}"),
                None => format!("{base}{hash}.{path}"),
            },
            _ => format!("{base}{path}"),
        }
    }
}

/// Whether `file` already holds exactly the bytes `info` describes.
pub fn is_cached(file: &Path, info: &TargetFile) -> bool {
    use std::io::Read;
    // Streamed: a cached image may be far larger than memory should hold for a check.
    let (Ok(mut input), Ok(mut verifier)) = (
        std::fs::File::open(file),
        StreamVerifier::new(Some(info.length), &info.hashes),
    ) else {
        return false;
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return verifier.finish().is_ok(),
            Ok(n) if verifier.update(&buf[..n]).is_ok() => {}
            _ => return false,
        }
    }
}

/// Downloads `url` to `dest`, verifying length and every hash while streaming. The bytes go
/// to a temporary file beside `dest`, renamed over it only once verified, so a failed
/// download leaves nothing behind.
pub async fn download_verified(
    fetcher: &Fetcher,
    url: &str,
    info: &TargetFile,
    dest: &Path,
) -> Result<(), ClientError> {
    let io_err = |source| ClientError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let mut verifier = StreamVerifier::new(Some(info.length), &info.hashes).map_err(|source| {
        FetchError::Digest {
            url: url.to_string(),
            source,
        }
    })?;
    let dir = service_runtime::files::parent_dir(dest);
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(io_err)?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(io_err)?);
    fetcher
        .download_to(url, &mut file, &mut verifier, info.length)
        .await?;
    verifier.finish().map_err(|source| FetchError::Digest {
        url: url.to_string(),
        source,
    })?;
    drop(file);
    tmp.persist(dest).map_err(|e| io_err(e.error))?;
    service_runtime::files::sync_dir(&dir).map_err(io_err)
}
