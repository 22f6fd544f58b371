//! The browser as the agent's phone (SPEC §4 `POST /api/v1/agents/{agent}/webrtc`):
//! headless Chromium (`tests/browser/phone.mjs`) with a fake microphone
//! that speaks `fixtures/speech/agent-hello.wav` signs alice in with her
//! token, turns "Use this browser as my phone" on (ICE-lite, DTLS-SRTP,
//! PCMU against a real `powerdial serve`) and joins a session; the scripted
//! PJSIP carrier answers the lead's call, plays
//! `fixtures/speech/lead-hello.wav` and records what it hears.
//!
//! Checked here: the carrier heard the browser's speech — not silence, and
//! its energy over time (20 ms frames) matches the agent's file better
//! than the lead's; and (in the script) the browser heard the lead
//! (`getStats()` inbound-rtp packetsReceived rising, audioLevel above
//! zero), the microphone meter moved, Mute muted, the phone hung up, and
//! a refused microphone and a network with no UDP path (ICE checks to a
//! dead port) were said so in words. Also the WHIP-style API's
//! refusals: a non-SDP body (415), another agent's token (403), an
//! unknown phone's DELETE (404).
//!
//! Needs node, Debian's chromium, playwright-core and the PJSIP venv, like
//! the console test.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::app::{http_request, repo, spawn_app_with, AppOptions};
use crate::console::{browser, shots_dir};
use crate::peers::{carrier_events, spawn_py_env, wait_for};

/// The carrier hangs the lead up this long after answering.
const HOLD_S: f64 = 6.0;
/// How long the script samples the browser's receive statistics.
const LISTEN_S: f64 = 7.0;
/// The lead's number: …0200, answered at once.
const NUMBER: &str = "+442079410200";

/// `POST path` with `Content-Type: ctype` (the app helper sends JSON only).
fn post_typed(addr: SocketAddr, path: &str, token: &str, ctype: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write http");
    let mut out = String::new();
    s.read_to_string(&mut out).ok();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// 16-bit PCM samples (first channel) and the sample rate of a WAV file.
/// A data chunk whose size was never written (0 or past the end) runs to
/// the end of the file.
fn read_wav(path: &Path) -> (Vec<i16>, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 44 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let (mut rate, mut channels, mut bits) = (0u32, 1usize, 16u16);
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = at + 8;
        if id == b"fmt " {
            channels = usize::from(u16::from_le_bytes([bytes[body + 2], bytes[body + 3]]));
            rate = u32::from_le_bytes(bytes[body + 4..body + 8].try_into().unwrap());
            bits = u16::from_le_bytes([bytes[body + 14], bytes[body + 15]]);
        } else if id == b"data" {
            assert_eq!(bits, 16, "{}: not 16-bit PCM", path.display());
            let end = if size == 0 || body + size > bytes.len() {
                bytes.len()
            } else {
                body + size
            };
            let samples = bytes[body..end]
                .chunks_exact(2 * channels)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return (samples, rate);
        }
        at = body + size + (size & 1);
    }
    panic!("{}: no data chunk", path.display());
}

/// Energy per 20 ms frame in dB relative to full scale, floored at
/// [`ENVELOPE_FLOOR_DB`]: how deep a pause reads (digital silence in the
/// file, the codecs' noise on the call) says nothing about which speech it
/// is, and left unfloored the pauses' depth outweighs the syllables'
/// shape in the correlation (any two-sentence file then matches well).
fn envelope(samples: &[i16], rate: u32) -> Vec<f64> {
    let frame = (rate / 50) as usize;
    samples
        .chunks_exact(frame)
        .map(|f| {
            let ms = f
                .iter()
                .map(|&s| (f64::from(s) / 32768.0).powi(2))
                .sum::<f64>()
                / frame as f64;
            (10.0 * (ms + 1e-9).log10()).max(ENVELOPE_FLOOR_DB)
        })
        .collect()
}

/// Quieter than any syllable of the fixtures' speech, louder than a pause.
const ENVELOPE_FLOOR_DB: f64 = -50.0;

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va == 0.0 || vb == 0.0 {
        return 0.0;
    }
    cov / (va * vb).sqrt()
}

/// The best correlation of `heard` with the looped `source` envelope over
/// every lag (Chromium loops its fake microphone file from wherever it was
/// when the call was bridged).
fn best_match(heard: &[f64], source: &[f64]) -> f64 {
    (0..source.len())
        .map(|lag| {
            let looped: Vec<f64> = (0..heard.len())
                .map(|i| source[(i + lag) % source.len()])
                .collect();
            pearson(heard, &looped)
        })
        .fold(f64::MIN, f64::max)
}

#[test]
fn browser_is_the_agents_phone_in_chromium() {
    let Some(browser) = browser("browser_is_the_agents_phone_in_chromium") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("carrier.jsonl");
    let recordings = dir.path().join("heard");
    std::fs::create_dir_all(&recordings).expect("mkdir");
    let agent_speech = repo().join("fixtures/speech/agent-hello.wav");
    let lead_speech = repo().join("fixtures/speech/lead-hello.wav");
    let carrier_port = crate::app::free_port();
    let _carrier = spawn_py_env(
        "pj_carrier.py",
        &[
            carrier_port.to_string(),
            events.display().to_string(),
            "120".into(),
            HOLD_S.to_string(),
        ],
        &[
            ("POWERDIAL_CARRIER_PLAY", &lead_speech),
            ("POWERDIAL_CARRIER_RECORD", &recordings),
        ],
    );
    wait_for("the carrier", Duration::from_secs(15), || {
        carrier_events(&events)
            .iter()
            .any(|e| e["event"] == "ready")
    });
    let app = spawn_app_with(AppOptions {
        extra_toml: format!(
            r#"[[trunk]]
name = "carrier"
uri = "sip:127.0.0.1:{carrier_port}"
caller_id = "+442079460999"
allow = ['\+44\d+']
"#
        ),
        ..AppOptions::default()
    });
    let post = |path: &str, body: Value| app.post_ok(path, &body);
    post(
        "/api/v1/leads",
        json!([{"name": "Ada Lovelace", "contacts": [{"name": "Ada", "phones": [NUMBER]}]}]),
    );
    let view = post(
        "/api/v1/smart-views",
        json!({"name": "Browser phone", "query": "sort:name"}),
    );
    let session = post("/api/v1/sessions", json!({"smart_view_id": view["id"]}));
    let sid = session["id"].as_i64().expect("session id");
    let alice = post("/api/v1/agents/alice/tokens", json!({}))["token"]
        .as_str()
        .expect("alice's token")
        .to_string();
    let bob = post("/api/v1/agents/bob/tokens", json!({}))["token"]
        .as_str()
        .expect("bob's token")
        .to_string();

    // The API's refusals (RFC 9725 §4.2: the body is application/sdp).
    let phone = "/api/v1/agents/alice/webrtc";
    let (code, text) = post_typed(app.http, phone, &alice, "application/json", "{}");
    assert_eq!(code, 415, "a JSON body: {text}");
    let (code, text) = post_typed(app.http, phone, &bob, "application/sdp", "v=0\r\n");
    assert_eq!(code, 403, "bob's token for alice's phone: {text}");
    let (code, text) = post_typed(
        app.http,
        phone,
        &alice,
        "application/sdp",
        "v=0\r\nnot sdp\r\n",
    );
    assert_eq!(code, 422, "an unusable offer: {text}");
    let (code, text) = http_request(
        app.http,
        "DELETE",
        "/api/v1/agents/alice/webrtc/999",
        Some(&alice),
        None,
    );
    assert_eq!(code, 404, "an unknown phone: {text}");

    let shots = shots_dir();
    let input = json!({
        "url": format!("http://{}/", app.http),
        "agent_token": alice,
        "session_id": sid,
        "agent": "alice",
        "chromium": browser.chromium,
        "playwright": browser.modules,
        "fake_audio": agent_speech,
        "shots_dir": shots,
        "listen_s": LISTEN_S,
    });
    let mut child = Command::new(&browser.node)
        .arg(repo().join("tests/browser/phone.mjs"))
        .arg(input.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let deadline = Instant::now() + Duration::from_secs(120);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("node output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "the browser script printed no result\nstdout: {stdout}\nstderr: {stderr}\nlog: {}",
                app.log_text()
            )
        });
    let pretty = serde_json::to_string_pretty(&result).unwrap_or_default();
    let _ = std::fs::write(shots.join("phone-result.json"), &pretty);
    assert_eq!(
        result["ok"],
        true,
        "the browser phone failed in Chromium (screenshots in {}):\n{pretty}\nstderr: {stderr}\nlog: {}",
        shots.display(),
        app.log_text()
    );

    // What the carrier (the lead) heard: the browser's speech.
    let digits = NUMBER.trim_start_matches('+');
    wait_for("the lead's call to end", Duration::from_secs(20), || {
        carrier_events(&events)
            .iter()
            .any(|e| e["event"] == "ended" && e["number"] == digits)
    });
    let (heard, rate) = read_wav(&recordings.join(format!("{digits}.wav")));
    let heard = envelope(&heard, rate);
    // The first half second may be the bridge settling.
    let heard = heard.get(25..).unwrap_or_default();
    assert!(
        heard.len() > 150,
        "the carrier recorded {} frames (expected about {HOLD_S} s)",
        heard.len()
    );
    let loudest = heard.iter().copied().fold(f64::MIN, f64::max);
    assert!(
        loudest > -35.0,
        "the carrier heard silence (loudest 20 ms frame {loudest:.1} dBFS)"
    );
    let (agent, agent_rate) = read_wav(&agent_speech);
    let (lead, lead_rate) = read_wav(&lead_speech);
    let vs_agent = best_match(heard, &envelope(&agent, agent_rate));
    let vs_lead = best_match(heard, &envelope(&lead, lead_rate));
    eprintln!(
        "browser phone: carrier heard {} frames, loudest {loudest:.1} dBFS; envelope correlation with the agent's speech {vs_agent:.2}, with the lead's {vs_lead:.2}",
        heard.len()
    );
    assert!(
        vs_agent > 0.6 && vs_agent > vs_lead + 0.1,
        "the carrier's audio does not follow the browser's speech: correlation {vs_agent:.2} (agent file) vs {vs_lead:.2} (another speech file)"
    );
    // The call record says answered.
    let (code, text) = app.http_get(&format!("/api/v1/calls?session_id={sid}"));
    assert_eq!(code, 200, "{text}");
    let calls: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(calls["data"][0]["outcome"], "answered", "{calls}");
}
