//! Agents created through the API (SPEC §4): a phone registers with the
//! new credentials at once and takes a call; the password is stored only
//! as digest HA1 values; a new password replaces the old one; the agent
//! survives a restart; deleting it refuses its phone.

use std::time::Duration;

use serde_json::Value;

use crate::app::{http_request, spawn_app_with, App, AppOptions};
use crate::peers::{pj_agent, pjsip_register, wait_for};

fn api(app: &App, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (code, text) = http_request(app.http, method, path, Some(&app.token), body);
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn an_agent_created_through_the_api_registers_calls_and_can_be_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut app = spawn_app_with(AppOptions {
        extra_toml: "[[trunk]]\nname = \"demo\"\nuri = \"demo:\"\ncaller_id = \"+14155550100\"\n"
            .into(),
        ..AppOptions::default()
    });

    let (code, body) = api(
        &app,
        "POST",
        "/api/v1/agents",
        Some(r#"{"username": "carol", "password": "carol-secret-1", "display_name": "Carol"}"#),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["username"], "carol");
    assert_eq!(body["source"], "api");
    assert!(!body.to_string().contains("carol-secret-1"), "{body}");
    for (bad, want) in [
        (r#"{"username": "carol", "password": "another-one"}"#, 409),
        (r#"{"username": "alice", "password": "another-one"}"#, 409),
        (r#"{"username": "car ol", "password": "another-one"}"#, 400),
        (r#"{"username": "dave", "password": "short"}"#, 400),
        (r#"{"username": "dave"}"#, 422),
    ] {
        let (code, body) = api(&app, "POST", "/api/v1/agents", Some(bad));
        assert_eq!(code, want, "{bad}: {body}");
    }

    // Carol's phone registers with the new credentials and takes a call.
    let (_phone, _) = pj_agent(&app, "carol", "carol-secret-1", dir.path());
    let (code, body) = api(
        &app,
        "POST",
        "/api/v1/calls",
        Some(r#"{"agent": "carol", "number": "+14155550101"}"#),
    );
    assert!(code == 201 || code == 202, "{code} {body}");
    let id = body["id"].as_i64().expect("call id");
    wait_for(
        "carol's demo lead to answer",
        Duration::from_secs(10),
        || !api(&app, "GET", &format!("/api/v1/calls/{id}"), None).1["answered_at"].is_null(),
    );
    let (_, list) = api(&app, "GET", "/api/v1/agents", None);
    let names: Vec<&str> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["username"].as_str())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"], "{list}");

    // The database holds HA1 values, never the password.
    let db = app.log.with_file_name("powerdial.db");
    let mut stored = std::fs::read(&db).expect("db");
    stored.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
    assert!(
        !stored.windows(14).any(|w| w == b"carol-secret-1"),
        "the password is stored in clear"
    );

    // A new password replaces the old one, also across a restart.
    let (code, body) = api(
        &app,
        "PATCH",
        "/api/v1/agents/carol",
        Some(r#"{"password": "carol-secret-2"}"#),
    );
    assert_eq!(code, 200, "{body}");
    app.restart();
    let codes = pjsip_register(&app, "udp", "carol", "carol-secret-1");
    assert!(!codes.contains(&200), "the old password: {codes:?}");
    let codes = pjsip_register(&app, "udp", "carol", "carol-secret-2");
    assert_eq!(codes.last(), Some(&200), "the new password: {codes:?}");

    // Deleted: refused like a stranger; config agents cannot be deleted here.
    let (code, _) = api(&app, "DELETE", "/api/v1/agents/carol", None);
    assert_eq!(code, 204);
    let codes = pjsip_register(&app, "udp", "carol", "carol-secret-2");
    assert!(!codes.contains(&200), "a deleted agent: {codes:?}");
    assert_eq!(api(&app, "DELETE", "/api/v1/agents/carol", None).0, 404);
    assert_eq!(api(&app, "DELETE", "/api/v1/agents/alice", None).0, 409);
}
