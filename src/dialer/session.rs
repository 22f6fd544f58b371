//! The session driver (SPEC §1–§2, R1–R15): one tokio task per dialer session
//! owning its [`SessionQueue`] and its agents' [`AgentMachine`]s, turning
//! their actions into call-engine requests ([`Dialer`]), claims
//! ([`claim`], R13) and stored history ([`record`]), and publishing every
//! change as a [`SessionEvent`] (SSE).
//!
//! - **Refresh (R6):** the view is re-read every `refresh_interval`, and
//!   after a change to unknown leads ([`LeadsChanged::poke`]: an import, in
//!   PostgreSQL mode a `LISTEN powerdial_leads` notification of another
//!   instance's change); pokes within [`REFRESH_DEBOUNCE`] fold into one
//!   re-read. A change that names its leads (a lead edit through the API,
//!   every `CallEnded`) is checked lead by lead instead, [`CHECK_DEBOUNCE`]
//!   later: leads the view no longer selects leave the queue in place, and
//!   only a lead that newly matches causes a re-read (DESIGN "No per-call
//!   re-read of the view"; SPEC §6, under 100 ms).
//! - **Concurrency:** the session task makes every decision (the queue's
//!   pick, what an outcome means) in order, but waits on no database or
//!   engine round trip for one agent: a claim (the lead's read, its calling
//!   hours, the R13 row) and a dial run in tasks of their own and report
//!   back ([`Internal`]); the lead's read, the R13 row and a call's end go
//!   through the session's [`claim::SessionWriter`], many agents' in one round
//!   (SPEC §6 call setup). An agent who paused or left while its claim was
//!   in flight gets nothing (the claims are released), and a skip asked
//!   while the engine has not taken the dial yet follows the dial. Leads
//!   are claimed in view order (R1); two agents free at the same moment
//!   dial side by side, so their INVITEs may leave a moment apart in
//!   either order.
//! - **R4 across sessions:** leads entering the queue are blocked by
//!   `leads.last_call_ms`; calls other sessions end while a lead is queued
//!   are learned from their `CallEnded`; the claim step checks the call
//!   history once more before dialing.
//! - **Restart:** sessions are loaded from the store, the first refresh is
//!   followed by [`SessionQueue::restore`] of every stored lead history;
//!   agents paused through the API come back paused, the others resume
//!   (their phones are re-INVITEd). Claims of calls ended by the crash
//!   sweep (`call::recovery`) are released; other leads claimed by a dead
//!   instance stay taken until their lease runs out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::agent::{AgentAction, AgentMachine, AgentState, NotNow};
use super::claim::{self, ClaimRequest, ClaimResult, LeadClaim};
use super::dial::{CallEvent, CallOutcome, DialError, DialRequest, Dialer, LeadSnapshot};
use super::hours::{CallingHours, Verdict};
use super::queue::{AgentId, Claim, LeadId, Outcome, QueueCounts, SessionQueue};
use super::record::{self, SessionRow};
use crate::leads::model::Lead;
use crate::store::Store;

/// Bumps of the leads-changed counter this close together cause one refresh.
pub const REFRESH_DEBOUNCE: Duration = Duration::from_millis(200);

/// Changed leads gathered this close together are checked in one query.
/// A check reads only those leads (by primary key), so it can follow the
/// change at once: SPEC §6 wants a lead change in the queue within 100 ms.
pub const CHECK_DEBOUNCE: Duration = Duration::from_millis(10);

/// More changed leads than this at once (an import) re-read the whole view
/// instead of checking each: one pass over the view is cheaper then.
pub const MAX_CHECKED_LEADS: usize = 1000;

/// Changes remembered for sessions that have not looked yet; a session
/// further behind re-reads its whole view.
const CHANGE_LOG: usize = 4096;

/// The leads-changed signal (R6): bump it after any change to leads or calls
/// made through powerdial; every session refreshes within 1 s. A change
/// that names its leads ([`LeadsChanged::leads`]) lets each session check
/// just those leads against its view instead of re-reading the view
/// (DESIGN "No per-call re-read of the view"); [`LeadsChanged::poke`] says
/// "something changed" and costs every session a whole re-read.
#[derive(Clone)]
pub struct LeadsChanged(Arc<ChangeShared>);

struct ChangeShared {
    /// The number of changes so far; receivers wake when it moves.
    seq: watch::Sender<u64>,
    log: std::sync::Mutex<ChangeLog>,
}

/// The latest changes: entry `i` is change number `first + i + 1`; `None`
/// is a change to unknown leads.
#[derive(Default)]
struct ChangeLog {
    first: u64,
    entries: std::collections::VecDeque<Option<Vec<i64>>>,
}

/// What changed since a session last looked ([`LeadsChanged::since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Unknown leads (or too many to track): re-read the view.
    All,
    /// Only these leads (possibly repeated).
    Leads(Vec<i64>),
}

impl Default for LeadsChanged {
    fn default() -> Self {
        LeadsChanged(Arc::new(ChangeShared {
            seq: watch::channel(0).0,
            log: std::sync::Mutex::new(ChangeLog::default()),
        }))
    }
}

impl LeadsChanged {
    /// Signals a change to unknown leads: every session re-reads its view.
    pub fn poke(&self) {
        self.push(None);
    }

    /// Signals a change to these leads only (an edit, a call's outcome).
    pub fn leads(&self, ids: &[i64]) {
        if ids.len() > MAX_CHECKED_LEADS {
            self.push(None);
        } else {
            self.push(Some(ids.to_vec()));
        }
    }

    fn push(&self, change: Option<Vec<i64>>) {
        if let Ok(mut log) = self.0.log.lock() {
            log.entries.push_back(change);
            while log.entries.len() > CHANGE_LOG {
                log.entries.pop_front();
                log.first += 1;
            }
        }
        self.0.seq.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The number of changes so far (a session's starting point).
    pub fn seq(&self) -> u64 {
        *self.0.seq.borrow()
    }

    /// The changes after change number `seen`, and the latest number.
    pub fn since(&self, seen: u64) -> (u64, Changes) {
        let Ok(log) = self.0.log.lock() else {
            return (self.seq(), Changes::All);
        };
        let latest = log.first + log.entries.len() as u64;
        if seen < log.first {
            return (latest, Changes::All);
        }
        let skip = usize::try_from(seen - log.first).unwrap_or(usize::MAX);
        let mut ids = Vec::new();
        for change in log.entries.iter().skip(skip) {
            match change {
                Some(leads) => ids.extend_from_slice(leads),
                None => return (latest, Changes::All),
            }
            if ids.len() > MAX_CHECKED_LEADS {
                return (latest, Changes::All);
            }
        }
        (latest, Changes::Leads(ids))
    }

    /// A receiver for a session task.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.seq.subscribe()
    }
}

/// Where sessions read time: the driver's clock. Tests give a simulated one
/// (tokio's paused time plus a wall clock that follows it).
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time for timers.
    fn instant(&self) -> Instant;
    /// Wall-clock time, epoch ms (queue blocks, call history).
    fn wall_ms(&self) -> i64;
}

/// The system clock (drivers only read the clock here).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn instant(&self) -> Instant {
        Instant::now()
    }
    #[allow(clippy::disallowed_methods)]
    fn wall_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }
}

/// The `[dialer]` settings a session uses.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// R4 block.
    pub block: Duration,
    /// R6 refresh interval.
    pub refresh_interval: Duration,
    /// Default wrap-up idle time.
    pub wrap_up_idle: Duration,
    /// R13 claim lease; renewed at half its length while a call lasts.
    pub lease: Duration,
    /// This process's id in `lead_claims.instance`.
    pub instance: Arc<str>,
    /// Calling hours (SPEC §4): the config's window, which a session's own
    /// `calling_hours` replaces, and the holidays.
    pub calling_hours: CallingHours,
    /// Where held dials are recorded (`GET /api/v1/audit`).
    pub audit: crate::store::audit::AuditLog,
}

impl SessionConfig {
    /// From the config's `[dialer]` section, with a fresh random instance id
    /// and no audit log yet (the server sets [`SessionConfig::audit`]).
    pub fn from_dialer(cfg: &crate::config::DialerConfig) -> SessionConfig {
        SessionConfig {
            block: cfg.block.0,
            refresh_interval: cfg.refresh_interval.0,
            wrap_up_idle: cfg.wrap_up_idle.0,
            lease: Duration::from_secs(30),
            instance: format!("{:016x}", rand::random::<u64>()).into(),
            calling_hours: CallingHours {
                window: cfg.calling_hours,
                // Checked when the config was loaded.
                holidays: super::hours::parse_holidays(&cfg.holidays).unwrap_or_default(),
            },
            audit: crate::store::audit::AuditLog::disabled(),
        }
    }
}

/// A change published on the events stream (`GET /api/v1/events`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionEvent {
    /// An agent's state changed.
    AgentState {
        /// The session.
        session_id: i64,
        /// The agent.
        agent: String,
        /// The new state.
        state: AgentState,
        /// The lead being called, or in wrap-up the lead just called.
        lead_id: Option<i64>,
        /// The call record of that lead, if any.
        call_id: Option<i64>,
    },
    /// A lead call ended (R5, R8–R12).
    CallEnded {
        /// The session.
        session_id: i64,
        /// The agent.
        agent: String,
        /// The call record.
        call_id: i64,
        /// The lead.
        lead_id: Option<i64>,
        /// The outcome.
        outcome: CallOutcome,
    },
    /// The queue's counts changed (claims, reports, refreshes, reset).
    Queue {
        /// The session.
        session_id: i64,
        /// The counts.
        counts: Counts,
    },
    /// The session was reset (R14).
    Reset {
        /// The session.
        session_id: i64,
    },
}

impl SessionEvent {
    /// The session the event is about.
    pub fn session_id(&self) -> i64 {
        match self {
            SessionEvent::AgentState { session_id, .. }
            | SessionEvent::CallEnded { session_id, .. }
            | SessionEvent::Queue { session_id, .. }
            | SessionEvent::Reset { session_id } => *session_id,
        }
    }

    /// The agent the event is about, if it names one.
    pub fn agent(&self) -> Option<&str> {
        match self {
            SessionEvent::AgentState { agent, .. } | SessionEvent::CallEnded { agent, .. } => {
                Some(agent)
            }
            SessionEvent::Queue { .. } | SessionEvent::Reset { .. } => None,
        }
    }
}

/// Queue counts as the API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Leads in the view.
    pub in_view: usize,
    /// May be called now (R1, R3).
    pub queued: usize,
    /// Blocked (R4).
    pub blocked: usize,
    /// Waiting for a refresh (R10).
    pub awaiting_refresh: usize,
    /// Held outside their calling hours (SPEC §4).
    pub held: usize,
    /// Being called (R13).
    pub calling: usize,
    /// Answered (R5).
    pub answered: usize,
    /// R15: every lead in the view answered.
    pub done: bool,
}

impl Counts {
    fn new(c: QueueCounts, done: bool) -> Counts {
        Counts {
            in_view: c.in_view,
            queued: c.ready,
            blocked: c.blocked,
            awaiting_refresh: c.awaiting_refresh,
            held: c.held,
            calling: c.claimed,
            answered: c.answered,
            done,
        }
    }
}

/// One agent in [`SessionView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = SessionAgent)]
pub struct AgentView {
    /// The agent's username.
    pub agent: String,
    /// Its state.
    pub state: AgentState,
    /// The lead being called, or in wrap-up the lead just called (the
    /// agent's notes are about it, SPEC §1 step 5).
    pub lead_id: Option<i64>,
    /// The call record of that lead.
    pub call_id: Option<i64>,
}

/// `GET /api/v1/sessions/{id}`: settings, agents, counts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    /// Settings as stored.
    #[serde(flatten)]
    pub row: SessionRow,
    /// `active`, or `done` (R15).
    pub state: &'static str,
    /// The agents.
    pub agents: Vec<AgentView>,
    /// Queue counts.
    pub counts: Counts,
}

/// One entry of `GET /api/v1/sessions/{id}/queue`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueEntryView {
    /// The lead.
    pub lead_id: i64,
    /// View position (R1).
    pub view_pos: u32,
    /// `ready`, `blocked`, `held` (outside its calling hours) or
    /// `awaiting_refresh`.
    pub state: &'static str,
    /// End of the block (R4), if blocked.
    pub blocked_until: Option<DateTime<Utc>>,
    /// When its calling hours open (SPEC §4), if held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<DateTime<Utc>>,
    /// Unanswered calls so far (R3).
    pub calls: u32,
    /// The lead's name (filled in by the API from the store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The number that will be dialed: the first phone of the first
    /// contact (R2), when the lead has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// `?explain=1`: the rule id that placed or holds the lead (`"R3"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    /// `?explain=1`: the rule with its detail ("R3: uncalled, view pos 2").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<String>,
    /// `?explain=1`: the same for a person ("Never called; 3rd in the view").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an agent's "do not call" did (`POST
/// /api/v1/sessions/{id}/agents/{agent}/dnc`, or the DTMF key
/// [`DNC_KEY`] on the phone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DncAdded {
    /// The number put on the do-not-call list (E.164).
    pub number: String,
    /// The lead it was dialed for.
    pub lead_id: i64,
    /// The call record, once the call had one.
    pub call_id: Option<i64>,
    /// The reason stored with the entry.
    pub reason: String,
}

/// The key on the agent's phone that puts the current lead's number on the
/// do-not-call list (SPEC §5 DTMF controls: `*` next lead, `#` hang up the
/// lead, `0` pause, `9` voicemail drop; `3` is "D" for "do not call" on
/// the keypad). It does not hang up: the agent says goodbye, then `#`.
pub const DNC_KEY: char = '3';

/// Why a session command failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session (or its task stopped).
    #[error("session {0} not found")]
    NoSession(i64),
    /// The agent is not in the session.
    #[error("agent {0} is not in the session")]
    NoAgent(String),
    /// The command does not apply now.
    #[error(transparent)]
    NotNow(#[from] NotNow),
    /// The Smart View's query does not evaluate.
    #[error("the session's smart view cannot be evaluated: {0}")]
    View(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// `Ok` while the agent's screen is still about call record `call` (see
/// [`AgentMachine::shown_call`]); else the command does not apply now.
fn still_on(machine: &AgentMachine, call: i64, command: &'static str) -> Result<(), NotNow> {
    if machine.shown_call().and_then(|c| c.call_id) == Some(call) {
        Ok(())
    } else {
        Err(NotNow {
            command,
            state: machine.state(),
        })
    }
}

/// A command for an agent of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCommand {
    /// R14 pause.
    Pause,
    /// R14 resume.
    Resume,
    /// Call the next lead.
    Next,
    /// Call the next lead, only while the agent is still on this call
    /// record (dialing, ringing, connected or in its wrap-up): a click
    /// made just as wrap-up ended never skips the lead dialed meanwhile
    /// (R9 would block it for `block`).
    NextAfter(i64),
    /// Hang up the lead.
    Hangup,
    /// Hang up the lead, only if it is still this call record's.
    HangupCall(i64),
    /// Typing heartbeat (wrap-up).
    Typing,
    /// Leave the session.
    Leave,
}

type Reply<T> = oneshot::Sender<Result<T, SessionError>>;

enum Command {
    Join(String, Reply<()>),
    DoNotCall(String, Reply<DncAdded>),
    Agent(String, AgentCommand, Reply<()>),
    Reset(Reply<()>),
    Settings(SessionRow, Reply<()>),
    View(Reply<SessionView>),
    Queue(bool, usize, Reply<Vec<QueueEntryView>>),
    Refresh(Reply<()>),
    Recovered(Vec<(i64, CallOutcome)>, Reply<()>),
}

/// A running session's handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct SessionHandle {
    id: i64,
    tx: mpsc::Sender<Command>,
}

impl SessionHandle {
    async fn ask<T>(&self, f: impl FnOnce(Reply<T>) -> Command) -> Result<T, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(f(tx))
            .await
            .map_err(|_| SessionError::NoSession(self.id))?;
        rx.await.map_err(|_| SessionError::NoSession(self.id))?
    }

    /// The session id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// An agent joins (SPEC §1 step 1): the agent leg is set up, then dialing starts.
    pub async fn join(&self, agent: &str) -> Result<(), SessionError> {
        let a = agent.to_string();
        self.ask(|r| Command::Join(a, r)).await
    }

    /// Pause, resume, next, hangup, typing or leave for one agent.
    pub async fn agent(&self, agent: &str, cmd: AgentCommand) -> Result<(), SessionError> {
        let a = agent.to_string();
        self.ask(|r| Command::Agent(a, cmd, r)).await
    }

    /// Puts the number of the agent's current lead (the call it is on, or
    /// in wrap-up the one just ended) on the do-not-call list (SPEC §4).
    pub async fn do_not_call(&self, agent: &str) -> Result<DncAdded, SessionError> {
        let a = agent.to_string();
        self.ask(|r| Command::DoNotCall(a, r)).await
    }

    /// R14 "reset & call again".
    pub async fn reset(&self) -> Result<(), SessionError> {
        self.ask(Command::Reset).await
    }

    /// Counts calls whose outcome the crash sweep recorded after a restart
    /// (`(lead, outcome)`, `answered` or `skipped`) in the leads' histories.
    pub async fn recovered(&self, leads: Vec<(i64, CallOutcome)>) -> Result<(), SessionError> {
        self.ask(|r| Command::Recovered(leads, r)).await
    }

    /// Applies stored settings (after a PATCH).
    pub async fn settings(&self, row: SessionRow) -> Result<(), SessionError> {
        self.ask(|r| Command::Settings(row, r)).await
    }

    /// The session's state, agents and counts.
    pub async fn view(&self) -> Result<SessionView, SessionError> {
        self.ask(Command::View).await
    }

    /// The upcoming leads (at most `limit`), with `explain` the rule text.
    pub async fn queue(
        &self,
        explain: bool,
        limit: usize,
    ) -> Result<Vec<QueueEntryView>, SessionError> {
        self.ask(|r| Command::Queue(explain, limit, r)).await
    }

    /// Re-reads the view now (R6) and waits until done.
    pub async fn refresh(&self) -> Result<(), SessionError> {
        self.ask(Command::Refresh).await
    }
}

/// Every session's shared parts.
pub struct Shared<D, C> {
    /// The database.
    pub store: Store,
    /// The call engine.
    pub dialer: D,
    /// The clock.
    pub clock: C,
    /// `[dialer]` settings.
    pub config: SessionConfig,
    /// The events stream.
    pub events: broadcast::Sender<SessionEvent>,
    /// R6 pokes.
    pub leads_changed: LeadsChanged,
}

struct Slot {
    machine: AgentMachine,
    id: AgentId,
    db_claim: Option<LeadClaim>,
    last: (AgentState, Option<i64>, Option<i64>),
    /// A claim is in flight ([`Session::claim_next`]).
    claiming: bool,
    /// The engine has not answered the dial yet ([`Session::dial`]).
    dialing: bool,
    /// A skip (R9) asked while `dialing`: sent once the engine has the call.
    skip_after_dial: bool,
}

/// What the session's own tasks report back.
enum Internal {
    /// The agent leg is up (`true`) or could not be set up.
    Connected(String, bool),
    /// A claim's outcome ([`Session::claim_next`]).
    Claimed(Box<ClaimDone>),
    /// The engine's answer to a dial ([`Session::dial`]).
    Dialed {
        agent: String,
        claim: Claim,
        db: LeadClaim,
        result: Result<i64, DialError>,
    },
}

/// A claim's outcome, as [`claim_step`] found it.
struct ClaimDone {
    agent: String,
    claim: Claim,
    now_ms: i64,
    step: ClaimStep,
}

/// What [`claim_step`] found.
enum ClaimStep {
    /// Outside the lead's calling hours (SPEC §4): held, not claimed.
    Held {
        opens_at: Option<i64>,
        zone: chrono_tz::Tz,
        holiday: bool,
        number: Option<String>,
    },
    /// The database claim's result, with the lead (when it could be read)
    /// and the number to dial (R2).
    Db {
        result: Result<ClaimResult, claim::ClaimError>,
        lead: Option<Lead>,
        number: Option<String>,
    },
}

/// Reads the lead (R2: the first phone of the first contact; it and the
/// lead's fields and address give its zones), holds it when its calling
/// hours are closed, else claims it in the database (R13).
async fn claim_step<D: Dialer, C: Clock>(
    shared: &Shared<D, C>,
    writer: &claim::SessionWriter,
    hours: &CallingHours,
    session_id: i64,
    agent: &str,
    c: Claim,
    now_ms: i64,
) -> ClaimStep {
    // Read with the other agents' leads of the writer's round.
    let lead = writer.lead(c.lead.0).await;
    let number = lead
        .as_ref()
        .and_then(|l| l.first_phone())
        .map(|p| p.to_string());
    if let Some(l) = &lead {
        let zones = crate::leads::zone::lead_zones(l, number.as_deref())
            .map(|z| z.zones)
            .unwrap_or_default();
        if let Verdict::Closed {
            opens_at,
            zone,
            holiday,
        } = hours.verdict(&zones, now_ms)
        {
            return ClaimStep::Held {
                opens_at,
                zone,
                holiday,
                number,
            };
        }
    }
    let req = ClaimRequest {
        lead_id: c.lead.0,
        session_id,
        agent,
        instance: &shared.config.instance,
        now_ms,
        lease_ms: ms(shared.config.lease),
        block_ms: ms(shared.config.block),
        reentered: c.generation > 0,
    };
    ClaimStep::Db {
        // With the other agents' claims queued meanwhile, in one
        // statement ([`claim::SessionWriter::claim`]).
        result: writer.claim(&req).await,
        lead,
        number,
    }
}

/// Releases a database claim that will not be dialed, off the session task.
fn spawn_release(store: &Store, db: LeadClaim, now_ms: i64) {
    let store = store.clone();
    tokio::spawn(async move {
        if let Err(e) = claim::release(&store, &db, now_ms).await {
            tracing::warn!(error = %e, lead = db.lead_id, "claim release not saved");
        }
    });
}

struct Session<D: Dialer, C: Clock> {
    row: SessionRow,
    view_query: String,
    shared: Arc<Shared<D, C>>,
    queue: SessionQueue,
    agents: BTreeMap<String, Slot>,
    next_agent_id: i64,
    internal: mpsc::Sender<Internal>,
    /// The session's claims and call ends on their way to the database.
    writer: claim::SessionWriter,
    next_refresh: Instant,
    pending_refresh: Option<Instant>,
    /// The last change of [`LeadsChanged`] this session has taken in.
    changes_seen: u64,
    /// Leads changed since the last check or refresh, and when to check
    /// them ([`CHECK_DEBOUNCE`]).
    changed_leads: Vec<i64>,
    pending_check: Option<Instant>,
    last_counts: Option<Counts>,
}

/// Starts the task of a stored session: loads its view and history, brings
/// back its agents (paused), and returns its handle.
pub async fn spawn<D: Dialer, C: Clock>(
    shared: Arc<Shared<D, C>>,
    row: SessionRow,
) -> Result<SessionHandle, SessionError> {
    let view = shared.store.get_smart_view(row.smart_view_id).await?;
    let (itx, irx) = mpsc::channel(64);
    let mut s = Session {
        view_query: view.query,
        queue: SessionQueue::new(shared.config.block),
        agents: BTreeMap::new(),
        next_agent_id: 1,
        internal: itx,
        writer: claim::SessionWriter::start(shared.store.clone()),
        next_refresh: shared.clock.instant(),
        pending_refresh: None,
        changes_seen: shared.leads_changed.seq(),
        changed_leads: Vec::new(),
        pending_check: None,
        last_counts: None,
        row,
        shared,
    };
    s.refresh(true).await?;
    for (lead, h) in record::load_histories(&s.shared.store, s.row.id).await? {
        s.queue.restore(lead, h);
    }
    let now = s.shared.clock.instant().into_std();
    for a in record::list_agents(&s.shared.store, s.row.id).await? {
        // Agent legs do not survive a restart (the crash sweep BYEs those a
        // crash left up): an agent who paused stays paused; the others
        // resume, so their phones are re-INVITEd (SPEC §1 steps 2 and 6)
        // and they dial on where the queue stands (R4 holds through the
        // leads' last call times).
        let slot = s.slot(&a.agent);
        slot.machine.restore_paused();
        if !a.paused {
            let _ = slot.machine.resume(now);
        }
    }
    s.publish();
    let (tx, rx) = mpsc::channel(64);
    let id = s.row.id;
    tokio::spawn(s.run(rx, irx));
    Ok(SessionHandle { id, tx })
}

impl<D: Dialer, C: Clock> Session<D, C> {
    fn wrap_up_idle(&self) -> Duration {
        self.row
            .wrap_up_idle_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or(self.shared.config.wrap_up_idle, Duration::from_millis)
    }

    fn slot(&mut self, agent: &str) -> &mut Slot {
        if !self.agents.contains_key(agent) {
            let id = AgentId(self.next_agent_id);
            self.next_agent_id += 1;
            let machine = AgentMachine::new(self.wrap_up_idle());
            self.agents.insert(
                agent.to_string(),
                Slot {
                    machine,
                    id,
                    db_claim: None,
                    last: (AgentState::Left, None, None),
                    claiming: false,
                    dialing: false,
                    skip_after_dial: false,
                },
            );
        }
        // Inserted just above when missing.
        self.agents
            .get_mut(agent)
            .unwrap_or_else(|| unreachable!("agent slot inserted"))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut irx: mpsc::Receiver<Internal>) {
        let mut events = self.shared.dialer.subscribe();
        let mut changed = self.shared.leads_changed.subscribe();
        // Agents resumed at start-up act at once.
        self.drive().await;
        self.publish();
        loop {
            let deadline = self.deadline();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
                ev = events.recv() => match ev {
                    Ok(ev) => self.call_event(ev).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(session = self.row.id, missed = n, "call events lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some(msg) = irx.recv() => self.internal_msg(msg).await,
                Ok(()) = changed.changed() => self.leads_changed(),
                () = tokio::time::sleep_until(deadline) => self.timeout().await,
            }
            self.drive().await;
            self.publish();
        }
    }

    /// Takes in the changes signalled since the last look: named leads are
    /// checked soon, anything else schedules a whole re-read (R6).
    fn leads_changed(&mut self) {
        let now = self.shared.clock.instant();
        let (seq, changes) = self.shared.leads_changed.since(self.changes_seen);
        self.changes_seen = seq;
        match changes {
            Changes::Leads(ids) if self.changed_leads.len() + ids.len() <= MAX_CHECKED_LEADS => {
                if ids.is_empty() {
                    return;
                }
                self.changed_leads.extend(ids);
                let soon = now + CHECK_DEBOUNCE;
                self.pending_check = Some(self.pending_check.map_or(soon, |p| p.min(soon)));
            }
            _ => {
                // The re-read covers the leads waiting for a check too.
                self.changed_leads.clear();
                self.pending_check = None;
                let soon = now + REFRESH_DEBOUNCE;
                self.pending_refresh = Some(self.pending_refresh.map_or(soon, |p| p.min(soon)));
            }
        }
    }

    /// R6 for named leads, without re-reading the view: runs the view's
    /// query for just these leads; a queued lead it no longer selects
    /// leaves the queue. A lead it newly selects must be slotted in by the
    /// view's sort, which needs its neighbours: that schedules a re-read
    /// now. A lead still selected keeps its place until the next re-read
    /// (its sort key may have changed; the order of the others did not).
    async fn check_changed_leads(&mut self) -> Result<(), SessionError> {
        self.pending_check = None;
        let mut ids = std::mem::take(&mut self.changed_leads);
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let now_ms = self.shared.clock.wall_ms();
        let wall = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
        let selected = self
            .shared
            .store
            .view_members(&self.view_query, wall, &ids)
            .await
            .map_err(|e| SessionError::View(e.to_string()))?;
        let mut entering = false;
        for id in ids {
            let lead = LeadId(id);
            match (self.queue.in_view(lead), selected.contains(&id)) {
                (true, false) => {
                    self.queue.leave(lead);
                }
                (false, true) => entering = true,
                _ => {}
            }
        }
        if entering {
            let now = self.shared.clock.instant();
            self.pending_refresh = Some(self.pending_refresh.map_or(now, |p| p.min(now)));
        }
        tracing::debug!(session = self.row.id, entering, "changed leads checked");
        Ok(())
    }

    fn deadline(&self) -> Instant {
        let mut d = self.next_refresh;
        if let Some(p) = self.pending_refresh {
            d = d.min(p);
        }
        if let Some(p) = self.pending_check {
            d = d.min(p);
        }
        let half_lease = self.shared.config.lease / 2;
        let now = self.shared.clock.instant();
        let now_ms = self.shared.clock.wall_ms();
        for slot in self.agents.values() {
            if let Some(t) = slot.machine.poll_timeout() {
                d = d.min(Instant::from_std(t));
            }
            if let Some(c) = slot.db_claim {
                let renew_at = c.expires_ms - i64::try_from(half_lease.as_millis()).unwrap_or(0);
                d = d.min(at_ms(now, now_ms, renew_at));
            }
        }
        d
    }

    async fn timeout(&mut self) {
        let now = self.shared.clock.instant();
        if now >= self.next_refresh || self.pending_refresh.is_some_and(|p| p <= now) {
            // Only the scheduled refresh ends R10's wait after a temporary error.
            let scheduled = now >= self.next_refresh;
            if let Err(e) = self.refresh(scheduled).await {
                tracing::warn!(session = self.row.id, error = %e, "refresh failed");
                self.next_refresh = now + self.shared.config.refresh_interval;
            }
            self.poke_idle();
        } else if self.pending_check.is_some_and(|p| p <= now) {
            if let Err(e) = self.check_changed_leads().await {
                tracing::warn!(session = self.row.id, error = %e, "check of changed leads failed");
                // The re-read covers what the check could not.
                self.pending_refresh = Some(now + REFRESH_DEBOUNCE);
            }
            self.poke_idle();
        }
        let now_ms = self.shared.clock.wall_ms();
        let lease_ms = ms(self.shared.config.lease);
        let mut lost = Vec::new();
        for (name, slot) in &mut self.agents {
            slot.machine.handle_timeout(now.into_std());
            if let Some(c) = slot.db_claim {
                if c.expires_ms - lease_ms / 2 <= now_ms {
                    match claim::renew(&self.shared.store, &c, now_ms, lease_ms).await {
                        Ok(c) => slot.db_claim = Some(c),
                        Err(e) => {
                            // R13: someone else may now dial this lead; end ours.
                            tracing::warn!(agent = %name, error = %e, "claim lost");
                            slot.db_claim = None;
                            lost.push(name.clone());
                        }
                    }
                }
            }
        }
        for name in lost {
            let d = self.shared.dialer.clone();
            tokio::spawn(async move { d.skip(&name).await });
        }
    }

    fn poke_idle(&mut self) {
        for slot in self.agents.values_mut() {
            slot.machine.poke();
        }
    }

    /// R6: re-reads the view and refreshes the queue; new leads are blocked
    /// by calls within `block` from any session (R4).
    async fn refresh(&mut self, scheduled: bool) -> Result<(), SessionError> {
        let now = self.shared.clock.instant();
        let now_ms = self.shared.clock.wall_ms();
        self.pending_refresh = None;
        // The view read below includes every change signalled so far.
        self.changed_leads.clear();
        self.pending_check = None;
        self.next_refresh = now + self.shared.config.refresh_interval;
        let wall = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
        let ids = super::view::evaluate_view(&self.shared.store, &self.view_query, wall)
            .await
            .map_err(|e| SessionError::View(e.to_string()))?;
        let since = now_ms.saturating_sub(ms(self.shared.config.block));
        let last = super::view::recent_calls(&self.shared.store, since).await?;
        let view: Vec<LeadId> = ids.into_iter().map(LeadId).collect();
        let refreshed = if scheduled {
            self.queue
                .refresh(&view, |l| last.get(&l.0).copied(), now_ms)
        } else {
            self.queue
                .refresh_on_change(&view, |l| last.get(&l.0).copied(), now_ms)
        };
        match refreshed {
            Ok(summary) => {
                tracing::debug!(session = self.row.id, ?summary, "view refreshed");
            }
            Err(e) => return Err(SessionError::View(e.to_string())),
        }
        Ok(())
    }

    async fn internal_msg(&mut self, msg: Internal) {
        match msg {
            Internal::Claimed(done) => self.claimed(done).await,
            Internal::Dialed {
                agent,
                claim,
                db,
                result,
            } => self.dialed(agent, claim, db, result),
            Internal::Connected(agent, ok) => {
                if let Some(slot) = self.agents.get_mut(&agent) {
                    if ok {
                        slot.machine.handle_agent_connected();
                    } else {
                        slot.machine.handle_agent_failed();
                    }
                }
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        let now = self.shared.clock.instant().into_std();
        match cmd {
            Command::Join(agent, reply) => {
                let r = record::upsert_agent(
                    &self.shared.store,
                    self.row.id,
                    &agent,
                    false,
                    self.shared.clock.wall_ms(),
                )
                .await;
                if r.is_ok() {
                    let slot = self.slot(&agent);
                    match slot.machine.state() {
                        AgentState::Joining | AgentState::Left => slot.machine.join(),
                        AgentState::Paused => {
                            let _ = slot.machine.resume(now);
                        }
                        _ => {}
                    }
                }
                let _ = reply.send(r.map_err(SessionError::from));
            }
            Command::Agent(agent, c, reply) => {
                let r = self.agent_command(&agent, c, now).await;
                let _ = reply.send(r);
            }
            Command::Recovered(leads, reply) => {
                self.recovered(leads).await;
                let _ = reply.send(Ok(()));
            }
            Command::DoNotCall(agent, reply) => {
                let r = self.add_current_to_dnc(&agent).await;
                let _ = reply.send(r);
            }
            Command::Reset(reply) => {
                let now = self.shared.clock.wall_ms();
                let r = record::reset(&self.shared.store, self.row.id, now).await;
                if r.is_ok() {
                    // The view shows `reset_at` at once, as stored.
                    self.row.reset_ms = Some(now);
                    self.queue.reset(self.shared.clock.wall_ms());
                    let _ = self.shared.events.send(SessionEvent::Reset {
                        session_id: self.row.id,
                    });
                    self.poke_idle();
                }
                let _ = reply.send(r.map_err(SessionError::from));
            }
            Command::Settings(row, reply) => {
                if row.calling_hours != self.row.calling_hours {
                    // Holds were decided under the old hours.
                    self.queue.clear_holds(self.shared.clock.wall_ms());
                    self.poke_idle();
                }
                self.row = row;
                let idle = self.wrap_up_idle();
                for slot in self.agents.values_mut() {
                    slot.machine.set_wrap_up_idle(idle);
                }
                let _ = reply.send(Ok(()));
            }
            Command::View(reply) => {
                let counts = self.counts();
                let agents = self
                    .agents
                    .iter()
                    .filter(|(_, s)| s.machine.state() != AgentState::Left)
                    .map(|(name, s)| {
                        let (lead_id, call_id) = shown(&s.machine);
                        AgentView {
                            agent: name.clone(),
                            state: s.machine.state(),
                            lead_id,
                            call_id,
                        }
                    })
                    .collect();
                let _ = reply.send(Ok(SessionView {
                    row: self.row.clone(),
                    state: if counts.done { "done" } else { "active" },
                    agents,
                    counts,
                }));
            }
            Command::Queue(explain, limit, reply) => {
                let now_ms = self.shared.clock.wall_ms();
                let items: Vec<_> = self.queue.upcoming(now_ms).take(limit).collect();
                let out = items
                    .into_iter()
                    .map(|it| {
                        use super::queue::{ItemState, Tier};
                        let (state, until, opens) = match it.state {
                            ItemState::Ready => ("ready", None, None),
                            ItemState::Blocked { until } => ("blocked", Some(until), None),
                            ItemState::Held { until } => ("held", None, Some(until)),
                            ItemState::AwaitingRefresh => ("awaiting_refresh", None, None),
                        };
                        let mut view = QueueEntryView {
                            lead_id: it.lead.0,
                            view_pos: it.view_pos,
                            state,
                            blocked_until: until.and_then(DateTime::from_timestamp_millis),
                            opens_at: opens.and_then(DateTime::from_timestamp_millis),
                            calls: match it.tier {
                                Tier::Uncalled => 0,
                                Tier::Unanswered { calls } => calls,
                            },
                            name: None,
                            number: None,
                            rule: None,
                            explain: None,
                            reason: None,
                        };
                        if explain {
                            let e = self.queue.explain(it.lead, now_ms);
                            view.rule = Some(e.rule());
                            view.explain = Some(e.to_string());
                            view.reason = Some(e.sentence());
                        }
                        view
                    })
                    .collect();
                let _ = reply.send(Ok(out));
            }
            Command::Refresh(reply) => {
                let r = self.refresh(true).await;
                self.poke_idle();
                let _ = reply.send(r);
            }
        }
    }

    /// Puts the number of `agent`'s current lead on the do-not-call list:
    /// the number its call dialed (the call record's), else the lead's
    /// first phone (R2). The entry's reason names the agent, call and lead.
    async fn add_current_to_dnc(&mut self, agent: &str) -> Result<DncAdded, SessionError> {
        let slot = self
            .agents
            .get(agent)
            .filter(|s| s.machine.state() != AgentState::Left)
            .ok_or_else(|| SessionError::NoAgent(agent.to_string()))?;
        let not_now = NotNow {
            command: "put the current lead on the do-not-call list",
            state: slot.machine.state(),
        };
        let Some(call) = slot.machine.shown_call() else {
            return Err(not_now.into());
        };
        let store = &self.shared.store;
        let lead_id = call.claim.lead.0;
        let mut number = None;
        if let Some(id) = call.call_id {
            number = store.get_call(id).await.ok().map(|c| c.number);
        }
        if number.is_none() {
            number = store
                .get_lead(lead_id)
                .await
                .ok()
                .and_then(|l| l.first_phone().map(|p| p.to_string()));
        }
        // Stored numbers are E.164, so the region is not consulted.
        let Some((number, pattern)) = number.and_then(|n| {
            let p = crate::leads::dnc::DncPattern::parse(&n, "US").ok()?;
            Some((n, p))
        }) else {
            return Err(not_now.into());
        };
        let reason = match call.call_id {
            Some(c) => format!("added by agent {agent} during call {c} (lead {lead_id})"),
            None => format!("added by agent {agent} (lead {lead_id})"),
        };
        store
            .add_dnc(
                &[(pattern, Some(reason.clone()))],
                self.shared.clock.wall_ms(),
            )
            .await?;
        tracing::info!(%agent, %number, lead = lead_id, "the agent put the current lead's number on the do-not-call list");
        Ok(DncAdded {
            number,
            lead_id,
            call_id: call.call_id,
            reason,
        })
    }

    /// The commands an agent gives from a screen name the call they were
    /// looking at; the dialer may have moved on since.
    async fn agent_command(
        &mut self,
        agent: &str,
        c: AgentCommand,
        now: std::time::Instant,
    ) -> Result<(), SessionError> {
        let store = self.shared.store.clone();
        let id = self.row.id;
        let wall = self.shared.clock.wall_ms();
        let slot = self
            .agents
            .get_mut(agent)
            .filter(|s| s.machine.state() != AgentState::Left)
            .ok_or_else(|| SessionError::NoAgent(agent.to_string()))?;
        match c {
            AgentCommand::Pause => {
                slot.machine.pause()?;
                record::upsert_agent(&store, id, agent, true, wall).await?;
            }
            AgentCommand::Resume => {
                slot.machine.resume(now)?;
                record::upsert_agent(&store, id, agent, false, wall).await?;
            }
            AgentCommand::Next => slot.machine.next(now)?,
            AgentCommand::NextAfter(call) => {
                still_on(&slot.machine, call, "move on from a call that is over")?;
                slot.machine.next(now)?
            }
            AgentCommand::Hangup => slot.machine.hangup()?,
            AgentCommand::HangupCall(call) => {
                still_on(&slot.machine, call, "hang up a call that is over")?;
                slot.machine.hangup()?
            }
            AgentCommand::Typing => slot.machine.typing(now),
            AgentCommand::Leave => {
                slot.machine.leave();
                record::remove_agent(&store, id, agent).await?;
            }
        }
        Ok(())
    }

    async fn call_event(&mut self, ev: CallEvent) {
        let now = self.shared.clock.instant().into_std();
        match ev {
            CallEvent::AgentConnected { .. }
            | CallEvent::CallProgress { .. }
            | CallEvent::Amd { .. } => {}
            CallEvent::CallbackTaken {
                agent,
                call_id,
                lead_id,
                session_id,
            } => {
                if session_id == Some(self.row.id) {
                    if let Some(s) = self.agents.get_mut(&agent) {
                        s.machine
                            .handle_callback(super::agent::Callback { call_id, lead_id });
                    }
                }
            }
            CallEvent::AgentDisconnected { agent } => {
                if let Some(s) = self.agents.get_mut(&agent) {
                    s.machine.handle_agent_disconnected();
                }
            }
            CallEvent::LeadRinging { agent, call_id } => {
                if let Some(s) = self.agents.get_mut(&agent) {
                    s.machine.handle_lead_ringing(call_id);
                }
            }
            CallEvent::LeadAnswered { agent, call_id } => {
                if let Some(s) = self.agents.get_mut(&agent) {
                    s.machine.handle_lead_answered(call_id);
                }
            }
            CallEvent::Dtmf { agent, digit } if digit == DNC_KEY => {
                match self.add_current_to_dnc(&agent).await {
                    Ok(added) => {
                        tracing::info!(%agent, number = %added.number, lead = added.lead_id, "DTMF: the current lead's number is on the do-not-call list")
                    }
                    Err(e) => tracing::debug!(%agent, %e, "DTMF do-not-call ignored"),
                }
            }
            CallEvent::Dtmf { agent, digit } => {
                if let Some(s) = self.agents.get_mut(&agent) {
                    // The engine already ended the lead call for '*' and '#'.
                    let r = match digit {
                        '*' => s.machine.next_from_phone(now),
                        '0' => s.machine.pause(),
                        _ => Ok(()),
                    };
                    if let Err(e) = r {
                        tracing::debug!(%agent, %e, "DTMF ignored");
                    }
                }
            }
            CallEvent::CallEnded {
                agent,
                call_id,
                lead_id,
                session_id,
                outcome,
                ..
            } => {
                // The call's start moved the lead's `called` time (stored
                // before dialing): only this lead may have left a view.
                match lead_id {
                    Some(lead) => self.shared.leads_changed.leads(&[lead]),
                    None => self.shared.leads_changed.poke(),
                }
                if session_id != Some(self.row.id) {
                    // R4 "by any session": a lead another session just called.
                    if let Some(lead) = lead_id {
                        self.queue
                            .record_external_call(LeadId(lead), self.shared.clock.wall_ms());
                    }
                    return;
                }
                self.call_ended(&agent, call_id, lead_id, outcome, now)
                    .await;
            }
        }
    }

    async fn call_ended(
        &mut self,
        agent: &str,
        call_id: i64,
        lead_id: Option<i64>,
        outcome: CallOutcome,
        now: std::time::Instant,
    ) {
        let now_ms = self.shared.clock.wall_ms();
        let Some(slot) = self.agents.get_mut(agent) else {
            return;
        };
        if slot.machine.handle_callback_ended(now, call_id) {
            let _ = self.shared.events.send(SessionEvent::CallEnded {
                session_id: self.row.id,
                agent: agent.to_string(),
                call_id,
                lead_id,
                outcome,
            });
            return;
        }
        let Some(c) =
            slot.machine
                .handle_call_ended(now, call_id, outcome == CallOutcome::Answered)
        else {
            return;
        };
        let aid = slot.id;
        let db_claim = slot.db_claim.take();
        if let Err(e) = self
            .queue
            .report(aid, c.lead, c.generation, outcome, now_ms)
        {
            tracing::warn!(%agent, error = %e, "report refused");
        }
        // Stored off the session's task, in order ([`claim::SessionWriter`]).
        self.writer.send(claim::CallEndWrite {
            session_id: self.row.id,
            history: self.queue.history(c.lead).map(|h| (c.lead, h)),
            claim: db_claim,
            now_ms,
        });
        let _ = self.shared.events.send(SessionEvent::CallEnded {
            session_id: self.row.id,
            agent: agent.to_string(),
            call_id,
            lead_id,
            outcome,
        });
    }

    /// Calls ended by the crash sweep: an answered lead is answered in this
    /// session (R5), a skipped one counts as an unanswered call blocked for
    /// `block` (R3, R9), as [`SessionQueue::report`] would have recorded.
    async fn recovered(&mut self, leads: Vec<(i64, CallOutcome)>) {
        let now_ms = self.shared.clock.wall_ms();
        let block_ms = ms(self.shared.config.block);
        for (lead, outcome) in leads {
            let lead = LeadId(lead);
            let Some(mut h) = self.queue.history(lead) else {
                continue;
            };
            if matches!(
                outcome,
                CallOutcome::Answered | CallOutcome::Voicemail | CallOutcome::VoicemailDropped
            ) {
                h.answered = true;
            } else {
                h.calls = h.calls.saturating_add(1);
                let until = now_ms.saturating_add(block_ms);
                h.blocked_until = Some(h.blocked_until.map_or(until, |b| b.max(until)));
            }
            if self.queue.restore(lead, h) {
                if let Err(e) =
                    record::save_history(&self.shared.store, self.row.id, lead, &h).await
                {
                    tracing::warn!(error = %e, "history not saved");
                }
            }
        }
        tracing::info!(
            session = self.row.id,
            "outcomes of the calls a crash ended taken into the queue"
        );
    }

    /// Drains every agent's actions until none is left.
    async fn drive(&mut self) {
        loop {
            let mut work = Vec::new();
            for (name, slot) in &mut self.agents {
                while let Some(a) = slot.machine.poll_action() {
                    work.push((name.clone(), a));
                }
            }
            if work.is_empty() {
                return;
            }
            for (name, action) in work {
                match action {
                    AgentAction::ConnectAgent => {
                        let d = self.shared.dialer.clone();
                        let tx = self.internal.clone();
                        tokio::spawn(async move {
                            let ok = d.connect_agent(&name).await.is_ok();
                            let _ = tx.send(Internal::Connected(name, ok)).await;
                        });
                    }
                    AgentAction::ClaimNext => self.claim_next(&name),
                    AgentAction::SkipLead => {
                        if let Some(s) = self.agents.get_mut(&name).filter(|s| s.dialing) {
                            // The engine has not taken the dial yet: the
                            // skip follows it ([`Session::dialed`]).
                            s.skip_after_dial = true;
                            continue;
                        }
                        let d = self.shared.dialer.clone();
                        tokio::spawn(async move { d.skip(&name).await });
                    }
                    AgentAction::DisconnectAgent => {
                        let d = self.shared.dialer.clone();
                        tokio::spawn(async move { d.disconnect_agent(&name).await });
                    }
                }
            }
        }
    }

    /// The calling hours this session applies (SPEC §4): its own window or
    /// the config's, and the config's holidays.
    fn calling_hours(&self) -> CallingHours {
        CallingHours {
            window: self
                .row
                .calling_hours
                .unwrap_or(self.shared.config.calling_hours.window),
            holidays: self.shared.config.calling_hours.holidays.clone(),
        }
    }

    /// Takes the queue's next lead for `agent` (R13) in the session's
    /// order, then reads the lead, checks its calling hours (SPEC §4) and
    /// claims it in the database in a task of its own: one agent's round
    /// trips to the database never hold up the session's other agents
    /// (SPEC §6 call setup rate). The outcome comes back as
    /// [`Internal::Claimed`] ([`Session::claimed`]).
    fn claim_next(&mut self, agent: &str) {
        let now = self.shared.clock.instant();
        let now_ms = self.shared.clock.wall_ms();
        let Some(slot) = self.agents.get_mut(agent) else {
            return;
        };
        if slot.claiming {
            // The claim in flight answers for this agent.
            return;
        }
        if slot.machine.on_callback() {
            // On a callback: the claim waits for its end (the engine would
            // refuse the dial).
            slot.machine.handle_no_lead(None);
            return;
        }
        let c = match self.queue.claim_next(slot.id, now_ms) {
            Ok(Some(c)) => c,
            Ok(None) => {
                let wake = self
                    .queue
                    .next_wakeup(now_ms)
                    .map(|t| at_ms(now, now_ms, t));
                slot.machine.handle_no_lead(wake.map(Instant::into_std));
                return;
            }
            Err(e) => {
                tracing::warn!(%agent, error = %e, "claim refused by the queue");
                slot.machine.handle_dial_failed();
                return;
            }
        };
        slot.claiming = true;
        let shared = self.shared.clone();
        let hours = self.calling_hours();
        let tx = self.internal.clone();
        let agent = agent.to_string();
        let session_id = self.row.id;
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let step = claim_step(&shared, &writer, &hours, session_id, &agent, c, now_ms).await;
            let _ = tx
                .send(Internal::Claimed(Box::new(ClaimDone {
                    agent,
                    claim: c,
                    now_ms,
                    step,
                })))
                .await;
        });
    }

    /// A claim's outcome: dials the lead, or records why not and takes the
    /// next one while the agent still waits for a lead. An agent that
    /// paused or left meanwhile gets nothing: the claims are released.
    async fn claimed(&mut self, done: Box<ClaimDone>) {
        let ClaimDone {
            agent,
            claim: c,
            now_ms,
            step,
        } = *done;
        let store = self.shared.store.clone();
        let Some(slot) = self.agents.get_mut(&agent) else {
            if let ClaimStep::Db {
                result: Ok(ClaimResult::Claimed(db)),
                ..
            } = step
            {
                spawn_release(&store, db, now_ms);
            }
            return;
        };
        slot.claiming = false;
        let aid = slot.id;
        let wants = slot.machine.state() == AgentState::Ready && !slot.machine.on_callback();
        match step {
            ClaimStep::Held {
                opens_at,
                zone,
                holiday,
                number,
            } => {
                // No opening within a year (a window narrower than the
                // spread of the lead's zones): looked at again daily.
                let until = opens_at.unwrap_or(now_ms.saturating_add(DAY_MS));
                if let Err(e) = self.queue.hold(aid, &c, until, zone, holiday) {
                    tracing::warn!(%agent, error = %e, "hold refused by the queue");
                }
                tracing::debug!(lead = c.lead.0, zone = %zone.name(), "outside calling hours: held");
                self.shared
                    .config
                    .audit
                    .record(hold_entry(
                        self.row.id,
                        &agent,
                        c.lead.0,
                        number,
                        now_ms,
                        opens_at,
                        zone,
                        holiday,
                    ))
                    .await;
            }
            ClaimStep::Db {
                result: Ok(ClaimResult::Claimed(db)),
                lead,
                number,
            } => {
                if !wants {
                    self.queue.release(aid);
                    spawn_release(&store, db, now_ms);
                } else if let Some(number) = number {
                    self.dial(&agent, c, db, number, lead);
                    return;
                } else {
                    self.restricted(&agent, c, db, now_ms).await;
                }
            }
            ClaimStep::Db {
                result: Ok(ClaimResult::Taken),
                ..
            } => {
                self.queue.release(aid);
                self.queue.record_external_call(c.lead, now_ms);
            }
            ClaimStep::Db {
                result: Ok(ClaimResult::RecentlyCalled { at }),
                ..
            } => {
                self.queue.release(aid);
                self.queue.record_external_call(c.lead, at);
            }
            ClaimStep::Db {
                result: Ok(ClaimResult::Answered),
                ..
            } => {
                let _ = self
                    .queue
                    .report(aid, c.lead, c.generation, Outcome::Answered, now_ms);
            }
            ClaimStep::Db { result: Err(e), .. } => {
                tracing::warn!(%agent, error = %e, "database claim failed");
                self.queue.release(aid);
                if let Some(s) = self.agents.get_mut(&agent) {
                    s.machine.handle_dial_failed();
                }
                return;
            }
        }
        if wants {
            self.claim_next(&agent);
        } else if let Some(s) = self.agents.get_mut(&agent) {
            s.machine.handle_no_lead(None);
        }
    }

    /// Nothing to dial: a calling restriction (R11), blocked.
    async fn restricted(&mut self, agent: &str, c: Claim, db: LeadClaim, now_ms: i64) {
        use crate::store::audit::{AuditAction, AuditEntry, AuditReason};
        if let Some(aid) = self.agents.get(agent).map(|s| s.id) {
            let _ = self
                .queue
                .report(aid, c.lead, c.generation, Outcome::Restricted, now_ms);
        }
        spawn_release(&self.shared.store, db, now_ms);
        self.shared
            .config
            .audit
            .record(AuditEntry {
                id: 0,
                at_ms: now_ms,
                action: AuditAction::Restricted,
                reason: AuditReason::NotDialable,
                session_id: Some(self.row.id),
                lead_id: Some(c.lead.0),
                agent: Some(agent.to_string()),
                number: None,
                detail: "the lead has no phone number".into(),
            })
            .await;
    }

    /// Hands a claimed lead to the call engine in a task of its own (the
    /// engine stores the call record before the INVITE leaves); the call
    /// record id comes back as [`Internal::Dialed`].
    fn dial(&mut self, agent: &str, c: Claim, db: LeadClaim, number: String, lead: Option<Lead>) {
        let Some(s) = self.agents.get_mut(agent) else {
            return;
        };
        s.machine.handle_dialing(c);
        s.db_claim = Some(db);
        s.dialing = true;
        let req = DialRequest {
            number,
            lead_id: Some(c.lead.0),
            session_id: Some(self.row.id),
            reduced_ring_time: self.row.reduced_ring_time,
            caller_id: self.row.caller_id.clone(),
            amd: self.row.amd,
            voicemail_drop_id: self.row.voicemail_drop_id,
            record: self.row.record,
            lead: lead.map(|l| LeadSnapshot {
                name: l.name,
                do_not_call: l.do_not_call,
            }),
            claim_id: Some(db.id),
        };
        let d = self.shared.dialer.clone();
        let tx = self.internal.clone();
        let agent = agent.to_string();
        tokio::spawn(async move {
            let result = d.dial(&agent, req).await;
            let _ = tx
                .send(Internal::Dialed {
                    agent,
                    claim: c,
                    db,
                    result,
                })
                .await;
        });
    }

    /// The engine took the dial (the call record id) or refused it (the
    /// claims are released and the agent paused, as for a dial that could
    /// not be placed). A skip asked meanwhile goes to the engine now.
    fn dialed(&mut self, agent: String, c: Claim, db: LeadClaim, result: Result<i64, DialError>) {
        let now_ms = self.shared.clock.wall_ms();
        let Some(s) = self.agents.get_mut(&agent) else {
            return;
        };
        s.dialing = false;
        let current = s.machine.call().is_some_and(|x| x.claim == c);
        let skip = std::mem::take(&mut s.skip_after_dial);
        match result {
            Ok(call_id) => {
                if current {
                    s.machine.handle_call_started(call_id);
                }
                if skip {
                    let d = self.shared.dialer.clone();
                    tokio::spawn(async move { d.skip(&agent).await });
                }
            }
            Err(e) => {
                tracing::warn!(%agent, error = %e, "dial refused");
                if current {
                    let aid = s.id;
                    s.db_claim = None;
                    s.machine.handle_dial_failed();
                    self.queue.release(aid);
                }
                spawn_release(&self.shared.store, db, now_ms);
            }
        }
    }

    fn counts(&self) -> Counts {
        Counts::new(self.queue.counts(), self.queue.is_done())
    }

    /// Publishes agent-state and queue-count changes.
    fn publish(&mut self) {
        let id = self.row.id;
        for (name, slot) in &mut self.agents {
            let (lead_id, call_id) = shown(&slot.machine);
            let now = (slot.machine.state(), lead_id, call_id);
            if now != slot.last {
                slot.last = now;
                let _ = self.shared.events.send(SessionEvent::AgentState {
                    session_id: id,
                    agent: name.clone(),
                    state: now.0,
                    lead_id: now.1,
                    call_id: now.2,
                });
            }
        }
        let counts = self.counts();
        if self.last_counts != Some(counts) {
            self.last_counts = Some(counts);
            let _ = self.shared.events.send(SessionEvent::Queue {
                session_id: id,
                counts,
            });
        }
    }
}

/// The audit entry of a lead held outside its calling hours.
#[allow(clippy::too_many_arguments)]
fn hold_entry(
    session_id: i64,
    agent: &str,
    lead: i64,
    number: Option<String>,
    now_ms: i64,
    opens_at: Option<i64>,
    zone: chrono_tz::Tz,
    holiday: bool,
) -> crate::store::audit::AuditEntry {
    use crate::store::audit::{AuditAction, AuditEntry, AuditReason};
    let detail = match opens_at {
        Some(t) => format!(
            "opens {} ({})",
            super::hours::local_hm(zone, t),
            crate::leads::model::ms_to_time(t).to_rfc3339()
        ),
        None => format!("no opening within a year in {}", zone.name()),
    };
    AuditEntry {
        id: 0,
        at_ms: now_ms,
        action: AuditAction::Held,
        reason: if holiday {
            AuditReason::Holiday
        } else {
            AuditReason::CallingHours
        },
        session_id: Some(session_id),
        lead_id: Some(lead),
        agent: Some(agent.to_string()),
        number,
        detail,
    }
}

/// Longest single sleep (a day): timers further out are re-armed later.
const MAX_SLEEP_MS: u64 = 86_400_000;

/// A day in ms: how long a lead whose window never opens is held before it
/// is looked at again.
const DAY_MS: i64 = 86_400_000;

/// The lead and call record an agent's screen is about: a lead call, or a
/// callback (SPEC §1 "Leads calling back").
fn shown(machine: &AgentMachine) -> (Option<i64>, Option<i64>) {
    if let Some(c) = machine.shown_callback() {
        return (c.lead_id, Some(c.call_id));
    }
    let c = machine.shown_call();
    (c.map(|c| c.claim.lead.0), c.and_then(|c| c.call_id))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The instant at wall time `t_ms`, given that `now` is `now_ms`.
fn at_ms(now: Instant, now_ms: i64, t_ms: i64) -> Instant {
    let delta = t_ms.saturating_sub(now_ms);
    if delta <= 0 {
        now
    } else {
        // Capped: a far-future wall time must not overflow the Instant.
        let capped = u64::try_from(delta).unwrap_or(u64::MAX).min(MAX_SLEEP_MS);
        now + Duration::from_millis(capped)
    }
}

/// Ids by session.
pub type SessionMap = HashMap<i64, SessionHandle>;

#[cfg(test)]
mod change_log_tests {
    use super::*;

    #[test]
    fn named_changes_gather_until_an_unknown_one() {
        let c = LeadsChanged::default();
        let start = c.seq();
        c.leads(&[3, 4]);
        c.leads(&[4]);
        assert_eq!(c.since(start), (start + 2, Changes::Leads(vec![3, 4, 4])));
        assert_eq!(c.since(start + 1), (start + 2, Changes::Leads(vec![4])));
        assert_eq!(c.since(start + 2), (start + 2, Changes::Leads(vec![])));
        c.poke();
        c.leads(&[5]);
        assert_eq!(c.since(start).1, Changes::All);
        assert_eq!(c.since(start + 3), (start + 4, Changes::Leads(vec![5])));
    }

    #[test]
    fn too_many_or_forgotten_changes_mean_a_re_read() {
        let c = LeadsChanged::default();
        let many: Vec<i64> = (0..=MAX_CHECKED_LEADS as i64).collect();
        c.leads(&many);
        assert_eq!(c.since(0).1, Changes::All);
        let after = c.seq();
        for i in 0..CHANGE_LOG as i64 + 1 {
            c.leads(&[i]);
        }
        // The oldest change was forgotten: the session cannot know it.
        assert_eq!(c.since(after).1, Changes::All);
        assert_eq!(
            c.since(c.seq() - 1).1,
            Changes::Leads(vec![CHANGE_LOG as i64])
        );
    }
}
