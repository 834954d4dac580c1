//! The Primary's side of `uptane.secondary.v2`: version reports, and the delivery of one
//! verified update (time, metadata, resumable transfer, install, trial boot) to one
//! Secondary. Every call has a deadline, so a Secondary that stops answering costs a bounded
//! wait and never blocks the others.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use proto::v2::secondary_client::SecondaryClient;
use proto::v2::{
    ActivateRequest, BeginTransferRequest, Chunk, GetInfoRequest, GetInstallationResultRequest,
    GetOperationRequest, GetTransferStateRequest, GetVersionReportRequest, InstallRequest,
    Operation, OperationState, PutMetadataRequest, PutTimeRequest, ResultCode, TransferState,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::{Channel, Endpoint};

use uptane_core::error::AttackKind;

use service_runtime::pki::DEVICE_NAME;
use service_runtime::tls::{Identity, ServerTrust};

use crate::config::SecondaryConfig;
use crate::download::VerifiedFile;
use service_runtime::speed::{MinSpeed, SpeedMonitor};

/// Largest chunk the Primary sends, whatever the Secondary accepts.
const MAX_CHUNK: usize = 1 << 20;
/// Slowest transfer the deadline of an upload allows for, in bytes per second.
const MIN_TRANSFER_BYTES_PER_SEC: u64 = 1 << 20;

/// Why talking to a Secondary failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// It could not be reached.
    #[error("{serial} at {address} is unreachable: {reason}")]
    Unreachable {
        /// Its serial.
        serial: String,
        /// Where it was expected.
        address: String,
        /// Why.
        reason: String,
    },
    /// It did not answer in time.
    #[error("{serial}: {call} did not finish within {seconds} s")]
    Timeout {
        /// Its serial.
        serial: String,
        /// The call.
        call: &'static str,
        /// The deadline.
        seconds: u64,
    },
    /// It answered with a protocol error.
    #[error("{serial}: {call}: {status}")]
    Status {
        /// Its serial.
        serial: String,
        /// The call.
        call: &'static str,
        /// What it said.
        status: Box<tonic::Status>,
    },
    /// A transfer ran slower than the minimum speed (slow retrieval, Uptane §5.4.4.2 on
    /// the vehicle's own link): stopped, to be resumed in a later cycle.
    #[error(
        "{serial}: the transfer ran at {bytes_per_sec} bytes/s, below the minimum of {min_bytes_per_sec}"
    )]
    TooSlow {
        /// Its serial.
        serial: String,
        /// The speed reached.
        bytes_per_sec: u64,
        /// The minimum.
        min_bytes_per_sec: u64,
    },
    /// Reading the image to send failed.
    #[error("{serial}: reading the image: {source}")]
    Io {
        /// Its serial.
        serial: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The ECU runs the image.
    Installed,
    /// The ECU refused or failed it; final for this assignment.
    Failed {
        /// The ECU's result code.
        code: ResultCode,
        /// The attack it named, if any.
        attack: Option<AttackKind>,
        /// Its description.
        detail: String,
    },
    /// Not finished; try again in a later cycle.
    Retry(String),
}

/// A connection (made on demand) to one Secondary.
#[derive(Debug)]
pub struct SecondaryLink {
    config: SecondaryConfig,
    timeout: Duration,
    min_speed: MinSpeed,
    tls: Option<Arc<rustls::ClientConfig>>,
    client: Option<SecondaryClient<Channel>>,
}

fn failed(result: Option<proto::v2::Result>, fallback: &str) -> Delivery {
    let result = result.unwrap_or_default();
    let attack = attack_from_proto(result.attack());
    let code = ResultCode::try_from(result.code).unwrap_or(ResultCode::InternalError);
    let detail = if result.description.is_empty() {
        fallback.to_string()
    } else {
        result.description
    };
    if proto::is_final_failure(code) {
        Delivery::Failed {
            code,
            attack,
            detail,
        }
    } else {
        Delivery::Retry(format!("{}: {detail}", code.as_str_name()))
    }
}

/// The attack a Secondary named, in the core's terms.
pub fn attack_from_proto(attack: proto::v2::Attack) -> Option<AttackKind> {
    use proto::v2::Attack;
    Some(match attack {
        Attack::None => return None,
        Attack::ArbitrarySoftware => AttackKind::ArbitrarySoftware,
        Attack::Rollback => AttackKind::Rollback,
        Attack::Freeze => AttackKind::Freeze,
        Attack::MixAndMatch => AttackKind::MixAndMatch,
        Attack::EndlessData => AttackKind::EndlessData,
        Attack::SlowRetrieval => AttackKind::SlowRetrieval,
        Attack::WrongHardware => AttackKind::WrongHardware,
        Attack::UnknownEcu => AttackKind::UnknownEcu,
        Attack::WrongVehicle => AttackKind::WrongVehicle,
        Attack::RepositoryMismatch => AttackKind::RepositoryMismatch,
        Attack::Malformed => AttackKind::Malformed,
        Attack::Replay => AttackKind::Replay,
        Attack::DropRequest => AttackKind::DropRequest,
        Attack::TimeTampering => AttackKind::TimeTampering,
    })
}

impl SecondaryLink {
    /// A link to `config`, each call bounded by `timeout`: mutual TLS with the Primary's
    /// `identity` and the Secondary's certificate pinned by its configured fingerprint, or
    /// plaintext when none is configured (which [`crate::config::Settings`] allows only
    /// with `--insecure`).
    pub fn new(
        config: SecondaryConfig,
        timeout: Duration,
        identity: &Identity,
    ) -> Result<Self, LinkError> {
        let tls = match config.fingerprint {
            None => {
                tracing::warn!(serial = %config.serial, "no fingerprint pinned: plaintext gRPC to this Secondary");
                None
            }
            Some(pinned) => {
                let tls = service_runtime::tls::client_config(
                    &ServerTrust::Pinned(pinned),
                    Some(identity),
                )
                .map_err(|e| LinkError::Unreachable {
                    serial: config.serial.to_string(),
                    address: config.address.clone(),
                    reason: e.to_string(),
                })?;
                Some(Arc::new(tls))
            }
        };
        Ok(Self {
            config,
            timeout,
            min_speed: MinSpeed::default(),
            tls,
            client: None,
        })
    }

    /// The same link, stopping transfers that run slower than `min_speed`.
    pub fn with_min_speed(mut self, min_speed: MinSpeed) -> Self {
        self.min_speed = min_speed;
        self
    }

    /// The Secondary's configuration.
    pub fn config(&self) -> &SecondaryConfig {
        &self.config
    }

    fn serial(&self) -> String {
        self.config.serial.to_string()
    }

    async fn client(&mut self) -> Result<&mut SecondaryClient<Channel>, LinkError> {
        if self.client.is_none() {
            let unreachable = |reason: String| LinkError::Unreachable {
                serial: self.config.serial.to_string(),
                address: self.config.address.clone(),
                reason,
            };
            let endpoint = Endpoint::from_shared(format!("http://{}", self.config.address))
                .map_err(|e| unreachable(e.to_string()))?
                .connect_timeout(self.timeout.min(Duration::from_secs(5)))
                // One chunk in flight needs windows of at least a chunk (docs/PROTOCOL.md).
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(8 << 20))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(self.timeout);
            let channel = match &self.tls {
                None => endpoint.connect().await,
                Some(tls) => {
                    let connector = service_runtime::tls::connector(
                        self.config.address.clone(),
                        DEVICE_NAME,
                        Arc::clone(tls),
                    );
                    endpoint.connect_with_connector(connector).await
                }
            }
            .map_err(|e| unreachable(service_runtime::error_chain(&e)))?;
            self.client = Some(
                SecondaryClient::new(channel)
                    .max_decoding_message_size(4 << 20)
                    .max_encoding_message_size(4 << 20),
            );
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Runs one call under the deadline; a failed call drops the connection so the next
    /// one reconnects.
    async fn call<T, F>(
        &mut self,
        name: &'static str,
        deadline: Duration,
        call: impl FnOnce(SecondaryClient<Channel>) -> F,
    ) -> Result<T, LinkError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client().await?.clone();
        let serial = self.serial();
        match tokio::time::timeout(deadline, call(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) {
                    self.client = None;
                }
                Err(LinkError::Status {
                    serial,
                    call: name,
                    status: Box::new(status),
                })
            }
            Err(_) => {
                self.client = None;
                Err(LinkError::Timeout {
                    serial,
                    call: name,
                    seconds: deadline.as_secs(),
                })
            }
        }
    }

    /// Serial, hardware id, public key and verification mode, as the ECU states them.
    pub async fn info(&mut self) -> Result<proto::v2::EcuInfo, LinkError> {
        let t = self.timeout;
        self.call("GetInfo", t, |mut c| async move {
            c.get_info(GetInfoRequest {
                primary_protocol_version: proto::PROTOCOL_VERSION,
            })
            .await
        })
        .await
    }

    /// The ECU's signed version report for `nonce`, as it signed it.
    pub async fn version_report(&mut self, nonce: &str) -> Result<Vec<u8>, LinkError> {
        let t = self.timeout;
        let nonce = nonce.to_string();
        let report = self
            .call("GetVersionReport", t, |mut c| async move {
                c.get_version_report(GetVersionReportRequest { nonce })
                    .await
            })
            .await?;
        Ok(report.signed_report)
    }

    /// Tells the ECU the Director accepted its report `report_counter`, so the attacks it
    /// carried may be forgotten.
    pub async fn acknowledge(&mut self, report_counter: u64) -> Result<(), LinkError> {
        let t = self.timeout;
        self.call("AcknowledgeReport", t, |mut c| async move {
            c.acknowledge_report(proto::v2::AcknowledgeReportRequest { report_counter })
                .await
        })
        .await?;
        Ok(())
    }

    /// The result the ECU kept for `correlation_id`, if it is about `filename`: a result
    /// for another image under the same correlation id says nothing about this one.
    async fn installation_result(
        &mut self,
        correlation_id: &str,
        filename: &str,
    ) -> Result<Option<proto::v2::Result>, LinkError> {
        let t = self.timeout;
        let correlation_id = correlation_id.to_string();
        match self
            .call("GetInstallationResult", t, |mut c| async move {
                c.get_installation_result(GetInstallationResultRequest { correlation_id })
                    .await
            })
            .await
        {
            Ok(r) if r.filename == filename => Ok(r.result),
            Ok(_) => Ok(None),
            Err(LinkError::Status { status, .. }) if status.code() == tonic::Code::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends one verified update: the time, the metadata, the image (resumed from what the
    /// ECU already holds durably), then install and trial boot. Safe to repeat after any
    /// interruption: an update the ECU already finished is recognized by its kept result.
    pub async fn deliver(
        &mut self,
        unix_seconds: i64,
        bundle: PutMetadataRequest,
        verified: &VerifiedFile,
    ) -> Result<Delivery, LinkError> {
        let (image, filename, length) = (
            verified.path(),
            verified.approved().filename(),
            verified.approved().length(),
        );
        let bundle = match self.protocol().await? {
            Ok(spoken) => named_for(bundle, spoken),
            Err(declined) => return Ok(declined),
        };
        let correlation_id = bundle.correlation_id.clone();
        if let Some(done) = self.kept_outcome(&correlation_id, filename).await? {
            return Ok(done);
        }
        if let Some(refused) = self.put_time(unix_seconds).await? {
            return Ok(refused);
        }
        let t = self.timeout;
        let accepted = self
            .call("PutMetadata", t, |mut c| async move {
                c.put_metadata(bundle).await
            })
            .await?;
        match ResultCode::try_from(accepted.code) {
            Ok(ResultCode::Ok) => {}
            Ok(ResultCode::AlreadyProcessed) => return Ok(Delivery::Installed),
            // An earlier update's trial boot is under way on the ECU: it ends first.
            Ok(ResultCode::NeedCompletion) => {
                return Ok(Delivery::Retry(
                    "the ECU finishes the trial boot of an earlier update first".into(),
                ));
            }
            Ok(ResultCode::NoUpdate) => {
                return Ok(Delivery::Failed {
                    code: ResultCode::NoUpdate,
                    attack: None,
                    detail: "the ECU's own verification finds no update for it".into(),
                });
            }
            _ => return Ok(failed(Some(accepted), "metadata refused")),
        }
        if self
            .installation_result(&correlation_id, filename)
            .await?
            .map(|r| r.code)
            != Some(ResultCode::NeedCompletion as i32)
        {
            if let Some(refused) = self
                .transfer(&correlation_id, image, filename, length)
                .await?
            {
                return Ok(refused);
            }
            let installed = self.install(&correlation_id, length).await?;
            if installed.code != ResultCode::NeedCompletion as i32 {
                return Ok(failed(Some(installed), "install failed"));
            }
        }
        self.activate(&correlation_id, filename).await
    }

    /// Tells the ECU that the Director withdrew its update `correlation_id` (of `filename`,
    /// an operator's cancel): sends the Director's new metadata, which assigns it nothing, so
    /// that the ECU abandons the update if it has not activated it (ecu-side.md (c) rows 19
    /// and 20), then reads how the update ended. `Failed` with `OPERATION_CANCELLED` when it
    /// was abandoned or never reached the ECU; `Installed` when it was past the point of no
    /// return and is installed.
    pub async fn withdraw(
        &mut self,
        unix_seconds: i64,
        bundle: PutMetadataRequest,
        correlation_id: &str,
        filename: &str,
    ) -> Result<Delivery, LinkError> {
        let bundle = match self.protocol().await? {
            Ok(spoken) => named_for(bundle, spoken),
            Err(declined) => return Ok(declined),
        };
        if let Some(refused) = self.put_time(unix_seconds).await? {
            return Ok(refused);
        }
        let t = self.timeout;
        let answer = self
            .call("PutMetadata", t, |mut c| async move {
                c.put_metadata(bundle).await
            })
            .await?;
        match ResultCode::try_from(answer.code) {
            Ok(ResultCode::NoUpdate) => {}
            // Past its point of no return (a single bank being overwritten): the ECU keeps the
            // metadata that approved it, and the update is finished rather than left half done.
            Ok(ResultCode::NeedCompletion) => return self.complete(correlation_id, filename).await,
            Ok(ResultCode::Busy) => {
                return Ok(Delivery::Retry(
                    "the ECU is still stopping the install of the withdrawn update".into(),
                ));
            }
            Ok(ResultCode::Ok | ResultCode::AlreadyProcessed) => {
                return Ok(Delivery::Retry(
                    "the ECU's verification of the new metadata still finds an update for it"
                        .into(),
                ));
            }
            _ => return Ok(failed(Some(answer), "metadata refused")),
        }
        Ok(
            match self.installation_result(correlation_id, filename).await? {
                Some(r) if let Some(done) = ended(&r) => done,
                Some(r) => Delivery::Retry(format!(
                    "the ECU keeps the withdrawn update ({}: {})",
                    ResultCode::try_from(r.code)
                        .unwrap_or_default()
                        .as_str_name(),
                    r.description
                )),
                None => Delivery::Failed {
                    code: ResultCode::OperationCancelled,
                    attack: None,
                    detail: "no longer assigned before it reached the ECU".into(),
                },
            },
        )
    }

    /// Finishes an update the ECU holds past its point of no return: installs it from the
    /// staged image unless it is written already, then activates it.
    async fn complete(
        &mut self,
        correlation_id: &str,
        filename: &str,
    ) -> Result<Delivery, LinkError> {
        if self
            .installation_result(correlation_id, filename)
            .await?
            .map(|r| r.code)
            != Some(ResultCode::NeedCompletion as i32)
        {
            let t = self.timeout;
            let request = GetTransferStateRequest {
                correlation_id: correlation_id.to_string(),
            };
            let state = self
                .call("GetTransferState", t, |mut c| async move {
                    c.get_transfer_state(request).await
                })
                .await?;
            if let Some(refused) = refused_transfer(&state) {
                return Ok(refused);
            }
            let installed = self.install(correlation_id, state.length).await?;
            if installed.code != ResultCode::NeedCompletion as i32 {
                return Ok(failed(Some(installed), "install failed"));
            }
        }
        self.activate(correlation_id, filename).await
    }

    /// Activates a written update and reads how it ended.
    async fn activate(
        &mut self,
        correlation_id: &str,
        filename: &str,
    ) -> Result<Delivery, LinkError> {
        let t = self.timeout;
        let activated = self
            .call("Activate", t, |mut c| {
                let correlation_id = correlation_id.to_string();
                async move { c.activate(ActivateRequest { correlation_id }).await }
            })
            .await?;
        let activated = self.finish_operation(activated, t).await?;
        match self.kept_outcome(correlation_id, filename).await? {
            Some(done) => Ok(done),
            None => Ok(failed(activated.result, "activation did not finish")),
        }
    }

    /// The protocol version the ECU speaks, or why it is sent nothing: an ECU older than
    /// [`proto::MIN_PROTOCOL_VERSION`] is asked nothing more and sent nothing it might read
    /// otherwise; it is tried again once it is updated (HIL row 37).
    async fn protocol(&mut self) -> Result<Result<u32, Delivery>, LinkError> {
        let spoken = self.info().await?.protocol_version;
        if spoken >= proto::MIN_PROTOCOL_VERSION {
            return Ok(Ok(spoken));
        }
        Ok(Err(Delivery::Retry(format!(
            "the ECU speaks protocol version {spoken}; this Primary speaks versions {} to {} \
             and sends it nothing until it is updated",
            proto::MIN_PROTOCOL_VERSION,
            proto::PROTOCOL_VERSION
        ))))
    }

    /// The Primary's time, verified by the ECU against the metadata that follows; `Some`
    /// when it refused it.
    async fn put_time(&mut self, unix_seconds: i64) -> Result<Option<Delivery>, LinkError> {
        let t = self.timeout;
        let time = self
            .call("PutTime", t, |mut c| async move {
                c.put_time(PutTimeRequest { unix_seconds }).await
            })
            .await?;
        Ok((time.code != ResultCode::Ok as i32).then(|| failed(Some(time), "time refused")))
    }

    /// The final outcome the ECU kept for this update, if it has one.
    async fn kept_outcome(
        &mut self,
        correlation_id: &str,
        filename: &str,
    ) -> Result<Option<Delivery>, LinkError> {
        Ok(self
            .installation_result(correlation_id, filename)
            .await?
            .and_then(|r| ended(&r)))
    }

    /// Sends the image from the ECU's durable offset; `Some` when the ECU refused it.
    async fn transfer(
        &mut self,
        correlation_id: &str,
        image: &Path,
        filename: &str,
        length: u64,
    ) -> Result<Option<Delivery>, LinkError> {
        let t = self.timeout;
        let begin = BeginTransferRequest {
            correlation_id: correlation_id.to_string(),
            filename: filename.to_string(),
            length,
        };
        let state = self
            .call("BeginTransfer", t, |mut c| async move {
                c.begin_transfer(begin).await
            })
            .await?;
        if let Some(refused) = refused_transfer(&state) {
            return Ok(Some(refused));
        }
        if state.complete {
            return Ok(None);
        }
        let from = state.durable_offset;
        let chunk_size = match self.info().await?.max_chunk_size as usize {
            0 => MAX_CHUNK,
            n => n.min(MAX_CHUNK),
        };
        let serial = self.serial();
        let io = |source| LinkError::Io {
            serial: serial.clone(),
            source,
        };
        let mut file = tokio::fs::File::open(image).await.map_err(io)?;
        file.seek(std::io::SeekFrom::Start(from))
            .await
            .map_err(io)?;
        let sent = Arc::new(AtomicU64::new(0));
        let chunks = chunk_stream(file, correlation_id.to_string(), from, length, chunk_size)
            .inspect({
                let sent = Arc::clone(&sent);
                move |chunk| {
                    sent.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                }
            });
        let deadline = t + Duration::from_secs((length - from) / MIN_TRANSFER_BYTES_PER_SEC);
        let min_speed = self.min_speed;
        let uploaded = {
            let upload = self.call(
                "Upload",
                deadline,
                |mut c| async move { c.upload(chunks).await },
            );
            tokio::select! {
                state = upload => Ok(state),
                bytes_per_sec = too_slow(&sent, length - from, min_speed) => Err(bytes_per_sec),
            }
        };
        let state = match uploaded {
            Ok(state) => state?,
            Err(bytes_per_sec) => {
                // The stream was dropped with the call; the next call connects afresh.
                self.client = None;
                return Err(LinkError::TooSlow {
                    serial: self.serial(),
                    bytes_per_sec,
                    min_bytes_per_sec: min_speed.bytes_per_sec,
                });
            }
        };
        if let Some(refused) = refused_transfer(&state) {
            return Ok(Some(refused));
        }
        if !state.complete {
            return Ok(Some(Delivery::Retry(format!(
                "transfer stopped at {} of {length} bytes",
                state.durable_offset
            ))));
        }
        Ok(None)
    }

    async fn install(
        &mut self,
        correlation_id: &str,
        length: u64,
    ) -> Result<proto::v2::Result, LinkError> {
        let t = self.timeout;
        let request = InstallRequest {
            correlation_id: correlation_id.to_string(),
        };
        let operation = self
            .call(
                "Install",
                t,
                |mut c| async move { c.install(request).await },
            )
            .await?;
        let deadline = t + Duration::from_secs(2 * length / MIN_TRANSFER_BYTES_PER_SEC);
        let operation = self.finish_operation(operation, deadline).await?;
        Ok(operation.result.unwrap_or_default())
    }

    /// Polls a background operation until it leaves `running`, within `deadline`.
    async fn finish_operation(
        &mut self,
        mut operation: Operation,
        deadline: Duration,
    ) -> Result<Operation, LinkError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        while operation.state == OperationState::Running as i32 {
            if started.elapsed() > deadline {
                return Err(LinkError::Timeout {
                    serial: self.serial(),
                    call: "GetOperation",
                    seconds: deadline.as_secs(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
            let operation_id = operation.operation_id.clone();
            let t = self.timeout;
            operation = self
                .call("GetOperation", t, |mut c| async move {
                    c.get_operation(GetOperationRequest { operation_id }).await
                })
                .await?;
        }
        Ok(operation)
    }
}

/// How a kept result ended its update, if it did: installed, or a failure for good.
fn ended(result: &proto::v2::Result) -> Option<Delivery> {
    if result.code == ResultCode::Ok as i32 {
        Some(Delivery::Installed)
    } else if proto::is_final_failure(ResultCode::try_from(result.code).unwrap_or_default()) {
        Some(failed(Some(result.clone()), "failed"))
    } else {
        None
    }
}

/// `bundle`, named as an ECU speaking protocol version `spoken` names its update: by its own
/// targets entry (version 3, as the bundle comes), or by the targets' own correlation id
/// (version 2). The id is read from the signed targets unverified: the ECU verifies them, and
/// refuses an id they do not sign.
fn named_for(mut bundle: PutMetadataRequest, spoken: u32) -> PutMetadataRequest {
    if spoken < 3 {
        let targets: Option<serde_json::Value> =
            serde_json::from_slice(&bundle.director_targets).ok();
        bundle.correlation_id = targets
            .as_ref()
            .and_then(|t| t["signed"]["custom"]["correlationId"].as_str())
            .unwrap_or_default()
            .to_string();
    }
    bundle
}

/// Resolves, with the speed reached, once the transfer of `total` bytes (`sent` so far) runs
/// below `min` ([`SpeedMonitor`]); never while it keeps up. Once all `total` bytes are
/// handed to the link (HTTP/2 takes up to the ECU's window at once), the transfer ends only
/// with the ECU's answer, so the whole transfer's average is what is judged from then on.
async fn too_slow(sent: &AtomicU64, total: u64, min: MinSpeed) -> u64 {
    if min.bytes_per_sec == 0 {
        return std::future::pending().await;
    }
    let mut monitor = SpeedMonitor::new(min);
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let elapsed = started.elapsed();
        let bytes = sent.load(Ordering::Relaxed);
        let slow = if bytes >= total {
            monitor.finished(elapsed, total)
        } else {
            monitor.observe(elapsed, bytes)
        };
        if let Some(bytes_per_sec) = slow {
            return bytes_per_sec;
        }
    }
}

/// The ECU's refusal in a transfer state, if it refused.
fn refused_transfer(state: &TransferState) -> Option<Delivery> {
    state
        .result
        .as_ref()
        .filter(|r| r.code != ResultCode::Ok as i32)
        .map(|r| failed(Some(r.clone()), "transfer refused"))
}

/// The image from `from` to `length`, in chunks read as the stream is polled (never the
/// whole image in memory).
fn chunk_stream(
    file: tokio::fs::File,
    correlation_id: String,
    from: u64,
    length: u64,
    chunk_size: usize,
) -> impl futures_util::Stream<Item = Chunk> + Send + 'static {
    futures_util::stream::unfold((file, from), move |(mut file, offset)| {
        let correlation_id = correlation_id.clone();
        async move {
            if offset >= length {
                return None;
            }
            let want = chunk_size.min((length - offset) as usize);
            let mut data = vec![0u8; want];
            // A short or failed read ends the stream; the ECU reports the offset reached.
            file.read_exact(&mut data).await.ok()?;
            let chunk = Chunk {
                correlation_id,
                offset,
                data: data.into(),
            };
            Some((chunk, (file, offset + want as u64)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ecu_speaking_version_2_is_sent_the_targets_own_correlation_id() {
        let bundle = PutMetadataRequest {
            correlation_id: "asg-own".into(),
            director_targets: br#"{"signed":{"custom":{"correlationId":"asg-vehicle"}}}"#.to_vec(),
            ..Default::default()
        };
        assert_eq!(named_for(bundle.clone(), 3).correlation_id, "asg-own");
        assert_eq!(named_for(bundle, 2).correlation_id, "asg-vehicle");
    }
}
