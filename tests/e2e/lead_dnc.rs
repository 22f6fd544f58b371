//! A lead marked "do not call" end to end (SPEC §4): honoured like the
//! do-not-call list — in a Smart View it ends `restricted` and the scripted
//! carrier never sees an INVITE for it, a manual call for it is refused
//! with 403, and the audit says why.

use std::time::Duration;

use serde_json::Value;

use crate::app::{http_request, spawn_app_with, App, AppOptions};
use crate::peers::{pj_agent, wait_for, Carrier};

fn post(app: &App, path: &str, body: &str) -> (u16, Value) {
    let (code, text) = http_request(app.http, "POST", path, Some(&app.token), Some(body));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(app: &App, path: &str) -> Value {
    let (code, text) = app.http_get(path);
    assert_eq!(code, 200, "GET {path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

#[test]
fn a_lead_marked_do_not_call_never_reaches_the_carrier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), Some(1.0));
    let app = spawn_app_with(AppOptions {
        extra_toml: format!("[dialer]\nwrap_up_idle = 0.2\n\n{}", carrier.trunk_toml()),
        ..AppOptions::default()
    });
    let _phone = pj_agent(&app, "alice", "alice-secret", dir.path());
    // The carrier answers numbers ending in 0200 at once.
    let numbers = ["+442079510200", "+442079520200"];
    let mut leads = Vec::new();
    for (i, n) in numbers.iter().enumerate() {
        let (code, body) = post(
            &app,
            "/api/v1/leads",
            &format!(
                r#"{{"name": "Lead {i}", "created": "2026-01-0{}T00:00:00Z", "do_not_call": {},
                    "contacts": [{{"name": "x", "phones": ["{n}"]}}]}}"#,
                i + 1,
                i == 0
            ),
        );
        assert_eq!(code, 201, "{body}");
        leads.push(body["id"].as_i64().expect("lead id"));
    }

    // A manual call for the marked lead: 403 before anything rings.
    let (code, body) = post(
        &app,
        "/api/v1/calls",
        &format!(
            r#"{{"agent": "alice", "number": "{}", "lead_id": {}}}"#,
            numbers[0], leads[0]
        ),
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["code"], "do_not_call", "{body}");

    let (code, view) = post(
        &app,
        "/api/v1/smart-views",
        r#"{"name": "all", "query": "sort:created"}"#,
    );
    assert_eq!(code, 201, "{view}");
    let (code, session) = post(
        &app,
        "/api/v1/sessions",
        &format!(r#"{{"smart_view_id": {}}}"#, view["id"]),
    );
    assert_eq!(code, 201, "{session}");
    let sid = session["id"].as_i64().expect("session id");
    let (code, body) = post(
        &app,
        &format!("/api/v1/sessions/{sid}/agents"),
        r#"{"agent": "alice"}"#,
    );
    assert_eq!(code, 200, "{body}");

    let mut calls = Value::Null;
    wait_for("an outcome for both leads", Duration::from_secs(30), || {
        calls = get(&app, &format!("/api/v1/calls?session_id={sid}"));
        let done: Vec<i64> = calls["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| !c["outcome"].is_null())
            .filter_map(|c| c["lead_id"].as_i64())
            .collect();
        leads.iter().all(|l| done.contains(l))
    });
    let outcome = |lead: i64| {
        calls["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["lead_id"] == lead)
            .map(|c| c["outcome"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(outcome(leads[0]), "restricted", "{calls}");
    assert_eq!(outcome(leads[1]), "answered", "{calls}");
    let invited = carrier.invited();
    assert!(
        invited.iter().any(|n| n.contains(&numbers[1][1..])),
        "{invited:?}"
    );
    assert!(
        invited.iter().all(|n| !n.contains(&numbers[0][1..])),
        "the marked lead reached the carrier: {invited:?}"
    );

    let mut audit = Value::Null;
    wait_for("the audit entries", Duration::from_secs(5), || {
        audit = get(&app, "/api/v1/audit?reason=lead_do_not_call");
        audit["data"].as_array().map(Vec::len) == Some(2)
    });
    assert_eq!(audit["data"][0]["action"], "refused", "{audit}");
    assert_eq!(audit["data"][1]["action"], "restricted", "{audit}");
    assert_eq!(audit["data"][1]["session_id"], sid, "{audit}");
    assert_eq!(audit["data"][1]["lead_id"], leads[0], "{audit}");
}
