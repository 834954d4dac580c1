//! Two Director processes on one PostgreSQL database (replicas behind a load balancer):
//! whatever must be unique or only rise stays so when both are asked at the same instant,
//! because the database decides (row locks, unique keys), not either process. `.ci/run` runs
//! the tests twice: with the Director on PostgreSQL these race the replicas; on SQLite, where
//! one server owns a database (its vehicle cache relies on it), each checks that a second
//! `director serve` is refused with the reason.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use uptane_core::hash::sha256_hex;
use uptane_tests::load::Car;
use uptane_tests::proxy::LinkProxy;
use uptane_tests::sim::{Fleet, Mode, SimVehicle, VehicleSpec, wait_until};
use uptane_tests::{ChildGuard, blocking, run};

/// A second Director process on the fleet's database, and its URL; on SQLite, `None` once
/// the second process was refused as it must be.
fn replica(fleet: &Fleet) -> Option<(ChildGuard, String)> {
    replica_with(fleet, &[])
}

/// [`replica`], with extra environment variables for the second process.
fn replica_with(fleet: &Fleet, env: &[(&str, &str)]) -> Option<(ChildGuard, String)> {
    let database = director::db::Database::of_dir(&fleet.path("director")).unwrap();
    if let director::db::Database::Sqlite(_) = database {
        let (status, _, stderr) = run(
            &mut fleet.director_replica_command(),
            std::time::Duration::from_secs(60),
        );
        assert!(!status.success());
        assert!(
            stderr.contains("another `director serve` is using the SQLite database"),
            "{stderr}"
        );
        return None;
    }
    Some(fleet.start_director_replica_with(env))
}

/// Posts `body` as `car`'s manifest to the Director at `url`: the status and the body.
async fn post_manifest(
    client: &reqwest::Client,
    url: &str,
    car: &Car,
    body: Vec<u8>,
) -> (u16, String) {
    let response = car.post_manifest(client, url, body).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// How many manifests of `vin` the database holds.
fn stored_manifests(fleet: &Fleet, vin: &str) -> i64 {
    let vin = vin.to_string();
    fleet
        .director_db()
        .call_blocking(move |conn| {
            conn.value::<i64>(
                "SELECT COUNT(*) FROM manifests WHERE vin = ?1",
                director::params![vin],
            )
        })
        .unwrap()
}

/// How many vehicles the database holds.
fn registered_vehicles(fleet: &Fleet) -> i64 {
    fleet
        .director_db()
        .call_blocking(|conn| conn.value::<i64>("SELECT COUNT(*) FROM vehicles", &[]))
        .unwrap()
}

/// Both replicas hold their writer at `point` (inside the transaction) for `ms`, so that two
/// transactions begun at about the same instant overlap for certain.
fn stall_at(fleet: &mut Fleet, point: &str, ms: u64) {
    fleet.restart_director_with(
        &[],
        &[
            ("DIRECTOR_FAULT_STALL_AT", point),
            ("DIRECTOR_FAULT_STALL_MS", &ms.to_string()),
        ],
    );
}

/// The same manifest sent to both replicas at the same instant, five times over, each
/// replica holding its transaction open after writing the manifest's nonces: each time one
/// accepts it and the other, which waited for the vehicle, refuses it as a replay; never
/// both, and never a conflict or a server error.
#[test]
fn the_same_manifest_posted_to_both_replicas_at_once_is_accepted_once() {
    let mut fleet = Fleet::start();
    stall_at(&mut fleet, "manifest-before-commit", 300);
    let Some((_replica, other)) = replica(&fleet) else {
        return;
    };
    let client = fleet.https_client();
    let mut car = Car::new("replicas-race", 0);
    blocking(async {
        car.register(&client, &fleet.director_url, &fleet.token)
            .await
            .unwrap();
        for round in 0..5 {
            let body = car.manifest("replicas-race");
            let (a, b) = tokio::join!(
                post_manifest(&client, &fleet.director_url, &car, body.clone()),
                post_manifest(&client, &other, &car, body),
            );
            let mut statuses = [a.0, b.0];
            statuses.sort();
            assert_eq!(statuses, [200, 400], "round {round}: {a:?} {b:?}");
            let refused = if a.0 == 400 { &a.1 } else { &b.1 };
            assert!(refused.contains("replay"), "round {round}: {refused}");
        }
    });
    assert_eq!(stored_manifests(&fleet, car.vin.as_str()), 5);
}

/// A manifest one replica accepted is refused by the other: the nonces it carried are spent
/// on every replica, and the refusal is a security event.
#[test]
fn a_nonce_accepted_by_one_replica_is_refused_by_the_other() {
    let fleet = Fleet::start();
    let Some((_replica, other)) = replica(&fleet) else {
        return;
    };
    let client = fleet.https_client();
    let mut car = Car::new("replicas-replay", 0);
    blocking(async {
        car.register(&client, &fleet.director_url, &fleet.token)
            .await
            .unwrap();
        let body = car.manifest("replicas-replay");
        let (status, text) = post_manifest(&client, &fleet.director_url, &car, body.clone()).await;
        assert_eq!(status, 200, "{text}");
        let (status, text) = post_manifest(&client, &other, &car, body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("replay"), "{text}");
    });
    assert_eq!(stored_manifests(&fleet, car.vin.as_str()), 1);
    let security = fleet.events(car.vin.as_str(), true);
    assert!(
        security
            .iter()
            .any(|e| e["kind"] == "manifest_refused" && e["attack"] == "replay"),
        "{security:?}"
    );
}

/// At least 1,000 requests for one vehicle's `timestamp.json`, split across both replicas
/// from 8 clients, until the operator has changed the vehicle's assignments eight times
/// through both (so both replicas re-sign its metadata at the same instant, each holding its
/// transaction open between reading the stored versions and writing the next, the second
/// replica longer: what it would write over the first's is then served for a while): no
/// client sees a version go down, and no version is ever served with two contents. Each
/// assignment waits until a client has seen the version it caused, so that two assignments
/// inside one stall are not signed as one version and every one of them is counted.
#[test]
fn metadata_signed_by_two_replicas_never_goes_back_or_differs_for_one_version() {
    let mut fleet = Fleet::start();
    stall_at(&mut fleet, "metadata-before-store", 20);
    let Some((_replica, other)) = replica_with(&fleet, &[("DIRECTOR_FAULT_STALL_MS", "250")])
    else {
        return;
    };
    let client = fleet.https_client();
    let mut car = Car::new("replicas-metadata", 0);
    for i in 0..4u8 {
        fleet.publish(&format!("door-{i}.bin"), "load-door", 1, &[i; 64]);
    }
    blocking(async {
        car.register(&client, &fleet.director_url, &fleet.token)
            .await
            .unwrap();
    });
    let urls = [fleet.director_url.clone(), other.clone()];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let assigned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The highest version any client has seen.
    let (highest, mut highest_seen) = tokio::sync::watch::channel(0u64);
    let seen: Vec<Vec<(u64, String)>> = runtime.block_on(async {
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..8usize {
            let (client, urls) = (client.clone(), urls.clone());
            let (vin, credential) = (car.vin.to_string(), car.credential.clone());
            let assigned = std::sync::Arc::clone(&assigned);
            let highest = highest.clone();
            clients.spawn(async move {
                let mut seen = Vec::with_capacity(125);
                // Bounded: the assignments take seconds at most.
                for i in 0..100_000usize {
                    if i >= 125 && assigned.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let url = &urls[(c + i) % 2];
                    let response = client
                        .get(format!("{url}/vehicles/{vin}/metadata/timestamp.json"))
                        .bearer_auth(&credential)
                        .send()
                        .await
                        .unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                    let bytes = response.bytes().await.unwrap();
                    let version = uptane_tests::forge::version_of(&bytes);
                    highest.send_if_modified(|v| {
                        let raised = version > *v;
                        if raised {
                            *v = version;
                        }
                        raised
                    });
                    seen.push((version, sha256_hex(&bytes)));
                }
                seen
            });
        }
        // Meanwhile, assignments through one replica and the other change what is signed,
        // each made once a client has seen every one before it signed.
        seen_above(&mut highest_seen, 0).await;
        for (i, url) in urls.iter().cycle().take(8).enumerate() {
            let image = format!("door-{}.bin", i % 4);
            let before = *highest_seen.borrow_and_update();
            fleet
                .operator_at(
                    url,
                    &["assign", "--image", &image, "--vin", car.vin.as_str()],
                )
                .unwrap();
            seen_above(&mut highest_seen, before).await;
        }
        assigned.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all = Vec::new();
        while let Some(seen) = clients.join_next().await {
            all.push(seen.unwrap());
        }
        all
    });
    let mut contents: BTreeMap<u64, String> = BTreeMap::new();
    for client in &seen {
        for pair in client.windows(2) {
            assert!(pair[0].0 <= pair[1].0, "a version went down: {pair:?}");
        }
        for (version, sha256) in client {
            let first = contents.entry(*version).or_insert_with(|| sha256.clone());
            assert_eq!(first, sha256, "version {version} served with two contents");
        }
    }
    assert!(seen.iter().map(Vec::len).sum::<usize>() >= 1000);
    // The first version and one per assignment (each waited for above).
    assert!(contents.len() > 8, "{contents:?}");
}

/// Waits, a minute at most, until some client has seen a version above `version`.
async fn seen_above(highest: &mut tokio::sync::watch::Receiver<u64>, version: u64) {
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        highest.wait_for(|v| *v > version),
    )
    .await
    .unwrap_or_else(|_| panic!("no client saw a version above {version} in a minute"))
    .unwrap();
}

/// A one-time provisioning token presented to both replicas at the same instant, by two
/// vehicles, each replica holding its registration's transaction open after using the
/// token: one is registered, the other refused, five times over.
#[test]
fn a_one_time_provisioning_token_raced_on_both_replicas_registers_one_vehicle() {
    let mut fleet = Fleet::start();
    stall_at(&mut fleet, "registration-before-commit", 300);
    let Some((_replica, other)) = replica(&fleet) else {
        return;
    };
    let client = fleet.https_client();
    blocking(async {
        for round in 0..5 {
            let created = fleet.operator(&[
                "provisioning-token",
                "create",
                "--label",
                &format!("race-{round}"),
                "--one-time",
            ]);
            let token = created["token"].as_str().unwrap().to_string();
            let cars = [2 * round, 2 * round + 1].map(|i| Car::new("replicas-token", i));
            let (a, b) = tokio::join!(
                cars[0].register_with_token(&client, &fleet.director_url, &token),
                cars[1].register_with_token(&client, &other, &token),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let registered = [&a, &b].iter().filter(|r| r.0 == 201).count();
            assert_eq!(registered, 1, "round {round}: {a:?} {b:?}");
            let refused = if a.0 == 201 { &b } else { &a };
            assert_eq!(refused.0, 401, "round {round}: {refused:?}");
        }
    });
    assert_eq!(registered_vehicles(&fleet), 5);
}

/// Two Primaries registering the same VIN on both replicas at the same instant: the
/// database's unique key decides, one is registered, and the other is told plainly that a
/// concurrent request wrote the record first (409), not a server error.
#[test]
fn the_same_vin_registered_on_both_replicas_at_once_is_one_vehicle_and_a_409() {
    let mut fleet = Fleet::start();
    stall_at(&mut fleet, "registration-before-commit", 1000);
    let Some((_replica, other)) = replica(&fleet) else {
        return;
    };
    let client = fleet.https_client();
    // A token each, so that neither waits for the other's use of it: both check that the
    // VIN is new before either commits, and the unique key is what stops the second.
    let token = |label: &str| {
        let created = fleet.operator(&["provisioning-token", "create", "--label", label]);
        created["token"].as_str().unwrap().to_string()
    };
    let tokens = [token("twin-a"), token("twin-b")];
    blocking(async {
        for round in 0..3 {
            // One VIN, two sets of keys.
            let cars = ["twin-a", "twin-b"].map(|run| Car::new(run, round));
            let (a, b) = tokio::join!(
                cars[0].register_with_token(&client, &fleet.director_url, &tokens[0]),
                cars[1].register_with_token(&client, &other, &tokens[1]),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let mut statuses = [a.0, b.0];
            statuses.sort();
            assert_eq!(statuses, [201, 409], "round {round}: {a:?} {b:?}");
            let refused = if a.0 == 409 { &a.1 } else { &b.1 };
            assert!(
                refused.contains("a concurrent request wrote the same record first"),
                "round {round}: {refused}"
            );
        }
    });
    assert_eq!(registered_vehicles(&fleet), 3);
}

/// Two operators assign two images to one vehicle's ECU through both replicas at the same
/// instant: each assignment locks the ECU's row and reads its open entries after the lock,
/// so the second supersedes the first and the ECU has one open entry, never two.
#[test]
fn two_assignments_of_one_ecu_on_both_replicas_at_once_leave_one_open() {
    let mut fleet = Fleet::start();
    stall_at(&mut fleet, "assignment-before-commit", 300);
    let Some((_replica, other)) = replica(&fleet) else {
        return;
    };
    let client = fleet.https_client();
    let mut car = Car::new("replicas-assign", 0);
    blocking(car.register(&client, &fleet.director_url, &fleet.token)).unwrap();
    let vin = car.vin.as_str().to_string();
    for round in 0..3u64 {
        let images = [0, 1].map(|i| format!("door-{round}-{i}.bin"));
        for (i, image) in images.iter().enumerate() {
            fleet.publish(image, "load-door", 1, &[(round * 2) as u8 + i as u8; 4096]);
        }
        let urls = [fleet.director_url.clone(), other.clone()];
        let outcomes: Vec<Result<serde_json::Value, String>> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|i| {
                    let (fleet, url, image, vin) = (&fleet, &urls[i], &images[i], &vin);
                    s.spawn(move || {
                        fleet.operator_at(url, &["assign", "--image", image, "--vin", vin])
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for outcome in &outcomes {
            assert!(outcome.is_ok(), "round {round}: {outcomes:?}");
        }
        let open: Vec<_> = fleet
            .assignments(&vin)
            .into_iter()
            .filter(|e| {
                e["ecu_serial"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("-door")
                    && matches!(e["status"].as_str(), Some("pending" | "delivered"))
            })
            .collect();
        assert_eq!(open.len(), 1, "round {round}: {open:?}");
    }
}

/// A vehicle renews its credential on one replica while an operator, on the other, first
/// revokes it, then (once the vehicle was given a new one) re-issues it: the renewal is held
/// (a fault stall) after its first authorization, the operator's change commits meanwhile,
/// and the renewal, authorized again under the vehicle's row lock, is refused. Without that
/// second authorization it would hand out a credential (after a re-issue, one that takes
/// over from the operator's).
#[test]
fn a_renewal_raced_with_a_revocation_or_a_re_issue_on_the_other_replica_loses() {
    let mut fleet = Fleet::start();
    stall_at(&mut fleet, "renewal-before-authorize", 3000);
    let Some((_replica, other)) = replica(&fleet) else {
        return;
    };
    let client = fleet.https_client();
    let mut car = Car::new("replicas-revoke", 0);
    blocking(car.register(&client, &fleet.director_url, &fleet.token)).unwrap();
    let vin = car.vin.as_str().to_string();
    let status_with = |credential: &str| {
        blocking(async {
            client
                .get(format!(
                    "{}/vehicles/{vin}/metadata/timestamp.json",
                    fleet.director_url
                ))
                .bearer_auth(credential)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let mut credential = car.credential.clone();
    for change in ["revoke-credential", "issue-credential"] {
        let (renewal, changed) = std::thread::scope(|s| {
            let renewal = s.spawn(|| {
                blocking(async {
                    let response = client
                        .post(format!("{}/vehicles/{vin}/credential", fleet.director_url))
                        .bearer_auth(&credential)
                        .send()
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    (status, response.text().await.unwrap())
                })
            });
            let changed = fleet.operator_at(&other, &["vehicle", change, &vin]);
            (renewal.join().unwrap(), changed)
        });
        let changed = changed.unwrap_or_else(|e| panic!("{change}: {e}"));
        assert_eq!(renewal.0, 401, "{change}: the renewal {renewal:?}");
        assert_eq!(
            status_with(&credential),
            401,
            "{change}: the old credential"
        );
        // The operator's credential (after a revocation, a new one for the next round).
        let issued = match change {
            "revoke-credential" => fleet
                .operator_at(&other, &["vehicle", "issue-credential", &vin])
                .unwrap(),
            _ => changed,
        };
        credential = issued["credential"].as_str().unwrap().to_string();
        assert_eq!(status_with(&credential), 200, "{change}: {issued}");
    }
}

/// A campaign in two waves of three vehicles (real Primaries and Secondaries) through a TCP
/// load balancer in front of both replicas; one replica is killed with SIGKILL once the first
/// wave installed, while every Primary keeps polling. The second wave is assigned and
/// installed through the survivor, and the Director's records (read through it) hold every
/// installation and every vehicle's history from before the kill: nothing is lost.
#[test]
fn vehicles_finish_a_campaign_through_the_other_replica_when_one_is_killed() {
    let mut fleet = Fleet::start();
    let Some((_replica, other)) = replica(&fleet) else {
        return;
    };
    let other_addr = other.trim_start_matches("https://").to_string();
    let balancer = LinkProxy::balance(&[fleet.director_addr(), &other_addr]).unwrap();
    let mut vehicles: Vec<SimVehicle> = (0..6)
        .map(|i| {
            let mut vehicle = SimVehicle::provision(
                &fleet,
                &VehicleSpec {
                    vin: format!("REPLICA{i:02}"),
                    single_bank: Vec::new(),
                    secondaries: vec![("DOOR".into(), "hw-door".into(), Mode::Full)],
                },
            );
            vehicle.set_director_url(&format!("https://{}", balancer.addr()));
            vehicle
        })
        .collect();
    for vehicle in &mut vehicles {
        vehicle.start_primary();
    }
    let vins: Vec<String> = vehicles.iter().map(|v| v.vin.clone()).collect();
    let vin_refs: Vec<&str> = vins.iter().map(String::as_str).collect();
    let (first, second) = vin_refs.split_at(3);
    fleet.publish("door-7.bin", "hw-door", 7, &[7u8; 300_000]);
    let installed = |fleet: &Fleet, vin: &str| {
        let entries = fleet.assignments(vin);
        entries.len() == 1 && entries[0]["status"] == "installed"
    };
    let limit = std::time::Duration::from_secs(120);
    fleet.assign("door-7.bin", first);
    assert!(
        wait_until(limit, || first.iter().all(|vin| installed(&fleet, vin))),
        "the first wave did not install"
    );
    let killed = std::process::Command::new("kill")
        .args(["-9", &fleet.director_pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The operator, too, goes to the survivor now.
    fleet.director_url = other.clone();
    fleet.assign("door-7.bin", second);
    assert!(
        wait_until(limit, || vin_refs.iter().all(|vin| installed(&fleet, vin))),
        "not every vehicle finished through the surviving replica"
    );
    for vin in &vin_refs {
        assert!(
            fleet.installed_on(vin, "DOOR", "door-7.bin"),
            "{vin}: {:?}",
            fleet.installed(vin)
        );
        let events = fleet.events(vin, false);
        assert!(
            events.iter().any(|e| e["kind"] == "vehicle_registered"),
            "{vin}: {events:?}"
        );
    }
}

/// `fleet-sim load` with the Director on PostgreSQL as two replicas, the vehicles spread over
/// both: a short run serves every cycle on time with no error, and the campaign reaches its
/// vehicles. A functional check, not a benchmark: 300 vehicles polling every 3 s leave the
/// two shared cores room for the test run beside it (`docs/BENCHMARKS.md` has the figures).
#[test]
fn fleet_sim_load_runs_two_replicas_on_postgres() {
    let mut fleet_sim = std::process::Command::new(uptane_tests::bin("fleet-sim"));
    // Not as `cargo run` would start it: it would build the workspace's binaries again,
    // without the fault points the other tests running now use.
    fleet_sim.env_remove("CARGO");
    let (status, stdout, stderr) = run(
        fleet_sim.args([
            "load",
            "--vehicles",
            "300",
            "--poll-secs",
            "3",
            "--duration",
            "9",
            "--database",
            "postgres",
            "--directors",
            "2",
        ]),
        std::time::Duration::from_secs(300),
    );
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 directors"), "{stdout}");
    assert!(stdout.contains("errors: none"), "{stdout}");
    assert!(stdout.contains("postgresql   CPU"), "{stdout}");
}
