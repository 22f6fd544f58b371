//! One relay event loop (see the module doc of [`super`]): a thread, its
//! `epoll` instance, the agents placed on it and their timers.
//!
//! Sockets are registered edge-triggered (`EPOLLET`): a socket is read
//! until a short `recvmmsg` shows its queue empty (so no read only hears
//! `EAGAIN`, and the next datagram raises a new edge) or up to
//! [`DRAIN_BATCH`] datagrams; one not emptied goes on the loop's backlog
//! and is read again in the next turn, after the other ready sockets had
//! theirs (no head-of-line blocking between calls). Edge-triggered, the
//! kernel does not poll every reported socket once more on the next
//! `epoll_wait`, as it does for a level-triggered one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use super::{
    clock, AgentMediaCore, AgentSrtp, Command, LegId, LegSockets, Side, DRAIN_BATCH, RX_BATCH,
    RX_LEN,
};
use crate::media::srtp::TAG_LEN;
use crate::media::voicemail::DropPlayer;
use crate::sockaddr::{socket_addr, write_sockaddr};

/// What the rest of the relay asks of a loop.
pub(super) enum Msg {
    /// Place an agent's media here.
    Open {
        agent: LegId,
        /// Boxed: the core is large and the channel holds its messages by value.
        core: Box<AgentMediaCore>,
        sockets: LegSockets,
        events: super::events::EventSender,
    },
    /// A command for one agent's media.
    Command(LegId, Command),
    /// The agent's [`super::AgentMedia`] was dropped: free everything.
    Close(LegId),
    /// The relay was dropped: end the loop.
    Exit,
}

/// Wakes a loop blocked in `epoll_wait` (an `eventfd`, written only when
/// the loop has not been woken since it last looked).
struct Wake {
    fd: OwnedFd,
    notified: AtomicBool,
}

impl Wake {
    fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd. A
            // failure means the counter is already non-zero (the loop will
            // wake anyway).
            let _ = unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    std::ptr::from_ref(&one).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }

    /// Resets the eventfd; called by the loop before it drains its channel,
    /// so a message sent after the drain began writes the eventfd again.
    fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut n).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        self.notified.store(false, Ordering::SeqCst);
    }
}

/// The handle of one loop: its channel, its wake-up and how many agents
/// it carries (to place the next one on the least loaded loop).
pub(super) struct Shard {
    tx: std_mpsc::Sender<Msg>,
    wake: Arc<Wake>,
    agents: Arc<AtomicUsize>,
}

impl Shard {
    /// Starts a loop on a thread of its own named `name`.
    pub(super) fn spawn(name: String) -> io::Result<Self> {
        let (shard, lp) = Self::new()?;
        std::thread::Builder::new()
            .name(name)
            .spawn(move || lp.run())?;
        Ok(shard)
    }

    /// A loop and its handle; the loop runs where it is driven.
    fn new() -> io::Result<(Self, Loop)> {
        // SAFETY: plain system calls; each result is checked before use.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `epfd` is a new descriptor that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        // SAFETY: as above.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        ctl(&epfd, libc::EPOLL_CTL_ADD, efd.as_raw_fd(), WAKE, 0)?;
        let wake = Arc::new(Wake {
            fd: efd,
            notified: AtomicBool::new(false),
        });
        let agents = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std_mpsc::channel();
        let lp = Loop {
            epfd,
            wake: wake.clone(),
            rx,
            agents: agents.clone(),
            calls: Vec::new(),
            free: Vec::new(),
            by_agent: HashMap::new(),
            timers: BinaryHeap::new(),
            generation: 0,
            io: Io::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
            backlog: Vec::new(),
            serving: Vec::new(),
            touched: Vec::new(),
        };
        Ok((Shard { tx, wake, agents }, lp))
    }

    /// Sends a message and wakes the loop; `Err` if the loop has ended.
    pub(super) fn send(&self, m: Msg) -> Result<(), ()> {
        self.tx.send(m).map_err(|_| ())?;
        self.wake.wake();
        Ok(())
    }

    /// Agents on this loop.
    pub(super) fn agents(&self) -> usize {
        self.agents.load(Ordering::Relaxed)
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        // Every `AgentMedia` holds its shard: none is left, the loop ends.
        let _ = self.send(Msg::Exit);
    }
}

/// The eventfd's token; a socket's token is `generation << 32 | slot << 2 | kind`.
const WAKE: u64 = u64::MAX;
const AGENT_RTP: u64 = 0;
const AGENT_RTCP: u64 = 1;
const LEAD_RTP: u64 = 2;
const LEAD_RTCP: u64 = 3;
/// Events taken by one `epoll_wait`.
const MAX_EVENTS: usize = 256;
/// How much later than its deadline a timer may run so that the loop
/// wakes once for the timers of several calls, in ms. Every idle agent's
/// generated frame (the beep, then silence; SPEC §1 step 2) is a timer 20
/// ms apart, each agent on its own phase: 200 agents are 10,000 deadlines
/// a second, and woken at each (rounded to the ms) a loop slept and woke
/// about 2,000 times a second, each an `epoll_wait` and two context
/// switches, whatever the call rate. Waking at the earliest deadline plus
/// this slack runs every timer due by then, about 4 ms of deadlines per
/// wake-up. Nothing runs early; a generated frame leaves at most this
/// (plus the ms rounding) late, and its RTP timestamp still advances by
/// exactly one frame (RFC 3550 §5.1: the timestamp follows the sampling
/// clock, not the send time), so the phone's jitter buffer sees a few ms
/// of jitter, far inside the 20 ms frame it buffers at least. Packets are
/// not timers: a ready socket wakes the loop at once (SPEC §6 answer →
/// bridge), and each wake-up runs the timers then due.
const TIMER_SLACK_MS: libc::c_int = 4;

fn token(slot: usize, generation: u32, kind: u64) -> u64 {
    (u64::from(generation) << 32) | ((slot as u64) << 2) | kind
}

fn ctl(epfd: &OwnedFd, op: libc::c_int, fd: RawFd, token: u64, flags: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32 | flags,
        u64: token,
    };
    // SAFETY: `ev` is a live epoll_event; both descriptors are open.
    if unsafe { libc::epoll_ctl(epfd.as_raw_fd(), op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn register(epfd: &OwnedFd, s: &LegSockets, slot: usize, generation: u32, agent: bool) {
    let (rtp, rtcp) = if agent {
        (AGENT_RTP, AGENT_RTCP)
    } else {
        (LEAD_RTP, LEAD_RTCP)
    };
    for (fd, kind) in [(s.rtp.as_raw_fd(), rtp), (s.rtcp.as_raw_fd(), rtcp)] {
        let t = token(slot, generation, kind);
        if let Err(e) = ctl(epfd, libc::EPOLL_CTL_ADD, fd, t, libc::EPOLLET as u32) {
            // Only on memory exhaustion (the descriptors are ours and new):
            // the leg then stays silent and its RTP timeout reports it.
            tracing::error!(error = %e, "RTP socket not added to the relay loop");
        }
    }
}

fn deregister(epfd: &OwnedFd, s: &LegSockets) {
    for fd in [s.rtp.as_raw_fd(), s.rtcp.as_raw_fd()] {
        // Closing the socket would remove it too; done first so a reused
        // descriptor number never meets a stale registration.
        let _ = ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0);
    }
}

/// One agent's media on a loop.
struct Call {
    agent_id: LegId,
    generation: u32,
    core: Box<AgentMediaCore>,
    agent: LegSockets,
    lead: Option<LegSockets>,
    srtp: AgentSrtp,
    events: super::events::EventSender,
    /// The deadline of this call's live entry in the timer heap.
    armed: Option<Instant>,
}

struct Loop {
    epfd: OwnedFd,
    wake: Arc<Wake>,
    rx: std_mpsc::Receiver<Msg>,
    agents: Arc<AtomicUsize>,
    calls: Vec<Option<Call>>,
    free: Vec<usize>,
    by_agent: HashMap<LegId, usize>,
    /// (deadline, slot, generation); entries whose call moved its
    /// deadline or ended are skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    generation: u32,
    io: Box<Io>,
    /// What `epoll_wait` returned.
    events: Vec<libc::epoll_event>,
    /// Sockets left with datagrams queued (read [`DRAIN_BATCH`] in a
    /// turn): read again next turn without waiting for a new edge.
    backlog: Vec<u64>,
    /// The backlog being served this turn.
    serving: Vec<u64>,
    /// Calls holding lead packets for an answer that a command of this
    /// turn may have applied.
    touched: Vec<usize>,
}

impl Loop {
    fn run(mut self) {
        loop {
            let timeout = self.timeout_ms();
            if !self.turn(timeout) {
                return;
            }
        }
    }

    /// One `epoll_wait` (up to `timeout` ms) and everything it found:
    /// messages, then ready sockets, then due timers. `false` when the
    /// loop must end.
    fn turn(&mut self, timeout: libc::c_int) -> bool {
        let timeout = if self.backlog.is_empty() { timeout } else { 0 };
        // SAFETY: `events` holds MAX_EVENTS writable entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                timeout,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return true;
            }
            tracing::error!(error = %e, "relay loop: epoll_wait failed; its calls end");
            return false;
        };
        let n = n.min(self.events.len());
        if self.events.iter().take(n).any(|e| e.u64 == WAKE) {
            self.wake.clear();
        }
        // Commands before packets: a bridge sent before the lead's packet
        // arrived applies to it.
        if !self.take_messages() {
            return false;
        }
        std::mem::swap(&mut self.backlog, &mut self.serving);
        for i in 0..n {
            let t = self.events.get(i).map_or(WAKE, |e| e.u64);
            if t != WAKE {
                self.on_socket(t);
            }
        }
        let mut serving = std::mem::take(&mut self.serving);
        for t in serving.drain(..) {
            // A socket with a new edge this turn was read above already.
            if !self.events.iter().take(n).any(|e| e.u64 == t) {
                self.on_socket(t);
            }
        }
        self.serving = serving;
        self.run_timers();
        true
    }

    /// Milliseconds to the earliest deadline, rounded up (a frame is never
    /// sent early), plus [`TIMER_SLACK_MS`] when it is not already due; -1
    /// with no deadline.
    fn timeout_ms(&self) -> libc::c_int {
        let Some(Reverse((t, _, _))) = self.timers.peek() else {
            return -1;
        };
        let wait = t.saturating_duration_since(clock());
        if wait.is_zero() {
            return 0;
        }
        let ms = wait.as_micros().div_ceil(1000);
        libc::c_int::try_from(ms)
            .unwrap_or(libc::c_int::MAX)
            .saturating_add(TIMER_SLACK_MS)
    }

    /// Applies every queued message; `false` when the loop must end.
    /// Lead packets held for an answer are judged once every queued
    /// command is applied: an answer comes as several (its SDP, then the
    /// bridge or the detector), and what the agent hears depends on all.
    fn take_messages(&mut self) -> bool {
        let mut touched = std::mem::take(&mut self.touched);
        let go_on = self.apply_messages(&mut touched);
        let now = clock();
        for slot in touched.drain(..) {
            let Some(call) = self.calls.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let (io, timers, agent) = (&mut self.io, &mut self.timers, call.agent_id);
            if !isolated(|| {
                call.release_held(now, io);
                call.after_work(slot, timers);
            }) {
                self.abandon(agent);
            }
        }
        self.touched = touched;
        go_on
    }

    fn apply_messages(&mut self, touched: &mut Vec<usize>) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Open {
                    agent,
                    core,
                    sockets,
                    events,
                }) => self.open(agent, core, sockets, events),
                Ok(Msg::Command(agent, c)) => {
                    let Some(&slot) = self.by_agent.get(&agent) else {
                        continue;
                    };
                    if let Some(call) = self.calls.get_mut(slot).and_then(Option::as_mut) {
                        let (epfd, timers) = (&self.epfd, &mut self.timers);
                        if !isolated(|| {
                            call.apply(epfd, slot, c);
                            call.after_work(slot, timers);
                        }) {
                            self.abandon(agent);
                        } else if call.core.has_held() && !touched.contains(&slot) {
                            touched.push(slot);
                        }
                    }
                }
                Ok(Msg::Close(agent)) => self.close(agent),
                Ok(Msg::Exit) | Err(std_mpsc::TryRecvError::Disconnected) => return false,
                Err(std_mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn open(
        &mut self,
        agent: LegId,
        core: Box<AgentMediaCore>,
        sockets: LegSockets,
        events: super::events::EventSender,
    ) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.calls.push(None);
            self.calls.len() - 1
        });
        self.generation = self.generation.wrapping_add(1);
        register(&self.epfd, &sockets, slot, self.generation, true);
        let mut call = Call {
            agent_id: agent,
            generation: self.generation,
            core,
            agent: sockets,
            lead: None,
            srtp: AgentSrtp::default(),
            events,
            armed: None,
        };
        call.after_work(slot, &mut self.timers);
        if let Some(s) = self.calls.get_mut(slot) {
            *s = Some(call);
        }
        self.by_agent.insert(agent, slot);
        self.agents.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends an agent whose work panicked, with what it had queued to send.
    fn abandon(&mut self, agent: LegId) {
        self.io.out_len = 0;
        self.close(agent);
    }

    fn close(&mut self, agent: LegId) {
        let Some(slot) = self.by_agent.remove(&agent) else {
            return;
        };
        if let Some(call) = self.calls.get_mut(slot).and_then(Option::take) {
            deregister(&self.epfd, &call.agent);
            if let Some(l) = &call.lead {
                deregister(&self.epfd, l);
            }
            debug_assert_eq!(call.agent_id, agent);
            self.free.push(slot);
            self.agents.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn on_socket(&mut self, t: u64) {
        let slot = ((t & 0xFFFF_FFFF) >> 2) as usize;
        let generation = (t >> 32) as u32;
        let Some(call) = self
            .calls
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        let (io, timers, agent) = (&mut self.io, &mut self.timers, call.agent_id);
        let mut more = false;
        let ok = isolated(|| {
            more = match t & 3 {
                AGENT_RTP => call.drain_rtp(Side::Agent, io),
                LEAD_RTP => call.drain_rtp(Side::Lead, io),
                AGENT_RTCP => io.discard(call.agent.rtcp.as_raw_fd()),
                _ => call
                    .lead
                    .as_ref()
                    .is_some_and(|l| io.discard(l.rtcp.as_raw_fd())),
            };
            call.after_work(slot, timers);
        });
        if !ok {
            self.abandon(agent);
        } else if more {
            self.backlog.push(t);
        }
    }

    fn run_timers(&mut self) {
        let now = clock();
        while let Some(&Reverse((t, slot, generation))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(call) = self
                .calls
                .get_mut(slot)
                .and_then(Option::as_mut)
                .filter(|c| c.generation == generation && c.armed == Some(t))
            else {
                continue;
            };
            call.armed = None;
            let (io, timers, agent) = (&mut self.io, &mut self.timers, call.agent_id);
            if !isolated(|| {
                call.on_timer(now, io);
                call.after_work(slot, timers);
            }) {
                self.abandon(agent);
            }
        }
    }
}

/// Runs one call's work; `false` if it panicked. A panic is a bug (cores
/// refuse bad input with `None`/errors), and it ends only that agent's
/// media, as a panicking task did when each agent had its own: the other
/// calls of the loop go on (SPEC §5: nothing crashes or stalls the server).
fn isolated(f: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(_) => {
            tracing::error!("relay: a call's media work panicked; that agent's media ends");
            false
        }
    }
}

impl Call {
    /// Hands the core's events to the call layer and files its next
    /// deadline, after anything the core was given.
    fn after_work(&mut self, slot: usize, timers: &mut BinaryHeap<Reverse<(Instant, usize, u32)>>) {
        let (held, dropped) = self.core.take_early_counts();
        if held > 0 {
            crate::metrics::metrics()
                .rtp_early_held_packets
                .inc_by(u64::from(held));
        }
        if dropped > 0 {
            crate::metrics::metrics()
                .rtp_early_dropped_packets
                .inc_by(u64::from(dropped));
        }
        while let Some(e) = self.core.poll_event() {
            // A dropped receiver only means nobody wants events; the media
            // lives until its `AgentMedia` is dropped.
            self.events.send(e);
        }
        if let Some(d) = self.core.poll_timeout() {
            // An RTP timeout moves later with every packet: the entry
            // already filed comes up first and is refiled then, so the
            // heap sees a bridged call once per `rtp_timeout`, not per packet.
            if self.armed.is_none_or(|a| d < a) {
                timers.push(Reverse((d, slot, self.generation)));
                self.armed = Some(d);
            }
        }
    }

    /// Relays what the socket holds, up to [`DRAIN_BATCH`] datagrams;
    /// `true` if it may hold more.
    fn drain_rtp(&mut self, side: Side, io: &mut Io) -> bool {
        let fd = match side {
            Side::Agent => self.agent.rtp.as_raw_fd(),
            Side::Lead => match &self.lead {
                Some(l) => l.rtp.as_raw_fd(),
                None => return false,
            },
        };
        let mut read = 0;
        while read < DRAIN_BATCH {
            let n = match io.recv(fd) {
                Ok(0) => return false,
                Ok(n) => n,
                // ICMP errors from earlier sends surface here on Linux; keep reading.
                Err(e) => {
                    tracing::debug!(error = %e, "RTP receive error");
                    read += 1;
                    continue;
                }
            };
            let now = clock();
            for k in 0..n {
                let (len, from) = io.got[k];
                let Some(from) = from else { continue };
                self.relay_one(now, side, io, k, len, from);
            }
            io.flush();
            read += n;
            if n < RX_BATCH {
                return false;
            }
        }
        true
    }

    /// One received datagram (`io.bufs[k]`): checked, rewritten in place and
    /// queued for the `sendmmsg` of its batch from the other leg's socket
    /// (symmetric RTP).
    fn relay_one(
        &mut self,
        now: Instant,
        side: Side,
        io: &mut Io,
        k: usize,
        n: usize,
        from: SocketAddr,
    ) {
        let Some(buf) = io.bufs.get_mut(k) else {
            return;
        };
        // SRTP from the phone: checked and decrypted before the core sees it
        // (RFC 3711 §3.3); a forged or replayed packet goes no further.
        let n = match (&mut self.srtp.rx, side) {
            (Some(rx), Side::Agent) => match rx.1.unprotect(buf, n) {
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
        let strays = self.core.stray_dropped();
        let forward = self.core.handle_rtp(now, side, from, pkt);
        if self.core.stray_dropped() > strays {
            crate::metrics::metrics().rtp_stray_packets.inc();
        }
        if let Some(f) = forward {
            let fd = match f.side {
                Side::Agent => Some(self.agent.rtp.as_raw_fd()),
                Side::Lead => self.lead.as_ref().map(|l| l.rtp.as_raw_fd()),
            };
            let range = match f.side {
                Side::Agent => self.srtp.outbound(buf, f.range),
                Side::Lead => buf.get(f.range.clone()).map(|_| f.range),
            };
            if let (Some(fd), Some(range)) = (fd, range) {
                io.queue(fd, k, range, f.dest);
            }
        }
        // The lead's audio is analysed, and a recorded call's audio handed
        // to its writer, once the packet is on its way.
        if self.core.has_after_rtp_work() {
            io.flush();
            self.core.after_rtp(now);
        }
    }

    fn on_timer(&mut self, now: Instant, io: &mut Io) {
        let fd = self.agent.rtp.as_raw_fd();
        let Some(out) = io.bufs.first_mut() else {
            return;
        };
        while let Some((dest, n)) = self.core.handle_timeout(now, &mut out[..RX_LEN]) {
            let Some(range) = self.srtp.outbound(out, 0..n) else {
                continue;
            };
            if let Some(bytes) = out.get(range) {
                if let Err(e) = send_to(fd, bytes, dest) {
                    tracing::debug!(error = %e, "generated frame dropped");
                }
            }
        }
        // The beep that hid early media may have ended.
        if self.core.has_held() {
            self.release_held(now, io);
        }
    }

    /// Judges the lead packets held for the answer ([`AgentMediaCore::take_held`])
    /// as packets of the lead leg arriving now, in their order, and sends
    /// what they relay.
    fn release_held(&mut self, now: Instant, io: &mut Io) {
        let mut k = 0;
        while let Some(buf) = io.bufs.get_mut(k) {
            let Some((from, n)) = self.core.take_held(now, &mut buf[..RX_LEN]) else {
                break;
            };
            self.relay_one(now, Side::Lead, io, k, n, from);
            k += 1;
            if k == RX_BATCH {
                io.flush();
                k = 0;
            }
        }
        io.flush();
    }

    fn apply(&mut self, epfd: &OwnedFd, slot: usize, cmd: Command) {
        let now = clock();
        let core = &mut self.core;
        let r = match cmd {
            Command::SetRemote(leg, neg) => core.set_remote(now, leg, neg),
            Command::SetSignalling(leg, host) => core.set_signalling(leg, host),
            Command::AttachLead { id, sockets, seed } => {
                core.attach_lead(id, seed);
                if let Some(old) = self.lead.take() {
                    deregister(epfd, &old);
                }
                register(epfd, &sockets, slot, self.generation, false);
                self.lead = Some(sockets);
                Ok(())
            }
            Command::CloseLeg(id) => {
                let r = core.detach_lead(now, id);
                if r.is_ok() {
                    if let Some(old) = self.lead.take() {
                        deregister(epfd, &old);
                    }
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
                runtime,
            } => core.hand_off_lead(now, id).map(|h| {
                if let Some(sockets) = self.lead.take() {
                    deregister(epfd, &sockets);
                    let player = DropPlayer::new(now, message, cfg);
                    runtime.spawn(super::run_drop(
                        id,
                        sockets,
                        h,
                        player,
                        stop,
                        self.events.clone(),
                    ));
                }
            }),
            Command::Unbridge => {
                core.unbridge(now);
                Ok(())
            }
            Command::Srtp { ours, theirs } => {
                self.srtp.set(ours, theirs);
                Ok(())
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, agent_leg = ?core.agent_leg(), "media command refused");
        }
    }
}

/// One datagram, now (a generated frame).
fn send_to(fd: RawFd, bytes: &[u8], dest: SocketAddr) -> io::Result<()> {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = write_sockaddr(dest, &mut name);
    // SAFETY: `bytes` and `name` are live for the call, with their true sizes.
    let r = unsafe {
        libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            std::ptr::from_ref(&name).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A loop's packet buffers: one set per loop, whatever its number of
/// calls (a call holds no packet buffer of its own: SPEC §6 memory per
/// call). Nothing is kept in them from one socket's turn to the next.
struct Io {
    /// Room after each datagram for the SRTP tag written in place.
    bufs: [[u8; RX_LEN + TAG_LEN]; RX_BATCH],
    names: [libc::sockaddr_storage; RX_BATCH],
    /// Length and source of each datagram of the last read (`None`: not
    /// relayable — truncated, or from an address family we do not use).
    got: [(usize, Option<SocketAddr>); RX_BATCH],
    /// Packets relayed from the last read, waiting for their `sendmmsg`:
    /// the socket they leave from and, per packet, its buffer, bytes and
    /// destination.
    out_fd: RawFd,
    out: [(usize, Range<usize>, SocketAddr); RX_BATCH],
    out_len: usize,
    /// The system calls' headers, kept between calls so a read or a send
    /// sets only the fields it uses (their pointers are set anew before
    /// every call, from the borrows of that call).
    rx_iovs: [libc::iovec; RX_BATCH],
    rx_hdrs: [libc::mmsghdr; RX_BATCH],
    tx_names: [libc::sockaddr_storage; RX_BATCH],
    tx_iovs: [libc::iovec; RX_BATCH],
    tx_hdrs: [libc::mmsghdr; RX_BATCH],
}

// SAFETY: the raw pointers in the headers are written before each system
// call from borrows of this same `Io` and never read otherwise; an `Io`
// moves to its loop's thread whole.
unsafe impl Send for Io {}

fn empty_iov() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

impl Io {
    fn new() -> Box<Self> {
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        Box::new(Io {
            bufs: [[0; RX_LEN + TAG_LEN]; RX_BATCH],
            // SAFETY: all-zero bytes are a valid `sockaddr_storage`
            // (family AF_UNSPEC) and a valid `mmsghdr` (null pointers,
            // zero lengths).
            names: unsafe { std::mem::zeroed() },
            got: [(0, None); RX_BATCH],
            out_fd: -1,
            out: std::array::from_fn(|_| (0, 0..0, nowhere)),
            out_len: 0,
            rx_iovs: std::array::from_fn(|_| empty_iov()),
            // SAFETY: as above.
            rx_hdrs: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            tx_names: unsafe { std::mem::zeroed() },
            tx_iovs: std::array::from_fn(|_| empty_iov()),
            // SAFETY: as above.
            tx_hdrs: unsafe { std::mem::zeroed() },
        })
    }

    /// One `recvmmsg` of up to [`RX_BATCH`] datagrams; `Ok(0)` when none
    /// waits.
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for (((iov, buf), name), hdr) in self
            .rx_iovs
            .iter_mut()
            .zip(self.bufs.iter_mut())
            .zip(self.names.iter_mut())
            .zip(self.rx_hdrs.iter_mut())
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = RX_LEN;
            let h = &mut hdr.msg_hdr;
            h.msg_name = std::ptr::from_mut(name).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = std::ptr::from_mut(iov);
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer, an iovec and an address
        // of `self` that outlive the call, with their true sizes.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.rx_hdrs.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let Ok(n) = usize::try_from(r) else {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        };
        for ((h, name), got) in self
            .rx_hdrs
            .iter()
            .zip(self.names.iter())
            .zip(self.got.iter_mut())
            .take(n)
        {
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            *got = (
                h.msg_len as usize,
                if truncated { None } else { socket_addr(name) },
            );
        }
        Ok(n)
    }

    /// Queues `bufs[k][range]` to `dest` from `fd`; a packet from another
    /// socket first sends what is queued.
    fn queue(&mut self, fd: RawFd, k: usize, range: Range<usize>, dest: SocketAddr) {
        if self.out_len > 0 && self.out_fd != fd {
            self.flush();
        }
        self.out_fd = fd;
        if let Some(slot) = self.out.get_mut(self.out_len) {
            *slot = (k, range, dest);
            self.out_len += 1;
        }
    }

    /// Sends what is queued with `sendmmsg` (sendmmsg(2)); a packet the
    /// kernel refuses is dropped (logged) and the rest still go.
    fn flush(&mut self) {
        let n = std::mem::take(&mut self.out_len);
        if n == 0 {
            return;
        }
        let mut count = 0;
        for (k, range, dest) in self.out.iter().take(n) {
            let Some(bytes) = self.bufs.get_mut(*k).and_then(|b| b.get_mut(range.clone())) else {
                continue;
            };
            let (Some(name), Some(iov), Some(hdr)) = (
                self.tx_names.get_mut(count),
                self.tx_iovs.get_mut(count),
                self.tx_hdrs.get_mut(count),
            ) else {
                break;
            };
            let len = write_sockaddr(*dest, name);
            iov.iov_base = bytes.as_mut_ptr().cast();
            iov.iov_len = bytes.len();
            let h = &mut hdr.msg_hdr;
            h.msg_name = std::ptr::from_mut(name).cast();
            h.msg_namelen = len;
            h.msg_iov = std::ptr::from_mut(iov);
            h.msg_iovlen = 1;
            count += 1;
        }
        let mut off = 0;
        while off < count {
            let Some(rest) = self.tx_hdrs.get_mut(off..count) else {
                break;
            };
            // SAFETY: the headers point at buffers, iovecs and addresses
            // of `self` that outlive the call, with their true sizes.
            let r = unsafe {
                libc::sendmmsg(
                    self.out_fd,
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            match usize::try_from(r) {
                Ok(sent) if sent > 0 => off += sent,
                _ => {
                    // The first of the rest was refused (a full send
                    // buffer, an unreachable address): dropped, as a
                    // router would.
                    tracing::debug!(error = %io::Error::last_os_error(), "RTP packet dropped on send");
                    off += 1;
                }
            }
        }
    }

    /// RTCP is not relayed (each leg's reports describe that leg only):
    /// read and dropped, so the socket's queue never fills. `true` if it
    /// may hold more.
    fn discard(&mut self, fd: RawFd) -> bool {
        for _ in 0..DRAIN_BATCH / RX_BATCH {
            match self.recv(fd) {
                Ok(n) if n < RX_BATCH => return false,
                Ok(_) | Err(_) => {}
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    //! A loop driven turn by turn on this thread, over real 127.0.0.1
    //! sockets: what one `epoll_wait` does, without timing anything.

    use std::net::UdpSocket;
    use std::time::Duration;

    use super::*;
    use crate::config::PortRange;
    use crate::media::g711::G711Law;
    use crate::media::relay::{
        CoreConfig, MediaEvent, MediaEvents, MediaRelay, RelayConfig, StreamSeed,
    };
    use crate::media::sdp::{Codec, Direction, Negotiated};

    fn neg(remote: SocketAddr) -> Negotiated {
        Negotiated {
            remote,
            remote_rtcp: SocketAddr::new(remote.ip(), remote.port() + 1),
            codec: Codec {
                law: G711Law::Pcmu,
                pt: 0,
            },
            dtmf_pt: Some(101),
            direction: Direction::SendRecv,
            ptime: 20,
        }
    }

    fn rtp(seq: u16, fill: u8) -> Vec<u8> {
        let mut b = vec![0x80, 0];
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        b.extend_from_slice(&0xCA_u32.to_be_bytes());
        b.extend_from_slice(&[fill; 160]);
        b
    }

    fn relay() -> MediaRelay {
        // Only its port pool is used; its own loops stay idle.
        MediaRelay::with_threads(
            RelayConfig {
                bind_ip: "127.0.0.1".parse().unwrap(),
                ports: PortRange {
                    first: 43000,
                    last: 43999,
                },
                core: CoreConfig::default(),
                socket_buffer: 1 << 20,
            },
            1,
        )
        .unwrap()
    }

    fn seed(ssrc: u32) -> StreamSeed {
        StreamSeed {
            ssrc,
            seq: 1,
            timestamp: 1,
        }
    }

    /// Places an agent whose phone is `phone` with a lead leg towards
    /// `carrier` on `shard`, bridged unless `bridge` is false; returns the
    /// agent leg, the lead leg, its port and the events.
    fn call(
        relay: &MediaRelay,
        shard: &Shard,
        ssrc: u32,
        phone: SocketAddr,
        carrier: SocketAddr,
        bridge: bool,
    ) -> (LegId, LegId, u16, MediaEvents) {
        let (agent, sockets) = relay.open_sockets().unwrap();
        let (events, rx) = crate::media::relay::events::queue();
        let core = AgentMediaCore::new(CoreConfig::default(), agent.id, seed(ssrc));
        let cmd = |c| shard.send(Msg::Command(agent.id, c)).unwrap();
        shard
            .send(Msg::Open {
                agent: agent.id,
                core: Box::new(core),
                sockets,
                events,
            })
            .unwrap();
        cmd(Command::SetRemote(agent.id, neg(phone)));
        let (lead, sockets) = relay.open_sockets().unwrap();
        cmd(Command::AttachLead {
            id: lead.id,
            sockets,
            seed: seed(ssrc + 1),
        });
        cmd(Command::SetRemote(lead.id, neg(carrier)));
        if bridge {
            cmd(Command::Bridge(lead.id));
        }
        (agent.id, lead.id, lead.local_port, rx)
    }

    /// Everything queued at `s` now: (SSRC, first payload byte).
    fn drain(s: &UdpSocket) -> Vec<(u32, u8)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            if n == 172 && buf[12] != 0xFF {
                got.push((
                    u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
                    buf[12],
                ));
            }
        }
        got
    }

    fn sockets() -> (UdpSocket, UdpSocket) {
        let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
        phone.set_nonblocking(true).unwrap();
        let carrier = UdpSocket::bind("127.0.0.1:0").unwrap();
        (phone, carrier)
    }

    /// Loopback delivers a datagram within the sender's system call; this
    /// only lets a loaded machine's deferred softirq catch up.
    fn settle() {
        std::thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn a_loop_waits_for_its_earliest_timer_plus_the_slack_and_not_for_a_due_one() {
        let (_shard, mut lp) = Shard::new().unwrap();
        assert_eq!(lp.timeout_ms(), -1, "no timer: no timeout");
        let deadline = clock() + Duration::from_millis(10);
        lp.timers.push(Reverse((deadline, 0, 0)));
        let wait = lp.timeout_ms();
        // Never sooner than the deadline (what is left of it once the wait
        // was computed, however long this thread was descheduled), later by
        // the slack, and never more than the whole 10 ms plus the slack.
        let left = libc::c_int::try_from(deadline.saturating_duration_since(clock()).as_millis())
            .unwrap_or(libc::c_int::MAX);
        assert!(
            wait >= left + TIMER_SLACK_MS && wait <= 10 + TIMER_SLACK_MS,
            "waits {wait} ms with {left} ms left"
        );
        lp.timers.push(Reverse((clock(), 0, 0)));
        assert_eq!(lp.timeout_ms(), 0, "a timer due now runs without waiting");
    }

    #[test]
    fn a_flooded_call_does_not_hold_up_another_on_its_loop() {
        let relay = relay();
        let (shard, mut lp) = Shard::new().unwrap();
        let (phone, carrier) = sockets();
        let (phone_at, carrier_at) = (phone.local_addr().unwrap(), carrier.local_addr().unwrap());
        let (_, _, port_a, _ev_a) = call(&relay, &shard, 0xA000, phone_at, carrier_at, true);
        let (_, _, port_b, _ev_b) = call(&relay, &shard, 0xB000, phone_at, carrier_at, true);
        assert!(lp.turn(0));
        let flood = 3 * DRAIN_BATCH + 5;
        for i in 0..flood {
            carrier
                .send_to(&rtp(i as u16, i as u8), ("127.0.0.1", port_a))
                .unwrap();
        }
        carrier
            .send_to(&rtp(7, 0xEE), ("127.0.0.1", port_b))
            .unwrap();
        settle();

        // One turn: at most DRAIN_BATCH of the flooded socket, and the
        // other call's packet in the same turn.
        assert!(lp.turn(0));
        settle();
        let first = drain(&phone);
        let from_a = first.iter().filter(|(s, _)| *s == 0xA000).count();
        assert_eq!(from_a, DRAIN_BATCH, "{first:?}");
        assert!(first.contains(&(0xB000, 0xEE)), "{first:?}");

        // The rest of the flood in later turns, whole and in order.
        let mut all = first;
        for _ in 0..10 {
            assert!(lp.turn(0));
            settle();
            all.extend(drain(&phone));
        }
        let a: Vec<u8> = all
            .iter()
            .filter(|(s, _)| *s == 0xA000)
            .map(|(_, b)| *b)
            .collect();
        assert_eq!(a, (0..flood).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(lp.agents.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_bridge_applies_to_the_lead_packet_read_in_the_same_turn() {
        let relay = relay();
        let (shard, mut lp) = Shard::new().unwrap();
        let (phone, carrier) = sockets();
        let (agent, lead, port, mut events) = call(
            &relay,
            &shard,
            0xC000,
            phone.local_addr().unwrap(),
            carrier.local_addr().unwrap(),
            false,
        );
        assert!(lp.turn(0));
        // Queued before the loop hears of the bridge.
        carrier.send_to(&rtp(1, 0x42), ("127.0.0.1", port)).unwrap();
        shard
            .send(Msg::Command(agent, Command::Bridge(lead)))
            .unwrap();
        settle();
        assert!(lp.turn(0));
        settle();
        assert_eq!(drain(&phone), vec![(0xC000, 0x42)]);
        let mut bridged = false;
        while let Some(e) = events.try_recv() {
            bridged |= matches!(e, MediaEvent::BridgeFirstPacket { lead: l, .. } if l == lead);
        }
        assert!(
            bridged,
            "the packet was relayed as the bridged lead, not as early media"
        );
    }

    #[test]
    fn closing_an_agent_frees_its_ports_and_ends_its_timers() {
        let relay = relay();
        let pairs = relay.free_port_pairs();
        let (shard, mut lp) = Shard::new().unwrap();
        let (phone, carrier) = sockets();
        let (agent, _, _, _ev) = call(
            &relay,
            &shard,
            0xD000,
            phone.local_addr().unwrap(),
            carrier.local_addr().unwrap(),
            false,
        );
        assert!(lp.turn(0));
        assert_eq!(relay.free_port_pairs(), pairs - 2);
        shard.send(Msg::Close(agent)).unwrap();
        assert!(lp.turn(0));
        assert_eq!(relay.free_port_pairs(), pairs);
        assert_eq!(lp.agents.load(Ordering::Relaxed), 0);
        // Its timer entry (the next generated frame) is stale now:
        // running it sends nothing.
        let mut buf = [0u8; 2048];
        while phone.recv_from(&mut buf).is_ok() {}
        std::thread::sleep(Duration::from_millis(25));
        assert!(lp.turn(0));
        settle();
        assert!(
            phone.recv_from(&mut buf).is_err(),
            "a frame of a closed call"
        );
        drop(shard);
        assert!(!lp.turn(0), "the loop ends with its last handle");
    }

    /// SPEC §6 memory per call: a loop keeps a `Call` per agent in its
    /// slots and the agent's core on the heap, whether or not the call
    /// uses SRTP, detection or recording; those parts are boxed on use.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_agent_without_srtp_detection_or_recording_stays_small() {
        assert!(
            std::mem::size_of::<Option<Call>>() <= 128,
            "{}",
            std::mem::size_of::<Option<Call>>()
        );
        assert!(
            std::mem::size_of::<AgentMediaCore>() <= 800,
            "{}",
            std::mem::size_of::<AgentMediaCore>()
        );
    }
}
