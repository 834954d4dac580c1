//! The Primary's image download, measured against the real Image repository: `image-repo
//! serve` (release build) in its own process on 127.0.0.1, over plaintext HTTP and over TLS
//! 1.3, serving a 512 MiB image it published; the Primary's own download path
//! (`Fetcher::download_to` with `ThreadedDigests`: hash threads beside the network, batched
//! writes, fsync at the end) downloads, verifies and persists it, median of 3 per listing.
//! Server and client share the machine's cores, so the client's own CPU per gigabyte is printed
//! too. Run with
//! `cargo build --release --workspace --bins && cargo bench -p primary-ecu --bench download`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod shared;

use primary_ecu::repo::Fetcher;
use service_runtime::http::ClientTls;
use shared::{image, listings, median_download};
use uptane_tests::sim::write_throwaway_pki;
use uptane_tests::{bin, run_ok, spawn_listening};

const MIB: usize = 512;
const LIMIT: Duration = Duration::from_secs(120);

fn text(path: &Path) -> String {
    path.display().to_string()
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| text(&tmp.path().join(name));
    write_throwaway_pki(&tmp.path().join("pki"), &["127.0.0.1"]).unwrap();
    run_ok(
        Command::new(bin("image-repo")).args([
            "init",
            "--repo",
            &path("repo"),
            "--offline-keys",
            &path("keys"),
        ]),
        LIMIT,
    );
    let bytes = image(MIB << 20, 0);
    std::fs::write(tmp.path().join("big.bin"), &bytes).unwrap();
    run_ok(
        Command::new(bin("image-repo")).args([
            "add",
            "--repo",
            &path("repo"),
            "--offline-keys",
            &path("keys"),
            "--name",
            "big.bin",
            "--hardware-id",
            "hw-bench",
            "--release-counter",
            "1",
            &path("big.bin"),
        ]),
        LIMIT,
    );
    let listings = listings(&bytes);
    let target = format!("/targets/{}.big.bin", listings[0].1["sha256"]);
    let length = bytes.len() as u64;
    drop(bytes);

    let (_plain, plain_addr) = spawn_listening(
        {
            let mut c = Command::new(bin("image-repo"));
            c.args(["serve", "--repo", &path("repo"), "--listen", "127.0.0.1:0"])
                .arg("--insecure");
            c
        },
        LIMIT,
    );
    let pki = tmp.path().join("pki");
    let (_tls, tls_addr) = spawn_listening(
        {
            let mut c = Command::new(bin("image-repo"));
            c.args(["serve", "--repo", &path("repo"), "--listen", "127.0.0.1:0"])
                .args(["--tls-cert", &text(&pki.join("image-repo/cert.pem"))])
                .args(["--tls-key", &text(&pki.join("image-repo/key.pem"))]);
            c
        },
        LIMIT,
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let downloads = tempfile::tempdir().unwrap();
        let transports = [
            (
                "plaintext",
                format!("http://{plain_addr}{target}"),
                ClientTls::new(None, None, true).unwrap(),
            ),
            (
                "TLS 1.3",
                format!("https://{tls_addr}{target}"),
                ClientTls::new(Some(&pki.join("ca.pem")), None, false).unwrap(),
            ),
        ];
        for (transport, url, tls) in transports {
            let fetcher = Fetcher::new(&tls, Duration::from_secs(60), 0).unwrap();
            for (listed, hashes) in &listings {
                let (median, cpu) =
                    median_download(&fetcher, &url, hashes, length, downloads.path()).await;
                // What the client alone would reach with two cores of its own (the server
                // runs on another machine in a fleet).
                println!(
                    "{transport}: download, verify ({listed}) and persist {MIB} MiB from image-repo serve, median of 3: {:.0} ms, {:.0} MB/s; client CPU {:.2} core-s per GB, {:.0} MB/s per client core",
                    median * 1e3,
                    length as f64 / median / 1e6,
                    cpu / (length as f64 / 1e9),
                    length as f64 / cpu / 1e6
                );
            }
        }
    });
}
