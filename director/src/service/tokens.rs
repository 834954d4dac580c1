//! Operator API tokens and provisioning tokens: random secrets shown once, stored as
//! SHA-256 hashes.

use rusqlite::{Connection, OptionalExtension, params};
use uptane_core::hash::sha256_hex;
use uptane_core::time::UtcTime;

use super::events::NewEvent;
use super::now_text;
use crate::error::DirectorError;

/// A new secret `PREFIX_<64 hex digits>`. Fails when the system has no entropy, rather
/// than make a guessable one.
pub(crate) fn random_token(prefix: &str) -> Result<String, DirectorError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| DirectorError::Internal(format!("random: {e}")))?;
    Ok(format!("{prefix}_{}", hex::encode(secret)))
}

/// Creates an operator API token; returns it (only its hash is stored).
pub fn create_api_token(
    conn: &Connection,
    label: &str,
    now: UtcTime,
) -> Result<String, DirectorError> {
    let token = random_token("dat")?;
    conn.execute(
        "INSERT INTO api_tokens (sha256, label, created_at) VALUES (?1, ?2, ?3)",
        params![sha256_hex(token.as_bytes()), label, now_text(now)],
    )?;
    NewEvent::info("api_token_created", "cli", label).record(conn, now)?;
    Ok(token)
}

/// The label of a valid operator token.
pub fn check_api_token(conn: &Connection, token: &str) -> Result<String, DirectorError> {
    conn.query_row(
        "SELECT label FROM api_tokens WHERE sha256 = ?1 AND revoked = 0",
        [sha256_hex(token.as_bytes())],
        |row| row.get(0),
    )
    .optional()?
    .ok_or_else(|| DirectorError::Unauthorized("invalid API token".into()))
}

/// Creates a provisioning token (one-time or fleet-wide) with which Primaries register.
pub fn create_provisioning_token(
    conn: &Connection,
    label: &str,
    one_time: bool,
    actor: &str,
    now: UtcTime,
) -> Result<String, DirectorError> {
    let token = random_token("dpt")?;
    conn.execute(
        "INSERT INTO provisioning_tokens (sha256, label, one_time, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![sha256_hex(token.as_bytes()), label, one_time, now_text(now)],
    )?;
    NewEvent::info("provisioning_token_created", actor, label).record(conn, now)?;
    Ok(token)
}

/// Revokes every provisioning token with `label`; returns how many.
pub fn revoke_provisioning_tokens(
    conn: &Connection,
    label: &str,
    actor: &str,
    now: UtcTime,
) -> Result<usize, DirectorError> {
    let n = conn.execute(
        "UPDATE provisioning_tokens SET revoked = 1 WHERE label = ?1 AND revoked = 0",
        [label],
    )?;
    if n == 0 {
        return Err(DirectorError::NotFound(format!(
            "no active provisioning token labelled {label:?}"
        )));
    }
    NewEvent::info("provisioning_token_revoked", actor, label).record(conn, now)?;
    Ok(n)
}

/// A provisioning token as stored.
pub(crate) struct ProvisioningToken {
    pub(crate) label: String,
    pub(crate) one_time: bool,
    pub(crate) used: bool,
    pub(crate) revoked: bool,
}

/// The stored provisioning token `token`, if any.
pub(crate) fn provisioning_token(
    conn: &Connection,
    token: &str,
) -> Result<Option<ProvisioningToken>, DirectorError> {
    Ok(conn
        .query_row(
            "SELECT label, one_time, used, revoked FROM provisioning_tokens WHERE sha256 = ?1",
            [sha256_hex(token.as_bytes())],
            |r| {
                Ok(ProvisioningToken {
                    label: r.get(0)?,
                    one_time: r.get(1)?,
                    used: r.get(2)?,
                    revoked: r.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Marks a one-time provisioning token used, in the caller's transaction; `false` when it
/// was used or revoked meanwhile (nothing changed).
pub(crate) fn use_provisioning_token(
    conn: &Connection,
    token: &str,
) -> Result<bool, DirectorError> {
    let changed = conn.execute(
        "UPDATE provisioning_tokens SET used = 1 WHERE sha256 = ?1 AND used = 0 AND revoked = 0",
        [sha256_hex(token.as_bytes())],
    )?;
    Ok(changed == 1)
}
