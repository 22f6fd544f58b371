//! Call recording (SPEC §4 session `record`): the relay hands each relayed
//! audio frame of a recorded call — the lead's from its answer, the
//! agent's once bridged — to a writer task over a bounded channel (never
//! waiting: a full channel drops the frame and counts it), and the writer
//! lays both directions on a common timeline, lead on the left channel and
//! agent on the right, and streams a two-channel 16-bit WAV to disk as the
//! call goes on.
//!
//! [`Recording`] is the writer's pure part: frames are placed by their
//! arrival time since the answer, so a direction that sends nothing for a
//! while (a muted phone, comfort noise) is silence there, and both stay in
//! step. Only the last [`HOLD`] of audio is kept in memory (SPEC §6: under
//! 20 KB per active call): older samples are handed out by
//! [`Recording::take_ready`] to be written.

use std::time::Instant;

use crate::media::amd::RATE;
use crate::media::g711::G711Law;

/// Which direction a frame was heard in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// What the lead said (left channel).
    Lead,
    /// What the agent said (right channel).
    Agent,
}

/// One relayed audio frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecFrame {
    /// Its direction.
    pub track: Track,
    /// When it was relayed.
    pub at: Instant,
    /// 8 kHz linear samples.
    pub pcm: Vec<i16>,
}

/// One relayed audio payload as the relay hands it over (G.711 bytes,
/// half the size of the samples): the writer task decodes it
/// ([`TapFrame::decode`]), so the relay task only copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapFrame {
    /// Its direction.
    pub track: Track,
    /// When it was relayed.
    pub at: Instant,
    /// Its law.
    pub law: G711Law,
    /// The RTP payload.
    pub payload: Vec<u8>,
}

impl TapFrame {
    /// The frame's linear samples.
    pub fn decode(&self) -> RecFrame {
        RecFrame {
            track: self.track,
            at: self.at,
            pcm: self.payload.iter().map(|b| self.law.decode(*b)).collect(),
        }
    }
}

/// Holds the longest recording accepted: 4 hours (beyond it frames are
/// dropped rather than disk spent).
const MAX_SAMPLES: usize = 4 * 3600 * RATE as usize;

/// Arrival-time jitter absorbed without a gap (60 ms of samples): a
/// stream's frames arriving up to this late still follow one another.
const JITTER: usize = 480;

/// Audio kept in memory behind the newest frame (400 ms of samples per
/// track, 12.8 KB for both): frames reach the writer in the relay's order,
/// so nothing placed later lands this far back; what is older is final
/// and handed out to be written.
pub const HOLD: usize = 3200;

/// Both tracks of one call: what is not yet written, from sample
/// `written` of the timeline on.
#[derive(Debug)]
pub struct Recording {
    start: Instant,
    /// Samples per channel already handed out.
    written: usize,
    /// The newest frame's end on the timeline (samples).
    newest: usize,
    lead: Vec<i16>,
    agent: Vec<i16>,
}

impl Recording {
    /// A recording whose timeline starts at `start` (the answer).
    pub fn new(start: Instant) -> Self {
        Recording {
            start,
            written: 0,
            newest: 0,
            lead: Vec::new(),
            agent: Vec::new(),
        }
    }

    /// Places a frame at its arrival time, or right after the track's
    /// previous frame if it arrived early (jitter): audio is never
    /// overwritten, gaps are silence. A frame is never placed before its
    /// track's end, so what [`Recording::take_ready`] handed out stays
    /// final.
    pub fn push(&mut self, f: &RecFrame) {
        let track = match f.track {
            Track::Lead => &mut self.lead,
            Track::Agent => &mut self.agent,
        };
        let due = f.at.saturating_duration_since(self.start);
        let due =
            usize::try_from(due.as_micros() * u128::from(RATE) / 1_000_000).unwrap_or(usize::MAX);
        // A frame is stamped when it arrives, i.e. at its end. Within the
        // jitter allowance it follows the previous frame directly (no
        // click, no drift); a later one starts a gap of silence.
        let due = due.saturating_sub(f.pcm.len()).saturating_sub(self.written);
        let at = if due <= track.len() + JITTER {
            track.len()
        } else {
            due
        };
        let end = self.written + at + f.pcm.len();
        if end > MAX_SAMPLES {
            return;
        }
        track.resize(at, 0);
        track.extend_from_slice(&f.pcm);
        self.newest = self.newest.max(end);
    }

    /// The interleaved samples (lead, agent) that are final: all but the
    /// last [`HOLD`] behind the newest frame. Empty when there is less.
    pub fn take_ready(&mut self) -> Vec<i16> {
        let upto = self.newest.saturating_sub(HOLD);
        self.take(upto.saturating_sub(self.written))
    }

    /// Everything not yet handed out, interleaved: the end of the call.
    pub fn finish(&mut self) -> Vec<i16> {
        let n = self.lead.len().max(self.agent.len());
        self.take(n)
    }

    fn take(&mut self, n: usize) -> Vec<i16> {
        if n == 0 {
            return Vec::new();
        }
        // A track shorter than the cut is silence up to it: a frame placed
        // later goes after it (see `push`).
        for track in [&mut self.lead, &mut self.agent] {
            if track.len() < n {
                track.resize(n, 0);
            }
        }
        let mut out = Vec::with_capacity(n * 2);
        for (l, a) in self.lead.drain(..n).zip(self.agent.drain(..n)) {
            out.push(l);
            out.push(a);
        }
        self.written += n;
        out
    }

    /// Seconds of audio so far (written and held).
    pub fn seconds(&self) -> f64 {
        (self.written + self.lead.len().max(self.agent.len())) as f64 / f64::from(RATE)
    }

    /// Samples held in memory, both tracks.
    pub fn held(&self) -> usize {
        self.lead.len() + self.agent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[allow(clippy::disallowed_methods)] // the simulated clock's origin
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn both_directions_land_on_one_timeline_with_gaps_as_silence() {
        let start = t0();
        let mut r = Recording::new(start);
        let frame = |track, ms: u64, v: i16| RecFrame {
            track,
            at: start + Duration::from_millis(ms),
            pcm: vec![v; 160],
        };
        r.push(&frame(Track::Lead, 20, 100));
        r.push(&frame(Track::Lead, 40, 200));
        // The agent starts 1 s in (bridged later).
        r.push(&frame(Track::Agent, 1020, 300));
        // A jittered early lead frame goes after the previous one, and so
        // does one 30 ms late.
        r.push(&frame(Track::Lead, 45, 400));
        r.push(&frame(Track::Lead, 110, 500));
        // 200 ms late: a gap.
        r.push(&frame(Track::Lead, 340, 600));
        let mut inter = r.take_ready();
        inter.extend(r.finish());
        let wav = crate::media::voicemail::write_wav(&inter, 2);
        let (rate, channels) = (
            u32::from_le_bytes(wav[24..28].try_into().unwrap()),
            u16::from_le_bytes(wav[22..24].try_into().unwrap()),
        );
        assert_eq!((rate, channels), (8000, 2));
        let s: Vec<i16> = wav[44..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        let left = |i: usize| s[2 * i];
        let right = |i: usize| s[2 * i + 1];
        assert_eq!(left(0), 100);
        assert_eq!(left(160), 200);
        assert_eq!(left(320), 400);
        assert_eq!(left(480), 500);
        assert_eq!(left(640), 0);
        assert_eq!(left(2559), 0);
        assert_eq!(left(2560), 600);
        assert_eq!(right(7999), 0);
        assert_eq!(right(8000), 300);
        assert!((r.seconds() - 1.02).abs() < 0.001);
    }

    #[test]
    fn a_long_call_is_handed_out_as_it_goes_and_holds_little() {
        let start = t0();
        let mut r = Recording::new(start);
        let mut out = Vec::new();
        let mut peak = 0;
        // 60 s of both directions, the agent 20 ms behind the lead.
        for i in 1..=3000u64 {
            for (track, lag, v) in [(Track::Lead, 0, 1), (Track::Agent, 20, 2)] {
                r.push(&RecFrame {
                    track,
                    at: start + Duration::from_millis(i * 20 + lag),
                    pcm: vec![v; 160],
                });
            }
            out.extend(r.take_ready());
            peak = peak.max(r.held());
        }
        assert!(peak <= 2 * (HOLD + 480), "held {peak} samples");
        assert!(out.len() >= 2 * (480_000 - HOLD - 480));
        out.extend(r.finish());
        assert_eq!(out.len(), 2 * 480_000);
        assert!(out.chunks_exact(2).all(|c| c == [1, 2]));
        assert_eq!(r.held(), 0);
    }
}
