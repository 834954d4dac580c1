//! Benchmarks for the core's hot paths. Run with `cargo bench -p uptane-core --bench core`.
//!
//! Reports the median of several runs of: canonicalizing the `signed` part of a targets file
//! with 1,000 and 10,000 targets (from text, as verification does, and from a parsed value,
//! as signing does), verifying the whole file (envelope parse, canonicalize, typed read,
//! ed25519 `verify_strict`), a full refresh (root, timestamp, snapshot with its
//! hash check, targets with its hash check against the snapshot, which lists sha256 as our
//! repositories do), and SHA-256 over 1 GiB fed in 1 MiB chunks.

#![allow(clippy::disallowed_methods)] // a benchmark reads the clock; the library never does
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uptane_core::cjson;
use uptane_core::crypto::SigningKey;
use uptane_core::hash::{Hashes, StreamVerifier};
use uptane_core::metadata::{RoleKeys, Targets};
use uptane_core::refresh::Refresh;
use uptane_core::sign::{RootBuilder, SnapshotBuilder, TargetsBuilder, TimestampBuilder, describe};
use uptane_core::time::parse_expires;
use uptane_core::trusted::{ImageRepo, Limits};
use uptane_core::verify::{Raw, verify_role};

// The allocator every program of the workspace uses (service-runtime declares it for them;
// the core itself is allocator-agnostic).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> Duration {
    black_box(f());
    median(
        (0..reps)
            .map(|_| {
                let start = Instant::now();
                black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

fn targets_file(n: usize, key: &SigningKey) -> Vec<u8> {
    let expires = parse_expires("2040-01-01T00:00:00Z").unwrap();
    let mut builder = TargetsBuilder::new(1, expires);
    for i in 0..n {
        let hashes: Hashes = BTreeMap::from([
            ("sha256".to_string(), format!("{:064x}", i)),
            ("sha512".to_string(), format!("{:0128x}", i)),
        ]);
        builder = builder.target_with(
            &format!("images/ecu-{i:06}.bin"),
            1_048_576 + i as u64,
            hashes,
            Some(json!({"hardwareIds": [format!("hw-{}", i % 17)], "releaseCounter": i})),
        );
    }
    builder.sign(&[key]).unwrap()
}

fn main() {
    let key = SigningKey::from_seed([42; 32]);
    let keys = BTreeMap::from([(key.key_id(), key.public_key().clone())]);
    let authorized = RoleKeys {
        keyids: vec![key.key_id()],
        threshold: 1,
    };
    println!("| operation | N=1,000 | N=10,000 |");
    println!("| --- | ---: | ---: |");
    let mut rows: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for n in [1_000, 10_000] {
        let bytes = targets_file(n, &key);
        let reps = if n == 1_000 { 31 } else { 11 };
        let raw = Raw::<Targets>::new(bytes.clone());
        let verify = time(reps, || {
            verify_role(&raw, "targets", &keys, &authorized).unwrap()
        });
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        let signed_text = serde_json::to_vec(&doc["signed"]).unwrap();
        let canon = time(reps, || {
            cjson::canonicalize_json_text(&signed_text).unwrap()
        });
        let canon_value = time(reps, || cjson::canonicalize(&doc["signed"]).unwrap());
        let typed = time(reps, || {
            serde_json::from_slice::<Targets>(&signed_text).unwrap()
        });
        let scan = time(reps, || {
            serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).unwrap()
        });

        let expires = parse_expires("2040-01-01T00:00:00Z").unwrap();
        let root = RootBuilder::new(1, expires)
            .all_roles(&key)
            .sign(&[&key])
            .unwrap();
        let snapshot = SnapshotBuilder::new(1, expires)
            .role("targets", describe(1, &bytes))
            .sign(&[&key])
            .unwrap();
        let timestamp = TimestampBuilder::new(1, expires, describe(1, &snapshot))
            .sign(&[&key])
            .unwrap();
        let now = parse_expires("2030-01-01T00:00:00Z").unwrap();
        let mut files = HashMap::from([
            ("timestamp.json".to_string(), timestamp),
            ("1.snapshot.json".to_string(), snapshot),
            ("1.targets.json".to_string(), bytes.clone()),
        ]);
        let update = time(reps, || {
            let mut refresh =
                Refresh::<ImageRepo>::new(&Raw::new(root.clone()), now, Limits::default()).unwrap();
            refresh.run(&mut files).unwrap();
            refresh.into_trusted()
        });
        let size = format!("{:.2} MiB", bytes.len() as f64 / 1_048_576.0);
        for (name, value) in [
            ("a. targets file size", size),
            (
                "b. canonicalize `signed` from its JSON text (the verification path)",
                format!("{:.2} ms", canon.as_secs_f64() * 1e3),
            ),
            (
                "c. canonicalize `signed` from a parsed serde_json Value (the signing path)",
                format!("{:.2} ms", canon_value.as_secs_f64() * 1e3),
            ),
            (
                "c1. read `signed` into its type alone (serde_json, dropped after)",
                format!("{:.2} ms", typed.as_secs_f64() * 1e3),
            ),
            (
                "c2. scan the whole file as JSON, nothing kept (serde_json)",
                format!("{:.2} ms", scan.as_secs_f64() * 1e3),
            ),
            (
                "d. verify (parse + canonicalize + ed25519 + typed read)",
                format!("{:.2} ms", verify.as_secs_f64() * 1e3),
            ),
            (
                "e. refresh: root, timestamp, snapshot (hash check), targets",
                format!("{:.2} ms", update.as_secs_f64() * 1e3),
            ),
        ] {
            rows.entry(name).or_default().push(value);
        }
    }
    for (name, values) in rows {
        let label = name.split_once(". ").map_or(name, |(_, label)| label);
        println!("| {label} | {} | {} |", values[0], values[1]);
    }

    const GIB: u64 = 1 << 30;
    let chunk = vec![0xa5u8; 1 << 20];
    let hashes: Hashes = BTreeMap::from([("sha256".to_string(), String::new())]);
    let sha = time(3, || {
        let mut v = StreamVerifier::new(None, &hashes).unwrap();
        for _ in 0..(GIB / chunk.len() as u64) {
            v.update(&chunk).unwrap();
        }
        v.bytes_seen()
    });
    println!();
    println!(
        "SHA-256 over 1 GiB in 1 MiB chunks: {:.2} s, {:.0} MB/s",
        sha.as_secs_f64(),
        GIB as f64 / 1e6 / sha.as_secs_f64()
    );
}
