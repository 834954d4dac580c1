//! The Director as a real process next to a real Image repository: an operator registers a
//! vehicle and assigns an image with the `director` commands, the vehicle verifies its
//! metadata with `uptane-core` as a Primary would and reports the install, and nothing
//! accepted is lost when the Director is killed with SIGKILL and restarted.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use uptane_core::crypto::SigningKey;
use uptane_core::ids::{EcuSerial, HardwareId};
use uptane_core::manifest::{
    ECU_REPORT_TYPE, EcuVersionReport, InstalledImage, VehicleVersionManifest,
};
use uptane_core::refresh::{Refresh, Step};
use uptane_core::trusted::{Director, Limits};
use uptane_core::verify::Raw;
use uptane_tests::blocking;
use uptane_tests::sim::Fleet;

const VIN: &str = "WVWZZZ1JZXW000001";
const IMAGE: &[u8] = b"brake controller firmware 2.0";

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

async fn get(client: &reqwest::Client, url: &str, credential: &str) -> Vec<u8> {
    let response = client
        .get(url)
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.bytes().await.unwrap().to_vec()
}

/// An identifier of the type the context wants.
fn id<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().unwrap()
}

fn report(serial: &str, key: &SigningKey, image: &[u8], name: &str, counter: u64) -> Vec<u8> {
    EcuVersionReport {
        report_type: ECU_REPORT_TYPE.into(),
        ecu_serial: id(serial),
        installed_image: InstalledImage {
            filename: name.into(),
            length: image.len() as u64,
            hashes: uptane_core::hash::standard_hashes(image),
            release_counter: 0,
        },
        attacks_detected: vec![],
        latest_time: now(),
        nonce: format!("{serial}-{counter}"),
        report_counter: counter,
        last_install: None,
    }
    .sign(key)
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_assigns_vehicle_verifies_and_reports_and_nothing_is_lost_on_kill() {
    let mut fleet = Fleet::start();
    fleet.publish("brake-2.0.bin", "hw-brake", 2, IMAGE);
    let url = fleet.director_url.clone();

    let keys = [uptane_core::testing::key(1), uptane_core::testing::key(2)];
    let serials = ["ECU-GW-1", "ECU-BRAKE-1"];
    let hardware = ["hw-gateway", "hw-brake"];
    let mut ecu_args = Vec::new();
    for i in 0..2 {
        let key_file = fleet
            .path(&format!("ecu{i}.pub.json"))
            .display()
            .to_string();
        std::fs::write(
            &key_file,
            serde_json::to_vec(keys[i].public_key().to_json()).unwrap(),
        )
        .unwrap();
        ecu_args.push(format!("{}:{}:{key_file}", serials[i], hardware[i]));
    }
    let mut args = vec!["vehicle", "register", "--vin", VIN];
    for spec in &ecu_args {
        args.extend(["--ecu", spec.as_str()]);
    }
    let registered = fleet.operator(&args);
    let credential = registered["credential"].as_str().unwrap().to_string();

    let assigned = fleet.operator(&["assign", "--image", "brake-2.0.bin", "--vin", VIN]);
    let correlation = assigned["correlation_id"].as_str().unwrap().to_string();
    assert_eq!(assigned["ecus"][0]["ecu_serial"], "ECU-BRAKE-1");

    // The vehicle: full verification of its Director metadata, as a Primary does.
    let client = fleet.https_client();
    let base = format!("{url}/vehicles/{VIN}/metadata");
    let root = get(&client, &format!("{base}/1.root.json"), &credential).await;
    let mut refresh = Refresh::<Director>::new(&Raw::new(root), now(), Limits::default()).unwrap();
    loop {
        let answer = match refresh.next() {
            Step::ReadKept(_) => None,
            Step::Fetch { file, .. } => {
                let url = format!("{base}/{}", file.file_name());
                let response = client
                    .get(&url)
                    .bearer_auth(&credential)
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    404 => None,
                    _ => Some(
                        response
                            .error_for_status()
                            .unwrap()
                            .bytes()
                            .await
                            .unwrap()
                            .to_vec(),
                    ),
                }
            }
            Step::Done => break,
        };
        refresh.feed(answer).unwrap();
    }
    let set = refresh.trusted();
    let ecus: BTreeMap<EcuSerial, HardwareId> = serials
        .iter()
        .zip(hardware)
        .map(|(s, h)| (id(s), id(h)))
        .collect();
    let targets = uptane_core::uptane::director_targets(set, &id(VIN), &ecus).unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(
        targets[0].info.hashes["sha256"],
        uptane_core::hash::sha256_hex(IMAGE)
    );

    // It installs and reports.
    let reports = BTreeMap::from([
        (
            id(serials[0]),
            report(serials[0], &keys[0], b"gateway 1", "gw-1.bin", 1),
        ),
        (
            id(serials[1]),
            report(serials[1], &keys[1], IMAGE, "brake-2.0.bin", 1),
        ),
    ]);
    let manifest = VehicleVersionManifest::new(&id(VIN), &id(serials[0]), &reports)
        .unwrap()
        .sign(&keys[0])
        .unwrap();
    let response = client
        .post(format!("{url}/vehicles/{VIN}/manifest"))
        .bearer_auth(&credential)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );

    let shown = fleet.operator(&["vehicle", "show", VIN]);
    assert_eq!(shown["assignments"][0]["status"], "installed");
    assert_eq!(shown["ecus"][1]["installed"]["filename"], "brake-2.0.bin");
    let events_before = fleet.operator(&["events"]);

    // SIGKILL, restart: everything accepted is still there.
    fleet.restart_director();
    let url = fleet.director_url.clone();
    let shown = fleet.operator(&["vehicle", "show", VIN]);
    assert_eq!(shown["assignments"][0]["status"], "installed");
    assert_eq!(
        shown["assignments"][0]["correlation_id"],
        correlation.as_str()
    );
    assert_eq!(shown["ecus"][1]["last_report_counter"], 1);
    let events_after = fleet.operator(&["events"]);
    assert_eq!(events_after, events_before);
    // The replayed manifest is still refused after the restart: its nonces were kept.
    let manifest = VehicleVersionManifest::new(&id(VIN), &id(serials[0]), &reports)
        .unwrap()
        .sign(&keys[0])
        .unwrap();
    let response = client
        .post(format!("{url}/vehicles/{VIN}/manifest"))
        .bearer_auth(&credential)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[test]
fn the_root_is_rotated_only_by_its_offline_keys_and_warns_before_it_expires() {
    let mut fleet = Fleet::start();
    let offline = fleet.path("director-keys");
    let status = fleet.operator(&["status"]);
    assert_eq!(status["root_version"], 1, "{status}");
    assert_eq!(status["root_expiry_warning"], false, "{status}");

    // Without the current root's offline keys nothing is published.
    let empty = fleet.path("no-keys");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, _, err) = fleet.director_local(&["rotate-root"], &empty);
    assert!(!ok);
    assert!(err.contains("would not be accepted by vehicles"), "{err}");
    // New root keys that the current keys cannot sign over are not kept either.
    let (ok, _, err) =
        fleet.director_local(&["rotate-root", "--keys", "2", "--threshold", "1"], &empty);
    assert!(!ok && err.contains("would not be accepted"), "{err}");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // A threshold above the number of keys is refused before anything is written.
    let (ok, _, err) = fleet.director_local(
        &["rotate-root", "--keys", "2", "--threshold", "3"],
        &offline,
    );
    assert!(!ok);
    assert!(err.contains("threshold 3 needs 1 to 2 keys"), "{err}");
    let (ok, _, err) =
        fleet.director_local(&["rotate-root", "--root-lifetime-days", "0"], &offline);
    assert!(!ok && err.contains("between 1 and 3650"), "{err}");
    assert_eq!(fleet.operator(&["status"])["root_version"], 1);

    // A root that expires in 30 days: served at once, and warned about.
    let (ok, out, err) =
        fleet.director_local(&["rotate-root", "--root-lifetime-days", "30"], &offline);
    assert!(ok, "{err}");
    assert!(out.contains("version 2"), "{out}");
    assert!(
        err.contains("warning: the Director root (version 2) expires"),
        "{err}"
    );
    let status = fleet.operator(&["status"]);
    assert_eq!(status["root_version"], 2, "{status}");
    assert_eq!(status["root_expiry_warning"], true, "{status}");
    let served = blocking(async {
        fleet
            .https_client()
            .get(format!(
                "{}/vehicles/ANY/metadata/2.root.json",
                fleet.director_url
            ))
            .send()
            .await
            .unwrap()
            .status()
    });
    // Roots are served to vehicles only, like the rest of their repository.
    assert_eq!(served, 401);
    // The server warns at start and records one security event a day.
    fleet.restart_director();
    fleet.restart_director();
    let events = fleet.operator(&["events", "--security"]);
    let expiring: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "root_expiring")
        .collect();
    assert_eq!(expiring.len(), 1, "{events}");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "director_root_rotated"),
        "{events}"
    );
    // Renewed for two years: no warning.
    let (ok, _, err) =
        fleet.director_local(&["rotate-root", "--root-lifetime-days", "730"], &offline);
    assert!(ok, "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(fleet.operator(&["status"])["root_expiry_warning"], false);
}
