//! Calling hours in a running session (SPEC §4) over a test double of the
//! call engine, with a wall clock set 1.5 s before a Honolulu lead's window
//! opens (08:00 HST = 18:00 UTC) while a New York lead is in its day: the
//! New York lead is dialed at once, the Honolulu lead is held once (one
//! audit entry, no busy re-claiming) and dialed when its window opens, not
//! before and not much after: the session sleeps until the opening.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use powerdial::call::Outcome;
use powerdial::dialer::dial::{CallEvent, DialError, DialRequest, Dialer};
use powerdial::dialer::directory::Sessions;
use powerdial::dialer::hours::CallingHours;
use powerdial::dialer::session::{Clock, SessionConfig};
use powerdial::leads::model::{Contact, NewSmartView, ValidLead};
use powerdial::leads::phone::PhoneE164;
use powerdial::store::audit::{AuditAction, AuditFilter, AuditLog, AuditReason};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// 2026-01-15T18:00:00Z: 08:00 in Honolulu, 13:00 in New York.
const OPENS_MS: i64 = 1_768_500_000_000;
const LEAD_START_MS: i64 = OPENS_MS - 1_500;

#[derive(Clone)]
struct SimClock {
    start: Instant,
}

impl Clock for SimClock {
    #[allow(clippy::disallowed_methods)]
    fn instant(&self) -> Instant {
        Instant::now()
    }
    fn wall_ms(&self) -> i64 {
        LEAD_START_MS + i64::try_from((self.instant() - self.start).as_millis()).unwrap_or(0)
    }
}

/// Answers every lead 50 ms after the dial and records when it was dialed.
#[derive(Clone)]
struct Answering {
    clock: SimClock,
    events: broadcast::Sender<CallEvent>,
    dialed: Arc<Mutex<Vec<(i64, i64)>>>,
}

impl Dialer for Answering {
    async fn connect_agent(&self, agent: &str) -> Result<(), DialError> {
        let _ = self.events.send(CallEvent::AgentConnected {
            agent: agent.into(),
        });
        Ok(())
    }
    async fn dial(&self, agent: &str, req: DialRequest) -> Result<i64, DialError> {
        let lead = req.lead_id.ok_or(DialError::NotReady)?;
        let call_id = {
            let mut d = self.dialed.lock().map_err(|_| DialError::Closed)?;
            d.push((lead, self.clock.wall_ms()));
            i64::try_from(d.len()).unwrap_or(0)
        };
        let events = self.events.clone();
        let agent = agent.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = events.send(CallEvent::CallEnded {
                agent,
                call_id,
                lead_id: Some(lead),
                session_id: req.session_id,
                outcome: Outcome::Answered,
                sip_status: Some(200),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lead_is_dialed_when_its_window_opens() {
    let db = common::sqlite_db().await;
    let store = db.store.clone();
    // Honolulu first in the view, then New York (by their area codes),
    // then a lead with no number at all.
    let leads: Vec<ValidLead> = [Some("+18085550100"), Some("+12125550100"), None]
        .iter()
        .enumerate()
        .map(|(i, n)| ValidLead {
            name: format!("lead {i}"),
            status: String::new(),
            created_ms: LEAD_START_MS - 1_000_000 + i as i64,
            contacts: n
                .iter()
                .map(|n| Contact {
                    name: String::new(),
                    phones: vec![PhoneE164::from_e164(n).expect("phone")],
                    emails: Vec::new(),
                })
                .collect(),
            custom: vec![],
            opportunities: vec![],
            do_not_call: false,
        })
        .collect();
    let ids = store
        .insert_leads(&leads, LEAD_START_MS)
        .await
        .expect("leads");
    let view = store
        .create_smart_view(
            &NewSmartView {
                name: "all".into(),
                query: "sort:created".into(),
            },
            LEAD_START_MS,
        )
        .await
        .expect("view");
    #[allow(clippy::disallowed_methods)]
    let clock = SimClock {
        start: Instant::now(),
    };
    let dialer = Answering {
        clock: clock.clone(),
        events: broadcast::channel(64).0,
        dialed: Arc::default(),
    };
    let config = SessionConfig {
        block: Duration::from_secs(3600),
        refresh_interval: Duration::from_secs(300),
        wrap_up_idle: Duration::from_millis(20),
        lease: Duration::from_secs(30),
        instance: "hours".into(),
        // What a user gets: 08:00-21:00 in each lead's zone.
        calling_hours: CallingHours::default(),
        audit: AuditLog::start(store.clone()),
    };
    let sessions = Sessions::start(store.clone(), dialer.clone(), clock.clone(), config)
        .await
        .expect("sessions");
    let (row, _) = sessions.create(view.id, false, None).await.expect("create");
    sessions
        .get(row.id)
        .expect("handle")
        .join("alice")
        .await
        .expect("join");

    for _ in 0..300 {
        if dialer.dialed.lock().expect("lock").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dialed = dialer.dialed.lock().expect("lock").clone();
    assert_eq!(dialed.len(), 2, "both dialed in the end: {dialed:?}");
    let (first, first_at) = dialed[0];
    let (second, second_at) = dialed[1];
    assert_eq!(first, ids[1], "New York first, at once");
    assert!(first_at < OPENS_MS, "{first_at}");
    assert_eq!(second, ids[0], "Honolulu once its window opened");
    assert!(
        second_at >= OPENS_MS,
        "dialed {} ms before 08:00 HST",
        OPENS_MS - second_at
    );
    assert!(
        second_at < OPENS_MS + 500,
        "the session woke {} ms after the opening",
        second_at - OPENS_MS
    );
    // Held once, not claimed and held again in a loop while waiting.
    let audit = store
        .list_audit(AuditFilter::default(), 0, 100)
        .await
        .expect("audit");
    let holds: Vec<_> = audit.iter().filter(|e| e.lead_id == Some(ids[0])).collect();
    assert_eq!(holds.len(), 1, "{audit:?}");
    assert_eq!(
        holds[0].detail,
        "opens 08:00 Pacific/Honolulu (2026-01-15T18:00:00+00:00)"
    );
    // The lead with no number: restricted without a dial, audited.
    let none: Vec<_> = audit.iter().filter(|e| e.lead_id == Some(ids[2])).collect();
    assert_eq!(none.len(), 1, "{audit:?}");
    assert_eq!(
        (none[0].action, none[0].reason),
        (AuditAction::Restricted, AuditReason::NotDialable)
    );
}
