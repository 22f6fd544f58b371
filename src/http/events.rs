//! `GET /api/v1/events`: Server-Sent Events of every dialer state change
//! (agent states, call outcomes, queue counts, resets), as JSON.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};

use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::{ApiError, AppState};

/// The event stream. A client that falls behind gets a `lagged` event
/// with how many events it missed, then the stream goes on.
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
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
