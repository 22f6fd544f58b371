//! Symmetric RTP latching (RFC 4961, and the "comedia" practice of RFC 4145
//! §4 applied to RTP): send to where the peer's packets come from, which
//! behind a NAT is not the address its SDP names — but only from an address
//! the signalling names (SPEC §5), so a stranger who guesses the port can
//! neither inject audio into a call nor steal it ("RTP bleed").

use std::net::{IpAddr, SocketAddr};

/// Where to send one leg's RTP, learnt from what arrives.
///
/// Until a packet arrives we send to the SDP address. The first valid RTP
/// packet latches its source if that source is plausibly the peer: the SDP
/// address, the SDP's host, or (behind NAT) the host the peer's SIP came
/// from. Packets from any other host are dropped, before and after the
/// latch. Once latched only that source is accepted — except the SDP
/// address itself, which always (re)latches (a phone that starts sending
/// from its signalled address after a NAT binding change is believed). A
/// renegotiation to a new SDP address unlatches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latch {
    signalled: Option<SocketAddr>,
    /// The host the peer's signalling comes from (its SIP source).
    signalling: Option<IpAddr>,
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
            signalling: None,
            latched: None,
        }
    }

    /// The host the peer's SIP comes from: behind a NAT, its RTP comes from
    /// there too, not from the address in its SDP.
    pub fn set_signalling(&mut self, host: IpAddr) {
        self.signalling = Some(host);
    }

    /// Whether a first packet from `from` may latch.
    fn plausible(&self, from: SocketAddr) -> bool {
        self.signalled
            .is_some_and(|s| s == from || s.ip() == from.ip())
            || self.signalling == Some(from.ip())
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
            None if !self.plausible(from) => LatchDecision::Reject,
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
    fn a_stranger_cannot_latch_first() {
        // The phone's SDP says 192.168.1.10, its SIP comes from 203.0.113.7
        // (NAT); a scanner at 198.51.100.66 sprays the port first.
        let mut l = Latch::new(Some(a("192.168.1.10:4000")));
        l.set_signalling("203.0.113.7".parse().unwrap());
        assert_eq!(l.accept(a("198.51.100.66:5000")), LatchDecision::Reject);
        assert_eq!(l.dest(), Some(a("192.168.1.10:4000")), "nothing learnt");
        assert_eq!(
            l.accept(a("203.0.113.7:61000")),
            LatchDecision::Latched(a("203.0.113.7:61000"))
        );
        assert_eq!(l.accept(a("198.51.100.66:5000")), LatchDecision::Reject);
        // Without a signalling host, only the SDP's host may latch.
        let mut l = Latch::new(Some(a("192.0.2.5:4000")));
        assert_eq!(l.accept(a("198.51.100.66:5000")), LatchDecision::Reject);
        assert_eq!(
            l.accept(a("192.0.2.5:4002")),
            LatchDecision::Latched(a("192.0.2.5:4002"))
        );
    }

    #[test]
    fn latches_the_first_source_behind_nat() {
        let mut l = Latch::new(Some(a("192.168.1.10:4000")));
        l.set_signalling("203.0.113.7".parse().unwrap());
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
        l.set_signalling("1.2.3.4".parse().unwrap());
        l.set_signalled(a("10.0.0.1:4000"));
        l.accept(a("1.2.3.4:5"));
        l.set_signalled(a("10.0.0.1:4000"));
        assert_eq!(l.dest(), Some(a("1.2.3.4:5")), "same SDP: keep the latch");
        l.set_signalled(a("10.0.0.2:4000"));
        assert_eq!(l.dest(), Some(a("10.0.0.2:4000")));
        assert_eq!(
            l.accept(a("10.0.0.2:4002")),
            LatchDecision::Latched(a("10.0.0.2:4002"))
        );
    }
}
