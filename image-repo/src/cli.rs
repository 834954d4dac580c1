//! The `image-repo` command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use uptane_core::metadata::{DelegatedRole, Targets};
use uptane_core::sign::TargetsBuilder;
use uptane_core::time::UtcTime;

use service_runtime::cli::{Exit, Fail, failure};
use service_runtime::http::{ClientTls, ServerLimitsArgs, Transport};
use service_runtime::outln;
use service_runtime::tls::{ClientAuth, Identity};

use crate::keys;
use crate::remote::Remote;
use crate::repo::{
    Expiry, InitOptions, RepoState, Repository, image_custom, sign_targets_update, vouch,
};
use crate::server::{AppState, ServerConfig};
use crate::tokens::{TokenSelector, Tokens};
use service_runtime::clock::now;

/// The Uptane Image repository: a TUF repository of signed images.
#[derive(Debug, Parser)]
#[command(name = "image-repo", version = service_runtime::program_version!())]
pub struct Cli {
    /// Print JSON instead of sentences and tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Where a publishing command acts: a repository directory, or a running server.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// The repository directory (acting locally).
    #[arg(long, env = "IMAGE_REPO_DIR")]
    repo: Option<PathBuf>,
    /// A running server to upload to (with --token).
    #[arg(long, env = "IMAGE_REPO_SERVER")]
    server: Option<String>,
}

/// How a publishing command reaches a running server: its upload token, whom it trusts,
/// and the client certificate a server that requires one for uploads asks for.
#[derive(Debug, Args)]
pub struct Upload {
    /// Upload token (with --server).
    #[arg(long, env = "IMAGE_REPO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificates (PEM) the server's certificate chains to [default: the system's].
    #[arg(long, env = "IMAGE_REPO_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate chain (PEM), for a server that requires one for uploads.
    #[arg(long, env = "IMAGE_REPO_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "IMAGE_REPO_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Allow a plaintext `http://` server: the token crosses the network readable.
    #[arg(long, env = "IMAGE_REPO_INSECURE")]
    pub insecure: bool,
}

impl Upload {
    /// A client of the server at `base`.
    fn remote(&self, base: &str) -> anyhow::Result<Remote> {
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem_files(cert, key)?),
            _ => None,
        };
        let tls = ClientTls::new(self.ca_cert.as_deref(), identity, self.insecure)?;
        Ok(Remote::new(base, self.token.clone(), &tls)?)
    }
}

/// A hash a targets entry lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashAlgorithm {
    /// SHA-256 (the default).
    Sha256,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// Its name in TUF's `hashes` object.
    pub fn tuf_name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
        }
    }
}

/// The entry of `info` listing only `algorithms`.
fn listing(
    info: &crate::repo::BlobInfo,
    algorithms: &[HashAlgorithm],
) -> uptane_core::hash::Hashes {
    info.hashes
        .iter()
        .filter(|(name, _)| algorithms.iter().any(|a| a.tuf_name() == name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Docs(service_runtime::cli::Docs),
    /// Key ceremony: creates keys and version 1 of every role.
    Init {
        /// Repository directory to create.
        #[arg(long, env = "IMAGE_REPO_DIR")]
        repo: PathBuf,
        /// Directory for the offline root and targets keys (never read by the server).
        #[arg(long, env = "IMAGE_REPO_OFFLINE_KEYS")]
        offline_keys: PathBuf,
        /// Number of root keys.
        #[arg(long, default_value_t = 1)]
        root_keys: usize,
        /// Root signature threshold.
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// Number of targets keys.
        #[arg(long, default_value_t = 1)]
        targets_keys: usize,
        /// Targets signature threshold.
        #[arg(long, default_value_t = 1)]
        targets_threshold: u32,
    },
    /// Publishes an image in top-level targets.
    Add {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        upload: Upload,
        /// Offline keys directory holding the targets keys.
        #[arg(long, env = "IMAGE_REPO_OFFLINE_KEYS")]
        offline_keys: PathBuf,
        /// Target name (path) of the image.
        #[arg(long)]
        name: String,
        /// Hardware ids the image is for.
        #[arg(long = "hardware-id", required = true)]
        hardware_ids: Vec<String>,
        /// Release counter.
        #[arg(long, default_value_t = 0)]
        release_counter: u64,
        /// The hashes the targets entry lists (repeat for both; docs/POUF.md): every ECU
        /// computes each one listed over the whole image.
        #[arg(long = "hash", value_enum, default_values_t = [HashAlgorithm::Sha256])]
        hashes: Vec<HashAlgorithm>,
        /// The image file.
        file: PathBuf,
    },
    /// Removes an image from top-level targets.
    Remove {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        upload: Upload,
        /// Offline keys directory holding the targets keys.
        #[arg(long, env = "IMAGE_REPO_OFFLINE_KEYS")]
        offline_keys: PathBuf,
        /// Target name to remove.
        #[arg(long)]
        name: String,
    },
    /// Delegates paths (and hardware ids) to a supplier's role, from top-level targets.
    Delegate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        upload: Upload,
        /// Offline keys directory holding the targets keys.
        #[arg(long, env = "IMAGE_REPO_OFFLINE_KEYS")]
        offline_keys: PathBuf,
        /// Name of the delegated role.
        #[arg(long)]
        role: String,
        /// Public key files (JSON key objects, or PKCS#8 private keys) of the role.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Signature threshold of the role.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// Target path patterns the role may sign for (shell globs per `/` segment).
        #[arg(long = "path", required = true)]
        paths: Vec<String>,
        /// Hardware ids the role may sign for (default: any).
        #[arg(long = "hardware-id")]
        hardware_ids: Vec<String>,
        /// Stop the search after this role's subtree.
        #[arg(long)]
        terminating: bool,
    },
    /// A supplier publishes an image in its delegated role, signed with its own key.
    SupplierAdd {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        upload: Upload,
        /// The delegated role.
        #[arg(long)]
        role: String,
        /// The supplier's private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Target name of the image.
        #[arg(long)]
        name: String,
        /// Hardware ids the image is for.
        #[arg(long = "hardware-id", required = true)]
        hardware_ids: Vec<String>,
        /// Release counter.
        #[arg(long, default_value_t = 0)]
        release_counter: u64,
        /// The hashes the targets entry lists (repeat for both; docs/POUF.md): every ECU
        /// computes each one listed over the whole image.
        #[arg(long = "hash", value_enum, default_values_t = [HashAlgorithm::Sha256])]
        hashes: Vec<HashAlgorithm>,
        /// The image file.
        file: PathBuf,
    },
    /// Re-signs targets metadata without changing what it lists, with a new expiry:
    /// top-level targets with the offline targets keys, or a delegated role (`--role`) with
    /// its key. What `status` warns about is renewed this way.
    Renew {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        upload: Upload,
        /// Offline keys directory holding the targets keys (top-level targets).
        #[arg(
            long,
            env = "IMAGE_REPO_OFFLINE_KEYS",
            required_unless_present = "role"
        )]
        offline_keys: Option<PathBuf>,
        /// A delegated role to renew instead of top-level targets (with --key).
        #[arg(long, requires = "key")]
        role: Option<String>,
        /// The delegated role's private key (PKCS#8 PEM).
        #[arg(long, requires = "role")]
        key: Option<PathBuf>,
    },
    /// Each role's version and expiry, with a warning for those that expire within the
    /// warning period; exits 0 even with warnings.
    Status {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        upload: Upload,
        /// Warn when the root expires within this many days.
        #[arg(long, default_value_t = 60)]
        root_warning_days: u32,
        /// Warn when a targets role expires within this many days.
        #[arg(long, default_value_t = 14)]
        targets_warning_days: u32,
    },
    /// Creates a key pair: FILE (private, mode 0600) and FILE.pub.json.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Upload tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Rotates the root keys: root N+1 signed by the old and the new keys.
    RotateRoot {
        /// Repository directory.
        #[arg(long, env = "IMAGE_REPO_DIR")]
        repo: PathBuf,
        /// Offline keys directory (old root keys in, new root keys out).
        #[arg(long, env = "IMAGE_REPO_OFFLINE_KEYS")]
        offline_keys: PathBuf,
        /// Number of new root keys.
        #[arg(long, default_value_t = 1)]
        keys: usize,
        /// New root threshold.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
    },
    /// Rotates the snapshot or timestamp key (a new root lists the new key).
    RotateOnline {
        /// Repository directory.
        #[arg(long, env = "IMAGE_REPO_DIR")]
        repo: PathBuf,
        /// Offline keys directory holding the root keys.
        #[arg(long, env = "IMAGE_REPO_OFFLINE_KEYS")]
        offline_keys: PathBuf,
        /// `snapshot` or `timestamp`.
        #[arg(long)]
        role: String,
    },
    /// Removes uploaded images that no published metadata lists (uploads whose metadata was
    /// refused or never came) and interrupted uploads, once older than the grace period. A
    /// running server does this every hour.
    Gc {
        /// Repository directory.
        #[arg(long, env = "IMAGE_REPO_DIR")]
        repo: PathBuf,
        /// Keep what is younger than this many hours.
        #[arg(long, default_value_t = 24)]
        grace_hours: u64,
    },
    /// Serves the repository over HTTP.
    Serve {
        /// Repository directory.
        #[arg(long, env = "IMAGE_REPO_DIR")]
        repo: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "IMAGE_REPO_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Seconds between checks for timestamp/snapshot renewal.
        #[arg(long, env = "IMAGE_REPO_RENEW_INTERVAL_SECS", default_value_t = 60)]
        renew_interval_secs: u64,
        /// Re-sign timestamp/snapshot when they expire within this many seconds.
        #[arg(long, env = "IMAGE_REPO_RENEW_MARGIN_SECS", default_value_t = 12 * 3600,
              value_parser = clap::value_parser!(i64).range(0..=315_360_000))]
        renew_margin_secs: i64,
        /// Lifetime of each new timestamp, in seconds (at most ten years).
        #[arg(
            long,
            env = "IMAGE_REPO_TIMESTAMP_LIFETIME_SECS",
            default_value_t = 86_400,
            value_parser = clap::value_parser!(i64).range(1..=315_360_000)
        )]
        timestamp_lifetime_secs: i64,
        /// Lifetime of each new snapshot, in seconds (at most ten years).
        #[arg(long, env = "IMAGE_REPO_SNAPSHOT_LIFETIME_SECS", default_value_t = 7 * 86_400,
              value_parser = clap::value_parser!(i64).range(1..=315_360_000))]
        snapshot_lifetime_secs: i64,
        /// Largest image upload, in bytes.
        #[arg(long, env = "IMAGE_REPO_MAX_BLOB_BYTES", default_value_t = 16 << 30)]
        max_blob_bytes: u64,
        /// Largest upload of the top-level targets metadata, in bytes.
        #[arg(long, env = "IMAGE_REPO_MAX_TARGETS_BYTES", default_value_t = 16 << 20)]
        max_targets_bytes: usize,
        /// Largest upload of a delegated role's metadata, in bytes.
        #[arg(long, env = "IMAGE_REPO_MAX_DELEGATED_BYTES", default_value_t = 16 << 20)]
        max_delegated_bytes: usize,
        /// Bytes of the repository's filesystem uploads may not take (507 past it): room for
        /// the renewals of snapshot and timestamp.
        #[arg(long, env = "IMAGE_REPO_MIN_FREE_BYTES", default_value_t = 1 << 30)]
        min_free_bytes: u64,
        /// Hours after which an uploaded image no published metadata lists is removed.
        #[arg(long, env = "IMAGE_REPO_BLOB_GRACE_HOURS", default_value_t = 24)]
        blob_grace_hours: u64,
        #[command(flatten)]
        limits: ServerLimitsArgs,
        /// The server's certificate chain (PEM); re-read on SIGHUP.
        #[arg(long, env = "IMAGE_REPO_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The server's private key (PEM); re-read on SIGHUP.
        #[arg(long, env = "IMAGE_REPO_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require uploads to show a client certificate issued by these CAs (PEM), as well
        /// as a token. Downloads stay open to everyone.
        #[arg(long, env = "IMAGE_REPO_UPLOAD_CLIENT_CA", requires = "tls_cert")]
        upload_client_ca: Option<PathBuf>,
        /// Serve plaintext HTTP: for tests only; upload tokens cross the network readable.
        #[arg(long, env = "IMAGE_REPO_INSECURE")]
        insecure: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (plaintext, unauthenticated:
        /// bind an address only the scraper reaches). Off unless given.
        #[arg(long, env = "IMAGE_REPO_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Creates a token that may upload metadata for ROLE (and blobs); prints it once.
    Create {
        /// Repository directory.
        #[arg(long, env = "IMAGE_REPO_DIR")]
        repo: PathBuf,
        /// Role the token may write (`targets` or a delegated role).
        #[arg(long)]
        role: String,
        /// A note for operators.
        #[arg(long, default_value = "")]
        label: String,
        /// Days until it stops working.
        #[arg(long, default_value_t = 90)]
        expires_in_days: u32,
    },
    /// Lists the upload tokens (never their secrets), newest first.
    List {
        /// Repository directory.
        #[arg(long, env = "IMAGE_REPO_DIR")]
        repo: PathBuf,
        /// Show at most this many tokens (1 to 1000).
        #[arg(long, default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Only tokens older than this cursor (the next page back: the footer prints it).
        #[arg(long)]
        before: Option<usize>,
    },
    /// Revokes upload tokens, by id (from `token list`) or by label; takes effect at the
    /// next upload, without a restart.
    Revoke {
        /// Repository directory.
        #[arg(long, env = "IMAGE_REPO_DIR")]
        repo: PathBuf,
        /// The token's id.
        #[arg(long, required_unless_present = "label", conflicts_with = "label")]
        id: Option<String>,
        /// Every live token with this label.
        #[arg(long)]
        label: Option<String>,
    },
}

/// Prints a warning on standard error for each offline-signed file that expires soon.
fn warn_expiring(state: &crate::repo::RepoState) {
    for expiring in state.expiring(now()) {
        eprintln!("warning: {expiring}");
    }
}

/// The same for a local repository (a failure to read it is left to the command).
fn warn_expiring_in(repo: &Repository) {
    if let Ok(state) = repo.state() {
        warn_expiring(&state);
    }
}

/// Runs a parsed command line; an error ends with the exit status of docs/CLI.md.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    service_runtime::clock::init()?;
    run_command(cli).await.map_err(advise)
}

/// A server that could not be reached, or refused, says so and what to check, with the
/// status for it (an error with advice already, or a local one, is left as it is).
fn advise(error: anyhow::Error) -> anyhow::Error {
    if error
        .chain()
        .any(|e| e.is::<service_runtime::cli::Failure>())
    {
        return error;
    }
    let remote = error
        .chain()
        .find_map(|e| e.downcast_ref::<crate::remote::RemoteError>());
    let repo = error
        .chain()
        .find_map(|e| e.downcast_ref::<crate::error::RepoError>());
    let (exit, advice) = match (remote, repo) {
        (Some(crate::remote::RemoteError::Http { .. }), _) => (
            Exit::Unreachable,
            "could not reach the Image repository: is it running, and are --server and \
             --ca-cert right?"
                .to_string(),
        ),
        (Some(crate::remote::RemoteError::Refused { status, .. }), _)
            if *status == 401 || *status == 403 =>
        {
            (
                Exit::Refused,
                format!(
                    "the Image repository refused the upload token (HTTP {status}): check \
                     --token (IMAGE_REPO_TOKEN); `image-repo token create` makes one"
                ),
            )
        }
        (Some(crate::remote::RemoteError::Refused { status, .. }), _) => (
            Exit::Refused,
            format!("the Image repository refused the request (HTTP {status})"),
        ),
        (Some(crate::remote::RemoteError::Url(_) | crate::remote::RemoteError::Tls(_)), _) => (
            Exit::Config,
            "the server URL or the TLS files are not usable".to_string(),
        ),
        (_, Some(crate::error::RepoError::Corrupt { .. })) => (
            Exit::Verification,
            "the repository's metadata does not verify".to_string(),
        ),
        (
            None,
            Some(
                crate::error::RepoError::BadKey { .. }
                | crate::error::RepoError::NotEnoughKeys { .. },
            ),
        ) => (
            Exit::Config,
            "the offline keys (--offline-keys, or --key) are not usable for this role".to_string(),
        ),
        (None, Some(crate::error::RepoError::Io { path, .. })) => (
            Exit::Failed,
            format!("could not read or write {}", path.display()),
        ),
        (None, Some(crate::error::RepoError::Layout(_))) => (
            Exit::Config,
            "not an Image repository directory as this command needs: `image-repo init` \
             makes one"
                .to_string(),
        ),
        _ => return error,
    };
    service_runtime::cli::Failure {
        exit,
        message: advice,
        cause: Some(error),
    }
    .into()
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Docs(docs) => docs.run::<Cli>(),
        Command::Init {
            repo,
            offline_keys,
            root_keys,
            root_threshold,
            targets_keys,
            targets_threshold,
        } => {
            let options = InitOptions {
                root_keys,
                root_threshold,
                targets_keys,
                targets_threshold,
            };
            Repository::init(&repo, &offline_keys, options, Expiry::default(), now())?;
            say(
                json,
                serde_json::json!({"repo": repo, "offline_keys": offline_keys,
                    "root_keys": root_keys, "root_threshold": root_threshold,
                    "targets_keys": targets_keys, "targets_threshold": targets_threshold}),
                || {
                    format!(
                        "initialized {} ({root_threshold}-of-{root_keys} root, \
                         {targets_threshold}-of-{targets_keys} targets); offline keys in {}",
                        repo.display(),
                        offline_keys.display()
                    )
                },
            );
            Ok(())
        }
        Command::Add {
            target,
            upload,
            offline_keys,
            name,
            hardware_ids,
            release_counter,
            hashes,
            file,
        } => {
            crate::repo::check_target_name(&name)?;
            let custom = image_custom(&hardware_ids, release_counter);
            let edit = |info: crate::repo::BlobInfo| {
                move |b: TargetsBuilder| {
                    let listed = listing(&info, &hashes);
                    Ok(b.target_with(&name, info.length, listed, Some(custom)))
                }
            };
            match (target.repo, target.server) {
                (Some(dir), _) => {
                    let repo = Repository::open(dir)?;
                    let info = repo.import_file(&file)?;
                    let report = repo.update_targets(&offline_keys, now(), edit(info))?;
                    published(json, &serde_json::to_value(&report)?);
                    warn_expiring_in(&repo);
                }
                (None, Some(server)) => {
                    let remote = upload.remote(&server)?;
                    let info = hash_file(&file)?;
                    remote.upload_blob(&file, &info).await?;
                    let state = remote.state().await?;
                    warn_expiring(&state);
                    let bytes = sign_targets_update(
                        &state,
                        &offline_keys,
                        Expiry::default(),
                        now(),
                        edit(info),
                    )?;
                    let report = remote.upload_metadata("targets", bytes).await?;
                    vouch::published("targets", &vouch::memory_in(&offline_keys))?;
                    published(json, &report);
                }
                (None, None) => {
                    return Err(failure(Exit::Config, "--repo or --server is required"));
                }
            }
            Ok(())
        }
        Command::Remove {
            target,
            upload,
            offline_keys,
            name,
        } => {
            let edit = |b: TargetsBuilder| {
                if !b.clone().build().targets.contains_key(&name) {
                    return Err(crate::error::RepoError::Invalid(format!(
                        "no target {name:?}"
                    )));
                }
                Ok(b.remove_target(&name))
            };
            publish_top_level(json, target, upload, &offline_keys, edit).await
        }
        Command::Delegate {
            target,
            upload,
            offline_keys,
            role,
            keys: key_files,
            threshold,
            paths,
            hardware_ids,
            terminating,
        } => {
            let public: Vec<_> = key_files
                .iter()
                .map(|p| keys::read_public(p))
                .collect::<Result<_, _>>()?;
            if threshold == 0 || threshold as usize > public.len() {
                return Err(failure(
                    Exit::Config,
                    format!("threshold {threshold} needs 1 to {} keys", public.len()),
                ));
            }
            let delegation = DelegatedRole {
                name: role.clone(),
                keyids: public.iter().map(|k| k.key_id()).collect(),
                threshold,
                terminating,
                paths: Some(paths),
                path_hash_prefixes: None,
                hardware_ids: (!hardware_ids.is_empty()).then_some(hardware_ids),
            };
            let refs: Vec<_> = public.iter().collect();
            publish_top_level(
                json,
                target,
                upload,
                &offline_keys,
                move |b: TargetsBuilder| Ok(b.delegate(delegation, &refs)),
            )
            .await
        }
        Command::SupplierAdd {
            target,
            upload,
            role,
            key,
            name,
            hardware_ids,
            release_counter,
            hashes,
            file,
        } => {
            crate::repo::check_target_name(&name)?;
            let key_file = key;
            let key = keys::read_private(&key_file)?;
            let custom = image_custom(&hardware_ids, release_counter);
            let sign_role = |state: &RepoState,
                             info: &crate::repo::BlobInfo|
             -> anyhow::Result<Vec<u8>> {
                let expires = now() + Expiry::default().targets;
                let current = state.roles.get(&role);
                let builder = match current {
                    Some(current) => {
                        TargetsBuilder::from_targets(current, current.common.version + 1, expires)
                    }
                    None => {
                        let listed = state
                            .snapshot
                            .meta
                            .get(&format!("{role}.json"))
                            .map_or(0, |m| m.version);
                        TargetsBuilder::from_targets(&empty_targets(expires), listed + 1, expires)
                    }
                };
                let targets = builder
                    .target_with(
                        &name,
                        info.length,
                        listing(info, &hashes),
                        Some(custom.clone()),
                    )
                    .build();
                Ok(vouch::sign_delegated(
                    &role, current, &targets, &key, &key_file,
                )?)
            };
            match (target.repo, target.server) {
                (Some(dir), _) => {
                    let repo = Repository::open(dir)?;
                    let info = repo.import_file(&file)?;
                    let bytes = sign_role(&repo.state()?, &info)?;
                    let report = repo.publish_role(&role, bytes, now())?;
                    vouch::published(&role, &vouch::memory_beside(&key_file))?;
                    published(json, &serde_json::to_value(&report)?);
                }
                (None, Some(server)) => {
                    let remote = upload.remote(&server)?;
                    let info = hash_file(&file)?;
                    remote.upload_blob(&file, &info).await?;
                    let bytes = sign_role(&remote.state().await?, &info)?;
                    published(json, &remote.upload_metadata(&role, bytes).await?);
                    vouch::published(&role, &vouch::memory_beside(&key_file))?;
                }
                (None, None) => {
                    return Err(failure(Exit::Config, "--repo or --server is required"));
                }
            }
            Ok(())
        }
        Command::Renew {
            target,
            upload,
            offline_keys,
            role,
            key,
        } => match (role, key, offline_keys) {
            (Some(role), Some(key), _) => renew_delegated(json, target, upload, &role, &key).await,
            (None, _, Some(offline_keys)) => {
                publish_top_level(json, target, upload, &offline_keys, Ok).await
            }
            _ => Err(failure(
                Exit::Config,
                "give --offline-keys (top-level targets) or --role with --key",
            )),
        },
        Command::Status {
            target,
            upload,
            root_warning_days,
            targets_warning_days,
        } => {
            let state = match (target.repo, target.server) {
                (Some(dir), _) => Repository::open(dir)?.state()?,
                (None, Some(server)) => upload.remote(&server)?.state().await?,
                (None, None) => {
                    return Err(failure(Exit::Config, "--repo or --server is required"));
                }
            };
            let warnings = crate::repo::Warnings {
                root: chrono::Duration::days(i64::from(root_warning_days)),
                targets: chrono::Duration::days(i64::from(targets_warning_days)),
            };
            print_status(json, &state.status(now(), warnings))
        }
        Command::Keygen { out } => {
            let key = keys::generate()?;
            keys::write_private(&out, &key)?;
            let public = PathBuf::from(format!("{}.pub.json", out.display()));
            keys::write_public(&public, key.public_key())?;
            // Bare: the key id, for scripts.
            say(
                json,
                serde_json::json!({"key_id": key.key_id().to_string(), "private": out,
                    "public": public}),
                || key.key_id().to_string(),
            );
            Ok(())
        }
        Command::Token { command } => token_command(command, json),
        Command::RotateRoot {
            repo,
            offline_keys,
            keys,
            threshold,
        } => {
            let version =
                Repository::open(&repo)?.rotate_root_keys(&offline_keys, keys, threshold, now())?;
            say(json, serde_json::json!({"root_version": version}), || {
                format!("published root version {version}")
            });
            warn_expiring_in(&Repository::open(repo)?);
            Ok(())
        }
        Command::RotateOnline {
            repo,
            offline_keys,
            role,
        } => {
            let version =
                Repository::open(&repo)?.rotate_online_key(&offline_keys, &role, now())?;
            say(
                json,
                serde_json::json!({"root_version": version, "rotated": role}),
                || format!("published root version {version} with a new {role} key"),
            );
            warn_expiring_in(&Repository::open(repo)?);
            Ok(())
        }
        Command::Gc { repo, grace_hours } => {
            let collected = Repository::open(&repo)?.collect_garbage(
                std::time::SystemTime::now(),
                Duration::from_secs(grace_hours * 3600),
            )?;
            say(
                json,
                serde_json::json!({"blobs": collected.blobs,
                    "partial_uploads": collected.partial_uploads, "bytes": collected.bytes}),
                || {
                    format!(
                        "removed {} unlisted images and {} interrupted uploads ({} bytes)",
                        collected.blobs, collected.partial_uploads, collected.bytes
                    )
                },
            );
            Ok(())
        }
        Command::Serve {
            repo,
            listen,
            renew_interval_secs,
            renew_margin_secs,
            timestamp_lifetime_secs,
            snapshot_lifetime_secs,
            max_blob_bytes,
            max_targets_bytes,
            max_delegated_bytes,
            min_free_bytes,
            blob_grace_hours,
            limits,
            tls_cert,
            tls_key,
            upload_client_ca,
            insecure,
            metrics_listen,
        } => {
            let auth = match &upload_client_ca {
                Some(ca) => ClientAuth::Optional(std::sync::Arc::new(
                    service_runtime::tls::roots_from_pem_file(ca)?,
                )),
                None => ClientAuth::None,
            };
            let transport =
                Transport::from_flags(tls_cert.as_deref(), tls_key.as_deref(), auth, insecure)?;
            if renew_interval_secs == 0
                || timestamp_lifetime_secs <= 0
                || snapshot_lifetime_secs <= 0
            {
                return Err(failure(
                    Exit::Config,
                    "intervals and lifetimes must be positive",
                ));
            }
            let expiry = Expiry {
                timestamp: chrono::Duration::seconds(timestamp_lifetime_secs),
                snapshot: chrono::Duration::seconds(snapshot_lifetime_secs),
                ..Expiry::default()
            };
            let repository = Repository::open(&repo)?.with_expiry(expiry);
            repository
                .state()
                .context("the repository does not verify")?;
            let config = ServerConfig {
                max_blob_bytes,
                max_targets_bytes,
                max_delegated_bytes,
                blob_grace: Duration::from_secs(blob_grace_hours * 3600),
                limits: limits.limits(),
                renew_interval: Duration::from_secs(renew_interval_secs),
                renew_margin: chrono::Duration::seconds(renew_margin_secs),
                uploads_need_certificate: upload_client_ca.is_some(),
                min_free_bytes,
                ..ServerConfig::default()
            };
            let listener = tokio::net::TcpListener::bind(listen).await.fail(
                Exit::Config,
                format!("could not listen on {listen}: is another program using it?"),
            )?;
            let state = AppState::new(repository, config);
            if let Some(metrics_listen) = metrics_listen {
                let scraped = state.clone();
                service_runtime::metrics::listen(metrics_listen, move || {
                    let state = scraped.clone();
                    async move { state.metrics().await }
                })
                .await?;
            }
            let addr = listener.local_addr()?;
            tracing::debug!(%addr, repo = %repo.display(), scheme = transport.scheme(), "listening");
            outln!("listening on {addr}");
            crate::server::serve(
                listener,
                transport,
                state,
                service_runtime::shutdown_signal(),
            )
            .await?;
            Ok(())
        }
    }
}

fn token_command(command: TokenCommand, json: bool) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            repo,
            role,
            label,
            expires_in_days,
        } => {
            Repository::open(&repo)?;
            let lifetime = chrono::Duration::days(i64::from(expires_in_days));
            let token = Tokens::create(&repo, &role, &label, lifetime, now())?;
            // Bare, for `TOKEN=$(image-repo token create ...)`.
            say(
                json,
                serde_json::json!({"token": token, "role": role, "label": label}),
                || token.to_string(),
            );
        }
        TokenCommand::List {
            repo,
            limit,
            before,
        } => {
            Repository::open(&repo)?;
            let tokens = Tokens::load(&repo)?;
            // A token's cursor is its place in the append-only token file, from 1.
            let page: Vec<(usize, &crate::tokens::TokenEntry)> = tokens
                .tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (i + 1, t))
                .filter(|(cursor, _)| before.is_none_or(|b| *cursor < b))
                .rev()
                .take(limit as usize)
                .collect();
            if json {
                let listed: Vec<_> = page
                    .iter()
                    .map(|(cursor, t)| {
                        serde_json::json!({
                            "cursor": cursor, "id": t.id(), "role": t.role, "label": t.label,
                            "created_at": t.created_at, "expires_at": t.expires_at,
                            "revoked_at": t.revoked_at,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                let rows = page
                    .iter()
                    .map(|(_, t)| {
                        vec![
                            t.id().to_string(),
                            t.role.clone(),
                            if t.label.is_empty() {
                                "-".into()
                            } else {
                                t.label.clone()
                            },
                            dash(&t.created_at),
                            dash(&t.expires_at),
                            dash(&t.revoked_at),
                        ]
                    })
                    .collect();
                outln!(
                    "{}",
                    service_runtime::cli::table(
                        &["ID", "ROLE", "LABEL", "CREATED", "EXPIRES", "REVOKED"],
                        rows
                    )
                );
                if let Some((oldest, _)) = page.last().filter(|_| page.len() == limit as usize) {
                    outln!("(older: --before {oldest})");
                }
            }
        }
        TokenCommand::Revoke { repo, id, label } => {
            Repository::open(&repo)?;
            let which = match (id, label) {
                (Some(id), _) => TokenSelector::Id(id),
                (None, Some(label)) => TokenSelector::Label(label),
                (None, None) => return Err(failure(Exit::Config, "give --id or --label")),
            };
            let n = Tokens::revoke(&repo, &which, now())?;
            if n == 0 {
                return Err(failure(Exit::Config, "no live token matches"));
            }
            say(json, serde_json::json!({"revoked": n}), || {
                format!("revoked {n} token(s)")
            });
        }
    }
    Ok(())
}

/// What a command did: `json` as JSON, or the sentence `human` makes.
fn say(json: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        outln!("{value}");
    } else {
        outln!("{}", human());
    }
}

/// A publication as one sentence (or its JSON report).
fn published(json: bool, report: &serde_json::Value) {
    if json {
        outln!("{report}");
        return;
    }
    let number = |key: &str| report[key].as_u64().map_or("?".into(), |n| n.to_string());
    outln!(
        "published {} version {} ({} targets); snapshot version {}, timestamp version {}",
        report["role"].as_str().unwrap_or("?"),
        number("version"),
        number("targets"),
        number("snapshot_version"),
        number("timestamp_version")
    );
}

/// `image-repo status`: a table of the roles, then a warning line (on stderr) for each that
/// needs attention.
fn print_status(json: bool, roles: &[crate::repo::RoleStatus]) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(roles)?);
    } else {
        let rows = roles
            .iter()
            .map(|r| {
                let signed = match r.signed_with {
                    crate::repo::SignedWith::Offline => "offline",
                    crate::repo::SignedWith::Online => "online",
                };
                vec![
                    r.role.clone(),
                    r.version.to_string(),
                    r.expires_at.clone(),
                    r.days_left.to_string(),
                    signed.to_string(),
                    if r.warning { "WARNING" } else { "ok" }.to_string(),
                ]
            })
            .collect();
        outln!(
            "{}",
            service_runtime::cli::table(
                &["ROLE", "VERSION", "EXPIRES", "DAYS LEFT", "KEY", "STATUS"],
                rows
            )
        );
    }
    for r in roles.iter().filter(|r| r.warning) {
        // Role names come from the repository (a server's, with --server): made visible.
        let warning = match r.signed_with {
            crate::repo::SignedWith::Offline => crate::repo::Expiring {
                role: r.role.clone(),
                version: r.version,
                expires_at: r.expires_at.clone(),
                days_left: r.days_left,
            }
            .to_string(),
            crate::repo::SignedWith::Online => format!(
                "{} version {} expired at {}: is `image-repo serve` running?",
                r.role, r.version, r.expires_at
            ),
        };
        eprintln!("warning: {}", service_runtime::cli::visible(&warning));
    }
    Ok(())
}

/// Re-signs delegated role `role`, unchanged, with its key and a new expiry.
async fn renew_delegated(
    json: bool,
    target: Target,
    upload: Upload,
    role: &str,
    key: &Path,
) -> anyhow::Result<()> {
    let key_file = key;
    let key = keys::read_private(key_file)?;
    let sign = |state: &RepoState| -> anyhow::Result<Vec<u8>> {
        let current = state
            .roles
            .get(role)
            .with_context(|| {
                format!("the repository has no metadata for delegated role {role:?} to renew: delegate it and publish to it (`image-repo supplier-add`) first")
            })?;
        let expires = now() + Expiry::default().targets;
        let renewed =
            TargetsBuilder::from_targets(current, current.common.version + 1, expires).build();
        Ok(vouch::sign_delegated(
            role,
            Some(current),
            &renewed,
            &key,
            key_file,
        )?)
    };
    match (target.repo, target.server) {
        (Some(dir), _) => {
            let repo = Repository::open(dir)?;
            let bytes = sign(&repo.state()?)?;
            published(
                json,
                &serde_json::to_value(repo.publish_role(role, bytes, now())?)?,
            );
            vouch::published(role, &vouch::memory_beside(key_file))?;
        }
        (None, Some(server)) => {
            let remote = upload.remote(&server)?;
            let bytes = sign(&remote.state().await?)?;
            published(json, &remote.upload_metadata(role, bytes).await?);
            vouch::published(role, &vouch::memory_beside(key_file))?;
        }
        (None, None) => return Err(failure(Exit::Config, "--repo or --server is required")),
    }
    Ok(())
}

fn empty_targets(expires: UtcTime) -> Targets {
    TargetsBuilder::new(1, expires).build()
}

fn hash_file(path: &Path) -> anyhow::Result<crate::repo::BlobInfo> {
    Ok(crate::repo::hash_file(path, |_| Ok(()))?)
}

async fn publish_top_level(
    json: bool,
    target: Target,
    upload: Upload,
    offline_keys: &Path,
    edit: impl FnOnce(TargetsBuilder) -> Result<TargetsBuilder, crate::error::RepoError>,
) -> anyhow::Result<()> {
    match (target.repo, target.server) {
        (Some(dir), _) => {
            let repo = Repository::open(dir)?;
            let report = repo.update_targets(offline_keys, now(), edit)?;
            published(json, &serde_json::to_value(&report)?);
            warn_expiring_in(&repo);
        }
        (None, Some(server)) => {
            let remote = upload.remote(&server)?;
            let state = remote.state().await?;
            warn_expiring(&state);
            let bytes = sign_targets_update(&state, offline_keys, Expiry::default(), now(), edit)?;
            published(json, &remote.upload_metadata("targets", bytes).await?);
            vouch::published("targets", &vouch::memory_in(offline_keys))?;
        }
        (None, None) => return Err(failure(Exit::Config, "--repo or --server is required")),
    }
    Ok(())
}
