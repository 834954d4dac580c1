//! The HTTP server: metadata and images for clients, authenticated uploads for publishers.
//!
//! - `GET /metadata/<file>` and `GET /targets/<path>`: files from disk, streamed in 64 KiB
//!   reads, with HTTP Range for resumed downloads.
//! - `GET /healthz`.
//! - `PUT /api/v1/blobs/<sha256>`: image bytes, streamed to the blob store and hashed; kept
//!   only if they hash to the digest in the URL. Any valid token.
//! - `PUT /api/v1/metadata/<role>`: signed targets metadata for `role`, with a token for that
//!   role. Verified against the trust chain and the stored blobs before anything is published.
//!
//! Uploads need a live token (and, with `--upload-client-ca`, a client certificate from that
//! CA); every refusal is a 401 or 403 logged as a security event.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::StreamExt;
use serde_json::json;
use service_runtime::tls::PeerIdentity;
use tokio::sync::Mutex;
use tower_http::services::ServeDir;

use crate::error::RepoError;
use crate::repo::{BlobHasher, Repository};
use crate::tokens::Tokens;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest image upload.
    pub max_blob_bytes: u64,
    /// Largest metadata upload.
    pub max_metadata_bytes: usize,
    /// How often to check whether timestamp or snapshot need re-signing.
    pub renew_interval: Duration,
    /// Re-sign when they would expire within this.
    pub renew_margin: chrono::Duration,
    /// Uploads need a client certificate as well as a token (one that chains to the upload
    /// CA: the TLS layer checked that).
    pub uploads_need_certificate: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_blob_bytes: 16 << 30,
            max_metadata_bytes: 64 << 20,
            renew_interval: Duration::from_secs(60),
            renew_margin: chrono::Duration::hours(12),
            uploads_need_certificate: false,
        }
    }
}

/// Shared server state.
#[derive(Debug, Clone)]
pub struct AppState {
    repo: Repository,
    config: ServerConfig,
    /// Serializes every change to the repository.
    write_lock: Arc<Mutex<()>>,
    metadata_cache: Arc<std::sync::RwLock<HashMap<String, CachedFile>>>,
    /// `GET /status`'s answer and when it was computed: reading the whole repository is
    /// not done more than once a minute, whoever asks.
    status_cache: Arc<Mutex<Option<(std::time::Instant, serde_json::Value)>>>,
}

/// A metadata file in memory, valid while the file on disk has the same identity.
#[derive(Debug, Clone)]
struct CachedFile {
    identity: FileIdentity,
    bytes: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    inode: u64,
    length: u64,
    modified_ns: i64,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            inode: meta.ino(),
            length: meta.len(),
            modified_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        }
    }
}

impl AppState {
    /// State for serving `repo`.
    pub fn new(repo: Repository, config: ServerConfig) -> Self {
        Self {
            repo,
            config,
            write_lock: Arc::new(Mutex::new(())),
            metadata_cache: Arc::default(),
            status_cache: Arc::default(),
        }
    }
}

/// An error response: JSON `{"error": "..."}`; 5xx responses say only "internal error".
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        let status = match &e {
            RepoError::VersionNotIncreased { .. } => StatusCode::CONFLICT,
            RepoError::PathNotDelegated { .. } | RepoError::HardwareNotDelegated { .. } => {
                StatusCode::FORBIDDEN
            }
            RepoError::UnknownRole(_) => StatusCode::NOT_FOUND,
            _ if e.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
            return Self::new(status, "internal error");
        }
        tracing::warn!(error = %e, "upload refused");
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

/// The router, testable without a socket.
pub fn router(state: AppState) -> Router {
    // 256 KiB reads: 64 KiB reads cap a single download well below what loopback carries.
    let targets = ServeDir::new(state.repo.targets_dir()).with_buf_chunk_size(256 * 1024);
    let metadata_limit = state.config.max_metadata_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(status))
        .route(
            "/api/v1/blobs/{sha256}",
            put(upload_blob).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/metadata/{role}",
            put(upload_metadata).layer(DefaultBodyLimit::max(metadata_limit)),
        )
        .route("/metadata/{file}", get(get_metadata))
        .nest_service("/targets", targets)
        .with_state(state)
}

/// Metadata files are small and read far more often than written: they are served from
/// memory, re-read whenever the file's inode, length or mtime changes (every publish
/// replaces files by rename).
async fn get_metadata(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "not found"})),
        )
            .into_response()
    };
    if file.starts_with('.') || file.contains('/') || !file.ends_with(".json") {
        return not_found();
    }
    let path = state.repo.metadata_dir().join(&file);
    let Ok(meta) = std::fs::metadata(&path) else {
        return not_found();
    };
    let identity = FileIdentity::of(&meta);
    let cached = state.metadata_cache.read().ok().and_then(|cache| {
        cache
            .get(&file)
            .filter(|c| c.identity == identity)
            .map(|c| c.bytes.clone())
    });
    let bytes = match cached {
        Some(bytes) => bytes,
        None => {
            let Ok(bytes) = tokio::fs::read(&path).await else {
                return not_found();
            };
            let bytes = Bytes::from(bytes);
            if let Ok(mut cache) = state.metadata_cache.write() {
                cache.insert(
                    file,
                    CachedFile {
                        identity,
                        bytes: bytes.clone(),
                    },
                );
            }
            bytes
        }
    };
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

/// A refused upload: 401 (or 403), logged as a security event.
fn refused(status: StatusCode, reason: impl Into<String>) -> ApiError {
    let reason = reason.into();
    tracing::warn!(security_event = "upload_refused", status = status.as_u16(), %reason, "upload refused");
    ApiError::new(status, reason)
}

/// The role the request's uploader may write: its bearer token must be live and, when the
/// server requires one, it must have shown a client certificate from the upload CA.
fn uploader_role(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
) -> Result<String, ApiError> {
    if state.config.uploads_need_certificate
        && peer.and_then(|Extension(p)| p.fingerprint).is_none()
    {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "uploads need a client certificate issued by the upload CA",
        ));
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| refused(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    let tokens = Tokens::load(state.repo.dir()).map_err(ApiError::from)?;
    tokens
        .role_of(token, now())
        .map(str::to_string)
        .map_err(|e| refused(StatusCode::UNAUTHORIZED, e.to_string()))
}

async fn upload_blob(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
    body: Body,
) -> Result<Response, ApiError> {
    uploader_role(&state, &headers, peer)?;
    let expected = sha256.to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the path must be a hex sha256",
        ));
    }
    let limit = state.config.max_blob_bytes;
    let tmp = state.repo.blob_tempfile()?;
    let file = tmp.reopen().map_err(|e| RepoError::io(tmp.path(), e))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = BlobHasher::default();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("upload interrupted: {e}"))
        })?;
        hasher.update(&chunk);
        if hasher.length() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("blob larger than {limit} bytes"),
            ));
        }
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|e| RepoError::io(tmp.path(), e))?;
    }
    if let Some(declared) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && declared != hasher.length()
    {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "upload truncated"));
    }
    drop(file);
    let info = hasher.finish();
    if info.hashes["sha256"] != expected {
        return Err(RepoError::BlobDigest {
            expected,
            actual: info.hashes["sha256"].clone(),
        }
        .into());
    }
    let repo = state.repo.clone();
    let stored = info.clone();
    tokio::task::spawn_blocking(move || repo.store_blob(tmp, &stored))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))??;
    tracing::info!(sha256 = %expected, length = info.length, "blob stored");
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn upload_metadata(
    State(state): State<AppState>,
    Path(role): Path<String>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let allowed = uploader_role(&state, &headers, peer)?;
    if allowed != role {
        return Err(refused(
            StatusCode::FORBIDDEN,
            format!("this token may upload {allowed:?} metadata, not {role:?}"),
        ));
    }
    let _guard = state.write_lock.lock().await;
    let repo = state.repo.clone();
    let report =
        tokio::task::spawn_blocking(move || repo.publish_role(&role, body.to_vec(), now()))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))??;
    tracing::info!(role = %report.role, version = report.version, "published");
    Ok((StatusCode::OK, axum::Json(report)).into_response())
}

/// Offline-signed metadata that expires soon (`expiring`, empty when none), for operators
/// to alert on. Public, as the metadata it summarises is.
async fn status(State(state): State<AppState>) -> Response {
    // One computation at a time; the others wait for it and read its answer.
    let mut cached = state.status_cache.lock().await;
    if let Some((at, body)) = cached.as_ref()
        && at.elapsed() < Duration::from_secs(60)
    {
        return (StatusCode::OK, axum::Json(body.clone())).into_response();
    }
    let repo = state.repo.clone();
    match tokio::task::spawn_blocking(move || repo.state()).await {
        Ok(Ok(repo_state)) => {
            let body = serde_json::json!({
                "root_version": repo_state.root.common.version,
                "expiring": repo_state.expiring(now()),
            });
            *cached = Some((std::time::Instant::now(), body.clone()));
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the repository cannot be read",
        )
        .into_response(),
    }
}

/// Re-signs timestamp and snapshot before they expire, until `shutdown`; warns (at most
/// once an hour) about offline-signed metadata that expires soon, which only an operator
/// can renew.
async fn renew_loop(state: AppState) {
    let mut interval = tokio::time::interval(state.config.renew_interval);
    let mut warned: Option<std::time::Instant> = None;
    loop {
        interval.tick().await;
        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
            let repo = state.repo.clone();
            if let Ok(Ok(repo_state)) = tokio::task::spawn_blocking(move || repo.state()).await {
                let expiring = repo_state.expiring(now());
                for e in &expiring {
                    tracing::warn!(security_event = "metadata_expiring", "{e}");
                }
                if !expiring.is_empty() {
                    warned = Some(std::time::Instant::now());
                }
            }
        }
        let _guard = state.write_lock.lock().await;
        let repo = state.repo.clone();
        let margin = state.config.renew_margin;
        match tokio::task::spawn_blocking(move || repo.renew_online(now(), margin)).await {
            Ok(Ok(crate::repo::Renewal::None)) => {}
            Ok(Ok(renewal)) => tracing::info!(?renewal, "re-signed online metadata"),
            Ok(Err(e)) => tracing::error!(error = %e, "re-signing failed"),
            Err(e) => tracing::error!(error = %e, "re-signing task failed"),
        }
    }
}

/// Serves on an already bound listener over `transport` until `shutdown` completes (every
/// connection with TCP_NODELAY: responses go out as headers then a streamed body, and the
/// second small write would otherwise wait for the client's delayed ACK).
pub async fn serve(
    listener: tokio::net::TcpListener,
    transport: service_runtime::http::Transport,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let renew = tokio::spawn(renew_loop(state.clone()));
    let result = service_runtime::http::serve(listener, transport, router(state), shutdown).await;
    renew.abort();
    result
}
