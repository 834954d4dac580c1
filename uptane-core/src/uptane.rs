//! The Uptane layer over TUF: Director targets checks, matching Director targets against
//! the Image repository, partial verification, and image verification.
//!
//! Custom fields (see `docs/POUF.md`): Image repository targets carry
//! `custom.hardwareIds` (list) and `custom.releaseCounter`; Director targets carry
//! `custom.ecuIdentifiers` (`{serial: {"hardwareId": ...}}`) and `custom.releaseCounter`
//! per target, and a top-level `custom.vin`, `custom.correlationId`, `custom.signedAt` and
//! `custom.timeReset`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::error::{AttackKind, UpdateError};
use crate::hash::{DigestError, Hashes, StreamVerifier};
use crate::ids::{EcuSerial, HardwareId, Vin};
use crate::metadata::{TargetFile, Targets};
use crate::time::{Evidence, UtcTime, format_expires, parse_expires};
use crate::trusted::{Director, ImageRepo, TrustedSet, TrustedTarget};

/// Why Director targets, a match, or an image were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UptaneError {
    /// The TUF workflow refused the metadata.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// No trusted Director targets yet.
    #[error("no trusted Director targets")]
    NoDirectorTargets,
    /// Uptane §5.4.4.6 step 6: Director targets must not delegate.
    #[error("Director targets contain delegations")]
    DirectorDelegates,
    /// Uptane §5.4.4.6 step 7: one ECU named by two targets.
    #[error("ECU {0} appears more than once in Director targets")]
    DuplicateEcu(EcuSerial),
    /// Uptane §5.4.4.6 step 8: a target for an ECU not in this vehicle.
    #[error("Director targets name ECU {0}, which is not in this vehicle")]
    UnknownEcu(EcuSerial),
    /// The Director targets were signed for another vehicle.
    #[error("Director targets are for vehicle {found:?}, not {expected}")]
    WrongVehicle {
        /// Our VIN.
        expected: Vin,
        /// The VIN in the metadata.
        found: String,
    },
    /// An Uptane custom field is missing or malformed.
    #[error("target {target}: {reason}")]
    BadCustom {
        /// Target path.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// The hardware id in Director targets is not the ECU's, or the Image repository does
    /// not list it for the image.
    #[error("target {target}: hardware id {hardware_id:?} does not match {expected}")]
    WrongHardware {
        /// Target path.
        target: String,
        /// Hardware id named.
        hardware_id: String,
        /// What it had to match.
        expected: String,
    },
    /// Uptane §5.4.4.2 step 10.1: no Image repository target of that name.
    #[error("the Image repository has no target {0}")]
    ImageNotFound(String),
    /// Uptane §5.4.4.2 step 10.2: the repositories disagree.
    #[error("target {target}: the repositories disagree on {field}")]
    Mismatch {
        /// Target path.
        target: String,
        /// `length`, `hashes` or `releaseCounter`.
        field: &'static str,
    },
    /// Uptane §5.4.4.2 step 10.2.3: a release counter lower than the installed one.
    #[error("target {target}: release counter {offered} is below the installed {installed}")]
    ReleaseCounterRollback {
        /// Target path.
        target: String,
        /// Installed counter.
        installed: u64,
        /// Offered counter.
        offered: u64,
    },
    /// Uptane G-4: a target name with control characters, not a plain relative path, or
    /// not in Unicode normalization form C.
    #[error(transparent)]
    BadTargetName(#[from] crate::ids::TargetNameError),
    /// Image bytes differ from the approved length or hashes.
    #[error("image {target}: {source}")]
    Image {
        /// Target path.
        target: String,
        /// What differs.
        #[source]
        source: DigestError,
    },
}

impl UptaneError {
    /// The attack this refusal stopped.
    pub fn attack(&self) -> AttackKind {
        match self {
            UptaneError::Update(e) => e.attack(),
            UptaneError::NoDirectorTargets
            | UptaneError::BadCustom { .. }
            | UptaneError::BadTargetName(_) => AttackKind::Malformed,
            UptaneError::DirectorDelegates => AttackKind::ArbitrarySoftware,
            UptaneError::DuplicateEcu(_) | UptaneError::UnknownEcu(_) => AttackKind::UnknownEcu,
            UptaneError::WrongVehicle { .. } => AttackKind::WrongVehicle,
            UptaneError::WrongHardware { .. } => AttackKind::WrongHardware,
            UptaneError::ImageNotFound(_) | UptaneError::Mismatch { .. } => {
                AttackKind::RepositoryMismatch
            }
            UptaneError::ReleaseCounterRollback { .. } => AttackKind::Rollback,
            UptaneError::Image { source, .. } => match source {
                DigestError::TooLong { .. } => AttackKind::EndlessData,
                _ => AttackKind::ArbitrarySoftware,
            },
        }
    }
}

/// One image the Director assigned to one ECU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorTarget {
    /// Target path (image file name).
    pub path: String,
    /// ECU serial it is for.
    pub ecu_serial: EcuSerial,
    /// Hardware id the Director names for it.
    pub hardware_id: HardwareId,
    /// Release counter the Director names.
    pub release_counter: u64,
    /// Length and hashes.
    pub info: TargetFile,
    /// The assignment this ECU's entry belongs to: its `ecuIdentifiers` entry's
    /// `correlationId`, else the target's.
    pub correlation_id: Option<String>,
}

impl DirectorTarget {
    /// The assignment this ECU's entry belongs to, if the Director names one.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }
}

/// Director custom fields for one ECU's entry.
pub fn director_target_custom(ecu_serial: &str, hardware_id: &str, release_counter: u64) -> Value {
    json!({
        "ecuIdentifiers": {ecu_serial: {"hardwareId": hardware_id}},
        "releaseCounter": release_counter,
    })
}

/// Image repository custom fields.
pub fn image_target_custom(hardware_ids: &[&str], release_counter: u64) -> Value {
    json!({"hardwareIds": hardware_ids, "releaseCounter": release_counter})
}

/// Director top-level custom fields: the vehicle and the assignment.
pub fn director_targets_custom(vin: &str, correlation_id: &str) -> Value {
    json!({"vin": vin, "correlationId": correlation_id})
}

fn release_counter(target: &str, custom: Option<&Value>) -> Result<u64, UptaneError> {
    match custom.and_then(|c| c.get("releaseCounter")) {
        None => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| UptaneError::BadCustom {
            target: target.to_string(),
            reason: "releaseCounter is not a non-negative integer".into(),
        }),
    }
}

/// Adds what the Director states about the time to its targets' custom object: when it signed
/// them, and the number of the latest time reset an operator asked for this vehicle (0: none).
pub fn with_signing_time(mut custom: Value, signed_at: &UtcTime, reset: u64) -> Value {
    custom["signedAt"] = json!(format_expires(signed_at));
    if reset > 0 {
        custom["timeReset"] = json!(reset);
    }
    custom
}

/// What the verified Director metadata says about the time (`docs/POUF.md`): the signing
/// time and reset number in the targets' custom object, and the earliest expiry among the
/// roles verified. `None` before any targets are trusted; a malformed field is an error, never
/// read as absent.
pub fn time_evidence(director: &TrustedSet<Director>) -> Result<Option<Evidence>, UptaneError> {
    let Some(targets) = director.targets() else {
        return Ok(None);
    };
    let bad = |reason: &str| UptaneError::BadCustom {
        target: "(Director targets)".into(),
        reason: reason.into(),
    };
    let custom = targets.custom.as_ref();
    let signed_at = match custom.and_then(|c| c.get("signedAt")) {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(parse_expires)
                .ok_or_else(|| bad("signedAt is not YYYY-MM-DDTHH:MM:SSZ"))?,
        ),
    };
    let reset = match custom.and_then(|c| c.get("timeReset")) {
        None => 0,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad("timeReset is not a non-negative integer"))?,
    };
    let expires = [
        Some(director.root().common.expires),
        director.timestamp().map(|t| t.common.expires),
        director.snapshot().map(|s| s.common.expires),
        Some(targets.common.expires),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(targets.common.expires);
    Ok(Some(Evidence {
        signed_at,
        expires,
        reset,
    }))
}

/// The VIN in Director targets, if present.
pub fn director_vin(targets: &Targets) -> Option<&str> {
    targets.custom.as_ref()?.get("vin")?.as_str()
}

/// The correlation id in the Director targets' own custom object (the newest assignment
/// of the vehicle), if present.
pub fn correlation_id(targets: &Targets) -> Option<&str> {
    targets.custom.as_ref()?.get("correlationId")?.as_str()
}

/// The correlation id of one ECU's update (docs/POUF.md): the one in its own target's
/// custom object (the assignment it belongs to), else the targets' own (a Director that
/// names one per vehicle), else empty. The one rule for the Primary and every Secondary, so
/// that a result an ECU reports names the assignment the Director closes with it, whatever
/// other ECUs of the vehicle are assigned meanwhile; `entry` is `None` for an ECU the targets
/// assign nothing.
pub fn update_correlation_id(targets: &Targets, entry: Option<&DirectorTarget>) -> String {
    entry
        .and_then(DirectorTarget::correlation_id)
        .or_else(|| correlation_id(targets))
        .unwrap_or_default()
        .to_string()
}

fn director_entries(targets: &Targets, vin: &Vin) -> Result<Vec<DirectorTarget>, UptaneError> {
    // Uptane §5.4.4.6 step 6.
    if targets
        .delegations
        .as_ref()
        .is_some_and(|d| !d.roles.is_empty() || !d.keys.is_empty())
    {
        return Err(UptaneError::DirectorDelegates);
    }
    // POUF: the VIN is signed into the Director targets, so one vehicle's metadata replayed
    // to another is refused.
    let found = director_vin(targets).unwrap_or_default();
    if found != vin.as_str() {
        return Err(UptaneError::WrongVehicle {
            expected: vin.clone(),
            found: found.to_string(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (path, info) in &targets.targets {
        crate::ids::check_target_name(path)?;
        let bad = |reason: &str| UptaneError::BadCustom {
            target: path.clone(),
            reason: reason.to_string(),
        };
        let ecus = info
            .custom_value()
            .and_then(|c| c.get("ecuIdentifiers"))
            .and_then(Value::as_object)
            .ok_or_else(|| bad("missing custom.ecuIdentifiers"))?;
        let counter = release_counter(path, info.custom_value())?;
        for (serial, ecu) in ecus {
            let serial = EcuSerial::new(serial.as_str()).map_err(|e| bad(&e.to_string()))?;
            // Uptane §5.4.4.6 step 7.
            if !seen.insert(serial.clone()) {
                return Err(UptaneError::DuplicateEcu(serial));
            }
            let hardware_id = ecu
                .get("hardwareId")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("ecuIdentifiers entry without hardwareId"))?;
            let hardware_id = HardwareId::new(hardware_id).map_err(|e| bad(&e.to_string()))?;
            // ECUs sharing one file may belong to different assignments: each names its own.
            let correlation_id = ecu
                .get("correlationId")
                .or_else(|| info.custom_value()?.get("correlationId"))
                .and_then(Value::as_str)
                .map(str::to_string);
            out.push(DirectorTarget {
                path: path.clone(),
                ecu_serial: serial,
                hardware_id,
                release_counter: counter,
                info: TargetFile {
                    length: info.length,
                    hashes: info.hashes.clone(),
                    custom: info.custom.clone(),
                },
                correlation_id,
            });
        }
    }
    Ok(out)
}

/// Checks the trusted Director targets for this vehicle (Uptane §5.4.4.6 steps 6–8) and
/// returns one entry per assigned ECU. `ecus` maps every ECU serial in the vehicle to its
/// hardware id.
pub fn director_targets(
    director: &TrustedSet<Director>,
    vin: &Vin,
    ecus: &BTreeMap<EcuSerial, HardwareId>,
) -> Result<Vec<DirectorTarget>, UptaneError> {
    let targets = director.targets().ok_or(UptaneError::NoDirectorTargets)?;
    let entries = director_entries(targets, vin)?;
    for entry in &entries {
        // Uptane §5.4.4.6 step 8: only ECUs of this vehicle.
        let known = ecus
            .get(&entry.ecu_serial)
            .ok_or_else(|| UptaneError::UnknownEcu(entry.ecu_serial.clone()))?;
        if *known != entry.hardware_id {
            return Err(UptaneError::WrongHardware {
                target: entry.path.clone(),
                hardware_id: entry.hardware_id.to_string(),
                expected: format!("ECU {}'s hardware id {known:?}", entry.ecu_serial),
            });
        }
    }
    Ok(entries)
}

/// The Director target of one ECU, for an ECU that knows only itself (a Secondary in full
/// verification, Uptane §5.4.4.2 step 10: it "can elect to perform this check only on the
/// metadata for the image it will install"). The Director targets checks of §5.4.4.6 steps
/// 6, 7 and the VIN apply; the entry's hardware id must be `hardware_id`. `None` when the
/// Director assigns this ECU nothing.
pub fn director_target_for(
    director: &TrustedSet<Director>,
    vin: &Vin,
    ecu_serial: &EcuSerial,
    hardware_id: &HardwareId,
) -> Result<Option<DirectorTarget>, UptaneError> {
    let targets = director.targets().ok_or(UptaneError::NoDirectorTargets)?;
    let entry = director_entries(targets, vin)?
        .into_iter()
        .find(|e| &e.ecu_serial == ecu_serial);
    if let Some(entry) = &entry
        && &entry.hardware_id != hardware_id
    {
        return Err(UptaneError::WrongHardware {
            target: entry.path.clone(),
            hardware_id: entry.hardware_id.to_string(),
            expected: format!("this ECU's {:?}", hardware_id.as_str()),
        });
    }
    Ok(entry)
}

/// An image both repositories vouch for, for one ECU. Only [`approve`] and
/// [`verify_partial`] make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedImage {
    target: DirectorTarget,
}

impl ApprovedImage {
    /// File name of the image.
    pub fn filename(&self) -> &str {
        &self.target.path
    }

    /// ECU serial it is for.
    pub fn ecu_serial(&self) -> &EcuSerial {
        &self.target.ecu_serial
    }

    /// Hardware id it is for.
    pub fn hardware_id(&self) -> &HardwareId {
        &self.target.hardware_id
    }

    /// Its release counter.
    pub fn release_counter(&self) -> u64 {
        self.target.release_counter
    }

    /// The Director's entry it was approved from.
    pub fn director_target(&self) -> &DirectorTarget {
        &self.target
    }

    /// Its length.
    pub fn length(&self) -> u64 {
        self.target.info.length
    }

    /// Its hashes (as the Director lists them).
    pub fn hashes(&self) -> &Hashes {
        &self.target.info.hashes
    }

    /// A verifier for its bytes, fed as they arrive.
    pub fn verifier(&self) -> Result<ImageVerifier, UptaneError> {
        let hashes = &self.target.info.hashes;
        if hashes.is_empty() {
            return Err(self.image_error(DigestError::NoHashes));
        }
        let inner =
            StreamVerifier::new(Some(self.length()), hashes).map_err(|e| self.image_error(e))?;
        Ok(ImageVerifier {
            approved: self.clone(),
            inner,
        })
    }

    fn image_error(&self, source: DigestError) -> UptaneError {
        UptaneError::Image {
            target: self.target.path.clone(),
            source,
        }
    }
}

/// Matches a Director target against the Image repository's target of the same name
/// (Uptane §5.4.4.2 step 10). `installed_release_counter` is the counter of what the ECU
/// runs now, if known.
pub fn approve(
    director: &DirectorTarget,
    image: &TrustedTarget<ImageRepo>,
    installed_release_counter: Option<u64>,
) -> Result<ApprovedImage, UptaneError> {
    let target = || director.path.clone();
    if image.path() != director.path {
        return Err(UptaneError::ImageNotFound(target()));
    }
    let info = image.info();
    // Step 10.2.1: the same length and hashes.
    if info.length != director.info.length {
        return Err(UptaneError::Mismatch {
            target: target(),
            field: "length",
        });
    }
    let mut common = 0;
    for (alg, digest) in &director.info.hashes {
        if let Some(other) = info.hashes.get(alg) {
            if !other.eq_ignore_ascii_case(digest) {
                return Err(UptaneError::Mismatch {
                    target: target(),
                    field: "hashes",
                });
            }
            common += 1;
        }
    }
    if common == 0 {
        return Err(UptaneError::Mismatch {
            target: target(),
            field: "hashes",
        });
    }
    // Step 10.2.2: SHALL-match custom fields: hardware id and release counter.
    let hardware_ids: Vec<&str> = info
        .custom_value()
        .and_then(|c| c.get("hardwareIds"))
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !hardware_ids.contains(&director.hardware_id.as_str()) {
        return Err(UptaneError::WrongHardware {
            target: target(),
            hardware_id: director.hardware_id.to_string(),
            expected: format!("the Image repository's {hardware_ids:?}"),
        });
    }
    let image_counter = release_counter(&director.path, info.custom_value())?;
    if image_counter != director.release_counter {
        return Err(UptaneError::Mismatch {
            target: target(),
            field: "releaseCounter",
        });
    }
    // Step 10.2.3: the release counter never goes down.
    if let Some(installed) = installed_release_counter
        && director.release_counter < installed
    {
        return Err(UptaneError::ReleaseCounterRollback {
            target: target(),
            installed,
            offered: director.release_counter,
        });
    }
    Ok(ApprovedImage {
        target: director.clone(),
    })
}

/// The ECU a partial-verification Secondary is, and what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuIdentity<'a> {
    /// Vehicle identifier.
    pub vin: &'a Vin,
    /// This ECU's serial.
    pub ecu_serial: &'a EcuSerial,
    /// This ECU's hardware id.
    pub hardware_id: &'a HardwareId,
    /// Release counter of the installed image.
    pub installed_release_counter: u64,
}

/// Partial verification (Uptane §5.4.4.1) of Director targets that
/// [`crate::refresh::Refresh::partial`] admitted (root chain, signatures, size, expiry and
/// the previous version checked there): the Director targets checks of §5.4.4.6 steps 6, 7
/// and the VIN, and this ECU's entry, if any, for its hardware id and a release counter not
/// below the installed one (step 5).
pub fn verify_partial(
    director: &TrustedSet<Director>,
    ecu: &EcuIdentity<'_>,
) -> Result<Option<ApprovedImage>, UptaneError> {
    let targets = director.targets().ok_or(UptaneError::NoDirectorTargets)?;
    let entries = director_entries(targets, ecu.vin)?;
    let Some(entry) = entries
        .into_iter()
        .find(|e| &e.ecu_serial == ecu.ecu_serial)
    else {
        return Ok(None);
    };
    if &entry.hardware_id != ecu.hardware_id {
        return Err(UptaneError::WrongHardware {
            target: entry.path,
            hardware_id: entry.hardware_id.to_string(),
            expected: format!("this ECU's {:?}", ecu.hardware_id),
        });
    }
    if entry.release_counter < ecu.installed_release_counter {
        return Err(UptaneError::ReleaseCounterRollback {
            target: entry.path,
            installed: ecu.installed_release_counter,
            offered: entry.release_counter,
        });
    }
    Ok(Some(ApprovedImage { target: entry }))
}

/// Checks image bytes as they arrive against an [`ApprovedImage`].
#[derive(Debug)]
pub struct ImageVerifier {
    approved: ApprovedImage,
    inner: StreamVerifier,
}

impl ImageVerifier {
    /// Feeds the next chunk; fails as soon as there are more bytes than approved.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), UptaneError> {
        self.inner
            .update(chunk)
            .map_err(|e| self.approved.image_error(e))
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.inner.bytes_seen()
    }

    /// The length-and-hash check underneath, for code that streams into a
    /// [`StreamVerifier`]; only [`Self::finish`] turns what it saw into a [`VerifiedImage`].
    pub fn stream_mut(&mut self) -> &mut StreamVerifier {
        &mut self.inner
    }

    /// Checks length and every hash.
    pub fn finish(self) -> Result<VerifiedImage, UptaneError> {
        let approved = self.approved;
        self.inner.finish().map_err(|e| approved.image_error(e))?;
        Ok(VerifiedImage { approved })
    }

    /// Hands out the length-and-hash check, for code that feeds it elsewhere (its digests on
    /// threads of their own); [`PendingImage::finish`] takes it back.
    pub fn into_stream(self) -> (PendingImage, StreamVerifier) {
        (
            PendingImage {
                approved: self.approved,
            },
            self.inner,
        )
    }
}

/// An approved image whose check ([`StreamVerifier`]) is being fed apart from it.
#[derive(Debug, Clone)]
pub struct PendingImage {
    approved: ApprovedImage,
}

impl PendingImage {
    /// What the bytes are checked against.
    pub fn approved(&self) -> &ApprovedImage {
        &self.approved
    }

    /// The error for bytes that failed their check.
    pub fn image_error(&self, source: DigestError) -> UptaneError {
        self.approved.image_error(source)
    }

    /// Checks length and every hash with `stream`, which must be the check this image handed
    /// out (the same length and hashes; anything else is refused, not trusted).
    pub fn finish(self, stream: StreamVerifier) -> Result<VerifiedImage, UptaneError> {
        let approved = self.approved;
        if !stream.checks(Some(approved.length()), approved.hashes()) {
            return Err(approved.image_error(DigestError::OtherCheck));
        }
        stream.finish().map_err(|e| approved.image_error(e))?;
        Ok(VerifiedImage { approved })
    }
}

/// Image bytes that match an approved image. Install code accepts only this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    approved: ApprovedImage,
}

impl VerifiedImage {
    /// What was verified.
    pub fn approved(&self) -> &ApprovedImage {
        &self.approved
    }
}

#[cfg(test)]
mod tests;
