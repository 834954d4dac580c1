//! What a Secondary checks before it accepts anything: full verification (both
//! repositories, only its own image, Uptane §5.4.4.2) or partial verification (Director
//! targets only, §5.4.4.1), against the roots it trusts and what it has already accepted.

use std::collections::HashMap;

use proto::v1::PutMetadataRequest;
use uptane_core::metadata::Root;
use uptane_core::time::UtcTime;
use uptane_core::trusted::{Director, ImageRepo, Limits, SearchStep, TargetSearch, TrustedSet};
use uptane_core::uptane::{
    ApprovedImage, EcuIdentity, UptaneError, approve, director_target_for, verify_partial,
};
use uptane_core::verify::{Raw, Verified, verify_root_rotation, verify_root_self_signed};

/// This ECU and what it runs.
#[derive(Debug, Clone)]
pub struct Ecu<'a> {
    /// Vehicle, serial, hardware id and installed release counter.
    pub identity: EcuIdentity<'a>,
    /// The Director root it trusts.
    pub director_root: &'a [u8],
    /// The Image repository root it trusts (full verification).
    pub image_root: Option<&'a [u8]>,
    /// Version of the Director targets it last accepted.
    pub previous_targets_version: Option<u64>,
}

/// What verification accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The image for this ECU, if one is assigned.
    pub image: Option<ApprovedImage>,
    /// The accepted Director targets version.
    pub targets_version: u64,
    /// The newest trusted Director root (to persist).
    pub director_root: Vec<u8>,
    /// The newest trusted Image repository root (to persist), in full verification.
    pub image_root: Option<Vec<u8>>,
}

fn version_of(bytes: &[u8]) -> Option<u64> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    doc.get("signed")?.get("version")?.as_u64()
}

/// The root versions after `current`, in the order sent: the Primary sends every version it
/// has, and those up to `current` are already trusted here.
fn newer(roots: &[Vec<u8>], current: u64) -> impl Iterator<Item = &Vec<u8>> {
    roots
        .iter()
        .filter(move |bytes| version_of(bytes).is_none_or(|v| v > current))
}

/// Applies the root versions after the trusted one, in order (older ones are skipped).
fn rotate(trusted: Verified<Root>, roots: &[Vec<u8>]) -> Result<Verified<Root>, UptaneError> {
    let mut root = trusted;
    for bytes in newer(roots, root.common.version) {
        root = verify_root_rotation(&root, &Raw::new(bytes.clone()))
            .map_err(uptane_core::error::UpdateError::from)?;
    }
    Ok(root)
}

/// Partial verification of the Director targets in `bundle`.
pub fn partial(
    ecu: &Ecu<'_>,
    bundle: &PutMetadataRequest,
    now: UtcTime,
) -> Result<Accepted, UptaneError> {
    let trusted = verify_root_self_signed(&Raw::new(ecu.director_root.to_vec()))
        .map_err(uptane_core::error::UpdateError::from)?;
    let root = rotate(trusted, &bundle.director_roots)?;
    let result = verify_partial(
        &root,
        &Raw::new(bundle.director_targets.clone()),
        ecu.previous_targets_version,
        now,
        &ecu.identity,
        Limits::default().targets,
    )?;
    Ok(Accepted {
        image: result.image,
        targets_version: result.targets.common.version,
        director_root: root.as_bytes().to_vec(),
        image_root: None,
    })
}

fn load<R>(
    trusted_root: &[u8],
    roots: &[Vec<u8>],
    timestamp: &[u8],
    snapshot: &[u8],
    targets: &[u8],
    now: UtcTime,
) -> Result<TrustedSet<R>, UptaneError> {
    let mut set = TrustedSet::<R>::new(&Raw::new(trusted_root.to_vec()), now, Limits::default())?;
    for bytes in newer(roots, set.root().common.version) {
        set.update_root(&Raw::new(bytes.clone()))?;
    }
    set.update_timestamp(&Raw::new(timestamp.to_vec()))?;
    set.update_snapshot(&Raw::new(snapshot.to_vec()))?;
    set.update_targets(&Raw::new(targets.to_vec()))?;
    Ok(set)
}

/// Full verification: the Director's metadata, then the Image repository's, then the
/// match of this ECU's image in both.
pub fn full(
    ecu: &Ecu<'_>,
    bundle: &PutMetadataRequest,
    now: UtcTime,
) -> Result<Accepted, UptaneError> {
    let director: TrustedSet<Director> = load(
        ecu.director_root,
        &bundle.director_roots,
        &bundle.director_timestamp,
        &bundle.director_snapshot,
        &bundle.director_targets,
        now,
    )?;
    let targets_version = director.targets().map_or(0, |t| t.common.version);
    if let Some(previous) = ecu.previous_targets_version
        && targets_version < previous
    {
        return Err(uptane_core::error::UpdateError::Rollback {
            role: "targets".into(),
            trusted: previous,
            new: targets_version,
        }
        .into());
    }
    let entry = director_target_for(
        &director,
        ecu.identity.vin,
        ecu.identity.ecu_serial,
        ecu.identity.hardware_id,
    )?;
    let image_root = ecu.image_root.ok_or(UptaneError::NoDirectorTargets)?;
    let mut images: TrustedSet<ImageRepo> = load(
        image_root,
        &bundle.image_roots,
        &bundle.image_timestamp,
        &bundle.image_snapshot,
        &bundle.image_targets,
        now,
    )?;
    let image = match entry {
        None => None,
        Some(entry) => {
            let delegations: &HashMap<String, Vec<u8>> = &bundle.image_delegations;
            let mut search = TargetSearch::new(&entry.path);
            let found = loop {
                match search.step(&images) {
                    SearchStep::Load { role, delegator } => {
                        let bytes = delegations
                            .get(&role)
                            .ok_or_else(|| UptaneError::ImageNotFound(entry.path.clone()))?;
                        images.update_delegated_targets(
                            &Raw::new(bytes.clone()),
                            &role,
                            &delegator,
                        )?;
                    }
                    SearchStep::Found(target) => break target,
                    SearchStep::NotFound => {
                        return Err(UptaneError::ImageNotFound(entry.path.clone()));
                    }
                }
            };
            Some(approve(
                &entry,
                &found,
                Some(ecu.identity.installed_release_counter),
            )?)
        }
    };
    Ok(Accepted {
        image,
        targets_version,
        director_root: director.root().as_bytes().to_vec(),
        image_root: Some(images.root().as_bytes().to_vec()),
    })
}
