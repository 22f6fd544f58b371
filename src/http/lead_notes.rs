//! What the console's call bar shows of a lead beside its fields (SPEC §1
//! step 5, help page "call note box"): its notes and latest calls.
//!
//! - `GET /api/v1/leads/{id}` carries the lead's notes ([`lead_with_notes`]).
//! - `GET /api/v1/leads/{id}/calls?limit=N`: the lead's latest calls,
//!   newest first (time, outcome, agent, notes); `limit` 1 to 100,
//!   default 10.
//! - `POST /api/v1/leads/{id}/notes {body}`: a note on the lead outside a
//!   call's notes box (those are saved on the lead by `PATCH
//!   /api/v1/calls/{id}`); 201 with the note.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::{now, parse_id, ApiError, ApiJson, ApiPath, ApiQuery, AppState, Page};
use crate::leads::model::{ms_to_time, rfc3339, time_to_ms, CallRecord, Lead, ValidationReason};
use crate::leads::ValidationError;
use crate::store::lead_notes::LeadNoteRow;

/// Longest note accepted, as for a call's notes.
pub const MAX_NOTE_LEN: usize = super::call_notes::MAX_NOTES_LEN;
/// Notes shown with `GET /api/v1/leads/{id}`, newest first.
pub const LEAD_NOTES_SHOWN: i64 = 50;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/leads/{id}/calls", get(lead_calls))
        .route("/api/v1/leads/{id}/notes", post(add_note))
}

/// A note on a lead.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LeadNote {
    /// Database id.
    pub id: i64,
    /// The call whose notes box it was typed in; `null` for a note added
    /// with `POST /api/v1/leads/{id}/notes`.
    pub call_id: Option<i64>,
    /// The agent who wrote it; `null` for the admin.
    pub agent: Option<String>,
    /// The text.
    pub body: String,
    /// First saved.
    #[serde(with = "rfc3339")]
    pub created: DateTime<Utc>,
    /// Last changed.
    #[serde(with = "rfc3339")]
    pub updated: DateTime<Utc>,
}

impl From<LeadNoteRow> for LeadNote {
    fn from(r: LeadNoteRow) -> Self {
        LeadNote {
            id: r.id,
            call_id: r.call_id,
            agent: r.agent,
            body: r.body,
            created: ms_to_time(r.created_ms),
            updated: ms_to_time(r.updated_ms),
        }
    }
}

/// `GET /api/v1/leads/{id}`: the lead (SPEC §4) with its notes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LeadWithNotes {
    /// The lead.
    #[serde(flatten)]
    pub lead: Lead,
    /// Its latest notes (at most 50), newest first.
    pub notes: Vec<LeadNote>,
}

/// The lead with its notes, for `GET /api/v1/leads/{id}`.
pub async fn lead_with_notes(st: &AppState, id: i64) -> Result<LeadWithNotes, ApiError> {
    let lead = st.store.get_lead(id).await?;
    let notes = st
        .store
        .lead_notes(id, LEAD_NOTES_SHOWN)
        .await?
        .into_iter()
        .map(LeadNote::from)
        .collect();
    Ok(LeadWithNotes { lead, notes })
}

/// `limit` of `GET /api/v1/leads/{id}/calls`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LeadCallsParams {
    /// How many calls, 1 to 100 (default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

/// `GET /api/v1/leads/{id}/calls`: the lead's latest calls, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/leads/{id}/calls",
    operation_id = "list_lead_calls",
    tag = "leads",
    params(("id" = i64, Path, description = "The lead's id"), LeadCallsParams),
    responses((status = 200, description = "The lead's latest calls, newest first (one page)", body = Page<CallRecord>))
)]
pub(super) async fn lead_calls(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LeadCallsParams>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "lead")?;
    let limit = super::bounded_count(q.limit.as_deref(), "limit", "between 1 and 100", 100, 10)?;
    // A missing lead is a 404, not an empty list.
    st.store.get_lead(id).await?;
    let data = st.store.recent_lead_calls(id, i64::from(limit)).await?;
    Ok(Json(Page { data, next: None }).into_response())
}

/// `POST /api/v1/leads/{id}/notes` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewNote {
    /// The text (not blank).
    #[schema(max_length = 20000)]
    body: String,
}

/// `POST /api/v1/leads/{id}/notes`: a note on the lead, by the token's
/// agent (or the admin).
#[utoipa::path(
    post,
    path = "/api/v1/leads/{id}/notes",
    operation_id = "add_lead_note",
    tag = "leads",
    params(("id" = i64, Path, description = "The lead's id")),
    request_body = NewNote,
    responses((status = 201, description = "The note", body = LeadNote))
)]
pub(super) async fn add_note(
    State(st): State<AppState>,
    caller: Option<Extension<Caller>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<NewNote>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "lead")?;
    if body.body.trim().is_empty() {
        return Err(ValidationError::new("body", ValidationReason::Empty).into());
    }
    if body.body.chars().count() > MAX_NOTE_LEN {
        return Err(ValidationError::new("body", ValidationReason::TooLong(MAX_NOTE_LEN)).into());
    }
    let agent = caller.as_ref().and_then(|c| c.0.agent());
    let row = st
        .store
        .add_lead_note(id, agent, &body.body, time_to_ms(now()))
        .await?;
    Ok((StatusCode::CREATED, Json(LeadNote::from(row))).into_response())
}
