//! RTP relay benchmark on real loopback sockets (SPEC §6), powerdial's relay
//! and, with `--peer-rtpengine`, rtpengine side by side on the same streams.
//!
//! (a) switch latency: from `bridge()` to the first lead packet arriving at
//!     the "agent phone" socket (the carrier sends right after the call);
//! (b) relayed packets/s with N concurrent bridged calls, 50 packets/s each
//!     direction, with loss and added latency (send → kernel receive time at
//!     the far socket, p50/p99/max), and the relay's CPU time (its worker
//!     threads, or the rtpengine process, read from /proc) to give packets/s
//!     per core of relay CPU.
//!
//! The generator: `--groups` pairs of sockets (a "phones" socket and a
//! "carriers" socket), each with its own sender thread (`sendmmsg` of one
//! 1 ms slot's packets, a call's packets 20 ms apart) and one receiver
//! thread per socket (`recvmmsg`, `SO_TIMESTAMPNS`: the latency is the
//! kernel's receive time, not when our thread ran). Each packet carries its
//! send time (CLOCK_REALTIME, taken just before its `sendmmsg`). A slot
//! that starts more than `--late-ms` late is counted; a trial with more
//! than 0.1 % such slots is flagged LATE and left out of the comparison.
//!
//! rtpengine (`/usr/bin/rtpengine`, userspace forwarding, settings in
//! `benches/peers/rtpengine.conf`) is started by the bench in the
//! foreground on 127.0.0.1 with `--num-threads` = `--relay-threads`; each
//! call is set up over its ng protocol (`offer` from the carrier, `answer`
//! from the phone, `delete` after the trial). powerdial's relay runs
//! `--relay-threads` event loops (`rtp-relay-N` threads); its CPU is theirs
//! plus the bench's tokio workers' (`relay-worker`, where recording writers
//! run with `--record`).
//!
//! A plain `harness = false` binary: criterion's statistics target
//! micro-benchmarks, this measures a running system.
//!
//! With `--srtp` the agent legs are SRTP (RFC 3711, as for phones on TLS):
//! the "phones" encrypt what they send and decrypt what they receive, the
//! relay does the same on its side (powerdial only).
//!
//! With `--amd` every lead leg runs answering-machine detection for the
//! whole run (relay-side cost of SPEC §4 `amd`, the detector kept
//! listening); with `--record` every call is recorded (frames to a writer
//! task per call, assembled in memory as the real writer does).
//!
//!     cargo bench --bench relay -- [--calls 300,500,1000] [--seconds 5] [--switches 200]
//!         [--relay-threads 2] [--groups 2] [--late-ms 5] [--peer-rtpengine] [--srtp] [--amd] [--record]
//!         [--rx-poll-us 0] [--gen-rt]
//!
//! `--rx-poll-us N`: the receivers read their sockets every
//! N µs instead of sleeping in `recvmmsg`, so a relay's send never wakes
//! one (on loopback the sender's system call pays for waking the reader,
//! which a relay sending to a NIC does not; both relays are measured
//! alike). `--gen-rt`: the sender threads run `SCHED_FIFO` (root), so a
//! loaded machine does not make their 1 ms slots late (only they: real-time
//! relays or receivers hit the kernel's real-time throttling, 50 ms stalls).
//!
//! `--relay-nice N`: the relay's event loops run at nice N (a relay given
//! its CPU ahead of the machine's other work, as rtpengine's `priority`
//! setting does for its threads; rtpengine itself is left at nice 0).
//!
//! `--pin-gen CPUS` / `--pin-relay CPUS` (lists such as `0` or `0,1`): the
//! generator's threads (senders and receivers) and the relay's event loops
//! are held to those CPUs (`sched_setaffinity`), so the two can be split
//! onto cores of their own to see which one falls behind when the machine
//! is full (powerdial only: rtpengine is another process, pinned with
//! `taskset`). Each trial prints the share of the machine each used and
//! how long each side's threads were ready but waited for a CPU
//! (`schedstat`); a relay whose loops waited more than a tenth of the
//! window is flagged RELAY STARVED and, like a late generator, not
//! counted: its latency then measures the machine, not the relay.

#![allow(clippy::disallowed_methods)] // a load driver reads the clock

#[path = "peers/rtpengine_ng.rs"]
mod ng;

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use powerdial::config::PortRange;
use powerdial::media::amd::AmdConfig;
use powerdial::media::g711::G711Law;
use powerdial::media::recording::{Recording, TapFrame};
use powerdial::media::relay::{AgentMedia, CoreConfig, MediaRelay, RelayConfig};
use powerdial::media::sdp::{Codec, Direction, Negotiated};
use powerdial::media::srtp::{MasterKey, SrtpReceiver, SrtpSender, TAG_LEN};
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

fn header(buf: &mut [u8], seq: u16, ts: u32, ssrc: u32) {
    buf[0] = 0x80;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn big_socket() -> StdUdp {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&a.into()).unwrap();
    s.into()
}

/// utime + stime (clock ticks) of this process's threads whose name
/// starts with `prefix`.
fn threads_cpu_ticks(prefix: &str) -> u64 {
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            if !stat[open + 1..close].starts_with(prefix) {
                continue;
            }
            total += stat_ticks(&stat[close + 1..]);
        }
    }
    total
}

/// Voluntary context switches (a thread blocking, then woken: one per
/// sleep) from a /proc `status` file.
fn voluntary_switches(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Voluntary context switches of this process's threads whose name
/// starts with `prefix`.
fn threads_switches(prefix: &str) -> u64 {
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if name.starts_with(prefix) {
                let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                total += voluntary_switches(&status);
            }
        }
    }
    total
}

/// Nanoseconds the threads of `task_dir` (`/proc/self/task` or
/// `/proc/PID/task`) whose name starts with `prefix` spent runnable but
/// waiting for a CPU (the second field of each thread's `schedstat`,
/// run-queue wait): a thread that is ready and does not run is starved
/// by the others on its cores, however little CPU it used.
fn runqueue_wait_ns(task_dir: &str, prefix: &str) -> u64 {
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir(task_dir) {
        for t in dir.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !name.starts_with(prefix) {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .nth(1)
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Voluntary context switches of all of a process's threads.
fn process_switches(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            total += voluntary_switches(&status);
        }
    }
    total
}

/// utime + stime from the fields after a /proc stat line's `(comm)`.
fn stat_ticks(rest: &str) -> u64 {
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// utime + stime (clock ticks) of a whole process (all its threads).
fn process_cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|c| stat_ticks(&s[c + 1..])))
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn switch_latency(relay: &MediaRelay, samples: usize) {
    let phone = big_socket();
    phone
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let carrier = big_socket();
    let (media, _events) = relay.open_agent().unwrap();
    let agent = media.agent_leg();
    media
        .set_remote(agent.id, neg(phone.local_addr().unwrap()))
        .unwrap();
    let mut lat = Vec::with_capacity(samples);
    let mut pkt = [0x42u8; 172];
    let mut buf = [0u8; 2048];
    for i in 0..samples {
        let lead = media.open_lead_leg().unwrap();
        let lead_addr: SocketAddr = ([127, 0, 0, 1], lead.local_port).into();
        media
            .set_remote(lead.id, neg(carrier.local_addr().unwrap()))
            .unwrap();
        media.play_tone().unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
        header(&mut pkt, i as u16, i as u32 * 160, 0x5EED);
        let t0 = Instant::now();
        media.bridge(lead.id).unwrap();
        carrier.send_to(&pkt, lead_addr).unwrap();
        loop {
            // Generated frames may still be in flight: wait for the lead's bytes.
            match phone.recv_from(&mut buf) {
                Ok((n, _)) if n == 172 && buf[12..n].iter().all(|b| *b == 0x42) => {
                    lat.push(t0.elapsed().as_nanos() as u64);
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("lead packet lost in switch sample {i}: {e}"),
            }
        }
        media.close_leg(lead.id).unwrap();
    }
    drop(media);
    let us = |n: u64| n as f64 / 1000.0;
    println!(
        "switch latency (bridge() → first lead packet at the agent socket), {} samples: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        lat.len(),
        us(pct(&mut lat, 0.5)),
        us(pct(&mut lat, 0.99)),
        us(pct(&mut lat, 1.0))
    );
}

/// After the 12-byte RTP header: this magic (u32 LE), the call index (u32
/// LE), the direction (u8: 1 phone → carrier, 2 carrier → phone) and the
/// send time (u64 LE, CLOCK_REALTIME ns, the clock of `SO_TIMESTAMPNS`).
const MAGIC: u32 = 0x5245_4C59;
const PKT: usize = 172;
/// Datagrams per `recvmmsg`.
const RX_BATCH: usize = 64;

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Where one call's phone and carrier send (the relay's two ports).
struct CallTarget {
    phone_to: socket2::SockAddr,
    carrier_to: socket2::SockAddr,
}

/// One generator group: a socket for its calls' phones, one for their
/// carriers; calls `c` with `c % groups == g`.
struct Group {
    phones: Arc<StdUdp>,
    carriers: Arc<StdUdp>,
}

impl Group {
    fn new() -> Self {
        Group {
            phones: Arc::new(big_socket()),
            carriers: Arc::new(big_socket()),
        }
    }
    fn phones_addr(&self) -> SocketAddr {
        self.phones.local_addr().unwrap()
    }
    fn carriers_addr(&self) -> SocketAddr {
        self.carriers.local_addr().unwrap()
    }
}

/// What each trial shares.
#[derive(Clone)]
struct Opts {
    seconds: u64,
    groups: usize,
    late: Duration,
    srtp: Option<MasterKey>,
    extras: Extras,
    /// Receivers poll their sockets this often instead of sleeping in
    /// `recvmmsg` (`--rx-poll-us`, 0: blocking receivers).
    rx_poll: Option<Duration>,
    /// The generator's sender threads at real-time priority (`--gen-rt`).
    rt: bool,
    /// CPUs the generator's threads are held to (`--pin-gen`; empty: any).
    pin_gen: Vec<usize>,
    /// The relay's event loops, and rtpengine's `--num-threads`.
    relay_threads: usize,
}

#[derive(Default)]
struct RxStats {
    lat: Vec<u64>,
    in_window: u64,
    without_timestamp: u64,
}

#[derive(Default)]
struct TxStats {
    sent_in_window: u64,
    errors: u64,
    slots: u64,
    late_slots: u64,
    max_late: Duration,
}

/// The measurement window, by the packets' send times (CLOCK_REALTIME ns).
#[derive(Clone, Copy)]
struct Window {
    from: u64,
    to: u64,
}

impl Window {
    fn holds(&self, t: u64) -> bool {
        t >= self.from && t < self.to
    }
}

fn sender(
    g: usize,
    group: &Group,
    targets: Vec<(usize, &CallTarget)>,
    base: Instant,
    total: Duration,
    window: Window,
    opts: &Opts,
) -> std::thread::JoinHandle<TxStats> {
    const SLOTS: usize = 20; // 1 ms slots spread the calls over the 20 ms frame
    let (phones, carriers) = (group.phones.clone(), group.carriers.clone());
    // Raw addresses for `sendmmsg`: (call index, to relay from phone, to relay from carrier).
    let targets: Vec<(usize, socket2::SockAddr, socket2::SockAddr)> = targets
        .into_iter()
        .map(|(c, t)| (c, t.phone_to.clone(), t.carrier_to.clone()))
        .collect();
    let srtp = opts.srtp.clone();
    let late = opts.late;
    let rt = opts.rt;
    let cpus = opts.pin_gen.clone();
    std::thread::Builder::new()
        .name(format!("gen-send-{g}"))
        .spawn(move || {
            pin(0, &cpus, &format!("gen-send-{g}"));
            if rt {
                // The clock of the measurement: on a machine shared with
                // builds, a normal thread's 1 ms timers run many ms late.
                real_time(0, &format!("gen-send-{g}"));
            }
            let mut slots: Vec<Vec<usize>> = vec![Vec::new(); SLOTS];
            for i in 0..targets.len() {
                slots[i % SLOTS].push(i);
            }
            let most = slots.iter().map(Vec::len).max().unwrap_or(0).max(1);
            let mut protect: Vec<SrtpSender> = match &srtp {
                Some(k) => (0..targets.len()).map(|_| SrtpSender::new(k)).collect(),
                None => Vec::new(),
            };
            let mut bufs = vec![[0xFFu8; PKT + TAG_LEN]; most];
            let mut stamps = vec![0u64; most];
            let mut iovs: Vec<libc::iovec> = (0..most)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect();
            // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
            let mut hdrs: Vec<libc::mmsghdr> =
                (0..most).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut st = TxStats::default();
            let mut tick = 0u64;
            'run: loop {
                for (s, slot) in slots.iter().enumerate() {
                    let due = Duration::from_millis(20 * tick + s as u64);
                    if due >= total {
                        break 'run;
                    }
                    let now = base.elapsed();
                    if let Some(wait) = due.checked_sub(now) {
                        std::thread::sleep(wait);
                    } else {
                        let l = now - due;
                        st.max_late = st.max_late.max(l);
                        if l > late {
                            st.late_slots += 1;
                        }
                    }
                    st.slots += 1;
                    for dir in [1u8, 2] {
                        let sock = if dir == 1 { &phones } else { &carriers };
                        for (k, &i) in slot.iter().enumerate() {
                            let (c, to_a, to_l) = &targets[i];
                            let buf = &mut bufs[k];
                            header(
                                buf,
                                tick as u16,
                                (tick * 160) as u32,
                                *c as u32 * 2 + u32::from(dir),
                            );
                            buf[12..16].copy_from_slice(&MAGIC.to_le_bytes());
                            buf[16..20].copy_from_slice(&(*c as u32).to_le_bytes());
                            buf[20] = dir;
                            let t = realtime_ns();
                            stamps[k] = t;
                            buf[21..29].copy_from_slice(&t.to_le_bytes());
                            let len = match protect.get_mut(i) {
                                Some(tx) if dir == 1 => tx.protect(buf, PKT).unwrap(),
                                _ => PKT,
                            };
                            iovs[k] = libc::iovec {
                                iov_base: buf.as_mut_ptr().cast(),
                                iov_len: len,
                            };
                            let to = if dir == 1 { to_a } else { to_l };
                            let h = &mut hdrs[k].msg_hdr;
                            h.msg_name = to.as_ptr() as *mut libc::c_void;
                            h.msg_namelen = to.len();
                            h.msg_iov = &mut iovs[k];
                            h.msg_iovlen = 1;
                        }
                        let n = slot.len();
                        let mut off = 0;
                        while off < n {
                            // SAFETY: hdrs[off..n] point at live buffers, iovecs
                            // and addresses owned by this thread.
                            let r = unsafe {
                                libc::sendmmsg(
                                    sock.as_raw_fd(),
                                    hdrs[off..].as_mut_ptr(),
                                    (n - off) as u32,
                                    0,
                                )
                            };
                            if r <= 0 {
                                st.errors += (n - off) as u64;
                                break;
                            }
                            for t in &stamps[off..off + r as usize] {
                                if window.holds(*t) {
                                    st.sent_in_window += 1;
                                }
                            }
                            off += r as usize;
                        }
                    }
                }
                tick += 1;
            }
            st
        })
        .unwrap()
}

/// Holds thread `tid` (0: this one) to `cpus` (none: leaves it be); says
/// so if it cannot.
fn pin(tid: libc::pid_t, cpus: &[usize], who: &str) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes
    // inside it for any index below CPU_SETSIZE, checked here.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|c| **c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        eprintln!(
            "{who}: not pinned to {cpus:?} ({})",
            std::io::Error::last_os_error()
        );
    }
}

/// Thread ids of this process's threads whose name starts with `prefix`.
fn thread_ids(prefix: &str) -> Vec<libc::pid_t> {
    let mut ids = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if name.starts_with(prefix) {
                if let Some(id) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

fn cpu_list(s: Option<String>) -> Vec<usize> {
    s.map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Puts thread `tid` (0: this one) in `SCHED_FIFO` at priority 1 (needs
/// root); says so if it cannot.
fn real_time(tid: libc::pid_t, who: &str) {
    let p = libc::sched_param { sched_priority: 1 };
    // SAFETY: sets a thread's policy from a live sched_param.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &p) } != 0 {
        eprintln!(
            "{who}: no real-time priority ({})",
            std::io::Error::last_os_error()
        );
    }
}

/// The kernel's receive time of a `recvmmsg` message (`SO_TIMESTAMPNS`).
fn rx_timestamp(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: the control buffer was filled by the kernel for this header.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

fn receiver(
    name: String,
    sock: Arc<StdUdp>,
    dir: u8,
    stop: Arc<AtomicBool>,
    key: Option<MasterKey>,
    window: Window,
    opts: &Opts,
) -> std::thread::JoinHandle<RxStats> {
    let (poll, cpus) = (opts.rx_poll, opts.pin_gen.clone());
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            pin(0, &cpus, &name);
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            // Polling: the socket is read empty every `poll`, and nobody
            // sleeps on it, so the relay's send does not also pay for
            // waking this thread (on loopback the sender's system call
            // delivers the datagram and wakes the reader; across a NIC it
            // would not). The latency is the kernel's receive time either way.
            let flags = if poll.is_some() {
                libc::MSG_DONTWAIT
            } else {
                libc::MSG_WAITFORONE
            };
            let on: libc::c_int = 1;
            // SAFETY: a plain int option on our own socket.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
            let mut bufs = vec![[0u8; 2048]; RX_BATCH];
            let mut ctrl = vec![[0u64; 8]; RX_BATCH];
            let mut iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: an all-zero mmsghdr is valid.
            let mut hdrs: Vec<libc::mmsghdr> = (0..RX_BATCH)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect();
            for (k, h) in hdrs.iter_mut().enumerate() {
                h.msg_hdr.msg_iov = &mut iovs[k];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = ctrl[k].as_mut_ptr().cast();
            }
            let mut st = RxStats::default();
            // One SRTP stream per relay output stream (its SSRC).
            let mut streams: std::collections::HashMap<u32, SrtpReceiver> =
                std::collections::HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                for h in hdrs.iter_mut() {
                    h.msg_hdr.msg_controllen = std::mem::size_of::<[u64; 8]>();
                    h.msg_hdr.msg_flags = 0;
                    h.msg_len = 0;
                }
                // SAFETY: every header points at this thread's buffers.
                let r = unsafe {
                    libc::recvmmsg(
                        sock.as_raw_fd(),
                        hdrs.as_mut_ptr(),
                        RX_BATCH as u32,
                        flags,
                        std::ptr::null_mut(),
                    )
                };
                if r <= 0 {
                    if let Some(p) = poll {
                        std::thread::sleep(p);
                    }
                    continue;
                }
                for k in 0..r as usize {
                    let at = rx_timestamp(&hdrs[k].msg_hdr).unwrap_or_else(|| {
                        st.without_timestamp += 1;
                        realtime_ns()
                    });
                    let mut n = hdrs[k].msg_len as usize;
                    let buf = &mut bufs[k];
                    if let Some(key) = &key {
                        if n < 12 {
                            continue;
                        }
                        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                        match streams
                            .entry(ssrc)
                            .or_insert_with(|| SrtpReceiver::new(key))
                            .unprotect(buf, n)
                        {
                            Ok(m) => n = m,
                            Err(_) => continue,
                        }
                    }
                    // Silence frames from before the bridge carry no magic.
                    if n < 29 || buf[12..16] != MAGIC.to_le_bytes() || buf[20] != dir {
                        continue;
                    }
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&buf[21..29]);
                    let sent = u64::from_le_bytes(t);
                    if window.holds(sent) {
                        st.in_window += 1;
                        st.lat.push(at.saturating_sub(sent));
                    }
                }
            }
            st
        })
        .unwrap()
}

/// One trial's figures.
struct Trial {
    relay: &'static str,
    calls: usize,
    sent: u64,
    received: u64,
    send_errors: u64,
    seconds: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    p99_to_lead_us: f64,
    p99_to_agent_us: f64,
    relay_cpu_s: f64,
    /// The relay's threads' voluntary context switches (wake-ups) in the window.
    relay_wakeups: u64,
    gen_cpu_s: f64,
    /// Time the relay's threads, and the generator's, were ready to run
    /// but waited for a CPU, in the window (summed over their threads).
    relay_wait_s: f64,
    gen_wait_s: f64,
    slots: u64,
    late_slots: u64,
    max_late: Duration,
    without_timestamp: u64,
    load: String,
    /// The relay's event loops (`--relay-threads`).
    relay_threads: usize,
}

impl Trial {
    fn loss(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
    fn per_core(&self) -> f64 {
        if self.relay_cpu_s > 0.0 {
            self.received as f64 / self.relay_cpu_s
        } else {
            f64::NAN
        }
    }
    /// The generator's timers ran late: the trial is not counted.
    fn late(&self) -> bool {
        self.late_slots * 1000 > self.slots
    }
    /// Share of the window each relay loop spent ready to run but waiting
    /// for a CPU (run-queue wait over the loops).
    fn relay_waited(&self) -> f64 {
        self.relay_wait_s / (self.relay_threads.max(1) as f64 * self.seconds as f64)
    }
    /// The relay was starved: its loops waited for a CPU more than a tenth
    /// of the window (the generator, or anything else on the machine, held
    /// the cores). Its latency then measures the machine, not the relay:
    /// not counted, as a late generator is not.
    fn starved(&self) -> bool {
        self.relay_waited() > 0.10
    }
    fn counted(&self) -> Result<(), String> {
        if self.late() {
            Err("generator late".into())
        } else if self.starved() {
            Err(format!(
                "{} waited for a CPU {:.0} % of the time",
                self.relay,
                self.relay_waited() * 100.0
            ))
        } else {
            Ok(())
        }
    }
    fn print(&self, opts: &Opts) {
        println!(
            "{} {}{}{}{} calls: sent {}, relayed {} in {} s = {:.0} pkt/s, loss {} ({:.3}%), send errors {}; \
latency send→receive p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (phone→carrier p99 {:.0} µs, carrier→phone p99 {:.0} µs); \
relay CPU {:.2} s = {:.0} pkt/s per core, {} wake-ups ({:.1} packets each); generator CPU {:.2} s \
(cores busy: relay {:.2}, generator {:.2}; ready but waiting for a CPU, ms per s: relay {:.0}, generator {:.0}), slots more than {} ms late {} of {} (max {:.1} ms){}{}; load {}",
            self.relay,
            if opts.srtp.is_some() && self.relay == "powerdial" { "SRTP agent legs, " } else { "" },
            if opts.extras.amd && self.relay == "powerdial" { "AMD on every lead, " } else { "" },
            if opts.extras.record && self.relay == "powerdial" { "every call recorded, " } else { "" },
            self.calls,
            self.sent,
            self.received,
            self.seconds,
            self.received as f64 / self.seconds as f64,
            self.loss(),
            100.0 * self.loss() as f64 / self.sent.max(1) as f64,
            self.send_errors,
            self.p50_us,
            self.p99_us,
            self.max_us,
            self.p99_to_lead_us,
            self.p99_to_agent_us,
            self.relay_cpu_s,
            self.per_core(),
            self.relay_wakeups,
            self.received as f64 / self.relay_wakeups.max(1) as f64,
            self.gen_cpu_s,
            self.relay_cpu_s / self.seconds as f64,
            self.gen_cpu_s / self.seconds as f64,
            self.relay_wait_s * 1000.0 / self.seconds as f64,
            self.gen_wait_s * 1000.0 / self.seconds as f64,
            opts.late.as_millis(),
            self.late_slots,
            self.slots,
            self.max_late.as_secs_f64() * 1000.0,
            match self.counted() {
                Ok(()) => String::new(),
                Err(why) if self.late() => format!(" LATE (not counted: {why})"),
                Err(why) => format!(" RELAY STARVED (not counted: {why})"),
            },
            if self.without_timestamp > 0 { format!(", {} without kernel timestamp", self.without_timestamp) } else { String::new() },
            self.load,
        );
    }
}

/// Sends the calls' streams through whatever `targets` name and measures.
fn run_traffic(
    relay: &'static str,
    groups: &[Group],
    targets: &[CallTarget],
    opts: &Opts,
    relay_cpu: &dyn Fn() -> (u64, u64, u64),
) -> Trial {
    let load = loadavg();
    let seconds = opts.seconds;
    let base = Instant::now();
    let base_rt = realtime_ns();
    let measure_from = Duration::from_secs(1);
    let measure_to = measure_from + Duration::from_secs(seconds);
    let window = Window {
        from: base_rt + measure_from.as_nanos() as u64,
        to: base_rt + measure_to.as_nanos() as u64,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut rx_lead = Vec::new();
    let mut rx_agent = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        // Phone → carrier packets arrive at the carriers' socket, and back.
        rx_lead.push(receiver(
            format!("gen-rx-{g}-c"),
            group.carriers.clone(),
            1,
            stop.clone(),
            None,
            window,
            opts,
        ));
        let key = if relay == "powerdial" {
            opts.srtp.clone()
        } else {
            None
        };
        rx_agent.push(receiver(
            format!("gen-rx-{g}-p"),
            group.phones.clone(),
            2,
            stop.clone(),
            key,
            window,
            opts,
        ));
    }
    let total = measure_to + Duration::from_millis(500);
    let senders: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let mine = targets
                .iter()
                .enumerate()
                .filter(|(c, _)| c % groups.len() == g)
                .collect();
            sender(g, group, mine, base, total, window, opts)
        })
        .collect();
    let sleep_until = |d: Duration| {
        if let Some(w) = d.checked_sub(base.elapsed()) {
            std::thread::sleep(w);
        }
    };
    sleep_until(measure_from);
    let gen_wait = || runqueue_wait_ns("/proc/self/task", "gen-");
    let (cpu0, gen0, gw0) = (relay_cpu(), threads_cpu_ticks("gen-"), gen_wait());
    sleep_until(measure_to);
    let (cpu1, gen1, gw1) = (relay_cpu(), threads_cpu_ticks("gen-"), gen_wait());
    let mut tx = TxStats::default();
    for s in senders {
        let s = s.join().unwrap();
        tx.sent_in_window += s.sent_in_window;
        tx.errors += s.errors;
        tx.slots += s.slots;
        tx.late_slots += s.late_slots;
        tx.max_late = tx.max_late.max(s.max_late);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let join = |v: Vec<std::thread::JoinHandle<RxStats>>| {
        let mut all = RxStats::default();
        for h in v {
            let s = h.join().unwrap();
            all.lat.extend(s.lat);
            all.in_window += s.in_window;
            all.without_timestamp += s.without_timestamp;
        }
        all
    };
    let (mut l1, mut l2) = (join(rx_lead), join(rx_agent));
    let mut all: Vec<u64> = l1.lat.iter().chain(&l2.lat).copied().collect();
    let us = |n: u64| n as f64 / 1000.0;
    let hz = 100.0; // USER_HZ on Linux
    Trial {
        relay,
        calls: targets.len(),
        sent: tx.sent_in_window,
        received: l1.in_window + l2.in_window,
        send_errors: tx.errors,
        seconds,
        p50_us: us(pct(&mut all, 0.5)),
        p99_us: us(pct(&mut all, 0.99)),
        max_us: us(pct(&mut all, 1.0)),
        p99_to_lead_us: us(pct(&mut l1.lat, 0.99)),
        p99_to_agent_us: us(pct(&mut l2.lat, 0.99)),
        relay_cpu_s: (cpu1.0 - cpu0.0) as f64 / hz,
        relay_wakeups: cpu1.1.saturating_sub(cpu0.1),
        gen_cpu_s: (gen1 - gen0) as f64 / hz,
        relay_wait_s: cpu1.2.saturating_sub(cpu0.2) as f64 / 1e9,
        gen_wait_s: gw1.saturating_sub(gw0) as f64 / 1e9,
        slots: tx.slots,
        late_slots: tx.late_slots,
        max_late: tx.max_late,
        without_timestamp: l1.without_timestamp + l2.without_timestamp,
        load,
        relay_threads: opts.relay_threads,
    }
}

/// What else the relay does on every call of the load (`--amd`, `--record`).
#[derive(Clone, Copy)]
struct Extras {
    amd: bool,
    record: bool,
}

fn to_sockaddr(a: SocketAddr) -> socket2::SockAddr {
    a.into()
}

fn powerdial_trial(
    relay: &MediaRelay,
    rt: &tokio::runtime::Runtime,
    calls: usize,
    opts: &Opts,
) -> Trial {
    let groups: Vec<Group> = (0..opts.groups).map(|_| Group::new()).collect();
    let mut media: Vec<AgentMedia> = Vec::with_capacity(calls);
    let mut targets = Vec::with_capacity(calls);
    let extras = opts.extras;
    rt.block_on(async {
        for c in 0..calls {
            let g = &groups[c % groups.len()];
            let (m, events) = relay.open_agent().unwrap();
            drop(events);
            let a = m.agent_leg();
            m.set_remote(a.id, neg(g.phones_addr())).unwrap();
            let l = m.open_lead_leg().unwrap();
            m.set_remote(l.id, neg(g.carriers_addr())).unwrap();
            m.bridge(l.id).unwrap();
            if extras.amd {
                // Listening for the whole run: never decided.
                let cfg = AmdConfig {
                    initial_silence_ms: u32::MAX / 4,
                    total_analysis_ms: u32::MAX / 4,
                    greeting_ms: u32::MAX / 4,
                    max_words: u32::MAX,
                    ..AmdConfig::default()
                };
                m.start_amd(l.id, cfg, false).unwrap();
            }
            if extras.record {
                // As the call engine's writer does, without the file.
                let (tx, mut rx) = tokio::sync::mpsc::channel::<TapFrame>(500);
                tokio::spawn(async move {
                    let mut rec = Recording::new(Instant::now());
                    while let Some(f) = rx.recv().await {
                        rec.push(&f.decode());
                        std::hint::black_box(rec.take_ready());
                    }
                    std::hint::black_box(rec.seconds());
                });
                m.record(l.id, tx).unwrap();
            }
            if let Some(k) = &opts.srtp {
                m.set_srtp(k.clone(), k.clone()).unwrap();
            }
            targets.push(CallTarget {
                phone_to: to_sockaddr(SocketAddr::from(([127, 0, 0, 1], a.local_port))),
                carrier_to: to_sockaddr(SocketAddr::from(([127, 0, 0, 1], l.local_port))),
            });
            media.push(m);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let trial = run_traffic("powerdial", &groups, &targets, opts, &|| {
        (
            threads_cpu_ticks("relay-worker") + threads_cpu_ticks("rtp-relay"),
            threads_switches("relay-worker") + threads_switches("rtp-relay"),
            runqueue_wait_ns("/proc/self/task", "relay-worker")
                + runqueue_wait_ns("/proc/self/task", "rtp-relay"),
        )
    });
    rt.block_on(async move {
        drop(media);
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    trial
}

fn rtpengine_trial(peer: &mut ng::Rtpengine, calls: usize, opts: &Opts) -> Trial {
    let groups: Vec<Group> = (0..opts.groups).map(|_| Group::new()).collect();
    let mut targets = Vec::with_capacity(calls);
    for c in 0..calls {
        let g = &groups[c % groups.len()];
        let call = peer
            .call(c, g.carriers_addr(), g.phones_addr())
            .unwrap_or_else(|e| panic!("rtpengine call {c}: {e}"));
        targets.push(CallTarget {
            phone_to: to_sockaddr(call.from_phone),
            carrier_to: to_sockaddr(call.from_carrier),
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let pid = peer.pid();
    let trial = run_traffic("rtpengine", &groups, &targets, opts, &|| {
        (
            process_cpu_ticks(pid),
            process_switches(pid),
            runqueue_wait_ns(&format!("/proc/{pid}/task"), ""),
        )
    });
    for c in 0..calls {
        if let Err(e) = peer.delete(c) {
            eprintln!("rtpengine delete {c}: {e}");
        }
    }
    trial
}

fn start_rtpengine(threads: usize) -> ng::Rtpengine {
    let conf =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/rtpengine.conf");
    // A free UDP port for its ng listener (ours, released just before).
    let ng_port = StdUdp::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::env::temp_dir().join(format!(
        "powerdial-bench-rtpengine-{}.log",
        std::process::id()
    ));
    let peer = ng::Rtpengine::start(&conf, ng_port, (40000, 49999), threads, &log)
        .unwrap_or_else(|e| panic!("starting rtpengine (log {}): {e}", log.display()));
    println!(
        "rtpengine pid {} on 127.0.0.1:{ng_port} (ng), RTP ports 40000-49999, --num-threads={threads}, log {}",
        peer.pid(),
        log.display()
    );
    peer
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let calls: Vec<usize> = arg("--calls")
        .unwrap_or_else(|| "300,500,1000".into())
        .split(',')
        .filter_map(|c| c.parse().ok())
        .collect();
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5);
    let switches: usize = arg("--switches")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads: usize = arg("--relay-threads")
        .or_else(|| arg("--workers"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(cores);
    let opts = Opts {
        seconds,
        groups: arg("--groups")
            .and_then(|s| s.parse().ok())
            .unwrap_or(2)
            .max(1),
        late: Duration::from_millis(arg("--late-ms").and_then(|s| s.parse().ok()).unwrap_or(5)),
        srtp: args.iter().any(|a| a == "--srtp").then(MasterKey::random),
        extras: Extras {
            amd: args.iter().any(|a| a == "--amd"),
            record: args.iter().any(|a| a == "--record"),
        },
        rx_poll: arg("--rx-poll-us")
            .and_then(|s| s.parse().ok())
            .map(Duration::from_micros)
            .filter(|d| !d.is_zero()),
        rt: args.iter().any(|a| a == "--gen-rt"),
        pin_gen: cpu_list(arg("--pin-gen")),
        relay_threads: threads,
    };
    let pin_relay = cpu_list(arg("--pin-relay"));
    let relay_nice: Option<libc::c_int> = arg("--relay-nice").and_then(|s| s.parse().ok());
    let with_rtpengine = args.iter().any(|a| a == "--peer-rtpengine");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("relay-worker")
        .enable_all()
        .build()
        .unwrap();
    let relay = MediaRelay::with_threads(
        RelayConfig {
            bind_ip: "127.0.0.1".parse().unwrap(),
            ports: PortRange {
                first: 30000,
                last: 39999,
            },
            core: CoreConfig::default(),
            socket_buffer: 1 << 20,
        },
        threads,
    )
    .unwrap();
    if !pin_relay.is_empty() || relay_nice.is_some() {
        // A thread names itself once it runs: wait for all of them.
        let mut loops = thread_ids("rtp-relay");
        for _ in 0..100 {
            if loops.len() >= threads {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            loops = thread_ids("rtp-relay");
        }
        for tid in loops {
            pin(tid, &pin_relay, "rtp-relay");
            if let Some(n) = relay_nice {
                // SAFETY: sets one thread's nice value (Linux: per thread).
                if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, n) } != 0 {
                    eprintln!(
                        "rtp-relay: nice {n} not set ({})",
                        std::io::Error::last_os_error()
                    );
                }
            }
        }
        println!("relay event loops pinned to CPUs {pin_relay:?}, nice {relay_nice:?}");
    }
    if !opts.pin_gen.is_empty() {
        println!("generator threads pinned to CPUs {:?}", opts.pin_gen);
    }
    println!(
        "relay threads {threads} (powerdial event loops{}), generator groups {}, receivers {}, senders {}, {} cores, load {}",
        if with_rtpengine {
            ", rtpengine --num-threads"
        } else {
            ""
        },
        opts.groups,
        opts.rx_poll.map_or("blocking".to_string(), |p| format!("polling every {} µs", p.as_micros())),
        if opts.rt { "SCHED_FIFO" } else { "normal priority" },
        cores,
        loadavg()
    );
    if switches > 0 {
        rt.block_on(switch_latency(&relay, switches));
    }
    let mut peer = with_rtpengine.then(|| start_rtpengine(threads));
    let mut rows = Vec::new();
    for n in calls {
        let ours = powerdial_trial(&relay, &rt, n, &opts);
        ours.print(&opts);
        let theirs = peer.as_mut().map(|p| {
            let t = rtpengine_trial(p, n, &opts);
            t.print(&opts);
            t
        });
        rows.push((ours, theirs));
    }
    if peer.is_some() {
        println!();
        println!("| calls | powerdial pkt/s per core | rtpengine pkt/s per core | ratio | loss powerdial / rtpengine | p99 powerdial / rtpengine | packets per wake-up powerdial / rtpengine | counted |");
        println!("|---|---|---|---|---|---|---|---|");
        for (ours, theirs) in &rows {
            let Some(theirs) = theirs else { continue };
            let counted = match (ours.counted(), theirs.counted()) {
                (Ok(()), Ok(())) => "yes".to_string(),
                (Err(a), Err(b)) => format!("no: {a}; {b}"),
                (Err(why), _) | (_, Err(why)) => format!("no: {why}"),
            };
            println!(
                "| {} | {:.0} | {:.0} | {:.2}× | {} / {} | {:.0} / {:.0} µs | {:.1} / {:.1} | {} |",
                ours.calls,
                ours.per_core(),
                theirs.per_core(),
                ours.per_core() / theirs.per_core(),
                ours.loss(),
                theirs.loss(),
                ours.p99_us,
                theirs.p99_us,
                ours.received as f64 / ours.relay_wakeups.max(1) as f64,
                theirs.received as f64 / theirs.relay_wakeups.max(1) as f64,
                counted,
            );
        }
    }
}
