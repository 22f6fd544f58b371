//! The UAS core's 2xx retransmission (RFC 3261 §13.3.1.4), which lives
//! above the INVITE server transaction because a 2xx ends that transaction.

use std::time::{Duration, Instant};

use super::key::{cseq, to_tag};
use super::outbox::Outbox;
use super::timer::TimerConfig;
use crate::sip::syntax::{prelude::*, Method, Request, Response, SipMessage};
use crate::sip::{Peer, Transmit};

/// What [`Retransmit2xx`] tells the TU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retransmit2xxEvent {
    /// 64*T1 passed with no ACK: the dialog is confirmed but the session
    /// SHOULD be ended with a BYE (§13.3.1.4).
    AckTimeout,
}

/// Re-sends a 2xx to an INVITE at T1, 2*T1, .. capped at T2 until the ACK
/// arrives, giving up after 64*T1 (RFC 3261 §13.3.1.4). The 2xx itself goes
/// out through the INVITE server transaction; this only retransmits it.
#[derive(Debug)]
pub struct Retransmit2xx {
    peer: Peer,
    response: Response,
    config: TimerConfig,
    interval: Duration,
    next: Option<Instant>,
    give_up_at: Instant,
    transmits: Outbox<Transmit>,
    events: Outbox<Retransmit2xxEvent>,
}

impl Retransmit2xx {
    /// Starts retransmitting `response` (already sent once at `now`) to
    /// `peer`: the first retransmission is due at `now + T1`.
    pub fn new(now: Instant, peer: Peer, response: Response, config: TimerConfig) -> Self {
        Retransmit2xx {
            peer,
            response,
            config,
            interval: config.t1,
            next: Some(now + config.t1),
            give_up_at: now + config.timeout(),
            transmits: Outbox::new(),
            events: Outbox::new(),
        }
    }

    /// Whether `request` is the ACK for this 2xx: an ACK with the same
    /// Call-ID, CSeq number and To tag (§13.3.1.4, §12.2.2).
    pub fn is_acked_by(&self, request: &Request) -> bool {
        if request.method != Method::Ack {
            return false;
        }
        let same_call_id = match (request.call_id_header(), self.response.call_id_header()) {
            (Ok(a), Ok(b)) => a.value().trim() == b.value().trim(),
            _ => false,
        };
        let same_cseq = match (cseq(request), cseq(&self.response)) {
            (Ok(a), Ok(b)) => a.seq == b.seq,
            _ => false,
        };
        let same_tag = match (to_tag(request), to_tag(&self.response)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        same_call_id && same_cseq && same_tag
    }

    /// The ACK arrived: stop retransmitting (§13.3.1.4).
    pub fn handle_ack(&mut self, _now: Instant) {
        self.next = None;
    }

    /// Whether the retransmission is over (acknowledged or given up).
    pub fn is_done(&self) -> bool {
        self.next.is_none()
    }

    /// Retransmits or gives up as due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(next) = self.next else { return };
        if now >= self.give_up_at {
            self.next = None;
            self.events.push(Retransmit2xxEvent::AckTimeout);
            return;
        }
        if now >= next {
            self.transmits.push(Transmit {
                peer: self.peer,
                message: SipMessage::Response(self.response.clone()),
            });
            self.interval = self.config.backoff_capped(self.interval);
            self.next = Some(now + self.interval);
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<Retransmit2xxEvent> {
        self.events.pop()
    }

    /// When `handle_timeout` is next due: the next retransmission or the
    /// give-up time, whichever is first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next.map(|next| next.min(self.give_up_at))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testmsg::{invite, request, response_to};
    use super::*;
    use crate::sip::TransportKind;

    fn peer() -> Peer {
        Peer {
            transport: TransportKind::Udp,
            addr: "192.0.2.1:5060".parse().unwrap(),
        }
    }

    /// Runs `r` on virtual time up to `until`, returning when each
    /// retransmission went out, relative to `t0`.
    fn drive(r: &mut Retransmit2xx, t0: Instant, until: Instant) -> Vec<Duration> {
        let mut sent = Vec::new();
        while let Some(t) = r.poll_timeout() {
            if t > until {
                break;
            }
            r.handle_timeout(t);
            while r.poll_transmit().is_some() {
                sent.push(t - t0);
            }
        }
        sent
    }

    #[test]
    fn backs_off_to_t2_and_gives_up_after_64_t1() {
        let t0 = crate::sip::transaction::test_epoch();
        let ok = response_to(&invite("z9hG4bKr2xx"), 200);
        let mut r = Retransmit2xx::new(t0, peer(), ok, TimerConfig::default());
        let sent = drive(&mut r, t0, t0 + Duration::from_secs(32));
        let ms: Vec<u128> = sent.iter().map(|d| d.as_millis()).collect();
        // 0.5, 1, 2, 4 then every 4 s (T2) until 32 s.
        assert_eq!(
            ms,
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(r.poll_event(), Some(Retransmit2xxEvent::AckTimeout));
        assert!(r.is_done());
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn stops_on_ack() {
        let t0 = crate::sip::transaction::test_epoch();
        let inv = invite("z9hG4bKr2xa");
        let ok = response_to(&inv, 200);
        let mut r = Retransmit2xx::new(t0, peer(), ok, TimerConfig::default());
        r.handle_timeout(t0 + Duration::from_millis(500));
        assert!(r.poll_transmit().is_some());
        let ack = request(
            "ACK sip:bob@192.0.2.2 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnewack\r\n\
From: \"Alice\" <sip:alice@192.0.2.1>;tag=a1\r\nTo: <sip:bob@192.0.2.2>;tag=b1\r\n\
Call-ID: call-z9hG4bKr2xa\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(r.is_acked_by(&ack));
        let other = request(
            "ACK sip:bob@192.0.2.2 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnewack\r\n\
From: <sip:alice@192.0.2.1>;tag=a1\r\nTo: <sip:bob@192.0.2.2>;tag=b1\r\n\
Call-ID: call-z9hG4bKr2xa\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(!r.is_acked_by(&other));
        r.handle_ack(t0 + Duration::from_millis(600));
        assert!(r.is_done());
        assert_eq!(r.poll_timeout(), None);
        r.handle_timeout(t0 + Duration::from_secs(40));
        assert!(r.poll_transmit().is_none());
        assert!(r.poll_event().is_none());
    }
}
