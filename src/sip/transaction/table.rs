//! Many transactions at once: matching (RFC 3261 §17.1.3, §17.2.3), one
//! ordered set of deadlines, and CANCEL (§9).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use super::client::{ClientEvent, InviteClient, NonInviteClient};
use super::key::{matching_method, ClientKey, RequestIdentity, ServerKey};
use super::message::build_cancel;
use super::server::{InviteServer, NonInviteServer, ServerEvent};
use super::timer::TimerConfig;
use super::TransactionError;
use crate::sip::syntax::{Method, Request, Response, SipMessage};
use crate::sip::{Peer, Transmit};

/// What the table tells the TU (RFC 3261 §17: the transaction/TU interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request that matched no server transaction; one was created under
    /// `key` (for INVITE, it already sent 100 Trying). Answer with
    /// [`TransactionTable::respond`] (§17.2).
    NewRequest {
        /// The new server transaction.
        key: ServerKey,
        /// The request.
        request: Request,
        /// Where it came from; responses go back there.
        peer: Peer,
    },
    /// An ACK that matched no transaction: the ACK for a 2xx, which belongs
    /// to the dialog (§17.2.3, §13.3.1.4).
    StrayAck {
        /// The ACK.
        request: Request,
        /// Where it came from.
        peer: Peer,
    },
    /// A response that matched no client transaction, e.g. a retransmitted
    /// 2xx to an INVITE, which the TU must ACK again (§17.1.3, §13.2.2.4).
    StrayResponse {
        /// The response.
        response: Response,
        /// Where it came from.
        peer: Peer,
    },
    /// A 1xx for a client transaction (§17.1.1.2, §17.1.2.2).
    Provisional {
        /// The client transaction.
        key: ClientKey,
        /// The response.
        response: Response,
    },
    /// The final response of a client transaction (§17.1.1.2, §17.1.2.2).
    Final {
        /// The client transaction.
        key: ClientKey,
        /// The response.
        response: Response,
    },
    /// Timer B or F fired: no final response; treat as 408 (§8.1.3.1).
    ClientTimeout {
        /// The client transaction.
        key: ClientKey,
    },
    /// A client transaction's request could not be sent (§17.1.4).
    ClientTransportError {
        /// The client transaction.
        key: ClientKey,
    },
    /// Timer H fired: the ACK to a 300-699 never came (§17.2.1).
    ServerTimeout {
        /// The server transaction.
        key: ServerKey,
    },
    /// A server transaction's response could not be sent (§17.2.4).
    ServerTransportError {
        /// The server transaction.
        key: ServerKey,
    },
    /// A CANCEL deferred by [`TransactionTable::cancel`] went out once the
    /// INVITE got its first provisional response (§9.1).
    CancelSent {
        /// The INVITE client transaction being cancelled.
        invite: ClientKey,
        /// The CANCEL's own client transaction.
        cancel: ClientKey,
    },
}

/// What [`TransactionTable::cancel`] did (RFC 3261 §9.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The CANCEL was sent as this client transaction.
    Sent(ClientKey),
    /// No provisional response yet: the CANCEL will go out when one arrives
    /// ([`Event::CancelSent`]); if none does, Timer B ends the INVITE.
    Deferred,
}

#[derive(Debug)]
enum Transaction {
    InviteClient(InviteClient),
    NonInviteClient(NonInviteClient),
    InviteServer(InviteServer),
    NonInviteServer(NonInviteServer),
}

macro_rules! each {
    ($tx:expr, $t:ident => $body:expr) => {
        match $tx {
            Transaction::InviteClient($t) => $body,
            Transaction::NonInviteClient($t) => $body,
            Transaction::InviteServer($t) => $body,
            Transaction::NonInviteServer($t) => $body,
        }
    };
}

impl Transaction {
    fn poll_transmit(&mut self) -> Option<Transmit> {
        each!(self, t => t.poll_transmit())
    }
    fn poll_timeout(&self) -> Option<Instant> {
        each!(self, t => t.poll_timeout())
    }
    fn handle_timeout(&mut self, now: Instant) {
        each!(self, t => t.handle_timeout(now))
    }
    fn handle_transport_error(&mut self, now: Instant) {
        each!(self, t => t.handle_transport_error(now))
    }
    fn is_terminated(&self) -> bool {
        each!(self, t => t.is_terminated())
    }
    fn state_name(&self) -> &'static str {
        each!(self, t => t.state_name())
    }
    fn peer(&self) -> Peer {
        match self {
            Transaction::InviteClient(t) => t.peer(),
            Transaction::NonInviteClient(t) => t.peer(),
            Transaction::InviteServer(t) => t.peer(),
            Transaction::NonInviteServer(t) => t.peer(),
        }
    }
}

#[derive(Debug, Clone)]
enum SlotKey {
    Client(ClientKey),
    Server(ServerKey),
}

#[derive(Debug)]
struct Slot {
    key: SlotKey,
    tx: Transaction,
    /// The deadline this slot has in `deadlines`, kept in step so the set
    /// never holds stale entries.
    scheduled: Option<Instant>,
    /// A CANCEL waiting for the INVITE's first provisional (§9.1).
    cancel_pending: bool,
}

/// All transactions of one SIP endpoint (or one shard of it), sans-IO
/// (RFC 3261 §17). Feed it messages, TU actions and timeouts; drain
/// `poll_transmit`, `poll_event` and `poll_timeout` after each input.
///
/// Deadlines live in one ordered set of `(deadline, id)`: `poll_timeout` is
/// its first element and `handle_timeout` touches only due transactions, so
/// the cost does not grow with the number of idle transactions.
#[derive(Debug)]
pub struct TransactionTable {
    config: TimerConfig,
    next_id: u64,
    slots: HashMap<u64, Slot>,
    clients: HashMap<ClientKey, u64>,
    servers: HashMap<ServerKey, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl TransactionTable {
    /// An empty table whose transactions use `config`'s timers.
    pub fn new(config: TimerConfig) -> Self {
        TransactionTable {
            config,
            next_id: 0,
            slots: HashMap::new(),
            clients: HashMap::new(),
            servers: HashMap::new(),
            deadlines: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// How many transactions are live.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The RFC state name of a client transaction, if it is live.
    pub fn client_state(&self, key: &ClientKey) -> Option<&'static str> {
        let id = self.clients.get(key)?;
        self.slots.get(id).map(|s| s.tx.state_name())
    }

    /// The RFC state name of a server transaction, if it is live.
    pub fn server_state(&self, key: &ServerKey) -> Option<&'static str> {
        let id = self.servers.get(key)?;
        self.slots.get(id).map(|s| s.tx.state_name())
    }

    /// A message from the transport (§17.1.3, §17.2.3): routed to its
    /// transaction, or reported as `NewRequest`, `StrayAck` or
    /// `StrayResponse`. Errors only for messages lacking the headers matching
    /// needs; those should have been refused by validation before.
    pub fn handle_message(
        &mut self,
        now: Instant,
        peer: Peer,
        message: SipMessage,
    ) -> Result<(), TransactionError> {
        match message {
            SipMessage::Request(request) => self.handle_request(now, peer, request),
            SipMessage::Response(response) => self.handle_response(now, peer, response),
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        peer: Peer,
        request: Request,
    ) -> Result<(), TransactionError> {
        let identity = RequestIdentity::of(&request, matching_method(request.method))?;
        let is_ack = request.method == Method::Ack;
        if let Some(&id) = self.servers.get(&identity.key) {
            let matched = match self.slots.get_mut(&id) {
                Some(slot) => match &mut slot.tx {
                    Transaction::InviteServer(tx) => {
                        // RFC 2543 ACKs must also carry the To tag of our
                        // response (§17.2.3); branch matching needs no check.
                        let tag_ok = !is_ack
                            || !identity.key.is_rfc2543()
                            || identity.to_tag.as_deref() == tx.response_to_tag();
                        if tag_ok {
                            tx.handle_request(now, request.clone());
                        }
                        tag_ok
                    }
                    Transaction::NonInviteServer(tx) if !is_ack => {
                        tx.handle_request(now, request.clone());
                        true
                    }
                    _ => false,
                },
                None => false,
            };
            if matched {
                self.sync(now, id);
                return Ok(());
            }
        }
        if is_ack {
            self.events.push_back(Event::StrayAck { request, peer });
            return Ok(());
        }
        let key = identity.key;
        let tx = if request.method == Method::Invite {
            Transaction::InviteServer(InviteServer::new(now, peer, request.clone(), self.config)?)
        } else {
            Transaction::NonInviteServer(NonInviteServer::new(
                now,
                peer,
                request.clone(),
                self.config,
            )?)
        };
        let id = self.insert(SlotKey::Server(key.clone()), tx);
        self.servers.insert(key.clone(), id);
        self.events
            .push_back(Event::NewRequest { key, request, peer });
        self.sync(now, id);
        Ok(())
    }

    fn handle_response(
        &mut self,
        now: Instant,
        peer: Peer,
        response: Response,
    ) -> Result<(), TransactionError> {
        let key = ClientKey::from_response(&response)?;
        let Some(&id) = self.clients.get(&key) else {
            self.events
                .push_back(Event::StrayResponse { response, peer });
            return Ok(());
        };
        if let Some(slot) = self.slots.get_mut(&id) {
            match &mut slot.tx {
                Transaction::InviteClient(tx) => tx.handle_response(now, response),
                Transaction::NonInviteClient(tx) => tx.handle_response(now, response),
                _ => {}
            }
        }
        self.sync(now, id);
        Ok(())
    }

    /// Starts a client transaction for `request` towards `peer` (§17.1). The
    /// request must carry an RFC 3261 branch in its top Via (see
    /// [`super::new_branch`]); ACK is refused (§17.1.1.3).
    pub fn send_request(
        &mut self,
        now: Instant,
        peer: Peer,
        request: Request,
    ) -> Result<ClientKey, TransactionError> {
        if request.method == Method::Ack {
            return Err(TransactionError::AckIsNotATransaction);
        }
        let key = ClientKey::from_request(&request)?;
        if self.clients.contains_key(&key) {
            return Err(TransactionError::DuplicateTransaction);
        }
        let tx = if request.method == Method::Invite {
            Transaction::InviteClient(InviteClient::new(now, peer, request, self.config)?)
        } else {
            Transaction::NonInviteClient(NonInviteClient::new(now, peer, request, self.config)?)
        };
        let id = self.insert(SlotKey::Client(key.clone()), tx);
        self.clients.insert(key.clone(), id);
        self.sync(now, id);
        Ok(key)
    }

    /// The TU's response for a server transaction (§17.2.1, §17.2.2). After
    /// a 2xx to an INVITE the transaction is gone; retransmit the 2xx with
    /// [`super::Retransmit2xx`].
    pub fn respond(
        &mut self,
        now: Instant,
        key: &ServerKey,
        response: Response,
    ) -> Result<(), TransactionError> {
        let id = *self
            .servers
            .get(key)
            .ok_or(TransactionError::UnknownTransaction)?;
        let slot = self
            .slots
            .get_mut(&id)
            .ok_or(TransactionError::UnknownTransaction)?;
        let result = match &mut slot.tx {
            Transaction::InviteServer(tx) => tx.send_response(now, response),
            Transaction::NonInviteServer(tx) => tx.send_response(now, response),
            _ => Err(TransactionError::UnknownTransaction),
        };
        self.sync(now, id);
        result
    }

    /// Cancels a pending client INVITE (§9.1): sends a CANCEL built by
    /// [`build_cancel`] to the same peer once a provisional response has
    /// arrived, deferring it until then otherwise.
    pub fn cancel(
        &mut self,
        now: Instant,
        invite: &ClientKey,
    ) -> Result<CancelOutcome, TransactionError> {
        let id = *self
            .clients
            .get(invite)
            .ok_or(TransactionError::UnknownTransaction)?;
        let slot = self
            .slots
            .get_mut(&id)
            .ok_or(TransactionError::UnknownTransaction)?;
        let Transaction::InviteClient(tx) = &slot.tx else {
            return Err(TransactionError::WrongMethod {
                expected: Method::Invite,
                got: invite.method,
            });
        };
        if !tx.awaits_final() {
            return Err(TransactionError::NotCancellable);
        }
        if tx.is_proceeding() {
            let cancel = build_cancel(tx.request())?;
            let peer = tx.peer();
            Ok(CancelOutcome::Sent(self.send_request(now, peer, cancel)?))
        } else {
            slot.cancel_pending = true;
            Ok(CancelOutcome::Deferred)
        }
    }

    /// The INVITE server transaction a received CANCEL targets (§9.2), so
    /// the TU can answer the INVITE with 487 (and the CANCEL with 200), or
    /// `None` (answer the CANCEL with 481). Only INVITEs still awaiting their
    /// final response are returned: after it, a CANCEL has no effect.
    pub fn cancel_target(&self, cancel: &Request) -> Result<Option<ServerKey>, TransactionError> {
        if cancel.method != Method::Cancel {
            return Err(TransactionError::WrongMethod {
                expected: Method::Cancel,
                got: cancel.method,
            });
        }
        let key = ServerKey::invite_cancelled_by(cancel)?;
        let pending = self
            .servers
            .get(&key)
            .and_then(|id| self.slots.get(id))
            .is_some_and(|slot| match &slot.tx {
                Transaction::InviteServer(tx) => tx.awaits_final(),
                _ => false,
            });
        Ok(pending.then_some(key))
    }

    /// The transport to `peer` failed (e.g. a TCP connection was refused or
    /// reset): every transaction with that peer is told (§17.1.4, §17.2.4).
    /// Rare, so it scans.
    pub fn handle_transport_error(&mut self, now: Instant, peer: Peer) {
        let ids: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.tx.peer() == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.tx.handle_transport_error(now);
            }
            self.sync(now, id);
        }
    }

    /// Fires the timers due at `now`, touching only the transactions they
    /// belong to (§17 timers A-K).
    pub fn handle_timeout(&mut self, now: Instant) {
        // Collected first: each due transaction is handled once per call,
        // whatever deadlines it sets while being handled.
        let due: Vec<u64> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.tx.handle_timeout(now);
            }
            self.sync(now, id);
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest deadline of any transaction.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    fn insert(&mut self, key: SlotKey, tx: Transaction) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.insert(
            id,
            Slot {
                key,
                tx,
                scheduled: None,
                cancel_pending: false,
            },
        );
        id
    }

    /// Moves a transaction's outputs into the table's queues, re-files its
    /// deadline and drops it once terminated.
    fn sync(&mut self, now: Instant, id: u64) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        while let Some(transmit) = slot.tx.poll_transmit() {
            self.transmits.push_back(transmit);
        }
        let mut send_cancel = None;
        match (&mut slot.tx, &slot.key) {
            (Transaction::InviteClient(tx), SlotKey::Client(key)) => {
                while let Some(event) = tx.poll_event() {
                    if matches!(event, ClientEvent::Provisional(_)) && slot.cancel_pending {
                        slot.cancel_pending = false;
                        send_cancel = Some((key.clone(), tx.peer(), build_cancel(tx.request())));
                    }
                    self.events.push_back(client_event(key, event));
                }
            }
            (Transaction::NonInviteClient(tx), SlotKey::Client(key)) => {
                while let Some(event) = tx.poll_event() {
                    self.events.push_back(client_event(key, event));
                }
            }
            (Transaction::InviteServer(tx), SlotKey::Server(key)) => {
                while let Some(event) = tx.poll_event() {
                    self.events.push_back(server_event(key, event));
                }
            }
            (Transaction::NonInviteServer(tx), SlotKey::Server(key)) => {
                while let Some(event) = tx.poll_event() {
                    self.events.push_back(server_event(key, event));
                }
            }
            _ => {}
        }
        let next = slot.tx.poll_timeout();
        if next != slot.scheduled {
            if let Some(old) = slot.scheduled {
                self.deadlines.remove(&(old, id));
            }
            if let Some(new) = next {
                self.deadlines.insert((new, id));
            }
            slot.scheduled = next;
        }
        if slot.tx.is_terminated() {
            if let Some(old) = slot.scheduled {
                self.deadlines.remove(&(old, id));
            }
            match &slot.key {
                SlotKey::Client(key) => self.clients.remove(key),
                SlotKey::Server(key) => self.servers.remove(key),
            };
            self.slots.remove(&id);
        }
        if let Some((invite, peer, cancel)) = send_cancel {
            // The CANCEL was vetted when it was asked for; a failure here is a
            // malformed INVITE we sent ourselves, so it is only logged.
            match cancel.and_then(|cancel| self.send_request(now, peer, cancel)) {
                Ok(cancel) => self.events.push_back(Event::CancelSent { invite, cancel }),
                Err(error) => tracing::warn!(%error, "deferred CANCEL not sent"),
            }
        }
    }
}

fn client_event(key: &ClientKey, event: ClientEvent) -> Event {
    let key = key.clone();
    match event {
        ClientEvent::Provisional(response) => Event::Provisional { key, response },
        ClientEvent::Final(response) => Event::Final { key, response },
        ClientEvent::Timeout => Event::ClientTimeout { key },
        ClientEvent::TransportError => Event::ClientTransportError { key },
    }
}

fn server_event(key: &ServerKey, event: ServerEvent) -> Event {
    let key = key.clone();
    match event {
        ServerEvent::Timeout => Event::ServerTimeout { key },
        ServerEvent::TransportError => Event::ServerTransportError { key },
    }
}
