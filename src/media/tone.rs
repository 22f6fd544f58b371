//! Generated audio towards the agent while no lead is connected: a 440 Hz
//! beep when a dial starts, then silence (SPEC §1 step 2).
//!
//! Frames are 20 ms of G.711 at 8 kHz (RFC 3551 §4.5.14 default ptime), the
//! sine's phase carries over from frame to frame so the beep has no clicks at
//! frame boundaries.

use std::f64::consts::TAU;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::g711::G711Law;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Duration of one frame.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);
const SAMPLE_RATE: f64 = 8000.0;

/// One 20 ms G.711 frame.
pub type Frame = [u8; FRAME_SAMPLES];

/// A phase-continuous beep-then-silence generator of G.711 frames.
///
/// The beep's samples are computed once per (frequency, length, amplitude)
/// and shared by every generator ([`beep_samples`]): a dialer starts a beep
/// on every dial, and a sine per sample per dial was a visible part of a
/// call's CPU (SPEC §6 call setup).
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    law: G711Law,
    samples: Arc<[i16]>,
    /// The next sample of `samples`; at its end, silence.
    at: usize,
}

impl ToneGenerator {
    /// A generator of `freq_hz` beeps lasting `beep` at `amplitude` (0..=1 of
    /// full scale), encoded with `law`. It starts silent: call [`Self::start`].
    pub fn new(law: G711Law, freq_hz: f64, beep: Duration, amplitude: f64) -> Self {
        let samples = beep_samples(freq_hz, beep, amplitude);
        ToneGenerator {
            law,
            at: samples.len(),
            samples,
        }
    }

    /// The dial-start beep: 440 Hz for `beep`, at -10 dBFS (SPEC §1 step 2).
    pub fn dial_beep(law: G711Law, beep: Duration) -> Self {
        Self::new(law, 440.0, beep, 0.316)
    }

    /// Starts (or restarts) the beep from zero phase.
    pub fn start(&mut self) {
        self.at = 0;
    }

    /// Stops the beep at once; the next frames are silence.
    pub fn stop(&mut self) {
        self.at = self.samples.len();
    }

    /// Whether the beep is still sounding (the next frame is not all silence).
    pub fn is_beeping(&self) -> bool {
        self.at < self.samples.len()
    }

    /// Switches the output law (the agent leg renegotiated).
    pub fn set_law(&mut self, law: G711Law) {
        self.law = law;
    }

    /// The law frames are encoded with.
    pub fn law(&self) -> G711Law {
        self.law
    }

    /// Writes the next 20 ms frame.
    pub fn next_frame(&mut self, out: &mut Frame) {
        let beep = self.samples.get(self.at..).unwrap_or_default();
        let n = beep.len().min(FRAME_SAMPLES);
        for (b, &sample) in out.iter_mut().zip(&beep[..n]) {
            *b = self.law.encode(sample);
        }
        out[n..].fill(self.law.silence());
        self.at += n;
    }
}

/// The samples of a `freq_hz` sine lasting `beep` at `amplitude` (0..=1 of
/// full scale) from zero phase, made once per distinct beep and shared.
fn beep_samples(freq_hz: f64, beep: Duration, amplitude: f64) -> Arc<[i16]> {
    type Key = (u64, u128, u64);
    static MADE: Mutex<Vec<(Key, Arc<[i16]>)>> = Mutex::new(Vec::new());
    let amplitude = amplitude.clamp(0.0, 1.0);
    let key = (freq_hz.to_bits(), beep.as_nanos(), amplitude.to_bits());
    let mut made = MADE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, samples)) = made.iter().find(|(k, _)| *k == key) {
        return samples.clone();
    }
    let len = (beep.as_secs_f64() * SAMPLE_RATE).round() as usize;
    let step = TAU * freq_hz / SAMPLE_RATE;
    let scale = amplitude * f64::from(i16::MAX);
    let samples: Arc<[i16]> = (0..len)
        .map(|n| ((n as f64 * step).sin() * scale).round() as i16)
        .collect();
    made.push((key, samples.clone()));
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(law: G711Law, frames: &[Frame]) -> Vec<f64> {
        frames
            .iter()
            .flat_map(|f| f.iter().map(move |c| f64::from(law.decode(*c))))
            .collect()
    }

    #[test]
    fn beep_is_a_continuous_440hz_sine_then_silence() {
        for law in [G711Law::Pcmu, G711Law::Pcma] {
            let mut g = ToneGenerator::dial_beep(law, Duration::from_millis(200));
            let mut frames = vec![[0u8; FRAME_SAMPLES]; 15];
            // Silent before start.
            g.next_frame(&mut frames[0]);
            assert!(frames[0].iter().all(|b| *b == law.silence()));
            g.start();
            for f in frames.iter_mut() {
                g.next_frame(f);
            }
            assert_eq!(
                frames
                    .iter()
                    .filter(|f| f.iter().any(|b| *b != law.silence()))
                    .count(),
                10
            );
            assert!(!g.is_beeping());
            let pcm = decode(law, &frames);
            let amp = 0.316 * 32767.0;
            for (n, s) in pcm.iter().take(1600).enumerate() {
                let want = (TAU * 440.0 * n as f64 / 8000.0).sin() * amp;
                // G.711 quantisation error is below 1/16 of the magnitude
                // plus one small step.
                assert!(
                    (s - want).abs() <= want.abs() / 16.0 + 40.0,
                    "{law:?} sample {n}: {s} vs {want}"
                );
            }
            // The largest step between neighbours, across frame boundaries
            // too, stays that of the sine: no click.
            let max_step = TAU * 440.0 / 8000.0 * amp * 1.15 + 80.0;
            for w in pcm[..1600].windows(2) {
                assert!((w[1] - w[0]).abs() <= max_step);
            }
            assert!(pcm[1600..].iter().all(|s| s.abs() <= 8.0));
        }
    }

    #[test]
    fn restart_and_stop() {
        let mut g = ToneGenerator::dial_beep(G711Law::Pcmu, Duration::from_millis(40));
        let mut f = [0u8; FRAME_SAMPLES];
        g.start();
        g.next_frame(&mut f);
        let first = f;
        g.start();
        g.next_frame(&mut f);
        assert_eq!(f, first, "a restart begins at phase zero");
        g.stop();
        g.next_frame(&mut f);
        assert!(f.iter().all(|b| *b == 0xFF));
    }
}
