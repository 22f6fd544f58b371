//! Caller ID rules end to end (SPEC §4): with a `dialer.caller_id_pool`,
//! the scripted PJSIP carrier sees each lead called from the pool number
//! of the lead's NANP area code, or of its country; a lead with no local
//! number in the pool is called from its session's caller ID. The call
//! record names the caller ID shown. A call back to the session's caller
//! ID is a callback.

use std::time::Duration;

use serde_json::Value;

use crate::app::{http_request, spawn_app_with, App, AppOptions};
use crate::peers::{carrier_events, pj_agent, wait_for, Carrier};

fn post(app: &App, path: &str, body: &str) -> (u16, Value) {
    let (code, text) = http_request(app.http, "POST", path, Some(&app.token), Some(body));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(app: &App, path: &str) -> Value {
    let (code, text) = app.http_get(path);
    assert_eq!(code, 200, "GET {path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

/// The From user of the carrier's INVITE for `number` (E.164).
fn from_seen(carrier: &Carrier, number: &str) -> Option<String> {
    carrier_events(&carrier.events)
        .iter()
        .filter(|e| e["event"] == "invite" && e["number"] == number[1..])
        .find_map(|e| e["from"].as_str().map(str::to_string))
}

/// A manual call by alice to `number`; waits for its outcome.
fn manual_call(app: &App, number: &str) -> Value {
    let (code, body) = post(
        app,
        "/api/v1/calls",
        &format!(r#"{{"agent": "alice", "number": "{number}"}}"#),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_i64().expect("call id");
    let mut record = Value::Null;
    wait_for(
        &format!("the end of the call to {number}"),
        Duration::from_secs(20),
        || {
            record = get(app, &format!("/api/v1/calls/{id}"));
            !record["outcome"].is_null() && !record["ended_at"].is_null()
        },
    );
    record
}

#[test]
fn leads_are_called_from_a_local_number_of_the_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), Some(0.3));
    let app = spawn_app_with(AppOptions {
        extra_toml: format!(
            r#"[dialer]
wrap_up_idle = 0.2
caller_id_pool = ["+12125550100", "+14155550100", "+442079460100"]

[[trunk]]
name = "carrier"
uri = "sip:127.0.0.1:{}"
caller_id = "+15550000000"
allow = ['\+1\d{{10}}', '\+44\d+', '\+61\d+']
"#,
            carrier.port
        ),
        ..AppOptions::default()
    });
    let _alice = pj_agent(&app, "alice", "alice-secret", dir.path());

    // San Francisco: the 415 number. London: the UK number.
    for (lead, local) in [
        ("+14155550200", "+14155550100"),
        ("+442079510200", "+442079460100"),
    ] {
        let record = manual_call(&app, lead);
        assert_eq!(record["outcome"], "answered", "{record}");
        assert_eq!(record["caller_id"], local, "{record}");
        assert_eq!(from_seen(&carrier, lead).as_deref(), Some(local));
    }

    // Sydney: no Australian number in the pool, so the session's own.
    let lead = "+61290000200";
    let (code, body) = post(
        &app,
        "/api/v1/leads",
        &format!(r#"{{"name": "Sydney", "contacts": [{{"name": "x", "phones": ["{lead}"]}}]}}"#),
    );
    assert_eq!(code, 201, "{body}");
    let lead_id = body["id"].as_i64().expect("lead id");
    let (code, view) = post(
        &app,
        "/api/v1/smart-views",
        r#"{"name": "sydney", "query": "name:Sydney"}"#,
    );
    assert_eq!(code, 201, "{view}");
    let (code, bad) = post(
        &app,
        "/api/v1/sessions",
        &format!(
            r#"{{"smart_view_id": {}, "caller_id": "0255550100"}}"#,
            view["id"]
        ),
    );
    assert_eq!(code, 400, "a caller ID that is not E.164: {bad}");
    let (code, session) = post(
        &app,
        "/api/v1/sessions",
        &format!(
            r#"{{"smart_view_id": {}, "caller_id": "+61255550100", "calling_hours": {{"start": "00:00", "end": "24:00"}}}}"#,
            view["id"]
        ),
    );
    assert_eq!(code, 201, "{session}");
    assert_eq!(session["caller_id"], "+61255550100", "{session}");
    let sid = session["id"].as_i64().expect("session id");
    let (code, body) = post(
        &app,
        &format!("/api/v1/sessions/{sid}/agents"),
        r#"{"agent": "alice"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let mut call = Value::Null;
    wait_for(
        "the session's call to the Sydney lead",
        Duration::from_secs(20),
        || {
            call = get(&app, &format!("/api/v1/calls?lead_id={lead_id}"))["data"][0].clone();
            !call["outcome"].is_null()
        },
    );
    assert_eq!(call["outcome"], "answered", "{call}");
    assert_eq!(call["caller_id"], "+61255550100", "{call}");
    assert_eq!(from_seen(&carrier, lead).as_deref(), Some("+61255550100"));

    // The lead calls the session's caller ID back: a callback to alice.
    wait_for("alice idle", Duration::from_secs(10), || {
        get(&app, &format!("/api/v1/sessions/{sid}"))["agents"][0]["state"] == "ready"
    });
    let cmd = format!("{}.cmd", carrier.events.display());
    std::fs::write(
        &cmd,
        format!("call sip:+61255550100@{} {lead} 0.5\n", app.sip),
    )
    .expect("command file");
    let mut inbound = Vec::new();
    wait_for("the callback's record", Duration::from_secs(20), || {
        inbound = get(&app, &format!("/api/v1/calls?lead_id={lead_id}"))["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["outcome"] == "inbound")
            .cloned()
            .collect();
        !inbound.is_empty()
    });
    assert_eq!(inbound[0]["agent"], "alice", "{inbound:?}");
    assert_eq!(inbound[0]["session_id"], sid, "{inbound:?}");
}
