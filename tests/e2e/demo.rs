//! The built-in demo trunk (`[[trunk]] uri = "demo:"`): with one softphone
//! and no carrier account a new user sees leads ring, answer and talk, be
//! busy, or fail — chosen by the number's last digit.

use std::time::Duration;

use serde_json::Value;

use crate::app::{http_request, spawn_app_with, App, AppOptions};
use crate::peers::{agent_status, pj_agent, wait_for};

fn call(app: &App, number: &str) -> i64 {
    let (code, text) = http_request(
        app.http,
        "POST",
        "/api/v1/calls",
        Some(&app.token),
        Some(&format!(r#"{{"agent": "alice", "number": "{number}"}}"#)),
    );
    assert!(code == 201 || code == 202, "{code} {text}");
    serde_json::from_str::<Value>(&text).expect("JSON")["id"]
        .as_i64()
        .expect("id")
}

fn record(app: &App, id: i64) -> Value {
    let (_, text) = app.http_get(&format!("/api/v1/calls/{id}"));
    serde_json::from_str(&text).expect("JSON")
}

fn outcome(app: &App, id: i64) -> Value {
    let mut rec = Value::Null;
    wait_for("the call's outcome", Duration::from_secs(15), || {
        rec = record(app, id);
        !rec["outcome"].is_null()
    });
    rec
}

#[test]
fn the_demo_trunk_answers_talks_is_busy_and_fails_by_the_last_digit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(AppOptions {
        extra_toml: "[[trunk]]\nname = \"demo\"\nuri = \"demo:\"\ncaller_id = \"+14155550100\"\n"
            .into(),
        ..AppOptions::default()
    });
    let (_phone, status) = pj_agent(&app, "alice", "alice-secret", dir.path());

    // Ends in 1: rings, answers, talks.
    let id = call(&app, "+14155550101");
    wait_for("the demo lead to answer", Duration::from_secs(10), || {
        !record(&app, id)["answered_at"].is_null()
    });
    let before = agent_status(&status)["rx_pkts"].as_i64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(1000));
    let after = agent_status(&status)["rx_pkts"].as_i64().unwrap_or(0);
    assert!(
        after >= before + 30,
        "the lead's voice reaches the phone: {before} → {after}"
    );
    let (code, body) = http_request(
        app.http,
        "POST",
        &format!("/api/v1/calls/{id}/hangup"),
        Some(&app.token),
        Some(""),
    );
    assert_eq!(code, 200, "{body}");
    let rec = outcome(&app, id);
    assert_eq!(rec["outcome"], "answered", "{rec}");
    let ring = rec["ring_ms"].as_i64().unwrap_or(0);
    assert!((2500..5000).contains(&ring), "rang {ring} ms");

    // Ends in 6: busy.
    let rec = outcome(&app, call(&app, "+14155550106"));
    assert_eq!(rec["outcome"], "busy", "{rec}");
    assert_eq!(rec["sip_status"], 486, "{rec}");

    // Ends in 9: the carrier is unavailable.
    let rec = outcome(&app, call(&app, "+14155550109"));
    assert_eq!(rec["outcome"], "temporary_error", "{rec}");
    assert_eq!(rec["sip_status"], 503, "{rec}");
}
