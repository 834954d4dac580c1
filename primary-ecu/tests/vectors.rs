//! The 86 scenarios of the Uptane test vectors aktualizr is tested against
//! (`advancedtelematic/tuf-test-vectors`, `tuf_vectors/uptane.py`), re-created as fixtures for
//! the Primary's verification: each builds both repositories' metadata with `uptane-core`,
//! serves it over HTTP on 127.0.0.1, and runs the Primary's update cycle (one or two steps)
//! against it. A scenario expects the image to install, or a refusal of a given attack kind.
//!
//! Two adaptations to this system: our Director also serves snapshot and timestamp (signed
//! with its own keys), and a Primary's roots are pinned at provisioning, so a defective root
//! is offered as the next version (`2.root.json`), which is how a pinned client meets one.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use primary_ecu::agent::{CycleReport, EcuOutcome, Primary, Verification};
use primary_ecu::config::{Settings, SettingsArgs};
use primary_ecu::provision::{self, Provisioning, Registration};
use serde_json::{Value, json};
use support::{Reply, Server};
use uptane_core::crypto::SigningKey;
use uptane_core::hash::standard_hashes;
use uptane_core::metadata::MetaFile;
use uptane_core::sign::{
    RootBuilder, SnapshotBuilder, TargetsBuilder, TimestampBuilder, describe, sign_value,
};
use uptane_core::testing::key;
use uptane_core::time::UtcTime;
use uptane_core::uptane::{director_target_custom, director_targets_custom, image_target_custom};

const VIN: &str = "VECTOR-VIN";
const PRIMARY: &str = "PRIMARY-ECU";
const HW: &str = "primary-hw";
const TARGET: &str = "primary.img";
const CONTENT: &[u8] = b"the primary's new firmware image, as both repositories describe it";

fn now() -> UtcTime {
    std::time::SystemTime::now().into()
}

/// Defects of one repository's metadata for one step.
#[derive(Debug, Clone, Default)]
struct Defects {
    /// Roles whose metadata is expired (`root`: the next root version).
    expired: Vec<&'static str>,
    /// Roles whose threshold is zero.
    zero_threshold: Vec<&'static str>,
    /// Roles with a threshold of two and one signature.
    unmet_threshold: Vec<&'static str>,
    /// Roles with a threshold of two and the one signature listed twice.
    duplicate_signatures: Vec<&'static str>,
    /// Roles without signatures.
    unsigned: Vec<&'static str>,
    /// Roles whose authorized key ids are wrong.
    bad_keyids: Vec<&'static str>,
    /// Roles whose `_type` is not theirs.
    wrong_type: Vec<&'static str>,
    /// Target entry: other hashes.
    bad_hash: bool,
    /// Target entry: one byte shorter than the image.
    short_length: bool,
    /// Target entry: another hardware id.
    bad_hardware: bool,
    /// Director target entry: an ECU not in the vehicle.
    bad_ecu: bool,
    /// Director targets: a delegation.
    delegates: bool,
    /// Director targets: two targets for one ECU.
    same_ecu_twice: bool,
    /// Snapshot names targets version 2, the file is version 1.
    snapshot_targets_version_mismatch: bool,
    /// Targets too large for the Primary's limit (the snapshot lists no length).
    too_large: bool,
}

/// The Image repository's delegation, if any.
#[derive(Debug, Clone, Default)]
struct Delegation {
    /// The role's metadata defects (`delegation` role in [`Defects`] terms).
    defects: Defects,
    /// Paths it may sign for.
    paths: Vec<&'static str>,
    /// Its key is missing from the delegator's keys.
    key_missing: bool,
    /// Its metadata is not served.
    missing: bool,
    /// It does not list the target.
    empty: bool,
    /// The snapshot does not list it.
    snapshot_missing: bool,
    /// The snapshot names version 2, the file is version 1.
    snapshot_version_mismatch: bool,
    /// Two keys, both sign, threshold two.
    two_signatures: bool,
    /// The top-level targets list the target too (and the delegation is left unsigned).
    redundant: bool,
}

/// Root rotation in the second step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rotation {
    /// None.
    None,
    /// Version 2, signed by the old and new keys.
    To2,
    /// Versions 2 and 3.
    To3,
    /// Version 2 signed by the new keys only.
    NoOriginal,
    /// Version 2 signed by the old keys only.
    NoNew,
    /// `2.root.json` holds version 1.
    VersionUnchanged,
    /// `2.root.json` holds version 3.
    VersionSkip,
    /// Other content at the same versions.
    SameVersionChanged,
}

#[derive(Debug, Clone)]
struct Vector {
    name: &'static str,
    director: Defects,
    image: Defects,
    delegation: Option<Delegation>,
    director_rotation: Rotation,
    image_rotation: Rotation,
    /// `None`: the image installs; `Some(kind)`: refused as that attack.
    refused: Option<&'static str>,
}

fn vector(name: &'static str, refused: Option<&'static str>) -> Vector {
    Vector {
        name,
        director: Defects::default(),
        image: Defects::default(),
        delegation: None,
        director_rotation: Rotation::None,
        image_rotation: Rotation::None,
        refused,
    }
}

/// Keys of one repository.
struct RepoKeys {
    root: SigningKey,
    new_root: SigningKey,
    targets: SigningKey,
    snapshot: SigningKey,
    timestamp: SigningKey,
    extra: SigningKey,
}

fn repo_keys(base: u8) -> RepoKeys {
    RepoKeys {
        root: key(base),
        new_root: key(base + 1),
        targets: key(base + 2),
        snapshot: key(base + 3),
        timestamp: key(base + 4),
        extra: key(base + 5),
    }
}

fn finish(signed: &Value, keys: &[&SigningKey], role: &str, defects: &Defects) -> Vec<u8> {
    let mut signed = signed.clone();
    if defects.wrong_type.contains(&role) {
        let t = signed["_type"].as_str().unwrap_or_default();
        let mut capitalized = t.to_string();
        capitalized[..1].make_ascii_uppercase();
        signed["_type"] = Value::from(capitalized);
    }
    if defects.expired.contains(&role) {
        signed["expires"] = Value::from("2001-01-01T00:00:00Z");
    }
    let bytes = sign_value(&signed, keys).unwrap();
    let mut doc: Value = serde_json::from_slice(&bytes).unwrap();
    if defects.unsigned.contains(&role) {
        doc["signatures"] = json!([]);
    } else if defects.duplicate_signatures.contains(&role) {
        let first = doc["signatures"][0].clone();
        doc["signatures"].as_array_mut().unwrap().push(first);
    } else {
        return bytes;
    }
    serde_json::to_vec(&doc).unwrap()
}

/// Applies the threshold and key id defects of `role` to a root document.
fn root_role_defects(root: &mut Value, role: &str, defects: &Defects, extra: &SigningKey) {
    let entry = &mut root["roles"][role];
    if defects.zero_threshold.contains(&role) {
        entry["threshold"] = json!(0);
    }
    if defects.unmet_threshold.contains(&role) || defects.duplicate_signatures.contains(&role) {
        entry["threshold"] = json!(2);
        let extra_id = extra.key_id().as_str().to_string();
        entry["keyids"]
            .as_array_mut()
            .unwrap()
            .push(Value::from(extra_id.clone()));
        root["keys"][extra_id] = extra.public_key().to_json().clone();
    }
    if defects.bad_keyids.contains(&role) {
        root["roles"][role]["keyids"] = json!(["0".repeat(64)]);
    }
}

fn root_value(keys: &RepoKeys, root_key: &SigningKey, version: u64) -> Value {
    let root = RootBuilder::new(version, now() + chrono::Duration::days(30))
        .key("root", root_key.public_key())
        .key("targets", keys.targets.public_key())
        .key("snapshot", keys.snapshot.public_key())
        .key("timestamp", keys.timestamp.public_key())
        .build();
    serde_json::to_value(root).unwrap()
}

/// One repository's files for one step: path (relative to its metadata URL) to bytes.
#[derive(Debug, Default)]
struct Published {
    metadata: Vec<(String, Vec<u8>)>,
    initial_root: Vec<u8>,
}

struct Entry {
    name: &'static str,
    content: Vec<u8>,
    counter: u64,
}

fn entry_value(entry: &Entry, director: bool, defects: &Defects) -> Value {
    let hardware = if defects.bad_hardware { "wrong-hw" } else { HW };
    let ecu = if defects.bad_ecu {
        "UNKNOWN-ECU"
    } else {
        PRIMARY
    };
    let custom = if director {
        director_target_custom(ecu, hardware, entry.counter)
    } else {
        image_target_custom(&[hardware], entry.counter)
    };
    let hashes = if defects.bad_hash {
        standard_hashes(b"some other image")
    } else {
        standard_hashes(&entry.content)
    };
    let length = entry.content.len() as u64 - u64::from(defects.short_length);
    json!({"length": length, "hashes": hashes, "custom": custom})
}

/// Builds a repository's metadata for one step.
#[allow(clippy::too_many_arguments)]
fn publish_repo(
    keys: &RepoKeys,
    director: bool,
    defects: &Defects,
    delegation: Option<&Delegation>,
    rotation: Rotation,
    step: usize,
    entries: &[Entry],
    delegation_keys: (&SigningKey, &SigningKey),
) -> Published {
    let mut out = Published::default();
    // Root version 1 is pinned at provisioning and clean; a defective root, or a root whose
    // entries for other roles are defective, is offered as version 2.
    let clean = Defects::default();
    let root1 = root_value(keys, &keys.root, 1);
    out.initial_root = finish(&root1, &[&keys.root], "root", &clean);
    out.metadata
        .push(("1.root.json".into(), out.initial_root.clone()));
    let roles = ["root", "targets", "snapshot", "timestamp"];
    let root_defective = roles.iter().any(|role| {
        defects.zero_threshold.contains(role)
            || defects.unmet_threshold.contains(role)
            || defects.duplicate_signatures.contains(role)
            || defects.bad_keyids.contains(role)
    }) || [&defects.expired, &defects.unsigned, &defects.wrong_type]
        .iter()
        .any(|list| list.contains(&"root"));
    if root_defective {
        let mut root2 = root_value(keys, &keys.root, 2);
        for role in roles {
            root_role_defects(&mut root2, role, defects, &keys.extra);
        }
        out.metadata.push((
            "2.root.json".into(),
            finish(&root2, &[&keys.root], "root", defects),
        ));
    }
    if step == 1 {
        let v2 = |root_key: &SigningKey, version: u64| root_value(keys, root_key, version);
        let both = [&keys.root, &keys.new_root];
        match rotation {
            Rotation::None => {}
            Rotation::To2 => out.metadata.push((
                "2.root.json".into(),
                finish(&v2(&keys.new_root, 2), &both, "root", &clean),
            )),
            Rotation::To3 => {
                out.metadata.push((
                    "2.root.json".into(),
                    finish(&v2(&keys.new_root, 2), &both, "root", &clean),
                ));
                out.metadata.push((
                    "3.root.json".into(),
                    finish(&v2(&keys.root, 3), &both, "root", &clean),
                ));
            }
            Rotation::NoOriginal => out.metadata.push((
                "2.root.json".into(),
                finish(&v2(&keys.new_root, 2), &[&keys.new_root], "root", &clean),
            )),
            Rotation::NoNew => out.metadata.push((
                "2.root.json".into(),
                finish(&v2(&keys.new_root, 2), &[&keys.root], "root", &clean),
            )),
            Rotation::VersionUnchanged => out.metadata.push((
                "2.root.json".into(),
                finish(&v2(&keys.new_root, 1), &both, "root", &clean),
            )),
            Rotation::VersionSkip => out.metadata.push((
                "2.root.json".into(),
                finish(&v2(&keys.new_root, 3), &both, "root", &clean),
            )),
            Rotation::SameVersionChanged => {}
        }
    }
    let expires = now() + chrono::Duration::days(30);
    let version = if rotation == Rotation::SameVersionChanged {
        1
    } else {
        step as u64 + 1
    };

    // Targets.
    let mut targets = TargetsBuilder::new(version, expires);
    if director {
        targets = targets.custom(director_targets_custom(VIN, &format!("asg-{step}")));
    }
    if let Some(delegation) = delegation {
        let mut role = uptane_core::sign::delegated_role(
            "delegation",
            &[delegation_keys.0.public_key()],
            1,
            &delegation.paths,
            false,
        );
        if delegation.two_signatures {
            role.keyids.push(delegation_keys.1.key_id());
            role.threshold = 2;
        }
        let mut publics = vec![delegation_keys.0.public_key()];
        if delegation.two_signatures {
            publics.push(delegation_keys.1.public_key());
        }
        targets = targets.delegate(role, &publics);
    }
    if director && defects.delegates {
        targets = targets.delegate(
            uptane_core::sign::delegated_role("sub", &[keys.extra.public_key()], 1, &["*"], false),
            &[keys.extra.public_key()],
        );
    }
    let mut targets = serde_json::to_value(targets.build()).unwrap();
    let top_level_lists = delegation.is_none_or(|d| d.redundant);
    if top_level_lists {
        for entry in entries {
            targets["targets"][entry.name] = entry_value(entry, director, defects);
        }
    }
    if director && defects.same_ecu_twice {
        targets["targets"]["second.img"] = entry_value(
            &Entry {
                name: "second.img",
                content: b"another image".to_vec(),
                counter: 0,
            },
            true,
            defects,
        );
    }
    if defects.too_large {
        for i in 0..2_000 {
            targets["targets"][format!("padding/{i:05}.bin")] = json!({"length": 1, "hashes": standard_hashes(&[i as u8]), "custom": image_target_custom(&["other-hw"], 0)});
        }
    }
    if let Some(delegation) = delegation {
        let entry = &mut targets["delegations"];
        let d = &delegation.defects;
        if d.zero_threshold.contains(&"delegation") {
            entry["roles"][0]["threshold"] = json!(0);
        }
        if d.unmet_threshold.contains(&"delegation")
            || d.duplicate_signatures.contains(&"delegation")
        {
            entry["roles"][0]["threshold"] = json!(2);
            let extra_id = keys.extra.key_id().as_str().to_string();
            entry["roles"][0]["keyids"]
                .as_array_mut()
                .unwrap()
                .push(Value::from(extra_id.clone()));
            entry["keys"][extra_id] = keys.extra.public_key().to_json().clone();
        }
        if d.bad_keyids.contains(&"delegation") {
            entry["roles"][0]["keyids"] = json!(["0".repeat(64)]);
        }
        if delegation.key_missing {
            let id = delegation_keys.0.key_id().as_str().to_string();
            entry["keys"].as_object_mut().unwrap().remove(&id);
        }
    }
    let targets_bytes = finish(&targets, &[&keys.targets], "targets", defects);
    let targets_version = if defects.snapshot_targets_version_mismatch {
        version + 1
    } else {
        version
    };
    out.metadata.push((
        format!("{targets_version}.targets.json"),
        targets_bytes.clone(),
    ));

    // The delegated role.
    let mut delegation_meta = None;
    if let Some(delegation) = delegation {
        let mut role = TargetsBuilder::new(version, expires);
        if !delegation.empty {
            for entry in entries {
                role = role.target(entry.name, &entry.content, None);
            }
        }
        let mut role = serde_json::to_value(role.build()).unwrap();
        if !delegation.empty {
            for entry in entries {
                role["targets"][entry.name] = entry_value(entry, false, &delegation.defects);
            }
        }
        let mut signers = vec![delegation_keys.0];
        if delegation.two_signatures {
            signers.push(delegation_keys.1);
        }
        let mut role_defects = delegation.defects.clone();
        if delegation.redundant {
            role_defects.unsigned.push("delegation");
        }
        let role_bytes = finish(&role, &signers, "delegation", &role_defects);
        let listed_version = if delegation.snapshot_version_mismatch {
            version + 1
        } else {
            version
        };
        if !delegation.missing {
            out.metadata.push((
                format!("{listed_version}.delegation.json"),
                role_bytes.clone(),
            ));
        }
        if !delegation.snapshot_missing {
            delegation_meta = Some(describe(listed_version, &role_bytes));
        }
    }

    // Snapshot and timestamp.
    let targets_meta = if defects.too_large {
        MetaFile {
            version: targets_version,
            length: None,
            hashes: None,
        }
    } else {
        describe(targets_version, &targets_bytes)
    };
    let mut snapshot = SnapshotBuilder::new(version, expires).role("targets", targets_meta);
    if let Some(meta) = delegation_meta {
        snapshot = snapshot.role("delegation", meta);
    }
    let snapshot = serde_json::to_value(snapshot.build()).unwrap();
    let snapshot_bytes = finish(&snapshot, &[&keys.snapshot], "snapshot", defects);
    out.metadata
        .push((format!("{version}.snapshot.json"), snapshot_bytes.clone()));
    let timestamp = serde_json::to_value(
        TimestampBuilder::new(version, expires, describe(version, &snapshot_bytes)).build(),
    )
    .unwrap();
    out.metadata.push((
        "timestamp.json".into(),
        finish(&timestamp, &[&keys.timestamp], "timestamp", defects),
    ));
    out
}

fn vectors() -> Vec<Vector> {
    let mut all = vec![vector("SimpleUptane", None)];
    // Role defects, for every role of both repositories (Director: root and targets, as in
    // the original vectors).
    type Pick = fn(&mut Defects) -> &mut Vec<&'static str>;
    let defects: [(&str, Pick, &'static str); 7] = [
        (
            // A threshold of zero makes the metadata that says so malformed.
            "ZeroThreshold",
            |d| &mut d.zero_threshold,
            "malformed",
        ),
        ("Expired", |d| &mut d.expired, "freeze"),
        (
            "UnmetThreshold",
            |d| &mut d.unmet_threshold,
            "arbitrary_software",
        ),
        (
            "NonUniqueSignatures",
            |d| &mut d.duplicate_signatures,
            "arbitrary_software",
        ),
        ("Unsigned", |d| &mut d.unsigned, "arbitrary_software"),
        ("BadKeyIds", |d| &mut d.bad_keyids, "arbitrary_software"),
        ("RoleTypeMismatch", |d| &mut d.wrong_type, "malformed"),
    ];
    for (defect, pick, kind) in defects {
        for (repo, roles) in [
            ("Director", &["Root", "Targets"][..]),
            (
                "ImageRepo",
                &["Root", "Targets", "Snapshot", "Timestamp"][..],
            ),
        ] {
            for role in roles {
                let name: &'static str =
                    Box::leak(format!("{repo}{role}{defect}Uptane").into_boxed_str());
                let mut v = vector(name, Some(kind));
                let target = if repo == "Director" {
                    &mut v.director
                } else {
                    &mut v.image
                };
                let role_name: &'static str = match *role {
                    "Root" => "root",
                    "Targets" => "targets",
                    "Snapshot" => "snapshot",
                    _ => "timestamp",
                };
                pick(target).push(role_name);
                all.push(v);
            }
        }
    }
    let with = |name: &'static str, refused: Option<&'static str>, edit: fn(&mut Vector)| {
        let mut v = vector(name, refused);
        edit(&mut v);
        v
    };
    let mismatch = Some("repository_mismatch");
    all.extend([
        with("DirectorTargetHashMismatchUptane", mismatch, |v| {
            v.director.bad_hash = true
        }),
        with("ImageRepoTargetHashMismatchUptane", mismatch, |v| {
            v.image.bad_hash = true
        }),
        with("DirectorTargetOversizedUptane", mismatch, |v| {
            v.director.short_length = true
        }),
        with("ImageRepoTargetOversizedUptane", mismatch, |v| {
            v.image.short_length = true
        }),
        with("TargetOversizedUptane", Some("endless_data"), |v| {
            v.director.short_length = true;
            v.image.short_length = true;
        }),
        with("DirectorRootRotationUptane", None, |v| {
            v.director_rotation = Rotation::To2
        }),
        with("DirectorRootRotationMultipleUptane", None, |v| {
            v.director_rotation = Rotation::To3
        }),
        with("ImageRepoRootRotationUptane", None, |v| {
            v.image_rotation = Rotation::To2
        }),
        with("ImageRepoRootRotationMultipleUptane", None, |v| {
            v.image_rotation = Rotation::To3
        }),
        with(
            "DirectorRootRotationNoOriginalSignatureUptane",
            Some("arbitrary_software"),
            |v| v.director_rotation = Rotation::NoOriginal,
        ),
        with(
            "ImageRepoRootRotationNoOriginalSignatureUptane",
            Some("arbitrary_software"),
            |v| v.image_rotation = Rotation::NoOriginal,
        ),
        with(
            "DirectorRootRotationNoNewSignatureUptane",
            Some("arbitrary_software"),
            |v| v.director_rotation = Rotation::NoNew,
        ),
        with(
            "ImageRepoRootRotationNoNewSignatureUptane",
            Some("arbitrary_software"),
            |v| v.image_rotation = Rotation::NoNew,
        ),
        with(
            "DirectorRootRotationVersionUnchangedUptane",
            Some("rollback"),
            |v| v.director_rotation = Rotation::VersionUnchanged,
        ),
        with(
            "ImageRepoRootRotationVersionUnchangedUptane",
            Some("rollback"),
            |v| v.image_rotation = Rotation::VersionUnchanged,
        ),
        with(
            "DirectorRootRotationVersionSkipUptane",
            Some("mix_and_match"),
            |v| v.director_rotation = Rotation::VersionSkip,
        ),
        with(
            "ImageRepoRootRotationVersionSkipUptane",
            Some("mix_and_match"),
            |v| v.image_rotation = Rotation::VersionSkip,
        ),
        // aktualizr accepts new content at an unchanged version; TUF 1.0.31 §5.5.2 keeps the
        // trusted metadata, so the new Director target is not in the trusted image targets.
        with(
            "ImageRepoMetadataChangedWhileVersionSameUptane",
            mismatch,
            |v| v.image_rotation = Rotation::SameVersionChanged,
        ),
        with("DirectorBadHwIdUptane", Some("wrong_hardware"), |v| {
            v.director.bad_hardware = true
        }),
        with("ImageRepoBadHwIdUptane", Some("wrong_hardware"), |v| {
            v.image.bad_hardware = true
        }),
        with("BadHwIdUptane", Some("wrong_hardware"), |v| {
            v.director.bad_hardware = true;
            v.image.bad_hardware = true;
        }),
        with("DirectorBadEcuIdUptane", Some("unknown_ecu"), |v| {
            v.director.bad_ecu = true
        }),
        with(
            "ImageRepoSnapshotTargetsVersionMismatchUptane",
            Some("mix_and_match"),
            |v| v.image.snapshot_targets_version_mismatch = true,
        ),
        with(
            "DirectorDelegationsUptane",
            Some("arbitrary_software"),
            |v| v.director.delegates = true,
        ),
        with("DirectorTargetsSameEcuUptane", Some("unknown_ecu"), |v| {
            v.director.same_ecu_twice = true
        }),
        with(
            "ImageRepoTargetsTooLargeUptane",
            Some("endless_data"),
            |v| v.image.too_large = true,
        ),
        with("DirectorTargetsTooLargeUptane", Some("endless_data"), |v| {
            v.director.too_large = true
        }),
    ]);
    let delegated =
        |name: &'static str, refused: Option<&'static str>, edit: fn(&mut Delegation)| {
            let mut v = vector(name, refused);
            let mut delegation = Delegation {
                paths: vec!["*"],
                ..Delegation::default()
            };
            edit(&mut delegation);
            v.delegation = Some(delegation);
            v
        };
    all.extend([
        delegated("DelegationSimpleUptane", None, |_| {}),
        delegated("DelegationRedundantUptane", None, |d| d.redundant = true),
        delegated("DelegationPathMismatchUptane", mismatch, |d| {
            d.paths = vec!["elsewhere/*"]
        }),
        delegated(
            "DelegationKeyMissingUptane",
            Some("arbitrary_software"),
            |d| d.key_missing = true,
        ),
        delegated(
            "DelegationUnsignedUptane",
            Some("arbitrary_software"),
            |d| d.defects.unsigned.push("delegation"),
        ),
        delegated(
            "DelegationBadKeyIdsUptane",
            Some("arbitrary_software"),
            |d| d.defects.bad_keyids.push("delegation"),
        ),
        delegated("DelegationMissingUptane", Some("drop_request"), |d| {
            d.missing = true
        }),
        delegated("DelegationEmptyUptane", mismatch, |d| d.empty = true),
        delegated("DelegationHashMismatchUptane", mismatch, |d| {
            d.defects.bad_hash = true
        }),
        delegated("DelegationExpiredUptane", Some("freeze"), |d| {
            d.defects.expired.push("delegation")
        }),
        delegated(
            "DelegationSnapshotMissingUptane",
            Some("arbitrary_software"),
            |d| d.snapshot_missing = true,
        ),
        delegated(
            "DelegationSnapshotVersionMismatchUptane",
            Some("mix_and_match"),
            |d| d.snapshot_version_mismatch = true,
        ),
        delegated("DelegationZeroThresholdUptane", Some("malformed"), |d| {
            d.defects.zero_threshold.push("delegation")
        }),
        delegated(
            "DelegationUnmetThresholdUptane",
            Some("arbitrary_software"),
            |d| d.defects.unmet_threshold.push("delegation"),
        ),
        delegated("DelegationTwoSignaturesUptane", None, |d| {
            d.two_signatures = true
        }),
        delegated(
            "DelegationNonUniqueSignaturesUptane",
            Some("arbitrary_software"),
            |d| d.defects.duplicate_signatures.push("delegation"),
        ),
    ]);
    all
}

/// What a cycle concluded: `None` when the Primary installed the image of step `step`.
fn outcome(report: &CycleReport, expected_image: &str) -> Result<(), String> {
    if let Verification::Refused { kind, .. } = &report.verification {
        return Err(kind.as_str().to_string());
    }
    match report.ecus.get(PRIMARY) {
        Some(EcuOutcome::Installed(name)) if name == expected_image => Ok(()),
        Some(EcuOutcome::Pending(detail) | EcuOutcome::Failed(detail)) => {
            let kind = detail
                .split_once("refused (")
                .and_then(|(_, rest)| rest.split_once(')'))
                .map_or(detail.as_str(), |(kind, _)| kind);
            Err(kind.to_string())
        }
        other => Err(format!("unexpected: {other:?} / {}", report.summary())),
    }
}

async fn run_vector(vector: &Vector) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let (server, base) = Server::start().await;
    let director_keys = repo_keys(60);
    let image_keys = repo_keys(70);
    let delegation_keys = (key(80), key(81));
    let steps =
        if vector.director_rotation != Rotation::None || vector.image_rotation != Rotation::None {
            2
        } else {
            1
        };
    let mut settings = SettingsArgs {
        vin: Some(VIN.into()),
        serial: Some(PRIMARY.into()),
        hardware_id: Some(HW.into()),
        director_url: Some(format!("{base}/director")),
        image_repo_url: Some(format!("{base}/images")),
        min_download_bytes_per_sec: Some(0),
        read_timeout_secs: Some(5),
        // The vector server is plaintext HTTP; the vectors test Uptane, not the transport.
        insecure: true,
        ..SettingsArgs::default()
    };
    if vector.image.too_large || vector.director.too_large {
        settings.max_targets_bytes = Some(100_000);
    }
    let settings = Settings::resolve(None, settings).unwrap();
    let mut result = Err("no step ran".to_string());
    for step in 0..steps {
        let image_name = if step == 0 { TARGET } else { "primary-2.img" };
        let content: Vec<u8> = if step == 0 {
            CONTENT.to_vec()
        } else {
            b"the second image".to_vec()
        };
        let entries = [Entry {
            name: image_name,
            content: content.clone(),
            counter: step as u64,
        }];
        let last = step + 1 == steps;
        let none = Defects::default();
        let (director_defects, image_defects) = if last {
            (&vector.director, &vector.image)
        } else {
            (&none, &none)
        };
        let director = publish_repo(
            &director_keys,
            true,
            director_defects,
            None,
            vector.director_rotation,
            step,
            &entries,
            (&delegation_keys.0, &delegation_keys.1),
        );
        let images = publish_repo(
            &image_keys,
            false,
            image_defects,
            if last {
                vector.delegation.as_ref()
            } else {
                None
            },
            vector.image_rotation,
            step,
            &entries,
            (&delegation_keys.0, &delegation_keys.1),
        );
        for (path, bytes) in &director.metadata {
            server.put(
                &format!("/director/vehicles/{VIN}/metadata/{path}"),
                Reply::Body(bytes.clone()),
            );
        }
        for (path, bytes) in &images.metadata {
            server.put(
                &format!("/images/metadata/{path}"),
                Reply::Body(bytes.clone()),
            );
        }
        let hash = uptane_core::hash::sha256_hex(&content);
        server.put(
            &format!("/images/targets/{hash}.{image_name}"),
            Reply::Body(content.clone()),
        );
        if step == 0 {
            provision_primary(
                dir.path(),
                &settings,
                &director.initial_root,
                &images.initial_root,
            )
            .await;
        }
        let mut primary = Primary::open(dir.path(), settings.clone()).unwrap();
        let report = primary.cycle().await;
        result = outcome(&report, image_name);
        if !last && result.is_err() {
            return Err(format!(
                "step {step} failed: {result:?} ({})",
                report.summary()
            ));
        }
    }
    result
}

async fn provision_primary(
    dir: &Path,
    settings: &Settings,
    director_root: &[u8],
    image_root: &[u8],
) {
    let files = tempfile::tempdir().unwrap();
    let p = |n: &str| files.path().join(n);
    std::fs::write(p("director.json"), director_root).unwrap();
    std::fs::write(p("image.json"), image_root).unwrap();
    std::fs::write(p("factory.bin"), b"factory").unwrap();
    provision::init(
        dir,
        settings,
        &Provisioning {
            director_root: p("director.json"),
            image_root: p("image.json"),
            factory_image: p("factory.bin"),
            factory_name: "factory.bin".into(),
            registration: Registration::Credential("vehicle-credential".into()),
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_86_uptane_test_vectors_end_as_expected() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 86, "the original suite has 86 scenarios");
    let mut wrong = Vec::new();
    for vector in &vectors {
        let result = run_vector(vector).await;
        let expected = vector.refused.map_or(Ok(()), |k| Err(k.to_string()));
        if result != expected {
            wrong.push(format!(
                "{}: expected {expected:?}, got {result:?}",
                vector.name
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} vectors differ:\n{}",
        wrong.len(),
        vectors.len(),
        wrong.join("\n")
    );
}
