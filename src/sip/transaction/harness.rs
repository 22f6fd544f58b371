//! A two-endpoint harness (quinn's `Pair`, str0m's `progress()`): a client
//! table and a server table exchange Transmits over virtual time, with the
//! first N datagrams each way lost, and tiny TUs on each side.

use std::time::{Duration, Instant};

use super::testmsg::{invite, non_invite, request, response_to};
use super::{test_epoch, Event, Retransmit2xx, Retransmit2xxEvent, TimerConfig, TransactionTable};
use crate::sip::syntax::{prelude::*, Method, Request, SipMessage, StatusCode};
use crate::sip::{Peer, Transmit, TransportKind};

struct Pair {
    now: Instant,
    client: TransactionTable,
    server: TransactionTable,
    /// The client's address as the server sees it, and vice versa.
    client_addr: Peer,
    server_addr: Peer,
    lose_to_server: usize,
    lose_to_client: usize,
    /// The final status the server's TU answers INVITEs with.
    invite_answer: u16,
    /// The server TU's 2xx retransmission, once it answered 2xx.
    retransmit: Option<Retransmit2xx>,
    /// The client TU's direct sends (the ACK for a 2xx).
    client_raw: Vec<Transmit>,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
    datagrams: usize,
    ack_timeouts: usize,
}

impl Pair {
    fn new(transport: TransportKind, lose_to_server: usize, lose_to_client: usize) -> Pair {
        Pair {
            now: test_epoch(),
            client: TransactionTable::new(TimerConfig::default()),
            server: TransactionTable::new(TimerConfig::default()),
            client_addr: Peer {
                transport,
                addr: "192.0.2.1:5060".parse().unwrap(),
            },
            server_addr: Peer {
                transport,
                addr: "192.0.2.2:5060".parse().unwrap(),
            },
            lose_to_server,
            lose_to_client,
            invite_answer: 200,
            retransmit: None,
            client_raw: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            datagrams: 0,
            ack_timeouts: 0,
        }
    }

    /// Delivers everything in flight and runs both TUs; true if anything moved.
    fn progress(&mut self) -> bool {
        let mut moved = false;
        let mut to_server: Vec<Transmit> = std::mem::take(&mut self.client_raw);
        to_server.extend(std::iter::from_fn(|| self.client.poll_transmit()));
        for t in to_server {
            moved = true;
            self.datagrams += 1;
            if self.lose_to_server > 0 {
                self.lose_to_server -= 1;
                continue;
            }
            self.server
                .handle_message(self.now, self.client_addr, t.message)
                .unwrap();
        }
        let mut to_client: Vec<Transmit> =
            std::iter::from_fn(|| self.server.poll_transmit()).collect();
        if let Some(r) = self.retransmit.as_mut() {
            to_client.extend(std::iter::from_fn(|| r.poll_transmit()));
            while let Some(Retransmit2xxEvent::AckTimeout) = r.poll_event() {
                self.ack_timeouts += 1;
            }
        }
        for t in to_client {
            moved = true;
            self.datagrams += 1;
            if self.lose_to_client > 0 {
                self.lose_to_client -= 1;
                continue;
            }
            self.client
                .handle_message(self.now, self.server_addr, t.message)
                .unwrap();
        }
        while let Some(event) = self.server.poll_event() {
            moved = true;
            self.server_tu(&event);
            self.server_events.push(event);
        }
        while let Some(event) = self.client.poll_event() {
            moved = true;
            self.client_tu(&event);
            self.client_events.push(event);
        }
        moved
    }

    fn server_tu(&mut self, event: &Event) {
        match event {
            Event::NewRequest { key, request, .. } if request.method == Method::Invite => {
                let ringing = response_to(request, 180);
                self.server.respond(self.now, key, ringing).unwrap();
                let answer = response_to(request, self.invite_answer);
                if self.invite_answer < 300 {
                    self.retransmit = Some(Retransmit2xx::new(
                        self.now,
                        self.client_addr,
                        answer.clone(),
                        TimerConfig::default(),
                    ));
                }
                self.server.respond(self.now, key, answer).unwrap();
            }
            Event::NewRequest { key, request, .. } => {
                self.server
                    .respond(self.now, key, response_to(request, 200))
                    .unwrap();
            }
            Event::StrayAck { request, .. } => {
                if let Some(r) = self.retransmit.as_mut() {
                    if r.is_acked_by(request) {
                        r.handle_ack(self.now);
                    }
                }
            }
            _ => {}
        }
    }

    fn client_tu(&mut self, event: &Event) {
        let response = match event {
            Event::Final { response, .. } | Event::StrayResponse { response, .. } => response,
            _ => return,
        };
        let is_invite_2xx = response.status_code.kind()
            == crate::sip::syntax::StatusCodeKind::Successful
            && response.cseq_header().unwrap().value().ends_with("INVITE");
        if is_invite_2xx {
            // §13.2.2.4: the TU ACKs every 2xx, retransmissions included.
            let ack = request(&format!(
                "ACK sip:bob@192.0.2.2 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack2xx\r\n\
Max-Forwards: 70\r\n{}\r\n{}\r\n{}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                response.from_header().unwrap(),
                response.to_header().unwrap(),
                response.call_id_header().unwrap(),
            ));
            self.client_raw.push(Transmit {
                peer: self.server_addr,
                message: SipMessage::Request(ack),
            });
        }
    }

    /// Runs until both sides are idle, jumping virtual time to the next
    /// deadline whenever nothing is in flight.
    fn run(&mut self) {
        for _ in 0..10_000 {
            if self.progress() {
                continue;
            }
            let next = [
                self.client.poll_timeout(),
                self.server.poll_timeout(),
                self.retransmit.as_ref().and_then(|r| r.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { return };
            self.now = self.now.max(next);
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
            if let Some(r) = self.retransmit.as_mut() {
                r.handle_timeout(self.now);
            }
        }
        panic!("the pair did not settle");
    }

    fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
        events.iter().filter(|e| f(e)).count()
    }

    fn finals(&self) -> Vec<StatusCode> {
        self.client_events
            .iter()
            .filter_map(|e| match e {
                Event::Final { response, .. } => Some(response.status_code.clone()),
                _ => None,
            })
            .collect()
    }

    fn new_requests(&self) -> usize {
        Pair::count(&self.server_events, |e| {
            matches!(e, Event::NewRequest { .. })
        })
    }
}

fn start(pair: &mut Pair, req: Request) {
    let peer = pair.server_addr;
    pair.client.send_request(pair.now, peer, req).unwrap();
}

#[test]
fn invite_486_over_loss_of_requests_and_responses() {
    // Lost: the INVITE and its first retransmission; the 100, 180 and 486.
    let mut pair = Pair::new(TransportKind::Udp, 2, 3);
    pair.invite_answer = 486;
    let t0 = pair.now;
    start(&mut pair, invite("z9hG4bKpair1"));
    pair.run();
    assert_eq!(pair.new_requests(), 1);
    assert_eq!(pair.finals(), [StatusCode::BusyHere]);
    // Timer G re-sent the 486; the ACK reached the server (no Timer H).
    assert!(!pair
        .server_events
        .iter()
        .any(|e| matches!(e, Event::ServerTimeout { .. })));
    assert!(pair.client.is_empty() && pair.server.is_empty());
    // Everything settled by Timer D (32 s after the 486 arrived).
    assert!(pair.now - t0 < Duration::from_secs(40));
}

#[test]
fn invite_200_over_loss_is_retransmitted_by_the_tu_and_acked() {
    // Lost: the 100, 180 and the 200 itself; the client's A timer re-sends
    // the INVITE, which the server's Accepted transaction absorbs.
    let mut pair = Pair::new(TransportKind::Udp, 0, 3);
    start(&mut pair, invite("z9hG4bKpair2"));
    pair.run();
    assert_eq!(pair.new_requests(), 1, "no duplicate INVITE reached the TU");
    assert_eq!(pair.finals(), [StatusCode::OK]);
    let r = pair.retransmit.as_ref().unwrap();
    assert!(r.is_done());
    assert_eq!(
        pair.ack_timeouts, 0,
        "the ACK stopped the 2xx retransmission"
    );
    assert!(pair.client.is_empty() && pair.server.is_empty());
}

#[test]
fn non_invite_over_loss() {
    // Lost: the first OPTIONS and the first 200.
    let mut pair = Pair::new(TransportKind::Udp, 1, 1);
    start(&mut pair, non_invite("OPTIONS", "z9hG4bKpair3"));
    pair.run();
    assert_eq!(pair.new_requests(), 1);
    assert_eq!(pair.finals(), [StatusCode::OK]);
    assert!(pair.client.is_empty() && pair.server.is_empty());
}

#[test]
fn invite_and_bye_over_tcp_never_retransmit() {
    let mut pair = Pair::new(TransportKind::Tcp, 0, 0);
    start(&mut pair, invite("z9hG4bKpair4"));
    pair.run();
    assert_eq!(pair.finals(), [StatusCode::OK]);
    // INVITE, 100, 180, 200, ACK — plus the TU's 2xx retransmissions, which
    // §13.3.1.4 asks for on every transport until the ACK: here none, since
    // the ACK came back before T1.
    assert_eq!(pair.datagrams, 5);
    start(&mut pair, non_invite("BYE", "z9hG4bKpair5"));
    pair.run();
    assert_eq!(pair.datagrams, 7);
    assert!(pair.client.is_empty() && pair.server.is_empty());
}
