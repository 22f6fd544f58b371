//! `GET /api/v1/events`: Server-Sent Events of every dialer state change
//! (agent states, call outcomes, queue counts, resets) as `state` events
//! and manual calls' progress as `call` events, JSON. Each event has an id;
//! a client that reconnects with `Last-Event-ID` gets what it missed (a
//! `reset` event when too much was missed to replay: re-read the state).
//! `?session_id=` and `?agent=` keep one session's or one agent's events.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::event_log::LoggedEvent;
use super::{ApiError, ApiQuery, AppState};

/// The stream's filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilter {
    /// Only this session's events (and those naming no session).
    pub session_id: Option<i64>,
    /// Only this agent's events (and those naming no agent).
    pub agent: Option<String>,
}

fn sse(e: &LoggedEvent) -> Event {
    Event::default()
        .id(e.id.to_string())
        .event(e.kind)
        .data(&*e.data)
}

/// The event stream. A client that falls behind gets a `lagged` event
/// with how many events it missed, then the stream goes on.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    operation_id = "get_events",
    tag = "events",
    params(
        EventFilter,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event (a `reset` event when too much was missed)"),
    ),
    responses(
        (status = 200, description = "A stream of `state`, `call`, `lagged` and `reset` events, JSON data", content_type = "text/event-stream", body = String),
        (status = 404, description = "The dialer is not running", body = super::openapi::ErrorBody),
    )
)]
pub async fn events(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiQuery(filter): ApiQuery<EventFilter>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let log = st
        .event_log
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("the dialer is not running".into()))?;
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let resume = log.resume(last_id);
    let session = filter.session_id;
    let agent = filter.agent;
    let mut first: Vec<Result<Event, Infallible>> = Vec::new();
    if resume.gap {
        first.push(Ok(Event::default().event("reset").data(
            r#"{"type":"reset","reason":"events were missed: re-read the state"}"#,
        )));
    }
    let replayed = resume.missed.last().map_or(last_id.unwrap_or(0), |e| e.id);
    first.extend(
        resume
            .missed
            .iter()
            .filter(|e| e.wanted(session, agent.as_deref()))
            .map(|e| Ok(sse(e))),
    );
    let live = BroadcastStream::new(resume.live).filter_map(move |item| match item {
        Ok(e) if e.id > replayed && e.wanted(session, agent.as_deref()) => Some(Ok(sse(&e))),
        Ok(_) => None,
        Err(BroadcastStreamRecvError::Lagged(n)) => {
            Some(Ok(Event::default().event("lagged").data(n.to_string())))
        }
    });
    Ok(Sse::new(tokio_stream::iter(first).chain(live)).keep_alive(KeepAlive::default()))
}
