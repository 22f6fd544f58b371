//! R13 across instances: two powerdial processes on one PostgreSQL database run one
//! session over 200 leads with 4 agents (2 registered to each process): no
//! lead is dialed twice and none is skipped (R13 across instances, R5 by
//! another instance of the same session).
//!
//! Both instances run from the start; A creates the leads, the view and the
//! session, and B learns of the session when agents join it there
//! (`Sessions::get_or_load`). Each
//! instance's trunk points at its own PJSIP carrier (PJSIP allows at most 4
//! calls per process), which answers every lead at once and hangs up
//! `HOLD_S` later. What is asserted comes from both carriers' logs of
//! INVITEs and hang-ups and from the call records
//! (`GET /api/v1/calls?session_id=`).
//!
//! Runs only when `POWERDIAL_TEST_DATABASE_URL` is set (a loud SKIPPED line
//! otherwise), in a fresh schema dropped at the end.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::app::{free_port, http_request, spawn_app_with, App, AppOptions};
use crate::peers::{agent_status, carrier_events, spawn_py, wait_for, Peer};
use crate::sessions::{invites, PgSchema};

/// The carrier hangs an answered call up this long after answering.
const HOLD_S: f64 = 0.5;
/// Leads in the session.
const LEADS: usize = 200;
/// How long the peers live, seconds.
const PEER_LIFE_S: &str = "600";

/// The agents of each instance: (username, password).
const ON_A: &[(&str, &str)] = &[("alice", "alice-secret"), ("bob", "bob-secret")];
const ON_B: &[(&str, &str)] = &[("carol", "carol-secret"), ("dave", "dave-secret")];

fn carrier(dir: &Path, name: &str) -> (Peer, u16, PathBuf) {
    let events = dir.join(format!("{name}.jsonl"));
    let port = free_port();
    let peer = spawn_py(
        "pj_carrier.py",
        &[
            port.to_string(),
            events.display().to_string(),
            PEER_LIFE_S.into(),
            HOLD_S.to_string(),
        ],
    );
    wait_for(name, Duration::from_secs(15), || {
        carrier_events(&events)
            .iter()
            .any(|e| e["event"] == "ready")
    });
    (peer, port, events)
}

/// An instance on the shared database whose trunk is the carrier on
/// `carrier_port`; both instances know all four agents.
fn instance(database_url: &str, carrier_port: u16) -> App {
    spawn_app_with(AppOptions {
        extra_toml: format!(
            r#"[dialer]
ring_timeout = 2
allow_short_ring_timeout = true
block = 4
refresh_interval = 1
wrap_up_idle = 0.2

[[trunk]]
name = "carrier"
uri = "sip:127.0.0.1:{carrier_port}"
caller_id = "+442079460999"
allow = ['\+44\d+']

[[agent]]
username = "carol"
password = "carol-secret"

[[agent]]
username = "dave"
password = "dave-secret"
"#
        ),
        database_url: Some(database_url.to_string()),
        ..AppOptions::default()
    })
}

fn agent(dir: &Path, app: &App, user: &str, password: &str) -> Peer {
    let status = dir.join(format!("{user}.json"));
    let peer = spawn_py(
        "pj_agent.py",
        &[
            app.sip.to_string(),
            user.to_string(),
            password.to_string(),
            status.display().to_string(),
            PEER_LIFE_S.into(),
        ],
    );
    wait_for(
        &format!("{user}'s registration"),
        Duration::from_secs(15),
        || agent_status(&status)["reg"] == 200,
    );
    peer
}

fn post(app: &App, path: &str, body: &Value) -> (u16, Value) {
    let (code, text) = http_request(
        app.http,
        "POST",
        path,
        Some(&app.token),
        Some(&body.to_string()),
    );
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn calls(app: &App, session: i64) -> Vec<Value> {
    let path = format!("/api/v1/calls?session_id={session}&limit=1000");
    let (code, text) = app.http_get(&path);
    assert_eq!(code, 200, "GET {path}: {text}");
    serde_json::from_str::<Value>(&text).expect("JSON")["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn two_instances_one_session_200_leads_postgres() {
    let Some(pg) = PgSchema::create("two_instances_one_session_200_leads_postgres") else {
        return;
    };
    let started = Instant::now();
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_carrier_a, port_a, events_a) = carrier(dir.path(), "carrier-a");
    let (_carrier_b, port_b, events_b) = carrier(dir.path(), "carrier-b");

    let a = instance(&url, port_a);
    let b = instance(&url, port_b);
    // 020 7iii 0200: a well-formed London number per lead, answered at once.
    let digits: Vec<String> = (0..LEADS).map(|i| format!("44207{i:03}0200")).collect();
    let body = Value::Array(
        digits
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({"name": format!("Lead {i:03}"),
                       "contacts": [{"name": "Contact", "phones": [format!("+{d}")]}]})
            })
            .collect(),
    );
    let (code, created) = post(&a, "/api/v1/leads", &body);
    assert_eq!(code, 201, "POST /api/v1/leads: {created}");
    let lead_ids: Vec<i64> = created
        .as_array()
        .expect("array of leads")
        .iter()
        .map(|l| l["id"].as_i64().expect("lead id"))
        .collect();
    assert_eq!(lead_ids.len(), LEADS);
    let digits_of: HashMap<i64, &str> = lead_ids
        .iter()
        .copied()
        .zip(digits.iter().map(String::as_str))
        .collect();
    let (code, view) = post(
        &a,
        "/api/v1/smart-views",
        &json!({"name": "all by name", "query": "sort:name"}),
    );
    assert_eq!(code, 201, "POST /api/v1/smart-views: {view}");
    let (code, session) = post(
        &a,
        "/api/v1/sessions",
        &json!({"smart_view_id": view["id"], "reduced_ring_time": false}),
    );
    assert_eq!(code, 201, "POST /api/v1/sessions: {session}");
    let sid = session["id"].as_i64().expect("session id");

    let mut agents = Vec::new();
    for (app, phones) in [(&a, ON_A), (&b, ON_B)] {
        for (user, password) in phones {
            agents.push(agent(dir.path(), app, user, password));
        }
    }
    for (app, phones) in [(&a, ON_A), (&b, ON_B)] {
        for (user, _) in phones {
            let (code, body) = post(
                app,
                &format!("/api/v1/sessions/{sid}/agents"),
                &json!({ "agent": user }),
            );
            assert!(code == 200 || code == 201, "join {user}: {code} {body}");
        }
    }

    // Until every lead has an answered call record.
    let mut records = Vec::new();
    wait_for(
        "an answered call record for every lead",
        Duration::from_secs(300),
        || {
            records = calls(&a, sid);
            let answered: HashSet<i64> = records
                .iter()
                .filter(|r| r["outcome"] == "answered")
                .filter_map(|r| r["lead_id"].as_i64())
                .collect();
            lead_ids.iter().all(|id| answered.contains(id))
        },
    );
    let dial_time = started.elapsed();
    for (app, phones) in [(&a, ON_A), (&b, ON_B)] {
        for (user, _) in phones {
            let (code, body) = post(
                app,
                &format!("/api/v1/sessions/{sid}/agents/{user}/pause"),
                &json!({}),
            );
            assert!((200..300).contains(&code), "pause {user}: {code} {body}");
        }
    }
    // Late INVITEs (a lead dialed a second time) would show up by now.
    std::thread::sleep(Duration::from_secs(2));
    wait_for("every call's outcome", Duration::from_secs(15), || {
        records = calls(&b, sid);
        records.iter().all(|r| !r["outcome"].is_null())
    });
    let ev_a = carrier_events(&events_a);
    let ev_b = carrier_events(&events_b);
    let inv_a = invites(&ev_a);
    let inv_b = invites(&ev_b);

    // Exactly one INVITE per lead across both carriers: none skipped, none
    // dialed twice (R5, R13).
    let mut per_number: HashMap<&str, usize> = HashMap::new();
    for (d, _) in inv_a.iter().chain(inv_b.iter()) {
        *per_number.entry(d.as_str()).or_default() += 1;
    }
    let skipped: Vec<&str> = digits
        .iter()
        .map(String::as_str)
        .filter(|d| !per_number.contains_key(d))
        .collect();
    assert!(skipped.is_empty(), "leads never dialed: {skipped:?}");
    let twice: Vec<(&&str, &usize)> = per_number.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "leads dialed more than once (number, INVITEs): {twice:?}; in A's carrier: {}, in B's: {}",
        inv_a.len(),
        inv_b.len()
    );
    assert_eq!(
        per_number.len(),
        LEADS,
        "INVITEs to numbers not of the test"
    );

    // Never two live calls to one lead (R13): both carriers log
    // time.monotonic(), one clock on one machine, so their events merge.
    let mut merged: Vec<&Value> = ev_a.iter().chain(ev_b.iter()).collect();
    merged.sort_by(|x, y| {
        let tx = x["t"].as_f64().unwrap_or(0.0);
        let ty = y["t"].as_f64().unwrap_or(0.0);
        tx.total_cmp(&ty)
    });
    let mut live: HashMap<&str, bool> = HashMap::new();
    for e in &merged {
        let Some(number) = e["number"].as_str() else {
            continue;
        };
        match e["event"].as_str() {
            Some("invite") => {
                let was = live.insert(number, true).unwrap_or(false);
                assert!(!was, "R13: +{number} INVITEd while a call to it was live");
            }
            Some("ended") => {
                live.insert(number, false);
            }
            _ => {}
        }
    }

    // The call records agree: one answered record per lead, nothing else.
    let mut recorded: HashMap<i64, usize> = HashMap::new();
    for r in &records {
        assert_eq!(r["session_id"], sid, "{r}");
        assert_eq!(r["outcome"], "answered", "{r}");
        let lead = r["lead_id"].as_i64().expect("a session call has a lead");
        assert!(digits_of.contains_key(&lead), "a lead of the test: {r}");
        *recorded.entry(lead).or_default() += 1;
    }
    for id in &lead_ids {
        assert_eq!(
            recorded.get(id).copied().unwrap_or(0),
            1,
            "lead {id} (+{}) has other than one call record",
            digits_of.get(id).copied().unwrap_or("?")
        );
    }
    // Both instances dialed (the session really ran on both).
    assert!(
        !inv_a.is_empty() && !inv_b.is_empty(),
        "one instance dialed nothing: A {} INVITEs, B {}",
        inv_a.len(),
        inv_b.len()
    );
    drop(agents);
    eprintln!(
        "postgres, two instances: {LEADS} leads, {} INVITEs via A and {} via B, all answered in {:.1} s, {:.1} s in all",
        inv_a.len(),
        inv_b.len(),
        dial_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
