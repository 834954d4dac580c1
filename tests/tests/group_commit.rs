//! Group commit keeps its promise: a manifest the Director acknowledged survives `kill -9`.
//! Vehicles post manifests as fast as they are acknowledged, many at once (so the Director
//! commits them in shared transactions), until the Director is killed mid-stream; after the
//! restart, every acknowledged manifest is stored, and the only stored manifests that were
//! not acknowledged are the ones in flight when it died.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::Value;
use tokio::sync::Mutex;
use uptane_tests::blocking;
use uptane_tests::load::Car;
use uptane_tests::sim::Fleet;

const VEHICLES: usize = 48;
/// Acknowledgements to wait for before the kill.
const BEFORE_KILL: usize = 400;

#[test]
fn every_manifest_acknowledged_under_group_commit_survives_kill_9() {
    let mut fleet = Fleet::start();
    let client = fleet.https_client();
    let cars: Vec<Arc<Mutex<Car>>> = (0..VEHICLES)
        .map(|i| Arc::new(Mutex::new(Car::new("group-commit", i))))
        .collect();
    blocking(async {
        for car in &cars {
            let mut car = car.lock().await;
            car.register(&client, &fleet.director_url, &fleet.token)
                .await
                .unwrap();
        }
    });

    // Every vehicle posts its next manifest as soon as the last was answered.
    let acked: Arc<std::sync::Mutex<BTreeSet<(String, u64)>>> = Arc::default();
    let in_flight: Arc<std::sync::Mutex<BTreeSet<(String, u64)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let director_pid = fleet.director_pid().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut posting = tokio::task::JoinSet::new();
        for car in &cars {
            let (car, client, url) = (Arc::clone(car), client.clone(), fleet.director_url.clone());
            let (acked, in_flight, count, dead) = (
                Arc::clone(&acked),
                Arc::clone(&in_flight),
                Arc::clone(&count),
                Arc::clone(&dead),
            );
            posting.spawn(async move {
                // Bounded: the kill comes after BEFORE_KILL acknowledgements in all.
                for _ in 0..BEFORE_KILL {
                    if dead.load(Ordering::SeqCst) {
                        break;
                    }
                    let mut car = car.lock().await;
                    let body = car.manifest("group-commit");
                    let key = (car.vin.to_string(), car.counter);
                    in_flight.lock().unwrap().insert(key.clone());
                    let sent = client
                        .post(format!("{url}/vehicles/{}/manifest", car.vin))
                        .bearer_auth(&car.credential)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().is_success() => {
                            in_flight.lock().unwrap().remove(&key);
                            acked.lock().unwrap().insert(key);
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        // The Director died under it: this one stays "in flight".
                        _ => break,
                    }
                }
            });
        }
        // Wait (bounded) for enough acknowledgements, then SIGKILL mid-stream.
        let enough = tokio::time::timeout(std::time::Duration::from_secs(120), async {
            while count.load(Ordering::SeqCst) < BEFORE_KILL {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            enough.is_ok(),
            "only {} manifests acknowledged",
            count.load(Ordering::SeqCst)
        );
        let killed = std::process::Command::new("kill")
            .args(["-9", &director_pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        dead.store(true, Ordering::SeqCst);
        while posting.join_next().await.is_some() {}
    });
    fleet.restart_director();

    // What the database holds after the restart.
    let db = fleet.director_db();
    let stored: Vec<(String, Vec<u8>)> = db
        .call_blocking(|conn| {
            conn.query("SELECT vin, body FROM manifests", &[], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })
        .unwrap();
    let stored: BTreeSet<(String, u64)> = stored
        .into_iter()
        .map(|(vin, body)| {
            let manifest: Value = serde_json::from_slice(&body).unwrap();
            let reports = manifest["signed"]["ecu_version_reports"]
                .as_object()
                .unwrap();
            let counter = reports.values().next().unwrap()["signed"]["report_counter"]
                .as_u64()
                .unwrap();
            (vin, counter)
        })
        .collect();
    let acked = acked.lock().unwrap().clone();
    let in_flight = in_flight.lock().unwrap().clone();
    assert!(acked.len() >= BEFORE_KILL);
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let unacknowledged: BTreeSet<_> = stored.difference(&acked).cloned().collect();
    assert!(
        unacknowledged.is_subset(&in_flight),
        "stored, never acknowledged nor in flight: {:?}",
        unacknowledged.difference(&in_flight).collect::<Vec<_>>()
    );
    // At most one manifest per vehicle was in flight.
    let mut per_vehicle: BTreeMap<&str, usize> = BTreeMap::new();
    for (vin, _) in &in_flight {
        *per_vehicle.entry(vin).or_default() += 1;
    }
    assert!(per_vehicle.values().all(|&n| n == 1), "{per_vehicle:?}");
    println!(
        "{} acknowledged, {} stored, {} in flight at the kill",
        acked.len(),
        stored.len(),
        in_flight.len()
    );
}
