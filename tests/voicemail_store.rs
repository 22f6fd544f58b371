//! Answering machines, voicemail drops and recordings in the store (SPEC
//! §4), on both backends (SQLite always; PostgreSQL when
//! POWERDIAL_TEST_DATABASE_URL is set): the new outcomes, the verdict and
//! `amd_ms`, the recording's file, and the uploaded messages' rows.

mod common;

use powerdial::leads::model::{CallEnd, CallOutcome, NewCall};
use powerdial::media::amd::Verdict;
use powerdial::store::Store;

fn new_call() -> NewCall {
    NewCall {
        session_id: Some(1),
        lead_id: None,
        agent: Some("alice".into()),
        number: "+442079460721".into(),
        started_ms: 1_700_000_000_000,
        answered_ms: None,
        ended_ms: None,
        outcome: None,
        sip_status: None,
        ring_ms: None,
        trunk: Some("carrier".into()),
    }
}

async fn check(store: &Store, backend: &str) {
    let c = store.insert_call(&new_call()).await.unwrap();
    assert_eq!(
        (c.amd, c.amd_ms, c.recorded),
        (None, None, false),
        "{backend}"
    );
    // The verdict first (from the relay), the outcome later: both kept.
    let verdict = CallEnd {
        amd: Some(Verdict::Machine),
        amd_ms: Some(1_840),
        ..CallEnd::default()
    };
    store.finish_call(c.id, &verdict).await.unwrap();
    let end = CallEnd {
        answered_ms: Some(1_700_000_001_000),
        ended_ms: Some(1_700_000_004_000),
        outcome: Some(CallOutcome::VoicemailDropped),
        sip_status: Some(200),
        ..CallEnd::default()
    };
    let done = store.finish_call(c.id, &end).await.unwrap();
    assert_eq!(
        done.outcome,
        Some(CallOutcome::VoicemailDropped),
        "{backend}"
    );
    assert_eq!(done.amd, Some(Verdict::Machine), "{backend}");
    assert_eq!(done.amd_ms, Some(1_840), "{backend}");
    assert!(!done.recorded, "{backend}");
    assert_eq!(store.call_recording(c.id).await.unwrap(), None, "{backend}");
    let rec = CallEnd {
        recording: Some(format!("{}.wav", c.id)),
        ..CallEnd::default()
    };
    assert!(
        store.finish_call(c.id, &rec).await.unwrap().recorded,
        "{backend}"
    );
    assert_eq!(
        store.call_recording(c.id).await.unwrap(),
        Some(format!("{}.wav", c.id)),
        "{backend}"
    );
    // `voicemail` is a stored outcome too.
    let c2 = store.insert_call(&new_call()).await.unwrap();
    let v = CallEnd {
        outcome: Some(CallOutcome::Voicemail),
        ..CallEnd::default()
    };
    assert_eq!(
        store.finish_call(c2.id, &v).await.unwrap().outcome,
        Some(CallOutcome::Voicemail),
        "{backend}"
    );

    let id = store
        .insert_voicemail_drop("abc.wav", 2_000, 1)
        .await
        .unwrap();
    let d = store
        .get_voicemail_drop(id)
        .await
        .unwrap()
        .expect("the row");
    assert_eq!(
        (d.file.as_str(), d.duration_ms),
        ("abc.wav", 2_000),
        "{backend}"
    );
    assert!(
        store.get_voicemail_drop(id + 100).await.unwrap().is_none(),
        "{backend}"
    );
}

#[tokio::test]
async fn amd_outcomes_recordings_and_drops_on_every_backend() {
    for db in common::all_dbs("amd_outcomes_recordings_and_drops_on_every_backend").await {
        let backend = db.backend;
        check(&db.store, backend).await;
        db.cleanup().await;
    }
}
