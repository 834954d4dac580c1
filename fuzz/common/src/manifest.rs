//! Target `manifest`: the Director's parsing and checks of a vehicle version manifest
//! (`check_vehicle_manifest`, which the Director runs on every manifest before recording it).
//!
//! Input: records. The first record's tag chooses the manifest's signer (even: the Primary's
//! registered key; odd: a key the Director does not know); its body is the manifest's
//! `signed` text. Every further record is an ECU report's `signed` text, signed by the key
//! of the ECU its tag names (`tag % 4`: the Primary, ECU A, ECU B, an unknown key) and filed
//! under the serial its tag names (`(tag / 4) % 4`: the same four, the last a serial the
//! vehicle does not have). The harness sets the manifest's `ecu_version_reports` to those,
//! each carried as the text it was signed in (its spacing, key order and escapes, as a
//! Primary forwards what its Secondaries sent; text that is not JSON goes as a string), the
//! last record filed under a serial winning.
//! A first record with tag 255 gives the whole manifest as raw bytes instead.
//!
//! Oracle: an accepted manifest is signed by the Primary's key and names this vehicle and
//! its Primary; every report it yields is signed by the key of the ECU it is filed under,
//! for that ECU, with a fresh nonce, a counter above the last and a time not in the future.

use std::collections::BTreeMap;
use std::convert::Infallible;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uptane_core::crypto::SigningKey;
use uptane_core::ids::{EcuSerial, Vin};
use uptane_core::manifest::{
    CheckedManifest, InventoryEcu, VehicleInventory, check_vehicle_manifest,
};
use uptane_core::testing::{key, now};

use crate::fixtures::VIN;
use crate::{envelope, records};

/// The Primary's serial.
pub const PRIMARY: &str = "ecu-primary";
/// ECU serials by the index a record's tag names (the last is not in the vehicle).
pub const SERIALS: [&str; 4] = [PRIMARY, "ecu-a", "ecu-b", "ecu-unknown"];
/// A nonce the Director has seen before.
pub const SEEN_NONCE: &str = "seen-before";
/// ECU B's last accepted report counter.
pub const LAST_COUNTER_B: u64 = 5;
/// The tag of a first record that is the whole manifest.
pub const RAW: u8 = 255;

/// Signing keys by the index a record's tag names (the last is unregistered).
pub fn signers() -> [SigningKey; 4] {
    [key(21), key(22), key(23), key(24)]
}

fn inventory() -> VehicleInventory {
    let keys = signers();
    let ecu = |i: usize, last_counter| InventoryEcu {
        key: keys[i].public_key().clone(),
        primary: i == 0,
        last_counter,
        last_time: Some(now() - chrono::Duration::days(1)),
    };
    VehicleInventory {
        vin: Vin::new(VIN).expect("fixture VIN"),
        ecus: BTreeMap::from([
            (serial(0), ecu(0, None)),
            (serial(1), ecu(1, Some(0))),
            (serial(2), ecu(2, Some(LAST_COUNTER_B))),
        ]),
    }
}

fn serial(i: usize) -> EcuSerial {
    EcuSerial::new(SERIALS[i]).expect("fixture serial")
}

/// The manifest bytes an input describes.
pub fn manifest_bytes(data: &[u8]) -> Vec<u8> {
    let records = records::parse(data);
    let Some(((first_tag, manifest_text), reports)) = records.split_first() else {
        return Vec::new();
    };
    if *first_tag == RAW {
        return manifest_text.to_vec();
    }
    let keys = signers();
    let mut filed = BTreeMap::new();
    for (tag, text) in reports {
        let signer = &keys[usize::from(tag % 4)];
        let under = SERIALS[usize::from((tag / 4) % 4)];
        let signed = envelope::sign(text, &[signer]);
        let carried = if serde_json::from_slice::<&RawValue>(&signed).is_ok() {
            signed
        } else {
            serde_json::to_vec(&String::from_utf8_lossy(&signed)).unwrap_or_default()
        };
        filed.insert(under, carried);
    }
    let text = match serde_json::from_slice::<Value>(manifest_text) {
        Ok(Value::Object(mut object)) => {
            object.remove("ecu_version_reports");
            with_reports(&object, &filed)
        }
        _ => manifest_text.to_vec(),
    };
    let signer = if first_tag % 2 == 0 {
        &keys[0]
    } else {
        &keys[3]
    };
    envelope::sign(&text, &[signer])
}

/// `object` as text with `"ecu_version_reports"` added last, each report spliced in as its
/// text.
fn with_reports(object: &Map<String, Value>, filed: &BTreeMap<&str, Vec<u8>>) -> Vec<u8> {
    let mut text = serde_json::to_vec(object).unwrap_or_default();
    text.pop(); // the closing brace
    if !object.is_empty() {
        text.push(b',');
    }
    text.extend_from_slice(b"\"ecu_version_reports\":{");
    for (i, (serial, report)) in filed.iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        text.extend_from_slice(&serde_json::to_vec(serial).unwrap_or_default());
        text.push(b':');
        text.extend_from_slice(report);
    }
    text.extend_from_slice(b"}}");
    text
}

/// The Director's checks of `bytes` against the fixture vehicle.
fn check(bytes: &[u8], inventory: &VehicleInventory) -> Option<CheckedManifest> {
    check_vehicle_manifest::<Infallible>(
        bytes,
        inventory,
        now(),
        chrono::Duration::minutes(5),
        |_, nonce| Ok(nonce == SEEN_NONCE),
    )
    .ok()?
    .ok()
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let bytes = manifest_bytes(data);
    let inventory = inventory();
    let Some(checked) = check(&bytes, &inventory) else {
        return;
    };
    let primary_key = signers()[0].public_key().clone();
    assert!(
        uptane_core::verify::verify_signed_by(
            &uptane_core::verify::Raw::<uptane_core::manifest::VehicleVersionManifest>::new(bytes),
            &primary_key
        )
        .is_ok(),
        "a manifest accepted without the Primary's signature"
    );
    assert_eq!(
        checked.manifest.vin, inventory.vin,
        "a manifest of another vehicle accepted"
    );
    assert_eq!(checked.manifest.primary_ecu_serial.as_str(), PRIMARY);
    for report in &checked.reports {
        let ecu = inventory
            .ecus
            .get(&report.ecu_serial)
            .expect("an accepted report is from an ECU of the vehicle");
        assert!(
            report.nonce != SEEN_NONCE && !report.nonce.is_empty(),
            "a replayed nonce accepted"
        );
        if let Some(last) = ecu.last_counter {
            assert!(
                report.report_counter > last,
                "a report counter that went back accepted"
            );
        }
        assert!(
            report.latest_time <= now() + chrono::Duration::minutes(5),
            "a report from the future accepted"
        );
    }
    // Each report as filed: under an ECU of the vehicle, signed by that ECU's key, for it.
    for filed in checked.manifest.ecu_version_reports.keys() {
        let ecu = inventory
            .ecus
            .get(filed)
            .expect("a report filed under an ECU the vehicle does not have accepted");
        let raw = checked
            .manifest
            .report(filed)
            .expect("a filed report is JSON");
        let verified = uptane_core::manifest::verify_ecu_report(&raw, &ecu.key)
            .expect("a report accepted without the signature of the ECU it is filed under");
        assert_eq!(
            &verified.ecu_serial, filed,
            "a report signed for one ECU accepted under another"
        );
    }
    for serial in inventory.ecus.keys() {
        assert!(
            checked.reports.iter().any(|r| &r.ecu_serial == serial)
                || checked.unreachable.contains_key(serial),
            "ECU {serial} neither reported nor declared unreachable"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_accepted_with_each_report_carried_as_it_was_written() {
        let seeds = crate::seeds::seeds("manifest");
        for (name, input) in &seeds {
            assert!(
                check(&manifest_bytes(input), &inventory()).is_some(),
                "{name} refused"
            );
        }
        let escaped = br#""nonce": "nonce-\u0031""#;
        let (_, indented) = seeds
            .iter()
            .find(|(_, input)| input.windows(escaped.len()).any(|w| w == escaped))
            .expect("a seed with an indented, escaped report");
        let carried = manifest_bytes(indented);
        let text = String::from_utf8_lossy(&carried);
        assert!(text.contains(r#""nonce": "nonce-\u0031""#), "{text}");
    }
}
