//! Answering-machine detection on the lead's audio after the 200 OK
//! (SPEC §2), sans-IO: feed decoded 8 kHz samples as they arrive, get a
//! verdict once the audio says enough.
//!
//! The classifier follows the energy and word-timing method of Asterisk's
//! `AMD()` application, which the industry has tuned for two decades: a
//! person answers with a short word or two ("Hello?") and then waits for
//! us; a machine talks on (a long greeting, many words) or says nothing
//! for a long time. Per 20 ms frame the mean absolute amplitude is
//! compared with a threshold that follows the line's noise floor, so a
//! noisy line is not heard as endless speech. Voiced runs of at least
//! `min_word` are words; `after_greeting_silence` of silence after speech
//! that stayed short and under `max_words` words is a human; speech longer
//! than `greeting` or `max_words` words is a machine; no speech within
//! `initial_silence` is `not_sure` (an open line: many are people who have
//! not spoken yet, so a dialer should not hang up on them as Asterisk's
//! MACHINE verdict would).
//!
//! [`BeepDetector`] finds the tone that ends a voicemail greeting (where a
//! dropped message must start): Goertzel filters from 1000 to 2000 Hz, a
//! tone being one frequency holding most of a frame's energy for at least
//! 80 ms. Written here: no maintained crate does AMD, and a Goertzel bank is
//! a few lines of arithmetic.

use std::fmt;

/// Samples per second of G.711 audio.
pub const RATE: u32 = 8_000;
/// Samples per analysis frame (20 ms, one RTP packet of PCMU/PCMA).
pub const FRAME: usize = 160;
const FRAME_MS: u32 = 20;

/// The detector's timings and thresholds (defaults: Asterisk `amd.conf`'s,
/// but a machine at 4 words rather than 3 — "Hello, Acme, Jane speaking"
/// is a person — and the initial silence read as not sure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AmdConfig {
    /// No speech this long from the start: `not_sure`.
    pub initial_silence_ms: u32,
    /// Speech (summed) this long: a machine's greeting.
    pub greeting_ms: u32,
    /// Silence this long after a short greeting: a human waiting.
    pub after_greeting_silence_ms: u32,
    /// No decision by then: `not_sure`.
    pub total_analysis_ms: u32,
    /// A voiced run at least this long is a word.
    pub min_word_ms: u32,
    /// Silence at least this long separates words.
    pub between_words_silence_ms: u32,
    /// This many words: a machine.
    pub max_words: u32,
    /// Mean absolute amplitude (16-bit) below which a frame is silence,
    /// whatever the noise floor.
    pub silence_threshold: u32,
}

impl Default for AmdConfig {
    fn default() -> Self {
        AmdConfig {
            initial_silence_ms: 2_500,
            greeting_ms: 1_500,
            after_greeting_silence_ms: 800,
            total_analysis_ms: 5_000,
            min_word_ms: 100,
            between_words_silence_ms: 50,
            max_words: 4,
            silence_threshold: 256,
        }
    }
}

/// What a session does with the detector (SPEC §4 session setting `amd`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AmdMode {
    /// No detection: the call record's `amd` stays null.
    #[default]
    Off,
    /// Classify, and bridge the agent at the answer as usual.
    Detect,
    /// Hold the bridge until the verdict; a machine is hung up with
    /// outcome `voicemail` and the agent moves on.
    Hangup,
    /// Hold the bridge until the verdict; a machine gets the session's
    /// voicemail drop after the beep (outcome `voicemail_dropped`).
    Drop,
}

impl AmdMode {
    /// Reads the API's and the database's spelling.
    pub fn parse(s: &str) -> Option<AmdMode> {
        Some(match s {
            "off" => AmdMode::Off,
            "detect" => AmdMode::Detect,
            "hangup" => AmdMode::Hangup,
            "drop" => AmdMode::Drop,
            _ => return None,
        })
    }

    /// The API's and the database's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AmdMode::Off => "off",
            AmdMode::Detect => "detect",
            AmdMode::Hangup => "hangup",
            AmdMode::Drop => "drop",
        }
    }

    /// Whether the agent waits for the verdict before hearing the lead
    /// (a machine never reaches the agent in the routing modes).
    pub fn holds_bridge(self) -> bool {
        matches!(self, AmdMode::Hangup | AmdMode::Drop)
    }
}

/// What answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = AmdVerdict)]
pub enum Verdict {
    /// A person.
    Human,
    /// An answering machine or voicemail.
    Machine,
    /// The audio did not say.
    NotSure,
}

impl Verdict {
    /// The name used in the API and on the call record.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Human => "human",
            Verdict::Machine => "machine",
            Verdict::NotSure => "not_sure",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(s: &str) -> Option<Verdict> {
        Some(match s {
            "human" => Verdict::Human,
            "machine" => Verdict::Machine,
            "not_sure" => Verdict::NotSure,
            _ => return None,
        })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the verdict was given (Asterisk's `AMDCAUSE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A short greeting, then silence.
    HumanSilence,
    /// Speech longer than `greeting_ms`.
    LongGreeting,
    /// `max_words` words.
    MaxWords,
    /// No speech within `initial_silence_ms`.
    InitialSilence,
    /// `total_analysis_ms` passed.
    TooLong,
}

/// A verdict and when (ms of audio analysed) it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Human, machine or not sure.
    pub verdict: Verdict,
    /// Why.
    pub cause: Cause,
    /// Milliseconds of audio from the answer to the decision.
    pub at_ms: u32,
    /// When the first word began (ms from the answer), if any.
    pub speech_from_ms: Option<u32>,
}

/// The answering-machine detector for one call.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: AmdConfig,
    pending: [i16; FRAME],
    filled: usize,
    t_ms: u32,
    noise_floor: Option<f32>,
    voice_seen: bool,
    speech_from_ms: Option<u32>,
    in_word: bool,
    words: u32,
    voiced_run_ms: u32,
    silence_run_ms: u32,
    voice_total_ms: u32,
    decision: Option<Decision>,
}

impl Detector {
    /// A detector with `cfg`.
    pub fn new(cfg: AmdConfig) -> Self {
        Detector {
            cfg,
            pending: [0; FRAME],
            filled: 0,
            t_ms: 0,
            noise_floor: None,
            voice_seen: false,
            speech_from_ms: None,
            in_word: false,
            words: 0,
            voiced_run_ms: 0,
            silence_run_ms: 0,
            voice_total_ms: 0,
            decision: None,
        }
    }

    /// The decision, once made.
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    /// Feeds samples (any count); returns the decision when this input
    /// made it (later input changes nothing).
    pub fn push(&mut self, samples: &[i16]) -> Option<Decision> {
        if self.decision.is_some() {
            return None;
        }
        for &s in samples {
            self.pending[self.filled] = s;
            self.filled += 1;
            if self.filled == FRAME {
                self.filled = 0;
                let frame = self.pending;
                if let Some(d) = self.frame(&frame) {
                    self.decision = Some(d);
                    return Some(d);
                }
            }
        }
        None
    }

    fn decide(&self, verdict: Verdict, cause: Cause) -> Option<Decision> {
        Some(Decision {
            verdict,
            cause,
            at_ms: self.t_ms,
            speech_from_ms: self.speech_from_ms,
        })
    }

    /// Whether a frame of mean absolute amplitude `level` is voice, and
    /// the noise floor's update: it follows quiet frames at once and
    /// louder ones slowly, so speech never becomes the floor.
    fn is_voice(&mut self, level: f32) -> bool {
        let floor = match self.noise_floor {
            // Never above the fixed threshold at the start: audio that
            // begins loud (music, a greeting) is heard as such.
            None => level.min(self.cfg.silence_threshold as f32),
            Some(f) if level < f => level,
            Some(f) => f + (level - f) * 0.002,
        };
        self.noise_floor = Some(floor);
        level > (self.cfg.silence_threshold as f32).max(floor * 3.0)
    }

    fn frame(&mut self, frame: &[i16; FRAME]) -> Option<Decision> {
        self.t_ms += FRAME_MS;
        let level = frame
            .iter()
            .map(|s| i32::from(*s).unsigned_abs())
            .sum::<u32>() as f32
            / FRAME as f32;
        let c = self.cfg;
        if self.is_voice(level) {
            self.voiced_run_ms += FRAME_MS;
            self.silence_run_ms = 0;
            if self.voice_seen {
                self.voice_total_ms += FRAME_MS;
            }
            if !self.in_word && self.voiced_run_ms >= c.min_word_ms {
                self.in_word = true;
                self.voice_seen = true;
                if self.speech_from_ms.is_none() {
                    self.speech_from_ms = Some(self.t_ms - self.voiced_run_ms);
                }
                self.voice_total_ms = self.voice_total_ms.max(self.voiced_run_ms);
                self.words += 1;
                if self.words >= c.max_words {
                    return self.decide(Verdict::Machine, Cause::MaxWords);
                }
            }
            if self.voice_seen && self.voice_total_ms >= c.greeting_ms {
                return self.decide(Verdict::Machine, Cause::LongGreeting);
            }
        } else {
            self.silence_run_ms += FRAME_MS;
            self.voiced_run_ms = 0;
            if self.in_word && self.silence_run_ms >= c.between_words_silence_ms {
                self.in_word = false;
            }
            if !self.voice_seen && self.silence_run_ms >= c.initial_silence_ms {
                return self.decide(Verdict::NotSure, Cause::InitialSilence);
            }
            if self.voice_seen && self.silence_run_ms >= c.after_greeting_silence_ms {
                return self.decide(Verdict::Human, Cause::HumanSilence);
            }
        }
        if self.t_ms >= c.total_analysis_ms {
            return self.decide(Verdict::NotSure, Cause::TooLong);
        }
        None
    }
}

/// Finds the beep at the end of a voicemail greeting: a steady tone
/// between 1000 and 2000 Hz for at least [`BeepDetector::MIN_MS`].
#[derive(Debug, Clone)]
pub struct BeepDetector {
    coeffs: Vec<(u32, f32)>,
    pending: [i16; FRAME],
    filled: usize,
    t_ms: u32,
    run: Option<(u32, u32)>,
    /// `(start_ms, end_ms, hz)` of the last tone found.
    found: Option<(u32, u32, u32)>,
}

impl Default for BeepDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl BeepDetector {
    /// The shortest tone taken for a beep.
    pub const MIN_MS: u32 = 80;
    /// Share of a frame's energy one frequency must hold.
    const PURITY: f32 = 0.6;

    /// A detector scanning 1000–2000 Hz in 25 Hz steps.
    pub fn new() -> Self {
        let coeffs = (0..=40)
            .map(|i| {
                let hz = 1_000 + i * 25;
                let w = 2.0 * std::f32::consts::PI * hz as f32 / RATE as f32;
                (hz, 2.0 * w.cos())
            })
            .collect();
        BeepDetector {
            coeffs,
            pending: [0; FRAME],
            filled: 0,
            t_ms: 0,
            run: None,
            found: None,
        }
    }

    /// Feeds samples; returns `(end_ms, hz)` when a beep has just ended
    /// (the moment a voicemail starts recording).
    pub fn push(&mut self, samples: &[i16]) -> Option<(u32, u32)> {
        let mut ended = None;
        for &s in samples {
            self.pending[self.filled] = s;
            self.filled += 1;
            if self.filled == FRAME {
                self.filled = 0;
                let frame = self.pending;
                if let Some(e) = self.frame(&frame) {
                    ended = Some(e);
                }
            }
        }
        ended
    }

    /// The last beep found: `(start_ms, end_ms, hz)`.
    pub fn last(&self) -> Option<(u32, u32, u32)> {
        self.found
    }

    /// The frequency holding most of the frame's energy, if it holds at
    /// least [`Self::PURITY`] of it (Goertzel, one bin per frequency).
    fn tone(&self, frame: &[i16; FRAME]) -> Option<u32> {
        let energy: f32 = frame.iter().map(|s| (*s as f32) * (*s as f32)).sum();
        // Too quiet to be a beep (about -50 dBFS).
        if energy < FRAME as f32 * 100.0 * 100.0 {
            return None;
        }
        let mut best = (0u32, 0f32);
        for &(hz, coeff) in &self.coeffs {
            let (mut s1, mut s2) = (0f32, 0f32);
            for &x in frame {
                let s0 = x as f32 + coeff * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
            if power > best.1 {
                best = (hz, power);
            }
        }
        // A pure tone of energy E over N samples gives power N·E/2.
        let purity = best.1 / (FRAME as f32 * energy / 2.0);
        (purity >= Self::PURITY).then_some(best.0)
    }

    fn frame(&mut self, frame: &[i16; FRAME]) -> Option<(u32, u32)> {
        let start = self.t_ms;
        self.t_ms += FRAME_MS;
        match (self.tone(frame), self.run) {
            // The same tone goes on.
            (Some(hz), Some((_, run_hz))) if hz.abs_diff(run_hz) <= 50 => None,
            (Some(hz), _) => {
                let ended = self.end_run(start);
                self.run = Some((start, hz));
                ended
            }
            (None, _) => self.end_run(start),
        }
    }

    fn end_run(&mut self, at: u32) -> Option<(u32, u32)> {
        let (since, hz) = self.run.take()?;
        if at - since >= Self::MIN_MS {
            self.found = Some((since, at, hz));
            return Some((at, hz));
        }
        None
    }
}

#[cfg(test)]
mod tests;
