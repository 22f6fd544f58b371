//! A session over a scripted call engine (a test double of the `Dialer`
//! seam, used here only; the e2e tests use the real engine) with durations
//! shrunk by config (tokio's paused clock needs its `test-util` feature,
//! which the crate does not enable): a 20 s block, 300 ms rings. Checks the order of dials over 30 leads
//! with mixed outcomes against R1, R3, R4, R5, R10, and that R11 and R12
//! leads are retried after their block.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use powerdial::call::Outcome;
use powerdial::dialer::dial::{CallEvent, DialError, DialRequest, Dialer};
use powerdial::dialer::directory::Sessions;
use powerdial::dialer::session::{Clock, SessionConfig};
use powerdial::leads::model::{Contact, NewCall, NewSmartView, ValidLead};
use powerdial::leads::phone::PhoneE164;
use powerdial::store::Store;
use tokio::sync::broadcast;
use tokio::time::Instant;

const BASE_MS: i64 = 1_800_000_000_000;
/// Ring time: longer than the refresh debounce, so a temporary error is
/// retried right after the next lead's call (see the expected order).
const RING: Duration = Duration::from_millis(300);
/// The R4 block, shrunk: longer than the whole first pass.
const BLOCK: Duration = Duration::from_secs(20);

#[derive(Clone)]
struct SimClock {
    start: Instant,
}

impl SimClock {
    #[allow(clippy::disallowed_methods)] // the simulated clock's origin
    fn start() -> SimClock {
        SimClock {
            start: Instant::now(),
        }
    }
}

impl Clock for SimClock {
    #[allow(clippy::disallowed_methods)]
    fn instant(&self) -> Instant {
        Instant::now()
    }
    fn wall_ms(&self) -> i64 {
        BASE_MS + i64::try_from((self.instant() - self.start).as_millis()).unwrap_or(0)
    }
}

/// One dial as the scripted carrier saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dialed {
    lead: i64,
    at_ms: i64,
}

#[derive(Clone)]
struct Scripted {
    store: Store,
    clock: SimClock,
    events: broadcast::Sender<CallEvent>,
    /// Outcomes per lead, consumed one per call; the last one repeats.
    script: Arc<Mutex<HashMap<i64, Vec<Outcome>>>>,
    dialed: Arc<Mutex<Vec<Dialed>>>,
    /// An agent whose dials wait for this notification before the engine
    /// takes them (a slow trunk or database for that one agent).
    stuck: Option<(String, Arc<tokio::sync::Notify>)>,
}

impl Dialer for Scripted {
    async fn connect_agent(&self, agent: &str) -> Result<(), DialError> {
        let _ = self.events.send(CallEvent::AgentConnected {
            agent: agent.into(),
        });
        Ok(())
    }

    async fn dial(&self, agent: &str, req: DialRequest) -> Result<i64, DialError> {
        let lead = req.lead_id.ok_or(DialError::NotReady)?;
        if let Some((a, gate)) = &self.stuck {
            if a == agent {
                gate.notified().await;
            }
        }
        let now = self.clock.wall_ms();
        self.dialed
            .lock()
            .map_err(|_| DialError::Closed)?
            .push(Dialed { lead, at_ms: now });
        let outcome = {
            let mut s = self.script.lock().map_err(|_| DialError::Closed)?;
            let v = s.entry(lead).or_insert_with(|| vec![Outcome::NoAnswer]);
            if v.len() > 1 {
                v.remove(0)
            } else {
                v[0]
            }
        };
        let rec = self
            .store
            .insert_call(&NewCall {
                session_id: req.session_id,
                lead_id: Some(lead),
                agent: Some(agent.into()),
                number: req.number.clone(),
                started_ms: now,
                answered_ms: None,
                ended_ms: None,
                outcome: None,
                sip_status: None,
                ring_ms: None,
                trunk: None,
            })
            .await
            .map_err(|_| DialError::Closed)?;
        let events = self.events.clone();
        let agent = agent.to_string();
        let call_id = rec.id;
        let session_id = req.session_id;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = events.send(CallEvent::LeadRinging {
                agent: agent.clone(),
                call_id,
            });
            tokio::time::sleep(RING).await;
            if outcome == Outcome::Answered {
                let _ = events.send(CallEvent::LeadAnswered {
                    agent: agent.clone(),
                    call_id,
                });
            }
            let _ = events.send(CallEvent::CallEnded {
                agent,
                call_id,
                lead_id: Some(lead),
                session_id,
                outcome,
                sip_status: None,
            });
        });
        Ok(call_id)
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

async fn leads(store: &Store, n: usize) -> Vec<i64> {
    let leads: Vec<ValidLead> = (0..n)
        .map(|i| ValidLead {
            name: format!("lead {i}"),
            status: "Potential".into(),
            created_ms: BASE_MS - 1_000_000 + i as i64,
            contacts: vec![Contact {
                name: String::new(),
                phones: vec![PhoneE164::from_e164(&format!("+1555200{:04}", i)).expect("phone")],
                emails: Vec::new(),
            }],
            custom: vec![],
            opportunities: vec![],
            do_not_call: false,
        })
        .collect();
    store.insert_leads(&leads, BASE_MS).await.expect("leads")
}

/// The session's view: every lead, oldest first.
async fn all_leads_view(store: &Store) -> powerdial::leads::model::SmartView {
    store
        .create_smart_view(
            &NewSmartView {
                name: "all".into(),
                query: "lead_status:potential sort:created".into(),
            },
            BASE_MS,
        )
        .await
        .expect("view")
}

/// Durations shrunk (see the module docs); queue order, not calling hours,
/// is under test here.
fn session_config(store: &Store) -> SessionConfig {
    SessionConfig {
        block: BLOCK,
        refresh_interval: Duration::from_secs(300),
        wrap_up_idle: Duration::from_millis(50),
        lease: Duration::from_secs(30),
        instance: "test".into(),
        calling_hours: powerdial::dialer::hours::CallingHours::always(),
        audit: powerdial::store::audit::AuditLog::start(store.clone()),
    }
}

/// Lead i's scripted behaviour by i mod 5.
fn script_for(i: usize) -> Vec<Outcome> {
    match i % 5 {
        0 => vec![Outcome::Answered],
        1 => vec![Outcome::NoAnswer],
        2 => vec![Outcome::Busy],
        // A 503 once, then an answer (R10: retried after the next refresh).
        3 => vec![Outcome::TemporaryError, Outcome::Answered],
        _ => vec![Outcome::Restricted],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_leads_mixed_outcomes_dial_in_rule_order() {
    let db = common::sqlite_db().await;
    let store = db.store.clone();
    let ids = leads(&store, 30).await;
    let view = all_leads_view(&store).await;
    let clock = SimClock::start();
    let script: HashMap<i64, Vec<Outcome>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, script_for(i)))
        .collect();
    let dialer = Scripted {
        store: store.clone(),
        clock: clock.clone(),
        events: broadcast::channel(1024).0,
        script: Arc::new(Mutex::new(script)),
        dialed: Arc::new(Mutex::new(Vec::new())),
        stuck: None,
    };
    let config = session_config(&store);
    let sessions = Sessions::start(store.clone(), dialer.clone(), clock.clone(), config)
        .await
        .expect("sessions");
    let (row, token) = sessions.create(view.id, false, None).await.expect("create");
    assert_eq!(token.len(), 64, "R16: 256-bit token");
    let h = sessions.get(row.id).expect("handle");
    h.join("alice").await.expect("join");

    // Pass 1 (R1, R3): in view order. A temporary error (R10) waits for
    // the next *scheduled* view refresh ("within 5 minutes", help page) —
    // the refresh a call outcome triggers does not release it, or a
    // carrier answering 503 would be redialled at once. Pass 2 (R3, R4,
    // R11, R12): the unanswered leads once their block expired, in view
    // order. Then a scheduled refresh brings the temporary errors back, as
    // uncalled leads.
    let mut expected: Vec<i64> = ids.clone();
    let retry: Vec<i64> = (0..30)
        .filter(|i| matches!(i % 5, 1 | 2 | 4))
        .map(|i| ids[i])
        .collect();
    expected.extend(&retry);
    let temporary: Vec<i64> = (0..30).filter(|i| i % 5 == 3).map(|i| ids[i]).collect();

    let deadline = Duration::from_secs(90);
    let t0 = clock.instant();
    let wait_for = |n_wanted: usize| {
        let dialer = dialer.clone();
        async move {
            loop {
                let n = dialer.dialed.lock().expect("lock").len();
                if n >= n_wanted {
                    break;
                }
                assert!(t0.elapsed() < deadline, "only {n} dials after 90 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(expected.len()).await;
    // Nothing else is due until a scheduled refresh.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        dialer.dialed.lock().expect("lock").len(),
        expected.len(),
        "R10: a temporary error waits for the scheduled refresh"
    );
    h.refresh().await.expect("refresh");
    expected.extend(&temporary);
    wait_for(expected.len()).await;
    let dialed = dialer.dialed.lock().expect("lock").clone();
    let order: Vec<i64> = dialed.iter().map(|d| d.lead).collect();
    assert_eq!(order[..expected.len()], expected[..], "dial order");

    // R4: no lead dialed twice within the block.
    let mut last: HashMap<i64, i64> = HashMap::new();
    for d in &dialed {
        if let Some(prev) = last.insert(d.lead, d.at_ms) {
            let answered_before = script_for(ids.iter().position(|x| *x == d.lead).unwrap_or(0))
                .first()
                == Some(&Outcome::TemporaryError);
            if !answered_before {
                assert!(
                    d.at_ms - prev >= BLOCK.as_millis() as i64,
                    "lead {} dialed again after {} ms",
                    d.lead,
                    d.at_ms - prev
                );
            }
        }
    }
    // R5: answered leads are never dialed again.
    for (i, id) in ids.iter().enumerate() {
        let n = order.iter().filter(|x| *x == id).count();
        match i % 5 {
            0 => assert_eq!(n, 1, "answered lead {i} dialed {n} times"),
            3 => assert_eq!(n, 2, "temp-error lead {i} dialed {n} times"),
            _ => {}
        }
    }
    // The last call's outcome arrives just after its dial.
    let mut v = h.view().await.expect("view");
    for _ in 0..50 {
        if v.counts.answered == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        v = h.view().await.expect("view");
    }
    assert_eq!(v.counts.answered, 12);
    assert!(!v.counts.done);
    db.cleanup().await;
}

/// One agent's dial that the engine does not take (its trunk or the
/// database slow for it) holds up neither the session nor the other
/// agents: their claims and dials go on meanwhile, and the stuck dial
/// lands once the engine takes it, with no lead dialed twice (R13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_dial_does_not_hold_up_the_other_agents() {
    let db = common::sqlite_db().await;
    let store = db.store.clone();
    let ids = leads(&store, 12).await;
    let view = all_leads_view(&store).await;
    let clock = SimClock::start();
    let gate = Arc::new(tokio::sync::Notify::new());
    let dialer = Scripted {
        store: store.clone(),
        clock: clock.clone(),
        events: broadcast::channel(1024).0,
        script: Arc::new(Mutex::new(HashMap::new())),
        dialed: Arc::new(Mutex::new(Vec::new())),
        stuck: Some(("slow".into(), gate.clone())),
    };
    let config = session_config(&store);
    let sessions = Sessions::start(store.clone(), dialer.clone(), clock.clone(), config)
        .await
        .expect("sessions");
    let (row, _) = sessions.create(view.id, false, None).await.expect("create");
    let h = sessions.get(row.id).expect("handle");
    h.join("slow").await.expect("join slow");
    h.join("fast").await.expect("join fast");

    // Each of fast's calls rings 300 ms then goes unanswered: 4 calls in
    // about 1.5 s, while slow's first dial is still in the engine's hands.
    let t0 = clock.instant();
    loop {
        let n = dialer.dialed.lock().expect("lock").len();
        if n >= 4 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "only {n} dials by the other agent while one agent's dial is stuck"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = h.view().await.expect("view");
    let slow = v
        .agents
        .iter()
        .find(|a| a.agent == "slow")
        .expect("slow in the view");
    let slow_lead = slow
        .lead_id
        .expect("slow's lead is shown while its dial is stuck");
    let dialed_slow_lead = |dialer: &Scripted| {
        dialer
            .dialed
            .lock()
            .expect("lock")
            .iter()
            .any(|d| d.lead == slow_lead)
    };
    assert!(
        !dialed_slow_lead(&dialer),
        "R13: nobody else dialed the lead claimed for slow"
    );
    gate.notify_one();
    while !dialed_slow_lead(&dialer) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "slow's dial never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dialed = dialer.dialed.lock().expect("lock").clone();
    let mut leads: Vec<i64> = dialed.iter().map(|d| d.lead).collect();
    leads.sort_unstable();
    let n = leads.len();
    leads.dedup();
    assert_eq!(leads.len(), n, "R13/R4: no lead dialed twice: {dialed:?}");
    assert!(leads.iter().all(|l| ids.contains(l)));
    db.cleanup().await;
}
