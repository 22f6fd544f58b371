//! The browser as the agent's phone (SPEC §4 `POST /api/v1/agents/{agent}/webrtc`,
//! RFC 9725 WHIP-style): WebRTC audio towards the console, a SIP phone
//! towards the call engine.
//!
//! # Shape
//! A browser phone is one task that owns three sockets:
//! - the WebRTC socket, leased from the relay's port pool on
//!   `server.media_ip`: ICE-lite (RFC 8445 §2.5: powerdial has a known
//!   address, the browser does the checks), DTLS-SRTP (RFC 5763/5764) and
//!   PCMU, all multiplexed on the one port (RFC 8834 §4.4);
//! - a SIP socket on loopback: the phone's user agent, which the agent's
//!   task reaches as one more contact of the agent ([`BrowserPhones::targets`]
//!   is added to the registrar's bindings). Its INVITE is answered at once
//!   by an [`InboundLeg`] (the same UAS code as a lead's call back), so the
//!   nailed-up agent leg, the relay, the SSRC/sequence rewriter, the tone
//!   while dialing and the switch to the lead on answer are the very ones a
//!   SIP phone gets (SPEC §1 steps 2–5, §6);
//! - a plain RTP socket on loopback, the other end of the agent leg's RTP.
//!
//! What comes from the relay is handed to str0m as PCMU frames (it
//! encrypts and sends); what str0m decrypts from the browser goes to the
//! relay as RTP with the browser's sequence numbers and timestamps, so the
//! relay's rewriter sees the browser's loss and jitter as it would a phone's.
//!
//! # Why str0m (DESIGN.md "The core API shape")
//! str0m is the sans-IO WebRTC stack DESIGN.md names beside quinn-proto:
//! `Rtc::handle_input(Input::Receive | Input::Timeout)` in, `poll_output()`
//! → `Transmit | Event | Timeout` out, no sockets, no clock, no threads of
//! its own. The phone's task is its driver in the same shape as the
//! relay's (one `sleep_until(poll_timeout)`, the clock read there only).
//! The webrtc-rs `webrtc` crate owns its sockets, timers and tasks (the
//! opposite of DESIGN's cores); its sans-IO `rtc` crate has the right shape
//! but was not tried: str0m built here with lean features and connected to
//! headless Chromium on the first try, so the spike stopped there. str0m is
//! maintained and released steadily (0.22 to 0.25 in the
//! registry mirror), keeps ICE, DTLS and SRTP behind one small API, and
//! lets the crypto backend be chosen: here its OpenSSL one (system
//! libssl), whose AES-NI code does the one SRTP transform per packet
//! (AES-CM + HMAC-SHA1-80, or AES-GCM where the browser picks it); its
//! pure-Rust backend still builds aws-lc's C tree in this release.
//! `benches/bridge.rs -- --browser` measures the cost (BENCHMARKS.md).
//!
//! # Not yet
//! The loopback hop costs one extra `sendto`/`recvfrom` pair per packet;
//! running the `Rtc` inside the agent's relay task removes it (the core
//! already takes decrypted packets for SDES-SRTP phones).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use str0m::change::SdpOffer;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::{AgentTarget, InboundEvent, InboundLeg, LocalAddress};
use crate::media::relay::{LeasedSocket, MediaRelay};
use crate::media::sdp::{self, SessionDescription};
use crate::sip::syntax::{Method, SipMessage};
use crate::sip::transaction::TimerConfig;
use crate::sip::{Peer, TransportKind};

/// How long the browser has to finish ICE and DTLS after the answer
/// before the phone is given up ("UDP blocked" in the console).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a browser phone could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BrowserPhoneError {
    /// The offer is not SDP str0m can read.
    #[error("unusable SDP offer: {0}")]
    BadOffer(String),
    /// The offer has no audio we can send and receive as PCMU.
    #[error("the offer has no PCMU audio")]
    NoAudio,
    /// No media port or no loopback socket.
    #[error("no socket for the browser phone: {0}")]
    Socket(String),
    /// WebRTC refused the offer or our candidate.
    #[error("WebRTC: {0}")]
    Rtc(String),
}

struct Entry {
    agent: String,
    /// The phone's SIP user agent, the agent task's INVITE goes here.
    sip: SocketAddr,
    /// ICE and DTLS are up (before, the INVITE would only time out).
    connected: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
}

struct Inner {
    relay: MediaRelay,
    media_ip: IpAddr,
    timers: TimerConfig,
    phones: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    crypto: Arc<str0m::crypto::CryptoProvider>,
}

/// The browser phones of all agents (see the module docs).
#[derive(Clone)]
pub struct BrowserPhones {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BrowserPhones {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserPhones").finish_non_exhaustive()
    }
}

impl BrowserPhones {
    /// Browser phones on the relay's port pool, advertising `media_ip`.
    pub fn new(relay: MediaRelay, media_ip: IpAddr, timers: TimerConfig) -> Self {
        BrowserPhones {
            inner: Arc::new(Inner {
                relay,
                media_ip,
                timers,
                phones: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
                crypto: Arc::new(str0m::crypto::from_feature_flags()),
            }),
        }
    }

    fn phones(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.inner
            .phones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The agent's connected browser phones as contacts to fork the agent
    /// leg's INVITE to (RFC 3261 §16.7), beside its registered phones.
    pub fn targets(&self, agent: &str) -> Vec<AgentTarget> {
        self.phones()
            .values()
            .filter(|e| e.agent == agent && e.connected.load(Ordering::Acquire))
            .map(|e| AgentTarget {
                peer: Peer {
                    transport: TransportKind::Udp,
                    addr: e.sip,
                },
                contact: format!("sip:{agent}@{}", e.sip),
            })
            .collect()
    }

    /// Whether `id` is a phone of `agent`.
    pub fn is_phone_of(&self, agent: &str, id: u64) -> bool {
        self.phones().get(&id).is_some_and(|e| e.agent == agent)
    }

    /// Takes the browser's offer (no trickle: its candidates are in it,
    /// RFC 9725 §4.1) and returns the phone's id and our answer, ICE-lite
    /// with our one host candidate. The phone's task runs until
    /// [`BrowserPhones::hang_up`], ICE failure or [`CONNECT_TIMEOUT`].
    pub async fn open(&self, agent: &str, offer: &str) -> Result<(u64, String), BrowserPhoneError> {
        let offer = SdpOffer::from_sdp_string(offer)
            .map_err(|e| BrowserPhoneError::BadOffer(e.to_string()))?;
        let leased = self
            .inner
            .relay
            .lease_socket()
            .map_err(|e| BrowserPhoneError::Socket(e.to_string()))?;
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let sip = UdpSocket::bind((loopback, 0))
            .await
            .map_err(|e| BrowserPhoneError::Socket(e.to_string()))?;
        let rtp = UdpSocket::bind((loopback, 0))
            .await
            .map_err(|e| BrowserPhoneError::Socket(e.to_string()))?;
        let sip_addr = sip
            .local_addr()
            .map_err(|e| BrowserPhoneError::Socket(e.to_string()))?;
        let now = clock();
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(self.inner.crypto.clone())
            .set_ice_lite(true)
            // G.711 only: the agent leg and the carrier speak it, so no
            // transcoding (Chromium supports PCMU).
            .clear_codecs()
            .enable_pcmu(true, false)
            .build(now);
        let local = SocketAddr::new(self.inner.media_ip, leased.port);
        let cand =
            Candidate::host(local, "udp").map_err(|e| BrowserPhoneError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(cand);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| BrowserPhoneError::Rtc(e.to_string()))?;
        let answer = answer.to_sdp_string();
        if !answer.contains("PCMU/8000") {
            return Err(BrowserPhoneError::NoAudio);
        }
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (stop_tx, stop_rx) = oneshot::channel();
        let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut phones = self.phones();
        // One browser phone per agent: a new one (a reload, another tab)
        // replaces the old, as a re-registration from a new device would;
        // this also bounds the ports the route can hold to one per agent.
        for e in phones.values_mut().filter(|e| e.agent == agent) {
            if let Some(stop) = e.stop.take() {
                let _ = stop.send(());
            }
        }
        phones.insert(
            id,
            Entry {
                agent: agent.to_string(),
                sip: sip_addr,
                connected: connected.clone(),
                stop: Some(stop_tx),
            },
        );
        drop(phones);
        let task = PhoneTask {
            id,
            agent: agent.to_string(),
            rtc,
            local,
            web: leased,
            sip,
            sip_addr,
            rtp,
            relay_rtp: None,
            leg: None,
            answer_sdp: None,
            mid: None,
            timers: self.inner.timers,
            rng: StdRng::from_entropy(),
            connected,
            frames_in: 0,
            frames_out: 0,
        };
        tokio::spawn(task.run(self.clone(), stop_rx, now + CONNECT_TIMEOUT));
        Ok((id, answer))
    }

    /// Hangs the phone up (RFC 9725 §4.3 DELETE): BYE on its agent leg,
    /// DTLS close; false when there is no such phone.
    pub fn hang_up(&self, agent: &str, id: u64) -> bool {
        let mut phones = self.phones();
        match phones.get_mut(&id) {
            Some(e) if e.agent == agent => {
                if let Some(stop) = e.stop.take() {
                    let _ = stop.send(());
                }
                true
            }
            _ => false,
        }
    }

    fn closed(&self, agent: &str, id: u64, reason: String) {
        self.phones().remove(&id);
        tracing::info!(%agent, id, %reason, "browser phone closed");
    }
}

#[allow(clippy::disallowed_methods)] // the driver is where the clock is read
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The RTP payload type of PCMU (RFC 3551 §6).
const PCMU: u8 = 0;

struct PhoneTask {
    id: u64,
    agent: String,
    rtc: Rtc,
    local: SocketAddr,
    web: LeasedSocket,
    sip: UdpSocket,
    sip_addr: SocketAddr,
    rtp: UdpSocket,
    /// Where the agent leg wants our RTP (its SDP offer).
    relay_rtp: Option<SocketAddr>,
    leg: Option<InboundLeg>,
    answer_sdp: Option<Vec<u8>>,
    mid: Option<Mid>,
    timers: TimerConfig,
    rng: StdRng,
    connected: Arc<std::sync::atomic::AtomicBool>,
    frames_in: u64,
    frames_out: u64,
}

enum Wake {
    Stop,
    Web(usize, SocketAddr),
    Sip(usize, SocketAddr),
    Rtp(usize),
    Timer,
    Failed(std::io::Error),
}

impl PhoneTask {
    async fn run(
        mut self,
        phones: BrowserPhones,
        mut stop: oneshot::Receiver<()>,
        connect_by: Instant,
    ) {
        let mut web_buf = vec![0u8; 2048];
        let mut sip_buf = vec![0u8; 8192];
        let mut rtp_buf = vec![0u8; 2048];
        let reason = loop {
            let rtc_deadline = match self.drain_rtc() {
                Ok(d) => d,
                Err(why) => break why,
            };
            let mut deadline = rtc_deadline;
            if let Some(d) = self.leg.as_ref().and_then(|l| l.poll_timeout()) {
                deadline = deadline.min(d);
            }
            if !self.connected.load(Ordering::Acquire) {
                deadline = deadline.min(connect_by);
            }
            let wake = tokio::select! {
                _ = &mut stop => Wake::Stop,
                r = self.web.socket.recv_from(&mut web_buf) => match r {
                    Ok((n, from)) => Wake::Web(n, from),
                    Err(e) => Wake::Failed(e),
                },
                r = self.sip.recv_from(&mut sip_buf) => match r {
                    Ok((n, from)) => Wake::Sip(n, from),
                    Err(e) => Wake::Failed(e),
                },
                r = self.rtp.recv(&mut rtp_buf) => match r {
                    Ok(n) => Wake::Rtp(n),
                    Err(e) => Wake::Failed(e),
                },
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => Wake::Timer,
            };
            let now = clock();
            match wake {
                Wake::Stop => break "hung up from the console".to_string(),
                Wake::Web(n, from) => {
                    let Some(bytes) = web_buf.get(..n) else {
                        continue;
                    };
                    match Receive::new(Protocol::Udp, from, self.local, bytes) {
                        Ok(r) => {
                            if let Err(e) = self.rtc.handle_input(Input::Receive(now, r)) {
                                tracing::debug!(error = %e, "browser datagram refused");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, %from, "not a WebRTC datagram"),
                    }
                }
                Wake::Sip(n, from) => {
                    if let Some(bytes) = sip_buf.get(..n) {
                        self.on_sip(now, from, bytes);
                    }
                }
                Wake::Rtp(n) => {
                    if let Some(pkt) = rtp_buf.get(..n) {
                        self.on_relay_rtp(now, pkt);
                    }
                }
                Wake::Timer => {
                    if !self.connected.load(Ordering::Acquire) && now >= connect_by {
                        break "ICE/DTLS did not complete: is UDP blocked between the browser and the server?".to_string();
                    }
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                        break format!("WebRTC failed: {e}");
                    }
                    if let Some(l) = &mut self.leg {
                        l.handle_timeout(now);
                    }
                }
                // ICMP errors from earlier sends (a port that closed)
                // surface on the next receive on Linux: not fatal.
                Wake::Failed(e) => tracing::debug!(error = %e, "browser phone socket error"),
            }
            self.pump_leg(now).await;
        };
        let now = clock();
        if let Some(leg) = &mut self.leg {
            leg.hangup(now);
        }
        self.pump_leg(now).await;
        self.rtc.disconnect();
        self.connected.store(false, Ordering::Release);
        tracing::info!(agent = %self.agent, frames_in = self.frames_in, frames_out = self.frames_out, "browser phone ends");
        phones.closed(&self.agent, self.id, reason);
    }

    /// Drains str0m's outputs; its next deadline, or why the phone ends.
    fn drain_rtc(&mut self) -> Result<Instant, String> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return Ok(t),
                Ok(Output::Transmit(t)) => {
                    if let Err(e) = self.web.socket.try_send_to(&t.contents, t.destination) {
                        tracing::debug!(error = %e, "datagram to the browser dropped");
                    }
                }
                Ok(Output::Event(ev)) => match ev {
                    Event::Connected => {
                        tracing::info!(agent = %self.agent, "browser phone connected (ICE + DTLS)");
                        self.connected.store(true, Ordering::Release);
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        return Err("the browser's ICE connection was lost".to_string());
                    }
                    Event::MediaAdded(m) if m.kind == MediaKind::Audio => self.mid = Some(m.mid),
                    Event::MediaData(d) => {
                        if self.mid.is_none() {
                            self.mid = Some(d.mid);
                        }
                        self.frame_to_relay(&d);
                    }
                    _ => {}
                },
                Err(e) => return Err(format!("WebRTC failed: {e}")),
            }
        }
    }

    /// The browser's audio frame to the agent leg as RTP (RFC 3550 §5.1),
    /// keeping the browser's sequence number and timestamp.
    fn frame_to_relay(&mut self, d: &str0m::media::MediaData) {
        let Some(dest) = self.relay_rtp else {
            return;
        };
        let mut pkt = [0u8; 12 + 1500];
        let payload = &d.data[..];
        let Some(body) = pkt.get_mut(12..12 + payload.len()) else {
            return;
        };
        body.copy_from_slice(payload);
        let seq = d.seq_range.start().as_u16();
        let ts = d.time.numer() as u32;
        pkt[0] = 0x80;
        pkt[1] = PCMU | if d.audio_start_of_talk_spurt { 0x80 } else { 0 };
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&ts.to_be_bytes());
        // One SSRC per phone; the relay rewrites it anyway (SPEC §6).
        pkt[8..12].copy_from_slice(&(self.id as u32).to_be_bytes());
        if let Err(e) = self.rtp.try_send_to(&pkt[..12 + payload.len()], dest) {
            tracing::debug!(error = %e, "RTP to the agent leg dropped");
        }
        self.frames_in += 1;
    }

    /// RTP from the agent leg (the tone, the lead) to the browser.
    fn on_relay_rtp(&mut self, now: Instant, pkt: &[u8]) {
        let Ok(r) = rtp_rs::RtpReader::new(pkt) else {
            return;
        };
        // telephone-event and comfort noise do not go to the browser.
        if r.payload_type() != PCMU {
            return;
        }
        let Some(mid) = self.mid else {
            return;
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return;
        };
        let time = MediaTime::new(u64::from(r.timestamp()), Frequency::EIGHT_KHZ);
        match writer.write(Pt::new_with_value(PCMU), now, time, r.payload()) {
            Ok(()) => self.frames_out += 1,
            Err(e) => tracing::debug!(error = %e, "frame to the browser dropped"),
        }
        // str0m moves written frames to its send queue in its timeout
        // handling; without this the frame waits for the next deadline
        // (~1 ms, the timer's tick) and answer → bridge with it (SPEC §6).
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(error = %e, "WebRTC timeout handling failed");
        }
    }

    fn on_sip(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        let Ok(msg) = SipMessage::try_from(text) else {
            tracing::debug!(%from, "unparsable SIP to the browser phone");
            return;
        };
        let peer = Peer {
            transport: TransportKind::Udp,
            addr: from,
        };
        let new_invite = matches!(&msg, SipMessage::Request(r) if r.method == Method::Invite)
            && self.leg.as_ref().is_none_or(|l| {
                l.is_closed() || msg_call_id(&msg).is_none_or(|c| c != l.call_id())
            });
        if new_invite {
            let SipMessage::Request(invite) = msg else {
                return;
            };
            let local = LocalAddress {
                sent_by: self.sip_addr.to_string(),
                contact: format!("sip:{}@{}", self.agent, self.sip_addr),
                domain: self.sip_addr.ip().to_string(),
            };
            let busy = self.leg.as_ref().is_some_and(|l| !l.is_closed());
            match InboundLeg::accept(now, peer, invite, &mut self.rng, self.timers, local) {
                Ok(mut leg) => {
                    if busy {
                        leg.reject(now, 486, "Busy Here");
                        // The busy refusal's transaction is short; the
                        // live leg stays the one we keep.
                        return;
                    }
                    match self.answer_for(leg.offer()) {
                        Some(sdp) => {
                            if let Err(e) = leg.answer(now, &sdp) {
                                tracing::warn!(error = %e, "agent leg not answered");
                            }
                            self.answer_sdp = Some(sdp);
                        }
                        None => leg.reject(now, 488, "Not Acceptable Here"),
                    }
                    self.leg = Some(leg);
                }
                Err(e) => tracing::debug!(error = %e, "INVITE to the browser phone refused"),
            }
            return;
        }
        if let Some(leg) = &mut self.leg {
            if let Err(e) = leg.handle_message(now, peer, msg) {
                tracing::debug!(error = %e, "SIP to the browser phone refused");
            }
        }
    }

    /// Our answer to the agent leg's offer: PCMU on the loopback RTP socket
    /// (RFC 3264 §6); remembers where the relay wants our RTP.
    fn answer_for(&mut self, offer: Option<&[u8]>) -> Option<Vec<u8>> {
        let offer = SessionDescription::parse(offer?).ok()?;
        let port = self.rtp.local_addr().ok()?.port();
        let a = sdp::answer(&offer, IpAddr::V4(Ipv4Addr::LOCALHOST), port, self.id).ok()?;
        if a.negotiated.codec.pt != PCMU {
            return None;
        }
        self.relay_rtp = Some(a.negotiated.remote);
        Some(a.sdp.to_bytes())
    }

    /// Sends what the leg has to send and handles its events.
    async fn pump_leg(&mut self, now: Instant) {
        let Some(leg) = &mut self.leg else {
            return;
        };
        while let Some(t) = leg.poll_transmit() {
            let bytes = Bytes::from(crate::sip::message::to_wire(&t.message));
            if let Err(e) = self.sip.send_to(&bytes, t.peer.addr).await {
                tracing::debug!(error = %e, "SIP from the browser phone not sent");
            }
        }
        let mut events = Vec::new();
        while let Some(ev) = leg.poll_event() {
            events.push(ev);
        }
        let mut closed = false;
        for ev in events {
            match ev {
                InboundEvent::ReInvite { offer } => {
                    let body = match offer {
                        Some(o) => self.answer_for_reinvite(&o),
                        None => self.answer_sdp.clone(),
                    };
                    if let (Some(body), Some(leg)) = (body, &mut self.leg) {
                        if let Err(e) = leg.answer_reinvite(now, &body) {
                            tracing::debug!(error = %e, "re-INVITE not answered");
                        }
                    }
                }
                InboundEvent::Ended { reason } => {
                    tracing::info!(agent = %self.agent, %reason, "browser phone's agent leg ended");
                }
                InboundEvent::Closed => closed = true,
                InboundEvent::Cancelled => {}
            }
        }
        if closed {
            self.leg = None;
            self.relay_rtp = None;
        } else if let Some(leg) = &mut self.leg {
            // What the events' answers produced.
            while let Some(t) = leg.poll_transmit() {
                let bytes = Bytes::from(crate::sip::message::to_wire(&t.message));
                let _ = self.sip.send_to(&bytes, t.peer.addr).await;
            }
        }
    }

    fn answer_for_reinvite(&mut self, offer: &[u8]) -> Option<Vec<u8>> {
        let sdp = self.answer_for(Some(offer));
        if sdp.is_some() {
            self.answer_sdp = sdp.clone();
        }
        sdp.or_else(|| self.answer_sdp.clone())
    }
}

fn msg_call_id(m: &SipMessage) -> Option<String> {
    use crate::sip::syntax::HeadersExt;
    let c = match m {
        SipMessage::Request(r) => r.call_id_header().ok()?.value().trim().to_string(),
        SipMessage::Response(r) => r.call_id_header().ok()?.value().trim().to_string(),
    };
    Some(c)
}
