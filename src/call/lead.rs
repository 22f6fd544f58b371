//! The lead leg: the UAC call to the carrier trunk for one number (SPEC §1
//! steps 3–5, R2, R8–R12).

use std::time::{Duration, Instant};

use rand::RngCore;

use super::closing::{slim_invite, ClosingLeg, Ending, SentInvite};
use super::leg::{is_invite_2xx, response_to_tag, InDialog, InviteLines, KeptRequest, LegCore};
use super::leg_journal::{Revision, SavedLegState};
use super::outcome::{LegRecord, Outcome};
use super::timer::Timer;
use super::trunk::{fails_over, TrunkFailure};
use super::wire::{header, lead_request_uri, sdp_body};
use super::{CallError, LocalAddress};
use crate::sip::dialog::Dialog;
use crate::sip::digest::DigestClient;
use crate::sip::syntax::{Method, Request, Response, SipMessage};
use crate::sip::transaction::{ClientKey, Event, Outbox, TimerConfig};
use crate::sip::{Peer, Transmit};

/// What the driver knows when it dials a lead (SPEC §1 step 3, R2).
#[derive(Debug, Clone)]
pub struct LeadParams {
    /// The trunk's address and transport: every request of the call goes there.
    pub trunk: Peer,
    /// The configured `[[trunk]] uri` (`sip:127.0.0.1:5080;transport=tcp`).
    pub trunk_uri: String,
    /// The lead's number, already E.164 and allowed by the trunk (R11 is
    /// checked before a leg is made: restricted numbers never reach the wire).
    pub number: String,
    /// The trunk's caller ID, the user part of our From (SPEC §1 step 3, R2).
    pub caller_id: String,
    /// `P-Asserted-Identity` (RFC 3325): a number (written as a SIP URI at
    /// our domain) or a whole `sip:`/`tel:` URI.
    pub p_asserted_identity: Option<String>,
    /// Digest username and password for a trunk that challenges (RFC 3261 §22.2).
    pub credentials: Option<(String, String)>,
    /// Our addresses.
    pub local: LocalAddress,
    /// Our SDP offer from the media relay; opaque here.
    pub offer_sdp: Vec<u8>,
    /// R8: 32 s, or 20 s with reduced ring time.
    pub ring_timeout: Duration,
    /// `[[trunk]] response_timeout`: no response at all by then → the
    /// INVITE is abandoned as `temporary_error` and may fail over.
    pub response_timeout: Option<Duration>,
    /// The hard maximum length of an answered call (default 4 h).
    pub max_call_length: Duration,
    /// The transaction timers (RFC 3261 Table 4).
    pub timers: TimerConfig,
    /// RFC 4028 session timer offered to the trunk (`Supported: timer`,
    /// `Session-Expires: N;refresher=uac`); `None` offers none.
    pub session_expires: Option<Duration>,
    /// In-dialog OPTIONS to the trunk every this long once answered
    /// (`[[trunk]] keepalive_interval`); `None` sends none.
    pub keepalive: Option<Duration>,
}

/// Why an answered lead call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The carrier sent BYE (answered 200; RFC 3261 §15.1.2).
    RemoteBye,
    /// [`LeadLeg::hangup`] (or `skip` after the answer): we sent BYE.
    LocalHangup,
    /// [`Timer::MaxCallLength`] expired: we sent BYE.
    MaxCallLength,
    /// No RTP from the peer for `dialer.rtp_timeout`: we sent BYE.
    RtpTimeout,
    /// No session refresh succeeded within the session interval (RFC 4028
    /// §10): we sent BYE.
    SessionExpired,
    /// A session refresh got 481 or 408, or no answer: the carrier no
    /// longer has the call (RFC 3261 §12.2.1.2, RFC 4028 §10); no BYE.
    SessionGone,
    /// An in-dialog OPTIONS (keepalive) got 481: the carrier no longer has
    /// the call (no BYE); or 408 or no answer at all: we sent BYE in case
    /// it still meters it (RFC 3261 §12.2.1.2).
    TrunkLost,
}

impl EndReason {
    /// A name for logs and events (`remote_bye`, `rtp_timeout`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::RemoteBye => "remote_bye",
            EndReason::LocalHangup => "local_hangup",
            EndReason::MaxCallLength => "max_call_length",
            EndReason::RtpTimeout => "rtp_timeout",
            EndReason::SessionExpired => "session_expired",
            EndReason::SessionGone => "session_gone",
            EndReason::TrunkLost => "trunk_lost",
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the lead leg tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadEvent {
    /// The first 101–199 response (180 Ringing, 183 Session Progress).
    Ringing {
        /// Its status code.
        status: u16,
    },
    /// A provisional response carried SDP (early media, SPEC §1 step 4, §6): relay
    /// the carrier's stream to the agent. Reported again when the SDP changes.
    EarlyMedia {
        /// The carrier's SDP answer.
        sdp: Vec<u8>,
    },
    /// 200 OK before the ring timeout: the ACK is already queued. This is
    /// the bridge trigger (SPEC §1 step 4, §6): switch the agent's media at once.
    Answered {
        /// The carrier's SDP answer.
        sdp: Vec<u8>,
    },
    /// The call will not be answered: the outcome is decided (R8–R12) and
    /// the dialer may move on, while the leg finishes its signalling
    /// (487/ACK, a crossing 200's ACK and BYE) until [`LeadEvent::Closed`].
    Unanswered {
        /// `no_answer`, `busy`, `skipped`, `temporary_error` or `restricted`.
        outcome: Outcome,
    },
    /// The carrier re-INVITEd (hold/unhold, RFC 3261 §14.2): answer with
    /// [`LeadLeg::answer_reinvite`] and the media module's answer (or our
    /// offer when `offer` is `None`).
    ReInvite {
        /// The carrier's new offer, if the re-INVITE carried one.
        offer: Option<Vec<u8>>,
    },
    /// An answered call ended (the agent goes to wrap-up, SPEC §1 step 5).
    Ended {
        /// Who or what ended it.
        reason: EndReason,
    },
    /// Nothing is left in flight: write the call record and drop the leg.
    Closed {
        /// The final outcome.
        outcome: Outcome,
        /// Timestamps, SIP status, ring time.
        record: LegRecord,
    },
}

/// What the INVITE is built from, kept for the digest retry.
#[derive(Debug, Clone)]
struct InviteTemplate {
    request_uri: String,
    from: String,
    to: String,
    pai: Option<String>,
    sdp: Vec<u8>,
    /// RFC 4028: the session interval offered, whole seconds.
    session_expires: Option<u64>,
}

/// An answered call's RFC 4028 session timer, as the 2xx set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SessionTimer {
    interval: Duration,
    /// `refresher=uac`: we send the refreshes (§7.4).
    we_refresh: bool,
}

impl SessionTimer {
    /// From a 2xx's Session-Expires (§7.4): `None` when it has none (the
    /// carrier runs no session timer) or names 0.
    fn of(response: &Response) -> Option<SessionTimer> {
        let v = header(response, "Session-Expires").or_else(|| header(response, "x"))?;
        let mut parts = v.split(';');
        let secs: u64 = parts.next()?.trim().parse().ok()?;
        if secs == 0 {
            return None;
        }
        let refresher = parts.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("refresher")
                .then(|| v.trim().to_ascii_lowercase())
        });
        Some(SessionTimer {
            interval: Duration::from_secs(secs),
            we_refresh: refresher.as_deref() != Some("uas"),
        })
    }

    /// §10: without a refresh by the interval minus min(32 s, interval/3),
    /// the session is over.
    fn expiry(self, now: Instant) -> Instant {
        now + self.interval - (self.interval / 3).min(Duration::from_secs(32))
    }
}

/// The INVITE is out; no final response yet (RFC 3261 §13.2.2).
#[derive(Debug)]
struct Inviting {
    invite: Request,
    key: ClientKey,
    cseq: u32,
    auth_retried: bool,
    /// A 422 (Session Interval Too Small) was answered once (RFC 4028 §7.4).
    timer_retried: bool,
    ringing_reported: bool,
    early_sdp: Option<Vec<u8>>,
}

/// Answered: the dialog is confirmed and ACKed.
#[derive(Debug)]
struct Talking {
    /// The INVITE, slimmed ([`slim_invite`]), as octets: a 2xx of another
    /// fork is ACKed and BYEd from it (RFC 3261 §13.2.2.4), and the call's
    /// [`Ending`] keeps it.
    invite: KeptRequest,
    key: ClientKey,
    dialog: Dialog,
    ack: KeptRequest,
    /// The RFC 4028 session timer, when the carrier's 2xx set one.
    session: Option<SessionTimer>,
    /// Our session refresh (re-INVITE) in flight.
    refresh: Option<ClientKey>,
    /// Our keepalive OPTIONS in flight.
    keepalive: Option<ClientKey>,
}

// The large variant is the live call; the state sits inside the leg and
// is replaced in place, so boxing it would only add an allocation at the
// answer (SPEC §6 answer → bridge).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum LeadState {
    Inviting(Inviting),
    Talking(Talking),
    /// The outcome is decided: the CANCEL is out (or waits for a
    /// provisional, §9.1) and the INVITE's final response is awaited, or
    /// the last transactions (BYE, the 487's ACK) run out; the dialog is
    /// kept to ACK a retransmitted 2xx again (§13.2.2.4).
    Ending(Ending),
    Closed,
}

/// The UAC call to the carrier for one lead (SPEC §1 step 3, R8–R12), sans-IO.
///
/// Drive it with [`handle_message`](Self::handle_message) for every message
/// with its Call-ID, [`handle_timeout`](Self::handle_timeout) at
/// [`poll_timeout`](Self::poll_timeout), and [`skip`](Self::skip) /
/// [`hangup`](Self::hangup); after each input drain
/// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event).
#[derive(Debug)]
pub struct LeadLeg {
    core: LegCore,
    trunk: Peer,
    template: InviteTemplate,
    digest: Option<DigestClient>,
    max_call_length: Duration,
    /// In-dialog OPTIONS interval once answered.
    keepalive: Option<Duration>,
    state: LeadState,
    outcome: Option<Outcome>,
    record: LegRecord,
    events: Outbox<LeadEvent>,
    /// Why the trunk failed the INVITE, if it did.
    failure: Option<TrunkFailure>,
    /// A provisional above 100 arrived: the lead's phone may have rung.
    alerted: bool,
}

impl LeadLeg {
    /// Builds the INVITE and hands it to the leg's transaction table (the
    /// first [`poll_transmit`](Self::poll_transmit) returns it) and starts
    /// [`Timer::RingTimeout`] from `now` (R8). Errors leave nothing sent.
    pub fn dial(
        now: Instant,
        params: LeadParams,
        rng: &mut impl RngCore,
    ) -> Result<Self, CallError> {
        let request_uri = lead_request_uri(&params.trunk_uri, &params.number)?;
        let domain = &params.local.domain;
        let from = as_name_addr(&params.caller_id, domain);
        let pai = params
            .p_asserted_identity
            .as_deref()
            .map(|p| as_name_addr(p, domain));
        let template = InviteTemplate {
            to: format!("<{request_uri}>"),
            request_uri,
            from,
            pai,
            sdp: params.offer_sdp,
            session_expires: params
                .session_expires
                .map(|d| d.as_secs())
                .filter(|s| *s > 0),
        };
        let mut core = LegCore::new(rng, params.timers, params.local);
        let via = core.via(params.trunk);
        let invite = build_invite(&core, &template, 1, &via, None)?;
        let key = core.table.send_request(now, params.trunk, invite.clone())?;
        core.timers
            .set(Timer::RingTimeout, now + params.ring_timeout);
        if let Some(t) = params.response_timeout {
            core.timers.set(Timer::NoResponse, now + t);
        }
        Ok(LeadLeg {
            core,
            trunk: params.trunk,
            template,
            digest: params
                .credentials
                .map(|(user, password)| DigestClient::new(user, password)),
            max_call_length: params.max_call_length,
            keepalive: params.keepalive.filter(|d| !d.is_zero()),
            state: LeadState::Inviting(Inviting {
                invite,
                key,
                cseq: 1,
                auth_retried: false,
                timer_retried: false,
                ringing_reported: false,
                early_sdp: None,
            }),
            outcome: None,
            record: LegRecord::new(now),
            events: Outbox::new(),
            failure: None,
            alerted: false,
        })
    }

    /// Why the trunk failed the INVITE (transport, Timer B, no response,
    /// a final status), once it did.
    pub fn trunk_failure(&self) -> Option<TrunkFailure> {
        self.failure
    }

    /// Whether the call may go on to the next trunk: the trunk failed it
    /// before the lead's phone could ring ([`fails_over`]).
    pub fn may_fail_over(&self) -> bool {
        self.failure.is_some_and(|f| fails_over(f, self.alerted))
    }

    /// The Call-ID: the driver routes every message carrying it here.
    pub fn call_id(&self) -> &str {
        &self.core.call_id
    }

    /// The outcome once decided (R8–R12).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The call record's facts so far.
    pub fn record(&self) -> &LegRecord {
        &self.record
    }

    /// What the leg journal holds for this leg (`call::leg_journal`): the
    /// INVITE in flight, keyed by its branch (a digest retry is a new
    /// INVITE, a new row), then the confirmed dialog (branch `""`) until a
    /// BYE is sent or received; `None` otherwise.
    pub fn journal_revision(&self) -> Option<(&str, Revision)> {
        match &self.state {
            LeadState::Inviting(s) => Some((s.key.branch.as_str(), Revision::Ringing(s.cseq))),
            LeadState::Talking(s) => Some(("", Revision::Answered(s.dialog.local_seq()))),
            _ => None,
        }
    }

    /// The state the journal saves (see [`journal_revision`](Self::journal_revision)).
    pub fn saved_state(&self) -> Option<SavedLegState> {
        match &self.state {
            LeadState::Inviting(s) => Some(SavedLegState::Ringing {
                invite: s.invite.clone(),
            }),
            LeadState::Talking(s) => Some(SavedLegState::Answered {
                dialog: s.dialog.save(),
            }),
            _ => None,
        }
    }

    /// Retires the leg once its outcome is stored: what is left of it is
    /// its last transactions, a [`ClosingLeg`] (SPEC §6: nothing of the call
    /// is held while they run out). A leg still ringing or answered is hung
    /// up first ([`hangup`](Self::hangup)); its events are dropped.
    pub fn into_closing(mut self, now: Instant) -> ClosingLeg {
        self.hangup(now);
        let ending = match self.state {
            LeadState::Ending(s) => s,
            _ => Ending::new(Vec::new(), None),
        };
        ClosingLeg::new(self.core, ending)
    }

    /// Where the leg's requests go (the trunk).
    pub fn peer(&self) -> Peer {
        self.trunk
    }

    /// Whether the leg has nothing left to do ([`LeadEvent::Closed`] was emitted).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, LeadState::Closed)
    }

    /// A message from the transport with this leg's Call-ID. Errors only for
    /// messages lacking the headers transaction matching needs.
    pub fn handle_message(
        &mut self,
        now: Instant,
        peer: Peer,
        message: SipMessage,
    ) -> Result<(), CallError> {
        let result = self.core.table.handle_message(now, peer, message);
        self.pump(now);
        Ok(result?)
    }

    /// Fires the leg's timers ([`Timer::RingTimeout`] first on a tie, so R8
    /// decides `no_answer` even when Timer B expires at the same instant),
    /// then its transactions' timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ring_deadline = self.core.timers.get(Timer::RingTimeout);
        while let Some(timer) = self.core.timers.pop_expired(now) {
            let state = std::mem::replace(&mut self.state, LeadState::Closed);
            self.state = match (state, timer) {
                (LeadState::Inviting(s), Timer::RingTimeout) => {
                    if let Some(deadline) = ring_deadline {
                        note_ring_timeout_lateness(
                            &self.core.call_id,
                            now.saturating_duration_since(deadline),
                        );
                    }
                    self.give_up(now, s, Outcome::NoAnswer)
                }
                (LeadState::Inviting(s), Timer::NoResponse) => {
                    // R10 "no response": the trunk never answered at all.
                    self.failure = Some(TrunkFailure::NoResponse);
                    self.give_up(now, s, Outcome::TemporaryError)
                }
                (LeadState::Talking(s), Timer::MaxCallLength) => {
                    self.bye(now, s, EndReason::MaxCallLength)
                }
                (LeadState::Talking(s), Timer::SessionRefresh) => self.refresh(now, s),
                (LeadState::Talking(s), Timer::SessionExpiry) => {
                    self.bye(now, s, EndReason::SessionExpired)
                }
                (LeadState::Talking(s), Timer::Keepalive) => self.keepalive(now, s),
                (state, _) => state,
            };
        }
        self.core.handle_lower_timeouts(now);
        self.pump(now);
    }

    /// The agent moved on or hung up (R9): while ringing, CANCEL (once a
    /// provisional arrived, §9.1) with outcome `skipped`; once answered, BYE.
    pub fn skip(&mut self, now: Instant) {
        self.hangup(now);
    }

    /// Hang up: CANCEL while ringing (outcome `skipped`, R9: any cancel from
    /// the agent side), BYE once answered (outcome stays `answered`).
    /// Nothing happens once the call is over.
    pub fn hangup(&mut self, now: Instant) {
        let state = std::mem::replace(&mut self.state, LeadState::Closed);
        self.state = match state {
            LeadState::Inviting(s) => self.give_up(now, s, Outcome::Skipped),
            LeadState::Talking(s) => self.bye(now, s, EndReason::LocalHangup),
            state => state,
        };
        self.pump(now);
    }

    /// The media relay saw no RTP from the carrier for `dialer.rtp_timeout`
    /// after the answer: BYE with [`EndReason::RtpTimeout`]; the outcome
    /// stays `answered` and the end time is now. Nothing happens before the
    /// answer (R8's ring timeout governs) or once the call is over.
    pub fn rtp_timeout(&mut self, now: Instant) {
        let state = std::mem::replace(&mut self.state, LeadState::Closed);
        self.state = match state {
            LeadState::Talking(s) => self.bye(now, s, EndReason::RtpTimeout),
            state => state,
        };
        self.pump(now);
    }

    /// Sending to `peer` failed (a refused TCP connection, an ICMP port
    /// unreachable): every transaction of this leg with that peer is told
    /// (RFC 3261 §17.1.4, §18.4), so an INVITE without a final response
    /// ends at once as `temporary_error` (R10) instead of at Timer B.
    pub fn handle_transport_error(&mut self, now: Instant, peer: Peer) {
        self.core.table.handle_transport_error(now, peer);
        self.pump(now);
    }

    /// Answers the carrier's pending re-INVITE ([`LeadEvent::ReInvite`])
    /// with 200 and `sdp` (RFC 3261 §14.2), retransmitted until ACKed.
    pub fn answer_reinvite(&mut self, now: Instant, sdp: &[u8]) -> Result<(), CallError> {
        let result = self.core.answer_reinvite(now, sdp);
        self.pump(now);
        result
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.poll_transmit()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<LeadEvent> {
        self.events.pop()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn pump(&mut self, now: Instant) {
        while let Some(event) = self.core.table.poll_event() {
            self.core.drain_table();
            let state = std::mem::replace(&mut self.state, LeadState::Closed);
            self.state = match state {
                LeadState::Inviting(s) => self.on_inviting(now, s, event),
                LeadState::Talking(s) => self.on_talking(now, s, event),
                LeadState::Ending(mut s) => {
                    if let Some(status) = s.handle(&mut self.core, now, event) {
                        self.record.sip_status = Some(status);
                    }
                    LeadState::Ending(s)
                }
                LeadState::Closed => {
                    self.on_closed(now, event);
                    LeadState::Closed
                }
            };
        }
        self.core.drain_table();
        if let LeadState::Ending(s) = &self.state {
            if s.is_answered() && self.core.is_idle() {
                self.state = LeadState::Closed;
                let outcome = self.outcome.unwrap_or(Outcome::TemporaryError);
                self.events.push(LeadEvent::Closed {
                    outcome,
                    record: self.record,
                });
            }
        }
    }

    fn on_inviting(&mut self, now: Instant, mut s: Inviting, event: Event) -> LeadState {
        match event {
            Event::Provisional { key, response } if key == s.key => {
                let status = response.status_code.code();
                self.core.timers.stop(Timer::NoResponse);
                if status > 100 {
                    self.alerted = true;
                }
                if status > 100 && !s.ringing_reported {
                    s.ringing_reported = true;
                    self.events.push(LeadEvent::Ringing { status });
                }
                if let Some(sdp) = sdp_body(&response, &response.body) {
                    if s.early_sdp.as_ref() != Some(&sdp) {
                        s.early_sdp = Some(sdp.clone());
                        self.events.push(LeadEvent::EarlyMedia { sdp });
                    }
                }
                LeadState::Inviting(s)
            }
            Event::Final { key, response } if key == s.key => {
                let status = response.status_code.code();
                self.core.timers.stop(Timer::NoResponse);
                match status {
                    200..=299 => self.answered(now, s, response),
                    401 | 407 if !s.auth_retried && self.digest.is_some() => {
                        self.retry_with_credentials(now, s, &response)
                    }
                    422 if !s.timer_retried && self.template.session_expires.is_some() => {
                        self.retry_with_min_se(now, s, &response)
                    }
                    _ => {
                        self.failure = Some(TrunkFailure::Status(status));
                        self.failed(now, s, Outcome::from_final_status(status), Some(status))
                    }
                }
            }
            Event::ClientTimeout { key } if key == s.key => {
                // R10: no response at all (Timer B).
                self.failure = Some(TrunkFailure::Timeout);
                self.failed(now, s, Outcome::TemporaryError, None)
            }
            Event::ClientTransportError { key } if key == s.key => {
                // R10: transport failure.
                self.failure = Some(TrunkFailure::Transport);
                self.failed(now, s, Outcome::TemporaryError, None)
            }
            Event::NewRequest { key, request, peer } => {
                self.core.handle_request(now, key, request, peer, None);
                LeadState::Inviting(s)
            }
            _ => LeadState::Inviting(s),
        }
    }

    fn on_talking(&mut self, now: Instant, mut s: Talking, event: Event) -> LeadState {
        match event {
            Event::NewRequest { key, request, peer } => {
                match self
                    .core
                    .handle_request(now, key, request, peer, Some(&mut s.dialog))
                {
                    InDialog::Bye => {
                        self.stop_talk_timers();
                        self.record.end(now);
                        self.events.push(LeadEvent::Ended {
                            reason: EndReason::RemoteBye,
                        });
                        return self.ending(s);
                    }
                    InDialog::ReInvite(offer) => {
                        self.refreshed(now, &s);
                        self.events.push(LeadEvent::ReInvite { offer });
                    }
                    InDialog::Refresh => self.refreshed(now, &s),
                    InDialog::Info(..) | InDialog::Done => {}
                }
                LeadState::Talking(s)
            }
            Event::Final { key, response } if s.refresh.as_ref() == Some(&key) => {
                self.refresh_answered(now, s, &response)
            }
            Event::Final { key, response } if s.keepalive.as_ref() == Some(&key) => {
                s.keepalive = None;
                match response.status_code.code() {
                    481 => self.session_gone(now, s, EndReason::TrunkLost),
                    408 => self.bye(now, s, EndReason::TrunkLost),
                    // Any other final response comes from a UA that still
                    // has the dialog (a 405 or 501 included, RFC 3261 §11).
                    _ => LeadState::Talking(s),
                }
            }
            Event::ClientTimeout { key } | Event::ClientTransportError { key }
                if s.keepalive.as_ref() == Some(&key) =>
            {
                // No answer is a 408 (§8.1.3.1): BYE in case the carrier
                // still has the call and only its answers are lost.
                s.keepalive = None;
                self.bye(now, s, EndReason::TrunkLost)
            }
            Event::ClientTimeout { key } | Event::ClientTransportError { key }
                if s.refresh.as_ref() == Some(&key) =>
            {
                self.session_gone(now, s, EndReason::SessionGone)
            }
            Event::StrayResponse { response, peer } => {
                self.stray_2xx(now, &s, &response, peer);
                LeadState::Talking(s)
            }
            Event::StrayAck { request, .. } => {
                self.core.handle_stray_ack(now, &request);
                LeadState::Talking(s)
            }
            _ => LeadState::Talking(s),
        }
    }

    fn on_closed(&mut self, now: Instant, event: Event) {
        if let Event::NewRequest { key, request, peer } = event {
            self.core.handle_request(now, key, request, peer, None);
        }
    }

    /// A 2xx outside any transaction (§13.2.2.4): our dialog's again → the
    /// same ACK again; another To tag (the carrier forked) → ACK and BYE.
    fn stray_2xx(&mut self, now: Instant, s: &Talking, response: &Response, peer: Peer) {
        if !is_invite_2xx(response, &self.core.call_id) {
            return;
        }
        if response_to_tag(response).as_deref() == Some(s.dialog.id().remote_tag.as_str()) {
            self.core.resend_ack(self.trunk, &s.ack);
        } else {
            match s.invite.request() {
                Ok(invite) => self.core.ack_and_bye(now, &invite, response, peer),
                Err(error) => {
                    tracing::warn!(%error, call_id = %self.core.call_id, "forked 2xx not ACKed")
                }
            }
        }
    }

    /// The answered call is over: what is left is its [`Ending`].
    fn ending(&self, s: Talking) -> LeadState {
        // We printed it ourselves: only a printer/parser mismatch would
        // leave the ending without it (a forked 2xx then goes un-ACKed).
        let sent = match s.invite.request() {
            Ok(invite) => vec![SentInvite {
                key: s.key,
                invite,
                peer: self.trunk,
            }],
            Err(error) => {
                tracing::warn!(%error, call_id = %self.core.call_id, "kept INVITE unreadable");
                Vec::new()
            }
        };
        LeadState::Ending(Ending::new(sent, Some((s.dialog, s.ack, self.trunk))))
    }

    /// Ring timeout (R8) or skip (R9): the outcome is decided now; CANCEL
    /// goes out now if a provisional arrived, else when one does (§9.1;
    /// with none, Timer B ends the abandoned INVITE).
    fn give_up(&mut self, now: Instant, s: Inviting, outcome: Outcome) -> LeadState {
        self.core.timers.stop(Timer::RingTimeout);
        self.core.timers.stop(Timer::NoResponse);
        self.decide(now, outcome);
        if let Err(error) = self.core.table.cancel(now, &s.key) {
            tracing::debug!(%error, call_id = %self.core.call_id, "CANCEL not possible");
        }
        LeadState::Ending(Ending::cancelling(SentInvite {
            key: s.key,
            invite: s.invite,
            peer: self.trunk,
        }))
    }

    fn decide(&mut self, now: Instant, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.record.stop_ringing(now);
        self.record.end(now);
        self.events.push(LeadEvent::Unanswered { outcome });
    }

    fn failed(
        &mut self,
        now: Instant,
        s: Inviting,
        outcome: Outcome,
        status: Option<u16>,
    ) -> LeadState {
        self.core.timers.stop(Timer::RingTimeout);
        self.core.timers.stop(Timer::NoResponse);
        self.record.sip_status = status;
        self.decide(now, outcome);
        let sent = SentInvite {
            key: s.key,
            invite: s.invite,
            peer: self.trunk,
        };
        LeadState::Ending(Ending::new(vec![sent], None))
    }

    /// 200 OK before the ring timeout: ACK and report `Answered` in the same
    /// step — the bridge trigger, nothing slow on this path (SPEC §1 step 4, §6).
    fn answered(&mut self, now: Instant, s: Inviting, response: Response) -> LeadState {
        let status = response.status_code.code();
        let dialog = Dialog::from_uac_response(&s.invite, &response)
            .map_err(CallError::from)
            .and_then(|mut dialog| {
                let ack = self.core.send_ack(&mut dialog, self.trunk)?;
                Ok((dialog, ack))
            });
        let (dialog, ack) = match dialog {
            Ok(d) => d,
            Err(error) => {
                // A 2xx without Contact or To tag cannot be ACKed (§12.1.2):
                // the carrier misbehaves; a retry later may work.
                tracing::warn!(%error, call_id = %self.core.call_id, "unusable 2xx");
                return self.failed(now, s, Outcome::TemporaryError, Some(status));
            }
        };
        self.core.timers.stop(Timer::RingTimeout);
        self.core
            .timers
            .set(Timer::MaxCallLength, now + self.max_call_length);
        let session = self
            .template
            .session_expires
            .and_then(|_| SessionTimer::of(&response));
        if let Some(t) = session {
            self.schedule_session(now, t);
        }
        if let Some(k) = self.keepalive {
            self.core.timers.set(Timer::Keepalive, now + k);
        }
        self.outcome = Some(Outcome::Answered);
        self.record.sip_status = Some(status);
        self.record.answered = Some(now);
        self.record.stop_ringing(now);
        self.events.push(LeadEvent::Answered { sdp: response.body });
        let mut invite = s.invite;
        slim_invite(&mut invite);
        LeadState::Talking(Talking {
            invite: KeptRequest::of(&invite),
            key: s.key,
            dialog,
            ack,
            session,
            refresh: None,
            keepalive: None,
        })
    }

    /// The timers of an answered call, stopped as it ends.
    fn stop_talk_timers(&mut self) {
        for t in [
            Timer::MaxCallLength,
            Timer::SessionRefresh,
            Timer::SessionExpiry,
            Timer::Keepalive,
        ] {
            self.core.timers.stop(t);
        }
    }

    /// Sends the keepalive: an in-dialog OPTIONS to the trunk (RFC 3261
    /// §11: a UA answers OPTIONS in a dialog it has; §12.2.2: 481 when it
    /// has none), so a call the carrier lost (its restart, a failover on
    /// its side) is ended here instead of billing the agent's time
    /// (SPEC §1). One at a time; the next is due an interval later.
    fn keepalive(&mut self, now: Instant, mut s: Talking) -> LeadState {
        let Some(interval) = self.keepalive else {
            return LeadState::Talking(s);
        };
        self.core.timers.set(Timer::Keepalive, now + interval);
        if s.keepalive.is_some() {
            return LeadState::Talking(s);
        }
        let via = self.core.via(self.trunk);
        let sent = s
            .dialog
            .new_request(Method::Options, &via, None)
            .map_err(CallError::from)
            .and_then(|r| Ok(self.core.table.send_request(now, self.trunk, r)?));
        match sent {
            Ok(key) => s.keepalive = Some(key),
            Err(error) => {
                tracing::warn!(%error, call_id = %self.core.call_id, "keepalive OPTIONS not sent");
            }
        }
        LeadState::Talking(s)
    }

    /// RFC 4028 §10: the refresher refreshes at half the interval; either
    /// side ends the session when no refresh came by its expiry.
    fn schedule_session(&mut self, now: Instant, t: SessionTimer) {
        if t.we_refresh {
            self.core
                .timers
                .set(Timer::SessionRefresh, now + t.interval / 2);
        }
        self.core.timers.set(Timer::SessionExpiry, t.expiry(now));
    }

    /// The carrier refreshed the session (re-INVITE or UPDATE, §9).
    fn refreshed(&mut self, now: Instant, s: &Talking) {
        if let Some(t) = s.session {
            self.core.timers.set(Timer::SessionExpiry, t.expiry(now));
        }
    }

    /// Sends our session refresh: a re-INVITE with our offer unchanged
    /// (RFC 3264 §8: same `o=` version) and the Session-Expires the
    /// carrier set (RFC 4028 §7.4, §10).
    fn refresh(&mut self, now: Instant, mut s: Talking) -> LeadState {
        let (Some(t), None) = (s.session, &s.refresh) else {
            return LeadState::Talking(s);
        };
        let via = self.core.via(self.trunk);
        let extra = [
            format!("Session-Expires: {};refresher=uac", t.interval.as_secs()),
            "Supported: timer".to_string(),
            super::leg::ALLOW.to_string(),
        ];
        let body = crate::sip::dialog::Body {
            content_type: "application/sdp",
            bytes: &self.template.sdp,
        };
        let sent = s
            .dialog
            .new_request_with(Method::Invite, &via, &extra, Some(body))
            .map_err(CallError::from)
            .and_then(|r| Ok(self.core.table.send_request(now, self.trunk, r)?));
        match sent {
            Ok(key) => s.refresh = Some(key),
            Err(error) => {
                tracing::warn!(%error, call_id = %self.core.call_id, "session refresh not sent");
            }
        }
        LeadState::Talking(s)
    }

    /// The final response to our session refresh: a 2xx is ACKed
    /// (§13.2.2.4) and the next refresh scheduled; 481 or 408 mean the
    /// carrier no longer has the call (RFC 3261 §12.2.1.2); other failures
    /// (491, 5xx) leave the session to its expiry, with one more try at
    /// three quarters of the interval.
    fn refresh_answered(&mut self, now: Instant, mut s: Talking, response: &Response) -> LeadState {
        s.refresh = None;
        let code = response.status_code.code();
        match code {
            200..=299 => {
                let _ = s.dialog.handle_response(response);
                match self.core.send_ack(&mut s.dialog, self.trunk) {
                    Ok(ack) => s.ack = ack,
                    Err(error) => {
                        tracing::warn!(%error, call_id = %self.core.call_id, "ACK of the session refresh not sent")
                    }
                }
                let t = SessionTimer::of(response).or(s.session);
                s.session = t;
                if let Some(t) = t {
                    self.schedule_session(now, t);
                }
                LeadState::Talking(s)
            }
            481 | 408 => self.session_gone(now, s, EndReason::SessionGone),
            _ => {
                tracing::info!(status = code, call_id = %self.core.call_id, "session refresh refused; trying once more before the session expires");
                if let Some(t) = s.session {
                    let retry = now + t.interval / 4;
                    if self
                        .core
                        .timers
                        .get(Timer::SessionExpiry)
                        .is_some_and(|e| retry < e)
                    {
                        self.core.timers.set(Timer::SessionRefresh, retry);
                    }
                }
                LeadState::Talking(s)
            }
        }
    }

    /// The carrier lost the call (481/408/no answer to a refresh, 481 to a
    /// keepalive): the call ended without a BYE.
    fn session_gone(&mut self, now: Instant, mut s: Talking, reason: EndReason) -> LeadState {
        self.stop_talk_timers();
        self.record.end(now);
        s.dialog.terminate();
        self.events.push(LeadEvent::Ended { reason });
        self.ending(s)
    }

    /// 401/407: the INVITE again with credentials and CSeq+1 (RFC 3261
    /// §22.2, §8.1.3.5), once; the ring timeout keeps counting from the
    /// first INVITE (R8).
    fn retry_with_credentials(
        &mut self,
        now: Instant,
        s: Inviting,
        challenge: &Response,
    ) -> LeadState {
        let status = challenge.status_code.code();
        let cnonce = self.core.cnonce();
        let Some(digest) = self.digest.as_mut() else {
            return self.failed(now, s, Outcome::Restricted, Some(status));
        };
        let auth = match digest.answer(challenge, "INVITE", &self.template.request_uri, &cnonce) {
            Ok(header) => header.to_string(),
            Err(error) => {
                tracing::info!(%error, call_id = %self.core.call_id, "trunk challenge not answerable");
                return self.failed(now, s, Outcome::Restricted, Some(status));
            }
        };
        let cseq = s.cseq.saturating_add(1);
        let via = self.core.via(self.trunk);
        let sent =
            build_invite(&self.core, &self.template, cseq, &via, Some(&auth)).and_then(|invite| {
                let key = self
                    .core
                    .table
                    .send_request(now, self.trunk, invite.clone())?;
                Ok((invite, key))
            });
        match sent {
            Ok((invite, key)) => LeadState::Inviting(Inviting {
                invite,
                key,
                cseq,
                auth_retried: true,
                timer_retried: s.timer_retried,
                ringing_reported: s.ringing_reported,
                early_sdp: s.early_sdp,
            }),
            Err(error) => {
                tracing::warn!(%error, call_id = %self.core.call_id, "authenticated INVITE not sent");
                self.failed(now, s, Outcome::Restricted, Some(status))
            }
        }
    }

    /// 422 Session Interval Too Small: the INVITE again with CSeq+1 and
    /// the carrier's Min-SE as our Session-Expires (RFC 4028 §7.4), once;
    /// without a usable Min-SE the session timer is dropped instead. The
    /// ring timeout keeps counting (R8).
    fn retry_with_min_se(&mut self, now: Instant, s: Inviting, response: &Response) -> LeadState {
        let status = response.status_code.code();
        let min_se = header(response, "Min-SE")
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|v| *v > 0);
        self.template.session_expires = match (min_se, self.template.session_expires) {
            (Some(m), Some(ours)) => Some(m.max(ours)),
            _ => None,
        };
        let cseq = s.cseq.saturating_add(1);
        let via = self.core.via(self.trunk);
        let sent = build_invite(&self.core, &self.template, cseq, &via, None).and_then(|invite| {
            let key = self
                .core
                .table
                .send_request(now, self.trunk, invite.clone())?;
            Ok((invite, key))
        });
        match sent {
            Ok((invite, key)) => LeadState::Inviting(Inviting {
                invite,
                key,
                cseq,
                auth_retried: false,
                timer_retried: true,
                ringing_reported: s.ringing_reported,
                early_sdp: s.early_sdp,
            }),
            Err(error) => {
                tracing::warn!(%error, call_id = %self.core.call_id, "INVITE after 422 not sent");
                self.failed(now, s, Outcome::TemporaryError, Some(status))
            }
        }
    }

    fn bye(&mut self, now: Instant, mut s: Talking, reason: EndReason) -> LeadState {
        self.stop_talk_timers();
        self.record.end(now);
        if let Err(error) = self.core.send_bye(now, &mut s.dialog, self.trunk) {
            tracing::warn!(%error, call_id = %self.core.call_id, "BYE not sent");
        }
        self.events.push(LeadEvent::Ended { reason });
        self.ending(s)
    }
}

/// `<uri>` for a value that is a URI already, `<sip:value@domain>` for a
/// number or user.
fn as_name_addr(value: &str, domain: &str) -> String {
    let v = value.trim();
    if v.starts_with('<') {
        v.to_string()
    } else if v.contains(':') {
        format!("<{v}>")
    } else {
        format!("<sip:{v}@{domain}>")
    }
}

fn build_invite(
    core: &LegCore,
    t: &InviteTemplate,
    cseq: u32,
    via: &str,
    auth: Option<&str>,
) -> Result<Request, CallError> {
    let mut extra: Vec<String> = Vec::new();
    if let Some(pai) = &t.pai {
        extra.push(format!("P-Asserted-Identity: {pai}"));
    }
    if let Some(se) = t.session_expires {
        // RFC 4028 §7.1: we offer to refresh; the carrier's 2xx decides.
        extra.push("Supported: timer".to_string());
        extra.push(format!("Session-Expires: {se};refresher=uac"));
    }
    if let Some(auth) = auth {
        extra.push(auth.to_string());
    }
    let lines = InviteLines {
        request_uri: &t.request_uri,
        from: &t.from,
        to: &t.to,
        cseq,
        via,
        extra: &extra,
        sdp: &t.sdp,
    };
    core.build_invite(&lines)
}

/// How late the ring timeout fired (SPEC §6: the CANCEL within 10 ms of
/// the configured ring time, R8), as a histogram for `GET /metrics`; a
/// firing later than [`RING_LATE_WARN`] is logged, since it means the
/// process was too busy to keep the rule (more calls than the cores carry).
fn note_ring_timeout_lateness(call_id: &str, late: Duration) {
    crate::metrics::metrics()
        .ring_timeout_late_seconds
        .observe(late.as_secs_f64());
    if late >= RING_LATE_WARN {
        tracing::warn!(
            call_id,
            late_ms = late.as_secs_f64() * 1000.0,
            "ring timeout fired late: the server is overloaded"
        );
    }
}

/// The lateness of a ring timeout worth a warning: half of SPEC §6's 10 ms.
const RING_LATE_WARN: Duration = Duration::from_millis(5);
