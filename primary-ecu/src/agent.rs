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
use uptane_core::time::UtcTime;

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
        let links = settings
            .secondaries
            .iter()
            .map(|c| SecondaryLink::new(c.clone(), timeout, &identity))
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
        })
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
        let now = self.now();
        self.renew_credential_if_due(now).await;
        let reports = self.collect_reports().await;
        let manifest = self.send_manifest(&reports, now).await;
        let mut report = CycleReport {
            manifest,
            verification: Verification::Unchanged,
            ecus: Default::default(),
            unreachable: reports.unreachable.clone(),
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
        let changed = !report.ecus.is_empty() || self.state.pending_attacks.len() > attacks_before;
        if changed {
            let reports = self.collect_reports().await;
            report.closing_manifest = Some(self.send_manifest(&reports, now).await);
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
