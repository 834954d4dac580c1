//! Target `image_upload`: the Image repository's verification of uploaded targets metadata
//! (`Repository::check_upload`, what `PUT /api/v1/metadata/<role>` runs before publishing),
//! for top-level targets and for a supplier's delegated role limited by path and hardware id.
//!
//! Input: one byte (bit 0: signed by the role's key, else by a stranger's; bit 1: the
//! delegated role `supplier`, else `targets`), then the `signed` text. Oracle: an accepted
//! upload is signed by the role's key, has a version above the published one, and lists
//! only targets whose blob was uploaded with that length and those hashes; a supplier's
//! lists only paths under `supplier/` for hardware id `hw-fuzz`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image_repo::repo::{Expiry, InitOptions, Repository};
use uptane_core::crypto::SigningKey;
use uptane_core::sign::delegated_role;
use uptane_core::testing::{key, now};

use crate::envelope;
use crate::fixtures::HARDWARE_ID;

/// The delegated role.
pub const SUPPLIER: &str = "supplier";
/// The blob the template repository holds, listed in its targets as `fuzz.bin`.
pub const BLOB: &[u8] = b"an uploaded image blob";

/// The supplier's key.
pub fn supplier_key() -> SigningKey {
    key(50)
}

/// The template repository: initialized, with [`BLOB`] uploaded and published as
/// `fuzz.bin`, and `supplier/*` for `hw-fuzz` delegated to [`SUPPLIER`].
pub struct Template {
    _dir: tempfile::TempDir,
    /// The repository.
    pub repo: Repository,
    /// The offline targets key.
    pub targets_key: SigningKey,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").finish_non_exhaustive()
    }
}

/// The template repository, created once.
pub fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let offline: PathBuf = dir.path().join("offline");
        let repo = Repository::init(
            dir.path().join("repo"),
            &offline,
            InitOptions::default(),
            Expiry::default(),
            now(),
        )
        .expect("the template repository initializes");
        let blob_file = dir.path().join("fuzz.bin");
        std::fs::write(&blob_file, BLOB).expect("blob written");
        repo.import_file(&blob_file).expect("blob imported");
        let supplier = supplier_key();
        let mut role = delegated_role(
            SUPPLIER,
            &[supplier.public_key()],
            1,
            &["supplier/*"],
            false,
        );
        role.hardware_ids = Some(vec![HARDWARE_ID.to_string()]);
        repo.update_targets(&offline, now(), |builder| {
            Ok(builder
                .target(
                    "fuzz.bin",
                    BLOB,
                    Some(image_repo::repo::image_custom(&[HARDWARE_ID.into()], 1)),
                )
                .delegate(role, &[supplier.public_key()]))
        })
        .expect("the template publishes");
        let targets_key = image_repo::keys::load_role_keys(Path::new(&offline), "targets")
            .expect("targets key")
            .remove(0);
        Template {
            _dir: dir,
            repo,
            targets_key,
        }
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let template = template();
    let supplier = selector & 2 != 0;
    let role = if supplier { SUPPLIER } else { "targets" };
    let right_key = if supplier {
        supplier_key()
    } else {
        template.targets_key.clone()
    };
    let signer = if selector & 1 != 0 {
        right_key
    } else {
        key(51)
    };
    let bytes = envelope::sign(text, &[&signer]);
    let Ok(state) = template.repo.state() else {
        panic!("the template repository reads");
    };
    let Ok(checked) = template.repo.check_upload(&state, role, &bytes, now()) else {
        return;
    };
    assert!(
        selector & 1 != 0,
        "{role} upload accepted without the role's signature"
    );
    let published = state.roles.get(role).map_or(0, |r| r.common.version);
    assert!(
        checked.metadata.common.version > published,
        "an upload that does not raise the version"
    );
    let blob_hashes = uptane_core::hash::standard_hashes(BLOB);
    for (path, info) in &checked.new_targets {
        assert_eq!(
            info.length,
            BLOB.len() as u64,
            "{path}: a target without its uploaded blob"
        );
        for (algorithm, digest) in &info.hashes {
            assert!(
                blob_hashes
                    .get(algorithm)
                    .is_some_and(|d| d.eq_ignore_ascii_case(digest)),
                "{path}: a {algorithm} that is not the uploaded blob's"
            );
        }
        if supplier {
            assert!(
                path.starts_with("supplier/"),
                "{path}: outside the supplier's delegation"
            );
            let ids = info
                .custom_value()
                .and_then(|c| c.get("hardwareIds"))
                .and_then(|h| h.as_array())
                .cloned()
                .unwrap_or_default();
            assert!(
                !ids.is_empty() && ids.iter().all(|id| id == HARDWARE_ID),
                "{path}: hardware ids outside the delegation: {ids:?}"
            );
        }
    }
}
