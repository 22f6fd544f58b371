//! SIP: message syntax (over `rsipstack::sip`), validation, sans-IO
//! transactions and dialogs, the registrar with digest authentication, and
//! the UDP/TCP transport drivers.
//!
//! Cores in this module never read the clock: every input carries `now`.

use std::fmt;
use std::net::SocketAddr;

pub mod auth_limit;
pub mod dialog;
pub mod digest;
pub mod endpoint;
pub mod flood;
pub mod handle;
pub mod message;
pub mod parse_share;
pub mod registrar;
pub mod transaction;
pub mod transport;

pub use rsipstack::sip as syntax;

/// The transport a message travelled or must travel on (RFC 3261 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Unreliable datagrams: the transaction layer retransmits (timers A, E, G).
    Udp,
    /// A reliable stream: no retransmissions, timers that wait for strays are 0.
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2): reliable like TCP.
    Tls,
}

impl TransportKind {
    /// Whether the transport is reliable (RFC 3261 §17: timers K, I, J, D are
    /// zero and A, E, G are not used on reliable transports).
    pub fn is_reliable(self) -> bool {
        matches!(self, TransportKind::Tcp | TransportKind::Tls)
    }

    /// The token used in Via headers (`SIP/2.0/UDP`).
    pub fn via_token(self) -> &'static str {
        match self {
            TransportKind::Udp => "UDP",
            TransportKind::Tcp => "TCP",
            TransportKind::Tls => "TLS",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Udp => "udp",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
        })
    }
}

/// Where a message came from or must go: the transport and the peer's
/// socket address (for TCP, the connection is identified by the address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// UDP or TCP.
    pub transport: TransportKind,
    /// The remote socket address.
    pub addr: SocketAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// A message to put on the wire: the output of every sans-IO SIP core
/// (`poll_transmit`). The driver serialises it and sends it to `peer`.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Where it goes (for TCP, over the connection to that address).
    pub peer: Peer,
    /// The message.
    pub message: syntax::SipMessage,
}
