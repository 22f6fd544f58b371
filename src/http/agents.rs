//! `GET /api/v1/agents` and `GET /api/v1/agents/{username}`: the agents and
//! where their phones are registered (live registrar bindings).

use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::openapi::ErrorBody;
use super::{now, ApiError, ApiJson, ApiPath, AppState, Page};
use crate::leads::model::{time_to_ms, ValidationReason};
use crate::leads::ValidationError;
use crate::sip::digest::StoredHa1;
use crate::sip::registrar::Binding;
use crate::store::agents::AgentRow;

/// One registered contact of an agent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BindingView {
    /// The Contact URI as registered.
    pub contact: String,
    /// `udp` or `tcp`.
    pub transport: String,
    /// Where the REGISTER came from.
    pub source: String,
    /// Seconds until the binding lapses.
    pub expires_in: u64,
}

/// An agent as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentView {
    /// SIP username.
    pub username: String,
    /// Display name, if configured.
    pub display_name: Option<String>,
    /// `config` (the config file's `[[agent]]`) or `api` (created through
    /// `POST /api/v1/agents`).
    pub source: &'static str,
    /// Whether at least one phone is registered.
    pub registered: bool,
    /// The live bindings.
    pub bindings: Vec<BindingView>,
}

fn view(b: &Binding, now: SystemTime) -> BindingView {
    BindingView {
        contact: b.contact.clone(),
        transport: b.transport.to_string(),
        source: b.source.to_string(),
        expires_in: b
            .expires_at
            .duration_since(now)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

async fn agent_view(state: &AppState, username: &str, display: Option<String>) -> AgentView {
    #[allow(clippy::disallowed_methods)] // a driver: wall-clock for "expires in".
    let now = SystemTime::now();
    let bindings = match &state.sip {
        Some(sip) => sip.bindings(username).await,
        None => Vec::new(),
    };
    AgentView {
        username: username.to_string(),
        display_name: display,
        source: "api",
        registered: !bindings.is_empty(),
        bindings: bindings.iter().map(|b| view(b, now)).collect(),
    }
}

/// Where an agent is defined.
fn origin(state: &AppState, username: &str) -> Option<Origin> {
    state
        .agents
        .iter()
        .find(|a| a.username == username)
        .map(|a| Origin::Config(a.display_name.clone()))
}

enum Origin {
    Config(Option<String>),
}

/// `GET /api/v1/agents`: every agent (the config file's, then those created
/// through the API) with its registration state.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    responses((status = 200, description = "The agents (one page)", body = Page<AgentView>))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut data = Vec::new();
    for a in state.agents.iter() {
        let mut v = agent_view(&state, &a.username, a.display_name.clone()).await;
        v.source = "config";
        data.push(v);
    }
    for a in state.store.list_agents().await? {
        if origin(&state, &a.username).is_none() {
            data.push(agent_view(&state, &a.username, a.display_name.clone()).await);
        }
    }
    Ok(Json(serde_json::json!({ "data": data, "next": null })))
}

/// `GET /api/v1/agents/{username}`.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{username}",
    operation_id = "get_agent",
    tag = "agents",
    params(("username" = String, Path, description = "The agent's SIP username")),
    responses((status = 200, description = "The agent", body = AgentView))
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(username): ApiPath<String>,
) -> Result<Json<AgentView>, ApiError> {
    if let Some(Origin::Config(display)) = origin(&state, &username) {
        let mut v = agent_view(&state, &username, display).await;
        v.source = "config";
        return Ok(Json(v));
    }
    let a = state
        .store
        .get_agent(&username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("agent {username} not found")))?;
    Ok(Json(agent_view(&state, &a.username, a.display_name).await))
}

/// `POST /api/v1/agents` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// SIP username: 1–64 of `A-Z a-z 0-9 . _ -`.
    pub username: String,
    /// SIP password, 8–128 characters; stored only as digest HA1 values.
    pub password: String,
    /// Shown to people.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `PATCH /api/v1/agents/{username}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    /// A new SIP password.
    #[serde(default)]
    pub password: Option<String>,
    /// A new display name (`null` clears it).
    #[serde(default, with = "serde_with_null")]
    #[schema(value_type = Option<String>)]
    pub display_name: Option<Option<String>>,
}

/// `Option<Option<T>>`: absent → `None`, `null` → `Some(None)`.
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Ok(Some(Option::<String>::deserialize(d)?))
    }
}

fn invalid(field: &str, reason: ValidationReason) -> ApiError {
    ValidationError {
        field: field.to_string(),
        reason,
    }
    .into()
}

fn check_username(u: &str) -> Result<(), ApiError> {
    if u.is_empty() {
        return Err(invalid("username", ValidationReason::Empty));
    }
    if u.len() > 64 {
        return Err(invalid("username", ValidationReason::TooLong(64)));
    }
    if !u
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ApiError::BadParam {
            param: "username",
            reason: "use letters, digits, '.', '_' and '-' only (it is the SIP user part)",
        });
    }
    Ok(())
}

fn check_password(p: &str) -> Result<(), ApiError> {
    if p.chars().count() < 8 {
        return Err(ApiError::BadParam {
            param: "password",
            reason: "at least 8 characters: a SIP password is guessed over the network",
        });
    }
    if p.chars().count() > 128 {
        return Err(invalid("password", ValidationReason::TooLong(128)));
    }
    Ok(())
}

fn check_display(d: &Option<String>) -> Result<(), ApiError> {
    if d.as_ref().is_some_and(|d| d.chars().count() > 200) {
        return Err(invalid("display_name", ValidationReason::TooLong(200)));
    }
    Ok(())
}

fn in_config(username: &str) -> ApiError {
    ApiError::Conflict(format!(
        "agent {username} is defined in the config file: change it there"
    ))
}

/// `POST /api/v1/agents`: creates an agent whose phone can register at
/// once (SPEC §4); the password is kept only as HA1 values for this realm
/// (RFC 7616 §3.4.2). 201 with the agent.
#[utoipa::path(
    post,
    path = "/api/v1/agents",
    operation_id = "create_agent",
    tag = "agents",
    request_body = NewAgent,
    responses(
        (status = 201, description = "The agent", body = AgentView),
        (status = 409, description = "An agent of that name exists (here or in the config file)", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewAgent>,
) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    check_username(&body.username)?;
    check_password(&body.password)?;
    check_display(&body.display_name)?;
    if origin(&state, &body.username).is_some() {
        return Err(in_config(&body.username));
    }
    let ha1 = StoredHa1::from_password(&body.username, &state.realm, &body.password);
    let now = time_to_ms(now());
    let row = AgentRow {
        username: body.username.clone(),
        display_name: body.display_name.clone(),
        realm: state.realm.to_string(),
        ha1_md5: ha1.md5.clone(),
        ha1_sha256: ha1.sha256.clone(),
        created_ms: now,
        updated_ms: now,
    };
    state.store.insert_agent(&row).await?;
    if let Some(sip) = &state.sip {
        sip.set_agent(&body.username, ha1).await;
    }
    if let Some(calls) = &state.calls {
        calls.add_agent(&body.username);
    }
    tracing::info!(agent = %body.username, "agent created");
    Ok((
        StatusCode::CREATED,
        Json(agent_view(&state, &body.username, body.display_name).await),
    ))
}

/// `PATCH /api/v1/agents/{username}`: a new password (its phones must
/// register with it from their next REGISTER) and/or display name.
#[utoipa::path(
    patch,
    path = "/api/v1/agents/{username}",
    operation_id = "patch_agent",
    tag = "agents",
    params(("username" = String, Path, description = "The agent's SIP username")),
    request_body = AgentPatch,
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 409, description = "The agent is defined in the config file", body = ErrorBody),
    )
)]
pub async fn patch(
    State(state): State<AppState>,
    ApiPath(username): ApiPath<String>,
    ApiJson(body): ApiJson<AgentPatch>,
) -> Result<Json<AgentView>, ApiError> {
    if origin(&state, &username).is_some() {
        return Err(in_config(&username));
    }
    let mut row = state
        .store
        .get_agent(&username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("agent {username} not found")))?;
    if let Some(d) = body.display_name {
        check_display(&d)?;
        row.display_name = d;
    }
    let mut new_ha1 = None;
    if let Some(p) = &body.password {
        check_password(p)?;
        let ha1 = StoredHa1::from_password(&username, &state.realm, p);
        row.realm = state.realm.to_string();
        row.ha1_md5 = ha1.md5.clone();
        row.ha1_sha256 = ha1.sha256.clone();
        new_ha1 = Some(ha1);
    }
    row.updated_ms = time_to_ms(now());
    state.store.update_agent(&row).await?;
    if let (Some(sip), Some(ha1)) = (&state.sip, new_ha1) {
        sip.set_agent(&username, ha1).await;
    }
    Ok(Json(agent_view(&state, &username, row.display_name).await))
}

/// `DELETE /api/v1/agents/{username}`: hangs up its legs, refuses its
/// phones from their next request, forgets it. 204.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{username}",
    operation_id = "delete_agent",
    tag = "agents",
    params(("username" = String, Path, description = "The agent's SIP username")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "The agent is defined in the config file", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if origin(&state, &username).is_some() {
        return Err(in_config(&username));
    }
    if !state.store.delete_agent(&username).await? {
        return Err(ApiError::NotFound(format!("agent {username} not found")));
    }
    state.store.revoke_agent_tokens(&username).await?;
    if let Some(sip) = &state.sip {
        sip.remove_agent(&username).await;
    }
    if let Some(calls) = &state.calls {
        calls.remove_agent(&username).await;
    }
    tracing::info!(agent = %username, "agent deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a bearer token limited to `agent`'s own actions
/// ([`super::auth::agent_access`]); only its SHA-256 is stored. Returns the
/// token (shown once).
pub async fn new_agent_token(state: &AppState, agent: &str, via: &str) -> Result<String, ApiError> {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    state
        .store
        .insert_agent_token(
            &super::auth::token_hash(&token),
            agent,
            via,
            time_to_ms(now()),
        )
        .await?;
    tracing::info!(%agent, via, "agent token issued");
    Ok(token)
}

async fn known(state: &AppState, username: &str) -> Result<bool, ApiError> {
    Ok(origin(state, username).is_some() || state.store.get_agent(username).await?.is_some())
}

/// `POST /api/v1/agents/{username}/tokens` (admin): a token for that
/// agent's console, limited to its own actions; 201 `{agent, token}`,
/// shown once.
/// `{agent, token}` of `POST /api/v1/agents/{username}/tokens`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // The schema of a body built by hand.
struct IssuedToken {
    /// The agent.
    agent: String,
    /// The bearer token, shown once.
    token: String,
}

/// `{revoked}` of `DELETE /api/v1/agents/{username}/tokens`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // The schema of a body built by hand.
struct RevokedTokens {
    /// How many tokens were revoked.
    revoked: u64,
}

#[utoipa::path(
    post,
    path = "/api/v1/agents/{username}/tokens",
    operation_id = "issue_agent_token",
    tag = "agents",
    params(("username" = String, Path, description = "The agent's SIP username")),
    responses((status = 201, description = "The token, shown once", body = IssuedToken))
)]
pub async fn issue_token(
    State(state): State<AppState>,
    ApiPath(username): ApiPath<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if !known(&state, &username).await? {
        return Err(ApiError::NotFound(format!("agent {username} not found")));
    }
    let token = new_agent_token(&state, &username, "api").await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"agent": username, "token": token})),
    ))
}

/// `DELETE /api/v1/agents/{username}/tokens` (admin): revokes every token
/// of the agent; `{revoked}`.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{username}/tokens",
    operation_id = "revoke_agent_tokens",
    tag = "agents",
    params(("username" = String, Path, description = "The agent's SIP username")),
    responses((status = 200, description = "How many were revoked", body = RevokedTokens))
)]
pub async fn revoke_tokens(
    State(state): State<AppState>,
    ApiPath(username): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !known(&state, &username).await? {
        return Err(ApiError::NotFound(format!("agent {username} not found")));
    }
    let revoked = state.store.revoke_agent_tokens(&username).await?;
    Ok(Json(serde_json::json!({"revoked": revoked})))
}
