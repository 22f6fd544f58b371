//! `GET /api/v1/events`: Server-Sent Events of every dialer state change
//! (agent states, call outcomes, queue counts, resets), as JSON.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};

use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use serde::Serialize;

use super::{ApiError, AppState};
use crate::call::engine::{CallEvent, CallProgress};

/// A manual call's progress on the event stream (`event: call`, SPEC §4:
/// "the call's progress follows in GET /api/v1/calls/{id} and the event
/// stream").
#[derive(Debug, Serialize)]
struct CallProgressEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    call_id: i64,
    agent: &'a str,
    state: CallProgress,
}

/// The event stream. A client that falls behind gets a `lagged` event
/// with how many events it missed, then the stream goes on. Dialer state
/// changes come as `state` events, manual calls' progress as `call` events.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    operation_id = "get_events",
    tag = "events",
    responses(
        (status = 200, description = "A stream of `state`, `call` and `lagged` events, JSON data", content_type = "text/event-stream", body = String),
        (status = 404, description = "The dialer is not running", body = super::openapi::ErrorBody),
    )
)]
pub async fn events(
    State(st): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let sessions = st
        .sessions
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("the dialer is not running".into()))?;
    let stream = BroadcastStream::new(sessions.subscribe()).filter_map(|item| {
        let event = match item {
            Ok(ev) => Event::default().event("state").json_data(&ev).ok()?,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                Event::default().event("lagged").data(n.to_string())
            }
        };
        Some(Ok(event))
    });
    // Without a call engine, a channel whose sender is gone: no events.
    let calls = match &st.calls {
        Some(c) => c.subscribe(),
        None => tokio::sync::broadcast::channel(1).1,
    };
    let calls = BroadcastStream::new(calls).filter_map(|item| {
        let event = match item {
            Ok(CallEvent::CallProgress {
                agent,
                call_id,
                state,
            }) => Event::default()
                .event("call")
                .json_data(CallProgressEvent {
                    kind: "call",
                    call_id,
                    agent: &agent,
                    state,
                })
                .ok()?,
            Ok(_) => return None,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                Event::default().event("lagged").data(n.to_string())
            }
        };
        Some(Ok(event))
    });
    Ok(Sse::new(stream.merge(calls)).keep_alive(KeepAlive::default()))
}
