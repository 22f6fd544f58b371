//! Calling hours end to end (SPEC §4): with the default 08:00–21:00 window,
//! a lead whose local time is night is never dialed from a Smart View (the
//! scripted carrier sees no INVITE for it) while a lead in its daytime is;
//! a manual call to the night lead is refused with 409
//! `outside_calling_hours` unless the admin overrides, and an agent token
//! may not override. Deterministic at any hour: each lead's `timezone`
//! field is a fixed-offset zone chosen from the current UTC time.

use std::time::Duration;

use chrono::Timelike;
use serde_json::Value;

use crate::app::{http_request, spawn_app_with, App, AppOptions};
use crate::peers::{pj_agent, wait_for, Carrier};

fn post(app: &App, token: &str, path: &str, body: &str) -> (u16, Value) {
    let (code, text) = http_request(app.http, "POST", path, Some(token), Some(body));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(app: &App, path: &str) -> Value {
    let (code, text) = app.http_get(path);
    assert_eq!(code, 200, "GET {path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

/// The fixed-offset zone (`Etc/GMT±N`, no DST) whose local hour is `hour`
/// now.
fn zone_at_local_hour(hour: i64) -> String {
    let utc = i64::from(chrono::Utc::now().hour());
    let mut offset = hour - utc;
    if offset > 14 {
        offset -= 24;
    }
    if offset < -12 {
        offset += 24;
    }
    // IANA's Etc zones count the other way round: Etc/GMT-5 is UTC+5.
    match offset {
        0 => "Etc/GMT".into(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

#[test]
fn a_lead_at_night_is_never_dialed_one_in_daytime_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Answered calls are hung up by the carrier 1 s after the answer.
    let carrier = Carrier::start(dir.path(), Some(1.0));
    let app = spawn_app_with(AppOptions {
        // The default window, written out (the harness opens the whole day
        // for tests that do not name calling hours).
        extra_toml: format!(
            "[dialer]\nwrap_up_idle = 0.2\ncalling_hours = {{ start = \"08:00\", end = \"21:00\" }}\n\n{}",
            carrier.trunk_toml()
        ),
        ..AppOptions::default()
    });
    let admin = app.token.clone();
    let _phone = pj_agent(&app, "alice", "alice-secret", dir.path());
    let (code, body) = post(
        &app,
        &admin,
        "/api/v1/custom-fields",
        r#"{"name": "timezone", "type": "text"}"#,
    );
    assert_eq!(code, 201, "{body}");

    // The night lead first in the view, then the daytime one.
    let night = zone_at_local_hour(2);
    let day = zone_at_local_hour(14);
    // The carrier answers numbers ending in 0200 at once.
    let numbers = ["+442079410200", "+442079420200"];
    let mut leads = Vec::new();
    for (i, (n, zone)) in numbers.iter().zip([&night, &day]).enumerate() {
        let (code, body) = post(
            &app,
            &admin,
            "/api/v1/leads",
            &format!(
                r#"{{"name": "Lead {i}", "created": "2026-01-0{}T00:00:00Z",
                    "custom": {{"timezone": "{zone}"}},
                    "contacts": [{{"name": "x", "phones": ["{n}"]}}]}}"#,
                i + 1
            ),
        );
        assert_eq!(code, 201, "{body}");
        leads.push(body["id"].as_i64().expect("lead id"));
    }

    // A manual call to the night lead: refused before anything rings; an
    // agent token may not override.
    let (code, body) = post(
        &app,
        &admin,
        "/api/v1/calls",
        &format!(
            r#"{{"agent": "alice", "number": "{}", "lead_id": {}}}"#,
            numbers[0], leads[0]
        ),
    );
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "outside_calling_hours", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(&format!("08:00 {night}")), "{body}");
    let (code, body) = post(&app, &admin, "/api/v1/agents/alice/tokens", "{}");
    assert_eq!(code, 201, "{body}");
    let alice = body["token"].as_str().expect("token").to_string();
    let (code, body) = post(
        &app,
        &alice,
        "/api/v1/calls",
        &format!(
            r#"{{"agent": "alice", "number": "{}", "lead_id": {}, "override_calling_hours": true}}"#,
            numbers[0], leads[0]
        ),
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["code"], "override_not_allowed", "{body}");

    // A session over both leads.
    let (code, view) = post(
        &app,
        &admin,
        "/api/v1/smart-views",
        r#"{"name": "all", "query": "sort:created"}"#,
    );
    assert_eq!(code, 201, "{view}");
    let (code, session) = post(
        &app,
        &admin,
        "/api/v1/sessions",
        &format!(r#"{{"smart_view_id": {}}}"#, view["id"]),
    );
    assert_eq!(code, 201, "{session}");
    let sid = session["id"].as_i64().expect("session id");
    let (code, body) = post(
        &app,
        &admin,
        &format!("/api/v1/sessions/{sid}/agents"),
        r#"{"agent": "alice"}"#,
    );
    assert_eq!(code, 200, "{body}");

    wait_for(
        "the daytime lead's outcome",
        Duration::from_secs(30),
        || {
            let calls = get(&app, &format!("/api/v1/calls?session_id={sid}"));
            calls["data"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["lead_id"] == leads[1] && !c["outcome"].is_null())
        },
    );
    // Wrap-up is over and the dialer went on: the night lead is held.
    let mut queue = Value::Null;
    wait_for("the night lead held", Duration::from_secs(10), || {
        queue = get(&app, &format!("/api/v1/sessions/{sid}/queue?explain=1"));
        queue["data"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["lead_id"] == leads[0] && e["state"] == "held")
    });
    let entry = queue["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["lead_id"] == leads[0])
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        entry["explain"],
        format!("calling hours: opens 08:00 {night}"),
        "{entry}"
    );
    let calls = get(&app, &format!("/api/v1/calls?session_id={sid}"));
    assert!(
        calls["data"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|c| c["lead_id"] != leads[0]),
        "no call record for the night lead: {calls}"
    );
    let invited = carrier.invited();
    assert!(
        invited.iter().any(|n| n.contains(&numbers[1][1..])),
        "the daytime lead was dialed: {invited:?}"
    );
    assert!(
        invited.iter().all(|n| !n.contains(&numbers[0][1..])),
        "the night lead reached the carrier: {invited:?}"
    );

    // The admin may call anyway, by hand, once alice is paused.
    let (code, body) = post(
        &app,
        &admin,
        &format!("/api/v1/sessions/{sid}/agents/alice/pause"),
        "{}",
    );
    assert!((200..300).contains(&code), "{code} {body}");
    let (code, body) = post(
        &app,
        &admin,
        "/api/v1/calls",
        &format!(
            r#"{{"agent": "alice", "number": "{}", "lead_id": {}, "override_calling_hours": true}}"#,
            numbers[0], leads[0]
        ),
    );
    assert_eq!(code, 202, "{body}");
    wait_for("the override's INVITE", Duration::from_secs(15), || {
        carrier
            .invited()
            .iter()
            .any(|n| n.contains(&numbers[0][1..]))
    });

    // The audit: the manual refusal, the session's hold, the override.
    let mut audit = Value::Null;
    wait_for("the audit entries", Duration::from_secs(5), || {
        audit = get(&app, &format!("/api/v1/audit?lead_id={}", leads[0]));
        audit["data"].as_array().map(Vec::len) == Some(3)
    });
    let actions: Vec<(&str, &str)> = audit["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["action"].as_str()?, e["reason"].as_str()?)))
        .collect();
    assert_eq!(
        actions,
        [
            ("refused", "calling_hours"),
            ("held", "calling_hours"),
            ("overridden", "calling_hours")
        ],
        "{audit}"
    );
    assert_eq!(audit["data"][1]["session_id"], sid, "{audit}");
}
