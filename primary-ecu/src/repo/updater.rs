//! The TUF client workflow (TUF 1.0.31 §5.3–5.7) over HTTP, for one repository: the I/O
//! for `uptane_core::refresh::Refresh`, and verified target downloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use uptane_core::error::{AttackKind, UpdateError};
use uptane_core::hash::StreamVerifier;
pub use uptane_core::metadata::quote_role;
use uptane_core::metadata::{MetaFile, TargetFile, metadata_file_name};
pub use uptane_core::refresh::RefreshOutcome;
use uptane_core::refresh::{Accepted, Refresh, Step};
use uptane_core::time::UtcTime;
use uptane_core::trusted::{Limits, TrustedSet, TrustedTarget};
use uptane_core::verify::Raw;

use super::fetch::{FetchError, Fetcher};
use crate::ports::RemoteRepository;
use service_runtime::digest::{DigestThreadError, ThreadedDigests};
use service_runtime::files::{StagedFile, sync_dir, write_atomic};

/// Why a refresh or a target download failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The refresh refused metadata.
    #[error("{file}: {source}")]
    Update {
        /// The file being read.
        file: String,
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
    /// The image cannot be checked as approved (no usable hashes).
    #[error(transparent)]
    Image(uptane_core::uptane::UptaneError),
}

impl ClientError {
    /// The attack a failure points to, if any.
    pub fn attack(&self) -> Option<AttackKind> {
        match self {
            ClientError::Update { source, .. } => Some(source.attack()),
            ClientError::Fetch(FetchError::TooLarge { .. }) => Some(AttackKind::EndlessData),
            ClientError::Fetch(FetchError::TooSlow { .. }) => Some(AttackKind::SlowRetrieval),
            // Our credential refused (revoked, expired) is an authentication failure for
            // the operator to fix, not an attack: over TLS only the server can answer so.
            ClientError::Fetch(FetchError::Status {
                status: 401 | 403, ..
            }) => None,
            // Not a missing next root (that ends the root update): a file the metadata
            // says exists was refused.
            ClientError::Fetch(FetchError::Status { .. }) => Some(AttackKind::DropRequest),
            ClientError::Fetch(FetchError::Digest { source, .. }) => Some(match source {
                uptane_core::hash::DigestError::TooLong { .. } => AttackKind::EndlessData,
                _ => AttackKind::ArbitrarySoftware,
            }),
            ClientError::Image(e) => Some(e.attack()),
            _ => None,
        }
    }
}

fn update_err(file: &str) -> impl FnOnce(UpdateError) -> ClientError + '_ {
    move |source| ClientError::Update {
        file: file.to_string(),
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
                .and_then(uptane_core::metadata::root_version_of)
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

    /// Keeps metadata a refresh admitted (roots also as `N.root.json`).
    pub fn keep(&self, accepted: &Accepted) -> Result<(), ClientError> {
        match (accepted.file.role(), accepted.file.version()) {
            ("root", Some(version)) => self.store_root(version, &accepted.bytes),
            (role, _) => self.store(role, &accepted.bytes),
        }
    }

    /// Replaces the kept bytes of `role` atomically.
    pub fn store(&self, role: &str, bytes: &[u8]) -> Result<(), ClientError> {
        let path = self.path(role);
        write_atomic(&path, bytes).map_err(|source| ClientError::Io { path, source })
    }

    /// Writes and syncs `bytes` beside `role`'s file, not yet under its name: see
    /// [`Updater`]'s drive.
    fn stage(&self, role: &str, bytes: &[u8]) -> Result<StagedFile, ClientError> {
        let path = self.path(role);
        StagedFile::write(&path, bytes, 0o600).map_err(|source| ClientError::Io { path, source })
    }

    /// Removes the temporary files a crash left behind (a write, staged or atomic, stopped
    /// before its rename): they never held trusted bytes and nothing reads them. Only one
    /// update uses a directory at a time; a write a dropped refresh left running on its
    /// thread may still be going, and it is never renamed either.
    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-")
                && name.ends_with(".partial")
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::warn!(file = %entry.path().display(), error = %e, "removing a leftover");
            }
        }
    }

    /// Flushes the renames of [`Self::stage`]d files.
    fn sync(&self) -> Result<(), ClientError> {
        sync_dir(&self.dir).map_err(|source| ClientError::Io {
            path: self.dir.clone(),
            source,
        })
    }
}

/// A fetched file at least this large is written and synced while it is checked, and renamed
/// into place if admitted: for a 10,000-target file (2.6 MB) the sync took about 3 ms of the
/// refresh after the check, and hides behind the check's 8 ms. It is written only once the
/// refresh's own check has found it to be what its referrer lists, hashes included
/// ([`Refresh::feed_shared_telling`]), so bytes an attacker substitutes never reach the
/// disk. Smaller files, roots, and files listed without hashes are written only once
/// admitted, so an unchanged timestamp costs no disk write.
const STAGE_WHILE_CHECKING: usize = 64 << 10;

/// A write of a fetched file that runs while the file is checked: `None` when the refresh
/// never said the bytes are those listed (other bytes, or a check that failed before the
/// listing's), and then nothing was written.
type Staging = tokio::task::JoinHandle<Result<Option<StagedFile>, ClientError>>;

/// Starts a blocking thread that writes `bytes` for `role` into `dir` once the refresh says
/// they are what their referrer lists, and returns it with what the refresh calls to say so
/// ([`Refresh::feed_shared_telling`]: the refresh's own hash check, done once). Never told
/// (other bytes, or a check that failed first), it writes nothing.
fn stage_when_listed(
    dir: &MetadataDir,
    role: &str,
    bytes: Arc<[u8]>,
) -> (Staging, impl FnOnce() + Send + use<>) {
    let (tell, told) = std::sync::mpsc::sync_channel::<()>(1);
    let dir = dir.clone();
    let role = role.to_string();
    let staging = tokio::task::spawn_blocking(move || match told.recv() {
        Ok(()) => dir.stage(&role, &bytes).map(Some),
        // The refresh dropped its side without saying so.
        Err(_) => Ok(None),
    });
    // A send fails only when the thread is gone, which then writes nothing anyway.
    (staging, move || {
        let _ = tell.send(());
    })
}

/// The directory sync owed for admitted files renamed into place: made when the drive loop
/// stops, or, if the refresh is dropped midway (a Primary stopping mid-cycle), when this is
/// dropped.
struct OwedSync<'d> {
    dir: &'d MetadataDir,
    owed: bool,
}

impl OwedSync<'_> {
    fn settle(mut self) -> Result<(), ClientError> {
        if std::mem::take(&mut self.owed) {
            self.dir.sync()
        } else {
            Ok(())
        }
    }
}

impl Drop for OwedSync<'_> {
    fn drop(&mut self) {
        if self.owed
            && let Err(e) = self.dir.sync()
        {
            tracing::warn!(error = %e, "syncing the metadata directory of a dropped refresh");
        }
    }
}

fn base_url(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// One update of one repository: the refresh driver, the place it persists to, and the
/// repository it reads. The workflow is `uptane_core::refresh::Refresh`'s; this only does
/// its I/O.
#[derive(Debug)]
pub struct Updater<'r, Repo, R> {
    remote: &'r R,
    dir: MetadataDir,
    refresh: Refresh<Repo>,
    /// Admitted files kept back from their names until [`Updater::keep_held`] (see
    /// [`Updater::hold_until_kept`]); `None` renames each as it is admitted.
    held: Option<Vec<StagedFile>>,
}

impl<'r, Repo, R: RemoteRepository> Updater<'r, Repo, R> {
    /// Starts from the trusted `root.json` in `dir`, at `now` (sampled once per update).
    pub fn new(
        remote: &'r R,
        dir: MetadataDir,
        now: UtcTime,
        limits: Limits,
    ) -> Result<Self, ClientError> {
        let root_path = dir.path("root");
        let root = std::fs::read(&root_path).map_err(|source| ClientError::Io {
            path: root_path,
            source,
        })?;
        let refresh =
            Refresh::new(&Raw::new(root), now, limits).map_err(update_err("root.json"))?;
        dir.remove_leftovers();
        Ok(Self {
            remote,
            dir,
            refresh,
            held: None,
        })
    }

    /// Keeps admitted files (roots excepted) from their names until [`Updater::keep_held`]:
    /// for metadata that must pass a check beyond TUF's before it may become the rollback
    /// reference (the Director's, which must name this vehicle: another vehicle's versions,
    /// replayed and kept, would have every later genuine timestamp refused as a rollback
    /// until this vehicle's own versions passed them). Dropped without it, they are removed.
    pub fn hold_until_kept(mut self) -> Self {
        self.held = Some(Vec::new());
        self
    }

    /// Gives the held files their names, in the order admitted, and syncs the directory.
    pub fn keep_held(&mut self) -> Result<(), ClientError> {
        let held = self.held.as_mut().map(std::mem::take).unwrap_or_default();
        if held.is_empty() {
            return Ok(());
        }
        for staged in held {
            let path = staged.path().to_path_buf();
            staged
                .rename()
                .map_err(|source| ClientError::Io { path, source })?;
        }
        self.dir.sync()
    }

    /// The metadata directory.
    pub fn dir(&self) -> &MetadataDir {
        &self.dir
    }

    /// The delegated roles target searches have loaded, in the order loaded.
    pub fn delegated_roles(&self) -> &[String] {
        self.refresh.delegated_roles()
    }

    /// The verified metadata.
    pub fn trusted(&self) -> &TrustedSet<Repo> {
        self.refresh.trusted()
    }

    /// Does the I/O the refresh asks for until it has nothing more to ask. Admitted files
    /// other than roots are renamed into place as they are admitted and the directory is
    /// synced once, when the refresh stops, whether it succeeded, failed or was dropped
    /// (roots are synced one by one: their chain is kept in order). A crash before that sync
    /// can leave any of those renames undone, each file then older than the others: the next
    /// refresh reads a kept timestamp only as the rollback reference, and a kept snapshot or
    /// targets file only if it is what the newer metadata lists, else downloads it again
    /// (TUF §5.4–5.6; `docs/POUF.md`).
    async fn drive(&mut self) -> Result<(), ClientError> {
        let dir = self.dir.clone();
        let mut owed = OwedSync {
            dir: &dir,
            owed: false,
        };
        let driven = self.drive_renaming(&mut owed.owed).await;
        let synced = owed.settle();
        driven?;
        synced
    }

    async fn drive_renaming(&mut self, renamed: &mut bool) -> Result<(), ClientError> {
        loop {
            let (file, answer, staging) = match self.refresh.next() {
                Step::ReadKept(file) => {
                    let kept = self.dir.load(file.role()).map(Arc::from);
                    (file, kept, None)
                }
                Step::Fetch { file, max_len } => {
                    let fetched: Option<Arc<[u8]>> =
                        self.remote.metadata(&file, max_len).await?.map(Arc::from);
                    // Only bytes a referrer lists with a hash can be known good before
                    // their check: never a root or a timestamp.
                    let listed = self.refresh.listed().is_some_and(MetaFile::names_a_hash);
                    let staging = match &fetched {
                        Some(bytes)
                            if listed
                                && bytes.len() >= STAGE_WHILE_CHECKING
                                && file.role() != "root" =>
                        {
                            Some(stage_when_listed(&self.dir, file.role(), Arc::clone(bytes)))
                        }
                        _ => None,
                    };
                    (file, fetched, staging)
                }
                Step::Done => return Ok(()),
            };
            let (fed, staging) = match staging {
                Some((staging, tell)) => (
                    self.refresh.feed_shared_telling(answer, tell),
                    Some(staging),
                ),
                None => (self.refresh.feed_shared(answer), None),
            };
            // The write ran beside the check. It is waited for either way, so that refused
            // bytes are gone from the disk (the staged file dropped) when this returns.
            let staged = match staging {
                Some(staging) => staging.await.unwrap_or_else(|e| {
                    Err(ClientError::Io {
                        path: self.dir.path(file.role()),
                        source: std::io::Error::other(e),
                    })
                }),
                None => Ok(None),
            };
            let Some(accepted) = fed.map_err(update_err(&file.file_name()))? else {
                continue;
            };
            // `accepted.bytes` are the bytes fed, so a staged file holds exactly them.
            let staged = match staged? {
                Some(staged) => staged,
                None if accepted.file.role() == "root" => {
                    self.dir.keep(&accepted)?;
                    continue;
                }
                None => self.dir.stage(accepted.file.role(), &accepted.bytes)?,
            };
            if let Some(held) = &mut self.held {
                held.push(staged);
                continue;
            }
            let path = staged.path().to_path_buf();
            staged
                .rename()
                .map_err(|source| ClientError::Io { path, source })?;
            *renamed = true;
        }
    }

    /// Root, timestamp, snapshot and top-level targets, in that order (TUF §5.3–5.6).
    pub async fn refresh(&mut self) -> Result<RefreshOutcome, ClientError> {
        self.drive().await?;
        Ok(self.refresh.outcome().unwrap_or(RefreshOutcome::Unchanged))
    }

    /// Finds `path` by the delegation search (TUF §5.6.7), loading roles as needed.
    pub async fn find_target(&mut self, path: &str) -> Result<TrustedTarget<Repo>, ClientError> {
        self.refresh.find(path);
        self.drive().await?;
        self.refresh
            .target(path)
            .cloned()
            .ok_or_else(|| ClientError::TargetNotFound(path.to_string()))
    }

    /// The same for an ECU of `hardware_id`: delegations restricted to other hardware are
    /// not followed.
    pub async fn find_target_for_hardware(
        &mut self,
        path: &str,
        hardware_id: &uptane_core::ids::HardwareId,
    ) -> Result<TrustedTarget<Repo>, ClientError> {
        self.refresh.find_for_hardware(path, hardware_id);
        self.drive().await?;
        self.refresh
            .target_for_hardware(path, hardware_id)
            .cloned()
            .ok_or_else(|| ClientError::TargetNotFound(path.to_string()))
    }

    /// The URL of a target's bytes: with consistent snapshots, the basename is prefixed with
    /// one of its hashes (TUF §5.7.3); the path percent-encoded
    /// (`uptane_core::metadata::quote_target_path`).
    pub fn target_url(&self, target_base_url: &str, path: &str, info: &TargetFile) -> String {
        let base = base_url(target_base_url);
        let path = match info.hashes.values().next() {
            Some(hash) if self.trusted().root().consistent_snapshot => {
                match path.rsplit_once('/') {
                    Some((dir, name)) => format!("{dir}/{hash}.{name}"),
                    None => format!("{hash}.{path}"),
                }
            }
            _ => path.to_string(),
        };
        format!("{base}{}", uptane_core::metadata::quote_target_path(&path))
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
    let digest = |source| FetchError::Digest {
        url: url.to_string(),
        source,
    };
    let verifier = StreamVerifier::new(Some(info.length), &info.hashes).map_err(digest)?;
    let threads = |e: DigestThreadError| match e {
        DigestThreadError::Digest(source) if !source.is_internal() => digest(source).into(),
        other => io_err(std::io::Error::other(other)),
    };
    let mut digests = ThreadedDigests::start(verifier).map_err(threads)?;
    let dir = service_runtime::files::parent_dir(dest);
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(io_err)?;
    let file = tmp.reopen().map_err(io_err)?;
    fetcher
        .download_to(url, &file, &mut digests, info.length)
        .await?;
    digests
        .finish()
        .await
        .map_err(threads)?
        .finish()
        .map_err(digest)?;
    drop(file);
    tmp.persist(dest).map_err(|e| io_err(e.error))?;
    service_runtime::files::sync_dir(&dir).map_err(io_err)
}
