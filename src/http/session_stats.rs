//! `GET /api/v1/sessions/{id}/stats?hours=N` (admin view): a dialer
//! session's calls by outcome, in all and per hour for the last `hours` (1
//! to 168, default 24), its answer rate and median ring time, computed in
//! `store::stats` from the call records.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::openapi::ErrorBody;
use super::{now, parse_id, ApiError, ApiPath, ApiQuery, AppState};
use crate::leads::model::time_to_ms;
use crate::store::stats::SessionStats;

/// The route of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/sessions/{id}/stats", get(session_stats))
}

/// `hours` of `GET /api/v1/sessions/{id}/stats`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StatsParams {
    /// Hours in `per_hour`, 1 to 168 (default 24), up to the current one.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 168)]
    hours: Option<String>,
}

/// `GET /api/v1/sessions/{id}/stats`: calls by outcome (in all and per
/// hour), answer rate and median ring time of a session.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/stats",
    operation_id = "get_session_stats",
    tag = "sessions",
    params(("id" = i64, Path, description = "The session's id"), StatsParams),
    responses(
        (status = 200, description = "The session's call statistics", body = SessionStats),
        (status = 404, description = "No such session", body = ErrorBody),
    )
)]
pub(super) async fn session_stats(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StatsParams>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "session")?;
    let hours = super::bounded_count(q.hours.as_deref(), "hours", "between 1 and 168", 168, 24)?;
    // Read from the store: a session not running here is not started.
    if crate::dialer::record::get_session(&st.store, id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("session {id} not found")));
    }
    let stats = st.store.session_stats(id, time_to_ms(now()), hours).await?;
    Ok(Json(stats).into_response())
}
