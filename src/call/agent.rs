//! The agent leg: the nailed-up UAC call to the agent's phone (SPEC §1 steps
//! 2 and 6, §5 DTMF), forked in parallel to every registered contact.

use std::time::{Duration, Instant};

use rand::RngCore;

use super::closing::{slim_invite, ClosingLeg, Ending, SentInvite};
use super::lead::EndReason;
use super::leg::{is_invite_2xx, response_to_tag, InDialog, InviteLines, KeptRequest, LegCore};
use super::leg_journal::{Revision, SavedLegState};
use super::timer::Timer;
use super::{CallError, LocalAddress};
use crate::sip::dialog::Dialog;
use crate::sip::syntax::{Request, Response, SipMessage};
use crate::sip::transaction::{ClientKey, Event, Outbox, TimerConfig};
use crate::sip::{Peer, Transmit};

/// One registered contact of the agent (RFC 3261 §10.3 binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTarget {
    /// Where the phone is reached: the registration's source address and
    /// transport (so phones behind NAT are reached).
    pub peer: Peer,
    /// The Contact URI it registered: the Request-URI of its fork.
    pub contact: String,
}

/// What the driver knows when it calls the agent (SPEC §1 step 2).
#[derive(Debug, Clone)]
pub struct AgentParams {
    /// Every current binding; the INVITE is forked to all in parallel.
    pub targets: Vec<AgentTarget>,
    /// The agent's address of record, our To (`sip:alice@domain`).
    pub agent_uri: String,
    /// Our From, e.g. `"powerdial" <sip:powerdial@domain>`.
    pub from: String,
    /// Our addresses.
    pub local: LocalAddress,
    /// Our SDP offer from the media relay; opaque here.
    pub offer_sdp: Vec<u8>,
    /// How long the phone may ring before the leg gives up.
    pub answer_timeout: Duration,
    /// The transaction timers (RFC 3261 Table 4).
    pub timers: TimerConfig,
}

/// A DTMF digit the agent pressed, from SIP INFO (`application/dtmf-relay`
/// or `application/dtmf`); RFC 4733 in-band events are the media module's.
pub type Dtmf = char;

/// What the agent leg tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// A phone rings (first 101–199 of any fork).
    Ringing,
    /// The first 2xx: ACKed; the other forks are being CANCELled.
    Connected {
        /// The phone's SDP answer.
        sdp: Vec<u8>,
    },
    /// No fork answered: the best final status (RFC 3261 §16.7: a 6xx
    /// first, else 4xx before 5xx), `None` when none arrived (timeouts,
    /// transport errors, the answer timeout, or a hang-up before answer).
    Failed {
        /// The chosen status.
        status: Option<u16>,
    },
    /// The phone re-INVITEd (hold/unhold): answer with
    /// [`AgentLeg::answer_reinvite`].
    ReInvite {
        /// The phone's offer, if any.
        offer: Option<Vec<u8>>,
    },
    /// The agent pressed a key (SPEC §5 DTMF: `*` next, `#` hang up, `0` pause).
    Dtmf(Dtmf),
    /// The connected leg ended; `RemoteBye` means the agent hung up (pause
    /// the agent, CANCEL/BYE the lead, R9).
    Ended {
        /// Who ended it.
        reason: EndReason,
    },
    /// Nothing is left in flight; drop the leg.
    Closed,
}

#[derive(Debug)]
struct Fork {
    target: AgentTarget,
    invite: Request,
    key: ClientKey,
    /// The final status, or `Some(None)` for a timeout / transport error.
    result: Option<Option<u16>>,
}

#[derive(Debug)]
struct Inviting {
    forks: Vec<Fork>,
    ringing_reported: bool,
}

#[derive(Debug)]
struct Connected {
    forks: Vec<Fork>,
    winner: usize,
    dialog: Dialog,
    ack: KeptRequest,
}

// The large variant is the connected leg; the state sits inside the leg
// and is replaced in place, so boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum AgentState {
    Inviting(Inviting),
    Connected(Connected),
    /// Over: the last transactions run out (BYE, the 487s' ACKs); a fork
    /// answering late is ACKed and BYEd, our dialog's 2xx ACKed again.
    Ending(Ending),
    Closed,
}

/// What an [`Ending`] keeps of the forks.
fn sent(forks: Vec<Fork>) -> Vec<SentInvite> {
    forks
        .into_iter()
        .map(|f| SentInvite {
            key: f.key,
            invite: f.invite,
            peer: f.target.peer,
        })
        .collect()
}

/// The nailed-up call to the agent's phone (SPEC §1 step 2), sans-IO, driven
/// like [`LeadLeg`](super::LeadLeg).
#[derive(Debug)]
pub struct AgentLeg {
    core: LegCore,
    state: AgentState,
    connected_at: Option<Instant>,
    events: Outbox<AgentEvent>,
}

impl AgentLeg {
    /// Forks the INVITE to every target in parallel (same Call-ID, From tag
    /// and CSeq, one branch each, as a forking proxy would) and starts
    /// [`Timer::AnswerTimeout`]. No target → [`CallError::NoBinding`] and
    /// nothing is sent; all INVITEs are built before any is sent.
    pub fn dial(
        now: Instant,
        params: AgentParams,
        rng: &mut impl RngCore,
    ) -> Result<Self, CallError> {
        if params.targets.is_empty() {
            return Err(CallError::NoBinding);
        }
        let mut core = LegCore::new(rng, params.timers, params.local);
        let to = format!("<{}>", params.agent_uri.trim_matches(['<', '>']));
        let mut built = Vec::with_capacity(params.targets.len());
        for target in params.targets {
            let via = core.via(target.peer);
            let lines = InviteLines {
                request_uri: &target.contact,
                from: &params.from,
                to: &to,
                cseq: 1,
                via: &via,
                extra: &[],
                sdp: &params.offer_sdp,
            };
            let invite = core.build_invite(&lines)?;
            let key = ClientKey::from_request(&invite)?;
            built.push(Fork {
                target,
                invite,
                key,
                result: None,
            });
        }
        for fork in &built {
            core.table
                .send_request(now, fork.target.peer, fork.invite.clone())?;
        }
        core.timers
            .set(Timer::AnswerTimeout, now + params.answer_timeout);
        Ok(AgentLeg {
            core,
            state: AgentState::Inviting(Inviting {
                forks: built,
                ringing_reported: false,
            }),
            connected_at: None,
            events: Outbox::new(),
        })
    }

    /// The Call-ID: the driver routes every message carrying it here.
    pub fn call_id(&self) -> &str {
        &self.core.call_id
    }

    /// When the phone answered, if it has.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// Whether the leg is connected (answered and not ended).
    pub fn is_connected(&self) -> bool {
        matches!(self.state, AgentState::Connected(_))
    }

    /// Shows `text` on the phone (a MESSAGE, RFC 3428): whom the agent is
    /// now talking to. Nothing happens unless connected.
    pub fn send_text(&mut self, now: Instant, text: &str) {
        if let AgentState::Connected(s) = &self.state {
            let target = s.forks[s.winner].target.clone();
            if let Err(error) = self
                .core
                .send_message(now, &target.contact, target.peer, text)
            {
                tracing::debug!(%error, call_id = %self.core.call_id, "MESSAGE not sent");
            }
        }
        self.pump(now);
    }

    /// Where the phone that answered is reached (its registered source).
    pub fn connected_peer(&self) -> Option<Peer> {
        match &self.state {
            AgentState::Connected(s) => s.forks.get(s.winner).map(|f| f.target.peer),
            _ => None,
        }
    }

    /// Whether the phone is still being called (no answer, not hung up).
    pub fn is_inviting(&self) -> bool {
        matches!(self.state, AgentState::Inviting(_))
    }

    /// What the leg journal holds for this leg (`call::leg_journal`), one
    /// entry per row by its [`LegKey`](super::leg_journal::LegKey) branch:
    /// every fork still ringing (its own INVITE, to be CANCELled on its own
    /// branch, RFC 3261 §9.1) while the phones are called, then the
    /// confirmed dialog with the phone (branch `""`) until a BYE is sent or
    /// received. Allocates nothing (checked after every input).
    pub fn journal_revisions(&self) -> impl Iterator<Item = (&str, Revision)> + '_ {
        let (forks, dialog) = match &self.state {
            AgentState::Inviting(s) => (&s.forks[..], None),
            AgentState::Connected(s) => (&[][..], Some(s.dialog.local_seq())),
            _ => (&[][..], None),
        };
        forks
            .iter()
            .filter(|f| f.result.is_none())
            .map(|f| (f.key.branch.as_str(), Revision::Ringing(1)))
            .chain(dialog.map(|seq| ("", Revision::Answered(seq))))
    }

    /// The state the journal saves for the row `branch` of
    /// [`journal_revisions`](Self::journal_revisions), with the phone's
    /// address.
    pub fn saved_state(&self, branch: &str) -> Option<(SavedLegState, Peer)> {
        match &self.state {
            AgentState::Inviting(s) => s
                .forks
                .iter()
                .find(|f| f.result.is_none() && f.key.branch == branch)
                .map(|f| {
                    (
                        SavedLegState::Ringing {
                            invite: f.invite.clone(),
                        },
                        f.target.peer,
                    )
                }),
            AgentState::Connected(s) if branch.is_empty() => {
                let peer = s.forks.get(s.winner)?.target.peer;
                Some((
                    SavedLegState::Answered {
                        dialog: s.dialog.save(),
                    },
                    peer,
                ))
            }
            _ => None,
        }
    }

    /// Retires the leg: what is left of it is its last transactions, a
    /// [`ClosingLeg`] (SPEC §6). A leg still ringing or connected is hung
    /// up first ([`hangup`](Self::hangup)); its events are dropped.
    pub fn into_closing(mut self, now: Instant) -> ClosingLeg {
        self.hangup(now);
        let ending = match self.state {
            AgentState::Ending(s) => s,
            _ => Ending::new(Vec::new(), None),
        };
        ClosingLeg::new(self.core, ending)
    }

    /// Whether [`AgentEvent::Closed`] was emitted.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, AgentState::Closed)
    }

    /// A message from the transport with this leg's Call-ID.
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

    /// Fires due timers ([`Timer::AnswerTimeout`]) and transaction timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.core.timers.pop_expired(now) {
            if timer == Timer::AnswerTimeout {
                let state = std::mem::replace(&mut self.state, AgentState::Closed);
                self.state = match state {
                    AgentState::Inviting(s) => self.give_up(now, s),
                    state => state,
                };
            }
        }
        self.core.handle_lower_timeouts(now);
        self.pump(now);
    }

    /// Hang up the agent leg: CANCEL every fork while ringing
    /// ([`AgentEvent::Failed`] with no status), BYE once connected.
    pub fn hangup(&mut self, now: Instant) {
        let state = std::mem::replace(&mut self.state, AgentState::Closed);
        self.state = match state {
            AgentState::Inviting(s) => self.give_up(now, s),
            AgentState::Connected(s) => self.bye(now, s, EndReason::LocalHangup),
            state => state,
        };
        self.pump(now);
    }

    fn bye(&mut self, now: Instant, mut s: Connected, reason: EndReason) -> AgentState {
        let peer = s.forks[s.winner].target.peer;
        if let Err(error) = self.core.send_bye(now, &mut s.dialog, peer) {
            tracing::warn!(%error, call_id = %self.core.call_id, "BYE not sent");
        }
        self.events.push(AgentEvent::Ended { reason });
        AgentState::Ending(Ending::new(sent(s.forks), Some((s.dialog, s.ack, peer))))
    }

    /// The media relay saw no RTP from the phone for `dialer.rtp_timeout`
    /// while connected (and not on hold): BYE, reported as
    /// [`AgentEvent::Ended`] with [`EndReason::RtpTimeout`] — for the
    /// dialer, the same as the agent hanging up (SPEC §1 step 6).
    pub fn rtp_timeout(&mut self, now: Instant) {
        let state = std::mem::replace(&mut self.state, AgentState::Closed);
        self.state = match state {
            AgentState::Connected(s) => self.bye(now, s, EndReason::RtpTimeout),
            state => state,
        };
        self.pump(now);
    }

    /// Sending to `peer` failed (a refused TCP connection, an ICMP port
    /// unreachable): every transaction of this leg with that peer is told
    /// (RFC 3261 §17.1.4, §18.4); a fork to that phone fails at once.
    pub fn handle_transport_error(&mut self, now: Instant, peer: Peer) {
        self.core.table.handle_transport_error(now, peer);
        self.pump(now);
    }

    /// Answers the phone's pending re-INVITE ([`AgentEvent::ReInvite`]) with
    /// 200 and `sdp` (RFC 3261 §14.2), retransmitted until ACKed.
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
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn pump(&mut self, now: Instant) {
        while let Some(event) = self.core.table.poll_event() {
            self.core.drain_table();
            let state = std::mem::replace(&mut self.state, AgentState::Closed);
            self.state = match state {
                AgentState::Inviting(s) => self.on_inviting(now, s, event),
                AgentState::Connected(s) => self.on_connected(now, s, event),
                AgentState::Ending(mut s) => {
                    s.handle(&mut self.core, now, event);
                    AgentState::Ending(s)
                }
                AgentState::Closed => {
                    if let Event::NewRequest { key, request, peer } = event {
                        self.core.handle_request(now, key, request, peer, None);
                    }
                    AgentState::Closed
                }
            };
        }
        self.core.drain_table();
        if matches!(&self.state, AgentState::Ending(s) if s.is_answered()) && self.core.is_idle() {
            self.state = AgentState::Closed;
            self.events.push(AgentEvent::Closed);
        }
    }

    fn on_inviting(&mut self, now: Instant, mut s: Inviting, event: Event) -> AgentState {
        match event {
            Event::Provisional { key, response } => {
                let ours = s.forks.iter().any(|f| f.key == key);
                if ours && response.status_code.code() > 100 && !s.ringing_reported {
                    s.ringing_reported = true;
                    self.events.push(AgentEvent::Ringing);
                }
                AgentState::Inviting(s)
            }
            Event::Final { key, response } => {
                let Some(i) = s.forks.iter().position(|f| f.key == key) else {
                    return AgentState::Inviting(s);
                };
                let status = response.status_code.code();
                s.forks[i].result = Some(Some(status));
                if (200..300).contains(&status) {
                    return self.connect(now, s, i, response);
                }
                self.after_fork_failure(s)
            }
            Event::ClientTimeout { key } | Event::ClientTransportError { key } => {
                if let Some(fork) = s.forks.iter_mut().find(|f| f.key == key) {
                    fork.result = Some(None);
                }
                self.after_fork_failure(s)
            }
            Event::NewRequest { key, request, peer } => {
                self.core.handle_request(now, key, request, peer, None);
                AgentState::Inviting(s)
            }
            _ => AgentState::Inviting(s),
        }
    }

    /// First 2xx wins (SPEC §1 step 2): ACK it, CANCEL every other fork still
    /// waiting (§9.1; deferred until its provisional), report `Connected`.
    fn connect(
        &mut self,
        now: Instant,
        s: Inviting,
        winner: usize,
        response: Response,
    ) -> AgentState {
        let peer = s.forks[winner].target.peer;
        let dialog = Dialog::from_uac_response(&s.forks[winner].invite, &response)
            .map_err(CallError::from)
            .and_then(|mut dialog| {
                let ack = self.core.send_ack(&mut dialog, peer)?;
                Ok((dialog, ack))
            });
        let (dialog, ack) = match dialog {
            Ok(d) => d,
            Err(error) => {
                tracing::warn!(%error, call_id = %self.core.call_id, "unusable 2xx from the phone");
                return self.after_fork_failure(s);
            }
        };
        for (i, fork) in s.forks.iter().enumerate() {
            if i != winner && fork.result.is_none() {
                if let Err(error) = self.core.table.cancel(now, &fork.key) {
                    tracing::debug!(%error, "fork not cancelled");
                }
            }
        }
        self.core.timers.stop(Timer::AnswerTimeout);
        self.connected_at = Some(now);
        self.events
            .push(AgentEvent::Connected { sdp: response.body });
        // The transactions keep what they retransmit; the leg keeps of its
        // INVITEs only what a late fork's ACK and BYE need.
        let mut forks = s.forks;
        for f in &mut forks {
            slim_invite(&mut f.invite);
        }
        AgentState::Connected(Connected {
            forks,
            winner,
            dialog,
            ack,
        })
    }

    fn after_fork_failure(&mut self, s: Inviting) -> AgentState {
        if s.forks.iter().any(|f| f.result.is_none()) {
            return AgentState::Inviting(s);
        }
        self.core.timers.stop(Timer::AnswerTimeout);
        let status = best_status(s.forks.iter().filter_map(|f| f.result.flatten()));
        self.events.push(AgentEvent::Failed { status });
        AgentState::Ending(Ending::new(sent(s.forks), None))
    }

    fn give_up(&mut self, now: Instant, s: Inviting) -> AgentState {
        self.core.timers.stop(Timer::AnswerTimeout);
        for fork in s.forks.iter().filter(|f| f.result.is_none()) {
            if let Err(error) = self.core.table.cancel(now, &fork.key) {
                tracing::debug!(%error, "fork not cancelled");
            }
        }
        self.events.push(AgentEvent::Failed { status: None });
        AgentState::Ending(Ending::new(sent(s.forks), None))
    }

    fn on_connected(&mut self, now: Instant, mut s: Connected, event: Event) -> AgentState {
        match event {
            Event::Final { key, response } => {
                if let Some(j) = s.forks.iter().position(|f| f.key == key) {
                    let status = response.status_code.code();
                    s.forks[j].result = Some(Some(status));
                    if j != s.winner && (200..300).contains(&status) {
                        // A second phone answered across our CANCEL: ACK and
                        // BYE it (RFC 3261 §13.2.2.4, SPEC §1 step 2).
                        let (invite, peer) = (s.forks[j].invite.clone(), s.forks[j].target.peer);
                        self.core.ack_and_bye(now, &invite, &response, peer);
                    }
                }
                AgentState::Connected(s)
            }
            Event::NewRequest { key, request, peer } => {
                match self
                    .core
                    .handle_request(now, key, request, peer, Some(&mut s.dialog))
                {
                    InDialog::Bye => {
                        self.events.push(AgentEvent::Ended {
                            reason: EndReason::RemoteBye,
                        });
                        let peer = s.forks[s.winner].target.peer;
                        return AgentState::Ending(Ending::new(
                            sent(s.forks),
                            Some((s.dialog, s.ack, peer)),
                        ));
                    }
                    InDialog::ReInvite(offer) => {
                        self.events.push(AgentEvent::ReInvite { offer });
                    }
                    InDialog::Info(content_type, body) => {
                        if let Some(digit) = dtmf_from_info(content_type.as_deref(), &body) {
                            self.events.push(AgentEvent::Dtmf(digit));
                        }
                    }
                    InDialog::Refresh | InDialog::Done => {}
                }
                AgentState::Connected(s)
            }
            Event::StrayResponse { response, peer } => {
                let peer_w = s.forks[s.winner].target.peer;
                let dialog = Some((&s.dialog, &s.ack, peer_w));
                self.stray_2xx(now, &s.forks, dialog, &response, peer);
                AgentState::Connected(s)
            }
            Event::StrayAck { request, .. } => {
                self.core.handle_stray_ack(now, &request);
                AgentState::Connected(s)
            }
            _ => AgentState::Connected(s),
        }
    }

    /// A 2xx outside any transaction: ours again → the same ACK again;
    /// another fork's → ACK and BYE (§13.2.2.4).
    fn stray_2xx(
        &mut self,
        now: Instant,
        forks: &[Fork],
        dialog: Option<(&Dialog, &KeptRequest, Peer)>,
        response: &Response,
        peer: Peer,
    ) {
        if !is_invite_2xx(response, &self.core.call_id) {
            return;
        }
        match dialog {
            Some((d, ack, to))
                if response_to_tag(response).as_deref() == Some(d.id().remote_tag.as_str()) =>
            {
                self.core.resend_ack(to, ack);
            }
            _ => {
                let fork = ClientKey::from_response(response)
                    .ok()
                    .and_then(|k| forks.iter().find(|f| f.key.branch == k.branch))
                    .or_else(|| forks.first());
                if let Some(fork) = fork {
                    let invite = fork.invite.clone();
                    self.core.ack_and_bye(now, &invite, response, peer);
                }
            }
        }
    }
}

/// RFC 3261 §16.7 step 6, simplified: a 6xx wins; else the lowest class
/// (4xx before 5xx), first received within it.
fn best_status(statuses: impl Iterator<Item = u16>) -> Option<u16> {
    let all: Vec<u16> = statuses.collect();
    all.iter()
        .copied()
        .find(|s| (600..700).contains(s))
        .or_else(|| all.iter().copied().min_by_key(|s| s / 100))
}

/// The digit of an INFO body: `application/dtmf-relay` (`Signal=5`,
/// `Duration=160`) or `application/dtmf` (the digit alone). Event codes
/// 10–15 (RFC 4733 numbering, sent by some phones) map to `*#ABCD`.
fn dtmf_from_info(content_type: Option<&str>, body: &[u8]) -> Option<char> {
    let media = content_type?
        .split(';')
        .next()
        .map(|t| t.trim().to_ascii_lowercase())?;
    let text = std::str::from_utf8(body).ok()?;
    let signal = match media.as_str() {
        "application/dtmf-relay" => text.lines().find_map(|line| {
            let (name, value) = line.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| value.trim())
        })?,
        "application/dtmf" => text.trim(),
        _ => return None,
    };
    match signal {
        "10" => Some('*'),
        "11" => Some('#'),
        "12" => Some('A'),
        "13" => Some('B'),
        "14" => Some('C'),
        "15" => Some('D'),
        s => {
            let mut chars = s.chars();
            let c = chars.next()?.to_ascii_uppercase();
            (chars.next().is_none() && matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')).then_some(c)
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn dtmf_bodies() {
        let relay = Some("application/dtmf-relay");
        assert_eq!(
            dtmf_from_info(relay, b"Signal=5\r\nDuration=160\r\n"),
            Some('5')
        );
        assert_eq!(
            dtmf_from_info(relay, b"Signal= *\r\nDuration=100"),
            Some('*')
        );
        assert_eq!(dtmf_from_info(relay, b"Signal=11\r\n"), Some('#'));
        assert_eq!(dtmf_from_info(relay, b"Duration=160\r\n"), None);
        assert_eq!(dtmf_from_info(relay, b"Signal=55\r\n"), None);
        assert_eq!(dtmf_from_info(Some("application/dtmf"), b"0"), Some('0'));
        assert_eq!(dtmf_from_info(Some("text/plain"), b"5"), None);
        assert_eq!(dtmf_from_info(None, b"Signal=5"), None);
    }

    #[test]
    fn best_status_prefers_6xx_then_lower_classes() {
        assert_eq!(best_status([486, 603, 500].into_iter()), Some(603));
        assert_eq!(best_status([503, 486].into_iter()), Some(486));
        assert_eq!(best_status(std::iter::empty()), None);
    }
}
