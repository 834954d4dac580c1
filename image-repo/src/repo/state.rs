//! The published state, read back and verified as a client reads it, from the
//! repository's own viewpoint (`uptane_core::refresh::Refresh::for_publisher`).

use super::corrupt;
use crate::error::RepoError;
use std::collections::BTreeMap;
use uptane_core::metadata::DelegatedRole;
use uptane_core::metadata::Root;
use uptane_core::metadata::Snapshot;
use uptane_core::metadata::Targets;
use uptane_core::metadata::Timestamp;
use uptane_core::refresh::MetadataFile;
use uptane_core::refresh::MetadataSource;
use uptane_core::refresh::Refresh;
use uptane_core::trusted::Limits;
use uptane_core::trusted::Published;
use uptane_core::verify::Raw;
use uptane_core::verify::Verified;

/// The published metadata, verified.
#[derive(Debug)]
pub struct RepoState {
    /// Latest root.
    pub root: Verified<Root>,
    /// Current timestamp.
    pub timestamp: Verified<Timestamp>,
    /// Current snapshot.
    pub snapshot: Verified<Snapshot>,
    /// Every targets role reachable from top-level targets, by name.
    pub roles: BTreeMap<String, Verified<Targets>>,
    /// False when the published timestamp or snapshot is signed by keys of an earlier root
    /// only (an online key rotation not yet followed by re-signing): they must be re-signed.
    pub online_keys_current: bool,
}

/// A chain of delegations from top-level targets down to a role, and the keys of the last
/// delegator.
#[derive(Debug, Clone)]
pub struct DelegationChain {
    /// Delegations along the chain, top first; the last is the role itself.
    pub delegations: Vec<DelegatedRole>,
    /// Name of the role that delegates to the target role.
    pub delegator: String,
}

/// Limits for reading back the repository's own published state. Generous, since it is
/// what this repository wrote, but finite, so a planted file cannot make it read forever.
const OWN_STATE_LIMITS: Limits = Limits {
    root: 4 << 20,
    timestamp: 1 << 20,
    snapshot: 256 << 20,
    targets: 1 << 30,
    max_root_rotations: 1 << 20,
    max_delegations: 1 << 20,
};

/// Reads the published files through a caller's `read(file name in metadata/)`, remembering
/// the last one read (what a refusal is about).
struct PublishedFiles<F> {
    read: F,
    last: String,
}

impl<F> MetadataSource for PublishedFiles<F>
where
    F: Fn(&str) -> Result<Option<Vec<u8>>, RepoError>,
{
    type Error = RepoError;

    fn fetch(&mut self, file: &MetadataFile, _: u64) -> Result<Option<Vec<u8>>, RepoError> {
        self.last = file.file_name();
        (self.read)(&self.last)
    }
}

impl RepoState {
    /// Loads and verifies the published state through `read(file name in metadata/)`, as a
    /// client would (`uptane_core::refresh::Refresh`), from the repository's own viewpoint:
    /// expiry is not checked, since a repository must be able to renew expired metadata,
    /// and timestamp or snapshot still signed with an earlier root's online keys are
    /// accepted so that they can be re-signed.
    pub fn load(
        read: impl Fn(&str) -> Result<Option<Vec<u8>>, RepoError>,
    ) -> Result<Self, RepoError> {
        let first = read("1.root.json")?.ok_or_else(|| {
            RepoError::Layout("no 1.root.json: not an initialized repository".into())
        })?;
        let mut refresh = Refresh::<Published>::for_publisher(&Raw::new(first), OWN_STATE_LIMITS)
            .map_err(|e| corrupt("root", e))?;
        let mut files = PublishedFiles {
            read,
            last: String::new(),
        };
        // A file the published metadata names but that is missing or does not verify means
        // the repository is corrupt; I/O errors stay what they are.
        refresh.run(&mut files).map_err(|e| match e {
            RepoError::Update(e) => corrupt(&files.last, e),
            other => other,
        })?;
        let set = refresh.into_trusted();
        let missing = |role: &str| corrupt(role, "missing");
        Ok(Self {
            root: set.root().clone(),
            timestamp: set
                .timestamp()
                .cloned()
                .ok_or_else(|| missing("timestamp"))?,
            snapshot: set.snapshot().cloned().ok_or_else(|| missing("snapshot"))?,
            roles: set
                .roles()
                .map(|(name, meta)| (name.to_string(), meta.clone()))
                .collect(),
            online_keys_current: set.online_keys_current(),
        })
    }

    /// The top-level targets.
    pub fn targets(&self) -> &Verified<Targets> {
        &self.roles["targets"]
    }

    /// Every chain of delegations from top-level targets to `role` (cycles cut).
    pub fn chains_to(&self, role: &str) -> Vec<DelegationChain> {
        let mut found = Vec::new();
        let mut stack: Vec<(String, Vec<DelegatedRole>)> =
            vec![("targets".to_string(), Vec::new())];
        let mut steps = 0;
        while let Some((name, path)) = stack.pop() {
            steps += 1;
            if steps > 10_000 {
                break;
            }
            let Some(meta) = self.roles.get(&name) else {
                continue;
            };
            let Some(delegations) = &meta.delegations else {
                continue;
            };
            for delegation in &delegations.roles {
                if path.iter().any(|d| d.name == delegation.name) {
                    continue;
                }
                let mut chain = path.clone();
                chain.push(delegation.clone());
                if delegation.name == role {
                    found.push(DelegationChain {
                        delegations: chain,
                        delegator: name.clone(),
                    });
                } else {
                    stack.push((delegation.name.clone(), chain));
                }
            }
        }
        found
    }
}

/// Metadata signed with offline keys that expires soon: only an operator with those keys
/// can renew it (the server renews timestamp and snapshot itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Expiring {
    /// `root`, `targets` or a delegated role.
    pub role: String,
    /// Its version.
    pub version: u64,
    /// When it expires.
    pub expires_at: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

impl std::fmt::Display for Expiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.role.as_str() {
            "root" => "publish a new one with `image-repo rotate-root`".to_string(),
            "targets" => "re-sign it with `image-repo renew`".to_string(),
            role => {
                format!("its supplier re-signs it with `image-repo renew --role {role} --key KEY`")
            }
        };
        write!(
            f,
            "{} version {} expires at {} ({} days): vehicles refuse it then; {how}",
            self.role, self.version, self.expires_at, self.days_left
        )
    }
}

/// How far ahead of expiry operators are warned: the root, and targets roles.
pub const ROOT_EXPIRY_WARNING: chrono::Duration = chrono::Duration::days(60);
/// See [`ROOT_EXPIRY_WARNING`].
pub const TARGETS_EXPIRY_WARNING: chrono::Duration = chrono::Duration::days(14);

/// Which key signs a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignedWith {
    /// An operator's or supplier's offline key: only they can renew it.
    Offline,
    /// The server's key: a running server renews it.
    Online,
}

/// One role's version and expiry, as `image-repo status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoleStatus {
    /// `root`, `timestamp`, `snapshot`, `targets` or a delegated role.
    pub role: String,
    /// Its version.
    pub version: u64,
    /// When it expires.
    pub expires_at: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
    /// Whose key signs it.
    pub signed_with: SignedWith,
    /// Whether it needs attention: an offline-signed role within its warning period, or an
    /// online one that has expired (its server is not renewing it).
    pub warning: bool,
}

/// How far ahead of expiry offline-signed roles are warned about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warnings {
    /// The root.
    pub root: chrono::Duration,
    /// Every targets role.
    pub targets: chrono::Duration,
}

impl Default for Warnings {
    fn default() -> Self {
        Warnings {
            root: ROOT_EXPIRY_WARNING,
            targets: TARGETS_EXPIRY_WARNING,
        }
    }
}

impl RepoState {
    /// Every role's version and expiry at `now`, root first.
    pub fn status(&self, now: uptane_core::time::UtcTime, warnings: Warnings) -> Vec<RoleStatus> {
        let row = |role: &str, common: &uptane_core::metadata::Common, signed_with, window| {
            let left = common.expires - now;
            RoleStatus {
                role: role.to_string(),
                version: common.version,
                expires_at: uptane_core::time::format_expires(&common.expires),
                days_left: left.num_days(),
                signed_with,
                warning: left <= window,
            }
        };
        let mut out = vec![
            row(
                "root",
                &self.root.common,
                SignedWith::Offline,
                warnings.root,
            ),
            row(
                "timestamp",
                &self.timestamp.common,
                SignedWith::Online,
                chrono::Duration::zero(),
            ),
            row(
                "snapshot",
                &self.snapshot.common,
                SignedWith::Online,
                chrono::Duration::zero(),
            ),
        ];
        // Top-level targets first, then the delegated roles by name.
        let mut roles: Vec<_> = self.roles.iter().collect();
        roles.sort_by_key(|(name, _)| (name.as_str() != "targets", name.as_str()));
        for (name, targets) in roles {
            out.push(row(
                name,
                &targets.common,
                SignedWith::Offline,
                warnings.targets,
            ));
        }
        out
    }

    /// The offline-signed metadata (root, and every targets role) that expires within its
    /// warning window at `now`.
    pub fn expiring(&self, now: uptane_core::time::UtcTime) -> Vec<Expiring> {
        self.status(now, Warnings::default())
            .into_iter()
            .filter(|r| r.warning && r.signed_with == SignedWith::Offline)
            .map(|r| Expiring {
                role: r.role,
                version: r.version,
                expires_at: r.expires_at,
                days_left: r.days_left,
            })
            .collect()
    }
}
