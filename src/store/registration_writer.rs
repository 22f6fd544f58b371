//! Registrar bindings leave the signalling path in batches (DESIGN.md
//! "Writes leave the signalling path in batches"; SPEC §5 "none is ever
//! dropped, under any load").
//!
//! The SIP task hands every binding change (RFC 3261 §10.3 steps 6–8: an
//! added, refreshed or removed contact) to a [`RegistrationSender`]. One
//! writer task ([`run_writer`]) coalesces them in [`PendingRegistrations`]
//! — the last change per `(aor, contact)` wins, a removal replaces an upsert
//! and the other way round — and commits everything pending in one
//! transaction with multi-row statements ([`Store::save_registrations`]),
//! at most [`LINGER`] after the oldest pending change arrived. While one
//! batch commits the next one gathers, as PostgreSQL's group commit and
//! Kamailio's usrloc timer do.
//!
//! Nothing is dropped. When the writer falls behind, the pending set stops
//! taking changes at [`MAX_PENDING`] keys, the channel fills, and
//! [`RegistrationSender::send`] waits: the SIP task stops reading inbound
//! messages (backpressure, which phones see as a slower 200 OK and answer
//! with retransmissions the transaction layer absorbs) until the writer
//! catches up. A failed commit keeps its changes (newer ones for the same
//! key win) and is retried. On shutdown the writer flushes what is pending
//! before it returns.
//!
//! A REGISTER is acknowledged only once its binding is on disk: every
//! change carries the SIP task's ticket (increasing), and after each
//! commit the writer publishes the highest ticket below which everything
//! is committed ([`RegistrationSender::persisted`]); the endpoint holds
//! each 200 OK until its ticket is covered. A crash can lose a binding only
//! when its phone never got the 200 OK (and so registers again), never one
//! that was acknowledged, under any load.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::leads::model::Registration;
use crate::store::Store;

/// How long the oldest pending change may wait for companions before the
/// writer commits ("one transaction per few milliseconds"). Under light load
/// a binding is on disk a few ms after its 200 OK left.
pub const LINGER: Duration = Duration::from_millis(5);

/// Most distinct `(aor, contact)` keys pending before the writer stops
/// taking changes from the channel and the SIP task has to wait. Bounds
/// memory (a few MB) and the work at risk between two commits.
pub const MAX_PENDING: usize = 16_384;

/// Most keys committed in one transaction: a commit stays short, so the
/// next batch is never far behind.
pub const MAX_BATCH: usize = 4_096;

/// Messages (one per REGISTER outcome) the channel holds before
/// [`RegistrationSender::send`] waits.
const CHANNEL: usize = 1_024;

/// At most one warning of a kind per this interval, with a count of what
/// happened since the last one.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The first retry delay after a failed commit; doubles up to
/// [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How long the final flush at shutdown keeps retrying a failing database.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// One binding change of the registrar (RFC 3261 §10.3).
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrationChange {
    /// A binding added or refreshed: insert or update its row.
    Upsert(Registration),
    /// A binding gone (`Expires: 0`, `Contact: *`, or lapsed): delete its row.
    Remove {
        /// Address of record.
        aor: String,
        /// The Contact URI as registered.
        contact: String,
    },
}

impl RegistrationChange {
    fn key(&self) -> (&str, &str) {
        match self {
            RegistrationChange::Upsert(r) => (&r.aor, &r.contact),
            RegistrationChange::Remove { aor, contact } => (aor, contact),
        }
    }
}

/// What one transaction writes: each `(aor, contact)` appears at most once
/// across both lists (as [`PendingRegistrations::take`] guarantees), so the
/// order of the statements does not matter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrationBatch {
    /// Rows to insert or update.
    pub upserts: Vec<Registration>,
    /// `(aor, contact)` rows to delete.
    pub removals: Vec<(String, String)>,
    /// The oldest ticket among the changes taken.
    pub oldest_ticket: Option<u64>,
}

impl RegistrationBatch {
    /// How many keys the batch writes.
    pub fn len(&self) -> usize {
        self.upserts.len() + self.removals.len()
    }

    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The coalescing set of changes not yet committed: pure, no I/O, no clock.
#[derive(Debug)]
pub struct PendingRegistrations {
    /// The latest change per `(aor, contact)`, with the oldest ticket
    /// whose change it carries (or superseded: that ticket is durable only
    /// once this entry is committed).
    latest: HashMap<(String, String), (RegistrationChange, u64)>,
    bound: usize,
}

impl PendingRegistrations {
    /// An empty set that reports [`is_full`](Self::is_full) at `bound` keys.
    pub fn new(bound: usize) -> PendingRegistrations {
        PendingRegistrations {
            latest: HashMap::new(),
            bound: bound.max(1),
        }
    }

    /// Records a change; it replaces any pending change of the same key
    /// (last write wins). Never refuses: the bound is a signal to stop
    /// feeding, not a limit that loses data.
    pub fn push(&mut self, change: RegistrationChange, ticket: u64) {
        let (aor, contact) = change.key();
        let key = (aor.to_string(), contact.to_string());
        let ticket = self
            .latest
            .get(&key)
            .map_or(ticket, |(_, t)| (*t).min(ticket));
        self.latest.insert(key, (change, ticket));
    }

    /// The oldest ticket not yet committed, if any.
    pub fn oldest_ticket(&self) -> Option<u64> {
        self.latest.values().map(|(_, t)| *t).min()
    }

    /// Distinct keys pending.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// Whether the producer should wait for a commit before pushing more
    /// (backpressure).
    pub fn is_full(&self) -> bool {
        self.latest.len() >= self.bound
    }

    /// Takes up to `max` pending keys as one batch.
    pub fn take(&mut self, max: usize) -> RegistrationBatch {
        let mut batch = RegistrationBatch::default();
        let keys: Vec<(String, String)> = if self.latest.len() <= max {
            Vec::new()
        } else {
            self.latest.keys().take(max).cloned().collect()
        };
        let taken: Vec<(RegistrationChange, u64)> = if keys.is_empty() {
            self.latest.drain().map(|(_, c)| c).collect()
        } else {
            keys.iter().filter_map(|k| self.latest.remove(k)).collect()
        };
        batch.oldest_ticket = taken.iter().map(|(_, t)| *t).min();
        for (change, _) in taken {
            match change {
                RegistrationChange::Upsert(r) => batch.upserts.push(r),
                RegistrationChange::Remove { aor, contact } => batch.removals.push((aor, contact)),
            }
        }
        batch
    }

    /// Puts back a batch whose commit failed. Changes that arrived since it
    /// was taken are newer and stay; the batch fills only the keys they
    /// left alone.
    pub fn restore(&mut self, batch: RegistrationBatch) {
        let ticket = batch.oldest_ticket.unwrap_or(0);
        let changes = batch
            .upserts
            .into_iter()
            .map(RegistrationChange::Upsert)
            .chain(
                batch
                    .removals
                    .into_iter()
                    .map(|(aor, contact)| RegistrationChange::Remove { aor, contact }),
            );
        for change in changes {
            let (aor, contact) = change.key();
            let entry = self
                .latest
                .entry((aor.to_string(), contact.to_string()))
                .or_insert((change, ticket));
            // A newer change kept its place; the older tickets wait for it.
            entry.1 = entry.1.min(ticket);
        }
    }
}

/// Counts occurrences of something worth a warning and says when to log:
/// at most once per interval, with how many happened since the last line.
#[derive(Debug)]
pub struct WarnLimiter<T> {
    every: Duration,
    last: Option<T>,
    count: u64,
}

impl<T: Copy + std::ops::Sub<T, Output = Duration>> WarnLimiter<T> {
    /// A limiter that lets one warning through per `every`.
    pub fn new(every: Duration) -> WarnLimiter<T> {
        WarnLimiter {
            every,
            last: None,
            count: 0,
        }
    }

    /// Records one occurrence at `now`; `Some(count)` when a warning is due
    /// (the first occurrence, then the first one `every` after the last
    /// warning), counting every occurrence since the last warning.
    pub fn hit(&mut self, now: T) -> Option<u64> {
        self.count += 1;
        let due = match self.last {
            None => true,
            Some(last) => now - last >= self.every,
        };
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.count))
        } else {
            None
        }
    }
}

/// The SIP task's end of the writer's channel.
#[derive(Debug)]
pub struct RegistrationSender {
    tx: mpsc::Sender<(Vec<RegistrationChange>, u64)>,
    waits: WarnLimiter<std::time::Instant>,
    persisted: watch::Receiver<u64>,
}

/// The writer's end of the channel: changes in, the committed ticket out.
#[derive(Debug)]
pub struct RegistrationReceiver {
    rx: mpsc::Receiver<(Vec<RegistrationChange>, u64)>,
    persisted: watch::Sender<u64>,
}

/// The writer task stopped (only after a shutdown): the changes were not
/// handed over.
#[derive(Debug, thiserror::Error)]
#[error("the registration writer has stopped")]
pub struct WriterStopped;

/// Makes the channel between the SIP task and [`run_writer`].
pub fn channel() -> (RegistrationSender, RegistrationReceiver) {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let (persisted_tx, persisted_rx) = watch::channel(0);
    (
        RegistrationSender {
            tx,
            waits: WarnLimiter::new(WARN_EVERY),
            persisted: persisted_rx,
        },
        RegistrationReceiver {
            rx,
            persisted: persisted_tx,
        },
    )
}

impl RegistrationSender {
    /// Hands the changes of one REGISTER (or one expiry) to the writer
    /// under `ticket` (increasing from call to call). Waits while the writer
    /// is behind (backpressure); never drops.
    pub async fn send(
        &mut self,
        changes: Vec<RegistrationChange>,
        ticket: u64,
    ) -> Result<(), WriterStopped> {
        if changes.is_empty() {
            return Ok(());
        }
        let changes = match self.tx.try_send((changes, ticket)) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(WriterStopped),
            Err(mpsc::error::TrySendError::Full(c)) => c,
        };
        #[allow(clippy::disallowed_methods)] // a driver: rate-limits its log.
        let now = std::time::Instant::now();
        if let Some(times) = self.waits.hit(now) {
            tracing::warn!(
                times,
                "registration persistence is behind: SIP input waits for the database (no binding change is lost)"
            );
        }
        self.tx.send(changes).await.map_err(|_| WriterStopped)
    }

    /// Every ticket up to the watched value is committed.
    pub fn persisted(&self) -> watch::Receiver<u64> {
        self.persisted.clone()
    }
}

/// The writer task: coalesces changes from `changes` and commits them in
/// batches until every sender is gone, then flushes what is pending and
/// returns (graceful shutdown keeps every acknowledged binding).
#[allow(clippy::disallowed_methods)] // a driver: owns its timer.
pub async fn run_writer(store: Store, channel: RegistrationReceiver) {
    use tokio::time::Instant;

    let RegistrationReceiver {
        rx: mut changes,
        persisted,
    } = channel;
    // The highest ticket received.
    let mut received: u64 = 0;
    let mut pending = PendingRegistrations::new(MAX_PENDING);
    // When the oldest uncommitted change arrived.
    let mut oldest: Option<Instant> = None;
    let mut open = true;
    let mut failures = WarnLimiter::new(WARN_EVERY);
    let mut retry = RETRY_MIN;
    let mut retry_at: Option<Instant> = None;
    let mut closed_at: Option<Instant> = None;

    while open || !pending.is_empty() {
        // Gather until the oldest change has waited LINGER (or a retry is
        // due), the batch is full, or the producers are gone.
        loop {
            let due = retry_at.or_else(|| oldest.map(|o| o + LINGER));
            // Once the producers are gone nothing more can arrive: flush
            // (or finish) now unless a retry has to wait.
            let ready = retry_at.is_none() && (pending.len() >= MAX_BATCH || !open);
            if ready || due.is_some_and(|d| d <= Instant::now()) {
                break;
            }
            let sleep = async {
                match due {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = changes.recv(), if open && !pending.is_full() => match msg {
                    Some((more, ticket)) => {
                        oldest.get_or_insert_with(Instant::now);
                        received = received.max(ticket);
                        more.into_iter().for_each(|c| pending.push(c, ticket));
                    }
                    None => {
                        open = false;
                        closed_at = Some(Instant::now());
                    }
                },
                _ = sleep => break,
            }
        }
        if pending.is_empty() {
            continue;
        }
        retry_at = None;
        let batch = pending.take(MAX_BATCH);
        if pending.is_empty() {
            oldest = None;
        }
        let commit = {
            let store = store.clone();
            async move {
                let result = store.save_registrations(&batch).await;
                (batch, result)
            }
        };
        tokio::pin!(commit);
        // The next batch gathers while this one commits.
        let (batch, result) = loop {
            tokio::select! {
                done = &mut commit => break done,
                msg = changes.recv(), if open && !pending.is_full() => match msg {
                    Some((more, ticket)) => {
                        oldest.get_or_insert_with(Instant::now);
                        received = received.max(ticket);
                        more.into_iter().for_each(|c| pending.push(c, ticket));
                    }
                    None => {
                        open = false;
                        closed_at = Some(Instant::now());
                    }
                },
            }
        };
        match result {
            Ok(()) => {
                retry = RETRY_MIN;
                // Everything below the oldest pending ticket is on disk.
                let committed = pending
                    .oldest_ticket()
                    .map_or(received, |t| t.saturating_sub(1));
                persisted.send_if_modified(|w| {
                    let newer = committed > *w;
                    *w = (*w).max(committed);
                    newer
                });
                crate::metrics::metrics()
                    .registrations_saved
                    .inc_by(batch.len() as u64);
                crate::metrics::metrics()
                    .registrations_pending
                    .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
            }
            Err(e) => {
                let keys = batch.len();
                pending.restore(batch);
                oldest.get_or_insert_with(Instant::now);
                let now = Instant::now();
                if let Some(times) = failures.hit(now) {
                    tracing::warn!(error = %e, keys, times, "could not save registrations; retrying");
                }
                if closed_at.is_some_and(|c| now - c >= SHUTDOWN_FLUSH) {
                    tracing::error!(
                        error = %e,
                        unsaved = pending.len(),
                        "shutting down with binding changes the database refused"
                    );
                    return;
                }
                retry_at = Some(now + retry);
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_pending_ticket_holds_the_watermark_back() {
        let mut p = PendingRegistrations::new(100);
        assert_eq!(p.oldest_ticket(), None);
        p.push(RegistrationChange::Upsert(reg("a", "x", 1)), 7);
        p.push(RegistrationChange::Upsert(reg("b", "x", 1)), 8);
        // A newer change of the same key keeps the older ticket waiting.
        p.push(RegistrationChange::Upsert(reg("a", "x", 2)), 9);
        assert_eq!(p.oldest_ticket(), Some(7));
        let batch = p.take(100);
        assert_eq!(batch.oldest_ticket, Some(7));
        assert_eq!(p.oldest_ticket(), None);
        // The commit failed; a change to `b` came meanwhile: restored, the
        // batch's oldest ticket waits again, on both keys.
        p.push(RegistrationChange::Upsert(reg("b", "x", 3)), 10);
        p.restore(batch);
        assert_eq!(p.oldest_ticket(), Some(7));
        assert_eq!(p.len(), 2);
    }

    fn reg(aor: &str, contact: &str, cseq: i64) -> Registration {
        Registration {
            aor: aor.into(),
            contact: contact.into(),
            expires_ms: 1_000,
            call_id: "c".into(),
            cseq,
            q: None,
            transport: "udp".into(),
            source: "127.0.0.1:5060".into(),
        }
    }

    fn remove(aor: &str, contact: &str) -> RegistrationChange {
        RegistrationChange::Remove {
            aor: aor.into(),
            contact: contact.into(),
        }
    }

    #[test]
    fn last_write_per_key_wins() {
        let mut p = PendingRegistrations::new(100);
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h", 1)), 1);
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h", 2)), 2);
        p.push(RegistrationChange::Upsert(reg("b", "sip:b@h", 1)), 3);
        assert_eq!(p.len(), 2);
        let mut batch = p.take(100);
        batch.upserts.sort_by(|x, y| x.aor.cmp(&y.aor));
        assert_eq!(
            batch.upserts,
            vec![reg("a", "sip:a@h", 2), reg("b", "sip:b@h", 1)]
        );
        assert!(batch.removals.is_empty());
        assert!(p.is_empty());
    }

    #[test]
    fn removal_replaces_upsert_and_upsert_replaces_removal() {
        let mut p = PendingRegistrations::new(100);
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h", 1)), 4);
        p.push(remove("a", "sip:a@h"), 5);
        p.push(remove("b", "sip:b@h"), 6);
        p.push(RegistrationChange::Upsert(reg("b", "sip:b@h", 3)), 7);
        let batch = p.take(100);
        assert_eq!(
            batch.removals,
            vec![("a".to_string(), "sip:a@h".to_string())]
        );
        assert_eq!(batch.upserts, vec![reg("b", "sip:b@h", 3)]);
    }

    #[test]
    fn keys_are_aor_and_contact() {
        let mut p = PendingRegistrations::new(100);
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h1", 1)), 8);
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h2", 1)), 9);
        p.push(remove("b", "sip:a@h1"), 10);
        assert_eq!(p.len(), 3);
        assert_eq!(p.take(100).len(), 3);
    }

    #[test]
    fn full_is_a_signal_not_a_loss() {
        let mut p = PendingRegistrations::new(2);
        p.push(RegistrationChange::Upsert(reg("a", "x", 1)), 11);
        assert!(!p.is_full());
        p.push(RegistrationChange::Upsert(reg("b", "x", 1)), 12);
        assert!(p.is_full());
        // A refresh of a pending key does not grow the set.
        p.push(RegistrationChange::Upsert(reg("b", "x", 2)), 13);
        assert_eq!(p.len(), 2);
        // Past the bound the change is still kept.
        p.push(RegistrationChange::Upsert(reg("c", "x", 1)), 14);
        assert_eq!(p.len(), 3);
        let first = p.take(2);
        assert_eq!(first.len(), 2);
        assert!(!p.is_full());
        let rest = p.take(2);
        assert_eq!(rest.len(), 1);
        let mut all: Vec<String> = first
            .upserts
            .iter()
            .chain(&rest.upserts)
            .map(|r| r.aor.clone())
            .collect();
        all.sort();
        assert_eq!(all, ["a", "b", "c"]);
    }

    #[test]
    fn a_failed_batch_comes_back_under_newer_changes() {
        let mut p = PendingRegistrations::new(100);
        p.push(RegistrationChange::Upsert(reg("a", "x", 1)), 15);
        p.push(RegistrationChange::Upsert(reg("b", "x", 1)), 16);
        let failed = p.take(100);
        // Arrived while the failed batch was committing: newer.
        p.push(remove("a", "x"), 17);
        p.restore(failed);
        let batch = p.take(100);
        assert_eq!(batch.removals, vec![("a".to_string(), "x".to_string())]);
        assert_eq!(batch.upserts, vec![reg("b", "x", 1)]);
    }

    #[test]
    fn warnings_are_rate_limited_with_a_count() {
        let mut w = WarnLimiter::<Duration>::new(Duration::from_secs(10));
        assert_eq!(w.hit(Duration::from_secs(0)), Some(1));
        assert_eq!(w.hit(Duration::from_secs(1)), None);
        assert_eq!(w.hit(Duration::from_secs(9)), None);
        assert_eq!(w.hit(Duration::from_secs(10)), Some(3));
        assert_eq!(w.hit(Duration::from_secs(11)), None);
        assert_eq!(w.hit(Duration::from_secs(25)), Some(2));
    }
}
