//! Lead routes (SPEC §4): create (one or an array), get, patch, delete,
//! list with paging, CSV import, logging a call made elsewhere, and custom
//! field definitions.

use std::io::Cursor;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::openapi::ErrorBody;
use super::paging::encode_cursor;
use super::{
    created, now, parse_id, ApiError, ApiJson, ApiPath, ApiQuery, AppState, Page, PageParams,
};
use crate::leads::import::import_csv;
use crate::leads::import::ImportReport;
use crate::leads::model::{
    time_to_ms, CallRecord, CustomField, Lead, LeadPatch, LoggedCall, NewCustomField, NewLead,
};
use crate::leads::phone::PhoneE164;
use crate::leads::ValidationError;

/// The lead, call-log and custom-field routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/leads", post(create_leads).get(list_leads))
        .route(
            "/api/v1/leads/{id}",
            get(get_lead).patch(patch_lead).delete(delete_lead),
        )
        .route(
            "/api/v1/leads/import",
            post(import).layer(DefaultBodyLimit::max(super::IMPORT_BODY_LIMIT)),
        )
        .route("/api/v1/leads/{id}/calls", post(log_call))
        .route(
            "/api/v1/custom-fields",
            post(define_custom_field).get(list_custom_fields),
        )
}

/// `POST /api/v1/leads` body: one lead or an array (SPEC §4).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // The schema of a body read as JSON and split by hand.
enum NewLeads {
    One(NewLead),
    Many(Vec<NewLead>),
}

/// `POST /api/v1/leads` answer: the created lead, or an array for an array.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // The schema of a body built by hand.
enum CreatedLeads {
    One(Lead),
    Many(Vec<Lead>),
}

/// `POST /api/v1/leads`: one lead or an array, all validated before any is
/// stored, then stored in one transaction; answers the created object(s).
#[utoipa::path(
    post,
    path = "/api/v1/leads",
    tag = "leads",
    request_body = NewLeads,
    responses(
        (status = 201, description = "The created lead, or an array for an array", body = CreatedLeads),
        (status = 400, description = "A field fails validation (nothing stored)", body = ErrorBody),
    )
)]
pub(super) async fn create_leads(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let fields = st.store.custom_field_set().await?;
    let now = now();
    let (inputs, is_array) = match body {
        serde_json::Value::Array(items) => (items, true),
        one => (vec![one], false),
    };
    let mut valid = Vec::with_capacity(inputs.len());
    for (i, item) in inputs.into_iter().enumerate() {
        let prefix = if is_array {
            format!("[{i}]: ")
        } else {
            String::new()
        };
        let lead: NewLead = super::json::from_value(item).map_err(|e| match e {
            ApiError::WrongShape(m) => ApiError::WrongShape(format!("{prefix}{m}")),
            other => other,
        })?;
        let v = lead
            .validate(&fields, &st.default_region, now)
            .map_err(|e| {
                if is_array {
                    ValidationError {
                        field: format!("[{i}].{}", e.field),
                        reason: e.reason,
                    }
                } else {
                    e
                }
            })?;
        valid.push(v);
    }
    let ids = st.store.insert_leads(&valid, time_to_ms(now)).await?;
    st.leads_changed_ids(&ids);
    let mut leads = st.store.get_leads(&ids).await?;
    Ok(if is_array {
        created(leads).into_response()
    } else {
        let lead = leads
            .pop()
            .ok_or_else(|| ApiError::Internal("created lead vanished".into()))?;
        created(lead).into_response()
    })
}

/// `GET /api/v1/leads/{id}`: the lead and its notes (SPEC §1 step 5).
#[utoipa::path(
    get,
    path = "/api/v1/leads/{id}",
    tag = "leads",
    params(("id" = i64, Path, description = "The lead's id")),
    responses((status = 200, description = "The lead with its latest notes", body = super::lead_notes::LeadWithNotes))
)]
pub(super) async fn get_lead(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "lead")?;
    Ok(Json(super::lead_notes::lead_with_notes(&st, id).await?).into_response())
}

/// `PATCH /api/v1/leads/{id}`: absent keys are kept (see [`LeadPatch`]).
#[utoipa::path(
    patch,
    path = "/api/v1/leads/{id}",
    tag = "leads",
    params(("id" = i64, Path, description = "The lead's id")),
    request_body = LeadPatch,
    responses((status = 200, description = "The updated lead", body = Lead))
)]
pub(super) async fn patch_lead(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<LeadPatch>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "lead")?;
    let fields = st.store.custom_field_set().await?;
    let now = now();
    let valid = patch.validate(&fields, &st.default_region, now)?;
    let lead = st.store.update_lead(id, &valid, time_to_ms(now)).await?;
    st.leads_changed_ids(&[id]);
    Ok(Json(lead).into_response())
}

/// `DELETE /api/v1/leads/{id}`.
#[utoipa::path(
    delete,
    path = "/api/v1/leads/{id}",
    tag = "leads",
    params(("id" = i64, Path, description = "The lead's id")),
    responses((status = 204, description = "Deleted"))
)]
pub(super) async fn delete_lead(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "lead")?;
    st.store.delete_lead(id).await?;
    st.leads_changed_ids(&[id]);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/leads`: by id, keyset-paged.
#[utoipa::path(
    get,
    path = "/api/v1/leads",
    tag = "leads",
    params(PageParams),
    responses((status = 200, description = "A page of leads, by id", body = Page<Lead>))
)]
pub(super) async fn list_leads(
    State(st): State<AppState>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let limit = p.limit()?;
    let after = p.cursor('L')?.and_then(|k| k.first().copied());
    // One more than asked tells whether a next page exists.
    let mut data = st.store.list_leads(after, limit + 1).await?;
    let next = if data.len() > limit as usize {
        data.truncate(limit as usize);
        data.last().map(|l| encode_cursor('L', &[l.id]))
    } else {
        None
    };
    Ok(Json(Page { data, next }).into_response())
}

/// `POST /api/v1/leads/import`: a `text/csv` body; answers the report.
#[utoipa::path(
    post,
    path = "/api/v1/leads/import",
    operation_id = "import_leads",
    tag = "leads",
    request_body(content = String, content_type = "text/csv", description = "CSV with a header row"),
    responses(
        (status = 200, description = "What was imported and which rows failed", body = ImportReport),
        (status = 400, description = "The CSV cannot be imported at all", body = ErrorBody),
        (status = 413, description = "The body exceeds the import limit", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: text/csv`", body = ErrorBody),
    )
)]
pub(super) async fn import(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    super::require_csv(&headers)?;
    let body = body?;
    let report = import_csv(
        &st.store,
        Cursor::new(body),
        &st.default_region,
        now(),
        |_| {},
    )
    .await?;
    st.leads_changed();
    Ok(Json(report).into_response())
}

/// `POST /api/v1/leads/{id}/calls`: `{created, outcome, duration_s}`; the
/// call counts for `called` and `latest_call_created` (SPEC §4).
#[utoipa::path(
    post,
    path = "/api/v1/leads/{id}/calls",
    tag = "leads",
    params(("id" = i64, Path, description = "The lead's id")),
    request_body = LoggedCall,
    responses((status = 201, description = "The stored call record", body = CallRecord))
)]
pub(super) async fn log_call(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(call): ApiJson<LoggedCall>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "lead")?;
    let lead = st.store.get_lead(id).await?;
    let number = match &call.number {
        Some(raw) => PhoneE164::parse(raw, &st.default_region)
            .map_err(|e| ValidationError::new("number", e))?
            .to_string(),
        None => lead
            .first_phone()
            .map(|p| p.to_string())
            .unwrap_or_default(),
    };
    let record = st.store.insert_call(&call.to_new_call(id, number)?).await?;
    st.leads_changed_ids(&[id]);
    Ok(created(record).into_response())
}

/// `POST /api/v1/custom-fields`: `{name, type, choices?}`; 409 if the name
/// exists.
#[utoipa::path(
    post,
    path = "/api/v1/custom-fields",
    tag = "leads",
    request_body = NewCustomField,
    responses(
        (status = 201, description = "The defined field", body = CustomField),
        (status = 409, description = "A field of that name exists", body = ErrorBody),
    )
)]
pub(super) async fn define_custom_field(
    State(st): State<AppState>,
    ApiJson(field): ApiJson<NewCustomField>,
) -> Result<Response, ApiError> {
    field.validate()?;
    Ok(created(st.store.define_custom_field(&field).await?).into_response())
}

/// `GET /api/v1/custom-fields`: every defined field (one page).
#[utoipa::path(
    get,
    path = "/api/v1/custom-fields",
    tag = "leads",
    responses((status = 200, description = "The custom fields", body = Page<CustomField>))
)]
pub(super) async fn list_custom_fields(State(st): State<AppState>) -> Result<Response, ApiError> {
    let data = st.store.list_custom_fields().await?;
    Ok(Json(Page { data, next: None }).into_response())
}
