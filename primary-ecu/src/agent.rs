//! The update cycle (Uptane §5.4.2): report, verify both repositories, download, deliver to
//! every ECU in parallel, record. Verification is `uptane-core`'s; this module orders the
//! steps, keeps the state durable between them, and turns every refusal into an attack
//! report for the next vehicle version manifest.
//!
//! The steps live in modules of one concern each: [`manifest`] (reports and the vehicle
//! manifest), [`plan`] (verification), [`apply`] (download, fan-out, own install,
//! bookkeeping). The Director, the Image repository and the Secondaries are
//! [`crate::ports`]: the network in production, in-memory stand-ins in tests.

mod apply;
mod credential;
mod manifest;
mod outcome;
mod plan;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use uptane_core::crypto::SigningKey;
use uptane_core::error::AttackKind;
use uptane_core::ids::EcuSerial;
use uptane_core::manifest::{DetectedAttack, InstalledImage};
use uptane_core::time::{TrustedTime, UtcTime, format_expires};

pub use self::outcome::{CycleReport, EcuOutcome, Verification};
use self::plan::Refusal;
use crate::config::Settings;
use crate::download::ImageStore;
pub use crate::ports::ManifestOutcome;
use crate::ports::{HttpDirector, HttpRepository, Network, Ports};
use crate::repo::Fetcher;
use crate::secondary::SecondaryLink;
use crate::state::{InventoryEcu, PrimaryState, StateDir};

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A state file is missing or unreadable.
    #[error("{0}")]
    State(String),
}

/// The Primary agent, over its [`Ports`] (the network by default).
pub struct Primary<P: Ports = Network> {
    files: StateDir,
    settings: Settings,
    key: SigningKey,
    inventory: Vec<InventoryEcu>,
    state: PrimaryState,
    director: P::Director,
    images: P::ImageRepo,
    links: Vec<P::Secondary>,
    store: ImageStore,
    /// Fault injection: how far off the system clock is read.
    clock_offset: chrono::Duration,
}

impl<P: Ports> std::fmt::Debug for Primary<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("dir", &self.files.root())
            .field("vin", &self.settings.vin)
            .field("serial", &self.settings.serial)
            .field("secondaries", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Primary<Network> {
    /// Opens a provisioned state directory, with HTTP to both repositories and gRPC to the
    /// Secondaries.
    pub fn open(dir: &Path, settings: Settings) -> Result<Self, OpenError> {
        let files = StateDir::new(dir);
        let credential = std::fs::read_to_string(files.credential())
            .map_err(|e| state_error(&files.credential().display().to_string(), &e))?
            .trim()
            .to_string();
        let read_timeout = Duration::from_secs(settings.read_timeout_secs);
        let grace = Duration::from_millis(settings.download_grace_ms);
        let identity = crate::provision::tls_identity(dir, settings.serial.as_str())
            .map_err(|e| state_error("TLS identity", &e))?;
        let fetcher = |identity| {
            let tls = settings
                .client_tls(identity)
                .map_err(|e| OpenError::State(format!("TLS: {e}")))?;
            Fetcher::with_grace(
                &tls,
                read_timeout,
                settings.min_download_bytes_per_sec,
                grace,
            )
            .map_err(|e| OpenError::State(e.to_string()))
        };
        // The Director may have bound this certificate to the vehicle at registration.
        let director = HttpDirector::new(
            fetcher(Some(identity.clone()))?,
            settings.director_urls(),
            &credential,
        );
        let images = HttpRepository::new(
            fetcher(None)?,
            &settings.image_metadata_url(),
            &settings.image_targets_url(),
        );
        let timeout = Duration::from_secs(settings.secondary_timeout_secs);
        let min_speed = service_runtime::speed::MinSpeed {
            bytes_per_sec: settings.min_upload_bytes_per_sec,
            grace: Duration::from_millis(settings.upload_grace_ms),
        };
        let links = settings
            .secondaries
            .iter()
            .map(|c| {
                SecondaryLink::new(c.clone(), timeout, &identity)
                    .map(|l| l.with_min_speed(min_speed))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| OpenError::State(e.to_string()))?;
        Self::with_ports(dir, settings, director, images, links)
    }
}

fn state_error(what: &str, e: &dyn std::fmt::Display) -> OpenError {
    OpenError::State(format!("{what}: {e} (was `primary-ecu init` run?)"))
}

impl<P: Ports> Primary<P> {
    /// Opens a provisioned state directory over the given ports.
    pub fn with_ports(
        dir: &Path,
        settings: Settings,
        director: P::Director,
        images: P::ImageRepo,
        links: Vec<P::Secondary>,
    ) -> Result<Self, OpenError> {
        use crate::ports::SecondaryPort;
        let files = StateDir::new(dir);
        let key_path = files.key().display().to_string();
        let pem = std::fs::read_to_string(files.key()).map_err(|e| state_error(&key_path, &e))?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| state_error(&key_path, &e))?;
        let inventory = files
            .load_inventory()
            .map_err(|e| state_error("inventory", &e))?;
        let state = files.load_state().map_err(|e| state_error("state", &e))?;
        for link in &links {
            if !inventory.iter().any(|e| &e.serial == link.serial()) {
                return Err(OpenError::State(format!(
                    "Secondary {} is not in the registered inventory; register it first",
                    link.serial()
                )));
            }
        }
        let store = ImageStore::new(files.images(), files.downloads());
        Ok(Self {
            files,
            settings,
            key,
            inventory,
            state,
            director,
            images,
            links,
            store,
            clock_offset: chrono::Duration::zero(),
        })
    }

    /// Fault injection: reads the system clock `offset` off from now on.
    pub fn offset_clock(&mut self, offset: chrono::Duration) {
        self.clock_offset = offset;
    }

    /// The durable state, as last saved or changed.
    pub fn state(&self) -> &PrimaryState {
        &self.state
    }

    fn save(&self) -> Result<(), String> {
        self.files
            .save_state(&self.state)
            .map_err(|e| format!("saving state: {e}"))
    }

    fn record_attack(&mut self, kind: AttackKind, detail: &str) {
        let attack = DetectedAttack::new(kind, detail);
        tracing::warn!(attack = %kind, detail = attack.detail, "refused");
        self.state.keep_attack(attack);
    }

    /// The time the Primary trusts: the latest time its verified Director metadata
    /// corroborated (`uptane_core::time::TrustedTime`), never a bare clock reading.
    fn trusted_time(&self) -> TrustedTime {
        TrustedTime {
            floor: self.state.latest_time.unwrap_or(UtcTime::UNIX_EPOCH),
            reset: self.state.time_reset,
        }
    }

    /// Step 2 (Uptane §5.4.4.2) with the time checked against what it verifies: verification
    /// at the clock reading (never earlier than the trusted time), which then moves the trusted
    /// time up to what the Director's metadata corroborates. A reading earlier than the
    /// trusted time that verifies lowers it only if the Director's signed metadata carries a
    /// new operator reset. Returns the time verified at, which is the time the Secondaries get.
    async fn verify_in_time(
        &mut self,
        reading: UtcTime,
    ) -> (UtcTime, Result<Option<plan::Plan>, Refusal>) {
        let mut time = self.trusted_time();
        let at = time.at(reading);
        let mut evidence = None;
        let verified = self.verify(at, &mut evidence).await;
        if let Some(e) = &evidence
            && verified.is_ok()
        {
            time.corroborate(at, e);
            self.set_trusted_time(time);
            return (at, verified);
        }
        if let Err(Refusal::Attack(AttackKind::Freeze, _)) = &verified
            && let Some(earlier) = time.recovery_reading(reading)
        {
            let mut evidence = None;
            let retried = self.verify(earlier, &mut evidence).await;
            if retried.is_ok()
                && let Some(e) = &evidence
                && time.reset(earlier, e)
            {
                tracing::warn!(
                    trusted_time = %format_expires(&time.floor),
                    reset = time.reset,
                    "trusted time lowered by the operator's reset in the Director's metadata"
                );
                self.set_trusted_time(time);
                return (earlier, retried);
            }
        }
        (at, verified)
    }

    fn set_trusted_time(&mut self, time: TrustedTime) {
        self.state.latest_time = Some(time.floor);
        self.state.time_reset = time.reset;
    }

    /// What an ECU runs, as far as the Primary knows: its own image, or the last report.
    fn running_image(&self, serial: &EcuSerial) -> Option<&InstalledImage> {
        if *serial == self.settings.serial {
            self.state.installed.as_ref()
        } else {
            self.state.reported.get(serial)
        }
    }

    /// One update cycle.
    pub async fn cycle(&mut self) -> CycleReport {
        let reading = UtcTime::from(std::time::SystemTime::now()) + self.clock_offset;
        self.cycle_at(reading).await
    }

    /// One update cycle with the clock reading `reading`.
    pub async fn cycle_at(&mut self, reading: UtcTime) -> CycleReport {
        let trusted = self.trusted_time();
        // The trusted time, not the reading: a clock jump must not trigger a renewal.
        self.renew_credential_if_due(trusted.floor).await;
        let reports = self.collect_reports().await;
        // A report states the latest time the ECU can verify (Uptane §5.4.2.1).
        let manifest = self.send_manifest(&reports, trusted.floor).await;
        let mut report = CycleReport {
            manifest,
            verification: Verification::Unchanged,
            ecus: Default::default(),
            unreachable: reports.unreachable.clone(),
            closing_manifest: None,
        };
        let attacks_before = self.state.attacks_pending();
        let (now, verified) = self.verify_in_time(reading).await;
        match verified {
            Ok(None) => {}
            Ok(Some(plan)) => {
                report.verification = Verification::Verified {
                    targets_version: plan.targets_version,
                    images: plan.images.len(),
                };
                let unreachable = report.unreachable.clone();
                self.apply(plan, &unreachable, now, &mut report).await;
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
        let changed = !report.ecus.is_empty() || self.state.attacks_pending() != attacks_before;
        if changed {
            let reports = self.collect_reports().await;
            let floor = self.trusted_time().floor;
            report.closing_manifest = Some(self.send_manifest(&reports, floor).await);
        }
        self.state.last_cycle = Some(report.summary());
        self.state.last_error = match &report.verification {
            Verification::Refused { .. }
            | Verification::Failed(_)
            | Verification::LocalFailure(_) => Some(report.summary()),
            _ => None,
        };
        if let Err(e) = self.save() {
            tracing::error!(error = %e);
        }
        report
    }

    /// Runs a cycle every poll interval until `shutdown` completes. Every state change is
    /// an atomic write, so stopping mid-cycle loses nothing.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        let interval = self.settings.poll_interval();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                report = self.cycle() => {
                    tracing::info!(exit = report.exit_code(), "{}", report.summary());
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
