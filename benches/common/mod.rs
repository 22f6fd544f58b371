//! Shared by the `harness = false` benchmarks: a deterministic lead
//! generator, fresh stores of either backend, and the process's peak memory.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use powerdial::leads::model::{CustomFieldKind, NewCustomField};
use powerdial::store::{self, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The environment variable naming a PostgreSQL server to benchmark too.
pub const PG_ENV: &str = "POWERDIAL_TEST_DATABASE_URL";

/// How many leads to generate: `POWERDIAL_BENCH_LEADS`, else 1,000,000.
pub fn lead_count() -> u64 {
    std::env::var("POWERDIAL_BENCH_LEADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Statuses in rough real-world proportions.
pub const STATUSES: [&str; 6] = [
    "Potential",
    "Potential",
    "Qualified",
    "Interested",
    "Customer",
    "Bad Fit",
];

/// Choices of the "Lead Source" custom field.
pub const SOURCES: [&str; 4] = ["Leadgen Team", "Website", "Referral", "Trade Show"];

/// Epoch ms of 2026-11-01T12:00:00Z, the generated data's "now".
pub const NOW_MS: i64 = 1_793_534_400_000;
/// One day in ms.
pub const DAY_MS: i64 = 86_400_000;

/// US area codes the generated numbers use (all valid for `US`).
const AREAS: [u32; 8] = [212, 303, 312, 415, 503, 617, 646, 713];

/// Writes `n` leads as CSV (the import's header names) to `path`: a name,
/// status, contact, one or two phone numbers, `created` over 3 years before
/// [`NOW_MS`], a Lead Source on 80% and a Next Call Date on two thirds.
pub fn write_csv(path: &Path, n: u64, seed: u64) -> std::io::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        out,
        "name,status,contact_name,phone,phone2,created,custom.Lead Source,custom.Next Call Date"
    )?;
    for i in 0..n {
        let status = STATUSES[rng.gen_range(0..STATUSES.len())];
        let phone = |rng: &mut StdRng| {
            format!(
                "({}) {}-{:04}",
                AREAS[rng.gen_range(0..AREAS.len())],
                rng.gen_range(201..=989),
                rng.gen_range(0..10_000)
            )
        };
        let p1 = phone(&mut rng);
        let p2 = if rng.gen_bool(0.2) {
            phone(&mut rng)
        } else {
            String::new()
        };
        let created = NOW_MS - rng.gen_range(0..3 * 365 * DAY_MS);
        let created = chrono::DateTime::from_timestamp_millis(created)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ");
        let source = if rng.gen_bool(0.8) {
            SOURCES[rng.gen_range(0..SOURCES.len())]
        } else {
            ""
        };
        let next = if rng.gen_bool(0.66) {
            let d = NOW_MS + rng.gen_range(-60..60) * DAY_MS;
            chrono::DateTime::from_timestamp_millis(d)
                .unwrap_or_default()
                .format("%Y-%m-%d")
                .to_string()
        } else {
            String::new()
        };
        writeln!(
            out,
            "Lead {i:07},{status},Contact {i},{p1},{p2},{created},{source},{next}"
        )?;
    }
    out.flush()
}

/// Defines the generated data's custom fields.
pub async fn define_fields(store: &Store) -> Result<(), store::StoreError> {
    store
        .define_custom_field(&NewCustomField {
            name: "Lead Source".into(),
            kind: CustomFieldKind::Choices,
            choices: SOURCES.iter().map(|s| s.to_string()).collect(),
        })
        .await?;
    store
        .define_custom_field(&NewCustomField {
            name: "Next Call Date".into(),
            kind: CustomFieldKind::Date,
            choices: vec![],
        })
        .await?;
    Ok(())
}

/// A fresh SQLite store in `dir`.
pub async fn sqlite(dir: &Path) -> Store {
    let url = format!("sqlite://{}/bench.db", dir.display());
    store::connect(&url).await.expect("open sqlite")
}

/// A fresh PostgreSQL store in a new schema, and the schema's name (drop
/// it with [`drop_pg`]); `None` when [`PG_ENV`] is not set.
pub async fn postgres() -> Option<(Store, String, String)> {
    let Ok(base) = std::env::var(PG_ENV) else {
        println!("SKIPPED: {PG_ENV} not set: PostgreSQL not benchmarked");
        return None;
    };
    let schema = format!("bench_{:016x}", rand::random::<u64>());
    let admin = store::connect_admin_pg(&base).await.expect("connect pg");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = store::connect(&url).await.expect("open pg");
    Some((store, base, schema))
}

/// Drops a schema made by [`postgres`].
pub async fn drop_pg(store: Store, base: &str, schema: &str) {
    store.close().await;
    if let Ok(admin) = store::connect_admin_pg(base).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

/// The process's peak resident memory (`VmHWM` of /proc/self/status).
pub fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A wall-clock stopwatch: benchmarks are drivers, they may read the clock.
#[allow(clippy::disallowed_methods)]
pub fn start() -> std::time::Instant {
    std::time::Instant::now()
}
