//! Fixed repositories and keys the targets start from, built once per process (fixed seeds:
//! the same inputs reach the same code in every run, and the committed seeds stay valid).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use uptane_core::crypto::{KeyId, PublicKey, SigningKey};
use uptane_core::metadata::{RoleKeys, Root};
use uptane_core::sign::{RootBuilder, delegated_role};
use uptane_core::testing::{RepoFixture, key, later};
use uptane_core::uptane::{director_target_custom, director_targets_custom, image_target_custom};
use uptane_core::verify::{Raw, verify_root_self_signed};

/// The vehicle every fixture belongs to.
pub const VIN: &str = "FUZZVIN0000000001";
/// The Secondary's serial.
pub const SERIAL: &str = "ECU-FUZZ-1";
/// The Secondary's hardware id.
pub const HARDWARE_ID: &str = "hw-fuzz";
/// The Director's correlation id for the fixture's assignment.
pub const CORRELATION_ID: &str = "fuzz-assignment-1";
/// The image the Director assigns to the Secondary.
pub const IMAGE_NAME: &str = "fuzz-image.bin";
/// Its length: a few chunks of [`CHUNK`] and a partial one.
pub const IMAGE_LEN: usize = 10_000;
/// Chunk size the fuzzed Secondary accepts.
pub const CHUNK: usize = 4096;

/// The assigned image's bytes.
pub fn image() -> Vec<u8> {
    (0..IMAGE_LEN).map(|i| (i * 131 % 251) as u8).collect()
}

/// The keys of the fixture repositories, by what they sign.
pub mod keys {
    use super::*;

    /// Key of the Image repository's delegated role `role-a`.
    pub fn delegated() -> SigningKey {
        key(30)
    }
    /// The Secondary's ECU key.
    pub fn ecu() -> SigningKey {
        key(40)
    }
    /// Root keys of the Image repository's root versions 2 and 3.
    pub fn rotated_roots() -> [SigningKey; 2] {
        [key(5), key(6)]
    }
}

/// An Image repository with a rotated root (versions 1 to 3, each with a new root key), a
/// terminating delegation of `a/*` to `role-a`, and targets at both levels.
pub fn image_repo() -> &'static RepoFixture {
    static REPO: OnceLock<RepoFixture> = OnceLock::new();
    REPO.get_or_init(|| {
        let mut repo = RepoFixture::new();
        let delegated = keys::delegated();
        repo.delegate(
            "targets",
            delegated_role("role-a", &[delegated.public_key()], 1, &["a/*"], true),
            vec![delegated],
        );
        repo.add_target("file.bin", b"top-level target", None);
        repo.add_target(
            IMAGE_NAME,
            &image(),
            Some(image_target_custom(&[HARDWARE_ID], 1)),
        );
        repo.add_delegated_target("role-a", "a/x.bin", b"delegated target");
        for (version, new_key) in (2..).zip(keys::rotated_roots()) {
            let builder = RootBuilder::new(version, later())
                .key("root", new_key.public_key())
                .key("timestamp", repo.timestamp_key.public_key())
                .key("snapshot", repo.snapshot_key.public_key())
                .key("targets", repo.targets_key.public_key());
            repo.rotate_root(builder, vec![new_key]);
        }
        repo.publish();
        repo
    })
}

/// A Director repository assigning [`IMAGE_NAME`] to the Secondary [`SERIAL`] of [`VIN`].
pub fn director_repo() -> &'static RepoFixture {
    static REPO: OnceLock<RepoFixture> = OnceLock::new();
    REPO.get_or_init(|| {
        let mut repo = RepoFixture::new();
        repo.root_keys = vec![key(11)];
        repo.timestamp_key = key(12);
        repo.snapshot_key = key(13);
        repo.targets_key = key(14);
        repo.roots = vec![
            RootBuilder::new(1, later())
                .key("root", key(11).public_key())
                .key("timestamp", key(12).public_key())
                .key("snapshot", key(13).public_key())
                .key("targets", key(14).public_key())
                .sign(&[&key(11)])
                .expect("fixture signs"),
        ];
        repo.targets = uptane_core::sign::TargetsBuilder::new(0, later())
            .target(
                IMAGE_NAME,
                &image(),
                Some(director_target_custom(SERIAL, HARDWARE_ID, 1)),
            )
            .custom(director_targets_custom(VIN, CORRELATION_ID))
            .build();
        repo.publish();
        repo
    })
}

/// The keys and role assignments of the Image repository's first root, to verify against.
#[derive(Debug)]
pub struct TrustedRoot {
    /// The root.
    pub root: Root,
}

impl TrustedRoot {
    /// The keys the root lists.
    pub fn keys(&self) -> &BTreeMap<KeyId, PublicKey> {
        &self.root.keys
    }

    /// The key ids and threshold of `role`.
    pub fn role(&self, role: &str) -> &RoleKeys {
        self.root
            .role_keys(role)
            .expect("fixture root has every role")
    }
}

/// The Image repository's first root, verified.
pub fn trusted_root() -> &'static TrustedRoot {
    static ROOT: OnceLock<TrustedRoot> = OnceLock::new();
    ROOT.get_or_init(|| {
        let raw = Raw::<Root>::new(image_repo().initial_root().to_vec());
        let root = verify_root_self_signed(&raw).expect("fixture root verifies");
        TrustedRoot {
            root: (*root).clone(),
        }
    })
}
