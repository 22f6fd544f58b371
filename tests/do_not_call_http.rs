//! A lead's "do not call" mark through the leads API and CSV import, and an
//! agent putting the current lead's number on the do-not-call list — with
//! the agent-authorised endpoint and with the phone's DTMF key (the call
//! engine's `CallEvent::Dtmf`, here sent by the test double that stands in
//! for the engine) — on SQLite and PostgreSQL.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use powerdial::config::AgentConfig;
use powerdial::dialer::dial::{CallEvent, DialError, DialRequest, Dialer};
use powerdial::dialer::directory::Sessions;
use powerdial::dialer::hours::CallingHours;
use powerdial::dialer::session::{SessionConfig, SystemClock, DNC_KEY};
use powerdial::http::{router, AppState};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast;

const TOKEN: &str = "test-token-dnc";

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

struct App {
    base: String,
    client: Client,
    dialer: Recording,
}

impl App {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, body, TOKEN).await
    }
}

async fn spawn(store: powerdial::store::Store) -> App {
    let dialer = Recording {
        dialed: Arc::default(),
        events: broadcast::channel(64).0,
    };
    let audit = powerdial::store::audit::AuditLog::start(store.clone());
    let config = SessionConfig {
        block: Duration::from_secs(3600),
        refresh_interval: Duration::from_secs(300),
        wrap_up_idle: Duration::from_secs(3),
        lease: Duration::from_secs(30),
        instance: "dnc-test".into(),
        // Not about calling hours: the whole day is open.
        calling_hours: CallingHours::always(),
        audit: audit.clone(),
    };
    let sessions = Sessions::start(store.clone(), dialer.clone(), SystemClock, config)
        .await
        .expect("sessions");
    let mut state = AppState::new(store, TOKEN, "US")
        .with_sessions(sessions)
        .with_audit(audit);
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
        dialer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lead_mark_and_agent_do_not_call() {
    for db in common::all_dbs("lead_mark_and_agent_do_not_call").await {
        let app = spawn(db.store.clone()).await;
        let backend = db.backend;

        // The mark through the leads API: created, read back, cleared.
        let (s, lead) = app
            .admin(
                Method::POST,
                "/api/v1/leads",
                Some(json!({"name": "Marked", "do_not_call": true,
                            "created": "2026-01-01T00:00:00Z",
                            "contacts": [{"phones": ["+14155550100"]}]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {lead}");
        assert_eq!(lead["do_not_call"], true, "{lead}");
        let marked = lead["id"].as_i64().expect("id");
        let (s, v) = app
            .admin(
                Method::PATCH,
                &format!("/api/v1/leads/{marked}"),
                Some(json!({"do_not_call": "yes"})),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        let (_, v) = app
            .admin(Method::GET, &format!("/api/v1/leads/{marked}"), None)
            .await;
        assert_eq!(v["do_not_call"], true, "a bad PATCH changes nothing: {v}");
        let (s, v) = app
            .admin(
                Method::PATCH,
                &format!("/api/v1/leads/{marked}"),
                Some(json!({"do_not_call": false})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["do_not_call"], false, "{v}");
        let (s, v) = app
            .admin(
                Method::PATCH,
                &format!("/api/v1/leads/{marked}"),
                Some(json!({"name": "Marked again", "do_not_call": true})),
            )
            .await;
        assert_eq!(
            (s, &v["do_not_call"]),
            (StatusCode::OK, &json!(true)),
            "{v}"
        );
        let (s, v) = app
            .admin(
                Method::PATCH,
                &format!("/api/v1/leads/{marked}"),
                Some(json!({"status": "Potential"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["do_not_call"], true, "absent keeps the mark: {v}");

        // CSV: a do_not_call column; a bad value is reported by line.
        let csv = "name,phone,do_not_call,created\nCsv yes,+14155550101,yes,2026-01-02\nCsv no,+14155550102,,2026-01-03\nCsv bad,+14155550103,maybe,2026-01-04\n";
        let resp = app
            .client
            .post(format!("{}/api/v1/leads/import", app.base))
            .bearer_auth(TOKEN)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .expect("import");
        let status = resp.status();
        let report: Value = resp.json().await.expect("report");
        assert!(status.is_success(), "{status} {report}");
        assert_eq!(report["failed"][0]["line"], 4, "{report}");
        let (_, all) = app.admin(Method::GET, "/api/v1/leads?limit=10", None).await;
        let flag = |name: &str| {
            all["data"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["name"] == name)
                .map(|l| l["do_not_call"].clone())
        };
        assert_eq!(flag("Csv yes"), Some(json!(true)), "{all}");
        assert_eq!(flag("Csv no"), Some(json!(false)), "{all}");

        // A session over the leads: the dialer asks the engine to dial
        // them (the engine restricts the marked ones; see the e2e test).
        let (s, view) = app
            .admin(
                Method::POST,
                "/api/v1/smart-views",
                Some(json!({"name": "unmarked", "query": "name:\"Csv no\""})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{view}");
        let (s, sess) = app
            .admin(
                Method::POST,
                "/api/v1/sessions",
                Some(json!({"smart_view_id": view["id"]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{sess}");
        let sid = sess["id"].as_i64().expect("session");
        let (s, v) = app
            .admin(Method::POST, "/api/v1/agents/alice/tokens", None)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let alice = v["token"].as_str().expect("token").to_string();
        let (s, v) = app
            .admin(Method::POST, "/api/v1/agents/bob/tokens", None)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let bob = v["token"].as_str().expect("token").to_string();

        // Before alice has a lead: nothing to add.
        let dnc_path = format!("/api/v1/sessions/{sid}/agents/alice/dnc");
        let (s, v) = app.call(Method::POST, &dnc_path, None, &alice).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "alice has not joined: {v}");
        let (s, v) = app
            .call(
                Method::POST,
                &format!("/api/v1/sessions/{sid}/agents"),
                Some(json!({"agent": "alice"})),
                &alice,
            )
            .await;
        assert!(s.is_success(), "{s} {v}");
        for _ in 0..200 {
            if !app.dialer.dialed.lock().expect("lock").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(app.dialer.dialed.lock().expect("lock").len(), 1);

        // Bob's token may not act for alice; alice's may.
        let (s, _) = app.call(Method::POST, &dnc_path, None, &bob).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, added) = app.call(Method::POST, &dnc_path, None, &alice).await;
        assert_eq!(s, StatusCode::OK, "{added}");
        assert_eq!(added["number"], "+14155550102", "{added}");
        let reason = added["reason"].as_str().unwrap_or("").to_string();
        assert!(reason.contains("agent alice"), "{added}");
        let (_, list) = app.admin(Method::GET, "/api/v1/dnc", None).await;
        let entry = list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["number"] == "+14155550102")
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(entry["reason"], reason.as_str(), "{list}");

        // The phone's key does the same (the engine reports the digit).
        let (s, _) = app
            .admin(Method::DELETE, "/api/v1/dnc/+14155550102", None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        app.dialer
            .events
            .send(CallEvent::Dtmf {
                agent: "alice".into(),
                digit: DNC_KEY,
            })
            .expect("a session listens");
        let mut on_list = false;
        for _ in 0..100 {
            let (_, list) = app.admin(Method::GET, "/api/v1/dnc", None).await;
            on_list = list["data"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["number"] == "+14155550102");
            if on_list {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            on_list,
            "{backend}: DTMF {DNC_KEY} put the number on the list"
        );
        db.cleanup().await;
    }
}

/// A dial's record insert asks the do-not-call list and the lead's mark in
/// the same statement (SPEC §4): a covered number or a marked lead is
/// stored without its trunk and the answer says which (the number itself
/// before the longest covering prefix, as `Store::dnc_match` says); an
/// entry added after one dial holds at the next. A manual call's single
/// check reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dial_insert_asks_the_list_and_the_lead() {
    use powerdial::leads::dnc::DncPattern;
    use powerdial::leads::model::{NewCall, ValidLead};
    for db in common::all_dbs("the_dial_insert_asks_the_list_and_the_lead").await {
        let store = &db.store;
        let lead = |name: &str, dnc: bool| ValidLead {
            name: name.into(),
            status: String::new(),
            created_ms: 1_000,
            contacts: vec![],
            custom: vec![],
            opportunities: vec![],
            do_not_call: dnc,
        };
        let ids = store
            .insert_leads(&[lead("free", false), lead("marked", true)], 1_000)
            .await
            .expect("leads");
        let (free, marked) = (ids[0], ids[1]);
        let call = |lead_id: i64, number: &str| NewCall {
            session_id: None,
            lead_id: Some(lead_id),
            agent: Some("alice".into()),
            number: number.into(),
            started_ms: 2_000,
            answered_ms: None,
            ended_ms: None,
            outcome: None,
            sip_status: None,
            ring_ms: None,
            trunk: Some("main".into()),
        };
        let pattern = |p: &str| DncPattern::parse(p, "US").expect("pattern");

        // Nothing listed: stored with its trunk.
        let d = store
            .insert_dial(&call(free, "+14155550100"), None, true)
            .await
            .expect("insert");
        assert_eq!(d.record.trunk.as_deref(), Some("main"));
        assert_eq!((d.dnc, d.lead_do_not_call), (None, false));
        assert_eq!(d.record.number, "+14155550100");
        assert_eq!(d.record.lead_id, Some(free));
        assert_eq!(
            store
                .dnc_check("+14155550100", Some(free))
                .await
                .expect("check"),
            (None, false)
        );

        // Added now, it holds at the next dial: the number itself before
        // the longest prefix, which goes before a shorter one; a row whose
        // text is a prefix of the number but not marked a prefix does not
        // cover it.
        store
            .add_dnc(
                &[
                    (pattern("+1415*"), None),
                    (pattern("+141555*"), None),
                    (pattern("+14155550100"), None),
                    // As a stored row would read (not a whole number).
                    (DncPattern::from_stored("+1415555".into(), false), None),
                ],
                3_000,
            )
            .await
            .expect("add");
        let d = store
            .insert_dial(&call(free, "+14155550100"), None, true)
            .await
            .expect("insert");
        assert_eq!(d.record.trunk, None, "a listed number keeps no trunk");
        assert_eq!(d.dnc, Some(pattern("+14155550100")));
        assert_eq!(
            store.dnc_match("+14155550100").await.expect("match"),
            d.dnc,
            "the same pattern as the list's own lookup"
        );
        let d = store
            .insert_dial(&call(free, "+14155550111"), None, true)
            .await
            .expect("insert");
        assert_eq!(
            (d.record.trunk.as_deref(), d.dnc),
            (None, Some(pattern("+141555*")))
        );
        let d = store
            .insert_dial(&call(free, "+14165550111"), None, true)
            .await
            .expect("insert");
        assert_eq!((d.record.trunk.as_deref(), d.dnc), (Some("main"), None));
        assert_eq!(
            store
                .dnc_check("+14155550111", Some(free))
                .await
                .expect("check"),
            (Some(pattern("+141555*")), false)
        );

        // The lead's mark, when asked; a listed number is reported as
        // listed whatever the mark.
        let d = store
            .insert_dial(&call(marked, "+14165550111"), None, true)
            .await
            .expect("insert");
        assert_eq!(d.record.trunk, None, "a marked lead keeps no trunk");
        assert_eq!((d.dnc, d.lead_do_not_call), (None, true));
        let d = store
            .insert_dial(&call(marked, "+14165550111"), None, false)
            .await
            .expect("insert");
        assert_eq!(
            d.record.trunk.as_deref(),
            Some("main"),
            "not asked: the caller knew"
        );
        assert!(!d.lead_do_not_call);
        let d = store
            .insert_dial(&call(marked, "+14155550100"), None, true)
            .await
            .expect("insert");
        assert_eq!(d.dnc, Some(pattern("+14155550100")));
        assert_eq!(d.record.trunk, None);
        assert_eq!(
            store
                .dnc_check("+14165550111", Some(marked))
                .await
                .expect("check"),
            (None, true)
        );
        assert_eq!(
            store.dnc_check("+14165550111", None).await.expect("check"),
            (None, false)
        );

        // Every dial left its record, with the lead's last call moved.
        let calls = store
            .list_calls(
                powerdial::store::CallFilter {
                    session_id: None,
                    lead_id: Some(free),
                },
                None,
                100,
            )
            .await
            .expect("calls");
        assert_eq!(calls.len(), 4);
        db.cleanup().await;
    }
}
