//! What the Primary keeps between cycles and across `kill -9`: its identity and inventory,
//! counters, the latest time it has seen, attacks not yet reported, its own installed image,
//! and the progress of each ECU's update. Every change is one atomic file write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use service_runtime::files::load_json;
use uptane_core::error::AttackKind;
use uptane_core::ids::{EcuSerial, HardwareId};
use uptane_core::manifest::{DetectedAttack, InstalledImage, LastInstall, MAX_KEPT_ATTACKS};
use uptane_core::time::UtcTime;

use crate::config::Mode;

/// One ECU of the vehicle as the Primary registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEcu {
    /// Serial.
    pub serial: EcuSerial,
    /// Hardware id.
    pub hardware_id: HardwareId,
    /// Its public key, a TUF key object.
    pub public_key: serde_json::Value,
    /// Verification mode (`None` for the Primary itself).
    pub mode: Option<Mode>,
}

/// Where an ECU's current update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Verified, waiting for the image download.
    Downloading,
    /// Downloaded, being sent to (or installed by) the ECU.
    Delivering,
    /// The ECU runs the image.
    Installed,
    /// The ECU refused or failed it; not retried for this assignment.
    Failed,
    /// The Director's targets no longer assign it (an operator's cancel): the ECU is to
    /// abandon it, and has not said it did.
    Withdrawn,
    /// Withdrawn, and abandoned before the ECU activated it.
    Cancelled,
}

impl Phase {
    /// Whether nothing more will be done for this assignment.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Installed | Phase::Failed | Phase::Cancelled)
    }
}

/// One ECU's update in progress or done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcuUpdate {
    /// The assignment's correlation id.
    pub correlation_id: String,
    /// The image.
    pub filename: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Where it stands.
    pub phase: Phase,
    /// The ECU's result code or the Primary's reason, in words.
    pub detail: String,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// The Primary's durable state (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrimaryState {
    /// The Primary's report counter; goes up before each report leaves.
    pub report_counter: u64,
    /// The latest time the Director's verified metadata corroborated; never earlier than
    /// any before it, except after an operator's reset (`uptane_core::time::TrustedTime`).
    #[serde(default, with = "optional_time")]
    pub latest_time: Option<UtcTime>,
    /// The last operator time reset applied.
    #[serde(default)]
    pub time_reset: u64,
    /// Attacks detected and not yet accepted by the Director in a manifest, at most
    /// [`MAX_KEPT_ATTACKS`] ([`PrimaryState::keep_attack`]).
    pub pending_attacks: Vec<DetectedAttack>,
    /// Attacks beyond those, counted.
    #[serde(default)]
    pub attacks_not_itemized: Option<NotItemized>,
    /// The Primary's own image.
    pub installed: Option<InstalledImage>,
    /// The Primary's own latest install result.
    pub last_install: Option<LastInstall>,
    /// The update of each ECU (the Primary included), by serial.
    pub updates: BTreeMap<EcuSerial, EcuUpdate>,
    /// The Director targets version whose updates all reached a final phase.
    pub completed_targets_version: Option<u64>,
    /// The last installed image each ECU reported, by serial.
    pub reported: BTreeMap<EcuSerial, InstalledImage>,
    /// The last cycle, in words.
    pub last_cycle: Option<String>,
    /// The last error, in words.
    pub last_error: Option<String>,
    /// When the vehicle credential was issued, as the Director said (`None` for one from
    /// before credentials expired: it is renewed at the next cycle).
    #[serde(default, with = "optional_time")]
    pub credential_issued_at: Option<UtcTime>,
    /// When the vehicle credential stops working.
    #[serde(default, with = "optional_time")]
    pub credential_expires_at: Option<UtcTime>,
}

/// Attacks counted, not kept one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotItemized {
    /// The newest one's kind.
    pub kind: AttackKind,
    /// How many.
    pub count: u64,
}

impl PrimaryState {
    /// Keeps `attack` for the next manifest: once (the same attack again before a manifest
    /// carried it is no more evidence), and at most [`MAX_KEPT_ATTACKS`] one by one, the rest
    /// counted. What an attacker can provoke every cycle (a server that fails each request,
    /// a Secondary that answers with a forged report) must not grow `state.json`, or the
    /// manifest past what the Director accepts: the attacks leave only with a manifest the
    /// Director accepted, so one it refused for its size would be refused for ever. Returns
    /// whether anything was added.
    pub fn keep_attack(&mut self, attack: DetectedAttack) -> bool {
        if self.pending_attacks.contains(&attack) {
            return false;
        }
        if self.pending_attacks.len() < MAX_KEPT_ATTACKS {
            self.pending_attacks.push(attack);
        } else {
            let counted = self.attacks_not_itemized.get_or_insert(NotItemized {
                kind: attack.kind,
                count: 0,
            });
            counted.kind = attack.kind;
            counted.count += 1;
        }
        true
    }

    /// Keeps the pending attacks again by [`PrimaryState::keep_attack`]'s rule (bounded
    /// count and words).
    pub fn rebound_attacks(&mut self) {
        for attack in std::mem::take(&mut self.pending_attacks) {
            self.keep_attack(DetectedAttack::new(attack.kind, &attack.detail));
        }
    }

    /// The attacks the next manifest carries: those kept, and one entry for those counted.
    pub fn attacks_to_report(&self) -> Vec<DetectedAttack> {
        let mut attacks = self.pending_attacks.clone();
        if let Some(counted) = self.attacks_not_itemized {
            attacks.push(DetectedAttack::new(
                counted.kind,
                &format!(
                    "{} more attacks beyond the {MAX_KEPT_ATTACKS} kept, the newest of this kind",
                    counted.count
                ),
            ));
        }
        attacks
    }

    /// How many attacks wait for a manifest: the kept ones and the counted ones.
    pub fn attacks_pending(&self) -> (usize, u64) {
        (
            self.pending_attacks.len(),
            self.attacks_not_itemized.map_or(0, |c| c.count),
        )
    }

    /// Forgets the attacks an accepted manifest carried, `reported` as
    /// [`PrimaryState::attacks_pending`] gave them when it was made; any kept since stay.
    pub fn attacks_reported(&mut self, (kept, counted): (usize, u64)) {
        self.pending_attacks
            .drain(..kept.min(self.pending_attacks.len()));
        if let Some(c) = &mut self.attacks_not_itemized {
            c.count = c.count.saturating_sub(counted);
            if c.count == 0 {
                self.attacks_not_itemized = None;
            }
        }
    }
}

mod optional_time {
    use serde::{Deserialize, Deserializer, Serializer};
    use uptane_core::time::{UtcTime, format_expires, parse_expires};

    pub(super) fn serialize<S: Serializer>(t: &Option<UtcTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&format_expires(t)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<UtcTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                parse_expires(&text)
                    .ok_or_else(|| serde::de::Error::custom(format!("bad time {text:?}")))
            })
            .transpose()
    }
}

/// The files of a Primary's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Primary's ECU key (PKCS#8 PEM, mode 0600).
    pub fn key(&self) -> PathBuf {
        self.root.join("ecu.pem")
    }

    /// The Primary's public key, a TUF key object.
    pub fn public_key(&self) -> PathBuf {
        self.root.join("ecu.pub.json")
    }

    /// The Primary's TLS identity (`cert.pem`, `key.pem`): what its Secondaries pin, and
    /// what it shows the Director.
    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// The vehicle credential the Director issued (mode 0600).
    pub fn credential(&self) -> PathBuf {
        self.root.join("credential")
    }

    /// The registered ECUs.
    pub fn inventory(&self) -> PathBuf {
        self.root.join("inventory.json")
    }

    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// Trusted Director metadata.
    pub fn director_metadata(&self) -> PathBuf {
        self.root.join("metadata").join("director")
    }

    /// Trusted Image repository metadata.
    pub fn image_metadata(&self) -> PathBuf {
        self.root.join("metadata").join("image-repo")
    }

    /// Verified images, named by SHA-256.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Downloads in progress.
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// The image the Primary itself runs.
    pub fn firmware(&self) -> PathBuf {
        self.root.join("firmware").join("active.img")
    }

    /// Reads `state.json`.
    pub fn load_state(&self) -> std::io::Result<PrimaryState> {
        let mut state: PrimaryState = load_json(&self.state())?;
        // Kept by a version before attacks were bounded: bounded now, or a vehicle already
        // holding too many would send its oversized manifest for ever.
        state.rebound_attacks();
        Ok(state)
    }

    /// Writes `state.json` atomically.
    pub fn save_state(&self, state: &PrimaryState) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        service_runtime::files::write_atomic(&self.state(), &bytes)
    }

    /// Reads the inventory.
    pub fn load_inventory(&self) -> std::io::Result<Vec<InventoryEcu>> {
        load_json(&self.inventory())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attack(n: usize) -> DetectedAttack {
        DetectedAttack::new(AttackKind::Replay, &format!("attack {n}"))
    }

    /// A refusal provoked every cycle keeps the state and the manifest bounded, and what a
    /// manifest carried leaves with it, not what came after.
    #[test]
    fn kept_attacks_stay_bounded_and_leave_with_the_manifest_that_carried_them() {
        let mut state = PrimaryState::default();
        assert!(state.keep_attack(attack(0)));
        assert!(
            !state.keep_attack(attack(0)),
            "the same attack is kept once"
        );
        for n in 1..1_000 {
            assert!(state.keep_attack(attack(n)));
        }
        assert_eq!(state.attacks_pending(), (MAX_KEPT_ATTACKS, 1_000 - 32));
        let report = state.attacks_to_report();
        assert_eq!(report.len(), MAX_KEPT_ATTACKS + 1);
        assert_eq!(
            report[MAX_KEPT_ATTACKS].detail,
            "968 more attacks beyond the 32 kept, the newest of this kind"
        );

        // One more while the manifest is on its way: counted, and left when it is accepted.
        let carried = state.attacks_pending();
        state.keep_attack(attack(5_000));
        state.attacks_reported(carried);
        assert_eq!(state.attacks_pending(), (0, 1));
        state.keep_attack(attack(6_000));
        let carried = state.attacks_pending();
        state.attacks_reported(carried);
        assert_eq!(state.attacks_pending(), (0, 0));
        assert!(state.attacks_to_report().is_empty());
    }

    /// A `state.json` written by a version before attacks were bounded (any number, any
    /// words) is bounded as it is read, so the next manifest fits what the Director accepts.
    #[test]
    fn attacks_kept_by_an_older_version_are_bounded_when_the_state_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateDir::new(dir.path());
        let old = PrimaryState {
            pending_attacks: (0..100)
                .map(|n| DetectedAttack {
                    kind: AttackKind::Replay,
                    detail: format!("{n}\u{0}{}", "x".repeat(4096)),
                })
                .collect(),
            ..PrimaryState::default()
        };
        layout.save_state(&old).unwrap();
        let state = layout.load_state().unwrap();
        assert_eq!(state.attacks_pending(), (MAX_KEPT_ATTACKS, 100 - 32));
        for attack in &state.pending_attacks {
            assert!(attack.detail.len() <= uptane_core::manifest::MAX_ATTACK_DETAIL_BYTES);
            assert!(
                !attack.detail.contains('\u{0}'),
                "{:?}",
                &attack.detail[..8]
            );
        }
    }
}
