//! RFC 4733 telephone-events: the 4-byte payload, and a detector that turns a
//! stream of event packets into one digit per key press.

/// Why a telephone-event payload was refused (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    /// Shorter than the 4-byte event block.
    #[error("telephone-event payload of {0} bytes, need 4")]
    TooShort(usize),
}

/// One telephone-event block (RFC 4733 §2.3, Figure 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (RFC 4733 §3.2: 0–9, 10 `*`, 11 `#`, 12–15 A–D, 16 flash).
    pub event: u8,
    /// E bit: the last packets of the event.
    pub end: bool,
    /// Power level in −dBm0 (0–63).
    pub volume: u8,
    /// Duration so far in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first event block of a payload (RFC 4733 §2.3; further
    /// blocks of a redundant payload are ignored).
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        let [event, flags, d0, d1, ..] = *payload else {
            return Err(DtmfError::TooShort(payload.len()));
        };
        Ok(TelephoneEvent {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// The 4-byte block (R bit zero).
    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        let flags = (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F);
        [self.event, flags, d[0], d[1]]
    }

    /// The DTMF character of the event, if it is a DTMF event (0–15).
    pub fn digit(self) -> Option<char> {
        event_to_digit(self.event)
    }
}

/// Maps an RFC 4733 §3.2 event code to its DTMF character (`0-9 * # A-D`).
pub fn event_to_digit(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => char::from(b'0' + event),
        10 => '*',
        11 => '#',
        12..=15 => char::from(b'A' + event - 12),
        _ => return None,
    })
}

/// Maps a DTMF character to its RFC 4733 §3.2 event code.
pub fn digit_to_event(digit: char) -> Option<u8> {
    Some(match digit {
        '0'..='9' => digit as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => digit as u8 - b'A' + 12,
        'a'..='d' => digit as u8 - b'a' + 12,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy)]
struct Current {
    timestamp: u32,
    event: u8,
    ended: bool,
}

/// Turns telephone-event packets into key presses (RFC 4733 §2.5.2).
///
/// An event is identified by its RTP timestamp (§2.5.1.1: every packet of
/// one event carries the timestamp of its start), so the start, updates and
/// the three retransmitted end packets of one press report one digit. The
/// digit is reported on the first packet seen, so a lost end packet does not
/// lose the press. A new timestamp carrying the same event while the previous
/// one has not ended is the next segment of a long press (§2.5.1.3), not a
/// new press. Packets older than the current event (reordered stragglers) are
/// ignored.
#[derive(Debug, Clone, Default)]
pub struct DtmfDetector {
    current: Option<Current>,
}

impl DtmfDetector {
    /// A detector that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one packet (its RTP timestamp and telephone-event payload);
    /// returns the digit when this packet starts a new key press.
    pub fn handle(
        &mut self,
        rtp_timestamp: u32,
        payload: &[u8],
    ) -> Result<Option<char>, DtmfError> {
        let ev = TelephoneEvent::parse(payload)?;
        if let Some(cur) = &mut self.current {
            if cur.timestamp == rtp_timestamp {
                cur.ended |= ev.end;
                return Ok(None);
            }
            // Serial-number comparison (RFC 3550 §A.1 style) for wrap-around.
            if (rtp_timestamp.wrapping_sub(cur.timestamp) as i32) < 0 {
                return Ok(None);
            }
            let continuation = !cur.ended && cur.event == ev.event;
            *cur = Current {
                timestamp: rtp_timestamp,
                event: ev.event,
                ended: ev.end,
            };
            if continuation {
                return Ok(None);
            }
        } else {
            self.current = Some(Current {
                timestamp: rtp_timestamp,
                event: ev.event,
                ended: ev.end,
            });
        }
        Ok(ev.digit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(event: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    #[test]
    fn payload_round_trip() {
        let e = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 1280,
        };
        let b = e.to_bytes();
        assert_eq!(b, [11, 0x8A, 0x05, 0x00]);
        assert_eq!(TelephoneEvent::parse(&b), Ok(e));
        assert_eq!(TelephoneEvent::parse(&b[..3]), Err(DtmfError::TooShort(3)));
        // The reserved bit is ignored on input.
        assert_eq!(
            TelephoneEvent::parse(&[1, 0xCA, 0, 160]).map(|e| (e.end, e.volume)),
            Ok((true, 10))
        );
    }

    #[test]
    fn digit_mapping() {
        let all = "0123456789*#ABCD";
        for (code, ch) in all.chars().enumerate() {
            assert_eq!(event_to_digit(code as u8), Some(ch));
            assert_eq!(digit_to_event(ch), Some(code as u8));
        }
        assert_eq!(event_to_digit(16), None, "flash is not a digit");
        assert_eq!(digit_to_event('x'), None);
    }

    #[test]
    fn one_digit_per_press_with_retransmitted_ends() {
        let mut d = DtmfDetector::new();
        let mut got = Vec::new();
        // `*` pressed at ts 1000: start, two updates, three end packets.
        for (ts, p) in [
            (1000, pkt(10, false, 160)),
            (1000, pkt(10, false, 320)),
            (1000, pkt(10, false, 480)),
            (1000, pkt(10, true, 640)),
            (1000, pkt(10, true, 640)),
            (1000, pkt(10, true, 640)),
            // Same key again: a new event, a new timestamp.
            (5000, pkt(10, false, 160)),
            (5000, pkt(10, true, 320)),
            (5000, pkt(10, true, 320)),
            // A straggler of the first press arrives late.
            (1000, pkt(10, true, 640)),
            // `5` whose start packets were lost: only end packets arrive.
            (9000, pkt(5, true, 800)),
            (9000, pkt(5, true, 800)),
        ] {
            if let Some(c) = d.handle(ts, &p).unwrap() {
                got.push(c);
            }
        }
        assert_eq!(got, vec!['*', '*', '5']);
    }

    #[test]
    fn long_press_segments_are_one_press_and_wrap_is_handled() {
        let mut d = DtmfDetector::new();
        assert_eq!(
            d.handle(u32::MAX - 100, &pkt(0, false, 65535)).unwrap(),
            Some('0')
        );
        // Second segment of the same long press, across the timestamp wrap.
        assert_eq!(d.handle(65435, &pkt(0, false, 800)).unwrap(), None);
        assert_eq!(d.handle(65435, &pkt(0, true, 1600)).unwrap(), None);
        assert_eq!(d.handle(80000, &pkt(0, false, 160)).unwrap(), Some('0'));
        assert_eq!(
            d.handle(90000, &pkt(16, false, 160)).unwrap(),
            None,
            "flash"
        );
        assert!(d.handle(1, &[1, 2]).is_err());
    }
}
