//! Groups and campaigns through the operator API: the campaign state machine driven by
//! real manifests, with the time of each step injected (`campaign_tick_at`), never waited for.

#![allow(clippy::unwrap_used)] // test support code outside #[test] functions

mod common;

use axum::http::StatusCode;
use chrono::Timelike;
use common::*;
use serde_json::{Value, json};
use uptane_core::manifest::{InstallResult, LastInstall};
use uptane_core::time::UtcTime;

fn now() -> UtcTime {
    std::time::SystemTime::now().into()
}

/// Registers `n` vehicles named `VIN-{prefix}{i}`, each with its factory manifest recorded.
async fn cars(fleet: &Fleet, prefix: &str, n: usize, seed: u8) -> Vec<Vehicle> {
    let mut cars = Vec::new();
    for i in 0..n {
        let mut car = fleet
            .register(&format!("VIN-{prefix}{i:03}"), seed + 3 * i as u8)
            .await;
        let factory = car.factory();
        let (status, json) = fleet.post_manifest(&car, factory).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        cars.push(car);
    }
    cars
}

async fn ok(fleet: &Fleet, method: &str, uri: &str, body: Value) -> Value {
    let (status, json) = fleet.operator(method, uri, body).await;
    assert!(status.is_success(), "{method} {uri}: {status} {json}");
    json
}

async fn refused(fleet: &Fleet, method: &str, uri: &str, body: Value, want: StatusCode) -> String {
    let (status, json) = fleet.operator(method, uri, body).await;
    assert_eq!(status, want, "{method} {uri}: {json}");
    json["error"].as_str().unwrap_or_default().to_string()
}

async fn campaign(fleet: &Fleet, name: &str) -> Value {
    ok(
        fleet,
        "GET",
        &format!("/api/v1/campaigns/{name}"),
        Value::Null,
    )
    .await
}

/// The campaign's vehicles whose outcome is `outcome`.
async fn with_outcome(fleet: &Fleet, name: &str, outcome: &str) -> Vec<String> {
    let vehicles = ok(
        fleet,
        "GET",
        &format!("/api/v1/campaigns/{name}/vehicles"),
        Value::Null,
    )
    .await;
    vehicles
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["outcome"] == outcome)
        .map(|v| v["vin"].as_str().unwrap().to_string())
        .collect()
}

fn car<'a>(cars: &'a mut [Vehicle], vin: &str) -> &'a mut Vehicle {
    cars.iter_mut().find(|c| c.vin.as_str() == vin).unwrap()
}

/// `car` reports the brake image installed.
async fn install_brake(fleet: &Fleet, car: &mut Vehicle) {
    let manifest = car.manifest(&[
        (b"gw 1", "gw-1.bin"),
        (BRAKE_FW, "brake-2.bin"),
        (b"radio 0", "radio-0.bin"),
    ]);
    let (status, json) = fleet.post_manifest(car, manifest).await;
    assert_eq!(status, StatusCode::OK, "{json}");
}

/// `car`'s brake ECU reports its trial boot of assignment `correlation_id` failed.
async fn fail_brake(fleet: &Fleet, car: &mut Vehicle) {
    let entry = fleet.entries(&car.vin).await[0].clone();
    car.last_install.insert(
        1,
        LastInstall {
            correlation_id: entry["correlation_id"].as_str().unwrap().to_string(),
            result: InstallResult::RolledBack,
            detail: "the new image failed its trial boot".into(),
        },
    );
    let factory = car.factory();
    car.last_install.clear();
    let (status, json) = fleet.post_manifest(car, factory).await;
    assert_eq!(status, StatusCode::OK, "{json}");
}

fn pending(entries: &[Value]) -> usize {
    entries.iter().filter(|e| e["status"] == "pending").count()
}

#[tokio::test]
async fn a_wave_past_its_threshold_pauses_resume_goes_on_and_abort_cancels_every_entry() {
    let fleet = fleet();
    let mut cars = cars(&fleet, "P", 10, 10).await;
    ok(
        &fleet,
        "POST",
        "/api/v1/groups",
        json!({"name": "brakes", "filter": {"hardware_ids": ["hw-brake"]}}),
    )
    .await;
    let created = ok(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "brakes-2", "images": ["brake-2.bin"], "group": "brakes",
               "waves": ["20%", "100%"], "max_failure_ratio": "10%"}),
    )
    .await;
    assert_eq!(created["state"], "draft");
    assert!(
        fleet.entries(&cars[0].vin).await.is_empty(),
        "a draft delivers nothing"
    );

    let started = ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/brakes-2/start",
        Value::Null,
    )
    .await;
    assert_eq!(started["state"], "running");
    assert_eq!(started["progress"][0]["vehicles"], 2);
    assert_eq!(started["progress"][0]["installing"], 2);
    let wave1 = with_outcome(&fleet, "brakes-2", "installing").await;
    assert_eq!(wave1.len(), 2);
    assert_eq!(
        with_outcome(&fleet, "brakes-2", "not_picked").await.len(),
        8
    );

    // The first vehicle of the wave takes the update and fails its trial boot; the second
    // has not fetched its metadata yet.
    fleet.deliver(car(&mut cars, &wave1[0])).await;
    fail_brake(&fleet, car(&mut cars, &wave1[0])).await;
    fleet.service.campaign_tick().await.unwrap();
    let paused = campaign(&fleet, "brakes-2").await;
    assert_eq!(paused["state"], "paused", "{paused}");
    assert!(
        paused["reason"]
            .as_str()
            .unwrap()
            .contains("wave 1: 1 of 2 vehicles failed, more than 10%"),
        "{paused}"
    );
    // What was not delivered was withdrawn, and nothing more is assigned while paused.
    let second = fleet.entries(&car(&mut cars, &wave1[1]).vin).await;
    assert_eq!(second[0]["status"], "cancelled");
    assert_eq!(second[0]["detail"], "campaign brakes-2 paused");
    fleet.service.campaign_tick().await.unwrap();
    for car in &cars {
        assert_eq!(pending(&fleet.entries(&car.vin).await), 0, "{}", car.vin);
    }
    assert_eq!(fleet.events_of("campaign_paused"), 1);

    // Resumed past that failure: the withdrawn vehicle is assigned again and installs, and
    // the wave is finished, so the second starts (no soak time).
    let resumed = ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/brakes-2/resume",
        Value::Null,
    )
    .await;
    assert_eq!(resumed["state"], "running");
    assert_eq!(
        pending(&fleet.entries(&car(&mut cars, &wave1[1]).vin).await),
        1
    );
    fleet.deliver(car(&mut cars, &wave1[1])).await;
    install_brake(&fleet, car(&mut cars, &wave1[1])).await;
    fleet.service.campaign_tick().await.unwrap();
    let wave2 = campaign(&fleet, "brakes-2").await;
    assert_eq!(wave2["current_wave"], 2, "{wave2}");
    assert_eq!(wave2["progress"][0]["installed"], 1);
    assert_eq!(wave2["progress"][0]["failed"], 1);
    assert_eq!(wave2["progress"][1]["installing"], 8);
    assert_eq!(fleet.events_of("campaign_wave_started"), 1);

    // Three of the eight fetch their metadata; then the operator aborts.
    let installing = with_outcome(&fleet, "brakes-2", "installing").await;
    for vin in &installing[..3] {
        fleet.deliver(car(&mut cars, vin)).await;
    }
    let aborted = ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/brakes-2/abort",
        json!({"reason": "wrong calibration"}),
    )
    .await;
    assert_eq!(aborted["state"], "aborted");
    assert_eq!(aborted["reason"], "wrong calibration");
    assert_eq!(aborted["progress"][1]["installing"], 3, "{aborted}");
    assert_eq!(aborted["progress"][1]["cancelled"], 5, "{aborted}");
    // Delivered entries are asked to cancel: left out of the next targets, ended on the
    // ECU's word.
    for vin in &installing[..3] {
        let entry = &fleet.entries(&car(&mut cars, vin).vin).await[0];
        assert_eq!(entry["status"], "delivered");
        assert!(entry["cancel_requested_at"].is_string(), "{entry}");
    }
    for vin in &installing[3..] {
        let entries = fleet.entries(&car(&mut cars, vin).vin).await;
        assert_eq!(entries[0]["status"], "cancelled");
        assert_eq!(entries[0]["detail"], "campaign brakes-2 aborted");
    }
    let error = refused(
        &fleet,
        "POST",
        "/api/v1/campaigns/brakes-2/resume",
        Value::Null,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(error, "campaign brakes-2 is aborted: it cannot be resumed");
}

/// A vehicle that fetched its timestamp was served targets signed with its entry, and may
/// install it whatever the campaign does before it fetches them. A pause leaves such an entry
/// to run, as it leaves a delivered one; an abort cancels it as an operator's cancel does
/// (withdrawn from the vehicle's next targets, ended on the ECU's word), never showing it
/// cancelled while the vehicle may install it.
#[tokio::test]
async fn a_pause_leaves_an_entry_already_signed_for_its_vehicle_and_an_abort_withdraws_it() {
    let fleet = fleet();
    let mut cars = cars(&fleet, "S", 3, 150).await;
    ok(
        &fleet,
        "POST",
        "/api/v1/groups",
        json!({"name": "s", "vins": ["VIN-S000", "VIN-S001", "VIN-S002"]}),
    )
    .await;
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "signed", "images": ["brake-2.bin"], "group": "s"}),
    )
    .await;
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/signed/start",
        Value::Null,
    )
    .await;
    for car in &cars {
        assert_eq!(pending(&fleet.entries(&car.vin).await), 1, "{}", car.vin);
    }
    let version = |bytes: Vec<u8>| -> u64 {
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        doc["signed"]["version"].as_u64().unwrap()
    };
    let (status, timestamp) = fetch(&fleet, &cars[0], "timestamp.json").await;
    assert_eq!(status, StatusCode::OK);
    let first = version(timestamp);

    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/signed/pause",
        Value::Null,
    )
    .await;
    assert_eq!(pending(&fleet.entries(&cars[0].vin).await), 1);
    let (_, timestamp) = fetch(&fleet, &cars[0], "timestamp.json").await;
    assert_eq!(version(timestamp), first, "nothing of it was signed again");
    for car in &cars[1..] {
        let entries = fleet.entries(&car.vin).await;
        assert_eq!(entries[0]["status"], "cancelled", "{}", car.vin);
        assert_eq!(entries[0]["detail"], "campaign signed paused");
    }
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/signed/resume",
        Value::Null,
    )
    .await;
    let (status, _) = fetch(&fleet, &cars[1], "timestamp.json").await;
    assert_eq!(status, StatusCode::OK);

    let aborted = ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/signed/abort",
        Value::Null,
    )
    .await;
    assert_eq!(aborted["progress"][0]["installing"], 2, "{aborted}");
    assert_eq!(aborted["progress"][0]["cancelled"], 1, "{aborted}");
    assert_eq!(
        fleet.entries(&cars[2].vin).await[0]["detail"],
        "campaign signed aborted"
    );
    for car in &cars[..2] {
        let entry = &fleet.entries(&car.vin).await[0];
        assert_eq!(entry["status"], "delivered", "{entry}");
        assert!(entry["cancel_requested_at"].is_string(), "{entry}");
    }
    // The first vehicle's next targets leave the entry out, and its ECU, which never
    // started it, ends it.
    let (_, timestamp) = fetch(&fleet, &cars[0], "timestamp.json").await;
    assert!(version(timestamp) > first);
    fleet.deliver(&cars[0]).await;
    let factory = car(&mut cars, "VIN-S000").factory();
    let (status, json) = fleet.post_manifest(&cars[0], factory).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let entry = &fleet.entries(&cars[0].vin).await[0];
    assert_eq!(entry["status"], "cancelled", "{entry}");
}

/// A pause takes a vehicle back whole: one whose other entry ended without it (its radio
/// replaced) waits again and is assigned again on resume, instead of staying "assigned" with
/// every entry cancelled.
#[tokio::test]
async fn a_pause_takes_a_vehicle_back_whole_even_with_an_entry_already_ended() {
    let fleet = fleet();
    let cars = cars(&fleet, "R", 1, 170).await;
    ok(
        &fleet,
        "POST",
        "/api/v1/groups",
        json!({"name": "r", "vins": ["VIN-R000"]}),
    )
    .await;
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "both", "images": ["brake-2.bin", "radio-1.bin"], "group": "r"}),
    )
    .await;
    ok(&fleet, "POST", "/api/v1/campaigns/both/start", Value::Null).await;
    assert_eq!(pending(&fleet.entries(&cars[0].vin).await), 2);
    // The radio is replaced: its entry ends.
    let body = json!({"serial": "VIN-R000-radio-v2", "hardware_id": "hw-radio",
                      "public_key": uptane_core::testing::key(179).public_key().to_json()});
    ok(
        &fleet,
        "PUT",
        "/api/v1/vehicles/VIN-R000/ecus/VIN-R000-radio",
        body,
    )
    .await;
    assert_eq!(pending(&fleet.entries(&cars[0].vin).await), 1);
    ok(&fleet, "POST", "/api/v1/campaigns/both/pause", Value::Null).await;
    assert_eq!(pending(&fleet.entries(&cars[0].vin).await), 0);
    assert_eq!(with_outcome(&fleet, "both", "waiting").await, ["VIN-R000"]);
    ok(&fleet, "POST", "/api/v1/campaigns/both/resume", Value::Null).await;
    let entries = fleet.entries(&cars[0].vin).await;
    assert_eq!(pending(&entries), 2, "{entries:?}");
}

#[tokio::test]
async fn retry_failed_assigns_the_failed_vehicles_again() {
    let fleet = fleet();
    let mut cars = cars(&fleet, "R", 2, 40).await;
    ok(
        &fleet,
        "POST",
        "/api/v1/groups",
        json!({"name": "two", "vins": ["VIN-R000", "VIN-R001"]}),
    )
    .await;
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "tolerant", "images": ["brake-2.bin"], "group": "two",
               "max_failure_ratio": "100%"}),
    )
    .await;
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/tolerant/start",
        Value::Null,
    )
    .await;
    fleet.deliver(&cars[0]).await;
    fail_brake(&fleet, &mut cars[0]).await;
    fleet.deliver(&cars[1]).await;
    install_brake(&fleet, &mut cars[1]).await;
    fleet.service.campaign_tick().await.unwrap();
    let done = campaign(&fleet, "tolerant").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["progress"][0]["failed"], 1);

    let retried = ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/tolerant/retry-failed",
        Value::Null,
    )
    .await;
    assert_eq!(retried["state"], "running", "{retried}");
    let entries = fleet.entries(&cars[0].vin).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["status"], "pending");
    fleet.deliver(&cars[0]).await;
    install_brake(&fleet, &mut cars[0]).await;
    fleet.service.campaign_tick().await.unwrap();
    let done = campaign(&fleet, "tolerant").await;
    assert_eq!(done["state"], "completed");
    assert_eq!(done["progress"][0]["installed"], 2);
    let error = refused(
        &fleet,
        "POST",
        "/api/v1/campaigns/tolerant/retry-failed",
        Value::Null,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(error, "campaign tolerant has no failed vehicles");
}

#[tokio::test]
async fn a_vehicle_registered_mid_campaign_joins_a_dynamic_groups_campaign() {
    let fleet = fleet();
    let cars = cars(&fleet, "J", 2, 60).await;
    for car in &cars {
        ok(
            &fleet,
            "PUT",
            &format!("/api/v1/vehicles/{}/attributes", car.vin),
            json!({"region": "eu"}),
        )
        .await;
    }
    ok(
        &fleet,
        "POST",
        "/api/v1/groups",
        json!({"name": "eu", "filter": {"attributes": {"region": "eu"}}}),
    )
    .await;
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "radio-eu", "images": ["radio-1.bin"], "group": "eu", "join_later": true}),
    )
    .await;
    let started = ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/radio-eu/start",
        Value::Null,
    )
    .await;
    assert_eq!(started["progress"][0]["vehicles"], 2);

    // Two more register: one in the region, one outside it.
    let late = cars_named(&fleet, &["VIN-J100", "VIN-J101"], 90).await;
    for (car, region) in late.iter().zip(["eu", "us"]) {
        ok(
            &fleet,
            "PUT",
            &format!("/api/v1/vehicles/{}/attributes", car.vin),
            json!({"region": region}),
        )
        .await;
    }
    fleet.service.campaign_tick().await.unwrap();
    let grown = campaign(&fleet, "radio-eu").await;
    assert_eq!(grown["progress"][0]["vehicles"], 3, "{grown}");
    assert_eq!(pending(&fleet.entries(&late[0].vin).await), 1);
    assert!(fleet.entries(&late[1].vin).await.is_empty());
    assert_eq!(fleet.events_of("campaign_joined"), 1);

    // A campaign that does not take later members keeps the members it started with.
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "brake-eu", "images": ["brake-2.bin"], "group": "eu"}),
    )
    .await;
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns/brake-eu/start",
        Value::Null,
    )
    .await;
    let more = cars_named(&fleet, &["VIN-J200"], 120).await;
    ok(
        &fleet,
        "PUT",
        &format!("/api/v1/vehicles/{}/attributes", more[0].vin),
        json!({"region": "eu"}),
    )
    .await;
    fleet.service.campaign_tick().await.unwrap();
    assert_eq!(
        campaign(&fleet, "brake-eu").await["progress"][0]["vehicles"],
        3
    );
    let group = ok(&fleet, "GET", "/api/v1/groups/eu", Value::Null).await;
    assert_eq!(group["members"], 4, "{group}");
}

async fn cars_named(fleet: &Fleet, vins: &[&str], seed: u8) -> Vec<Vehicle> {
    let mut cars = Vec::new();
    for (i, vin) in vins.iter().enumerate() {
        cars.push(fleet.register(vin, seed + 3 * i as u8).await);
    }
    cars
}

#[tokio::test]
async fn a_maintenance_window_holds_delivery_until_it_opens_in_the_vehicles_zone() {
    let fleet = fleet();
    let cars = cars(&fleet, "W", 2, 130).await;
    // One vehicle in Tokyo, one without a zone (UTC).
    ok(
        &fleet,
        "PUT",
        &format!("/api/v1/vehicles/{}/attributes", cars[0].vin),
        json!({"timezone": "Asia/Tokyo"}),
    )
    .await;
    ok(
        &fleet,
        "POST",
        "/api/v1/groups",
        json!({"name": "w", "vins": ["VIN-W000", "VIN-W001"]}),
    )
    .await;
    // A window twelve hours from now, so that starting (which drives the campaign at the
    // real time) assigns nothing; the steps after run at injected times on a January day.
    let hour = (now().hour() + 12) % 24;
    let window = format!("daily {hour:02}:00-{:02}:00", hour + 1);
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "night", "images": ["brake-2.bin"], "group": "w", "windows": [window]}),
    )
    .await;
    let started = ok(&fleet, "POST", "/api/v1/campaigns/night/start", Value::Null).await;
    assert_eq!(started["progress"][0]["waiting"], 2, "{started}");

    // Tomorrow (the Image repository's metadata is fresh then): Tokyo is UTC+9 all year, so
    // the window opens there nine hours before it opens in UTC.
    let day = (now() + chrono::Duration::days(1)).date_naive();
    let utc = |h: u32| -> UtcTime { day.and_hms_opt(h % 24, 30, 0).unwrap().and_utc() };
    // Closed in both zones.
    fleet
        .service
        .campaign_tick_at(utc(hour + 14))
        .await
        .unwrap();
    assert!(fleet.entries(&cars[0].vin).await.is_empty());
    assert!(fleet.entries(&cars[1].vin).await.is_empty());
    assert_eq!(campaign(&fleet, "night").await["progress"][0]["waiting"], 2);
    // Open in Tokyo, not yet in UTC.
    fleet
        .service
        .campaign_tick_at(utc(hour + 15))
        .await
        .unwrap();
    assert_eq!(pending(&fleet.entries(&cars[0].vin).await), 1);
    assert!(fleet.entries(&cars[1].vin).await.is_empty());
    // Open in UTC; closed in Tokyo again, where the entry was not fetched: withdrawn until
    // the window opens again (a window holds delivery, not only assignment).
    fleet.service.campaign_tick_at(utc(hour)).await.unwrap();
    assert_eq!(pending(&fleet.entries(&cars[1].vin).await), 1);
    let held = fleet.entries(&cars[0].vin).await;
    assert_eq!(pending(&held), 0);
    assert_eq!(
        held[0]["detail"],
        "campaign night: outside the vehicle's maintenance window"
    );
    assert_eq!(campaign(&fleet, "night").await["progress"][0]["waiting"], 1);
    // The next day's window assigns it again.
    fleet
        .service
        .campaign_tick_at(utc(hour + 15) + chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(pending(&fleet.entries(&cars[0].vin).await), 1);
}

#[tokio::test]
async fn a_re_published_image_pauses_its_campaign_and_a_wave_that_never_ends_times_out() {
    let fleet = fleet();
    let cars = cars(&fleet, "T", 2, 170).await;
    ok(
        &fleet,
        "POST",
        "/api/v1/groups",
        json!({"name": "t", "vins": ["VIN-T000", "VIN-T001"]}),
    )
    .await;
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "slow", "images": ["brake-2.bin"], "group": "t",
               "waves": ["50%", "100%"], "wave_timeout_secs": 3600}),
    )
    .await;
    ok(&fleet, "POST", "/api/v1/campaigns/slow/start", Value::Null).await;
    // Nobody installs (the first wave's car is parked): an hour on, the wave has timed out
    // and the second starts; the parked car keeps its assignment.
    let later = now() + chrono::Duration::seconds(3601);
    fleet.service.campaign_tick_at(later).await.unwrap();
    let shown = campaign(&fleet, "slow").await;
    assert_eq!(shown["current_wave"], 2, "{shown}");
    assert_eq!(shown["progress"][0]["installing"], 1);
    assert_eq!(shown["progress"][1]["installing"], 1);
    assert_eq!(fleet.events_of("campaign_wave_timed_out"), 1);
    for car in &cars {
        assert_eq!(pending(&fleet.entries(&car.vin).await), 1);
    }

    // The image's name now stands for other bytes (a replica whose catalog sees the
    // re-published repository drives the campaign): paused, never delivering them.
    let other = director::service::DirectorService::new(
        fleet.db.clone(),
        director::service::KeyRing::fixed(online_keys()),
        image_repo_with(b"brake firmware 2, rebuilt"),
        director::service::Policy::default(),
    )
    .unwrap();
    other.campaign_tick().await.unwrap();
    let paused = campaign(&fleet, "slow").await;
    assert_eq!(paused["state"], "paused");
    assert!(
        paused["reason"]
            .as_str()
            .unwrap()
            .contains("image brake-2.bin was re-published with other content"),
        "{paused}"
    );
    // One image per hardware id.
    let error = refused(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "two", "images": ["brake-2.bin", "brake-alt.bin"], "group": "t"}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(error.contains("are both for hardware hw-brake"), "{error}");
}

#[tokio::test]
async fn campaign_and_group_requests_that_break_a_rule_are_refused_with_the_reason() {
    let fleet = fleet();
    cars(&fleet, "N", 1, 200).await;
    let post = |uri: &'static str, body: Value| (uri, body);
    let cases = [
        (
            post(
                "/api/v1/groups",
                json!({"name": "both", "vins": ["VIN-N000"], "filter": {"images": ["x"]}}),
            ),
            StatusCode::BAD_REQUEST,
            "a group has either vins (static) or a filter (dynamic)",
        ),
        (
            post("/api/v1/groups", json!({"name": "empty", "filter": {}})),
            StatusCode::BAD_REQUEST,
            "a dynamic group's filter needs at least one condition",
        ),
        (
            post(
                "/api/v1/groups",
                json!({"name": "ghosts", "vins": ["VIN-NOPE"]}),
            ),
            StatusCode::NOT_FOUND,
            "no vehicle VIN-NOPE",
        ),
        (
            post("/api/v1/groups", json!({"name": "bad name", "vins": []})),
            StatusCode::BAD_REQUEST,
            "is not a name",
        ),
        (
            post(
                "/api/v1/campaigns",
                json!({"name": "c", "images": ["brake-2.bin"], "group": "g1", "waves": ["50%", "10%"]}),
            ),
            StatusCode::BAD_REQUEST,
            "wave shares are cumulative and must rise: 10% comes after 50%",
        ),
        (
            post(
                "/api/v1/campaigns",
                json!({"name": "c", "images": ["nothing.bin"], "group": "g1"}),
            ),
            StatusCode::NOT_FOUND,
            "the image repository has no image \"nothing.bin\"",
        ),
        (
            post(
                "/api/v1/campaigns",
                json!({"name": "c", "images": ["brake-2.bin"], "group": "nobody"}),
            ),
            StatusCode::NOT_FOUND,
            "no group nobody",
        ),
        (
            post(
                "/api/v1/campaigns",
                json!({"name": "c", "images": ["brake-2.bin"], "group": "g1", "windows": ["mon 25:00-26:00"]}),
            ),
            StatusCode::BAD_REQUEST,
            "is not a time",
        ),
        (
            post(
                "/api/v1/campaigns",
                json!({"name": "c", "images": ["brake-2.bin"], "group": "g1", "max_failure_ratio": "150%"}),
            ),
            StatusCode::BAD_REQUEST,
            "is more than 100%",
        ),
        (
            post(
                "/api/v1/campaigns",
                json!({"name": "c", "images": [], "group": "g1"}),
            ),
            StatusCode::BAD_REQUEST,
            "a campaign names 1 to 16 images",
        ),
        (
            post(
                "/api/v1/campaigns",
                json!({"name": "c", "images": ["brake-2.bin", "brake-2.bin"], "group": "g1"}),
            ),
            StatusCode::BAD_REQUEST,
            "an image is named twice",
        ),
        (
            post(
                "/api/v1/campaigns",
                json!({"name": "c", "images": ["brake-2.bin"], "group": "g1", "soak_secs": 400 * 86_400}),
            ),
            StatusCode::BAD_REQUEST,
            "a soak time or a wave timeout is at most a year",
        ),
        (
            post(
                "/api/v1/campaigns",
                json!({"name": "c", "images": ["brake-2.bin"], "group": "g1", "windows": vec!["daily 01:00-02:00"; 15]}),
            ),
            StatusCode::BAD_REQUEST,
            "a campaign has at most 14 maintenance windows",
        ),
    ];
    ok(
        &fleet,
        "POST",
        "/api/v1/groups",
        json!({"name": "g1", "vins": ["VIN-N000"]}),
    )
    .await;
    for ((uri, body), status, reason) in cases {
        let error = refused(&fleet, "POST", uri, body.clone(), status).await;
        assert!(error.contains(reason), "{body}: {error}");
    }
    ok(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "c", "images": ["brake-2.bin"], "group": "g1"}),
    )
    .await;
    let error = refused(
        &fleet,
        "POST",
        "/api/v1/campaigns",
        json!({"name": "c", "images": ["brake-2.bin"], "group": "g1"}),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(error, "a campaign named c exists");
    let error = refused(
        &fleet,
        "POST",
        "/api/v1/campaigns/c/resume",
        Value::Null,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(error, "campaign c is draft: it cannot be resumed");
    ok(&fleet, "POST", "/api/v1/campaigns/c/start", Value::Null).await;
    let error = refused(
        &fleet,
        "POST",
        "/api/v1/campaigns/c/start",
        Value::Null,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(error, "campaign c is running: it cannot be started");
    let error = refused(
        &fleet,
        "POST",
        "/api/v1/campaigns/c/explode",
        Value::Null,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(error.contains("no campaign action \"explode\""), "{error}");
    refused(
        &fleet,
        "GET",
        "/api/v1/campaigns/nothing",
        Value::Null,
        StatusCode::NOT_FOUND,
    )
    .await;
    let error = refused(
        &fleet,
        "PUT",
        "/api/v1/vehicles/VIN-N000/attributes",
        json!({"timezone": "Mars/Olympus"}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(error.contains("is not a time zone"), "{error}");
    for (attributes, reason) in [
        (
            json!({"Region": "eu"}),
            "\"Region\" is not an attribute name",
        ),
        (
            json!({"region": "eu\u{1b}[2J"}),
            "none of them control characters",
        ),
        (
            json!({"region": "x".repeat(257)}),
            "must be 1 to 256 characters",
        ),
    ] {
        let error = refused(
            &fleet,
            "PUT",
            "/api/v1/vehicles/VIN-N000/attributes",
            attributes,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(error.contains(reason), "{error}");
    }
    let error = refused(
        &fleet,
        "GET",
        &format!("/api/v1/vehicles?search={}", "A".repeat(65)),
        Value::Null,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(error, "search is 1 to 64 characters of a VIN");
    for reason in [
        json!({"reason": ""}),
        json!({"reason": "a\nb"}),
        json!({"reason": "r".repeat(501)}),
    ] {
        let error = refused(
            &fleet,
            "POST",
            "/api/v1/campaigns/c/pause",
            reason,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(
            error,
            "a reason is 1 to 500 characters, none of them control characters"
        );
    }
    let (status, _, _) = fleet
        .send(
            "POST",
            "/api/v1/campaigns/c/pause",
            Some(&fleet.token),
            Some(vec![b' '; 5000]),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error = refused(
        &fleet,
        "PUT",
        "/api/v1/groups/g1/members",
        json!({"add": ["VIN-NOPE"]}),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(error, "no vehicle VIN-NOPE");
    // Operator routes, like every other: a token or nothing.
    let (status, _, _) = fleet.send("GET", "/api/v1/campaigns", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = fleet
        .send("POST", "/api/v1/campaigns/c/pause", Some("dat_wrong"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
