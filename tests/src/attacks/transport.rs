//! Attacks on the transport and on the vehicle network: a rogue device calling a Secondary,
//! a man in the middle without a certificate the vehicle trusts, and a sniffer on each link.
//! Each is run against the running fleet; each ends with the vehicle updating normally.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proto::v2::secondary_client::SecondaryClient;
use tonic::transport::Channel;

use super::{OTHER_VIN, Scenario, VIN, World, blocking, https, scenario};
use crate::mitm::Mitm;
use crate::pg_mitm::{PgAnswer, PgMitm, PgSeen};
use crate::proxy::LinkProxy;

/// The attacks of this module, in the order run.
pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        scenario(
            "a rogue device on the vehicle network sets a Secondary's clock",
            "the vehicle network (no key of the vehicle's)",
            "refused (UNAUTHENTICATED without a certificate, PERMISSION_DENIED with its own); nothing changed",
            |w| {
                let refused = rogue(w, &[Call::PutTime])?;
                Ok(format!("{refused}; {}", w.recover()?))
            },
        ),
        scenario(
            "a rogue device on the vehicle network erases a Secondary's evidence",
            "the vehicle network (no key of the vehicle's)",
            "refused; the detected attack still reaches the Director",
            erase_evidence,
        ),
        scenario(
            "a rogue device on the vehicle network suppresses an update",
            "the vehicle network (no key of the vehicle's)",
            "refused; nothing changed; the update installs",
            |w| {
                w.release(&[1]);
                let refused = rogue(
                    w,
                    &[
                        Call::Status,
                        Call::EmptyMetadata,
                        Call::Cancel,
                        Call::Reboot,
                        Call::Install,
                    ],
                )?;
                Ok(format!("{refused}; {}", w.recover()?))
            },
        ),
        scenario(
            "a rogue device on the vehicle network resets a transfer",
            "the vehicle network, and the correlation id of the pending assignment",
            "refused; the transfer state is unchanged; the update installs",
            |w| {
                let released = w.release(&[1]);
                let correlation = w
                    .fleet
                    .assignments(VIN)
                    .iter()
                    .find(|e| e["filename"] == released[0].1.as_str())
                    .and_then(|e| e["correlation_id"].as_str().map(String::from))
                    .ok_or("no assignment for the release")?;
                let refused = rogue(
                    w,
                    &[
                        Call::BeginTransfer(correlation.clone()),
                        Call::Upload(correlation),
                    ],
                )?;
                Ok(format!("{refused}; {}", w.recover()?))
            },
        ),
        scenario(
            "a man in the middle without a certificate the vehicle trusts",
            "the network, with a certificate of its own CA",
            "refused at the TLS handshake: nothing reaches it, nothing installed",
            untrusted_mitm,
        ),
        scenario(
            "a man in the middle on a Director replica's database link strips TLS",
            "the network between a Director and PostgreSQL",
            "the replica does not start: \"server does not support TLS\"; it sent nothing in plaintext",
            |w| database_link(w, PgAnswer::StripTls),
        ),
        scenario(
            "a man in the middle on a Director replica's database link presents its own certificate",
            "the network between a Director and PostgreSQL, with a certificate of its own CA",
            "the replica does not start: the certificate is refused (UnknownIssuer) before any query",
            |w| {
                let stranger = service_runtime::pki::Ca::generate("an attacker's CA")
                    .and_then(|ca| ca.issue_server(&["127.0.0.1"]))
                    .map_err(|e| e.to_string())?;
                let tls = PgMitm::tls(&stranger, &service_runtime::tls::ClientAuth::None)?;
                database_link(w, PgAnswer::Tls(Box::new(tls)))
            },
        ),
        scenario(
            "a vehicle credential copied off a certificate-bound vehicle",
            "the vehicle's credential file (not its TLS key), and the network",
            "refused without the bound certificate (401) and with another one (403); nothing renewed; the vehicle updates normally",
            stolen_credential,
        ),
        scenario(
            "a sniffer on the Director link",
            "a copy of every byte between the vehicle (and an operator) and the Director",
            "no credential, token or metadata in clear",
            sniff_director,
        ),
        scenario(
            "a sniffer on the Image repository link",
            "a copy of every byte between the vehicle (and a publisher) and the Image repository",
            "no upload token, metadata or image bytes in clear",
            sniff_images,
        ),
        scenario(
            "a sniffer on a Primary-Secondary link",
            "a copy of every byte between the Primary and a Secondary",
            "no metadata, report or image bytes in clear",
            sniff_secondary,
        ),
    ]
}

/// A call a rogue device makes to a Secondary.
#[derive(Debug, Clone)]
enum Call {
    PutTime,
    Status,
    VersionReport,
    Acknowledge,
    EmptyMetadata,
    BeginTransfer(String),
    Upload(String),
    Install,
    Cancel,
    Reboot,
}

impl Call {
    async fn make(&self, mut client: SecondaryClient<Channel>) -> tonic::Code {
        use proto::v2::{
            AcknowledgeReportRequest, BeginTransferRequest, CancelOperationRequest, Chunk,
            GetStatusRequest, GetVersionReportRequest, InstallRequest, PutMetadataRequest,
            PutTimeRequest, RebootRequest,
        };
        match self {
            Call::PutTime => code(
                client
                    .put_time(PutTimeRequest {
                        unix_seconds: 4_102_444_800,
                    })
                    .await,
            ),
            Call::Status => code(client.get_status(GetStatusRequest {}).await),
            Call::VersionReport => code(
                client
                    .get_version_report(GetVersionReportRequest {
                        nonce: "rogue".into(),
                    })
                    .await,
            ),
            Call::Acknowledge => code(
                client
                    .acknowledge_report(AcknowledgeReportRequest {
                        report_counter: u64::MAX,
                    })
                    .await,
            ),
            Call::EmptyMetadata => code(client.put_metadata(PutMetadataRequest::default()).await),
            Call::BeginTransfer(id) => code(
                client
                    .begin_transfer(BeginTransferRequest {
                        correlation_id: id.clone(),
                        filename: "rogue.bin".into(),
                        length: 1,
                    })
                    .await,
            ),
            Call::Upload(id) => code(
                client
                    .upload(futures_util::stream::iter(vec![Chunk {
                        correlation_id: id.clone(),
                        offset: 0,
                        data: vec![0u8; 1024].into(),
                    }]))
                    .await,
            ),
            Call::Install => code(
                client
                    .install(InstallRequest {
                        correlation_id: "rogue".into(),
                    })
                    .await,
            ),
            Call::Cancel => code(
                client
                    .cancel_operation(CancelOperationRequest {
                        operation_id: "op-1".into(),
                    })
                    .await,
            ),
            Call::Reboot => code(client.reboot(RebootRequest {}).await),
        }
    }
}

/// The status code of a call's answer.
fn code<T>(answer: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    match answer {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// Every file under `dir`, with its contents.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.insert(path, bytes);
            }
        }
    }
    out
}

/// A client of the Secondary at `addr` that pins its certificate (the rogue learnt it from
/// the handshake) and presents `identity`, if any.
fn rogue_client(
    addr: &str,
    secondary: service_runtime::tls::Fingerprint,
    identity: Option<&service_runtime::tls::Identity>,
) -> Result<SecondaryClient<Channel>, String> {
    let tls = service_runtime::tls::client_config(
        &service_runtime::tls::ServerTrust::Pinned(secondary),
        identity,
    )
    .map_err(|e| e.to_string())?;
    let channel = tonic::transport::Endpoint::from_static("http://secondary.invalid")
        .connect_with_connector_lazy(service_runtime::tls::connector(
            addr.to_string(),
            service_runtime::pki::DEVICE_NAME,
            std::sync::Arc::new(tls),
        ));
    Ok(SecondaryClient::new(channel))
}

/// A rogue device makes `calls` to the first Secondary, straight to its port: without a
/// certificate, then with a certificate of its own. Each must be refused with
/// `UNAUTHENTICATED` and `PERMISSION_DENIED`, and no file of the ECU may change.
fn rogue(w: &World, calls: &[Call]) -> Result<String, String> {
    let secondary = &w.car.secondaries[0];
    let addr = secondary.real_addr();
    let fingerprint = w.car.link_keys(0).secondary.fingerprint();
    let own = service_runtime::pki::self_signed("rogue", &[service_runtime::pki::DEVICE_NAME])
        .and_then(|c| c.identity())
        .map_err(|e| e.to_string())?;
    let before = files(&secondary.dir);
    blocking(async {
        for call in calls {
            let anonymous = call.make(rogue_client(&addr, fingerprint, None)?).await;
            let with_own = call
                .make(rogue_client(&addr, fingerprint, Some(&own))?)
                .await;
            if anonymous != tonic::Code::Unauthenticated
                || with_own != tonic::Code::PermissionDenied
            {
                return Err(format!(
                    "{call:?}: {anonymous:?} without a certificate, {with_own:?} with its own"
                ));
            }
        }
        Ok::<_, String>(())
    })?;
    if files(&secondary.dir) != before {
        return Err("a refused call changed the Secondary's state".into());
    }
    Ok(format!(
        "{} calls refused (UNAUTHENTICATED, PERMISSION_DENIED); state unchanged",
        calls.len() * 2
    ))
}

/// The Secondary detects an attack (an image for another hardware id, fed over its stolen
/// link keys with the Director's stolen keys); a rogue device then tries to take the report
/// and acknowledge it away. The evidence must still reach the Director.
fn erase_evidence(w: &mut World) -> Result<String, String> {
    let since = w.last_event();
    let serial = w.car.secondaries[0].serial.clone();
    let radio_image = super::image(4343, 2, 10_000);
    let set = w.forge_director(
        &w.director_keys(),
        &[("radio-evil-2.bin", &radio_image, &serial, "hw-radio", 60)],
    );
    let bundle = proto::v2::PutMetadataRequest {
        correlation_id: "attacker".into(),
        director_timestamp: set.timestamp.clone(),
        director_snapshot: set.snapshot.1.clone(),
        director_targets: set.targets.1.clone(),
        image_timestamp: w.latest(&w.images, "/timestamp.json"),
        image_snapshot: w.latest(&w.images, ".snapshot.json"),
        image_targets: w.latest(&w.images, ".targets.json"),
        ..Default::default()
    };
    let answer = super::feed_secondary(
        &w.car.secondaries[0].real_addr(),
        &w.car.link_keys(0),
        bundle,
    )?;
    if answer["code"] == 0 {
        return Err("the Secondary accepted an image for another hardware id".into());
    }
    let refused = rogue(w, &[Call::VersionReport, Call::Acknowledge])?;
    w.cycle();
    let reported = w.security_events_since(since);
    if !reported
        .iter()
        .any(|k| k == "attack_reported:wrong_hardware")
    {
        return Err(format!(
            "the Secondary's evidence did not reach the Director: {reported:?}"
        ));
    }
    Ok(format!(
        "{refused}; the evidence reached the Director (attack_reported:wrong_hardware); {}",
        w.recover()?
    ))
}

fn untrusted_mitm(w: &mut World) -> Result<String, String> {
    let stranger = service_runtime::pki::Ca::generate("an attacker's CA")
        .and_then(|ca| ca.issue_server(&["127.0.0.1", "localhost"]))
        .and_then(|c| c.identity())
        .map_err(|e| e.to_string())?;
    let mitm = Mitm::start(&w.fleet.director_url, &stranger, &w.fleet.ca_cert)
        .map_err(|e| e.to_string())?;
    let before = w.installed();
    w.release(&[0, 1, 2]);
    let original = w.car_director_url();
    w.car.set_director_url(&mitm.url);
    let (code, summary) = w.cycle();
    w.car.set_director_url(&original);
    // Exit 4: the Director could not be reached (docs/CLI.md).
    if code != 4 || !summary.contains("UnknownIssuer") {
        return Err(format!(
            "expected an unreachable Director (certificate refused); cycle {code}: {summary}"
        ));
    }
    if !mitm.seen("").is_empty() {
        return Err("a request reached the man in the middle".into());
    }
    if w.installed() != before {
        return Err("something was installed".into());
    }
    Ok(format!(
        "cycle {code}: certificate refused; {}",
        w.recover()?
    ))
}

/// Starts a Director replica whose database (PostgreSQL, trusting the fleet's CA) is reached
/// through a man in the middle answering as `answer` says: the replica must refuse to start,
/// having sent the attacker nothing but PostgreSQL's TLS request.
fn database_link(w: &mut World, answer: PgAnswer) -> Result<String, String> {
    let expected = match answer {
        PgAnswer::StripTls => "server does not support TLS",
        PgAnswer::Tls(_) => "invalid peer certificate: UnknownIssuer",
    };
    let mitm = PgMitm::start(answer).map_err(|e| e.to_string())?;
    // The replica's directory: the Director's keys and pinned root, and a database file
    // naming PostgreSQL behind the man in the middle.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ours = w.fleet.path("director");
    for entry in std::fs::read_dir(&ours).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        if entry.path().is_file() && !name.to_string_lossy().starts_with("director.db") {
            std::fs::copy(entry.path(), dir.path().join(&name)).map_err(|e| e.to_string())?;
        }
    }
    std::fs::write(
        director::db::Database::file_in(dir.path()),
        format!(
            "postgres://director:s3cret@127.0.0.1:{}/director?sslrootcert={}",
            mitm.port,
            w.fleet.ca_cert.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let template = w.fleet.director_replica_command();
    let mut replica = std::process::Command::new(template.get_program());
    let mut args = template
        .get_args()
        .map(std::ffi::OsStr::to_owned)
        .collect::<Vec<_>>();
    let at = args.iter().position(|a| a == "--dir").ok_or("no --dir")? + 1;
    args[at] = dir.path().as_os_str().to_owned();
    replica.args(args);
    for (key, value) in template.get_envs() {
        if let Some(value) = value {
            replica.env(key, value);
        }
    }
    let (status, _, stderr) = crate::run(&mut replica, std::time::Duration::from_secs(60));
    if status.success() || !stderr.contains(expected) {
        return Err(format!(
            "expected the replica to stop on \"{expected}\"; {status}: {stderr}"
        ));
    }
    let seen = mitm.seen(std::time::Duration::from_secs(30))?;
    match seen {
        PgSeen::ClosedAfterRefusal | PgSeen::HandshakeFailed(_) => {}
        other => return Err(format!("the replica went on: {other:?}")),
    }
    if stderr.contains("s3cret") {
        return Err("the replica printed the database password".into());
    }
    Ok(format!(
        "replica stopped: {expected}; the attacker saw {seen:?}; {}",
        w.recover()?
    ))
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks what a sniffer captured: enough traffic to have seen the secrets, and none of them.
fn none_in_clear(captured: &[u8], secrets: &[(&str, &[u8])]) -> Result<String, String> {
    if captured.len() < 4096 {
        return Err(format!("the sniffer saw only {} bytes", captured.len()));
    }
    for (what, secret) in secrets {
        if contains(captured, secret) {
            return Err(format!("the sniffer saw {what} in clear"));
        }
    }
    Ok(format!(
        "{} bytes captured; none of {} in clear",
        captured.len(),
        secrets
            .iter()
            .map(|(w, _)| *w)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn address_of(url: &str) -> String {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

fn sniff_director(w: &mut World) -> Result<String, String> {
    let tap = LinkProxy::start(&address_of(&w.fleet.director_url)).map_err(|e| e.to_string())?;
    tap.tap();
    let proxied = format!("https://{}", tap.addr());
    let original = w.car_director_url();
    w.car.set_director_url(&proxied);
    w.release(&[1]);
    let cycled = w.settle();
    // An operator's command over the same link.
    let listed = w.fleet.operator_at(&proxied, &["vehicle", "list"]);
    w.car.set_director_url(&original);
    cycled?;
    listed?;
    let credential =
        std::fs::read(w.car.primary_dir.join("credential")).map_err(|e| e.to_string())?;
    let token = w.fleet.token.clone();
    let verdict = none_in_clear(
        &tap.captured(),
        &[
            ("the vehicle credential", &credential),
            ("the operator token", token.as_bytes()),
            ("Director metadata", br#""_type":"targets""#),
            ("the VIN", VIN.as_bytes()),
        ],
    )?;
    tap.untap();
    Ok(format!("{verdict}; {}", w.recover()?))
}

fn sniff_images(w: &mut World) -> Result<String, String> {
    let tap = LinkProxy::start(&address_of(&w.fleet.image_url)).map_err(|e| e.to_string())?;
    tap.tap();
    let proxied = format!("https://{}", tap.addr());
    let original = w.car_image_url();
    let real = std::mem::replace(&mut w.fleet.image_url, proxied.clone());
    w.car.set_image_url(&proxied);
    // A release published through the link (upload token, image bytes) and installed
    // through it (metadata, image bytes).
    let released = w.release(&[1]);
    let cycled = w.settle();
    w.fleet.image_url = real;
    w.car.set_image_url(&original);
    cycled?;
    let token = w.fleet.upload_token().ok_or("no upload token")?;
    let image = &released[0].2;
    let verdict = none_in_clear(
        &tap.captured(),
        &[
            ("the upload token", token.as_bytes()),
            ("Image repository metadata", br#""_type":"timestamp""#),
            ("the image", &image[..64]),
        ],
    )?;
    Ok(format!("{verdict}; {}", w.recover()?))
}

fn sniff_secondary(w: &mut World) -> Result<String, String> {
    let link = &w.car.secondaries[0].link;
    link.tap();
    let released = w.release(&[1]);
    let settled = w.settle();
    let captured = w.car.secondaries[0].link.captured();
    w.car.secondaries[0].link.untap();
    settled?;
    let serial = w.car.secondaries[0].serial.clone();
    let verdict = none_in_clear(
        &captured,
        &[
            ("Director metadata", br#""_type":"targets""#),
            ("the ECU serial (in its report)", serial.as_bytes()),
            ("the image", &released[0].2[..64]),
        ],
    )?;
    Ok(format!("{verdict}; {}", w.recover()?))
}

/// The other vehicle, certificate-bound for this row, has its credential copied: alone, or
/// with the attacker's own client certificate, it reads nothing and renews nothing, and each
/// refusal is a security event; the vehicle itself, showing its certificate, updates.
fn stolen_credential(w: &mut World) -> Result<String, String> {
    w.other.reissue_credential(&w.fleet, true)?;
    let outcome = stolen_credential_refused(w);
    // The rows after this one use the other vehicle's credential alone.
    w.other.use_credential_only(&w.fleet)?;
    outcome
}

fn stolen_credential_refused(w: &mut World) -> Result<String, String> {
    let credential = std::fs::read_to_string(w.other.primary_dir.join("credential"))
        .map_err(|e| e.to_string())?;
    let credential = credential.trim().to_string();
    // Events are listed newest first: what is new has an id above the newest one now.
    let newest_before = w
        .fleet
        .events(OTHER_VIN, true)
        .first()
        .and_then(|e| e["id"].as_i64())
        .unwrap_or(0);
    let director = w.fleet.director_url.clone();
    let own = service_runtime::pki::self_signed("thief", &["thief.invalid"])
        .and_then(|c| c.identity())
        .map_err(|e| e.to_string())?;
    let with_own = service_runtime::http::ClientTls::new(Some(&w.fleet.ca_cert), Some(own), false)
        .and_then(|tls| tls.reqwest())
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| e.to_string())?;
    let alone = https(&w.fleet.ca_cert)?;
    let timestamp = format!("{director}/vehicles/{OTHER_VIN}/metadata/timestamp.json");
    let renew = format!("{director}/vehicles/{OTHER_VIN}/credential");
    let statuses = blocking(async {
        let mut statuses = Vec::new();
        for (client, post) in [
            (&alone, false),
            (&alone, true),
            (&with_own, false),
            (&with_own, true),
        ] {
            let request = if post {
                client.post(&renew)
            } else {
                client.get(&timestamp)
            };
            let response = request
                .bearer_auth(&credential)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            statuses.push(response.status().as_u16());
        }
        Ok::<_, String>(statuses)
    })?;
    if statuses != [401, 401, 403, 403] {
        return Err(format!(
            "expected 401, 401 (alone) and 403, 403 (another certificate) for metadata and \
             renewal, got {statuses:?}"
        ));
    }
    let events = w.fleet.events(OTHER_VIN, true);
    let new: Vec<_> = events
        .iter()
        .filter(|e| e["id"].as_i64().unwrap_or(0) > newest_before)
        .filter(|e| e["kind"] == "vehicle_auth_refused")
        .collect();
    // One event per kind of refusal (no certificate; another certificate): the repeats
    // within the refusal window are counted into its summary, not recorded one by one.
    let kinds: std::collections::BTreeSet<&str> =
        new.iter().filter_map(|e| e["detail"].as_str()).collect();
    if kinds.len() < 2 {
        return Err(format!(
            "{} kinds of refusal recorded, expected 2: {new:?}",
            kinds.len()
        ));
    }
    let (code, summary) = w.other.once();
    if code != 0 {
        return Err(format!("the vehicle itself was refused: {summary}"));
    }
    Ok(format!(
        "metadata and renewal refused ({statuses:?}); {} security events; the vehicle itself updated normally",
        new.len()
    ))
}
