//! The Primary's update cycle as a real process: an HTTP server on 127.0.0.1 serves both
//! repositories' metadata (signed by `uptane-core`'s builders) and records the manifests,
//! and real `secondary-ecu` processes, one in full and one in partial verification, receive
//! the updates over gRPC.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Reply, Server};
use uptane_core::crypto::PublicKey;
use uptane_core::manifest::{VehicleVersionManifest, verify_ecu_report, verify_vehicle_manifest};
use uptane_core::sign::{RootBuilder, TargetsBuilder};
use uptane_core::testing::{RepoFixture, key};
use uptane_core::time::UtcTime;
use uptane_core::uptane::{director_target_custom, director_targets_custom, image_target_custom};
use uptane_core::verify::Raw;
use uptane_tests::{ChildGuard, bin, run, run_ok, spawn, spawn_listening};

const LIMIT: Duration = Duration::from_secs(60);
const VIN: &str = "VIN-PRIMARY-1";
const CREDENTIAL: &str = "dvc-test-credential";
const PRIMARY: (&str, &str) = ("GW-1", "hw-gateway");
const BRAKE: (&str, &str) = ("BRAKE-1", "hw-brake");
const RADIO: (&str, &str) = ("RADIO-1", "hw-radio");

fn now() -> UtcTime {
    std::time::SystemTime::now().into()
}

/// An image assigned to one ECU, and how each repository describes it.
#[derive(Clone)]
struct Offer {
    serial: &'static str,
    hardware_id: &'static str,
    name: String,
    bytes: Vec<u8>,
    counter: u64,
}

impl Offer {
    fn new(ecu: (&'static str, &'static str), name: &str, bytes: Vec<u8>, counter: u64) -> Self {
        Self {
            serial: ecu.0,
            hardware_id: ecu.1,
            name: name.to_string(),
            bytes,
            counter,
        }
    }
}

struct Secondary {
    serial: &'static str,
    mode: &'static str,
    dir: PathBuf,
    addr: String,
    process: Option<ChildGuard>,
}

struct World {
    server: Server,
    base: String,
    director: RepoFixture,
    images: RepoFixture,
    tmp: tempfile::TempDir,
    secondaries: Vec<Secondary>,
    primary_flags: Vec<String>,
    assignments: u32,
}

fn sha256(bytes: &[u8]) -> String {
    uptane_core::hash::sha256_hex(bytes)
}

impl World {
    async fn new(secondaries: &[((&'static str, &'static str), &'static str)]) -> Self {
        Self::with_flags(secondaries, &[]).await
    }

    async fn with_flags(
        secondaries: &[((&'static str, &'static str), &'static str)],
        primary_flags: &[&str],
    ) -> Self {
        let expires = now() + chrono::Duration::days(30);
        let mut images = RepoFixture::new();
        images.expires = expires;
        images.publish();
        let mut director = RepoFixture::new();
        director.root_keys = vec![key(11)];
        director.timestamp_key = key(12);
        director.snapshot_key = key(13);
        director.targets_key = key(14);
        director.expires = expires;
        director.roots = vec![
            RootBuilder::new(1, expires)
                .key("root", key(11).public_key())
                .key("timestamp", key(12).public_key())
                .key("snapshot", key(13).public_key())
                .key("targets", key(14).public_key())
                .sign(&[&key(11)])
                .unwrap(),
        ];
        director.targets = TargetsBuilder::new(0, expires)
            .custom(director_targets_custom(VIN, "none"))
            .build();
        director.publish();
        let (server, base) = Server::start().await;
        server.guard("/director/", CREDENTIAL);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let p = |n: &str| root.join(n);
        std::fs::write(p("director-root.json"), &director.roots[0]).unwrap();
        std::fs::write(p("image-root.json"), &images.roots[0]).unwrap();
        std::fs::write(p("factory.bin"), b"factory firmware").unwrap();
        let mut world = Self {
            server,
            base,
            director,
            images,
            tmp,
            secondaries: Vec::new(),
            primary_flags: primary_flags.iter().map(|s| s.to_string()).collect(),
            assignments: 0,
        };
        world.serve();
        for ((serial, hardware_id), mode) in secondaries {
            let dir = world.tmp.path().join(serial);
            run_ok(
                Command::new(bin("secondary-ecu"))
                    .args(["init", "--vin", VIN, "--serial", serial, "--hardware-id"])
                    .arg(hardware_id)
                    .args(["--mode", mode, "--factory-name", &format!("{serial}-0.bin")])
                    .arg("--dir")
                    .arg(&dir)
                    .arg("--director-root")
                    .arg(p("director-root.json"))
                    .arg("--image-root")
                    .arg(p("image-root.json"))
                    .arg("--factory-image")
                    .arg(p("factory.bin")),
                LIMIT,
            );
            world.secondaries.push(Secondary {
                serial,
                mode,
                dir,
                addr: String::new(),
                process: None,
            });
        }
        for i in 0..world.secondaries.len() {
            world.start_secondary(i, &[]);
        }
        let mut init = Command::new(bin("primary-ecu"));
        init.arg("init")
            .args([
                "--vin",
                VIN,
                "--serial",
                PRIMARY.0,
                "--hardware-id",
                PRIMARY.1,
            ])
            .args(["--vehicle-credential", CREDENTIAL])
            .arg("--director-root")
            .arg(p("director-root.json"))
            .arg("--image-root")
            .arg(p("image-root.json"))
            .arg("--factory-image")
            .arg(p("factory.bin"));
        world.connection_flags(&mut init);
        run_ok(&mut init, LIMIT);
        world
    }

    fn primary_dir(&self) -> PathBuf {
        self.tmp.path().join("primary")
    }

    /// The flags every Primary command gets: where things are (Secondaries move when they
    /// restart on a new port) and the test's limits.
    fn connection_flags(&self, command: &mut Command) {
        command
            .arg("--dir")
            .arg(self.primary_dir())
            .args(["--director-url", &format!("{}/director", self.base)])
            .args(["--image-repo-url", &format!("{}/images", self.base)])
            .args([
                "--secondary-timeout-secs",
                "10",
                "--read-timeout-secs",
                "10",
            ])
            .args(&self.primary_flags);
        for s in &self.secondaries {
            command.arg("--secondary").arg(format!(
                "{},{},{}",
                s.serial,
                if s.addr.is_empty() {
                    "127.0.0.1:1"
                } else {
                    &s.addr
                },
                s.mode
            ));
        }
    }

    fn start_secondary(&mut self, i: usize, faults: &[&str]) {
        let s = &mut self.secondaries[i];
        s.process = None;
        let mut command = Command::new(bin("secondary-ecu"));
        command
            .arg("run")
            .arg("--dir")
            .arg(&s.dir)
            .args(["--listen", "127.0.0.1:0", "--max-chunk-size", "65536"])
            .args(faults);
        let (process, addr) = spawn_listening(command, LIMIT);
        s.addr = addr;
        s.process = Some(process);
    }

    fn stop_secondary(&mut self, i: usize) {
        self.secondaries[i].process = None;
    }

    fn serve(&self) {
        self.server.publish_at(
            &format!("/director/vehicles/{VIN}/metadata"),
            &self.director,
        );
        self.server.publish_at("/images/metadata", &self.images);
    }

    fn target_path(name: &str, bytes: &[u8]) -> String {
        format!("/images/targets/{}.{name}", sha256(bytes))
    }

    /// Publishes `offers` in both repositories, with `edit` applied to the Image
    /// repository's entries (to make them disagree), and serves the images.
    fn assign_with(&mut self, offers: &[Offer], edit: impl Fn(&Offer) -> Offer) {
        self.assignments += 1;
        let correlation = format!("asg-{}", self.assignments);
        for offer in offers {
            let image = edit(offer);
            self.images.add_target(
                &image.name,
                &image.bytes,
                Some(image_target_custom(&[image.hardware_id], image.counter)),
            );
            self.server.put(
                &Self::target_path(&image.name, &image.bytes),
                Reply::Body(image.bytes.clone()),
            );
        }
        self.images.publish();
        let mut targets =
            TargetsBuilder::new(self.director.targets.common.version, self.director.expires)
                .custom(director_targets_custom(VIN, &correlation));
        for offer in offers {
            targets = targets.target(
                &offer.name,
                &offer.bytes,
                Some(director_target_custom(
                    offer.serial,
                    offer.hardware_id,
                    offer.counter,
                )),
            );
        }
        self.director.targets = targets.build();
        self.director.publish();
        self.serve();
    }

    fn assign(&mut self, offers: &[Offer]) {
        self.assign_with(offers, Clone::clone);
    }

    fn once_command(&self) -> Command {
        let mut command = Command::new(bin("primary-ecu"));
        command.arg("once");
        self.connection_flags(&mut command);
        command
    }

    /// One `primary-ecu once`: its exit status and summary line.
    async fn once(&self) -> (i32, String) {
        let mut command = self.once_command();
        let (status, stdout, stderr) =
            tokio::task::spawn_blocking(move || run(&mut command, LIMIT))
                .await
                .unwrap();
        let code = status.code().unwrap_or(-1);
        assert!(
            (0..=3).contains(&code),
            "once crashed ({status}):\n{stdout}\n{stderr}"
        );
        (code, stdout.trim().to_string())
    }

    fn status(&self) -> Value {
        let out = run_ok(
            Command::new(bin("primary-ecu"))
                .args(["status", "--json", "--dir"])
                .arg(self.primary_dir()),
            LIMIT,
        );
        serde_json::from_str(&out).unwrap()
    }

    fn key_of(&self, serial: &str) -> PublicKey {
        let file = if serial == PRIMARY.0 {
            self.primary_dir().join("ecu.pub.json")
        } else {
            self.secondaries
                .iter()
                .find(|s| s.serial == serial)
                .unwrap()
                .dir
                .join("ecu.pub.json")
        };
        PublicKey::from_json(serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap())
            .unwrap()
    }

    /// The manifests the Primary sent, each verified with its key and every report with
    /// its ECU's key.
    fn manifests(&self) -> Vec<Manifest> {
        let primary = self.key_of(PRIMARY.0);
        self.server
            .requests()
            .into_iter()
            .filter(|r| {
                r.method == "POST" && r.path == format!("/director/vehicles/{VIN}/manifest")
            })
            .map(|r| {
                assert_eq!(r.bearer.as_deref(), Some(CREDENTIAL));
                let manifest =
                    verify_vehicle_manifest(&Raw::<VehicleVersionManifest>::new(r.body), &primary)
                        .unwrap();
                let mut reports = std::collections::BTreeMap::new();
                for serial in manifest.ecu_version_reports.keys() {
                    let report =
                        verify_ecu_report(&manifest.report(serial).unwrap(), &self.key_of(serial))
                            .unwrap();
                    reports.insert(serial.clone(), serde_json::to_value(&*report).unwrap());
                }
                Manifest {
                    reports,
                    unreachable: manifest.unreachable_ecus.clone(),
                }
            })
            .collect()
    }

    fn last_manifest(&self) -> Manifest {
        self.manifests().pop().expect("a manifest was sent")
    }

    fn target_downloads(&self) -> Vec<support::Logged> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/images/targets/"))
            .collect()
    }
}

struct Manifest {
    reports: std::collections::BTreeMap<String, Value>,
    unreachable: std::collections::BTreeMap<String, String>,
}

impl Manifest {
    fn installed(&self, serial: &str) -> String {
        self.reports[serial]["installed_image"]["filename"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn attacks(&self) -> Vec<String> {
        self.reports[PRIMARY.0]["attacks_detected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_string())
            .collect()
    }
}

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
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
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

fn durable_offset(dir: &Path) -> u64 {
    std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["durable_offset"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_during_a_transfer_completes_it_after_the_restart() {
    let mut world = World::new(&[(BRAKE, "full")]).await;
    world.start_secondary(
        0,
        &[
            "--fault-slow-link-ms",
            "20",
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
