//! What the update cycle talks to, as small traits: the Director, the Image repository and
//! each Secondary. [`Network`] is the real thing (HTTP to both servers, gRPC to the
//! Secondaries); tests put in-memory ports in their place to drive the cycle in-process.

use std::future::Future;

use proto::v2::PutMetadataRequest;
use uptane_core::hash::StreamVerifier;
use uptane_core::ids::EcuSerial;
use uptane_core::refresh::MetadataFile;

use crate::download::VerifiedFile;
use crate::repo::{FetchError, Fetcher};
use crate::secondary::{Delivery, LinkError, SecondaryLink};

/// What happened to a vehicle version manifest the Primary sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOutcome {
    /// The Director accepted it.
    Accepted,
    /// The Director refused it (4xx), with its reason.
    Refused(String),
    /// It could not be sent.
    Unsent(String),
}

/// A repository's metadata, one file at a time.
pub trait RemoteRepository: Send + Sync {
    /// `file`, read up to `max_len` bytes; `None` when the repository says it has no such
    /// file (HTTP 403 or 404).
    fn metadata(
        &self,
        file: &MetadataFile,
        max_len: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, FetchError>> + Send;
}

/// The Director: its per-vehicle repository, and where manifests go.
pub trait DirectorPort: RemoteRepository {
    /// Sends a signed vehicle version manifest.
    fn send_manifest(&self, body: Vec<u8>) -> impl Future<Output = ManifestOutcome> + Send;
}

/// The Image repository: its metadata and its images.
pub trait ImageRepoPort: RemoteRepository {
    /// The base every image location starts from.
    fn targets_base(&self) -> &str;

    /// Streams the image at `location` into `file` from `verifier.bytes_seen()` on, each
    /// chunk through `verifier` before it is written, at most `length` bytes in all.
    fn download_to(
        &self,
        location: &str,
        file: &mut tokio::fs::File,
        verifier: &mut StreamVerifier,
        length: u64,
    ) -> impl Future<Output = Result<(), FetchError>> + Send;
}

/// One Secondary.
pub trait SecondaryPort: Send {
    /// Its serial, as provisioned.
    fn serial(&self) -> &EcuSerial;

    /// Its signed version report for `nonce`, as it signed it.
    fn version_report(
        &mut self,
        nonce: &str,
    ) -> impl Future<Output = Result<Vec<u8>, LinkError>> + Send;

    /// Delivers one verified update: time, metadata, the image, install and activation.
    fn deliver(
        &mut self,
        unix_seconds: i64,
        bundle: PutMetadataRequest,
        image: &VerifiedFile,
    ) -> impl Future<Output = Result<Delivery, LinkError>> + Send;
}

/// The ports the update cycle runs with.
pub trait Ports {
    /// The Director.
    type Director: DirectorPort;
    /// The Image repository.
    type ImageRepo: ImageRepoPort;
    /// A Secondary.
    type Secondary: SecondaryPort;
}

/// The real network: HTTP(S) to both repositories, gRPC to the Secondaries.
#[derive(Debug)]
pub enum Network {}

impl Ports for Network {
    type Director = HttpDirector;
    type ImageRepo = HttpRepository;
    type Secondary = SecondaryLink;
}

fn base_url(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// A TUF repository over HTTP: metadata under one base URL, images under another.
#[derive(Debug, Clone)]
pub struct HttpRepository {
    fetcher: Fetcher,
    metadata_url: String,
    targets_url: String,
}

impl HttpRepository {
    /// Metadata under `metadata_url`, images under `targets_url`.
    pub fn new(fetcher: Fetcher, metadata_url: &str, targets_url: &str) -> Self {
        Self {
            fetcher,
            metadata_url: base_url(metadata_url),
            targets_url: base_url(targets_url),
        }
    }

    /// The HTTP client.
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }
}

impl RemoteRepository for HttpRepository {
    async fn metadata(
        &self,
        file: &MetadataFile,
        max_len: u64,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        let url = format!("{}{}", self.metadata_url, file.file_name());
        match self.fetcher.fetch_bounded(&url, max_len).await {
            Ok(bytes) => Ok(Some(bytes)),
            // The repository says it has no such file: the refresh decides whether that
            // ends the root chain or is a dropped request.
            Err(e) if matches!(e.status(), Some(403 | 404)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl ImageRepoPort for HttpRepository {
    fn targets_base(&self) -> &str {
        &self.targets_url
    }

    async fn download_to(
        &self,
        location: &str,
        file: &mut tokio::fs::File,
        verifier: &mut StreamVerifier,
        length: u64,
    ) -> Result<(), FetchError> {
        self.fetcher
            .download_to(location, file, verifier, length)
            .await
    }
}

/// The Director over HTTP, with the vehicle's credential.
#[derive(Debug, Clone)]
pub struct HttpDirector {
    repository: HttpRepository,
    manifest_url: String,
    credential: String,
}

impl HttpDirector {
    /// The vehicle's repository under `metadata_url`; manifests to `manifest_url`.
    pub fn new(fetcher: Fetcher, metadata_url: &str, manifest_url: &str, credential: &str) -> Self {
        Self {
            repository: HttpRepository::new(
                fetcher.with_bearer(credential),
                metadata_url,
                metadata_url,
            ),
            manifest_url: manifest_url.to_string(),
            credential: credential.to_string(),
        }
    }
}

impl RemoteRepository for HttpDirector {
    async fn metadata(
        &self,
        file: &MetadataFile,
        max_len: u64,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        self.repository.metadata(file, max_len).await
    }
}

impl DirectorPort for HttpDirector {
    async fn send_manifest(&self, body: Vec<u8>) -> ManifestOutcome {
        let sent = self
            .repository
            .fetcher()
            .http()
            .post(&self.manifest_url)
            .bearer_auth(&self.credential)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => ManifestOutcome::Accepted,
            Ok(response) => {
                let status = response.status();
                let why = crate::provision::json_body(response).await;
                ManifestOutcome::Refused(format!(
                    "HTTP {status}: {}",
                    why["error"].as_str().unwrap_or("no reason given")
                ))
            }
            Err(e) => ManifestOutcome::Unsent(e.to_string()),
        }
    }
}

impl SecondaryPort for SecondaryLink {
    fn serial(&self) -> &EcuSerial {
        &self.config().serial
    }

    async fn version_report(&mut self, nonce: &str) -> Result<Vec<u8>, LinkError> {
        SecondaryLink::version_report(self, nonce).await
    }

    async fn deliver(
        &mut self,
        unix_seconds: i64,
        bundle: PutMetadataRequest,
        image: &VerifiedFile,
    ) -> Result<Delivery, LinkError> {
        SecondaryLink::deliver(self, unix_seconds, bundle, image).await
    }
}
