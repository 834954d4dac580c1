//! Target `cjson`: canonical JSON and the signed envelope, from arbitrary bytes.
//!
//! Oracle: whenever the text canonicalizer (what signatures are checked over) and serde_json
//! (what the typed reading uses) both read a text, their canonical forms are equal, and the
//! canonicalizer never accepts a text whose serde_json reading has no canonical form: the
//! two readings of one document cannot disagree (the property `cjson.rs` promises). Then the
//! bytes go through the envelope parser and `Raw` to `Verified` as every role, against the
//! fixture root's keys.

use serde_json::Value;
use uptane_core::cjson::{canonicalize, canonicalize_json_text};
use uptane_core::manifest::{EcuVersionReport, VehicleVersionManifest};
use uptane_core::metadata::{Root, Snapshot, Targets, Timestamp};
use uptane_core::verify::{Raw, verify_role, verify_root_self_signed, verify_signed_by};

use crate::fixtures::{keys, trusted_root};

/// Runs one input.
pub fn run(data: &[u8]) {
    let text = canonicalize_json_text(data);
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        match (&text, canonicalize(&value)) {
            (Ok(from_text), Ok(from_value)) => assert_eq!(
                from_text, &from_value,
                "the canonical forms of one text differ"
            ),
            (Ok(_), Err(e)) => {
                panic!("the text has a canonical form but its serde_json reading has none: {e}")
            }
            _ => {}
        }
    }
    as_every_role(data);
}

/// `data` as each kind of signed document; the fixture keys never signed these bytes, so
/// nothing may verify unless the bytes carry a fixture signature the fuzzer copied.
fn as_every_role(data: &[u8]) {
    let root = trusted_root();
    let _ = verify_role(
        &Raw::<Root>::new(data.to_vec()),
        "root",
        root.keys(),
        root.role("root"),
    );
    let _ = verify_role(
        &Raw::<Timestamp>::new(data.to_vec()),
        "timestamp",
        root.keys(),
        root.role("timestamp"),
    );
    let _ = verify_role(
        &Raw::<Snapshot>::new(data.to_vec()),
        "snapshot",
        root.keys(),
        root.role("snapshot"),
    );
    let _ = verify_role(
        &Raw::<Targets>::new(data.to_vec()),
        "targets",
        root.keys(),
        root.role("targets"),
    );
    let _ = verify_root_self_signed(&Raw::new(data.to_vec()));
    let ecu = keys::ecu();
    let _ = verify_signed_by(
        &Raw::<EcuVersionReport>::new(data.to_vec()),
        ecu.public_key(),
    );
    let _ = verify_signed_by(
        &Raw::<VehicleVersionManifest>::new(data.to_vec()),
        ecu.public_key(),
    );
}
