//! Upload tokens: random bearer tokens, stored only as SHA-256 hashes, each bound to the one
//! targets role whose metadata it may upload, each with an expiry, revocable, and listed by
//! an id (a prefix of the hash, which says nothing about the secret).

use std::path::Path;

use serde::{Deserialize, Serialize};
use uptane_core::hash::sha256_hex;
use uptane_core::time::{UtcTime, format_expires};

use crate::error::RepoError;
use crate::fsutil::write_atomic;

/// One stored token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// The role it may upload metadata for.
    pub role: String,
    /// A note for operators.
    #[serde(default)]
    pub label: String,
    /// When it was made (absent for tokens made before tokens expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When it stops working. A token without one was made before tokens expired and is
    /// refused: make a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl TokenEntry {
    /// The id it is listed and revoked by.
    pub fn id(&self) -> &str {
        &self.sha256[..self.sha256.len().min(16)]
    }
}

/// The token file of a repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Every token.
    pub tokens: Vec<TokenEntry>,
}

/// Why a presented token may not upload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such token.
    #[error("invalid token")]
    Unknown,
    /// Revoked by an operator.
    #[error("token {0} was revoked")]
    Revoked(String),
    /// Past its expiry, or made before tokens expired.
    #[error("token {0} expired; ask for a new one")]
    Expired(String),
}

/// Which tokens an operator revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token listed with this id.
    Id(String),
    /// Every live token with this label.
    Label(String),
}

fn path(repo: &Path) -> std::path::PathBuf {
    repo.join("tokens.json")
}

/// Longest lifetime a token may be given.
pub const MAX_LIFETIME: chrono::Duration = chrono::Duration::days(3650);

impl Tokens {
    /// Reads the tokens of the repository at `repo` (none if the file does not exist).
    pub fn load(repo: &Path) -> Result<Self, RepoError> {
        let p = path(repo);
        match std::fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RepoError::Corrupt {
                role: "tokens".into(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(RepoError::io(&p, e)),
        }
    }

    fn save(&self, repo: &Path) -> Result<(), RepoError> {
        let bytes = serde_json::to_vec_pretty(self).expect("tokens serialize");
        let p = path(repo);
        write_atomic(&p, &bytes)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| RepoError::io(&p, e))?;
        }
        Ok(())
    }

    /// Creates a token for `role` valid for `lifetime`; returns the token text, which is
    /// not stored.
    pub fn create(
        repo: &Path,
        role: &str,
        label: &str,
        lifetime: chrono::Duration,
        now: UtcTime,
    ) -> Result<String, RepoError> {
        if lifetime <= chrono::Duration::zero() || lifetime > MAX_LIFETIME {
            return Err(RepoError::Layout(format!(
                "a token lives between 1 second and {} days",
                MAX_LIFETIME.num_days()
            )));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| RepoError::Random(e.to_string()))?;
        let token = format!("irt_{}", hex::encode(secret));
        let mut tokens = Self::load(repo)?;
        tokens.tokens.push(TokenEntry {
            sha256: sha256_hex(token.as_bytes()),
            role: role.to_string(),
            label: label.to_string(),
            created_at: Some(format_expires(&now)),
            expires_at: Some(format_expires(&(now + lifetime))),
            revoked_at: None,
        });
        tokens.save(repo)?;
        Ok(token)
    }

    /// Revokes the live tokens `which` selects; returns how many.
    pub fn revoke(repo: &Path, which: &TokenSelector, now: UtcTime) -> Result<usize, RepoError> {
        let mut tokens = Self::load(repo)?;
        let mut n = 0;
        for entry in tokens.tokens.iter_mut().filter(|t| t.revoked_at.is_none()) {
            let selected = match which {
                TokenSelector::Id(id) => entry.id().eq_ignore_ascii_case(id),
                TokenSelector::Label(label) => &entry.label == label,
            };
            if selected {
                entry.revoked_at = Some(format_expires(&now));
                n += 1;
            }
        }
        if n > 0 {
            tokens.save(repo)?;
        }
        Ok(n)
    }

    /// The role a presented token may write, if it is live at `now`.
    pub fn role_of(&self, token: &str, now: UtcTime) -> Result<&str, TokenRefusal> {
        let digest = sha256_hex(token.as_bytes());
        let entry = self
            .tokens
            .iter()
            .find(|t| t.sha256 == digest)
            .ok_or(TokenRefusal::Unknown)?;
        if entry.revoked_at.is_some() {
            return Err(TokenRefusal::Revoked(entry.id().to_string()));
        }
        match &entry.expires_at {
            Some(expires) if *expires > format_expires(&now) => Ok(entry.role.as_str()),
            _ => Err(TokenRefusal::Expired(entry.id().to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> UtcTime {
        uptane_core::time::parse_expires(text).unwrap()
    }

    #[test]
    fn tokens_are_stored_hashed_bound_to_a_role_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = at("2030-01-01T00:00:00Z");
        let token = Tokens::create(
            dir.path(),
            "acme",
            "supplier",
            chrono::Duration::days(1),
            t0,
        )
        .unwrap();
        let stored = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!stored.contains(&token));
        let tokens = Tokens::load(dir.path()).unwrap();
        assert_eq!(tokens.role_of(&token, t0), Ok("acme"));
        assert_eq!(tokens.role_of("irt_other", t0), Err(TokenRefusal::Unknown));
        assert!(matches!(
            tokens.role_of(&token, t0 + chrono::Duration::days(1)),
            Err(TokenRefusal::Expired(_))
        ));
    }

    #[test]
    fn revoked_and_pre_expiry_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = at("2030-01-01T00:00:00Z");
        let a = Tokens::create(dir.path(), "acme", "a", chrono::Duration::days(9), t0).unwrap();
        let b = Tokens::create(dir.path(), "acme", "b", chrono::Duration::days(9), t0).unwrap();
        let id = Tokens::load(dir.path()).unwrap().tokens[0].id().to_string();
        assert_eq!(
            Tokens::revoke(dir.path(), &TokenSelector::Id(id), t0).unwrap(),
            1
        );
        let tokens = Tokens::load(dir.path()).unwrap();
        assert!(matches!(
            tokens.role_of(&a, t0),
            Err(TokenRefusal::Revoked(_))
        ));
        assert_eq!(tokens.role_of(&b, t0), Ok("acme"));
        assert_eq!(
            Tokens::revoke(dir.path(), &TokenSelector::Label("a".into()), t0).unwrap(),
            0
        );
        // A token file from before expiry: its tokens are refused, not valid forever.
        let legacy = "irt_legacy";
        std::fs::write(
            dir.path().join("tokens.json"),
            format!(
                r#"{{"tokens":[{{"sha256":"{}","role":"targets"}}]}}"#,
                sha256_hex(legacy.as_bytes())
            ),
        )
        .unwrap();
        let tokens = Tokens::load(dir.path()).unwrap();
        assert!(matches!(
            tokens.role_of(legacy, t0),
            Err(TokenRefusal::Expired(_))
        ));
    }
}
