//! One agent's dialing state in a session (SPEC §1 flow, R9, R14), sans-IO:
//! inputs are `handle_*`/command methods taking `now`, outputs are
//! [`AgentAction`]s drained with [`AgentMachine::poll_action`] and one
//! deadline from [`AgentMachine::poll_timeout`] (DESIGN.md core shape). The
//! session driver turns actions into call-engine requests and queue claims.
//!
//! ```text
//! joining → calling-agent → ready → dialing → ringing → connected → wrap-up → ready …
//!                  ↑                    └──────────(unanswered)──────────────┘
//!               resume ← paused  ← pause / '0' / agent leg hung up
//! ```
//!
//! Decisions where the SPEC is silent:
//! - **Wrap-up** follows an answered call: it lasts `wrap_up_idle` after the
//!   call ended or after the last typing heartbeat, whichever is later, and
//!   ends at once on `next`. After an unanswered call the agent moves on at
//!   once unless a typing heartbeat came within `wrap_up_idle` (an agent
//!   noting something about the lead is not interrupted by a new call).
//! - **Pause during a call** lets the call go on; the agent is paused when
//!   it ends (no wrap-up). Pause while the agent leg is being set up keeps
//!   the leg; resume then dials at once.
//! - **Next while dialing or ringing** skips the lead (R9: the engine
//!   CANCELs, outcome `skipped`) and dials the next one without wrap-up;
//!   **next while connected** hangs the lead up and moves on without
//!   wrap-up. **Hangup** ends the lead call (skip while ringing) and the
//!   agent goes to wrap-up as after any call.
//! - **The agent leg hung up** (BYE from the phone, or it failed): paused
//!   (SPEC §1 step 6); a lead call in progress is ended by the engine and
//!   reported as usual. Resume sets the leg up again.
//! - **No lead eligible**: ready and idle until the queue's next block
//!   expiry ([`AgentMachine::handle_no_lead`]) or a refresh
//!   ([`AgentMachine::poke`]).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::queue::{Claim, LeadId};

/// Where an agent stands (SPEC §1 flow), as listed by `GET
/// /api/v1/sessions/{id}` and the events stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Joined, nothing done yet.
    Joining,
    /// The agent leg is being set up (SPEC §1 step 2).
    CallingAgent,
    /// The agent leg is up; claiming a lead, or idle until one is eligible.
    Ready,
    /// A lead is claimed and its INVITE sent (step 3).
    Dialing,
    /// The lead's phone rings (180/183).
    Ringing,
    /// The lead answered; agent and lead talk (step 4).
    Connected,
    /// The call ended; the agent writes notes (step 5).
    WrapUp,
    /// Paused by the agent or by the agent leg hanging up (R14, step 6).
    Paused,
    /// Left the session.
    Left,
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentState::Joining => "joining",
            AgentState::CallingAgent => "calling_agent",
            AgentState::Ready => "ready",
            AgentState::Dialing => "dialing",
            AgentState::Ringing => "ringing",
            AgentState::Connected => "connected",
            AgentState::WrapUp => "wrap_up",
            AgentState::Paused => "paused",
            AgentState::Left => "left",
        })
    }
}

/// What the session driver must do for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAction {
    /// Set up the nailed-up agent leg (`CallEngine::connect_agent`).
    ConnectAgent,
    /// Claim the next lead (queue, then the database, R13) and dial it, then
    /// report [`AgentMachine::handle_dialing`] or
    /// [`AgentMachine::handle_no_lead`].
    ClaimNext,
    /// End the lead call: CANCEL while ringing (R9), BYE once answered
    /// (`CallEngine::skip`).
    SkipLead,
    /// Hang up the agent leg (`CallEngine::disconnect_agent`).
    DisconnectAgent,
}

/// A command that does not apply in the agent's current state (HTTP 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command} while {state}")]
pub struct NotNow {
    /// The command refused.
    pub command: &'static str,
    /// The state it was refused in.
    pub state: AgentState,
}

/// The call the agent is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentCall {
    /// The queue's claim (lead and generation).
    pub claim: Claim,
    /// The call record id once the engine returned it.
    pub call_id: Option<i64>,
}

/// A lead calling back that the engine put through to this agent (SPEC
/// §1 "Leads calling back"): no queue claim, shown like a lead call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callback {
    /// The call record.
    pub call_id: i64,
    /// The lead, if the caller's number is one of a lead's.
    pub lead_id: Option<i64>,
}

/// One agent's state machine in a session (see the module docs).
#[derive(Debug, Clone)]
pub struct AgentMachine {
    state: AgentState,
    /// A callback in progress, and the state to go back to after it.
    callback: Option<(Callback, AgentState)>,
    /// The callback that ended last, shown during its wrap-up.
    ended_callback: Option<Callback>,
    leg_up: bool,
    call: Option<CurrentCall>,
    /// The call that ended last: the one the agent's notes are about while
    /// in wrap-up (SPEC §1 step 5).
    ended: Option<CurrentCall>,
    claim_pending: bool,
    pause_after_call: bool,
    skip_wrap_up: bool,
    wrap_up_until: Option<Instant>,
    wake_at: Option<Instant>,
    last_typing: Option<Instant>,
    wrap_up_idle: Duration,
    actions: VecDeque<AgentAction>,
}

impl AgentMachine {
    /// A new agent, in `joining`; `wrap_up_idle` is the session's setting.
    pub fn new(wrap_up_idle: Duration) -> AgentMachine {
        AgentMachine {
            state: AgentState::Joining,
            callback: None,
            ended_callback: None,
            leg_up: false,
            call: None,
            ended: None,
            claim_pending: false,
            pause_after_call: false,
            skip_wrap_up: false,
            wrap_up_until: None,
            wake_at: None,
            last_typing: None,
            wrap_up_idle,
            actions: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> AgentState {
        self.state
    }

    /// The call in progress, if any.
    pub fn call(&self) -> Option<CurrentCall> {
        self.call
    }

    /// The call the agent's screen is about: the one in progress, or in
    /// wrap-up the one that just ended (its lead and record stay shown while
    /// the agent writes notes, SPEC §1 step 5).
    pub fn shown_call(&self) -> Option<CurrentCall> {
        match (self.call, self.state) {
            (Some(c), _) => Some(c),
            (None, AgentState::WrapUp) => self.ended,
            (None, _) => None,
        }
    }

    /// The callback the agent's screen is about: the one in progress, or
    /// in wrap-up the one that just ended.
    pub fn shown_callback(&self) -> Option<Callback> {
        match (self.callback, self.state) {
            (Some((c, _)), _) => Some(c),
            (None, AgentState::WrapUp) if self.call.is_none() => self.ended_callback,
            _ => None,
        }
    }

    /// Whether a callback is in progress (no lead is claimed meanwhile).
    pub fn on_callback(&self) -> bool {
        self.callback.is_some()
    }

    /// The engine put a lead calling back through to this agent (it was
    /// free: no lead call in progress): connected, no claim until it ends.
    pub fn handle_callback(&mut self, callback: Callback) {
        if self.call.is_some() || self.callback.is_some() || self.state == AgentState::Left {
            return;
        }
        let back = match self.state {
            AgentState::Paused | AgentState::Joining => AgentState::Paused,
            _ => AgentState::Ready,
        };
        self.callback = Some((callback, back));
        self.ended = None;
        self.ended_callback = None;
        self.wrap_up_until = None;
        self.wake_at = None;
        self.state = AgentState::Connected;
    }

    /// The callback `call_id` ended: wrap-up as after an answered call
    /// (or paused, if the agent was paused before it or asked to be);
    /// false if it is not this agent's callback.
    pub fn handle_callback_ended(&mut self, now: Instant, call_id: i64) -> bool {
        let Some((c, back)) = self.callback.filter(|(c, _)| c.call_id == call_id) else {
            return false;
        };
        self.callback = None;
        self.ended_callback = Some(c);
        if self.state == AgentState::Left {
            return true;
        }
        if back == AgentState::Paused || std::mem::take(&mut self.pause_after_call) || !self.leg_up
        {
            self.state = AgentState::Paused;
            return true;
        }
        if std::mem::take(&mut self.skip_wrap_up) {
            self.claim();
            return true;
        }
        self.state = AgentState::WrapUp;
        self.wrap_up_until = Some(now + self.wrap_up_idle);
        true
    }

    /// Whether the agent leg is up.
    pub fn leg_up(&self) -> bool {
        self.leg_up
    }

    /// Changes the wrap-up idle time (PATCH of the session's settings).
    pub fn set_wrap_up_idle(&mut self, d: Duration) {
        self.wrap_up_idle = d;
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<AgentAction> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called: the end
    /// of wrap-up, or when an idle agent should try to claim again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            AgentState::WrapUp => self.wrap_up_until,
            AgentState::Ready if !self.claim_pending => self.wake_at,
            _ => None,
        }
    }

    /// SPEC §1 step 1–2: the agent joined; set up its leg.
    pub fn join(&mut self) {
        if self.state == AgentState::Joining || self.state == AgentState::Left {
            self.call_agent();
        }
    }

    /// After a restart: the agent was paused and stays so until resume.
    pub fn restore_paused(&mut self) {
        self.state = AgentState::Paused;
    }

    fn call_agent(&mut self) {
        self.state = AgentState::CallingAgent;
        self.actions.push_back(AgentAction::ConnectAgent);
    }

    fn claim(&mut self) {
        self.state = AgentState::Ready;
        self.wake_at = None;
        if !self.claim_pending {
            self.claim_pending = true;
            self.actions.push_back(AgentAction::ClaimNext);
        }
    }

    /// The agent answered the agent leg.
    pub fn handle_agent_connected(&mut self) {
        self.leg_up = true;
        if self.state == AgentState::CallingAgent {
            self.claim();
        }
    }

    /// The agent leg could not be set up (no binding, declined, timeout):
    /// paused until resume.
    pub fn handle_agent_failed(&mut self) {
        self.leg_up = false;
        if self.state == AgentState::CallingAgent {
            self.state = AgentState::Paused;
        }
    }

    /// The agent leg ended (SPEC §1 step 6): paused; a lead call in progress
    /// is ended by the engine and its end reported as usual.
    pub fn handle_agent_disconnected(&mut self) {
        self.leg_up = false;
        match self.state {
            AgentState::Dialing | AgentState::Ringing | AgentState::Connected => {
                self.pause_after_call = true;
            }
            AgentState::Left => {}
            _ => self.state = AgentState::Paused,
        }
    }

    /// A lead was claimed for this agent and is being dialed.
    pub fn handle_dialing(&mut self, claim: Claim) {
        self.claim_pending = false;
        self.call = Some(CurrentCall {
            claim,
            call_id: None,
        });
        self.skip_wrap_up = false;
        self.state = AgentState::Dialing;
    }

    /// The engine accepted the dial and created the call record.
    pub fn handle_call_started(&mut self, call_id: i64) {
        if let Some(c) = &mut self.call {
            c.call_id = Some(call_id);
        }
    }

    /// No lead may be called now: idle until `wake_at` (a block expiry, R4)
    /// or a [`poke`](Self::poke) (refresh, R6); `None` waits for a poke.
    /// If the agent paused meanwhile, it stays paused.
    pub fn handle_no_lead(&mut self, wake_at: Option<Instant>) {
        self.claim_pending = false;
        if self.state == AgentState::Ready {
            self.wake_at = wake_at;
        }
    }

    /// The dial could not be placed (the agent leg is gone, the engine
    /// refused): the claim was released by the driver; paused.
    pub fn handle_dial_failed(&mut self) {
        self.claim_pending = false;
        self.call = None;
        if self.state != AgentState::Left {
            self.state = AgentState::Paused;
        }
    }

    fn is_current(&self, call_id: i64) -> bool {
        self.call
            .is_some_and(|c| c.call_id.is_none_or(|id| id == call_id))
    }

    /// The lead's phone rings (180/183).
    pub fn handle_lead_ringing(&mut self, call_id: i64) {
        if self.state == AgentState::Dialing && self.is_current(call_id) {
            self.state = AgentState::Ringing;
        }
    }

    /// The lead answered (200 OK): agent and lead are bridged.
    pub fn handle_lead_answered(&mut self, call_id: i64) {
        if matches!(self.state, AgentState::Dialing | AgentState::Ringing)
            && self.is_current(call_id)
        {
            self.state = AgentState::Connected;
        }
    }

    /// The lead call ended (the driver reports the outcome to the queue).
    /// Returns the claim it was made under, or `None` for a call that is not
    /// this agent's current one.
    pub fn handle_call_ended(
        &mut self,
        now: Instant,
        call_id: i64,
        answered: bool,
    ) -> Option<Claim> {
        if !self.is_current(call_id) {
            return None;
        }
        self.ended = self.call.take();
        let claim = self.ended.map(|c| c.claim);
        if self.state == AgentState::Left {
            return claim;
        }
        if self.pause_after_call || !self.leg_up {
            self.pause_after_call = false;
            self.state = AgentState::Paused;
            return claim;
        }
        if std::mem::take(&mut self.skip_wrap_up) {
            self.claim();
            return claim;
        }
        let typed = self.last_typing.map(|t| t + self.wrap_up_idle);
        let until = if answered {
            Some(typed.map_or(now + self.wrap_up_idle, |t| t.max(now + self.wrap_up_idle)))
        } else {
            typed.filter(|t| *t > now)
        };
        match until {
            Some(t) if t > now => {
                self.state = AgentState::WrapUp;
                self.wrap_up_until = Some(t);
            }
            _ => self.claim(),
        }
        claim
    }

    /// A typing heartbeat: wrap-up lasts at least `wrap_up_idle` more.
    pub fn typing(&mut self, now: Instant) {
        self.last_typing = Some(now);
        if self.state == AgentState::WrapUp {
            let t = now + self.wrap_up_idle;
            self.wrap_up_until = Some(self.wrap_up_until.map_or(t, |u| u.max(t)));
        }
    }

    /// "Call next lead" (`*`): ends wrap-up or idling at once; while dialing
    /// or ringing skips the lead (R9), while connected hangs it up; in both
    /// cases the next lead is dialed without wrap-up. From pause: resume.
    pub fn next(&mut self, now: Instant) -> Result<(), NotNow> {
        match self.state {
            AgentState::WrapUp | AgentState::Ready => {
                self.last_typing = None;
                self.claim();
                Ok(())
            }
            AgentState::Dialing | AgentState::Ringing | AgentState::Connected => {
                self.skip_wrap_up = true;
                self.actions.push_back(AgentAction::SkipLead);
                Ok(())
            }
            AgentState::Paused => self.resume(now),
            state => Err(NotNow {
                command: "call the next lead",
                state,
            }),
        }
    }

    /// `*` on the phone: like [`next`](Self::next), but the engine already
    /// ended the lead call, so no [`AgentAction::SkipLead`] is asked.
    pub fn next_from_phone(&mut self, now: Instant) -> Result<(), NotNow> {
        match self.state {
            AgentState::Dialing | AgentState::Ringing | AgentState::Connected => {
                self.skip_wrap_up = true;
                Ok(())
            }
            _ => self.next(now),
        }
    }

    /// Hang up the lead call (`#`): skip while ringing (R9), BYE once
    /// answered; wrap-up follows as after any call.
    pub fn hangup(&mut self) -> Result<(), NotNow> {
        match self.state {
            AgentState::Dialing | AgentState::Ringing | AgentState::Connected => {
                self.actions.push_back(AgentAction::SkipLead);
                Ok(())
            }
            state => Err(NotNow {
                command: "hang up",
                state,
            }),
        }
    }

    /// Pause (R14, `0`): at once when not on a call, else when the call ends.
    pub fn pause(&mut self) -> Result<(), NotNow> {
        match self.state {
            AgentState::Dialing | AgentState::Ringing | AgentState::Connected => {
                self.pause_after_call = true;
                Ok(())
            }
            AgentState::Left => Err(NotNow {
                command: "pause",
                state: AgentState::Left,
            }),
            _ => {
                self.state = AgentState::Paused;
                self.wake_at = None;
                self.wrap_up_until = None;
                Ok(())
            }
        }
    }

    /// Resume (R14): dial again, setting the agent leg up first if it is
    /// gone (SPEC §1 step 6). A pause requested during a call is cancelled.
    pub fn resume(&mut self, _now: Instant) -> Result<(), NotNow> {
        match self.state {
            AgentState::Paused | AgentState::Joining => {
                if self.leg_up {
                    self.claim();
                } else {
                    self.call_agent();
                }
                Ok(())
            }
            AgentState::Dialing | AgentState::Ringing | AgentState::Connected => {
                self.pause_after_call = false;
                Ok(())
            }
            AgentState::Left => Err(NotNow {
                command: "resume",
                state: AgentState::Left,
            }),
            // Already dialing (or setting the leg up): nothing to do.
            _ => Ok(()),
        }
    }

    /// A refresh or a report may have made a lead eligible (R6): an idle
    /// agent tries to claim again.
    pub fn poke(&mut self) {
        if self.state == AgentState::Ready && !self.claim_pending {
            self.claim();
        }
    }

    /// The agent leaves the session: a lead call is ended, the agent leg
    /// hung up.
    pub fn leave(&mut self) {
        if self.call.is_some() {
            self.actions.push_back(AgentAction::SkipLead);
        }
        self.actions.push_back(AgentAction::DisconnectAgent);
        self.state = AgentState::Left;
    }

    /// Timers: wrap-up over (moves on by itself), or an idle agent's wake-up.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            AgentState::WrapUp if self.wrap_up_until.is_some_and(|t| t <= now) => {
                self.wrap_up_until = None;
                self.last_typing = None;
                self.claim();
            }
            AgentState::Ready if self.wake_at.is_some_and(|t| t <= now) => self.claim(),
            _ => {}
        }
    }
}

/// The lead of a claim, for logs.
impl CurrentCall {
    /// The lead called.
    pub fn lead(&self) -> LeadId {
        self.claim.lead
    }
}

#[cfg(test)]
mod tests;
