//! Groups, vehicle attributes and campaigns under `/api/v1` (operator API tokens, like every
//! operator route). Handlers parse, call [`DirectorService`](crate::service::DirectorService)
//! and map its errors.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use serde::Deserialize;
use uptane_core::ids::Vin;

use super::{ApiResult, AppState, bearer, created, ok_json, parse_id, parse_json, read_json};
use crate::error::DirectorError;
use crate::service::campaigns::{CampaignAction, NewCampaign};
use crate::service::groups::NewGroup;
use crate::service::plan::Name;

/// The routes of this file.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route("/api/v1/groups/{name}", get(show_group))
        .route("/api/v1/groups/{name}/members", put(change_members))
        .route("/api/v1/vehicles/{vin}/attributes", put(set_attributes))
        .route(
            "/api/v1/campaigns",
            get(list_campaigns).post(create_campaign),
        )
        .route("/api/v1/campaigns/{name}", get(show_campaign))
        .route("/api/v1/campaigns/{name}/vehicles", get(campaign_vehicles))
        .route("/api/v1/campaigns/{name}/{action}", post(campaign_action))
}

fn name(text: &str) -> Result<Name, DirectorError> {
    text.parse().map_err(DirectorError::BadRequest)
}

async fn create_group(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let group: NewGroup = read_json(&state, body).await?;
    created(serde_json::json!(
        state.service.create_group(&actor, group).await?
    ))
}

async fn list_groups(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(state.service.groups().await?)
}

async fn show_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(state.service.group(name(&group)?).await?)
}

/// VINs to add to and remove from a static group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberChange {
    #[serde(default)]
    add: Vec<Vin>,
    #[serde(default)]
    remove: Vec<Vin>,
}

async fn change_members(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: Body,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let group = name(&group)?;
    let change: MemberChange = read_json(&state, body).await?;
    ok_json(
        state
            .service
            .change_members(&actor, group, change.add, change.remove)
            .await?,
    )
}

/// Attributes to set (a value) and remove (`null`).
async fn set_attributes(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(vin): Path<String>,
    body: Body,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let vin: Vin = parse_id(&vin)?;
    let changes: BTreeMap<String, Option<String>> = read_json(&state, body).await?;
    ok_json(state.service.set_attributes(&actor, vin, changes).await?)
}

async fn create_campaign(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let plan: NewCampaign = read_json(&state, body).await?;
    created(serde_json::json!(
        state.service.create_campaign(&actor, plan).await?
    ))
}

async fn list_campaigns(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(state.service.campaigns().await?)
}

async fn show_campaign(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(campaign): Path<String>,
) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(state.service.campaign(name(&campaign)?).await?)
}

async fn campaign_vehicles(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(campaign): Path<String>,
) -> ApiResult {
    state.service.operator(bearer(&headers)).await?;
    ok_json(state.service.campaign_vehicles(name(&campaign)?).await?)
}

/// Why an operator pauses or aborts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn campaign_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((campaign, action)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    let actor = state.service.operator(bearer(&headers)).await?;
    let campaign = name(&campaign)?;
    let action: CampaignAction = action.parse().map_err(DirectorError::NotFound)?;
    let bytes = super::read_limited(body, 4096).await?;
    let body: ActionBody = if bytes.is_empty() {
        ActionBody::default()
    } else {
        parse_json(&bytes)?
    };
    if let Some(reason) = &body.reason
        && (reason.is_empty() || reason.len() > 500 || reason.chars().any(char::is_control))
    {
        return Err(DirectorError::BadRequest(
            "a reason is 1 to 500 characters, none of them control characters".into(),
        ));
    }
    ok_json(
        state
            .service
            .campaign_action(&actor, campaign, action, body.reason)
            .await?,
    )
}
