//! The Director's checks of a vehicle version manifest against its inventory (Uptane
//! §5.4.2.1, Director §5.3.2.1), pure: the inventory and `now` come in, the verified reports
//! or a refusal naming the attack it stopped come out. Only the question "was this nonce
//! seen before" goes back to the caller's storage.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;

use crate::crypto::PublicKey;
use crate::error::{AttackKind, VerifyError};
use crate::ids::{EcuSerial, Vin};
use crate::time::{UtcTime, format_expires};
use crate::verify::{Raw, Verified};

use super::{EcuVersionReport, VehicleVersionManifest, verify_ecu_report, verify_vehicle_manifest};

/// One ECU as the Director's inventory knows it.
#[derive(Debug, Clone)]
pub struct InventoryEcu {
    /// The key its reports (and, for the Primary, the manifest) must be signed with.
    pub key: PublicKey,
    /// Whether it is the vehicle's Primary.
    pub primary: bool,
    /// The counter of its last accepted report.
    pub last_counter: Option<u64>,
    /// The time its last accepted report stated.
    pub last_time: Option<UtcTime>,
}

/// A report time earlier than the last one its ECU stated: the ECU's trusted time only goes
/// back after an operator's reset, so anything else is a clock tampered with (or a report
/// replayed with a fresh nonce by something holding the ECU's key). Recorded, not refused:
/// an old time puts nothing at risk on the Director's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWentBack {
    /// The ECU.
    pub ecu: EcuSerial,
    /// The time the report states.
    pub time: UtcTime,
    /// The time its last accepted report stated.
    pub last: UtcTime,
}

impl std::fmt::Display for TimeWentBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ECU {} report time {} is earlier than its last report's {}",
            self.ecu,
            format_expires(&self.time),
            format_expires(&self.last)
        )
    }
}

/// A vehicle as the Director's inventory knows it.
#[derive(Debug, Clone)]
pub struct VehicleInventory {
    /// The vehicle.
    pub vin: Vin,
    /// Its ECUs.
    pub ecus: BTreeMap<EcuSerial, InventoryEcu>,
}

/// What a manifest that passed every check holds.
#[derive(Debug)]
pub struct CheckedManifest {
    /// The manifest.
    pub manifest: Verified<VehicleVersionManifest>,
    /// Every ECU report, verified against its ECU's key.
    pub reports: Vec<Verified<EcuVersionReport>>,
    /// ECUs the Primary declared unreachable, with why.
    pub unreachable: BTreeMap<EcuSerial, String>,
    /// Reports whose time went back.
    pub times_went_back: Vec<TimeWentBack>,
}

/// Why a vehicle version manifest was refused; each names the attack it stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The inventory has no Primary for this vehicle (nothing can sign its manifests).
    #[error("vehicle {0} has no Primary in the inventory")]
    NoPrimary(Vin),
    /// The manifest is not signed by the Primary's registered key, or not a manifest.
    #[error("vehicle manifest: {0}")]
    Signature(VerifyError),
    /// The manifest names another vehicle.
    #[error("manifest is for vehicle {found}, not {expected}")]
    WrongVehicle {
        /// This vehicle.
        expected: Vin,
        /// The one named.
        found: Vin,
    },
    /// The manifest names a Primary other than the registered one.
    #[error("manifest names Primary {found}, the inventory has {expected}")]
    WrongPrimary {
        /// The registered Primary.
        expected: EcuSerial,
        /// The one named.
        found: EcuSerial,
    },
    /// A report or an unreachable entry for an ECU not in this vehicle.
    #[error("unknown ECU {0}")]
    UnknownEcu(EcuSerial),
    /// An ECU both reported and declared unreachable, or the Primary declared unreachable.
    #[error("ECU {0} is both reported and declared unreachable")]
    ReportedAndUnreachable(EcuSerial),
    /// An ECU of the vehicle neither reported nor declared unreachable.
    #[error("no version report from ECU {0}")]
    MissingReport(EcuSerial),
    /// A report not signed by its ECU's registered key, or not a report.
    #[error("ECU {ecu} report: {source}")]
    ReportSignature {
        /// The ECU.
        ecu: EcuSerial,
        /// Why.
        source: VerifyError,
    },
    /// A report filed under one ECU and signed for another.
    #[error("report under {under} is signed for ECU {signed_for}")]
    ReportForAnotherEcu {
        /// The serial it is filed under.
        under: EcuSerial,
        /// The serial it names.
        signed_for: EcuSerial,
    },
    /// A report holding what the Director cannot keep as it is: a nonce over
    /// [`MAX_NONCE_BYTES`] or with a control character, a filename with a control character,
    /// a number above a signed 64-bit column's range. Kept, such a value would fail every
    /// later read of the vehicle's row (or, on one database engine only, the write).
    #[error("ECU {ecu} report: {what}")]
    Unstorable {
        /// The ECU.
        ecu: EcuSerial,
        /// What is wrong.
        what: &'static str,
    },
    /// A nonce already seen (or empty): the report is a replay (Uptane §5.4.2.1.2).
    #[error("ECU {ecu} report replays nonce {nonce:?}")]
    NonceReplayed {
        /// The ECU.
        ecu: EcuSerial,
        /// The nonce.
        nonce: String,
    },
    /// A report counter not above the last accepted one.
    #[error("ECU {ecu} report counter {counter} is not above {last}")]
    CounterRolledBack {
        /// The ECU.
        ecu: EcuSerial,
        /// The counter in the report.
        counter: u64,
        /// The last accepted counter.
        last: u64,
    },
    /// A report dated later than `now` plus the allowed clock skew.
    #[error("ECU {ecu} report time {} is in the future", format_expires(.time))]
    TimeInFuture {
        /// The ECU.
        ecu: EcuSerial,
        /// The time it states.
        time: UtcTime,
    },
}

impl ManifestError {
    /// The attack this refusal stopped.
    pub fn attack(&self) -> AttackKind {
        match self {
            ManifestError::NoPrimary(_)
            | ManifestError::Unstorable { .. }
            | ManifestError::ReportedAndUnreachable(_)
            | ManifestError::MissingReport(_) => AttackKind::Malformed,
            ManifestError::Signature(e) | ManifestError::ReportSignature { source: e, .. } => {
                e.attack()
            }
            ManifestError::WrongVehicle { .. } => AttackKind::WrongVehicle,
            ManifestError::WrongPrimary { .. } | ManifestError::UnknownEcu(_) => {
                AttackKind::UnknownEcu
            }
            ManifestError::ReportForAnotherEcu { .. } => AttackKind::ArbitrarySoftware,
            ManifestError::NonceReplayed { .. } => AttackKind::Replay,
            ManifestError::CounterRolledBack { .. } => AttackKind::Rollback,
            ManifestError::TimeInFuture { .. } => AttackKind::TimeTampering,
        }
    }

    /// The ECU the refusal is about, if one.
    pub fn ecu(&self) -> Option<&EcuSerial> {
        match self {
            ManifestError::WrongPrimary { found: ecu, .. }
            | ManifestError::UnknownEcu(ecu)
            | ManifestError::ReportedAndUnreachable(ecu)
            | ManifestError::MissingReport(ecu)
            | ManifestError::ReportSignature { ecu, .. }
            | ManifestError::ReportForAnotherEcu { under: ecu, .. }
            | ManifestError::Unstorable { ecu, .. }
            | ManifestError::NonceReplayed { ecu, .. }
            | ManifestError::CounterRolledBack { ecu, .. }
            | ManifestError::TimeInFuture { ecu, .. } => Some(ecu),
            ManifestError::NoPrimary(_)
            | ManifestError::Signature(_)
            | ManifestError::WrongVehicle { .. } => None,
        }
    }
}

/// Longest report nonce accepted, in bytes (the Primary makes them; a Secondary asked for a
/// report refuses a longer one too).
pub const MAX_NONCE_BYTES: usize = 128;

/// Whether the Director can keep `report` as it stands ([`ManifestError::Unstorable`]); a
/// Primary applies the same rule to each report before it puts it in its manifest.
pub fn check_storable(report: &EcuVersionReport) -> Result<(), &'static str> {
    let signed = |n: u64| i64::try_from(n).is_ok();
    if report.nonce.len() > MAX_NONCE_BYTES {
        return Err("nonce longer than 128 bytes");
    }
    if report.nonce.chars().any(char::is_control) {
        return Err("nonce holds a control character");
    }
    if report
        .installed_image
        .filename
        .chars()
        .any(char::is_control)
    {
        return Err("installed filename holds a control character");
    }
    if !signed(report.report_counter) {
        return Err("report counter above 2^63 - 1");
    }
    if !signed(report.installed_image.length) {
        return Err("installed length above 2^63 - 1");
    }
    if !signed(report.installed_image.release_counter) {
        return Err("installed release counter above 2^63 - 1");
    }
    Ok(())
}

/// Checks a vehicle version manifest (`bytes` as received) against `inventory` at `now`:
/// the Primary's signature against its registered key, the VIN and Primary it names, every
/// inventory ECU either reported or declared unreachable and no other, every report signed
/// by its ECU's key and for that ECU, every nonce unseen and every counter above the last,
/// no report time beyond `now + clock_skew`; report times earlier than the ECU's last are
/// named in [`CheckedManifest::times_went_back`].
///
/// `nonce_seen(ecu, nonce)` asks the caller's storage whether a nonce was accepted before;
/// its error is returned as the outer `Err`, a refusal as the inner one.
pub fn check_vehicle_manifest<E>(
    bytes: &[u8],
    inventory: &VehicleInventory,
    now: UtcTime,
    clock_skew: Duration,
    mut nonce_seen: impl FnMut(&EcuSerial, &str) -> Result<bool, E>,
) -> Result<Result<CheckedManifest, ManifestError>, E> {
    let refused = |e: ManifestError| Ok(Err(e));
    let Some((primary_serial, primary)) = inventory.ecus.iter().find(|(_, e)| e.primary) else {
        return refused(ManifestError::NoPrimary(inventory.vin.clone()));
    };
    let manifest = match verify_vehicle_manifest(&Raw::new(bytes.to_vec()), &primary.key) {
        Ok(m) => m,
        Err(e) => return refused(ManifestError::Signature(e)),
    };
    if manifest.vin != inventory.vin {
        return refused(ManifestError::WrongVehicle {
            expected: inventory.vin.clone(),
            found: manifest.vin.clone(),
        });
    }
    if &manifest.primary_ecu_serial != primary_serial {
        return refused(ManifestError::WrongPrimary {
            expected: primary_serial.clone(),
            found: manifest.primary_ecu_serial.clone(),
        });
    }
    for serial in manifest.unreachable_ecus.keys() {
        if !inventory.ecus.contains_key(serial) {
            return refused(ManifestError::UnknownEcu(serial.clone()));
        }
        if serial == primary_serial || manifest.ecu_version_reports.contains_key(serial) {
            return refused(ManifestError::ReportedAndUnreachable(serial.clone()));
        }
    }
    for serial in inventory.ecus.keys() {
        if !manifest.ecu_version_reports.contains_key(serial)
            && !manifest.unreachable_ecus.contains_key(serial)
        {
            return refused(ManifestError::MissingReport(serial.clone()));
        }
    }
    let mut reports = Vec::new();
    let mut times_went_back = Vec::new();
    let mut nonces = BTreeSet::new();
    for (serial, raw) in manifest.reports() {
        let Some(ecu) = inventory.ecus.get(serial) else {
            return refused(ManifestError::UnknownEcu(serial.clone()));
        };
        let report = match verify_ecu_report(&raw, &ecu.key) {
            Ok(r) => r,
            Err(source) => {
                return refused(ManifestError::ReportSignature {
                    ecu: serial.clone(),
                    source,
                });
            }
        };
        if &report.ecu_serial != serial {
            return refused(ManifestError::ReportForAnotherEcu {
                under: serial.clone(),
                signed_for: report.ecu_serial.clone(),
            });
        }
        if let Err(what) = check_storable(&report) {
            return refused(ManifestError::Unstorable {
                ecu: serial.clone(),
                what,
            });
        }
        let fresh = !report.nonce.is_empty()
            && nonces.insert((serial.clone(), report.nonce.clone()))
            && !nonce_seen(serial, &report.nonce)?;
        if !fresh {
            return refused(ManifestError::NonceReplayed {
                ecu: serial.clone(),
                nonce: report.nonce.clone(),
            });
        }
        if let Some(last) = ecu.last_counter
            && report.report_counter <= last
        {
            return refused(ManifestError::CounterRolledBack {
                ecu: serial.clone(),
                counter: report.report_counter,
                last,
            });
        }
        if report.latest_time > now + clock_skew {
            return refused(ManifestError::TimeInFuture {
                ecu: serial.clone(),
                time: report.latest_time,
            });
        }
        if let Some(last) = ecu.last_time
            && report.latest_time < last
        {
            times_went_back.push(TimeWentBack {
                ecu: serial.clone(),
                time: report.latest_time,
                last,
            });
        }
        reports.push(report);
    }
    let unreachable = manifest.unreachable_ecus.clone();
    Ok(Ok(CheckedManifest {
        manifest,
        reports,
        unreachable,
        times_went_back,
    }))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::crypto::SigningKey;
    use crate::hash::standard_hashes;
    use crate::manifest::{ECU_REPORT_TYPE, InstalledImage};
    use crate::testing::{key, now};

    fn serial(s: &str) -> EcuSerial {
        EcuSerial::new(s).unwrap()
    }

    fn vin() -> Vin {
        Vin::new("VIN1").unwrap()
    }

    fn report(ecu: &str, nonce: &str, counter: u64, time: UtcTime) -> EcuVersionReport {
        EcuVersionReport {
            report_type: ECU_REPORT_TYPE.into(),
            ecu_serial: serial(ecu),
            installed_image: InstalledImage {
                filename: "fw.bin".into(),
                length: 3,
                hashes: standard_hashes(b"abc"),
                release_counter: 1,
            },
            attacks_detected: vec![],
            latest_time: time,
            nonce: nonce.into(),
            report_counter: counter,
            last_install: None,
        }
    }

    fn inventory() -> VehicleInventory {
        let ecu = |k: u8, primary| InventoryEcu {
            key: key(k).public_key().clone(),
            primary,
            last_counter: Some(5),
            last_time: None,
        };
        VehicleInventory {
            vin: vin(),
            ecus: BTreeMap::from([
                (serial("gw"), ecu(1, true)),
                (serial("ecu1"), ecu(2, false)),
            ]),
        }
    }

    /// A manifest signed by `primary_key`, with reports from `reports` (serial, key, report).
    fn manifest(
        primary_key: &SigningKey,
        edit: impl FnOnce(&mut VehicleVersionManifest),
        reports: &[(&str, &SigningKey, EcuVersionReport)],
    ) -> Vec<u8> {
        let signed = reports
            .iter()
            .map(|(s, k, r)| (serial(s), r.sign(k).unwrap()))
            .collect();
        let mut m = VehicleVersionManifest::new(&vin(), &serial("gw"), &signed).unwrap();
        edit(&mut m);
        m.sign(primary_key).unwrap()
    }

    fn good_reports() -> Vec<(&'static str, SigningKey, EcuVersionReport)> {
        vec![
            ("gw", key(1), report("gw", "n1", 6, now())),
            ("ecu1", key(2), report("ecu1", "n2", 6, now())),
        ]
    }

    fn check(bytes: &[u8]) -> Result<CheckedManifest, ManifestError> {
        let seen = |_: &EcuSerial, nonce: &str| Ok::<_, Infallible>(nonce == "old");
        match check_vehicle_manifest(bytes, &inventory(), now(), Duration::minutes(5), seen) {
            Ok(result) => result,
            Err(never) => match never {},
        }
    }

    fn with(edit: impl FnOnce(&mut Vec<(&'static str, SigningKey, EcuVersionReport)>)) -> Vec<u8> {
        let mut reports = good_reports();
        edit(&mut reports);
        let refs: Vec<(&str, &SigningKey, EcuVersionReport)> =
            reports.iter().map(|(s, k, r)| (*s, k, r.clone())).collect();
        manifest(&key(1), |_| {}, &refs)
    }

    #[test]
    fn accepts_a_manifest_that_passes_every_check() {
        let checked = check(&with(|_| {})).unwrap();
        assert_eq!(checked.reports.len(), 2);
        assert!(checked.times_went_back.is_empty());
    }

    #[test]
    fn a_report_time_earlier_than_the_last_is_named_not_refused() {
        let mut inventory = inventory();
        let last = now() + Duration::minutes(1);
        inventory.ecus.get_mut(&serial("ecu1")).unwrap().last_time = Some(last);
        let bytes = with(|_| {});
        let seen = |_: &EcuSerial, _: &str| Ok::<_, Infallible>(false);
        let checked = check_vehicle_manifest(&bytes, &inventory, now(), Duration::minutes(5), seen)
            .unwrap()
            .unwrap();
        assert_eq!(
            checked.times_went_back,
            vec![TimeWentBack {
                ecu: serial("ecu1"),
                time: now(),
                last,
            }]
        );
        assert!(
            checked.times_went_back[0]
                .to_string()
                .contains("is earlier than its last report's"),
        );
    }

    #[test]
    fn each_refusal_names_its_attack() {
        let cases: Vec<(Vec<u8>, AttackKind)> = vec![
            (
                manifest(&key(9), |_| {}, &[]),
                AttackKind::ArbitrarySoftware,
            ),
            (
                manifest(&key(1), |m| m.vin = Vin::new("OTHER").unwrap(), &[]),
                AttackKind::WrongVehicle,
            ),
            (
                manifest(&key(1), |m| m.primary_ecu_serial = serial("ecu1"), &[]),
                AttackKind::UnknownEcu,
            ),
            (with(|r| r[1].2.nonce = "old".into()), AttackKind::Replay),
            (with(|r| r[1].2.nonce = String::new()), AttackKind::Replay),
            (with(|r| r[1].2.report_counter = 5), AttackKind::Rollback),
            (
                with(|r| r[1].2.latest_time = now() + Duration::hours(1)),
                AttackKind::TimeTampering,
            ),
            (with(|r| r[1].1 = key(7)), AttackKind::ArbitrarySoftware),
            (
                with(|r| r[1].2.ecu_serial = serial("gw")),
                AttackKind::ArbitrarySoftware,
            ),
            (
                with(|r| r.push(("stranger", key(3), report("stranger", "n3", 1, now())))),
                AttackKind::UnknownEcu,
            ),
            (with(|r| r.truncate(1)), AttackKind::Malformed),
        ];
        for (bytes, attack) in cases {
            let err = check(&bytes).unwrap_err();
            assert_eq!(err.attack(), attack, "{err}");
        }
    }

    /// What a signed 64-bit column or a PostgreSQL text column cannot hold is refused before
    /// it is kept (one ECU's key must not make its vehicle's rows unreadable).
    #[test]
    fn values_the_director_cannot_keep_are_refused() {
        let big = 1u64 << 63;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                with(|r| r[1].2.nonce = "n".repeat(MAX_NONCE_BYTES + 1)),
                "nonce longer than 128 bytes",
            ),
            (
                with(|r| r[1].2.nonce = "a\u{0}b".into()),
                "nonce holds a control character",
            ),
            (
                with(|r| r[1].2.installed_image.filename = "fw\u{0}.bin".into()),
                "installed filename holds a control character",
            ),
            (
                with(|r| r[1].2.report_counter = big),
                "report counter above 2^63 - 1",
            ),
            (
                with(|r| r[1].2.installed_image.length = big),
                "installed length above 2^63 - 1",
            ),
            (
                with(|r| r[1].2.installed_image.release_counter = big),
                "installed release counter above 2^63 - 1",
            ),
        ];
        for (bytes, expected) in cases {
            let err = check(&bytes).unwrap_err();
            assert!(
                matches!(err, ManifestError::Unstorable { what, .. } if what == expected),
                "{err}"
            );
            assert_eq!(err.attack(), AttackKind::Malformed);
        }
        // At the bounds, accepted.
        check(&with(|r| {
            r[1].2.nonce = "n".repeat(MAX_NONCE_BYTES);
            r[1].2.report_counter = i64::MAX as u64;
            r[1].2.installed_image.release_counter = i64::MAX as u64;
        }))
        .unwrap();
    }

    #[test]
    fn unreachable_ecus_must_be_known_and_not_also_reported() {
        let reports = good_reports();
        let gw: Vec<_> = reports[..1]
            .iter()
            .map(|(s, k, r)| (*s, k, r.clone()))
            .collect();
        let declared = manifest(
            &key(1),
            |m| {
                m.unreachable_ecus.insert(serial("ecu1"), "offline".into());
            },
            &gw,
        );
        assert_eq!(check(&declared).unwrap().unreachable.len(), 1);
        let all: Vec<_> = reports.iter().map(|(s, k, r)| (*s, k, r.clone())).collect();
        let both = manifest(
            &key(1),
            |m| {
                m.unreachable_ecus.insert(serial("ecu1"), "offline".into());
            },
            &all,
        );
        assert_eq!(
            check(&both).unwrap_err(),
            ManifestError::ReportedAndUnreachable(serial("ecu1"))
        );
        let stranger = manifest(
            &key(1),
            |m| {
                m.unreachable_ecus
                    .insert(serial("nobody"), "offline".into());
            },
            &all,
        );
        assert_eq!(
            check(&stranger).unwrap_err(),
            ManifestError::UnknownEcu(serial("nobody"))
        );
    }

    #[test]
    fn a_storage_failure_is_not_a_refusal() {
        let failed = check_vehicle_manifest(
            &with(|_| {}),
            &inventory(),
            now(),
            Duration::minutes(5),
            |_, _| Err("disk on fire"),
        );
        assert_eq!(failed.unwrap_err(), "disk on fire");
    }
}
