//! Steps 3–5 of the cycle (Uptane §5.4.2.3–5.4.2.6): which ECUs still need their approved
//! image, each image downloaded once and verified, delivered to every Secondary in parallel
//! while the Primary installs its own, and the outcome of each kept durably.

use std::collections::{BTreeMap, BTreeSet};

use uptane_core::error::AttackKind;
use uptane_core::ids::EcuSerial;
use uptane_core::manifest::{InstallResult, InstalledImage, LastInstall};
use uptane_core::time::UtcTime;
use uptane_core::uptane::ApprovedImage;

use super::Primary;
use super::outcome::{CycleReport, EcuOutcome, Verification};
use super::plan::{Plan, full_bundle, partial_bundle};
use crate::config::Mode;
use crate::download::{VerifiedFile, image_key};
use crate::install::install_own;
use crate::ports::{Ports, SecondaryPort};
use crate::secondary::Delivery;
use crate::state::{EcuUpdate, Phase};
use futures_util::future::BoxFuture;
use proto::v2::ResultCode;

/// An approved image one ECU still needs, with where to download it.
type Work = Vec<(ApprovedImage, String)>;

fn new_update(correlation_id: &str, image: &ApprovedImage) -> EcuUpdate {
    EcuUpdate {
        correlation_id: correlation_id.to_string(),
        filename: image.filename().to_string(),
        sha256: image_key(image),
        phase: Phase::Downloading,
        detail: String::new(),
        attempts: 0,
    }
}

impl<P: Ports> Primary<P> {
    /// Downloads, delivers and installs what `plan` approves, and records every outcome.
    pub(super) async fn apply(
        &mut self,
        plan: Plan,
        unreachable: &BTreeMap<EcuSerial, String>,
        now: UtcTime,
        report: &mut CycleReport,
    ) {
        let work = self.select_work(&plan, unreachable, report);
        let withdrawn = self.withdrawn(&plan, report);
        let files = self.download(&work, report).await;
        if let Err(e) = self.save() {
            report.verification = Verification::LocalFailure(e);
            return;
        }
        self.deliver(&plan, &work, &files, &withdrawn, unreachable, now, report)
            .await;
        self.finish(&plan);
        if let Err(e) = self.save() {
            report.verification = Verification::LocalFailure(e);
        }
    }

    /// The approved images that some ECU does not run yet and has not finished with; an ECU
    /// that is unreachable this cycle waits.
    fn select_work(
        &mut self,
        plan: &Plan,
        unreachable: &BTreeMap<EcuSerial, String>,
        report: &mut CycleReport,
    ) -> Work {
        let mut work = Vec::new();
        for (image, location) in &plan.images {
            let serial = image.ecu_serial().clone();
            let key = image_key(image);
            let correlation_id = plan.correlation_for(&serial);
            let update = self
                .state
                .updates
                .entry(serial.clone())
                .and_modify(|u| {
                    if u.correlation_id != correlation_id || u.sha256 != key {
                        *u = new_update(correlation_id, image);
                    }
                })
                .or_insert_with(|| new_update(correlation_id, image))
                .clone();
            if self
                .running_image(&serial)
                .is_some_and(|r| r.is(image.filename(), image.length(), image.hashes()))
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
            work.push((image.clone(), location.clone()));
        }
        work
    }

    /// The ECUs whose unfinished update the Director's targets no longer assign (an
    /// operator's cancel), marked withdrawn durably before anything is sent: they are to
    /// abandon it. The Primary's own is abandoned here (it installs only in `deliver`).
    fn withdrawn(&mut self, plan: &Plan, report: &mut CycleReport) -> BTreeSet<EcuSerial> {
        let own = self.settings.serial.clone();
        let linked: BTreeSet<EcuSerial> = self.links.iter().map(|l| l.serial().clone()).collect();
        let mut withdrawn = BTreeSet::new();
        for (serial, update) in self.state.updates.iter_mut() {
            if update.phase.is_final() || plan.correlations.contains_key(serial) {
                continue;
            }
            if *serial != own && !linked.contains(serial) {
                // No longer one of this Primary's Secondaries (replaced, or removed from its
                // configuration): nothing to tell it.
                update.phase = Phase::Cancelled;
                update.detail = "no longer assigned, and no link to this ECU".into();
                continue;
            }
            if update.phase != Phase::Withdrawn {
                tracing::info!(%serial, correlation_id = %update.correlation_id, "update no longer assigned by the Director");
                update.phase = Phase::Withdrawn;
                update.detail = format!(
                    "no longer assigned by the Director's targets version {} (cancelled)",
                    plan.targets_version
                );
            }
            withdrawn.insert(serial.clone());
        }
        if withdrawn.remove(&own)
            && let Some(update) = self.state.updates.get_mut(&own)
        {
            let detail =
                "cancelled before installation: the Director no longer assigns it".to_string();
            self.state.last_install = Some(LastInstall {
                correlation_id: update.correlation_id.clone(),
                result: InstallResult::Cancelled,
                detail: detail.clone(),
            });
            update.phase = Phase::Cancelled;
            update.detail = detail.clone();
            report.ecus.insert(own, EcuOutcome::Cancelled(detail));
        }
        withdrawn
    }

    /// Each image once, verified as it downloads; a refusal is recorded as an attack.
    async fn download(
        &mut self,
        work: &Work,
        report: &mut CycleReport,
    ) -> BTreeMap<String, VerifiedFile> {
        let mut files: BTreeMap<String, VerifiedFile> = BTreeMap::new();
        for (image, location) in work {
            let key = image_key(image);
            if files.contains_key(&key) || report.ecus.contains_key(image.ecu_serial()) {
                continue;
            }
            match self.store.fetch(&self.images, location, image).await {
                Ok(file) => {
                    files.insert(key, file);
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
                    for (other, _) in work.iter().filter(|(o, _)| image_key(o) == key) {
                        report.ecus.insert(
                            other.ecu_serial().clone(),
                            EcuOutcome::Pending(detail.clone()),
                        );
                    }
                }
            }
        }
        for (image, _) in work {
            if files.contains_key(&image_key(image)) {
                self.set_phase(image.ecu_serial(), Phase::Delivering, "downloaded");
            }
        }
        files
    }

    /// Every Secondary's delivery (or withdrawal) in parallel with the Primary's own
    /// install; each outcome goes into the report and the durable state.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &mut self,
        plan: &Plan,
        work: &Work,
        files: &BTreeMap<String, VerifiedFile>,
        withdrawn: &BTreeSet<EcuSerial>,
        unreachable: &BTreeMap<EcuSerial, String>,
        now: UtcTime,
        report: &mut CycleReport,
    ) {
        let file_for = |serial: &EcuSerial| {
            work.iter()
                .find(|(image, _)| image.ecu_serial() == serial)
                .and_then(|(image, _)| files.get(&image_key(image)))
        };
        let modes: BTreeMap<EcuSerial, Mode> = self
            .inventory
            .iter()
            .filter_map(|e| Some((e.serial.clone(), e.mode?)))
            .collect();
        let unix = now.timestamp();
        let mut jobs = Vec::new();
        for link in self.links.iter_mut() {
            let serial = link.serial().clone();
            let mut bundle = match modes.get(&serial) {
                Some(Mode::Partial) => partial_bundle(&plan.director_bundle),
                _ => full_bundle(&plan.director_bundle, &plan.image_bundle),
            };
            bundle.correlation_id = plan.correlation_for(&serial).to_string();
            let job: BoxFuture<'_, _> = match (file_for(&serial), self.state.updates.get(&serial)) {
                (Some(file), _) => Box::pin(async move {
                    let delivery = link.deliver(unix, bundle, file).await;
                    (serial, file.approved().filename().to_string(), delivery)
                }),
                (None, Some(update)) if withdrawn.contains(&serial) => {
                    if let Some(why) = unreachable.get(&serial) {
                        report.ecus.insert(
                            serial,
                            EcuOutcome::Pending(format!("withdrawn; unreachable: {why}")),
                        );
                        continue;
                    }
                    let (correlation_id, filename) =
                        (update.correlation_id.clone(), update.filename.clone());
                    Box::pin(async move {
                        let delivery = link
                            .withdraw(unix, bundle, &correlation_id, &filename)
                            .await;
                        (serial, filename, delivery)
                    })
                }
                _ => continue,
            };
            jobs.push(job);
        }
        let own = file_for(&self.settings.serial);
        let firmware = self.files.firmware();
        let own_install = async {
            match own {
                Some(file) => Some(install_own(file, &firmware).await),
                None => None,
            }
        };
        let (deliveries, own_result) =
            tokio::join!(futures_util::future::join_all(jobs), own_install);
        for (serial, filename, delivery) in deliveries {
            let outcome = self.record_delivery(&serial, &filename, delivery);
            report.ecus.insert(serial, outcome);
        }
        if let (Some(file), Some(result)) = (own, own_result) {
            let correlation_id = plan.correlation_for(&self.settings.serial).to_string();
            let outcome = self.record_own_install(&correlation_id, file, result);
            report.ecus.insert(self.settings.serial.clone(), outcome);
        }
    }

    fn record_delivery(
        &mut self,
        serial: &EcuSerial,
        filename: &str,
        delivery: Result<Delivery, crate::secondary::LinkError>,
    ) -> EcuOutcome {
        match delivery {
            Ok(Delivery::Installed) => {
                self.set_phase(serial, Phase::Installed, "installed");
                EcuOutcome::Installed(filename.to_string())
            }
            Ok(Delivery::Failed {
                code: ResultCode::OperationCancelled,
                detail,
                ..
            }) => {
                self.set_phase(serial, Phase::Cancelled, &detail);
                EcuOutcome::Cancelled(detail)
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
                self.set_phase(serial, Phase::Failed, &detail);
                EcuOutcome::Failed(detail)
            }
            Ok(Delivery::Retry(detail)) => {
                self.bump_attempts(serial, &detail);
                EcuOutcome::Pending(detail)
            }
            Err(e) => {
                let detail = e.to_string();
                if matches!(e, crate::secondary::LinkError::TooSlow { .. }) {
                    // Reported to the Director with the next manifest; the transfer resumes
                    // from the ECU's durable offset in a later cycle.
                    self.record_attack(AttackKind::SlowRetrieval, &detail);
                }
                self.bump_attempts(serial, &detail);
                EcuOutcome::Pending(detail)
            }
        }
    }

    fn record_own_install(
        &mut self,
        correlation_id: &str,
        file: &VerifiedFile,
        result: Result<InstalledImage, crate::install::InstallFailure>,
    ) -> EcuOutcome {
        let serial = self.settings.serial.clone();
        match result {
            Ok(installed) => {
                self.state.installed = Some(installed);
                self.state.last_install = Some(LastInstall {
                    correlation_id: correlation_id.to_string(),
                    result: InstallResult::Installed,
                    detail: format!("{} installed", file.approved().filename()),
                });
                self.set_phase(&serial, Phase::Installed, "installed");
                EcuOutcome::Installed(file.approved().filename().to_string())
            }
            Err(e) => {
                if let Some(kind) = e.attack {
                    self.record_attack(kind, &e.detail);
                }
                self.state.last_install = Some(LastInstall {
                    correlation_id: correlation_id.to_string(),
                    result: InstallResult::Failed,
                    detail: e.detail.clone(),
                });
                self.set_phase(&serial, Phase::Failed, &e.detail);
                EcuOutcome::Failed(e.detail)
            }
        }
    }

    /// Whether every ECU of the plan is done (then the Director's targets version need not
    /// be looked at again until it changes), and the images no unfinished update needs.
    fn finish(&mut self, plan: &Plan) {
        let assigned: BTreeSet<&EcuSerial> =
            plan.images.iter().map(|(i, _)| i.ecu_serial()).collect();
        // A withdrawn update not yet abandoned is unfinished work too.
        let finished = assigned.iter().all(|serial| {
            self.state.updates.get(*serial).is_some_and(|u| {
                u.correlation_id == plan.correlation_for(serial) && u.phase.is_final()
            })
        }) && self.state.updates.values().all(|u| u.phase.is_final());
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
    }

    fn set_phase(&mut self, serial: &EcuSerial, phase: Phase, detail: &str) {
        if let Some(update) = self.state.updates.get_mut(serial) {
            update.phase = phase;
            update.detail = detail.to_string();
        }
    }

    fn bump_attempts(&mut self, serial: &EcuSerial, detail: &str) {
        if let Some(update) = self.state.updates.get_mut(serial) {
            update.attempts += 1;
            update.detail = detail.to_string();
        }
    }
}
