//! The Primary's own install: the verified image copied over the active one atomically,
//! hashed again while it is copied, so what is installed is exactly what was verified.

use std::path::Path;

use uptane_core::error::AttackKind;
use uptane_core::manifest::InstalledImage;

use crate::download::{CopyError, VerifiedFile};

/// Why the Primary's own install failed.
#[derive(Debug)]
pub struct InstallFailure {
    /// The attack, when the bytes were not the approved image.
    pub attack: Option<AttackKind>,
    /// What happened.
    pub detail: String,
}

/// Installs `file` as the Primary's firmware at `firmware`: copied to a temporary file
/// beside it while every byte is hashed against the approval, synced, and renamed over the
/// active image only if the copy verified.
pub async fn install_own(
    file: &VerifiedFile,
    firmware: &Path,
) -> Result<InstalledImage, InstallFailure> {
    let dir = service_runtime::files::parent_dir(firmware);
    let (file, target) = (file.clone(), firmware.to_path_buf());
    let copied = tokio::task::spawn_blocking(move || -> Result<InstalledImage, CopyError> {
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir)?;
        let verified = file.copy_verified(tmp.as_file_mut())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&target).map_err(|e| e.error)?;
        service_runtime::files::sync_dir(&dir)?;
        let approved = verified.approved();
        Ok(InstalledImage {
            filename: approved.filename().to_string(),
            length: approved.length(),
            hashes: approved.hashes().clone(),
            release_counter: approved.release_counter(),
        })
    })
    .await
    .map_err(|e| InstallFailure {
        attack: None,
        detail: e.to_string(),
    })?;
    copied.map_err(|e| match e {
        CopyError::Image(e) => InstallFailure {
            attack: Some(e.attack()),
            detail: e.to_string(),
        },
        CopyError::Io(e) => InstallFailure {
            attack: None,
            detail: format!("writing {}: {e}", firmware.display()),
        },
    })
}
