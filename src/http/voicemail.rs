//! Voicemail messages and call recordings over HTTP (SPEC §4):
//!
//! - `POST /api/v1/voicemail-drops`: an `audio/wav` body (8 kHz mono;
//!   16-bit PCM, A-law or μ-law) → 201 `{id, duration_ms}`; a session's
//!   `voicemail_drop_id` names it. Stored as 16-bit PCM under
//!   `<data_dir>/voicemail/`.
//! - `GET /api/v1/calls/{id}/recording`: the call's recording as
//!   `audio/wav` (404 when the call was not recorded).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::openapi::ErrorBody;
use super::{parse_id, ApiError, ApiPath, AppState};
use crate::media::voicemail::{parse_wav, write_wav};

/// A 120 s message as 16-bit PCM is under 2 MB; WAV headers and stray
/// chunks get the rest.
const WAV_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/voicemail-drops",
            post(upload).layer(DefaultBodyLimit::max(WAV_BODY_LIMIT)),
        )
        .route("/api/v1/calls/{id}/recording", get(recording))
}

fn require_wav(headers: &HeaderMap) -> Result<(), ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match ctype.as_deref() {
        // Generic binary uploads (curl --data-binary, HTTP clients that do
        // not know WAV) are read as WAV too; the parser says what is wrong.
        Some(
            "audio/wav"
            | "audio/x-wav"
            | "audio/wave"
            | "audio/vnd.wave"
            | "application/octet-stream",
        ) => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType("audio/wav")),
    }
}

/// An uploaded message.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct CreatedDrop {
    /// Its id, for a session's `voicemail_drop_id`.
    id: i64,
    /// Its length, ms.
    duration_ms: i64,
}

/// `POST /api/v1/voicemail-drops`: stores a voicemail message.
#[utoipa::path(
    post,
    path = "/api/v1/voicemail-drops",
    operation_id = "upload_voicemail_drop",
    tag = "voicemail",
    request_body(
        description = "WAV, 8 kHz mono: 16-bit PCM, A-law or μ-law, at most 120 s",
        content((Vec<u8> = "audio/wav"), (Vec<u8> = "application/octet-stream"))
    ),
    responses(
        (status = 201, description = "The stored message", body = CreatedDrop),
        (status = 400, description = "Not a usable WAV file (the message says why)", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: audio/wav`", body = ErrorBody),
    )
)]
pub(super) async fn upload(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_wav(&headers)?;
    let body = body?;
    let pcm = parse_wav(&body)?;
    let duration_ms = i64::try_from(pcm.len() as u64 * 1000 / u64::from(crate::media::amd::RATE))
        .unwrap_or(i64::MAX);
    let dir = st.data_dir.join("voicemail");
    let file = format!("{}.wav", hex::encode(rand::random::<[u8; 12]>()));
    let bytes = write_wav(&pcm, 1);
    let path = dir.join(&file);
    let written = async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(&path, bytes).await
    }
    .await;
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "voicemail message not written");
        return Err(ApiError::Internal(format!(
            "the message could not be stored: {e}"
        )));
    }
    let id = st
        .store
        .insert_voicemail_drop(&file, duration_ms, super::now().timestamp_millis())
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedDrop { id, duration_ms })).into_response())
}

/// `GET /api/v1/calls/{id}/recording`: the recording as `audio/wav`.
#[utoipa::path(
    get,
    path = "/api/v1/calls/{id}/recording",
    operation_id = "get_call_recording",
    tag = "calls",
    params(("id" = i64, Path, description = "The call record's id")),
    responses(
        (status = 200, description = "The recording: WAV, 8 kHz, 16-bit, two channels (lead left, agent right)", content_type = "audio/wav", body = Vec<u8>),
        (status = 404, description = "No such call, or it was not recorded", body = ErrorBody),
    )
)]
pub(super) async fn recording(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "call")?;
    let Some(file) = st.store.call_recording(id).await? else {
        return Err(ApiError::NotFound(format!("call {id} has no recording")));
    };
    // Only a plain file name is ever stored; anything else is not served.
    if file.contains(['/', '\\']) || file.starts_with('.') {
        return Err(ApiError::NotFound(format!("call {id} has no recording")));
    }
    let path = st.data_dir.join("recordings").join(&file);
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(([(header::CONTENT_TYPE, "audio/wav")], bytes).into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::NotFound(format!(
            "call {id}'s recording is gone (removed by [recording] retention_days)"
        ))),
        Err(e) => Err(ApiError::Internal(format!("recording not read: {e}"))),
    }
}
