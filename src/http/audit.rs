//! The dial audit over HTTP (SPEC §4 compliance): `GET /api/v1/audit`
//! lists every dial that was held (calling hours), restricted (do-not-call,
//! not dialable) or refused (manual calls), oldest first, keyset-paged,
//! filtered by `session_id`, `lead_id`, `reason` and `since`. Admin token
//! only (agent tokens get 403 from `auth`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::paging::encode_cursor;
use super::{ApiError, ApiQuery, AppState, Page, PageParams};
use crate::leads::model::{parse_time, time_to_ms};
use crate::store::audit::{AuditEntry, AuditFilter, AuditReason};

/// Cursor kind of the audit list: the last entry's id.
const CURSOR_KIND: char = 'A';

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/audit", get(list))
}

/// The query string of `GET /api/v1/audit`; an empty value is no filter.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditParams {
    /// Only this dialer session's entries.
    #[param(value_type = Option<i64>)]
    session_id: Option<String>,
    /// Only this lead's entries.
    #[param(value_type = Option<i64>)]
    lead_id: Option<String>,
    /// Only this reason: `calling_hours`, `holiday`, `do_not_call`,
    /// `lead_do_not_call` or `not_dialable`.
    #[param(value_type = Option<AuditReason>)]
    reason: Option<String>,
    /// Only entries at or after this time (RFC 3339 or `YYYY-MM-DD`).
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    since: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

fn id_param(raw: Option<&str>, param: &'static str) -> Result<Option<i64>, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| ApiError::BadParam {
            param,
            reason: "must be an integer id",
        }),
    }
}

/// `GET /api/v1/audit`: held, restricted and refused dials with their
/// reasons, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    operation_id = "list_audit",
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of audit entries, oldest first", body = Page<AuditEntry>),
        (status = 400, description = "A filter that is not an id, a reason or a time", body = super::openapi::ErrorBody),
        (status = 403, description = "Agent tokens may not read the audit", body = super::openapi::ErrorBody),
    )
)]
pub(super) async fn list(
    State(st): State<AppState>,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let reason = match p.reason.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) => Some(AuditReason::parse(r).ok_or(ApiError::BadParam {
            param: "reason",
            reason: "one of calling_hours, holiday, do_not_call, lead_do_not_call, not_dialable",
        })?),
    };
    let since_ms = match p.since.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(time_to_ms(parse_time(s).map_err(|_| {
            ApiError::BadParam {
                param: "since",
                reason: "an RFC 3339 time or YYYY-MM-DD date",
            }
        })?)),
    };
    let filter = AuditFilter {
        session_id: id_param(p.session_id.as_deref(), "session_id")?,
        lead_id: id_param(p.lead_id.as_deref(), "lead_id")?,
        reason,
        since_ms,
    };
    let paging = PageParams {
        limit: p.limit,
        cursor: p.cursor,
    };
    let limit = paging.limit()?;
    let after = match paging.cursor(CURSOR_KIND)?.as_deref() {
        None => 0,
        Some([id]) => *id,
        Some(_) => {
            return Err(ApiError::BadParam {
                param: "cursor",
                reason: "not a cursor returned by this list",
            })
        }
    };
    let mut data = st
        .store
        .list_audit(filter, after, i64::from(limit) + 1)
        .await?;
    let next = if data.len() > limit as usize {
        data.truncate(limit as usize);
        data.last().map(|e| encode_cursor(CURSOR_KIND, &[e.id]))
    } else {
        None
    };
    Ok(Json(Page { data, next }))
}
