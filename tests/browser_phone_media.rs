//! The browser phone (`call::browser_phone`) between a WebRTC peer and the
//! agent leg, over real UDP on 127.0.0.1 without the rest of the server: a
//! str0m client plays the browser (full ICE, DTLS client, SRTP), and this
//! test plays the call engine's agent leg (the INVITE, its RTP, the BYE).
//!
//! Checked: the phone is a contact of its agent only once ICE and DTLS are
//! up; the agent leg's INVITE is answered 200 with PCMU on loopback; RTP
//! from the agent leg reaches the browser as media (payload intact), the
//! browser's frames reach the agent leg as PCMU RTP; hanging the phone up
//! sends a BYE on the agent leg and removes the contact.

#![allow(clippy::disallowed_methods)] // a driver of real sockets: deadlines need the clock

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use powerdial::call::browser_phone::BrowserPhones;
use powerdial::config::PortRange;
use powerdial::media::relay::{CoreConfig, MediaRelay, RelayConfig};
use powerdial::sip::transaction::TimerConfig;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// What the browser thread saw.
#[derive(Default)]
struct Seen {
    connected: AtomicBool,
    /// Frames whose payload starts with 0x55 (the agent leg's marker).
    marked: AtomicU64,
}

/// Drives the str0m browser until `stop`; sends a 0x33 frame every 20 ms
/// once connected.
fn browser(mut rtc: Rtc, sock: UdpSocket, mid: Mid, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let local = sock.local_addr().unwrap();
    let mut buf = vec![0u8; 2048];
    let mut next_frame = Instant::now();
    let mut ts = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let deadline = loop {
            match rtc.poll_output().expect("browser output") {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = sock.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => seen.connected.store(true, Ordering::Relaxed),
                Output::Event(Event::MediaData(d)) => {
                    if d.data.first() == Some(&0x55) {
                        seen.marked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::Event(_) => {}
            }
        };
        let now = Instant::now();
        if seen.connected.load(Ordering::Relaxed) && now >= next_frame {
            next_frame = now + Duration::from_millis(20);
            ts += 160;
            if let Some(w) = rtc.writer(mid) {
                let pt = w
                    .payload_params()
                    .next()
                    .map(|p| p.pt())
                    .expect("a negotiated payload type");
                let _ = w.write(
                    pt,
                    now,
                    MediaTime::new(ts, Frequency::EIGHT_KHZ),
                    vec![0x33u8; 160],
                );
            }
            continue;
        }
        let wait = deadline
            .min(next_frame)
            .saturating_duration_since(now)
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        sock.set_read_timeout(Some(wait)).ok();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let r = Receive::new(Protocol::Udp, from, local, &buf[..n]).expect("datagram");
                rtc.handle_input(Input::Receive(Instant::now(), r))
                    .expect("input");
            }
            Err(_) => rtc
                .handle_input(Input::Timeout(Instant::now()))
                .expect("timeout"),
        }
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The next SIP message on `sock` whose first line starts with `start`.
fn recv_sip(sock: &UdpSocket, start: &str) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            if m.starts_with(start) {
                return (m, from);
            }
        }
    }
    panic!("no {start:?} within 5 s");
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn browser_phone_carries_audio_both_ways_and_hangs_up() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let relay = MediaRelay::new(RelayConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        // Away from the default range and the other tests' ranges.
        ports: PortRange {
            first: 43000,
            last: 43999,
        },
        core: CoreConfig::default(),
        socket_buffer: 1 << 16,
    })
    .unwrap();
    let phones = BrowserPhones::new(relay, "127.0.0.1".parse().unwrap(), TimerConfig::default());

    // The browser's offer: one sendrecv audio m-line, PCMU.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rtc = RtcConfig::new()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .clear_codecs()
        .enable_pcmu(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(sock.local_addr().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let (id, answer) = rt
        .block_on(phones.open("alice", &offer.to_sdp_string()))
        .expect("the offer is taken");
    assert!(answer.contains("a=ice-lite"), "ICE-lite answer: {answer}");
    assert!(
        answer.contains("a=fingerprint:"),
        "DTLS-SRTP answer: {answer}"
    );
    assert!(phones.is_phone_of("alice", id) && !phones.is_phone_of("bob", id));
    assert!(
        phones.targets("alice").is_empty(),
        "no contact before ICE and DTLS are up"
    );
    rtc.sdp_api()
        .accept_answer(
            pending,
            str0m::change::SdpAnswer::from_sdp_string(&answer).unwrap(),
        )
        .unwrap();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    let b = std::thread::spawn(move || browser(rtc, sock, mid, s, st));
    wait_until("ICE + DTLS", || seen.connected.load(Ordering::Relaxed));
    wait_until("the contact", || phones.targets("alice").len() == 1);
    let target = phones.targets("alice").remove(0);
    assert!(target.peer.addr.ip().is_loopback(), "{target:?}");
    assert!(phones.targets("bob").is_empty());

    // The agent leg: INVITE with our RTP address.
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    let leg_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sip.local_addr().unwrap();
    let rtp_port = leg_rtp.local_addr().unwrap().port();
    let body = format!("v=0\r\no=powerdial 1 1 IN IP4 127.0.0.1\r\ns=powerdial\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n");
    let invite = format!(
        "INVITE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbp1\r\nMax-Forwards: 70\r\nFrom: <sip:powerdial@127.0.0.1>;tag=pd1\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: bp-test-1\r\nCSeq: 1 INVITE\r\nContact: <sip:powerdial@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        contact = target.contact,
    );
    sip.send_to(invite.as_bytes(), target.peer.addr).unwrap();
    let (ok, from) = recv_sip(&sip, "SIP/2.0 200");
    assert_eq!(from, target.peer.addr);
    assert!(
        ok.contains("m=audio ") && ok.contains(" RTP/AVP 0"),
        "PCMU answer: {ok}"
    );
    let to = header(&ok, "To").expect("To");
    let phone_rtp: SocketAddr = {
        let port = ok
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|r| r.split_whitespace().next())
            .expect("m=audio");
        format!("127.0.0.1:{port}").parse().unwrap()
    };
    let ack = format!(
        "ACK {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbp2\r\nMax-Forwards: 70\r\nFrom: <sip:powerdial@127.0.0.1>;tag=pd1\r\nTo: {to}\r\nCall-ID: bp-test-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        contact = target.contact,
    );
    sip.send_to(ack.as_bytes(), target.peer.addr).unwrap();

    // The agent leg's RTP (the lead, marked 0x55) reaches the browser.
    for seq in 0..50u16 {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend(std::iter::repeat_n(0x55, 160));
        leg_rtp.send_to(&p, phone_rtp).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_until("the lead's frames at the browser", || {
        seen.marked.load(Ordering::Relaxed) >= 40
    });

    // The browser's frames reach the agent leg as PCMU RTP, payload intact.
    let mut buf = vec![0u8; 2048];
    leg_rtp
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = 0;
    while got < 10 {
        let (n, _) = leg_rtp.recv_from(&mut buf).expect("RTP from the browser");
        assert!(n == 12 + 160, "a 20 ms PCMU packet: {n} bytes");
        assert_eq!(buf[0] >> 6, 2, "RTP version 2");
        assert_eq!(buf[1] & 0x7f, 0, "PCMU");
        assert!(buf[12..n].iter().all(|&b| b == 0x33), "payload intact");
        got += 1;
    }

    // Hanging up: BYE on the agent leg, no contact any more.
    assert!(!phones.hang_up("bob", id), "not bob's phone");
    assert!(phones.hang_up("alice", id));
    let (bye, _) = recv_sip(&sip, "BYE ");
    assert!(bye.contains("Call-ID: bp-test-1"), "{bye}");
    wait_until("the phone's end", || !phones.is_phone_of("alice", id));
    assert!(phones.targets("alice").is_empty());
    stop.store(true, Ordering::Relaxed);
    b.join().unwrap();
}
