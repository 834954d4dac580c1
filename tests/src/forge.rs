//! What an attacker makes with stolen keys or from traffic it watched: signed metadata of its
//! own choosing (with `uptane-core`'s builders), forged or replayed ECU reports, and a fake
//! Secondary link that forwards everything to the real ECU but rewrites its version reports.

use std::path::Path;
use std::sync::{Arc, Mutex};

use proto::v2::secondary_client::SecondaryClient;
use proto::v2::secondary_server::{Secondary, SecondaryServer};
use proto::v2::{
    AcknowledgeReportRequest, ActivateRequest, BeginTransferRequest, CancelOperationRequest, Chunk,
    ConfirmRequest, EcuInfo, EcuStatus, GetInfoRequest, GetInstallationResultRequest,
    GetOperationRequest, GetStatusRequest, GetTransferStateRequest, GetVersionReportRequest,
    InstallRequest, InstallationResult, Operation, PutMetadataRequest, PutTimeRequest,
    RebootRequest, SignedVersionReport, TransferState,
};
use serde_json::Value;
use service_runtime::pki::DEVICE_NAME;
use service_runtime::tls::{ClientAuth, Identity, ServerTrust};
use tonic::{Request, Response, Status, Streaming};
use uptane_core::crypto::SigningKey;
use uptane_core::metadata::{Snapshot, TargetFile, Targets, Timestamp};
use uptane_core::sign::{SnapshotBuilder, TimestampBuilder, describe, sign};
use uptane_core::time::UtcTime;

/// Reads a PKCS#8 PEM private key.
pub fn steal_key(path: &Path) -> SigningKey {
    let pem = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("stealing {}: {e}", path.display()));
    SigningKey::from_pkcs8_pem(&pem).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `signed` part of a metadata file, typed.
pub fn signed_part<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    let doc: Value = serde_json::from_slice(bytes).expect("metadata is JSON");
    serde_json::from_value(doc["signed"].clone()).expect("metadata has its role's fields")
}

/// The version of a metadata file.
pub fn version_of(bytes: &[u8]) -> u64 {
    let doc: Value = serde_json::from_slice(bytes).expect("metadata is JSON");
    doc["signed"]["version"].as_u64().unwrap_or(0)
}

/// A metadata file with its `signed.version` raised by `by` and its signatures replaced by
/// those of `keys` (none: unsigned).
pub fn resign_bumped(bytes: &[u8], by: u64, keys: &[&SigningKey]) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(bytes).expect("metadata is JSON");
    let version = doc["signed"]["version"].as_u64().unwrap_or(0);
    doc["signed"]["version"] = Value::from(version + by);
    if keys.is_empty() {
        doc["signatures"] = Value::Array(Vec::new());
        serde_json::to_vec(&doc).expect("JSON serializes")
    } else {
        uptane_core::sign::sign_value(&doc["signed"], keys).expect("signs")
    }
}

/// A consistent set of top-level metadata signed with the keys an attacker holds: targets
/// (signed with `targets_key`), the snapshot listing it and the timestamp listing that.
#[derive(Debug, Clone)]
pub struct ForgedSet {
    /// Timestamp file.
    pub timestamp: Vec<u8>,
    /// Snapshot file and its version.
    pub snapshot: (u64, Vec<u8>),
    /// Targets file and its version.
    pub targets: (u64, Vec<u8>),
}

/// Signing keys of a repository's top-level roles.
#[derive(Debug)]
pub struct RoleKeys {
    /// Targets key.
    pub targets: SigningKey,
    /// Snapshot key.
    pub snapshot: SigningKey,
    /// Timestamp key.
    pub timestamp: SigningKey,
}

/// Signs `targets` (given its new version) with a snapshot and timestamp one version above
/// the current ones. `current` gives the current timestamp and snapshot files; the snapshot
/// keeps its other roles (delegations).
pub fn forge_set(
    keys: &RoleKeys,
    targets: &Targets,
    current_timestamp: &[u8],
    current_snapshot: &[u8],
    expires: UtcTime,
) -> ForgedSet {
    let targets_bytes = sign(targets, &[&keys.targets]).expect("signs");
    let timestamp: Timestamp = signed_part(current_timestamp);
    let snapshot: Snapshot = signed_part(current_snapshot);
    let snapshot_version = snapshot.common.version + 1;
    let mut builder = SnapshotBuilder::new(snapshot_version, expires);
    for (name, meta) in &snapshot.meta {
        let role = name.trim_end_matches(".json");
        if role != "targets" {
            builder = builder.role(role, meta.clone());
        }
    }
    let snapshot_bytes = builder
        .role("targets", describe(targets.common.version, &targets_bytes))
        .sign(&[&keys.snapshot])
        .expect("signs");
    let timestamp_bytes = TimestampBuilder::new(
        timestamp.common.version + 1,
        expires,
        describe(snapshot_version, &snapshot_bytes),
    )
    .sign(&[&keys.timestamp])
    .expect("signs");
    ForgedSet {
        timestamp: timestamp_bytes,
        snapshot: (snapshot_version, snapshot_bytes),
        targets: (targets.common.version, targets_bytes),
    }
}

/// `targets` with version `version`, its target list replaced by `entries`.
pub fn targets_with(
    targets: &Targets,
    version: u64,
    expires: UtcTime,
    entries: Vec<(String, TargetFile)>,
) -> Targets {
    let mut forged = targets.clone();
    forged.common.version = version;
    forged.common.expires = expires;
    forged.targets = entries.into_iter().collect();
    forged
}

/// How the fake link rewrites version reports.
#[derive(Debug, Clone)]
pub enum ReportForgery {
    /// Pass reports through.
    None,
    /// Change the installed file name (the ECU's signature no longer holds).
    Tamper(String),
    /// Answer with this earlier report (another nonce) instead.
    Replay(Vec<u8>),
    /// Change the installed file name and sign again with the ECU's stolen key.
    Resign(Box<SigningKey>, String),
}

/// A Secondary link in the attacker's hands: it forwards every call to the real ECU, keeps
/// the reports it saw, and rewrites reports as told.
#[derive(Debug, Clone)]
pub struct ForgingLink {
    real: SecondaryClient<tonic::transport::Channel>,
    forgery: Arc<Mutex<ReportForgery>>,
    /// The time sent instead of the Primary's, if set.
    time: Arc<Mutex<Option<i64>>>,
    /// Reports that passed through.
    pub seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// The TLS keys of a Secondary link, stolen from both ends: what an attacker needs to sit on
/// a link that is mutual TLS with pinned certificates.
#[derive(Debug, Clone)]
pub struct LinkKeys {
    /// The Secondary's certificate and key (to pass for it towards the Primary).
    pub secondary: Identity,
    /// The Primary's certificate and key (to pass for it towards the Secondary).
    pub primary: Identity,
}

impl LinkKeys {
    /// Reads both identities from the ECUs' directories.
    pub fn steal(secondary_dir: &Path, primary_dir: &Path) -> Self {
        let read = |dir: &Path| {
            let tls = dir.join("tls");
            Identity::from_pem_files(&tls.join("cert.pem"), &tls.join("key.pem"))
                .unwrap_or_else(|e| panic!("stealing the TLS identity in {}: {e}", dir.display()))
        };
        Self {
            secondary: read(secondary_dir),
            primary: read(primary_dir),
        }
    }
}

/// A client of the Secondary at `addr` that passes for its Primary with stolen `keys`.
pub fn secondary_client(addr: &str, keys: &LinkKeys) -> SecondaryClient<tonic::transport::Channel> {
    let tls = service_runtime::tls::client_config(
        &ServerTrust::Pinned(keys.secondary.fingerprint()),
        Some(&keys.primary),
    )
    .expect("a TLS client configuration");
    let channel = tonic::transport::Endpoint::from_static("http://secondary.invalid")
        .connect_with_connector_lazy(service_runtime::tls::connector(
            addr.to_string(),
            DEVICE_NAME,
            Arc::new(tls),
        ));
    SecondaryClient::new(channel)
}

impl ForgingLink {
    /// Serves on a new 127.0.0.1 port in a background thread, passing for the Secondary at
    /// `real_addr` with the stolen `keys`; returns the address and the handle to steer it.
    pub fn start(real_addr: &str, keys: &LinkKeys) -> (String, Self) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let to_real = service_runtime::tls::client_config(
            &ServerTrust::Pinned(keys.secondary.fingerprint()),
            Some(&keys.primary),
        )
        .expect("a TLS client configuration");
        let as_secondary =
            service_runtime::tls::server_config(&keys.secondary, &ClientAuth::Pinned)
                .expect("a TLS server configuration");
        let (link, listener) = runtime.block_on(async {
            let channel = tonic::transport::Endpoint::from_static("http://secondary.invalid")
                .connect_with_connector_lazy(service_runtime::tls::connector(
                    real_addr.to_string(),
                    DEVICE_NAME,
                    Arc::new(to_real),
                ));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds");
            (
                ForgingLink {
                    real: SecondaryClient::new(channel),
                    forgery: Arc::new(Mutex::new(ReportForgery::None)),
                    time: Arc::new(Mutex::new(None)),
                    seen: Arc::new(Mutex::new(Vec::new())),
                },
                listener,
            )
        });
        let addr = listener.local_addr().expect("an address").to_string();
        let service = link.clone();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let incoming = service_runtime::tls::incoming(listener, Arc::new(as_secondary));
                let _ = tonic::transport::Server::builder()
                    .add_service(SecondaryServer::new(service))
                    .serve_with_incoming(incoming)
                    .await;
            });
        });
        (addr, link)
    }

    /// Sends `unix_seconds` in every later `PutTime` instead of the Primary's time.
    pub fn forge_time(&self, unix_seconds: i64) {
        if let Ok(mut t) = self.time.lock() {
            *t = Some(unix_seconds);
        }
    }

    /// Sets how reports are rewritten.
    pub fn forge(&self, forgery: ReportForgery) {
        if let Ok(mut f) = self.forgery.lock() {
            *f = forgery;
        }
    }
}

#[tonic::async_trait]
impl Secondary for ForgingLink {
    async fn get_info(
        &self,
        request: Request<GetInfoRequest>,
    ) -> Result<Response<EcuInfo>, Status> {
        self.real.clone().get_info(request.into_inner()).await
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<EcuStatus>, Status> {
        self.real.clone().get_status(request.into_inner()).await
    }

    async fn put_time(
        &self,
        request: Request<PutTimeRequest>,
    ) -> Result<Response<proto::v2::Result>, Status> {
        let mut time = request.into_inner();
        if let Some(forged) = self.time.lock().ok().and_then(|t| *t) {
            time.unix_seconds = forged;
        }
        self.real.clone().put_time(time).await
    }

    async fn acknowledge_report(
        &self,
        request: Request<AcknowledgeReportRequest>,
    ) -> Result<Response<proto::v2::Result>, Status> {
        self.real
            .clone()
            .acknowledge_report(request.into_inner())
            .await
    }

    async fn put_metadata(
        &self,
        request: Request<PutMetadataRequest>,
    ) -> Result<Response<proto::v2::Result>, Status> {
        self.real.clone().put_metadata(request.into_inner()).await
    }

    async fn begin_transfer(
        &self,
        request: Request<BeginTransferRequest>,
    ) -> Result<Response<TransferState>, Status> {
        self.real.clone().begin_transfer(request.into_inner()).await
    }

    async fn get_transfer_state(
        &self,
        request: Request<GetTransferStateRequest>,
    ) -> Result<Response<TransferState>, Status> {
        self.real
            .clone()
            .get_transfer_state(request.into_inner())
            .await
    }

    async fn install(
        &self,
        request: Request<InstallRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.real.clone().install(request.into_inner()).await
    }

    async fn activate(
        &self,
        request: Request<ActivateRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.real.clone().activate(request.into_inner()).await
    }

    async fn confirm(
        &self,
        request: Request<ConfirmRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.real.clone().confirm(request.into_inner()).await
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.real.clone().get_operation(request.into_inner()).await
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.real
            .clone()
            .cancel_operation(request.into_inner())
            .await
    }

    async fn get_installation_result(
        &self,
        request: Request<GetInstallationResultRequest>,
    ) -> Result<Response<InstallationResult>, Status> {
        self.real
            .clone()
            .get_installation_result(request.into_inner())
            .await
    }

    async fn reboot(
        &self,
        request: Request<RebootRequest>,
    ) -> Result<Response<proto::v2::Result>, Status> {
        self.real.clone().reboot(request.into_inner()).await
    }

    async fn get_version_report(
        &self,
        request: Request<GetVersionReportRequest>,
    ) -> Result<Response<SignedVersionReport>, Status> {
        let real = self
            .real
            .clone()
            .get_version_report(request.into_inner())
            .await?
            .into_inner();
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(real.signed_report.clone());
        }
        let forgery = self
            .forgery
            .lock()
            .map(|f| f.clone())
            .unwrap_or(ReportForgery::None);
        let signed_report = match forgery {
            ReportForgery::None => real.signed_report,
            ReportForgery::Replay(old) => old,
            ReportForgery::Resign(key, filename) => {
                let doc: Value = serde_json::from_slice(&real.signed_report)
                    .map_err(|e| Status::internal(e.to_string()))?;
                let mut signed = doc["signed"].clone();
                signed["installed_image"]["filename"] = Value::from(filename);
                uptane_core::sign::sign_value(&signed, &[&key])
                    .map_err(|e| Status::internal(e.to_string()))?
            }
            ReportForgery::Tamper(filename) => {
                let mut doc: Value = serde_json::from_slice(&real.signed_report)
                    .map_err(|e| Status::internal(e.to_string()))?;
                doc["signed"]["installed_image"]["filename"] = Value::from(filename);
                serde_json::to_vec(&doc).map_err(|e| Status::internal(e.to_string()))?
            }
        };
        Ok(Response::new(SignedVersionReport { signed_report }))
    }

    async fn upload(
        &self,
        _: Request<Streaming<Chunk>>,
    ) -> Result<Response<TransferState>, Status> {
        Err(Status::unavailable("the link drops transfers"))
    }
}
