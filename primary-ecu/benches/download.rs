//! The Primary's image download, measured against the real Image repository: `image-repo
//! serve` (release build) in its own process on 127.0.0.1, over plaintext HTTP and over TLS
//! 1.3, serving a 512 MiB image it published; the Primary's own download path
//! (`Fetcher::download_to` with `ThreadedDigests`: hash threads beside the network, batched
//! writes, direct where the filesystem allows) downloads, verifies and persists it, median of
//! 3 per listing. Server and client share the machine's cores, so the client's and the
//! server's CPU per gigabyte are printed too. Two figures say what bounds a run: the disk
//! alone (the same 512 MiB appended as the Primary's writer does, then synced) and, over each
//! transport, the same download written to memory (tmpfs, `/dev/shm`) instead of the disk.
//! Run with
//! `cargo build --release --workspace --bins && cargo bench -p primary-ecu --bench download`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod shared;

use primary_ecu::repo::Fetcher;
use service_runtime::direct::DirectAppender;
use service_runtime::http::ClientTls;
use shared::{image, listings, median_download};
use std::time::Instant;
use uptane_tests::sim::write_throwaway_pki;
use uptane_tests::{bin, cpu_seconds, run_ok, spawn_listening};

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

    let (plain, plain_addr) = spawn_listening(
        {
            let mut c = Command::new(bin("image-repo"));
            c.args(["serve", "--repo", &path("repo"), "--listen", "127.0.0.1:0"])
                .arg("--insecure");
            c
        },
        LIMIT,
    );
    let pki = tmp.path().join("pki");
    let (tls, tls_addr) = spawn_listening(
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
        // Memory (tmpfs), where there is one: the network and the hashing without the disk.
        let memory = tempfile::tempdir_in("/dev/shm").ok();
        let transports = [
            (
                "plaintext",
                format!("http://{plain_addr}{target}"),
                ClientTls::new(None, None, true).unwrap(),
                plain.id(),
            ),
            (
                "TLS 1.3",
                format!("https://{tls_addr}{target}"),
                ClientTls::new(Some(&pki.join("ca.pem")), None, false).unwrap(),
                tls.id(),
            ),
        ];
        // The disk's own rate, in the same run: the downloads below cannot persist faster.
        let (disk, direct) = median_disk_write(downloads.path(), length);
        println!(
            "disk: append {MIB} MiB a megabyte at a time ({}) and sync, median of 3: {:.0} ms, {:.0} MB/s",
            if direct { "direct" } else { "buffered" },
            disk * 1e3,
            length as f64 / disk / 1e6,
        );
        for (transport, url, tls, server) in transports {
            let fetcher = Fetcher::new(&tls, Duration::from_secs(60), 0).unwrap();
            let to_disk = listings
                .iter()
                .map(|(listed, hashes)| (*listed, hashes, "persist", downloads.path()));
            let to_memory = memory
                .iter()
                .map(|dir| (listings[0].0, &listings[0].1, "write to memory", dir.path()));
            for (listed, hashes, sink, dir) in to_disk.chain(to_memory) {
                let server_before = cpu_seconds(server).unwrap();
                let (median, cpu) = median_download(&fetcher, &url, hashes, length, dir).await;
                let server_cpu = (cpu_seconds(server).unwrap() - server_before) / 3.0;
                let gb = length as f64 / 1e9;
                // What the client alone would reach with two cores of its own (the server
                // runs on another machine in a fleet), and what serving cost the server.
                println!(
                    "{transport}: download, verify ({listed}) and {sink} {MIB} MiB from image-repo serve, median of 3: {:.0} ms, {:.0} MB/s; client CPU {:.2} core-s per GB, {:.0} MB/s per client core; server CPU {:.2} core-s per GB",
                    median * 1e3,
                    length as f64 / median / 1e6,
                    cpu / gb,
                    length as f64 / cpu / 1e6,
                    server_cpu / gb,
                );
            }
        }
    });
}

/// What the disk under `dir` takes: `length` bytes appended a megabyte at a time as the
/// Primary's writer does (`DirectAppender`, direct where the filesystem allows), then synced,
/// three times; the median in seconds, and whether the writes went direct.
pub(crate) fn median_disk_write(dir: &Path, length: u64) -> (f64, bool) {
    let chunk = shared::image(1 << 20, 7);
    let (mut seconds, mut direct) = (Vec::new(), false);
    for run in 0..3 {
        let path = dir.join(format!("disk-{run}"));
        let started = Instant::now();
        let mut appender = DirectAppender::new(std::fs::File::create(&path).unwrap()).unwrap();
        direct = appender.is_direct();
        let mut written = 0;
        while written < length {
            let take = chunk.len().min(usize::try_from(length - written).unwrap());
            appender.append(&chunk[..take]).unwrap();
            appender.write_gathered().unwrap();
            written += take as u64;
        }
        appender.finish().unwrap().sync_all().unwrap();
        seconds.push(started.elapsed().as_secs_f64());
        std::fs::remove_file(&path).unwrap();
    }
    seconds.sort_by(f64::total_cmp);
    (seconds[1], direct)
}
