//! Server transactions: INVITE (RFC 3261 §17.2.1) and non-INVITE (§17.2.2).

use std::time::{Duration, Instant};

use super::key::to_tag;
use super::message::build_trying;
use super::outbox::Outbox;
use super::timer::{Timer, TimerConfig, TimerTable};
use super::TransactionError;
use crate::sip::syntax::{Method, Request, Response, SipMessage};
use crate::sip::{Peer, Transmit};

/// What a server transaction tells its TU (RFC 3261 §17.2). The request that
/// created it reaches the TU through the table's `NewRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Timer H fired: the ACK for a 300-699 never came (§17.2.1).
    Timeout,
    /// The transport failed to send a response (§17.2.4).
    TransportError,
}

/// The parts of a server transaction its states act on. The request is
/// not kept: matching uses the table's key (RFC 3261 §17.2.3) and a
/// retransmitted request only needs the last response again, so a
/// transaction waiting out Timer J or L holds its response and timers,
/// nothing of the request (SPEC §6 memory).
#[derive(Debug)]
struct ServerCore {
    peer: Peer,
    config: TimerConfig,
    timers: TimerTable,
    transmits: Outbox<Transmit>,
    events: Outbox<ServerEvent>,
}

impl ServerCore {
    fn new(peer: Peer, config: TimerConfig) -> Self {
        ServerCore {
            peer,
            config,
            timers: TimerTable::default(),
            transmits: Outbox::new(),
            events: Outbox::new(),
        }
    }

    fn reliable(&self) -> bool {
        self.peer.transport.is_reliable()
    }

    fn send(&mut self, response: &Response) {
        self.transmits.push(Transmit {
            peer: self.peer,
            message: SipMessage::Response(response.clone()),
        });
    }
}

fn status(response: &Response) -> Result<u16, TransactionError> {
    let code = response.status_code.code();
    if (100..700).contains(&code) {
        Ok(code)
    } else {
        Err(TransactionError::InvalidStatus(code))
    }
}

// ---------------------------------------------------------------------------
// INVITE server transaction, RFC 3261 §17.2.1 (Figure 7).

/// Proceeding: awaiting the TU's final response; a retransmitted INVITE gets
/// the last provisional again.
#[derive(Debug)]
struct InviteProceeding {
    last_provisional: Response,
}

/// Completed: a 300-699 was sent, awaiting the ACK (Timers G and H).
#[derive(Debug)]
struct InviteCompleted {
    final_response: Response,
    g_interval: Duration,
}

/// Confirmed: the ACK came; absorbing its retransmissions until Timer I.
#[derive(Debug)]
struct Confirmed;

/// Accepted: a 2xx was sent; INVITE retransmissions are absorbed until
/// Timer L instead of looking like new requests (RFC 6026 §7.1, which
/// updates RFC 3261's "2xx terminates").
#[derive(Debug)]
struct Accepted;

#[derive(Debug)]
enum InviteServerState {
    Proceeding(InviteProceeding),
    Completed(InviteCompleted),
    Confirmed(Confirmed),
    Accepted(Accepted),
    Terminated,
}

/// An INVITE server transaction (RFC 3261 §17.2.1): answers 100 Trying at
/// once, re-sends the last response to a retransmitted INVITE, retransmits a
/// 300-699 on UDP (Timer G) until the ACK (absorbed) or Timer H, then waits
/// out ACK retransmissions (Timer I). After a 2xx it only absorbs INVITE
/// retransmissions until Timer L (RFC 6026 Accepted); the TU retransmits the
/// 2xx itself (§13.3.1.4, [`super::Retransmit2xx`]) and gets the ACK.
#[derive(Debug)]
pub struct InviteServer {
    core: ServerCore,
    state: InviteServerState,
    response_to_tag: Option<String>,
}

impl InviteServer {
    /// Creates the transaction for a new INVITE and queues the 100 Trying
    /// (§17.2.1: within 200 ms; we send it at once).
    pub fn new(
        _now: Instant,
        peer: Peer,
        request: &Request,
        config: TimerConfig,
    ) -> Result<Self, TransactionError> {
        if request.method != Method::Invite {
            return Err(TransactionError::WrongMethod {
                expected: Method::Invite,
                got: request.method,
            });
        }
        let trying = build_trying(request)?;
        let mut core = ServerCore::new(peer, config);
        core.send(&trying);
        Ok(InviteServer {
            core,
            state: InviteServerState::Proceeding(InviteProceeding {
                last_provisional: trying,
            }),
            response_to_tag: None,
        })
    }

    /// The To tag of the last response sent, which an RFC 2543 ACK must carry
    /// to match (§17.2.3).
    pub fn response_to_tag(&self) -> Option<&str> {
        self.response_to_tag.as_deref()
    }

    /// Where the request came from, and responses go.
    pub fn peer(&self) -> Peer {
        self.core.peer
    }

    /// The state's RFC name, for logs and tests.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            InviteServerState::Proceeding(_) => "Proceeding",
            InviteServerState::Completed(_) => "Completed",
            InviteServerState::Confirmed(_) => "Confirmed",
            InviteServerState::Accepted(_) => "Accepted",
            InviteServerState::Terminated => "Terminated",
        }
    }

    /// Whether the TU has not sent a final response yet, so a CANCEL still
    /// applies (§9.2).
    pub fn awaits_final(&self) -> bool {
        matches!(self.state, InviteServerState::Proceeding(_))
    }

    /// Whether the transaction is over and can be dropped.
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, InviteServerState::Terminated)
    }

    /// Whether an ACK matching this transaction belongs to the TU: after a
    /// 2xx, the ACK is the dialog's (RFC 6026 §7.1).
    pub fn passes_ack_up(&self) -> bool {
        matches!(self.state, InviteServerState::Accepted(_))
    }

    /// A retransmitted INVITE or an ACK matched to this transaction (§17.2.1).
    pub fn handle_request(&mut self, now: Instant, request: &Request) {
        let is_ack = request.method == Method::Ack;
        let state = std::mem::replace(&mut self.state, InviteServerState::Terminated);
        self.state = match state {
            InviteServerState::Proceeding(p) => {
                if !is_ack {
                    self.core.send(&p.last_provisional);
                }
                InviteServerState::Proceeding(p)
            }
            InviteServerState::Completed(_) if is_ack => {
                self.core.timers.stop(Timer::G);
                self.core.timers.stop(Timer::H);
                let wait = self.core.config.timer_t4_or_zero(self.core.reliable());
                if wait.is_zero() {
                    InviteServerState::Terminated
                } else {
                    self.core.timers.set(Timer::I, now + wait);
                    InviteServerState::Confirmed(Confirmed)
                }
            }
            InviteServerState::Completed(c) => {
                self.core.send(&c.final_response);
                InviteServerState::Completed(c)
            }
            // Confirmed absorbs ACK and INVITE retransmissions alike; Accepted
            // absorbs INVITE retransmissions (the table passes its ACKs up).
            state => state,
        };
    }

    /// The TU's response (§17.2.1): 1xx is sent and remembered; 2xx is sent
    /// and moves to Accepted (RFC 6026), where the TU may pass 2xx
    /// retransmissions through; 300-699 is sent and retransmitted until ACK.
    pub fn send_response(
        &mut self,
        now: Instant,
        response: Response,
    ) -> Result<(), TransactionError> {
        let code = status(&response)?;
        let state = std::mem::replace(&mut self.state, InviteServerState::Terminated);
        match state {
            InviteServerState::Proceeding(_) => {}
            InviteServerState::Accepted(accepted) if (200..300).contains(&code) => {
                self.core.send(&response);
                self.state = InviteServerState::Accepted(accepted);
                return Ok(());
            }
            other => {
                self.state = other;
                return Err(TransactionError::FinalAlreadySent);
            }
        }
        self.response_to_tag = to_tag(&response).ok().flatten();
        self.core.send(&response);
        let config = self.core.config;
        self.state = match code {
            100..=199 => InviteServerState::Proceeding(InviteProceeding {
                last_provisional: response,
            }),
            200..=299 => {
                self.core.timers.set(Timer::L, now + config.timeout());
                InviteServerState::Accepted(Accepted)
            }
            _ => {
                if !self.core.reliable() {
                    self.core.timers.set(Timer::G, now + config.t1);
                }
                self.core.timers.set(Timer::H, now + config.timeout());
                InviteServerState::Completed(InviteCompleted {
                    final_response: response,
                    g_interval: config.t1,
                })
            }
        };
        Ok(())
    }

    /// Fires every timer due at `now` (§17.2.1).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.core.timers.pop_expired(now) {
            let state = std::mem::replace(&mut self.state, InviteServerState::Terminated);
            self.state = match (state, timer) {
                (InviteServerState::Completed(c), Timer::G) => {
                    self.core.send(&c.final_response);
                    let g_interval = self.core.config.backoff_capped(c.g_interval);
                    self.core.timers.set(Timer::G, now + g_interval);
                    InviteServerState::Completed(InviteCompleted {
                        final_response: c.final_response,
                        g_interval,
                    })
                }
                (InviteServerState::Completed(_), Timer::H) => {
                    self.core.timers.stop_all();
                    self.core.events.push(ServerEvent::Timeout);
                    InviteServerState::Terminated
                }
                (InviteServerState::Confirmed(_), Timer::I)
                | (InviteServerState::Accepted(_), Timer::L) => {
                    self.core.timers.stop_all();
                    InviteServerState::Terminated
                }
                (state, _) => state,
            };
        }
    }

    /// The transport failed to send a response (§17.2.4: inform the TU).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        self.core.events.push(ServerEvent::TransportError);
        self.core.timers.stop_all();
        self.state = InviteServerState::Terminated;
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.transmits.pop()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.core.events.pop()
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.timers.next_deadline()
    }

    #[cfg(test)]
    fn timer(&self, timer: Timer) -> Option<Instant> {
        self.core.timers.get(timer)
    }

    /// Queue slots held (tests of the memory bound).
    #[cfg(test)]
    pub(super) fn held_room(&self) -> usize {
        self.core.transmits.capacity() + self.core.events.capacity()
    }
}

// ---------------------------------------------------------------------------
// Non-INVITE server transaction, RFC 3261 §17.2.2 (Figure 8).

/// Trying: awaiting the TU's first response; retransmissions are discarded.
#[derive(Debug)]
struct Trying;

/// Proceeding: a provisional was sent; retransmissions get it again.
#[derive(Debug)]
struct NonInviteProceeding {
    last_provisional: Response,
}

/// Completed: the final was sent; retransmissions get it again until J.
#[derive(Debug)]
struct NonInviteCompleted {
    final_response: Response,
}

#[derive(Debug)]
enum NonInviteServerState {
    Trying(Trying),
    Proceeding(NonInviteProceeding),
    Completed(NonInviteCompleted),
    Terminated,
}

/// A non-INVITE server transaction (RFC 3261 §17.2.2): re-sends its last
/// response to a retransmitted request and lingers in Completed for Timer J.
#[derive(Debug)]
pub struct NonInviteServer {
    core: ServerCore,
    state: NonInviteServerState,
}

impl NonInviteServer {
    /// Creates the transaction for a new non-INVITE request (§17.2.2).
    pub fn new(
        _now: Instant,
        peer: Peer,
        request: &Request,
        config: TimerConfig,
    ) -> Result<Self, TransactionError> {
        match request.method {
            Method::Invite => Err(TransactionError::WrongMethod {
                expected: Method::Options,
                got: Method::Invite,
            }),
            Method::Ack => Err(TransactionError::AckIsNotATransaction),
            _ => Ok(NonInviteServer {
                core: ServerCore::new(peer, config),
                state: NonInviteServerState::Trying(Trying),
            }),
        }
    }

    /// Where the request came from, and responses go.
    pub fn peer(&self) -> Peer {
        self.core.peer
    }

    /// The state's RFC name, for logs and tests.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            NonInviteServerState::Trying(_) => "Trying",
            NonInviteServerState::Proceeding(_) => "Proceeding",
            NonInviteServerState::Completed(_) => "Completed",
            NonInviteServerState::Terminated => "Terminated",
        }
    }

    /// Whether the transaction is over and can be dropped.
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, NonInviteServerState::Terminated)
    }

    /// A retransmission of the request (§17.2.2).
    pub fn handle_request(&mut self, _now: Instant, _request: &Request) {
        match &self.state {
            NonInviteServerState::Proceeding(p) => {
                let last = p.last_provisional.clone();
                self.core.send(&last);
            }
            NonInviteServerState::Completed(c) => {
                let last = c.final_response.clone();
                self.core.send(&last);
            }
            NonInviteServerState::Trying(_) | NonInviteServerState::Terminated => {}
        }
    }

    /// The TU's response (§17.2.2): 1xx moves to Proceeding, a final to
    /// Completed (Timer J: 64*T1 on UDP, at once on TCP).
    pub fn send_response(
        &mut self,
        now: Instant,
        response: Response,
    ) -> Result<(), TransactionError> {
        let code = status(&response)?;
        if !matches!(
            self.state,
            NonInviteServerState::Trying(_) | NonInviteServerState::Proceeding(_)
        ) {
            return Err(TransactionError::FinalAlreadySent);
        }
        self.core.send(&response);
        self.state = if code < 200 {
            NonInviteServerState::Proceeding(NonInviteProceeding {
                last_provisional: response,
            })
        } else {
            let wait = self.core.config.timer_j(self.core.reliable());
            if wait.is_zero() {
                NonInviteServerState::Terminated
            } else {
                self.core.timers.set(Timer::J, now + wait);
                NonInviteServerState::Completed(NonInviteCompleted {
                    final_response: response,
                })
            }
        };
        Ok(())
    }

    /// Fires every timer due at `now` (§17.2.2).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.core.timers.pop_expired(now) {
            if timer == Timer::J && matches!(self.state, NonInviteServerState::Completed(_)) {
                self.core.timers.stop_all();
                self.state = NonInviteServerState::Terminated;
            }
        }
    }

    /// The transport failed to send a response (§17.2.4: inform the TU).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        self.core.events.push(ServerEvent::TransportError);
        self.core.timers.stop_all();
        self.state = NonInviteServerState::Terminated;
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.transmits.pop()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.core.events.pop()
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.timers.next_deadline()
    }

    #[cfg(test)]
    fn timer(&self, timer: Timer) -> Option<Instant> {
        self.core.timers.get(timer)
    }

    /// Queue slots held (tests of the memory bound).
    #[cfg(test)]
    pub(super) fn held_room(&self) -> usize {
        self.core.transmits.capacity() + self.core.events.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_epoch;
    use super::super::testmsg::{invite, non_invite, request, response_to};
    use super::*;
    use crate::sip::TransportKind;

    const MS: Duration = Duration::from_millis(1);

    fn peer(transport: TransportKind) -> Peer {
        Peer {
            transport,
            addr: "192.0.2.1:5060".parse().unwrap(),
        }
    }

    fn codes(tx: &mut InviteServer) -> Vec<u16> {
        std::iter::from_fn(|| tx.poll_transmit())
            .map(|t| match t.message {
                SipMessage::Response(r) => r.status_code.code(),
                SipMessage::Request(r) => panic!("server sent a request {}", r.method),
            })
            .collect()
    }

    fn ack_for(inv: &Request) -> Request {
        let text = String::from_utf8(inv.to_bytes()).unwrap();
        request(
            &text
                .replacen("INVITE sip", "ACK sip", 1)
                .replace("1 INVITE", "1 ACK")
                .replace("To: <sip:bob@192.0.2.2>", "To: <sip:bob@192.0.2.2>;tag=b1"),
        )
    }

    #[test]
    fn invite_sends_100_at_once_and_repeats_last_provisional() {
        let t0 = test_epoch();
        let inv = invite("z9hG4bKs1");
        let mut tx =
            InviteServer::new(t0, peer(TransportKind::Udp), &inv, TimerConfig::default()).unwrap();
        assert_eq!(tx.state_name(), "Proceeding");
        assert_eq!(codes(&mut tx), [100]);
        tx.handle_request(t0 + 500 * MS, &inv);
        assert_eq!(codes(&mut tx), [100]);
        tx.send_response(t0 + 600 * MS, response_to(&inv, 180))
            .unwrap();
        assert_eq!(codes(&mut tx), [180]);
        tx.handle_request(t0 + 1_500 * MS, &inv);
        assert_eq!(codes(&mut tx), [180]);
        // Proceeding has no timers: the TU decides how long to ring.
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn invite_2xx_accepted_absorbs_retransmissions_until_timer_l() {
        for kind in [TransportKind::Udp, TransportKind::Tcp] {
            let t0 = test_epoch();
            let inv = invite("z9hG4bKs2");
            let mut tx = InviteServer::new(t0, peer(kind), &inv, TimerConfig::default()).unwrap();
            let ok = response_to(&inv, 200);
            tx.send_response(t0, ok.clone()).unwrap();
            assert_eq!(codes(&mut tx), [100, 200]);
            assert_eq!(tx.state_name(), "Accepted");
            assert!(tx.passes_ack_up());
            assert_eq!(tx.timer(Timer::L), Some(t0 + 32_000 * MS));
            // A retransmitted INVITE is absorbed: the TU's Retransmit2xx
            // covers the 2xx.
            tx.handle_request(t0 + 500 * MS, &inv);
            assert!(codes(&mut tx).is_empty());
            // The TU may pass 2xx retransmissions; nothing else.
            tx.send_response(t0 + 500 * MS, ok).unwrap();
            assert_eq!(codes(&mut tx), [200]);
            assert_eq!(
                tx.send_response(t0, response_to(&inv, 486)),
                Err(TransactionError::FinalAlreadySent)
            );
            assert_eq!(
                tx.send_response(t0, response_to(&inv, 99)),
                Err(TransactionError::InvalidStatus(99))
            );
            tx.handle_timeout(t0 + 32_000 * MS);
            assert!(tx.is_terminated());
            assert_eq!(tx.poll_event(), None);
        }
    }

    #[test]
    fn invite_final_retransmits_on_timer_g_and_on_request_retransmission() {
        let t0 = test_epoch();
        let inv = invite("z9hG4bKs3");
        let mut tx =
            InviteServer::new(t0, peer(TransportKind::Udp), &inv, TimerConfig::default()).unwrap();
        codes(&mut tx);
        tx.send_response(t0, response_to(&inv, 486)).unwrap();
        assert_eq!(codes(&mut tx), [486]);
        assert_eq!(tx.state_name(), "Completed");
        assert_eq!(tx.timer(Timer::G), Some(t0 + 500 * MS));
        assert_eq!(tx.timer(Timer::H), Some(t0 + 32_000 * MS));
        // The INVITE again (our 486 was lost): the 486 again.
        tx.handle_request(t0 + 100 * MS, &inv);
        assert_eq!(codes(&mut tx), [486]);
        let mut at = Vec::new();
        while let Some(t) = tx.poll_timeout() {
            if t > t0 + 12_000 * MS {
                break;
            }
            tx.handle_timeout(t);
            if !codes(&mut tx).is_empty() {
                at.push((t - t0).as_millis());
            }
        }
        // G: 0.5, 1, 2, 4, 4 s intervals (capped at T2).
        assert_eq!(at, [500, 1500, 3500, 7500, 11500]);
    }

    #[test]
    fn invite_ack_is_absorbed_then_timer_i() {
        let t0 = test_epoch();
        let inv = invite("z9hG4bKs4");
        let mut tx =
            InviteServer::new(t0, peer(TransportKind::Udp), &inv, TimerConfig::default()).unwrap();
        tx.send_response(t0, response_to(&inv, 603)).unwrap();
        codes(&mut tx);
        tx.handle_request(t0 + 50 * MS, &ack_for(&inv));
        assert_eq!(tx.state_name(), "Confirmed");
        assert_eq!(tx.timer(Timer::G), None);
        assert_eq!(tx.timer(Timer::H), None);
        assert_eq!(tx.timer(Timer::I), Some(t0 + 5_050 * MS));
        // ACK and INVITE retransmissions are absorbed in Confirmed.
        tx.handle_request(t0 + 60 * MS, &ack_for(&inv));
        tx.handle_request(t0 + 70 * MS, &inv);
        assert!(codes(&mut tx).is_empty());
        assert_eq!(tx.poll_event(), None);
        tx.handle_timeout(t0 + 5_050 * MS);
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_timer_h_reports_missing_ack() {
        for kind in [TransportKind::Udp, TransportKind::Tcp] {
            let t0 = test_epoch();
            let inv = invite("z9hG4bKs5");
            let mut tx = InviteServer::new(t0, peer(kind), &inv, TimerConfig::default()).unwrap();
            tx.send_response(t0, response_to(&inv, 480)).unwrap();
            let mut sent = codes(&mut tx).len();
            while let Some(t) = tx.poll_timeout() {
                tx.handle_timeout(t);
                sent += codes(&mut tx).len();
            }
            assert_eq!(tx.poll_event(), Some(ServerEvent::Timeout));
            assert!(tx.is_terminated());
            // 100 + 480, then on UDP Timer G at 0.5, 1.5, 3.5, 7.5, 11.5 ..
            // 31.5 s (10 times); TCP never retransmits (no Timer G).
            assert_eq!(
                sent,
                if kind == TransportKind::Udp { 12 } else { 2 },
                "{kind}"
            );
        }
    }

    #[test]
    fn invite_tcp_ack_terminates_at_once() {
        let t0 = test_epoch();
        let inv = invite("z9hG4bKs6");
        let mut tx =
            InviteServer::new(t0, peer(TransportKind::Tcp), &inv, TimerConfig::default()).unwrap();
        tx.send_response(t0, response_to(&inv, 486)).unwrap();
        assert_eq!(tx.timer(Timer::G), None);
        tx.handle_request(t0, &ack_for(&inv));
        // Timer I is zero on TCP.
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_transport_error_informs_the_tu() {
        let t0 = test_epoch();
        let inv = invite("z9hG4bKs7");
        let mut tx =
            InviteServer::new(t0, peer(TransportKind::Tcp), &inv, TimerConfig::default()).unwrap();
        tx.handle_transport_error(t0);
        assert_eq!(tx.poll_event(), Some(ServerEvent::TransportError));
        assert!(tx.is_terminated());
    }

    fn responses(tx: &mut NonInviteServer) -> Vec<u16> {
        std::iter::from_fn(|| tx.poll_transmit())
            .filter_map(|t| match t.message {
                SipMessage::Response(r) => Some(r.status_code.code()),
                SipMessage::Request(_) => None,
            })
            .collect()
    }

    #[test]
    fn non_invite_trying_proceeding_completed_timer_j() {
        let t0 = test_epoch();
        let req = non_invite("OPTIONS", "z9hG4bKn1");
        let mut tx =
            NonInviteServer::new(t0, peer(TransportKind::Udp), &req, TimerConfig::default())
                .unwrap();
        assert_eq!(tx.state_name(), "Trying");
        // Trying: retransmissions are discarded, nothing sent yet.
        tx.handle_request(t0 + 500 * MS, &req);
        assert!(responses(&mut tx).is_empty());
        tx.send_response(t0 + 600 * MS, response_to(&req, 100))
            .unwrap();
        assert_eq!(tx.state_name(), "Proceeding");
        tx.handle_request(t0 + 1_500 * MS, &req);
        assert_eq!(responses(&mut tx), [100, 100]);
        tx.send_response(t0 + 2_000 * MS, response_to(&req, 200))
            .unwrap();
        assert_eq!(tx.state_name(), "Completed");
        assert_eq!(tx.timer(Timer::J), Some(t0 + 34_000 * MS));
        tx.handle_request(t0 + 3_500 * MS, &req);
        assert_eq!(responses(&mut tx), [200, 200]);
        assert_eq!(
            tx.send_response(t0, response_to(&req, 500)),
            Err(TransactionError::FinalAlreadySent)
        );
        tx.handle_timeout(t0 + 33_999 * MS);
        assert_eq!(tx.state_name(), "Completed");
        tx.handle_timeout(t0 + 34_000 * MS);
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_tcp_timer_j_is_zero() {
        let t0 = test_epoch();
        let req = non_invite("BYE", "z9hG4bKn2");
        let mut tx =
            NonInviteServer::new(t0, peer(TransportKind::Tcp), &req, TimerConfig::default())
                .unwrap();
        tx.send_response(t0, response_to(&req, 200)).unwrap();
        assert_eq!(responses(&mut tx), [200]);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }
}
