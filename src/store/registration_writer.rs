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

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

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
    /// The latest change per `(aor, contact)`.
    latest: HashMap<(String, String), RegistrationChange>,
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
    pub fn push(&mut self, change: RegistrationChange) {
        let (aor, contact) = change.key();
        let key = (aor.to_string(), contact.to_string());
        self.latest.insert(key, change);
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
        let taken: Vec<RegistrationChange> = if keys.is_empty() {
            self.latest.drain().map(|(_, c)| c).collect()
        } else {
            keys.iter().filter_map(|k| self.latest.remove(k)).collect()
        };
        for change in taken {
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
            self.latest
                .entry((aor.to_string(), contact.to_string()))
                .or_insert(change);
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
    tx: mpsc::Sender<Vec<RegistrationChange>>,
    waits: WarnLimiter<std::time::Instant>,
}

/// The writer task stopped (only after a shutdown): the changes were not
/// handed over.
#[derive(Debug, thiserror::Error)]
#[error("the registration writer has stopped")]
pub struct WriterStopped;

/// Makes the channel between the SIP task and [`run_writer`].
pub fn channel() -> (RegistrationSender, mpsc::Receiver<Vec<RegistrationChange>>) {
    let (tx, rx) = mpsc::channel(CHANNEL);
    (
        RegistrationSender {
            tx,
            waits: WarnLimiter::new(WARN_EVERY),
        },
        rx,
    )
}

impl RegistrationSender {
    /// Hands the changes of one REGISTER (or one expiry) to the writer.
    /// Waits while the writer is behind (backpressure); never drops.
    pub async fn send(&mut self, changes: Vec<RegistrationChange>) -> Result<(), WriterStopped> {
        if changes.is_empty() {
            return Ok(());
        }
        let changes = match self.tx.try_send(changes) {
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
}

/// The writer task: coalesces changes from `changes` and commits them in
/// batches until every sender is gone, then flushes what is pending and
/// returns (graceful shutdown keeps every acknowledged binding).
#[allow(clippy::disallowed_methods)] // a driver: owns its timer.
pub async fn run_writer(store: Store, mut changes: mpsc::Receiver<Vec<RegistrationChange>>) {
    use tokio::time::Instant;

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
                    Some(more) => {
                        oldest.get_or_insert_with(Instant::now);
                        more.into_iter().for_each(|c| pending.push(c));
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
                    Some(more) => {
                        oldest.get_or_insert_with(Instant::now);
                        more.into_iter().for_each(|c| pending.push(c));
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
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h", 1)));
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h", 2)));
        p.push(RegistrationChange::Upsert(reg("b", "sip:b@h", 1)));
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
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h", 1)));
        p.push(remove("a", "sip:a@h"));
        p.push(remove("b", "sip:b@h"));
        p.push(RegistrationChange::Upsert(reg("b", "sip:b@h", 3)));
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
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h1", 1)));
        p.push(RegistrationChange::Upsert(reg("a", "sip:a@h2", 1)));
        p.push(remove("b", "sip:a@h1"));
        assert_eq!(p.len(), 3);
        assert_eq!(p.take(100).len(), 3);
    }

    #[test]
    fn full_is_a_signal_not_a_loss() {
        let mut p = PendingRegistrations::new(2);
        p.push(RegistrationChange::Upsert(reg("a", "x", 1)));
        assert!(!p.is_full());
        p.push(RegistrationChange::Upsert(reg("b", "x", 1)));
        assert!(p.is_full());
        // A refresh of a pending key does not grow the set.
        p.push(RegistrationChange::Upsert(reg("b", "x", 2)));
        assert_eq!(p.len(), 2);
        // Past the bound the change is still kept.
        p.push(RegistrationChange::Upsert(reg("c", "x", 1)));
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
        p.push(RegistrationChange::Upsert(reg("a", "x", 1)));
        p.push(RegistrationChange::Upsert(reg("b", "x", 1)));
        let failed = p.take(100);
        // Arrived while the failed batch was committing: newer.
        p.push(remove("a", "x"));
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
