//! `fleet-sim hil`: the fault matrix of `ecu-side.md` (c) run against real processes. Each
//! row provisions fresh vehicles (N, each a Primary and M Secondaries), injects its fault
//! into the first Secondary of the first vehicle (or into the link, the Primary or the
//! Director), publishes and assigns a new image for every ECU, and checks what the Director
//! records at the end: the faulted ECU's outcome, and every other ECU updated.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sim::{Fleet, SimVehicle, VehicleSpec, wait_until};

/// The shape of the rig.
#[derive(Debug, Clone, Copy)]
pub struct Rig {
    /// Vehicles per row.
    pub vehicles: usize,
    /// Secondaries per vehicle (at least 1).
    pub secondaries: usize,
}

/// What the faulted ECU must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Its new image, installed.
    Installed,
    /// Never reached: its assignment still open, its previous image running, and the
    /// Director told it was unreachable.
    Unreached,
    /// Its first assignment superseded mid-transfer by a second one (an image named
    /// `…-next.bin`): the first cancelled, the second installed.
    Superseded,
    /// Not installed while the fault lasts: its assignment still open, its previous image
    /// running, and this attack reported to the Director.
    Reported(&'static str),
    /// A failed assignment naming this result, and its previous image still running.
    Failed(&'static str),
    /// Cancelled by the operator's `director assignment cancel`: the entry cancelled, the
    /// previous image running, nothing of the update left on the ECU.
    Cancelled,
    /// Cancelled by the operator after the ECU's boot switch: installed, the entry saying the
    /// cancel came too late.
    InstalledDespiteCancel,
}

/// A fault and when it strikes.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// No fault.
    None,
    /// Secondary flags for the run that gets the update; the process restarts without them
    /// once it has died (power loss) or right away when it lives on.
    Secondary(&'static [&'static str], bool),
    /// The Secondary has one bank only and loses power while writing it; it is powered up
    /// again without the fault.
    SingleBankPowerLoss,
    /// Secondary flags that cut its power: it is powered up again with the same flags each
    /// time, so that the cut strikes every time.
    SecondaryRepeated(&'static [&'static str]),
    /// The link to the Secondary is reset once the transfer is under way.
    LinkCut,
    /// The link holds every byte once the transfer is under way, until the Primary gives up.
    LinkStall,
    /// The Secondary is off until the rest of the vehicle has updated.
    Offline,
    /// The Secondary is off for the whole row.
    OfflineThroughout,
    /// One byte towards the Secondary is corrupted in transit once the transfer is under way.
    LinkCorrupt,
    /// The Secondary loses its answer to an upload once (the chunk written).
    LostAnswer,
    /// The link to the Secondary runs below the Primary's minimum transfer speed.
    SlowBelowMinimum,
    /// The Secondary is off when the update starts and back once the Primary found it
    /// unreachable.
    OfflineBriefly,
    /// The Secondary sleeps (powered off) after writing its slot, before activation, and
    /// wakes once the Primary found it unreachable.
    AsleepAtActivation,
    /// The Director is down from mid-transfer until the Primary holds the ECU's result.
    ResultUndelivered,
    /// Once installed, the Primary's `Install` and `Activate` calls are sent again with the
    /// same correlation id.
    DuplicateCalls,
    /// The operator assigns an image to an ECU the vehicle does not have.
    UnknownEcu,
    /// The Director's root is rotated twice (new keys, then a renewal) before the update.
    RootsRotated,
    /// A second image is assigned to the Secondary while the first one transfers.
    SecondAssignment,
    /// The vehicle's clock reads a year ahead during the update.
    ClockAhead,
    /// The Secondary states an older protocol version until it is updated (restarted
    /// without the knob) once the Primary declined to serve it.
    OlderProtocol,
    /// The Secondary is replaced by a new part (same serial, new key and certificate) at
    /// the same address before the update.
    Replaced,
    /// The Image repository serves the Secondary's image tampered with on its disk, until
    /// the Primary reports it: longer than its targets entry (`true`), or with a byte changed.
    ImageTampered(bool),
    /// Rogue connections send the Secondary garbage once the transfer is under way.
    Garbage,
    /// The Primary is killed with SIGKILL once the transfer is under way, then restarted.
    PrimaryKilled,
    /// The Director is killed with SIGKILL once an assignment was delivered, then restarted.
    DirectorRestarted,
    /// The vehicle is parked for 400 days while both repositories rotate keys and sign
    /// everything again (`crate::parked`, on a fleet of its own whose clock moves).
    ParkedForMonths,
    /// The operator cancels the Secondary's assignment while its transfer is stalled, and
    /// the link comes back once the Primary has seen the withdrawal.
    CancelMidTransfer,
    /// The operator cancels the Secondary's assignment while its install waits for busy
    /// storage.
    CancelDuringInstall,
    /// The operator cancels the Secondary's assignment after its boot switch (power lost
    /// before the trial boot), and powers it up again.
    CancelAfterActivation,
}

/// One row of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Row numbers in `ecu-side.md` (c).
    pub matrix: &'static str,
    /// The fault, in words.
    pub name: &'static str,
    /// The fault.
    pub fault: Fault,
    /// The faulted ECU's expected outcome.
    pub expect: Expect,
}

/// The rows run.
pub fn rows() -> Vec<Row> {
    use Expect::{
        Cancelled, Failed, Installed, InstalledDespiteCancel, Reported, Superseded, Unreached,
    };
    use Fault::*;
    vec![
        Row {
            matrix: "1",
            name: "no fault (golden path)",
            fault: None,
            expect: Installed,
        },
        Row {
            matrix: "7",
            name: "power loss while storing verified metadata",
            fault: Secondary(&["--fault-power-loss", "metadata"], true),
            expect: Installed,
        },
        Row {
            matrix: "6",
            name: "Director root rotated twice before the update",
            fault: RootsRotated,
            expect: Installed,
        },
        Row {
            matrix: "24",
            name: "boot environment torn by power loss at activation",
            fault: Secondary(&["--fault-torn-env"], true),
            expect: Installed,
        },
        Row {
            matrix: "42",
            name: "single-bank Secondary, power lost while writing it",
            fault: SingleBankPowerLoss,
            expect: Installed,
        },
        Row {
            matrix: "30",
            name: "power lost while writing the slot, every time",
            fault: SecondaryRepeated(&["--fault-power-loss", "write"]),
            expect: Failed("install interrupted 3 times"),
        },
        Row {
            matrix: "16",
            name: "power loss mid-transfer",
            fault: Secondary(&["--fault-power-loss", "transfer"], true),
            expect: Installed,
        },
        Row {
            matrix: "21",
            name: "power loss writing the inactive slot",
            fault: Secondary(&["--fault-power-loss", "write"], true),
            expect: Installed,
        },
        Row {
            matrix: "23",
            name: "power loss after the write, before the boot switch",
            fault: Secondary(&["--fault-power-loss", "after-write"], true),
            expect: Installed,
        },
        Row {
            matrix: "23",
            name: "power loss after the boot switch, before the trial boot",
            fault: Secondary(&["--fault-power-loss", "trial-boot"], true),
            expect: Installed,
        },
        Row {
            matrix: "28",
            name: "power loss in the trial boot, before confirmation",
            fault: Secondary(&["--fault-power-loss", "before-confirm"], true),
            expect: Installed,
        },
        Row {
            matrix: "29",
            name: "power loss while confirming",
            fault: Secondary(&["--fault-power-loss", "confirm"], true),
            expect: Installed,
        },
        Row {
            matrix: "26",
            name: "new image fails its first boot, then boots",
            fault: Secondary(&["--fault-fail-boot-times", "1"], false),
            expect: Installed,
        },
        Row {
            matrix: "27",
            name: "new image fails its health check at every boot",
            fault: Secondary(&["--fault-health-check-fail"], false),
            expect: Failed("rolled_back"),
        },
        Row {
            matrix: "8",
            name: "link cut mid-transfer",
            fault: LinkCut,
            expect: Installed,
        },
        Row {
            matrix: "9",
            name: "link stalled mid-transfer",
            fault: LinkStall,
            expect: Installed,
        },
        Row {
            matrix: "10",
            name: "answer to an upload lost, its chunk written",
            fault: LostAnswer,
            expect: Installed,
        },
        Row {
            matrix: "13",
            name: "transfer bytes corrupted in transit",
            fault: LinkCorrupt,
            expect: Installed,
        },
        Row {
            matrix: "38",
            name: "garbage sent to the Secondary mid-transfer",
            fault: Garbage,
            expect: Installed,
        },
        Row {
            matrix: "12",
            name: "slow link below the Primary's minimum speed",
            fault: SlowBelowMinimum,
            expect: Reported("slow_retrieval"),
        },
        Row {
            matrix: "11",
            name: "slow link above the threshold",
            fault: Secondary(&["--fault-slow-link-ms", "3"], false),
            expect: Installed,
        },
        Row {
            matrix: "25",
            name: "new image never boots",
            fault: Secondary(&["--fault-fail-boot"], false),
            expect: Failed("rolled_back"),
        },
        Row {
            matrix: "22",
            name: "slot write corrupted (read-back check)",
            fault: Secondary(&["--fault-corrupt-write"], false),
            expect: Failed("failed"),
        },
        Row {
            matrix: "18",
            name: "storage full",
            fault: Secondary(&["--fault-storage-bytes", "1000"], false),
            expect: Failed("do not fit"),
        },
        Row {
            matrix: "3, 40",
            name: "Secondary offline, back later",
            fault: Offline,
            expect: Installed,
        },
        Row {
            matrix: "4",
            name: "Secondary back while the update is under way",
            fault: OfflineBriefly,
            expect: Installed,
        },
        Row {
            matrix: "41",
            name: "Secondary asleep across activation",
            fault: AsleepAtActivation,
            expect: Installed,
        },
        Row {
            matrix: "32",
            name: "Director down when the result is to be reported",
            fault: ResultUndelivered,
            expect: Installed,
        },
        Row {
            matrix: "33",
            name: "Install and Activate sent again after the install",
            fault: DuplicateCalls,
            expect: Installed,
        },
        Row {
            matrix: "36",
            name: "image assigned to an ECU the vehicle does not have",
            fault: UnknownEcu,
            expect: Installed,
        },
        Row {
            matrix: "14",
            name: "Image repository serves more bytes than the image's length",
            fault: ImageTampered(true),
            expect: Installed,
        },
        Row {
            matrix: "15",
            name: "Image repository serves the image with a byte changed",
            fault: ImageTampered(false),
            expect: Installed,
        },
        Row {
            matrix: "39",
            name: "vehicle clock a year ahead",
            fault: ClockAhead,
            expect: Installed,
        },
        Row {
            matrix: "34",
            name: "second update assigned while the first transfers",
            fault: SecondAssignment,
            expect: Superseded,
        },
        Row {
            matrix: "37",
            name: "Secondary speaking an older protocol version, then updated",
            fault: OlderProtocol,
            expect: Installed,
        },
        Row {
            matrix: "35",
            name: "Secondary replaced by a new part at the same address",
            fault: Replaced,
            expect: Unreached,
        },
        Row {
            matrix: "2",
            name: "Secondary offline the whole time",
            fault: OfflineThroughout,
            expect: Unreached,
        },
        Row {
            matrix: "17",
            name: "Primary killed mid-transfer and restarted",
            fault: PrimaryKilled,
            expect: Installed,
        },
        Row {
            matrix: "19",
            name: "operator cancels while the transfer is stalled",
            fault: CancelMidTransfer,
            expect: Cancelled,
        },
        Row {
            matrix: "19",
            name: "operator cancels while the install waits for storage",
            fault: CancelDuringInstall,
            expect: Cancelled,
        },
        Row {
            matrix: "20",
            name: "operator cancels after the boot switch",
            fault: CancelAfterActivation,
            expect: InstalledDespiteCancel,
        },
        Row {
            matrix: "-",
            name: "Director killed mid-campaign and restarted",
            fault: DirectorRestarted,
            expect: Installed,
        },
        Row {
            matrix: "-",
            name: "vehicle parked 400 days; roots and keys rotated meanwhile",
            fault: ParkedForMonths,
            expect: Installed,
        },
    ]
}

/// What a row observed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The row.
    pub row: Row,
    /// What happened, in words.
    pub observed: String,
    /// Whether it matches the expectation.
    pub holds: bool,
    /// Seconds taken.
    pub seconds: f64,
}

const ROW_LIMIT: Duration = Duration::from_secs(120);
/// The Secondary's loop guard: starts of one install that may end in a power cut
/// (`secondary_ecu::agent::MAX_INSTALL_STARTS`).
const INSTALL_STARTS: usize = 3;
const IMAGE_BYTES: usize = 1 << 20;
/// Where the last 64 KiB chunk of an image starts (the answer to the stream that carries it
/// is the one a lost-answer row loses).
const LAST_CHUNK_OFFSET: &str = "983040";

fn image(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ seed) as u8)
        .collect()
}

fn final_status(entry: &Value) -> bool {
    matches!(
        entry["status"].as_str(),
        Some("installed" | "failed" | "cancelled")
    )
}

/// Runs one row with fresh vehicles.
pub fn run_row(fleet: &mut Fleet, rig: Rig, index: usize, row: Row) -> Outcome {
    let started = Instant::now();
    let result = match row.fault {
        Fault::ParkedForMonths => crate::parked::drive(),
        _ => drive(fleet, rig, index, row),
    };
    let (observed, holds) = match result {
        Ok(text) => (text, true),
        Err(text) => (text, false),
    };
    Outcome {
        row,
        observed,
        holds,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// What a row observed: `Ok` when it matches the expectation.
type Observed = Result<String, String>;

fn drive(fleet: &mut Fleet, rig: Rig, index: usize, row: Row) -> Observed {
    let mut vehicles: Vec<SimVehicle> = (0..rig.vehicles)
        .map(|v| {
            let mut spec =
                VehicleSpec::standard(&format!("HIL{index:02}V{v}"), rig.secondaries.max(1));
            if v == 0 && matches!(row.fault, Fault::SingleBankPowerLoss) {
                spec.single_bank.push(spec.secondaries[0].0.clone());
            }
            SimVehicle::provision(fleet, &spec)
        })
        .collect();
    let vins: Vec<String> = vehicles.iter().map(|v| v.vin.clone()).collect();
    let vin_refs: Vec<&str> = vins.iter().map(String::as_str).collect();

    // Small chunks, each made durable, so that a fault strikes mid-transfer.
    let fine_grained = [
        "--max-chunk-size",
        "65536",
        "--durable-interval-bytes",
        "65536",
    ];
    match row.fault {
        Fault::Secondary(flags, _) | Fault::SecondaryRepeated(flags) => {
            vehicles[0].start_secondary(0, &[&fine_grained[..], flags].concat());
        }
        Fault::SingleBankPowerLoss => {
            vehicles[0].start_secondary(
                0,
                &[&fine_grained[..], &["--fault-power-loss", "write"]].concat(),
            );
        }
        Fault::LinkCut
        | Fault::LinkStall
        | Fault::CancelMidTransfer
        | Fault::PrimaryKilled
        | Fault::LinkCorrupt
        | Fault::Garbage
        | Fault::SecondAssignment => {
            vehicles[0].start_secondary(
                0,
                &[&fine_grained[..], &["--fault-slow-link-ms", "15"]].concat(),
            );
        }
        Fault::SlowBelowMinimum => {
            // About 200 KiB/s, where the Primary expects 1 MiB/s after one second.
            vehicles[0].set_primary_flags(&[
                "--min-upload-bytes-per-sec",
                "1048576",
                "--upload-grace-ms",
                "1000",
            ]);
            vehicles[0].start_secondary(
                0,
                &[&fine_grained[..], &["--fault-slow-link-ms", "300"]].concat(),
            );
        }
        Fault::LostAnswer => {
            vehicles[0].start_secondary(
                0,
                &[
                    &fine_grained[..],
                    &["--fault-lose-ack-after", LAST_CHUNK_OFFSET],
                ]
                .concat(),
            );
        }
        Fault::AsleepAtActivation => {
            vehicles[0].start_secondary(
                0,
                &[&fine_grained[..], &["--fault-power-loss", "after-write"]].concat(),
            );
        }
        Fault::CancelAfterActivation => {
            vehicles[0].start_secondary(
                0,
                &[&fine_grained[..], &["--fault-power-loss", "trial-boot"]].concat(),
            );
        }
        Fault::CancelDuringInstall => {
            // Storage that never becomes ready: only the cancel ends the install.
            let gate = vehicles[0].secondaries[0].dir.join("storage-never-ready");
            vehicles[0].start_secondary(
                0,
                &[
                    &fine_grained[..],
                    &["--fault-hold-write-until", &gate.display().to_string()],
                ]
                .concat(),
            );
        }
        Fault::ResultUndelivered => {
            vehicles[0].start_secondary(
                0,
                &[&fine_grained[..], &["--fault-slow-link-ms", "15"]].concat(),
            );
        }
        Fault::Offline | Fault::OfflineThroughout | Fault::OfflineBriefly => {
            vehicles[0].stop_secondary(0);
        }
        Fault::Replaced => replace_secondary(fleet, &mut vehicles[0])?,
        Fault::OlderProtocol => {
            vehicles[0].start_secondary(0, &["--fault-protocol-version", "1"]);
        }
        _ => {}
    }
    if matches!(row.fault, Fault::ClockAhead) {
        vehicles[0].set_clock_offset_secs(365 * 24 * 3600);
    }
    for vehicle in &mut vehicles {
        vehicle.start_primary();
    }
    // Every vehicle has reported its factory images before the campaign starts.
    for vin in &vin_refs {
        let reported = wait_until(ROW_LIMIT, || {
            fleet
                .installed(vin)
                .iter()
                .filter(|(_, image)| image.is_some())
                .count()
                >= 1
        });
        if !reported {
            return Err(format!("{vin} never reported"));
        }
    }

    let mut hardware: Vec<String> = vec![vehicles[0].primary_hardware_id.clone()];
    hardware.extend(
        vehicles[0]
            .secondaries
            .iter()
            .map(|s| s.hardware_id.clone()),
    );
    let mut names = Vec::new();
    for (i, hardware_id) in hardware.iter().enumerate() {
        let name = format!("hil-{index:02}-{hardware_id}.bin");
        fleet.publish(
            &name,
            hardware_id,
            index as u64 + 1,
            &image(index * 10 + i, IMAGE_BYTES),
        );
        names.push(name);
    }
    // Unreachable reports about the vehicle so far (its first manifests may declare an ECU
    // that is off): rows that wait for the Primary to find one unreachable wait for a new one.
    let unreachable_before = event_count(fleet, &vins[0], false, "ecu_unreachable");
    if matches!(row.fault, Fault::UnknownEcu) {
        let mut args = vec!["assign", "--image", &names[1], "--ecu", "NOT-IN-VEHICLE"];
        for vin in &vin_refs {
            args.extend(["--vin", vin]);
        }
        match fleet.operator_at(&fleet.director_url, &args) {
            Ok(answer) => return Err(format!("the Director accepted the assignment: {answer}")),
            Err(e) if e.contains("NOT-IN-VEHICLE") => {}
            Err(e) => return Err(format!("refused, but without naming the ECU: {e}")),
        }
    }
    // The Secondary's image as the Image repository serves it (consistent snapshots: the
    // file is `<sha256>.<name>`, a hard link to the stored blob), tampered with before the
    // assignment and put right once the Primary reported the refusal.
    let tampered = match row.fault {
        Fault::ImageTampered(longer) => Some(tamper(fleet, &names[1], longer)?),
        _ => None,
    };
    if matches!(row.fault, Fault::RootsRotated) {
        let keys = fleet.path("director-keys");
        for args in [
            &["rotate-root", "--keys", "3", "--threshold", "2"][..],
            &["rotate-root", "--root-lifetime-days", "730"][..],
        ] {
            let (ok, _, err) = fleet.director_local(args, &keys);
            if !ok {
                return Err(format!("director {args:?}: {err}"));
            }
        }
    }
    // A cancel row's assignment of the faulted Secondary is the first vehicle's alone: the
    // operator cancels it there only.
    let cancel_row = matches!(
        row.fault,
        Fault::CancelMidTransfer | Fault::CancelDuringInstall | Fault::CancelAfterActivation
    );
    let mut cancelled_assignment = String::new();
    for (i, name) in names.iter().enumerate() {
        if cancel_row && i == 1 {
            let assigned = fleet.assign(name, &vin_refs[..1]);
            cancelled_assignment = assigned["correlation_id"]
                .as_str()
                .ok_or_else(|| format!("no correlation id in {assigned}"))?
                .to_string();
            if vin_refs.len() > 1 {
                fleet.assign(name, &vin_refs[1..]);
            }
        } else {
            fleet.assign(name, &vin_refs);
        }
    }
    let cancel = || -> Result<(), String> {
        let answer = fleet.operator_at(
            &fleet.director_url,
            &["assignment", "cancel", &cancelled_assignment],
        )?;
        if answer["cancel_requested"] != 1 {
            return Err(format!(
                "the cancel did not reach the delivered entry: {answer}"
            ));
        }
        Ok(())
    };

    let target = &vehicles[0].secondaries[0].serial.clone();
    let vin0 = vins[0].clone();
    let under_way =
        |v: &SimVehicle| wait_until(ROW_LIMIT, || v.secondaries[0].durable_offset() > 0);
    // The same, with the link held the moment the transfer is seen under way, so that it is
    // still under way when the fault is set, however long this thread waits to run.
    let held_under_way = |v: &SimVehicle| {
        let secondary = &v.secondaries[0];
        wait_until(ROW_LIMIT, || {
            let started = secondary.durable_offset() > 0;
            secondary.link.set_stalled(started);
            started
        })
    };
    match row.fault {
        Fault::Secondary(_, true) | Fault::SingleBankPowerLoss => {
            if !vehicles[0].secondaries[0].wait_power_loss(ROW_LIMIT) {
                return Err("the power cut never happened".into());
            }
            vehicles[0].start_secondary(0, &[]);
            // The fault's own mark, seen at the power-up (before the Primary's next call).
            let secondary = &vehicles[0].secondaries[0];
            if matches!(row.fault, Fault::Secondary(flags, _) if flags.contains(&"--fault-torn-env"))
                && !secondary.log().contains("the boot environment is torn")
            {
                return Err(format!(
                    "the bootloader did not find its environment torn: {}",
                    secondary.log()
                ));
            }
            if matches!(row.fault, Fault::SingleBankPowerLoss) {
                let env = std::fs::read_to_string(secondary.dir.join("bootenv.json"))
                    .map_err(|e| e.to_string())?;
                let env: Value = serde_json::from_str(&env).map_err(|e| e.to_string())?;
                let slots = env["slots"].as_object().map(|s| s.len());
                if slots != Some(1) || secondary.dir.join("slots/B.img").exists() {
                    return Err(format!("not a single-bank device: {env}"));
                }
            }
        }
        Fault::SecondaryRepeated(flags) => {
            // Powered up again after each cut, until the Director records an end.
            let mut cuts = 0;
            let ended = wait_until(ROW_LIMIT, || {
                if vehicles[0].secondaries[0].wait_power_loss(Duration::from_millis(100)) {
                    cuts += 1;
                    vehicles[0].start_secondary(0, &[&fine_grained[..], flags].concat());
                }
                fleet
                    .assignments(&vin0)
                    .iter()
                    .any(|e| e["ecu_serial"] == target.as_str() && final_status(e))
            });
            if !ended {
                return Err(format!("no end recorded after {cuts} power cuts"));
            }
            // At least the bound: the count starts again when new metadata changes the
            // update (the row's three assignments may reach the vehicle in two versions).
            if cuts < INSTALL_STARTS {
                return Err(format!(
                    "the update ended after {cuts} power cuts, below the loop guard's \
                     {INSTALL_STARTS}"
                ));
            }
        }
        Fault::LinkCut => {
            if !under_way(&vehicles[0]) {
                return Err("the transfer never started".into());
            }
            vehicles[0].secondaries[0].link.cut();
        }
        Fault::LinkStall => {
            if !held_under_way(&vehicles[0]) {
                return Err("the transfer never started".into());
            }
            let primary_dir = vehicles[0].primary_dir.clone();
            let gave_up = wait_until(ROW_LIMIT, || attempts(&primary_dir, target) > 0);
            vehicles[0].secondaries[0].link.set_stalled(false);
            vehicles[0].secondaries[0].link.cut();
            if !gave_up {
                return Err("the Primary never gave up on the stalled transfer".into());
            }
        }
        Fault::LinkCorrupt => {
            if !held_under_way(&vehicles[0]) {
                return Err("the transfer never started".into());
            }
            let secondary = &vehicles[0].secondaries[0];
            // The corruption is to cut the transfer itself, not a later call: the transfer
            // (the only traffic on the link meanwhile) is still under way.
            let reached = secondary.durable_offset();
            if reached >= IMAGE_BYTES as u64 {
                return Err(format!(
                    "the transfer had finished ({reached} bytes) before the corruption"
                ));
            }
            secondary.link.corrupt_next();
            secondary.link.set_stalled(false);
            let primary_dir = vehicles[0].primary_dir.clone();
            if !wait_until(ROW_LIMIT, || attempts(&primary_dir, target) > 0) {
                return Err("the corrupted transfer never failed".into());
            }
        }
        Fault::OfflineBriefly | Fault::AsleepAtActivation => {
            let mut since = unreachable_before;
            if matches!(row.fault, Fault::AsleepAtActivation) {
                if !vehicles[0].secondaries[0].wait_power_loss(ROW_LIMIT) {
                    return Err("the Secondary never went to sleep after its write".into());
                }
                since = event_count(fleet, &vin0, false, "ecu_unreachable");
            }
            let missed = wait_until(ROW_LIMIT, || {
                event_count(fleet, &vin0, false, "ecu_unreachable") > since
            });
            if !missed {
                return Err("the Primary never found the Secondary unreachable".into());
            }
            vehicles[0].start_secondary(0, &[]);
        }
        Fault::CancelMidTransfer => {
            if !held_under_way(&vehicles[0]) {
                return Err("the transfer never started".into());
            }
            let primary_dir = vehicles[0].primary_dir.clone();
            let gave_up = wait_until(ROW_LIMIT, || attempts(&primary_dir, target) > 0);
            let cancelled = cancel();
            // The link comes back only once the Primary holds the withdrawal durably: no
            // transfer can finish before.
            let withdrawn = wait_until(ROW_LIMIT, || {
                primary_phase(&primary_dir, target).as_deref() == Some("withdrawn")
            });
            vehicles[0].secondaries[0].link.set_stalled(false);
            vehicles[0].secondaries[0].link.cut();
            if !gave_up {
                return Err("the Primary never gave up on the stalled transfer".into());
            }
            cancelled?;
            if !withdrawn {
                return Err("the Primary never saw the withdrawal".into());
            }
        }
        Fault::CancelDuringInstall => {
            let primary_dir = vehicles[0].primary_dir.clone();
            let secondary_state = vehicles[0].secondaries[0].dir.join("state.json");
            // The install started (counted by the loop guard) and the Primary stopped waiting.
            let held = wait_until(ROW_LIMIT, || {
                attempts(&primary_dir, target) > 0
                    && std::fs::read(&secondary_state)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .is_some_and(|s| s["install_starts"].as_u64() > Some(0))
            });
            if !held {
                return Err("the install never started waiting for storage".into());
            }
            cancel()?;
        }
        Fault::CancelAfterActivation => {
            if !vehicles[0].secondaries[0].wait_power_loss(ROW_LIMIT) {
                return Err("the power cut after the boot switch never happened".into());
            }
            cancel()?;
            vehicles[0].start_secondary(0, &[]);
        }
        Fault::ResultUndelivered => {
            if !under_way(&vehicles[0]) {
                return Err("the transfer never started".into());
            }
            fleet.stop_director();
            let primary_dir = vehicles[0].primary_dir.clone();
            let held = wait_until(ROW_LIMIT, || {
                primary_phase(&primary_dir, target).as_deref() == Some("installed")
            });
            fleet.restart_director();
            if !held {
                return Err("the Primary never held the result while the Director was down".into());
            }
        }
        Fault::ImageTampered(longer) => {
            let kind = if longer {
                "attack_reported:endless_data"
            } else {
                "attack_reported:arbitrary_software"
            };
            let reported = event_seen(fleet, &vin0, true, kind);
            if let Some((path, original)) = &tampered {
                std::fs::write(path, original).map_err(|e| e.to_string())?;
            }
            if !reported {
                return Err(format!("the Primary never reported {kind}"));
            }
        }
        Fault::SecondAssignment => {
            if !under_way(&vehicles[0]) {
                return Err("the transfer never started".into());
            }
            let hardware_id = &vehicles[0].secondaries[0].hardware_id;
            let next = format!("hil-{index:02}-{hardware_id}-next.bin");
            fleet.publish(
                &next,
                hardware_id,
                index as u64 + 2,
                &image(index * 10 + 9, IMAGE_BYTES),
            );
            fleet.assign(&next, &[vin0.as_str()]);
        }
        Fault::OlderProtocol => {
            let primary_dir = vehicles[0].primary_dir.clone();
            let declined = wait_until(ROW_LIMIT, || {
                primary_detail(&primary_dir, target).contains("protocol version 1")
            });
            if !declined {
                return Err("the Primary never declined the older protocol".into());
            }
            // The Secondary's own update: the same part, speaking this version.
            vehicles[0].start_secondary(0, &[]);
        }
        Fault::SlowBelowMinimum => {
            if !event_seen(fleet, &vin0, true, "attack_reported:slow_retrieval") {
                return Err("the slow transfer was never reported to the Director".into());
            }
        }
        Fault::LostAnswer => {
            let primary_dir = vehicles[0].primary_dir.clone();
            if !wait_until(ROW_LIMIT, || attempts(&primary_dir, target) > 0) {
                return Err("the Primary never missed the lost answer".into());
            }
        }
        Fault::Garbage => {
            if !under_way(&vehicles[0]) {
                return Err("the transfer never started".into());
            }
            let accepted = send_garbage(&vehicles[0].secondaries[0].real_addr());
            if accepted < 4 {
                return Err(format!(
                    "only {accepted} of 4 rogue connections were accepted"
                ));
            }
        }
        Fault::Offline | Fault::OfflineThroughout | Fault::Replaced => {
            let others_done = wait_until(ROW_LIMIT, || {
                fleet
                    .assignments(&vin0)
                    .iter()
                    .filter(|e| e["ecu_serial"] != target.as_str())
                    .all(|e| e["status"] == "installed")
                    && !fleet
                        .events(&vin0, false)
                        .iter()
                        .all(|e| e["kind"] != "ecu_unreachable")
            });
            if !others_done {
                return Err("the rest of the vehicle did not update while one ECU was off".into());
            }
            // The new part is refused for its certificate, not merely missed: the Primary
            // pinned the old part's, and nothing of the new one is accepted silently.
            if matches!(row.fault, Fault::Replaced)
                && !fleet.events(&vin0, false).iter().any(|e| {
                    e["kind"] == "ecu_unreachable"
                        && e["detail"]
                            .as_str()
                            .is_some_and(|d| d.contains("invalid peer certificate"))
                })
            {
                return Err("the new part was not refused for its certificate".into());
            }
            if matches!(row.fault, Fault::Offline) {
                vehicles[0].start_secondary(0, &[]);
            }
        }
        Fault::PrimaryKilled => {
            if !under_way(&vehicles[0]) {
                return Err("the transfer never started".into());
            }
            vehicles[0].kill_primary();
            vehicles[0].start_primary();
        }
        Fault::DirectorRestarted => {
            let delivered = wait_until(ROW_LIMIT, || {
                fleet
                    .assignments(&vin0)
                    .iter()
                    .any(|e| e["status"] != "pending")
            });
            if !delivered {
                return Err("no assignment was ever delivered".into());
            }
            fleet.restart_director();
        }
        Fault::Secondary(_, false)
        | Fault::None
        | Fault::DuplicateCalls
        | Fault::UnknownEcu
        | Fault::RootsRotated => {}
        // Driven by `crate::parked` instead.
        Fault::ParkedForMonths => return Err("not a row of this rig".into()),
        Fault::ClockAhead => {
            // The vehicle does not trust the reading (against it every metadata file would
            // look expired) and reports a freeze; with its clock put right it updates.
            if !event_seen(fleet, &vin0, true, "attack_reported:freeze") {
                return Err("the vehicle never reported its clock ahead (freeze)".into());
            }
            if fleet
                .assignments(&vin0)
                .iter()
                .any(|e| e["status"] == "installed")
            {
                return Err("the vehicle installed while its clock was a year ahead".into());
            }
            vehicles[0].stop_primary();
            vehicles[0].set_clock_offset_secs(0);
            vehicles[0].start_primary();
        }
    }

    // An ECU never reached keeps its entry open: the others settle.
    let settled = wait_until(ROW_LIMIT, || {
        vin_refs.iter().all(|vin| {
            let e = fleet.assignments(vin);
            e.len() >= names.len()
                && e.iter().all(|e| {
                    final_status(e)
                        || (matches!(row.expect, Expect::Unreached | Expect::Reported(_))
                            && e["ecu_serial"] == target.as_str())
                })
        })
    });
    for vehicle in &mut vehicles {
        vehicle.stop_primary();
    }
    if !settled {
        let states: Vec<String> = vin_refs
            .iter()
            .flat_map(|vin| fleet.assignments(vin))
            .map(|e| {
                format!(
                    "{}={}",
                    e["ecu_serial"].as_str().unwrap_or("?"),
                    e["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        return Err(format!(
            "not settled within {ROW_LIMIT:?}: {}",
            states.join(" ")
        ));
    }
    let judged = judge(fleet, &vin_refs, target, row.expect)?;
    if row.expect == Expect::Installed {
        // The Secondary's own books agree: nothing pending, the new release counter kept
        // (a result lost to a power cut while confirming is recorded at the next boot).
        let state: Value = std::fs::read(vehicles[0].secondaries[0].dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if !state["pending"].is_null()
            || state["installed_release_counter"].as_u64() != Some(index as u64 + 1)
        {
            return Err(format!(
                "{judged}; but the Secondary's state disagrees: pending {}, release counter {}",
                state["pending"], state["installed_release_counter"]
            ));
        }
    }
    if row.expect == Expect::Cancelled {
        // Nothing of the update is left on the Secondary: nothing pending, no staging, and
        // no slot it could boot holds the cancelled image.
        let dir = &vehicles[0].secondaries[0].dir;
        let state: Value = std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let env: Value = std::fs::read(dir.join("bootenv.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let bootable_new = env["slots"].as_object().is_some_and(|slots| {
            slots.values().any(|s| {
                s["image"]["filename"] == names[1].as_str()
                    && matches!(s["state"].as_str(), Some("good" | "pending"))
            })
        });
        if !state["pending"].is_null()
            || dir.join("staging/image.part").exists()
            || bootable_new
            || !env["trial"].is_null()
        {
            return Err(format!(
                "{judged}; but the Secondary kept some of the update: pending {}, staging {}, \
                 boot environment {env}",
                state["pending"],
                dir.join("staging/image.part").exists()
            ));
        }
    }
    if matches!(row.fault, Fault::DuplicateCalls) {
        let replayed = replay_install(fleet, &vehicles[0], &vin0, target)?;
        return Ok(format!("{judged}; {replayed}"));
    }
    Ok(judged)
}

/// Sends the Primary's `Install` and `Activate` again for the ECU's installed assignment
/// (with the Primary's own TLS identity): nothing may happen twice (row 33).
fn replay_install(fleet: &Fleet, vehicle: &SimVehicle, vin: &str, serial: &str) -> Observed {
    let correlation_id = fleet
        .assignments(vin)
        .iter()
        .find(|e| e["ecu_serial"] == serial)
        .and_then(|e| e["correlation_id"].as_str().map(str::to_string))
        .ok_or("no correlation id for the ECU")?;
    // The simulated device's boot environment (`secondary_ecu::ab::BootEnv`), as stored.
    let env_path = vehicle.secondaries[0].dir.join("bootenv.json");
    let env = || -> Result<Value, String> {
        std::fs::read(&env_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    };
    let before = env()?;
    let keys = vehicle.link_keys(0);
    let addr = vehicle.secondaries[0].real_addr();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let answers = runtime.block_on(async {
        let mut client = crate::forge::secondary_client(&addr, &keys);
        let install = client
            .install(proto::v2::InstallRequest {
                correlation_id: correlation_id.clone(),
            })
            .await;
        let activate = client
            .activate(proto::v2::ActivateRequest {
                correlation_id: correlation_id.clone(),
            })
            .await;
        let result = client
            .get_installation_result(proto::v2::GetInstallationResultRequest {
                correlation_id: correlation_id.clone(),
            })
            .await;
        (install, activate, result)
    });
    let after = env()?;
    let (install, activate, result) = answers;
    for (call, answer) in [("Install", &install), ("Activate", &activate)] {
        if let Ok(op) = answer {
            let op = op.get_ref();
            let refused = op.state != proto::v2::OperationState::Running as i32
                && op
                    .result
                    .as_ref()
                    .is_some_and(|r| r.code != proto::v2::ResultCode::Ok as i32);
            if !refused {
                return Err(format!("the replayed {call} was not refused: {op:?}"));
            }
        }
    }
    // The result was acknowledged by the Primary and may be gone; if it is still there it
    // must still say OK.
    if let Ok(result) = result
        && let Some(r) = result.into_inner().result
        && r.code != proto::v2::ResultCode::Ok as i32
    {
        return Err(format!("the result changed to code {}", r.code));
    }
    if after["boot_count"] != before["boot_count"]
        || after["active"] != before["active"]
        || !after["trial"].is_null()
    {
        return Err(format!(
            "the replay changed the device: {before} became {after}"
        ));
    }
    Ok(format!(
        "Install replayed: {}; Activate replayed: {}; no reboot, same slot",
        describe(install),
        describe(activate)
    ))
}

fn describe(answer: Result<tonic::Response<proto::v2::Operation>, tonic::Status>) -> String {
    match answer {
        Ok(op) => {
            let op = op.into_inner();
            match op.result {
                Some(r) => format!("code {} ({})", r.code, r.description),
                None => format!("state {}", op.state),
            }
        }
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// Puts a new part in place of the vehicle's first Secondary: same serial, hardware id and
/// address, a new key and TLS certificate (provisioned with the Primary's certificate, as a
/// workshop would pair it), the old directory kept aside. The Primary pinned the old part's
/// certificate.
fn replace_secondary(fleet: &Fleet, vehicle: &mut SimVehicle) -> Result<(), String> {
    vehicle.stop_secondary(0);
    let old = &vehicle.secondaries[0];
    let identity: Value = std::fs::read(old.dir.join("identity.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
    let primary_fingerprint = identity["primary_fingerprint"]
        .as_str()
        .ok_or("the old part pinned no Primary")?
        .to_string();
    let dir = old.dir.clone();
    std::fs::rename(&dir, dir.with_extension("removed")).map_err(|e| e.to_string())?;
    let mut init = crate::sim::secondary_init(
        fleet,
        &crate::sim::SecondaryInit {
            vin: &vehicle.vin,
            serial: &old.serial,
            hardware_id: &old.hardware_id,
            mode: old.mode,
            dir: &dir,
            primary_fingerprint: &primary_fingerprint,
        },
    );
    crate::run_ok(&mut init, ROW_LIMIT);
    vehicle.start_secondary(0, &[]);
    Ok(())
}

/// Tampers with the file the Image repository serves for `name` (in place, so the stored
/// blob it is linked to changes too): a kilobyte appended, or its middle byte flipped.
/// Returns the file and its original bytes.
fn tamper(
    fleet: &Fleet,
    name: &str,
    longer: bool,
) -> Result<(std::path::PathBuf, Vec<u8>), String> {
    let dir = fleet.path("repo/targets");
    let suffix = format!(".{name}");
    let path = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&suffix))
        .ok_or_else(|| format!("no served file for {name} in {}", dir.display()))?;
    let original = std::fs::read(&path).map_err(|e| e.to_string())?;
    let mut bad = original.clone();
    if longer {
        bad.extend_from_slice(&[0x5a; 1024]);
    } else {
        let middle = bad.len() / 2;
        bad[middle] ^= 0xff;
    }
    std::fs::write(&path, &bad).map_err(|e| e.to_string())?;
    Ok((path, original))
}

/// What the Primary last noted about `serial`'s update.
fn primary_detail(primary_dir: &std::path::Path, serial: &str) -> String {
    primary_update(primary_dir, serial)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The Primary's phase for `serial`'s update.
fn primary_phase(primary_dir: &std::path::Path, serial: &str) -> Option<String> {
    primary_update(primary_dir, serial)["phase"]
        .as_str()
        .map(str::to_string)
}

/// Rogue connections to a Secondary's own port (bypassing the Primary's link): random
/// bytes, a truncated TLS ClientHello, a plaintext HTTP/2 preface with a broken frame, and a
/// megabyte of zeros. None may take the Secondary down or disturb the transfer under way.
fn send_garbage(addr: &str) -> usize {
    let mut random = vec![0u8; 4096];
    let mut x: u32 = 0x9e37_79b9;
    for byte in &mut random {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *byte = x as u8;
    }
    let truncated_hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0xff; 64]);
    let mut accepted = 0;
    for payload in [random, truncated_hello, preface, vec![0u8; 1 << 20]] {
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            // The Secondary may close the connection before the megabyte is written.
            if stream
                .write_all(&payload[..payload.len().min(4096)])
                .is_ok()
            {
                accepted += 1;
            }
            let _ = stream.write_all(&payload[payload.len().min(4096)..]);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
    accepted
}

/// The Primary's record of `serial`'s update (`updates[serial]` of its state file), or null.
fn primary_update(primary_dir: &std::path::Path, serial: &str) -> Value {
    std::fs::read(primary_dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| v["updates"][serial].clone())
        .unwrap_or(Value::Null)
}

/// The Primary's delivery attempts for `serial`.
fn attempts(primary_dir: &std::path::Path, serial: &str) -> u64 {
    primary_update(primary_dir, serial)["attempts"]
        .as_u64()
        .unwrap_or(0)
}

/// How many events of `kind` vehicle `vin` has (security events only when `security`).
fn event_count(fleet: &Fleet, vin: &str, security: bool, kind: &str) -> usize {
    fleet
        .events(vin, security)
        .iter()
        .filter(|e| e["kind"] == kind)
        .count()
}

/// Waits (bounded) for an event of `kind` about vehicle `vin` (security events only when
/// `security`).
fn event_seen(fleet: &Fleet, vin: &str, security: bool, kind: &str) -> bool {
    wait_until(ROW_LIMIT, || {
        fleet
            .events(vin, security)
            .iter()
            .any(|e| e["kind"] == kind)
    })
}

fn judge(fleet: &Fleet, vins: &[&str], target: &str, expect: Expect) -> Observed {
    let mut others_installed = 0;
    let mut problems = Vec::new();
    let mut target_seen = String::new();
    for vin in vins {
        let installed: std::collections::BTreeMap<String, Option<String>> =
            fleet.installed(vin).into_iter().collect();
        for entry in fleet.assignments(vin) {
            let serial = entry["ecu_serial"].as_str().unwrap_or_default();
            let status = entry["status"].as_str().unwrap_or_default();
            let detail = entry["detail"].as_str().unwrap_or_default();
            let filename = entry["filename"].as_str().unwrap_or_default();
            let running = installed.get(serial).cloned().flatten().unwrap_or_default();
            if serial == target {
                target_seen = match status {
                    "installed" if detail.is_empty() => format!("{serial} installed {running}"),
                    "installed" => format!("{serial} installed {running} ({detail})"),
                    _ if running.is_empty() => {
                        format!("{serial} {status} ({detail}), never reported an image")
                    }
                    _ => format!("{serial} {status} ({detail}), still runs {running}"),
                };
                let ok = match expect {
                    Expect::Installed => status == "installed" && running == filename,
                    Expect::Superseded if filename.ends_with("-next.bin") => {
                        status == "installed" && running == filename
                    }
                    Expect::Superseded => status == "cancelled" && running != filename,
                    // Never reached, it may never have reported: the Director then shows
                    // no image for it, as it knows none.
                    Expect::Unreached | Expect::Reported(_) => {
                        !final_status(&entry) && running != filename
                    }
                    Expect::Failed(word) => {
                        status == "failed"
                            && detail.contains(word)
                            && running != filename
                            && !running.is_empty()
                    }
                    Expect::Cancelled => {
                        status == "cancelled"
                            && detail.contains("the ECU abandoned it")
                            && running != filename
                            && !running.is_empty()
                    }
                    Expect::InstalledDespiteCancel => {
                        status == "installed"
                            && detail.contains("came too late")
                            && running == filename
                    }
                };
                if !ok {
                    problems.push(target_seen.clone());
                }
            } else if status == "installed" && running == filename {
                others_installed += 1;
            } else {
                problems.push(format!("{serial} {status} ({detail}), runs {running}"));
            }
        }
    }
    let text = format!("{target_seen}; {others_installed} other ECU(s) updated");
    if problems.is_empty() {
        Ok(text)
    } else {
        Err(format!("{text}; wrong: {}", problems.join("; ")))
    }
}

/// Runs every row (or those whose name contains `only`), printing each as it ends; whether
/// all held.
pub fn run(out: &mut dyn Write, rig: Rig, only: Option<&str>) -> std::io::Result<bool> {
    writeln!(
        out,
        "HIL fault matrix: {} vehicle(s) x (1 Primary + {} Secondaries) per row; the fault hits \
         the first Secondary of the first vehicle.",
        rig.vehicles, rig.secondaries
    )?;
    let mut fleet = Fleet::start();
    writeln!(
        out,
        "Director {}, Image repository {}",
        fleet.director_url, fleet.image_url
    )?;
    let mut outcomes = Vec::new();
    for (i, row) in rows().into_iter().enumerate() {
        if only.is_some_and(|o| !row.name.contains(o)) {
            continue;
        }
        let outcome = run_row(&mut fleet, rig, i + 1, row);
        writeln!(
            out,
            "{} row {:>5} {:<56} expected: {:<28} observed: {} ({:.1} s)",
            if outcome.holds { "HOLDS " } else { "FAILS " },
            row.matrix,
            row.name,
            match row.expect {
                Expect::Installed => "installed".to_string(),
                Expect::Unreached => "not reached, old image".to_string(),
                Expect::Superseded => "first cancelled, second installed".to_string(),
                Expect::Reported(kind) => format!("{kind} reported, old image"),
                Expect::Failed(word) => format!("failed ({word}), old image"),
                Expect::Cancelled => "cancelled, old image".to_string(),
                Expect::InstalledDespiteCancel => "installed, cancel too late".to_string(),
            },
            outcome.observed,
            outcome.seconds
        )?;
        outcomes.push(outcome);
    }
    let held = outcomes.iter().filter(|o| o.holds).count();
    if only.is_none() {
        for (matrix, why) in NOT_RUN {
            writeln!(out, "NOT RUN row {matrix:>5} {why}")?;
        }
    }
    writeln!(out, "{held} of {} rows hold", outcomes.len())?;
    Ok(held == outcomes.len())
}

/// Rows of the matrix this command does not run, and why.
pub const NOT_RUN: &[(&str, &str)] = &[
    (
        "5",
        "metadata refused at the Secondary (expired, bad signature, lower version, Director \
         and Image repository disagreeing, wrong hardware id, lower release counter): the \
         Director refuses to sign such an assignment, so against running processes each arises \
         only from a compromised repository or link; `fleet-sim attacks` runs them (rollback of \
         metadata and of a release counter, freeze, repository_mismatch, wrong_hardware, \
         arbitrary software signed by the wrong keys)",
    ),
    (
        "31",
        "no events stream to break: the protocol has none; the Primary polls each result by \
         correlation id and the Secondary keeps it until acknowledged (rows 29, 32 and 33)",
    ),
];
