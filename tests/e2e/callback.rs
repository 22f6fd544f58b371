//! Leads calling back end to end (SPEC §1 "Leads calling back"): the
//! scripted PJSIP carrier (tests/peers/pj_carrier.py) places a call from a
//! lead's number to the trunk's caller ID. With two PJSIP agents in a
//! session, both idle on their nailed-up legs, the agent who last called
//! that lead gets the call (it is answered at once and bridged); the call
//! record has outcome `inbound` and links the lead. The lead's number is
//! on the do-not-call list by then: calling in is still answered. A
//! number that is no lead's reaches a free agent too (no lead linked).
//! With no agent free, the caller gets the fallback, 486 Busy Here.

use std::time::Duration;

use serde_json::Value;

use crate::app::{http_request, spawn_app_with, App, AppOptions};
use crate::peers::{agent_status, carrier_events, pj_agent, spawn_py, wait_for, Carrier};

/// The trunk's caller ID in [`Carrier::trunk_toml`].
const CALLER_ID: &str = "+442079460999";
/// The lead: the carrier answers numbers ending in 0200 at once.
const LEAD: &str = "+442079510200";

/// alice joins a session over an empty view, is paused through the API,
/// and powerdial restarts: she is back in the session, still paused (a
/// paused agent's phone is not called back), her phone registered but no
/// agent leg up. Returns the session's id.
fn paused_in_a_session_after_a_restart(app: &mut App) -> i64 {
    let (code, view) = post(
        app,
        "/api/v1/smart-views",
        r#"{"name": "nobody", "query": "name:nobody"}"#,
    );
    assert_eq!(code, 201, "{view}");
    let (code, session) = post(
        app,
        "/api/v1/sessions",
        &format!(r#"{{"smart_view_id": {}}}"#, view["id"]),
    );
    assert_eq!(code, 201, "{session}");
    let sid = session["id"].as_i64().expect("session id");
    let (code, body) = post(
        app,
        &format!("/api/v1/sessions/{sid}/agents"),
        r#"{"agent": "alice"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let state =
        |app: &App| get(app, &format!("/api/v1/sessions/{sid}"))["agents"][0]["state"].clone();
    wait_for("alice idle", Duration::from_secs(20), || {
        state(app) == "ready"
    });
    pause_alice(app, sid);
    app.restart();
    wait_for(
        "alice paused after the restart",
        Duration::from_secs(20),
        || state(app) == "paused",
    );
    sid
}

/// Pauses alice in session `sid` through the API and waits for it.
fn pause_alice(app: &App, sid: i64) {
    let (code, body) = post(
        app,
        &format!("/api/v1/sessions/{sid}/agents/alice/pause"),
        "",
    );
    assert!(code == 200 || code == 204, "{code} {body}");
    wait_for("alice paused", Duration::from_secs(20), || {
        get(app, &format!("/api/v1/sessions/{sid}"))["agents"][0]["state"] == "paused"
    });
}

fn post(app: &App, path: &str, body: &str) -> (u16, Value) {
    let (code, text) = http_request(app.http, "POST", path, Some(&app.token), Some(body));
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(app: &App, path: &str) -> Value {
    let (code, text) = app.http_get(path);
    assert_eq!(code, 200, "GET {path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

fn calls(app: &App, query: &str) -> Vec<Value> {
    get(app, &format!("/api/v1/calls?{query}"))["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Asks the carrier to call our caller ID from `from`, hanging up `hold`
/// seconds after the answer.
fn call_in(carrier: &Carrier, app: &App, from: &str, hold: f64) {
    use std::io::Write;
    let path = format!("{}.cmd", carrier.events.display());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("command file");
    writeln!(f, "call sip:{CALLER_ID}@{} {from} {hold}", app.sip).expect("write command");
}

/// The carrier's states of its call from `from`.
fn out_states(carrier: &Carrier, from: &str) -> Vec<(String, i64)> {
    carrier_events(&carrier.events)
        .iter()
        .filter(|e| e["event"] == "out_state" && e["from"] == from)
        .filter_map(|e| Some((e["state"].as_str()?.to_string(), e["status"].as_i64()?)))
        .collect()
}

#[test]
fn a_lead_calling_back_reaches_the_agent_who_last_called_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The carrier hangs up answered calls after 0.5 s.
    let carrier = Carrier::start(dir.path(), Some(0.5));
    let app = spawn_app_with(AppOptions {
        extra_toml: format!("[dialer]\nwrap_up_idle = 0.2\n\n{}", carrier.trunk_toml()),
        ..AppOptions::default()
    });
    let _alice = pj_agent(&app, "alice", "alice-secret", dir.path());
    let _bob = pj_agent(&app, "bob", "bob-secret", dir.path());
    let (code, lead) = post(
        &app,
        "/api/v1/leads",
        &format!(
            r#"{{"name": "Ada Callback", "contacts": [{{"name": "Ada", "phones": ["{LEAD}"]}}]}}"#
        ),
    );
    assert_eq!(code, 201, "{lead}");
    let lead_id = lead["id"].as_i64().expect("lead id");
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
    // Bob joins first and calls the lead; alice (first by name, so the one
    // a routing blind to the history would pick) joins once it is done.
    let (code, body) = post(
        &app,
        &format!("/api/v1/sessions/{sid}/agents"),
        r#"{"agent": "bob"}"#,
    );
    assert_eq!(code, 200, "{body}");
    wait_for(
        "bob's answered call to the lead",
        Duration::from_secs(30),
        || {
            calls(&app, &format!("lead_id={lead_id}"))
                .iter()
                .any(|c| c["outcome"] == "answered" && c["agent"] == "bob")
        },
    );
    let (code, body) = post(
        &app,
        &format!("/api/v1/sessions/{sid}/agents"),
        r#"{"agent": "alice"}"#,
    );
    assert_eq!(code, 200, "{body}");
    wait_for(
        "both agents idle on their legs",
        Duration::from_secs(20),
        || {
            let s = get(&app, &format!("/api/v1/sessions/{sid}"));
            s["agents"]
                .as_array()
                .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["state"] == "ready"))
        },
    );
    // The lead asked not to be called: calling in still reaches us.
    let (code, body) = post(&app, "/api/v1/dnc", &format!(r#"{{"number": "{LEAD}"}}"#));
    assert!(code == 201 || code == 200, "{code} {body}");

    call_in(&carrier, &app, LEAD, 2.0);
    // While it lasts, the session shows bob connected to the lead, as the
    // console does (its agent_state events carry the same fields).
    let agent = |name: &str| {
        get(&app, &format!("/api/v1/sessions/{sid}"))["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["agent"] == name).cloned())
            .unwrap_or(Value::Null)
    };
    wait_for(
        "bob connected to the lead calling back",
        Duration::from_secs(10),
        || {
            let b = agent("bob");
            b["state"] == "connected" && b["lead_id"] == lead_id
        },
    );
    let alice = agent("alice");
    assert_eq!(alice["state"], "ready", "{alice}");
    wait_for(
        "the callback answered and ended",
        Duration::from_secs(20),
        || {
            out_states(&carrier, LEAD)
                .iter()
                .any(|(s, _)| s == "disconnected")
        },
    );
    let states = out_states(&carrier, LEAD);
    assert!(
        states
            .iter()
            .any(|(s, code)| s == "confirmed" && *code == 200),
        "the carrier's call was not answered: {states:?}"
    );
    let mut inbound = Vec::new();
    wait_for("the inbound call record", Duration::from_secs(10), || {
        inbound = calls(&app, &format!("lead_id={lead_id}"))
            .into_iter()
            .filter(|c| c["outcome"] == "inbound")
            .collect();
        !inbound.is_empty()
    });
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    let c = &inbound[0];
    assert_eq!(c["agent"], "bob", "the agent who last called the lead: {c}");
    assert_eq!(c["lead_id"], lead_id, "{c}");
    assert_eq!(c["session_id"], sid, "{c}");
    assert_eq!(c["number"], LEAD, "{c}");
    assert!(!c["answered_at"].is_null(), "{c}");
    assert!(!c["ended_at"].is_null(), "{c}");
    assert!(c["caller_id"].is_null(), "{c}");
    // Then wrap-up and back to ready: the session did not pause bob.
    wait_for(
        "bob ready again after the callback",
        Duration::from_secs(10),
        || agent("bob")["state"] == "ready",
    );

    // A number that is no lead's still reaches a free agent of a session.
    let stranger = "+442079990002";
    call_in(&carrier, &app, stranger, 0.5);
    wait_for(
        "the stranger's call answered and ended",
        Duration::from_secs(20),
        || {
            out_states(&carrier, stranger)
                .iter()
                .any(|(s, _)| s == "disconnected")
        },
    );
    let states = out_states(&carrier, stranger);
    assert!(
        states
            .iter()
            .any(|(s, code)| s == "confirmed" && *code == 200),
        "{states:?}"
    );
    let mut theirs = Vec::new();
    wait_for(
        "the stranger's call record",
        Duration::from_secs(10),
        || {
            theirs = calls(&app, &format!("session_id={sid}"))
                .into_iter()
                .filter(|c| c["number"] == stranger && !c["ended_at"].is_null())
                .collect();
            !theirs.is_empty()
        },
    );
    assert_eq!(theirs[0]["outcome"], "inbound", "{theirs:?}");
    assert!(theirs[0]["lead_id"].is_null(), "{theirs:?}");
    assert!(
        theirs[0]["agent"] == "alice" || theirs[0]["agent"] == "bob",
        "{theirs:?}"
    );
    // No dial reached the carrier for the callback, and none was made
    // while it lasted.
    let invited = carrier.invited();
    assert_eq!(invited.len(), 1, "{invited:?}");
}

#[test]
fn a_callback_no_agent_can_take_gets_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    let app = spawn_app_with(AppOptions {
        extra_toml: carrier.trunk_toml(),
        ..AppOptions::default()
    });
    // A registered phone, but its agent is in no session: not free.
    let _alice = pj_agent(&app, "alice", "alice-secret", dir.path());
    let caller = "+442079990001";
    call_in(&carrier, &app, caller, 1.0);
    wait_for("the fallback", Duration::from_secs(20), || {
        out_states(&carrier, caller)
            .iter()
            .any(|(s, _)| s == "disconnected")
    });
    let states = out_states(&carrier, caller);
    assert_eq!(
        states.last().map(|(_, c)| *c),
        Some(486),
        "486 Busy Here: {states:?}"
    );
    assert!(!states.iter().any(|(s, _)| s == "confirmed"), "{states:?}");
    assert!(calls(&app, "limit=100").is_empty(), "nothing recorded");
}

#[test]
fn a_callback_rings_a_session_agent_whose_phone_is_not_connected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    let mut app = spawn_app_with(AppOptions {
        extra_toml: format!("[dialer]\nwrap_up_idle = 0.2\n\n{}", carrier.trunk_toml()),
        ..AppOptions::default()
    });
    let _alice = pj_agent(&app, "alice", "alice-secret", dir.path());
    let sid = paused_in_a_session_after_a_restart(&mut app);

    let caller = "+442079990003";
    call_in(&carrier, &app, caller, 0.5);
    wait_for(
        "the callback answered and ended",
        Duration::from_secs(30),
        || {
            out_states(&carrier, caller)
                .iter()
                .any(|(s, _)| s == "disconnected")
        },
    );
    let states = out_states(&carrier, caller);
    let early = states
        .iter()
        .position(|(s, code)| s == "early" && *code == 180);
    let confirmed = states
        .iter()
        .position(|(s, code)| s == "confirmed" && *code == 200);
    assert!(
        matches!((early, confirmed), (Some(e), Some(c)) if e < c),
        "180 while the phone rang, then 200: {states:?}"
    );
    let mut record = Vec::new();
    wait_for("the callback's record", Duration::from_secs(10), || {
        record = calls(&app, &format!("session_id={sid}"))
            .into_iter()
            .filter(|c| c["outcome"] == "inbound")
            .collect();
        !record.is_empty()
    });
    assert_eq!(record[0]["agent"], "alice", "{record:?}");
    assert!(!record[0]["answered_at"].is_null(), "{record:?}");
    // Paused before the callback, paused after it.
    wait_for("alice paused again", Duration::from_secs(10), || {
        get(&app, &format!("/api/v1/sessions/{sid}"))["agents"][0]["state"] == "paused"
    });
}

#[test]
fn a_caller_hanging_up_while_the_phone_rings_gets_487_and_the_phone_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    let mut app = spawn_app_with(AppOptions {
        extra_toml: format!("[dialer]\nwrap_up_idle = 0.2\n\n{}", carrier.trunk_toml()),
        ..AppOptions::default()
    });
    // A phone that rings 3 s before it answers.
    let status = dir.path().join("alice.json");
    let _alice = spawn_py(
        "pj_agent.py",
        &[
            app.sip.to_string(),
            "alice".into(),
            "alice-secret".into(),
            status.display().to_string(),
            "90".into(),
            "3".into(),
        ],
    );
    wait_for("alice's registration", Duration::from_secs(15), || {
        agent_status(&status)["reg"] == 200
    });
    let sid = paused_in_a_session_after_a_restart(&mut app);
    let answered_before = agent_status(&status)["calls"].as_i64().unwrap_or(0);

    // The caller gives up 1 s in, while alice's phone still rings.
    let caller = "+442079990004";
    call_in(&carrier, &app, caller, -1.0);
    wait_for("the caller's call ended", Duration::from_secs(20), || {
        out_states(&carrier, caller)
            .iter()
            .any(|(s, _)| s == "disconnected")
    });
    let states = out_states(&carrier, caller);
    assert!(
        states.iter().any(|(s, code)| s == "early" && *code == 180),
        "{states:?}"
    );
    assert_eq!(states.last().map(|(_, c)| *c), Some(487), "{states:?}");
    assert!(!states.iter().any(|(s, _)| s == "confirmed"), "{states:?}");
    let mut record = Vec::new();
    wait_for(
        "the missed callback's record",
        Duration::from_secs(10),
        || {
            record = calls(&app, &format!("session_id={sid}"))
                .into_iter()
                .filter(|c| c["outcome"] == "inbound")
                .collect();
            !record.is_empty()
        },
    );
    assert!(record[0]["answered_at"].is_null(), "{record:?}");
    assert_eq!(record[0]["agent"], "alice", "{record:?}");
    // The phone stopped ringing: it never answered that call.
    wait_for("the phone's call gone", Duration::from_secs(10), || {
        agent_status(&status)["state"] == "disconnected"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        agent_status(&status)["calls"].as_i64().unwrap_or(0),
        answered_before,
        "the phone answered nothing after the caller hung up"
    );
    wait_for("alice paused again", Duration::from_secs(10), || {
        get(&app, &format!("/api/v1/sessions/{sid}"))["agents"][0]["state"] == "paused"
    });
}
