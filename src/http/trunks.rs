//! `GET /api/v1/trunks` (admin only): every `[[trunk]]` with its state —
//! up or down by its OPTIONS pings, the lead calls on it now, its limits —
//! in configuration order, so an admin sees why calls go where they go.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState, Page};
use crate::call::trunk::TrunkStatus;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/trunks", get(list))
}

/// `GET /api/v1/trunks`: the trunks and their state, one page.
#[utoipa::path(
    get,
    path = "/api/v1/trunks",
    operation_id = "list_trunks",
    tag = "trunks",
    responses(
        (status = 200, description = "Every configured trunk in configuration order, with its state (up/down by OPTIONS pings), calls now and limits", body = Page<TrunkStatus>),
        (status = 503, description = "The call engine is not running", body = super::openapi::ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Page<TrunkStatus>>, ApiError> {
    let calls = state.calls.as_ref().ok_or_else(|| ApiError::Unavailable {
        code: "no_call_engine",
        message: "the call engine is not running".into(),
        retry_after_s: 5,
    })?;
    Ok(Json(Page {
        data: calls.trunks(),
        next: None,
    }))
}
