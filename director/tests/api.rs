//! The Director through its router, without a socket, on an in-memory SQLite database, with
//! an Image repository made of real signed metadata.

#![allow(clippy::unwrap_used)] // test support code outside #[test] functions

mod common;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use director::service::{self};
use serde_json::{Value, json};
use tower::ServiceExt;
use uptane_core::error::AttackKind;
use uptane_core::ids::{EcuSerial, HardwareId};
use uptane_core::manifest::{
    DetectedAttack, ECU_REPORT_TYPE, EcuVersionReport, InstallResult, InstalledImage, LastInstall,
    VehicleVersionManifest,
};
use uptane_core::refresh::{Refresh, Step};
use uptane_core::testing::key;
use uptane_core::trusted::{Director, Limits};
use uptane_core::uptane::director_targets;
use uptane_core::verify::Raw;

use common::*;

#[tokio::test]
async fn assignment_is_signed_for_the_vehicle_and_completed_by_its_manifest() {
    let fleet = fleet();
    let mut car = fleet.register(VIN, 10).await;
    let factory = car.factory();
    let (status, json) = fleet.post_manifest(&car, factory).await;
    assert_eq!(status, StatusCode::OK, "{json}");

    let (status, json) = fleet
        .operator(
            "POST",
            "/api/v1/assignments",
            json!({"image": "brake-2.bin", "vins": [VIN]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(json["ecus"].as_array().unwrap().len(), 1);
    assert_eq!(json["ecus"][0]["ecu_serial"], format!("{VIN}-brake"));

    // The vehicle verifies its metadata as a Primary would.
    let mut refresh = Refresh::<Director>::new(
        &Raw::new(fleet.director_root.clone()),
        now(),
        Limits::default(),
    )
    .unwrap();
    loop {
        let answer = match refresh.next() {
            Step::ReadKept(_) => None,
            Step::Fetch { file, .. } => {
                let (status, bytes) = fetch(&fleet, &car, &file.file_name()).await;
                (status == StatusCode::OK).then_some(bytes)
            }
            Step::Done => break,
        };
        refresh.feed(answer).unwrap();
    }
    let set = refresh.trusted();
    let ecus: BTreeMap<EcuSerial, HardwareId> = car
        .ecus
        .iter()
        .map(|(s, hw, _)| (s.clone(), hw.clone()))
        .collect();
    let assigned = director_targets(set, &VIN.parse().unwrap(), &ecus).unwrap();
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].path, "brake-2.bin");
    assert_eq!(assigned[0].release_counter, 2);

    let (_, entries) = fleet
        .operator(
            "GET",
            &format!("/api/v1/assignments?vin={VIN}"),
            Value::Null,
        )
        .await;
    assert_eq!(entries[0]["status"], "delivered");

    let manifest = car.manifest(&[
        (b"gw 1", "gw-1.bin"),
        (BRAKE_FW, "brake-2.bin"),
        (b"radio 0", "radio-0.bin"),
    ]);
    let (status, outcome) = fleet.post_manifest(&car, manifest).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(outcome["installed"].as_array().unwrap().len(), 1);
    let (_, entries) = fleet
        .operator(
            "GET",
            &format!("/api/v1/assignments?vin={VIN}"),
            Value::Null,
        )
        .await;
    assert_eq!(entries[0]["status"], "installed");
    let (_, vehicle) = fleet
        .operator("GET", &format!("/api/v1/vehicles/{VIN}"), Value::Null)
        .await;
    assert_eq!(vehicle["ecus"][1]["installed"]["filename"], "brake-2.bin");

    // Nothing assigned any more: the next targets are empty, with a higher version.
    let (_, timestamp) = fetch(&fleet, &car, "timestamp.json").await;
    let doc: Value = serde_json::from_slice(&timestamp).unwrap();
    assert_eq!(doc["signed"]["version"], 2);
}

/// Posts a manifest that must be refused: 4xx, a security event, nothing else changed.
async fn assert_manifest_refused(
    fleet: &Fleet,
    car: &Vehicle,
    vin: &str,
    manifest: Vec<u8>,
    expected: StatusCode,
    reason: &str,
    attack: AttackKind,
) {
    let before = fleet.snapshot();
    let security_before = fleet.event_count(true);
    let (status, json, _) = fleet
        .send(
            "POST",
            &format!("/vehicles/{vin}/manifest"),
            Some(&car.credential),
            Some(manifest),
        )
        .await;
    assert_eq!(status, expected, "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(
        error.contains(reason),
        "{error:?} does not mention {reason:?}"
    );
    assert_eq!(
        fleet.snapshot(),
        before,
        "state changed after a refused manifest"
    );
    assert_eq!(
        fleet.event_count(true),
        security_before + 1,
        "no security event for {reason}"
    );
    // The security event names the attack the refusal stopped.
    let events = fleet
        .db
        .call_blocking(|conn| {
            service::recent_events(
                conn,
                &service::EventFilter {
                    security_only: true,
                    ..Default::default()
                },
                service::Page::newest(1),
            )
        })
        .unwrap();
    let last = events.first().unwrap();
    assert_eq!(last.kind, "manifest_refused");
    assert_eq!(last.attack, Some(attack), "{reason}: {last:?}");
}

#[tokio::test]
async fn refuses_manifests_that_fail_any_check() {
    let fleet = fleet();
    let mut car = fleet.register(VIN, 20).await;
    let accepted = car.factory();
    let (status, _) = fleet.post_manifest(&car, accepted.clone()).await;
    assert_eq!(status, StatusCode::OK);

    // Signed by a key that is not the Primary's.
    let mut forged = car.factory();
    let doc: Value = serde_json::from_slice(&forged).unwrap();
    forged = uptane_core::sign::sign_value(&doc["signed"], &[&key(99)]).unwrap();
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        forged,
        StatusCode::BAD_REQUEST,
        "vehicle manifest",
        AttackKind::ArbitrarySoftware,
    )
    .await;

    // An ECU report whose signature does not match its content.
    car.counter += 1;
    let c = car.counter;
    let mut reports: BTreeMap<EcuSerial, Vec<u8>> = (0..3)
        .map(|i| {
            (
                car.ecus[i].0.clone(),
                car.report(i, b"x", "x.bin", c, &format!("f{i}")),
            )
        })
        .collect();
    let brake = car.ecus[1].0.clone();
    let tampered = String::from_utf8(reports[&brake].clone())
        .unwrap()
        .replace("x.bin", "y.bin");
    reports.insert(brake.clone(), tampered.into_bytes());
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        car.sign_manifest(&reports),
        StatusCode::BAD_REQUEST,
        "report",
        AttackKind::ArbitrarySoftware,
    )
    .await;

    // Replay of the accepted manifest: nonces and counters already seen.
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        accepted,
        StatusCode::BAD_REQUEST,
        "nonce",
        AttackKind::Replay,
    )
    .await;

    // A fresh nonce but an old counter.
    let reports: BTreeMap<EcuSerial, Vec<u8>> = (0..3)
        .map(|i| {
            (
                car.ecus[i].0.clone(),
                car.report(i, b"x", "x.bin", 1, &format!("new{i}")),
            )
        })
        .collect();
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        car.sign_manifest(&reports),
        StatusCode::BAD_REQUEST,
        "counter",
        AttackKind::Rollback,
    )
    .await;

    // A missing ECU.
    let reports: BTreeMap<EcuSerial, Vec<u8>> = (0..2)
        .map(|i| {
            (
                car.ecus[i].0.clone(),
                car.report(i, b"x", "x.bin", 50, &format!("m{i}")),
            )
        })
        .collect();
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        car.sign_manifest(&reports),
        StatusCode::BAD_REQUEST,
        "no version report",
        AttackKind::Malformed,
    )
    .await;

    // An unknown ECU.
    let mut reports: BTreeMap<EcuSerial, Vec<u8>> = (0..3)
        .map(|i| {
            (
                car.ecus[i].0.clone(),
                car.report(i, b"x", "x.bin", 51, &format!("u{i}")),
            )
        })
        .collect();
    let stranger = EcuVersionReport {
        report_type: ECU_REPORT_TYPE.into(),
        ecu_serial: serial("stranger"),
        installed_image: InstalledImage {
            filename: "s".into(),
            length: 1,
            hashes: uptane_core::hash::standard_hashes(b"s"),
            release_counter: 0,
        },
        attacks_detected: vec![],
        latest_time: now(),
        nonce: "s".into(),
        report_counter: 1,
        last_install: None,
    };
    reports.insert(serial("stranger"), stranger.sign(&key(98)).unwrap());
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        car.sign_manifest(&reports),
        StatusCode::BAD_REQUEST,
        "unknown ECU",
        AttackKind::UnknownEcu,
    )
    .await;

    // A report from the future.
    let mut future: BTreeMap<EcuSerial, Vec<u8>> = BTreeMap::new();
    for i in 0..3 {
        let (serial, _, key) = &car.ecus[i];
        let mut report: EcuVersionReport =
            serde_json::from_slice::<Value>(&car.report(i, b"x", "x.bin", 60, &format!("t{i}")))
                .map(|v| serde_json::from_value(v["signed"].clone()).unwrap())
                .unwrap();
        report.latest_time = now() + chrono::Duration::hours(1);
        future.insert(serial.clone(), report.sign(key).unwrap());
    }
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        car.sign_manifest(&future),
        StatusCode::BAD_REQUEST,
        "future",
        AttackKind::TimeTampering,
    )
    .await;

    // Malformed.
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        b"{not json".to_vec(),
        StatusCode::BAD_REQUEST,
        "manifest",
        AttackKind::Malformed,
    )
    .await;
}

#[tokio::test]
async fn reported_attacks_become_security_events() {
    let fleet = fleet();
    let mut car = fleet.register(VIN, 30).await;
    car.counter = 1;
    let mut reports = BTreeMap::new();
    for i in 0..3 {
        let (serial, _, key) = &car.ecus[i];
        let mut report: EcuVersionReport = serde_json::from_value(
            serde_json::from_slice::<Value>(&car.report(i, b"x", "x.bin", 1, &format!("a{i}")))
                .unwrap()["signed"]
                .clone(),
        )
        .unwrap();
        if i == 1 {
            report.attacks_detected = vec![DetectedAttack {
                kind: AttackKind::Rollback,
                detail: "targets version 3 < 4".into(),
            }];
        }
        reports.insert(serial.clone(), report.sign(key).unwrap());
    }
    let (status, outcome) = fleet.post_manifest(&car, car.sign_manifest(&reports)).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(outcome["attacks_reported"], 1);
    let (_, events) = fleet
        .operator("GET", "/api/v1/events?security=true", Value::Null)
        .await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "attack_reported:rollback"
                && e["ecu_serial"] == format!("{VIN}-brake"))
    );

    // The same manifest again is a replay: refused, and counted as such.
    let (status, _) = fleet.post_manifest(&car, car.sign_manifest(&reports)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let metrics = director::metrics::render(&fleet.service).await.unwrap();
    for sample in [
        r#"director_attacks_reported_total{kind="rollback"} 1"#,
        r#"director_manifests_total{outcome="accepted",reason=""} 1"#,
        r#"director_manifests_total{outcome="refused",reason="replay"} 1"#,
        r#"director_http_request_duration_seconds_count{route="/vehicles/{vin}/manifest",method="POST",status="400"} 1"#,
        "director_vehicles 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == sample),
            "{sample} not in\n{metrics}"
        );
    }
    // Metrics are served on their own listener, never beside the API.
    let (status, _, _) = fleet
        .send("GET", "/metrics", Some(&fleet.token), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_ecu_the_primary_declares_unreachable_does_not_block_the_manifest() {
    let fleet = fleet();
    let car = fleet.register(VIN, 35).await;
    let reports: BTreeMap<EcuSerial, Vec<u8>> = (0..2)
        .map(|i| {
            (
                car.ecus[i].0.clone(),
                car.report(i, b"x", "x.bin", 1, &format!("u{i}")),
            )
        })
        .collect();
    let radio = car.ecus[2].0.clone();
    let declare = |unreachable: &[(&str, &str)]| {
        let mut manifest = VehicleVersionManifest::new(&car.vin, &car.ecus[0].0, &reports).unwrap();
        manifest.unreachable_ecus = unreachable
            .iter()
            .map(|(s, r)| (serial(s), r.to_string()))
            .collect();
        manifest.sign(&car.ecus[0].2).unwrap()
    };

    // Declaring a reported ECU, the Primary, or an unknown one unreachable is refused.
    let brake = car.ecus[1].0.clone();
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        declare(&[(radio.as_str(), "offline"), (brake.as_str(), "offline")]),
        StatusCode::BAD_REQUEST,
        "both reported and declared unreachable",
        AttackKind::Malformed,
    )
    .await;
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        declare(&[(radio.as_str(), "offline"), ("ECU-NOBODY", "offline")]),
        StatusCode::BAD_REQUEST,
        "unknown ECU",
        AttackKind::UnknownEcu,
    )
    .await;

    let (status, outcome) = fleet
        .post_manifest(&car, declare(&[(radio.as_str(), "connection refused")]))
        .await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(outcome["unreachable"], json!([radio]));
    assert_eq!(fleet.events_of("ecu_unreachable"), 1);
}

#[tokio::test]
async fn a_vehicle_reaches_only_its_own_metadata_and_manifests() {
    let fleet = fleet();
    let mut car = fleet.register(VIN, 40).await;
    let other = fleet.register("VIN-0002", 50).await;
    let before = fleet.event_count(true);
    let (status, _, _) = fleet
        .send(
            "GET",
            "/vehicles/VIN-0002/metadata/timestamp.json",
            Some(&car.credential),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let manifest = car.factory();
    let (status, _, _) = fleet
        .send(
            "POST",
            "/vehicles/VIN-0002/manifest",
            Some(&car.credential),
            Some(manifest),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The second refusal of the same kind within the refusal window is counted, not a row
    // (`service/refusals.rs`); it is recorded in the window's summary.
    assert_eq!(fleet.event_count(true), before + 1);
    fleet.service.flush_refusals(true).await.unwrap();
    assert_eq!(fleet.event_count(true), before + 2);
    let (status, _, _) = fleet
        .send(
            "GET",
            &format!("/vehicles/{VIN}/metadata/timestamp.json"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = fleet
        .send(
            "GET",
            &format!("/vehicles/{VIN}/metadata/timestamp.json"),
            Some("dvc_forged"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = fleet
        .send(
            "GET",
            "/vehicles/VIN-0002/metadata/timestamp.json",
            Some(&other.credential),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn operator_calls_need_a_token() {
    let fleet = fleet();
    for (method, uri) in [
        ("GET", "/api/v1/vehicles"),
        ("POST", "/api/v1/assignments"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/vehicles"),
    ] {
        let (status, json, _) = fleet.send(method, uri, None, Some(b"{}".to_vec())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(json["error"].is_string());
        let (status, _, _) = fleet
            .send(method, uri, Some("dat_forged"), Some(b"{}".to_vec()))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

#[tokio::test]
async fn refuses_assignments_the_image_repository_does_not_back() {
    let fleet = fleet();
    fleet.register(VIN, 60).await;
    let before = fleet.snapshot();
    let (status, json) = fleet
        .operator(
            "POST",
            "/api/v1/assignments",
            json!({"image": "nonexistent.bin", "vins": [VIN]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
    let (status, json) = fleet
        .operator(
            "POST",
            "/api/v1/assignments",
            json!({"image": "radio-1.bin", "ecus": [format!("{VIN}-brake")]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert!(json["error"].as_str().unwrap().contains("hardware"));
    let (status, _) = fleet
        .operator(
            "POST",
            "/api/v1/assignments",
            json!({"image": "brake-2.bin", "vins": ["NOPE"]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(fleet.snapshot(), before);
}

#[tokio::test]
async fn refuses_malformed_and_oversized_json() {
    let fleet = fleet();
    let (status, json, _) = fleet
        .send(
            "POST",
            "/api/v1/vehicles",
            Some(&fleet.token),
            Some(b"{\"vin\": 5".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().contains("malformed JSON"));
    let big = format!("{{\"vin\": \"{}\", \"ecus\": []}}", "x".repeat(100_000));
    let (status, json, _) = fleet
        .send(
            "POST",
            "/api/v1/vehicles",
            Some(&fleet.token),
            Some(big.into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    let (status, json) = fleet
        .operator(
            "POST",
            "/api/v1/vehicles",
            json!({"vin": "bad vin!", "ecus": []}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(fleet.snapshot(), "");
    assert_eq!(fleet.events_of("registration_refused"), 3);
}

/// The operator's cancel: `POST /api/v1/assignments/ID/cancel`, with its answer.
async fn cancel(fleet: &Fleet, id: &str) -> (StatusCode, Value) {
    fleet
        .operator(
            "POST",
            &format!("/api/v1/assignments/{id}/cancel"),
            Value::Null,
        )
        .await
}

/// Assigns `brake-2.bin` to the vehicle; its correlation id.
async fn assign_brake(fleet: &Fleet) -> String {
    let (status, json) = fleet
        .operator(
            "POST",
            "/api/v1/assignments",
            json!({"image": "brake-2.bin", "vins": [VIN]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    json["correlation_id"].as_str().unwrap().to_string()
}

/// The vehicle's brake entry of assignment `id`.
async fn brake_entry(fleet: &Fleet, id: &str) -> Value {
    fleet
        .entries(&VIN.parse().unwrap())
        .await
        .into_iter()
        .find(|e| e["correlation_id"] == id)
        .unwrap()
}

/// The vehicle's brake reporting its factory image, and this last install.
fn brake_says(car: &mut Vehicle, last: Option<(&str, InstallResult)>) -> Vec<u8> {
    match last {
        Some((id, result)) => {
            car.last_install.insert(
                1,
                LastInstall {
                    correlation_id: id.into(),
                    result,
                    detail: "the ECU's words".into(),
                },
            );
        }
        None => {
            car.last_install.remove(&1);
        }
    }
    car.factory()
}

/// The Director's online keys under root version 1, to sign with outside the service.
fn active_keys() -> director::service::rotation::ActiveKeys {
    director::service::rotation::ActiveKeys {
        root_version: 1,
        online: director::keys::OnlineKeys {
            targets: key(1),
            snapshot: key(2),
            timestamp: key(3),
        },
    }
}

/// A vehicle's metadata is signed on a read connection and stored by the writer after: an
/// operator's cancel in between found nothing of the entry in the served targets and made
/// it final, so metadata listing it must not be stored (the vehicle would install an update
/// the operator sees as cancelled). The writer reads the vehicle's count of entry changes
/// again after the row lock.
#[tokio::test]
async fn metadata_signed_before_a_cancel_is_not_stored_after_it() {
    use director::service::metadata;
    let fleet = fleet();
    let _car = fleet.register(VIN, 70).await;
    let id = assign_brake(&fleet).await;
    let active = active_keys();
    let signed = fleet
        .db
        .call_blocking(|conn| {
            metadata::sign_vehicle_metadata(conn, &active, VIN, &service::Policy::default(), now())
        })
        .unwrap()
        .expect("the assignment makes the vehicle's metadata not current");
    let (status, json) = cancel(&fleet, &id).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json, json!({"cancelled": 1, "cancel_requested": 0}));
    let stored = fleet
        .db
        .call_blocking(|conn| metadata::store_vehicle_metadata(conn, &signed))
        .unwrap();
    assert!(!stored, "metadata listing a cancelled entry was stored");
    assert_eq!(brake_entry(&fleet, &id).await["status"], "cancelled");
}

/// As a cancel, an assignment made or a time reset requested between the signing and the
/// store leaves the signed metadata unstored: it would serve the vehicle targets without the
/// new entry, or without the reset, under versions that then count as current. The writer
/// reads the vehicle's count of entry changes and its reset after the row lock.
#[tokio::test]
async fn metadata_signed_before_an_assignment_or_a_time_reset_is_not_stored_after_it() {
    use director::service::metadata;
    let fleet = fleet();
    let _car = fleet.register(VIN, 73).await;
    let active = active_keys();
    let sign = || {
        fleet
            .db
            .call_blocking(|conn| {
                metadata::sign_vehicle_metadata(
                    conn,
                    &active,
                    VIN,
                    &service::Policy::default(),
                    now(),
                )
            })
            .unwrap()
            .expect("no metadata stored yet, or its content changed")
    };
    let store = |signed| {
        fleet
            .db
            .call_blocking(|conn| metadata::store_vehicle_metadata(conn, &signed))
            .unwrap()
    };
    let before_assignment = sign();
    assign_brake(&fleet).await;
    assert!(
        !store(before_assignment),
        "metadata without a new assignment was stored after it"
    );
    let before_reset = sign();
    let (status, body) = fleet
        .operator(
            "POST",
            &format!("/api/v1/vehicles/{VIN}/time-reset"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !store(before_reset),
        "metadata without a time reset was stored after it"
    );
    // Signed after both: stored.
    assert!(store(sign()));
}

#[tokio::test]
async fn a_cancel_ends_undelivered_entries_and_withdraws_delivered_ones_until_the_ecu_says() {
    let fleet = fleet();
    let mut car = fleet.register(VIN, 70).await;
    // Not delivered yet: cancelled at once.
    let first = assign_brake(&fleet).await;
    let (status, json) = cancel(&fleet, &first).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json, json!({"cancelled": 1, "cancel_requested": 0}));
    assert_eq!(brake_entry(&fleet, &first).await["status"], "cancelled");

    // Delivered: the entry stays open, with the request noted, and leaves the targets.
    let id = assign_brake(&fleet).await;
    fleet.deliver(&car).await;
    let (status, json) = cancel(&fleet, &id).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json, json!({"cancelled": 0, "cancel_requested": 1}));
    let entry = brake_entry(&fleet, &id).await;
    assert_eq!(entry["status"], "delivered");
    assert!(entry["cancel_requested_at"].is_string(), "{entry}");
    assert!(entry["withdrawn_at"].is_null(), "{entry}");
    let (status, json) = cancel(&fleet, &id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("no open entries"),
        "{json}"
    );

    // A report from before the vehicle saw the withdrawal closes nothing.
    let manifest = brake_says(&mut car, None);
    let (status, outcome) = fleet.post_manifest(&car, manifest).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(brake_entry(&fleet, &id).await["status"], "delivered");

    fleet.deliver(&car).await;
    let (_, timestamp) = fetch(&fleet, &car, "timestamp.json").await;
    let version = |bytes: &[u8], file: &str| {
        let doc: Value = serde_json::from_slice(bytes).unwrap();
        doc["signed"]["meta"][file]["version"].as_u64().unwrap()
    };
    let (_, snapshot) = fetch(
        &fleet,
        &car,
        &format!("{}.snapshot.json", version(&timestamp, "snapshot.json")),
    )
    .await;
    let (_, targets) = fetch(
        &fleet,
        &car,
        &format!("{}.targets.json", version(&snapshot, "targets.json")),
    )
    .await;
    assert!(!String::from_utf8(targets).unwrap().contains("brake-2.bin"));
    assert!(brake_entry(&fleet, &id).await["withdrawn_at"].is_string());
    assert_eq!(fleet.events_of("assignment_withdrawn"), 1);

    // Still in progress at the ECU: open. Abandoned by the ECU: cancelled.
    let (_, outcome) = {
        let manifest = brake_says(&mut car, Some((&id, InstallResult::InProgress)));
        fleet.post_manifest(&car, manifest).await
    };
    assert_eq!(outcome["cancelled"], json!([]), "{outcome}");
    assert_eq!(brake_entry(&fleet, &id).await["status"], "delivered");
    let (_, outcome) = {
        let manifest = brake_says(&mut car, Some((&id, InstallResult::Cancelled)));
        fleet.post_manifest(&car, manifest).await
    };
    assert_eq!(outcome["cancelled"], json!([format!("{id}:{VIN}-brake")]));
    let entry = brake_entry(&fleet, &id).await;
    assert_eq!(entry["status"], "cancelled");
    assert!(
        entry["detail"]
            .as_str()
            .unwrap()
            .contains("the ECU abandoned it"),
        "{entry}"
    );
}

#[tokio::test]
async fn a_withdrawn_entry_the_ecu_never_started_is_closed_by_its_next_report() {
    let fleet = fleet();
    let mut car = fleet.register(VIN, 71).await;
    let id = assign_brake(&fleet).await;
    fleet.deliver(&car).await;
    cancel(&fleet, &id).await;
    fleet.deliver(&car).await;
    // The ECU's last install is of another update: it never started this one.
    let (status, outcome) = {
        let manifest = brake_says(&mut car, Some(("asg-older", InstallResult::Installed)));
        fleet.post_manifest(&car, manifest).await
    };
    assert_eq!(status, StatusCode::OK, "{outcome}");
    let entry = brake_entry(&fleet, &id).await;
    assert_eq!(entry["status"], "cancelled", "{entry}");
    assert!(
        entry["detail"]
            .as_str()
            .unwrap()
            .contains("had not started it")
    );
}

#[tokio::test]
async fn a_cancel_that_comes_after_the_install_ends_installed_saying_so() {
    let fleet = fleet();
    let mut car = fleet.register(VIN, 72).await;
    let id = assign_brake(&fleet).await;
    fleet.deliver(&car).await;
    cancel(&fleet, &id).await;
    let manifest = car.manifest(&[
        (b"gw 1", "gw-1.bin"),
        (BRAKE_FW, "brake-2.bin"),
        (b"radio 0", "radio-0.bin"),
    ]);
    let (_, outcome) = fleet.post_manifest(&car, manifest).await;
    assert_eq!(
        outcome["installed"].as_array().unwrap().len(),
        1,
        "{outcome}"
    );
    let entry = brake_entry(&fleet, &id).await;
    assert_eq!(entry["status"], "installed");
    assert!(
        entry["detail"].as_str().unwrap().contains("came too late"),
        "{entry}"
    );
}

#[tokio::test]
async fn serving_targets_delivers_only_the_entries_signed_into_them() {
    let fleet = fleet();
    let car = fleet.register(VIN, 75).await;
    let (_, brake) = fleet
        .operator(
            "POST",
            "/api/v1/assignments",
            json!({"image": "brake-2.bin", "vins": [VIN]}),
        )
        .await;
    // The vehicle's timestamp request signs targets v1 with the brake assignment ...
    fetch(&fleet, &car, "timestamp.json").await;
    // ... then an operator assigns the radio, after that version was signed ...
    let (_, radio) = fleet
        .operator(
            "POST",
            "/api/v1/assignments",
            json!({"image": "radio-1.bin", "vins": [VIN]}),
        )
        .await;
    // ... and the vehicle fetches targets v1, which does not contain it.
    let (status, targets) = fetch(&fleet, &car, "1.targets.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!String::from_utf8(targets).unwrap().contains("radio-1.bin"));
    let (_, entries) = fleet
        .operator(
            "GET",
            &format!("/api/v1/assignments?vin={VIN}"),
            Value::Null,
        )
        .await;
    let status_of = |id: &Value| {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["correlation_id"] == *id)
            .map(|e| e["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status_of(&brake["correlation_id"]), "delivered");
    assert_eq!(status_of(&radio["correlation_id"]), "pending");
    // Still cancellable, since the vehicle has not seen it.
    let (status, _) = fleet
        .operator(
            "POST",
            &format!(
                "/api/v1/assignments/{}/cancel",
                radio["correlation_id"].as_str().unwrap()
            ),
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_provisioning_token_lifetime_out_of_range_is_a_400_not_a_panic() {
    let fleet = fleet();
    for secs in [0i64, -1, 366 * 86_400 + 1, i64::MAX] {
        let (status, json) = fleet
            .operator(
                "POST",
                "/api/v1/provisioning-tokens",
                json!({"label": "x", "expires_in_secs": secs}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{secs}: {json}");
        let message = json["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("expires_in_secs must be between 1 and"),
            "{json}"
        );
    }
    let (status, json) = fleet
        .operator(
            "POST",
            "/api/v1/provisioning-tokens",
            json!({"label": "x", "one_time": true, "max_uses": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
}

#[tokio::test]
async fn primaries_register_with_provisioning_tokens() {
    let fleet = fleet();
    let (status, json) = fleet
        .operator(
            "POST",
            "/api/v1/provisioning-tokens",
            json!({"label": "line-1", "one_time": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = json["token"].as_str().unwrap().to_string();
    let body = |vin: &str| {
        serde_json::to_vec(&json!({"vin": vin, "ecus": [{"serial": format!("{vin}-gw"), "hardware_id": "hw-gateway", "public_key": key(80).public_key().to_json(), "primary": true}]})).unwrap()
    };
    let (status, json, _) = fleet
        .send(
            "POST",
            "/api/v1/register",
            Some(&token),
            Some(body("VIN-P1")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let (status, _, _) = fleet
        .send(
            "POST",
            "/api/v1/register",
            Some(&token),
            Some(body("VIN-P2")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, json) = fleet
        .operator(
            "POST",
            "/api/v1/provisioning-tokens",
            json!({"label": "fleet"}),
        )
        .await;
    let fleet_token = json["token"].as_str().unwrap().to_string();
    let (status, _) = fleet
        .operator(
            "POST",
            "/api/v1/provisioning-tokens/fleet/revoke",
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = fleet
        .send(
            "POST",
            "/api/v1/register",
            Some(&fleet_token),
            Some(body("VIN-P3")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn replacing_an_ecu_is_logged_and_cancels_its_open_assignment() {
    let fleet = fleet();
    fleet.register(VIN, 90).await;
    let (_, assigned) = fleet
        .operator(
            "POST",
            "/api/v1/assignments",
            json!({"image": "brake-2.bin", "vins": [VIN]}),
        )
        .await;
    assert_eq!(assigned["ecus"][0]["status"], "pending");
    let body = json!({"serial": "VIN-0001-brake-v2", "hardware_id": "hw-brake", "public_key": key(95).public_key().to_json()});
    let (status, json) = fleet
        .operator(
            "PUT",
            &format!("/api/v1/vehicles/{VIN}/ecus/{VIN}-brake"),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let (_, vehicle) = fleet
        .operator("GET", &format!("/api/v1/vehicles/{VIN}"), Value::Null)
        .await;
    let serials: Vec<&str> = vehicle["ecus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["serial"].as_str().unwrap())
        .collect();
    assert!(serials.contains(&"VIN-0001-brake-v2") && !serials.contains(&"VIN-0001-brake"));
    assert_eq!(vehicle["assignments"][0]["status"], "cancelled");
    assert_eq!(fleet.events_of("ecu_replaced"), 1);
    // An unknown ECU cannot be replaced.
    let body =
        json!({"serial": "X", "hardware_id": "hw", "public_key": key(96).public_key().to_json()});
    let (status, _) = fleet
        .operator("PUT", &format!("/api/v1/vehicles/{VIN}/ecus/nope"), body)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The Director's part of the time model (docs/SECURITY.md, "Time"): its targets state when
/// it signed them; an operator's time reset is signed into the vehicle's next targets; a report
/// time that goes back is a security event, and the manifest still counts.
#[tokio::test]
async fn the_director_states_its_signing_time_signs_resets_and_records_times_going_back() {
    let fleet = fleet();
    let mut car = fleet.register(VIN, 40).await;
    let custom =
        |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap()["signed"]["custom"].clone();
    let (status, _) = fetch(&fleet, &car, "timestamp.json").await;
    assert_eq!(status, StatusCode::OK);
    let (_, targets) = fetch(&fleet, &car, "1.targets.json").await;
    let first = custom(&targets);
    let signed_at = uptane_core::time::parse_expires(first["signedAt"].as_str().unwrap()).unwrap();
    assert!((now() - signed_at).num_seconds().abs() < 60, "{first}");
    assert!(first.get("timeReset").is_none(), "{first}");

    // Only an operator asks, and only for a vehicle that exists.
    let (status, _, _) = fleet
        .send(
            "POST",
            &format!("/api/v1/vehicles/{VIN}/time-reset"),
            Some(&car.credential),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = fleet
        .operator(
            "POST",
            "/api/v1/vehicles/NO-SUCH-VIN/time-reset",
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = fleet
        .operator(
            "POST",
            &format!("/api/v1/vehicles/{VIN}/time-reset"),
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["time_reset"], 1);
    assert_eq!(fleet.events_of("time_reset_requested"), 1);
    // The next targets carry it, at once (a new version, though no assignment changed).
    fetch(&fleet, &car, "timestamp.json").await;
    let (status, targets) = fetch(&fleet, &car, "2.targets.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(custom(&targets)["timeReset"], 1);

    // A report time earlier than the ECU's last: recorded as time tampering, manifest kept.
    let factory = car.factory();
    let (status, outcome) = fleet.post_manifest(&car, factory).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(fleet.events_of("report_time_went_back"), 0);
    car.counter += 1;
    let mut reports = BTreeMap::new();
    for i in 0..3 {
        let (serial, _, key) = &car.ecus[i];
        let mut report: EcuVersionReport = serde_json::from_value(
            serde_json::from_slice::<Value>(&car.report(
                i,
                b"gw 1",
                "gw-1.bin",
                car.counter,
                &format!("b{i}"),
            ))
            .unwrap()["signed"]
                .clone(),
        )
        .unwrap();
        if i == 2 {
            report.latest_time = now() - chrono::Duration::days(3);
        }
        reports.insert(serial.clone(), report.sign(key).unwrap());
    }
    let (status, outcome) = fleet.post_manifest(&car, car.sign_manifest(&reports)).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    let (_, events) = fleet
        .operator("GET", "/api/v1/events?security=true", Value::Null)
        .await;
    let went_back: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "report_time_went_back")
        .collect();
    assert_eq!(went_back.len(), 1, "{events}");
    assert_eq!(went_back[0]["ecu_serial"], format!("{VIN}-radio"));
    assert_eq!(went_back[0]["attack"], "time_tampering");
    assert!(
        went_back[0]["detail"]
            .as_str()
            .unwrap()
            .contains("is earlier than its last report's"),
        "{}",
        went_back[0]
    );
}

/// A body that stops arriving is cut off with 408 (time is paused and jumps ahead when
/// everything waits); one announced larger than the cap is refused before it is read.
#[tokio::test(start_paused = true)]
async fn a_stalled_or_oversized_body_is_refused() {
    let fleet = fleet();
    let car = fleet.register(VIN, 60).await;
    let stalled = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let request = Request::builder()
        .method("POST")
        .uri(format!("/vehicles/{VIN}/manifest"))
        .header(header::AUTHORIZATION, format!("Bearer {}", car.credential))
        .body(Body::from_stream(stalled))
        .unwrap();
    let response = fleet.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    // An operator's JSON above its cap: 413 naming the cap.
    let (status, body, _) = fleet
        .send(
            "POST",
            "/api/v1/vehicles",
            Some(&fleet.token),
            Some(vec![b' '; 64 * 1024 + 1]),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "body larger than 65536 bytes");
}

/// Past the retention period a report's nonce is swept; a replay of the manifest that
/// carried it is refused all the same, by the ECUs' report counters (Uptane §5.3.2.1 step 4,
/// "nonce or counter").
#[tokio::test]
async fn a_manifest_replayed_after_its_nonces_were_swept_is_refused_by_its_counters() {
    let fleet = fleet();
    let mut car = fleet.register(VIN, 91).await;
    let accepted = car.factory();
    let (status, json) = fleet.post_manifest(&car, accepted.clone()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    // The brake unit is "replaced" by itself (same serial, same key): the same unit, whose
    // counter goes on, so it keeps the last one accepted.
    let body = json!({"serial": format!("{VIN}-brake"), "hardware_id": "hw-brake",
                      "public_key": key(92).public_key().to_json()});
    let (status, json) = fleet
        .operator(
            "PUT",
            &format!("/api/v1/vehicles/{VIN}/ecus/{VIN}-brake"),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let later = now() + chrono::Duration::days(400);
    let swept = fleet
        .service
        .db()
        .call(move |conn| service::retention::sweep(conn, chrono::Duration::days(365), later))
        .await
        .unwrap();
    assert_eq!(swept.nonces, 3, "{swept:?}");
    assert_manifest_refused(
        &fleet,
        &car,
        VIN,
        accepted,
        StatusCode::BAD_REQUEST,
        "report counter",
        AttackKind::Rollback,
    )
    .await;
}

/// A write that failed part way (here a database error while a manifest is recorded) may
/// have kept some of its writes, so nothing cached is trusted after it: another vehicle's
/// next request is answered from the database, not from the cache. (On PostgreSQL, where
/// replicas write beside each other, there is no cache.)
#[tokio::test]
async fn a_write_that_fails_with_a_database_error_empties_the_vehicle_cache() {
    let fleet = fleet();
    let cached = fleet.register("VIN-CACHED", 101).await;
    let mut failing = fleet.register("VIN-FAILING", 105).await;
    for _ in 0..2 {
        let (status, _) = fetch(&fleet, &cached, "timestamp.json").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (hits, _) = fleet.service.cache_hits_and_misses();
    let (status, _) = fetch(&fleet, &cached, "timestamp.json").await;
    assert_eq!(status, StatusCode::OK);
    let engine = fleet
        .service
        .db()
        .call(|conn| Ok::<_, director::error::DirectorError>(conn.engine()))
        .await
        .unwrap();
    if engine == director::sql::Engine::Postgres {
        // Replicas write beside each other there, so there is no cache to empty.
        assert_eq!(
            fleet.service.cache_hits_and_misses().0,
            0,
            "a cache on PostgreSQL"
        );
        return;
    }
    assert!(
        fleet.service.cache_hits_and_misses().0 > hits,
        "the vehicle is answered from the cache"
    );
    // Every manifest of the failing vehicle now fails as the database records it.
    fleet
        .service
        .db()
        .call(|conn| {
            let sql = match conn.engine() {
                director::sql::Engine::Sqlite => vec![
                    "CREATE TRIGGER fail_one BEFORE INSERT ON manifests WHEN NEW.vin = 'VIN-FAILING'
                     BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
                ],
                director::sql::Engine::Postgres => vec![
                    "CREATE FUNCTION fail_one() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN RAISE EXCEPTION 'injected failure'; END $$",
                    "CREATE TRIGGER fail_one BEFORE INSERT ON manifests FOR EACH ROW
                     WHEN (NEW.vin = 'VIN-FAILING') EXECUTE FUNCTION fail_one()",
                ],
            };
            for statement in sql {
                conn.execute(statement, &[])?;
            }
            Ok::<_, director::error::DirectorError>(())
        })
        .await
        .unwrap();
    let factory = failing.factory();
    let (status, json) = fleet.post_manifest(&failing, factory).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{json}");
    let (hits, misses) = fleet.service.cache_hits_and_misses();
    let (status, _) = fetch(&fleet, &cached, "timestamp.json").await;
    assert_eq!(status, StatusCode::OK);
    let after = fleet.service.cache_hits_and_misses();
    assert_eq!(
        after.0, hits,
        "answered from the cache after a failed write"
    );
    assert!(after.1 > misses);
}

/// A cancel that lands between the vehicle's timestamp request (which signed targets with the
/// entry) and its targets fetch: the entry may still reach the ECU, so it is withdrawn like a
/// delivered one, not ended as if the vehicle could never see it.
#[tokio::test]
async fn a_cancel_of_an_entry_already_signed_for_the_vehicle_withdraws_it() {
    let fleet = fleet();
    let car = fleet.register(VIN, 73).await;
    let id = assign_brake(&fleet).await;
    fetch(&fleet, &car, "timestamp.json").await;
    assert_eq!(brake_entry(&fleet, &id).await["status"], "pending");
    let (status, json) = cancel(&fleet, &id).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json, json!({"cancelled": 0, "cancel_requested": 1}));
    let entry = brake_entry(&fleet, &id).await;
    assert_eq!(entry["status"], "delivered", "{entry}");
    assert!(entry["cancel_requested_at"].is_string(), "{entry}");
}
