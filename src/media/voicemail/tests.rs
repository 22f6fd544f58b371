//! The WAV reader's checks and the drop player on the labelled greetings
//! of `fixtures/greetings/`, with a simulated clock.

use super::*;
use crate::media::g711::G711Law;

#[allow(clippy::disallowed_methods)] // the simulated clock's origin
fn t0() -> Instant {
    Instant::now()
}

fn greeting(name: &str) -> Vec<i16> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/greetings")
        .join(name);
    std::fs::read(p)
        .expect("greeting")
        .iter()
        .map(|b| G711Law::Pcmu.decode(*b))
        .collect()
}

#[test]
fn wav_files_of_the_three_encodings_are_read_and_others_refused() {
    let pcm: Vec<i16> = (0..800).map(|i| ((i % 50) * 100) as i16).collect();
    assert_eq!(parse_wav(&write_wav(&pcm, 1)), Ok(pcm.clone()));
    // μ-law (7) and A-law (6), 8-bit.
    for (tag, law) in [(7u16, G711Law::Pcmu), (6, G711Law::Pcma)] {
        let mut w = write_wav(&[], 1);
        w[20..22].copy_from_slice(&tag.to_le_bytes());
        w[34..36].copy_from_slice(&8u16.to_le_bytes());
        let data: Vec<u8> = pcm.iter().map(|s| law.encode(*s)).collect();
        w[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
        w.extend_from_slice(&data);
        let back = parse_wav(&w).expect("G.711 WAV");
        assert_eq!(back.len(), pcm.len());
        assert_eq!(back[1], law.decode(law.encode(pcm[1])));
    }
    assert_eq!(parse_wav(b"hello"), Err(WavError::NotWav));
    let stereo = write_wav(&pcm, 2);
    assert_eq!(parse_wav(&stereo), Err(WavError::Channels(2)));
    let mut wide = write_wav(&pcm, 1);
    wide[24..28].copy_from_slice(&16_000u32.to_le_bytes());
    assert_eq!(parse_wav(&wide), Err(WavError::Rate(16_000)));
    let mut float = write_wav(&pcm, 1);
    float[20..22].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(parse_wav(&float), Err(WavError::Encoding(3)));
    assert_eq!(parse_wav(&write_wav(&[], 1)), Err(WavError::Empty));
    assert_eq!(
        parse_wav(&write_wav(&pcm, 1)[..30]),
        Err(WavError::Truncated)
    );
}

/// Feeds `line` as 20 ms frames with the simulated clock; returns when
/// the message started (ms into the line) and what it played.
fn run(line: &[i16], message: &[i16]) -> (u64, DropStart, Vec<i16>) {
    let start = t0();
    let mut p = DropPlayer::new(start, message.into(), DropConfig::default());
    let mut played = Vec::new();
    let mut frame = [0i16; FRAME];
    let silence = [0i16; FRAME];
    for i in 0.. {
        let now = start + Duration::from_millis(20 * i);
        let chunk = line.get((i as usize) * FRAME..).unwrap_or(&[]);
        let chunk = if chunk.len() >= FRAME {
            &chunk[..FRAME]
        } else {
            &silence[..]
        };
        p.handle_audio(now, chunk);
        while let Some(n) = p.handle_timeout(now, &mut frame) {
            played.extend_from_slice(&frame[..n]);
        }
        if p.is_done() {
            break;
        }
        assert!(i < 10_000, "never finished");
    }
    let (at, why) = p.started().expect("started");
    (at.duration_since(start).as_millis() as u64, why, played)
}

#[test]
fn the_message_starts_at_the_end_of_the_beep_and_plays_whole() {
    let line = greeting("machine-21-beep.ul");
    // Where the beep is in the fixture, by the detector alone.
    let mut b = BeepDetector::new();
    let mut beep_end = None;
    for chunk in line.chunks(FRAME) {
        if let Some((end, _)) = b.push(chunk) {
            beep_end = Some(end);
        }
    }
    let beep_end = u64::from(beep_end.expect("the fixture has a beep"));
    let message: Vec<i16> = (0..16_000).map(|i| ((i % 40) * 200) as i16).collect();
    let (at, why, played) = run(&line, &message);
    assert!(
        matches!(why, DropStart::Beep(hz) if (1000..=2000).contains(&hz)),
        "{why:?}"
    );
    // The beep ends inside the frame after its last tone frame.
    assert!(
        at.abs_diff(beep_end) <= 40,
        "started at {at} ms, beep ended at {beep_end} ms"
    );
    assert_eq!(&played[..message.len()], &message[..]);
}

#[test]
fn a_greeting_without_beep_ends_in_silence_and_then_the_message_plays() {
    let line = greeting("machine-25-nobeep.ul");
    let message = vec![1000i16; 8_000];
    let (at, why, played) = run(&line, &message);
    assert_eq!(why, DropStart::EndOfGreeting);
    assert!(at > 2_500, "{at}");
    assert_eq!(played.len(), message.len());
}
