//! The legs driven against far ends that are real [`TransactionTable`]s (a
//! carrier, phones), on virtual time: every message goes over a logged
//! "wire", so the tests check what a peer would see and when.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::wire::reply;
use super::*;
use crate::sip::dialog::{Body, Dialog};
use crate::sip::digest::{compute_response, Algorithm, Credentials};
use crate::sip::syntax::{HeadersExt, Method, Request, Response, SipMessage};
use crate::sip::transaction::{
    test_epoch, ClientKey, Event, ServerKey, TimerConfig, TransactionTable,
};
use crate::sip::{Peer, Transmit, TransportKind};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn udp(addr: &str) -> Peer {
    Peer {
        transport: TransportKind::Udp,
        addr: addr.parse().unwrap(),
    }
}

fn us() -> Peer {
    udp("192.0.2.10:5060")
}
fn carrier() -> Peer {
    udp("192.0.2.99:5080")
}
fn phone_a() -> Peer {
    udp("192.0.2.21:5060")
}
fn phone_b() -> Peer {
    udp("192.0.2.22:5062")
}

const OFFER: &[u8] = b"v=0\r\no=pd 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0 8 101\r\n";
const ANSWER: &[u8] = b"v=0\r\no=far 7 7 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 101\r\n";
const EARLY: &[u8] = b"v=0\r\no=far 7 7 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\nm=audio 30002 RTP/AVP 0\r\n";
const HOLD: &[u8] = b"v=0\r\no=far 7 8 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 101\r\na=sendonly\r\n";

fn local() -> LocalAddress {
    LocalAddress {
        sent_by: "192.0.2.10:5060".into(),
        contact: "sip:powerdial@192.0.2.10:5060".into(),
        domain: "dialer.example".into(),
    }
}

fn lead_params(ring: Duration) -> LeadParams {
    LeadParams {
        trunk: carrier(),
        trunk_uri: "sip:192.0.2.99:5080".into(),
        number: "+15551234567".into(),
        caller_id: "+15550000000".into(),
        p_asserted_identity: Some("+15550000001".into()),
        credentials: Some(("acct".into(), "s3cret".into())),
        local: local(),
        offer_sdp: OFFER.to_vec(),
        ring_timeout: ring,
        response_timeout: None,
        max_call_length: 4 * 3600 * S,
        timers: TimerConfig::default(),
        session_expires: None,
        keepalive: None,
    }
}

/// The inputs and outputs both legs share, so one harness drives either.
trait Leg {
    type Event: std::fmt::Debug + Clone;
    fn message(&mut self, now: Instant, peer: Peer, m: SipMessage);
    fn timeout(&mut self, now: Instant);
    fn transmit(&mut self) -> Option<Transmit>;
    fn event(&mut self) -> Option<Self::Event>;
    fn deadline(&self) -> Option<Instant>;
    fn transport_error(&mut self, now: Instant, peer: Peer);
}

impl Leg for LeadLeg {
    type Event = LeadEvent;
    fn message(&mut self, now: Instant, peer: Peer, m: SipMessage) {
        self.handle_message(now, peer, m).unwrap();
    }
    fn timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
    fn transmit(&mut self) -> Option<Transmit> {
        self.poll_transmit()
    }
    fn event(&mut self) -> Option<LeadEvent> {
        self.poll_event()
    }
    fn deadline(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn transport_error(&mut self, now: Instant, peer: Peer) {
        self.handle_transport_error(now, peer)
    }
}

impl Leg for AgentLeg {
    type Event = AgentEvent;
    fn message(&mut self, now: Instant, peer: Peer, m: SipMessage) {
        self.handle_message(now, peer, m).unwrap();
    }
    fn timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
    fn transmit(&mut self) -> Option<Transmit> {
        self.poll_transmit()
    }
    fn event(&mut self) -> Option<AgentEvent> {
        self.poll_event()
    }
    fn deadline(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn transport_error(&mut self, now: Instant, peer: Peer) {
        self.handle_transport_error(now, peer)
    }
}

/// A carrier or phone: a transaction table plus the UAS behaviour a test
/// needs, answered by hand (`respond`) or automatically (CANCEL → 200 +
/// 487, BYE/INFO → 200, ACK for its own re-INVITE's 2xx).
struct Far {
    peer: Peer,
    tag: String,
    table: TransactionTable,
    invite: Option<(ServerKey, Request)>,
    sent_2xx: Option<Response>,
    dialog: Option<Dialog>,
    outbox: Vec<SipMessage>,
    drop_trying: bool,
    requests: Vec<Request>,
    responses: Vec<Response>,
    branch: u32,
    /// The status in-dialog requests get (200; 481 once the far end lost the call).
    in_dialog_status: u16,
    /// In-dialog requests other than BYE get no answer at all.
    mute_in_dialog: bool,
}

impl Far {
    fn new(peer: Peer, tag: &str) -> Self {
        Far {
            peer,
            tag: tag.into(),
            table: TransactionTable::new(TimerConfig::default()),
            invite: None,
            sent_2xx: None,
            dialog: None,
            outbox: Vec::new(),
            drop_trying: false,
            requests: Vec::new(),
            responses: Vec::new(),
            branch: 0,
            in_dialog_status: 200,
            mute_in_dialog: false,
        }
    }

    fn contact(&self) -> String {
        format!("Contact: <sip:far@{}>", self.peer.addr)
    }

    fn via(&mut self) -> String {
        self.branch += 1;
        format!(
            "SIP/2.0/UDP {};branch=z9hG4bKfar{}{}",
            self.peer.addr, self.tag, self.branch
        )
    }

    fn process(&mut self, now: Instant) {
        while let Some(event) = self.table.poll_event() {
            match event {
                Event::NewRequest { key, request, .. } => {
                    self.requests.push(request.clone());
                    match request.method {
                        Method::Invite if self.invite.is_none() => {
                            self.invite = Some((key, request));
                        }
                        Method::Cancel => {
                            let target = self.table.cancel_target(&request).unwrap();
                            let ok = reply(&request, 200, "OK", &self.tag, &[], None).unwrap();
                            self.table.respond(now, &key, ok).unwrap();
                            if let (Some(t), Some((_, inv))) = (target, &self.invite) {
                                let r = reply(inv, 487, "Request Terminated", &self.tag, &[], None);
                                self.table.respond(now, &t, r.unwrap()).unwrap();
                            }
                        }
                        _ => {
                            if let Some(d) = &mut self.dialog {
                                let _ = d.handle_request(&request);
                            }
                            let code = if request.method == Method::Bye {
                                200
                            } else if self.mute_in_dialog {
                                continue;
                            } else {
                                self.in_dialog_status
                            };
                            let ok = reply(&request, code, "Reason", &self.tag, &[], None).unwrap();
                            self.table.respond(now, &key, ok).unwrap();
                        }
                    }
                }
                Event::StrayAck { request, .. } => self.requests.push(request),
                Event::Final { response, .. } | Event::Provisional { response, .. } => {
                    let is_invite_2xx = response.status_code.code() / 100 == 2
                        && response.cseq_header().unwrap().value().ends_with("INVITE");
                    if is_invite_2xx {
                        let via = self.via();
                        let d = self.dialog.as_mut().unwrap();
                        let ack = d.new_request(Method::Ack, &via, None).unwrap();
                        // The ACK carries the CSeq number of the INVITE it
                        // acknowledges, which may not be the dialog's last.
                        let seq = response
                            .cseq_header()
                            .unwrap()
                            .value()
                            .split_whitespace()
                            .next()
                            .unwrap()
                            .to_string();
                        let text: String = ack
                            .to_string()
                            .split("\r\n")
                            .map(|l| {
                                if l.starts_with("CSeq:") {
                                    format!("CSeq: {seq} ACK")
                                } else {
                                    l.to_string()
                                }
                            })
                            .collect::<Vec<_>>()
                            .join("\r\n");
                        let ack = Request::try_from(text.as_str()).unwrap();
                        self.outbox.push(SipMessage::Request(ack));
                    }
                    self.responses.push(response);
                }
                _ => {}
            }
        }
    }

    /// Answers the (first) INVITE with `code`, To tag `self.tag`, Contact,
    /// optional SDP and extra header lines.
    fn respond(&mut self, now: Instant, code: u16, sdp: Option<&[u8]>, extra: &[String]) {
        let (key, invite) = self.invite.clone().expect("an INVITE arrived");
        let mut lines = vec![self.contact()];
        lines.extend_from_slice(extra);
        let body = sdp.map(|b| ("application/sdp", b));
        let r = reply(&invite, code, "Reason", &self.tag, &lines, body).unwrap();
        if (200..300).contains(&code) {
            self.dialog = Some(Dialog::from_uas_response(&invite, &r).unwrap());
            self.sent_2xx = Some(r.clone());
        }
        self.table.respond(now, &key, r).unwrap();
    }

    /// Sends `method` in the dialog its 2xx created.
    fn send_in_dialog(
        &mut self,
        now: Instant,
        method: Method,
        body: Option<Body<'_>>,
    ) -> ClientKey {
        let via = self.via();
        let d = self.dialog.as_mut().expect("a dialog");
        let req = d.new_request(method, &via, body).unwrap();
        self.table.send_request(now, us(), req).unwrap()
    }

    /// Forgets the INVITE so the next one (e.g. after a challenge) is kept.
    fn forget_invite(&mut self) {
        self.invite = None;
    }
}

/// One wire record: when, from whom to whom, what.
#[derive(Debug, Clone)]
struct Wire {
    at: Duration,
    to: Peer,
    message: SipMessage,
}

impl Wire {
    fn method(&self) -> Option<Method> {
        match &self.message {
            SipMessage::Request(r) => Some(r.method),
            SipMessage::Response(_) => None,
        }
    }
    fn code(&self) -> Option<u16> {
        match &self.message {
            SipMessage::Response(r) => Some(r.status_code.code()),
            SipMessage::Request(_) => None,
        }
    }
}

struct World<L: Leg> {
    t0: Instant,
    now: Instant,
    leg: L,
    fars: Vec<Far>,
    /// Leg → far.
    sent: Vec<Wire>,
    /// Far → leg.
    received: Vec<Wire>,
    events: Vec<(Duration, L::Event)>,
    /// Leg messages matching this are held back (not delivered) until
    /// `release`: a message "in flight" while the far end acts.
    hold: Option<fn(&SipMessage) -> bool>,
    held: Vec<Transmit>,
    /// Sends to these peers fail (a refused TCP connection, an ICMP port
    /// unreachable): the leg is told at once, as the engine driver does.
    unreachable: Vec<Peer>,
}

impl<L: Leg> World<L> {
    fn new(t0: Instant, leg: L, fars: Vec<Far>) -> Self {
        let mut w = World {
            t0,
            now: t0,
            leg,
            fars,
            sent: Vec::new(),
            received: Vec::new(),
            events: Vec::new(),
            hold: None,
            held: Vec::new(),
            unreachable: Vec::new(),
        };
        w.step();
        w
    }

    fn at(&self) -> Duration {
        self.now - self.t0
    }

    fn far(&mut self, peer: Peer) -> &mut Far {
        self.fars
            .iter_mut()
            .find(|f| f.peer == peer)
            .expect("known far end")
    }

    fn deliver_to_far(&mut self, t: Transmit) {
        let now = self.now;
        let far = self.far(t.peer);
        far.table.handle_message(now, us(), t.message).unwrap();
        far.process(now);
    }

    /// Shuttles messages until nothing moves.
    fn step(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.leg.transmit() {
                moved = true;
                self.sent.push(Wire {
                    at: self.at(),
                    to: t.peer,
                    message: t.message.clone(),
                });
                if self.unreachable.contains(&t.peer) {
                    let now = self.now;
                    self.leg.transport_error(now, t.peer);
                } else if self.hold.is_some_and(|h| h(&t.message)) {
                    self.held.push(t);
                } else {
                    self.deliver_to_far(t);
                }
            }
            let now = self.now;
            for i in 0..self.fars.len() {
                let mut out: Vec<SipMessage> = std::mem::take(&mut self.fars[i].outbox);
                while let Some(t) = self.fars[i].table.poll_transmit() {
                    out.push(t.message);
                }
                let from = self.fars[i].peer;
                for m in out {
                    if self.fars[i].drop_trying
                        && matches!(&m, SipMessage::Response(r) if r.status_code.code() == 100)
                    {
                        continue;
                    }
                    moved = true;
                    self.received.push(Wire {
                        at: now - self.t0,
                        to: us(),
                        message: m.clone(),
                    });
                    self.leg.message(now, from, m);
                }
            }
            while let Some(e) = self.leg.event() {
                self.events.push((self.now - self.t0, e));
            }
            if !moved {
                break;
            }
        }
    }

    /// Delivers what was held back.
    fn release(&mut self) {
        self.hold = None;
        for t in std::mem::take(&mut self.held) {
            self.deliver_to_far(t);
        }
        self.step();
    }

    /// Runs virtual time forward to `t0 + at`, firing every deadline on the way.
    fn run_until(&mut self, at: Duration) {
        let target = self.t0 + at;
        loop {
            let next = self
                .fars
                .iter()
                .filter_map(|f| f.table.poll_timeout())
                .chain(self.leg.deadline())
                .min();
            match next {
                Some(n) if n <= target => {
                    self.now = self.now.max(n);
                    let now = self.now;
                    self.leg.timeout(now);
                    for f in &mut self.fars {
                        f.table.handle_timeout(now);
                        f.process(now);
                    }
                    self.step();
                }
                _ => break,
            }
        }
        self.now = target;
        self.step();
    }

    /// Lets the far end act at the current instant.
    fn with_far(&mut self, peer: Peer, f: impl FnOnce(&mut Far, Instant)) {
        let now = self.now;
        f(self.far(peer), now);
        self.step();
    }

    fn sent_methods(&self) -> Vec<(Duration, Method)> {
        self.sent
            .iter()
            .filter_map(|w| w.method().map(|m| (w.at, m)))
            .collect()
    }

    fn sent_of(&self, method: Method) -> Vec<&Wire> {
        self.sent
            .iter()
            .filter(|w| w.method() == Some(method))
            .collect()
    }

    fn event_list(&self) -> Vec<L::Event> {
        self.events.iter().map(|(_, e)| e.clone()).collect()
    }
}

fn request(w: &Wire) -> &Request {
    match &w.message {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => panic!("not a request"),
    }
}

fn header(r: &impl HeadersExt, name: &str) -> String {
    super::wire::header(r, name).unwrap_or_default().to_string()
}

fn lead_world(ring: Duration) -> World<LeadLeg> {
    lead_world_with(ring, false)
}

/// With `silent`, the carrier's 100 Trying never reaches us.
fn lead_world_with(ring: Duration, silent: bool) -> World<LeadLeg> {
    lead_world_seeded(ring, silent, 7)
}

/// A lead world whose leg's identifiers (Call-ID, tags) come from `seed`.
fn lead_world_seeded(ring: Duration, silent: bool, seed: u64) -> World<LeadLeg> {
    let t0 = test_epoch();
    let leg = LeadLeg::dial(t0, lead_params(ring), &mut StdRng::seed_from_u64(seed)).unwrap();
    let mut far = Far::new(carrier(), "far1");
    far.drop_trying = silent;
    World::new(t0, leg, vec![far])
}

fn closed(w: &World<LeadLeg>) -> (Outcome, LegRecord) {
    match w.events.last() {
        Some((_, LeadEvent::Closed { outcome, record })) => (*outcome, *record),
        other => panic!("expected Closed last, got {other:?} in {:?}", w.events),
    }
}

// ---------------------------------------------------------------- lead leg

#[test]
fn invite_carries_number_caller_id_pai_and_offer() {
    let w = lead_world(32 * S);
    let invites = w.sent_of(Method::Invite);
    assert_eq!(invites.len(), 1);
    let inv = request(invites[0]);
    assert_eq!(inv.uri.to_string(), "sip:+15551234567@192.0.2.99:5080");
    assert!(header(inv, "From").starts_with("<sip:+15550000000@dialer.example>;tag="));
    assert_eq!(header(inv, "To"), "<sip:+15551234567@192.0.2.99:5080>");
    assert_eq!(
        header(inv, "P-Asserted-Identity"),
        "<sip:+15550000001@dialer.example>"
    );
    assert_eq!(header(inv, "Contact"), "<sip:powerdial@192.0.2.10:5060>");
    assert_eq!(header(inv, "Content-Type"), "application/sdp");
    assert_eq!(inv.body, OFFER);
    assert_eq!(invites[0].to, carrier());
    assert_eq!(header(inv, "Call-ID"), w.leg.call_id());
}

#[test]
fn answer_acks_reports_answered_and_records_times() {
    let mut w = lead_world(32 * S);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 180, None, &[]));
    w.run_until(3 * S);
    w.with_far(carrier(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    // The ACK leaves in the same step as the Answered event.
    let acks = w.sent_of(Method::Ack);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].at, 3 * S);
    let ack = request(acks[0]);
    assert_eq!(
        ack.uri.to_string(),
        "sip:far@192.0.2.99:5080",
        "ACK goes to the remote target"
    );
    assert_eq!(header(ack, "CSeq"), "1 ACK");
    assert!(header(ack, "To").ends_with(";tag=far1"));
    assert_eq!(
        w.events,
        vec![
            (S, LeadEvent::Ringing { status: 180 }),
            (
                3 * S,
                LeadEvent::Answered {
                    sdp: ANSWER.to_vec()
                }
            ),
        ]
    );
    assert_eq!(w.leg.outcome(), Some(Outcome::Answered));
    let r = *w.leg.record();
    assert_eq!(r.started, w.t0);
    assert_eq!(r.answered, Some(w.t0 + 3 * S));
    assert_eq!(r.ring_duration, Some(3 * S));
    assert_eq!(r.sip_status, Some(200));
    // The ring timeout no longer applies: nothing happens at 32 s.
    w.run_until(40 * S);
    assert_eq!(w.sent_of(Method::Cancel).len(), 0);
    assert_eq!(w.sent_of(Method::Bye).len(), 0);
    // Hang up through the API: BYE, 200, Ended, then Closed once the BYE
    // transaction is over (Timer K on UDP).
    let now = w.now;
    w.leg.hangup(now);
    w.step();
    let bye = request(w.sent_of(Method::Bye)[0]);
    assert_eq!(header(bye, "CSeq"), "2 BYE");
    w.run_until(60 * S);
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::Answered);
    assert_eq!(record.ended, Some(w.t0 + 40 * S));
    assert!(w.leg.is_closed());
    assert_eq!(w.leg.poll_timeout(), None);
}

#[test]
fn final_failures_map_to_outcomes_and_are_acked_by_the_transaction() {
    for (code, outcome) in [
        (486, Outcome::Busy),
        (600, Outcome::Busy),
        (503, Outcome::TemporaryError),
        (480, Outcome::TemporaryError),
        (403, Outcome::Restricted),
        (404, Outcome::Restricted),
        (603, Outcome::Restricted),
    ] {
        let mut w = lead_world(32 * S);
        w.run_until(2 * S);
        w.with_far(carrier(), |f, now| f.respond(now, code, None, &[]));
        let acks = w.sent_of(Method::Ack);
        assert_eq!(acks.len(), 1, "{code} is ACKed");
        assert_eq!(header(request(acks[0]), "CSeq"), "1 ACK");
        assert_eq!(
            w.event_list()[0],
            LeadEvent::Unanswered { outcome },
            "{code}"
        );
        w.run_until(60 * S);
        let (o, record) = closed(&w);
        assert_eq!(o, outcome);
        assert_eq!(record.sip_status, Some(code));
        assert_eq!(record.ring_duration, Some(2 * S));
        assert_eq!(record.answered, None);
        assert_eq!(w.sent_of(Method::Cancel).len(), 0);
    }
}

fn challenge(proxy: bool) -> String {
    let name = if proxy {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    format!("{name}: Digest realm=\"carrier\", nonce=\"n0nce\", qop=\"auth\", algorithm=MD5")
}

#[test]
fn challenge_407_is_answered_once_with_cseq_2_then_answered() {
    let mut w = lead_world(32 * S);
    w.run_until(100 * MS);
    w.with_far(carrier(), |f, now| {
        f.respond(now, 407, None, &[challenge(true)]);
        f.forget_invite();
    });
    let invites = w.sent_of(Method::Invite);
    let retry = request(invites.last().unwrap());
    assert_eq!(header(retry, "CSeq"), "2 INVITE");
    assert_ne!(
        header(retry, "Via"),
        header(request(invites[0]), "Via"),
        "a new branch"
    );
    assert_eq!(
        header(retry, "Call-ID"),
        header(request(invites[0]), "Call-ID")
    );
    let creds = Credentials::parse(&header(retry, "Proxy-Authorization")).unwrap();
    assert_eq!(creds.username, "acct");
    assert_eq!(creds.realm, "carrier");
    assert_eq!(creds.uri, "sip:+15551234567@192.0.2.99:5080");
    let qop = creds.qop.clone().unwrap();
    let ha1 = Algorithm::Md5.ha1("acct", "carrier", "s3cret");
    let expected = compute_response(
        Algorithm::Md5,
        &ha1,
        "n0nce",
        Some((&qop.nc_text, &qop.cnonce)),
        "INVITE",
        &creds.uri,
    );
    assert_eq!(creds.response, expected, "a digest the carrier can verify");
    w.run_until(2 * S);
    w.with_far(carrier(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    let ack = request(w.sent_of(Method::Ack).last().unwrap());
    assert_eq!(header(ack, "CSeq"), "2 ACK");
    assert!(w.event_list().contains(&LeadEvent::Answered {
        sdp: ANSWER.to_vec()
    }));
}

#[test]
fn a_second_challenge_is_restricted() {
    let mut w = lead_world(32 * S);
    w.run_until(100 * MS);
    w.with_far(carrier(), |f, now| {
        f.respond(now, 401, None, &[challenge(false)]);
        f.forget_invite();
    });
    assert!(!header(
        request(w.sent_of(Method::Invite).last().unwrap()),
        "Authorization"
    )
    .is_empty());
    w.with_far(carrier(), |f, now| {
        f.respond(now, 401, None, &[challenge(false)])
    });
    assert_eq!(
        w.sent_of(Method::Invite)
            .iter()
            .filter(|i| header(request(i), "CSeq") == "3 INVITE")
            .count(),
        0
    );
    w.run_until(60 * S);
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::Restricted);
    assert_eq!(record.sip_status, Some(401));
}

#[test]
fn ring_timeout_after_180_cancels_at_exactly_the_timeout() {
    let mut w = lead_world(32 * S);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 180, None, &[]));
    w.run_until(45 * S);
    let cancels = w.sent_of(Method::Cancel);
    assert_eq!(cancels.len(), 1);
    assert_eq!(
        cancels[0].at,
        32 * S,
        "CANCEL at exactly the ring timeout (R8)"
    );
    assert_eq!(header(request(cancels[0]), "CSeq"), "1 CANCEL");
    // The carrier's 487 is ACKed by the INVITE transaction.
    assert!(w.received.iter().any(|r| r.code() == Some(487)));
    let acks = w.sent_of(Method::Ack);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].at, 32 * S);
    assert!(w.events.contains(&(
        32 * S,
        LeadEvent::Unanswered {
            outcome: Outcome::NoAnswer
        }
    )));
    w.run_until(80 * S);
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::NoAnswer);
    assert_eq!(record.sip_status, Some(487));
    assert_eq!(record.ring_duration, Some(32 * S));
    assert_eq!(record.ended, Some(w.t0 + 32 * S));
}

#[test]
fn ring_timeout_with_early_media_reports_it_and_still_cancels_on_time() {
    let mut w = lead_world(20 * S);
    w.run_until(500 * MS);
    w.with_far(carrier(), |f, now| f.respond(now, 183, Some(EARLY), &[]));
    // The same SDP again is not a new event.
    w.run_until(5 * S);
    w.with_far(carrier(), |f, now| f.respond(now, 183, Some(EARLY), &[]));
    w.run_until(30 * S);
    assert_eq!(
        w.events[..2],
        [
            (500 * MS, LeadEvent::Ringing { status: 183 }),
            (
                500 * MS,
                LeadEvent::EarlyMedia {
                    sdp: EARLY.to_vec()
                }
            ),
        ]
    );
    assert_eq!(
        w.events
            .iter()
            .filter(|(_, e)| matches!(e, LeadEvent::EarlyMedia { .. }))
            .count(),
        1
    );
    assert_eq!(w.sent_of(Method::Cancel)[0].at, 20 * S);
    w.run_until(80 * S);
    assert_eq!(closed(&w).0, Outcome::NoAnswer);
}

#[test]
fn a_200_crossing_the_cancel_is_acked_and_byed_and_stays_no_answer() {
    let mut w = lead_world(32 * S);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 180, None, &[]));
    // The CANCEL is in flight when the carrier answers.
    w.hold = Some(|m| matches!(m, SipMessage::Request(r) if r.method == Method::Cancel));
    w.run_until(32 * S);
    assert_eq!(w.held.len(), 1);
    w.with_far(carrier(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    w.release();
    let methods: Vec<Method> = w.sent_methods().into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        methods,
        [Method::Invite, Method::Cancel, Method::Ack, Method::Bye]
    );
    assert_eq!(w.sent_of(Method::Bye)[0].at, 32 * S, "BYE at once");
    assert!(!w
        .event_list()
        .iter()
        .any(|e| matches!(e, LeadEvent::Answered { .. })));
    // The carrier got both ACK and BYE in its dialog.
    let far_saw: Vec<Method> = w.fars[0].requests.iter().map(|r| r.method).collect();
    assert!(far_saw.contains(&Method::Ack) && far_saw.contains(&Method::Bye));
    w.run_until(80 * S);
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::NoAnswer);
    assert_eq!(record.answered, None);
    assert_eq!(record.sip_status, Some(200));
}

#[test]
fn timeout_without_provisional_cancels_only_once_one_arrives() {
    let mut w = lead_world_with(20 * S, true);
    w.run_until(25 * S);
    assert_eq!(
        w.sent_of(Method::Cancel).len(),
        0,
        "no CANCEL before a provisional (§9.1)"
    );
    assert!(
        w.sent_of(Method::Invite).len() > 1,
        "the INVITE is still retransmitted"
    );
    assert!(w.events.contains(&(
        20 * S,
        LeadEvent::Unanswered {
            outcome: Outcome::NoAnswer
        }
    )));
    // A late 180: the CANCEL goes out then; 487; ACK.
    w.with_far(carrier(), |f, now| f.respond(now, 180, None, &[]));
    let cancels = w.sent_of(Method::Cancel);
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].at, 25 * S);
    assert!(w.received.iter().any(|r| r.code() == Some(487)));
    w.run_until(90 * S);
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::NoAnswer);
    assert_eq!(record.sip_status, Some(487));
    assert_eq!(record.ring_duration, Some(20 * S));
}

#[test]
fn timeout_without_any_response_never_cancels_and_timer_b_closes() {
    let mut w = lead_world_with(32 * S, true);
    w.run_until(120 * S);
    assert_eq!(w.sent_of(Method::Cancel).len(), 0);
    // Ring timeout and Timer B coincide at 32 s: R8 wins the tie.
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::NoAnswer);
    assert_eq!(record.sip_status, None);
}

#[test]
fn no_response_at_all_before_the_ring_timeout_is_a_temporary_error() {
    let mut params = lead_params(60 * S);
    params.timers.t1 = Duration::from_millis(100); // Timer B = 6.4 s
    let t0 = test_epoch();
    let leg = LeadLeg::dial(t0, params, &mut StdRng::seed_from_u64(1)).unwrap();
    let mut far = Far::new(carrier(), "far1");
    far.drop_trying = true;
    let mut w = World::new(t0, leg, vec![far]);
    w.run_until(10 * S);
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::TemporaryError, "R10: no response");
    assert_eq!(record.ended, Some(t0 + 6400 * MS));
}

#[test]
fn agent_hanging_up_while_the_lead_rings_cancels_and_skips() {
    let mut w = lead_world(32 * S);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 180, None, &[]));
    w.run_until(5 * S);
    let now = w.now;
    w.leg.skip(now);
    w.step();
    let cancels = w.sent_of(Method::Cancel);
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].at, 5 * S);
    assert!(w.events.contains(&(
        5 * S,
        LeadEvent::Unanswered {
            outcome: Outcome::Skipped
        }
    )));
    // The ring timeout is off: no second CANCEL at 32 s.
    w.run_until(80 * S);
    assert_eq!(w.sent_of(Method::Cancel).len(), 1);
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::Skipped);
    assert_eq!(record.sip_status, Some(487));
    assert_eq!(record.ring_duration, Some(5 * S));
}

#[test]
fn an_unreachable_trunk_is_a_temporary_error_at_once() {
    // RFC 3261 §17.1.1.2 / §8.1.3.1: the transport error reaches the TU
    // like a 503, so R10 decides now, not at Timer B (32 s).
    let t0 = test_epoch();
    let mut leg = LeadLeg::dial(t0, lead_params(32 * S), &mut StdRng::seed_from_u64(7)).unwrap();
    let invite = leg.poll_transmit().expect("the INVITE");
    assert_eq!(invite.peer, carrier());
    // The driver's send failed 3 ms later (TCP connect refused).
    leg.handle_transport_error(t0 + 3 * MS, carrier());
    let events: Vec<LeadEvent> = std::iter::from_fn(|| leg.poll_event()).collect();
    let record = LegRecord {
        started: t0,
        answered: None,
        ended: Some(t0 + 3 * MS),
        sip_status: None,
        ring_duration: Some(3 * MS),
    };
    assert_eq!(
        events,
        vec![
            LeadEvent::Unanswered {
                outcome: Outcome::TemporaryError
            },
            LeadEvent::Closed {
                outcome: Outcome::TemporaryError,
                record
            }
        ]
    );
    assert!(leg.is_closed());
    assert_eq!(
        leg.poll_timeout(),
        None,
        "no timer left: nothing waits for Timer B"
    );
    assert!(
        leg.poll_transmit().is_none(),
        "no CANCEL, no retransmission"
    );
}

#[test]
fn a_failing_send_in_the_world_ends_the_call_without_waiting() {
    let t0 = test_epoch();
    let leg = LeadLeg::dial(t0, lead_params(32 * S), &mut StdRng::seed_from_u64(7)).unwrap();
    let mut w = World {
        t0,
        now: t0,
        leg,
        fars: vec![Far::new(carrier(), "far1")],
        sent: Vec::new(),
        received: Vec::new(),
        events: Vec::new(),
        hold: None,
        held: Vec::new(),
        unreachable: vec![carrier()],
    };
    w.step();
    assert_eq!(w.sent_of(Method::Invite).len(), 1);
    assert_eq!(w.leg.outcome(), Some(Outcome::TemporaryError));
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::TemporaryError);
    assert_eq!(record.ended, Some(t0));
    w.run_until(64 * S);
    assert_eq!(w.sent.len(), 1, "nothing retransmitted or cancelled");
}

fn answered_world() -> World<LeadLeg> {
    let mut w = lead_world(32 * S);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    assert_eq!(w.leg.outcome(), Some(Outcome::Answered));
    w
}

#[test]
fn carrier_bye_after_answer_is_answered_200_and_ends_the_call() {
    let mut w = answered_world();
    w.run_until(30 * S);
    w.with_far(carrier(), |f, now| {
        f.send_in_dialog(now, Method::Bye, None);
    });
    assert!(w.events.contains(&(
        30 * S,
        LeadEvent::Ended {
            reason: EndReason::RemoteBye
        }
    )));
    assert_eq!(
        w.fars[0].responses.last().map(|r| r.status_code.code()),
        Some(200)
    );
    // Closed once the BYE server transaction is over (Timer J, 64*T1 on UDP).
    w.run_until(61 * S);
    assert!(!w.leg.is_closed());
    w.run_until(63 * S);
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::Answered);
    assert_eq!(record.ended, Some(w.t0 + 30 * S));
    assert_eq!(w.sent_of(Method::Bye).len(), 0);
}

#[test]
fn rtp_timeout_after_the_answer_byes_and_stays_answered() {
    let mut w = answered_world();
    w.run_until(40 * S);
    let now = w.now;
    w.leg.rtp_timeout(now);
    w.step();
    let byes = w.sent_of(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].at, 40 * S);
    assert!(w.events.contains(&(
        40 * S,
        LeadEvent::Ended {
            reason: EndReason::RtpTimeout
        }
    )));
    w.run_until(80 * S);
    let (outcome, record) = closed(&w);
    assert_eq!(outcome, Outcome::Answered);
    assert_eq!(record.ended, Some(w.t0 + 40 * S));
    assert_eq!(w.sent_of(Method::Bye).len(), 1);
}

#[test]
fn rtp_timeout_before_the_answer_does_nothing() {
    let mut w = lead_world(32 * S);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 183, Some(EARLY), &[]));
    w.run_until(10 * S);
    let now = w.now;
    w.leg.rtp_timeout(now);
    w.step();
    assert!(w.sent_of(Method::Cancel).is_empty());
    assert!(w.sent_of(Method::Bye).is_empty());
    assert_eq!(w.leg.outcome(), None, "R8's ring timeout decides");
}

#[test]
fn max_call_length_sends_bye() {
    let mut params = lead_params(32 * S);
    params.max_call_length = 10 * S;
    let t0 = test_epoch();
    let leg = LeadLeg::dial(t0, params, &mut StdRng::seed_from_u64(3)).unwrap();
    let mut w = World::new(t0, leg, vec![Far::new(carrier(), "far1")]);
    w.run_until(2 * S);
    w.with_far(carrier(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    w.run_until(30 * S);
    let byes = w.sent_of(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].at, 12 * S);
    assert!(w.events.contains(&(
        12 * S,
        LeadEvent::Ended {
            reason: EndReason::MaxCallLength
        }
    )));
    assert_eq!(closed(&w).1.ended, Some(t0 + 12 * S));
}

#[test]
fn carrier_reinvite_is_reported_and_answered_until_acked() {
    let mut w = answered_world();
    w.run_until(5 * S);
    w.with_far(carrier(), |f, now| {
        let body = Body {
            content_type: "application/sdp",
            bytes: HOLD,
        };
        f.send_in_dialog(now, Method::Invite, Some(body));
    });
    assert_eq!(
        w.events.last(),
        Some(&(
            5 * S,
            LeadEvent::ReInvite {
                offer: Some(HOLD.to_vec())
            }
        ))
    );
    // A second re-INVITE while the first is open: 491 (§14.2).
    w.with_far(carrier(), |f, now| {
        f.send_in_dialog(now, Method::Invite, None);
    });
    assert!(w
        .received
        .iter()
        .any(|r| r.method() == Some(Method::Invite)));
    assert!(w.sent.iter().any(|s| s.code() == Some(491)));
    let now = w.now;
    w.leg.answer_reinvite(now, OFFER).unwrap();
    w.step();
    let ok = w
        .sent
        .iter()
        .rev()
        .find_map(|s| match &s.message {
            SipMessage::Response(r)
                if r.status_code.code() == 200 && header(r, "CSeq").ends_with("INVITE") =>
            {
                Some(r.clone())
            }
            _ => None,
        })
        .expect("200 to the re-INVITE");
    assert_eq!(ok.body, OFFER);
    assert_eq!(header(&ok, "Contact"), "<sip:powerdial@192.0.2.10:5060>");
    // The far end ACKed it (harness), so no retransmission follows.
    let count = |w: &World<LeadLeg>| w.sent.iter().filter(|s| s.code() == Some(200)).count();
    let before = count(&w);
    w.run_until(20 * S);
    assert_eq!(count(&w), before);
    assert_eq!(
        w.leg.answer_reinvite(w.now, OFFER),
        Err(CallError::NoPendingReInvite)
    );
}

/// RFC 3261 §9.2: a CANCEL of a re-INVITE the leg already answered gets
/// 200 and has no effect (no 487, the call goes on); a CANCEL matching
/// nothing gets 481.
#[test]
fn cancel_of_an_answered_reinvite_gets_200_and_no_effect() {
    let mut w = answered_world();
    w.run_until(5 * S);
    w.with_far(carrier(), |f, now| {
        f.send_in_dialog(now, Method::Invite, None);
    });
    let now = w.now;
    w.leg.answer_reinvite(now, OFFER).unwrap();
    w.step();
    let reinvite = w
        .received
        .iter()
        .rev()
        .find_map(|r| match &r.message {
            SipMessage::Request(q) if q.method == Method::Invite => Some(q.clone()),
            _ => None,
        })
        .expect("the re-INVITE");
    let cancel = crate::sip::transaction::build_cancel(&reinvite).unwrap();
    let stray =
        crate::sip::transaction::build_cancel(&reinvite_with_branch(&reinvite, "z9hG4bK-nosuch"))
            .unwrap();
    for c in [cancel, stray] {
        w.with_far(carrier(), |f, now| {
            f.table.send_request(now, us(), c).unwrap();
        });
    }
    let answers: Vec<u16> = w
        .sent
        .iter()
        .filter_map(|s| match &s.message {
            SipMessage::Response(r) if header(r, "CSeq").ends_with("CANCEL") => {
                Some(r.status_code.code())
            }
            _ => None,
        })
        .collect();
    assert_eq!(answers, [200, 481]);
    assert!(!w.sent.iter().any(|s| s.code() == Some(487)));
    assert!(!w
        .events
        .iter()
        .any(|(_, e)| matches!(e, LeadEvent::Ended { .. })));
}

/// `invite` with its top Via branch replaced.
fn reinvite_with_branch(invite: &Request, branch: &str) -> Request {
    let mut r = invite.clone();
    for h in r.headers.iter_mut() {
        if let crate::sip::syntax::Header::Via(v) = h {
            let value = v.value().to_string();
            let old = value
                .split(";branch=")
                .nth(1)
                .and_then(|b| b.split(';').next())
                .unwrap_or_default()
                .to_string();
            *h = crate::sip::syntax::Header::Via(value.replace(&old, branch).into());
            break;
        }
    }
    r
}

#[test]
fn retransmitted_200_is_acked_again_and_a_forked_200_is_byed() {
    let mut w = answered_world();
    let first_ack = request(w.sent_of(Method::Ack)[0]).clone();
    let ok = w.fars[0].sent_2xx.clone().unwrap();
    let now = w.now;
    w.leg
        .handle_message(now, carrier(), SipMessage::Response(ok.clone()))
        .unwrap();
    w.step();
    let acks = w.sent_of(Method::Ack);
    assert_eq!(acks.len(), 2);
    assert_eq!(
        request(acks[1]).to_string(),
        first_ack.to_string(),
        "the same ACK"
    );
    // Another branch of the carrier answers with another To tag.
    let text = ok.to_string().replace("tag=far1", "tag=far2");
    let forked = match SipMessage::try_from(text.as_str()).unwrap() {
        SipMessage::Response(r) => r,
        SipMessage::Request(_) => unreachable!(),
    };
    w.leg
        .handle_message(now, carrier(), SipMessage::Response(forked))
        .unwrap();
    w.step();
    assert_eq!(w.sent_of(Method::Ack).len(), 3);
    let byes = w.sent_of(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert!(header(request(byes[0]), "To").ends_with("tag=far2"));
    assert_eq!(w.leg.outcome(), Some(Outcome::Answered), "our call goes on");
}

#[test]
fn requests_outside_the_dialog_get_481() {
    let mut w = answered_world();
    let text = format!(
        "BYE sip:powerdial@192.0.2.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.99:5080;branch=z9hG4bKstray\r\n\
         Max-Forwards: 70\r\nFrom: <sip:x@192.0.2.99>;tag=other\r\nTo: <sip:y@192.0.2.10>;tag=nope\r\n\
         Call-ID: {}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
        w.leg.call_id()
    );
    let now = w.now;
    w.leg
        .handle_message(now, carrier(), SipMessage::try_from(text.as_str()).unwrap())
        .unwrap();
    w.step();
    assert_eq!(w.sent.last().and_then(|s| s.code()), Some(481));
    assert_eq!(w.leg.outcome(), Some(Outcome::Answered));
    assert!(!w
        .event_list()
        .iter()
        .any(|e| matches!(e, LeadEvent::Ended { .. })));
}

#[test]
fn bad_numbers_and_trunks_send_nothing() {
    let t0 = test_epoch();
    let mut p = lead_params(32 * S);
    p.number = "5551234567".into();
    assert!(matches!(
        LeadLeg::dial(t0, p, &mut StdRng::seed_from_u64(1)),
        Err(CallError::NotE164(_))
    ));
    let mut p = lead_params(32 * S);
    p.trunk_uri = "tel:+1".into();
    assert!(matches!(
        LeadLeg::dial(t0, p, &mut StdRng::seed_from_u64(1)),
        Err(CallError::BadTrunkUri(_))
    ));
}

// --------------------------------------------------------------- agent leg

fn agent_params(targets: Vec<AgentTarget>) -> AgentParams {
    AgentParams {
        targets,
        agent_uri: "sip:alice@dialer.example".into(),
        from: "\"powerdial\" <sip:powerdial@dialer.example>".into(),
        local: local(),
        offer_sdp: OFFER.to_vec(),
        answer_timeout: 60 * S,
        timers: TimerConfig::default(),
    }
}

fn target(peer: Peer, user: &str) -> AgentTarget {
    AgentTarget {
        peer,
        contact: format!("sip:{user}@{}", peer.addr),
    }
}

fn agent_world() -> World<AgentLeg> {
    let t0 = test_epoch();
    let params = agent_params(vec![
        target(phone_a(), "alice-a"),
        target(phone_b(), "alice-b"),
    ]);
    let leg = AgentLeg::dial(t0, params, &mut StdRng::seed_from_u64(9)).unwrap();
    World::new(
        t0,
        leg,
        vec![Far::new(phone_a(), "pa"), Far::new(phone_b(), "pb")],
    )
}

#[test]
fn no_binding_is_an_error_and_nothing_is_sent() {
    let t0 = test_epoch();
    let r = AgentLeg::dial(t0, agent_params(vec![]), &mut StdRng::seed_from_u64(1));
    assert!(matches!(r, Err(CallError::NoBinding)));
}

#[test]
fn fork_first_200_wins_and_the_other_is_cancelled() {
    let mut w = agent_world();
    let invites = w.sent_of(Method::Invite);
    assert_eq!(invites.len(), 2);
    assert_eq!(invites[0].to, phone_a());
    assert_eq!(invites[1].to, phone_b());
    let (a, b) = (request(invites[0]), request(invites[1]));
    assert_eq!(a.uri.to_string(), "sip:alice-a@192.0.2.21:5060");
    assert_eq!(b.uri.to_string(), "sip:alice-b@192.0.2.22:5062");
    assert_eq!(header(a, "Call-ID"), header(b, "Call-ID"));
    assert_eq!(header(a, "From"), header(b, "From"));
    assert_ne!(header(a, "Via"), header(b, "Via"));
    w.run_until(S);
    w.with_far(phone_a(), |f, now| f.respond(now, 180, None, &[]));
    w.with_far(phone_b(), |f, now| f.respond(now, 180, None, &[]));
    w.run_until(2 * S);
    w.with_far(phone_b(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    assert_eq!(
        w.event_list(),
        [
            AgentEvent::Ringing,
            AgentEvent::Connected {
                sdp: ANSWER.to_vec()
            }
        ]
    );
    let cancels = w.sent_of(Method::Cancel);
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].to, phone_a());
    assert_eq!(cancels[0].at, 2 * S);
    // The 2xx ACK to phone B first; phone A's 487 is ACKed by its transaction.
    let acks: Vec<Peer> = w.sent_of(Method::Ack).iter().map(|a| a.to).collect();
    assert_eq!(acks, [phone_b(), phone_a()]);
    assert!(w.received.iter().any(|r| r.code() == Some(487)));
    w.run_until(60 * S);
    assert_eq!(w.sent_of(Method::Ack).len(), 2);
    assert!(w.leg.is_connected());
    assert_eq!(w.leg.connected_at(), Some(w.t0 + 2 * S));
    assert_eq!(w.sent_of(Method::Bye).len(), 0);
}

#[test]
fn fork_second_200_crossing_the_cancel_is_acked_and_byed() {
    let mut w = agent_world();
    w.run_until(S);
    w.with_far(phone_a(), |f, now| f.respond(now, 180, None, &[]));
    w.with_far(phone_b(), |f, now| f.respond(now, 180, None, &[]));
    w.hold = Some(|m| matches!(m, SipMessage::Request(r) if r.method == Method::Cancel));
    w.with_far(phone_a(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    assert_eq!(w.held.len(), 1, "CANCEL to phone B in flight");
    w.with_far(phone_b(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    w.release();
    let acks = w.sent_of(Method::Ack);
    assert_eq!(
        acks.iter().map(|a| a.to).collect::<Vec<_>>(),
        [phone_a(), phone_b()]
    );
    let byes = w.sent_of(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].to, phone_b());
    assert!(header(request(byes[0]), "To").ends_with("tag=pb"));
    assert!(w.leg.is_connected(), "phone A's call goes on");
    assert_eq!(
        w.event_list()
            .iter()
            .filter(|e| matches!(e, AgentEvent::Connected { .. }))
            .count(),
        1
    );
}

fn connected_agent() -> World<AgentLeg> {
    let mut w = agent_world();
    w.run_until(S);
    w.with_far(phone_b(), |f, now| f.respond(now, 486, None, &[]));
    w.with_far(phone_a(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    assert!(w.leg.is_connected());
    w
}

#[test]
fn phone_reinvite_for_hold_is_reported_and_answered() {
    let mut w = connected_agent();
    w.run_until(10 * S);
    w.with_far(phone_a(), |f, now| {
        let body = Body {
            content_type: "application/sdp",
            bytes: HOLD,
        };
        f.send_in_dialog(now, Method::Invite, Some(body));
    });
    assert_eq!(
        w.event_list().last(),
        Some(&AgentEvent::ReInvite {
            offer: Some(HOLD.to_vec())
        })
    );
    let now = w.now;
    w.leg.answer_reinvite(now, OFFER).unwrap();
    w.step();
    let last = w.fars[0].responses.last().unwrap();
    assert_eq!(last.status_code.code(), 200);
    assert_eq!(last.body, OFFER);
    assert!(w.leg.is_connected());
}

#[test]
fn info_dtmf_becomes_events() {
    let mut w = connected_agent();
    for (ct, body) in [
        (
            "application/dtmf-relay",
            &b"Signal=*\r\nDuration=160\r\n"[..],
        ),
        (
            "application/dtmf-relay",
            &b"Signal=#\r\nDuration=160\r\n"[..],
        ),
        ("application/dtmf", &b"0"[..]),
    ] {
        w.with_far(phone_a(), |f, now| {
            f.send_in_dialog(
                now,
                Method::Info,
                Some(Body {
                    content_type: ct,
                    bytes: body,
                }),
            );
        });
    }
    let digits: Vec<char> = w
        .event_list()
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::Dtmf(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(digits, ['*', '#', '0']);
    assert_eq!(
        w.fars[0]
            .responses
            .iter()
            .filter(|r| r.status_code.code() == 200)
            .count(),
        3
    );
}

#[test]
fn phone_bye_ends_the_agent_leg() {
    let mut w = connected_agent();
    w.run_until(100 * S);
    w.with_far(phone_a(), |f, now| {
        f.send_in_dialog(now, Method::Bye, None);
    });
    assert!(w.event_list().contains(&AgentEvent::Ended {
        reason: EndReason::RemoteBye
    }));
    w.run_until(200 * S);
    assert_eq!(w.event_list().last(), Some(&AgentEvent::Closed));
    assert!(w.leg.is_closed());
}

#[test]
fn rtp_timeout_byes_the_phone_like_a_hang_up() {
    let mut w = connected_agent();
    w.run_until(100 * S);
    let now = w.now;
    w.leg.rtp_timeout(now);
    w.step();
    let byes = w.sent_of(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!((byes[0].at, byes[0].to), (100 * S, phone_a()));
    assert!(w.event_list().contains(&AgentEvent::Ended {
        reason: EndReason::RtpTimeout
    }));
    assert!(!w.leg.is_connected());
    w.run_until(200 * S);
    assert_eq!(w.event_list().last(), Some(&AgentEvent::Closed));
}

#[test]
fn a_fork_to_an_unreachable_phone_fails_at_once() {
    let mut w = agent_world();
    w.run_until(S);
    w.with_far(phone_b(), |f, now| f.respond(now, 180, None, &[]));
    // Phone A's connection is refused: its fork fails now, B still rings.
    let now = w.now;
    w.leg.handle_transport_error(now, phone_a());
    w.step();
    assert!(w.event_list().iter().all(|e| *e == AgentEvent::Ringing));
    w.with_far(phone_b(), |f, now| f.respond(now, 480, None, &[]));
    assert_eq!(
        w.event_list().last(),
        Some(&AgentEvent::Failed { status: Some(480) })
    );
}

#[test]
fn every_fork_failing_reports_the_best_status() {
    let mut w = agent_world();
    w.run_until(S);
    w.with_far(phone_a(), |f, now| f.respond(now, 486, None, &[]));
    assert!(w.event_list().is_empty(), "one fork is still ringing");
    w.with_far(phone_b(), |f, now| f.respond(now, 603, None, &[]));
    assert_eq!(w.event_list(), [AgentEvent::Failed { status: Some(603) }]);
    w.run_until(100 * S);
    assert_eq!(w.event_list().last(), Some(&AgentEvent::Closed));
}

/// Every fork still ringing is its own leg-journal row under its own Via
/// branch (a crash must CANCEL each INVITE, RFC 3261 §9.1); a fork that
/// failed leaves the journal, and the answer replaces the rest by the
/// dialog's row.
#[test]
fn each_ringing_fork_is_journaled_under_its_branch_until_the_answer() {
    use super::leg_journal::{Journaled, LegChange, Revision, SavedLegState};
    let mut w = agent_world();
    let branches: Vec<String> = w
        .sent_of(Method::Invite)
        .iter()
        .map(|x| ClientKey::from_request(request(x)).expect("key").branch)
        .collect();
    let mut j = Journaled::default();
    let first = j.changes("alice", None, Some(&w.leg));
    let saved: Vec<(String, Peer)> = first
        .iter()
        .map(|c| match c {
            LegChange::Save(l) => {
                assert!(matches!(l.state, SavedLegState::Ringing { .. }));
                assert_eq!(l.call_id, w.leg.call_id());
                (l.branch.clone(), l.peer)
            }
            LegChange::Remove(k) => panic!("removed {k:?}"),
        })
        .collect();
    assert_eq!(
        saved,
        [
            (branches[0].clone(), phone_a()),
            (branches[1].clone(), phone_b())
        ]
    );
    assert!(j.changes("alice", None, Some(&w.leg)).is_empty());
    // Phone A declines: its row goes, phone B's stays.
    w.run_until(S);
    w.with_far(phone_a(), |f, now| f.respond(now, 486, None, &[]));
    let after = j.changes("alice", None, Some(&w.leg));
    assert!(
        matches!(&after[..], [LegChange::Remove(k)] if k.branch == branches[0]),
        "{after:?}"
    );
    // Phone B answers: the dialog's row replaces its INVITE's.
    w.with_far(phone_b(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    let answered = j.changes("alice", None, Some(&w.leg));
    assert_eq!(answered.len(), 2, "{answered:?}");
    assert!(answered.iter().any(|c| matches!(c, LegChange::Save(l)
        if l.branch.is_empty() && matches!(l.state, SavedLegState::Answered { .. }) && l.peer == phone_b())));
    assert!(answered
        .iter()
        .any(|c| matches!(c, LegChange::Remove(k) if k.branch == branches[1])));
    assert_eq!(
        w.leg.journal_revisions().collect::<Vec<_>>(),
        [("", Revision::Answered(1))]
    );
}

#[test]
fn agent_answer_timeout_cancels_every_fork() {
    let mut w = agent_world();
    w.run_until(S);
    w.with_far(phone_a(), |f, now| f.respond(now, 180, None, &[]));
    w.with_far(phone_b(), |f, now| f.respond(now, 180, None, &[]));
    w.run_until(61 * S);
    let cancels = w.sent_of(Method::Cancel);
    assert_eq!(cancels.len(), 2);
    assert!(cancels.iter().all(|c| c.at == 60 * S));
    assert!(w
        .event_list()
        .contains(&AgentEvent::Failed { status: None }));
    w.run_until(200 * S);
    assert_eq!(w.event_list().last(), Some(&AgentEvent::Closed));
}

/// `[[trunk]] response_timeout`: a trunk that sends nothing at all (not
/// even 100 Trying) is given up at the timeout, before Timer B, as R10
/// `temporary_error` that may fail over; no CANCEL is sent without a
/// provisional (RFC 3261 §9.1), but one follows a late 180 at once.
#[test]
fn a_silent_trunk_is_given_up_at_the_response_timeout_and_may_fail_over() {
    let mut params = lead_params(32 * S);
    params.response_timeout = Some(2 * S);
    let t0 = test_epoch();
    let leg = LeadLeg::dial(t0, params, &mut StdRng::seed_from_u64(3)).unwrap();
    let mut far = Far::new(carrier(), "far1");
    far.drop_trying = true;
    let mut w = World::new(t0, leg, vec![far]);
    w.run_until(3 * S);
    assert!(w.events.contains(&(
        2 * S,
        LeadEvent::Unanswered {
            outcome: Outcome::TemporaryError
        }
    )));
    assert_eq!(
        w.leg.trunk_failure(),
        Some(super::trunk::TrunkFailure::NoResponse)
    );
    assert!(w.leg.may_fail_over());
    assert_eq!(w.sent_of(Method::Cancel).len(), 0);
    w.with_far(carrier(), |f, now| f.respond(now, 180, None, &[]));
    w.run_until(5 * S);
    assert_eq!(
        w.sent_of(Method::Cancel).len(),
        1,
        "the late 180 is cancelled"
    );
}

/// A response within `response_timeout` keeps the call on the trunk.
#[test]
fn a_100_trying_stops_the_response_timeout() {
    let mut params = lead_params(32 * S);
    params.response_timeout = Some(2 * S);
    let mut w = World::new(
        test_epoch(),
        LeadLeg::dial(test_epoch(), params, &mut StdRng::seed_from_u64(4)).unwrap(),
        vec![Far::new(carrier(), "far1")],
    );
    w.run_until(10 * S);
    assert!(w.events.is_empty(), "{:?}", w.events);
    assert_eq!(w.leg.trunk_failure(), None);
}

/// Failover only on what did not reach the lead: 503 and 408 may fail
/// over; 486, 404, 603 never; a 503 after a 180 never (the phone rang).
#[test]
fn final_statuses_decide_whether_the_call_may_fail_over() {
    for (ringing, status, may) in [
        (false, 503, true),
        (false, 408, true),
        (false, 500, true),
        (false, 486, false),
        (false, 404, false),
        (false, 603, false),
        (false, 480, false),
        (true, 503, false),
    ] {
        let mut w = lead_world(32 * S);
        w.run_until(S);
        if ringing {
            w.with_far(carrier(), |f, now| f.respond(now, 180, None, &[]));
            w.run_until(2 * S);
        }
        w.with_far(carrier(), |f, now| f.respond(now, status, None, &[]));
        w.run_until(3 * S);
        assert_eq!(
            w.leg.trunk_failure(),
            Some(super::trunk::TrunkFailure::Status(status))
        );
        assert_eq!(w.leg.may_fail_over(), may, "{status} after 180: {ringing}");
    }
}

/// RFC 4028 session timers towards the trunk.
fn session_world(answer_se: Option<&str>) -> World<LeadLeg> {
    let mut params = lead_params(32 * S);
    params.session_expires = Some(1800 * S);
    let t0 = test_epoch();
    let leg = LeadLeg::dial(t0, params, &mut StdRng::seed_from_u64(11)).unwrap();
    let mut w = World::new(t0, leg, vec![Far::new(carrier(), "far1")]);
    w.run_until(S);
    let extra: Vec<String> = answer_se
        .map(|se| vec![format!("Session-Expires: {se}"), "Require: timer".into()])
        .unwrap_or_default();
    w.with_far(carrier(), |f, now| {
        f.respond(now, 200, Some(ANSWER), &extra)
    });
    assert_eq!(w.leg.outcome(), Some(Outcome::Answered));
    w
}

#[test]
fn session_timer_is_offered_and_we_refresh_by_reinvite_at_half_the_interval() {
    let mut w = session_world(Some("1800;refresher=uac"));
    let invite = request(w.sent_of(Method::Invite)[0]).clone();
    assert_eq!(header(&invite, "Supported"), "timer");
    assert_eq!(header(&invite, "Session-Expires"), "1800;refresher=uac");
    w.run_until(4000 * S);
    let reinvites: Vec<(Duration, String, String)> = w
        .sent_of(Method::Invite)
        .iter()
        .skip(1)
        .map(|x| {
            let r = request(x);
            (x.at, header(r, "CSeq"), header(r, "Session-Expires"))
        })
        .collect();
    // Every 900 s from the answer at 1 s; the offer is ours unchanged.
    assert_eq!(
        reinvites
            .iter()
            .map(|(at, cseq, _)| (*at, cseq.as_str()))
            .collect::<Vec<_>>(),
        [
            (901 * S, "2 INVITE"),
            (1801 * S, "3 INVITE"),
            (2701 * S, "4 INVITE"),
            (3601 * S, "5 INVITE")
        ]
    );
    assert!(reinvites.iter().all(|r| r.2 == "1800;refresher=uac"));
    assert_eq!(request(w.sent_of(Method::Invite)[1]).body, OFFER);
    let acks: Vec<String> = w
        .sent_of(Method::Ack)
        .iter()
        .map(|x| header(request(x), "CSeq"))
        .collect();
    assert_eq!(acks, ["1 ACK", "2 ACK", "3 ACK", "4 ACK", "5 ACK"]);
    assert!(w.sent_of(Method::Bye).is_empty());
    // The leg journal follows the dialog's CSeq (a BYE after a crash must
    // be above it, RFC 3261 §12.2.1.1).
    assert_eq!(
        w.leg.journal_revision(),
        Some(("", super::leg_journal::Revision::Answered(5)))
    );
}

#[test]
fn a_refresh_answered_481_ends_the_call_without_a_bye() {
    let mut w = session_world(Some("1800;refresher=uac"));
    w.fars[0].in_dialog_status = 481;
    w.run_until(1000 * S);
    assert!(w.events.contains(&(
        901 * S,
        LeadEvent::Ended {
            reason: EndReason::SessionGone
        }
    )));
    assert!(w.sent_of(Method::Bye).is_empty());
    assert_eq!(w.leg.journal_revision(), None);
}

#[test]
fn a_carrier_refresher_that_stops_refreshing_gets_a_bye_before_expiry() {
    let mut w = session_world(Some("120;refresher=uas"));
    // The carrier refreshes by UPDATE at 50 s (answered 200, RFC 3311).
    w.run_until(50 * S);
    w.with_far(carrier(), |f, now| {
        f.send_in_dialog(now, Method::Update, None);
    });
    assert_eq!(
        w.fars[0].responses.last().map(|r| r.status_code.code()),
        Some(200)
    );
    w.run_until(400 * S);
    assert_eq!(w.sent_of(Method::Invite).len(), 1, "we do not refresh");
    let byes = w.sent_of(Method::Bye);
    assert_eq!(byes.len(), 1);
    // 120 - min(32, 40) = 88 s after the last refresh (RFC 4028 §10).
    assert_eq!(byes[0].at, 138 * S);
    assert!(w.events.contains(&(
        138 * S,
        LeadEvent::Ended {
            reason: EndReason::SessionExpired
        }
    )));
}

#[test]
fn no_session_expires_in_the_answer_means_no_session_timer() {
    let mut w = session_world(None);
    w.run_until(5000 * S);
    assert_eq!(w.sent_of(Method::Invite).len(), 1);
    assert!(w.sent_of(Method::Bye).is_empty());
}

#[test]
fn a_422_is_answered_once_with_the_carriers_min_se() {
    let mut params = lead_params(32 * S);
    params.session_expires = Some(1800 * S);
    params.credentials = None;
    let t0 = test_epoch();
    let leg = LeadLeg::dial(t0, params, &mut StdRng::seed_from_u64(12)).unwrap();
    let mut w = World::new(t0, leg, vec![Far::new(carrier(), "far1")]);
    w.run_until(S);
    w.with_far(carrier(), |f, now| {
        f.respond(now, 422, None, &["Min-SE: 3600".to_string()]);
        f.forget_invite();
    });
    w.run_until(2 * S);
    let invites = w.sent_of(Method::Invite);
    assert_eq!(invites.len(), 2);
    let second = request(invites[1]);
    assert_eq!(header(second, "CSeq"), "2 INVITE");
    assert_eq!(header(second, "Session-Expires"), "3600;refresher=uac");
    assert_eq!(w.leg.outcome(), None, "the call goes on");
    // A second 422 ends the call (no loop).
    w.with_far(carrier(), |f, now| {
        f.respond(now, 422, None, &["Min-SE: 7200".to_string()]);
    });
    w.run_until(3 * S);
    assert_eq!(w.sent_of(Method::Invite).len(), 2);
    assert!(w.leg.outcome().is_some());
}

/// In-dialog OPTIONS keepalives towards the trunk (`keepalive_interval`).
fn keepalive_world() -> World<LeadLeg> {
    let mut params = lead_params(32 * S);
    params.keepalive = Some(60 * S);
    let t0 = test_epoch();
    let leg = LeadLeg::dial(t0, params, &mut StdRng::seed_from_u64(13)).unwrap();
    let mut w = World::new(t0, leg, vec![Far::new(carrier(), "far1")]);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    assert_eq!(w.leg.outcome(), Some(Outcome::Answered));
    w
}

#[test]
fn keepalive_options_go_every_interval_and_a_481_ends_the_call_without_a_bye() {
    let mut w = keepalive_world();
    w.run_until(200 * S);
    let options: Vec<(Duration, String)> = w
        .sent_of(Method::Options)
        .iter()
        .map(|x| (x.at, header(request(x), "CSeq")))
        .collect();
    // In the dialog (RFC 3261 §12.2.1.1: the next CSeq), a minute apart.
    assert_eq!(
        options
            .iter()
            .map(|(at, c)| (*at, c.as_str()))
            .collect::<Vec<_>>(),
        [
            (61 * S, "2 OPTIONS"),
            (121 * S, "3 OPTIONS"),
            (181 * S, "4 OPTIONS")
        ]
    );
    let first = request(w.sent_of(Method::Options)[0]);
    assert!(header(first, "To").contains("tag=far1"));
    assert!(w
        .events
        .iter()
        .all(|(_, e)| !matches!(e, LeadEvent::Ended { .. })));
    // The journal keeps the dialog's CSeq (a BYE after a crash must be above it).
    assert_eq!(
        w.leg.journal_revision(),
        Some(("", super::leg_journal::Revision::Answered(4)))
    );
    // The carrier restarts and forgets the call.
    w.fars[0].in_dialog_status = 481;
    w.run_until(300 * S);
    assert!(w.events.contains(&(
        241 * S,
        LeadEvent::Ended {
            reason: EndReason::TrunkLost
        }
    )));
    assert!(w.sent_of(Method::Bye).is_empty(), "no dialog left to BYE");
    assert_eq!(
        w.sent_of(Method::Options).len(),
        4,
        "no keepalive after the end"
    );
    assert_eq!(w.leg.outcome(), Some(Outcome::Answered));
    assert_eq!(w.leg.record().ended, Some(w.t0 + 241 * S));
}

#[test]
fn a_keepalive_answered_408_or_not_at_all_ends_the_call_with_a_bye() {
    let mut w = keepalive_world();
    w.fars[0].in_dialog_status = 408;
    w.run_until(100 * S);
    let byes = w.sent_of(Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].at, 61 * S);
    assert_eq!(w.leg.outcome(), Some(Outcome::Answered));

    let mut w = keepalive_world();
    w.fars[0].mute_in_dialog = true;
    w.run_until(200 * S);
    // Timer F (64·T1 = 32 s) after the first OPTIONS, retransmitted meanwhile.
    let byes = w.sent_of(Method::Bye);
    assert_eq!(byes.len(), 1, "{:?}", w.sent_of(Method::Options).len());
    assert_eq!(byes[0].at, 93 * S);
    assert!(w.events.contains(&(
        93 * S,
        LeadEvent::Ended {
            reason: EndReason::TrunkLost
        }
    )));
}

#[test]
fn a_keepalive_refused_405_keeps_the_call() {
    let mut w = keepalive_world();
    w.fars[0].in_dialog_status = 405;
    w.run_until(300 * S);
    assert!(w.sent_of(Method::Bye).is_empty());
    assert!(w
        .events
        .iter()
        .all(|(_, e)| !matches!(e, LeadEvent::Ended { .. })));
    assert_eq!(w.sent_of(Method::Options).len(), 4);
}

// ------------------------------------------------------------ retired legs

impl Leg for ClosingLeg {
    type Event = ();
    fn message(&mut self, now: Instant, peer: Peer, m: SipMessage) {
        self.handle_message(now, peer, m).unwrap();
    }
    fn timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
    fn transmit(&mut self) -> Option<Transmit> {
        self.poll_transmit()
    }
    fn event(&mut self) -> Option<()> {
        None
    }
    fn deadline(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn transport_error(&mut self, now: Instant, peer: Peer) {
        self.handle_transport_error(now, peer)
    }
}

impl World<LeadLeg> {
    /// The engine's step once the outcome is stored: the leg is retired to
    /// its [`ClosingLeg`], the wire and the far ends go on.
    fn retire(self) -> World<ClosingLeg> {
        let now = self.now;
        World {
            t0: self.t0,
            now,
            leg: self.leg.into_closing(now),
            fars: self.fars,
            sent: self.sent,
            received: self.received,
            events: Vec::new(),
            hold: self.hold,
            held: self.held,
            unreachable: self.unreachable,
        }
    }
}

#[test]
fn a_retired_leg_answers_the_bye_again_and_acks_the_2xx_again_until_timer_j() {
    let mut w = answered_world();
    let first_ack = request(w.sent_of(Method::Ack)[0]).clone();
    w.run_until(30 * S);
    // Our 200 to the carrier's BYE is lost: the carrier retransmits its BYE.
    w.hold = Some(|m| matches!(m, SipMessage::Response(r) if r.status_code.code() == 200));
    w.with_far(carrier(), |f, now| {
        f.send_in_dialog(now, Method::Bye, None);
    });
    assert!(w.events.contains(&(
        30 * S,
        LeadEvent::Ended {
            reason: EndReason::RemoteBye
        }
    )));
    let mut w = w.retire();
    assert!(!w.leg.is_done(), "Timer J runs");
    w.run_until(30 * S + 600 * MS);
    assert_eq!(w.held.len(), 2, "the BYE's retransmission answered again");
    w.release();
    // The carrier's 200 to our INVITE again (our ACK lost): the same ACK.
    let ok = w.fars[0].sent_2xx.clone().unwrap();
    let now = w.now;
    w.leg
        .handle_message(now, carrier(), SipMessage::Response(ok))
        .unwrap();
    w.step();
    let acks = w.sent_of(Method::Ack);
    assert_eq!(acks.len(), 2);
    assert_eq!(request(acks[1]).to_string(), first_ack.to_string());
    // A new request in the ended dialog: 481.
    let n = w.fars[0].responses.len();
    w.with_far(carrier(), |f, now| {
        f.send_in_dialog(now, Method::Info, None);
    });
    assert_eq!(
        w.fars[0].responses[n..]
            .iter()
            .map(|r| r.status_code.code())
            .collect::<Vec<_>>(),
        [481]
    );
    // Timer J (64·T1) after the BYE, then nothing is left.
    w.run_until(61 * S);
    assert!(!w.leg.is_done());
    w.run_until(63 * S);
    assert!(w.leg.is_done());
    assert_eq!(w.sent_of(Method::Bye).len(), 0);
}

#[test]
fn a_leg_retired_while_its_cancel_is_out_acks_and_byes_a_crossing_200() {
    let mut w = lead_world(32 * S);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 180, None, &[]));
    w.hold = Some(|m| matches!(m, SipMessage::Request(r) if r.method == Method::Cancel));
    w.run_until(32 * S);
    assert!(w.events.contains(&(
        32 * S,
        LeadEvent::Unanswered {
            outcome: Outcome::NoAnswer
        }
    )));
    let mut w = w.retire();
    assert_eq!(w.held.len(), 1, "the CANCEL is in flight");
    w.with_far(carrier(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    w.release();
    let methods: Vec<Method> = w.sent_methods().into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        methods,
        [Method::Invite, Method::Cancel, Method::Ack, Method::Bye]
    );
    let far_saw: Vec<Method> = w.fars[0].requests.iter().map(|r| r.method).collect();
    assert!(far_saw.contains(&Method::Ack) && far_saw.contains(&Method::Bye));
    assert!(!w.leg.is_done(), "the BYE's transaction runs");
    w.run_until(80 * S);
    assert!(w.leg.is_done());
    assert_eq!(w.leg.poll_timeout(), None);
}

#[test]
fn a_leg_retired_after_a_busy_acks_the_486_again_until_timer_d() {
    let mut w = lead_world(32 * S);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 486, None, &[]));
    let mut w = w.retire();
    assert_eq!(w.sent_of(Method::Ack).len(), 1);
    // The carrier did not get our ACK and sends its 486 again.
    let busy = w.fars[0]
        .responses
        .iter()
        .find(|r| r.status_code.code() == 486);
    assert!(busy.is_none(), "the far end's own responses are not logged");
    let final_486 = w
        .received
        .iter()
        .find(|r| r.code() == Some(486))
        .map(|r| r.message.clone())
        .unwrap();
    let now = w.now;
    w.leg.handle_message(now, carrier(), final_486).unwrap();
    w.step();
    assert_eq!(w.sent_of(Method::Ack).len(), 2, "ACKed again (Timer D)");
    w.run_until(32 * S);
    assert!(!w.leg.is_done());
    w.run_until(34 * S);
    assert!(w.leg.is_done());
}

/// An agent's closing legs as its driver runs them: messages routed by
/// Call-ID, what the touched legs send drained each turn, done legs
/// dropped.
#[derive(Default)]
struct ClosingSet {
    legs: ClosingLegs,
    out: std::collections::VecDeque<Transmit>,
    dropped: Vec<String>,
}

impl ClosingSet {
    fn turn(&mut self) {
        let mut out = Vec::new();
        self.dropped.extend(self.legs.drain(&mut out));
        self.out.extend(out);
    }
}

impl Leg for ClosingSet {
    type Event = ();
    fn message(&mut self, now: Instant, peer: Peer, m: SipMessage) {
        let call_id = match &m {
            SipMessage::Request(r) => header(r, "Call-ID"),
            SipMessage::Response(r) => header(r, "Call-ID"),
        };
        let at = self.legs.find(&call_id).expect("a closing leg has it");
        self.legs.handle_message(at, now, peer, m).unwrap();
        self.turn();
    }
    fn timeout(&mut self, now: Instant) {
        self.legs.handle_timeout(now);
        self.turn();
    }
    fn transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    fn event(&mut self) -> Option<()> {
        None
    }
    fn deadline(&self) -> Option<Instant> {
        self.legs.poll_timeout()
    }
    fn transport_error(&mut self, now: Instant, peer: Peer) {
        self.legs.handle_transport_error(now, peer);
        self.turn();
    }
}

/// SPEC §6 call setup: an agent's driver looks only at the closing legs a
/// message or a timer touched, yet every one still answers for itself
/// until its Timer J, and the earliest deadline is the set's.
#[test]
fn closing_legs_answer_for_themselves_and_leave_at_their_timer_j() {
    // Two calls ended by the carrier's BYE at 30 s and 40 s.
    let mut first = answered_world();
    first.run_until(30 * S);
    first.with_far(carrier(), |f, now| {
        f.send_in_dialog(now, Method::Bye, None);
    });
    let mut second = lead_world_seeded(32 * S, false, 8);
    second.run_until(S);
    second.with_far(carrier(), |f, now| f.respond(now, 200, Some(ANSWER), &[]));
    second.run_until(40 * S);
    // Our 200 to the second carrier's BYE is lost in flight.
    second.hold = Some(|m| matches!(m, SipMessage::Response(r) if r.status_code.code() == 200));
    second.with_far(carrier(), |f, now| {
        f.send_in_dialog(now, Method::Bye, None);
    });
    assert_eq!(second.held.len(), 1);
    let first_id = first.leg.call_id().to_string();
    let second_id = second.leg.call_id().to_string();
    assert_ne!(first_id, second_id);
    let first = first.leg.into_closing(first.now);
    let second_leg = second.leg.into_closing(second.now);
    let (first_j, second_j) = (first.poll_timeout(), second_leg.poll_timeout());
    assert!(first_j.is_some() && first_j < second_j);
    let mut set = ClosingSet::default();
    set.legs.push(first);
    set.legs.push(second_leg);
    set.turn();
    assert_eq!(set.legs.len(), 2);
    assert!(set.dropped.is_empty());
    assert!(
        set.out.is_empty(),
        "both BYEs were answered before retiring"
    );
    // The set's deadline is the earliest leg's.
    assert_eq!(set.legs.poll_timeout(), first_j);
    // The second call's carrier did not hear our 200 and sends its BYE
    // again (Timer E): the second leg answers it, through the set.
    let mut w = World {
        t0: second.t0,
        now: second.now,
        leg: set,
        fars: second.fars,
        sent: Vec::new(),
        received: Vec::new(),
        events: Vec::new(),
        hold: second.hold,
        held: second.held,
        unreachable: Vec::new(),
    };
    w.run_until(40 * S + 600 * MS);
    assert_eq!(w.held.len(), 2, "the retransmitted BYE is answered again");
    w.release();
    // Timer J (64·T1 = 32 s) after each BYE: the first leaves at 62 s, the
    // second at 72 s, each reported once for unrouting.
    w.run_until(61 * S);
    assert!(w.leg.dropped.is_empty());
    w.run_until(63 * S);
    assert_eq!(w.leg.dropped, std::slice::from_ref(&first_id));
    assert_eq!(w.leg.legs.len(), 1);
    w.run_until(71 * S);
    assert_eq!(w.leg.dropped, std::slice::from_ref(&first_id));
    w.run_until(73 * S);
    assert_eq!(w.leg.dropped, [first_id, second_id]);
    assert!(w.leg.legs.is_empty());
    assert_eq!(w.leg.legs.poll_timeout(), None);
}

/// SPEC §6: a retired leg is a small record (its last transactions, its
/// identifiers), not the call; a live lead leg, boxed in every call, stays
/// within 2 KB (its ACK is kept as octets, not as a parsed request).
#[test]
fn a_retired_leg_is_a_small_record() {
    let closing = std::mem::size_of::<ClosingLeg>();
    let lead = std::mem::size_of::<LeadLeg>();
    assert!(
        closing <= 1280 && lead <= 2048 && closing < lead,
        "ClosingLeg {closing} bytes, LeadLeg {lead}"
    );
}

/// `(count, sum)` of the ring-timeout lateness histogram in `GET /metrics`.
fn ring_late_metric() -> (u64, f64) {
    let text = crate::metrics::render();
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("powerdial_ring_timeout_late_seconds_{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("count") as u64, value("sum"))
}

#[test]
fn a_ring_timeout_fired_late_is_counted_with_its_lateness() {
    let (count0, sum0) = ring_late_metric();
    let mut w = lead_world(32 * S);
    w.run_until(S);
    w.with_far(carrier(), |f, now| f.respond(now, 180, None, &[]));
    // The process gets to the deadline 25 ms late (a busy runtime).
    w.now = w.t0 + 32 * S + 25 * MS;
    let now = w.now;
    w.leg.timeout(now);
    w.step();
    assert_eq!(w.sent_of(Method::Cancel).len(), 1);
    // Other tests fire ring timeouts in parallel: the figures only grow.
    let (count1, sum1) = ring_late_metric();
    assert!(count1 > count0, "{count0} → {count1}");
    assert!(sum1 - sum0 >= 0.025 - 1e-9, "{sum0} → {sum1}");
}
