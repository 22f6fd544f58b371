//! Benchmark: import 1,000,000 generated leads from a CSV file with
//! `import_csv_file` (the `powerdial import-leads` path) into SQLite, and
//! into PostgreSQL when `POWERDIAL_TEST_DATABASE_URL` is set; reports the
//! time, the rate and the process's peak memory (SPEC §6).
//!
//! `cargo bench --bench import` (`POWERDIAL_BENCH_LEADS=N` for another
//! size). The CSV and the SQLite file live in a temp dir.

mod common;

use powerdial::leads::import_csv_file;
use powerdial::store::Store;

async fn run(label: &str, store: &Store, csv: &std::path::Path, n: u64) {
    common::define_fields(store).await.expect("define fields");
    let t = common::start();
    let mut last_report = 0;
    let report = import_csv_file(store, csv, "US", |rows| {
        // A progress line per 100,000 rows, as the CLI shows.
        if rows / 100_000 > last_report {
            last_report = rows / 100_000;
            eprintln!("  {label}: {rows} rows");
        }
    })
    .await
    .expect("import");
    let secs = t.elapsed().as_secs_f64();
    let stored = store.count_leads().await.expect("count");
    println!(
        "{label}: imported {} leads ({} rows failed) in {secs:.1} s = {:.0} leads/s; \
         {stored} in the database; peak RSS so far {}",
        report.imported,
        report.failed_total,
        report.imported as f64 / secs,
        common::peak_rss()
    );
    if let Some(f) = report.failed.first() {
        println!("  first failure: line {}: {}", f.line, f.reason);
    }
    assert_eq!(report.imported + report.failed_total, n);
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
        let csv = dir.path().join("leads.csv");
        let t = common::start();
        common::write_csv(&csv, n, 42).expect("write csv");
        let size = std::fs::metadata(&csv).map(|m| m.len()).unwrap_or(0);
        println!(
            "generated {n} leads, {:.1} MB of CSV, in {:.1} s",
            size as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        let sqlite = common::sqlite(dir.path()).await;
        run("sqlite", &sqlite, &csv, n).await;
        sqlite.close().await;
        if let Some((pg, base, schema)) = common::postgres().await {
            run("postgres", &pg, &csv, n).await;
            common::drop_pg(pg, &base, &schema).await;
        }
        println!("peak RSS (VmHWM) at the end: {}", common::peak_rss());
    });
}
