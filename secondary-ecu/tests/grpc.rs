//! The Secondary agent as a real process, over real gRPC on 127.0.0.1: updates in both
//! verification modes, power loss at each phase, a failed trial boot, every refusal, and
//! every call but `GetInfo` refused to anything that is not the pinned Primary.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use proto::v2::secondary_client::SecondaryClient;
use proto::v2::{
    ActivateRequest, BeginTransferRequest, Chunk, GetInstallationResultRequest,
    GetOperationRequest, GetStatusRequest, GetVersionReportRequest, InstallRequest, OperationState,
    PutMetadataRequest, PutTimeRequest, ResultCode,
};
use serde_json::Value;
use service_runtime::tls::{Identity, ServerTrust};
use tonic::transport::Channel;
use uptane_core::crypto::SigningKey;
use uptane_core::sign::TargetsBuilder;
use uptane_core::testing::{RepoFixture, key};
use uptane_core::time::format_expires;
use uptane_core::uptane::{
    director_target_custom, director_targets_custom, image_target_custom, with_signing_time,
};
use uptane_tests::forge::{LinkKeys, secondary_client};
use uptane_tests::{ChildGuard, run_ok, spawn_listening};

const LIMIT: Duration = Duration::from_secs(60);
const VIN: &str = "VIN-0001";
const SERIAL: &str = "ECU-BRAKE-1";
const HW: &str = "hw-brake";
const CORR: &str = "asg-1";

fn bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_secondary-ecu").into()
}

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

/// Both repositories, with the Director assigning `image` (as `name`) to this ECU.
struct Repos {
    director: RepoFixture,
    images: RepoFixture,
}

impl Repos {
    fn new(name: &str, image: &[u8], counter: u64) -> Self {
        let mut images = RepoFixture::new();
        images.expires = now() + chrono::Duration::days(30);
        images.add_target(name, image, Some(image_target_custom(&[HW], counter)));
        images.publish();
        let mut director = RepoFixture::new();
        director.root_keys = vec![key(11)];
        director.timestamp_key = key(12);
        director.snapshot_key = key(13);
        director.targets_key = key(14);
        director.roots = vec![
            uptane_core::sign::RootBuilder::new(1, now() + chrono::Duration::days(30))
                .key("root", key(11).public_key())
                .key("timestamp", key(12).public_key())
                .key("snapshot", key(13).public_key())
                .key("targets", key(14).public_key())
                .sign(&[&key(11)])
                .unwrap(),
        ];
        director.expires = now() + chrono::Duration::days(30);
        director.targets = TargetsBuilder::new(0, director.expires)
            .target(
                name,
                image,
                Some(director_target_custom(SERIAL, HW, counter)),
            )
            .custom(director_targets_custom(VIN, CORR))
            .build();
        director.publish();
        Self { director, images }
    }

    fn bundle(&self) -> PutMetadataRequest {
        PutMetadataRequest {
            correlation_id: CORR.into(),
            director_roots: vec![],
            director_timestamp: self.director.timestamp.clone(),
            director_snapshot: self.director.snapshot.clone(),
            director_targets: self.director.targets_files["targets"].clone(),
            image_roots: vec![],
            image_timestamp: self.images.timestamp.clone(),
            image_snapshot: self.images.snapshot.clone(),
            image_targets: self.images.targets_files["targets"].clone(),
            image_delegations: Default::default(),
        }
    }

    /// Re-signs the Director targets with `edit` applied, and republishes snapshot and timestamp.
    fn edit_director(
        &mut self,
        edit: impl FnOnce(TargetsBuilder) -> TargetsBuilder,
        signer: Option<&SigningKey>,
    ) {
        let builder = TargetsBuilder::from_targets(
            &self.director.targets,
            self.director.targets.common.version + 1,
            self.director.expires,
        );
        let targets = edit(builder).build();
        self.director.targets = targets.clone();
        let key = signer.unwrap_or(&self.director.targets_key).clone();
        self.director.targets_files.insert(
            "targets".into(),
            uptane_core::sign::sign(&targets, &[&key]).unwrap(),
        );
        self.director.versions.1 += 1;
        self.director.publish_snapshot_only();
    }
}

struct Ecu {
    addr: String,
    dir: tempfile::TempDir,
    process: Option<ChildGuard>,
    client: Option<SecondaryClient<Channel>>,
}

/// A channel to the Secondary at `addr` that pins its certificate and presents `identity`.
fn channel(addr: &str, secondary: &Identity, identity: Option<&Identity>) -> Channel {
    let tls = service_runtime::tls::client_config(
        &ServerTrust::Pinned(secondary.fingerprint()),
        identity,
    )
    .unwrap();
    tonic::transport::Endpoint::from_static("http://secondary.invalid").connect_with_connector_lazy(
        service_runtime::tls::connector(
            addr.to_string(),
            service_runtime::pki::DEVICE_NAME,
            std::sync::Arc::new(tls),
        ),
    )
}

/// The test's Primary identity, made in `dir/primary/tls`, and its fingerprint.
fn primary_identity(dir: &std::path::Path) -> String {
    let made =
        service_runtime::pki::self_signed("primary", &[service_runtime::pki::DEVICE_NAME]).unwrap();
    made.write(&dir.join("primary/tls")).unwrap();
    made.identity().unwrap().fingerprint().to_string()
}

impl Ecu {
    fn new(repos: &Repos, mode: &str) -> Self {
        Self::with_init(repos, mode, &[])
    }

    /// Provisioned with extra `init` flags.
    fn with_init(repos: &Repos, mode: &str, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("director-root.json"), &repos.director.roots[0]).unwrap();
        std::fs::write(p("image-root.json"), &repos.images.roots[0]).unwrap();
        std::fs::write(p("factory.bin"), b"factory firmware").unwrap();
        let primary = primary_identity(dir.path());
        run_ok(
            Command::new(bin())
                .args([
                    "init",
                    "--vin",
                    VIN,
                    "--serial",
                    SERIAL,
                    "--hardware-id",
                    HW,
                    "--mode",
                    mode,
                    "--factory-name",
                    "factory.bin",
                ])
                .arg("--dir")
                .arg(p("ecu"))
                .arg("--director-root")
                .arg(p("director-root.json"))
                .arg("--image-root")
                .arg(p("image-root.json"))
                .arg("--factory-image")
                .arg(p("factory.bin"))
                .args(["--primary-fingerprint", &primary])
                .args(flags),
            LIMIT,
        );
        Self {
            addr: String::new(),
            dir,
            process: None,
            client: None,
        }
    }

    async fn start(&mut self, faults: &[&str]) -> &mut SecondaryClient<Channel> {
        self.client = None;
        self.process = None;
        let mut command = Command::new(bin());
        command
            .arg("run")
            .arg("--dir")
            .arg(self.dir.path().join("ecu"))
            .args(["--listen", "127.0.0.1:0", "--max-chunk-size", "65536"])
            .args(faults);
        let (process, addr) = spawn_listening(command, LIMIT);
        self.process = Some(process);
        self.addr = addr;
        self.client = Some(secondary_client(&self.addr, &self.keys()));
        let client = self.client.as_mut().unwrap();
        client
            .put_time(PutTimeRequest {
                unix_seconds: now().timestamp(),
            })
            .await
            .unwrap();
        client
    }

    /// The TLS keys of the link: the test is the Primary.
    fn keys(&self) -> LinkKeys {
        LinkKeys::steal(
            &self.dir.path().join("ecu"),
            &self.dir.path().join("primary"),
        )
    }

    fn client(&mut self) -> &mut SecondaryClient<Channel> {
        self.client.as_mut().unwrap()
    }

    fn wait_exit(&mut self) {
        let process = self.process.as_mut().unwrap();
        assert!(
            process.wait_exit(LIMIT).is_some(),
            "the ECU did not lose power"
        );
        self.client = None;
    }

    async fn upload(
        &mut self,
        image: &[u8],
        from: u64,
    ) -> Result<proto::v2::TransferState, tonic::Status> {
        let chunks: Vec<Chunk> = image[from as usize..]
            .chunks(65536)
            .enumerate()
            .map(|(i, c)| Chunk {
                correlation_id: CORR.into(),
                offset: from + (i * 65536) as u64,
                data: c.to_vec().into(),
            })
            .collect();
        self.client()
            .upload(tokio_stream::iter(chunks))
            .await
            .map(|r| r.into_inner())
    }

    /// `Install`, once it has finished.
    async fn install(&mut self) -> proto::v2::Operation {
        let op = self.install_answer().await;
        self.finished(op).await
    }

    /// `Install`'s first answer.
    async fn install_answer(&mut self) -> proto::v2::Operation {
        self.client()
            .install(InstallRequest {
                correlation_id: CORR.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Operation `op` once it no longer runs (bounded).
    async fn finished(&mut self, op: proto::v2::Operation) -> proto::v2::Operation {
        for _ in 0..600 {
            let current = self
                .client()
                .get_operation(GetOperationRequest {
                    operation_id: op.operation_id.clone(),
                })
                .await;
            match current {
                Ok(r) if r.get_ref().state() != OperationState::Running => return r.into_inner(),
                Err(_) if op.state() != OperationState::Running => return op,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("install did not finish");
    }

    /// Sends `Install` to an ECU set to lose power while writing, and waits for the cut.
    async fn install_cut_by_power_loss(&mut self) {
        let _ = self
            .client()
            .install(InstallRequest {
                correlation_id: CORR.into(),
            })
            .await;
        self.wait_exit();
    }

    /// `Activate` of the update, which must be answered.
    async fn activate(&mut self) {
        self.client()
            .activate(ActivateRequest {
                correlation_id: CORR.into(),
            })
            .await
            .unwrap();
    }

    async fn result(&mut self) -> ResultCode {
        let r = self
            .client()
            .get_installation_result(GetInstallationResultRequest {
                correlation_id: CORR.into(),
            })
            .await
            .unwrap();
        ResultCode::try_from(r.into_inner().result.unwrap().code).unwrap()
    }

    async fn running(&mut self) -> String {
        let status = self
            .client()
            .get_status(GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        status
            .slots
            .iter()
            .find(|s| s.name == status.active_slot)
            .unwrap()
            .filename
            .clone()
    }

    /// The next version report, verified against the ECU key, as JSON.
    async fn report(&mut self, nonce: &str) -> Value {
        let public: Value = serde_json::from_slice(
            &std::fs::read(self.dir.path().join("ecu/ecu.pub.json")).unwrap(),
        )
        .unwrap();
        let key = uptane_core::crypto::PublicKey::from_json(public).unwrap();
        let signed = self
            .client()
            .get_version_report(GetVersionReportRequest {
                nonce: nonce.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .signed_report;
        let verified =
            uptane_core::manifest::verify_ecu_report(&uptane_core::verify::Raw::new(signed), &key)
                .unwrap();
        assert_eq!(verified.nonce, nonce);
        serde_json::to_value(&*verified).unwrap()
    }
}

const IMAGE: &[u8] = &[7u8; 300_000];

async fn full_update(mode: &str) {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, mode);
    ecu.start(&[]).await;
    // Health answers anyone who reaches the port over TLS, without a client certificate.
    let channel = channel(&ecu.addr, &ecu.keys().secondary, None);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "uptane.secondary.v2.Secondary".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let r = ecu
        .client()
        .put_metadata(repos.bundle())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.code, ResultCode::Ok as i32, "{r:?}");
    let t = ecu
        .client()
        .begin_transfer(BeginTransferRequest {
            correlation_id: CORR.into(),
            filename: "brake-2.bin".into(),
            length: IMAGE.len() as u64,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.durable_offset, 0);
    let t = ecu.upload(IMAGE, 0).await.unwrap();
    assert!(t.complete, "{t:?}");
    let op = ecu.install().await;
    assert_eq!(op.state(), OperationState::Done, "{op:?}");
    let op = ecu
        .client()
        .activate(ActivateRequest {
            correlation_id: CORR.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.state(), OperationState::Done, "{op:?}");
    assert_eq!(ecu.result().await, ResultCode::Ok);
    assert_eq!(ecu.running().await, "brake-2.bin");
    let report = ecu.report("n1").await;
    assert_eq!(report["installed_image"]["filename"], "brake-2.bin");
    assert_eq!(report["last_install"]["result"], "installed");
    let next = ecu.report("n2").await;
    assert!(next["report_counter"].as_u64() > report["report_counter"].as_u64());
}

impl Ecu {
    async fn put_time(&mut self, time: i64) -> proto::v2::Result {
        self.client()
            .put_time(PutTimeRequest { unix_seconds: time })
            .await
            .unwrap()
            .into_inner()
    }

    async fn put(&mut self, repos: &Repos) -> proto::v2::Result {
        self.client()
            .put_metadata(repos.bundle())
            .await
            .unwrap()
            .into_inner()
    }
}

/// The Secondary's time model (docs/SECURITY.md, "Time"), in both verification modes: a
/// time is trusted only as far as the Director's verified metadata corroborates it, and
/// goes back only by the operator's reset signed into that metadata.
#[tokio::test]
async fn a_secondary_trusts_only_times_the_directors_metadata_corroborates() {
    let day = chrono::Duration::days(1);
    let t0 = uptane_core::time::from_unix_seconds(now().timestamp()).unwrap();
    let signed_at = |repos: &mut Repos, at: uptane_core::time::UtcTime, reset: u64| {
        repos.edit_director(
            |b| {
                b.custom(with_signing_time(
                    director_targets_custom(VIN, CORR),
                    &at,
                    reset,
                ))
            },
            None,
        );
    };
    for mode in ["partial", "full"] {
        let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
        let mut ecu = Ecu::new(&repos, mode);
        ecu.start(&[]).await;
        // What it trusts before any of this (read off its clock when it started, which a
        // loaded machine may have put a second after t0).
        let trusted = ecu.report("n0").await["latest_time"].clone();
        ecu.put_time(t0.timestamp()).await;
        // No date: refused at once, as an attack; never read as 1970.
        let r = ecu.put_time(i64::MAX).await;
        assert_eq!(r.code, ResultCode::TimeRefused as i32, "{mode}: {r:?}");
        assert_eq!(r.attack(), proto::v2::Attack::TimeTampering, "{mode}");
        assert!(r.description.contains("not a date"), "{mode}: {r:?}");
        // Past the expiry of the Director's metadata, which verifies at the trusted time: the
        // time is what is wrong.
        ecu.put_time((t0 + day * 365).timestamp()).await;
        let r = ecu.put(&repos).await;
        assert_eq!(r.code, ResultCode::TimeRefused as i32, "{mode}: {r:?}");
        assert_eq!(r.attack(), proto::v2::Attack::TimeTampering, "{mode}");
        assert!(r.description.contains("past the expiry"), "{mode}: {r:?}");
        let report = ecu.report("n1").await;
        assert_eq!(report["latest_time"], trusted, "{mode}");
        let attacks = report["attacks_detected"].to_string();
        assert_eq!(
            attacks.matches("time_tampering").count(),
            2,
            "{mode}: {attacks}"
        );
        // A time the metadata corroborates is trusted; so is the Director's signing time when
        // it is later (the Director's clock ran 20 days ahead).
        signed_at(&mut repos, t0 + day * 20, 0);
        ecu.put_time((t0 + day).timestamp()).await;
        let r = ecu.put(&repos).await;
        assert_eq!(r.code, ResultCode::Ok as i32, "{mode}: {r:?}");
        assert_eq!(
            ecu.report("n2").await["latest_time"],
            format_expires(&(t0 + day * 20)),
            "{mode}"
        );
        // Its clock fixed, the Director signs metadata that expires before the trusted time:
        // refused as expired, and an earlier time from the Primary changes nothing...
        repos.director.expires = t0 + day * 5;
        signed_at(&mut repos, t0, 0);
        ecu.put_time(t0.timestamp()).await;
        let r = ecu.put(&repos).await;
        assert_eq!(r.code, ResultCode::MetadataExpired as i32, "{mode}: {r:?}");
        // ...until the operator's reset comes in the Director's signed metadata.
        signed_at(&mut repos, t0, 1);
        ecu.put_time(t0.timestamp()).await;
        let r = ecu.put(&repos).await;
        assert_eq!(r.code, ResultCode::Ok as i32, "{mode}: {r:?}");
        assert_eq!(
            ecu.report("n3").await["latest_time"],
            format_expires(&t0),
            "{mode}"
        );
    }
}

/// What the Primary (or whoever holds its link) provokes stays bounded: operations
/// remembered, and attacks kept for the next reports (the rest counted in one entry, and
/// acknowledged like the others).
#[tokio::test]
async fn operations_and_kept_attacks_stay_bounded() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    ecu.start(&[]).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let op = ecu
            .client()
            .confirm(proto::v2::ConfirmRequest {
                correlation_id: format!("nothing-{i}"),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(op.operation_id);
    }
    let get = |id: String| GetOperationRequest { operation_id: id };
    let first = ecu.client().get_operation(get(ids[0].clone())).await;
    assert_eq!(first.unwrap_err().code(), tonic::Code::NotFound);
    let last = ecu.client().get_operation(get(ids[99].clone())).await;
    assert!(last.is_ok(), "{last:?}");
    // 100 distinct refused times: 32 kept one by one, the other 68 counted in one entry.
    for i in 0..100 {
        let r = ecu.put_time(i64::MAX - i).await;
        assert_eq!(r.code, ResultCode::TimeRefused as i32);
    }
    let report = ecu.report("bounded").await;
    let attacks = report["attacks_detected"].as_array().unwrap();
    assert_eq!(attacks.len(), 33, "{attacks:?}");
    assert!(
        attacks[32]["detail"]
            .as_str()
            .unwrap()
            .starts_with("68 more attacks beyond the 32 kept"),
        "{}",
        attacks[32]
    );
    // The same attack again before a report carried it is kept once.
    let counter = report["report_counter"].as_u64().unwrap();
    ecu.client()
        .acknowledge_report(proto::v2::AcknowledgeReportRequest {
            report_counter: counter,
        })
        .await
        .unwrap();
    for _ in 0..3 {
        ecu.put_time(i64::MIN).await;
    }
    let report = ecu.report("after").await;
    assert_eq!(
        report["attacks_detected"].as_array().unwrap().len(),
        1,
        "{report}"
    );
}

#[tokio::test]
async fn a_full_update_in_full_verification() {
    full_update("full").await;
}

#[tokio::test]
async fn a_full_update_in_partial_verification() {
    full_update("partial").await;
}

async fn prepared(ecu: &mut Ecu, repos: &Repos, faults: &[&str]) {
    ecu.start(faults).await;
    let r = ecu
        .client()
        .put_metadata(repos.bundle())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.code, ResultCode::Ok as i32, "{r:?}");
    ecu.begin("brake-2.bin", IMAGE).await;
}

#[tokio::test]
async fn power_loss_during_transfer_resumes_from_the_durable_offset() {
    let image = vec![9u8; 12 << 20];
    let repos = Repos::new("brake-2.bin", &image, 2);
    let mut ecu = Ecu::new(&repos, "full");
    ecu.start(&[
        "--fault-power-loss",
        "transfer",
        "--durable-interval-bytes",
        "4194304",
    ])
    .await;
    ecu.client().put_metadata(repos.bundle()).await.unwrap();
    ecu.client()
        .begin_transfer(BeginTransferRequest {
            correlation_id: CORR.into(),
            filename: "brake-2.bin".into(),
            length: image.len() as u64,
        })
        .await
        .unwrap();
    assert!(ecu.upload(&image, 0).await.is_err());
    ecu.wait_exit();
    ecu.start(&[]).await;
    let t = ecu
        .client()
        .begin_transfer(BeginTransferRequest {
            correlation_id: CORR.into(),
            filename: "brake-2.bin".into(),
            length: image.len() as u64,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        t.durable_offset > 0 && t.durable_offset < image.len() as u64,
        "{t:?}"
    );
    let t = ecu.upload(&image, t.durable_offset).await.unwrap();
    assert!(t.complete, "{t:?}");
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    ecu.client()
        .activate(ActivateRequest {
            correlation_id: CORR.into(),
        })
        .await
        .unwrap();
    assert_eq!(ecu.running().await, "brake-2.bin");
}

/// The power lost once the last byte is durable and before the transfer is recorded
/// complete (an image smaller than the durable interval is cut exactly there): the staging
/// file is verified again when the Primary asks, and the update completes. Before, the
/// Primary was told every byte was there, sent none, and the transfer never completed.
#[tokio::test]
async fn power_loss_after_the_last_byte_completes_the_transfer_from_staging() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "full");
    prepared(&mut ecu, &repos, &["--fault-power-loss", "transfer"]).await;
    assert!(ecu.upload(IMAGE, 0).await.is_err());
    ecu.wait_exit();
    ecu.start(&[]).await;
    let t = ecu.begin("brake-2.bin", IMAGE).await;
    assert_eq!(t.durable_offset, IMAGE.len() as u64, "{t:?}");
    assert!(t.complete, "{t:?}");
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    ecu.activate().await;
    assert_eq!(ecu.running().await, "brake-2.bin");
}

#[tokio::test]
async fn power_loss_during_write_keeps_the_old_slot_and_the_update_can_be_retried() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    prepared(&mut ecu, &repos, &["--fault-power-loss", "write"]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    ecu.install_cut_by_power_loss().await;
    ecu.start(&[]).await;
    assert_eq!(ecu.running().await, "factory.bin");
    // The staged image survived: install again, then activate.
    let op = ecu.install().await;
    assert_eq!(op.state(), OperationState::Done, "{op:?}");
    ecu.activate().await;
    assert_eq!(ecu.running().await, "brake-2.bin");
}

/// `Install` of the received image on an ECU whose storage is held busy
/// (`--fault-hold-write-until`): the running operation, and the file that releases the
/// storage once it exists.
async fn held_install(ecu: &mut Ecu, repos: &Repos) -> (proto::v2::Operation, std::path::PathBuf) {
    let gate = ecu.dir.path().join("storage-ready");
    let gate_flag = gate.display().to_string();
    prepared(ecu, repos, &["--fault-hold-write-until", &gate_flag]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    let install = ecu.running_install().await;
    (install, gate)
}

#[tokio::test]
async fn an_install_asked_for_again_while_it_runs_is_the_same_install() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    let (first, gate) = held_install(&mut ecu, &repos).await;
    // The storage is held busy: the Primary, past its poll deadline, asks again.
    let request = InstallRequest {
        correlation_id: CORR.into(),
    };
    let again = ecu.client().install(request).await.unwrap().into_inner();
    assert_eq!(
        again.operation_id, first.operation_id,
        "a second writer: {again:?}"
    );
    assert_eq!(again.state(), OperationState::Running);
    std::fs::write(&gate, b"").unwrap();
    let done = ecu.finished(first).await;
    assert_eq!(done.state(), OperationState::Done, "{done:?}");
    ecu.activate().await;
    assert_eq!(ecu.running().await, "brake-2.bin");
}

impl Repos {
    /// New Director targets that assign this ECU nothing: its update withdrawn.
    fn withdraw(&mut self) {
        self.edit_director(|b| b.remove_target("brake-2.bin"), None);
    }

    /// New Director targets that assign this ECU `image` (as `name`) instead: its update
    /// replaced.
    fn replace(&mut self, name: &str, image: &[u8], counter: u64) {
        self.edit_director(
            |b| {
                b.remove_target("brake-2.bin").target(
                    name,
                    image,
                    Some(director_target_custom(SERIAL, HW, counter)),
                )
            },
            None,
        );
    }

    /// New Director targets whose entry for this ECU names its own assignment `id` (protocol
    /// version 3), unlike the targets' vehicle-wide correlation id.
    fn with_entry_id(&mut self, id: &str) {
        let mut custom = director_target_custom(SERIAL, HW, 2);
        custom["correlationId"] = id.into();
        self.edit_director(
            |b| {
                b.remove_target("brake-2.bin")
                    .target("brake-2.bin", IMAGE, Some(custom))
            },
            None,
        );
    }
}

impl Ecu {
    /// The boot environment's record of slot `name`, as stored.
    fn slot(&self, name: &str) -> Value {
        let env: Value = serde_json::from_slice(
            &std::fs::read(self.dir.path().join("ecu/bootenv.json")).unwrap(),
        )
        .unwrap();
        env["slots"][name].clone()
    }

    /// Asserts what a withdrawn update leaves: `OPERATION_CANCELLED` kept and reported, the
    /// staging freed, the factory image running, nothing left to activate.
    async fn assert_abandoned(&mut self) {
        assert_eq!(self.result().await, ResultCode::OperationCancelled);
        let report = self.report("after-withdrawal").await;
        assert_eq!(report["last_install"]["correlation_id"], CORR, "{report}");
        assert_eq!(report["last_install"]["result"], "cancelled", "{report}");
        assert_eq!(report["installed_image"]["filename"], "factory.bin");
        assert!(!self.dir.path().join("ecu/staging/image.part").exists());
        assert_eq!(self.running().await, "factory.bin");
        let activated = self
            .client()
            .activate(ActivateRequest {
                correlation_id: CORR.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let refused = activated.result.unwrap();
        assert_eq!(
            refused.code,
            ResultCode::NotForThisEcu as i32,
            "{refused:?}"
        );
        assert_eq!(self.running().await, "factory.bin");
    }
}

#[tokio::test]
async fn an_update_withdrawn_mid_transfer_is_abandoned_and_reported_cancelled() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "full");
    prepared(&mut ecu, &repos, &["--durable-interval-bytes", "65536"]).await;
    let t = ecu.upload(&IMAGE[..131072], 0).await.unwrap();
    assert!(t.durable_offset > 0 && !t.complete, "{t:?}");
    // Under way, and saying so: no result yet, but not silent about it either.
    let report = ecu.report("mid-transfer").await;
    assert_eq!(report["last_install"]["correlation_id"], CORR, "{report}");
    assert_eq!(report["last_install"]["result"], "in_progress", "{report}");
    repos.withdraw();
    let r = ecu.put(&repos).await;
    assert_eq!(r.code, ResultCode::NoUpdate as i32, "{r:?}");
    ecu.assert_abandoned().await;
    // Nothing to resume: the transfer is refused as not this ECU's.
    let t = ecu
        .client()
        .begin_transfer(BeginTransferRequest {
            correlation_id: CORR.into(),
            filename: "brake-2.bin".into(),
            length: IMAGE.len() as u64,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.result.unwrap().code, ResultCode::NotForThisEcu as i32);
}

#[tokio::test]
async fn an_update_withdrawn_while_its_install_runs_stops_the_install() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    let (install, _gate) = held_install(&mut ecu, &repos).await;
    let inactive_before = ecu.slot("B");
    repos.withdraw();
    // The storage stays held: only the cancel ends the install.
    let r = ecu.put(&repos).await;
    assert_eq!(r.code, ResultCode::NoUpdate as i32, "{r:?}");
    let stopped = ecu.finished(install).await;
    assert_eq!(
        stopped.result.as_ref().unwrap().code,
        ResultCode::OperationCancelled as i32,
        "{stopped:?}"
    );
    assert_eq!(ecu.slot("B"), inactive_before, "the slot was touched");
    ecu.assert_abandoned().await;
}

#[tokio::test]
async fn an_update_withdrawn_after_its_write_is_never_activated() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    prepared(&mut ecu, &repos, &[]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    assert_eq!(ecu.slot("B")["state"], "pending");
    repos.withdraw();
    let r = ecu.put(&repos).await;
    assert_eq!(r.code, ResultCode::NoUpdate as i32, "{r:?}");
    assert_eq!(ecu.slot("B")["state"], "bad");
    ecu.assert_abandoned().await;
}

#[tokio::test]
async fn a_withdrawal_after_activation_changes_nothing() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "full");
    prepared(&mut ecu, &repos, &[]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    ecu.activate().await;
    repos.withdraw();
    let r = ecu.put(&repos).await;
    assert_eq!(r.code, ResultCode::NoUpdate as i32, "{r:?}");
    assert_eq!(ecu.result().await, ResultCode::Ok);
    assert_eq!(ecu.running().await, "brake-2.bin");
    let report = ecu.report("after").await;
    assert_eq!(report["last_install"]["result"], "installed", "{report}");
}

impl Ecu {
    /// Sends `image` (as `name`) for the pending update and installs it.
    async fn transfer_and_install(&mut self, name: &str, image: &[u8]) -> proto::v2::Operation {
        let t = self.begin(name, image).await;
        assert_eq!(t.result.unwrap().code, ResultCode::Ok as i32);
        assert!(self.upload(image, 0).await.unwrap().complete);
        self.install().await
    }

    /// `Install` of the received image, still running when answered (storage held busy).
    async fn running_install(&mut self) -> proto::v2::Operation {
        let install = self.install_answer().await;
        assert_eq!(install.state(), OperationState::Running, "{install:?}");
        install
    }

    /// `BeginTransfer` of `image` (as `name`) for the update.
    async fn begin(&mut self, name: &str, image: &[u8]) -> proto::v2::TransferState {
        self.client()
            .begin_transfer(BeginTransferRequest {
                correlation_id: CORR.into(),
                filename: name.into(),
                length: image.len() as u64,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// `Activate`'s answer: the result of its operation.
    async fn activate_answer(&mut self) -> proto::v2::Result {
        self.client()
            .activate(ActivateRequest {
                correlation_id: CORR.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap()
    }
}

/// Metadata that replace the image of the same update after its write (same name, other
/// bytes) abandon the written image: its slot is marked bad, what was kept for it dropped,
/// and only the new image, once installed, boots.
#[tokio::test]
async fn an_image_replaced_after_its_write_is_never_activated() {
    const NEW: &[u8] = &[9u8; 200_000];
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    prepared(&mut ecu, &repos, &[]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    assert_eq!(ecu.slot("B")["state"], "pending");
    repos.replace("brake-2.bin", NEW, 2);
    assert_eq!(ecu.put(&repos).await.code, ResultCode::Ok as i32);
    assert_eq!(ecu.slot("B")["state"], "bad");
    // The result kept for the old image (written, to activate) is gone: a Primary that
    // read it would skip the transfer of the new one.
    let kept = ecu
        .client()
        .get_installation_result(GetInstallationResultRequest {
            correlation_id: CORR.into(),
        })
        .await;
    assert!(
        kept.as_ref().map_or(true, |r| r.get_ref().result.is_none()),
        "{kept:?}"
    );
    let refused = ecu.activate_answer().await;
    assert_eq!(
        refused.code,
        ResultCode::InstallFailed as i32,
        "{refused:?}"
    );
    assert_eq!(ecu.running().await, "factory.bin");
    // Installed, the new image boots.
    assert_eq!(
        ecu.transfer_and_install("brake-2.bin", NEW).await.state(),
        OperationState::Done
    );
    ecu.activate().await;
    assert_eq!(ecu.result().await, ResultCode::Ok);
    let report = ecu.report("replaced").await;
    assert_eq!(
        report["installed_image"]["hashes"]["sha256"],
        uptane_core::hash::sha256_hex(NEW),
        "{report}"
    );
}

/// While an install job writes the inactive slot, `Activate` is answered `BUSY`: activated,
/// the slot (holding an earlier write of the same image) would boot and become the active
/// one while the job overwrites it.
#[tokio::test]
async fn activate_while_an_install_writes_is_busy() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    prepared(&mut ecu, &repos, &[]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    assert_eq!(ecu.slot("B")["state"], "pending");
    // Power cycled with its storage held busy; the image sent and installed again.
    let gate = ecu.dir.path().join("storage-ready");
    ecu.start(&["--fault-hold-write-until", &gate.display().to_string()])
        .await;
    ecu.begin("brake-2.bin", IMAGE).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    let install = ecu.running_install().await;
    let busy = ecu.activate_answer().await;
    assert_eq!(busy.code, ResultCode::Busy as i32, "{busy:?}");
    assert_eq!(ecu.running().await, "factory.bin");
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(ecu.finished(install).await.state(), OperationState::Done);
    ecu.activate().await;
    assert_eq!(ecu.running().await, "brake-2.bin");
    assert_eq!(ecu.result().await, ResultCode::Ok);
}

/// During a trial boot waiting for its confirmation, metadata that replace the update leave
/// it to be finished (`NEED_COMPLETION`, the metadata that approved it kept), nothing is
/// written over the slot on trial, and once confirmed the new update is taken.
#[tokio::test]
async fn a_trial_under_way_is_finished_before_a_replacement() {
    const NEW: &[u8] = &[9u8; 200_000];
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    prepared(&mut ecu, &repos, &["--manual-confirm"]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    ecu.activate().await;
    let env = |ecu: &Ecu| -> Value {
        serde_json::from_slice(&std::fs::read(ecu.dir.path().join("ecu/bootenv.json")).unwrap())
            .unwrap()
    };
    assert_eq!(env(&ecu)["trial"], "B", "not on trial");
    // Sent again, installed again: refused while the trial runs.
    let install = ecu.transfer_and_install("brake-2.bin", IMAGE).await;
    let refused = install.result.unwrap();
    assert_eq!(refused.code, ResultCode::Busy as i32, "{refused:?}");
    repos.replace("brake-3.bin", NEW, 3);
    let r = ecu.put(&repos).await;
    assert_eq!(r.code, ResultCode::NeedCompletion as i32, "{r:?}");
    let confirmed = ecu
        .client()
        .confirm(proto::v2::ConfirmRequest {
            correlation_id: CORR.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.state(), OperationState::Done, "{confirmed:?}");
    assert!(env(&ecu)["trial"].is_null());
    assert_eq!(ecu.result().await, ResultCode::Ok);
    assert_eq!(ecu.running().await, "brake-2.bin");
    assert_eq!(ecu.put(&repos).await.code, ResultCode::Ok as i32);
}

/// The same update named by the other id the Director signed for it (its entry's, or the
/// targets' own for a Primary speaking protocol version 2) is not a replacement: the image
/// written under one name is activated under the other.
#[tokio::test]
async fn an_update_renamed_keeps_its_written_image() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    repos.with_entry_id("asg-brake");
    let mut ecu = Ecu::new(&repos, "partial");
    prepared(&mut ecu, &repos, &[]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    let mut bundle = repos.bundle();
    bundle.correlation_id = "asg-brake".into();
    let r = ecu
        .client()
        .put_metadata(bundle)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.code, ResultCode::Ok as i32, "{r:?}");
    assert_eq!(ecu.slot("B")["state"], "pending");
    let kept =
        |r: tonic::Response<proto::v2::InstallationResult>| r.into_inner().result.map(|r| r.code);
    let ask = |id: &str| GetInstallationResultRequest {
        correlation_id: id.into(),
    };
    let renamed = ecu.client().get_installation_result(ask("asg-brake")).await;
    assert_eq!(
        renamed.map(kept).ok().flatten(),
        Some(ResultCode::NeedCompletion as i32)
    );
    let old = ecu.client().get_installation_result(ask(CORR)).await;
    assert_eq!(
        old.map(kept).ok().flatten(),
        None,
        "a result left under the old name"
    );
    let activated = ecu
        .client()
        .activate(ActivateRequest {
            correlation_id: "asg-brake".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(activated.state(), OperationState::Done, "{activated:?}");
    assert_eq!(ecu.running().await, "brake-2.bin");
}

/// An update is named by the correlation id in this ECU's own targets entry (the assignment
/// it belongs to), not by the targets' vehicle-wide one, which other ECUs' assignments move.
#[tokio::test]
async fn an_update_is_named_by_its_own_targets_entry() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    repos.with_entry_id("asg-brake");
    let mut ecu = Ecu::new(&repos, "partial");
    ecu.start(&[]).await;
    let mut put = async |id: &str| {
        let mut bundle = repos.bundle();
        bundle.correlation_id = id.into();
        ecu.client()
            .put_metadata(bundle)
            .await
            .unwrap()
            .into_inner()
    };
    // An id the Director did not sign for it is refused.
    let r = put("asg-other").await;
    assert_eq!(r.code, ResultCode::VerificationFailed as i32, "{r:?}");
    assert_eq!(attack_name(r.attack()), "mix_and_match");
    // Its entry's (protocol version 3) and, from a Primary speaking version 2, the targets'.
    assert_eq!(put("asg-brake").await.code, ResultCode::Ok as i32);
    assert_eq!(put(CORR).await.code, ResultCode::Ok as i32);
}

#[tokio::test]
async fn a_single_bank_withdrawn_before_its_bank_is_touched_keeps_its_image() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::with_init(&repos, "partial", &["--single-bank"]);
    let (install, _gate) = held_install(&mut ecu, &repos).await;
    repos.withdraw();
    let r = ecu.put(&repos).await;
    assert_eq!(r.code, ResultCode::NoUpdate as i32, "{r:?}");
    ecu.finished(install).await;
    assert_eq!(ecu.slot("A")["state"], "good");
    ecu.assert_abandoned().await;
}

/// A single bank whose only image is being overwritten cannot go back: withdrawn then, the
/// update is kept (with the metadata that approved it) to be finished, never left half done.
#[tokio::test]
async fn a_single_bank_withdrawn_while_overwritten_is_finished() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::with_init(&repos, "partial", &["--single-bank"]);
    prepared(&mut ecu, &repos, &["--fault-power-loss", "write"]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    ecu.install_cut_by_power_loss().await;
    ecu.start(&[]).await;
    assert_eq!(ecu.running().await, "");
    repos.withdraw();
    let r = ecu.put(&repos).await;
    assert_eq!(r.code, ResultCode::NeedCompletion as i32, "{r:?}");
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    ecu.activate().await;
    assert_eq!(ecu.running().await, "brake-2.bin");
    assert_eq!(ecu.result().await, ResultCode::Ok);
}

/// A single bank given up for a replacement that is then withdrawn before it arrived has
/// nothing to be finished with: the withdrawal is taken (the device stays in recovery until
/// programmed again) rather than answered `NEED_COMPLETION` for ever.
#[tokio::test]
async fn a_single_bank_replaced_then_withdrawn_is_not_kept_for_ever() {
    const NEW: &[u8] = &[9u8; 200_000];
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::with_init(&repos, "partial", &["--single-bank"]);
    prepared(&mut ecu, &repos, &["--fault-power-loss", "write"]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    ecu.install_cut_by_power_loss().await;
    ecu.start(&[]).await;
    assert_eq!(ecu.running().await, "");
    repos.replace("brake-3.bin", NEW, 3);
    assert_eq!(ecu.put(&repos).await.code, ResultCode::Ok as i32);
    repos.edit_director(|b| b.remove_target("brake-3.bin"), None);
    let r = ecu.put(&repos).await;
    assert_eq!(r.code, ResultCode::NoUpdate as i32, "{r:?}");
    assert_eq!(ecu.result().await, ResultCode::OperationCancelled);
    assert_eq!(ecu.running().await, "", "still in recovery");
}

#[tokio::test]
async fn power_lost_while_writing_every_time_fails_the_update_after_the_loop_bound() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    let faults = ["--fault-power-loss", "write"];
    prepared(&mut ecu, &repos, &faults).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    for _ in 0..secondary_ecu::agent::MAX_INSTALL_STARTS {
        ecu.install_cut_by_power_loss().await;
        ecu.start(&faults).await;
        assert_eq!(ecu.running().await, "factory.bin");
    }
    // The next start would loop again: the update fails for good, the slot untouched and
    // the staging freed.
    let op = ecu.install().await;
    assert_eq!(op.state(), OperationState::Failed, "{op:?}");
    assert_eq!(ecu.result().await, ResultCode::InstallFailed);
    let result = ecu
        .client()
        .get_installation_result(GetInstallationResultRequest {
            correlation_id: CORR.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(
        result.description.contains("install interrupted 3 times"),
        "{result:?}"
    );
    assert!(!ecu.dir.path().join("ecu/staging/image.part").exists());
    assert_eq!(ecu.running().await, "factory.bin");
    // Nothing loops: the same install is refused again, without a power cut.
    assert_eq!(ecu.install().await.state(), OperationState::Failed);
    assert_eq!(ecu.running().await, "factory.bin");
}

#[tokio::test]
async fn a_single_bank_device_interrupted_while_writing_boots_into_recovery_and_is_programmed_again()
 {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::with_init(&repos, "partial", &["--single-bank"]);
    prepared(&mut ecu, &repos, &["--fault-power-loss", "write"]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    ecu.install_cut_by_power_loss().await;
    // Never dead: the bootloader answers, with no application to report.
    ecu.start(&[]).await;
    assert_eq!(ecu.running().await, "");
    // A fresh programming sequence from the staged image succeeds.
    let op = ecu.install().await;
    assert_eq!(op.state(), OperationState::Done, "{op:?}");
    ecu.activate().await;
    assert_eq!(ecu.running().await, "brake-2.bin");
    assert_eq!(ecu.result().await, ResultCode::Ok);
    assert!(!ecu.dir.path().join("ecu/slots/B.img").exists());
}

#[tokio::test]
async fn power_loss_during_trial_boot_and_before_confirm_still_completes() {
    for phase in ["trial-boot", "before-confirm"] {
        let repos = Repos::new("brake-2.bin", IMAGE, 2);
        let mut ecu = Ecu::new(&repos, "full");
        prepared(&mut ecu, &repos, &["--fault-power-loss", phase]).await;
        assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
        assert_eq!(ecu.install().await.state(), OperationState::Done);
        let _ = ecu
            .client()
            .activate(ActivateRequest {
                correlation_id: CORR.into(),
            })
            .await;
        ecu.wait_exit();
        // At power-up the bootloader tries the new slot again and it is confirmed.
        ecu.start(&[]).await;
        assert_eq!(ecu.running().await, "brake-2.bin", "{phase}");
        assert_eq!(ecu.result().await, ResultCode::Ok, "{phase}");
    }
}

#[tokio::test]
async fn a_new_image_that_fails_its_trial_boot_is_rolled_back_and_reported() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "full");
    prepared(&mut ecu, &repos, &["--fault-fail-boot"]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    assert_eq!(ecu.install().await.state(), OperationState::Done);
    let op = ecu
        .client()
        .activate(ActivateRequest {
            correlation_id: CORR.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.result.unwrap().code, ResultCode::RolledBack as i32);
    assert_eq!(ecu.running().await, "factory.bin");
    let report = ecu.report("n1").await;
    assert_eq!(report["last_install"]["result"], "rolled_back");
    // The result is still there after a reboot of the process.
    ecu.start(&[]).await;
    assert_eq!(ecu.result().await, ResultCode::RolledBack);
}

/// The attack's name as reports write it (`ATTACK_ROLLBACK` is `rollback`).
fn attack_name(attack: proto::v2::Attack) -> String {
    attack
        .as_str_name()
        .trim_start_matches("ATTACK_")
        .to_ascii_lowercase()
}

/// Sends `bundle` and expects a refusal with `code`; the attack shows in the next report
/// and the factory image still runs.
async fn assert_refused(ecu: &mut Ecu, bundle: PutMetadataRequest, code: ResultCode, attack: &str) {
    let r = ecu
        .client()
        .put_metadata(bundle)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ResultCode::try_from(r.code).unwrap(), code, "{r:?}");
    assert_eq!(attack_name(r.attack()), attack, "{r:?}");
    let report = ecu
        .report(&format!("after-{attack}-{}", r.description.len()))
        .await;
    let attacks: Vec<String> = report["attacks_detected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(attacks.contains(&attack.to_string()), "{attacks:?}");
    assert_eq!(ecu.running().await, "factory.bin");
}

#[tokio::test]
async fn refuses_bad_metadata_and_records_the_attack() {
    for mode in ["full", "partial"] {
        let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
        let mut ecu = Ecu::new(&repos, mode);
        ecu.start(&[]).await;
        let good = repos.bundle();

        // Another hardware id for this ECU.
        repos.edit_director(
            |b| {
                b.target(
                    "brake-2.bin",
                    IMAGE,
                    Some(director_target_custom(SERIAL, "hw-other", 2)),
                )
            },
            None,
        );
        assert_refused(
            &mut ecu,
            repos.bundle(),
            ResultCode::HardwareIdMismatch,
            "wrong_hardware",
        )
        .await;
        // Signed by a wrong key.
        repos.edit_director(|b| b, Some(&key(66)));
        assert_refused(
            &mut ecu,
            repos.bundle(),
            ResultCode::SignatureInvalid,
            "arbitrary_software",
        )
        .await;
        // Expired.
        repos.director.expires = now() - chrono::Duration::hours(1);
        repos.edit_director(|b| b, None);
        assert_refused(
            &mut ecu,
            repos.bundle(),
            ResultCode::MetadataExpired,
            "freeze",
        )
        .await;
        repos.director.expires = now() + chrono::Duration::days(30);

        // Accept the good metadata, then offer a lower targets version.
        let r = ecu
            .client()
            .put_metadata(good.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.code, ResultCode::Ok as i32, "{r:?}");
        let mut newer = Repos::new("brake-2.bin", IMAGE, 2);
        for _ in 0..3 {
            newer.edit_director(|b| b, None);
        }
        let r = ecu
            .client()
            .put_metadata(newer.bundle())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.code, ResultCode::Ok as i32, "{r:?}");
        assert_refused(&mut ecu, good, ResultCode::MetadataRollback, "rollback").await;
    }
}

#[tokio::test]
async fn refuses_a_release_counter_below_the_installed_one() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    prepared(&mut ecu, &repos, &[]).await;
    assert!(ecu.upload(IMAGE, 0).await.unwrap().complete);
    ecu.install().await;
    ecu.client()
        .activate(ActivateRequest {
            correlation_id: CORR.into(),
        })
        .await
        .unwrap();
    assert_eq!(ecu.running().await, "brake-2.bin");
    let older = Repos::new("brake-1.bin", b"older firmware", 1);
    let r = ecu
        .client()
        .put_metadata(older.bundle())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.code, ResultCode::ReleaseCounterRollback as i32, "{r:?}");
    assert_eq!(attack_name(r.attack()), "rollback");
    assert_eq!(ecu.running().await, "brake-2.bin");
}

#[tokio::test]
async fn refuses_bytes_that_are_not_the_approved_image() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "full");
    prepared(&mut ecu, &repos, &[]).await;
    // Same length, other bytes: refused when the last byte arrives.
    let mut evil = IMAGE.to_vec();
    evil[1000] ^= 1;
    let t = ecu.upload(&evil, 0).await.unwrap();
    assert_eq!(
        t.result.as_ref().unwrap().code,
        ResultCode::HashMismatch as i32,
        "{t:?}"
    );
    assert_eq!(
        attack_name(t.result.unwrap().attack()),
        "arbitrary_software"
    );
    // Longer than approved: stopped at the limit, not after.
    ecu.client()
        .begin_transfer(BeginTransferRequest {
            correlation_id: CORR.into(),
            filename: "brake-2.bin".into(),
            length: IMAGE.len() as u64,
        })
        .await
        .unwrap();
    let mut longer = IMAGE.to_vec();
    longer.extend_from_slice(&[0u8; 100_000]);
    let t = ecu.upload(&longer, 0).await.unwrap();
    assert_eq!(
        t.result.as_ref().unwrap().code,
        ResultCode::LengthMismatch as i32,
        "{t:?}"
    );
    assert_eq!(attack_name(t.result.unwrap().attack()), "endless_data");
    let report = ecu.report("n1").await;
    assert_eq!(report["attacks_detected"].as_array().unwrap().len(), 2);
    assert_eq!(ecu.running().await, "factory.bin");
    // Nothing was installed.
    let op = ecu.install().await;
    assert_eq!(op.state(), OperationState::Failed, "{op:?}");
}

#[tokio::test]
async fn an_entry_for_another_ecu_only_installs_nothing() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    repos.edit_director(
        |b| {
            b.remove_target("brake-2.bin").target(
                "radio.bin",
                b"radio",
                Some(director_target_custom("ECU-RADIO-1", "hw-radio", 1)),
            )
        },
        None,
    );
    let mut ecu = Ecu::new(&repos, "partial");
    ecu.start(&[]).await;
    let r = ecu
        .client()
        .put_metadata(repos.bundle())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.code, ResultCode::NoUpdate as i32, "{r:?}");
    let t = ecu
        .client()
        .begin_transfer(BeginTransferRequest {
            correlation_id: CORR.into(),
            filename: "radio.bin".into(),
            length: 5,
        })
        .await
        .unwrap()
        .into_inner();
    let result = t.result.unwrap();
    assert_eq!(result.code, ResultCode::NotForThisEcu as i32);
    assert_eq!(attack_name(result.attack()), "arbitrary_software");
    assert_eq!(ecu.running().await, "factory.bin");
}

#[tokio::test]
async fn refuses_malformed_and_oversized_messages_without_crashing() {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    prepared(&mut ecu, &repos, &[]).await;
    let mut bundle = repos.bundle();
    bundle.director_targets = b"{not json".to_vec();
    let r = ecu
        .client()
        .put_metadata(bundle)
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.code, ResultCode::Ok as i32);
    let huge = Chunk {
        correlation_id: CORR.into(),
        offset: 0,
        data: vec![0u8; 5 << 20].into(),
    };
    let err = ecu
        .client()
        .upload(tokio_stream::iter(vec![huge]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange
                | tonic::Code::ResourceExhausted
                | tonic::Code::Internal
                | tonic::Code::Unknown
        ),
        "{err:?}"
    );
    let chunk = Chunk {
        correlation_id: CORR.into(),
        offset: 12345,
        data: vec![0u8; 10].into(),
    };
    let err = ecu
        .client()
        .upload(tokio_stream::iter(vec![chunk]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let err = ecu
        .client()
        .get_version_report(GetVersionReportRequest {
            nonce: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Names a caller could make the Secondary keep (in `state.json`, in refusals that reach
    // the Director): too long, or holding a NUL, refused before anything is kept.
    let long = "c".repeat(secondary_ecu::rpc::MAX_CORRELATION_ID_BYTES + 1);
    for correlation_id in [long.as_str(), "asg\u{0}1"] {
        let err = ecu
            .client()
            .begin_transfer(BeginTransferRequest {
                correlation_id: correlation_id.into(),
                filename: "brake-2.bin".into(),
                length: IMAGE.len() as u64,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let err = ecu
            .client()
            .install(InstallRequest {
                correlation_id: correlation_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
    let mut bundle = repos.bundle();
    bundle.correlation_id = long.clone();
    let err = ecu.client().put_metadata(bundle).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = ecu
        .client()
        .begin_transfer(BeginTransferRequest {
            correlation_id: CORR.into(),
            filename: format!("{}.bin", "x".repeat(1 << 20)),
            length: IMAGE.len() as u64,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Still serving.
    assert_eq!(ecu.running().await, "factory.bin");
}

#[tokio::test]
async fn follows_a_director_root_rotation_and_refuses_a_forged_root() {
    for mode in ["full", "partial"] {
        let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
        let mut ecu = Ecu::new(&repos, mode);
        ecu.start(&[]).await;
        let current: Value = serde_json::from_slice(&repos.director.roots[0]).unwrap();
        let root: uptane_core::metadata::Root =
            serde_json::from_value(current["signed"].clone()).unwrap();
        let forged = uptane_core::sign::RootBuilder::from_root(&root, 2, repos.director.expires)
            .remove_key("root", &key(11).key_id())
            .key("root", key(15).public_key())
            .sign(&[&key(15)])
            .unwrap();
        let mut bundle = repos.bundle();
        bundle.director_roots = vec![forged];
        let r = ecu
            .client()
            .put_metadata(bundle)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.code, ResultCode::SignatureInvalid as i32, "{mode}: {r:?}");
        assert_eq!(attack_name(r.attack()), "arbitrary_software");

        let builder = uptane_core::sign::RootBuilder::from_root(&root, 2, repos.director.expires)
            .remove_key("root", &key(11).key_id())
            .key("root", key(15).public_key());
        repos.director.rotate_root(builder, vec![key(15)]);
        let mut bundle = repos.bundle();
        bundle.director_roots = repos.director.roots[1..].to_vec();
        let r = ecu
            .client()
            .put_metadata(bundle)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.code, ResultCode::Ok as i32, "{mode}: {r:?}");
    }
}

/// Every file under the ECU's state directory, with its contents.
fn state_files(ecu: &Ecu) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut dirs = vec![ecu.dir.path().join("ecu")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path, bytes);
            }
        }
    }
    out
}

/// An ECU with evidence to erase and an update to disturb: a forged bundle refused (an
/// attack kept for the Primary), the real one accepted, and the first chunk transferred.
async fn with_evidence_and_a_pending_update() -> Ecu {
    let repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    ecu.start(&[]).await;
    let mut forged = repos.bundle();
    forged.director_targets =
        uptane_core::sign::sign(&repos.director.targets, &[&key(66)]).unwrap();
    let r = ecu
        .client()
        .put_metadata(forged)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.code, ResultCode::SignatureInvalid as i32, "{r:?}");
    prepared(&mut ecu, &repos, &[]).await;
    let first = ecu.upload(&IMAGE[..65536], 0).await.unwrap();
    assert_eq!(first.durable_offset, 65536, "{first:?}");
    ecu
}

/// `call` from a client without a certificate is `UNAUTHENTICATED`, from one with a
/// certificate that is not the Primary's `PERMISSION_DENIED`; neither changes a file of the
/// ECU's state, and the Primary is still answered and still sees the evidence.
async fn refused_to_anyone_but_the_primary<F, Fut, T>(call: F)
where
    F: Fn(SecondaryClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    T: std::fmt::Debug,
{
    let mut ecu = with_evidence_and_a_pending_update().await;
    let before = state_files(&ecu);
    let secondary = ecu.keys().secondary;

    let anonymous = SecondaryClient::new(channel(&ecu.addr, &secondary, None));
    let status = call(anonymous).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let rogue = service_runtime::pki::self_signed("rogue", &[service_runtime::pki::DEVICE_NAME])
        .unwrap()
        .identity()
        .unwrap();
    let mut rogue_client = SecondaryClient::new(channel(&ecu.addr, &secondary, Some(&rogue)));
    // Who the ECU is stays public.
    let info = rogue_client
        .get_info(proto::v2::GetInfoRequest {
            primary_protocol_version: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.ecu_serial, SERIAL);
    let status = call(rogue_client).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    assert_eq!(
        state_files(&ecu),
        before,
        "a refused call changed the state"
    );
    let t = ecu
        .client()
        .get_transfer_state(proto::v2::GetTransferStateRequest {
            correlation_id: CORR.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.durable_offset, 65536, "{t:?}");
    let report = ecu.report("after-the-rogue").await;
    let attacks = report["attacks_detected"].as_array().unwrap();
    assert!(
        attacks.iter().any(|a| a["kind"] == "arbitrary_software"),
        "{report}"
    );
    assert_eq!(ecu.running().await, "factory.bin");
}

macro_rules! refused_to_rogues {
    ($($name:ident: $client:ident => $call:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            refused_to_anyone_but_the_primary(|mut $client: SecondaryClient<Channel>| async move {
                $call.await
            })
            .await;
        }
    )*};
}

refused_to_rogues! {
    a_rogue_cannot_read_the_status: c => c.get_status(GetStatusRequest {});
    a_rogue_cannot_take_a_version_report: c => c.get_version_report(GetVersionReportRequest {
        nonce: "rogue".into(),
    });
    a_rogue_cannot_acknowledge_the_evidence_away: c => c.acknowledge_report(
        proto::v2::AcknowledgeReportRequest { report_counter: u64::MAX },
    );
    a_rogue_cannot_set_the_time: c => c.put_time(PutTimeRequest {
        unix_seconds: now().timestamp() + 10 * 365 * 86400,
    });
    a_rogue_cannot_send_metadata: c => c.put_metadata(PutMetadataRequest {
        correlation_id: CORR.into(),
        ..Default::default()
    });
    a_rogue_cannot_reset_the_transfer: c => c.begin_transfer(BeginTransferRequest {
        correlation_id: CORR.into(),
        filename: "brake-2.bin".into(),
        length: 1,
    });
    a_rogue_cannot_read_the_transfer_state: c => c.get_transfer_state(
        proto::v2::GetTransferStateRequest { correlation_id: CORR.into() },
    );
    a_rogue_cannot_upload: c => c.upload(tokio_stream::iter(vec![Chunk {
        correlation_id: CORR.into(),
        offset: 65536,
        data: vec![0u8; 1024].into(),
    }]));
    a_rogue_cannot_install: c => c.install(InstallRequest { correlation_id: CORR.into() });
    a_rogue_cannot_activate: c => c.activate(ActivateRequest { correlation_id: CORR.into() });
    a_rogue_cannot_confirm: c => c.confirm(proto::v2::ConfirmRequest {
        correlation_id: CORR.into(),
    });
    a_rogue_cannot_read_an_operation: c => c.get_operation(GetOperationRequest {
        operation_id: "op-1".into(),
    });
    a_rogue_cannot_cancel_an_operation: c => c.cancel_operation(
        proto::v2::CancelOperationRequest { operation_id: "op-1".into() },
    );
    a_rogue_cannot_read_an_installation_result: c => c.get_installation_result(
        GetInstallationResultRequest { correlation_id: CORR.into() },
    );
    a_rogue_cannot_reboot_the_ecu: c => c.reboot(proto::v2::RebootRequest {});
}

#[tokio::test]
async fn detected_attacks_are_kept_until_the_primary_acknowledges_the_report_carrying_them() {
    let mut repos = Repos::new("brake-2.bin", IMAGE, 2);
    let mut ecu = Ecu::new(&repos, "partial");
    ecu.start(&[]).await;
    let mut forged = repos.bundle();
    forged.director_targets =
        uptane_core::sign::sign(&repos.director.targets, &[&key(66)]).unwrap();
    let kinds = |report: &Value| -> Vec<String> {
        report["attacks_detected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let r = ecu
        .client()
        .put_metadata(forged.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.code, ResultCode::SignatureInvalid as i32, "{r:?}");
    let first = ecu.report("n1").await;
    assert_eq!(kinds(&first), ["arbitrary_software"]);
    // Taking a report again (the manifest was lost on the way) still carries it, and so does
    // a restart of the ECU.
    ecu.start(&[]).await;
    let second = ecu.report("n2").await;
    assert_eq!(kinds(&second), ["arbitrary_software"]);
    // A second attack after the first report; the Director accepted the manifest carrying
    // the first report only.
    repos.edit_director(
        |b| {
            b.target(
                "brake-2.bin",
                IMAGE,
                Some(director_target_custom(SERIAL, "hw-other", 2)),
            )
        },
        None,
    );
    let r = ecu
        .client()
        .put_metadata(repos.bundle())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.code, ResultCode::HardwareIdMismatch as i32, "{r:?}");
    let with_both = ecu.report("n3").await;
    assert_eq!(kinds(&with_both), ["arbitrary_software", "wrong_hardware"]);
    ecu.client()
        .acknowledge_report(proto::v2::AcknowledgeReportRequest {
            report_counter: second["report_counter"].as_u64().unwrap(),
        })
        .await
        .unwrap();
    let after = ecu.report("n4").await;
    assert_eq!(kinds(&after), ["wrong_hardware"]);
    ecu.client()
        .acknowledge_report(proto::v2::AcknowledgeReportRequest {
            report_counter: after["report_counter"].as_u64().unwrap(),
        })
        .await
        .unwrap();
    assert!(kinds(&ecu.report("n5").await).is_empty());
}
