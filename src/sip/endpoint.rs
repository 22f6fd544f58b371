//! The SIP endpoint: powerdial's front door, sans-IO (RFC 3261 §8.2, §18.2,
//! SPEC §5).
//!
//! One [`Endpoint`] ties the SIP cores together: every inbound message goes
//! through [`message::inspect`], the transaction table, then the TU logic
//! here (OPTIONS, REGISTER with digest, CANCEL, in-dialog requests, the
//! refusals). It reads no clock and no OS RNG: `now` (monotonic) and `wall`
//! (wall clock, for binding expiry) come with every input, the RNG seed at
//! construction. Drain [`Endpoint::poll_transmit`] and
//! [`Endpoint::poll_event`] after every input and sleep until
//! [`Endpoint::poll_timeout`] (DESIGN.md "The core API shape").
//!
//! Decisions:
//! - Responses go back to the source address of the request (the [`Peer`]
//!   it arrived from), not to the Via's sent-by: the NAT-friendly choice
//!   of RFC 3581 applied to every request, so phones behind NAT get their
//!   answers whether or not they asked for `rport`. The top Via still gets
//!   `received`/`rport` (RFC 3261 §18.2.1, RFC 3581 §4) so the phone learns
//!   its public address.
//! - A REGISTER is authenticated first (§10.3 step 3); then a Request-URI
//!   host that is not one of ours gets 403 (we are no proxy that could
//!   forward it, §10.3 step 1) and a To naming a foreign domain gets 404
//!   (§10.3 step 4). Checking after the challenge tells a stranger nothing
//!   about the domains we serve, and RFC 4475 `regaut01` gets its 401.
//! - Every out-of-dialog INVITE must carry valid digest credentials
//!   (agents) or come from a configured trunk's IP address: a registered
//!   source address alone is not trusted (UDP sources can be forged). Until
//!   An INVITE from a trunk to one of our caller IDs (Request-URI or To
//!   user, [`EndpointConfig::callback_numbers`]) is a lead calling back
//!   (SPEC §1): it is handed whole to the call engine as a new call
//!   ([`Routed::new_call`]), which runs its server transaction. Every
//!   other INVITE gets 403 ([`CALLS_BY_DIALER`]).
//! - Before anything is parsed, every message that is not a response
//!   counts against its source address (`sip::flood`): past the limit, or
//!   with a scanner's User-Agent, the address is banned and its messages
//!   dropped unanswered. An out-of-dialog INVITE or a REGISTER without
//!   credentials is challenged statelessly (RFC 3261 §8.2.7): a flood of
//!   them allocates no transaction, no media port and no database row, and
//!   a registration's first REGISTER leaves nothing for Timer J. When the transaction table is full a
//!   new request gets 503 with Retry-After (RFC 3261 §21.5.4), statelessly.
//! - Transaction events the endpoint does not answer itself (client
//!   transactions, server timeouts) are kept for the call engine in
//!   [`Endpoint::poll_transaction_event`].

use crate::sip::auth_limit::{self, AuthLimiter};
use crate::sip::flood::{Admit, BanInfo, FloodConfig, SourceGuard};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::dialog::{DialogSet, NameAddr, RequestMatch};
use super::digest::{Algorithm, DigestVerifier, Rejection};
use super::message::{self, check_request, response_to, Inspected};
use super::registrar::{Binding, RegisterTo, Registrar};
use super::syntax::headers::untyped;
use super::syntax::{Header, HeadersExt, Method, Request, Response, SipMessage};
use super::transaction::{
    new_branch, CancelMatch, Event, ServerKey, TimerConfig, TransactionError, TransactionTable,
};
use super::{Peer, Transmit};
use crate::config::AgentConfig;

/// The methods powerdial implements, for `Allow` in 200 to OPTIONS, 405
/// and 501 (RFC 3261 §20.5, §8.2.1, §11.2).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER";

/// The reason given (as a `Warning`) when an authenticated agent or a trunk
/// sends an INVITE: powerdial originates every call itself (SPEC §1).
pub const CALLS_BY_DIALER: &str = "Calls are placed by the dialer";

/// The agent name in the `Warning` headers we add (RFC 3261 §20.43), as the
/// message module does for its rejects.
const WARN_AGENT: &str = "powerdial";

/// What the endpoint needs to know about its own identity and limits.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The SIP domain: the digest realm of the agents (SPEC §4 `domain`).
    pub domain: String,
    /// Every name powerdial answers for: the domain, the listen IPs (and
    /// `ip:port`), `localhost`. A Request-URI host outside this list with
    /// Max-Forwards 0 gets 483; a REGISTER for it gets 403.
    pub local_domains: Vec<String>,
    /// The transaction timers (T1, T2, T4; RFC 3261 §17).
    pub timers: TimerConfig,
    /// The largest message accepted (bigger: 413 or dropped, SPEC §5).
    pub max_message_size: usize,
    /// Source IPs of the configured trunks: their INVITEs are not
    /// challenged (a carrier does not answer digest challenges). They are
    /// also exempt from the per-source limits.
    pub trunk_sources: Vec<IpAddr>,
    /// Per-source request limits, bans and scanner drops (`sip::flood`).
    pub flood: FloodConfig,
    /// Server transactions held at once; a new request beyond gets 503
    /// with Retry-After.
    pub max_transactions: usize,
    /// Our caller IDs (E.164, `+` and digits): an INVITE from a trunk to
    /// one of them is a callback (SPEC §1 "Leads calling back").
    pub callback_numbers: Vec<String>,
}

/// Seconds a client is asked to wait when the transaction table is full
/// (RFC 3261 §20.33).
const FULL_RETRY_AFTER_S: u32 = 5;

/// What the endpoint tells its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointEvent {
    /// The bindings of one agent changed (a REGISTER or an expiry, RFC
    /// 3261 §10.3): the driver persists exactly these rows so a restart
    /// keeps the bindings (SPEC §5: a restart keeps registrations).
    BindingsChanged {
        /// The agent (address-of-record user).
        aor: String,
        /// Bindings added or refreshed: insert or update.
        upserted: Vec<Binding>,
        /// Bindings gone (unregistered or expired): delete.
        removed: Vec<Binding>,
        /// Increasing per event: the driver hands it to the writer, and
        /// [`Endpoint::bindings_persisted`] with it releases the 200 OK
        /// held for this change.
        ticket: u64,
    },
}

/// The sans-IO SIP endpoint (RFC 3261 §8.2 UAS core, §10.3 registrar,
/// §17 transactions below it). See the module docs for the decisions.
pub struct Endpoint {
    cfg: EndpointConfig,
    transactions: TransactionTable,
    registrar: Registrar,
    verifier: DigestVerifier,
    /// Failed digest responses per (username, address): guessing is
    /// refused after a few (`sip::auth_limit`).
    guesses: AuthLimiter,
    /// Per-source request counts and bans (`sip::flood`).
    sources: SourceGuard,
    /// When the banned-sources gauge was last set.
    bans_gauge_at: Option<Instant>,
    dialogs: DialogSet,
    rng: StdRng,
    /// When the endpoint was made: the first deadline when bindings were
    /// loaded before any input told us the wall clock.
    created: Instant,
    /// The last `(now, wall)` pair seen: maps the registrar's wall-clock
    /// expiries onto the monotonic clock of `poll_timeout`.
    anchor: Option<(Instant, SystemTime)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<EndpointEvent>,
    transaction_events: VecDeque<Event>,
    /// Call-IDs of live call legs: their messages go to the call engine
    /// (DESIGN.md "shard by Call-ID"), not to this endpoint's table.
    routed: HashSet<String>,
    routed_out: VecDeque<Routed>,
    /// The next [`EndpointEvent::BindingsChanged`] ticket.
    next_ticket: u64,
    /// Whether a REGISTER's 200 OK waits until its binding is stored.
    ack_after_persist: bool,
    /// 200 OKs waiting for their binding changes to be stored, by ticket.
    held: BTreeMap<u64, (ServerKey, Response)>,
    /// The dialer sessions' own caller IDs: callback numbers besides
    /// [`EndpointConfig::callback_numbers`].
    session_numbers: Vec<String>,
}

/// A validated message whose Call-ID belongs to a live call leg (DESIGN.md
/// "shard by Call-ID"): the driver hands it to that leg's owner, which
/// runs its own transaction table (`crate::call`).
#[derive(Debug, Clone)]
pub struct Routed {
    /// The Call-ID the message carries.
    pub call_id: String,
    /// Where it came from.
    pub peer: Peer,
    /// The message, inspected (RFC 3261 §8.2.1 checks, Via `received`/`rport`
    /// fixed on requests, §18.2.1).
    pub message: SipMessage,
    /// An out-of-dialog INVITE from a trunk to one of our caller IDs: a
    /// new call for the callback router, no transaction made here.
    pub new_call: bool,
}

impl std::fmt::Debug for Endpoint {
    /// Short: the verifier holds credentials and is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("domain", &self.cfg.domain)
            .field("transactions", &self.transactions.len())
            .field("dialogs", &self.dialogs.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint for `cfg.domain` whose agents are `agents` (their
    /// passwords become HA1 at once, RFC 8760 §2.1); `secret` keys the
    /// stateless nonces (RFC 7616 §3.3), `seed` the RNG for branches.
    pub fn new(
        cfg: EndpointConfig,
        agents: &[AgentConfig],
        secret: [u8; 32],
        seed: [u8; 32],
        now: Instant,
    ) -> Self {
        let mut verifier = DigestVerifier::new(cfg.domain.clone(), secret, now);
        for a in agents {
            verifier.set_password(&a.username, &a.password);
        }
        let sources = SourceGuard::new(cfg.flood.clone(), &cfg.trunk_sources);
        let mut transactions = TransactionTable::new(cfg.timers);
        transactions.set_max_transactions(cfg.max_transactions);
        Endpoint {
            transactions,
            sources,
            bans_gauge_at: None,
            cfg,
            registrar: Registrar::new(),
            verifier,
            guesses: AuthLimiter::default(),
            dialogs: DialogSet::new(),
            rng: StdRng::from_seed(seed),
            created: now,
            anchor: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            transaction_events: VecDeque::new(),
            routed: HashSet::new(),
            routed_out: VecDeque::new(),
            next_ticket: 1,
            ack_after_persist: false,
            held: BTreeMap::new(),
            session_numbers: Vec::new(),
        }
    }

    /// Sends every later message carrying `call_id` to the call engine
    /// ([`Self::poll_routed`]) instead of this endpoint's transaction table.
    pub fn route_call_id(&mut self, call_id: &str) {
        self.routed.insert(call_id.to_string());
    }

    /// Stops routing `call_id` (its leg is gone); later strays get the
    /// endpoint's answers (481 for in-dialog requests, RFC 3261 §12.2.2).
    pub fn unroute_call_id(&mut self, call_id: &str) {
        self.routed.remove(call_id);
    }

    /// Holds each REGISTER's 200 OK until the driver reports its binding
    /// change stored ([`Self::bindings_persisted`]): an acknowledged
    /// registration survives a crash (SPEC §5). Off by default (a driver
    /// without persistence would never release them).
    pub fn set_ack_after_persist(&mut self, on: bool) {
        self.ack_after_persist = on;
    }

    /// Every binding change up to `ticket` is stored: sends the 200 OKs
    /// held for them.
    pub fn bindings_persisted(&mut self, now: Instant, ticket: u64) {
        let later = self.held.split_off(&ticket.saturating_add(1));
        let due = std::mem::replace(&mut self.held, later);
        for (_, (key, response)) in due {
            self.respond(now, &key, response);
        }
        self.drain_table_transmits();
    }

    /// REGISTER responses waiting for the database.
    pub fn held_acks(&self) -> usize {
        self.held.len()
    }

    fn take_ticket(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }

    /// The next message for a call leg (see [`Routed`]).
    pub fn poll_routed(&mut self) -> Option<Routed> {
        self.routed_out.pop_front()
    }

    /// Queues `message` for the call engine when its Call-ID is routed.
    fn take_routed(&mut self, peer: Peer, message: SipMessage) -> Option<SipMessage> {
        let call_id = match &message {
            SipMessage::Request(r) => r.call_id_header().map(|c| c.value().to_string()),
            SipMessage::Response(r) => r.call_id_header().map(|c| c.value().to_string()),
        };
        match call_id {
            Ok(call_id) if self.routed.contains(&call_id) => {
                self.routed_out.push_back(Routed {
                    call_id,
                    peer,
                    message,
                    new_call: false,
                });
                None
            }
            _ => Some(message),
        }
    }

    /// The dialer sessions' caller IDs (replacing the previous list): an
    /// INVITE from a trunk to one of them is a callback too.
    pub fn set_session_caller_ids(&mut self, numbers: Vec<String>) {
        self.session_numbers = numbers;
    }

    /// Restores persisted bindings after a restart (SPEC §5: a restart keeps registrations).
    pub fn load_bindings(&mut self, bindings: Vec<Binding>) {
        self.registrar.load(bindings);
    }

    /// One message from the network: a UDP datagram or a TCP message cut
    /// by [`message::StreamFramer`] (RFC 3261 §18.2.1, SPEC §5).
    pub fn handle_datagram(&mut self, now: Instant, wall: SystemTime, peer: Peer, bytes: &[u8]) {
        if !self.admit_datagram(now, wall, peer, bytes.starts_with(b"SIP/")) {
            return;
        }
        let inspected = message::inspect(bytes, peer.transport, self.cfg.max_message_size);
        self.handle_inspected(now, wall, peer, inspected);
    }

    /// The first half of [`Self::handle_datagram`]: counts a message
    /// against its source before anything is parsed (`sip::flood`);
    /// false when it is to be dropped unparsed. `is_response` says
    /// whether its octets start with `SIP/`. A driver that parses
    /// elsewhere ([`message::inspect`] is pure) calls this, then
    /// [`Self::handle_inspected`] with the verdict, message by message in
    /// arrival order (DESIGN.md "Order and sharding").
    pub fn admit_datagram(
        &mut self,
        now: Instant,
        wall: SystemTime,
        peer: Peer,
        is_response: bool,
    ) -> bool {
        self.anchor = Some((now, wall));
        self.admit(now, wall, peer, is_response)
    }

    /// Whether `ip` is banned at `now` (`sip::flood`): its messages will
    /// be dropped by [`Self::admit_datagram`], so a driver need not parse
    /// them ahead.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.sources.is_banned(ip, now)
    }

    /// The bound on a message's size ([`message::inspect`]'s `max_size`).
    pub fn max_message_size(&self) -> usize {
        self.cfg.max_message_size
    }

    /// The second half of [`Self::handle_datagram`]: a message admitted by
    /// [`Self::admit_datagram`], as [`message::inspect`] judged it.
    pub fn handle_inspected(
        &mut self,
        now: Instant,
        wall: SystemTime,
        peer: Peer,
        inspected: Inspected,
    ) {
        match inspected {
            Inspected::Reject {
                mut response,
                reason,
            } => {
                tracing::debug!(%peer, %reason, code = response.status_code.code(), "rejected request");
                fix_response_via(&mut response, peer);
                self.send_stateless(peer, response);
            }
            Inspected::Drop { reason } => {
                tracing::debug!(%peer, %reason, "dropped message");
            }
            Inspected::Extension(raw) => {
                // §8.2.1: an unknown method gets 501, statelessly (we have
                // no transaction for a method rsipstack cannot hold).
                tracing::debug!(%peer, method = %raw.method, "extension method");
                let mut response = raw.response(501, "Not Implemented");
                add_header(&mut response, allow());
                fix_response_via(&mut response, peer);
                self.send_stateless(peer, response);
            }
            Inspected::Response(response) => {
                let Some(message) = self.take_routed(peer, SipMessage::Response(response)) else {
                    return;
                };
                if let Err(e) = self.transactions.handle_message(now, peer, message) {
                    tracing::debug!(%peer, error = %e, "response not matched");
                }
            }
            Inspected::Request(mut request) => {
                if self.is_scanner(now, wall, peer, &request) {
                    return;
                }
                fix_request_via(&mut request, peer);
                let Some(message) = self.take_routed(peer, SipMessage::Request(request)) else {
                    return;
                };
                let SipMessage::Request(request) = message else {
                    return;
                };
                if self.is_callback(&request, peer) {
                    // Its retransmissions, CANCEL, ACK and BYE follow it
                    // (DESIGN.md "shard by Call-ID").
                    if let Ok(call_id) = request.call_id_header().map(|c| c.value().to_string()) {
                        tracing::debug!(%peer, %call_id, "INVITE to one of our caller IDs: a callback");
                        self.routed.insert(call_id.clone());
                        self.routed_out.push_back(Routed {
                            call_id,
                            peer,
                            message: SipMessage::Request(request),
                            new_call: true,
                        });
                    }
                    return;
                }
                if self.wants_stateless_challenge(&request, peer) {
                    // A challenge from no state: retransmissions get it
                    // again, an INVITE's ACK is a stray (RFC 3261 §8.2.7,
                    // §17.2.1: where losing the answer costs only a
                    // retransmission).
                    let r = self
                        .verifier
                        .challenge_response(now, &request, false, false);
                    self.send_stateless(peer, r);
                    return;
                }
                // Kept only when the table is full, for the 503.
                let spare = (self.transactions.len() >= self.cfg.max_transactions
                    && request.method != Method::Ack)
                    .then(|| request.clone());
                match self
                    .transactions
                    .handle_message(now, peer, SipMessage::Request(request))
                {
                    Ok(()) => {}
                    Err(TransactionError::TableFull) => {
                        if let Some(request) = spare {
                            tracing::warn!(%peer, transactions = self.transactions.len(), "transaction table full: 503");
                            crate::metrics::metrics().sip_table_full.inc();
                            let mut r = response_to(&request, 503, "");
                            add_header(
                                &mut r,
                                Header::RetryAfter(untyped::RetryAfter::new(
                                    FULL_RETRY_AFTER_S.to_string(),
                                )),
                            );
                            self.send_stateless(peer, r);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "request refused by the transaction layer");
                    }
                }
            }
        }
        self.pump(now, wall);
    }

    /// Counts a message against its source (`sip::flood`); false when it
    /// is to be dropped. Responses are not counted (they answer our own
    /// requests) but a banned address's are dropped too.
    fn admit(&mut self, now: Instant, wall: SystemTime, peer: Peer, is_response: bool) -> bool {
        let ip = peer.addr.ip();
        if is_response {
            return !self.sources.is_banned(ip, now);
        }
        let registrar = &self.registrar;
        match self
            .sources
            .admit(ip, now, wall, || registrar.agents_at(ip, wall))
        {
            Admit::Pass => true,
            Admit::Banned => {
                crate::metrics::metrics().sip_dropped_banned.inc();
                false
            }
            Admit::NewBan(reason) => {
                tracing::warn!(address = %ip, reason = reason.as_str(), ban_s = self.cfg.flood.ban.as_secs(), "too many SIP requests from this address: banned");
                crate::metrics::metrics()
                    .sip_bans
                    .get_or_create(&crate::metrics::BanLabel {
                        reason: reason.as_str().into(),
                    })
                    .inc();
                crate::metrics::metrics().sip_dropped_banned.inc();
                false
            }
        }
    }

    /// Whether `request` comes from a known scanner (by User-Agent); if so
    /// its address is banned and the request dropped.
    fn is_scanner(
        &mut self,
        now: Instant,
        wall: SystemTime,
        peer: Peer,
        request: &Request,
    ) -> bool {
        let Some(ua) = request.user_agent_header() else {
            return false;
        };
        if !self.sources.is_scanner(ua.value()) {
            return false;
        }
        let ip = peer.addr.ip();
        crate::metrics::metrics().sip_dropped_scanner.inc();
        if self
            .sources
            .ban(ip, crate::sip::flood::BanReason::Scanner, now, wall)
        {
            tracing::warn!(address = %ip, user_agent = %ua.value(), ban_s = self.cfg.flood.ban.as_secs(), "SIP scanner: banned");
            crate::metrics::metrics()
                .sip_bans
                .get_or_create(&crate::metrics::BanLabel {
                    reason: "scanner".into(),
                })
                .inc();
        }
        true
    }

    /// An out-of-dialog INVITE from a trunk whose Request-URI or To user
    /// is one of our caller IDs, and that passes the §8.2 checks.
    fn is_callback(&self, request: &Request, peer: Peer) -> bool {
        if request.method != Method::Invite
            || (self.cfg.callback_numbers.is_empty() && self.session_numbers.is_empty())
            || !self.cfg.trunk_sources.contains(&peer.addr.ip())
        {
            return false;
        }
        let to = request.to_header().ok().map(|t| t.value().to_string());
        if to
            .as_deref()
            .and_then(|t| NameAddr::parse(t).ok())
            .is_some_and(|na| na.tag().is_some())
        {
            return false;
        }
        let ruri = request.uri.to_string();
        let users = [
            crate::call::uri_user(&ruri),
            to.as_deref().and_then(crate::call::uri_user),
        ];
        let ours = users.into_iter().flatten().any(|u| {
            is_our_number(&self.cfg.callback_numbers, u) || is_our_number(&self.session_numbers, u)
        });
        if !ours {
            return false;
        }
        let domains: Vec<&str> = self.cfg.local_domains.iter().map(String::as_str).collect();
        check_request(request, &domains).is_none()
    }

    /// An out-of-dialog INVITE from anyone but a trunk, or a REGISTER,
    /// with no credentials: answered with a stateless challenge (RFC 3261
    /// §8.2.7 names challenges as what a stateless UAS is for). A
    /// registration's first REGISTER is always one of these; answering it
    /// without a transaction keeps the 401 from holding state for Timer J
    /// (32 s on UDP), half of what a registration cycle left behind (SPEC
    /// §6: REGISTER at Kamailio's CPU per cycle, whose `www_challenge`
    /// answers statelessly too). A retransmission is answered again with
    /// a fresh nonce, which the phone may use as well as the first.
    fn wants_stateless_challenge(&self, request: &Request, peer: Peer) -> bool {
        let challenged = match request.method {
            Method::Register => true,
            Method::Invite => !self.cfg.trunk_sources.contains(&peer.addr.ip()),
            _ => false,
        };
        if !challenged {
            return false;
        }
        let has_credentials = request
            .headers
            .iter()
            .any(|h| matches!(h, Header::Authorization(_) | Header::ProxyAuthorization(_)));
        if has_credentials {
            return false;
        }
        let to_tag = request
            .to_header()
            .ok()
            .and_then(|to| NameAddr::parse(to.value()).ok())
            .is_some_and(|na| na.tag().is_some());
        if to_tag {
            return false;
        }
        // A request the §8.2 checks refuse (415, 406, 420, 483, ...) gets
        // that answer, through a transaction, as before (RFC 4475 §3.3
        // verdicts): the challenge is for requests that are otherwise fine.
        let domains: Vec<&str> = self.cfg.local_domains.iter().map(String::as_str).collect();
        check_request(request, &domains).is_none()
    }

    /// The source bans in force (`sip::flood`).
    pub fn bans(&self, now: Instant) -> Vec<BanInfo> {
        self.sources.bans(now)
    }

    /// Usernames refused from an address after failed digest responses,
    /// with the time left (`sip::auth_limit`).
    pub fn account_lockouts(&self, now: Instant) -> Vec<(String, IpAddr, std::time::Duration)> {
        self.guesses.bans(now)
    }

    /// Lifts the ban on `ip` and every username lockout from it; whether
    /// there was any.
    pub fn unban(&mut self, ip: IpAddr, now: Instant) -> bool {
        let source = self.sources.unban(ip, now);
        let accounts = self.guesses.unlock_address(ip, now);
        source || accounts
    }

    /// How many source bans are in force (for `/metrics`).
    pub fn ban_count(&self, now: Instant) -> usize {
        self.sources.ban_count(now)
    }

    /// The timer from [`Self::poll_timeout`] fired: transaction timers
    /// (RFC 3261 §17) and registrar expiry (§10.3 step 7).
    pub fn handle_timeout(&mut self, now: Instant, wall: SystemTime) {
        self.anchor = Some((now, wall));
        // The gauge of bans in force, at most once a second: counting
        // them is a pass over the bans, and timers fire per transaction.
        if self
            .bans_gauge_at
            .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(1))
        {
            self.bans_gauge_at = Some(now);
            crate::metrics::metrics()
                .sip_banned_sources
                .set(i64::try_from(self.sources.ban_count(now)).unwrap_or(i64::MAX));
        }
        self.transactions.handle_timeout(now);
        self.pump(now, wall);
        self.expire_bindings(wall);
    }

    /// Sending to `peer` failed (RFC 3261 §17.1.4, §17.2.4).
    pub fn handle_transport_error(&mut self, now: Instant, peer: Peer) {
        self.transactions.handle_transport_error(now, peer);
        // A transport error creates no new request, so the wall clock is
        // never read by this pump; the last one seen is passed along.
        let wall = self.anchor.map_or(SystemTime::UNIX_EPOCH, |(_, w)| w);
        self.pump(now, wall);
    }

    /// The next message to send, in the order the cores produced them
    /// (DESIGN.md "Order and sharding").
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.drain_table_transmits();
        self.transmits.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// The next transaction event the endpoint did not consume itself
    /// (client transactions' responses and timeouts, server timeouts,
    /// stray responses): the call engine's (RFC 3261 §17 TU interface).
    pub fn poll_transaction_event(&mut self) -> Option<Event> {
        self.transaction_events.pop_front()
    }

    /// When to call [`Self::handle_timeout`]: the earliest of the
    /// transaction deadlines and the next binding expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self
            .registrar
            .next_expiry()
            .and_then(|at| match self.anchor {
                // A persisted expiry beyond what `Instant` holds never fires.
                Some((now, wall)) => match at.duration_since(wall) {
                    Ok(left) => now.checked_add(left),
                    Err(_) => Some(now),
                },
                // Bindings loaded before any input: fire at once to learn the
                // wall clock and drop the ones that lapsed while we were down.
                None => Some(self.created),
            });
        match (self.transactions.poll_timeout(), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The bindings of `aor` live at `wall`, best first: where the call
    /// engine INVITEs an agent (RFC 3261 §10.3).
    pub fn bindings(&self, aor: &str, wall: SystemTime) -> Vec<Binding> {
        self.registrar.live_bindings(aor, wall).cloned().collect()
    }

    /// How many bindings are live at `wall` (all agents).
    pub fn binding_count(&self, wall: SystemTime) -> usize {
        self.registrar.live_count(wall)
    }

    /// The transaction table, for the call engine to send requests and
    /// answer the INVITEs it takes over (RFC 3261 §17).
    pub fn transactions(&mut self) -> &mut TransactionTable {
        &mut self.transactions
    }

    /// The dialogs, for the call engine to add the ones it creates (RFC
    /// 3261 §12); in-dialog requests are matched against them.
    pub fn dialogs(&mut self) -> &mut DialogSet {
        &mut self.dialogs
    }

    /// The digest algorithms agents are challenged with, most preferred
    /// first (RFC 8760 §2.4; default SHA-256 then MD5). See
    /// [`DigestVerifier::set_algorithms`]: MD5-only phones such as baresip
    /// 1.0 (libre 1.x) refuse a 401 that offers SHA-256 at all, and SIPp 3.6
    /// answers only the first challenge.
    pub fn set_digest_algorithms(&mut self, algorithms: &[Algorithm]) {
        self.verifier.set_algorithms(algorithms);
    }

    /// Adds or replaces an agent's credentials from stored HA1 values
    /// (agents created through the API: their passwords are never kept).
    pub fn set_agent(&mut self, username: &str, ha1: crate::sip::digest::StoredHa1) {
        self.verifier.set_ha1(username, ha1);
    }

    /// Removes an agent: its phones' next requests are challenged like an
    /// unknown user's.
    pub fn remove_agent(&mut self, username: &str) {
        self.verifier.remove_user(username);
    }

    /// A fresh RFC 3261 branch from the endpoint's seeded RNG (§8.1.1.7).
    pub fn new_branch(&mut self) -> String {
        new_branch(&mut self.rng)
    }

    fn drain_table_transmits(&mut self) {
        while let Some(t) = self.transactions.poll_transmit() {
            self.transmits.push_back(t);
        }
    }

    fn send_stateless(&mut self, peer: Peer, response: Response) {
        // Whatever the table queued first leaves first.
        self.drain_table_transmits();
        self.transmits.push_back(Transmit {
            peer,
            message: SipMessage::Response(response),
        });
    }

    /// Handles the table's events until none are left (answering requests
    /// creates no new ones, but a loop costs nothing).
    fn pump(&mut self, now: Instant, wall: SystemTime) {
        while let Some(event) = self.transactions.poll_event() {
            match event {
                Event::NewRequest { key, request, peer } => {
                    self.on_request(now, wall, key, request, peer)
                }
                Event::StrayAck { request, peer } => {
                    // The ACK of a 2xx: ours only once the call engine
                    // sends 2xx to INVITEs (§13.3.1.4).
                    tracing::debug!(%peer, call_id = ?request.call_id_header().map(|c| c.value().to_string()).ok(), "stray ACK ignored");
                }
                Event::StrayResponse { response, peer } => {
                    tracing::debug!(%peer, code = response.status_code.code(), "stray response ignored");
                    self.transaction_events
                        .push_back(Event::StrayResponse { response, peer });
                }
                other => self.transaction_events.push_back(other),
            }
        }
        self.drain_table_transmits();
    }

    fn expire_bindings(&mut self, wall: SystemTime) {
        let due = self.registrar.next_expiry().is_some_and(|at| at <= wall);
        if !due {
            return;
        }
        let mut by_aor: BTreeMap<String, Vec<Binding>> = BTreeMap::new();
        for b in self.registrar.expire(wall) {
            by_aor.entry(b.aor.clone()).or_default().push(b);
        }
        for (aor, removed) in by_aor {
            tracing::debug!(%aor, count = removed.len(), "bindings expired");
            let ticket = self.take_ticket();
            self.events.push_back(EndpointEvent::BindingsChanged {
                aor,
                upserted: Vec::new(),
                removed,
                ticket,
            });
        }
    }

    fn respond(&mut self, now: Instant, key: &ServerKey, response: Response) {
        if let Err(e) = self.transactions.respond(now, key, response) {
            tracing::debug!(error = %e, "response not sent");
        }
    }

    /// The TU (RFC 3261 §8.2): one answer per new server transaction.
    fn on_request(
        &mut self,
        now: Instant,
        wall: SystemTime,
        key: ServerKey,
        request: Request,
        peer: Peer,
    ) {
        let domains: Vec<&str> = self.cfg.local_domains.iter().map(String::as_str).collect();
        if let Some(response) = check_request(&request, &domains) {
            return self.respond(now, &key, response);
        }
        match request.method {
            Method::Cancel => return self.on_cancel(now, key, &request),
            Method::Register => return self.on_register(now, wall, key, &request, peer),
            _ => {}
        }
        match self.dialogs.classify(&request) {
            RequestMatch::OutOfDialog => {}
            RequestMatch::NoDialog => {
                // §12.2.2: a To tag we do not know.
                let r = response_to(&request, 481, "");
                return self.respond(now, &key, r);
            }
            RequestMatch::Dialog(dialog) => {
                let response = match dialog.handle_request(&request) {
                    Err(e) => response_to(&request, e.status().code(), ""),
                    Ok(()) => match request.method {
                        Method::Bye | Method::Options | Method::Info => {
                            response_to(&request, 200, "")
                        }
                        // CALL ENGINE: re-INVITE and UPDATE (session
                        // changes) become the call engine's; until then
                        // the session stays as it is (RFC 3261 §14.2).
                        Method::Invite | Method::Update => with_warning(
                            response_to(&request, 488, ""),
                            "Session changes are not supported",
                        ),
                        _ => with_allow(response_to(&request, 405, "")),
                    },
                };
                if request.method == Method::Bye {
                    // The BYE ended the dialog (§15.1.2).
                    let id = dialog.id().clone();
                    self.dialogs.remove(&id);
                }
                return self.respond(now, &key, response);
            }
        }
        let response = match request.method {
            Method::Options => {
                let mut r = with_allow(response_to(&request, 200, ""));
                add_header(
                    &mut r,
                    Header::Accept(untyped::Accept::new("application/sdp")),
                );
                add_header(&mut r, Header::Supported(untyped::Supported::new("")));
                r
            }
            Method::Invite => self.on_invite(now, &request, peer),
            // §15.1.2: a BYE outside any dialog.
            Method::Bye => response_to(&request, 481, ""),
            // Methods of extensions powerdial does not serve (§8.2.1).
            _ => with_allow(response_to(&request, 405, "")),
        };
        self.respond(now, &key, response);
    }

    /// An out-of-dialog INVITE (SPEC §5: no call is originated for an
    /// unauthenticated party).
    fn on_invite(&mut self, now: Instant, request: &Request, peer: Peer) -> Response {
        let from_trunk = self.cfg.trunk_sources.contains(&peer.addr.ip());
        if !from_trunk {
            match self.authenticate(now, request, peer) {
                Ok(user) => {
                    tracing::debug!(%peer, %user, "INVITE from an agent");
                }
                Err(rejection) => return self.challenge(now, request, peer, &rejection),
            }
        }
        // CALL ENGINE: an agent's or a trunk's INVITE is answered here
        // until the call engine takes incoming calls over.
        with_warning(response_to(request, 403, ""), CALLS_BY_DIALER)
    }

    /// Digest verification (RFC 8760) with the guess limit: a wrong
    /// response counts against its (username, address); a refused pair
    /// gets the same rejection as a wrong password, right password or not.
    fn authenticate(
        &mut self,
        now: Instant,
        request: &Request,
        peer: Peer,
    ) -> Result<String, Rejection> {
        let ip = peer.addr.ip();
        match self.verifier.verify_request(now, request, false) {
            Ok(user) if self.guesses.is_banned(&user, ip, now) => {
                tracing::debug!(%peer, %user, "refused: too many failed attempts from this address");
                Err(Rejection::WrongCredentials)
            }
            Ok(user) => Ok(user),
            Err(Rejection::WrongCredentials) => {
                crate::metrics::metrics().sip_auth_failures.inc();
                let claimed = claimed_username(request).unwrap_or_default();
                if self.guesses.record_failure(&claimed, ip, now) {
                    crate::metrics::metrics().sip_auth_lockouts.inc();
                    tracing::warn!(%peer, user = %claimed, failures = auth_limit::MAX_FAILURES, ban_s = auth_limit::BAN.as_secs(), "too many failed authentications: this username is refused from this address");
                }
                Err(Rejection::WrongCredentials)
            }
            Err(other) => Err(other),
        }
    }

    fn challenge(
        &mut self,
        now: Instant,
        request: &Request,
        peer: Peer,
        rejection: &Rejection,
    ) -> Response {
        tracing::debug!(%peer, method = %request.method, reason = %rejection, "challenged");
        self.verifier
            .challenge_response(now, request, rejection.stale(), false)
    }

    /// CANCEL (RFC 3261 §9.2): 200 to the CANCEL and 487 to the INVITE it
    /// names; 200 alone when that INVITE already has its final response
    /// (the CANCEL then has no effect on it); 481 when it names no INVITE
    /// server transaction.
    fn on_cancel(&mut self, now: Instant, key: ServerKey, cancel: &Request) {
        let matched = match self.transactions.cancel_match(cancel) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "CANCEL unmatched");
                CancelMatch::Unmatched
            }
        };
        let invite = match matched {
            CancelMatch::Pending(invite) => invite,
            CancelMatch::Answered => {
                return self.respond(now, &key, response_to(cancel, 200, ""));
            }
            CancelMatch::Unmatched => {
                return self.respond(now, &key, response_to(cancel, 481, ""));
            }
        };
        self.respond(now, &key, response_to(cancel, 200, ""));
        // The CANCEL repeats the INVITE's top Via, From, To, Call-ID and
        // CSeq number (§9.1), so the 487 is built from it with the CSeq
        // method put back; the To tag is derived from Call-ID and branch,
        // the same as for every response of that INVITE.
        let mut terminated = response_to(cancel, 487, "");
        for h in terminated.headers.iter_mut() {
            if let Header::CSeq(c) = h {
                let number = c
                    .value()
                    .split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .to_string();
                *h = Header::CSeq(untyped::CSeq::new(format!("{number} INVITE")));
            }
        }
        self.respond(now, &invite, terminated);
    }

    /// REGISTER (RFC 3261 §10.3): domain, digest (RFC 8760), then the
    /// registrar.
    fn on_register(
        &mut self,
        now: Instant,
        wall: SystemTime,
        key: ServerKey,
        request: &Request,
        peer: Peer,
    ) {
        // Authentication first: a stranger learns nothing about which
        // domains we serve, and RFC 4475 `regaut01` gets its fresh 401.
        let user = match self.authenticate(now, request, peer) {
            Ok(user) => user,
            Err(rejection) => {
                let r = self.challenge(now, request, peer, &rejection);
                return self.respond(now, &key, r);
            }
        };
        if !self.is_ours(&request.uri.host().to_string()) {
            let r = with_warning(response_to(request, 403, ""), "Domain not served here");
            return self.respond(now, &key, r);
        }
        // The To is parsed once, here, for its domain and (in the
        // registrar) its user.
        let to = match RegisterTo::of(request) {
            Ok(to) => to,
            Err(e) => {
                tracing::debug!(%user, %peer, error = %e, "REGISTER refused");
                let r = e.response(request);
                return self.respond(now, &key, r);
            }
        };
        if !self.is_ours(&to.host()) {
            let r = with_warning(response_to(request, 404, ""), "Unknown domain");
            return self.respond(now, &key, r);
        }
        match self
            .registrar
            .handle_register_to(wall, request, &to, peer, &user)
        {
            Ok(outcome) => {
                let mut upserted = outcome.added;
                upserted.extend(outcome.refreshed);
                if !upserted.is_empty() || !outcome.removed.is_empty() {
                    tracing::debug!(%user, %peer, upserted = upserted.len(), removed = outcome.removed.len(), "bindings changed");
                    let ticket = self.take_ticket();
                    self.events.push_back(EndpointEvent::BindingsChanged {
                        aor: user,
                        upserted,
                        removed: outcome.removed,
                        ticket,
                    });
                    if self.ack_after_persist {
                        // The transaction absorbs the phone's
                        // retransmissions meanwhile (RFC 3261 §17.2.2).
                        self.held.insert(ticket, (key, outcome.response));
                        return;
                    }
                }
                self.respond(now, &key, outcome.response);
            }
            Err(e) => {
                tracing::debug!(%user, %peer, error = %e, "REGISTER refused");
                let r = e.response(request);
                self.respond(now, &key, r);
            }
        }
    }

    /// Whether `host` (as printed: an IPv6 host may carry brackets) is one
    /// of [`EndpointConfig::local_domains`], case-insensitively (§19.1.4).
    fn is_ours(&self, host: &str) -> bool {
        // Compared in place: every REGISTER asks twice, once per domain.
        fn bare(h: &str) -> &str {
            h.trim_start_matches('[').trim_end_matches(']')
        }
        let host = bare(host);
        self.cfg
            .local_domains
            .iter()
            .any(|d| bare(d).eq_ignore_ascii_case(host))
    }
}

/// Whether a URI user names one of `numbers` (E.164): the same digits, or
/// the national form carriers often send (the trailing 8 or more digits).
fn is_our_number(numbers: &[String], user: &str) -> bool {
    let digits: String = user.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 3 || user.chars().any(|c| c.is_ascii_alphabetic()) {
        return false;
    }
    numbers.iter().any(|n| {
        let ours: String = n.chars().filter(char::is_ascii_digit).collect();
        ours == digits || (digits.len() >= 8 && ours.ends_with(&digits))
    })
}

fn allow() -> Header {
    Header::Allow(untyped::Allow::new(ALLOW))
}

fn with_allow(mut r: Response) -> Response {
    add_header(&mut r, allow());
    r
}

/// The reason for a refusal as `Warning: 399 powerdial "…"` (RFC 3261
/// §20.43): the status line keeps its standard phrase.
fn with_warning(mut r: Response, text: &str) -> Response {
    add_header(
        &mut r,
        Header::Warning(untyped::Warning::new(format!(
            "399 {WARN_AGENT} \"{text}\""
        ))),
    );
    r
}

/// Adds `h` before `Content-Length`, which [`response_to`] puts last.
fn add_header(r: &mut Response, h: Header) {
    let at = r
        .headers
        .iter()
        .position(|x| matches!(x, Header::ContentLength(_)))
        .unwrap_or(r.headers.len());
    r.headers.0.insert(at, h);
}

/// RFC 3261 §18.2.1 and RFC 3581 §4 on the request's top Via.
fn fix_request_via(request: &mut Request, peer: Peer) {
    if let Some(Header::Via(via)) = request
        .headers
        .iter_mut()
        .find(|h| matches!(h, Header::Via(_)))
    {
        if let Some(fixed) = fixed_top_via(via.value(), peer) {
            *via = untyped::Via::new(fixed);
        }
    }
}

/// The same on a response built statelessly from a request's Vias.
fn fix_response_via(response: &mut Response, peer: Peer) {
    if let Some(Header::Via(via)) = response
        .headers
        .iter_mut()
        .find(|h| matches!(h, Header::Via(_)))
    {
        if let Some(fixed) = fixed_top_via(via.value(), peer) {
            *via = untyped::Via::new(fixed);
        }
    }
}

/// The Via header value with its first via-parm fixed, or `None` when
/// nothing changes: `received=<source IP>` when the sent-by host differs
/// from the source IP (RFC 3261 §18.2.1) or when `rport` is present
/// (RFC 3581 §4: then always), and a valueless `rport` filled with the
/// source port.
fn fixed_top_via(value: &str, peer: Peer) -> Option<String> {
    let end = top_level_comma(value).unwrap_or(value.len());
    let (first, rest) = value.split_at(end);
    // Slices of `first`, so the value is copied once, into the result.
    let mut parts = split_params(first);
    let sent = parts.first()?.trim();
    // "SIP/2.0/UDP host:port": the sent-by follows the protocol.
    let sent_by = sent.split_whitespace().nth(1)?;
    let host = sent_by_host(sent_by);
    let ip = peer.addr.ip();
    let host_is_source = host.parse::<IpAddr>().is_ok_and(|h| h == ip);
    let mut rport_index = None;
    let mut received_index = None;
    for (i, p) in parts.iter().enumerate().skip(1) {
        let name = p.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("rport") {
            rport_index = Some((i, p.contains('=')));
        } else if name.eq_ignore_ascii_case("received") {
            received_index = Some(i);
        }
    }
    let wants_rport = matches!(rport_index, Some((_, false)));
    if host_is_source && !wants_rport {
        return None;
    }
    if received_index.is_none() {
        parts.push("");
    }
    let received_at = received_index.unwrap_or(parts.len() - 1);
    let mut out = String::with_capacity(value.len() + 48);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        if i == received_at {
            out.push_str("received=");
            push_ip(&mut out, ip);
        } else if rport_index == Some((i, false)) {
            out.push_str("rport=");
            push_decimal(&mut out, u32::from(peer.addr.port()));
        } else {
            out.push_str(p);
        }
    }
    out.push_str(rest);
    Some(out)
}

/// An address as `received` carries it (RFC 3261 §18.2.1: no brackets):
/// IPv4 written digit by digit, the formatter's padding machinery being
/// most of the cost of a Via fix.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, u32::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_decimal(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        out.push(char::from(*d));
    }
}

/// The host of a sent-by (`host`, `host:port`, `[v6]`, `[v6]:port`).
fn sent_by_host(sent_by: &str) -> &str {
    if let Some(inner) = sent_by.strip_prefix('[') {
        return inner.split(']').next().unwrap_or(inner);
    }
    sent_by.split(':').next().unwrap_or(sent_by)
}

/// The byte index of the first comma outside quotes and brackets.
fn top_level_comma(value: &str) -> Option<usize> {
    let (mut quoted, mut bracket) = (false, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => bracket = true,
            ']' if !quoted => bracket = false,
            ',' if !quoted && !bracket => return Some(i),
            _ => {}
        }
    }
    None
}

/// A via-parm split at `;` outside quotes.
fn split_params(via_parm: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(6);
    let mut start = 0;
    let mut quoted = false;
    for (i, b) in via_parm.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                out.push(&via_parm[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&via_parm[start..]);
    out
}

/// The username a request's digest credentials claim (RFC 3261 §22.4),
/// whether or not it exists: unknown users are counted like known ones.
fn claimed_username(request: &Request) -> Option<String> {
    request.headers.iter().find_map(|h| match h {
        Header::Authorization(a) => crate::sip::digest::Credentials::parse(a.value())
            .ok()
            .map(|c| c.username),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::sip::digest::DigestClient;
    use crate::sip::transaction::test_epoch;
    use crate::sip::TransportKind;

    const PHONE: &str = "203.0.113.7:40000";
    const TRUNK: &str = "198.51.100.9:5060";

    fn udp(addr: &str) -> Peer {
        Peer {
            transport: TransportKind::Udp,
            addr: addr.parse::<SocketAddr>().expect("test address"),
        }
    }

    fn wall0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// A simulated clock: monotonic and wall time advance together.
    struct Clock {
        now: Instant,
        wall: SystemTime,
    }

    impl Clock {
        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.wall += d;
        }
    }

    /// An endpoint without the per-source limit: these tests send many
    /// requests from one address at one instant (the limit's own tests
    /// use [`setup_with`] and the defaults).
    fn setup() -> (Endpoint, Clock) {
        setup_with(
            FloodConfig {
                requests: 0,
                ..FloodConfig::default()
            },
            500_000,
        )
    }

    fn setup_with(flood: FloodConfig, max_transactions: usize) -> (Endpoint, Clock) {
        let clock = Clock {
            now: test_epoch(),
            wall: wall0(),
        };
        let cfg = EndpointConfig {
            domain: "127.0.0.1".into(),
            local_domains: vec![
                "127.0.0.1".into(),
                "127.0.0.1:5060".into(),
                "localhost".into(),
            ],
            timers: TimerConfig::default(),
            max_message_size: message::DEFAULT_MAX_MESSAGE_SIZE,
            trunk_sources: vec![TRUNK.parse::<SocketAddr>().expect("trunk").ip()],
            flood,
            max_transactions,
            callback_numbers: vec!["+15550000000".into()],
        };
        let agents = vec![AgentConfig {
            username: "alice".into(),
            password: "alice-secret".into(),
            display_name: None,
        }];
        let ep = Endpoint::new(cfg, &agents, [7; 32], [9; 32], clock.now);
        (ep, clock)
    }

    /// Feeds `text` from `peer` and returns every transmit, checking each
    /// goes back to `peer`.
    fn feed(ep: &mut Endpoint, clock: &Clock, peer: Peer, text: &str) -> Vec<Response> {
        ep.handle_datagram(clock.now, clock.wall, peer, text.as_bytes());
        drain(ep, peer)
    }

    fn drain(ep: &mut Endpoint, peer: Peer) -> Vec<Response> {
        let mut out = Vec::new();
        while let Some(t) = ep.poll_transmit() {
            assert_eq!(t.peer, peer, "responses go back to the source address");
            match t.message {
                SipMessage::Response(r) => out.push(r),
                SipMessage::Request(r) => panic!("the endpoint originated a request: {r}"),
            }
        }
        out
    }

    fn codes(rs: &[Response]) -> Vec<u16> {
        rs.iter().map(|r| r.status_code.code()).collect()
    }

    fn values<'a>(r: &'a Response, name: &str) -> Vec<&'a str> {
        r.headers
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| h.value())
            .collect()
    }

    fn last(rs: Vec<Response>) -> Response {
        rs.into_iter().last().expect("a response")
    }

    fn register(n: u32, user: &str, extra: &str) -> String {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-reg{n};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:{user}@127.0.0.1>;tag=f{user}\r\n\
To: <sip:{user}@127.0.0.1>\r\n\
Call-ID: reg-{user}@192.0.2.10\r\n\
CSeq: {n} REGISTER\r\n\
Contact: <sip:{user}@192.0.2.10:5062>\r\n\
{extra}Content-Length: 0\r\n\r\n"
        )
    }

    fn authorization(header: &Header) -> String {
        format!("Authorization: {}\r\n", header.value())
    }

    /// Answers the strongest challenge of `challenge` with `client`.
    fn answer(client: &mut DigestClient, challenge: &Response, cnonce: &str) -> String {
        let h = client
            .answer(challenge, "REGISTER", "sip:127.0.0.1", cnonce)
            .expect("answerable challenge");
        authorization(&h)
    }

    fn bindings_changed(ep: &mut Endpoint) -> Vec<(String, usize, usize)> {
        let mut out = Vec::new();
        while let Some(EndpointEvent::BindingsChanged {
            aor,
            upserted,
            removed,
            ..
        }) = ep.poll_event()
        {
            out.push((aor, upserted.len(), removed.len()));
        }
        out
    }

    #[test]
    fn a_register_is_acknowledged_once_its_binding_is_stored() {
        let (mut ep, clock) = setup();
        ep.set_ack_after_persist(true);
        let phone = udp(PHONE);
        let rs = feed(
            &mut ep,
            &clock,
            phone,
            &register(1, "alice", "Expires: 60\r\n"),
        );
        assert_eq!(codes(&rs), [401]);
        let mut client = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut client, &rs[0], "c1");
        let text = register(2, "alice", &format!("Expires: 60\r\n{auth}"));
        // The binding changed: no 200 OK until the driver says it is stored.
        assert!(feed(&mut ep, &clock, phone, &text).is_empty());
        assert_eq!(ep.held_acks(), 1);
        let ticket = match ep.poll_event() {
            Some(EndpointEvent::BindingsChanged { ticket, .. }) => ticket,
            other => panic!("expected a binding change, got {other:?}"),
        };
        // A retransmission meanwhile is absorbed by the transaction.
        assert!(feed(&mut ep, &clock, phone, &text).is_empty());
        // An older ticket stored releases nothing.
        ep.bindings_persisted(clock.now, ticket - 1);
        assert!(drain(&mut ep, phone).is_empty());
        ep.bindings_persisted(clock.now, ticket);
        assert_eq!(codes(&drain(&mut ep, phone)), [200]);
        assert_eq!(ep.held_acks(), 0);
    }

    #[test]
    fn a_register_without_credentials_is_challenged_without_a_transaction() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        let text = register(1, "alice", "Expires: 60\r\n");
        let first = feed(&mut ep, &clock, phone, &text);
        assert_eq!(codes(&first), [401]);
        assert_eq!(ep.transactions().len(), 0, "the 401 leaves no state");
        // A retransmission is challenged again, with a nonce of its own;
        // either challenge authenticates the next REGISTER.
        let again = feed(&mut ep, &clock, phone, &text);
        assert_eq!(codes(&again), [401]);
        let nonce = |r: &Response| {
            values(r, "WWW-Authenticate")
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_ne!(nonce(&first[0]), nonce(&again[0]));
        let mut client = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut client, &first[0], "c1");
        let ok = feed(
            &mut ep,
            &clock,
            phone,
            &register(2, "alice", &format!("Expires: 60\r\n{auth}")),
        );
        assert_eq!(codes(&ok), [200]);
        // The REGISTER with credentials has its transaction (Timer J
        // absorbs its retransmissions, RFC 3261 §17.2.2).
        assert_eq!(ep.transactions().len(), 1);
        // A request the §8.2 checks refuse still gets that answer.
        let refused = feed(
            &mut ep,
            &clock,
            phone,
            &register(3, "alice", "Require: no-such-extension\r\n"),
        );
        assert_eq!(codes(&refused), [420]);
    }

    #[test]
    fn options_gets_200_with_allow_accept_supported() {
        let (mut ep, clock) = setup();
        let rs = feed(
            &mut ep,
            &clock,
            udp(PHONE),
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:40000;branch=z9hG4bK-opt1\r\n\
Max-Forwards: 70\r\n\
From: <sip:ping@203.0.113.7>;tag=p1\r\n\
To: <sip:127.0.0.1>\r\n\
Call-ID: opt-1\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n",
        );
        assert_eq!(codes(&rs), [200]);
        let r = &rs[0];
        assert_eq!(values(r, "Allow"), [ALLOW]);
        assert_eq!(values(r, "Accept"), ["application/sdp"]);
        assert_eq!(values(r, "Supported").len(), 1);
        assert!(values(r, "To")[0].contains(";tag="), "To tag on a 200");
        // The sent-by is the source: neither received nor rport is added.
        assert_eq!(
            values(r, "Via"),
            ["SIP/2.0/UDP 203.0.113.7:40000;branch=z9hG4bK-opt1"]
        );
        let text = r.to_string();
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"));
        assert!(text.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER\r\n"));
    }

    #[test]
    fn register_sha256_challenge_then_200_and_bindings_changed() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        let challenge = last(feed(&mut ep, &clock, phone, &register(1, "alice", "")));
        assert_eq!(challenge.status_code.code(), 401);
        let www = values(&challenge, "WWW-Authenticate");
        assert_eq!(www.len(), 2, "SHA-256 and MD5 challenges");
        assert!(
            www[0].contains("algorithm=SHA-256"),
            "SHA-256 first: {}",
            www[0]
        );
        assert!(www[1].contains("algorithm=MD5"), "MD5 second: {}", www[1]);
        assert!(www
            .iter()
            .all(|w| w.contains("qop=\"auth\"") && w.contains("realm=\"127.0.0.1\"")));
        assert!(ep.poll_event().is_none(), "nothing registered yet");

        let mut client = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut client, &challenge, "c1");
        assert!(auth.contains("algorithm=SHA-256"));
        let ok = last(feed(&mut ep, &clock, phone, &register(2, "alice", &auth)));
        assert_eq!(ok.status_code.code(), 200);
        let contacts = values(&ok, "Contact");
        assert_eq!(contacts.len(), 1);
        assert!(contacts[0].starts_with("<sip:alice@192.0.2.10:5062>;expires=3600"));
        assert_eq!(bindings_changed(&mut ep), [("alice".to_string(), 1, 0)]);
        let live = ep.bindings("alice", clock.wall);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].source, phone.addr, "the NAT's public side is kept");
        assert!(live[0].rport);
    }

    #[test]
    fn register_with_md5_credentials() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        let challenge = last(feed(&mut ep, &clock, phone, &register(1, "alice", "")));
        let md5 = values(&challenge, "WWW-Authenticate")
            .into_iter()
            .find(|w| w.contains("MD5"))
            .expect("an MD5 challenge");
        let chosen = DigestClient::pick([md5]).expect("parses");
        let mut client = DigestClient::new("alice", "alice-secret");
        let creds = client.authorize(&chosen, "REGISTER", "sip:127.0.0.1", "c-md5");
        let auth = format!("Authorization: {creds}\r\n");
        assert!(auth.contains("algorithm=MD5"));
        let ok = last(feed(&mut ep, &clock, phone, &register(2, "alice", &auth)));
        assert_eq!(ok.status_code.code(), 200);
        assert_eq!(bindings_changed(&mut ep), [("alice".to_string(), 1, 0)]);
    }

    /// The header names in order and the status: what a prober can compare.
    fn shape(r: &Response) -> (u16, Vec<String>, Vec<String>) {
        let names = r.headers.iter().map(|h| h.name().to_string()).collect();
        let challenges = values(r, "WWW-Authenticate")
            .iter()
            .map(|w| {
                w.split(',')
                    .filter(|p| !p.trim_start().starts_with("nonce="))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        (r.status_code.code(), names, challenges)
    }

    #[test]
    fn md5_only_deployments_challenge_with_md5_alone() {
        let (mut ep, clock) = setup();
        ep.set_digest_algorithms(&[Algorithm::Md5]);
        let phone = udp(PHONE);
        let challenge = last(feed(&mut ep, &clock, phone, &register(1, "alice", "")));
        let www = values(&challenge, "WWW-Authenticate");
        assert_eq!(www.len(), 1);
        assert!(www[0].contains("algorithm=MD5"));
        let mut client = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut client, &challenge, "c1");
        let ok = last(feed(&mut ep, &clock, phone, &register(2, "alice", &auth)));
        assert_eq!(ok.status_code.code(), 200);

        // SHA-256 only: MD5 credentials are a downgrade and refused.
        let (mut ep, clock) = setup();
        let md5_challenge = challenge;
        ep.set_digest_algorithms(&[Algorithm::Sha256]);
        let challenge = last(feed(&mut ep, &clock, phone, &register(1, "alice", "")));
        assert_eq!(values(&challenge, "WWW-Authenticate").len(), 1);
        let nonce_of = |r: &Response| {
            values(r, "WWW-Authenticate")[0]
                .split("nonce=\"")
                .nth(1)
                .and_then(|v| v.split('"').next())
                .map(str::to_string)
                .expect("nonce")
        };
        let md5 = md5_challenge_with_nonce(&md5_challenge, &nonce_of(&challenge));
        let mut client = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut client, &md5, "c2");
        assert!(auth.contains("algorithm=MD5"));
        let refused = last(feed(&mut ep, &clock, phone, &register(2, "alice", &auth)));
        assert_eq!(refused.status_code.code(), 401);
    }

    /// `template` (an MD5 401) with its nonce replaced by `nonce`.
    fn md5_challenge_with_nonce(template: &Response, nonce: &str) -> Response {
        let mut r = template.clone();
        for h in r.headers.iter_mut() {
            if let Header::WwwAuthenticate(w) = h {
                let v = w.value().to_string();
                let old = v
                    .split("nonce=\"")
                    .nth(1)
                    .and_then(|x| x.split('"').next())
                    .unwrap_or("")
                    .to_string();
                *h = Header::WwwAuthenticate(untyped::WwwAuthenticate::new(v.replace(&old, nonce)));
            }
        }
        r
    }

    #[test]
    fn wrong_password_and_unknown_user_get_the_same_401() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        let challenge = last(feed(&mut ep, &clock, phone, &register(1, "alice", "")));

        let mut wrong = DigestClient::new("alice", "not-her-password");
        let auth = answer(&mut wrong, &challenge, "c1");
        let again = last(feed(&mut ep, &clock, phone, &register(2, "alice", &auth)));
        assert_eq!(
            again.status_code.code(),
            401,
            "wrong password: 401 again, never 200"
        );
        assert!(values(&again, "WWW-Authenticate")
            .iter()
            .all(|w| !w.contains("stale")));

        let mallory_challenge = last(feed(&mut ep, &clock, phone, &register(1, "mallory", "")));
        let mut mallory = DigestClient::new("mallory", "whatever");
        let auth = answer(&mut mallory, &mallory_challenge, "c2");
        let unknown = last(feed(&mut ep, &clock, phone, &register(2, "mallory", &auth)));
        assert_eq!(shape(&unknown), shape(&again), "no user enumeration");
        assert!(bindings_changed(&mut ep).is_empty());
        assert!(ep.bindings("alice", clock.wall).is_empty());
    }

    /// Password guessing (SPEC §5): five wrong responses for one username
    /// from one address, and that username is refused from there even with
    /// the right password, with the same 401 as a wrong guess; the same
    /// user from another address still registers.
    #[test]
    fn guessing_locks_the_username_out_of_that_address() {
        let (mut ep, clock) = setup();
        let guesser = udp(PHONE);
        for i in 0..5u32 {
            let challenge = last(feed(
                &mut ep,
                &clock,
                guesser,
                &register(10 * i + 1, "alice", ""),
            ));
            let mut wrong = DigestClient::new("alice", format!("guess-{i}"));
            let auth = answer(&mut wrong, &challenge, &format!("g{i}"));
            let r = last(feed(
                &mut ep,
                &clock,
                guesser,
                &register(10 * i + 2, "alice", &auth),
            ));
            assert_eq!(r.status_code.code(), 401);
        }
        let challenge = last(feed(&mut ep, &clock, guesser, &register(61, "alice", "")));
        let mut right = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut right, &challenge, "r1");
        let locked = last(feed(
            &mut ep,
            &clock,
            guesser,
            &register(62, "alice", &auth),
        ));
        assert_eq!(
            locked.status_code.code(),
            401,
            "the right password is refused too"
        );
        assert!(bindings_changed(&mut ep).is_empty());

        let office = udp("198.51.100.20:5060");
        let challenge = last(feed(&mut ep, &clock, office, &register(71, "alice", "")));
        let mut right = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut right, &challenge, "r2");
        let ok = last(feed(&mut ep, &clock, office, &register(72, "alice", &auth)));
        assert_eq!(ok.status_code.code(), 200, "another address is not locked");
    }

    #[test]
    fn replayed_nonce_count_is_challenged_again() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        let challenge = last(feed(&mut ep, &clock, phone, &register(1, "alice", "")));
        let mut client = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut client, &challenge, "c1");
        let ok = last(feed(&mut ep, &clock, phone, &register(2, "alice", &auth)));
        assert_eq!(ok.status_code.code(), 200);
        // The same Authorization (same nc) on a new transaction: a replay.
        let replay = last(feed(&mut ep, &clock, phone, &register(3, "alice", &auth)));
        assert_eq!(replay.status_code.code(), 401);
        assert!(values(&replay, "WWW-Authenticate")
            .iter()
            .all(|w| w.contains("stale=true")));
        // The next nc on the same nonce is accepted.
        let next = answer(&mut client, &challenge, "c1");
        let ok = last(feed(&mut ep, &clock, phone, &register(4, "alice", &next)));
        assert_eq!(ok.status_code.code(), 200);
    }

    #[test]
    fn expired_nonce_gets_stale_true() {
        let (mut ep, mut clock) = setup();
        let phone = udp(PHONE);
        let challenge = last(feed(&mut ep, &clock, phone, &register(1, "alice", "")));
        clock.advance(Duration::from_secs(301));
        let mut client = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut client, &challenge, "c1");
        let stale = last(feed(&mut ep, &clock, phone, &register(2, "alice", &auth)));
        assert_eq!(stale.status_code.code(), 401);
        let www = values(&stale, "WWW-Authenticate");
        assert_eq!(www.len(), 2);
        assert!(www.iter().all(|w| w.contains("stale=true")));
        // The fresh nonce works without asking the user again.
        let auth = answer(&mut client, &stale, "c2");
        let ok = last(feed(&mut ep, &clock, phone, &register(3, "alice", &auth)));
        assert_eq!(ok.status_code.code(), 200);
    }

    /// Registers alice with `extra` headers; returns the client for more.
    fn registered(ep: &mut Endpoint, clock: &Clock, extra: &str) -> DigestClient {
        let phone = udp(PHONE);
        let challenge = last(feed(ep, clock, phone, &register(1, "alice", extra)));
        let mut client = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut client, &challenge, "c1");
        let ok = last(feed(
            ep,
            clock,
            phone,
            &register(2, "alice", &format!("{extra}{auth}")),
        ));
        assert_eq!(ok.status_code.code(), 200);
        assert_eq!(bindings_changed(ep), [("alice".to_string(), 1, 0)]);
        client
    }

    #[test]
    fn unregister_with_star() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        registered(&mut ep, &clock, "");
        let unregister = |n: u32, auth: &str| {
            format!(
                "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-unreg{n};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=falice\r\n\
To: <sip:alice@127.0.0.1>\r\n\
Call-ID: reg-alice@192.0.2.10\r\n\
CSeq: {n} REGISTER\r\n\
Contact: *\r\n\
Expires: 0\r\n\
{auth}Content-Length: 0\r\n\r\n"
            )
        };
        let challenge = last(feed(&mut ep, &clock, phone, &unregister(3, "")));
        assert_eq!(
            challenge.status_code.code(),
            401,
            "unregistering needs auth too"
        );
        assert_eq!(ep.bindings("alice", clock.wall).len(), 1);
        let mut client = DigestClient::new("alice", "alice-secret");
        let auth = answer(&mut client, &challenge, "c9");
        let ok = last(feed(&mut ep, &clock, phone, &unregister(4, &auth)));
        assert_eq!(ok.status_code.code(), 200);
        assert!(values(&ok, "Contact").is_empty());
        assert_eq!(bindings_changed(&mut ep), [("alice".to_string(), 0, 1)]);
        assert!(ep.bindings("alice", clock.wall).is_empty());
    }

    #[test]
    fn bindings_expire_through_handle_timeout() {
        let (mut ep, mut clock) = setup();
        let start = clock.now;
        registered(&mut ep, &clock, "Expires: 60\r\n");
        // Let the REGISTER transactions finish (Timer J, 32 s on UDP).
        while let Some(at) = ep.poll_timeout() {
            if at >= start + Duration::from_secs(60) {
                break;
            }
            let d = at.saturating_duration_since(clock.now);
            clock.advance(d);
            ep.handle_timeout(clock.now, clock.wall);
            assert!(ep.poll_event().is_none(), "nothing expires early");
        }
        assert!(ep.transactions().is_empty());
        let at = ep
            .poll_timeout()
            .expect("the binding's expiry is a deadline");
        assert_eq!(at, start + Duration::from_secs(60));
        clock.advance(at - clock.now);
        ep.handle_timeout(clock.now, clock.wall);
        assert_eq!(bindings_changed(&mut ep), [("alice".to_string(), 0, 1)]);
        assert!(ep.bindings("alice", clock.wall).is_empty());
        assert_eq!(ep.poll_timeout(), None);
    }

    #[test]
    fn loaded_bindings_expire_without_any_traffic() {
        let (mut ep, mut clock) = setup();
        let b = Binding {
            aor: "alice".into(),
            contact: "sip:alice@192.0.2.10:5062".into(),
            expires_at: clock.wall + Duration::from_secs(10),
            call_id: "c".into(),
            cseq: 1,
            q: None,
            transport: TransportKind::Udp,
            source: PHONE.parse().expect("addr"),
            rport: true,
        };
        ep.load_bindings(vec![b]);
        // No wall clock known yet: fire at once to learn it.
        assert_eq!(ep.poll_timeout(), Some(clock.now));
        ep.handle_timeout(clock.now, clock.wall);
        assert!(ep.poll_event().is_none());
        assert_eq!(ep.poll_timeout(), Some(clock.now + Duration::from_secs(10)));
        clock.advance(Duration::from_secs(10));
        ep.handle_timeout(clock.now, clock.wall);
        assert_eq!(bindings_changed(&mut ep), [("alice".to_string(), 0, 1)]);
    }

    fn cancel_text() -> String {
        "CANCEL sip:bob@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:40000;branch=z9hG4bK-inv1\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=a1\r\n\
To: <sip:bob@127.0.0.1>\r\n\
Call-ID: inv-1\r\n\
CSeq: 1 CANCEL\r\n\
Content-Length: 0\r\n\r\n"
            .to_string()
    }

    fn invite_text(from_host: &str, auth: &str) -> String {
        format!(
            "INVITE sip:bob@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP {from_host};branch=z9hG4bK-inv1\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=a1\r\n\
To: <sip:bob@127.0.0.1>\r\n\
Call-ID: inv-1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@{from_host}>\r\n\
{auth}Content-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn cancel_without_transaction_gets_481() {
        let (mut ep, clock) = setup();
        let rs = feed(&mut ep, &clock, udp(PHONE), &cancel_text());
        assert_eq!(codes(&rs), [481]);
    }

    #[test]
    fn cancel_of_a_pending_invite_gets_200_and_the_invite_487() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        // An INVITE the call engine would hold: put straight into the
        // table and taken off its event queue before the endpoint sees it.
        let invite = match message::inspect(
            invite_text("203.0.113.7:40000", "").as_bytes(),
            TransportKind::Udp,
            message::DEFAULT_MAX_MESSAGE_SIZE,
        ) {
            Inspected::Request(r) => r,
            other => panic!("valid INVITE: {other:?}"),
        };
        ep.transactions()
            .handle_message(clock.now, phone, SipMessage::Request(invite))
            .expect("accepted");
        assert!(matches!(
            ep.transactions().poll_event(),
            Some(Event::NewRequest { .. })
        ));
        assert_eq!(codes(&drain(&mut ep, phone)), [100]);

        let rs = feed(&mut ep, &clock, phone, &cancel_text());
        assert_eq!(codes(&rs), [200, 487]);
        assert_eq!(values(&rs[0], "CSeq"), ["1 CANCEL"]);
        assert_eq!(values(&rs[1], "CSeq"), ["1 INVITE"]);
        // Same To tag on both: derived from Call-ID and branch.
        assert_eq!(values(&rs[0], "To"), values(&rs[1], "To"));
        // A CANCEL of another INVITE finds nothing.
        let rs = feed(
            &mut ep,
            &clock,
            phone,
            &cancel_text().replace("inv1", "inv1x"),
        );
        assert_eq!(codes(&rs), [481]);
    }

    /// RFC 3261 §9.2: a CANCEL that matches an INVITE already answered
    /// finally gets 200 and changes nothing: no 487, and the INVITE's
    /// transaction still retransmits its final response, not a 487.
    #[test]
    fn cancel_after_the_final_response_gets_200_and_no_effect() {
        let (mut ep, mut clock) = setup();
        let phone = udp(PHONE);
        let invite = match message::inspect(
            invite_text("203.0.113.7:40000", "").as_bytes(),
            TransportKind::Udp,
            message::DEFAULT_MAX_MESSAGE_SIZE,
        ) {
            Inspected::Request(r) => r,
            other => panic!("valid INVITE: {other:?}"),
        };
        ep.transactions()
            .handle_message(clock.now, phone, SipMessage::Request(invite.clone()))
            .expect("accepted");
        let key = match ep.transactions().poll_event() {
            Some(Event::NewRequest { key, .. }) => key,
            other => panic!("new INVITE: {other:?}"),
        };
        assert_eq!(codes(&drain(&mut ep, phone)), [100]);
        // The TU answers 486 (Completed, awaiting the ACK).
        ep.transactions()
            .respond(clock.now, &key, response_to(&invite, 486, ""))
            .expect("486 sent");
        assert_eq!(codes(&drain(&mut ep, phone)), [486]);

        clock.advance(Duration::from_millis(100));
        let rs = feed(&mut ep, &clock, phone, &cancel_text());
        assert_eq!(codes(&rs), [200], "CANCEL after the final response");
        assert_eq!(values(&rs[0], "CSeq"), ["1 CANCEL"]);

        // The INVITE's final response is unchanged: Timer G resends 486.
        clock.advance(Duration::from_millis(500));
        ep.handle_timeout(clock.now, clock.wall);
        assert_eq!(codes(&drain(&mut ep, phone)), [486]);
    }

    #[test]
    fn bye_for_an_unknown_dialog_gets_481() {
        let (mut ep, clock) = setup();
        let rs = feed(
            &mut ep,
            &clock,
            udp(PHONE),
            "BYE sip:bob@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:40000;branch=z9hG4bK-bye1\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=a1\r\n\
To: <sip:bob@127.0.0.1>;tag=nosuch\r\n\
Call-ID: gone-1\r\n\
CSeq: 2 BYE\r\n\
Content-Length: 0\r\n\r\n",
        );
        assert_eq!(codes(&rs), [481]);
        assert_eq!(values(&rs[0], "To"), ["<sip:bob@127.0.0.1>;tag=nosuch"]);
    }

    #[test]
    fn invite_from_a_stranger_is_challenged_and_originates_nothing() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        // `drain` panics on any request transmitted.
        let rs = feed(
            &mut ep,
            &clock,
            phone,
            &invite_text("203.0.113.7:40000", ""),
        );
        // Challenged statelessly: no 100 Trying, no transaction kept (a
        // flood of these allocates nothing, SPEC §5).
        assert_eq!(codes(&rs), [401]);
        assert_eq!(values(&rs[0], "WWW-Authenticate").len(), 2);
        assert!(ep.transactions().is_empty());
        assert!(ep.poll_event().is_none());
        assert!(ep.poll_transaction_event().is_none());
        // A retransmission gets the same challenge again.
        let again = feed(
            &mut ep,
            &clock,
            phone,
            &invite_text("203.0.113.7:40000", ""),
        );
        assert_eq!(codes(&again), [401]);
        assert_eq!(values(&again[0], "To"), values(&rs[0], "To"));
        // The ACK to the 401 is dropped without an answer.
        let ack = invite_text("203.0.113.7:40000", "")
            .replacen("INVITE sip", "ACK sip", 1)
            .replace("1 INVITE", "1 ACK")
            .replace(
                "To: <sip:bob@127.0.0.1>",
                &format!("To: {}", values(&rs[0], "To")[0]),
            );
        assert!(feed(&mut ep, &clock, phone, &ack).is_empty());
        assert!(ep.transactions().is_empty());
    }

    #[test]
    fn invite_from_an_agent_or_a_trunk_is_refused_for_now() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        let rs = feed(
            &mut ep,
            &clock,
            phone,
            &invite_text("203.0.113.7:40000", ""),
        );
        let mut client = DigestClient::new("alice", "alice-secret");
        let h = client
            .answer(&rs[0], "INVITE", "sip:bob@127.0.0.1", "ci")
            .expect("challenge");
        let text = invite_text("203.0.113.7:40000", &authorization(&h))
            .replace("inv1", "inv2")
            .replace("1 INVITE", "2 INVITE");
        let rs = feed(&mut ep, &clock, phone, &text);
        assert_eq!(codes(&rs), [100, 403]);
        assert_eq!(
            values(&rs[1], "Warning"),
            [format!("399 powerdial \"{CALLS_BY_DIALER}\"")]
        );

        let trunk = udp(TRUNK);
        let rs = feed(
            &mut ep,
            &clock,
            trunk,
            &invite_text(TRUNK, "").replace("inv1", "inv3"),
        );
        assert_eq!(codes(&rs), [100, 403], "a trunk is not challenged");
    }

    #[test]
    fn invite_from_a_trunk_to_our_caller_id_is_a_new_call_for_the_engine() {
        let (mut ep, clock) = setup();
        let text = invite_text(TRUNK, "")
            .replace("sip:bob@127.0.0.1", "sip:5550000000@127.0.0.1")
            .replace("inv-1", "cb-1");
        let rs = feed(&mut ep, &clock, udp(TRUNK), &text);
        assert!(rs.is_empty(), "the engine answers it: {:?}", codes(&rs));
        let routed = ep.poll_routed().expect("routed");
        assert!(routed.new_call);
        assert_eq!(routed.call_id, "cb-1");
        // Its retransmission follows it, as an ordinary routed message.
        let rs = feed(&mut ep, &clock, udp(TRUNK), &text);
        assert!(rs.is_empty());
        let again = ep.poll_routed().expect("routed again");
        assert!(!again.new_call);

        // The same INVITE from a phone is no callback: challenged.
        let text = text.replace("cb-1", "cb-2");
        let rs = feed(
            &mut ep,
            &clock,
            udp(PHONE),
            &text.replace(TRUNK, "203.0.113.7:40000"),
        );
        assert_eq!(codes(&rs), [401]);
        assert!(ep.poll_routed().is_none());
        // A session's own caller ID, once the sessions said so.
        let text = text
            .replace("5550000000", "4155550100")
            .replace("cb-2", "cb-3");
        let rs = feed(&mut ep, &clock, udp(TRUNK), &text.replace("cb-3", "cb-4"));
        assert_eq!(codes(&rs), [100, 403], "not ours yet");
        ep.set_session_caller_ids(vec!["+14155550100".into()]);
        let rs = feed(&mut ep, &clock, udp(TRUNK), &text);
        assert!(rs.is_empty());
        assert!(ep.poll_routed().is_some_and(|r| r.new_call));
        assert!(is_our_number(&["+15550000000".into()], "+1-555-000-0000"));
        assert!(!is_our_number(&["+15550000000".into()], "0000"));
        assert!(!is_our_number(&["+15550000000".into()], "bob"));
    }

    fn options_text(n: u32, extra: &str) -> String {
        format!(
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:40000;branch=z9hG4bK-opt{n}\r\n\
Max-Forwards: 70\r\n\
From: <sip:probe@203.0.113.7>;tag=o{n}\r\n\
To: <sip:127.0.0.1>\r\n\
Call-ID: opt-{n}\r\n\
CSeq: 1 OPTIONS\r\n\
{extra}Content-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn a_flooding_address_is_banned_and_then_dropped_unanswered() {
        let (mut ep, mut clock) = setup_with(FloodConfig::default(), 500_000);
        let phone = udp(PHONE);
        for n in 0..16 {
            assert_eq!(
                codes(&feed(&mut ep, &clock, phone, &options_text(n, ""))),
                [200]
            );
        }
        // Garbage counts too.
        assert!(feed(&mut ep, &clock, phone, "\x00\x01 not sip at all").is_empty());
        assert!(feed(&mut ep, &clock, phone, &options_text(99, "")).is_empty());
        let bans = ep.bans(clock.now);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].address, udp(PHONE).addr.ip());
        // Another address is served meanwhile; a trunk is never limited.
        let other = udp("203.0.113.8:5060");
        assert_eq!(
            codes(&feed(&mut ep, &clock, other, &options_text(1, ""))),
            [200]
        );
        for n in 0..100 {
            let rs = feed(&mut ep, &clock, udp(TRUNK), &options_text(1_000 + n, ""));
            assert_eq!(codes(&rs), [200]);
        }
        // Lifted by an administrator, or after the ban time.
        assert!(ep.unban(phone.addr.ip(), clock.now));
        assert_eq!(
            codes(&feed(&mut ep, &clock, phone, &options_text(200, ""))),
            [200]
        );
        for n in 0..40 {
            feed(&mut ep, &clock, phone, &options_text(300 + n, ""));
        }
        assert!(feed(&mut ep, &clock, phone, &options_text(400, "")).is_empty());
        clock.advance(Duration::from_secs(300));
        assert_eq!(
            codes(&feed(&mut ep, &clock, phone, &options_text(401, ""))),
            [200]
        );
    }

    #[test]
    fn a_scanner_user_agent_is_dropped_and_banned_at_once() {
        let (mut ep, clock) = setup_with(FloodConfig::default(), 500_000);
        let phone = udp(PHONE);
        let rs = feed(
            &mut ep,
            &clock,
            phone,
            &options_text(1, "User-Agent: friendly-scanner\r\n"),
        );
        assert!(rs.is_empty());
        assert_eq!(ep.bans(clock.now).len(), 1);
        assert!(feed(
            &mut ep,
            &clock,
            phone,
            &options_text(2, "User-Agent: PJSUA v2\r\n")
        )
        .is_empty());
    }

    #[test]
    fn a_full_transaction_table_answers_503_with_retry_after_statelessly() {
        let (mut ep, clock) = setup_with(
            FloodConfig {
                requests: 0,
                ..FloodConfig::default()
            },
            3,
        );
        let phone = udp(PHONE);
        for n in 0..3 {
            assert_eq!(
                codes(&feed(&mut ep, &clock, phone, &options_text(n, ""))),
                [200]
            );
        }
        assert_eq!(ep.transactions().len(), 3);
        let rs = feed(&mut ep, &clock, phone, &options_text(3, ""));
        assert_eq!(codes(&rs), [503]);
        assert_eq!(values(&rs[0], "Retry-After"), ["5"]);
        assert_eq!(ep.transactions().len(), 3, "nothing was allocated");
        // A retransmission of a held request still gets its own answer.
        assert_eq!(
            codes(&feed(&mut ep, &clock, phone, &options_text(0, ""))),
            [200]
        );
    }

    #[test]
    fn out_of_dialog_methods_we_do_not_serve_get_405() {
        let (mut ep, clock) = setup();
        for (i, m) in [
            "MESSAGE",
            "SUBSCRIBE",
            "NOTIFY",
            "PUBLISH",
            "REFER",
            "UPDATE",
            "PRACK",
            "INFO",
        ]
        .iter()
        .enumerate()
        {
            let text = format!(
                "{m} sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:40000;branch=z9hG4bK-m{i}\r\n\
Max-Forwards: 70\r\n\
From: <sip:x@203.0.113.7>;tag=x{i}\r\n\
To: <sip:127.0.0.1>\r\n\
Call-ID: m-{i}\r\n\
CSeq: 1 {m}\r\n\
Event: presence\r\n\
Content-Length: 0\r\n\r\n"
            );
            let rs = feed(&mut ep, &clock, udp(PHONE), &text);
            assert_eq!(codes(&rs), [405], "{m}");
            assert_eq!(values(&rs[0], "Allow"), [ALLOW], "{m}");
        }
    }

    #[test]
    fn unknown_method_gets_501_with_allow() {
        let (mut ep, clock) = setup();
        let rs = feed(
            &mut ep,
            &clock,
            udp(PHONE),
            "FROBNICATE sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-frob;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:x@192.168.1.20>;tag=x\r\n\
To: <sip:127.0.0.1>\r\n\
Call-ID: frob-1\r\n\
CSeq: 1 FROBNICATE\r\n\
Content-Length: 0\r\n\r\n",
        );
        assert_eq!(codes(&rs), [501]);
        assert_eq!(values(&rs[0], "Allow"), [ALLOW]);
        assert_eq!(
            values(&rs[0], "Via"),
            ["SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-frob;rport=40000;received=203.0.113.7"]
        );
    }

    #[test]
    fn malformed_request_gets_400_back_to_the_source() {
        let (mut ep, clock) = setup();
        let rs = feed(
            &mut ep,
            &clock,
            udp(PHONE),
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-bad\r\n\
Max-Forwards: 70\r\n\
From: <sip:x@192.168.1.20>;tag=x\r\n\
To: <sip:127.0.0.1>\r\n\
Call-ID: bad-1\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 9999\r\n\r\n",
        );
        assert_eq!(codes(&rs), [400]);
        assert_eq!(
            values(&rs[0], "Via"),
            ["SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-bad;received=203.0.113.7"]
        );
        // Garbage and a lone keep-alive: dropped, nothing sent.
        assert!(feed(&mut ep, &clock, udp(PHONE), "\u{0}\u{1}garbage\r\n\r\n").is_empty());
        assert!(feed(&mut ep, &clock, udp(PHONE), "\r\n\r\n").is_empty());
    }

    #[test]
    fn received_and_rport_are_added_to_the_echoed_via() {
        let (mut ep, clock) = setup();
        let rs = feed(
            &mut ep,
            &clock,
            udp(PHONE),
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bK-nat\r\n\
Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-second\r\n\
Max-Forwards: 70\r\n\
From: <sip:x@10.0.0.5>;tag=x\r\n\
To: <sip:127.0.0.1>\r\n\
Call-ID: nat-1\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n",
        );
        assert_eq!(codes(&rs), [200]);
        assert_eq!(
            values(&rs[0], "Via"),
            [
                "SIP/2.0/UDP 10.0.0.5:5060;rport=40000;branch=z9hG4bK-nat;received=203.0.113.7",
                "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-second",
            ]
        );
    }

    #[test]
    fn via_fix_rules() {
        let peer = udp("192.0.2.1:5999");
        // Same host, no rport: unchanged.
        assert_eq!(
            fixed_top_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa", peer),
            None
        );
        // Same host with rport: received is added anyway (RFC 3581 §4).
        assert_eq!(
            fixed_top_via("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa;rport", peer).as_deref(),
            Some("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa;rport=5999;received=192.0.2.1")
        );
        // A name as sent-by; only the first via-parm of a combined value.
        assert_eq!(
            fixed_top_via("SIP/2.0/TCP phone.example;branch=z9hG4bKa, SIP/2.0/UDP x;branch=z9hG4bKb", peer)
                .as_deref(),
            Some("SIP/2.0/TCP phone.example;branch=z9hG4bKa;received=192.0.2.1, SIP/2.0/UDP x;branch=z9hG4bKb")
        );
        // An existing received is replaced, an rport with a value kept.
        assert_eq!(
            fixed_top_via(
                "SIP/2.0/UDP 10.1.1.1;received=10.9.9.9;rport=7;branch=z9hG4bKa",
                peer
            )
            .as_deref(),
            Some("SIP/2.0/UDP 10.1.1.1;received=192.0.2.1;rport=7;branch=z9hG4bKa")
        );
        let v6 = udp("[2001:db8::1]:5060");
        assert_eq!(
            fixed_top_via("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKa", v6),
            None
        );
        assert_eq!(
            fixed_top_via("SIP/2.0/UDP [2001:db8::2];branch=z9hG4bKa", v6).as_deref(),
            Some("SIP/2.0/UDP [2001:db8::2];branch=z9hG4bKa;received=2001:db8::1")
        );
        // Nonsense never panics.
        for v in [
            "",
            ";",
            "SIP/2.0/UDP",
            "SIP/2.0/UDP [",
            ",,,",
            "\"a;b\";rport",
        ] {
            let _ = fixed_top_via(v, peer);
        }
    }

    #[test]
    fn register_for_a_foreign_domain_is_refused_after_authentication() {
        let (mut ep, clock) = setup();
        let phone = udp(PHONE);
        let mut client = DigestClient::new("alice", "alice-secret");
        let foreign_uri =
            |t: String| t.replace("REGISTER sip:127.0.0.1", "REGISTER sip:example.org");
        let challenge = last(feed(
            &mut ep,
            &clock,
            phone,
            &foreign_uri(register(1, "alice", "")),
        ));
        assert_eq!(challenge.status_code.code(), 401, "strangers learn nothing");
        let h = client
            .answer(&challenge, "REGISTER", "sip:example.org", "c1")
            .expect("challenge");
        let rs = feed(
            &mut ep,
            &clock,
            phone,
            &foreign_uri(register(2, "alice", &authorization(&h))),
        );
        assert_eq!(codes(&rs), [403]);

        let foreign_to =
            |t: String| t.replace("To: <sip:alice@127.0.0.1>", "To: <sip:alice@example.org>");
        let challenge = last(feed(
            &mut ep,
            &clock,
            phone,
            &foreign_to(register(3, "alice", "")),
        ));
        let auth = answer(&mut client, &challenge, "c2");
        let rs = feed(
            &mut ep,
            &clock,
            phone,
            &foreign_to(register(4, "alice", &auth)),
        );
        assert_eq!(codes(&rs), [404]);
        assert!(bindings_changed(&mut ep).is_empty());
    }

    #[test]
    fn max_forwards_zero_for_a_foreign_domain_gets_483() {
        let (mut ep, clock) = setup();
        let text = "OPTIONS sip:bob@example.org SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:40000;branch=z9hG4bK-mf0\r\n\
Max-Forwards: 0\r\n\
From: <sip:x@203.0.113.7>;tag=x\r\n\
To: <sip:bob@example.org>\r\n\
Call-ID: mf-1\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";
        assert_eq!(codes(&feed(&mut ep, &clock, udp(PHONE), text)), [483]);
        let ours = text
            .replace("example.org", "127.0.0.1")
            .replace("mf0", "mf1");
        assert_eq!(codes(&feed(&mut ep, &clock, udp(PHONE), &ours)), [200]);
    }

    /// RFC 4475: every torture message through the endpoint, over UDP and
    /// TCP: no panic, at most one final (non-100) response, nothing
    /// originated, every answer to the source. A valid OPTIONS still gets
    /// 200 afterwards.
    #[test]
    fn rfc4475_torture_messages_never_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torture/rfc4475");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixtures present")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "dat"))
            .collect();
        files.sort();
        assert_eq!(files.len(), 49, "the 49 messages of RFC 4475");
        // One endpoint per transport: the same branch twice would be a
        // retransmission, answered to the first peer.
        for transport in [TransportKind::Udp, TransportKind::Tcp] {
            let (mut ep, mut clock) = setup();
            for (i, path) in files.iter().enumerate() {
                let bytes = std::fs::read(path).expect("readable");
                let peer = Peer {
                    transport,
                    addr: SocketAddr::from(([203, 0, 113, 50], 30000 + i as u16)),
                };
                ep.handle_datagram(clock.now, clock.wall, peer, &bytes);
                // `cparam01`/`cparam02` (and others) share branch and
                // sent-by: the later one is a retransmission of the earlier
                // one (§17.2.3), answered to the earlier sender.
                let mut rs = Vec::new();
                while let Some(t) = ep.poll_transmit() {
                    assert_eq!(t.peer.addr.ip(), peer.addr.ip(), "{}", path.display());
                    match t.message {
                        SipMessage::Response(r) => rs.push(r),
                        SipMessage::Request(r) => panic!("originated {r}"),
                    }
                }
                let finals = rs.iter().filter(|r| r.status_code.code() != 100).count();
                assert!(finals <= 1, "{}: {:?}", path.display(), codes(&rs));
                clock.advance(Duration::from_millis(10));
                // UDP retransmissions of earlier answers come due here and
                // go to their own peers; none of them is a request.
                ep.handle_timeout(clock.now, clock.wall);
                while let Some(t) = ep.poll_transmit() {
                    assert!(matches!(t.message, SipMessage::Response(_)));
                }
            }
            torture_then_options(&mut ep, &clock);
        }
    }

    fn torture_then_options(ep: &mut Endpoint, clock: &Clock) {
        let rs = feed(
            ep,
            clock,
            udp(PHONE),
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:40000;branch=z9hG4bK-after\r\n\
Max-Forwards: 70\r\n\
From: <sip:ping@203.0.113.7>;tag=p1\r\n\
To: <sip:127.0.0.1>\r\n\
Call-ID: opt-after\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n",
        );
        assert_eq!(codes(&rs), [200]);
    }

    proptest::proptest! {
        /// No input panics the endpoint or makes it originate anything;
        /// each gets at most one final response.
        #[test]
        fn arbitrary_input_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            value in "\\PC{0,40}",
            which in 0usize..9,
        ) {
            let (mut ep, clock) = setup();
            let peer = udp(PHONE);
            ep.handle_datagram(clock.now, clock.wall, peer, &bytes);
            let _ = drain(&mut ep, peer);
            // A valid REGISTER with one header value replaced by noise.
            let names = ["Via", "From", "To", "Call-ID", "CSeq", "Contact", "Expires",
                         "Authorization", "Max-Forwards"];
            let mut text = String::new();
            for line in register(1, "alice", "Expires: 60\r\nAuthorization: Digest x\r\n").split("\r\n") {
                match line.split_once(':') {
                    Some((n, _)) if n == names[which] => text.push_str(&format!("{n}: {value}")),
                    _ => text.push_str(line),
                }
                text.push_str("\r\n");
            }
            ep.handle_datagram(clock.now, clock.wall, peer, text.as_bytes());
            let rs = drain(&mut ep, peer);
            proptest::prop_assert!(rs.iter().filter(|r| r.status_code.code() != 100).count() <= 1);
        }
    }

    #[test]
    fn torture_verdicts_match_the_readme() {
        let (mut ep, clock) = setup();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torture/rfc4475");
        let expect: &[(&str, &[u16])] = &[
            ("badinv01", &[400]),
            ("badvers", &[505]),
            ("insuf", &[400]),
            ("unkscm", &[416]),
            ("novelsc", &[416]),
            ("bext01", &[420]),
            ("invut", &[100, 415]),
            ("regaut01", &[401]),
            ("multi01", &[400]),
            ("mcl01", &[400]),
            ("bcast", &[]),
            // For sip:j.user@example.com, not for powerdial.
            ("zeromf", &[483]),
            ("sdp01", &[100, 406]),
            ("intmeth", &[501]),
            ("esc02", &[501]),
        ];
        for (i, (name, want)) in expect.iter().enumerate() {
            let bytes = std::fs::read(dir.join(format!("{name}.dat"))).expect("fixture");
            let peer = udp(&format!("203.0.113.60:{}", 31000 + i));
            ep.handle_datagram(clock.now, clock.wall, peer, &bytes);
            let rs = drain(&mut ep, peer);
            assert_eq!(codes(&rs), *want, "{name}");
        }
    }
}
