//! The leg journal: the state needed to end every live SIP leg after a
//! crash — a confirmed dialog's identity, addresses, remote target, route
//! set and CSeq for a BYE (RFC 3261 §12.2.1.1, §15.1.1), or a ringing
//! INVITE for a CANCEL (§9.1) — saved when it changes, off the signalling
//! path (DESIGN.md "Writes leave the signalling path in batches").
//!
//! A row is one leg as a crash must end it, keyed by [`LegKey`]: every
//! INVITE in flight is its own row under its Via branch (an agent leg
//! forked to several phones has one ringing INVITE per phone, all with
//! one Call-ID, each CANCELled on its own branch, §9.1), a confirmed
//! dialog its row under the empty branch.
//!
//! Agent tasks hand [`LegChange`]s to a [`JournalSender`]; one writer task
//! ([`run_writer`]) coalesces them per key (the last change wins) and
//! commits what is pending in one transaction at most [`LINGER`] after the
//! oldest change arrived. Nothing is dropped: when the writer is behind,
//! the channel fills and the sender waits (backpressure). At start-up,
//! `call::recovery` reads the journal, ends every leg in it and clears it.
//!
//! A leg is journaled while it is ringing (its INVITE has no final
//! response and no CANCEL was sent) or answered (the dialog is confirmed
//! and no BYE was sent); once we sent the CANCEL or BYE, or the peer ended
//! the call, its row is removed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AgentLeg, LeadLeg};
use crate::sip::dialog::{DialogId, SavedDialog};
use crate::sip::syntax::Request;
use crate::sip::{Peer, TransportKind};
use crate::store::legs::LegRow;
use crate::store::registration_writer::WarnLimiter;
use crate::store::Store;

/// How long the oldest pending change may wait for companions before the
/// writer commits.
pub const LINGER: Duration = Duration::from_millis(5);

/// Messages the channel holds before [`JournalSender::send`] waits.
const CHANNEL: usize = 1_024;

/// Most rows committed in one transaction.
const MAX_BATCH: usize = 2_048;

const WARN_EVERY: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long the final flush at shutdown keeps retrying a failing database.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// A journal row's key: the Call-ID, and the Via branch of the ringing
/// INVITE the row holds (`""` for a confirmed dialog).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegKey {
    /// The Call-ID.
    pub call_id: String,
    /// The INVITE's top Via branch; empty for a dialog.
    pub branch: String,
}

impl LegKey {
    fn is(&self, call_id: &str, branch: &str) -> bool {
        self.call_id == call_id && self.branch == branch
    }
}

/// Which leg of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegKind {
    /// The call to the lead over a trunk.
    Lead,
    /// The nailed-up call to the agent's phone.
    Agent,
}

impl LegKind {
    fn as_str(self) -> &'static str {
        match self {
            LegKind::Lead => "lead",
            LegKind::Agent => "agent",
        }
    }
}

/// What a leg needs to be ended by someone who lost everything else.
#[derive(Debug, Clone)]
pub enum SavedLegState {
    /// The INVITE has no final response: CANCEL it (§9.1); a 487 is ACKed
    /// (§17.1.1.3), a 200 that crosses the CANCEL is ACKed and BYEd.
    Ringing {
        /// The INVITE as sent.
        invite: Request,
    },
    /// The dialog is confirmed: BYE it with the next CSeq (§15.1.1).
    Answered {
        /// The dialog.
        dialog: SavedDialog,
    },
}

/// What changes a leg's journal row, compared cheaply by the agent task
/// after every input: a new INVITE (a digest retry has CSeq 2), the
/// answer, a new local CSeq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    /// Ringing, with the INVITE's CSeq.
    Ringing(u32),
    /// Answered, with the dialog's local CSeq.
    Answered(u32),
}

/// One journaled leg.
#[derive(Debug, Clone)]
pub struct SavedLeg {
    /// The Call-ID.
    pub call_id: String,
    /// Lead or agent leg.
    pub kind: LegKind,
    /// The ringing INVITE's Via branch; empty for a dialog.
    pub branch: String,
    /// The call record of a lead leg.
    pub record_id: Option<i64>,
    /// The agent.
    pub agent: String,
    /// Where the leg's requests go.
    pub peer: Peer,
    /// Ringing or answered.
    pub state: SavedLegState,
    /// When the lead answered, epoch ms.
    pub answered_ms: Option<i64>,
}

/// Why a journal row cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A column that must be set for this kind of row is empty.
    #[error("journal row {call_id}: {column} is missing")]
    Missing {
        /// The row.
        call_id: String,
        /// The column.
        column: &'static str,
    },
    /// A stored value does not parse.
    #[error("journal row {call_id}: {column} does not parse")]
    Corrupt {
        /// The row.
        call_id: String,
        /// The column.
        column: &'static str,
    },
}

/// `udp:IP:PORT` / `tcp:IP:PORT` (as [`Peer`] prints).
fn parse_peer(text: &str) -> Option<Peer> {
    let (transport, addr) = text.split_once(':')?;
    let transport = match transport {
        "udp" => TransportKind::Udp,
        "tcp" => TransportKind::Tcp,
        _ => return None,
    };
    Some(Peer {
        transport,
        addr: addr.parse::<SocketAddr>().ok()?,
    })
}

impl SavedLeg {
    /// The row's key.
    pub fn key(&self) -> LegKey {
        LegKey {
            call_id: self.call_id.clone(),
            branch: self.branch.clone(),
        }
    }

    /// The row written for this leg at `now_ms`.
    pub fn to_row(&self, now_ms: i64) -> LegRow {
        let mut row = LegRow {
            call_id: self.call_id.clone(),
            branch: self.branch.clone(),
            kind: self.kind.as_str().to_string(),
            record_id: self.record_id,
            agent: self.agent.clone(),
            peer: self.peer.to_string(),
            answered: false,
            invite: None,
            local_tag: None,
            remote_tag: None,
            local_uri: None,
            remote_uri: None,
            remote_target: None,
            route_set: None,
            local_cseq: None,
            answered_ms: self.answered_ms,
            updated_ms: now_ms,
        };
        match &self.state {
            SavedLegState::Ringing { invite } => row.invite = Some(invite.to_string()),
            SavedLegState::Answered { dialog } => {
                row.answered = true;
                row.local_tag = Some(dialog.id.local_tag.clone());
                row.remote_tag = Some(dialog.id.remote_tag.clone());
                row.local_uri = Some(dialog.local_uri.clone());
                row.remote_uri = Some(dialog.remote_uri.clone());
                row.remote_target = Some(dialog.remote_target.clone());
                row.route_set = Some(dialog.route_set.join("\n"));
                row.local_cseq = Some(i64::from(dialog.local_seq));
            }
        }
        row
    }

    /// The leg a stored row describes.
    pub fn from_row(row: &LegRow) -> Result<SavedLeg, JournalError> {
        let call_id = row.call_id.clone();
        let missing = |column| JournalError::Missing {
            call_id: call_id.clone(),
            column,
        };
        let corrupt = |column| JournalError::Corrupt {
            call_id: call_id.clone(),
            column,
        };
        let kind = match row.kind.as_str() {
            "lead" => LegKind::Lead,
            "agent" => LegKind::Agent,
            _ => return Err(corrupt("kind")),
        };
        let peer = parse_peer(&row.peer).ok_or_else(|| corrupt("peer"))?;
        let state = if row.answered {
            let text = |v: &Option<String>, column| v.clone().ok_or_else(|| missing(column));
            let route_set = row
                .route_set
                .as_deref()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            let local_seq = row
                .local_cseq
                .ok_or_else(|| missing("local_cseq"))
                .and_then(|n| u32::try_from(n).map_err(|_| corrupt("local_cseq")))?;
            SavedLegState::Answered {
                dialog: SavedDialog {
                    id: DialogId {
                        call_id: call_id.clone(),
                        local_tag: text(&row.local_tag, "local_tag")?,
                        remote_tag: text(&row.remote_tag, "remote_tag")?,
                    },
                    local_uri: text(&row.local_uri, "local_uri")?,
                    remote_uri: text(&row.remote_uri, "remote_uri")?,
                    remote_target: text(&row.remote_target, "remote_target")?,
                    route_set,
                    local_seq,
                },
            }
        } else {
            let invite = row.invite.as_deref().ok_or_else(|| missing("invite"))?;
            let invite =
                Request::try_from(invite.as_bytes().to_vec()).map_err(|_| corrupt("invite"))?;
            SavedLegState::Ringing { invite }
        };
        Ok(SavedLeg {
            call_id: row.call_id.clone(),
            branch: row.branch.clone(),
            kind,
            record_id: row.record_id,
            agent: row.agent.clone(),
            peer,
            state,
            answered_ms: row.answered_ms,
        })
    }
}

/// One change of the journal.
#[derive(Debug, Clone)]
pub enum LegChange {
    /// The leg's state changed: write its row.
    Save(Box<SavedLeg>),
    /// The leg ended or no longer needs ending: delete its row.
    Remove(LegKey),
}

impl LegChange {
    fn key(&self) -> LegKey {
        match self {
            LegChange::Save(l) => l.key(),
            LegChange::Remove(k) => k.clone(),
        }
    }
}

/// A lead leg as the journal sees it (the driver adds what the leg does
/// not know: its call record and the wall-clock answer time).
#[derive(Debug, Clone, Copy)]
pub struct LeadJournal<'a> {
    /// The leg.
    pub leg: &'a LeadLeg,
    /// Its call record.
    pub record_id: i64,
    /// When it was answered, epoch ms.
    pub answered_ms: Option<i64>,
}

/// What one agent task's legs have in the journal, by [`LegKey`]: pure,
/// it turns the legs' states into the [`LegChange`]s to send.
#[derive(Debug, Default)]
pub struct Journaled {
    /// A handful at most (a lead leg, the agent leg's forks): a list.
    rows: Vec<(LegKey, Revision)>,
}

impl Journaled {
    /// The changes that bring the journal to the legs' current states: a
    /// row saved for each leg whose [`Revision`] changed, removed for each
    /// journaled leg no longer live. Nothing is allocated when nothing
    /// changed (the common case, checked after every input).
    pub fn changes(
        &mut self,
        agent: &str,
        lead: Option<LeadJournal<'_>>,
        agent_leg: Option<&AgentLeg>,
    ) -> Vec<LegChange> {
        let lead_rev = lead.and_then(|l| l.leg.journal_revision().map(|r| (l.leg.call_id(), r)));
        let agent_revs = || {
            agent_leg
                .into_iter()
                .flat_map(|l| l.journal_revisions().map(move |(b, r)| (l.call_id(), b, r)))
        };
        let live = || {
            lead_rev
                .map(|(id, (b, r))| (id, b, r))
                .into_iter()
                .chain(agent_revs())
        };
        let known = |id: &str, b: &str, r: Revision| {
            self.rows.iter().any(|(k, rev)| k.is(id, b) && *rev == r)
        };
        if live().count() == self.rows.len() && live().all(|(id, b, r)| known(id, b, r)) {
            return Vec::new();
        }
        let mut changes = Vec::new();
        let mut rows = Vec::new();
        for (id, branch, rev) in live() {
            let key = LegKey {
                call_id: id.to_string(),
                branch: branch.to_string(),
            };
            if !known(id, branch, rev) {
                let saved = match (lead, agent_leg) {
                    (Some(l), _) if l.leg.call_id() == id => {
                        l.leg.saved_state().map(|state| SavedLeg {
                            call_id: key.call_id.clone(),
                            branch: key.branch.clone(),
                            kind: LegKind::Lead,
                            record_id: Some(l.record_id),
                            agent: agent.to_string(),
                            peer: l.leg.peer(),
                            state,
                            answered_ms: l.answered_ms,
                        })
                    }
                    (_, Some(leg)) => leg.saved_state(branch).map(|(state, peer)| SavedLeg {
                        call_id: key.call_id.clone(),
                        branch: key.branch.clone(),
                        kind: LegKind::Agent,
                        record_id: None,
                        agent: agent.to_string(),
                        peer,
                        state,
                        answered_ms: None,
                    }),
                    _ => None,
                };
                if let Some(saved) = saved {
                    changes.push(LegChange::Save(Box::new(saved)));
                }
            }
            rows.push((key, rev));
        }
        for (key, _) in &self.rows {
            if !rows.iter().any(|(k, _)| k == key) {
                changes.push(LegChange::Remove(key.clone()));
            }
        }
        self.rows = rows;
        changes
    }

    /// Stops tracking a lead leg whose outcome is being stored: the caller
    /// removes its rows once the outcome is written. Returns the keys of
    /// its rows.
    pub fn forget(&mut self, call_id: &str) -> Vec<LegKey> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rows)
            .into_iter()
            .partition(|(k, _)| k.call_id == call_id);
        self.rows = kept;
        gone.into_iter().map(|(k, _)| k).collect()
    }
}

/// How soon an agent task first tries again to hand over changes the
/// writer's channel had no room for; the wait doubles while the channel
/// stays full, up to [`UNSENT_RETRY_MAX`] (a database that is down must not
/// wake every agent task 200 times a second).
pub const UNSENT_RETRY: Duration = Duration::from_millis(5);
/// The longest wait between two tries.
pub const UNSENT_RETRY_MAX: Duration = Duration::from_millis(200);

/// The changes an agent task could not hand to the writer yet because its
/// channel was full, coalesced per key like the writer's own pending set.
///
/// An agent task never waits for the journal: a call's signalling (the
/// ACK to a lead's 200, the bridge) must not stand behind database
/// commits (SPEC §6 answer → bridge). Measured before this existed: at
/// about 450 calls/s on SQLite the writer's commits waited up to 600 ms
/// for the write connection, its channel filled, and agent tasks blocked
/// up to 150 ms in the send, so answered leads went unbridged past their
/// first packets. What is held here is bounded by the task's own legs
/// (one entry per key), and nothing is lost: it is handed over on a later
/// turn, at most [`UNSENT_RETRY`] later.
#[derive(Debug, Default)]
pub struct Unsent {
    pending: PendingLegs,
    /// The wait before the next try; zero until a try fails.
    delay: Duration,
}

impl Unsent {
    /// Hands `changes`, after any still held, to the writer; keeps what
    /// its channel has no room for.
    pub fn send(&mut self, tx: &JournalSender, changes: Vec<LegChange>) {
        let mut changes = changes.into_iter();
        if self.pending.is_empty() {
            // The common case: nothing held, hand over in order and keep
            // only what the channel refuses (no map on the call path).
            for c in changes.by_ref() {
                if let Err(c) = tx.try_send(c) {
                    self.pending.push(c);
                    break;
                }
            }
            if self.pending.is_empty() {
                self.delay = Duration::ZERO;
                return;
            }
        }
        for c in changes {
            self.pending.push(c);
        }
        let keys: Vec<LegKey> = self.pending.latest.keys().cloned().collect();
        for k in keys {
            let Some(c) = self.pending.latest.remove(&k) else {
                continue;
            };
            if let Err(c) = tx.try_send(c) {
                self.pending.latest.insert(k, c);
                return;
            }
        }
        self.delay = Duration::ZERO;
    }

    /// Hands over everything held, waiting while the writer is behind: for
    /// a task that is about to end, when waiting holds up no call.
    pub async fn send_all(&mut self, tx: &JournalSender) {
        for (_, c) in self.pending.latest.drain() {
            tx.send(c).await;
        }
    }

    /// Drops what is held for `call_id`'s rows: that leg's outcome write
    /// removes its rows after the outcome is stored (a save still held here
    /// was never handed over, so nothing of it is in the journal).
    pub fn forget(&mut self, call_id: &str) {
        self.pending.latest.retain(|k, _| k.call_id != call_id);
    }

    /// Whether everything was handed over.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// How long to wait before the next try: [`UNSENT_RETRY`] after a
    /// hand-over went through, doubling while the channel stays full.
    pub fn next_delay(&mut self) -> Duration {
        self.delay = if self.delay.is_zero() {
            UNSENT_RETRY
        } else {
            (self.delay * 2).min(UNSENT_RETRY_MAX)
        };
        self.delay
    }
}

/// The coalescing set of changes not yet committed: pure, no I/O, no clock.
#[derive(Debug, Default)]
pub struct PendingLegs {
    latest: HashMap<LegKey, LegChange>,
}

impl PendingLegs {
    /// Records a change; the last one per key wins.
    pub fn push(&mut self, change: LegChange) {
        self.latest.insert(change.key(), change);
    }

    /// Distinct keys pending.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// Takes up to `max` changes: rows to write (at `now_ms`) and keys
    /// (Call-ID, branch) to delete.
    pub fn take(
        &mut self,
        max: usize,
        now_ms: i64,
    ) -> (Vec<LegRow>, Vec<(String, String)>, Vec<LegChange>) {
        let keys: Vec<LegKey> = self.latest.keys().take(max).cloned().collect();
        let mut rows = Vec::new();
        let mut removals = Vec::new();
        let mut taken = Vec::new();
        for k in keys {
            if let Some(c) = self.latest.remove(&k) {
                match &c {
                    LegChange::Save(l) => rows.push(l.to_row(now_ms)),
                    LegChange::Remove(k) => removals.push((k.call_id.clone(), k.branch.clone())),
                }
                taken.push(c);
            }
        }
        (rows, removals, taken)
    }

    /// Puts back changes whose commit failed; newer ones stay.
    pub fn restore(&mut self, changes: Vec<LegChange>) {
        for c in changes {
            self.latest.entry(c.key()).or_insert(c);
        }
    }
}

/// The agent tasks' end of the writer's channel (cheap to clone).
#[derive(Debug, Clone)]
pub struct JournalSender {
    tx: mpsc::Sender<LegChange>,
}

/// Makes the channel between the agent tasks and [`run_writer`].
pub fn channel() -> (JournalSender, mpsc::Receiver<LegChange>) {
    let (tx, rx) = mpsc::channel(CHANNEL);
    (JournalSender { tx }, rx)
}

impl JournalSender {
    /// Hands a change to the writer without waiting: the change comes back
    /// when the channel is full. After a shutdown the change is dropped
    /// with a log line, as [`send`](Self::send) does.
    pub fn try_send(&self, change: LegChange) -> Result<(), LegChange> {
        match self.tx.try_send(change) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(c)) => Err(c),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("leg journal writer stopped: change not saved");
                Ok(())
            }
        }
    }

    /// Hands a change to the writer; waits while it is behind
    /// (backpressure, never loss). After a shutdown the change is dropped
    /// with a log line: the writer flushed and stopped.
    pub async fn send(&self, change: LegChange) {
        let change = match self.tx.try_send(change) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("leg journal writer stopped: change not saved");
                return;
            }
            Err(mpsc::error::TrySendError::Full(c)) => c,
        };
        if self.tx.send(change).await.is_err() {
            tracing::debug!("leg journal writer stopped: change not saved");
        }
    }
}

/// The writer task: coalesces changes and commits them in batches until
/// every sender is gone or `shutdown` is cancelled, then flushes what is
/// pending (and queued) and returns.
#[allow(clippy::disallowed_methods)] // a driver: owns its timer and reads the wall clock.
pub async fn run_writer(
    store: Store,
    mut changes: mpsc::Receiver<LegChange>,
    shutdown: CancellationToken,
) {
    use tokio::time::Instant;

    let mut pending = PendingLegs::default();
    let mut oldest: Option<Instant> = None;
    let mut open = true;
    let mut failures = WarnLimiter::new(WARN_EVERY);
    let mut retry = RETRY_MIN;
    let mut retry_at: Option<Instant> = None;
    let mut closed_at: Option<Instant> = None;
    while open || !pending.is_empty() {
        loop {
            let due = retry_at.or_else(|| oldest.map(|o| o + LINGER));
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
                msg = changes.recv(), if open && pending.len() < MAX_BATCH * 4 => match msg {
                    Some(c) => {
                        oldest.get_or_insert_with(Instant::now);
                        pending.push(c);
                        // Take whatever else is queued without waking again.
                        while let Ok(c) = changes.try_recv() {
                            pending.push(c);
                        }
                    }
                    None => {
                        open = false;
                        closed_at = Some(Instant::now());
                    }
                },
                _ = shutdown.cancelled(), if open => {
                    while let Ok(c) = changes.try_recv() {
                        pending.push(c);
                    }
                    open = false;
                    closed_at = Some(Instant::now());
                }
                _ = sleep => break,
            }
        }
        if pending.is_empty() {
            continue;
        }
        retry_at = None;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let (rows, removals, taken) = pending.take(MAX_BATCH, now_ms);
        if pending.is_empty() {
            oldest = None;
        }
        match store.save_legs(&rows, &removals).await {
            Ok(()) => retry = RETRY_MIN,
            Err(e) => {
                let keys = taken.len();
                pending.restore(taken);
                oldest.get_or_insert_with(Instant::now);
                let now = Instant::now();
                if let Some(times) = failures.hit(now) {
                    tracing::warn!(error = %e, keys, times, "could not save the leg journal; retrying");
                }
                if closed_at.is_some_and(|c| now - c >= SHUTDOWN_FLUSH) {
                    tracing::error!(error = %e, unsaved = pending.len(), "shutting down with leg journal changes the database refused");
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

    fn answered(call_id: &str, cseq: u32) -> SavedLeg {
        SavedLeg {
            call_id: call_id.into(),
            branch: String::new(),
            kind: LegKind::Lead,
            record_id: Some(7),
            agent: "alice".into(),
            peer: Peer {
                transport: TransportKind::Udp,
                addr: "127.0.0.1:5080".parse().expect("addr"),
            },
            state: SavedLegState::Answered {
                dialog: SavedDialog {
                    id: DialogId {
                        call_id: call_id.into(),
                        local_tag: "l1".into(),
                        remote_tag: "r1".into(),
                    },
                    local_uri: "<sip:+15550000000@127.0.0.1>".into(),
                    remote_uri: "<sip:+442079460200@127.0.0.1:5080>".into(),
                    remote_target: "sip:carrier@127.0.0.1:5080".into(),
                    route_set: vec![
                        "<sip:p1.example.com;lr>".into(),
                        "<sip:p2.example.com;lr>".into(),
                    ],
                    local_seq: cseq,
                },
            },
            answered_ms: Some(1_000),
        }
    }

    /// An agent task's hand-over never waits: what a full channel refuses
    /// is held (the newest change per key), handed over once there is room,
    /// and dropped only for a call whose outcome write removes its rows.
    #[tokio::test]
    async fn a_full_channel_holds_changes_instead_of_waiting() {
        let (tx, mut rx) = mpsc::channel(1);
        let tx = JournalSender { tx };
        let mut unsent = Unsent::default();
        let save = |id: &str, cseq| LegChange::Save(Box::new(answered(id, cseq)));
        let local_seq = |c: &LegChange| match c {
            LegChange::Save(l) => match &l.state {
                SavedLegState::Answered { dialog } => dialog.local_seq,
                SavedLegState::Ringing { .. } => 0,
            },
            LegChange::Remove(_) => 0,
        };
        unsent.send(&tx, vec![save("a", 1), save("b", 1)]);
        assert!(!unsent.is_empty(), "one change fits, the other is held");
        // A newer change to a held key replaces it; nothing was awaited.
        unsent.send(&tx, vec![save("a", 2), save("b", 2)]);
        let first = rx.recv().await.expect("first");
        unsent.send(&tx, Vec::new());
        let second = rx.recv().await.expect("second");
        unsent.send(&tx, Vec::new());
        let third = rx.try_recv().ok();
        let got: Vec<(String, u32)> = [Some(first), Some(second), third]
            .into_iter()
            .flatten()
            .map(|c| (c.key().call_id, local_seq(&c)))
            .collect();
        // In arrival order: whichever went first, each key's newest state arrives last.
        let last_a = got.iter().rfind(|(k, _)| k == "a").map(|(_, s)| *s);
        let last_b = got.iter().rfind(|(k, _)| k == "b").map(|(_, s)| *s);
        assert_eq!((last_a, last_b), (Some(2), Some(2)), "{got:?}");
        assert!(unsent.is_empty());

        // While the channel stays full the tries back off, to a bound; a
        // hand-over that goes through starts again from the first wait.
        let mut backoff = Unsent::default();
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(waits[0], UNSENT_RETRY);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(waits[7], UNSENT_RETRY_MAX);
        backoff.send(&tx, Vec::new());
        assert_eq!(backoff.next_delay(), UNSENT_RETRY);

        // Held changes of a call being finished are dropped with it.
        unsent.send(&tx, vec![save("c", 1), save("d", 1)]);
        unsent.forget("c");
        unsent.forget("d");
        assert!(unsent.is_empty());
        // A task that ends hands over what it holds, waiting for room.
        unsent.send(&tx, vec![save("e", 1)]);
        let drain = tokio::spawn(async move {
            let mut n = 0;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        unsent.send(&tx, vec![save("f", 1)]);
        unsent.send_all(&tx).await;
        assert!(unsent.is_empty());
        drop(tx);
        assert_eq!(drain.await.expect("drain"), 3, "c's or d's save, e and f");
    }

    #[test]
    fn an_answered_leg_survives_its_row() {
        let leg = answered("c1", 3);
        let row = leg.to_row(5);
        assert!(row.answered);
        assert_eq!(row.peer, "udp:127.0.0.1:5080");
        let back = SavedLeg::from_row(&row).expect("row");
        let SavedLegState::Answered { dialog } = back.state else {
            panic!("answered");
        };
        let SavedLegState::Answered { dialog: orig } = leg.state else {
            panic!("answered");
        };
        assert_eq!(dialog, orig);
        assert_eq!(back.record_id, Some(7));
        assert_eq!(back.kind, LegKind::Lead);
    }

    #[test]
    fn a_ringing_leg_keeps_its_invite() {
        let invite = "INVITE sip:+442079460180@127.0.0.1:5080 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;rport\r\nMax-Forwards: 70\r\n\
            From: <sip:+15550000000@127.0.0.1>;tag=f1\r\nTo: <sip:+442079460180@127.0.0.1:5080>\r\n\
            Call-ID: c2\r\nCSeq: 1 INVITE\r\nContact: <sip:powerdial@127.0.0.1:5060>\r\n\
            Content-Length: 0\r\n\r\n";
        let invite = Request::try_from(invite.as_bytes().to_vec()).expect("invite");
        let mut leg = answered("c2", 1);
        leg.state = SavedLegState::Ringing { invite };
        leg.branch = "z9hG4bKabc".into();
        let row = leg.to_row(5);
        assert!(!row.answered);
        let back = SavedLeg::from_row(&row).expect("row");
        assert_eq!(back.branch, "z9hG4bKabc");
        let SavedLegState::Ringing { invite } = back.state else {
            panic!("ringing");
        };
        let cancel = crate::sip::transaction::build_cancel(&invite).expect("cancel");
        let text = cancel.to_string();
        assert!(text.contains("branch=z9hG4bKabc"), "{text}");
        assert!(text.contains("CSeq: 1 CANCEL"), "{text}");
    }

    #[test]
    fn bad_rows_are_refused() {
        let mut row = answered("c3", 1).to_row(5);
        row.local_tag = None;
        assert!(SavedLeg::from_row(&row).is_err());
        let mut row = answered("c3", 1).to_row(5);
        row.peer = "sctp:1.2.3.4:5".into();
        assert!(SavedLeg::from_row(&row).is_err());
    }

    fn ringing_lead() -> LeadLeg {
        use rand::SeedableRng;
        let params = super::super::LeadParams {
            trunk: Peer {
                transport: TransportKind::Udp,
                addr: "192.0.2.99:5080".parse().expect("addr"),
            },
            trunk_uri: "sip:192.0.2.99:5080".into(),
            number: "+15551234567".into(),
            caller_id: "+15550000000".into(),
            p_asserted_identity: None,
            credentials: None,
            local: super::super::LocalAddress {
                sent_by: "192.0.2.10:5060".into(),
                contact: "sip:powerdial@192.0.2.10:5060".into(),
                domain: "dialer.example".into(),
            },
            offer_sdp: b"v=0\r\n".to_vec(),
            ring_timeout: Duration::from_secs(32),
            response_timeout: None,
            max_call_length: Duration::from_secs(3600),
            timers: crate::sip::transaction::TimerConfig::default(),
            session_expires: None,
            keepalive: None,
        };
        let t0 = crate::sip::transaction::test_epoch();
        LeadLeg::dial(t0, params, &mut rand::rngs::StdRng::seed_from_u64(1)).expect("dial")
    }

    #[test]
    fn a_lead_leg_is_saved_once_while_ringing_and_removed_once_cancelled() {
        let mut leg = ringing_lead();
        let mut j = Journaled::default();
        fn lead(leg: &LeadLeg) -> LeadJournal<'_> {
            LeadJournal {
                leg,
                record_id: 3,
                answered_ms: None,
            }
        }
        let first = j.changes("alice", Some(lead(&leg)), None);
        assert_eq!(first.len(), 1);
        let LegChange::Save(saved) = &first[0] else {
            panic!("a save");
        };
        assert_eq!(saved.record_id, Some(3));
        assert!(matches!(saved.state, SavedLegState::Ringing { .. }));
        assert!(j.changes("alice", Some(lead(&leg)), None).is_empty());
        // The CANCEL is out: nothing is left for a crash to end.
        leg.hangup(crate::sip::transaction::test_epoch() + Duration::from_secs(1));
        let second = j.changes("alice", Some(lead(&leg)), None);
        assert!(
            matches!(&second[..], [LegChange::Remove(k)] if k.call_id == leg.call_id() && k.branch == saved.branch),
            "{second:?}"
        );
        assert!(j.changes("alice", Some(lead(&leg)), None).is_empty());
    }

    #[test]
    fn a_forgotten_leg_is_left_for_its_outcome_write_to_remove() {
        let leg = ringing_lead();
        let mut j = Journaled::default();
        let lead = LeadJournal {
            leg: &leg,
            record_id: 3,
            answered_ms: None,
        };
        assert_eq!(j.changes("alice", Some(lead), None).len(), 1);
        let forgotten = j.forget(leg.call_id());
        assert_eq!(forgotten.len(), 1);
        assert_eq!(forgotten[0].call_id, leg.call_id());
        assert!(j.changes("alice", None, None).is_empty());
        assert!(j.forget(leg.call_id()).is_empty());
    }

    fn key(call_id: &str) -> LegKey {
        LegKey {
            call_id: call_id.into(),
            branch: String::new(),
        }
    }

    #[test]
    fn the_last_change_per_key_wins() {
        let mut p = PendingLegs::default();
        p.push(LegChange::Save(Box::new(answered("a", 1))));
        p.push(LegChange::Save(Box::new(answered("a", 2))));
        p.push(LegChange::Save(Box::new(answered("b", 1))));
        p.push(LegChange::Remove(key("b")));
        assert_eq!(p.len(), 2);
        let (rows, removals, taken) = p.take(10, 9);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].local_cseq, Some(2));
        assert_eq!(removals, vec![("b".to_string(), String::new())]);
        // A failed batch comes back under newer changes.
        p.push(LegChange::Remove(key("a")));
        p.restore(taken);
        let (rows, removals, _) = p.take(10, 9);
        assert!(rows.is_empty());
        let mut removals = removals;
        removals.sort();
        assert_eq!(
            removals,
            vec![
                ("a".to_string(), String::new()),
                ("b".to_string(), String::new())
            ]
        );
    }
}
