//! A vehicle parked for 400 days (issue 18, `fleet-sim hil` and `tests/tests/parked.rs`):
//! while it is off, both repositories rotate their root keys several times, replace their
//! online keys, let everything expire and sign it again, and publish newer images. It then
//! comes back, walks both root chains and updates, its Secondaries (full and partial
//! verification) following; one Secondary, off since the first day, catches up from further
//! back still.
//!
//! Months pass without waiting: the servers and the administrators' commands read the clock
//! ahead (a test build's `UPTANE_FAULT_CLOCK_OFFSET_SECS`, [`Fleet::set_clock_offset_days`])
//! and so does the Primary (`--fault-clock-offset-secs`); the Secondaries take their time
//! from the Primary, as always. TLS certificates are judged by the real clock.

use std::time::Duration;

use serde_json::Value;

use crate::sim::{Fleet, SimVehicle, VehicleSpec, wait_until};

const VIN: &str = "PARKED0001";
/// Long enough for one stage of the scenario (a cycle a second).
const STAGE_LIMIT: Duration = Duration::from_secs(120);
/// A fleet whose vehicles may stand unused for months gives them credentials that outlive
/// it: the Primary renews its credential only once a third of its lifetime is left, so with
/// the default year a vehicle parked for four months may come back to an expired one, which
/// the operator re-admits with `director vehicle issue-credential` (docs/SECURITY.md,
/// "Transport and credentials").
const CREDENTIAL_LIFETIME_SECS: &str = "63072000";
/// Day the whole vehicle was last on (the Secondary `ECU1` has been off since day 0).
const LAST_ON: i64 = 120;
/// Day it comes back: 400 days later.
const BACK: i64 = LAST_ON + 400;

/// What the scenario observed: `Ok` when every ECU ended on the newest image, trusting the
/// newest roots, with no attack reported.
pub fn drive() -> Result<String, String> {
    let mut fleet = Fleet::start();
    fleet.restart_director_with(
        &[
            "--vehicle-credential-lifetime-secs",
            CREDENTIAL_LIFETIME_SECS,
        ],
        &[],
    );
    // ECU1 verifies fully, ECU2 partially.
    let mut car = SimVehicle::provision(&fleet, &VehicleSpec::standard(VIN, 2));
    let hardware: Vec<String> = std::iter::once(car.primary_hardware_id.clone())
        .chain(car.secondaries.iter().map(|s| s.hardware_id.clone()))
        .collect();
    let mut story = Vec::new();

    // Day 0: every ECU updates once; then ECU1 is switched off for good.
    car.start_primary();
    let first = release(&fleet, "day0", &hardware, 1)?;
    wait_installed(&fleet, &first, &[0, 1, 2])?;
    car.stop_secondary(0);
    story.push("day 0: all 3 ECUs updated, ECU1 then off".to_string());

    // Day 120: both repositories have rotated their root keys once; the Primary and ECU2
    // update, then the vehicle is parked.
    car.stop_primary();
    new_day(
        &mut fleet,
        LAST_ON,
        &[&["rotate-root", "--keys", "3", "--threshold", "2"]],
        &[&["rotate-root", "--keys", "2", "--threshold", "2"]],
    )?;
    car.set_clock_offset_secs(LAST_ON * 86_400);
    car.start_primary();
    let second = release(&fleet, "day120", &hardware[..1], 2)?;
    let second_ecu2 = release(&fleet, "day120", &hardware[2..], 2)?;
    let second = [second, second_ecu2].concat();
    wait_installed(&fleet, &second, &[0, 2])?;
    // ECU1, off since day 0, still trusts the first roots.
    let parked_roots = car_roots(&car, &[1])?;
    car.stop_primary();
    car.stop_secondary(1);
    story.push(format!(
        "day {LAST_ON}: roots rotated, Primary and ECU2 updated, vehicle parked trusting {parked_roots}"
    ));

    // Days 250 and 380: new root keys and new online keys on both sides, every role signed
    // again; newer images, the last assigned to the parked vehicle.
    new_day(
        &mut fleet,
        250,
        &[
            &["rotate-root", "--keys", "2", "--threshold", "1"],
            &["rotate-online"],
        ],
        &[
            &["rotate-root", "--keys", "1", "--threshold", "1"],
            &["rotate-online", "--role", "snapshot"],
            &["rotate-online", "--role", "timestamp"],
        ],
    )?;
    publish(&fleet, "day250", &hardware, 3);
    new_day(
        &mut fleet,
        380,
        &[
            &["rotate-root", "--keys", "3", "--threshold", "2"],
            &["rotate-online"],
        ],
        &[
            &["rotate-root", "--keys", "3", "--threshold", "2"],
            &["rotate-online", "--role", "timestamp"],
        ],
    )?;
    let last = release(&fleet, "day380", &hardware, 4)?;
    story.push("days 250 and 380: roots and online keys rotated, images published".to_string());

    // Day 520: the roots renewed once more; the vehicle wakes up, its clock 400 days on.
    new_day(
        &mut fleet,
        BACK,
        &[&["rotate-root"]],
        &[&["rotate-root", "--keys", "1", "--threshold", "1"]],
    )?;
    let expected_roots = server_roots(&fleet)?;
    let since = security_events(&fleet)?.len();
    car.start_secondary(0, &[]);
    car.start_secondary(1, &[]);
    car.set_clock_offset_secs(BACK * 86_400);
    car.start_primary();
    wait_installed(&fleet, &last, &[0, 1, 2])?;
    let roots = car_roots(&car, &[0, 1])?;
    if roots != expected_roots {
        return Err(format!(
            "the vehicle trusts {roots}, the repositories publish {expected_roots}"
        ));
    }
    let events = security_events(&fleet)?;
    if events.len() > since {
        return Err(format!(
            "attacks reported after the wake-up: {:?}",
            &events[..events.len() - since]
        ));
    }
    story.push(format!(
        "day {BACK}: every ECU updated to the day-380 images, all trusting {roots}"
    ));
    car.stop_primary();
    Ok(story.join("; "))
}

/// Moves the servers' clock to `day`, runs the Director's and the Image repository's
/// administrative commands (with their offline keys) there, signs the targets again and
/// restarts both servers, which sign the rest.
fn new_day(
    fleet: &mut Fleet,
    day: i64,
    director: &[&[&str]],
    image_repo: &[&[&str]],
) -> Result<(), String> {
    fleet.set_clock_offset_days(day);
    for args in director {
        let (ok, _, err) = fleet.director_local(args, &fleet.path("director-keys"));
        if !ok {
            return Err(format!("day {day}: director {args:?}: {err}"));
        }
    }
    for args in image_repo.iter().chain(&[&["renew"][..]]) {
        fleet
            .image_repo_local(args)
            .map_err(|e| format!("day {day}: {e}"))?;
    }
    fleet.restart_servers();
    // The operator's API token of 90 days is long gone: a new one for the day.
    fleet.renew_operator_token();
    let fresh = wait_until(STAGE_LIMIT, || fleet.image_repo_timestamp_fresh());
    if !fresh {
        return Err(format!(
            "day {day}: the Image repository never signed a timestamp current on the moved \
             clock (a server built without the fault-injection feature ignores \
             UPTANE_FAULT_CLOCK_OFFSET_SECS)"
        ));
    }
    Ok(())
}

/// Publishes an image for each hardware id, named after `day`.
fn publish(fleet: &Fleet, day: &str, hardware: &[String], counter: u64) -> Vec<String> {
    hardware
        .iter()
        .map(|hardware_id| {
            let name = format!("parked-{day}-{hardware_id}.bin");
            let content = format!("{name} {}", "x".repeat(4096));
            fleet.publish(&name, hardware_id, counter, content.as_bytes());
            name
        })
        .collect()
}

/// Publishes an image for each hardware id and assigns them to the vehicle.
fn release(
    fleet: &Fleet,
    day: &str,
    hardware: &[String],
    counter: u64,
) -> Result<Vec<String>, String> {
    let names = publish(fleet, day, hardware, counter);
    for name in &names {
        let answer = fleet.assign(name, &[VIN]);
        if answer.is_null() {
            return Err(format!("{day}: assigning {name} failed"));
        }
    }
    Ok(names)
}

/// Waits until the Director records `images[i]` installed on the ECUs `ecus` (0: the
/// Primary, then the Secondaries in order), `images` in the same order.
fn wait_installed(fleet: &Fleet, images: &[String], ecus: &[usize]) -> Result<(), String> {
    let installed = |fleet: &Fleet| {
        let recorded = fleet.installed(VIN);
        ecus.iter().zip(images).all(|(ecu, image)| {
            let suffix = match ecu {
                0 => "-GW".to_string(),
                n => format!("-ECU{n}"),
            };
            recorded
                .iter()
                .any(|(serial, i)| serial.ends_with(&suffix) && i.as_deref() == Some(image))
        })
    };
    if wait_until(STAGE_LIMIT, || installed(fleet)) {
        Ok(())
    } else {
        Err(format!(
            "{images:?} not installed on ECUs {ecus:?}: the Director records {:?}; assignments {}",
            fleet.installed(VIN),
            Value::Array(fleet.assignments(VIN))
        ))
    }
}

/// The vehicle's security events, newest first (an error if the Director does not say).
fn security_events(fleet: &Fleet) -> Result<Vec<String>, String> {
    let events = fleet.operator_at(
        &fleet.director_url,
        &["events", "--vin", VIN, "--limit", "1000", "--security"],
    )?;
    let events = events
        .as_array()
        .ok_or_else(|| format!("director events printed {events}"))?;
    Ok(events
        .iter()
        .map(|e| format!("{} {}", e["kind"], e["detail"]))
        .collect())
}

/// The root versions the Primary trusts, in words (`Director root vN, Image repository root
/// vM`), once Secondaries `secondaries` were found to trust the same.
fn car_roots(car: &SimVehicle, secondaries: &[usize]) -> Result<String, String> {
    let status = car.primary_status()?;
    let version = |repo: &str| status[repo]["root"].as_u64().unwrap_or_default();
    let primary = (version("director"), version("image_repo"));
    for secondary in secondaries.iter().map(|&i| &car.secondaries[i]) {
        let director = root_version(&secondary.dir.join("trusted/director-root.json"))?;
        if director != primary.0 {
            return Err(format!(
                "{} trusts Director root v{director}, the Primary v{}",
                secondary.serial, primary.0
            ));
        }
        let image = secondary.dir.join("trusted/image-root.json");
        if secondary.mode == crate::sim::Mode::Full && root_version(&image)? != primary.1 {
            return Err(format!(
                "{} trusts Image repository root v{}, the Primary v{}",
                secondary.serial,
                root_version(&image)?,
                primary.1
            ));
        }
    }
    Ok(format!(
        "Director root v{}, Image repository root v{}",
        primary.0, primary.1
    ))
}

/// The newest root version each repository publishes, in the words of [`car_roots`].
fn server_roots(fleet: &Fleet) -> Result<String, String> {
    let newest = |dir: &std::path::Path| -> Result<u64, String> {
        let mut newest = 0;
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let name = entry.map_err(|e| e.to_string())?.file_name();
            let name = name.to_string_lossy();
            if let Some(version) = uptane_core::metadata::root_version_of(&name) {
                newest = newest.max(version);
            }
        }
        Ok(newest)
    };
    let director = fleet.director_root_version()?;
    let image = newest(&fleet.path("repo/metadata"))?;
    Ok(format!(
        "Director root v{director}, Image repository root v{image}"
    ))
}

/// The `signed.version` of a root file.
fn root_version(path: &std::path::Path) -> Result<u64, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    value["signed"]["version"]
        .as_u64()
        .ok_or_else(|| format!("{}: no version", path.display()))
}
