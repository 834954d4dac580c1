//! What the update cycle talks to, as small traits: the Director, the Image repository and
//! each Secondary. [`Network`] is the real thing (HTTP to both servers, gRPC to the
//! Secondaries); tests put in-memory ports in their place to drive the cycle in-process.

use std::future::Future;

use proto::v2::PutMetadataRequest;
use service_runtime::digest::ThreadedDigests;
use uptane_core::ids::EcuSerial;
use uptane_core::refresh::MetadataFile;
use uptane_core::time::UtcTime;

use crate::download::VerifiedFile;
use crate::repo::{Credential, FetchError, Fetcher};
use crate::secondary::{Delivery, LinkError, SecondaryLink};

/// What happened to a vehicle version manifest the Primary sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestOutcome {
    /// The Director accepted it.
    Accepted,
    /// The Director refused it (4xx), with its reason.
    Refused(String),
    /// The Director failed to take it (5xx): worth sending again later.
    ServerError(String),
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

/// A vehicle credential the Director issued.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCredential {
    /// The secret.
    pub secret: String,
    /// When it was issued.
    pub issued_at: UtcTime,
    /// When it stops working.
    pub expires_at: UtcTime,
}

impl std::fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredential")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl IssuedCredential {
    /// From the Director's answer to a registration or a renewal.
    pub fn from_answer(answer: &serde_json::Value) -> Result<Self, String> {
        let time = |key: &str| {
            answer[key]
                .as_str()
                .and_then(uptane_core::time::parse_expires)
                .ok_or_else(|| format!("no {key} in the Director's answer"))
        };
        Ok(Self {
            secret: answer["credential"]
                .as_str()
                .ok_or("no credential in the Director's answer")?
                .to_string(),
            issued_at: time("credential_issued_at")?,
            expires_at: time("credential_expires_at")?,
        })
    }
}

/// The Director: its per-vehicle repository, where manifests go, and the vehicle's
/// credential.
pub trait DirectorPort: RemoteRepository {
    /// Sends a signed vehicle version manifest.
    fn send_manifest(&self, body: Vec<u8>) -> impl Future<Output = ManifestOutcome> + Send;

    /// Asks for a renewed credential (the Director lets it take over at its first use, so
    /// losing this answer loses nothing).
    fn renew_credential(&self) -> impl Future<Output = Result<IssuedCredential, String>> + Send;

    /// Sends `secret` as the credential from the next request on.
    fn use_credential(&self, secret: &str);
}

/// The Image repository: its metadata and its images.
pub trait ImageRepoPort: RemoteRepository {
    /// The base every image location starts from.
    fn targets_base(&self) -> &str;

    /// Streams the image at `location` into `file` from `digests.bytes_seen()` on, each
    /// chunk through `digests` before it is written, at most `length` bytes in all.
    fn download_to(
        &self,
        location: &str,
        file: &std::fs::File,
        digests: &mut ThreadedDigests,
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

    /// Tells it the Director accepted its report `report_counter` (the attacks the report
    /// carried may be forgotten).
    fn acknowledge(
        &mut self,
        report_counter: u64,
    ) -> impl Future<Output = Result<(), LinkError>> + Send;

    /// Delivers one verified update: time, metadata, the image, install and activation.
    fn deliver(
        &mut self,
        unix_seconds: i64,
        bundle: PutMetadataRequest,
        image: &VerifiedFile,
    ) -> impl Future<Output = Result<Delivery, LinkError>> + Send;

    /// Tells it the Director withdrew its update `correlation_id` (of `filename`): `bundle`
    /// is the Director's new metadata, which assigns it nothing.
    fn withdraw(
        &mut self,
        unix_seconds: i64,
        bundle: PutMetadataRequest,
        correlation_id: &str,
        filename: &str,
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
        file: &std::fs::File,
        digests: &mut ThreadedDigests,
        length: u64,
    ) -> Result<(), FetchError> {
        self.fetcher
            .download_to(location, file, digests, length)
            .await
    }
}

/// The Director over HTTP(S), with the vehicle's credential (and, over TLS, the Primary's
/// client certificate, which the Director may have bound to the vehicle).
#[derive(Debug, Clone)]
pub struct HttpDirector {
    repository: HttpRepository,
    urls: DirectorUrls,
    credential: Credential,
}

/// Where the Director's vehicle API is.
#[derive(Debug, Clone)]
pub struct DirectorUrls {
    /// The vehicle's repository.
    pub metadata: String,
    /// Where manifests go.
    pub manifest: String,
    /// Where the credential is renewed.
    pub credential: String,
}

impl HttpDirector {
    /// The vehicle's Director API at `urls`, sending `credential`.
    pub fn new(fetcher: Fetcher, urls: DirectorUrls, credential: &str) -> Self {
        let credential = Credential::new(credential);
        Self {
            repository: HttpRepository::new(
                fetcher.with_bearer(credential.clone()),
                &urls.metadata,
                &urls.metadata,
            ),
            urls,
            credential,
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
            .post(&self.urls.manifest)
            .bearer_auth(self.credential.get())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => ManifestOutcome::Accepted,
            Ok(response) => {
                let status = response.status();
                let why = crate::provision::json_body(response).await;
                let why = format!(
                    "HTTP {status}: {}",
                    why["error"].as_str().unwrap_or("no reason given")
                );
                if status.is_server_error() {
                    ManifestOutcome::ServerError(why)
                } else {
                    ManifestOutcome::Refused(why)
                }
            }
            Err(e) => ManifestOutcome::Unsent(service_runtime::error_chain(&e)),
        }
    }

    async fn renew_credential(&self) -> Result<IssuedCredential, String> {
        let response = self
            .repository
            .fetcher()
            .http()
            .post(&self.urls.credential)
            .bearer_auth(self.credential.get())
            .send()
            .await
            .map_err(|e| service_runtime::error_chain(&e))?;
        let status = response.status();
        let answer = crate::provision::json_body(response).await;
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                answer["error"].as_str().unwrap_or("no reason given")
            ));
        }
        IssuedCredential::from_answer(&answer)
    }

    fn use_credential(&self, secret: &str) {
        self.credential.set(secret);
    }
}

impl SecondaryPort for SecondaryLink {
    fn serial(&self) -> &EcuSerial {
        &self.config().serial
    }

    async fn version_report(&mut self, nonce: &str) -> Result<Vec<u8>, LinkError> {
        SecondaryLink::version_report(self, nonce).await
    }

    async fn acknowledge(&mut self, report_counter: u64) -> Result<(), LinkError> {
        SecondaryLink::acknowledge(self, report_counter).await
    }

    async fn deliver(
        &mut self,
        unix_seconds: i64,
        bundle: PutMetadataRequest,
        image: &VerifiedFile,
    ) -> Result<Delivery, LinkError> {
        SecondaryLink::deliver(self, unix_seconds, bundle, image).await
    }

    async fn withdraw(
        &mut self,
        unix_seconds: i64,
        bundle: PutMetadataRequest,
        correlation_id: &str,
        filename: &str,
    ) -> Result<Delivery, LinkError> {
        SecondaryLink::withdraw(self, unix_seconds, bundle, correlation_id, filename).await
    }
}
