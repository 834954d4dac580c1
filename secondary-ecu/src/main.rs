use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secondary_ecu::agent::{self, Agent, Faults, Identity, Mode, Phase, Settings};
use secondary_ecu::rpc::Link;
use service_runtime::cli::{Exit, Fail};
use service_runtime::outln;
use service_runtime::tls::Fingerprint;
use uptane_core::ids::{EcuSerial, HardwareId, Vin};

/// The Secondary ECU agent on a simulated A/B device.
#[derive(Debug, Parser)]
#[command(name = "secondary-ecu", version)]
struct Cli {
    /// Print JSON instead of sentences.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Docs(service_runtime::cli::Docs),
    /// Creates the ECU key, identity, trusted roots and the device (factory image in slot A).
    Init {
        /// ECU directory.
        #[arg(long, env = "SECONDARY_DIR")]
        dir: PathBuf,
        /// Vehicle identifier.
        #[arg(long, env = "SECONDARY_VIN")]
        vin: Vin,
        /// ECU serial.
        #[arg(long, env = "SECONDARY_SERIAL")]
        serial: EcuSerial,
        /// Hardware id.
        #[arg(long, env = "SECONDARY_HARDWARE_ID")]
        hardware_id: HardwareId,
        /// Verification mode.
        #[arg(long, env = "SECONDARY_MODE", value_enum)]
        mode: Mode,
        /// The Director root to trust (provisioned).
        #[arg(long, env = "SECONDARY_DIRECTOR_ROOT")]
        director_root: PathBuf,
        /// The Image repository root to trust (full verification).
        #[arg(long, env = "SECONDARY_IMAGE_ROOT")]
        image_root: Option<PathBuf>,
        /// Factory image file for slot A.
        #[arg(long)]
        factory_image: PathBuf,
        /// File name of the factory image [default: its file name].
        #[arg(long)]
        factory_name: Option<String>,
        /// The Primary's TLS certificate fingerprint (printed by `primary-ecu tls-identity`):
        /// only that certificate may change this ECU's state or read its evidence.
        #[arg(
            long,
            env = "SECONDARY_PRIMARY_FINGERPRINT",
            required_unless_present = "insecure"
        )]
        primary_fingerprint: Option<Fingerprint>,
        /// Provision without pinning a Primary: the ECU can then only run with `--insecure`.
        #[arg(long)]
        insecure: bool,
        /// The device has one bank only: an install overwrites the running image, and a
        /// device interrupted while writing boots into recovery until programmed again.
        #[arg(long)]
        single_bank: bool,
    },
    /// Serves the Secondary protocol.
    Run {
        /// ECU directory.
        #[arg(long, env = "SECONDARY_DIR")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "SECONDARY_LISTEN", default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Largest transfer chunk accepted, in bytes (at most 4 MiB minus framing).
        #[arg(long, env = "SECONDARY_MAX_CHUNK", default_value_t = 1 << 20)]
        max_chunk_size: u32,
        /// Boot attempts of a new slot before falling back.
        #[arg(long, env = "SECONDARY_BOOT_ATTEMPTS", default_value_t = 3)]
        boot_attempts: u32,
        /// Wait for Confirm instead of confirming after the health check.
        #[arg(long, env = "SECONDARY_MANUAL_CONFIRM")]
        manual_confirm: bool,
        /// Start making received bytes durable every this many bytes (no more than twice this
        /// and one chunk are ever waiting to become durable).
        #[arg(long, env = "SECONDARY_DURABLE_INTERVAL_BYTES", default_value_t = 32 << 20)]
        durable_interval_bytes: u64,
        /// Fault: cut power at this phase.
        #[arg(long, env = "SECONDARY_FAULT_POWER_LOSS", value_enum)]
        fault_power_loss: Option<Phase>,
        /// Fault: corrupt the slot write.
        #[arg(long, env = "SECONDARY_FAULT_CORRUPT_WRITE")]
        fault_corrupt_write: bool,
        /// Fault: milliseconds of delay per received chunk.
        #[arg(long, env = "SECONDARY_FAULT_SLOW_LINK_MS", default_value_t = 0)]
        fault_slow_link_ms: u64,
        /// Fault: stop reading the transfer at this offset.
        #[arg(long, env = "SECONDARY_FAULT_STALL_AFTER")]
        fault_stall_after: Option<u64>,
        /// Fault: the new image never boots.
        #[arg(long, env = "SECONDARY_FAULT_FAIL_BOOT")]
        fault_fail_boot: bool,
        /// Fault: the new image fails this many boots, then boots.
        #[arg(long, env = "SECONDARY_FAULT_FAIL_BOOT_TIMES", default_value_t = 0)]
        fault_fail_boot_times: u32,
        /// Fault: the new image boots but fails its health check every time.
        #[arg(long, env = "SECONDARY_FAULT_HEALTH_CHECK_FAIL")]
        fault_health_check_fail: bool,
        /// Fault: lose the answer to the Upload that carries the chunk at this offset or
        /// beyond (once).
        #[arg(long, env = "SECONDARY_FAULT_LOSE_ACK_AFTER")]
        fault_lose_ack_after: Option<u64>,
        /// Fault: state this protocol version in GetInfo (an older Secondary).
        #[arg(long, env = "SECONDARY_FAULT_PROTOCOL_VERSION")]
        fault_protocol_version: Option<u32>,
        /// Fault: staging capacity in bytes.
        #[arg(long, env = "SECONDARY_FAULT_STORAGE_BYTES")]
        fault_storage_bytes: Option<u64>,
        /// Fault: the boot environment is not redundant, and power is lost halfway through
        /// its write at activation (torn).
        #[arg(long, env = "SECONDARY_FAULT_TORN_ENV")]
        fault_torn_env: bool,
        /// Fault: slot writes wait (at most a minute) until this file exists (busy storage).
        #[arg(long, env = "SECONDARY_FAULT_HOLD_WRITE_UNTIL")]
        fault_hold_write_until: Option<PathBuf>,
        /// Serve plaintext gRPC and answer anyone: for tests that inject faults only.
        #[arg(long, env = "SECONDARY_INSECURE")]
        insecure: bool,
    },
}

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Docs(docs) => docs.run::<Cli>(),
        Command::Init {
            dir,
            vin,
            serial,
            hardware_id,
            mode,
            director_root,
            image_root,
            factory_image,
            factory_name,
            primary_fingerprint,
            insecure,
            single_bank,
        } => {
            if insecure && primary_fingerprint.is_none() {
                tracing::warn!("no Primary pinned: this ECU can only run with --insecure");
            }
            let director_root = std::fs::read(&director_root).fail(
                Exit::Config,
                format!(
                    "could not read the Director root {}",
                    director_root.display()
                ),
            )?;
            uptane_core::verify::verify_root_self_signed(&uptane_core::verify::Raw::new(
                director_root.clone(),
            ))
            .fail(
                Exit::Config,
                "the Director root does not verify: give the Director's 1.root.json",
            )?;
            let image_root = match (&image_root, mode) {
                (Some(path), _) => Some(std::fs::read(path).fail(
                    Exit::Config,
                    format!(
                        "could not read the Image repository root {}",
                        path.display()
                    ),
                )?),
                (None, Mode::Full) => {
                    return Err(service_runtime::cli::failure(
                        Exit::Config,
                        "full verification needs --image-root (the Image repository's \
                         1.root.json)",
                    ));
                }
                (None, Mode::Partial) => None,
            };
            let image = std::fs::read(&factory_image).fail(
                Exit::Config,
                format!(
                    "could not read the factory image {}",
                    factory_image.display()
                ),
            )?;
            let factory_name = service_runtime::cli::image_name(factory_name, &factory_image)?;
            let key = uptane_core::crypto::SigningKey::generate_with(getrandom::fill)
                .map_err(|e| anyhow::anyhow!("random: {e}"))?;
            let identity = Identity {
                vin,
                serial,
                hardware_id,
                mode,
                primary_fingerprint,
            };
            let provisioning = agent::Provisioning {
                identity: &identity,
                key: &key,
                director_root: &director_root,
                image_root: image_root.as_deref(),
                image_name: &factory_name,
                image: &image,
                single_bank,
            };
            let fingerprint = agent::init(&dir, &provisioning, now())?;
            let public_key = dir.join("ecu.pub.json");
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"serial": identity.serial.as_str(), "dir": dir,
                        "public_key": public_key, "fingerprint": fingerprint.to_string()})
                );
            } else {
                outln!(
                    "initialized ECU {} in {}; public key in {}",
                    identity.serial,
                    dir.display(),
                    public_key.display()
                );
                outln!("TLS certificate fingerprint {fingerprint}");
            }
            Ok(())
        }
        Command::Run {
            dir,
            listen,
            max_chunk_size,
            boot_attempts,
            manual_confirm,
            durable_interval_bytes,
            fault_power_loss,
            fault_corrupt_write,
            fault_slow_link_ms,
            fault_stall_after,
            fault_fail_boot,
            fault_fail_boot_times,
            fault_health_check_fail,
            fault_lose_ack_after,
            fault_protocol_version,
            fault_storage_bytes,
            fault_torn_env,
            fault_hold_write_until,
            insecure,
        } => {
            if max_chunk_size == 0
                || max_chunk_size as usize > secondary_ecu::rpc::MAX_MESSAGE_BYTES - 1024
            {
                anyhow::bail!(
                    "--max-chunk-size must be between 1 and {}",
                    secondary_ecu::rpc::MAX_MESSAGE_BYTES - 1024
                );
            }
            if boot_attempts == 0 {
                anyhow::bail!("--boot-attempts must be at least 1");
            }
            let settings = Settings {
                max_chunk_size,
                boot_attempts,
                manual_confirm,
                durable_interval: durable_interval_bytes.max(1),
                faults: Faults {
                    power_loss: fault_power_loss,
                    corrupt_write: fault_corrupt_write,
                    slow_link_ms: fault_slow_link_ms,
                    stall_after: fault_stall_after,
                    fail_boot: fault_fail_boot,
                    fail_boot_times: fault_fail_boot_times,
                    health_check_fail: fault_health_check_fail,
                    lose_ack_after: fault_lose_ack_after,
                    ack_lost: Default::default(),
                    protocol_version: fault_protocol_version,
                    storage_bytes: fault_storage_bytes,
                    torn_env: fault_torn_env,
                    hold_write_until: fault_hold_write_until,
                },
            };
            if settings.faults.enabled() {
                tracing::warn!(faults = ?settings.faults, "fault injection enabled: this ECU misbehaves on purpose (tests only)");
            }
            let agent = Agent::open(&dir, settings).fail(
                Exit::Config,
                format!(
                    "{} does not hold a usable ECU: run `secondary-ecu init --dir {}` first",
                    dir.display(),
                    dir.display()
                ),
            )?;
            let link = if insecure {
                tracing::warn!("--insecure: plaintext gRPC, every call answered to anyone");
                Link::Insecure
            } else {
                let primary = agent.identity().primary_fingerprint.ok_or_else(|| {
                    service_runtime::cli::failure(
                        Exit::Config,
                        "no Primary is pinned (provisioned with --insecure); run with --insecure",
                    )
                })?;
                let identity = agent::tls_identity(&dir).context("reading the TLS identity")?;
                Link::Tls { identity, primary }
            };
            let listener = tokio::net::TcpListener::bind(listen).await.fail(
                Exit::Config,
                format!("could not listen on {listen}: is another program using it?"),
            )?;
            let addr = listener.local_addr()?;
            tracing::debug!(%addr, serial = %agent.identity().serial, "listening");
            outln!("listening on {addr}");
            secondary_ecu::rpc::serve(listener, agent, link, service_runtime::shutdown_signal())
                .await?;
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::init_tracing();
    let cli: Cli = service_runtime::cli::parse();
    service_runtime::exit_code(run(cli).await)
}
