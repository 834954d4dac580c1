//! Side-by-side benchmark of our TUF client (primary-ecu's `Updater`) against tough's
//! `RepositoryLoader`; python_tuf.py measures python-tuf's ngclient the same way.
//!
//! ```text
//! peer-bench generate --targets N --out DIR [--large-mib 8]
//! peer-bench run --client ours|tough --metadata-url URL --targets-url URL --root FILE \
//!     --runs K --download NAME [--workdir DIR] [--only-download]
//! ```
//!
//! `run` prints one JSON line: the client, the number of targets it verified, and for the
//! refresh alone and for refresh + download the median, the minimum and every sample in
//! milliseconds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use primary_ecu::ports::HttpRepository;
use primary_ecu::repo::{Fetcher, MetadataDir, Updater, download_verified, quote_role};
use serde_json::json;
use service_runtime::http::ClientTls;
use uptane_core::sign::TargetsBuilder;
use uptane_core::testing::RepoFixture;
use uptane_core::time::UtcTime;
use uptane_core::trusted::{ImageRepo, Limits};

#[derive(Debug, Parser)]
#[command(about = "Benchmark our TUF client against tough (and python-tuf via python_tuf.py)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a repository: DIR/metadata, DIR/targets and DIR/info.json.
    Generate {
        /// Number of small targets (64 to 256 bytes each).
        #[arg(long)]
        targets: usize,
        /// Size of the one large target, `large.bin`, in MiB.
        #[arg(long, default_value_t = 8)]
        large_mib: usize,
        /// Output directory (created; must not hold an older repository).
        #[arg(long)]
        out: PathBuf,
    },
    /// Times refreshes (and refresh + download) from a fresh state, in this process.
    Run {
        /// Which client.
        #[arg(long, value_enum)]
        client: Client,
        /// Base URL of the metadata.
        #[arg(long)]
        metadata_url: String,
        /// Base URL of the targets.
        #[arg(long)]
        targets_url: String,
        /// The trusted root (version 1).
        #[arg(long)]
        root: PathBuf,
        /// Runs of each measurement.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The target to download.
        #[arg(long)]
        download: String,
        /// Where fresh metadata directories and downloads go (default: the system's temp).
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Skip the refresh-only measurement (for timing a whole process).
        #[arg(long)]
        only_download: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Client {
    /// primary-ecu's `Updater` over `HttpRepository`.
    Ours,
    /// tough's `RepositoryLoader` with its default transport. tough 0.24's `HttpTransport`
    /// waits its `initial_backoff` (100 ms) before every first try of every request.
    Tough,
    /// The same with `HttpTransportBuilder::initial_backoff(0)`: only the verification and
    /// transfer work, for comparison.
    ToughNoBackoff,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Ours => "ours",
            Client::Tough => "tough",
            Client::ToughNoBackoff => "tough-no-backoff",
        }
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate {
            targets,
            large_mib,
            out,
        } => generate(targets, large_mib, &out),
        Command::Run {
            client,
            metadata_url,
            targets_url,
            root,
            runs,
            download,
            workdir,
            only_download,
        } => {
            let root =
                std::fs::read(&root).with_context(|| format!("reading {}", root.display()))?;
            let bench = Bench {
                client,
                metadata_url: with_slash(&metadata_url),
                targets_url: with_slash(&targets_url),
                root,
                download,
                workdir: workdir.unwrap_or_else(std::env::temp_dir),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(bench.run(runs, only_download))
        }
    }
}

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

// ---------------------------------------------------------------------------------------
// generate

/// Deterministic bytes (xorshift64*): the same repository every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn generate(count: usize, large_mib: usize, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut repo = RepoFixture::new();
    let now: UtcTime = SystemTime::now().into();
    // The fixture's expiry (testing::later(), 2031-01-01) must be ahead of the real clock:
    // all three clients check expiry against it.
    ensure!(
        repo.expires > now,
        "the fixture's expiry {} is not in the future",
        repo.expires
    );

    let metadata_dir = out.join("metadata");
    let targets_dir = out.join("targets");
    for dir in [&metadata_dir, &targets_dir] {
        if dir.exists() {
            bail!("{} exists: generate into a fresh directory", dir.display());
        }
        std::fs::create_dir_all(dir)?;
    }

    // One builder for all targets: `RepoFixture::add_target` copies the whole map per call.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut contents: Vec<(String, Vec<u8>)> = Vec::with_capacity(count + 1);
    for i in 0..count {
        let len = 64 + (rng.next() % 193) as usize;
        contents.push((format!("file-{i:06}.bin"), rng.bytes(len)));
    }
    contents.push(("large.bin".to_string(), rng.bytes(large_mib << 20)));
    let mut builder =
        TargetsBuilder::from_targets(&repo.targets, repo.targets.common.version, repo.expires);
    for (name, bytes) in &contents {
        builder = builder.target(name, bytes, None);
    }
    repo.targets = builder.build();
    repo.publish();

    let root = repo.initial_root().to_vec();
    let consistent =
        serde_json::from_slice::<serde_json::Value>(&root)?["signed"]["consistent_snapshot"]
            .as_bool()
            .unwrap_or(false);
    let snapshot_version = repo.versions.1;
    let targets_version = repo.targets.common.version;
    let targets_file = &repo.targets_files["targets"];

    write(&metadata_dir.join("1.root.json"), &root)?;
    write(&metadata_dir.join("root.json"), &root)?;
    write(&metadata_dir.join("timestamp.json"), &repo.timestamp)?;
    write(&metadata_dir.join("snapshot.json"), &repo.snapshot)?;
    write(&metadata_dir.join("targets.json"), targets_file)?;
    if consistent {
        write(
            &metadata_dir.join(format!("{snapshot_version}.snapshot.json")),
            &repo.snapshot,
        )?;
        write(
            &metadata_dir.join(format!("{targets_version}.targets.json")),
            targets_file,
        )?;
    }

    // With consistent snapshots every client asks for `<hash>.<name>` with the first hash
    // listed (sha256: ours and python-tuf take the first key, tough only knows sha256).
    for (name, bytes) in &contents {
        let info = &repo.targets.targets[name];
        let file = if consistent {
            let sha256 = info.hashes.get("sha256").context("no sha256")?;
            format!("{sha256}.{name}")
        } else {
            name.clone()
        };
        write(&targets_dir.join(file), bytes)?;
    }

    let large = &repo.targets.targets["large.bin"];
    let info = json!({
        "targets": count + 1,
        "small_targets": count,
        "download": "large.bin",
        "download_length": large.length,
        "consistent_snapshot": consistent,
        "snapshot_version": snapshot_version,
        "targets_version": targets_version,
        "targets_json_bytes": targets_file.len(),
        "expires": repo.expires.to_rfc3339(),
        "hashes": large.hashes.keys().collect::<Vec<_>>(),
    });
    write(
        &out.join("info.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    eprintln!(
        "generated {} targets ({} bytes of targets.json, consistent_snapshot={consistent}) in {:?}",
        count + 1,
        targets_file.len(),
        started.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// run

struct Bench {
    client: Client,
    metadata_url: String,
    targets_url: String,
    root: Vec<u8>,
    download: String,
    workdir: PathBuf,
}

/// One measurement's fresh state: an empty metadata directory (ours: where the trusted root
/// is stored, on the clock; tough: its datastore) and an empty download directory.
struct Fresh {
    _tmp: tempfile::TempDir,
    metadata: PathBuf,
    out: PathBuf,
}

impl Bench {
    fn fresh(&self) -> anyhow::Result<Fresh> {
        let tmp = tempfile::Builder::new()
            .prefix("peer-bench-")
            .tempdir_in(&self.workdir)?;
        let metadata = tmp.path().join("metadata");
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&metadata)?;
        std::fs::create_dir_all(&out)?;
        Ok(Fresh {
            _tmp: tmp,
            metadata,
            out,
        })
    }

    /// One timed refresh (with the download when `download`) from a fresh state; checks that
    /// it found as many targets as the runs before it.
    async fn timed(&self, download: bool, targets: &mut usize) -> anyhow::Result<(f64, Fresh)> {
        let fresh = self.fresh()?;
        let started = Instant::now();
        let (listed, took) = self.once(&fresh, download, started).await?;
        let took = ms(took);
        ensure!(
            *targets == 0 || listed == *targets,
            "refreshes disagree: {listed} then {targets} targets"
        );
        *targets = listed;
        Ok((took, fresh))
    }

    async fn run(&self, runs: usize, only_download: bool) -> anyhow::Result<()> {
        ensure!(runs > 0, "--runs must be at least 1");
        let mut refresh = Vec::new();
        let mut download = Vec::new();
        let mut targets = 0;
        let mut downloaded = 0;
        for _ in 0..runs {
            if !only_download {
                refresh.push(self.timed(false, &mut targets).await?.0);
            }
            let (took, fresh) = self.timed(true, &mut targets).await?;
            download.push(took);
            // Outside the timing: the file is there, whole.
            let path = fresh.out.join(quote_role(&self.download));
            downloaded = std::fs::metadata(&path)
                .with_context(|| format!("{} was not written", path.display()))?
                .len();
        }
        let line = json!({
            "client": self.client.name(),
            "runs": runs,
            "targets": targets,
            "downloaded_bytes": downloaded,
            "refresh_ms": summary(&refresh),
            "refresh_download_ms": summary(&download),
        });
        println!("{line}");
        Ok(())
    }

    /// One refresh from the fresh state (and the download): returns how many targets the
    /// verified top-level targets metadata lists, and the time since `started` when the work
    /// was done. As in `python_tuf.py`, the clock stops while the client's state is still
    /// alive: freeing it (10,000 parsed targets) is not part of any client's figure.
    async fn once(
        &self,
        fresh: &Fresh,
        download: bool,
        started: Instant,
    ) -> anyhow::Result<(usize, Duration)> {
        match self.client {
            Client::Ours => self.ours(fresh, download, started).await,
            Client::Tough | Client::ToughNoBackoff => self.tough(fresh, download, started).await,
        }
    }

    async fn ours(
        &self,
        fresh: &Fresh,
        download: bool,
        started: Instant,
    ) -> anyhow::Result<(usize, Duration)> {
        // As tuf-conformance-client: the clock sampled once per update, plaintext HTTP allowed
        // (127.0.0.1), default limits, no minimum speed.
        let now: UtcTime = SystemTime::now().into();
        // What `tuf-conformance-client init` does, on the clock: python-tuf's `Updater`
        // verifies and stores its bootstrap root inside its timing, and tough its datastore.
        MetadataDir::new(&fresh.metadata).store("root", &self.root)?;
        let tls = ClientTls::new(None, None, true)?;
        let fetcher = Fetcher::new(&tls, Duration::from_secs(30), 0)?;
        let remote = HttpRepository::new(fetcher, &self.metadata_url, &self.targets_url);
        let mut updater = Updater::<ImageRepo, _>::new(
            &remote,
            MetadataDir::new(&fresh.metadata),
            now,
            Limits::default(),
        )?;
        updater.refresh().await?;
        let count = updater
            .trusted()
            .targets()
            .map(|t| t.targets.len())
            .context("no trusted targets after refresh")?;
        if download {
            let name = &self.download;
            let target = updater.find_target(name).await?;
            ensure!(!target.info().hashes.is_empty(), "{name:?} lists no hashes");
            let url = updater.target_url(&self.targets_url, name, target.info());
            let dest = fresh.out.join(quote_role(name));
            download_verified(remote.fetcher(), &url, target.info(), &dest).await?;
        }
        Ok((count, started.elapsed()))
    }

    async fn tough(
        &self,
        fresh: &Fresh,
        download: bool,
        started: Instant,
    ) -> anyhow::Result<(usize, Duration)> {
        let metadata_url = url::Url::parse(&self.metadata_url)?;
        let targets_url = url::Url::parse(&self.targets_url)?;
        // Default transport (HTTP with retries), default limits, expiry enforced.
        let mut loader = tough::RepositoryLoader::new(&self.root, metadata_url, targets_url);
        if self.client == Client::ToughNoBackoff {
            loader = loader.transport(tough::DefaultTransport::new_with_http_settings(
                tough::HttpTransportBuilder::new().initial_backoff(Duration::ZERO),
            ));
        }
        let repo = loader
            .datastore(&fresh.metadata)
            .expiration_enforcement(tough::ExpirationEnforcement::Safe)
            .load()
            .await?;
        let count = repo.targets().signed.targets.len();
        if download {
            let name = tough::TargetName::new(self.download.clone())?;
            repo.save_target(&name, &fresh.out, tough::Prefix::None)
                .await?;
        }
        Ok((count, started.elapsed()))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(samples: &[f64]) -> serde_json::Value {
    if samples.is_empty() {
        return serde_json::Value::Null;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    json!({
        "median": round(median),
        "min": round(sorted[0]),
        "samples": samples.iter().map(|s| round(*s)).collect::<Vec<_>>(),
    })
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
