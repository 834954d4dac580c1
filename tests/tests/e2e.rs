//! The whole system end to end, with real processes on 127.0.0.1: the demo's flow and a
//! second update, a campaign to 20 vehicles at once, and the faults an operator meets (a
//! Secondary offline, the Primary killed mid-download, the Director restarted during an
//! assignment, an image that fails its trial boot). Every test asserts on what the Director
//! records.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use uptane_tests::demo;
use uptane_tests::hil::{self, Expect, Fault, Rig, Row};
use uptane_tests::proxy::LinkProxy;
use uptane_tests::sim::{Fleet, Mode, SimVehicle, VehicleSpec, wait_until};

const LIMIT: Duration = Duration::from_secs(120);

fn all_installed(fleet: &Fleet, vin: &str, images: usize) -> bool {
    let entries = fleet.assignments(vin);
    entries.len() == images && entries.iter().all(|e| e["status"] == "installed")
}

#[test]
fn the_demo_updates_every_ecu_and_a_second_update_follows() {
    let mut narration = Vec::new();
    // On the engine the suite is given (`fleet-sim demo --database postgres` in CI's second
    // pass).
    let on_postgres = std::env::var("DIRECTOR_TEST_POSTGRES").is_ok_and(|v| !v.is_empty());
    let database = if on_postgres { "postgres" } else { "sqlite" };
    let demo = demo::run(&mut narration, database).unwrap();
    let text = String::from_utf8(narration).unwrap();
    let engine = if on_postgres {
        "(on postgres://"
    } else {
        "(on SQLite"
    };
    assert!(text.contains(engine), "{text}");
    assert!(demo.all_updated(), "{text}");
    assert_eq!(demo.rows.len(), 3);
    let installed = demo.fleet.installed(demo::VIN);
    assert!(
        installed
            .iter()
            .all(|(_, image)| image.as_deref().is_some_and(|i| i.ends_with("-2.0.bin"))),
        "{installed:?}"
    );

    // A second release for the two Secondaries.
    demo.fleet
        .publish("brake-3.0.bin", "hw-brake", 3, &[30u8; 400_000]);
    demo.fleet
        .publish("radio-3.0.bin", "hw-radio", 3, &[31u8; 300_000]);
    demo.fleet.assign("brake-3.0.bin", &[demo::VIN]);
    demo.fleet.assign("radio-3.0.bin", &[demo::VIN]);
    assert!(
        wait_until(LIMIT, || {
            let installed = demo.fleet.installed(demo::VIN);
            installed
                .iter()
                .filter(|(_, i)| i.as_deref().is_some_and(|i| i.ends_with("-3.0.bin")))
                .count()
                == 2
        }),
        "the second update did not land: {:?}",
        demo.fleet.assignments(demo::VIN)
    );
    let entries = demo.fleet.assignments(demo::VIN);
    assert_eq!(entries.len(), 5);
    assert!(
        entries.iter().all(|e| e["status"] == "installed"),
        "{entries:?}"
    );
    // The Primary's own image stayed on 2.0.
    assert!(
        demo.fleet
            .installed(demo::VIN)
            .iter()
            .any(|(s, i)| s.ends_with("-GW") && i.as_deref() == Some("gateway-2.0.bin"))
    );
}

#[test]
fn one_assignment_reaches_twenty_vehicles() {
    let fleet = Fleet::start();
    let mut vehicles: Vec<SimVehicle> = (0..20)
        .map(|i| {
            SimVehicle::provision(
                &fleet,
                &VehicleSpec {
                    vin: format!("FLEET{i:02}"),
                    single_bank: Vec::new(),
                    secondaries: vec![("DOOR".into(), "hw-door".into(), Mode::Partial)],
                },
            )
        })
        .collect();
    for vehicle in &mut vehicles {
        vehicle.start_primary();
    }
    let vins: Vec<String> = vehicles.iter().map(|v| v.vin.clone()).collect();
    let vin_refs: Vec<&str> = vins.iter().map(String::as_str).collect();
    fleet.publish("door-5.bin", "hw-door", 5, &[5u8; 200_000]);
    let assignment = fleet.assign("door-5.bin", &vin_refs);
    assert_eq!(
        assignment["ecus"].as_array().unwrap().len(),
        20,
        "{assignment}"
    );
    assert!(
        wait_until(LIMIT, || vin_refs
            .iter()
            .all(|vin| all_installed(&fleet, vin, 1))),
        "not every vehicle updated"
    );
    for vin in &vin_refs {
        assert!(
            fleet.installed_on(vin, "DOOR", "door-5.bin"),
            "{vin}: {:?}",
            fleet.installed(vin)
        );
    }
}

fn assert_row_holds(name: &'static str, fault: Fault, expect: Expect, index: usize) {
    let mut fleet = Fleet::start();
    let row = Row {
        matrix: "-",
        name,
        fault,
        expect,
    };
    let outcome = hil::run_row(
        &mut fleet,
        Rig {
            vehicles: 1,
            secondaries: 2,
        },
        index,
        row,
    );
    assert!(outcome.holds, "{name}: {}", outcome.observed);
}

#[test]
fn a_secondary_offline_then_back_is_updated_without_holding_up_the_others() {
    assert_row_holds("Secondary offline", Fault::Offline, Expect::Installed, 1);
}

#[test]
fn the_director_restarted_during_an_assignment_loses_nothing() {
    assert_row_holds(
        "Director restarted",
        Fault::DirectorRestarted,
        Expect::Installed,
        2,
    );
}

#[test]
fn an_image_that_fails_its_trial_boot_is_rolled_back_and_the_operator_sees_it() {
    assert_row_holds(
        "fails its trial boot",
        Fault::Secondary(&["--fault-fail-boot"], false),
        Expect::Failed("rolled_back"),
        3,
    );
}

#[test]
fn a_primary_killed_mid_download_resumes_after_the_restart() {
    let fleet = Fleet::start();
    let link = LinkProxy::start(fleet.image_url.trim_start_matches("https://")).unwrap();
    let mut vehicle = SimVehicle::provision(&fleet, &VehicleSpec::standard("KILLDL", 1));
    vehicle.set_image_url(&format!("https://{}", link.addr()));
    vehicle.start_primary();
    assert!(wait_until(LIMIT, || fleet
        .installed("KILLDL")
        .iter()
        .all(|(_, i)| i.is_some())));

    let size = 4 << 20;
    fleet.publish("gw-big.bin", "hw-gateway", 2, &vec![9u8; size]);
    link.set_chunk_delay(Duration::from_millis(10));
    let before = link.bytes_relayed_back();
    fleet.assign("gw-big.bin", &["KILLDL"]);
    let downloads = vehicle.primary_dir.join("downloads");
    let partial = || {
        std::fs::read_dir(&downloads)
            .map(|d| {
                d.flatten()
                    .map(|e| e.metadata().map_or(0, |m| m.len()))
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    // The link is held as soon as half a MiB is kept: a test thread kept from running for
    // the half second the rest takes would otherwise kill a Primary that had finished.
    assert!(
        wait_until(LIMIT, || {
            let started = partial() > 512 * 1024;
            link.set_stalled(started);
            started
        }),
        "the download never started"
    );
    vehicle.kill_primary();
    let kept = partial();
    assert!(
        kept < size as u64,
        "the download had finished ({kept} bytes)"
    );

    link.set_stalled(false);
    link.set_chunk_delay(Duration::ZERO);
    vehicle.start_primary();
    assert!(
        wait_until(LIMIT, || all_installed(&fleet, "KILLDL", 1)),
        "{:?}\n{}",
        fleet.assignments("KILLDL"),
        vehicle.primary_log()
    );
    let relayed = link.bytes_relayed_back() - before;
    assert!(
        relayed < (size as u64) + kept / 2,
        "{relayed} bytes came through the link for a {size}-byte image with {kept} kept: not resumed"
    );
}
