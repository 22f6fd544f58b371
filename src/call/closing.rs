//! What a call leg keeps once its call is over: its last transactions run
//! out their timers (Timer J for a BYE we answered, RFC 3261 §17.2.2; Timer
//! K for our BYE, §17.1.2.2; Timer D for a 487 we ACKed, §17.1.1.2), a 2xx
//! crossing our CANCEL is ACKed and BYEd (§9.1), and a retransmitted 2xx is
//! ACKed again (§13.2.2.4). That is all a finished leg answers for, and on
//! UDP it lasts up to 64·T1 = 32 s after every call, so a retired leg is
//! this small record, not the whole leg (SPEC §6: nothing held per finished
//! call beyond what the RFC timers need).

use std::time::Instant;

use super::leg::{is_invite_2xx, response_to_tag, KeptRequest, LegCore};
use super::CallError;
use crate::sip::dialog::Dialog;
use crate::sip::syntax::{Header, Request, Response, SipMessage};
use crate::sip::transaction::{ClientKey, Event};
use crate::sip::{Peer, Transmit};

/// An INVITE a leg sent (one per fork), kept to build the ACK and BYE of a
/// late 2xx from it (§13.2.2.4).
#[derive(Debug)]
pub(crate) struct SentInvite {
    pub(crate) key: ClientKey,
    pub(crate) invite: Request,
    pub(crate) peer: Peer,
}

/// Reduces an INVITE in place to what [`Dialog::from_uac_response`] and
/// the transaction key read (Via, From, To, Call-ID, CSeq, Contact): no
/// body, no other header. What a leg keeps of its INVITEs once they have
/// their answer (a late 2xx of another fork is ACKed and BYEd from it,
/// RFC 3261 §13.2.2.4).
pub(crate) fn slim_invite(invite: &mut Request) {
    invite.headers.retain(|h| {
        matches!(
            h,
            Header::Via(_)
                | Header::From(_)
                | Header::To(_)
                | Header::CallId(_)
                | Header::CSeq(_)
                | Header::Contact(_)
        )
    });
    invite.headers.0.shrink_to_fit();
    invite.body = Vec::new();
}

/// The state of a leg whose call is over (the outcome is decided), shared
/// by the legs ([`LeadLeg`](super::LeadLeg), [`AgentLeg`](super::AgentLeg))
/// and by [`ClosingLeg`], so the retired record behaves exactly as the leg
/// did.
#[derive(Debug)]
pub(crate) struct Ending {
    /// The leg's INVITEs, by their client key.
    invites: Vec<SentInvite>,
    /// The INVITE whose CANCEL is out or waits for a provisional (§9.1):
    /// its final response is still to come.
    awaiting: Option<ClientKey>,
    /// The dialog we had (or that a 2xx crossing our CANCEL made), its
    /// ACK, and where both go: a retransmission of its 2xx gets the same
    /// ACK again (§13.2.2.4).
    dialog: Option<Box<(Dialog, KeptRequest, Peer)>>,
}

impl Ending {
    /// Over with `dialog` (or none), the final responses all in.
    pub(crate) fn new(
        invites: Vec<SentInvite>,
        dialog: Option<(Dialog, KeptRequest, Peer)>,
    ) -> Self {
        Ending {
            invites,
            awaiting: None,
            dialog: dialog.map(Box::new),
        }
    }

    /// Our CANCEL of `key` is out (or waits for a provisional): its INVITE's
    /// final response is still awaited.
    pub(crate) fn cancelling(invite: SentInvite) -> Self {
        Ending {
            awaiting: Some(invite.key.clone()),
            invites: vec![invite],
            dialog: None,
        }
    }

    /// Keeps only what answering retransmissions needs of the INVITEs.
    fn slim(&mut self) {
        for s in &mut self.invites {
            slim_invite(&mut s.invite);
        }
        self.invites.shrink_to_fit();
    }

    /// Handles one event of the leg's transaction table. Returns the final
    /// status of the awaited INVITE when it arrives (the call record's SIP
    /// status).
    pub(crate) fn handle(&mut self, core: &mut LegCore, now: Instant, event: Event) -> Option<u16> {
        match event {
            Event::Final { key, response } if self.awaiting.as_ref() == Some(&key) => {
                self.awaiting = None;
                let status = response.status_code.code();
                if (200..300).contains(&status) {
                    self.crossing_2xx(core, now, &key, &response);
                }
                Some(status)
            }
            Event::Final { key, response } => {
                // A fork we cancelled or gave up on answered anyway.
                if (200..300).contains(&response.status_code.code()) && !self.ours(&response) {
                    if let Some(s) = self.invites.iter().find(|s| s.key == key) {
                        core.ack_and_bye(now, &s.invite, &response, s.peer);
                    }
                }
                None
            }
            Event::ClientTimeout { key } | Event::ClientTransportError { key }
                if self.awaiting.as_ref() == Some(&key) =>
            {
                self.awaiting = None;
                None
            }
            Event::NewRequest { key, request, peer } => {
                let dialog = self.dialog.as_mut().map(|d| &mut d.0);
                core.handle_request(now, key, request, peer, dialog);
                None
            }
            Event::StrayResponse { response, peer } => {
                self.stray_2xx(core, now, &response, peer);
                None
            }
            Event::StrayAck { request, .. } => {
                core.handle_stray_ack(now, &request);
                None
            }
            _ => None,
        }
    }

    /// Whether the final response of the INVITE we cancelled is in.
    pub(crate) fn is_answered(&self) -> bool {
        self.awaiting.is_none()
    }

    fn ours(&self, response: &Response) -> bool {
        self.dialog.as_ref().is_some_and(|d| {
            response_to_tag(response).as_deref() == Some(d.0.id().remote_tag.as_str())
        })
    }

    /// The 200 crossed our CANCEL (§9.1): ACK it and BYE it at once; the
    /// dialog is kept so a retransmission of the 200 gets its ACK again.
    fn crossing_2xx(
        &mut self,
        core: &mut LegCore,
        now: Instant,
        key: &ClientKey,
        response: &Response,
    ) {
        let Some(s) = self.invites.iter().find(|s| &s.key == key) else {
            return;
        };
        let peer = s.peer;
        let made = Dialog::from_uac_response(&s.invite, response)
            .map_err(CallError::from)
            .and_then(|mut dialog| {
                let ack = core.send_ack(&mut dialog, peer)?;
                core.send_bye(now, &mut dialog, peer)?;
                Ok((dialog, ack))
            });
        match made {
            Ok((dialog, ack)) => self.dialog = Some(Box::new((dialog, ack, peer))),
            Err(error) => {
                tracing::warn!(%error, call_id = %core.call_id, "crossing 200 not ACKed");
            }
        }
    }

    /// A 2xx outside any transaction (§13.2.2.4): our dialog's again → the
    /// same ACK again; another To tag (a fork) → ACK and BYE.
    fn stray_2xx(&mut self, core: &mut LegCore, now: Instant, response: &Response, peer: Peer) {
        if !is_invite_2xx(response, &core.call_id) {
            return;
        }
        if let Some(d) = self.dialog.as_ref().filter(|_| self.ours(response)) {
            core.resend_ack(d.2, &d.1);
            return;
        }
        let fork = ClientKey::from_response(response)
            .ok()
            .and_then(|k| self.invites.iter().find(|s| s.key.branch == k.branch))
            .or_else(|| self.invites.first());
        if let Some(s) = fork {
            core.ack_and_bye(now, &s.invite, response, peer);
        }
    }
}

/// A leg whose call is over, retired from its agent's call: its transaction
/// table, identifiers and [`Ending`], nothing of the call itself (offer,
/// INVITE template, credentials, events). Dropped once
/// [`is_done`](Self::is_done).
#[derive(Debug)]
pub struct ClosingLeg {
    core: LegCore,
    ending: Ending,
}

impl ClosingLeg {
    pub(crate) fn new(core: LegCore, mut ending: Ending) -> Self {
        ending.slim();
        ClosingLeg { core, ending }
    }

    /// The Call-ID the driver routes here.
    pub fn call_id(&self) -> &str {
        &self.core.call_id
    }

    /// Whether nothing is left in flight: the record can be dropped (and
    /// its Call-ID unrouted) once [`poll_transmit`](Self::poll_transmit)
    /// returns `None`.
    pub fn is_done(&self) -> bool {
        self.ending.is_answered() && self.core.is_idle()
    }

    /// A message with this leg's Call-ID.
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

    /// Fires the transactions' timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_lower_timeouts(now);
        self.pump(now);
    }

    /// Sending to `peer` failed (RFC 3261 §17.1.4).
    pub fn handle_transport_error(&mut self, now: Instant, peer: Peer) {
        self.core.table.handle_transport_error(now, peer);
        self.pump(now);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.poll_transmit()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn pump(&mut self, now: Instant) {
        while let Some(event) = self.core.table.poll_event() {
            self.core.drain_table();
            self.ending.handle(&mut self.core, now, event);
        }
        self.core.drain_table();
    }
}

/// An agent's closing legs. On UDP each lasts up to 32 s after its call
/// (Timer J), so an agent dialing several calls a second holds a hundred or
/// more; its driver loop turns several times per call. The set therefore
/// keeps when the earliest of them is due and which of them a message,
/// timer or transport error touched since the last
/// [`drain`](Self::drain): a loop turn looks at those only, not at every
/// leg (SPEC §6 call setup: the CPU per call must not grow with the calls
/// of the last 32 s).
#[derive(Debug, Default)]
pub struct ClosingLegs {
    /// Boxed: a slot inline is 1 KB, and the vector keeps the room it grew
    /// to (a few slots per agent) after Timer J, when nothing is closing.
    #[allow(clippy::vec_box)] // 1 KB a slot, and the room stays after Timer J
    legs: Vec<Box<ClosingLeg>>,
    /// Indices into `legs` touched since the last drain (may repeat).
    touched: Vec<usize>,
    /// The earliest `poll_timeout` over `legs`, kept current by every
    /// method that changes a leg.
    next: Option<Instant>,
}

impl ClosingLegs {
    /// Whether no leg is closing.
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// How many legs are closing.
    pub fn len(&self) -> usize {
        self.legs.len()
    }

    /// Adds a retired leg; it may have something to send already.
    pub fn push(&mut self, leg: ClosingLeg) {
        self.next = min_deadline(self.next, leg.poll_timeout());
        self.touched.push(self.legs.len());
        self.legs.push(Box::new(leg));
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// The closing leg with `call_id`, if any.
    pub fn find(&self, call_id: &str) -> Option<ClosingIndex> {
        self.legs
            .iter()
            .position(|l| l.call_id() == call_id)
            .map(ClosingIndex)
    }

    /// A message for the leg [`find`](Self::find) found.
    pub fn handle_message(
        &mut self,
        at: ClosingIndex,
        now: Instant,
        peer: Peer,
        message: SipMessage,
    ) -> Result<(), CallError> {
        let Some(leg) = self.legs.get_mut(at.0) else {
            return Ok(());
        };
        let result = leg.handle_message(now, peer, message);
        self.touched.push(at.0);
        self.recompute();
        result
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next.is_none_or(|d| d > now) {
            return;
        }
        for (i, l) in self.legs.iter_mut().enumerate() {
            if l.poll_timeout().is_some_and(|d| d <= now) {
                l.handle_timeout(now);
                self.touched.push(i);
            }
        }
        self.recompute();
    }

    /// Sending to `peer` failed (RFC 3261 §17.1.4): every leg is told.
    pub fn handle_transport_error(&mut self, now: Instant, peer: Peer) {
        for (i, l) in self.legs.iter_mut().enumerate() {
            l.handle_transport_error(now, peer);
            self.touched.push(i);
        }
        self.recompute();
    }

    /// Moves what the touched legs have to send into `out`, drops those
    /// now done and returns their Call-IDs (to unroute).
    pub fn drain(&mut self, out: &mut Vec<Transmit>) -> Vec<String> {
        if self.touched.is_empty() {
            return Vec::new();
        }
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for &i in &touched {
            if let Some(l) = self.legs.get_mut(i) {
                while let Some(t) = l.poll_transmit() {
                    out.push(t);
                }
            }
        }
        // Highest index first: `swap_remove` moves the last leg into the
        // hole, and every index still to visit is lower than the hole.
        let mut done = Vec::new();
        for &i in touched.iter().rev() {
            if self.legs.get(i).is_some_and(|l| l.is_done()) {
                done.push(self.legs.swap_remove(i).core.call_id);
            }
        }
        if !done.is_empty() {
            self.recompute();
        }
        // The room of a burst is given back once nothing is closing.
        if self.legs.is_empty() {
            self.legs = Vec::new();
        }
        self.touched = touched;
        self.touched.clear();
        done
    }

    fn recompute(&mut self) {
        self.next = self.legs.iter().filter_map(|l| l.poll_timeout()).min();
    }
}

/// A leg of a [`ClosingLegs`], valid until its next
/// [`drain`](ClosingLegs::drain).
#[derive(Debug, Clone, Copy)]
pub struct ClosingIndex(usize);

fn min_deadline(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
