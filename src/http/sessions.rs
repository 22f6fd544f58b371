//! Dialer sessions over HTTP (SPEC §4, R14, R16):
//!
//! - `POST /api/v1/sessions {smart_view_id, reduced_ring_time?, wrap_up_idle?}`
//!   → 201 with the session and its `share_token` (R16: shown once, stored
//!   hashed).
//! - `GET /api/v1/sessions/{id}`: settings, `state` (`active`/`done`, R15),
//!   agents with their states, counts.
//! - `PATCH /api/v1/sessions/{id} {reduced_ring_time?, wrap_up_idle?, shared?}`:
//!   settings; `shared: false` revokes the share link.
//! - `POST /api/v1/sessions/{id}/share` → a new share token (the old one
//!   stops working); `DELETE /api/v1/sessions/{id}/share` revokes (R16).
//! - `POST /api/v1/sessions/{id}/reset` (R14).
//! - `POST /api/v1/sessions/{id}/agents {agent}`: join (admin token).
//! - `POST /api/v1/sessions/join {token, agent}`: join with the share token,
//!   **without** the admin token; the token is the credential, and `agent`
//!   must be a configured agent (404 otherwise). Answers the session id.
//! - `POST /api/v1/sessions/{id}/agents/{agent}/pause|resume|next|hangup|typing|leave`;
//!   `next` and `hangup` take `?call_id=` (the call the agent saw) and
//!   then apply only while the agent is still on that call (409 after).
//! - `GET /api/v1/sessions/{id}/queue?explain=1&limit=N`: upcoming leads with
//!   their states; `explain` adds the rule text (e.g. "R4: blocked until 14:05 UTC").

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{parse_id, ApiError, ApiJson, AppState};
use crate::dialer::directory::Sessions;
use crate::dialer::session::{AgentCommand, SessionError};

/// The admin routes (behind the bearer token).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sessions", post(create))
        .route("/api/v1/sessions/{id}", get(show).patch(patch))
        .route(
            "/api/v1/sessions/{id}/share",
            post(rotate_share).delete(revoke_share),
        )
        .route("/api/v1/sessions/{id}/reset", post(reset))
        .route("/api/v1/sessions/{id}/agents", post(join))
        .route("/api/v1/sessions/{id}/agents/{agent}/{action}", post(agent))
        .route("/api/v1/sessions/{id}/queue", get(queue))
}

/// The share-link route (R16), open: the token is the credential.
pub fn public_routes() -> Router<AppState> {
    Router::new().route("/api/v1/sessions/join", post(join_shared))
}

/// A session failure as `{error: {code, message}}` with its status.
#[derive(Debug)]
pub enum SessionApiError {
    /// An error the shared type maps.
    Api(Box<ApiError>),
    /// 409 (a command that does not apply now) or 422 (a view that does not
    /// evaluate), with its code and message.
    Status(StatusCode, &'static str, String),
}

impl From<ApiError> for SessionApiError {
    fn from(e: ApiError) -> Self {
        SessionApiError::Api(Box::new(e))
    }
}

impl From<SessionError> for SessionApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NoSession(_) | SessionError::NoAgent(_) => {
                ApiError::NotFound(e.to_string()).into()
            }
            SessionError::NotNow(n) => {
                SessionApiError::Status(StatusCode::CONFLICT, "conflict", n.to_string())
            }
            SessionError::View(m) => {
                SessionApiError::Status(StatusCode::UNPROCESSABLE_ENTITY, "bad_view", m)
            }
            SessionError::Store(s) => ApiError::Store(s).into(),
        }
    }
}

impl IntoResponse for SessionApiError {
    fn into_response(self) -> Response {
        match self {
            SessionApiError::Status(status, code, message) => (
                status,
                Json(json!({"error": {"code": code, "message": message}})),
            )
                .into_response(),
            SessionApiError::Api(e) => e.into_response(),
        }
    }
}

type Result<T> = std::result::Result<T, SessionApiError>;

fn sessions(st: &AppState) -> Result<&Sessions> {
    st.sessions
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("dialer sessions are not running".into()).into())
}

fn wrap_up_ms(secs: Option<f64>) -> Result<Option<i64>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Ok(Some((s * 1000.0) as i64)),
        Some(_) => Err(ApiError::BadParam {
            param: "wrap_up_idle",
            reason: "seconds between 0 and 3600",
        }
        .into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    smart_view_id: i64,
    #[serde(default)]
    reduced_ring_time: bool,
    wrap_up_idle: Option<f64>,
}

async fn create(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<NewSession>,
) -> Result<Response> {
    let s = sessions(&st)?;
    // A missing view is a 404, not a constraint error.
    st.store
        .get_smart_view(body.smart_view_id)
        .await
        .map_err(ApiError::from)?;
    let wrap = wrap_up_ms(body.wrap_up_idle)?;
    let (row, token) = s
        .create(body.smart_view_id, body.reduced_ring_time, wrap)
        .await?;
    let view = s.get(row.id)?.view().await?;
    let mut v = serde_json::to_value(&view).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["share_token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn show(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let view = sessions(&st)?.get_or_load(id).await?.view().await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchSession {
    reduced_ring_time: Option<bool>,
    // `null` resets to the config's default; absent leaves it.
    #[serde(default, with = "double_option")]
    wrap_up_idle: Option<Option<f64>>,
    shared: Option<bool>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
        Option::<f64>::deserialize(d).map(Some)
    }
}

async fn patch(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchSession>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let s = sessions(&st)?;
    let wrap = match body.wrap_up_idle {
        None => None,
        Some(v) => Some(wrap_up_ms(v)?),
    };
    s.update_settings(id, body.reduced_ring_time, wrap).await?;
    let mut token = None;
    match body.shared {
        Some(false) => s.revoke_share(id).await?,
        Some(true) => token = Some(s.rotate_share(id).await?),
        None => {}
    }
    let view = s.get_or_load(id).await?.view().await?;
    let mut v = serde_json::to_value(&view).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(t) = token {
        v["share_token"] = json!(t);
    }
    Ok(Json(v).into_response())
}

async fn rotate_share(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let token = sessions(&st)?.rotate_share(id).await?;
    Ok(Json(json!({"share_token": token})).into_response())
}

async fn revoke_share(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    sessions(&st)?.revoke_share(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let h = sessions(&st)?.get_or_load(id).await?;
    h.reset().await?;
    Ok(Json(h.view().await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    agent: String,
}

fn check_agent(st: &AppState, agent: &str) -> Result<()> {
    let known = st.agents.iter().any(|a| a.username == agent)
        || st.calls.as_ref().is_some_and(|c| c.knows_agent(agent));
    if known {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("agent {agent} not found")).into())
    }
}

async fn join(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<JoinBody>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    check_agent(&st, &body.agent)?;
    let h = sessions(&st)?.get_or_load(id).await?;
    h.join(&body.agent).await?;
    Ok(Json(h.view().await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedJoin {
    token: String,
    agent: String,
}

async fn join_shared(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<SharedJoin>,
) -> Result<Response> {
    let s = sessions(&st)?;
    // One answer for a wrong and a revoked token: neither says more.
    let Some(id) = s.session_for_token(&body.token).await? else {
        return Err(ApiError::Unauthorized.into());
    };
    check_agent(&st, &body.agent)?;
    let h = s.get_or_load(id).await?;
    h.join(&body.agent).await?;
    // SPEC §4: the share link is exchanged for a token of this agent, for
    // the console's later requests.
    let agent_token = super::agents::new_agent_token(&st, &body.agent, "share_link").await?;
    Ok(
        Json(json!({"session_id": id, "agent": body.agent, "agent_token": agent_token}))
            .into_response(),
    )
}

/// `?call_id=` on `next` and `hangup`: the call the agent's screen showed;
/// the command applies only while the agent is still on it (409 once the
/// dialer moved on), so a late click never skips the lead dialed meanwhile.
#[derive(Debug, Deserialize)]
struct AgentParams {
    call_id: Option<String>,
}

async fn agent(
    State(st): State<AppState>,
    Path((id, agent, action)): Path<(String, String, String)>,
    Query(params): Query<AgentParams>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let call = match params.call_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(raw.parse::<i64>().map_err(|_| ApiError::BadParam {
            param: "call_id",
            reason: "must be an integer id",
        })?),
    };
    let cmd = match (action.as_str(), call) {
        ("pause", _) => AgentCommand::Pause,
        ("resume", _) => AgentCommand::Resume,
        ("next", None) => AgentCommand::Next,
        ("next", Some(c)) => AgentCommand::NextAfter(c),
        ("hangup", None) => AgentCommand::Hangup,
        ("hangup", Some(c)) => AgentCommand::HangupCall(c),
        ("typing", _) => AgentCommand::Typing,
        ("leave", _) => AgentCommand::Leave,
        _ => return Err(ApiError::NotFound(format!("no agent action {action:?}")).into()),
    };
    let h = sessions(&st)?.get_or_load(id).await?;
    h.agent(&agent, cmd).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct QueueParams {
    explain: Option<String>,
    limit: Option<usize>,
}

async fn queue(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<QueueParams>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let explain = matches!(q.explain.as_deref(), Some("1" | "true"));
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadParam {
            param: "limit",
            reason: "between 1 and 1000",
        }
        .into());
    }
    let mut data = sessions(&st)?
        .get_or_load(id)
        .await?
        .queue(explain, limit)
        .await?;
    // Whom each entry will call: name and the number R2 dials.
    let ids: Vec<i64> = data.iter().map(|e| e.lead_id).collect();
    let leads: std::collections::HashMap<i64, crate::leads::model::Lead> = st
        .store
        .get_leads(&ids)
        .await
        .map_err(ApiError::Store)?
        .into_iter()
        .map(|l| (l.id, l))
        .collect();
    for e in &mut data {
        if let Some(l) = leads.get(&e.lead_id) {
            e.name = Some(l.name.clone());
            e.number = l.first_phone().map(|p| p.as_str().to_string());
        }
    }
    Ok(Json(json!({"data": data, "next": null})).into_response())
}
