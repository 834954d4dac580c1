//! The Primary's configuration: flags (each with an environment variable) over the
//! `config.json` that `init` writes into the state directory, validated as a whole before
//! anything connects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service_runtime::tls::Fingerprint;
use uptane_core::ids::{EcuSerial, HardwareId, Vin};
use uptane_core::trusted::Limits;

/// How a Secondary verifies what it is sent (Uptane §5.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
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

/// One Secondary the Primary feeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondaryConfig {
    /// Its ECU serial.
    pub serial: EcuSerial,
    /// Where its gRPC service listens (`host:port`).
    pub address: String,
    /// Its verification mode.
    pub mode: Mode,
    /// Its TLS certificate's fingerprint (printed by `secondary-ecu init`), pinned: the link
    /// is mutual TLS with exactly that certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
}

impl std::str::FromStr for SecondaryConfig {
    type Err = String;

    /// `SERIAL,HOST:PORT,MODE[,FINGERPRINT]`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split(',').collect();
        let (serial, address, mode, fingerprint) = match parts[..] {
            [serial, address, mode] => (serial, address, mode, None),
            [serial, address, mode, fingerprint] => (serial, address, mode, Some(fingerprint)),
            _ => {
                return Err(format!(
                    "{text:?}: expected SERIAL,HOST:PORT,MODE,FINGERPRINT (MODE is full or partial; \
                     FINGERPRINT is what `secondary-ecu init` printed)"
                ));
            }
        };
        let fingerprint = fingerprint
            .map(|f| {
                f.parse::<Fingerprint>()
                    .map_err(|e| format!("{text:?}: {e}"))
            })
            .transpose()?;
        let mode = match mode {
            "full" => Mode::Full,
            "partial" => Mode::Partial,
            other => return Err(format!("{text:?}: mode {other:?} is not full or partial")),
        };
        Ok(Self {
            serial: serial.parse().map_err(|e| format!("{text:?}: {e}"))?,
            address: address.to_string(),
            mode,
            fingerprint,
        })
    }
}

/// Everything a Primary needs to run, as kept in `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Vehicle identifier.
    pub vin: Vin,
    /// The Primary's ECU serial.
    pub serial: EcuSerial,
    /// The Primary's hardware id.
    pub hardware_id: HardwareId,
    /// Director base URL.
    pub director_url: String,
    /// Image repository base URL (metadata under `metadata/`, images under `targets/`).
    pub image_repo_url: String,
    /// The Secondaries.
    pub secondaries: Vec<SecondaryConfig>,
    /// Seconds between update cycles in `run`.
    pub poll_interval_secs: u64,
    /// Largest root, timestamp, snapshot and targets files accepted, in bytes.
    pub max_root_bytes: u64,
    /// See `max_root_bytes`.
    pub max_timestamp_bytes: u64,
    /// See `max_root_bytes`.
    pub max_snapshot_bytes: u64,
    /// See `max_root_bytes`.
    pub max_targets_bytes: u64,
    /// Slowest acceptable download, in bytes per second (0 disables the check).
    pub min_download_bytes_per_sec: u64,
    /// How long a download may run before the speed check applies, in milliseconds.
    pub download_grace_ms: u64,
    /// A connection idle this long is dropped, in seconds.
    pub read_timeout_secs: u64,
    /// Deadline of one call to a Secondary (transfers get more per byte), in seconds.
    pub secondary_timeout_secs: u64,
    /// Slowest acceptable transfer to a Secondary, in bytes per second (0 disables the
    /// check; Uptane's slow-retrieval defence on the vehicle's own links).
    #[serde(default = "default_min_upload_bytes_per_sec")]
    pub min_upload_bytes_per_sec: u64,
    /// How long a transfer to a Secondary may run before the speed check applies, in
    /// milliseconds.
    #[serde(default = "default_upload_grace_ms")]
    pub upload_grace_ms: u64,
    /// Plaintext links allowed (`--insecure`): for tests that inject faults only.
    #[serde(default)]
    pub insecure: bool,
    /// The CA certificates (PEM) the Director's and the Image repository's certificates
    /// chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// Configuration flags; any left out come from `config.json` in the state directory.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// Vehicle identifier.
    #[arg(long, env = "PRIMARY_VIN")]
    pub vin: Option<String>,
    /// The Primary's ECU serial.
    #[arg(long, env = "PRIMARY_SERIAL")]
    pub serial: Option<String>,
    /// The Primary's hardware id.
    #[arg(long, env = "PRIMARY_HARDWARE_ID")]
    pub hardware_id: Option<String>,
    /// Director base URL, e.g. http://127.0.0.1:8443.
    #[arg(long, env = "PRIMARY_DIRECTOR_URL")]
    pub director_url: Option<String>,
    /// Image repository base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "PRIMARY_IMAGE_REPO_URL")]
    pub image_repo_url: Option<String>,
    /// A Secondary as SERIAL,HOST:PORT,MODE (repeat for each; replaces the kept list).
    #[arg(long = "secondary", env = "PRIMARY_SECONDARIES", value_delimiter = ';')]
    pub secondaries: Vec<SecondaryConfig>,
    /// Seconds between update cycles in `run` [default: 300].
    #[arg(long, env = "PRIMARY_POLL_INTERVAL_SECS")]
    pub poll_interval_secs: Option<u64>,
    /// Largest root file accepted, in bytes [default: 512000].
    #[arg(long, env = "PRIMARY_MAX_ROOT_BYTES")]
    pub max_root_bytes: Option<u64>,
    /// Largest timestamp file accepted, in bytes [default: 16384].
    #[arg(long, env = "PRIMARY_MAX_TIMESTAMP_BYTES")]
    pub max_timestamp_bytes: Option<u64>,
    /// Largest snapshot file accepted when the timestamp lists no length [default: 2000000].
    #[arg(long, env = "PRIMARY_MAX_SNAPSHOT_BYTES")]
    pub max_snapshot_bytes: Option<u64>,
    /// Largest targets file accepted when the snapshot lists no length [default: 5000000].
    #[arg(long, env = "PRIMARY_MAX_TARGETS_BYTES")]
    pub max_targets_bytes: Option<u64>,
    /// Slowest acceptable download in bytes/s; 0 disables the check [default: 16384].
    #[arg(long, env = "PRIMARY_MIN_DOWNLOAD_BYTES_PER_SEC")]
    pub min_download_bytes_per_sec: Option<u64>,
    /// Milliseconds a download may run before the speed check applies [default: 5000].
    #[arg(long, env = "PRIMARY_DOWNLOAD_GRACE_MS")]
    pub download_grace_ms: Option<u64>,
    /// Seconds a connection may stay idle [default: 30].
    #[arg(long, env = "PRIMARY_READ_TIMEOUT_SECS")]
    pub read_timeout_secs: Option<u64>,
    /// Deadline of one call to a Secondary, in seconds [default: 30].
    #[arg(long, env = "PRIMARY_SECONDARY_TIMEOUT_SECS")]
    pub secondary_timeout_secs: Option<u64>,
    /// Slowest acceptable transfer to a Secondary in bytes/s; 0 disables the check
    /// [default: 16384].
    #[arg(long, env = "PRIMARY_MIN_UPLOAD_BYTES_PER_SEC")]
    pub min_upload_bytes_per_sec: Option<u64>,
    /// Milliseconds a transfer to a Secondary may run before the speed check applies
    /// [default: 5000].
    #[arg(long, env = "PRIMARY_UPLOAD_GRACE_MS")]
    pub upload_grace_ms: Option<u64>,
    /// Allow plaintext: `http://` servers and Secondaries without TLS. For tests that inject
    /// faults only; every plaintext link is logged as a warning.
    #[arg(long, env = "PRIMARY_INSECURE")]
    pub insecure: bool,
    /// CA certificates (PEM) the servers' certificates must chain to.
    #[arg(long, env = "PRIMARY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is given nowhere.
    #[error("--{0} is required (or set it in config.json)")]
    Missing(&'static str),
    /// A setting has an unusable value.
    #[error("{field}: {reason}")]
    Invalid {
        /// The flag.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `config.json` cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn default_min_upload_bytes_per_sec() -> u64 {
    16_384
}

fn default_upload_grace_ms() -> u64 {
    5_000
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Where `config.json` lives in a state directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

impl Settings {
    /// Flags over the kept file (if any), validated.
    pub fn resolve(kept: Option<Settings>, args: SettingsArgs) -> Result<Self, ConfigError> {
        let defaults = Limits::default();
        let kept = kept.as_ref();
        macro_rules! pick {
            ($field:ident, $flag:literal) => {
                args.$field
                    .clone()
                    .or_else(|| kept.map(|k| k.$field.clone()))
                    .ok_or(ConfigError::Missing($flag))?
            };
            (id $field:ident, $flag:literal) => {
                match args.$field.clone() {
                    Some(text) => text
                        .parse()
                        .map_err(|e: uptane_core::ids::IdError| invalid($flag, e.to_string()))?,
                    None => kept
                        .map(|k| k.$field.clone())
                        .ok_or(ConfigError::Missing($flag))?,
                }
            };
            ($field:ident, $flag:literal, $default:expr) => {
                args.$field
                    .or_else(|| kept.map(|k| k.$field))
                    .unwrap_or($default)
            };
        }
        let settings = Self {
            vin: pick!(id vin, "vin"),
            serial: pick!(id serial, "serial"),
            hardware_id: pick!(id hardware_id, "hardware-id"),
            director_url: pick!(director_url, "director-url"),
            image_repo_url: pick!(image_repo_url, "image-repo-url"),
            secondaries: if args.secondaries.is_empty() {
                kept.map(|k| k.secondaries.clone()).unwrap_or_default()
            } else {
                args.secondaries.clone()
            },
            poll_interval_secs: pick!(poll_interval_secs, "poll-interval-secs", 300),
            max_root_bytes: pick!(max_root_bytes, "max-root-bytes", defaults.root),
            max_timestamp_bytes: pick!(
                max_timestamp_bytes,
                "max-timestamp-bytes",
                defaults.timestamp
            ),
            max_snapshot_bytes: pick!(max_snapshot_bytes, "max-snapshot-bytes", defaults.snapshot),
            max_targets_bytes: pick!(max_targets_bytes, "max-targets-bytes", defaults.targets),
            min_download_bytes_per_sec: pick!(
                min_download_bytes_per_sec,
                "min-download-bytes-per-sec",
                16_384
            ),
            download_grace_ms: pick!(download_grace_ms, "download-grace-ms", 5_000),
            read_timeout_secs: pick!(read_timeout_secs, "read-timeout-secs", 30),
            secondary_timeout_secs: pick!(secondary_timeout_secs, "secondary-timeout-secs", 30),
            min_upload_bytes_per_sec: pick!(
                min_upload_bytes_per_sec,
                "min-upload-bytes-per-sec",
                default_min_upload_bytes_per_sec()
            ),
            upload_grace_ms: pick!(
                upload_grace_ms,
                "upload-grace-ms",
                default_upload_grace_ms()
            ),
            insecure: args.insecure || kept.is_some_and(|k| k.insecure),
            ca_cert: args
                .ca_cert
                .clone()
                .or_else(|| kept.and_then(|k| k.ca_cert.clone())),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url("director-url", &self.director_url, self.insecure)?;
        check_url("image-repo-url", &self.image_repo_url, self.insecure)?;
        let mut serials = std::collections::BTreeSet::from([&self.serial]);
        for secondary in &self.secondaries {
            if !serials.insert(&secondary.serial) {
                return Err(invalid(
                    "secondary",
                    format!("ECU serial {} appears twice", secondary.serial),
                ));
            }
            check_address(&secondary.address)?;
            if !self.insecure && secondary.fingerprint.is_none() {
                return Err(invalid(
                    "secondary",
                    format!(
                        "{} has no TLS fingerprint: give SERIAL,HOST:PORT,MODE,FINGERPRINT with \
                         the fingerprint `secondary-ecu init` printed (or --insecure)",
                        secondary.serial
                    ),
                ));
            }
        }
        for (field, value) in [
            ("poll-interval-secs", self.poll_interval_secs),
            ("max-root-bytes", self.max_root_bytes),
            ("max-timestamp-bytes", self.max_timestamp_bytes),
            ("max-snapshot-bytes", self.max_snapshot_bytes),
            ("max-targets-bytes", self.max_targets_bytes),
            ("read-timeout-secs", self.read_timeout_secs),
            ("secondary-timeout-secs", self.secondary_timeout_secs),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The metadata size limits.
    pub fn limits(&self) -> Limits {
        Limits {
            root: self.max_root_bytes,
            timestamp: self.max_timestamp_bytes,
            snapshot: self.max_snapshot_bytes,
            targets: self.max_targets_bytes,
            ..Limits::default()
        }
    }

    /// The poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs)
    }

    /// The Director's vehicle API for this vehicle.
    pub fn director_urls(&self) -> crate::ports::DirectorUrls {
        crate::ports::DirectorUrls {
            metadata: self.director_metadata_url(),
            manifest: self.manifest_url(),
            credential: format!(
                "{}/vehicles/{}/credential",
                self.director_url.trim_end_matches('/'),
                self.vin
            ),
        }
    }

    /// How this Primary reaches the servers: trusting `--ca-cert` (or the system's roots),
    /// presenting `identity` (its own certificate, to the Director only: the Image
    /// repository may ask uploaders for certificates of another CA), refusing `http://`
    /// unless `--insecure`.
    pub fn client_tls(
        &self,
        identity: Option<service_runtime::tls::Identity>,
    ) -> Result<service_runtime::http::ClientTls, service_runtime::tls::TlsError> {
        service_runtime::http::ClientTls::new(self.ca_cert.as_deref(), identity, self.insecure)
    }

    /// The Director's metadata URL for this vehicle.
    pub fn director_metadata_url(&self) -> String {
        format!(
            "{}/vehicles/{}/metadata/",
            self.director_url.trim_end_matches('/'),
            self.vin
        )
    }

    /// The Director's manifest URL for this vehicle.
    pub fn manifest_url(&self) -> String {
        format!(
            "{}/vehicles/{}/manifest",
            self.director_url.trim_end_matches('/'),
            self.vin
        )
    }

    /// The Image repository's metadata URL.
    pub fn image_metadata_url(&self) -> String {
        format!("{}/metadata/", self.image_repo_url.trim_end_matches('/'))
    }

    /// The Image repository's targets URL.
    pub fn image_targets_url(&self) -> String {
        format!("{}/targets/", self.image_repo_url.trim_end_matches('/'))
    }

    /// Reads `config.json` from `dir`, if there is one.
    pub fn load(dir: &Path) -> Result<Option<Self>, ConfigError> {
        let path = config_path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ConfigError::File {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConfigError::File {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Writes `config.json` into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        let path = config_path(dir);
        let bytes = serde_json::to_vec_pretty(self).expect("settings serialize");
        service_runtime::files::write_atomic(&path, &bytes).map_err(|e| ConfigError::File {
            path,
            reason: e.to_string(),
        })
    }
}

/// The identifiers the Director accepts: 1–64 characters of `A-Za-z0-9._-`.
fn check_url(field: &'static str, value: &str, insecure: bool) -> Result<(), ConfigError> {
    service_runtime::http::check_url(value, insecure).map_err(|e| invalid(field, e.to_string()))?;
    let url = reqwest::Url::parse(value).map_err(|e| invalid(field, format!("{value:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            field,
            format!("{value:?} is not an http(s) URL with a host"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(field, format!("{value:?} has a query or fragment")));
    }
    Ok(())
}

fn check_address(value: &str) -> Result<(), ConfigError> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| invalid("secondary", format!("address {value:?} is not HOST:PORT")))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(invalid(
            "secondary",
            format!("address {value:?} is not HOST:PORT"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SettingsArgs {
        SettingsArgs {
            vin: Some("VIN-1".into()),
            serial: Some("GW-1".into()),
            hardware_id: Some("hw-gw".into()),
            director_url: Some("https://127.0.0.1:1".into()),
            image_repo_url: Some("https://127.0.0.1:2/".into()),
            secondaries: vec![
                format!("BRAKE-1,127.0.0.1:5000,full,{}", "ab".repeat(32))
                    .parse()
                    .unwrap(),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn flags_override_the_kept_file_and_defaults_fill_the_rest() {
        let kept = Settings::resolve(None, args()).unwrap();
        assert_eq!(kept.poll_interval_secs, 300);
        assert_eq!(kept.image_targets_url(), "https://127.0.0.1:2/targets/");
        let again = Settings::resolve(
            Some(kept.clone()),
            SettingsArgs {
                poll_interval_secs: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(again.poll_interval_secs, 5);
        assert_eq!(again.secondaries, kept.secondaries);
        assert_eq!(again.vin, "VIN-1");
    }

    #[test]
    fn refuses_missing_and_bad_settings() {
        let mut missing = args();
        missing.vin = None;
        assert!(matches!(
            Settings::resolve(None, missing),
            Err(ConfigError::Missing("vin"))
        ));
        type Edit = Box<dyn Fn(&mut SettingsArgs)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("vin", Box::new(|a| a.vin = Some("VIN 1/..".into()))),
            (
                "director-url",
                Box::new(|a| a.director_url = Some("ftp://x".into())),
            ),
            (
                "image-repo-url",
                Box::new(|a| a.image_repo_url = Some("not a url".into())),
            ),
            // Clear text only when asked for by name.
            (
                "director-url",
                Box::new(|a| a.director_url = Some("http://127.0.0.1:1".into())),
            ),
            // A Secondary link is pinned mutual TLS unless asked otherwise.
            (
                "secondary",
                Box::new(|a| a.secondaries[0].fingerprint = None),
            ),
            (
                "secondary",
                Box::new(|a| a.secondaries[0].serial = "GW-1".parse().unwrap()),
            ),
            (
                "secondary",
                Box::new(|a| a.secondaries[0].address = "nowhere".into()),
            ),
            (
                "poll-interval-secs",
                Box::new(|a| a.poll_interval_secs = Some(0)),
            ),
            (
                "max-targets-bytes",
                Box::new(|a| a.max_targets_bytes = Some(0)),
            ),
        ];
        for (field, edit) in cases {
            let mut a = args();
            edit(&mut a);
            match Settings::resolve(None, a) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn insecure_allows_plaintext_servers_and_unpinned_secondaries() {
        let mut a = args();
        a.insecure = true;
        a.director_url = Some("http://127.0.0.1:1".into());
        a.secondaries[0].fingerprint = None;
        let settings = Settings::resolve(None, a).unwrap();
        assert!(settings.insecure);
        // And it is kept: a later command without the flag still may.
        let again = Settings::resolve(Some(settings), SettingsArgs::default()).unwrap();
        assert!(again.insecure);
    }

    #[test]
    fn parses_secondaries() {
        let s: SecondaryConfig = "B-1,localhost:7000,partial".parse().unwrap();
        assert_eq!(s.mode, Mode::Partial);
        assert!("B-1,localhost:7000".parse::<SecondaryConfig>().is_err());
        assert!(
            "B 1,localhost:7000,full"
                .parse::<SecondaryConfig>()
                .is_err()
        );
        assert!(
            "B-1,localhost:7000,half"
                .parse::<SecondaryConfig>()
                .is_err()
        );
    }
}
