//! The SQLite backend: one file in WAL mode with foreign keys on.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{SqliteConnection, Transaction};

/// The SQLite store: a connection pool over one database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// How long a writer waits for the file lock before failing (SQLITE_BUSY):
/// imports and the dialer write concurrently.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl SqliteStore {
    /// Opens `sqlite://PATH` (creating the directory and the file) or
    /// `sqlite::memory:`, sets WAL mode and foreign keys, and applies
    /// `migrations/sqlite`.
    pub async fn open(url: &str) -> Result<SqliteStore, super::StoreError> {
        let memory = url.contains(":memory:");
        if !memory {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(super::StoreError::BadUrl(url.to_string()));
            }
            if let Some(dir) = Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)?;
                }
            }
        }
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let opts = if memory {
            opts
        } else {
            // NORMAL is durable in WAL mode except for the last commits on
            // power loss, and several times faster for imports.
            // A 64 MB page cache (the default is 2 MB): evaluating a Smart
            // View over 1,000,000 leads otherwise rereads pages it just read.
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .pragma("cache_size", "-65536")
        };
        // An in-memory database exists once per connection: keep one.
        let max = if memory { 1 } else { 8 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .connect_with(opts)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// The connection pool, for queries compiled elsewhere (Smart Views).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Starts a write transaction with `BEGIN IMMEDIATE`: a deferred one
    /// that later upgrades to a writer fails with SQLITE_BUSY at once
    /// instead of waiting for the lock when another writer is active.
    pub async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

store_methods!(SqliteStore, SqliteConnection, SqliteRow);
