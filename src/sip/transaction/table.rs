//! Many transactions at once: matching (RFC 3261 §17.1.3, §17.2.3), one
//! ordered set of deadlines, and CANCEL (§9).

use std::collections::{BTreeSet, HashMap};

use super::outbox::Outbox;
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

/// What a received CANCEL matches ([`TransactionTable::cancel_match`],
/// RFC 3261 §9.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelMatch {
    /// An INVITE server transaction still awaiting its final response: 200
    /// to the CANCEL, 487 to the INVITE.
    Pending(ServerKey),
    /// The INVITE already has its final response: 200 to the CANCEL, which
    /// has no effect on the INVITE.
    Answered,
    /// No INVITE server transaction: 481 to the CANCEL.
    Unmatched,
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
    /// Server transactions beyond this many are refused
    /// ([`TransactionError::TableFull`]).
    max_server: usize,
    next_id: u64,
    /// Boxed: a slot is large, and a busy table (every REGISTER's
    /// transaction waits out Timer J, 32 s) rehashes often; moving
    /// pointers instead of whole transactions keeps that cheap.
    slots: HashMap<u64, Box<Slot>>,
    clients: HashMap<ClientKey, u64>,
    servers: HashMap<ServerKey, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    transmits: Outbox<Transmit>,
    events: Outbox<Event>,
}

impl TransactionTable {
    /// An empty table whose transactions use `config`'s timers.
    pub fn new(config: TimerConfig) -> Self {
        TransactionTable {
            config,
            max_server: usize::MAX,
            next_id: 0,
            slots: HashMap::new(),
            clients: HashMap::new(),
            servers: HashMap::new(),
            deadlines: BTreeSet::new(),
            transmits: Outbox::new(),
            events: Outbox::new(),
        }
    }

    /// Bounds the table: a request that would create a server
    /// transaction while `max` transactions are live is refused with
    /// [`TransactionError::TableFull`] (client transactions, which we
    /// create ourselves, are not bounded here).
    pub fn set_max_transactions(&mut self, max: usize) {
        self.max_server = max;
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
        let mut identity = RequestIdentity::of(&request, matching_method(request.method))?;
        let is_ack = request.method == Method::Ack;
        // §17.2.3 matches on the Via alone; a retransmission also comes from
        // the same source. Another source with the same branch and sent-by
        // gets a transaction of its own (see `ServerKey::from_source`).
        let other_source = self
            .servers
            .get(&identity.key)
            .and_then(|id| self.slots.get(id))
            .is_some_and(|slot| slot.tx.peer() != peer);
        if other_source {
            identity.key = identity.key.from_source(peer);
        }
        if let Some(&id) = self.servers.get(&identity.key) {
            let matched = match self.slots.get_mut(&id) {
                Some(slot) => match &mut slot.tx {
                    Transaction::InviteServer(tx) => {
                        // RFC 2543 ACKs must also carry the To tag of our
                        // response (§17.2.3); branch matching needs no check.
                        let tag_ok = !is_ack
                            || !identity.key.is_rfc2543()
                            || identity.to_tag.as_deref() == tx.response_to_tag();
                        let tag_ok = tag_ok && !(is_ack && tx.passes_ack_up());
                        if tag_ok {
                            tx.handle_request(now, &request);
                        }
                        tag_ok
                    }
                    Transaction::NonInviteServer(tx) if !is_ack => {
                        tx.handle_request(now, &request);
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
            self.events.push(Event::StrayAck { request, peer });
            return Ok(());
        }
        if self.slots.len() >= self.max_server {
            return Err(TransactionError::TableFull);
        }
        let key = identity.key;
        let tx = if request.method == Method::Invite {
            Transaction::InviteServer(InviteServer::new(now, peer, &request, self.config)?)
        } else {
            Transaction::NonInviteServer(NonInviteServer::new(now, peer, &request, self.config)?)
        };
        let id = self.insert(SlotKey::Server(key.clone()), tx);
        self.servers.insert(key.clone(), id);
        self.events.push(Event::NewRequest { key, request, peer });
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
            self.events.push(Event::StrayResponse { response, peer });
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
    /// a 2xx to an INVITE the transaction only absorbs INVITE retransmissions
    /// (RFC 6026 Accepted); retransmit the 2xx with [`super::Retransmit2xx`].
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
    /// `None`. Only INVITEs still awaiting their final response are
    /// returned: after it, a CANCEL has no effect ([`Self::cancel_match`]
    /// tells that case apart from no match at all).
    pub fn cancel_target(&self, cancel: &Request) -> Result<Option<ServerKey>, TransactionError> {
        Ok(match self.cancel_match(cancel)? {
            CancelMatch::Pending(key) => Some(key),
            CancelMatch::Answered | CancelMatch::Unmatched => None,
        })
    }

    /// What a received CANCEL matches (RFC 3261 §9.2): an INVITE server
    /// transaction still awaiting its final response, one that already sent
    /// it (the CANCEL gets 200 and has no effect), or nothing (481).
    pub fn cancel_match(&self, cancel: &Request) -> Result<CancelMatch, TransactionError> {
        if cancel.method != Method::Cancel {
            return Err(TransactionError::WrongMethod {
                expected: Method::Cancel,
                got: cancel.method,
            });
        }
        let key = ServerKey::invite_cancelled_by(cancel)?;
        let tx = self
            .servers
            .get(&key)
            .and_then(|id| self.slots.get(id))
            .and_then(|slot| match &slot.tx {
                Transaction::InviteServer(tx) if !tx.is_terminated() => Some(tx),
                _ => None,
            });
        Ok(match tx {
            Some(tx) if tx.awaits_final() => CancelMatch::Pending(key),
            Some(_) => CancelMatch::Answered,
            None => CancelMatch::Unmatched,
        })
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
        self.transmits.pop()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The earliest deadline of any transaction.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Queue slots held by the table and its transactions (tests of the
    /// memory bound).
    #[cfg(test)]
    fn held_room(&self) -> usize {
        let txs: usize = self
            .slots
            .values()
            .map(|s| each!(&s.tx, t => t.held_room()))
            .sum();
        self.transmits.capacity() + self.events.capacity() + txs
    }

    /// The maps and the deadline set of an empty table, given back: a
    /// call leg's table goes from one or two transactions to none several
    /// times in a call, and then sits empty for the rest of it (a
    /// `HashMap` keeps the buckets of its fullest moment and a `BTreeSet`
    /// its root node: about 1 KB a leg; SPEC §6, under 20 KB per active
    /// call). A busy table (the endpoint's) is seldom empty, and
    /// re-growing from nothing costs one allocation per map.
    fn release_room(&mut self) {
        self.slots = HashMap::new();
        self.clients = HashMap::new();
        self.servers = HashMap::new();
        self.deadlines = BTreeSet::new();
    }

    /// Buckets held by the table's maps (tests of the memory bound).
    #[cfg(test)]
    fn map_room(&self) -> usize {
        self.slots.capacity() + self.clients.capacity() + self.servers.capacity()
    }

    fn insert(&mut self, key: SlotKey, tx: Transaction) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.insert(
            id,
            Box::new(Slot {
                key,
                tx,
                scheduled: None,
                cancel_pending: false,
            }),
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
            self.transmits.push(transmit);
        }
        let mut send_cancel = None;
        match (&mut slot.tx, &slot.key) {
            (Transaction::InviteClient(tx), SlotKey::Client(key)) => {
                while let Some(event) = tx.poll_event() {
                    if matches!(event, ClientEvent::Provisional(_)) && slot.cancel_pending {
                        slot.cancel_pending = false;
                        send_cancel = Some((key.clone(), tx.peer(), build_cancel(tx.request())));
                    }
                    self.events.push(client_event(key, event));
                }
            }
            (Transaction::NonInviteClient(tx), SlotKey::Client(key)) => {
                while let Some(event) = tx.poll_event() {
                    self.events.push(client_event(key, event));
                }
            }
            (Transaction::InviteServer(tx), SlotKey::Server(key)) => {
                while let Some(event) = tx.poll_event() {
                    self.events.push(server_event(key, event));
                }
            }
            (Transaction::NonInviteServer(tx), SlotKey::Server(key)) => {
                while let Some(event) = tx.poll_event() {
                    self.events.push(server_event(key, event));
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
            if self.slots.is_empty() {
                self.release_room();
            }
        }
        if let Some((invite, peer, cancel)) = send_cancel {
            // The CANCEL was vetted when it was asked for; a failure here is a
            // malformed INVITE we sent ourselves, so it is only logged.
            match cancel.and_then(|cancel| self.send_request(now, peer, cancel)) {
                Ok(cancel) => self.events.push(Event::CancelSent { invite, cancel }),
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

#[cfg(test)]
mod tests {
    use super::super::test_epoch;
    use super::super::testmsg::{invite, non_invite, request, response_to};
    use super::*;
    use crate::sip::TransportKind;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    fn udp() -> Peer {
        Peer {
            transport: TransportKind::Udp,
            addr: "192.0.2.1:5060".parse().unwrap(),
        }
    }

    fn new_request_key(table: &mut TransactionTable) -> ServerKey {
        match table.poll_event() {
            Some(Event::NewRequest { key, .. }) => key,
            other => panic!("expected NewRequest, got {other:?}"),
        }
    }

    fn codes(table: &mut TransactionTable) -> Vec<u16> {
        std::iter::from_fn(|| table.poll_transmit())
            .filter_map(|t| match t.message {
                SipMessage::Response(r) => Some(r.status_code.code()),
                SipMessage::Request(_) => None,
            })
            .collect()
    }

    fn deliver(table: &mut TransactionTable, now: Instant, req: &Request) {
        table
            .handle_message(now, udp(), SipMessage::Request(req.clone()))
            .unwrap();
    }

    #[test]
    fn invite_retransmission_ack_absorption_and_removal() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let inv = invite("z9hG4bKtab1");
        deliver(&mut table, t0, &inv);
        let key = new_request_key(&mut table);
        assert_eq!(codes(&mut table), [100]);
        deliver(&mut table, t0 + 500 * MS, &inv);
        assert_eq!(table.poll_event(), None, "a retransmission is not new");
        assert_eq!(codes(&mut table), [100]);
        table
            .respond(t0 + 600 * MS, &key, response_to(&inv, 486))
            .unwrap();
        assert_eq!(codes(&mut table), [486]);
        // The INVITE again: the final again.
        deliver(&mut table, t0 + 700 * MS, &inv);
        assert_eq!(codes(&mut table), [486]);
        let ack = request(
            &String::from_utf8(inv.to_bytes())
                .unwrap()
                .replacen("INVITE sip", "ACK sip", 1)
                .replace("1 INVITE", "1 ACK"),
        );
        deliver(&mut table, t0 + 800 * MS, &ack);
        assert_eq!(
            table.poll_event(),
            None,
            "the ACK for a non-2xx is absorbed"
        );
        assert_eq!(table.server_state(&key), Some("Confirmed"));
        assert_eq!(table.poll_timeout(), Some(t0 + 5_800 * MS));
        table.handle_timeout(t0 + 5_800 * MS);
        assert!(table.is_empty());
        assert_eq!(table.poll_timeout(), None);
        assert_eq!(
            table.respond(t0, &key, response_to(&inv, 200)),
            Err(TransactionError::UnknownTransaction)
        );
    }

    /// Outputs are held only until drained: a table whose transactions
    /// wait out Timer J and K holds no queue room, and a completed client
    /// transaction keeps no headers or body of its request (SPEC §6
    /// memory).
    #[test]
    fn drained_transactions_hold_no_queue_room_nor_their_request() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let bye = non_invite("BYE", "z9hG4bKheld1");
        deliver(&mut table, t0, &bye);
        let key = new_request_key(&mut table);
        table.respond(t0, &key, response_to(&bye, 200)).unwrap();
        assert_eq!(codes(&mut table), [200]);
        let options = non_invite("OPTIONS", "z9hG4bKheld2");
        let client = table.send_request(t0, udp(), options.clone()).unwrap();
        assert_eq!(std::iter::from_fn(|| table.poll_transmit()).count(), 1);
        table
            .handle_message(
                t0 + MS,
                udp(),
                SipMessage::Response(response_to(&options, 200)),
            )
            .unwrap();
        assert!(matches!(table.poll_event(), Some(Event::Final { .. })));
        assert_eq!(table.poll_event(), None);
        assert_eq!(table.server_state(&key), Some("Completed"));
        assert_eq!(table.client_state(&client), Some("Completed"));
        assert_eq!(table.held_room(), 0);
        let id = table.clients[&client];
        match &table.slots[&id].tx {
            Transaction::NonInviteClient(tx) => {
                assert!(tx.request().headers.0.is_empty() && tx.request().body.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // A retransmitted request still gets the response again (Timer J).
        deliver(&mut table, t0 + 500 * MS, &bye);
        assert_eq!(codes(&mut table), [200]);
        assert_eq!(table.held_room(), 0);
    }

    /// Once its last transaction ends, a table holds no map buckets: a
    /// call leg's table sits empty for most of the call (SPEC §6 memory);
    /// it matches as before when transactions come again.
    #[test]
    fn an_emptied_table_gives_its_maps_back() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        assert_eq!(table.map_room(), 0);
        let options = non_invite("OPTIONS", "z9hG4bKroom1");
        let client = table.send_request(t0, udp(), options.clone()).unwrap();
        let bye = non_invite("BYE", "z9hG4bKroom2");
        deliver(&mut table, t0, &bye);
        let server = new_request_key(&mut table);
        assert!(table.map_room() > 0);
        table.respond(t0, &server, response_to(&bye, 200)).unwrap();
        table
            .handle_message(t0, udp(), SipMessage::Response(response_to(&options, 200)))
            .unwrap();
        while table.poll_transmit().is_some() {}
        while table.poll_event().is_some() {}
        // Timer K (T4) ends the client, then Timer J (64·T1) the server.
        table.handle_timeout(t0 + 5 * 1_000 * MS);
        assert_eq!(table.len(), 1);
        assert!(table.map_room() > 0, "one transaction left");
        table.handle_timeout(t0 + 32 * 1_000 * MS);
        assert!(table.is_empty());
        assert_eq!(table.map_room(), 0, "an empty table holds no buckets");
        assert_eq!(table.poll_timeout(), None);
        assert_eq!(table.client_state(&client), None);
        // A new transaction after that works as on a fresh table.
        let again = non_invite("OPTIONS", "z9hG4bKroom3");
        let key = table
            .send_request(t0 + 33 * 1_000 * MS, udp(), again.clone())
            .unwrap();
        assert_eq!(table.client_state(&key), Some("Trying"));
        table
            .handle_message(
                t0 + 33 * 1_000 * MS,
                udp(),
                SipMessage::Response(response_to(&again, 200)),
            )
            .unwrap();
        assert_eq!(table.client_state(&key), Some("Completed"));
    }

    /// RFC 4475 §3.2 `badbranch`, byte for byte.
    const BADBRANCH: &str = "OPTIONS sip:user@example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.org;tag=33242\r\n\
Max-Forwards: 3\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK\r\n\
Accept: application/sdp\r\n\
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n\r\n\
CSeq: 8 OPTIONS\r\n\
l: 0\r\n\r\n";

    #[test]
    fn badbranch_is_matched_the_rfc_2543_way() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let req = request(BADBRANCH);
        deliver(&mut table, t0, &req);
        let key = new_request_key(&mut table);
        assert!(key.is_rfc2543());
        table.respond(t0, &key, response_to(&req, 200)).unwrap();
        assert_eq!(codes(&mut table), [200]);
        deliver(&mut table, t0 + 500 * MS, &req);
        assert_eq!(table.poll_event(), None);
        assert_eq!(codes(&mut table), [200]);
        // Another OPTIONS with the same bare-cookie branch but a new CSeq is
        // a new transaction, which branch matching alone would have missed.
        deliver(
            &mut table,
            t0,
            &request(&BADBRANCH.replace("CSeq: 8", "CSeq: 9")),
        );
        assert_ne!(new_request_key(&mut table), key);
    }

    #[test]
    fn rfc_2543_ack_needs_the_response_to_tag() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let inv2543 = "INVITE sip:UserB@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP iftgw.example.com\r\n\
From: <sip:+13035551111@ift.client.example.net;user=phone>\r\n\
To: sip:+16505552222@ss1.example.net;user=phone\r\n\
Call-ID: inv2543.1717@ift.client.example.com\r\n\
CSeq: 56 INVITE\r\nContent-Length: 0\r\n\r\n";
        let inv = request(inv2543);
        deliver(&mut table, t0, &inv);
        let key = new_request_key(&mut table);
        assert!(key.is_rfc2543());
        table.respond(t0, &key, response_to(&inv, 404)).unwrap();
        let ack = |tag: &str| {
            request(
                &inv2543
                    .replacen("INVITE sip", "ACK sip", 1)
                    .replace("56 INVITE", "56 ACK")
                    .replace(
                        "user=phone\r\nCall",
                        &format!("user=phone;tag={tag}\r\nCall"),
                    ),
            )
        };
        deliver(&mut table, t0, &ack("other"));
        assert!(matches!(table.poll_event(), Some(Event::StrayAck { .. })));
        assert_eq!(table.server_state(&key), Some("Completed"));
        deliver(&mut table, t0, &ack("b1"));
        assert_eq!(table.poll_event(), None);
        assert_eq!(table.server_state(&key), Some("Confirmed"));
    }

    #[test]
    fn cancel_is_its_own_transaction_and_finds_the_invite() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let inv = invite("z9hG4bKcx");
        deliver(&mut table, t0, &inv);
        let invite_key = new_request_key(&mut table);
        let cancel = build_cancel(&inv).unwrap();
        deliver(&mut table, t0 + 100 * MS, &cancel);
        let cancel_key = new_request_key(&mut table);
        assert_ne!(cancel_key, invite_key);
        assert_eq!(table.cancel_target(&cancel), Ok(Some(invite_key.clone())));
        table
            .respond(t0, &cancel_key, response_to(&cancel, 200))
            .unwrap();
        table
            .respond(t0, &invite_key, response_to(&inv, 487))
            .unwrap();
        assert_eq!(codes(&mut table), [100, 200, 487]);
        // Once the INVITE has its final response, a CANCEL has no target,
        // but it still matches (§9.2: 200, no effect).
        assert_eq!(table.cancel_target(&cancel), Ok(None));
        assert_eq!(table.cancel_match(&cancel), Ok(CancelMatch::Answered));
        assert!(table.cancel_target(&inv).is_err());
    }

    #[test]
    fn client_cancel_waits_for_a_provisional() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let inv = invite("z9hG4bKcc");
        let key = table.send_request(t0, udp(), inv.clone()).unwrap();
        assert!(table.poll_transmit().is_some());
        assert_eq!(table.cancel(t0, &key), Ok(CancelOutcome::Deferred));
        assert!(
            table.poll_transmit().is_none(),
            "no CANCEL before a 1xx (§9.1)"
        );
        table
            .handle_message(
                t0 + 100 * MS,
                udp(),
                SipMessage::Response(response_to(&inv, 100)),
            )
            .unwrap();
        assert!(matches!(
            table.poll_event(),
            Some(Event::Provisional { .. })
        ));
        let cancel_key = match table.poll_event() {
            Some(Event::CancelSent { invite, cancel }) => {
                assert_eq!(invite, key);
                cancel
            }
            other => panic!("expected CancelSent, got {other:?}"),
        };
        assert_eq!(cancel_key.method, Method::Cancel);
        assert_eq!(cancel_key.branch, key.branch);
        match table.poll_transmit().map(|t| t.message) {
            Some(SipMessage::Request(r)) => assert_eq!(r.method, Method::Cancel),
            other => panic!("expected CANCEL, got {other:?}"),
        }
        // The 487 for the INVITE and the 200 for the CANCEL each find theirs.
        let cancel = build_cancel(&inv).unwrap();
        table
            .handle_message(t0, udp(), SipMessage::Response(response_to(&cancel, 200)))
            .unwrap();
        table
            .handle_message(t0, udp(), SipMessage::Response(response_to(&inv, 487)))
            .unwrap();
        assert!(matches!(table.poll_event(), Some(Event::Final { key: k, .. }) if k == cancel_key));
        assert!(matches!(table.poll_event(), Some(Event::Final { key: k, .. }) if k == key));
        assert_eq!(
            table.cancel(t0, &key),
            Err(TransactionError::NotCancellable)
        );
    }

    #[test]
    fn client_cancel_in_proceeding_is_sent_at_once() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let inv = invite("z9hG4bKcp");
        let key = table.send_request(t0, udp(), inv.clone()).unwrap();
        table
            .handle_message(t0, udp(), SipMessage::Response(response_to(&inv, 180)))
            .unwrap();
        match table.cancel(t0, &key) {
            Ok(CancelOutcome::Sent(c)) => assert_eq!(c.method, Method::Cancel),
            other => panic!("expected Sent, got {other:?}"),
        }
        let bye = table
            .send_request(t0, udp(), non_invite("BYE", "z9hG4bKbye"))
            .unwrap();
        assert!(matches!(
            table.cancel(t0, &bye),
            Err(TransactionError::WrongMethod { .. })
        ));
    }

    #[test]
    fn strays_and_refusals() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let inv = invite("z9hG4bKst");
        table
            .handle_message(t0, udp(), SipMessage::Response(response_to(&inv, 200)))
            .unwrap();
        assert!(matches!(
            table.poll_event(),
            Some(Event::StrayResponse { .. })
        ));
        let ack = non_invite("ACK", "z9hG4bKst2");
        deliver(&mut table, t0, &ack);
        assert!(matches!(table.poll_event(), Some(Event::StrayAck { .. })));
        assert!(table.is_empty());
        assert_eq!(
            table.send_request(t0, udp(), ack),
            Err(TransactionError::AckIsNotATransaction)
        );
        assert_eq!(
            table.send_request(t0, udp(), request(BADBRANCH)),
            Err(TransactionError::NoRfc3261Branch)
        );
        table.send_request(t0, udp(), inv.clone()).unwrap();
        assert_eq!(
            table.send_request(t0, udp(), inv),
            Err(TransactionError::DuplicateTransaction)
        );
    }

    #[test]
    fn accepted_invite_passes_ack_up_and_absorbs_retransmissions() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let inv = invite("z9hG4bKacc");
        deliver(&mut table, t0, &inv);
        let key = new_request_key(&mut table);
        table.respond(t0, &key, response_to(&inv, 200)).unwrap();
        assert_eq!(codes(&mut table), [100, 200]);
        deliver(&mut table, t0 + 500 * MS, &inv);
        assert_eq!(table.poll_event(), None);
        assert!(codes(&mut table).is_empty());
        // An ACK with the INVITE's branch (as an RFC 2543-era UA might send)
        // still goes to the TU after a 2xx.
        let ack = request(
            &String::from_utf8(inv.to_bytes())
                .unwrap()
                .replacen("INVITE sip", "ACK sip", 1)
                .replace("1 INVITE", "1 ACK"),
        );
        deliver(&mut table, t0 + 600 * MS, &ack);
        assert!(matches!(table.poll_event(), Some(Event::StrayAck { .. })));
    }

    #[test]
    fn transport_error_reaches_every_transaction_of_the_peer() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let tcp = Peer {
            transport: TransportKind::Tcp,
            addr: "192.0.2.9:5060".parse().unwrap(),
        };
        let a = table.send_request(t0, tcp, invite("z9hG4bKta")).unwrap();
        deliver(&mut table, t0, &non_invite("OPTIONS", "z9hG4bKtb"));
        let other = new_request_key(&mut table);
        table.handle_transport_error(t0, tcp);
        assert_eq!(
            table.poll_event(),
            Some(Event::ClientTransportError { key: a })
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.server_state(&other), Some("Trying"));
    }

    #[test]
    fn ten_thousand_transactions_share_one_deadline_set() {
        let t0 = test_epoch();
        let mut table = TransactionTable::new(TimerConfig::default());
        let mut keys = Vec::new();
        for i in 0..10_000u64 {
            let req = non_invite("OPTIONS", &format!("z9hG4bKmany{i}"));
            let start = t0 + Duration::from_millis(i);
            keys.push(table.send_request(start, udp(), req).unwrap());
        }
        while table.poll_transmit().is_some() {}
        // Earliest: the first transaction's Timer E.
        assert_eq!(table.poll_timeout(), Some(t0 + 500 * MS));
        // Handling a timeout touches only what is due: two transactions here.
        table.handle_timeout(t0 + 501 * MS);
        assert_eq!(std::iter::from_fn(|| table.poll_transmit()).count(), 2);
        assert_eq!(table.poll_timeout(), Some(t0 + 502 * MS));
        // Answer half of them; then run the clock out.
        for key in keys.iter().step_by(2) {
            let req = non_invite("OPTIONS", &key.branch);
            table
                .handle_message(
                    t0 + 600 * MS,
                    udp(),
                    SipMessage::Response(response_to(&req, 200)),
                )
                .unwrap();
        }
        let mut finals = 0;
        let mut timeouts = 0;
        while let Some(t) = table.poll_timeout() {
            table.handle_timeout(t);
            while table.poll_transmit().is_some() {}
            while let Some(event) = table.poll_event() {
                match event {
                    Event::Final { .. } => finals += 1,
                    Event::ClientTimeout { .. } => timeouts += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(finals, 5_000);
        assert_eq!(timeouts, 5_000);
        assert!(table.is_empty());
    }
}
