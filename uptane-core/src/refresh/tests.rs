use std::collections::BTreeMap;

use serde_json::Value;

use super::*;
use crate::crypto::SigningKey;
use crate::error::{AttackKind, VerifyError};
use crate::sign::{RootBuilder, TargetsBuilder, delegated_role, sign_value};
use crate::testing::{RepoFixture, earlier, key, later, now};
use crate::trusted::{ImageRepo, Published, RootChain, Viewpoint};

/// A repository as a client sees it: what it serves, what the client kept from the last
/// update, and every request in order.
struct Client<'a> {
    repo: &'a RepoFixture,
    kept: BTreeMap<String, Vec<u8>>,
    log: Vec<String>,
}

impl<'a> Client<'a> {
    fn new(repo: &'a RepoFixture) -> Self {
        Self {
            repo,
            kept: BTreeMap::new(),
            log: Vec::new(),
        }
    }
}

impl MetadataSource for Client<'_> {
    type Error = UpdateError;

    fn read_kept(&mut self, file: &MetadataFile) -> Result<Option<Vec<u8>>, UpdateError> {
        self.log.push(format!("kept {}", file.role()));
        Ok(self.kept.get(file.role()).cloned())
    }

    fn fetch(&mut self, file: &MetadataFile, _: u64) -> Result<Option<Vec<u8>>, UpdateError> {
        self.log.push(file.file_name());
        Ok(self.repo.file(file))
    }

    fn keep(&mut self, accepted: Accepted) -> Result<(), UpdateError> {
        self.log.push(format!("keep {}", accepted.file));
        let role = accepted.file.role().to_string();
        self.kept.insert(role, accepted.bytes.to_vec());
        Ok(())
    }
}

fn root(repo: &RepoFixture) -> Raw<Root> {
    Raw::new(repo.initial_root().to_vec())
}

fn full(repo: &RepoFixture) -> Refresh<ImageRepo> {
    Refresh::new(&root(repo), now(), Limits::default()).unwrap()
}

fn partial(repo: &RepoFixture) -> Refresh<Director> {
    Refresh::partial(&root(repo), now(), Limits::default()).unwrap()
}

/// Re-signs a published file after `edit` changes its `signed` part.
fn resign(bytes: &[u8], keys: &[&SigningKey], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(bytes).unwrap();
    edit(&mut doc["signed"]);
    sign_value(&doc["signed"], keys).unwrap()
}

fn root_v(repo: &RepoFixture, version: u64, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    resign(repo.initial_root(), &[&key(1)], |s| {
        s["version"] = version.into();
        edit(s);
    })
}

#[test]
fn asks_in_workflow_order_and_keeps_what_it_admits() {
    let mut repo = RepoFixture::new();
    repo.add_target("a.bin", b"aaa", None);
    repo.publish();
    let mut client = Client::new(&repo);
    let mut refresh = full(&repo);
    refresh.find("a.bin");
    refresh.run(&mut client).unwrap();
    assert_eq!(
        client.log,
        [
            "2.root.json",
            "kept timestamp",
            "timestamp.json",
            "keep timestamp.json",
            "kept snapshot",
            "2.snapshot.json",
            "keep 2.snapshot.json",
            "kept targets",
            "2.targets.json",
            "keep 2.targets.json",
        ]
    );
    assert_eq!(refresh.outcome(), Some(RefreshOutcome::Updated));
    assert_eq!(refresh.target("a.bin").unwrap().info().length, 3);

    // The next update reuses what was kept: only the timestamp is downloaded, and an
    // unchanged one is not kept again.
    client.log.clear();
    let mut refresh = full(&repo);
    refresh.run(&mut client).unwrap();
    assert_eq!(
        client.log,
        [
            "2.root.json",
            "kept timestamp",
            "timestamp.json",
            "kept snapshot",
            "kept targets"
        ]
    );
    assert_eq!(refresh.outcome(), Some(RefreshOutcome::Unchanged));
}

#[test]
fn each_fetch_is_described_by_what_its_referrer_lists() {
    let mut repo = RepoFixture::new();
    repo.add_target("a.bin", b"a", None);
    repo.publish();
    let mut refresh = full(&repo);
    let mut described = Vec::new();
    loop {
        let answer = match refresh.next() {
            Step::ReadKept(_) => None,
            Step::Fetch { file, .. } => {
                described.push((file.role().to_string(), refresh.listed().cloned()));
                repo.file(&file)
            }
            Step::Done => break,
        };
        refresh.feed(answer).unwrap();
    }
    let timestamp = refresh.trusted().timestamp().unwrap();
    let snapshot = refresh.trusted().snapshot().unwrap();
    assert_eq!(
        described,
        [
            ("root".to_string(), None),
            ("timestamp".to_string(), None),
            ("snapshot".to_string(), timestamp.snapshot_meta().cloned()),
            (
                "targets".to_string(),
                snapshot.meta.get("targets.json").cloned()
            ),
        ]
    );
    // Both listings carry the hash a writer can check before it writes.
    assert!(described[2..].iter().all(|(_, meta)| {
        meta.as_ref()
            .and_then(|m| m.hashes.as_ref())
            .is_some_and(|h| h.contains_key("sha256"))
    }));
    assert!(refresh.listed().is_none(), "nothing is asked for once done");
}

/// Refreshes from `repo` through `feed_shared_telling`, the targets file altered (one byte,
/// the same length) if `alter_targets`; the refresh's end and the roles told as listed.
fn told_as_listed(
    repo: &RepoFixture,
    alter_targets: bool,
) -> (Result<(), UpdateError>, Vec<String>) {
    let mut refresh = full(repo);
    let told = std::sync::Mutex::new(Vec::new());
    let fed = loop {
        let answer = match refresh.next() {
            Step::ReadKept(_) => None,
            Step::Fetch { file, .. } => repo.file(&file).map(|mut bytes| {
                if alter_targets && file.role() == "targets" {
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x01;
                }
                (file.role().to_string(), bytes)
            }),
            Step::Done => break Ok(()),
        };
        let (role, bytes) = match answer {
            Some((role, bytes)) => (role, Some(Arc::from(bytes))),
            None => (String::new(), None),
        };
        let told = &told;
        if let Err(e) = refresh.feed_shared_telling(bytes, move || {
            told.lock().unwrap().push(role);
        }) {
            break Err(e);
        }
    };
    (fed, told.into_inner().unwrap())
}

/// `listed` is told for the snapshot and a targets file once they are what their referrer
/// lists, never for a root or a timestamp; not for bytes of the listed length that differ
/// from the listed ones (which are then refused); not for a file listed by length alone
/// (which is still admitted); and from the thread that checks a large file's hashes beside
/// its signatures.
#[test]
fn only_the_bytes_a_referrer_lists_are_told_as_listed() {
    let mut repo = RepoFixture::new();
    repo.add_target("a.bin", b"a", None);
    repo.publish();
    let (fed, told) = told_as_listed(&repo, false);
    fed.unwrap();
    assert_eq!(told, ["snapshot", "targets"]);

    let (fed, told) = told_as_listed(&repo, true);
    assert!(
        matches!(fed, Err(UpdateError::DigestMismatch { ref role, .. }) if role == "targets"),
        "{fed:?}"
    );
    assert_eq!(told, ["snapshot"]);

    // Listed by length alone: admitted on its signature, never told.
    let mut length_only = repo.clone();
    let mut targets = crate::sign::describe(
        length_only.targets.common.version,
        &length_only.targets_files["targets"],
    );
    targets.hashes = None;
    length_only.snapshot =
        crate::sign::SnapshotBuilder::new(length_only.versions.1, length_only.expires)
            .role("targets", targets)
            .sign(&[&length_only.snapshot_key])
            .unwrap();
    length_only.publish_timestamp_only();
    let (fed, told) = told_as_listed(&length_only, false);
    fed.unwrap();
    assert_eq!(told, ["snapshot"]);

    // A targets file large enough to be checked on two cores.
    let mut large = RepoFixture::new();
    let mut builder =
        TargetsBuilder::from_targets(&large.targets, large.targets.common.version, large.expires);
    for i in 0..5000 {
        builder = builder.target(&format!("file-{i:06}.bin"), i.to_string().as_bytes(), None);
    }
    large.targets = builder.build();
    large.publish();
    let len = large.targets_files["targets"].len();
    assert!(
        len >= crate::both::PARALLEL_BYTES,
        "{len} bytes: checked on one core"
    );
    let (fed, told) = told_as_listed(&large, false);
    fed.unwrap();
    assert_eq!(told, ["snapshot", "targets"]);
    let (fed, told) = told_as_listed(&large, true);
    assert!(
        matches!(fed, Err(UpdateError::DigestMismatch { .. })),
        "{fed:?}"
    );
    assert_eq!(told, ["snapshot"]);
}

#[test]
fn a_missing_file_is_a_dropped_request() {
    let repo = RepoFixture::new();
    let mut refresh = full(&repo);
    assert!(matches!(refresh.next(), Step::Fetch { ref file, .. } if file.role() == "root"));
    refresh.feed(None).unwrap();
    assert_eq!(
        refresh.next(),
        Step::ReadKept(MetadataFile::new("timestamp", None))
    );
    refresh.feed(None).unwrap();
    let err = refresh.feed(None).unwrap_err();
    assert_eq!(
        err,
        UpdateError::Missing {
            file: "timestamp.json".into()
        }
    );
    assert_eq!(err.attack(), AttackKind::DropRequest);
    // The refresh is over.
    assert_eq!(refresh.next(), Step::Done);
    assert!(refresh.feed(None).is_err());
}

/// Serves `roots` (index 0 is version 2) as the root chain after version 1.
fn with_roots(repo: &RepoFixture, roots: Vec<Vec<u8>>) -> RepoFixture {
    let mut repo = repo.clone();
    repo.roots.truncate(1);
    repo.roots.extend(roots);
    repo
}

fn run_full(repo: &RepoFixture, limits: Limits) -> Result<Refresh<ImageRepo>, UpdateError> {
    let mut refresh = Refresh::new(&root(repo), now(), limits)?;
    refresh.run(&mut Client::new(repo))?;
    Ok(refresh)
}

fn run_partial(repo: &RepoFixture, limits: Limits) -> Result<Refresh<Director>, UpdateError> {
    let mut refresh = Refresh::partial(&root(repo), now(), limits)?;
    refresh.run(&mut Client::new(repo))?;
    Ok(refresh)
}

/// The rules of the root chain, checked the same way by full and partial verification.
fn root_chain_rules(run: impl Fn(&RepoFixture, Limits) -> Result<u64, UpdateError>) {
    let repo = RepoFixture::new();
    let limits = Limits::default();

    // A good chain: v2 and v3.
    let good = with_roots(
        &repo,
        vec![root_v(&repo, 2, |_| {}), root_v(&repo, 3, |_| {})],
    );
    assert_eq!(run(&good, limits), Ok(3));

    // A skipped version: the file served as 2.root.json is version 3.
    let skipped = with_roots(&repo, vec![root_v(&repo, 3, |_| {})]);
    assert!(matches!(
        run(&skipped, limits),
        Err(UpdateError::VersionMismatch {
            expected: 2,
            found: 3,
            ..
        })
    ));

    // The same version again, or an older one, is a rollback.
    let same = with_roots(&repo, vec![root_v(&repo, 1, |_| {})]);
    assert!(matches!(
        run(&same, limits),
        Err(UpdateError::Rollback { trusted: 1, .. })
    ));

    // A forged version field: version 3 relabelled 2 without the keys to sign it.
    let v3 = root_v(&repo, 3, |_| {});
    let mut forged: Value = serde_json::from_slice(&v3).unwrap();
    forged["signed"]["version"] = 2.into();
    let forged = with_roots(&repo, vec![serde_json::to_vec(&forged).unwrap()]);
    let err = run(&forged, limits).unwrap_err();
    assert!(
        matches!(err, UpdateError::Verify(VerifyError::Threshold { .. })),
        "{err}"
    );
    assert_eq!(err.attack(), AttackKind::ArbitrarySoftware);

    // Too many rotations: past the cap the chain stops (TUF §5.3.3), so metadata only the
    // newer roots' keys sign is refused.
    let capped = Limits {
        max_root_rotations: 1,
        ..limits
    };
    assert_eq!(run(&good, capped), Ok(2));

    // An expired final root is a freeze attack; an expired intermediate one is not.
    let expired = |s: &mut Value| s["expires"] = crate::time::format_expires(&earlier()).into();
    let final_expired = with_roots(&repo, vec![root_v(&repo, 2, expired)]);
    let err = run(&final_expired, limits).unwrap_err();
    assert!(matches!(err, UpdateError::Expired { ref role, .. } if role == "root"));
    assert_eq!(err.attack(), AttackKind::Freeze);
    let intermediate_expired = with_roots(
        &repo,
        vec![root_v(&repo, 2, expired), root_v(&repo, 3, |_| {})],
    );
    assert_eq!(run(&intermediate_expired, limits), Ok(3));
}

#[test]
fn full_verification_enforces_the_root_chain() {
    root_chain_rules(|repo, limits| {
        run_full(repo, limits).map(|r| r.trusted().root().common.version)
    });
}

#[test]
fn partial_verification_enforces_the_root_chain() {
    root_chain_rules(|repo, limits| {
        run_partial(repo, limits).map(|r| r.trusted().root().common.version)
    });
}

/// A repository whose root v2 replaces the targets key, and whose top-level targets are
/// signed only with the new one.
fn rotated_targets_key(repo: &RepoFixture) -> RepoFixture {
    let mut repo = repo.clone();
    let current: Value = serde_json::from_slice(repo.initial_root()).unwrap();
    let old: Root = serde_json::from_value(current["signed"].clone()).unwrap();
    let builder = RootBuilder::from_root(&old, 2, later())
        .remove_key("targets", &repo.targets_key.key_id())
        .key("targets", key(50).public_key());
    repo.rotate_root(builder, vec![key(1)]);
    repo.targets_key = key(50);
    repo.publish();
    repo
}

#[test]
fn past_the_rotation_cap_newer_keys_are_not_trusted() {
    let repo = rotated_targets_key(&RepoFixture::new());
    let capped = Limits {
        max_root_rotations: 0,
        ..Limits::default()
    };
    for result in [
        run_full(&repo, capped).map(|_| ()),
        run_partial(&repo, capped).map(|_| ()),
    ] {
        assert!(
            matches!(
                result,
                Err(UpdateError::Verify(VerifyError::Threshold { ref role, .. })) if role == "targets"
            ),
            "{result:?}"
        );
    }
    run_full(&repo, Limits::default()).unwrap();
    run_partial(&repo, Limits::default()).unwrap();
}

#[test]
fn the_root_chain_type_owns_the_rules() {
    let repo = RepoFixture::new();
    let mut chain = RootChain::new(&root(&repo), 512_000, 1).unwrap();
    assert_eq!(chain.next_version(), 2);
    assert!(matches!(
        chain.apply(&Raw::new(root_v(&repo, 3, |_| {}))),
        Err(UpdateError::VersionMismatch { .. })
    ));
    chain.apply(&Raw::new(root_v(&repo, 2, |_| {}))).unwrap();
    assert_eq!(chain.rotations(), 1);
    assert_eq!(
        chain.apply(&Raw::new(root_v(&repo, 3, |_| {}))),
        Err(UpdateError::TooManyRootRotations(1))
    );
    assert!(
        chain
            .check_final(crate::time::parse_expires("2040-01-01T00:00:00Z").unwrap())
            .is_err()
    );
    chain.check_final(now()).unwrap();
    let small = RootChain::new(&root(&repo), 10, 1).unwrap_err();
    assert_eq!(small.attack(), AttackKind::EndlessData);
}

#[test]
fn targets_older_than_the_previous_accepted_are_a_rollback() {
    let mut repo = RepoFixture::new();
    repo.publish();
    repo.publish();
    // Targets v3 now; the ECU accepted v4 before.
    let full = Refresh::<ImageRepo>::new(&root(&repo), now(), Limits::default())
        .unwrap()
        .with_previous_targets_version(Some(4));
    let partial = Refresh::partial(&root(&repo), now(), Limits::default())
        .unwrap()
        .with_previous_targets_version(Some(4));
    let mut full = full;
    let mut partial = partial;
    for err in [
        full.run(&mut Client::new(&repo)).unwrap_err(),
        partial.run(&mut Client::new(&repo)).unwrap_err(),
    ] {
        assert_eq!(
            err,
            UpdateError::Rollback {
                role: "targets".into(),
                trusted: 4,
                new: 3
            }
        );
    }
    // Refused before they were admitted: nothing of them is trusted.
    assert!(full.trusted().targets().is_none());
    assert!(partial.trusted().targets().is_none());
    assert_eq!(partial.next(), Step::Done);
    let mut same = Refresh::partial(&root(&repo), now(), Limits::default())
        .unwrap()
        .with_previous_targets_version(Some(3));
    same.run(&mut Client::new(&repo)).unwrap();
}

#[test]
fn partial_verification_checks_signature_size_and_expiry_of_targets() {
    let repo = RepoFixture::new();
    let run = |repo: &RepoFixture| run_partial(repo, Limits::default()).map(|_| ());
    let mut unsigned = repo.clone();
    let bytes = TargetsBuilder::new(5, later()).sign(&[&key(77)]).unwrap();
    unsigned
        .targets_files
        .insert("targets".into(), bytes.clone());
    assert_eq!(
        run(&unsigned).unwrap_err().attack(),
        AttackKind::ArbitrarySoftware
    );
    let mut expired = repo.clone();
    let bytes = TargetsBuilder::new(5, earlier())
        .sign(&[&repo.targets_key])
        .unwrap();
    expired.targets_files.insert("targets".into(), bytes);
    assert_eq!(run(&expired).unwrap_err().attack(), AttackKind::Freeze);
    let small = Limits {
        targets: 10,
        ..Limits::default()
    };
    assert_eq!(
        run_partial(&repo, small).unwrap_err().attack(),
        AttackKind::EndlessData
    );
    // Partial verification asks for the root chain and the Director targets only.
    let mut client = Client::new(&repo);
    let mut refresh = partial(&repo);
    refresh.run(&mut client).unwrap();
    assert_eq!(
        client.log,
        ["2.root.json", "targets.json", "keep targets.json"]
    );
}

#[test]
fn a_kept_timestamp_is_the_rollback_reference() {
    let mut repo = RepoFixture::new();
    let old = repo.timestamp.clone();
    repo.publish_timestamp_only();
    let replay = with_timestamp(&repo, old);
    let mut client = Client::new(&replay);
    client
        .kept
        .insert("timestamp".into(), repo.timestamp.clone());
    let err = full(&repo).run(&mut client).unwrap_err();
    assert!(matches!(err, UpdateError::Rollback { ref role, .. } if role == "timestamp"));
}

fn with_timestamp(repo: &RepoFixture, timestamp: Vec<u8>) -> RepoFixture {
    let mut repo = repo.clone();
    repo.timestamp = timestamp;
    repo
}

#[test]
fn searches_delegations_and_lists_the_roles_loaded() {
    let mut repo = RepoFixture::new();
    repo.delegate_all(
        &key(40),
        &[
            ("targets", "a", false),
            ("a", "c", false),
            ("targets", "b", false),
        ],
    );
    repo.add_delegated_target("b", "x", b"from b");
    repo.publish();
    let mut client = Client::new(&repo);
    let mut refresh = full(&repo);
    refresh.run(&mut client).unwrap();
    assert!(refresh.delegated_roles().is_empty());
    // A search after the refresh went Done resumes it.
    refresh.find("x");
    refresh.find("nowhere");
    refresh.run(&mut client).unwrap();
    assert_eq!(refresh.target("x").unwrap().role(), "b");
    assert!(refresh.target("nowhere").is_none());
    assert_eq!(refresh.delegated_roles(), ["a", "c", "b"]);
    // A delegated role the repository does not serve is a dropped request.
    let mut dropped = repo.clone();
    dropped.targets_files.remove("c");
    let mut refresh = full(&dropped);
    refresh.find("x");
    assert!(matches!(
        refresh.run(&mut Client::new(&dropped)),
        Err(UpdateError::Missing { .. })
    ));
}

#[test]
fn the_publisher_view_renews_expired_metadata_and_walks_every_role() {
    let mut repo = RepoFixture::new();
    let k = key(41);
    repo.delegate(
        "targets",
        delegated_role("a", &[k.public_key()], 1, &["*"], false),
        vec![k.clone()],
    );
    repo.delegate(
        "targets",
        delegated_role("unpublished", &[k.public_key()], 1, &["*"], false),
        vec![k.clone()],
    );
    repo.expires = earlier();
    repo.publish();
    // Delegated, but its metadata never published: not in snapshot, so skipped.
    repo.delegated.remove("unpublished");
    repo.targets_files.remove("unpublished");
    repo.publish_snapshot_only();
    let mut client = Client::new(&repo);
    let mut refresh = Refresh::<Published>::for_publisher(&root(&repo), Limits::default()).unwrap();
    refresh.run(&mut client).unwrap();
    assert!(!client.log.iter().any(|l| l.starts_with("kept")));
    let set = refresh.into_trusted();
    assert_eq!(set.viewpoint(), Viewpoint::Publisher);
    let roles: Vec<&str> = set.roles().map(|(name, _)| name).collect();
    assert_eq!(roles, ["a", "targets"]);
    assert!(set.online_keys_current());
    // A client refuses the same expired repository.
    assert_eq!(
        run_full(&repo, Limits::default()).unwrap_err().attack(),
        AttackKind::Freeze
    );
}

#[test]
fn the_publisher_view_accepts_online_metadata_of_an_earlier_root() {
    let mut repo = RepoFixture::new();
    let current: Value = serde_json::from_slice(repo.initial_root()).unwrap();
    let old: Root = serde_json::from_value(current["signed"].clone()).unwrap();
    let builder = RootBuilder::from_root(&old, 2, later())
        .remove_key("timestamp", &repo.timestamp_key.key_id())
        .key("timestamp", key(60).public_key());
    repo.rotate_root(builder, vec![key(1)]);
    // Interrupted before re-signing: the timestamp is still the old key's.
    let mut refresh = Refresh::<Published>::for_publisher(&root(&repo), Limits::default()).unwrap();
    refresh.run(&mut Client::new(&repo)).unwrap();
    assert!(!refresh.trusted().online_keys_current());
    assert_eq!(refresh.trusted().root().common.version, 2);
    // A client refuses it.
    assert!(matches!(
        run_full(&repo, Limits::default()),
        Err(UpdateError::Verify(VerifyError::Threshold { ref role, .. })) if role == "timestamp"
    ));
}

#[test]
fn a_delegation_for_other_hardware_is_not_followed_for_this_ecu() {
    let mut repo = RepoFixture::new();
    let supplier = key(41);
    let mut role = delegated_role("acme", &[supplier.public_key()], 1, &["acme/*"], false);
    role.hardware_ids = Some(vec!["hw-acme".into()]);
    repo.delegate("targets", role, vec![supplier]);
    repo.add_delegated_target("acme", "acme/ctl.bin", b"controller");
    repo.publish();
    let mut client = Client::new(&repo);
    let mut refresh = full(&repo);
    let acme: crate::ids::HardwareId = "hw-acme".parse().unwrap();
    let brake: crate::ids::HardwareId = "hw-brake".parse().unwrap();
    refresh.find_for_hardware("acme/ctl.bin", &brake);
    refresh.find_for_hardware("acme/ctl.bin", &acme);
    refresh.find("acme/ctl.bin");
    refresh.run(&mut client).unwrap();
    // For a brake ECU the supplier's role is not consulted, so nothing lists the image ...
    assert_eq!(refresh.target_for_hardware("acme/ctl.bin", &brake), None);
    // ... while for the hardware it names (and for a search for any hardware) it is found.
    let found = refresh.target_for_hardware("acme/ctl.bin", &acme).unwrap();
    assert_eq!(found.role(), "acme");
    assert_eq!(refresh.target("acme/ctl.bin").unwrap().role(), "acme");
}
