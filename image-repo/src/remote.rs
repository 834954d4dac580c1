//! Talking to a running image repository: reading its published state and uploading blobs
//! and signed metadata.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;

use futures_util::StreamExt;

use crate::error::RepoError;
use crate::repo::{BlobInfo, RepoState};

/// Why a remote operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// HTTP transport failure.
    #[error("{url}: {source}")]
    Http {
        /// URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused the request.
    #[error("{url}: HTTP {status}: {message}")]
    Refused {
        /// URL.
        url: String,
        /// Status.
        status: u16,
        /// The server's `error` text.
        message: String,
    },
    /// The published state does not verify, or a local file failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A plaintext URL without `--insecure`, or one that is not HTTP at all.
    #[error(transparent)]
    Url(#[from] service_runtime::http::UrlError),
    /// The TLS configuration could not be made (a CA or client certificate file).
    #[error(transparent)]
    Tls(#[from] service_runtime::tls::TlsError),
}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Remote {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Remote {
    /// A client of the server at `base` (e.g. `https://repo.example:8080`) over `tls`,
    /// which refuses `http://` unless it allows clear text.
    pub fn new(
        base: &str,
        token: Option<String>,
        tls: &service_runtime::http::ClientTls,
    ) -> Result<Self, RemoteError> {
        tls.check_url(base)?;
        let http = tls.reqwest()?.build().map_err(|source| RemoteError::Http {
            url: base.to_string(),
            source,
        })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn get(&self, file: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let url = format!("{}/metadata/{file}", self.base);
        let http = |source| RemoteError::Http {
            url: url.clone(),
            source,
        };
        let response = self.http.get(&url).send().await.map_err(http)?;
        match response.status().as_u16() {
            200 => Ok(Some(response.bytes().await.map_err(http)?.to_vec())),
            404 => Ok(None),
            status => Err(RemoteError::Refused {
                url,
                status,
                message: String::new(),
            }),
        }
    }

    /// The published state, verified as [`RepoState::load`] does.
    pub async fn state(&self) -> Result<RepoState, RemoteError> {
        let cache: RefCell<HashMap<String, Option<Vec<u8>>>> = RefCell::new(HashMap::new());
        // Load from what has been fetched; when a file is missing, fetch it and start over.
        for _ in 0..100_000 {
            let wanted: RefCell<Option<String>> = RefCell::new(None);
            let result = RepoState::load(|name| match cache.borrow().get(name) {
                Some(bytes) => Ok(bytes.clone()),
                None => {
                    *wanted.borrow_mut() = Some(name.to_string());
                    Err(RepoError::Layout(format!("{name} not fetched yet")))
                }
            });
            let Some(name) = wanted.into_inner() else {
                return Ok(result?);
            };
            let bytes = self.get(&name).await?;
            cache.borrow_mut().insert(name, bytes);
        }
        Err(RepoError::Layout("too many metadata files".into()).into())
    }

    async fn check(
        &self,
        url: &str,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, RemoteError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let message = response
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_default();
        Err(RemoteError::Refused {
            url: url.to_string(),
            status,
            message,
        })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Uploads a file's bytes, streamed, under its sha256; shows progress on a terminal.
    pub async fn upload_blob(&self, path: &Path, info: &BlobInfo) -> Result<(), RemoteError> {
        let url = format!("{}/api/v1/blobs/{}", self.base, info.hashes["sha256"]);
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| RepoError::io(path, e))?;
        let total = info.length;
        let show = std::io::stderr().is_terminal();
        let mut sent = 0u64;
        let mut shown = 0u64;
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |chunk| {
                if let Ok(bytes) = &chunk {
                    sent += bytes.len() as u64;
                    let percent = (sent * 100).checked_div(total).unwrap_or(100);
                    if show && percent > shown {
                        shown = percent;
                        eprint!("\ruploading: {percent:3}% of {total} bytes");
                        if percent == 100 {
                            eprintln!();
                        }
                    }
                }
                chunk
            });
        let request = self
            .authorized(self.http.put(&url))
            .header(reqwest::header::CONTENT_LENGTH, total)
            .body(reqwest::Body::wrap_stream(stream));
        let response = request.send().await.map_err(|source| RemoteError::Http {
            url: url.clone(),
            source,
        })?;
        self.check(&url, response).await?;
        Ok(())
    }

    /// Uploads signed metadata for `role`; returns the server's publish report.
    pub async fn upload_metadata(
        &self,
        role: &str,
        bytes: Vec<u8>,
    ) -> Result<serde_json::Value, RemoteError> {
        let url = format!(
            "{}/api/v1/metadata/{}",
            self.base,
            crate::repo::quote_role(role)
        );
        let response = self
            .authorized(self.http.put(&url))
            .body(bytes)
            .send()
            .await
            .map_err(|source| RemoteError::Http {
                url: url.clone(),
                source,
            })?;
        let response = self.check(&url, response).await?;
        let body = response.bytes().await.map_err(|source| RemoteError::Http {
            url: url.clone(),
            source,
        })?;
        serde_json::from_slice(&body).map_err(|e| RemoteError::Refused {
            url,
            status: 200,
            message: format!("unreadable publish report: {e}"),
        })
    }
}
