//! `GET /api/v1/sessions`: the dialer sessions, oldest first, each as
//! `GET /api/v1/sessions/{id}` shows it plus its Smart View's name
//! (`smart_view_name`), for the console's session picker (SPEC §4).
//! Sessions are few (one per call list being worked), so the list is one
//! page: `{data: [...], next: null}`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::sessions::SessionApiError;
use super::{ApiError, AppState, Page};
use crate::dialer::session::SessionView;

/// The route of this module (merged beside `POST /api/v1/sessions`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/sessions", get(list))
}

/// A session as listed: as `GET /api/v1/sessions/{id}` shows it, plus its
/// Smart View's name.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // The schema of a body built by hand.
pub(super) struct ListedSession {
    #[serde(flatten)]
    session: SessionView,
    /// The Smart View's name; `null` when the view was deleted.
    smart_view_name: Option<String>,
}

/// The sessions running on this instance with their agents and counts.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    operation_id = "list_sessions",
    tag = "sessions",
    responses((status = 200, description = "The sessions (one page)", body = Page<ListedSession>))
)]
pub(super) async fn list(State(st): State<AppState>) -> Result<Json<Value>, SessionApiError> {
    let Some(sessions) = &st.sessions else {
        return Ok(Json(json!({"data": [], "next": null})));
    };
    let mut data = Vec::new();
    for h in sessions.running() {
        let view = h.view().await?;
        let name = match st.store.get_smart_view(view.row.smart_view_id).await {
            Ok(v) => Some(v.name),
            // A view deleted under a running session: still listed.
            Err(crate::store::StoreError::NotFound { .. }) => None,
            Err(e) => return Err(ApiError::Store(e).into()),
        };
        let mut v = serde_json::to_value(&view).map_err(|e| ApiError::Internal(e.to_string()))?;
        v["smart_view_name"] = json!(name);
        data.push(v);
    }
    Ok(Json(json!({"data": data, "next": null})))
}
