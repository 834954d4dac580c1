//! The seed corpora: for each target, inputs that reach its deep paths from the start (a
//! valid document for each role, a refresh answered with real files, a whole update of the
//! Secondary, a manifest the Director accepts, an image served whole and resumed). The
//! `seeds` binary writes them to `fuzz/corpus/<target>/seed-*`; the corpus test replays them.

use prost::Message;
use uptane_core::hash::standard_hashes;
use uptane_core::manifest::{
    ECU_REPORT_TYPE, EcuVersionReport, InstallResult, InstalledImage, LastInstall,
    VEHICLE_MANIFEST_TYPE,
};
use uptane_core::refresh::{Refresh, Step};
use uptane_core::testing::now;
use uptane_core::trusted::{ImageRepo, Limits};
use uptane_core::verify::Raw;

use crate::envelope::signed_text;
use crate::fixtures::{CHUNK, CORRELATION_ID, IMAGE_NAME, image, image_repo};
use crate::records::encode;
use crate::{manifest, refresh, secondary, upload, verify};

/// A named seed.
pub type Seed = (String, Vec<u8>);

/// The seeds of `target`.
pub fn seeds(target: &str) -> Vec<Seed> {
    match target {
        "cjson" => cjson(),
        "verify_roles" => verify_roles(),
        "refresh" => refresh(),
        "manifest" => manifests(),
        "secondary_grpc" => secondary_grpc(),
        "image_upload" => image_upload(),
        "primary_http" => primary_http(),
        other => panic!("no target {other}"),
    }
}

fn named(prefix: &str, inputs: Vec<Vec<u8>>) -> Vec<Seed> {
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| (format!("seed-{prefix}-{i}"), bytes))
        .collect()
}

fn repo_files() -> Vec<Vec<u8>> {
    let repo = image_repo();
    let mut files = repo.roots.clone();
    files.push(repo.timestamp.clone());
    files.push(repo.snapshot.clone());
    files.extend(repo.targets_files.values().cloned());
    files
}

fn cjson() -> Vec<Seed> {
    let mut inputs = repo_files();
    for text in [
        &br#"{"b":[1,-2,"x\"y\\z",true,false,null,{}],"a":{"c":18446744073709551615}}"#[..],
        br#"{"s":"\u00e9\ud83d\ude00\t\n","n":-9223372036854775808}"#,
        br#"[1e2, 1.0, -0, 0.5]"#,
        br#"{"a":1,"a":2}"#,
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        b"  {\"k\" : [ 1 , 2 ] }  ",
    ] {
        inputs.push(text.to_vec());
    }
    named("json", inputs)
}

fn ecu_report(serial: &str, counter: u64, nonce: &str) -> EcuVersionReport {
    let content = b"installed image";
    EcuVersionReport {
        report_type: ECU_REPORT_TYPE.into(),
        ecu_serial: uptane_core::ids::EcuSerial::new(serial).expect("fixture serial"),
        installed_image: InstalledImage {
            filename: "installed.bin".into(),
            length: content.len() as u64,
            hashes: standard_hashes(content),
            release_counter: 1,
        },
        attacks_detected: vec![],
        latest_time: now() - chrono::Duration::hours(1),
        nonce: nonce.into(),
        report_counter: counter,
        last_install: Some(LastInstall {
            correlation_id: CORRELATION_ID.into(),
            result: InstallResult::Installed,
            detail: "installed".into(),
        }),
    }
}

fn verify_roles() -> Vec<Seed> {
    let repo = image_repo();
    let mut inputs = Vec::new();
    // Roles 0–3 with their own key (bits 0–3 of the mask), and once with every key.
    let documents = [
        &repo.roots[0],
        &repo.timestamp,
        &repo.snapshot,
        &repo.targets_files["targets"],
    ];
    for (role, document) in documents.into_iter().enumerate() {
        for mask in [1u8 << role, 0x1f] {
            let mut input = vec![verify::selector(role, mask)];
            input.extend_from_slice(&signed_text(document));
            inputs.push(input);
        }
    }
    let report = serde_json::to_vec(&ecu_report(crate::fixtures::SERIAL, 1, "nonce-1"))
        .expect("report serializes");
    let mut input = vec![verify::selector(4, 1 << 4)];
    input.extend_from_slice(&report);
    inputs.push(input);
    let manifest = manifest_text(&[]);
    let mut input = vec![verify::selector(5, 1 << 4)];
    input.extend_from_slice(&manifest);
    inputs.push(input);
    named("role", inputs)
}

/// The files a full refresh of the fixture Image repository asks for, in order, when
/// searching `path` (kept copies: none).
fn refresh_steps(path: Option<&str>) -> Vec<(bool, Option<Vec<u8>>)> {
    let repo = image_repo();
    let root = Raw::new(repo.initial_root().to_vec());
    let mut refresh =
        Refresh::<ImageRepo>::new(&root, now(), Limits::default()).expect("the root loads");
    if let Some(path) = path {
        refresh.find(path);
    }
    let mut steps = Vec::new();
    for _ in 0..256 {
        let (file, kept) = match refresh.next() {
            Step::Done => break,
            Step::ReadKept(file) => (file, true),
            Step::Fetch { file, .. } => (file, false),
        };
        let answer = if kept { None } else { repo.file(&file) };
        steps.push((kept, answer.clone()));
        if refresh.feed(answer).is_err() {
            break;
        }
    }
    steps
}

fn refresh() -> Vec<Seed> {
    let mut inputs = Vec::new();
    for (search, path) in refresh::SEARCHES.iter().enumerate() {
        let mode = (search as u8) << 1;
        // Every step answered with the real file, as records.
        let steps = refresh_steps(*path);
        let real: Vec<(u8, &[u8])> = steps
            .iter()
            .map(|(kept, _)| {
                (
                    if *kept {
                        refresh::answer::NONE
                    } else {
                        refresh::answer::REAL
                    },
                    &b""[..],
                )
            })
            .collect();
        let mut input = vec![mode];
        input.extend(encode(&real));
        inputs.push(input);
        // Each step in turn answered with its real content, signed by the harness (the
        // content the fuzzer then mutates).
        for (k, (_, answer)) in steps.iter().enumerate() {
            let Some(bytes) = answer else { continue };
            let text = signed_text(bytes);
            let mut records = real.clone();
            records[k] = (refresh::answer::SIGNED, &text);
            let mut input = vec![mode];
            input.extend(encode(&records));
            inputs.push(input);
        }
    }
    // The Director, partially verified, from its real files.
    inputs.push(vec![1]);
    named("refresh", inputs)
}

fn manifest_text(unreachable: &[&str]) -> Vec<u8> {
    let mut object = serde_json::json!({
        "_type": VEHICLE_MANIFEST_TYPE,
        "vin": crate::fixtures::VIN,
        "primary_ecu_serial": manifest::PRIMARY,
        "ecu_version_reports": {},
    });
    if !unreachable.is_empty() {
        object["unreachable_ecus"] = unreachable
            .iter()
            .map(|s| (s.to_string(), serde_json::Value::from("powered off")))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    serde_json::to_vec(&object).expect("manifest serializes")
}

fn manifests() -> Vec<Seed> {
    let report = |i: usize, counter: u64| {
        serde_json::to_vec(&ecu_report(
            manifest::SERIALS[i],
            counter,
            &format!("nonce-{i}"),
        ))
        .expect("report serializes")
    };
    let (r0, r1, r2) = (
        report(0, 1),
        report(1, 1),
        report(2, manifest::LAST_COUNTER_B + 1),
    );
    let whole = manifest_text(&[]);
    let without_b = manifest_text(&["ecu-b"]);
    // Tag: signer (low 2 bits), serial filed under (next 2 bits).
    let tag = |signer: u8, under: u8| signer | (under << 2);
    let mut inputs = vec![
        encode(&[
            (0, &whole),
            (tag(0, 0), &r0),
            (tag(1, 1), &r1),
            (tag(2, 2), &r2),
        ]),
        encode(&[(0, &without_b), (tag(0, 0), &r0), (tag(1, 1), &r1)]),
    ];
    let raw = manifest::manifest_bytes(&inputs[0]);
    inputs.push(encode(&[(manifest::RAW, &raw)]));
    // ECU A's report written as another ECU might: indented, keys in its own order, its
    // nonce with an escape. The manifest carries it as written.
    let indented = String::from_utf8(
        serde_json::to_vec_pretty(&ecu_report(manifest::SERIALS[1], 1, "nonce-1"))
            .expect("report serializes"),
    )
    .expect("JSON is UTF-8")
    .replace("nonce-1", "nonce-\\u0031");
    inputs.push(encode(&[
        (0, &whole),
        (tag(0, 0), &r0),
        (tag(1, 1), indented.as_bytes()),
        (tag(2, 2), &r2),
    ]));
    named("manifest", inputs)
}

fn secondary_grpc() -> Vec<Seed> {
    use proto::v2::{
        AcknowledgeReportRequest, ActivateRequest, BeginTransferRequest, Chunk, ConfirmRequest,
        GetInstallationResultRequest, GetTransferStateRequest, GetVersionReportRequest,
        InstallRequest, PutTimeRequest, RebootRequest,
    };
    let m = secondary::method;
    let id = || CORRELATION_ID.to_string();
    let image = image();
    let mut calls: Vec<(u8, Vec<u8>)> = vec![
        (m("GetInfo"), vec![]),
        (
            m("PutTime"),
            PutTimeRequest {
                unix_seconds: now().timestamp(),
            }
            .encode_to_vec(),
        ),
        (m("PutMetadata"), secondary::bundle().encode_to_vec()),
        (
            m("BeginTransfer"),
            BeginTransferRequest {
                correlation_id: id(),
                filename: IMAGE_NAME.into(),
                length: image.len() as u64,
            }
            .encode_to_vec(),
        ),
    ];
    for (i, chunk) in image.chunks(CHUNK).enumerate() {
        calls.push((
            m("Upload"),
            Chunk {
                correlation_id: id(),
                offset: (i * CHUNK) as u64,
                data: bytes::Bytes::copy_from_slice(chunk),
            }
            .encode_to_vec(),
        ));
    }
    calls.extend([
        (
            m("GetTransferState"),
            GetTransferStateRequest {
                correlation_id: id(),
            }
            .encode_to_vec(),
        ),
        (
            m("Install"),
            InstallRequest {
                correlation_id: id(),
            }
            .encode_to_vec(),
        ),
        (
            m("Activate"),
            ActivateRequest {
                correlation_id: id(),
            }
            .encode_to_vec(),
        ),
        (m("Reboot"), RebootRequest {}.encode_to_vec()),
        (
            m("Confirm"),
            ConfirmRequest {
                correlation_id: id(),
            }
            .encode_to_vec(),
        ),
        (
            m("GetInstallationResult"),
            GetInstallationResultRequest {
                correlation_id: id(),
            }
            .encode_to_vec(),
        ),
        (
            m("GetVersionReport"),
            GetVersionReportRequest {
                nonce: "n-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            m("AcknowledgeReport"),
            AcknowledgeReportRequest { report_counter: 1 }.encode_to_vec(),
        ),
    ]);
    let records: Vec<(u8, &[u8])> = calls.iter().map(|(t, b)| (*t, b.as_slice())).collect();
    let mut inputs = Vec::new();
    for mode in [0u8, 1] {
        let mut input = vec![mode];
        input.extend(encode(&records));
        inputs.push(input);
    }
    // The metadata alone, and a transfer cut after its first chunk.
    let mut input = vec![0];
    input.extend(encode(&records[..3]));
    inputs.push(input);
    let mut input = vec![1];
    input.extend(encode(&records[..5]));
    inputs.push(input);
    // The update withdrawn by the Director's next targets: mid-transfer, and once written.
    let withdrawal = secondary::withdrawal().encode_to_vec();
    let install = records
        .iter()
        .position(|(t, _)| *t == m("Install"))
        .expect("an Install record");
    for cut in [5, install + 1] {
        let mut withdrawn = records[..cut].to_vec();
        withdrawn.push((m("PutMetadata"), withdrawal.as_slice()));
        withdrawn.extend_from_slice(&records[install..]);
        let mut input = vec![0];
        input.extend(encode(&withdrawn));
        inputs.push(input);
    }
    named("grpc", inputs)
}

fn image_upload() -> Vec<Seed> {
    let template = upload::template();
    let state = template.repo.state().expect("template reads");
    let current = state.targets().common.version;
    let mut inputs = Vec::new();
    let targets = uptane_core::sign::TargetsBuilder::from_targets(
        state.targets(),
        current + 1,
        now() + chrono::Duration::days(30),
    )
    .build();
    let mut input = vec![1];
    input.extend(serde_json::to_vec(&targets).expect("targets serialize"));
    inputs.push(input);
    let supplier = uptane_core::sign::TargetsBuilder::new(1, now() + chrono::Duration::days(30))
        .target(
            "supplier/firmware.bin",
            upload::BLOB,
            Some(image_repo::repo::image_custom(
                &[crate::fixtures::HARDWARE_ID.into()],
                2,
            )),
        )
        .build();
    let mut input = vec![3];
    input.extend(serde_json::to_vec(&supplier).expect("targets serialize"));
    inputs.push(input);
    named("upload", inputs)
}

fn primary_http() -> Vec<Seed> {
    let image = image();
    let whole = {
        let mut r =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", image.len()).into_bytes();
        r.extend_from_slice(&image);
        r
    };
    let half = image.len() / 2;
    let cut = {
        let mut r =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", image.len()).into_bytes();
        r.extend_from_slice(&image[..half]);
        r
    };
    let rest = {
        let mut r = format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {half}-{}/{}\r\ncontent-length: {}\r\n\r\n",
            image.len() - 1,
            image.len(),
            image.len() - half
        )
        .into_bytes();
        r.extend_from_slice(&image[half..]);
        r
    };
    let redirect =
        b"HTTP/1.1 302 Found\r\nlocation: /targets/elsewhere.bin\r\ncontent-length: 0\r\n\r\n"
            .to_vec();
    let chunked = {
        let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for chunk in image.chunks(3000) {
            r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            r.extend_from_slice(chunk);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    };
    let metadata = {
        let body = br#"{"signed":{},"signatures":[]}"#;
        let mut r =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    };
    let mut inputs = Vec::new();
    let mut push = |mode: u8, responses: &[&[u8]]| {
        let records: Vec<(u8, &[u8])> = responses.iter().map(|r| (0u8, *r)).collect();
        let mut input = vec![mode];
        input.extend(encode(&records));
        inputs.push(input);
    };
    push(0, &[&metadata]);
    push(0, &[&redirect, &metadata]);
    push(1, &[&whole]);
    push(1, &[&cut, &rest]);
    push(1, &[&redirect, &whole]);
    push(1, &[&chunked]);
    named("http", inputs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_target_has_seeds() {
        for (name, _) in crate::TARGETS {
            assert!(!super::seeds(name).is_empty(), "{name}");
        }
    }
}
