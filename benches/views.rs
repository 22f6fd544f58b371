//! Benchmark: evaluate Smart Views over 1,000,000 leads (SPEC §6 "refresh
//! of a 1,000,000-lead view under 2 s") on SQLite, and on
//! PostgreSQL when `POWERDIAL_TEST_DATABASE_URL` is set.
//!
//! The leads are bulk-loaded with multi-row INSERTs (the import has its own
//! benchmark): statuses, `created` over three years, a Lead Source on 80%,
//! a Next Call Date on two thirds, a latest call on 60% and an opportunity
//! on 30%. Each view is evaluated twice with `Store::evaluate_view` (the
//! dialer's queue refresh, R6); the first and second times are printed.
//! A view whose conditions a missing custom value satisfies is also timed
//! as one joined query, the form before `CompiledQuery::excluding`.
//! `POWERDIAL_BENCH_EXPLAIN=1` prints each query's plan too (PostgreSQL:
//! `EXPLAIN (ANALYZE, BUFFERS)`, with the times of each step).
//!
//! Then, per view, a lead change reaching the queue (SPEC §6: under 100 ms
//! without re-evaluating the whole view): the session's check of changed
//! leads, `Store::view_members` for the one lead and `SessionQueue::leave`
//! if it left, timed over 200 leads of the view with no change (a call
//! outcome that keeps the lead in the view) and, for the status and
//! `called` views, over 50 edits that make the lead leave.
//!
//! `cargo bench --bench views` (`POWERDIAL_BENCH_LEADS=N` for another size;
//! `POWERDIAL_BENCH_REPEAT=N` evaluates each view N times instead of twice
//! and prints every evaluation's CPU, page faults and preemptions).

mod common;

use chrono::DateTime;
use powerdial::dialer::queue::{LeadId, SessionQueue, DEFAULT_BLOCK};
use powerdial::leads::query::{CompiledQuery, SqlParam};
use powerdial::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{DAY_MS, NOW_MS, SOURCES, STATUSES};

/// Views timed: the seven help-page examples and a filtered sort.
const VIEWS: [&str; 8] = [
    r#"lead_status:"Potential" sort:-created"#,
    r#"sort:-"Next Call Date""#,
    "sort:-created",
    r#"lead_status:"Potential" opportunities:0"#,
    r#"custom."Lead Source":"Leadgen Team" latest_call_created > "5 days ago" opportunities:0 lead_status not in ("Bad Fit", "Customer")"#,
    r#"opportunity(created > "6 months ago" created < "12 months ago" status_type:Lost) latest_call_created > "5 days ago""#,
    r#"lead_status:potential and not called < "4 hours ago""#,
    r#"("custom.Next Call Date" < now or "custom.Next Call Date":"")"#,
];

/// A bind value of the bulk loader.
enum P {
    I(Option<i64>),
    F(Option<f64>),
    T(Option<String>),
}

/// Binds `params` to `sql` and runs it on whichever backend `store` is.
async fn exec(store: &Store, sql: &str, params: Vec<P>) {
    macro_rules! run {
        ($pool:expr) => {{
            let mut q = sqlx::query(sql);
            for p in params {
                q = match p {
                    P::I(v) => q.bind(v),
                    P::F(v) => q.bind(v),
                    P::T(v) => q.bind(v),
                };
            }
            q.execute($pool).await.expect("bulk insert");
        }};
    }
    match store {
        Store::Sqlite(s) => run!(s.pool()),
        Store::Postgres(s) => run!(s.pool()),
    }
}

/// Inserts `rows` (each `width` values) into `table (columns)` in
/// statements of at most `per` rows.
async fn insert_rows(store: &Store, head: &str, width: usize, rows: Vec<Vec<P>>) {
    // SQLite binds `?` far faster than numbered `$N` in long statements.
    let numbered = matches!(store, Store::Postgres(_));
    let per = 30_000 / width;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<P>> = rows.by_ref().take(per).collect();
        let mut sql = String::from(head);
        sql.push_str(" VALUES ");
        let mut n = 0;
        for (i, _) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for j in 0..width {
                if j > 0 {
                    sql.push(',');
                }
                n += 1;
                if numbered {
                    sql.push_str(&format!("${n}"));
                } else {
                    sql.push('?');
                }
            }
            sql.push(')');
        }
        exec(store, &sql, chunk.into_iter().flatten().collect()).await;
    }
}

async fn load(store: &Store, n: u64) {
    common::define_fields(store).await.expect("fields");
    let fields = store.list_custom_fields().await.expect("fields");
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.id)
            .expect("field")
    };
    let (source_id, next_id) = (field("Lead Source"), field("Next Call Date"));
    let mut rng = StdRng::seed_from_u64(7);
    let block = 100_000u64;
    let mut start = 0;
    while start < n {
        let end = (start + block).min(n);
        let (mut leads, mut values, mut opps) = (Vec::new(), Vec::new(), Vec::new());
        for i in start..end {
            let id = i as i64 + 1;
            let created = NOW_MS - rng.gen_range(0..3 * 365 * DAY_MS);
            let last_call = rng
                .gen_bool(0.6)
                .then(|| NOW_MS - rng.gen_range(0..60 * DAY_MS));
            leads.push(vec![
                P::T(Some(format!("Lead {i:07}"))),
                P::T(Some(STATUSES[rng.gen_range(0..STATUSES.len())].into())),
                P::I(Some(created)),
                P::I(Some(created)),
                P::I(last_call),
            ]);
            if rng.gen_bool(0.8) {
                let s = SOURCES[rng.gen_range(0..SOURCES.len())];
                values.push(vec![
                    P::I(Some(id)),
                    P::I(Some(source_id)),
                    P::T(Some(s.into())),
                    P::I(None),
                ]);
            }
            if rng.gen_bool(0.66) {
                let day = (NOW_MS / DAY_MS + rng.gen_range(-60..60)) * DAY_MS;
                values.push(vec![
                    P::I(Some(id)),
                    P::I(Some(next_id)),
                    P::T(None),
                    P::I(Some(day)),
                ]);
            }
            if rng.gen_bool(0.3) {
                let st = ["Active", "Won", "Lost"][rng.gen_range(0..3)];
                opps.push(vec![
                    P::I(Some(id)),
                    P::T(Some(st.into())),
                    P::I(Some(NOW_MS - rng.gen_range(0..2 * 365 * DAY_MS))),
                    P::F(Some(f64::from(rng.gen_range(100..10_000)))),
                ]);
            }
        }
        insert_rows(
            store,
            "INSERT INTO leads (name, status, created_ms, updated_ms, last_call_ms)",
            5,
            leads,
        )
        .await;
        insert_rows(
            store,
            "INSERT INTO lead_custom_values (lead_id, field_id, value_text, value_ms)",
            4,
            values,
        )
        .await;
        insert_rows(
            store,
            "INSERT INTO opportunities (lead_id, status_type, created_ms, value)",
            4,
            opps,
        )
        .await;
        start = end;
    }
    // Fresh statistics and (PostgreSQL) a visibility map, as autovacuum
    // keeps them on a long-running database: without it PostgreSQL's
    // index-only scans visit every heap page of a freshly loaded table.
    let analyze = match store {
        Store::Sqlite(_) => "ANALYZE",
        Store::Postgres(_) => "VACUUM ANALYZE",
    };
    exec(store, analyze, Vec::new()).await;
}

/// The plans of the queries a compiled view runs, one line per step
/// (PostgreSQL: `EXPLAIN (ANALYZE, BUFFERS)`, with the times of each step).
async fn explain(store: &Store, q: &CompiledQuery) -> Vec<String> {
    let mut queries: Vec<(&str, &str, &[SqlParam])> = Vec::new();
    let whole = match &q.excluding {
        Some(e) => {
            for f in &e.failing {
                queries.push(("leads failing a condition", &f.sql, &f.params));
            }
            &*e.rest
        }
        None => q,
    };
    match &whole.unsorted {
        Some(u) => queries.push(("unsorted, sorted in Rust", &u.sql, &u.params)),
        None => queries.push(("in view order", &whole.sql, &whole.params)),
    }
    let mut lines = Vec::new();
    for (what, sql, params) in queries {
        lines.push(format!("-- {what}: {sql}"));
        lines.extend(explain_one(store, sql, params).await);
    }
    lines
}

/// The plan of one query.
async fn explain_one(store: &Store, sql: &str, params: &[SqlParam]) -> Vec<String> {
    macro_rules! bind {
        ($q:expr) => {{
            let mut query = $q;
            for p in params {
                query = match p {
                    SqlParam::Int(v) => query.bind(*v),
                    SqlParam::Float(v) => query.bind(*v),
                    SqlParam::Text(v) => query.bind(v.clone()),
                };
            }
            query
        }};
    }
    match store {
        Store::Sqlite(s) => {
            let sql = format!("EXPLAIN QUERY PLAN {sql}");
            let rows: Vec<(i64, i64, i64, String)> = bind!(sqlx::query_as(&sql))
                .fetch_all(s.pool())
                .await
                .expect("explain");
            rows.into_iter().map(|r| r.3).collect()
        }
        Store::Postgres(s) => {
            let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
            bind!(sqlx::query_scalar(&sql))
                .fetch_all(s.pool())
                .await
                .expect("explain")
        }
    }
}

async fn bench(label: &str, store: &Store, n: u64) {
    let t = common::start();
    load(store, n).await;
    println!(
        "{label}: loaded {} leads in {:.1} s",
        store.count_leads().await.expect("count"),
        t.elapsed().as_secs_f64()
    );
    let now = DateTime::from_timestamp_millis(NOW_MS).unwrap_or_default();
    let show_plans = std::env::var_os("POWERDIAL_BENCH_EXPLAIN").is_some();
    let repeat = std::env::var("POWERDIAL_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(2)
        .max(2);
    for view in VIEWS {
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        let mut usage = Vec::new();
        let mut count = 0;
        for _ in 0..repeat {
            let (t, c, u) = (common::start(), cpu_ms(), Usage::now());
            let ids = store.evaluate_view(view, now).await.expect("evaluate");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            cpu.push(cpu_ms() - c);
            usage.push(Usage::now().since(&u));
            count = ids.len();
        }
        println!(
            "{label}: {count:>7} leads in {:>7.0} ms, then {:>7.0} ms (this process's CPU {:.0} / {:.0} ms, load {}): {view}",
            times[0], times[1], cpu[0], cpu[1], load_average()
        );
        if repeat > 2 {
            // Every evaluation: wall ms (user + sys CPU ms, minor page
            // faults, involuntary context switches), to tell more work
            // from waiting for a core.
            let all: Vec<String> = times
                .iter()
                .zip(&usage)
                .map(|(t, u)| format!("{t:.0} ({u})"))
                .collect();
            println!("{label}:   all {repeat}: {}", all.join(", "));
        }
        // The same view as one joined query (the form before
        // `CompiledQuery::excluding`), timed beside it on the same data
        // and machine load, with the same result.
        let q = store.compile_view(view, now).await.expect("compile");
        if q.excluding.is_some() {
            let joined = CompiledQuery {
                excluding: None,
                ..q.clone()
            };
            let mut joined_times = Vec::new();
            let split = store.run_view(&q).await.expect("run");
            for _ in 0..2 {
                let t = common::start();
                let ids = store.run_view(&joined).await.expect("run");
                joined_times.push(t.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(ids, split, "split and joined forms differ: {view}");
            }
            println!(
                "{label}: {count:>7} leads in {:>7.0} ms, then {:>7.0} ms as one joined query (load {}): {view}",
                joined_times[0], joined_times[1], load_average()
            );
        }
        if show_plans {
            for line in explain(store, &q).await {
                println!("      {line}");
            }
        }
    }
    for (i, view) in VIEWS.iter().enumerate() {
        lead_change(label, store, view, i).await;
    }
}

/// CPU time used by this process so far, all threads, in ms: SQLite runs
/// in the process, so an evaluation slower in wall time but not in CPU
/// time waited for a core (the machine's load), not for more work.
fn cpu_ms() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// This process's resource usage so far (`getrusage`), for the
/// per-evaluation detail of `POWERDIAL_BENCH_REPEAT`.
struct Usage {
    user_ms: f64,
    sys_ms: f64,
    minflt: i64,
    nivcsw: i64,
}

impl Usage {
    fn now() -> Usage {
        // SAFETY: getrusage writes one `rusage` into the zeroed value given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return Usage {
                user_ms: f64::NAN,
                sys_ms: f64::NAN,
                minflt: 0,
                nivcsw: 0,
            };
        }
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
        Usage {
            user_ms: ms(usage.ru_utime),
            sys_ms: ms(usage.ru_stime),
            minflt: usage.ru_minflt,
            nivcsw: usage.ru_nivcsw,
        }
    }

    fn since(&self, before: &Usage) -> Usage {
        Usage {
            user_ms: self.user_ms - before.user_ms,
            sys_ms: self.sys_ms - before.sys_ms,
            minflt: self.minflt - before.minflt,
            nivcsw: self.nivcsw - before.nivcsw,
        }
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0}+{:.0} ms, {} flt, {} icsw",
            self.user_ms, self.sys_ms, self.minflt, self.nivcsw
        )
    }
}

/// The 1-minute load average (`/proc/loadavg`).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// p50 / p99 / max of `ms`, sorted here.
fn tail(ms: &mut [f64]) -> String {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!("{:.2} / {:.2} / {:.2} ms", at(0.5), at(0.99), at(1.0))
}

/// A lead change reaching a session's queue without re-reading the view
/// (see the module comment).
async fn lead_change(label: &str, store: &Store, view: &str, index: usize) {
    let now = DateTime::from_timestamp_millis(NOW_MS).unwrap_or_default();
    let ids = store.evaluate_view(view, now).await.expect("evaluate");
    if ids.is_empty() {
        return;
    }
    let mut queue = SessionQueue::new(DEFAULT_BLOCK);
    let leads: Vec<LeadId> = ids.iter().map(|&i| LeadId(i)).collect();
    queue.refresh(&leads, |_| None, NOW_MS).expect("refresh");
    let mut rng = StdRng::seed_from_u64(11 + index as u64);
    let mut kept = Vec::new();
    for _ in 0..200 {
        let lead = ids[rng.gen_range(0..ids.len())];
        let t = common::start();
        let members = store
            .view_members(view, now, &[lead])
            .await
            .expect("members");
        if !members.contains(&lead) {
            queue.leave(LeadId(lead));
        }
        kept.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(
            queue.in_view(LeadId(lead)),
            "an unchanged lead left the view"
        );
    }
    println!(
        "{label}: lead change → queue, lead stays (p50 / p99 / max): {}: {view}",
        tail(&mut kept)
    );
    // Edits that take the lead out of the view: a status change for the
    // status views, a call now for the `called` view.
    let edit = match index {
        0 | 3 => "UPDATE leads SET status = 'Customer' WHERE id = $1",
        6 => "UPDATE leads SET last_call_ms = 1793534400000 WHERE id = $1",
        _ => return,
    };
    let edit = if matches!(store, Store::Sqlite(_)) {
        edit.replace("$1", "?")
    } else {
        edit.to_string()
    };
    let mut left = Vec::new();
    for _ in 0..50 {
        let lead = ids[rng.gen_range(0..ids.len())];
        if !queue.in_view(LeadId(lead)) {
            continue;
        }
        exec(store, &edit, vec![P::I(Some(lead))]).await;
        let t = common::start();
        let members = store
            .view_members(view, now, &[lead])
            .await
            .expect("members");
        if !members.contains(&lead) {
            queue.leave(LeadId(lead));
        }
        left.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(
            !queue.in_view(LeadId(lead)),
            "an edited lead stayed in the view"
        );
    }
    println!(
        "{label}: lead change → queue, lead leaves (p50 / p99 / max): {}: {view}",
        tail(&mut left)
    );
}

fn main() {
    let n = common::lead_count();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = common::sqlite(dir.path()).await;
        bench("sqlite", &sqlite, n).await;
        sqlite.close().await;
        if let Some((pg, base, schema)) = common::postgres().await {
            bench("postgres", &pg, n).await;
            common::drop_pg(pg, &base, &schema).await;
        }
        println!("peak RSS (VmHWM): {}", common::peak_rss());
    });
}
