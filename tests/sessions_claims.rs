//! R13: the database claim step on SQLite and PostgreSQL. PostgreSQL runs
//! when `POWERDIAL_TEST_DATABASE_URL` is set: two `Store`s (two pools, as
//! two instances would have) on one schema race for the same leads.

mod common;

use std::collections::HashSet;

use powerdial::dialer::claim::{self, ClaimError, ClaimRequest, ClaimResult};
use powerdial::dialer::queue::{LeadHistory, LeadId};
use powerdial::leads::model::{NewCall, NewSmartView, ValidLead};
use powerdial::store::{self, Store};

const NOW: i64 = 1_800_000_000_000;
const LEASE: i64 = 30_000;
const BLOCK: i64 = 3_600_000;

fn req<'a>(lead_id: i64, agent: &'a str, instance: &'a str, now_ms: i64) -> ClaimRequest<'a> {
    ClaimRequest {
        lead_id,
        session_id: 1,
        agent,
        instance,
        now_ms,
        lease_ms: LEASE,
        block_ms: BLOCK,
        reentered: false,
    }
}

async fn add_leads(store: &Store, n: usize) -> Vec<i64> {
    let leads: Vec<ValidLead> = (0..n)
        .map(|i| ValidLead {
            name: format!("lead {i}"),
            status: String::new(),
            created_ms: NOW - 1000 + i as i64,
            contacts: vec![],
            custom: vec![],
            opportunities: vec![],
            do_not_call: false,
        })
        .collect();
    store.insert_leads(&leads, NOW).await.expect("insert leads")
}

async fn one_live_claim_per_lead(store: &Store) {
    let leads = add_leads(store, 2).await;
    let a = claim::claim(store, &req(leads[0], "alice", "i1", NOW))
        .await
        .expect("claim");
    let ClaimResult::Claimed(a) = a else {
        panic!("first claim refused: {a:?}")
    };
    // Same instance, other agent; other instance: both refused.
    assert_eq!(
        claim::claim(store, &req(leads[0], "bob", "i1", NOW + 1))
            .await
            .expect("claim"),
        ClaimResult::Taken
    );
    assert_eq!(
        claim::claim(store, &req(leads[0], "carol", "i2", NOW + 2))
            .await
            .expect("claim"),
        ClaimResult::Taken
    );
    // Another lead is free.
    assert!(matches!(
        claim::claim(store, &req(leads[1], "bob", "i1", NOW)).await,
        Ok(ClaimResult::Claimed(_))
    ));
    // Released: claimable again.
    claim::release(store, &a, NOW + 10).await.expect("release");
    assert!(matches!(
        claim::claim(store, &req(leads[0], "bob", "i2", NOW + 11)).await,
        Ok(ClaimResult::Claimed(_))
    ));
}

async fn lease_expiry_frees_and_stale_version_loses(store: &Store) {
    let leads = add_leads(store, 1).await;
    let lead = leads[0];
    let Ok(ClaimResult::Claimed(old)) = claim::claim(store, &req(lead, "alice", "dead", NOW)).await
    else {
        panic!("claim refused")
    };
    // Renewed while the call lasts: still taken after the first lease.
    let renewed = claim::renew(store, &old, NOW + LEASE - 1, LEASE)
        .await
        .expect("renew");
    assert!(renewed.version > old.version);
    assert_eq!(
        claim::claim(store, &req(lead, "bob", "live", NOW + LEASE + 5))
            .await
            .expect("claim"),
        ClaimResult::Taken
    );
    // The stale copy (older version) can neither renew nor release.
    assert!(matches!(
        claim::renew(store, &old, NOW + LEASE, LEASE).await,
        Err(ClaimError::Lost { .. })
    ));
    assert!(matches!(
        claim::release(store, &old, NOW + LEASE).await,
        Err(ClaimError::Lost { .. })
    ));
    // The instance dies: the lease runs out and another instance takes over.
    let after = renewed.expires_ms;
    let Ok(ClaimResult::Claimed(new)) = claim::claim(store, &req(lead, "bob", "live", after)).await
    else {
        panic!("expired lease not taken over")
    };
    assert_ne!(new.id, renewed.id);
    // The dead instance comes back: its renew and release lose.
    assert!(matches!(
        claim::renew(store, &renewed, after + 1, LEASE).await,
        Err(ClaimError::Lost { .. })
    ));
    assert!(matches!(
        claim::release(store, &renewed, after + 1).await,
        Err(ClaimError::Lost { .. })
    ));
    // The new claim is untouched.
    assert_eq!(
        claim::live_claims(store, 1, after + 2).await.expect("live"),
        vec![lead]
    );
    claim::release(store, &new, after + 3)
        .await
        .expect("release");
    assert!(claim::live_claims(store, 1, after + 4)
        .await
        .expect("live")
        .is_empty());
}

async fn other_sessions_calls_block(store: &Store) {
    let leads = add_leads(store, 1).await;
    let lead = leads[0];
    let at = NOW - 60_000;
    store
        .insert_call(&NewCall {
            started_ms: at,
            ended_ms: Some(at + 1000),
            ..dialer_call(99, lead, "zed")
        })
        .await
        .expect("call");
    assert_eq!(
        claim::claim(store, &req(lead, "alice", "i1", NOW))
            .await
            .expect("claim"),
        ClaimResult::RecentlyCalled { at }
    );
    // R7: a lead that re-entered the view is new, the block does not apply.
    let mut r = req(lead, "alice", "i1", NOW);
    r.reentered = true;
    assert!(matches!(
        claim::claim(store, &r).await,
        Ok(ClaimResult::Claimed(_))
    ));
}

/// A call's end in one transaction: the session's record of the lead
/// (R5: answered) and the claim's release; a stale claim is reported lost
/// while the record is still saved.
async fn call_end_saves_history_and_releases(store: &Store) {
    let leads = add_leads(store, 1).await;
    let lead = leads[0];
    // The session's record of a lead needs a session.
    let view = store
        .create_smart_view(
            &NewSmartView {
                name: "ends".into(),
                query: "sort:name".into(),
            },
            NOW,
        )
        .await
        .expect("view");
    let sid = powerdial::dialer::record::create_session(store, view.id, false, None, "h", NOW)
        .await
        .expect("session")
        .id;
    let in_session = |agent, instance, now_ms| ClaimRequest {
        session_id: sid,
        ..req(lead, agent, instance, now_ms)
    };
    let ClaimResult::Claimed(c) = claim::claim(store, &in_session("alice", "i1", NOW))
        .await
        .expect("claim")
    else {
        panic!("claim refused")
    };
    // The record names the claim in its own commit.
    let call = store
        .insert_claimed_call(&dialer_call(sid, lead, "alice"), c.id)
        .await
        .expect("call");
    assert!(call.id > 0);
    let linked: Option<i64> = match store {
        Store::Sqlite(s) => sqlx::query_scalar("SELECT call_id FROM lead_claims WHERE id = $1")
            .bind(c.id)
            .fetch_one(s.pool())
            .await
            .expect("claim row"),
        Store::Postgres(s) => sqlx::query_scalar("SELECT call_id FROM lead_claims WHERE id = $1")
            .bind(c.id)
            .fetch_one(s.pool())
            .await
            .expect("claim row"),
    };
    assert_eq!(linked, Some(call.id), "the claim names its call");
    let answered = LeadHistory {
        generation: 0,
        calls: 0,
        answered: true,
        blocked_until: None,
    };
    claim::end_call(
        store,
        Some((sid, LeadId(lead), &answered)),
        Some(&c),
        NOW + 5,
    )
    .await
    .expect("end");
    // (Earlier cases of this database left claims on other leads.)
    assert!(!claim::live_claims(store, sid, NOW + 6)
        .await
        .expect("live")
        .contains(&lead));
    // R5 from the saved record: this session's answered lead is refused.
    assert_eq!(
        claim::claim(store, &in_session("bob", "i2", NOW + 7))
            .await
            .expect("claim"),
        ClaimResult::Answered
    );
    // The same claim again: lost, and the record is still written.
    let again = LeadHistory {
        calls: 1,
        ..answered
    };
    assert!(matches!(
        claim::end_call(store, Some((sid, LeadId(lead), &again)), Some(&c), NOW + 8).await,
        Err(ClaimError::Lost { .. })
    ));
    let saved = powerdial::dialer::record::load_histories(store, sid)
        .await
        .expect("histories");
    assert!(saved.contains(&(LeadId(lead), again)), "{saved:?}");

    // A batch of ends (the session's end writer): every claim released in
    // one statement, a stale one reported lost, and a lead that ended twice
    // in the batch keeps its later history.
    let more = add_leads(store, 2).await;
    let mut held = Vec::new();
    for &l in &more {
        let r = ClaimRequest {
            session_id: sid,
            ..req(l, "carol", "i1", NOW + 10)
        };
        let ClaimResult::Claimed(c) = claim::claim(store, &r).await.expect("claim") else {
            panic!("claim refused")
        };
        held.push(c);
    }
    let stale = claim::LeadClaim {
        version: held[1].version + 7,
        ..held[1]
    };
    let h = |calls| LeadHistory {
        generation: 0,
        calls,
        answered: false,
        blocked_until: Some(NOW + 3_600_000),
    };
    let end = |lead: i64, calls, claim| claim::CallEndWrite {
        session_id: sid,
        history: Some((LeadId(lead), h(calls))),
        claim,
        now_ms: NOW + 20,
    };
    let lost = claim::end_calls(
        store,
        &[
            end(more[0], 1, Some(held[0])),
            end(more[1], 1, Some(stale)),
            end(more[0], 2, None),
        ],
    )
    .await
    .expect("ends");
    assert_eq!(lost, vec![stale], "only the stale claim is lost");
    let live = claim::live_claims(store, sid, NOW + 21)
        .await
        .expect("live");
    assert!(!live.contains(&more[0]), "released: {live:?}");
    assert!(
        live.contains(&more[1]),
        "a stale release leaves the claim: {live:?}"
    );
    let saved = powerdial::dialer::record::load_histories(store, sid)
        .await
        .expect("histories");
    assert!(saved.contains(&(LeadId(more[0]), h(2))), "{saved:?}");
    assert!(saved.contains(&(LeadId(more[1]), h(1))), "{saved:?}");
}

/// A session with a view, for the session's record of its leads.
async fn new_session(store: &Store, name: &str) -> i64 {
    let view = store
        .create_smart_view(
            &NewSmartView {
                name: name.into(),
                query: "sort:name".into(),
            },
            NOW,
        )
        .await
        .expect("view");
    // The share token's hash is unique: one per session.
    powerdial::dialer::record::create_session(store, view.id, false, None, name, NOW)
        .await
        .expect("session")
        .id
}

/// A call record as the dialer writes it: `agent` calling `lead` in
/// session `sid`, started at `NOW`, not yet answered or ended.
fn dialer_call(sid: i64, lead: i64, agent: &str) -> NewCall {
    NewCall {
        session_id: Some(sid),
        lead_id: Some(lead),
        agent: Some(agent.into()),
        number: "+15551230000".into(),
        started_ms: NOW,
        answered_ms: None,
        ended_ms: None,
        outcome: None,
        sip_status: None,
        ring_ms: None,
        trunk: Some("carrier".into()),
    }
}

/// The session writer's claims, many agents' in one statement, say what
/// the step one by one says: claimed, taken, called by another session
/// within the block (R4), answered in this session (R5), one winner for a
/// lead two agents ask in one round; and a call's end handed over before
/// a claim is seen by that claim (its release and its answer).
async fn writer_claims_in_one_round(store: &Store) {
    let sid = new_session(store, "writer claims").await;
    let leads = add_leads(store, 40).await;
    let in_session = |lead, agent, now_ms| ClaimRequest {
        session_id: sid,
        ..req(lead, agent, "i1", now_ms)
    };
    let ClaimResult::Claimed(_) = claim::claim(store, &in_session(leads[0], "held", NOW))
        .await
        .expect("claim")
    else {
        panic!("claim refused")
    };
    let at = NOW - 60_000;
    store
        .insert_call(&NewCall {
            session_id: Some(99),
            started_ms: at,
            ..dialer_call(99, leads[1], "zed")
        })
        .await
        .expect("call");
    let answered = LeadHistory {
        generation: 0,
        calls: 0,
        answered: true,
        blocked_until: None,
    };
    claim::end_calls(
        store,
        &[claim::CallEndWrite {
            session_id: sid,
            history: Some((LeadId(leads[2]), answered)),
            claim: None,
            now_ms: NOW,
        }],
    )
    .await
    .expect("answered");

    let writer = claim::SessionWriter::start(store.clone());
    // Leads read in one round: each asker gets its own, a missing one none.
    let reads: Vec<_> = [leads[5], i64::MAX - 1, leads[6]]
        .into_iter()
        .map(|id| {
            let w = writer.clone();
            tokio::spawn(async move { w.lead(id).await })
        })
        .collect();
    let mut read = Vec::new();
    for t in reads {
        read.push(t.await.expect("task").map(|l| (l.id, l.name)));
    }
    assert_eq!(
        read,
        vec![
            Some((leads[5], "lead 5".to_string())),
            None,
            Some((leads[6], "lead 6".to_string()))
        ]
    );
    let mut asks: Vec<(i64, String)> = leads
        .iter()
        .enumerate()
        .map(|(i, l)| (*l, format!("a{i}")))
        .collect();
    asks.push((leads[3], "twin".into()));
    // Spawned together: the writer finds them all queued (one round).
    let tasks: Vec<_> = asks
        .iter()
        .map(|(lead, agent)| {
            let (w, lead, agent) = (writer.clone(), *lead, agent.clone());
            tokio::spawn(async move {
                w.claim(&ClaimRequest {
                    session_id: sid,
                    ..req(lead, &agent, "i1", NOW)
                })
                .await
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.expect("task").expect("claim"));
    }
    assert_eq!(got[0], ClaimResult::Taken, "a live claim holds the lead");
    assert_eq!(got[1], ClaimResult::RecentlyCalled { at }, "R4");
    assert_eq!(got[2], ClaimResult::Answered, "R5");
    let twins = [got[3], got[40]];
    assert_eq!(
        twins
            .iter()
            .filter(|r| matches!(r, ClaimResult::Claimed(_)))
            .count(),
        1,
        "one of two agents asking for one lead wins: {twins:?}"
    );
    assert!(twins.contains(&ClaimResult::Taken), "{twins:?}");
    let mut ids = HashSet::new();
    let mut held = Vec::new();
    for (r, (lead, _)) in got.iter().zip(&asks).skip(3) {
        if let ClaimResult::Claimed(c) = r {
            assert_eq!(c.lead_id, *lead);
            assert_eq!(c.expires_ms, NOW + LEASE);
            assert!(ids.insert(c.id), "claim ids differ");
            held.push(*c);
        }
    }
    assert_eq!(held.len(), 37);
    // Each claim is the row's own: it renews at its version.
    for c in &mut held {
        *c = claim::renew(store, c, NOW + 1, LEASE)
            .await
            .expect("renew at the version the writer returned");
    }
    let mut live = claim::live_claims(store, sid, NOW + 2).await.expect("live");
    live.sort_unstable();
    let mut want: Vec<i64> = std::iter::once(leads[0])
        .chain(leads[3..].iter().copied())
        .collect();
    want.sort_unstable();
    assert_eq!(live, want);

    // An end (answered, released) then a claim of the same lead: the claim
    // sees both.
    let first = claim::renew(store, &held[1], NOW + 3, LEASE)
        .await
        .expect("renew");
    writer.send(claim::CallEndWrite {
        session_id: sid,
        history: Some((LeadId(first.lead_id), answered)),
        claim: Some(first),
        now_ms: NOW + 4,
    });
    assert_eq!(
        writer
            .claim(&in_session(first.lead_id, "later", NOW + 5))
            .await
            .expect("claim"),
        ClaimResult::Answered,
        "the end handed over first was stored first"
    );
    assert!(!claim::live_claims(store, sid, NOW + 6)
        .await
        .expect("live")
        .contains(&first.lead_id));
}

/// Two instances' claimers race for the same leads, each instance's two
/// agents through the step one by one or (`writers`) through one session
/// writer, whose rounds take both agents' claims in one statement.
async fn race(a: Store, b: Store, writers: bool) {
    let leads = add_leads(&a, 200).await;
    let mut tasks = Vec::new();
    for (inst, store) in [("A", a.clone()), ("B", b.clone())] {
        let writer = writers.then(|| claim::SessionWriter::start(store.clone()));
        for agent in ["x", "y"] {
            let store = store.clone();
            let leads = leads.clone();
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                let agent = format!("{inst}{agent}");
                let mut won = Vec::new();
                for &lead in &leads {
                    let r = req(lead, &agent, inst, NOW);
                    let got = match &writer {
                        Some(w) => w.claim(&r).await,
                        None => claim::claim(&store, &r).await,
                    };
                    match got {
                        Ok(ClaimResult::Claimed(c)) => won.push(c.lead_id),
                        Ok(ClaimResult::Taken) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
                won
            }));
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut winners = 0;
    for t in tasks {
        let won = t.await.expect("task");
        if !won.is_empty() {
            winners += 1;
        }
        total += won.len();
        seen.extend(won);
    }
    assert_eq!(total, leads.len(), "a lead was claimed twice (or lost)");
    assert_eq!(seen.len(), leads.len());
    eprintln!("{winners} of 4 claimers won leads");
}

#[tokio::test]
async fn sqlite_claims() {
    let db = common::sqlite_db().await;
    one_live_claim_per_lead(&db.store).await;
    lease_expiry_frees_and_stale_version_loses(&db.store).await;
    other_sessions_calls_block(&db.store).await;
    call_end_saves_history_and_releases(&db.store).await;
    writer_claims_in_one_round(&db.store).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_pools_race() {
    let db = common::sqlite_db().await;
    // A second pool on the same file: what a second process would open.
    let Store::Sqlite(s) = &db.store else {
        unreachable!()
    };
    let path = s
        .pool()
        .connect_options()
        .get_filename()
        .display()
        .to_string();
    let b = store::connect(&format!("sqlite://{path}"))
        .await
        .expect("open");
    race(db.store.clone(), b.clone(), false).await;
    race(db.store.clone(), b.clone(), true).await;
    b.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims() {
    let Some(db) = common::pg_db("postgres_claims").await else {
        return;
    };
    one_live_claim_per_lead(&db.store).await;
    lease_expiry_frees_and_stale_version_loses(&db.store).await;
    other_sessions_calls_block(&db.store).await;
    call_end_saves_history_and_releases(&db.store).await;
    writer_claims_in_one_round(&db.store).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_race() {
    let Some(base) = common::pg_url("postgres_two_instances_race") else {
        return;
    };
    let schema = format!("t_{:016x}", rand::random::<u64>());
    let admin = store::connect_admin_pg(&base).await.expect("admin");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let a = store::connect(&url).await.expect("instance A");
    let b = store::connect(&url).await.expect("instance B");
    race(a.clone(), b.clone(), false).await;
    race(a.clone(), b.clone(), true).await;
    a.close().await;
    b.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop");
    admin.close().await;
}
