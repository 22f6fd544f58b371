//! The endpoints the console adds (SPEC §1 step 5, §4), on SQLite and on
//! PostgreSQL when `POWERDIAL_TEST_DATABASE_URL` is set:
//!
//! - `PATCH /api/v1/calls/{id} {"notes"}` saves the agent's notes, shown
//!   in the call record (`GET /api/v1/calls/{id}` and the list); 404, 400
//!   (too long, bad JSON), 422 (wrong shape), 401 without the token, and
//!   nothing stored on a refusal;
//! - `GET /api/v1/sessions` lists sessions with their Smart View's name;
//! - `GET /` serves the console page and its script and style, without
//!   the token;
//! - notes typed in a call's notes box are kept on its lead (`GET
//!   /api/v1/leads/{id}` shows them), `POST /api/v1/leads/{id}/notes` adds
//!   one, `GET /api/v1/leads/{id}/calls` lists the lead's latest calls;
//! - `GET /api/v1/me` names the token's role, and `GET
//!   /api/v1/sessions/{id}/stats` counts a session's seeded calls.

mod common;

use std::time::Duration;

use powerdial::dialer::dial::{CallEvent, DialError, DialRequest, Dialer};
use powerdial::dialer::directory::Sessions;
use powerdial::dialer::session::{SessionConfig, SystemClock};
use powerdial::http::{router, AppState};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast;

const TOKEN: &str = "console-token";

/// A dialer whose agents never get a phone call: sessions stay idle.
#[derive(Clone)]
struct Idle {
    events: broadcast::Sender<CallEvent>,
}

impl Dialer for Idle {
    async fn connect_agent(&self, _agent: &str) -> Result<(), DialError> {
        Ok(())
    }
    async fn dial(&self, _agent: &str, _req: DialRequest) -> Result<i64, DialError> {
        Ok(1)
    }
    async fn skip(&self, _agent: &str) -> Result<(), DialError> {
        Ok(())
    }
    async fn disconnect_agent(&self, _agent: &str) -> Result<(), DialError> {
        Ok(())
    }
    fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.events.subscribe()
    }
}

struct App {
    base: String,
    client: Client,
}

async fn spawn(store: powerdial::store::Store) -> App {
    spawn_with_agents(store, Vec::new()).await
}

async fn spawn_with_agents(
    store: powerdial::store::Store,
    agents: Vec<powerdial::config::AgentConfig>,
) -> App {
    let sessions = Sessions::start(
        store.clone(),
        Idle {
            events: broadcast::channel(8).0,
        },
        SystemClock,
        SessionConfig {
            block: Duration::from_secs(3600),
            refresh_interval: Duration::from_secs(300),
            wrap_up_idle: Duration::from_secs(3),
            lease: Duration::from_secs(30),
            instance: "console-test".into(),
            // Queue order, not calling hours, is under test here.
            calling_hours: powerdial::dialer::hours::CallingHours::always(),
            audit: powerdial::store::audit::AuditLog::start(store.clone()),
        },
    )
    .await
    .expect("sessions");
    let mut state = AppState::new(store, TOKEN, "US").with_sessions(sessions);
    state.agents = agents.into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    App {
        base: format!("http://{addr}"),
        client: Client::new(),
    }
}

impl App {
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        auth: bool,
    ) -> (StatusCode, String, Option<String>) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if auth {
            req = req.bearer_auth(TOKEN);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, resp.text().await.expect("body"), ctype)
    }

    /// A request with another bearer token (an agent's).
    async fn as_token(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let text = body.map(|b| b.to_string());
        let (status, text, _) = self.raw(method, path, text.as_deref(), true).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn call_notes_are_saved_with_the_call() {
    for db in common::all_dbs("call_notes_are_saved_with_the_call").await {
        let backend = db.backend;
        let app = spawn(db.store.clone()).await;
        let (s, lead) = app
            .json(
                Method::POST,
                "/api/v1/leads",
                Some(json!({"name": "Ada", "contacts": [{"name": "Ada", "phones": ["+14155550134"]}]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {lead}");
        let lead_id = lead["id"].as_i64().expect("lead id");
        let (s, call) = app
            .json(
                Method::POST,
                &format!("/api/v1/leads/{lead_id}/calls"),
                Some(json!({"created": "2026-01-05T10:00:00Z", "outcome": "answered", "duration_s": 60})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {call}");
        let id = call["id"].as_i64().expect("call id");
        assert_eq!(call["notes"], Value::Null, "{backend}: no notes yet");

        let path = format!("/api/v1/calls/{id}");
        let note = "Wants a demo Tuesday.\nSend pricing — ✓";
        let (s, v) = app
            .json(Method::PATCH, &path, Some(json!({ "notes": note })))
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}: {v}");
        assert_eq!(v["notes"], note, "{backend}");
        assert_eq!(v["state"], "ended", "{backend}");
        let (_, v) = app.json(Method::GET, &path, None).await;
        assert_eq!(v["notes"], note, "{backend}: GET shows the note");
        let (_, list) = app
            .json(
                Method::GET,
                &format!("/api/v1/calls?lead_id={lead_id}"),
                None,
            )
            .await;
        assert_eq!(list["data"][0]["notes"], note, "{backend}: the list too");

        // Refusals store nothing.
        let long = "x".repeat(powerdial::http::call_notes::MAX_NOTES_LEN + 1);
        let cases: [(Option<&str>, bool, StatusCode); 5] = [
            (Some(r#"{"notes": "#), true, StatusCode::BAD_REQUEST),
            (
                Some(r#"{"notes": 5}"#),
                true,
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                Some(r#"{"notes": "a", "outcome": "busy"}"#),
                true,
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                Some(r#"{"notes": "stolen"}"#),
                false,
                StatusCode::UNAUTHORIZED,
            ),
            (None, true, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ];
        for (body, auth, want) in cases {
            let (s, text, _) = app.raw(Method::PATCH, &path, body, auth).await;
            assert_eq!(s, want, "{backend}: PATCH {body:?} (auth {auth}): {text}");
            let err: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert!(err["error"]["message"].is_string(), "{backend}: {text}");
        }
        let (s, v) = app
            .json(Method::PATCH, &path, Some(json!({ "notes": long })))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{backend}: {v}");
        assert_eq!(v["error"]["field"], "notes", "{backend}: {v}");
        let (_, v) = app.json(Method::GET, &path, None).await;
        assert_eq!(v["notes"], note, "{backend}: unchanged by refusals");

        let (s, v) = app
            .json(
                Method::PATCH,
                "/api/v1/calls/999999",
                Some(json!({"notes": "x"})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{backend}: {v}");
        let (s, _) = app
            .json(
                Method::PATCH,
                "/api/v1/calls/abc",
                Some(json!({"notes": "x"})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{backend}");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn sessions_are_listed_with_their_view_name() {
    let db = common::sqlite_db().await;
    let app = spawn(db.store.clone()).await;
    let (s, v) = app.json(Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"data": [], "next": null}));
    let (s, view) = app
        .json(
            Method::POST,
            "/api/v1/smart-views",
            Some(json!({"name": "Potential", "query": "sort:name"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{view}");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, sess) = app
            .json(
                Method::POST,
                "/api/v1/sessions",
                Some(json!({"smart_view_id": view["id"]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{sess}");
        ids.push(sess["id"].as_i64().expect("id"));
    }
    let (s, v) = app.json(Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let data = v["data"].as_array().expect("data");
    let got: Vec<i64> = data.iter().filter_map(|s| s["id"].as_i64()).collect();
    assert_eq!(got, ids, "oldest first");
    for s in data {
        assert_eq!(s["smart_view_name"], "Potential", "{s}");
        // An empty view is "done" at once (R15).
        assert_eq!(s["state"], "done", "{s}");
        assert!(s["counts"].is_object() && s["agents"].is_array(), "{s}");
        assert!(s.get("share_token").is_none(), "never listed: {s}");
    }
    let (s, _, _) = app.raw(Method::GET, "/api/v1/sessions", None, false).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    db.cleanup().await;
}

#[tokio::test]
async fn the_console_is_served_without_the_token() {
    let db = common::sqlite_db().await;
    let app = spawn(db.store.clone()).await;
    for (path, ctype, needle) in [
        ("/", "text/html", "/console/app.js"),
        ("/console/app.js", "text/javascript", "/api/v1/events"),
        ("/console/app.css", "text/css", ".callbar"),
    ] {
        let (s, body, got) = app.raw(Method::GET, path, None, false).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert!(
            got.as_deref().unwrap_or("").starts_with(ctype),
            "{path}: {got:?}"
        );
        assert!(body.contains(needle), "{path} lacks {needle}");
    }
    // The page never holds the token; the API behind it still wants it.
    let (_, page, _) = app.raw(Method::GET, "/", None, false).await;
    assert!(!page.contains(TOKEN));
    let (s, _, _) = app.raw(Method::GET, "/api/v1/agents", None, false).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    db.cleanup().await;
}

#[tokio::test]
async fn next_and_hangup_name_the_call_on_screen() {
    let db = common::sqlite_db().await;
    let alice = powerdial::config::AgentConfig {
        username: "alice".into(),
        password: "secret".into(),
        display_name: None,
    };
    let app = spawn_with_agents(db.store.clone(), vec![alice]).await;
    let (s, lead) = app
        .json(
            Method::POST,
            "/api/v1/leads",
            Some(json!({"name": "Ada", "contacts": [{"name": "Ada", "phones": ["+14155550134"]}]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{lead}");
    let (_, view) = app
        .json(
            Method::POST,
            "/api/v1/smart-views",
            Some(json!({"name": "All", "query": "sort:name"})),
        )
        .await;
    let (s, sess) = app
        .json(
            Method::POST,
            "/api/v1/sessions",
            Some(json!({"smart_view_id": view["id"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sess}");
    let sid = sess["id"].as_i64().expect("id");
    let (s, v) = app
        .json(
            Method::POST,
            &format!("/api/v1/sessions/{sid}/agents"),
            Some(json!({"agent": "alice"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The test dialer answers every dial with call record 1, left ringing.
    let mut agent = Value::Null;
    for _ in 0..100 {
        let (_, v) = app
            .json(Method::GET, &format!("/api/v1/sessions/{sid}"), None)
            .await;
        agent = v["agents"][0].clone();
        if agent["state"] == "dialing" && agent["call_id"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent["call_id"], 1, "{agent}");
    let base = format!("/api/v1/sessions/{sid}/agents/alice");
    for action in ["next", "hangup"] {
        let (s, v) = app
            .json(Method::POST, &format!("{base}/{action}?call_id=7"), None)
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{action} for another call: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
        let (s, v) = app
            .json(Method::POST, &format!("{base}/{action}?call_id=x"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{action} with a bad id: {v}");
    }
    let (_, v) = app
        .json(Method::GET, &format!("/api/v1/sessions/{sid}"), None)
        .await;
    assert_eq!(
        v["agents"][0]["state"], "dialing",
        "refusals change nothing: {v}"
    );
    let (s, v) = app
        .json(Method::POST, &format!("{base}/next?call_id=1"), None)
        .await;
    assert_eq!(
        s,
        StatusCode::NO_CONTENT,
        "next for the call on screen: {v}"
    );
    db.cleanup().await;
}

fn alice() -> powerdial::config::AgentConfig {
    powerdial::config::AgentConfig {
        username: "alice".into(),
        password: "secret".into(),
        display_name: None,
    }
}

async fn agent_token(app: &App, agent: &str) -> String {
    let (s, v) = app
        .json(
            Method::POST,
            &format!("/api/v1/agents/{agent}/tokens"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["token"].as_str().expect("token").to_string()
}

#[tokio::test]
async fn notes_typed_on_a_call_are_kept_on_its_lead() {
    for db in common::all_dbs("notes_typed_on_a_call_are_kept_on_its_lead").await {
        let backend = db.backend;
        let app = spawn_with_agents(db.store.clone(), vec![alice()]).await;
        let (s, lead) = app
            .json(
                Method::POST,
                "/api/v1/leads",
                Some(json!({"name": "Ada", "status": "Potential", "contacts": [
                    {"name": "Ada", "phones": ["+14155550134", "+14155550135"]},
                    {"name": "Charles", "phones": ["+14155550136"]}]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {lead}");
        let lead_id = lead["id"].as_i64().expect("lead id");
        let (_, got) = app
            .json(Method::GET, &format!("/api/v1/leads/{lead_id}"), None)
            .await;
        assert_eq!(
            got["notes"],
            json!([]),
            "{backend}: a new lead has no notes"
        );
        // Two calls made by alice, an hour apart.
        let mut calls = Vec::new();
        for (i, (at, outcome)) in [
            ("2026-01-05T10:00:00Z", "no_answer"),
            ("2026-01-05T11:00:00Z", "answered"),
        ]
        .into_iter()
        .enumerate()
        {
            let rec = db
                .store
                .insert_call(&powerdial::leads::NewCall {
                    session_id: None,
                    lead_id: Some(lead_id),
                    agent: Some("alice".into()),
                    number: "+14155550134".into(),
                    trunk: None,
                    started_ms: chrono::DateTime::parse_from_rfc3339(at)
                        .expect("time")
                        .timestamp_millis(),
                    answered_ms: None,
                    ended_ms: None,
                    outcome: powerdial::leads::CallOutcome::parse(outcome),
                    sip_status: None,
                    ring_ms: Some(1000 * (i as i64 + 1)),
                })
                .await
                .expect("call");
            calls.push(rec.id);
        }
        let path = format!("/api/v1/calls/{}", calls[1]);
        let (s, v) = app
            .json(Method::PATCH, &path, Some(json!({"notes": "Wants a demo"})))
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}: {v}");
        // Typing on: the same note is replaced, not added to.
        let (s, v) = app
            .json(
                Method::PATCH,
                &path,
                Some(json!({"notes": "Wants a demo Tuesday"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}: {v}");
        let (s, got) = app
            .json(Method::GET, &format!("/api/v1/leads/{lead_id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}: {got}");
        let notes = got["notes"].as_array().expect("notes");
        assert_eq!(notes.len(), 1, "{backend}: one note per call: {got}");
        assert_eq!(notes[0]["body"], "Wants a demo Tuesday", "{backend}");
        assert_eq!(notes[0]["call_id"], calls[1], "{backend}");
        assert_eq!(notes[0]["agent"], "alice", "{backend}: the call's agent");
        assert!(
            notes[0]["created"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{backend}: {got}"
        );
        assert_eq!(got["name"], "Ada", "{backend}: still the lead: {got}");

        // A note outside a call, by the agent's own token.
        let token = agent_token(&app, "alice").await;
        let npath = format!("/api/v1/leads/{lead_id}/notes");
        let (s, v) = app
            .as_token(
                &token,
                Method::POST,
                &npath,
                Some(r#"{"body": "Call back after 3pm"}"#),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {v}");
        assert_eq!(v["agent"], "alice", "{backend}: {v}");
        assert_eq!(v["call_id"], Value::Null, "{backend}: {v}");
        // Refusals store nothing.
        let cases: [(Option<&str>, bool, StatusCode); 6] = [
            (Some(r#"{"body": "#), true, StatusCode::BAD_REQUEST),
            (Some(r#"{"body": "   "}"#), true, StatusCode::BAD_REQUEST),
            (
                Some(r#"{"body": 5}"#),
                true,
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                Some(r#"{"body": "a", "x": 1}"#),
                true,
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                Some(r#"{"body": "stolen"}"#),
                false,
                StatusCode::UNAUTHORIZED,
            ),
            (None, true, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ];
        for (body, auth, want) in cases {
            let (s, text, _) = app.raw(Method::POST, &npath, body, auth).await;
            assert_eq!(
                s, want,
                "{backend}: POST notes {body:?} (auth {auth}): {text}"
            );
            let err: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert!(err["error"]["message"].is_string(), "{backend}: {text}");
        }
        let (s, v) = app
            .json(
                Method::POST,
                "/api/v1/leads/999999/notes",
                Some(json!({"body": "x"})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{backend}: {v}");
        let (_, got) = app
            .json(Method::GET, &format!("/api/v1/leads/{lead_id}"), None)
            .await;
        let bodies: Vec<&str> = got["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .filter_map(|n| n["body"].as_str())
            .collect();
        assert_eq!(
            bodies,
            ["Call back after 3pm", "Wants a demo Tuesday"],
            "{backend}: newest first, nothing from the refusals"
        );
        // Emptying the call's notes box removes its note from the lead.
        let (s, _) = app
            .json(Method::PATCH, &path, Some(json!({"notes": ""})))
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}");
        let (_, got) = app
            .json(Method::GET, &format!("/api/v1/leads/{lead_id}"), None)
            .await;
        assert_eq!(
            got["notes"].as_array().map(Vec::len),
            Some(1),
            "{backend}: {got}"
        );

        // The lead's latest calls, newest first, for the agent too.
        let cpath = format!("/api/v1/leads/{lead_id}/calls");
        let (s, v) = app.as_token(&token, Method::GET, &cpath, None).await;
        assert_eq!(s, StatusCode::OK, "{backend}: {v}");
        let ids: Vec<i64> = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|c| c["id"].as_i64())
            .collect();
        assert_eq!(ids, [calls[1], calls[0]], "{backend}: newest first");
        assert_eq!(v["data"][0]["outcome"], "answered", "{backend}: {v}");
        assert_eq!(v["data"][0]["agent"], "alice", "{backend}: {v}");
        let (_, v) = app
            .json(Method::GET, &format!("{cpath}?limit=1"), None)
            .await;
        assert_eq!(
            v["data"].as_array().map(Vec::len),
            Some(1),
            "{backend}: {v}"
        );
        for (q, want) in [
            ("?limit=0", StatusCode::BAD_REQUEST),
            ("?limit=x", StatusCode::BAD_REQUEST),
        ] {
            let (s, v) = app.json(Method::GET, &format!("{cpath}{q}"), None).await;
            assert_eq!(s, want, "{backend}: {q}: {v}");
        }
        let (s, _) = app
            .json(Method::GET, "/api/v1/leads/999999/calls", None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{backend}");
        let (s, _, _) = app.raw(Method::GET, &cpath, None, false).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{backend}");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn me_names_the_tokens_role() {
    let db = common::sqlite_db().await;
    let app = spawn_with_agents(db.store.clone(), vec![alice()]).await;
    let (s, v) = app.json(Method::GET, "/api/v1/me", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"role": "admin"})));
    let token = agent_token(&app, "alice").await;
    let (s, v) = app.as_token(&token, Method::GET, "/api/v1/me", None).await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"role": "agent", "agent": "alice"}))
    );
    let (s, v) = app
        .as_token("not-a-token", Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    db.cleanup().await;
}

#[tokio::test]
async fn session_stats_count_the_sessions_calls() {
    for db in common::all_dbs("session_stats_count_the_sessions_calls").await {
        let backend = db.backend;
        let app = spawn_with_agents(db.store.clone(), vec![alice()]).await;
        let (_, view) = app
            .json(
                Method::POST,
                "/api/v1/smart-views",
                Some(json!({"name": "Nobody", "query": "name:\"no such lead\""})),
            )
            .await;
        let mut sids = Vec::new();
        for _ in 0..2 {
            let (s, sess) = app
                .json(
                    Method::POST,
                    "/api/v1/sessions",
                    Some(json!({"smart_view_id": view["id"]})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{backend}: {sess}");
            sids.push(sess["id"].as_i64().expect("id"));
        }
        let (sid, other) = (sids[0], sids[1]);
        let (_, empty) = app
            .json(Method::GET, &format!("/api/v1/sessions/{sid}/stats"), None)
            .await;
        assert_eq!(empty["calls"], 0, "{backend}: {empty}");
        assert_eq!(empty["answer_rate"], Value::Null, "{backend}: {empty}");
        assert_eq!(empty["median_ring_ms"], Value::Null, "{backend}: {empty}");
        assert_eq!(
            empty["per_hour"].as_array().map(Vec::len),
            Some(24),
            "{backend}"
        );

        // Seeded calls: this hour and two hours ago, and one of another session.
        #[allow(clippy::disallowed_methods)] // the server reads the same wall clock
        let now = chrono::Utc::now().timestamp_millis();
        let seeded: [(i64, i64, Option<&str>, Option<i64>); 7] = [
            (sid, now - 60_000, Some("answered"), Some(4_000)),
            (sid, now - 50_000, Some("no_answer"), Some(32_000)),
            (sid, now - 40_000, Some("busy"), Some(3_000)),
            (sid, now - 2 * 3_600_000, Some("answered"), Some(6_000)),
            (sid, now - 2 * 3_600_000 + 1, Some("restricted"), None),
            (sid, now - 1_000, None, None),
            (other, now - 1_000, Some("answered"), Some(100)),
        ];
        for (session, started_ms, outcome, ring_ms) in seeded {
            db.store
                .insert_call(&powerdial::leads::NewCall {
                    session_id: Some(session),
                    lead_id: None,
                    agent: Some("alice".into()),
                    number: "+14155550134".into(),
                    trunk: None,
                    started_ms,
                    answered_ms: None,
                    ended_ms: None,
                    outcome: outcome.and_then(powerdial::leads::CallOutcome::parse),
                    sip_status: None,
                    ring_ms,
                })
                .await
                .expect("call");
        }
        let (s, st) = app
            .json(
                Method::GET,
                &format!("/api/v1/sessions/{sid}/stats?hours=3"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}: {st}");
        assert_eq!(st["session_id"], sid, "{backend}");
        assert_eq!(st["calls"], 6, "{backend}: {st}");
        assert_eq!(st["by_outcome"]["answered"], 2, "{backend}: {st}");
        assert_eq!(st["by_outcome"]["no_answer"], 1, "{backend}: {st}");
        assert_eq!(st["by_outcome"]["skipped"], 0, "{backend}: {st}");
        assert_eq!(st["by_outcome"]["in_progress"], 1, "{backend}: {st}");
        // 2 answered of 5 ended; rings 3000, 4000, 6000, 32000.
        assert_eq!(st["answer_rate"], 0.4, "{backend}: {st}");
        assert_eq!(st["median_ring_ms"], 5000, "{backend}: {st}");
        let hours = st["per_hour"].as_array().expect("per_hour");
        assert_eq!(hours.len(), 3, "{backend}: {st}");
        let per: Vec<i64> = hours.iter().filter_map(|h| h["calls"].as_i64()).collect();
        // The last hour holds the four recent calls unless the minute
        // before "now" crossed the hour.
        assert_eq!(
            per.iter().sum::<i64>(),
            6,
            "{backend}: every call in the window: {st}"
        );
        assert_eq!(per[0], 2, "{backend}: two hours ago: {st}");
        assert_eq!(hours[0]["by_outcome"]["restricted"], 1, "{backend}: {st}");

        // Refusals.
        let token = agent_token(&app, "alice").await;
        let path = format!("/api/v1/sessions/{sid}/stats");
        let (s, v) = app.as_token(&token, Method::GET, &path, None).await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "{backend}: agents do not see stats: {v}"
        );
        let (s, _, _) = app.raw(Method::GET, &path, None, false).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{backend}");
        for q in ["?hours=0", "?hours=169", "?hours=x"] {
            let (s, v) = app.json(Method::GET, &format!("{path}{q}"), None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{backend}: {q}: {v}");
        }
        let (s, v) = app
            .json(Method::GET, "/api/v1/sessions/999999/stats", None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{backend}: {v}");
        db.cleanup().await;
    }
}
