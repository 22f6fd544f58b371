//! The do-not-call list over HTTP (SPEC §4): `POST /api/v1/dnc` with
//! `{number, reason?}` or an array of them (a number, or a prefix such as
//! `"+1900*"`), `GET /api/v1/dnc` paged in number order, `DELETE
//! /api/v1/dnc/{number}`, and `POST /api/v1/dnc/import` for the lists
//! compliance teams keep as CSV. A number on the list never reaches the
//! wire: the call engine asks the list before every dial.

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
        .route(
            "/api/v1/dnc/import",
            post(import).layer(axum::extract::DefaultBodyLimit::max(
                super::IMPORT_BODY_LIMIT,
            )),
        )
}

/// What a CSV import of the do-not-call list did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DncImportReport {
    /// Entries added (or refreshed).
    pub added: usize,
    /// Rows that were not: line and why (the first 1,000).
    pub failed: Vec<DncRowFailure>,
    /// Rows that failed in all.
    pub failed_count: usize,
}

/// One refused row of a do-not-call CSV.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DncRowFailure {
    /// The row's line in the file (1 is the header).
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// `POST /api/v1/dnc/import`: a `text/csv` body with a header row naming a
/// `number` column (a number or a `+prefix*`) and optionally `reason`.
/// Good rows are added, in batches; bad ones are reported by line and
/// stop nothing.
#[utoipa::path(
    post,
    path = "/api/v1/dnc/import",
    operation_id = "import_dnc",
    tag = "dnc",
    request_body(content = String, content_type = "text/csv", description = "CSV with a header row: `number`, optionally `reason`"),
    responses(
        (status = 200, description = "How many entries were added and which rows failed", body = DncImportReport),
        (status = 400, description = "No `number` column", body = ErrorBody),
        (status = 413, description = "The body exceeds the import limit", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: text/csv`", body = ErrorBody),
    )
)]
pub(super) async fn import(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<DncImportReport>, ApiError> {
    super::require_csv(&headers)?;
    let body = body?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(&body[..]);
    let header = reader.headers().map_err(|_| ApiError::BadParam {
        param: "body",
        reason: "the CSV needs a header row with a `number` column",
    })?;
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let number_col = col("number").ok_or(ApiError::BadParam {
        param: "body",
        reason: "the CSV needs a header row with a `number` column",
    })?;
    let reason_col = col("reason");
    let mut report = DncImportReport {
        added: 0,
        failed: Vec::new(),
        failed_count: 0,
    };
    let fail = |report: &mut DncImportReport, line: u64, reason: String| {
        report.failed_count += 1;
        if report.failed.len() < 1_000 {
            report.failed.push(DncRowFailure { line, reason });
        }
    };
    let mut batch = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                fail(&mut report, line, format!("unreadable row: {e}"));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let raw = record.get(number_col).unwrap_or("");
        match DncPattern::parse(raw, &st.default_region) {
            Ok(p) => {
                let reason = reason_col
                    .and_then(|c| record.get(c))
                    .filter(|r| !r.is_empty())
                    .map(|r| r.chars().take(MAX_REASON_LEN).collect::<String>());
                batch.push((p, reason));
            }
            Err(e) => fail(&mut report, line, e.to_string()),
        }
        if batch.len() == 1_000 {
            st.store.add_dnc(&batch, time_to_ms(now())).await?;
            report.added += batch.len();
            batch.clear();
        }
    }
    if !batch.is_empty() {
        st.store.add_dnc(&batch, time_to_ms(now())).await?;
        report.added += batch.len();
    }
    tracing::info!(
        added = report.added,
        failed = report.failed_count,
        "do-not-call list: CSV imported"
    );
    Ok(Json(report))
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
