//! Director benchmarks with 100,000 registered vehicles (`BENCH_VEHICLES=N` for more; the
//! manifests and current-metadata requests go to the first 100,000). Run with
//! `cargo bench -p director --bench director` (uses `wrk` when installed).
//!
//! 1. Vehicle version manifests verified and recorded per second through the service: a
//!    Primary and two Secondaries each (3 ECU reports + the vehicle signature, canonical
//!    JSON, nonce and counter checks, `synchronous=FULL`), one at a time (a commit each), by
//!    2 and by 4 clients that each wait for their answer, and 64 at a time (group commit).
//! 2. Vehicle metadata requests per second (`GET /vehicles/<vin>/metadata/timestamp.json`
//!    with each vehicle's credential), first for vehicles whose metadata must be signed,
//!    then for vehicles whose metadata is current, over plaintext and over TLS. Each line
//!    gives wrk's rate, the server's CPU per request and wrk's own (it shares the cores).
//!    wrk runs `-t2 -c32` with a script that names a different vehicle per request (its two
//!    threads take every other one); the signed-first line runs for 5 s over vehicles 10,000
//!    and up, and says how many requests named a vehicle a second time if the rate outran
//!    them (then raise `BENCH_VEHICLES`); `BENCH_CONNECTIONS=N` changes the connections, and
//!    `BENCH_STATIC=1` sends one fixed request (one vehicle, no script: the method of
//!    `../shared/reference/performance.md` §6, whose wrk costs less).
//! 3. The vehicle cache alone, full, with a fleet five times its capacity polling in turn:
//!    polls per second on one core and the share answered from memory (each miss kept, as a
//!    request that read the database would keep it; the database read itself not included).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use director::api::AppState;
use director::catalog::ImageCatalog;
use director::db::Db;
use director::keys::OnlineKeys;
use director::params;
use director::service::{self, DirectorService, Policy};
use service_runtime::http::Transport;
use service_runtime::tls::{ClientAuth, ServerTls};
use uptane_core::crypto::SigningKey;
use uptane_core::hash::sha256_hex;
use uptane_core::ids::EcuSerial;
use uptane_core::manifest::{
    ECU_REPORT_TYPE, EcuVersionReport, InstalledImage, VehicleVersionManifest,
};

/// Registered vehicles unless `BENCH_VEHICLES` says otherwise.
const VEHICLES: usize = 100_000;

fn vehicles() -> usize {
    std::env::var("BENCH_VEHICLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(VEHICLES)
        .max(VEHICLES)
}
/// Vehicles whose manifests are measured: the first one at a time, then as many by each
/// of [`CLIENTS`] clients that wait for their answers, the rest many at once.
const MANIFESTS: usize = 6_000 + CLIENTS.len() * ONE_AT_A_TIME;
const ONE_AT_A_TIME: usize = 1_000;
/// A few clients, each sending its next manifest once the last is answered: under the
/// writer's commit spacing (`director/src/db.rs`, `COMMIT_SPACING`) they share commits and
/// go at the slowest one's pace; this row measures what that costs or gains.
const CLIENTS: [usize; 2] = [2, 4];
const IN_FLIGHT: usize = 64;

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

fn vin(i: usize) -> String {
    format!("VIN{i:06}")
}

fn ecu_key(i: usize, j: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed[8] = j as u8;
    SigningKey::from_seed(seed)
}

/// Bulk registration in one transaction: benchmark setup only.
fn seed(db: &Db) {
    db.call_blocking(|conn| {
        let tx = conn.savepoint()?;
        for i in 0..vehicles() {
            let v = vin(i);
            tx.execute(
                "INSERT INTO vehicles (vin, credential_sha256, created_at) VALUES (?1, ?2, 'now')",
                params![v, sha256_hex(format!("cred-{v}").as_bytes())],
            )?;
            for j in 0..3 {
                // Keys only matter for the vehicles whose manifests are measured.
                let key = if i < MANIFESTS { ecu_key(i, j) } else { ecu_key(0, j) };
                tx.execute(
                    "INSERT INTO ecus (serial, vin, hardware_id, public_key, is_primary) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![format!("{v}-{j}"), v, format!("hw-{j}"), key.public_key().to_json().to_string(), j == 0],
                )?;
            }
        }
        tx.commit()?;
        Ok::<_, director::error::DirectorError>(())
    })
    .unwrap();
}

fn manifest(i: usize) -> Vec<u8> {
    let v = vin(i);
    let reports: BTreeMap<EcuSerial, Vec<u8>> = (0..3)
        .map(|j| {
            let serial: EcuSerial = format!("{v}-{j}").parse().unwrap();
            let report = EcuVersionReport {
                report_type: ECU_REPORT_TYPE.into(),
                ecu_serial: serial.clone(),
                installed_image: InstalledImage {
                    filename: format!("fw-{j}.bin"),
                    length: 1_048_576,
                    hashes: uptane_core::hash::standard_hashes(serial.as_str().as_bytes()),
                    release_counter: 1,
                },
                attacks_detected: vec![],
                latest_time: now(),
                nonce: format!("nonce-{i}-{j}"),
                report_counter: 1,
                last_install: None,
            };
            (serial, report.sign(&ecu_key(i, j)).unwrap())
        })
        .collect();
    let primary: EcuSerial = format!("{v}-0").parse().unwrap();
    VehicleVersionManifest::new(&v.parse().unwrap(), &primary, &reports)
        .unwrap()
        .sign(&ecu_key(i, 0))
        .unwrap()
}

/// wrk's threads.
const WRK_THREADS: usize = 2;

/// What one run of `wrk` printed that the bench reports.
struct WrkRun {
    /// Its rate, any non-2xx answers and socket errors, and the server's CPU per request.
    line: String,
    /// Requests that named a vehicle its thread had named before.
    again: u64,
}

/// wrk for `seconds` with requests naming vehicles `first` and up, `count` of them in turn.
fn wrk(url: &str, first: usize, count: usize, seconds: u32) -> WrkRun {
    if std::env::var_os("BENCH_STATIC").is_some() {
        let vin = vin(first);
        return run_wrk(&[
            format!("-t{WRK_THREADS}"),
            format!("-c{}", connections()),
            format!("-d{seconds}s"),
            "-H".into(),
            format!("Authorization: Bearer cred-{vin}"),
            format!("{url}/vehicles/{vin}/metadata/timestamp.json"),
        ]);
    }
    // Each of wrk's threads runs the script in a Lua state of its own: the threads take
    // every other vehicle (`setup` hands each its offset), so no vehicle is asked for by both
    // at once (one request would sign and the other find it signed, or both sign). Each
    // counts the requests past its share, which name a vehicle again; `done` sums them.
    // (wrk calls `request` once in the first thread's state to check the script before the
    // run, so that thread's first vehicle is never asked for and its share is one fewer.)
    // The request is written out as `wrk.format` would write it (wrk sets the Host header
    // before the run), without that function's tables: wrk shares the two cores with the
    // server, and each µs of its CPU per request is one the server does not get (about a
    // tenth less of wrk's CPU per request than with `wrk.format`, `docs/BENCHMARKS.md`).
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        script.path(),
        format!(
            r#"local threads = {{}}
setup = function(thread)
  thread:set("offset", #threads)
  table.insert(threads, thread)
end
counter = 0
again = 0
request = function()
  local index = offset + counter * {WRK_THREADS}
  if index >= {count} then again = again + 1 end
  local vin = string.format("VIN%06d", {first} + (index % {count}))
  counter = counter + 1
  return "GET /vehicles/" .. vin .. "/metadata/timestamp.json HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\nAuthorization: Bearer cred-" .. vin .. "\r\n\r\n"
end
done = function(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("again") end
  io.write(string.format("named again: %d\n", total))
end
"#
        ),
    )
    .unwrap();
    run_wrk(&[
        format!("-t{WRK_THREADS}"),
        format!("-c{}", connections()),
        format!("-d{seconds}s"),
        "-s".into(),
        script.path().display().to_string(),
        url.into(),
    ])
}

fn connections() -> usize {
    std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32)
}

/// This process's CPU seconds so far (the Director's, in this bench).
fn cpu() -> f64 {
    uptane_tests::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// wrk's rate, and the server's CPU per request (this process's CPU while wrk ran, wrk
/// being another process): the figure that co-tenants' load moves least.
fn run_wrk(args: &[String]) -> WrkRun {
    let before = cpu();
    let wrk_before = uptane_tests::children_cpu_seconds().unwrap_or(0.0);
    match std::process::Command::new("wrk").args(args).output() {
        Ok(out) => {
            let spent = cpu() - before;
            let wrk_spent = uptane_tests::children_cpu_seconds().unwrap_or(0.0) - wrk_before;
            let text = String::from_utf8_lossy(&out.stdout);
            let requests: f64 = text
                .lines()
                .find_map(|l| l.trim().split_once(" requests in"))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or(0.0);
            let again = text
                .lines()
                .find_map(|l| l.strip_prefix("named again: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            // Failures answer fast: a rate that counts them would flatter the server.
            let mut parts: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    l.starts_with("Requests/sec")
                        || l.starts_with("Non-2xx")
                        || l.starts_with("Socket errors")
                })
                .map(str::to_string)
                .collect();
            if requests > 0.0 {
                parts.push(format!(
                    "server CPU {:.1} µs per request",
                    spent * 1e6 / requests
                ));
                parts.push(format!(
                    "wrk's CPU {:.1} µs per request",
                    wrk_spent * 1e6 / requests
                ));
            }
            WrkRun {
                line: parts.join("; "),
                again,
            }
        }
        Err(_) => WrkRun {
            line: "wrk is not installed (apt-get install wrk)".into(),
            again: 0,
        },
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("director.db")).unwrap();
    let start = Instant::now();
    seed(&db);
    println!(
        "registered {} vehicles with 3 ECUs each in {:.1} s",
        vehicles(),
        start.elapsed().as_secs_f64()
    );

    let manifests: Vec<Vec<u8>> = (0..MANIFESTS).map(manifest).collect();
    let policy = Policy::default();
    // Each vehicle's ECU keys, made before the clock starts.
    let public: Vec<Vec<_>> = (0..1000)
        .map(|i| (0..3).map(|j| ecu_key(i, j).public_key().clone()).collect())
        .collect();
    let start = Instant::now();
    for (bytes, keys) in manifests.iter().zip(&public) {
        let m = uptane_core::verify::Raw::<VehicleVersionManifest>::new(bytes.clone());
        // Its own Primary's key: with another, the one signature would be skipped unchecked.
        std::hint::black_box(uptane_core::manifest::verify_vehicle_manifest(&m, &keys[0]).unwrap());
    }
    println!(
        "  (of which parsing and one signature check alone: {:.0}/s)",
        1000.0 / start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    for (bytes, keys) in manifests.iter().zip(&public) {
        let m = uptane_core::verify::Raw::<VehicleVersionManifest>::new(bytes.clone());
        let verified = uptane_core::manifest::verify_vehicle_manifest(&m, &keys[0]).unwrap();
        for (serial, key) in verified.ecu_version_reports.keys().zip(keys) {
            let report = verified.report(serial).unwrap();
            uptane_core::manifest::verify_ecu_report(&report, key).unwrap();
        }
    }
    println!(
        "  (of which the four signature checks and reading, without the database: {:.0}/s on one core)",
        1000.0 / start.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let keys = OnlineKeys {
            targets: ecu_key(1 << 40, 1),
            snapshot: ecu_key(1 << 40, 2),
            timestamp: ecu_key(1 << 40, 3),
        };
        let root_key = ecu_key(1 << 40, 4);
        db.call_blocking(|conn| {
            service::store_initial_root(
                conn,
                &[&root_key],
                1,
                &keys,
                chrono::Duration::days(365),
                now(),
            )
        })
        .unwrap();
        let catalog = ImageCatalog::memory(HashMap::new(), Vec::new());
        let state = AppState {
            service: DirectorService::new(
                db.clone(),
                service::KeyRing::fixed(keys),
                catalog,
                policy,
            )
            .unwrap(),
            max_body_bytes: 1 << 20,
        };
        // Manifests through the service, as the HTTP handler calls it: first one at a time
        // (each waits for its own commit), then by a few clients each waiting for its
        // answer, then IN_FLIGHT at once (group commit).
        let service = state.service.clone();
        let post = move |i: usize, bytes: Vec<u8>| {
            let service = service.clone();
            async move {
                let auth = service::VehicleAuth {
                    bearer: Some(format!("cred-{}", vin(i))),
                    certificate: None,
                };
                let vehicle = service.authorize(vin(i).parse().unwrap(), auth).await.unwrap();
                service.manifest(vehicle, bytes).await.unwrap();
            }
        };
        let start = Instant::now();
        for (i, bytes) in manifests.iter().enumerate().take(ONE_AT_A_TIME) {
            post(i, bytes.clone()).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "manifests verified and recorded, one at a time: {ONE_AT_A_TIME} in {elapsed:.2} s = {:.0}/s",
            ONE_AT_A_TIME as f64 / elapsed
        );
        let mut next = ONE_AT_A_TIME;
        for clients in CLIENTS {
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for client in 0..clients {
                let mine: Vec<(usize, Vec<u8>)> = (next..next + ONE_AT_A_TIME)
                    .skip(client)
                    .step_by(clients)
                    .map(|i| (i, manifests[i].clone()))
                    .collect();
                let post = post.clone();
                tasks.spawn(async move {
                    for (i, bytes) in mine {
                        post(i, bytes).await;
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
            let elapsed = start.elapsed().as_secs_f64();
            println!(
                "manifests verified and recorded, {clients} clients each waiting for its answer: {ONE_AT_A_TIME} in {elapsed:.2} s = {:.0}/s",
                ONE_AT_A_TIME as f64 / elapsed
            );
            next += ONE_AT_A_TIME;
        }
        let start = Instant::now();
        let cpu_before = cpu();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, bytes) in manifests.iter().enumerate().skip(next) {
            if tasks.len() >= IN_FLIGHT {
                tasks.join_next().await.unwrap().unwrap();
            }
            tasks.spawn(post(i, bytes.clone()));
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "manifests verified and recorded, {IN_FLIGHT} in flight (group commit): {} in {elapsed:.2} s = {:.0}/s; CPU {:.0} µs per manifest",
            MANIFESTS - next,
            (MANIFESTS - next) as f64 / elapsed,
            (cpu() - cpu_before) * 1e6 / (MANIFESTS - next) as f64
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(director::api::serve(
            listener,
            Transport::Plaintext,
            state.clone(),
            std::future::pending(),
        ));
        // The same service over TLS (an ECDSA P-256 certificate from a test CA; wrk keeps
        // its 32 connections open, as Primaries behind one gateway would not, so this is
        // the per-request cost of TLS, not of handshakes).
        let ca = service_runtime::pki::Ca::generate("bench CA").unwrap();
        let identity = ca.issue_server(&["127.0.0.1"]).unwrap().identity().unwrap();
        let tls = ServerTls::fixed(
            service_runtime::tls::server_config(&identity, &ClientAuth::Pinned).unwrap(),
        );
        let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_url = format!("https://{}", tls_listener.local_addr().unwrap());
        tokio::spawn(director::api::serve(
            tls_listener,
            Transport::Tls(tls),
            state,
            std::future::pending(),
        ));
        let fresh_url = url.clone();
        // Five seconds: at up to 9,000/s per thread (18,000/s) no vehicle is asked for twice.
        let fresh = tokio::task::spawn_blocking(move || {
            wrk(&fresh_url, 10_000, vehicles() - 10_000, 5)
        })
        .await
        .unwrap();
        let mut line = fresh.line;
        if fresh.again > 0 {
            // Those found what their first request signed: the rate is no longer of one kind.
            line.push_str(&format!(
                "; {} requests named a vehicle a second time (raise BENCH_VEHICLES)",
                fresh.again
            ));
        }
        println!(
            "metadata requests, vehicles needing new signed metadata (sign per request): {line}"
        );
        let warm = tokio::task::spawn_blocking(move || wrk(&url, 10_000, 2_000, 10).line)
            .await
            .unwrap();
        println!("metadata requests, vehicles with current metadata, plaintext: {warm}");
        let warm_tls = tokio::task::spawn_blocking(move || wrk(&tls_url, 10_000, 2_000, 10).line)
            .await
            .unwrap();
        println!("metadata requests, vehicles with current metadata, TLS 1.3: {warm_tls}");
    });
    cache_in_turn();
}

/// Row 3: the default capacity (`--cached-vehicles`), a fleet of five times it.
fn cache_in_turn() {
    use director::service::cache::{CachedTimestamp, VehicleCache};
    const CAPACITY: usize = 200_000;
    const FLEET: usize = 5 * CAPACITY;
    let cache = VehicleCache::new(CAPACITY);
    let vins: Vec<uptane_core::ids::Vin> = (0..FLEET)
        .map(|i| format!("CACHE{i:012}").parse().unwrap())
        .collect();
    let timestamp = CachedTimestamp {
        bytes: bytes::Bytes::from(vec![b' '; 600]),
        expires: uptane_core::time::UtcTime::MAX_UTC,
        root_version: 1,
    };
    let poll_all = || {
        for vin in &vins {
            if cache.timestamp(vin).is_none() {
                let ticket = cache.ticket();
                cache.keep_timestamp(vin, ticket, timestamp.clone());
            }
        }
    };
    // Two rounds to fill it and let it settle, then one timed.
    poll_all();
    poll_all();
    let (hits, misses) = cache.hits_and_misses();
    let start = Instant::now();
    poll_all();
    let elapsed = start.elapsed().as_secs_f64();
    let (hits_after, misses_after) = cache.hits_and_misses();
    let answered = hits_after - hits;
    println!(
        "vehicle cache of {CAPACITY}, {FLEET} vehicles polling in turn: {:.0} polls/s on one core; {:.1}% answered from memory ({answered} of {})",
        FLEET as f64 / elapsed,
        answered as f64 * 100.0 / FLEET as f64,
        answered + misses_after - misses
    );
}
