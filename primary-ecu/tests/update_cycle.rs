//! The Primary's update cycle as a real process: an HTTP server on 127.0.0.1 serves both
//! repositories' metadata (signed by `uptane-core`'s builders) and records the manifests,
//! and real `secondary-ecu` processes, one in full and one in partial verification, receive
//! the updates over gRPC.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::Reply;
use support::world::{BRAKE, LIMIT, Offer, PRIMARY, RADIO, VIN, World, now, sha256};
use uptane_tests::sim::{durable_offset, wait_until};
use uptane_tests::spawn;

fn image(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

fn three_ecus() -> [((&'static str, &'static str), &'static str); 2] {
    [(BRAKE, "full"), (RADIO, "partial")]
}

fn offers(version: u64) -> Vec<Offer> {
    vec![
        Offer::new(
            PRIMARY,
            &format!("gw-{version}.bin"),
            image(version as u8, 70_000),
            version,
        ),
        Offer::new(
            BRAKE,
            &format!("brake-{version}.bin"),
            image(40 + version as u8, 300_000),
            version,
        ),
        Offer::new(
            RADIO,
            &format!("radio-{version}.bin"),
            image(80 + version as u8, 200_000),
            version,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_the_primary_and_a_full_and_a_partial_secondary_then_finds_nothing_new() {
    let mut world = World::new(&three_ecus()).await;
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    assert_eq!(world.last_manifest().installed(BRAKE.0), "BRAKE-1-0.bin");

    world.assign(&offers(2));
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    for s in [
        "GW-1 installed gw-2.bin",
        "BRAKE-1 installed brake-2.bin",
        "RADIO-1 installed radio-2.bin",
    ] {
        assert!(summary.contains(s), "{summary}");
    }
    let manifest = world.last_manifest();
    assert_eq!(manifest.installed(PRIMARY.0), "gw-2.bin");
    assert_eq!(manifest.installed(BRAKE.0), "brake-2.bin");
    assert_eq!(manifest.installed(RADIO.0), "radio-2.bin");
    assert_eq!(
        manifest.reports[BRAKE.0]["last_install"]["result"],
        "installed"
    );
    assert!(manifest.unreachable.is_empty());
    let firmware = std::fs::read(world.primary_dir().join("firmware/active.img")).unwrap();
    assert_eq!(firmware, offers(2)[0].bytes);
    assert_eq!(
        world.target_downloads().len(),
        3,
        "each image downloaded once"
    );
    let status = world.status();
    assert_eq!(
        status["director"]["targets"],
        world.director.targets.common.version
    );
    assert_eq!(status["installed"][RADIO.0], "radio-2.bin");
    assert_eq!(status["pending"], serde_json::json!([]));

    // Nothing changed: one timestamp request to each... the Director only, and no download.
    world.server.clear_log();
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    assert!(summary.starts_with("no change"), "{summary}");
    let requested: Vec<String> = world
        .server
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        requested,
        [
            format!("/director/vehicles/{VIN}/manifest"),
            format!("/director/vehicles/{VIN}/metadata/2.root.json"),
            format!("/director/vehicles/{VIN}/metadata/timestamp.json"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_in_the_middle_resumes_with_a_range_request() {
    let mut world = World::new(&[]).await;
    let offer = Offer::new(PRIMARY, "gw-2.bin", image(9, 1_000_000), 2);
    world.assign(std::slice::from_ref(&offer));
    let path = World::target_path(&offer.name, &offer.bytes);
    world
        .server
        .put(&path, Reply::CutOnce(offer.bytes.clone(), 400_000));
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    let downloads = world.target_downloads();
    assert_eq!(downloads.len(), 2, "{downloads:?}");
    assert_eq!(downloads[0].range_from, None);
    assert_eq!(downloads[1].range_from, Some(400_000));
    assert_eq!(world.last_manifest().installed(PRIMARY.0), "gw-2.bin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_slower_than_the_minimum_is_abandoned_and_reported() {
    let mut world = World::with_flags(
        &[],
        &[
            "--min-download-bytes-per-sec",
            "50000",
            "--download-grace-ms",
            "300",
        ],
    )
    .await;
    let offer = Offer::new(PRIMARY, "gw-2.bin", image(9, 20_000), 2);
    world.assign(std::slice::from_ref(&offer));
    let path = World::target_path(&offer.name, &offer.bytes);
    world.server.put(
        &path,
        Reply::Trickle(offer.bytes.clone(), Duration::from_millis(2)),
    );
    let (code, summary) = world.once().await;
    assert_eq!(code, 3, "{summary}");
    assert!(summary.contains("slower than 50000 bytes/s"), "{summary}");
    let manifest = world.last_manifest();
    assert_eq!(manifest.attacks(), ["slow_retrieval"]);
    assert_eq!(manifest.installed(PRIMARY.0), "factory.bin");

    // The attack stops: the update completes, resuming what was received.
    world.server.put(&path, Reply::Body(offer.bytes.clone()));
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    assert!(
        world
            .target_downloads()
            .last()
            .unwrap()
            .range_from
            .is_some()
    );
    assert_eq!(world.last_manifest().installed(PRIMARY.0), "gw-2.bin");
    assert!(
        world.last_manifest().attacks().is_empty(),
        "reported once only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_secondary_does_not_block_the_other_and_is_updated_when_back() {
    let mut world = World::new(&three_ecus()).await;
    let offers = offers(2);
    world.assign(&offers[1..]);
    world.stop_secondary(1);
    let (code, summary) = world.once().await;
    assert_eq!(code, 3, "{summary}");
    assert!(
        summary.contains("BRAKE-1 installed brake-2.bin"),
        "{summary}"
    );
    assert!(
        summary.contains("RADIO-1 pending: unreachable"),
        "{summary}"
    );
    let manifest = world.last_manifest();
    assert_eq!(manifest.installed(BRAKE.0), "brake-2.bin");
    assert!(
        manifest.unreachable.contains_key(RADIO.0),
        "{:?}",
        manifest.unreachable
    );
    assert!(!manifest.reports.contains_key(RADIO.0));

    world.start_secondary(1, &[]);
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    assert!(
        summary.contains("RADIO-1 installed radio-2.bin"),
        "{summary}"
    );
    assert_eq!(world.last_manifest().installed(RADIO.0), "radio-2.bin");
    assert_eq!(
        world.target_downloads().len(),
        2,
        "the waiting image was kept, not fetched again"
    );
}

/// Waits (bounded) until `condition` holds.
fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    assert!(wait_until(LIMIT, condition), "timed out waiting for {what}");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_during_a_download_resumes_it_after_the_restart() {
    let mut world = World::with_flags(&[], &["--min-download-bytes-per-sec", "0"]).await;
    let offer = Offer::new(PRIMARY, "gw-2.bin", image(5, 100_000), 2);
    world.assign(std::slice::from_ref(&offer));
    let path = World::target_path(&offer.name, &offer.bytes);
    world.server.put(
        &path,
        Reply::Trickle(offer.bytes.clone(), Duration::from_micros(200)),
    );
    let partial = world
        .primary_dir()
        .join("downloads")
        .join(format!("{}.part", sha256(&offer.bytes)));
    let mut primary = spawn(world.once_command());
    tokio::task::spawn_blocking({
        let partial = partial.clone();
        move || wait_for("part of the download", || file_len(&partial) > 1_000)
    })
    .await
    .unwrap();
    primary.kill();
    let kept = file_len(&partial);
    assert!(kept < offer.bytes.len() as u64);

    world.server.put(&path, Reply::Body(offer.bytes.clone()));
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    let resumed = world.target_downloads().last().unwrap().range_from.unwrap() as u64;
    assert!(
        resumed >= kept,
        "resumed from {resumed}, {kept} bytes were kept"
    );
    assert_eq!(world.last_manifest().installed(PRIMARY.0), "gw-2.bin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_during_a_transfer_completes_it_after_the_restart() {
    let mut world = World::new(&[(BRAKE, "full")]).await;
    // Slow enough that the rest of the transfer takes seconds after the kill's threshold: a
    // test thread kept from running for half a second must not find it finished.
    world.start_secondary(
        0,
        &[
            "--fault-slow-link-ms",
            "100",
            "--durable-interval-bytes",
            "65536",
        ],
    );
    let offer = Offer::new(BRAKE, "brake-2.bin", image(7, 2 << 20), 2);
    world.assign(std::slice::from_ref(&offer));
    let mut primary = spawn(world.once_command());
    let ecu_dir = world.secondaries[0].dir.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("part of the transfer", || {
            durable_offset(&ecu_dir) >= 4 * 65536
        })
    })
    .await
    .unwrap();
    primary.kill();
    assert!(durable_offset(&world.secondaries[0].dir) < offer.bytes.len() as u64);

    world.start_secondary(0, &[]);
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    assert!(
        summary.contains("BRAKE-1 installed brake-2.bin"),
        "{summary}"
    );
    assert_eq!(world.last_manifest().installed(BRAKE.0), "brake-2.bin");
    assert_eq!(
        world.target_downloads().len(),
        1,
        "the image was downloaded once"
    );
}

/// One refusal: how the attack is staged, and what the Primary must say.
struct Attack {
    name: &'static str,
    stage: fn(&mut World, &[Offer]),
    kind: &'static str,
    exit: i32,
}

fn other_bytes(offer: &Offer) -> Vec<u8> {
    offer.bytes.iter().map(|b| b ^ 0x5a).collect()
}

fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "the repositories disagree on the hashes",
            stage: |w, o| {
                w.assign_with(o, |x| Offer {
                    bytes: other_bytes(x),
                    ..x.clone()
                })
            },
            kind: "repository_mismatch",
            exit: 2,
        },
        Attack {
            name: "the repositories disagree on the length",
            stage: |w, o| {
                w.assign_with(o, |x| Offer {
                    bytes: [x.bytes.as_slice(), b"more"].concat(),
                    ..x.clone()
                })
            },
            kind: "repository_mismatch",
            exit: 2,
        },
        Attack {
            name: "the Image repository lists another hardware id",
            stage: |w, o| {
                w.assign_with(o, |x| Offer {
                    hardware_id: "hw-other",
                    ..x.clone()
                })
            },
            kind: "wrong_hardware",
            exit: 2,
        },
        Attack {
            name: "the repositories disagree on the release counter",
            stage: |w, o| {
                w.assign_with(o, |x| Offer {
                    counter: x.counter + 1,
                    ..x.clone()
                })
            },
            kind: "repository_mismatch",
            exit: 2,
        },
        Attack {
            name: "the image served is not the one the metadata describes",
            stage: |w, o| {
                w.assign(o);
                for offer in o {
                    w.server.put(
                        &World::target_path(&offer.name, &offer.bytes),
                        Reply::Body(other_bytes(offer)),
                    );
                }
            },
            kind: "arbitrary_software",
            exit: 3,
        },
        Attack {
            name: "a Director target for an ECU not in this vehicle",
            stage: |w, o| {
                let mut stranger = o[0].clone();
                stranger.serial = "STRANGER-1";
                w.assign(&[stranger]);
            },
            kind: "unknown_ecu",
            exit: 2,
        },
        Attack {
            name: "expired Director metadata",
            stage: |w, o| {
                let expires = w.director.expires;
                w.director.expires = now() - chrono::Duration::hours(1);
                w.assign(o);
                w.director.expires = expires;
                w.director.publish();
            },
            kind: "freeze",
            exit: 2,
        },
        Attack {
            name: "expired Image repository metadata",
            stage: |w, o| {
                let expires = w.images.expires;
                w.images.expires = now() - chrono::Duration::hours(1);
                w.assign(o);
                w.images.expires = expires;
                w.images.publish();
            },
            kind: "freeze",
            exit: 2,
        },
        Attack {
            name: "rolled-back Director metadata",
            stage: |w, _| {
                let old = w.director.clone();
                w.assign(&[]);
                // The Primary trusts the newer versions now; serve the old ones.
                let (code, _) = futures_block(w.once());
                assert_eq!(code, 0);
                w.server
                    .publish_at(&format!("/director/vehicles/{VIN}/metadata"), &old);
            },
            kind: "rollback",
            exit: 2,
        },
        Attack {
            name: "rolled-back Image repository metadata",
            stage: |w, o| {
                let old = w.images.clone();
                w.assign(&[]);
                let (code, _) = futures_block(w.once());
                assert_eq!(code, 0);
                w.assign(o);
                w.server.publish_at("/images/metadata", &old);
            },
            kind: "rollback",
            exit: 2,
        },
        Attack {
            name: "a timestamp larger than its limit",
            stage: |w, o| {
                w.assign(o);
                w.server.put(
                    &format!("/director/vehicles/{VIN}/metadata/timestamp.json"),
                    Reply::Endless(4 << 20),
                );
            },
            kind: "endless_data",
            exit: 2,
        },
    ]
}

fn futures_block<F: Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_installs_nothing_and_is_reported_with_its_kind() {
    let mut world = World::new(&[(BRAKE, "full")]).await;
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    for (i, attack) in attacks().into_iter().enumerate() {
        let version = 10 + i as u64;
        let offers = vec![
            Offer::new(
                PRIMARY,
                &format!("gw-{version}.bin"),
                image(version as u8, 5_000),
                version,
            ),
            Offer::new(
                BRAKE,
                &format!("brake-{version}.bin"),
                image(version as u8 + 1, 7_000),
                version,
            ),
        ];
        (attack.stage)(&mut world, &offers);
        let trusted_before = world.status();
        let (code, summary) = world.once().await;
        assert_eq!(code, attack.exit, "{}: {summary}", attack.name);
        assert!(
            summary.contains(attack.kind),
            "{}: {summary} does not name {}",
            attack.name,
            attack.kind
        );
        let manifest = world.last_manifest();
        let mut kinds = manifest.attacks();
        kinds.dedup();
        assert_eq!(kinds, [attack.kind], "{}", attack.name);
        assert_eq!(
            manifest.installed(PRIMARY.0),
            "factory.bin",
            "{}",
            attack.name
        );
        assert_eq!(
            manifest.installed(BRAKE.0),
            "BRAKE-1-0.bin",
            "{}",
            attack.name
        );
        let trusted_after = world.status();
        for repo in ["director", "image_repo"] {
            for role in ["timestamp", "snapshot", "targets"] {
                let (before, after) = (
                    trusted_before[repo][role].as_u64().unwrap_or(0),
                    trusted_after[repo][role].as_u64().unwrap_or(0),
                );
                assert!(
                    after >= before,
                    "{}: {repo} {role} went from {before} to {after}",
                    attack.name
                );
            }
        }
        world.serve();
    }

    // The attacks stop: the vehicle updates normally.
    let offers = [
        Offer::new(PRIMARY, "gw-99.bin", image(99, 5_000), 99),
        Offer::new(BRAKE, "brake-99.bin", image(98, 7_000), 99),
    ];
    world.assign(&offers);
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    let manifest = world.last_manifest();
    assert_eq!(manifest.installed(PRIMARY.0), "gw-99.bin");
    assert_eq!(manifest.installed(BRAKE.0), "brake-99.bin");
    assert!(manifest.attacks().is_empty());
}

/// The time in the Primary's `state.json`.
fn trusted_time(world: &World) -> uptane_core::time::UtcTime {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(world.primary_dir().join("state.json")).unwrap())
            .unwrap();
    uptane_core::time::parse_expires(state["latest_time"].as_str().unwrap()).unwrap()
}

/// The Director signs its targets again, stating `signed_at` and the operator's `reset`,
/// with everything expiring at `expires`.
fn director_signs(
    world: &mut World,
    signed_at: uptane_core::time::UtcTime,
    reset: u64,
    expires: uptane_core::time::UtcTime,
) {
    world.director.expires = expires;
    let custom = world.director.targets.custom.clone().unwrap();
    world.director.targets.custom = Some(uptane_core::uptane::with_signing_time(
        custom, &signed_at, reset,
    ));
    world.director.publish();
    world.serve();
}

/// The Primary's time model (docs/SECURITY.md, "Time"): the trusted time moves only to what
/// the Director's verified metadata corroborates, a clock jump is never kept, and it goes back
/// only by the operator's reset signed into that metadata.
#[tokio::test]
async fn the_primary_trusts_the_time_the_director_corroborates_and_resets_only_when_told() {
    let mut world = World::new(&[]).await;
    let t0 = uptane_core::time::from_unix_seconds(now().timestamp()).unwrap();
    let day = chrono::Duration::days(1);
    // The Director's clock runs 20 days ahead: its signing time is later than the Primary's
    // clock, and is what the Primary trusts.
    director_signs(&mut world, t0 + day * 20, 0, t0 + day * 30);
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    assert_eq!(trusted_time(&world), t0 + day * 20);
    // A clock ten years ahead finds the metadata expired (freeze) and is not kept.
    let mut jumped = world.once_command();
    jumped.arg(format!("--fault-clock-offset-secs={}", 3650 * 86_400));
    let (status, stdout, _) =
        tokio::task::spawn_blocking(move || uptane_tests::run(&mut jumped, LIMIT))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("freeze"), "{stdout}");
    assert_eq!(trusted_time(&world), t0 + day * 20);
    // An offset no clock can be off by (no duration, or no date) is refused before the
    // cycle starts.
    for seconds in [i64::MAX, 9_000_000_000_000] {
        let mut absurd = world.once_command();
        absurd.arg(format!("--fault-clock-offset-secs={seconds}"));
        let (status, _, stderr) =
            tokio::task::spawn_blocking(move || uptane_tests::run(&mut absurd, LIMIT))
                .await
                .unwrap();
        assert!(!status.success(), "{seconds}: {stderr}");
        assert!(
            stderr.contains("--fault-clock-offset-secs") && stderr.contains("out of range"),
            "{seconds}: {stderr}"
        );
    }
    assert_eq!(trusted_time(&world), t0 + day * 20);
    // The Director's clock fixed, its metadata expires before the trusted time: refused, and
    // the earlier clock reading changes nothing...
    director_signs(&mut world, t0, 0, t0 + day * 5);
    let (code, summary) = world.once().await;
    assert_eq!(code, 2, "{summary}");
    assert!(summary.contains("freeze"), "{summary}");
    assert_eq!(trusted_time(&world), t0 + day * 20);
    // ...until the operator's reset comes in the Director's signed metadata.
    director_signs(&mut world, t0, 1, t0 + day * 5);
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    let trusted = trusted_time(&world);
    assert!(
        trusted >= t0 && trusted < t0 + day,
        "trusted {trusted} after the reset"
    );
    // The manifest states the trusted time (Uptane §5.4.2.1: the latest time it can verify).
    let (code, summary) = world.once().await;
    assert_eq!(code, 0, "{summary}");
    assert_eq!(
        world.last_manifest().reports[PRIMARY.0]["latest_time"],
        uptane_core::time::format_expires(&trusted)
    );
}
