//! Dialer sessions end to end (SPEC §1–§2): a dialer session over 30 leads on a real `powerdial
//! serve`, three auto-answering PJSIP agent phones (one pjsua2 process each:
//! PJSIP allows at most 4 calls per process) and a PJSIP carrier choosing its
//! answer by the last four digits of the dialed number
//! (tests/peers/pj_carrier.py). Durations are shrunk by `[dialer]` config.
//! What is asserted comes from the carrier's own log of INVITEs, CANCELs and
//! hang-ups, and from the call records (`GET /api/v1/calls?session_id=`):
//!
//! - every lead is dialed;
//! - no lead is ringing or connected twice at once (R13);
//! - uncalled leads go in view order before any retry (R1, R3);
//! - answered leads are never dialed again (R5);
//! - busy, no-answer and restricted leads are retried, never within `block`
//!   (R4, R8, R11, R12);
//! - each call's outcome is recorded (SPEC §4).
//!
//! Runs on SQLite, and on PostgreSQL when `POWERDIAL_TEST_DATABASE_URL` is
//! set (in a fresh schema; a loud SKIPPED line otherwise).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::peers::{agent_status, carrier_events, spawn_py, wait_for, Peer};
use serde_json::{json, Value};

use crate::app::{free_port, http_request, spawn_app_with, App, AppOptions};

/// R4 block of the test config, seconds.
const BLOCK_S: f64 = 4.0;
/// The carrier hangs an answered call up this long after answering.
const HOLD_S: f64 = 0.5;

/// What the carrier does with a number, by its last four digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Answer,
    Busy,
    NoAnswer,
    Restricted,
    TemporaryError,
}

impl Behaviour {
    fn tail(self) -> &'static str {
        match self {
            Behaviour::Answer => "0200",
            Behaviour::Busy => "0486",
            Behaviour::NoAnswer => "0180",
            Behaviour::Restricted => "0403",
            Behaviour::TemporaryError => "0503",
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            Behaviour::Answer => "answered",
            Behaviour::Busy => "busy",
            Behaviour::NoAnswer => "no_answer",
            Behaviour::Restricted => "restricted",
            Behaviour::TemporaryError => "temporary_error",
        }
    }

    /// Blocked for `block` and retried in the retry pass (R4, R8, R11, R12).
    fn retried(self) -> bool {
        matches!(
            self,
            Behaviour::Busy | Behaviour::NoAnswer | Behaviour::Restricted
        )
    }
}

/// One test lead: its view position is its index (names sort that way).
struct TestLead {
    name: String,
    /// E.164 digits without `+`, as the carrier logs them.
    digits: String,
    behaviour: Behaviour,
}

fn test_leads(n: usize) -> Vec<TestLead> {
    use Behaviour::*;
    let pattern = [
        Answer,
        Busy,
        Answer,
        NoAnswer,
        Restricted,
        Answer,
        Busy,
        Answer,
        NoAnswer,
        TemporaryError,
    ];
    (0..n)
        .map(|i| {
            let behaviour = pattern[i % pattern.len()];
            TestLead {
                name: format!("Lead {i:03}"),
                // +44 20 79ii tttt: a well-formed London number.
                digits: format!("442079{:02}{}", i % 100, behaviour.tail()),
                behaviour,
            }
        })
        .collect()
}

/// A fresh PostgreSQL schema for one app, dropped at the end.
pub(crate) struct PgSchema {
    base: String,
    schema: String,
}

impl PgSchema {
    /// `None` (with a loud SKIPPED line) when no test database is set.
    pub(crate) fn create(test: &str) -> Option<PgSchema> {
        let base = crate::skip::pg_url(test)?;
        let schema = format!("t_{:016x}", rand::random::<u64>());
        psql(&base, &format!("CREATE SCHEMA {schema}"));
        Some(PgSchema { base, schema })
    }

    pub(crate) fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.base, self.schema
        )
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        psql(
            &self.base,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
        );
    }
}

pub(crate) fn psql(url: &str, sql: &str) {
    let ok = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "psql {sql:?} failed (is `psql` installed and the URL right?)"
    );
}

/// The carrier, the app (its `[dialer]` durations shrunk) and the agents.
struct Rig {
    app: App,
    _carrier: Peer,
    _agents: Vec<Peer>,
    _dir: tempfile::TempDir,
    events: PathBuf,
}

const PHONES: &[(&str, &str)] = &[
    ("alice", "alice-secret"),
    ("bob", "bob-secret"),
    ("carol", "carol-secret"),
];

fn rig(database_url: Option<String>) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("carrier.jsonl");
    let carrier_port = free_port();
    let carrier = spawn_py(
        "pj_carrier.py",
        &[
            carrier_port.to_string(),
            events.display().to_string(),
            "240".into(),
            HOLD_S.to_string(),
        ],
    );
    wait_for("the carrier", Duration::from_secs(15), || {
        carrier_events(&events)
            .iter()
            .any(|e| e["event"] == "ready")
    });
    let app = spawn_app_with(AppOptions {
        extra_toml: format!(
            r#"[dialer]
ring_timeout = 1
allow_short_ring_timeout = true
block = {BLOCK_S}
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
"#
        ),
        database_url,
        ..AppOptions::default()
    });
    let mut agents = Vec::new();
    for (user, password) in PHONES {
        let status = dir.path().join(format!("{user}.json"));
        agents.push(spawn_py(
            "pj_agent.py",
            &[
                app.sip.to_string(),
                user.to_string(),
                password.to_string(),
                status.display().to_string(),
                "240".into(),
            ],
        ));
        wait_for(
            &format!("{user}'s registration"),
            Duration::from_secs(15),
            || agent_status(&status)["reg"] == 200,
        );
    }
    Rig {
        app,
        _carrier: carrier,
        _agents: agents,
        _dir: dir,
        events,
    }
}

impl Rig {
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (code, text) = http_request(
            self.app.http,
            "POST",
            path,
            Some(&self.app.token),
            Some(&body.to_string()),
        );
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> Value {
        let (code, text) = self.app.http_get(path);
        assert_eq!(code, 200, "GET {path}: {text}");
        serde_json::from_str(&text).expect("JSON")
    }

    fn calls(&self, session: i64) -> Vec<Value> {
        let v = self.get(&format!("/api/v1/calls?session_id={session}&limit=1000"));
        v["data"].as_array().cloned().unwrap_or_default()
    }
}

/// INVITEs per number (carrier digits), in arrival order, with their times.
pub(crate) fn invites(events: &[Value]) -> Vec<(String, f64)> {
    events
        .iter()
        .filter(|e| e["event"] == "invite")
        .filter_map(|e| Some((e["number"].as_str()?.to_string(), e["t"].as_f64()?)))
        .collect()
}

fn session_over_leads(database_url: Option<String>, backend: &str) {
    let started = Instant::now();
    let rig = rig(database_url);
    let leads = test_leads(30);

    let body = Value::Array(
        leads
            .iter()
            .map(|l| {
                json!({"name": l.name,
                       "contacts": [{"name": "Contact", "phones": [format!("+{}", l.digits)]}]})
            })
            .collect(),
    );
    let (code, created) = rig.post("/api/v1/leads", &body);
    assert_eq!(code, 201, "POST /api/v1/leads: {created}");
    let lead_ids: Vec<i64> = created
        .as_array()
        .expect("array of leads")
        .iter()
        .map(|l| l["id"].as_i64().expect("lead id"))
        .collect();
    let by_id: HashMap<i64, &TestLead> = lead_ids.iter().copied().zip(leads.iter()).collect();
    let (code, view) = rig.post(
        "/api/v1/smart-views",
        &json!({"name": "all by name", "query": "sort:name"}),
    );
    assert_eq!(code, 201, "POST /api/v1/smart-views: {view}");
    let (code, session) = rig.post(
        "/api/v1/sessions",
        &json!({"smart_view_id": view["id"], "reduced_ring_time": false}),
    );
    assert_eq!(code, 201, "POST /api/v1/sessions: {session}");
    let sid = session["id"].as_i64().expect("session id");
    for (user, _) in PHONES {
        let (code, body) = rig.post(
            &format!("/api/v1/sessions/{sid}/agents"),
            &json!({ "agent": user }),
        );
        assert!(code == 200 || code == 201, "join {user}: {code} {body}");
    }

    // Run until every lead was dialed and every lead that is retried had
    // its second call (the retry pass happened).
    let digits_of = |l: &TestLead| l.digits.clone();
    wait_for(
        "every lead dialed and retried",
        Duration::from_secs(120),
        || {
            let inv = invites(&carrier_events(&rig.events));
            let mut n: HashMap<&str, usize> = HashMap::new();
            for (d, _) in &inv {
                *n.entry(d.as_str()).or_default() += 1;
            }
            leads.iter().all(|l| {
                let c = n.get(l.digits.as_str()).copied().unwrap_or(0);
                if l.behaviour.retried() {
                    c >= 2
                } else {
                    c >= 1
                }
            })
        },
    );
    let dial_time = started.elapsed();
    for (user, _) in PHONES {
        let (code, body) = rig.post(
            &format!("/api/v1/sessions/{sid}/agents/{user}/pause"),
            &json!({}),
        );
        assert!((200..300).contains(&code), "pause {user}: {code} {body}");
    }
    // Every call the session placed has its outcome once the last ends.
    let mut records = Vec::new();
    wait_for("every call's outcome", Duration::from_secs(15), || {
        records = rig.calls(sid);
        records.iter().all(|r| !r["outcome"].is_null())
    });
    std::thread::sleep(Duration::from_millis(500));
    let events = carrier_events(&rig.events);
    let inv = invites(&events);

    // Every lead dialed.
    for l in &leads {
        assert!(
            inv.iter().any(|(d, _)| *d == l.digits),
            "{backend}: {} (+{}) never dialed",
            l.name,
            l.digits
        );
    }

    // R13: per number the carrier sees invite, end, invite, end, … — never
    // two live calls to one lead.
    let mut live: HashMap<&str, bool> = HashMap::new();
    for e in &events {
        let Some(number) = e["number"].as_str() else {
            continue;
        };
        match e["event"].as_str() {
            Some("invite") => {
                let was = live.insert(number, true).unwrap_or(false);
                assert!(
                    !was,
                    "{backend}: R13: +{number} INVITEd while a call to it was live; its carrier events: {:?}; its call records: {:?}",
                    events.iter().filter(|e| e["number"] == number).collect::<Vec<_>>(),
                    records.iter().filter(|r| r["number"].as_str().is_some_and(|n| n.ends_with(number))).collect::<Vec<_>>()
                );
            }
            Some("ended") => {
                live.insert(number, false);
            }
            _ => {}
        }
    }

    // R1, R3: the first INVITE of each lead in view order, and every first
    // INVITE before any retry of a blocked lead. (A temporary error is not a
    // call, R10: it is called again at its place, so it does not count as a
    // retry.)
    // Agents free at the same moment get consecutive leads, claimed in view
    // order; their dials then run side by side (the session waits on no
    // agent's database round trips), so two first INVITEs sent within
    // SIDE_BY_SIDE of each other may reach the carrier swapped. A lead
    // dialed after a later one by more than that is out of order. Each
    // dial's claim and call record are database round trips of its own:
    // on PostgreSQL under CI's load (a loaded 2-core machine) one of two
    // dials started together has been seen 0.29 s behind the other, so
    // the bound is set well above that, and still below the 1 s ring
    // timeout of the leads that ring out here.
    const SIDE_BY_SIDE: f64 = 0.5;
    let mut firsts: Vec<&str> = Vec::new();
    let mut first_at: Vec<f64> = Vec::new();
    for (d, t) in &inv {
        if !firsts.contains(&d.as_str()) {
            firsts.push(d);
            first_at.push(*t);
        }
    }
    let view_order: Vec<&str> = leads.iter().map(|l| l.digits.as_str()).collect();
    let mut called = firsts.clone();
    called.sort_unstable();
    let mut all = view_order.clone();
    all.sort_unstable();
    assert_eq!(called, all, "{backend}: every lead called once at least");
    let pos = |d: &str| view_order.iter().position(|v| *v == d);
    for i in 0..firsts.len() {
        for j in i + 1..firsts.len() {
            if pos(firsts[i]) > pos(firsts[j]) {
                assert!(
                    first_at[j] - first_at[i] < SIDE_BY_SIDE,
                    "{backend}: R1: first calls not in view order: {} called {:.3} s before {}: {firsts:?}",
                    firsts[i],
                    first_at[j] - first_at[i],
                    firsts[j],
                );
            }
        }
    }
    let behaviour: HashMap<String, Behaviour> =
        leads.iter().map(|l| (digits_of(l), l.behaviour)).collect();
    let last_first = inv
        .iter()
        .enumerate()
        .filter(|(i, (d, _))| inv[..*i].iter().all(|(p, _)| p != d))
        .map(|(i, _)| i)
        .max()
        .expect("some invites");
    let first_retry = inv
        .iter()
        .enumerate()
        .filter(|(i, (d, _))| {
            behaviour.get(d).is_some_and(|b| b.retried()) && inv[..*i].iter().any(|(p, _)| p == d)
        })
        .map(|(i, _)| i)
        .min()
        .expect("a retry happened");
    // As for R1: a retry claimed right after the last uncalled lead may
    // reach the carrier first when the two dials run side by side.
    let ahead = inv[last_first].1 - inv[first_retry].1;
    assert!(
        last_first < first_retry || ahead < SIDE_BY_SIDE,
        "{backend}: R3: a retry (INVITE #{first_retry}) {ahead:.3} s before the last uncalled lead (INVITE #{last_first})"
    );

    // R5: answered leads dialed once. R4: retries not within `block` of the
    // previous call's end (the carrier's clock; the block runs from the
    // report, a little after the carrier's end).
    let mut per_number: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for e in &events {
        if let Some(n) = e["number"].as_str() {
            per_number.entry(n).or_default().push(e);
        }
    }
    let mut temp_error_invites = 0;
    for l in &leads {
        let evs = per_number
            .get(l.digits.as_str())
            .cloned()
            .unwrap_or_default();
        let n_inv = evs.iter().filter(|e| e["event"] == "invite").count();
        match l.behaviour {
            Behaviour::Answer => assert_eq!(
                n_inv, 1,
                "{backend}: R5: answered {} dialed {n_inv} times",
                l.name
            ),
            Behaviour::TemporaryError => temp_error_invites += n_inv,
            _ => {
                let mut last_end: Option<f64> = None;
                for e in &evs {
                    let t = e["t"].as_f64().unwrap_or(0.0);
                    match e["event"].as_str() {
                        Some("invite") => {
                            if let Some(end) = last_end {
                                assert!(
                                    t - end >= BLOCK_S - 0.05,
                                    "{backend}: R4: {} retried {:.3} s after its previous call ended",
                                    l.name,
                                    t - end
                                );
                            }
                        }
                        Some("ended") => last_end = Some(t),
                        _ => {}
                    }
                }
            }
        }
    }

    // Outcomes recorded: one record per INVITE at the carrier, each with
    // the outcome its number chooses.
    let mut recorded: HashMap<i64, usize> = HashMap::new();
    for r in &records {
        let lead = r["lead_id"].as_i64().expect("a session call has a lead");
        let l = by_id.get(&lead).expect("a lead of the test");
        assert_eq!(r["outcome"], l.behaviour.outcome(), "{backend}: {r}");
        assert_eq!(r["session_id"], sid, "{r}");
        *recorded.entry(lead).or_default() += 1;
    }
    for (id, l) in &by_id {
        let at_carrier = inv.iter().filter(|(d, _)| *d == l.digits).count();
        assert_eq!(
            recorded.get(id).copied().unwrap_or(0),
            at_carrier,
            "{backend}: {} has {at_carrier} INVITEs at the carrier but other call records",
            l.name
        );
    }
    eprintln!(
        "{backend}: {} calls for 30 leads in {:.1} s ({temp_error_invites} of them to the {} temporary-error leads), {:.1} s in all",
        records.len(),
        dial_time.as_secs_f64(),
        leads
            .iter()
            .filter(|l| l.behaviour == Behaviour::TemporaryError)
            .count(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn session_over_30_leads_with_pjsip_agents_sqlite() {
    session_over_leads(None, "sqlite");
}

#[test]
fn session_over_30_leads_with_pjsip_agents_postgres() {
    let Some(pg) = PgSchema::create("session_over_30_leads_with_pjsip_agents_postgres") else {
        return;
    };
    session_over_leads(Some(pg.url()), "postgres");
}
