//! Upload tokens: random bearer tokens, stored only as SHA-256 hashes, each bound to the one
//! targets role whose metadata it may upload.

use std::path::Path;

use serde::{Deserialize, Serialize};
use uptane_core::hash::sha256_hex;

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
}

/// The token file of a repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Every token.
    pub tokens: Vec<TokenEntry>,
}

fn path(repo: &Path) -> std::path::PathBuf {
    repo.join("tokens.json")
}

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

    /// Creates a token for `role`; returns the token text, which is not stored.
    pub fn create(repo: &Path, role: &str, label: &str) -> Result<String, RepoError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| RepoError::Random(e.to_string()))?;
        let token = format!("irt_{}", hex::encode(secret));
        let mut tokens = Self::load(repo)?;
        tokens.tokens.push(TokenEntry {
            sha256: sha256_hex(token.as_bytes()),
            role: role.to_string(),
            label: label.to_string(),
        });
        let bytes = serde_json::to_vec_pretty(&tokens).expect("tokens serialize");
        write_atomic(&path(repo), &bytes)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let p = path(repo);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| RepoError::io(&p, e))?;
        }
        Ok(token)
    }

    /// The role a presented token may write, if it is valid.
    pub fn role_of(&self, token: &str) -> Option<&str> {
        let digest = sha256_hex(token.as_bytes());
        self.tokens
            .iter()
            .find(|t| t.sha256 == digest)
            .map(|t| t.role.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_bound_to_a_role() {
        let dir = tempfile::tempdir().unwrap();
        let token = Tokens::create(dir.path(), "acme", "supplier").unwrap();
        let stored = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!stored.contains(&token));
        let tokens = Tokens::load(dir.path()).unwrap();
        assert_eq!(tokens.role_of(&token), Some("acme"));
        assert_eq!(tokens.role_of("irt_other"), None);
    }
}
