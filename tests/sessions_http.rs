//! The sessions API (SPEC §4) over HTTP on SQLite: create,
//! join, share-token join and revoke (R16), queue with explain, pause,
//! reset (R14), errors. The call engine is a test double that accepts the
//! agent leg and leaves every lead call ringing.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use powerdial::config::AgentConfig;
use powerdial::dialer::dial::{CallEvent, DialError, DialRequest, Dialer};
use powerdial::dialer::directory::Sessions;
use powerdial::dialer::session::{SessionConfig, SystemClock};
use powerdial::http::{router, AppState};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast;

const TOKEN: &str = "test-token-123";

#[derive(Clone)]
struct Ringing {
    next: Arc<AtomicI64>,
    events: broadcast::Sender<CallEvent>,
}

impl Dialer for Ringing {
    async fn connect_agent(&self, _agent: &str) -> Result<(), DialError> {
        Ok(())
    }
    async fn dial(&self, _agent: &str, _req: DialRequest) -> Result<i64, DialError> {
        Ok(self.next.fetch_add(1, Ordering::SeqCst))
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
    db: common::TestDb,
}

async fn spawn_app() -> App {
    let db = common::sqlite_db().await;
    let dialer = Ringing {
        next: Arc::new(AtomicI64::new(1)),
        events: broadcast::channel(64).0,
    };
    let config = SessionConfig {
        block: Duration::from_secs(3600),
        refresh_interval: Duration::from_secs(300),
        wrap_up_idle: Duration::from_secs(3),
        lease: Duration::from_secs(30),
        instance: "http-test".into(),
        // Queue order, not calling hours, is under test here.
        calling_hours: powerdial::dialer::hours::CallingHours::always(),
        audit: powerdial::store::audit::AuditLog::start(db.store.clone()),
    };
    let sessions = Sessions::start(db.store.clone(), dialer, SystemClock, config)
        .await
        .expect("sessions");
    let mut state = AppState::new(db.store.clone(), TOKEN, "US").with_sessions(sessions);
    state.agents = Arc::from(
        ["alice", "bob"]
            .iter()
            .map(|u| AgentConfig {
                username: (*u).into(),
                password: "secret".into(),
                display_name: None,
            })
            .collect::<Vec<_>>(),
    );
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
        db,
    }
}

impl App {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        auth: bool,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if auth {
            req = req.bearer_auth(TOKEN);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, true).await
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body), true).await
    }

    async fn agent_state(&self, id: i64, agent: &str) -> Option<String> {
        let (_, v) = self.get(&format!("/api/v1/sessions/{id}")).await;
        v["agents"].as_array().and_then(|a| {
            a.iter()
                .find(|x| x["agent"] == agent)
                .and_then(|x| x["state"].as_str().map(String::from))
        })
    }

    async fn wait_state(&self, id: i64, agent: &str, want: &str) {
        for _ in 0..100 {
            if self.agent_state(id, agent).await.as_deref() == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{agent} never reached {want}: {:?}",
            self.agent_state(id, agent).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_api() {
    let app = spawn_app().await;
    let mut leads = Vec::new();
    for i in 0..3 {
        let (s, v) = app
            .post(
                "/api/v1/leads",
                json!({"name": format!("Lead {i}"), "status": "Potential",
                       "created": format!("2026-01-0{}T00:00:00Z", i + 1),
                       "contacts": [{"name": "x", "phones": [format!("+1415555010{i}")]}]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        leads.push(v["id"].as_i64().expect("lead id"));
    }
    let (s, view) = app
        .post(
            "/api/v1/smart-views",
            json!({"name": "potential", "query": "lead_status:potential"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{view}");
    let view_id = view["id"].as_i64().expect("view id");

    // Auth and validation.
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/sessions",
            Some(json!({"smart_view_id": view_id})),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = app
        .post("/api/v1/sessions", json!({"smart_view_id": 999_999}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "not_found");

    // Create.
    let (s, sess) = app
        .post(
            "/api/v1/sessions",
            json!({"smart_view_id": view_id, "reduced_ring_time": true, "wrap_up_idle": 5}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sess}");
    let id = sess["id"].as_i64().expect("session id");
    let token = sess["share_token"].as_str().expect("token").to_string();
    assert!(token.len() >= 32, "R16: at least 128 bits");
    assert_eq!(sess["reduced_ring_time"], true);
    assert_eq!(sess["wrap_up_idle"], 5.0);
    // SPEC §4: RFC 3339 timestamps, no epoch numbers.
    let created = sess["created"].as_str().expect("created is a string");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
    assert!(sess["reset_at"].is_null(), "{sess}");
    assert!(
        !sess.to_string().contains("_ms\""),
        "no epoch-ms fields: {sess}"
    );
    assert_eq!(sess["shared"], true);
    assert_eq!(sess["counts"]["in_view"], 3);
    assert_eq!(sess["counts"]["queued"], 3);
    assert_eq!(sess["state"], "active");
    let (s, shown) = app.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(shown.get("share_token").is_none(), "token shown once");

    // Queue with explain, before anyone dials: view order.
    let (s, q) = app
        .get(&format!("/api/v1/sessions/{id}/queue?explain=1"))
        .await;
    assert_eq!(s, StatusCode::OK, "{q}");
    let data = q["data"].as_array().expect("data");
    let order: Vec<i64> = data.iter().filter_map(|e| e["lead_id"].as_i64()).collect();
    assert_eq!(order, leads);
    assert_eq!(data[0]["state"], "ready");
    assert_eq!(data[0]["explain"], "R3: uncalled, view pos 0");
    // Whom it will call, and why, for a person.
    assert_eq!(data[0]["name"], "Lead 0");
    assert_eq!(data[0]["number"], "+14155550100");
    assert_eq!(data[0]["rule"], "R3");
    assert_eq!(data[0]["reason"], "Never called; 1st in the view");
    assert_eq!(data[2]["reason"], "Never called; 3rd in the view");
    let (_, q) = app.get(&format!("/api/v1/sessions/{id}/queue")).await;
    assert!(q["data"][0].get("explain").is_none());
    assert!(q["data"][0].get("reason").is_none());
    assert_eq!(q["data"][0]["name"], "Lead 0", "names are always listed");

    // Join (admin): alice dials the first lead.
    let (s, v) = app
        .post(
            &format!("/api/v1/sessions/{id}/agents"),
            json!({"agent": "alice"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.wait_state(id, "alice", "dialing").await;
    let (_, v) = app.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(v["agents"][0]["lead_id"], leads[0]);
    assert_eq!(v["counts"]["calling"], 1);
    let (_, q) = app
        .get(&format!("/api/v1/sessions/{id}/queue?explain=1"))
        .await;
    let order: Vec<i64> = q["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["lead_id"].as_i64())
        .collect();
    assert_eq!(order, leads[1..]);

    // Unknown agent.
    let (s, _) = app
        .post(
            &format!("/api/v1/sessions/{id}/agents"),
            json!({"agent": "mallory"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Share-token join without the admin token (R16).
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/sessions/join",
            Some(json!({"token": "0".repeat(64), "agent": "bob"})),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/sessions/join",
            Some(json!({"token": token, "agent": "bob"})),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["session_id"], id);
    app.wait_state(id, "bob", "dialing").await;
    let (_, v) = app.get(&format!("/api/v1/sessions/{id}")).await;
    let bob_lead = v["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["agent"] == "bob"))
        .map(|x| x["lead_id"].clone());
    assert_eq!(
        bob_lead,
        Some(json!(leads[1])),
        "R13: bob gets the next lead"
    );

    // Revoke: the old token stops working.
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/sessions/{id}/share"),
            None,
            true,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/sessions/join",
            Some(json!({"token": token, "agent": "bob"})),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, v) = app.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(v["shared"], false);
    // A new token works; PATCH shared:false revokes it too.
    let (s, v) = app
        .post(&format!("/api/v1/sessions/{id}/share"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token2 = v["share_token"].as_str().expect("token").to_string();
    assert_ne!(token2, token);
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/sessions/{id}"),
            Some(json!({"shared": false, "reduced_ring_time": false, "wrap_up_idle": null})),
            true,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["shared"], false);
    assert_eq!(v["reduced_ring_time"], false);
    assert_eq!(v["wrap_up_idle"], Value::Null);
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/sessions/join",
            Some(json!({"token": token2, "agent": "bob"})),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Agent commands.
    let (s, _) = app
        .post(
            &format!("/api/v1/sessions/{id}/agents/alice/typing"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app
        .post(
            &format!("/api/v1/sessions/{id}/agents/alice/dance"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = app
        .post(
            &format!("/api/v1/sessions/{id}/agents/carol/pause"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = app
        .post(
            &format!("/api/v1/sessions/{id}/agents/alice/leave"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, v) = app
        .post(
            &format!("/api/v1/sessions/{id}/agents/alice/pause"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Reset (R14).
    let (s, v) = app
        .post(&format!("/api/v1/sessions/{id}/reset"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["reset_at"].is_string(), "the answer shows the reset: {v}");
    let (_, v) = app.get(&format!("/api/v1/sessions/{id}")).await;
    assert!(v["reset_at"].is_string(), "and so does GET: {v}");
    let (s, _) = app.get("/api/v1/sessions/424242").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.db.cleanup().await;
}
