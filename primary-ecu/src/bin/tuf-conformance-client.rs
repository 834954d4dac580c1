//! A client for the public TUF conformance suite (theupdateframework/tuf-conformance),
//! built on the Primary's repository client and `uptane-core`.
//!
//! ```text
//! tuf-conformance-client --metadata-dir DIR init TRUSTED_ROOT
//! tuf-conformance-client --metadata-url URL --metadata-dir DIR refresh
//! tuf-conformance-client --metadata-url URL --metadata-dir DIR \
//!     --target-name NAME [--target-name NAME ...] --target-dir DIR --target-base-url URL download
//! ```
//!
//! Exit status is 0 on success and exactly 1 on any failure. The time is the system clock's
//! (so `faketime` works), sampled once per run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use primary_ecu::ports::HttpRepository;
use primary_ecu::repo::{Fetcher, MetadataDir, Updater, download_verified, is_cached, quote_role};
use uptane_core::time::UtcTime;
use uptane_core::trusted::{ImageRepo, Limits};

#[derive(Debug, Parser)]
#[command(about = "TUF conformance suite client on the Primary's repository client")]
struct Cli {
    /// Base URL of the repository's metadata.
    #[arg(long)]
    metadata_url: Option<String>,
    /// Directory of trusted metadata.
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Target paths to download, in order.
    #[arg(long = "target-name")]
    target_names: Vec<String>,
    /// Directory to store targets in.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// Base URL of the repository's targets.
    #[arg(long)]
    target_base_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Installs a trusted root; makes no network request.
    Init {
        /// The root metadata file to trust.
        trusted_root: PathBuf,
    },
    /// Updates root, timestamp, snapshot and targets.
    Refresh,
    /// Refreshes, then downloads each `--target-name` into `--target-dir`.
    Download,
}

fn main() -> ExitCode {
    service_runtime::init_tracing();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(1),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let now: UtcTime = std::time::SystemTime::now().into();
    let dir = MetadataDir::new(&cli.metadata_dir);
    match &cli.command {
        Command::Init { trusted_root } => {
            let bytes = std::fs::read(trusted_root)
                .with_context(|| format!("reading {}", trusted_root.display()))?;
            std::fs::create_dir_all(&cli.metadata_dir)?;
            dir.store("root", &bytes)?;
            Ok(())
        }
        Command::Refresh => {
            let url = cli
                .metadata_url
                .as_deref()
                .context("--metadata-url is required")?;
            runtime()?.block_on(async {
                let remote = HttpRepository::new(fetcher()?, url, url);
                let mut updater =
                    Updater::<ImageRepo, _>::new(&remote, dir, now, Limits::default())?;
                updater.refresh().await?;
                Ok(())
            })
        }
        Command::Download => {
            let url = cli
                .metadata_url
                .as_deref()
                .context("--metadata-url is required")?;
            let target_dir = cli
                .target_dir
                .as_deref()
                .context("--target-dir is required")?;
            let base = cli
                .target_base_url
                .as_deref()
                .context("--target-base-url is required")?;
            runtime()?.block_on(async {
                let remote = HttpRepository::new(fetcher()?, url, url);
                let mut updater =
                    Updater::<ImageRepo, _>::new(&remote, dir, now, Limits::default())?;
                updater.refresh().await?;
                for name in &cli.target_names {
                    download(&mut updater, name, target_dir, base).await?;
                }
                Ok(())
            })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The conformance suite serves its repositories over plaintext HTTP on localhost: this
/// client allows it (the suite tests TUF, not the transport).
fn fetcher() -> anyhow::Result<Fetcher> {
    let tls = service_runtime::http::ClientTls::new(None, None, true)?;
    Ok(Fetcher::new(&tls, Duration::from_secs(30), 0)?)
}

async fn download(
    updater: &mut Updater<'_, ImageRepo, HttpRepository>,
    name: &str,
    target_dir: &Path,
    base: &str,
) -> anyhow::Result<()> {
    let target = updater.find_target(name).await?;
    let dest = target_dir.join(quote_role(name));
    if is_cached(&dest, target.info()) {
        tracing::info!(target = name, "already downloaded and verified");
        return Ok(());
    }
    if target.info().hashes.is_empty() {
        bail!("target {name:?} lists no hashes");
    }
    let url = updater.target_url(base, name, target.info());
    std::fs::create_dir_all(target_dir)?;
    download_verified(&fetcher()?, &url, target.info(), &dest).await?;
    tracing::info!(target = name, %url, "downloaded and verified");
    Ok(())
}
