//! The callback router (SPEC §1 "Leads calling back"): a driver task that
//! takes every INVITE the endpoint recognised as a call from a trunk to one
//! of our caller IDs ([`crate::sip::endpoint::Routed::new_call`]).
//!
//! For each call it makes an [`InboundLeg`] at once (100 Trying), then
//! identifies the caller — the P-Asserted-Identity (RFC 3325) or From user,
//! normalised to E.164 and matched against the leads' phones — and offers
//! the call to agents in this order:
//! 1. the agent who last called that lead, when that agent is in a session;
//! 2. the other agents of that session;
//! 3. for a caller with no lead, or whose last agent is in no session,
//!    every agent in a session.
//!
//! The agent task takes the call only when the agent is free (its
//! nailed-up leg connected and idle, or no leg and a registered phone) and
//! answers or rings it from then on; when no one takes it, the caller gets
//! `dialer.callback_fallback` (486 Busy Here by default). A number on the
//! do-not-call list is answered like any other: the list is about our
//! dialing, not about taking calls. While the router holds a call (before
//! an agent takes it) it answers CANCEL with 487 and absorbs
//! retransmissions; messages that reach it after the hand-over are
//! forwarded to the agent's task.

#![allow(clippy::disallowed_methods)] // a driver: this is where the clock is read.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::engine::{CallEngine, InboundCall, RouteChange, RoutedMessage};
use super::{uri_user, InboundEvent, InboundLeg, LocalAddress};
use crate::config::CallbackFallback;
use crate::leads::PhoneE164;
use crate::sip::syntax::{HeadersExt, Method, Request, SipMessage};
use crate::sip::transaction::TimerConfig;
use crate::sip::transport::TransportHandle;
use crate::store::Store;

/// What [`SessionMembers::members`] returns.
pub type MembersFuture<'a> = Pin<Box<dyn Future<Output = Vec<(String, i64)>> + Send + 'a>>;

/// Who is in a dialer session now: `(agent, session id)` pairs, agents
/// that left excluded (implemented by `dialer::directory::Sessions`).
pub trait SessionMembers: Send + Sync + 'static {
    /// The pairs, in no particular order.
    fn members(&self) -> MembersFuture<'_>;
}

/// What the router needs (built by `server::start`).
pub struct CallbackIo {
    /// The call engine: its agent tasks take the calls.
    pub engine: CallEngine,
    /// Leads and call history.
    pub store: Store,
    /// The sessions' agents.
    pub members: Arc<dyn SessionMembers>,
    /// The SIP sockets.
    pub transport: TransportHandle,
    /// The SIP task's Call-ID routes.
    pub routes: mpsc::UnboundedSender<RouteChange>,
    /// Our addresses.
    pub local: LocalAddress,
    /// The transaction timers.
    pub timers: TimerConfig,
    /// `leads.default_region`, for callers' numbers in national form.
    pub default_region: String,
    /// `dialer.callback_fallback`.
    pub fallback: CallbackFallback,
}

/// Where a call goes: agents to offer it to, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The lead the caller's number belongs to, if any.
    pub lead_id: Option<i64>,
    /// `(agent, session id)` in the order they are offered the call.
    pub candidates: Vec<(String, i64)>,
}

/// The order agents are offered a callback (see the module docs): the
/// lead's last agent when in a session, then that session's others; else
/// every agent in a session.
pub fn candidates(last_agent: Option<&str>, members: &[(String, i64)]) -> Vec<(String, i64)> {
    let mut members: Vec<(String, i64)> = members.to_vec();
    members.sort();
    members.dedup_by(|a, b| a.0 == b.0);
    if let Some(first) = last_agent.and_then(|a| members.iter().find(|(m, _)| m == a).cloned()) {
        let mut out = vec![first.clone()];
        out.extend(
            members
                .iter()
                .filter(|(a, s)| *s == first.1 && *a != first.0)
                .cloned(),
        );
        return out;
    }
    members
}

/// The caller's number as sent: the P-Asserted-Identity user (RFC 3325,
/// set by the carrier) before the From user.
pub fn caller_user(invite: &Request) -> Option<String> {
    let pai = invite.headers.iter().find_map(|h| {
        let s = h.to_string();
        let (name, value) = s.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("P-Asserted-Identity")
            .then(|| value.trim().to_string())
    });
    if let Some(user) = pai.as_deref().and_then(uri_user) {
        return Some(user.to_string());
    }
    let from = invite.from_header().ok()?.value().to_string();
    uri_user(&from).map(str::to_string)
}

enum Held {
    /// The router holds the leg while the routing is decided.
    Deciding(Box<InboundLeg>),
    /// An agent task took it; stray messages go there until this instant.
    Handed(String, Instant),
}

/// How long messages of a handed-over call may still reach the router
/// (sent before the SIP task saw the route change): forwarded meanwhile.
const HANDED_GRACE: Duration = Duration::from_secs(40);

/// Runs the router until `shutdown`.
pub async fn run(
    io: CallbackIo,
    mut rx: mpsc::UnboundedReceiver<RoutedMessage>,
    shutdown: CancellationToken,
) {
    let io = Arc::new(io);
    let mut rng = StdRng::from_entropy();
    let mut calls: HashMap<String, Held> = HashMap::new();
    let (decided_tx, mut decided_rx) = mpsc::unbounded_channel::<(String, Routing, String)>();
    loop {
        let deadline = calls
            .values()
            .filter_map(|h| match h {
                Held::Deciding(leg) => leg.poll_timeout(),
                Held::Handed(_, until) => Some(*until),
            })
            .min();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer => {
                let now = Instant::now();
                calls.retain(|_, h| !matches!(h, Held::Handed(_, until) if *until <= now));
                for h in calls.values_mut() {
                    if let Held::Deciding(leg) = h {
                        if leg.poll_timeout().is_some_and(|d| d <= now) {
                            leg.handle_timeout(now);
                        }
                    }
                }
            }
            msg = rx.recv() => {
                let Some(m) = msg else { return };
                on_message(&io, &mut rng, &mut calls, &decided_tx, m);
            }
            decided = decided_rx.recv() => {
                if let Some((call_id, routing, number)) = decided {
                    hand_over(&io, &mut calls, call_id, routing, number).await;
                }
            }
        }
        flush(&io, &mut calls).await;
    }
}

fn call_id_of(message: &SipMessage) -> Option<String> {
    match message {
        SipMessage::Request(r) => r.call_id_header().ok().map(|c| c.value().to_string()),
        SipMessage::Response(r) => r.call_id_header().ok().map(|c| c.value().to_string()),
    }
}

fn on_message(
    io: &Arc<CallbackIo>,
    rng: &mut StdRng,
    calls: &mut HashMap<String, Held>,
    decided: &mpsc::UnboundedSender<(String, Routing, String)>,
    m: RoutedMessage,
) {
    let Some(call_id) = call_id_of(&m.message) else {
        return;
    };
    let now = Instant::now();
    match calls.get_mut(&call_id) {
        Some(Held::Deciding(leg)) => {
            if let Err(e) = leg.handle_message(now, m.peer, *m.message) {
                tracing::debug!(error = %e, "message refused by a callback leg");
            }
        }
        Some(Held::Handed(agent, _)) => io.engine.forward_sip(agent, m),
        None => {
            let SipMessage::Request(invite) = *m.message else {
                return;
            };
            if invite.method != Method::Invite {
                return;
            }
            let user = caller_user(&invite);
            let leg =
                match InboundLeg::accept(now, m.peer, invite, rng, io.timers, io.local.clone()) {
                    Ok(leg) => leg,
                    Err(e) => {
                        tracing::info!(error = %e, "callback INVITE not taken");
                        return;
                    }
                };
            // The SIP task routes the call's further messages here already.
            tracing::info!(%call_id, caller = ?user, "callback from the trunk");
            calls.insert(call_id.clone(), Held::Deciding(Box::new(leg)));
            let io = io.clone();
            let tx = decided.clone();
            tokio::spawn(async move {
                let (routing, number) = route(&io, user.as_deref()).await;
                let _ = tx.send((call_id, routing, number));
            });
        }
    }
}

/// Identifies the caller and orders the agents.
async fn route(io: &CallbackIo, user: Option<&str>) -> (Routing, String) {
    let e164 = user.and_then(|u| PhoneE164::parse(u, &io.default_region).ok());
    let number = e164
        .as_ref()
        .map(|p| p.as_str().to_string())
        .or(user.map(str::to_string))
        .unwrap_or_default();
    let lead_id = match &e164 {
        Some(p) => io
            .store
            .lead_by_phone(p.as_str())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "callback: lead lookup failed");
                None
            }),
        None => None,
    };
    let last = match lead_id {
        Some(id) => io
            .store
            .last_agent_for_lead(id)
            .await
            .ok()
            .flatten()
            .map(|(a, _)| a),
        None => None,
    };
    let members = io.members.members().await;
    let candidates = candidates(last.as_deref(), &members);
    tracing::info!(caller = %number, lead = ?lead_id, last_agent = ?last, ?candidates, "callback routing");
    (
        Routing {
            lead_id,
            candidates,
        },
        number,
    )
}

async fn hand_over(
    io: &Arc<CallbackIo>,
    calls: &mut HashMap<String, Held>,
    call_id: String,
    routing: Routing,
    number: String,
) {
    let Some(Held::Deciding(leg)) = calls.remove(&call_id) else {
        return;
    };
    if !leg.is_offered() {
        // Cancelled while the routing was decided: let it finish here.
        calls.insert(call_id, Held::Deciding(leg));
        return;
    }
    let mut call = Box::new(InboundCall {
        leg: *leg,
        lead_id: routing.lead_id,
        session_id: None,
        number,
    });
    for (agent, session) in routing.candidates {
        call.session_id = Some(session);
        match io.engine.take_inbound(&agent, call).await {
            Ok(()) => {
                calls.insert(call_id, Held::Handed(agent, Instant::now() + HANDED_GRACE));
                return;
            }
            Err((e, back)) => {
                tracing::debug!(%agent, error = %e, "callback: agent not free");
                call = back;
            }
        }
    }
    let code = io.fallback.status();
    tracing::info!(%call_id, code, "callback: no agent free: fallback");
    let reason = match io.fallback {
        CallbackFallback::Busy => "Busy Here",
        CallbackFallback::Unavailable => "Temporarily Unavailable",
    };
    call.leg.reject(Instant::now(), code, reason);
    calls.insert(call_id, Held::Deciding(Box::new(call.leg)));
}

/// Sends what the held legs queued and drops the finished ones.
async fn flush(io: &CallbackIo, calls: &mut HashMap<String, Held>) {
    let mut out = Vec::new();
    let mut closed = Vec::new();
    for (id, h) in calls.iter_mut() {
        if let Held::Deciding(leg) = h {
            while let Some(t) = leg.poll_transmit() {
                out.push(t);
            }
            while let Some(ev) = leg.poll_event() {
                if ev == InboundEvent::Closed {
                    closed.push(id.clone());
                }
            }
        }
    }
    for id in closed {
        calls.remove(&id);
        let _ = io.routes.send(RouteChange::Remove(id));
    }
    for t in out {
        let bytes = Bytes::from(crate::sip::message::to_wire(&t.message));
        if let Err(e) = io.transport.send(t.peer, bytes).await {
            tracing::info!(error = %e, peer = %t.peer, "callback: SIP send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(list: &[(&str, i64)]) -> Vec<(String, i64)> {
        list.iter().map(|(a, s)| (a.to_string(), *s)).collect()
    }

    #[test]
    fn the_last_agent_first_then_that_session_only() {
        let members = m(&[("carol", 2), ("bob", 1), ("alice", 1)]);
        assert_eq!(
            candidates(Some("bob"), &members),
            m(&[("bob", 1), ("alice", 1)])
        );
        assert_eq!(candidates(Some("carol"), &members), m(&[("carol", 2)]));
    }

    #[test]
    fn unknown_callers_and_absent_agents_reach_anyone_in_a_session() {
        let members = m(&[("carol", 2), ("bob", 1), ("alice", 1)]);
        let all = m(&[("alice", 1), ("bob", 1), ("carol", 2)]);
        assert_eq!(candidates(None, &members), all);
        assert_eq!(candidates(Some("dave"), &members), all);
        assert!(candidates(Some("bob"), &[]).is_empty());
    }

    #[test]
    fn caller_from_pai_before_from() {
        let text = "INVITE sip:+15550000000@127.0.0.1 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKx\r\nMax-Forwards: 70\r\n\
            From: <sip:anonymous@carrier>;tag=a\r\nTo: <sip:+15550000000@127.0.0.1>\r\n\
            Call-ID: c\r\nCSeq: 1 INVITE\r\n\
            P-Asserted-Identity: <sip:+14155550101@carrier;user=phone>\r\nContent-Length: 0\r\n\r\n";
        let r = Request::try_from(text.as_bytes().to_vec()).expect("request");
        assert_eq!(caller_user(&r).as_deref(), Some("+14155550101"));
        let r = Request::try_from(
            text.replace(
                "P-Asserted-Identity: <sip:+14155550101@carrier;user=phone>\r\n",
                "",
            )
            .into_bytes(),
        )
        .expect("request");
        assert_eq!(caller_user(&r).as_deref(), Some("anonymous"));
    }
}
