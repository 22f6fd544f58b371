//! The event stream's memory (SPEC §4 `GET /api/v1/events`): every dialer
//! state change and manual-call step gets a number and is kept in a ring of
//! the last [`KEEP`], so a client that reconnects with `Last-Event-ID`
//! (the SSE standard's resume) gets what it missed, and clients can ask for
//! one session's or one agent's events only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::call::engine::{CallEvent, CallProgress};
use crate::dialer::session::SessionEvent;

/// Events kept for resuming clients.
pub const KEEP: usize = 4096;

/// One numbered event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Increasing from 1 for the life of the process.
    pub id: u64,
    /// The SSE event name: `state` (dialer) or `call` (manual calls).
    pub kind: &'static str,
    /// The JSON data. Boxed to its length: the ring keeps [`KEEP`] of
    /// these, a few per call, and a serializer's `String` carries up to
    /// twice its length in spare room (SPEC §6 memory).
    pub data: Box<str>,
    /// The session it is about, if any.
    pub session_id: Option<i64>,
    /// The agent it is about, if any.
    pub agent: Option<Box<str>>,
}

impl LoggedEvent {
    /// Whether a client asking for `session` and/or `agent` wants it:
    /// events that name another session or agent are left out; events
    /// naming neither are for everyone.
    pub fn wanted(&self, session: Option<i64>, agent: Option<&str>) -> bool {
        let session_ok = match (session, self.session_id) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        };
        let agent_ok = match (agent, self.agent.as_deref()) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        };
        session_ok && agent_ok
    }
}

/// A manual call's progress as the stream shows it (`event: call`).
#[derive(Debug, Serialize)]
struct CallProgressEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    call_id: i64,
    agent: &'a str,
    state: CallProgress,
}

/// Answering-machine detection's verdict as the stream shows it (`event:
/// amd`, SPEC §4).
#[derive(Debug, Serialize)]
struct AmdEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    call_id: i64,
    agent: &'a str,
    amd: crate::media::amd::Verdict,
    amd_ms: i64,
}

/// The numbered events: a ring for resuming, a channel for the live tail.
#[derive(Debug)]
pub struct EventLog {
    ring: Mutex<VecDeque<Arc<LoggedEvent>>>,
    tx: broadcast::Sender<Arc<LoggedEvent>>,
}

/// What a (re)connecting client gets.
#[derive(Debug)]
pub struct Resume {
    /// Events after its `Last-Event-ID`, oldest first.
    pub missed: Vec<Arc<LoggedEvent>>,
    /// Its `Last-Event-ID` is older than the ring: some events are gone and
    /// it should re-read the state.
    pub gap: bool,
    /// The live tail (events after `missed`; duplicates skipped by id).
    pub live: broadcast::Receiver<Arc<LoggedEvent>>,
}

impl EventLog {
    /// Starts numbering the dialer's and the call engine's events.
    pub fn start(
        sessions: broadcast::Receiver<SessionEvent>,
        calls: Option<broadcast::Receiver<CallEvent>>,
    ) -> Arc<EventLog> {
        let (tx, _) = broadcast::channel(1024);
        let log = Arc::new(EventLog {
            ring: Mutex::new(VecDeque::with_capacity(KEEP)),
            tx,
        });
        tokio::spawn(pump(log.clone(), sessions, calls));
        log
    }

    /// Numbers and keeps an event (a copy of `data` of its exact length),
    /// and sends it to the live clients. `session_id` and `agent` are the
    /// ones `data` names, given by the caller from the typed event (a
    /// dialer at full rate pushes several per call: parsing the JSON back
    /// to find them cost more than writing it).
    pub fn push(
        &self,
        kind: &'static str,
        data: &str,
        session_id: Option<i64>,
        agent: Option<&str>,
    ) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let id = ring.back().map_or(1, |e| e.id + 1);
        let event = Arc::new(LoggedEvent {
            id,
            kind,
            session_id,
            agent: agent.map(Box::from),
            data: Box::from(data),
        });
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(event.clone());
        // Sent under the lock, so ids reach the channel in order.
        let _ = self.tx.send(event);
    }

    /// Subscribes, with the events after `last_id` (a `Last-Event-ID`).
    pub fn resume(&self, last_id: Option<u64>) -> Resume {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let live = self.tx.subscribe();
        let Some(last) = last_id else {
            return Resume {
                missed: Vec::new(),
                gap: false,
                live,
            };
        };
        let oldest = ring.front().map_or(last + 1, |e| e.id);
        Resume {
            missed: ring.iter().filter(|e| e.id > last).cloned().collect(),
            gap: last + 1 < oldest,
            live,
        }
    }
}

/// `value` as JSON in `buf` (emptied first).
fn to_json<'a>(buf: &'a mut Vec<u8>, value: &impl Serialize) -> Option<&'a str> {
    buf.clear();
    serde_json::to_writer(&mut *buf, value).ok()?;
    std::str::from_utf8(buf).ok()
}

async fn pump(
    log: Arc<EventLog>,
    mut sessions: broadcast::Receiver<SessionEvent>,
    calls: Option<broadcast::Receiver<CallEvent>>,
) {
    let mut calls = calls;
    // One serializer buffer for the life of the pump: each event is then
    // copied out at its exact length ([`EventLog::push`]).
    let mut buf = Vec::with_capacity(512);
    loop {
        let call_event = async {
            match calls.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = sessions.recv() => match ev {
                Ok(ev) => {
                    if let Some(data) = to_json(&mut buf, &ev) {
                        log.push("state", data, Some(ev.session_id()), ev.agent());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event log fell behind the dialer");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            ev = call_event => match ev {
                Ok(CallEvent::CallProgress { agent, call_id, state }) => {
                    let data = CallProgressEvent { kind: "call", call_id, agent: &agent, state };
                    if let Some(data) = to_json(&mut buf, &data) {
                        log.push("call", data, None, Some(&agent));
                    }
                }
                Ok(CallEvent::Amd { agent, call_id, verdict, amd_ms }) => {
                    let data = AmdEvent { kind: "amd", call_id, agent: &agent, amd: verdict, amd_ms };
                    if let Some(data) = to_json(&mut buf, &data) {
                        log.push("amd", data, None, Some(&agent));
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event log fell behind the call engine");
                }
                Err(broadcast::error::RecvError::Closed) => calls = None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> EventLog {
        EventLog {
            ring: Mutex::new(VecDeque::new()),
            tx: broadcast::channel(16).0,
        }
    }

    #[test]
    fn resume_returns_what_was_missed_and_says_when_some_is_gone() {
        let l = log();
        for i in 0..5 {
            l.push(
                "state",
                &format!(r#"{{"session_id": {i}, "agent": "alice"}}"#),
                Some(i),
                Some("alice"),
            );
        }
        let r = l.resume(Some(3));
        assert_eq!(r.missed.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 5]);
        assert!(!r.gap);
        assert!(l.resume(None).missed.is_empty());
        // Overflow the ring: a client far behind is told it missed some.
        for _ in 0..KEEP {
            l.push("state", "{}", None, None);
        }
        let r = l.resume(Some(2));
        assert!(r.gap);
        assert_eq!(r.missed.len(), KEEP);
    }

    #[test]
    fn filters_by_session_and_agent() {
        let l = log();
        l.push(
            "state",
            r#"{"session_id": 1, "agent": "alice"}"#,
            Some(1),
            Some("alice"),
        );
        l.push(
            "state",
            r#"{"session_id": 2, "agent": "bob"}"#,
            Some(2),
            Some("bob"),
        );
        l.push("state", r#"{"session_id": 2}"#, Some(2), None);
        let r = l.resume(Some(0));
        let ids = |s: Option<i64>, a: Option<&str>| {
            r.missed
                .iter()
                .filter(|e| e.wanted(s, a))
                .map(|e| e.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(Some(2), None), [2, 3]);
        assert_eq!(ids(None, Some("alice")), [1, 3]);
        assert_eq!(ids(Some(2), Some("alice")), [3]);
        assert_eq!(ids(None, None), [1, 2, 3]);
    }

    #[tokio::test]
    async fn the_pump_names_each_events_session_and_agent() {
        let (sessions, rx) = broadcast::channel(16);
        let log = EventLog::start(rx, None);
        let mut live = log.resume(None).live;
        sessions
            .send(SessionEvent::Reset { session_id: 7 })
            .expect("send");
        sessions
            .send(SessionEvent::CallEnded {
                session_id: 8,
                agent: "alice".into(),
                call_id: 1,
                lead_id: Some(2),
                outcome: crate::call::Outcome::NoAnswer,
            })
            .expect("send");
        let reset = live.recv().await.expect("event");
        let ended = live.recv().await.expect("event");
        assert_eq!((reset.session_id, reset.agent.as_deref()), (Some(7), None));
        assert_eq!(
            (ended.session_id, ended.agent.as_deref()),
            (Some(8), Some("alice"))
        );
        let data: serde_json::Value = serde_json::from_str(&ended.data).expect("json");
        assert_eq!(data["session_id"], 8);
        assert_eq!(data["agent"], "alice");
        assert!(ended.wanted(Some(8), Some("alice")));
        assert!(!ended.wanted(Some(7), None));
    }
}
