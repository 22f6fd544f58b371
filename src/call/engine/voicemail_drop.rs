//! An agent task's voicemail drops (SPEC §4): the agent presses `9` (or
//! the API's / console's drop), or detection in "drop" mode hears a
//! machine. The lead leg leaves the agent at once — its media goes to a
//! drop player task ([`AgentMedia::drop_voicemail`]), its signalling to
//! [`DroppingCall`] — the outcome `voicemail_dropped` is stored and the
//! sessions move the agent on to the next lead, while the player waits
//! for the machine's beep, plays the message, and the leg is hung up.
//!
//! The leg's journal rows (`call::leg_journal`) stay until the leg has
//! ended, so a crash during a drop still ends it with a BYE after the
//! restart (crash recovery); they are no longer updated once the agent
//! task stops owning the leg as its lead, which only in-dialog requests
//! sent during the drop (a later local CSeq) would make stale.
//!
//! [`AgentMedia::drop_voicemail`]: crate::media::relay::AgentMedia::drop_voicemail

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{spawn_finish_forgetting, AgentTask, CallEngineError, LeadCall, LegChange, LegKey};
use crate::call::{LeadEvent, Outcome};
use crate::leads::model::CallEnd;
use crate::media::relay::LegId;
use crate::media::voicemail::{DropConfig, DropStart};

/// A lead leg a voicemail drop plays on, no longer the agent's.
pub(super) struct DroppingCall {
    pub(super) call: Box<LeadCall>,
    /// Stops the player (dropped when the call ends first).
    _stop: oneshot::Sender<()>,
    /// Its journal rows, removed once the leg has ended.
    journaled: Vec<LegKey>,
}

impl AgentTask {
    /// Reads voicemail message `id` into the cache if it is not there
    /// (before a dial, so a drop starts without touching the disk).
    pub(super) async fn load_drop(&self, id: i64) {
        let cached = self
            .shared
            .drops
            .lock()
            .map(|m| m.contains_key(&id))
            .unwrap_or(false);
        if cached {
            return;
        }
        let row = match self.shared.store.get_voicemail_drop(id).await {
            Ok(Some(row)) => row,
            Ok(None) => {
                tracing::warn!(agent = %self.name, id, "the session's voicemail drop does not exist");
                return;
            }
            Err(e) => {
                tracing::warn!(agent = %self.name, id, error = %e, "voicemail drop not read");
                return;
            }
        };
        let path = self.shared.data_dir.join("voicemail").join(&row.file);
        let pcm = match tokio::fs::read(&path).await {
            Ok(bytes) => crate::media::voicemail::parse_wav(&bytes),
            Err(e) => {
                tracing::warn!(agent = %self.name, path = %path.display(), error = %e, "voicemail drop file not read");
                return;
            }
        };
        match pcm {
            Ok(pcm) => {
                if let Ok(mut m) = self.shared.drops.lock() {
                    m.insert(id, Arc::from(pcm));
                }
            }
            Err(e) => {
                tracing::warn!(agent = %self.name, path = %path.display(), error = %e, "voicemail drop file unusable")
            }
        }
    }

    /// Drops the session's voicemail message on the answered lead and
    /// frees the agent at once (SPEC §4): the outcome `voicemail_dropped`
    /// is stored and `CallEnded` sent now; the leg lives on until the
    /// message has played.
    pub(super) fn start_drop(&mut self, now: Instant) -> Result<(), CallEngineError> {
        let Some(l) = &self.lead else {
            return Err(CallEngineError::NoCall);
        };
        if l.leg.record().answered.is_none() || l.leg.outcome() != Some(Outcome::Answered) {
            return Err(CallEngineError::NoDrop("the lead has not answered"));
        }
        let id = l.voicemail_drop_id.ok_or(CallEngineError::NoDrop(
            "the session has no voicemail_drop_id",
        ))?;
        let message = self
            .shared
            .drops
            .lock()
            .ok()
            .and_then(|m| m.get(&id).cloned())
            .ok_or(CallEngineError::NoDrop(
                "the voicemail message could not be read",
            ))?;
        let media = self.media.as_ref().ok_or(CallEngineError::NoCall)?;
        let stop = media
            .drop_voicemail(l.media.id, message, DropConfig::default())
            .map_err(CallEngineError::from)?;
        let Some(mut l) = self.lead.take() else {
            return Err(CallEngineError::NoCall);
        };
        l.answered_as = Some(Outcome::VoicemailDropped);
        l.finished = true;
        tracing::info!(agent = %self.name, call = l.record_id, "voicemail drop: the agent moves on, the message plays after the beep");
        let r = *l.leg.record();
        let end = CallEnd {
            answered_ms: r.answered.map(|a| l.anchor.ms(a)),
            outcome: Some(Outcome::VoicemailDropped),
            sip_status: r.sip_status,
            ..CallEnd::default()
        };
        // Out of the agent's journal bookkeeping (its lead is gone), but
        // the rows stay until the leg ends (see the module's comment).
        let journaled = self.journaled.forget(l.leg.call_id());
        spawn_finish_forgetting(
            Vec::new(),
            self.shared.clone(),
            self.name.clone(),
            l.record_id,
            l.lead_id,
            l.session_id,
            end,
            Outcome::VoicemailDropped,
            r.sip_status,
            l.manual,
        );
        let _ = now;
        self.dropping.push(DroppingCall {
            call: l,
            _stop: stop,
            journaled,
        });
        Ok(())
    }

    /// The player is done: the message played (or could not): BYE.
    pub(super) fn on_drop_finished(
        &mut self,
        now: Instant,
        leg: LegId,
        played: bool,
        started: Option<(Instant, DropStart)>,
    ) {
        let Some(d) = self.dropping.iter_mut().find(|d| d.call.media.id == leg) else {
            return;
        };
        tracing::info!(
            agent = %self.name,
            call = d.call.record_id,
            played,
            started_after_ms = started.map(|(at, _)| at.saturating_duration_since(d.call.leg.record().answered.unwrap_or(at)).as_millis() as u64),
            start = ?started.map(|(_, why)| why),
            "voicemail drop finished: hanging up"
        );
        d.call.leg.hangup(now);
    }

    /// Handles the dropping legs' events: an ended leg stores its end time
    /// and leaves (to `closing` while its signalling goes on).
    pub(super) fn dropping_events(&mut self) -> bool {
        let mut busy = false;
        let mut ended = Vec::new();
        let media_ip = self.shared.media_ip;
        for i in 0..self.dropping.len() {
            while let Some(ev) = self.dropping[i].call.leg.poll_event() {
                busy = true;
                match ev {
                    LeadEvent::Ended { .. } | LeadEvent::Closed { .. } => ended.push(i),
                    LeadEvent::ReInvite { offer } => {
                        // The machine's re-INVITE: the media stays as it is.
                        let version = self.next_sdp_version();
                        let l = &mut self.dropping[i].call;
                        let body = super::reinvite_answer(
                            media_ip,
                            l.media,
                            &l.offer,
                            offer.as_deref(),
                            version,
                            None,
                            None,
                        );
                        let _ = l.leg.answer_reinvite(Instant::now(), &body);
                    }
                    _ => {}
                }
            }
        }
        ended.dedup();
        for i in ended.into_iter().rev() {
            let d = self.dropping.swap_remove(i);
            let journaled = d.journaled;
            let l = d.call;
            crate::metrics::metrics().calls_in_progress.dec();
            let ended_ms = l
                .anchor
                .ms(l.leg.record().ended.unwrap_or_else(Instant::now));
            let shared = self.shared.clone();
            let id = l.record_id;
            shared.tasks.clone().spawn(async move {
                let end = CallEnd {
                    ended_ms: Some(ended_ms),
                    ..CallEnd::default()
                };
                if let Err(e) = shared.store.finish_call(id, &end).await {
                    tracing::warn!(error = %e, call_id = id, "end of a voicemail drop not stored");
                }
                for key in journaled {
                    shared.journal.send(LegChange::Remove(key)).await;
                }
            });
            if l.leg.is_closed() {
                self.unroute(l.leg.call_id());
            } else {
                self.closing.push(l.leg.into_closing(Instant::now()));
            }
        }
        busy
    }
}
