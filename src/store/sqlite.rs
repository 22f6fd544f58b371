//! The SQLite backend: one file in WAL mode with foreign keys on.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{SqliteConnection, Transaction};

/// The SQLite store: a connection pool over one database file, and one
/// connection of its own for write transactions ([`SqliteStore::begin_write`]).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection: writers queue for it in the pool's FIFO instead of
    /// each taking a connection and polling SQLite's file lock. SQLite
    /// admits one writer at a time anyway (WAL: readers go on beside it);
    /// its busy handler sleeps 1, 2, 5, 10 … ms between tries, which under
    /// many concurrent writers (every agent's claim, the call and journal
    /// writers) turns a wait of microseconds into milliseconds.
    writer: SqlitePool,
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
        // No ping before a connection leaves the pool (sqlx's default
        // `test_before_acquire`): on SQLite a ping checks only that the
        // connection's own worker thread is alive, yet it is one more
        // round trip to that thread for every statement run on the pool —
        // a wake-up and two context switches each, more than the statement
        // itself costs on the call path (SPEC §6 call setup rate). A file
        // connection cannot be hung up on; a worker that died reports
        // `WorkerCrashed` on the statement itself.
        let writer_opts = opts.clone();
        let pool = SqlitePoolOptions::new()
            .test_before_acquire(false)
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
        let writer = if memory {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .test_before_acquire(false)
                .max_connections(1)
                .min_connections(0)
                .idle_timeout(Some(Duration::from_secs(600)))
                .max_lifetime(Some(Duration::from_secs(1800)))
                .connect_with(writer_opts)
                .await?
        };
        Ok(SqliteStore { pool, writer })
    }

    /// The connection pool, for queries compiled elsewhere (Smart Views).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The pool of the one writer connection, for a write that is a single
    /// statement (committed on its own, no `BEGIN`/`COMMIT` round trips);
    /// see [`begin_write`](Self::begin_write) for why writes share one
    /// connection.
    pub fn write_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// Closes both pools, waiting for connections to be returned.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Starts a write transaction with `BEGIN IMMEDIATE`: a deferred one
    /// that later upgrades to a writer fails with SQLITE_BUSY at once
    /// instead of waiting for the lock when another writer is active.
    pub async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }
}

impl SqliteStore {
    /// Whole leads by id in one statement (`store_methods!`'s
    /// `load_chunk` appends the `(…)` of ids): contacts with their phones,
    /// custom values and opportunities as JSON arrays (SQLite's JSON1,
    /// ordered aggregates since 3.44). `json()` keeps a nested array an
    /// array: a subquery's JSON comes back as text.
    pub(crate) const LEADS_BY_ID: &'static str = "SELECT l.id, l.name, l.status, l.created_ms, \
         l.updated_ms, l.do_not_call, \
         (SELECT json_group_array(json_array(c.name, json(c.emails), \
            json((SELECT json_group_array(p.number ORDER BY p.position, p.id) \
                  FROM phones p WHERE p.contact_id = c.id))) \
            ORDER BY c.position, c.id) \
          FROM contacts c WHERE c.lead_id = l.id) AS contacts, \
         (SELECT json_group_array(json_array(f.name, f.kind, v.value_text, v.value_num, v.value_ms)) \
          FROM lead_custom_values v JOIN custom_fields f ON f.id = v.field_id \
          WHERE v.lead_id = l.id) AS custom, \
         (SELECT json_group_array(json_array(o.id, o.status_type, o.created_ms, o.value) \
            ORDER BY o.created_ms, o.id) \
          FROM opportunities o WHERE o.lead_id = l.id) AS opps \
         FROM leads l WHERE l.id IN";
}

store_methods!(SqliteStore, SqliteConnection, SqliteRow);

/// Rows per multi-row statement: 8 parameters a row stays well under
/// SQLite's 32,766 bound parameters.
const REGISTRATION_ROWS: usize = 1_000;

impl SqliteStore {
    /// Writes a batch of binding changes in one write transaction with
    /// multi-row statements (see [`super::Store::save_registrations`]).
    pub(crate) async fn save_registrations(
        &self,
        batch: &super::RegistrationBatch,
    ) -> Result<(), super::StoreError> {
        use super::{Entity, StoreError};
        use sqlx::QueryBuilder;

        let mut tx = self.begin_write().await?;
        for chunk in batch.removals.chunks(REGISTRATION_ROWS) {
            let mut q: QueryBuilder<'_, sqlx::Sqlite> =
                QueryBuilder::new("DELETE FROM registrations WHERE (aor, contact) IN (");
            q.push_values(chunk, |mut row, (aor, contact)| {
                row.push_bind(aor.as_str()).push_bind(contact.as_str());
            });
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        for chunk in batch.upserts.chunks(REGISTRATION_ROWS) {
            let mut q: QueryBuilder<'_, sqlx::Sqlite> = QueryBuilder::new(
                "INSERT INTO registrations (aor, contact, expires_ms, call_id, cseq, q, transport, source) ",
            );
            q.push_values(chunk, |mut row, r| {
                row.push_bind(r.aor.as_str())
                    .push_bind(r.contact.as_str())
                    .push_bind(r.expires_ms)
                    .push_bind(r.call_id.as_str())
                    .push_bind(r.cseq)
                    .push_bind(r.q)
                    .push_bind(r.transport.as_str())
                    .push_bind(r.source.as_str());
            });
            q.push(
                " ON CONFLICT (aor, contact) DO UPDATE SET expires_ms = excluded.expires_ms, \
                 call_id = excluded.call_id, cseq = excluded.cseq, q = excluded.q, \
                 transport = excluded.transport, source = excluded.source",
            );
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, Entity::Registration, "batch"))?;
        }
        tx.commit().await?;
        Ok(())
    }
}
