//! The `director` command line: `init` and `serve` act on a Director directory; the
//! operator commands call the REST API of a running Director.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::catalog::ImageCatalog;
use crate::db::{Database, Db};
use crate::keys::{self, OnlineKeys};
use service_runtime::clock::now;

/// Checks the root's expiry now and every hour: a warning in the log and a `root_expiring`
/// security event (at most one a day) when it expires within `window`.
async fn watch_root_expiry(db: Db, window: chrono::Duration) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        match db
            .call(move |conn| service::rotation::record_expiry_warning(conn, window, now()))
            .await
        {
            Ok(Some(status)) => {
                if let Some(warning) = status.warning() {
                    tracing::warn!(security_event = "root_expiring", "{warning}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "checking the root's expiry"),
        }
    }
}
/// Removes what is older than the retention period, at start and every day.
async fn watch_retention(service: DirectorService) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(86_400));
    loop {
        every.tick().await;
        match service.sweep_retention().await {
            Ok(swept) if swept != Default::default() => tracing::info!(
                events = swept.events,
                manifests = swept.manifests,
                nonces = swept.nonces,
                "removed what is older than the retention period"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention sweep"),
        }
    }
}

/// Drives the running campaigns (`service/campaigns.rs`) every `period`.
async fn drive_campaigns(service: DirectorService, period: std::time::Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match service.campaign_tick().await {
            Ok(assigned) if !assigned.is_empty() => {
                tracing::info!(vehicles = assigned.len(), "campaigns moved vehicles")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "driving campaigns"),
        }
    }
}

/// Records the summary of each refusal window as it ends (`service/refusals.rs`).
async fn watch_refusals(service: DirectorService, window: chrono::Duration) {
    let period = window
        .to_std()
        .unwrap_or(std::time::Duration::from_secs(60));
    let mut every = tokio::time::interval(period);
    loop {
        every.tick().await;
        if let Err(e) = service.flush_refusals(false).await {
            tracing::error!(error = %e, "recording refusal summaries");
        }
    }
}

mod campaigns;

use crate::service::{self, DirectorService, Policy, TokenSelector};
use service_runtime::cli::{Exit, Fail, failure, table};
use service_runtime::http::{ClientTls, ServerLimitsArgs, Transport};
use service_runtime::outln;
use service_runtime::tls::{ClientAuth, Fingerprint};

/// The Uptane Director repository.
#[derive(Debug, Parser)]
#[command(name = "director", version = service_runtime::program_version!())]
pub struct Cli {
    /// Print JSON instead of sentences and tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// How operator commands reach the Director.
#[derive(Args)]
struct Remote {
    /// URL of the Director (`https://`).
    #[arg(long, env = "DIRECTOR_URL", default_value = "https://127.0.0.1:8081")]
    server: String,
    /// Operator API token (`director token create` makes one).
    #[arg(long, env = "DIRECTOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificates (PEM) the Director's certificate chains to [default: the system's].
    #[arg(long, env = "DIRECTOR_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Allow a plaintext `http://` server: the token crosses the network readable.
    #[arg(long, env = "DIRECTOR_INSECURE")]
    insecure: bool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// The operator token, or what to do without one.
    fn token(&self) -> anyhow::Result<&str> {
        self.token.as_deref().ok_or_else(|| {
            failure(
                Exit::Config,
                "no operator token: set DIRECTOR_TOKEN or pass --token. Create one on the \
                 Director's machine with `director token create --dir DIR --label NAME`.",
            )
        })
    }
}

/// Which page of a listing to read: newest first.
#[derive(Debug, Args)]
struct PageArgs {
    /// Show at most this many rows (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Only rows older than this id (the next page back: the footer prints it).
    #[arg(long)]
    before: Option<i64>,
    /// Only rows at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl PageArgs {
    /// Its query parameters.
    fn query(&self) -> String {
        let mut query = format!("limit={}", self.limit);
        if let Some(before) = self.before {
            query.push_str(&format!("&before={before}"));
        }
        if let Some(since) = self.since {
            query.push_str(&format!("&since={}", url_part(&since.to_rfc3339())));
        }
        query
    }

    /// The same page, for a listing read from the database directly.
    fn page(&self) -> anyhow::Result<service::Page> {
        service::Page::new(self.limit, self.before, self.since).fail(
            Exit::Usage,
            "the page asked for is not one the Director lists",
        )
    }

    /// After a full page of `rows` (newest first, each with a `cursor` or, for events, an
    /// `id`): how to ask for the next one.
    fn next(&self, rows: &Value) -> Option<String> {
        let rows = rows.as_array()?;
        if rows.len() < self.limit as usize {
            return None;
        }
        let last = rows.last()?;
        let cursor = last["cursor"].as_i64().or_else(|| last["id"].as_i64())?;
        Some(format!("(older: --before {cursor})"))
    }
}

/// A page of a listing: JSON, or its table and, after a full page, how to read on.
fn print_page(json: bool, page: &PageArgs, value: &Value, render: impl FnOnce(&Value) -> String) {
    print(json, value, render);
    if !json && let Some(next) = page.next(value) {
        outln!("{next}");
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Docs(service_runtime::cli::Docs),
    /// Creates the Director's keys, root and database.
    Init {
        /// Director directory (database, online keys).
        #[arg(long, env = "DIRECTOR_DIR")]
        dir: PathBuf,
        /// Directory for the offline root keys (never read by the server).
        #[arg(long, env = "DIRECTOR_OFFLINE_KEYS")]
        offline_keys: PathBuf,
        /// Number of root keys.
        #[arg(long, default_value_t = 1)]
        root_keys: usize,
        /// Root threshold.
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// The Image repository's root metadata to pin (its `1.root.json`).
        #[arg(long, env = "DIRECTOR_IMAGE_ROOT")]
        image_root: PathBuf,
        /// Days until the root expires (renew it before with `director rotate-root`).
        #[arg(long, default_value_t = 365)]
        root_lifetime_days: u32,
        /// Where the Director keeps its state: `sqlite:PATH` or `postgres://…` [default:
        /// sqlite:DIR/director.db]. A PostgreSQL database is written to DIR/database, which
        /// every later command and `director serve` read.
        #[arg(long, env = "DIRECTOR_DATABASE")]
        database: Option<Database>,
    },
    /// Applies the database's migrations (`director serve` applies them too); with `--to`,
    /// moves the Director's state from its SQLite database to a new PostgreSQL database.
    Migrate {
        /// Director directory.
        #[arg(long, env = "DIRECTOR_DIR")]
        dir: PathBuf,
        /// A new, empty PostgreSQL database (`postgres://…`) to move the state to, with the
        /// server stopped: every row is copied in one transaction and counted on both sides,
        /// then DIR/database names it (the SQLite file is kept, unchanged).
        #[arg(long)]
        to: Option<Database>,
    },
    /// Publishes root version N+1 (signed by the offline root keys of N and of N+1): with new
    /// root keys (`--keys`), or the same keys and a later expiry. Vehicles follow the chain at
    /// their next cycle; a running server serves it at once.
    RotateRoot {
        /// Director directory.
        #[arg(long, env = "DIRECTOR_DIR")]
        dir: PathBuf,
        /// The offline root keys; new ones are written here too.
        #[arg(long, env = "DIRECTOR_OFFLINE_KEYS")]
        offline_keys: PathBuf,
        /// Replace the root keys with this many new ones (with --threshold).
        #[arg(long, requires = "threshold")]
        keys: Option<usize>,
        /// Threshold of the new root keys.
        #[arg(long, requires = "keys")]
        threshold: Option<u32>,
        /// Days until the new root expires.
        #[arg(long, default_value_t = 365)]
        root_lifetime_days: u32,
    },
    /// Replaces online keys (targets, snapshot, timestamp) through root version N+1, e.g.
    /// after they were stolen: a running server signs with the new keys from its next
    /// request, and vehicles refuse metadata signed by the old ones.
    RotateOnline {
        /// Director directory (the online keys are in DIR/keys).
        #[arg(long, env = "DIRECTOR_DIR")]
        dir: PathBuf,
        /// The offline root keys that sign the new root.
        #[arg(long, env = "DIRECTOR_OFFLINE_KEYS")]
        offline_keys: PathBuf,
        /// The roles whose keys to replace (repeat) [default: all three].
        #[arg(long = "role", value_enum)]
        roles: Vec<OnlineRole>,
        /// Days until the new root expires.
        #[arg(long, default_value_t = 365)]
        root_lifetime_days: u32,
    },
    /// The Director root's version and expiry (warns within the server's
    /// `--root-expiry-warning-days`).
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// The fleet at a glance: vehicles, ECUs, images in use, update success rate, campaigns,
    /// security events of the last day (the dashboard's first page).
    Overview {
        #[command(flatten)]
        remote: Remote,
    },
    /// Serves the Director.
    Serve {
        /// Director directory.
        #[arg(long, env = "DIRECTOR_DIR")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "DIRECTOR_LISTEN", default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
        /// Base URL of the Image repository (its `/metadata` is read from there).
        #[arg(long, env = "DIRECTOR_IMAGE_REPO")]
        image_repo: String,
        /// Lifetime of per-vehicle metadata, in seconds.
        #[arg(
            long,
            env = "DIRECTOR_METADATA_LIFETIME_SECS",
            default_value_t = 86_400,
            value_parser = clap::value_parser!(i64).range(3_600..=315_360_000)
        )]
        metadata_lifetime_secs: i64,
        /// Largest vehicle manifest, in bytes (operator and registration JSON bodies are
        /// capped at 256 KiB).
        #[arg(long, env = "DIRECTOR_MAX_BODY_BYTES", default_value_t = 1 << 20)]
        max_body_bytes: usize,
        /// Days events, received manifests and their report nonces are kept (the newest
        /// manifest of each vehicle stays).
        #[arg(long, env = "DIRECTOR_RETENTION_DAYS", default_value_t = 365,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        retention_days: u32,
        /// Vehicles whose credential and current timestamp are kept in memory, so that a
        /// polling vehicle's common request needs no database call (0: off).
        #[arg(long, default_value_t = 200_000)]
        cached_vehicles: usize,
        #[command(flatten)]
        limits: ServerLimitsArgs,
        /// How long a vehicle credential works, in seconds (vehicles renew theirs when a
        /// third of that is left).
        #[arg(
            long,
            env = "DIRECTOR_VEHICLE_CREDENTIAL_LIFETIME_SECS",
            default_value_t = 365 * 86_400,
            value_parser = clap::value_parser!(i64).range(3_600..=315_360_000)
        )]
        vehicle_credential_lifetime_secs: i64,
        /// Warn (log, security event) when the root expires within this many days.
        #[arg(long, env = "DIRECTOR_ROOT_EXPIRY_WARNING_DAYS", default_value_t = 60)]
        root_expiry_warning_days: u32,
        /// How often running campaigns are driven (assignments of waiting vehicles, failure
        /// thresholds, next waves), in seconds.
        #[arg(long, env = "DIRECTOR_CAMPAIGN_INTERVAL_SECS", default_value_t = 5,
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        campaign_interval_secs: u64,
        /// Serve Prometheus metrics at http://ADDR/metrics (plaintext, unauthenticated:
        /// bind an address only the scraper reaches, such as 127.0.0.1 or a private
        /// interface). Off unless given.
        #[arg(long, env = "DIRECTOR_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        tls: ServerTlsArgs,
    },
    /// Operator API tokens (acts on the database directly).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Vehicles.
    Vehicle {
        #[command(subcommand)]
        command: VehicleCommand,
    },
    /// Replaces an ECU of a vehicle.
    EcuReplace {
        #[command(flatten)]
        remote: Remote,
        /// Vehicle.
        #[arg(long)]
        vin: String,
        /// Serial of the ECU being replaced.
        #[arg(long)]
        serial: String,
        /// Serial of the new ECU.
        #[arg(long)]
        new_serial: String,
        /// Hardware id of the new ECU.
        #[arg(long)]
        hardware_id: String,
        /// Public key of the new ECU (TUF key JSON file).
        #[arg(long)]
        key: PathBuf,
    },
    /// Assigns an image to ECUs.
    Assign {
        #[command(flatten)]
        remote: Remote,
        /// Image name in the Image repository.
        #[arg(long)]
        image: String,
        /// Vehicles (repeat); none means all vehicles, filtered by --hardware-id.
        #[arg(long = "vin")]
        vins: Vec<String>,
        /// Only ECUs of this hardware id.
        #[arg(long)]
        hardware_id: Option<String>,
        /// Only these ECU serials (repeat).
        #[arg(long = "ecu")]
        ecus: Vec<String>,
    },
    /// Assignments.
    Assignment {
        #[command(subcommand)]
        command: AssignmentCommand,
    },
    /// The event log, newest first; `--follow` prints new events as they happen.
    Events {
        #[command(flatten)]
        remote: Remote,
        /// Only this vehicle.
        #[arg(long)]
        vin: Option<String>,
        /// Only security events.
        #[arg(long)]
        security: bool,
        /// Only kinds starting with this (`attack_reported`, `campaign_`).
        #[arg(long, conflicts_with = "follow")]
        kind: Option<String>,
        #[command(flatten)]
        page: PageArgs,
        /// After the newest events, keep printing new ones as they are recorded (until
        /// interrupted).
        #[arg(long, conflicts_with = "before")]
        follow: bool,
        /// With --follow, how often to ask for new events, in seconds.
        #[arg(long, default_value_t = 2, requires = "follow",
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        poll_secs: u64,
    },
    /// Provisioning tokens with which Primaries register themselves.
    ProvisioningToken {
        #[command(subcommand)]
        command: ProvisioningCommand,
    },
    /// Vehicle groups: static lists of VINs, or dynamic filters campaigns target.
    Group {
        #[command(subcommand)]
        command: campaigns::GroupCommand,
    },
    /// Campaigns: an image rolled out to a group in waves.
    Campaign {
        #[command(subcommand)]
        command: campaigns::CampaignCommand,
    },
}

/// How the server talks to its clients, and how it reaches the Image repository.
#[derive(Debug, Args)]
struct ServerTlsArgs {
    /// The server's certificate chain (PEM); re-read on SIGHUP.
    #[arg(long, env = "DIRECTOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM); re-read on SIGHUP.
    #[arg(long, env = "DIRECTOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) the Image repository's certificate chains to [default: the
    /// system's].
    #[arg(long, env = "DIRECTOR_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Serve plaintext HTTP, and read a plaintext Image repository: for tests only.
    #[arg(long, env = "DIRECTOR_INSECURE")]
    insecure: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Creates an operator API token and prints it once.
    Create {
        /// Director directory.
        #[arg(long, env = "DIRECTOR_DIR")]
        dir: PathBuf,
        /// A label for the token.
        #[arg(long)]
        label: String,
        /// Days until it stops working.
        #[arg(long, default_value_t = 90)]
        expires_in_days: u32,
    },
    /// Lists the operator tokens (never their secrets), newest first.
    List {
        /// Director directory.
        #[arg(long, env = "DIRECTOR_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revokes operator tokens, by id (from `token list`) or by label.
    Revoke {
        /// Director directory.
        #[arg(long, env = "DIRECTOR_DIR")]
        dir: PathBuf,
        /// The token's id.
        #[arg(long, required_unless_present = "label", conflicts_with = "label")]
        id: Option<String>,
        /// Every live token with this label.
        #[arg(long)]
        label: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum VehicleCommand {
    /// Sets (NAME=VALUE) and removes (--unset NAME) attributes dynamic groups filter on;
    /// `timezone` (an IANA name) places maintenance windows.
    SetAttribute {
        #[command(flatten)]
        remote: Remote,
        /// Vehicle identifier.
        vin: String,
        /// NAME=VALUE pairs to set.
        set: Vec<String>,
        /// Attributes to remove (repeat).
        #[arg(long)]
        unset: Vec<String>,
    },
    /// Registers a vehicle; prints its credential.
    Register {
        #[command(flatten)]
        remote: Remote,
        /// Vehicle identifier.
        #[arg(long)]
        vin: String,
        /// An ECU as SERIAL:HARDWARE_ID:PUBLIC_KEY_FILE; the first is the Primary.
        #[arg(long = "ecu", required = true)]
        ecus: Vec<String>,
        /// The fingerprint of the Primary's client certificate, to bind to the vehicle.
        #[arg(long)]
        tls_fingerprint: Option<Fingerprint>,
    },
    /// Lists vehicle credentials: expiry, revocation, pending renewal, bound certificate;
    /// the most recently registered vehicle first.
    Credentials {
        #[command(flatten)]
        remote: Remote,
        /// Only this vehicle.
        #[arg(long)]
        vin: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revokes a vehicle's credential and certificate binding: it is refused until it is
    /// issued a new one.
    RevokeCredential {
        #[command(flatten)]
        remote: Remote,
        /// Vehicle identifier.
        vin: String,
    },
    /// Lets a vehicle whose trusted time is past the real one (after the Director's own clock
    /// ran ahead while it signed) accept the time of its next Director metadata, once. The
    /// reset is signed into that metadata; see docs/SECURITY.md, "Time".
    ResetTime {
        #[command(flatten)]
        remote: Remote,
        /// Vehicle identifier.
        vin: String,
    },
    /// Issues a vehicle a new credential (printed once; install it with `primary-ecu
    /// set-credential`); the old one stops working.
    IssueCredential {
        #[command(flatten)]
        remote: Remote,
        /// Vehicle identifier.
        vin: String,
        /// Bind this client certificate fingerprint to the vehicle (a certificate bound already stays bound unless this replaces it; `revoke-credential` unbinds).
        #[arg(long)]
        tls_fingerprint: Option<Fingerprint>,
    },
    /// Lists vehicles, the most recently registered first.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only VINs containing this (any case).
        #[arg(long)]
        search: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Shows a vehicle: ECUs, installed images, assignments.
    Show {
        #[command(flatten)]
        remote: Remote,
        /// Vehicle identifier.
        vin: String,
    },
}

#[derive(Debug, Subcommand)]
enum AssignmentCommand {
    /// Lists assignment entries, newest first.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only this vehicle.
        #[arg(long)]
        vin: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Cancels an assignment: entries not yet delivered end now; vehicles that received it
    /// get targets without it, their ECUs abandon it unless past activation, and each entry
    /// ends with the ECU's report (cancelled, or installed: the cancel came too late).
    Cancel {
        #[command(flatten)]
        remote: Remote,
        /// Correlation id.
        correlation_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProvisioningCommand {
    /// Creates a provisioning token and prints it once.
    Create {
        #[command(flatten)]
        remote: Remote,
        /// Label.
        #[arg(long)]
        label: String,
        /// Valid for one registration only (`--max-uses 1`).
        #[arg(long, conflicts_with = "max_uses")]
        one_time: bool,
        /// Registrations it allows [default: 100].
        #[arg(long)]
        max_uses: Option<u64>,
        /// Hours until it stops working [default: 168].
        #[arg(long)]
        expires_in_hours: Option<u32>,
    },
    /// Lists provisioning tokens: uses, expiry, revocation; newest first.
    List {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revokes the tokens with a label.
    Revoke {
        #[command(flatten)]
        remote: Remote,
        /// Label.
        label: String,
    },
}

/// The database a Director directory uses ([`Database::of_dir`]).
fn database_of(dir: &std::path::Path) -> anyhow::Result<Database> {
    Database::of_dir(dir).map_err(|e| failure(Exit::Config, e))
}

/// Makes this process the one `director serve` of the SQLite database at `path`, for as long
/// as the returned file is open. Its vehicle cache is right only while every write of vehicle
/// data goes through it (`service/cache.rs`); replicas run on PostgreSQL.
fn claim_sqlite(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push("-serve.lock");
    let lock = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .fail(Exit::Failed, format!("could not open {}", lock.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(failure(
            Exit::Config,
            format!(
                "another `director serve` is using the SQLite database {}: one server per \
                 SQLite database; run replicas on PostgreSQL (`director init --database \
                 postgres://…`)",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(failure(
            Exit::Failed,
            format!("could not lock {}: {e}", lock.display()),
        )),
    }
}

/// The database of an initialized Director directory, or what to do when `dir` is not one.
fn open_director(dir: &std::path::Path) -> anyhow::Result<Db> {
    open_director_at(dir, &database_of(dir)?)
}

/// [`open_director`], the directory's database already read from it.
fn open_director_at(dir: &std::path::Path, database: &Database) -> anyhow::Result<Db> {
    if let Database::Sqlite(path) = database
        && !path.is_file()
    {
        return Err(failure(
            Exit::Config,
            format!(
                "{} is not a Director directory (it has no director.db): run `director init \
                 --dir {}` first, or pass the directory `director serve` uses.",
                dir.display(),
                dir.display()
            ),
        ));
    }
    let db = Db::connect(database).fail(
        Exit::Failed,
        format!("could not open the Director database {database}"),
    )?;
    // A database `director init` finished holds root version 1.
    if db.call_blocking(|conn| service::root(conn, 1))?.is_none() {
        return Err(failure(
            Exit::Config,
            format!(
                "{} holds no Director root: it is not a directory `director init` finished",
                dir.display()
            ),
        ));
    }
    Ok(db)
}

/// A root lifetime in days, within reason.
fn root_lifetime(days: u32) -> anyhow::Result<chrono::Duration> {
    if !(1..=3650).contains(&days) {
        return Err(failure(
            Exit::Config,
            format!("--root-lifetime-days must be between 1 and 3650, not {days}"),
        ));
    }
    Ok(chrono::Duration::days(i64::from(days)))
}

/// The offline root keys a rotation signs with (`--offline-keys`).
fn offline_root_keys(dir: &Path) -> anyhow::Result<Vec<uptane_core::crypto::SigningKey>> {
    keys::load_offline_root_keys(dir).fail(
        Exit::Config,
        format!(
            "could not read the offline root keys in {} (--offline-keys)",
            dir.display()
        ),
    )
}

/// Prints the warning of a root that expires soon, on standard error.
fn warn_if_root_expires(db: &Db) {
    let status = db.call_blocking(|conn| {
        service::rotation::root_status(conn, service::rotation::DEFAULT_EXPIRY_WARNING, now())
    });
    if let Ok(Some(warning)) = status.map(|s| s.warning()) {
        eprintln!("warning: {warning}");
    }
}

/// A role whose key the server holds.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnlineRole {
    Targets,
    Snapshot,
    Timestamp,
}

impl OnlineRole {
    fn as_str(self) -> &'static str {
        match self {
            OnlineRole::Targets => "targets",
            OnlineRole::Snapshot => "snapshot",
            OnlineRole::Timestamp => "timestamp",
        }
    }
}

async fn call(
    remote: &Remote,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let token = remote.token()?;
    let tls = ClientTls::new(remote.ca_cert.as_deref(), None, remote.insecure).fail(
        Exit::Config,
        "the CA certificate (--ca-cert, DIRECTOR_CA_CERT) is not usable",
    )?;
    tls.check_url(&remote.server).fail(
        Exit::Config,
        format!(
            "--server {} (DIRECTOR_URL) is not an https:// URL (plaintext needs --insecure)",
            remote.server
        ),
    )?;
    let client = tls.reqwest()?.build()?;
    let url = format!("{}{path}", remote.server.trim_end_matches('/'));
    let mut request = client.request(method, &url).bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?);
    }
    let response = request.send().await.fail(
        Exit::Unreachable,
        format!(
            "could not reach the Director at {}: is it running, and are --server (DIRECTOR_URL) \
             and --ca-cert right?",
            remote.server
        ),
    )?;
    let status = response.status();
    let bytes = response.bytes().await.fail(
        Exit::Unreachable,
        format!("the Director at {} stopped answering", remote.server),
    )?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_server_error() {
        // The Director (or what it depends on, the Image repository) failed: worth trying
        // again, unlike a refusal.
        return Err(failure(
            Exit::Unreachable,
            format!(
                "the Director failed to answer (HTTP {}: {}); try again, and see its log",
                status.as_u16(),
                value["error"].as_str().unwrap_or("no detail")
            ),
        ));
    }
    if !status.is_success() {
        let detail = value["error"].as_str().unwrap_or("no detail");
        let advice = match status.as_u16() {
            401 => {
                " Check the operator token (DIRECTOR_TOKEN); `director token create` makes a new one."
            }
            403 => " The token may not do this.",
            _ => "",
        };
        return Err(failure(
            Exit::Refused,
            format!(
                "the Director refused the request (HTTP {}: {detail}).{advice}",
                status.as_u16()
            ),
        ));
    }
    Ok(value)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print(json: bool, value: &Value, render: impl FnOnce(&Value) -> String) {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON serializes")
        );
    } else {
        outln!("{}", render(value));
    }
}

fn assignment_table(rows: &Value) -> String {
    let rows = rows.as_array().cloned().unwrap_or_default();
    table(
        &["CORRELATION", "VIN", "ECU", "IMAGE", "STATUS", "DETAIL"],
        rows.iter()
            .map(|r| {
                let mut row: Vec<String> = [
                    "correlation_id",
                    "vin",
                    "ecu_serial",
                    "filename",
                    "status",
                    "detail",
                ]
                .iter()
                .map(|k| text(&r[*k]))
                .collect();
                if r["status"] == "delivered"
                    && let Some(at) = r["cancel_requested_at"].as_str()
                {
                    row[4] = "delivered, cancel requested".into();
                    row[5] = format!("cancel requested at {at}; waiting for the ECU's word");
                }
                row
            })
            .collect(),
    )
}

/// Rows of `keys` from a JSON array.
fn rows(value: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    value
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| keys.iter().map(|k| text(&r[*k])).collect())
        .collect()
}

fn token_table(value: &Value) -> String {
    let keys = [
        "id",
        "label",
        "created_at",
        "expires_at",
        "revoked_at",
        "uses",
        "max_uses",
    ];
    table(
        &[
            "ID", "LABEL", "CREATED", "EXPIRES", "REVOKED", "USES", "MAX",
        ],
        rows(value, &keys),
    )
}

/// The operator token commands, which act on the database directly: whoever can read the
/// Director's directory is its administrator.
fn token_command(command: TokenCommand, json: bool) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            dir,
            label,
            expires_in_days,
        } => {
            let db = open_director(&dir)?;
            warn_if_root_expires(&db);
            let lifetime = chrono::Duration::days(i64::from(expires_in_days));
            let token =
                db.call_blocking(|conn| service::create_api_token(conn, &label, lifetime, now()))?;
            // Bare, so that `export DIRECTOR_TOKEN=$(director token create ...)` works.
            print(
                json,
                &json!({"token": token, "label": label, "expires_in_days": expires_in_days}),
                |_| token.clone(),
            );
        }
        TokenCommand::List { dir, page } => {
            let db = open_director(&dir)?;
            warn_if_root_expires(&db);
            let range = page.page()?;
            let tokens = db.call_blocking(|conn| service::list_api_tokens(conn, range))?;
            let value = serde_json::to_value(&tokens)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                outln!("{}", token_table(&value));
                if let Some(next) = page.next(&value) {
                    outln!("{next}");
                }
            }
        }
        TokenCommand::Revoke { dir, id, label } => {
            let which = match (id, label) {
                (Some(id), _) => TokenSelector::Id(id),
                (None, Some(label)) => TokenSelector::Label(label),
                (None, None) => return Err(failure(Exit::Config, "give --id or --label")),
            };
            let db = open_director(&dir)?;
            let n =
                db.call_blocking(|conn| service::revoke_api_tokens(conn, &which, "cli", now()))?;
            print(json, &json!({"revoked": n}), |_| {
                format!("revoked {n} token(s)")
            });
        }
    }
    Ok(())
}

const EVENT_COLUMNS: [&str; 8] = [
    "id",
    "at",
    "severity",
    "kind",
    "vin",
    "ecu_serial",
    "actor",
    "detail",
];

fn event_table(events: &[Value]) -> String {
    table(
        &[
            "ID", "AT", "SEVERITY", "KIND", "VIN", "ECU", "ACTOR", "DETAIL",
        ],
        events
            .iter()
            .map(|e| EVENT_COLUMNS.iter().map(|k| text(&e[*k])).collect())
            .collect(),
    )
}

/// `director events`: a page of the newest events; with `--follow`, then every new event,
/// oldest first, as it is recorded.
/// Which events `director events` lists.
struct EventsFilter {
    vin: Option<String>,
    security: bool,
    kind: Option<String>,
}

async fn events_command(
    remote: &Remote,
    json: bool,
    wanted: EventsFilter,
    page: &PageArgs,
    follow: bool,
    poll_secs: u64,
) -> anyhow::Result<()> {
    let mut filter = format!("security={}", wanted.security);
    if let Some(vin) = &wanted.vin {
        filter.push_str(&format!("&vin={}", url_part(vin)));
    }
    if let Some(kind) = &wanted.kind {
        filter.push_str(&format!("&kind={}", url_part(kind)));
    }
    // Following starts where the server says a follower starts, taken before the page: a
    // page that --vin, --security or --since left empty must not replay the log from its
    // start, and on PostgreSQL ids are not the order events commit in. (An event recorded
    // between the two may show in both, never in neither.)
    let mut last = 0;
    if follow {
        let position = call(
            remote,
            reqwest::Method::GET,
            "/api/v1/events/position",
            None,
        )
        .await?;
        last = position["after"]
            .as_i64()
            .context("the Director gave no follow position")?;
    }
    let path = format!("/api/v1/events?{filter}&{}", page.query());
    let value = call(remote, reqwest::Method::GET, &path, None).await?;
    let mut newest = value.as_array().cloned().unwrap_or_default();
    if follow {
        // Oldest first, so that what follows reads on in order.
        newest.reverse();
    }
    if json {
        if follow {
            for event in &newest {
                outln!("{event}");
            }
        } else {
            outln!("{}", serde_json::to_string_pretty(&value)?);
        }
    } else {
        outln!("{}", event_table(&newest));
        if let Some(next) = page.next(&value).filter(|_| !follow) {
            outln!("{next}");
        }
    }
    if !follow {
        return Ok(());
    }
    let mut every = tokio::time::interval(std::time::Duration::from_secs(poll_secs));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = service_runtime::shutdown_signal() => return Ok(()),
        }
        // Everything recorded since, a page at a time, so a burst is not skipped.
        loop {
            let path = format!("/api/v1/events?{filter}&after={last}&limit=1000");
            let value = call(remote, reqwest::Method::GET, &path, None).await?;
            let events = value.as_array().cloned().unwrap_or_default();
            let Some(id) = events.last().and_then(|e| e["id"].as_i64()) else {
                break;
            };
            last = id;
            for event in &events {
                if json {
                    outln!("{event}");
                } else {
                    let row = event_table(std::slice::from_ref(event));
                    outln!("{}", row.lines().nth(1).unwrap_or_default());
                }
            }
            if events.len() < 1000 {
                break;
            }
        }
    }
}

/// `value` escaped for a URL query or path segment: what an operator typed (a VIN, a label)
/// stays one value and cannot reach another endpoint (`../`).
fn url_part(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    service_runtime::clock::init()?;
    let json = cli.json;
    match cli.command {
        Command::Docs(docs) => docs.run::<Cli>(),
        Command::Migrate { dir, to: Some(to) } => {
            let Database::Sqlite(source) = database_of(&dir)? else {
                return Err(failure(
                    Exit::Config,
                    format!("{} already uses PostgreSQL", dir.display()),
                ));
            };
            let Database::Postgres(url) = &to else {
                return Err(failure(
                    Exit::Usage,
                    "--to names the PostgreSQL database to move to (postgres://…)",
                ));
            };
            // Held for the whole move: no server writes what would then be left behind.
            let _no_server = claim_sqlite(&source)?;
            // Once committed, the directory names the new database, and the SQLite file is
            // marked moved: a copy of the directory without DIR/database is refused rather
            // than serving the state from before the move.
            let name_it = || {
                keys::write_private_text(&Database::file_in(&dir), url)
                    .and_then(|()| {
                        std::fs::write(Database::moved_marker(&dir), to.to_string())
                            .map_err(|e| crate::error::DirectorError::Internal(e.to_string()))
                    })
                    .map_err(|e| {
                        crate::transfer::MoveError::Naming(format!(
                            "the copy to {to} was committed, but {} could not be written \
                             ({e}): write the connection string there by hand",
                            Database::file_in(&dir).display()
                        ))
                    })
            };
            let counts = crate::transfer::sqlite_to_postgres(&source, &to, name_it).fail(
                Exit::Failed,
                format!("could not move {} to {to}", source.display()),
            )?;
            print(
                json,
                &json!({"from": Database::Sqlite(source.clone()).to_string(), "to": to.to_string(), "tables": counts}),
                |_| {
                    let rows: Vec<Vec<String>> = counts
                        .iter()
                        .map(|c| {
                            vec![
                                c.table.to_string(),
                                c.source.to_string(),
                                c.target.to_string(),
                            ]
                        })
                        .collect();
                    format!(
                        "{}\nmoved {} to {to}; {} names it now (the SQLite file is unchanged)",
                        table(&["TABLE", "SQLITE", "POSTGRESQL"], rows),
                        source.display(),
                        Database::file_in(&dir).display()
                    )
                },
            );
            Ok(())
        }
        Command::Migrate { dir, to: None } => {
            let database = database_of(&dir)?;
            let db = open_director_at(&dir, &database)?;
            print(
                json,
                &json!({"database": database.to_string(), "engine": format!("{:?}", db.engine())}),
                |_| format!("{database}: migrations applied"),
            );
            Ok(())
        }
        Command::Init {
            dir,
            offline_keys,
            root_keys,
            root_threshold,
            image_root,
            root_lifetime_days,
            database,
        } => {
            if root_threshold == 0 || root_keys < root_threshold as usize {
                return Err(failure(
                    Exit::Config,
                    format!(
                        "--root-threshold {root_threshold} needs 1 to {root_keys} keys \
                         (--root-keys)"
                    ),
                ));
            }
            let lifetime = root_lifetime(root_lifetime_days)?;
            if Database::sqlite_file(&dir).exists() {
                return Err(failure(
                    Exit::Config,
                    format!(
                        "{} is already a Director directory: `director serve --dir {}` uses it",
                        dir.display(),
                        dir.display()
                    ),
                ));
            }
            let image_root_bytes = std::fs::read(&image_root).fail(
                Exit::Config,
                format!(
                    "could not read the Image repository root {}",
                    image_root.display()
                ),
            )?;
            uptane_core::verify::verify_root_self_signed(&uptane_core::verify::Raw::new(
                image_root_bytes.clone(),
            ))
            .fail(
                Exit::Config,
                format!(
                    "{} does not verify as a root: give the Image repository's \
                     metadata/1.root.json",
                    image_root.display()
                ),
            )?;
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("image-root.json"), &image_root_bytes)?;
            let roots = (0..root_keys)
                .map(|_| keys::generate())
                .collect::<Result<Vec<_>, _>>()?;
            for key in &roots {
                keys::write_private(&keys::offline_root_key_path(&offline_keys, key), key)?;
            }
            for role in ["targets", "snapshot", "timestamp"] {
                keys::write_private(&keys::online_key_path(&dir, role), &keys::generate()?)?;
            }
            let online = OnlineKeys::load(&dir)?;
            let database =
                database.unwrap_or_else(|| Database::Sqlite(Database::sqlite_file(&dir)));
            let db = Db::connect(&database).fail(
                Exit::Failed,
                format!("could not open the Director database {database}"),
            )?;
            if let Database::Postgres(url) = &database {
                // It may hold a password: readable by the Director's user only.
                keys::write_private_text(&Database::file_in(&dir), url)?;
            }
            let signers: Vec<_> = roots.iter().take(root_threshold as usize).collect();
            db.call_blocking(|conn| {
                service::store_initial_root(
                    conn,
                    &signers,
                    root_threshold,
                    &online,
                    lifetime,
                    now(),
                )
            })?;
            let root = db
                .call_blocking(|conn| service::root(conn, 1))?
                .context("the initial root was not stored")?;
            // Public: vehicles are provisioned with it before they hold a credential.
            let root_path = dir.join("1.root.json");
            std::fs::write(&root_path, &root)?;
            print(
                json,
                &json!({"dir": dir, "offline_keys": offline_keys, "root_keys": root_keys,
                    "root_threshold": root_threshold, "root": root_path}),
                |_| {
                    format!(
                        "initialized Director in {} ({root_threshold}-of-{root_keys} root keys \
                         in {}); the root to provision vehicles with is {}",
                        dir.display(),
                        offline_keys.display(),
                        root_path.display()
                    )
                },
            );
            Ok(())
        }
        Command::Serve {
            dir,
            listen,
            image_repo,
            metadata_lifetime_secs,
            max_body_bytes,
            vehicle_credential_lifetime_secs,
            root_expiry_warning_days,
            campaign_interval_secs,
            metrics_listen,
            retention_days,
            cached_vehicles,
            limits,
            tls,
        } => {
            if metadata_lifetime_secs < 120 {
                return Err(failure(
                    Exit::Config,
                    "--metadata-lifetime-secs must be at least 120",
                ));
            }
            if vehicle_credential_lifetime_secs < 60 {
                return Err(failure(
                    Exit::Config,
                    "--vehicle-credential-lifetime-secs must be at least 60",
                ));
            }
            // Vehicles may show a client certificate: any, proven by the handshake; the
            // vehicle API accepts only the one bound to the VIN.
            let transport = Transport::from_flags(
                tls.tls_cert.as_deref(),
                tls.tls_key.as_deref(),
                ClientAuth::Pinned,
                tls.insecure,
            )?;
            let image_tls = ClientTls::new(tls.ca_cert.as_deref(), None, tls.insecure)?;
            image_tls.check_url(&image_repo)?;
            let database = database_of(&dir)?;
            let db = open_director_at(&dir, &database)?;
            let _one_server = match &database {
                Database::Sqlite(path) => Some(claim_sqlite(path)?),
                Database::Postgres(_) => None,
            };
            let keys = db.call_blocking(|conn| service::KeyRing::load(conn, &dir))?;
            let image_root = std::fs::read(dir.join("image-root.json"))
                .context("reading the pinned Image repository root")?;
            let catalog = ImageCatalog::http(
                &format!("{}/metadata", image_repo.trim_end_matches('/')),
                image_root,
                &image_tls,
            )?;
            let lifetime = chrono::Duration::seconds(metadata_lifetime_secs);
            let expiry_warning = chrono::Duration::days(i64::from(root_expiry_warning_days));
            let policy = Policy {
                metadata_lifetime: lifetime,
                renew_margin: (lifetime / 4).min(chrono::Duration::hours(1)),
                vehicle_credential_lifetime: chrono::Duration::seconds(
                    vehicle_credential_lifetime_secs,
                ),
                root_expiry_warning: expiry_warning,
                retention: chrono::Duration::days(i64::from(retention_days)),
                cached_vehicles,
                ..Policy::default()
            };
            tokio::spawn(watch_root_expiry(db.clone(), expiry_warning));
            let service = DirectorService::new(db, keys, catalog, policy)?;
            tokio::spawn(watch_refusals(service.clone(), policy.refusal_window));
            tokio::spawn(watch_retention(service.clone()));
            tokio::spawn(drive_campaigns(
                service.clone(),
                std::time::Duration::from_secs(campaign_interval_secs),
            ));
            let state = AppState {
                service: service.clone(),
                max_body_bytes,
            };
            let listener = tokio::net::TcpListener::bind(listen).await.fail(
                Exit::Config,
                format!("could not listen on {listen}: is another program using it?"),
            )?;
            if let Some(metrics_listen) = metrics_listen {
                let scraped = service.clone();
                service_runtime::metrics::listen(metrics_listen, move || {
                    let service = scraped.clone();
                    async move {
                        crate::metrics::render(&service)
                            .await
                            .map_err(|e| e.to_string())
                    }
                })
                .await?;
            }
            let addr = listener.local_addr()?;
            tracing::debug!(%addr, scheme = transport.scheme(), "listening");
            outln!("listening on {addr}");
            crate::api::serve_within(
                listener,
                transport,
                limits.limits(),
                state,
                service_runtime::shutdown_signal(),
            )
            .await?;
            // What the refusal log counted since its last summary is not lost at shutdown.
            service.flush_refusals(true).await?;
            Ok(())
        }
        Command::Token { command } => token_command(command, json),
        Command::RotateRoot {
            dir,
            offline_keys,
            keys: count,
            threshold,
            root_lifetime_days,
        } => {
            let lifetime = root_lifetime(root_lifetime_days)?;
            let offline = offline_root_keys(&offline_keys)?;
            let mut change = service::rotation::RootChange::default();
            if let (Some(count), Some(threshold)) = (count, threshold) {
                let new_keys = (0..count)
                    .map(|_| keys::generate())
                    .collect::<Result<Vec<_>, _>>()?;
                change.root_keys = Some((new_keys, threshold));
            }
            let db = open_director(&dir)?;
            // The new keys are on disk (and durable) before the root that lists them is
            // published: a root whose keys nobody holds could never be rotated again.
            let written: Vec<PathBuf> = change
                .root_keys
                .iter()
                .flat_map(|(new_keys, _)| new_keys.iter())
                .map(|key| keys::offline_root_key_path(&offline_keys, key))
                .collect();
            if let Some((new_keys, _)) = &change.root_keys {
                for (key, path) in new_keys.iter().zip(&written) {
                    keys::write_private(path, key)?;
                }
                service::rotation::sync_dir(&offline_keys)?;
            }
            let published = db.call_blocking(|conn| {
                service::rotation::publish_next_root(
                    conn,
                    &offline,
                    &change,
                    lifetime,
                    "operator:cli",
                    now(),
                )
            });
            let version = match published {
                Ok(version) => version,
                Err(e) => {
                    for path in &written {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e.into());
                }
            };
            print(
                json,
                &json!({"root_version": version, "expires_in_days": root_lifetime_days}),
                |_| {
                    format!(
                        "published Director root version {version} (expires in \
                         {root_lifetime_days} days)"
                    )
                },
            );
            warn_if_root_expires(&db);
            Ok(())
        }
        Command::RotateOnline {
            dir,
            offline_keys,
            roles,
            root_lifetime_days,
        } => {
            let lifetime = root_lifetime(root_lifetime_days)?;
            let offline = offline_root_keys(&offline_keys)?;
            let roles: Vec<&'static str> = if roles.is_empty() {
                service::rotation::ONLINE_ROLES.to_vec()
            } else {
                roles.iter().map(|r| r.as_str()).collect()
            };
            let db = open_director(&dir)?;
            let version = db.call_blocking(|conn| {
                service::rotation::rotate_online(
                    conn,
                    &dir,
                    &offline,
                    &roles,
                    lifetime,
                    "operator:cli",
                    now(),
                )
            })?;
            print(
                json,
                &json!({"root_version": version, "rotated": roles}),
                |_| {
                    format!(
                        "published Director root version {version} with new {} key(s); the \
                         server signs with them from its next request",
                        roles.join(", ")
                    )
                },
            );
            Ok(())
        }
        Command::Status { remote } => {
            let status = call(&remote, reqwest::Method::GET, "/api/v1/status", None).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                outln!(
                    "Director root version {}, expires {} ({} days)",
                    status["root_version"],
                    status["root_expires_at"].as_str().unwrap_or("?"),
                    status["root_expires_in_days"]
                );
            }
            if status["root_expiry_warning"] == true {
                eprintln!(
                    "warning: the Director root expires in {} days: publish a new one with \
                     `director rotate-root`",
                    status["root_expires_in_days"]
                );
            }
            Ok(())
        }
        Command::Overview { remote } => {
            let o = call(&remote, reqwest::Method::GET, "/api/v1/overview", None).await?;
            print(json, &o, |o| {
                let rate = o["success_rate"]
                    .as_f64()
                    .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
                let counts = |v: &Value| {
                    v.as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, n)| format!("{k} {n}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                };
                format!(
                    "{} vehicles, {} ECUs; update success rate {rate}; {} security events in 24 h\n\
                     assignment entries: {}\ncampaigns: {}\n\n{}",
                    o["vehicles"],
                    o["ecus"],
                    o["security_events_24h"],
                    counts(&o["assignments"]),
                    counts(&o["campaigns"]),
                    table(
                        &["IMAGE", "ECUS"],
                        rows(&o["images"], &["filename", "ecus"])
                    )
                )
            });
            Ok(())
        }
        Command::Group { command } => campaigns::group(json, command).await,
        Command::Campaign { command } => campaigns::campaign(json, command).await,
        Command::Vehicle { command } => match command {
            VehicleCommand::SetAttribute {
                remote,
                vin,
                set,
                unset,
            } => campaigns::set_attributes(json, &remote, &vin, &set, &unset).await,
            VehicleCommand::Register {
                remote,
                vin,
                ecus,
                tls_fingerprint,
            } => {
                let mut list = Vec::new();
                for (i, spec) in ecus.iter().enumerate() {
                    let mut parts = spec.splitn(3, ':');
                    let (Some(serial), Some(hw), Some(key)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(failure(
                            Exit::Config,
                            format!("--ecu {spec:?} is not SERIAL:HARDWARE_ID:PUBLIC_KEY_FILE"),
                        ));
                    };
                    let key: Value = serde_json::from_slice(
                        &std::fs::read(key).with_context(|| format!("reading {key}"))?,
                    )?;
                    list.push(json!({"serial": serial, "hardware_id": hw, "public_key": key, "primary": i == 0}));
                }
                let value = call(
                    &remote,
                    reqwest::Method::POST,
                    "/api/v1/vehicles",
                    Some(json!({"vin": vin, "ecus": list, "tls_fingerprint": tls_fingerprint})),
                )
                .await?;
                print(json, &value, |v| {
                    format!(
                        "registered {}; vehicle credential: {}",
                        text(&v["vin"]),
                        text(&v["credential"])
                    )
                });
                Ok(())
            }
            VehicleCommand::Credentials { remote, vin, page } => {
                let mut path = format!("/api/v1/vehicle-credentials?{}", page.query());
                if let Some(vin) = &vin {
                    path.push_str(&format!("&vin={}", url_part(vin)));
                }
                let value = call(&remote, reqwest::Method::GET, &path, None).await?;
                print_page(json, &page, &value, |v| {
                    let keys = [
                        "vin",
                        "issued_at",
                        "expires_at",
                        "revoked_at",
                        "renewal_pending",
                        "tls_fingerprint",
                    ];
                    table(
                        &[
                            "VIN",
                            "ISSUED",
                            "EXPIRES",
                            "REVOKED",
                            "RENEWING",
                            "CERTIFICATE",
                        ],
                        rows(v, &keys),
                    )
                });
                Ok(())
            }
            VehicleCommand::RevokeCredential { remote, vin } => {
                let value = call(
                    &remote,
                    reqwest::Method::POST,
                    &format!("/api/v1/vehicles/{}/credential/revoke", url_part(&vin)),
                    None,
                )
                .await?;
                print(json, &value, |_| {
                    format!("revoked the credential and certificate binding of {vin}")
                });
                Ok(())
            }
            VehicleCommand::IssueCredential {
                remote,
                vin,
                tls_fingerprint,
            } => {
                let value = call(
                    &remote,
                    reqwest::Method::POST,
                    &format!("/api/v1/vehicles/{}/credential", url_part(&vin)),
                    Some(json!({"tls_fingerprint": tls_fingerprint})),
                )
                .await?;
                print(json, &value, |v| {
                    format!(
                        "new credential for {vin} (expires {}): {}",
                        text(&v["credential_expires_at"]),
                        text(&v["credential"])
                    )
                });
                Ok(())
            }
            VehicleCommand::ResetTime { remote, vin } => {
                let value = call(
                    &remote,
                    reqwest::Method::POST,
                    &format!("/api/v1/vehicles/{}/time-reset", url_part(&vin)),
                    None,
                )
                .await?;
                print(json, &value, |v| {
                    format!(
                        "time reset {} for {vin}: its next Director metadata carries it",
                        v["time_reset"]
                    )
                });
                Ok(())
            }
            VehicleCommand::List {
                remote,
                search,
                page,
            } => {
                let mut path = format!("/api/v1/vehicles?{}", page.query());
                if let Some(search) = &search {
                    path.push_str(&format!("&search={}", url_part(search)));
                }
                let value = call(&remote, reqwest::Method::GET, &path, None).await?;
                print_page(json, &page, &value, |v| {
                    table(&["VIN", "REGISTERED"], rows(v, &["vin", "registered_at"]))
                });
                Ok(())
            }
            VehicleCommand::Show { remote, vin } => {
                let value = call(
                    &remote,
                    reqwest::Method::GET,
                    &format!("/api/v1/vehicles/{}", url_part(&vin)),
                    None,
                )
                .await?;
                print(json, &value, |v| {
                    let ecus = v["ecus"].as_array().cloned().unwrap_or_default();
                    let ecu_table = table(
                        &[
                            "ECU",
                            "HARDWARE",
                            "PRIMARY",
                            "INSTALLED",
                            "COUNTER",
                            "ATTACKS",
                        ],
                        ecus.iter()
                            .map(|e| {
                                vec![
                                    text(&e["serial"]),
                                    text(&e["hardware_id"]),
                                    text(&e["primary"]),
                                    text(&e["installed"]["filename"]),
                                    text(&e["last_report_counter"]),
                                    e["attacks_reported"].as_array().map_or_else(
                                        || text(&e["attacks_reported"]),
                                        |a| a.len().to_string(),
                                    ),
                                ]
                            })
                            .collect(),
                    );
                    format!(
                        "vehicle {}\n\n{ecu_table}\n\n{}",
                        text(&v["vin"]),
                        assignment_table(&v["assignments"])
                    )
                });
                Ok(())
            }
        },
        Command::EcuReplace {
            remote,
            vin,
            serial,
            new_serial,
            hardware_id,
            key,
        } => {
            let key: Value = serde_json::from_slice(&std::fs::read(&key)?)?;
            let value = call(
                &remote,
                reqwest::Method::PUT,
                &format!(
                    "/api/v1/vehicles/{}/ecus/{}",
                    url_part(&vin),
                    url_part(&serial)
                ),
                Some(json!({"serial": new_serial, "hardware_id": hardware_id, "public_key": key})),
            )
            .await?;
            print(json, &value, |_| {
                format!("ECU {serial} of {vin} replaced by {new_serial}")
            });
            Ok(())
        }
        Command::Assign {
            remote,
            image,
            vins,
            hardware_id,
            ecus,
        } => {
            let body =
                json!({"image": image, "vins": vins, "hardware_id": hardware_id, "ecus": ecus});
            let value = call(
                &remote,
                reqwest::Method::POST,
                "/api/v1/assignments",
                Some(body),
            )
            .await?;
            print(json, &value, |v| {
                let mut out = format!(
                    "assignment {}\n{}",
                    text(&v["correlation_id"]),
                    assignment_table(&v["ecus"])
                );
                let superseded = v["superseded"].as_array().map_or(0, Vec::len);
                if superseded > 0 {
                    out.push_str(&format!(
                        "\n\nit supersedes {superseded} earlier entr{} not yet installed (now \
                         cancelled):\n{}",
                        if superseded == 1 { "y" } else { "ies" },
                        assignment_table(&v["superseded"])
                    ));
                }
                out
            });
            Ok(())
        }
        Command::Assignment { command } => match command {
            AssignmentCommand::List { remote, vin, page } => {
                let mut path = format!("/api/v1/assignments?{}", page.query());
                if let Some(vin) = &vin {
                    path.push_str(&format!("&vin={}", url_part(vin)));
                }
                let value = call(&remote, reqwest::Method::GET, &path, None).await?;
                print_page(json, &page, &value, assignment_table);
                Ok(())
            }
            AssignmentCommand::Cancel {
                remote,
                correlation_id,
            } => {
                let value = call(
                    &remote,
                    reqwest::Method::POST,
                    &format!("/api/v1/assignments/{}/cancel", url_part(&correlation_id)),
                    None,
                )
                .await?;
                print(json, &value, |v| {
                    format!(
                        "cancelled {} ECU entries not yet delivered; {} ECUs that received it \
                         are told to abandon it (each entry ends with the ECU's report: \
                         cancelled, or installed if it was past activation)",
                        text(&v["cancelled"]),
                        text(&v["cancel_requested"])
                    )
                });
                Ok(())
            }
        },
        Command::Events {
            remote,
            vin,
            security,
            kind,
            page,
            follow,
            poll_secs,
        } => {
            let filter = EventsFilter {
                vin,
                security,
                kind,
            };
            events_command(&remote, json, filter, &page, follow, poll_secs).await
        }
        Command::ProvisioningToken { command } => match command {
            ProvisioningCommand::Create {
                remote,
                label,
                one_time,
                max_uses,
                expires_in_hours,
            } => {
                let mut body = json!({"label": label, "one_time": one_time});
                if let Some(n) = max_uses {
                    body["max_uses"] = json!(n);
                }
                if let Some(h) = expires_in_hours {
                    body["expires_in_secs"] = json!(i64::from(h) * 3600);
                }
                let value = call(
                    &remote,
                    reqwest::Method::POST,
                    "/api/v1/provisioning-tokens",
                    Some(body),
                )
                .await?;
                print(json, &value, |v| text(&v["token"]));
                Ok(())
            }
            ProvisioningCommand::List { remote, page } => {
                let path = format!("/api/v1/provisioning-tokens?{}", page.query());
                let value = call(&remote, reqwest::Method::GET, &path, None).await?;
                print_page(json, &page, &value, token_table);
                Ok(())
            }
            ProvisioningCommand::Revoke { remote, label } => {
                let value = call(
                    &remote,
                    reqwest::Method::POST,
                    &format!("/api/v1/provisioning-tokens/{}/revoke", url_part(&label)),
                    None,
                )
                .await?;
                print(json, &value, |v| format!("revoked {}", text(&v["revoked"])));
                Ok(())
            }
        },
    }
}
