//! `GET /api/v1/me`: whom the bearer token speaks for — `{role: "admin"}`
//! or `{role: "agent", agent}` — so the console shows an agent only their
//! own controls (SPEC §4 auth: agent tokens act for their agent only).

use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;

use super::auth::Caller;
use super::{ApiError, AppState};

/// The route of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/me", get(me))
}

/// `GET /api/v1/me`'s body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// `admin` or `agent`.
    pub role: &'static str,
    /// The agent's username, for an agent token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// `GET /api/v1/me`: whom the bearer token speaks for.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    operation_id = "get_me",
    tag = "agents",
    responses((status = 200, description = "The token's role", body = Me))
)]
pub(super) async fn me(caller: Option<Extension<Caller>>) -> Result<Json<Me>, ApiError> {
    match caller.map(|c| c.0) {
        Some(Caller::Admin) => Ok(Json(Me {
            role: "admin",
            agent: None,
        })),
        Some(Caller::Agent(a)) => Ok(Json(Me {
            role: "agent",
            agent: Some(a),
        })),
        None => Err(ApiError::Unauthorized),
    }
}
