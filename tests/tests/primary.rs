//! The Primary against the real servers: a Director and an Image repository as processes,
//! the vehicle registered by the Primary itself with a provisioning token, an operator
//! assigning images with the `director` commands, and `primary-ecu run` updating itself and
//! a Secondary until the Director records both installs, then stopping on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use uptane_tests::sim::Fleet;
use uptane_tests::{bin, run, run_ok, spawn, spawn_listening};

const LIMIT: Duration = Duration::from_secs(60);
const VIN: &str = "WVWZZZ1JZXW000042";

fn installed(fleet: &Fleet, serial: &str) -> Option<String> {
    fleet
        .installed(VIN)
        .into_iter()
        .find(|(s, _)| s == serial)
        .and_then(|(_, image)| image)
}

#[test]
fn a_primary_provisions_itself_and_updates_its_vehicle_through_the_real_servers() {
    let fleet = Fleet::start();
    let path = |n: &str| fleet.path(n).display().to_string();
    std::fs::write(path("factory.bin"), b"factory firmware").unwrap();

    // The Primary's TLS identity first: the Secondary pins it at its init, and the Primary
    // pins the Secondary's in return.
    let primary_fingerprint = run_ok(
        Command::new(bin("primary-ecu")).args([
            "tls-identity",
            "--dir",
            &path("primary"),
            "--serial",
            "GW-42",
        ]),
        LIMIT,
    )
    .trim()
    .to_string();
    let printed = run_ok(
        Command::new(bin("secondary-ecu")).args([
            "init",
            "--vin",
            VIN,
            "--serial",
            "BRAKE-42",
            "--hardware-id",
            "hw-brake",
            "--mode",
            "partial",
            "--dir",
            &path("brake"),
            "--director-root",
            &path("director/1.root.json"),
            "--factory-image",
            &path("factory.bin"),
            "--factory-name",
            "brake-1.bin",
            "--primary-fingerprint",
            &primary_fingerprint,
        ]),
        LIMIT,
    );
    let brake_fingerprint = printed
        .lines()
        .find_map(|l| l.strip_prefix("TLS certificate fingerprint "))
        .expect("init prints the fingerprint")
        .trim()
        .to_string();
    let mut command = Command::new(bin("secondary-ecu"));
    command.args(["run", "--dir", &path("brake"), "--listen", "127.0.0.1:0"]);
    let (_brake, brake_addr) = spawn_listening(command, LIMIT);

    let provisioning = fleet.provisioning_token.clone();
    let primary_args = |command: &mut Command| {
        command.args([
            "--dir",
            &path("primary"),
            "--director-url",
            &fleet.director_url,
            "--image-repo-url",
            &fleet.image_url,
            "--ca-cert",
            &fleet.ca_cert.display().to_string(),
        ]);
    };
    let mut init = Command::new(bin("primary-ecu"));
    init.arg("init");
    primary_args(&mut init);
    init.args([
        "--vin",
        VIN,
        "--serial",
        "GW-42",
        "--hardware-id",
        "hw-gateway",
        "--secondary",
        &format!("BRAKE-42,{brake_addr},partial,{brake_fingerprint}"),
        "--poll-interval-secs",
        "1",
        "--provisioning-token",
        &provisioning,
        "--director-root",
        &path("director/1.root.json"),
        "--image-root",
        &path("repo/metadata/1.root.json"),
        "--factory-image",
        &path("factory.bin"),
        "--factory-name",
        "gw-1.bin",
    ]);
    let out = run_ok(&mut init, LIMIT);
    assert!(out.contains("BRAKE-42 (hw-brake, partial)"), "{out}");
    // A second init of the same directory is refused.
    let (status, _, stderr) = run(&mut init, LIMIT);
    assert!(!status.success());
    assert!(
        stderr.contains("already holds a provisioned Primary"),
        "{stderr}"
    );

    let shown = fleet.operator(&["vehicle", "show", VIN]);
    assert_eq!(shown["ecus"].as_array().unwrap().len(), 2);

    // One cycle: the factory images are reported.
    let mut once = Command::new(bin("primary-ecu"));
    once.arg("once");
    primary_args(&mut once);
    let (status, out, err) = run(&mut once, LIMIT);
    assert!(status.success(), "{out}\n{err}");
    assert_eq!(installed(&fleet, "GW-42").as_deref(), Some("gw-1.bin"));
    assert_eq!(
        installed(&fleet, "BRAKE-42").as_deref(),
        Some("brake-1.bin")
    );

    // The operator publishes and assigns; the running Primary installs both.
    fleet.publish("gw-2.bin", "hw-gateway", 2, &[3u8; 150_000]);
    fleet.publish("brake-2.bin", "hw-brake", 2, &[4u8; 250_000]);
    let mut command = Command::new(bin("primary-ecu"));
    command.arg("run");
    primary_args(&mut command);
    let mut primary = spawn(command);
    for image in ["gw-2.bin", "brake-2.bin"] {
        fleet.operator(&["assign", "--image", image, "--vin", VIN]);
    }
    let deadline = Instant::now() + LIMIT;
    while installed(&fleet, "GW-42").as_deref() != Some("gw-2.bin")
        || installed(&fleet, "BRAKE-42").as_deref() != Some("brake-2.bin")
    {
        assert!(
            Instant::now() < deadline,
            "the vehicle did not update; Primary stderr:\n{}",
            primary.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let assignments = fleet.operator(&["assignment", "list", "--vin", VIN]);
    let statuses: Vec<&str> = assignments
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["installed", "installed"], "{assignments}");

    // SIGTERM: a graceful stop.
    run_ok(
        Command::new("kill").args(["-TERM", &primary.id().to_string()]),
        LIMIT,
    );
    let status = primary
        .wait_exit(LIMIT)
        .expect("the Primary stops on SIGTERM");
    assert!(status.success(), "{status}");

    let mut show = Command::new(bin("primary-ecu"));
    show.args(["status", "--dir", &path("primary")]);
    let out = run_ok(&mut show, LIMIT);
    assert!(out.contains("GW-42") && out.contains("gw-2.bin"), "{out}");
    assert!(out.contains("pending    none"), "{out}");
}
