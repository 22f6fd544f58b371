//! The call engine driver (SPEC §1): one tokio task per configured agent
//! owns that agent's [`AgentLeg`], its current [`LeadLeg`], the legs still
//! finishing their signalling, its [`AgentMedia`] and one timer (the
//! earliest `poll_timeout`). DESIGN.md "shard by Call-ID": the SIP task
//! hands every message whose Call-ID is a live leg's to the owning agent
//! task ([`Router`]); legs transmit straight through the clonable
//! [`TransportHandle`], in the order they produced the messages.
//!
//! The sessions (`crate::dialer`) use the clonable [`CallEngine`] handle and
//! the [`CallEvent`] broadcast; the manual call API (R17) uses the same.

#![allow(clippy::disallowed_methods)] // a driver: this is where the clock is read.

mod inbound_call;
mod offer;
mod recording;
mod voicemail_drop;

pub use inbound_call::InboundCall;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::leg_journal::{JournalSender, Journaled, LeadJournal, LegChange, LegKey, Unsent};
use super::trunk::{PingPolicy, TrunkId, TrunkPolicy, TrunkSet, TrunkStatus};
use super::trunk_slot::{TakeError, TrunkGrant, TrunkInfo, TrunkSlot, Trunks};
use super::{
    AgentEvent, AgentLeg, AgentParams, AgentTarget, ClosingLegs, EndReason, LeadEvent, LeadLeg,
    LeadParams, LegRecord, LocalAddress, Outcome,
};
use crate::config::Config;
use crate::leads::model::{CallEnd, CallOutcome, NewCall};
use crate::leads::PhoneE164;
use crate::media::amd::{AmdConfig, AmdMode, Verdict};
use crate::media::port::PortError;
use crate::media::relay::{AgentMedia, LegHandle, MediaError, MediaEvent, MediaEvents, MediaRelay};
use crate::media::sdp::{self, SessionDescription};
use crate::sip::handle::SipHandle;
use crate::sip::syntax::SipMessage;
use crate::sip::transaction::TimerConfig;
use crate::sip::transport::TransportHandle;
use crate::sip::{Peer, Transmit, TransportKind};
use crate::store::audit::{AuditAction, AuditEntry, AuditReason};
use crate::store::Store;

/// How long an agent's phone may ring before the agent leg gives up.
const AGENT_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// After a forced hang-up at the drain deadline, how long the BYE and
/// CANCEL transactions may take before the agent task ends regardless:
/// over UDP that is three transmissions (T1 = 0.5 s, RFC 3261 §17.1.2.2),
/// and legs that only absorb retransmissions (Timers D and K) are not
/// waited for.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The agent's key for a voicemail drop (SPEC §4: `9` on the phone).
pub const VOICEMAIL_DROP_KEY: char = '9';

/// Why a call engine request failed (the seam with the sessions).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallEngineError {
    /// No `[[agent]]` of that name.
    #[error("unknown agent {0:?}")]
    UnknownAgent(String),
    /// The agent's phone is not registered (SPEC §1 step 2): nothing dialed.
    #[error("the agent's phone is not registered: register the phone, then try again")]
    NoBinding,
    /// The phone refused the agent leg with this final status.
    #[error("the agent's phone declined the call ({0})")]
    Declined(u16),
    /// The phone did not answer (or no response arrived).
    #[error("the agent's phone did not answer")]
    Timeout,
    /// `dial` needs a connected agent leg.
    #[error("the agent is not connected")]
    NotConnected,
    /// The agent already has a call in progress.
    #[error("the agent already has a call in progress")]
    Busy,
    /// No call to act on.
    #[error("no call in progress")]
    NoCall,
    /// A voicemail drop needs an answered lead and a session with a
    /// `voicemail_drop_id` (SPEC §4).
    #[error("no voicemail drop: {0}")]
    NoDrop(&'static str),
    /// The agent leg is still ending (its CANCEL or BYE in flight): a new
    /// call can start once it is gone.
    #[error("the agent's phone is still hanging up the previous call: try again in a moment")]
    AgentLegEnding,
    /// No `[[trunk]]` is configured.
    #[error("no [[trunk]] is configured")]
    NoTrunk,
    /// Every trunk that may dial the number is down (its OPTIONS pings
    /// fail): nothing is dialed, the lead stays queued (HTTP 503).
    #[error("every trunk that may dial this number is down (OPTIONS pings fail): nothing was dialed; see GET /api/v1/trunks")]
    TrunksDown,
    /// Every trunk that may dial the number stayed at its `max_calls` or
    /// `max_cps` for `dialer.trunk_wait`: nothing is dialed (HTTP 503).
    #[error("every trunk that may dial this number is at its max_calls or max_cps limit: nothing was dialed; try again in a moment")]
    TrunksBusy,
    /// The call is for a lead marked "do not call": it never reaches the
    /// wire (SPEC §4, HTTP 403).
    #[error("lead {0} is marked do not call: it is never dialed (PATCH /api/v1/leads/{0} with {{\"do_not_call\": false}} if that was a mistake)")]
    LeadDoNotCall(i64),
    /// The number is on the do-not-call list (the covering pattern): it
    /// never reaches the wire (SPEC §4, HTTP 403).
    #[error("{0} is on the do-not-call list: it is never dialed (remove it with DELETE /api/v1/dnc/NUMBER if it was added by mistake)")]
    DoNotCall(String),
    /// Every RTP port pair of `server.rtp_ports` is in use (SPEC §4): the
    /// call cannot be set up until calls end (HTTP 503).
    #[error(transparent)]
    RtpPorts(PortError),
    /// Free pairs of `server.rtp_ports` could not be bound: other programs
    /// hold those ports (HTTP 503).
    #[error("{0}: other programs hold ports of server.rtp_ports; give powerdial a range nothing else uses")]
    RtpPortsBusy(String),
    /// The media relay failed (sockets, task).
    #[error("media: {0}")]
    Media(String),
    /// The SIP layer refused to build or send the call.
    #[error("SIP: {0}")]
    Sip(String),
    /// The database failed.
    #[error("database: {0}")]
    Store(String),
    /// The engine is shutting down.
    #[error("the call engine has stopped")]
    Stopped,
}

impl From<MediaError> for CallEngineError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::Ports(p @ PortError::Exhausted { .. }) => CallEngineError::RtpPorts(p),
            e @ MediaError::NoBindablePort(_) => CallEngineError::RtpPortsBusy(e.to_string()),
            other => CallEngineError::Media(other.to_string()),
        }
    }
}

/// Where a call placed with [`CallEngine::place_call`] stands while it has
/// no outcome (SPEC §4: "the call's progress follows in GET
/// /api/v1/calls/{id} and the event stream").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallProgress {
    /// The agent's phone is ringing; the lead is dialed once it answers.
    CallingAgent,
    /// The lead's INVITE is out, no provisional response yet.
    Dialing,
    /// The lead is ringing (a 18x arrived).
    Ringing,
    /// The lead answered and is bridged to the agent.
    Answered,
    /// The outcome is stored.
    Ended,
    /// The agent's phone did not answer (or the call was hung up or could
    /// not be set up before the lead was dialed): the lead was never dialed,
    /// so the record has `ended_at` and no outcome.
    NotDialed,
}

/// A dial request from the sessions or the manual call API (R2, R8, R17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRequest {
    /// As stored on the lead (E.164 normally); normalised and checked
    /// against the trunk `allow` here (R2, R11).
    pub number: String,
    /// The lead, if the call is for one.
    pub lead_id: Option<i64>,
    /// The dialer session, if any.
    pub session_id: Option<i64>,
    /// R8: `reduced_ring_timeout` instead of `ring_timeout`.
    pub reduced_ring_time: bool,
    /// The session's caller ID, shown instead of the trunk's when no
    /// `dialer.caller_id_pool` number is local to the lead.
    pub caller_id: Option<String>,
    /// The session's answering-machine detection (SPEC §4 `amd`).
    pub amd: AmdMode,
    /// The session's voicemail drop (SPEC §4 `voicemail_drop_id`).
    pub voicemail_drop_id: Option<i64>,
    /// Record the call (SPEC §4 session `record`).
    pub record: bool,
    /// The lead as the caller read it just before asking for the dial (a
    /// dialer session reads it for the number and the calling hours), so
    /// the dial does not read it again: its name for the phone's display
    /// (`dialer.lead_on_phone`) and its "do not call" mark; `number` is
    /// then the lead's stored E.164 phone. `None`: the engine reads what it
    /// needs itself and parses `number` as written.
    pub lead: Option<LeadSnapshot>,
    /// The R13 claim (`lead_claims` row) the dialer session holds on the
    /// lead: the call record names it in the same commit.
    pub claim_id: Option<i64>,
}

/// What a dial needs of its lead, read by the caller (see
/// [`DialRequest::lead`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadSnapshot {
    /// The lead's name.
    pub name: String,
    /// The lead is marked "do not call" (SPEC §4).
    pub do_not_call: bool,
}

/// What the engine reports (the seam with the sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// The agent's phone answered the nailed-up leg.
    AgentConnected {
        /// The agent.
        agent: String,
    },
    /// The agent leg ended (the phone hung up or the leg failed): sessions
    /// pause the agent (R9).
    AgentDisconnected {
        /// The agent.
        agent: String,
    },
    /// The lead's first provisional response.
    LeadRinging {
        /// The agent.
        agent: String,
        /// The call record id.
        call_id: i64,
    },
    /// The lead answered and is bridged to the agent.
    LeadAnswered {
        /// The agent.
        agent: String,
        /// The call record id.
        call_id: i64,
    },
    /// The call's outcome is stored (R8–R12); sent after the record is saved.
    CallEnded {
        /// The agent.
        agent: String,
        /// The call record id.
        call_id: i64,
        /// The lead, if any.
        lead_id: Option<i64>,
        /// The session, if any.
        session_id: Option<i64>,
        /// The outcome.
        outcome: Outcome,
        /// The final SIP status of the lead's INVITE, if one arrived.
        sip_status: Option<u16>,
    },
    /// A lead calling back was put through to this agent (SPEC §1 "Leads
    /// calling back"); `LeadAnswered` follows once it is bridged, then
    /// `CallEnded` with outcome `inbound`.
    CallbackTaken {
        /// The agent.
        agent: String,
        /// The call record id.
        call_id: i64,
        /// The lead, if the caller's number is a lead's.
        lead_id: Option<i64>,
        /// The session the agent was chosen in.
        session_id: Option<i64>,
    },
    /// A call placed with [`CallEngine::place_call`] moved on (SPEC §4,
    /// R17); the sessions ignore it.
    CallProgress {
        /// The agent.
        agent: String,
        /// The call record id.
        call_id: i64,
        /// Where it stands now.
        state: CallProgress,
    },
    /// Answering-machine detection's verdict on the current lead (SPEC
    /// §4 `amd`), also stored on the call record.
    Amd {
        /// The agent.
        agent: String,
        /// The call record id.
        call_id: i64,
        /// Human, machine or not sure.
        verdict: Verdict,
        /// From the lead's 200 OK to the verdict, ms.
        amd_ms: i64,
    },
    /// A control key on the agent's phone (SPEC §5 DTMF): `*` next lead, `#`
    /// hang up the lead, `0` pause, `3` do not call. The engine already did
    /// the SIP part of `*` and `#`.
    Dtmf {
        /// The agent.
        agent: String,
        /// The digit.
        digit: char,
    },
}

/// An agent's leg as the sessions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLegState {
    /// The phone answered and the leg is up.
    pub connected: bool,
    /// The call record id of the current lead call, if one is in progress.
    pub call_id: Option<i64>,
}

/// A dial and the trunk taken for it, boxed in [`Command`]: an agent's
/// command channel allocates its slots by blocks of 32, sized by the
/// largest command (SPEC §6 memory).
struct DialOrder {
    req: DialRequest,
    grant: Option<TrunkGrant>,
}

enum Command {
    Connect(oneshot::Sender<Result<(), CallEngineError>>),
    Dial(
        Box<DialOrder>,
        oneshot::Sender<Result<i64, CallEngineError>>,
    ),
    Place(
        Box<DialOrder>,
        oneshot::Sender<Result<(i64, CallProgress), CallEngineError>>,
    ),
    Skip(oneshot::Sender<Result<(), CallEngineError>>),
    /// A voicemail drop on the current lead (SPEC §4).
    Drop(oneshot::Sender<Result<(), CallEngineError>>),
    Hangup(i64, oneshot::Sender<bool>),
    Disconnect(oneshot::Sender<Result<(), CallEngineError>>),
    State(oneshot::Sender<AgentLegState>),
    /// A callback for this agent (SPEC §1 "Leads calling back").
    Inbound(
        Box<InboundCall>,
        oneshot::Sender<Result<(), (CallEngineError, Box<InboundCall>)>>,
    ),
    /// A message for a callback this task took, that reached the router.
    Sip(RoutedMessage),
}

/// A message for a call leg, from the SIP task.
#[derive(Debug)]
pub struct RoutedMessage {
    /// Where it came from.
    pub peer: Peer,
    /// The inspected message, boxed: every agent's channel allocates its
    /// slots by blocks of 32, sized by this struct (SPEC §6 memory).
    pub message: Box<SipMessage>,
}

/// A change of the SIP task's Call-ID routes, sent before the first
/// message of a leg leaves so no answer can overtake it.
pub enum RouteChange {
    /// Route this Call-ID's messages to this sender.
    Add(String, mpsc::UnboundedSender<RoutedMessage>),
    /// The leg is gone.
    Remove(String),
}

/// The clonable handle to the call engine (the seam with the sessions).
#[derive(Clone)]
pub struct CallEngine {
    /// One driver task per agent; agents created through the API join at
    /// run time.
    agents: Arc<std::sync::RwLock<HashMap<String, mpsc::UnboundedSender<Command>>>>,
    shared: Arc<Shared>,
    stops: (CancellationToken, CancellationToken, CancellationToken),
    events: broadcast::Sender<CallEvent>,
    progress: ProgressTable,
    tasks: TaskTracker,
}

/// Where the calls placed with [`CallEngine::place_call`] stand, until
/// their outcome is stored.
type ProgressTable = Arc<std::sync::Mutex<HashMap<i64, CallProgress>>>;

impl std::fmt::Debug for CallEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEngine")
            .field("agents", &self.agent_names().len())
            .finish()
    }
}

/// What every agent task shares: configuration and the I/O handles.
struct Shared {
    store: Store,
    /// A call's answer time and outcome, batched off the agent tasks
    /// (`store::call_writer`).
    records: crate::store::call_writer::CallWriter,
    /// Dials restricted or refused before the wire (SPEC §4 audit).
    audit: crate::store::audit::AuditLog,
    sip: SipHandle,
    transport: TransportHandle,
    routes: mpsc::UnboundedSender<RouteChange>,
    relay: MediaRelay,
    events: broadcast::Sender<CallEvent>,
    progress: ProgressTable,
    local: LocalAddress,
    media_ip: IpAddr,
    timers: TimerConfig,
    trunks: Trunks,
    /// `dialer.trunk_wait`: how long a dial waits for a trunk under its limits.
    trunk_wait: Duration,
    default_region: String,
    ring_timeout: Duration,
    reduced_ring_timeout: Duration,
    max_call_length: Duration,
    /// How long connected calls may go on after a graceful stop begins.
    drain_timeout: Duration,
    /// `dialer.lead_on_phone`: MESSAGE the lead's name to the phone.
    lead_on_phone: bool,
    /// `security.srtp`.
    srtp: crate::config::SrtpPolicy,
    /// `dialer.caller_id_pool`: local presence.
    caller_id_pool: super::caller_id::CallerIdPool,
    /// The agent tasks and the outcome writes: a graceful stop waits for
    /// all of them, so no call ends without its record.
    tasks: TaskTracker,
    /// The leg journal's writer (`call::leg_journal`).
    journal: JournalSender,
    /// `server.data_dir`: voicemail messages are under `voicemail/`.
    data_dir: std::path::PathBuf,
    /// Voicemail messages read so far, by id (SPEC §4), so a drop starts
    /// without a disk read on the agent's task.
    drops: std::sync::Mutex<HashMap<i64, Arc<[i16]>>>,
    /// Browsers that are their agent's phone (SPEC §4 WebRTC).
    browsers: super::browser_phone::BrowserPhones,
}

/// Where the engine's tasks get their I/O (built by `server::start`).
pub struct EngineIo {
    /// The database.
    pub store: Store,
    /// Where dials restricted or refused before the wire are recorded.
    pub audit: crate::store::audit::AuditLog,
    /// The SIP task (registrar bindings).
    pub sip: SipHandle,
    /// The SIP sockets.
    pub transport: TransportHandle,
    /// The SIP task's route changes.
    pub routes: mpsc::UnboundedSender<RouteChange>,
    /// The RTP relay.
    pub relay: MediaRelay,
    /// Our SIP address as written in Via and Contact (`ip:port`).
    pub sent_by: SocketAddr,
    /// Stops the tasks at once (after a drain, or when the server fails).
    pub shutdown: CancellationToken,
    /// Starts a graceful stop: no new calls, ringing leads are cancelled,
    /// connected calls may finish for `server.drain_timeout`, then BYE.
    pub drain: CancellationToken,
    /// Ends the drain now (a second SIGTERM): BYE and CANCEL everything.
    pub hurry: CancellationToken,
    /// The leg journal's writer: what ends every live leg after a crash.
    pub journal: JournalSender,
}

/// Why the engine could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum EngineConfigError {
    /// A `[[trunk]] allow` pattern is not a regular expression.
    #[error("[[trunk]] {trunk}: allow pattern {pattern:?}: {source}")]
    BadAllow {
        /// The trunk's name.
        trunk: String,
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: regex::Error,
    },
    /// The trunk URI names no `ip[:port]` (names are not resolved).
    #[error("[[trunk]] {0}: the uri must be sip:IP[:PORT]")]
    BadTrunkUri(String),
}

impl CallEngine {
    /// Spawns one task per configured agent (DESIGN.md "Order and sharding").
    pub fn start(config: &Config, io: EngineIo) -> Result<CallEngine, EngineConfigError> {
        let mut policies = Vec::new();
        let mut info = Vec::new();
        for (i, t) in config.trunks.iter().enumerate() {
            let peer =
                trunk_peer(&t.uri).ok_or_else(|| EngineConfigError::BadTrunkUri(t.name.clone()))?;
            let mut allow = Vec::new();
            for p in &t.allow {
                // Anchored: the pattern must cover the whole number.
                let re = regex::Regex::new(&format!("^(?:{p})$")).map_err(|source| {
                    EngineConfigError::BadAllow {
                        trunk: t.name.clone(),
                        pattern: p.clone(),
                        source,
                    }
                })?;
                allow.push(re);
            }
            policies.push(TrunkPolicy {
                name: t.name.clone(),
                priority: t
                    .priority
                    .unwrap_or_else(|| u32::try_from(i + 1).unwrap_or(u32::MAX)),
                weight: t.weight,
                allow,
                max_cps: t.max_cps,
                max_calls: t.max_calls,
                ping: t.ping_interval().map(|interval| PingPolicy {
                    interval,
                    timeout: t.options_timeout.0,
                    down_after: t.down_after,
                    up_after: t.up_after,
                }),
            });
            let label = crate::metrics::TrunkLabel {
                trunk: t.name.clone(),
            };
            let m = crate::metrics::metrics();
            m.trunk_up.get_or_create(&label).set(1);
            m.trunk_active_calls.get_or_create(&label).set(0);
            let _ = m.trunk_attempts.get_or_create(&label);
            let _ = m.trunk_failovers.get_or_create(&label);
            info.push(TrunkInfo {
                config: t.clone(),
                peer,
            });
        }
        let pinged = policies.iter().any(|p| p.ping.is_some());
        let trunks = Trunks::new(TrunkSet::new(policies, Instant::now()), info);
        let (events, _) = broadcast::channel(1024);
        let progress = ProgressTable::default();
        let sent_by = io.sent_by.to_string();
        let local = LocalAddress {
            contact: format!("sip:powerdial@{sent_by}"),
            sent_by: sent_by.clone(),
            domain: config.domain.clone(),
        };
        let timers = TimerConfig {
            t1: config.sip_timers.t1,
            t2: config.sip_timers.t2,
            t4: config.sip_timers.t4,
        };
        if pinged {
            let ping = super::trunk_ping::PingIo {
                trunks: trunks.set.clone(),
                targets: trunks
                    .info
                    .iter()
                    .map(|t| super::trunk_ping::PingTarget {
                        peer: t.peer,
                        uri: t.config.uri.clone(),
                    })
                    .collect(),
                local: local.clone(),
                timers,
                transport: io.transport.clone(),
                routes: io.routes.clone(),
            };
            tokio::spawn(super::trunk_ping::run(
                ping,
                io.shutdown.clone(),
                io.drain.clone(),
            ));
        }
        let browsers =
            super::browser_phone::BrowserPhones::new(io.relay.clone(), config.media_ip, timers);
        let shared = Arc::new(Shared {
            records: crate::store::call_writer::CallWriter::start(io.store.clone()),
            store: io.store,
            audit: io.audit,
            sip: io.sip,
            transport: io.transport,
            routes: io.routes,
            relay: io.relay,
            events: events.clone(),
            progress: progress.clone(),
            local: LocalAddress {
                contact: format!("sip:powerdial@{sent_by}"),
                sent_by,
                domain: config.domain.clone(),
            },
            media_ip: config.media_ip,
            timers: TimerConfig {
                t1: config.sip_timers.t1,
                t2: config.sip_timers.t2,
                t4: config.sip_timers.t4,
            },
            trunks,
            trunk_wait: config.dialer.trunk_wait.0,
            default_region: config.default_region.clone(),
            ring_timeout: config.dialer.ring_timeout.0,
            reduced_ring_timeout: config.dialer.reduced_ring_timeout.0,
            max_call_length: config.dialer.max_call_length.0,
            drain_timeout: config.drain_timeout,
            lead_on_phone: config.dialer.lead_on_phone,
            srtp: config.security.srtp,
            // Checked when the configuration was read.
            caller_id_pool: super::caller_id::CallerIdPool::new(&config.dialer.caller_id_pool)
                .unwrap_or_default(),
            tasks: TaskTracker::new(),
            journal: io.journal,
            data_dir: config.data_dir.clone(),
            drops: std::sync::Mutex::default(),
            browsers,
        });
        tokio::spawn(recording::retention(
            config.data_dir.join("recordings"),
            config.recording.retention_days,
            io.shutdown.clone(),
        ));
        let engine = CallEngine {
            agents: Arc::default(),
            tasks: shared.tasks.clone(),
            shared,
            stops: (io.shutdown, io.drain, io.hurry),
            events,
            progress,
        };
        for a in &config.agents {
            engine.add_agent(&a.username);
        }
        Ok(engine)
    }

    fn agents_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, mpsc::UnboundedSender<Command>>> {
        self.agents
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the driver task of an agent (a configured one at start, or
    /// one created through the API); nothing happens if it runs already.
    pub fn add_agent(&self, name: &str) {
        let mut agents = self
            .agents
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if agents.contains_key(name) {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        agents.insert(name.to_string(), tx);
        let task = AgentTask::new(name.to_string(), self.shared.clone());
        let (shutdown, drain, hurry) = self.stops.clone();
        self.shared
            .tasks
            .spawn(task.run(rx, shutdown, drain, hurry));
    }

    /// Ends an agent's driver task (an agent deleted through the API): its
    /// legs are hung up first. Returns whether it existed.
    pub async fn remove_agent(&self, name: &str) -> bool {
        let _ = self.disconnect_agent(name).await;
        self.agents
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .is_some()
    }

    /// The agents with a driver task.
    pub fn agent_names(&self) -> Vec<String> {
        self.agents_read().keys().cloned().collect()
    }

    /// Resolves once every agent task has ended its calls and every call
    /// outcome is stored (after [`EngineIo::drain`] or `shutdown`).
    pub async fn drained(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn agent(&self, agent: &str) -> Result<mpsc::UnboundedSender<Command>, CallEngineError> {
        self.agents_read()
            .get(agent)
            .cloned()
            .ok_or_else(|| CallEngineError::UnknownAgent(agent.to_string()))
    }

    async fn ask<T>(
        &self,
        agent: &str,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, CallEngineError> {
        let (tx, rx) = oneshot::channel();
        self.agent(agent)?
            .send(make(tx))
            .map_err(|_| CallEngineError::Stopped)?;
        rx.await.map_err(|_| CallEngineError::Stopped)
    }

    /// The browsers that are their agent's phone (SPEC §4 WebRTC).
    pub fn browser_phones(&self) -> &super::browser_phone::BrowserPhones {
        &self.shared.browsers
    }

    /// Whether `agent` is a known agent (configured or created).
    pub fn knows_agent(&self, agent: &str) -> bool {
        self.agents_read().contains_key(agent)
    }

    /// Sets up (or keeps) the nailed-up agent leg (SPEC §1 step 2): INVITE
    /// forked to all live bindings. Resolves when the agent answered.
    pub async fn connect_agent(&self, agent: &str) -> Result<(), CallEngineError> {
        self.ask(agent, Command::Connect).await?
    }

    /// Dials a lead over the trunk (R2, R8, R11): returns the call record id
    /// at once; the outcome arrives as [`CallEvent::CallEnded`].
    ///
    /// The trunk is taken first (by priority and weight, within its
    /// limits); when every trunk that may dial the number is at its limit
    /// the dial waits up to `dialer.trunk_wait` for one, then is refused
    /// with [`CallEngineError::TrunksBusy`] and nothing is stored or dialed.
    pub async fn dial(&self, agent: &str, req: DialRequest) -> Result<i64, CallEngineError> {
        self.agent(agent)?;
        // A dialer session's number is the lead's stored phone, E.164 as
        // validated when it was stored: not parsed again (a phonenumber
        // parse is most of a dial's CPU outside the database).
        let stored = req.lead.is_some();
        let grant = self.take_trunk(&req.number, stored).await?;
        self.ask(agent, |tx| {
            Command::Dial(Box::new(DialOrder { req, grant }), tx)
        })
        .await?
    }

    /// The trunks' state (SPEC §4 `GET /api/v1/trunks`), in configuration order.
    pub fn trunks(&self) -> Vec<TrunkStatus> {
        self.shared.trunks.lock().status()
    }

    /// Takes a trunk for a call to `number` (see [`dial`](Self::dial));
    /// `None` when no trunk may dial it (R11: the call is `restricted`).
    async fn take_trunk(
        &self,
        number: &str,
        stored: bool,
    ) -> Result<Option<TrunkGrant>, CallEngineError> {
        let parsed = if stored {
            PhoneE164::from_e164(number)
        } else {
            PhoneE164::parse(number, &self.shared.default_region)
        };
        let Ok(e164) = parsed else {
            if self.shared.trunks.is_empty() {
                return Err(CallEngineError::NoTrunk);
            }
            return Ok(None);
        };
        self.shared
            .trunks
            .take(e164.as_str(), self.shared.trunk_wait)
            .await
            .map_err(|e| match e {
                TakeError::NoTrunk => CallEngineError::NoTrunk,
                TakeError::AllDown => CallEngineError::TrunksDown,
                TakeError::Busy => CallEngineError::TrunksBusy,
            })
    }

    /// A manual call (R17, SPEC §4 "answers 202 Accepted at once"): returns
    /// the call record id and its first state as soon as the record is
    /// stored, without waiting for the agent's phone. Errors known before
    /// anything starts come back at once: unknown agent, phone not
    /// registered, a call already in progress, no trunk, no free RTP ports.
    /// A connected agent leg is reused and the lead dialed at once;
    /// otherwise the agent's phone rings first ([`CallProgress::CallingAgent`])
    /// and the lead is dialed when it answers. Progress is published as
    /// [`CallEvent::CallProgress`] and read with [`CallEngine::call_progress`].
    pub async fn place_call(
        &self,
        agent: &str,
        req: DialRequest,
    ) -> Result<(i64, CallProgress), CallEngineError> {
        self.agent(agent)?;
        let grant = self.take_trunk(&req.number, false).await?;
        self.ask(agent, |tx| {
            Command::Place(Box::new(DialOrder { req, grant }), tx)
        })
        .await?
    }

    /// Where a call placed with [`CallEngine::place_call`] stands, while
    /// its outcome is not stored yet; `None` for other calls.
    pub fn call_progress(&self, call_id: i64) -> Option<CallProgress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&call_id)
            .copied()
    }

    /// Leaves the session's voicemail message on the agent's answered
    /// lead and frees the agent at once (SPEC §4 drop); the outcome is
    /// `voicemail_dropped`.
    pub async fn drop_voicemail(&self, agent: &str) -> Result<(), CallEngineError> {
        self.ask(agent, Command::Drop).await?
    }

    /// R9: CANCEL while ringing (outcome `skipped`), BYE once answered.
    pub async fn skip(&self, agent: &str) -> Result<(), CallEngineError> {
        self.ask(agent, Command::Skip).await?
    }

    /// Hangs up the call with record id `call_id` (R17 hang-up).
    pub async fn hangup_call(&self, call_id: i64) -> Result<(), CallEngineError> {
        let senders: Vec<_> = self.agents_read().values().cloned().collect();
        for tx in senders {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::Hangup(call_id, reply)).is_err() {
                continue;
            }
            if rx.await.unwrap_or(false) {
                return Ok(());
            }
        }
        Err(CallEngineError::NoCall)
    }

    /// BYEs the agent leg (and any lead leg: ringing → skipped).
    pub async fn disconnect_agent(&self, agent: &str) -> Result<(), CallEngineError> {
        self.ask(agent, Command::Disconnect).await?
    }

    /// The engine's events.
    pub fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.events.subscribe()
    }

    /// Offers a callback to `agent` (SPEC §1 "Leads calling back"): taken
    /// when the agent is free (see `AgentTask::take_inbound`), else given
    /// back with the reason.
    pub async fn take_inbound(
        &self,
        agent: &str,
        call: Box<InboundCall>,
    ) -> Result<(), (CallEngineError, Box<InboundCall>)> {
        let tx = match self.agent(agent) {
            Ok(tx) => tx,
            Err(e) => return Err((e, call)),
        };
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Inbound(call, _))) =
            tx.send(Command::Inbound(call, reply))
        {
            return Err((CallEngineError::Stopped, call));
        }
        match rx.await {
            Ok(r) => r,
            // The task ended with the call: nothing to give back.
            Err(_) => Ok(()),
        }
    }

    /// Hands a message of a callback to the agent task that took it.
    pub fn forward_sip(&self, agent: &str, message: RoutedMessage) {
        if let Ok(tx) = self.agent(agent) {
            let _ = tx.send(Command::Sip(message));
        }
    }

    /// The agent leg's state; `None` for an unknown agent or a stopped engine.
    pub async fn agent_state(&self, agent: &str) -> Option<AgentLegState> {
        self.ask(agent, Command::State).await.ok()
    }
}

/// `sip:IP[:PORT][;transport=tcp]` → where the trunk's requests go.
fn trunk_peer(uri: &str) -> Option<Peer> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let rest = rest.rsplit_once('@').map_or(rest, |x| x.1);
    let mut parts = rest.split(';');
    let hostport = parts.next()?;
    let transport = if parts.any(|p| p.eq_ignore_ascii_case("transport=tcp")) {
        TransportKind::Tcp
    } else {
        TransportKind::Udp
    };
    let addr = match hostport.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let host = hostport.trim_start_matches('[').trim_end_matches(']');
            SocketAddr::new(host.parse().ok()?, 5060)
        }
    };
    Some(Peer { transport, addr })
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Maps the legs' instants onto the wall clock from one (instant, wall) pair.
#[derive(Clone, Copy)]
struct Anchor(Instant, SystemTime);

impl Anchor {
    fn now() -> Anchor {
        Anchor(Instant::now(), SystemTime::now())
    }
    fn ms(self, at: Instant) -> i64 {
        let wall = match at.checked_duration_since(self.0) {
            Some(d) => self.1 + d,
            None => self.1 - self.0.saturating_duration_since(at),
        };
        epoch_ms(wall)
    }
}

/// The current dial's lead call.
struct LeadCall {
    leg: LeadLeg,
    media: LegHandle,
    offer: offer::OurOffer,
    record_id: i64,
    lead_id: Option<i64>,
    session_id: Option<i64>,
    anchor: Anchor,
    ringing: bool,
    /// Why the answered call ended, for the log.
    end_reason: Option<EndReason>,
    /// The outcome is stored and `CallEnded` sent.
    finished: bool,
    /// Placed with [`CallEngine::place_call`]: its progress is published.
    manual: bool,
    /// Whom the agent will talk to ("Ada Lovelace +14155550101"), shown
    /// on the phone when the lead answers.
    label: Option<String>,
    /// The trunk the call is on, and the others it may fail over to.
    grant: TrunkGrant,
    /// The E.164 number dialed (again on the next trunk after a failover).
    number: String,
    /// R8 for this call (each trunk's INVITE gets the whole of it).
    ring_timeout: Duration,
    /// The session's caller ID, if it has one (kept for a failover).
    session_caller_id: Option<String>,
    /// The caller ID in the INVITE on the wire (From, P-Asserted-Identity).
    caller_id: String,
    /// The session's answering-machine detection (SPEC §4 `amd`).
    amd: AmdMode,
    /// The session's voicemail drop (SPEC §4 `voicemail_drop_id`).
    voicemail_drop_id: Option<i64>,
    /// Record the call from its answer (SPEC §4 `record`).
    record: bool,
    /// The detector's verdict, once given.
    amd_verdict: Option<Verdict>,
    /// The outcome an answered call ends with when it is not `answered`
    /// (`voicemail`, `voicemail_dropped`).
    answered_as: Option<Outcome>,
}

/// A manual call waiting for the agent's phone to answer (R17): its
/// record is stored and its lead media reserved; the lead is dialed when
/// the agent leg connects.
struct PendingCall {
    req: DialRequest,
    record_id: i64,
    number: String,
    media: LegHandle,
    /// The trunk is held while the agent's phone rings.
    grant: TrunkGrant,
}

struct AgentTask {
    name: String,
    shared: Arc<Shared>,
    rng: StdRng,
    sip_tx: mpsc::UnboundedSender<RoutedMessage>,
    sip_rx: mpsc::UnboundedReceiver<RoutedMessage>,
    /// Boxed, as `lead`, `pending` and `inbound`: the task's future holds
    /// this struct for every configured agent, joined or not, and the call
    /// state inline would make each of them carry a call's room (SPEC §6:
    /// under 20 KB per active call).
    leg: Option<Box<AgentLeg>>,
    media: Option<AgentMedia>,
    media_rx: Option<MediaEvents>,
    agent_offer: Option<offer::OurOffer>,
    /// Our SRTP key on the agent leg and whether SRTP is mandatory
    /// (`call::secure`).
    agent_key: Option<(crate::media::srtp::MasterKey, bool)>,
    waiters: Vec<oneshot::Sender<Result<(), CallEngineError>>>,
    lead: Option<Box<LeadCall>>,
    /// A manual call waiting for the agent leg (R17).
    pending: Option<Box<PendingCall>>,
    /// A callback taken by this agent (SPEC §1 "Leads calling back").
    inbound: Option<Box<inbound_call::InboundState>>,
    /// Legs whose call is over but whose signalling goes on (a 487's ACK
    /// and Timer D, a crossing 200's BYE, Timer J after the peer's BYE):
    /// lead legs whose outcome is stored, agent legs that failed or were
    /// cancelled while a new one rings the phone. Only their last
    /// transactions are kept ([`ClosingLeg`](super::ClosingLeg)).
    closing: ClosingLegs,
    /// Answered leads left a voicemail drop, the agent gone on (SPEC §4).
    dropping: Vec<voicemail_drop::DroppingCall>,
    sdp_version: u64,
    /// A graceful stop began: connected calls end by this instant.
    drain_deadline: Option<Instant>,
    /// The drain deadline passed (or a second signal came): everything
    /// was hung up.
    forced: bool,
    /// What this task's legs have in the leg journal.
    journaled: Journaled,
    /// Journal changes not handed over yet (the writer's channel was full),
    /// and when to try again.
    unsent: Unsent,
    unsent_retry: Option<Instant>,
}

async fn media_event(rx: &mut Option<MediaEvents>) -> Option<MediaEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next peer the transport could not reach (see
/// [`TransportHandle::subscribe_failures`]); a lagging receiver skips what
/// it missed, a closed one waits forever.
async fn transport_failure(rx: &mut broadcast::Receiver<Peer>) -> Peer {
    loop {
        match rx.recv().await {
            Ok(peer) => return peer,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl AgentTask {
    fn new(name: String, shared: Arc<Shared>) -> Self {
        let (sip_tx, sip_rx) = mpsc::unbounded_channel();
        AgentTask {
            name,
            shared,
            rng: StdRng::from_entropy(),
            sip_tx,
            sip_rx,
            leg: None,
            media: None,
            media_rx: None,
            agent_offer: None,
            agent_key: None,
            waiters: Vec::new(),
            lead: None,
            pending: None,
            inbound: None,
            closing: ClosingLegs::default(),
            dropping: Vec::new(),
            sdp_version: epoch_ms(SystemTime::now()).unsigned_abs(),
            drain_deadline: None,
            forced: false,
            journaled: Journaled::default(),
            unsent: Unsent::default(),
            unsent_retry: None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let mut all = Vec::new();
        all.extend(self.leg.as_ref().and_then(|l| l.poll_timeout()));
        all.extend(self.lead.as_ref().and_then(|l| l.leg.poll_timeout()));
        all.extend(self.inbound.as_ref().and_then(|i| i.poll_timeout()));
        all.extend(self.closing.poll_timeout());
        all.extend(
            self.dropping
                .iter()
                .filter_map(|d| d.call.leg.poll_timeout()),
        );
        if let Some(d) = self.drain_deadline {
            all.push(if self.forced { d + DRAIN_GRACE } else { d });
        }
        all.extend(self.unsent_retry);
        all.into_iter().min()
    }

    /// The agent's driver loop, spawned for every configured agent whether
    /// or not it dials, so its future's size is paid per agent (SPEC §6).
    /// Not an `async fn`: one taking `self` by value keeps two copies of it
    /// in its future (the argument and the local it is moved into), where
    /// an `async move` block uses the captured `self` in place. A command's
    /// work (dialing awaits the store) is boxed for the same reason: it
    /// would otherwise widen every agent's future by its largest await.
    #[allow(clippy::manual_async_fn)] // the `async fn` form stores `self` twice
    fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        stop: CancellationToken,
        drain: CancellationToken,
        hurry: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let mut failures = self.shared.transport.subscribe_failures();
            loop {
                let deadline = self.deadline();
                let timer = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = drain.cancelled(), if self.drain_deadline.is_none() => {
                        self.begin_drain(Instant::now());
                    }
                    _ = hurry.cancelled(), if self.drain_deadline.is_some() && !self.forced => {
                        self.force_end(Instant::now());
                    }
                    _ = timer => self.on_timeout(Instant::now()),
                    msg = self.sip_rx.recv() => {
                        if let Some(m) = msg {
                            self.on_sip(Instant::now(), m);
                        }
                    }
                    peer = transport_failure(&mut failures) => {
                        self.on_peer_unreachable(Instant::now(), peer);
                    }
                    ev = media_event(&mut self.media_rx) => match ev {
                        Some(ev) => self.on_media(Instant::now(), ev),
                        None => self.media_rx = None,
                    },
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => Box::pin(self.on_command(cmd)).await,
                        None => {
                            self.unsent.send_all(&self.shared.journal).await;
                            return;
                        }
                    },
                }
                if self.drain_deadline.is_some() {
                    self.drain_step(Instant::now());
                }
                self.flush().await;
                if self.pending.is_some() {
                    Box::pin(self.start_pending()).await;
                }
                if let Some(d) = self.drain_deadline {
                    // Done when every leg has finished its signalling, or a
                    // grace period after the forced hang-up (a peer that never
                    // answers our BYE must not hold the process).
                    let now = Instant::now();
                    if self.is_idle() || (self.forced && now >= d + DRAIN_GRACE) {
                        tracing::info!(agent = %self.name, "calls ended: agent stopped");
                        self.unsent.send_all(&self.shared.journal).await;
                        return;
                    }
                }
            }
        }
    }

    /// A graceful stop begins (SIGTERM): no new calls; a lead still
    /// ringing is cancelled (R9: `skipped`), a waiting manual call dropped,
    /// an idle agent leg hung up; a connected call may go on until the
    /// drain deadline.
    fn begin_drain(&mut self, now: Instant) {
        self.drain_deadline = Some(now + self.shared.drain_timeout);
        self.abandon_pending("the server is stopping");
        if let Some(l) = &mut self.lead {
            if l.leg.record().answered.is_none() {
                l.leg.hangup(now);
            }
        }
        if self
            .inbound
            .as_ref()
            .is_some_and(|i| i.call.leg.is_offered())
        {
            self.hangup_inbound(now);
        }
    }

    /// The drain deadline passed or a second signal came: BYE or CANCEL
    /// every leg now.
    fn force_end(&mut self, now: Instant) {
        self.forced = true;
        self.drain_deadline = Some(now.min(self.drain_deadline.unwrap_or(now)));
        tracing::info!(agent = %self.name, "stopping: hanging up the calls left");
        if let Some(l) = &mut self.lead {
            l.leg.hangup(now);
        }
        for d in &mut self.dropping {
            d.call.leg.hangup(now);
        }
        self.hangup_inbound(now);
        if let Some(leg) = &mut self.leg {
            leg.hangup(now);
        }
    }

    /// While draining: once no lead call is left, hang up the agent leg.
    fn drain_step(&mut self, now: Instant) {
        if self.lead.is_none() && self.inbound.is_none() {
            if let Some(leg) = &mut self.leg {
                if leg.is_connected() || leg.is_inviting() {
                    leg.hangup(now);
                }
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.lead.is_none()
            && self.pending.is_none()
            && self.inbound.is_none()
            && self.closing.is_empty()
            && self.dropping.is_empty()
            && self.leg.as_ref().is_none_or(|l| l.is_closed())
    }

    fn on_timeout(&mut self, now: Instant) {
        if self
            .drain_deadline
            .is_some_and(|d| !self.forced && now >= d)
        {
            self.force_end(now);
        }
        if let Some(l) = &mut self.lead {
            if l.leg.poll_timeout().is_some_and(|d| d <= now) {
                l.leg.handle_timeout(now);
            }
        }
        if let Some(i) = &mut self.inbound {
            if i.poll_timeout().is_some_and(|d| d <= now) {
                i.call.leg.handle_timeout(now);
            }
        }
        if let Some(leg) = &mut self.leg {
            if leg.poll_timeout().is_some_and(|d| d <= now) {
                leg.handle_timeout(now);
            }
        }
        self.closing.handle_timeout(now);
        for d in &mut self.dropping {
            if d.call.leg.poll_timeout().is_some_and(|t| t <= now) {
                d.call.leg.handle_timeout(now);
            }
        }
    }

    fn on_sip(&mut self, now: Instant, m: RoutedMessage) {
        let call_id = match &*m.message {
            SipMessage::Request(r) => header_call_id(r.headers.iter()),
            SipMessage::Response(r) => header_call_id(r.headers.iter()),
        };
        let Some(call_id) = call_id else { return };
        let result = if let Some(l) = self.lead.as_mut().filter(|l| l.leg.call_id() == call_id) {
            l.leg.handle_message(now, m.peer, *m.message)
        } else if let Some(i) = self
            .inbound
            .as_mut()
            .filter(|i| i.call.leg.call_id() == call_id)
        {
            i.call.leg.handle_message(now, m.peer, *m.message)
        } else if let Some(leg) = self.leg.as_mut().filter(|l| l.call_id() == call_id) {
            leg.handle_message(now, m.peer, *m.message)
        } else if let Some(at) = self.closing.find(&call_id) {
            self.closing.handle_message(at, now, m.peer, *m.message)
        } else if let Some(d) = self
            .dropping
            .iter_mut()
            .find(|d| d.call.leg.call_id() == call_id)
        {
            d.call.leg.handle_message(now, m.peer, *m.message)
        } else {
            return;
        };
        if let Err(e) = result {
            tracing::debug!(agent = %self.name, error = %e, "message refused by a call leg");
        }
    }

    fn on_media(&mut self, now: Instant, ev: MediaEvent) {
        match ev {
            MediaEvent::Dtmf { leg, digit } => {
                let is_agent = self.media.as_ref().is_some_and(|m| m.agent_leg().id == leg);
                if is_agent {
                    self.on_digit(now, digit);
                }
            }
            // `dialer.rtp_timeout`: the relay reports a silent, not held leg.
            MediaEvent::RtpTimeout { leg } => {
                if let Some(l) = self.lead.as_mut().filter(|l| l.media.id == leg) {
                    tracing::info!(agent = %self.name, call = l.record_id, "no RTP from the carrier for rtp_timeout: hanging up the lead");
                    l.leg.rtp_timeout(now);
                } else if self.is_inbound_media(leg) {
                    tracing::info!(agent = %self.name, "no RTP from the caller for rtp_timeout: hanging up the callback");
                    self.hangup_inbound(now);
                } else if self.media.as_ref().is_some_and(|m| m.agent_leg().id == leg) {
                    // As if the phone hung up (SPEC §1 step 6): the lead is
                    // hung up and the sessions pause the agent.
                    if let Some(agent_leg) = self.leg.as_mut().filter(|l| l.is_connected()) {
                        tracing::info!(agent = %self.name, "no RTP from the phone for rtp_timeout: hanging up the agent leg");
                        agent_leg.rtp_timeout(now);
                    }
                }
            }
            MediaEvent::Amd {
                leg,
                verdict,
                cause,
                after,
            } => self.on_amd(now, leg, verdict, cause, after),
            MediaEvent::DropFinished {
                leg,
                played,
                started,
            } => self.on_drop_finished(now, leg, played, started),
            MediaEvent::StrayDropped { leg, from } => {
                tracing::warn!(agent = %self.name, leg = ?leg, %from, "RTP from a host the signalling does not name: dropped (further ones are dropped silently)");
            }
            MediaEvent::BridgeFirstPacket { bridged_at, at, .. } => {
                crate::metrics::metrics()
                    .bridge_seconds
                    .observe(at.saturating_duration_since(bridged_at).as_secs_f64());
                tracing::debug!(
                    agent = %self.name,
                    micros = at.saturating_duration_since(bridged_at).as_micros() as u64,
                    "bridge: first lead packet to the agent"
                );
            }
            _ => {}
        }
    }

    /// The detector's verdict on the lead (SPEC §4 `amd`): on the record
    /// and the event stream; in "hangup" mode a machine is hung up with
    /// outcome `voicemail` and the agent, who never heard it, moves on.
    fn on_amd(
        &mut self,
        now: Instant,
        leg: crate::media::relay::LegId,
        verdict: Verdict,
        cause: crate::media::amd::Cause,
        after: Duration,
    ) {
        let Some(l) = self.lead.as_mut().filter(|l| l.media.id == leg) else {
            return;
        };
        l.amd_verdict = Some(verdict);
        let amd_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        tracing::info!(agent = %self.name, call = l.record_id, %verdict, ?cause, amd_ms, "answering-machine detection");
        // Through the call writer, in order with the call's outcome: a
        // record announced as ended already shows its verdict (a write of
        // its own could land after the end, and a reader see `amd: null`).
        self.shared.records.finish_soon(
            l.record_id,
            CallEnd {
                amd: Some(verdict),
                amd_ms: Some(amd_ms),
                ..CallEnd::default()
            },
        );
        let _ = self.shared.events.send(CallEvent::Amd {
            agent: self.name.clone(),
            call_id: l.record_id,
            verdict,
            amd_ms,
        });
        match (verdict, l.amd) {
            (Verdict::Machine, AmdMode::Hangup) => {
                l.answered_as = Some(Outcome::Voicemail);
                l.leg.hangup(now);
            }
            (Verdict::Machine, AmdMode::Drop) => {
                if let Err(e) = self.start_drop(now) {
                    // No message to leave: as "hangup".
                    tracing::warn!(agent = %self.name, error = %e, "voicemail drop not possible: hanging up the machine");
                    if let Some(l) = &mut self.lead {
                        l.answered_as = Some(Outcome::Voicemail);
                        l.leg.hangup(now);
                    }
                }
            }
            _ => {}
        }
    }

    /// SPEC §5 DTMF: `*` next lead, `#` hang up the lead, `0` pause, `3`
    /// the current lead's number on the do-not-call list.
    fn on_digit(&mut self, now: Instant, digit: char) {
        match digit {
            VOICEMAIL_DROP_KEY => {
                if let Err(e) = self.start_drop(now) {
                    tracing::info!(agent = %self.name, error = %e, "DTMF voicemail drop ignored");
                }
                return;
            }
            '*' | '#' => {
                if let Some(l) = &mut self.lead {
                    l.leg.hangup(now);
                }
                self.hangup_inbound(now);
            }
            // `0` pauses; the do-not-call key is the session's to handle.
            '0' | crate::dialer::session::DNC_KEY => {}
            _ => return,
        }
        let _ = self.shared.events.send(CallEvent::Dtmf {
            agent: self.name.clone(),
            digit,
        });
    }

    async fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        if self.drain_deadline.is_some() {
            // Stopping: nothing new starts (SPEC §1; a restart resumes).
            match cmd {
                Command::Connect(reply) => {
                    let _ = reply.send(Err(CallEngineError::Stopped));
                    return;
                }
                Command::Dial(_, reply) => {
                    let _ = reply.send(Err(CallEngineError::Stopped));
                    return;
                }
                Command::Place(_, reply) => {
                    let _ = reply.send(Err(CallEngineError::Stopped));
                    return;
                }
                Command::Inbound(call, reply) => {
                    let _ = reply.send(Err((CallEngineError::Stopped, call)));
                    return;
                }
                other => return self.on_command_now(now, other).await,
            }
        }
        self.on_command_now(now, cmd).await
    }

    async fn on_command_now(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Connect(reply) => self.connect(now, reply).await,
            Command::Dial(order, reply) => {
                let DialOrder { req, grant } = *order;
                if let Some(id) = req.voicemail_drop_id {
                    self.load_drop(id).await;
                }
                let r = self.dial(req, grant).await;
                let _ = reply.send(r);
            }
            Command::Place(order, reply) => {
                let DialOrder { req, grant } = *order;
                let r = self.place(now, req, grant).await;
                let _ = reply.send(r);
            }
            Command::Drop(reply) => {
                let _ = reply.send(self.start_drop(now));
            }
            Command::Skip(reply) => {
                let r = if let Some(l) = &mut self.lead {
                    l.leg.skip(now);
                    Ok(())
                } else if self.hangup_inbound(now) {
                    Ok(())
                } else {
                    Err(CallEngineError::NoCall)
                };
                let _ = reply.send(r);
            }
            Command::Hangup(id, reply) => {
                let found = match &mut self.lead {
                    Some(l) if l.record_id == id => {
                        l.leg.hangup(now);
                        true
                    }
                    _ if self.pending.as_ref().is_some_and(|p| p.record_id == id) => {
                        self.hangup_pending(now).await;
                        true
                    }
                    _ if self.inbound.as_ref().is_some_and(|i| i.record_id == id) => {
                        self.hangup_inbound(now)
                    }
                    _ => false,
                };
                let _ = reply.send(found);
            }
            Command::Disconnect(reply) => {
                if let Some(l) = &mut self.lead {
                    l.leg.hangup(now);
                }
                self.hangup_inbound(now);
                let r = match &mut self.leg {
                    Some(leg) => {
                        leg.hangup(now);
                        Ok(())
                    }
                    None => Err(CallEngineError::NotConnected),
                };
                let _ = reply.send(r);
            }
            Command::State(reply) => {
                let _ = reply.send(AgentLegState {
                    connected: self.leg.as_ref().is_some_and(|l| l.is_connected()),
                    call_id: self
                        .lead
                        .as_ref()
                        .map(|l| l.record_id)
                        .or(self.inbound.as_ref().map(|i| i.record_id)),
                });
            }
            Command::Inbound(call, reply) => {
                let r = self
                    .take_inbound(now, *call)
                    .await
                    .map_err(|(e, call)| (e, Box::new(call)));
                let _ = reply.send(r);
            }
            Command::Sip(m) => self.on_sip(now, m),
        }
    }

    fn next_sdp_version(&mut self) -> u64 {
        self.sdp_version = self.sdp_version.wrapping_add(1);
        self.sdp_version
    }

    async fn connect(&mut self, now: Instant, reply: oneshot::Sender<Result<(), CallEngineError>>) {
        if let Some(leg) = &self.leg {
            if leg.is_connected() {
                let _ = reply.send(Ok(()));
            } else if leg.is_closed() {
                let _ = reply.send(Err(CallEngineError::NotConnected));
            } else {
                self.waiters.push(reply);
            }
            return;
        }
        let targets = self.agent_targets().await;
        if targets.is_empty() {
            let _ = reply.send(Err(CallEngineError::NoBinding));
            return;
        }
        let (media, media_rx) = match self.shared.relay.open_agent() {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(agent = %self.name, error = %e, "no media for the agent leg");
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        match self.dial_agent(now, targets, media, media_rx) {
            Ok(()) => self.waiters.push(reply),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// The agent's registered contacts: the INVITE forks to all of them
    /// (RFC 3261 §16.7 forking, as a proxy would).
    /// A browser that is the agent's phone is one more contact (SPEC §4).
    async fn agent_targets(&self) -> Vec<AgentTarget> {
        let bindings = self.shared.sip.bindings(&self.name).await;
        let mut targets: Vec<AgentTarget> = bindings
            .into_iter()
            .map(|b| AgentTarget {
                peer: Peer {
                    transport: b.transport,
                    addr: b.source,
                },
                contact: b.contact.trim_matches(['<', '>']).to_string(),
            })
            .collect();
        targets.extend(self.shared.browsers.targets(&self.name));
        targets
    }

    /// Starts the agent leg on its media; the INVITE leaves in this loop
    /// turn's flush.
    fn dial_agent(
        &mut self,
        now: Instant,
        targets: Vec<AgentTarget>,
        media: AgentMedia,
        media_rx: MediaEvents,
    ) -> Result<(), CallEngineError> {
        let version = self.next_sdp_version();
        let mut offer =
            sdp::make_offer(self.shared.media_ip, media.agent_leg().local_port, version);
        let plan = super::secure::plan(
            self.shared.srtp,
            &targets,
            self.shared.transport.local_addr(TransportKind::Tls),
            &self.shared.local,
        )
        .map_err(|e| CallEngineError::Sip(e.to_string()))?;
        if let Some(key) = &plan.key {
            crate::media::sdes::add_to_offer(&mut offer, key, plan.mandatory);
        }
        let local = &plan.local;
        let params = AgentParams {
            targets,
            agent_uri: format!("sip:{}@{}", self.name, local.domain),
            from: format!("\"powerdial\" <sip:powerdial@{}>", local.domain),
            local: local.clone(),
            offer_sdp: offer.to_bytes(),
            answer_timeout: AGENT_ANSWER_TIMEOUT,
            timers: self.shared.timers,
        };
        match AgentLeg::dial(now, params, &mut self.rng) {
            Ok(leg) => {
                self.route(leg.call_id());
                self.leg = Some(Box::new(leg));
                self.media = Some(media);
                self.media_rx = Some(media_rx);
                self.agent_offer = Some(offer::OurOffer::new(offer));
                self.agent_key = plan.key.map(|k| (k, plan.mandatory));
                Ok(())
            }
            Err(super::CallError::NoBinding) => Err(CallEngineError::NoBinding),
            Err(other) => Err(CallEngineError::Sip(other.to_string())),
        }
    }

    fn route(&self, call_id: &str) {
        let _ = self
            .shared
            .routes
            .send(RouteChange::Add(call_id.to_string(), self.sip_tx.clone()));
    }

    fn unroute(&self, call_id: &str) {
        let _ = self
            .shared
            .routes
            .send(RouteChange::Remove(call_id.to_string()));
    }

    async fn dial(
        &mut self,
        req: DialRequest,
        grant: Option<TrunkGrant>,
    ) -> Result<i64, CallEngineError> {
        if !self.leg.as_ref().is_some_and(|l| l.is_connected()) {
            return Err(CallEngineError::NotConnected);
        }
        if self.lead.is_some() || self.pending.is_some() || self.inbound.is_some() {
            return Err(CallEngineError::Busy);
        }
        // R2 + R11: the E.164 number, when a trunk may dial it.
        let e164 = grant.as_ref().map(|g| g.e164.clone());
        // A lead marked "do not call" is honoured like the list: its mark
        // as the caller read it, or as stored.
        let known_lead_dnc =
            req.lead_id.is_some() && req.lead.as_ref().is_some_and(|l| l.do_not_call);
        let ask_lead = req.lead_id.is_some() && req.lead.is_none();
        let anchor = Anchor::now();
        let mut new = NewCall {
            session_id: req.session_id,
            lead_id: req.lead_id,
            agent: Some(self.name.clone()),
            number: e164.clone().unwrap_or_else(|| req.number.clone()),
            started_ms: epoch_ms(anchor.1),
            answered_ms: None,
            ended_ms: None,
            outcome: None,
            sip_status: None,
            ring_ms: None,
            trunk: grant
                .as_ref()
                .filter(|_| !known_lead_dnc)
                .map(|g| self.shared.trunks.name(g.slot.id).to_string()),
        };
        // SPEC §4: a number on the do-not-call list never reaches the wire;
        // the list is asked at every dial (in the record's insert, one
        // statement), so an entry added on any instance holds on all of
        // them.
        let (record, dnc, lead_dnc) = if e164.is_some() {
            let done = self
                .shared
                .store
                .insert_dial(&new, req.claim_id, ask_lead)
                .await
                .map_err(|e| CallEngineError::Store(e.to_string()))?;
            let lead_dnc = done.dnc.is_none() && (known_lead_dnc || done.lead_do_not_call);
            (done.record, done.dnc, lead_dnc)
        } else {
            new.trunk = None;
            let inserted = match req.claim_id {
                Some(claim) => self.shared.store.insert_claimed_call(&new, claim).await,
                None => self.shared.store.insert_call(&new).await,
            };
            let record = inserted.map_err(|e| CallEngineError::Store(e.to_string()))?;
            (record, None, false)
        };
        if let Some(p) = &dnc {
            crate::metrics::metrics().dnc_refused.inc();
            tracing::info!(agent = %self.name, number = %req.number, pattern = %p, "on the do-not-call list: restricted, not dialed");
            self.audit(
                &req,
                AuditAction::Restricted,
                AuditReason::DoNotCall,
                format!("on the do-not-call list as {p}"),
            )
            .await;
        } else if lead_dnc {
            crate::metrics::metrics().dnc_refused.inc();
            tracing::info!(agent = %self.name, lead = ?req.lead_id, "lead marked do not call: restricted, not dialed");
            self.audit(
                &req,
                AuditAction::Restricted,
                AuditReason::LeadDoNotCall,
                "the lead is marked do not call".into(),
            )
            .await;
        } else if e164.is_none() {
            self.audit(
                &req,
                AuditAction::Restricted,
                AuditReason::NotDialable,
                "not a number the trunk may dial".into(),
            )
            .await;
        }
        let grant = grant.filter(|_| dnc.is_none() && !lead_dnc);
        let number = e164.filter(|_| grant.is_some());
        let (Some(number), Some(grant)) = (number, grant) else {
            // R11: never on the wire.
            tracing::info!(agent = %self.name, number = %req.number, "number not dialable on the trunk: restricted");
            let end = CallEnd {
                ended_ms: Some(epoch_ms(anchor.1)),
                outcome: Some(CallOutcome::Restricted),
                ring_ms: Some(0),
                ..CallEnd::default()
            };
            spawn_finish(
                self.shared.clone(),
                self.name.clone(),
                record.id,
                req.lead_id,
                req.session_id,
                end,
                Outcome::Restricted,
                None,
                false,
            );
            return Ok(record.id);
        };
        let media = self.media.as_ref().ok_or(CallEngineError::NotConnected)?;
        let handle = media.open_lead_leg().inspect_err(|e| {
            tracing::warn!(agent = %self.name, call = record.id, error = %e, "no media for the lead leg");
        })?;
        let label = self.lead_label(&req, &number).await;
        self.launch_lead(req, record.id, number, handle, anchor, false, grant);
        self.set_label(label);
        Ok(record.id)
    }

    /// Records a dial that did not reach the wire (SPEC §4 audit); the
    /// writer task stores it.
    async fn audit(
        &self,
        req: &DialRequest,
        action: AuditAction,
        reason: AuditReason,
        detail: String,
    ) {
        let entry = AuditEntry {
            id: 0,
            at_ms: epoch_ms(SystemTime::now()),
            action,
            reason,
            session_id: req.session_id,
            lead_id: req.lead_id,
            agent: Some(self.name.clone()),
            number: Some(req.number.clone()),
            detail,
        };
        self.shared.audit.record(entry).await;
    }

    /// The lead's name (when the call is for a lead) and the number, for
    /// the phone's display: read only when `dialer.lead_on_phone` shows it
    /// and the caller did not hand it over (a read per call otherwise).
    async fn lead_label(&self, req: &DialRequest, number: &str) -> String {
        if !self.shared.lead_on_phone {
            return number.to_string();
        }
        match &req.lead {
            Some(l) => label(Some(l.name.clone()), number),
            None => self.lead_label_of(req.lead_id, number).await,
        }
    }

    /// The lead's name (read) and the number.
    async fn lead_label_of(&self, lead_id: Option<i64>, number: &str) -> String {
        let name = match lead_id {
            Some(id) => self.shared.store.get_lead(id).await.ok().map(|l| l.name),
            None => None,
        };
        label(name, number)
    }

    fn set_label(&mut self, label: String) {
        if let Some(l) = &mut self.lead {
            l.label = Some(label);
        }
    }

    /// R17, SPEC §4: a manual call, answered at once ([`CallEngine::place_call`]).
    async fn place(
        &mut self,
        now: Instant,
        req: DialRequest,
        grant: Option<TrunkGrant>,
    ) -> Result<(i64, CallProgress), CallEngineError> {
        if self.lead.is_some() || self.pending.is_some() || self.inbound.is_some() {
            return Err(CallEngineError::Busy);
        }
        let anchor = Anchor::now();
        let Some(grant) = grant else {
            // R11: never on the wire, and no reason to ring the agent for it.
            return self.place_restricted(&req, anchor).await;
        };
        let number = grant.e164.clone();
        // SPEC §4: the list and the lead's mark, asked in one statement.
        let (dnc, lead_dnc) = self
            .shared
            .store
            .dnc_check(&number, req.lead_id)
            .await
            .map_err(|e| CallEngineError::Store(e.to_string()))?;
        if let Some(p) = dnc {
            crate::metrics::metrics().dnc_refused.inc();
            tracing::info!(agent = %self.name, %number, pattern = %p, "manual call refused: on the do-not-call list");
            self.audit(
                &req,
                AuditAction::Refused,
                AuditReason::DoNotCall,
                format!("on the do-not-call list as {p}"),
            )
            .await;
            return Err(CallEngineError::DoNotCall(p.to_string()));
        }
        if let (Some(id), true) = (req.lead_id, lead_dnc) {
            crate::metrics::metrics().dnc_refused.inc();
            tracing::info!(agent = %self.name, lead = id, "manual call refused: the lead is marked do not call");
            self.audit(
                &req,
                AuditAction::Refused,
                AuditReason::LeadDoNotCall,
                "the lead is marked do not call".into(),
            )
            .await;
            return Err(CallEngineError::LeadDoNotCall(id));
        }
        self.retire_ending_agent_leg();
        if self
            .leg
            .as_ref()
            .is_some_and(|l| !l.is_connected() && !l.is_inviting())
        {
            return Err(CallEngineError::AgentLegEnding);
        }
        // Every resource is taken before anything is sent, so a refusal
        // (no phone, no RTP ports) leaves nothing behind.
        let mut fresh = None;
        if self.leg.is_none() {
            let targets = self.agent_targets().await;
            if targets.is_empty() {
                return Err(CallEngineError::NoBinding);
            }
            let (media, media_rx) = self.shared.relay.open_agent().inspect_err(|e| {
                tracing::warn!(agent = %self.name, error = %e, "no media for the agent leg");
            })?;
            fresh = Some((targets, media, media_rx));
        }
        let media = match (&fresh, &self.media) {
            (Some((_, m, _)), _) | (None, Some(m)) => m,
            (None, None) => return Err(CallEngineError::NotConnected),
        };
        let handle = media.open_lead_leg().inspect_err(|e| {
            tracing::warn!(agent = %self.name, error = %e, "no media for the lead leg");
        })?;
        let new = NewCall {
            session_id: req.session_id,
            lead_id: req.lead_id,
            agent: Some(self.name.clone()),
            number: number.clone(),
            started_ms: epoch_ms(anchor.1),
            answered_ms: None,
            ended_ms: None,
            outcome: None,
            sip_status: None,
            ring_ms: None,
            trunk: Some(self.shared.trunks.name(grant.slot.id).to_string()),
        };
        let record = match self.shared.store.insert_call(&new).await {
            Ok(r) => r,
            Err(e) => {
                let _ = media.close_leg(handle.id);
                return Err(CallEngineError::Store(e.to_string()));
            }
        };
        if self.leg.as_ref().is_some_and(|l| l.is_connected()) {
            let label = self.lead_label(&req, &number).await;
            self.launch_lead(req, record.id, number, handle, anchor, true, grant);
            self.set_label(label);
            return Ok((record.id, CallProgress::Dialing));
        }
        if let Some((targets, media, media_rx)) = fresh {
            if let Err(e) = self.dial_agent(now, targets, media, media_rx) {
                finish_not_dialed(&self.shared, &self.name, record.id);
                return Err(e);
            }
        }
        tracing::info!(agent = %self.name, call = record.id, "manual call: calling the agent");
        self.pending = Some(Box::new(PendingCall {
            req,
            record_id: record.id,
            number,
            media: handle,
            grant,
        }));
        set_progress(
            &self.shared,
            &self.name,
            record.id,
            CallProgress::CallingAgent,
        );
        Ok((record.id, CallProgress::CallingAgent))
    }

    /// R11 for a manual call: stored as `restricted` at once.
    async fn place_restricted(
        &mut self,
        req: &DialRequest,
        anchor: Anchor,
    ) -> Result<(i64, CallProgress), CallEngineError> {
        tracing::info!(agent = %self.name, number = %req.number, "number not dialable on the trunk: restricted");
        self.audit(
            req,
            AuditAction::Restricted,
            AuditReason::NotDialable,
            "not a number the trunk may dial".into(),
        )
        .await;
        let at = epoch_ms(anchor.1);
        let new = NewCall {
            session_id: req.session_id,
            lead_id: req.lead_id,
            agent: Some(self.name.clone()),
            number: req.number.clone(),
            started_ms: at,
            answered_ms: None,
            ended_ms: Some(at),
            outcome: Some(CallOutcome::Restricted),
            sip_status: None,
            ring_ms: Some(0),
            trunk: None,
        };
        let record = self
            .shared
            .store
            .insert_call(&new)
            .await
            .map_err(|e| CallEngineError::Store(e.to_string()))?;
        let _ = self.shared.events.send(CallEvent::CallEnded {
            agent: self.name.clone(),
            call_id: record.id,
            lead_id: req.lead_id,
            session_id: req.session_id,
            outcome: Outcome::Restricted,
            sip_status: None,
        });
        Ok((record.id, CallProgress::Ended))
    }

    /// An agent leg that failed or was cancelled only finishes its
    /// signalling (the 487's ACK, Timer D: RFC 3261 §17.1.1.2, up to 32 s
    /// on UDP): it is set aside, its media freed, so a new call can ring
    /// the phone at once.
    fn retire_ending_agent_leg(&mut self) {
        let ending = self
            .leg
            .as_ref()
            .is_some_and(|l| !l.is_connected() && !l.is_inviting() && !l.is_closed());
        if !ending || self.lead.is_some() {
            return;
        }
        if let Some(old) = self.leg.take() {
            self.closing.push(old.into_closing(Instant::now()));
        }
        self.media = None;
        self.media_rx = None;
        self.agent_offer = None;
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(CallEngineError::NotConnected));
        }
    }

    /// Dials the pending manual call once the agent leg is up (R17).
    async fn start_pending(&mut self) {
        if self.pending.is_none() || !self.leg.as_ref().is_some_and(|l| l.is_connected()) {
            return;
        }
        if let Some(p) = self.pending.take() {
            let label = self.lead_label(&p.req, &p.number).await;
            self.launch_lead(
                p.req,
                p.record_id,
                p.number,
                p.media,
                Anchor::now(),
                true,
                p.grant,
            );
            self.set_label(label);
            self.flush().await;
        }
    }

    /// Hung up while the agent's phone rings: the lead is never dialed, the
    /// agent leg is cancelled, and the record's end is stored before the
    /// hang-up is answered.
    async fn hangup_pending(&mut self, now: Instant) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if let Some(media) = &self.media {
            let _ = media.close_leg(p.media.id);
        }
        if let Some(leg) = &mut self.leg {
            if !leg.is_connected() {
                leg.hangup(now);
            }
        }
        tracing::info!(agent = %self.name, call = p.record_id, "manual call hung up before the agent answered");
        let end = CallEnd {
            ended_ms: Some(epoch_ms(SystemTime::now())),
            ..CallEnd::default()
        };
        if let Err(e) = self.shared.store.finish_call(p.record_id, &end).await {
            tracing::error!(error = %e, call_id = p.record_id, "end of an undialed call not stored");
        }
        set_progress(
            &self.shared,
            &self.name,
            p.record_id,
            CallProgress::NotDialed,
        );
    }

    /// The agent leg did not come up: the pending manual call ends
    /// without its lead having been dialed.
    fn abandon_pending(&mut self, why: &str) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if let Some(media) = &self.media {
            let _ = media.close_leg(p.media.id);
        }
        tracing::info!(agent = %self.name, call = p.record_id, reason = why, "manual call ended before the lead was dialed");
        finish_not_dialed(&self.shared, &self.name, p.record_id);
    }

    /// Builds the lead leg on a stored call record and its media (R2, R8),
    /// on the trunk of `grant`.
    #[allow(clippy::too_many_arguments)]
    fn launch_lead(
        &mut self,
        req: DialRequest,
        record_id: i64,
        number: String,
        handle: LegHandle,
        anchor: Anchor,
        manual: bool,
        grant: TrunkGrant,
    ) {
        let ring_timeout = if req.reduced_ring_time {
            self.shared.reduced_ring_timeout
        } else {
            self.shared.ring_timeout
        };
        // The ring timeout counts from here (R8): the INVITE leaves in this
        // loop turn's flush.
        let dialed = self.dial_trunk(
            grant.slot.id,
            &number,
            handle,
            ring_timeout,
            req.caller_id.as_deref(),
        );
        let (leg, offer, caller_id) = match dialed {
            Ok(x) => x,
            Err(e) => {
                if let Some(media) = &self.media {
                    let _ = media.close_leg(handle.id);
                }
                let end = CallEnd {
                    ended_ms: Some(epoch_ms(SystemTime::now())),
                    outcome: Some(CallOutcome::Restricted),
                    ring_ms: Some(0),
                    ..CallEnd::default()
                };
                spawn_finish(
                    self.shared.clone(),
                    self.name.clone(),
                    record_id,
                    req.lead_id,
                    req.session_id,
                    end,
                    Outcome::Restricted,
                    None,
                    manual,
                );
                tracing::warn!(agent = %self.name, error = %e, "lead INVITE not built: restricted");
                return;
            }
        };
        self.route(leg.call_id());
        if let Some(media) = &self.media {
            let _ = media.play_tone();
        }
        tracing::info!(agent = %self.name, call = record_id, sip_call_id = %leg.call_id(), "dialing");
        if manual {
            set_progress(&self.shared, &self.name, record_id, CallProgress::Dialing);
        }
        crate::metrics::metrics().calls_in_progress.inc();
        self.lead = Some(Box::new(LeadCall {
            leg,
            media: handle,
            offer: offer::OurOffer::new(offer),
            record_id,
            lead_id: req.lead_id,
            session_id: req.session_id,
            anchor,
            ringing: false,
            end_reason: None,
            finished: false,
            manual,
            label: None,
            grant,
            number,
            ring_timeout,
            session_caller_id: req.caller_id,
            caller_id,
            amd: req.amd,
            voicemail_drop_id: req.voicemail_drop_id,
            record: req.record,
            amd_verdict: None,
            answered_as: None,
        }));
    }

    /// A lead leg to `number` over `trunk` on the lead media `handle`: our
    /// offer, the trunk as the only host the lead's RTP may come from (SPEC
    /// §5), the INVITE queued.
    fn dial_trunk(
        &mut self,
        trunk: TrunkId,
        number: &str,
        handle: LegHandle,
        ring_timeout: Duration,
        session_caller_id: Option<&str>,
    ) -> Result<(LeadLeg, SessionDescription, String), super::CallError> {
        let shared = self.shared.clone();
        let info = shared
            .trunks
            .info
            .get(trunk.0)
            .ok_or_else(|| super::CallError::BadTrunkUri(trunk.0.to_string()))?;
        if let Some(media) = &self.media {
            let _ = media.set_signalling(handle.id, info.peer.addr.ip());
        }
        let version = self.next_sdp_version();
        let offer = sdp::make_offer(self.shared.media_ip, handle.local_port, version);
        let t = &info.config;
        // Caller ID rules: a pool number local to the lead, else the
        // session's, else the trunk's; a P-Asserted-Identity configured
        // on the trunk asserts the same number.
        let fallback = session_caller_id.unwrap_or(&t.caller_id);
        let caller_id = shared.caller_id_pool.choose(number, fallback).to_string();
        let p_asserted_identity = t.p_asserted_identity.as_ref().map(|pai| {
            if caller_id == t.caller_id {
                pai.clone()
            } else {
                caller_id.clone()
            }
        });
        let params = LeadParams {
            trunk: info.peer,
            trunk_uri: t.uri.clone(),
            number: number.to_string(),
            caller_id: caller_id.clone(),
            p_asserted_identity,
            credentials: t.username.clone().zip(t.password.clone()),
            local: self.shared.local.clone(),
            offer_sdp: offer.to_bytes(),
            ring_timeout,
            response_timeout: Some(t.response_timeout.0),
            max_call_length: self.shared.max_call_length,
            timers: self.shared.timers,
            session_expires: (t.session_expires > 0)
                .then(|| Duration::from_secs(u64::from(t.session_expires))),
            keepalive: t.keepalive(),
        };
        let leg = LeadLeg::dial(Instant::now(), params, &mut self.rng)?;
        crate::metrics::metrics()
            .trunk_attempts
            .get_or_create(&shared.trunks.label(trunk))
            .inc();
        Ok((leg, offer, caller_id))
    }

    /// The trunk failed the INVITE before the lead's phone could ring
    /// (transport error, no response, 408, 5xx: [`LeadLeg::may_fail_over`]):
    /// the same call goes to the next trunk not tried yet that is up and
    /// within its limits. Returns whether it did; the failed leg finishes
    /// its signalling among the closing legs.
    fn fail_over(&mut self) -> bool {
        if self.drain_deadline.is_some() {
            return false;
        }
        let Some(mut l) = self.lead.take() else {
            return false;
        };
        let trunks = self.shared.trunks.clone();
        let from = l.grant.slot.id;
        let next = if l.leg.may_fail_over() {
            trunks
                .lock()
                .acquire(&l.grant.order, &l.grant.tried, Instant::now())
                .ok()
        } else {
            None
        };
        let Some(next) = next else {
            self.lead = Some(l);
            return false;
        };
        let slot = TrunkSlot::new(trunks.clone(), next);
        l.grant.tried.push(next);
        let dialed = self.dial_trunk(
            next,
            &l.number,
            l.media,
            l.ring_timeout,
            l.session_caller_id.as_deref(),
        );
        match dialed {
            Ok((leg, offer, caller_id)) => {
                crate::metrics::metrics()
                    .trunk_failovers
                    .get_or_create(&trunks.label(from))
                    .inc();
                tracing::info!(
                    agent = %self.name,
                    call = l.record_id,
                    from = %trunks.name(from),
                    to = %trunks.name(next),
                    failure = ?l.leg.trunk_failure(),
                    "the trunk failed the call before the lead was reached: trying the next trunk"
                );
                self.route(leg.call_id());
                let old = std::mem::replace(&mut l.leg, leg);
                self.closing.push(old.into_closing(Instant::now()));
                l.offer = offer::OurOffer::new(offer);
                l.caller_id = caller_id;
                l.grant.slot = slot;
                self.lead = Some(l);
                true
            }
            Err(error) => {
                tracing::warn!(agent = %self.name, %error, trunk = %trunks.name(next), "INVITE to the next trunk not built");
                self.lead = Some(l);
                false
            }
        }
    }

    /// Sends what the legs queued and handles what they reported, until
    /// both are quiet (an event can queue messages: a BYE, a CANCEL).
    async fn flush(&mut self) {
        loop {
            let mut busy = false;
            // Events first: an answer is bridged before its ACK is sent.
            while let Some(ev) = self.lead.as_mut().and_then(|l| l.leg.poll_event()) {
                busy = true;
                self.on_lead_event(ev);
            }
            while let Some(ev) = self.leg.as_mut().and_then(|l| l.poll_event()) {
                busy = true;
                self.on_agent_event(ev);
            }
            busy |= self.inbound_events();
            busy |= self.dropping_events();
            let mut out: Vec<Transmit> = Vec::new();
            for d in &mut self.dropping {
                while let Some(t) = d.call.leg.poll_transmit() {
                    out.push(t);
                }
            }
            if let Some(l) = &mut self.lead {
                while let Some(t) = l.leg.poll_transmit() {
                    out.push(t);
                }
            }
            if let Some(i) = &mut self.inbound {
                while let Some(t) = i.call.leg.poll_transmit() {
                    out.push(t);
                }
            }
            if let Some(l) = &mut self.leg {
                while let Some(t) = l.poll_transmit() {
                    out.push(t);
                }
            }
            for call_id in self.closing.drain(&mut out) {
                self.unroute(&call_id);
            }
            for t in out {
                busy = true;
                if let SipMessage::Request(r) = &t.message {
                    // Wire times of our requests: the ring-timeout check
                    // (INVITE → CANCEL, R8) reads them from the log.
                    tracing::debug!(
                        method = %r.method,
                        sip_call_id = %header_call_id(r.headers.iter()).unwrap_or_default(),
                        peer = %t.peer,
                        "SIP out"
                    );
                }
                let bytes = Bytes::from(crate::sip::message::to_wire(&t.message));
                if let Err(e) = self.shared.transport.send(t.peer, bytes).await {
                    // RFC 3261 §17.1.4: the transactions with that peer
                    // learn of it (an INVITE ends temporary_error, R10); the
                    // events are handled in this loop's next turn.
                    tracing::info!(agent = %self.name, error = %e, peer = %t.peer, "SIP send failed: reported to the call legs");
                    self.on_peer_unreachable(Instant::now(), t.peer);
                }
            }
            if !busy {
                self.sync_journal();
                return;
            }
        }
    }

    /// Hands the leg journal what changed since the last turn (a new
    /// INVITE, an answer, a leg that ended), so a crash leaves enough to
    /// end every live leg (`call::leg_journal`). The lead leg's row is
    /// removed by its outcome write ([`spawn_finish_forgetting`]), so a
    /// crash between the two still ends the call and records it. Never
    /// waits: what the writer has no room for is held and handed over on a
    /// later turn ([`Unsent`]).
    fn sync_journal(&mut self) {
        let lead = self.lead.as_ref().map(|l| LeadJournal {
            leg: &l.leg,
            record_id: l.record_id,
            answered_ms: l.leg.record().answered.map(|a| l.anchor.ms(a)),
        });
        let changes = self
            .journaled
            .changes(&self.name, lead, self.leg.as_deref());
        if changes.is_empty() && self.unsent.is_empty() {
            return;
        }
        self.unsent.send(&self.shared.journal, changes);
        let now = Instant::now();
        self.unsent_retry = match self.unsent_retry {
            _ if self.unsent.is_empty() => None,
            // A retry already set stands (new changes do not push it back).
            Some(t) if t > now => Some(t),
            _ => Some(now + self.unsent.next_delay()),
        };
    }

    /// The transport could not reach `peer`: a send failed at once, or
    /// failed later (an ICMP error for a UDP datagram, a refused or reset
    /// TCP connection; RFC 3261 §18.4). Every leg's transactions with that
    /// peer are told (§17.1.4), e.g. a trunk's INVITE ends as
    /// `temporary_error` (R10); legs with none are unaffected.
    fn on_peer_unreachable(&mut self, now: Instant, peer: Peer) {
        if let Some(l) = &mut self.lead {
            l.leg.handle_transport_error(now, peer);
        }
        if let Some(i) = &mut self.inbound {
            i.call.leg.handle_transport_error(now, peer);
        }
        if let Some(leg) = &mut self.leg {
            leg.handle_transport_error(now, peer);
        }
        self.closing.handle_transport_error(now, peer);
    }

    fn on_lead_event(&mut self, ev: LeadEvent) {
        let Some(l) = &mut self.lead else { return };
        let agent = self.name.clone();
        match ev {
            LeadEvent::Ringing { .. } => {
                if !l.ringing {
                    l.ringing = true;
                    if l.manual {
                        set_progress(&self.shared, &agent, l.record_id, CallProgress::Ringing);
                    }
                    let _ = self.shared.events.send(CallEvent::LeadRinging {
                        agent,
                        call_id: l.record_id,
                    });
                }
            }
            LeadEvent::EarlyMedia { sdp } => {
                if let (Some(media), Ok(neg)) = (&self.media, l.offer.negotiate(&sdp)) {
                    let _ = media.set_remote(l.media.id, neg);
                }
            }
            LeadEvent::Answered { sdp } => {
                // SPEC §1 step 4, §6: switch the agent's media in the same step.
                if let Some(media) = &self.media {
                    match l.offer.negotiate(&sdp) {
                        Ok(neg) => {
                            let _ = media.set_remote(l.media.id, neg);
                            if l.record {
                                let tx = recording::spawn_recorder(
                                    &self.shared,
                                    l.record_id,
                                    Instant::now(),
                                );
                                let _ = media.record(l.media.id, tx);
                            }
                            if l.amd != AmdMode::Off {
                                // SPEC §4 `amd`: the detector listens from
                                // the answer; in the routing modes the relay
                                // bridges a human itself, with no round trip
                                // through this task.
                                let _ = media.start_amd(
                                    l.media.id,
                                    AmdConfig::default(),
                                    l.amd.holds_bridge(),
                                );
                            }
                            if !l.amd.holds_bridge() {
                                let _ = media.bridge(l.media.id);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(agent = %agent, error = %e, "unusable SDP answer from the trunk")
                        }
                    }
                }
                // From here on a re-INVITE only needs the offer's bytes;
                // printed after the bridge is on its way (SPEC §6 answer →
                // bridge).
                l.offer.answered();
                // The record shows the answer at once (GET /api/v1/calls/{id}).
                let answered_ms = l.leg.record().answered.map(|a| l.anchor.ms(a));
                let trunk = self.shared.trunks.name(l.grant.slot.id).to_string();
                self.shared.records.finish_soon(
                    l.record_id,
                    CallEnd {
                        answered_ms,
                        trunk: Some(trunk),
                        caller_id: Some(l.caller_id.clone()),
                        ..CallEnd::default()
                    },
                );
                if l.manual {
                    set_progress(&self.shared, &agent, l.record_id, CallProgress::Answered);
                }
                // The phone shows whom the agent is now talking to.
                if let (true, Some(label), Some(leg)) =
                    (self.shared.lead_on_phone, &l.label, &mut self.leg)
                {
                    leg.send_text(Instant::now(), &format!("Connected: {label}"));
                }
                let _ = self.shared.events.send(CallEvent::LeadAnswered {
                    agent,
                    call_id: l.record_id,
                });
            }
            LeadEvent::ReInvite { offer } => {
                let version = self.next_sdp_version();
                let Some(l) = &mut self.lead else { return };
                let body = reinvite_answer(
                    self.shared.media_ip,
                    l.media,
                    &l.offer,
                    offer.as_deref(),
                    version,
                    self.media.as_ref(),
                    // The lead side stays plain RTP.
                    None,
                );
                if let Err(e) = l.leg.answer_reinvite(Instant::now(), &body) {
                    tracing::debug!(error = %e, "re-INVITE not answered");
                }
            }
            LeadEvent::Ended { reason } => {
                l.end_reason = Some(reason);
                self.finish_lead(false);
            }
            LeadEvent::Unanswered { .. } => {
                if !self.fail_over() {
                    self.finish_lead(false);
                }
            }
            LeadEvent::Closed { .. } => self.finish_lead(true),
        }
    }

    /// Stores the outcome once, frees the dial slot and the lead media; a
    /// leg with signalling left moves to `closing`.
    fn finish_lead(&mut self, closed: bool) {
        let Some(mut l) = self.lead.take() else {
            return;
        };
        if !l.finished {
            l.finished = true;
            let outcome = match (l.leg.outcome(), l.answered_as) {
                (Some(Outcome::Answered), Some(o)) => o,
                (o, _) => o.unwrap_or(Outcome::TemporaryError),
            };
            crate::metrics::metrics().calls_in_progress.dec();
            let r: LegRecord = *l.leg.record();
            let end = CallEnd {
                answered_ms: r.answered.map(|a| l.anchor.ms(a)),
                ended_ms: Some(l.anchor.ms(r.ended.unwrap_or_else(Instant::now))),
                outcome: Some(outcome),
                sip_status: r.sip_status,
                ring_ms: r
                    .ring_duration
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                trunk: Some(self.shared.trunks.name(l.grant.slot.id).to_string()),
                caller_id: Some(l.caller_id.clone()),
                ..CallEnd::default()
            };
            let reason = l.end_reason.map_or("unanswered", EndReason::as_str);
            tracing::info!(agent = %self.name, call = l.record_id, %outcome, %reason, status = ?r.sip_status, "call ended");
            let journaled = self.journaled.forget(l.leg.call_id());
            self.unsent.forget(l.leg.call_id());
            spawn_finish_forgetting(
                journaled,
                self.shared.clone(),
                self.name.clone(),
                l.record_id,
                l.lead_id,
                l.session_id,
                end,
                outcome,
                r.sip_status,
                l.manual,
            );
        }
        if let Some(media) = &self.media {
            let _ = media.unbridge();
            let _ = media.close_leg(l.media.id);
        }
        if closed || l.leg.is_closed() {
            self.unroute(l.leg.call_id());
        } else {
            self.closing.push(l.leg.into_closing(Instant::now()));
        }
    }

    /// Starts SRTP on the agent leg when we offered a key and the phone's
    /// answer carries one (RFC 4568 §7.1.2). False when SRTP is mandatory
    /// and the answer has no key: the leg must not go on in clear.
    fn start_srtp(&self, answer: &[u8]) -> bool {
        let Some((ours, mandatory)) = &self.agent_key else {
            return true;
        };
        let theirs = SessionDescription::parse(answer)
            .ok()
            .and_then(|a| crate::media::sdes::key_of(&a));
        match (theirs, &self.media) {
            (Some((_, theirs)), Some(media)) => {
                tracing::info!(agent = %self.name, "SRTP on the agent leg");
                let _ = media.set_srtp(ours.clone(), theirs);
                true
            }
            _ => !mandatory,
        }
    }

    fn on_agent_event(&mut self, ev: AgentEvent) {
        let now = Instant::now();
        match ev {
            AgentEvent::Ringing => {}
            AgentEvent::Connected { sdp } => {
                // SRTP before the remote: the relay sends generated frames
                // to the phone as soon as it knows where, and the first
                // must already be protected (RFC 3711; as on a re-INVITE).
                if !self.start_srtp(&sdp) {
                    tracing::warn!(agent = %self.name, "the phone answered without an SRTP key and security.srtp is \"required\": hanging up");
                    if let Some(leg) = &mut self.leg {
                        leg.hangup(now);
                    }
                    return;
                }
                if let (Some(media), Some(offer)) = (&self.media, &self.agent_offer) {
                    match offer.negotiate(&sdp) {
                        Ok(neg) => {
                            // SPEC §5: behind NAT the phone's RTP comes from
                            // its SIP source; no other host may latch.
                            if let Some(peer) = self.leg.as_ref().and_then(|l| l.connected_peer()) {
                                let _ = media.set_signalling(media.agent_leg().id, peer.addr.ip());
                            }
                            let _ = media.set_remote(media.agent_leg().id, neg);
                        }
                        Err(e) => {
                            tracing::warn!(agent = %self.name, error = %e, "unusable SDP answer from the phone")
                        }
                    }
                }
                // From here on a re-INVITE only needs the offer's bytes.
                if let Some(offer) = &mut self.agent_offer {
                    offer.answered();
                }
                for w in self.waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                self.answer_inbound(now);
                tracing::info!(agent = %self.name, "agent leg connected");
                let _ = self.shared.events.send(CallEvent::AgentConnected {
                    agent: self.name.clone(),
                });
            }
            AgentEvent::Failed { status } => {
                self.inbound_agent_gone(now);
                self.abandon_pending(&match status {
                    Some(s) => format!("the agent's phone declined ({s})"),
                    None => "the agent's phone did not answer".to_string(),
                });
                let err = match status {
                    Some(s) => CallEngineError::Declined(s),
                    None => CallEngineError::Timeout,
                };
                for w in self.waiters.drain(..) {
                    let _ = w.send(Err(err.clone()));
                }
                let _ = self.shared.events.send(CallEvent::AgentDisconnected {
                    agent: self.name.clone(),
                });
            }
            AgentEvent::ReInvite { offer } => {
                let version = self.next_sdp_version();
                if let (Some(media), Some(our)) = (&self.media, &self.agent_offer) {
                    let body = reinvite_answer(
                        self.shared.media_ip,
                        media.agent_leg(),
                        our,
                        offer.as_deref(),
                        version,
                        Some(media),
                        self.agent_key.as_ref().map(|(k, _)| k),
                    );
                    if let Some(leg) = &mut self.leg {
                        if let Err(e) = leg.answer_reinvite(now, &body) {
                            tracing::debug!(error = %e, "re-INVITE not answered");
                        }
                    }
                }
            }
            AgentEvent::Dtmf(d) => self.on_digit(now, d),
            AgentEvent::Ended { reason } => {
                tracing::info!(agent = %self.name, %reason, "agent leg ended");
                // R9: a ringing lead is skipped, an answered one hung up.
                if let Some(l) = &mut self.lead {
                    l.leg.hangup(now);
                }
                self.hangup_inbound(now);
                let _ = self.shared.events.send(CallEvent::AgentDisconnected {
                    agent: self.name.clone(),
                });
            }
            AgentEvent::Closed => {
                self.abandon_pending("the agent leg ended");
                self.inbound_agent_gone(now);
                if let Some(leg) = self.leg.take() {
                    self.unroute(leg.call_id());
                }
                if self.lead.is_none() && self.inbound.is_none() && self.dropping.is_empty() {
                    self.media = None;
                    self.media_rx = None;
                }
                self.agent_offer = None;
                self.agent_key = None;
                for w in self.waiters.drain(..) {
                    let _ = w.send(Err(CallEngineError::NotConnected));
                }
            }
        }
    }
}

/// The Call-ID header's value, by name (long or compact form).
fn header_call_id<'a>(
    mut headers: impl Iterator<Item = &'a crate::sip::syntax::Header>,
) -> Option<String> {
    headers.find_map(|h| match h {
        crate::sip::syntax::Header::CallId(c) => Some(c.value().to_string()),
        _ => None,
    })
}

/// Our answer to a re-INVITE (RFC 3264 §8): to an offer, our answer on the
/// same port (and the relay follows the new remote); without one, our offer.
fn reinvite_answer(
    media_ip: IpAddr,
    leg: LegHandle,
    our_offer: &offer::OurOffer,
    offer: Option<&[u8]>,
    version: u64,
    media: Option<&AgentMedia>,
    srtp_key: Option<&crate::media::srtp::MasterKey>,
) -> Vec<u8> {
    let Some(offer) = offer else {
        return our_offer.to_bytes();
    };
    match SessionDescription::parse(offer)
        .map_err(|e| e.to_string())
        .and_then(|o| {
            sdp::answer(&o, media_ip, leg.local_port, version)
                .map(|a| (o, a))
                .map_err(|e| e.to_string())
        }) {
        Ok((o, mut a)) => {
            // SRTP goes on with our same key; the phone may have re-keyed.
            if let Some(ours) = srtp_key {
                if let Some(theirs) = crate::media::sdes::answer_offer(&o, &mut a.sdp, ours) {
                    if let Some(m) = media {
                        let _ = m.set_srtp(ours.clone(), theirs);
                    }
                }
            }
            if let Some(m) = media {
                let _ = m.set_remote(leg.id, a.negotiated);
            }
            a.sdp.to_bytes()
        }
        Err(e) => {
            tracing::debug!(error = %e, "re-INVITE offer unusable; answering with our offer");
            our_offer.to_bytes()
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_finish(
    shared: Arc<Shared>,
    agent: String,
    call_id: i64,
    lead_id: Option<i64>,
    session_id: Option<i64>,
    end: CallEnd,
    outcome: Outcome,
    sip_status: Option<u16>,
    manual: bool,
) {
    spawn_finish_forgetting(
        Vec::new(),
        shared,
        agent,
        call_id,
        lead_id,
        session_id,
        end,
        outcome,
        sip_status,
        manual,
    );
}

/// Stores a call's outcome, then removes its lead leg's journal row
/// (`journaled`, its keys) and publishes `CallEnded`.
#[allow(clippy::too_many_arguments)]
fn spawn_finish_forgetting(
    journaled: Vec<LegKey>,
    shared: Arc<Shared>,
    agent: String,
    call_id: i64,
    lead_id: Option<i64>,
    session_id: Option<i64>,
    end: CallEnd,
    outcome: Outcome,
    sip_status: Option<u16>,
    manual: bool,
) {
    let m = crate::metrics::metrics();
    m.calls
        .get_or_create(&crate::metrics::OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
    if let Some(ms) = end.ring_ms {
        m.ring_seconds.observe(ms as f64 / 1000.0);
    }
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        if let Err(e) = shared.records.finish(call_id, end).await {
            tracing::error!(error = %e, call_id, "call outcome not stored");
        }
        for key in journaled {
            shared.journal.send(LegChange::Remove(key)).await;
        }
        if manual {
            set_progress(&shared, &agent, call_id, CallProgress::Ended);
        }
        let _ = shared.events.send(CallEvent::CallEnded {
            agent,
            call_id,
            lead_id,
            session_id,
            outcome,
            sip_status,
        });
    });
}

/// Records and publishes a manual call's progress (SPEC §4); a final
/// state removes it from the table, the stored record then tells it.
/// "name number", or the number alone for a lead with no name.
fn label(name: Option<String>, number: &str) -> String {
    match name.filter(|n| !n.trim().is_empty()) {
        Some(n) => format!("{n} {number}"),
        None => number.to_string(),
    }
}

fn set_progress(shared: &Shared, agent: &str, call_id: i64, state: CallProgress) {
    {
        let mut table = shared
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state {
            CallProgress::Ended | CallProgress::NotDialed => table.remove(&call_id),
            live => table.insert(call_id, live),
        };
    }
    let _ = shared.events.send(CallEvent::CallProgress {
        agent: agent.to_string(),
        call_id,
        state,
    });
}

/// Stores the end of a manual call whose lead was never dialed: `ended_at`
/// and no outcome (none of R8–R12 happened).
fn finish_not_dialed(shared: &Arc<Shared>, agent: &str, call_id: i64) {
    let shared = shared.clone();
    let agent = agent.to_string();
    tokio::spawn(async move {
        let end = CallEnd {
            ended_ms: Some(epoch_ms(SystemTime::now())),
            ..CallEnd::default()
        };
        if let Err(e) = shared.store.finish_call(call_id, &end).await {
            tracing::error!(error = %e, call_id, "end of an undialed call not stored");
        }
        set_progress(&shared, &agent, call_id, CallProgress::NotDialed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_peers() {
        let p = trunk_peer("sip:127.0.0.1:5080").expect("peer");
        assert_eq!(p.addr, "127.0.0.1:5080".parse().expect("addr"));
        assert_eq!(p.transport, TransportKind::Udp);
        let p = trunk_peer("sip:gw@10.0.0.2;transport=tcp").expect("peer");
        assert_eq!(p.addr, "10.0.0.2:5060".parse().expect("addr"));
        assert_eq!(p.transport, TransportKind::Tcp);
        assert!(trunk_peer("sip:carrier.example.com").is_none());
    }

    #[test]
    fn anchor_maps_instants() {
        let a = Anchor(
            Instant::now(),
            std::time::UNIX_EPOCH + Duration::from_secs(10),
        );
        assert_eq!(a.ms(a.0 + Duration::from_millis(250)), 10_250);
        assert_eq!(a.ms(a.0), 10_000);
    }

    /// SPEC §6 memory: an agent's command and SIP channels allocate their
    /// slots by blocks of 32, sized by the message type; one large variant
    /// would make every agent pay for it.
    #[test]
    fn channel_messages_stay_small() {
        assert!(
            std::mem::size_of::<Command>() <= 64,
            "Command is {} bytes",
            std::mem::size_of::<Command>()
        );
        assert!(
            std::mem::size_of::<RoutedMessage>() <= 64,
            "RoutedMessage is {} bytes",
            std::mem::size_of::<RoutedMessage>()
        );
    }
}
