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
        let body = &b[pos + 8..(pos + 8 + len).min(b.len())];
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
    pub status: PathBuf,
}

/// The carrier plays `play` (tail `07NN` → greeting file) and hangs up
/// answered calls after `hold` seconds.
pub(crate) fn rig(play: &[(&str, Vec<i16>)], hold: f64, extra_toml: &str) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
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
        status,
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
        &[("A person", "+442079460701"), ("B machine", "+442079460721")],
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
    assert!((300..2000).contains(&ms), "human decided after {ms} ms: {human}");

    let machine = rig.ended_call(sid, "+442079460721");
    assert_eq!(machine["amd"], "machine", "{machine}");
    assert_eq!(machine["outcome"], "voicemail", "{machine}");
    let ms = machine["amd_ms"].as_i64().expect("amd_ms");
    assert!((1000..4000).contains(&ms), "machine decided after {ms} ms");
    // Hung up by powerdial at the verdict, not by the carrier's 6 s hold.
    let talk = rfc3339_s(&machine["ended_at"]) - rfc3339_s(&machine["answered_at"]);
    assert!(talk < 4.5, "the machine call lasted {talk:.2} s: {machine}");
    eprintln!("human decided in {} ms, machine in {ms} ms", human["amd_ms"]);
}
