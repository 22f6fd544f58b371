//! `POST /api/v1/agents/{agent}/webrtc` and `DELETE …/webrtc/{id}`: the
//! browser as the agent's phone, WHIP-style (RFC 9725 §4.2–§4.3; SPEC §4).
//! The body is the browser's complete offer (no trickle ICE), the answer
//! comes back in the 201 with the phone's URL in `Location`; a DELETE of
//! that URL hangs the phone up. Auth: the agent's own token or the admin's.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;

use super::openapi::ErrorBody;
use super::{ApiError, ApiPath, AppState};
use crate::call::browser_phone::{BrowserPhoneError, BrowserPhones};

/// Largest SDP offer accepted (Chromium's audio-only offer is ~4 KB).
const SDP_LIMIT: usize = 64 * 1024;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/agents/{username}/webrtc", post(open))
        .route("/api/v1/agents/{username}/webrtc/{id}", delete(hang_up))
}

fn phones(st: &AppState) -> Result<&BrowserPhones, ApiError> {
    st.calls
        .as_ref()
        .map(|c| c.browser_phones())
        .ok_or_else(|| ApiError::Unavailable {
            code: "no_call_engine",
            message: "this server runs without SIP: there is no call engine for a browser phone"
                .into(),
            retry_after_s: 60,
        })
}

fn check_agent(st: &AppState, agent: &str) -> Result<(), ApiError> {
    let known = st.agents.iter().any(|a| a.username == agent)
        || st.calls.as_ref().is_some_and(|c| c.knows_agent(agent));
    if known {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("agent {agent} not found")))
    }
}

/// `POST /api/v1/agents/{agent}/webrtc`: takes the browser's SDP offer and
/// answers (ICE-lite, DTLS-SRTP, PCMU); while the phone is up the agent's
/// session calls use it as the agent leg.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{username}/webrtc",
    operation_id = "open_browser_phone",
    tag = "agents",
    params(("username" = String, Path, description = "The agent")),
    request_body(content = String, content_type = "application/sdp",
        description = "The browser's complete SDP offer (RFC 9725 §4.2, no trickle ICE)"),
    responses(
        (status = 201, description = "The SDP answer; Location is the phone's URL",
            content_type = "application/sdp", body = String,
            headers(("Location" = String, description = "DELETE it to hang up"))),
        (status = 422, description = "The offer is not usable SDP (or has no PCMU audio)", body = ErrorBody),
        (status = 400, description = "The body is not UTF-8", body = ErrorBody),
        (status = 413, description = "The offer is over 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not application/sdp", body = ErrorBody),
        (status = 503, description = "No media port free", body = ErrorBody),
    )
)]
pub(super) async fn open(
    State(st): State<AppState>,
    ApiPath(agent): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctype = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if ctype.as_deref() != Some("application/sdp") {
        return Err(ApiError::UnsupportedMediaType("application/sdp"));
    }
    check_agent(&st, &agent)?;
    if body.len() > SDP_LIMIT {
        return Err(ApiError::PayloadTooLarge);
    }
    let offer = std::str::from_utf8(&body).map_err(|_| ApiError::BadParam {
        param: "body",
        reason: "the SDP offer is not UTF-8",
    })?;
    let (id, answer) = phones(&st)?
        .open(&agent, offer)
        .await
        .map_err(|e| match e {
            BrowserPhoneError::BadOffer(_)
            | BrowserPhoneError::NoAudio
            | BrowserPhoneError::Rtc(_) => ApiError::WrongShape(e.to_string()),
            BrowserPhoneError::Socket(_) => ApiError::Unavailable {
                code: "rtp_ports_exhausted",
                message: format!("{e}: retry when calls end, or widen server.rtp_ports"),
                retry_after_s: 5,
            },
        })?;
    let location = format!("/api/v1/agents/{agent}/webrtc/{id}");
    Ok((
        StatusCode::CREATED,
        [
            (CONTENT_TYPE, "application/sdp".to_string()),
            (LOCATION, location),
        ],
        answer,
    )
        .into_response())
}

/// `DELETE /api/v1/agents/{agent}/webrtc/{id}`: hangs the browser phone up
/// (RFC 9725 §4.3).
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{username}/webrtc/{id}",
    operation_id = "close_browser_phone",
    tag = "agents",
    params(
        ("username" = String, Path, description = "The agent"),
        ("id" = String, Path, description = "The phone, from the Location of its POST"),
    ),
    responses(
        (status = 200, description = "Hung up"),
    )
)]
pub(super) async fn hang_up(
    State(st): State<AppState>,
    ApiPath((agent, id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("no browser phone {id} of agent {agent}"));
    let n: u64 = id.parse().map_err(|_| not_found())?;
    if phones(&st)?.hang_up(&agent, n) {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(not_found())
    }
}
