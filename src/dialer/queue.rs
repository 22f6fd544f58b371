//! The pure dialer queue engine: which lead each agent's next call targets
//! (SPEC §2 R1–R15; the help page's "Which leads are called, and in what
//! order").
//!
//! One [`SessionQueue`] per dialer session. It does no I/O and never reads the
//! clock: every operation that depends on time takes `now` as wall-clock
//! milliseconds since the Unix epoch (`i64`), the same scale as the call
//! history in the database, so a block can come from a call made by another
//! session or before a restart.
//!
//! # Order (R1, R3, R6, R7)
//! A lead that may be called now is kept in an ordered set keyed by
//! `(calls, view position)`, where `calls` is the number of unanswered calls
//! this session made to it since it (re-)entered the view. The next claim is
//! the smallest key, so:
//! - uncalled leads (`calls == 0`) go first, in view order (R1, R3);
//! - a lead is retried only when no lead with fewer calls is ready, even if
//!   its block has long expired and it ranks higher in the view (R3). Taking
//!   the number of calls as the tier, rather than a plain "called" flag, is
//!   what keeps the retry pass fair on large lists: a lead near the top whose
//!   block expires every hour is not called a third time before the leads
//!   further down had their second call;
//! - entering leads (R6) are slotted by their view position; re-entering ones
//!   (R7) are new and uncalled, so they also come before every retry.
//!
//! Leads blocked by R4 wait in a second set ordered by the time their block
//! expires and move to the ready set as `now` passes it. Both sets are
//! B-trees: a claim costs O(log n) plus O(log n) per block that expired since
//! the previous claim, never a scan.
//!
//! # Decisions where the SPEC is silent
//! - **Outcomes.** `no_answer` (R8), `busy` (R12), `skipped` (R9) and
//!   `restricted` (R11) all count as an unanswered call: the lead is blocked
//!   for `block` from the time of the report, then retried in the retry pass.
//!   The help page says a restricted lead is "blocked for an hour until the
//!   dialer looks at that lead again", so it is retried like the others; a
//!   number that stays restricted costs one failed attempt per block.
//!   `temporary_error` (R10) is not a call: the lead keeps its tier and is
//!   held until the next [`SessionQueue::refresh`], then called at its place.
//!   `answered` (R5) makes the lead done for the session.
//! - **Blocks from other sessions (R4).** `last_calls` is consulted for a lead
//!   the first time it enters this session's view (all leads at session start,
//!   later the newly entering ones). A lead that left and re-enters is new
//!   (R7): no block applies. Calls that other sessions make to leads already in
//!   the queue are learned through [`SessionQueue::record_external_call`]
//!   (the driver hears of them through the store); the database claim that
//!   guards R13 across instances is the last line.
//! - **Reset (R14)** erases this session's history: calls, answers, its blocks
//!   and pending temporary-error waits. Blocks learned from other sessions'
//!   calls stay, because R4 says "by any session" and reset erases only "the
//!   session's" history. A call in progress during a reset keeps its claim and
//!   its outcome is applied when it is reported: it is a real call.
//! - **A claimed lead that leaves the view** keeps its claim until the call is
//!   reported or released (R13: the call goes on), and is not queued again. If
//!   it re-enters meanwhile it is a new lead (new generation) but stays held
//!   until the old call ends; that call's outcome is then ignored.
//! - **Duplicate ids** in a view snapshot: the first occurrence counts.
//! - **An empty view** is done (R15) vacuously; the session keeps watching.
//! - **Time going backwards**: `now` is clamped to the latest value seen.
//! - **R2** (first phone of the first contact) is the caller's: the engine
//!   hands out leads, one claim per lead per pass, never phones.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

/// The default R4 block: a lead is never called twice within an hour.
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(3600);

/// Position marking an entry whose lead is not in the current view (R6).
const NOT_IN_VIEW: u32 = u32::MAX;
/// "No block": earlier than any `now`.
const NEVER: i64 = i64::MIN;

/// A lead's id in the store (R1: the view lists these in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeadId(pub i64);

impl fmt::Display for LeadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An agent dialing in the session; the session maps its agents to these
/// (R13: one live claim per agent, one agent per lead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(pub i64);

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a call to a lead ended (R5, R8–R12): the call record's outcome.
pub use crate::call::Outcome;

/// Where a lead stands in the R3 order: never called in this session, or
/// called that many times without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Never called by this session since it entered the view (R3, R7).
    Uncalled,
    /// Called `calls` times by this session, never answered (R3 retry pass).
    Unanswered {
        /// Unanswered calls since the lead entered the view (or the reset).
        calls: u32,
    },
}

impl Tier {
    fn from_calls(calls: u32) -> Tier {
        if calls == 0 {
            Tier::Uncalled
        } else {
            Tier::Unanswered { calls }
        }
    }
}

/// A lead handed to one agent (R13): dial it, then [`SessionQueue::report`]
/// the outcome with this `generation`, or [`SessionQueue::release`] it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The lead to dial (R2: the caller picks its first contact's first phone).
    pub lead: LeadId,
    /// Bumped each time the lead re-enters the view (R7); a report for an
    /// older generation does not touch the new lead's history.
    pub generation: u32,
    /// Uncalled or which retry (R3).
    pub tier: Tier,
    /// Position in the last refreshed view (R1).
    pub view_pos: u32,
}

/// What a [`SessionQueue::report`] did with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Recorded in the lead's session history (R5, R8–R12).
    Applied,
    /// The lead left the view during the call: claim released, not queued
    /// again (R6).
    LeftView,
    /// The lead left and re-entered the view during the call (R7): it is a
    /// new lead, the old call's outcome is ignored and the lead is queued.
    Stale,
}

/// Counts of a refresh's changes, for logs and events (R6, R7, R10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshSummary {
    /// Leads seen for the first time in this session (R6; R4 applies).
    pub entered: usize,
    /// Leads that had left and are back, as new (R7).
    pub reentered: usize,
    /// Leads that left the view (R6).
    pub left: usize,
    /// Leads waiting after a temporary error, now eligible again (R10).
    pub retried: usize,
    /// Repeated ids in the snapshot, ignored after their first position.
    pub duplicates: usize,
}

/// What this session recorded about one lead, for the session driver to
/// persist and to [`SessionQueue::restore`] after a restart, so a resumed
/// session neither calls a lead again within its block (R4) nor forgets its
/// answers (R5) and retry tiers (R3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadHistory {
    /// Generation of the lead (R7).
    pub generation: u32,
    /// Unanswered calls by this session (R3 tier).
    pub calls: u32,
    /// Answered in this session (R5).
    pub answered: bool,
    /// End of the block from this session's last call, epoch ms (R4).
    pub blocked_until: Option<i64>,
}

/// The state of an entry listed by [`SessionQueue::upcoming`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    /// May be claimed now; listed in claim order (R1, R3).
    Ready,
    /// Blocked until this time, epoch ms (R4, R8, R9, R11, R12).
    Blocked {
        /// End of the block, epoch ms.
        until: i64,
    },
    /// Waiting for the next view refresh after a temporary error (R10).
    AwaitingRefresh,
    /// Outside its calling hours until this time, epoch ms (SPEC §4
    /// `calling_hours`): held, never dialed before.
    Held {
        /// The opening, epoch ms.
        until: i64,
    },
}

/// One upcoming entry of the queue (`GET /sessions/{id}/queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueItem {
    /// The lead.
    pub lead: LeadId,
    /// Position in the last refreshed view (R1).
    pub view_pos: u32,
    /// Uncalled or which retry (R3).
    pub tier: Tier,
    /// Generation (R7).
    pub generation: u32,
    /// Ready, blocked or waiting for a refresh.
    pub state: ItemState,
}

/// Sizes of the queue's parts, for `GET /sessions/{id}` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Leads in the last refreshed view.
    pub in_view: usize,
    /// Leads that may be claimed (R1, R3).
    pub ready: usize,
    /// Leads waiting for their block to expire (R4); a block that ended since
    /// the last claim or listing is still counted here.
    pub blocked: usize,
    /// Leads waiting for the next refresh (R10).
    pub awaiting_refresh: usize,
    /// Leads held outside their calling hours (SPEC §4); one whose window
    /// opened since the last claim or listing is still counted here.
    pub held: usize,
    /// Live claims (R13).
    pub claimed: usize,
    /// Leads in the view that answered (R5, R15).
    pub answered: usize,
}

/// Why a lead is where it is in the queue (`?explain=1`); displays as e.g.
/// `R4: blocked until 14:05 UTC` or `R3: uncalled, view pos 7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explanation {
    /// The lead is not in the session's view (R6).
    NotInView,
    /// An agent is calling it (R13).
    Claimed {
        /// The agent holding the claim.
        agent: AgentId,
    },
    /// It answered: not called again in this session (R5).
    Answered,
    /// A temporary error: retried after the next refresh (R10).
    AwaitingRefresh,
    /// Called within `block` (R4), by this session or another.
    Blocked {
        /// End of the block, epoch ms.
        until: i64,
        /// The block comes from a call by another session (or from before the
        /// session started), not from this session's own call.
        by_other_session: bool,
    },
    /// Uncalled: called in view order (R1, R3).
    Uncalled {
        /// Position in the view.
        view_pos: u32,
        /// It left and re-entered the view, so its history was forgotten (R7).
        reentered: bool,
    },
    /// Called without answer; waits until every lead with fewer calls has
    /// been called (R3).
    WaitingForRetryPass {
        /// Position in the view.
        view_pos: u32,
        /// Unanswered calls so far.
        calls: u32,
    },
    /// Called without answer and due in the current retry pass (R3).
    Retry {
        /// Position in the view.
        view_pos: u32,
        /// Unanswered calls so far.
        calls: u32,
    },
    /// Outside its calling hours (SPEC §4 `calling_hours`, in the lead's
    /// local time): held, never dialed, until its window opens.
    CallingHours {
        /// The opening, epoch ms.
        opens_at: i64,
        /// The lead's zone that opens last (the one whose window applies).
        zone: chrono_tz::Tz,
        /// Whether the lead's day is a holiday.
        holiday: bool,
    },
}

impl Explanation {
    /// The rule of SPEC §2 that places or holds the lead (`"R3"`).
    pub fn rule(&self) -> &'static str {
        match self {
            Explanation::NotInView => "R6",
            Explanation::Claimed { .. } => "R13",
            Explanation::Answered => "R5",
            Explanation::AwaitingRefresh => "R10",
            Explanation::Blocked { .. } => "R4",
            Explanation::Uncalled {
                reentered: true, ..
            } => "R7",
            Explanation::Uncalled { .. }
            | Explanation::WaitingForRetryPass { .. }
            | Explanation::Retry { .. } => "R3",
            Explanation::CallingHours { .. } => "calling_hours",
        }
    }

    /// The same for a person at the console: no rule numbers, positions
    /// counted from 1 ("Never called; 3rd in the view").
    pub fn sentence(&self) -> String {
        match *self {
            Explanation::NotInView => "No longer in the Smart View: not called".into(),
            Explanation::Claimed { .. } => "Being called right now".into(),
            Explanation::Answered => "Answered: not called again in this session".into(),
            Explanation::AwaitingRefresh => {
                "The carrier reported a temporary error: tried again after the next view refresh"
                    .into()
            }
            Explanation::Blocked {
                until,
                by_other_session,
            } => {
                let at = chrono::DateTime::from_timestamp_millis(until)
                    .map(|t| t.format("%H:%M UTC").to_string())
                    .unwrap_or_else(|| "later".into());
                if by_other_session {
                    format!("Called recently from another session: not before {at}")
                } else {
                    format!("Called recently: not before {at}")
                }
            }
            Explanation::Uncalled {
                view_pos,
                reentered: false,
            } => format!("Never called; {} in the view", ordinal(view_pos + 1)),
            Explanation::Uncalled {
                view_pos,
                reentered: true,
            } => format!(
                "Came back into the view, so called as new; {} in the view",
                ordinal(view_pos + 1)
            ),
            Explanation::WaitingForRetryPass { view_pos, calls } => format!(
                "{} without an answer; tried again once every other lead has been called ({} in the view)",
                times(calls),
                ordinal(view_pos + 1)
            ),
            Explanation::Retry { view_pos, calls } => format!(
                "{} without an answer; being tried again now ({} in the view)",
                times(calls),
                ordinal(view_pos + 1)
            ),
            Explanation::CallingHours {
                opens_at,
                zone,
                holiday,
            } => {
                let utc = chrono::DateTime::from_timestamp_millis(opens_at)
                    .map(|t| t.format("%a %-d %b %H:%M UTC").to_string())
                    .unwrap_or_else(|| "later".into());
                format!(
                    "Outside calling hours{}: called from {} local time ({utc})",
                    if holiday { " (a holiday)" } else { "" },
                    super::hours::local_hm(zone, opens_at)
                )
            }
        }
    }
}

/// "1st", "2nd", "3rd", "11th", "22nd".
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// "Called once", "Called twice", "Called 3 times".
fn times(calls: u32) -> String {
    match calls {
        1 => "Called once".into(),
        2 => "Called twice".into(),
        n => format!("Called {n} times"),
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Explanation::NotInView => f.write_str("R6: not in the view"),
            Explanation::Claimed { agent } => write!(f, "R13: being called by agent {agent}"),
            Explanation::Answered => f.write_str("R5: answered, not called again in this session"),
            Explanation::AwaitingRefresh => {
                f.write_str("R10: temporary error, retried after the next view refresh")
            }
            Explanation::Blocked {
                until,
                by_other_session,
            } => {
                f.write_str("R4: blocked until ")?;
                match chrono::DateTime::from_timestamp_millis(until) {
                    Some(t) => write!(f, "{}", t.format("%H:%M UTC"))?,
                    None => write!(f, "{until} ms")?,
                }
                if by_other_session {
                    f.write_str(" (called by another session)")?;
                }
                Ok(())
            }
            Explanation::Uncalled {
                view_pos,
                reentered: false,
            } => write!(f, "R3: uncalled, view pos {view_pos}"),
            Explanation::Uncalled {
                view_pos,
                reentered: true,
            } => write!(f, "R7: re-entered the view, uncalled, view pos {view_pos}"),
            Explanation::WaitingForRetryPass { view_pos, calls } => write!(
                f,
                "R3: unanswered ({calls} calls), waiting for the retry pass, view pos {view_pos}"
            ),
            Explanation::Retry { view_pos, calls } => {
                write!(f, "R3: retry pass {calls}, view pos {view_pos}")
            }
            Explanation::CallingHours { opens_at, zone, .. } => write!(
                f,
                "calling hours: opens {}",
                super::hours::local_hm(zone, opens_at)
            ),
        }
    }
}

/// A queue operation that cannot be done (DESIGN "Errors").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// One call per agent at a time (SPEC §1, R13): report or release first.
    #[error("agent {agent} already holds lead {lead}")]
    AgentBusy {
        /// The agent.
        agent: AgentId,
        /// The lead it holds.
        lead: LeadId,
    },
    /// The agent holds no claim on that lead and generation.
    #[error("agent {agent} holds no claim on lead {lead} (generation {generation})")]
    NotClaimed {
        /// The agent.
        agent: AgentId,
        /// The lead named in the report.
        lead: LeadId,
        /// The generation named in the report.
        generation: u32,
    },
    /// A view position must fit in `u32` (minus one marker value).
    #[error("view of {len} leads exceeds the queue's limit of {max}")]
    ViewTooLarge {
        /// Leads in the snapshot.
        len: usize,
        /// The limit.
        max: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Answered,
    AwaitingRefresh,
}

/// One lead's session history. 48 bytes: the queue must hold 1,000,000 of
/// them under 300 bytes each (SPEC §6).
#[derive(Debug, Clone)]
struct Entry {
    /// End of the block from this session's own last call (R8, R9, R11, R12).
    session_block: i64,
    /// End of the block from calls by other sessions (R4 "by any session").
    external_block: i64,
    /// Held outside its calling hours until this time (SPEC §4), or NEVER.
    hold_until: i64,
    /// View position, or `NOT_IN_VIEW`.
    pos: u32,
    /// Unanswered calls by this session: the R3 tier.
    calls: u32,
    generation: u32,
    /// The refresh that last saw this lead in the view.
    seen: u32,
    status: Status,
    claimed: bool,
    /// The hold's day is a holiday in the lead's zone.
    hold_holiday: bool,
    /// The lead's zone whose window the hold waits for.
    hold_zone: chrono_tz::Tz,
}

impl Entry {
    fn blocked_until(&self) -> i64 {
        self.session_block.max(self.external_block)
    }

    fn in_view(&self) -> bool {
        self.pos != NOT_IN_VIEW
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    lead: LeadId,
    generation: u32,
}

fn ready_key(calls: u32, pos: u32) -> u64 {
    (u64::from(calls) << 32) | u64::from(pos)
}

fn key_pos(key: u64) -> u32 {
    // The low half is the position by construction.
    (key & u64::from(u32::MAX)) as u32
}

/// The queue of one dialer session (SPEC §2 R1–R15): see the module docs for
/// the order and the decisions.
#[derive(Debug, Clone)]
pub struct SessionQueue {
    block_ms: i64,
    entries: HashMap<LeadId, Entry>,
    /// The last refreshed view, deduplicated: position → lead.
    view: Vec<LeadId>,
    /// Claimable now (R1, R3): `ready_key(calls, pos)`.
    ready: BTreeSet<u64>,
    /// Blocked (R4): `(until, pos)`, moved to `ready` once `until <= now`.
    blocked: BTreeSet<(i64, u32)>,
    /// Held outside calling hours: `(opens_at, pos)`, moved on (to
    /// `blocked` or `ready`) once `opens_at <= now`.
    held: BTreeSet<(i64, u32)>,
    /// Leads held until the next refresh (R10), in report order.
    awaiting_refresh: Vec<LeadId>,
    claims: HashMap<AgentId, Held>,
    answered_in_view: usize,
    /// Entries of `view` whose lead left it through [`SessionQueue::leave`]
    /// since the last refresh (their slots stay, so positions stay dense).
    left_since_refresh: usize,
    refresh_seq: u32,
    /// The latest `now` seen: time never goes backwards here.
    clock: i64,
}

impl SessionQueue {
    /// An empty queue whose leads are blocked for `block` after a call (R4;
    /// config `block`, default [`DEFAULT_BLOCK`]). Fill it with
    /// [`refresh`](Self::refresh).
    pub fn new(block: Duration) -> SessionQueue {
        SessionQueue {
            block_ms: i64::try_from(block.as_millis()).unwrap_or(i64::MAX),
            entries: HashMap::new(),
            view: Vec::new(),
            ready: BTreeSet::new(),
            blocked: BTreeSet::new(),
            held: BTreeSet::new(),
            awaiting_refresh: Vec::new(),
            claims: HashMap::new(),
            answered_in_view: 0,
            left_since_refresh: 0,
            refresh_seq: 0,
            clock: NEVER,
        }
    }

    /// The R4 block this queue applies.
    pub fn block(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.block_ms).unwrap_or(0))
    }

    fn tick(&mut self, now: i64) -> i64 {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// Takes a new snapshot of the session's view, `view` ordered by the
    /// view's sort (R1, R6). Entering leads are slotted by their position;
    /// leads gone from the view leave the queue (a claimed one finishes its
    /// call and is not queued again); leads that left earlier and are back are
    /// new (R7: history forgotten, no block). A lead entering for the first
    /// time is blocked until `last_calls(lead) + block` when it was called by
    /// any session within `block` (R4, "skipped at start"). Leads waiting
    /// after a temporary error become eligible again (R10).
    ///
    /// O(n log n) in the view's size.
    pub fn refresh<F>(
        &mut self,
        view: &[LeadId],
        last_calls: F,
        now: i64,
    ) -> Result<RefreshSummary, QueueError>
    where
        F: Fn(LeadId) -> Option<i64>,
    {
        self.refresh_view(view, last_calls, now, true)
    }

    /// [`Self::refresh`] for a re-read caused by a lead change (R6 "as soon
    /// as leads change"), which must not also end the R10 wait: leads held
    /// after a temporary error stay held until the next scheduled refresh.
    /// Otherwise every call outcome (itself a lead change) would release
    /// them, and a carrier answering 503 would be redialled within a second
    /// instead of after `refresh_interval`.
    pub fn refresh_on_change<F>(
        &mut self,
        view: &[LeadId],
        last_calls: F,
        now: i64,
    ) -> Result<RefreshSummary, QueueError>
    where
        F: Fn(LeadId) -> Option<i64>,
    {
        self.refresh_view(view, last_calls, now, false)
    }

    fn refresh_view<F>(
        &mut self,
        view: &[LeadId],
        last_calls: F,
        now: i64,
        release_temporary: bool,
    ) -> Result<RefreshSummary, QueueError>
    where
        F: Fn(LeadId) -> Option<i64>,
    {
        let max = NOT_IN_VIEW as usize;
        if view.len() >= max {
            return Err(QueueError::ViewTooLarge {
                len: view.len(),
                max: max - 1,
            });
        }
        let now = self.tick(now);
        // Wrapping is fine: only "seen by this very refresh" matters, and the
        // previous refresh's value always differs from this one.
        self.refresh_seq = self.refresh_seq.wrapping_add(1);
        let seq = self.refresh_seq;
        let block_ms = self.block_ms;
        let mut summary = RefreshSummary::default();
        let mut new_view = Vec::with_capacity(view.len());
        if self.entries.is_empty() {
            // The session's first read: every lead is new, so the map is
            // sized once instead of doubling its way up (each step rehashes
            // and holds the old table and the new one at once). Later
            // refreshes add only the entering leads.
            self.entries.reserve(view.len());
        }

        for &lead in view {
            // `new_view.len() < view.len() < u32::MAX` was checked above.
            let pos = new_view.len() as u32;
            match self.entries.entry(lead) {
                MapEntry::Occupied(slot) => {
                    let e = slot.into_mut();
                    if e.seen == seq {
                        summary.duplicates += 1;
                        continue;
                    }
                    if !e.in_view() {
                        // R7: back in the view, so a new lead. A claim from
                        // before stays: its call is still going on (R13).
                        e.generation = e.generation.wrapping_add(1);
                        e.calls = 0;
                        e.status = Status::Pending;
                        e.session_block = NEVER;
                        e.external_block = NEVER;
                        summary.reentered += 1;
                    } else if release_temporary && e.status == Status::AwaitingRefresh {
                        e.status = Status::Pending;
                        summary.retried += 1;
                    }
                    e.pos = pos;
                    e.seen = seq;
                }
                MapEntry::Vacant(slot) => {
                    let external_block =
                        last_calls(lead).map_or(NEVER, |at| at.saturating_add(block_ms));
                    slot.insert(Entry {
                        session_block: NEVER,
                        external_block,
                        hold_until: NEVER,
                        pos,
                        calls: 0,
                        generation: 0,
                        seen: seq,
                        status: Status::Pending,
                        claimed: false,
                        hold_holiday: false,
                        hold_zone: chrono_tz::Tz::UTC,
                    });
                    summary.entered += 1;
                }
            }
            new_view.push(lead);
        }

        for lead in &self.view {
            if let Some(e) = self.entries.get_mut(lead) {
                if e.seen != seq && e.in_view() {
                    e.pos = NOT_IN_VIEW;
                    summary.left += 1;
                }
            }
        }

        self.view = new_view;
        self.left_since_refresh = 0;
        if release_temporary {
            self.awaiting_refresh.clear();
        } else {
            let entries = &self.entries;
            self.awaiting_refresh.retain(|l| {
                entries
                    .get(l)
                    .is_some_and(|e| e.in_view() && e.status == Status::AwaitingRefresh)
            });
        }
        self.rebuild(now);
        Ok(summary)
    }

    /// Rebuilds the ordered sets and counters from the entries of the view.
    fn rebuild(&mut self, now: i64) {
        let mut ready = Vec::with_capacity(self.view.len());
        let mut blocked = Vec::new();
        let mut held = Vec::new();
        let mut answered = 0;
        for (pos, lead) in self.view.iter().enumerate() {
            let Some(e) = self.entries.get(lead) else {
                continue;
            };
            if e.pos != pos as u32 {
                // Left the view since the last refresh (`leave`).
                continue;
            }
            match e.status {
                Status::Answered => answered += 1,
                Status::AwaitingRefresh => {}
                Status::Pending if e.claimed => {}
                Status::Pending => {
                    // The view's length fits in u32, checked by `refresh`.
                    let pos = pos as u32;
                    let until = e.blocked_until();
                    if e.hold_until > now {
                        held.push((e.hold_until, pos));
                    } else if until > now {
                        blocked.push((until, pos));
                    } else {
                        ready.push(ready_key(e.calls, pos));
                    }
                }
            }
        }
        // Sorted input lets the B-trees bulk-build in linear time.
        ready.sort_unstable();
        blocked.sort_unstable();
        held.sort_unstable();
        self.ready = ready.into_iter().collect();
        self.blocked = blocked.into_iter().collect();
        self.held = held.into_iter().collect();
        self.answered_in_view = answered;
    }

    /// Moves leads whose calling hours opened by `now` on (to the blocked
    /// or the ready set), then leads whose block ended by `now` to the
    /// ready set (R4).
    fn promote(&mut self, now: i64) {
        while let Some(&(until, pos)) = self.held.first() {
            if until > now {
                break;
            }
            self.held.pop_first();
            let lead = self.view.get(pos as usize).copied();
            if let Some(lead) = lead {
                // A stale pair (the lead moved or was held anew) is skipped.
                if self
                    .entries
                    .get(&lead)
                    .is_some_and(|e| e.pos == pos && e.hold_until == until)
                {
                    self.enqueue(lead);
                }
            }
        }
        while let Some(&(until, pos)) = self.blocked.first() {
            if until > now {
                break;
            }
            self.blocked.pop_first();
            let calls = self
                .view
                .get(pos as usize)
                .and_then(|lead| self.entries.get(lead))
                .map(|e| e.calls);
            if let Some(calls) = calls {
                self.ready.insert(ready_key(calls, pos));
            }
        }
    }

    /// Puts a pending, unclaimed lead of the view back in the right set.
    fn enqueue(&mut self, lead: LeadId) {
        let Some(e) = self.entries.get(&lead) else {
            return;
        };
        if !e.in_view() || e.claimed || e.status != Status::Pending {
            return;
        }
        let until = e.blocked_until();
        if e.hold_until > self.clock {
            self.held.insert((e.hold_until, e.pos));
        } else if until > self.clock {
            self.blocked.insert((until, e.pos));
        } else {
            self.ready.insert(ready_key(e.calls, e.pos));
        }
    }

    /// Hands `agent` the next lead to call, or `None` if no lead may be called
    /// now (see [`next_wakeup`](Self::next_wakeup)). The lead is the first in
    /// view order (R1) among the leads with the fewest unanswered calls (R3),
    /// never blocked (R4), answered (R5) or held by another agent (R13).
    /// O(log n), plus O(log n) per block that expired since the last claim.
    pub fn claim_next(&mut self, agent: AgentId, now: i64) -> Result<Option<Claim>, QueueError> {
        if let Some(held) = self.claims.get(&agent) {
            return Err(QueueError::AgentBusy {
                agent,
                lead: held.lead,
            });
        }
        let now = self.tick(now);
        self.promote(now);
        // The sets only hold leads that are pending, unclaimed and in the
        // view; the checks below only guard against a broken invariant.
        while let Some(key) = self.ready.pop_first() {
            let pos = key_pos(key);
            let Some(&lead) = self.view.get(pos as usize) else {
                continue;
            };
            let Some(e) = self.entries.get_mut(&lead) else {
                continue;
            };
            if e.claimed || e.status != Status::Pending || e.pos != pos {
                continue;
            }
            e.claimed = true;
            let claim = Claim {
                lead,
                generation: e.generation,
                tier: Tier::from_calls(e.calls),
                view_pos: pos,
            };
            self.claims.insert(
                agent,
                Held {
                    lead,
                    generation: e.generation,
                },
            );
            return Ok(Some(claim));
        }
        Ok(None)
    }

    /// Records how `agent`'s call to `lead` ended (R5, R8–R12) and frees the
    /// claim (R13). `generation` is the claim's. Answered: done for this
    /// session. No answer, busy, skipped, restricted: one more unanswered
    /// call, blocked for `block` from `now`. Temporary error: held until the
    /// next refresh, not blocked. If the lead left the view meanwhile it is
    /// not queued again; if it re-entered, the outcome is ignored (stale
    /// generation, R7).
    pub fn report(
        &mut self,
        agent: AgentId,
        lead: LeadId,
        generation: u32,
        outcome: Outcome,
        now: i64,
    ) -> Result<Reported, QueueError> {
        match self.claims.get(&agent) {
            Some(held) if held.lead == lead && held.generation == generation => {}
            _ => {
                return Err(QueueError::NotClaimed {
                    agent,
                    lead,
                    generation,
                })
            }
        }
        let now = self.tick(now);
        self.claims.remove(&agent);
        let block_ms = self.block_ms;
        let Some(e) = self.entries.get_mut(&lead) else {
            return Ok(Reported::LeftView);
        };
        e.claimed = false;
        if !e.in_view() {
            return Ok(Reported::LeftView);
        }
        if e.generation != generation {
            self.enqueue(lead);
            return Ok(Reported::Stale);
        }
        match outcome {
            // A callback reached an agent: the lead talked to us (R5); a
            // voicemail answered too (R5: "person or voicemail").
            Outcome::Answered
            | Outcome::Inbound
            | Outcome::Voicemail
            | Outcome::VoicemailDropped => {
                e.status = Status::Answered;
                self.answered_in_view += 1;
            }
            Outcome::TemporaryError => {
                e.status = Status::AwaitingRefresh;
                self.awaiting_refresh.push(lead);
            }
            Outcome::NoAnswer | Outcome::Busy | Outcome::Skipped | Outcome::Restricted => {
                e.calls = e.calls.saturating_add(1);
                e.session_block = now.saturating_add(block_ms);
                self.enqueue(lead);
            }
        }
        Ok(Reported::Applied)
    }

    /// Frees `agent`'s claim without a call (the agent paused or left before
    /// dialing): the lead goes back where it was, with no call counted and no
    /// block (R14 pause). Returns the lead, if the agent held one.
    pub fn release(&mut self, agent: AgentId) -> Option<LeadId> {
        let held = self.claims.remove(&agent)?;
        if let Some(e) = self.entries.get_mut(&held.lead) {
            e.claimed = false;
        }
        self.enqueue(held.lead);
        Some(held.lead)
    }

    /// Holds `agent`'s claimed lead outside its calling hours (SPEC §4):
    /// the claim is freed with no call counted and no block, and the lead
    /// is not handed out again before `opens_at` (epoch ms), when it goes
    /// back to its place (R1, R3). `zone` and `holiday` are for the explain
    /// line. The caller decides the verdict ([`super::hours`]) before any
    /// INVITE; a lead that left (or left and re-entered) the view meanwhile
    /// is handled as [`release`](Self::release) would.
    pub fn hold(
        &mut self,
        agent: AgentId,
        claim: &Claim,
        opens_at: i64,
        zone: chrono_tz::Tz,
        holiday: bool,
    ) -> Result<(), QueueError> {
        match self.claims.get(&agent) {
            Some(held) if held.lead == claim.lead && held.generation == claim.generation => {}
            _ => {
                return Err(QueueError::NotClaimed {
                    agent,
                    lead: claim.lead,
                    generation: claim.generation,
                })
            }
        }
        self.claims.remove(&agent);
        if let Some(e) = self.entries.get_mut(&claim.lead) {
            e.claimed = false;
            if e.generation == claim.generation {
                e.hold_until = opens_at;
                e.hold_zone = zone;
                e.hold_holiday = holiday;
            }
        }
        self.enqueue(claim.lead);
        Ok(())
    }

    /// Ends every calling-hours hold (the hours changed): the held leads go
    /// back to their places and are checked again when claimed.
    pub fn clear_holds(&mut self, now: i64) {
        let now = self.tick(now);
        for lead in &self.view {
            if let Some(e) = self.entries.get_mut(lead) {
                e.hold_until = NEVER;
            }
        }
        self.rebuild(now);
    }

    /// "Reset & call again" (R14): forgets this session's calls, answers,
    /// blocks and temporary-error waits, and starts again from the top of the
    /// view. Blocks from other sessions' calls stay (R4); live claims stay
    /// (R13) and their outcomes count when reported.
    pub fn reset(&mut self, now: i64) {
        let now = self.tick(now);
        for lead in &self.view {
            if let Some(e) = self.entries.get_mut(lead) {
                e.calls = 0;
                e.status = Status::Pending;
                e.session_block = NEVER;
            }
        }
        self.awaiting_refresh.clear();
        self.rebuild(now);
    }

    /// Notes that another session (or a call logged through the API) called
    /// `lead` at `at` (epoch ms): it is not called before `at + block` (R4
    /// "by any session"). Unknown leads are ignored: [`refresh`](Self::refresh)
    /// asks `last_calls` when they enter.
    pub fn record_external_call(&mut self, lead: LeadId, at: i64) {
        let until = at.saturating_add(self.block_ms);
        let Some(e) = self.entries.get_mut(&lead) else {
            return;
        };
        if until <= e.external_block {
            return;
        }
        let (old_until, pos, calls, hold) = (e.blocked_until(), e.pos, e.calls, e.hold_until);
        e.external_block = until;
        let queued = e.in_view() && !e.claimed && e.status == Status::Pending;
        if queued
            && (self.held.remove(&(hold, pos))
                || self.blocked.remove(&(old_until, pos))
                || self.ready.remove(&ready_key(calls, pos)))
        {
            self.enqueue(lead);
        }
    }

    /// This session's record of `lead` (see [`LeadHistory`]), if it is in
    /// the view.
    pub fn history(&self, lead: LeadId) -> Option<LeadHistory> {
        let e = self.entries.get(&lead).filter(|e| e.in_view())?;
        Some(LeadHistory {
            generation: e.generation,
            calls: e.calls,
            answered: e.status == Status::Answered,
            blocked_until: (e.session_block != NEVER).then_some(e.session_block),
        })
    }

    /// Puts back what the session had recorded about `lead` before a
    /// restart (R3, R4, R5), after the first [`refresh`](Self::refresh).
    /// Returns false, changing nothing, if the lead is not in the view or is
    /// claimed.
    pub fn restore(&mut self, lead: LeadId, history: LeadHistory) -> bool {
        let Some(e) = self.entries.get_mut(&lead) else {
            return false;
        };
        if !e.in_view() || e.claimed {
            return false;
        }
        match e.status {
            Status::Answered => self.answered_in_view -= 1,
            Status::AwaitingRefresh => self.awaiting_refresh.retain(|&l| l != lead),
            Status::Pending => {
                if !self.held.remove(&(e.hold_until, e.pos))
                    && !self.blocked.remove(&(e.blocked_until(), e.pos))
                {
                    self.ready.remove(&ready_key(e.calls, e.pos));
                }
            }
        }
        e.generation = history.generation;
        e.calls = history.calls;
        e.session_block = history.blocked_until.unwrap_or(NEVER);
        if history.answered {
            e.status = Status::Answered;
            self.answered_in_view += 1;
        } else {
            e.status = Status::Pending;
            self.enqueue(lead);
        }
        true
    }

    /// R15: every lead in the view has answered (true for an empty view; the
    /// session keeps watching it for new leads).
    pub fn is_done(&self) -> bool {
        self.answered_in_view + self.left_since_refresh == self.view.len()
    }

    /// When an idle agent should try [`claim_next`](Self::claim_next) again:
    /// `now` if a lead is ready, else the earliest block expiry (R4) or
    /// calling-hours opening, or `None` if only a refresh, report or reset
    /// can bring a lead.
    pub fn next_wakeup(&self, now: i64) -> Option<i64> {
        let now = now.max(self.clock);
        if !self.ready.is_empty() {
            return Some(now);
        }
        let blocked = self.blocked.first().map(|&(until, _)| until);
        let held = self.held.first().map(|&(until, _)| until);
        match (blocked, held) {
            (Some(a), Some(b)) => Some(a.min(b).max(now)),
            (a, b) => a.or(b).map(|t| t.max(now)),
        }
    }

    /// The upcoming leads as of `now`: the ready ones in claim order (R1, R3),
    /// then the blocked ones by block expiry (R4), then those held outside
    /// their calling hours by opening, then those waiting for a refresh
    /// (R10). Claimed and answered leads are not listed (see
    /// [`claims`](Self::claims)).
    pub fn upcoming(&mut self, now: i64) -> impl Iterator<Item = QueueItem> + '_ {
        let now = self.tick(now);
        self.promote(now);
        let this = &*self;
        let ready = this
            .ready
            .iter()
            .filter_map(move |&key| this.item(key_pos(key), ItemState::Ready));
        let blocked = this
            .blocked
            .iter()
            .filter_map(move |&(until, pos)| this.item(pos, ItemState::Blocked { until }));
        let held = this
            .held
            .iter()
            .filter_map(move |&(until, pos)| this.item(pos, ItemState::Held { until }));
        let waiting = this.awaiting_refresh.iter().filter_map(move |lead| {
            let e = this.entries.get(lead)?;
            if e.status != Status::AwaitingRefresh || !e.in_view() {
                return None;
            }
            this.item(e.pos, ItemState::AwaitingRefresh)
        });
        ready.chain(blocked).chain(held).chain(waiting)
    }

    fn item(&self, pos: u32, state: ItemState) -> Option<QueueItem> {
        let lead = *self.view.get(pos as usize)?;
        let e = self.entries.get(&lead)?;
        Some(QueueItem {
            lead,
            view_pos: pos,
            tier: Tier::from_calls(e.calls),
            generation: e.generation,
            state,
        })
    }

    /// The live claims: which agent is calling which lead (R13).
    pub fn claims(&self) -> impl Iterator<Item = (AgentId, LeadId)> + '_ {
        self.claims.iter().map(|(&agent, held)| (agent, held.lead))
    }

    /// The claim `agent` holds, if any (R13).
    pub fn claim_of(&self, agent: AgentId) -> Option<Claim> {
        let held = self.claims.get(&agent)?;
        let e = self.entries.get(&held.lead)?;
        Some(Claim {
            lead: held.lead,
            generation: held.generation,
            tier: Tier::from_calls(e.calls),
            view_pos: e.pos,
        })
    }

    /// Why `lead` is where it is at `now`, for `?explain=1` (names the rule).
    pub fn explain(&self, lead: LeadId, now: i64) -> Explanation {
        let now = now.max(self.clock);
        let Some(e) = self.entries.get(&lead) else {
            return Explanation::NotInView;
        };
        if e.claimed {
            if let Some((&agent, _)) = self.claims.iter().find(|(_, held)| held.lead == lead) {
                return Explanation::Claimed { agent };
            }
        }
        if !e.in_view() {
            return Explanation::NotInView;
        }
        match e.status {
            Status::Answered => return Explanation::Answered,
            Status::AwaitingRefresh => return Explanation::AwaitingRefresh,
            Status::Pending => {}
        }
        let until = e.blocked_until();
        if e.hold_until > now && e.hold_until >= until {
            return Explanation::CallingHours {
                opens_at: e.hold_until,
                zone: e.hold_zone,
                holiday: e.hold_holiday,
            };
        }
        if until > now {
            return Explanation::Blocked {
                until,
                by_other_session: e.external_block >= e.session_block,
            };
        }
        if e.calls == 0 {
            return Explanation::Uncalled {
                view_pos: e.pos,
                reentered: e.generation > 0,
            };
        }
        let fewer_calls_ready = self
            .ready
            .first()
            .is_some_and(|&key| (key >> 32) < u64::from(e.calls));
        if fewer_calls_ready {
            Explanation::WaitingForRetryPass {
                view_pos: e.pos,
                calls: e.calls,
            }
        } else {
            Explanation::Retry {
                view_pos: e.pos,
                calls: e.calls,
            }
        }
    }

    /// The generation of `lead` (R7), if the session has seen it.
    pub fn generation(&self, lead: LeadId) -> Option<u32> {
        self.entries.get(&lead).map(|e| e.generation)
    }

    /// The last refreshed view, deduplicated, in order (R1), without the
    /// leads that left it since ([`leave`](Self::leave)).
    pub fn view(&self) -> Vec<LeadId> {
        self.view
            .iter()
            .enumerate()
            .filter(|(pos, lead)| {
                self.entries
                    .get(lead)
                    .is_some_and(|e| e.pos as usize == *pos)
            })
            .map(|(_, lead)| *lead)
            .collect()
    }

    /// Whether `lead` is in the view as the queue last learned it.
    pub fn in_view(&self, lead: LeadId) -> bool {
        self.entries.get(&lead).is_some_and(Entry::in_view)
    }

    /// `lead` no longer matches the view (R6 "leads that left the view leave
    /// the queue"), learned from a check of that lead alone after it
    /// changed, without re-reading the whole view (SPEC §6; DESIGN "No
    /// per-call re-read of the view"). Same effect as a refresh that no
    /// longer lists it: a claimed lead finishes its call and is not queued
    /// again; if it comes back it is new (R7). O(log n). Returns whether
    /// the lead was in the view.
    pub fn leave(&mut self, lead: LeadId) -> bool {
        let Some(e) = self.entries.get_mut(&lead) else {
            return false;
        };
        if !e.in_view() {
            return false;
        }
        let pos = e.pos;
        e.pos = NOT_IN_VIEW;
        if e.status == Status::Answered {
            self.answered_in_view = self.answered_in_view.saturating_sub(1);
        }
        // Whichever set holds it (at most one: see `enqueue`).
        self.ready.remove(&ready_key(e.calls, pos));
        self.blocked.remove(&(e.blocked_until(), pos));
        self.held.remove(&(e.hold_until, pos));
        self.left_since_refresh += 1;
        true
    }

    /// Sizes of the queue's parts (for the session's state and metrics).
    pub fn counts(&self) -> QueueCounts {
        QueueCounts {
            in_view: self.view.len() - self.left_since_refresh,
            ready: self.ready.len(),
            blocked: self.blocked.len(),
            held: self.held.len(),
            awaiting_refresh: self
                .awaiting_refresh
                .iter()
                .filter(|lead| {
                    self.entries
                        .get(lead)
                        .is_some_and(|e| e.in_view() && e.status == Status::AwaitingRefresh)
                })
                .count(),
            claimed: self.claims.len(),
            answered: self.answered_in_view,
        }
    }
}

#[cfg(test)]
mod tests;
