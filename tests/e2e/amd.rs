//! Answering machines end to end (SPEC §4 `amd`, voicemail drop,
//! recording): a scripted PJSIP carrier (tests/peers/pj_carrier.py)
//! answers with greetings of `fixtures/greetings/` (a person's "Hello?",
//! a voicemail greeting ending in a beep) and records what it receives;
//! an auto-answering PJSIP agent phone; a real `powerdial serve`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::app::{free_port, http_request, repo, spawn_app_with, App, AppOptions};
use crate::peers::{agent_status, carrier_events, spawn_py, wait_for, Peer};

/// One HTTP/1.1 request with a binary body (Connection: close): status,
/// header block, body bytes.
pub(crate) fn http_bytes(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write http");
    s.write_all(body).expect("write body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.get(split + 4..).unwrap_or(&[]).to_vec();
    (status, head, body)
}

/// A 16-bit PCM mono WAV of `pcm` at 8 kHz.
pub(crate) fn wav(pcm: &[i16]) -> Vec<u8> {
    let data = (pcm.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// A greeting of `fixtures/greetings/` as linear samples.
pub(crate) fn greeting(name: &str) -> Vec<i16> {
    let bytes = std::fs::read(repo().join("fixtures/greetings").join(name)).expect("greeting");
    bytes
        .iter()
        .map(|b| powerdial::media::g711::G711Law::Pcmu.decode(*b))
        .collect()
}

/// A WAV file's samples (16-bit PCM, first channel) and its rate.
pub(crate) fn read_wav(path: &Path) -> Option<(u32, Vec<i16>)> {
    let b = std::fs::read(path).ok()?;
    let mut pos = 12;
    let (mut rate, mut channels) = (0u32, 1usize);
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let len = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().ok()?) as usize;
        // A recorder that never finished its header leaves the data
        // chunk's length 0: the data runs to the end of the file.
        let end = if id == b"data" && len == 0 {
            b.len()
        } else {
            (pos + 8 + len).min(b.len())
        };
        let body = &b[pos + 8..end];
        if id == b"fmt " {
            channels = u16::from_le_bytes(body[2..4].try_into().ok()?) as usize;
            rate = u32::from_le_bytes(body[4..8].try_into().ok()?);
        } else if id == b"data" {
            let pcm = body
                .chunks_exact(2 * channels)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return Some((rate, pcm));
        }
        pos += 8 + len + (len & 1);
    }
    None
}

pub(crate) struct Rig {
    pub app: App,
    _carrier: Peer,
    _agent: Peer,
    pub dir: tempfile::TempDir,
    pub events: PathBuf,
}

/// The carrier plays `play` (tail `07NN` → greeting file) and hangs up
/// answered calls after `hold` seconds.
pub(crate) fn rig(play: &[(&str, Vec<i16>)], hold: f64, extra_toml: &str) -> Rig {
    rig_with_agent_voice(play, hold, extra_toml, None)
}

/// [`rig`] whose agent phone says `voice` (looped) instead of silence.
pub(crate) fn rig_with_agent_voice(
    play: &[(&str, Vec<i16>)],
    hold: f64,
    extra_toml: &str,
    voice: Option<&[i16]>,
) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    if let Some(v) = voice {
        std::fs::write(dir.path().join("agent-play.wav"), wav(v)).expect("agent voice");
    }
    let events = dir.path().join("carrier.jsonl");
    let status = dir.path().join("agent.json");
    std::fs::create_dir_all(dir.path().join("play")).expect("play dir");
    for (nn, pcm) in play {
        std::fs::write(dir.path().join("play").join(format!("{nn}.wav")), wav(pcm))
            .expect("write greeting");
    }
    let carrier_port = free_port();
    let carrier = spawn_py(
        "pj_carrier.py",
        &[
            carrier_port.to_string(),
            events.display().to_string(),
            "120".into(),
            hold.to_string(),
        ],
    );
    wait_for("the carrier", Duration::from_secs(15), || {
        carrier_events(&events)
            .iter()
            .any(|e| e["event"] == "ready")
    });
    let app = spawn_app_with(AppOptions {
        extra_toml: format!(
            r#"[dialer]
ring_timeout = 5
allow_short_ring_timeout = true
refresh_interval = 1
wrap_up_idle = 0.2

[[trunk]]
name = "carrier"
uri = "sip:127.0.0.1:{carrier_port}"
caller_id = "+442079460999"
allow = ['\+44\d+']
{extra_toml}"#
        ),
        ..AppOptions::default()
    });
    let agent = spawn_py(
        "pj_agent.py",
        &[
            app.sip.to_string(),
            "alice".into(),
            "alice-secret".into(),
            status.display().to_string(),
            "120".into(),
        ],
    );
    wait_for("the agent's registration", Duration::from_secs(15), || {
        agent_status(&status)["reg"] == 200
    });
    Rig {
        app,
        _carrier: carrier,
        _agent: agent,
        dir,
        events,
    }
}

impl Rig {
    pub(crate) fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (code, text) = http_request(
            self.app.http,
            "POST",
            path,
            Some(&self.app.token),
            Some(&body.to_string()),
        );
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) fn get(&self, path: &str) -> Value {
        let (code, text) = self.app.http_get(path);
        assert_eq!(code, 200, "GET {path}: {text}");
        serde_json::from_str(&text).expect("JSON")
    }

    pub(crate) fn calls(&self, session: i64) -> Vec<Value> {
        let v = self.get(&format!("/api/v1/calls?session_id={session}&limit=1000"));
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// Leads named `name` with one phone each, a view sorted by name and a
    /// session over it with `settings`; alice joins. The session id.
    pub(crate) fn session(&self, leads: &[(&str, &str)], settings: Value) -> i64 {
        let body: Vec<Value> = leads
            .iter()
            .map(|(name, phone)| json!({"name": name, "contacts": [{"name": "C", "phones": [phone]}]}))
            .collect();
        let (code, created) = self.post("/api/v1/leads", &Value::Array(body));
        assert_eq!(code, 201, "POST /api/v1/leads: {created}");
        let (code, view) = self.post(
            "/api/v1/smart-views",
            &json!({"name": "amd", "query": "sort:name"}),
        );
        assert_eq!(code, 201, "{view}");
        let mut body = settings;
        body["smart_view_id"] = view["id"].clone();
        let (code, session) = self.post("/api/v1/sessions", &body);
        assert_eq!(code, 201, "POST /api/v1/sessions: {session}");
        let sid = session["id"].as_i64().expect("session id");
        let (code, joined) = self.post(
            &format!("/api/v1/sessions/{sid}/agents"),
            &json!({"agent": "alice"}),
        );
        assert!(code == 200 || code == 201, "join: {code} {joined}");
        sid
    }

    /// Pauses alice in session `sid` (her phone stays connected): the
    /// sessions of one test all read every lead (`sort:name`), so a session
    /// where she is still dialing would race the next one for its leads.
    pub(crate) fn pause(&self, sid: i64) {
        let (code, body) = self.post(
            &format!("/api/v1/sessions/{sid}/agents/alice/pause"),
            &json!({}),
        );
        assert!((200..300).contains(&code), "pause: {code} {body}");
    }

    /// The session's call to `number` once it has an outcome.
    pub(crate) fn ended_call(&self, sid: i64, number: &str) -> Value {
        let mut found = Value::Null;
        wait_for(
            &format!("the outcome of the call to {number}"),
            Duration::from_secs(40),
            || {
                found = self
                    .calls(sid)
                    .into_iter()
                    .find(|c| c["number"] == number && !c["outcome"].is_null())
                    .unwrap_or(Value::Null);
                !found.is_null()
            },
        );
        found
    }
}

fn rfc3339_s(v: &Value) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time")).expect("RFC 3339");
    t.timestamp_micros() as f64 / 1e6
}

#[test]
fn amd_hangup_mode_tells_a_person_from_a_voicemail_greeting() {
    let rig = rig(
        &[
            ("01", greeting("human-01-Hello.ul")),
            ("21", greeting("machine-21-beep.ul")),
        ],
        6.0,
        "",
    );
    let sid = rig.session(
        &[
            ("A person", "+442079460701"),
            ("B machine", "+442079460721"),
        ],
        json!({"amd": "hangup"}),
    );
    let session = rig.get(&format!("/api/v1/sessions/{sid}"));
    assert_eq!(session["amd"], "hangup", "{session}");

    let human = rig.ended_call(sid, "+442079460701");
    assert_eq!(human["amd"], "human", "{human}");
    assert_eq!(human["outcome"], "answered", "{human}");
    let ms = human["amd_ms"].as_i64().expect("amd_ms");
    // SPEC: decided within 2 s for a typical "Hello?" (the abandonment
    // window), measured from the 200 OK.
    assert!(
        (300..2000).contains(&ms),
        "human decided after {ms} ms: {human}"
    );

    let machine = rig.ended_call(sid, "+442079460721");
    assert_eq!(machine["amd"], "machine", "{machine}");
    assert_eq!(machine["outcome"], "voicemail", "{machine}");
    let ms = machine["amd_ms"].as_i64().expect("amd_ms");
    assert!((1000..4000).contains(&ms), "machine decided after {ms} ms");
    // Hung up by powerdial at the verdict, not by the carrier's 6 s hold.
    let talk = rfc3339_s(&machine["ended_at"]) - rfc3339_s(&machine["answered_at"]);
    assert!(talk < 4.5, "the machine call lasted {talk:.2} s: {machine}");
    eprintln!(
        "human decided in {} ms, machine in {ms} ms",
        human["amd_ms"]
    );
}

/// A tone of `hz` at -6 dBFS for `seconds`.
fn tone(hz: f64, seconds: f64) -> Vec<i16> {
    let n = (seconds * 8000.0) as usize;
    (0..n)
        .map(|i| ((i as f64 * hz * std::f64::consts::TAU / 8000.0).sin() * 16_000.0) as i16)
        .collect()
}

/// A 440 Hz tone: the message, easy to find in what the carrier recorded.
fn message_tone(seconds: f64) -> Vec<i16> {
    tone(440.0, seconds)
}

/// Share of `pcm`'s energy at `hz` (Goertzel over the whole slice).
fn purity(rate: u32, pcm: &[i16], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let energy: f64 = pcm.iter().map(|s| f64::from(*s).powi(2)).sum();
    let (mut s1, mut s2) = (0f64, 0f64);
    for x in pcm {
        let s0 = f64::from(*x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if energy == 0.0 {
        return 0.0;
    }
    power / (pcm.len() as f64 * energy / 2.0)
}

/// Uploads `pcm` as a voicemail message; its id.
fn upload(rig: &Rig, pcm: &[i16]) -> i64 {
    let (code, _, text) = http_bytes(
        rig.app.http,
        "POST",
        "/api/v1/voicemail-drops",
        &rig.app.token,
        "audio/wav",
        &wav(pcm),
    );
    assert_eq!(code, 201, "upload: {}", String::from_utf8_lossy(&text));
    let v: Value = serde_json::from_slice(&text).expect("JSON");
    v["id"].as_i64().expect("id")
}

/// Seconds into `pcm` (at `rate`) where 20 ms frames first hold the
/// 440 Hz message: loud, and most of its energy at 440 Hz.
fn message_onset(rate: u32, pcm: &[i16]) -> Option<f64> {
    let frame = (rate / 50) as usize;
    let w = 2.0 * std::f64::consts::PI * 440.0 / f64::from(rate);
    let coeff = 2.0 * w.cos();
    pcm.chunks_exact(frame)
        .position(|f| {
            let energy: f64 = f.iter().map(|s| f64::from(*s).powi(2)).sum();
            let (mut s1, mut s2) = (0f64, 0f64);
            for x in f {
                let s0 = f64::from(*x) + coeff * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
            energy > frame as f64 * 2000.0 * 2000.0 && power / (frame as f64 * energy / 2.0) > 0.6
        })
        .map(|i| i as f64 * 0.02)
}

#[test]
fn voicemail_drop_plays_the_message_after_the_beep_and_frees_the_agent_at_once() {
    let machine = greeting("machine-21-beep.ul");
    // Where the greeting's beep ends, by the detector itself.
    let mut beeps = powerdial::media::amd::BeepDetector::new();
    let mut beep_end = None;
    for chunk in machine.chunks(160) {
        if let Some((end, _)) = beeps.push(chunk) {
            beep_end = Some(f64::from(end) / 1000.0);
        }
    }
    let beep_end = beep_end.expect("the fixture has a beep");
    let rig = rig(
        &[
            ("21", machine),
            ("22", greeting("machine-22-beep.ul")),
            ("23", greeting("machine-23-beep.ul")),
        ],
        // The machines hang up well after the message; a person (0200)
        // after 2 s.
        30.0,
        "",
    );

    // A bad upload is a clear 4xx.
    let (code, _, text) = http_bytes(
        rig.app.http,
        "POST",
        "/api/v1/voicemail-drops",
        &rig.app.token,
        "audio/wav",
        b"RIFF\x00\x00\x00\x00WAVEjunk",
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&text));
    let stereo_16k = {
        let mut w = wav(&[0; 800]);
        w[22] = 2;
        w
    };
    let (code, _, text) = http_bytes(
        rig.app.http,
        "POST",
        "/api/v1/voicemail-drops",
        &rig.app.token,
        "audio/wav",
        &stereo_16k,
    );
    let text = String::from_utf8_lossy(&text);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("mono"), "{text}");
    let (code, _, _) = http_bytes(
        rig.app.http,
        "POST",
        "/api/v1/voicemail-drops",
        &rig.app.token,
        "application/json",
        b"{}",
    );
    assert_eq!(code, 415);
    let tone = message_tone(2.0);
    let drop_id = upload(&rig, &tone);

    // "drop" mode: the machine never reaches the agent; the message plays
    // after its beep, then BYE.
    let sid = rig.session(
        &[("A machine", "+442079460721")],
        json!({"amd": "drop", "voicemail_drop_id": drop_id}),
    );
    let rec = rig.ended_call(sid, "+442079460721");
    assert_eq!(rec["outcome"], "voicemail_dropped", "{rec}");
    assert_eq!(rec["amd"], "machine", "{rec}");
    wait_for(
        "the carrier's end of the call",
        Duration::from_secs(30),
        || {
            carrier_events(&rig.events)
                .iter()
                .any(|e| e["event"] == "ended" && e["number"] == "442079460721")
        },
    );
    let events = carrier_events(&rig.events);
    let at = |event: &str| {
        events
            .iter()
            .find(|e| e["event"] == event && e["number"] == "442079460721")
            .and_then(|e| e["t"].as_f64())
            .unwrap_or_else(|| panic!("no {event}: {events:?}"))
    };
    let (rate, heard) =
        read_wav(&rig.dir.path().join("play/21-rx.wav")).expect("the carrier's recording");
    let peak = heard.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    let onset = message_onset(rate, &heard).unwrap_or_else(|| {
        panic!(
            "the message did not reach the carrier: {} samples at {rate} Hz, peak {peak}, file {} bytes",
            heard.len(),
            std::fs::metadata(rig.dir.path().join("play/21-rx.wav")).map(|m| m.len()).unwrap_or(0)
        )
    });
    eprintln!("beep ends at {beep_end:.2} s; the message arrived at {onset:.2} s");
    assert!(
        onset >= beep_end - 0.05,
        "the message started at {onset:.2} s, before the beep ended ({beep_end:.2} s)"
    );
    assert!(
        onset <= beep_end + 1.0,
        "the message came {onset:.2} s in, late"
    );
    // BYE (from us: the machine would hold 30 s) once the 2 s message played.
    let ended = at("ended") - at("playing");
    assert!(
        ended >= onset + 1.9 && ended < onset + 4.0,
        "the call ended {ended:.2} s in; message from {onset:.2} s"
    );

    // The agent's drop (the API; `9` on the phone runs the same code): on
    // an answered machine in "detect" mode, the agent is dialing the next
    // lead within a second.
    rig.pause(sid);
    let sid2 = rig.session(
        &[
            ("C machine", "+442079460722"),
            ("D machine", "+442079460723"),
            ("E next", "+442079460200"),
        ],
        json!({"amd": "detect", "voicemail_drop_id": drop_id}),
    );
    wait_for("the machine's answer", Duration::from_secs(20), || {
        rig.calls(sid2)
            .iter()
            .any(|c| c["number"] == "+442079460722" && !c["answered_at"].is_null())
    });
    std::thread::sleep(Duration::from_millis(500));
    let pressed = std::time::Instant::now();
    let (code, body) = rig.post(
        &format!("/api/v1/sessions/{sid2}/agents/alice/drop"),
        &json!({}),
    );
    assert_eq!(code, 204, "drop: {body}");
    wait_for("the next lead's INVITE", Duration::from_secs(5), || {
        carrier_events(&rig.events)
            .iter()
            .any(|e| e["event"] == "invite" && e["number"] == "442079460723")
    });
    let next_after = pressed.elapsed();
    eprintln!("drop pressed (API) → next lead's INVITE at the carrier: {next_after:?}");
    assert!(next_after < Duration::from_secs(1), "{next_after:?}");
    let rec = rig.ended_call(sid2, "+442079460722");
    assert_eq!(rec["outcome"], "voicemail_dropped", "{rec}");

    // The same with `9` pressed on the agent's phone (RFC 4733).
    wait_for(
        "the second machine's answer",
        Duration::from_secs(20),
        || {
            rig.calls(sid2)
                .iter()
                .any(|c| c["number"] == "+442079460723" && !c["answered_at"].is_null())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let pressed = std::time::Instant::now();
    std::fs::write(rig.dir.path().join("agent.json.dtmf"), "9").expect("press 9");
    wait_for("the lead after it", Duration::from_secs(5), || {
        carrier_events(&rig.events)
            .iter()
            .any(|e| e["event"] == "invite" && e["number"] == "442079460200")
    });
    let next_after = pressed.elapsed();
    eprintln!("9 pressed on the phone → next lead's INVITE at the carrier: {next_after:?}");
    // The phone script looks for the key file every 100 ms.
    assert!(next_after < Duration::from_millis(1100), "{next_after:?}");
    let rec = rig.ended_call(sid2, "+442079460723");
    assert_eq!(rec["outcome"], "voicemail_dropped", "{rec}");
    // An agent who is not in the session has nothing to drop: 404.
    let (code, _) = rig.post(
        &format!("/api/v1/sessions/{sid2}/agents/bob/drop"),
        &json!({}),
    );
    assert_eq!(code, 404);
}

#[test]
fn a_recorded_call_holds_what_each_side_sent_on_its_own_channel() {
    // The lead says a 1000 Hz tone for 3 s; the agent's phone a 600 Hz one.
    let rig = rig_with_agent_voice(
        &[("41", tone(1000.0, 3.0))],
        4.0,
        "",
        Some(&tone(600.0, 1.0)),
    );
    let sid = rig.session(&[("A lead", "+442079460741")], json!({"record": true}));
    let rec = rig.ended_call(sid, "+442079460741");
    assert_eq!(rec["outcome"], "answered", "{rec}");
    assert!(rec["amd"].is_null(), "amd is off: {rec}");
    let id = rec["id"].as_i64().expect("id");
    wait_for("the recording", Duration::from_secs(10), || {
        rig.get(&format!("/api/v1/calls/{id}"))["recorded"] == true
    });
    // Without the token: 401.
    let (code, _) = http_request(
        rig.app.http,
        "GET",
        &format!("/api/v1/calls/{id}/recording"),
        None,
        None,
    );
    assert_eq!(code, 401);
    let (code, head, body) = http_bytes(
        rig.app.http,
        "GET",
        &format!("/api/v1/calls/{id}/recording"),
        &rig.app.token,
        "application/json",
        b"",
    );
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: audio/wav"),
        "{head}"
    );
    let path = rig.dir.path().join("rec.wav");
    std::fs::write(&path, &body).expect("write");
    let b = &body;
    assert_eq!(u16::from_le_bytes([b[22], b[23]]), 2, "two channels");
    let (rate, pcm) = read_wav(&path).expect("WAV");
    assert_eq!(rate, 8000);
    // read_wav keeps the first channel; split both here.
    let frames: Vec<(i16, i16)> = b[44..]
        .chunks_exact(4)
        .map(|c| {
            (
                i16::from_le_bytes([c[0], c[1]]),
                i16::from_le_bytes([c[2], c[3]]),
            )
        })
        .collect();
    assert_eq!(pcm.len(), frames.len());
    let seconds = frames.len() as f64 / 8000.0;
    assert!((3.5..6.0).contains(&seconds), "{seconds:.2} s recorded");
    // The lead's first 3 s (after its first 0.5 s): its tone, not the agent's.
    let lead: Vec<i16> = frames[4000..24000].iter().map(|f| f.0).collect();
    let agent: Vec<i16> = frames[4000..24000].iter().map(|f| f.1).collect();
    // Mean over 100 ms windows: the phone's own packet timing may shift
    // its tone's phase between windows, not within one.
    let mean = |pcm: &[i16], hz: f64| {
        let w: Vec<f64> = pcm.chunks_exact(800).map(|c| purity(8000, c, hz)).collect();
        w.iter().sum::<f64>() / w.len() as f64
    };
    let (l1000, l600) = (mean(&lead, 1000.0), mean(&lead, 600.0));
    let (a600, a1000) = (mean(&agent, 600.0), mean(&agent, 1000.0));
    eprintln!("lead channel: 1000 Hz {l1000:.2}, 600 Hz {l600:.2}; agent channel: 600 Hz {a600:.2}, 1000 Hz {a1000:.2}");
    assert!(
        l1000 > 0.8 && l600 < 0.05,
        "lead channel: {l1000:.2} / {l600:.2}"
    );
    assert!(
        a600 > 0.8 && a1000 < 0.05,
        "agent channel: {a600:.2} / {a1000:.2}"
    );

    // A call that was not recorded: 404.
    rig.pause(sid);
    let sid2 = rig.session(&[("B lead", "+442079460200")], json!({}));
    let rec = rig.ended_call(sid2, "+442079460200");
    assert_eq!(rec["recorded"], false, "{rec}");
    let (code, _, _) = http_bytes(
        rig.app.http,
        "GET",
        &format!("/api/v1/calls/{}/recording", rec["id"]),
        &rig.app.token,
        "application/json",
        b"",
    );
    assert_eq!(code, 404);
}

/// A crash while a voicemail drop waits for the beep: the lead's leg is no
/// longer the agent's, but its journal row stays until it ends, so the
/// restarted server's crash recovery still sends it a BYE (the machine
/// would otherwise hold the line, and the carrier's meter, for a minute).
#[test]
fn a_crash_during_a_voicemail_drop_still_ends_the_carriers_leg() {
    let mut rig = rig(&[("21", greeting("machine-21-beep.ul"))], 60.0, "");
    let drop_id = upload(&rig, &message_tone(2.0));
    let sid = rig.session(
        &[("A machine", "+442079460721")],
        json!({"amd": "drop", "voicemail_drop_id": drop_id}),
    );
    // The outcome is stored when the drop starts; the beep is 9 s in.
    let rec = rig.ended_call(sid, "+442079460721");
    assert_eq!(rec["outcome"], "voicemail_dropped", "{rec}");
    let ended = |rig: &Rig| {
        carrier_events(&rig.events)
            .iter()
            .any(|e| e["event"] == "ended" && e["number"] == "442079460721")
    };
    assert!(!ended(&rig), "the call ended before the crash");
    // Let the journal writer's batch reach the disk, then crash.
    std::thread::sleep(Duration::from_millis(300));
    rig.app.kill_and_restart();
    let restarted = std::time::Instant::now();
    wait_for(
        "the BYE to the dropped machine after the restart",
        Duration::from_secs(5),
        || ended(&rig),
    );
    eprintln!(
        "crash during a drop: the carrier's leg ended {:?} after the restart",
        restarted.elapsed()
    );
}
