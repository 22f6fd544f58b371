//! The do-not-call list end to end (SPEC §4): numbers and prefixes added
//! through the API never reach the carrier, whatever asks for them. A
//! manual call is refused with 403; in a dialer session the listed leads end
//! `restricted` without an INVITE while the others are dialed as usual.

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
fn listed_numbers_never_reach_the_carrier() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Answered calls are hung up by the carrier 1 s after the answer.
    let carrier = Carrier::start(dir.path(), Some(1.0));
    let app = spawn_app_with(AppOptions {
        extra_toml: format!("[dialer]\nwrap_up_idle = 0.2\n\n{}", carrier.trunk_toml()),
        ..AppOptions::default()
    });
    let _phone = pj_agent(&app, "alice", "alice-secret", dir.path());

    // The list: one number, one prefix; bad entries refused by field.
    let (code, body) = post(
        &app,
        "/api/v1/dnc",
        r#"[{"number": "+44 20 7946 0200", "reason": "asked not to be called"},
            {"number": "+44207947*"}]"#,
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(body[0]["number"], "+442079460200", "normalised: {body}");
    assert_eq!(body[0]["reason"], "asked not to be called");
    assert_eq!(body[1]["number"], "+44207947*");
    let (code, body) = post(&app, "/api/v1/dnc", r#"{"number": "44*"}"#);
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("prefix"),
        "{body}"
    );
    let list = get(&app, "/api/v1/dnc");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(2), "{list}");

    // The lists compliance teams keep come as CSV: good rows are added, a
    // bad one is reported by line and stops nothing.
    let (code, _, text) = crate::app::http_exchange(
        app.http,
        "POST",
        "/api/v1/dnc/import",
        Some(&app.token),
        "",
        Some("number,reason\n+1 415 555 0177,asked on 2026-11-30\nnot a number,x\n+1900*,\n"),
    );
    // http_exchange sends JSON; the CSV goes with its own content type:
    assert_eq!(code, 415, "{text}");
    let csv = "number,reason\n+1 415 555 0177,asked on 2026-11-30\nnot a number,x\n+1900*,\n";
    let mut s = std::net::TcpStream::connect(app.http).expect("connect");
    std::io::Write::write_all(
        &mut s,
        format!(
            "POST /api/v1/dnc/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{csv}",
            app.token,
            csv.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).expect("read");
    let body: Value =
        serde_json::from_str(out.split_once("\r\n\r\n").map_or("", |x| x.1)).unwrap_or(Value::Null);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(body["added"], 2, "{body}");
    assert_eq!(body["failed"][0]["line"], 3, "{body}");
    let list = get(&app, "/api/v1/dnc");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(4), "{list}");

    // A manual call to a listed number is refused before anything rings.
    let (code, body) = post(
        &app,
        "/api/v1/calls",
        r#"{"agent": "alice", "number": "+442079460200"}"#,
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["code"], "do_not_call", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("do-not-call list"),
        "{body}"
    );

    // A session over three leads: the first and the last are listed (by
    // number and by prefix), the middle one is not.
    let numbers = ["+442079460200", "+442079450200", "+442079470200"];
    let mut leads = Vec::new();
    for (i, n) in numbers.iter().enumerate() {
        let (code, body) = post(
            &app,
            "/api/v1/leads",
            &format!(
                r#"{{"name": "Lead {i}", "created": "2026-01-0{}T00:00:00Z",
                    "contacts": [{{"name": "x", "phones": ["{n}"]}}]}}"#,
                i + 1
            ),
        );
        assert_eq!(code, 201, "{body}");
        leads.push(body["id"].as_i64().expect("lead id"));
    }
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
    wait_for("an outcome for every lead", Duration::from_secs(30), || {
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
    assert_eq!(outcome(leads[2]), "restricted", "{calls}");

    // The carrier saw an INVITE for the unlisted lead only.
    let invited = carrier.invited();
    assert!(
        invited.iter().any(|n| n.contains("442079450200")),
        "the unlisted lead was dialed: {invited:?}"
    );
    assert!(
        invited
            .iter()
            .all(|n| !n.contains("442079460200") && !n.contains("442079470200")),
        "a listed number reached the carrier: {invited:?}"
    );

    // The audit has the three, with their reason (written off the dialing
    // path, so polled for).
    let mut audit = Value::Null;
    wait_for("the audit entries", Duration::from_secs(5), || {
        audit = get(&app, "/api/v1/audit?reason=do_not_call");
        audit["data"].as_array().map(Vec::len) == Some(3)
    });
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["refused", "restricted", "restricted"], "{audit}");
    assert_eq!(audit["data"][1]["session_id"], sid, "{audit}");
    assert_eq!(audit["data"][1]["lead_id"], leads[0], "{audit}");
    assert!(
        audit["data"][2]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("+44207947*")),
        "the covering pattern: {audit}"
    );

    let (_, metrics) = app.http_get("/metrics");
    assert!(
        metrics.contains("powerdial_dnc_refused_total 3"),
        "one manual call and two session dials refused: {metrics}"
    );
    assert!(
        metrics.contains("powerdial_calls_total{outcome=\"restricted\"} 2"),
        "{metrics}"
    );

    // Removed from the list, a number is dialable again.
    let (code, text) = http_request(
        app.http,
        "DELETE",
        "/api/v1/dnc/+442079460200",
        Some(&app.token),
        None,
    );
    assert_eq!(code, 204, "{text}");
    let (code, _) = http_request(
        app.http,
        "DELETE",
        "/api/v1/dnc/+442079460200",
        Some(&app.token),
        None,
    );
    assert_eq!(code, 404);
}
