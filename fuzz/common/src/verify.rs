//! Target `verify_roles`: `Raw` to `Verified` for every role, with the fuzzer writing the
//! `signed` text and the harness signing it.
//!
//! Input: one byte choosing the role (low 3 bits) and the signers (high 5 bits: root,
//! timestamp, snapshot, targets and ECU key), then the `signed` text. Oracle: a document
//! verifies only if the key its role needs is among the signers: a verification that
//! succeeds without it is a forgery.

use uptane_core::crypto::SigningKey;
use uptane_core::manifest::{EcuVersionReport, VehicleVersionManifest};
use uptane_core::metadata::{Root, Signed, Snapshot, Targets, Timestamp};
use uptane_core::testing::key;
use uptane_core::verify::{Raw, verify_role, verify_root_self_signed, verify_signed_by};

use crate::envelope;
use crate::fixtures::{keys, trusted_root};

/// The roles, by the low three bits of the first byte.
pub const ROLES: [&str; 6] = [
    "root",
    "timestamp",
    "snapshot",
    "targets",
    "ecu_version_report",
    "vehicle_version_manifest",
];

/// The signers, by bit of the first byte's high five bits.
pub fn signers() -> [SigningKey; 5] {
    [key(1), key(2), key(3), key(4), keys::ecu()]
}

/// The first byte of an input verifying `role` (an index into [`ROLES`]) signed by the
/// signers in `mask` (bit i: [`signers`]`[i]`).
pub fn selector(role: usize, mask: u8) -> u8 {
    (role as u8 & 7) | (mask << 3)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let role = usize::from(selector & 7) % ROLES.len();
    let mask = selector >> 3;
    let all = signers();
    let chosen: Vec<&SigningKey> = (0..all.len())
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| &all[i])
        .collect();
    let bytes = envelope::sign(text, &chosen);
    let signed_by = |i: usize| mask & (1 << i) != 0;
    match role {
        0 => {
            check::<Root>(&bytes, "root", signed_by(0));
            let _ = verify_root_self_signed(&Raw::new(bytes.clone()));
        }
        1 => check::<Timestamp>(&bytes, "timestamp", signed_by(1)),
        2 => check::<Snapshot>(&bytes, "snapshot", signed_by(2)),
        3 => check::<Targets>(&bytes, "targets", signed_by(3)),
        4 => {
            let ok = verify_signed_by(
                &Raw::<EcuVersionReport>::new(bytes),
                keys::ecu().public_key(),
            );
            assert!(
                ok.is_err() || signed_by(4),
                "an ECU report verified without the ECU's signature"
            );
        }
        _ => {
            let ok = verify_signed_by(
                &Raw::<VehicleVersionManifest>::new(bytes),
                keys::ecu().public_key(),
            );
            assert!(
                ok.is_err() || signed_by(4),
                "a manifest verified without the Primary's signature"
            );
        }
    }
}

fn check<R: Signed>(bytes: &[u8], role: &str, key_signed: bool) {
    let root = trusted_root();
    let verified = verify_role(
        &Raw::<R>::new(bytes.to_vec()),
        role,
        root.keys(),
        root.role(role),
    );
    assert!(
        verified.is_err() || key_signed,
        "{role} verified without its key's signature"
    );
}
