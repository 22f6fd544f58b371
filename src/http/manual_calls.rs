//! The manual call API (R17): `POST /api/v1/calls` places one call over
//! the agent's leg and answers `202 Accepted` at once with the call record
//! and its `state` (SPEC §4); `GET /api/v1/calls/{id}` follows the call,
//! `POST /api/v1/calls/{id}/hangup` ends it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::openapi::ErrorBody;
use super::{parse_id, ApiError, ApiJson, ApiPath, AppState};
use crate::call::engine::{CallEngine, CallEngineError, CallProgress, DialRequest};
use crate::leads::model::{CallRecord, ValidationError, ValidationReason};
use crate::leads::PhoneE164;

/// Seconds a client should wait before retrying a call refused for lack of
/// RTP ports (`Retry-After`, RFC 9110 §10.2.3): calls end within seconds
/// to minutes, a retry storm helps nobody.
const RTP_PORTS_RETRY_AFTER_S: u32 = 5;

/// Where a call stands, as `GET /api/v1/calls/{id}` shows it (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// The agent's phone is ringing; the lead is dialed once it answers.
    CallingAgent,
    /// The lead's INVITE is out.
    Dialing,
    /// The lead is ringing.
    Ringing,
    /// The lead answered and is bridged to the agent.
    Answered,
    /// The outcome is stored (`outcome`, `ended_at`).
    Ended,
    /// The call ended before its lead was dialed (the agent's phone did
    /// not answer, or it was hung up first): `ended_at`, no outcome.
    NotDialed,
    /// In progress, followed by another part (a dialer session) or another
    /// instance.
    InProgress,
}

impl CallState {
    /// The record decides once the call is over; before, the engine's
    /// progress.
    pub(crate) fn of(record: &CallRecord, live: Option<CallProgress>) -> CallState {
        if record.outcome.is_some() {
            return CallState::Ended;
        }
        if record.ended_at.is_some() {
            return CallState::NotDialed;
        }
        match live {
            Some(CallProgress::CallingAgent) => CallState::CallingAgent,
            Some(CallProgress::Dialing) => CallState::Dialing,
            Some(CallProgress::Ringing) => CallState::Ringing,
            Some(CallProgress::Answered) => CallState::Answered,
            // The record is written just before the table entry goes.
            Some(CallProgress::Ended | CallProgress::NotDialed) | None => {
                if record.answered_at.is_some() {
                    CallState::Answered
                } else {
                    CallState::InProgress
                }
            }
        }
    }
}

/// A call record with its [`CallState`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CallView {
    /// The stored record.
    #[serde(flatten)]
    pub record: CallRecord,
    /// Where the call stands.
    pub state: CallState,
}

/// `POST /api/v1/calls` body (R17).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualCall {
    /// The agent's username.
    pub agent: String,
    /// The number to dial (normalised to E.164, R2).
    pub number: String,
    /// The lead the call is for, if any.
    #[serde(default)]
    pub lead_id: Option<i64>,
}

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/calls", post(place))
        .route("/api/v1/calls/{id}", get(get_call))
        .route("/api/v1/calls/{id}/hangup", post(hangup))
}

/// Errors of the call API: [`ApiError`] plus the 409s of R17 (agent not
/// registered, busy).
#[derive(Debug)]
pub enum CallApiError {
    /// A generic API error.
    Api(ApiError),
    /// 409 with a message for the user.
    Conflict(String),
    /// 403: the number is on the do-not-call list (SPEC §4).
    Forbidden(String),
}

impl From<ApiError> for CallApiError {
    fn from(e: ApiError) -> Self {
        CallApiError::Api(e)
    }
}

impl From<crate::store::StoreError> for CallApiError {
    fn from(e: crate::store::StoreError) -> Self {
        CallApiError::Api(ApiError::Store(e))
    }
}

impl From<CallEngineError> for CallApiError {
    fn from(e: CallEngineError) -> Self {
        match e {
            CallEngineError::UnknownAgent(a) => {
                CallApiError::Api(ApiError::NotFound(format!("agent {a} not found")))
            }
            CallEngineError::NoBinding => CallApiError::Conflict(
                "the agent's phone is not registered: register the phone with powerdial, then try again"
                    .into(),
            ),
            CallEngineError::Busy => {
                CallApiError::Conflict("the agent already has a call in progress".into())
            }
            CallEngineError::RtpPorts(p) => CallApiError::Api(ApiError::Unavailable {
                code: "rtp_ports_exhausted",
                message: format!(
                    "{p}: retry when calls end, or widen server.rtp_ports in the configuration"
                ),
                retry_after_s: RTP_PORTS_RETRY_AFTER_S,
            }),
            e @ CallEngineError::RtpPortsBusy(_) => CallApiError::Api(ApiError::Unavailable {
                code: "rtp_ports_unavailable",
                message: e.to_string(),
                retry_after_s: RTP_PORTS_RETRY_AFTER_S,
            }),
            e @ CallEngineError::DoNotCall(_) => CallApiError::Forbidden(e.to_string()),
            e @ CallEngineError::TrunksDown => CallApiError::Api(ApiError::Unavailable {
                code: "trunks_down",
                message: e.to_string(),
                retry_after_s: RTP_PORTS_RETRY_AFTER_S,
            }),
            e @ CallEngineError::TrunksBusy => CallApiError::Api(ApiError::Unavailable {
                code: "trunks_busy",
                message: e.to_string(),
                retry_after_s: RTP_PORTS_RETRY_AFTER_S,
            }),
            e @ (CallEngineError::Declined(_)
            | CallEngineError::AgentLegEnding
            | CallEngineError::Timeout
            | CallEngineError::NotConnected
            | CallEngineError::NoCall
            | CallEngineError::NoTrunk) => CallApiError::Conflict(e.to_string()),
            other => CallApiError::Api(ApiError::Internal(other.to_string())),
        }
    }
}

impl IntoResponse for CallApiError {
    fn into_response(self) -> Response {
        match self {
            CallApiError::Api(e) => e.into_response(),
            CallApiError::Conflict(message) => (
                StatusCode::CONFLICT,
                Json(json!({"error": {"code": "conflict", "message": message}})),
            )
                .into_response(),
            CallApiError::Forbidden(message) => (
                StatusCode::FORBIDDEN,
                Json(json!({"error": {"code": "do_not_call", "message": message}})),
            )
                .into_response(),
        }
    }
}

fn engine(state: &AppState) -> Result<&CallEngine, CallApiError> {
    state
        .calls
        .as_ref()
        .ok_or_else(|| CallApiError::Api(ApiError::Internal("no call engine".into())))
}

/// R17, SPEC §4: `202 Accepted` at once with the call record and its state
/// (`calling_agent` while the agent's phone rings, `dialing` when the agent
/// leg was already up, `ended` for a number the trunk may not dial); the
/// call goes on in the engine. Refusals known before anything starts
/// answer at once: 404 unknown agent, 400 not a phone number, 409 phone not
/// registered or a call in progress, 503 no free RTP ports.
#[utoipa::path(
    post,
    path = "/api/v1/calls",
    operation_id = "place_call",
    tag = "calls",
    request_body = ManualCall,
    responses(
        (status = 202, description = "The call is placed; the record with its state", body = CallView),
        (status = 400, description = "Not a phone number", body = ErrorBody),
        (status = 403, description = "The number is on the do-not-call list", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "The agent's phone is not registered, or it has a call in progress", body = ErrorBody),
        (status = 503, description = "No free RTP ports, or every trunk that may dial the number is down or stayed at its limits for `dialer.trunk_wait` (`Retry-After`; nothing was dialed)", body = ErrorBody),
    )
)]
pub(super) async fn place(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ManualCall>,
) -> Result<(StatusCode, Json<CallView>), CallApiError> {
    let calls = engine(&state)?;
    if !calls.knows_agent(&body.agent) {
        return Err(ApiError::NotFound(format!("agent {} not found", body.agent)).into());
    }
    PhoneE164::parse(&body.number, &state.default_region).map_err(|e| {
        ApiError::Validation(ValidationError::new("number", ValidationReason::Phone(e)))
    })?;
    let (id, progress) = calls
        .place_call(
            &body.agent,
            DialRequest {
                number: body.number,
                lead_id: body.lead_id,
                session_id: None,
                reduced_ring_time: false,
            },
        )
        .await?;
    let record = state.store.get_call(id).await?;
    let live = calls.call_progress(id).or(Some(progress));
    let state = CallState::of(&record, live);
    Ok((StatusCode::ACCEPTED, Json(CallView { record, state })))
}

/// `GET /api/v1/calls/{id}`: the record and where the call stands.
#[utoipa::path(
    get,
    path = "/api/v1/calls/{id}",
    tag = "calls",
    params(("id" = i64, Path, description = "The call record's id")),
    responses((status = 200, description = "The call record with its state", body = CallView))
)]
pub(super) async fn get_call(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<CallView>, CallApiError> {
    let id = parse_id(&raw, "call")?;
    let record = state.store.get_call(id).await?;
    let live = state.calls.as_ref().and_then(|c| c.call_progress(id));
    let state = CallState::of(&record, live);
    Ok(Json(CallView { record, state }))
}

/// R17 hang-up: CANCEL while ringing (skipped), BYE once answered.
#[utoipa::path(
    post,
    path = "/api/v1/calls/{id}/hangup",
    operation_id = "hang_up_call",
    tag = "calls",
    params(("id" = i64, Path, description = "The call record's id")),
    responses(
        (status = 200, description = "The call record with its state", body = CallView),
        (status = 409, description = "The call has already ended", body = ErrorBody),
    )
)]
pub(super) async fn hangup(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<CallView>, CallApiError> {
    let id = parse_id(&raw, "call")?;
    let record = state.store.get_call(id).await?;
    if record.outcome.is_some() || record.ended_at.is_some() {
        return Err(CallApiError::Conflict(format!(
            "call {id} has already ended"
        )));
    }
    let calls = engine(&state)?;
    calls.hangup_call(id).await?;
    let record = state.store.get_call(id).await?;
    let state = CallState::of(&record, calls.call_progress(id));
    Ok(Json(CallView { record, state }))
}
