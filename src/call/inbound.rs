//! The inbound leg: the UAS side of a call the carrier trunk sends us (SPEC
//! §1 "Leads calling back"), sans-IO like the other legs.
//!
//! The INVITE server transaction (RFC 3261 §17.2.1) answers 100 Trying as
//! soon as the leg is made; the driver then rings ([`InboundLeg::ring`],
//! 180), answers with the relay's SDP ([`InboundLeg::answer`], 200 kept
//! retransmitted until the ACK, §13.3.1.4) or refuses
//! ([`InboundLeg::reject`], e.g. 486). A CANCEL before the answer gets 200
//! and the INVITE 487 (§9.2). In the dialog, the caller's BYE is answered
//! 200 (§15.1.2) and [`InboundLeg::hangup`] sends ours.

use std::time::Instant;

use rand::RngCore;

use super::lead::EndReason;
use super::leg::{InDialog, LegCore, ALLOW};
use super::wire::{reply, sdp_body};
use super::{CallError, LocalAddress};
use crate::sip::dialog::Dialog;
use crate::sip::syntax::{HeadersExt, Method, Request, SipMessage};
use crate::sip::transaction::{
    CancelMatch, Event, Outbox, Retransmit2xx, Retransmit2xxEvent, ServerKey, TimerConfig,
};
use crate::sip::{Peer, Transmit};

/// What the inbound leg tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundEvent {
    /// The caller cancelled before the answer (CANCEL; 487 sent, §9.2).
    Cancelled,
    /// The caller re-INVITEd (hold/unhold, §14.2): answer with
    /// [`InboundLeg::answer_reinvite`].
    ReInvite {
        /// The caller's new offer, if any.
        offer: Option<Vec<u8>>,
    },
    /// An answered call ended.
    Ended {
        /// Who ended it.
        reason: EndReason,
    },
    /// Nothing is left in flight: drop the leg.
    Closed,
}

#[derive(Debug)]
enum State {
    /// The INVITE waits for our final response.
    Offered,
    /// 200 sent; the dialog is confirmed (the ACK may still be on its way).
    Answered {
        dialog: Box<Dialog>,
        retransmit: Option<Box<Retransmit2xx>>,
    },
    /// Final response or BYE sent or received: absorbing what is left.
    Closing {
        dialog: Option<Box<Dialog>>,
    },
    Closed,
}

/// The UAS call leg of one INVITE from the trunk (see the module docs).
#[derive(Debug)]
pub struct InboundLeg {
    core: LegCore,
    peer: Peer,
    invite: Request,
    key: ServerKey,
    offer: Option<Vec<u8>>,
    state: State,
    events: Outbox<InboundEvent>,
    started: Instant,
    answered: Option<Instant>,
    ended: Option<Instant>,
    rang: bool,
}

/// The user part of a `sip:`/`sips:`/`tel:` URI inside a header value
/// (`"Ada" <sip:+14155550101@carrier;user=phone>;tag=x` → `+14155550101`).
pub fn uri_user(value: &str) -> Option<&str> {
    let inner = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    };
    let rest = inner
        .strip_prefix("sip:")
        .or_else(|| inner.strip_prefix("sips:"))
        .or_else(|| inner.strip_prefix("tel:"))?;
    let user = match rest.split_once('@') {
        Some((u, _)) => u,
        None if inner.starts_with("tel:") => rest,
        None => return None,
    };
    let user = user.split([';', ':']).next().unwrap_or(user);
    (!user.is_empty()).then_some(user)
}

impl InboundLeg {
    /// Takes the INVITE over: its server transaction is created in the
    /// leg's own table, which sends 100 Trying at once (§17.2.1).
    pub fn accept(
        now: Instant,
        peer: Peer,
        invite: Request,
        rng: &mut impl RngCore,
        timers: TimerConfig,
        local: LocalAddress,
    ) -> Result<InboundLeg, CallError> {
        let mut core = LegCore::new(rng, timers, local);
        core.call_id = invite
            .call_id_header()
            .map(|c| c.value().trim().to_string())
            .map_err(|_| CallError::Unparsable("Call-ID"))?;
        let offer = sdp_body(&invite, &invite.body);
        core.table
            .handle_message(now, peer, SipMessage::Request(invite))?;
        let mut found = None;
        while let Some(ev) = core.table.poll_event() {
            if let Event::NewRequest { key, request, .. } = ev {
                if request.method == Method::Invite {
                    found = Some((key, request));
                }
            }
        }
        let (key, invite) = found.ok_or(CallError::Unparsable("INVITE"))?;
        core.drain_table();
        Ok(InboundLeg {
            core,
            peer,
            invite,
            key,
            offer,
            state: State::Offered,
            events: Outbox::new(),
            started: now,
            answered: None,
            ended: None,
            rang: false,
        })
    }

    /// The Call-ID: the driver routes the call's messages here by it.
    pub fn call_id(&self) -> &str {
        &self.core.call_id
    }

    /// The caller's SDP offer, if the INVITE carried one (RFC 3264 §5).
    pub fn offer(&self) -> Option<&[u8]> {
        self.offer.as_deref()
    }

    /// The INVITE as received.
    pub fn invite(&self) -> &Request {
        &self.invite
    }

    /// Where the INVITE came from (the trunk): the only host the caller's
    /// RTP may come from (SPEC §5).
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// When the INVITE arrived, was answered and ended.
    pub fn times(&self) -> (Instant, Option<Instant>, Option<Instant>) {
        (self.started, self.answered, self.ended)
    }

    /// Whether the INVITE still waits for its final response.
    pub fn is_offered(&self) -> bool {
        matches!(self.state, State::Offered)
    }

    /// Whether the leg is answered and not ended.
    pub fn is_answered(&self) -> bool {
        matches!(self.state, State::Answered { .. })
    }

    /// Whether nothing is left in flight.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// 180 Ringing while the agent's phone is alerted (§21.1.2); once.
    pub fn ring(&mut self, now: Instant) {
        if !self.is_offered() || self.rang {
            return;
        }
        self.rang = true;
        let tag = self.core.local_tag.clone();
        let contact = [format!("Contact: {}", self.core.contact())];
        let r = reply(&self.invite, 180, "Ringing", &tag, &contact, None);
        self.core.respond(now, &self.key, r);
    }

    /// 200 OK with `sdp` (§13.3.1.4): the dialog is confirmed and the 200
    /// retransmitted until the ACK.
    pub fn answer(&mut self, now: Instant, sdp: &[u8]) -> Result<(), CallError> {
        if !self.is_offered() {
            return Err(CallError::NoPendingReInvite);
        }
        let tag = self.core.local_tag.clone();
        let extra = [
            format!("Contact: {}", self.core.contact()),
            ALLOW.to_string(),
        ];
        let response = reply(
            &self.invite,
            200,
            "OK",
            &tag,
            &extra,
            Some(("application/sdp", sdp)),
        )?;
        self.core.table.respond(now, &self.key, response.clone())?;
        let mut dialog = Dialog::from_uas_response(&self.invite, &response)?;
        dialog.set_local_contact(self.core.contact());
        let retransmit = Box::new(Retransmit2xx::new(
            now,
            self.peer,
            response,
            self.core.config,
        ));
        self.state = State::Answered {
            dialog: Box::new(dialog),
            retransmit: Some(retransmit),
        };
        self.answered = Some(now);
        self.pump(now);
        Ok(())
    }

    /// A final failure response (486, 480, 488, …) before the answer.
    pub fn reject(&mut self, now: Instant, code: u16, reason: &str) {
        if !self.is_offered() {
            return;
        }
        let tag = self.core.local_tag.clone();
        let r = reply(&self.invite, code, reason, &tag, &[], None);
        self.core.respond(now, &self.key, r);
        self.ended = Some(now);
        self.state = State::Closing { dialog: None };
        self.pump(now);
    }

    /// Ends the call from our side: BYE once answered (§15.1.1); before the
    /// answer, 480 Temporarily Unavailable.
    pub fn hangup(&mut self, now: Instant) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Offered => {
                self.state = State::Offered;
                self.reject(now, 480, "Temporarily Unavailable");
            }
            State::Answered { mut dialog, .. } => {
                if let Err(error) = self.core.send_bye(now, &mut dialog, self.peer) {
                    tracing::warn!(%error, call_id = %self.core.call_id, "BYE to the caller not sent");
                }
                self.ended = Some(now);
                self.events.push(InboundEvent::Ended {
                    reason: EndReason::LocalHangup,
                });
                self.state = State::Closing {
                    dialog: Some(dialog),
                };
                self.pump(now);
            }
            other => self.state = other,
        }
    }

    /// Answers the caller's re-INVITE (§14.2).
    pub fn answer_reinvite(&mut self, now: Instant, sdp: &[u8]) -> Result<(), CallError> {
        self.core.answer_reinvite(now, sdp)
    }

    /// A message for this Call-ID.
    pub fn handle_message(
        &mut self,
        now: Instant,
        peer: Peer,
        message: SipMessage,
    ) -> Result<(), CallError> {
        let r = self.core.table.handle_message(now, peer, message);
        self.pump(now);
        Ok(r?)
    }

    /// The transport could not reach `peer` (§17.1.4, §17.2.4).
    pub fn handle_transport_error(&mut self, now: Instant, peer: Peer) {
        self.core.table.handle_transport_error(now, peer);
        self.pump(now);
    }

    /// Fires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_lower_timeouts(now);
        let mut no_ack = false;
        if let State::Answered { retransmit, .. } = &mut self.state {
            if let Some(r) = retransmit {
                r.handle_timeout(now);
                while let Some(t) = r.poll_transmit() {
                    self.core.push(t.peer, t.message);
                }
                if let Some(Retransmit2xxEvent::AckTimeout) = r.poll_event() {
                    no_ack = true;
                }
                if r.is_done() {
                    *retransmit = None;
                }
            }
        }
        if no_ack {
            // §13.3.1.4: no ACK for 64·T1: the session is ended with a BYE.
            tracing::info!(call_id = %self.core.call_id, "no ACK for our 200 to the caller: BYE");
            self.hangup(now);
        }
        self.pump(now);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let State::Answered {
            retransmit: Some(r),
            ..
        } = &mut self.state
        {
            while let Some(t) = r.poll_transmit() {
                self.core.push(t.peer, t.message);
            }
        }
        self.core.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<InboundEvent> {
        self.events.pop()
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let r = match &self.state {
            State::Answered {
                retransmit: Some(r),
                ..
            } => r.poll_timeout(),
            _ => None,
        };
        [self.core.poll_timeout(), r].into_iter().flatten().min()
    }

    fn pump(&mut self, now: Instant) {
        while let Some(event) = self.core.table.poll_event() {
            self.core.drain_table();
            match event {
                Event::NewRequest { key, request, peer } => {
                    self.on_request(now, key, request, peer)
                }
                Event::StrayAck { request, .. } => {
                    if let State::Answered { retransmit, .. } = &mut self.state {
                        if retransmit.as_ref().is_some_and(|r| r.is_acked_by(&request)) {
                            *retransmit = None;
                        }
                    }
                    self.core.handle_stray_ack(now, &request);
                }
                _ => {}
            }
        }
        self.core.drain_table();
        if let State::Closing { .. } = self.state {
            if self.core.is_idle() {
                self.state = State::Closed;
                self.events.push(InboundEvent::Closed);
            }
        }
    }

    fn on_request(&mut self, now: Instant, key: ServerKey, request: Request, peer: Peer) {
        if request.method == Method::Cancel && self.is_offered() {
            let matched = self
                .core
                .table
                .cancel_match(&request)
                .unwrap_or(CancelMatch::Unmatched);
            let tag = self.core.local_tag.clone();
            match matched {
                CancelMatch::Pending(target) if target == self.key => {
                    self.core
                        .respond(now, &key, reply(&request, 200, "OK", &tag, &[], None));
                    let r = reply(&self.invite, 487, "Request Terminated", &tag, &[], None);
                    self.core.respond(now, &self.key, r);
                    self.ended = Some(now);
                    self.state = State::Closing { dialog: None };
                    self.events.push(InboundEvent::Cancelled);
                }
                CancelMatch::Answered | CancelMatch::Pending(_) => {
                    self.core
                        .respond(now, &key, reply(&request, 200, "OK", &tag, &[], None));
                }
                CancelMatch::Unmatched => {
                    let r = reply(
                        &request,
                        481,
                        "Call/Transaction Does Not Exist",
                        &tag,
                        &[],
                        None,
                    );
                    self.core.respond(now, &key, r);
                }
            }
            return;
        }
        let dialog = match &mut self.state {
            State::Answered { dialog, .. } => Some(dialog.as_mut()),
            State::Closing { dialog } => dialog.as_deref_mut(),
            _ => None,
        };
        match self.core.handle_request(now, key, request, peer, dialog) {
            InDialog::Bye => {
                if let State::Answered { dialog, .. } =
                    std::mem::replace(&mut self.state, State::Closed)
                {
                    self.ended = Some(now);
                    self.events.push(InboundEvent::Ended {
                        reason: EndReason::RemoteBye,
                    });
                    self.state = State::Closing {
                        dialog: Some(dialog),
                    };
                } else {
                    // A BYE while closing: answered already, nothing new.
                    self.state = State::Closing { dialog: None };
                }
            }
            InDialog::ReInvite(offer) => self.events.push(InboundEvent::ReInvite { offer }),
            // A session refresh (RFC 4028 §9) was answered by the core; the
            // caller's side keeps its own timer.
            InDialog::Refresh | InDialog::Info(..) | InDialog::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::syntax::Response;
    use crate::sip::TransportKind;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::Duration;

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                       m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

    fn trunk() -> Peer {
        Peer {
            transport: TransportKind::Udp,
            addr: "127.0.0.1:5080".parse().expect("addr"),
        }
    }

    fn local() -> LocalAddress {
        LocalAddress {
            sent_by: "127.0.0.1:5060".into(),
            contact: "sip:powerdial@127.0.0.1:5060".into(),
            domain: "127.0.0.1".into(),
        }
    }

    fn request(text: &str) -> Request {
        Request::try_from(text.replace('\n', "\r\n").into_bytes()).expect("request")
    }

    fn invite() -> Request {
        let head = "INVITE sip:+15550000000@127.0.0.1:5060 SIP/2.0\n\
            Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKcb1\n\
            Max-Forwards: 70\n\
            From: <sip:+14155550101@127.0.0.1:5080>;tag=lead\n\
            To: <sip:+15550000000@127.0.0.1>\n\
            Call-ID: cb-1\n\
            CSeq: 1 INVITE\n\
            Contact: <sip:+14155550101@127.0.0.1:5080>\n\
            Content-Type: application/sdp\n";
        let text = format!("{head}Content-Length: {}\n\n", SDP.len());
        let mut wire = text.replace('\n', "\r\n").into_bytes();
        wire.extend_from_slice(SDP.as_bytes());
        Request::try_from(wire).expect("invite")
    }

    fn responses(leg: &mut InboundLeg) -> Vec<Response> {
        let mut out = Vec::new();
        while let Some(t) = leg.poll_transmit() {
            if let SipMessage::Response(r) = t.message {
                out.push(r);
            }
        }
        out
    }

    fn codes(rs: &[Response]) -> Vec<u16> {
        rs.iter().map(|r| r.status_code.code()).collect()
    }

    fn accept(now: Instant) -> InboundLeg {
        let mut rng = StdRng::seed_from_u64(7);
        InboundLeg::accept(
            now,
            trunk(),
            invite(),
            &mut rng,
            TimerConfig::default(),
            local(),
        )
        .expect("accepted")
    }

    fn to_tag(r: &Response) -> String {
        crate::sip::dialog::DialogId::of_response(r)
            .map(|d| d.remote_tag)
            .unwrap_or_default()
    }

    #[test]
    fn uri_users() {
        assert_eq!(
            uri_user("\"Ada\" <sip:+14155550101@10.0.0.1;user=phone>;tag=x"),
            Some("+14155550101")
        );
        assert_eq!(uri_user("<tel:+14155550101>"), Some("+14155550101"));
        assert_eq!(uri_user("sip:4155550101@h;tag=1"), Some("4155550101"));
        assert_eq!(uri_user("<sip:10.0.0.1>"), None);
    }

    #[test]
    fn trying_ringing_answer_ack_and_remote_bye() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut leg = accept(t0);
        assert_eq!(leg.call_id(), "cb-1");
        assert_eq!(leg.offer(), Some(SDP.as_bytes()));
        assert_eq!(codes(&responses(&mut leg)), [100]);
        leg.ring(t0);
        leg.ring(t0);
        let ringing = responses(&mut leg);
        assert_eq!(codes(&ringing), [180]);
        leg.answer(t0, SDP.as_bytes()).expect("answered");
        let ok = responses(&mut leg);
        assert_eq!(codes(&ok), [200]);
        assert_eq!(to_tag(&ok[0]), to_tag(&ringing[0]));
        assert!(leg.is_answered());
        // No ACK yet: the 200 is sent again after T1 (§13.3.1.4).
        let t1 = t0 + Duration::from_millis(600);
        leg.handle_timeout(t1);
        assert_eq!(codes(&responses(&mut leg)), [200]);
        let tag = to_tag(&ok[0]);
        let ack = request(&format!(
            "ACK sip:powerdial@127.0.0.1:5060 SIP/2.0\n\
             Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKack1\nMax-Forwards: 70\n\
             From: <sip:+14155550101@127.0.0.1:5080>;tag=lead\nTo: <sip:+15550000000@127.0.0.1>;tag={tag}\n\
             Call-ID: cb-1\nCSeq: 1 ACK\nContent-Length: 0\n\n"
        ));
        leg.handle_message(t1, trunk(), SipMessage::Request(ack))
            .expect("ack");
        leg.handle_timeout(t1 + Duration::from_secs(5));
        assert!(responses(&mut leg).is_empty(), "no 200 after the ACK");
        let bye = request(&format!(
            "BYE sip:powerdial@127.0.0.1:5060 SIP/2.0\n\
             Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKbye1\nMax-Forwards: 70\n\
             From: <sip:+14155550101@127.0.0.1:5080>;tag=lead\nTo: <sip:+15550000000@127.0.0.1>;tag={tag}\n\
             Call-ID: cb-1\nCSeq: 2 BYE\nContent-Length: 0\n\n"
        ));
        let t2 = t1 + Duration::from_secs(6);
        leg.handle_message(t2, trunk(), SipMessage::Request(bye))
            .expect("bye");
        assert_eq!(codes(&responses(&mut leg)), [200]);
        assert_eq!(
            leg.poll_event(),
            Some(InboundEvent::Ended {
                reason: EndReason::RemoteBye
            })
        );
        // The BYE's server transaction lingers (Timer J), then the leg closes.
        leg.handle_timeout(t2 + Duration::from_secs(40));
        assert_eq!(leg.poll_event(), Some(InboundEvent::Closed));
        assert!(leg.is_closed());
    }

    #[test]
    fn cancel_before_the_answer_gets_200_and_487() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut leg = accept(t0);
        leg.ring(t0);
        assert_eq!(codes(&responses(&mut leg)), [100, 180]);
        let cancel = request(
            "CANCEL sip:+15550000000@127.0.0.1:5060 SIP/2.0\n\
             Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKcb1\nMax-Forwards: 70\n\
             From: <sip:+14155550101@127.0.0.1:5080>;tag=lead\nTo: <sip:+15550000000@127.0.0.1>\n\
             Call-ID: cb-1\nCSeq: 1 CANCEL\nContent-Length: 0\n\n",
        );
        leg.handle_message(t0, trunk(), SipMessage::Request(cancel))
            .expect("cancel");
        let rs = responses(&mut leg);
        assert_eq!(codes(&rs), [200, 487]);
        assert_eq!(leg.poll_event(), Some(InboundEvent::Cancelled));
        assert!(
            leg.answer(t0, SDP.as_bytes()).is_err(),
            "too late to answer"
        );
        leg.handle_timeout(t0 + Duration::from_secs(40));
        assert_eq!(leg.poll_event(), Some(InboundEvent::Closed));
    }

    #[test]
    fn reject_is_a_final_response_and_our_hangup_a_bye() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut leg = accept(t0);
        leg.reject(t0, 486, "Busy Here");
        assert_eq!(codes(&responses(&mut leg)), [100, 486]);
        assert!(!leg.is_offered());

        let mut leg = accept(t0);
        leg.answer(t0, SDP.as_bytes()).expect("answered");
        let _ = responses(&mut leg);
        leg.hangup(t0);
        let mut bye = None;
        while let Some(t) = leg.poll_transmit() {
            if let SipMessage::Request(r) = t.message {
                bye = Some(r);
            }
        }
        let bye = bye.expect("a BYE");
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(bye.uri.to_string(), "sip:+14155550101@127.0.0.1:5080");
        assert_eq!(
            leg.poll_event(),
            Some(InboundEvent::Ended {
                reason: EndReason::LocalHangup
            })
        );
    }
}
