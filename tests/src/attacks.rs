//! The attack suite: every threat of the Uptane threat model attempted against the running
//! system. One fleet (real Director and Image repository processes), a vehicle (a Primary and
//! two Secondaries, one in full and one in partial verification) whose Primary reaches each
//! repository through a man in the middle ([`Mitm`]) and each Secondary through a link the
//! attacker can take over ([`ForgingLink`]), and a second vehicle whose metadata the attacker
//! replays. Keys are stolen from the servers' directories as an intruder would.
//!
//! Each scenario checks that nothing unauthorized is installed and every ECU still runs its
//! previous image, that the attack is detected and reported with its kind (the Director
//! records it as a security event the operator sees), and that the vehicle updates normally
//! once the attack stops.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use uptane_core::metadata::{TargetFile, Targets};
use uptane_core::time::UtcTime;
use uptane_core::uptane::director_target_custom;

use crate::demo::print_rows;
use crate::forge::{
    ForgingLink, ReportForgery, RoleKeys, forge_set, resign_bumped, signed_part, steal_key,
    targets_with, version_of,
};
use crate::mitm::{Mitm, Tamper};

mod exhaustion;
mod keys;
mod time;
mod transport;
use crate::sim::{Fleet, Mode, SimVehicle, VehicleSpec, wait_until};
use crate::{bin, blocking, run};

/// The attacked vehicle.
pub const VIN: &str = "ATTACK00000000001";
/// The vehicle whose metadata is replayed to it.
pub const OTHER_VIN: &str = "ATTACK00000000002";

/// The system under attack.
#[derive(Debug)]
pub struct World {
    /// The attacked vehicle.
    pub car: SimVehicle,
    /// Another vehicle of the fleet.
    pub other: SimVehicle,
    /// The man in the middle between the car and the Director.
    pub director: Mitm,
    /// The man in the middle between the car and the Image repository.
    pub images: Mitm,
    /// The servers.
    pub fleet: Fleet,
    release: u64,
}

fn image(seed: u64, ecu: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((i as u64).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(97) ^ ecu as u64) as u8
        })
        .collect()
}

fn now() -> UtcTime {
    std::time::SystemTime::now().into()
}

fn later() -> UtcTime {
    now() + chrono::Duration::days(1)
}

impl World {
    /// Starts the fleet and both vehicles, and brings the car to a first release.
    pub fn start() -> Result<Self, String> {
        // Short-lived Image repository timestamps, so that a freeze shows within seconds.
        let fleet = Fleet::start_with(&[
            "--timestamp-lifetime-secs",
            "12",
            "--renew-margin-secs",
            "6",
            "--renew-interval-secs",
            "1",
        ]);
        let mut fleet = fleet;
        fleet.publish_through_server();
        let certificate = fleet.misissued_server_certificate();
        let director = Mitm::start(&fleet.director_url, &certificate, &fleet.ca_cert)
            .map_err(|e| e.to_string())?;
        let images = Mitm::start(&fleet.image_url, &certificate, &fleet.ca_cert)
            .map_err(|e| e.to_string())?;
        let mut car = SimVehicle::provision(
            &fleet,
            &VehicleSpec {
                vin: VIN.into(),
                single_bank: Vec::new(),
                secondaries: vec![
                    ("BRAKE".into(), "hw-brake".into(), Mode::Full),
                    ("RADIO".into(), "hw-radio".into(), Mode::Partial),
                ],
            },
        );
        // The men in the middle hold a server certificate the car trusts but not the car's
        // TLS key, so both vehicles authenticate by credential alone (a bound certificate
        // would stop them at the Director: tests/tls.rs); the Uptane checks are what is
        // tested here.
        car.use_credential_only(&fleet)?;
        car.set_director_url(&director.url);
        car.set_image_url(&images.url);
        car.set_primary_flags(PRIMARY_FLAGS);
        let other = SimVehicle::provision(
            &fleet,
            &VehicleSpec {
                vin: OTHER_VIN.into(),
                single_bank: Vec::new(),
                secondaries: Vec::new(),
            },
        );
        other.use_credential_only(&fleet)?;
        fleet.publish("brake-old.bin", "hw-brake", 1, &image(999, 1, 20_000));
        let mut world = Self {
            car,
            other,
            director,
            images,
            fleet,
            release: 0,
        };
        world.release(&[0, 1, 2]);
        world.settle()?;
        Ok(world)
    }

    /// The car's ECUs: serial and hardware id, the Primary first.
    pub fn ecus(&self) -> Vec<(String, String)> {
        std::iter::once((
            self.car.primary_serial.clone(),
            self.car.primary_hardware_id.clone(),
        ))
        .chain(
            self.car
                .secondaries
                .iter()
                .map(|s| (s.serial.clone(), s.hardware_id.clone())),
        )
        .collect()
    }

    /// Publishes a new release for the ECUs at `which` (0 is the Primary) and assigns it to
    /// the car; returns (serial, file name, bytes) per ECU.
    pub fn release(&mut self, which: &[usize]) -> Vec<(String, String, Vec<u8>)> {
        self.release += 1;
        let ecus = self.ecus();
        let mut out = Vec::new();
        for &i in which {
            let (serial, hardware_id) = &ecus[i];
            let name = format!("{hardware_id}-r{}.bin", self.release);
            let bytes = image(self.release, i, 30_000);
            self.fleet
                .publish(&name, hardware_id, 10 + self.release, &bytes);
            self.fleet.assign(&name, &[VIN]);
            out.push((serial.clone(), name, bytes));
        }
        out
    }

    /// The Director URL the car uses (its man in the middle).
    fn car_director_url(&self) -> String {
        self.director.url.clone()
    }

    /// The Image repository URL the car uses (its man in the middle).
    fn car_image_url(&self) -> String {
        self.images.url.clone()
    }

    /// One cycle of the car's Primary.
    pub fn cycle(&self) -> (i32, String) {
        self.car.once()
    }

    /// What the Director records as installed on each of the car's ECUs.
    pub fn installed(&self) -> BTreeMap<String, String> {
        self.fleet
            .installed(VIN)
            .into_iter()
            .map(|(s, i)| (s, i.unwrap_or_default()))
            .collect()
    }

    /// The largest event id so far.
    pub fn last_event(&self) -> i64 {
        self.fleet
            .events(VIN, false)
            .iter()
            .filter_map(|e| e["id"].as_i64())
            .max()
            .unwrap_or(0)
    }

    /// Security events for the car after event `after`: their kinds.
    pub fn security_events_since(&self, after: i64) -> Vec<String> {
        self.fleet
            .events(VIN, true)
            .iter()
            .filter(|e| e["id"].as_i64().unwrap_or(0) > after)
            .filter_map(|e| e["kind"].as_str().map(String::from))
            .collect()
    }

    /// The attacks the security events of `kind` after `after` name.
    pub fn event_attacks_since(&self, after: i64, kind: &str) -> Vec<String> {
        self.fleet
            .events(VIN, true)
            .iter()
            .filter(|e| e["id"].as_i64().unwrap_or(0) > after && e["kind"] == kind)
            .filter_map(|e| e["attack"].as_str().map(String::from))
            .collect()
    }

    /// Whether the newest assignment entry of every ECU is installed.
    pub fn up_to_date(&self) -> bool {
        let mut newest: BTreeMap<String, String> = BTreeMap::new();
        for entry in self.fleet.assignments(VIN) {
            let serial = entry["ecu_serial"].as_str().unwrap_or_default().to_string();
            newest
                .entry(serial)
                .or_insert_with(|| entry["status"].as_str().unwrap_or_default().to_string());
        }
        !newest.is_empty() && newest.values().all(|s| s == "installed")
    }

    /// Runs cycles (at most four) until every ECU runs its newest assignment.
    pub fn settle(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..4 {
            let (_, summary) = self.cycle();
            last = summary;
            if self.up_to_date() {
                return Ok(());
            }
        }
        Err(format!("the car did not settle: {last}"))
    }

    /// Stops every attack, then checks that the car takes a new release normally (a second
    /// release when metadata the attacker had signed with stolen keys still ranks higher).
    pub fn recover(&mut self) -> Result<String, String> {
        self.director.clear();
        self.images.clear();
        for s in &self.car.secondaries {
            s.link.set_target(&s.real_addr());
        }
        let mut last = String::new();
        for _ in 0..3 {
            let released = self.release(&[0, 1, 2]);
            match self.settle() {
                Ok(()) => {
                    let installed = self.installed();
                    if released.iter().all(|(s, n, _)| installed.get(s) == Some(n)) {
                        return Ok("then updated normally".into());
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(format!("no recovery after the attack stopped: {last}"))
    }

    /// The Director's online keys (an intruder on the Director's host).
    pub fn director_keys(&self) -> RoleKeys {
        let key = |role: &str| steal_key(&self.fleet.path(&format!("director/keys/{role}.pem")));
        RoleKeys {
            targets: key("targets"),
            snapshot: key("snapshot"),
            timestamp: key("timestamp"),
        }
    }

    /// The Image repository's keys: the online snapshot and timestamp keys, and (an
    /// intruder in the offline key store) the targets key.
    pub fn image_keys(&self) -> RoleKeys {
        let online = |role: &str| steal_key(&self.fleet.path(&format!("repo/keys/{role}.pem")));
        let offline = std::fs::read_dir(self.fleet.path("repo-keys"))
            .ok()
            .and_then(|d| {
                d.flatten().map(|e| e.path()).find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("targets"))
                })
            })
            .expect("an offline targets key");
        RoleKeys {
            targets: steal_key(&offline),
            snapshot: online("snapshot"),
            timestamp: online("timestamp"),
        }
    }

    /// The newest metadata file the car was served, by path suffix.
    pub fn latest(&self, mitm: &Mitm, suffix: &str) -> Vec<u8> {
        mitm.seen(suffix).pop().unwrap_or_default()
    }

    /// Serves a forged set in place of a repository's top-level metadata.
    fn serve_forged(&self, mitm: &Mitm, set: &crate::forge::ForgedSet) {
        mitm.tamper("/timestamp.json", Tamper::Replace(set.timestamp.clone()));
        mitm.tamper(
            &format!("/{}.snapshot.json", set.snapshot.0),
            Tamper::Replace(set.snapshot.1.clone()),
        );
        mitm.tamper(
            &format!("/{}.targets.json", set.targets.0),
            Tamper::Replace(set.targets.1.clone()),
        );
    }

    /// Serves Director metadata signed with the stolen Director keys that assigns the brake
    /// ECU `name` (`bytes`, release counter `counter`).
    fn assign_to_brake_as_director(&self, name: &str, bytes: &[u8], counter: u64) {
        self.assign_to_brake_with(&self.director_keys(), name, bytes, counter);
    }

    /// The same with Director keys stolen earlier.
    fn assign_to_brake_with(&self, keys: &RoleKeys, name: &str, bytes: &[u8], counter: u64) {
        let brake = self.ecus()[1].0.clone();
        let set = self.forge_director(keys, &[(name, bytes, &brake, "hw-brake", counter)]);
        self.serve_forged(&self.director, &set);
    }

    /// Rotates the Image repository's timestamp key, as its operator would.
    fn rotate_timestamp_key(&self) -> Result<String, String> {
        run_ok_cmd(&[
            "rotate-online",
            "--repo",
            &self.fleet.path("repo").display().to_string(),
            "--offline-keys",
            &self.fleet.path("repo-keys").display().to_string(),
            "--role",
            "timestamp",
        ])
    }

    /// Director metadata for the car, signed with the stolen Director keys, assigning
    /// `entries` (file name, bytes, ECU serial, hardware id, release counter).
    fn forge_director(
        &self,
        keys: &RoleKeys,
        entries: &[(&str, &[u8], &str, &str, u64)],
    ) -> crate::forge::ForgedSet {
        let current: Targets = signed_part(&self.latest(&self.director, ".targets.json"));
        let listed = entries
            .iter()
            .map(|(name, bytes, serial, hardware_id, counter)| {
                (
                    name.to_string(),
                    TargetFile {
                        length: bytes.len() as u64,
                        hashes: uptane_core::hash::standard_hashes(bytes),
                        custom: Some(director_target_custom(serial, hardware_id, *counter).into()),
                    },
                )
            })
            .collect();
        let targets = targets_with(&current, current.common.version + 1, later(), listed);
        forge_set(
            keys,
            &targets,
            &self.latest(&self.director, "/timestamp.json"),
            &self.latest(&self.director, ".snapshot.json"),
            later(),
        )
    }
}

/// One attack.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// The attack.
    pub name: &'static str,
    /// What the attacker controls.
    pub controlled: &'static str,
    /// What must happen.
    pub expected: &'static str,
    run: fn(&mut World) -> Result<String, String>,
}

/// A scenario's result.
#[derive(Debug, Clone)]
pub struct AttackRow {
    /// The scenario.
    pub scenario: Scenario,
    /// What happened.
    pub observed: String,
    /// Whether the expectation held.
    pub defended: bool,
    /// Seconds taken.
    pub seconds: f64,
}

/// Whether the Director recorded a security event `event` for the car after event `since`.
fn expect_event(world: &World, since: i64, event: &str) -> Result<(), String> {
    let events = world.security_events_since(since);
    if events.iter().any(|e| e == event) {
        Ok(())
    } else {
        Err(format!("no {event} security event; got {events:?}"))
    }
}

/// The standard check after an attacked cycle: nothing installed anywhere, and the Director
/// recorded the attack of kind `kind` reported by the vehicle.
fn refused(
    world: &World,
    before: &BTreeMap<String, String>,
    since: i64,
    event: &str,
) -> Result<String, String> {
    let after = world.installed();
    if &after != before {
        return Err(format!("installed changed: {before:?} -> {after:?}"));
    }
    expect_event(world, since, event)?;
    Ok(format!("nothing installed; Director event {event}"))
}

/// The car's Primary flags: minimum speeds the attacks on speed can trip within a cycle.
const PRIMARY_FLAGS: &[&str] = &[
    "--min-download-bytes-per-sec",
    "50000",
    "--download-grace-ms",
    "500",
];

/// The link to the first Secondary delivers a chunk every 3 s (the Secondary's own link
/// knob), far below the 64 KiB/s the Primary is set to expect after 2 s.
fn slow_secondary_link(w: &mut World) -> Result<String, String> {
    let slow: Vec<&str> = PRIMARY_FLAGS
        .iter()
        .copied()
        .chain([
            "--min-upload-bytes-per-sec",
            "65536",
            "--upload-grace-ms",
            "2000",
        ])
        .collect();
    w.car.set_primary_flags(&slow);
    w.car.start_secondary(0, &["--fault-slow-link-ms", "3000"]);
    let before = w.installed();
    let since = w.last_event();
    w.release(&[1]);
    let (code, summary) = w.cycle();
    w.car.start_secondary(0, &[]);
    w.car.set_primary_flags(PRIMARY_FLAGS);
    let verdict = refused(w, &before, since, "attack_reported:slow_retrieval")
        .map_err(|e| format!("{e} (cycle {code}: {summary})"))?;
    Ok(format!("{verdict}; {}", w.recover()?))
}

/// Runs an attacked cycle after `stage`, checks [`refused`], then recovery.
fn attacked(
    world: &mut World,
    stage: impl FnOnce(&mut World),
    kind: &str,
) -> Result<String, String> {
    let before = world.installed();
    let since = world.last_event();
    stage(world);
    let (code, summary) = world.cycle();
    let verdict = refused(world, &before, since, &format!("attack_reported:{kind}"))
        .map_err(|e| format!("{e} (cycle {code}: {summary})"))?;
    let recovered = world.recover()?;
    Ok(format!("{verdict}; {recovered}"))
}

fn scenario(
    name: &'static str,
    controlled: &'static str,
    expected: &'static str,
    run: fn(&mut World) -> Result<String, String>,
) -> Scenario {
    Scenario {
        name,
        controlled,
        expected,
        run,
    }
}

/// Every scenario, in the order run.
pub fn scenarios() -> Vec<Scenario> {
    let mut all = uptane_scenarios();
    all.extend(transport::scenarios());
    all.extend(keys::scenarios());
    all.extend(time::scenarios());
    all.extend(exhaustion::scenarios());
    all
}

/// The attacks on Uptane's checks.
fn uptane_scenarios() -> Vec<Scenario> {
    vec![
        scenario(
            "replay of another vehicle's Director metadata",
            "network; another vehicle's traffic",
            "refused (wrong_vehicle)",
            |w| {
                // Raise the other vehicle's versions above the car's, so only the VIN differs.
                let credential = std::fs::read_to_string(w.other.primary_dir.join("credential"))
                    .map_err(|e| e.to_string())?;
                let base = format!("{}/vehicles/{OTHER_VIN}/metadata", w.fleet.director_url);
                let trusted = version_of(
                    &std::fs::read(w.car.primary_dir.join("metadata/director/timestamp.json"))
                        .map_err(|e| e.to_string())?,
                );
                let gateway = w.ecus()[0].1.clone();
                let mut fetched = None;
                for round in 0..(trusted + 3) {
                    let name = format!("gw-other-{round}.bin");
                    w.fleet
                        .publish(&name, &gateway, 1 + round, &image(round, 7, 1000));
                    w.fleet.assign(&name, &[OTHER_VIN]);
                    let set = fetch_set(&w.fleet.ca_cert, &base, &credential)?;
                    let higher = version_of(&set.0) > trusted + 1;
                    fetched = Some(set);
                    if higher {
                        break;
                    }
                }
                let (timestamp, snapshot, targets) = fetched.ok_or("nothing fetched")?;
                let kept = |w: &World| -> Result<u64, String> {
                    Ok(version_of(
                        &std::fs::read(w.car.primary_dir.join("metadata/director/timestamp.json"))
                            .map_err(|e| e.to_string())?,
                    ))
                };
                let before = w.installed();
                let since = w.last_event();
                w.director
                    .tamper("/timestamp.json", Tamper::Replace(timestamp));
                w.director
                    .tamper(".snapshot.json", Tamper::Replace(snapshot));
                w.director.tamper(".targets.json", Tamper::Replace(targets));
                w.release(&[1]);
                let (code, summary) = w.cycle();
                let verdict = refused(w, &before, since, "attack_reported:wrong_vehicle")
                    .map_err(|e| format!("{e} (cycle {code}: {summary})"))?;
                // Refused metadata leaves no trace: kept, the other vehicle's higher versions
                // would be the rollback reference, and every genuine timestamp after refused.
                let after = kept(w)?;
                if after != trusted {
                    return Err(format!(
                        "the car kept timestamp version {after} (its own was {trusted})"
                    ));
                }
                Ok(format!(
                    "{verdict}; timestamp version {after} kept; {}",
                    w.recover()?
                ))
            },
        ),
        scenario(
            "arbitrary software: unsigned metadata",
            "network (Director side)",
            "refused (arbitrary_software)",
            |w| {
                attacked(
                    w,
                    |w| {
                        let ts = resign_bumped(&w.latest(&w.director, "/timestamp.json"), 1, &[]);
                        w.director.tamper("/timestamp.json", Tamper::Replace(ts));
                    },
                    "arbitrary_software",
                )
            },
        ),
        scenario(
            "arbitrary software: wrongly signed metadata",
            "network; the attacker's own key",
            "refused (arbitrary_software)",
            |w| {
                attacked(
                    w,
                    |w| {
                        let own = uptane_core::crypto::SigningKey::from_seed([0xa7; 32]);
                        let ts =
                            resign_bumped(&w.latest(&w.director, "/timestamp.json"), 1, &[&own]);
                        w.director.tamper("/timestamp.json", Tamper::Replace(ts));
                    },
                    "arbitrary_software",
                )
            },
        ),
        scenario(
            "arbitrary software: metadata signed by a revoked key",
            "the Image repository's old timestamp key, revoked by rotation",
            "refused (arbitrary_software)",
            |w| {
                let old = w.image_keys().timestamp;
                w.rotate_timestamp_key()?;
                w.release(&[1]);
                w.settle()?;
                attacked(
                    w,
                    |w| {
                        w.release(&[1]);
                        let ts = resign_bumped(&w.latest(&w.images, "/timestamp.json"), 1, &[&old]);
                        w.images.tamper("/timestamp.json", Tamper::Replace(ts));
                    },
                    "arbitrary_software",
                )
            },
        ),
        scenario(
            "rollback: older metadata",
            "network; recorded earlier traffic",
            "refused (rollback)",
            |w| {
                attacked(
                    w,
                    |w| {
                        let old = w
                            .director
                            .seen("/timestamp.json")
                            .into_iter()
                            .next()
                            .unwrap_or_default();
                        w.director.tamper("/timestamp.json", Tamper::Replace(old));
                        w.release(&[1]);
                    },
                    "rollback",
                )
            },
        ),
        scenario(
            "rollback: an older image with a lower release counter",
            "the Director's online keys",
            "refused (rollback)",
            |w| {
                attacked(
                    w,
                    |w| w.assign_to_brake_as_director("brake-old.bin", &image(999, 1, 20_000), 1),
                    "rollback",
                )
            },
        ),
        scenario(
            "freeze: a replayed timestamp, accepted until it expires and no longer",
            "network; recorded earlier traffic",
            "accepted while valid; then refused (freeze)",
            |w| {
                w.release(&[2]);
                // A timestamp with more than 10 of its 12 s left: one as old as the renewal lets
                // it be (6 s left, `--renew-margin-secs`) could expire while the car settles on
                // a loaded machine, and the row would fail as a refusal while valid.
                let url = format!("{}/metadata/timestamp.json", w.images.url);
                let mut frozen = (Vec::new(), now());
                let fresh = wait_until(Duration::from_secs(30), || {
                    let Ok(bytes) = get(&w.fleet.ca_cert, &url, None) else {
                        return false;
                    };
                    let expires = signed_part::<uptane_core::metadata::Timestamp>(&bytes)
                        .common
                        .expires;
                    frozen = (bytes, expires);
                    expires > now() + chrono::Duration::seconds(10)
                });
                if !fresh {
                    return Err("no timestamp with more than 10 s left".into());
                }
                let (frozen, expires) = frozen;
                w.images.tamper("/timestamp.json", Tamper::Replace(frozen));
                // While it is valid, the replayed timestamp is accepted: the update it covers installs.
                w.settle()
                    .map_err(|e| format!("a valid replayed timestamp was refused: {e}"))?;
                if !wait_until(Duration::from_secs(30), || now() > expires) {
                    return Err("the timestamp never expired".into());
                }
                let result = attacked(
                    w,
                    |w| {
                        w.release(&[1]);
                    },
                    "freeze",
                )?;
                Ok(format!(
                    "accepted until {}; {result}",
                    uptane_core::time::format_expires(&expires)
                ))
            },
        ),
        scenario(
            "endless data: metadata",
            "network (Director side)",
            "stopped at the limit (endless_data)",
            |w| {
                attacked(
                    w,
                    |w| w.director.tamper("/timestamp.json", Tamper::Endless),
                    "endless_data",
                )
            },
        ),
        scenario(
            "endless data: an image",
            "network (Image repository side)",
            "stopped at the length (endless_data)",
            |w| {
                attacked(
                    w,
                    |w| {
                        for (_, name, _) in w.release(&[1]) {
                            w.images.tamper(&name, Tamper::Endless);
                        }
                    },
                    "endless_data",
                )
            },
        ),
        scenario(
            "slow retrieval",
            "network (Image repository side)",
            "abandoned below the minimum speed (slow_retrieval)",
            |w| {
                attacked(
                    w,
                    |w| {
                        for (_, name, _) in w.release(&[1]) {
                            w.images
                                .tamper(&name, Tamper::Trickle(Duration::from_millis(20)));
                        }
                    },
                    "slow_retrieval",
                )
            },
        ),
        scenario(
            "slow retrieval on the vehicle network (a Secondary's link)",
            "the link to a Secondary",
            "abandoned below the minimum transfer speed (slow_retrieval)",
            slow_secondary_link,
        ),
        scenario(
            "drop-request",
            "network (Director side)",
            "nothing installed (drop_request)",
            |w| {
                attacked(
                    w,
                    |w| {
                        w.release(&[1]);
                        w.director.tamper("/timestamp.json", Tamper::Status(404));
                    },
                    "drop_request",
                )
            },
        ),
        scenario(
            "mix-and-match: metadata from different snapshots",
            "network; recorded earlier traffic",
            "refused (mix_and_match)",
            |w| {
                attacked(
                    w,
                    |w| {
                        let old = w
                            .director
                            .seen(".snapshot.json")
                            .into_iter()
                            .next()
                            .unwrap_or_default();
                        w.release(&[1]);
                        w.director.tamper(".snapshot.json", Tamper::Replace(old));
                    },
                    "mix_and_match",
                )
            },
        ),
        scenario(
            "partial bundle: only some ECUs' images delivered",
            "network (Image repository side)",
            "the withheld ECU keeps its image (drop_request); the others update",
            |w| {
                let before = w.installed();
                let since = w.last_event();
                let released = w.release(&[1, 2]);
                let (withheld, name, _) = released[1].clone();
                w.images.tamper(&name, Tamper::Status(404));
                w.cycle();
                let after = w.installed();
                if after.get(&withheld) != before.get(&withheld) {
                    return Err(format!("{withheld} changed to {:?}", after.get(&withheld)));
                }
                if after.get(&released[0].0) != Some(&released[0].1) {
                    return Err(format!("{} did not update: {after:?}", released[0].0));
                }
                expect_event(w, since, "attack_reported:drop_request")?;
                Ok(format!(
                    "{withheld} kept its image; Director event attack_reported:drop_request; {}",
                    w.recover()?
                ))
            },
        ),
        scenario(
            "mixed bundles: one ECU sent another ECU's image",
            "network (Image repository side)",
            "refused (arbitrary_software); the other ECU updates",
            |w| {
                let before = w.installed();
                let since = w.last_event();
                let released = w.release(&[1, 0]);
                w.images
                    .tamper(&released[0].1, Tamper::Replace(released[1].2.clone()));
                w.cycle();
                let after = w.installed();
                if after.get(&released[0].0) != before.get(&released[0].0) {
                    return Err(format!("{} changed: {after:?}", released[0].0));
                }
                expect_event(w, since, "attack_reported:arbitrary_software")?;
                Ok(format!(
                    "{} kept its image; Director event attack_reported:arbitrary_software; {}",
                    released[0].0,
                    w.recover()?
                ))
            },
        ),
        scenario(
            "replay of a vehicle version manifest",
            "network; recorded earlier traffic (with the vehicle's credential)",
            "refused by the Director (manifest_refused, replay)",
            |w| {
                let manifest = w
                    .director
                    .seen("/manifest")
                    .pop()
                    .ok_or("no manifest recorded")?;
                let verdict = replay_manifest(w, manifest, "replay")?;
                Ok(format!("{verdict}; {}", w.recover()?))
            },
        ),
        scenario(
            "replay of a vehicle version manifest once the retention sweep removed its nonces",
            "network; recorded earlier traffic (with the vehicle's credential), kept past the retention period",
            "refused by the Director: replay while its nonces are kept, then on the ECUs' report counters (manifest_refused, rollback)",
            manifest_replayed_after_sweep,
        ),
        scenario(
            "replay of an ECU version report",
            "the Primary-Secondary link; recorded earlier traffic",
            "refused by the Primary (replay)",
            |w| forged_report(w, true),
        ),
        scenario(
            "forged ECU version report",
            "the Primary-Secondary link",
            "refused by the Primary (arbitrary_software)",
            |w| forged_report(w, false),
        ),
        scenario(
            "a compromised ECU key (a documented limit)",
            "an ECU's private key and its link",
            "that ECU's report is believed; nothing installs anywhere; corrected by its next true report",
            |w| {
                let before = w.installed();
                let serial = w.car.secondaries[0].serial.clone();
                let key = steal_key(&w.car.secondaries[0].dir.join("ecu.pem"));
                let real = w.car.secondaries[0].real_addr();
                let (fake, link) = ForgingLink::start(&real, &w.car.link_keys(0));
                link.forge(ReportForgery::Resign(
                    Box::new(key),
                    "claimed-by-attacker.bin".into(),
                ));
                w.car.secondaries[0].link.set_target(&fake);
                w.cycle();
                w.car.secondaries[0].link.set_target(&real);
                let after = w.installed();
                if after.get(&serial).map(String::as_str) != Some("claimed-by-attacker.bin") {
                    return Err(format!("the forged report was not believed: {after:?}"));
                }
                for (ecu, image) in &before {
                    if ecu != &serial && after.get(ecu) != Some(image) {
                        return Err(format!("{ecu} changed: {after:?}"));
                    }
                }
                w.cycle();
                if w.installed().get(&serial) != before.get(&serial) {
                    return Err("the next true report did not correct the record".into());
                }
                Ok(format!(
                    "the Director believed {serial} runs claimed-by-attacker.bin until its next true report; nothing installed; {}",
                    w.recover()?
                ))
            },
        ),
        scenario(
            "a Secondary fed an image for another hardware id",
            "the Primary-Secondary link and the Director's online keys",
            "refused by the Secondary (wrong_hardware)",
            |w| {
                attacked(
                    w,
                    |w| {
                        let brake = w.car.secondaries[0].real_addr();
                        let serial = w.car.secondaries[0].serial.clone();
                        let radio_image = image(4242, 2, 10_000);
                        let set = w.forge_director(
                            &w.director_keys(),
                            &[("radio-evil.bin", &radio_image, &serial, "hw-radio", 50)],
                        );
                        let bundle = proto::v2::PutMetadataRequest {
                            correlation_id: "attacker".into(),
                            director_timestamp: set.timestamp.clone(),
                            director_snapshot: set.snapshot.1.clone(),
                            director_targets: set.targets.1.clone(),
                            image_timestamp: w.latest(&w.images, "/timestamp.json"),
                            image_snapshot: w.latest(&w.images, ".snapshot.json"),
                            image_targets: w.latest(&w.images, ".targets.json"),
                            ..Default::default()
                        };
                        let _ = feed_secondary(&brake, &w.car.link_keys(0), bundle);
                    },
                    "wrong_hardware",
                )
            },
        ),
        scenario(
            "fast-forward attack, and recovery by rotating the key",
            "the Image repository's timestamp key",
            "rollback refused until the key is rotated; then updates",
            |w| {
                let stolen = w.image_keys().timestamp;
                w.release(&[1]);
                let current = get(
                    &w.fleet.ca_cert,
                    &format!("{}/metadata/timestamp.json", w.images.url),
                    None,
                )?;
                let forged = resign_bumped(&current, 1_000_000, &[&stolen]);
                w.images.tamper("/timestamp.json", Tamper::Replace(forged));
                w.settle()?;
                w.images.clear();
                let before = w.installed();
                let since = w.last_event();
                w.release(&[1]);
                w.cycle();
                refused(w, &before, since, "attack_reported:rollback")
                    .map_err(|e| format!("after the fast-forward: {e}"))?;
                w.rotate_timestamp_key()?;
                Ok(format!(
                    "fast-forwarded timestamp accepted, real ones then refused as rollback; after rotation: {}",
                    w.recover()?
                ))
            },
        ),
        scenario(
            "a compromised Director alone",
            "the Director's online keys",
            "refused: the Image repository does not back it (repository_mismatch)",
            |w| {
                attacked(
                    w,
                    |w| w.assign_to_brake_as_director("brake-evil.bin", &image(666, 1, 25_000), 99),
                    "repository_mismatch",
                )
            },
        ),
        scenario(
            "a target name that hides what it is (Uptane G-4)",
            "the Director's online keys",
            "refused before anything is fetched (malformed): control characters, a second Unicode spelling",
            |w| {
                let mut seen = Vec::new();
                for name in ["brake\u{1b}[2K-2.0.bin", "brake-cafe\u{301}.bin"] {
                    let verdict = attacked(
                        w,
                        |w| w.assign_to_brake_as_director(name, &image(668, 1, 25_000), 97),
                        "malformed",
                    )?;
                    seen.push(format!("{name:?}: {verdict}"));
                }
                Ok(seen.join("; "))
            },
        ),
        scenario(
            "a compromised Image repository alone",
            "the Image repository's online and offline targets keys, and its server",
            "refused: the Director did not assign it (repository_mismatch)",
            |w| {
                attacked(
                    w,
                    |w| {
                        let released = w.release(&[1]);
                        let (_, name, _) = &released[0];
                        let evil = image(667, 1, 25_000);
                        let current: Targets = signed_part(&w.latest(&w.images, ".targets.json"));
                        let mut entries: Vec<(String, TargetFile)> =
                            current.targets.clone().into_iter().collect();
                        for (path, info) in entries.iter_mut() {
                            if path == name {
                                info.length = evil.len() as u64;
                                info.hashes = uptane_core::hash::standard_hashes(&evil);
                            }
                        }
                        let targets =
                            targets_with(&current, current.common.version + 1, later(), entries);
                        let set = forge_set(
                            &w.image_keys(),
                            &targets,
                            &w.latest(&w.images, "/timestamp.json"),
                            &w.latest(&w.images, ".snapshot.json"),
                            later(),
                        );
                        w.serve_forged(&w.images, &set);
                    },
                    "repository_mismatch",
                )
            },
        ),
        scenario(
            "a compromised supplier key, limited to its delegated paths",
            "a supplier's delegated key and upload token",
            "outside its paths: refused by the Image repository; inside: refused by the vehicle (repository_mismatch)",
            supplier_compromise,
        ),
        scenario(
            "both repositories compromised (the documented limit)",
            "the Director's online keys and the Image repository's targets, snapshot and timestamp keys",
            "installed: Uptane's documented limit; recovered by a newer release",
            |w| {
                let brake = w.ecus()[1].0.clone();
                let evil = image(668, 1, 25_000);
                // Not below what the ECU runs, or the vehicle would refuse it as a rollback.
                let counter = 10 + w.release;
                let current: Targets = signed_part(&w.latest(&w.images, ".targets.json"));
                let mut entries: Vec<(String, TargetFile)> =
                    current.targets.clone().into_iter().collect();
                entries.push((
                    "brake-evil.bin".into(),
                    TargetFile {
                        length: evil.len() as u64,
                        hashes: uptane_core::hash::standard_hashes(&evil),
                        custom: Some(
                            uptane_core::uptane::image_target_custom(&["hw-brake"], counter).into(),
                        ),
                    },
                ));
                let targets = targets_with(&current, current.common.version + 1, later(), entries);
                let image_set = forge_set(
                    &w.image_keys(),
                    &targets,
                    &w.latest(&w.images, "/timestamp.json"),
                    &w.latest(&w.images, ".snapshot.json"),
                    later(),
                );
                w.serve_forged(&w.images, &image_set);
                let hash = uptane_core::hash::sha256_hex(&evil);
                w.images.tamper(
                    &format!("{hash}.brake-evil.bin"),
                    Tamper::Replace(evil.clone()),
                );
                w.images
                    .tamper("/brake-evil.bin", Tamper::Replace(evil.clone()));
                let set = w.forge_director(
                    &w.director_keys(),
                    &[("brake-evil.bin", &evil, &brake, "hw-brake", counter)],
                );
                w.serve_forged(&w.director, &set);
                let (code, summary) = w.cycle();
                let installed = w.installed();
                if installed.get(&brake).map(String::as_str) != Some("brake-evil.bin") {
                    return Err(format!(
                        "expected the documented limit (the attacker's image installs), got {installed:?} (cycle {code}: {summary})"
                    ));
                }
                // Recovery: the operator publishes a newer release (a higher release counter).
                w.director.clear();
                w.images.clear();
                Ok(format!(
                    "brake-evil.bin installed on {brake} (the limit); {}",
                    w.recover()?
                ))
            },
        ),
    ]
}

fn run_ok_cmd(args: &[&str]) -> Result<String, String> {
    let (status, out, err) = run(
        std::process::Command::new(bin("image-repo")).args(args),
        Duration::from_secs(60),
    );
    if status.success() {
        Ok(out)
    } else {
        Err(format!("image-repo {args:?}: {err}"))
    }
}

/// GETs a vehicle's timestamp, snapshot and targets with its credential.
/// Timestamp, snapshot and targets files, as served.
type MetadataFiles = (Vec<u8>, Vec<u8>, Vec<u8>);

fn fetch_set(ca: &Path, base: &str, credential: &str) -> Result<MetadataFiles, String> {
    let timestamp = get(ca, &format!("{base}/timestamp.json"), Some(credential))?;
    let ts: uptane_core::metadata::Timestamp = signed_part(&timestamp);
    let snapshot_version = ts.meta.get("snapshot.json").map_or(0, |m| m.version);
    let snapshot = get(
        ca,
        &format!("{base}/{snapshot_version}.snapshot.json"),
        Some(credential),
    )?;
    let sn: uptane_core::metadata::Snapshot = signed_part(&snapshot);
    let targets_version = sn.meta.get("targets.json").map_or(0, |m| m.version);
    let targets = get(
        ca,
        &format!("{base}/{targets_version}.targets.json"),
        Some(credential),
    )?;
    Ok((timestamp, snapshot, targets))
}

/// An HTTPS client trusting the fleet's CA (`ca`).
fn https(ca: &Path) -> Result<reqwest::Client, String> {
    service_runtime::http::ClientTls::new(Some(ca), None, false)
        .and_then(|tls| tls.reqwest())
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| e.to_string())
}

/// GETs `url` (with a vehicle credential when given); the body of a 2xx answer.
fn get(ca: &Path, url: &str, credential: Option<&str>) -> Result<Vec<u8>, String> {
    blocking(async {
        let http = https(ca)?;
        let mut request = http.get(url);
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    })
}

fn post(ca: &Path, url: &str, credential: &str, body: Vec<u8>) -> Result<u16, String> {
    blocking(async {
        let http = https(ca)?;
        let response = http
            .post(url)
            .bearer_auth(credential)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    })
}

/// Posts `manifest` (recorded earlier) to the Director with the vehicle's credential, as an
/// attacker who recorded both would: refused with HTTP 400 and a `manifest_refused` security
/// event naming `attack`.
fn replay_manifest(w: &World, manifest: Vec<u8>, attack: &str) -> Result<String, String> {
    let since = w.last_event();
    let credential =
        std::fs::read_to_string(w.car.primary_dir.join("credential")).map_err(|e| e.to_string())?;
    let status = post(
        &w.fleet.ca_cert,
        &format!("{}/vehicles/{VIN}/manifest", w.fleet.director_url),
        &credential,
        manifest,
    )?;
    if status != 400 {
        return Err(format!("the replayed manifest got HTTP {status}"));
    }
    expect_event(w, since, "manifest_refused")?;
    let attacks = w.event_attacks_since(since, "manifest_refused");
    if !attacks.iter().any(|a| a == attack) {
        return Err(format!("manifest_refused names {attacks:?}, not {attack}"));
    }
    Ok(format!(
        "HTTP 400; Director event manifest_refused ({attack})"
    ))
}

/// The Director keeps report nonces only for its retention period (docs/SECURITY.md, the
/// retention row of "Limits against resource exhaustion"); past it, a replayed report is
/// refused by its ECU's report counter, which rises with every report accepted. The first
/// manifest of the run, replayed, is refused `replay` (its nonces are kept). The period then
/// passes without waiting: the Director is restarted a day and a minute ahead
/// (`UPTANE_FAULT_CLOCK_OFFSET_SECS`) with a one-day period, sweeps as it starts (the
/// event log's cutoff a minute past the real clock), and is restarted on the real clock; the
/// same manifest replayed again is refused `rollback`.
fn manifest_replayed_after_sweep(w: &mut World) -> Result<String, String> {
    let manifest = w
        .director
        .seen("/manifest")
        .into_iter()
        .next()
        .ok_or("no manifest recorded")?;
    let kept = replay_manifest(w, manifest.clone(), "replay")?;
    let sweeps = |fleet: &Fleet| match fleet.operator(&["events", "--kind", "retention_sweep"]) {
        Value::Array(events) => events,
        _ => Vec::new(),
    };
    let before = sweeps(&w.fleet)
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .max()
        .unwrap_or(0);
    let swept =
        w.fleet
            .with_director_ahead(86_400 + 60, &[("DIRECTOR_RETENTION_DAYS", "1")], |fleet| {
                let mut swept = String::new();
                wait_until(crate::sim::LIMIT, || {
                    if let Some(event) = sweeps(fleet)
                        .into_iter()
                        .find(|e| e["id"].as_i64().unwrap_or(0) > before)
                    {
                        swept = event["detail"].as_str().unwrap_or_default().to_string();
                    }
                    !swept.is_empty()
                });
                swept
            });
    if swept.is_empty() {
        return Err("the Director a day ahead recorded no retention sweep".into());
    }
    if swept.contains(" 0 report nonces") {
        return Err(format!("the sweep removed no nonces: {swept}"));
    }
    let verdict = replay_manifest(w, manifest, "rollback")?;
    Ok(format!(
        "before the sweep: {kept}; the sweep {}; after it: {verdict}; {}",
        swept.split(" older than").next().unwrap_or(&swept),
        w.recover()?
    ))
}

/// Sends a metadata bundle straight to a Secondary, as an attacker holding its link's TLS
/// keys would.
fn feed_secondary(
    addr: &str,
    keys: &crate::forge::LinkKeys,
    bundle: proto::v2::PutMetadataRequest,
) -> Result<Value, String> {
    blocking(async {
        let mut client = crate::forge::secondary_client(addr, keys);
        let result = client
            .put_metadata(bundle)
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        Ok(
            serde_json::json!({"code": result.code, "attack": result.attack, "description": result.description}),
        )
    })
}

/// The Secondary link taken over: reports replayed (`replay`) or tampered with.
fn forged_report(w: &mut World, replay: bool) -> Result<String, String> {
    let real = w.car.secondaries[0].real_addr();
    let (fake, link) = ForgingLink::start(&real, &w.car.link_keys(0));
    w.car.secondaries[0].link.set_target(&fake);
    w.cycle();
    let recorded = link
        .seen
        .lock()
        .map(|s| s.first().cloned())
        .ok()
        .flatten()
        .ok_or("no report seen")?;
    let kind = if replay {
        "replay"
    } else {
        "arbitrary_software"
    };
    let result = attacked(
        w,
        |_| {
            link.forge(if replay {
                ReportForgery::Replay(recorded)
            } else {
                ReportForgery::Tamper("brake-claimed-by-attacker.bin".into())
            });
        },
        kind,
    );
    w.car.secondaries[0].link.set_target(&real);
    result
}

fn supplier_compromise(w: &mut World) -> Result<String, String> {
    let repo = w.fleet.path("repo").display().to_string();
    let offline = w.fleet.path("repo-keys").display().to_string();
    let key = w.fleet.path("acme.pem").display().to_string();
    run_ok_cmd(&["keygen", "--out", &key])?;
    let token = run_ok_cmd(&[
        "token", "create", "--repo", &repo, "--role", "targets", "--label", "oem",
    ])?;
    let server = w.fleet.image_url.clone();
    let ca = w.fleet.ca_cert.display().to_string();
    run_ok_cmd(&[
        "delegate",
        "--server",
        &server,
        "--ca-cert",
        &ca,
        "--token",
        token.trim(),
        "--offline-keys",
        &offline,
        "--role",
        "acme",
        "--key",
        &format!("{key}.pub.json"),
        "--path",
        "acme/*",
        "--hardware-id",
        "hw-brake",
    ])?;
    let acme = run_ok_cmd(&[
        "token", "create", "--repo", &repo, "--role", "acme", "--label", "acme",
    ])?;
    let supplier_add = |name: &str, counter: u64, bytes: &[u8]| {
        let file = w
            .fleet
            .path(&format!("supplier-{}", name.replace('/', "_")));
        std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
        run_ok_cmd(&[
            "supplier-add",
            "--server",
            &server,
            "--ca-cert",
            &ca,
            "--token",
            acme.trim(),
            "--role",
            "acme",
            "--key",
            &key,
            "--name",
            name,
            "--hardware-id",
            "hw-brake",
            "--release-counter",
            &counter.to_string(),
            &file.display().to_string(),
        ])
    };
    // Outside its paths: the Image repository refuses the upload.
    if supplier_add("brake-by-acme.bin", 200, &image(1, 1, 5000)).is_ok() {
        return Err("the Image repository accepted a supplier target outside acme/*".into());
    }
    // Inside: a legitimate release, assigned; then the attacker replaces its content.
    let legit = image(70, 1, 12_000);
    supplier_add("acme/ctl-1.bin", 100, &legit)?;
    let before = w.installed();
    let since = w.last_event();
    w.fleet.assign("acme/ctl-1.bin", &[VIN]);
    supplier_add("acme/ctl-1.bin", 100, &image(71, 1, 12_000))?;
    w.cycle();
    let verdict = refused(w, &before, since, "attack_reported:repository_mismatch")?;
    Ok(format!(
        "outside acme/*: upload refused; inside: {verdict}; {}",
        w.recover()?
    ))
}

/// Runs every scenario (or those whose name contains `only`); prints the table; whether
/// every row held.
pub fn run_all(out: &mut dyn Write, only: Option<&str>) -> std::io::Result<bool> {
    writeln!(
        out,
        "Attack suite: starting the fleet (Director, Image repository, two vehicles)."
    )?;
    let mut world = match World::start() {
        Ok(world) => world,
        Err(e) => {
            writeln!(out, "the fleet did not start: {e}")?;
            return Ok(false);
        }
    };
    let mut rows = Vec::new();
    for scenario in scenarios() {
        if only.is_some_and(|o| !scenario.name.contains(o)) {
            continue;
        }
        let started = Instant::now();
        let mut result = (scenario.run)(&mut world);
        if result.is_err() {
            // Start the next attack from a vehicle that is up to date again.
            if let Err(e) = world.recover() {
                result = result.map_err(|first| format!("{first}; {e}"));
            }
        }
        let row = AttackRow {
            scenario,
            defended: result.is_ok(),
            observed: result.unwrap_or_else(|e| e),
            seconds: started.elapsed().as_secs_f64(),
        };
        writeln!(
            out,
            "{} {} ({:.1} s): {}",
            if row.defended {
                "AS EXPECTED    "
            } else {
                "NOT AS EXPECTED"
            },
            scenario.name,
            row.seconds,
            row.observed
        )?;
        rows.push(row);
    }
    writeln!(out)?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.scenario.name.to_string(),
                r.scenario.controlled.to_string(),
                r.scenario.expected.to_string(),
                if r.defended {
                    "as expected".to_string()
                } else {
                    format!("NOT AS EXPECTED: {}", r.observed)
                },
            ]
        })
        .collect();
    print_rows(
        out,
        &["attack", "attacker controls", "expected", "observed"],
        &cells,
    )?;
    let held = rows.iter().filter(|r| r.defended).count();
    writeln!(out, "{held} of {} attacks ended as expected", rows.len())?;
    Ok(held == rows.len())
}
