//! Smart View routes (SPEC §3, §4): store a view after checking its query,
//! read it back, and list the leads it selects, in order and paged.
//!
//! A query that does not parse or compile is answered 400
//! `{error: {code: "bad_query", message: "at 17: expected …", position: 17}}`:
//! the shape of every other API error plus the char offset of the fault.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::openapi::ErrorBody;
use super::paging::encode_cursor;
use super::{
    created, now, parse_id, ApiError, ApiJson, ApiPath, ApiQuery, AppState, Page, PageParams,
};
use crate::leads::model::{time_to_ms, Lead, NewSmartView, SmartView, ValidationReason};
use crate::leads::query::QueryError;
use crate::leads::ValidationError;
use crate::store::{StoreError, ViewError, MAX_QUERY_BYTES};

/// Cursor kind of a view's lead list: keys `[view id, offset]`.
const CURSOR_KIND: char = 'V';

/// The Smart View routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/smart-views", post(create_view).get(list_views))
        .route("/api/v1/smart-views/{id}", get(get_view))
        .route("/api/v1/smart-views/{id}/leads", get(view_leads))
}

/// A Smart View route's failure: any [`ApiError`], or a query that does not
/// parse or compile (SPEC §3: "a syntax error is a 400 with the position and
/// what was expected").
#[derive(Debug, thiserror::Error)]
pub enum SmartViewError {
    /// Any other API failure, answered as usual.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// 400 `bad_query` with `position`.
    #[error(transparent)]
    BadQuery(#[from] QueryError),
}

impl From<StoreError> for SmartViewError {
    fn from(e: StoreError) -> Self {
        SmartViewError::Api(e.into())
    }
}

impl From<ValidationError> for SmartViewError {
    fn from(e: ValidationError) -> Self {
        SmartViewError::Api(e.into())
    }
}

impl From<ViewError> for SmartViewError {
    fn from(e: ViewError) -> Self {
        match e {
            ViewError::Query(q) => SmartViewError::BadQuery(q),
            ViewError::TooLong => {
                ValidationError::new("query", ValidationReason::TooLong(MAX_QUERY_BYTES)).into()
            }
            ViewError::Store(s) => s.into(),
        }
    }
}

impl IntoResponse for SmartViewError {
    fn into_response(self) -> Response {
        match self {
            SmartViewError::Api(e) => e.into_response(),
            SmartViewError::BadQuery(q) => {
                let body = json!({"error": {
                    "code": "bad_query",
                    "message": q.to_string(),
                    "position": q.position,
                    "expected": q.expected,
                    "found": q.found,
                }});
                (StatusCode::BAD_REQUEST, Json(body)).into_response()
            }
        }
    }
}

/// `POST /api/v1/smart-views`: `{name, query}`; the query must parse and
/// compile against the custom fields defined now, else nothing is stored.
#[utoipa::path(
    post,
    path = "/api/v1/smart-views",
    tag = "smart-views",
    request_body = NewSmartView,
    responses(
        (status = 201, description = "The stored view", body = SmartView),
        (status = 400, description = "The query does not parse or compile (`bad_query` with `position`), or the name is empty", body = ErrorBody),
    )
)]
pub(super) async fn create_view(
    State(st): State<AppState>,
    ApiJson(view): ApiJson<NewSmartView>,
) -> Result<Response, SmartViewError> {
    if view.name.trim().is_empty() {
        return Err(ValidationError::new("name", ValidationReason::Empty).into());
    }
    let now = now();
    st.store.compile_view(&view.query, now).await?;
    let v = st.store.create_smart_view(&view, time_to_ms(now)).await?;
    Ok(created(v).into_response())
}

/// `GET /api/v1/smart-views/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/smart-views/{id}",
    tag = "smart-views",
    params(("id" = i64, Path, description = "The view's id")),
    responses((status = 200, description = "The view", body = SmartView))
)]
pub(super) async fn get_view(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "smart view")?;
    Ok(Json(st.store.get_smart_view(id).await?).into_response())
}

/// `GET /api/v1/smart-views`: every view (one page).
#[utoipa::path(
    get,
    path = "/api/v1/smart-views",
    tag = "smart-views",
    responses((status = 200, description = "The views", body = Page<SmartView>))
)]
pub(super) async fn list_views(State(st): State<AppState>) -> Result<Response, ApiError> {
    let data = st.store.list_smart_views().await?;
    Ok(Json(Page { data, next: None }).into_response())
}

/// `GET /api/v1/smart-views/{id}/leads`: the view's leads (whole lead
/// objects) in view order, evaluated as of the request's arrival; paged by
/// an opaque cursor over the offset, so a lead moving in or out of the view
/// between pages can shift later pages by one.
#[utoipa::path(
    get,
    path = "/api/v1/smart-views/{id}/leads",
    tag = "smart-views",
    params(("id" = i64, Path, description = "The view's id"), PageParams),
    responses(
        (status = 200, description = "A page of the view's leads, in view order", body = Page<Lead>),
        (status = 400, description = "A bad `limit` or `cursor`, or a stored query that no longer compiles", body = ErrorBody),
    )
)]
pub(super) async fn view_leads(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Response, SmartViewError> {
    let id = parse_id(&id, "smart view")?;
    let limit = p.limit()?;
    let offset: i64 = match p.cursor(CURSOR_KIND)?.as_deref() {
        None => 0,
        Some([view, offset]) if *view == id && *offset >= 0 => *offset,
        Some(_) => {
            return Err(ApiError::BadParam {
                param: "cursor",
                reason: "not a cursor returned by this list",
            }
            .into())
        }
    };
    let view = st.store.get_smart_view(id).await?;
    // One more than asked tells whether a next page exists.
    let mut ids = st
        .store
        .evaluate_view_page(&view.query, now(), limit + 1, offset.unsigned_abs())
        .await?;
    let next = if ids.len() > limit as usize {
        ids.truncate(limit as usize);
        Some(encode_cursor(
            CURSOR_KIND,
            &[id, offset.saturating_add(i64::from(limit))],
        ))
    } else {
        None
    };
    let data = st.store.get_leads(&ids).await?;
    Ok(Json(Page { data, next }).into_response())
}
