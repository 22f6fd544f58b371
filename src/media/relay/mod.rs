//! The RTP relay driver: one event loop per core (a "shard", [`shard`]),
//! each an OS thread with its own `epoll` instance that owns the sockets
//! and the [`AgentMediaCore`]s of the agents placed on it, as rtpengine's
//! worker threads own theirs.
//!
//! Why not a tokio task per agent (the relay's first driver): callgrind
//! counted 35 % of the user-space instructions per relayed packet in
//! tokio's scheduler and I/O driver and 19 % in the task's readiness polls
//! and command channel, against 22 % for the packet itself (BENCHMARKS.md,
//! "RTP relay side by side with rtpengine"); a wake-up on a multi-thread
//! runtime also costs cross-thread unparks. A shard's loop is one
//! `epoll_wait` for every ready socket of its calls and a timer heap.
//! `epoll` and `eventfd` are called through `libc`, which the relay already
//! uses for `recvmmsg`/`sendmmsg`; `mio` would serve as well, but adds a
//! dependency for a few dozen lines of system calls.
//!
//! Hot path (SPEC §6): a wake-up reads each ready socket's datagrams with
//! one `recvmmsg` into the shard's buffers, the core rewrites each in
//! place, and what one read relays leaves in one `sendmmsg` from the out
//! leg's socket (symmetric RTP: we send from the port we advertised).
//! Nothing is queued in the relay: the kernel's socket buffers are the
//! bounded queue of each socket, a full send buffer drops the packet as a
//! router would, and a socket is read at most [`DRAIN_BATCH`] datagrams per
//! turn of its loop (the rest in the next turn), so one flooded call cannot
//! hold up the others. No allocation per packet.
//!
//! Order (DESIGN "Order and sharding"): an agent's legs (its nailed-up
//! leg and each lead leg) live on one shard, so a call's packets and its
//! commands are handled by one thread in order. Commands (bridge, …)
//! arrive on a channel the loop drains after every `epoll_wait` before it
//! reads any socket, so a bridge applies before the next lead packet is
//! read. Each call's next deadline (the core's `poll_timeout`: 20 ms
//! generated frames while the beep sounds and for a short hangover after
//! what the agent last heard, then a silence keep-alive a second
//! ([`core::KEEP_ALIVE`]); RTP timeouts; detection windows) sits in the
//! shard's timer heap.

pub mod core;
mod events;
mod shard;

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

pub use self::core::{
    AgentMediaCore, CoreConfig, CoreError, Forward, HandOff, LegId, MediaEvent, Side, StreamSeed,
};
pub use self::events::MediaEvents;
use crate::config::PortRange;
use crate::media::amd::AmdConfig;
use crate::media::port::{PortError, PortLease, PortPool, SharedPortPool};
use crate::media::sdp::Negotiated;
use crate::media::srtp::{MasterKey, SrtpReceiver, SrtpSender};
use crate::media::voicemail::{DropConfig, DropPlayer};

/// Settings of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address the RTP sockets bind to (`server.media_ip`; `0.0.0.0` when the
    /// SDP address is a NAT's public address).
    pub bind_ip: IpAddr,
    /// `server.rtp_ports`.
    pub ports: PortRange,
    /// Beep length, RTP timeout, control digits.
    pub core: CoreConfig,
    /// `SO_RCVBUF`/`SO_SNDBUF` of RTP sockets (DESIGN.md: large buffers so
    /// bursts are not dropped before we read them).
    pub socket_buffer: usize,
}

impl RelayConfig {
    /// The relay settings of a server configuration (`dialer.rtp_timeout`
    /// included).
    pub fn from_config(c: &crate::config::Config) -> Self {
        RelayConfig {
            bind_ip: c.media_ip,
            ports: c.rtp_ports,
            core: CoreConfig {
                rtp_timeout: c.dialer.rtp_timeout.0,
                ..CoreConfig::default()
            },
            socket_buffer: 1 << 20,
        }
    }
}

/// Why a media operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// No free RTP port pair.
    #[error(transparent)]
    Ports(#[from] PortError),
    /// A socket could not be bound.
    #[error("binding RTP port {port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// The OS error.
        source: io::Error,
    },
    /// Every port tried was taken by another process.
    #[error("no bindable RTP port pair after {0} tries")]
    NoBindablePort(usize),
    /// The agent's media shard has ended.
    #[error("media task closed")]
    Closed,
    /// A relay event loop could not be started (its `epoll`, `eventfd` or
    /// thread).
    #[error("starting a relay event loop: {0}")]
    EventLoop(#[source] io::Error),
    /// Called outside a tokio runtime where the work needs one (a
    /// voicemail drop runs as a task of its own).
    #[error("not inside a tokio runtime")]
    NoRuntime,
}

/// A media leg as the call layer sees it: its id and the port for the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegHandle {
    /// Id for commands and events.
    pub id: LegId,
    /// Local RTP port (RTCP is `local_port + 1`), for `make_offer`/`answer`.
    pub local_port: u16,
}

/// A leg's RTP and RTCP sockets (non-blocking, owned by a shard's loop
/// once the leg is attached) and the lease of their ports.
struct LegSockets {
    rtp: StdUdpSocket,
    rtcp: StdUdpSocket,
    _lease: PortLease,
}

enum Command {
    SetRemote(LegId, Negotiated),
    SetSignalling(LegId, IpAddr),
    AttachLead {
        id: LegId,
        sockets: LegSockets,
        seed: StreamSeed,
    },
    CloseLeg(LegId),
    PlayTone,
    Bridge(LegId),
    StartAmd {
        lead: LegId,
        cfg: AmdConfig,
        hold: bool,
    },
    Record(LegId, mpsc::Sender<crate::media::recording::TapFrame>),
    Drop {
        lead: LegId,
        message: Arc<[i16]>,
        cfg: DropConfig,
        stop: oneshot::Receiver<()>,
        /// Where the drop's task runs (the caller's runtime).
        runtime: tokio::runtime::Handle,
    },
    Unbridge,
    Srtp {
        ours: MasterKey,
        theirs: MasterKey,
    },
}

struct Inner {
    cfg: RelayConfig,
    pool: SharedPortPool,
    next_leg: AtomicU64,
    shards: Vec<Arc<shard::Shard>>,
}

/// The media relay: places agents' media on its event loops over a shared
/// port pool.
#[derive(Clone)]
pub struct MediaRelay {
    inner: Arc<Inner>,
}

fn bind_udp(ip: IpAddr, port: u16, buffer: usize) -> io::Result<StdUdpSocket> {
    let addr = SocketAddr::new(ip, port);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn random_seed() -> StreamSeed {
    StreamSeed {
        ssrc: rand::random(),
        seq: rand::random(),
        timestamp: rand::random(),
    }
}

const BIND_TRIES: usize = 16;

impl MediaRelay {
    /// A relay over `cfg.ports` with one event loop per core (SPEC §6: the
    /// relay on as many cores as there are).
    pub fn new(cfg: RelayConfig) -> Result<Self, MediaError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(cfg, cores)
    }

    /// A relay over `cfg.ports` with `threads` event loops (at least one),
    /// each a thread named `rtp-relay-N`.
    pub fn with_threads(cfg: RelayConfig, threads: usize) -> Result<Self, MediaError> {
        let pool = SharedPortPool::new(PortPool::new(cfg.ports)?);
        let shards = (0..threads.max(1))
            .map(|i| shard::Shard::spawn(format!("rtp-relay-{i}")).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()
            .map_err(MediaError::EventLoop)?;
        Ok(MediaRelay {
            inner: Arc::new(Inner {
                cfg,
                pool,
                next_leg: AtomicU64::new(1),
                shards,
            }),
        })
    }

    /// Free RTP port pairs.
    pub fn free_port_pairs(&self) -> usize {
        self.inner.pool.available()
    }

    fn open_sockets(&self) -> Result<(LegHandle, LegSockets), MediaError> {
        let cfg = &self.inner.cfg;
        for _ in 0..BIND_TRIES {
            let lease = self.inner.pool.lease()?;
            let port = lease.port();
            let bound = bind_udp(cfg.bind_ip, port, cfg.socket_buffer)
                .and_then(|rtp| Ok((rtp, bind_udp(cfg.bind_ip, port + 1, 64 * 1024)?)));
            match bound {
                Ok((rtp, rtcp)) => {
                    let id = LegId(self.inner.next_leg.fetch_add(1, Ordering::Relaxed));
                    return Ok((
                        LegHandle {
                            id,
                            local_port: port,
                        },
                        LegSockets {
                            rtp,
                            rtcp,
                            _lease: lease,
                        },
                    ));
                }
                // Another process holds it: the lease goes to the back of the
                // pool and we try the next pair.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(source) => return Err(MediaError::Bind { port, source }),
            }
        }
        Err(MediaError::NoBindablePort(BIND_TRIES))
    }

    /// Opens an agent's nailed-up media leg on the least loaded event loop.
    /// Events of the agent's legs come on the returned [`MediaEvents`];
    /// dropping the returned [`AgentMedia`] ends its media and frees its
    /// ports.
    pub fn open_agent(&self) -> Result<(AgentMedia, MediaEvents), MediaError> {
        let (agent, sockets) = self.open_sockets()?;
        let (ev_tx, ev_rx) = events::queue();
        let core = AgentMediaCore::new(self.inner.cfg.core.clone(), agent.id, random_seed());
        let shard = self
            .inner
            .shards
            .iter()
            .min_by_key(|s| s.agents())
            .ok_or(MediaError::Closed)?
            .clone();
        shard
            .send(shard::Msg::Open {
                agent: agent.id,
                core: Box::new(core),
                sockets,
                events: ev_tx,
            })
            .map_err(|()| MediaError::Closed)?;
        Ok((
            AgentMedia {
                shard,
                agent,
                relay: self.clone(),
            },
            ev_rx,
        ))
    }
}

/// A UDP socket on a leased port pair of the relay's pool (RTCP's port
/// bound too, so nothing else takes it): the browser phone's one socket
/// for ICE, DTLS and SRTP (RFC 8834 §4.4 multiplexes them on one port).
pub struct LeasedSocket {
    /// The socket.
    pub socket: UdpSocket,
    /// Its local port.
    pub port: u16,
    _rtcp: StdUdpSocket,
    _lease: PortLease,
}

impl MediaRelay {
    /// Leases a port pair from the pool and binds it on `server.media_ip`
    /// (needs a tokio runtime: the socket is a tokio one).
    pub fn lease_socket(&self) -> Result<LeasedSocket, MediaError> {
        let (h, s) = self.open_sockets()?;
        let socket = UdpSocket::from_std(s.rtp).map_err(|source| MediaError::Bind {
            port: h.local_port,
            source,
        })?;
        Ok(LeasedSocket {
            socket,
            port: h.local_port,
            _rtcp: s.rtcp,
            _lease: s._lease,
        })
    }
}

/// Control of one agent's media (SPEC §1 steps 2–5).
pub struct AgentMedia {
    shard: Arc<shard::Shard>,
    agent: LegHandle,
    relay: MediaRelay,
}

impl Drop for AgentMedia {
    fn drop(&mut self) {
        // The loop may already be gone (relay shut down): nothing to free then.
        let _ = self.shard.send(shard::Msg::Close(self.agent.id));
    }
}

impl AgentMedia {
    /// The agent leg.
    pub fn agent_leg(&self) -> LegHandle {
        self.agent
    }

    fn send(&self, c: Command) -> Result<(), MediaError> {
        self.shard
            .send(shard::Msg::Command(self.agent.id, c))
            .map_err(|()| MediaError::Closed)
    }

    /// Opens the lead leg of a new dial (its ports are bound now, so the
    /// offer can name them); it replaces and closes any previous lead leg.
    pub fn open_lead_leg(&self) -> Result<LegHandle, MediaError> {
        let (h, sockets) = self.relay.open_sockets()?;
        self.send(Command::AttachLead {
            id: h.id,
            sockets,
            seed: random_seed(),
        })?;
        Ok(h)
    }

    /// Applies an offer/answer result to a leg (RFC 3264).
    pub fn set_remote(&self, leg: LegId, neg: Negotiated) -> Result<(), MediaError> {
        self.send(Command::SetRemote(leg, neg))
    }

    /// The host the leg's peer signals from: with its SDP's host, the only
    /// one whose RTP may latch the leg (SPEC §5; behind NAT the phone's RTP
    /// comes from its SIP source, not from its SDP address).
    pub fn set_signalling(&self, leg: LegId, host: IpAddr) -> Result<(), MediaError> {
        self.send(Command::SetSignalling(leg, host))
    }

    /// Starts the dial-start beep towards the agent.
    pub fn play_tone(&self) -> Result<(), MediaError> {
        self.send(Command::PlayTone)
    }

    /// Connects the agent and the lead in one step (SPEC §1 step 4, §6).
    pub fn bridge(&self, lead: LegId) -> Result<(), MediaError> {
        self.send(Command::Bridge(lead))
    }

    /// Starts answering-machine detection on the lead leg at its answer
    /// (SPEC §4 `amd`); with `hold` the core bridges the agent itself once
    /// the verdict is human or not sure, else call [`Self::bridge`] as
    /// usual. The verdict comes as [`MediaEvent::Amd`].
    pub fn start_amd(&self, lead: LegId, cfg: AmdConfig, hold: bool) -> Result<(), MediaError> {
        self.send(Command::StartAmd { lead, cfg, hold })
    }

    /// Records the lead call from now (SPEC §4 `record`): relayed audio
    /// frames go to `tx` (never waiting); the channel closes with the lead
    /// leg.
    pub fn record(
        &self,
        lead: LegId,
        tx: mpsc::Sender<crate::media::recording::TapFrame>,
    ) -> Result<(), MediaError> {
        self.send(Command::Record(lead, tx))
    }

    /// Hands the lead leg to a voicemail drop (SPEC §4): a task of its own
    /// (on the caller's tokio runtime) waits for the machine's beep, plays
    /// `message` and reports [`MediaEvent::DropFinished`]; the agent hears
    /// silence at once and the next lead leg can open. Sending on (or
    /// dropping) the returned sender stops the drop (the call ended first).
    pub fn drop_voicemail(
        &self,
        lead: LegId,
        message: Arc<[i16]>,
        cfg: DropConfig,
    ) -> Result<oneshot::Sender<()>, MediaError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MediaError::NoRuntime)?;
        let (tx, stop) = oneshot::channel();
        self.send(Command::Drop {
            lead,
            message,
            cfg,
            stop,
            runtime,
        })?;
        Ok(tx)
    }

    /// Disconnects them; the agent hears silence.
    pub fn unbridge(&self) -> Result<(), MediaError> {
        self.send(Command::Unbridge)
    }

    /// Closes the lead leg (its call ended) and frees its ports.
    pub fn close_leg(&self, lead: LegId) -> Result<(), MediaError> {
        self.send(Command::CloseLeg(lead))
    }

    /// Turns SRTP on for the agent leg (RFC 3711): what the phone sends is
    /// checked and decrypted with `theirs`, what goes to it is encrypted
    /// with `ours`. Called again (a re-INVITE), a direction whose key is
    /// unchanged keeps its state: the same key never restarts its index.
    pub fn set_srtp(&self, ours: MasterKey, theirs: MasterKey) -> Result<(), MediaError> {
        self.send(Command::Srtp { ours, theirs })
    }

    /// Ends the agent's media and frees all its ports.
    pub fn close(self) {}
}

/// The agent leg's SRTP contexts with the keys they were made from.
/// Boxed: nearly 2 KB together (cipher and authentication states), held
/// only by agents whose phone uses SRTP, and a loop keeps a `Call` per
/// agent (SPEC §6 memory per call).
#[derive(Default)]
struct AgentSrtp {
    rx: Option<Box<(MasterKey, SrtpReceiver)>>,
    tx: Option<Box<(MasterKey, SrtpSender)>>,
}

impl AgentSrtp {
    fn set(&mut self, ours: MasterKey, theirs: MasterKey) {
        if self.tx.as_ref().is_none_or(|t| t.0 != ours) {
            let tx = SrtpSender::new(&ours);
            self.tx = Some(Box::new((ours, tx)));
        }
        if self.rx.as_ref().is_none_or(|r| r.0 != theirs) {
            let rx = SrtpReceiver::new(&theirs);
            self.rx = Some(Box::new((theirs, rx)));
        }
    }

    /// Encrypts `buf[range]` for the phone in place, the tag written after
    /// it; returns the bytes of `buf` to send. Without SRTP, the range as
    /// is (if it lies in `buf`).
    fn outbound(
        &mut self,
        buf: &mut [u8],
        range: std::ops::Range<usize>,
    ) -> Option<std::ops::Range<usize>> {
        let Some(tx) = &mut self.tx else {
            return buf.get(range.clone()).map(|_| range);
        };
        let tx = &mut tx.1;
        let start = range.start;
        let tail = buf.get_mut(start..)?;
        match tx.protect(tail, range.len()) {
            Ok(n) => Some(start..start + n),
            Err(e) => {
                tracing::debug!(error = %e, "RTP to the phone not protected; dropped");
                None
            }
        }
    }
}

/// Reads at most this many datagrams from one socket per wake-up, so one
/// flooded socket cannot starve the other calls of its loop.
const DRAIN_BATCH: usize = 64;

/// Datagrams read by one `recvmmsg` (recvmmsg(2)). A call's stream brings
/// one packet per 20 ms, so a wake-up usually finds one; the batch earns
/// its keep when the loop was late and several wait.
const RX_BATCH: usize = 8;

/// The largest datagram relayed; a longer one is dropped (`MSG_TRUNC`).
const RX_LEN: usize = 2048;

#[allow(clippy::disallowed_methods)] // the driver is where the clock is read
fn clock() -> Instant {
    Instant::now()
}

/// The driver of a voicemail drop on a handed-off lead leg: the
/// machine's audio goes to the [`DropPlayer`], its frames go out on the
/// leg's socket in the stream the lead already knows. Ends when the
/// message has played, or on `stop`; its ports are freed then.
async fn run_drop(
    id: LegId,
    sockets: LegSockets,
    mut h: self::core::HandOff,
    mut player: DropPlayer,
    mut stop: oneshot::Receiver<()>,
    events: events::EventSender,
) {
    use crate::media::amd::FRAME;
    use crate::media::rewrite::parse_rtp;
    let LegSockets { rtp, rtcp, _lease } = sockets;
    let (rtp, rtcp) = match (UdpSocket::from_std(rtp), UdpSocket::from_std(rtcp)) {
        (Ok(rtp), Ok(rtcp)) => (rtp, rtcp),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "voicemail drop: its sockets could not join the runtime");
            events.send(MediaEvent::DropFinished {
                leg: id,
                played: false,
                started: None,
            });
            return;
        }
    };
    let law = h.neg.codec.law;
    let mut buf = vec![0u8; 2048];
    let mut out = [0u8; 12 + FRAME];
    let mut pcm = [0i16; FRAME];
    let mut payload = [0u8; FRAME];
    let mut decoded = Vec::with_capacity(FRAME);
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let stopped = loop {
        if let Some(d) = player.poll_timeout() {
            sleep.as_mut().reset(tokio::time::Instant::from_std(d));
        }
        tokio::select! {
            biased;
            _ = &mut stop => break true,
            r = rtp.readable() => if r.is_ok() {
                for _ in 0..DRAIN_BATCH {
                    match rtp.try_recv_from(&mut buf) {
                        Ok((n, from)) => {
                            // Only the machine's own audio counts (SPEC §5).
                            if from.ip() != h.dest.ip() {
                                continue;
                            }
                            let Some(pkt) = buf.get(..n).and_then(|b| parse_rtp(b).ok()) else { continue };
                            if pkt.pt != h.neg.codec.pt {
                                continue;
                            }
                            let Some(p) = buf.get(pkt.payload.clone()) else { continue };
                            decoded.clear();
                            decoded.extend(p.iter().map(|b| law.decode(*b)));
                            player.handle_audio(clock(), &decoded);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {}
                    }
                }
            },
            // RTCP is not relayed: read off so its queue stays short.
            r = rtcp.readable() => if r.is_ok() {
                for _ in 0..DRAIN_BATCH {
                    match rtcp.try_recv_from(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Ok(_) | Err(_) => {}
                    }
                }
            },
            () = &mut sleep, if player.poll_timeout().is_some() => {
                let now = clock();
                while let Some(n) = player.handle_timeout(now, &mut pcm) {
                    for (b, s) in payload.iter_mut().zip(&pcm[..n]) {
                        *b = law.encode(*s);
                    }
                    if let Some(len) = h.stream.generated(now, &payload[..n], &mut out) {
                        if let Err(e) = rtp.try_send_to(&out[..len], h.dest) {
                            tracing::debug!(error = %e, "voicemail frame dropped on send");
                        }
                    }
                }
                if player.is_done() {
                    break false;
                }
            },
        }
    };
    events.send(MediaEvent::DropFinished {
        leg: id,
        played: !stopped && player.is_done(),
        started: player.started(),
    });
}

#[cfg(test)]
mod tests;
