//! ECU version reports and vehicle version manifests (Uptane §5.4.2.1).
//!
//! Both are signed envelopes like TUF metadata, with `signed._type` set so a signature on
//! one kind of document cannot be passed off as another (the Primary signs both with one
//! key). The vehicle manifest embeds each ECU report as the ECU signed it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod check;

pub use check::{
    CheckedManifest, InventoryEcu, MAX_NONCE_BYTES, ManifestError, TimeWentBack, VehicleInventory,
    check_storable, check_vehicle_manifest,
};

use crate::cjson::CanonicalError;
use crate::crypto::{PublicKey, SigningKey};
use crate::error::{AttackKind, VerifyError};
use crate::hash::Hashes;
use crate::ids::{EcuSerial, Vin};
use crate::metadata::Signed;
use crate::sign;
use crate::time::UtcTime;
use crate::verify::{Raw, Verified, verify_signed_by};

/// `_type` of an ECU version report.
pub const ECU_REPORT_TYPE: &str = "ecu_version_report";
/// `_type` of a vehicle version manifest.
pub const VEHICLE_MANIFEST_TYPE: &str = "vehicle_version_manifest";

/// The image an ECU runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledImage {
    /// File name.
    pub filename: String,
    /// Length in bytes.
    pub length: u64,
    /// Digests.
    pub hashes: Hashes,
    /// Release counter of the image, as approved when it was installed.
    #[serde(default)]
    pub release_counter: u64,
}

impl InstalledImage {
    /// Whether this is the image named `filename`, `length` bytes long with digests `hashes`
    /// (the one rule by which the Director, the Primary and the Secondary tell an installed
    /// image from an approved one).
    pub fn is(&self, filename: &str, length: u64, hashes: &Hashes) -> bool {
        self.filename == filename
            && self.length == length
            && crate::hash::same_digests(&self.hashes, hashes)
    }
}

/// An attack an ECU detected since its previous report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectedAttack {
    /// Which attack.
    pub kind: AttackKind,
    /// What was refused, in words.
    pub detail: String,
}

/// Distinct attacks an ECU keeps one by one for its next report; more are counted and
/// reported as one entry, so its state and every report stay bounded whatever an attacker
/// provokes.
pub const MAX_KEPT_ATTACKS: usize = 32;

/// Longest detail an ECU keeps for an attack ([`DetectedAttack::new`]).
pub const MAX_ATTACK_DETAIL_BYTES: usize = 512;

impl DetectedAttack {
    /// An attack to keep until a report carries it. Its words often quote what the attacker
    /// sent (a nonce, a name, a server's answer), so they are cut to
    /// [`MAX_ATTACK_DETAIL_BYTES`] and control characters become `\u{FFFD}`: evidence must not
    /// let its sender grow the ECU's state, or the report past what the Director accepts, or
    /// carry a NUL that a database refuses.
    pub fn new(kind: AttackKind, detail: &str) -> Self {
        Self {
            kind,
            detail: bounded_words(detail),
        }
    }
}

/// `words` as an ECU keeps what it reports in words (an attack's detail, why an ECU could
/// not be reached): on one line, at most [`MAX_ATTACK_DETAIL_BYTES`] ([`crate::text::bounded`]).
pub fn bounded_words(words: &str) -> String {
    crate::text::bounded(
        words,
        MAX_ATTACK_DETAIL_BYTES,
        crate::text::LineBreaks::Replace,
    )
    .into_owned()
}

/// The largest signed ECU version report a Primary puts in its manifest: 32 attacks of
/// 512 bytes of words fit many times over; a Secondary sending more (its own key signing
/// it) is refused alone, not made to spoil the vehicle's whole manifest.
pub const MAX_ECU_REPORT_BYTES: usize = 64 << 10;

/// How far down a vehicle manifest's `signed` object carries each report (`signed`, then
/// `ecu_version_reports`, then the report), for the nesting limit of the canonical form.
const REPORT_DEPTH_IN_MANIFEST: usize = 2;

/// Whether a signed ECU version report, which verified on its own, can be carried in a
/// vehicle manifest: the canonical form limits nesting counted from the manifest's top, so a
/// report nested nearly to the limit on its own (its own key signing it) would have the
/// whole manifest fail to sign, every cycle. A Primary refuses such a report alone.
pub fn check_carriable(report: &[u8]) -> Result<(), String> {
    crate::cjson::canonicalize_json_text_at(report, REPORT_DEPTH_IN_MANIFEST)
        .map(drop)
        .map_err(|e| format!("cannot be carried in a manifest: {e}"))
}

/// How an ECU's latest installation ended, as its version report states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallResult {
    /// Installed and running.
    Installed,
    /// Not finished yet (written, waiting for activation or confirmation).
    InProgress,
    /// Refused or failed; the ECU runs what it ran before.
    Failed,
    /// The new image failed its trial boot; the ECU went back to the previous one.
    RolledBack,
    /// Cancelled before it was activated; the ECU runs what it ran before.
    Cancelled,
}

impl InstallResult {
    /// A short stable name (`installed`, `rolled_back`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            InstallResult::Installed => "installed",
            InstallResult::InProgress => "in_progress",
            InstallResult::Failed => "failed",
            InstallResult::RolledBack => "rolled_back",
            InstallResult::Cancelled => "cancelled",
        }
    }

    /// Whether the installation ended without the image running (final for its assignment).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            InstallResult::Failed | InstallResult::RolledBack | InstallResult::Cancelled
        )
    }
}

impl std::fmt::Display for InstallResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of the latest installation an ECU attempted, for the Director to close the
/// assignment with that correlation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastInstall {
    /// The assignment.
    pub correlation_id: String,
    /// How it ended.
    pub result: InstallResult,
    /// Why, in words.
    pub detail: String,
}

/// What an ECU says it runs, signed with its key (Uptane §5.4.2.1.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcuVersionReport {
    /// Always [`ECU_REPORT_TYPE`].
    #[serde(rename = "_type")]
    pub report_type: String,
    /// ECU serial.
    pub ecu_serial: EcuSerial,
    /// Installed image.
    pub installed_image: InstalledImage,
    /// Attacks detected since the last report.
    #[serde(default)]
    pub attacks_detected: Vec<DetectedAttack>,
    /// The latest time the ECU verified metadata at.
    #[serde(with = "crate::time")]
    pub latest_time: UtcTime,
    /// The nonce the Primary sent for this report (replay protection).
    pub nonce: String,
    /// A counter that only goes up, for every report the ECU signs.
    pub report_counter: u64,
    /// Result of the latest install, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_install: Option<LastInstall>,
}

impl Signed for EcuVersionReport {
    const TYPE: &'static str = ECU_REPORT_TYPE;
    fn type_field(&self) -> &str {
        &self.report_type
    }
}

impl Signed for VehicleVersionManifest {
    const TYPE: &'static str = VEHICLE_MANIFEST_TYPE;
    fn type_field(&self) -> &str {
        &self.manifest_type
    }
}

impl EcuVersionReport {
    /// Signs the report with the ECU's key.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, CanonicalError> {
        sign::sign(self, &[key])
    }
}

/// Verifies an ECU version report against the ECU's public key.
pub fn verify_ecu_report(
    raw: &Raw<EcuVersionReport>,
    key: &PublicKey,
) -> Result<Verified<EcuVersionReport>, VerifyError> {
    verify_signed_by(raw, key)
}

/// The vehicle's report to the Director, signed by the Primary (Uptane §5.4.2.1.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VehicleVersionManifest {
    /// Always [`VEHICLE_MANIFEST_TYPE`].
    #[serde(rename = "_type")]
    pub manifest_type: String,
    /// Vehicle identifier.
    pub vin: Vin,
    /// Serial of the Primary that signs this manifest.
    pub primary_ecu_serial: EcuSerial,
    /// ECU serial to that ECU's signed report, as the ECU signed it: kept as its JSON text,
    /// which is what its signature check reads ([`Self::report`]), not built into a tree
    /// and written out again.
    pub ecu_version_reports: BTreeMap<EcuSerial, Box<RawValue>>,
    /// ECUs of the vehicle the Primary could not get a report from this time, with the
    /// reason: an offline Secondary must not keep the rest of the vehicle from reporting.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unreachable_ecus: BTreeMap<EcuSerial, String>,
}

impl VehicleVersionManifest {
    /// A manifest from signed ECU reports (each the bytes an ECU sent).
    pub fn new(
        vin: &Vin,
        primary_ecu_serial: &EcuSerial,
        reports: &BTreeMap<EcuSerial, Vec<u8>>,
    ) -> Result<Self, VerifyError> {
        let mut ecu_version_reports = BTreeMap::new();
        for (serial, bytes) in reports {
            let text: Box<RawValue> =
                serde_json::from_slice(bytes).map_err(|e| VerifyError::Malformed {
                    role: ECU_REPORT_TYPE.into(),
                    reason: format!("report of {serial} is not JSON: {e}"),
                })?;
            ecu_version_reports.insert(serial.clone(), text);
        }
        Ok(Self {
            manifest_type: VEHICLE_MANIFEST_TYPE.into(),
            vin: vin.clone(),
            primary_ecu_serial: primary_ecu_serial.clone(),
            ecu_version_reports,
            unreachable_ecus: BTreeMap::new(),
        })
    }

    /// Signs the manifest with the Primary's key.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, CanonicalError> {
        sign::sign(self, &[key])
    }

    /// The embedded report of `serial`, as bytes to verify against that ECU's key.
    pub fn report(&self, serial: &EcuSerial) -> Option<Raw<EcuVersionReport>> {
        self.ecu_version_reports
            .get(serial)
            .map(|text| carried(text))
    }

    /// Every embedded report with its serial, each as bytes to verify against that ECU's key.
    pub fn reports(&self) -> impl Iterator<Item = (&EcuSerial, Raw<EcuVersionReport>)> {
        self.ecu_version_reports
            .iter()
            .map(|(serial, text)| (serial, carried(text)))
    }
}

/// A report's bytes as the manifest carried them.
fn carried(text: &RawValue) -> Raw<EcuVersionReport> {
    Raw::new(text.get().as_bytes().to_vec())
}

/// Verifies a vehicle version manifest against the Primary's key. The embedded reports are
/// checked separately, each against its ECU's key ([`VehicleVersionManifest::report`]).
pub fn verify_vehicle_manifest(
    raw: &Raw<VehicleVersionManifest>,
    primary_key: &PublicKey,
) -> Result<Verified<VehicleVersionManifest>, VerifyError> {
    verify_signed_by(raw, primary_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::standard_hashes;

    fn report(serial: &str, counter: u64) -> EcuVersionReport {
        EcuVersionReport {
            report_type: ECU_REPORT_TYPE.into(),
            ecu_serial: EcuSerial::new(serial).unwrap(),
            installed_image: InstalledImage {
                filename: "fw.bin".into(),
                length: 3,
                hashes: standard_hashes(b"abc"),
                release_counter: 1,
            },
            attacks_detected: vec![DetectedAttack {
                kind: AttackKind::Rollback,
                detail: "targets version 2 < 3".into(),
            }],
            latest_time: crate::time::parse_expires("2030-01-01T00:00:00Z").unwrap(),
            nonce: "n1".into(),
            report_counter: counter,
            last_install: None,
        }
    }

    #[test]
    fn report_round_trips_and_rejects_other_keys() {
        let ecu = SigningKey::from_seed([1; 32]);
        let other = SigningKey::from_seed([2; 32]);
        let bytes = report("ecu1", 5).sign(&ecu).unwrap();
        let verified = verify_ecu_report(&Raw::new(bytes.clone()), ecu.public_key()).unwrap();
        assert_eq!(verified.report_counter, 5);
        assert!(matches!(
            verify_ecu_report(&Raw::new(bytes), other.public_key()),
            Err(VerifyError::Threshold { .. })
        ));
    }

    #[test]
    fn forged_report_fields_fail() {
        let ecu = SigningKey::from_seed([1; 32]);
        let bytes = report("ecu1", 5).sign(&ecu).unwrap();
        let forged = String::from_utf8(bytes)
            .unwrap()
            .replace("fw.bin", "evil.bin");
        assert!(matches!(
            verify_ecu_report(&Raw::new(forged.into_bytes()), ecu.public_key()),
            Err(VerifyError::Threshold { .. })
        ));
    }

    /// Vehicle `VIN1`'s manifest from Primary `primary` carrying `report` from `ecu1`,
    /// signed by `key`.
    fn manifest_carrying(report: Vec<u8>, key: &SigningKey) -> Result<Vec<u8>, CanonicalError> {
        let reports = BTreeMap::from([(EcuSerial::new("ecu1").unwrap(), report)]);
        VehicleVersionManifest::new(
            &Vin::new("VIN1").unwrap(),
            &EcuSerial::new("primary").unwrap(),
            &reports,
        )
        .unwrap()
        .sign(key)
    }

    #[test]
    fn manifest_embeds_reports_that_still_verify() {
        let primary = SigningKey::from_seed([3; 32]);
        let ecu = SigningKey::from_seed([4; 32]);
        let ecu1 = EcuSerial::new("ecu1").unwrap();
        let bytes = manifest_carrying(report("ecu1", 1).sign(&ecu).unwrap(), &primary).unwrap();
        let verified = verify_vehicle_manifest(&Raw::new(bytes), primary.public_key()).unwrap();
        let embedded = verified.report(&ecu1).unwrap();
        verify_ecu_report(&embedded, ecu.public_key()).unwrap();
    }

    /// The report's check reads the text the manifest carries: any JSON text of the report
    /// the ECU signed verifies (whitespace, key order and escapes are the canonical form's
    /// business), and a forged one does not.
    #[test]
    fn a_report_carried_as_other_json_text_still_verifies_and_a_forged_one_does_not() {
        let primary = SigningKey::from_seed([3; 32]);
        let ecu = SigningKey::from_seed([4; 32]);
        let ecu1 = EcuSerial::new("ecu1").unwrap();
        let signed: serde_json::Value =
            serde_json::from_slice(&report("ecu1", 1).sign(&ecu).unwrap()).unwrap();
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap();
        // `signed` before `signatures`, indented, and the image's name partly escaped.
        let text = format!(
            "{{\n  \"signed\" : {},\n  \"signatures\": {}\n}}",
            pretty(&signed["signed"]),
            pretty(&signed["signatures"])
        )
        .replace("\"fw.bin\"", "\"\\u0066w.bin\"");
        assert!(text.contains("\\u0066w.bin") && text.contains("\n    \""));
        // A manifest the Primary signed (over the canonical form) that carries `text` as is.
        let carry = |text: &str| {
            let signed = manifest_carrying(text.as_bytes().to_vec(), &primary).unwrap();
            let canonical = crate::cjson::canonicalize_json_text(text.as_bytes()).unwrap();
            let carried = String::from_utf8(signed)
                .unwrap()
                .replace(std::str::from_utf8(&canonical).unwrap(), text);
            assert!(carried.contains(text));
            let verified =
                verify_vehicle_manifest(&Raw::new(carried.into_bytes()), primary.public_key())
                    .unwrap();
            let embedded = verified.report(&ecu1).unwrap();
            assert_eq!(embedded.as_bytes(), text.as_bytes(), "carried as it came");
            verify_ecu_report(&embedded, ecu.public_key())
        };
        let verified = carry(&text).unwrap();
        assert_eq!(verified.installed_image.filename, "fw.bin");
        assert!(matches!(
            carry(&text.replace("\\u0066w.bin", "\\u0067w.bin")),
            Err(VerifyError::Threshold { .. })
        ));
    }

    /// The deepest report a manifest carries is the deepest `check_carriable` accepts: a
    /// field of `levels` nested arrays in the report's `signed` object.
    #[test]
    fn a_report_is_carriable_exactly_when_a_manifest_carrying_it_signs_and_verifies() {
        let primary = SigningKey::from_seed([3; 32]);
        let ecu = SigningKey::from_seed([4; 32]);
        for (levels, carriable) in [(125, true), (126, false), (128, false)] {
            let bytes = crate::testing::nested_report(&report("ecu1", 1), levels, &ecu);
            verify_ecu_report(&Raw::new(bytes.clone()), ecu.public_key())
                .expect("the report verifies on its own");
            assert_eq!(check_carriable(&bytes).is_ok(), carriable, "{levels}");
            let manifest = manifest_carrying(bytes, &primary);
            assert_eq!(manifest.is_ok(), carriable, "{levels}");
            if let Ok(manifest) = manifest {
                verify_vehicle_manifest(&Raw::new(manifest), primary.public_key()).unwrap();
            }
        }
    }

    #[test]
    fn a_report_is_not_a_manifest() {
        let key = SigningKey::from_seed([3; 32]);
        let bytes = report("primary", 1).sign(&key).unwrap();
        assert!(matches!(
            verify_vehicle_manifest(&Raw::new(bytes), key.public_key()),
            Err(VerifyError::WrongType { .. })
        ));
    }

    #[test]
    fn attack_details_are_cut_and_hold_no_control_characters() {
        let short = DetectedAttack::new(AttackKind::Replay, "nonce \"a\u{0}b\"\n");
        assert_eq!(short.detail, "nonce \"a\u{FFFD}b\"\u{FFFD}");
        // A multi-byte character across the cut is not split.
        let long = format!(
            "{}é{}",
            "x".repeat(MAX_ATTACK_DETAIL_BYTES - 1),
            "y".repeat(4 << 20)
        );
        let cut = DetectedAttack::new(AttackKind::EndlessData, &long);
        let note = format!("… ({} bytes, cut)", long.len());
        assert_eq!(
            cut.detail,
            format!("{}{note}", "x".repeat(MAX_ATTACK_DETAIL_BYTES - note.len()))
        );
        // A NUL takes three bytes once replaced: the bound holds all the same.
        let nuls =
            DetectedAttack::new(AttackKind::Replay, &"\u{0}".repeat(MAX_ATTACK_DETAIL_BYTES));
        assert!(
            nuls.detail.len() <= MAX_ATTACK_DETAIL_BYTES,
            "{}",
            nuls.detail.len()
        );
        assert_eq!(cut.kind, AttackKind::EndlessData);
    }
}
