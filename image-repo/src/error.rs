//! Repository errors. Each upload refusal maps to a 4xx status with a precise reason.

use std::path::{Path, PathBuf};

use uptane_core::error::{UpdateError, VerifyError};

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file could not be read.
    #[error("key {path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The operating system's random generator failed.
    #[error("random generator: {0}")]
    Random(String),
    /// The directory is not an initialized repository, or is one already.
    #[error("{0}")]
    Layout(String),
    /// Stored metadata does not verify: the repository is damaged.
    #[error("stored metadata does not verify ({role}): {reason}")]
    Corrupt {
        /// Role.
        role: String,
        /// Why.
        reason: String,
    },
    /// Not enough offline keys to reach a role's threshold.
    #[error("{role}: have {have} authorized keys in the key directory, threshold is {threshold}")]
    NotEnoughKeys {
        /// Role.
        role: String,
        /// Keys found.
        have: usize,
        /// Threshold.
        threshold: u32,
    },
    /// Uploaded metadata is malformed or its signatures do not reach the threshold.
    #[error("{0}")]
    Signature(#[from] VerifyError),
    /// Uploaded metadata does not go up in version.
    #[error("{role}: version {new} is not above the published version {current}")]
    VersionNotIncreased {
        /// Role.
        role: String,
        /// Published version.
        current: u64,
        /// Uploaded version.
        new: u64,
    },
    /// Uploaded metadata has already expired.
    #[error("{role}: expired at {expires}")]
    Expired {
        /// Role.
        role: String,
        /// Its expiry.
        expires: String,
    },
    /// No delegation chain from top-level targets authorizes the role for a path.
    #[error("{role} is not authorized for target {path:?}")]
    PathNotDelegated {
        /// Role.
        role: String,
        /// The path.
        path: String,
    },
    /// A target names hardware its delegation does not cover.
    #[error("{role} is not authorized for hardware id {hardware_id:?} (target {path:?})")]
    HardwareNotDelegated {
        /// Role.
        role: String,
        /// Target path.
        path: String,
        /// Hardware id.
        hardware_id: String,
    },
    /// A delegation to a role name another role delegates with other keys or another
    /// threshold: a role name is one role (one file), whose metadata could verify through
    /// only one of them.
    #[error(
        "{role} delegates {delegated:?} with other keys or another threshold than {other} does: a role name names one role"
    )]
    DelegationConflict {
        /// The role whose metadata was refused.
        role: String,
        /// The delegated role name.
        delegated: String,
        /// The role that delegates it already.
        other: String,
    },
    /// The role is not delegated by anyone.
    #[error("no role delegates to {0}")]
    UnknownRole(String),
    /// A target's bytes were not uploaded, or differ from the metadata.
    #[error("target {path:?}: {reason}")]
    BlobMismatch {
        /// Target path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An uploaded blob's bytes do not hash to the digest it was uploaded under.
    #[error("uploaded blob hashes to {actual}, not {expected}")]
    BlobDigest {
        /// Digest in the URL.
        expected: String,
        /// Digest of the bytes.
        actual: String,
    },
    /// A target name that cannot be published (Uptane G-4).
    #[error(transparent)]
    BadTargetName(uptane_core::ids::TargetNameError),
    /// The published version of a role the caller is about to sign on top of is not one
    /// to believe (`repo/vouch.rs`).
    #[error("{role}: refusing to sign: {reason}")]
    NotVouched {
        /// Role.
        role: String,
        /// Why.
        reason: String,
    },
    /// An argument is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A role's update would break the TUF rules for clients.
    #[error(transparent)]
    Update(#[from] Box<UpdateError>),
}

impl RepoError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        RepoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the caller sent something wrong (4xx) rather than the server failing (5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            RepoError::Io { .. }
                | RepoError::BadKey { .. }
                | RepoError::Random(_)
                | RepoError::Layout(_)
                | RepoError::Corrupt { .. }
                | RepoError::NotEnoughKeys { .. }
                | RepoError::NotVouched { .. }
        )
    }
}
