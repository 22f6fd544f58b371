//! Benchmark: import 1,000,000 generated leads from a CSV file with the
//! `powerdial import-leads` path (`import_csv_with`, the shipped options
//! unless a flag changes them) into SQLite, and into PostgreSQL when
//! `POWERDIAL_TEST_DATABASE_URL` is set; reports the time, the rate, the
//! CPU spent (this process, and PostgreSQL's server processes) and the
//! process's peak memory (SPEC §6).
//!
//! `cargo bench --bench import [-- FLAGS]` (`POWERDIAL_BENCH_LEADS=N` for
//! another size). The CSV and the SQLite file live in a temp dir. Flags:
//!
//! - `--sqlite-only`, `--postgres-only`: one backend;
//! - `--commit-ms N`: an SQLite transaction of the import stays open at
//!   most N ms (shipped: 500);
//! - `--probe-ms N`: a writer beside the import, as a dialing session's
//!   call records are: a call row stored every N ms through the store's
//!   writer (`Store::insert_call`), each write's latency reported
//!   (p50 / p99 / max): the wait behind the import's write lock.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use powerdial::leads::{import_csv_with, ImportOptions, NewCall};
use powerdial::store::Store;

/// What the command line asked for.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    sqlite: bool,
    postgres: bool,
    commit_ms: Option<u64>,
    probe_ms: Option<u64>,
}

fn flags() -> Flags {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<u64>().expect("a number after the flag"))
    };
    let has = |name: &str| args.iter().any(|a| a == name);
    Flags {
        sqlite: !has("--postgres-only"),
        postgres: !has("--sqlite-only"),
        commit_ms: value("--commit-ms"),
        probe_ms: value("--probe-ms"),
    }
}

/// CPU seconds (user + system) this process has used.
fn own_cpu() -> f64 {
    // /proc/self/stat: utime and stime are fields 14 and 15, in clock
    // ticks (100 a second on Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    ticks_of(&stat)
}

/// utime + stime of a /proc/PID/stat line, in seconds.
fn ticks_of(stat: &str) -> f64 {
    // The command name (field 2) may hold spaces: count after its ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // After ')': state is field 3, so utime (14) is index 11, stime 12.
    (tick(11).unwrap_or(0.0) + tick(12).unwrap_or(0.0)) / 100.0
}

/// CPU seconds used so far by the processes named `postgres` (the server
/// and its backends; a backend that exited since is not counted, the
/// import's backends stay for the whole run in the store's pool).
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.contains("(postgres)"))
        .map(|s| ticks_of(&s))
        .sum()
}

/// A writer beside the import: a call row every `every` until `stop`;
/// returns each write's latency.
async fn probe(store: Store, every: Duration, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let call = NewCall {
        session_id: None,
        lead_id: None,
        agent: None,
        number: "+14155550100".into(),
        started_ms: common::NOW_MS,
        answered_ms: None,
        ended_ms: None,
        outcome: None,
        sip_status: None,
        ring_ms: None,
        trunk: None,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = common::start();
        store.insert_call(&call).await.expect("probe write");
        out.push(t.elapsed());
    }
    out
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

async fn run(label: &str, store: &Store, csv: &std::path::Path, n: u64, flags: Flags) {
    common::define_fields(store).await.expect("define fields");
    let mut options = ImportOptions::default();
    if let Some(ms) = flags.commit_ms {
        options.sqlite_commit_after = Duration::from_millis(ms);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let prober = flags.probe_ms.map(|ms| {
        tokio::spawn(probe(
            store.clone(),
            Duration::from_millis(ms.max(1)),
            stop.clone(),
        ))
    });
    let (cpu0, pg0) = (own_cpu(), postgres_cpu());
    let t = common::start();
    let mut last_report = 0;
    let file = std::fs::File::open(csv).expect("open csv");
    #[allow(clippy::disallowed_methods)] // a driver: the import's "now".
    let now = chrono::Utc::now();
    let report = import_csv_with(store, file, "US", now, options, |rows| {
        // A progress line per 100,000 rows, as the CLI shows.
        if rows / 100_000 > last_report {
            last_report = rows / 100_000;
            eprintln!("  {label}: {rows} rows");
        }
    })
    .await
    .expect("import");
    let secs = t.elapsed().as_secs_f64();
    let (cpu, pg) = (own_cpu() - cpu0, postgres_cpu() - pg0);
    stop.store(true, Ordering::Relaxed);
    let stored = store.count_leads().await.expect("count");
    println!(
        "{label}: imported {} leads ({} rows failed) in {secs:.1} s = {:.0} leads/s; \
         {stored} in the database; process CPU {cpu:.1} s, postgres CPU {pg:.1} s; \
         commit after {} ms; peak RSS so far {}",
        report.imported,
        report.failed_total,
        report.imported as f64 / secs,
        options.sqlite_commit_after.as_millis(),
        common::peak_rss()
    );
    if let Some(f) = report.failed.first() {
        println!("  first failure: line {}: {}", f.line, f.reason);
    }
    if let Some(prober) = prober {
        let mut lat = prober.await.expect("probe");
        lat.sort_unstable();
        println!(
            "  {label}: writer beside the import: {} writes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lat.len(),
            quantile(&lat, 0.5),
            quantile(&lat, 0.99),
            quantile(&lat, 1.0),
        );
    }
    assert_eq!(report.imported + report.failed_total, n);
}

fn main() {
    let flags = flags();
    let n = common::lead_count();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let csv = dir.path().join("leads.csv");
        let t = common::start();
        common::write_csv(&csv, n, 42).expect("write csv");
        let size = std::fs::metadata(&csv).map(|m| m.len()).unwrap_or(0);
        println!(
            "generated {n} leads, {:.1} MB of CSV, in {:.1} s",
            size as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        if flags.sqlite {
            let sqlite = common::sqlite(dir.path()).await;
            run("sqlite", &sqlite, &csv, n, flags).await;
            sqlite.close().await;
        }
        if flags.postgres {
            if let Some((pg, base, schema)) = common::postgres().await {
                run("postgres", &pg, &csv, n, flags).await;
                common::drop_pg(pg, &base, &schema).await;
            }
        }
        println!("peak RSS (VmHWM) at the end: {}", common::peak_rss());
    });
}
