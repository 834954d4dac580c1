//! Operator API tokens and provisioning tokens: random secrets shown once, stored as
//! SHA-256 hashes, each with an expiry, revocable, and listed by an id (a prefix of the
//! hash, which says nothing about the secret).

use crate::params;
use crate::sql::Conn;
use chrono::Duration;
use serde::Serialize;
use uptane_core::hash::sha256_hex;
use uptane_core::time::UtcTime;

use super::events::NewEvent;
use super::now_text;
use super::page::Page;
use crate::error::DirectorError;

/// A new secret `PREFIX_<64 hex digits>`. Fails when the system has no entropy, rather
/// than make a guessable one.
pub(crate) fn random_token(prefix: &str) -> Result<String, DirectorError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| DirectorError::Internal(format!("random: {e}")))?;
    Ok(format!("{prefix}_{}", hex::encode(secret)))
}

/// The id a token is listed and revoked by: the first 16 hex digits of its hash.
fn token_id(sha256: &str) -> String {
    sha256.chars().take(16).collect()
}

/// Longest lifetime any token may be given.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::days(3650);

fn check_lifetime(lifetime: Duration) -> Result<(), DirectorError> {
    if lifetime <= Duration::zero() || lifetime > MAX_TOKEN_LIFETIME {
        return Err(DirectorError::BadRequest(format!(
            "a token lives between 1 second and {} days",
            MAX_TOKEN_LIFETIME.num_days()
        )));
    }
    Ok(())
}

/// A token as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Where the next page starts (`before`).
    pub cursor: i64,
    /// What it is revoked by.
    pub id: String,
    /// The operator's label.
    pub label: String,
    /// When it was made.
    pub created_at: String,
    /// When it stops working.
    pub expires_at: Option<String>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
    /// Registrations made with it (provisioning tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
    /// Registrations it allows (provisioning tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
}

/// Which tokens an operator revokes: one by id, or every token with a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token listed with this id.
    Id(String),
    /// Every live token with this label.
    Label(String),
}

impl TokenSelector {
    fn describe(&self) -> String {
        match self {
            Self::Id(id) => format!("id {id}"),
            Self::Label(label) => format!("label {label:?}"),
        }
    }
}

/// Creates an operator API token valid for `lifetime`; returns it (only its hash is stored).
pub fn create_api_token(
    conn: &Conn,
    label: &str,
    lifetime: Duration,
    now: UtcTime,
) -> Result<String, DirectorError> {
    check_lifetime(lifetime)?;
    let token = random_token("dat")?;
    let sha256 = sha256_hex(token.as_bytes());
    conn.execute(
        "INSERT INTO api_tokens (sha256, label, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![sha256, label, now_text(now), now_text(now + lifetime)],
    )?;
    let detail = format!(
        "{label} (id {}), expires {}",
        token_id(&sha256),
        now_text(now + lifetime)
    );
    NewEvent::info("api_token_created", "cli", &detail).record(conn, now)?;
    Ok(token)
}

/// The label of a live operator token; an unknown, revoked or expired one is refused (401)
/// with which of the three it is.
pub fn check_api_token(conn: &Conn, token: &str, now: UtcTime) -> Result<String, DirectorError> {
    let row: Option<(String, Option<String>, Option<String>)> = conn.query_opt(
        "SELECT label, revoked_at, expires_at FROM api_tokens WHERE sha256 = ?1",
        params![sha256_hex(token.as_bytes())],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    match row {
        None => Err(DirectorError::Unauthorized("invalid API token".into())),
        Some((label, Some(_), _)) => Err(DirectorError::Unauthorized(format!(
            "API token {label:?} was revoked"
        ))),
        Some((label, None, Some(expires))) if expires <= now_text(now) => Err(
            DirectorError::Unauthorized(format!("API token {label:?} expired at {expires}")),
        ),
        Some((label, None, _)) => Ok(label),
    }
}

/// A page of the operator tokens, newest first.
pub fn list_api_tokens(conn: &Conn, page: Page) -> Result<Vec<TokenInfo>, DirectorError> {
    Ok(conn.query(
        "SELECT sha256, label, created_at, expires_at, revoked_at, rowid FROM api_tokens
         WHERE rowid < ?1 AND (CAST(?2 AS TEXT) IS NULL OR created_at >= ?2) ORDER BY rowid DESC LIMIT ?3",
        params![page.before(), page.since(), page.limit()],
        |r| {
        Ok(TokenInfo {
            id: token_id(&r.get::<String>(0)?),
            label: r.get(1)?,
            created_at: r.get(2)?,
            expires_at: r.get(3)?,
            revoked_at: r.get(4)?,
            uses: None,
            max_uses: None,
            cursor: r.get(5)?,
        })
        },
    )?)
}

/// Revokes the live operator tokens `which` selects; returns how many (`NotFound` if none).
pub fn revoke_api_tokens(
    conn: &Conn,
    which: &TokenSelector,
    actor: &str,
    now: UtcTime,
) -> Result<usize, DirectorError> {
    let n = match which {
        TokenSelector::Id(id) => conn.execute(
            "UPDATE api_tokens SET revoked = 1, revoked_at = ?2
             WHERE substr(sha256, 1, 16) = ?1 AND revoked_at IS NULL",
            params![id.to_ascii_lowercase(), now_text(now)],
        )?,
        TokenSelector::Label(label) => conn.execute(
            "UPDATE api_tokens SET revoked = 1, revoked_at = ?2 WHERE label = ?1 AND revoked_at IS NULL",
            params![label, now_text(now)],
        )?,
    };
    if n == 0 {
        return Err(DirectorError::NotFound(format!(
            "no live API token with {}",
            which.describe()
        )));
    }
    NewEvent::info("api_token_revoked", actor, &which.describe()).record(conn, now)?;
    Ok(n)
}

/// What a provisioning token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvisioningLimits {
    /// Registrations it allows (1: one-time).
    pub max_uses: u64,
    /// How long it works.
    pub lifetime: Duration,
}

impl ProvisioningLimits {
    /// Most registrations one token may allow.
    pub const MAX_USES: u64 = 1_000_000;
    /// A token with no stated limits: 100 registrations within 7 days.
    pub const DEFAULT: Self = Self {
        max_uses: 100,
        lifetime: Duration::days(7),
    };
}

/// Creates a provisioning token with which Primaries register, within `limits`.
pub fn create_provisioning_token(
    conn: &Conn,
    label: &str,
    limits: ProvisioningLimits,
    actor: &str,
    now: UtcTime,
) -> Result<String, DirectorError> {
    check_lifetime(limits.lifetime)?;
    if limits.max_uses == 0 || limits.max_uses > ProvisioningLimits::MAX_USES {
        return Err(DirectorError::BadRequest(format!(
            "a provisioning token allows 1 to {} registrations",
            ProvisioningLimits::MAX_USES
        )));
    }
    let token = random_token("dpt")?;
    let expires = now + limits.lifetime;
    conn.execute(
        "INSERT INTO provisioning_tokens (sha256, label, one_time, created_at, expires_at, max_uses)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            sha256_hex(token.as_bytes()),
            label,
            limits.max_uses == 1,
            now_text(now),
            now_text(expires),
            limits.max_uses as i64
        ],
    )?;
    let detail = format!(
        "{label}: {} registrations until {}",
        limits.max_uses,
        now_text(expires)
    );
    NewEvent::info("provisioning_token_created", actor, &detail).record(conn, now)?;
    Ok(token)
}

/// Revokes every live provisioning token with `label`; returns how many.
pub fn revoke_provisioning_tokens(
    conn: &Conn,
    label: &str,
    actor: &str,
    now: UtcTime,
) -> Result<usize, DirectorError> {
    let n = conn.execute(
        "UPDATE provisioning_tokens SET revoked = 1 WHERE label = ?1 AND revoked = 0",
        params![label],
    )?;
    if n == 0 {
        return Err(DirectorError::NotFound(format!(
            "no active provisioning token labelled {label:?}"
        )));
    }
    NewEvent::info("provisioning_token_revoked", actor, label).record(conn, now)?;
    Ok(n)
}

/// A page of the provisioning tokens, newest first.
pub fn list_provisioning_tokens(conn: &Conn, page: Page) -> Result<Vec<TokenInfo>, DirectorError> {
    Ok(conn.query(
        "SELECT sha256, label, created_at, expires_at, revoked, uses, max_uses, rowid
         FROM provisioning_tokens
         WHERE rowid < ?1 AND (CAST(?2 AS TEXT) IS NULL OR created_at >= ?2) ORDER BY rowid DESC LIMIT ?3",
        params![page.before(), page.since(), page.limit()],
        |r| {
        let revoked: bool = r.get(4)?;
        Ok(TokenInfo {
            id: token_id(&r.get::<String>(0)?),
            label: r.get(1)?,
            created_at: r.get(2)?,
            expires_at: r.get(3)?,
            revoked_at: revoked.then(|| "revoked".to_string()),
            uses: Some(r.get::<i64>(5)? as u64),
            max_uses: r.get::<Option<i64>>(6)?.map(|m| m as u64),
            cursor: r.get(7)?,
        })
        },
    )?)
}

/// Why a provisioning token does not allow a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProvisioningRefusal {
    Unknown,
    Revoked(String),
    Expired(String),
    UsedUp(String),
}

impl ProvisioningRefusal {
    /// For the event log (names the token).
    pub(crate) fn detail(&self) -> String {
        match self {
            Self::Unknown => "unknown provisioning token".into(),
            Self::Revoked(label) => format!("token {label:?} revoked"),
            Self::Expired(label) => format!("token {label:?} expired"),
            Self::UsedUp(label) => format!("token {label:?} has no registrations left"),
        }
    }

    /// For the caller (names nothing it did not send).
    pub(crate) fn answer(&self) -> &'static str {
        match self {
            Self::Unknown => "invalid provisioning token",
            Self::Revoked(_) => "provisioning token revoked",
            Self::Expired(_) => "provisioning token expired",
            Self::UsedUp(_) => "provisioning token already used up",
        }
    }
}

/// Uses provisioning token `token` once, in the caller's transaction: a conditional update
/// that changes its row only while it is live, unexpired and has uses left. Returns its
/// label, or why it may not be used; nothing changes when it may not.
/// What [`use_provisioning_token`] would answer, without using the token.
pub(crate) fn check_provisioning_token(
    conn: &Conn,
    token: &str,
    now: UtcTime,
) -> Result<Result<String, ProvisioningRefusal>, DirectorError> {
    let row: Option<(String, bool, String, i64, i64)> = conn
        .query_opt(
            "SELECT label, revoked, expires_at, uses, max_uses FROM provisioning_tokens WHERE sha256 = ?1",
            params![sha256_hex(token.as_bytes())],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
    Ok(classify(row, false, now))
}

fn classify(
    row: Option<(String, bool, String, i64, i64)>,
    used_now: bool,
    now: UtcTime,
) -> Result<String, ProvisioningRefusal> {
    match row {
        None => Err(ProvisioningRefusal::Unknown),
        Some((label, _, _, _, _)) if used_now => Ok(label),
        Some((label, true, _, _, _)) => Err(ProvisioningRefusal::Revoked(label)),
        Some((label, _, expires, _, _)) if expires <= now_text(now) => {
            Err(ProvisioningRefusal::Expired(label))
        }
        Some((label, _, _, uses, max_uses)) if !used_now && uses < max_uses => Ok(label),
        Some((label, _, _, _, _)) => Err(ProvisioningRefusal::UsedUp(label)),
    }
}

pub(crate) fn use_provisioning_token(
    conn: &Conn,
    token: &str,
    now: UtcTime,
) -> Result<Result<String, ProvisioningRefusal>, DirectorError> {
    let sha256 = sha256_hex(token.as_bytes());
    let changed = conn.execute(
        "UPDATE provisioning_tokens SET uses = uses + 1, used = 1
         WHERE sha256 = ?1 AND revoked = 0 AND expires_at > ?2 AND uses < max_uses",
        params![sha256, now_text(now)],
    )?;
    let row: Option<(String, bool, String, i64, i64)> = conn
        .query_opt(
            "SELECT label, revoked, expires_at, uses, max_uses FROM provisioning_tokens WHERE sha256 = ?1",
            params![&sha256],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
    Ok(match classify(row, changed == 1, now) {
        // Uses remained when read but the update found none: another registration took it.
        Ok(label) if changed != 1 => Err(ProvisioningRefusal::UsedUp(label)),
        answer => answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn at(text: &str) -> UtcTime {
        uptane_core::time::parse_expires(text).unwrap()
    }

    #[test]
    fn operator_tokens_expire_and_are_revoked_by_id_or_label() {
        let db = Db::for_tests().unwrap();
        db.call_blocking(|conn| {
            let t0 = at("2030-01-01T00:00:00Z");
            let a = create_api_token(conn, "alice", Duration::days(1), t0)?;
            let b = create_api_token(conn, "bob", Duration::days(30), t0)?;
            assert_eq!(check_api_token(conn, &a, t0)?, "alice");
            let expired = check_api_token(conn, &a, t0 + Duration::days(1)).unwrap_err();
            assert!(expired.to_string().contains("expired"), "{expired}");
            assert!(matches!(expired, DirectorError::Unauthorized(_)));
            let listed = list_api_tokens(conn, Page::newest(100))?;
            assert_eq!(listed.len(), 2);
            assert!(
                listed
                    .iter()
                    .all(|t| !a.contains(&t.id) || t.label == "alice")
            );
            let bob = listed.iter().find(|t| t.label == "bob").unwrap();
            revoke_api_tokens(conn, &TokenSelector::Id(bob.id.clone()), "cli", t0)?;
            let revoked = check_api_token(conn, &b, t0).unwrap_err();
            assert!(revoked.to_string().contains("revoked"), "{revoked}");
            assert!(matches!(
                revoke_api_tokens(conn, &TokenSelector::Label("bob".into()), "cli", t0),
                Err(DirectorError::NotFound(_))
            ));
            assert!(matches!(
                check_api_token(conn, "dat_nope", t0),
                Err(DirectorError::Unauthorized(_))
            ));
            assert!(matches!(
                create_api_token(conn, "forever", Duration::days(100_000), t0),
                Err(DirectorError::BadRequest(_))
            ));
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }

    #[test]
    fn provisioning_tokens_run_out_of_uses_and_time() {
        let db = Db::for_tests().unwrap();
        db.call_blocking(|conn| {
            let t0 = at("2030-01-01T00:00:00Z");
            let limits = ProvisioningLimits {
                max_uses: 2,
                lifetime: Duration::hours(1),
            };
            let token = create_provisioning_token(conn, "line-3", limits, "operator:x", t0)?;
            assert_eq!(
                use_provisioning_token(conn, &token, t0)?,
                Ok("line-3".into())
            );
            assert_eq!(
                use_provisioning_token(conn, &token, t0)?,
                Ok("line-3".into())
            );
            assert_eq!(
                use_provisioning_token(conn, &token, t0)?,
                Err(ProvisioningRefusal::UsedUp("line-3".into()))
            );
            let other = create_provisioning_token(conn, "line-4", limits, "operator:x", t0)?;
            assert_eq!(
                use_provisioning_token(conn, &other, t0 + Duration::hours(1))?,
                Err(ProvisioningRefusal::Expired("line-4".into()))
            );
            revoke_provisioning_tokens(conn, "line-4", "operator:x", t0)?;
            assert_eq!(
                use_provisioning_token(conn, &other, t0)?,
                Err(ProvisioningRefusal::Revoked("line-4".into()))
            );
            assert_eq!(
                use_provisioning_token(conn, "dpt_nope", t0)?,
                Err(ProvisioningRefusal::Unknown)
            );
            let listed = list_provisioning_tokens(conn, Page::newest(100))?;
            let line3 = listed.iter().find(|t| t.label == "line-3").unwrap();
            assert_eq!((line3.uses, line3.max_uses), (Some(2), Some(2)));
            assert!(matches!(
                create_provisioning_token(
                    conn,
                    "x",
                    ProvisioningLimits {
                        max_uses: 0,
                        ..limits
                    },
                    "operator:x",
                    t0
                ),
                Err(DirectorError::BadRequest(_))
            ));
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }
}
