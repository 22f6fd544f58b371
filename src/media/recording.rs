//! Call recording (SPEC §4 session `record`): the relay hands each relayed
//! audio frame of a recorded call — the lead's from its answer, the
//! agent's once bridged — to a writer task over a bounded channel (never
//! waiting: a full channel drops the frame and counts it), and the writer
//! lays both directions on a common timeline, lead on the left channel and
//! agent on the right, and writes a two-channel 16-bit WAV at the end.
//!
//! [`Recording`] is the writer's pure part: frames are placed by their
//! arrival time since the answer, so a direction that sends nothing for a
//! while (a muted phone, comfort noise) is silence there, and both stay in
//! step.

use std::time::Instant;

use crate::media::amd::RATE;

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

/// Holds the longest recording accepted: 4 hours (beyond it frames are
/// dropped rather than memory spent).
const MAX_SAMPLES: usize = 4 * 3600 * RATE as usize;

/// Arrival-time jitter absorbed without a gap (60 ms of samples): a
/// stream's frames arriving up to this late still follow one another.
const JITTER: usize = 480;

/// Both tracks of one call, assembled in memory (16 KB/s).
#[derive(Debug)]
pub struct Recording {
    start: Instant,
    lead: Vec<i16>,
    agent: Vec<i16>,
}

impl Recording {
    /// A recording whose timeline starts at `start` (the answer).
    pub fn new(start: Instant) -> Self {
        Recording {
            start,
            lead: Vec::new(),
            agent: Vec::new(),
        }
    }

    /// Places a frame at its arrival time, or right after the track's
    /// previous frame if it arrived early (jitter): audio is never
    /// overwritten, gaps are silence.
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
        let due = due.saturating_sub(f.pcm.len());
        let at = if due <= track.len() + JITTER {
            track.len()
        } else {
            due
        };
        if at + f.pcm.len() > MAX_SAMPLES {
            return;
        }
        track.resize(at, 0);
        track.extend_from_slice(&f.pcm);
    }

    /// The two-channel WAV (lead left, agent right).
    pub fn to_wav(&self) -> Vec<u8> {
        let n = self.lead.len().max(self.agent.len());
        let mut inter = Vec::with_capacity(n * 2);
        for i in 0..n {
            inter.push(self.lead.get(i).copied().unwrap_or(0));
            inter.push(self.agent.get(i).copied().unwrap_or(0));
        }
        crate::media::voicemail::write_wav(&inter, 2)
    }

    /// Seconds of audio.
    pub fn seconds(&self) -> f64 {
        self.lead.len().max(self.agent.len()) as f64 / f64::from(RATE)
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
        let wav = r.to_wav();
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
}
