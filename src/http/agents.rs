//! `GET /api/v1/agents` and `GET /api/v1/agents/{username}`: the agents and
//! where their phones are registered (live registrar bindings).

use std::time::SystemTime;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::{ApiError, ApiPath, AppState, Page};
use crate::sip::registrar::Binding;

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
        registered: !bindings.is_empty(),
        bindings: bindings.iter().map(|b| view(b, now)).collect(),
    }
}

/// `GET /api/v1/agents`: every configured agent with its registration state.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    responses((status = 200, description = "The agents (one page)", body = Page<AgentView>))
)]
pub async fn list(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut data = Vec::new();
    for a in state.agents.iter() {
        data.push(agent_view(&state, &a.username, a.display_name.clone()).await);
    }
    Json(serde_json::json!({ "data": data, "next": null }))
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
    let agent = state
        .agents
        .iter()
        .find(|a| a.username == username)
        .ok_or_else(|| ApiError::NotFound(format!("agent {username} not found")))?;
    Ok(Json(
        agent_view(&state, &agent.username, agent.display_name.clone()).await,
    ))
}
