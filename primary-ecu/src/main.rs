use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use primary_ecu::agent::Primary;
use primary_ecu::config::{Settings, SettingsArgs};
use primary_ecu::provision::{self, Provisioning, Registration};
use primary_ecu::state::StateDir;
use serde_json::{Value, json};
use service_runtime::cli::{Exit, Fail};
use service_runtime::outln;

/// The Primary ECU agent: polls the Director and the Image repository, verifies everything,
/// and updates the vehicle's ECUs.
#[derive(Debug, Parser)]
#[command(name = "primary-ecu", version)]
struct Cli {
    /// Print JSON instead of sentences.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct RegistrationArgs {
    /// Register the vehicle with this provisioning token.
    #[arg(
        long,
        env = "PRIMARY_PROVISIONING_TOKEN",
        group = "registration",
        hide_env_values = true
    )]
    provisioning_token: Option<String>,
    /// Register the vehicle with this operator API token.
    #[arg(
        long,
        env = "PRIMARY_OPERATOR_TOKEN",
        group = "registration",
        hide_env_values = true
    )]
    operator_token: Option<String>,
    /// The vehicle is registered already: use this credential.
    #[arg(
        long,
        env = "PRIMARY_VEHICLE_CREDENTIAL",
        group = "registration",
        hide_env_values = true
    )]
    vehicle_credential: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Docs(service_runtime::cli::Docs),
    /// Creates the Primary's key and state, pins both roots, asks each Secondary who it is,
    /// and registers the vehicle with the Director.
    Init {
        /// State directory.
        #[arg(long, env = "PRIMARY_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        settings: SettingsArgs,
        /// The Director root to pin.
        #[arg(long, env = "PRIMARY_DIRECTOR_ROOT")]
        director_root: PathBuf,
        /// The Image repository root to pin.
        #[arg(long, env = "PRIMARY_IMAGE_ROOT")]
        image_root: PathBuf,
        /// The Primary's factory image.
        #[arg(long, env = "PRIMARY_FACTORY_IMAGE")]
        factory_image: PathBuf,
        /// File name of the factory image [default: its file name].
        #[arg(long, env = "PRIMARY_FACTORY_NAME")]
        factory_name: Option<String>,
        #[command(flatten)]
        registration: RegistrationArgs,
    },
    /// Runs update cycles every poll interval until SIGTERM or SIGINT.
    Run {
        /// State directory.
        #[arg(long, env = "PRIMARY_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        settings: SettingsArgs,
        /// Fault injection for tests: read the system clock this many seconds off (a
        /// spoofed NTP jump, a bad RTC). Never kept; see docs/SECURITY.md, "Time".
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        fault_clock_offset_secs: i64,
    },
    /// Runs one update cycle. Exit status: 0 nothing left to do, 1 a server could not be
    /// reached, 2 an attack was refused, 3 an ECU failed or work is pending.
    Once {
        /// State directory.
        #[arg(long, env = "PRIMARY_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        settings: SettingsArgs,
        /// Fault injection for tests: read the system clock this many seconds off (a
        /// spoofed NTP jump, a bad RTC). Never kept; see docs/SECURITY.md, "Time".
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        fault_clock_offset_secs: i64,
    },
    /// Makes the Primary's TLS identity in the state directory (kept if there is one) and
    /// prints its fingerprint, which each Secondary pins at `secondary-ecu init`.
    TlsIdentity {
        /// State directory.
        #[arg(long, env = "PRIMARY_DIR")]
        dir: PathBuf,
        /// The name the certificate carries.
        #[arg(long, env = "PRIMARY_SERIAL", default_value = "primary")]
        serial: String,
    },
    /// Replaces the vehicle credential with one an operator issued (`director vehicle
    /// issue-credential`), read from standard input so that it stays out of the process
    /// list and the shell history.
    SetCredential {
        /// State directory.
        #[arg(long, env = "PRIMARY_DIR")]
        dir: PathBuf,
    },
    /// Trusted metadata versions, installed images, pending work and the last error.
    Status {
        /// State directory.
        #[arg(long, env = "PRIMARY_DIR")]
        dir: PathBuf,
    },
}

fn settings(dir: &Path, args: SettingsArgs) -> anyhow::Result<Settings> {
    let kept = Settings::load(dir).fail(
        Exit::Config,
        format!("the settings kept in {} are not readable", dir.display()),
    )?;
    Settings::resolve(kept, args).fail(Exit::Config, "the Primary's settings are not usable")
}

/// Whether `dir` holds a provisioned Primary (its kept settings), or what to do.
fn require_provisioned(dir: &Path) -> anyhow::Result<()> {
    match Settings::load(dir) {
        Ok(Some(_)) => Ok(()),
        _ => Err(service_runtime::cli::failure(
            Exit::Config,
            format!(
                "{} holds no provisioned Primary: run `primary-ecu init --dir {}` first",
                dir.display(),
                dir.display()
            ),
        )),
    }
}

/// The provisioned Primary in `dir`, or what to do when there is none.
fn open(dir: &Path, settings: Settings) -> anyhow::Result<Primary> {
    Primary::open(dir, settings).fail(
        Exit::Config,
        format!(
            "{} does not hold a usable provisioned Primary: run `primary-ecu init --dir {}` first",
            dir.display(),
            dir.display()
        ),
    )
}

/// What a command did: JSON, or the sentence `human` makes.
fn say(json: bool, value: Value, human: impl FnOnce() -> String) {
    if json {
        outln!("{value}");
    } else {
        outln!("{}", human());
    }
}

fn version_of(path: &Path) -> Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map_or(Value::Null, |doc| doc["signed"]["version"].clone())
}

fn status(dir: &Path) -> anyhow::Result<Value> {
    let files = StateDir::new(dir);
    require_provisioned(dir)?;
    let settings = Settings::load(dir)?.context("no config.json")?;
    let state = files.load_state()?;
    let versions = |metadata: PathBuf| {
        json!({
            "root": version_of(&metadata.join("root.json")),
            "timestamp": version_of(&metadata.join("timestamp.json")),
            "snapshot": version_of(&metadata.join("snapshot.json")),
            "targets": version_of(&metadata.join("targets.json")),
        })
    };
    let mut installed = serde_json::Map::new();
    if let Some(own) = &state.installed {
        installed.insert(settings.serial.to_string(), json!(own.filename));
    }
    for (serial, image) in &state.reported {
        installed.insert(serial.to_string(), json!(image.filename));
    }
    let pending: Vec<Value> = state
        .updates
        .iter()
        .filter(|(_, u)| !u.phase.is_final())
        .map(|(serial, u)| json!({"ecu": serial, "correlation_id": u.correlation_id, "filename": u.filename, "phase": u.phase, "detail": u.detail, "attempts": u.attempts}))
        .collect();
    let inventory: Value =
        service_runtime::files::load_json(&files.inventory()).unwrap_or(Value::Null);
    Ok(json!({
        "vin": settings.vin,
        "primary": settings.serial,
        "ecus": inventory,
        "director": versions(files.director_metadata()),
        "image_repo": versions(files.image_metadata()),
        "installed": installed,
        "updates": state.updates,
        "pending": pending,
        "attacks_not_yet_reported": state.pending_attacks,
        "last_cycle": state.last_cycle,
        "last_error": state.last_error,
    }))
}

fn print_status(status: &Value) {
    // Strings bare, and made visible: details come from Secondaries and the Director.
    let v = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(text) => service_runtime::cli::visible(text),
        other => service_runtime::cli::visible(&other.to_string()),
    };
    outln!(
        "vehicle {}  primary {}",
        v(&status["vin"]),
        v(&status["primary"])
    );
    for repo in ["director", "image_repo"] {
        let r = &status[repo];
        outln!(
            "{repo:<10} root v{}  timestamp v{}  snapshot v{}  targets v{}",
            v(&r["root"]),
            v(&r["timestamp"]),
            v(&r["snapshot"]),
            v(&r["targets"])
        );
    }
    if let Some(installed) = status["installed"].as_object() {
        for (serial, filename) in installed {
            outln!(
                "installed  {:<20} {}",
                service_runtime::cli::visible(serial),
                v(filename)
            );
        }
    }
    match status["pending"].as_array() {
        Some(pending) if !pending.is_empty() => {
            for p in pending {
                outln!(
                    "pending    {:<20} {} ({}, {}): {}",
                    v(&p["ecu"]),
                    v(&p["filename"]),
                    v(&p["correlation_id"]),
                    v(&p["phase"]),
                    v(&p["detail"])
                );
            }
        }
        _ => outln!("pending    none"),
    }
    let attacks = status["attacks_not_yet_reported"]
        .as_array()
        .map_or(0, Vec::len);
    outln!("attacks not yet reported: {attacks}");
    outln!("last cycle: {}", v(&status["last_cycle"]));
    outln!("last error: {}", v(&status["last_error"]));
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    match cli.command {
        Command::Docs(docs) => docs.run::<Cli>().map(|()| ExitCode::SUCCESS),
        Command::Init {
            dir,
            settings: args,
            director_root,
            image_root,
            factory_image,
            factory_name,
            registration,
        } => {
            let settings = settings(&dir, args)?;
            let registration = match registration {
                RegistrationArgs {
                    provisioning_token: Some(t),
                    ..
                } => Registration::ProvisioningToken(t),
                RegistrationArgs {
                    operator_token: Some(t),
                    ..
                } => Registration::OperatorToken(t),
                RegistrationArgs {
                    vehicle_credential: Some(c),
                    ..
                } => Registration::Credential(c),
                _ => anyhow::bail!(
                    "one of --provisioning-token, --operator-token or --vehicle-credential is required"
                ),
            };
            let factory_name = service_runtime::cli::image_name(factory_name, &factory_image)?;
            let provisioning = Provisioning {
                director_root,
                image_root,
                factory_image,
                factory_name,
                registration,
            };
            let inventory = match provision::init(&dir, &settings, &provisioning).await {
                Ok(inventory) => inventory,
                Err(e) => {
                    let (exit, advice) = e.advice();
                    return Err(e).fail(exit, advice);
                }
            };
            let role =
                |e: &primary_ecu::state::InventoryEcu| e.mode.map_or("primary", |m| m.as_str());
            say(
                json,
                json!({"vin": settings.vin.as_str(), "dir": dir,
                    "ecus": inventory.iter().map(|e| json!({"serial": e.serial.as_str(),
                        "hardware_id": e.hardware_id.as_str(), "role": role(e)}))
                        .collect::<Vec<_>>()}),
                || {
                    format!(
                        "provisioned vehicle {} in {}: {}",
                        settings.vin,
                        dir.display(),
                        inventory
                            .iter()
                            .map(|e| format!("{} ({}, {})", e.serial, e.hardware_id, role(e)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            dir,
            settings: args,
            fault_clock_offset_secs,
        } => {
            require_provisioned(&dir)?;
            let settings = settings(&dir, args)?;
            let interval = settings.poll_interval();
            let mut primary = open(&dir, settings.clone())?;
            primary.offset_clock(clock_offset(fault_clock_offset_secs)?);
            outln!(
                "primary-ecu running for vehicle {} (every {} s)",
                settings.vin,
                interval.as_secs()
            );
            primary.run(service_runtime::shutdown_signal()).await;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Once {
            dir,
            settings: args,
            fault_clock_offset_secs,
        } => {
            require_provisioned(&dir)?;
            let settings = settings(&dir, args)?;
            let mut primary = open(&dir, settings)?;
            primary.offset_clock(clock_offset(fault_clock_offset_secs)?);
            let report = primary.cycle().await;
            say(
                json,
                json!({"exit": report.exit_code(), "summary": report.summary()}),
                || service_runtime::cli::visible(&report.summary()),
            );
            Ok(ExitCode::from(report.exit_code()))
        }
        Command::SetCredential { dir } => {
            let mut secret = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), 4096),
                &mut secret,
            )?;
            provision::replace_credential(&dir, &secret)?;
            say(json, json!({"replaced": true}), || {
                "credential replaced; its lifetime is learnt at the next cycle".into()
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::TlsIdentity { dir, serial } => {
            let identity = provision::tls_identity(&dir, &serial)?;
            // Bare, for `FP=$(primary-ecu tls-identity ...)`.
            say(
                json,
                json!({"fingerprint": identity.fingerprint().to_string()}),
                || identity.fingerprint().to_string(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { dir } => {
            let status = status(&dir)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::init_tracing();
    let cli: Cli = service_runtime::cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => service_runtime::exit_code(Err(e)),
    }
}

/// `--fault-clock-offset-secs` as a duration, refused when it is beyond what a clock can be
/// off by (`service_runtime::clock::offset_of`).
fn clock_offset(seconds: i64) -> anyhow::Result<chrono::Duration> {
    service_runtime::clock::offset_of(seconds)
        .ok_or_else(|| anyhow::anyhow!("--fault-clock-offset-secs {seconds} is out of range"))
}
