//! Client transactions: INVITE (RFC 3261 §17.1.1) and non-INVITE (§17.1.2).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::message::build_ack_for_non_2xx;
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
    transmits: VecDeque<Transmit>,
    events: VecDeque<ClientEvent>,
}

impl ClientCore {
    fn new(peer: Peer, config: TimerConfig, request: Request) -> Self {
        ClientCore {
            peer,
            config,
            request,
            timers: TimerTable::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn reliable(&self) -> bool {
        self.peer.transport.is_reliable()
    }

    fn send(&mut self, message: SipMessage) {
        self.transmits.push_back(Transmit {
            peer: self.peer,
            message,
        });
    }

    fn send_request(&mut self) {
        self.send(SipMessage::Request(self.request.clone()));
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

    /// The INVITE this transaction sends.
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
            core.events.push_back(ClientEvent::Provisional(response));
            return InviteClientState::Proceeding(InviteProceeding);
        }
        core.timers.stop_all();
        if is_success(&response) {
            core.events.push_back(ClientEvent::Final(response));
            return InviteClientState::Terminated;
        }
        let ack = match build_ack_for_non_2xx(&core.request, &response) {
            Ok(ack) => ack,
            Err(error) => {
                // Without a To we cannot ACK; the TU still learns the outcome.
                tracing::debug!(%error, "cannot build ACK for non-2xx");
                core.events.push_back(ClientEvent::Final(response));
                return InviteClientState::Terminated;
            }
        };
        core.send(SipMessage::Request(ack.clone()));
        core.events.push_back(ClientEvent::Final(response));
        let wait = core.config.timer_d(core.reliable());
        if wait.is_zero() {
            return InviteClientState::Terminated;
        }
        core.arm(Timer::D, now, wait);
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
                    self.core.events.push_back(ClientEvent::Timeout);
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
            self.core.events.push_back(ClientEvent::TransportError);
        }
        self.core.timers.stop_all();
        self.state = InviteClientState::Terminated;
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.transmits.pop_front()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.core.events.pop_front()
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.timers.next_deadline()
    }

    #[cfg(test)]
    fn timer(&self, timer: Timer) -> Option<Instant> {
        self.core.timers.get(timer)
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

    /// The request this transaction sends.
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
                    self.core
                        .events
                        .push_back(ClientEvent::Provisional(response));
                    NonInviteClientState::Proceeding(NonInviteProceeding)
                } else {
                    self.core.timers.stop_all();
                    self.core.events.push_back(ClientEvent::Final(response));
                    let wait = self.core.config.timer_t4_or_zero(self.core.reliable());
                    if wait.is_zero() {
                        NonInviteClientState::Terminated
                    } else {
                        self.core.arm(Timer::K, now, wait);
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
                    self.core.events.push_back(ClientEvent::Timeout);
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
            self.core.events.push_back(ClientEvent::TransportError);
        }
        self.core.timers.stop_all();
        self.state = NonInviteClientState::Terminated;
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.transmits.pop_front()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.core.events.pop_front()
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.timers.next_deadline()
    }

    #[cfg(test)]
    fn timer(&self, timer: Timer) -> Option<Instant> {
        self.core.timers.get(timer)
    }
}
