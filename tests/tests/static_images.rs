//! The Image repository's published tree is static: nginx serves it, our server only takes
//! the uploads, and a vehicle updates through nginx (metadata, and the image with its Range
//! requests) without a request to our server.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use uptane_tests::nginx::Nginx;
use uptane_tests::sim::{Fleet, Mode, SimVehicle, VehicleSpec, wait_until};

#[test]
fn a_vehicle_updates_from_the_published_tree_served_by_nginx() {
    let mut fleet = Fleet::start();
    // Uploads go to our server, which publishes into the tree nginx serves.
    fleet.publish_through_server();
    let nginx = Nginx::serve(
        &fleet.path("repo"),
        &fleet.path("pki/image-repo/cert.pem"),
        &fleet.path("pki/image-repo/key.pem"),
        &fleet.path("nginx"),
    );
    let mut vehicle = SimVehicle::provision(
        &fleet,
        &VehicleSpec {
            vin: "STATIC01".into(),
            single_bank: Vec::new(),
            secondaries: vec![("DOOR".into(), "hw-door".into(), Mode::Partial)],
        },
    );
    vehicle.set_image_url(&nginx.url);
    vehicle.start_primary();
    fleet.publish("door-3.bin", "hw-door", 3, &[3u8; 500_000]);
    fleet.assign("door-3.bin", &["STATIC01"]);
    assert!(
        wait_until(Duration::from_secs(120), || {
            fleet.installed_on("STATIC01", "DOOR", "door-3.bin")
        }),
        "the vehicle did not update through nginx"
    );
    let log = nginx.access_log();
    for route in ["GET /metadata/timestamp.json", "GET /targets/"] {
        assert!(log.contains(route), "nginx served no {route}:\n{log}");
    }
    assert!(
        log.lines()
            .filter(|l| l.contains("GET /targets/"))
            .all(|l| l.contains("\" 200 ") || l.contains("\" 206 ")),
        "{log}"
    );
}
