//! Dialer sessions over HTTP (SPEC §4, R14, R16):
//!
//! - `POST /api/v1/sessions {smart_view_id, reduced_ring_time?, wrap_up_idle?, calling_hours?, caller_id?}`
//!   → 201 with the session and its `share_token` (R16: shown once, stored
//!   hashed).
//! - `GET /api/v1/sessions/{id}`: settings, `state` (`active`/`done`, R15),
//!   agents with their states, counts.
//! - `PATCH /api/v1/sessions/{id} {reduced_ring_time?, wrap_up_idle?, shared?, calling_hours?, caller_id?}`:
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

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::openapi::ErrorBody;
use super::{parse_id, ApiError, ApiJson, ApiPath, ApiQuery, AppState, Page};
use crate::dialer::directory::Sessions;
use crate::dialer::session::{AgentCommand, QueueEntryView, SessionError, SessionView};

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
        .route(
            "/api/v1/sessions/{id}/agents/{agent}/dnc",
            post(do_not_call),
        )
        .route(
            "/api/v1/sessions/{id}/agents/{agent}/drop",
            post(drop_voicemail),
        )
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

/// `POST /api/v1/sessions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSession {
    /// The Smart View to call (R1).
    smart_view_id: i64,
    /// R8: ring for `reduced_ring_timeout` instead of `ring_timeout`.
    #[serde(default)]
    reduced_ring_time: bool,
    /// Seconds of idle wrap-up (0 to 3600); the config's default when absent.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 3600)]
    wrap_up_idle: Option<f64>,
    /// Calling hours in each lead's local time (SPEC §4), e.g.
    /// `{"start": "09:00", "end": "20:00"}`; the config's `[dialer]
    /// calling_hours` (08:00–21:00 by default) when absent.
    #[serde(default)]
    #[schema(value_type = Option<crate::dialer::hours::WindowSpec>)]
    calling_hours: Option<crate::dialer::hours::Window>,
    /// The session's caller ID (E.164, e.g. `"+14155550100"`): shown to
    /// leads instead of the trunk's when no `dialer.caller_id_pool` number
    /// is local to them; the trunk's when absent.
    #[serde(default)]
    caller_id: Option<String>,
    /// Answering-machine detection (SPEC §4): `off` (default), `detect`,
    /// `hangup` (machines end with outcome `voicemail`) or `drop` (they
    /// get `voicemail_drop_id` after the beep, outcome `voicemail_dropped`).
    #[serde(default)]
    amd: Option<crate::media::amd::AmdMode>,
    /// The message left on machines (`POST /api/v1/voicemail-drops`).
    #[serde(default)]
    voicemail_drop_id: Option<i64>,
    /// Record the session's calls (WAV under `<data_dir>/recordings/`).
    #[serde(default)]
    record: Option<bool>,
}

/// A session as created: its view and the share token (R16: shown once).
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // The schema of a body built by hand.
pub(super) struct CreatedSession {
    #[serde(flatten)]
    session: SessionView,
    /// The share link's token; only its hash is stored.
    share_token: String,
}

/// A session after a settings change; `share_token` when `shared: true`
/// issued a new one.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // The schema of a body built by hand.
pub(super) struct PatchedSession {
    #[serde(flatten)]
    session: SessionView,
    /// The new share link's token (R16).
    #[serde(skip_serializing_if = "Option::is_none")]
    share_token: Option<String>,
}

/// A new share token (R16).
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // The schema of a body built by hand.
pub(super) struct ShareToken {
    /// The token; the old one stops working.
    share_token: String,
}

/// The answer of joining with a share token.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // The schema of a body built by hand.
pub(super) struct SharedJoined {
    /// The session joined.
    session_id: i64,
    /// The agent who joined.
    agent: String,
    /// A bearer token limited to this agent's own actions (SPEC §4: the
    /// share link is exchanged for an agent token).
    agent_token: String,
}

/// The agent commands of `POST /api/v1/sessions/{id}/agents/{agent}/{action}`
/// (SPEC §4; R9, R14, SPEC §1 steps 5–6).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // The schema of a path segment matched by hand.
#[schema(rename_all = "lowercase")]
pub(super) enum AgentAction {
    Pause,
    Resume,
    Next,
    Hangup,
    Typing,
    Leave,
}

/// `POST /api/v1/sessions` (SPEC §4, R16).
#[utoipa::path(
    post,
    path = "/api/v1/sessions",
    operation_id = "create_session",
    tag = "sessions",
    request_body = NewSession,
    responses(
        (status = 201, description = "The session and its share token", body = CreatedSession),
        (status = 404, description = "No such Smart View", body = ErrorBody),
        (status = 422, description = "The view does not evaluate", body = ErrorBody),
    )
)]
pub(super) async fn create(
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
    let caller_id = session_caller_id(body.caller_id)?;
    let (row, token) = s
        .create_with_hours(
            body.smart_view_id,
            body.reduced_ring_time,
            wrap,
            body.calling_hours,
            caller_id,
        )
        .await?;
    if row.caller_id.is_some() {
        sync_caller_ids(&st, s).await;
    }
    if body.amd.is_some() || body.voicemail_drop_id.is_some() || body.record.is_some() {
        check_media_settings(&st, body.amd, body.voicemail_drop_id.map(Some)).await?;
        s.set_media_settings(row.id, body.amd, Some(body.voicemail_drop_id), body.record)
            .await?;
    }
    let view = s.get(row.id)?.view().await?;
    let mut v = serde_json::to_value(&view).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["share_token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /api/v1/sessions/{id}`: settings, state, agents, counts.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    operation_id = "get_session",
    tag = "sessions",
    params(("id" = i64, Path, description = "The session's id")),
    responses((status = 200, description = "The session", body = SessionView))
)]
pub(super) async fn show(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let view = sessions(&st)?.get_or_load(id).await?.view().await?;
    Ok(Json(view).into_response())
}

/// `PATCH /api/v1/sessions/{id}` body: absent keys are kept.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchSession {
    /// R8: reduced ring time.
    #[serde(default)]
    reduced_ring_time: Option<bool>,
    /// Seconds of idle wrap-up (0 to 3600); `null` resets to the config's
    /// default, absent leaves it.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 3600)]
    wrap_up_idle: Option<Option<f64>>,
    /// `false` revokes the share link, `true` issues a new one (R16).
    #[serde(default)]
    shared: Option<bool>,
    /// Calling hours in each lead's local time (SPEC §4); `null` goes back
    /// to the config's `[dialer] calling_hours`, absent leaves them. Leads
    /// held under the old hours are looked at again at once.
    #[serde(default, deserialize_with = "double_option::window")]
    #[schema(value_type = Option<crate::dialer::hours::WindowSpec>)]
    calling_hours: Option<Option<crate::dialer::hours::Window>>,
    /// The session's caller ID (E.164); `null` goes back to the trunk's,
    /// absent leaves it.
    #[serde(default, deserialize_with = "double_option::text")]
    #[schema(value_type = Option<String>)]
    caller_id: Option<Option<String>>,
    /// Answering-machine detection: `off`, `detect`, `hangup` or `drop`.
    #[serde(default)]
    amd: Option<crate::media::amd::AmdMode>,
    /// The voicemail drop's id; `null` clears it, absent leaves it.
    #[serde(default, deserialize_with = "double_option::id")]
    #[schema(value_type = Option<i64>)]
    voicemail_drop_id: Option<Option<i64>>,
    /// Record the session's calls.
    #[serde(default)]
    record: Option<bool>,
}

/// Tells the SIP front door the sessions' caller IDs: calls from a trunk
/// to them are callbacks (SPEC §1 "Leads calling back").
async fn sync_caller_ids(st: &AppState, s: &Sessions) {
    if let Some(sip) = &st.sip {
        sip.set_session_caller_ids(s.caller_ids().await).await;
    }
}

/// A voicemail drop named by a session must exist (400 otherwise).
async fn check_media_settings(
    st: &AppState,
    _amd: Option<crate::media::amd::AmdMode>,
    drop: Option<Option<i64>>,
) -> Result<()> {
    if let Some(Some(id)) = drop {
        if st
            .store
            .get_voicemail_drop(id)
            .await
            .map_err(ApiError::from)?
            .is_none()
        {
            return Err(ApiError::BadParam {
                param: "voicemail_drop_id",
                reason: "the id of a message uploaded with POST /api/v1/voicemail-drops",
            }
            .into());
        }
    }
    Ok(())
}

/// A session's caller ID: E.164 (`+` and the country code), else 400.
fn session_caller_id(c: Option<String>) -> Result<Option<String>> {
    match c {
        None => Ok(None),
        Some(c) => match crate::call::caller_id::CallerIdPool::new(std::slice::from_ref(&c)) {
            Ok(_) => Ok(Some(c.trim().to_string())),
            Err(_) => Err(ApiError::BadParam {
                param: "caller_id",
                reason: "an E.164 number: + and the country code, e.g. +14155550100",
            }
            .into()),
        },
    }
}

mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
        Option::<f64>::deserialize(d).map(Some)
    }

    /// `caller_id`: present (a number or `null`) or absent.
    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }

    /// `voicemail_drop_id`: present (an id or `null`) or absent.
    pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
        Option::<i64>::deserialize(d).map(Some)
    }

    /// `calling_hours`: present (a window or `null`) or absent.
    pub fn window<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<crate::dialer::hours::Window>>, D::Error> {
        Option::<crate::dialer::hours::Window>::deserialize(d).map(Some)
    }
}

/// `PATCH /api/v1/sessions/{id}`: settings.
#[utoipa::path(
    patch,
    path = "/api/v1/sessions/{id}",
    operation_id = "patch_session",
    tag = "sessions",
    params(("id" = i64, Path, description = "The session's id")),
    request_body = PatchSession,
    responses((status = 200, description = "The session", body = PatchedSession))
)]
pub(super) async fn patch(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchSession>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let s = sessions(&st)?;
    let wrap = match body.wrap_up_idle {
        None => None,
        Some(v) => Some(wrap_up_ms(v)?),
    };
    let caller_id = match body.caller_id {
        None => None,
        Some(c) => Some(session_caller_id(c)?),
    };
    let caller_id_changed = caller_id.is_some();
    s.update_settings_with_hours(
        id,
        body.reduced_ring_time,
        wrap,
        body.calling_hours,
        caller_id,
    )
    .await?;
    if caller_id_changed {
        sync_caller_ids(&st, s).await;
    }
    if body.amd.is_some() || body.voicemail_drop_id.is_some() || body.record.is_some() {
        check_media_settings(&st, body.amd, body.voicemail_drop_id).await?;
        s.set_media_settings(id, body.amd, body.voicemail_drop_id, body.record)
            .await?;
    }
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

/// `POST /api/v1/sessions/{id}/share`: a new share token (R16).
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/share",
    operation_id = "rotate_session_share",
    tag = "sessions",
    params(("id" = i64, Path, description = "The session's id")),
    responses((status = 200, description = "The new token", body = ShareToken))
)]
pub(super) async fn rotate_share(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let token = sessions(&st)?.rotate_share(id).await?;
    Ok(Json(json!({"share_token": token})).into_response())
}

/// `DELETE /api/v1/sessions/{id}/share`: revokes the share link (R16).
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{id}/share",
    operation_id = "revoke_session_share",
    tag = "sessions",
    params(("id" = i64, Path, description = "The session's id")),
    responses((status = 204, description = "Revoked"))
)]
pub(super) async fn revoke_share(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    sessions(&st)?.revoke_share(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/sessions/{id}/reset`: reset & call again (R14).
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/reset",
    operation_id = "reset_session",
    tag = "sessions",
    params(("id" = i64, Path, description = "The session's id")),
    responses((status = 200, description = "The session", body = SessionView))
)]
pub(super) async fn reset(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let h = sessions(&st)?.get_or_load(id).await?;
    h.reset().await?;
    Ok(Json(h.view().await?).into_response())
}

/// `POST /api/v1/sessions/{id}/agents` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinBody {
    /// A configured agent's username.
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

/// `POST /api/v1/sessions/{id}/agents`: an agent joins (SPEC §1 step 2).
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/agents",
    operation_id = "join_session",
    tag = "sessions",
    params(("id" = i64, Path, description = "The session's id")),
    request_body = JoinBody,
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 409, description = "The command does not apply now", body = ErrorBody),
    )
)]
pub(super) async fn join(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<JoinBody>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    check_agent(&st, &body.agent)?;
    let h = sessions(&st)?.get_or_load(id).await?;
    h.join(&body.agent).await?;
    Ok(Json(h.view().await?).into_response())
}

/// `POST /api/v1/sessions/join` body (R16).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SharedJoin {
    /// The share token.
    token: String,
    /// A configured agent's username.
    agent: String,
}

/// `POST /api/v1/sessions/join`: join with a share token instead of the
/// admin token (R16).
#[utoipa::path(
    post,
    path = "/api/v1/sessions/join",
    operation_id = "join_session_with_share_token",
    tag = "sessions",
    request_body = SharedJoin,
    responses(
        (status = 200, description = "Joined", body = SharedJoined),
        (status = 401, description = "A wrong or revoked share token", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "The command does not apply now", body = ErrorBody),
    )
)]
pub(super) async fn join_shared(
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
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AgentParams {
    /// `next` and `hangup` only: the call on the agent's screen.
    #[param(value_type = Option<i64>)]
    call_id: Option<String>,
}

/// `POST /api/v1/sessions/{id}/agents/{agent}/{action}`: an agent's
/// command (pause, resume, call next lead, hang up, typing keeps wrap-up,
/// leave).
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/agents/{agent}/{action}",
    operation_id = "session_agent_action",
    tag = "sessions",
    params(
        ("id" = i64, Path, description = "The session's id"),
        ("agent" = String, Path, description = "The agent's username"),
        ("action" = inline(AgentAction), Path, description = "The command"),
        AgentParams,
    ),
    responses(
        (status = 204, description = "Done"),
        (status = 409, description = "The command does not apply now, or the agent is no longer on `call_id`", body = ErrorBody),
    )
)]
pub(super) async fn agent(
    State(st): State<AppState>,
    ApiPath((id, agent, action)): ApiPath<(String, String, String)>,
    ApiQuery(params): ApiQuery<AgentParams>,
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

/// `POST /api/v1/sessions/{id}/agents/{agent}/dnc`: puts the number of the
/// agent's current lead (the call it is on, or in wrap-up the one just
/// ended) on the do-not-call list (SPEC §4), as `3` on the phone does. The
/// agent's own token may do it. The call goes on: hang up separately.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/agents/{agent}/dnc",
    operation_id = "session_agent_do_not_call",
    tag = "sessions",
    params(
        ("id" = i64, Path, description = "The session's id"),
        ("agent" = String, Path, description = "The agent's username"),
    ),
    responses(
        (status = 200, description = "The number added, with the lead and call", body = crate::dialer::session::DncAdded),
        (status = 404, description = "No such session, or the agent is not in it", body = ErrorBody),
        (status = 409, description = "The agent has no current lead", body = ErrorBody),
    )
)]
pub(super) async fn do_not_call(
    State(st): State<AppState>,
    ApiPath((id, agent)): ApiPath<(String, String)>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let h = sessions(&st)?.get_or_load(id).await?;
    let added = h.do_not_call(&agent).await?;
    Ok(Json(added).into_response())
}

/// `POST /api/v1/sessions/{id}/agents/{agent}/drop`: leaves the session's
/// voicemail message (`voicemail_drop_id`) on the agent's answered lead
/// after its beep, and frees the agent for the next lead at once (SPEC §4;
/// `9` on the phone does the same). The call's outcome is
/// `voicemail_dropped`.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/agents/{agent}/drop",
    operation_id = "session_agent_voicemail_drop",
    tag = "sessions",
    params(
        ("id" = i64, Path, description = "The session's id"),
        ("agent" = String, Path, description = "The agent's username"),
    ),
    responses(
        (status = 204, description = "The message will play after the beep; the agent moves on"),
        (status = 404, description = "No such session, or the agent is not in it", body = ErrorBody),
        (status = 409, description = "No answered lead, or the session has no voicemail drop", body = ErrorBody),
    )
)]
pub(super) async fn drop_voicemail(
    State(st): State<AppState>,
    ApiPath((id, agent)): ApiPath<(String, String)>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let view = sessions(&st)?.get_or_load(id).await?.view().await?;
    if !view.agents.iter().any(|a| a.agent == agent) {
        return Err(ApiError::NotFound(format!("agent {agent:?} is not in session {id}")).into());
    }
    let Some(calls) = &st.calls else {
        return Err(ApiError::Unavailable {
            code: "no_call_engine",
            message: "the call engine is not running".into(),
            retry_after_s: 1,
        }
        .into());
    };
    match calls.drop_voicemail(&agent).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Ok((
            StatusCode::CONFLICT,
            Json(json!({"error": {"code": "conflict", "message": e.to_string()}})),
        )
            .into_response()),
    }
}

/// `GET /api/v1/sessions/{id}/queue` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct QueueParams {
    /// `1` or `true`: each entry's rule and reason.
    explain: Option<String>,
    /// How many entries, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// `GET /api/v1/sessions/{id}/queue`: upcoming leads with their states.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/queue",
    operation_id = "get_session_queue",
    tag = "sessions",
    params(("id" = i64, Path, description = "The session's id"), QueueParams),
    responses((status = 200, description = "The upcoming leads, in calling order", body = Page<QueueEntryView>))
)]
pub(super) async fn queue(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<QueueParams>,
) -> Result<Response> {
    let id = parse_id(&id, "session")?;
    let explain = matches!(q.explain.as_deref(), Some("1" | "true"));
    let limit = match q.limit.as_deref().map(str::trim) {
        None | Some("") => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::BadParam {
                    param: "limit",
                    reason: "between 1 and 1000",
                }
                .into())
            }
        },
    };
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
