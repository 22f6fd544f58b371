//! The leg journal's table (`call_legs`) and the crash sweep's settlement on
//! both backends (SQLite always; PostgreSQL when
//! POWERDIAL_TEST_DATABASE_URL is set): rows upsert by (Call-ID, branch)
//! — the forks of one INVITE are rows of their own — and delete;
//! settling gives only records without an outcome theirs, keeps the
//! answer time already stored, and clears the rows.

mod common;

use powerdial::leads::model::{CallEnd, CallOutcome, NewCall};
use powerdial::store::legs::LegRow;
use powerdial::store::Store;

fn row(call_id: &str, record: i64, answered: bool, cseq: i64) -> LegRow {
    LegRow {
        call_id: call_id.into(),
        branch: String::new(),
        kind: "lead".into(),
        record_id: Some(record),
        agent: "alice".into(),
        peer: "udp:127.0.0.1:5080".into(),
        answered,
        invite: (!answered).then(|| "INVITE sip:x SIP/2.0\r\n\r\n".to_string()),
        local_tag: answered.then(|| "l".to_string()),
        remote_tag: answered.then(|| "r".to_string()),
        local_uri: answered.then(|| "<sip:a@h>".to_string()),
        remote_uri: answered.then(|| "<sip:b@h>".to_string()),
        remote_target: answered.then(|| "sip:b@127.0.0.1:5080".to_string()),
        route_set: answered.then(|| "<sip:p1;lr>\n<sip:p2;lr>".to_string()),
        local_cseq: answered.then_some(cseq),
        answered_ms: answered.then_some(1_000),
        updated_ms: 5,
    }
}

fn new_call(started_ms: i64) -> NewCall {
    NewCall {
        session_id: Some(9),
        lead_id: None,
        agent: Some("alice".into()),
        number: "+442079460200".into(),
        started_ms,
        answered_ms: None,
        ended_ms: None,
        outcome: None,
        sip_status: None,
        ring_ms: None,
        trunk: Some("carrier".into()),
    }
}

async fn journal(store: &Store, backend: &str) {
    let talking = store.insert_call(&new_call(100)).await.unwrap();
    let ringing = store.insert_call(&new_call(200)).await.unwrap();
    let finished = store.insert_call(&new_call(300)).await.unwrap();
    // The answer time is stored as the call is answered.
    store
        .finish_call(
            talking.id,
            &CallEnd {
                answered_ms: Some(150),
                ..CallEnd::default()
            },
        )
        .await
        .unwrap();
    // This one's outcome was stored just before the crash.
    store
        .finish_call(
            finished.id,
            &CallEnd {
                ended_ms: Some(400),
                outcome: Some(CallOutcome::Busy),
                ..CallEnd::default()
            },
        )
        .await
        .unwrap();

    store
        .save_legs(
            &[
                row("a", talking.id, false, 1),
                row("b", ringing.id, false, 1),
                row("c", finished.id, false, 1),
            ],
            &[],
        )
        .await
        .unwrap();
    // The answer replaces the ringing row; a removal and an upsert of
    // another key in the same batch.
    store
        .save_legs(
            &[row("a", talking.id, true, 2)],
            &[("zzz".to_string(), String::new())],
        )
        .await
        .unwrap();
    // An agent leg forked to two phones: one row per INVITE, one Call-ID;
    // one fork declined is removed alone.
    let fork = |branch: &str| LegRow {
        branch: branch.into(),
        kind: "agent".into(),
        record_id: None,
        ..row("phones", 0, false, 1)
    };
    store
        .save_legs(
            &[
                fork("z9hG4bK1"),
                fork("z9hG4bK2"),
                fork("z9hG4bK3"),
                fork("z9hG4bK4"),
            ],
            &[],
        )
        .await
        .unwrap();
    // Two forks declined in one batch: removed by key, the others stay.
    store
        .save_legs(
            &[],
            &[
                ("phones".to_string(), "z9hG4bK2".to_string()),
                ("phones".to_string(), "z9hG4bK4".to_string()),
            ],
        )
        .await
        .unwrap();
    let rows = store.load_legs().await.unwrap();
    let mut forks: Vec<&str> = rows
        .iter()
        .filter(|r| r.call_id == "phones")
        .map(|r| r.branch.as_str())
        .collect();
    forks.sort();
    assert_eq!(forks, ["z9hG4bK1", "z9hG4bK3"], "{backend}");
    let rows: Vec<LegRow> = rows.into_iter().filter(|r| r.call_id != "phones").collect();
    assert_eq!(rows.len(), 3, "{backend}: {rows:?}");
    let a = rows.iter().find(|r| r.call_id == "a").unwrap();
    assert_eq!(a, &row("a", talking.id, true, 2), "{backend}");

    let mut ids: Vec<String> = rows.iter().map(|r| r.call_id.clone()).collect();
    // Settling deletes every row of a Call-ID: both forks go.
    ids.push("phones".into());
    let settled = store
        .settle_lost_legs(
            &[
                (talking.id, "answered", Some(999)),
                (ringing.id, "skipped", None),
                (finished.id, "skipped", None),
            ],
            &ids,
            5_000,
        )
        .await
        .unwrap();
    let mut got: Vec<(i64, String)> = settled.into_iter().map(|s| (s.0, s.3)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (talking.id, "answered".to_string()),
            (ringing.id, "skipped".to_string())
        ],
        "{backend}: a stored outcome is kept"
    );
    let t = store.get_call(talking.id).await.unwrap();
    assert_eq!(t.outcome, Some(CallOutcome::Answered), "{backend}");
    assert_eq!(
        t.answered_at.map(|a| a.timestamp_millis()),
        Some(150),
        "{backend}: the stored answer time wins"
    );
    assert_eq!(t.ended_at.map(|a| a.timestamp_millis()), Some(5_000));
    let r = store.get_call(ringing.id).await.unwrap();
    assert_eq!(r.outcome, Some(CallOutcome::Skipped), "{backend}");
    assert!(r.answered_at.is_none());
    let f = store.get_call(finished.id).await.unwrap();
    assert_eq!(f.outcome, Some(CallOutcome::Busy), "{backend}");
    assert_eq!(f.ended_at.map(|a| a.timestamp_millis()), Some(400));
    assert!(store.load_legs().await.unwrap().is_empty(), "{backend}");
}

#[tokio::test]
async fn leg_journal_on_every_backend() {
    for db in common::all_dbs("leg_journal_on_every_backend").await {
        let backend = db.backend;
        journal(&db.store, backend).await;
        db.cleanup().await;
    }
}
