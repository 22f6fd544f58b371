//! The do-not-call list over HTTP (SPEC §4): `POST /api/v1/dnc` with
//! `{number, reason?}` or an array of them (a number, or a prefix such as
//! `"+1900*"`), `GET /api/v1/dnc` paged in number order, `DELETE
//! /api/v1/dnc/{number}`. A number on the list never reaches the wire: the
//! call engine asks the list before every dial.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{now, ApiError, ApiJson, AppState, Page, PageParams};
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDnc {
    /// A number (normalised to E.164 with `[leads] default_region`) or a
    /// prefix ending in `*`.
    pub number: String,
    /// Why (shown in the list).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/v1/dnc`: one entry or an array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum NewDncBody {
    /// One entry.
    One(NewDnc),
    /// Several entries, added in one transaction.
    Many(Vec<NewDnc>),
}

fn field(many: bool, i: usize, name: &str) -> String {
    if many {
        format!("[{i}].{name}")
    } else {
        name.to_string()
    }
}

async fn add(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<NewDncBody>,
) -> Result<Response, ApiError> {
    let (items, many) = match body {
        NewDncBody::One(d) => (vec![d], false),
        NewDncBody::Many(v) => (v, true),
    };
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

async fn list(
    State(st): State<AppState>,
    Query(page): Query<PageParams>,
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

async fn remove(
    State(st): State<AppState>,
    Path(raw): Path<String>,
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
