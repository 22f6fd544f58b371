//! The seam between sessions and the call engine (SPEC §1, steps 2–5): what
//! a session asks of the engine ([`Dialer`]) and what it hears back
//! ([`CallEvent`]). `crate::call::engine::CallEngine` implements [`Dialer`]
//! in a few lines once it lands; unit tests drive sessions with a scripted
//! implementation under a simulated clock.

use std::future::Future;

use tokio::sync::broadcast;

pub use crate::call::engine::{CallEvent, DialRequest, LeadSnapshot};

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
    /// No trunk can take the call now: every trunk that may dial the
    /// number is down, or stayed at its limits for `dialer.trunk_wait`.
    /// Nothing was dialed; the lead stays queued.
    #[error("no trunk can take the call now: {0}")]
    NoTrunk(String),
}

/// How a lead call ended (SPEC §4 call record `outcome`).
pub type CallOutcome = crate::call::Outcome;

/// What sessions need from the call engine.
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

impl From<crate::call::engine::CallEngineError> for DialError {
    fn from(e: crate::call::engine::CallEngineError) -> Self {
        use crate::call::engine::CallEngineError as E;
        match e {
            E::NoBinding => DialError::NoBinding,
            E::Declined(status) => DialError::Declined(status),
            E::Timeout => DialError::Timeout,
            E::Stopped => DialError::Closed,
            e @ (E::TrunksDown | E::TrunksBusy) => DialError::NoTrunk(e.to_string()),
            _ => DialError::NotReady,
        }
    }
}

/// The real engine behind the seam: [`crate::call::engine::CallEngine`].
impl Dialer for crate::call::engine::CallEngine {
    async fn connect_agent(&self, agent: &str) -> Result<(), DialError> {
        Ok(crate::call::engine::CallEngine::connect_agent(self, agent).await?)
    }
    async fn dial(&self, agent: &str, req: DialRequest) -> Result<i64, DialError> {
        Ok(crate::call::engine::CallEngine::dial(self, agent, req).await?)
    }
    async fn skip(&self, agent: &str) -> Result<(), DialError> {
        Ok(crate::call::engine::CallEngine::skip(self, agent).await?)
    }
    async fn disconnect_agent(&self, agent: &str) -> Result<(), DialError> {
        Ok(crate::call::engine::CallEngine::disconnect_agent(self, agent).await?)
    }
    fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        crate::call::engine::CallEngine::subscribe(self)
    }
}
