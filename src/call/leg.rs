//! What both legs share: their own transaction table, identifiers drawn from
//! the RNG they were given, the TU's direct sends (ACK for 2xx, RFC 3261
//! §13.2.2.4) and the UAS side of in-dialog requests (BYE, re-INVITE, INFO,
//! OPTIONS, CANCEL; §12.2.2, §14.2, §15.1.2).

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::timer::TimerTable;
use super::wire::{finish, parse_request, reply, sdp_body};
use super::{CallError, LocalAddress};
use crate::sip::dialog::{Dialog, DialogId};
use crate::sip::syntax::{HeadersExt, Method, Request, Response, SipMessage};
use crate::sip::transaction::{
    branch_from_bits, CancelMatch, ClientKey, Outbox, Retransmit2xx, Retransmit2xxEvent, ServerKey,
    TimerConfig, TransactionTable,
};
use crate::sip::{Peer, Transmit};

/// The methods a leg answers inside its dialog (RFC 3261 §20.5 Allow).
pub(crate) const ALLOW: &str = "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";

/// What an in-dialog request asks of the leg, once answered where the leg
/// can answer by itself.
#[derive(Debug)]
pub(crate) enum InDialog {
    /// BYE: answered 200, the dialog is over (§15.1.2).
    Bye,
    /// A re-INVITE waiting for [`LegCore::answer_reinvite`] (§14.2), with
    /// its offer, or `None` when the peer wants our offer in the 200.
    ReInvite(Option<Vec<u8>>),
    /// INFO, answered 200 (RFC 6086), with its Content-Type and body.
    Info(Option<String>, Vec<u8>),
    /// An UPDATE without an offer, answered 200: the peer refreshed the
    /// session (RFC 3311, RFC 4028 §9).
    Refresh,
    /// Answered (OPTIONS, an error response, a CANCEL) or ignored.
    Done,
}

/// The header lines of our 2xx to a session refresh (RFC 4028 §9): its
/// Session-Expires echoed, with `refresher=uac` (the peer that sent it goes
/// on refreshing) when it named none, and `Require: timer` when the peer
/// supports the extension. Empty when the request carried no
/// Session-Expires (no session timer).
pub(crate) fn session_refresh_answer(request: &Request) -> Vec<String> {
    let Some(se) = super::wire::header(request, "Session-Expires")
        .or_else(|| super::wire::header(request, "x"))
    else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    if se.to_ascii_lowercase().contains("refresher=") {
        lines.push(format!("Session-Expires: {se}"));
    } else {
        lines.push(format!("Session-Expires: {se};refresher=uac"));
    }
    let supports = request.headers.iter().any(|h| {
        (h.name().eq_ignore_ascii_case("Supported") || h.name().eq_ignore_ascii_case("k"))
            && h.value()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("timer"))
    });
    if supports {
        lines.push("Require: timer".to_string());
    }
    lines
}

#[derive(Debug)]
struct PendingReInvite {
    key: ServerKey,
    request: Request,
    peer: Peer,
}

/// A request we sent and keep for the rare case that needs it again, as
/// its octets: one allocation where the parsed request holds one per
/// header, for the whole call (SPEC §6: under 20 KB per active call).
/// Parsed again only then: the ACK of a 2xx, sent again for every
/// retransmission of that 2xx (RFC 3261 §13.2.2.4); an answered INVITE,
/// slimmed, read again for a forked 2xx's ACK and BYE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeptRequest(Box<[u8]>);

impl KeptRequest {
    pub(crate) fn of(request: &Request) -> Self {
        KeptRequest(crate::sip::message::request_to_wire(request).into_boxed_slice())
    }

    /// The request again, as sent.
    pub(crate) fn request(&self) -> Result<Request, CallError> {
        parse_request(self.0.to_vec())
    }
}

/// The parts of an initial INVITE (RFC 3261 §8.1.1) besides the leg's own
/// Call-ID, From tag and Contact.
#[derive(Debug)]
pub(crate) struct InviteLines<'a> {
    pub(crate) request_uri: &'a str,
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
    pub(crate) cseq: u32,
    pub(crate) via: &'a str,
    pub(crate) extra: &'a [String],
    pub(crate) sdp: &'a [u8],
}

/// The state both legs keep besides their own.
#[derive(Debug)]
pub(crate) struct LegCore {
    pub(crate) table: TransactionTable,
    pub(crate) config: TimerConfig,
    pub(crate) timers: TimerTable,
    pub(crate) call_id: String,
    pub(crate) local_tag: String,
    pub(crate) local: LocalAddress,
    rng: StdRng,
    transmits: Outbox<Transmit>,
    /// Boxed, as `retransmit`: both exist only around a re-INVITE, and
    /// every leg (a retired one too) would carry their room.
    reinvite: Option<Box<PendingReInvite>>,
    retransmit: Option<Box<Retransmit2xx>>,
}

impl LegCore {
    pub(crate) fn new(rng: &mut impl RngCore, config: TimerConfig, local: LocalAddress) -> Self {
        let mut rng = StdRng::from_seed(rng.gen());
        let call_id = format!("{:032x}", rng.gen::<u128>());
        let local_tag = format!("{:016x}", rng.gen::<u64>());
        LegCore {
            table: TransactionTable::new(config),
            config,
            timers: TimerTable::default(),
            call_id,
            local_tag,
            local,
            rng,
            transmits: Outbox::new(),
            reinvite: None,
            retransmit: None,
        }
    }

    /// A Via value with a fresh RFC 3261 branch (§8.1.1.7) and `rport`
    /// (RFC 3581), so responses find us behind NAT.
    pub(crate) fn via(&mut self, peer: Peer) -> String {
        format!(
            "SIP/2.0/{} {};branch={};rport",
            peer.transport.via_token(),
            self.local.sent_by,
            branch_from_bits(self.rng.gen())
        )
    }

    /// A client nonce for digest authentication (RFC 7616 §3.4).
    pub(crate) fn cnonce(&mut self) -> String {
        format!("{:032x}", self.rng.gen::<u128>())
    }

    /// Our Contact header value (§8.1.1.8).
    pub(crate) fn contact(&self) -> String {
        format!("<{}>", self.local.contact)
    }

    /// An initial INVITE with an SDP offer (RFC 3261 §8.1.1, RFC 3264 §5).
    pub(crate) fn build_invite(&self, l: &InviteLines<'_>) -> Result<Request, CallError> {
        let mut text = format!(
            "INVITE {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {};tag={}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {} INVITE\r\nContact: {}\r\n",
            l.request_uri,
            l.via,
            l.from,
            self.local_tag,
            l.to,
            self.call_id,
            l.cseq,
            self.contact(),
        );
        for line in l.extra {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str(ALLOW);
        text.push_str("\r\nUser-Agent: powerdial\r\n");
        parse_request(finish(text, Some(("application/sdp", l.sdp)))?)
    }

    /// Moves what the table has to send behind what the leg already queued,
    /// so messages leave in the order they were made (DESIGN.md "Order").
    pub(crate) fn drain_table(&mut self) {
        while let Some(t) = self.table.poll_transmit() {
            self.transmits.push(t);
        }
        if let Some(r) = &mut self.retransmit {
            while let Some(t) = r.poll_transmit() {
                self.transmits.push(t);
            }
        }
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.drain_table();
        self.transmits.pop()
    }

    pub(crate) fn push(&mut self, peer: Peer, message: SipMessage) {
        self.drain_table();
        self.transmits.push(Transmit { peer, message });
    }

    /// The earliest of the leg's timers, its transactions' and the 2xx
    /// retransmission of a re-INVITE answer.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.next(),
            self.table.poll_timeout(),
            self.retransmit.as_ref().and_then(|r| r.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires the transaction timers and the 2xx retransmission due at `now`.
    pub(crate) fn handle_lower_timeouts(&mut self, now: Instant) {
        self.table.handle_timeout(now);
        if let Some(r) = &mut self.retransmit {
            r.handle_timeout(now);
            while let Some(t) = r.poll_transmit() {
                self.transmits.push(t);
            }
            if let Some(Retransmit2xxEvent::AckTimeout) = r.poll_event() {
                // §13.3.1.4 suggests a BYE; the session itself is fine (the
                // peer sent the offer), so the call goes on without it.
                tracing::debug!(call_id = %self.call_id, "no ACK for our re-INVITE 2xx");
            }
            if r.is_done() {
                self.retransmit = None;
            }
        }
    }

    /// Whether nothing is in flight: no transaction, no 2xx retransmission.
    pub(crate) fn is_idle(&self) -> bool {
        self.table.is_empty() && self.retransmit.is_none() && self.reinvite.is_none()
    }

    /// The ACK for a 2xx, sent by the TU, not a transaction (§13.2.2.4).
    pub(crate) fn send_ack(
        &mut self,
        dialog: &mut Dialog,
        peer: Peer,
    ) -> Result<KeptRequest, CallError> {
        let via = self.via(peer);
        let ack = dialog.new_request(Method::Ack, &via, None)?;
        let sent = KeptRequest::of(&ack);
        self.push(peer, SipMessage::Request(ack));
        Ok(sent)
    }

    /// `ack` again, for a retransmission of its 2xx (§13.2.2.4).
    pub(crate) fn resend_ack(&mut self, peer: Peer, ack: &KeptRequest) {
        match ack.request() {
            Ok(request) => self.push(peer, SipMessage::Request(request)),
            // We printed it ourselves: only a printer/parser mismatch
            // would land here.
            Err(error) => tracing::warn!(%error, call_id = %self.call_id, "ACK not resent"),
        }
    }

    /// A page-mode MESSAGE (RFC 3428) to `target` with a `text/plain`
    /// body, outside any dialog (no To tag: phones show such messages,
    /// while many refuse MESSAGE inside an INVITE dialog). It reuses this
    /// leg's Call-ID so its response comes back to the leg's transaction
    /// table, with a From tag of its own.
    pub(crate) fn send_message(
        &mut self,
        now: Instant,
        target: &str,
        peer: Peer,
        text: &str,
    ) -> Result<ClientKey, CallError> {
        let via = self.via(peer);
        let from_tag = format!("{:016x}", self.rng.gen::<u64>());
        let head = format!(
            "MESSAGE {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:powerdial@{domain}>;tag={from_tag}\r\nTo: <{target}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\n",
            domain = self.local.domain,
            call_id = self.call_id,
        );
        let wire = super::wire::finish(head, Some(("text/plain;charset=UTF-8", text.as_bytes())))?;
        let message = super::wire::parse_request(wire)?;
        Ok(self.table.send_request(now, peer, message)?)
    }

    /// A BYE in `dialog` (§15.1.1), which ends the dialog at once.
    pub(crate) fn send_bye(
        &mut self,
        now: Instant,
        dialog: &mut Dialog,
        peer: Peer,
    ) -> Result<ClientKey, CallError> {
        let via = self.via(peer);
        let bye = dialog.new_request(Method::Bye, &via, None)?;
        dialog.terminate();
        Ok(self.table.send_request(now, peer, bye)?)
    }

    /// A 2xx that is not for our dialog (another branch of a fork answered,
    /// §13.2.2.4): ACK it and BYE it at once. Failures are logged: the peer
    /// sent something we cannot address, and there is nothing else to do.
    pub(crate) fn ack_and_bye(
        &mut self,
        now: Instant,
        invite: &Request,
        response: &Response,
        peer: Peer,
    ) {
        let result = Dialog::from_uac_response(invite, response)
            .map_err(CallError::from)
            .and_then(|mut extra| {
                self.send_ack(&mut extra, peer)?;
                self.send_bye(now, &mut extra, peer)
            });
        if let Err(error) = result {
            tracing::warn!(%error, call_id = %self.call_id, "could not ACK/BYE an extra 2xx");
        }
    }

    /// Answers `key` with `response`, logging a refusal (the transaction
    /// ended on its own: a timeout or the peer gave up).
    pub(crate) fn respond(
        &mut self,
        now: Instant,
        key: &ServerKey,
        response: Result<Response, CallError>,
    ) {
        let result = response.and_then(|r| Ok(self.table.respond(now, key, r)?));
        if let Err(error) = result {
            tracing::debug!(%error, call_id = %self.call_id, "response not sent");
        }
    }

    fn simple(
        &mut self,
        now: Instant,
        key: &ServerKey,
        request: &Request,
        code: u16,
        reason: &str,
    ) {
        let tag = self.local_tag.clone();
        self.respond(now, key, reply(request, code, reason, &tag, &[], None));
    }

    /// A new request arrived at this leg (§12.2.2): CANCEL of a pending
    /// re-INVITE (§9.2), requests in `dialog`, and 481 for everything else.
    pub(crate) fn handle_request(
        &mut self,
        now: Instant,
        key: ServerKey,
        request: Request,
        peer: Peer,
        dialog: Option<&mut Dialog>,
    ) -> InDialog {
        if request.method == Method::Cancel {
            self.handle_cancel(now, key, &request);
            return InDialog::Done;
        }
        let dialog = match dialog {
            Some(d) if DialogId::of_request(&request).as_ref() == Some(d.id()) => d,
            _ => {
                if request.method == Method::Options {
                    let tag = self.local_tag.clone();
                    let allow = [ALLOW.to_string()];
                    self.respond(now, &key, reply(&request, 200, "OK", &tag, &allow, None));
                } else {
                    self.simple(now, &key, &request, 481, "Call/Transaction Does Not Exist");
                }
                return InDialog::Done;
            }
        };
        if let Err(error) = dialog.handle_request(&request) {
            let code = error.status().code();
            let reason = match code {
                500 => "Server Internal Error",
                481 => "Call/Transaction Does Not Exist",
                _ => "Bad Request",
            };
            self.simple(now, &key, &request, code, reason);
            return InDialog::Done;
        }
        match request.method {
            Method::Bye => {
                self.simple(now, &key, &request, 200, "OK");
                if let Some(pending) = self.reinvite.take() {
                    // The session is gone; the re-INVITE cannot succeed.
                    self.simple(
                        now,
                        &pending.key,
                        &pending.request,
                        487,
                        "Request Terminated",
                    );
                }
                InDialog::Bye
            }
            Method::Invite => {
                if self.reinvite.is_some() || self.retransmit.is_some() {
                    // An offer/answer exchange is still open (§14.2).
                    self.simple(now, &key, &request, 491, "Request Pending");
                    return InDialog::Done;
                }
                let offer = sdp_body(&request, &request.body);
                self.reinvite = Some(Box::new(PendingReInvite { key, request, peer }));
                InDialog::ReInvite(offer)
            }
            Method::Info => {
                self.simple(now, &key, &request, 200, "OK");
                let content_type = super::wire::header(&request, "Content-Type")
                    .or_else(|| super::wire::header(&request, "c"))
                    .map(str::to_string);
                InDialog::Info(content_type, request.body)
            }
            Method::Options => {
                let tag = self.local_tag.clone();
                let allow = [ALLOW.to_string()];
                self.respond(now, &key, reply(&request, 200, "OK", &tag, &allow, None));
                InDialog::Done
            }
            Method::Update if request.body.is_empty() => {
                // RFC 3311 without an offer: a session refresh (RFC 4028 §9).
                let tag = self.local_tag.clone();
                let extra = session_refresh_answer(&request);
                self.respond(now, &key, reply(&request, 200, "OK", &tag, &extra, None));
                InDialog::Refresh
            }
            Method::Update => {
                // A media change by UPDATE is not taken (re-INVITE is).
                self.simple(now, &key, &request, 488, "Not Acceptable Here");
                InDialog::Done
            }
            _ => {
                let tag = self.local_tag.clone();
                let allow = [ALLOW.to_string()];
                self.respond(
                    now,
                    &key,
                    reply(&request, 501, "Not Implemented", &tag, &allow, None),
                );
                InDialog::Done
            }
        }
    }

    /// CANCEL (§9.2): 200 and 487 for the re-INVITE it targets; 200 alone
    /// when that re-INVITE already has its final response (no effect);
    /// else 481.
    fn handle_cancel(&mut self, now: Instant, key: ServerKey, cancel: &Request) {
        let matched = self
            .table
            .cancel_match(cancel)
            .unwrap_or(CancelMatch::Unmatched);
        match (matched, self.reinvite.take()) {
            (CancelMatch::Pending(target), Some(pending)) if target == pending.key => {
                self.simple(now, &key, cancel, 200, "OK");
                self.simple(
                    now,
                    &pending.key,
                    &pending.request,
                    487,
                    "Request Terminated",
                );
            }
            (CancelMatch::Answered, pending) => {
                self.reinvite = pending;
                self.simple(now, &key, cancel, 200, "OK");
            }
            (_, pending) => {
                self.reinvite = pending;
                self.simple(now, &key, cancel, 481, "Call/Transaction Does Not Exist");
            }
        }
    }

    /// Answers the pending re-INVITE with 200 and `sdp` (§14.2) and keeps
    /// retransmitting it until the ACK (§13.3.1.4).
    pub(crate) fn answer_reinvite(&mut self, now: Instant, sdp: &[u8]) -> Result<(), CallError> {
        let pending = self.reinvite.take().ok_or(CallError::NoPendingReInvite)?;
        let mut extra = vec![format!("Contact: {}", self.contact()), ALLOW.to_string()];
        extra.extend(session_refresh_answer(&pending.request));
        let tag = self.local_tag.clone();
        let response = reply(
            &pending.request,
            200,
            "OK",
            &tag,
            &extra,
            Some(("application/sdp", sdp)),
        )?;
        self.table.respond(now, &pending.key, response.clone())?;
        self.retransmit = Some(Box::new(Retransmit2xx::new(
            now,
            pending.peer,
            response,
            self.config,
        )));
        Ok(())
    }

    /// An ACK outside any transaction: the ACK for our re-INVITE 2xx stops
    /// its retransmission (§13.3.1.4); others are dropped.
    pub(crate) fn handle_stray_ack(&mut self, now: Instant, ack: &Request) {
        if let Some(r) = &mut self.retransmit {
            if r.is_acked_by(ack) {
                r.handle_ack(now);
                self.retransmit = None;
            }
        }
    }
}

/// Whether `response` is a 2xx to an INVITE of this Call-ID: a
/// retransmission or another fork's answer, which must be ACKed (§13.2.2.4).
pub(crate) fn is_invite_2xx(response: &Response, call_id: &str) -> bool {
    let code = response.status_code.code();
    let is_invite = response
        .cseq_header()
        .ok()
        .and_then(|c| {
            c.value()
                .split_whitespace()
                .nth(1)
                .map(|m| m.eq_ignore_ascii_case("INVITE"))
        })
        .unwrap_or(false);
    let same_call = response
        .call_id_header()
        .is_ok_and(|c| c.value().trim() == call_id);
    (200..300).contains(&code) && is_invite && same_call
}

/// The To tag of a response, if any.
pub(crate) fn response_to_tag(response: &Response) -> Option<String> {
    DialogId::of_response(response).map(|id| id.remote_tag)
}
