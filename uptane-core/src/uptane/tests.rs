use std::collections::BTreeMap;

use super::*;
use crate::ids::{EcuSerial, HardwareId, Vin};
use crate::refresh::Refresh;
use crate::sign::{RootBuilder, TargetsBuilder, delegated_role, sign_value};
use crate::testing::{RepoFixture, earlier, key, later, now};
use crate::trusted::{Limits, RootChain};
use crate::verify::Raw;

const VIN: &str = "VIN0001";
const IMAGE: &[u8] = b"firmware v2";

fn ecus() -> BTreeMap<EcuSerial, HardwareId> {
    BTreeMap::from([
        (serial("primary"), hw("hw-gw")),
        (serial("ecu1"), hw("hw-1")),
    ])
}

fn vin() -> Vin {
    Vin::new(VIN).unwrap()
}

fn serial(s: &str) -> EcuSerial {
    EcuSerial::new(s).unwrap()
}

fn hw(s: &str) -> HardwareId {
    HardwareId::new(s).unwrap()
}

/// This ECU (ecu1, hw-1, running release counter 1), for partial verification.
struct Me {
    vin: Vin,
    serial: EcuSerial,
    hardware_id: HardwareId,
}

impl Me {
    fn new(serial_text: &str) -> Self {
        Self {
            vin: vin(),
            serial: serial(serial_text),
            hardware_id: hw("hw-1"),
        }
    }

    fn identity(&self) -> EcuIdentity<'_> {
        EcuIdentity {
            vin: &self.vin,
            ecu_serial: &self.serial,
            hardware_id: &self.hardware_id,
            installed_release_counter: 1,
        }
    }
}

/// A Director repository whose targets assign `IMAGE` to ecu1 (with `edit` applied).
fn director(edit: impl FnOnce(TargetsBuilder) -> TargetsBuilder) -> TrustedSet<Director> {
    let mut repo = RepoFixture::new();
    let builder = TargetsBuilder::from_targets(&repo.targets, 0, repo.expires)
        .target(
            "fw.bin",
            IMAGE,
            Some(director_target_custom("ecu1", "hw-1", 2)),
        )
        .custom(director_targets_custom(VIN, "corr-1"));
    repo.targets = edit(builder).build();
    repo.publish();
    let root = Raw::new(repo.initial_root().to_vec());
    let mut refresh = Refresh::<Director>::new(&root, now(), Limits::default()).unwrap();
    refresh.run(&mut repo).unwrap();
    refresh.into_trusted()
}

/// An Image repository listing `IMAGE` as fw.bin with `custom`.
fn image_target(content: &[u8], custom: serde_json::Value) -> TrustedTarget<ImageRepo> {
    let mut repo = RepoFixture::new();
    repo.add_target("fw.bin", content, Some(custom));
    repo.publish();
    let root = Raw::new(repo.initial_root().to_vec());
    let mut refresh = Refresh::<ImageRepo>::new(&root, now(), Limits::default()).unwrap();
    refresh.find("fw.bin");
    refresh.run(&mut repo).unwrap();
    refresh.target("fw.bin").unwrap().clone()
}

fn ok_image() -> TrustedTarget<ImageRepo> {
    image_target(IMAGE, image_target_custom(&["hw-1"], 2))
}

#[test]
fn approves_matching_targets_and_verifies_the_image() {
    let entries = director_targets(&director(|b| b), &vin(), &ecus()).unwrap();
    assert_eq!(entries.len(), 1);
    let approved = approve(&entries[0], &ok_image(), Some(1)).unwrap();
    assert_eq!(approved.ecu_serial(), "ecu1");
    let mut v = approved.verifier().unwrap();
    v.update(&IMAGE[..4]).unwrap();
    v.update(&IMAGE[4..]).unwrap();
    let verified = v.finish().unwrap();
    assert_eq!(verified.approved().filename(), "fw.bin");
}

#[test]
fn rejects_director_delegations() {
    let k = key(70);
    let set = director(|b| {
        b.delegate(
            delegated_role("x", &[k.public_key()], 1, &["*"], false),
            &[k.public_key()],
        )
    });
    assert_eq!(
        director_targets(&set, &vin(), &ecus()),
        Err(UptaneError::DirectorDelegates)
    );
}

#[test]
fn rejects_an_ecu_listed_twice() {
    let set = director(|b| {
        b.target(
            "other.bin",
            b"x",
            Some(director_target_custom("ecu1", "hw-1", 1)),
        )
    });
    assert_eq!(
        director_targets(&set, &vin(), &ecus()),
        Err(UptaneError::DuplicateEcu(serial("ecu1")))
    );
}

#[test]
fn rejects_target_names_with_control_characters_or_two_spellings() {
    for (name, expected) in [
        (
            "fw\u{1b}[2K.bin",
            crate::ids::TargetNameError::Control("fw\u{1b}[2K.bin".into()),
        ),
        (
            "cafe\u{301}.bin",
            crate::ids::TargetNameError::NotNfc("cafe\u{301}.bin".into()),
        ),
        (
            "../fw.bin",
            crate::ids::TargetNameError::Path("../fw.bin".into()),
        ),
    ] {
        let set =
            director(|b| b.target(name, b"x", Some(director_target_custom("ecu2", "hw-2", 1))));
        let err = director_targets(&set, &vin(), &ecus()).unwrap_err();
        assert_eq!(err, UptaneError::BadTargetName(expected), "{name:?}");
        assert_eq!(err.attack(), AttackKind::Malformed);
    }
}

#[test]
fn rejects_an_ecu_not_in_the_vehicle() {
    let set = director(|b| {
        b.target(
            "other.bin",
            b"x",
            Some(director_target_custom("stranger", "hw-1", 1)),
        )
    });
    let err = director_targets(&set, &vin(), &ecus()).unwrap_err();
    assert_eq!(err, UptaneError::UnknownEcu(serial("stranger")));
    assert_eq!(err.attack(), AttackKind::UnknownEcu);
}

#[test]
fn rejects_metadata_for_another_vehicle() {
    let set = director(|b| b.custom(director_targets_custom("OTHERVIN", "c")));
    assert!(matches!(
        director_targets(&set, &vin(), &ecus()),
        Err(UptaneError::WrongVehicle { .. })
    ));
}

#[test]
fn rejects_director_hardware_id_that_is_not_the_ecus() {
    let set = director(|b| {
        b.target(
            "fw.bin",
            IMAGE,
            Some(director_target_custom("ecu1", "hw-9", 2)),
        )
    });
    assert!(matches!(
        director_targets(&set, &vin(), &ecus()),
        Err(UptaneError::WrongHardware { .. })
    ));
}

#[test]
fn rejects_missing_ecu_identifiers() {
    let set = director(|b| b.target("fw.bin", IMAGE, None));
    assert!(matches!(
        director_targets(&set, &vin(), &ecus()),
        Err(UptaneError::BadCustom { .. })
    ));
}

fn entry() -> DirectorTarget {
    director_targets(&director(|b| b), &vin(), &ecus())
        .unwrap()
        .remove(0)
}

#[test]
fn rejects_length_mismatch() {
    let image = image_target(b"firmware v2 but longer", image_target_custom(&["hw-1"], 2));
    assert!(matches!(
        approve(&entry(), &image, None),
        Err(UptaneError::Mismatch {
            field: "length",
            ..
        })
    ));
}

#[test]
fn rejects_hash_mismatch() {
    let image = image_target(b"firmware v3", image_target_custom(&["hw-1"], 2));
    let err = approve(&entry(), &image, None).unwrap_err();
    assert!(matches!(
        err,
        UptaneError::Mismatch {
            field: "hashes",
            ..
        }
    ));
    assert_eq!(err.attack(), AttackKind::RepositoryMismatch);
}

#[test]
fn rejects_hardware_id_the_image_repository_does_not_list() {
    let image = image_target(IMAGE, image_target_custom(&["hw-2"], 2));
    let err = approve(&entry(), &image, None).unwrap_err();
    assert!(matches!(err, UptaneError::WrongHardware { .. }));
    assert_eq!(err.attack(), AttackKind::WrongHardware);
}

#[test]
fn rejects_release_counter_disagreement_and_rollback() {
    let image = image_target(IMAGE, image_target_custom(&["hw-1"], 3));
    assert!(matches!(
        approve(&entry(), &image, None),
        Err(UptaneError::Mismatch {
            field: "releaseCounter",
            ..
        })
    ));
    let err = approve(&entry(), &ok_image(), Some(5)).unwrap_err();
    assert!(matches!(
        err,
        UptaneError::ReleaseCounterRollback {
            installed: 5,
            offered: 2,
            ..
        }
    ));
    assert_eq!(err.attack(), AttackKind::Rollback);
}

#[test]
fn image_verification_stops_at_the_length_and_checks_hashes() {
    let approved = approve(&entry(), &ok_image(), None).unwrap();
    let mut v = approved.verifier().unwrap();
    v.update(IMAGE).unwrap();
    let err = v.update(b"!").unwrap_err();
    assert_eq!(err.attack(), AttackKind::EndlessData);

    let mut v = approved.verifier().unwrap();
    v.update(b"firmware v3").unwrap();
    let err = v.finish().unwrap_err();
    assert!(matches!(
        err,
        UptaneError::Image {
            source: DigestError::HashMismatch { .. },
            ..
        }
    ));
    assert_eq!(err.attack(), AttackKind::ArbitrarySoftware);
}

#[test]
fn a_check_handed_out_is_taken_back_only_for_its_own_image() {
    let approved = approve(&entry(), &ok_image(), None).unwrap();
    let (pending, stream) = approved.verifier().unwrap().into_stream();
    let (mut length, mut digests) = stream.split();
    length.update(IMAGE).unwrap();
    for part in &mut digests {
        part.update(IMAGE).unwrap();
    }
    let stream = StreamVerifier::join(length, digests).unwrap();
    assert_eq!(pending.finish(stream).unwrap().approved(), &approved);

    // A check made for something else (here: no hashes at all) is not accepted in its place.
    let (pending, _) = approved.verifier().unwrap().into_stream();
    let mut empty = StreamVerifier::new(Some(IMAGE.len() as u64), &Hashes::new()).unwrap();
    empty.update(IMAGE).unwrap();
    assert!(matches!(
        pending.finish(empty),
        Err(UptaneError::Image {
            source: DigestError::OtherCheck,
            ..
        })
    ));
}

fn partial_fixture() -> RepoFixture {
    RepoFixture::new()
}

/// Partial verification of `bytes` served as the Director targets.
fn partial(
    repo: &RepoFixture,
    bytes: Vec<u8>,
    previous: Option<u64>,
    limits: Limits,
    ecu: &EcuIdentity<'_>,
) -> Result<Option<ApprovedImage>, UptaneError> {
    let mut repo = repo.clone();
    repo.targets_files.insert("targets".into(), bytes);
    let mut refresh = Refresh::partial(&Raw::new(repo.initial_root().to_vec()), now(), limits)?
        .with_previous_targets_version(previous);
    refresh.run(&mut repo)?;
    verify_partial(refresh.trusted(), ecu)
}

fn director_targets_bytes(
    repo: &RepoFixture,
    version: u64,
    expires: crate::time::UtcTime,
    hw: &str,
    counter: u64,
) -> Vec<u8> {
    TargetsBuilder::new(version, expires)
        .target(
            "fw.bin",
            IMAGE,
            Some(director_target_custom("ecu1", hw, counter)),
        )
        .custom(director_targets_custom(VIN, "c"))
        .sign(&[&repo.targets_key])
        .unwrap()
}

#[test]
fn partial_verification_accepts_its_own_entry() {
    let repo = partial_fixture();
    let bytes = director_targets_bytes(&repo, 3, later(), "hw-1", 2);
    let me = Me::new("ecu1");
    let image = partial(
        &repo,
        bytes.clone(),
        Some(2),
        Limits::default(),
        &me.identity(),
    )
    .unwrap();
    assert_eq!(image.unwrap().release_counter(), 2);
    let other = Me::new("ecu2");
    let other = other.identity();
    assert!(
        partial(&repo, bytes, None, Limits::default(), &other)
            .unwrap()
            .is_none()
    );
}

#[test]
fn partial_verification_refusals() {
    let repo = partial_fixture();
    let good = director_targets_bytes(&repo, 3, later(), "hw-1", 2);
    let wrong_key = {
        let doc: serde_json::Value = serde_json::from_slice(&good).unwrap();
        sign_value(&doc["signed"], &[&key(88)]).unwrap()
    };
    let cases: Vec<(Vec<u8>, Option<u64>, AttackKind)> = vec![
        (wrong_key, None, AttackKind::ArbitrarySoftware),
        (good.clone(), Some(4), AttackKind::Rollback),
        (
            director_targets_bytes(&repo, 3, earlier(), "hw-1", 2),
            None,
            AttackKind::Freeze,
        ),
        (
            director_targets_bytes(&repo, 3, later(), "hw-2", 2),
            None,
            AttackKind::WrongHardware,
        ),
        (
            director_targets_bytes(&repo, 3, later(), "hw-1", 0),
            None,
            AttackKind::Rollback,
        ),
    ];
    for (bytes, previous, attack) in cases {
        let err = partial(
            &repo,
            bytes,
            previous,
            Limits::default(),
            &Me::new("ecu1").identity(),
        )
        .unwrap_err();
        assert_eq!(err.attack(), attack, "{err}");
    }
    let small = Limits {
        targets: 10,
        ..Limits::default()
    };
    let err = partial(&repo, good, None, small, &Me::new("ecu1").identity()).unwrap_err();
    assert_eq!(err.attack(), AttackKind::EndlessData);
}

#[test]
fn director_root_rotation_builder_is_usable_for_partial_ecus() {
    // Partial ECUs take a rotated Director root through the same chain check.
    let repo = partial_fixture();
    let root =
        crate::verify::verify_root_self_signed(&Raw::new(repo.initial_root().to_vec())).unwrap();
    let new = RootBuilder::from_root(&root, 2, later())
        .sign(&[&repo.root_keys[0]])
        .unwrap();
    let mut chain = RootChain::new(&Raw::new(repo.initial_root().to_vec()), 512_000, 1).unwrap();
    chain.apply(&Raw::new(new)).unwrap();
    assert_eq!(chain.trusted().common.version, 2);
}

#[test]
fn refuses_without_director_targets_or_image_target() {
    let repo = RepoFixture::new();
    let set = TrustedSet::<Director>::new(
        &Raw::new(repo.initial_root().to_vec()),
        now(),
        Limits::default(),
    )
    .unwrap();
    assert_eq!(
        director_targets(&set, &vin(), &ecus()),
        Err(UptaneError::NoDirectorTargets)
    );
    let mut other = entry();
    other.path = "other.bin".into();
    assert_eq!(
        approve(&other, &ok_image(), None),
        Err(UptaneError::ImageNotFound("other.bin".into()))
    );
}

#[test]
fn an_approved_image_without_hashes_cannot_be_verified() {
    let repo = partial_fixture();
    let bytes = TargetsBuilder::new(3, later())
        .target_with(
            "fw.bin",
            IMAGE.len() as u64,
            Default::default(),
            Some(director_target_custom("ecu1", "hw-1", 2)),
        )
        .custom(director_targets_custom(VIN, "c"))
        .sign(&[&repo.targets_key])
        .unwrap();
    let image = partial(
        &repo,
        bytes,
        None,
        Limits::default(),
        &Me::new("ecu1").identity(),
    )
    .unwrap()
    .unwrap();
    assert!(matches!(
        image.verifier(),
        Err(UptaneError::Image {
            source: DigestError::NoHashes,
            ..
        })
    ));
}

#[test]
fn an_ecu_finds_only_its_own_director_target() {
    let set = director(|b| {
        b.target(
            "other.bin",
            b"x",
            Some(director_target_custom("someone-else", "hw-9", 1)),
        )
    });
    let mine = director_target_for(&set, &vin(), &serial("ecu1"), &hw("hw-1"))
        .unwrap()
        .unwrap();
    assert_eq!(mine.path, "fw.bin");
    assert_eq!(
        director_target_for(&set, &vin(), &serial("ecu7"), &hw("hw-1")).unwrap(),
        None
    );
    assert!(matches!(
        director_target_for(&set, &vin(), &serial("ecu1"), &hw("hw-2")),
        Err(UptaneError::WrongHardware { .. })
    ));
    assert!(matches!(
        director_target_for(
            &set,
            &Vin::new("OTHER").unwrap(),
            &serial("ecu1"),
            &hw("hw-1")
        ),
        Err(UptaneError::WrongVehicle { .. })
    ));
}

/// Each ECU's update is named by its own entry's correlation id; an ECU with no entry, or an
/// entry without one, by the targets' own.
#[test]
fn an_update_is_named_by_its_own_entry_else_by_the_targets() {
    // Two ECUs share radio.bin, each in an assignment of its own.
    let mut custom = director_target_custom("ecu2", "hw-2", 1);
    custom["correlationId"] = "corr-2".into();
    custom["ecuIdentifiers"]["ecu3"] =
        serde_json::json!({"hardwareId": "hw-2", "correlationId": "corr-3"});
    let set = director(|b| b.target("radio.bin", b"radio", Some(custom)));
    let targets = set.targets().unwrap();
    let mut vehicle = ecus();
    vehicle.insert(serial("ecu2"), hw("hw-2"));
    vehicle.insert(serial("ecu3"), hw("hw-2"));
    let entries = director_targets(&set, &vin(), &vehicle).unwrap();
    let of = |serial: &str| entries.iter().find(|e| e.ecu_serial == serial);
    assert_eq!(update_correlation_id(targets, of("ecu3")), "corr-3");
    assert_eq!(update_correlation_id(targets, of("ecu2")), "corr-2");
    assert_eq!(update_correlation_id(targets, of("ecu1")), "corr-1");
    assert_eq!(update_correlation_id(targets, None), "corr-1");
    let bare = director(|b| b.custom(serde_json::json!({"vin": VIN})));
    assert_eq!(update_correlation_id(bare.targets().unwrap(), None), "");
}
