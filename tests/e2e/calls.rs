//! Calls end to end (SPEC §1, R8–R12, R17): a PJSIP carrier trunk (tests/peers/pj_carrier.py)
//! choosing its answer by the dialed number and an auto-answering PJSIP
//! agent phone (tests/peers/pj_agent.py), both real pjsua2 processes on
//! 127.0.0.1, against a real `powerdial serve`. Calls are placed with the
//! manual call API (R17: `202 Accepted` at once, SPEC §4) and their
//! records followed to the end.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peers::{agent_status, carrier_events, spawn_py, wait_for, Peer};
use serde_json::Value;

use crate::app::{
    free_port, http_request, http_request_with_headers, repo, require_program, spawn_app_with, App,
    AppOptions,
};

/// When the carrier logged `event` for `number` (seconds).
fn event_time(events: &[Value], event: &str, number: &str) -> Option<f64> {
    events
        .iter()
        .find(|e| e["event"] == event && e["number"].as_str() == Some(number))
        .and_then(|e| e["t"].as_f64())
}

/// Strips ANSI colour codes from a log line.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    Some(t.timestamp_micros() as f64 / 1e6)
}

/// INVITE → CANCEL of call record `id`, from the "SIP out" lines powerdial
/// logs as it hands each request to its socket.
fn wire_ring_time(log: &str, id: i64) -> Option<f64> {
    let lines: Vec<String> = log.lines().map(plain).collect();
    let dialing = lines
        .iter()
        .find(|l| l.contains("dialing") && l.contains(&format!(" call={id} ")))?;
    let sip_call_id = dialing
        .split("sip_call_id=")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let sent = |method: &str| {
        lines
            .iter()
            .find(|l| {
                l.contains("SIP out")
                    && l.contains(&format!("method={method} "))
                    && l.contains(&format!("sip_call_id={sip_call_id}"))
            })
            .and_then(|l| log_time(l))
    };
    Some(sent("CANCEL")? - sent("INVITE")?)
}

struct Rig {
    app: App,
    _carrier: Peer,
    _agent: Peer,
    _dir: tempfile::TempDir,
    events: PathBuf,
    status: PathBuf,
}

/// How a [`Rig`] differs from the default one.
#[derive(Default)]
struct RigOptions {
    /// Seconds the agent's phone rings (180) before it answers.
    answer_delay: f64,
    /// Lines added to the `[server]` table.
    server_toml: String,
}

fn rig() -> Rig {
    rig_with(RigOptions::default())
}

fn rig_with(opts: RigOptions) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("carrier.jsonl");
    let status = dir.path().join("agent.json");
    let carrier_port = free_port();
    let carrier = spawn_py(
        "pj_carrier.py",
        &[
            carrier_port.to_string(),
            events.display().to_string(),
            "90".into(),
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
ring_timeout = 2
allow_short_ring_timeout = true

[[trunk]]
name = "carrier"
uri = "sip:127.0.0.1:{carrier_port}"
caller_id = "+442079460999"
allow = ['\+44\d+']
"#
        ),
        server_toml: opts.server_toml,
        ..AppOptions::default()
    });
    let agent = spawn_py(
        "pj_agent.py",
        &[
            app.sip.to_string(),
            "alice".into(),
            "alice-secret".into(),
            status.display().to_string(),
            "90".into(),
            opts.answer_delay.to_string(),
        ],
    );
    wait_for("the agent's registration", Duration::from_secs(15), || {
        agent_status(&status)["reg"] == 200
    });
    Rig {
        app,
        _carrier: carrier,
        _agent: agent,
        _dir: dir,
        events,
        status,
    }
}

impl Rig {
    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let (code, text) = http_request(
            self.app.http,
            "POST",
            path,
            Some(&self.app.token),
            Some(body),
        );
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn call(&self, number: &str) -> i64 {
        let (code, body) = self.post(
            "/api/v1/calls",
            &format!(r#"{{"agent": "alice", "number": "{number}"}}"#),
        );
        assert_eq!(code, 202, "POST /api/v1/calls {number}: {body}");
        let state = body["state"].as_str().unwrap_or("");
        assert!(
            // The call goes on while the answer is built: any state.
            ["calling_agent", "dialing", "ringing", "answered", "ended"].contains(&state),
            "{number}: {body}"
        );
        body["id"].as_i64().expect("call id")
    }

    fn record(&self, id: i64) -> Value {
        let (code, text) = self.app.http_get(&format!("/api/v1/calls/{id}"));
        assert_eq!(code, 200, "{text}");
        serde_json::from_str(&text).expect("call JSON")
    }

    fn ended(&self, id: i64) -> Value {
        let mut rec = Value::Null;
        wait_for("the call's outcome", Duration::from_secs(15), || {
            rec = self.record(id);
            !rec["outcome"].is_null()
        });
        rec
    }
}

#[test]
fn outcomes_ring_timeout_and_media_with_pjsip_carrier_and_agent() {
    let rig = rig();

    // Answered: the lead answers after 1 s; media flows both ways.
    let id = rig.call("+442079460001");
    wait_for("the answer", Duration::from_secs(10), || {
        !rig.record(id)["answered_at"].is_null()
    });
    let before = agent_status(&rig.status)["rx_pkts"].as_i64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(1500));
    let after = agent_status(&rig.status)["rx_pkts"].as_i64().unwrap_or(0);
    assert!(
        after >= before + 40,
        "the agent should keep receiving RTP once bridged: {before} → {after}"
    );
    assert!(
        rig.app
            .log_text()
            .contains("bridge: first lead packet to the agent"),
        "no lead RTP reached the agent"
    );
    let (code, body) = rig.post(&format!("/api/v1/calls/{id}/hangup"), "");
    assert_eq!(code, 200, "{body}");
    let rec = rig.ended(id);
    assert_eq!(rec["outcome"], "answered", "{rec}");
    assert_eq!(rec["sip_status"], 200, "{rec}");
    wait_for("the carrier's end of call", Duration::from_secs(5), || {
        event_time(&carrier_events(&rig.events), "ended", "442079460001").is_some()
    });
    let events = carrier_events(&rig.events);
    let ended = events
        .iter()
        .find(|e| e["event"] == "ended" && e["number"] == "442079460001")
        .expect("ended");
    assert!(
        ended["rx_pkts"].as_i64().unwrap_or(0) > 40,
        "the lead should receive the agent's RTP: {ended}"
    );

    // Final responses → outcomes (R10–R12).
    for (number, outcome, status) in [
        ("+442079460486", "busy", 486),
        ("+442079460503", "temporary_error", 503),
        ("+442079460403", "restricted", 403),
    ] {
        let id = rig.call(number);
        let rec = rig.ended(id);
        assert_eq!(rec["outcome"], outcome, "{number}: {rec}");
        assert_eq!(rec["sip_status"], status, "{number}: {rec}");
    }

    // R8: ring timeout 2 s, CANCEL 2.00–2.05 s after the INVITE, with 180
    // and with 183 early media.
    for number in ["+442079460180", "+442079460183"] {
        let id = rig.call(number);
        let rec = rig.ended(id);
        assert_eq!(rec["outcome"], "no_answer", "{number}: {rec}");
        let digits = &number[1..];
        wait_for("the CANCEL at the carrier", Duration::from_secs(5), || {
            event_time(&carrier_events(&rig.events), "cancel", digits).is_some()
        });
        let events = carrier_events(&rig.events);
        let invite = event_time(&events, "invite", digits).expect("invite seen");
        let cancel = event_time(&events, "cancel", digits).expect("cancel seen");
        let ring = cancel - invite;
        let wire = wire_ring_time(&rig.app.log_text(), id).expect("INVITE and CANCEL in the log");
        eprintln!(
            "{number}: INVITE → CANCEL {wire:.4} s on our socket, {ring:.4} s at the carrier"
        );
        assert!(
            (2.0..=2.05).contains(&wire),
            "{number}: CANCEL left {wire:.4} s after the INVITE"
        );
        // The carrier's clock reads the INVITE after PJSIP has parsed it
        // and built its answer, so its interval is a little shorter.
        assert!(
            (1.98..=2.05).contains(&ring),
            "{number}: the carrier saw the CANCEL {ring:.4} s after the INVITE"
        );
        let ring_ms = rec["ring_ms"].as_i64().unwrap_or(0);
        assert!((2000..2050).contains(&ring_ms), "{rec}");
    }

    // R11: not allowed by the trunk → restricted, never on the wire.
    let id = rig.call("+33123456789");
    let rec = rig.ended(id);
    assert_eq!(rec["outcome"], "restricted", "{rec}");
    assert!(rec["sip_status"].is_null(), "{rec}");
    assert!(event_time(&carrier_events(&rig.events), "invite", "33123456789").is_none());

    // Unknown agent 404; a known agent without a phone 409.
    let (code, _) = rig.post(
        "/api/v1/calls",
        r#"{"agent": "mallory", "number": "+442079460001"}"#,
    );
    assert_eq!(code, 404);
    let (code, body) = rig.post(
        "/api/v1/calls",
        r#"{"agent": "bob", "number": "+442079460001"}"#,
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("register the phone"),
        "{body}"
    );
    // Not a phone number: 400 at once, saying what is wrong with it.
    let (code, body) = rig.post(
        "/api/v1/calls",
        r#"{"agent": "alice", "number": "+15551234567"}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("area code 555 is not in service"),
        "{body}"
    );
}

/// Reads `GET /api/v1/events` on a thread until `stop` is set; returns
/// what arrived.
pub(crate) fn capture_events(app: &App, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<String> {
    let addr = app.http;
    let token = app.token.clone();
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect http");
        s.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let req = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write http");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// SPEC §4: `POST /api/v1/calls` answers `202 Accepted` at once while the
/// agent's phone rings (3 s here), and `GET /api/v1/calls/{id}` and the
/// event stream follow the call: `calling_agent`, then the lead's
/// progress, then `answered`. A call hung up while the phone rings ends
/// `not_dialed`: the lead is never dialed.
#[test]
fn manual_call_is_accepted_at_once_and_followed_to_the_answer() {
    let rig = rig_with(RigOptions {
        answer_delay: 3.0,
        ..RigOptions::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let events = capture_events(&rig.app, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let place = || {
        let sent = Instant::now();
        let (code, body) = rig.post(
            "/api/v1/calls",
            r#"{"agent": "alice", "number": "+442079460001"}"#,
        );
        (code, body, sent.elapsed())
    };

    // Hung up while the phone rings: never dialed.
    let (code, body, took) = place();
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["state"], "calling_agent", "{body}");
    let first = body["id"].as_i64().expect("call id");
    wait_for("the phone to ring", Duration::from_secs(5), || {
        agent_status(&rig.status)["state"] == "ringing"
    });
    let (code, body) = rig.post(&format!("/api/v1/calls/{first}/hangup"), "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["state"], "not_dialed", "{body}");
    assert!(
        !body["ended_at"].is_null() && body["outcome"].is_null(),
        "{body}"
    );
    eprintln!("first POST /api/v1/calls answered in {took:?}");
    wait_for("the phone to stop ringing", Duration::from_secs(5), || {
        agent_status(&rig.status)["state"] == "disconnected"
    });

    // At once again, though the cancelled leg still finishes its
    // signalling (Timer D); answered after 3 s of ringing.
    let (code, body, took) = place();
    eprintln!("POST /api/v1/calls answered in {took:?}");
    assert_eq!(code, 202, "{body}");
    assert!(
        took < Duration::from_millis(200),
        "POST /api/v1/calls took {took:?}: it must not wait for the phone"
    );
    assert_eq!(body["state"], "calling_agent", "{body}");
    assert!(
        body["outcome"].is_null() && body["ended_at"].is_null(),
        "{body}"
    );
    let id = body["id"].as_i64().expect("call id");

    let mut states: Vec<String> = Vec::new();
    wait_for("the answer", Duration::from_secs(20), || {
        let rec = rig.record(id);
        let state = rec["state"].as_str().unwrap_or("").to_string();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        state == "answered"
    });
    eprintln!("states: {states:?}");
    assert_eq!(states[0], "calling_agent", "{states:?}");
    assert_eq!(agent_status(&rig.status)["calls"].as_i64(), Some(1));
    // Only the second call reached the carrier.
    let invites = carrier_events(&rig.events)
        .iter()
        .filter(|e| e["event"] == "invite" && e["number"] == "442079460001")
        .count();
    assert_eq!(invites, 1, "the hung-up call must never be dialed");
    let rec = rig.record(id);
    assert!(!rec["answered_at"].is_null(), "{rec}");

    let (code, body) = rig.post(&format!("/api/v1/calls/{id}/hangup"), "");
    assert_eq!(code, 200, "{body}");
    let rec = rig.ended(id);
    assert_eq!(rec["outcome"], "answered", "{rec}");
    assert_eq!(rec["state"], "ended", "{rec}");

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let stream = events.join().expect("events thread");
    for (call, state) in [
        (first, "calling_agent"),
        (first, "not_dialed"),
        (id, "calling_agent"),
        (id, "answered"),
        (id, "ended"),
    ] {
        let needle = format!(r#""call_id":{call},"agent":"alice","state":"{state}""#);
        assert!(
            stream.contains(&needle),
            "no {needle} in the events:\n{stream}"
        );
    }
}

/// Four UDP ports `base..base+4` (two RTP/RTCP pairs) free on 127.0.0.1.
fn free_rtp_range() -> u16 {
    crate::app::free_rtp_range(4)
}

/// SPEC §4 `server.rtp_ports`: with a range of two pairs, alice's call
/// takes both (her phone's leg and the lead's); bob's call is refused at
/// once with 503, a message naming the range and the key, and
/// `Retry-After`, and the log says why.
#[test]
fn exhausted_rtp_port_range_is_a_503_naming_it() {
    let base = free_rtp_range();
    let range = format!("{base}-{}", base + 3);
    let rig = rig_with(RigOptions {
        server_toml: format!("rtp_ports = \"{range}\""),
        ..RigOptions::default()
    });
    let bob_status = rig._dir.path().join("bob.json");
    let _bob = spawn_py(
        "pj_agent.py",
        &[
            rig.app.sip.to_string(),
            "bob".into(),
            "bob-secret".into(),
            bob_status.display().to_string(),
            "60".into(),
        ],
    );
    wait_for("bob's registration", Duration::from_secs(15), || {
        agent_status(&bob_status)["reg"] == 200
    });

    let id = rig.call("+442079460001");
    wait_for("alice's answer", Duration::from_secs(10), || {
        rig.record(id)["state"] == "answered"
    });

    let (code, head, text) = http_request_with_headers(
        rig.app.http,
        "POST",
        "/api/v1/calls",
        Some(&rig.app.token),
        Some(r#"{"agent": "bob", "number": "+442079460002"}"#),
    );
    assert_eq!(code, 503, "{head}\n{text}");
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["error"]["code"], "rtp_ports_exhausted", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("server.rtp_ports"), "{message}");
    assert!(message.contains(&range), "{message}");
    assert!(
        head.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("retry-after: ")),
        "{head}"
    );
    assert_eq!(
        agent_status(&bob_status)["calls"].as_i64(),
        Some(0),
        "bob's phone must not ring for a refused call"
    );
    let log = rig.app.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("RTP port range exhausted") && l.contains(&range)),
        "the log must say why: {log}"
    );
    assert!(!log.contains("internal error"), "{log}");

    let (code, body) = rig.post(&format!("/api/v1/calls/{id}/hangup"), "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(rig.ended(id)["outcome"], "answered");
}

/// A digest parameter's value from a `Digest k=v, k="v"` header.
fn digest_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(',').find_map(|part| {
        let part = part.trim().trim_start_matches("Digest").trim();
        let (k, v) = part.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"'))
    })
}

fn md5_hex(data: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data.as_bytes()))
}

/// The carrier (SIPp, fixtures/sipp/carrier_407.xml) challenges
/// the INVITE with 407 + `qop="auth"`; powerdial answers with the trunk's
/// credentials (RFC 3261 §22.2, RFC 2617 §3.2.2), the carrier answers the
/// authenticated INVITE and hangs up after 1 s: outcome `answered`.
#[test]
fn trunk_407_challenge_answered_with_digest_against_sipp() {
    let sipp = require_program("sipp", "sip-tester");
    let dir = tempfile::tempdir().expect("tempdir");
    let status = dir.path().join("agent.json");
    let carrier_port = free_port();
    let carrier = Command::new(sipp)
        .current_dir(dir.path())
        .arg("-sf")
        .arg(repo().join("fixtures/sipp/carrier_407.xml"))
        .args(["-i", "127.0.0.1", "-p", &carrier_port.to_string()])
        .args(["-m", "1", "-timeout", "30s", "-timeout_error"])
        .args(["-trace_err", "-trace_msg", "-trace_logs"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sipp");
    let app = spawn_app_with(AppOptions {
        extra_toml: format!(
            r#"[[trunk]]
name = "carrier"
uri = "sip:127.0.0.1:{carrier_port}"
caller_id = "+442079460999"
allow = ['\+44\d+']
username = "trunkuser"
password = "trunk-secret"
"#
        ),
        ..AppOptions::default()
    });
    let _agent = spawn_py(
        "pj_agent.py",
        &[
            app.sip.to_string(),
            "alice".into(),
            "alice-secret".into(),
            status.display().to_string(),
            "60".into(),
        ],
    );
    wait_for("the agent's registration", Duration::from_secs(15), || {
        agent_status(&status)["reg"] == 200
    });

    let (code, text) = http_request(
        app.http,
        "POST",
        "/api/v1/calls",
        Some(&app.token),
        Some(r#"{"agent": "alice", "number": "+442079460407"}"#),
    );
    assert_eq!(code, 202, "POST /api/v1/calls: {text}");
    let body: Value = serde_json::from_str(&text).expect("JSON");
    let id = body["id"].as_i64().expect("call id");

    // SIPp's own -timeout (30 s) bounds this wait.
    let out = carrier.wait_with_output().expect("sipp output");
    let traces: String = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| {
            format!(
                "\n== {}\n{}",
                e.path().display(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipp failed: {}{traces}\n---- powerdial log ----\n{}",
        String::from_utf8_lossy(&out.stderr),
        app.log_text()
    );

    let mut rec = Value::Null;
    wait_for("the call's outcome", Duration::from_secs(10), || {
        let (code, text) = app.http_get(&format!("/api/v1/calls/{id}"));
        assert_eq!(code, 200, "{text}");
        rec = serde_json::from_str(&text).expect("call JSON");
        !rec["outcome"].is_null()
    });
    assert_eq!(rec["outcome"], "answered", "{rec}");
    assert_eq!(rec["sip_status"], 200, "{rec}");
    assert!(!rec["answered_at"].is_null(), "{rec}");

    // The digest response itself, recomputed with the trunk's password
    // (SIPp's <verifyauth> cannot read Proxy-Authorization).
    let header = traces
        .lines()
        .find_map(|l| l.split("PROXY-AUTHORIZATION:").nth(1))
        .expect("the Proxy-Authorization SIPp logged")
        .trim();
    let p = |name| digest_param(header, name).unwrap_or_else(|| panic!("{name} in {header}"));
    assert_eq!(p("username"), "trunkuser", "{header}");
    assert_eq!(p("realm"), "carrier", "{header}");
    assert_eq!(p("qop"), "auth", "{header}");
    let ha1 = md5_hex("trunkuser:carrier:trunk-secret");
    let ha2 = md5_hex(&format!("INVITE:{}", p("uri")));
    let expected = md5_hex(&format!(
        "{ha1}:{}:{}:{}:auth:{ha2}",
        p("nonce"),
        p("nc"),
        p("cnonce")
    ));
    assert_eq!(p("response"), expected, "digest response in {header}");
}
