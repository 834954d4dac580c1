//! The update cycle (Uptane §5.4.2): report, verify both repositories, download, deliver to
//! every ECU in parallel, record. Verification is `uptane-core`'s; this module orders the
//! steps, keeps the state durable between them, and turns every refusal into an attack
//! report for the next vehicle version manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::v1::PutMetadataRequest;
use serde_json::json;
use uptane_core::crypto::{PublicKey, SigningKey};
use uptane_core::error::AttackKind;
use uptane_core::manifest::{
    DetectedAttack, ECU_REPORT_TYPE, EcuVersionReport, InstalledImage, VehicleVersionManifest,
    verify_ecu_report,
};
use uptane_core::metadata::TargetFile;
use uptane_core::time::UtcTime;
use uptane_core::trusted::{Director, ImageRepo};
use uptane_core::uptane::{ApprovedImage, UptaneError, approve, correlation_id, director_targets};
use uptane_core::verify::Raw;

use crate::config::{Mode, Settings};
use crate::download::ImageStore;
use crate::repo::{ClientError, Fetcher, MetadataDir, RefreshOutcome, Updater};
use crate::secondary::{Delivery, SecondaryLink};
use crate::state::{EcuUpdate, InventoryEcu, Phase, PrimaryState, StateDir};

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A state file is missing or unreadable.
    #[error("{0}")]
    State(String),
}

/// What happened to the vehicle version manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOutcome {
    /// The Director accepted it.
    Accepted,
    /// The Director refused it (4xx), with its reason.
    Refused(String),
    /// It could not be sent.
    Unsent(String),
}

/// What the verification step concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The Director's metadata did not change and every update in it is finished.
    Unchanged,
    /// Both repositories verified; this many images are assigned.
    Verified {
        /// Director targets version.
        targets_version: u64,
        /// Images assigned.
        images: usize,
    },
    /// Refused as an attack; nothing was installed.
    Refused {
        /// The attack.
        kind: AttackKind,
        /// What was refused.
        detail: String,
    },
    /// A repository could not be reached or local state could not be written.
    Failed(String),
}

/// One ECU's outcome in a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcuOutcome {
    /// It runs the assigned image now.
    Installed(String),
    /// It refused or failed the image.
    Failed(String),
    /// Not finished; retried in a later cycle.
    Pending(String),
}

/// What one cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// The manifest sent at the start of the cycle.
    pub manifest: ManifestOutcome,
    /// The verification step.
    pub verification: Verification,
    /// Per ECU, the updates attempted.
    pub ecus: BTreeMap<String, EcuOutcome>,
    /// Secondaries that did not answer, with why.
    pub unreachable: BTreeMap<String, String>,
    /// The manifest sent at the end, when the cycle changed what the vehicle reports.
    pub closing_manifest: Option<ManifestOutcome>,
}

impl CycleReport {
    /// The exit status of `primary-ecu once`: 0 when nothing is left to do, 2 when an attack
    /// was refused, 3 when an ECU failed or work is pending, 1 when a repository or the
    /// Director could not be reached.
    pub fn exit_code(&self) -> u8 {
        match &self.verification {
            Verification::Refused { .. } => 2,
            Verification::Failed(_) => 1,
            _ if self
                .ecus
                .values()
                .any(|o| !matches!(o, EcuOutcome::Installed(_))) =>
            {
                3
            }
            _ if !self.unreachable.is_empty() => 3,
            _ if !matches!(self.manifest, ManifestOutcome::Accepted) => 1,
            _ => 0,
        }
    }

    /// One line saying what happened.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        parts.push(match &self.verification {
            Verification::Unchanged => "no change".to_string(),
            Verification::Verified {
                targets_version,
                images,
            } => format!("director targets v{targets_version}: {images} image(s) assigned"),
            Verification::Refused { kind, detail } => format!("REFUSED ({kind}): {detail}"),
            Verification::Failed(why) => format!("failed: {why}"),
        });
        for (serial, outcome) in &self.ecus {
            parts.push(match outcome {
                EcuOutcome::Installed(f) => format!("{serial} installed {f}"),
                EcuOutcome::Failed(why) => format!("{serial} failed: {why}"),
                EcuOutcome::Pending(why) => format!("{serial} pending: {why}"),
            });
        }
        for (serial, why) in &self.unreachable {
            parts.push(format!("{serial} unreachable: {why}"));
        }
        for (which, outcome) in [
            ("manifest", Some(&self.manifest)),
            ("closing manifest", self.closing_manifest.as_ref()),
        ] {
            match outcome {
                Some(ManifestOutcome::Refused(why)) => {
                    parts.push(format!("{which} refused: {why}"))
                }
                Some(ManifestOutcome::Unsent(why)) => {
                    parts.push(format!("{which} not sent: {why}"))
                }
                _ => {}
            }
        }
        parts.join("; ")
    }
}

/// The verified plan of one cycle: what goes where, with the metadata to forward.
#[derive(Debug)]
struct Plan {
    targets_version: u64,
    correlation_id: String,
    images: Vec<(ApprovedImage, String)>,
    director_bundle: PutMetadataRequest,
    image_bundle: PutMetadataRequest,
}

/// A refusal at the verification step.
#[derive(Debug)]
enum Refusal {
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

fn random_hex() -> String {
    let mut b = [0u8; 16];
    // The nonce only has to be unpredictable to a replaying attacker; getrandom fails only
    // when the OS has no entropy source, and a zero nonce is then refused by the Director.
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

fn sha256_of(image: &ApprovedImage) -> String {
    image
        .hashes()
        .get("sha256")
        .or_else(|| image.hashes().values().next())
        .cloned()
        .unwrap_or_default()
}

fn same_image(installed: &InstalledImage, image: &ApprovedImage) -> bool {
    installed.filename == image.filename()
        && installed.length == image.length()
        && installed.hashes.get("sha256") == image.hashes().get("sha256")
}

/// The Primary agent.
#[derive(Debug)]
pub struct Primary {
    files: StateDir,
    settings: Settings,
    key: SigningKey,
    credential: String,
    inventory: Vec<InventoryEcu>,
    state: PrimaryState,
    director_fetcher: Fetcher,
    image_fetcher: Fetcher,
    links: Vec<SecondaryLink>,
    store: ImageStore,
}

impl Primary {
    /// Opens a provisioned state directory.
    pub fn open(dir: &Path, settings: Settings) -> Result<Self, OpenError> {
        let files = StateDir::new(dir);
        let state_err = |what: &str, e: &dyn std::fmt::Display| {
            OpenError::State(format!("{what}: {e} (was `primary-ecu init` run?)"))
        };
        let pem = std::fs::read_to_string(files.key())
            .map_err(|e| state_err(&files.key().display().to_string(), &e))?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| state_err(&files.key().display().to_string(), &e))?;
        let credential = std::fs::read_to_string(files.credential())
            .map_err(|e| state_err(&files.credential().display().to_string(), &e))?
            .trim()
            .to_string();
        let inventory = files
            .load_inventory()
            .map_err(|e| state_err("inventory", &e))?;
        let state = files.load_state().map_err(|e| state_err("state", &e))?;
        for config in &settings.secondaries {
            if !inventory.iter().any(|e| e.serial == config.serial) {
                return Err(OpenError::State(format!(
                    "Secondary {} is not in the registered inventory; register it first",
                    config.serial
                )));
            }
        }
        let read_timeout = Duration::from_secs(settings.read_timeout_secs);
        let grace = Duration::from_millis(settings.download_grace_ms);
        let fetcher = |min| {
            Fetcher::with_grace(read_timeout, min, grace)
                .map_err(|e| OpenError::State(format!("HTTP client: {e}")))
        };
        let director_fetcher =
            fetcher(settings.min_download_bytes_per_sec)?.with_bearer(&credential);
        let image_fetcher = fetcher(settings.min_download_bytes_per_sec)?;
        let timeout = Duration::from_secs(settings.secondary_timeout_secs);
        let links = settings
            .secondaries
            .iter()
            .map(|c| SecondaryLink::new(c.clone(), timeout))
            .collect();
        let store = ImageStore::new(files.images(), files.downloads());
        Ok(Self {
            files,
            settings,
            key,
            credential,
            inventory,
            state,
            director_fetcher,
            image_fetcher,
            links,
            store,
        })
    }

    fn save(&self) -> Result<(), String> {
        self.files
            .save_state(&self.state)
            .map_err(|e| format!("saving state: {e}"))
    }

    fn record_attack(&mut self, kind: AttackKind, detail: &str) {
        tracing::warn!(attack = %kind, detail, "refused");
        self.state.pending_attacks.push(DetectedAttack {
            kind,
            detail: detail.to_string(),
        });
    }

    /// The cycle's `now`: the system clock, never earlier than the latest time already seen.
    fn now(&mut self) -> UtcTime {
        let system: UtcTime = std::time::SystemTime::now().into();
        let now = match self.state.latest_time {
            Some(latest) if latest > system => latest,
            _ => system,
        };
        self.state.latest_time = Some(now);
        now
    }

    /// One update cycle.
    pub async fn cycle(&mut self) -> CycleReport {
        let now = self.now();
        let (reports, unreachable) = self.collect_reports().await;
        let manifest = self.send_manifest(&reports, &unreachable, now).await;
        let mut report = CycleReport {
            manifest,
            verification: Verification::Unchanged,
            ecus: BTreeMap::new(),
            unreachable,
            closing_manifest: None,
        };
        let attacks_before = self.state.pending_attacks.len();
        match self.verify(now).await {
            Ok(None) => {}
            Ok(Some(plan)) => {
                report.verification = Verification::Verified {
                    targets_version: plan.targets_version,
                    images: plan.images.len(),
                };
                self.apply(plan, &report.unreachable.clone(), now, &mut report)
                    .await;
            }
            Err(Refusal::Attack(kind, detail)) => {
                self.record_attack(kind, &detail);
                report.verification = Verification::Refused { kind, detail };
            }
            Err(Refusal::Failed(detail)) => {
                tracing::warn!(%detail, "update check failed");
                report.verification = Verification::Failed(detail);
            }
        }
        let changed = !report.ecus.is_empty() || self.state.pending_attacks.len() > attacks_before;
        if changed {
            let (reports, unreachable) = self.collect_reports().await;
            report.closing_manifest = Some(self.send_manifest(&reports, &unreachable, now).await);
        }
        self.state.last_cycle = Some(report.summary());
        self.state.last_error = match &report.verification {
            Verification::Refused { .. } | Verification::Failed(_) => Some(report.summary()),
            _ => None,
        };
        if let Err(e) = self.save() {
            tracing::error!(error = %e);
        }
        report
    }

    /// Step 1: every Secondary's signed report for a fresh nonce, checked against the key
    /// it registered with (a forged or replayed report is not forwarded).
    async fn collect_reports(&mut self) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, String>) {
        let nonces: Vec<String> = self.links.iter().map(|_| random_hex()).collect();
        let answers = futures_util::future::join_all(
            self.links
                .iter_mut()
                .zip(&nonces)
                .map(|(link, nonce)| async move { link.version_report(nonce).await }),
        )
        .await;
        let mut reports = BTreeMap::new();
        let mut unreachable = BTreeMap::new();
        let serials: Vec<String> = self
            .links
            .iter()
            .map(|l| l.config().serial.clone())
            .collect();
        for ((serial, nonce), answer) in serials.into_iter().zip(nonces).zip(answers) {
            let bytes = match answer {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::info!(%serial, error = %e, "no version report");
                    unreachable.insert(serial, e.to_string());
                    continue;
                }
            };
            match self.check_report(&serial, &nonce, &bytes) {
                Ok(installed) => {
                    self.state.reported.insert(serial.clone(), installed);
                    reports.insert(serial, bytes);
                }
                Err((kind, why)) => {
                    self.record_attack(kind, &format!("ECU {serial}: {why}"));
                    unreachable.insert(serial, why);
                }
            }
        }
        (reports, unreachable)
    }

    fn check_report(
        &self,
        serial: &str,
        nonce: &str,
        bytes: &[u8],
    ) -> Result<InstalledImage, (AttackKind, String)> {
        let ecu = self
            .inventory
            .iter()
            .find(|e| e.serial == serial)
            .ok_or((AttackKind::UnknownEcu, "not in the inventory".to_string()))?;
        let key = PublicKey::from_json(ecu.public_key.clone())
            .map_err(|e| (AttackKind::Malformed, format!("registered key: {e}")))?;
        let report = verify_ecu_report(&Raw::new(bytes.to_vec()), &key)
            .map_err(|e| (e.attack(), format!("version report: {e}")))?;
        if report.ecu_serial != serial {
            return Err((
                AttackKind::ArbitrarySoftware,
                format!("report signed for ECU {:?}", report.ecu_serial),
            ));
        }
        if report.nonce != nonce {
            return Err((
                AttackKind::Replay,
                format!("report answers nonce {:?}, not the one asked", report.nonce),
            ));
        }
        Ok(report.installed_image.clone())
    }

    /// The Primary's own report: its image, the attacks not yet reported, a fresh nonce and
    /// a counter made durable before the report is signed.
    fn own_report(&mut self, now: UtcTime) -> Result<Vec<u8>, String> {
        self.state.report_counter += 1;
        self.save()?;
        let installed = self
            .state
            .installed
            .clone()
            .ok_or("no installed image recorded")?;
        EcuVersionReport {
            report_type: ECU_REPORT_TYPE.into(),
            ecu_serial: self.settings.serial.clone(),
            installed_image: installed,
            attacks_detected: self.state.pending_attacks.clone(),
            latest_time: now,
            nonce: random_hex(),
            report_counter: self.state.report_counter,
            last_install: self.state.last_install.clone(),
        }
        .sign(&self.key)
        .map_err(|e| e.to_string())
    }

    async fn send_manifest(
        &mut self,
        reports: &BTreeMap<String, Vec<u8>>,
        unreachable: &BTreeMap<String, String>,
        now: UtcTime,
    ) -> ManifestOutcome {
        let reported_attacks = self.state.pending_attacks.len();
        let mut all = reports.clone();
        match self.own_report(now) {
            Ok(own) => all.insert(self.settings.serial.clone(), own),
            Err(e) => return ManifestOutcome::Unsent(e),
        };
        let signed = VehicleVersionManifest::new(&self.settings.vin, &self.settings.serial, &all)
            .map(|mut m| {
                m.unreachable_ecus = unreachable.clone();
                m
            })
            .map_err(|e| e.to_string())
            .and_then(|m| m.sign(&self.key).map_err(|e| e.to_string()));
        let body = match signed {
            Ok(body) => body,
            Err(e) => return ManifestOutcome::Unsent(e),
        };
        let sent = self
            .director_fetcher
            .http()
            .post(self.settings.manifest_url())
            .bearer_auth(&self.credential)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                self.state.pending_attacks.drain(..reported_attacks);
                if let Err(e) = self.save() {
                    return ManifestOutcome::Unsent(e);
                }
                ManifestOutcome::Accepted
            }
            Ok(response) => {
                let status = response.status();
                let why = crate::provision::json_body(response).await;
                let why = format!(
                    "HTTP {status}: {}",
                    why["error"].as_str().unwrap_or("no reason given")
                );
                tracing::warn!(%why, "manifest refused");
                ManifestOutcome::Refused(why)
            }
            Err(e) => ManifestOutcome::Unsent(e.to_string()),
        }
    }

    /// Step 2: full verification of the Director, then of the Image repository, then the
    /// match of every Director target. `None` when nothing changed and nothing is pending.
    async fn verify(&mut self, now: UtcTime) -> Result<Option<Plan>, Refusal> {
        let limits = self.settings.limits();
        let mut director = Updater::<Director>::new(
            &self.settings.director_metadata_url(),
            MetadataDir::with_root_history(self.files.director_metadata()),
            self.director_fetcher.clone(),
            now,
            limits,
        )?;
        let outcome = director.refresh().await?;
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
        let correlation = correlation_id(targets).unwrap_or_default().to_string();
        let ecus: BTreeMap<String, String> = self
            .inventory
            .iter()
            .map(|e| (e.serial.clone(), e.hardware_id.clone()))
            .collect();
        let assigned = director_targets(director.trusted(), &self.settings.vin, &ecus)?;

        let mut images = Updater::<ImageRepo>::new(
            &self.settings.image_metadata_url(),
            MetadataDir::with_root_history(self.files.image_metadata()),
            self.image_fetcher.clone(),
            now,
            limits,
        )?;
        images.refresh().await?;
        let mut approved = Vec::new();
        for target in &assigned {
            let found = match images.find_target(&target.path).await {
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
            let url = images.target_url(
                &self.settings.image_targets_url(),
                &target.path,
                found.info(),
            );
            approved.push((image, url));
        }
        let director_bundle = bundle_of(director.dir(), &[], &correlation, true)?;
        let image_bundle = bundle_of(images.dir(), images.delegated_roles(), &correlation, false)?;
        Ok(Some(Plan {
            targets_version,
            correlation_id: correlation,
            images: approved,
            director_bundle,
            image_bundle,
        }))
    }

    /// What an ECU runs, as far as the Primary knows: its own image, or the last report.
    fn running_image(&self, serial: &str) -> Option<&InstalledImage> {
        if *serial == self.settings.serial {
            self.state.installed.as_ref()
        } else {
            self.state.reported.get(serial)
        }
    }

    /// Steps 3–5: download each image once, deliver to every ECU in parallel, record.
    async fn apply(
        &mut self,
        plan: Plan,
        unreachable: &BTreeMap<String, String>,
        now: UtcTime,
        report: &mut CycleReport,
    ) {
        let mut work: Vec<(ApprovedImage, String)> = Vec::new();
        for (image, url) in &plan.images {
            let serial = image.ecu_serial().to_string();
            let sha256 = sha256_of(image);
            let update = self
                .state
                .updates
                .entry(serial.clone())
                .and_modify(|u| {
                    if u.correlation_id != plan.correlation_id || u.sha256 != sha256 {
                        *u = EcuUpdate::new(&plan.correlation_id, image, &sha256);
                    }
                })
                .or_insert_with(|| EcuUpdate::new(&plan.correlation_id, image, &sha256))
                .clone();
            if self
                .running_image(&serial)
                .is_some_and(|r| same_image(r, image))
            {
                self.set_phase(&serial, Phase::Installed, "running");
                continue;
            }
            if update.phase.is_final() {
                continue;
            }
            if let Some(why) = unreachable.get(&serial) {
                report
                    .ecus
                    .insert(serial, EcuOutcome::Pending(format!("unreachable: {why}")));
                continue;
            }
            work.push((image.clone(), url.clone()));
        }

        let mut downloaded: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (image, url) in &work {
            let sha256 = sha256_of(image);
            if downloaded.contains_key(&sha256) {
                continue;
            }
            let info = TargetFile {
                length: image.length(),
                hashes: image.hashes().clone(),
                custom: None,
            };
            match self
                .store
                .fetch(&self.image_fetcher, url, &sha256, &info)
                .await
            {
                Ok(path) => {
                    downloaded.insert(sha256, path);
                }
                Err(e) => {
                    let detail = match e.attack() {
                        Some(kind) => {
                            let detail =
                                format!("download of {} refused ({kind}): {e}", image.filename());
                            self.record_attack(kind, &detail);
                            detail
                        }
                        None => format!("download of {}: {e}", image.filename()),
                    };
                    for (other, _) in work.iter().filter(|(o, _)| sha256_of(o) == sha256) {
                        report.ecus.insert(
                            other.ecu_serial().to_string(),
                            EcuOutcome::Pending(detail.clone()),
                        );
                    }
                }
            }
        }
        for (image, _) in &work {
            if downloaded.contains_key(&sha256_of(image)) {
                self.set_phase(image.ecu_serial(), Phase::Delivering, "downloaded");
            }
        }
        if let Err(e) = self.save() {
            report.verification = Verification::Failed(e);
            return;
        }

        let unix = now.timestamp();
        let modes: BTreeMap<String, Mode> = self
            .inventory
            .iter()
            .filter_map(|e| Some((e.serial.clone(), e.mode?)))
            .collect();
        let mut own: Option<(ApprovedImage, PathBuf)> = None;
        let mut jobs = Vec::new();
        for link in self.links.iter_mut() {
            let serial = link.config().serial.clone();
            let Some((image, path)) = work.iter().find_map(|(image, _)| {
                (image.ecu_serial() == serial)
                    .then(|| {
                        downloaded
                            .get(&sha256_of(image))
                            .map(|p| (image.clone(), p.clone()))
                    })
                    .flatten()
            }) else {
                continue;
            };
            let bundle = match modes.get(&serial) {
                Some(Mode::Partial) => partial_bundle(&plan.director_bundle),
                _ => full_bundle(&plan.director_bundle, &plan.image_bundle),
            };
            jobs.push(async move {
                let delivery = link
                    .deliver(unix, bundle, &path, image.filename(), image.length())
                    .await;
                (serial, image, delivery)
            });
        }
        for (image, _) in &work {
            if image.ecu_serial() == self.settings.serial
                && let Some(path) = downloaded.get(&sha256_of(image))
            {
                own = Some((image.clone(), path.clone()));
            }
        }
        let own_install = async {
            match &own {
                Some((image, path)) => Some(install_own(image, path, &self.files.firmware()).await),
                None => None,
            }
        };
        let (deliveries, own_result) =
            tokio::join!(futures_util::future::join_all(jobs), own_install);

        for (serial, image, delivery) in deliveries {
            let outcome = match delivery {
                Ok(Delivery::Installed) => {
                    self.set_phase(&serial, Phase::Installed, "installed");
                    EcuOutcome::Installed(image.filename().to_string())
                }
                Ok(Delivery::Failed {
                    code,
                    attack,
                    detail,
                }) => {
                    let detail = match attack {
                        Some(attack) => format!("{} ({attack}): {detail}", code.as_str_name()),
                        None => format!("{}: {detail}", code.as_str_name()),
                    };
                    self.set_phase(&serial, Phase::Failed, &detail);
                    EcuOutcome::Failed(detail)
                }
                Ok(Delivery::Retry(detail)) => {
                    self.bump_attempts(&serial, &detail);
                    EcuOutcome::Pending(detail)
                }
                Err(e) => {
                    let detail = e.to_string();
                    self.bump_attempts(&serial, &detail);
                    EcuOutcome::Pending(detail)
                }
            };
            report.ecus.insert(serial, outcome);
        }
        if let (Some((image, _)), Some(result)) = (own, own_result) {
            let serial = self.settings.serial.clone();
            let outcome = match result {
                Ok(installed) => {
                    self.state.installed = Some(installed);
                    self.state.last_install = Some(json!({
                        "correlation_id": plan.correlation_id,
                        "result": "installed",
                        "detail": format!("{} installed", image.filename()),
                    }));
                    self.set_phase(&serial, Phase::Installed, "installed");
                    EcuOutcome::Installed(image.filename().to_string())
                }
                Err(e) => {
                    if let Some(kind) = e.attack {
                        self.record_attack(kind, &e.detail);
                    }
                    self.state.last_install = Some(json!({
                        "correlation_id": plan.correlation_id,
                        "result": "failed",
                        "detail": e.detail,
                    }));
                    self.set_phase(&serial, Phase::Failed, &e.detail);
                    EcuOutcome::Failed(e.detail)
                }
            };
            report.ecus.insert(serial, outcome);
        }

        let assigned: BTreeSet<&str> = plan.images.iter().map(|(i, _)| i.ecu_serial()).collect();
        let finished = assigned.iter().all(|serial| {
            self.state
                .updates
                .get(*serial)
                .is_some_and(|u| u.correlation_id == plan.correlation_id && u.phase.is_final())
        });
        self.state.completed_targets_version = finished.then_some(plan.targets_version);
        let keep: Vec<String> = self
            .state
            .updates
            .values()
            .filter(|u| !u.phase.is_final())
            .map(|u| u.sha256.clone())
            .collect();
        self.store
            .prune(&keep.iter().map(String::as_str).collect::<Vec<_>>());
        if let Err(e) = self.save() {
            report.verification = Verification::Failed(e);
        }
    }

    fn set_phase(&mut self, serial: &str, phase: Phase, detail: &str) {
        if let Some(update) = self.state.updates.get_mut(serial) {
            update.phase = phase;
            update.detail = detail.to_string();
        }
    }

    fn bump_attempts(&mut self, serial: &str, detail: &str) {
        if let Some(update) = self.state.updates.get_mut(serial) {
            update.attempts += 1;
            update.detail = detail.to_string();
        }
    }
}

impl EcuUpdate {
    fn new(correlation_id: &str, image: &ApprovedImage, sha256: &str) -> Self {
        Self {
            correlation_id: correlation_id.to_string(),
            filename: image.filename().to_string(),
            sha256: sha256.to_string(),
            phase: Phase::Downloading,
            detail: String::new(),
            attempts: 0,
        }
    }
}

/// The Director's files to forward: every root version kept (the ECU skips those it
/// trusts), timestamp, snapshot and targets, as received. For the Image repository, the
/// delegated roles searched as well.
fn bundle_of(
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
fn partial_bundle(director: &PutMetadataRequest) -> PutMetadataRequest {
    PutMetadataRequest {
        correlation_id: director.correlation_id.clone(),
        director_roots: director.director_roots.clone(),
        director_targets: director.director_targets.clone(),
        ..Default::default()
    }
}

fn full_bundle(director: &PutMetadataRequest, images: &PutMetadataRequest) -> PutMetadataRequest {
    PutMetadataRequest {
        image_roots: images.image_roots.clone(),
        image_timestamp: images.image_timestamp.clone(),
        image_snapshot: images.image_snapshot.clone(),
        image_targets: images.image_targets.clone(),
        image_delegations: images.image_delegations.clone(),
        ..director.clone()
    }
}

/// Why the Primary's own install failed.
#[derive(Debug)]
struct InstallFailure {
    attack: Option<AttackKind>,
    detail: String,
}

/// Installs the Primary's own image: the downloaded file is hashed again against the
/// approval (only a `VerifiedImage` is installed), then copied over the active image
/// atomically.
async fn install_own(
    image: &ApprovedImage,
    path: &Path,
    firmware: &Path,
) -> Result<InstalledImage, InstallFailure> {
    use tokio::io::AsyncReadExt;
    let failure = |detail: String| InstallFailure {
        attack: None,
        detail,
    };
    let mut verifier = image.verifier().map_err(|e| InstallFailure {
        attack: Some(e.attack()),
        detail: e.to_string(),
    })?;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| failure(format!("{}: {e}", path.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| failure(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]).map_err(|e| InstallFailure {
            attack: Some(e.attack()),
            detail: e.to_string(),
        })?;
    }
    let verified = verifier.finish().map_err(|e| InstallFailure {
        attack: Some(e.attack()),
        detail: e.to_string(),
    })?;
    let dir = service_runtime::files::parent_dir(firmware);
    let (source, target) = (path.to_path_buf(), firmware.to_path_buf());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir)?;
        std::fs::copy(&source, tmp.path())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&target).map_err(|e| e.error)?;
        service_runtime::files::sync_dir(&dir)
    })
    .await
    .map_err(|e| failure(e.to_string()))?
    .map_err(|e| failure(format!("writing {}: {e}", firmware.display())))?;
    let approved = verified.approved();
    Ok(InstalledImage {
        filename: approved.filename().to_string(),
        length: approved.length(),
        hashes: approved.hashes().clone(),
        release_counter: approved.release_counter(),
    })
}
