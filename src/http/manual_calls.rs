//! The manual call API (R17, issue 3 §8): `POST /api/v1/calls` places one
//! call over the agent's nailed-up leg, `POST /api/v1/calls/{id}/hangup`
//! ends it, `GET /api/v1/calls/{id}` reads its record.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{parse_id, ApiError, ApiJson, AppState};
use crate::call::engine::{CallEngine, CallEngineError, DialRequest};
use crate::leads::model::CallRecord;

/// `POST /api/v1/calls` body (R17).
#[derive(Debug, Deserialize)]
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
/// registered, busy, phone did not answer).
#[derive(Debug)]
pub enum CallApiError {
    /// A generic API error.
    Api(ApiError),
    /// 409 with a message for the user.
    Conflict(String),
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
            e @ (CallEngineError::Declined(_)
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
        }
    }
}

fn engine(state: &AppState) -> Result<&CallEngine, CallApiError> {
    state
        .calls
        .as_ref()
        .ok_or_else(|| CallApiError::Api(ApiError::Internal("no call engine".into())))
}

/// R17: connect the agent leg if needed, dial, 201 with the call record.
async fn place(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ManualCall>,
) -> Result<(StatusCode, Json<CallRecord>), CallApiError> {
    let calls = engine(&state)?;
    if !calls.knows_agent(&body.agent) {
        return Err(ApiError::NotFound(format!("agent {} not found", body.agent)).into());
    }
    calls.connect_agent(&body.agent).await?;
    let id = calls
        .dial(
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
    Ok((StatusCode::CREATED, Json(record)))
}

async fn get_call(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<CallRecord>, CallApiError> {
    let id = parse_id(&raw, "call")?;
    Ok(Json(state.store.get_call(id).await?))
}

/// R17 hang-up: CANCEL while ringing (skipped), BYE once answered.
async fn hangup(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<CallRecord>, CallApiError> {
    let id = parse_id(&raw, "call")?;
    let record = state.store.get_call(id).await?;
    if record.outcome.is_some() {
        return Err(CallApiError::Conflict(format!(
            "call {id} has already ended"
        )));
    }
    engine(&state)?.hangup_call(id).await?;
    Ok(Json(state.store.get_call(id).await?))
}
