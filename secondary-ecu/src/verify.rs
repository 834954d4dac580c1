//! What a Secondary checks before it accepts anything: full verification (both
//! repositories, only its own image, Uptane §5.4.4.2) or partial verification (Director
//! targets only, §5.4.4.1), against the roots it trusts and what it has already accepted.
//!
//! Both are adapters over `uptane_core::refresh::Refresh`, the one TUF workflow: the
//! metadata comes from the bundle the Primary sent instead of from the network.

use std::collections::{BTreeMap, HashMap};

use proto::v2::PutMetadataRequest;
use uptane_core::error::UpdateError;
use uptane_core::refresh::{self, MetadataFile, MetadataSource, Refresh};
use uptane_core::time::{Evidence, UtcTime};
use uptane_core::trusted::{Director, ImageRepo, Limits, TrustedSet};
use uptane_core::uptane::{
    ApprovedImage, DirectorTarget, EcuIdentity, UptaneError, approve, director_target_for,
    time_evidence, update_correlation_id, verify_partial,
};
use uptane_core::verify::Raw;

/// This ECU and what it runs.
#[derive(Debug, Clone)]
pub struct Ecu<'a> {
    /// Vehicle, serial, hardware id and installed release counter.
    pub identity: EcuIdentity<'a>,
    /// The Director root it trusts.
    pub director_root: &'a [u8],
    /// Version of the Director targets it last accepted.
    pub previous_targets_version: Option<u64>,
    /// In full verification, the timestamp, snapshot and targets roles of each repository
    /// it last accepted: none of them may go back (TUF §5.4.3, §5.5.5, §5.6.5).
    pub kept: &'a KeptMetadata,
}

/// Metadata a full-verification ECU keeps from the last bundle it accepted, by repository
/// and role (exact bytes, as the repository signed them; roots are kept separately).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptMetadata {
    /// The Director's timestamp, snapshot and targets.
    pub director: BTreeMap<String, String>,
    /// The Image repository's timestamp, snapshot, targets and delegated roles.
    pub image_repo: BTreeMap<String, String>,
}

/// What verification accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The image for this ECU, if one is assigned.
    pub image: Option<ApprovedImage>,
    /// What the Director's verified metadata says about the time.
    pub time: Option<Evidence>,
    /// The accepted Director targets version.
    pub targets_version: u64,
    /// The update's correlation id, as the Director signed it (`update_correlation_id`:
    /// protocol version 3).
    pub correlation_id: String,
    /// The targets' own correlation id, which a Primary speaking protocol version 2 names
    /// every update by.
    pub vehicle_correlation_id: String,
    /// The newest trusted Director root (to persist).
    pub director_root: Vec<u8>,
    /// The newest trusted Image repository root (to persist), in full verification.
    pub image_root: Option<Vec<u8>>,
    /// What to keep for the next bundle, in full verification.
    pub kept: Option<KeptMetadata>,
}

/// One repository's metadata as the Primary forwarded it. Roots are looked up by the version
/// they claim, which is only an index: the refresh reads the version from what the
/// signatures cover and accepts exactly N+1, so a root filed under a forged version is
/// refused, never applied out of order.
struct Bundle<'a> {
    roots: &'a [Vec<u8>],
    timestamp: &'a [u8],
    snapshot: &'a [u8],
    targets: &'a [u8],
    delegations: Option<&'a HashMap<String, Vec<u8>>>,
    /// What was accepted before (read back as the trusted copies), then what this
    /// refresh admitted on top of it.
    kept: BTreeMap<String, String>,
}

impl<'a> Bundle<'a> {
    fn director(bundle: &'a PutMetadataRequest) -> Self {
        Self {
            roots: &bundle.director_roots,
            timestamp: &bundle.director_timestamp,
            snapshot: &bundle.director_snapshot,
            targets: &bundle.director_targets,
            delegations: None,
            kept: BTreeMap::new(),
        }
    }

    fn image_repo(bundle: &'a PutMetadataRequest) -> Self {
        Self {
            roots: &bundle.image_roots,
            timestamp: &bundle.image_timestamp,
            snapshot: &bundle.image_snapshot,
            targets: &bundle.image_targets,
            delegations: Some(&bundle.image_delegations),
            kept: BTreeMap::new(),
        }
    }

    fn keeping(mut self, kept: &BTreeMap<String, String>) -> Self {
        self.kept = kept.clone();
        self
    }

    fn root(&self, version: u64) -> Option<&'a [u8]> {
        self.roots
            .iter()
            .find(|bytes| claimed_version(bytes) == Some(version))
            .map(Vec::as_slice)
    }
}

/// The version a root says it is, unverified.
fn claimed_version(bytes: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        signed: Signed,
    }
    #[derive(serde::Deserialize)]
    struct Signed {
        version: u64,
    }
    serde_json::from_slice::<Envelope>(bytes)
        .ok()
        .map(|e| e.signed.version)
}

impl MetadataSource for Bundle<'_> {
    type Error = UpdateError;

    fn fetch(&mut self, file: &MetadataFile, _: u64) -> Result<Option<Vec<u8>>, UpdateError> {
        let bytes = match (file.role(), file.version()) {
            ("root", Some(version)) => self.root(version),
            ("timestamp", _) => Some(self.timestamp),
            ("snapshot", _) => Some(self.snapshot),
            ("targets", _) => Some(self.targets),
            (role, _) => self
                .delegations
                .and_then(|d| d.get(role))
                .map(Vec::as_slice),
        };
        // An empty field is one the Primary did not send.
        Ok(bytes.filter(|b| !b.is_empty()).map(<[u8]>::to_vec))
    }

    fn read_kept(&mut self, file: &MetadataFile) -> Result<Option<Vec<u8>>, UpdateError> {
        Ok(self.kept.get(file.role()).map(|k| k.as_bytes().to_vec()))
    }

    fn keep(&mut self, accepted: refresh::Accepted) -> Result<(), UpdateError> {
        // Roots are kept apart (the newest one is the trust anchor).
        if accepted.file.role() != "root"
            && let Ok(text) = std::str::from_utf8(&accepted.bytes)
        {
            self.kept
                .insert(accepted.file.role().to_string(), text.to_string());
        }
        Ok(())
    }
}

/// The id of this ECU's update as the Director signed it (`update_correlation_id`).
fn signed_correlation_id(
    director: &TrustedSet<Director>,
    entry: Option<&DirectorTarget>,
) -> String {
    director
        .targets()
        .map(|t| update_correlation_id(t, entry))
        .unwrap_or_default()
}

/// Partial verification of the Director targets in `bundle`.
pub fn partial(
    ecu: &Ecu<'_>,
    bundle: &PutMetadataRequest,
    now: UtcTime,
) -> Result<Accepted, UptaneError> {
    let root = Raw::new(ecu.director_root.to_vec());
    let mut director = Refresh::<Director>::partial(&root, now, Limits::default())?
        .with_previous_targets_version(ecu.previous_targets_version);
    director.run(&mut Bundle::director(bundle))?;
    let image = verify_partial(director.trusted(), &ecu.identity)?;
    let trusted = director.into_trusted();
    let correlation_id =
        signed_correlation_id(&trusted, image.as_ref().map(ApprovedImage::director_target));
    Ok(Accepted {
        image,
        time: time_evidence(&trusted)?,
        correlation_id,
        vehicle_correlation_id: signed_correlation_id(&trusted, None),
        targets_version: trusted.targets().map_or(0, |t| t.common.version),
        director_root: trusted.root().as_bytes().to_vec(),
        image_root: None,
        kept: None,
    })
}

/// Full verification: the Director's metadata, then the Image repository's, then the
/// match of this ECU's image in both.
pub fn full(
    ecu: &Ecu<'_>,
    image_root: &[u8],
    bundle: &PutMetadataRequest,
    now: UtcTime,
) -> Result<Accepted, UptaneError> {
    let root = Raw::new(ecu.director_root.to_vec());
    let mut director = Refresh::<Director>::new(&root, now, Limits::default())?
        .with_previous_targets_version(ecu.previous_targets_version);
    let mut director_source = Bundle::director(bundle).keeping(&ecu.kept.director);
    director.run(&mut director_source)?;
    let entry = director_target_for(
        director.trusted(),
        ecu.identity.vin,
        ecu.identity.ecu_serial,
        ecu.identity.hardware_id,
    )?;
    let root = Raw::new(image_root.to_vec());
    let mut images = Refresh::<ImageRepo>::new(&root, now, Limits::default())?;
    if let Some(entry) = &entry {
        images.find_for_hardware(&entry.path, ecu.identity.hardware_id);
    }
    let mut image_source = Bundle::image_repo(bundle).keeping(&ecu.kept.image_repo);
    images.run(&mut image_source)?;
    let correlation_id = signed_correlation_id(director.trusted(), entry.as_ref());
    let image = match entry {
        None => None,
        Some(entry) => {
            let found = images
                .target_for_hardware(&entry.path, ecu.identity.hardware_id)
                .ok_or_else(|| UptaneError::ImageNotFound(entry.path.clone()))?;
            Some(approve(
                &entry,
                found,
                Some(ecu.identity.installed_release_counter),
            )?)
        }
    };
    let director = director.into_trusted();
    Ok(Accepted {
        image,
        time: time_evidence(&director)?,
        correlation_id,
        vehicle_correlation_id: signed_correlation_id(&director, None),
        targets_version: director.targets().map_or(0, |t| t.common.version),
        director_root: director.root().as_bytes().to_vec(),
        image_root: Some(images.trusted().root().as_bytes().to_vec()),
        kept: Some(KeptMetadata {
            director: director_source.kept,
            image_repo: image_source.kept,
        }),
    })
}

#[cfg(test)]
mod tests {
    //! The root-chain rules on the Secondary's path: the bundle the Primary forwards, in
    //! both verification modes.

    use serde_json::Value;
    use uptane_core::error::{AttackKind, VerifyError};
    use uptane_core::sign::{TargetsBuilder, sign_value};
    use uptane_core::testing::{RepoFixture, earlier, key, now};
    use uptane_core::uptane::{
        director_target_custom, director_targets_custom, image_target_custom,
    };

    use super::*;

    const VIN: &str = "VIN1";
    const SERIAL: &str = "ECU-1";
    const HW: &str = "hw-1";

    fn repos() -> (RepoFixture, RepoFixture) {
        let mut images = RepoFixture::new();
        images.add_target("fw.bin", b"fw", Some(image_target_custom(&[HW], 1)));
        images.publish();
        let mut director = RepoFixture::new();
        director.targets = TargetsBuilder::new(0, director.expires)
            .target("fw.bin", b"fw", Some(director_target_custom(SERIAL, HW, 1)))
            .custom(director_targets_custom(VIN, "c1"))
            .build();
        director.publish();
        (director, images)
    }

    /// Root version `version`, re-signed by the fixture's root key after `edit`.
    fn root_v(repo: &RepoFixture, version: u64, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut doc: Value = serde_json::from_slice(repo.initial_root()).unwrap();
        doc["signed"]["version"] = version.into();
        edit(&mut doc["signed"]);
        sign_value(&doc["signed"], &[&key(1)]).unwrap()
    }

    fn bundle(
        director: &RepoFixture,
        images: &RepoFixture,
        roots: Vec<Vec<u8>>,
    ) -> PutMetadataRequest {
        PutMetadataRequest {
            correlation_id: "c1".into(),
            director_roots: roots,
            director_timestamp: director.timestamp.clone(),
            director_snapshot: director.snapshot.clone(),
            director_targets: director.targets_files["targets"].clone(),
            image_roots: vec![],
            image_timestamp: images.timestamp.clone(),
            image_snapshot: images.snapshot.clone(),
            image_targets: images.targets_files["targets"].clone(),
            image_delegations: Default::default(),
        }
    }

    /// Verifies `roots` (forwarded as the Primary sends them, version 1 included) in `mode`.
    fn verify(full_mode: bool, roots: Vec<Vec<u8>>) -> Result<Accepted, UptaneError> {
        let (director, images) = repos();
        let (vin, serial, hw) = (
            VIN.parse().unwrap(),
            SERIAL.parse().unwrap(),
            HW.parse().unwrap(),
        );
        let ecu = Ecu {
            identity: EcuIdentity {
                vin: &vin,
                ecu_serial: &serial,
                hardware_id: &hw,
                installed_release_counter: 0,
            },
            director_root: director.initial_root(),
            previous_targets_version: None,
            kept: &KeptMetadata::default(),
        };
        let mut all = vec![director.initial_root().to_vec()];
        all.extend(roots);
        let bundle = bundle(&director, &images, all);
        if full_mode {
            full(&ecu, images.initial_root(), &bundle, now())
        } else {
            partial(&ecu, &bundle, now())
        }
    }

    #[test]
    fn full_verification_keeps_every_role_and_refuses_an_older_image_repository() {
        let (director, mut images) = repos();
        let old = bundle(&director, &images, vec![director.initial_root().to_vec()]);
        images.add_target(
            "other.bin",
            b"other",
            Some(image_target_custom(&["hw-2"], 1)),
        );
        images.publish();
        let new = bundle(&director, &images, vec![director.initial_root().to_vec()]);
        let (vin, serial, hw) = (
            VIN.parse().unwrap(),
            SERIAL.parse().unwrap(),
            HW.parse().unwrap(),
        );
        let ecu = |kept| Ecu {
            identity: EcuIdentity {
                vin: &vin,
                ecu_serial: &serial,
                hardware_id: &hw,
                installed_release_counter: 0,
            },
            director_root: director.initial_root(),
            previous_targets_version: None,
            kept,
        };
        let nothing = KeptMetadata::default();
        let accepted = full(&ecu(&nothing), images.initial_root(), &new, now()).unwrap();
        let kept = accepted.kept.unwrap();
        for role in ["timestamp", "snapshot", "targets"] {
            assert!(kept.image_repo.contains_key(role), "{role}: {kept:?}");
            assert!(kept.director.contains_key(role), "{role}: {kept:?}");
        }
        // The same bundle again (an install re-verifies it) passes ...
        full(&ecu(&kept), images.initial_root(), &new, now()).unwrap();
        // ... the Image repository's earlier metadata, valid on its own, does not.
        let refused = full(&ecu(&kept), images.initial_root(), &old, now()).unwrap_err();
        assert_eq!(refused.attack(), AttackKind::Rollback, "{refused}");
        // Without what was kept, it would have been accepted.
        full(&ecu(&nothing), images.initial_root(), &old, now()).unwrap();
    }

    fn version(accepted: Accepted) -> u64 {
        let doc: Value = serde_json::from_slice(&accepted.director_root).unwrap();
        doc["signed"]["version"].as_u64().unwrap()
    }

    #[test]
    fn both_modes_follow_the_chain_and_refuse_what_breaks_it() {
        let (director, _) = repos();
        for full_mode in [true, false] {
            // The chain in order, whatever order the Primary sent it in.
            let good = vec![root_v(&director, 3, |_| {}), root_v(&director, 2, |_| {})];
            let accepted = verify(full_mode, good).unwrap();
            assert!(accepted.image.is_some());
            assert_eq!(version(accepted), 3);

            // A skipped version: 1 then 3 is not a chain; 3 is never applied.
            let skipped = vec![root_v(&director, 3, |_| {})];
            assert_eq!(version(verify(full_mode, skipped).unwrap()), 1);

            // Filed under a forged version: the bytes of version 3 relabelled 2 are refused,
            // not skipped over or applied out of order.
            let v3 = root_v(&director, 3, |_| {});
            let mut forged: Value = serde_json::from_slice(&v3).unwrap();
            forged["signed"]["version"] = 2.into();
            let err = verify(full_mode, vec![serde_json::to_vec(&forged).unwrap()]).unwrap_err();
            assert!(
                matches!(
                    err,
                    UptaneError::Update(UpdateError::Verify(VerifyError::Threshold { .. }))
                ),
                "{err}"
            );
            assert_eq!(err.attack(), AttackKind::ArbitrarySoftware);

            // More rotations than the limit: the chain stops at the cap.
            let cap = Limits::default().max_root_rotations;
            let many: Vec<Vec<u8>> = (2..=cap + 2)
                .map(|v| root_v(&director, v, |_| {}))
                .collect();
            assert_eq!(version(verify(full_mode, many).unwrap()), cap + 1);

            // An expired final root is a freeze attack.
            let expired = root_v(&director, 2, |s| {
                s["expires"] = uptane_core::time::format_expires(&earlier()).into();
            });
            let err = verify(full_mode, vec![expired]).unwrap_err();
            assert_eq!(err.attack(), AttackKind::Freeze, "{err}");
        }
    }
}
