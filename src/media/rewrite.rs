//! The outgoing RTP stream towards one phone (sans-IO): one SSRC, sequence
//! numbers +1 per packet, timestamps that keep running when the source
//! changes (generated tone → lead early media → lead answer), and the payload
//! type of the out leg, transcoding PCMU↔PCMA when the legs differ.
//!
//! Why rewrite: the agent's phone keeps one RTP session for the whole
//! nailed-up leg. A new SSRC or a timestamp jump makes many phones flush or
//! stall their jitter buffer (RFC 3550 §8.2 lets them treat it as a new
//! source), which would be heard as a gap right when the lead says "hello".
//! RFC 3551 §4.1: the marker bit flags the start of a talkspurt, which is
//! what a source switch is for the receiver's playout adjustment.

use std::ops::Range;
use std::time::{Duration, Instant};

use rtp_rs::{RtpReader, RtpReaderError};

use super::g711::{transcode_in_place, G711Law};
use super::sdp::CLOCK_RATE;

/// Length of the fixed RTP header we write (RFC 3550 §5.1, no CSRC, no extension).
pub const RTP_HEADER_LEN: usize = 12;

/// Why a datagram is not an RTP packet we can relay (RFC 3550 §5.1, §A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the fixed header.
    #[error("datagram of {0} bytes is too short for RTP")]
    TooShort(usize),
    /// Version field is not 2.
    #[error("RTP version {0}, expected 2")]
    Version(u8),
    /// CSRC list or extension runs past the end.
    #[error("RTP header truncated")]
    Truncated,
    /// Padding count is zero or larger than the packet.
    #[error("RTP padding invalid")]
    Padding,
    /// Payload type 72–76: an RTCP packet on the RTP port (RFC 5761 §4).
    #[error("RTCP packet on the RTP port")]
    Rtcp,
}

impl From<RtpReaderError> for RtpError {
    fn from(e: RtpReaderError) -> Self {
        match e {
            RtpReaderError::BufferTooShort(n) => RtpError::TooShort(n),
            RtpReaderError::UnsupportedVersion(v) => RtpError::Version(v),
            RtpReaderError::HeadersTruncated { .. } => RtpError::Truncated,
            RtpReaderError::PaddingLengthInvalid(_) => RtpError::Padding,
        }
    }
}

/// The fields of a received RTP packet the relay needs, with the payload's
/// place in the receive buffer (padding excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    /// Payload type.
    pub pt: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Where the payload is in the buffer.
    pub payload: Range<usize>,
}

/// Parses and validates an RTP packet (RFC 3550 §5.1, via `rtp-rs`).
pub fn parse_rtp(buf: &[u8]) -> Result<RtpPacket, RtpError> {
    let r = RtpReader::new(buf)?;
    let pt = r.payload_type();
    // RFC 5761 §4: RTCP packet types 200–204 read as marker + PT 72–76.
    if (72..=76).contains(&pt) {
        return Err(RtpError::Rtcp);
    }
    let start = r.payload_offset();
    Ok(RtpPacket {
        pt,
        marker: r.mark(),
        seq: r.sequence_number().into(),
        timestamp: r.timestamp(),
        ssrc: r.ssrc(),
        payload: start..start + r.payload().len(),
    })
}

/// What a forwarded payload is, from the in leg's negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// G.711 audio in this law.
    Audio(G711Law),
    /// RFC 4733 telephone-event.
    TelephoneEvent,
}

/// Who produced the packets of the output stream; a change is a source switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// powerdial's generator (tone or silence).
    Generated,
    /// Packets received on a leg (by its id) from one SSRC.
    Forwarded {
        /// The leg the packets come from.
        leg: u64,
        /// The sender's SSRC on that leg.
        ssrc: u32,
    },
}

/// The out leg's negotiated payload types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutFormat {
    /// Audio codec law.
    pub law: G711Law,
    /// Audio payload type.
    pub pt: u8,
    /// telephone-event payload type, if negotiated (else events are dropped).
    pub dtmf_pt: Option<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    source: Source,
    at: Instant,
    timestamp: u32,
    samples: u32,
    /// Output timestamp = input timestamp + offset (forwarded sources).
    offset: u32,
}

/// The outgoing stream towards one phone (see the module doc).
#[derive(Debug, Clone)]
pub struct StreamRewriter {
    ssrc: u32,
    next_seq: u16,
    initial_ts: u32,
    format: OutFormat,
    last: Option<Last>,
    sent: u64,
}

fn samples_in(d: Duration) -> u32 {
    // Rounded to whole samples; a u32 of samples at 8 kHz covers 6 days.
    (d.as_nanos() * u128::from(CLOCK_RATE) / 1_000_000_000).min(u128::from(u32::MAX)) as u32
}

fn write_header(out: &mut [u8], pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32) {
    out[0] = 0x80;
    out[1] = (pt & 0x7F) | if marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&ts.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

impl StreamRewriter {
    /// A stream with our SSRC and random initial sequence number and
    /// timestamp (RFC 3550 §5.1: both SHOULD be random), chosen by the caller.
    pub fn new(ssrc: u32, initial_seq: u16, initial_ts: u32, format: OutFormat) -> Self {
        StreamRewriter {
            ssrc,
            next_seq: initial_seq,
            initial_ts,
            format,
            last: None,
            sent: 0,
        }
    }

    /// The SSRC of the stream.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Packets written so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The out leg's format (after a renegotiation).
    pub fn set_format(&mut self, format: OutFormat) {
        self.format = format;
    }

    /// The out leg's format.
    pub fn format(&self) -> OutFormat {
        self.format
    }

    /// Output timestamp of the first packet of a new source: continue after
    /// the last packet, by the wall-clock gap but at least by the last
    /// packet's own length so two packets never cover the same instant.
    fn rebase(&self, now: Instant) -> u32 {
        match &self.last {
            None => self.initial_ts,
            Some(l) => {
                let gap = samples_in(now.saturating_duration_since(l.at)).max(l.samples);
                l.timestamp.wrapping_add(gap)
            }
        }
    }

    fn take_seq(&mut self) -> u16 {
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        self.sent += 1;
        s
    }

    /// Writes a generated G.711 frame (already in the out law) as the next
    /// packet into `out`, one frame after the last generated one; returns
    /// the packet length, or `None` if `out` is too small.
    pub fn generated(&mut self, now: Instant, payload: &[u8], out: &mut [u8]) -> Option<usize> {
        self.write_generated(now, payload, out, false)
    }

    /// Writes a generated frame that ends a pause: the stream sent nothing
    /// for a while (silence not sent, RFC 3550 §5.1 and §5.2). The packet
    /// starts a talkspurt: marker set (RFC 3551 §4.1) and the timestamp
    /// advanced by the wall time elapsed since the last packet, so the
    /// phone's jitter buffer and its interarrival jitter (RFC 3550 §6.4.1)
    /// see no clock skew. The sequence number still goes on by one: nothing
    /// was lost (RFC 3550 §5.1), and an SRTP receiver's index estimate
    /// (RFC 3711 §3.3.1) relies on it.
    pub fn generated_after_pause(
        &mut self,
        now: Instant,
        payload: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        self.write_generated(now, payload, out, true)
    }

    fn write_generated(
        &mut self,
        now: Instant,
        payload: &[u8],
        out: &mut [u8],
        after_pause: bool,
    ) -> Option<usize> {
        let len = RTP_HEADER_LEN + payload.len();
        if out.len() < len {
            return None;
        }
        let samples = payload.len() as u32;
        let (ts, marker) = match &self.last {
            Some(l) if l.source == Source::Generated && !after_pause => {
                (l.timestamp.wrapping_add(l.samples), false)
            }
            _ => (self.rebase(now), true),
        };
        let seq = self.take_seq();
        write_header(out, self.format.pt, marker, seq, ts, self.ssrc);
        out[RTP_HEADER_LEN..len].copy_from_slice(payload);
        self.last = Some(Last {
            source: Source::Generated,
            at: now,
            timestamp: ts,
            samples,
            offset: 0,
        });
        Some(len)
    }

    /// Rewrites a received packet in place for the out leg: the new 12-byte
    /// header is written just before the payload (dropping CSRCs, extension
    /// and padding) and the payload is transcoded if the laws differ. Returns
    /// the range of `buf` to send, or `None` when the out leg cannot carry it
    /// (telephone-event not negotiated there).
    pub fn forward(
        &mut self,
        now: Instant,
        leg: u64,
        kind: PayloadKind,
        pkt: &RtpPacket,
        buf: &mut [u8],
    ) -> Option<Range<usize>> {
        let out_pt = match kind {
            PayloadKind::Audio(_) => self.format.pt,
            PayloadKind::TelephoneEvent => self.format.dtmf_pt?,
        };
        let start = pkt.payload.start.checked_sub(RTP_HEADER_LEN)?;
        let payload = buf.get_mut(pkt.payload.clone())?;
        if let PayloadKind::Audio(law) = kind {
            transcode_in_place(law, self.format.law, payload);
        }
        let source = Source::Forwarded {
            leg,
            ssrc: pkt.ssrc,
        };
        let (offset, switched) = match &self.last {
            Some(l) if l.source == source => (l.offset, false),
            _ => (self.rebase(now).wrapping_sub(pkt.timestamp), true),
        };
        let ts = pkt.timestamp.wrapping_add(offset);
        let seq = self.take_seq();
        write_header(
            &mut buf[start..],
            out_pt,
            pkt.marker || switched,
            seq,
            ts,
            self.ssrc,
        );
        let samples = match kind {
            PayloadKind::Audio(_) => pkt.payload.len() as u32,
            // An event packet covers no new audio of its own.
            PayloadKind::TelephoneEvent => self.last.map_or(0, |l| l.samples),
        };
        self.last = Some(Last {
            source,
            at: now,
            timestamp: ts,
            samples,
            offset,
        });
        Some(start..pkt.payload.end)
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

    const PCMU: OutFormat = OutFormat {
        law: G711Law::Pcmu,
        pt: 0,
        dtmf_pt: Some(101),
    };

    fn packet(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; RTP_HEADER_LEN];
        write_header(&mut b, pt, marker, seq, ts, ssrc);
        b.extend_from_slice(payload);
        b
    }

    #[derive(Debug)]
    struct Out {
        seq: u16,
        ts: u32,
        ssrc: u32,
        marker: bool,
        pt: u8,
        payload: Vec<u8>,
    }

    fn read(b: &[u8]) -> Out {
        let p = parse_rtp(b).unwrap();
        Out {
            seq: p.seq,
            ts: p.timestamp,
            ssrc: p.ssrc,
            marker: p.marker,
            pt: p.pt,
            payload: b[p.payload].to_vec(),
        }
    }

    fn fwd(
        rw: &mut StreamRewriter,
        now: Instant,
        leg: u64,
        kind: PayloadKind,
        mut b: Vec<u8>,
    ) -> Option<Out> {
        let p = parse_rtp(&b).unwrap();
        let r = rw.forward(now, leg, kind, &p, &mut b)?;
        Some(read(&b[r]))
    }

    #[test]
    fn continuity_across_tone_early_media_and_answer() {
        let t0 = anchor();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut rw = StreamRewriter::new(0xABCD, 65530, 4_294_967_000, PCMU);
        let mut out = Vec::new();
        let mut buf = [0u8; 200];
        // 5 tone frames at 0, 20 … 80 ms.
        for i in 0..5 {
            let n = rw.generated(ms(20 * i), &[0x55; 160], &mut buf).unwrap();
            out.push((ms(20 * i), read(&buf[..n])));
        }
        // Early media from the carrier (leg 2, ssrc 7) at 95 ms, then every 20 ms.
        for i in 0..3u16 {
            let p = packet(
                8,
                i == 0,
                100 + i,
                50_000 + 160 * u32::from(i),
                7,
                &[0xD5; 160],
            );
            out.push((
                ms(95 + 20 * u64::from(i)),
                fwd(
                    &mut rw,
                    ms(95 + 20 * u64::from(i)),
                    2,
                    PayloadKind::Audio(G711Law::Pcma),
                    p,
                )
                .unwrap(),
            ));
        }
        // Answer: the carrier starts a new SSRC at 150 ms with unrelated numbering.
        for i in 0..3u16 {
            let p = packet(
                8,
                false,
                9000 + i,
                1_000_000 + 160 * u32::from(i),
                8,
                &[0xD5; 160],
            );
            out.push((
                ms(150 + 20 * u64::from(i)),
                fwd(
                    &mut rw,
                    ms(150 + 20 * u64::from(i)),
                    2,
                    PayloadKind::Audio(G711Law::Pcma),
                    p,
                )
                .unwrap(),
            ));
        }
        for w in out.windows(2) {
            let (a, b) = (&w[0].1, &w[1].1);
            assert_eq!(b.seq, a.seq.wrapping_add(1), "sequence +1");
            assert_eq!(b.ssrc, 0xABCD);
            let dt = b.ts.wrapping_sub(a.ts);
            let wall = samples_in(w[1].0 - w[0].0);
            assert!(
                dt >= 160 && dt == wall.max(160),
                "timestamps follow time: {dt} vs {wall}"
            );
        }
        let markers: Vec<bool> = out.iter().map(|(_, o)| o.marker).collect();
        assert_eq!(
            markers,
            [true, false, false, false, false, true, false, false, true, false, false]
        );
        // PCMA silence became PCMU (0xD5 decodes to 8 → μ-law 0xFE), PT 0.
        assert!(out[6].1.payload.iter().all(|b| *b == 0xFE));
        assert_eq!(out[6].1.pt, 0);
        assert_eq!(out[0].1.ts, 4_294_967_000);
        assert_eq!(out[0].1.seq, 65530);
        assert_eq!(rw.sent(), 11);
    }

    #[test]
    fn switch_right_after_a_packet_does_not_overlap() {
        let t0 = anchor();
        let mut rw = StreamRewriter::new(1, 0, 0, PCMU);
        let mut buf = [0u8; 200];
        rw.generated(t0, &[0xFF; 160], &mut buf).unwrap();
        let o = fwd(
            &mut rw,
            t0 + Duration::from_millis(1),
            3,
            PayloadKind::Audio(G711Law::Pcmu),
            packet(0, false, 1, 77, 5, &[1; 160]),
        )
        .unwrap();
        assert_eq!(o.ts, 160, "at least one frame after the last");
        assert!(o.marker);
        // Back to generated after 100 ms of nothing.
        let n = rw
            .generated(t0 + Duration::from_millis(101), &[0xFF; 160], &mut buf)
            .unwrap();
        let g = read(&buf[..n]);
        assert_eq!(g.ts, 160 + 800);
        assert!(g.marker);
        assert_eq!(g.seq, 2);
    }

    #[test]
    fn generated_frames_across_a_pause_mark_a_talkspurt_and_follow_the_wall_clock() {
        let t0 = anchor();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut rw = StreamRewriter::new(9, 65534, 4_294_966_000, PCMU);
        let mut buf = [0u8; 200];
        let mut frame = |rw: &mut StreamRewriter, at: u64, after_pause: bool| {
            let n = if after_pause {
                rw.generated_after_pause(ms(at), &[0xFF; 160], &mut buf)
            } else {
                rw.generated(ms(at), &[0xFF; 160], &mut buf)
            }
            .unwrap();
            read(&buf[..n])
        };
        // Three frames at 20 ms cadence, the third 3 ms late (a loop's
        // timer slack): still one frame apart.
        let a = frame(&mut rw, 0, false);
        let b = frame(&mut rw, 20, false);
        let c = frame(&mut rw, 43, false);
        assert_eq!((b.ts.wrapping_sub(a.ts), b.marker), (160, false));
        assert_eq!((c.ts.wrapping_sub(b.ts), c.marker), (160, false));
        // Nothing sent for 1,000 ms, then a keep-alive: marker, timestamp
        // advanced by the 8,000 samples elapsed, sequence +1 (across its
        // wrap).
        let d = frame(&mut rw, 1_043, true);
        assert!(d.marker);
        assert_eq!(d.ts.wrapping_sub(c.ts), 8_000);
        assert_eq!(d.seq, c.seq.wrapping_add(1));
        assert_eq!(d.seq, 1);
        // Another pause of 1,007 ms (a late timer): 8,056 samples.
        let e = frame(&mut rw, 2_050, true);
        assert!(e.marker);
        assert_eq!(e.ts.wrapping_sub(d.ts), 8_056);
        assert_eq!(e.seq, 2);
        // The beep resumes right away after a pause, then runs on at the
        // frame cadence without a marker.
        let f = frame(&mut rw, 2_300, true);
        let g = frame(&mut rw, 2_320, false);
        assert_eq!((f.marker, f.ts.wrapping_sub(e.ts)), (true, 2_000));
        assert_eq!((g.marker, g.ts.wrapping_sub(f.ts)), (false, 160));
        // A pause shorter than a frame still never overlaps the last one.
        let h = frame(&mut rw, 2_325, true);
        assert_eq!((h.marker, h.ts.wrapping_sub(g.ts)), (true, 160));
        assert_eq!(h.seq, 5);
        assert_eq!(h.ssrc, 9);
        assert_eq!(rw.sent(), 8);
    }

    #[test]
    fn dtmf_events_keep_their_timestamp_and_map_the_pt() {
        let t0 = anchor();
        let mut rw = StreamRewriter::new(1, 0, 1000, PCMU);
        let a = fwd(
            &mut rw,
            t0,
            4,
            PayloadKind::Audio(G711Law::Pcmu),
            packet(0, false, 10, 8000, 9, &[1; 160]),
        )
        .unwrap();
        let ev = TelephoneEvent {
            event: 3,
            end: false,
            volume: 10,
            duration: 160,
        }
        .to_bytes();
        let e1 = fwd(
            &mut rw,
            t0 + Duration::from_millis(20),
            4,
            PayloadKind::TelephoneEvent,
            packet(96, true, 11, 8160, 9, &ev),
        )
        .unwrap();
        let e2 = fwd(
            &mut rw,
            t0 + Duration::from_millis(40),
            4,
            PayloadKind::TelephoneEvent,
            packet(96, false, 12, 8160, 9, &ev),
        )
        .unwrap();
        assert_eq!((e1.pt, e1.marker, e1.ts), (101, true, a.ts + 160));
        assert_eq!((e2.pt, e2.marker, e2.ts), (101, false, a.ts + 160));
        assert_eq!(e2.payload, ev);
        let mut no_dtmf = StreamRewriter::new(
            1,
            0,
            0,
            OutFormat {
                dtmf_pt: None,
                ..PCMU
            },
        );
        assert!(fwd(
            &mut no_dtmf,
            t0,
            4,
            PayloadKind::TelephoneEvent,
            packet(96, true, 1, 1, 1, &ev)
        )
        .is_none());
        assert_eq!(no_dtmf.sent(), 0);
    }

    #[test]
    fn strips_csrc_extension_and_padding() {
        let t0 = anchor();
        let mut b = vec![0xB1, 0x00, 0, 1, 0, 0, 0, 10, 0, 0, 0, 5]; // V=2 P X CC=1
        b.extend_from_slice(&[0, 0, 0, 9]); // CSRC
        b.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // one-word extension
        b.extend_from_slice(&[7; 160]);
        b.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let mut rw = StreamRewriter::new(42, 0, 0, PCMU);
        let o = fwd(&mut rw, t0, 1, PayloadKind::Audio(G711Law::Pcmu), b).unwrap();
        assert_eq!(o.payload, vec![7; 160]);
        assert_eq!(o.ssrc, 42);
    }

    #[test]
    fn parse_refuses_garbage() {
        assert_eq!(parse_rtp(&[0x80; 5]), Err(RtpError::TooShort(5)));
        assert_eq!(parse_rtp(&[0x40; 12]), Err(RtpError::Version(1)));
        assert_eq!(
            parse_rtp(&[0x8F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(RtpError::Truncated)
        );
        assert_eq!(
            parse_rtp(&[0x80, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(RtpError::Rtcp)
        );
        let mut padded = vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        padded.push(0);
        assert_eq!(parse_rtp(&padded), Err(RtpError::Padding));
    }
}
