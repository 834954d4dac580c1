//! `primary-ecu init`: the Primary's key and state directory, the pinned roots of both
//! repositories, the Secondaries' identities (asked over gRPC), and the vehicle's
//! registration with the Director.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use uptane_core::crypto::{PublicKey, SigningKey};
use uptane_core::manifest::InstalledImage;
use uptane_core::metadata::Root;
use uptane_core::verify::{Raw, verify_root_self_signed};

use crate::config::{Mode, Settings};
use crate::ports::IssuedCredential;
use crate::repo::MetadataDir;
use crate::secondary::{LinkError, SecondaryLink};
use crate::state::{InventoryEcu, PrimaryState, StateDir};
use service_runtime::cli::Exit;
use service_runtime::tls::Identity;

/// How the vehicle gets its Director credential.
#[derive(Debug, Clone)]
pub enum Registration {
    /// The Primary registers the vehicle with a provisioning token.
    ProvisioningToken(String),
    /// The Primary registers the vehicle with an operator's API token.
    OperatorToken(String),
    /// An operator registered the vehicle already and handed over its credential.
    Credential(String),
}

/// What `init` needs besides the settings.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// The Director root to pin.
    pub director_root: PathBuf,
    /// The Image repository root to pin.
    pub image_root: PathBuf,
    /// The Primary's factory image and its file name.
    pub factory_image: PathBuf,
    /// File name of the factory image.
    pub factory_name: String,
    /// How to register.
    pub registration: Registration,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The state directory is already provisioned.
    #[error("{0} already holds a provisioned Primary")]
    AlreadyProvisioned(PathBuf),
    /// A pinned root does not verify or cannot be read.
    #[error("{path}: {reason}")]
    Root {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A Secondary could not be asked, or says something else than configured.
    #[error("Secondary {serial}: {reason}")]
    Secondary {
        /// Its configured serial.
        serial: String,
        /// Why.
        reason: String,
    },
    /// A Secondary did not answer.
    #[error("{reason}")]
    SecondaryUnreachable {
        /// Its configured serial.
        serial: String,
        /// Where it was expected.
        address: String,
        /// Why.
        reason: String,
    },
    /// The Director refused the registration.
    #[error("registration: {0}")]
    Registration(String),
    /// The Director could not be reached.
    #[error("{0}")]
    DirectorUnreachable(String),
    /// The TLS identity could not be made or read.
    #[error("TLS identity: {0}")]
    Tls(#[from] service_runtime::tls::TlsError),
    /// Local files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl ProvisionError {
    /// The exit status it ends `primary-ecu init` with, and what the user should do.
    pub fn advice(&self) -> (Exit, String) {
        match self {
            ProvisionError::AlreadyProvisioned(dir) => (
                Exit::Config,
                format!("{} is provisioned already: use another --dir, or `primary-ecu run` this one", dir.display()),
            ),
            ProvisionError::Root { path, .. } => (
                Exit::Config,
                format!("the pinned root {} is not usable: give the repository's 1.root.json", path.display()),
            ),
            ProvisionError::Secondary { serial, .. } => (
                Exit::Config,
                format!("Secondary {serial} is not what --secondary says: check its serial, verification mode and address"),
            ),
            ProvisionError::SecondaryUnreachable { serial, address, .. } => (
                Exit::Unreachable,
                format!("could not reach Secondary {serial} at {address}: start it (`secondary-ecu run`) or correct --secondary"),
            ),
            ProvisionError::Registration(_) => (
                Exit::Refused,
                "the Director refused to register the vehicle: check the token and that the VIN is not registered already".into(),
            ),
            ProvisionError::DirectorUnreachable(_) => (
                Exit::Unreachable,
                "could not reach the Director: is it running, and are --director-url and --ca-cert right?".into(),
            ),
            ProvisionError::Tls(_) => (Exit::Config, "the Primary's TLS identity is not usable".into()),
            ProvisionError::Io { path, .. } => (
                Exit::Failed,
                format!("could not read or write {}", path.display()),
            ),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The version of a root to pin, which must be signed by its own root keys.
fn pinned_root(bytes: &[u8]) -> Result<u64, String> {
    let root = verify_root_self_signed(&Raw::<Root>::new(bytes.to_vec()))
        .map_err(|e| format!("does not verify: {e}"))?;
    Ok(root.common.version)
}

fn root_error(path: &Path, reason: String) -> ProvisionError {
    ProvisionError::Root {
        path: path.to_path_buf(),
        reason,
    }
}

/// The Primary's TLS identity in `dir`, made (self-signed) if there is none yet. Its
/// Secondaries pin its fingerprint; the Director binds it to the vehicle at registration.
pub fn tls_identity(dir: &Path, serial: &str) -> Result<Identity, ProvisionError> {
    let tls = StateDir::new(dir).tls();
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    if !cert.exists() {
        let made = service_runtime::pki::self_signed(serial, &[service_runtime::pki::DEVICE_NAME])?;
        made.write(&tls).map_err(io(&tls))?;
    }
    Ok(Identity::from_pem_files(&cert, &key)?)
}

/// Asks every configured Secondary who it is, and checks that against the configuration.
/// Over mutual TLS the answer comes from the pinned certificate, so the ECU key it states
/// is authentic.
async fn secondaries(
    settings: &Settings,
    identity: &Identity,
) -> Result<Vec<InventoryEcu>, ProvisionError> {
    let mut out = Vec::new();
    for config in &settings.secondaries {
        let refuse = |reason: String| ProvisionError::Secondary {
            serial: config.serial.to_string(),
            reason,
        };
        let mut link = SecondaryLink::new(
            config.clone(),
            Duration::from_secs(settings.secondary_timeout_secs),
            identity,
        )
        .map_err(|e| refuse(e.to_string()))?;
        let info = link.info().await.map_err(|e| match e {
            LinkError::Unreachable { reason, .. } => ProvisionError::SecondaryUnreachable {
                serial: config.serial.to_string(),
                address: config.address.clone(),
                reason,
            },
            LinkError::Timeout { .. } => ProvisionError::SecondaryUnreachable {
                serial: config.serial.to_string(),
                address: config.address.clone(),
                reason: e.to_string(),
            },
            other => refuse(other.to_string()),
        })?;
        if config.serial != info.ecu_serial.as_str() {
            return Err(refuse(format!(
                "{} answers as ECU {:?}",
                config.address, info.ecu_serial
            )));
        }
        let mode = match info.verification {
            1 => Mode::Full,
            2 => Mode::Partial,
            other => return Err(refuse(format!("unknown verification mode {other}"))),
        };
        if mode != config.mode {
            return Err(refuse(format!(
                "configured for {} verification, the ECU does {}",
                config.mode.as_str(),
                mode.as_str()
            )));
        }
        let public_key: Value = serde_json::from_slice(&info.public_key)
            .map_err(|e| refuse(format!("public key is not JSON: {e}")))?;
        PublicKey::from_json(public_key.clone())
            .map_err(|e| refuse(format!("unusable public key: {e}")))?;
        let hardware_id = info
            .hardware_id
            .parse()
            .map_err(|e| refuse(format!("{e}")))?;
        out.push(InventoryEcu {
            serial: config.serial.clone(),
            hardware_id,
            public_key,
            mode: Some(mode),
        });
    }
    Ok(out)
}

/// Registers the vehicle; returns its credential (and when it expires, when the Director
/// said). Over TLS the Primary shows its certificate: a self-registration binds it to the
/// vehicle, and an operator registration names it.
async fn register(
    settings: &Settings,
    identity: &Identity,
    registration: &Registration,
    inventory: &[InventoryEcu],
) -> Result<Registered, ProvisionError> {
    let (path, token) = match registration {
        Registration::Credential(credential) => {
            return Ok(Registered::Handed(credential.clone()));
        }
        Registration::ProvisioningToken(token) => ("api/v1/register", token),
        Registration::OperatorToken(token) => ("api/v1/vehicles", token),
    };
    let mut body = json!({
        "vin": settings.vin,
        "ecus": inventory.iter().map(|e| json!({
            "serial": e.serial,
            "hardware_id": e.hardware_id,
            "public_key": e.public_key,
            "primary": e.mode.is_none(),
        })).collect::<Vec<_>>(),
    });
    if matches!(registration, Registration::OperatorToken(_)) && !settings.insecure {
        body["tls_fingerprint"] = json!(identity.fingerprint());
    }
    let url = format!("{}/{path}", settings.director_url.trim_end_matches('/'));
    let failed = |reason: String| ProvisionError::Registration(reason);
    let tls = settings
        .client_tls(Some(identity.clone()))
        .map_err(|e| failed(e.to_string()))?;
    let response = tls
        .reqwest()
        .map_err(|e| failed(e.to_string()))?
        .timeout(Duration::from_secs(settings.read_timeout_secs))
        .build()
        .map_err(|e| failed(e.to_string()))?
        .post(&url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| {
            ProvisionError::DirectorUnreachable(format!(
                "{url}: {}",
                service_runtime::error_chain(&e)
            ))
        })?;
    let status = response.status();
    let answer = json_body(response).await;
    if !status.is_success() {
        let why = answer["error"].as_str().unwrap_or("no reason given");
        return Err(failed(format!("{url}: HTTP {status}: {why}")));
    }
    let issued =
        IssuedCredential::from_answer(&answer).map_err(|e| failed(format!("{url}: {e}")))?;
    if answer["certificate_bound"].as_bool() == Some(true) {
        tracing::info!(fingerprint = %identity.fingerprint(), "the Director bound this Primary's certificate to the vehicle");
    }
    Ok(Registered::Issued(issued))
}

/// The credential registration produced.
#[derive(Debug)]
pub enum Registered {
    /// Issued by the Director just now, with its lifetime.
    Issued(IssuedCredential),
    /// Handed over by an operator (its lifetime is learnt at the first renewal).
    Handed(String),
}

/// A response body as JSON (`null` when it is not JSON).
pub(crate) async fn json_body(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Provisions a Primary in `dir`: asks the Secondaries who they are, writes the state
/// directory ([`write_state`]), registers the vehicle, and writes the credential last: a
/// directory without one is an interrupted `init`, which may be run again.
pub async fn init(
    dir: &Path,
    settings: &Settings,
    provisioning: &Provisioning,
) -> Result<Vec<InventoryEcu>, ProvisionError> {
    let files = StateDir::new(dir);
    if files.credential().exists() {
        return Err(ProvisionError::AlreadyProvisioned(dir.to_path_buf()));
    }
    let director_root =
        std::fs::read(&provisioning.director_root).map_err(io(&provisioning.director_root))?;
    let image_root =
        std::fs::read(&provisioning.image_root).map_err(io(&provisioning.image_root))?;
    for (path, bytes) in [
        (&provisioning.director_root, &director_root),
        (&provisioning.image_root, &image_root),
    ] {
        pinned_root(bytes).map_err(|reason| root_error(path, reason))?;
    }
    let factory =
        std::fs::read(&provisioning.factory_image).map_err(io(&provisioning.factory_image))?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let identity = tls_identity(dir, settings.serial.as_str())?;
    let secondaries = secondaries(settings, &identity).await?;
    let state = LocalState {
        director_root: &director_root,
        image_root: &image_root,
        factory_image: &factory,
        factory_name: &provisioning.factory_name,
        secondaries,
    };
    let inventory = write_state(dir, settings, state)?;
    let registered = register(settings, &identity, &provisioning.registration, &inventory).await?;
    write_credential(dir, &registered)?;
    Ok(inventory)
}

/// What a state directory starts with, besides the settings.
#[derive(Debug)]
pub struct LocalState<'a> {
    /// The Director root to pin.
    pub director_root: &'a [u8],
    /// The Image repository root to pin.
    pub image_root: &'a [u8],
    /// The Primary's factory image.
    pub factory_image: &'a [u8],
    /// Its file name.
    pub factory_name: &'a str,
    /// The Secondaries, as they identified themselves.
    pub secondaries: Vec<InventoryEcu>,
}

/// Writes everything of a state directory but the credential: the Primary's key (kept if
/// one is there already), the pinned roots (which must verify), the factory image, the
/// state, the inventory (the Primary first) and the settings.
pub fn write_state(
    dir: &Path,
    settings: &Settings,
    local: LocalState<'_>,
) -> Result<Vec<InventoryEcu>, ProvisionError> {
    let files = StateDir::new(dir);
    let director_version = pinned_root(local.director_root)
        .map_err(|reason| root_error(&files.director_metadata(), reason))?;
    let image_version = pinned_root(local.image_root)
        .map_err(|reason| root_error(&files.image_metadata(), reason))?;
    let mut inventory = local.secondaries;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key = match std::fs::read_to_string(files.key()) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| ProvisionError::Io {
            path: files.key(),
            source: std::io::Error::other(e.to_string()),
        })?,
        Err(_) => {
            let key =
                SigningKey::generate_with(getrandom::fill).map_err(|e| ProvisionError::Io {
                    path: files.key(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            write_secret(&files.key(), key.to_pkcs8_pem().as_bytes())?;
            key
        }
    };
    let public = key.public_key().to_json().clone();
    service_runtime::files::write_atomic(
        &files.public_key(),
        &serde_json::to_vec_pretty(&public).expect("JSON serializes"),
    )
    .map_err(io(&files.public_key()))?;
    inventory.insert(
        0,
        InventoryEcu {
            serial: settings.serial.clone(),
            hardware_id: settings.hardware_id.clone(),
            public_key: public,
            mode: None,
        },
    );
    for (metadata, version, root) in [
        (
            files.director_metadata(),
            director_version,
            local.director_root,
        ),
        (files.image_metadata(), image_version, local.image_root),
    ] {
        std::fs::create_dir_all(&metadata).map_err(io(&metadata))?;
        MetadataDir::with_root_history(&metadata)
            .store_root(version, root)
            .map_err(|e| ProvisionError::Io {
                path: metadata.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
    }
    let firmware = files.firmware();
    std::fs::create_dir_all(service_runtime::files::parent_dir(&firmware))
        .map_err(io(&firmware))?;
    service_runtime::files::write_atomic(&firmware, local.factory_image).map_err(io(&firmware))?;
    let state = PrimaryState {
        installed: Some(InstalledImage {
            filename: local.factory_name.to_string(),
            length: local.factory_image.len() as u64,
            hashes: uptane_core::hash::standard_hashes(local.factory_image),
            release_counter: 0,
        }),
        // Uptane §5.4.1: the time at provisioning is the first one trusted.
        latest_time: Some(std::time::SystemTime::now().into()),
        ..PrimaryState::default()
    };
    files.save_state(&state).map_err(io(&files.state()))?;
    service_runtime::files::write_atomic(
        &files.inventory(),
        &serde_json::to_vec_pretty(&inventory).expect("JSON serializes"),
    )
    .map_err(io(&files.inventory()))?;
    settings.save(dir).map_err(|e| ProvisionError::Io {
        path: dir.join("config.json"),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(inventory)
}

/// Writes the vehicle's Director credential (mode 0600) and when it expires: the last step
/// of provisioning.
pub fn write_credential(dir: &Path, registered: &Registered) -> Result<(), ProvisionError> {
    let files = StateDir::new(dir);
    let secret = match registered {
        Registered::Issued(issued) => {
            let mut state = files.load_state().map_err(io(&files.state()))?;
            state.credential_issued_at = Some(issued.issued_at);
            state.credential_expires_at = Some(issued.expires_at);
            files.save_state(&state).map_err(io(&files.state()))?;
            &issued.secret
        }
        Registered::Handed(secret) => secret,
    };
    write_secret(&files.credential(), secret.as_bytes())
}

/// Replaces the vehicle credential with one an operator issued (`director vehicle
/// issue-credential`), after a revocation; its lifetime is learnt at the next renewal.
pub fn replace_credential(dir: &Path, secret: &str) -> Result<(), ProvisionError> {
    let files = StateDir::new(dir);
    let secret = secret.trim();
    if !secret.starts_with("dvc_") || secret.len() != 68 {
        return Err(ProvisionError::Registration(
            "that is not a vehicle credential (dvc_ and 64 hex digits)".into(),
        ));
    }
    let mut state = files.load_state().map_err(io(&files.state()))?;
    service_runtime::files::write_atomic(&files.credential(), secret.as_bytes())
        .map_err(io(&files.credential()))?;
    state.credential_issued_at = None;
    state.credential_expires_at = None;
    files.save_state(&state).map_err(io(&files.state()))
}
