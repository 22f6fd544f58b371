//! An agent task's inbound call: a lead (or an unknown caller) calling one
//! of our caller IDs, handed over by the callback router (SPEC §1 "Leads
//! calling back"). It is bridged like an answered lead leg — the same relay
//! path ([`AgentMedia::open_lead_leg`], `bridge`), the same events
//! ([`CallEvent::LeadAnswered`], [`CallEvent::CallEnded`]) — and recorded
//! with outcome `inbound` and the lead, if one was identified.

use std::time::{Instant, SystemTime};

use super::{epoch_ms, spawn_finish, AgentTask, Anchor, CallEngineError, CallEvent};
use crate::call::{InboundEvent, InboundLeg, Outcome};
use crate::leads::model::{CallEnd, NewCall};
use crate::media::relay::LegHandle;
use crate::media::sdp::{self, SessionDescription};

/// A call from the trunk on its way to an agent: the leg (100 Trying
/// sent) and who is calling.
#[derive(Debug)]
pub struct InboundCall {
    /// The UAS leg.
    pub leg: InboundLeg,
    /// The lead identified by the caller's number, if any.
    pub lead_id: Option<i64>,
    /// The session of the agent chosen for it, if any.
    pub session_id: Option<i64>,
    /// The caller's number (E.164 when it parses, else as sent).
    pub number: String,
}

/// The agent task's side of an inbound call.
pub(super) struct InboundState {
    pub(super) call: InboundCall,
    media: LegHandle,
    pub(super) record_id: i64,
    anchor: Anchor,
    label: String,
    finished: bool,
    /// The agent leg was set up for this call (no leg was up).
    rang_phone: bool,
}

impl InboundState {
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.call.leg.poll_timeout()
    }
}

impl AgentTask {
    /// Takes an inbound call if the agent is free: its nailed-up leg is
    /// connected and idle (answered at once), or no leg is up and the
    /// phone is registered (the phone rings, the caller hears 180, the
    /// answer follows the phone's). Refused with the call given back
    /// otherwise.
    pub(super) async fn take_inbound(
        &mut self,
        now: Instant,
        call: InboundCall,
    ) -> Result<(), (CallEngineError, InboundCall)> {
        if self.drain_deadline.is_some() {
            return Err((CallEngineError::Stopped, call));
        }
        if self.lead.is_some() || self.pending.is_some() || self.inbound.is_some() {
            return Err((CallEngineError::Busy, call));
        }
        self.retire_ending_agent_leg();
        if self
            .leg
            .as_ref()
            .is_some_and(|l| !l.is_connected() && !l.is_inviting())
        {
            return Err((CallEngineError::AgentLegEnding, call));
        }
        let rang_phone = self.leg.is_none();
        if rang_phone {
            let targets = self.agent_targets().await;
            if targets.is_empty() {
                return Err((CallEngineError::NoBinding, call));
            }
            let (media, media_rx) = match self.shared.relay.open_agent() {
                Ok(x) => x,
                Err(e) => return Err((e.into(), call)),
            };
            if let Err(e) = self.dial_agent(now, targets, media, media_rx) {
                return Err((e, call));
            }
        }
        let Some(media) = &self.media else {
            return Err((CallEngineError::NotConnected, call));
        };
        let handle = match media.open_lead_leg() {
            Ok(h) => h,
            Err(e) => return Err((e.into(), call)),
        };
        let _ = media.set_signalling(handle.id, call.leg.peer().addr.ip());
        let anchor = Anchor::now();
        let new = NewCall {
            session_id: call.session_id,
            lead_id: call.lead_id,
            agent: Some(self.name.clone()),
            number: call.number.clone(),
            started_ms: epoch_ms(anchor.1),
            answered_ms: None,
            ended_ms: None,
            outcome: None,
            sip_status: None,
            ring_ms: None,
            trunk: None,
        };
        let record = match self.shared.store.insert_call(&new).await {
            Ok(r) => r,
            Err(e) => {
                let _ = media.close_leg(handle.id);
                return Err((CallEngineError::Store(e.to_string()), call));
            }
        };
        let label = self.lead_label_of(call.lead_id, &call.number).await;
        tracing::info!(agent = %self.name, call = record.id, lead = ?call.lead_id, number = %call.number, "callback: taken by this agent");
        self.route(call.leg.call_id());
        let _ = self.shared.events.send(CallEvent::CallbackTaken {
            agent: self.name.clone(),
            call_id: record.id,
            lead_id: call.lead_id,
            session_id: call.session_id,
        });
        self.inbound = Some(Box::new(InboundState {
            call,
            media: handle,
            record_id: record.id,
            anchor,
            label,
            finished: false,
            rang_phone,
        }));
        if self.leg.as_ref().is_some_and(|l| l.is_connected()) {
            self.answer_inbound(now);
        } else if let Some(i) = &mut self.inbound {
            i.call.leg.ring(now);
        }
        Ok(())
    }

    /// Answers the caller with the relay's SDP and bridges the agent to it
    /// (SPEC §1 step 4, as for a lead's 200 OK).
    pub(super) fn answer_inbound(&mut self, now: Instant) {
        let version = self.next_sdp_version();
        let media_ip = self.shared.media_ip;
        let agent = self.name.clone();
        let Some(i) = &mut self.inbound else { return };
        if !i.call.leg.is_offered() {
            return;
        }
        let answer = i
            .call
            .leg
            .offer()
            .ok_or_else(|| "the INVITE has no SDP offer".to_string())
            .and_then(|o| SessionDescription::parse(o).map_err(|e| e.to_string()))
            .and_then(|o| {
                sdp::answer(&o, media_ip, i.media.local_port, version).map_err(|e| e.to_string())
            });
        let answer = match answer {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(agent = %agent, %error, "callback: unusable offer from the trunk: 488");
                i.call.leg.reject(now, 488, "Not Acceptable Here");
                return;
            }
        };
        if let Some(media) = &self.media {
            let _ = media.set_remote(i.media.id, answer.negotiated);
            let _ = media.bridge(i.media.id);
        }
        if let Err(error) = i.call.leg.answer(now, &answer.sdp.to_bytes()) {
            tracing::warn!(agent = %agent, %error, "callback: 200 not sent");
            return;
        }
        let answered_ms = Some(i.anchor.ms(now));
        let shared = self.shared.clone();
        let id = i.record_id;
        tokio::spawn(async move {
            let end = CallEnd {
                answered_ms,
                ..CallEnd::default()
            };
            if let Err(e) = shared.store.finish_call(id, &end).await {
                tracing::warn!(error = %e, call_id = id, "answer time not stored");
            }
        });
        if let (true, Some(leg)) = (self.shared.lead_on_phone, &mut self.leg) {
            leg.send_text(now, &format!("Callback: {}", i.label));
        }
        let _ = self.shared.events.send(CallEvent::LeadAnswered {
            agent,
            call_id: i.record_id,
        });
    }

    /// The agent side ended before the caller was answered (the phone
    /// declined or did not answer, the leg went away): 480 to the caller.
    pub(super) fn inbound_agent_gone(&mut self, now: Instant) {
        if let Some(i) = &mut self.inbound {
            i.call.leg.hangup(now);
        }
    }

    /// Hangs the inbound call up (BYE, or 480 before the answer).
    pub(super) fn hangup_inbound(&mut self, now: Instant) -> bool {
        match &mut self.inbound {
            Some(i) => {
                i.call.leg.hangup(now);
                true
            }
            None => false,
        }
    }

    /// Handles what the inbound leg reported; true when there was something.
    pub(super) fn inbound_events(&mut self) -> bool {
        let mut busy = false;
        loop {
            let Some(ev) = self.inbound.as_mut().and_then(|i| i.call.leg.poll_event()) else {
                return busy;
            };
            busy = true;
            match ev {
                InboundEvent::ReInvite { offer } => {
                    let version = self.next_sdp_version();
                    let media_ip = self.shared.media_ip;
                    if let Some(i) = &mut self.inbound {
                        let body = match offer.as_deref().map(SessionDescription::parse) {
                            Some(Ok(o)) => {
                                match sdp::answer(&o, media_ip, i.media.local_port, version) {
                                    Ok(a) => {
                                        if let Some(m) = &self.media {
                                            let _ = m.set_remote(i.media.id, a.negotiated);
                                        }
                                        a.sdp.to_bytes()
                                    }
                                    Err(_) => continue,
                                }
                            }
                            _ => continue,
                        };
                        if let Err(e) = i.call.leg.answer_reinvite(Instant::now(), &body) {
                            tracing::debug!(error = %e, "re-INVITE not answered");
                        }
                    }
                }
                InboundEvent::Cancelled => {
                    self.finish_inbound();
                    // The phone was rung for this caller alone: stop it.
                    let ours = self.inbound.as_ref().is_some_and(|i| i.rang_phone);
                    if let Some(leg) = self.leg.as_mut().filter(|l| ours && l.is_inviting()) {
                        leg.hangup(Instant::now());
                    }
                }
                InboundEvent::Ended { .. } => self.finish_inbound(),
                InboundEvent::Closed => {
                    self.finish_inbound();
                    if let Some(i) = self.inbound.take() {
                        self.unroute(i.call.leg.call_id());
                    }
                }
            }
        }
    }

    /// Stores the record once (outcome `inbound`; `answered_at` null when
    /// the caller was never answered) and frees the media.
    fn finish_inbound(&mut self) {
        let Some(i) = &mut self.inbound else { return };
        if i.finished {
            return;
        }
        i.finished = true;
        let (started, answered, ended) = i.call.leg.times();
        let end = CallEnd {
            answered_ms: answered.map(|a| i.anchor.ms(a)),
            ended_ms: Some(ended.map_or_else(|| epoch_ms(SystemTime::now()), |e| i.anchor.ms(e))),
            outcome: Some(Outcome::Inbound),
            sip_status: None,
            ring_ms: Some(
                i64::try_from(
                    answered
                        .unwrap_or(started)
                        .saturating_duration_since(started)
                        .as_millis(),
                )
                .unwrap_or(i64::MAX),
            ),
            trunk: None,
            caller_id: None,
            ..CallEnd::default()
        };
        tracing::info!(agent = %self.name, call = i.record_id, answered = answered.is_some(), "callback ended");
        spawn_finish(
            self.shared.clone(),
            self.name.clone(),
            i.record_id,
            i.call.lead_id,
            i.call.session_id,
            end,
            Outcome::Inbound,
            None,
            false,
        );
        if let Some(media) = &self.media {
            let _ = media.unbridge();
            let _ = media.close_leg(i.media.id);
        }
    }

    /// Whether `leg` is the inbound call's media leg.
    pub(super) fn is_inbound_media(&self, leg: crate::media::relay::LegId) -> bool {
        self.inbound.as_ref().is_some_and(|i| i.media.id == leg)
    }
}
