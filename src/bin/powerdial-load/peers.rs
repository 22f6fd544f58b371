//! The driver's peers, each one tokio task owning its sockets and timers
//! (no lock on the packet path but the stats mutex, taken uncontended):
//!
//! - [`carrier`]: the trunk. By the lead's number (`+44207…` answers,
//!   `+44208…` only rings) it sends 180 and 200 with SDP, then a burst of
//!   lead RTP (and, with `rtp`, a packet every 20 ms until the hang-up),
//!   and a BYE after the hold time; for a ringing lead it times the
//!   CANCEL against the INVITE.
//! - [`phones`]: every agent phone on one socket (one Contact per
//!   username): REGISTER cycles with MD5 digest at a paced rate, and
//!   answering powerdial's nailed-up agent INVITE (and its MESSAGEs).
//! - [`agent_rtp`]: the agents' media socket: times the first lead packet
//!   of each call; with `echo`, sends every packet back.
//!
//! Each lead RTP packet carries a magic, the carrier's call number, when
//! the carrier sent the 200 OK and when it sent this packet (ns since the
//! driver's start), so the agent side computes the answer → bridge time
//! with no shared state.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::sip::{self, Msg};

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the driver started.
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn ns_to_instant(ns: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(*START.get_or_init(Instant::now) + Duration::from_nanos(ns))
}

const MAGIC: &[u8; 4] = b"PDLB";
/// When lead RTP goes out after the 200 OK, ms: dense first, so the first
/// packet the bridge lets through is close to the answer.
const BURST_MS: [u64; 12] = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20];
/// A timer this late counts as a late send (the driver is behind).
const LATE_NS: u64 = 5_000_000;

/// A UDP socket on 127.0.0.1 with large buffers.
pub fn udp(port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// What the carrier saw; read by the driver between and after trials.
#[derive(Default, Debug, Clone)]
pub struct CarrierStats {
    /// INVITE arrival times, ns.
    pub invites: Vec<u64>,
    pub answered: u64,
    /// Answered calls whose BYE got its 200.
    pub completed: u64,
    /// Ringing calls cancelled by powerdial.
    pub cancelled: u64,
    /// CANCEL arrival − INVITE arrival − the ring timeout, ms.
    pub ring_late_ms: Vec<f64>,
    /// INVITEs received again (powerdial retransmitted: a response was slow or lost).
    pub invite_retrans: u64,
    pub bye_retrans: u64,
    /// BYEs never answered with 2xx.
    pub bye_failed: u64,
    /// Answered calls with no ACK within 4 s of the hold's end.
    pub no_ack: u64,
    /// Answered calls whose ACK came after the hold (the BYE waited).
    pub ack_after_hold: u64,
    /// BYEs from powerdial (it hung the lead up).
    pub bye_from_powerdial: u64,
    /// Calls up now (answered, not yet hung up) and ringing now.
    pub live: i64,
    pub ringing: i64,
    /// Lead RTP packets sent, and media received back (agents' echo).
    pub rtp_sent: u64,
    pub rtp_received: u64,
    pub timers: u64,
    pub late_timers: u64,
    pub max_late_ms: f64,
}

struct CCall {
    call_id: String,
    /// The INVITE, kept to answer its retransmissions and the CANCEL.
    invite: String,
    last_response: String,
    from_pd: SocketAddr,
    invite_ns: u64,
    answer_ns: u64,
    rtp_to: Option<SocketAddr>,
    seq: u16,
    acked: bool,
    ringing_only: bool,
    bye: Option<(String, u32)>,
    /// The hold ended before the ACK came: the BYE waits for it
    /// (RFC 3261 §15: no BYE before the ACK of a 2xx).
    bye_after_ack: bool,
}

/// The carrier's BYE for call `no` (From is the INVITE's To with our tag).
fn bye_for(c: &CCall, no: u64, local: SocketAddr) -> Option<String> {
    let inv = Msg::parse(c.invite.as_bytes())?;
    let ruri = inv.uri_of("contact").unwrap_or("sip:127.0.0.1");
    let from = format!("{};tag=c{no}", inv.header("to").unwrap_or(""));
    let to = inv.header("from").unwrap_or("");
    Some(sip::request(
        "BYE",
        ruri,
        local,
        &format!("b{no}"),
        &from,
        to,
        &c.call_id,
        2,
        "",
    ))
}

enum Timer {
    Rtp(u64, usize),
    Bye(u64),
    ByeRetrans(u64),
    AckTimeout(u64),
}

/// Carrier settings.
#[derive(Clone, Copy)]
pub struct CarrierConfig {
    pub hold: Duration,
    pub ring_timeout: Duration,
    /// RTP every 20 ms until the hang-up, after the burst.
    pub rtp: bool,
    /// Any lead RTP at all (off when the peer under test relays no media).
    pub media: bool,
}

/// Runs the carrier on `sip` (signalling) and `rtp` (media) until aborted.
pub async fn carrier(
    sip: UdpSocket,
    rtp: UdpSocket,
    cfg: CarrierConfig,
    stats: Arc<Mutex<CarrierStats>>,
) {
    let local = sip
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let rtp_port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
    let answer_sdp = sip::sdp(rtp_port);
    let contact = format!("Contact: <sip:carrier@{local}>\r\n");
    let mut calls: HashMap<u64, CCall> = HashMap::new();
    let mut by_id: HashMap<String, u64> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut timers: BinaryHeap<Reverse<(u64, u64, usize, u8)>> = BinaryHeap::new();
    let mut next_no = 0u64;
    let mut buf = vec![0u8; 65536];
    let mut rbuf = vec![0u8; 2048];
    let mut pkt = vec![0x55u8; 172];
    loop {
        let next = timers.peek().map(|Reverse((t, ..))| *t);
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(ns_to_instant(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = sip.recv_from(&mut buf) => {
                let Ok((len, from)) = r else { continue };
                let now = now_ns();
                let Some(m) = Msg::parse(&buf[..len]) else { continue };
                let mut st = match stats.lock() { Ok(s) => s, Err(_) => return };
                match m.method {
                    Some("INVITE") => {
                        let cid = m.call_id();
                        if let Some(no) = by_id.get(cid) {
                            st.invite_retrans += 1;
                            if let Some(c) = calls.get(no) {
                                send(&sip, c.last_response.as_bytes(), from);
                            }
                            continue;
                        }
                        if done.contains(cid) {
                            st.invite_retrans += 1;
                            continue;
                        }
                        next_no += 1;
                        let no = next_no;
                        st.invites.push(now);
                        let user = m.ruri_user();
                        let ringing_only = user
                            .find("4420")
                            .and_then(|i| user.as_bytes().get(i + 4))
                            .is_some_and(|d| *d == b'8');
                        let tag = format!("c{no}");
                        let r180 = m.response(180, "Ringing", &tag, &contact, None);
                        send(&sip, r180.as_bytes(), from);
                        let mut call = CCall {
                            call_id: cid.to_string(),
                            invite: String::from_utf8_lossy(&buf[..len]).into_owned(),
                            last_response: r180,
                            from_pd: from,
                            invite_ns: now,
                            answer_ns: 0,
                            rtp_to: if cfg.media { m.sdp_target() } else { None },
                            seq: 0,
                            acked: false,
                            ringing_only,
                            bye: None,
                            bye_after_ack: false,
                        };
                        if ringing_only {
                            st.ringing += 1;
                        } else {
                            let r200 = m.response(200, "OK", &tag, &contact, Some(&answer_sdp));
                            send(&sip, r200.as_bytes(), from);
                            call.answer_ns = now_ns();
                            call.last_response = r200;
                            st.answered += 1;
                            st.live += 1;
                            // The first packet; each schedules the next.
                            timers.push(Reverse((call.answer_ns + BURST_MS[0] * 1_000_000, no, 0, 0)));
                            timers.push(Reverse((call.answer_ns + cfg.hold.as_nanos() as u64, no, 0, 1)));
                        }
                        by_id.insert(call.call_id.clone(), no);
                        calls.insert(no, call);
                    }
                    Some("ACK") => {
                        if let Some(&no) = by_id.get(m.call_id()) {
                            if let Some(c) = calls.get_mut(&no) {
                                c.acked = true;
                                if c.bye_after_ack && c.bye.is_none() {
                                    if let Some(bye) = bye_for(c, no, local) {
                                        send(&sip, bye.as_bytes(), c.from_pd);
                                        c.bye = Some((bye, 0));
                                        timers.push(Reverse((now + 500_000_000, no, 0, 2)));
                                    }
                                }
                            }
                        }
                    }
                    Some("CANCEL") => {
                        let r = m.response(200, "OK", "", "", None);
                        send(&sip, r.as_bytes(), from);
                        let Some(no) = by_id.get(m.call_id()).copied() else { continue };
                        let Some(c) = calls.get(&no) else { continue };
                        if c.ringing_only && c.answer_ns == 0 {
                            let late = (now.saturating_sub(c.invite_ns)) as f64 / 1e6 - cfg.ring_timeout.as_secs_f64() * 1e3;
                            st.ring_late_ms.push(late);
                            st.cancelled += 1;
                            st.ringing -= 1;
                            if let Some(inv) = Msg::parse(c.invite.as_bytes()) {
                                let r = inv.response(487, "Request Terminated", &format!("c{no}"), "", None);
                                send(&sip, r.as_bytes(), c.from_pd);
                            }
                            if let Some(c) = calls.remove(&no) {
                                by_id.remove(&c.call_id);
                                done.insert(c.call_id);
                            }
                        }
                    }
                    Some("BYE") => {
                        let r = m.response(200, "OK", "", "", None);
                        send(&sip, r.as_bytes(), from);
                        if let Some(no) = by_id.remove(m.call_id()) {
                            if let Some(c) = calls.remove(&no) {
                                st.bye_from_powerdial += 1;
                                if c.answer_ns > 0 { st.live -= 1 } else { st.ringing -= 1 }
                                done.insert(c.call_id);
                            }
                        }
                    }
                    Some(_) => {
                        let r = m.response(200, "OK", "", "", None);
                        send(&sip, r.as_bytes(), from);
                    }
                    None => {
                        // A response: to our BYE.
                        if m.cseq().1 == "BYE" {
                            if let Some(no) = by_id.remove(m.call_id()) {
                                if let Some(c) = calls.remove(&no) {
                                    if (200..300).contains(&m.status) { st.completed += 1 } else { st.bye_failed += 1 }
                                    st.live -= 1;
                                    done.insert(c.call_id);
                                }
                            }
                        }
                    }
                }
            }
            r = rtp.recv_from(&mut rbuf) => {
                // Echoed or relayed media back from powerdial: counted.
                if r.is_ok() {
                    if let Ok(mut st) = stats.lock() { st.rtp_received += 1; }
                }
            }
            _ = sleep => {
                let now = now_ns();
                let mut st = match stats.lock() { Ok(s) => s, Err(_) => return };
                while let Some(Reverse((t, no, i, kind))) = timers.peek().copied() {
                    if t > now { break; }
                    timers.pop();
                    st.timers += 1;
                    let late = now - t;
                    if late > LATE_NS { st.late_timers += 1; }
                    st.max_late_ms = st.max_late_ms.max(late as f64 / 1e6);
                    let Some(c) = calls.get_mut(&no) else { continue };
                    match match kind { 0 => Timer::Rtp(no, i), 1 => Timer::Bye(no), 2 => Timer::ByeRetrans(no), _ => Timer::AckTimeout(no) } {
                        Timer::Rtp(no, i) => {
                            let Some(to) = c.rtp_to else { continue };
                            c.seq = c.seq.wrapping_add(1);
                            pkt[0] = 0x80;
                            pkt[1] = 0;
                            pkt[2..4].copy_from_slice(&c.seq.to_be_bytes());
                            pkt[4..8].copy_from_slice(&(u32::from(c.seq) * 160).to_be_bytes());
                            pkt[8..12].copy_from_slice(&(no as u32).to_be_bytes());
                            pkt[12..16].copy_from_slice(MAGIC);
                            pkt[16..20].copy_from_slice(&(no as u32).to_be_bytes());
                            pkt[20..28].copy_from_slice(&c.answer_ns.to_be_bytes());
                            pkt[28..36].copy_from_slice(&now_ns().to_be_bytes());
                            send(&rtp, &pkt, to);
                            st.rtp_sent += 1;
                            let next_at = if i + 1 < BURST_MS.len() {
                                Some((c.answer_ns + BURST_MS[i + 1] * 1_000_000, i + 1))
                            } else if cfg.rtp {
                                Some((t + 20_000_000, i))
                            } else { None };
                            if let Some((at, j)) = next_at {
                                if at < c.answer_ns + cfg.hold.as_nanos() as u64 {
                                    timers.push(Reverse((at, no, j, 0)));
                                }
                            }
                        }
                        Timer::Bye(no) | Timer::AckTimeout(no) => {
                            if c.bye.is_some() { continue; }
                            if !c.acked {
                                if kind == 1 {
                                    // Wait for the ACK (4 s at most).
                                    st.ack_after_hold += 1;
                                    c.bye_after_ack = true;
                                    timers.push(Reverse((now + 4_000_000_000, no, 0, 3)));
                                    continue;
                                }
                                st.no_ack += 1;
                            }
                            let Some(bye) = bye_for(c, no, local) else { continue };
                            send(&sip, bye.as_bytes(), c.from_pd);
                            c.bye = Some((bye, 0));
                            timers.push(Reverse((now + 500_000_000, no, 0, 2)));
                        }
                        Timer::ByeRetrans(no) => {
                            let Some((bye, n)) = c.bye.as_mut() else { continue };
                            if *n >= 4 {
                                st.bye_failed += 1;
                                st.live -= 1;
                                if let Some(c) = calls.remove(&no) {
                                    by_id.remove(&c.call_id);
                                    done.insert(c.call_id);
                                }
                                continue;
                            }
                            *n += 1;
                            st.bye_retrans += 1;
                            send(&sip, bye.as_bytes(), c.from_pd);
                            timers.push(Reverse((now + 500_000_000, no, 0, 2)));
                        }
                    }
                }
            }
        }
    }
}

/// The agents' media: first lead packet per call, and echo.
#[derive(Default, Debug, Clone)]
pub struct AgentRtpStats {
    /// First lead packet at the agent − max(200 OK sent, that packet sent), ms.
    pub bridge_ms: Vec<f64>,
    /// First lead packet at the agent − 200 OK sent, ms.
    pub answer_to_first_ms: Vec<f64>,
    pub packets: u64,
    pub lead_packets: u64,
    /// Every lead packet: arrival at the agent − sent by the carrier, ms
    /// (the relay's added latency plus two loopback hops).
    pub relay_ms: Vec<f64>,
}

/// Runs the agents' media socket. `legs` brings each agent leg's relay
/// address (from powerdial's INVITE): every agent sends it a silence
/// packet each second, as a phone's media (or comfort noise) would, so no
/// idle agent leg meets `dialer.rtp_timeout`.
pub async fn agent_rtp(
    sock: UdpSocket,
    echo: bool,
    mut legs: mpsc::UnboundedReceiver<SocketAddr>,
    stats: Arc<Mutex<AgentRtpStats>>,
) {
    let mut seen: HashSet<u32> = HashSet::new();
    let mut targets: Vec<(SocketAddr, u16)> = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut silence = vec![0xFFu8; 172];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(leg) = legs.recv() => {
                if !targets.iter().any(|(t, _)| *t == leg) {
                    targets.push((leg, 0));
                }
            }
            _ = tick.tick() => {
                for (i, (to, seq)) in targets.iter_mut().enumerate() {
                    *seq = seq.wrapping_add(1);
                    silence[0] = 0x80;
                    silence[1] = 0;
                    silence[2..4].copy_from_slice(&seq.to_be_bytes());
                    silence[4..8].copy_from_slice(&(u32::from(*seq) * 8000).to_be_bytes());
                    silence[8..12].copy_from_slice(&(0xA000_0000u32 + i as u32).to_be_bytes());
                    send(&sock, &silence, *to);
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((len, from)) = r else { continue };
                let now = now_ns();
                let mut st = match stats.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                st.packets += 1;
                if len >= 36 && &buf[12..16] == MAGIC {
                    st.lead_packets += 1;
                    let no = u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]]);
                    let mut u = [0u8; 8];
                    u.copy_from_slice(&buf[20..28]);
                    let answer = u64::from_be_bytes(u);
                    u.copy_from_slice(&buf[28..36]);
                    let sent = u64::from_be_bytes(u);
                    st.relay_ms.push(now.saturating_sub(sent) as f64 / 1e6);
                    if seen.insert(no) {
                        st.bridge_ms.push(now.saturating_sub(sent.max(answer)) as f64 / 1e6);
                        st.answer_to_first_ms.push(now.saturating_sub(answer) as f64 / 1e6);
                    }
                }
                drop(st);
                if echo {
                    send(&sock, &buf[..len], from);
                }
            }
        }
    }
}

/// One batch of REGISTER cycles, asked of [`phones`].
pub struct RegisterBatch {
    /// (username, password) of each cycle, in order.
    pub users: Arc<Vec<(String, String)>>,
    /// Cycles started per second.
    pub rate: f64,
    pub done: oneshot::Sender<RegisterResult>,
}

#[derive(Default, Debug, Clone)]
pub struct RegisterResult {
    pub ok: u64,
    pub failed: u64,
    pub retrans: u64,
    pub challenges: u64,
    /// First REGISTER sent → 200 received, ms.
    pub cycle_ms: Vec<f64>,
    /// First REGISTER sent → last 200, s.
    pub elapsed_s: f64,
    pub late_sends: u64,
}

#[derive(Default, Debug, Clone)]
pub struct PhoneStats {
    pub invites: u64,
    pub byes: u64,
    pub messages: u64,
    pub other: u64,
}

struct Pending {
    idx: usize,
    started: u64,
    sent: u64,
    msg: String,
    tries: u32,
}

/// Every agent phone on one socket: REGISTER batches and answering calls.
pub async fn phones(
    sock: UdpSocket,
    server: SocketAddr,
    rtp_port: u16,
    mut batches: mpsc::Receiver<RegisterBatch>,
    legs: mpsc::UnboundedSender<SocketAddr>,
    stats: Arc<Mutex<PhoneStats>>,
) {
    let local = sock
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let answer_sdp = sip::sdp(rtp_port);
    let mut answered: HashMap<String, String> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut run = 0u64;
    let mut batch: Option<(RegisterBatch, usize, u64, RegisterResult)> = None;
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    let register = |user: &str, call_id: &str, cseq: u32, auth: Option<&str>, branch: u64| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        sip::request(
            "REGISTER",
            "sip:127.0.0.1",
            local,
            &format!("r{branch}"),
            &format!("<sip:{user}@127.0.0.1>;tag=t{branch}"),
            &format!("<sip:{user}@127.0.0.1>"),
            call_id,
            cseq,
            &format!("Contact: <sip:{user}@{local}>\r\nExpires: 3600\r\n{auth}"),
        )
    };
    loop {
        tokio::select! {
            b = batches.recv(), if batch.is_none() => {
                let Some(b) = b else { return };
                run += 1;
                batch = Some((b, 0, now_ns(), RegisterResult::default()));
            }
            _ = tick.tick(), if batch.is_some() => {
                let now = now_ns();
                let Some((b, next, started, res)) = batch.as_mut() else { continue };
                // Start the cycles due by now.
                let due = ((now - *started) as f64 / 1e9 * b.rate) as usize + 1;
                let behind = due.saturating_sub(*next);
                if behind > (b.rate / 100.0).max(10.0) as usize { res.late_sends += 1; }
                while *next < due.min(b.users.len()) {
                    let (user, _) = &b.users[*next];
                    n += 1;
                    let cid = format!("reg-{run}-{}@load", *next);
                    let msg = register(user, &cid, 1, None, n);
                    send(&sock, msg.as_bytes(), server);
                    pending.insert(cid, Pending { idx: *next, started: now, sent: now, msg, tries: 0 });
                    *next += 1;
                }
                // Retransmit (T1 = 500 ms, doubling), give up after 4 tries.
                let mut gone = Vec::new();
                for (cid, p) in pending.iter_mut() {
                    let wait = 500_000_000u64 << p.tries.min(3);
                    if now - p.sent > wait {
                        if p.tries >= 3 { gone.push(cid.clone()); continue; }
                        p.tries += 1;
                        p.sent = now;
                        res.retrans += 1;
                        send(&sock, p.msg.as_bytes(), server);
                    }
                }
                for cid in gone { pending.remove(&cid); res.failed += 1; }
                if *next >= b.users.len() && pending.is_empty() {
                    if let Some((b, _, started, mut res)) = batch.take() {
                        res.elapsed_s = (now - started) as f64 / 1e9;
                        let _ = b.done.send(res);
                    }
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((len, from)) = r else { continue };
                let Some(m) = Msg::parse(&buf[..len]) else { continue };
                match m.method {
                    None => {
                        let cid = m.call_id();
                        let Some((b, _, _, res)) = batch.as_mut() else { continue };
                        if m.status == 401 {
                            let Some(p) = pending.get_mut(cid) else { continue };
                            if p.msg.contains("Authorization:") { continue; }
                            res.challenges += 1;
                            let (user, pw) = &b.users[p.idx];
                            let Some(auth) = m.header("www-authenticate").and_then(|ch| sip::authorization(ch, user, pw, "REGISTER", "sip:127.0.0.1", &format!("{:08x}", p.idx))) else {
                                pending.remove(cid); res.failed += 1; continue;
                            };
                            n += 1;
                            p.msg = register(user, cid, 2, Some(&auth), n);
                            p.sent = now_ns();
                            p.tries = 0;
                            send(&sock, p.msg.as_bytes(), server);
                        } else if (200..300).contains(&m.status) {
                            if let Some(p) = pending.remove(cid) {
                                res.ok += 1;
                                res.cycle_ms.push((now_ns() - p.started) as f64 / 1e6);
                            }
                        } else if m.status >= 300 && pending.remove(cid).is_some() {
                            res.failed += 1;
                        }
                    }
                    Some("INVITE") => {
                        let cid = m.call_id().to_string();
                        let r = match answered.get(&cid) {
                            Some(r) => r.clone(),
                            None => {
                                if let Ok(mut s) = stats.lock() { s.invites += 1; }
                                if let Some(t) = m.sdp_target() { let _ = legs.send(t); }
                                let r = m.response(200, "OK", "a1", &format!("Contact: <sip:{}@{local}>\r\n", m.ruri_user()), Some(&answer_sdp));
                                answered.insert(cid, r.clone());
                                r
                            }
                        };
                        send(&sock, r.as_bytes(), from);
                    }
                    Some("ACK") => {}
                    Some(method) => {
                        if let Ok(mut s) = stats.lock() {
                            match method { "BYE" => s.byes += 1, "MESSAGE" => s.messages += 1, _ => s.other += 1 }
                        }
                        if method == "BYE" { answered.remove(m.call_id()); }
                        let r = m.response(200, "OK", "a1", "", None);
                        send(&sock, r.as_bytes(), from);
                    }
                }
            }
        }
    }
}

/// Sends without waiting for the socket (loopback with 8 MB buffers does
/// not block); a refused send is counted in [`SEND_ERRORS`].
fn send(sock: &UdpSocket, buf: &[u8], to: SocketAddr) {
    if sock.try_send_to(buf, to).is_err() {
        SEND_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sends the driver's sockets refused (full buffers): the driver was behind.
pub static SEND_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One paced batch of calls through a proxy, asked of [`caller`].
pub struct CallBatch {
    pub calls: usize,
    /// Calls started per second.
    pub rate: f64,
    pub done: oneshot::Sender<CallerResult>,
}

#[derive(Default, Debug, Clone)]
pub struct CallerResult {
    /// Calls that got a 200 and then the carrier's BYE.
    pub ok: u64,
    pub failed: u64,
    pub retrans: u64,
    /// INVITE sent → 200 received, ms.
    pub setup_ms: Vec<f64>,
    pub elapsed_s: f64,
    pub late_ticks: u64,
}

struct Outgoing {
    started: u64,
    sent: u64,
    invite: String,
    tries: u32,
    ack: Option<String>,
}

/// A caller (the UAC of a call-setup comparison): INVITEs with SDP to the
/// carrier at `carrier` through the proxy at `proxy`, ACKs the 200 along its
/// Record-Route, answers the carrier's BYE.
pub async fn caller(
    sock: UdpSocket,
    proxy: SocketAddr,
    carrier: SocketAddr,
    mut batches: mpsc::Receiver<CallBatch>,
) {
    let local = sock
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let offer = sip::sdp(local.port().wrapping_add(1));
    let mut buf = vec![0u8; 65536];
    let mut run = 0u64;
    let mut batch: Option<(CallBatch, usize, u64, CallerResult)> = None;
    let mut pending: HashMap<String, Outgoing> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            b = batches.recv(), if batch.is_none() => {
                let Some(b) = b else { return };
                run += 1;
                batch = Some((b, 0, now_ns(), CallerResult::default()));
            }
            _ = tick.tick(), if batch.is_some() => {
                let now = now_ns();
                let Some((b, next, started, res)) = batch.as_mut() else { continue };
                let due = ((now - *started) as f64 / 1e9 * b.rate) as usize + 1;
                if due.saturating_sub(*next) > (b.rate / 100.0).max(10.0) as usize {
                    res.late_ticks += 1;
                }
                while *next < due.min(b.calls) {
                    let n = *next;
                    let cid = format!("cl-{run}-{n}@load");
                    let invite = format!(
                        "INVITE sip:+44207{n:07}@{carrier} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKi{run}x{n};rport\r\n\
                         Max-Forwards: 70\r\nFrom: <sip:caller@{local}>;tag=u{n}\r\nTo: <sip:+44207{n:07}@{carrier}>\r\n\
                         Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{local}>\r\n\
                         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
                        offer.len()
                    );
                    send(&sock, invite.as_bytes(), proxy);
                    pending.insert(cid, Outgoing { started: now, sent: now, invite, tries: 0, ack: None });
                    *next += 1;
                }
                let mut gone = Vec::new();
                for (cid, o) in pending.iter_mut() {
                    if o.ack.is_none() && o.tries < 3 && now - o.sent > (500_000_000u64 << o.tries) {
                        o.tries += 1;
                        o.sent = now;
                        res.retrans += 1;
                        send(&sock, o.invite.as_bytes(), proxy);
                    } else if now - o.started > 8_000_000_000 {
                        gone.push(cid.clone());
                    }
                }
                for cid in gone {
                    pending.remove(&cid);
                    res.failed += 1;
                }
                if *next >= b.calls && pending.is_empty() {
                    if let Some((b, _, started, mut res)) = batch.take() {
                        res.elapsed_s = (now - started) as f64 / 1e9;
                        let _ = b.done.send(res);
                    }
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((len, from)) = r else { continue };
                let Some(m) = Msg::parse(&buf[..len]) else { continue };
                let Some((_, _, _, res)) = batch.as_mut() else { continue };
                match m.method {
                    None if m.cseq().1 == "INVITE" => {
                        let cid = m.call_id();
                        let Some(o) = pending.get_mut(cid) else { continue };
                        if m.status < 200 {
                            o.tries = 3; // a provisional: no more retransmissions
                        } else if m.status < 300 {
                            if o.ack.is_none() {
                                res.setup_ms.push((now_ns() - o.started) as f64 / 1e6);
                                let ruri = m.uri_of("contact").unwrap_or("sip:127.0.0.1");
                                let mut routes = String::new();
                                for rr in m.headers("record-route") {
                                    routes.push_str(&format!("Route: {rr}\r\n"));
                                }
                                let ack = format!(
                                    "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKa{};rport\r\n\
                                     Max-Forwards: 70\r\n{routes}From: {}\r\nTo: {}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\n\
                                     Content-Length: 0\r\n\r\n",
                                    now_ns(),
                                    m.header("from").unwrap_or(""),
                                    m.header("to").unwrap_or(""),
                                );
                                o.ack = Some(ack);
                            }
                            if let Some(ack) = &o.ack {
                                send(&sock, ack.as_bytes(), proxy);
                            }
                        } else if pending.remove(cid).is_some() {
                            res.failed += 1;
                        }
                    }
                    None => {}
                    Some("BYE") => {
                        let r = m.response(200, "OK", "", "", None);
                        send(&sock, r.as_bytes(), from);
                        if let Some(o) = pending.remove(m.call_id()) {
                            if o.ack.is_some() { res.ok += 1 } else { res.failed += 1 }
                        }
                    }
                    Some("ACK") => {}
                    Some(_) => {
                        let r = m.response(200, "OK", "", "", None);
                        send(&sock, r.as_bytes(), from);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver's caller and carrier against each other over loopback
    /// UDP: every call is answered, ACKed, hung up by the carrier and its
    /// BYE answered, with nothing retransmitted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caller_and_carrier_complete_every_call() {
        let csip = udp(0).expect("carrier sip");
        let crtp = udp(0).expect("carrier rtp");
        let carrier_addr = csip.local_addr().expect("addr");
        let stats = Arc::new(Mutex::new(CarrierStats::default()));
        let cfg = CarrierConfig {
            hold: Duration::from_millis(10),
            ring_timeout: Duration::from_secs(1),
            rtp: false,
            media: false,
        };
        let carrier_task = tokio::spawn(carrier(csip, crtp, cfg, stats.clone()));
        let (tx, rx) = mpsc::channel(1);
        let caller_task = tokio::spawn(caller(
            udp(0).expect("caller"),
            carrier_addr,
            carrier_addr,
            rx,
        ));
        let (done, wait) = oneshot::channel();
        tx.send(CallBatch {
            calls: 20,
            rate: 400.0,
            done,
        })
        .await
        .expect("batch");
        let r = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("in time")
            .expect("result");
        assert_eq!((r.ok, r.failed, r.retrans), (20, 0, 0), "{r:?}");
        assert_eq!(r.setup_ms.len(), 20);
        let s = stats.lock().expect("stats").clone();
        assert_eq!(s.invites.len(), 20, "{s:?}");
        assert_eq!((s.answered, s.completed), (20, 20), "{s:?}");
        assert_eq!((s.no_ack, s.bye_retrans, s.live), (0, 0, 0), "{s:?}");
        carrier_task.abort();
        caller_task.abort();
    }
}
