//! Store CRUD on both backends (SQLite always; PostgreSQL when
//! POWERDIAL_TEST_DATABASE_URL is set).

mod common;

use powerdial::leads::model::{
    parse_time, time_to_ms, CallEnd, CallOutcome, CustomFieldKind, CustomValue, LeadPatch, NewCall,
    NewCustomField, NewLead, NewSmartView, Registration,
};
use powerdial::store::{CallFilter, Entity, Store, StoreError};
use serde_json::json;

fn now_ms() -> i64 {
    time_to_ms(common::reference_now())
}

async fn seed_fields(store: &Store) {
    common::define_fixture_fields(store).await;
    store
        .define_custom_field(&NewCustomField {
            name: "Seats".into(),
            kind: CustomFieldKind::Number,
            choices: vec![],
        })
        .await
        .unwrap();
}

fn new_lead(v: serde_json::Value) -> NewLead {
    serde_json::from_value(v).unwrap()
}

async fn crud(store: &Store, backend: &str) {
    seed_fields(store).await;
    // Duplicate custom field names conflict, ignoring case.
    let dup = store
        .define_custom_field(&NewCustomField {
            name: "lead source".into(),
            kind: CustomFieldKind::Text,
            choices: vec![],
        })
        .await;
    assert!(
        matches!(dup, Err(StoreError::Conflict(Entity::CustomField))),
        "{backend}: {dup:?}"
    );
    assert_eq!(store.list_custom_fields().await.unwrap().len(), 3);

    let fields = store.custom_field_set().await.unwrap();
    let lead = new_lead(json!({
        "name": "Acme",
        "status": "Potential",
        "created": "2025-06-01T08:00:00Z",
        "contacts": [
            {"name": "Ann", "phones": ["(415) 555-0134", "+1 212 555 0199"]},
            {"name": "Bob", "phones": []}
        ],
        "custom": {"Lead Source": "Leadgen Team", "Next Call Date": "2026-11-05", "Seats": 12},
        "opportunities": [{"status_type": "Lost", "created": "2026-03-01", "value": 1200.5}]
    }))
    .validate(&fields, "US", common::reference_now())
    .unwrap();
    let stored = store.insert_lead(&lead, now_ms()).await.unwrap();
    assert_eq!(stored.name, "Acme");
    assert_eq!(stored.created, parse_time("2025-06-01T08:00:00Z").unwrap());
    assert_eq!(stored.contacts.len(), 2, "{backend}");
    assert_eq!(stored.contacts[0].phones[0].as_str(), "+14155550134");
    assert_eq!(stored.contacts[0].phones[1].as_str(), "+12125550199");
    assert!(stored.contacts[1].phones.is_empty());
    assert_eq!(stored.first_phone().unwrap().as_str(), "+14155550134");
    assert_eq!(
        stored.custom["Lead Source"],
        CustomValue::Text("Leadgen Team".into())
    );
    assert_eq!(stored.custom["Seats"], CustomValue::Number(12.0));
    assert_eq!(
        serde_json::to_value(&stored).unwrap()["custom"]["Next Call Date"],
        "2026-11-05"
    );
    assert_eq!(stored.opportunities.len(), 1);
    assert_eq!(stored.opportunities[0].value, Some(1200.5));

    // Batch insert: all in one transaction, ids in order.
    let batch: Vec<_> = (0..25)
        .map(|i| {
            new_lead(json!({"name": format!("Lead {i}"), "contacts": [{"phones": [format!("415 555 01{i:02}")]}]}))
                .validate(&fields, "US", common::reference_now())
                .unwrap()
        })
        .collect();
    let ids = store.insert_leads(&batch, now_ms()).await.unwrap();
    assert_eq!(ids.len(), 25);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(store.count_leads().await.unwrap(), 26);
    let got = store
        .get_leads(&[ids[3], stored.id, 999_999])
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![ids[3], stored.id]
    );

    // Keyset paging covers every lead once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_leads(after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|l| l.id);
        seen.extend(page.into_iter().map(|l| l.id));
    }
    assert_eq!(seen.len(), 26);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    // Patch: merge custom (null removes), replace contacts, keep the rest.
    let patch: LeadPatch = serde_json::from_value(json!({
        "status": "Customer",
        "contacts": [{"name": "Cleo", "phones": ["646.555.0100"]}],
        "custom": {"Seats": null, "Lead Source": "website"}
    }))
    .unwrap();
    let p = patch
        .validate(&fields, "US", common::reference_now())
        .unwrap();
    let later = now_ms() + 60_000;
    let updated = store.update_lead(stored.id, &p, later).await.unwrap();
    assert_eq!(updated.status, "Customer");
    assert_eq!(updated.name, "Acme");
    assert_eq!(updated.contacts.len(), 1);
    assert_eq!(updated.contacts[0].phones[0].as_str(), "+16465550100");
    assert!(!updated.custom.contains_key("Seats"));
    assert_eq!(
        updated.custom["Lead Source"],
        CustomValue::Text("Website".into())
    );
    assert!(updated.custom.contains_key("Next Call Date"));
    assert_eq!(updated.updated.timestamp_millis(), later);
    assert_eq!(updated.opportunities.len(), 1);
    assert!(matches!(
        store.update_lead(999_999, &p, later).await,
        Err(StoreError::NotFound {
            entity: Entity::Lead,
            ..
        })
    ));

    // Calls keep leads.last_call_ms at the maximum start, in order or not.
    assert_eq!(common::last_call_ms(store, stored.id).await, None);
    let call = |started_ms: i64, session: Option<i64>| NewCall {
        session_id: session,
        lead_id: Some(stored.id),
        agent: Some("alice".into()),
        number: "+14155550134".into(),
        started_ms,
        answered_ms: None,
        ended_ms: None,
        outcome: None,
        sip_status: None,
        ring_ms: None,
        trunk: None,
    };
    let c1 = store
        .insert_call(&call(now_ms() - 10_000, Some(7)))
        .await
        .unwrap();
    assert_eq!(
        common::last_call_ms(store, stored.id).await,
        Some(now_ms() - 10_000)
    );
    store
        .insert_call(&call(now_ms() - 90_000, None))
        .await
        .unwrap();
    assert_eq!(
        common::last_call_ms(store, stored.id).await,
        Some(now_ms() - 10_000)
    );
    store.insert_call(&call(now_ms(), Some(7))).await.unwrap();
    assert_eq!(common::last_call_ms(store, stored.id).await, Some(now_ms()));
    let done = store
        .finish_call(
            c1.id,
            &CallEnd {
                answered_ms: Some(now_ms() - 5_000),
                ended_ms: Some(now_ms() - 1_000),
                outcome: Some(CallOutcome::Answered),
                sip_status: Some(200),
                ring_ms: Some(5_000),
                trunk: Some("carrier".into()),
                caller_id: Some("+442079460999".into()),
                ..CallEnd::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.outcome, Some(CallOutcome::Answered));
    assert_eq!(done.sip_status, Some(200));
    assert_eq!(
        done.trunk.as_deref(),
        Some("carrier"),
        "the trunk that carried it"
    );
    // A later write without a trunk keeps it.
    let again = store
        .finish_call(
            c1.id,
            &CallEnd {
                ended_ms: Some(now_ms()),
                ..CallEnd::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(again.trunk.as_deref(), Some("carrier"));
    assert_eq!(
        again.caller_id.as_deref(),
        Some("+442079460999"),
        "the caller ID the lead was shown is kept"
    );
    // The call writer's batch: one statement for several records, each
    // column only where the end names it (the earlier values stay).
    let b1 = store.insert_call(&call(now_ms(), None)).await.unwrap();
    let b2 = store.insert_call(&call(now_ms(), None)).await.unwrap();
    store
        .finish_calls(&[
            (
                b1.id,
                CallEnd {
                    answered_ms: Some(now_ms() + 1_000),
                    trunk: Some("carrier".into()),
                    ..CallEnd::default()
                },
            ),
            (
                b2.id,
                CallEnd {
                    ended_ms: Some(now_ms() + 2_000),
                    outcome: Some(CallOutcome::Busy),
                    sip_status: Some(486),
                    ring_ms: Some(0),
                    ..CallEnd::default()
                },
            ),
        ])
        .await
        .unwrap();
    store
        .finish_calls(&[(
            b1.id,
            CallEnd {
                ended_ms: Some(now_ms() + 3_000),
                outcome: Some(CallOutcome::Answered),
                ..CallEnd::default()
            },
        )])
        .await
        .unwrap();
    let (r1, r2) = (
        store.get_call(b1.id).await.unwrap(),
        store.get_call(b2.id).await.unwrap(),
    );
    assert_eq!(
        r1.answered_at.map(|t| t.timestamp_millis()),
        Some(now_ms() + 1_000),
        "{backend}"
    );
    assert_eq!(
        r1.ended_at.map(|t| t.timestamp_millis()),
        Some(now_ms() + 3_000),
        "{backend}"
    );
    assert_eq!(r1.outcome, Some(CallOutcome::Answered), "{backend}");
    assert_eq!(r1.trunk.as_deref(), Some("carrier"), "{backend}");
    assert_eq!(r2.answered_at, None, "{backend}");
    assert_eq!(r2.outcome, Some(CallOutcome::Busy), "{backend}");
    assert_eq!(r2.sip_status, Some(486), "{backend}");
    assert_eq!(r2.ring_ms, Some(0), "{backend}");
    // A missing record fails the batch (the writer then retries record by
    // record and reports that one as not found).
    let missing = store
        .finish_calls(&[(b2.id, CallEnd::default()), (i64::MAX, CallEnd::default())])
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{backend}: {missing:?}"
    );
    let by_lead = store
        .list_calls(
            CallFilter {
                session_id: None,
                lead_id: Some(stored.id),
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(by_lead.len(), 5);
    assert!(
        by_lead
            .windows(2)
            .all(|w| w[0].started_at <= w[1].started_at),
        "oldest first"
    );
    let by_session = store
        .list_calls(
            CallFilter {
                session_id: Some(7),
                lead_id: None,
            },
            None,
            1,
        )
        .await
        .unwrap();
    assert_eq!(by_session.len(), 1);
    let next = store
        .list_calls(
            CallFilter {
                session_id: Some(7),
                lead_id: None,
            },
            Some((
                by_session[0].started_at.timestamp_millis(),
                by_session[0].id,
            )),
            10,
        )
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].started_at > by_session[0].started_at);
    let missing = store
        .insert_call(&NewCall {
            lead_id: Some(999_999),
            ..call(now_ms(), None)
        })
        .await;
    assert!(
        matches!(
            missing,
            Err(StoreError::NotFound {
                entity: Entity::Lead,
                ..
            })
        ),
        "{backend}: {missing:?}"
    );

    // Delete cascades, calls stay with no lead.
    store.delete_lead(stored.id).await.unwrap();
    assert!(matches!(
        store.get_lead(stored.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_lead(stored.id).await,
        Err(StoreError::NotFound { .. })
    ));
    let orphan = store.get_call(c1.id).await.unwrap();
    assert_eq!(orphan.lead_id, None);

    // Smart Views.
    let v = store
        .create_smart_view(
            &NewSmartView {
                name: "Potential".into(),
                query: "lead_status:\"Potential\" opportunities:0".into(),
            },
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(store.get_smart_view(v.id).await.unwrap(), v);
    assert_eq!(store.list_smart_views().await.unwrap(), vec![v.clone()]);
    assert!(matches!(
        store.get_smart_view(v.id + 1).await,
        Err(StoreError::NotFound { .. })
    ));

    // Registrations: upsert, refresh, delete one, delete all, expire.
    let reg = |contact: &str, expires_ms: i64, cseq: i64| Registration {
        aor: "alice".into(),
        contact: contact.into(),
        expires_ms,
        call_id: "abc@host".into(),
        cseq,
        q: Some(0.5),
        transport: "udp".into(),
        source: "127.0.0.1:5062".into(),
    };
    store
        .upsert_registration(&reg("sip:alice@127.0.0.1:5062", 1_000, 1))
        .await
        .unwrap();
    store
        .upsert_registration(&reg("sip:alice@127.0.0.1:5062", 2_000, 2))
        .await
        .unwrap();
    store
        .upsert_registration(&reg("sip:alice@10.0.0.2:5060", 500, 1))
        .await
        .unwrap();
    let all = store.load_registrations().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all.iter()
            .find(|r| r.contact.contains("5062"))
            .unwrap()
            .cseq,
        2
    );
    assert_eq!(store.delete_expired_registrations(600).await.unwrap(), 1);
    assert!(store
        .delete_registration("alice", "sip:alice@127.0.0.1:5062")
        .await
        .unwrap());
    assert!(!store
        .delete_registration("alice", "sip:alice@127.0.0.1:5062")
        .await
        .unwrap());
    store
        .upsert_registration(&reg("sip:a@x", 5_000, 3))
        .await
        .unwrap();
    store
        .upsert_registration(&reg("sip:b@x", 5_000, 3))
        .await
        .unwrap();
    assert_eq!(store.delete_registrations("alice").await.unwrap(), 2);
    assert!(store.load_registrations().await.unwrap().is_empty());
}

#[tokio::test]
async fn store_crud_on_every_backend() {
    for db in common::all_dbs("store_crud_on_every_backend").await {
        let backend = db.backend;
        crud(&db.store, backend).await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn reopening_keeps_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/data/pd.db", dir.path().display());
    let store = powerdial::store::connect(&url).await.unwrap();
    store
        .define_custom_field(&NewCustomField {
            name: "X".into(),
            kind: CustomFieldKind::Text,
            choices: vec![],
        })
        .await
        .unwrap();
    store.close().await;
    let again = powerdial::store::connect(&url).await.unwrap();
    assert_eq!(again.list_custom_fields().await.unwrap().len(), 1);
    assert!(matches!(
        powerdial::store::connect("mysql://x").await,
        Err(StoreError::BadUrl(_))
    ));
}

#[tokio::test]
async fn fixtures_load_on_every_backend() {
    for db in common::all_dbs("fixtures_load_on_every_backend").await {
        let ids = common::load_fixtures(&db.store).await;
        assert!(ids.len() >= 60, "{}: {} leads", db.backend, ids.len());
        let acme = db.store.get_lead(ids["Acme Corp 01"]).await.unwrap();
        assert_eq!(acme.contacts[0].phones.len(), 2);
        assert_eq!(
            acme.custom["Lead Source"],
            CustomValue::Text("Leadgen Team".into())
        );
        // Globex was called an hour or two before the reference instant.
        let globex = ids["Globex Corp 02"];
        let last = common::last_call_ms(&db.store, globex).await.unwrap();
        assert!(now_ms() - last <= 3 * 3_600_000);
        db.cleanup().await;
    }
}

fn binding(aor: &str, contact: &str, cseq: i64) -> Registration {
    Registration {
        aor: aor.into(),
        contact: contact.into(),
        expires_ms: 9_000_000_000_000,
        call_id: format!("{aor}-call"),
        cseq,
        q: (cseq % 2 == 0).then_some(0.5),
        transport: "udp".into(),
        source: "127.0.0.1:5062".into(),
    }
}

/// Batches larger than one multi-row statement, removals and refreshes in
/// one transaction (DESIGN.md "Writes leave the signalling path in batches").
async fn registration_batches(store: &Store, backend: &str) {
    use powerdial::store::RegistrationBatch;

    let first = RegistrationBatch {
        upserts: (0..2_500)
            .map(|i| binding(&format!("a{i}"), &format!("sip:a{i}@h"), 1))
            .collect(),
        removals: vec![("nobody".into(), "sip:nobody@h".into())],
        oldest_ticket: None,
    };
    store.save_registrations(&first).await.unwrap();
    assert_eq!(
        store.load_registrations().await.unwrap().len(),
        2_500,
        "{backend}"
    );

    let second = RegistrationBatch {
        upserts: (0..1_200)
            .map(|i| binding(&format!("a{i}"), &format!("sip:a{i}@h"), 2))
            .collect(),
        removals: (2_000..2_500)
            .map(|i| (format!("a{i}"), format!("sip:a{i}@h")))
            .collect(),
        oldest_ticket: None,
    };
    store.save_registrations(&second).await.unwrap();
    let all = store.load_registrations().await.unwrap();
    assert_eq!(all.len(), 2_000, "{backend}");
    let by_aor: std::collections::HashMap<&str, &Registration> =
        all.iter().map(|r| (r.aor.as_str(), r)).collect();
    assert_eq!(*by_aor["a7"], binding("a7", "sip:a7@h", 2), "{backend}");
    assert_eq!(
        *by_aor["a1500"],
        binding("a1500", "sip:a1500@h", 1),
        "{backend}"
    );
    assert!(!by_aor.contains_key("a2000"), "{backend}");
    store
        .save_registrations(&RegistrationBatch::default())
        .await
        .unwrap();
}

/// The writer task: every change handed to it is on disk once its senders
/// are gone (the flush a graceful shutdown relies on), with the last
/// change per (aor, contact) winning.
async fn registration_writer_flushes(store: &Store, backend: &str) {
    use powerdial::store::registration_writer::{self, RegistrationChange};

    let (mut tx, rx) = registration_writer::channel();
    let writer = tokio::spawn(registration_writer::run_writer(store.clone(), rx));
    for round in 1..=3 {
        for i in 0..3_000 {
            let change = if round == 3 && i % 3 == 0 {
                RegistrationChange::Remove {
                    aor: format!("w{i}"),
                    contact: format!("sip:w{i}@h"),
                }
            } else {
                RegistrationChange::Upsert(binding(&format!("w{i}"), &format!("sip:w{i}@h"), round))
            };
            tx.send(vec![change], round as u64 * 10_000 + i as u64)
                .await
                .unwrap();
        }
    }
    // The watermark: once it covers a ticket, that change is on disk (the
    // endpoint releases a REGISTER's 200 OK on it).
    let mut persisted = tx.persisted();
    let last: u64 = 3 * 10_000 + 2_999;
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        persisted.wait_for(|t| *t >= last),
    )
    .await
    .expect("the watermark reaches the last ticket")
    .unwrap();
    let stored = store.load_registrations().await.unwrap();
    assert_eq!(
        stored.len(),
        2_000,
        "{backend}: committed when the watermark says so"
    );
    drop(tx);
    tokio::time::timeout(std::time::Duration::from_secs(30), writer)
        .await
        .expect("the writer returns once its senders are gone")
        .unwrap();
    let all = store.load_registrations().await.unwrap();
    assert_eq!(all.len(), 2_000, "{backend}");
    assert!(
        all.iter().all(|r| r.cseq == 3),
        "{backend}: last write wins"
    );
}

/// A writer with nothing pending returns as soon as its senders are gone
/// (a shutdown with no registration traffic does not wait).
async fn idle_registration_writer_stops(store: &Store) {
    use powerdial::store::registration_writer;

    let (tx, rx) = registration_writer::channel();
    let writer = tokio::spawn(registration_writer::run_writer(store.clone(), rx));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    drop(tx);
    tokio::time::timeout(std::time::Duration::from_secs(5), writer)
        .await
        .expect("an idle writer stops at once")
        .unwrap();
}

#[tokio::test]
async fn registration_batches_on_every_backend() {
    for db in common::all_dbs("registration_batches_on_every_backend").await {
        let backend = db.backend;
        registration_batches(&db.store, backend).await;
        db.cleanup().await;
    }
    for db in common::all_dbs("registration_writer_on_every_backend").await {
        let backend = db.backend;
        idle_registration_writer_stops(&db.store).await;
        registration_writer_flushes(&db.store, backend).await;
        db.cleanup().await;
    }
}

/// Backpressure, not loss: while the database is locked the writer's
/// pending set fills to its bound, then the sender waits; once the lock
/// goes, everything sent is stored.
#[tokio::test]
async fn registration_writer_makes_the_sender_wait_while_the_database_is_busy() {
    use powerdial::store::registration_writer::{self, RegistrationChange, MAX_PENDING};

    let db = common::sqlite_db().await;
    let Store::Sqlite(sqlite) = &db.store else {
        unreachable!("sqlite_db is SQLite")
    };
    // Another writer holds SQLite's write lock (as a long import would).
    let lock = sqlite.begin_write().await.unwrap();
    let (mut tx, rx) = registration_writer::channel();
    let writer = tokio::spawn(registration_writer::run_writer(db.store.clone(), rx));
    let total = MAX_PENDING + 5_000;
    let sender = tokio::spawn(async move {
        for i in 0..total {
            let change =
                RegistrationChange::Upsert(binding(&format!("p{i}"), &format!("sip:p{i}@h"), 1));
            tx.send(vec![change], i as u64 + 1).await.unwrap();
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert!(
        !sender.is_finished(),
        "the sender waits while the writer cannot commit"
    );
    lock.rollback().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), sender)
        .await
        .expect("the sender resumes once the database is free")
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), writer)
        .await
        .expect("the writer flushes and stops")
        .unwrap();
    assert_eq!(db.store.load_registrations().await.unwrap().len(), total);
    db.cleanup().await;
}

/// The do-not-call list on both backends (SPEC §4): a number and a prefix
/// match what they cover and nothing else; paging in number order; delete.
#[tokio::test]
async fn do_not_call_list_on_every_backend() {
    use powerdial::leads::dnc::DncPattern;
    for db in common::all_dbs("do_not_call_list_on_every_backend").await {
        let s = &db.store;
        let p = |t: &str| DncPattern::parse(t, "US").expect("pattern");
        s.add_dnc(
            &[
                (p("+14155550134"), Some("asked".into())),
                (p("+1900*"), None),
                (p("+1415555*"), None),
            ],
            1_000,
        )
        .await
        .expect("add");
        // Adding again keeps the entry (and its date), takes a new reason.
        s.add_dnc(&[(p("+14155550134"), Some("asked twice".into()))], 2_000)
            .await
            .expect("add again");
        let hit = |n: &str| {
            let n = n.to_string();
            async move { s.dnc_match(&n).await.expect("match").map(|p| p.to_string()) }
        };
        // The number itself before the longest prefix that covers it.
        assert_eq!(hit("+14155550134").await.as_deref(), Some("+14155550134"));
        assert_eq!(hit("+19005550100").await.as_deref(), Some("+1900*"));
        assert_eq!(hit("+14155550199").await.as_deref(), Some("+1415555*"));
        assert_eq!(hit("+14165550134").await, None, "{}", db.backend);
        assert_eq!(hit("+1").await, None);
        let first = s.list_dnc(None, 2).await.expect("list");
        let names: Vec<&str> = first.iter().map(|e| e.number.as_str()).collect();
        assert_eq!(names, ["+1415555*", "+14155550134"], "{}", db.backend);
        assert_eq!(first[1].reason.as_deref(), Some("asked twice"));
        assert_eq!(first[1].created.timestamp_millis(), 1_000);
        let rest = s
            .list_dnc(Some(&p("+14155550134")), 10)
            .await
            .expect("list");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].number, "+1900*");
        assert!(s.delete_dnc(&p("+1900*")).await.expect("delete"));
        assert!(!s.delete_dnc(&p("+1900*")).await.expect("delete again"));
        assert_eq!(hit("+19005550100").await, None);
        db.cleanup().await;
    }
}

/// Leads calling back (SPEC §1) on both backends: the lead a number
/// belongs to (the one called last among several) and the agent who
/// called it last.
#[tokio::test]
async fn callback_lookups_on_every_backend() {
    for db in common::all_dbs("callback_lookups_on_every_backend").await {
        let s = &db.store;
        let fields = s.custom_field_set().await.unwrap();
        let lead = |name: &str, phone: &str, created: &str| {
            new_lead(json!({"name": name, "created": created,
                            "contacts": [{"name": "x", "phones": [phone]}]}))
            .validate(&fields, "US", common::reference_now())
            .unwrap()
        };
        let a = s
            .insert_lead(&lead("A", "+14155550101", "2026-01-01T00:00:00Z"), now_ms())
            .await
            .unwrap();
        let b = s
            .insert_lead(&lead("B", "+14155550101", "2026-01-02T00:00:00Z"), now_ms())
            .await
            .unwrap();
        let c = s
            .insert_lead(&lead("C", "+14155550199", "2026-01-03T00:00:00Z"), now_ms())
            .await
            .unwrap();
        assert_eq!(s.lead_by_phone("+14155550199").await.unwrap(), Some(c.id));
        assert_eq!(s.lead_by_phone("+14155550000").await.unwrap(), None);
        // Never called: the newest of the two.
        assert_eq!(s.lead_by_phone("+14155550101").await.unwrap(), Some(b.id));
        assert_eq!(s.last_agent_for_lead(a.id).await.unwrap(), None);
        let call = |lead: i64, agent: Option<&str>, at: i64| NewCall {
            session_id: Some(3),
            lead_id: Some(lead),
            agent: agent.map(str::to_string),
            number: "+14155550101".into(),
            started_ms: at,
            answered_ms: None,
            ended_ms: None,
            outcome: None,
            sip_status: None,
            ring_ms: None,
            trunk: None,
        };
        s.insert_call(&call(a.id, Some("bob"), 1_000))
            .await
            .unwrap();
        s.insert_call(&call(a.id, Some("alice"), 2_000))
            .await
            .unwrap();
        // A call logged without an agent does not count.
        s.insert_call(&call(a.id, None, 3_000)).await.unwrap();
        // A is the lead called last now.
        assert_eq!(s.lead_by_phone("+14155550101").await.unwrap(), Some(a.id));
        assert_eq!(
            s.last_agent_for_lead(a.id).await.unwrap(),
            Some(("alice".to_string(), Some(3)))
        );
        db.cleanup().await;
    }
}
