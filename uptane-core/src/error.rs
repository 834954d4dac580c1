//! Errors that name the attack they stopped.

use crate::hash::DigestError;
use crate::time::UtcTime;

/// The kinds of attack the Uptane threat model names (Uptane 2.1.0 §4.2); every check
/// reports which one it stopped, and ECUs put it into their version reports.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// Metadata or an image not signed by the keys that must sign it.
    ArbitrarySoftware,
    /// Older metadata or an older image than one already trusted.
    Rollback,
    /// Expired metadata: a repository or mirror stuck in the past.
    Freeze,
    /// Metadata files that were never published together.
    MixAndMatch,
    /// More bytes than the metadata or configured limits allow.
    EndlessData,
    /// A download slower than the configured minimum.
    SlowRetrieval,
    /// An image for hardware the ECU is not.
    WrongHardware,
    /// Metadata naming an ECU that is not in this vehicle.
    UnknownEcu,
    /// Metadata meant for another vehicle.
    WrongVehicle,
    /// The two repositories disagree about an image.
    RepositoryMismatch,
    /// Metadata that is not well-formed; an attacker may be probing parsers.
    Malformed,
    /// A signed report or manifest sent again, or not answering the nonce it was asked for.
    Replay,
    /// A repository refused or dropped a request for metadata or an image it must serve.
    DropRequest,
    /// A time that cannot be right: a report dated in the future, or a clock moved to make
    /// expired metadata look current (or current metadata look expired).
    TimeTampering,
}

impl AttackKind {
    /// A short stable name (`rollback`, `freeze`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AttackKind::ArbitrarySoftware => "arbitrary_software",
            AttackKind::Rollback => "rollback",
            AttackKind::Freeze => "freeze",
            AttackKind::MixAndMatch => "mix_and_match",
            AttackKind::EndlessData => "endless_data",
            AttackKind::SlowRetrieval => "slow_retrieval",
            AttackKind::WrongHardware => "wrong_hardware",
            AttackKind::UnknownEcu => "unknown_ecu",
            AttackKind::WrongVehicle => "wrong_vehicle",
            AttackKind::RepositoryMismatch => "repository_mismatch",
            AttackKind::Malformed => "malformed",
            AttackKind::Replay => "replay",
            AttackKind::DropRequest => "drop_request",
            AttackKind::TimeTampering => "time_tampering",
        }
    }
}

impl std::fmt::Display for AttackKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why signed metadata was not accepted as signed by its role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not `{"signed": {...}, "signatures": [...]}` or not the role's schema.
    #[error("{role}: malformed metadata: {reason}")]
    Malformed {
        /// Role being read.
        role: String,
        /// What is wrong.
        reason: String,
    },
    /// `_type` is another role's.
    #[error("{role}: metadata has _type {found:?}")]
    WrongType {
        /// Role being read.
        role: String,
        /// The `_type` found.
        found: String,
    },
    /// The `signatures` list names one key id twice (TUF 1.0.31 §5.4: rejected outright).
    #[error("{role}: signatures list key id {keyid} more than once")]
    DuplicateSignature {
        /// Role being read.
        role: String,
        /// Repeated key id.
        keyid: String,
    },
    /// Fewer distinct authorized keys signed than the threshold (arbitrary software attack).
    #[error("{role}: {valid} valid signatures from authorized keys, threshold is {threshold}")]
    Threshold {
        /// Role being read.
        role: String,
        /// Distinct authorized keys whose signature verified.
        valid: u32,
        /// Required count.
        threshold: u32,
    },
    /// The metadata is larger than the limit for its role (endless data attack).
    #[error("{role}: {length} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Role being read.
        role: String,
        /// Size received.
        length: u64,
        /// Limit.
        limit: u64,
    },
}

impl VerifyError {
    /// The attack this refusal stopped.
    pub fn attack(&self) -> AttackKind {
        match self {
            VerifyError::Malformed { .. } | VerifyError::WrongType { .. } => AttackKind::Malformed,
            VerifyError::DuplicateSignature { .. } | VerifyError::Threshold { .. } => {
                AttackKind::ArbitrarySoftware
            }
            VerifyError::TooLarge { .. } => AttackKind::EndlessData,
        }
    }
}

/// Why the TUF client workflow refused an update (TUF 1.0.31 §5.3–5.6, Uptane §5.4.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// Signatures, schema or size.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A version went down, or root did not go up by exactly one (rollback attack).
    #[error("{role}: version {new} is a rollback from trusted version {trusted}")]
    Rollback {
        /// Role.
        role: String,
        /// Trusted version.
        trusted: u64,
        /// Offered version.
        new: u64,
    },
    /// A version differs from what the referring metadata lists (mix-and-match attack).
    #[error("{role}: version {found} differs from the {expected} the {referrer} lists")]
    VersionMismatch {
        /// Role.
        role: String,
        /// Role whose metadata lists the version.
        referrer: String,
        /// Listed version.
        expected: u64,
        /// Version in the file.
        found: u64,
    },
    /// Length or hashes differ from what the referring metadata lists (mix-and-match).
    #[error("{role}: bytes differ from what {referrer} lists: {source}")]
    DigestMismatch {
        /// Role.
        role: String,
        /// Role whose metadata lists the digest.
        referrer: String,
        /// What differs.
        #[source]
        source: DigestError,
    },
    /// Metadata expired (freeze attack).
    #[error("{role}: expired at {expires}")]
    Expired {
        /// Role.
        role: String,
        /// Its expiry.
        expires: UtcTime,
    },
    /// A role the trusted snapshot lists is gone from the new one (rollback attack).
    #[error("snapshot no longer lists {role}")]
    RoleRemoved {
        /// The role.
        role: String,
    },
    /// A delegated role that snapshot does not list.
    #[error("{role} is not listed in snapshot")]
    NotInSnapshot {
        /// The role.
        role: String,
    },
    /// The delegator is not trusted, or does not delegate to this role.
    #[error("{delegator} does not delegate to {role}")]
    NotDelegated {
        /// The role.
        role: String,
        /// The claimed delegator.
        delegator: String,
    },
    /// Updates were applied out of the workflow's order (a bug in the caller).
    #[error("{0} cannot be updated at this point of the workflow")]
    OutOfOrder(&'static str),
    /// More root versions in one update than the configured maximum.
    #[error("more than {0} root rotations in one update")]
    TooManyRootRotations(u64),
    /// More delegated roles than the configured maximum.
    #[error("more than {0} delegated roles")]
    TooManyDelegations(usize),
    /// The repository does not serve a file the trusted metadata says it has.
    #[error("{file}: the repository does not serve it")]
    Missing {
        /// The file name.
        file: String,
    },
}

impl UpdateError {
    /// The attack this refusal stopped.
    pub fn attack(&self) -> AttackKind {
        match self {
            UpdateError::Verify(e) => e.attack(),
            UpdateError::Rollback { .. } | UpdateError::RoleRemoved { .. } => AttackKind::Rollback,
            UpdateError::VersionMismatch { .. } | UpdateError::DigestMismatch { .. } => {
                AttackKind::MixAndMatch
            }
            UpdateError::Expired { .. } => AttackKind::Freeze,
            UpdateError::NotInSnapshot { .. } | UpdateError::NotDelegated { .. } => {
                AttackKind::ArbitrarySoftware
            }
            UpdateError::OutOfOrder(_) => AttackKind::Malformed,
            UpdateError::TooManyRootRotations(_) | UpdateError::TooManyDelegations(_) => {
                AttackKind::EndlessData
            }
            UpdateError::Missing { .. } => AttackKind::DropRequest,
        }
    }
}
