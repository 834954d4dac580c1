//! The Director's root chain over time: new root versions for new root keys, new online keys
//! or a later expiry (Uptane §5.3.2 / TUF §5.3.4: version N+1 signed by a threshold of the
//! keys of N and of N+1; every version kept, since a vehicle offline for long walks them all),
//! the online keys the server signs with at each root version, and warnings before a root
//! expires.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::params;
use crate::sql::Conn;
use chrono::Duration;
use serde::Serialize;
use uptane_core::crypto::SigningKey;
use uptane_core::metadata::Root;
use uptane_core::sign::RootBuilder;
use uptane_core::time::{UtcTime, format_expires};
use uptane_core::trusted::RootChain;
use uptane_core::verify::{Raw, Verified, verify_root_self_signed};

use super::events::NewEvent;
use crate::error::DirectorError;
use crate::keys::{self, OnlineKeys};

/// The roles whose keys live on the server.
pub const ONLINE_ROLES: [&str; 3] = ["targets", "snapshot", "timestamp"];

/// How far ahead of a root's expiry operators are warned, by default.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::days(60);

/// The newest root: its version and its verified content.
pub fn latest_root(conn: &Conn) -> Result<Verified<Root>, DirectorError> {
    let body: Vec<u8> = conn
        .query_opt(
            "SELECT body FROM roots ORDER BY version DESC LIMIT 1",
            params![],
            |r| r.get(0),
        )?
        .ok_or_else(|| DirectorError::Internal("no Director root is stored".into()))?;
    verify_root_self_signed(&Raw::new(body))
        .map_err(|e| DirectorError::Internal(format!("the stored Director root: {e}")))
}

pub(super) fn latest_version(conn: &Conn) -> Result<u64, DirectorError> {
    let version: Option<i64> =
        conn.query_row("SELECT MAX(version) FROM roots", params![], |r| r.get(0))?;
    Ok(version.unwrap_or(0) as u64)
}

/// What [`publish_next_root`] changes in the root.
#[derive(Debug, Default)]
pub struct RootChange {
    /// New root keys and their threshold, replacing every current one.
    pub root_keys: Option<(Vec<SigningKey>, u32)>,
    /// New online keys, each replacing its role's current key.
    pub online: Vec<(&'static str, SigningKey)>,
}

/// Publishes root version N+1: the current root with `change` applied, expiring after
/// `lifetime`, signed by the keys in `offline` that the current and the new root list (at
/// least each one's threshold). It is checked by the same chain rule every vehicle applies
/// before it is stored, and served at once as `N+1.root.json`.
pub fn publish_next_root(
    conn: &mut Conn,
    offline: &[SigningKey],
    change: &RootChange,
    lifetime: Duration,
    actor: &str,
    now: UtcTime,
) -> Result<u64, DirectorError> {
    let tx = conn.savepoint()?;
    let current = latest_root(&tx)?;
    let version = current.common.version + 1;
    let mut builder = RootBuilder::from_root(&current, version, now + lifetime);
    if let Some((new_keys, threshold)) = &change.root_keys {
        if *threshold == 0 || new_keys.len() < *threshold as usize {
            return Err(DirectorError::BadRequest(format!(
                "root threshold {threshold} needs 1 to {} keys",
                new_keys.len()
            )));
        }
        for id in current
            .role_keys("root")
            .map(|r| r.keyids.clone())
            .unwrap_or_default()
        {
            builder = builder.remove_key("root", &id);
        }
        for key in new_keys {
            builder = builder.key("root", key.public_key());
        }
        builder = builder.threshold("root", *threshold);
    }
    for (role, key) in &change.online {
        for id in current
            .role_keys(role)
            .map(|r| r.keyids.clone())
            .unwrap_or_default()
        {
            builder = builder.remove_key(role, &id);
        }
        builder = builder.key(role, key.public_key());
    }
    let next = builder.build();
    let mut candidates: Vec<&SigningKey> = offline.iter().collect();
    if let Some((new_keys, _)) = &change.root_keys {
        candidates.extend(new_keys.iter());
    }
    let signers = root_signers(&current, &next, &candidates);
    let bytes = uptane_core::sign::sign(&next, &signers)
        .map_err(|e| DirectorError::Internal(e.to_string()))?;
    let mut chain = RootChain::new(&current.to_raw(), u64::MAX, 1)
        .map_err(|e| DirectorError::Internal(format!("the current root: {e}")))?;
    chain.apply(&Raw::new(bytes.clone())).map_err(|e| {
        DirectorError::BadRequest(format!(
            "root version {version} would not be accepted by vehicles: {e} (are the offline \
             root keys of version {} in the key directory?)",
            current.common.version
        ))
    })?;
    tx.execute(
        "INSERT INTO roots (version, body) VALUES (?1, ?2)",
        params![version as i64, bytes],
    )?;
    let mut what = Vec::new();
    if change.root_keys.is_some() {
        what.push("new root keys".to_string());
    }
    for (role, _) in &change.online {
        what.push(format!("new {role} key"));
    }
    if what.is_empty() {
        what.push("same keys".into());
    }
    let detail = format!(
        "root version {version} published ({}), expires {}",
        what.join(", "),
        format_expires(&next.common.expires)
    );
    NewEvent::security("director_root_rotated", actor, &detail).record(&tx, now)?;
    tx.commit()?;
    // Committed (unless inside a caller's transaction, whose commit is not yet made: running
    // servers then see the root at their next full check).
    if conn.is_autocommit() {
        super::root_watch::announce(conn);
    }
    Ok(version)
}

/// The keys among `candidates` that sign root `next`: up to the threshold of the current
/// root's keys and of the next root's keys (a key in both counts for both).
fn root_signers<'k>(
    current: &Root,
    next: &Root,
    candidates: &[&'k SigningKey],
) -> Vec<&'k SigningKey> {
    let mut signers: Vec<&SigningKey> = Vec::new();
    for root in [current, next] {
        let Some(role) = root.role_keys("root") else {
            continue;
        };
        let mut have = signers
            .iter()
            .filter(|k| role.keyids.contains(&k.key_id()))
            .count();
        for key in candidates {
            if have >= role.threshold as usize {
                break;
            }
            let id = key.key_id();
            if role.keyids.contains(&id) && !signers.iter().any(|k| k.key_id() == id) {
                signers.push(key);
                have += 1;
            }
        }
    }
    signers
}

/// Rotates the online keys of `roles`: new keys written next to the current ones
/// (`DIR/keys/next-ROLE.pem`), root N+1 listing them, then the new keys put in place. A
/// running server takes them at its next request, and re-signs every vehicle's metadata
/// with them; metadata signed by the old keys is refused by vehicles that follow the chain.
pub fn rotate_online(
    conn: &mut Conn,
    dir: &Path,
    offline: &[SigningKey],
    roles: &[&'static str],
    lifetime: Duration,
    actor: &str,
    now: UtcTime,
) -> Result<u64, DirectorError> {
    let mut roles = roles.to_vec();
    roles.sort_unstable();
    roles.dedup();
    // An earlier rotation that stopped after its root was stored leaves the listed key as
    // `next-ROLE.pem` only: finish it rather than lose it.
    finish_interrupted_rotation(conn, dir)?;
    let mut change = RootChange::default();
    for role in &roles {
        let key = keys::generate()?;
        let next = keys::next_online_key_path(dir, role);
        // Left by an attempt whose root was never stored (it is listed by no root).
        remove_if_present(&next)?;
        // `create_new`: a rotation running at the same time fails here instead of
        // replacing this one's key.
        keys::write_private(&next, &key)?;
        change.online.push((role, key));
    }
    sync_dir(&dir.join("keys"))?;
    let version = match publish_next_root(conn, offline, &change, lifetime, actor, now) {
        Ok(version) => version,
        Err(e) => {
            for role in &roles {
                let _ = std::fs::remove_file(keys::next_online_key_path(dir, role));
            }
            return Err(e);
        }
    };
    for role in &roles {
        rename_into_place(dir, role)?;
    }
    sync_dir(&dir.join("keys"))?;
    Ok(version)
}

/// Puts in place each `next-ROLE.pem` that the newest root lists.
fn finish_interrupted_rotation(conn: &Conn, dir: &Path) -> Result<(), DirectorError> {
    let root = latest_root(conn)?;
    for role in ONLINE_ROLES {
        let next = keys::next_online_key_path(dir, role);
        if next.exists() {
            let key = keys::read_private(&next)?;
            let listed = root
                .role_keys(role)
                .is_some_and(|r| r.keyids.contains(&key.key_id()));
            if listed {
                rename_into_place(dir, role)?;
            }
        }
    }
    Ok(())
}

fn rename_into_place(dir: &Path, role: &str) -> Result<(), DirectorError> {
    // The root lists the new key now; the server finds it under either name meanwhile.
    std::fs::rename(
        keys::next_online_key_path(dir, role),
        keys::online_key_path(dir, role),
    )
    .map_err(|e| DirectorError::Internal(format!("{}: {e}", dir.display())))
}

/// Makes the directory's entries durable (new and renamed key files survive a power cut).
pub fn sync_dir(dir: &Path) -> Result<(), DirectorError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DirectorError::Internal(format!("{}: {e}", dir.display())))
}

fn remove_if_present(path: &Path) -> Result<(), DirectorError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(DirectorError::Internal(format!("{}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

/// The online keys the server signs with, for the root they belong to.
#[derive(Debug)]
pub struct ActiveKeys {
    /// The root version that lists them.
    pub root_version: u64,
    /// The keys.
    pub online: OnlineKeys,
}

/// The server's online keys, following the root chain: when a newer root is stored (by
/// `director rotate-online` or `rotate-root`), the keys it lists are read from `DIR/keys`.
#[derive(Debug)]
pub struct KeyRing {
    dir: Option<PathBuf>,
    current: RwLock<Arc<ActiveKeys>>,
}

impl KeyRing {
    /// The keys in `DIR/keys` that the newest root lists.
    pub fn load(conn: &Conn, dir: &Path) -> Result<Self, DirectorError> {
        let root = latest_root(conn)?;
        let online = keys_for(dir, &root)?;
        Ok(Self {
            dir: Some(dir.to_path_buf()),
            current: RwLock::new(Arc::new(ActiveKeys {
                root_version: root.common.version,
                online,
            })),
        })
    }

    /// Keys that never change (tests and benchmarks).
    pub fn fixed(online: OnlineKeys) -> Self {
        Self {
            dir: None,
            current: RwLock::new(Arc::new(ActiveKeys {
                root_version: 1,
                online,
            })),
        }
    }

    /// The keys for the newest root, read again when the root changed.
    pub fn current(&self, conn: &Conn) -> Result<Arc<ActiveKeys>, DirectorError> {
        let cached = match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        let Some(dir) = &self.dir else {
            return Ok(cached);
        };
        if latest_version(conn)? == cached.root_version {
            return Ok(cached);
        }
        let root = latest_root(conn)?;
        let fresh = Arc::new(ActiveKeys {
            root_version: root.common.version,
            online: keys_for(dir, &root)?,
        });
        tracing::info!(
            root_version = fresh.root_version,
            "online keys read again for the new root"
        );
        if let Ok(mut current) = self.current.write() {
            *current = Arc::clone(&fresh);
        }
        Ok(fresh)
    }
}

/// For each online role, the key in `DIR/keys` (current or next) that `root` lists.
fn keys_for(dir: &Path, root: &Root) -> Result<OnlineKeys, DirectorError> {
    let pick = |role: &str| -> Result<SigningKey, DirectorError> {
        let listed = root
            .role_keys(role)
            .map(|r| r.keyids.clone())
            .unwrap_or_default();
        for path in [
            keys::online_key_path(dir, role),
            keys::next_online_key_path(dir, role),
        ] {
            if path.exists() {
                let key = keys::read_private(&path)?;
                if listed.contains(&key.key_id()) {
                    return Ok(key);
                }
            }
        }
        Err(DirectorError::Internal(format!(
            "no key in {} is the {role} key of root version {}; finish the rotation with \
             `director rotate-online`",
            dir.join("keys").display(),
            root.common.version
        )))
    };
    Ok(OnlineKeys {
        targets: pick("targets")?,
        snapshot: pick("snapshot")?,
        timestamp: pick("timestamp")?,
    })
}

/// The newest root's version and expiry, for operators to alert on.
#[derive(Debug, Clone, Serialize)]
pub struct RootStatus {
    /// The newest root version.
    pub root_version: u64,
    /// When it expires.
    pub root_expires_at: String,
    /// Whole days left (negative once expired).
    pub root_expires_in_days: i64,
    /// Whether it expires within the warning window: rotate (`director rotate-root`).
    pub root_expiry_warning: bool,
}

/// The newest root's status at `now`, warning within `window` of its expiry.
pub fn root_status(
    conn: &Conn,
    window: Duration,
    now: UtcTime,
) -> Result<RootStatus, DirectorError> {
    let root = latest_root(conn)?;
    let left = root.common.expires - now;
    Ok(RootStatus {
        root_version: root.common.version,
        root_expires_at: format_expires(&root.common.expires),
        root_expires_in_days: left.num_days(),
        root_expiry_warning: left <= window,
    })
}

impl RootStatus {
    /// The warning for operators, if the root expires soon.
    pub fn warning(&self) -> Option<String> {
        self.root_expiry_warning.then(|| {
            format!(
                "the Director root (version {}) expires at {} ({} days): vehicles stop \
                 updating then; publish a new one with `director rotate-root`",
                self.root_version, self.root_expires_at, self.root_expires_in_days
            )
        })
    }
}

/// Records a `root_expiring` security event when the root expires within `window`, at most
/// once a day.
pub fn record_expiry_warning(
    conn: &Conn,
    window: Duration,
    now: UtcTime,
) -> Result<Option<RootStatus>, DirectorError> {
    let status = root_status(conn, window, now)?;
    let Some(warning) = status.warning() else {
        return Ok(None);
    };
    let since = format_expires(&(now - Duration::days(1)));
    let recent: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM events WHERE kind = 'root_expiring' AND at > ?1)",
        params![since],
        |r| r.get(0),
    )?;
    if !recent {
        NewEvent::security("root_expiring", "director", &warning).record(conn, now)?;
    }
    Ok(Some(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn at(text: &str) -> UtcTime {
        uptane_core::time::parse_expires(text).unwrap()
    }

    /// Root N+1 with the same keys, for a year from `now`.
    fn renew(conn: &mut Conn, offline: &[SigningKey], now: UtcTime) -> Result<u64, DirectorError> {
        publish_next_root(
            conn,
            offline,
            &RootChange::default(),
            Duration::days(365),
            "operator:x",
            now,
        )
    }

    fn initialized(dir: &Path, t0: UtcTime) -> (Db, Vec<SigningKey>) {
        initialized_in(dir, Db::for_tests().unwrap(), t0)
    }

    fn initialized_in(dir: &Path, db: Db, t0: UtcTime) -> (Db, Vec<SigningKey>) {
        for role in ONLINE_ROLES {
            keys::write_private(
                &keys::online_key_path(dir, role),
                &keys::generate().unwrap(),
            )
            .unwrap();
        }
        let online = OnlineKeys::load(dir).unwrap();
        let root_keys: Vec<SigningKey> = (0..3).map(|_| keys::generate().unwrap()).collect();
        let signers: Vec<&SigningKey> = root_keys.iter().take(2).collect();
        db.call_blocking(|conn| {
            super::super::store_initial_root(conn, &signers, 2, &online, Duration::days(365), t0)
        })
        .unwrap();
        (db, root_keys)
    }

    /// Publishing a root signals running servers: a watch that would not read the table on
    /// its own for an hour sees each new root at its next call.
    #[test]
    fn each_published_root_is_announced_to_running_servers() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = at("2030-01-01T00:00:00Z");
        let path = tmp.path().join("director.db");
        let (db, root_keys) = initialized_in(tmp.path(), Db::open(&path).unwrap(), t0);
        let watch = super::super::root_watch::RootWatch::with_full_check(
            Some(&path),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(watch.latest().unwrap(), Some(1));
        db.call_blocking(|conn| {
            let v = renew(conn, &root_keys, t0)?;
            assert_eq!(watch.latest().unwrap(), Some(v));
            let v = rotate_online(
                conn,
                tmp.path(),
                &root_keys,
                &["timestamp"],
                Duration::days(365),
                "operator:x",
                t0,
            )?;
            assert_eq!((v, watch.latest().unwrap()), (3, Some(3)));
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }

    #[test]
    fn each_new_root_follows_the_chain_rule_and_the_server_takes_the_new_online_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = at("2030-01-01T00:00:00Z");
        let (db, root_keys) = initialized(tmp.path(), t0);
        db.call_blocking(|conn| {
            let ring = KeyRing::load(conn, tmp.path())?;
            let before = ring.current(conn)?;
            assert_eq!(before.root_version, 1);

            // Same keys, later expiry: version 2.
            let v = renew(conn, &root_keys, t0 + Duration::days(300))?;
            assert_eq!(v, 2);
            let status = root_status(conn, DEFAULT_EXPIRY_WARNING, t0 + Duration::days(300))?;
            assert_eq!((status.root_version, status.root_expires_in_days), (2, 365));
            assert!(!status.root_expiry_warning);

            // New online keys: version 3, and the ring follows.
            let v = rotate_online(
                conn,
                tmp.path(),
                &root_keys,
                &["targets", "timestamp"],
                Duration::days(365),
                "operator:x",
                t0 + Duration::days(301),
            )?;
            assert_eq!(v, 3);
            let after = ring.current(conn)?;
            assert_eq!(after.root_version, 3);
            assert_ne!(
                after.online.targets.key_id(),
                before.online.targets.key_id()
            );
            assert_eq!(
                after.online.snapshot.key_id(),
                before.online.snapshot.key_id()
            );
            assert!(!keys::next_online_key_path(tmp.path(), "targets").exists());

            // Without the offline keys of the current root, nothing is published.
            let strangers: Vec<SigningKey> = (0..2).map(|_| keys::generate().unwrap()).collect();
            let refused = renew(conn, &strangers, t0);
            assert!(
                matches!(&refused, Err(DirectorError::BadRequest(m)) if m.contains("would not be accepted")),
                "{refused:?}"
            );
            assert_eq!(latest_version(conn)?, 3);

            // New root keys (2-of-2): signed by the old threshold and the new one.
            let new_keys: Vec<SigningKey> = (0..2).map(|_| keys::generate().unwrap()).collect();
            let change = RootChange {
                root_keys: Some((new_keys.clone(), 2)),
                online: Vec::new(),
            };
            let v = publish_next_root(
                conn,
                &root_keys,
                &change,
                Duration::days(30),
                "operator:x",
                t0 + Duration::days(302),
            )?;
            assert_eq!(v, 4);
            // The old keys no longer sign anything.
            assert!(renew(conn, &root_keys, t0).is_err());
            // Thirty days: inside the warning window, one event a day.
            let now = t0 + Duration::days(303);
            assert!(record_expiry_warning(conn, DEFAULT_EXPIRY_WARNING, now)?.is_some());
            record_expiry_warning(conn, DEFAULT_EXPIRY_WARNING, now + Duration::hours(1))?;
            let warned: i64 = conn.query_row(
                "SELECT COUNT(*) FROM events WHERE kind = 'root_expiring'",
                params![],
                |r| r.get(0),
            )?;
            assert_eq!(warned, 1);
            let rotated: i64 = conn.query_row(
                "SELECT COUNT(*) FROM events WHERE kind = 'director_root_rotated'",
                params![],
                |r| r.get(0),
            )?;
            assert_eq!(rotated, 3);
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }

    #[test]
    fn a_rotation_interrupted_after_its_root_is_stored_is_finished_not_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = at("2030-01-01T00:00:00Z");
        let (db, root_keys) = initialized(tmp.path(), t0);
        db.call_blocking(|conn| {
            // As a rotate-online that stopped between storing root 2 and the rename.
            let key = keys::generate()?;
            keys::write_private(&keys::next_online_key_path(tmp.path(), "targets"), &key)?;
            let change = RootChange {
                root_keys: None,
                online: vec![("targets", key.clone())],
            };
            publish_next_root(conn, &root_keys, &change, Duration::days(365), "x", t0)?;
            // The server still finds the listed key under its next name.
            assert_eq!(
                KeyRing::load(conn, tmp.path())?
                    .current(conn)?
                    .online
                    .targets
                    .key_id(),
                key.key_id()
            );
            // The next rotation finishes that one instead of deleting the listed key.
            rotate_online(
                conn,
                tmp.path(),
                &root_keys,
                &["snapshot", "snapshot"],
                Duration::days(365),
                "x",
                t0,
            )?;
            assert!(!keys::next_online_key_path(tmp.path(), "targets").exists());
            let ring = KeyRing::load(conn, tmp.path())?;
            let active = ring.current(conn)?;
            assert_eq!(active.root_version, 3);
            assert_eq!(active.online.targets.key_id(), key.key_id());
            // A rotation whose root is refused leaves no next key behind.
            let strangers: Vec<SigningKey> = (0..2).map(|_| keys::generate().unwrap()).collect();
            assert!(
                rotate_online(
                    conn,
                    tmp.path(),
                    &strangers,
                    &["timestamp"],
                    Duration::days(365),
                    "x",
                    t0
                )
                .is_err()
            );
            assert!(!keys::next_online_key_path(tmp.path(), "timestamp").exists());
            KeyRing::load(conn, tmp.path())?;
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }

    #[test]
    fn a_server_refuses_to_start_with_online_keys_the_root_does_not_list() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = at("2030-01-01T00:00:00Z");
        let (db, _) = initialized(tmp.path(), t0);
        std::fs::remove_file(keys::online_key_path(tmp.path(), "snapshot")).unwrap();
        keys::write_private(
            &keys::online_key_path(tmp.path(), "snapshot"),
            &keys::generate().unwrap(),
        )
        .unwrap();
        let refused = db.call_blocking(|conn| KeyRing::load(conn, tmp.path()));
        assert!(
            matches!(&refused, Err(DirectorError::Internal(m)) if m.contains("snapshot key of root version 1")),
            "{refused:?}"
        );
    }
}
