//! The call legs of the B2BUA (SPEC §1, R8–R12, R17), sans-IO.
//!
//! - [`LeadLeg`]: the UAC call to the carrier trunk for one number, with the
//!   ring timeout (R8), CANCEL after a provisional (RFC 3261 §9.1), the
//!   CANCEL/200 crossing, one digest retry (§22.2), the outcome (R8–R12).
//! - [`AgentLeg`]: the nailed-up UAC call to the agent's phone, forked in
//!   parallel to every registered contact, first 2xx wins (§13.2.2.4).
//! - [`Outcome`] and [`LegRecord`]: what the call record stores.
//!
//! # The seam with the driver
//! Each leg owns its own [`TransactionTable`](crate::sip::transaction::TransactionTable):
//! a call is one Call-ID, and DESIGN.md shards work by Call-ID, so the
//! driver routes every message whose Call-ID is the leg's ([`LeadLeg::call_id`])
//! to [`LeadLeg::handle_message`] and needs no map of transaction keys. The
//! legs follow the DESIGN.md core shape: `handle_*(now, ..)` inputs, then
//! drain `poll_transmit`, `poll_event` and sleep until `poll_timeout`.
//! Nothing here reads the clock or an OS RNG: identifiers come from the RNG
//! passed at construction.
//!
//! In-dialog requests are sent to the peer the INVITE went to (the trunk's
//! address; the phone's registration source address), not resolved from the
//! remote target: the trunk is one gateway and phones sit behind NAT.

mod agent;
pub mod browser_phone;
pub mod callback;
pub mod caller_id;
mod closing;
pub mod demo;
pub mod engine;
mod inbound;
mod lead;
mod leg;
pub mod leg_journal;
mod outcome;
pub mod recovery;
mod secure;
mod timer;
pub mod trunk;
mod trunk_ping;
mod trunk_slot;
mod wire;

#[cfg(test)]
mod tests;

pub use agent::{AgentEvent, AgentLeg, AgentParams, AgentTarget, Dtmf};
pub use closing::{ClosingLeg, ClosingLegs};
pub use inbound::{uri_user, InboundEvent, InboundLeg};
pub use lead::{EndReason, LeadEvent, LeadLeg, LeadParams};
pub use outcome::{LegRecord, Outcome};
pub use timer::Timer;
pub use wire::lead_request_uri;

/// Our own addresses, as written in the messages we build (RFC 3261 §8.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddress {
    /// The Via sent-by, `host:port` of the SIP socket (§18.2.1).
    pub sent_by: String,
    /// Our Contact URI, e.g. `sip:powerdial@192.0.2.10:5060` (§8.1.1.8).
    pub contact: String,
    /// The host written in our From URIs: the `[server] domain`.
    pub domain: String,
}

/// Why a call leg could not be started or an action could not be taken
/// (DESIGN.md "Errors": one enum, typed variants).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The agent has no registered contact: nothing is sent (SPEC §1 step 2).
    #[error("the agent has no registered contact")]
    NoBinding,
    /// The trunk URI is not a `sip:`/`sips:` URI with a host.
    #[error("unusable trunk URI {0:?}")]
    BadTrunkUri(String),
    /// The number is not `+` and 1–15 digits (E.164; SPEC §1 step 3, R2).
    #[error("{0:?} is not an E.164 number")]
    NotE164(String),
    /// A message we built does not parse back: a configured value (URI,
    /// caller ID, SDP framing) is unusable on the wire.
    #[error("built {0} does not parse")]
    Unparsable(&'static str),
    /// The transaction layer refused (RFC 3261 §17).
    #[error(transparent)]
    Transaction(#[from] crate::sip::transaction::TransactionError),
    /// The dialog layer refused (RFC 3261 §12).
    #[error(transparent)]
    Dialog(#[from] crate::sip::dialog::DialogError),
    /// `answer_reinvite` with no re-INVITE waiting for an answer.
    #[error("no re-INVITE is waiting for an answer")]
    NoPendingReInvite,
}
