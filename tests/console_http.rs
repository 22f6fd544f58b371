//! The endpoints the console adds (SPEC §1 step 5, §4), on SQLite and on
//! PostgreSQL when `POWERDIAL_TEST_DATABASE_URL` is set:
//!
//! - `PATCH /api/v1/calls/{id} {"notes"}` saves the agent's notes, shown
//!   in the call record (`GET /api/v1/calls/{id}` and the list); 404, 400
//!   (too long, bad JSON), 422 (wrong shape), 401 without the token, and
//!   nothing stored on a refusal;
//! - `GET /api/v1/sessions` lists sessions with their Smart View's name;
//! - `GET /` serves the console page and its script and style, without
//!   the token.

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
