//! Smart View routes: store and read a view's name and query (SPEC §3).
//!
//! The query language lives in `leads::query`; its engineer plugs in here:
//! [`check_query`] validates the text before a view is stored (a syntax
//! error is a 400 with the position), and `GET
//! /api/v1/smart-views/{id}/leads` (the view, in order) is added to
//! [`routes`].

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{created, now, parse_id, ApiError, ApiJson, AppState, Page};
use crate::leads::model::{time_to_ms, NewSmartView, ValidationReason};
use crate::leads::ValidationError;

/// The Smart View routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/smart-views", post(create_view).get(list_views))
        .route("/api/v1/smart-views/{id}", get(get_view))
    // `/api/v1/smart-views/{id}/leads` goes here with the query compiler.
}

/// Validates a view's query before it is stored. Until the compiler is
/// wired in, only the length is checked.
pub fn check_query(query: &str) -> Result<(), ApiError> {
    if query.len() > 16 * 1024 {
        return Err(ValidationError::new("query", ValidationReason::TooLong(16 * 1024)).into());
    }
    Ok(())
}

async fn create_view(
    State(st): State<AppState>,
    ApiJson(view): ApiJson<NewSmartView>,
) -> Result<Response, ApiError> {
    if view.name.trim().is_empty() {
        return Err(ValidationError::new("name", ValidationReason::Empty).into());
    }
    check_query(&view.query)?;
    let v = st.store.create_smart_view(&view, time_to_ms(now())).await?;
    Ok(created(v).into_response())
}

async fn get_view(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "smart view")?;
    Ok(Json(st.store.get_smart_view(id).await?).into_response())
}

async fn list_views(State(st): State<AppState>) -> Result<Response, ApiError> {
    let data = st.store.list_smart_views().await?;
    Ok(Json(Page { data, next: None }).into_response())
}
