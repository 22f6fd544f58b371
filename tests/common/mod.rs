//! Test helpers shared by the `tests/leads_*.rs` binaries (and the Smart
//! View tests): fresh stores of either backend and the fixture data set.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use powerdial::leads::import::import_csv;
use powerdial::leads::model::{
    parse_time, time_to_ms, CallOutcome, CustomFieldKind, NewCall, NewCustomField,
    OpportunityStatus, ValidOpportunity,
};
use powerdial::store::{self, Store};

mod skip;
pub use skip::pg_url;

/// The instant the fixtures are written relative to: their `created`
/// dates spread over the 18 months before it, and calls are minutes to
/// months before it. Evaluate fixture queries with this as "now".
pub const REFERENCE_NOW: &str = "2026-11-01T12:00:00Z";

/// [`REFERENCE_NOW`] parsed.
pub fn reference_now() -> DateTime<Utc> {
    parse_time(REFERENCE_NOW).expect("reference instant")
}

/// The environment variable naming a PostgreSQL server for tests.
pub const PG_ENV: &str = "POWERDIAL_TEST_DATABASE_URL";

/// A fresh store and what keeps it alive.
pub struct TestDb {
    /// The store.
    pub store: Store,
    /// `sqlite` or `postgres`, for messages.
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    pg_base: Option<(String, String)>,
}

impl TestDb {
    /// Drops the PostgreSQL schema (SQLite's temp dir goes by itself).
    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some((base, schema)) = self.pg_base {
            if let Ok(admin) = store::connect_admin_pg(&base).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
        }
    }
}

/// A fresh SQLite store in a file under a new temp dir (a nested
/// directory, so directory creation is exercised).
pub async fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/nested/test.db", dir.path().display());
    let store = store::connect(&url).await.expect("open sqlite");
    TestDb {
        store,
        backend: "sqlite",
        _dir: Some(dir),
        pg_base: None,
    }
}

/// A fresh PostgreSQL store in a new schema `t_<random>` of the database
/// named by `POWERDIAL_TEST_DATABASE_URL`, or `None` (with a loud SKIPPED
/// line) when it is not set.
pub async fn pg_db(test: &str) -> Option<TestDb> {
    let base = pg_url(test)?;
    let schema = format!("t_{:016x}", rand::random::<u64>());
    let admin = store::connect_admin_pg(&base)
        .await
        .expect("connect to test PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = store::connect(&url).await.expect("open postgres");
    Some(TestDb {
        store,
        backend: "postgres",
        _dir: None,
        pg_base: Some((base, schema)),
    })
}

/// A fresh store of each available backend: SQLite always, PostgreSQL when
/// configured.
pub async fn all_dbs(test: &str) -> Vec<TestDb> {
    let mut v = vec![sqlite_db().await];
    if let Some(pg) = pg_db(test).await {
        v.push(pg);
    }
    v
}

/// Path of a file under `fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Defines the fixtures' custom fields: "Lead Source" (choices incl.
/// "Leadgen Team") and "Next Call Date" (date).
pub async fn define_fixture_fields(store: &Store) {
    store
        .define_custom_field(&NewCustomField {
            name: "Lead Source".into(),
            kind: CustomFieldKind::Choices,
            choices: vec![
                "Leadgen Team".into(),
                "Website".into(),
                "Referral".into(),
                "Trade Show".into(),
            ],
        })
        .await
        .expect("define Lead Source");
    store
        .define_custom_field(&NewCustomField {
            name: "Next Call Date".into(),
            kind: CustomFieldKind::Date,
            choices: vec![],
        })
        .await
        .expect("define Next Call Date");
}

/// Loads `fixtures/leads.csv`, `calls.csv` and `opportunities.csv` into an
/// empty store, as of [`REFERENCE_NOW`]; returns lead ids by name.
pub async fn load_fixtures(store: &Store) -> HashMap<String, i64> {
    define_fixture_fields(store).await;
    let file = std::fs::File::open(fixture("leads.csv")).expect("leads.csv");
    let report = import_csv(store, file, "US", reference_now(), |_| {})
        .await
        .expect("import leads.csv");
    assert_eq!(
        report.failed_total, 0,
        "fixture rows failed: {:?}",
        report.failed
    );
    let mut ids = HashMap::new();
    let mut after = None;
    loop {
        let page = store.list_leads(after, 1000).await.expect("list");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for l in page {
            ids.insert(l.name.clone(), l.id);
        }
    }
    let mut calls = csv::Reader::from_path(fixture("calls.csv")).expect("calls.csv");
    for rec in calls.records() {
        let rec = rec.expect("calls.csv row");
        let lead = ids[&rec[0]];
        let started = time_to_ms(parse_time(&rec[1]).expect("started"));
        let outcome: CallOutcome =
            serde_json::from_value(serde_json::Value::String(rec[2].to_string())).expect("outcome");
        store
            .insert_call(&NewCall {
                session_id: None,
                lead_id: Some(lead),
                agent: Some("fixture".into()),
                number: String::new(),
                started_ms: started,
                answered_ms: (outcome == CallOutcome::Answered).then_some(started + 5000),
                ended_ms: Some(started + 60_000),
                outcome: Some(outcome),
                sip_status: None,
                ring_ms: Some(5000),
                trunk: None,
            })
            .await
            .expect("insert call");
    }
    let mut opps = csv::Reader::from_path(fixture("opportunities.csv")).expect("opportunities.csv");
    for rec in opps.records() {
        let rec = rec.expect("opportunities.csv row");
        store
            .add_opportunity(
                ids[&rec[0]],
                &ValidOpportunity {
                    status_type: OpportunityStatus::parse(&rec[1]).expect("status_type"),
                    created_ms: time_to_ms(parse_time(&rec[2]).expect("created")),
                    value: rec[3].parse().ok(),
                },
                time_to_ms(reference_now()),
            )
            .await
            .expect("add opportunity");
    }
    ids
}

/// `leads.last_call_ms` of a lead, read directly.
pub async fn last_call_ms(store: &Store, lead: i64) -> Option<i64> {
    let sql = "SELECT last_call_ms FROM leads WHERE id = $1";
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(sql).bind(lead).fetch_one(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(sql).bind(lead).fetch_one(s.pool()).await,
    }
    .expect("read last_call_ms")
}
