//! A fleet on 127.0.0.1 made of the real programs: an Image repository and a Director
//! (each a process, with its key ceremony done by its own `init`), and vehicles, each a
//! `primary-ecu` and `secondary-ecu` processes on simulated A/B devices. Operators act
//! through the `director` and `image-repo` commands, as they would by hand. `fleet-sim`, the
//! end-to-end tests and the attack suite drive it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use service_runtime::pki::Ca;

use crate::proxy::LinkProxy;
use crate::{ChildGuard, bin, run, run_ok, spawn, spawn_listening, spawn_listening_with_metrics};

/// Bound of any single wait.
pub const LIMIT: Duration = Duration::from_secs(90);

/// Polls `condition` every 50 ms until it holds or `limit` passes; `false` on timeout.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The servers and the operator's credentials.
#[derive(Debug)]
pub struct Fleet {
    image_repo: Option<ChildGuard>,
    image_addr: String,
    image_repo_flags: Vec<String>,
    /// Image repository base URL (`https://`).
    pub image_url: String,
    /// The throwaway CA every server certificate of this fleet chains to.
    pub ca: Ca,
    /// Its certificate (PEM), which every client is given with `--ca-cert`.
    pub ca_cert: PathBuf,
    director: Option<ChildGuard>,
    director_addr: String,
    /// Replicas added by [`Fleet::add_director_replica`], and their URLs.
    replicas: Vec<(ChildGuard, String)>,
    /// Director base URL (`https://`).
    pub director_url: String,
    /// The Director's metrics address (`--metrics-listen`), `http://ADDR/metrics`.
    pub director_metrics: Option<String>,
    /// The Image repository's.
    pub image_metrics: Option<String>,
    /// An operator API token.
    pub token: String,
    /// A fleet-wide provisioning token for Primaries.
    pub provisioning_token: String,
    upload_token: Option<String>,
    director_flags: Vec<String>,
    director_env: Vec<(String, String)>,
    /// How far ahead of the real one the servers' and the operator's clocks read
    /// ([`Fleet::set_clock_offset_days`]).
    clock_offset_secs: i64,
    // Last: removed after the processes using it are gone.
    tmp: tempfile::TempDir,
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// `GET http://ADDR/metrics`.
fn scrape(addr: &str) -> String {
    let url = format!("http://{addr}/metrics");
    crate::blocking(async move {
        let response = reqwest::get(&url)
            .await
            .expect("the metrics endpoint answers");
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.text().await.expect("metrics are text")
    })
}

/// The value of the sample `name{labels}` (labels as printed, in order) in a scrape.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// `--tls-cert DIR/cert.pem --tls-key DIR/key.pem`.
/// Writes a throwaway CA and certificates it issued into `out`: `ca.pem`, `director/` and
/// `image-repo/` (server certificates for `names`), `supplier/` (a client certificate for
/// uploads), each `cert.pem` and `key.pem`. The CA is returned to issue more (its key is
/// never written). What the simulated fleet and `fleet-sim pki` use.
pub fn write_throwaway_pki(out: &Path, names: &[&str]) -> Result<Ca, String> {
    let failed = |what: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", what.display());
    let ca = Ca::generate("fleet-sim throwaway CA").map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| failed(out, &e))?;
    std::fs::write(out.join("ca.pem"), ca.cert_pem())
        .map_err(|e| failed(&out.join("ca.pem"), &e))?;
    let issued = [
        ("director", ca.issue_server(names)),
        ("image-repo", ca.issue_server(names)),
        ("supplier", ca.issue_client("supplier")),
    ];
    for (dir, key) in issued {
        let dir = out.join(dir);
        key.map_err(|e| e.to_string())?
            .write(&dir)
            .map_err(|e| failed(&dir, &e))?;
    }
    Ok(ca)
}

fn tls_flags(dir: &Path) -> [String; 4] {
    [
        "--tls-cert".into(),
        text(&dir.join("cert.pem")),
        "--tls-key".into(),
        text(&dir.join("key.pem")),
    ]
}

impl Fleet {
    /// Runs both key ceremonies, starts both servers, and creates the operator's tokens.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Fleet::start`], with extra `image-repo serve` flags.
    pub fn start_with(image_repo_flags: &[&str]) -> Self {
        // On PostgreSQL when the tests are given a server (`.ci/run` runs them both ways).
        let database =
            director::db::Database::fresh_for_tests().expect("a test database on PostgreSQL");
        Self::start_on(image_repo_flags, database)
    }

    /// Like [`Fleet::start`], the Director on SQLite whatever the tests are given.
    pub fn start_on_sqlite() -> Self {
        Self::start_on(&[], None)
    }

    /// Like [`Fleet::start`], the Director on `database` (`None`: SQLite in its directory).
    pub fn start_on_database(database: Option<director::db::Database>) -> Self {
        Self::start_on(&[], database)
    }

    /// Starts the fleet, the Director on `database` (`None`: SQLite in its directory).
    fn start_on(image_repo_flags: &[&str], database: Option<director::db::Database>) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("fleet-sim-")
            .tempdir()
            .expect("a temporary directory");
        let path = |n: &str| text(&tmp.path().join(n));
        // TLS everywhere: a CA made for this fleet, and a certificate for 127.0.0.1 for
        // each server.
        let ca = write_throwaway_pki(&tmp.path().join("pki"), &["127.0.0.1", "localhost"])
            .expect("the fleet's certificates");
        let ca_cert = tmp.path().join("pki/ca.pem");
        run_ok(
            Command::new(bin("image-repo")).args([
                "init",
                "--repo",
                &path("repo"),
                "--offline-keys",
                &path("repo-keys"),
            ]),
            LIMIT,
        );
        let mut init = Command::new(bin("director"));
        init.args([
            "init",
            "--dir",
            &path("director"),
            "--offline-keys",
            &path("director-keys"),
            "--image-root",
            &path("repo/metadata/1.root.json"),
        ]);
        if let Some(database) = database {
            init.env("DIRECTOR_DATABASE", database.to_arg());
        }
        run_ok(&mut init, LIMIT);
        let mut fleet = Self {
            image_repo: None,
            image_addr: "127.0.0.1:0".into(),
            image_repo_flags: image_repo_flags.iter().map(|f| f.to_string()).collect(),
            image_url: String::new(),
            ca,
            ca_cert,
            director: None,
            director_addr: "127.0.0.1:0".into(),
            replicas: Vec::new(),
            director_url: String::new(),
            director_metrics: None,
            image_metrics: None,
            token: String::new(),
            provisioning_token: String::new(),
            upload_token: None,
            director_flags: Vec::new(),
            director_env: Vec::new(),
            clock_offset_secs: 0,
            tmp,
        };
        fleet.renew_operator_token();
        fleet.start_image_repo();
        fleet.start_director();
        let created = fleet.operator(&["provisioning-token", "create", "--label", "factory"]);
        fleet.provisioning_token = created["token"].as_str().unwrap_or_default().to_string();
        fleet
    }

    /// One scrape of the Director's metrics (`--metrics-listen`), in the text format.
    pub fn director_metrics(&self) -> String {
        scrape(
            self.director_metrics
                .as_deref()
                .expect("the Director serves metrics"),
        )
    }

    /// One scrape of the Image repository's metrics.
    pub fn image_repo_metrics(&self) -> String {
        scrape(
            self.image_metrics
                .as_deref()
                .expect("the Image repository serves metrics"),
        )
    }

    /// A path inside the fleet's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The Director's database, opened beside the running server (SQLite or PostgreSQL, as
    /// `director init` chose).
    pub fn director_db(&self) -> director::db::Db {
        let database = director::db::Database::of_dir(&self.path("director"))
            .expect("the Director directory names its database");
        director::db::Db::connect(&database).expect("the Director's database opens")
    }

    /// The temporary directory holding everything.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// The Director's process id.
    pub fn director_pid(&self) -> Option<u32> {
        self.director.as_ref().map(ChildGuard::id)
    }

    /// The Image repository's process id.
    pub fn image_repo_pid(&self) -> u32 {
        self.image_repo.as_ref().map_or(0, ChildGuard::id)
    }

    /// What the Image repository wrote to stderr (its log) since it last started.
    pub fn image_repo_log(&self) -> String {
        self.image_repo
            .as_ref()
            .map(ChildGuard::stderr)
            .unwrap_or_default()
    }

    /// `image-repo serve` on this fleet's repository, on the address it had (a free one the
    /// first time).
    fn start_image_repo(&mut self) {
        let mut command = self.server("image-repo");
        command
            .args(["serve", "--repo", &text(&self.path("repo"))])
            .args(["--listen", &self.image_addr])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(tls_flags(&self.path("pki/image-repo")))
            .args(&self.image_repo_flags);
        let (image_repo, listening) = spawn_listening_with_metrics(command, LIMIT);
        self.image_repo = Some(image_repo);
        self.image_addr = listening.addr;
        self.image_metrics = listening.metrics;
        self.image_url = format!("https://{}", self.image_addr);
    }

    /// Kills both servers with SIGKILL and starts them again on the same addresses.
    pub fn restart_servers(&mut self) {
        if let Some(mut image_repo) = self.image_repo.take() {
            image_repo.kill();
        }
        self.start_image_repo();
        self.restart_director();
    }

    /// From now on, the servers (from their next start) and every `director` and
    /// `image-repo` command read the clock `days` ahead of the real one (a test build's
    /// `UPTANE_FAULT_CLOCK_OFFSET_SECS`): months pass for the repositories without waiting.
    pub fn set_clock_offset_days(&mut self, days: i64) {
        self.clock_offset_secs = days * 86_400;
    }

    /// A `director` or `image-repo` command on this fleet's clock.
    fn server(&self, name: &str) -> Command {
        let mut command = Command::new(bin(name));
        if self.clock_offset_secs != 0 {
            command.env(
                service_runtime::clock::FAULT_OFFSET_ENV,
                self.clock_offset_secs.to_string(),
            );
        }
        command
    }

    /// The Director's address (`127.0.0.1:PORT`).
    pub fn director_addr(&self) -> &str {
        &self.director_addr
    }

    /// `director serve` on this fleet's Director directory, listening on `addr`.
    fn director_command(&self, addr: &str) -> Command {
        let mut command = self.server("director");
        command
            .args([
                "serve",
                "--dir",
                &text(&self.path("director")),
                "--listen",
                addr,
                "--image-repo",
                &self.image_url,
                "--ca-cert",
                &text(&self.ca_cert),
                // Campaigns move on within a second of what they wait for.
                "--campaign-interval-secs",
                "1",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(tls_flags(&self.path("pki/director")))
            .args(&self.director_flags)
            .envs(self.director_env.iter().map(|(k, v)| (k, v)));
        command
    }

    fn start_director(&mut self) {
        let (director, listening) =
            spawn_listening_with_metrics(self.director_command(&self.director_addr), LIMIT);
        let addr = listening.addr;
        self.director_metrics = listening.metrics;
        self.director = Some(director);
        self.director_addr = addr.clone();
        self.director_url = format!("https://{addr}");
    }

    /// Another Director process serving the same directory and database (a replica behind
    /// the same load balancer), on a port of its own: the process and its `https://` URL.
    pub fn start_director_replica(&self) -> (ChildGuard, String) {
        self.start_director_replica_with(&[])
    }

    /// [`Fleet::start_director_replica`], with extra environment variables for it.
    pub fn start_director_replica_with(&self, env: &[(&str, &str)]) -> (ChildGuard, String) {
        let mut command = self.director_replica_command();
        command.envs(env.iter().copied());
        let (replica, addr) = spawn_listening(command, LIMIT);
        (replica, format!("https://{addr}"))
    }

    /// Starts a replica the fleet keeps running ([`Fleet::director_urls`]).
    pub fn add_director_replica(&mut self) {
        let replica = self.start_director_replica();
        self.replicas.push(replica);
    }

    /// Every Director process's URL: the first, then the replicas.
    pub fn director_urls(&self) -> Vec<String> {
        std::iter::once(self.director_url.clone())
            .chain(self.replicas.iter().map(|(_, url)| url.clone()))
            .collect()
    }

    /// Every running Director process's id: the first, then the replicas.
    pub fn director_pids(&self) -> Vec<u32> {
        self.director_pid()
            .into_iter()
            .chain(self.replicas.iter().map(|(r, _)| r.id()))
            .collect()
    }

    /// The command [`Fleet::start_director_replica`] runs.
    pub fn director_replica_command(&self) -> Command {
        self.director_command("127.0.0.1:0")
    }

    /// Restarts the Director (SIGKILL) with extra `director serve` flags and environment
    /// variables from now on.
    pub fn restart_director_with(&mut self, flags: &[&str], env: &[(&str, &str)]) {
        self.director_flags = flags.iter().map(|f| f.to_string()).collect();
        self.director_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.restart_director();
    }

    /// Restarts the Director `secs` ahead of the fleet's clock with the extra environment
    /// `env`, runs `during`, then restarts it as it was (its flags, environment and clock).
    pub fn with_director_ahead<T>(
        &mut self,
        secs: i64,
        env: &[(&str, &str)],
        during: impl FnOnce(&Fleet) -> T,
    ) -> T {
        let saved = (self.director_env.clone(), self.clock_offset_secs);
        self.director_env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.clock_offset_secs += secs;
        self.restart_director();
        let out = during(self);
        (self.director_env, self.clock_offset_secs) = saved;
        self.restart_director();
        out
    }

    /// Waits (bounded) for the Director process to exit on its own (an injected crash).
    pub fn director_exited(&mut self) -> bool {
        self.director
            .as_mut()
            .is_some_and(|d| d.wait_exit(LIMIT).is_some())
    }

    /// An HTTPS client that trusts this fleet's CA (and refuses plaintext).
    pub fn https_client(&self) -> reqwest::Client {
        service_runtime::http::ClientTls::new(Some(&self.ca_cert), None, false)
            .and_then(|tls| tls.reqwest())
            .expect("a TLS client configuration")
            .build()
            .expect("an HTTP client")
    }

    /// A certificate for 127.0.0.1 from this fleet's CA, as a misissuing (or compromised)
    /// CA would give an attacker: what a man in the middle needs to pass for a server.
    pub fn misissued_server_certificate(&self) -> service_runtime::tls::Identity {
        self.ca
            .issue_server(&["127.0.0.1", "localhost"])
            .and_then(|c| c.identity())
            .expect("a certificate")
    }

    /// Stops the Director (SIGKILL); [`Fleet::restart_director`] starts it again.
    pub fn stop_director(&mut self) {
        if let Some(mut director) = self.director.take() {
            director.kill();
        }
    }

    /// Kills the Director with SIGKILL and starts it again on the same address.
    pub fn restart_director(&mut self) {
        if let Some(mut director) = self.director.take() {
            director.kill();
        }
        self.start_director();
    }

    /// The upload token [`Fleet::publish`] uses, once [`Fleet::publish_through_server`].
    pub fn upload_token(&self) -> Option<String> {
        self.upload_token.clone()
    }

    /// Runs a `director` operator command against the Director at `url` (a link in front of
    /// it); its JSON output, or the command's error.
    pub fn operator_at(&self, url: &str, args: &[&str]) -> Result<Value, String> {
        let (status, out, err) = run(
            self.server("director").args(args).args([
                "--server",
                url,
                "--token",
                &self.token,
                "--ca-cert",
                &text(&self.ca_cert),
                "--json",
            ]),
            LIMIT,
        );
        if !status.success() {
            return Err(format!("director {args:?}: {err}"));
        }
        Ok(serde_json::from_str(&out).unwrap_or(Value::Null))
    }

    /// Runs a `director` operator command against the server; its JSON output.
    pub fn operator(&self, args: &[&str]) -> Value {
        let out = run_ok(&mut self.operator_command(args), LIMIT);
        serde_json::from_str(&out).unwrap_or(Value::Null)
    }

    /// `director ARGS --dir DIR --offline-keys KEYS` on the fleet's Director directory
    /// (the commands an administrator runs on the Director's host): success and output.
    pub fn director_local(&self, args: &[&str], offline_keys: &Path) -> (bool, String, String) {
        let (status, out, err) = run(
            self.server("director")
                .args(args)
                .args(["--dir", &text(&self.path("director"))])
                .args(["--offline-keys", &text(offline_keys)]),
            LIMIT,
        );
        (status.success(), out, err)
    }

    /// `image-repo ARGS --repo REPO --offline-keys KEYS` on the fleet's repository (what its
    /// administrator runs with the offline keys): its output, or the command's error.
    pub fn image_repo_local(&self, args: &[&str]) -> Result<String, String> {
        let (status, out, err) = run(
            self.server("image-repo")
                .args(args)
                .args(["--repo", &text(&self.path("repo"))])
                .args(["--offline-keys", &text(&self.path("repo-keys"))]),
            LIMIT,
        );
        if status.success() {
            Ok(out)
        } else {
            Err(format!("image-repo {args:?}: {err}"))
        }
    }

    /// Creates a new operator token (the old one may have expired on the fleet's clock) and
    /// uses it from now on.
    pub fn renew_operator_token(&mut self) {
        let token = run_ok(
            self.server("director").args([
                "token",
                "create",
                "--dir",
                &text(&self.path("director")),
                "--label",
                "operator",
            ]),
            LIMIT,
        );
        self.token = token.trim().to_string();
    }

    /// The Director root version the server publishes (`director status`).
    pub fn director_root_version(&self) -> Result<u64, String> {
        let status = self.operator(&["status"]);
        status["root_version"]
            .as_u64()
            .ok_or_else(|| format!("director status: {status}"))
    }

    /// Whether the Image repository serves a timestamp that has not expired on the fleet's
    /// clock.
    pub fn image_repo_timestamp_fresh(&self) -> bool {
        let url = format!("{}/metadata/timestamp.json", self.image_url);
        let client = self.https_client();
        let body = crate::blocking(async move {
            let response = client.get(&url).send().await.ok()?;
            response.bytes().await.ok()
        });
        let now = uptane_core::time::UtcTime::from(std::time::SystemTime::now())
            + chrono::Duration::seconds(self.clock_offset_secs);
        body.and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| {
                v["signed"]["expires"]
                    .as_str()
                    .and_then(uptane_core::time::parse_expires)
            })
            .is_some_and(|expires| expires > now)
    }

    /// A `director` operator command against the server over TLS (`--json`), to run.
    pub fn operator_command(&self, args: &[&str]) -> Command {
        let mut command = self.operator_human(args);
        command.arg("--json");
        command
    }

    /// The same without `--json`: what an operator reads.
    pub fn operator_human(&self, args: &[&str]) -> Command {
        let mut command = self.server("director");
        command.args(args).args([
            "--server",
            &self.director_url,
            "--token",
            &self.token,
            "--ca-cert",
            &text(&self.ca_cert),
        ]);
        command
    }

    /// From now on, [`Fleet::publish`] uploads through the running Image repository (which
    /// then signs snapshot and timestamp with its own lifetimes) instead of writing the
    /// repository directly.
    pub fn publish_through_server(&mut self) {
        let token = run_ok(
            self.server("image-repo").args([
                "token",
                "create",
                "--repo",
                &text(&self.path("repo")),
                "--role",
                "targets",
                "--label",
                "release-engineering",
            ]),
            LIMIT,
        );
        self.upload_token = Some(token.trim().to_string());
    }

    /// The `image-repo add` an OEM release engineer runs: signs and publishes an image.
    pub fn publish(&self, name: &str, hardware_id: &str, release_counter: u64, content: &[u8]) {
        let file = self.path(&format!("upload-{}", name.replace('/', "_")));
        std::fs::write(&file, content).expect("the image file writes");
        let mut command = self.server("image-repo");
        command.arg("add");
        match &self.upload_token {
            Some(token) => command.args([
                "--server",
                &self.image_url,
                "--token",
                token,
                "--ca-cert",
                &text(&self.ca_cert),
            ]),
            None => command.args(["--repo", &text(&self.path("repo"))]),
        };
        run_ok(
            command.args([
                "--offline-keys",
                &text(&self.path("repo-keys")),
                "--name",
                name,
                "--hardware-id",
                hardware_id,
                "--release-counter",
                &release_counter.to_string(),
                &text(&file),
            ]),
            LIMIT,
        );
    }

    /// `director assign --image NAME --vin ...`; the assignment as JSON.
    pub fn assign(&self, image: &str, vins: &[&str]) -> Value {
        let mut args = vec!["assign", "--image", image];
        for vin in vins {
            args.extend(["--vin", vin]);
        }
        self.operator(&args)
    }

    /// `director vehicle show VIN`.
    pub fn vehicle(&self, vin: &str) -> Value {
        self.operator(&["vehicle", "show", vin])
    }

    /// The assignment entries of a vehicle, newest first.
    pub fn assignments(&self, vin: &str) -> Vec<Value> {
        match self.operator(&["assignment", "list", "--vin", vin]) {
            Value::Array(entries) => entries,
            _ => Vec::new(),
        }
    }

    /// Whether the Director records `image` installed on vehicle `vin`'s ECU whose serial
    /// ends with `-SUFFIX` (`-DOOR`: the Secondary a [`VehicleSpec`] names `DOOR`).
    pub fn installed_on(&self, vin: &str, suffix: &str, image: &str) -> bool {
        let ending = format!("-{suffix}");
        self.installed(vin)
            .iter()
            .any(|(serial, i)| serial.ends_with(&ending) && i.as_deref() == Some(image))
    }

    /// What the Director records as installed on each ECU of a vehicle.
    pub fn installed(&self, vin: &str) -> Vec<(String, Option<String>)> {
        let shown = self.vehicle(vin);
        shown["ecus"]
            .as_array()
            .map(|ecus| {
                ecus.iter()
                    .map(|e| {
                        (
                            e["serial"].as_str().unwrap_or_default().to_string(),
                            e["installed"]["filename"].as_str().map(String::from),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The vehicle's newest 1,000 events, newest first (security events only with
    /// `security`).
    pub fn events(&self, vin: &str, security: bool) -> Vec<Value> {
        let mut args = vec!["events", "--vin", vin, "--limit", "1000"];
        if security {
            args.push("--security");
        }
        match self.operator(&args) {
            Value::Array(events) => events,
            _ => Vec::new(),
        }
    }
}

/// How an ECU verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Both repositories.
    Full,
    /// Director targets only.
    Partial,
}

impl Mode {
    /// `full` or `partial`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Partial => "partial",
        }
    }
}

/// One simulated Secondary: its directory, its process, and the link the Primary reaches it
/// through.
#[derive(Debug)]
pub struct SimSecondary {
    /// Serial.
    pub serial: String,
    /// Hardware id.
    pub hardware_id: String,
    /// Verification mode.
    pub mode: Mode,
    /// Its state directory.
    pub dir: PathBuf,
    /// Its TLS certificate's fingerprint, as `init` printed it (the Primary pins it).
    pub fingerprint: String,
    addr: String,
    process: Option<ChildGuard>,
    /// The link between the Primary and it.
    pub link: LinkProxy,
}

impl SimSecondary {
    /// The address its process listens on (the link's far end).
    pub fn real_addr(&self) -> String {
        self.addr.clone()
    }

    /// What its running process wrote to stderr (its log) so far.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(ChildGuard::stderr)
            .unwrap_or_default()
    }

    /// The durable offset of the transfer in progress, as its state file says.
    pub fn durable_offset(&self) -> u64 {
        durable_offset(&self.dir)
    }

    /// Waits (bounded) for the process to exit by itself (a simulated power cut).
    pub fn wait_power_loss(&mut self, limit: Duration) -> bool {
        let lost = self
            .process
            .as_mut()
            .is_some_and(|p| p.wait_exit(limit).is_some());
        if lost {
            self.process = None;
        }
        lost
    }
}

/// A vehicle: a Primary and its Secondaries.
#[derive(Debug)]
pub struct SimVehicle {
    /// VIN.
    pub vin: String,
    /// The Primary's serial.
    pub primary_serial: String,
    /// The Primary's hardware id.
    pub primary_hardware_id: String,
    /// The Primary's state directory.
    pub primary_dir: PathBuf,
    /// The Secondaries.
    pub secondaries: Vec<SimSecondary>,
    primary: Option<ChildGuard>,
    director_url: String,
    image_url: String,
    ca_cert: PathBuf,
    primary_flags: Vec<String>,
    clock_offset_secs: i64,
}

/// What a vehicle is made of.
#[derive(Debug, Clone)]
pub struct VehicleSpec {
    /// VIN.
    pub vin: String,
    /// Secondaries: serial suffix, hardware id, mode.
    pub secondaries: Vec<(String, String, Mode)>,
    /// The serial suffixes of Secondaries with one bank only (`init --single-bank`).
    pub single_bank: Vec<String>,
}

impl VehicleSpec {
    /// A vehicle with `count` Secondaries alternating full and partial verification, of
    /// hardware ids `hw-ecu-1`, `hw-ecu-2`, ...
    pub fn standard(vin: &str, count: usize) -> Self {
        Self {
            vin: vin.to_string(),
            secondaries: (1..=count)
                .map(|i| {
                    (
                        format!("ECU{i}"),
                        format!("hw-ecu-{i}"),
                        if i % 2 == 1 {
                            Mode::Full
                        } else {
                            Mode::Partial
                        },
                    )
                })
                .collect(),
            single_bank: Vec::new(),
        }
    }
}

impl SimVehicle {
    /// The TLS keys of the link to Secondary `i`, stolen from both ends.
    pub fn link_keys(&self, i: usize) -> crate::forge::LinkKeys {
        crate::forge::LinkKeys::steal(&self.secondaries[i].dir, &self.primary_dir)
    }

    /// Provisions a vehicle: every Secondary's `init` with the pinned roots, a link to each,
    /// then the Primary's `init`, which registers the vehicle with the provisioning token.
    pub fn provision(fleet: &Fleet, spec: &VehicleSpec) -> Self {
        let vehicle = Self::prepare(fleet, spec);
        if let Err(e) = vehicle.init_primary(fleet, &fleet.provisioning_token) {
            panic!("{e}");
        }
        vehicle
    }

    /// A vehicle whose Secondaries are provisioned and running, and whose Primary is not
    /// yet: [`SimVehicle::init_primary`] does that.
    pub fn prepare(fleet: &Fleet, spec: &VehicleSpec) -> Self {
        let base = fleet.path(&format!("vehicle-{}", spec.vin));
        std::fs::create_dir_all(&base).expect("the vehicle directory");
        let primary_serial = format!("{}-GW", spec.vin);
        let primary_dir = base.join("primary");
        // The Primary's TLS identity first: each Secondary pins it at its own init.
        let primary_fingerprint = run_ok(
            Command::new(bin("primary-ecu")).args([
                "tls-identity",
                "--dir",
                &text(&primary_dir),
                "--serial",
                &primary_serial,
            ]),
            LIMIT,
        )
        .trim()
        .to_string();
        let mut secondaries = Vec::new();
        for (suffix, hardware_id, mode) in &spec.secondaries {
            let serial = format!("{}-{suffix}", spec.vin);
            let dir = base.join(&serial);
            let factory = base.join(format!("{hardware_id}-factory.bin"));
            std::fs::write(&factory, format!("{serial} factory image")).expect("factory image");
            let mut init = secondary_init(
                fleet,
                &SecondaryInit {
                    vin: &spec.vin,
                    serial: &serial,
                    hardware_id,
                    mode: *mode,
                    dir: &dir,
                    primary_fingerprint: &primary_fingerprint,
                },
            );
            if spec.single_bank.contains(suffix) {
                init.arg("--single-bank");
            }
            let printed = run_ok(&mut init, LIMIT);
            let fingerprint = printed
                .lines()
                .find_map(|l| l.strip_prefix("TLS certificate fingerprint "))
                .expect("init prints the fingerprint")
                .trim()
                .to_string();
            let link = LinkProxy::start("127.0.0.1:1").expect("a link proxy");
            let mut secondary = SimSecondary {
                serial,
                hardware_id: hardware_id.clone(),
                mode: *mode,
                dir,
                fingerprint,
                addr: String::new(),
                process: None,
                link,
            };
            start_secondary(&mut secondary, &[]);
            secondaries.push(secondary);
        }
        let primary_hardware_id = "hw-gateway".to_string();
        let factory = base.join("gateway-factory.bin");
        std::fs::write(&factory, format!("{primary_serial} factory image")).expect("factory");
        Self {
            vin: spec.vin.clone(),
            primary_serial,
            primary_hardware_id,
            primary_dir,
            secondaries,
            primary: None,
            director_url: fleet.director_url.clone(),
            image_url: fleet.image_url.clone(),
            ca_cert: fleet.ca_cert.clone(),
            primary_flags: Vec::new(),
            clock_offset_secs: 0,
        }
    }

    /// The Primary's `init`, registering the vehicle with provisioning token `token`; the
    /// command's error output when it fails.
    pub fn init_primary(&self, fleet: &Fleet, token: &str) -> Result<(), String> {
        let director_root = text(&fleet.path("director/1.root.json"));
        let image_root = text(&fleet.path("repo/metadata/1.root.json"));
        let factory = self.primary_dir.with_file_name("gateway-factory.bin");
        std::fs::write(&factory, format!("{} factory image", self.primary_serial))
            .map_err(|e| e.to_string())?;
        let mut init = self.primary_command("init");
        init.args([
            "--vin",
            &self.vin,
            "--serial",
            &self.primary_serial,
            "--hardware-id",
            &self.primary_hardware_id,
            "--provisioning-token",
            token,
            "--director-root",
            &director_root,
            "--image-root",
            &image_root,
            "--factory-image",
            &text(&factory),
            "--factory-name",
            "gateway-factory.bin",
        ]);
        let (status, _, stderr) = run(&mut init, LIMIT);
        if status.success() {
            Ok(())
        } else {
            Err(format!("primary-ecu init: {stderr}"))
        }
    }

    /// A `primary-ecu` command with this vehicle's directory, servers and links (given on
    /// every command, as they move when a process restarts), with short timeouts.
    pub fn primary_command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(bin("primary-ecu"));
        command.args([
            subcommand,
            "--dir",
            &text(&self.primary_dir),
            "--director-url",
            &self.director_url,
            "--image-repo-url",
            &self.image_url,
            "--poll-interval-secs",
            "1",
            "--secondary-timeout-secs",
            "5",
            "--read-timeout-secs",
            "5",
            "--ca-cert",
            &text(&self.ca_cert),
        ]);
        command.args(&self.primary_flags);
        if self.clock_offset_secs != 0 && matches!(subcommand, "once" | "run") {
            command.arg(format!(
                "--fault-clock-offset-secs={}",
                self.clock_offset_secs
            ));
        }
        for s in &self.secondaries {
            command.args([
                "--secondary",
                &format!(
                    "{},{},{},{}",
                    s.serial,
                    s.link.addr(),
                    s.mode.as_str(),
                    s.fingerprint
                ),
            ]);
        }
        command
    }

    /// Points the Primary at another Image repository URL (a link in front of it).
    pub fn set_image_url(&mut self, url: &str) {
        self.image_url = url.to_string();
    }

    /// Points the Primary at another Director URL (a link in front of it).
    pub fn set_director_url(&mut self, url: &str) {
        self.director_url = url.to_string();
    }

    /// The CA certificate the Primary trusts for both servers (the fleet's by default).
    pub fn set_ca_cert(&mut self, path: &Path) {
        self.ca_cert = path.to_path_buf();
    }

    /// Fault injection: later `primary-ecu once` runs read the system clock this far off.
    pub fn set_clock_offset_secs(&mut self, seconds: i64) {
        self.clock_offset_secs = seconds;
    }

    /// Extra flags for every later `primary-ecu` command.
    pub fn set_primary_flags(&mut self, flags: &[&str]) {
        self.primary_flags = flags.iter().map(|f| f.to_string()).collect();
    }

    /// Starts `primary-ecu run` (a cycle every second) in the background.
    pub fn start_primary(&mut self) {
        self.primary = None;
        self.primary = Some(spawn(self.primary_command("run")));
    }

    /// Kills the Primary with SIGKILL.
    pub fn kill_primary(&mut self) {
        if let Some(mut primary) = self.primary.take() {
            primary.kill();
        }
    }

    /// Stops the Primary with SIGTERM; whether it exited cleanly.
    pub fn stop_primary(&mut self) -> bool {
        match self.primary.take() {
            Some(mut primary) => primary
                .terminate(LIMIT)
                .is_some_and(|status| status.success()),
            None => true,
        }
    }

    /// What the running Primary wrote to stderr.
    pub fn primary_log(&self) -> String {
        self.primary
            .as_ref()
            .map(ChildGuard::stderr)
            .unwrap_or_default()
    }

    /// Re-issues this vehicle a bearer credential with no certificate bound (`director vehicle
    /// revoke-credential`, which unbinds, `issue-credential`, then `primary-ecu
    /// set-credential`): what a fleet does for a vehicle that cannot show its client
    /// certificate, e.g. behind a TLS-terminating proxy.
    pub fn use_credential_only(&self, fleet: &Fleet) -> Result<(), String> {
        self.reissue_credential(fleet, false)
    }

    /// Revokes this vehicle's credential and issues it a new one, bound to the Primary's TLS
    /// certificate when `bind_certificate`, which the Primary installs.
    pub fn reissue_credential(&self, fleet: &Fleet, bind_certificate: bool) -> Result<(), String> {
        fleet.operator(&["vehicle", "revoke-credential", &self.vin]);
        let mut issue = vec!["vehicle", "issue-credential", &self.vin];
        let fingerprint;
        if bind_certificate {
            // `tls-identity` keeps the identity there is and prints its fingerprint.
            fingerprint = run_ok(
                Command::new(bin("primary-ecu")).args([
                    "tls-identity",
                    "--dir",
                    &text(&self.primary_dir),
                    "--serial",
                    &self.primary_serial,
                ]),
                LIMIT,
            );
            issue.extend(["--tls-fingerprint", fingerprint.trim()]);
        }
        let issued = fleet.operator(&issue);
        let secret = issued["credential"]
            .as_str()
            .ok_or_else(|| format!("issue-credential printed no credential: {issued}"))?;
        let mut set = Command::new(bin("primary-ecu"))
            .args(["set-credential", "--dir", &text(&self.primary_dir)])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("primary-ecu set-credential: {e}"))?;
        if let Some(mut stdin) = set.stdin.take() {
            std::io::Write::write_all(&mut stdin, secret.as_bytes())
                .map_err(|e| format!("primary-ecu set-credential: {e}"))?;
        }
        match set.wait() {
            Ok(status) if status.success() => Ok(()),
            other => Err(format!("primary-ecu set-credential: {other:?}")),
        }
    }

    /// `primary-ecu status --json`.
    pub fn primary_status(&self) -> Result<Value, String> {
        let (status, out, err) = run(
            Command::new(bin("primary-ecu")).args([
                "status",
                "--dir",
                &text(&self.primary_dir),
                "--json",
            ]),
            LIMIT,
        );
        if !status.success() {
            return Err(format!("primary-ecu status: {err}"));
        }
        serde_json::from_str(&out).map_err(|e| format!("primary-ecu status: {e}: {out}"))
    }

    /// One `primary-ecu once`: exit code and summary line.
    pub fn once(&self) -> (i32, String) {
        let (status, stdout, stderr) = run(&mut self.primary_command("once"), LIMIT);
        let summary = if stdout.trim().is_empty() {
            stderr.trim().to_string()
        } else {
            stdout.trim().to_string()
        };
        (status.code().unwrap_or(-1), summary)
    }

    /// Starts (or restarts) Secondary `i` with fault flags.
    pub fn start_secondary(&mut self, i: usize, faults: &[&str]) {
        start_secondary(&mut self.secondaries[i], faults);
    }

    /// Stops Secondary `i` (SIGKILL: power off).
    pub fn stop_secondary(&mut self, i: usize) {
        if let Some(mut process) = self.secondaries[i].process.take() {
            process.kill();
        }
    }
}

/// What `secondary-ecu init` is given for one ECU of a vehicle.
#[derive(Debug, Clone, Copy)]
pub struct SecondaryInit<'a> {
    /// The vehicle.
    pub vin: &'a str,
    /// The ECU's serial.
    pub serial: &'a str,
    /// Its hardware id.
    pub hardware_id: &'a str,
    /// Its verification mode.
    pub mode: Mode,
    /// Its state directory.
    pub dir: &'a Path,
    /// The certificate fingerprint of the Primary it pairs with.
    pub primary_fingerprint: &'a str,
}

/// The `secondary-ecu init` command for `ecu` under `fleet`: the factory image is
/// `<hardware id>-factory.bin` beside its directory; the Director's first root is pinned,
/// and for full verification the Image repository's.
pub fn secondary_init(fleet: &Fleet, ecu: &SecondaryInit<'_>) -> Command {
    let factory_name = format!("{}-factory.bin", ecu.hardware_id);
    let factory = ecu
        .dir
        .parent()
        .map(|base| base.join(&factory_name))
        .unwrap_or_default();
    let mut init = Command::new(bin("secondary-ecu"));
    init.args([
        "init",
        "--vin",
        ecu.vin,
        "--serial",
        ecu.serial,
        "--hardware-id",
        ecu.hardware_id,
        "--mode",
        ecu.mode.as_str(),
        "--director-root",
        &text(&fleet.path("director/1.root.json")),
        "--factory-image",
        &text(&factory),
        "--factory-name",
        &factory_name,
        "--dir",
        &text(ecu.dir),
        "--primary-fingerprint",
        ecu.primary_fingerprint,
    ]);
    if ecu.mode == Mode::Full {
        init.args([
            "--image-root",
            &text(&fleet.path("repo/metadata/1.root.json")),
        ]);
    }
    init
}

/// The durable offset of the transfer in progress in a Secondary's state directory.
pub fn durable_offset(ecu_dir: &Path) -> u64 {
    std::fs::read(ecu_dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["durable_offset"].as_u64())
        .unwrap_or(0)
}

fn start_secondary(secondary: &mut SimSecondary, faults: &[&str]) {
    secondary.process = None;
    let mut command = Command::new(bin("secondary-ecu"));
    command
        .args([
            "run",
            "--dir",
            &text(&secondary.dir),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(faults);
    let (process, addr) = spawn_listening(command, LIMIT);
    secondary.link.set_target(&addr);
    secondary.addr = addr;
    secondary.process = Some(process);
}
