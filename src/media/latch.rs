//! Symmetric RTP latching (RFC 4961, and the "comedia" practice of RFC 4145
//! §4 applied to RTP): send to where the peer's packets come from, which
//! behind a NAT is not the address its SDP names.

use std::net::SocketAddr;

/// Where to send one leg's RTP, learnt from what arrives.
///
/// Until a packet arrives we send to the SDP address. The first valid RTP
/// packet latches its source; afterwards only that source is accepted, so a
/// stray sender cannot take over the stream — except the SDP address itself,
/// which always (re)latches (a phone that starts sending from its signalled
/// address after a NAT binding change is believed). A renegotiation to a new
/// SDP address unlatches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latch {
    signalled: Option<SocketAddr>,
    latched: Option<SocketAddr>,
}

/// What [`Latch::accept`] decided about a packet's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatchDecision {
    /// From the latched source: relay it.
    Accept,
    /// The first packet (or the SDP address taking over): relay it, and the
    /// leg now sends to this address.
    Latched(SocketAddr),
    /// From somebody else: drop it.
    Reject,
}

impl Latch {
    /// A latch expecting the peer at `signalled` (the SDP address).
    pub fn new(signalled: Option<SocketAddr>) -> Self {
        Latch {
            signalled,
            latched: None,
        }
    }

    /// A new SDP address (re-INVITE, or the answer arriving): unlatch if it
    /// moved (RFC 3264 §8.3.1: the peer changed where it wants media).
    pub fn set_signalled(&mut self, addr: SocketAddr) {
        if self.signalled != Some(addr) {
            self.signalled = Some(addr);
            self.latched = None;
        }
    }

    /// Decides about a packet from `from`.
    pub fn accept(&mut self, from: SocketAddr) -> LatchDecision {
        match self.latched {
            Some(l) if l == from => LatchDecision::Accept,
            Some(_) if self.signalled != Some(from) => LatchDecision::Reject,
            _ => {
                self.latched = Some(from);
                LatchDecision::Latched(from)
            }
        }
    }

    /// Whether `from` is the peer as far as we know: the latched source or
    /// the SDP address. Nothing is learnt from the question.
    pub fn is_peer(&self, from: SocketAddr) -> bool {
        self.latched == Some(from) || self.signalled == Some(from)
    }

    /// Where to send: the latched source, else the SDP address.
    pub fn dest(&self) -> Option<SocketAddr> {
        self.latched.or(self.signalled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn latches_the_first_source_behind_nat() {
        let mut l = Latch::new(Some(a("192.168.1.10:4000")));
        assert_eq!(l.dest(), Some(a("192.168.1.10:4000")));
        assert_eq!(
            l.accept(a("203.0.113.7:61000")),
            LatchDecision::Latched(a("203.0.113.7:61000"))
        );
        assert_eq!(l.dest(), Some(a("203.0.113.7:61000")));
        assert_eq!(l.accept(a("203.0.113.7:61000")), LatchDecision::Accept);
        assert_eq!(
            l.accept(a("198.51.100.66:5000")),
            LatchDecision::Reject,
            "no hijack"
        );
        assert_eq!(l.dest(), Some(a("203.0.113.7:61000")));
        // The signalled address itself may take over.
        assert_eq!(
            l.accept(a("192.168.1.10:4000")),
            LatchDecision::Latched(a("192.168.1.10:4000"))
        );
    }

    #[test]
    fn renegotiation_unlatches_only_when_the_address_moves() {
        let mut l = Latch::new(None);
        assert_eq!(l.dest(), None);
        l.set_signalled(a("10.0.0.1:4000"));
        l.accept(a("1.2.3.4:5"));
        l.set_signalled(a("10.0.0.1:4000"));
        assert_eq!(l.dest(), Some(a("1.2.3.4:5")), "same SDP: keep the latch");
        l.set_signalled(a("10.0.0.2:4000"));
        assert_eq!(l.dest(), Some(a("10.0.0.2:4000")));
        assert_eq!(
            l.accept(a("9.9.9.9:9")),
            LatchDecision::Latched(a("9.9.9.9:9"))
        );
    }
}
