//! The Primary's update cycle, measured: a cycle that finds nothing new; a full cycle that
//! downloads one image once and delivers it to three Secondaries (two in full, one in
//! partial verification) over gRPC, at 64 MiB and at 256 MiB, with the Primary's peak
//! memory (VmHWM) during each; and download-and-verify throughput. Everything runs on
//! 127.0.0.1 with real processes. Run with `cargo bench -p primary-ecu --bench cycle`.

#![allow(clippy::unwrap_used)]

mod shared;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use primary_ecu::repo::Fetcher;
use shared::{image, listings, median_download};
use support::world::World;
use uptane_tests::{peak_rss_kib, spawn};

const DOORS: [((&str, &str), &str); 3] = [
    (("DOOR-1", "hw-door"), "full"),
    (("DOOR-2", "hw-door"), "full"),
    (("DOOR-3", "hw-door"), "partial"),
];

/// Runs `primary-ecu once`, sampling its high-water resident memory until it exits.
fn timed_once(world: &World) -> (Duration, u64) {
    let started = Instant::now();
    let mut primary = spawn(world.once_command());
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(primary.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = primary.wait_exit(Duration::from_millis(10)) {
            break status;
        }
    };
    let elapsed = started.elapsed();
    assert!(status.success(), "once failed: {}", primary.stderr());
    (elapsed, peak)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut world = World::new(&DOORS).await;
        let serials: Vec<&str> = DOORS.iter().map(|((s, _), _)| *s).collect();
        let (settle, _) = tokio::task::block_in_place(|| timed_once(&world));
        println!("first cycle (reports only): {:.0} ms", settle.as_secs_f64() * 1e3);

        for (mib, tag) in [(64usize, 1u8), (256, 2)] {
            let bytes = image(mib << 20, tag);
            let name = format!("door-{mib}.bin");
            world.assign_shared(&name, &bytes, u64::from(tag), &serials, "hw-door");

            // Download and verify alone, in this process, from the same server.
            let dir = tempfile::tempdir().unwrap();
            // The test server is plaintext (it injects faults); the Primary's TLS cost is
            // measured in the repositories' benchmarks.
            let tls = service_runtime::http::ClientTls::new(None, None, true).unwrap();
            let fetcher = Fetcher::new(&tls, Duration::from_secs(30), 0).unwrap();
            let length = bytes.len() as u64;
            let url = format!("{}{}", world.base, World::target_path(&name, &bytes));
            for (listed, hashes) in &listings(&bytes) {
                let (median, _) =
                    median_download(&fetcher, &url, hashes, length, dir.path()).await;
                println!(
                    "download, verify ({listed}) and persist {mib} MiB, median of 3: {:.0} ms, {:.0} MB/s",
                    median * 1e3,
                    bytes.len() as f64 / median / 1e6
                );
            }
            drop(dir);

            let (elapsed, peak) = tokio::task::block_in_place(|| timed_once(&world));
            let manifest = world.last_manifest();
            for serial in &serials {
                assert_eq!(manifest.installed(serial), name, "{serial}");
            }
            println!(
                "full cycle, one {mib} MiB image to three Secondaries: {:.2} s; Primary peak memory {} MiB",
                elapsed.as_secs_f64(),
                peak / 1024
            );
        }

        let mut times: Vec<Duration> = (0..5)
            .map(|_| tokio::task::block_in_place(|| timed_once(&world)).0)
            .collect();
        times.sort();
        println!(
            "cycle with no change (median of 5, process start to exit): {:.1} ms (min {:.1}, max {:.1})",
            times[2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[4].as_secs_f64() * 1e3
        );
    });
}
