//! Calling hours through the API (SPEC §4 sessions' `calling_hours`) on
//! SQLite with the real clock, kept deterministic at any hour: each lead's
//! `timezone` field is a fixed-offset zone picked from the current UTC time
//! so that one lead is in the middle of its window and the other in the
//! middle of its night. The call engine is a test double that records the
//! leads it is asked to dial and leaves them ringing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Timelike;
use powerdial::config::AgentConfig;
use powerdial::dialer::dial::{CallEvent, DialError, DialRequest, Dialer};
use powerdial::dialer::directory::Sessions;
use powerdial::dialer::hours::CallingHours;
use powerdial::dialer::session::{SessionConfig, SystemClock};
use powerdial::http::{router, AppState};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast;

const TOKEN: &str = "test-token-hours";

#[derive(Clone)]
struct Recording {
    dialed: Arc<Mutex<Vec<Option<i64>>>>,
    events: broadcast::Sender<CallEvent>,
}

impl Dialer for Recording {
    async fn connect_agent(&self, _agent: &str) -> Result<(), DialError> {
        Ok(())
    }
    async fn dial(&self, _agent: &str, req: DialRequest) -> Result<i64, DialError> {
        let mut d = self.dialed.lock().expect("lock");
        d.push(req.lead_id);
        Ok(i64::try_from(d.len()).unwrap_or(0))
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

/// The fixed-offset zone (IANA `Etc/GMT±N`, no DST) whose local hour is
/// `hour` now.
#[allow(clippy::disallowed_methods)] // the test's real clock
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_outside_its_hours_is_held_and_the_other_dialed() {
    let db = common::sqlite_db().await;
    let dialer = Recording {
        dialed: Arc::default(),
        events: broadcast::channel(64).0,
    };
    let audit = powerdial::store::audit::AuditLog::start(db.store.clone());
    let config = SessionConfig {
        block: Duration::from_secs(3600),
        refresh_interval: Duration::from_secs(300),
        wrap_up_idle: Duration::from_secs(3),
        lease: Duration::from_secs(30),
        instance: "hours-test".into(),
        // What a user gets: 08:00-21:00, no holidays.
        calling_hours: CallingHours::default(),
        audit: audit.clone(),
    };
    let sessions = Sessions::start(db.store.clone(), dialer.clone(), SystemClock, config)
        .await
        .expect("sessions");
    let mut state = AppState::new(db.store.clone(), TOKEN, "US")
        .with_sessions(sessions)
        .with_audit(audit);
    state.agents = Arc::from(vec![AgentConfig {
        username: "alice".into(),
        password: "secret".into(),
        display_name: None,
    }]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    let client = Client::new();
    let base = format!("http://{addr}");
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status();
            let text = resp.text().await.expect("body");
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    use reqwest::Method;

    let (s, v) = send(
        Method::POST,
        "/api/v1/custom-fields",
        Some(json!({"name": "timezone", "type": "text"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The two night leads come first in the view: they must be skipped,
    // not dialed.
    let night = zone_at_local_hour(2);
    let day = zone_at_local_hour(14);
    let mut ids = Vec::new();
    for (i, zone) in [&night, &night, &day].iter().enumerate() {
        let (s, v) = send(
            Method::POST,
            "/api/v1/leads",
            Some(json!({"name": format!("Lead {i}"),
                   "created": format!("2026-01-0{}T00:00:00Z", i + 1),
                   "custom": {"timezone": zone},
                   "contacts": [{"name": "x", "phones": [format!("+1415555010{i}")]}]})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["id"].as_i64().expect("id"));
    }
    let (s, view) = send(
        Method::POST,
        "/api/v1/smart-views",
        Some(json!({"name": "all", "query": "sort:created"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{view}");

    // A bad window is refused and nothing is created.
    let (s, v) = send(
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"smart_view_id": view["id"], "calling_hours": {"start": "21:00", "end": "08:00"}})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("start before they end")),
        "{v}"
    );
    let (_, list) = send(Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");

    let (s, sess) = send(
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"smart_view_id": view["id"], "calling_hours": {"start": "08:00", "end": "21:00"}})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{sess}");
    assert_eq!(
        sess["calling_hours"],
        json!({"start": "08:00", "end": "21:00"})
    );
    let id = sess["id"].as_i64().expect("session id");
    let (s, v) = send(
        Method::POST,
        &format!("/api/v1/sessions/{id}/agents"),
        Some(json!({"agent": "alice"})),
    )
    .await;
    assert!(s.is_success(), "{s} {v}");

    // The day lead is dialed; the night lead never is.
    for _ in 0..200 {
        if !dialer.dialed.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*dialer.dialed.lock().expect("lock"), vec![Some(ids[2])]);
    let (s, q) = send(
        Method::GET,
        &format!("/api/v1/sessions/{id}/queue?explain=1"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{q}");
    let held = q["data"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["lead_id"] == ids[0]).cloned())
        .unwrap_or_else(|| panic!("the night lead is listed: {q}"));
    assert_eq!(held["state"], "held", "{held}");
    assert_eq!(held["rule"], "calling_hours", "{held}");
    assert_eq!(
        held["explain"],
        format!("calling hours: opens 08:00 {night}"),
        "{held}"
    );
    assert!(held["opens_at"].is_string(), "{held}");
    let (_, sess) = send(Method::GET, &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(sess["counts"]["held"], 2, "{sess}");

    // Both holds are in the audit, with their reason, written off the
    // dialing path (so polled for).
    let mut audit = Value::Null;
    for _ in 0..100 {
        audit = send(Method::GET, &format!("/api/v1/audit?session_id={id}"), None)
            .await
            .1;
        if audit["data"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = audit["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 2, "{audit}");
    assert_eq!(entries[0]["lead_id"], ids[0], "{audit}");
    assert_eq!(entries[1]["lead_id"], ids[1], "{audit}");
    for e in &entries {
        assert_eq!(e["action"], "held", "{e}");
        assert_eq!(e["reason"], "calling_hours", "{e}");
        assert_eq!(e["agent"], "alice", "{e}");
        assert_eq!(e["session_id"], id, "{e}");
        assert!(
            e["number"].as_str().is_some_and(|n| n.starts_with("+1415")),
            "{e}"
        );
        assert!(
            e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("opens 08:00 {night}"))),
            "{e}"
        );
        assert!(e["at"].is_string(), "RFC 3339: {e}");
    }
    // Paging, filters, and refusals of bad filters.
    let (_, page) = send(Method::GET, "/api/v1/audit?limit=1", None).await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1), "{page}");
    let next = page["next"].as_str().expect("a next page").to_string();
    let (_, page2) = send(
        Method::GET,
        &format!("/api/v1/audit?limit=1&cursor={next}"),
        None,
    )
    .await;
    assert_eq!(page2["data"][0]["lead_id"], ids[1], "{page2}");
    assert!(page2["next"].is_null(), "{page2}");
    let (_, by_lead) = send(
        Method::GET,
        &format!("/api/v1/audit?lead_id={}", ids[1]),
        None,
    )
    .await;
    assert_eq!(
        by_lead["data"].as_array().map(Vec::len),
        Some(1),
        "{by_lead}"
    );
    let (_, dnc) = send(Method::GET, "/api/v1/audit?reason=do_not_call", None).await;
    assert_eq!(dnc["data"].as_array().map(Vec::len), Some(0), "{dnc}");
    let (_, later) = send(Method::GET, "/api/v1/audit?since=2999-01-01", None).await;
    assert_eq!(later["data"].as_array().map(Vec::len), Some(0), "{later}");
    for bad in [
        "reason=asleep",
        "since=yesterday",
        "lead_id=x",
        "cursor=zz",
        "limit=0",
    ] {
        let (s, v) = send(Method::GET, &format!("/api/v1/audit?{bad}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"]["code"].is_string(), "{bad}: {v}");
    }
    // Admin only: an agent's token is refused.
    let (s, v) = send(Method::POST, "/api/v1/agents/alice/tokens", None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let agent_token = v["token"].as_str().expect("token").to_string();
    let resp = client
        .get(format!("{base}/api/v1/audit"))
        .bearer_auth(&agent_token)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // Back to the config's hours with null; a bad PATCH changes nothing.
    let (s, v) = send(
        Method::PATCH,
        &format!("/api/v1/sessions/{id}"),
        Some(json!({"calling_hours": {"start": "25:00", "end": "21:00"}})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = send(
        Method::PATCH,
        &format!("/api/v1/sessions/{id}"),
        Some(json!({"calling_hours": null})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["calling_hours"].is_null(), "{v}");
    // The hold ends with the change (the lead is checked again when next
    // claimed); alice is still on the day lead's call, so nothing is dialed.
    let (_, sess) = send(Method::GET, &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(sess["counts"]["held"], 0, "{sess}");
    assert_eq!(dialer.dialed.lock().expect("lock").len(), 1);
}
