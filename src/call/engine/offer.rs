//! Our SDP offer on a leg (RFC 3264 §5), kept parsed while its answer is
//! awaited and as the bytes we sent once it came.
//!
//! Negotiating the answer (RFC 3264 §6, on the answer → bridge path of
//! SPEC §6) reads the parsed offer; after it, the offer only serves a
//! re-INVITE without an offer, answered with our offer again (RFC 3264
//! §8, RFC 3261 §14.2) — the same bytes. A parsed description is a dozen
//! allocations (origin, lines, media, formats, attributes) for the whole
//! call; the bytes are one (SPEC §6: under 20 KB per active call).

use crate::media::sdp::{self, SessionDescription};

/// Our offer on one leg.
#[derive(Debug)]
pub(super) enum OurOffer {
    /// Sent, its answer not yet in. Boxed: the engine keeps one per lead
    /// call and one per agent, inline in their state.
    Awaiting(Box<SessionDescription>),
    /// Answered: what was sent, byte for byte.
    Answered(Box<[u8]>),
}

impl OurOffer {
    /// An offer just sent.
    pub(super) fn new(offer: SessionDescription) -> Self {
        OurOffer::Awaiting(Box::new(offer))
    }

    /// What the answer `answer` agrees on with our offer (RFC 3264 §6.1).
    /// After [`Self::answered`] the offer is parsed again from its bytes.
    pub(super) fn negotiate(&self, answer: &[u8]) -> Result<sdp::Negotiated, String> {
        let answer = SessionDescription::parse(answer).map_err(|e| e.to_string())?;
        match self {
            OurOffer::Awaiting(offer) => sdp::negotiated(offer, &answer),
            OurOffer::Answered(bytes) => {
                let offer = SessionDescription::parse(bytes).map_err(|e| e.to_string())?;
                sdp::negotiated(&offer, &answer)
            }
        }
        .map_err(|e| e.to_string())
    }

    /// The answer is in: only the bytes are kept from now on.
    pub(super) fn answered(&mut self) {
        if let OurOffer::Awaiting(offer) = self {
            *self = OurOffer::Answered(offer.to_bytes().into_boxed_slice());
        }
    }

    /// The offer's bytes, as sent.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        match self {
            OurOffer::Awaiting(offer) => offer.to_bytes(),
            OurOffer::Answered(bytes) => bytes.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const ANSWER: &[u8] = b"v=0\r\no=- 7 7 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

    #[test]
    fn answered_keeps_the_same_bytes_and_negotiates_the_same() {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let offer = sdp::make_offer(ip, 30000, 42);
        let sent = offer.to_bytes();
        let mut ours = OurOffer::new(offer);
        let before = ours.negotiate(ANSWER).unwrap();
        ours.answered();
        assert!(matches!(ours, OurOffer::Answered(_)));
        assert_eq!(ours.to_bytes(), sent, "a re-INVITE gets the offer we sent");
        assert_eq!(ours.negotiate(ANSWER).unwrap(), before);
        ours.answered();
        assert_eq!(ours.to_bytes(), sent);
        assert!(ours.negotiate(b"not sdp").is_err());
    }
}
