//! Answer → bridge time and ring-timeout accuracy (SPEC §6),
//! end to end through a real in-process powerdial (SIP task, call engine,
//! media relay) against a loopback UDP carrier and agent phone written
//! here. Run: `cargo bench --bench bridge`.
//!
//! - answer → bridge (SPEC §6: the lead's 200 OK in → the first lead RTP
//!   packet out to the agent): the carrier sends RTP continuously (every
//!   2 ms, payload 0x55 and the packet's number) from its own thread, and
//!   answers. The agent's RTP thread blocks on its socket and notes the
//!   first 0x55 packet (the relay sends the agent 0xFF silence until the
//!   bridge). The figure is that arrival minus the later of the 200 OK's
//!   send and that packet's send: the gap between the 200 OK and the
//!   carrier's next packet is the carrier's cadence (and, on a loaded
//!   machine, when the OS runs its thread), not powerdial's doing, so it is
//!   left out; reported apart as `carrier wait`. All instants are read in
//!   this process.
//! - ring timeout: `ring_timeout = 0.5`; the carrier answers 180 (or 183
//!   with SDP and RTP: early media) and notes INVITE and CANCEL arrivals.
//! - relay cost: one bridged call for 5 s with the carrier sending
//!   `COST_BURST` packets every 2 ms; the packets that reached the agent
//!   over the CPU time of the server's runtime threads (all of powerdial:
//!   the relay task and, for a browser, the phone's task), as packets/s
//!   per core.
//!
//! `-- --browser`: the agent's phone is a browser (SPEC §4 WebRTC) instead
//! of a SIP phone: a str0m client in its own thread (full ICE, DTLS client,
//! SRTP) takes the place of Chromium, opened through the browser-phone API
//! the console's POST reaches; the agent has no registered phone. The
//! arrival is timed when the datagram that str0m turns into the first lead
//! frame is received (SRTP on the wire: the same point as the SIP phone's).

#![allow(clippy::disallowed_methods)] // a load driver reads the clock

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use powerdial::call::engine::{CallEvent, DialRequest};
use powerdial::leads::model::Registration;

const CALLS: usize = 200;
const RING_CALLS: usize = 20;
const RING_TIMEOUT: f64 = 0.5;
/// Lead packets per 2 ms tick in the relay-cost phase (1,000/s: twenty
/// calls' worth on one leg; str0m queues at most a few hundred
/// milliseconds of one stream, so a single leg is not flooded harder).
const COST_BURST: usize = 2;

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn response(
    req: &str,
    code: u16,
    reason: &str,
    tag: &str,
    body: Option<&str>,
    contact: &str,
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for l in req.lines() {
        if l.to_ascii_lowercase().starts_with("via:") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    for name in ["From", "Call-ID", "CSeq"] {
        if let Some(v) = header(req, name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    let to = header(req, "To").unwrap_or("");
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={tag}\r\n"));
    }
    out.push_str(&format!("Contact: <{contact}>\r\n"));
    match body {
        Some(b) => out.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out
}

fn sdp(port: u16) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")
}

fn sdp_target(msg: &str) -> Option<SocketAddr> {
    let ip = msg
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim();
    let port = msg
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

/// A PCMU packet of 0x55 whose payload bytes 1..5 carry `n`, the number
/// the carrier's send log is indexed by (PCMU to PCMU: the relay does not
/// transcode, so the number arrives intact).
fn rtp(seq: u16, ssrc: u32, n: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(0x55, 160));
    p[13..17].copy_from_slice(&n.to_be_bytes());
    p
}

/// Hands the agent's RTP thread a channel for its next first-0x55 report.
type Armed = Arc<Mutex<Option<mpsc::Sender<(Instant, u32)>>>>;

/// Where the carrier's RTP thread sends, and when it sent packet `n`.
#[derive(Default)]
struct CarrierRtp {
    target: Option<SocketAddr>,
    sent: Vec<Instant>,
    /// Packets per 2 ms tick (1; more for the relay-cost phase).
    burst: usize,
}

/// The carrier's RTP sender: every 2 ms to the current call's agent-side
/// address, independent of the SIP thread (a real carrier's media does not
/// wait for its signalling).
fn carrier_rtp(sock: UdpSocket, shared: Arc<Mutex<CarrierRtp>>, stop: Arc<AtomicBool>) {
    let mut seq = 0u16;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(2));
        let Ok(mut st) = shared.lock() else { return };
        let Some(t) = st.target else { continue };
        for _ in 0..st.burst.max(1) {
            seq = seq.wrapping_add(1);
            let n = st.sent.len() as u32;
            let _ = sock.send_to(&rtp(seq, 0x1234, n), t);
            st.sent.push(Instant::now());
        }
    }
}

enum CarrierEv {
    Invite(Instant),
    Cancel(Instant),
    Sent200(Instant),
}

/// The carrier: by the last 4 digits, `0000` answers at once, `0180`
/// rings, `0183` rings with early media. Its RTP thread sends to the
/// current call.
fn carrier(
    sip: UdpSocket,
    rtp_port: u16,
    media: Arc<Mutex<CarrierRtp>>,
    ev: mpsc::Sender<CarrierEv>,
    stop: Arc<AtomicBool>,
) {
    sip.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let set_target = |t: Option<SocketAddr>| {
        if let Ok(mut m) = media.lock() {
            m.target = t;
        }
    };
    let contact = format!(
        "sip:carrier@{}",
        sip.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let mut buf = vec![0u8; 65536];
    let mut invite: Option<String> = None;
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        if let Ok((len, from)) = sip.recv_from(&mut buf) {
            let now = Instant::now();
            let msg = String::from_utf8_lossy(&buf[..len]).to_string();
            let first = msg.lines().next().unwrap_or("").to_string();
            if first.starts_with("INVITE ") {
                n += 1;
                let _ = ev.send(CarrierEv::Invite(now));
                let tag = format!("c{n}");
                let user = first.split('@').next().unwrap_or("");
                let mode = &user[user.len().saturating_sub(4)..];
                match mode {
                    "0183" => {
                        let r = response(
                            &msg,
                            183,
                            "Session Progress",
                            &tag,
                            Some(&sdp(rtp_port)),
                            &contact,
                        );
                        let _ = sip.send_to(r.as_bytes(), from);
                        set_target(sdp_target(&msg));
                    }
                    "0180" => {
                        let r = response(&msg, 180, "Ringing", &tag, None, &contact);
                        let _ = sip.send_to(r.as_bytes(), from);
                    }
                    _ => {
                        let r = response(&msg, 180, "Ringing", &tag, None, &contact);
                        let _ = sip.send_to(r.as_bytes(), from);
                        // Media first, as a carrier's gateway does: RTP is
                        // flowing when the 200 OK leaves.
                        set_target(sdp_target(&msg));
                        let r = response(&msg, 200, "OK", &tag, Some(&sdp(rtp_port)), &contact);
                        let _ = sip.send_to(r.as_bytes(), from);
                        let _ = ev.send(CarrierEv::Sent200(Instant::now()));
                    }
                }
                invite = Some(msg);
            } else if first.starts_with("CANCEL ") {
                let _ = ev.send(CarrierEv::Cancel(now));
                let r = response(&msg, 200, "OK", "x", None, &contact);
                let _ = sip.send_to(r.as_bytes(), from);
                if let Some(inv) = invite.take() {
                    let r = response(
                        &inv,
                        487,
                        "Request Terminated",
                        &format!("c{n}"),
                        None,
                        &contact,
                    );
                    let _ = sip.send_to(r.as_bytes(), from);
                }
                set_target(None);
            } else if first.starts_with("BYE ") {
                let r = response(&msg, 200, "OK", "x", None, &contact);
                let _ = sip.send_to(r.as_bytes(), from);
                set_target(None);
                invite = None;
            }
        }
    }
}

/// The agent phone's media: blocks on its RTP socket (so an arrival is
/// timed when the kernel wakes it, not at a polling tick) and, once armed,
/// reports the first 0x55 packet: its arrival and the carrier's number.
fn agent_rtp(sock: UdpSocket, armed: Armed, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    sock.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let now = Instant::now();
        if len >= 17 && buf[12] == 0x55 {
            count.fetch_add(1, Ordering::Relaxed);
            let n = u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]);
            if let Some(tx) = armed.lock().ok().and_then(|mut a| a.take()) {
                let _ = tx.send((now, n));
            }
        }
    }
}

/// The agent phone's signalling: answers the INVITE with 200 and SDP.
fn agent(sip: UdpSocket, rtp_port: u16, stop: Arc<AtomicBool>) {
    sip.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let contact = format!(
        "sip:alice@{}",
        sip.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((len, from)) = sip.recv_from(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..len]).to_string();
            let first = msg.lines().next().unwrap_or("");
            if first.starts_with("INVITE ") {
                let r = response(&msg, 200, "OK", "a1", Some(&sdp(rtp_port)), &contact);
                let _ = sip.send_to(r.as_bytes(), from);
            } else if first.starts_with("BYE ") || first.starts_with("OPTIONS ") {
                let r = response(&msg, 200, "OK", "a1", None, &contact);
                let _ = sip.send_to(r.as_bytes(), from);
            }
        }
    }
}

/// The browser (str0m as a full-ICE, DTLS-client peer): its offer, and a
/// thread that drives it; reports the first 0x55 frame like `agent_rtp`.
struct BenchBrowser {
    rtc: str0m::Rtc,
    sock: UdpSocket,
    pending: Option<str0m::change::SdpPendingOffer>,
}

impl BenchBrowser {
    fn new() -> (BenchBrowser, String) {
        use str0m::media::{Direction, MediaKind};
        let sock = free_udp();
        let local = sock.local_addr().expect("addr");
        let mut rtc = str0m::RtcConfig::new()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .clear_codecs()
            .enable_pcmu(true, false)
            .build(Instant::now());
        rtc.add_local_candidate(str0m::Candidate::host(local, "udp").expect("candidate"));
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = api.apply().expect("offer");
        (
            BenchBrowser {
                rtc,
                sock,
                pending: Some(pending),
            },
            offer.to_sdp_string(),
        )
    }

    fn accept(&mut self, answer: &str) {
        let answer = str0m::change::SdpAnswer::from_sdp_string(answer).expect("answer");
        let pending = self.pending.take().expect("pending offer");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accept answer");
    }

    fn run(
        mut self,
        armed: Armed,
        count: Arc<AtomicU64>,
        connected: mpsc::Sender<()>,
        stop: Arc<AtomicBool>,
    ) {
        use str0m::net::{Protocol, Receive};
        use str0m::{Event, Input, Output};
        let local = self.sock.local_addr().expect("addr");
        let mut buf = vec![0u8; 2048];
        let mut last_rx = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let deadline = loop {
                match self.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Transmit(t)) => {
                        let _ = self.sock.send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(Event::Connected)) => {
                        let _ = connected.send(());
                    }
                    Ok(Output::Event(Event::MediaData(d))) => {
                        if d.data.len() >= 5 && d.data[0] == 0x55 {
                            count.fetch_add(1, Ordering::Relaxed);
                            let n =
                                u32::from_be_bytes([d.data[1], d.data[2], d.data[3], d.data[4]]);
                            if let Some(tx) = armed.lock().ok().and_then(|mut a| a.take()) {
                                let _ = tx.send((last_rx, n));
                            }
                        }
                    }
                    Ok(Output::Event(_)) => {}
                    Err(e) => panic!("bench browser: {e}"),
                }
            };
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(50));
            self.sock.set_read_timeout(Some(wait)).ok();
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    last_rx = Instant::now();
                    if let Ok(r) = Receive::new(Protocol::Udp, from, local, &buf[..n]) {
                        let _ = self.rtc.handle_input(Input::Receive(last_rx, r));
                    }
                }
                Err(_) => {
                    let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
                }
            }
        }
    }
}

/// CPU time (ns, `/proc/self/task/*/schedstat`) of the server's runtime
/// threads: nanosecond resolution, where utime/stime count 10 ms ticks.
fn server_cpu_ns() -> u64 {
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() != "tokio-rt-worker" {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

fn free_udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind")
}

fn main() {
    let browser_mode = std::env::args().any(|a| a == "--browser");
    let dir = tempfile::tempdir().expect("tempdir");
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (csip, crtp) = (free_udp(), free_udp());
    let (asip, artp) = (free_udp(), free_udp());
    let carrier_addr = csip.local_addr().expect("addr");
    let agent_addr = asip.local_addr().expect("addr");
    let (cev_tx, cev) = mpsc::channel();
    let armed: Armed = Arc::new(Mutex::new(None));
    let media = Arc::new(Mutex::new(CarrierRtp::default()));
    let (crtp_port, artp_port) = (
        crtp.local_addr().expect("addr").port(),
        artp.local_addr().expect("addr").port(),
    );
    let (s1, m1) = (stop.clone(), media.clone());
    let t1 = std::thread::spawn(move || carrier(csip, crtp_port, m1, cev_tx, s1));
    let (s1r, m1r) = (stop.clone(), media.clone());
    let t1r = std::thread::spawn(move || carrier_rtp(crtp, m1r, s1r));
    let s2 = stop.clone();
    let t2 = std::thread::spawn(move || agent(asip, artp_port, s2));
    let (s2r, a2r, c2r) = (stop.clone(), armed.clone(), received.clone());
    let t2r = std::thread::spawn(move || agent_rtp(artp, a2r, c2r, s2r));
    let (s3, a3, c3) = (stop.clone(), armed.clone(), received.clone());

    let sip_port = free_udp().local_addr().expect("addr").port();
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    let toml = format!(
        r#"[server]
sip_listen = ["udp:127.0.0.1:{sip_port}"]
http_listen = "127.0.0.1:0"
domain = "127.0.0.1"
media_ip = "127.0.0.1"
data_dir = "{data}"
[database]
url = "{db}"
[dialer]
ring_timeout = {RING_TIMEOUT}
allow_short_ring_timeout = true
[[agent]]
username = "alice"
password = "alice-secret"
[[trunk]]
name = "carrier"
uri = "sip:{carrier_addr}"
caller_id = "+442079460999"
"#,
        data = dir.path().join("data").display()
    );
    let config =
        powerdial::config::Config::from_toml_str(&toml, "bench.toml", Vec::new()).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let browser_thread = rt.block_on(async move {
        let store = powerdial::store::connect(&db).await.expect("store");
        if !browser_mode {
        store
            .upsert_registration(&Registration {
                aor: "alice".into(),
                contact: format!("sip:alice@{agent_addr}"),
                expires_ms: chrono::Utc::now().timestamp_millis() + 3_600_000,
                call_id: "bench".into(),
                cseq: 1,
                q: None,
                transport: "udp".into(),
                source: agent_addr.to_string(),
            })
            .await
            .expect("registration");
        }
        drop(store);
        let server = powerdial::server::start(config).await.expect("server");
        let engine = server.calls.clone();
        let mut browser_thread = None;
        if browser_mode {
            let (mut b, offer) = BenchBrowser::new();
            let (_, answer) = engine
                .browser_phones()
                .open("alice", &offer)
                .await
                .expect("browser phone");
            b.accept(&answer);
            let (ctx, crx) = mpsc::channel();
            browser_thread = Some(
                std::thread::Builder::new()
                    .name("bench-browser".into())
                    .spawn(move || b.run(a3, c3, ctx, s3))
                    .expect("browser thread"),
            );
            tokio::task::spawn_blocking(move || crx.recv_timeout(Duration::from_secs(10)))
                .await
                .expect("join")
                .expect("the bench browser connected (ICE + DTLS)");
        }
        engine.connect_agent("alice").await.expect("agent leg");
        let mut events = engine.subscribe();
        let req = |n: &str| DialRequest {
            number: n.into(),
            lead_id: None,
            session_id: None,
            reduced_ring_time: false,
            caller_id: None,
            amd: powerdial::media::amd::AmdMode::Off,
            voicemail_drop_id: None,
            record: false,
            lead: None,
            claim_id: None,
        };
        async fn ended(events: &mut tokio::sync::broadcast::Receiver<CallEvent>, id: i64) {
            let wait = async {
                loop {
                    if let Ok(CallEvent::CallEnded { call_id, .. }) = events.recv().await {
                        if call_id == id {
                            return;
                        }
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), wait).await.expect("CallEnded");
        }
        let drain = |cev: &mpsc::Receiver<CarrierEv>| while cev.try_recv().is_ok() {};

        let mut bridge = Vec::new();
        let mut total = Vec::new();
        let mut waits = Vec::new();
        for _ in 0..CALLS {
            drain(&cev);
            let (tx, rx) = mpsc::channel();
            *armed.lock().expect("lock") = Some(tx);
            let id = engine.dial("alice", req("+442079460000")).await.expect("dial");
            let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5)))
                .await
                .expect("join");
            let sent200 = loop {
                match cev.recv_timeout(Duration::from_secs(1)) {
                    Ok(CarrierEv::Sent200(t)) => break Some(t),
                    Ok(_) => continue,
                    Err(_) => break None,
                }
            };
            if let (Ok((first, n)), Some(s)) = (got, sent200) {
                let sent = media
                    .lock()
                    .ok()
                    .and_then(|m| m.sent.get(n as usize).copied())
                    .unwrap_or(s);
                let from = sent.max(s);
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                bridge.push(ms(first.saturating_duration_since(from)));
                total.push(ms(first.saturating_duration_since(s)));
                waits.push(ms(from.saturating_duration_since(s)));
            }
            engine.hangup_call(id).await.expect("hangup");
            ended(&mut events, id).await;
        }

        let n = bridge.len();
        let phone = if browser_mode { "browser (WebRTC) agent" } else { "SIP phone agent" };
        println!("agent's phone: {phone}");
        for (label, v) in [
            ("answer → bridge (200 OK sent, or the lead packet sent if later → that packet at the agent)", &mut bridge),
            ("  carrier wait (200 OK sent → the carrier's next packet sent; RTP every 2 ms)", &mut waits),
            ("  both (200 OK sent → first lead RTP at the agent)", &mut total),
        ] {
            println!(
                "{label}: {n}/{CALLS} calls, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                pct(v, 0.5),
                pct(v, 0.99),
                v.last().copied().unwrap_or(f64::NAN)
            );
        }
        {
            drain(&cev);
            let (tx, rx) = mpsc::channel();
            *armed.lock().expect("lock") = Some(tx);
            let id = engine.dial("alice", req("+442079460000")).await.expect("dial");
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5)))
                .await
                .expect("join")
                .expect("bridged");
            media.lock().expect("lock").burst = COST_BURST;
            let (c0, p0, t0) = (server_cpu_ns(), received.load(Ordering::Relaxed), Instant::now());
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (c1, p1, secs) = (server_cpu_ns(), received.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
            media.lock().expect("lock").burst = 1;
            engine.hangup_call(id).await.expect("hangup");
            ended(&mut events, id).await;
            let cpu_s = (c1 - c0) as f64 / 1e9;
            let pkts = p1 - p0;
            println!(
                "relay cost ({phone}): {pkts} lead packets in {secs:.1} s ({:.0}/s), server runtime CPU {:.3} s → {:.0} packets/s per core",
                pkts as f64 / secs,
                cpu_s,
                if cpu_s > 0.0 { pkts as f64 / cpu_s } else { f64::INFINITY }
            );
        }
        for (label, number) in [("180", "+442079460180"), ("183 early media", "+442079460183")] {
            let mut errs = Vec::new();
            for _ in 0..RING_CALLS {
                drain(&cev);
                let id = engine.dial("alice", req(number)).await.expect("dial");
                let (mut inv, mut can) = (None, None);
                while can.is_none() {
                    match cev.recv_timeout(Duration::from_secs(3)) {
                        Ok(CarrierEv::Invite(t)) => inv = Some(t),
                        Ok(CarrierEv::Cancel(t)) => can = Some(t),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                if let (Some(i), Some(c)) = (inv, can) {
                    errs.push((c.saturating_duration_since(i).as_secs_f64() - RING_TIMEOUT) * 1e3);
                }
                ended(&mut events, id).await;
            }
            let n = errs.len();
            let max = errs.iter().copied().fold(f64::MIN, f64::max);
            println!(
                "ring timeout {label}: {n}/{RING_CALLS} CANCELs, late by p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (timeout {RING_TIMEOUT} s)",
                pct(&mut errs, 0.5),
                pct(&mut errs, 0.99),
                max
            );
        }
        server.shutdown().await;
        browser_thread
    });
    stop.store(true, Ordering::Relaxed);
    for t in [t1, t1r, t2, t2r].into_iter().chain(browser_thread) {
        let _ = t.join();
    }
}
