//! The root chain (TUF 1.0.31 §5.3.2–5.3.10, Uptane §5.4.4.3 step 2): from a trusted root,
//! each newer root is accepted only as version N+1, signed by a threshold of the keys of
//! version N and of its own, at most a configured number of times per update; only the
//! final root must be unexpired. Every client (Primary, Secondaries in both modes, the
//! Director's catalog, the Image repository reading itself) walks roots through this type,
//! so none can skip a rule.

use crate::error::{UpdateError, VerifyError};
use crate::metadata::Root;
use crate::time::UtcTime;
use crate::verify::{self, Raw, Verified};

/// A trusted root and the rules for moving to the next one.
#[derive(Debug, Clone)]
pub struct RootChain {
    root: Verified<Root>,
    rotations: u64,
    max_rotations: u64,
    max_length: u64,
    /// Every earlier root of this chain, oldest first: kept only for a repository reading
    /// its own state, which may find timestamp or snapshot still signed with the keys of an
    /// earlier root (an online key rotation interrupted before re-signing).
    earlier: Option<Vec<Verified<Root>>>,
}

pub(crate) fn check_size(role: &str, bytes: &[u8], limit: u64) -> Result<(), UpdateError> {
    let length = bytes.len() as u64;
    if length > limit {
        return Err(VerifyError::TooLarge {
            role: role.to_string(),
            length,
            limit,
        }
        .into());
    }
    Ok(())
}

impl RootChain {
    /// Starts from a trusted root, which must be signed by a threshold of its own root keys
    /// (TUF §5.2) and be at most `max_length` bytes. At most `max_rotations` newer versions
    /// are accepted afterwards.
    pub fn new(
        trusted: &Raw<Root>,
        max_length: u64,
        max_rotations: u64,
    ) -> Result<Self, UpdateError> {
        check_size("root", trusted.as_bytes(), max_length)?;
        let root = verify::verify_root_self_signed(trusted)?;
        Ok(Self {
            root,
            rotations: 0,
            max_rotations,
            max_length,
            earlier: None,
        })
    }

    /// Keeps every root the chain passes through ([`Self::earlier`]).
    pub(crate) fn keep_earlier(mut self) -> Self {
        self.earlier = Some(Vec::new());
        self
    }

    /// The newest trusted root.
    pub fn trusted(&self) -> &Verified<Root> {
        &self.root
    }

    /// Earlier roots of the chain, newest first (only when kept).
    pub(crate) fn earlier(&self) -> impl Iterator<Item = &Verified<Root>> {
        self.earlier.iter().flatten().rev()
    }

    /// The only version [`Self::apply`] accepts next.
    pub fn next_version(&self) -> u64 {
        self.root.common.version.saturating_add(1)
    }

    /// Newer versions accepted so far.
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    /// The largest root file accepted.
    pub fn max_length(&self) -> u64 {
        self.max_length
    }

    /// Whether another rotation is allowed.
    pub fn can_rotate(&self) -> bool {
        self.rotations < self.max_rotations
    }

    /// Accepts root version N+1.
    pub fn apply(&mut self, raw: &Raw<Root>) -> Result<(), UpdateError> {
        // An endless chain of roots is an endless data attack.
        if !self.can_rotate() {
            return Err(UpdateError::TooManyRootRotations(self.max_rotations));
        }
        check_size("root", raw.as_bytes(), self.max_length)?;
        // §5.3.5: signed by a threshold of the trusted root's keys and of its own. The
        // version is read only from what those signatures cover.
        let new = verify::verify_root_rotation(&self.root, raw)?;
        let trusted = self.root.common.version;
        let version = new.common.version;
        // §5.3.6 / Uptane §5.4.4.3 step 2.4: exactly N+1, never lower, never a skip.
        if version <= trusted {
            return Err(UpdateError::Rollback {
                role: "root".into(),
                trusted,
                new: version,
            });
        }
        if version != self.next_version() {
            return Err(UpdateError::VersionMismatch {
                role: "root".into(),
                referrer: "root chain".into(),
                expected: self.next_version(),
                found: version,
            });
        }
        let old = std::mem::replace(&mut self.root, new);
        if let Some(earlier) = &mut self.earlier {
            earlier.push(old);
        }
        self.rotations += 1;
        Ok(())
    }

    /// §5.3.10: the final root must not have expired at `now` (a freeze attack otherwise).
    /// Intermediate roots may have.
    pub fn check_final(&self, now: UtcTime) -> Result<(), UpdateError> {
        if self.root.common.is_expired(now) {
            return Err(UpdateError::Expired {
                role: "root".into(),
                expires: self.root.common.expires,
            });
        }
        Ok(())
    }
}
