//! The do-not-call list over HTTP (SPEC §4): `POST /api/v1/dnc` with
//! `{number, reason?}` or an array of them (a number, or a prefix such as
//! `"+1900*"`), `GET /api/v1/dnc` paged in number order, `DELETE
//! /api/v1/dnc/{number}`. A number on the list never reaches the wire: the
//! call engine asks the list before every dial.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::openapi::ErrorBody;
use super::{now, ApiError, ApiJson, ApiPath, ApiQuery, AppState, Page, PageParams};
use crate::leads::dnc::DncEntry;
use crate::leads::dnc::{DncPattern, MAX_REASON_LEN};
use crate::leads::model::{time_to_ms, ValidationReason};
use crate::leads::ValidationError;

/// Most entries one request may add.
pub const MAX_BATCH: usize = 10_000;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/dnc", post(add).get(list))
        .route("/api/v1/dnc/{number}", delete(remove))
}

/// One entry to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDnc {
    /// A number (normalised to E.164 with `[leads] default_region`) or a
    /// prefix ending in `*`.
    pub number: String,
    /// Why (shown in the list).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/v1/dnc`: one entry or an array. Read by [`entries`] (each
/// entry from an object only, see [`super::json`]); this type is its schema.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum NewDncBody {
    /// One entry.
    One(NewDnc),
    /// Several entries, added in one transaction.
    Many(Vec<NewDnc>),
}

/// The entries of a `POST /api/v1/dnc` body and whether it was an array;
/// a wrong shape names the entry (`[2]: …`).
fn entries(body: serde_json::Value) -> Result<(Vec<NewDnc>, bool), ApiError> {
    match body {
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                super::json::from_value(item).map_err(|e| match e {
                    ApiError::WrongShape(m) => ApiError::WrongShape(format!("[{i}]: {m}")),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| (v, true)),
        one => super::json::from_value(one).map(|d| (vec![d], false)),
    }
}

fn field(many: bool, i: usize, name: &str) -> String {
    if many {
        format!("[{i}].{name}")
    } else {
        name.to_string()
    }
}

/// The created entries: one, or an array for an array.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // The schema of a body built by hand.
enum CreatedDnc {
    One(DncEntry),
    Many(Vec<DncEntry>),
}

/// `POST /api/v1/dnc`: one entry or an array, all checked before any is
/// stored.
#[utoipa::path(
    post,
    path = "/api/v1/dnc",
    operation_id = "add_dnc",
    tag = "dnc",
    request_body = NewDncBody,
    responses(
        (status = 201, description = "The entries as stored (one, or an array for an array)", body = CreatedDnc),
        (status = 400, description = "Not a number or prefix, a reason too long, or too many entries", body = ErrorBody),
    )
)]
pub(super) async fn add(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let (items, many) = entries(body)?;
    if items.len() > MAX_BATCH {
        return Err(ApiError::BadParam {
            param: "body",
            reason: "at most 10000 entries per request",
        });
    }
    let mut entries = Vec::with_capacity(items.len());
    for (i, d) in items.into_iter().enumerate() {
        let pattern =
            DncPattern::parse(&d.number, &st.default_region).map_err(|e| ValidationError {
                field: field(many, i, "number"),
                reason: ValidationReason::DncPattern(e),
            })?;
        let reason = d.reason.filter(|r| !r.trim().is_empty());
        if reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
        {
            return Err(ValidationError {
                field: field(many, i, "reason"),
                reason: ValidationReason::TooLong(MAX_REASON_LEN),
            }
            .into());
        }
        entries.push((pattern, reason));
    }
    st.store.add_dnc(&entries, time_to_ms(now())).await?;
    tracing::info!(entries = entries.len(), "do-not-call list: added");
    // Read back what is stored (an entry that existed keeps its date).
    let mut out = Vec::with_capacity(entries.len());
    for (p, _) in &entries {
        let stored = st.store.get_dnc(p).await?;
        out.extend(stored);
    }
    let body = if many {
        serde_json::to_value(out)
    } else {
        serde_json::to_value(out.into_iter().next())
    }
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /api/v1/dnc`: the list in number order, paged.
#[utoipa::path(
    get,
    path = "/api/v1/dnc",
    operation_id = "list_dnc",
    tag = "dnc",
    params(PageParams),
    responses((status = 200, description = "A page of the list", body = Page<DncEntry>))
)]
pub(super) async fn list(
    State(st): State<AppState>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<Page<crate::leads::dnc::DncEntry>>, ApiError> {
    let limit = page.limit()?;
    let after = match page.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            decode_cursor(c, &st.default_region).ok_or(ApiError::BadParam {
                param: "cursor",
                reason: "not a cursor returned by this list",
            })?,
        ),
    };
    let mut data = st
        .store
        .list_dnc(after.as_ref(), i64::from(limit) + 1)
        .await?;
    let next = if data.len() > limit as usize {
        data.truncate(limit as usize);
        data.last().map(|e| hex::encode(&e.number))
    } else {
        None
    };
    Ok(Json(Page { data, next }))
}

/// The cursor is the last number shown, hex-encoded.
fn decode_cursor(c: &str, region: &str) -> Option<DncPattern> {
    let text = String::from_utf8(hex::decode(c).ok()?).ok()?;
    DncPattern::parse(&text, region).ok()
}

/// `DELETE /api/v1/dnc/{number}`.
#[utoipa::path(
    delete,
    path = "/api/v1/dnc/{number}",
    operation_id = "remove_dnc",
    tag = "dnc",
    params(("number" = String, Path, description = "The number or prefix (`+1900*`), URL-encoded")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a number or prefix", body = ErrorBody),
    )
)]
pub(super) async fn remove(
    State(st): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let pattern = DncPattern::parse(&raw, &st.default_region).map_err(|e| ValidationError {
        field: "number".into(),
        reason: ValidationReason::DncPattern(e),
    })?;
    if st.store.delete_dnc(&pattern).await? {
        tracing::info!(number = %pattern, "do-not-call list: removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "{pattern} is not on the do-not-call list"
        )))
    }
}
