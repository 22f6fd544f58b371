//! The seam between sessions and the call engine (issue 5, "the seam"): what
//! a session asks of the engine ([`Dialer`]) and what it hears back
//! ([`CallEvent`]). `crate::call::engine::CallEngine` implements [`Dialer`]
//! in a few lines once it lands; unit tests drive sessions with a scripted
//! implementation under a simulated clock.

use std::future::Future;

use tokio::sync::broadcast;

use super::queue;

/// A lead call to place (R2 number, R8 ring time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRequest {
    /// The lead's first contact's first phone (R2), as stored (E.164).
    pub number: String,
    /// The lead, for the call record.
    pub lead_id: Option<i64>,
    /// The session, for the call record.
    pub session_id: Option<i64>,
    /// R8: `reduced_ring_timeout` instead of `ring_timeout`.
    pub reduced_ring_time: bool,
}

/// Why the engine refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// The agent has no registered phone.
    #[error("the agent has no registered contact")]
    NoBinding,
    /// The agent's phone declined the agent leg with this status.
    #[error("the agent declined ({0})")]
    Declined(u16),
    /// The agent's phone did not answer in time.
    #[error("the agent did not answer")]
    Timeout,
    /// The agent leg is not up, or a call is already in progress.
    #[error("the agent leg is not ready")]
    NotReady,
    /// The engine is gone (shutting down).
    #[error("the call engine is not running")]
    Closed,
}

/// How a lead call ended (SPEC §4 call record `outcome`).
pub type CallOutcome = crate::call::Outcome;

/// What the engine reports (all agents, all sessions; each session filters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// The agent answered the agent leg.
    AgentConnected {
        /// The agent.
        agent: String,
    },
    /// The agent leg ended or failed: the session pauses the agent (SPEC §1 step 6).
    AgentDisconnected {
        /// The agent.
        agent: String,
    },
    /// The lead's phone rings.
    LeadRinging {
        /// The agent.
        agent: String,
        /// The call record.
        call_id: i64,
    },
    /// The lead answered.
    LeadAnswered {
        /// The agent.
        agent: String,
        /// The call record.
        call_id: i64,
    },
    /// The lead call ended; sent after its record is stored.
    CallEnded {
        /// The agent.
        agent: String,
        /// The call record.
        call_id: i64,
        /// The lead called.
        lead_id: Option<i64>,
        /// The session it was dialed for.
        session_id: Option<i64>,
        /// R5, R8–R12.
        outcome: CallOutcome,
        /// The final SIP status, if any.
        sip_status: Option<u16>,
    },
    /// A DTMF digit from the agent's phone: `*` next, `#` hang up, `0` pause
    /// (SPEC §5); the engine already did the SIP part of `*` and `#`.
    Dtmf {
        /// The agent.
        agent: String,
        /// The digit.
        digit: char,
    },
}

/// What sessions need from the call engine (issue 5 seam).
pub trait Dialer: Clone + Send + Sync + 'static {
    /// Sets up (or keeps) the nailed-up agent leg; resolves once answered.
    fn connect_agent(&self, agent: &str) -> impl Future<Output = Result<(), DialError>> + Send;
    /// Dials a lead for the agent; returns the call record id at once, the
    /// outcome comes as [`CallEvent::CallEnded`].
    fn dial(
        &self,
        agent: &str,
        req: DialRequest,
    ) -> impl Future<Output = Result<i64, DialError>> + Send;
    /// R9: CANCEL while ringing (outcome skipped), BYE once answered.
    fn skip(&self, agent: &str) -> impl Future<Output = Result<(), DialError>> + Send;
    /// Hangs up the agent leg (and any lead leg).
    fn disconnect_agent(&self, agent: &str) -> impl Future<Output = Result<(), DialError>> + Send;
    /// The engine's events.
    fn subscribe(&self) -> broadcast::Receiver<CallEvent>;
}

impl From<CallOutcome> for queue::Outcome {
    fn from(o: CallOutcome) -> Self {
        match o {
            CallOutcome::Answered => queue::Outcome::Answered,
            CallOutcome::NoAnswer => queue::Outcome::NoAnswer,
            CallOutcome::Busy => queue::Outcome::Busy,
            CallOutcome::Skipped => queue::Outcome::Skipped,
            CallOutcome::TemporaryError => queue::Outcome::TemporaryError,
            CallOutcome::Restricted => queue::Outcome::Restricted,
        }
    }
}
