//! Target `secondary_grpc`: the Secondary's gRPC service fed arbitrary messages, in
//! arbitrary order, through the same tonic server stack a Primary reaches (framing, decoding,
//! message limits, handlers, the agent, the simulated A/B device), in process.
//!
//! Input: one byte (bit 0: full or partial verification), then records, each one call: the
//! tag's low 4 bits name the method (in [`METHODS`] order), bit 4 sends the body as it is
//! instead of as one gRPC frame (broken framing); the body is the protobuf message.
//! Consecutive framed `Upload` records are the messages of one stream. Each input starts
//! from a freshly provisioned ECU (a copy of a template directory).
//!
//! Oracle, after the calls: the ECU still answers (`GetInfo`, and a signed version report
//! for a new nonce); the slot it boots is a good one (invariant 2 of `ecu-side.md` (b)); and
//! the image its report names is the one in the slot it runs (invariant 3).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use proto::v2::secondary_server::SecondaryServer;
use proto::v2::{
    GetOperationRequest, Operation, OperationState, PutMetadataRequest, SignedVersionReport,
};
use secondary_ecu::ab::{AbDevice, SlotState};
use secondary_ecu::agent::{Agent, Identity, Mode, Provisioning, Settings};
use secondary_ecu::rpc::{MAX_MESSAGE_BYTES, Service};
use tower::ServiceExt;
use uptane_core::ids::{EcuSerial, HardwareId, Vin};
use uptane_core::testing::now;

use crate::fixtures::{
    CHUNK, CORRELATION_ID, HARDWARE_ID, SERIAL, VIN, director_repo, image_repo, keys,
};
use crate::records;

/// The service's methods, by the low 4 bits of a record's tag.
pub const METHODS: [&str; 16] = [
    "GetInfo",
    "GetStatus",
    "GetVersionReport",
    "AcknowledgeReport",
    "PutTime",
    "PutMetadata",
    "BeginTransfer",
    "GetTransferState",
    "Upload",
    "Install",
    "Activate",
    "Confirm",
    "GetOperation",
    "CancelOperation",
    "GetInstallationResult",
    "Reboot",
];

/// Tag bit: the body is sent as it is, not framed.
pub const UNFRAMED: u8 = 16;

/// The index of `method` in [`METHODS`].
pub fn method(name: &str) -> u8 {
    METHODS
        .iter()
        .position(|m| *m == name)
        .expect("a method of the service") as u8
}

/// The Director and Image repository metadata assigning the fixture image to this ECU.
pub fn bundle() -> PutMetadataRequest {
    let director = director_repo();
    let images = image_repo();
    PutMetadataRequest {
        correlation_id: CORRELATION_ID.into(),
        director_roots: vec![],
        director_timestamp: director.timestamp.clone(),
        director_snapshot: director.snapshot.clone(),
        director_targets: director.targets_files["targets"].clone(),
        image_roots: images.roots[1..].to_vec(),
        image_timestamp: images.timestamp.clone(),
        image_snapshot: images.snapshot.clone(),
        image_targets: images.targets_files["targets"].clone(),
        image_delegations: images
            .targets_files
            .iter()
            .filter(|(role, _)| role.as_str() != "targets")
            .map(|(role, bytes)| (role.clone(), bytes.clone()))
            .collect(),
    }
}

/// The Director's next metadata, which assign this ECU nothing: the update withdrawn (an
/// operator's cancel), with the Image repository's as in [`bundle`].
pub fn withdrawal() -> PutMetadataRequest {
    let mut director = director_repo().clone();
    director.targets = uptane_core::sign::TargetsBuilder::from_targets(
        &director.targets,
        director.targets.common.version,
        director.expires,
    )
    .remove_target(crate::fixtures::IMAGE_NAME)
    .build();
    director.publish();
    PutMetadataRequest {
        director_timestamp: director.timestamp.clone(),
        director_snapshot: director.snapshot.clone(),
        director_targets: director.targets_files["targets"].clone(),
        ..bundle()
    }
}

fn template(mode: Mode) -> &'static Path {
    static FULL: OnceLock<tempfile::TempDir> = OnceLock::new();
    static PARTIAL: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cell = if mode == Mode::Full { &FULL } else { &PARTIAL };
    cell.get_or_init(|| {
        let dir = scratch_dir();
        let identity = Identity {
            vin: Vin::new(VIN).expect("fixture VIN"),
            serial: EcuSerial::new(SERIAL).expect("fixture serial"),
            hardware_id: HardwareId::new(HARDWARE_ID).expect("fixture hardware id"),
            mode,
            primary_fingerprint: None,
        };
        let key = keys::ecu();
        let provisioning = Provisioning {
            identity: &identity,
            key: &key,
            director_root: director_repo().initial_root(),
            image_root: Some(image_repo().initial_root()),
            image_name: "factory.bin",
            image: b"factory image",
            single_bank: false,
        };
        secondary_ecu::agent::init(&dir.path().join("ecu"), &provisioning, now())
            .expect("the template ECU provisions");
        dir
    })
    .path()
}

/// A directory for one input's files: in memory when the machine has `/dev/shm`.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("a temporary directory")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("scratch directory");
    for entry in std::fs::read_dir(from).expect("template readable") {
        let entry = entry.expect("template entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            copy_file(&entry.path(), &target);
        }
    }
}

/// `std::fs::copy`, again when a signal interrupts it: libFuzzer's timeout timer signals the
/// process every second, and a copy it interrupts fails with `EINTR` (a crash of this harness,
/// not of the code under test, found by the fourth long run; docs/FUZZING.md).
fn copy_file(from: &Path, to: &Path) {
    for _ in 0..100 {
        match std::fs::copy(from, to) {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("template file copies: {e}"),
        }
    }
    panic!("copying a template file was interrupted 100 times in a row");
}

/// The settings of the fuzzed ECU: small chunks, each made durable.
pub fn settings() -> Settings {
    Settings {
        max_chunk_size: CHUNK as u32,
        durable_interval: CHUNK as u64,
        ..Settings::default()
    }
}

type Server = SecondaryServer<Service>;

fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// One call: the grpc-status (`None` when the answer had none) and the response body.
async fn call(server: &Server, method: &str, body: Vec<u8>) -> (Option<String>, Bytes) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://secondary.invalid/uptane.secondary.v2.Secondary/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(body)))
        .expect("a well-formed request");
    let Ok(response) = server.clone().oneshot(request).await;
    let header_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Ok(collected) = response.into_body().collect().await else {
        return (header_status, Bytes::new());
    };
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (header_status.or(trailer_status), collected.to_bytes())
}

/// The first message of a response body.
fn first_message<M: Message + Default>(body: &[u8]) -> Option<M> {
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    M::decode(body.get(5..5 + len)?).ok()
}

/// Waits (bounded) for an operation a call started to finish, so that the next call sees
/// its outcome rather than racing it.
async fn settle(server: &Server, body: &[u8]) {
    let Some(operation) = first_message::<Operation>(body) else {
        return;
    };
    for _ in 0..2000 {
        if operation.state != OperationState::Running as i32 {
            return;
        }
        let request = GetOperationRequest {
            operation_id: operation.operation_id.clone(),
        };
        let (_, answer) = call(server, "GetOperation", frame(&request.encode_to_vec())).await;
        match first_message::<Operation>(&answer) {
            Some(now) if now.state != OperationState::Running as i32 => return,
            Some(_) => tokio::time::sleep(Duration::from_micros(200)).await,
            None => return,
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = if mode & 1 == 0 {
        Mode::Full
    } else {
        Mode::Partial
    };
    let scratch = scratch_dir();
    let dir = scratch.path().join("ecu");
    copy_dir(&template(mode).join("ecu"), &dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(calls(&dir, rest));
    drop(runtime);
    let env = AbDevice::new(&dir)
        .env()
        .expect("the boot environment reads");
    let active = env.slots.get(&env.active).expect("the active slot exists");
    assert_eq!(
        active.state,
        SlotState::Good,
        "the ECU boots a slot that is not good: {env:?}"
    );
}

async fn calls(dir: &Path, data: &[u8]) {
    let agent = Agent::open(dir, settings()).expect("the ECU opens");
    let server = SecondaryServer::new(Service::new(agent, None))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let records = records::parse(data);
    // Operation ids are random: a GetOperation or CancelOperation naming none asks about the
    // operation the last call started, so that the fuzzer reaches them.
    let mut last_operation = String::new();
    let mut i = 0;
    while i < records.len() {
        let (tag, body) = records[i];
        let name = METHODS[usize::from(tag & 15)];
        i += 1;
        let framed = tag & UNFRAMED == 0;
        let body = match GetOperationRequest::decode(body) {
            Ok(r)
                if framed
                    && r.operation_id.is_empty()
                    && matches!(name, "GetOperation" | "CancelOperation") =>
            {
                GetOperationRequest {
                    operation_id: last_operation.clone(),
                }
                .encode_to_vec()
            }
            _ => body.to_vec(),
        };
        let mut request = if framed { frame(&body) } else { body };
        if name == "Upload" && framed {
            while let Some((next_tag, next)) = records.get(i) {
                if next_tag & (15 | UNFRAMED) != method("Upload") {
                    break;
                }
                request.extend_from_slice(&frame(next));
                i += 1;
            }
        }
        let (_, answer) = call(&server, name, request).await;
        if matches!(name, "Install" | "Activate" | "Confirm") {
            if let Some(operation) = first_message::<Operation>(&answer) {
                last_operation = operation.operation_id;
            }
            settle(&server, &answer).await;
        }
    }
    // The ECU still serves the next valid call, and what it reports is what it runs.
    let (status, _) = call(&server, "GetInfo", frame(&[])).await;
    assert_eq!(
        status.as_deref(),
        Some("0"),
        "GetInfo failed after the calls"
    );
    let nonce = proto::v2::GetVersionReportRequest {
        nonce: "fuzz-final-nonce".into(),
    };
    let (status, answer) = call(&server, "GetVersionReport", frame(&nonce.encode_to_vec())).await;
    assert_eq!(
        status.as_deref(),
        Some("0"),
        "no version report after the calls"
    );
    let report = first_message::<SignedVersionReport>(&answer).expect("a version report");
    let report: serde_json::Value =
        serde_json::from_slice(&report.signed_report).expect("the report is JSON");
    // The bytes in the slot the device boots are the image the report names.
    let device = AbDevice::new(dir);
    let env = device.env().expect("the boot environment reads");
    let slot = std::fs::read(device.slot_path(&env.active)).expect("the active slot reads");
    let reported = &report["signed"]["installed_image"];
    assert_eq!(
        reported["hashes"]["sha256"].as_str(),
        Some(uptane_core::hash::sha256_hex(&slot).as_str()),
        "the report names another image than the one in the slot the ECU boots: {reported}"
    );
    assert_eq!(reported["length"].as_u64(), Some(slot.len() as u64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v2::ResultCode;

    /// The withdrawal seed reaches what it is for: a pending update abandoned.
    #[test]
    fn the_withdrawal_abandons_a_pending_update() {
        let scratch = scratch_dir();
        let dir = scratch.path().join("ecu");
        copy_dir(&template(Mode::Full).join("ecu"), &dir);
        let mut agent = Agent::open(&dir, settings()).expect("the ECU opens");
        assert_eq!(agent.put_metadata(bundle()), Ok(ResultCode::Ok));
        assert_eq!(agent.put_metadata(withdrawal()), Ok(ResultCode::NoUpdate));
        let kept = agent.result(CORRELATION_ID).expect("a result kept");
        assert_eq!(kept.code, ResultCode::OperationCancelled as i32);
    }
}
