//! The update cycle in-process, over in-memory ports: a Director and an Image repository
//! made of real signed metadata (`uptane-core`'s fixtures), and Secondaries that sign real
//! version reports. Nothing is spawned and no socket is opened; the process tests
//! (`update_cycle.rs`) run the same cycle against the real binaries.

#![allow(clippy::unwrap_used)] // test support code outside #[test] functions

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use primary_ecu::agent::{EcuOutcome, ManifestOutcome, Primary, Verification};
use primary_ecu::config::{Mode, SecondaryConfig, Settings, SettingsArgs};
use primary_ecu::download::{ImageStore, VerifiedFile};
use primary_ecu::install::install_own;
use primary_ecu::ports::{
    DirectorPort, ImageRepoPort, IssuedCredential, Ports, RemoteRepository, SecondaryPort,
};
use primary_ecu::provision::{LocalState, Registered, write_credential, write_state};
use primary_ecu::repo::FetchError;
use primary_ecu::secondary::{Delivery, LinkError};
use primary_ecu::state::InventoryEcu;
use proto::v2::{PutMetadataRequest, ResultCode};
use std::io::Write;

use service_runtime::digest::ThreadedDigests;
use uptane_core::crypto::{PublicKey, SigningKey};
use uptane_core::error::AttackKind;
use uptane_core::hash::{sha256_hex, standard_hashes};
use uptane_core::ids::{EcuSerial, HardwareId, Vin};
use uptane_core::manifest::{
    ECU_REPORT_TYPE, EcuVersionReport, InstalledImage, VehicleVersionManifest,
    verify_vehicle_manifest,
};
use uptane_core::refresh::{MetadataFile, Refresh};
use uptane_core::sign::{RootBuilder, TargetsBuilder};
use uptane_core::testing::{RepoFixture, key};
use uptane_core::trusted::Limits;
use uptane_core::uptane::{
    director_target_custom, director_targets_custom, image_target_custom, verify_partial,
};
use uptane_core::verify::Raw;

const VIN: &str = "VIN-IN-PROCESS";
const GATEWAY: (&str, &str) = ("GW-1", "hw-gw");
const BRAKE: (&str, &str) = ("BRAKE-1", "hw-brake");

fn id<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().unwrap()
}

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

/// The Director: one vehicle's repository, every manifest it was sent, and the credentials
/// it issued.
#[derive(Clone)]
struct Director {
    repo: Arc<Mutex<RepoFixture>>,
    manifests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Credentials issued by renewals, oldest first.
    renewals: Arc<Mutex<Vec<String>>>,
    /// The credential the Primary sends now.
    in_use: Arc<Mutex<String>>,
    /// Renewals fail (the Director is unreachable).
    renewal_fails: Arc<std::sync::atomic::AtomicBool>,
}

impl Director {
    fn new() -> Self {
        let mut repo = RepoFixture::new();
        repo.root_keys = vec![key(21)];
        repo.timestamp_key = key(22);
        repo.snapshot_key = key(23);
        repo.targets_key = key(24);
        repo.roots = vec![
            RootBuilder::new(1, repo.expires)
                .key("root", key(21).public_key())
                .key("timestamp", key(22).public_key())
                .key("snapshot", key(23).public_key())
                .key("targets", key(24).public_key())
                .sign(&[&key(21)])
                .unwrap(),
        ];
        repo.targets = TargetsBuilder::new(0, repo.expires)
            .custom(director_targets_custom(VIN, "none"))
            .build();
        repo.publish();
        Self {
            repo: Arc::new(Mutex::new(repo)),
            manifests: Arc::default(),
            renewals: Arc::default(),
            in_use: Arc::default(),
            renewal_fails: Arc::default(),
        }
    }

    /// Assigns `images` (ECU, hardware id, name, bytes, release counter) as one assignment.
    fn assign(&self, correlation_id: &str, images: &[(&str, &str, &str, &[u8], u64)]) {
        let mut repo = self.repo.lock().unwrap();
        let mut builder = TargetsBuilder::new(repo.targets.common.version, repo.expires)
            .custom(director_targets_custom(VIN, correlation_id));
        for (serial, hw, name, bytes, counter) in images {
            builder = builder.target(
                name,
                bytes,
                Some(director_target_custom(serial, hw, *counter)),
            );
        }
        repo.targets = builder.build();
        repo.publish();
    }

    /// The manifests, verified with the Primary's key.
    fn manifests(&self, primary: &PublicKey) -> Vec<VehicleVersionManifest> {
        self.manifests
            .lock()
            .unwrap()
            .iter()
            .map(|bytes| {
                let raw = Raw::new(bytes.clone());
                (*verify_vehicle_manifest(&raw, primary).unwrap()).clone()
            })
            .collect()
    }
}

impl RemoteRepository for Director {
    async fn metadata(&self, file: &MetadataFile, _: u64) -> Result<Option<Vec<u8>>, FetchError> {
        Ok(self.repo.lock().unwrap().file(file))
    }
}

impl DirectorPort for Director {
    async fn send_manifest(&self, body: Vec<u8>) -> ManifestOutcome {
        self.manifests.lock().unwrap().push(body);
        ManifestOutcome::Accepted
    }

    async fn renew_credential(&self) -> Result<IssuedCredential, String> {
        if self
            .renewal_fails
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err("connection refused".into());
        }
        let mut renewals = self.renewals.lock().unwrap();
        let secret = format!("dvc_{:064}", renewals.len() + 1);
        renewals.push(secret.clone());
        let now = now();
        Ok(IssuedCredential {
            secret,
            issued_at: now,
            expires_at: now + chrono::Duration::days(30),
        })
    }

    fn use_credential(&self, secret: &str) {
        *self.in_use.lock().unwrap() = secret.to_string();
    }
}

/// The Image repository: metadata, and images by `<sha256>.<name>`.
#[derive(Clone)]
struct Images {
    repo: Arc<Mutex<RepoFixture>>,
    blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl Images {
    fn new() -> Self {
        Self {
            repo: Arc::new(Mutex::new(RepoFixture::new())),
            blobs: Arc::default(),
        }
    }

    fn publish(&self, name: &str, bytes: &[u8], hw: &str, counter: u64) {
        let mut repo = self.repo.lock().unwrap();
        repo.add_target(name, bytes, Some(image_target_custom(&[hw], counter)));
        repo.publish();
        self.blobs
            .lock()
            .unwrap()
            .insert(format!("{}.{name}", sha256_hex(bytes)), bytes.to_vec());
    }

    /// Serves `bytes` where the image `name` (as published) should be.
    fn tamper(&self, name: &str, published: &[u8], bytes: &[u8]) {
        self.blobs
            .lock()
            .unwrap()
            .insert(format!("{}.{name}", sha256_hex(published)), bytes.to_vec());
    }
}

impl RemoteRepository for Images {
    async fn metadata(&self, file: &MetadataFile, _: u64) -> Result<Option<Vec<u8>>, FetchError> {
        Ok(self.repo.lock().unwrap().file(file))
    }
}

impl ImageRepoPort for Images {
    fn targets_base(&self) -> &str {
        "mem://targets/"
    }

    async fn download_to(
        &self,
        location: &str,
        file: &std::fs::File,
        digests: &mut ThreadedDigests,
        length: u64,
    ) -> Result<(), FetchError> {
        let name = location.trim_start_matches("mem://targets/");
        let bytes = self.blobs.lock().unwrap().get(name).cloned();
        let Some(bytes) = bytes else {
            return Err(FetchError::Status {
                url: location.into(),
                status: 404,
            });
        };
        let from = digests.bytes_seen() as usize;
        // As a real client, never more than the approved length.
        let end = bytes.len().min(length as usize + 1);
        let rest = bytes::Bytes::copy_from_slice(&bytes[from.min(end)..end]);
        digests
            .update(rest.clone().into())
            .await
            .map_err(|source| FetchError::Digest {
                url: location.into(),
                source,
            })?;
        let mut file = file;
        file.write_all(&rest).unwrap();
        file.sync_all().unwrap();
        Ok(())
    }
}

/// How a Secondary answers a delivery.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Installs,
    Refuses,
    Offline,
    /// Signs (with its own key) a report counter the Director cannot keep.
    HugeCounter,
    /// Signs a report of a megabyte of attacks.
    Floods,
    /// Signs a report with a field of its own nested as deep as a report may be on its own,
    /// too deep to be carried in a manifest.
    Nests,
}

/// A Secondary that signs real reports and installs what it is sent if its bytes match.
#[derive(Clone)]
struct Secondary {
    serial: EcuSerial,
    key: SigningKey,
    state: Arc<Mutex<(InstalledImage, u64, Behaviour)>>,
}

impl Secondary {
    fn new(serial: &str, factory: &[u8]) -> Self {
        Self {
            serial: id(serial),
            key: key(31),
            state: Arc::new(Mutex::new((
                InstalledImage {
                    filename: "brake-factory.bin".into(),
                    length: factory.len() as u64,
                    hashes: standard_hashes(factory),
                    release_counter: 0,
                },
                0,
                Behaviour::Installs,
            ))),
        }
    }

    fn behave(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().2 = behaviour;
    }

    fn running(&self) -> String {
        self.state.lock().unwrap().0.filename.clone()
    }
}

impl SecondaryPort for Secondary {
    fn serial(&self) -> &EcuSerial {
        &self.serial
    }

    async fn version_report(&mut self, nonce: &str) -> Result<Vec<u8>, LinkError> {
        let mut state = self.state.lock().unwrap();
        if state.2 == Behaviour::Offline {
            return Err(LinkError::Unreachable {
                serial: self.serial.to_string(),
                address: "in memory".into(),
                reason: "switched off".into(),
            });
        }
        state.1 += 1;
        let attack = uptane_core::manifest::DetectedAttack {
            kind: uptane_core::error::AttackKind::Replay,
            detail: "x".repeat(500),
        };
        let report = EcuVersionReport {
            report_type: ECU_REPORT_TYPE.into(),
            ecu_serial: self.serial.clone(),
            installed_image: state.0.clone(),
            attacks_detected: match state.2 {
                Behaviour::Floods => vec![attack; 2_000],
                _ => vec![],
            },
            latest_time: std::time::SystemTime::now().into(),
            nonce: nonce.into(),
            report_counter: match state.2 {
                Behaviour::HugeCounter => 1 << 63,
                _ => state.1,
            },
            last_install: None,
        };
        if state.2 == Behaviour::Nests {
            // As deep as a report may be on its own (129 levels in its `signed` object).
            let bytes = uptane_core::testing::nested_report(&report, 128, &self.key);
            uptane_core::manifest::verify_ecu_report(
                &Raw::new(bytes.clone()),
                self.key.public_key(),
            )
            .expect("the report verifies on its own");
            return Ok(bytes);
        }
        Ok(report.sign(&self.key).unwrap())
    }

    async fn acknowledge(&mut self, _: u64) -> Result<(), LinkError> {
        Ok(())
    }

    async fn deliver(
        &mut self,
        _: i64,
        bundle: PutMetadataRequest,
        image: &VerifiedFile,
    ) -> Result<Delivery, LinkError> {
        assert!(!bundle.director_targets.is_empty(), "metadata forwarded");
        let mut state = self.state.lock().unwrap();
        if state.2 == Behaviour::Refuses {
            return Ok(Delivery::Failed {
                code: ResultCode::HashMismatch,
                attack: Some(AttackKind::ArbitrarySoftware),
                detail: "refused".into(),
            });
        }
        let bytes = std::fs::read(image.path()).unwrap();
        let approved = image.approved();
        assert_eq!(
            standard_hashes(&bytes)["sha256"],
            approved.hashes()["sha256"]
        );
        state.0 = InstalledImage {
            filename: approved.filename().to_string(),
            length: approved.length(),
            hashes: approved.hashes().clone(),
            release_counter: approved.release_counter(),
        };
        Ok(Delivery::Installed)
    }

    /// Nothing is ever pending here between cycles: a withdrawn update never reached it.
    async fn withdraw(
        &mut self,
        _: i64,
        bundle: PutMetadataRequest,
        _: &str,
        _: &str,
    ) -> Result<Delivery, LinkError> {
        assert!(!bundle.director_targets.is_empty(), "metadata forwarded");
        Ok(Delivery::Failed {
            code: ResultCode::OperationCancelled,
            attack: None,
            detail: "withdrawn before it reached the ECU".into(),
        })
    }
}

enum InMemory {}

impl Ports for InMemory {
    type Director = Director;
    type ImageRepo = Images;
    type Secondary = Secondary;
}

struct Vehicle {
    dir: tempfile::TempDir,
    director: Director,
    images: Images,
    brake: Secondary,
    primary: Primary<InMemory>,
}

impl Vehicle {
    fn new() -> Self {
        Self::with_credential_age(chrono::Duration::zero())
    }

    /// A vehicle whose 30-day credential was issued `age` ago.
    fn with_credential_age(age: chrono::Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let director = Director::new();
        let images = Images::new();
        let brake = Secondary::new(BRAKE.0, b"brake factory");
        let settings = Settings::resolve(
            None,
            SettingsArgs {
                vin: Some(VIN.into()),
                serial: Some(GATEWAY.0.into()),
                hardware_id: Some(GATEWAY.1.into()),
                director_url: Some("http://127.0.0.1:9".into()),
                image_repo_url: Some("http://127.0.0.1:9".into()),
                secondaries: vec![SecondaryConfig {
                    serial: id(BRAKE.0),
                    address: "127.0.0.1:9".into(),
                    mode: Mode::Full,
                    fingerprint: None,
                }],
                insecure: true,
                ..Default::default()
            },
        )
        .unwrap();
        let local = LocalState {
            director_root: &director.repo.lock().unwrap().roots[0].clone(),
            image_root: &images.repo.lock().unwrap().roots[0].clone(),
            factory_image: b"gateway factory",
            factory_name: "gw-factory.bin",
            secondaries: vec![InventoryEcu {
                serial: id(BRAKE.0),
                hardware_id: id(BRAKE.1),
                public_key: brake.key.public_key().to_json().clone(),
                mode: Some(Mode::Full),
            }],
        };
        write_state(dir.path(), &settings, local).unwrap();
        let issued_at = now() - age;
        let first = IssuedCredential {
            secret: "dvc_test".into(),
            issued_at,
            expires_at: issued_at + chrono::Duration::days(30),
        };
        write_credential(dir.path(), &Registered::Issued(first)).unwrap();
        let primary = Primary::<InMemory>::with_ports(
            dir.path(),
            settings,
            director.clone(),
            images.clone(),
            vec![brake.clone()],
        )
        .unwrap();
        Self {
            dir,
            director,
            images,
            brake,
            primary,
        }
    }

    fn primary_key(&self) -> PublicKey {
        let json = std::fs::read(self.dir.path().join("ecu.pub.json")).unwrap();
        PublicKey::from_json(serde_json::from_slice(&json).unwrap()).unwrap()
    }

    fn last_manifest(&self) -> VehicleVersionManifest {
        self.director
            .manifests(&self.primary_key())
            .pop()
            .expect("a manifest")
    }

    fn firmware(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("firmware/active.img")).unwrap()
    }
}

#[tokio::test]
async fn a_credential_with_a_third_of_its_life_left_is_renewed_stored_and_used() {
    // 10 days into a 30-day credential: not yet.
    let mut car = Vehicle::with_credential_age(chrono::Duration::days(10));
    car.primary.cycle().await;
    assert!(car.director.renewals.lock().unwrap().is_empty());

    // 21 days in: renewed, and the new one is on disk before it is used.
    let mut car = Vehicle::with_credential_age(chrono::Duration::days(21));
    car.director
        .renewal_fails
        .store(true, std::sync::atomic::Ordering::Relaxed);
    car.primary.cycle().await;
    // A failed renewal keeps the old credential, and is tried again next cycle.
    let stored = || std::fs::read_to_string(car.dir.path().join("credential")).unwrap();
    assert_eq!(stored(), "dvc_test");
    car.director
        .renewal_fails
        .store(false, std::sync::atomic::Ordering::Relaxed);
    car.primary.cycle().await;
    let renewed = car.director.renewals.lock().unwrap().clone();
    assert_eq!(renewed.len(), 1);
    assert_eq!(stored(), renewed[0]);
    assert_eq!(*car.director.in_use.lock().unwrap(), renewed[0]);
    let state = car.primary.state();
    assert!(state.credential_expires_at.unwrap() > now() + chrono::Duration::days(29));
    // Not again until it is due again.
    car.primary.cycle().await;
    assert_eq!(car.director.renewals.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn updates_the_primary_and_a_secondary_then_finds_nothing_new() {
    let mut car = Vehicle::new();
    car.images.publish("gw-2.bin", b"gateway two", GATEWAY.1, 2);
    car.images.publish("brake-2.bin", b"brake two", BRAKE.1, 2);
    car.director.assign(
        "asg-1",
        &[
            (GATEWAY.0, GATEWAY.1, "gw-2.bin", b"gateway two", 2),
            (BRAKE.0, BRAKE.1, "brake-2.bin", b"brake two", 2),
        ],
    );
    let report = car.primary.cycle().await;
    assert_eq!(report.exit_code(), 0, "{}", report.summary());
    assert_eq!(
        report.ecus[&id::<EcuSerial>(BRAKE.0)],
        EcuOutcome::Installed("brake-2.bin".into())
    );
    assert_eq!(car.brake.running(), "brake-2.bin");
    assert_eq!(car.firmware(), b"gateway two");
    // The closing manifest tells the Director, with the Primary's own install result.
    let manifest = car.last_manifest();
    assert_eq!(manifest.vin, id::<Vin>(VIN));
    let own = manifest.report(&id(GATEWAY.0)).unwrap();
    let own: EcuVersionReport = serde_json::from_slice::<serde_json::Value>(own.as_bytes())
        .map(|v| serde_json::from_value(v["signed"].clone()).unwrap())
        .unwrap();
    assert_eq!(own.installed_image.filename, "gw-2.bin");
    let last = own.last_install.unwrap();
    assert_eq!(last.correlation_id, "asg-1");
    assert_eq!(last.result, uptane_core::manifest::InstallResult::Installed);

    // Nothing changed: nothing is downloaded or delivered again.
    let again = car.primary.cycle().await;
    assert_eq!(again.verification, Verification::Unchanged);
    assert!(again.ecus.is_empty());
}

#[tokio::test]
async fn an_image_that_is_not_the_approved_one_is_refused_and_reported() {
    let mut car = Vehicle::new();
    car.images.publish("brake-2.bin", b"brake two", BRAKE.1, 2);
    car.images.tamper("brake-2.bin", b"brake two", b"brake tw0");
    car.director.assign(
        "asg-2",
        &[(BRAKE.0, BRAKE.1, "brake-2.bin", b"brake two", 2)],
    );
    let report = car.primary.cycle().await;
    assert!(
        matches!(
            report.ecus[&id::<EcuSerial>(BRAKE.0)],
            EcuOutcome::Pending(ref why) if why.contains("arbitrary_software")
        ),
        "{}",
        report.summary()
    );
    assert_eq!(car.brake.running(), "brake-factory.bin");
    let manifest = car.last_manifest();
    let own = manifest.report(&id(GATEWAY.0)).unwrap();
    let text = String::from_utf8(own.as_bytes().to_vec()).unwrap();
    assert!(text.contains("arbitrary_software"), "{text}");
}

#[tokio::test]
async fn a_refusing_secondary_fails_for_good_and_an_offline_one_waits() {
    let mut car = Vehicle::new();
    car.images.publish("brake-2.bin", b"brake two", BRAKE.1, 2);
    car.director.assign(
        "asg-3",
        &[(BRAKE.0, BRAKE.1, "brake-2.bin", b"brake two", 2)],
    );

    car.brake.behave(Behaviour::Offline);
    let report = car.primary.cycle().await;
    assert_eq!(report.exit_code(), 3, "{}", report.summary());
    assert!(report.unreachable.contains_key(&id::<EcuSerial>(BRAKE.0)));
    assert!(
        car.last_manifest()
            .unreachable_ecus
            .contains_key(&id::<EcuSerial>(BRAKE.0))
    );

    car.brake.behave(Behaviour::Refuses);
    let report = car.primary.cycle().await;
    assert!(
        matches!(
            report.ecus[&id::<EcuSerial>(BRAKE.0)],
            EcuOutcome::Failed(ref why) if why.contains("arbitrary_software")
        ),
        "{}",
        report.summary()
    );
    // Final for this assignment: not delivered again.
    car.brake.behave(Behaviour::Installs);
    let report = car.primary.cycle().await;
    assert!(report.ecus.is_empty(), "{}", report.summary());
    assert_eq!(car.brake.running(), "brake-factory.bin");
}

/// A Secondary whose own key signs a report the Director would refuse (a counter no signed
/// 64-bit column holds, a megabyte of attacks, nesting too deep to carry): refused alone,
/// the ECU reported unreachable with why, and the rest of the vehicle's manifest sent as
/// before (not refused whole, every cycle).
#[tokio::test]
async fn a_report_the_director_would_refuse_is_refused_alone() {
    let mut car = Vehicle::new();
    for (behaviour, why) in [
        (Behaviour::HugeCounter, "report counter above 2^63 - 1"),
        (Behaviour::Floods, "more than 65536"),
        (Behaviour::Nests, "cannot be carried in a manifest: "),
    ] {
        car.brake.behave(behaviour);
        car.primary.cycle().await;
        let manifest = car.last_manifest();
        let reason = &manifest.unreachable_ecus[&id::<EcuSerial>(BRAKE.0)];
        assert!(reason.contains(why), "{reason}");
        assert!(reason.len() <= 600, "{}", reason.len());
        assert!(
            manifest
                .ecu_version_reports
                .contains_key(&id::<EcuSerial>(GATEWAY.0))
        );
    }
}

/// An approved image for `bytes`, by partial verification of Director targets.
fn approved(bytes: &[u8]) -> uptane_core::uptane::ApprovedImage {
    let director = Director::new();
    director.assign("asg-4", &[(GATEWAY.0, GATEWAY.1, "gw-3.bin", bytes, 3)]);
    let mut repo = director.repo.lock().unwrap().clone();
    let root = Raw::new(repo.roots[0].clone());
    let now = std::time::SystemTime::now().into();
    let mut refresh = Refresh::partial(&root, now, Limits::default()).unwrap();
    refresh.run(&mut repo).unwrap();
    let (vin, serial, hw): (Vin, EcuSerial, HardwareId) = (id(VIN), id(GATEWAY.0), id(GATEWAY.1));
    let ecu = uptane_core::uptane::EcuIdentity {
        vin: &vin,
        ecu_serial: &serial,
        hardware_id: &hw,
        installed_release_counter: 0,
    };
    verify_partial(refresh.trusted(), &ecu).unwrap().unwrap()
}

#[tokio::test]
async fn the_primary_installs_exactly_the_bytes_it_verified() {
    let images = Images::new();
    images.publish("gw-3.bin", b"gateway three", GATEWAY.1, 3);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path().join("images"), dir.path().join("downloads"));
    let image = approved(b"gateway three");
    let location = format!("mem://targets/{}.gw-3.bin", sha256_hex(b"gateway three"));
    let file = store.fetch(&images, &location, &image).await.unwrap();
    let firmware = dir.path().join("firmware.img");
    std::fs::write(&firmware, b"old").unwrap();

    // The verified file is changed on disk before it is installed: refused, old image kept.
    std::fs::write(file.path(), b"gateway evil!").unwrap();
    let refused = install_own(&file, &firmware).await.unwrap_err();
    assert_eq!(refused.attack, Some(AttackKind::ArbitrarySoftware));
    assert_eq!(std::fs::read(&firmware).unwrap(), b"old");

    // Fetched again, the kept file is hashed again, found wrong, and downloaded anew.
    let file = store.fetch(&images, &location, &image).await.unwrap();
    let installed = install_own(&file, &firmware).await.unwrap();
    assert_eq!(installed.filename, "gw-3.bin");
    assert_eq!(std::fs::read(&firmware).unwrap(), b"gateway three");
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp"))
            .count(),
        0,
        "no temporary file left behind"
    );
}

/// An update the Director withdraws (an operator's cancel) before it is done: the Primary
/// abandons its own, saying so in its next report, and tells the Secondary to.
#[tokio::test]
async fn updates_the_director_withdraws_are_abandoned() {
    let mut car = Vehicle::new();
    car.images.publish("gw-2.bin", b"gateway two", GATEWAY.1, 2);
    car.images.publish("brake-2.bin", b"brake two", BRAKE.1, 2);
    // The gateway's image cannot be downloaded yet, the brake is off: neither finishes.
    car.images.blobs.lock().unwrap().clear();
    car.brake.behave(Behaviour::Offline);
    car.director.assign(
        "asg-7",
        &[
            (GATEWAY.0, GATEWAY.1, "gw-2.bin", b"gateway two", 2),
            (BRAKE.0, BRAKE.1, "brake-2.bin", b"brake two", 2),
        ],
    );
    let report = car.primary.cycle().await;
    assert_eq!(report.exit_code(), 3, "{}", report.summary());
    // Its own update is under way, and its report says so.
    let own = own_report(&car);
    let last = own.last_install.unwrap();
    assert_eq!(
        (last.correlation_id.as_str(), last.result),
        ("asg-7", uptane_core::manifest::InstallResult::InProgress)
    );

    car.brake.behave(Behaviour::Installs);
    car.director.assign("asg-8", &[]);
    let report = car.primary.cycle().await;
    assert_eq!(report.exit_code(), 0, "{}", report.summary());
    for serial in [GATEWAY.0, BRAKE.0] {
        assert!(
            matches!(
                report.ecus[&id::<EcuSerial>(serial)],
                EcuOutcome::Cancelled(_)
            ),
            "{}",
            report.summary()
        );
        let update = &car.primary.state().updates[&id::<EcuSerial>(serial)];
        assert_eq!(update.phase, primary_ecu::state::Phase::Cancelled);
    }
    assert_eq!(car.brake.running(), "brake-factory.bin");
    let own = own_report(&car);
    assert_eq!(own.installed_image.filename, "gw-factory.bin");
    let last = own.last_install.unwrap();
    assert_eq!(last.correlation_id, "asg-7");
    assert_eq!(last.result, uptane_core::manifest::InstallResult::Cancelled);
    // Done: nothing is sent again.
    let report = car.primary.cycle().await;
    assert!(report.ecus.is_empty(), "{}", report.summary());
}

/// The Primary's own report in the last manifest sent.
fn own_report(car: &Vehicle) -> EcuVersionReport {
    let manifest = car.last_manifest();
    let own = manifest.report(&id(GATEWAY.0)).unwrap();
    serde_json::from_slice::<serde_json::Value>(own.as_bytes())
        .map(|v| serde_json::from_value(v["signed"].clone()).unwrap())
        .unwrap()
}
