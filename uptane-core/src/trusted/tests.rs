use serde_json::Value;

use super::*;
use crate::crypto::SigningKey;
use crate::error::VerifyError;
use crate::sign::{
    RootBuilder, TargetsBuilder, TimestampBuilder, delegated_role, describe, sign_value,
};
use crate::testing::{RepoFixture, earlier, key, now};

type Set = TrustedSet<ImageRepo>;

fn start(repo: &RepoFixture) -> Set {
    Set::new(
        &Raw::new(repo.initial_root().to_vec()),
        now(),
        Limits::default(),
    )
    .unwrap()
}

fn refresh(repo: &RepoFixture) -> Set {
    let mut set = start(repo);
    for root in &repo.roots[1..] {
        set.update_root(&Raw::new(root.clone())).unwrap();
    }
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    set.update_snapshot(&Raw::new(repo.snapshot.clone()))
        .unwrap();
    set.update_targets(&Raw::new(repo.targets_files["targets"].clone()))
        .unwrap();
    set
}

/// Re-signs a published file after `edit` changes its `signed` part.
fn resign(bytes: &[u8], keys: &[&SigningKey], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(bytes).unwrap();
    edit(&mut doc["signed"]);
    sign_value(&doc["signed"], keys).unwrap()
}

#[test]
fn accepts_a_consistent_repository() {
    let mut repo = RepoFixture::new();
    repo.add_target("a.bin", b"aaa", None);
    repo.publish();
    let set = refresh(&repo);
    assert_eq!(set.timestamp().unwrap().common.version, 2);
    assert!(set.targets().unwrap().targets.contains_key("a.bin"));
    assert_eq!(set.role_via("targets", "root").unwrap().common.version, 2);
}

#[test]
fn initial_root_must_be_self_signed() {
    let repo = RepoFixture::new();
    let forged = resign(repo.initial_root(), &[&key(99)], |_| {});
    assert!(matches!(
        Set::new(&Raw::new(forged), now(), Limits::default()),
        Err(UpdateError::Verify(VerifyError::Threshold { .. }))
    ));
    let no_version = resign(repo.initial_root(), &[&key(1)], |s| {
        s.as_object_mut().unwrap().remove("version");
    });
    assert!(matches!(
        Set::new(&Raw::new(no_version), now(), Limits::default()),
        Err(UpdateError::Verify(VerifyError::Malformed { .. }))
    ));
}

fn rotated_root_builder(repo: &RepoFixture, new_root: &SigningKey) -> RootBuilder {
    let current: Value = serde_json::from_slice(repo.roots.last().unwrap()).unwrap();
    let root: crate::metadata::Root = serde_json::from_value(current["signed"].clone()).unwrap();
    let old = repo.root_keys[0].key_id();
    RootBuilder::from_root(&root, repo.next_root_version(), repo.expires)
        .remove_key("root", &old)
        .key("root", new_root.public_key())
}

#[test]
fn accepts_a_cross_signed_root_rotation() {
    let mut repo = RepoFixture::new();
    let b = rotated_root_builder(&repo, &key(10));
    repo.rotate_root(b, vec![key(10)]);
    let set = refresh(&repo);
    assert_eq!(set.root().common.version, 2);
}

#[test]
fn rejects_root_not_signed_by_the_old_root() {
    let repo = RepoFixture::new();
    let new = rotated_root_builder(&repo, &key(10))
        .sign(&[&key(10)])
        .unwrap();
    let mut set = start(&repo);
    assert!(matches!(
        set.update_root(&Raw::new(new)),
        Err(UpdateError::Verify(VerifyError::Threshold { .. }))
    ));
    assert_eq!(set.root().common.version, 1);
}

#[test]
fn rejects_root_not_signed_by_the_new_root() {
    let repo = RepoFixture::new();
    let new = rotated_root_builder(&repo, &key(10))
        .sign(&[&key(1)])
        .unwrap();
    let mut set = start(&repo);
    assert!(matches!(
        set.update_root(&Raw::new(new)),
        Err(UpdateError::Verify(VerifyError::Threshold { .. }))
    ));
}

#[test]
fn root_version_must_be_exactly_the_next() {
    let repo = RepoFixture::new();
    let mut set = start(&repo);
    let same = resign(repo.initial_root(), &[&key(1)], |_| {});
    assert!(matches!(
        set.update_root(&Raw::new(same)),
        Err(UpdateError::Rollback {
            trusted: 1,
            new: 1,
            ..
        })
    ));
    let skip = resign(repo.initial_root(), &[&key(1)], |s| s["version"] = 3.into());
    assert!(matches!(
        set.update_root(&Raw::new(skip)),
        Err(UpdateError::VersionMismatch {
            expected: 2,
            found: 3,
            ..
        })
    ));
}

#[test]
fn intermediate_roots_may_be_expired_but_not_the_final_one() {
    let mut repo = RepoFixture::new();
    let v2 = resign(repo.initial_root(), &[&key(1)], |s| {
        s["version"] = 2.into();
        s["expires"] = crate::time::format_expires(&earlier()).into();
    });
    repo.roots.push(v2);
    let mut set = start(&repo);
    set.update_root(&Raw::new(repo.roots[1].clone())).unwrap();
    assert!(matches!(
        set.update_timestamp(&Raw::new(repo.timestamp.clone())),
        Err(UpdateError::Expired { ref role, .. }) if role == "root"
    ));
    let v3 = resign(repo.initial_root(), &[&key(1)], |s| s["version"] = 3.into());
    let mut set = start(&repo);
    set.update_root(&Raw::new(repo.roots[1].clone())).unwrap();
    set.update_root(&Raw::new(v3)).unwrap();
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
}

#[test]
fn caps_root_rotations() {
    let repo = RepoFixture::new();
    let limits = Limits {
        max_root_rotations: 1,
        ..Limits::default()
    };
    let mut set = Set::new(&Raw::new(repo.initial_root().to_vec()), now(), limits).unwrap();
    for (v, expect_ok) in [(2, true), (3, false)] {
        let next = resign(repo.initial_root(), &[&key(1)], |s| s["version"] = v.into());
        let result = set.update_root(&Raw::new(next));
        if expect_ok {
            result.unwrap();
        } else {
            assert!(matches!(result, Err(UpdateError::TooManyRootRotations(1))));
        }
    }
}

#[test]
fn rejects_timestamp_rollback_and_keeps_equal_version() {
    let mut repo = RepoFixture::new();
    let old = repo.timestamp.clone();
    repo.publish_timestamp_only();
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    assert!(matches!(
        set.update_timestamp(&Raw::new(old)),
        Err(UpdateError::Rollback {
            trusted: 2,
            new: 1,
            ..
        })
    ));
    let same_version = resign(&repo.timestamp, &[&repo.timestamp_key], |s| {
        s["custom"] = "changed".into();
    });
    assert_eq!(
        set.update_timestamp(&Raw::new(same_version)).unwrap(),
        TimestampUpdate::Unchanged
    );
    assert_eq!(
        set.timestamp().unwrap().as_bytes(),
        repo.timestamp.as_slice()
    );
}

#[test]
fn rejects_timestamp_that_rolls_back_snapshot() {
    let mut repo = RepoFixture::new();
    repo.publish();
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    let rolled = TimestampBuilder::new(9, repo.expires, describe(1, b"x"))
        .sign(&[&repo.timestamp_key])
        .unwrap();
    assert!(matches!(
        set.update_timestamp(&Raw::new(rolled)),
        Err(UpdateError::Rollback { ref role, trusted: 2, new: 1 }) if role == "snapshot"
    ));
}

#[test]
fn rejects_expired_timestamp() {
    let repo = RepoFixture::new();
    let expired = resign(&repo.timestamp, &[&repo.timestamp_key], |s| {
        s["expires"] = crate::time::format_expires(&earlier()).into();
    });
    let mut set = start(&repo);
    assert!(matches!(
        set.update_timestamp(&Raw::new(expired)),
        Err(UpdateError::Expired { ref role, .. }) if role == "timestamp"
    ));
    assert!(set.timestamp().is_none());
}

#[test]
fn rejects_timestamp_signed_by_another_key() {
    let repo = RepoFixture::new();
    let forged = resign(&repo.timestamp, &[&key(50)], |_| {});
    let mut set = start(&repo);
    let err = set.update_timestamp(&Raw::new(forged)).unwrap_err();
    assert!(matches!(
        err,
        UpdateError::Verify(VerifyError::Threshold {
            valid: 0,
            threshold: 1,
            ..
        })
    ));
    assert_eq!(err.attack(), crate::error::AttackKind::ArbitrarySoftware);
}

#[test]
fn rejects_wrong_type_and_oversized_metadata() {
    let repo = RepoFixture::new();
    let mut set = start(&repo);
    assert!(matches!(
        set.update_timestamp(&Raw::new(repo.snapshot.clone())),
        Err(UpdateError::Verify(VerifyError::WrongType { .. }))
    ));
    let mut big = repo.timestamp.clone();
    big.extend(std::iter::repeat_n(b' ', 20_000));
    assert!(matches!(
        set.update_timestamp(&Raw::new(big)),
        Err(UpdateError::Verify(VerifyError::TooLarge {
            limit: 16_384,
            ..
        }))
    ));
}

#[test]
fn rejects_duplicate_signature_entries() {
    let repo = RepoFixture::new();
    let mut doc: Value = serde_json::from_slice(&repo.timestamp).unwrap();
    let sig = doc["signatures"][0].clone();
    doc["signatures"].as_array_mut().unwrap().push(sig);
    let mut set = start(&repo);
    assert!(matches!(
        set.update_timestamp(&Raw::new(serde_json::to_vec(&doc).unwrap())),
        Err(UpdateError::Verify(VerifyError::DuplicateSignature { .. }))
    ));
}

#[test]
fn invalid_extra_signatures_do_not_spoil_a_threshold() {
    let repo = RepoFixture::new();
    let mut doc: Value = serde_json::from_slice(&repo.timestamp).unwrap();
    let sigs = doc["signatures"].as_array_mut().unwrap();
    sigs.push(serde_json::json!({"keyid": key(60).key_id(), "sig": ""}));
    sigs.push(serde_json::json!({"keyid": "abcd", "sig": "nothex"}));
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(serde_json::to_vec(&doc).unwrap()))
        .unwrap();
}

#[test]
fn a_key_listed_twice_counts_once() {
    let mut repo = RepoFixture::new();
    let current: Value = serde_json::from_slice(repo.initial_root()).unwrap();
    let mut root: crate::metadata::Root =
        serde_json::from_value(current["signed"].clone()).unwrap();
    let ts_id = repo.timestamp_key.key_id();
    let ts_role = root.roles.get_mut("timestamp").unwrap();
    ts_role.keyids = vec![ts_id.clone(), ts_id];
    ts_role.threshold = 2;
    let b = RootBuilder::from_root(&root, 2, repo.expires);
    repo.rotate_root(b, vec![key(1)]);
    let mut set = start(&repo);
    set.update_root(&Raw::new(repo.roots[1].clone())).unwrap();
    assert!(matches!(
        set.update_timestamp(&Raw::new(repo.timestamp.clone())),
        Err(UpdateError::Verify(VerifyError::Threshold {
            valid: 1,
            threshold: 2,
            ..
        }))
    ));
}

#[test]
fn rejects_snapshot_not_matching_timestamp() {
    let mut repo = RepoFixture::new();
    let old_snapshot = repo.snapshot.clone();
    repo.publish();
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    assert!(matches!(
        set.update_snapshot(&Raw::new(old_snapshot)),
        Err(UpdateError::DigestMismatch { .. })
    ));
    // Right hashes but a version timestamp does not name: timestamp without hashes.
    let unhashed = TimestampBuilder::new(
        10,
        repo.expires,
        MetaFile {
            version: 3,
            length: None,
            hashes: None,
        },
    )
    .sign(&[&repo.timestamp_key])
    .unwrap();
    set.update_timestamp(&Raw::new(unhashed)).unwrap();
    let err = set
        .update_snapshot(&Raw::new(repo.snapshot.clone()))
        .unwrap_err();
    assert!(matches!(
        err,
        UpdateError::VersionMismatch {
            expected: 3,
            found: 2,
            ..
        }
    ));
    assert_eq!(err.attack(), crate::error::AttackKind::MixAndMatch);
}

fn timestamp_for(
    repo: &RepoFixture,
    version: u64,
    snapshot: &[u8],
    snapshot_version: u64,
) -> Vec<u8> {
    TimestampBuilder::new(version, repo.expires, describe(snapshot_version, snapshot))
        .sign(&[&repo.timestamp_key])
        .unwrap()
}

#[test]
fn rejects_snapshot_that_drops_or_rolls_back_a_role() {
    let mut repo = RepoFixture::new();
    repo.delegate(
        "targets",
        delegated_role("a", &[key(20).public_key()], 1, &["*"], false),
        vec![key(20)],
    );
    repo.publish();
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    set.update_snapshot(&Raw::new(repo.snapshot.clone()))
        .unwrap();
    let local_snapshot = repo.snapshot.clone();

    let dropped = resign(&repo.snapshot, &[&repo.snapshot_key], |s| {
        s["version"] = 3.into();
        s["meta"].as_object_mut().unwrap().remove("a.json");
    });
    let mut set2 = start(&repo);
    set2.load_local_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    set2.update_timestamp(&Raw::new(timestamp_for(&repo, 5, &dropped, 3)))
        .unwrap();
    set2.load_local_snapshot(&Raw::new(local_snapshot.clone()))
        .unwrap();
    assert!(matches!(
        set2.update_snapshot(&Raw::new(dropped)),
        Err(UpdateError::RoleRemoved { ref role }) if role == "a"
    ));

    let rolled = resign(&repo.snapshot, &[&repo.snapshot_key], |s| {
        s["version"] = 3.into();
        s["meta"]["a.json"]["version"] = 0.into();
    });
    let mut set3 = start(&repo);
    set3.load_local_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    set3.update_timestamp(&Raw::new(timestamp_for(&repo, 5, &rolled, 3)))
        .unwrap();
    assert!(matches!(
        set3.load_local_snapshot(&Raw::new(local_snapshot)).unwrap(),
        Freshness::Stale(UpdateError::VersionMismatch { .. })
    ));
    assert!(matches!(
        set3.update_snapshot(&Raw::new(rolled)),
        Err(UpdateError::Rollback { ref role, trusted: 1, new: 0 }) if role == "a"
    ));
}

#[test]
fn rejects_expired_snapshot_and_targets() {
    let repo = RepoFixture::new();
    let expired = resign(&repo.snapshot, &[&repo.snapshot_key], |s| {
        s["expires"] = crate::time::format_expires(&earlier()).into();
    });
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(timestamp_for(&repo, 2, &expired, 1)))
        .unwrap();
    assert!(matches!(
        set.update_snapshot(&Raw::new(expired)),
        Err(UpdateError::Expired { ref role, .. }) if role == "snapshot"
    ));

    let mut repo = RepoFixture::new();
    repo.expires = earlier();
    let targets = resign(&repo.targets_files["targets"], &[&repo.targets_key], |s| {
        s["expires"] = crate::time::format_expires(&earlier()).into();
    });
    repo.expires = crate::testing::later();
    repo.targets_files.insert("targets".into(), targets);
    repo.publish_snapshot_only();
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    set.update_snapshot(&Raw::new(repo.snapshot.clone()))
        .unwrap();
    assert!(matches!(
        set.update_targets(&Raw::new(repo.targets_files["targets"].clone())),
        Err(UpdateError::Expired { ref role, .. }) if role == "targets"
    ));
}

/// A set that trusted a re-signed snapshot listing only the version (2) of targets.json.
fn with_targets_version_only(repo: &RepoFixture) -> Set {
    let snapshot = resign(&repo.snapshot, &[&repo.snapshot_key], |s| {
        s["meta"]["targets.json"] = serde_json::json!({"version": 2});
    });
    let mut set = start(repo);
    set.update_timestamp(&Raw::new(timestamp_for(repo, 3, &snapshot, 2)))
        .unwrap();
    set.update_snapshot(&Raw::new(snapshot)).unwrap();
    set
}

#[test]
fn rejects_targets_not_matching_snapshot() {
    let mut repo = RepoFixture::new();
    let old_targets = repo.targets_files["targets"].clone();
    repo.publish();
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    set.update_snapshot(&Raw::new(repo.snapshot.clone()))
        .unwrap();
    assert!(matches!(
        set.update_targets(&Raw::new(old_targets.clone())),
        Err(UpdateError::DigestMismatch { .. })
    ));
    // Without hashes in snapshot, the version check catches it.
    let mut set = with_targets_version_only(&repo);
    assert!(matches!(
        set.update_targets(&Raw::new(old_targets)),
        Err(UpdateError::VersionMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
}

/// A targets file of a megabyte or more is hash-checked and verified on two threads: the
/// outcome is the one a sequential check gives, a digest mismatch first.
#[test]
fn a_large_targets_file_is_checked_as_a_small_one() {
    let mut repo = RepoFixture::new();
    let mut many = TargetsBuilder::new(repo.targets.common.version, repo.expires);
    for i in 0..6_000u32 {
        many = many.target(&format!("images/ecu-{i:05}.bin"), &i.to_le_bytes(), None);
    }
    repo.targets = many.build();
    let old_targets = repo.targets_files["targets"].clone();
    repo.publish();
    let large = repo.targets_files["targets"].clone();
    assert!(
        large.len() >= crate::both::PARALLEL_BYTES,
        "{}",
        large.len()
    );
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    set.update_snapshot(&Raw::new(repo.snapshot.clone()))
        .unwrap();
    // Another file, signed by nobody: the digest mismatch is what is reported.
    let mut forged = large.clone();
    let at = forged.len() / 2;
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    assert!(matches!(
        set.update_targets(&Raw::new(forged)),
        Err(UpdateError::DigestMismatch { .. })
    ));
    assert!(matches!(
        set.update_targets(&Raw::new(old_targets)),
        Err(UpdateError::DigestMismatch { .. })
    ));
    set.update_targets(&Raw::new(large)).unwrap();
    assert_eq!(set.targets().unwrap().targets.len(), 6_000);

    // The snapshot lists only a version: the signature check refuses a changed file.
    let mut set = with_targets_version_only(&repo);
    let mut forged = repo.targets_files["targets"].clone();
    let text = String::from_utf8(forged.clone()).unwrap();
    let at = text.find("ecu-03000").unwrap() + 4;
    forged[at] = b'9';
    assert!(matches!(
        set.update_targets(&Raw::new(forged)),
        Err(UpdateError::Verify(VerifyError::Threshold { valid: 0, .. }))
    ));
}

#[test]
fn rejects_targets_signed_by_another_key() {
    let mut repo = RepoFixture::new();
    let forged = resign(&repo.targets_files["targets"], &[&key(77)], |_| {});
    repo.targets_files.insert("targets".into(), forged);
    repo.publish_snapshot_only();
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    set.update_snapshot(&Raw::new(repo.snapshot.clone()))
        .unwrap();
    assert!(matches!(
        set.update_targets(&Raw::new(repo.targets_files["targets"].clone())),
        Err(UpdateError::Verify(VerifyError::Threshold { .. }))
    ));
}

#[test]
fn enforces_workflow_order() {
    let repo = RepoFixture::new();
    let mut set = start(&repo);
    assert!(matches!(
        set.update_snapshot(&Raw::new(repo.snapshot.clone())),
        Err(UpdateError::OutOfOrder(_))
    ));
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    assert!(matches!(
        set.update_root(&Raw::new(repo.initial_root().to_vec())),
        Err(UpdateError::OutOfOrder("root"))
    ));
}

#[test]
fn fast_forward_recovery_after_timestamp_key_rotation() {
    let mut repo = RepoFixture::new();
    for _ in 0..5 {
        repo.publish_timestamp_only();
    }
    let attacked_local = repo.timestamp.clone();
    let current: Value = serde_json::from_slice(repo.initial_root()).unwrap();
    let root: crate::metadata::Root = serde_json::from_value(current["signed"].clone()).unwrap();
    let b = RootBuilder::from_root(&root, 2, repo.expires)
        .remove_key("timestamp", &repo.timestamp_key.key_id())
        .key("timestamp", key(30).public_key());
    repo.rotate_root(b, vec![key(1)]);
    repo.timestamp_key = key(30);
    repo.versions.0 = 0;
    repo.publish_timestamp_only();
    let mut set = start(&repo);
    set.update_root(&Raw::new(repo.roots[1].clone())).unwrap();
    // The fast-forwarded v6 no longer verifies under the new root, so it is forgotten ...
    assert!(matches!(
        set.load_local_timestamp(&Raw::new(attacked_local)),
        Err(UpdateError::Verify(VerifyError::Threshold { .. }))
    ));
    // ... and version 1 from the new key is accepted.
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    assert_eq!(set.timestamp().unwrap().common.version, 1);
}

fn load_all(set: &mut Set, repo: &RepoFixture, path: &str) -> (SearchStep<ImageRepo>, Vec<String>) {
    let mut search = TargetSearch::new(path, None);
    let mut loaded = Vec::new();
    for _ in 0..50 {
        match search.step(set) {
            SearchStep::Load { role, delegator } => {
                set.update_delegated_targets(
                    &Raw::new(repo.targets_files[&role].clone()),
                    &role,
                    &delegator,
                )
                .unwrap();
                loaded.push(role);
            }
            other => return (other, loaded),
        }
    }
    panic!("search did not end");
}

#[test]
fn delegation_search_is_preorder_depth_first_and_honours_terminating() {
    let mut repo = RepoFixture::new();
    let k = key(40);
    repo.delegate_all(
        &k,
        &[
            ("targets", "a", false),
            ("targets", "b", false),
            ("a", "c", true),
            ("targets", "d", false),
        ],
    );
    repo.add_delegated_target("b", "x", b"from b");
    repo.publish();
    let mut set = refresh(&repo);
    let (step, loaded) = load_all(&mut set, &repo, "x");
    // c is terminating under a: b and d are never visited.
    assert_eq!(loaded, ["a", "c"]);
    assert_eq!(step, SearchStep::NotFound);

    let mut repo = RepoFixture::new();
    repo.delegate_all(
        &k,
        &[
            ("targets", "a", false),
            ("a", "c", false),
            ("targets", "b", false),
        ],
    );
    repo.add_delegated_target("b", "x", b"from b");
    repo.publish();
    let mut set = refresh(&repo);
    let (step, loaded) = load_all(&mut set, &repo, "x");
    assert_eq!(loaded, ["a", "c", "b"]);
    assert!(matches!(step, SearchStep::Found(t) if t.role() == "b"));
}

#[test]
fn delegation_search_skips_roles_whose_paths_do_not_match() {
    let mut repo = RepoFixture::new();
    let k = key(41);
    let pk = k.public_key().clone();
    repo.delegate(
        "targets",
        delegated_role("a", &[&pk], 1, &["other/*"], false),
        vec![k.clone()],
    );
    repo.add_delegated_target("a", "x", b"unauthorized");
    repo.publish();
    let mut set = refresh(&repo);
    let (step, loaded) = load_all(&mut set, &repo, "x");
    assert!(loaded.is_empty());
    assert_eq!(step, SearchStep::NotFound);
}

#[test]
fn a_role_reached_through_another_delegator_is_verified_again() {
    let mut repo = RepoFixture::new();
    let (ka, kb, kr_a, kr_b) = (key(42), key(43), key(44), key(45));
    repo.delegate(
        "targets",
        delegated_role("parent-a", &[ka.public_key()], 1, &["a/*"], false),
        vec![ka],
    );
    repo.delegate(
        "targets",
        delegated_role("parent-b", &[kb.public_key()], 1, &["b/*"], false),
        vec![kb],
    );
    repo.delegate(
        "parent-a",
        delegated_role("release", &[kr_a.public_key()], 1, &["a/*"], false),
        vec![kr_a],
    );
    repo.delegate(
        "parent-b",
        delegated_role("release", &[kr_b.public_key()], 1, &["b/*"], false),
        vec![],
    );
    repo.add_delegated_target("release", "a/x", b"a");
    repo.add_delegated_target("release", "b/x", b"b");
    repo.publish();
    let mut set = refresh(&repo);
    let (step, _) = load_all(&mut set, &repo, "a/x");
    assert!(matches!(step, SearchStep::Found(_)));
    let mut search = TargetSearch::new("b/x", None);
    let mut result = None;
    for _ in 0..10 {
        match search.step(&set) {
            SearchStep::Load { role, delegator } => {
                let raw = set
                    .role(&role)
                    .map(|r| r.to_raw())
                    .unwrap_or_else(|| Raw::new(repo.targets_files[&role].clone()));
                if let Err(e) = set.update_delegated_targets(&raw, &role, &delegator) {
                    result = Some(e);
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(
        result,
        Some(UpdateError::Verify(VerifyError::Threshold { .. }))
    ));
}

#[test]
fn rejects_role_not_delegated_or_not_in_snapshot() {
    let mut repo = RepoFixture::new();
    let k = key(46);
    repo.delegate(
        "targets",
        delegated_role("a", &[k.public_key()], 1, &["*"], false),
        vec![k.clone()],
    );
    repo.publish();
    let mut set = refresh(&repo);
    assert!(matches!(
        set.update_delegated_targets(&Raw::new(repo.targets_files["a"].clone()), "a", "nobody"),
        Err(UpdateError::NotDelegated { .. })
    ));
    assert!(matches!(
        set.update_delegated_targets(&Raw::new(repo.targets_files["a"].clone()), "zz", "targets"),
        Err(UpdateError::NotInSnapshot { .. })
    ));
}

/// A length the online timestamp key lists is believed only up to the configured limit: a
/// server holding that key could list 2^62 bytes and have the client read (or reserve)
/// that much.
#[test]
fn a_listed_length_never_raises_the_limit() {
    let repo = RepoFixture::new();
    let huge = TimestampBuilder::new(
        10,
        repo.expires,
        MetaFile {
            version: 1,
            length: Some(1 << 62),
            hashes: None,
        },
    )
    .sign(&[&repo.timestamp_key])
    .unwrap();
    let mut set = start(&repo);
    set.update_timestamp(&Raw::new(huge)).unwrap();
    assert_eq!(
        set.snapshot_request().unwrap().max_length,
        Limits::default().snapshot
    );

    // The real snapshot, listed with its exact length, above a smaller configured limit.
    let limit = repo.snapshot.len() as u64 - 1;
    let small = Limits {
        snapshot: limit,
        ..Limits::default()
    };
    let mut set = Set::new(&Raw::new(repo.initial_root().to_vec()), now(), small).unwrap();
    set.update_timestamp(&Raw::new(repo.timestamp.clone()))
        .unwrap();
    assert_eq!(set.snapshot_request().unwrap().max_length, limit);
    assert!(matches!(
        set.update_snapshot(&Raw::new(repo.snapshot.clone())),
        Err(UpdateError::Verify(VerifyError::TooLarge { limit: l, .. })) if l == limit
    ));
}
