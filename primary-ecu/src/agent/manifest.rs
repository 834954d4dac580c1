//! Step 1 of the cycle (Uptane §5.4.2.1): every Secondary's signed version report for a
//! fresh nonce, checked before it is forwarded; the Primary's own report; the vehicle
//! version manifest, signed and sent to the Director.

use std::collections::BTreeMap;

use uptane_core::crypto::PublicKey;
use uptane_core::error::AttackKind;
use uptane_core::ids::EcuSerial;
use uptane_core::manifest::{
    ECU_REPORT_TYPE, EcuVersionReport, InstallResult, InstalledImage, LastInstall,
    MAX_ECU_REPORT_BYTES, VehicleVersionManifest, bounded_words, check_carriable, check_storable,
    verify_ecu_report,
};
use uptane_core::time::UtcTime;
use uptane_core::verify::Raw;

use super::Primary;
use crate::ports::{DirectorPort, ManifestOutcome, Ports, SecondaryPort};

/// What the Secondaries reported this time.
#[derive(Debug, Default)]
pub(super) struct Reports {
    /// Each signed report, as its ECU signed it.
    signed: BTreeMap<EcuSerial, Vec<u8>>,
    /// Each report's counter, to acknowledge once the Director accepted it.
    counters: BTreeMap<EcuSerial, u64>,
    /// The Secondaries that gave none, with why.
    pub(super) unreachable: BTreeMap<EcuSerial, String>,
}

/// A fresh nonce. The nonce is what makes a replayed report detectable, so a system with no
/// entropy gets no nonce rather than a predictable one.
fn nonce() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("no entropy for a nonce: {e}"))?;
    Ok(hex::encode(b))
}

impl<P: Ports> Primary<P> {
    /// Every Secondary's signed report for a fresh nonce, checked against the key it
    /// registered with (a forged or replayed report is not forwarded).
    pub(super) async fn collect_reports(&mut self) -> Reports {
        let mut reports = Reports::default();
        let nonces: Result<Vec<String>, String> = self.links.iter().map(|_| nonce()).collect();
        let nonces = match nonces {
            Ok(nonces) => nonces,
            Err(e) => {
                for link in &self.links {
                    reports.unreachable.insert(link.serial().clone(), e.clone());
                }
                return reports;
            }
        };
        let answers = futures_util::future::join_all(
            self.links
                .iter_mut()
                .zip(&nonces)
                .map(|(link, nonce)| async move { link.version_report(nonce).await }),
        )
        .await;
        let serials: Vec<EcuSerial> = self.links.iter().map(|l| l.serial().clone()).collect();
        for ((serial, nonce), answer) in serials.into_iter().zip(nonces).zip(answers) {
            let bytes = match answer {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::info!(%serial, error = %e, "no version report");
                    reports
                        .unreachable
                        .insert(serial, bounded_words(&e.to_string()));
                    continue;
                }
            };
            match self.check_report(&serial, &nonce, &bytes) {
                Ok((installed, counter)) => {
                    self.state.reported.insert(serial.clone(), installed);
                    reports.counters.insert(serial.clone(), counter);
                    reports.signed.insert(serial, bytes);
                }
                Err((kind, why)) => {
                    self.record_attack(kind, &format!("ECU {serial}: {why}"));
                    reports.unreachable.insert(serial, bounded_words(&why));
                }
            }
        }
        reports
    }

    fn check_report(
        &self,
        serial: &EcuSerial,
        nonce: &str,
        bytes: &[u8],
    ) -> Result<(InstalledImage, u64), (AttackKind, String)> {
        let ecu = self
            .inventory
            .iter()
            .find(|e| &e.serial == serial)
            .ok_or((AttackKind::UnknownEcu, "not in the inventory".to_string()))?;
        // A report the Director would refuse (too large for its manifest, or holding what it
        // cannot keep) would have the whole vehicle's manifest refused, every time: refused
        // here alone, the ECU reported unreachable with why.
        if bytes.len() > MAX_ECU_REPORT_BYTES {
            return Err((
                AttackKind::EndlessData,
                format!(
                    "version report of {} bytes, more than {MAX_ECU_REPORT_BYTES}",
                    bytes.len()
                ),
            ));
        }
        let key = PublicKey::from_json(ecu.public_key.clone())
            .map_err(|e| (AttackKind::Malformed, format!("registered key: {e}")))?;
        let report = verify_ecu_report(&Raw::new(bytes.to_vec()), &key)
            .map_err(|e| (e.attack(), format!("version report: {e}")))?;
        check_storable(&report)
            .map_err(|what| (AttackKind::Malformed, format!("version report: {what}")))?;
        if &report.ecu_serial != serial {
            return Err((
                AttackKind::ArbitrarySoftware,
                format!("report signed for ECU {}", report.ecu_serial),
            ));
        }
        if report.nonce != nonce {
            return Err((
                AttackKind::Replay,
                format!("report answers nonce {:?}, not the one asked", report.nonce),
            ));
        }
        check_carriable(bytes)
            .map_err(|what| (AttackKind::Malformed, format!("version report {what}")))?;
        Ok((report.installed_image.clone(), report.report_counter))
    }

    /// Tells each Secondary whose report the Director accepted, so it may forget the attacks
    /// the report carried. Best effort: one not told keeps them for the next report.
    async fn acknowledge(&mut self, counters: &BTreeMap<EcuSerial, u64>) {
        let acks = self.links.iter_mut().filter_map(|link| {
            let counter = *counters.get(link.serial())?;
            Some(async move {
                if let Err(e) = link.acknowledge(counter).await {
                    tracing::debug!(serial = %link.serial(), error = %e, "report not acknowledged");
                }
            })
        });
        futures_util::future::join_all(acks).await;
    }

    /// The Primary's own report: its image, the attacks not yet reported, a fresh nonce and
    /// a counter made durable before the report is signed.
    fn own_report(&mut self, now: UtcTime) -> Result<Vec<u8>, String> {
        let nonce = nonce()?;
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
            attacks_detected: self.state.attacks_to_report(),
            latest_time: now,
            nonce,
            report_counter: self.state.report_counter,
            last_install: self.own_last_install(),
        }
        .sign(&self.key)
        .map_err(|e| e.to_string())
    }

    /// The Primary's own latest install as its report states it: an update of its own under
    /// way (downloading, or withdrawn and not yet abandoned) is in progress, so that the
    /// Director does not take silence for an update never started.
    fn own_last_install(&self) -> Option<LastInstall> {
        match self.state.updates.get(&self.settings.serial) {
            Some(update)
                if !update.phase.is_final()
                    && self
                        .state
                        .last_install
                        .as_ref()
                        .is_none_or(|l| l.correlation_id != update.correlation_id) =>
            {
                Some(LastInstall {
                    correlation_id: update.correlation_id.clone(),
                    result: InstallResult::InProgress,
                    detail: format!("under way: {}", update.detail),
                })
            }
            _ => self.state.last_install.clone(),
        }
    }

    /// Signs the vehicle version manifest and sends it; the attacks it carries are
    /// forgotten only once the Director accepted it.
    pub(super) async fn send_manifest(
        &mut self,
        reports: &Reports,
        now: UtcTime,
    ) -> ManifestOutcome {
        let reported_attacks = self.state.attacks_pending();
        let mut all = reports.signed.clone();
        match self.own_report(now) {
            Ok(own) => all.insert(self.settings.serial.clone(), own),
            Err(e) => return ManifestOutcome::Unsent(e),
        };
        let signed = VehicleVersionManifest::new(&self.settings.vin, &self.settings.serial, &all)
            .map(|mut m| {
                m.unreachable_ecus = reports.unreachable.clone();
                m
            })
            .map_err(|e| e.to_string())
            .and_then(|m| m.sign(&self.key).map_err(|e| e.to_string()));
        let body = match signed {
            Ok(body) => body,
            Err(e) => return ManifestOutcome::Unsent(e),
        };
        let outcome = self.director.send_manifest(body).await;
        match &outcome {
            ManifestOutcome::Accepted => {
                self.state.attacks_reported(reported_attacks);
                if let Err(e) = self.save() {
                    return ManifestOutcome::Unsent(e);
                }
                self.acknowledge(&reports.counters).await;
            }
            ManifestOutcome::Refused(why) => tracing::warn!(%why, "manifest refused"),
            ManifestOutcome::ServerError(why) => tracing::warn!(%why, "the Director failed"),
            ManifestOutcome::Unsent(_) => {}
        }
        outcome
    }
}
