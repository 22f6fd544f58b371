//! SIP transactions, sans-IO (RFC 3261 §17).
//!
//! Four state machines — INVITE and non-INVITE, client and server — each
//! driven by `handle_*(now, ..)` inputs and drained through `poll_transmit`,
//! `poll_event` and `poll_timeout`, plus a [`TransactionTable`] that matches
//! messages to many of them (§17.1.3, §17.2.3) and keeps one ordered set of
//! deadlines. [`Retransmit2xx`] is the UAS core's 2xx retransmission
//! (§13.3.1.4), which RFC 3261 places above the transaction. The INVITE
//! server transaction follows RFC 6026 after a 2xx (Accepted, Timer L).
//!
//! Nothing here reads the clock or owns a socket: the driver passes `now`,
//! sends every [`Transmit`](crate::sip::Transmit) and sleeps until
//! `poll_timeout()`.

mod client;
mod key;
mod message;
mod outbox;
mod retransmit;
mod server;
mod table;
mod timer;

#[cfg(test)]
mod harness;

pub use client::{ClientEvent, InviteClient, NonInviteClient};
pub use key::{
    branch_from_bits, is_rfc3261_branch, new_branch, ClientKey, ServerKey, TransactionKey,
    MAGIC_COOKIE,
};
pub use message::{build_ack_for_non_2xx, build_cancel, build_trying};
pub use outbox::Outbox;
pub use retransmit::{Retransmit2xx, Retransmit2xxEvent};
pub use server::{InviteServer, NonInviteServer, ServerEvent};
pub use table::{CancelMatch, CancelOutcome, Event, TransactionTable};
pub use timer::{Timer, TimerConfig};

use crate::sip::syntax::Method;

/// Why a transaction operation was refused (RFC 3261 §17; one variant per
/// cause, DESIGN.md "Errors").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// A header the transaction layer needs is absent (§8.1.1: To, From,
    /// CSeq, Call-ID, Max-Forwards and Via are mandatory).
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header the transaction layer needs does not parse.
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    /// A request we send must carry an RFC 3261 branch (§8.1.1.7).
    #[error("top Via branch lacks the z9hG4bK magic cookie")]
    NoRfc3261Branch,
    /// ACK is not sent through a client transaction: the INVITE client
    /// transaction makes the ACK for non-2xx, the TU sends the ACK for 2xx
    /// directly (§17.1.1.3, §13.2.2.4).
    #[error("ACK is not sent as a transaction")]
    AckIsNotATransaction,
    /// No transaction has this key (it never existed or has terminated).
    #[error("no such transaction")]
    UnknownTransaction,
    /// A transaction with this key already exists (a reused branch).
    #[error("a transaction with this key already exists")]
    DuplicateTransaction,
    /// The server transaction already sent its final response; later
    /// responses from the TU are not passed on (§17.2.1, §17.2.2).
    #[error("final response already sent")]
    FinalAlreadySent,
    /// A status code outside 100..=699 cannot be sent (§7.2).
    #[error("status code {0} is not 1xx-6xx")]
    InvalidStatus(u16),
    /// The request is not of the method the operation needs.
    #[error("expected {expected}, got {got}")]
    WrongMethod {
        /// The method the operation needs.
        expected: Method,
        /// The method it was given.
        got: Method,
    },
    /// The table holds its maximum of transactions: a new request is
    /// refused (the endpoint answers 503 with Retry-After, statelessly).
    #[error("the transaction table is full")]
    TableFull,
    /// CANCEL only applies while the INVITE awaits its final response (§9.1).
    #[error("the INVITE already has a final response")]
    NotCancellable,
}

/// An arbitrary base for the virtual clock of tests: only differences from it
/// matter, and tests advance it themselves instead of sleeping.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub(crate) fn test_epoch() -> std::time::Instant {
    std::time::Instant::now()
}

/// Test helpers shared by the transaction tests: messages parsed from text.
#[cfg(test)]
pub(crate) mod testmsg {
    use crate::sip::syntax::{Request, Response, SipMessage};

    pub(crate) fn request(text: &str) -> Request {
        match SipMessage::try_from(text) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    pub(crate) fn response(text: &str) -> Response {
        match SipMessage::try_from(text) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    /// An INVITE from alice with the given branch.
    pub(crate) fn invite(branch: &str) -> Request {
        request(&format!(
            "INVITE sip:bob@192.0.2.2 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
Max-Forwards: 70\r\n\
Route: <sip:proxy.example;lr>\r\n\
From: \"Alice\" <sip:alice@192.0.2.1>;tag=a1\r\n\
To: <sip:bob@192.0.2.2>\r\n\
Call-ID: call-{branch}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@192.0.2.1:5060>\r\n\
Content-Length: 0\r\n\r\n"
        ))
    }

    /// A non-INVITE request (OPTIONS or BYE etc.) with the given branch.
    pub(crate) fn non_invite(method: &str, branch: &str) -> Request {
        request(&format!(
            "{method} sip:bob@192.0.2.2 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@192.0.2.1>;tag=a1\r\n\
To: <sip:bob@192.0.2.2>;tag=b1\r\n\
Call-ID: call-{branch}\r\n\
CSeq: 2 {method}\r\n\
Content-Length: 0\r\n\r\n"
        ))
    }

    /// A response with `code` to `request`, echoing its Via/From/To/Call-ID/
    /// CSeq and adding To tag `b1` when the request had none.
    pub(crate) fn response_to(request: &Request, code: u16) -> Response {
        let mut text = format!("SIP/2.0 {code} Whatever\r\n");
        for h in request.headers.iter() {
            let name = h.name().to_ascii_lowercase();
            match name.as_str() {
                "via" | "from" | "call-id" | "cseq" => {
                    text.push_str(&format!("{}: {}\r\n", h.name(), h.value()))
                }
                "to" => {
                    let tag = if h.value().contains("tag=") || code == 100 {
                        String::new()
                    } else {
                        ";tag=b1".to_string()
                    };
                    text.push_str(&format!("To: {}{tag}\r\n", h.value()))
                }
                _ => {}
            }
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        response(&text)
    }
}
