//! What one update cycle did, for logs, `primary-ecu once` and its exit status.

use std::collections::BTreeMap;

use uptane_core::error::AttackKind;
use uptane_core::ids::EcuSerial;

use crate::ports::ManifestOutcome;

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
    /// A repository or the Director could not be reached, or failed to answer.
    Failed(String),
    /// The Primary's own state could not be written (a full or failing disk).
    LocalFailure(String),
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
    /// Withdrawn by the Director before the ECU activated it; it runs what it ran before.
    Cancelled(String),
}

/// What one cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// The manifest sent at the start of the cycle.
    pub manifest: ManifestOutcome,
    /// The verification step.
    pub verification: Verification,
    /// Per ECU, the updates attempted.
    pub ecus: BTreeMap<EcuSerial, EcuOutcome>,
    /// Secondaries that did not answer, with why.
    pub unreachable: BTreeMap<EcuSerial, String>,
    /// The manifest sent at the end, when the cycle changed what the vehicle reports.
    pub closing_manifest: Option<ManifestOutcome>,
}

impl CycleReport {
    /// The exit status of `primary-ecu once` (`service_runtime::cli::Exit`, docs/CLI.md):
    /// 0 when nothing is left to do; 1 when its own state could not be written; 2 when an
    /// attack was refused; 5 when the Director
    /// refused the manifest (4xx); 4 when a repository or the Director could not be reached
    /// or failed to answer (5xx); 3 when an ECU failed, was unreachable, or work is pending.
    pub fn exit_code(&self) -> u8 {
        use service_runtime::cli::Exit;
        let refused = |m: Option<&ManifestOutcome>| matches!(m, Some(ManifestOutcome::Refused(_)));
        let exit = match &self.verification {
            Verification::Refused { .. } => Exit::Verification,
            _ if refused(Some(&self.manifest)) || refused(self.closing_manifest.as_ref()) => {
                Exit::Refused
            }
            Verification::Failed(_) => Exit::Unreachable,
            Verification::LocalFailure(_) => Exit::Failed,
            _ if self
                .ecus
                .values()
                .any(|o| !matches!(o, EcuOutcome::Installed(_) | EcuOutcome::Cancelled(_))) =>
            {
                Exit::Incomplete
            }
            _ if !self.unreachable.is_empty() => Exit::Incomplete,
            _ if !matches!(self.manifest, ManifestOutcome::Accepted) => Exit::Unreachable,
            _ => Exit::Ok,
        };
        exit.code()
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
            Verification::LocalFailure(why) => format!("failed to save its state: {why}"),
        });
        for (serial, outcome) in &self.ecus {
            parts.push(match outcome {
                EcuOutcome::Installed(f) => format!("{serial} installed {f}"),
                EcuOutcome::Failed(why) => format!("{serial} failed: {why}"),
                EcuOutcome::Pending(why) => format!("{serial} pending: {why}"),
                EcuOutcome::Cancelled(why) => format!("{serial} cancelled: {why}"),
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
                Some(ManifestOutcome::ServerError(why)) => {
                    parts.push(format!("{which} failed on the Director: {why}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(manifest: ManifestOutcome, verification: Verification) -> CycleReport {
        CycleReport {
            manifest,
            verification,
            ecus: BTreeMap::new(),
            unreachable: BTreeMap::new(),
            closing_manifest: None,
        }
    }

    #[test]
    fn each_ending_of_a_cycle_has_its_status() {
        let accepted = || ManifestOutcome::Accepted;
        let cases = [
            (report(accepted(), Verification::Unchanged), 0),
            (
                report(accepted(), Verification::LocalFailure("disk full".into())),
                1,
            ),
            (
                report(
                    accepted(),
                    Verification::Refused {
                        kind: AttackKind::Rollback,
                        detail: "targets 3 < 4".into(),
                    },
                ),
                2,
            ),
            (
                report(
                    ManifestOutcome::Unsent("connection refused".into()),
                    Verification::Failed("connection refused".into()),
                ),
                4,
            ),
            (
                report(
                    ManifestOutcome::ServerError("HTTP 503".into()),
                    Verification::Unchanged,
                ),
                4,
            ),
            (
                report(
                    ManifestOutcome::Refused("HTTP 401".into()),
                    Verification::Failed("HTTP 401".into()),
                ),
                5,
            ),
        ];
        for (report, status) in cases {
            assert_eq!(report.exit_code(), status, "{}", report.summary());
        }
        let mut pending = report(accepted(), Verification::Unchanged);
        pending
            .unreachable
            .insert("BRAKE-1".parse().unwrap(), "connection refused".into());
        assert_eq!(pending.exit_code(), 3);
    }
}
