//! The one HTTP error type: every failure becomes `{error: {code, message}}`
//! (plus `field` for validation errors) with a fitting status, and internal
//! details are logged, never sent (SPEC §4 "Errors"; DESIGN.md "Errors").

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
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
    /// 400: an uploaded voicemail message is not a usable WAV file.
    #[error(transparent)]
    Wav(#[from] crate::media::voicemail::WavError),
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
    /// 503: a resource is exhausted for now; the message says which and
    /// the configuration key that sizes it, `Retry-After` when to retry
    /// (RFC 9110 §15.6.4, §10.2.3).
    #[error("{message}")]
    Unavailable {
        /// The stable machine-readable code.
        code: &'static str,
        /// What is exhausted and how to fix it, for the user.
        message: String,
        /// Seconds after which a retry may succeed.
        retry_after_s: u32,
    },
    /// 429: too many failed sign-ins from this address; `Retry-After`
    /// says when it may try again (RFC 6585 §4).
    #[error("too many failed sign-ins from this address: try again in {retry_after_s} s")]
    TooManyFailures {
        /// Seconds until the address may try again.
        retry_after_s: u32,
    },
    /// 403: authenticated, but not allowed this (an agent token acting
    /// for another agent, or on an admin route).
    #[error("{0}")]
    Forbidden(String),
    /// 409: the request conflicts with how things are (the message says
    /// what to do instead).
    #[error("{0}")]
    Conflict(String),
    /// 409: a request with this `Idempotency-Key` is still running.
    #[error("a request with this Idempotency-Key is still being processed: retry in a moment")]
    IdempotencyInFlight,
    /// 422: this `Idempotency-Key` was used for a different request.
    #[error("this Idempotency-Key was already used for a different request: use a new key for a new request")]
    IdempotencyKeyReused,
    /// 500: anything else. The cause is logged, never sent.
    #[error("internal error: {0}")]
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
            ApiError::Wav(_) => StatusCode::BAD_REQUEST,
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
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::IdempotencyInFlight | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadJson(_) => "bad_json",
            ApiError::WrongShape(_) => "unprocessable",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Wav(_) => "bad_audio",
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
            ApiError::Unavailable { code, .. } => code,
            ApiError::TooManyFailures { .. } => "too_many_failures",
            ApiError::IdempotencyInFlight => "idempotency_key_in_flight",
            ApiError::Conflict(_) => "conflict",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// An error and its chain of sources, `outer: inner: …`, for the log: a
/// logged failure always says why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        // `#[error(transparent)]` and `{0}` wrappers repeat their source.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Unavailable { message, .. } => {
                tracing::warn!(status = status.as_u16(), code = self.code(), error = %message, "request refused");
                message.clone()
            }
            _ if status.is_server_error() => {
                // The cause goes to the log only (SPEC §4 "Errors").
                tracing::error!(status = status.as_u16(), error = %error_chain(&self), "request failed");
                "internal error".to_string()
            }
            _ => self.to_string(),
        };
        let mut body = json!({"error": {"code": self.code(), "message": message}});
        if let ApiError::Validation(v) = &self {
            body["error"]["field"] = json!(v.field);
        }
        let mut response = (status, Json(body)).into_response();
        if let ApiError::Unavailable { retry_after_s, .. }
        | ApiError::TooManyFailures { retry_after_s } = &self
        {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        response
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

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        match r {
            // A segment that does not decode names no object.
            PathRejection::FailedToDeserializePathParams(e) => {
                ApiError::NotFound(format!("no such object: {}", e.body_text()))
            }
            // The route and its handler disagree: a server bug.
            other => ApiError::Internal(other.body_text()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_carry_their_cause() {
        let e = ApiError::Internal("no call engine".into());
        assert_eq!(error_chain(&e), "internal error: no call engine");
        let io = std::io::Error::other("disk full");
        let e = ApiError::Store(StoreError::Io(io));
        assert_eq!(
            error_chain(&e),
            "cannot create the database directory: disk full"
        );
    }

    #[test]
    fn unavailable_is_503_with_retry_after_and_its_message() {
        let e = ApiError::Unavailable {
            code: "rtp_ports_exhausted",
            message: "server.rtp_ports 20000-20003 exhausted".into(),
            retry_after_s: 5,
        };
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "5");
    }
}
