//! G.711 μ-law and A-law companding (ITU-T G.711, 1988).
//!
//! The arithmetic follows the public-domain Sun Microsystems reference
//! (`g711.c`) that ITU-T G.191's STL reproduces, on 16-bit linear samples.
//! Decoding and law-to-law conversion use 256-entry tables computed at
//! compile time, so the relay's PCMU↔PCMA transcoding is one lookup per byte.

/// The two G.711 companding laws (RTP payload types 0 and 8, RFC 3551 §4.5.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711Law {
    /// μ-law (PCMU, static payload type 0).
    Pcmu,
    /// A-law (PCMA, static payload type 8).
    Pcma,
}

impl G711Law {
    /// The static RTP payload type of the law (RFC 3551 Table 4).
    pub fn static_pt(self) -> u8 {
        match self {
            G711Law::Pcmu => 0,
            G711Law::Pcma => 8,
        }
    }

    /// The encoding name used in `a=rtpmap` (RFC 3551 §6).
    pub fn encoding_name(self) -> &'static str {
        match self {
            G711Law::Pcmu => "PCMU",
            G711Law::Pcma => "PCMA",
        }
    }

    /// Encodes one linear sample with this law (G.711 §2/§3).
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            G711Law::Pcmu => linear_to_ulaw(sample),
            G711Law::Pcma => linear_to_alaw(sample),
        }
    }

    /// Decodes one code word with this law (G.711 §2/§3).
    pub fn decode(self, code: u8) -> i16 {
        match self {
            G711Law::Pcmu => ulaw_to_linear(code),
            G711Law::Pcma => alaw_to_linear(code),
        }
    }

    /// The code word of digital silence (linear 0) in this law.
    pub fn silence(self) -> u8 {
        match self {
            G711Law::Pcmu => 0xFF,
            G711Law::Pcma => 0xD5,
        }
    }
}

/// Encodes a 16-bit linear sample as μ-law (G.711 Table 2).
///
/// This is ITU-T G.191's reference `ulaw_compress` (STL `g711.c`): the
/// sample is taken to 14 bits, negative samples by one's complement, so
/// `-1` is the negative zero 0x7F. (CPython's `audioop` shifts before
/// negating and gives 0x7E for `-1`; the older Sun `linear2ulaw` agrees
/// with G.191 at `-1` but not at `-4`.)
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let magnitude: i32 = if sample < 0 {
        ((!sample) >> 2) as i32
    } else {
        (sample >> 2) as i32
    };
    let mut absno = magnitude + 33;
    if absno > 0x1FFF {
        absno = 0x1FFF;
    }
    let mut i = absno >> 6;
    let mut segno = 1;
    while i != 0 {
        segno += 1;
        i >>= 1;
    }
    let high = 8 - segno;
    let low = 0xF - ((absno >> segno) & 0xF);
    let code = (high << 4) | low;
    if sample >= 0 {
        (code | 0x80) as u8
    } else {
        code as u8
    }
}

const ULAW_BIAS: i32 = 0x84;

/// Decodes a μ-law code word to a 16-bit linear sample (Sun `ulaw2linear`).
pub const fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let t = ((((u & 0x0F) as i32) << 3) + ULAW_BIAS) << ((u & 0x70) >> 4);
    if u & 0x80 != 0 {
        (ULAW_BIAS - t) as i16
    } else {
        (t - ULAW_BIAS) as i16
    }
}

/// Encodes a 16-bit linear sample as A-law (G.711 Table 1).
///
/// ITU-T G.191's reference `alaw_compress`: 12-bit magnitude, negative
/// samples by one's complement, even bits inverted. (The older Sun
/// `linear2alaw` on 16-bit input sent -1…-7 to code 0x5A, i.e. -248.)
pub const fn linear_to_alaw(sample: i16) -> u8 {
    let mut ix: i32 = if sample < 0 {
        ((!sample) >> 4) as i32
    } else {
        (sample >> 4) as i32
    };
    if ix > 15 {
        let mut iexp = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            iexp += 1;
        }
        ix -= 16;
        ix += iexp << 4;
    }
    if sample >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8
}

/// Decodes an A-law code word to a 16-bit linear sample (Sun `alaw2linear`).
pub const fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

const fn build_ulaw_to_alaw() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = linear_to_alaw(ulaw_to_linear(i as u8));
        i += 1;
    }
    t
}

const fn build_alaw_to_ulaw() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = linear_to_ulaw(alaw_to_linear(i as u8));
        i += 1;
    }
    t
}

/// μ-law → A-law code conversion through the linear value (G.711 §4 notes
/// that direct conversion tables are equivalent to decode+encode).
pub static ULAW_TO_ALAW: [u8; 256] = build_ulaw_to_alaw();
/// A-law → μ-law code conversion through the linear value.
pub static ALAW_TO_ULAW: [u8; 256] = build_alaw_to_ulaw();

/// Converts a G.711 payload in place from one law to the other (the relay's
/// PCMU↔PCMA transcoding when the two legs negotiated different codecs).
/// A no-op when `from == to`.
pub fn transcode_in_place(from: G711Law, to: G711Law, payload: &mut [u8]) {
    let table = match (from, to) {
        (G711Law::Pcmu, G711Law::Pcma) => &ULAW_TO_ALAW,
        (G711Law::Pcma, G711Law::Pcmu) => &ALAW_TO_ULAW,
        _ => return,
    };
    for b in payload.iter_mut() {
        *b = table[usize::from(*b)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_reference_vectors() {
        // G.711 Table 2: zero encodes as 0xFF; the end codes decode to ±8031
        // steps of the 14-bit scale (±32124 on the 16-bit scale).
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        // G.191 `ulaw_compress` takes negatives by one's complement: -1 is
        // the negative zero (audioop's 0x7E comes from shifting first).
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(-4), 0x7F);
        assert_eq!(linear_to_ulaw(-5), 0x7E);
        assert_eq!(linear_to_ulaw(4), 0xFE);
        // The first code of the second segment, both signs.
        assert_eq!(ulaw_to_linear(0xEF), 132);
        assert_eq!(ulaw_to_linear(0x6F), -132);
        assert_eq!(linear_to_ulaw(1000), 0xCE);
    }

    #[test]
    fn alaw_reference_vectors() {
        // G.711 Table 1: the even-bit inversion makes zero 0xD5 and the
        // smallest negative step 0x55; full scale is ±4032 on the 13-bit
        // scale (±32256 on 16 bits).
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        assert_eq!(linear_to_alaw(1000), 0xFA);
        // Small negatives are the smallest negative step, not -248.
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(-16), 0x55);
        assert_eq!(linear_to_alaw(-17), 0x54);
    }

    /// G.711 reconstructs each interval by its midpoint, and every sample
    /// lies in the interval of the code it encodes to: the error is at most
    /// half that interval, i.e. half the larger gap to a neighbouring
    /// level (interval widths double from one segment to the next). Checked
    /// on all 65,536 samples for both laws; the old Sun-style A-law encoder
    /// failed it at -1…-7 (sent to -248).
    #[test]
    fn every_sample_lands_in_its_codes_interval() {
        for law in [G711Law::Pcmu, G711Law::Pcma] {
            let mut levels: Vec<i32> = (0..=255u8).map(|c| i32::from(law.decode(c))).collect();
            levels.sort_unstable();
            levels.dedup();
            let full = levels.iter().map(|l| l.abs()).max().unwrap_or(0);
            for x in i16::MIN..=i16::MAX {
                let x32 = i32::from(x);
                if x32.abs() > full {
                    continue;
                }
                let level = i32::from(law.decode(law.encode(x)));
                let i = levels.binary_search(&level).expect("a decoded level");
                let below = i.checked_sub(1).map_or(0, |j| level - levels[j]);
                let above = levels.get(i + 1).map_or(0, |l| l - level);
                let half = below.max(above) / 2;
                assert!(
                    (level - x32).abs() <= half,
                    "{law:?} {x}: decoded {level}, more than {half} away"
                );
            }
        }
    }

    #[test]
    fn every_code_round_trips() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            // μ-law has two zeros (0xFF and 0x7F, "negative zero"); both
            // decode to 0, which encodes as 0xFF.
            let expect = if code == 0x7F { 0xFF } else { code };
            assert_eq!(back, expect, "μ-law code {code:#04x}");
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law code {code:#04x}"
            );
        }
    }

    #[test]
    fn encoding_is_monotonic_in_magnitude() {
        let mut prev = ulaw_to_linear(linear_to_ulaw(0));
        for s in (0..=i16::MAX).step_by(7) {
            let q = ulaw_to_linear(linear_to_ulaw(s));
            assert!(q >= prev, "μ-law not monotonic at {s}");
            assert!(
                (i32::from(q) - i32::from(s)).abs() <= 1024,
                "μ-law error too big at {s}"
            );
            prev = q;
        }
        let mut prev = alaw_to_linear(linear_to_alaw(0));
        for s in (0..=i16::MAX).step_by(7) {
            let q = alaw_to_linear(linear_to_alaw(s));
            assert!(q >= prev, "A-law not monotonic at {s}");
            assert!(
                (i32::from(q) - i32::from(s)).abs() <= 1024,
                "A-law error too big at {s}"
            );
            prev = q;
        }
    }

    #[test]
    fn transcoding_preserves_the_signal() {
        let mut p: Vec<u8> = (0..=255u8).collect();
        let orig = p.clone();
        transcode_in_place(G711Law::Pcmu, G711Law::Pcma, &mut p);
        for (u, a) in orig.iter().zip(&p) {
            let lu = i32::from(ulaw_to_linear(*u));
            let la = i32::from(alaw_to_linear(*a));
            // Both laws quantise in 4-bit mantissas: the error is at most one
            // step of the coarser segment.
            assert!(
                (lu - la).abs() <= (lu.abs() / 16).max(16),
                "{u:#x}→{a:#x}: {lu} vs {la}"
            );
        }
        assert_eq!(ULAW_TO_ALAW[0xFF], 0xD5, "silence maps to silence");
        assert_eq!(ALAW_TO_ULAW[0xD5], linear_to_ulaw(8));
        let mut same = orig.clone();
        transcode_in_place(G711Law::Pcma, G711Law::Pcma, &mut same);
        assert_eq!(same, orig);
    }
}
