//! Client transactions: INVITE (RFC 3261 §17.1.1) and non-INVITE (§17.1.2).

use std::time::{Duration, Instant};

use super::message::build_ack_for_non_2xx;
use super::outbox::Outbox;
use super::timer::{Timer, TimerConfig, TimerTable};
use super::TransactionError;
use crate::sip::syntax::{Method, Request, Response, SipMessage};
use crate::sip::{Peer, Transmit};

/// What a client transaction tells its TU (RFC 3261 §17.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A 1xx response (§17.1.1.2, §17.1.2.2).
    Provisional(Response),
    /// The final response; retransmissions of it are absorbed (§17.1.1.2,
    /// §17.1.2.2). For INVITE, a 2xx also ends the transaction: its ACK is
    /// the TU's (§13.2.2.4).
    Final(Response),
    /// Timer B or F fired with no final response: the TU treats it as a 408
    /// (§8.1.3.1).
    Timeout,
    /// The transport reported a failure sending the request (§17.1.4).
    TransportError,
}

/// The parts of a client transaction its states act on.
#[derive(Debug)]
struct ClientCore {
    peer: Peer,
    config: TimerConfig,
    request: Request,
    timers: TimerTable,
    transmits: Outbox<Transmit>,
    events: Outbox<ClientEvent>,
}

impl ClientCore {
    fn new(peer: Peer, config: TimerConfig, request: Request) -> Self {
        ClientCore {
            peer,
            config,
            request,
            timers: TimerTable::default(),
            transmits: Outbox::new(),
            events: Outbox::new(),
        }
    }

    fn reliable(&self) -> bool {
        self.peer.transport.is_reliable()
    }

    fn send(&mut self, message: SipMessage) {
        self.transmits.push(Transmit {
            peer: self.peer,
            message,
        });
    }

    fn send_request(&mut self) {
        self.send(SipMessage::Request(self.request.clone()));
    }

    /// The final response is in: the request is never sent again (Completed
    /// only absorbs retransmissions of the final response, §17.1.1.2,
    /// §17.1.2.2; the ACK of a non-2xx is built before), so its headers and
    /// body are dropped, not kept for Timer D or K (SPEC §6 memory).
    fn release_request(&mut self) {
        self.request.headers = Default::default();
        self.request.body = Vec::new();
    }

    /// Zero-length timers (D, K on reliable transports) mean "at once": the
    /// caller transitions instead of arming them.
    fn arm(&mut self, timer: Timer, now: Instant, after: Duration) {
        self.timers.set(timer, now + after);
    }
}

fn is_provisional(response: &Response) -> bool {
    (100..200).contains(&response.status_code.code())
}

fn is_success(response: &Response) -> bool {
    (200..300).contains(&response.status_code.code())
}

// ---------------------------------------------------------------------------
// INVITE client transaction, RFC 3261 §17.1.1 (Figure 5).

/// Calling: the INVITE is out, awaiting any response (§17.1.1.2).
#[derive(Debug)]
struct Calling {
    /// The current Timer A interval (T1, doubling; UDP only).
    a_interval: Duration,
}

/// Proceeding: a provisional arrived, awaiting the final response.
#[derive(Debug)]
struct InviteProceeding;

/// Completed: a 300-699 was ACKed, absorbing its retransmissions until D.
#[derive(Debug)]
struct InviteCompleted {
    ack: Request,
}

#[derive(Debug)]
enum InviteClientState {
    Calling(Calling),
    Proceeding(InviteProceeding),
    Completed(InviteCompleted),
    Terminated,
}

/// An INVITE client transaction (RFC 3261 §17.1.1): retransmits the INVITE on
/// UDP (Timer A), times out in Calling (Timer B), ACKs 300-699 itself with
/// the same branch (§17.1.1.3) and absorbs their retransmissions (Timer D).
#[derive(Debug)]
pub struct InviteClient {
    core: ClientCore,
    state: InviteClientState,
}

impl InviteClient {
    /// Starts the transaction: the INVITE is queued for sending, Timer B is
    /// set to 64*T1 and, on UDP, Timer A to T1 (§17.1.1.2).
    pub fn new(
        now: Instant,
        peer: Peer,
        request: Request,
        config: TimerConfig,
    ) -> Result<Self, TransactionError> {
        if request.method != Method::Invite {
            return Err(TransactionError::WrongMethod {
                expected: Method::Invite,
                got: request.method,
            });
        }
        let mut core = ClientCore::new(peer, config, request);
        core.send_request();
        core.arm(Timer::B, now, config.timeout());
        if !core.reliable() {
            core.arm(Timer::A, now, config.t1);
        }
        Ok(InviteClient {
            core,
            state: InviteClientState::Calling(Calling {
                a_interval: config.t1,
            }),
        })
    }

    /// The INVITE this transaction sends (its start line only once
    /// Completed).
    pub fn request(&self) -> &Request {
        &self.core.request
    }

    /// Where the INVITE goes.
    pub fn peer(&self) -> Peer {
        self.core.peer
    }

    /// The state's RFC name, for logs and tests.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            InviteClientState::Calling(_) => "Calling",
            InviteClientState::Proceeding(_) => "Proceeding",
            InviteClientState::Completed(_) => "Completed",
            InviteClientState::Terminated => "Terminated",
        }
    }

    /// Whether a provisional response has arrived and no final one yet: the
    /// only time a CANCEL may be sent (RFC 3261 §9.1).
    pub fn is_proceeding(&self) -> bool {
        matches!(self.state, InviteClientState::Proceeding(_))
    }

    /// Whether the INVITE still awaits its final response (Calling or
    /// Proceeding).
    pub fn awaits_final(&self) -> bool {
        matches!(
            self.state,
            InviteClientState::Calling(_) | InviteClientState::Proceeding(_)
        )
    }

    /// Whether the transaction is over and can be dropped.
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, InviteClientState::Terminated)
    }

    /// A response matched to this transaction (§17.1.1.2).
    pub fn handle_response(&mut self, now: Instant, response: Response) {
        let state = std::mem::replace(&mut self.state, InviteClientState::Terminated);
        self.state = match state {
            InviteClientState::Calling(_) | InviteClientState::Proceeding(_) => {
                self.awaiting_final(now, response)
            }
            InviteClientState::Completed(completed) => {
                // A retransmitted final means our ACK was lost: send it again,
                // without bothering the TU.
                if !is_provisional(&response) && !is_success(&response) {
                    self.core.send(SipMessage::Request(completed.ack.clone()));
                }
                InviteClientState::Completed(completed)
            }
            InviteClientState::Terminated => InviteClientState::Terminated,
        };
    }

    fn awaiting_final(&mut self, now: Instant, response: Response) -> InviteClientState {
        let core = &mut self.core;
        if is_provisional(&response) {
            core.timers.stop(Timer::A);
            core.timers.stop(Timer::B);
            core.events.push(ClientEvent::Provisional(response));
            return InviteClientState::Proceeding(InviteProceeding);
        }
        core.timers.stop_all();
        if is_success(&response) {
            core.events.push(ClientEvent::Final(response));
            return InviteClientState::Terminated;
        }
        let ack = match build_ack_for_non_2xx(&core.request, &response) {
            Ok(ack) => ack,
            Err(error) => {
                // Without a To we cannot ACK; the TU still learns the outcome.
                tracing::debug!(%error, "cannot build ACK for non-2xx");
                core.events.push(ClientEvent::Final(response));
                return InviteClientState::Terminated;
            }
        };
        core.send(SipMessage::Request(ack.clone()));
        core.events.push(ClientEvent::Final(response));
        let wait = core.config.timer_d(core.reliable());
        if wait.is_zero() {
            return InviteClientState::Terminated;
        }
        core.arm(Timer::D, now, wait);
        core.release_request();
        InviteClientState::Completed(InviteCompleted { ack })
    }

    /// Fires every timer due at `now` (§17.1.1.2).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.core.timers.pop_expired(now) {
            let state = std::mem::replace(&mut self.state, InviteClientState::Terminated);
            self.state = match (state, timer) {
                (InviteClientState::Calling(calling), Timer::A) => {
                    self.core.send_request();
                    let a_interval = calling.a_interval.saturating_mul(2);
                    self.core.arm(Timer::A, now, a_interval);
                    InviteClientState::Calling(Calling { a_interval })
                }
                (InviteClientState::Calling(_), Timer::B) => {
                    self.core.timers.stop_all();
                    self.core.events.push(ClientEvent::Timeout);
                    InviteClientState::Terminated
                }
                (InviteClientState::Completed(_), Timer::D) => {
                    self.core.timers.stop_all();
                    InviteClientState::Terminated
                }
                (state, _) => state,
            };
        }
    }

    /// The transport failed to send (§17.1.1.2: inform the TU, terminate).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.awaits_final() {
            self.core.events.push(ClientEvent::TransportError);
        }
        self.core.timers.stop_all();
        self.state = InviteClientState::Terminated;
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.transmits.pop()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
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
// Non-INVITE client transaction, RFC 3261 §17.1.2 (Figure 6).

/// Trying: the request is out, awaiting any response (§17.1.2.2).
#[derive(Debug)]
struct Trying {
    /// The current Timer E interval (T1 doubling to T2; UDP only).
    e_interval: Duration,
}

/// Proceeding: a provisional arrived, awaiting the final response; Timer E
/// keeps retransmitting at T2.
#[derive(Debug)]
struct NonInviteProceeding;

/// Completed: a final arrived, absorbing its retransmissions until K.
#[derive(Debug)]
struct NonInviteCompleted;

#[derive(Debug)]
enum NonInviteClientState {
    Trying(Trying),
    Proceeding(NonInviteProceeding),
    Completed(NonInviteCompleted),
    Terminated,
}

/// A non-INVITE client transaction (RFC 3261 §17.1.2): retransmits on UDP
/// (Timer E), times out (Timer F) and absorbs final retransmissions (Timer K).
#[derive(Debug)]
pub struct NonInviteClient {
    core: ClientCore,
    state: NonInviteClientState,
}

impl NonInviteClient {
    /// Starts the transaction: the request is queued for sending, Timer F is
    /// set to 64*T1 and, on UDP, Timer E to T1 (§17.1.2.2).
    pub fn new(
        now: Instant,
        peer: Peer,
        request: Request,
        config: TimerConfig,
    ) -> Result<Self, TransactionError> {
        match request.method {
            Method::Invite => {
                return Err(TransactionError::WrongMethod {
                    expected: Method::Options,
                    got: Method::Invite,
                })
            }
            Method::Ack => return Err(TransactionError::AckIsNotATransaction),
            _ => {}
        }
        let mut core = ClientCore::new(peer, config, request);
        core.send_request();
        core.arm(Timer::F, now, config.timeout());
        if !core.reliable() {
            core.arm(Timer::E, now, config.t1);
        }
        Ok(NonInviteClient {
            core,
            state: NonInviteClientState::Trying(Trying {
                e_interval: config.t1,
            }),
        })
    }

    /// Where the request goes.
    pub fn peer(&self) -> Peer {
        self.core.peer
    }

    /// The request this transaction sends (its start line only once
    /// Completed).
    pub fn request(&self) -> &Request {
        &self.core.request
    }

    /// The state's RFC name, for logs and tests.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            NonInviteClientState::Trying(_) => "Trying",
            NonInviteClientState::Proceeding(_) => "Proceeding",
            NonInviteClientState::Completed(_) => "Completed",
            NonInviteClientState::Terminated => "Terminated",
        }
    }

    /// Whether the transaction is over and can be dropped.
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, NonInviteClientState::Terminated)
    }

    /// A response matched to this transaction (§17.1.2.2).
    pub fn handle_response(&mut self, now: Instant, response: Response) {
        let state = std::mem::replace(&mut self.state, NonInviteClientState::Terminated);
        self.state = match state {
            NonInviteClientState::Trying(_) | NonInviteClientState::Proceeding(_) => {
                if is_provisional(&response) {
                    self.core.events.push(ClientEvent::Provisional(response));
                    NonInviteClientState::Proceeding(NonInviteProceeding)
                } else {
                    self.core.timers.stop_all();
                    self.core.events.push(ClientEvent::Final(response));
                    let wait = self.core.config.timer_t4_or_zero(self.core.reliable());
                    if wait.is_zero() {
                        NonInviteClientState::Terminated
                    } else {
                        self.core.arm(Timer::K, now, wait);
                        self.core.release_request();
                        NonInviteClientState::Completed(NonInviteCompleted)
                    }
                }
            }
            // Retransmitted responses are absorbed in Completed.
            state => state,
        };
    }

    /// Fires every timer due at `now` (§17.1.2.2).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.core.timers.pop_expired(now) {
            let state = std::mem::replace(&mut self.state, NonInviteClientState::Terminated);
            self.state = match (state, timer) {
                (NonInviteClientState::Trying(trying), Timer::E) => {
                    self.core.send_request();
                    let e_interval = self.core.config.backoff_capped(trying.e_interval);
                    self.core.arm(Timer::E, now, e_interval);
                    NonInviteClientState::Trying(Trying { e_interval })
                }
                (NonInviteClientState::Proceeding(p), Timer::E) => {
                    self.core.send_request();
                    let t2 = self.core.config.t2;
                    self.core.arm(Timer::E, now, t2);
                    NonInviteClientState::Proceeding(p)
                }
                (
                    NonInviteClientState::Trying(_) | NonInviteClientState::Proceeding(_),
                    Timer::F,
                ) => {
                    self.core.timers.stop_all();
                    self.core.events.push(ClientEvent::Timeout);
                    NonInviteClientState::Terminated
                }
                (NonInviteClientState::Completed(_), Timer::K) => {
                    self.core.timers.stop_all();
                    NonInviteClientState::Terminated
                }
                (state, _) => state,
            };
        }
    }

    /// The transport failed to send (§17.1.2.2: inform the TU, terminate).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if matches!(
            self.state,
            NonInviteClientState::Trying(_) | NonInviteClientState::Proceeding(_)
        ) {
            self.core.events.push(ClientEvent::TransportError);
        }
        self.core.timers.stop_all();
        self.state = NonInviteClientState::Terminated;
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.transmits.pop()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
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
    use super::super::testmsg::{invite, non_invite, response_to};
    use super::*;
    use crate::sip::syntax::prelude::*;
    use crate::sip::TransportKind;

    const MS: Duration = Duration::from_millis(1);

    fn peer(transport: TransportKind) -> Peer {
        Peer {
            transport,
            addr: "192.0.2.2:5060".parse().unwrap(),
        }
    }

    fn sent_methods(tx: &mut InviteClient) -> Vec<String> {
        std::iter::from_fn(|| tx.poll_transmit())
            .map(|t| match t.message {
                SipMessage::Request(r) => r.method.to_string(),
                SipMessage::Response(r) => r.status_code.code().to_string(),
            })
            .collect()
    }

    #[test]
    fn invite_udp_calling_retransmits_on_timer_a_doubling() {
        let t0 = test_epoch();
        let mut tx = InviteClient::new(
            t0,
            peer(TransportKind::Udp),
            invite("z9hG4bKa"),
            TimerConfig::default(),
        )
        .unwrap();
        assert_eq!(tx.state_name(), "Calling");
        assert_eq!(sent_methods(&mut tx), ["INVITE"]);
        assert_eq!(tx.timer(Timer::A), Some(t0 + 500 * MS));
        assert_eq!(tx.timer(Timer::B), Some(t0 + 32_000 * MS));
        // A fires at 0.5, 1.5, 3.5, 7.5 s: intervals 0.5, 1, 2, 4 (no T2 cap).
        let mut at = Vec::new();
        while let Some(t) = tx.poll_timeout() {
            if t >= t0 + 10_000 * MS {
                break;
            }
            tx.handle_timeout(t);
            assert_eq!(sent_methods(&mut tx), ["INVITE"]);
            at.push((t - t0).as_millis());
        }
        assert_eq!(at, [500, 1500, 3500, 7500]);
        assert_eq!(tx.timer(Timer::A), Some(t0 + 15_500 * MS));
    }

    #[test]
    fn invite_timer_b_times_out_with_no_response() {
        for kind in [TransportKind::Udp, TransportKind::Tcp] {
            let t0 = test_epoch();
            let mut tx =
                InviteClient::new(t0, peer(kind), invite("z9hG4bKb"), TimerConfig::default())
                    .unwrap();
            let mut sends = 0;
            while let Some(t) = tx.poll_timeout() {
                tx.handle_timeout(t);
                sends += std::iter::from_fn(|| tx.poll_transmit()).count();
            }
            assert_eq!(tx.poll_event(), Some(ClientEvent::Timeout));
            assert!(tx.is_terminated());
            // The INVITE, then on UDP Timer A at 0.5, 1.5, 3.5, 7.5, 15.5,
            // 31.5 s; TCP never retransmits.
            assert_eq!(sends, if kind == TransportKind::Udp { 7 } else { 1 });
        }
    }

    #[test]
    fn invite_tcp_sends_once_and_has_no_timer_a() {
        let t0 = test_epoch();
        let mut tx = InviteClient::new(
            t0,
            peer(TransportKind::Tcp),
            invite("z9hG4bKt"),
            TimerConfig::default(),
        )
        .unwrap();
        assert_eq!(sent_methods(&mut tx), ["INVITE"]);
        assert_eq!(tx.timer(Timer::A), None);
        assert_eq!(tx.poll_timeout(), Some(t0 + 32_000 * MS));
    }

    #[test]
    fn invite_1xx_then_2xx_passes_up_and_terminates() {
        let t0 = test_epoch();
        let inv = invite("z9hG4bK12");
        let mut tx = InviteClient::new(
            t0,
            peer(TransportKind::Udp),
            inv.clone(),
            TimerConfig::default(),
        )
        .unwrap();
        sent_methods(&mut tx);
        let ringing = response_to(&inv, 180);
        tx.handle_response(t0 + 100 * MS, ringing.clone());
        assert_eq!(tx.state_name(), "Proceeding");
        assert!(tx.is_proceeding());
        assert_eq!(tx.poll_event(), Some(ClientEvent::Provisional(ringing)));
        // Proceeding: no retransmission, no Timer B.
        assert_eq!(tx.poll_timeout(), None);
        let ok = response_to(&inv, 200);
        tx.handle_response(t0 + 5_000 * MS, ok.clone());
        assert_eq!(tx.poll_event(), Some(ClientEvent::Final(ok)));
        assert!(tx.is_terminated());
        // The ACK for 2xx is the TU's.
        assert!(sent_methods(&mut tx).is_empty());
    }

    #[test]
    fn invite_486_acks_absorbs_retransmissions_and_waits_timer_d() {
        let t0 = test_epoch();
        let inv = invite("z9hG4bK486");
        let mut tx = InviteClient::new(
            t0,
            peer(TransportKind::Udp),
            inv.clone(),
            TimerConfig::default(),
        )
        .unwrap();
        sent_methods(&mut tx);
        let busy = response_to(&inv, 486);
        tx.handle_response(t0 + 100 * MS, busy.clone());
        assert_eq!(tx.state_name(), "Completed");
        assert_eq!(tx.poll_event(), Some(ClientEvent::Final(busy.clone())));
        let ack = match tx.poll_transmit().map(|t| t.message) {
            Some(SipMessage::Request(ack)) => ack,
            other => panic!("expected ACK, got {other:?}"),
        };
        assert_eq!(ack.method, Method::Ack);
        assert!(ack.top_via_header().unwrap().value().contains("z9hG4bK486"));
        assert!(ack.to_header().unwrap().value().contains("tag=b1"));
        assert_eq!(tx.timer(Timer::A), None);
        assert_eq!(tx.timer(Timer::B), None);
        assert_eq!(tx.timer(Timer::D), Some(t0 + 32_100 * MS));
        // A retransmitted 486 gets the ACK again and is not passed up.
        tx.handle_response(t0 + 600 * MS, busy);
        assert_eq!(sent_methods(&mut tx), ["ACK"]);
        assert_eq!(tx.poll_event(), None);
        tx.handle_timeout(t0 + 32_099 * MS);
        assert_eq!(tx.state_name(), "Completed");
        tx.handle_timeout(t0 + 32_100 * MS);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_event(), None);
    }

    #[test]
    fn invite_3xx_to_6xx_over_tcp_terminates_at_once() {
        for code in [302, 404, 503, 603] {
            let t0 = test_epoch();
            let inv = invite("z9hG4bKtcp");
            let mut tx = InviteClient::new(
                t0,
                peer(TransportKind::Tcp),
                inv.clone(),
                TimerConfig::default(),
            )
            .unwrap();
            sent_methods(&mut tx);
            tx.handle_response(t0, response_to(&inv, 183));
            tx.handle_response(t0, response_to(&inv, code));
            // Timer D is zero on TCP: ACK sent, straight to Terminated.
            assert_eq!(sent_methods(&mut tx), ["ACK"]);
            assert!(tx.is_terminated(), "{code}");
            assert!(matches!(tx.poll_event(), Some(ClientEvent::Provisional(_))));
            assert!(
                matches!(tx.poll_event(), Some(ClientEvent::Final(r)) if r.status_code.code() == code)
            );
        }
    }

    #[test]
    fn invite_transport_error_informs_the_tu() {
        let t0 = test_epoch();
        let mut tx = InviteClient::new(
            t0,
            peer(TransportKind::Tcp),
            invite("z9hG4bKte"),
            TimerConfig::default(),
        )
        .unwrap();
        tx.handle_transport_error(t0);
        assert_eq!(tx.poll_event(), Some(ClientEvent::TransportError));
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn non_invite_udp_timer_e_backs_off_to_t2_then_timer_f() {
        let t0 = test_epoch();
        let req = non_invite("OPTIONS", "z9hG4bKe");
        let mut tx =
            NonInviteClient::new(t0, peer(TransportKind::Udp), req, TimerConfig::default())
                .unwrap();
        assert_eq!(tx.state_name(), "Trying");
        assert!(tx.poll_transmit().is_some());
        assert_eq!(tx.timer(Timer::F), Some(t0 + 32_000 * MS));
        let mut at = Vec::new();
        while let Some(t) = tx.poll_timeout() {
            tx.handle_timeout(t);
            if tx.poll_transmit().is_some() {
                at.push((t - t0).as_millis());
            }
        }
        // 0.5, 1.5, 3.5, 7.5, then every T2 = 4 s until F at 32 s.
        assert_eq!(
            at,
            [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(tx.poll_event(), Some(ClientEvent::Timeout));
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_proceeding_retransmits_at_t2() {
        let t0 = test_epoch();
        let req = non_invite("BYE", "z9hG4bKp");
        let mut tx = NonInviteClient::new(
            t0,
            peer(TransportKind::Udp),
            req.clone(),
            TimerConfig::default(),
        )
        .unwrap();
        tx.poll_transmit();
        tx.handle_response(t0 + 100 * MS, response_to(&req, 100));
        assert_eq!(tx.state_name(), "Proceeding");
        assert!(matches!(tx.poll_event(), Some(ClientEvent::Provisional(_))));
        tx.handle_timeout(t0 + 500 * MS);
        assert!(tx.poll_transmit().is_some());
        // In Proceeding, E resets to T2 rather than doubling.
        assert_eq!(tx.timer(Timer::E), Some(t0 + 4_500 * MS));
        assert_eq!(tx.timer(Timer::F), Some(t0 + 32_000 * MS));
    }

    #[test]
    fn non_invite_final_then_timer_k_absorbing_retransmissions() {
        let t0 = test_epoch();
        let req = non_invite("BYE", "z9hG4bKk");
        let mut tx = NonInviteClient::new(
            t0,
            peer(TransportKind::Udp),
            req.clone(),
            TimerConfig::default(),
        )
        .unwrap();
        tx.poll_transmit();
        let ok = response_to(&req, 200);
        tx.handle_response(t0 + 100 * MS, ok.clone());
        assert_eq!(tx.state_name(), "Completed");
        assert_eq!(tx.poll_event(), Some(ClientEvent::Final(ok.clone())));
        assert_eq!(tx.timer(Timer::E), None);
        assert_eq!(tx.timer(Timer::F), None);
        assert_eq!(tx.timer(Timer::K), Some(t0 + 5_100 * MS));
        tx.handle_response(t0 + 200 * MS, ok);
        assert_eq!(tx.poll_event(), None);
        assert!(tx.poll_transmit().is_none());
        tx.handle_timeout(t0 + 5_100 * MS);
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_tcp_no_timer_e_and_zero_timer_k() {
        let t0 = test_epoch();
        let req = non_invite("OPTIONS", "z9hG4bKtk");
        let mut tx = NonInviteClient::new(
            t0,
            peer(TransportKind::Tcp),
            req.clone(),
            TimerConfig::default(),
        )
        .unwrap();
        assert!(tx.poll_transmit().is_some());
        assert_eq!(tx.timer(Timer::E), None);
        assert_eq!(tx.poll_timeout(), Some(t0 + 32_000 * MS));
        tx.handle_response(t0, response_to(&req, 200));
        assert!(tx.is_terminated());
        assert!(matches!(tx.poll_event(), Some(ClientEvent::Final(_))));
        // Timer F on TCP still ends a silent transaction.
        let mut tx = NonInviteClient::new(
            t0,
            peer(TransportKind::Tcp),
            non_invite("OPTIONS", "z9hG4bKtf"),
            TimerConfig::default(),
        )
        .unwrap();
        tx.handle_timeout(t0 + 32_000 * MS);
        assert_eq!(tx.poll_event(), Some(ClientEvent::Timeout));
        tx.handle_transport_error(t0);
        assert_eq!(tx.poll_event(), None);
    }

    #[test]
    fn constructors_refuse_wrong_methods() {
        let t0 = test_epoch();
        let p = peer(TransportKind::Udp);
        let c = TimerConfig::default();
        assert!(InviteClient::new(t0, p, non_invite("BYE", "z9hG4bKw"), c).is_err());
        assert!(NonInviteClient::new(t0, p, invite("z9hG4bKw"), c).is_err());
        assert_eq!(
            NonInviteClient::new(t0, p, non_invite("ACK", "z9hG4bKw"), c).err(),
            Some(TransactionError::AckIsNotATransaction)
        );
    }
}
