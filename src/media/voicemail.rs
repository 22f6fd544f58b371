//! Voicemail drop (SPEC §4): the uploaded message (a WAV file, 8 kHz
//! mono) and [`DropPlayer`], the sans-IO core that waits on an answering
//! machine's line for the end of its greeting — the beep, or a long
//! silence for machines that have none — and then plays the message.
//!
//! The beep is found by [`BeepDetector`] (Goertzel, 1–2 kHz). Starting on
//! the beep's end is what a person leaving a message does: audio sent
//! earlier is not recorded by the machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::media::amd::{BeepDetector, FRAME, RATE};

/// The longest message accepted (a voicemail greeting box records a few
/// minutes at most; the file is held in memory while it plays).
pub const MAX_MESSAGE: Duration = Duration::from_secs(120);

/// Why an uploaded WAV file was refused (HTTP 400/415 with the text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    /// Not a RIFF/WAVE file.
    #[error("not a WAV file: the body must start with RIFF….WAVE")]
    NotWav,
    /// A chunk runs past the end, or `fmt ` is too short.
    #[error("truncated WAV file")]
    Truncated,
    /// No `fmt ` chunk before `data`.
    #[error("WAV file without a fmt chunk before its data")]
    NoFormat,
    /// No `data` chunk.
    #[error("WAV file without a data chunk")]
    NoData,
    /// Not PCM16, A-law or μ-law.
    #[error("WAV encoding {0} is not supported: use 16-bit PCM (1), A-law (6) or μ-law (7)")]
    Encoding(u16),
    /// Bits per sample that do not fit the encoding.
    #[error("{bits}-bit samples do not fit encoding {tag}: PCM must be 16-bit, G.711 8-bit")]
    Bits {
        /// The format tag.
        tag: u16,
        /// Bits per sample.
        bits: u16,
    },
    /// Not mono.
    #[error("{0} channels: the message must be mono")]
    Channels(u16),
    /// Not 8 kHz.
    #[error(
        "{0} Hz: the message must be 8000 Hz (convert with: sox in.wav -r 8000 -c 1 -b 16 out.wav)"
    )]
    Rate(u32),
    /// No samples.
    #[error("the WAV file has no audio")]
    Empty,
    /// Longer than [`MAX_MESSAGE`].
    #[error("the message is longer than {} s", MAX_MESSAGE.as_secs())]
    TooLong,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, WavError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(WavError::Truncated)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, WavError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(WavError::Truncated)
}

/// Reads a WAV file (RIFF, `fmt ` then `data`; other chunks skipped):
/// 16-bit PCM, A-law or μ-law, 8 kHz, mono. Returns the linear samples.
pub fn parse_wav(b: &[u8]) -> Result<Vec<i16>, WavError> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut pos = 12;
    let mut format: Option<(u16, u16)> = None;
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let len = u32_at(b, pos + 4)? as usize;
        let body_start = pos + 8;
        // A data chunk whose length runs past the end (a recorder that did
        // not finish its header) is read to the end of the file.
        let body_end = body_start.saturating_add(len).min(b.len());
        let body = &b[body_start..body_end];
        if id == b"fmt " {
            if body.len() < 16 {
                return Err(WavError::Truncated);
            }
            let tag = u16_at(body, 0)?;
            let channels = u16_at(body, 2)?;
            let rate = u32_at(body, 4)?;
            let bits = u16_at(body, 14)?;
            if !matches!(tag, 1 | 6 | 7) {
                return Err(WavError::Encoding(tag));
            }
            if (tag == 1 && bits != 16) || (tag != 1 && bits != 8) {
                return Err(WavError::Bits { tag, bits });
            }
            if channels != 1 {
                return Err(WavError::Channels(channels));
            }
            if rate != RATE {
                return Err(WavError::Rate(rate));
            }
            format = Some((tag, bits));
        } else if id == b"data" {
            let (tag, _) = format.ok_or(WavError::NoFormat)?;
            let pcm: Vec<i16> = match tag {
                1 => body
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect(),
                6 => body
                    .iter()
                    .map(|c| crate::media::g711::G711Law::Pcma.decode(*c))
                    .collect(),
                _ => body
                    .iter()
                    .map(|c| crate::media::g711::G711Law::Pcmu.decode(*c))
                    .collect(),
            };
            if pcm.is_empty() {
                return Err(WavError::Empty);
            }
            if pcm.len() as u64 > MAX_MESSAGE.as_secs() * u64::from(RATE) {
                return Err(WavError::TooLong);
            }
            return Ok(pcm);
        }
        pos = body_start.saturating_add(len).saturating_add(len & 1);
    }
    Err(WavError::NoData)
}

/// A 16-bit PCM WAV file at 8 kHz of `channels` interleaved channels.
pub fn write_wav(samples: &[i16], channels: u16) -> Vec<u8> {
    let data = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&data.saturating_add(36).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2 * u32::from(channels)).to_le_bytes());
    out.extend_from_slice(&(2 * channels).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// When a drop starts playing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropConfig {
    /// Silence this long after the greeting's speech ends it (machines
    /// without a beep).
    pub end_of_greeting: Duration,
    /// Play anyway after this long (a machine that never stops talking).
    pub max_wait: Duration,
}

impl Default for DropConfig {
    fn default() -> Self {
        DropConfig {
            end_of_greeting: Duration::from_millis(2_500),
            max_wait: Duration::from_secs(30),
        }
    }
}

/// What started the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropStart {
    /// The beep ended (its frequency, Hz).
    Beep(u32),
    /// The greeting ended in a long silence.
    EndOfGreeting,
    /// `max_wait` passed.
    Waited,
}

#[derive(Debug)]
enum State {
    Waiting {
        beep: Box<BeepDetector>,
        voice: bool,
        silence: Duration,
        deadline: Instant,
    },
    Playing {
        pos: usize,
        next: Instant,
    },
    Done,
}

/// Mean absolute amplitude (16-bit) above which a frame is speech.
const VOICE_LEVEL: u32 = 256;

/// Waits for the end of a machine's greeting, then plays the message in
/// 20 ms frames (see the module doc).
#[derive(Debug)]
pub struct DropPlayer {
    cfg: DropConfig,
    message: Arc<[i16]>,
    state: State,
    started: Option<(Instant, DropStart)>,
}

impl DropPlayer {
    /// A player of `message` handed the line at `now`.
    pub fn new(now: Instant, message: Arc<[i16]>, cfg: DropConfig) -> Self {
        DropPlayer {
            cfg,
            message,
            state: State::Waiting {
                beep: Box::new(BeepDetector::new()),
                voice: false,
                silence: Duration::ZERO,
                deadline: now + cfg.max_wait,
            },
            started: None,
        }
    }

    /// When and why the message started.
    pub fn started(&self) -> Option<(Instant, DropStart)> {
        self.started
    }

    /// Whether the whole message was played.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn start(&mut self, now: Instant, why: DropStart) {
        self.state = State::Playing { pos: 0, next: now };
        self.started = Some((now, why));
    }

    /// The machine's audio while waiting (any count of samples).
    pub fn handle_audio(&mut self, now: Instant, pcm: &[i16]) {
        let State::Waiting {
            beep,
            voice,
            silence,
            ..
        } = &mut self.state
        else {
            return;
        };
        if let Some((_, hz)) = beep.push(pcm) {
            return self.start(now, DropStart::Beep(hz));
        }
        for frame in pcm.chunks(FRAME) {
            let level = frame
                .iter()
                .map(|s| i32::from(*s).unsigned_abs())
                .sum::<u32>()
                / frame.len().max(1) as u32;
            let len = Duration::from_micros(frame.len() as u64 * 1_000_000 / u64::from(RATE));
            if level > VOICE_LEVEL {
                *voice = true;
                *silence = Duration::ZERO;
            } else {
                *silence += len;
            }
        }
        if *voice && *silence >= self.cfg.end_of_greeting {
            self.start(now, DropStart::EndOfGreeting);
        }
    }

    /// The next instant [`Self::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { deadline, .. } => Some(*deadline),
            State::Playing { next, .. } => Some(*next),
            State::Done => None,
        }
    }

    /// Runs the timer: writes the frame due into `out` and returns its
    /// sample count (call again until `None`).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut [i16; FRAME]) -> Option<usize> {
        if let State::Waiting { deadline, .. } = &self.state {
            if *deadline <= now {
                self.start(now, DropStart::Waited);
            }
        }
        let State::Playing { pos, next } = &mut self.state else {
            return None;
        };
        if *next > now {
            return None;
        }
        let rest = self.message.get(*pos..).unwrap_or(&[]);
        if rest.is_empty() {
            self.state = State::Done;
            return None;
        }
        let n = rest.len().min(FRAME);
        out[..n].copy_from_slice(&rest[..n]);
        out[n..].fill(0);
        *pos += n;
        // A late driver skips ahead rather than bursting frames.
        *next += Duration::from_millis(20);
        if now.saturating_duration_since(*next) > Duration::from_millis(100) {
            *next = now + Duration::from_millis(20);
        }
        Some(FRAME)
    }
}

#[cfg(test)]
mod tests;
