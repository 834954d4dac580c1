//! Step 2 of the cycle (Uptane §5.4.4.2): full verification of the Director, then of the
//! Image repository, then the match of every Director target; the result is a [`Plan`]: the
//! approved images and the metadata each Secondary needs (§5.4.2.6).

use std::collections::BTreeMap;

use proto::v2::PutMetadataRequest;
use uptane_core::error::AttackKind;
use uptane_core::ids::{EcuSerial, HardwareId};
use uptane_core::time::{Evidence, UtcTime};
use uptane_core::trusted::{Director, ImageRepo};
use uptane_core::uptane::{
    ApprovedImage, UptaneError, approve, director_targets, time_evidence, update_correlation_id,
};

use super::Primary;
use crate::ports::{ImageRepoPort, Ports};
use crate::repo::{ClientError, MetadataDir, RefreshOutcome, Updater};

/// The verified plan of one cycle: what goes where, with the metadata to forward.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) targets_version: u64,
    /// The update id of an ECU the targets assign nothing (`update_correlation_id`).
    pub(super) correlation_id: String,
    /// The update id of each ECU the targets assign an image.
    pub(super) correlations: BTreeMap<EcuSerial, String>,
    /// Each approved image with where to download it.
    pub(super) images: Vec<(ApprovedImage, String)>,
    pub(super) director_bundle: PutMetadataRequest,
    pub(super) image_bundle: PutMetadataRequest,
}

impl Plan {
    /// The id of `serial`'s update.
    pub(super) fn correlation_for(&self, serial: &EcuSerial) -> &str {
        self.correlations
            .get(serial)
            .unwrap_or(&self.correlation_id)
    }
}

/// A refusal at the verification step.
#[derive(Debug)]
pub(super) enum Refusal {
    Attack(AttackKind, String),
    Failed(String),
}

impl From<ClientError> for Refusal {
    fn from(e: ClientError) -> Self {
        match e.attack() {
            Some(kind) => Refusal::Attack(kind, e.to_string()),
            None => Refusal::Failed(e.to_string()),
        }
    }
}

impl From<UptaneError> for Refusal {
    fn from(e: UptaneError) -> Self {
        Refusal::Attack(e.attack(), e.to_string())
    }
}

impl<P: Ports> Primary<P> {
    /// Full verification of both repositories and the match of every Director target.
    /// `None` when nothing changed and nothing is pending.
    /// `evidence` gets what the Director's metadata says about the time once it verified.
    pub(super) async fn verify(
        &mut self,
        now: UtcTime,
        evidence: &mut Option<Evidence>,
    ) -> Result<Option<Plan>, Refusal> {
        let limits = self.settings.limits();
        let mut director = Updater::<Director, _>::new(
            &self.director,
            MetadataDir::with_root_history(self.files.director_metadata()),
            now,
            limits,
        )?
        .hold_until_kept();
        let outcome = director.refresh().await?;
        let ecus: BTreeMap<EcuSerial, HardwareId> = self
            .inventory
            .iter()
            .map(|e| (e.serial.clone(), e.hardware_id.clone()))
            .collect();
        // This vehicle's metadata (its VIN, its ECUs) before any of it is kept, or believed
        // about the time.
        let assigned = director_targets(director.trusted(), &self.settings.vin, &ecus)?;
        director.keep_held()?;
        *evidence = time_evidence(director.trusted())?;
        let targets = director
            .trusted()
            .targets()
            .ok_or(UptaneError::NoDirectorTargets)?;
        let targets_version = targets.common.version;
        if outcome == RefreshOutcome::Unchanged
            && self.state.completed_targets_version == Some(targets_version)
        {
            return Ok(None);
        }
        let correlation = update_correlation_id(targets, None);
        let correlations = assigned
            .iter()
            .map(|t| {
                (
                    t.ecu_serial.clone(),
                    update_correlation_id(targets, Some(t)),
                )
            })
            .collect();

        let mut images = Updater::<ImageRepo, _>::new(
            &self.images,
            MetadataDir::with_root_history(self.files.image_metadata()),
            now,
            limits,
        )?;
        images.refresh().await?;
        let mut approved = Vec::new();
        for target in &assigned {
            let found = match images
                .find_target_for_hardware(&target.path, &target.hardware_id)
                .await
            {
                Ok(found) => found,
                Err(ClientError::TargetNotFound(path)) => {
                    return Err(UptaneError::ImageNotFound(path).into());
                }
                Err(e) => return Err(e.into()),
            };
            let installed = self
                .running_image(&target.ecu_serial)
                .map(|i| i.release_counter);
            let image = approve(target, &found, installed)?;
            let location =
                images.target_url(self.images.targets_base(), &target.path, found.info());
            approved.push((image, location));
        }
        let director_bundle = bundle_of(director.dir(), &[], &correlation, true)?;
        let image_bundle = bundle_of(images.dir(), images.delegated_roles(), &correlation, false)?;
        Ok(Some(Plan {
            targets_version,
            correlation_id: correlation,
            correlations,
            images: approved,
            director_bundle,
            image_bundle,
        }))
    }
}

/// The Director's files to forward: every root version kept (the ECU skips those it
/// trusts), timestamp, snapshot and targets, as received. For the Image repository, the
/// delegated roles searched as well.
pub(super) fn bundle_of(
    dir: &MetadataDir,
    delegated: &[String],
    correlation_id: &str,
    director: bool,
) -> Result<PutMetadataRequest, Refusal> {
    let load = |role: &str| {
        dir.load(role)
            .ok_or_else(|| Refusal::Failed(format!("trusted {role} metadata is not kept")))
    };
    let roots = dir
        .root_history()
        .map_err(|e| Refusal::Failed(e.to_string()))?;
    let (timestamp, snapshot, targets) = (load("timestamp")?, load("snapshot")?, load("targets")?);
    let mut bundle = PutMetadataRequest {
        correlation_id: correlation_id.to_string(),
        ..Default::default()
    };
    if director {
        bundle.director_roots = roots;
        bundle.director_timestamp = timestamp;
        bundle.director_snapshot = snapshot;
        bundle.director_targets = targets;
    } else {
        bundle.image_roots = roots;
        bundle.image_timestamp = timestamp;
        bundle.image_snapshot = snapshot;
        bundle.image_targets = targets;
        for role in delegated {
            bundle.image_delegations.insert(role.clone(), load(role)?);
        }
    }
    Ok(bundle)
}

/// Partial verification needs the Director's roots and targets only (Uptane §5.4.4.1).
pub(super) fn partial_bundle(director: &PutMetadataRequest) -> PutMetadataRequest {
    PutMetadataRequest {
        correlation_id: director.correlation_id.clone(),
        director_roots: director.director_roots.clone(),
        director_targets: director.director_targets.clone(),
        ..Default::default()
    }
}

pub(super) fn full_bundle(
    director: &PutMetadataRequest,
    images: &PutMetadataRequest,
) -> PutMetadataRequest {
    PutMetadataRequest {
        image_roots: images.image_roots.clone(),
        image_timestamp: images.image_timestamp.clone(),
        image_snapshot: images.image_snapshot.clone(),
        image_targets: images.image_targets.clone(),
        image_delegations: images.image_delegations.clone(),
        ..director.clone()
    }
}
