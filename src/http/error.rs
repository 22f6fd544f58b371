//! The one HTTP error type: every failure becomes `{error: {code, message}}`
//! (plus `field` for validation errors) with a fitting status, and internal
//! details are logged, never sent (SPEC §4 "Errors"; DESIGN.md "Errors").

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::leads::import::ImportError;
use crate::leads::model::ValidationError;
use crate::store::StoreError;

/// An API failure and the status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON (syntax error at a position).
    #[error("malformed JSON: {0}")]
    BadJson(String),
    /// 422: JSON of the wrong shape (missing key, wrong type, unknown key).
    #[error("{0}")]
    WrongShape(String),
    /// 415: a JSON route called without `Content-Type: application/json`, or
    /// the import without a CSV body.
    #[error("unsupported content type: expected {0}")]
    UnsupportedMediaType(&'static str),
    /// 400: a field fails validation.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// 400: a bad query parameter (`limit`, `cursor`).
    #[error("{param}: {reason}")]
    BadParam {
        /// The parameter's name.
        param: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// 400: the CSV cannot be imported at all (unknown column, no header).
    #[error(transparent)]
    Import(ImportError),
    /// 401: no or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 404: no such route or row.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 413: the body exceeds the route's limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// A store failure: mapped by kind.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500: anything else (logged).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_)
            | ApiError::Validation(_)
            | ApiError::BadParam { .. }
            | ApiError::Import(_) => StatusCode::BAD_REQUEST,
            ApiError::WrongShape(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Store(e) => match e {
                StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
                StoreError::Conflict(_) => StatusCode::CONFLICT,
                StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadJson(_) => "bad_json",
            ApiError::WrongShape(_) => "unprocessable",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Validation(_) => "invalid",
            ApiError::BadParam { .. } => "bad_parameter",
            ApiError::Import(_) => "bad_csv",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Store(e) => match e {
                StoreError::NotFound { .. } => "not_found",
                StoreError::Conflict(_) => "conflict",
                StoreError::Invalid(_) => "unprocessable",
                _ => "internal",
            },
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error".to_string()
        } else {
            self.to_string()
        };
        let mut body = json!({"error": {"code": self.code(), "message": message}});
        if let ApiError::Validation(v) = &self {
            body["error"]["field"] = json!(v.field);
        }
        (status, Json(body)).into_response()
    }
}

fn bytes_rejection(r: &BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::BadJson(r.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => ApiError::BadJson(e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::WrongShape(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::UnsupportedMediaType("application/json")
            }
            JsonRejection::BytesRejection(b) => bytes_rejection(&b),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            other => ApiError::BadJson(other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        bytes_rejection(&r)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(_: QueryRejection) -> Self {
        ApiError::BadParam {
            param: "query",
            reason: "malformed query string",
        }
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Store(s) => ApiError::Store(s),
            other => ApiError::Import(other),
        }
    }
}
