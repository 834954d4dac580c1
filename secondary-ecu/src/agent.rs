//! The ECU's state machine: verification results, the resumable transfer, the install
//! lifecycle on the A/B device, version reports, and results per correlation id. Everything
//! that must survive a power cut is in `state.json` and `bootenv.json`, written atomically;
//! a restart runs the bootloader step and resumes from there.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use proto::v2::{PutMetadataRequest, ResultCode};
use serde::{Deserialize, Serialize};
use service_runtime::digest::{DigestThreadError, FeedError, ThreadedDigests};
use service_runtime::tls::{Fingerprint, Identity as TlsIdentity};
use uptane_core::crypto::SigningKey;
use uptane_core::error::AttackKind;
use uptane_core::hash::{DigestError, Hashes};
use uptane_core::ids::{EcuSerial, HardwareId, Vin};
use uptane_core::manifest::{
    DetectedAttack, ECU_REPORT_TYPE, EcuVersionReport, InstallResult, InstalledImage, LastInstall,
};
use uptane_core::time::{TrustedTime, UtcTime, format_expires, from_unix_seconds};
use uptane_core::uptane::{ApprovedImage, EcuIdentity, PendingImage, UptaneError, VerifiedImage};

use crate::ab::{AbDevice, BootOutcome, SlotState};
pub use crate::ab::{Faults, Phase};
use crate::files;
use crate::verify::{self, Ecu};
use service_runtime::durable::BackgroundSync;

/// How this ECU verifies metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Both repositories, as the Primary does, checking only its own image.
    Full,
    /// Director targets only.
    Partial,
}

/// Fixed identity, written by `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Vehicle.
    pub vin: Vin,
    /// ECU serial.
    pub serial: EcuSerial,
    /// Hardware id.
    pub hardware_id: HardwareId,
    /// Verification mode.
    pub mode: Mode,
    /// The Primary's TLS certificate, pinned at provisioning: only it may change this ECU's
    /// state or read its evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_fingerprint: Option<Fingerprint>,
}

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest chunk accepted.
    pub max_chunk_size: u32,
    /// Boot attempts of a trial slot.
    pub boot_attempts: u32,
    /// Wait for an explicit Confirm instead of confirming after the health check.
    pub manual_confirm: bool,
    /// Received bytes are made durable (fsync, offset recorded) this often: a sync starts on
    /// a thread of its own each time this many bytes have arrived since the last durable
    /// offset, and the receive path waits for it only when two intervals are not yet durable.
    pub durable_interval: u64,
    /// Fault knobs.
    pub faults: Faults,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_chunk_size: 1 << 20,
            boot_attempts: 3,
            manual_confirm: false,
            durable_interval: 32 << 20,
            faults: Faults::default(),
        }
    }
}

/// One Upload stream's claim on the transfer ([`Agent::start_upload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    id: u64,
    /// The durable offset the stream starts from.
    pub from: u64,
}

/// The result kept for one correlation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// `ResultCode` value.
    pub code: i32,
    /// The attack, if the result is a refusal that stopped one.
    #[serde(default, deserialize_with = "attack_or_empty")]
    pub attack: Option<AttackKind>,
    /// Words.
    pub description: String,
    /// Image file name.
    pub filename: String,
    /// Unix seconds.
    pub updated_at: i64,
    /// Order of recording, to forget the oldest first.
    #[serde(default)]
    pub seq: u64,
}

/// Results kept at most (the newest; the current update's is never forgotten).
pub const MAX_RESULTS: usize = 32;

/// Distinct attacks kept for the next reports at most; more of them are counted (`State`
/// `attacks_not_itemized`) and reported as one entry.
pub use uptane_core::manifest::MAX_KEPT_ATTACKS;

/// An attack as kept in `state.json`; before protocol v2 a result without one kept `""`.
fn attack_or_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<AttackKind>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => serde_json::from_value(serde_json::Value::String(text))
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    correlation_id: String,
    filename: String,
    length: u64,
    release_counter: u64,
    /// The approved digests: metadata that keep the name and length but change the bytes
    /// replace the update. (Empty in state written before they were kept: such a record is
    /// taken at its name, length and release counter, and gets them from the next metadata.)
    #[serde(default)]
    hashes: Hashes,
}

impl Pending {
    fn new(correlation_id: &str, image: &ApprovedImage) -> Self {
        Self {
            correlation_id: correlation_id.to_string(),
            filename: image.filename().to_string(),
            length: image.length(),
            release_counter: image.release_counter(),
            hashes: image.hashes().clone(),
        }
    }

    /// Whether `image` is the one this update installs (whatever the update is called).
    fn is_image(&self, image: &InstalledImage) -> bool {
        self.installs(
            &image.filename,
            image.length,
            &image.hashes,
            image.release_counter,
        )
    }

    /// Whether `next` installs the same image as this update (whatever either is called).
    fn same_image_as(&self, next: &Pending) -> bool {
        self.installs(
            &next.filename,
            next.length,
            &next.hashes,
            next.release_counter,
        )
    }

    fn installs(&self, filename: &str, length: u64, hashes: &Hashes, release_counter: u64) -> bool {
        release_counter == self.release_counter
            && filename == self.filename
            && length == self.length
            && (self.hashes.is_empty() || uptane_core::hash::same_digests(&self.hashes, hashes))
    }
}

/// An attack detected, kept until the Primary acknowledges a report that carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeptAttack {
    #[serde(flatten)]
    attack: DetectedAttack,
    /// The counter of the first report that carried it.
    #[serde(default)]
    first_reported_in: Option<u64>,
}

/// Starts of one install that may end without a result (power lost while writing the slot)
/// before the update fails for good: a bound on the loop of a device that loses power in
/// the same phase every time (ecu-side.md (c) row 30).
pub const MAX_INSTALL_STARTS: u32 = 3;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    report_counter: u64,
    latest_time: i64,
    targets_version: Option<u64>,
    attacks: Vec<KeptAttack>,
    pending: Option<Pending>,
    durable_offset: u64,
    transfer_complete: bool,
    installed_release_counter: u64,
    results: BTreeMap<String, ResultRecord>,
    last_correlation_id: Option<String>,
    /// The last operator time reset applied (`uptane_core::time::TrustedTime`).
    #[serde(default)]
    time_reset: u64,
    /// Attacks beyond [`MAX_KEPT_ATTACKS`], until a report that carried them is
    /// acknowledged.
    #[serde(default)]
    attacks_not_itemized: Option<NotItemized>,
    /// Installs of the pending image started and not seen to end (power lost while writing
    /// the slot): the loop guard's count ([`MAX_INSTALL_STARTS`]).
    #[serde(default)]
    install_starts: u32,
    /// The boot in which the last counted start happened: a start again within the same boot
    /// (the Primary asking again) is not another interruption.
    #[serde(default)]
    install_start_boot: Option<String>,
}

/// Attacks counted, not kept one by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NotItemized {
    /// The newest one's kind.
    kind: AttackKind,
    /// How many.
    count: u64,
    /// The counter of the first report that carried them.
    first_reported_in: Option<u64>,
}

impl NotItemized {
    fn detected(&self) -> DetectedAttack {
        DetectedAttack::new(
            self.kind,
            &format!(
                "{} more attacks beyond the {MAX_KEPT_ATTACKS} kept, the newest of this kind",
                self.count
            ),
        )
    }
}

/// A refusal or failure with its protocol code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Protocol result code.
    pub code: ResultCode,
    /// The attack it stopped, if any.
    pub attack: Option<AttackKind>,
    /// Words.
    pub description: String,
}

impl Refusal {
    fn new(code: ResultCode, description: impl Into<String>) -> Self {
        Self {
            code,
            attack: None,
            description: description.into(),
        }
    }
}

fn uptane_refusal(e: &UptaneError) -> Refusal {
    use uptane_core::error::UpdateError;
    let code = match e {
        UptaneError::WrongHardware { .. } => ResultCode::HardwareIdMismatch,
        UptaneError::ReleaseCounterRollback { .. } => ResultCode::ReleaseCounterRollback,
        UptaneError::Image {
            source: DigestError::TooLong { .. } | DigestError::LengthMismatch { .. },
            ..
        } => ResultCode::LengthMismatch,
        UptaneError::Image { .. } => ResultCode::HashMismatch,
        UptaneError::Update(UpdateError::Expired { .. }) => ResultCode::MetadataExpired,
        UptaneError::Update(UpdateError::Rollback { .. }) => ResultCode::MetadataRollback,
        UptaneError::Update(UpdateError::Verify(_)) => ResultCode::SignatureInvalid,
        _ => ResultCode::VerificationFailed,
    };
    Refusal {
        code,
        attack: Some(e.attack()),
        description: e.to_string(),
    }
}

fn io(e: std::io::Error) -> Refusal {
    Refusal::new(ResultCode::InternalError, format!("storage: {e}"))
}

/// The ECU agent.
#[derive(Debug)]
pub struct Agent {
    dir: PathBuf,
    identity: Identity,
    settings: Settings,
    key: SigningKey,
    device: AbDevice,
    state: State,
    boot_id: String,
    /// Volatile: the hasher of the transfer in progress, the offset received so far, and the
    /// open staging file.
    receiving: Option<Receiving>,
    /// Volatile: the upload stream that owns `receiving`; a stream started later takes it
    /// over, and chunks still queued from an abandoned one are refused.
    upload: u64,
    /// Volatile: a trial slot running and waiting for Confirm.
    trial_running: Option<String>,
    /// Volatile: the update whose install job runs (between `prepare_install` and
    /// `finish_install`).
    installing: Option<String>,
    /// Volatile: the Primary's last `PutTime`, kept only once the next metadata verifies at
    /// it (`uptane_core::time::TrustedTime`).
    proposed_time: Option<UtcTime>,
}

/// Paths inside the ECU directory.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join("ecu.pem")
}

/// The ECU's TLS identity (`cert.pem`, `key.pem`), made at `init`.
pub fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("tls")
}

/// Reads the ECU's TLS identity.
pub fn tls_identity(dir: &Path) -> Result<TlsIdentity, service_runtime::tls::TlsError> {
    let tls = tls_dir(dir);
    TlsIdentity::from_pem_files(&tls.join("cert.pem"), &tls.join("key.pem"))
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn staging_path(dir: &Path) -> PathBuf {
    dir.join("staging").join("image.part")
}

fn trusted(dir: &Path, name: &str) -> PathBuf {
    dir.join("trusted").join(name)
}

/// A random identifier (boot ids). Fails loudly when the system has no entropy: an ECU
/// must not make up predictable identifiers.
pub fn random_id() -> std::io::Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(format!("no entropy: {e}")))?;
    Ok(hex::encode(b))
}

fn unix(t: UtcTime) -> i64 {
    t.timestamp()
}

/// What an ECU is provisioned with.
#[derive(Debug)]
pub struct Provisioning<'a> {
    /// Vehicle, serial, hardware id, mode.
    pub identity: &'a Identity,
    /// The ECU key.
    pub key: &'a SigningKey,
    /// The Director root to trust.
    pub director_root: &'a [u8],
    /// The Image repository root to trust (full verification).
    pub image_root: Option<&'a [u8]>,
    /// File name of the factory image.
    pub image_name: &'a str,
    /// The factory image, written to slot A.
    pub image: &'a [u8],
    /// A device with one bank only (no slot B; an install overwrites slot A).
    pub single_bank: bool,
}

/// Creates an ECU directory: key, TLS identity, identity, trusted roots, and a device with
/// the factory image in slot A. Returns the fingerprint of the TLS certificate, which the
/// Primary pins.
pub fn init(dir: &Path, p: &Provisioning<'_>, now: UtcTime) -> std::io::Result<Fingerprint> {
    let Provisioning {
        identity,
        key,
        director_root,
        image_root,
        image_name,
        image,
        single_bank,
    } = *p;
    if state_path(dir).exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} is already an ECU directory", dir.display()),
        ));
    }
    std::fs::create_dir_all(dir)?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(key_path(dir))?;
        file.write_all(key.to_pkcs8_pem().as_bytes())?;
        file.sync_all()?;
    }
    files::write_atomic(
        &dir.join("ecu.pub.json"),
        &serde_json::to_vec_pretty(key.public_key().to_json())?,
    )?;
    let tls = service_runtime::pki::self_signed(
        identity.serial.as_str(),
        &[service_runtime::pki::DEVICE_NAME],
    )
    .map_err(std::io::Error::other)?;
    tls.write(&tls_dir(dir))?;
    let fingerprint = tls.fingerprint().map_err(std::io::Error::other)?;
    files::save(&dir.join("identity.json"), identity)?;
    files::write_atomic(&trusted(dir, "director-root.json"), director_root)?;
    if let Some(root) = image_root {
        files::write_atomic(&trusted(dir, "image-root.json"), root)?;
    }
    let info = InstalledImage {
        filename: image_name.into(),
        length: image.len() as u64,
        hashes: uptane_core::hash::standard_hashes(image),
        release_counter: 0,
    };
    AbDevice::new(dir).create(image, info, single_bank)?;
    let state = State {
        latest_time: unix(now),
        ..State::default()
    };
    files::save(&state_path(dir), &state)?;
    Ok(fingerprint)
}

impl Agent {
    /// Opens the ECU directory and boots (the bootloader step runs at every start).
    pub fn open(dir: &Path, settings: Settings) -> std::io::Result<Self> {
        let faults = settings.faults.clone();
        let pem = std::fs::read_to_string(key_path(dir))?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let identity: Identity = files::load(&dir.join("identity.json"))?;
        let state: State = files::load(&state_path(dir))?;
        let mut agent = Self {
            dir: dir.to_path_buf(),
            identity,
            settings,
            key,
            device: AbDevice::with_faults(dir, faults),
            state,
            boot_id: random_id()?,
            receiving: None,
            upload: 0,
            trial_running: None,
            installing: None,
            proposed_time: None,
        };
        agent.boot()?;
        Ok(agent)
    }

    fn save(&self) -> std::io::Result<()> {
        files::save(&state_path(&self.dir), &self.state)
    }

    /// The bootloader step, then the health check of a trial slot: a trial that fails it is
    /// reset by the watchdog and booted again while the bootloader grants attempts (each
    /// boot spends one), then rolled back.
    fn boot(&mut self) -> std::io::Result<()> {
        self.boot_id = random_id()?;
        self.receiving = None;
        self.trial_running = None;
        loop {
            match self.device.boot()? {
                BootOutcome::Normal => return self.reconcile_confirmed(),
                BootOutcome::RolledBack { correlation_id } => {
                    let filename = self
                        .state
                        .pending
                        .as_ref()
                        .map(|p| p.filename.clone())
                        .unwrap_or_default();
                    return self.record(
                        &correlation_id,
                        ResultCode::RolledBack,
                        None,
                        "the new image failed its trial boot; back on the previous slot",
                        &filename,
                    );
                }
                BootOutcome::Trial { correlation_id } => {
                    self.device.power_cut(Phase::BeforeConfirm);
                    if self.device.health_check_fails() {
                        tracing::warn!(
                            correlation_id,
                            "the trial image failed its health check; the watchdog resets it"
                        );
                        continue;
                    }
                    if self.settings.manual_confirm {
                        self.trial_running = Some(correlation_id);
                    } else {
                        self.confirm_trial(&correlation_id)?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// A pending update whose image the device already runs as its good, active slot was
    /// confirmed by the device but not recorded (power lost between the two): records it now,
    /// once, as the confirmation would have.
    fn reconcile_confirmed(&mut self) -> std::io::Result<()> {
        let Some(pending) = self.state.pending.clone() else {
            return Ok(());
        };
        let Some(image) = self.device.running()? else {
            return Ok(());
        };
        if !pending.is_image(&image) {
            return Ok(());
        }
        tracing::warn!(
            correlation_id = %pending.correlation_id,
            "the device runs the confirmed update whose result was not recorded; recording it"
        );
        self.state.installed_release_counter = image.release_counter;
        self.state.pending = None;
        self.record(
            &pending.correlation_id,
            ResultCode::Ok,
            None,
            "installed and confirmed",
            &image.filename,
        )
    }

    fn confirm_trial(&mut self, correlation_id: &str) -> std::io::Result<()> {
        if let Some(image) = self.device.confirm()? {
            self.device.power_cut(Phase::Confirm);
            self.state.installed_release_counter = image.release_counter;
            self.state.pending = None;
            self.record(
                correlation_id,
                ResultCode::Ok,
                None,
                "installed and confirmed",
                &image.filename,
            )?;
        }
        self.trial_running = None;
        Ok(())
    }

    fn record(
        &mut self,
        correlation_id: &str,
        code: ResultCode,
        attack: Option<AttackKind>,
        description: &str,
        filename: &str,
    ) -> std::io::Result<()> {
        if !correlation_id.is_empty() {
            let seq = self
                .state
                .results
                .values()
                .map(|r| r.seq + 1)
                .max()
                .unwrap_or(0);
            self.state.results.insert(
                correlation_id.to_string(),
                ResultRecord {
                    code: code as i32,
                    attack,
                    description: description.to_string(),
                    filename: filename.to_string(),
                    updated_at: self.state.latest_time,
                    seq,
                },
            );
            self.state.last_correlation_id = Some(correlation_id.to_string());
            while self.state.results.len() > MAX_RESULTS {
                let oldest = self
                    .state
                    .results
                    .iter()
                    .filter(|(c, _)| Some(c.as_str()) != self.pending_correlation_id())
                    .min_by_key(|(_, r)| r.seq)
                    .map(|(c, _)| c.clone());
                match oldest {
                    Some(c) => self.state.results.remove(&c),
                    None => break,
                };
            }
        }
        if let Some(kind) = attack {
            tracing::warn!(attack = %kind, correlation_id, description, "attack detected");
            let attack = DetectedAttack::new(kind, description);
            let pending = |k: &KeptAttack| k.first_reported_in.is_none();
            if self
                .state
                .attacks
                .iter()
                .any(|k| pending(k) && k.attack == attack)
            {
                // The same attack again before a report carried the first: once is evidence.
            } else if self.state.attacks.len() >= MAX_KEPT_ATTACKS {
                let counted = self.state.attacks_not_itemized.get_or_insert(NotItemized {
                    kind,
                    count: 0,
                    first_reported_in: None,
                });
                counted.kind = kind;
                counted.count += 1;
                // Not yet reported with this one in it: not forgotten until a report is.
                counted.first_reported_in = None;
            } else {
                self.state.attacks.push(KeptAttack {
                    attack,
                    first_reported_in: None,
                });
            }
        }
        self.save()
    }

    /// Records the attack a refusal stopped, without a result: the call named no update of
    /// this ECU's, and a caller must not be able to write a result under an id it chose.
    fn refuse_unkept(&mut self, refusal: Refusal) -> Refusal {
        self.refuse("", refusal, "")
    }

    fn refuse(&mut self, correlation_id: &str, refusal: Refusal, filename: &str) -> Refusal {
        if let Err(e) = self.record(
            correlation_id,
            refusal.code,
            refusal.attack,
            &refusal.description,
            filename,
        ) {
            return io(e);
        }
        refusal
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The ECU public key.
    pub fn public_key(&self) -> &uptane_core::crypto::PublicKey {
        self.key.public_key()
    }

    /// Settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Random per boot.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The bootloader environment.
    pub fn device(&self) -> &AbDevice {
        &self.device
    }

    /// The correlation id of the update in progress.
    pub fn pending_correlation_id(&self) -> Option<&str> {
        self.state
            .pending
            .as_ref()
            .map(|p| p.correlation_id.as_str())
    }

    /// The time this ECU trusts. A stored time no date corresponds to is an error, never
    /// read as 1970.
    fn trusted_time(&self) -> Result<TrustedTime, Refusal> {
        let floor = from_unix_seconds(self.state.latest_time).map_err(|e| {
            Refusal::new(
                ResultCode::InternalError,
                format!("state.json latest_time: {e}"),
            )
        })?;
        Ok(TrustedTime {
            floor,
            reset: self.state.time_reset,
        })
    }

    /// Takes the Primary's time as a proposal: it is trusted only once the next metadata
    /// verifies at it (`put_metadata`). A time no date corresponds to is refused and
    /// reported as an attack.
    pub fn put_time(&mut self, unix_seconds: i64) -> Result<&'static str, Refusal> {
        match from_unix_seconds(unix_seconds) {
            Ok(time) => {
                self.proposed_time = Some(time);
                Ok("time taken; trusted once the Director's metadata verifies at it")
            }
            Err(e) => Err(self.refuse_unkept(Refusal {
                code: ResultCode::TimeRefused,
                attack: Some(AttackKind::TimeTampering),
                description: e.to_string(),
            })),
        }
    }

    /// A signed version report with the Primary's nonce and a counter that only goes up.
    pub fn version_report(&mut self, nonce: &str) -> std::io::Result<Vec<u8>> {
        let installed = self.device.running()?.unwrap_or(InstalledImage {
            filename: String::new(),
            length: 0,
            hashes: Default::default(),
            release_counter: 0,
        });
        self.state.report_counter += 1;
        let counter = self.state.report_counter;
        // Every attack not yet acknowledged goes into every report: a report that never
        // reaches the Director loses no evidence.
        for kept in &mut self.state.attacks {
            kept.first_reported_in.get_or_insert(counter);
        }
        let mut attacks: Vec<DetectedAttack> = self
            .state
            .attacks
            .iter()
            .map(|k| k.attack.clone())
            .collect();
        if let Some(counted) = &mut self.state.attacks_not_itemized {
            counted.first_reported_in.get_or_insert(counter);
            attacks.push(counted.detected());
        }
        let last_install = match &self.state.pending {
            // An update under way with no result yet (its image being received) is in
            // progress: the Director must not take silence for an update never started.
            Some(p) if self.state.last_correlation_id.as_ref() != Some(&p.correlation_id) => {
                Some(LastInstall {
                    correlation_id: p.correlation_id.clone(),
                    result: InstallResult::InProgress,
                    detail: format!(
                        "under way: {} of {} bytes of {} received",
                        self.state.durable_offset, p.length, p.filename
                    ),
                })
            }
            _ => self.state.last_correlation_id.as_ref().and_then(|c| {
                self.state.results.get(c).map(|r| LastInstall {
                    correlation_id: c.clone(),
                    result: install_result(r.code),
                    detail: r.description.clone(),
                })
            }),
        };
        let report = EcuVersionReport {
            report_type: ECU_REPORT_TYPE.into(),
            ecu_serial: self.identity.serial.clone(),
            installed_image: installed,
            attacks_detected: attacks,
            latest_time: self
                .trusted_time()
                .map_err(|r| std::io::Error::other(r.description))?
                .floor,
            nonce: nonce.to_string(),
            report_counter: self.state.report_counter,
            last_install,
        };
        // The counter is durable before the report leaves, so it can never be reused.
        self.save()?;
        report.sign(&self.key).map_err(std::io::Error::other)
    }

    /// The Director accepted a manifest carrying this ECU's report `report_counter`: the
    /// attacks that report carried are forgotten.
    pub fn acknowledge_report(&mut self, report_counter: u64) -> std::io::Result<()> {
        let before = self.state.attacks.len();
        self.state.attacks.retain(|k| {
            k.first_reported_in
                .is_none_or(|first| first > report_counter)
        });
        let counted_reported = self
            .state
            .attacks_not_itemized
            .as_ref()
            .and_then(|c| c.first_reported_in)
            .is_some_and(|first| first <= report_counter);
        if counted_reported {
            self.state.attacks_not_itemized = None;
        }
        if self.state.attacks.len() != before || counted_reported {
            self.save()?;
        }
        Ok(())
    }

    fn verify_bundle(
        &self,
        bundle: &PutMetadataRequest,
        now: UtcTime,
    ) -> Result<verify::Accepted, Refusal> {
        let read = |name: &str| {
            std::fs::read(trusted(&self.dir, name)).map_err(|e| {
                io(std::io::Error::new(
                    e.kind(),
                    format!("trusted {name}: {e}"),
                ))
            })
        };
        let director_root = read("director-root.json")?;
        let kept = self.kept_metadata()?;
        let ecu = Ecu {
            identity: EcuIdentity {
                vin: &self.identity.vin,
                ecu_serial: &self.identity.serial,
                hardware_id: &self.identity.hardware_id,
                installed_release_counter: self.state.installed_release_counter,
            },
            director_root: &director_root,
            previous_targets_version: self.state.targets_version,
            kept: &kept,
        };
        let verified = match self.identity.mode {
            Mode::Full => verify::full(&ecu, &read("image-root.json")?, bundle, now),
            Mode::Partial => verify::partial(&ecu, bundle, now),
        };
        verified.map_err(|e| uptane_refusal(&e))
    }

    /// What full verification kept from the last accepted bundle (nothing before the first,
    /// or for a Secondary kept from before this was recorded).
    fn kept_metadata(&self) -> Result<verify::KeptMetadata, Refusal> {
        match std::fs::read(trusted(&self.dir, "kept.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Refusal::new(ResultCode::InternalError, format!("trusted kept.json: {e}"))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(io(e)),
        }
    }

    /// The image approved by the metadata last accepted, verified again now.
    fn approved(&self) -> Result<ApprovedImage, Refusal> {
        let bytes = std::fs::read(trusted(&self.dir, "metadata.pb")).map_err(io)?;
        let bundle = PutMetadataRequest::decode(bytes.as_slice())
            .map_err(|e| Refusal::new(ResultCode::InternalError, e.to_string()))?;
        self.verify_bundle(&bundle, self.trusted_time()?.floor)?
            .image
            .ok_or_else(|| Refusal::new(ResultCode::NoUpdate, "no image assigned to this ECU"))
    }

    /// Verifies and keeps new metadata; on any failure the previous metadata and image stay
    /// and the attack is recorded for the next version report.
    pub fn put_metadata(&mut self, bundle: PutMetadataRequest) -> Result<ResultCode, Refusal> {
        let (accepted, time) = match self.verify_at_trusted_time(&bundle) {
            Ok(a) => a,
            Err(refusal) => return Err(self.refuse_unkept(refusal)),
        };
        // The update's id is one the Director signed, whatever the bundle says: its own
        // entry's (a Primary speaking protocol version 3) or the targets' own (version 2).
        let correlation_id = bundle.correlation_id.clone();
        if correlation_id != accepted.correlation_id
            && correlation_id != accepted.vehicle_correlation_id
        {
            let refusal = Refusal {
                code: ResultCode::VerificationFailed,
                attack: Some(AttackKind::MixAndMatch),
                description: format!(
                    "the bundle names update {correlation_id:?}, the signed targets {:?} (or \
                     {:?})",
                    accepted.correlation_id, accepted.vehicle_correlation_id
                ),
            };
            return Err(self.refuse_unkept(refusal));
        }
        let next = accepted
            .image
            .as_ref()
            .map(|image| Pending::new(&correlation_id, image));
        // Replaced: another image (a new name, length, release counter or digests). The same
        // image under the other id the Director signed for it (protocol versions 2 and 3) is
        // the same update.
        let replaced = match (&self.state.pending, &next) {
            (Some(current), Some(next)) => !current.same_image_as(next),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if replaced && let Some(why) = self.past_point_of_no_return(next.is_none()).map_err(io)? {
            // The metadata that approved it stay, so that it can be finished.
            tracing::warn!(
                correlation_id = ?self.pending_correlation_id(),
                "the Director withdrew or replaced an update past its point of no return \
                 ({why}); it is kept, to be finished"
            );
            return Ok(ResultCode::NeedCompletion);
        }
        files::write_atomic(
            &trusted(&self.dir, "director-root.json"),
            &accepted.director_root,
        )
        .map_err(io)?;
        if let Some(root) = &accepted.image_root {
            files::write_atomic(&trusted(&self.dir, "image-root.json"), root).map_err(io)?;
        }
        // The bundle first: were the kept copies newer than the kept bundle, re-verifying
        // it at install would look like a rollback.
        files::write_atomic(&trusted(&self.dir, "metadata.pb"), &bundle.encode_to_vec())
            .map_err(io)?;
        self.device.power_cut(Phase::Metadata);
        if let Some(kept) = &accepted.kept {
            let bytes = serde_json::to_vec(kept).map_err(|e| io(std::io::Error::other(e)))?;
            files::write_atomic(&trusted(&self.dir, "kept.json"), &bytes).map_err(io)?;
        }
        self.state.targets_version = Some(accepted.targets_version);
        self.state.latest_time = time.floor.timestamp();
        self.state.time_reset = time.reset;
        let (Some(image), Some(next)) = (accepted.image, next) else {
            return self.withdraw_pending(accepted.targets_version);
        };
        if let Some(old) = self.state.pending.clone().filter(|_| replaced) {
            if self.installing.is_some() {
                // Stopped by the caller, then asked again (as for a withdrawal).
                self.save().map_err(io)?;
                return Ok(ResultCode::Busy);
            }
            tracing::info!(
                correlation_id = %old.correlation_id,
                filename = %old.filename,
                targets_version = accepted.targets_version,
                "update replaced by the Director before activation; abandoned"
            );
            self.abandon_pending(
                &old,
                Some(&next.correlation_id),
                &format!(
                    "replaced before activation: the Director's targets version {} assign {}",
                    accepted.targets_version, next.filename
                ),
            )?;
        }
        let running = self.device.running().map_err(io)?;
        if running.is_some_and(|r| r.is(image.filename(), image.length(), image.hashes())) {
            self.state.pending = None;
            self.save().map_err(io)?;
            return Ok(ResultCode::AlreadyProcessed);
        }
        match self.state.pending.take() {
            // The same image: its transfer and any write of it go on, under the id this bundle
            // names and the digests listed now.
            Some(current) => {
                if current.correlation_id != next.correlation_id {
                    self.rename_written(&current.correlation_id, &next.correlation_id);
                }
                self.state.pending = Some(next);
            }
            None => {
                self.state.pending = Some(next);
                self.state.install_starts = 0;
                self.state.install_start_boot = None;
                self.receiving = None;
                self.discard_transfer();
            }
        }
        self.save().map_err(io)?;
        Ok(ResultCode::Ok)
    }

    /// The "written, activate to boot it" result of the update called `old`, kept under its
    /// new name `new`: the Primary asks by the name it sends.
    fn rename_written(&mut self, old: &str, new: &str) {
        if self
            .state
            .results
            .get(old)
            .is_some_and(|r| r.code == ResultCode::NeedCompletion as i32)
            && let Some(written) = self.state.results.remove(old)
        {
            self.state.results.insert(new.to_string(), written);
        }
    }

    /// Why a pending update can no longer be abandoned, if it cannot: a trial under way (it
    /// ends installed or rolled back), or, when it is `withdrawn` (nothing replaces it), a
    /// single bank whose image is being (or was) overwritten: the bank must be programmed
    /// with something, and a replacement is. Before that point a withdrawal or a replacement
    /// abandons it ([`Self::abandon_pending`]).
    fn past_point_of_no_return(&self, withdrawn: bool) -> std::io::Result<Option<&'static str>> {
        if self.state.pending.is_none() {
            return Ok(None);
        }
        let env = self.device.env()?;
        let slot = env.slots.get(&AbDevice::inactive(&env));
        // It can be finished only with its image at hand: being written, received whole, or
        // written. Without (its bank already given up for a replacement that never arrived)
        // the device stays in recovery until programmed again, as after the loop guard.
        let finishable = self.installing.is_some()
            || self.state.transfer_complete
            || slot.is_some_and(|s| {
                s.state == SlotState::Pending
                    && s.image.as_ref().is_some_and(|image| {
                        self.state
                            .pending
                            .as_ref()
                            .is_some_and(|p| p.is_image(image))
                    })
            });
        let only_bank_touched = withdrawn
            && finishable
            && AbDevice::single_bank(&env)
            && slot.is_none_or(|s| s.state != SlotState::Good);
        Ok(if env.trial.is_some() || self.trial_running.is_some() {
            Some("its trial boot is under way")
        } else if only_bank_touched {
            Some("the only bank is being overwritten")
        } else {
            None
        })
    }

    /// The Director's verified targets (version `targets_version`) assign this ECU nothing:
    /// an update pending here (not past its point of no return, checked before) was withdrawn
    /// (an operator's cancel, ecu-side.md (c) row 19). It is abandoned: the staging freed, a
    /// slot written for it marked bad (never booted), and `OPERATION_CANCELLED` kept as its
    /// result for the Director, unless it already ended with a failure of its own. Answers
    /// `BUSY` while an install job runs (the caller stops the job and asks again).
    fn withdraw_pending(&mut self, targets_version: u64) -> Result<ResultCode, Refusal> {
        let Some(pending) = self.state.pending.clone() else {
            self.save().map_err(io)?;
            return Ok(ResultCode::NoUpdate);
        };
        if self.installing.is_some() {
            self.save().map_err(io)?;
            return Ok(ResultCode::Busy);
        }
        tracing::info!(
            correlation_id = %pending.correlation_id,
            targets_version,
            "update withdrawn by the Director before activation; abandoned"
        );
        self.abandon_pending(
            &pending,
            None,
            &format!(
                "cancelled before activation: the Director's targets version {targets_version} \
                 no longer assign it; staging freed, the running image untouched"
            ),
        )?;
        Ok(ResultCode::NoUpdate)
    }

    /// Ends `pending` before activation, withdrawn or replaced by the Director (no install job
    /// running; the caller checked): nothing pending, a slot written for it marked bad (never
    /// booted), the staging freed. Its result: `OPERATION_CANCELLED` (`why`) unless it already
    /// ended with a failure of its own; when the update that replaces it keeps its id
    /// (`next_id`), nothing: what was kept was about the image replaced.
    fn abandon_pending(
        &mut self,
        pending: &Pending,
        next_id: Option<&str>,
        why: &str,
    ) -> Result<(), Refusal> {
        let env = self.device.env().map_err(io)?;
        let slot = AbDevice::inactive(&env);
        let written = env.slots.get(&slot).map(|s| s.state);
        // The update ends durably first (nothing pending, its result settled); a power cut
        // before the slot and the staging are dealt with leaves a written slot no one
        // activates and a staging file the next update replaces.
        self.receiving = None;
        self.state.durable_offset = 0;
        self.state.transfer_complete = false;
        self.state.install_starts = 0;
        self.state.install_start_boot = None;
        self.state.pending = None;
        let id = pending.correlation_id.as_str();
        if next_id == Some(id) {
            self.state.results.remove(id);
            self.save().map_err(io)?;
        } else if self.result(id).is_some_and(|r| {
            proto::is_final_failure(ResultCode::try_from(r.code).unwrap_or_default())
        }) {
            // A failure that ended it for good stays its result; a transient one does not.
            self.save().map_err(io)?;
        } else {
            self.record(
                id,
                ResultCode::OperationCancelled,
                None,
                why,
                &pending.filename,
            )
            .map_err(io)?;
        }
        if written == Some(SlotState::Pending) {
            self.device.mark_bad(&slot).map_err(io)?;
        }
        self.discard_transfer();
        Ok(())
    }

    /// Verifies `bundle` at the Primary's proposed time and returns the time trusted after it,
    /// by the one rule of `uptane_core::time::TrustedTime`: a proposal the metadata does not
    /// corroborate is refused as time tampering, and an earlier one lowers the trusted time
    /// only when the Director's signed metadata carries a new operator reset.
    fn verify_at_trusted_time(
        &self,
        bundle: &PutMetadataRequest,
    ) -> Result<(verify::Accepted, TrustedTime), Refusal> {
        let mut time = self.trusted_time()?;
        let reading = self.proposed_time.unwrap_or(time.floor);
        let at = time.at(reading);
        let refusal = match self.verify_bundle(bundle, at) {
            Ok(accepted) => {
                if let Some(evidence) = &accepted.time {
                    time.corroborate(at, evidence);
                }
                return Ok((accepted, time));
            }
            Err(refusal) if refusal.code == ResultCode::MetadataExpired => refusal,
            Err(refusal) => return Err(refusal),
        };
        if at > time.floor
            && let Ok(accepted) = self.verify_bundle(bundle, time.floor)
            && let Some(wrong) = accepted
                .time
                .as_ref()
                .and_then(|e| time.past_evidence(at, e))
        {
            return Err(Refusal {
                code: ResultCode::TimeRefused,
                attack: Some(AttackKind::TimeTampering),
                description: wrong.to_string(),
            });
        }
        if let Some(earlier) = time.recovery_reading(reading)
            && let Ok(accepted) = self.verify_bundle(bundle, earlier)
            && accepted
                .time
                .as_ref()
                .is_some_and(|e| time.reset(earlier, e))
        {
            tracing::warn!(
                trusted_time = %format_expires(&time.floor),
                reset = time.reset,
                "trusted time lowered by the operator's reset in the Director's metadata"
            );
            return Ok((accepted, time));
        }
        Err(refusal)
    }

    fn pending_for(&self, correlation_id: &str) -> Result<Pending, Refusal> {
        match &self.state.pending {
            Some(p) if p.correlation_id == correlation_id => Ok(p.clone()),
            _ => Err(Refusal::new(
                ResultCode::NotForThisEcu,
                format!("no verified update {correlation_id:?} pending"),
            )),
        }
    }

    /// Starts or resumes the transfer of the pending image; returns the durable offset.
    pub fn begin_transfer(
        &mut self,
        correlation_id: &str,
        filename: &str,
        length: u64,
    ) -> Result<(u64, u64, bool), Refusal> {
        let pending = match self.pending_for(correlation_id) {
            Ok(p) => p,
            Err(mut refusal) => {
                // An image the verified metadata does not assign to this ECU.
                refusal.attack = Some(AttackKind::ArbitrarySoftware);
                return Err(self.refuse_unkept(refusal));
            }
        };
        if pending.filename != filename || pending.length != length {
            let refusal = Refusal {
                code: ResultCode::VerificationFailed,
                attack: Some(AttackKind::ArbitrarySoftware),
                description: format!(
                    "offered {filename} ({length} bytes), the metadata approves {} ({} bytes)",
                    pending.filename, pending.length
                ),
            };
            return Err(self.refuse(correlation_id, refusal, filename));
        }
        if !self.device.fits_staging(length) {
            return Err(self.refuse(
                correlation_id,
                Refusal::new(
                    ResultCode::InsufficientStorage,
                    format!("{length} bytes do not fit in staging"),
                ),
                filename,
            ));
        }
        self.complete_if_whole(pending.length)?;
        Ok((
            self.state.durable_offset,
            pending.length,
            self.state.transfer_complete,
        ))
    }

    /// A transfer whose bytes all reached the staging file durably but whose completion was
    /// never recorded (the power lost between the last durable offset and the end of the
    /// digests, or an image of no bytes): the staging file is verified again, and the
    /// transfer recorded complete, or started over. Without this the Primary, told every
    /// byte is there, sends none, and the transfer never completes.
    fn complete_if_whole(&mut self, length: u64) -> Result<(), Refusal> {
        if self.state.transfer_complete
            || self.state.durable_offset != length
            || self.receiving.is_some()
        {
            return Ok(());
        }
        let (pending, mut digests, file) = self.open_staging()?;
        feed(&mut digests, &pending, file)?;
        match finish(digests, pending) {
            Ok(_) => self.state.transfer_complete = true,
            Err(refusal) => {
                tracing::warn!(reason = %refusal.description, "the staged image does not verify; the transfer starts over");
                self.discard_transfer();
            }
        }
        self.save().map_err(io)
    }

    /// The approved image's digests, ready to be fed, and the staging file (created if
    /// missing), for checking what it holds.
    fn open_staging(&self) -> Result<(PendingImage, ThreadedDigests, std::fs::File), Refusal> {
        let approved = self.approved()?;
        let (pending, digests) =
            ThreadedDigests::for_image(approved.verifier().map_err(|e| uptane_refusal(&e))?)
                .map_err(thread_refusal)?;
        let path = staging_path(&self.dir);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        Ok((pending, digests, file))
    }

    /// Durable offset, length and completeness of the transfer of `correlation_id`.
    pub fn transfer_state(&self, correlation_id: &str) -> Result<(u64, u64, bool), Refusal> {
        let pending = self.pending_for(correlation_id)?;
        Ok((
            self.state.durable_offset,
            pending.length,
            self.state.transfer_complete,
        ))
    }

    /// Resets the receive position to the durable offset (a new Upload stream).
    pub fn start_upload(&mut self, correlation_id: &str) -> Result<Upload, Refusal> {
        let length = self.pending_for(correlation_id)?.length;
        if self.state.transfer_complete {
            return Err(Refusal::new(
                ResultCode::AlreadyProcessed,
                "transfer already complete",
            ));
        }
        let (pending, mut digests, mut file) = self.open_staging()?;
        // Bytes past the durable offset may be torn: drop them, and re-hash what is kept.
        file.set_len(self.state.durable_offset).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        feed(&mut digests, &pending, &mut file)?;
        file.seek(SeekFrom::Start(self.state.durable_offset))
            .map_err(io)?;
        self.receiving = Some(Receiving {
            pending,
            digests,
            received: self.state.durable_offset,
            file,
            length,
            syncing: None,
        });
        self.upload += 1;
        Ok(Upload {
            id: self.upload,
            from: self.state.durable_offset,
        })
    }

    fn owns_upload(&self, upload: &Upload) -> Result<(), Refusal> {
        if upload.id == self.upload {
            Ok(())
        } else {
            Err(Refusal::new(
                ResultCode::DownloadFailed,
                "a newer upload took over this transfer",
            ))
        }
    }

    /// Receives one chunk; returns the durable offset and whether the image is complete and
    /// verified.
    pub fn receive(
        &mut self,
        upload: &Upload,
        correlation_id: &str,
        offset: u64,
        data: Bytes,
    ) -> Result<(u64, bool), Refusal> {
        self.owns_upload(upload)?;
        let pending = self.pending_for(correlation_id)?;
        if data.len() > self.settings.max_chunk_size as usize {
            return Err(Refusal::new(
                ResultCode::DownloadFailed,
                format!(
                    "chunk of {} bytes exceeds {}",
                    data.len(),
                    self.settings.max_chunk_size
                ),
            ));
        }
        let Some(Receiving {
            pending: image,
            digests,
            received,
            file,
            ..
        }) = self.receiving.as_mut()
        else {
            return Err(Refusal::new(
                ResultCode::DownloadFailed,
                "no upload in progress",
            ));
        };
        if offset != *received {
            return Err(Refusal::new(
                ResultCode::DownloadFailed,
                format!("chunk at offset {offset}, expected {received}"),
            ));
        }
        // Hashed on threads of their own while this thread writes the same bytes.
        if let Err(e) = digests.update_blocking(data.clone().into()) {
            // Uptane: stop at the approved length, not after (endless data).
            let refusal = uptane_refusal(&image.image_error(e));
            self.receiving = None;
            self.discard_transfer();
            return Err(self.refuse(correlation_id, refusal, &pending.filename));
        }
        file.write_all(&data).map_err(io)?;
        *received += data.len() as u64;
        let received = *received;
        let complete = received == pending.length;
        // The disk syncs behind the receive path; it is waited for only at the end, or when
        // two intervals are not yet durable (so a power loss costs at most that much).
        let behind = received - self.state.durable_offset;
        self.settle_sync(complete || behind >= 2 * self.settings.durable_interval)
            .map_err(io)?;
        let receiving = self
            .receiving
            .as_mut()
            .expect("receiving was checked above");
        if complete {
            receiving.file.sync_all().map_err(io)?;
            self.record_durable(received).map_err(io)?;
        } else if receiving.syncing.is_none()
            && received - self.state.durable_offset >= self.settings.durable_interval
        {
            receiving.syncing = Some(BackgroundSync::start(&receiving.file, received).map_err(io)?);
        }
        if complete {
            let Receiving {
                pending: image,
                digests,
                ..
            } = self.receiving.take().expect("receiving was checked above");
            if let Err(e) = finish(digests, image) {
                self.discard_transfer();
                return Err(self.refuse(correlation_id, e, &pending.filename));
            }
            self.state.transfer_complete = true;
            self.save().map_err(io)?;
        }
        Ok((self.state.durable_offset, complete))
    }

    /// Records the offset of a finished background sync (waiting for the one in flight when
    /// `wait`).
    fn settle_sync(&mut self, wait: bool) -> std::io::Result<()> {
        let Some(receiving) = self.receiving.as_mut() else {
            return Ok(());
        };
        let synced = match receiving.syncing.take() {
            Some(sync) if wait => Some(sync.wait()?),
            Some(sync) => match sync.poll()? {
                None => {
                    receiving.syncing = Some(sync);
                    None
                }
                done => done,
            },
            None => None,
        };
        match synced {
            Some(offset) => self.record_durable(offset),
            None => Ok(()),
        }
    }

    /// Records that the staging file holds `offset` durable bytes.
    fn record_durable(&mut self, offset: u64) -> std::io::Result<()> {
        if offset <= self.state.durable_offset {
            return Ok(());
        }
        self.state.durable_offset = offset;
        self.save()?;
        let length = self
            .receiving
            .as_ref()
            .map_or(0, |receiving| receiving.length);
        if offset * 2 >= length {
            self.device.power_cut(Phase::Transfer);
        }
        Ok(())
    }

    /// Makes what was received so far durable (end of an Upload stream).
    pub fn flush_upload(&mut self, upload: &Upload) -> Result<u64, Refusal> {
        self.owns_upload(upload)?;
        self.settle_sync(true).map_err(io)?;
        if let Some(Receiving { received, file, .. }) = &self.receiving {
            let received = *received;
            if received > self.state.durable_offset {
                file.sync_all().map_err(io)?;
                self.state.durable_offset = received;
                self.save().map_err(io)?;
            }
        }
        Ok(self.state.durable_offset)
    }

    fn discard_transfer(&mut self) {
        self.state.durable_offset = 0;
        self.state.transfer_complete = false;
        let _ = std::fs::remove_file(staging_path(&self.dir));
    }

    /// What an install needs: the approved image, the staging file and the slot to write.
    /// Each start is counted durably before the slot is touched (once per boot: the Primary
    /// asking again in the same boot is not another interruption); once
    /// [`MAX_INSTALL_STARTS`] starts of one update never ended (the power lost while writing,
    /// every time), the update fails for good instead of looping (ecu-side.md (c) row 30)
    /// and the staging is freed: a two-bank device keeps booting its active slot, a single
    /// bank stays in recovery until it is programmed again.
    pub fn prepare_install(&mut self, correlation_id: &str) -> Result<InstallJob, Refusal> {
        let pending = self.pending_for(correlation_id)?;
        if !self.state.transfer_complete {
            return Err(Refusal::new(
                ResultCode::DownloadFailed,
                "the image has not been received completely",
            ));
        }
        let env = self.device.env().map_err(io)?;
        if env.trial.is_some() || self.trial_running.is_some() {
            // The slot a job would write is the one on trial.
            return Err(Refusal::new(
                ResultCode::Busy,
                "a trial boot is under way; it ends before anything is written",
            ));
        }
        let single_bank = AbDevice::single_bank(&env);
        let new_start = self.state.install_start_boot.as_deref() != Some(self.boot_id.as_str());
        if new_start && self.state.install_starts >= MAX_INSTALL_STARTS {
            self.discard_transfer();
            let refusal = Refusal::new(
                ResultCode::InstallFailed,
                format!(
                    "install interrupted {} times before it ended (power lost while writing \
                     the slot); given up: {}",
                    self.state.install_starts,
                    if single_bank {
                        "this single-bank device stays in recovery until it is programmed again"
                    } else {
                        "the active slot is untouched"
                    }
                ),
            );
            return Err(self.refuse(correlation_id, refusal, &pending.filename));
        }
        let approved = self.approved()?;
        let slot = AbDevice::inactive(&env);
        // Counted once every check that could refuse has passed, and durably before the
        // slot is touched.
        if new_start {
            self.state.install_starts += 1;
            self.state.install_start_boot = Some(self.boot_id.clone());
            self.save().map_err(io)?;
        }
        self.installing = Some(correlation_id.to_string());
        Ok(InstallJob {
            approved,
            staging: staging_path(&self.dir),
            slot_path: self.device.slot_path(&slot),
            slot,
            correlation_id: correlation_id.to_string(),
            filename: pending.filename,
            device: self.device.clone(),
            single_bank,
        })
    }

    /// Records the end of an install job.
    pub fn finish_install(
        &mut self,
        job: &InstallJob,
        outcome: Result<(), Refusal>,
    ) -> Result<ResultCode, Refusal> {
        // The start ended (written, refused or cancelled): the loop guard counts only starts
        // that never did.
        self.installing = None;
        self.state.install_starts = 0;
        self.state.install_start_boot = None;
        match outcome {
            Ok(()) => {
                let mut env = self.device.env().map_err(io)?;
                env.slots.insert(
                    job.slot.clone(),
                    crate::ab::Slot {
                        generation: 0,
                        state: SlotState::Pending,
                        image: Some(InstalledImage {
                            filename: job.approved.filename().to_string(),
                            length: job.approved.length(),
                            hashes: job.approved.hashes().clone(),
                            release_counter: job.approved.release_counter(),
                        }),
                    },
                );
                self.device.save(&env).map_err(io)?;
                self.device.power_cut(Phase::AfterWrite);
                self.discard_transfer();
                self.record(
                    &job.correlation_id,
                    ResultCode::NeedCompletion,
                    None,
                    "written to the inactive slot; activate to boot it",
                    &job.filename,
                )
                .map_err(io)?;
                Ok(ResultCode::NeedCompletion)
            }
            // The job marked a slot it touched bad; one it never reached keeps its state.
            Err(refusal) => Err(self.refuse(&job.correlation_id, refusal, &job.filename)),
        }
    }

    /// `BUSY` while an install job writes the inactive slot.
    fn not_installing(&self) -> Result<(), Refusal> {
        match &self.installing {
            Some(id) => Err(Refusal::new(
                ResultCode::Busy,
                format!("the install of {id:?} is writing the inactive slot"),
            )),
            None => Ok(()),
        }
    }

    /// Switches to the new slot and reboots into its trial boot.
    pub fn activate(&mut self, correlation_id: &str) -> Result<ResultCode, Refusal> {
        let pending = self.pending_for(correlation_id)?;
        // A job writing the inactive slot would go on writing it once it is the active one.
        self.not_installing()?;
        // Only what the Director's latest accepted metadata still approves is booted.
        let approved = self.approved()?;
        if approved.filename() != pending.filename {
            return Err(Refusal::new(
                ResultCode::NotForThisEcu,
                format!(
                    "the Director's latest metadata no longer approve {}",
                    pending.filename
                ),
            ));
        }
        let env = self.device.env().map_err(io)?;
        let written = env
            .slots
            .get(&AbDevice::inactive(&env))
            .filter(|s| s.state == SlotState::Pending)
            .and_then(|s| s.image.as_ref());
        let Some(written) = written else {
            return Err(Refusal::new(
                ResultCode::InstallFailed,
                "nothing installed to activate",
            ));
        };
        // The slot may hold an image written for metadata since replaced (same update, a
        // different image): that one is not booted, whatever the update is called.
        if !written.is(approved.filename(), approved.length(), approved.hashes()) {
            return Err(Refusal::new(
                ResultCode::InstallFailed,
                format!(
                    "the inactive slot holds {}, not the approved {}: install it first",
                    written.filename,
                    approved.filename()
                ),
            ));
        }
        self.device
            .activate(correlation_id, self.settings.boot_attempts)
            .map_err(io)?;
        self.device.power_cut(Phase::TrialBoot);
        self.boot().map_err(io)?;
        Ok(self.result(correlation_id).map_or(ResultCode::Ok, |r| {
            ResultCode::try_from(r.code).unwrap_or(ResultCode::Ok)
        }))
    }

    /// Confirms a trial slot that waits for it.
    pub fn confirm(&mut self, correlation_id: &str) -> Result<ResultCode, Refusal> {
        self.not_installing()?;
        match &self.trial_running {
            Some(c) if c == correlation_id => {
                self.confirm_trial(correlation_id).map_err(io)?;
                Ok(ResultCode::Ok)
            }
            _ => Err(Refusal::new(
                ResultCode::NotForThisEcu,
                format!("no trial of {correlation_id:?} is waiting for confirmation"),
            )),
        }
    }

    /// Simulated reboot.
    pub fn reboot(&mut self) -> std::io::Result<()> {
        self.boot()
    }

    /// The result kept for `correlation_id`.
    pub fn result(&self, correlation_id: &str) -> Option<&ResultRecord> {
        self.state.results.get(correlation_id)
    }
}

/// An install that runs without holding the agent: copy, verify, and the slot to record.
#[derive(Debug, Clone)]
pub struct InstallJob {
    approved: ApprovedImage,
    staging: PathBuf,
    slot_path: PathBuf,
    slot: String,
    correlation_id: String,
    filename: String,
    device: AbDevice,
    single_bank: bool,
}

impl InstallJob {
    /// Checks the staged image against the approved length and hashes, writes it into the
    /// inactive slot, and reads the slot back to check the write. `cancelled` is polled
    /// between blocks.
    pub fn run(&self, cancelled: &std::sync::atomic::AtomicBool) -> Result<(), Refusal> {
        use std::sync::atomic::Ordering;
        // Verified before anything is written to the slot (Uptane §5.4.3 step 4).
        let verified = self.check_file(&self.staging)?;
        self.device.wait_for_storage(cancelled);
        let stop = || {
            Refusal::new(
                ResultCode::OperationCancelled,
                "install cancelled; the active slot is untouched",
            )
        };
        if cancelled.load(Ordering::Relaxed) {
            // Before the slot is touched: even a single bank keeps its image.
            return Err(Refusal::new(
                ResultCode::OperationCancelled,
                "install cancelled before the slot was touched",
            ));
        }
        // The slot is marked empty before its first byte changes: a slot half written is
        // never one to boot (a torn environment's defaults, a single bank's recovery).
        self.device.invalidate(&self.slot).map_err(io)?;
        self.write_slot(&verified, cancelled, stop)
            .inspect_err(|_| {
                // Touched and not finished: never one to boot.
                let _ = self.device.mark_bad(&self.slot);
            })
    }

    /// Copies the staged image into the slot (marked empty already) and reads it back.
    fn write_slot(
        &self,
        verified: &uptane_core::uptane::VerifiedImage,
        cancelled: &std::sync::atomic::AtomicBool,
        stop: impl Fn() -> Refusal,
    ) -> Result<(), Refusal> {
        use std::sync::atomic::Ordering;
        let mut input = std::fs::File::open(&self.staging).map_err(io)?;
        let mut output = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.slot_path)
            .map_err(io)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut written = 0u64;
        let length = verified.approved().length();
        loop {
            // A single bank being overwritten is past its point of no return: finished.
            if !self.single_bank && cancelled.load(Ordering::Relaxed) {
                return Err(stop());
            }
            let n = input.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            output.write_all(&buf[..n]).map_err(io)?;
            written += n as u64;
            if written * 2 >= length && written - (n as u64) < length.div_ceil(2) {
                output.sync_all().map_err(io)?;
                self.device.power_cut(Phase::Write);
            }
        }
        self.device
            .after_slot_write(&mut output, length)
            .map_err(io)?;
        output.sync_all().map_err(io)?;
        // Read back: a corrupted write must not be activated.
        self.check_file(&self.slot_path).map_err(|r| {
            Refusal::new(
                ResultCode::InstallFailed,
                format!("slot write check failed: {}", r.description),
            )
        })?;
        Ok(())
    }

    fn check_file(&self, path: &Path) -> Result<uptane_core::uptane::VerifiedImage, Refusal> {
        let (pending, mut digests) =
            ThreadedDigests::for_image(self.approved.verifier().map_err(|e| uptane_refusal(&e))?)
                .map_err(thread_refusal)?;
        feed(
            &mut digests,
            &pending,
            std::fs::File::open(path).map_err(io)?,
        )?;
        finish(digests, pending)
    }
}

/// The transfer under way: its check (digests on threads of their own), the bytes received
/// and the staging file.
#[derive(Debug)]
struct Receiving {
    pending: PendingImage,
    digests: ThreadedDigests,
    received: u64,
    file: std::fs::File,
    /// The approved length.
    length: u64,
    syncing: Option<BackgroundSync>,
}

/// Feeds everything `input` holds to `digests`.
fn feed(
    digests: &mut ThreadedDigests,
    image: &PendingImage,
    input: impl Read,
) -> Result<(), Refusal> {
    digests.feed_blocking(input).map_err(|e| match e {
        FeedError::Read(e) => io(e),
        FeedError::Digest(e) => uptane_refusal(&image.image_error(e)),
    })
}

/// Waits for the digests and compares them with what the metadata lists.
fn finish(digests: ThreadedDigests, image: PendingImage) -> Result<VerifiedImage, Refusal> {
    let internal = |e: DigestError| Refusal::new(ResultCode::InternalError, e.to_string());
    match digests.finish_blocking() {
        Ok(stream) => image.finish(stream).map_err(|e| match e {
            UptaneError::Image { source, .. } if source.is_internal() => internal(source),
            e => uptane_refusal(&e),
        }),
        Err(DigestThreadError::Digest(e)) if e.is_internal() => Err(internal(e)),
        Err(DigestThreadError::Digest(e)) => Err(uptane_refusal(&image.image_error(e))),
        Err(e) => Err(thread_refusal(e)),
    }
}

/// A hash thread that could not start or stopped: the ECU's fault, not the image's.
fn thread_refusal(e: DigestThreadError) -> Refusal {
    Refusal::new(ResultCode::InternalError, e.to_string())
}

/// How an installation with this result code ended, as version reports state it.
pub fn install_result(code: i32) -> InstallResult {
    match ResultCode::try_from(code).unwrap_or(ResultCode::Unspecified) {
        ResultCode::Ok | ResultCode::AlreadyProcessed => InstallResult::Installed,
        ResultCode::NeedCompletion => InstallResult::InProgress,
        ResultCode::RolledBack => InstallResult::RolledBack,
        ResultCode::OperationCancelled => InstallResult::Cancelled,
        _ => InstallResult::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_results_kept_before_protocol_v2() {
        let kept = r#"{"code": 100, "attack": "", "description": "installed and confirmed",
                       "filename": "fw.bin", "updated_at": 1}"#;
        let record: ResultRecord = serde_json::from_str(kept).unwrap();
        assert_eq!(record.attack, None);
        let kept = kept.replace(r#""attack": """#, r#""attack": "rollback""#);
        let record: ResultRecord = serde_json::from_str(&kept).unwrap();
        assert_eq!(record.attack, Some(AttackKind::Rollback));
        let unknown = kept.replace("rollback", "nonsense");
        assert!(serde_json::from_str::<ResultRecord>(&unknown).is_err());
    }
}
