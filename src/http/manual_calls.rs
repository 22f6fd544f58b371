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
    /// The lead the call is for, if any: its time zone field and address
    /// then decide its calling hours.
    #[serde(default)]
    pub lead_id: Option<i64>,
    /// Call even outside the lead's calling hours (SPEC §4): admin token
    /// only (an agent token gets 403 `override_not_allowed`); the override
    /// is logged.
    #[serde(default)]
    pub override_calling_hours: bool,
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
    /// 409 `outside_calling_hours`: the lead may not be called now (SPEC
    /// §4); a later try, or the admin's override, may succeed.
    OutsideCallingHours(String),
    /// 403 `override_not_allowed`: only the admin may call outside hours.
    OverrideNotAllowed,
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
            e @ (CallEngineError::DoNotCall(_) | CallEngineError::LeadDoNotCall(_)) => {
                CallApiError::Forbidden(e.to_string())
            }
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
            | CallEngineError::NoDrop(_)
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
            CallApiError::OutsideCallingHours(message) => (
                StatusCode::CONFLICT,
                Json(json!({"error": {"code": "outside_calling_hours", "message": message}})),
            )
                .into_response(),
            CallApiError::OverrideNotAllowed => (
                StatusCode::FORBIDDEN,
                Json(json!({"error": {
                    "code": "override_not_allowed",
                    "message": "only the admin token may call outside calling hours (override_calling_hours)"
                }})),
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
        (status = 403, description = "The number is on the do-not-call list (`do_not_call`), or an agent token asked for `override_calling_hours` (`override_not_allowed`)", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "The agent's phone is not registered, it has a call in progress, or the lead is outside its calling hours (`outside_calling_hours`, with when they open)", body = ErrorBody),
        (status = 503, description = "No free RTP ports, or every trunk that may dial the number is down or stayed at its limits for `dialer.trunk_wait` (`Retry-After`; nothing was dialed)", body = ErrorBody),
    )
)]
pub(super) async fn place(
    State(state): State<AppState>,
    caller: Option<axum::Extension<super::auth::Caller>>,
    ApiJson(body): ApiJson<ManualCall>,
) -> Result<(StatusCode, Json<CallView>), CallApiError> {
    let calls = engine(&state)?;
    if !calls.knows_agent(&body.agent) {
        return Err(ApiError::NotFound(format!("agent {} not found", body.agent)).into());
    }
    let number = PhoneE164::parse(&body.number, &state.default_region).map_err(|e| {
        ApiError::Validation(ValidationError::new("number", ValidationReason::Phone(e)))
    })?;
    if body.override_calling_hours && caller.is_some_and(|c| c.agent().is_some()) {
        return Err(CallApiError::OverrideNotAllowed);
    }
    check_calling_hours(&state, &body, &number).await?;
    let (id, progress) = calls
        .place_call(
            &body.agent,
            DialRequest {
                number: body.number,
                lead_id: body.lead_id,
                session_id: None,
                reduced_ring_time: false,
                caller_id: None,
                amd: crate::media::amd::AmdMode::Off,
                voicemail_drop_id: None,
                record: false,
                lead: None,
                claim_id: None,
            },
        )
        .await?;
    let record = state.store.get_call(id).await?;
    let live = calls.call_progress(id).or(Some(progress));
    let state = CallState::of(&record, live);
    Ok((StatusCode::ACCEPTED, Json(CallView { record, state })))
}

/// SPEC §4 calling hours, before anything is dialed: the lead's zones (its
/// `timezone` field, its address, else the number's area code or
/// country) must all be inside `[dialer] calling_hours` and not on a
/// holiday, unless the admin set `override_calling_hours` (logged).
async fn check_calling_hours(
    state: &AppState,
    body: &ManualCall,
    number: &PhoneE164,
) -> Result<(), CallApiError> {
    use crate::dialer::hours::Verdict;
    use crate::leads::zone;
    use crate::store::audit::{AuditAction, AuditEntry, AuditReason};
    let lead = match body.lead_id {
        Some(id) => state.store.get_lead(id).await.ok(),
        None => None,
    };
    let zones = match &lead {
        Some(l) => zone::lead_zones(l, Some(number.as_str())),
        None => zone::number_zones(number.as_str()),
    }
    .map(|z| z.zones)
    .unwrap_or_default();
    let now_ms = crate::leads::model::time_to_ms(super::now());
    let Verdict::Closed {
        opens_at,
        zone,
        holiday,
        ..
    } = state.calling_hours.verdict(&zones, now_ms)
    else {
        return Ok(());
    };
    let reason = if holiday {
        AuditReason::Holiday
    } else {
        AuditReason::CallingHours
    };
    let entry = |action, detail: String| AuditEntry {
        id: 0,
        at_ms: now_ms,
        action,
        reason,
        session_id: None,
        lead_id: body.lead_id,
        agent: Some(body.agent.clone()),
        number: Some(number.as_str().to_string()),
        detail,
    };
    if body.override_calling_hours {
        tracing::warn!(agent = %body.agent, number = %number.as_str(), zone = %zone.name(), "manual call outside calling hours: admin override");
        state
            .audit
            .record(entry(
                AuditAction::Overridden,
                format!("outside calling hours in {}: admin override", zone.name()),
            ))
            .await;
        return Ok(());
    }
    let when = match opens_at {
        Some(t) => format!(
            "they open at {} ({})",
            crate::dialer::hours::local_hm(zone, t),
            crate::leads::model::ms_to_time(t).to_rfc3339()
        ),
        None => format!("they do not open within a year in {}", zone.name()),
    };
    state
        .audit
        .record(entry(AuditAction::Refused, when.clone()))
        .await;
    Err(CallApiError::OutsideCallingHours(format!(
        "{} is outside its calling hours{}: {when}; the admin may call anyway with \"override_calling_hours\": true",
        number.as_str(),
        if holiday { " (a holiday)" } else { "" },
    )))
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
