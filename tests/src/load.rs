//! `fleet-sim load`: simulated vehicles polling the real Director and Image repository.
//!
//! Each simulated vehicle has a Primary and two Secondaries with their own ed25519 keys and
//! does what a Primary does on every cycle, over HTTPS: the Director's `timestamp.json` (and
//! its snapshot and targets when they changed), the Image repository's `timestamp.json`, and
//! a vehicle version manifest of three signed ECU reports with fresh nonces and rising
//! counters. Vehicles are spread evenly over the poll interval. A campaign assigns an update
//! to a share of the fleet, spread over one poll interval; the vehicles it reaches report it
//! installed on their next cycle, as a Primary would after installing it. The run prints
//! requests per second, latency percentiles per route (each request timed from when the
//! vehicle would send it, so the time it waits in the generator for a place among the
//! requests in flight counts, as it would in a server's queue), errors by kind, and the
//! servers' CPU time and peak memory, and fails on any error, on a cycle that ends after the
//! vehicle's next one is due, on a schedule the servers fall behind (served slower than
//! the fleet polls), and, with `--max-p99-ms`, on a p99 latency above it. A warm-up
//! (`--warmup`) polls before the measurement: the fleet's first polls, each signing a
//! vehicle's metadata for the first time, are then reported apart (and fail the run only by
//! an error).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uptane_core::crypto::SigningKey;
use uptane_core::hash::{Hashes, sha256_hex, standard_hashes};
use uptane_core::ids::{EcuSerial, Vin};
use uptane_core::manifest::{
    ECU_REPORT_TYPE, EcuVersionReport, InstallResult, InstalledImage, LastInstall,
    VehicleVersionManifest,
};

use crate::sim::Fleet;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadArgs {
    /// Simulated vehicles.
    pub vehicles: usize,
    /// Seconds between two cycles of a vehicle.
    pub poll_secs: u64,
    /// Seconds of polling measured (after registration and the warm-up).
    pub duration_secs: u64,
    /// Seconds of polling before the measurement (the fleet's first polls), reported apart.
    pub warmup_secs: u64,
    /// Percent of the fleet the campaign assigns an update to.
    pub campaign_percent: u32,
    /// Requests in flight at most (and so connections to each server).
    pub connections: usize,
    /// Where the Director keeps its state: `sqlite` (in its directory), `postgres` (a
    /// throwaway cluster, or the server `DIRECTOR_TEST_POSTGRES` names), or `postgres://…`
    /// (a new database on that server).
    pub database: String,
    /// Director processes on that database (replicas); vehicle `i` talks to replica
    /// `i % directors`, as DNS round robin would spread them.
    pub directors: usize,
    /// The run fails when the p99 latency of all vehicle requests is above this many
    /// milliseconds (a target such as `../shared/reference/performance.md`'s 50 ms checked by
    /// the run, not by whoever reads its table).
    pub max_p99_ms: Option<f64>,
}

/// A simulated vehicle: a Primary and two Secondaries with their own keys, reporting what
/// they run in signed manifests (also used by the group-commit durability test).
pub struct Car {
    /// Its VIN.
    pub vin: Vin,
    /// Its Director credential, once registered.
    pub credential: String,
    serials: [EcuSerial; 3],
    keys: [SigningKey; 3],
    /// The report counter of its last manifest.
    pub counter: u64,
    installed: [InstalledImage; 3],
    last_install: [Option<LastInstall>; 3],
    director_snapshot: Option<u64>,
    /// Whether an update assigned by the campaign was installed.
    updated: bool,
    /// A cycle is under way (a Primary runs one at a time).
    busy: bool,
}

const HARDWARE: [&str; 3] = ["load-gateway", "load-body", "load-door"];
const UPDATE: &str = "load/door-2.bin";
/// Requests in flight at most on one client's connection.
const PER_CLIENT: usize = 8;

/// The shared parts of a run.
struct Load {
    /// HTTP clients, each multiplexing up to [`PER_CLIENT`] requests on its HTTP/2
    /// connection to each server (below the servers' stream limit per connection).
    clients: Vec<reqwest::Client>,
    /// The replicas' base URLs.
    directors: Vec<String>,
    image: String,
    operator: String,
    limits: Vec<tokio::sync::Semaphore>,
    latencies: Mutex<BTreeMap<&'static str, Vec<u32>>>,
    /// The latencies of vehicle requests during the warm-up, in microseconds.
    warmup: Mutex<Vec<u32>>,
    /// How long vehicle requests waited in the generator (for a worker thread, then a place
    /// in flight), in microseconds.
    waits: Mutex<Vec<u32>>,
    /// How long after its scheduled time each cycle was started, in microseconds.
    scheduler_behind: Mutex<Vec<u32>>,
    errors: Mutex<BTreeMap<String, u64>>,
    run: String,
}

/// Which figures a request's latency goes to: decided by when its cycle was due, not by when
/// it finished, so that a cycle of the warm-up still running once the measurement starts
/// stays on the warm-up's line and the table holds exactly the measured cycles' requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Registration: not timed.
    Setup,
    /// A cycle due before the measurement: the warm-up's line.
    Warmup,
    /// A cycle due in the measured run, or the operator's campaign: the table.
    Measured,
}

impl Load {
    /// The Director replica vehicle `slot` talks to.
    fn director(&self, slot: usize) -> &str {
        &self.directors[slot % self.directors.len()]
    }

    /// The client vehicle `slot` uses.
    fn client(&self, slot: usize) -> &reqwest::Client {
        &self.clients[slot % self.clients.len()]
    }

    fn error(&self, kind: String) {
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(kind)
            .or_default() += 1;
    }

    /// One vehicle request, within its client's share of requests in flight: timed under
    /// `route` from `due`, when the vehicle meant to send it, so that the time it waits here
    /// for a connection's share counts (a real vehicle has its own connection and would
    /// wait in the server's queue instead); its body on success.
    async fn send(
        &self,
        slot: usize,
        route: &'static str,
        request: reqwest::RequestBuilder,
        due: Instant,
        phase: Phase,
    ) -> Option<bytes::Bytes> {
        let _permit = self.limits[slot % self.limits.len()].acquire().await.ok()?;
        if phase == Phase::Measured {
            self.waits
                .lock()
                .expect("waits lock")
                .push(micros_since(due));
        }
        self.exchange(route, request, due, phase).await
    }

    /// One request, timed under `route` from `due`, its body on success. The operator's
    /// requests come here directly: an operator does not queue behind the fleet's polls.
    async fn exchange(
        &self,
        route: &'static str,
        request: reqwest::RequestBuilder,
        due: Instant,
        phase: Phase,
    ) -> Option<bytes::Bytes> {
        let sent = request.send().await;
        let outcome = match sent {
            Ok(response) if response.status().is_success() => response
                .bytes()
                .await
                .map_err(|e| format!("{route}: body: {e}")),
            Ok(response) => Err(format!("{route}: HTTP {}", response.status().as_u16())),
            Err(e) if e.is_timeout() => Err(format!("{route}: timeout")),
            Err(e) if e.is_connect() => Err(format!("{route}: connect")),
            Err(e) => Err(format!(
                "{route}: {}",
                service_runtime::error_chain(&e.without_url())
            )),
        };
        let micros = micros_since(due);
        match phase {
            Phase::Measured => self
                .latencies
                .lock()
                .expect("latencies lock")
                .entry(route)
                .or_default()
                .push(micros),
            Phase::Warmup => self.warmup.lock().expect("warm-up lock").push(micros),
            Phase::Setup => {}
        }
        match outcome {
            Ok(body) => Some(body),
            Err(kind) => {
                self.error(kind);
                None
            }
        }
    }
}

/// Microseconds since `start`, saturating.
fn micros_since(start: Instant) -> u32 {
    micros(start.elapsed())
}

/// Whole microseconds, saturating: a latency sample is kept in 32 bits.
fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Attempts of one operator assignment when the Director answers 503.
const ASSIGN_ATTEMPTS: u32 = 3;

fn seed(run: &str, vehicle: usize, ecu: usize) -> [u8; 32] {
    let hex = sha256_hex(format!("{run}/{vehicle}/{ecu}").as_bytes());
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digits");
    }
    seed
}

fn factory_image(ecu: usize) -> InstalledImage {
    let bytes = format!("factory image of {}", HARDWARE[ecu]);
    InstalledImage {
        filename: format!("load/{}-1.bin", HARDWARE[ecu]),
        length: bytes.len() as u64,
        hashes: standard_hashes(bytes.as_bytes()),
        release_counter: 1,
    }
}

impl std::fmt::Debug for Car {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not its keys or credential.
        f.debug_struct("Car")
            .field("vin", &self.vin)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Car {
    /// Vehicle `i` of run `run` (keys derived from both).
    pub fn new(run: &str, i: usize) -> Self {
        let vin: Vin = format!("LOAD{i:07}").parse().expect("a valid VIN");
        let serials = [0, 1, 2].map(|j| {
            format!("{vin}-{}", ["gw", "body", "door"][j])
                .parse::<EcuSerial>()
                .expect("a valid serial")
        });
        Self {
            serials,
            keys: [0, 1, 2].map(|j| SigningKey::from_seed(seed(run, i, j))),
            vin,
            credential: String::new(),
            counter: 0,
            installed: [0, 1, 2].map(factory_image),
            last_install: [None, None, None],
            director_snapshot: None,
            updated: false,
            busy: false,
        }
    }

    /// Its registration, as `POST /api/v1/vehicles` takes it.
    pub fn registration(&self) -> Value {
        json!({
            "vin": self.vin,
            "ecus": (0..3).map(|j| json!({
                "serial": self.serials[j],
                "hardware_id": HARDWARE[j],
                "public_key": self.keys[j].public_key().to_json(),
                "primary": j == 0,
            })).collect::<Vec<_>>(),
        })
    }

    /// Registers it through the Director at `director` as the operator whose token is
    /// `operator` (`POST /api/v1/vehicles`), keeping the credential issued.
    pub async fn register(
        &mut self,
        client: &reqwest::Client,
        director: &str,
        operator: &str,
    ) -> Result<(), String> {
        let response = self
            .send_registration(client, &format!("{director}/api/v1/vehicles"), operator)
            .await
            .map_err(|e| format!("registering {}: {e}", self.vin))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("registering {}: HTTP {status}", self.vin));
        }
        let issued: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        self.credential = issued["credential"]
            .as_str()
            .ok_or_else(|| format!("registering {}: no credential in {issued}", self.vin))?
            .into();
        Ok(())
    }

    /// Registers it through the Director at `director` with provisioning token `token`
    /// (`POST /api/v1/register`): the status and the body, whatever they are.
    pub async fn register_with_token(
        &self,
        client: &reqwest::Client,
        director: &str,
        token: &str,
    ) -> reqwest::Result<(u16, String)> {
        let response = self
            .send_registration(client, &format!("{director}/api/v1/register"), token)
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// POSTs its registration to `url` with bearer `token`.
    async fn send_registration(
        &self,
        client: &reqwest::Client,
        url: &str,
        token: &str,
    ) -> reqwest::Result<reqwest::Response> {
        client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(self.registration().to_string())
            .send()
            .await
    }

    /// Posts `body` (a manifest of [`Car::manifest`]) to the Director at `director` with
    /// its credential.
    pub async fn post_manifest(
        &self,
        client: &reqwest::Client,
        director: &str,
        body: Vec<u8>,
    ) -> reqwest::Result<reqwest::Response> {
        client
            .post(format!("{director}/vehicles/{}/manifest", self.vin))
            .bearer_auth(&self.credential)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
    }

    /// The signed vehicle version manifest of its next cycle (counter one higher).
    pub fn manifest(&mut self, run: &str) -> Vec<u8> {
        self.counter += 1;
        let now: uptane_core::time::UtcTime = std::time::SystemTime::now().into();
        let reports: BTreeMap<EcuSerial, Vec<u8>> = (0..3)
            .map(|j| {
                let report = EcuVersionReport {
                    report_type: ECU_REPORT_TYPE.into(),
                    ecu_serial: self.serials[j].clone(),
                    installed_image: self.installed[j].clone(),
                    attacks_detected: vec![],
                    latest_time: now,
                    nonce: sha256_hex(
                        format!("{run}/{}/{j}/{}", self.vin, self.counter).as_bytes(),
                    ),
                    report_counter: self.counter,
                    last_install: self.last_install[j].clone(),
                };
                let signed = report.sign(&self.keys[j]).expect("a report signs");
                (self.serials[j].clone(), signed)
            })
            .collect();
        VehicleVersionManifest::new(&self.vin, &self.serials[0], &reports)
            .expect("reports are JSON")
            .sign(&self.keys[0])
            .expect("a manifest signs")
    }

    /// Takes what the Director's targets assign to this vehicle's ECUs as installed (the
    /// simulated install succeeds at once).
    fn install_from(&mut self, targets: &Value) {
        let Some(listed) = targets["signed"]["targets"].as_object() else {
            return;
        };
        for (name, target) in listed {
            let custom = &target["custom"];
            for j in 0..3 {
                if custom["ecuIdentifiers"]
                    .get(self.serials[j].as_str())
                    .is_none()
                {
                    continue;
                }
                let hashes: Hashes =
                    serde_json::from_value(target["hashes"].clone()).unwrap_or_default();
                let image = InstalledImage {
                    filename: name.clone(),
                    length: target["length"].as_u64().unwrap_or_default(),
                    hashes,
                    release_counter: custom["releaseCounter"].as_u64().unwrap_or_default(),
                };
                if image != self.installed[j] {
                    self.installed[j] = image;
                    // The ECU's own assignment (docs/POUF.md, "Correlation ids").
                    let correlation_id =
                        custom["ecuIdentifiers"][self.serials[j].as_str()]["correlationId"]
                            .as_str()
                            .or(custom["correlationId"].as_str())
                            .unwrap_or("");
                    self.last_install[j] = Some(LastInstall {
                        correlation_id: correlation_id.into(),
                        result: InstallResult::Installed,
                        detail: String::new(),
                    });
                    self.updated = true;
                }
            }
        }
    }
}

fn version_of(body: &[u8], meta: &str) -> Option<u64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value["signed"]["meta"][meta]["version"].as_u64()
}

/// One cycle of vehicle `car`, started at `started`, unless its previous one is still under
/// way (`false`: skipped).
async fn cycle(load: &Load, slot: usize, car: &Mutex<Car>, started: Instant, phase: Phase) -> bool {
    {
        let mut car = car.lock().expect("car lock");
        if car.busy {
            return false;
        }
        car.busy = true;
    }
    cycle_steps(load, slot, car, started, phase).await;
    car.lock().expect("car lock").busy = false;
    true
}

/// The requests of one cycle, as a Primary makes them: the first timed from `started` (its
/// wait for a worker thread and a connection's share counts), each next one from when the
/// answer before it came.
async fn cycle_steps(load: &Load, slot: usize, car: &Mutex<Car>, started: Instant, phase: Phase) {
    let (vin, credential, known) = {
        let car = car.lock().expect("car lock");
        (
            car.vin.clone(),
            car.credential.clone(),
            car.director_snapshot,
        )
    };
    let director = |file: &str| {
        load.client(slot)
            .get(format!(
                "{}/vehicles/{vin}/metadata/{file}",
                load.director(slot)
            ))
            .bearer_auth(&credential)
    };
    let Some(timestamp) = load
        .send(
            slot,
            "director timestamp",
            director("timestamp.json"),
            started,
            phase,
        )
        .await
    else {
        return;
    };
    let Some(snapshot_version) = version_of(&timestamp, "snapshot.json") else {
        load.error("director timestamp: unreadable".into());
        return;
    };
    if known != Some(snapshot_version) {
        let file = format!("{snapshot_version}.snapshot.json");
        let Some(snapshot) = load
            .send(
                slot,
                "director snapshot",
                director(&file),
                Instant::now(),
                phase,
            )
            .await
        else {
            return;
        };
        let Some(targets_version) = version_of(&snapshot, "targets.json") else {
            load.error("director snapshot: unreadable".into());
            return;
        };
        let file = format!("{targets_version}.targets.json");
        let Some(targets) = load
            .send(
                slot,
                "director targets",
                director(&file),
                Instant::now(),
                phase,
            )
            .await
        else {
            return;
        };
        let Ok(targets) = serde_json::from_slice::<Value>(&targets) else {
            load.error("director targets: unreadable".into());
            return;
        };
        let mut car = car.lock().expect("car lock");
        car.install_from(&targets);
        car.director_snapshot = Some(snapshot_version);
    }
    let image_timestamp = load
        .client(slot)
        .get(format!("{}/metadata/timestamp.json", load.image));
    load.send(
        slot,
        "image timestamp",
        image_timestamp,
        Instant::now(),
        phase,
    )
    .await;
    let manifest = car.lock().expect("car lock").manifest(&load.run);
    let post = load
        .client(slot)
        .post(format!("{}/vehicles/{vin}/manifest", load.director(slot)))
        .bearer_auth(&credential)
        .header("content-type", "application/json")
        .body(manifest);
    load.send(slot, "director manifest", post, Instant::now(), phase)
        .await;
}

/// CPU seconds of every process named `postgres` on this machine (the server's backends, one
/// per connection, and its background processes), when the Director runs on PostgreSQL.
fn postgres_cpu() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(crate::cpu_seconds)
        .sum()
}

/// CPU seconds (user + system) and peak resident memory (KiB) of process `pid`.
fn usage(pid: u32) -> Option<(f64, u64)> {
    Some((crate::cpu_seconds(pid)?, crate::peak_rss_kib(pid)?))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// Runs the load test; `Ok` with the report when nothing failed, `Err` with it otherwise.
pub fn run(args: &LoadArgs) -> Result<String, String> {
    if args.vehicles == 0 || args.poll_secs == 0 || args.duration_secs == 0 {
        return Err("--vehicles, --poll-secs and --duration must be above 0".into());
    }
    if args.directors == 0 {
        return Err("--directors must be above 0".into());
    }
    // Kept for the run: a throwaway cluster is stopped when it is dropped.
    let chosen = crate::postgres::ChosenDatabase::from_arg(&args.database)?;
    let database = chosen.database.clone();
    if database.is_none() && args.directors > 1 {
        return Err(
            "replicas (--directors above 1) run on PostgreSQL: add --database postgres".into(),
        );
    }
    println!(
        "starting {} Director process(es) on {} and an Image repository (release engineering, key ceremonies)",
        args.directors,
        chosen.describe()
    );
    let mut fleet = Fleet::start_on_database(database);
    for _ in 1..args.directors {
        fleet.add_director_replica();
    }
    fleet.publish_through_server();
    let update = b"door firmware 2, load test";
    fleet.publish(UPDATE, HARDWARE[2], 2, update);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;
    let result = runtime.block_on(drive(args, &fleet));
    drop(runtime);
    drop(fleet);
    result
}

async fn drive(args: &LoadArgs, fleet: &Fleet) -> Result<String, String> {
    let run = format!(
        "{:?}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    );
    let slots = args.connections.div_ceil(PER_CLIENT).max(1);
    let clients = (0..slots)
        .map(|_| {
            service_runtime::http::ClientTls::new(Some(&fleet.ca_cert), None, false)
                .and_then(|tls| tls.reqwest())
                .map_err(|e| format!("a TLS client: {e}"))?
                .build()
                .map_err(|e| format!("an HTTP client: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let load = Arc::new(Load {
        clients,
        directors: fleet.director_urls(),
        image: fleet.image_url.clone(),
        operator: fleet.token.clone(),
        limits: (0..slots)
            .map(|_| tokio::sync::Semaphore::new(PER_CLIENT))
            .collect(),
        latencies: Mutex::default(),
        warmup: Mutex::default(),
        waits: Mutex::default(),
        scheduler_behind: Mutex::default(),
        errors: Mutex::default(),
        run,
    });
    let director_pids = fleet.director_pids();
    if director_pids.len() != args.directors {
        return Err("a Director is not running".into());
    }
    // Every replica's CPU together, and the highest peak memory of one.
    let directors_usage = || {
        director_pids
            .iter()
            .filter_map(|&pid| usage(pid))
            .fold((0.0, 0), |(cpu, rss), (c, r)| (cpu + c, rss.max(r)))
    };
    let image_pid = fleet.image_repo_pid();

    // Registration, by the operator, many at a time.
    let started = Instant::now();
    let cars: Arc<Vec<Mutex<Car>>> = Arc::new(
        (0..args.vehicles)
            .map(|i| Mutex::new(Car::new(&load.run, i)))
            .collect(),
    );
    println!(
        "{} vehicles with 3 ECUs each: keys made in {:.1} s",
        args.vehicles,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.connections.max(1) {
        let (load, cars, next) = (Arc::clone(&load), Arc::clone(&cars), Arc::clone(&next));
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(car) = cars.get(i) else { break };
                let body = car.lock().expect("car lock").registration();
                let request = load
                    .client(i)
                    .post(format!("{}/api/v1/vehicles", load.director(i)))
                    .bearer_auth(&load.operator)
                    .header("content-type", "application/json")
                    .body(body.to_string());
                let Some(issued) = load
                    .send(i, "register", request, Instant::now(), Phase::Setup)
                    .await
                else {
                    continue;
                };
                let issued: Value = serde_json::from_slice(&issued).unwrap_or_default();
                car.lock().expect("car lock").credential =
                    issued["credential"].as_str().unwrap_or_default().into();
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let registration = started.elapsed().as_secs_f64();
    println!(
        "registered {} vehicles through the operator API in {registration:.1} s ({:.0}/s)",
        args.vehicles,
        args.vehicles as f64 / registration
    );
    if !load.errors.lock().expect("errors lock").is_empty() {
        return Err(format!(
            "registration failed: {:?}",
            load.errors.lock().expect("errors lock")
        ));
    }

    // Polling: vehicle i's cycles start at phase i/N of the interval; the warm-up's, then
    // the measured ones.
    let on_postgres = args.database != "sqlite";
    let poll = Duration::from_secs(args.poll_secs);
    let duration = Duration::from_secs(args.duration_secs);
    let warmup = Duration::from_secs(args.warmup_secs);
    let polling = tokio::time::Instant::now();
    let start = polling + warmup;
    let end = start + duration;
    let late = Arc::new(AtomicUsize::new(0));
    let warmup_late = Arc::new(AtomicUsize::new(0));
    let scheduler = {
        let (load, cars) = (Arc::clone(&load), Arc::clone(&cars));
        let (late, warmup_late) = (Arc::clone(&late), Arc::clone(&warmup_late));
        let n = args.vehicles;
        tokio::spawn(async move {
            let mut cycles = tokio::task::JoinSet::new();
            let mut scheduled = 0u64;
            for k in 0u64.. {
                let i = (k % n as u64) as usize;
                let due =
                    polling + poll * (k / n as u64) as u32 + poll.mul_f64(i as f64 / n as f64);
                if due >= end {
                    break;
                }
                // Cycles of the warm-up are neither counted nor, if late, failed.
                let (phase, late) = if due >= start {
                    scheduled += 1;
                    (Phase::Measured, Arc::clone(&late))
                } else {
                    (Phase::Warmup, Arc::clone(&warmup_late))
                };
                tokio::time::sleep_until(due).await;
                // The cycle is timed from here: the timer wakes up to a millisecond or two
                // past `due` even when idle; how late the scheduler itself ran is kept apart.
                let started = Instant::now();
                if phase == Phase::Measured {
                    let behind = started.saturating_duration_since(due.into_std());
                    load.scheduler_behind
                        .lock()
                        .expect("scheduler lock")
                        .push(micros(behind));
                }
                let (load, cars) = (Arc::clone(&load), Arc::clone(&cars));
                cycles.spawn(async move {
                    let ran = cycle(&load, i, &cars[i], started, phase).await;
                    // A cycle skipped because the last one was still running, or still
                    // running when the next one is due: the fleet was not served at the rate
                    // it polls.
                    if !ran || tokio::time::Instant::now() > due + poll {
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                });
                while cycles.try_join_next().is_some() {}
            }
            while cycles.join_next().await.is_some() {}
            (scheduled, tokio::time::Instant::now())
        })
    };

    tokio::time::sleep_until(start).await;
    let postgres_before = postgres_cpu();
    let (director_before, image_before, me_before) = (
        directors_usage(),
        usage(image_pid).unwrap_or_default(),
        usage(std::process::id()).unwrap_or_default(),
    );

    // The campaign: after a quarter of the measured run (at most one interval), a share of
    // the fleet, in batches spread over one poll interval.
    let campaign_at = (duration / 4).min(poll);
    tokio::time::sleep_until(start + campaign_at).await;
    let chosen: Vec<usize> = (0..args.vehicles)
        .filter(|i| (i * 100 / args.vehicles.max(1)) < args.campaign_percent as usize)
        .collect();
    let batches: Vec<&[usize]> = chosen.chunks(500).collect();
    // Over one interval, or half of what is left of the run if that is shorter.
    let spread = poll.min((duration - campaign_at) / 2);
    let assign_started = tokio::time::Instant::now();
    let mut assign_retries = 0;
    for (b, batch) in batches.iter().enumerate() {
        tokio::time::sleep_until(assign_started + spread.mul_f64(b as f64 / batches.len() as f64))
            .await;
        let vins: Vec<String> = batch
            .iter()
            .map(|&i| cars[i].lock().expect("car lock").vin.to_string())
            .collect();
        let body = json!({"image": UPDATE, "vins": vins, "hardware_id": HARDWARE[2]}).to_string();
        // The operator's call, tried again when the Director answers 503: the replicas'
        // concurrent writes made PostgreSQL break a deadlock, and the answer says "try again",
        // as an operator (or the campaign engine) does. Counted and printed, bounded.
        for attempt in 1..=ASSIGN_ATTEMPTS {
            let request = load
                .client(b)
                .post(format!("{}/api/v1/assignments", load.director(b)))
                .bearer_auth(&load.operator)
                .header("content-type", "application/json")
                .body(body.clone());
            if attempt < ASSIGN_ATTEMPTS {
                match request.send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                        assign_retries += 1;
                        continue;
                    }
                    Ok(r) if r.status().is_success() => break,
                    Ok(r) => load.error(format!("assign: HTTP {}", r.status().as_u16())),
                    Err(e) => load.error(format!("assign: {}", e.without_url())),
                }
                break;
            }
            load.exchange("assign", request, Instant::now(), Phase::Measured)
                .await;
        }
    }
    let assigned_in = assign_started.elapsed().as_secs_f64();
    let (scheduled, served_at) = scheduler
        .await
        .map_err(|e| format!("the load test's scheduler failed: {e}"))?;
    let elapsed = start.elapsed().as_secs_f64();
    let postgres_used = postgres_cpu() - postgres_before;
    let (director_after, image_after, me_after) = (
        directors_usage(),
        usage(image_pid).unwrap_or_default(),
        usage(std::process::id()).unwrap_or_default(),
    );

    // The report.
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "fleet-sim load: {} vehicles polling every {} s, measured for {elapsed:.1} s ({} requests in flight at most)",
        args.vehicles, args.poll_secs, args.connections
    ));
    line(format!(
        "{:<20} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "route", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"
    ));
    let latencies = std::mem::take(&mut *load.latencies.lock().expect("latencies lock"));
    let mut all = Vec::new();
    let row = |name: &str, sorted: &[u32], line: &mut dyn FnMut(String)| {
        line(format!(
            "{:<20} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name,
            sorted.len(),
            sorted.len() as f64 / elapsed,
            percentile(sorted, 50.0),
            percentile(sorted, 95.0),
            percentile(sorted, 99.0),
            percentile(sorted, 100.0)
        ))
    };
    for (route, mut values) in latencies {
        values.sort_unstable();
        row(route, &values, &mut line);
        if route != "assign" {
            all.extend(values);
        }
    }
    all.sort_unstable();
    row("all vehicle requests", &all, &mut line);
    let p99 = percentile(&all, 99.0);
    let too_slow = args.max_p99_ms.filter(|limit| p99 > *limit);
    let sorted = |values: &Mutex<Vec<u32>>| {
        let mut values = std::mem::take(&mut *values.lock().expect("values lock"));
        values.sort_unstable();
        values
    };
    let (waits, behind) = (sorted(&load.waits), sorted(&load.scheduler_behind));
    line(format!(
        "(each request timed from when the vehicle would send it: a cycle's first from when \
         the cycle started, the rest from the answer before; of that, waiting in the generator \
         for a worker thread and a place in flight: p50 {:.2}, p99 {:.2}, max {:.2} ms; \
         cycles started after \
         their scheduled time by p50 {:.2}, p99 {:.2}, max {:.2} ms, not counted)",
        percentile(&waits, 50.0),
        percentile(&waits, 99.0),
        percentile(&waits, 100.0),
        percentile(&behind, 50.0),
        percentile(&behind, 99.0),
        percentile(&behind, 100.0)
    ));
    if !warmup.is_zero() {
        let warmup_latencies = sorted(&load.warmup);
        line(format!(
            "warm-up of {} s before the measurement (each vehicle's first poll signs its \
             metadata for the first time and reads its credential into the Director's cache), \
             not in the table: {} vehicle requests, p50 {:.2}, p99 {:.2}, max {:.2} ms; {} of \
             its cycles late",
            warmup.as_secs(),
            warmup_latencies.len(),
            percentile(&warmup_latencies, 50.0),
            percentile(&warmup_latencies, 99.0),
            percentile(&warmup_latencies, 100.0),
            warmup_late.load(Ordering::Relaxed)
        ));
    }
    let errors = std::mem::take(&mut *load.errors.lock().expect("errors lock"));
    if errors.is_empty() {
        line("errors: none".into());
    } else {
        for (kind, n) in &errors {
            line(format!("error: {kind}: {n}"));
        }
    }
    if assign_retries > 0 {
        line(format!(
            "assign: tried again {assign_retries} time(s) after HTTP 503 (the database busy with \
             concurrent writes)"
        ));
    }
    let updated = chosen
        .iter()
        .filter(|&&i| cars[i].lock().expect("car lock").updated)
        .count();
    line(format!(
        "campaign: {} vehicles ({}%) assigned {UPDATE} in {assigned_in:.1} s; {updated} reported it installed",
        chosen.len(),
        args.campaign_percent
    ));
    if let Some(limit) = too_slow {
        line(format!(
            "error: the p99 of all vehicle requests, {p99:.3} ms, is above --max-p99-ms {limit}"
        ));
    }
    let late = late.load(Ordering::Relaxed);
    if late > 0 {
        line(format!(
            "error: {late} cycles ended after the vehicle's next cycle was due, or were skipped because the last one was still running: the fleet was not served at the rate it polls"
        ));
    }
    // A fleet served more slowly than it polls falls behind a little more every interval; a
    // short run ends before any cycle is a whole interval late, so the schedule's overrun is
    // checked too (the last cycle is due just before the end and takes milliseconds).
    let served_in = (served_at - start).as_secs_f64();
    let behind = served_in - duration.as_secs_f64() > 1.0 + duration.as_secs_f64() / 50.0;
    if behind {
        line(format!(
            "error: the cycles scheduled over {} s took {served_in:.1} s to serve: {:.0} cycles/s of the {:.0} the fleet asks",
            duration.as_secs(),
            scheduled as f64 / served_in,
            args.vehicles as f64 / poll.as_secs_f64()
        ));
    }
    let cpu = |name: &str, before: (f64, u64), after: (f64, u64), line: &mut dyn FnMut(String)| {
        let used = after.0 - before.0;
        line(format!(
            "{name:<12} CPU {used:.1} s ({:.2} cores), peak RSS {} MiB",
            used / elapsed,
            after.1 / 1024
        ))
    };
    let name = if args.directors == 1 {
        "director".to_string()
    } else {
        format!("{} directors", args.directors)
    };
    cpu(&name, director_before, director_after, &mut line);
    if on_postgres {
        line(format!(
            "{:<12} CPU {postgres_used:.1} s ({:.2} cores; every postgres process of this machine)",
            "postgresql",
            postgres_used / elapsed
        ));
    }
    cpu("image-repo", image_before, image_after, &mut line);
    cpu("generator", me_before, me_after, &mut line);
    // Every vehicle the campaign reached in time must have taken the update: those whose
    // first cycle after the last batch came with two intervals to spare.
    let must_update = elapsed - campaign_at.as_secs_f64() - assigned_in >= 2.0 * poll.as_secs_f64();
    if errors.is_empty()
        && late == 0
        && !behind
        && too_slow.is_none()
        && (!must_update || updated == chosen.len())
    {
        Ok(out)
    } else {
        if must_update && updated < chosen.len() {
            out.push_str(&format!(
                "error: {} assigned vehicles did not take the update\n",
                chosen.len() - updated
            ));
        }
        Err(out)
    }
}
