//! Lead calls that fail below SIP: a carrier whose media goes silent after
//! the answer (`dialer.rtp_timeout`) and a trunk nobody listens on (a
//! transport error, RFC 3261 §8.1.3.1 / §17.1.4 → R10 `temporary_error`).
//! A real `powerdial serve`, a PJSIP agent phone (tests/peers/pj_agent.py)
//! and, for the silent carrier, SIPp (fixtures/sipp/carrier_silent.xml).
//! Calls are placed with the manual call API (R17) and followed through
//! `GET /api/v1/calls/{id}`, whether the POST answers 201 or 202.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::{
    free_port, http_request, pjsua_python, repo, require_program, spawn_app_with, App, AppOptions,
};
use crate::peers::{agent_status, wait_for};

/// Alice's PJSIP phone (tests/peers/pj_agent.py), killed when dropped; its
/// process can be stopped and continued to silence it.
struct Phone(Child);

impl Phone {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An app with `extra_toml` and alice's PJSIP phone registered.
fn app_with_agent(extra_toml: String, status: &Path) -> (App, Phone) {
    let app = spawn_app_with(AppOptions {
        extra_toml,
        ..AppOptions::default()
    });
    let child = Command::new(pjsua_python())
        .arg(repo().join("tests/peers/pj_agent.py"))
        .arg(app.sip.to_string())
        .args(["alice", "alice-secret"])
        .arg(status)
        .arg("60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pj_agent.py");
    let phone = Phone(child);
    wait_for("the agent's registration", Duration::from_secs(15), || {
        agent_status(status)["reg"] == 200
    });
    (app, phone)
}

/// `POST /api/v1/calls`: the record id (201 when the call waits for the
/// agent's phone, 202 when it answers at once).
fn place_call(app: &App, number: &str) -> i64 {
    let (code, text) = http_request(
        app.http,
        "POST",
        "/api/v1/calls",
        Some(&app.token),
        Some(&format!(r#"{{"agent": "alice", "number": "{number}"}}"#)),
    );
    assert!(
        code == 201 || code == 202,
        "POST /api/v1/calls {number}: {code} {text}"
    );
    let body: Value = serde_json::from_str(&text).expect("call JSON");
    body["id"].as_i64().expect("call id")
}

fn record(app: &App, id: i64) -> Value {
    let (code, text) = app.http_get(&format!("/api/v1/calls/{id}"));
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).expect("call JSON")
}

/// Polls the record until `done` holds for it.
fn poll_record(app: &App, id: i64, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let rec = record(app, id);
        if done(&rec) {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "call {id} not done within {within:?}: {rec}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The log without its ANSI colour codes.
fn without_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// A record's timestamp field, in seconds since the epoch.
fn time_of(rec: &Value, field: &str) -> f64 {
    let text = rec[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {rec}"));
    let t = chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339 time");
    t.timestamp_micros() as f64 / 1e6
}

/// `dialer.rtp_timeout = 1.5`: SIPp answers and sends no RTP; powerdial
/// BYEs it 1.5 s after the answer, the record stays `answered` and gets
/// `ended_at`. The agent's phone keeps sending, so its leg stays up — until
/// the phone goes silent too (its process stopped): then its leg is hung
/// up as if the phone had hung up.
#[test]
fn a_lead_silent_after_the_answer_is_hung_up_after_rtp_timeout() {
    let sipp = require_program("sipp", "sip-tester");
    let dir = tempfile::tempdir().expect("tempdir");
    let status = dir.path().join("agent.json");
    let carrier_port = free_port();
    let carrier = Command::new(sipp)
        .current_dir(dir.path())
        .arg("-sf")
        .arg(repo().join("fixtures/sipp/carrier_silent.xml"))
        .args(["-i", "127.0.0.1", "-p", &carrier_port.to_string()])
        .args(["-m", "1", "-timeout", "30s", "-timeout_error"])
        .args(["-trace_err", "-trace_msg"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sipp");
    let (app, phone) = app_with_agent(
        format!(
            r#"[dialer]
rtp_timeout = 1.5

[[trunk]]
name = "carrier"
uri = "sip:127.0.0.1:{carrier_port}"
caller_id = "+442079460999"
allow = ['\+44\d+']
"#
        ),
        &status,
    );

    let id = place_call(&app, "+442079460001");
    // SIPp exits 0 only if the BYE came (its <recv BYE timeout=10 s>).
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
        "SIPp never got a BYE: {}{traces}\n---- powerdial log ----\n{}",
        String::from_utf8_lossy(&out.stderr),
        app.log_text()
    );

    let rec = poll_record(&app, id, Duration::from_secs(5), |r| {
        !r["outcome"].is_null() && !r["ended_at"].is_null()
    });
    assert_eq!(rec["outcome"], "answered", "{rec}");
    assert_eq!(rec["sip_status"], 200, "{rec}");
    let silent = time_of(&rec, "ended_at") - time_of(&rec, "answered_at");
    eprintln!("answer → BYE: {silent:.3} s (rtp_timeout 1.5 s)");
    assert!(
        (1.45..=2.0).contains(&silent),
        "BYE {silent:.3} s after the answer, rtp_timeout is 1.5 s: {rec}"
    );
    let log = without_ansi(&app.log_text());
    assert!(
        log.lines()
            .any(|l| l.contains("call ended") && l.contains("reason=rtp_timeout")),
        "the call's end and its reason are logged"
    );
    // The phone kept sending: its leg is still up (not paused by mistake).
    assert!(
        !log.contains("no RTP from the phone"),
        "the agent leg must not time out"
    );
    assert_eq!(agent_status(&status)["state"], "confirmed");

    // The phone falls silent (stopped for 2.5 s): powerdial BYEs it after
    // 1.5 s; once running again the phone takes the retransmitted BYE.
    phone.signal("-STOP");
    std::thread::sleep(Duration::from_millis(2500));
    phone.signal("-CONT");
    wait_for("the BYE at the phone", Duration::from_secs(10), || {
        agent_status(&status)["state"] == "disconnected"
    });
    let log = without_ansi(&app.log_text());
    assert!(
        log.lines()
            .any(|l| l.contains("agent leg ended") && l.contains("reason=rtp_timeout")),
        "the agent leg ends for rtp_timeout"
    );
}

/// A trunk with nothing listening on its port: the INVITE's client
/// transaction learns of the transport error — a refused TCP connection,
/// or the ICMP port unreachable a UDP datagram brings back (RFC 3261
/// §18.4) — and the call ends `temporary_error` (R10) at once, not at
/// Timer B (32 s).
fn refused_trunk_is_a_temporary_error_at_once(transport: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = dir.path().join("agent.json");
    // Free now, and nothing will listen on it.
    let closed_port = free_port();
    let (app, _agent) = app_with_agent(
        format!(
            r#"[[trunk]]
name = "carrier"
uri = "sip:127.0.0.1:{closed_port}{transport}"
caller_id = "+442079460999"
allow = ['\+44\d+']
"#
        ),
        &status,
    );

    let id = place_call(&app, "+442079460001");
    let rec = poll_record(&app, id, Duration::from_secs(5), |r| {
        !r["outcome"].is_null()
    });
    assert_eq!(rec["outcome"], "temporary_error", "{rec}");
    assert!(rec["answered_at"].is_null(), "{rec}");
    assert!(rec["sip_status"].is_null(), "{rec}");
    let took = time_of(&rec, "ended_at") - time_of(&rec, "started_at");
    eprintln!("{transport:?}: INVITE → temporary_error in {took:.3} s");
    assert!(
        took < 1.0,
        "a refused trunk must end the call at once, not at Timer B: {took:.3} s {rec}"
    );
}

#[test]
fn a_refused_tcp_trunk_is_a_temporary_error_at_once() {
    refused_trunk_is_a_temporary_error_at_once(";transport=tcp");
}

#[test]
fn an_unreachable_udp_trunk_is_a_temporary_error_at_once() {
    refused_trunk_is_a_temporary_error_at_once("");
}
