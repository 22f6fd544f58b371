//! The driver side of several trunks: the [`TrunkSet`] core shared by the
//! agent tasks, the ping task and the API; a trunk taken for one lead call
//! ([`TrunkSlot`], released when dropped) and the trunks left to fail over
//! to ([`TrunkGrant`]); the wait for a trunk under its limits.

#![allow(clippy::disallowed_methods)] // a driver: this is where the clock is read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::trunk::{NoTrunk, TrunkId, TrunkSet};
use crate::config::TrunkConfig;
use crate::sip::Peer;

/// One configured trunk's fixed facts.
pub(crate) struct TrunkInfo {
    pub(crate) config: TrunkConfig,
    pub(crate) peer: Peer,
}

/// The configured trunks: their sans-IO state ([`TrunkSet`]), shared by
/// the agent tasks, the ping task and the API, and a wake-up for dials
/// waiting for a trunk under its limits.
#[derive(Clone)]
pub(crate) struct Trunks {
    pub(crate) set: Arc<std::sync::Mutex<TrunkSet>>,
    pub(crate) info: Arc<[TrunkInfo]>,
    freed: Arc<tokio::sync::Notify>,
}

impl Trunks {
    /// The trunks' state from `set` and `info` (one entry per trunk, in
    /// the same order).
    pub(crate) fn new(set: TrunkSet, info: Vec<TrunkInfo>) -> Trunks {
        Trunks {
            set: Arc::new(std::sync::Mutex::new(set)),
            info: Arc::from(info),
            freed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.info.is_empty()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, TrunkSet> {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn name(&self, id: TrunkId) -> &str {
        self.info.get(id.0).map_or("", |t| t.config.name.as_str())
    }

    pub(crate) fn label(&self, id: TrunkId) -> crate::metrics::TrunkLabel {
        crate::metrics::TrunkLabel {
            trunk: self.name(id).to_string(),
        }
    }
}

/// One lead call counted on one trunk ([`TrunkSet::acquire`]); released,
/// and waiting dials woken, when dropped.
pub(crate) struct TrunkSlot {
    trunks: Trunks,
    pub(crate) id: TrunkId,
}

impl TrunkSlot {
    pub(crate) fn new(trunks: Trunks, id: TrunkId) -> TrunkSlot {
        let active = trunks.lock().active(id);
        crate::metrics::metrics()
            .trunk_active_calls
            .get_or_create(&trunks.label(id))
            .set(i64::from(active));
        TrunkSlot { trunks, id }
    }
}

impl Drop for TrunkSlot {
    fn drop(&mut self) {
        let active = {
            let mut set = self.trunks.lock();
            set.release(self.id);
            set.active(self.id)
        };
        crate::metrics::metrics()
            .trunk_active_calls
            .get_or_create(&self.trunks.label(self.id))
            .set(i64::from(active));
        self.trunks.freed.notify_waiters();
    }
}

/// The trunks of one lead call: the one it is on, the order to try, and
/// those already tried (one INVITE per lead per trunk).
pub(crate) struct TrunkGrant {
    pub(crate) slot: TrunkSlot,
    pub(crate) order: Vec<TrunkId>,
    pub(crate) tried: Vec<TrunkId>,
    /// The number in E.164 (R2), allowed by the trunk (R11).
    pub(crate) e164: String,
}

/// Why [`Trunks::take`] found no trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TakeError {
    /// No `[[trunk]]` is configured.
    NoTrunk,
    /// Every trunk that may dial the number is down.
    AllDown,
    /// Every such trunk stayed at its limits for the whole wait.
    Busy,
}

impl Trunks {
    /// Takes the first trunk of the call's order (priority, then weight)
    /// that is up and within its limits for a call to `e164`; `None` when
    /// no trunk may dial it (R11). When every such trunk is at its limit
    /// the call waits up to `wait`, woken when a call on them ends; under
    /// a calls-per-second pace it reserves the next free slot up to a
    /// second ahead and sleeps until it ([`TrunkSet::reserve`]).
    pub(crate) async fn take(
        &self,
        e164: &str,
        wait: Duration,
    ) -> Result<Option<TrunkGrant>, TakeError> {
        if self.info.is_empty() {
            return Err(TakeError::NoTrunk);
        }
        let order = self
            .lock()
            .order(e164, &mut |n| rand::random::<u32>() % n.max(1));
        let deadline = Instant::now() + wait;
        let mut waited = false;
        // How far ahead a dial may reserve its calls-per-second slot.
        const HORIZON: Duration = Duration::from_secs(1);
        loop {
            // Armed before the check, so a release in between wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let now = Instant::now();
            let horizon = HORIZON.min(deadline.saturating_duration_since(now));
            let taken = self.lock().reserve(&order, &[], now, horizon);
            match taken {
                Ok((id, at)) => {
                    // Counted on the trunk already: the slot is ours.
                    let slot = TrunkSlot::new(self.clone(), id);
                    if at > now {
                        tokio::time::sleep_until(at.into()).await;
                    }
                    return Ok(Some(TrunkGrant {
                        slot,
                        order,
                        tried: vec![id],
                        e164: e164.to_string(),
                    }));
                }
                Err(NoTrunk::NotAllowed) => return Ok(None),
                Err(NoTrunk::AllDown) => return Err(TakeError::AllDown),
                Err(NoTrunk::AtLimit { retry_at }) => {
                    if now >= deadline {
                        tracing::warn!(number = %e164, "every trunk stayed at its limit for dialer.trunk_wait: dial refused");
                        return Err(TakeError::Busy);
                    }
                    if !waited {
                        waited = true;
                        tracing::debug!(number = %e164, "every trunk is at its limit: the dial waits");
                    }
                    // Only a concurrent-calls limit is freed by a call's end;
                    // a pace is waited out until its slot.
                    match retry_at {
                        Some(r) => tokio::time::sleep_until(r.min(deadline).into()).await,
                        None => tokio::select! {
                            _ = freed => {}
                            _ = tokio::time::sleep_until(deadline.into()) => {}
                        },
                    }
                }
            }
        }
    }
}
