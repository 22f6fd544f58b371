//! The PostgreSQL half of a test runs when `POWERDIAL_TEST_DATABASE_URL`
//! names a database. Without it the test says so where a person reads it,
//! and under CI (`CI` set) a missing database is a failure, not a skip.

/// The test database URL, or `None` after a SKIPPED line on the process's
/// own stderr. libtest captures `eprintln!` (and shows it only for failing
/// tests), so the line is written to the stream directly and appears in
/// `cargo test`'s output beside the test's `ok`.
///
/// # Panics
/// When `CI` is set and the variable is not: CI must never pass a skipped
/// PostgreSQL test off as a pass.
pub fn pg_url(test: &str) -> Option<String> {
    const VAR: &str = "POWERDIAL_TEST_DATABASE_URL";
    if let Ok(url) = std::env::var(VAR) {
        return Some(url);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{VAR} is not set but CI is: {test} must run on PostgreSQL in CI (.ci/run sets it)");
    }
    let line = format!("\nSKIPPED: {test}: PostgreSQL part not run ({VAR} not set)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    None
}
