//! The registrar's decisions (RFC 3261 §10.3), sans-IO: bindings per agent
//! in memory, wall-clock time as a parameter. Persistence is the driver's:
//! every [`RegisterOutcome`] says exactly which bindings were added,
//! refreshed or removed, and [`Registrar::load`] restores them after a
//! restart. Authentication happens before (see `sip::digest`): the caller
//! passes the authenticated username.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::dialog::{NameAddr, NameAddrError};
use super::message::response_to;
use super::syntax::{self, Header, HeadersExt, StatusCode};
use super::{Peer, TransportKind};

/// Expiry used when neither the contact nor the request gives one (RFC 3261 §10.3 step 7).
pub const DEFAULT_EXPIRES: u32 = 3600;
/// Shortest registration accepted; shorter non-zero ones get 423 (RFC 3261 §10.3 step 7).
pub const MIN_EXPIRES: u32 = 60;
/// Longest registration granted; longer requests are shortened (RFC 3261 §10.3 step 7).
pub const MAX_EXPIRES: u32 = 3600;
/// Bindings kept per agent: a bound on memory a phone can make us hold.
pub const MAX_BINDINGS_PER_AOR: usize = 10;

/// One registered contact of an agent (RFC 3261 §10.3: AOR → contact,
/// with the Call-ID and CSeq that last touched it). One row of the
/// `registrations` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The address-of-record: the agent's username.
    pub aor: String,
    /// The Contact URI as registered, verbatim (URI parameters and headers kept).
    pub contact: String,
    /// When the binding lapses (wall clock).
    pub expires_at: SystemTime,
    /// Call-ID of the REGISTER that set it (RFC 3261 §10.3 step 7).
    pub call_id: String,
    /// CSeq of the REGISTER that set it (RFC 3261 §10.3 step 7).
    pub cseq: u32,
    /// The contact's `q` preference, if given (RFC 3261 §20.10).
    pub q: Option<f32>,
    /// Transport the REGISTER arrived on.
    pub transport: TransportKind,
    /// Source address of the REGISTER (the NAT's public side).
    pub source: SocketAddr,
    /// Whether the REGISTER's top Via asked for `rport` (RFC 3581): the
    /// UA wants responses, and requests, sent back to `source`. Not in the
    /// `registrations` table; load persisted rows with `true` (the safe
    /// default behind NAT).
    pub rport: bool,
}

impl Binding {
    /// Where to send an INVITE to this contact. Over TCP and TLS, the
    /// connection the phone opened (its source); over UDP, the source when the phone
    /// asked for `rport` (RFC 3581 §4) or when the contact host is a name
    /// (cores do no DNS) or unparsable; else the contact's IP and port
    /// (5060 when absent, RFC 3263 §4.2).
    pub fn target(&self) -> Peer {
        let source = Peer {
            transport: self.transport,
            addr: self.source,
        };
        if self.transport.is_reliable() || self.rport {
            return source;
        }
        let Ok(uri) = syntax::Uri::try_from(self.contact.as_str()) else {
            return source;
        };
        let syntax::Host::IpAddr(ip) = uri.host_with_port.host else {
            return source;
        };
        let port = uri.host_with_port.port.map_or(5060, |p| p.0);
        Peer {
            transport: self.transport,
            addr: SocketAddr::new(ip, port),
        }
    }

    /// Whole seconds left before the binding lapses (0 once lapsed).
    pub fn remaining(&self, now: SystemTime) -> u32 {
        let secs = self
            .expires_at
            .duration_since(now)
            .map_or(0, |d| d.as_secs());
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    /// `expires_at` as epoch milliseconds (the `expires_ms` column).
    pub fn expires_ms(&self) -> i64 {
        match self.expires_at.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }

    /// Converts an `expires_ms` column value back to a `SystemTime`.
    pub fn time_from_ms(ms: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Lapsed at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at <= now
    }
}

/// Why a REGISTER was refused (RFC 3261 §10.3); [`RegisterError::status`]
/// gives the response code, [`RegisterError::response`] the whole response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegisterError {
    /// The To URI is not the authenticated agent's AOR (RFC 3261 §10.3
    /// step 3: 403).
    #[error("To is not the authenticated user's address of record")]
    Forbidden,
    /// A header every REGISTER needs is missing or unparsable (400).
    #[error("missing or malformed {0} header")]
    BadHeader(&'static str),
    /// A Contact value does not parse (400).
    #[error("malformed Contact: {0}")]
    BadContact(#[from] NameAddrError),
    /// `Contact: *` with other contacts or with an Expires other than 0
    /// (RFC 3261 §10.3 step 6: 400).
    #[error("Contact '*' needs Expires: 0 and no other contact")]
    BadWildcard,
    /// A non-zero expiry below the minimum (RFC 3261 §10.3 step 7: 423
    /// with Min-Expires).
    #[error("interval too brief, minimum {min} s")]
    IntervalTooBrief {
        /// The Min-Expires to answer with.
        min: u32,
    },
    /// Same Call-ID with a CSeq not higher than the binding's (RFC 3261
    /// §10.3 step 7: the update is aborted; 400).
    #[error("REGISTER out of order for an existing binding")]
    OutOfOrder,
    /// More than [`MAX_BINDINGS_PER_AOR`] contacts for one agent (403).
    #[error("too many contacts for one agent")]
    TooManyBindings,
}

impl RegisterError {
    /// The status code to answer with (RFC 3261 §10.3).
    pub fn status(&self) -> StatusCode {
        match self {
            RegisterError::Forbidden | RegisterError::TooManyBindings => StatusCode::Forbidden,
            RegisterError::IntervalTooBrief { .. } => StatusCode::IntervalTooBrief,
            RegisterError::BadHeader(_)
            | RegisterError::BadContact(_)
            | RegisterError::BadWildcard
            | RegisterError::OutOfOrder => StatusCode::BadRequest,
        }
    }

    /// The full response to `request` (423 carries `Min-Expires`, RFC 3261 §20.23).
    pub fn response(&self, request: &syntax::Request) -> syntax::Response {
        let mut r = response_to(request, self.status().code(), "");
        if let RegisterError::IntervalTooBrief { min } = self {
            insert_before_content_length(
                &mut r,
                Header::MinExpires(syntax::MinExpires::new(min.to_string())),
            );
        }
        r
    }
}

/// What a REGISTER changed, for the driver to persist exactly that, and
/// the 200 OK listing every current binding (RFC 3261 §10.3 step 8).
#[derive(Debug, Clone)]
pub struct RegisterOutcome {
    /// New bindings (insert).
    pub added: Vec<Binding>,
    /// Existing bindings with a new expiry, Call-ID or CSeq (update).
    pub refreshed: Vec<Binding>,
    /// Bindings removed by Expires 0 or `*` (delete).
    pub removed: Vec<Binding>,
    /// The 200 OK to send.
    pub response: syntax::Response,
}

/// The registrar's bindings and rules (RFC 3261 §10.3).
#[derive(Debug, Default)]
pub struct Registrar {
    bindings: HashMap<String, Vec<Binding>>,
    /// Every binding's expiry, counted: [`Self::next_expiry`] is asked on
    /// every input, and a scan of 10,000 agents' bindings each time was
    /// the registrar's largest cost under REGISTER load (SPEC §6).
    expiries: BTreeMap<SystemTime, u32>,
}

/// The To of a REGISTER, parsed once (its name-addr, then its URI): the
/// endpoint checks its domain (RFC 3261 §10.3 step 2) and the registrar
/// its user against the authenticated agent (step 3). Each used to parse
/// it on its own, two URI parses per REGISTER (SPEC §6, REGISTER per
/// cycle beside Kamailio).
#[derive(Debug, Clone)]
pub struct RegisterTo {
    uri: syntax::Uri,
}

impl RegisterTo {
    /// Parses the To of `request`; a missing or unparsable one is
    /// [`RegisterError::BadHeader`] (400).
    pub fn of(request: &syntax::Request) -> Result<Self, RegisterError> {
        let to = request
            .to_header()
            .map_err(|_| RegisterError::BadHeader("To"))?;
        let to = NameAddr::parse(to.value()).map_err(|_| RegisterError::BadHeader("To"))?;
        let uri = to
            .parsed_uri()
            .map_err(|_| RegisterError::BadHeader("To"))?;
        Ok(RegisterTo { uri })
    }

    /// The URI's user part: the address-of-record's agent.
    pub fn user(&self) -> Option<&str> {
        self.uri.user()
    }

    /// The URI's host as printed (an IPv6 host with its brackets).
    pub fn host(&self) -> String {
        self.uri.host().to_string()
    }
}

/// A contact parsed from a REGISTER, before it is applied.
struct Requested {
    contact: String,
    key: String,
    expires: u32,
    q: Option<f32>,
}

impl Registrar {
    /// An empty registrar.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores persisted bindings after a restart (replacing any for the
    /// same AOR and contact).
    pub fn load(&mut self, bindings: impl IntoIterator<Item = Binding>) {
        for b in bindings {
            let key = contact_key(&b.contact);
            let list = self.bindings.entry(b.aor.clone()).or_default();
            if let Some(pos) = list.iter().position(|x| contact_key(&x.contact) == key) {
                unindex(&mut self.expiries, list.remove(pos).expires_at);
            }
            index(&mut self.expiries, b.expires_at);
            list.push(b);
            sort_by_preference(list);
        }
    }

    /// The bindings of `aor`, best first (highest `q`, absent `q` counting
    /// as 1.0, then the longest-lived). May hold lapsed ones until
    /// [`Self::expire`] runs; see [`Self::live_bindings`].
    pub fn bindings(&self, aor: &str) -> &[Binding] {
        self.bindings.get(aor).map_or(&[], |v| v.as_slice())
    }

    /// The bindings of `aor` still valid at `now`, best first: where the
    /// call engine INVITEs an agent (via [`Binding::target`]).
    pub fn live_bindings(&self, aor: &str, now: SystemTime) -> impl Iterator<Item = &Binding> {
        self.bindings(aor)
            .iter()
            .filter(move |b| !b.is_expired(now))
    }

    /// How many agents have a live binding registered from `ip` (an
    /// office NAT's phones share its address; `sip::flood` scales its
    /// limit by it). A scan: asked only when a source passes its base
    /// request limit, at most once per window.
    pub fn agents_at(&self, ip: std::net::IpAddr, now: SystemTime) -> usize {
        self.bindings
            .values()
            .filter(|list| {
                list.iter()
                    .any(|b| b.source.ip() == ip && !b.is_expired(now))
            })
            .count()
    }

    /// How many bindings of all AORs are still valid at `now`.
    pub fn live_count(&self, now: SystemTime) -> usize {
        self.bindings
            .values()
            .flatten()
            .filter(|b| !b.is_expired(now))
            .count()
    }

    /// Drops lapsed bindings and returns them (for the driver to delete).
    pub fn expire(&mut self, now: SystemTime) -> Vec<Binding> {
        let mut gone = Vec::new();
        self.bindings.retain(|_, list| {
            let (dead, live): (Vec<Binding>, Vec<Binding>) =
                list.drain(..).partition(|b| b.is_expired(now));
            gone.extend(dead);
            *list = live;
            !list.is_empty()
        });
        for b in &gone {
            unindex(&mut self.expiries, b.expires_at);
        }
        gone
    }

    /// The earliest expiry among all bindings: when to call [`Self::expire`].
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.expiries.keys().next().copied()
    }

    /// Processes an authenticated REGISTER (RFC 3261 §10.3 steps 3 and
    /// 5–8): To must be `authenticated_user`'s AOR; `Contact: *` with
    /// `Expires: 0` removes all; per-contact `expires`, else `Expires`,
    /// else [`DEFAULT_EXPIRES`]; non-zero below [`MIN_EXPIRES`] → 423;
    /// above [`MAX_EXPIRES`] shortened; Call-ID/CSeq ordering per binding.
    /// All-or-nothing: on error nothing changes.
    pub fn handle_register(
        &mut self,
        now: SystemTime,
        request: &syntax::Request,
        peer: Peer,
        authenticated_user: &str,
    ) -> Result<RegisterOutcome, RegisterError> {
        let to = RegisterTo::of(request)?;
        self.handle_register_to(now, request, &to, peer, authenticated_user)
    }

    /// [`Self::handle_register`] with the request's To already parsed
    /// ([`RegisterTo::of`]), for a caller that read it first.
    pub fn handle_register_to(
        &mut self,
        now: SystemTime,
        request: &syntax::Request,
        to: &RegisterTo,
        peer: Peer,
        authenticated_user: &str,
    ) -> Result<RegisterOutcome, RegisterError> {
        // The domain is not compared: powerdial serves one realm and phones
        // write it as an IP, a name, with or without a port.
        if to.user() != Some(authenticated_user) {
            return Err(RegisterError::Forbidden);
        }
        let call_id = request
            .call_id_header()
            .map_err(|_| RegisterError::BadHeader("Call-ID"))?
            .value()
            .trim()
            .to_string();
        let cseq = parse_cseq(request).ok_or(RegisterError::BadHeader("CSeq"))?;
        // RFC 3261 §20.19: a malformed value counts as 3600.
        let header_expires = request
            .expires_header()
            .map(|e| e.value().trim().parse::<u32>().unwrap_or(DEFAULT_EXPIRES));

        let mut wildcard = false;
        let mut contacts = Vec::new();
        for h in request.contact_headers() {
            for c in NameAddr::parse_list(h.value())? {
                if c.uri == "*" && c.display_name.is_none() {
                    wildcard = true;
                } else {
                    contacts.push(c);
                }
            }
        }
        let rport = top_via_has_rport(request);
        let list = self.bindings.get(authenticated_user);
        let existing: &[Binding] = list.map_or(&[], |v| v.as_slice());

        if wildcard {
            if !contacts.is_empty() || header_expires != Some(0) {
                return Err(RegisterError::BadWildcard);
            }
            // §10.3 step 6: same Call-ID with a CSeq not higher aborts.
            if existing
                .iter()
                .any(|b| b.call_id == call_id && cseq <= b.cseq)
            {
                return Err(RegisterError::OutOfOrder);
            }
            let removed = self.bindings.remove(authenticated_user).unwrap_or_default();
            for b in &removed {
                unindex(&mut self.expiries, b.expires_at);
            }
            return Ok(RegisterOutcome {
                added: Vec::new(),
                refreshed: Vec::new(),
                response: ok_response(request, &[], now),
                removed,
            });
        }

        // Each comparison key once (a URI parse each, §19.1.4): the
        // request's contacts, then the list's bindings in order, where a
        // binding written exactly as a contact of this request (a phone's
        // refresh) shares that contact's key.
        let contact_keys: Vec<String> = contacts.iter().map(|c| contact_key(&c.uri)).collect();
        let existing_keys: Vec<String> = existing
            .iter()
            .map(|b| {
                contacts
                    .iter()
                    .zip(&contact_keys)
                    .find(|(c, _)| c.uri == b.contact)
                    .map_or_else(|| contact_key(&b.contact), |(_, k)| k.clone())
            })
            .collect();
        let mut requested: Vec<Requested> = Vec::with_capacity(contacts.len());
        for (c, key) in contacts.iter().zip(contact_keys) {
            let expires = match c.param("expires") {
                Some(Some(v)) => v.trim().parse::<u32>().unwrap_or(DEFAULT_EXPIRES),
                _ => header_expires.unwrap_or(DEFAULT_EXPIRES),
            };
            if expires != 0 && expires < MIN_EXPIRES {
                return Err(RegisterError::IntervalTooBrief { min: MIN_EXPIRES });
            }
            if let Some((b, _)) = existing
                .iter()
                .zip(&existing_keys)
                .find(|(_, k)| **k == key)
            {
                if b.call_id == call_id && cseq <= b.cseq {
                    return Err(RegisterError::OutOfOrder);
                }
            }
            let q = c
                .param("q")
                .flatten()
                .and_then(|v| v.trim().parse::<f32>().ok())
                .filter(|q| (0.0..=1.0).contains(q));
            // A contact listed twice: the last one wins.
            requested.retain(|r| r.key != key);
            requested.push(Requested {
                contact: c.uri.clone(),
                key,
                expires: expires.min(MAX_EXPIRES),
                q,
            });
        }
        let after = existing_keys
            .iter()
            .filter(|k| !requested.iter().any(|r| r.key == **k))
            .count()
            + requested.iter().filter(|r| r.expires > 0).count();
        if after > MAX_BINDINGS_PER_AOR {
            return Err(RegisterError::TooManyBindings);
        }

        let list = self
            .bindings
            .entry(authenticated_user.to_string())
            .or_default();
        // Kept beside `list`, entry for entry (the list is `existing`).
        let mut keys = existing_keys;
        let (mut added, mut refreshed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for r in requested {
            let pos = keys.iter().position(|k| *k == r.key);
            if r.expires == 0 {
                if let Some(pos) = pos {
                    keys.remove(pos);
                    let gone = list.remove(pos);
                    unindex(&mut self.expiries, gone.expires_at);
                    removed.push(gone);
                }
                continue;
            }
            let binding = Binding {
                aor: authenticated_user.to_string(),
                contact: r.contact,
                expires_at: now + Duration::from_secs(u64::from(r.expires)),
                call_id: call_id.clone(),
                cseq,
                q: r.q,
                transport: peer.transport,
                source: peer.addr,
                rport,
            };
            index(&mut self.expiries, binding.expires_at);
            match pos {
                Some(pos) => {
                    let old = std::mem::replace(&mut list[pos], binding.clone());
                    unindex(&mut self.expiries, old.expires_at);
                    refreshed.push(binding);
                }
                None => {
                    list.push(binding.clone());
                    keys.push(r.key);
                    added.push(binding);
                }
            }
        }
        sort_by_preference(list);
        let response = ok_response(request, list, now);
        if list.is_empty() {
            self.bindings.remove(authenticated_user);
        }
        Ok(RegisterOutcome {
            added,
            refreshed,
            removed,
            response,
        })
    }
}

/// Counts one more binding expiring at `at`.
fn index(expiries: &mut BTreeMap<SystemTime, u32>, at: SystemTime) {
    *expiries.entry(at).or_insert(0) += 1;
}

/// Counts one binding expiring at `at` less.
fn unindex(expiries: &mut BTreeMap<SystemTime, u32>, at: SystemTime) {
    if let Some(n) = expiries.get_mut(&at) {
        *n -= 1;
        if *n == 0 {
            expiries.remove(&at);
        }
    }
}

fn sort_by_preference(list: &mut [Binding]) {
    list.sort_by(|a, b| {
        let (qa, qb) = (a.q.unwrap_or(1.0), b.q.unwrap_or(1.0));
        qb.total_cmp(&qa).then(b.expires_at.cmp(&a.expires_at))
    });
}

/// A comparison key for contact URIs (RFC 3261 §19.1.4, simplified):
/// scheme and host case-insensitive, user exact, default port explicit,
/// URI parameters in any order. Unparsable URIs compare as written.
fn contact_key(uri: &str) -> String {
    let Ok(u) = syntax::Uri::try_from(uri) else {
        return uri.to_string();
    };
    let scheme = u
        .scheme
        .as_ref()
        .map_or_else(|| "sip".to_string(), |s| s.to_string().to_ascii_lowercase());
    let host = match &u.host_with_port.host {
        syntax::Host::IpAddr(IpAddr::V6(ip)) => format!("[{ip}]"),
        h => h.to_string().to_ascii_lowercase(),
    };
    let port = u.host_with_port.port.map_or(0, |p| p.0);
    let mut params: Vec<String> = u
        .params
        .iter()
        .map(|p| p.to_string().to_ascii_lowercase())
        .collect();
    params.sort();
    let headers: Vec<String> = u.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{scheme}:{}@{host}:{port}{}?{}",
        u.user().unwrap_or(""),
        params.concat(),
        headers.join("&")
    )
}

fn parse_cseq(request: &syntax::Request) -> Option<u32> {
    let v = request.cseq_header().ok()?.value();
    let mut it = v.split_whitespace();
    let n = it.next()?.parse::<u32>().ok()?;
    let method = it.next()?;
    method.eq_ignore_ascii_case("REGISTER").then_some(n)
}

/// Whether the top Via carries `rport` (RFC 3581 §4).
fn top_via_has_rport(request: &syntax::Request) -> bool {
    let Ok(via) = request.via_header() else {
        return false;
    };
    let first = via.value().split(',').next().unwrap_or("");
    first.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("rport"))
    })
}

fn insert_before_content_length(r: &mut syntax::Response, h: Header) {
    let pos = r
        .headers
        .iter()
        .position(|x| matches!(x, Header::ContentLength(_)))
        .unwrap_or(r.headers.len());
    r.headers.0.insert(pos, h);
}

/// The 200 OK to a REGISTER: one Contact per current binding with the
/// seconds it has left (RFC 3261 §10.3 step 8).
fn ok_response(
    request: &syntax::Request,
    bindings: &[Binding],
    now: SystemTime,
) -> syntax::Response {
    let mut r = response_to(request, 200, "");
    for b in bindings {
        let mut value = format!("<{}>;expires={}", b.contact, b.remaining(now));
        if let Some(q) = b.q {
            value.push_str(&format!(";q={q}"));
        }
        insert_before_content_length(&mut r, Header::Contact(syntax::Contact::new(value)));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_contact_or_expires_never_panics(
            contact in "\\PC{0,60}",
            expires in "\\PC{0,12}",
        ) {
            let mut reg = Registrar::new();
            let text = format!(
                "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKp\r\n\
                 From: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:alice@127.0.0.1>\r\n\
                 Call-ID: p\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\n\
                 Expires: {expires}\r\nContent-Length: 0\r\n\r\n"
            );
            if let Ok(req) = syntax::Request::try_from(text) {
                let peer = udp("10.0.0.1:5060");
                match reg.handle_register(t(0), &req, peer, "alice") {
                    Ok(out) => {
                        for b in &out.added {
                            let _ = b.target();
                        }
                    }
                    Err(e) => {
                        let _ = e.response(&req);
                    }
                }
            }
        }
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn udp(addr: &str) -> Peer {
        Peer {
            transport: TransportKind::Udp,
            addr: addr.parse().unwrap(),
        }
    }

    fn register(cseq: u32, call_id: &str, extra: &str) -> syntax::Request {
        let text = format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.168.1.20:5062;rport;branch=z9hG4bK{cseq}\r\n\
             Max-Forwards: 70\r\n\
             From: \"Alice\" <sip:alice@127.0.0.1>;tag=a73kszlfl\r\n\
             To: \"Alice\" <sip:alice@127.0.0.1>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n"
        );
        syntax::Request::try_from(text).unwrap()
    }

    fn contacts_of(r: &syntax::Response) -> Vec<String> {
        r.headers
            .iter()
            .filter_map(|h| match h {
                Header::Contact(c) => Some(c.value().to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn registers_several_contacts_and_answers_with_all() {
        let mut reg = Registrar::new();
        let peer = udp("203.0.113.7:40000");
        let req = register(
            1,
            "c1@phone",
            "Contact: <sip:alice@192.168.1.20:5062;transport=udp>;expires=600, \
             <sip:alice@192.168.1.21:5062>;q=0.5\r\n\
             Contact: sip:alice@192.168.1.22;q=0.9\r\n\
             Expires: 7200\r\n",
        );
        let out = reg.handle_register(t(0), &req, peer, "alice").unwrap();
        assert_eq!(out.added.len(), 3);
        assert!(out.refreshed.is_empty() && out.removed.is_empty());
        let b = reg.bindings("alice");
        assert_eq!(b.len(), 3);
        // q 1.0 (absent) first, then 0.9, then 0.5; Expires 7200 clamped to 3600.
        assert_eq!(b[0].contact, "sip:alice@192.168.1.20:5062;transport=udp");
        assert_eq!(b[0].expires_at, t(600));
        assert_eq!(b[1].contact, "sip:alice@192.168.1.22");
        assert_eq!(b[1].q, Some(0.9));
        assert_eq!(b[1].expires_at, t(3600));
        assert_eq!(b[2].q, Some(0.5));
        assert!(b
            .iter()
            .all(|x| x.rport && x.call_id == "c1@phone" && x.cseq == 1));
        let wire = out.response.to_string();
        assert!(wire.starts_with("SIP/2.0 200 OK\r\n"), "{wire}");
        assert!(wire.contains("Via: SIP/2.0/UDP 192.168.1.20:5062;rport;branch=z9hG4bK1\r\n"));
        assert!(wire.contains("To: \"Alice\" <sip:alice@127.0.0.1>;tag="));
        assert!(wire.contains("CSeq: 1 REGISTER\r\n"));
        assert!(wire.ends_with("Content-Length: 0\r\n\r\n"), "{wire}");
        assert_eq!(
            contacts_of(&out.response),
            vec![
                "<sip:alice@192.168.1.20:5062;transport=udp>;expires=600",
                "<sip:alice@192.168.1.22>;expires=3600;q=0.9",
                "<sip:alice@192.168.1.21:5062>;expires=3600;q=0.5",
            ]
        );
        // The response parses back.
        assert!(syntax::Response::try_from(wire.as_str()).is_ok());

        // Refresh one, remove another, from the same Call-ID with a higher CSeq.
        let req = register(
            2,
            "c1@phone",
            "Contact: <sip:alice@192.168.1.20:5062;transport=UDP>\r\n\
             Contact: <sip:alice@192.168.1.21:5062>;expires=0\r\n",
        );
        let out = reg.handle_register(t(100), &req, peer, "alice").unwrap();
        assert_eq!(out.refreshed.len(), 1);
        assert_eq!(out.refreshed[0].expires_at, t(3700));
        assert_eq!(out.removed.len(), 1);
        assert_eq!(out.removed[0].contact, "sip:alice@192.168.1.21:5062");
        assert!(out.added.is_empty());
        assert_eq!(reg.bindings("alice").len(), 2);
        assert_eq!(
            contacts_of(&out.response),
            vec![
                "<sip:alice@192.168.1.20:5062;transport=UDP>;expires=3600",
                "<sip:alice@192.168.1.22>;expires=3500;q=0.9",
            ]
        );
    }

    /// §10.3 step 7 on a list that shrinks while the REGISTER is applied:
    /// removing a binding listed first must not shift which binding a
    /// later contact of the same request refreshes.
    #[test]
    fn a_removal_before_a_refresh_in_one_register_refreshes_the_right_binding() {
        let mut reg = Registrar::new();
        let peer = udp("203.0.113.7:40000");
        let req = register(
            1,
            "c2@phone",
            "Contact: <sip:alice@192.168.1.30>;q=0.9, <sip:alice@192.168.1.31>;q=0.5, \
             <sip:alice@192.168.1.32>;q=0.1\r\n",
        );
        reg.handle_register(t(0), &req, peer, "alice").unwrap();
        let req = register(
            2,
            "c2@phone",
            "Contact: <sip:alice@192.168.1.30>;expires=0, <sip:alice@192.168.1.32>;q=0.1;expires=600\r\n",
        );
        let out = reg.handle_register(t(100), &req, peer, "alice").unwrap();
        assert_eq!(out.removed.len(), 1);
        assert_eq!(out.removed[0].contact, "sip:alice@192.168.1.30");
        assert!(out.added.is_empty());
        assert_eq!(out.refreshed.len(), 1);
        assert_eq!(out.refreshed[0].contact, "sip:alice@192.168.1.32");
        let b = reg.bindings("alice");
        assert_eq!(b.len(), 2);
        let refreshed = b
            .iter()
            .find(|x| x.contact == "sip:alice@192.168.1.32")
            .unwrap();
        assert_eq!(refreshed.expires_at, t(700));
        let untouched = b
            .iter()
            .find(|x| x.contact == "sip:alice@192.168.1.31")
            .unwrap();
        assert_eq!(untouched.expires_at, t(3600));
    }

    #[test]
    fn query_without_contact_changes_nothing() {
        let mut reg = Registrar::new();
        let peer = udp("203.0.113.7:40000");
        let req = register(1, "q", "Contact: <sip:alice@10.0.0.1>\r\n");
        reg.handle_register(t(0), &req, peer, "alice").unwrap();
        let out = reg
            .handle_register(t(10), &register(2, "q", ""), peer, "alice")
            .unwrap();
        assert!(out.added.is_empty() && out.refreshed.is_empty() && out.removed.is_empty());
        assert_eq!(
            contacts_of(&out.response),
            vec!["<sip:alice@10.0.0.1>;expires=3590"]
        );
    }

    #[test]
    fn wildcard_removes_all_only_with_expires_zero() {
        let mut reg = Registrar::new();
        let peer = udp("203.0.113.7:40000");
        let req = register(
            1,
            "w",
            "Contact: <sip:alice@10.0.0.1>, <sip:alice@10.0.0.2>\r\n",
        );
        reg.handle_register(t(0), &req, peer, "alice").unwrap();
        let bad = register(2, "w", "Contact: *\r\nExpires: 60\r\n");
        let err = reg.handle_register(t(1), &bad, peer, "alice").unwrap_err();
        assert_eq!(err, RegisterError::BadWildcard);
        assert!(err.response(&bad).to_string().starts_with("SIP/2.0 400 "));
        let bad = register(2, "w", "Contact: *\r\n");
        assert_eq!(
            reg.handle_register(t(1), &bad, peer, "alice").unwrap_err(),
            RegisterError::BadWildcard
        );
        let bad = register(2, "w", "Contact: *, <sip:alice@10.0.0.3>\r\nExpires: 0\r\n");
        assert!(reg.handle_register(t(1), &bad, peer, "alice").is_err());
        // Same Call-ID, CSeq not higher: aborted (§10.3 step 6).
        let stale = register(1, "w", "Contact: *\r\nExpires: 0\r\n");
        assert_eq!(
            reg.handle_register(t(1), &stale, peer, "alice")
                .unwrap_err(),
            RegisterError::OutOfOrder
        );
        assert_eq!(reg.bindings("alice").len(), 2);
        let ok = register(2, "w", "Contact: *\r\nExpires: 0\r\n");
        let out = reg.handle_register(t(1), &ok, peer, "alice").unwrap();
        assert_eq!(out.removed.len(), 2);
        assert!(reg.bindings("alice").is_empty());
        assert!(contacts_of(&out.response).is_empty());
    }

    #[test]
    fn too_brief_gets_423_with_min_expires_and_changes_nothing() {
        let mut reg = Registrar::new();
        let peer = udp("203.0.113.7:40000");
        let req = register(
            1,
            "b",
            "Contact: <sip:alice@10.0.0.1>;expires=3600, <sip:alice@10.0.0.2>;expires=30\r\n",
        );
        let err = reg.handle_register(t(0), &req, peer, "alice").unwrap_err();
        assert_eq!(err, RegisterError::IntervalTooBrief { min: 60 });
        let wire = err.response(&req).to_string();
        assert!(
            wire.starts_with("SIP/2.0 423 Interval Too Brief\r\n"),
            "{wire}"
        );
        assert!(wire.contains("\r\nMin-Expires: 60\r\n"));
        assert!(reg.bindings("alice").is_empty());
        // Exactly the minimum, and the Expires header path.
        let req = register(2, "b", "Contact: <sip:alice@10.0.0.1>\r\nExpires: 59\r\n");
        assert!(reg.handle_register(t(0), &req, peer, "alice").is_err());
        let req = register(3, "b", "Contact: <sip:alice@10.0.0.1>\r\nExpires: 60\r\n");
        let out = reg.handle_register(t(0), &req, peer, "alice").unwrap();
        assert_eq!(out.added[0].expires_at, t(60));
    }

    #[test]
    fn cseq_regression_on_same_call_id_is_400_other_call_id_wins() {
        let mut reg = Registrar::new();
        let peer = udp("203.0.113.7:40000");
        let c = "Contact: <sip:alice@10.0.0.1>\r\n";
        reg.handle_register(t(0), &register(5, "x", c), peer, "alice")
            .unwrap();
        for cseq in [4, 5] {
            let req = register(cseq, "x", c);
            let err = reg.handle_register(t(1), &req, peer, "alice").unwrap_err();
            assert_eq!(err, RegisterError::OutOfOrder);
            assert!(err.response(&req).to_string().starts_with("SIP/2.0 400 "));
        }
        // A phone that rebooted uses a new Call-ID: any CSeq is fine.
        let out = reg
            .handle_register(t(2), &register(1, "y", c), peer, "alice")
            .unwrap();
        assert_eq!(out.refreshed.len(), 1);
        assert_eq!(out.refreshed[0].call_id, "y");
    }

    #[test]
    fn wrong_aor_is_403() {
        let mut reg = Registrar::new();
        let req = register(1, "f", "Contact: <sip:alice@10.0.0.1>\r\n");
        let err = reg
            .handle_register(t(0), &req, udp("10.0.0.1:5060"), "bob")
            .unwrap_err();
        assert_eq!(err, RegisterError::Forbidden);
        assert!(err
            .response(&req)
            .to_string()
            .starts_with("SIP/2.0 403 Forbidden\r\n"));
        assert!(reg.bindings("bob").is_empty() && reg.bindings("alice").is_empty());
    }

    #[test]
    fn bounded_contacts_per_agent() {
        let mut reg = Registrar::new();
        let list: Vec<String> = (0..=MAX_BINDINGS_PER_AOR)
            .map(|i| format!("<sip:alice@10.0.0.{i}>"))
            .collect();
        let req = register(1, "m", &format!("Contact: {}\r\n", list.join(", ")));
        assert_eq!(
            reg.handle_register(t(0), &req, udp("10.0.0.1:5060"), "alice")
                .unwrap_err(),
            RegisterError::TooManyBindings
        );
    }

    #[test]
    fn expire_load_and_next_expiry() {
        let mut reg = Registrar::new();
        let peer = udp("203.0.113.7:40000");
        let req = register(
            1,
            "e",
            "Contact: <sip:alice@10.0.0.1>;expires=60, <sip:alice@10.0.0.2>;expires=120\r\n",
        );
        let out = reg.handle_register(t(0), &req, peer, "alice").unwrap();
        assert_eq!(reg.next_expiry(), Some(t(60)));
        assert_eq!(reg.live_bindings("alice", t(60)).count(), 1);
        assert!(reg.expire(t(59)).is_empty());
        let gone = reg.expire(t(60));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].contact, "sip:alice@10.0.0.1");
        assert_eq!(reg.expire(t(500)).len(), 1);
        assert_eq!(reg.next_expiry(), None);
        // Restart: the persisted rows come back.
        let mut fresh = Registrar::new();
        let rows: Vec<Binding> = out
            .added
            .iter()
            .map(|b| Binding {
                expires_at: Binding::time_from_ms(b.expires_ms()),
                ..b.clone()
            })
            .collect();
        fresh.load(rows.clone());
        fresh.load(rows);
        assert_eq!(fresh.bindings("alice").len(), 2);
        assert_eq!(fresh.bindings("alice")[0].expires_at, t(120));
    }

    /// The expiry index answers what a scan of every binding would, through
    /// adds, refreshes, removals, `Contact: *`, expiries and loads.
    #[test]
    fn next_expiry_index_matches_a_scan() {
        fn scan(reg: &Registrar) -> Option<SystemTime> {
            reg.bindings.values().flatten().map(|b| b.expires_at).min()
        }
        let mut reg = Registrar::new();
        let peer = udp("203.0.113.7:40000");
        let mut cseq = 0;
        let mut step = |reg: &mut Registrar, at: u64, user: &str, contact: &str| {
            cseq += 1;
            let text = format!(
                "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK{cseq}\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:{user}@127.0.0.1>;tag=x\r\n\
                 To: <sip:{user}@127.0.0.1>\r\n\
                 Call-ID: i\r\n\
                 CSeq: {cseq} REGISTER\r\n\
                 Contact: {contact}\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            let req = syntax::Request::try_from(text).unwrap();
            let out = reg.handle_register(t(at), &req, peer, user);
            assert!(out.is_ok(), "{user} {contact}: {out:?}");
            assert_eq!(
                reg.next_expiry(),
                scan(reg),
                "after {user} {contact} at {at}"
            );
        };
        step(&mut reg, 0, "alice", "<sip:alice@10.0.0.1>;expires=60");
        step(&mut reg, 0, "alice", "<sip:alice@10.0.0.2>;expires=60");
        step(&mut reg, 1, "bob", "<sip:bob@10.0.0.3>;expires=120");
        // Refresh: the old expiry leaves the index.
        step(&mut reg, 10, "alice", "<sip:alice@10.0.0.1>;expires=300");
        step(&mut reg, 11, "alice", "<sip:alice@10.0.0.2>;expires=0");
        assert_eq!(reg.next_expiry(), Some(t(121)));
        step(&mut reg, 12, "bob", "*\r\nExpires: 0");
        assert_eq!(reg.next_expiry(), Some(t(310)));
        step(&mut reg, 13, "carol", "<sip:carol@10.0.0.4>;expires=100");
        assert_eq!(reg.expire(t(113)).len(), 1);
        assert_eq!(reg.next_expiry(), scan(&reg));
        let again: Vec<Binding> = reg.bindings("alice").to_vec();
        reg.load(again.iter().map(|b| Binding {
            expires_at: t(50),
            ..b.clone()
        }));
        assert_eq!(reg.next_expiry(), Some(t(50)));
        assert_eq!(reg.expire(t(50)).len(), 1);
        assert_eq!(reg.next_expiry(), None);
        assert_eq!(scan(&reg), None);
    }

    #[test]
    fn target_prefers_source_behind_nat() {
        let b = Binding {
            aor: "alice".into(),
            contact: "sip:alice@192.168.1.20:5062".into(),
            expires_at: t(60),
            call_id: "c".into(),
            cseq: 1,
            q: None,
            transport: TransportKind::Udp,
            source: "203.0.113.7:40000".parse().unwrap(),
            rport: true,
        };
        assert_eq!(b.target().addr, b.source);
        let direct = Binding {
            rport: false,
            ..b.clone()
        };
        assert_eq!(direct.target(), udp("192.168.1.20:5062"));
        let no_port = Binding {
            contact: "sip:alice@192.168.1.20;transport=udp".into(),
            ..direct.clone()
        };
        assert_eq!(no_port.target(), udp("192.168.1.20:5060"));
        let named = Binding {
            contact: "sip:alice@phone.example.com".into(),
            ..direct.clone()
        };
        assert_eq!(named.target().addr, b.source);
        let tcp = Binding {
            transport: TransportKind::Tcp,
            ..direct
        };
        assert_eq!(
            tcp.target(),
            Peer {
                transport: TransportKind::Tcp,
                addr: b.source
            }
        );
    }

    /// RFC 4475 §3.3.12 `cparam01`, byte-exact.
    const CPARAM01: &str = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\r\n\
Max-Forwards: 70\r\n\
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe\r\n\
To: sip:watson@example.com\r\n\
Call-ID: cparam01.70710@saturn.example.com\r\n\
CSeq: 2 REGISTER\r\n\
Contact: sip:+19725552222@gw1.example.net;unknownparam\r\n\
l: 0\r\n\
\r\n";

    /// RFC 4475 §3.3.13 `cparam02`, byte-exact.
    const CPARAM02: &str = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\r\n\
Max-Forwards: 70\r\n\
From: sip:watson@example.com;tag=838293\r\n\
To: sip:watson@example.com\r\n\
Call-ID: cparam02.70710@saturn.example.com\r\n\
CSeq: 3 REGISTER\r\n\
Contact: <sip:+19725552222@gw1.example.net;unknownparam>\r\n\
l: 0\r\n\
\r\n";

    /// RFC 4475 §3.3.14 `regescrt`, byte-exact.
    const REGESCRT: &str = "REGISTER sip:example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:user@example.com;tag=8\r\n\
Max-Forwards: 70\r\n\
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1\r\n\
CSeq: 14398234 REGISTER\r\n\
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\r\n\
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>\r\n\
L:0\r\n\
\r\n";

    #[test]
    fn rfc4475_cparam01_and_cparam02_are_different_contacts() {
        let mut reg = Registrar::new();
        let peer = udp("192.0.2.5:5060");
        let req = syntax::Request::try_from(CPARAM01).unwrap();
        let out = reg.handle_register(t(0), &req, peer, "watson").unwrap();
        // Unbracketed: `unknownparam` is a header parameter, not the URI's.
        assert_eq!(out.added[0].contact, "sip:+19725552222@gw1.example.net");
        assert!(!out.added[0].rport);
        assert_eq!(
            contacts_of(&out.response),
            vec!["<sip:+19725552222@gw1.example.net>;expires=3600"]
        );
        let req = syntax::Request::try_from(CPARAM02).unwrap();
        let out = reg.handle_register(t(1), &req, peer, "watson").unwrap();
        assert_eq!(
            out.added[0].contact,
            "sip:+19725552222@gw1.example.net;unknownparam"
        );
        assert_eq!(reg.bindings("watson").len(), 2);
        assert!(out
            .response
            .to_string()
            .contains("Contact: <sip:+19725552222@gw1.example.net;unknownparam>;expires=3600\r\n"));
    }

    #[test]
    fn rfc4475_regescrt_keeps_the_escaped_header_and_brackets_it() {
        let mut reg = Registrar::new();
        let req = syntax::Request::try_from(REGESCRT).unwrap();
        let out = reg
            .handle_register(t(0), &req, udp("192.0.2.1:5060"), "user")
            .unwrap();
        assert_eq!(
            out.added[0].contact,
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
        );
        let wire = out.response.to_string();
        assert!(wire.contains(
            "\r\nContact: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>;expires=3600\r\n"
        ));
        assert!(wire.contains("\r\nCSeq: 14398234 REGISTER\r\n"));
        // Named host: INVITEs go to where the REGISTER came from.
        assert_eq!(out.added[0].target(), udp("192.0.2.1:5060"));
    }

    #[test]
    fn malformed_headers_are_400() {
        let mut reg = Registrar::new();
        let peer = udp("10.0.0.1:5060");
        let req = register(1, "z", "Contact: <sip:alice@10.0.0.1\r\n");
        let err = reg.handle_register(t(0), &req, peer, "alice").unwrap_err();
        assert_eq!(err, RegisterError::BadContact(NameAddrError::UnclosedAngle));
        assert_eq!(err.status(), StatusCode::BadRequest);
        let text =
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n\
                    From: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:alice@127.0.0.1>\r\n\
                    Call-ID: z\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let req = syntax::Request::try_from(text).unwrap();
        assert_eq!(
            reg.handle_register(t(0), &req, peer, "alice").unwrap_err(),
            RegisterError::BadHeader("CSeq")
        );
    }

    /// The To is read once for both checks: its user for the registrar,
    /// its host for the endpoint's domain check; a To that does not parse
    /// is a 400 before anything changes, and the registrar given it keeps
    /// to the same rules as [`Registrar::handle_register`].
    #[test]
    fn the_to_is_parsed_once_for_user_and_host() {
        let req = register(1, "c1", "Contact: <sip:alice@10.0.0.1:5062>\r\n");
        let to = RegisterTo::of(&req).unwrap();
        assert_eq!(to.user(), Some("alice"));
        assert_eq!(to.host(), "127.0.0.1");
        let mut reg = Registrar::new();
        let peer = udp("10.0.0.1:5062");
        let out = reg
            .handle_register_to(t(0), &req, &to, peer, "alice")
            .unwrap();
        assert_eq!(out.added.len(), 1);
        assert_eq!(
            reg.handle_register_to(t(1), &register(2, "c1", ""), &to, peer, "bob")
                .unwrap_err(),
            RegisterError::Forbidden
        );
        let v6 = register(1, "c2", "").to_string().replace(
            "To: \"Alice\" <sip:alice@127.0.0.1>",
            "To: <sip:alice@[2001:db8::1]:5060>",
        );
        let v6 = syntax::Request::try_from(v6).unwrap();
        assert_eq!(RegisterTo::of(&v6).unwrap().host(), "[2001:db8::1]");
        let bad = register(1, "c3", "").to_string().replace(
            "To: \"Alice\" <sip:alice@127.0.0.1>",
            "To: \"Alice <sip:alice@127.0.0.1>",
        );
        let bad = syntax::Request::try_from(bad).unwrap();
        let err = RegisterTo::of(&bad).unwrap_err();
        assert_eq!(err, RegisterError::BadHeader("To"));
        assert_eq!(err.status(), StatusCode::BadRequest);
    }
}
