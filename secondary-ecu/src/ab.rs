//! The simulated A/B hardware: two slots as files, a persistent bootloader environment, and
//! every fault knob of the simulated device ([`Faults`]): the agent asks this type whether to
//! lose power, whether an image boots, whether it fits, and how the link behaves, and never
//! reads a knob itself.
//!
//! Installs go to the inactive slot only. Activation marks the new slot for a trial boot with
//! a number of attempts; each boot of the trial slot uses one attempt; a trial that boots and
//! passes its health check is confirmed (made active); a trial that runs out of attempts is
//! marked bad and the bootloader falls back to the old slot. Everything the bootloader knows
//! survives power loss (`bootenv.json`, written atomically). Each slot also keeps a header of
//! its own (`slots/<name>.json`: its state and image): a device whose environment is not
//! redundant can have it torn by a power cut, and the bootloader then boots a slot whose
//! header says good (ecu-side.md (c) row 24), so a good slot stays bootable (or, on a
//! single bank being overwritten, the bootloader's recovery mode).

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uptane_core::manifest::InstalledImage;

use crate::files;

/// Where a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Nothing written.
    Empty,
    /// Written and checked, not booted yet.
    Pending,
    /// Booted and confirmed (or the factory image).
    Good,
    /// Failed its write check or its trial boot.
    Bad,
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Where it stands.
    pub state: SlotState,
    /// The image in it.
    pub image: Option<InstalledImage>,
    /// Rises each time a slot is confirmed: of two good slots, the one confirmed last is the
    /// one the bootloader's defaults boot.
    #[serde(default)]
    pub generation: u64,
}

impl Slot {
    /// Nothing written (or being written).
    pub fn empty() -> Self {
        Self {
            state: SlotState::Empty,
            image: None,
            generation: 0,
        }
    }
}

/// The persistent bootloader environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEnv {
    /// The slot that boots when no trial is pending.
    pub active: String,
    /// A slot being tried.
    pub trial: Option<String>,
    /// Boot attempts the trial has left.
    pub attempts_left: u32,
    /// Correlation id of the trial's installation.
    pub trial_correlation_id: Option<String>,
    /// Slot name to its content.
    pub slots: BTreeMap<String, Slot>,
    /// Boots so far.
    pub boot_count: u64,
}

/// What the last boot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// Booted the active slot; no trial pending.
    Normal,
    /// Booted the trial slot; it waits for its health check and confirmation.
    Trial {
        /// The trial's correlation id.
        correlation_id: String,
    },
    /// The trial ran out of attempts: marked bad, back on the old slot.
    RolledBack {
        /// The trial's correlation id.
        correlation_id: String,
    },
}

/// A phase at which to simulate a power cut (`std::process::abort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Verified metadata half stored: the bundle written, the rest not yet.
    Metadata,
    /// Half the image received (and made durable).
    Transfer,
    /// Half the inactive slot written.
    Write,
    /// Slot written, before the boot target switches.
    AfterWrite,
    /// Boot target switched, before the trial boot finishes.
    TrialBoot,
    /// Trial booted, before it is confirmed.
    BeforeConfirm,
    /// The trial slot made the active one, before the result is recorded.
    Confirm,
}

/// Fault knobs of the simulated hardware.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Cut power at this phase.
    pub power_loss: Option<Phase>,
    /// Flip a byte of the slot after writing it.
    pub corrupt_write: bool,
    /// Delay per received chunk, in milliseconds (slow link).
    pub slow_link_ms: u64,
    /// Stop reading the transfer after this many bytes (stalled link).
    pub stall_after: Option<u64>,
    /// The new image never boots.
    pub fail_boot: bool,
    /// The new image fails this many boots, then boots.
    pub fail_boot_times: u32,
    /// The new image boots but fails its health check every time (the watchdog resets it).
    pub health_check_fail: bool,
    /// The answer to the Upload stream that carries the chunk at this offset or beyond is
    /// lost, once per process: the chunk is written, the Primary does not hear so.
    pub lose_ack_after: Option<u64>,
    /// Whether that answer was lost already.
    pub ack_lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The protocol version the ECU states, if not this build's (an older Secondary).
    pub protocol_version: Option<u32>,
    /// Staging capacity in bytes (storage full beyond it).
    pub storage_bytes: Option<u64>,
    /// The boot environment is not redundant, and power is lost halfway through its write
    /// at activation (the boot target switch), leaving it torn.
    pub torn_env: bool,
    /// Slot writes wait (at most a minute) until this file exists: storage busy for as long
    /// as a test needs.
    pub hold_write_until: Option<PathBuf>,
}

impl Faults {
    /// Whether any knob is set (a device that is not to be trusted with a real vehicle).
    pub fn enabled(&self) -> bool {
        self.power_loss.is_some()
            || self.corrupt_write
            || self.slow_link_ms > 0
            || self.stall_after.is_some()
            || self.fail_boot
            || self.fail_boot_times > 0
            || self.health_check_fail
            || self.lose_ack_after.is_some()
            || self.protocol_version.is_some()
            || self.storage_bytes.is_some()
            || self.torn_env
            || self.hold_write_until.is_some()
    }
}

/// Two slots in a directory, with the device's fault knobs.
#[derive(Debug, Clone)]
pub struct AbDevice {
    dir: PathBuf,
    faults: Faults,
}

impl AbDevice {
    /// The device whose files are in `dir`, without faults.
    pub fn new(dir: &Path) -> Self {
        Self::with_faults(dir, Faults::default())
    }

    /// The device whose files are in `dir`, with `faults` (tests and HIL rigs).
    pub fn with_faults(dir: &Path, faults: Faults) -> Self {
        Self {
            dir: dir.to_path_buf(),
            faults,
        }
    }

    /// Cuts power at `phase` if the device is set to: the process dies as with `kill -9`.
    pub fn power_cut(&self, phase: Phase) {
        if self.faults.power_loss == Some(phase) {
            eprintln!("fault injection: power lost at {phase:?}");
            std::process::abort();
        }
    }

    /// Waits while the storage is held busy (bounded: a minute at most), or until the
    /// install is `cancelled`.
    pub fn wait_for_storage(&self, cancelled: &std::sync::atomic::AtomicBool) {
        let Some(gate) = &self.faults.hold_write_until else {
            return;
        };
        let started = std::time::Instant::now();
        while !gate.exists()
            && !cancelled.load(std::sync::atomic::Ordering::Relaxed)
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether `length` bytes fit in staging.
    pub fn fits_staging(&self, length: u64) -> bool {
        self.faults.storage_bytes.is_none_or(|cap| length <= cap)
    }

    /// What the storage does to a slot just written with `length` bytes (a corrupted write
    /// flips a byte in the middle).
    pub fn after_slot_write(&self, slot: &mut std::fs::File, length: u64) -> std::io::Result<()> {
        if self.faults.corrupt_write && length > 0 {
            use std::io::Read;
            slot.seek(SeekFrom::Start(length / 2))?;
            let mut byte = [0u8; 1];
            std::fs::File::read_exact(slot, &mut byte)?;
            slot.seek(SeekFrom::Start(length / 2))?;
            slot.write_all(&[!byte[0]])?;
        }
        Ok(())
    }

    /// How long the link takes per received chunk (a slow link), if it is slowed.
    pub fn link_delay(&self) -> Option<Duration> {
        (self.faults.slow_link_ms > 0).then(|| Duration::from_millis(self.faults.slow_link_ms))
    }

    /// Whether the answer to an Upload that carried the chunk at `offset` is to be lost
    /// (true once per process, at the first such chunk).
    pub fn loses_ack_at(&self, offset: u64) -> bool {
        self.faults
            .lose_ack_after
            .is_some_and(|limit| offset >= limit)
            && !self
                .faults
                .ack_lost
                .swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the link stalls for good before the chunk at `offset`.
    pub fn link_stalls_at(&self, offset: u64) -> bool {
        self.faults.stall_after.is_some_and(|limit| offset >= limit)
    }

    fn env_path(&self) -> PathBuf {
        self.dir.join("bootenv.json")
    }

    /// The file of slot `name`.
    pub fn slot_path(&self, name: &str) -> PathBuf {
        self.dir.join("slots").join(format!("{name}.img"))
    }

    /// Creates the device with `image` in slot A (active, good) and slot B empty; a
    /// `single_bank` device has slot A only (ecu-side.md (c) row 42).
    pub fn create(
        &self,
        image: &[u8],
        info: InstalledImage,
        single_bank: bool,
    ) -> std::io::Result<()> {
        files::write_atomic(&self.slot_path("A"), image)?;
        let mut slots = BTreeMap::from([(
            "A".to_string(),
            Slot {
                state: SlotState::Good,
                image: Some(info),
                generation: 1,
            },
        )]);
        if !single_bank {
            files::write_atomic(&self.slot_path("B"), b"")?;
            slots.insert("B".to_string(), Slot::empty());
        }
        let env = BootEnv {
            active: "A".into(),
            trial: None,
            attempts_left: 0,
            trial_correlation_id: None,
            slots,
            boot_count: 0,
        };
        self.save(&env)
    }

    /// Whether the device has one bank only: an install overwrites the image it runs.
    pub fn single_bank(env: &BootEnv) -> bool {
        env.slots.len() == 1
    }

    /// Marks a slot empty, durably, before it is overwritten: a slot being written is never
    /// one the bootloader's defaults may boot. On a single bank this is the valid-application
    /// flag: until the new image is written and checked, the device boots into its
    /// bootloader's recovery mode (no application, still speaking the protocol), never into
    /// half an image.
    pub fn invalidate(&self, slot: &str) -> std::io::Result<()> {
        let mut env = self.env()?;
        env.slots.insert(slot.to_string(), Slot::empty());
        self.save(&env)
    }

    /// Marks a slot bad, durably: written in part or refused, never one to boot.
    pub fn mark_bad(&self, slot: &str) -> std::io::Result<()> {
        let mut env = self.env()?;
        if let Some(s) = env.slots.get_mut(slot) {
            s.state = SlotState::Bad;
        }
        self.save(&env)
    }

    fn header_path(&self, name: &str) -> PathBuf {
        self.dir.join("slots").join(format!("{name}.json"))
    }

    /// The bootloader environment. A torn one (cut short or garbled, as a power cut leaves a
    /// non-redundant environment; a whole one of another shape is an error, not guessed at)
    /// is replaced by the bootloader's defaults: the slots as their headers describe them,
    /// booting the good one confirmed last (recovery when none is good) and no trial.
    pub fn env(&self) -> std::io::Result<BootEnv> {
        let path = self.env_path();
        let bytes = std::fs::read(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        match serde_json::from_slice(&bytes) {
            Ok(env) => Ok(env),
            // Cut short or garbled: torn. Whole but of another shape is not guessed at.
            Err(e) if e.is_eof() || e.is_syntax() => {
                let env = self.default_env()?;
                eprintln!(
                    "bootloader: the boot environment is torn ({e}); defaults: booting slot {}",
                    env.active
                );
                self.save(&env)?;
                Ok(env)
            }
            Err(e) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )),
        }
    }

    /// The environment rebuilt from the slots' headers: the good slot confirmed last boots,
    /// with no trial pending; with no good slot, slot A in recovery (no application, still
    /// programmable), never nothing.
    fn default_env(&self) -> std::io::Result<BootEnv> {
        let mut slots = BTreeMap::new();
        for name in ["A", "B"] {
            match files::load::<Slot>(&self.header_path(name)) {
                Ok(slot) => {
                    slots.insert(name.to_string(), slot);
                }
                // A single-bank device has no slot B.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == "B" => {}
                Err(e) => return Err(e),
            }
        }
        let active = slots
            .iter()
            .filter(|(_, slot)| slot.state == SlotState::Good)
            .max_by_key(|(_, slot)| slot.generation)
            .map_or_else(|| "A".to_string(), |(name, _)| name.clone());
        Ok(BootEnv {
            active,
            trial: None,
            attempts_left: 0,
            trial_correlation_id: None,
            slots,
            boot_count: 0,
        })
    }

    /// Persists the bootloader environment: each slot's header, then the environment.
    pub fn save(&self, env: &BootEnv) -> std::io::Result<()> {
        for (name, slot) in &env.slots {
            files::save(&self.header_path(name), slot)?;
        }
        files::save(&self.env_path(), env)
    }

    /// The slot installs go to: the other one, or the only one of a single bank.
    pub fn inactive(env: &BootEnv) -> String {
        if Self::single_bank(env) {
            env.active.clone()
        } else if env.active == "A" {
            "B".into()
        } else {
            "A".into()
        }
    }

    /// Marks the inactive slot for a trial boot with `attempts` attempts.
    pub fn activate(&self, correlation_id: &str, attempts: u32) -> std::io::Result<String> {
        let mut env = self.env()?;
        let slot = Self::inactive(&env);
        env.trial = Some(slot.clone());
        env.attempts_left = attempts;
        env.trial_correlation_id = Some(correlation_id.to_string());
        if self.faults.torn_env {
            self.tear_env(&env)?;
        }
        self.save(&env)?;
        Ok(slot)
    }

    /// Writes half of `env` in place, not atomically, and cuts the power: a non-redundant
    /// environment torn mid-write.
    fn tear_env(&self, env: &BootEnv) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(env).map_err(std::io::Error::other)?;
        let mut file = std::fs::File::create(self.env_path())?;
        file.write_all(&bytes[..bytes.len() / 2])?;
        file.sync_all()?;
        eprintln!("fault injection: power lost writing the boot environment (torn)");
        std::process::abort();
    }

    /// Whether a trial image that started fails its health check (the agent's check after
    /// a trial boot; the watchdog then resets the board).
    pub fn health_check_fails(&self) -> bool {
        self.faults.health_check_fail
    }

    /// One boot: the trial slot if one is pending and has attempts left (using one), else
    /// the active slot. A trial image starts unless the device is set to fail its boot (or
    /// its first boots).
    pub fn boot(&self) -> std::io::Result<BootOutcome> {
        let mut failures_left = self.faults.fail_boot_times;
        let never = self.faults.fail_boot;
        self.boot_trial(move || {
            if never {
                return false;
            }
            if failures_left > 0 {
                failures_left -= 1;
                return false;
            }
            true
        })
    }

    /// One boot; `trial_boots` says whether the trial slot's image starts this attempt.
    fn boot_trial(&self, mut trial_boots: impl FnMut() -> bool) -> std::io::Result<BootOutcome> {
        let mut env = self.env()?;
        env.boot_count += 1;
        let outcome = loop {
            let Some(trial) = env.trial.clone() else {
                break BootOutcome::Normal;
            };
            let correlation_id = env.trial_correlation_id.clone().unwrap_or_default();
            if env.attempts_left == 0 {
                if let Some(slot) = env.slots.get_mut(&trial) {
                    slot.state = SlotState::Bad;
                }
                env.trial = None;
                env.trial_correlation_id = None;
                break BootOutcome::RolledBack { correlation_id };
            }
            env.attempts_left -= 1;
            // The attempt is spent before the boot, as a bootloader counts it.
            self.save(&env)?;
            if trial_boots() {
                break BootOutcome::Trial { correlation_id };
            }
            // The watchdog resets the board and the bootloader tries again.
        };
        self.save(&env)?;
        Ok(outcome)
    }

    /// Makes the running trial slot the active one.
    pub fn confirm(&self) -> std::io::Result<Option<InstalledImage>> {
        let mut env = self.env()?;
        let Some(trial) = env.trial.take() else {
            return Ok(None);
        };
        env.trial_correlation_id = None;
        env.attempts_left = 0;
        env.active = trial.clone();
        let generation = env.slots.values().map(|s| s.generation).max().unwrap_or(0) + 1;
        let image = env.slots.get_mut(&trial).and_then(|slot| {
            slot.state = SlotState::Good;
            slot.generation = generation;
            slot.image.clone()
        });
        self.save(&env)?;
        Ok(image)
    }

    /// The image the device runs: the active slot's, when it is good (none in a single
    /// bank's recovery mode).
    pub fn running(&self) -> std::io::Result<Option<InstalledImage>> {
        let env = self.env()?;
        Ok(env
            .slots
            .get(&env.active)
            .filter(|s| s.state == SlotState::Good)
            .and_then(|s| s.image.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> InstalledImage {
        InstalledImage {
            filename: name.into(),
            length: 1,
            hashes: Default::default(),
            release_counter: 0,
        }
    }

    fn device() -> (tempfile::TempDir, AbDevice) {
        let dir = tempfile::tempdir().unwrap();
        let device = AbDevice::new(dir.path());
        device.create(b"old", image("old.bin"), false).unwrap();
        let mut env = device.env().unwrap();
        env.slots.insert(
            "B".into(),
            Slot {
                state: SlotState::Pending,
                image: Some(image("new.bin")),
                generation: 0,
            },
        );
        device.save(&env).unwrap();
        (dir, device)
    }

    /// Writes a torn environment, as a power cut halfway through a non-redundant write does.
    fn tear(device: &AbDevice) {
        let bytes = serde_json::to_vec_pretty(&device.env().unwrap()).unwrap();
        std::fs::write(device.env_path(), &bytes[..bytes.len() / 2]).unwrap();
    }

    #[test]
    fn a_torn_environment_boots_the_good_slot_and_keeps_the_written_one() {
        let (_d, device) = device();
        device.activate("c5", 3).unwrap();
        tear(&device);
        // The bootloader's defaults: the old slot (good) boots; no trial; the new image
        // stays written (pending), to be activated again.
        let env = device.env().unwrap();
        assert_eq!(env.active, "A");
        assert_eq!(env.trial, None);
        assert_eq!(env.slots["B"].state, SlotState::Pending);
        assert_eq!(device.boot_trial(|| true).unwrap(), BootOutcome::Normal);
        assert_eq!(device.running().unwrap().unwrap().filename, "old.bin");
        // The defaults were written back whole.
        assert_eq!(
            files::load::<BootEnv>(&device.env_path()).unwrap().active,
            "A"
        );
    }

    #[test]
    fn a_torn_environment_after_confirmation_boots_the_newest_good_slot() {
        let (_d, device) = device();
        device.activate("c6", 3).unwrap();
        device.boot_trial(|| true).unwrap();
        device.confirm().unwrap();
        tear(&device);
        assert_eq!(device.env().unwrap().active, "B");
        assert_eq!(device.running().unwrap().unwrap().filename, "new.bin");
    }

    #[test]
    fn a_torn_environment_without_a_good_slot_boots_recovery_not_nothing() {
        let (_d, device) = device();
        tear(&device);
        let mut header: Slot = files::load(&device.header_path("A")).unwrap();
        header.state = SlotState::Bad;
        files::save(&device.header_path("A"), &header).unwrap();
        assert_eq!(device.env().unwrap().active, "A");
        assert_eq!(device.running().unwrap(), None);
    }

    #[test]
    fn a_slot_being_rewritten_is_never_booted_from_a_torn_environment() {
        // A, then B, then A again confirmed: both good, A confirmed last.
        let (_d, device) = device();
        device.activate("c8", 3).unwrap();
        device.boot_trial(|| true).unwrap();
        device.confirm().unwrap();
        let mut env = device.env().unwrap();
        env.slots.get_mut("A").unwrap().state = SlotState::Pending;
        device.save(&env).unwrap();
        device.activate("c9", 3).unwrap();
        device.boot_trial(|| true).unwrap();
        device.confirm().unwrap();
        assert_eq!(device.env().unwrap().active, "A");
        // B, older, is rewritten: marked empty first, then power is lost and the
        // environment torn. A boots, never the half-written B.
        device.invalidate("B").unwrap();
        tear(&device);
        assert_eq!(device.env().unwrap().active, "A");
        assert_eq!(device.running().unwrap().unwrap().filename, "old.bin");
    }

    #[test]
    fn an_environment_of_another_shape_is_an_error_not_torn() {
        let (_d, device) = device();
        std::fs::write(device.env_path(), br#"{"active": 7}"#).unwrap();
        assert!(device.env().is_err());
    }

    #[test]
    fn a_single_bank_is_overwritten_in_place_and_boots_recovery_without_a_good_image() {
        let dir = tempfile::tempdir().unwrap();
        let device = AbDevice::new(dir.path());
        device.create(b"old", image("old.bin"), true).unwrap();
        let env = device.env().unwrap();
        assert!(AbDevice::single_bank(&env));
        assert_eq!(AbDevice::inactive(&env), "A");
        // Programming clears the valid-application flag first: recovery, no image.
        device.invalidate("A").unwrap();
        assert_eq!(device.running().unwrap(), None);
        assert_eq!(device.boot_trial(|| true).unwrap(), BootOutcome::Normal);
        // The bootloader's defaults need no slot B, and boot recovery without a good image.
        tear(&device);
        assert_eq!(device.env().unwrap().active, "A");
        assert_eq!(device.running().unwrap(), None);
    }

    #[test]
    fn a_single_bank_whose_new_image_never_boots_stays_in_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let device = AbDevice::new(dir.path());
        device.create(b"old", image("old.bin"), true).unwrap();
        device.invalidate("A").unwrap();
        let mut env = device.env().unwrap();
        env.slots.insert(
            "A".into(),
            Slot {
                state: SlotState::Pending,
                image: Some(image("new.bin")),
                generation: 0,
            },
        );
        device.save(&env).unwrap();
        device.activate("c7", 2).unwrap();
        assert_eq!(
            device.boot_trial(|| false).unwrap(),
            BootOutcome::RolledBack {
                correlation_id: "c7".into()
            }
        );
        // Nothing to fall back to: recovery, no image reported.
        assert_eq!(device.running().unwrap(), None);
        assert_eq!(device.env().unwrap().slots["A"].state, SlotState::Bad);
    }

    #[test]
    fn a_trial_that_boots_is_confirmed() {
        let (_d, device) = device();
        device.activate("c1", 3).unwrap();
        assert_eq!(
            device.boot_trial(|| true).unwrap(),
            BootOutcome::Trial {
                correlation_id: "c1".into()
            }
        );
        assert_eq!(device.confirm().unwrap().unwrap().filename, "new.bin");
        assert_eq!(device.running().unwrap().unwrap().filename, "new.bin");
        assert_eq!(device.boot_trial(|| true).unwrap(), BootOutcome::Normal);
    }

    #[test]
    fn a_trial_that_never_boots_falls_back_after_its_attempts() {
        let (_d, device) = device();
        device.activate("c2", 3).unwrap();
        assert_eq!(
            device.boot_trial(|| false).unwrap(),
            BootOutcome::RolledBack {
                correlation_id: "c2".into()
            }
        );
        let env = device.env().unwrap();
        assert_eq!(env.active, "A");
        assert_eq!(env.slots["B"].state, SlotState::Bad);
        assert_eq!(device.running().unwrap().unwrap().filename, "old.bin");
    }

    #[test]
    fn power_loss_during_a_trial_spends_an_attempt() {
        let (_d, device) = device();
        device.activate("c3", 2).unwrap();
        assert!(matches!(
            device.boot_trial(|| true).unwrap(),
            BootOutcome::Trial { .. }
        ));
        // Power lost before confirmation: the next boot tries again with one attempt left.
        assert!(matches!(
            device.boot_trial(|| true).unwrap(),
            BootOutcome::Trial { .. }
        ));
        assert_eq!(device.env().unwrap().attempts_left, 0);
        assert!(matches!(
            device.boot_trial(|| true).unwrap(),
            BootOutcome::RolledBack { .. }
        ));
    }

    #[test]
    fn a_trial_that_fails_its_first_boot_boots_on_the_next_attempt() {
        let (_d, device) = device();
        device.activate("c4", 3).unwrap();
        let mut boots = [false, true].into_iter();
        assert_eq!(
            device.boot_trial(|| boots.next().unwrap()).unwrap(),
            BootOutcome::Trial {
                correlation_id: "c4".into()
            }
        );
        assert_eq!(device.env().unwrap().attempts_left, 1);
    }
}
