//! The RTP relay driver: one tokio task per agent owns the agent leg's and
//! the current lead leg's UDP sockets and drives an [`AgentMediaCore`].
//!
//! Hot path (SPEC §6): a packet is read into the task's one buffer,
//! rewritten in place by the core and sent at once with `try_send_to` from
//! the out leg's socket (symmetric RTP: we send from the port we advertised).
//! Nothing is queued: if the kernel's send buffer is full the packet is
//! dropped, as a router would. Commands (bridge, …) arrive on a channel the
//! task polls before its sockets, so a bridge applies before the next lead
//! packet is read. The task owns one timer: the core's `poll_timeout` (20 ms
//! generated frames while not bridged, RTP timeouts).

pub mod core;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

pub use self::core::{
    AgentMediaCore, CoreConfig, CoreError, Forward, HandOff, LegId, MediaEvent, Side, StreamSeed,
};
use crate::config::PortRange;
use crate::media::amd::AmdConfig;
use crate::media::port::{PortError, PortLease, PortPool, SharedPortPool};
use crate::media::sdp::Negotiated;
use crate::media::srtp::{MasterKey, SrtpReceiver, SrtpSender, TAG_LEN};
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
    /// The agent's media task has ended.
    #[error("media task closed")]
    Closed,
}

/// A media leg as the call layer sees it: its id and the port for the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegHandle {
    /// Id for commands and events.
    pub id: LegId,
    /// Local RTP port (RTCP is `local_port + 1`), for `make_offer`/`answer`.
    pub local_port: u16,
}

struct LegSockets {
    rtp: UdpSocket,
    rtcp: UdpSocket,
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
}

/// The media relay: hands out agent media tasks over a shared port pool.
#[derive(Clone)]
pub struct MediaRelay {
    inner: Arc<Inner>,
}

fn bind_udp(ip: IpAddr, port: u16, buffer: usize) -> io::Result<UdpSocket> {
    let addr = SocketAddr::new(ip, port);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
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
    /// A relay over `cfg.ports`.
    pub fn new(cfg: RelayConfig) -> Result<Self, MediaError> {
        let pool = SharedPortPool::new(PortPool::new(cfg.ports)?);
        Ok(MediaRelay {
            inner: Arc::new(Inner {
                cfg,
                pool,
                next_leg: AtomicU64::new(1),
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

    /// Opens an agent's nailed-up media leg and spawns its task (needs a
    /// tokio runtime). Events of the agent's legs come on the receiver;
    /// dropping the returned [`AgentMedia`] ends the task and frees its ports.
    pub fn open_agent(
        &self,
    ) -> Result<(AgentMedia, mpsc::UnboundedReceiver<MediaEvent>), MediaError> {
        let (agent, sockets) = self.open_sockets()?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let core = AgentMediaCore::new(self.inner.cfg.core.clone(), agent.id, random_seed());
        tokio::spawn(run(core, sockets, cmd_rx, ev_tx));
        Ok((
            AgentMedia {
                tx: cmd_tx,
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
    _rtcp: UdpSocket,
    _lease: PortLease,
}

impl MediaRelay {
    /// Leases a port pair from the pool and binds it on `server.media_ip`.
    pub fn lease_socket(&self) -> Result<LeasedSocket, MediaError> {
        let (h, s) = self.open_sockets()?;
        Ok(LeasedSocket {
            socket: s.rtp,
            port: h.local_port,
            _rtcp: s.rtcp,
            _lease: s._lease,
        })
    }
}

/// Control of one agent's media task (SPEC §1 steps 2–5).
pub struct AgentMedia {
    tx: mpsc::UnboundedSender<Command>,
    agent: LegHandle,
    relay: MediaRelay,
}

impl AgentMedia {
    /// The agent leg.
    pub fn agent_leg(&self) -> LegHandle {
        self.agent
    }

    fn send(&self, c: Command) -> Result<(), MediaError> {
        self.tx.send(c).map_err(|_| MediaError::Closed)
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
    /// waits for the machine's beep, plays `message` and reports
    /// [`MediaEvent::DropFinished`]; the agent hears silence at once and
    /// the next lead leg can open. Sending on (or dropping) the returned
    /// sender stops the drop (the call ended first).
    pub fn drop_voicemail(
        &self,
        lead: LegId,
        message: Arc<[i16]>,
        cfg: DropConfig,
    ) -> Result<oneshot::Sender<()>, MediaError> {
        let (tx, stop) = oneshot::channel();
        self.send(Command::Drop {
            lead,
            message,
            cfg,
            stop,
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

    /// Ends the task and frees all its ports.
    pub fn close(self) {}
}

/// The agent leg's SRTP contexts with the keys they were made from.
#[derive(Default)]
struct AgentSrtp {
    rx: Option<(MasterKey, SrtpReceiver)>,
    tx: Option<(MasterKey, SrtpSender)>,
}

impl AgentSrtp {
    fn set(&mut self, ours: MasterKey, theirs: MasterKey) {
        if self.tx.as_ref().is_none_or(|(k, _)| *k != ours) {
            let tx = SrtpSender::new(&ours);
            self.tx = Some((ours, tx));
        }
        if self.rx.as_ref().is_none_or(|(k, _)| *k != theirs) {
            let rx = SrtpReceiver::new(&theirs);
            self.rx = Some((theirs, rx));
        }
    }

    /// Encrypts `buf[range]` for the phone in place, the tag written after
    /// it; returns the bytes to send. Without SRTP, the range as is.
    fn outbound<'a>(
        &mut self,
        buf: &'a mut [u8],
        range: std::ops::Range<usize>,
    ) -> Option<&'a [u8]> {
        let Some((_, tx)) = &mut self.tx else {
            return buf.get(range);
        };
        let start = range.start;
        let tail = buf.get_mut(start..)?;
        match tx.protect(tail, range.len()) {
            Ok(n) => tail.get(..n),
            Err(e) => {
                tracing::debug!(error = %e, "RTP to the phone not protected; dropped");
                None
            }
        }
    }
}

/// Reads at most this many datagrams per wake-up, so one flooded socket
/// cannot starve the others of the task.
const DRAIN_BATCH: usize = 64;

/// Datagrams read by one `recvmmsg` (recvmmsg(2)). A call's stream brings
/// one packet per 20 ms, so a wake-up usually finds one; the batch earns
/// its keep when the task was late and several wait.
const RX_BATCH: usize = 8;

/// The largest datagram relayed; a longer one is dropped (`MSG_TRUNC`).
const RX_LEN: usize = 2048;

/// Receive buffers of one worker thread, shared by every media task that
/// runs on it: a task uses them only between two awaits (nothing is kept
/// in them across a wake-up), so one set per thread serves any number of
/// calls and a call's task holds no packet buffer of its own (SPEC §6
/// memory per call).
struct RxBatch {
    /// Room after each datagram for the SRTP tag written in place.
    bufs: [[u8; RX_LEN + TAG_LEN]; RX_BATCH],
    names: [libc::sockaddr_storage; RX_BATCH],
    /// Length and source of each datagram of the last read (`None`: not
    /// relayable — truncated, or from an address family we do not use).
    got: [(usize, Option<SocketAddr>); RX_BATCH],
}

impl RxBatch {
    fn new() -> Box<Self> {
        Box::new(RxBatch {
            bufs: [[0; RX_LEN + TAG_LEN]; RX_BATCH],
            // SAFETY: all-zero bytes are a valid `sockaddr_storage`
            // (family AF_UNSPEC).
            names: unsafe { std::mem::zeroed() },
            got: [(0, None); RX_BATCH],
        })
    }
}

thread_local! {
    static RX: std::cell::RefCell<Box<RxBatch>> = std::cell::RefCell::new(RxBatch::new());
}

/// Runs `f` with this thread's receive buffers. Never re-entered (the
/// drains call no other drain), so the borrow always succeeds; if it did
/// not, the datagrams stay queued for the next wake-up.
fn with_rx(f: impl FnOnce(&mut RxBatch)) {
    RX.with(|rx| {
        if let Ok(mut rx) = rx.try_borrow_mut() {
            f(&mut rx);
        }
    });
}

/// The address in a `sockaddr_storage` the kernel filled.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`,
            // and `sockaddr_storage` is aligned for every address type.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One `recvmmsg` of up to [`RX_BATCH`] datagrams; `Ok(0)` when none waits.
///
/// A short read means the socket's queue was empty: it is reported to
/// tokio as `WouldBlock`, which clears the readiness, so the task sleeps
/// until the next datagram instead of asking the kernel once more only to
/// hear `EAGAIN` — one system call per packet saved at 50 packets/s per
/// stream. A datagram that arrives meanwhile raises a new readiness event
/// (tokio clears only the event it saw), so none is left unread.
fn recv_batch(sock: &UdpSocket, rx: &mut RxBatch) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut got = 0;
    let r = sock.try_io(tokio::io::Interest::READABLE, || {
        let RxBatch {
            bufs,
            names,
            got: lens,
        } = rx;
        let mut iovs: [libc::iovec; RX_BATCH] = std::array::from_fn(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
        // SAFETY: all-zero bytes are a valid `mmsghdr` (null pointers,
        // zero lengths); the fields are set below.
        let mut hdrs: [libc::mmsghdr; RX_BATCH] = unsafe { std::mem::zeroed() };
        for (k, ((iov, buf), name)) in iovs
            .iter_mut()
            .zip(bufs.iter_mut())
            .zip(names.iter_mut())
            .enumerate()
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = RX_LEN;
            let h = &mut hdrs[k].msg_hdr;
            h.msg_name = std::ptr::from_mut(name).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = std::ptr::from_mut(iov);
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer, an iovec and an address
        // of `rx`/this frame that outlive the call, with their true sizes.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(r).map_err(|_| io::Error::last_os_error())?;
        for (k, h) in hdrs.iter().take(n).enumerate() {
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            lens[k] = (
                h.msg_len as usize,
                if truncated {
                    None
                } else {
                    socket_addr(&names[k])
                },
            );
        }
        got = n;
        if n < RX_BATCH {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match r {
        Ok(()) => Ok(got),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(got),
        Err(e) => Err(e),
    }
}

#[allow(clippy::disallowed_methods)] // the driver is where the clock is read
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn drain_rtp(
    core: &mut AgentMediaCore,
    side: Side,
    agent: &LegSockets,
    lead: Option<&LegSockets>,
    srtp: &mut AgentSrtp,
) {
    let Some(rx) = (match side {
        Side::Agent => Some(agent),
        Side::Lead => lead,
    }) else {
        return;
    };
    with_rx(|batch| {
        let mut read = 0;
        while read < DRAIN_BATCH {
            let n = match recv_batch(&rx.rtp, batch) {
                Ok(0) => return,
                Ok(n) => n,
                // ICMP errors from earlier sends surface here on Linux; keep reading.
                Err(e) => {
                    tracing::debug!(error = %e, "RTP receive error");
                    read += 1;
                    continue;
                }
            };
            read += n;
            for k in 0..n {
                let (len, from) = batch.got[k];
                let Some(from) = from else { continue };
                relay_one(core, side, agent, lead, srtp, &mut batch.bufs[k], len, from);
            }
            if n < RX_BATCH {
                return;
            }
        }
    });
}

/// One received datagram: checked, rewritten in place and sent on at once
/// from the other leg's socket (symmetric RTP).
#[allow(clippy::too_many_arguments)]
fn relay_one(
    core: &mut AgentMediaCore,
    side: Side,
    agent: &LegSockets,
    lead: Option<&LegSockets>,
    srtp: &mut AgentSrtp,
    buf: &mut [u8],
    n: usize,
    from: SocketAddr,
) {
    // SRTP from the phone: checked and decrypted before the core sees it
    // (RFC 3711 §3.3); a forged or replayed packet goes no further.
    let n = match (&mut srtp.rx, side) {
        (Some((_, rx)), Side::Agent) => match rx.unprotect(buf, n) {
            Ok(n) => n,
            Err(e) => {
                crate::metrics::metrics().srtp_refused.inc();
                tracing::debug!(error = %e, %from, "SRTP packet refused");
                return;
            }
        },
        _ => n,
    };
    let Some(pkt) = buf.get_mut(..n) else {
        return;
    };
    let strays = core.stray_dropped();
    let now = clock();
    let forward = core.handle_rtp(now, side, from, pkt);
    if core.stray_dropped() > strays {
        crate::metrics::metrics().rtp_stray_packets.inc();
    }
    if let Some(f) = forward {
        let tx = match f.side {
            Side::Agent => Some(agent),
            Side::Lead => lead,
        };
        let bytes = match f.side {
            Side::Agent => srtp.outbound(buf, f.range),
            Side::Lead => buf.get(f.range),
        };
        if let (Some(tx), Some(bytes)) = (tx, bytes) {
            if let Err(e) = tx.rtp.try_send_to(bytes, f.dest) {
                tracing::debug!(error = %e, dest = %f.dest, "RTP packet dropped on send");
            }
        }
    }
    // The lead's audio is analysed, and a recorded call's audio handed to
    // its writer, once the packet is on its way.
    core.after_rtp(now);
}

/// RTCP is not relayed (each leg's reports describe that leg only): read
/// and dropped, so the socket's queue never fills.
fn drain_discard(s: &UdpSocket) {
    with_rx(|batch| {
        for _ in 0..DRAIN_BATCH / RX_BATCH {
            match recv_batch(s, batch) {
                Ok(n) if n < RX_BATCH => return,
                Ok(_) | Err(_) => {}
            }
        }
    });
}

fn apply(
    core: &mut AgentMediaCore,
    lead: &mut Option<LegSockets>,
    srtp: &mut AgentSrtp,
    events: &mpsc::UnboundedSender<MediaEvent>,
    cmd: Command,
) {
    let now = clock();
    let r = match cmd {
        Command::SetRemote(leg, neg) => core.set_remote(now, leg, neg),
        Command::SetSignalling(leg, host) => core.set_signalling(leg, host),
        Command::AttachLead { id, sockets, seed } => {
            core.attach_lead(id, seed);
            *lead = Some(sockets);
            Ok(())
        }
        Command::CloseLeg(id) => {
            let r = core.detach_lead(now, id);
            if r.is_ok() {
                *lead = None;
            }
            r
        }
        Command::PlayTone => {
            core.play_tone(now);
            Ok(())
        }
        Command::Bridge(id) => core.bridge(now, id),
        Command::StartAmd { lead, cfg, hold } => core.start_amd(now, lead, cfg, hold),
        Command::Record(lead, tx) => core.start_recording(lead, tx),
        Command::Drop {
            lead: id,
            message,
            cfg,
            stop,
        } => core.hand_off_lead(now, id).map(|h| {
            if let Some(sockets) = lead.take() {
                let player = DropPlayer::new(now, message, cfg);
                tokio::spawn(run_drop(id, sockets, h, player, stop, events.clone()));
            }
        }),
        Command::Unbridge => {
            core.unbridge(now);
            Ok(())
        }
        Command::Srtp { ours, theirs } => {
            srtp.set(ours, theirs);
            Ok(())
        }
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, agent_leg = ?core.agent_leg(), "media command refused");
    }
}

/// What woke an agent's task: a command (handled first, so a bridge
/// applies before the next lead packet is read), or its RTP sockets and
/// its timer, all handled in the same pass so a busy socket cannot starve
/// the other.
///
/// RTCP does not wake the task: it is not relayed, only read off so the
/// queue stays short, on every wake-up, where a socket with nothing queued
/// costs one atomic load (tokio tracks the readiness without a waiter). A
/// call's RTP or the generated frames wake the task every 20 ms; a task
/// that nothing wakes (a held call) leaves at most the RTCP socket's
/// buffer (64 KB) queued, past which the kernel drops reports no one reads
/// (RFC 3550 §6.2: a peer sends one every few seconds).
enum Wake {
    Command(Command),
    /// The `AgentMedia` was dropped: the task ends.
    Closed,
    /// The runtime's I/O driver is gone (shutdown): the task ends.
    Gone,
    Io {
        agent_rtp: bool,
        lead_rtp: bool,
        timer: bool,
    },
}

/// Readiness of one socket, registering the task's waker when not ready.
/// `poll_recv_ready` keeps one waker slot per socket (no waiter list to
/// join and leave on every wake-up, as `readable()` futures do).
fn ready(s: Option<&UdpSocket>, cx: &mut std::task::Context<'_>) -> Result<bool, ()> {
    match s.map(|s| s.poll_recv_ready(cx)) {
        Some(std::task::Poll::Ready(Ok(()))) => Ok(true),
        Some(std::task::Poll::Ready(Err(_))) => Err(()),
        Some(std::task::Poll::Pending) | None => Ok(false),
    }
}

async fn run(
    mut core: AgentMediaCore,
    agent: LegSockets,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<MediaEvent>,
) {
    use std::future::Future;
    use std::task::Poll;
    let mut lead: Option<LegSockets> = None;
    let mut srtp = AgentSrtp::default();
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = core.poll_timeout();
        if deadline != armed {
            if let Some(d) = deadline {
                sleep.as_mut().reset(tokio::time::Instant::from_std(d));
            }
            armed = deadline;
        }
        let wake = std::future::poll_fn(|cx| {
            match cmds.poll_recv(cx) {
                Poll::Ready(Some(c)) => return Poll::Ready(Wake::Command(c)),
                Poll::Ready(None) => return Poll::Ready(Wake::Closed),
                Poll::Pending => {}
            }
            let lead_socks = lead.as_ref();
            let polled = (|| {
                Ok::<_, ()>(Wake::Io {
                    agent_rtp: ready(Some(&agent.rtp), cx)?,
                    lead_rtp: ready(lead_socks.map(|l| &l.rtp), cx)?,
                    timer: armed.is_some() && sleep.as_mut().poll(cx).is_ready(),
                })
            })();
            match polled {
                Err(()) => Poll::Ready(Wake::Gone),
                Ok(Wake::Io {
                    agent_rtp: false,
                    lead_rtp: false,
                    timer: false,
                }) => Poll::Pending,
                Ok(w) => Poll::Ready(w),
            }
        })
        .await;
        match wake {
            Wake::Command(c) => apply(&mut core, &mut lead, &mut srtp, &events, c),
            Wake::Closed | Wake::Gone => break,
            Wake::Io {
                agent_rtp,
                lead_rtp,
                timer,
            } => {
                if agent_rtp {
                    drain_rtp(&mut core, Side::Agent, &agent, lead.as_ref(), &mut srtp);
                }
                if lead_rtp {
                    drain_rtp(&mut core, Side::Lead, &agent, lead.as_ref(), &mut srtp);
                }
                if timer {
                    let now = clock();
                    with_rx(|rx| {
                        let out = &mut rx.bufs[0];
                        while let Some((dest, n)) = core.handle_timeout(now, &mut out[..RX_LEN]) {
                            let Some(bytes) = srtp.outbound(out, 0..n) else {
                                continue;
                            };
                            if let Err(e) = agent.rtp.try_send_to(bytes, dest) {
                                tracing::debug!(error = %e, "generated frame dropped");
                            }
                        }
                    });
                    // The deadline may not move (e.g. a timeout just
                    // reported): force a re-arm from poll_timeout.
                    armed = None;
                }
                drain_discard(&agent.rtcp);
                if let Some(l) = &lead {
                    drain_discard(&l.rtcp);
                }
            }
        }
        while let Some(e) = core.poll_event() {
            // A dropped receiver only means nobody wants events; the task
            // lives until its `AgentMedia` is dropped.
            let _ = events.send(e);
        }
    }
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
    events: mpsc::UnboundedSender<MediaEvent>,
) {
    use crate::media::amd::FRAME;
    use crate::media::rewrite::parse_rtp;
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
            r = sockets.rtp.readable() => if r.is_ok() {
                for _ in 0..DRAIN_BATCH {
                    match sockets.rtp.try_recv_from(&mut buf) {
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
            r = sockets.rtcp.readable() => if r.is_ok() { drain_discard(&sockets.rtcp) },
            () = &mut sleep, if player.poll_timeout().is_some() => {
                let now = clock();
                while let Some(n) = player.handle_timeout(now, &mut pcm) {
                    for (b, s) in payload.iter_mut().zip(&pcm[..n]) {
                        *b = law.encode(*s);
                    }
                    if let Some(len) = h.stream.generated(now, &payload[..n], &mut out) {
                        if let Err(e) = sockets.rtp.try_send_to(&out[..len], h.dest) {
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
    let _ = events.send(MediaEvent::DropFinished {
        leg: id,
        played: !stopped && player.is_done(),
        started: player.started(),
    });
}

#[cfg(test)]
mod tests;
