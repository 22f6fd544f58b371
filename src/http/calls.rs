//! Call history route (SPEC §4): `GET /api/v1/calls?session_id=&lead_id=`,
//! call records oldest first, keyset-paged.
//!
//! Manual calls (`POST /api/v1/calls`, R17) and hang-ups belong to the
//! dialer and are routed by it on the same path with other methods.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::paging::encode_cursor;
use super::{ApiError, AppState, Page, PageParams};
use crate::leads::model::CallRecord;
use crate::store::CallFilter;

/// Cursor kind of the call list: keys `[started_ms, id]` of the last record.
const CURSOR_KIND: char = 'C';

/// The call history routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/calls", get(list_calls))
}

/// The query string of `GET /api/v1/calls`; an empty value is no filter.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CallsParams {
    /// Only the calls of this dialer session.
    #[param(value_type = Option<i64>)]
    session_id: Option<String>,
    /// Only the calls to this lead.
    #[param(value_type = Option<i64>)]
    lead_id: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

/// Reads an optional id filter: absent or empty is no filter, anything but
/// an integer is a 400 naming the parameter.
fn id_param(raw: Option<&str>, param: &'static str) -> Result<Option<i64>, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| ApiError::BadParam {
            param,
            reason: "must be an integer id",
        }),
    }
}

/// `GET /api/v1/calls`: call records matching the filters, oldest first
/// (started, then id), SPEC §4 call record shape.
#[utoipa::path(
    get,
    path = "/api/v1/calls",
    tag = "calls",
    params(CallsParams),
    responses((status = 200, description = "A page of call records, oldest first", body = Page<CallRecord>))
)]
pub(super) async fn list_calls(
    State(st): State<AppState>,
    params: Result<Query<CallsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params?;
    let filter = CallFilter {
        session_id: id_param(p.session_id.as_deref(), "session_id")?,
        lead_id: id_param(p.lead_id.as_deref(), "lead_id")?,
    };
    let paging = PageParams {
        limit: p.limit,
        cursor: p.cursor,
    };
    let limit = paging.limit()?;
    let after = match paging.cursor(CURSOR_KIND)?.as_deref() {
        None => None,
        Some([started_ms, id]) => Some((*started_ms, *id)),
        Some(_) => {
            return Err(ApiError::BadParam {
                param: "cursor",
                reason: "not a cursor returned by this list",
            })
        }
    };
    // One more than asked tells whether a next page exists.
    let mut data = st.store.list_calls(filter, after, limit + 1).await?;
    let next = if data.len() > limit as usize {
        data.truncate(limit as usize);
        data.last().map(|c| {
            encode_cursor(
                CURSOR_KIND,
                &[crate::leads::model::time_to_ms(c.started_at), c.id],
            )
        })
    } else {
        None
    };
    Ok(Json(Page { data, next }).into_response())
}
