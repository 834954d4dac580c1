//! The HTTP API: the operator REST API under `/api/v1` (bearer API tokens), the vehicle API
//! under `/vehicles/<vin>` (per-vehicle credentials), and Primary self-registration with a
//! provisioning token. Handlers parse, authorize and call one `service` function.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::catalog::ImageCatalog;
use crate::db::Db;
use crate::error::DirectorError;
use crate::keys::OnlineKeys;
use crate::service::{self, AssignRequest, EcuReplacement, NewVehicle, Policy};

/// Shared server state: cheap clones.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The inventory.
    pub db: Db,
    /// Online signing keys.
    pub keys: Arc<OnlineKeys>,
    /// The Image repository, verified.
    pub catalog: Arc<ImageCatalog>,
    /// Timing policy.
    pub policy: Policy,
    /// Largest JSON or manifest body accepted.
    pub max_body_bytes: usize,
}

fn now() -> uptane_core::time::UtcTime {
    std::time::SystemTime::now().into()
}

/// The router, testable without a socket.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
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
        .route(
            "/api/v1/provisioning-tokens",
            post(create_provisioning_token),
        )
        .route(
            "/api/v1/provisioning-tokens/{label}/revoke",
            post(revoke_provisioning_tokens),
        )
        .route("/vehicles/{vin}/metadata/{file}", get(vehicle_metadata))
        .route("/vehicles/{vin}/manifest", post(post_manifest))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Result<String, DirectorError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| DirectorError::Unauthorized("missing bearer token".into()))
}

async fn operator(state: &AppState, headers: &HeaderMap) -> Result<String, DirectorError> {
    let token = bearer(headers);
    let label = state
        .db
        .call(move |conn| {
            let checked = token.and_then(|token| service::check_api_token(conn, &token));
            if let Err(e) = &checked {
                service::record_event(
                    conn,
                    now(),
                    "unauthorized_api_call",
                    true,
                    None,
                    None,
                    "unknown",
                    &e.to_string(),
                )?;
            }
            checked
        })
        .await?;
    Ok(format!("operator:{label}"))
}

/// Records a refused operator request in the event log, then returns the error.
async fn refused(
    state: &AppState,
    kind: &'static str,
    actor: String,
    error: DirectorError,
) -> DirectorError {
    if error.status().is_client_error() {
        let detail = error.to_string();
        let logged = state
            .db
            .call(move |conn| {
                service::record_event(conn, now(), kind, false, None, None, &actor, &detail)
            })
            .await;
        if let Err(e) = logged {
            return e;
        }
    }
    error
}

async fn vehicle(state: &AppState, headers: &HeaderMap, vin: &str) -> Result<(), DirectorError> {
    let credential = bearer(headers)?;
    let vin = vin.to_string();
    state
        .db
        .call(move |conn| service::authorize_vehicle(conn, &vin, &credential, now()))
        .await
}

/// Reads a body of at most the configured size: 413 above it, 400 for malformed JSON.
async fn read_body(state: &AppState, body: Body) -> Result<Vec<u8>, DirectorError> {
    axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| DirectorError::PayloadTooLarge(state.max_body_bytes))
}

async fn read_json<T: DeserializeOwned>(state: &AppState, body: Body) -> Result<T, DirectorError> {
    let bytes = read_body(state, body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| DirectorError::BadRequest(format!("malformed JSON: {e}")))
}

type ApiResult = Result<Response, DirectorError>;

fn ok_json(value: impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

async fn register_vehicle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let actor = operator(&state, &headers).await?;
    let vehicle: NewVehicle = match read_json(&state, body).await {
        Ok(v) => v,
        Err(e) => return Err(refused(&state, "registration_refused", actor, e).await),
    };
    let vin = vehicle.vin.clone();
    let who = actor.clone();
    let registered = state
        .db
        .call(move |conn| service::register_vehicle(conn, &vehicle, &who, now()))
        .await;
    let credential = match registered {
        Ok(c) => c,
        Err(e) => return Err(refused(&state, "registration_refused", actor, e).await),
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"vin": vin, "credential": credential})),
    )
        .into_response())
}

async fn register_with_provisioning(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let token = bearer(&headers)?;
    let vehicle: NewVehicle = read_json(&state, body).await?;
    let vin = vehicle.vin.clone();
    let credential = state
        .db
        .call(move |conn| service::register_with_provisioning(conn, &token, &vehicle, now()))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"vin": vin, "credential": credential})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    vin: Option<String>,
    #[serde(default)]
    security: bool,
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    1000
}

async fn list_vehicles(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    operator(&state, &headers).await?;
    let vins = state
        .db
        .call(move |conn| service::vehicles(conn, q.limit))
        .await?;
    ok_json(vins)
}

async fn show_vehicle(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(vin): Path<String>,
) -> ApiResult {
    operator(&state, &headers).await?;
    let record = state
        .db
        .call(move |conn| service::vehicle(conn, &vin))
        .await?;
    ok_json(record)
}

async fn replace_ecu(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((vin, serial)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let actor = operator(&state, &headers).await?;
    let replacement: EcuReplacement = read_json(&state, body).await?;
    state
        .db
        .call(move |conn| service::replace_ecu(conn, &vin, &serial, &replacement, &actor, now()))
        .await?;
    ok_json(json!({"replaced": true}))
}

async fn assign(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult {
    let actor = operator(&state, &headers).await?;
    match create_assignment(&state, actor.clone(), body).await {
        Ok(response) => Ok(response),
        Err(e) => Err(refused(&state, "assignment_refused", actor, e).await),
    }
}

async fn create_assignment(state: &AppState, actor: String, body: Body) -> ApiResult {
    let state = state.clone();
    let request: AssignRequest = read_json(&state, body).await?;
    let info = state
        .catalog
        .lookup(&request.image, now())
        .await?
        .ok_or_else(|| {
            DirectorError::NotFound(format!(
                "the image repository has no image {:?}",
                request.image
            ))
        })?;
    let (correlation_id, entries) = state
        .db
        .call(move |conn| service::assign(conn, &request, &info, &actor, now()))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"correlation_id": correlation_id, "ecus": entries})),
    )
        .into_response())
}

async fn list_assignments(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    operator(&state, &headers).await?;
    let rows = state
        .db
        .call(move |conn| service::assignments(conn, q.vin.as_deref()))
        .await?;
    ok_json(rows)
}

async fn cancel_assignment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(correlation_id): Path<String>,
) -> ApiResult {
    let actor = operator(&state, &headers).await?;
    let n = state
        .db
        .call(move |conn| service::cancel_assignment(conn, &correlation_id, &actor, now()))
        .await?;
    ok_json(json!({"cancelled": n}))
}

async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    operator(&state, &headers).await?;
    let rows = state
        .db
        .call(move |conn| service::events(conn, q.vin.as_deref(), q.security, q.after, q.limit))
        .await?;
    ok_json(rows)
}

#[derive(Debug, Deserialize)]
struct NewProvisioningToken {
    label: String,
    #[serde(default)]
    one_time: bool,
}

async fn create_provisioning_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let actor = operator(&state, &headers).await?;
    let request: NewProvisioningToken = read_json(&state, body).await?;
    let token = state
        .db
        .call(move |conn| {
            service::create_provisioning_token(
                conn,
                &request.label,
                request.one_time,
                &actor,
                now(),
            )
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"token": token}))).into_response())
}

async fn revoke_provisioning_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(label): Path<String>,
) -> ApiResult {
    let actor = operator(&state, &headers).await?;
    let n = state
        .db
        .call(move |conn| service::revoke_provisioning_tokens(conn, &label, &actor, now()))
        .await?;
    ok_json(json!({"revoked": n}))
}

async fn vehicle_metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((vin, file)): Path<(String, String)>,
) -> ApiResult {
    let credential = bearer(&headers);
    let keys = Arc::clone(&state.keys);
    let policy = state.policy;
    // One trip to the database thread for both the credential check and the file.
    let bytes = state
        .db
        .call(move |conn| {
            service::authorize_vehicle(conn, &vin, &credential?, now())?;
            service::vehicle_file(conn, &keys, &vin, &file, &policy, now())
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

async fn post_manifest(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(vin): Path<String>,
    body: Body,
) -> ApiResult {
    vehicle(&state, &headers, &vin).await?;
    let bytes = read_body(&state, body).await?;
    let policy = state.policy;
    let outcome = state
        .db
        .call(move |conn| service::process_manifest(conn, &vin, &bytes, &policy, now()))
        .await?;
    ok_json(outcome)
}

/// Serves on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
