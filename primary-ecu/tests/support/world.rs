//! A vehicle on 127.0.0.1 for the Primary's tests and benchmarks: both repositories served
//! by [`Server`] from fixtures, real `secondary-ecu` processes, and a provisioned Primary
//! state directory; assignments publish in both repositories, and every manifest the
//! Primary sends is verified with the ECUs' keys.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use uptane_core::crypto::PublicKey;
use uptane_core::manifest::{VehicleVersionManifest, verify_ecu_report, verify_vehicle_manifest};
use uptane_core::sign::{RootBuilder, TargetsBuilder};
use uptane_core::testing::{RepoFixture, key};
use uptane_core::time::UtcTime;
use uptane_core::uptane::{director_target_custom, director_targets_custom, image_target_custom};
use uptane_core::verify::Raw;
use uptane_tests::{ChildGuard, bin, run, run_ok, spawn_listening};

use super::{Logged, Reply, Server};

pub const LIMIT: Duration = Duration::from_secs(60);
pub const VIN: &str = "VIN-PRIMARY-1";
pub const CREDENTIAL: &str = "dvc-test-credential";
pub const PRIMARY: (&str, &str) = ("GW-1", "hw-gateway");
pub const BRAKE: (&str, &str) = ("BRAKE-1", "hw-brake");
pub const RADIO: (&str, &str) = ("RADIO-1", "hw-radio");

pub fn now() -> UtcTime {
    std::time::SystemTime::now().into()
}

/// An image assigned to one ECU, and how each repository describes it.
#[derive(Clone)]
pub struct Offer {
    pub serial: &'static str,
    pub hardware_id: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
    pub counter: u64,
}

impl Offer {
    pub fn new(
        ecu: (&'static str, &'static str),
        name: &str,
        bytes: Vec<u8>,
        counter: u64,
    ) -> Self {
        Self {
            serial: ecu.0,
            hardware_id: ecu.1,
            name: name.to_string(),
            bytes,
            counter,
        }
    }
}

pub struct Secondary {
    pub serial: &'static str,
    pub mode: &'static str,
    pub dir: PathBuf,
    /// Its TLS certificate's fingerprint, which the Primary pins.
    pub fingerprint: String,
    pub addr: String,
    pub process: Option<ChildGuard>,
}

pub struct World {
    pub server: Server,
    pub base: String,
    pub director: RepoFixture,
    pub images: RepoFixture,
    pub tmp: tempfile::TempDir,
    pub secondaries: Vec<Secondary>,
    pub primary_flags: Vec<String>,
    pub assignments: u32,
}

pub fn sha256(bytes: &[u8]) -> String {
    uptane_core::hash::sha256_hex(bytes)
}

impl World {
    pub async fn new(secondaries: &[((&'static str, &'static str), &'static str)]) -> Self {
        Self::with_flags(secondaries, &[]).await
    }

    pub async fn with_flags(
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
        // The Director renews the handed-over credential (whose lifetime the Primary does
        // not know) at the first cycle; this one renews it as itself, for a year.
        let now: uptane_core::time::UtcTime = std::time::SystemTime::now().into();
        let renewal = serde_json::json!({
            "credential": CREDENTIAL,
            "credential_issued_at": uptane_core::time::format_expires(&now),
            "credential_expires_at":
                uptane_core::time::format_expires(&(now + chrono::Duration::days(365))),
        });
        server.put(
            &format!("/director/vehicles/{VIN}/credential"),
            Reply::Body(renewal.to_string().into_bytes()),
        );
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
        // The Primary's TLS identity first: each Secondary pins it.
        let primary_fingerprint = run_ok(
            Command::new(bin("primary-ecu"))
                .args(["tls-identity", "--serial", PRIMARY.0, "--dir"])
                .arg(world.primary_dir()),
            LIMIT,
        )
        .trim()
        .to_string();
        for ((serial, hardware_id), mode) in secondaries {
            let dir = world.tmp.path().join(serial);
            let printed = run_ok(
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
                    .arg(p("factory.bin"))
                    .args(["--primary-fingerprint", &primary_fingerprint]),
                LIMIT,
            );
            let fingerprint = printed
                .lines()
                .find_map(|l| l.strip_prefix("TLS certificate fingerprint "))
                .expect("init prints the fingerprint")
                .trim()
                .to_string();
            world.secondaries.push(Secondary {
                serial,
                mode,
                dir,
                fingerprint,
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

    pub fn primary_dir(&self) -> PathBuf {
        self.tmp.path().join("primary")
    }

    /// The flags every Primary command gets: where things are (Secondaries move when they
    /// restart on a new port) and the test's limits.
    pub fn connection_flags(&self, command: &mut Command) {
        command
            .arg("--dir")
            .arg(self.primary_dir())
            .args(["--director-url", &format!("{}/director", self.base)])
            .args(["--image-repo-url", &format!("{}/images", self.base)])
            // The test server is plaintext HTTP (it injects faults); the Secondary links
            // stay pinned mutual TLS, since every one has a fingerprint.
            .arg("--insecure")
            .args([
                "--secondary-timeout-secs",
                "10",
                "--read-timeout-secs",
                "10",
            ])
            .args(&self.primary_flags);
        for s in &self.secondaries {
            command.arg("--secondary").arg(format!(
                "{},{},{},{}",
                s.serial,
                if s.addr.is_empty() {
                    "127.0.0.1:1"
                } else {
                    &s.addr
                },
                s.mode,
                s.fingerprint
            ));
        }
    }

    pub fn start_secondary(&mut self, i: usize, faults: &[&str]) {
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

    pub fn stop_secondary(&mut self, i: usize) {
        self.secondaries[i].process = None;
    }

    pub fn serve(&self) {
        self.server.publish_at(
            &format!("/director/vehicles/{VIN}/metadata"),
            &self.director,
        );
        self.server.publish_at("/images/metadata", &self.images);
    }

    pub fn target_path(name: &str, bytes: &[u8]) -> String {
        format!("/images/targets/{}.{name}", sha256(bytes))
    }

    /// Publishes `offers` in both repositories, with `edit` applied to the Image
    /// repository's entries (to make them disagree), and serves the images.
    pub fn assign_with(&mut self, offers: &[Offer], edit: impl Fn(&Offer) -> Offer) {
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

    pub fn assign(&mut self, offers: &[Offer]) {
        self.assign_with(offers, Clone::clone);
    }

    /// Assigns one image to several ECUs of one hardware id (one Director target whose
    /// `ecuIdentifiers` names them all).
    pub fn assign_shared(
        &mut self,
        name: &str,
        bytes: &[u8],
        counter: u64,
        ecus: &[&str],
        hardware_id: &str,
    ) {
        self.assignments += 1;
        self.images.add_target(
            name,
            bytes,
            Some(image_target_custom(&[hardware_id], counter)),
        );
        self.server
            .put(&Self::target_path(name, bytes), Reply::Body(bytes.to_vec()));
        self.images.publish();
        let identifiers: serde_json::Map<String, Value> = ecus
            .iter()
            .map(|serial| {
                (
                    serial.to_string(),
                    serde_json::json!({"hardwareId": hardware_id}),
                )
            })
            .collect();
        let custom = serde_json::json!({"ecuIdentifiers": identifiers, "releaseCounter": counter});
        self.director.targets =
            TargetsBuilder::new(self.director.targets.common.version, self.director.expires)
                .custom(director_targets_custom(
                    VIN,
                    &format!("asg-{}", self.assignments),
                ))
                .target(name, bytes, Some(custom))
                .build();
        self.director.publish();
        self.serve();
    }

    pub fn once_command(&self) -> Command {
        let mut command = Command::new(bin("primary-ecu"));
        command.arg("once");
        self.connection_flags(&mut command);
        command
    }

    /// One `primary-ecu once`: its exit status and summary line.
    pub async fn once(&self) -> (i32, String) {
        let mut command = self.once_command();
        let (status, stdout, stderr) =
            tokio::task::spawn_blocking(move || run(&mut command, LIMIT))
                .await
                .unwrap();
        let code = status.code().unwrap_or(-1);
        assert!(
            matches!(code, 0 | 2 | 3 | 4 | 5),
            "once crashed ({status}):\n{stdout}\n{stderr}"
        );
        (code, stdout.trim().to_string())
    }

    pub fn status(&self) -> Value {
        let out = run_ok(
            Command::new(bin("primary-ecu"))
                .args(["status", "--json", "--dir"])
                .arg(self.primary_dir()),
            LIMIT,
        );
        serde_json::from_str(&out).unwrap()
    }

    pub fn key_of(&self, serial: &str) -> PublicKey {
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
    pub fn manifests(&self) -> Vec<Manifest> {
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
                    let report = verify_ecu_report(
                        &manifest.report(serial).unwrap(),
                        &self.key_of(serial.as_str()),
                    )
                    .unwrap();
                    reports.insert(serial.to_string(), serde_json::to_value(&*report).unwrap());
                }
                Manifest {
                    reports,
                    unreachable: manifest
                        .unreachable_ecus
                        .iter()
                        .map(|(s, why)| (s.to_string(), why.clone()))
                        .collect(),
                }
            })
            .collect()
    }

    pub fn last_manifest(&self) -> Manifest {
        self.manifests().pop().expect("a manifest was sent")
    }

    pub fn target_downloads(&self) -> Vec<Logged> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/images/targets/"))
            .collect()
    }
}

pub struct Manifest {
    pub reports: std::collections::BTreeMap<String, Value>,
    pub unreachable: std::collections::BTreeMap<String, String>,
}

impl Manifest {
    pub fn installed(&self, serial: &str) -> String {
        self.reports[serial]["installed_image"]["filename"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn attacks(&self) -> Vec<String> {
        self.reports[PRIMARY.0]["attacks_detected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_string())
            .collect()
    }
}
