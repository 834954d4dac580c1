//! The HTTP server: metadata and images for clients, authenticated uploads for publishers.
//!
//! - `GET /metadata/<file>`: metadata, served from memory.
//! - `GET /targets/<path>`: images from disk, streamed in 256 KiB reads, with one HTTP range
//!   for resumed downloads (`crate::serve_targets`).
//! - `GET /healthz`.
//! - `PUT /api/v1/blobs/<sha256>`: image bytes, streamed to the blob store and hashed; kept
//!   only if they hash to the digest in the URL. Any valid token.
//! - `PUT /api/v1/metadata/<role>`: signed targets metadata for `role`, with a token for that
//!   role. Verified against the trust chain and the stored blobs before anything is published.
//!
//! Uploads need a live token (and, with `--upload-client-ca`, a client certificate from that
//! CA); every refusal is a 401 or 403 logged as a security event.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::StreamExt;
use serde_json::json;
use service_runtime::conn_memory::Allowance;
use service_runtime::http::ServerLimits;
use service_runtime::throttle::Throttle;
use service_runtime::tls::PeerIdentity;
use tokio::sync::Mutex;

use crate::error::RepoError;
use crate::metadata_cache::{Lookup, MetadataCache};
use crate::repo::{BlobHasher, Repository};
use crate::tokens::Tokens;
use service_runtime::clock::now;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest image upload.
    pub max_blob_bytes: u64,
    /// Largest upload of the top-level targets role.
    pub max_targets_bytes: usize,
    /// Largest upload of a delegated targets role.
    pub max_delegated_bytes: usize,
    /// Time to receive a metadata upload once its token is accepted.
    pub metadata_body_timeout: Duration,
    /// Connections and timeouts of the server.
    pub limits: ServerLimits,
    /// Blobs no published metadata lists are removed once this old (`collect_garbage`).
    pub blob_grace: Duration,
    /// How often to check whether timestamp or snapshot need re-signing.
    pub renew_interval: Duration,
    /// Re-sign when they would expire within this.
    pub renew_margin: chrono::Duration,
    /// Uploads need a client certificate as well as a token (one that chains to the upload
    /// CA: the TLS layer checked that).
    pub uploads_need_certificate: bool,
    /// Bytes of the repository's filesystem no upload may take: what the renewals of
    /// snapshot and timestamp write (a full disk stops them, and the fleet sees a freeze
    /// within a day).
    pub min_free_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_blob_bytes: 16 << 30,
            // A 10,000-target role is about 3 MiB (docs/BENCHMARKS.md).
            max_targets_bytes: 16 << 20,
            max_delegated_bytes: 16 << 20,
            metadata_body_timeout: Duration::from_secs(60),
            limits: ServerLimits::default(),
            blob_grace: Duration::from_secs(24 * 3600),
            renew_interval: Duration::from_secs(60),
            renew_margin: chrono::Duration::hours(12),
            uploads_need_certificate: false,
            min_free_bytes: 1 << 30,
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
    /// The current metadata files, in memory.
    metadata_cache: Arc<MetadataCache>,
    /// Refused uploads, counted so that a flood is not a log line per request.
    refusals: Arc<Throttle<(u16, String)>>,
    /// `GET /status`'s answer and when it was computed: reading the whole repository is
    /// not done more than once a minute, whoever asks.
    status_cache: Arc<Mutex<Option<(std::time::Instant, serde_json::Value)>>>,
    /// Requests by route and status, for `--metrics-listen`.
    http: service_runtime::metrics::HttpMetrics,
    /// Each role's (name, version, expiry) and the number of targets, read from the
    /// repository at most every [`METRICS_READ_INTERVAL`], whoever scrapes.
    metrics_cache: Arc<Mutex<Option<(std::time::Instant, RoleFigures)>>>,
}

/// The repository's figures for metrics: (role, version, expires at) and targets listed.
type RoleFigures = (Vec<(String, u64, String)>, i64);

/// How often a scrape may read (and verify) the whole repository.
const METRICS_READ_INTERVAL: Duration = Duration::from_secs(10);

impl AppState {
    /// Refuses (507) an upload of `coming` more bytes if it would leave less than
    /// [`ServerConfig::min_free_bytes`] free on the repository's filesystem.
    fn check_room(&self, coming: u64) -> Result<(), ApiError> {
        let Ok(fs) = rustix::fs::statvfs(self.repo.dir()) else {
            return Ok(());
        };
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if free.saturating_sub(coming) < self.config.min_free_bytes {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "the repository keeps {} bytes free for the renewal of its metadata; {free} are free",
                    self.config.min_free_bytes
                ),
            ));
        }
        Ok(())
    }

    /// How many metadata files are kept in memory (the current ones).
    pub fn metadata_files_kept(&self) -> usize {
        self.metadata_cache.len()
    }

    /// State for serving `repo`.
    pub fn new(repo: Repository, config: ServerConfig) -> Self {
        Self {
            repo,
            config,
            write_lock: Arc::new(Mutex::new(())),
            metadata_cache: Arc::default(),
            status_cache: Arc::default(),
            refusals: Arc::new(Throttle::new(REFUSAL_WINDOW, 64)),
            http: service_runtime::metrics::HttpMetrics::default(),
            metrics_cache: Arc::default(),
        }
    }

    /// One scrape of `--metrics-listen` (names in docs/METRICS.md): the requests, and each
    /// role's version and seconds until it expires, read from the published repository.
    pub async fn metrics(&self) -> Result<String, String> {
        use prometheus_client::encoding::EncodeLabelSet;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct RoleLabels {
            role: service_runtime::metrics::Escaped,
        }
        let now = now();
        let (roles, targets_listed) = {
            // One read at a time; the others wait for it and use its answer.
            let mut cached = self.metrics_cache.lock().await;
            match cached.as_ref() {
                Some((at, figures)) if at.elapsed() < METRICS_READ_INTERVAL => figures.clone(),
                _ => {
                    let repo = self.repo.clone();
                    let state = tokio::task::spawn_blocking(move || repo.state())
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("the repository does not verify: {e}"))?;
                    let roles = state
                        .status(now, crate::repo::Warnings::default())
                        .into_iter()
                        .map(|r| (r.role, r.version, r.expires_at))
                        .collect();
                    let targets = state.roles.values().map(|t| t.targets.len() as i64).sum();
                    *cached = Some((std::time::Instant::now(), (roles, targets)));
                    cached.as_ref().map(|(_, f)| f.clone()).unwrap_or_default()
                }
            }
        };
        let mut registry = prometheus_client::registry::Registry::with_prefix("image_repo");
        self.http.register(&mut registry);
        let expires = Family::<RoleLabels, Gauge>::default();
        let versions = Family::<RoleLabels, Gauge>::default();
        for (role, version, expires_at) in roles {
            let at = uptane_core::time::parse_expires(&expires_at).unwrap_or(now);
            let labels = RoleLabels {
                role: service_runtime::metrics::Escaped(role),
            };
            expires.get_or_create(&labels).set((at - now).num_seconds());
            versions.get_or_create(&labels).set(version as i64);
        }
        registry.register(
            "metadata_expires_in_seconds",
            "Seconds until each role's current metadata expires (negative once expired)",
            expires,
        );
        registry.register(
            "metadata_version",
            "Each role's current metadata version",
            versions,
        );
        let targets = Gauge::<i64>::default();
        targets.set(targets_listed);
        registry.register("targets", "Images listed, over every targets role", targets);
        Ok(service_runtime::metrics::encode(&registry))
    }

    /// Logs the tallies of a refusal window that ended (every window; `all` at shutdown).
    fn log_refusals(&self, all: bool) {
        let now = std::time::SystemTime::now();
        log_tallies(if all {
            self.refusals.drain(now)
        } else {
            self.refusals.due(now)
        });
    }
}

fn log_tallies(tallies: Vec<service_runtime::throttle::Tally<(u16, String)>>) {
    for tally in tallies {
        let (status, reason) = tally
            .kind
            .unwrap_or((0, "refusals beyond 64 distinct kinds".into()));
        tracing::warn!(
            security_event = "upload_refused",
            status,
            count = tally.count,
            %reason,
            "more uploads refused in the last window"
        );
    }
}

/// Refused uploads of one kind are logged once per window, then as one count.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

/// An error response: JSON `{"error": "..."}`; 5xx responses say only "internal error".
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        let status = match &e {
            RepoError::VersionNotIncreased { .. } | RepoError::DelegationConflict { .. } => {
                StatusCode::CONFLICT
            }
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

/// The router, testable without a socket.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(status))
        .route(
            "/api/v1/blobs/{sha256}",
            put(upload_blob).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/metadata/{role}",
            put(upload_metadata).layer(DefaultBodyLimit::disable()),
        )
        .route("/metadata/{file}", get(get_metadata))
        .route("/targets/{*path}", get(get_target))
        .route_layer(axum::middleware::from_fn_with_state(
            state.http.clone(),
            service_runtime::metrics::track,
        ))
        .with_state(state)
}

async fn get_target(
    State(state): State<AppState>,
    connection: Option<Extension<Allowance>>,
    method: Method,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    // The connection's allowance, which the accept loop (`serve_with`) puts in every request.
    // Only a request handed to the router directly, as the tests do, comes without one, and
    // gets one of its own.
    let connection = connection.map_or_else(
        || Allowance::new(state.config.limits.response_memory_per_connection),
        |Extension(connection)| connection,
    );
    crate::serve_targets::serve(
        state.repo.targets_dir(),
        &path,
        &method,
        &headers,
        connection,
    )
    .await
}

/// Metadata files: the current ones from memory, older versions streamed from the file
/// within the connection's allowance (`metadata_cache.rs`).
async fn get_metadata(
    State(state): State<AppState>,
    connection: Option<Extension<Allowance>>,
    Path(file): Path<String>,
) -> Response {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not found").into_response();
    if file.starts_with('.') || file.contains('/') || !file.ends_with(".json") {
        return not_found();
    }
    let dir = state.repo.metadata_dir();
    let mut response = match state.metadata_cache.lookup(&dir, &file).await {
        Lookup::Current(bytes) => bytes.into_response(),
        Lookup::Missing => return not_found(),
        Lookup::Older => {
            let connection = connection.map_or_else(
                || Allowance::new(state.config.limits.response_memory_per_connection),
                |Extension(connection)| connection,
            );
            crate::serve_targets::serve(dir, &file, &Method::GET, &HeaderMap::new(), connection)
                .await
        }
    };
    if response.status().is_success() {
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response
}

/// A refused upload: 401 (or 403), logged as a security event, the first of its kind in a
/// window at once and the rest as one count (`service_runtime::throttle`).
fn refused(state: &AppState, status: StatusCode, reason: impl Into<String>) -> ApiError {
    let reason = reason.into();
    let (first, ended) = state.refusals.note(
        &(status.as_u16(), reason.clone()),
        std::time::SystemTime::now(),
    );
    if first {
        tracing::warn!(security_event = "upload_refused", status = status.as_u16(), %reason, "upload refused");
    }
    log_tallies(ended);
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
            state,
            StatusCode::UNAUTHORIZED,
            "uploads need a client certificate issued by the upload CA",
        ));
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| refused(state, StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    let tokens = Tokens::load(state.repo.dir()).map_err(ApiError::from)?;
    tokens
        .role_of(token, now())
        .map(str::to_string)
        .map_err(|e| refused(state, StatusCode::UNAUTHORIZED, e.to_string()))
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
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refused from the declared length first, before a byte is written to disk.
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("blob larger than {limit} bytes"),
        ));
    }
    state.check_room(declared.unwrap_or(0))?;
    let tmp = state.repo.blob_tempfile()?;
    let file = tmp.reopen().map_err(|e| RepoError::io(tmp.path(), e))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = BlobHasher::default();
    let mut stream = body.into_data_stream();
    // A trickled upload, or a stalled one (HTTP/2 PINGs keep its connection from being
    // idle), would hold its connection and a temporary file for ever: held to the minimum
    // speed, looked at with each chunk and each second.
    let min = state.config.limits.min_transfer_speed();
    let mut speed = service_runtime::speed::SpeedMonitor::new(min);
    let too_slow = |bytes_per_sec: u64| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "upload slower than {} bytes/s ({bytes_per_sec} bytes/s)",
                min.bytes_per_sec
            ),
        )
    };
    let started = tokio::time::Instant::now();
    let second = std::time::Duration::from_secs(1);
    let mut ticks = tokio::time::interval_at(started + second, second);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A chunk, or `None` when a second passed without one.
        let arrived = tokio::select! {
            chunk = stream.next() => Some(chunk),
            _ = ticks.tick() => None,
        };
        let chunk: Option<Bytes> = match arrived {
            Some(None) => break,
            Some(Some(chunk)) => Some(chunk.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("upload interrupted: {e}"))
            })?),
            None => None,
        };
        if let Some(chunk) = &chunk {
            hasher.update(chunk);
        }
        if let Some(bytes_per_sec) = speed.observe(started.elapsed(), hasher.length()) {
            return Err(too_slow(bytes_per_sec));
        }
        let Some(chunk) = chunk else {
            continue;
        };
        // An upload of undeclared length is looked at again every 64 MiB.
        if (hasher.length() - chunk.len() as u64) >> 26 != hasher.length() >> 26 {
            state.check_room(0)?;
        }
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
    if let Some(declared) = declared
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

/// Reads an upload of at most `limit` bytes within `timeout`: 413 above the limit (refused
/// from the declared length before a byte is read), 408 when too slow, 400 when it breaks.
async fn read_limited(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    use service_runtime::body::BodyError;
    service_runtime::body::read_limited(body, limit, timeout)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("metadata larger than {limit} bytes"),
            ),
            BodyError::Timeout(secs) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the upload took longer than {secs} s"),
            ),
            e @ BodyError::Broken(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        })
}

async fn upload_metadata(
    State(state): State<AppState>,
    Path(role): Path<String>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
    body: Body,
) -> Result<Response, ApiError> {
    // The token is checked before a byte of the body is read.
    let allowed = uploader_role(&state, &headers, peer)?;
    if allowed != role {
        return Err(refused(
            &state,
            StatusCode::FORBIDDEN,
            format!("this token may upload {allowed:?} metadata, not {role:?}"),
        ));
    }
    let limit = if role == "targets" {
        state.config.max_targets_bytes
    } else {
        state.config.max_delegated_bytes
    };
    state.check_room(limit as u64)?;
    let body = read_limited(body, limit, state.config.metadata_body_timeout).await?;
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
    let mut collected: Option<std::time::Instant> = None;
    loop {
        interval.tick().await;
        state.log_refusals(false);
        if collected.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
            collected = Some(std::time::Instant::now());
            let _guard = state.write_lock.lock().await;
            let (repo, grace) = (state.repo.clone(), state.config.blob_grace);
            let swept = tokio::task::spawn_blocking(move || {
                repo.collect_garbage(std::time::SystemTime::now(), grace)
            })
            .await;
            match swept {
                Ok(Ok(c)) if c != crate::repo::Collected::default() => tracing::info!(
                    blobs = c.blobs,
                    partial_uploads = c.partial_uploads,
                    bytes = c.bytes,
                    "removed uploads no published metadata lists"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "collecting unlisted blobs"),
                Err(e) => tracing::error!(error = %e, "collecting unlisted blobs"),
            }
        }
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
    let limits = state.config.limits;
    let result = service_runtime::http::serve_with(
        listener,
        transport,
        limits,
        router(state.clone()),
        shutdown,
    )
    .await;
    renew.abort();
    state.log_refusals(true);
    result
}
