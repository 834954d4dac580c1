//! The gRPC service: thin handlers over the [`Agent`], and `serve`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use proto::v2::secondary_server::{Secondary, SecondaryServer};
use proto::v2::{
    AcknowledgeReportRequest, ActivateRequest, BeginTransferRequest, CancelOperationRequest, Chunk,
    ConfirmRequest, EcuInfo, EcuPhase, EcuStatus, GetInfoRequest, GetInstallationResultRequest,
    GetOperationRequest, GetStatusRequest, GetTransferStateRequest, GetVersionReportRequest,
    InstallRequest, InstallationResult, Operation, OperationKind, OperationState,
    PutMetadataRequest, PutTimeRequest, RebootRequest, ResultCode, SignedVersionReport, SlotInfo,
    TransferState, VerificationMode,
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use service_runtime::tls::{ClientAuth, Fingerprint, Identity, PeerIdentity};
use uptane_core::error::AttackKind;

use crate::ab::SlotState;
use crate::agent::{Agent, Refusal, install_result};

/// Largest gRPC message accepted: the largest chunk plus framing.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone)]
struct OperationRecord {
    operation: Operation,
    cancel: Arc<AtomicBool>,
    /// Order of storing, to forget the oldest finished ones first.
    seq: u64,
}

/// Operations remembered at most: every finished one beyond is forgotten, oldest first (a
/// running one never is). The Primary asks about the operation it just started.
pub const MAX_OPERATIONS: usize = 64;

/// How long (in 20 ms polls) a `PutMetadata` that withdraws an update waits for its running
/// install to stop: 10 s.
const STOP_INSTALL_POLLS: u32 = 500;

/// How the link to the Primary is secured.
#[derive(Debug, Clone)]
pub enum Link {
    /// Mutual TLS: this ECU's identity, and the Primary's certificate pinned at provisioning.
    /// Every call but `GetInfo` (and health) must come from that certificate.
    Tls {
        /// This ECU's certificate and key.
        identity: Identity,
        /// The Primary's certificate.
        primary: Fingerprint,
    },
    /// Plaintext, every call from anyone: `--insecure`, for tests that inject faults only.
    Insecure,
}

/// The service state.
#[derive(Debug, Clone)]
pub struct Service {
    agent: Arc<Mutex<Agent>>,
    operations: Arc<Mutex<HashMap<String, OperationRecord>>>,
    primary: Option<Fingerprint>,
}

impl Service {
    /// A service over `agent`, answering state-changing calls only from `primary` (anyone
    /// when `None`: an insecure link).
    pub fn new(agent: Agent, primary: Option<Fingerprint>) -> Self {
        Self {
            agent: Arc::new(Mutex::new(agent)),
            operations: Arc::default(),
            primary,
        }
    }

    /// Refuses a call that does not come from the Primary: `UNAUTHENTICATED` without a
    /// client certificate, `PERMISSION_DENIED` with another one.
    fn require_primary<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(primary) = self.primary else {
            return Ok(());
        };
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.fingerprint);
        match peer {
            Some(f) if f == primary => Ok(()),
            Some(f) => {
                tracing::warn!(peer = %f, "call from a certificate that is not the Primary's");
                Err(Status::permission_denied(
                    "this certificate is not the Primary's",
                ))
            }
            None => {
                tracing::warn!("call without a client certificate");
                Err(Status::unauthenticated(
                    "this call is answered only to the Primary's certificate",
                ))
            }
        }
    }

    /// Runs `f` on the agent on a blocking thread: the agent reads, writes and syncs files,
    /// which must not stall the runtime that serves every other call.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Agent) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let agent = Arc::clone(&self.agent);
        tokio::task::spawn_blocking(move || {
            let mut agent = agent
                .lock()
                .map_err(|_| Status::internal("agent state poisoned"))?;
            Ok(f(&mut agent))
        })
        .await
        .map_err(|e| Status::internal(format!("agent task failed: {e}")))?
    }

    /// Records an operation that finished within its call and returns it.
    fn completed(
        &self,
        kind: OperationKind,
        correlation_id: &str,
        outcome: Result<ResultCode, Refusal>,
    ) -> Result<Response<Operation>, Status> {
        let done = finished(new_operation(kind, correlation_id)?, outcome);
        self.store(done.clone(), Arc::default())?;
        Ok(Response::new(done))
    }

    /// Cancels every running install and waits (bounded) for them to end; whether they did.
    async fn stop_installs(&self) -> Result<bool, Status> {
        let running = || -> Result<bool, Status> {
            let operations = self
                .operations
                .lock()
                .map_err(|_| Status::internal("operations poisoned"))?;
            let mut any = false;
            for record in operations.values().filter(|r| {
                r.operation.state == OperationState::Running as i32
                    && r.operation.kind == OperationKind::Install as i32
            }) {
                record
                    .cancel
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                any = true;
            }
            Ok(any)
        };
        // The job looks at its flag between blocks of a megabyte and while storage is held.
        for _ in 0..STOP_INSTALL_POLLS {
            if !running()? {
                return Ok(true);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(!running()?)
    }

    fn store(&self, operation: Operation, cancel: Arc<AtomicBool>) -> Result<(), Status> {
        self.store_unless_running(operation, cancel).map(|_| ())
    }

    /// Stores `operation`, unless an operation of its kind for its correlation id is still
    /// running: that one is returned instead, and nothing is stored (one flight at a time).
    fn store_unless_running(
        &self,
        operation: Operation,
        cancel: Arc<AtomicBool>,
    ) -> Result<Option<Operation>, Status> {
        let mut operations = self
            .operations
            .lock()
            .map_err(|_| Status::internal("operations poisoned"))?;
        if operation.state == OperationState::Running as i32
            && let Some(running) = operations.values().find(|r| {
                r.operation.state == OperationState::Running as i32
                    && r.operation.kind == operation.kind
                    && r.operation.correlation_id == operation.correlation_id
            })
        {
            return Ok(Some(running.operation.clone()));
        }
        let seq = operations.values().map(|r| r.seq + 1).max().unwrap_or(0);
        operations.insert(
            operation.operation_id.clone(),
            OperationRecord {
                operation,
                cancel,
                seq,
            },
        );
        while operations.len() > MAX_OPERATIONS {
            let oldest_finished = operations
                .iter()
                .filter(|(_, r)| r.operation.state != OperationState::Running as i32)
                .min_by_key(|(_, r)| r.seq)
                .map(|(id, _)| id.clone());
            match oldest_finished {
                Some(id) => operations.remove(&id),
                None => break,
            };
        }
        Ok(None)
    }
}

fn result(code: ResultCode, description: &str, correlation_id: &str) -> proto::v2::Result {
    proto::v2::Result {
        code: code as i32,
        attack: proto::v2::Attack::None as i32,
        description: description.to_string(),
        correlation_id: correlation_id.to_string(),
    }
}

/// The protocol's name for an attack.
pub fn attack_to_proto(attack: Option<AttackKind>) -> proto::v2::Attack {
    use proto::v2::Attack;
    match attack {
        None => Attack::None,
        Some(AttackKind::ArbitrarySoftware) => Attack::ArbitrarySoftware,
        Some(AttackKind::Rollback) => Attack::Rollback,
        Some(AttackKind::Freeze) => Attack::Freeze,
        Some(AttackKind::MixAndMatch) => Attack::MixAndMatch,
        Some(AttackKind::EndlessData) => Attack::EndlessData,
        Some(AttackKind::SlowRetrieval) => Attack::SlowRetrieval,
        Some(AttackKind::WrongHardware) => Attack::WrongHardware,
        Some(AttackKind::UnknownEcu) => Attack::UnknownEcu,
        Some(AttackKind::WrongVehicle) => Attack::WrongVehicle,
        Some(AttackKind::RepositoryMismatch) => Attack::RepositoryMismatch,
        Some(AttackKind::Malformed) => Attack::Malformed,
        Some(AttackKind::Replay) => Attack::Replay,
        Some(AttackKind::DropRequest) => Attack::DropRequest,
        Some(AttackKind::TimeTampering) => Attack::TimeTampering,
    }
}

fn slot_state(state: SlotState) -> proto::v2::SlotState {
    match state {
        SlotState::Empty => proto::v2::SlotState::Empty,
        SlotState::Pending => proto::v2::SlotState::Pending,
        SlotState::Good => proto::v2::SlotState::Good,
        SlotState::Bad => proto::v2::SlotState::Bad,
    }
}

fn refused(r: &Refusal, correlation_id: &str) -> proto::v2::Result {
    proto::v2::Result {
        code: r.code as i32,
        attack: attack_to_proto(r.attack) as i32,
        description: r.description.clone(),
        correlation_id: correlation_id.to_string(),
    }
}

fn io_status(e: std::io::Error) -> Status {
    Status::internal(format!("storage: {e}"))
}

/// Longest correlation id a call may name, in bytes (the Director's are 20; a UUID URN is 45).
pub const MAX_CORRELATION_ID_BYTES: usize = 128;

/// `id` if a call may name it: within [`MAX_CORRELATION_ID_BYTES`], no control characters.
/// A caller's ids are kept in `state.json` and quoted in refusals that reach the Director:
/// one of megabytes, or with a NUL, would spoil every save and every report after it.
fn correlation_id(id: String) -> Result<String, Status> {
    if id.len() > MAX_CORRELATION_ID_BYTES || id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "a correlation id is at most {MAX_CORRELATION_ID_BYTES} bytes of printable text"
        )));
    }
    Ok(id)
}

fn new_operation(kind: OperationKind, correlation_id: &str) -> Result<Operation, Status> {
    let id = crate::agent::random_id().map_err(io_status)?;
    Ok(Operation {
        operation_id: format!("op-{id}"),
        kind: kind as i32,
        correlation_id: correlation_id.to_string(),
        state: OperationState::Running as i32,
        result: None,
    })
}

fn finished(mut operation: Operation, outcome: Result<ResultCode, Refusal>) -> Operation {
    let correlation_id = operation.correlation_id.clone();
    match outcome {
        Ok(code) => {
            operation.state = OperationState::Done as i32;
            let description = install_result(code as i32).as_str();
            operation.result = Some(result(code, description, &correlation_id));
        }
        Err(r) => {
            operation.state = if r.code == ResultCode::OperationCancelled {
                OperationState::Cancelled
            } else {
                OperationState::Failed
            } as i32;
            operation.result = Some(refused(&r, &correlation_id));
        }
    }
    operation
}

#[tonic::async_trait]
impl Secondary for Service {
    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<EcuInfo>, Status> {
        self.call(info).await?.map(Response::new)
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<EcuStatus>, Status> {
        self.require_primary(&request)?;
        self.call(status).await?.map(Response::new)
    }

    async fn get_version_report(
        &self,
        request: Request<GetVersionReportRequest>,
    ) -> Result<Response<SignedVersionReport>, Status> {
        self.require_primary(&request)?;
        let nonce = request.into_inner().nonce;
        if nonce.is_empty() || nonce.len() > uptane_core::manifest::MAX_NONCE_BYTES {
            return Err(Status::invalid_argument(
                "the nonce must be 1 to 128 characters",
            ));
        }
        let signed_report = self
            .call(move |agent| agent.version_report(&nonce))
            .await?
            .map_err(io_status)?;
        Ok(Response::new(SignedVersionReport { signed_report }))
    }

    async fn acknowledge_report(
        &self,
        request: Request<AcknowledgeReportRequest>,
    ) -> Result<Response<proto::v2::Result>, Status> {
        self.require_primary(&request)?;
        let counter = request.into_inner().report_counter;
        self.call(move |agent| agent.acknowledge_report(counter))
            .await?
            .map_err(io_status)?;
        Ok(Response::new(result(ResultCode::Ok, "acknowledged", "")))
    }

    async fn put_time(
        &self,
        request: Request<PutTimeRequest>,
    ) -> Result<Response<proto::v2::Result>, Status> {
        self.require_primary(&request)?;
        let unix_seconds = request.into_inner().unix_seconds;
        Ok(Response::new(
            match self.call(move |agent| agent.put_time(unix_seconds)).await? {
                Ok(words) => result(ResultCode::Ok, words, ""),
                Err(r) => refused(&r, ""),
            },
        ))
    }

    async fn put_metadata(
        &self,
        request: Request<PutMetadataRequest>,
    ) -> Result<Response<proto::v2::Result>, Status> {
        self.require_primary(&request)?;
        let bundle = request.into_inner();
        let correlation_id = self::correlation_id(bundle.correlation_id.clone())?;
        let again = bundle.clone();
        let mut outcome = self.call(move |agent| agent.put_metadata(bundle)).await?;
        if matches!(outcome, Ok(ResultCode::Busy)) && self.stop_installs().await? {
            // The metadata withdraws an update whose install was running: stopped now, it
            // can be abandoned.
            outcome = self.call(move |agent| agent.put_metadata(again)).await?;
        }
        Ok(Response::new(match outcome {
            Ok(code) => result(code, "metadata verified", &correlation_id),
            Err(r) => refused(&r, &correlation_id),
        }))
    }

    async fn begin_transfer(
        &self,
        request: Request<BeginTransferRequest>,
    ) -> Result<Response<TransferState>, Status> {
        self.require_primary(&request)?;
        let r = request.into_inner();
        let id = correlation_id(r.correlation_id.clone())?;
        // The name must be the approved image's, which passed the target-name rules (G-4).
        uptane_core::ids::check_target_name(&r.filename)
            .map_err(|e| Status::invalid_argument(format!("filename: {e}")))?;
        let outcome = self
            .call(move |agent| agent.begin_transfer(&r.correlation_id, &r.filename, r.length))
            .await?;
        Ok(Response::new(transfer_state(&id, outcome)))
    }

    async fn get_transfer_state(
        &self,
        request: Request<GetTransferStateRequest>,
    ) -> Result<Response<TransferState>, Status> {
        self.require_primary(&request)?;
        let correlation_id = correlation_id(request.into_inner().correlation_id)?;
        let id = correlation_id.clone();
        let outcome = self.call(move |agent| agent.transfer_state(&id)).await?;
        Ok(Response::new(transfer_state(&correlation_id, outcome)))
    }

    async fn upload(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<TransferState>, Status> {
        self.require_primary(&request)?;
        let mut stream = request.into_inner();
        let mut correlation_id: Option<String> = None;
        let mut upload = None;
        // The simulated device's link knobs (a slow or stalled link).
        let device = self.call(|agent| agent.device().clone()).await?;
        let mut last = (0, false);
        let mut next = stream.next().await;
        while let Some(chunk) = next {
            let chunk = chunk?;
            if correlation_id.is_none() {
                let id = self::correlation_id(chunk.correlation_id.clone())?;
                let started = self
                    .call(move |agent| agent.start_upload(&id))
                    .await?
                    .map_err(|r| Status::failed_precondition(r.description))?;
                upload = Some(started);
                correlation_id = Some(chunk.correlation_id.clone());
            }
            let Some(this) = upload else {
                return Err(Status::internal("upload not started"));
            };
            if correlation_id.as_deref() != Some(chunk.correlation_id.as_str()) {
                return Err(Status::invalid_argument(
                    "one upload carries one correlation id",
                ));
            }
            if let Some(delay) = device.link_delay() {
                tokio::time::sleep(delay).await;
            }
            if device.link_stalls_at(chunk.offset) {
                // A stalled link: nothing more is read.
                std::future::pending::<()>().await;
            }
            let (id, offset) = (chunk.correlation_id.clone(), chunk.offset);
            // The next chunk is read and decoded while this one is hashed and written (the
            // agent still receives them one at a time, in order).
            let (outcome, following) = tokio::join!(
                self.call(move |agent| agent.receive(&this, &id, chunk.offset, chunk.data)),
                stream.next()
            );
            next = following;
            match outcome? {
                Ok(_) if device.loses_ack_at(offset) => {
                    // The chunk is written; the answer never reaches the Primary.
                    return Err(Status::unavailable("fault injection: the answer was lost"));
                }
                Ok(state) => last = state,
                Err(r) if r.code == ResultCode::DownloadFailed => {
                    return Err(Status::failed_precondition(r.description));
                }
                Err(r) => {
                    let id = correlation_id.clone().unwrap_or_default();
                    let length = self
                        .call(move |agent| agent.transfer_state(&id).map_or(0, |s| s.1))
                        .await?;
                    let id = correlation_id.unwrap_or_default();
                    return Ok(Response::new(TransferState {
                        correlation_id: id.clone(),
                        durable_offset: 0,
                        length,
                        complete: false,
                        result: Some(refused(&r, &id)),
                    }));
                }
            }
        }
        let (Some(correlation_id), Some(this)) = (correlation_id, upload) else {
            return Err(Status::invalid_argument("empty upload"));
        };
        let id = correlation_id.clone();
        let (durable, length) = self
            .call(move |agent| {
                let durable = agent.flush_upload(&this);
                (durable, agent.transfer_state(&id).map_or(0, |s| s.1))
            })
            .await?;
        let durable = durable.map_err(|r| Status::internal(r.description))?;
        Ok(Response::new(TransferState {
            correlation_id: correlation_id.clone(),
            durable_offset: durable.max(last.0),
            length,
            complete: last.1,
            result: Some(result(
                ResultCode::Ok,
                if last.1 {
                    "image received and verified"
                } else {
                    "partial"
                },
                &correlation_id,
            )),
        }))
    }

    async fn install(
        &self,
        request: Request<InstallRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.require_primary(&request)?;
        let correlation_id = correlation_id(request.into_inner().correlation_id)?;
        let operation = new_operation(OperationKind::Install, &correlation_id)?;
        let cancel = Arc::new(AtomicBool::new(false));
        // One writer per update: the Primary asking again while the install runs (its poll
        // deadline passed on slow storage) is answered with the running one.
        if let Some(running) = self.store_unless_running(operation.clone(), Arc::clone(&cancel))? {
            return Ok(Response::new(running));
        }
        let id = correlation_id.clone();
        let job = match self.call(move |agent| agent.prepare_install(&id)).await {
            Ok(Ok(job)) => job,
            Ok(Err(r)) => {
                let done = finished(operation, Err(r));
                self.store(done.clone(), cancel)?;
                return Ok(Response::new(done));
            }
            Err(status) => {
                let done = finished(
                    operation,
                    Err(Refusal {
                        code: ResultCode::InternalError,
                        attack: None,
                        description: status.message().to_string(),
                    }),
                );
                self.store(done, cancel)?;
                return Err(status);
            }
        };
        let service = self.clone();
        let op = operation.clone();
        tokio::spawn(async move {
            let flag = Arc::clone(&cancel);
            let job_in = job.clone();
            let run = tokio::task::spawn_blocking(move || job_in.run(&flag)).await;
            let outcome = match run {
                Ok(outcome) => outcome,
                Err(e) => Err(Refusal {
                    code: ResultCode::InternalError,
                    attack: None,
                    description: e.to_string(),
                }),
            };
            let recorded = service
                .call(move |agent| agent.finish_install(&job, outcome))
                .await
                .unwrap_or_else(|status| {
                    Err(Refusal {
                        code: ResultCode::InternalError,
                        attack: None,
                        description: status.message().to_string(),
                    })
                });
            let _ = service.store(finished(op, recorded), cancel);
        });
        Ok(Response::new(operation))
    }

    async fn activate(
        &self,
        request: Request<ActivateRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.require_primary(&request)?;
        let correlation_id = correlation_id(request.into_inner().correlation_id)?;
        let id = correlation_id.clone();
        let outcome = self.call(move |agent| agent.activate(&id)).await?;
        self.completed(OperationKind::Activate, &correlation_id, outcome)
    }

    async fn confirm(
        &self,
        request: Request<ConfirmRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.require_primary(&request)?;
        let correlation_id = correlation_id(request.into_inner().correlation_id)?;
        let id = correlation_id.clone();
        let outcome = self.call(move |agent| agent.confirm(&id)).await?;
        self.completed(OperationKind::Confirm, &correlation_id, outcome)
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.require_primary(&request)?;
        let id = request.into_inner().operation_id;
        let operations = self
            .operations
            .lock()
            .map_err(|_| Status::internal("operations poisoned"))?;
        operations
            .get(&id)
            .map(|r| Response::new(r.operation.clone()))
            .ok_or_else(|| Status::not_found(format!("no operation {id}")))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.require_primary(&request)?;
        let id = request.into_inner().operation_id;
        let operations = self
            .operations
            .lock()
            .map_err(|_| Status::internal("operations poisoned"))?;
        let record = operations
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("no operation {id}")))?;
        if record.operation.state == OperationState::Running as i32 {
            record
                .cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Response::new(record.operation.clone()))
    }

    async fn get_installation_result(
        &self,
        request: Request<GetInstallationResultRequest>,
    ) -> Result<Response<InstallationResult>, Status> {
        self.require_primary(&request)?;
        let correlation_id = correlation_id(request.into_inner().correlation_id)?;
        let id = correlation_id.clone();
        let record = self
            .call(move |agent| agent.result(&id).cloned())
            .await?
            .ok_or_else(|| Status::not_found(format!("no result for {correlation_id}")))?;
        Ok(Response::new(InstallationResult {
            correlation_id: correlation_id.clone(),
            result: Some(proto::v2::Result {
                code: record.code,
                attack: attack_to_proto(record.attack) as i32,
                description: record.description.clone(),
                correlation_id: correlation_id.clone(),
            }),
            filename: record.filename.clone(),
            updated_at: record.updated_at,
        }))
    }

    async fn reboot(
        &self,
        request: Request<RebootRequest>,
    ) -> Result<Response<proto::v2::Result>, Status> {
        self.require_primary(&request)?;
        self.call(Agent::reboot).await?.map_err(io_status)?;
        Ok(Response::new(result(ResultCode::Ok, "rebooted", "")))
    }
}

/// Serial, hardware id, key, mode and limits.
fn info(agent: &mut Agent) -> Result<EcuInfo, Status> {
    let identity = agent.identity();
    Ok(EcuInfo {
        ecu_serial: identity.serial.to_string(),
        hardware_id: identity.hardware_id.to_string(),
        public_key: serde_json::to_vec(agent.public_key().to_json())
            .map_err(|e| Status::internal(e.to_string()))?,
        verification: match identity.mode {
            crate::agent::Mode::Full => VerificationMode::Full,
            crate::agent::Mode::Partial => VerificationMode::Partial,
        } as i32,
        max_chunk_size: agent.settings().max_chunk_size,
        protocol_version: agent
            .settings()
            .faults
            .protocol_version
            .unwrap_or(proto::PROTOCOL_VERSION),
        boot_id: agent.boot_id().to_string(),
    })
}

/// Slots, boot state and the update in progress.
fn status(agent: &mut Agent) -> Result<EcuStatus, Status> {
    let env = agent.device().env().map_err(io_status)?;
    Ok(EcuStatus {
        boot_id: agent.boot_id().to_string(),
        boot_count: env.boot_count,
        active_slot: env.active.clone(),
        trial_slot: env.trial.clone().unwrap_or_default(),
        slots: env
            .slots
            .iter()
            .map(|(name, slot)| SlotInfo {
                name: name.clone(),
                state: slot_state(slot.state) as i32,
                filename: slot
                    .image
                    .as_ref()
                    .map(|i| i.filename.clone())
                    .unwrap_or_default(),
                length: slot.image.as_ref().map_or(0, |i| i.length),
                boot_attempts_left: if env.trial.as_deref() == Some(name) {
                    env.attempts_left
                } else {
                    0
                },
            })
            .collect(),
        phase: if env.trial.is_some() {
            EcuPhase::TrialBoot
        } else {
            EcuPhase::Idle
        } as i32,
        pending_correlation_id: agent
            .pending_correlation_id()
            .unwrap_or_default()
            .to_string(),
    })
}

fn transfer_state(
    correlation_id: &str,
    outcome: Result<(u64, u64, bool), Refusal>,
) -> TransferState {
    match outcome {
        Ok((durable_offset, length, complete)) => TransferState {
            correlation_id: correlation_id.to_string(),
            durable_offset,
            length,
            complete,
            result: Some(result(ResultCode::Ok, "ready", correlation_id)),
        },
        Err(r) => TransferState {
            correlation_id: correlation_id.to_string(),
            durable_offset: 0,
            length: 0,
            complete: false,
            result: Some(refused(&r, correlation_id)),
        },
    }
}

/// Longest a call may run.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Calls served at once on one connection.
pub const MAX_CALLS_PER_CONNECTION: usize = 16;

/// Connections to a Secondary: one Primary (and health checks) use a few; anything else on
/// the vehicle network fails the pinned handshake, which these bound in number and time.
pub const LINK_LIMITS: service_runtime::http::ServerLimits = service_runtime::http::ServerLimits {
    max_connections: 32,
    header_read_timeout: service_runtime::http::HEADER_READ_TIMEOUT,
    idle_timeout: std::time::Duration::from_secs(120),
    max_streams_per_connection: MAX_CALLS_PER_CONNECTION as u32,
    // Unused here: no call of the Secondary's streams a file's bytes from an allowance.
    response_memory_per_connection: service_runtime::conn_memory::DEFAULT_BYTES,
    // Unused here too: tonic serves the connections, and the Secondary's answers are small
    // (the large transfer runs the other way, held to the Primary's minimum speed).
    min_transfer_bytes_per_sec: 0,
};

/// Serves the Secondary service and the gRPC health service on an already bound listener
/// until `shutdown` completes, over `link`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    agent: Agent,
    link: Link,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<SecondaryServer<Service>>().await;
    let primary = match &link {
        Link::Tls { primary, .. } => Some(*primary),
        Link::Insecure => None,
    };
    let service = SecondaryServer::new(Service::new(agent, primary))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Windows large enough for a 1 MiB chunk in flight; the 64 KiB defaults cap a transfer
    // at a few tens of MB/s on loopback.
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .tcp_nodelay(true)
        // A connection that stops answering pings is closed, so a device that connects and
        // goes quiet cannot hold it.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(30)))
        // A call that has not finished in this time is cut (an upload that stalled);
        // the Primary's own deadlines are shorter.
        .timeout(CALL_TIMEOUT)
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        .max_concurrent_streams(Some(MAX_CALLS_PER_CONNECTION as u32))
        .add_service(health)
        .add_service(service);
    match link {
        Link::Insecure => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Link::Tls { identity, .. } => {
            let config = service_runtime::tls::server_config(&identity, &ClientAuth::Pinned)
                .map_err(|e| {
                    tracing::error!(error = %e, "TLS configuration");
                    e
                });
            let Ok(config) = config else {
                // Unreachable with an identity that loaded; nothing is served.
                return Ok(());
            };
            let incoming =
                service_runtime::tls::incoming_within(listener, Arc::new(config), LINK_LIMITS);
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}
