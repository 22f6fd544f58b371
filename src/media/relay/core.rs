//! The sans-IO media core of one agent: the nailed-up agent leg, the lead leg
//! of the current dial, what the agent hears (beep, silence, early media, the
//! lead) and what the lead hears (the agent once bridged).
//!
//! The driver feeds it datagrams and timeouts with `now`, and sends what it
//! hands back. Received packets are rewritten in the receive buffer and
//! handed back as a range of it: no copy, no allocation per packet.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::media::amd::{AmdConfig, Cause, Decision, Detector, Verdict};
use crate::media::dtmf::{DtmfDetector, TelephoneEvent};
use crate::media::g711::G711Law;
use crate::media::latch::{Latch, LatchDecision};
use crate::media::recording::{TapFrame, Track};
use crate::media::rewrite::{parse_rtp, OutFormat, PayloadKind, StreamRewriter};
use crate::media::sdp::{Direction, Negotiated};
use crate::media::tone::{Frame, ToneGenerator, FRAME_DURATION, FRAME_SAMPLES};

/// A media leg's identity, unique within one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// Which of the agent's two legs a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// powerdial ↔ agent phone.
    Agent,
    /// powerdial ↔ carrier, for the current dial.
    Lead,
}

/// Output identity of a stream we originate (RFC 3550 §5.1: SSRC, initial
/// sequence number and timestamp are random; the driver draws them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSeed {
    /// SSRC.
    pub ssrc: u32,
    /// First sequence number.
    pub seq: u16,
    /// First timestamp.
    pub timestamp: u32,
}

/// Settings of the media core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// Length of the dial-start beep (SPEC §1 step 2).
    pub beep: Duration,
    /// No RTP for this long on a leg that should be sending → `RtpTimeout`
    /// (`dialer.rtp_timeout`). The agent leg counts from its answer, the
    /// lead leg from the bridge (before it, the ring timeout governs, R8);
    /// held legs are exempt.
    pub rtp_timeout: Duration,
    /// Agent DTMF digits that drive the dialer and are not relayed to the
    /// lead (SPEC §5: `*` next lead, `#` hang up the lead, `0` pause; SPEC
    /// §4: `9` voicemail drop).
    pub control_digits: Vec<char>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            beep: Duration::from_millis(250),
            rtp_timeout: Duration::from_secs(30),
            control_digits: vec!['*', '#', '0', '9'],
        }
    }
}

/// Something the call layer should know (SPEC §5, §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A key press on a leg (RFC 4733). On the agent leg, control digits are
    /// reported and not relayed; the others are reported and relayed.
    Dtmf {
        /// The leg.
        leg: LegId,
        /// `0-9 * # A-D`.
        digit: char,
    },
    /// A leg that should be sending has been silent for `rtp_timeout`.
    /// Reported once until packets resume.
    RtpTimeout {
        /// The leg.
        leg: LegId,
    },
    /// The first RTP packet of a leg arrived (measurement, SPEC §6).
    FirstRtp {
        /// The leg.
        leg: LegId,
        /// When.
        at: Instant,
    },
    /// The first lead packet went to the agent after `bridge` (SPEC §6
    /// answer → bridge).
    BridgeFirstPacket {
        /// The lead leg.
        lead: LegId,
        /// When the bridge was applied.
        bridged_at: Instant,
        /// When the packet was handed to the agent's socket.
        at: Instant,
    },
    /// A leg's RTP source was learnt (symmetric RTP) and differs from or
    /// confirms the SDP address.
    Latched {
        /// The leg.
        leg: LegId,
        /// The address we now send to.
        addr: SocketAddr,
    },
    /// Answering-machine detection on the lead leg reached its verdict
    /// (SPEC §4 `amd`); in the routing modes a human or an unsure line
    /// is bridged by the core in the same step.
    Amd {
        /// The lead leg.
        leg: LegId,
        /// Human, machine or not sure.
        verdict: Verdict,
        /// Why.
        cause: Cause,
        /// From the start of the detection (the lead's 200 OK) to the
        /// verdict.
        after: Duration,
    },
    /// A voicemail drop finished on a handed-off lead leg (SPEC §4): the
    /// message played whole (`played`) or the drop was stopped.
    DropFinished {
        /// The lead leg.
        leg: LegId,
        /// The message played to its end.
        played: bool,
        /// What started it, and when.
        started: Option<(Instant, crate::media::voicemail::DropStart)>,
    },
    /// RTP arrived from a host the signalling does not name and was
    /// dropped (SPEC §5). Reported once per leg; the rest are counted.
    StrayDropped {
        /// The leg.
        leg: LegId,
        /// The first stranger's address.
        from: SocketAddr,
    },
}

/// A lead leg given away by [`AgentMediaCore::hand_off_lead`].
#[derive(Debug)]
pub struct HandOff {
    /// Where its RTP goes (the latched or signalled address).
    pub dest: SocketAddr,
    /// Its offer/answer result (codec, payload types).
    pub neg: Negotiated,
    /// The stream we were sending it.
    pub stream: StreamRewriter,
}

/// A command the core refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The leg is neither this agent's leg nor its current lead leg.
    #[error("unknown media leg {0:?}")]
    UnknownLeg(LegId),
}

/// A packet to send: which side's socket, where, and which bytes of the
/// buffer that was passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Send from this side's socket.
    pub side: Side,
    /// To this address.
    pub dest: SocketAddr,
    /// These bytes of the buffer.
    pub range: Range<usize>,
}

#[derive(Debug)]
struct Leg {
    id: LegId,
    neg: Option<Negotiated>,
    latch: Latch,
    /// Last packet received, or when we started expecting packets.
    last_rx: Option<Instant>,
    timed_out: bool,
    seen: bool,
    stray_reported: bool,
    detector: DtmfDetector,
}

impl Leg {
    fn new(id: LegId) -> Self {
        Leg {
            id,
            neg: None,
            latch: Latch::default(),
            last_rx: None,
            timed_out: false,
            seen: false,
            stray_reported: false,
            detector: DtmfDetector::new(),
        }
    }

    fn classify(&self, pt: u8) -> Option<PayloadKind> {
        let n = self.neg.as_ref()?;
        if pt == n.codec.pt {
            Some(PayloadKind::Audio(n.codec.law))
        } else if Some(pt) == n.dtmf_pt {
            Some(PayloadKind::TelephoneEvent)
        } else {
            // Comfort noise (PT 13) or anything unnegotiated: not relayed.
            None
        }
    }

    /// Where to send, if the peer accepts media from us.
    fn dest(&self) -> Option<SocketAddr> {
        let n = self.neg.as_ref()?;
        if n.direction.sends() {
            self.latch.dest()
        } else {
            None
        }
    }

    /// When this leg's silence becomes an [`MediaEvent::RtpTimeout`]. Only a
    /// `sendrecv` stream is expected to carry packets all the time: a peer
    /// that holds (`a=sendonly`, `a=inactive` or `c=0.0.0.0`, RFC 3264 §8.4)
    /// or only listens (`a=recvonly`) may send nothing by design.
    fn timeout_deadline(&self, after: Duration) -> Option<Instant> {
        let n = self.neg.as_ref()?;
        if self.timed_out || n.direction != Direction::SendRecv {
            return None;
        }
        self.last_rx.map(|t| t + after)
    }
}

fn out_format(n: &Negotiated) -> OutFormat {
    OutFormat {
        law: n.codec.law,
        pt: n.codec.pt,
        dtmf_pt: n.dtmf_pt,
    }
}

/// Early media counts as playing if a packet came within this long; the
/// generator fills in silence after it (3 lost frames is not yet silence).
const EARLY_MEDIA_HOLD: Duration = Duration::from_millis(60);
/// A driver this late skips the missed frames instead of bursting them.
const MAX_TICK_LAG: Duration = Duration::from_millis(100);

/// Silence frames sent at the full 20 ms cadence after the agent last heard
/// something (the beep, early media, the lead) before the generator thins
/// them to [`KEEP_ALIVE`]. A phone that stops receiving conceals the gap
/// from the audio it last played: G.711 Appendix I's concealment repeats
/// pitch periods out of its last 48.75 ms (390 samples), so a stream that
/// stopped right after the beep could be heard as a smeared beep tail.
/// Three frames (60 ms) of real silence fill that history with silence
/// first, and let a jitter buffer a few frames deep play out to silence.
pub const HANGOVER_FRAMES: u8 = 3;

/// The cadence of the silence the agent hears while no lead is connected,
/// after the hangover (RFC 3550 §5.1/§5.2 and RFC 3551 §4.1: a sender may
/// stop sending in silence; its next packet starts a talkspurt). Not
/// zero: a phone behind NAT needs packets to keep its pinhole open (NATs
/// that keep a UDP mapping only 30 s are common, though RFC 4787 REQ-5
/// asks for 2 min; ICE's keep-alive default is 15 s, RFC 8445 §11), and
/// phones, SBCs and B2BUAs in front of agents end calls after some seconds
/// of media inactivity (many default to 10–60 s). One second is far inside
/// all of those, gives a jitter buffer a talkspurt a second with the
/// timestamp on the wall clock, and is 1/50 of the 20 ms cadence: 200
/// idle agents cost 200 frames a second instead of 10,000 (SPEC §6).
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Lead audio arriving this long after the detector's own analysis
/// window still counts; past it the line is `not_sure` (a carrier that
/// sends no RTP at all must not hold the agent).
const AMD_GRACE: Duration = Duration::from_millis(500);

/// How long lead RTP that arrived before the answer was applied is held
/// for it ([`EarlyHold`]): a carrier starts the callee's audio with its 200
/// OK, often before the answer has crossed the signalling path; 200 ms is
/// ten 20 ms frames, the first word of "hello".
pub const EARLY_HOLD: Duration = Duration::from_millis(200);
/// At most this many packets are held per lead leg ([`EARLY_HOLD`] of
/// 20 ms frames)…
pub const EARLY_HOLD_PACKETS: usize = 10;
/// …and at most this many bytes (ten G.711 frames of 20 ms are 1,720),
/// so a stranger spraying the port before the answer costs a bounded
/// buffer, freed when the answer comes (SPEC §6 memory per call).
pub const EARLY_HOLD_BYTES: usize = 2048;

/// Lead RTP that arrived while the dial's offer was outstanding (no
/// answer applied yet), held in arrival order. Nothing in it has been
/// judged: once the answer is applied each packet goes through
/// [`AgentMediaCore::handle_rtp`] as if it had arrived then — the latch
/// decides on its source (SPEC §5: only the address the signalling names;
/// anything else is dropped as a stray, never relayed), the negotiated
/// payload types on its payload. What ages past [`EARLY_HOLD`], does not
/// fit, or is still held when the leg closes is dropped.
#[derive(Debug, Default)]
struct EarlyHold {
    /// (arrival, source, bytes of `bytes`), oldest first.
    packets: VecDeque<(Instant, SocketAddr, Range<usize>)>,
    /// The held datagrams, back to back.
    bytes: Vec<u8>,
}

/// Answering-machine detection on the current lead leg (SPEC §4 `amd`).
#[derive(Debug)]
struct Listening {
    lead: LegId,
    detector: Detector,
    started: Instant,
    deadline: Instant,
    /// The agent hears the lead only after a human (or unsure) verdict.
    hold: bool,
    /// The last lead audio payload, analysed after it was relayed so the
    /// detector adds no latency to the bridge (SPEC §6).
    law: G711Law,
    pending: Vec<u8>,
}

/// The media core of one agent (see the module doc).
#[derive(Debug)]
pub struct AgentMediaCore {
    cfg: CoreConfig,
    agent: Leg,
    lead: Option<Leg>,
    bridged_at: Option<Instant>,
    first_after_bridge: bool,
    tone: ToneGenerator,
    to_agent: StreamRewriter,
    to_lead: Option<StreamRewriter>,
    next_tick: Option<Instant>,
    /// Silence frames generated since the agent last heard something;
    /// saturates. Past [`HANGOVER_FRAMES`] the generator is at the
    /// keep-alive cadence ([`Self::keep_alive`]).
    silent_run: u8,
    last_early_media: Option<Instant>,
    events: VecDeque<MediaEvent>,
    /// RTP from hosts the signalling does not name, dropped (SPEC §5).
    stray_dropped: u64,
    /// Answering-machine detection, while it runs. Boxed: most calls
    /// never run it, and its detector is half a kilobyte (SPEC §6 memory
    /// per call).
    listening: Option<Box<Listening>>,
    /// The lead is not relayed to the agent until the core bridges it
    /// (detection in a routing mode; a machine stays held).
    lead_held: bool,
    /// Recording of the current lead call (SPEC §4 `record`), boxed for
    /// the same reason.
    tap: Option<Box<Tap>>,
    /// Lead RTP that came before the answer, held for it; boxed, and only
    /// while it holds something.
    early: Option<Box<EarlyHold>>,
    /// Lead packets held for the answer, and held ones dropped unrelayed
    /// (aged out, over the bound, the leg closed), since the driver last
    /// took the counts.
    early_held: u32,
    early_dropped: u32,
}

/// The recording tap of a lead call: relayed audio goes to the writer.
#[derive(Debug)]
struct Tap {
    lead: LegId,
    tx: tokio::sync::mpsc::Sender<TapFrame>,
    /// The last relayed audio payload's direction and law, and its bytes
    /// (decoded and sent in `after_rtp`).
    pending: Option<(Track, G711Law)>,
    bytes: Vec<u8>,
}

impl AgentMediaCore {
    /// A core for the agent leg `agent`; the stream towards the agent uses
    /// `seed`. Nothing is sent until the agent's remote is set.
    pub fn new(cfg: CoreConfig, agent: LegId, seed: StreamSeed) -> Self {
        let pcmu = OutFormat {
            law: G711Law::Pcmu,
            pt: 0,
            dtmf_pt: None,
        };
        AgentMediaCore {
            tone: ToneGenerator::dial_beep(G711Law::Pcmu, cfg.beep),
            cfg,
            agent: Leg::new(agent),
            lead: None,
            bridged_at: None,
            first_after_bridge: false,
            to_agent: StreamRewriter::new(seed.ssrc, seed.seq, seed.timestamp, pcmu),
            to_lead: None,
            next_tick: None,
            silent_run: 0,
            last_early_media: None,
            events: VecDeque::new(),
            stray_dropped: 0,
            listening: None,
            lead_held: false,
            tap: None,
            early: None,
            early_held: 0,
            early_dropped: 0,
        }
    }

    /// RTP packets dropped because they came from a host the signalling
    /// does not name (a scanner, an injection attempt).
    pub fn stray_dropped(&self) -> u64 {
        self.stray_dropped
    }

    /// The agent leg's id.
    pub fn agent_leg(&self) -> LegId {
        self.agent.id
    }

    /// The current lead leg's id.
    pub fn lead_leg(&self) -> Option<LegId> {
        self.lead.as_ref().map(|l| l.id)
    }

    /// Whether the agent hears the lead.
    pub fn is_bridged(&self) -> bool {
        self.bridged_at.is_some()
    }

    fn leg_mut(&mut self, id: LegId) -> Result<&mut Leg, CoreError> {
        if self.agent.id == id {
            return Ok(&mut self.agent);
        }
        match &mut self.lead {
            Some(l) if l.id == id => Ok(l),
            _ => Err(CoreError::UnknownLeg(id)),
        }
    }

    /// The host a leg's peer signals from (its SIP source): the only host
    /// besides its SDP's from which its first RTP packet may latch (SPEC §5).
    pub fn set_signalling(&mut self, id: LegId, host: std::net::IpAddr) -> Result<(), CoreError> {
        self.leg_mut(id)?.latch.set_signalling(host);
        Ok(())
    }

    /// Applies an offer/answer result to a leg (RFC 3264): where to send,
    /// which payload types to expect and to write.
    pub fn set_remote(
        &mut self,
        now: Instant,
        id: LegId,
        neg: Negotiated,
    ) -> Result<(), CoreError> {
        let leg = self.leg_mut(id)?;
        leg.latch.set_signalled(neg.remote);
        leg.neg = Some(neg);
        // A new offer/answer (an answer, a resume from hold) gives the peer
        // a full `rtp_timeout` from now to start sending.
        leg.last_rx = Some(now);
        leg.timed_out = false;
        if id == self.agent.id {
            self.to_agent.set_format(out_format(&neg));
            self.tone.set_law(neg.codec.law);
            if self.bridged_at.is_none() && self.next_tick.is_none() {
                self.next_tick = Some(now);
            }
        } else if let Some(rw) = &mut self.to_lead {
            rw.set_format(out_format(&neg));
        }
        Ok(())
    }

    /// Makes `id` the lead leg of the current dial (replacing any previous
    /// one, which is unbridged); the stream towards it uses `seed`.
    pub fn attach_lead(&mut self, id: LegId, seed: StreamSeed) {
        self.bridged_at = None;
        self.lead = Some(Leg::new(id));
        let pcmu = OutFormat {
            law: G711Law::Pcmu,
            pt: 0,
            dtmf_pt: None,
        };
        self.to_lead = Some(StreamRewriter::new(
            seed.ssrc,
            seed.seq,
            seed.timestamp,
            pcmu,
        ));
        self.last_early_media = None;
        self.listening = None;
        self.lead_held = false;
        self.tap = None;
        self.forget_early();
    }

    /// Forgets the lead leg (its call ended); the agent hears silence.
    pub fn detach_lead(&mut self, now: Instant, id: LegId) -> Result<(), CoreError> {
        match &self.lead {
            Some(l) if l.id == id => {
                self.unbridge(now);
                self.lead = None;
                self.to_lead = None;
                self.listening = None;
                self.lead_held = false;
                // The writer finishes the file once its sender is gone.
                self.tap = None;
                self.forget_early();
                Ok(())
            }
            _ => Err(CoreError::UnknownLeg(id)),
        }
    }

    /// Gives the lead leg away (a voicemail drop plays on it while the
    /// agent dials on, SPEC §4): where to send, in which format, and the
    /// stream towards it so its SSRC and sequence go on. The agent hears
    /// silence.
    pub fn hand_off_lead(&mut self, now: Instant, id: LegId) -> Result<HandOff, CoreError> {
        let (dest, neg) = match &self.lead {
            Some(l) if l.id == id => (l.dest(), l.neg),
            _ => return Err(CoreError::UnknownLeg(id)),
        };
        let stream = self.to_lead.take();
        self.detach_lead(now, id)?;
        let (Some(dest), Some(neg), Some(stream)) = (dest, neg, stream) else {
            return Err(CoreError::UnknownLeg(id));
        };
        Ok(HandOff { dest, neg, stream })
    }

    /// Starts the dial-start beep towards the agent (SPEC §1 step 2), at
    /// once: out of the keep-alive cadence too (its first frame then marks
    /// the end of the pause).
    pub fn play_tone(&mut self, now: Instant) {
        self.tone.start();
        if self.bridged_at.is_none()
            && (self.next_tick.is_none() || self.keep_alive())
            && self.agent.neg.is_some()
        {
            self.next_tick = Some(now);
        }
    }

    /// Connects agent and lead in one step (SPEC §1 step 4): the next lead
    /// packet goes to the agent, the generator stops.
    pub fn bridge(&mut self, now: Instant, lead: LegId) -> Result<(), CoreError> {
        match &self.lead {
            Some(l) if l.id == lead => {
                // The lead's RTP timeout starts with the answer.
                if let Some(l) = &mut self.lead {
                    l.last_rx = Some(now);
                    l.timed_out = false;
                }
                self.bridged_at = Some(now);
                self.lead_held = false;
                self.first_after_bridge = true;
                self.tone.stop();
                self.next_tick = None;
                self.silent_run = 0;
                Ok(())
            }
            _ => Err(CoreError::UnknownLeg(lead)),
        }
    }

    /// Starts answering-machine detection on the lead leg at its answer
    /// (SPEC §4 `amd`): its audio is analysed as it is relayed. With
    /// `hold`, the agent is bridged only once the verdict is human or not
    /// sure (a machine is the call layer's to route); without it the call
    /// layer bridges as usual.
    pub fn start_amd(
        &mut self,
        now: Instant,
        lead: LegId,
        cfg: AmdConfig,
        hold: bool,
    ) -> Result<(), CoreError> {
        let Some(l) = &self.lead else {
            return Err(CoreError::UnknownLeg(lead));
        };
        if l.id != lead {
            return Err(CoreError::UnknownLeg(lead));
        }
        let law = l.neg.as_ref().map_or(G711Law::Pcmu, |n| n.codec.law);
        self.listening = Some(Box::new(Listening {
            lead,
            detector: Detector::new(cfg),
            started: now,
            deadline: now + Duration::from_millis(u64::from(cfg.total_analysis_ms)) + AMD_GRACE,
            hold,
            law,
            pending: Vec::with_capacity(FRAME_SAMPLES * 2),
        }));
        self.lead_held = hold;
        Ok(())
    }

    /// Records the lead call from now (its answer, SPEC §4 `record`): the
    /// lead's audio, and the agent's once bridged, go to `tx` as they are
    /// relayed. Closing the lead leg closes the channel.
    pub fn start_recording(
        &mut self,
        lead: LegId,
        tx: tokio::sync::mpsc::Sender<TapFrame>,
    ) -> Result<(), CoreError> {
        if self.lead.as_ref().is_none_or(|l| l.id != lead) {
            return Err(CoreError::UnknownLeg(lead));
        }
        self.tap = Some(Box::new(Tap {
            lead,
            tx,
            pending: None,
            bytes: Vec::with_capacity(FRAME_SAMPLES),
        }));
        Ok(())
    }

    /// Whether the detector is still listening to the lead.
    pub fn is_listening(&self) -> bool {
        self.listening.is_some()
    }

    /// Whether the last [`Self::handle_rtp`] took audio aside for
    /// [`Self::after_rtp`] (a recording or a detector): the driver sends
    /// what it relayed before calling it, so the work adds no latency.
    pub fn has_after_rtp_work(&self) -> bool {
        self.tap.as_ref().is_some_and(|t| t.pending.is_some())
            || self
                .listening
                .as_ref()
                .is_some_and(|l| !l.pending.is_empty())
    }

    /// Analyses the lead audio the last [`Self::handle_rtp`] took aside,
    /// after the driver relayed it (the detector is off the hot path).
    pub fn after_rtp(&mut self, now: Instant) {
        if let Some(t) = &mut self.tap {
            if let Some((track, law)) = t.pending.take() {
                // Decoded by the writer, not here.
                let frame = TapFrame {
                    track,
                    at: now,
                    law,
                    payload: t.bytes.clone(),
                };
                // Never waits: a writer that falls behind loses frames.
                if t.tx.try_send(frame).is_err() {
                    tracing::debug!("recording frame dropped: the writer is behind");
                }
            }
        }
        let Some(l) = &mut self.listening else { return };
        if l.pending.is_empty() {
            return;
        }
        let mut pcm = [0i16; FRAME_SAMPLES * 2];
        let mut decision = None;
        for chunk in l.pending.chunks(pcm.len()) {
            let pcm = &mut pcm[..chunk.len()];
            for (s, b) in pcm.iter_mut().zip(chunk) {
                *s = l.law.decode(*b);
            }
            if let Some(d) = l.detector.push(pcm) {
                decision = Some(d);
                break;
            }
        }
        l.pending.clear();
        if let Some(d) = decision {
            self.amd_decided(now, d);
        }
    }

    fn amd_decided(&mut self, now: Instant, d: Decision) {
        let Some(l) = self.listening.take() else {
            return;
        };
        self.events.push_back(MediaEvent::Amd {
            leg: l.lead,
            verdict: d.verdict,
            cause: d.cause,
            after: now.saturating_duration_since(l.started),
        });
        if l.hold && d.verdict != Verdict::Machine && self.bridged_at.is_none() {
            let _ = self.bridge(now, l.lead);
        }
    }

    /// Disconnects agent and lead; the agent hears generated silence again.
    pub fn unbridge(&mut self, now: Instant) {
        if self.bridged_at.take().is_some() && self.agent.neg.is_some() {
            // The agent heard the lead until now: a hangover of silence at
            // the frame cadence first.
            self.next_tick = Some(now);
            self.silent_run = 0;
        }
        self.first_after_bridge = false;
    }

    /// Handles one datagram received on `side`'s RTP socket. `buf` is the
    /// datagram; it is rewritten in place and the returned [`Forward`] names
    /// the bytes to send. Malformed or unexpected packets return `None`.
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        side: Side,
        from: SocketAddr,
        buf: &mut [u8],
    ) -> Option<Forward> {
        let pkt = parse_rtp(buf).ok()?;
        if side == Side::Lead && self.holds_early() {
            self.hold_early(now, from, buf);
            return None;
        }
        let leg = match side {
            Side::Agent => &mut self.agent,
            Side::Lead => self.lead.as_mut()?,
        };
        let Some(kind) = leg.classify(pkt.pt) else {
            // Comfort noise (RFC 3389) and other payloads we do not relay
            // still show that the peer sends: a phone with voice activity
            // detection sends only CN while its user is silent, and must
            // not be hung up for `rtp_timeout`.
            if leg.neg.is_some() && leg.latch.is_peer(from) {
                leg.last_rx = Some(now);
                leg.timed_out = false;
            }
            return None;
        };
        match leg.latch.accept(from) {
            LatchDecision::Reject => {
                // From a host the signalling does not name: never relayed.
                self.stray_dropped += 1;
                if !leg.stray_reported {
                    leg.stray_reported = true;
                    self.events
                        .push_back(MediaEvent::StrayDropped { leg: leg.id, from });
                }
                return None;
            }
            LatchDecision::Latched(addr) => self
                .events
                .push_back(MediaEvent::Latched { leg: leg.id, addr }),
            LatchDecision::Accept => {}
        }
        leg.last_rx = Some(now);
        leg.timed_out = false;
        if !leg.seen {
            leg.seen = true;
            self.events.push_back(MediaEvent::FirstRtp {
                leg: leg.id,
                at: now,
            });
        }
        let leg_id = leg.id;
        if kind == PayloadKind::TelephoneEvent {
            let payload = buf.get(pkt.payload.clone())?;
            if let Ok(Some(digit)) = leg.detector.handle(pkt.timestamp, payload) {
                self.events
                    .push_back(MediaEvent::Dtmf { leg: leg_id, digit });
            }
            if side == Side::Agent {
                let ev = TelephoneEvent::parse(payload).ok()?;
                // Every packet of a control digit stays here, not only the
                // one that reported it.
                if ev
                    .digit()
                    .is_some_and(|d| self.cfg.control_digits.contains(&d))
                {
                    return None;
                }
            }
        }
        if let (Some(t), PayloadKind::Audio(law)) = (&mut self.tap, kind) {
            // The lead from its answer, the agent once it talks to the lead.
            let track = match side {
                Side::Lead if leg_id == t.lead => Some(Track::Lead),
                Side::Agent if self.bridged_at.is_some() => Some(Track::Agent),
                _ => None,
            };
            if let (Some(track), Some(payload)) = (track, buf.get(pkt.payload.clone())) {
                t.bytes.clear();
                t.bytes.extend_from_slice(payload);
                t.pending = Some((track, law));
            }
        }
        match side {
            Side::Agent => {
                self.bridged_at?;
                let dest = self.lead.as_ref()?.dest()?;
                let range = self
                    .to_lead
                    .as_mut()?
                    .forward(now, leg_id.0, kind, &pkt, buf)?;
                Some(Forward {
                    side: Side::Lead,
                    dest,
                    range,
                })
            }
            Side::Lead => {
                if let (Some(l), PayloadKind::Audio(law)) = (&mut self.listening, kind) {
                    if let Some(payload) = buf.get(pkt.payload.clone()) {
                        // A copy of at most a few hundred bytes; decoded
                        // and analysed in `after_rtp`.
                        l.law = law;
                        l.pending.extend_from_slice(payload);
                    }
                }
                if self.lead_held && self.bridged_at.is_none() {
                    // Neither early media nor the lead: the agent waits
                    // for the verdict, and never hears a machine.
                    return None;
                }
                let dest = self.agent.dest()?;
                match self.bridged_at {
                    Some(bridged_at) => {
                        let range = self.to_agent.forward(now, leg_id.0, kind, &pkt, buf)?;
                        if std::mem::take(&mut self.first_after_bridge) {
                            self.events.push_back(MediaEvent::BridgeFirstPacket {
                                lead: leg_id,
                                bridged_at,
                                at: now,
                            });
                        }
                        Some(Forward {
                            side: Side::Agent,
                            dest,
                            range,
                        })
                    }
                    None => {
                        // Early media: the beep has priority while it sounds.
                        if self.tone.is_beeping() {
                            return None;
                        }
                        self.last_early_media = Some(now);
                        if self.keep_alive() {
                            // The generator slept at the keep-alive cadence:
                            // it looks again within a frame, to fill with
                            // silence once the early media stops.
                            self.silent_run = 0;
                            self.next_tick = Some(now + FRAME_DURATION);
                        }
                        let range = self.to_agent.forward(now, leg_id.0, kind, &pkt, buf)?;
                        Some(Forward {
                            side: Side::Agent,
                            dest,
                            range,
                        })
                    }
                }
            }
        }
    }

    /// Whether a lead packet arriving now is held for the answer
    /// ([`EarlyHold`]) rather than judged: the dial's offer is outstanding
    /// (no answer applied to the lead leg yet), or packets held before the
    /// answer still wait for their turn (order is kept).
    fn holds_early(&self) -> bool {
        match &self.lead {
            Some(l) if l.neg.is_none() => true,
            Some(_) => self.early.is_some() && !self.early_releasable(),
            None => false,
        }
    }

    /// Whether held lead packets can be judged now as if they had just
    /// arrived: the answer is applied and the call layer has said what the
    /// agent hears (bridged, or held for the detector), or the beep that
    /// would have hidden early media is over.
    fn early_releasable(&self) -> bool {
        self.lead.as_ref().is_some_and(|l| l.neg.is_some())
            && (self.bridged_at.is_some() || self.lead_held || !self.tone.is_beeping())
    }

    fn hold_early(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let e = self.early.get_or_insert_with(|| {
            Box::new(EarlyHold {
                packets: VecDeque::with_capacity(EARLY_HOLD_PACKETS),
                bytes: Vec::with_capacity(EARLY_HOLD_BYTES),
            })
        });
        while e
            .packets
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > EARLY_HOLD)
        {
            e.packets.pop_front();
            self.early_dropped += 1;
        }
        // What aged out gives its room back.
        let first = e.packets.front().map_or(e.bytes.len(), |p| p.2.start);
        if first > 0 {
            e.bytes.drain(..first);
            for p in &mut e.packets {
                p.2 = p.2.start - first..p.2.end - first;
            }
        }
        let start = e.bytes.len();
        let end = start + datagram.len();
        if e.packets.len() >= EARLY_HOLD_PACKETS || end > EARLY_HOLD_BYTES {
            // Full: the earliest audio is kept, the newest dropped.
            self.early_dropped += 1;
            return;
        }
        e.bytes.extend_from_slice(datagram);
        e.packets.push_back((now, from, start..end));
        self.early_held += 1;
    }

    /// Drops whatever is held (the lead leg closed or was replaced).
    fn forget_early(&mut self) {
        if let Some(e) = self.early.take() {
            self.early_dropped += u32::try_from(e.packets.len()).unwrap_or(u32::MAX);
        }
    }

    /// The next lead packet held for the answer ([`EarlyHold`]), once it
    /// can be judged: copied into `out`, with its source and length. The
    /// driver hands it to [`Self::handle_rtp`] as a packet of the lead leg
    /// arriving `now`, and calls again until `None`, before it reads the
    /// lead's socket again (order is kept). A packet held longer than
    /// [`EARLY_HOLD`] is dropped instead.
    pub fn take_held(&mut self, now: Instant, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        if self.early.is_none() || !self.early_releasable() {
            return None;
        }
        loop {
            let next = self.early.as_mut().and_then(|e| {
                let (at, from, range) = e.packets.pop_front()?;
                Some((at, from, e.bytes.get(range)))
            });
            let Some((at, from, bytes)) = next else {
                self.early = None;
                return None;
            };
            let copied = bytes.and_then(|b| {
                let dst = out.get_mut(..b.len())?;
                dst.copy_from_slice(b);
                Some(b.len())
            });
            match copied {
                Some(n) if now.saturating_duration_since(at) <= EARLY_HOLD => {
                    return Some((from, n));
                }
                _ => self.early_dropped += 1,
            }
        }
    }

    /// Whether lead packets are held for the answer ([`EarlyHold`]).
    pub fn has_held(&self) -> bool {
        self.early.is_some()
    }

    /// Lead packets held for the answer, and held ones dropped without
    /// being judged, since the last call (for the relay's counters).
    pub fn take_early_counts(&mut self) -> (u32, u32) {
        (
            std::mem::take(&mut self.early_held),
            std::mem::take(&mut self.early_dropped),
        )
    }

    /// The lead leg's RTP-timeout deadline: only once bridged (answered).
    fn lead_timeout_deadline(&self) -> Option<Instant> {
        self.bridged_at?;
        self.lead.as_ref()?.timeout_deadline(self.cfg.rtp_timeout)
    }

    /// The generator sends silence only every [`KEEP_ALIVE`] (the
    /// hangover is over): its next frame starts a talkspurt after a pause.
    fn keep_alive(&self) -> bool {
        self.silent_run >= HANGOVER_FRAMES
    }

    /// The next instant [`Self::handle_timeout`] must run: the next
    /// generated frame (20 ms apart, or [`KEEP_ALIVE`] apart in silence)
    /// or the earliest RTP-timeout deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.cfg.rtp_timeout;
        [
            self.next_tick,
            self.agent.timeout_deadline(t),
            self.lead_timeout_deadline(),
            self.listening.as_ref().map(|l| l.deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs timers: RTP timeouts, and writes the generated frame due (beep or
    /// silence, unless early media is playing) into `out`, returning where to
    /// send it and its length. Call again until it returns `None`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let t = self.cfg.rtp_timeout;
        if self.agent.timeout_deadline(t).is_some_and(|d| d <= now) {
            self.agent.timed_out = true;
            self.events
                .push_back(MediaEvent::RtpTimeout { leg: self.agent.id });
        }
        if self.lead_timeout_deadline().is_some_and(|d| d <= now) {
            if let Some(lead) = &mut self.lead {
                lead.timed_out = true;
                self.events
                    .push_back(MediaEvent::RtpTimeout { leg: lead.id });
            }
        }
        if let Some(l) = self.listening.as_ref().filter(|l| l.deadline <= now) {
            let at_ms = u32::try_from(now.saturating_duration_since(l.started).as_millis())
                .unwrap_or(u32::MAX);
            self.amd_decided(
                now,
                Decision {
                    verdict: Verdict::NotSure,
                    cause: Cause::TooLong,
                    at_ms,
                    speech_from_ms: None,
                },
            );
        }
        let tick = self.next_tick.filter(|t| *t <= now)?;
        let next = |period: Duration| {
            let next = tick + period;
            if now.saturating_duration_since(next) > MAX_TICK_LAG {
                now + period
            } else {
                next
            }
        };
        let beeping = self.tone.is_beeping();
        if !beeping
            && self
                .last_early_media
                .is_some_and(|t| now.saturating_duration_since(t) < EARLY_MEDIA_HOLD)
        {
            // The agent hears the early media; silence after it starts a
            // new hangover.
            self.silent_run = 0;
            self.next_tick = Some(next(FRAME_DURATION));
            return None;
        }
        let after_pause = self.keep_alive();
        self.silent_run = if beeping {
            0
        } else {
            self.silent_run.saturating_add(1)
        };
        // Past the hangover, silence goes only every KEEP_ALIVE; each such
        // frame ends a pause (RFC 3551 §4.1).
        self.next_tick = Some(next(if self.keep_alive() {
            KEEP_ALIVE
        } else {
            FRAME_DURATION
        }));
        // On the stack: a frame lives for one call of this (SPEC §6
        // memory per call).
        let mut frame: Frame = [0; FRAME_SAMPLES];
        self.tone.next_frame(&mut frame);
        let dest = self.agent.dest()?;
        let n = if after_pause {
            self.to_agent.generated_after_pause(now, &frame, out)?
        } else {
            self.to_agent.generated(now, &frame, out)?
        };
        Some((dest, n))
    }

    /// The next event for the call layer. The queue's room is given back
    /// once it is drained: events are a few per call, and every joined
    /// agent would otherwise keep the room of its busiest moment (SPEC §6
    /// memory per call).
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        let event = self.events.pop_front();
        if self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulated clock's origin: the only real clock read, in tests.
    #[allow(clippy::disallowed_methods)]
    fn anchor() -> Instant {
        Instant::now()
    }
    use crate::media::dtmf::TelephoneEvent;
    use crate::media::sdp::{Codec, Direction};

    const AGENT: LegId = LegId(1);
    const LEAD: LegId = LegId(2);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn neg(remote: &str, law: G711Law, dtmf: Option<u8>) -> Negotiated {
        let r = addr(remote);
        Negotiated {
            remote: r,
            remote_rtcp: SocketAddr::new(r.ip(), r.port() + 1),
            codec: Codec {
                law,
                pt: law.static_pt(),
            },
            dtmf_pt: dtmf,
            direction: Direction::SendRecv,
            ptime: 20,
        }
    }

    fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&ssrc.to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    struct Sent {
        dest: SocketAddr,
        side: Side,
        bytes: Vec<u8>,
    }

    struct Harness {
        core: AgentMediaCore,
        t0: Instant,
        now: Instant,
        to_agent: Vec<Sent>,
        to_lead: Vec<Sent>,
    }

    impl Harness {
        fn new() -> Self {
            let t0 = anchor();
            let core = AgentMediaCore::new(
                CoreConfig {
                    rtp_timeout: Duration::from_secs(5),
                    ..CoreConfig::default()
                },
                AGENT,
                StreamSeed {
                    ssrc: 0xA6E47,
                    seq: 100,
                    timestamp: 1000,
                },
            );
            Harness {
                core,
                t0,
                now: t0,
                to_agent: Vec::new(),
                to_lead: Vec::new(),
            }
        }

        /// Runs timers up to `t` (ms after start), collecting generated frames.
        fn advance(&mut self, ms: u64) {
            let end = self.t0 + Duration::from_millis(ms);
            while let Some(t) = self.core.poll_timeout().filter(|t| *t <= end) {
                self.now = t.max(self.now);
                let mut out = [0u8; 200];
                while let Some((dest, n)) = self.core.handle_timeout(self.now, &mut out) {
                    self.to_agent.push(Sent {
                        dest,
                        side: Side::Agent,
                        bytes: out[..n].to_vec(),
                    });
                }
            }
            self.now = end;
        }

        fn recv(&mut self, side: Side, from: &str, mut pkt: Vec<u8>) -> bool {
            match self.core.handle_rtp(self.now, side, addr(from), &mut pkt) {
                Some(f) => {
                    let s = Sent {
                        dest: f.dest,
                        side: f.side,
                        bytes: pkt[f.range].to_vec(),
                    };
                    match f.side {
                        Side::Agent => self.to_agent.push(s),
                        Side::Lead => self.to_lead.push(s),
                    }
                    true
                }
                None => false,
            }
        }

        fn events(&mut self) -> Vec<MediaEvent> {
            std::iter::from_fn(|| self.core.poll_event()).collect()
        }

        /// What the driver does after commands and timers: the lead
        /// packets held for the answer, judged now; how many were relayed.
        fn release_held(&mut self) -> usize {
            let mut relayed = 0;
            let mut out = [0u8; 2048];
            while let Some((from, n)) = self.core.take_held(self.now, &mut out) {
                if self.recv(Side::Lead, &from.to_string(), out[..n].to_vec()) {
                    relayed += 1;
                }
            }
            relayed
        }
    }

    /// A greeting of `fixtures/greetings/` (8 kHz μ-law).
    fn greeting(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/greetings")
            .join(name);
        std::fs::read(p).unwrap()
    }

    /// An answered lead with detection on; the agent's and the lead's
    /// remotes set.
    fn answered_with_amd(hold: bool) -> Harness {
        let mut h = Harness::new();
        h.core
            .set_remote(h.now, AGENT, neg("192.168.0.5:4000", G711Law::Pcmu, None))
            .unwrap();
        h.core.attach_lead(
            LEAD,
            StreamSeed {
                ssrc: 0x1EAD,
                seq: 5,
                timestamp: 7,
            },
        );
        h.core
            .set_remote(h.now, LEAD, neg("198.51.100.1:30000", G711Law::Pcmu, None))
            .unwrap();
        h.core
            .start_amd(h.now, LEAD, AmdConfig::default(), hold)
            .unwrap();
        if !hold {
            h.core.bridge(h.now, LEAD).unwrap();
        }
        h
    }

    /// Plays `audio` as the lead's 20 ms packets from `from_ms`, then
    /// silence until `until_ms`; returns the verdict event, if any.
    fn play_lead(h: &mut Harness, audio: &[u8], from_ms: u64, until_ms: u64) -> Option<MediaEvent> {
        let silence = [0xFFu8; 160];
        let frames = (until_ms - from_ms) / 20;
        let mut verdict = None;
        for i in 0..frames {
            h.advance(from_ms + 20 * i);
            let start = (i as usize) * 160;
            let payload = audio.get(start..start + 160).unwrap_or(&silence);
            h.recv(
                Side::Lead,
                "198.51.100.1:30000",
                rtp(0, i == 0, i as u16, 160 * i as u32, 0xCA, payload),
            );
            h.core.after_rtp(h.now);
            for e in h.events() {
                if matches!(e, MediaEvent::Amd { .. }) {
                    verdict = Some(e);
                }
            }
        }
        verdict
    }

    #[test]
    fn amd_holds_the_agent_until_a_human_and_then_bridges() {
        let mut h = answered_with_amd(true);
        let hello = greeting("human-01-Hello.ul");
        let before = h.to_agent.len();
        let v = play_lead(&mut h, &hello, 0, 4000).expect("a verdict");
        let MediaEvent::Amd { verdict, after, .. } = v else {
            unreachable!()
        };
        assert_eq!(verdict, Verdict::Human);
        assert!(after < Duration::from_secs(2), "{after:?}");
        assert!(h.core.is_bridged(), "a human is bridged by the core");
        // Before the verdict the agent got only generated frames (the
        // lead's audio was held back); after it, the lead's packets.
        let lead_ssrc_packets = h.to_agent[before..]
            .iter()
            .filter(|s| s.bytes[12..].iter().any(|b| *b != 0xFF))
            .count();
        assert!(
            lead_ssrc_packets < hello.len() / 160,
            "the greeting leaked to the agent"
        );
        assert!(!h.core.is_listening());
    }

    #[test]
    fn amd_never_bridges_a_machine_in_the_routing_modes() {
        let mut h = answered_with_amd(true);
        let greeting = greeting("machine-21-beep.ul");
        let v = play_lead(&mut h, &greeting, 0, 6000).expect("a verdict");
        assert!(
            matches!(
                v,
                MediaEvent::Amd {
                    verdict: Verdict::Machine,
                    ..
                }
            ),
            "{v:?}"
        );
        assert!(!h.core.is_bridged());
        // Nothing of the greeting reached the agent: only generated silence.
        assert!(h
            .to_agent
            .iter()
            .all(|s| s.bytes[12..].iter().all(|b| *b == 0xFF)));
    }

    #[test]
    fn amd_in_detect_mode_relays_at_once_and_still_classifies() {
        let mut h = answered_with_amd(false);
        let greeting = greeting("machine-21-beep.ul");
        let before = h.to_agent.len();
        let v = play_lead(&mut h, &greeting, 0, 6000).expect("a verdict");
        assert!(matches!(
            v,
            MediaEvent::Amd {
                verdict: Verdict::Machine,
                ..
            }
        ));
        // Every lead packet went to the agent (the bridge is not held).
        assert_eq!(h.to_agent.len() - before, 300);
    }

    #[test]
    fn amd_without_lead_audio_is_not_sure_after_the_window() {
        let mut h = answered_with_amd(true);
        h.advance(5_000);
        assert!(!h
            .events()
            .iter()
            .any(|e| matches!(e, MediaEvent::Amd { .. })));
        h.advance(5_600);
        let ev = h.events();
        assert!(
            ev.iter().any(|e| matches!(
                e,
                MediaEvent::Amd {
                    verdict: Verdict::NotSure,
                    cause: Cause::TooLong,
                    ..
                }
            )),
            "{ev:?}"
        );
        // Not sure is put through: the agent decides.
        assert!(h.core.is_bridged());
    }

    #[test]
    fn agent_hears_beep_then_early_media_then_lead_as_one_stream() {
        let mut h = Harness::new();
        h.core
            .set_remote(
                h.now,
                AGENT,
                neg("192.168.0.5:4000", G711Law::Pcmu, Some(101)),
            )
            .unwrap();
        h.core.attach_lead(
            LEAD,
            StreamSeed {
                ssrc: 0x1EAD,
                seq: 5,
                timestamp: 7,
            },
        );
        h.core.play_tone(h.now);
        h.advance(290);
        // 250 ms beep = 12.5 frames → 13 frames with tone, then silence; frames at 0..280 ms.
        assert_eq!(h.to_agent.len(), 15);
        let with_tone = h
            .to_agent
            .iter()
            .filter(|s| s.bytes[12..].iter().any(|b| *b != 0xFF))
            .count();
        assert_eq!(with_tone, 13);
        assert!(h
            .to_agent
            .iter()
            .all(|s| s.dest == addr("192.168.0.5:4000") && s.side == Side::Agent));

        // 183 with SDP: the carrier sends PCMA early media from 305 ms.
        h.core
            .set_remote(
                h.now,
                LEAD,
                neg("198.51.100.1:30000", G711Law::Pcma, Some(100)),
            )
            .unwrap();
        for i in 0..5u16 {
            h.advance(305 + 20 * u64::from(i));
            assert!(h.recv(
                Side::Lead,
                "198.51.100.1:30000",
                rtp(
                    8,
                    i == 0,
                    500 + i,
                    80_000 + 160 * u32::from(i),
                    0xCA,
                    &[0xD5; 160]
                )
            ));
        }
        // While early media flows the generator is quiet (one silence frame
        // went at 300 ms, before it started).
        h.advance(385);
        assert_eq!(h.to_agent.len(), 16 + 5);
        // Agent audio is not relayed before the answer.
        assert!(!h.recv(
            Side::Agent,
            "192.168.0.5:4000",
            rtp(0, false, 1, 1, 0xA9, &[0x11; 160])
        ));

        // Answer at 390 ms: new SSRC from the carrier.
        h.advance(390);
        h.core.bridge(h.now, LEAD).unwrap();
        h.advance(395);
        for i in 0..5u16 {
            assert!(h.recv(
                Side::Lead,
                "198.51.100.1:30000",
                rtp(
                    8,
                    false,
                    9000 + i,
                    3_000_000 + 160 * u32::from(i),
                    0xCB,
                    &[0x2A; 160]
                )
            ));
            h.advance(395 + 20 * (u64::from(i) + 1));
        }
        assert_eq!(
            h.to_agent.len(),
            16 + 5 + 5,
            "no generated frames after bridge"
        );

        let out: Vec<_> = h
            .to_agent
            .iter()
            .map(|s| parse_rtp(&s.bytes).unwrap())
            .collect();
        for w in out.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
            assert_eq!(w[1].ssrc, 0xA6E47);
            assert!(w[1].timestamp.wrapping_sub(w[0].timestamp) >= 160);
            assert!(w[1].timestamp.wrapping_sub(w[0].timestamp) <= 240);
            assert_eq!(w[1].pt, 0);
        }
        let switches: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, p)| p.marker)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(switches, vec![0, 16, 21]);
        // The lead's A-law full scale arrives as μ-law full scale.
        assert_eq!(
            h.to_agent[21].bytes[12],
            crate::media::g711::ALAW_TO_ULAW[0x2A]
        );

        // The lead hears the agent now, with the lead's PT and SSRC.
        assert!(h.recv(
            Side::Agent,
            "192.168.0.5:4000",
            rtp(0, false, 2, 161, 0xA9, &[0xFF; 160])
        ));
        let p = parse_rtp(&h.to_lead[0].bytes).unwrap();
        assert_eq!(
            (p.pt, p.ssrc, p.seq, p.timestamp, p.marker),
            (8, 0x1EAD, 5, 7, true)
        );
        assert_eq!(h.to_lead[0].dest, addr("198.51.100.1:30000"));
        assert_eq!(h.to_lead[0].bytes[12], 0xD5);

        let ev = h.events();
        assert!(ev.contains(&MediaEvent::FirstRtp {
            leg: LEAD,
            at: h.t0 + Duration::from_millis(305)
        }));
        let bridged = h.t0 + Duration::from_millis(390);
        let first = h.t0 + Duration::from_millis(395);
        assert!(ev.contains(&MediaEvent::BridgeFirstPacket {
            lead: LEAD,
            bridged_at: bridged,
            at: first
        }));
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, MediaEvent::BridgeFirstPacket { .. }))
                .count(),
            1
        );

        // Hang-up of the lead: silence resumes, continuing the stream.
        h.core.detach_lead(h.now, LEAD).unwrap();
        let before = h.to_agent.len();
        h.advance(600);
        assert!(h.to_agent.len() > before);
        let p = parse_rtp(&h.to_agent[before].bytes).unwrap();
        assert!(p.marker);
        assert_eq!(p.seq, out.last().unwrap().seq.wrapping_add(1));
    }

    #[test]
    fn agent_control_digits_are_events_and_others_are_relayed() {
        let mut h = Harness::new();
        h.core
            .set_remote(h.now, AGENT, neg("10.0.0.2:5000", G711Law::Pcmu, Some(101)))
            .unwrap();
        h.core.attach_lead(
            LEAD,
            StreamSeed {
                ssrc: 1,
                seq: 1,
                timestamp: 1,
            },
        );
        h.core
            .set_remote(h.now, LEAD, neg("10.0.0.3:6000", G711Law::Pcmu, Some(96)))
            .unwrap();
        h.core.bridge(h.now, LEAD).unwrap();
        let ev = |code, end, dur| {
            TelephoneEvent {
                event: code,
                end,
                volume: 10,
                duration: dur,
            }
            .to_bytes()
        };
        let mut relayed = 0;
        // `*`: start, update, three ends.
        for (i, (end, dur)) in [
            (false, 160),
            (false, 320),
            (true, 480),
            (true, 480),
            (true, 480),
        ]
        .into_iter()
        .enumerate()
        {
            relayed += usize::from(h.recv(
                Side::Agent,
                "10.0.0.2:5000",
                rtp(101, i == 0, 10 + i as u16, 8000, 7, &ev(10, end, dur)),
            ));
        }
        assert_eq!(relayed, 0, "control digits stay with us");
        // `5`: relayed, with the lead's event PT.
        for (i, end) in [false, true, true, true].into_iter().enumerate() {
            relayed += usize::from(h.recv(
                Side::Agent,
                "10.0.0.2:5000",
                rtp(101, i == 0, 20 + i as u16, 16000, 7, &ev(5, end, 400)),
            ));
        }
        assert_eq!(relayed, 4);
        assert!(h
            .to_lead
            .iter()
            .all(|s| parse_rtp(&s.bytes).unwrap().pt == 96));
        let digits: Vec<_> = h
            .events()
            .into_iter()
            .filter_map(|e| match e {
                MediaEvent::Dtmf { leg, digit } => Some((leg, digit)),
                _ => None,
            })
            .collect();
        assert_eq!(digits, vec![(AGENT, '*'), (AGENT, '5')]);
    }

    #[test]
    fn latching_and_rtp_timeout() {
        let mut h = Harness::new();
        h.core
            .set_remote(h.now, AGENT, neg("192.168.1.20:4000", G711Law::Pcmu, None))
            .unwrap();
        // The phone registered from its NAT's public address.
        h.core
            .set_signalling(AGENT, "203.0.113.9".parse().unwrap())
            .unwrap();
        h.advance(10);
        assert_eq!(h.to_agent[0].dest, addr("192.168.1.20:4000"));
        // A stranger spraying the port first is dropped and counted.
        h.recv(
            Side::Agent,
            "198.51.100.99:1234",
            rtp(0, false, 9, 1, 77, &[0xFF; 160]),
        );
        assert_eq!(h.core.stray_dropped(), 1);
        assert!(h
            .events()
            .iter()
            .any(|e| matches!(e, MediaEvent::StrayDropped { leg: AGENT, .. })));
        h.advance(10);
        assert_eq!(h.to_agent.last().unwrap().dest, addr("192.168.1.20:4000"));
        // The phone is behind a NAT: its packets come from the public address.
        h.recv(
            Side::Agent,
            "203.0.113.9:62000",
            rtp(0, false, 1, 1, 5, &[0xFF; 160]),
        );
        h.advance(30);
        assert_eq!(h.to_agent.last().unwrap().dest, addr("203.0.113.9:62000"));
        // Another sender cannot take over.
        h.recv(
            Side::Agent,
            "198.51.100.99:1234",
            rtp(0, false, 2, 161, 5, &[0xFF; 160]),
        );
        h.advance(50);
        assert_eq!(h.to_agent.last().unwrap().dest, addr("203.0.113.9:62000"));
        // Unknown payload types (comfort noise) and garbage are dropped.
        assert!(!h.recv(
            Side::Agent,
            "203.0.113.9:62000",
            rtp(13, false, 3, 321, 5, &[0x40])
        ));
        assert!(!h.recv(Side::Agent, "203.0.113.9:62000", vec![1, 2, 3]));

        let ev = h.events();
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, MediaEvent::Latched { .. }))
                .count(),
            1
        );
        // Silence from the phone for 5 s after its comfort noise at 50 ms
        // (the stranger's and the garbage do not count) → one timeout,
        // re-armed by a packet.
        h.advance(5_040);
        assert_eq!(h.events(), vec![]);
        h.advance(5_060);
        assert_eq!(h.events(), vec![MediaEvent::RtpTimeout { leg: AGENT }]);
        h.advance(20_000);
        assert_eq!(h.events(), vec![]);
        h.recv(
            Side::Agent,
            "203.0.113.9:62000",
            rtp(0, false, 4, 481, 5, &[0xFF; 160]),
        );
        h.advance(25_100);
        assert_eq!(h.events(), vec![MediaEvent::RtpTimeout { leg: AGENT }]);
    }

    fn timeouts(h: &mut Harness) -> Vec<(u64, LegId)> {
        h.events()
            .into_iter()
            .filter_map(|e| match e {
                MediaEvent::RtpTimeout { leg } => Some(((h.now - h.t0).as_millis() as u64, leg)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lead_rtp_timeout_counts_from_the_answer_not_while_ringing() {
        // rtp_timeout is 5 s in the harness.
        let mut h = Harness::new();
        h.core
            .set_remote(h.now, AGENT, neg("10.0.0.2:5000", G711Law::Pcmu, None))
            .unwrap();
        h.core.attach_lead(
            LEAD,
            StreamSeed {
                ssrc: 1,
                seq: 1,
                timestamp: 1,
            },
        );
        // 183 with SDP and no early media: ringing for 20 s is R8's business.
        h.core
            .set_remote(h.now, LEAD, neg("10.0.0.3:6000", G711Law::Pcmu, None))
            .unwrap();
        let mut t = 0;
        // The phone keeps talking all along (a packet every 20 ms).
        let mut talk = |h: &mut Harness, until: u64| {
            while t + 20 <= until {
                t += 20;
                h.advance(t);
                h.recv(
                    Side::Agent,
                    "10.0.0.2:5000",
                    rtp(0, false, t as u16, t as u32 * 8, 9, &[0xFF; 160]),
                );
            }
        };
        talk(&mut h, 20_000);
        assert_eq!(timeouts(&mut h), vec![]);
        // Answered at 20 s; the carrier sends two packets, then nothing.
        h.core.bridge(h.now, LEAD).unwrap();
        for i in 0..2u16 {
            talk(&mut h, 20_020 + 20 * u64::from(i));
            assert!(h.recv(
                Side::Lead,
                "10.0.0.3:6000",
                rtp(0, false, i, 160 * u32::from(i), 7, &[0x55; 160])
            ));
        }
        talk(&mut h, 25_039);
        assert_eq!(timeouts(&mut h), vec![]);
        // Last lead packet at 20.04 s: the timeout fires at 25.04 s exactly.
        h.advance(25_040);
        assert_eq!(timeouts(&mut h), vec![(25_040, LEAD)]);
        // Reported once.
        talk(&mut h, 40_000);
        assert_eq!(timeouts(&mut h), vec![]);
    }

    #[test]
    fn a_held_phone_never_times_out_and_a_resumed_one_does() {
        let mut h = Harness::new();
        let with = |dir| Negotiated {
            direction: dir,
            ..neg("10.0.0.2:5000", G711Law::Pcmu, None)
        };
        // The phone answered sendrecv, then put us on hold at 1 s with
        // a=sendonly (our side: recvonly) and sends nothing.
        h.core
            .set_remote(h.now, AGENT, with(Direction::SendRecv))
            .unwrap();
        h.advance(1_000);
        h.core
            .set_remote(h.now, AGENT, with(Direction::RecvOnly))
            .unwrap();
        h.advance(60_000);
        assert_eq!(timeouts(&mut h), vec![]);
        // a=inactive: the same.
        h.core
            .set_remote(h.now, AGENT, with(Direction::Inactive))
            .unwrap();
        h.advance(120_000);
        assert_eq!(timeouts(&mut h), vec![]);
        // Resumed at 120 s (sendrecv again) but still silent: 5 s from the
        // resume, not from the last packet before the hold.
        h.core
            .set_remote(h.now, AGENT, with(Direction::SendRecv))
            .unwrap();
        h.advance(124_990);
        assert_eq!(timeouts(&mut h), vec![]);
        h.advance(125_000);
        assert_eq!(timeouts(&mut h), vec![(125_000, AGENT)]);
    }

    #[test]
    fn comfort_noise_keeps_a_phone_alive_but_is_not_relayed() {
        // A phone with VAD: one audio packet, then only comfort noise (PT 13,
        // RFC 3389) every 200 ms for a minute; rtp_timeout is 5 s.
        let mut h = Harness::new();
        h.core
            .set_remote(h.now, AGENT, neg("10.0.0.2:5000", G711Law::Pcmu, None))
            .unwrap();
        assert!(!h.recv(
            Side::Agent,
            "10.0.0.2:5000",
            rtp(0, false, 1, 160, 9, &[0xFF; 160])
        ));
        for i in 1..300u16 {
            h.advance(200 * u64::from(i));
            assert!(!h.recv(
                Side::Agent,
                "10.0.0.2:5000",
                rtp(13, false, 1 + i, 160 + 1600 * u32::from(i), 9, &[0x40])
            ));
        }
        assert_eq!(timeouts(&mut h), vec![]);
        // Comfort noise from a stranger does not count: 5 s after the
        // phone's last packet (59.8 s) it times out.
        for i in 0..24u16 {
            h.advance(60_000 + 200 * u64::from(i));
            h.recv(
                Side::Agent,
                "192.0.2.66:5000",
                rtp(13, false, 400 + i, 0, 66, &[0x40]),
            );
        }
        h.advance(64_799);
        assert_eq!(timeouts(&mut h), vec![]);
        h.advance(64_800);
        assert_eq!(timeouts(&mut h), vec![(64_800, AGENT)]);
    }

    /// (ms after start, marker, timestamp, sequence, all silence) of each
    /// packet sent to the agent.
    fn sent_to_agent(h: &Harness, at: &[u64]) -> Vec<(u64, bool, u32, u16, bool)> {
        h.to_agent
            .iter()
            .zip(at)
            .map(|(s, at)| {
                let p = parse_rtp(&s.bytes).unwrap();
                let silent = s.bytes[12..].iter().all(|b| *b == 0xFF);
                (*at, p.marker, p.timestamp, p.seq, silent)
            })
            .collect()
    }

    #[test]
    fn idle_silence_thins_to_a_keep_alive_and_resumes_at_once() {
        let mut h = Harness::new();
        h.core
            .set_remote(h.now, AGENT, neg("192.168.0.5:4000", G711Law::Pcmu, None))
            .unwrap();
        h.core.play_tone(h.now);
        // The 250 ms beep is 13 frames (0 … 240 ms), then the hangover's
        // three silence frames at the frame cadence (260, 280, 300 ms), then
        // one silence frame a second.
        h.advance(1_299);
        assert_eq!(h.to_agent.len(), 13 + HANGOVER_FRAMES as usize);
        assert_eq!(
            h.core.poll_timeout(),
            Some(h.t0 + Duration::from_millis(1_300))
        );
        h.advance(5_300);
        assert_eq!(h.to_agent.len(), 16 + 5);
        // The next dial's beep at 5.61 s goes out at once, not at the next
        // keep-alive.
        h.advance(5_610);
        h.core.play_tone(h.now);
        assert_eq!(h.core.poll_timeout(), Some(h.now));
        h.advance(5_630);
        assert_eq!(h.to_agent.len(), 21 + 2);
        let mut at: Vec<u64> = (0..16).map(|i| 20 * i).collect();
        at.extend([1_300, 2_300, 3_300, 4_300, 5_300, 5_610, 5_630]);
        let out = sent_to_agent(&h, &at);
        for w in out.windows(2) {
            let ((t0, _, ts0, seq0, _), (t1, marker, ts1, seq1, _)) = (w[0], w[1]);
            assert_eq!(seq1, seq0.wrapping_add(1), "sequence +1 across every pause");
            // The RTP clock follows the wall clock, across pauses too.
            assert_eq!(ts1.wrapping_sub(ts0), 8 * (t1 - t0) as u32, "{t0} → {t1}");
            // A marker exactly where a packet ends a pause (RFC 3551 §4.1).
            assert_eq!(marker, t1 - t0 > 20, "{t0} → {t1}");
        }
        assert!(out[0].1, "the stream's first packet");
        assert!(out[13..21].iter().all(|p| p.4), "silence");
        assert!(!out[21].4 && !out[22].4, "the beep");
        assert!(h
            .to_agent
            .iter()
            .all(|s| s.dest == addr("192.168.0.5:4000")));
    }

    #[test]
    fn early_media_wakes_a_keep_alive_generator_and_silence_after_it_thins_again() {
        let mut h = Harness::new();
        h.core
            .set_remote(h.now, AGENT, neg("192.168.0.5:4000", G711Law::Pcmu, None))
            .unwrap();
        // Silence from 0 ms: three frames (0, 20, 40), then a keep-alive at
        // 1,040 ms.
        h.advance(1_100);
        assert_eq!(h.to_agent.len(), 4);
        h.core.attach_lead(
            LEAD,
            StreamSeed {
                ssrc: 1,
                seq: 1,
                timestamp: 1,
            },
        );
        h.core
            .set_remote(h.now, LEAD, neg("198.51.100.1:30000", G711Law::Pcmu, None))
            .unwrap();
        // Early media from 1,500 to 1,600 ms: relayed at once, and the
        // generator stays quiet while it plays.
        for i in 0..6u16 {
            h.advance(1_500 + 20 * u64::from(i));
            assert!(h.recv(
                Side::Lead,
                "198.51.100.1:30000",
                rtp(0, i == 0, i, 160 * u32::from(i), 0xCA, &[0x2A; 160])
            ));
        }
        h.advance(1_659);
        assert_eq!(h.to_agent.len(), 4 + 6);
        // 60 ms after the last early packet, the hangover (1,660, 1,680,
        // 1,700 ms), then a keep-alive at 2,700 ms.
        h.advance(2_699);
        assert_eq!(h.to_agent.len(), 10 + 3);
        h.advance(2_700);
        assert_eq!(h.to_agent.len(), 14);
        let at = [
            0, 20, 40, 1_040, 1_500, 1_520, 1_540, 1_560, 1_580, 1_600, 1_660, 1_680, 1_700, 2_700,
        ];
        let out = sent_to_agent(&h, &at);
        let markers: Vec<u64> = out.iter().filter(|p| p.1).map(|p| p.0).collect();
        assert_eq!(markers, [0, 1_040, 1_500, 1_660, 2_700]);
        for w in out.windows(2) {
            let ((t0, _, ts0, seq0, _), (t1, _, ts1, seq1, _)) = (w[0], w[1]);
            assert_eq!(seq1, seq0.wrapping_add(1));
            assert_eq!(ts1.wrapping_sub(ts0), 8 * (t1 - t0) as u32, "{t0} → {t1}");
        }
    }

    /// An agent hearing the dial-start beep, dialling LEAD; the trunk
    /// signals from 198.51.100.1.
    fn dialling() -> Harness {
        let mut h = Harness::new();
        h.core
            .set_remote(h.now, AGENT, neg("192.168.0.5:4000", G711Law::Pcmu, None))
            .unwrap();
        h.core.attach_lead(
            LEAD,
            StreamSeed {
                ssrc: 0x1EAD,
                seq: 5,
                timestamp: 7,
            },
        );
        h.core
            .set_signalling(LEAD, "198.51.100.1".parse().unwrap())
            .unwrap();
        h.core.play_tone(h.now);
        h.advance(10);
        h.to_agent.clear();
        h
    }

    /// The n-th lead packet of a carrier: PCMU, payload byte `0x10 + n`.
    fn lead_pkt(n: u16) -> Vec<u8> {
        rtp(
            0,
            n == 0,
            300 + n,
            16_000 + 160 * u32::from(n),
            0xCA11,
            &[0x10 + n as u8; 160],
        )
    }

    /// The payload marks of what the agent got from the lead (generated
    /// frames are 0xFF silence or the beep's varying samples).
    fn lead_audio_at_agent(h: &Harness) -> Vec<u8> {
        h.to_agent
            .iter()
            .filter(|s| s.bytes[12..].iter().all(|b| *b == s.bytes[12]))
            .map(|s| s.bytes[12])
            .filter(|b| (0x10..0x30).contains(b))
            .collect()
    }

    #[test]
    fn lead_rtp_before_the_answer_is_held_and_relayed_at_the_bridge() {
        // The carrier sends its 200 OK and the callee's first audio at
        // once; the audio overtakes the answer (SPEC §6 answer → bridge).
        let mut h = dialling();
        for n in 0..3 {
            h.advance(11 + u64::from(n));
            assert!(!h.recv(Side::Lead, "198.51.100.1:30000", lead_pkt(n)));
        }
        // A stranger spraying the port meanwhile is held too, unjudged.
        assert!(!h.recv(Side::Lead, "203.0.113.66:5000", lead_pkt(9)));
        assert_eq!(h.release_held(), 0, "nothing goes before the answer");
        assert_eq!(lead_audio_at_agent(&h), Vec::<u8>::new());

        // The answer's SDP is applied at 30 ms while the beep sounds: the
        // call layer has not said yet what the agent hears, so nothing
        // goes, and a packet arriving now queues behind the held ones.
        h.advance(30);
        h.core
            .set_remote(h.now, LEAD, neg("198.51.100.1:30000", G711Law::Pcmu, None))
            .unwrap();
        assert_eq!(h.release_held(), 0);
        h.advance(31);
        assert!(!h.recv(Side::Lead, "198.51.100.1:30000", lead_pkt(3)));
        h.core.bridge(h.now, LEAD).unwrap();
        assert_eq!(h.release_held(), 4);
        // In order, the stranger's dropped as a stray and never relayed.
        assert_eq!(lead_audio_at_agent(&h), vec![0x10, 0x11, 0x12, 0x13]);
        assert_eq!(h.core.stray_dropped(), 1);
        assert_eq!(h.core.take_early_counts(), (5, 0));
        let ev = h.events();
        assert!(ev.contains(&MediaEvent::BridgeFirstPacket {
            lead: LEAD,
            bridged_at: h.now,
            at: h.now
        }));
        assert!(ev.contains(&MediaEvent::StrayDropped {
            leg: LEAD,
            from: addr("203.0.113.66:5000")
        }));
        // One stream towards the agent: the relayed packets follow on.
        let seqs: Vec<u16> = h
            .to_agent
            .iter()
            .map(|s| u16::from_be_bytes([s.bytes[2], s.bytes[3]]))
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "{seqs:?}"
        );
        // Nothing is held any more: the next packet goes at once.
        assert!(h.recv(Side::Lead, "198.51.100.1:30000", lead_pkt(4)));
        assert!(!h.core.has_held());
    }

    #[test]
    fn held_lead_rtp_from_a_host_the_answer_does_not_name_is_never_relayed() {
        let mut h = dialling();
        // 192.0.2.9 is neither the trunk's signalling host nor, as it
        // turns out, the answer's media address.
        for n in 0..3 {
            assert!(!h.recv(Side::Lead, "192.0.2.9:7000", lead_pkt(n)));
        }
        h.advance(20);
        h.core
            .set_remote(h.now, LEAD, neg("198.51.100.7:4000", G711Law::Pcmu, None))
            .unwrap();
        h.core.bridge(h.now, LEAD).unwrap();
        assert_eq!(h.release_held(), 0);
        assert_eq!(lead_audio_at_agent(&h), Vec::<u8>::new());
        assert_eq!(h.core.stray_dropped(), 3);
        // Nothing was learnt from them: the agent's audio goes to the
        // answer's address, and the stranger still cannot latch.
        assert!(h.recv(
            Side::Agent,
            "192.168.0.5:4000",
            rtp(0, false, 1, 160, 0xA9, &[0x55; 160])
        ));
        assert_eq!(h.to_lead.last().unwrap().dest, addr("198.51.100.7:4000"));
        assert!(!h.recv(Side::Lead, "192.0.2.9:7000", lead_pkt(3)));
        assert!(h.recv(Side::Lead, "198.51.100.7:4000", lead_pkt(4)));
        assert_eq!(lead_audio_at_agent(&h), vec![0x14]);
    }

    #[test]
    fn the_early_hold_is_bounded_in_packets_bytes_and_time() {
        let mut h = dialling();
        // Fifteen packets: the first ten are held, the rest dropped.
        for n in 0..15 {
            assert!(!h.recv(Side::Lead, "198.51.100.1:30000", lead_pkt(n)));
        }
        assert_eq!(h.core.take_early_counts(), (10, 5));
        // Answered 200 ms after they came: still relayed.
        h.advance(210);
        h.core
            .set_remote(h.now, LEAD, neg("198.51.100.1:30000", G711Law::Pcmu, None))
            .unwrap();
        h.core.bridge(h.now, LEAD).unwrap();
        assert_eq!(h.release_held(), 10);
        assert_eq!(lead_audio_at_agent(&h), (0x10..0x1A).collect::<Vec<u8>>());

        // Held longer than EARLY_HOLD: dropped, never relayed late.
        let mut h = dialling();
        for n in 0..3 {
            assert!(!h.recv(Side::Lead, "198.51.100.1:30000", lead_pkt(n)));
        }
        h.advance(10 + 201);
        h.core
            .set_remote(h.now, LEAD, neg("198.51.100.1:30000", G711Law::Pcmu, None))
            .unwrap();
        h.core.bridge(h.now, LEAD).unwrap();
        assert_eq!(h.release_held(), 0);
        assert_eq!(h.core.take_early_counts(), (3, 3));
        assert!(!h.core.has_held());

        // Bytes: two 1,000-byte datagrams do not fit in EARLY_HOLD_BYTES.
        let mut h = dialling();
        let big = |n: u16| rtp(0, false, n, 160 * u32::from(n), 0xB16, &[0x20; 1000]);
        assert!(!h.recv(Side::Lead, "198.51.100.1:30000", big(1)));
        assert!(!h.recv(Side::Lead, "198.51.100.1:30000", big(2)));
        assert!(!h.recv(Side::Lead, "198.51.100.1:30000", big(3)));
        assert_eq!(h.core.take_early_counts(), (2, 1));
        // Aged out, they give their room back.
        h.advance(10 + 250);
        assert!(!h.recv(Side::Lead, "198.51.100.1:30000", big(4)));
        assert!(!h.recv(Side::Lead, "198.51.100.1:30000", big(5)));
        assert_eq!(h.core.take_early_counts(), (2, 2));

        // A dial that ends unanswered drops what it held.
        h.core.detach_lead(h.now, LEAD).unwrap();
        assert_eq!(h.core.take_early_counts(), (0, 2));
        assert!(!h.core.has_held());
    }

    #[test]
    fn held_lead_rtp_feeds_a_holding_detector_and_never_the_agent() {
        let mut h = dialling();
        for n in 0..3 {
            assert!(!h.recv(Side::Lead, "198.51.100.1:30000", lead_pkt(n)));
        }
        h.advance(20);
        h.core
            .set_remote(h.now, LEAD, neg("198.51.100.1:30000", G711Law::Pcmu, None))
            .unwrap();
        h.core
            .start_amd(h.now, LEAD, AmdConfig::default(), true)
            .unwrap();
        let mut out = [0u8; 2048];
        let mut judged = 0;
        while let Some((from, n)) = h.core.take_held(h.now, &mut out) {
            assert!(h
                .core
                .handle_rtp(h.now, Side::Lead, from, &mut out[..n])
                .is_none());
            assert!(h.core.has_after_rtp_work(), "the detector hears it");
            h.core.after_rtp(h.now);
            judged += 1;
        }
        assert_eq!(judged, 3);
        assert_eq!(lead_audio_at_agent(&h), Vec::<u8>::new());
    }

    #[test]
    fn commands_on_unknown_legs_fail() {
        let mut h = Harness::new();
        assert_eq!(h.core.bridge(h.now, LEAD), Err(CoreError::UnknownLeg(LEAD)));
        assert_eq!(
            h.core
                .set_remote(h.now, LEAD, neg("1.1.1.1:1", G711Law::Pcmu, None)),
            Err(CoreError::UnknownLeg(LEAD))
        );
        assert_eq!(
            h.core.detach_lead(h.now, LEAD),
            Err(CoreError::UnknownLeg(LEAD))
        );
        // No remote yet: nothing is generated, no timers.
        h.core.play_tone(h.now);
        assert_eq!(h.core.poll_timeout(), None);
    }
}
