//! Image repository benchmarks. Run with `cargo bench -p image-repo --bench repo`.
//!
//! 1. Publishing with 10,000 and 100,000 targets: the first publish of all of them, then the
//!    median of 5 publishes that each add one target (load and verify the published state,
//!    verify the upload, sign with the offline key, write targets, snapshot, timestamp).
//! 2. Metadata requests per second: `wrk -t2 -c64 -d10s` on `/metadata/timestamp.json`
//!    when `wrk` is installed, else an in-process reqwest load (64 tasks, 5 s); over
//!    plaintext and over TLS.
//! 3. Download throughput of a 1 GiB image over 127.0.0.1, streamed, with and without
//!    SHA-256 verification on the client side; over plaintext and over TLS.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use image_repo::repo::{
    BlobInfo, Expiry, InitOptions, Repository, blob_info_of, image_custom, sign_targets_update,
};
use image_repo::server::{AppState, ServerConfig};
use service_runtime::http::{ClientTls, Transport};
use service_runtime::tls::{ClientAuth, ServerTls};
use sha2::Digest;

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

/// Writes a blob straight into the store (no fsync): benchmark setup only.
fn seed_blob(repo: &Repository, bytes: &[u8]) -> BlobInfo {
    let info = blob_info_of(bytes);
    let sha = &info.hashes["sha256"];
    std::fs::write(repo.blobs_dir().join(sha), bytes).unwrap();
    std::fs::write(
        repo.blobs_dir().join(format!("{sha}.json")),
        serde_json::to_vec(&info).unwrap(),
    )
    .unwrap();
    info
}

fn publish_bench(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let repo = Repository::init(
        dir.path().join("repo"),
        &keys,
        InitOptions::default(),
        Expiry::default(),
        now(),
    )
    .unwrap();
    let custom = image_custom(&["hw-1".into()], 1);
    let infos: Vec<BlobInfo> = (0..n)
        .map(|i| seed_blob(&repo, format!("image number {i}").as_bytes()))
        .collect();
    let start = Instant::now();
    let state = repo.state().unwrap();
    let bytes = sign_targets_update(&state, &keys, Expiry::default(), now(), |mut b| {
        for (i, info) in infos.iter().enumerate() {
            b = b.target_with(
                &format!("images/ecu-{i:06}.bin"),
                info.length,
                info.hashes.clone(),
                Some(custom.clone()),
            );
        }
        Ok(b)
    })
    .unwrap();
    let size = bytes.len();
    repo.publish_role("targets", bytes, now()).unwrap();
    let first = start.elapsed();
    let mut runs = Vec::new();
    for i in 0..5 {
        let info = seed_blob(&repo, format!("extra image {i}").as_bytes());
        let start = Instant::now();
        repo.update_targets(&keys, now(), |b| {
            Ok(b.target_with(
                &format!("extra-{i}.bin"),
                info.length,
                info.hashes.clone(),
                Some(custom.clone()),
            ))
        })
        .unwrap();
        runs.push(start.elapsed());
    }
    runs.sort();
    println!(
        "| {n} | {:.1} MiB | {:.2} s | {:.0} ms |",
        size as f64 / 1_048_576.0,
        first.as_secs_f64(),
        runs[runs.len() / 2].as_secs_f64() * 1e3
    );
}

/// The server over plaintext and over TLS (a certificate from a test CA); both URLs, and a
/// client that trusts the CA.
async fn start_servers(repo: Repository) -> (String, String, reqwest::Client) {
    let state = AppState::new(repo, ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(image_repo::server::serve(
        listener,
        Transport::Plaintext,
        state.clone(),
        std::future::pending(),
    ));
    let ca = service_runtime::pki::Ca::generate("bench CA").unwrap();
    let identity = ca.issue_server(&["127.0.0.1"]).unwrap().identity().unwrap();
    let tls = ServerTls::fixed(
        service_runtime::tls::server_config(&identity, &ClientAuth::None).unwrap(),
    );
    let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    tokio::spawn(image_repo::server::serve(
        tls_listener,
        Transport::Tls(tls),
        state,
        std::future::pending(),
    ));
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.cert_pem()).unwrap();
    let client = ClientTls::new(Some(ca_file.path()), None, true)
        .unwrap()
        .reqwest()
        .unwrap()
        .build()
        .unwrap();
    (
        format!("http://{addr}"),
        format!("https://{tls_addr}"),
        client,
    )
}

async fn requests_per_second(url: &str, client: &reqwest::Client) -> String {
    let target = format!("{url}/metadata/timestamp.json");
    let wrk_target = target.clone();
    let wrk = tokio::task::spawn_blocking(move || {
        std::process::Command::new("wrk")
            .args(["-t2", "-c64", "-d10s", &wrk_target])
            .output()
    });
    if let Ok(Ok(output)) = wrk.await {
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        if let Some(line) = text.lines().find(|l| l.starts_with("Requests/sec:")) {
            // Failures answer fast: a rate that counts them would flatter the server.
            let failures: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors"))
                .collect();
            let failures = if failures.is_empty() {
                String::new()
            } else {
                format!("; {}", failures.join("; "))
            };
            return format!(
                "{} (wrk -t2 -c64 -d10s, server in this process){failures}",
                line.trim_start_matches("Requests/sec:").trim()
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let client = client.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let response = client.get(&target).send().await.unwrap();
                    assert!(response.status().is_success());
                    response.bytes().await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    format!(
        "{:.0} (reqwest, 64 tasks, 5 s, same process)",
        total as f64 / 5.0
    )
}

async fn download(client: &reqwest::Client, url: &str, verify: bool) -> f64 {
    let start = Instant::now();
    let mut stream = client.get(url).send().await.unwrap().bytes_stream();
    let mut hasher = sha2::Sha256::new();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len() as u64;
        if verify {
            hasher.update(&chunk);
        }
    }
    std::hint::black_box(hasher.finalize());
    total as f64 / 1e6 / start.elapsed().as_secs_f64()
}

fn write_big_file(path: &Path, size: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let chunk: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    for _ in 0..(size >> 20) {
        file.write_all(&chunk).unwrap();
    }
}

fn main() {
    println!(
        "| targets | targets.json | first publish (all targets) | publish adding one target (median of 5) |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    publish_bench(10_000);
    publish_bench(100_000);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let repo = Repository::init(dir.path().join("repo"), &keys, InitOptions::default(), Expiry::default(), now()).unwrap();
        let image = dir.path().join("image.bin");
        write_big_file(&image, 1 << 30);
        let info = repo.import_file(&image).unwrap();
        std::fs::remove_file(&image).unwrap();
        repo.update_targets(&keys, now(), |b| Ok(b.target_with("big.bin", info.length, info.hashes.clone(), None)))
            .unwrap();
        let (url, tls_url, client) = start_servers(repo).await;
        println!();
        for (name, url) in [("plaintext", &url), ("TLS 1.3", &tls_url)] {
            println!("metadata requests/s (timestamp.json), {name}: {}", requests_per_second(url, &client).await);
        }
        for (name, url) in [("plaintext", &url), ("TLS 1.3", &tls_url)] {
            let image_url = format!("{url}/targets/{}.big.bin", info.hashes["sha256"]);
            download(&client, &image_url, false).await;
            let mut plain = Vec::new();
            let mut verified = Vec::new();
            for _ in 0..3 {
                plain.push(download(&client, &image_url, false).await);
                verified.push(download(&client, &image_url, true).await);
            }
            plain.sort_by(f64::total_cmp);
            verified.sort_by(f64::total_cmp);
            println!("1 GiB image download over 127.0.0.1, {name} (median of 3): {:.0} MB/s; with SHA-256 on the client: {:.0} MB/s", plain[1], verified[1]);
        }
    });
}
