//! Primary-to-Secondary transfer throughput over gRPC on 127.0.0.1 (pinned mutual TLS, then
//! plaintext for comparison) for a 1 GiB image in
//! 1 MiB chunks, with the Secondary hashing (sha256 alone, then sha256 and sha512) and writing every byte, and
//! the Secondary's peak memory (VmHWM) during it. Run with
//! `cargo bench -p secondary-ecu --bench transfer`.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use proto::v2::secondary_client::SecondaryClient;
use proto::v2::{BeginTransferRequest, Chunk, PutMetadataRequest, PutTimeRequest};
use service_runtime::tls::ServerTrust;
use sha2::Digest;
use std::sync::Arc;
use uptane_core::hash::Hashes;
use uptane_core::sign::TargetsBuilder;
use uptane_core::testing::RepoFixture;
use uptane_core::uptane::{director_target_custom, director_targets_custom, image_target_custom};
use uptane_tests::forge::LinkKeys;
use uptane_tests::{peak_rss_kib, spawn_listening};

const SIZE: u64 = 1 << 30;
const CHUNK: usize = 1 << 20;

fn chunk() -> Vec<u8> {
    (0..CHUNK).map(|i| (i % 251) as u8).collect()
}

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

fn main() {
    let data = chunk();
    let mut sha256 = sha2::Sha256::new();
    let mut sha512 = sha2::Sha512::new();
    for _ in 0..SIZE / CHUNK as u64 {
        sha256.update(&data);
        sha512.update(&data);
    }
    let sha256 = hex::encode(sha256.finalize());
    let sha512 = hex::encode(sha512.finalize());
    let only_sha256 = Hashes::from([("sha256".to_string(), sha256.clone())]);
    let both = Hashes::from([
        ("sha256".to_string(), sha256),
        ("sha512".to_string(), sha512),
    ]);
    // sha256 alone is what the Image repository lists for new images (docs/POUF.md); both
    // are still accepted and checked when listed.
    for (listed, hashes) in [("sha256", only_sha256), ("sha256+sha512", both)] {
        let (director, images) = repositories(hashes);
        for secure in [true, false] {
            transfer(&director, &images, secure, listed);
        }
    }
}

/// Both repositories, approving a 1 GiB `big.bin` with `hashes`.
fn repositories(hashes: Hashes) -> (RepoFixture, RepoFixture) {
    let mut images = RepoFixture::new();
    images.expires = now() + chrono::Duration::days(30);
    images.targets = TargetsBuilder::from_targets(
        &images.targets,
        images.targets.common.version,
        images.expires,
    )
    .target_with(
        "big.bin",
        SIZE,
        hashes.clone(),
        Some(image_target_custom(&["hw"], 1)),
    )
    .build();
    images.publish();
    let mut director = RepoFixture::new();
    director.expires = images.expires;
    director.targets = TargetsBuilder::new(0, director.expires)
        .target_with(
            "big.bin",
            SIZE,
            hashes,
            Some(director_target_custom("ECU", "hw", 1)),
        )
        .custom(director_targets_custom("VIN", "c1"))
        .build();
    director.publish();

    (director, images)
}

/// One 1 GiB transfer to a fresh Secondary, over pinned mutual TLS when `secure`, else over
/// plaintext gRPC (`--insecure`) for comparison.
fn transfer(director: &RepoFixture, images: &RepoFixture, secure: bool, listed: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("d.json"), &director.roots[0]).unwrap();
    std::fs::write(p("i.json"), &images.roots[0]).unwrap();
    std::fs::write(p("f.bin"), b"factory").unwrap();
    let primary =
        service_runtime::pki::self_signed("primary", &[service_runtime::pki::DEVICE_NAME]).unwrap();
    primary.write(&p("primary/tls")).unwrap();
    let bin = env!("CARGO_BIN_EXE_secondary-ecu");
    let status = Command::new(bin)
        .args([
            "init",
            "--vin",
            "VIN",
            "--serial",
            "ECU",
            "--hardware-id",
            "hw",
            "--mode",
            "full",
            "--factory-name",
            "f.bin",
            "--primary-fingerprint",
            &primary.fingerprint().unwrap().to_string(),
        ])
        .arg("--dir")
        .arg(p("ecu"))
        .arg("--director-root")
        .arg(p("d.json"))
        .arg("--image-root")
        .arg(p("i.json"))
        .arg("--factory-image")
        .arg(p("f.bin"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut command = Command::new(bin);
    command.arg("run").arg("--dir").arg(p("ecu")).args([
        "--listen",
        "127.0.0.1:0",
        "--max-chunk-size",
        &CHUNK.to_string(),
    ]);
    if !secure {
        command.arg("--insecure");
    }
    let (process, addr) = spawn_listening(command, Duration::from_secs(30));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20))
            .tcp_nodelay(true);
        let channel = if secure {
            let keys = LinkKeys::steal(&p("ecu"), &p("primary"));
            let tls = service_runtime::tls::client_config(
                &ServerTrust::Pinned(keys.secondary.fingerprint()),
                Some(&keys.primary),
            )
            .unwrap();
            endpoint
                .connect_with_connector(service_runtime::tls::connector(
                    addr.clone(),
                    service_runtime::pki::DEVICE_NAME,
                    Arc::new(tls),
                ))
                .await
                .unwrap()
        } else {
            endpoint.connect().await.unwrap()
        };
        let mut client = SecondaryClient::new(channel);
        client.put_time(PutTimeRequest { unix_seconds: now().timestamp() }).await.unwrap();
        let bundle = PutMetadataRequest {
            correlation_id: "c1".into(),
            director_timestamp: director.timestamp.clone(),
            director_snapshot: director.snapshot.clone(),
            director_targets: director.targets_files["targets"].clone(),
            image_timestamp: images.timestamp.clone(),
            image_snapshot: images.snapshot.clone(),
            image_targets: images.targets_files["targets"].clone(),
            ..PutMetadataRequest::default()
        };
        let r = client.put_metadata(bundle).await.unwrap().into_inner();
        assert_eq!(r.code, proto::v2::ResultCode::Ok as i32, "{r:?}");
        client
            .begin_transfer(BeginTransferRequest { correlation_id: "c1".into(), filename: "big.bin".into(), length: SIZE })
            .await
            .unwrap();
        let data = tonic::codegen::Bytes::from(bytes_chunk());
        let chunks = (0..SIZE / CHUNK as u64).map(move |i| Chunk {
            correlation_id: "c1".into(),
            offset: i * CHUNK as u64,
            data: data.clone(),
        });
        let cpu = || uptane_tests::cpu_seconds(process.id()).unwrap_or(0.0);
        let cpu_before = cpu();
        let start = Instant::now();
        let state = client.upload(tokio_stream::iter(chunks)).await.unwrap().into_inner();
        let elapsed = start.elapsed().as_secs_f64();
        let secondary_cpu = cpu() - cpu_before;
        assert!(state.complete, "{state:?}");
        println!(
            "1 GiB Primary -> Secondary over gRPC ({}), {} KiB chunks, received, hashed ({listed}, each on its own thread) and written, synced in the background every 32 MiB and made durable at the end: {:.2} s, {:.0} MB/s",
            if secure { "mutual TLS, pinned" } else { "plaintext, --insecure" },
            CHUNK / 1024,
            elapsed,
            SIZE as f64 / 1e6 / elapsed
        );
        println!(
            "Secondary CPU during the transfer: {:.2} s per GB; peak resident memory (VmHWM) after it: {} MiB",
            secondary_cpu / (SIZE as f64 / 1e9),
            peak_rss_kib(process.id()).unwrap_or(0) / 1024
        );
    });
}

fn bytes_chunk() -> Vec<u8> {
    chunk()
}
