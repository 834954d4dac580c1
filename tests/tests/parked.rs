//! A vehicle parked for 400 days while both repositories rotate their roots and online keys
//! and sign everything again (`uptane_tests::parked`, also a `fleet-sim hil` row), and the
//! test clock that lets months pass without waiting for them.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use uptane_tests::{bin, run};

#[test]
fn a_vehicle_parked_for_400_days_walks_both_root_chains_and_updates_every_ecu() {
    let observed = uptane_tests::parked::drive().unwrap();
    // Both chains walked from the versions the vehicle parked with, and the Secondary that
    // was off from the first day caught up from its factory roots.
    assert!(
        observed.contains("parked trusting Director root v2, Image repository root v2"),
        "{observed}"
    );
    assert!(
        observed.contains("all trusting Director root v7, Image repository root v8"),
        "{observed}"
    );
}

#[test]
fn the_servers_refuse_a_test_clock_offset_that_is_not_one() {
    for (offset, says) in [
        ("a year", "is not a whole number of seconds"),
        ("9223372036854775807", "is out of range"),
        ("9000000000000", "is past any date"),
    ] {
        for program in ["image-repo", "director"] {
            let (status, _, err) = run(
                Command::new(bin(program))
                    .args(["completions", "bash"])
                    .env("UPTANE_FAULT_CLOCK_OFFSET_SECS", offset),
                Duration::from_secs(30),
            );
            assert!(!status.success(), "{program} accepted {offset:?}");
            assert!(
                err.contains("UPTANE_FAULT_CLOCK_OFFSET_SECS") && err.contains(says),
                "{program} {offset:?}: {err}"
            );
        }
    }
}
