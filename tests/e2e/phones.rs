//! The common phones register against the **default** configuration (no
//! `digest_algorithms` override: what a new user gets) and take a call:
//! baresip, PJSIP and SIPp each as an agent phone, a manual call (R17) to a
//! PJSIP carrier that answers at once, the lead bridged, the call recorded
//! as answered (SPEC §5 interop).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::app::{free_port, http_request, repo, require_program, spawn_app_with, App, AppOptions};
use crate::peers::{agent_status, pj_agent, wait_for, Baresip, Carrier};

/// The carrier answers numbers ending in 0200 at once (pj_carrier.py).
const ANSWERS_AT_ONCE: &str = "+442079460200";

fn post(app: &App, path: &str, body: &str) -> (u16, Value) {
    let (code, text) = http_request(app.http, "POST", path, Some(&app.token), Some(body));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn record(app: &App, id: i64) -> Value {
    let (code, text) = app.http_get(&format!("/api/v1/calls/{id}"));
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).expect("call JSON")
}

/// Places a manual call for `agent`, waits until the lead is bridged, hangs
/// up and checks the record: answered, 200.
fn call_is_answered(app: &App, agent: &str) {
    let (code, body) = post(
        app,
        "/api/v1/calls",
        &format!(r#"{{"agent": "{agent}", "number": "{ANSWERS_AT_ONCE}"}}"#),
    );
    assert!(
        code == 201 || code == 202,
        "POST /api/v1/calls for {agent}: {code} {body}\nlog:\n{}",
        app.log_text()
    );
    let id = body["id"].as_i64().expect("call id");
    wait_for(
        &format!("{agent}'s lead to be answered"),
        Duration::from_secs(15),
        || !record(app, id)["answered_at"].is_null(),
    );
    let (code, body) = post(app, &format!("/api/v1/calls/{id}/hangup"), "");
    assert_eq!(code, 200, "{body}");
    let mut rec = Value::Null;
    wait_for("the call's outcome", Duration::from_secs(10), || {
        rec = record(app, id);
        !rec["outcome"].is_null()
    });
    assert_eq!(rec["outcome"], "answered", "{agent}: {rec}");
    assert_eq!(rec["sip_status"], 200, "{agent}: {rec}");
    assert_eq!(rec["agent"], agent, "{rec}");
}

fn sipp_command(app: &App, scenario: &str, port: u16, trace: &std::path::Path) -> Command {
    let mut cmd = Command::new(require_program("sipp", "sip-tester"));
    cmd.current_dir(trace)
        .arg("-sf")
        .arg(repo().join("fixtures/sipp").join(scenario))
        .args(["-s", "carol", "-au", "carol", "-ap", "carol-secret"])
        .args(["-m", "1", "-t", "u1", "-i", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .args(["-timeout", "20s", "-timeout_error", "-trace_err"])
        .arg(app.sip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn wait_child(child: &mut Child, what: &str, app: &App) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                assert!(
                    status.success(),
                    "{what} failed: {status:?}\nlog:\n{}",
                    app.log_text()
                );
                return;
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                panic!("{what} did not finish\nlog:\n{}", app.log_text());
            }
        }
    }
}

#[test]
fn baresip_pjsip_and_sipp_register_on_defaults_and_take_a_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    // Nothing in [server]: the digest offer is the shipped default.
    let app = spawn_app_with(AppOptions {
        extra_toml: format!(
            "[[agent]]\nusername = \"carol\"\npassword = \"carol-secret\"\n\n{}",
            carrier.trunk_toml()
        ),
        ..AppOptions::default()
    });

    // baresip 1.0 as alice: it refuses any 401 that offers SHA-256.
    let mut baresip = Baresip::start();
    baresip.command(
        "uanew",
        &format!(
            "<sip:alice@{};transport=udp>;auth_pass=alice-secret;regint=600;answermode=auto;audio_codecs=PCMU",
            app.sip
        ),
    );
    let ev = baresip
        .wait_event(&["REGISTER_OK", "REGISTER_FAIL"], Duration::from_secs(10))
        .expect("a registration event from baresip");
    assert!(
        ev.contains("REGISTER_OK"),
        "baresip on defaults: {ev}\nlog:\n{}",
        app.log_text()
    );
    call_is_answered(&app, "alice");
    let ev = baresip.wait_event(&["CALL_ESTABLISHED"], Duration::from_secs(5));
    assert!(ev.is_some(), "baresip never reported the call established");

    // PJSIP as bob.
    let (_pjsip, status) = pj_agent(&app, "bob", "bob-secret", dir.path());
    call_is_answered(&app, "bob");
    // pj_agent.py rewrites its status every 100 ms.
    wait_for(
        "PJSIP to report the call it answered",
        Duration::from_secs(3),
        || agent_status(&status)["calls"].as_i64().unwrap_or(0) >= 1,
    );

    // SIPp as carol: one process registers the port, a second one on the
    // same port answers powerdial's INVITE there.
    let port = free_port();
    let mut reg = sipp_command(&app, "register_auth.xml", port, dir.path())
        .spawn()
        .expect("run sipp");
    wait_child(&mut reg, "SIPp's REGISTER on the default config", &app);
    let mut answer = sipp_command(&app, "agent_answer.xml", port, dir.path())
        .spawn()
        .expect("run sipp");
    // Let SIPp bind its port before powerdial sends the INVITE.
    std::thread::sleep(Duration::from_millis(300));
    call_is_answered(&app, "carol");
    wait_child(&mut answer, "SIPp answering the agent leg", &app);
}

/// When the lead answers, the agent's phone shows whom it is talking to: a
/// page-mode MESSAGE (RFC 3428) "Connected: NAME NUMBER", as PJSIP-based
/// phones display it. (baresip 1.0 answers it but shows messages only in
/// its interactive UI modules, so it cannot be read in a test.)
#[test]
fn the_phone_is_told_the_leads_name_and_number_on_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(AppOptions {
        extra_toml: "[[trunk]]\nname = \"demo\"\nuri = \"demo:\"\ncaller_id = \"+14155550100\"\n"
            .into(),
        ..AppOptions::default()
    });
    let (_phone, status) = pj_agent(&app, "alice", "alice-secret", dir.path());
    let (code, lead) = post(
        &app,
        "/api/v1/leads",
        r#"{"name": "Ada Lovelace", "contacts": [{"name": "Ada", "phones": ["+14155550101"]}]}"#,
    );
    assert_eq!(code, 201, "{lead}");
    let (code, body) = post(
        &app,
        "/api/v1/calls",
        &format!(
            r#"{{"agent": "alice", "number": "+14155550101", "lead_id": {}}}"#,
            lead["id"]
        ),
    );
    assert!(code == 201 || code == 202, "{code} {body}");
    wait_for(
        "the phone to be told whom it talks to",
        Duration::from_secs(15),
        || {
            agent_status(&status)["messages"]
                .as_array()
                .is_some_and(|m| {
                    m.iter()
                        .any(|t| t == "Connected: Ada Lovelace +14155550101")
                })
        },
    );
}

/// The lead's name and number reach baresip (a desk phone stand-in) as a
/// MESSAGE when the lead answers (SPEC §1; RFC 3428): baresip's UI shows
/// `sip:powerdial@…: "Connected: NAME NUMBER"`, read here from its UDP
/// console.
#[test]
fn baresip_is_told_the_leads_name_and_number_on_answer() {
    let app = spawn_app_with(AppOptions {
        extra_toml: "[[trunk]]\nname = \"demo\"\nuri = \"demo:\"\ncaller_id = \"+14155550100\"\n"
            .into(),
        ..AppOptions::default()
    });
    let mut baresip = Baresip::start();
    baresip.command(
        "uanew",
        &format!(
            "<sip:alice@{};transport=udp>;auth_pass=alice-secret;regint=600;answermode=auto;audio_codecs=PCMU",
            app.sip
        ),
    );
    let ev = baresip
        .wait_event(&["REGISTER_OK", "REGISTER_FAIL"], Duration::from_secs(10))
        .expect("a registration event from baresip");
    assert!(ev.contains("REGISTER_OK"), "{ev}");
    let ui = baresip.ui();
    let (code, lead) = post(
        &app,
        "/api/v1/leads",
        r#"{"name": "Grace Hopper", "contacts": [{"name": "Grace", "phones": ["+14155550102"]}]}"#,
    );
    assert_eq!(code, 201, "{lead}");
    let (code, body) = post(
        &app,
        "/api/v1/calls",
        &format!(
            r#"{{"agent": "alice", "number": "+14155550102", "lead_id": {}}}"#,
            lead["id"]
        ),
    );
    assert!(code == 201 || code == 202, "{code} {body}");
    let ev = baresip.wait_event(&["CALL_ESTABLISHED"], Duration::from_secs(10));
    assert!(ev.is_some(), "baresip never reported the call established");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut shown = String::new();
    let mut buf = [0u8; 8192];
    while !shown.contains("\"Connected: Grace Hopper +14155550102\"") {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .unwrap_or_else(|| panic!("baresip never showed the lead; its UI showed:\n{shown}"));
        ui.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        if let Ok(n) = ui.recv(&mut buf) {
            shown.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(shown.contains("sip:powerdial@"), "{shown}");
}
