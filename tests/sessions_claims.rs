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
            session_id: Some(99),
            lead_id: Some(lead),
            agent: Some("zed".into()),
            number: "+15551230000".into(),
            started_ms: at,
            answered_ms: None,
            ended_ms: Some(at + 1000),
            outcome: None,
            sip_status: None,
            ring_ms: None,
            trunk: None,
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
        .insert_claimed_call(
            &NewCall {
                session_id: Some(sid),
                lead_id: Some(lead),
                agent: Some("alice".into()),
                number: "+15551230000".into(),
                started_ms: NOW,
                answered_ms: None,
                ended_ms: None,
                outcome: None,
                sip_status: None,
                ring_ms: None,
                trunk: None,
            },
            c.id,
        )
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

async fn race(a: Store, b: Store) {
    let leads = add_leads(&a, 200).await;
    let mut tasks = Vec::new();
    for (inst, store) in [("A", a.clone()), ("B", b.clone())] {
        for agent in ["x", "y"] {
            let store = store.clone();
            let leads = leads.clone();
            tasks.push(tokio::spawn(async move {
                let agent = format!("{inst}{agent}");
                let mut won = Vec::new();
                for &lead in &leads {
                    match claim::claim(&store, &req(lead, &agent, inst, NOW)).await {
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
    race(db.store.clone(), b.clone()).await;
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
    race(a.clone(), b.clone()).await;
    a.close().await;
    b.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop");
    admin.close().await;
}
