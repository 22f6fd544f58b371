//! `PATCH /api/v1/calls/{id} {"notes": "..."}`: the agent's notes on a call
//! (SPEC §1 step 5: notes written during and after the call, kept with it).
//! The console saves the notes box here while the agent types; the call
//! record (SPEC §4) carries them as `notes`, and the call's lead keeps
//! them as one of its notes (`GET /api/v1/leads/{id}`).

use axum::extract::State;
use axum::routing::patch;
use axum::{Json, Router};
use serde::Deserialize;

use super::manual_calls::{CallState, CallView};
use super::{parse_id, ApiError, ApiJson, ApiPath, AppState};
use crate::leads::model::{ValidationError, ValidationReason};

/// Longest note accepted, in characters: a long conversation's notes fit,
/// and one request cannot make the database store more than that.
pub const MAX_NOTES_LEN: usize = 20_000;

/// The route of this module (merged beside `GET /api/v1/calls/{id}`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/calls/{id}", patch(set_notes))
}

/// `PATCH /api/v1/calls/{id}` body: only `notes` may change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CallPatch {
    /// The whole note, replacing the one stored.
    #[schema(max_length = 20000)]
    notes: String,
}

/// Replaces the call's notes and answers the call record with its state,
/// as `GET /api/v1/calls/{id}` does. 404 for no such call, 400 for notes
/// longer than [`MAX_NOTES_LEN`]; a note may be saved at any time, while
/// the call is live or after it ended.
#[utoipa::path(
    patch,
    path = "/api/v1/calls/{id}",
    operation_id = "set_call_notes",
    tag = "calls",
    params(("id" = i64, Path, description = "The call record's id")),
    request_body = CallPatch,
    responses((status = 200, description = "The call record with its state", body = CallView))
)]
pub(super) async fn set_notes(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<CallPatch>,
) -> Result<Json<CallView>, ApiError> {
    let id = parse_id(&raw, "call")?;
    if body.notes.chars().count() > MAX_NOTES_LEN {
        return Err(ValidationError::new("notes", ValidationReason::TooLong(MAX_NOTES_LEN)).into());
    }
    let record = state.store.set_call_notes(id, &body.notes).await?;
    // The note belongs to the lead too: it shows the next time the lead
    // comes up (help page: the call note box), and in `GET /api/v1/leads/{id}`.
    if let Some(lead) = record.lead_id {
        state
            .store
            .set_call_lead_note(
                lead,
                id,
                record.agent.as_deref(),
                &body.notes,
                super::time_to_ms_now(),
            )
            .await?;
    }
    let live = state.calls.as_ref().and_then(|c| c.call_progress(id));
    let state = CallState::of(&record, live);
    Ok(Json(CallView { record, state }))
}
