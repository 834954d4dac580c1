//! The HTTP API: the operator REST API under `/api/v1` (bearer API tokens), the vehicle API
//! under `/vehicles/<vin>` (the vehicle's bound client certificate or its bearer
//! credential), and Primary self-registration with a provisioning token. Handlers parse, call
//! [`DirectorService`] and map its errors.

mod campaigns;
mod ui;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use service_runtime::http::ServerLimits;
use service_runtime::tls::{Fingerprint, PeerIdentity};
use uptane_core::ids::{EcuSerial, Vin};
use uptane_core::time::UtcTime;

use crate::error::DirectorError;
use crate::service::{
    AssignRequest, DirectorService, EcuReplacement, EventFilter, IssuedCredential, NewVehicle,
    Page, ProvisioningLimits, VehicleAuth,
};

/// Shared server state: cheap clones.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The Director.
    pub service: DirectorService,
    /// Largest JSON or manifest body accepted.
    pub max_body_bytes: usize,
}

/// The router, testable without a socket.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/register", post(register_with_provisioning))
        .route(
            "/api/v1/vehicles",
            get(list_vehicles).post(register_vehicle),
        )
        .route("/api/v1/vehicles/{vin}", get(show_vehicle))
        .route("/api/v1/vehicles/{vin}/ecus/{serial}", put(replace_ecu))
        .route("/api/v1/assignments", get(list_assignments).post(assign))
        .route(
            "/api/v1/assignments/{correlation_id}/cancel",
            post(cancel_assignment),
        )
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/position", get(events_position))
        .route("/api/v1/status", get(status))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/vehicles/{vin}/credential", post(issue_credential))
        .route(
            "/api/v1/vehicles/{vin}/credential/revoke",
            post(revoke_credential),
        )
        .route("/api/v1/vehicles/{vin}/time-reset", post(reset_time))
        .route("/api/v1/vehicle-credentials", get(list_credentials))
        .route(
            "/api/v1/provisioning-tokens",
            get(list_provisioning_tokens).post(create_provisioning_token),
        )
        .route(
            "/api/v1/provisioning-tokens/{label}/revoke",
            post(revoke_provisioning_tokens),
        )
        .route("/vehicles/{vin}/metadata/{file}", get(vehicle_metadata))
        .route("/vehicles/{vin}/manifest", post(post_manifest))
        .route("/vehicles/{vin}/credential", post(renew_credential))
        .merge(campaigns::routes())
        .merge(ui::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.service.counters().http.clone(),
            service_runtime::metrics::track,
        ))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

/// What a vehicle request presented: its bearer credential and the client certificate the
/// TLS handshake proved (none over plaintext, or when the router is called without a
/// socket).
fn vehicle_auth(headers: &HeaderMap, peer: Option<Extension<PeerIdentity>>) -> VehicleAuth {
    VehicleAuth {
        bearer: bearer(headers),
        certificate: peer.and_then(|Extension(p)| p.fingerprint),
    }
}

fn parse_id<T: std::str::FromStr<Err = uptane_core::ids::IdError>>(
    text: &str,
) -> Result<T, DirectorError> {
    text.parse()
        .map_err(|e: uptane_core::ids::IdError| DirectorError::BadRequest(e.to_string()))
}

/// The largest operator or registration JSON body: a vehicle of 100 ECUs with RSA keys is
/// about 100 KiB.
pub const MAX_JSON_BYTES: usize = 256 << 10;

/// Time to receive a body once the request is authenticated.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a body of at most `limit` bytes: 413 above it (from the declared length before a
/// byte is read), 408 when it does not arrive within [`BODY_TIMEOUT`], 400 when it breaks.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, DirectorError> {
    use service_runtime::body::BodyError;
    match service_runtime::body::read_limited(body, limit, BODY_TIMEOUT).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(BodyError::TooLarge(limit)) => Err(DirectorError::PayloadTooLarge(limit)),
        Err(BodyError::Timeout(secs)) => Err(DirectorError::BodyTimeout(secs)),
        Err(e @ BodyError::Broken(_)) => Err(DirectorError::BadRequest(e.to_string())),
    }
}

/// Reads a vehicle manifest: at most the configured size.
async fn read_body(state: &AppState, body: Body) -> Result<Vec<u8>, DirectorError> {
    read_limited(body, state.max_body_bytes).await
}

/// Reads a JSON body: 413 above [`MAX_JSON_BYTES`] (or the configured size, if smaller),
/// 408 when too slow, 400 when malformed.
async fn read_json<T: DeserializeOwned>(state: &AppState, body: Body) -> Result<T, DirectorError> {
    parse_json(&read_limited(body, MAX_JSON_BYTES.min(state.max_body_bytes)).await?)
}

/// A JSON body, or 400 saying why it is not one.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DirectorError> {
    serde_json::from_slice(bytes)
        .map_err(|e| DirectorError::BadRequest(format!("malformed JSON: {e}")))
}

type ApiResult = Result<Response, DirectorError>;

fn ok_json(value: impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

fn created(value: serde_json::Value) -> ApiResult {
    Ok((StatusCode::CREATED, axum::Json(value)).into_response())
}

async fn register_vehicle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let vehicle: NewVehicle = match read_json(&state, body).await {
        Ok(vehicle) => vehicle,
        Err(e) => {
            return Err(state
                .service
                .refused("registration_refused", &actor, e)
                .await);
        }
    };
    let (vin, bound) = (vehicle.vin.clone(), vehicle.tls_fingerprint.is_some());
    let credential = state.service.register_vehicle(&actor, vehicle).await?;
    created(registered(&vin, &credential, bound))
}

/// The answer to a registration: the credential (shown once) and what authenticates the
/// vehicle from now on.
fn registered(vin: &Vin, credential: &IssuedCredential, bound: bool) -> serde_json::Value {
    json!({
        "vin": vin,
        "credential": credential.credential,
        "credential_issued_at": credential.issued_at,
        "credential_expires_at": credential.expires_at,
        "certificate_bound": bound,
    })
}

/// `ok` when the database answers (a load balancer takes a replica that lost its database
/// out of rotation), else 503.
async fn healthz(State(state): State<AppState>) -> ApiResult {
    state.service.healthy().await?;
    Ok("ok".into_response())
}

async fn register_with_provisioning(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
    body: Body,
) -> ApiResult {
    let token = bearer(&headers)
        .ok_or_else(|| DirectorError::Unauthorized("missing bearer token".into()))?;
    let certificate = peer.and_then(|Extension(p)| p.fingerprint);
    // The token is checked before a byte of the body is read; it is used (counted) only
    // in the registration's transaction.
    state
        .service
        .check_provisioning_token(token.clone())
        .await?;
    let vehicle: NewVehicle = read_json(&state, body).await?;
    let vin = vehicle.vin.clone();
    let credential = state
        .service
        .register_with_provisioning(token, vehicle, certificate)
        .await?;
    created(registered(&vin, &credential, certificate.is_some()))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Checked only once the caller is authenticated.
    #[serde(default)]
    vin: Option<String>,
    #[serde(default)]
    security: bool,
    /// Events after this one, oldest first (following the log); without it, newest first.
    #[serde(default)]
    after: Option<i64>,
    /// Newest first, those before this event (the next page back).
    #[serde(default)]
    before: Option<i64>,
    /// Newest first, those at or after this time (RFC 3339).
    #[serde(default)]
    since: Option<String>,
    #[serde(default = "default_limit")]
    limit: u32,
    /// Events: only kinds starting with this.
    #[serde(default)]
    kind: Option<String>,
    /// Vehicles: only VINs containing this (any case).
    #[serde(default)]
    search: Option<String>,
}

fn default_limit() -> u32 {
    Page::DEFAULT_LIMIT
}

impl ListQuery {
    /// The page asked for: refused (400) outside 1..=1000 rows or with a `since` that is not
    /// an RFC 3339 time, before any row is read.
    fn page(&self) -> Result<Page, DirectorError> {
        let since = self
            .since
            .as_deref()
            .map(|t| {
                t.parse::<UtcTime>().map_err(|_| {
                    DirectorError::BadRequest(format!(
                        "since must be an RFC 3339 time such as 2026-12-01T00:00:00Z, not {t:?}"
                    ))
                })
            })
            .transpose()?;
        Page::new(self.limit, self.before, since)
    }
}

async fn list_vehicles(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    if q.search
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > 64)
    {
        return Err(DirectorError::BadRequest(
            "search is 1 to 64 characters of a VIN".into(),
        ));
    }
    ok_json(state.service.vehicles(q.page()?, q.search.clone()).await?)
}

async fn show_vehicle(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(vin): Path<String>,
) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(state.service.vehicle(parse_id(&vin)?).await?)
}

async fn replace_ecu(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((vin, serial)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let (vin, old): (Vin, EcuSerial) = (parse_id(&vin)?, parse_id(&serial)?);
    let replacement: EcuReplacement = read_json(&state, body).await?;
    state
        .service
        .replace_ecu(&actor, vin, old, replacement)
        .await?;
    ok_json(json!({"replaced": true}))
}

async fn assign(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let request: AssignRequest = match read_json(&state, body).await {
        Ok(request) => request,
        Err(e) => return Err(state.service.refused("assignment_refused", &actor, e).await),
    };
    let assigned = state.service.assign(&actor, request).await?;
    created(json!(assigned))
}

async fn list_assignments(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    let vin = q.vin.as_deref().map(parse_id).transpose()?;
    ok_json(state.service.assignments(vin, q.page()?).await?)
}

async fn cancel_assignment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(correlation_id): Path<String>,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    ok_json(
        state
            .service
            .cancel_assignment(&actor, correlation_id)
            .await?,
    )
}

/// The fleet at a glance (the dashboard's first page, `director overview`).
async fn overview(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(state.service.overview().await?)
}

/// The root's version and expiry, with `root_expiry_warning` for operators to alert on.
async fn status(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(state.service.root_status().await?)
}

async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    let vin = q.vin.as_deref().map(parse_id).transpose()?;
    let page = q.page()?;
    if q.after.is_some() && q.kind.is_some() {
        return Err(DirectorError::BadRequest(
            "kind filters the newest-first listing; following the log (after) takes every kind"
                .into(),
        ));
    }
    let events = match q.after {
        Some(after) => {
            state
                .service
                .events(vin, q.security, after, page.limit())
                .await?
        }
        None => {
            let filter = EventFilter {
                vin: vin.map(|v: Vin| v.as_str().to_string()),
                security_only: q.security,
                kind: q.kind.clone(),
            };
            state.service.recent_events(filter, page).await?
        }
    };
    ok_json(events)
}

/// Where a follower of the event log starts (`after` for `GET /api/v1/events`).
async fn events_position(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(json!({"after": state.service.follow_position().await?}))
}

/// The longest a provisioning token may live: a year.
const MAX_PROVISIONING_SECS: i64 = 366 * 86_400;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProvisioningToken {
    label: String,
    /// Shorthand for `max_uses: 1`.
    #[serde(default)]
    one_time: bool,
    /// Registrations it allows [default: 100].
    #[serde(default)]
    max_uses: Option<u64>,
    /// How long it works, in seconds [default: 7 days].
    #[serde(default)]
    expires_in_secs: Option<i64>,
}

impl NewProvisioningToken {
    fn limits(&self) -> Result<ProvisioningLimits, DirectorError> {
        let default = ProvisioningLimits::DEFAULT;
        let max_uses = match (self.one_time, self.max_uses) {
            (true, Some(n)) if n != 1 => {
                return Err(DirectorError::BadRequest(
                    "one_time and max_uses disagree".into(),
                ));
            }
            (true, _) => 1,
            (false, n) => n.unwrap_or(default.max_uses),
        };
        let lifetime = match self.expires_in_secs {
            None => default.lifetime,
            Some(secs @ 1..=MAX_PROVISIONING_SECS) => chrono::Duration::seconds(secs),
            Some(secs) => {
                return Err(DirectorError::BadRequest(format!(
                    "expires_in_secs must be between 1 and {MAX_PROVISIONING_SECS}, not {secs}"
                )));
            }
        };
        Ok(ProvisioningLimits { max_uses, lifetime })
    }
}

async fn create_provisioning_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let request: NewProvisioningToken = read_json(&state, body).await?;
    let limits = request.limits()?;
    let token = state
        .service
        .create_provisioning_token(&actor, request.label, limits)
        .await?;
    created(json!({"token": token, "max_uses": limits.max_uses,
        "expires_in_secs": limits.lifetime.num_seconds()}))
}

async fn list_provisioning_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(state.service.provisioning_tokens(q.page()?).await?)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCredential {
    /// A client certificate to bind to the vehicle.
    #[serde(default)]
    tls_fingerprint: Option<Fingerprint>,
}

async fn issue_credential(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(vin): Path<String>,
    body: Body,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let vin: Vin = parse_id(&vin)?;
    let request: NewCredential = read_json(&state, body).await?;
    let issued = state
        .service
        .issue_credential(&actor, vin.clone(), request.tls_fingerprint)
        .await?;
    created(registered(&vin, &issued, request.tls_fingerprint.is_some()))
}

async fn revoke_credential(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(vin): Path<String>,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    state
        .service
        .revoke_credential(&actor, parse_id(&vin)?)
        .await?;
    ok_json(json!({"revoked": true}))
}

/// The operator's authenticated recovery after a vehicle's trusted time went past the real
/// one (docs/SECURITY.md, "Time").
async fn reset_time(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(vin): Path<String>,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let reset = state.service.reset_time(&actor, parse_id(&vin)?).await?;
    ok_json(json!({"time_reset": reset}))
}

async fn list_credentials(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    let vin = q.vin.as_deref().map(parse_id).transpose()?;
    ok_json(state.service.credentials(vin, q.page()?).await?)
}

/// A vehicle renews its credential; the new one takes over at its first use.
async fn renew_credential(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
    Path(vin): Path<String>,
) -> ApiResult {
    let auth = vehicle_auth(&headers, peer);
    let vehicle = state
        .service
        .authorize(parse_id(&vin)?, auth.clone())
        .await?;
    let issued = state.service.renew_credential(&vehicle, auth).await?;
    ok_json(json!({
        "credential": issued.credential,
        "credential_issued_at": issued.issued_at,
        "credential_expires_at": issued.expires_at,
    }))
}

async fn revoke_provisioning_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let n = state
        .service
        .revoke_provisioning_tokens(&actor, label)
        .await?;
    ok_json(json!({"revoked": n}))
}

async fn vehicle_metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
    Path((vin, file)): Path<(String, String)>,
) -> ApiResult {
    let bytes = state
        .service
        .vehicle_file(parse_id(&vin)?, vehicle_auth(&headers, peer), file)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

async fn post_manifest(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
    Path(vin): Path<String>,
    body: Body,
) -> ApiResult {
    // The credential is checked before the body is read.
    let vehicle = state
        .service
        .authorize(parse_id(&vin)?, vehicle_auth(&headers, peer))
        .await?;
    let bytes = read_body(&state, body).await?;
    ok_json(state.service.manifest(vehicle, bytes).await?)
}

/// Serves on an already bound listener over `transport` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    transport: service_runtime::http::Transport,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_within(
        listener,
        transport,
        ServerLimits::default(),
        state,
        shutdown,
    )
    .await
}

/// [`serve`] within connection `limits`.
pub async fn serve_within(
    listener: tokio::net::TcpListener,
    transport: service_runtime::http::Transport,
    limits: ServerLimits,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    service_runtime::http::serve_with(listener, transport, limits, router(state), shutdown).await
}
