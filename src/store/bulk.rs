//! Storing many new leads at once (`powerdial import-leads`, `POST
//! /api/v1/leads`, `POST /api/v1/leads/import`): SPEC §6 asks for 50,000
//! leads/s on both backends with bounded memory.
//!
//! A lead is up to five kinds of row (lead, contacts, phones, custom values,
//! opportunities) and a contact's phones need the contact's id. Inserting
//! them one statement per row, each returning its id, costs a round trip
//! per row (a channel hop to SQLite's worker thread, a network round trip to
//! PostgreSQL). Here the batch's ids are taken up front instead, so every
//! kind of row goes in as a few large statements:
//!
//! - SQLite: the batch runs inside `BEGIN IMMEDIATE`, which holds the only
//!   write lock, so no one else can take ids meanwhile; ids continue from
//!   the `AUTOINCREMENT` counter (`sqlite_sequence`, never below the largest
//!   id ever used), which SQLite moves past the explicit ids itself.
//!   Rows go in through SQLite's C API on sqlx's connection, one prepared
//!   single-row statement per kind of row executed row by row (see
//!   [`raw`] for why).
//! - PostgreSQL: ids come from the tables' own sequences (`nextval` over
//!   `generate_series`, one round trip per kind), and the rows stream in
//!   with `COPY … FROM STDIN` (text format), PostgreSQL's bulk path.
//!
//! Either way the batch is one transaction: all of it or none (the import
//! then retries its rows one by one to find the refused one).

use sqlx::QueryBuilder;

use super::{Entity, PgStore, SqliteStore, StoreError};
use crate::leads::model::{ValidLead, ValidOpportunity};

/// One contact row: `(id, lead_id, position, name, emails as JSON)`.
type ContactRow<'a> = (i64, i64, i32, &'a str, Option<String>);
/// One phone row: `(contact_id, position, number)`.
type PhoneRow<'a> = (i64, i32, &'a str);
/// One custom value row: `(lead_id, field_id, text, number, ms)`.
type CustomRow<'a> = (i64, i64, Option<&'a str>, Option<f64>, Option<i64>);

/// The batch's rows other than the leads', ids assigned.
#[derive(Default)]
struct Rows<'a> {
    contacts: Vec<ContactRow<'a>>,
    phones: Vec<PhoneRow<'a>>,
    custom: Vec<CustomRow<'a>>,
    opportunities: Vec<(i64, &'a ValidOpportunity)>,
}

fn contact_count(leads: &[ValidLead]) -> usize {
    leads.iter().map(|l| l.contacts.len()).sum()
}

/// Lays out the rows of `leads`, the i-th lead getting `lead_ids[i]` and
/// contacts taking `contact_ids` in order.
fn rows<'a>(leads: &'a [ValidLead], lead_ids: &[i64], contact_ids: &[i64]) -> Rows<'a> {
    let mut out = Rows::default();
    let mut next_contact = contact_ids.iter().copied();
    for (lead, &lead_id) in leads.iter().zip(lead_ids) {
        for (pos, c) in lead.contacts.iter().enumerate() {
            let Some(contact_id) = next_contact.next() else {
                break;
            };
            // Emails as a JSON array; NULL when none (most contacts), as
            // the one-lead path stores them.
            let emails = (!c.emails.is_empty())
                .then(|| serde_json::to_string(&c.emails).unwrap_or_default());
            out.contacts
                .push((contact_id, lead_id, pos as i32, c.name.as_str(), emails));
            for (ppos, p) in c.phones.iter().enumerate() {
                out.phones.push((contact_id, ppos as i32, p.as_str()));
            }
        }
        // One value per (lead, field), the last one given winning, as the
        // upsert of a lead edit does: the primary key allows no more. A
        // lead has a few values: a scan of its own rows beats a set.
        let first = out.custom.len();
        for (field_id, value) in lead.custom.iter().rev() {
            if !out.custom[first..].iter().any(|c| c.1 == *field_id) {
                let (text, num, ms) = value.columns();
                out.custom.push((lead_id, *field_id, text, num, ms));
            }
        }
        for o in &lead.opportunities {
            out.opportunities.push((lead_id, o));
        }
    }
    out
}

/// The batch's leads paired with their ids, in the order their rows are
/// written: by `created_ms` (ties in input order). The ids stay those of
/// input order; only the order of writing changes. Three indexes of
/// `leads` are keyed by `created_ms` (`leads_created`,
/// `leads_created_desc`, and within a status `leads_status_*`), so rows in
/// file order land on random leaves of each; in `created_ms` order one
/// insert's leaf is the next one's or its neighbour, still in the CPU's
/// cache, instead of a walk over cold pages per insert and index.
fn leads_by_created<'a>(leads: &'a [ValidLead], ids: &[i64]) -> Vec<(&'a ValidLead, i64)> {
    let mut out: Vec<(&ValidLead, i64)> = leads.iter().zip(ids.iter().copied()).collect();
    out.sort_by_key(|(l, _)| l.created_ms);
    out
}

fn lead_err(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(e, Entity::Lead, "")
}

impl SqliteStore {
    /// Inserts leads in one write transaction (all or none) and returns
    /// their ids in input order (see the module comment).
    pub(crate) async fn insert_leads(
        &self,
        leads: &[ValidLead],
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let ids = sqlite_insert_rows(&mut tx, leads, now_ms).await?;
        tx.commit().await?;
        Ok(ids)
    }
}

/// Inserts `leads` on a connection inside a write transaction (`BEGIN
/// IMMEDIATE`, so no one else takes ids meanwhile) and returns their ids
/// in input order. Not atomic by itself: the caller's transaction is.
async fn sqlite_insert_rows(
    conn: &mut sqlx::SqliteConnection,
    leads: &[ValidLead],
    now_ms: i64,
) -> Result<Vec<i64>, StoreError> {
    let tx = conn;
    let next_id = |table: &'static str| {
        // `sqlite_sequence` holds the largest id ever handed out (ids
        // of deleted rows are not reused); MAX(id) covers a table whose
        // counter row is missing.
        format!(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0), \
             COALESCE((SELECT MAX(id) FROM {table}), 0)) + 1"
        )
    };
    let first_lead: i64 = sqlx::query_scalar(&next_id("leads"))
        .fetch_one(&mut *tx)
        .await?;
    let first_contact: i64 = sqlx::query_scalar(&next_id("contacts"))
        .fetch_one(&mut *tx)
        .await?;
    let lead_ids: Vec<i64> = (first_lead..).take(leads.len()).collect();
    let contact_ids: Vec<i64> = (first_contact..).take(contact_count(leads)).collect();
    let rows = rows(leads, &lead_ids, &contact_ids);

    let leads = leads_by_created(leads, &lead_ids);
    // The connection's lock is held (sqlx's worker waits) from here to the
    // end: no `.await` below.
    let mut handle = tx.lock_handle().await?;
    let db = raw::Db::new(&mut handle);
    off_worker(|| sqlite_write_rows(&db, &leads, &rows, now_ms))
        .map_err(|e| lead_err(e.into_sqlx()))?;
    Ok(lead_ids)
}

/// SQLite's C API for a bulk batch's rows, on the handle of the sqlx
/// connection the batch's transaction is open on.
///
/// Hand-written for SPEC §6 (50,000 leads/s): sqlx runs each statement on
/// the connection's worker thread, a channel hop there and back per
/// statement, which per row cost more than the rows' own work (process CPU
/// 37.3 → 61.4 s for 1,000,000 leads, BENCHMARKS.md "Import"); and a
/// multi-row `INSERT … VALUES (…), (…)` into a table with an index on an
/// expression that calls a function (`lower(status)`,
/// `lower(value_text)`) keeps a statement journal, a copy of each page the
/// statement changes. Here each kind of row has one prepared single-row
/// statement, executed once per row (bind, step, reset) on the caller's
/// thread while sqlx's worker waits (`LockedSqliteHandle`): no hand-off
/// per row, no statement journal (a single-row insert with `OR FAIL`
/// never needs one).
mod raw {
    use std::ffi::{c_char, c_int, CStr};
    use std::marker::PhantomData;
    use std::ptr::NonNull;

    use libsqlite3_sys as ffi;
    use sqlx::sqlite::LockedSqliteHandle;

    /// A value bound to one parameter of a [`Stmt`].
    #[derive(Debug, Clone, Copy)]
    pub(super) enum Value<'a> {
        Int(i64),
        Real(f64),
        Text(&'a str),
        Null,
    }

    impl<'a> From<Option<&'a str>> for Value<'a> {
        fn from(v: Option<&'a str>) -> Self {
            v.map_or(Value::Null, Value::Text)
        }
    }

    impl From<Option<f64>> for Value<'_> {
        fn from(v: Option<f64>) -> Self {
            v.map_or(Value::Null, Value::Real)
        }
    }

    impl From<Option<i64>> for Value<'_> {
        fn from(v: Option<i64>) -> Self {
            v.map_or(Value::Null, Value::Int)
        }
    }

    /// An error of SQLite's C API: its extended result code and message.
    /// It travels as sqlx's database error, with the kind sqlx gives the
    /// same code, so the store maps it as every other
    /// ([`super::StoreError::from_sqlx`]: a unique violation is
    /// `Conflict`, another constraint `Invalid`).
    #[derive(Debug)]
    pub(super) struct RawError {
        code: c_int,
        message: String,
    }

    impl RawError {
        /// The last error of the connection `db`.
        ///
        /// # Safety
        /// `db` is an open connection that no other thread uses meanwhile.
        unsafe fn last(db: NonNull<ffi::sqlite3>) -> RawError {
            // SAFETY: `db` is open and ours (the caller's contract);
            // `sqlite3_errmsg` returns a NUL-terminated string owned by
            // the connection, valid until its next call, copied here.
            unsafe {
                let code = ffi::sqlite3_extended_errcode(db.as_ptr());
                let msg = ffi::sqlite3_errmsg(db.as_ptr());
                let message = if msg.is_null() {
                    format!("SQLite error {code}")
                } else {
                    CStr::from_ptr(msg).to_string_lossy().into_owned()
                };
                RawError { code, message }
            }
        }

        /// An error this module finds itself (a value SQLite cannot take).
        fn own(code: c_int, message: &str) -> RawError {
            RawError {
                code,
                message: message.to_string(),
            }
        }

        pub(super) fn into_sqlx(self) -> sqlx::Error {
            sqlx::Error::Database(Box::new(self))
        }
    }

    impl std::fmt::Display for RawError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "(code: {}) {}", self.code, self.message)
        }
    }

    impl std::error::Error for RawError {}

    impl sqlx::error::DatabaseError for RawError {
        fn message(&self) -> &str {
            &self.message
        }

        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.code.to_string().into())
        }

        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> sqlx::error::ErrorKind {
            use sqlx::error::ErrorKind;
            // As sqlx-sqlite's own `SqliteError::kind`.
            match self.code {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    ErrorKind::UniqueViolation
                }
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
                ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
                ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
                _ => ErrorKind::Other,
            }
        }
    }

    /// The open connection behind a [`LockedSqliteHandle`], lent for as
    /// long as the borrow of the handle (`'h`): sqlx's worker thread does
    /// not touch it meanwhile (it waits for the handle's lock), so this
    /// thread is its only user. Neither `Send` nor `Sync` (a raw pointer):
    /// it stays on the thread that locked it.
    pub(super) struct Db<'h> {
        db: NonNull<ffi::sqlite3>,
        _lent: PhantomData<&'h mut ()>,
    }

    impl<'h> Db<'h> {
        pub(super) fn new(handle: &'h mut LockedSqliteHandle<'_>) -> Db<'h> {
            Db {
                db: handle.as_raw_handle(),
                _lent: PhantomData,
            }
        }

        /// Prepares `sql`, a single statement with `?` parameters.
        pub(super) fn prepare(&self, sql: &str) -> Result<Stmt<'_>, RawError> {
            let len = c_int::try_from(sql.len())
                .map_err(|_| RawError::own(ffi::SQLITE_TOOBIG, "statement too long"))?;
            let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
            // SAFETY: `self.db` is open and used by this thread only (see
            // [`Db`]); `sql` is valid for `len` bytes (no NUL needed when
            // the length is given); `stmt` is a valid out-pointer; the tail
            // pointer may be null.
            let rc = unsafe {
                ffi::sqlite3_prepare_v2(
                    self.db.as_ptr(),
                    sql.as_ptr().cast::<c_char>(),
                    len,
                    &mut stmt,
                    std::ptr::null_mut(),
                )
            };
            if rc != ffi::SQLITE_OK {
                // SAFETY: as above; a failed prepare leaves `stmt` null.
                return Err(unsafe { RawError::last(self.db) });
            }
            let stmt = NonNull::new(stmt)
                .ok_or_else(|| RawError::own(ffi::SQLITE_MISUSE, "empty statement"))?;
            // SAFETY: `stmt` was just prepared on `self.db`.
            let params = unsafe { ffi::sqlite3_bind_parameter_count(stmt.as_ptr()) };
            Ok(Stmt {
                stmt,
                db: self.db,
                params: usize::try_from(params).unwrap_or(0),
                _db: PhantomData,
            })
        }
    }

    /// A prepared statement of a [`Db`], finalized when dropped (before
    /// the connection goes back to sqlx: it borrows the [`Db`]).
    pub(super) struct Stmt<'d> {
        stmt: NonNull<ffi::sqlite3_stmt>,
        db: NonNull<ffi::sqlite3>,
        params: usize,
        _db: PhantomData<&'d Db<'d>>,
    }

    impl Stmt<'_> {
        /// Executes the statement once with `values` bound to its
        /// parameters in order (every parameter: a row of its own), then
        /// resets it and clears the bindings, so no bound text outlives
        /// this call.
        pub(super) fn run(&mut self, values: &[Value<'_>]) -> Result<(), RawError> {
            if values.len() != self.params {
                return Err(RawError::own(
                    ffi::SQLITE_RANGE,
                    "values do not match the statement's parameters",
                ));
            }
            let stmt = self.stmt.as_ptr();
            let mut result = Ok(());
            for (i, value) in values.iter().enumerate() {
                // Parameters count from 1; `i < self.params <= c_int::MAX`.
                let index = c_int::try_from(i + 1).unwrap_or(c_int::MAX);
                // SAFETY: `stmt` is a live statement of `self.db`, which
                // this thread alone uses (see [`Db`]). Text is bound
                // `SQLITE_STATIC` (not copied): `values` is borrowed for
                // this whole call, and the bindings are cleared below
                // before it returns, so SQLite never reads it afterwards.
                let rc = unsafe {
                    match *value {
                        Value::Int(v) => ffi::sqlite3_bind_int64(stmt, index, v),
                        Value::Real(v) => ffi::sqlite3_bind_double(stmt, index, v),
                        Value::Null => ffi::sqlite3_bind_null(stmt, index),
                        Value::Text(s) => match c_int::try_from(s.len()) {
                            Ok(len) => ffi::sqlite3_bind_text(
                                stmt,
                                index,
                                s.as_ptr().cast::<c_char>(),
                                len,
                                ffi::SQLITE_STATIC(),
                            ),
                            Err(_) => ffi::SQLITE_TOOBIG,
                        },
                    }
                };
                if rc != ffi::SQLITE_OK {
                    result = Err(if rc == ffi::SQLITE_TOOBIG {
                        RawError::own(rc, "value too long")
                    } else {
                        // SAFETY: as above.
                        unsafe { RawError::last(self.db) }
                    });
                    break;
                }
            }
            if result.is_ok() {
                // SAFETY: as above; every parameter is bound.
                let rc = unsafe { ffi::sqlite3_step(stmt) };
                if rc != ffi::SQLITE_DONE {
                    // SAFETY: as above; read before the reset below.
                    result = Err(unsafe { RawError::last(self.db) });
                }
            }
            // SAFETY: as above. The reset returns the step's error again,
            // already taken; clearing drops the pointers to `values`' text.
            unsafe {
                ffi::sqlite3_reset(stmt);
                ffi::sqlite3_clear_bindings(stmt);
            }
            result
        }
    }

    impl Drop for Stmt<'_> {
        fn drop(&mut self) {
            // SAFETY: `self.stmt` is a live statement of a connection this
            // thread still holds (the `Db` it borrows), finalized once,
            // here; sqlx's `sqlite3_close` would refuse a connection with a
            // statement left unfinalized.
            unsafe {
                ffi::sqlite3_finalize(self.stmt.as_ptr());
            }
        }
    }
}

/// Runs `f`, which works on SQLite's C API and blocks meanwhile, without
/// holding up the other tasks of its runtime's worker thread: on a
/// multi-thread runtime (the server, the CLI) in
/// [`tokio::task::block_in_place`], which hands the worker's other tasks
/// to another thread first; on a current-thread runtime (tests) there is
/// no other thread to take them, so in place. Not `spawn_blocking`: `f`
/// borrows the connection's lock, which a task that is dropped while it
/// waits would release under a thread still using the connection.
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Writes the rows of a batch (leads in `created_ms` order, see
/// [`leads_by_created`]) with one prepared single-row statement per kind
/// of row (see [`raw`]), stopping at the first refused row.
fn sqlite_write_rows(
    db: &raw::Db<'_>,
    leads: &[(&ValidLead, i64)],
    rows: &Rows<'_>,
    now_ms: i64,
) -> Result<(), raw::RawError> {
    use raw::Value::{Int, Real, Text};
    // `OR FAIL` (every kind of row): a refused row stops its statement
    // without undoing anything (the caller's transaction does), so SQLite
    // keeps no statement journal for it. The child tables' immediate
    // foreign keys ask for one, unless the connection has them off, as a
    // bulk load's has (see [`LoadTx`]).
    if !leads.is_empty() {
        let mut s = db.prepare(
            "INSERT OR FAIL INTO leads (id, name, status, created_ms, updated_ms, do_not_call) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )?;
        for (l, id) in leads {
            s.run(&[
                Int(*id),
                Text(&l.name),
                Text(&l.status),
                Int(l.created_ms),
                Int(now_ms),
                Int(i64::from(l.do_not_call)),
            ])?;
        }
    }
    if !rows.contacts.is_empty() {
        let mut s = db.prepare(
            "INSERT OR FAIL INTO contacts (id, lead_id, position, name, emails) \
             VALUES (?, ?, ?, ?, ?)",
        )?;
        for (id, lead_id, pos, name, emails) in &rows.contacts {
            s.run(&[
                Int(*id),
                Int(*lead_id),
                Int(i64::from(*pos)),
                Text(name),
                emails.as_deref().into(),
            ])?;
        }
    }
    if !rows.phones.is_empty() {
        let mut s = db.prepare(
            "INSERT OR FAIL INTO phones (contact_id, position, number) VALUES (?, ?, ?)",
        )?;
        for (contact_id, pos, number) in &rows.phones {
            s.run(&[Int(*contact_id), Int(i64::from(*pos)), Text(number)])?;
        }
    }
    if !rows.custom.is_empty() {
        let mut s = db.prepare(
            "INSERT OR FAIL INTO lead_custom_values \
             (lead_id, field_id, value_text, value_num, value_ms) VALUES (?, ?, ?, ?, ?)",
        )?;
        for (lead_id, field_id, text, num, ms) in &rows.custom {
            s.run(&[
                Int(*lead_id),
                Int(*field_id),
                (*text).into(),
                (*num).into(),
                (*ms).into(),
            ])?;
        }
    }
    if !rows.opportunities.is_empty() {
        let mut s = db.prepare(
            "INSERT OR FAIL INTO opportunities (lead_id, status_type, created_ms, value) \
             VALUES (?, ?, ?, ?)",
        )?;
        for (lead_id, o) in &rows.opportunities {
            s.run(&[
                Int(*lead_id),
                Text(o.status_type.as_str()),
                Int(o.created_ms),
                o.value.map_or(raw::Value::Null, Real),
            ])?;
        }
    }
    Ok(())
}

/// Refuses a batch, before anything of it is written, whose custom values
/// name a field that no longer exists (deleted since the import read the
/// fields): the only constraint a [`ValidLead`] can break. Its other rows'
/// parents are the batch's own leads and contacts, its ids are taken under
/// the write lock, and its values are checked by the model; so a bulk batch
/// needs no savepoint of its own (see [`LeadLoader`]). Under the write lock
/// no one can delete a field between this check and the insert.
async fn sqlite_check_fields(
    conn: &mut sqlx::SqliteConnection,
    leads: &[ValidLead],
) -> Result<(), StoreError> {
    let ids = field_ids(leads);
    if ids.is_empty() {
        return Ok(());
    }
    let mut q: QueryBuilder<'_, sqlx::Sqlite> =
        QueryBuilder::new("SELECT COUNT(*) FROM custom_fields WHERE id IN (");
    let mut list = q.separated(", ");
    for id in &ids {
        list.push_bind(*id);
    }
    q.push(")");
    let found: i64 = q.build_query_scalar().fetch_one(&mut *conn).await?;
    if usize::try_from(found).ok() != Some(ids.len()) {
        return Err(StoreError::Invalid(Entity::Lead));
    }
    Ok(())
}

/// Leads a bulk load keeps in one SQLite transaction at most (see
/// [`LeadLoader`]).
pub const SQLITE_COMMIT_ROWS: usize = 50_000;

/// Transactions a bulk load runs at once on PostgreSQL: its server does the
/// work of a `COPY` (parsing, index entries, the per-row foreign-key checks)
/// in one backend process per connection, which one connection keeps on one
/// core.
const PG_LANES: usize = 2;

/// Stores the batches of a bulk load (the CSV import), each batch all or
/// none.
///
/// SQLite: the batches share one write transaction until
/// [`LeadLoader::commit`]. A batch is checked before it is written (the
/// one thing that can refuse it is a custom field deleted meanwhile), so a
/// refused batch leaves the earlier ones in without a savepoint: a
/// savepoint copied every page the batch changed first into the
/// sub-journal, one page per random-order index and lead, 22 % of the
/// load's profile (BENCHMARKS.md "Lead import"). Any other failure in the
/// middle of a batch rolls the open transaction back and stops the load. A commit writes every page it
/// changed into the WAL, and the random-order indexes of `leads` (created,
/// status) spread even a few thousand new leads over most of their leaf
/// pages, so the same pages were written again at every 5,000-lead commit
/// (most of the import's time in its profile, BENCHMARKS.md "Lead
/// import"); the caller commits every [`SQLITE_COMMIT_ROWS`] leads, when
/// its input pauses (so the write lock is not held while it waits) and once
/// the transaction is half a second old (a dialer's writes wait behind it).
/// PostgreSQL: each batch is its own transaction, and [`Store::bulk_lanes`]
/// loaders may run at once.
pub struct LeadLoader {
    inner: Loader,
    pending: usize,
}

enum Loader {
    Sqlite {
        store: SqliteStore,
        tx: Option<LoadTx>,
        /// The writer connection's settings before the load changed them,
        /// restored by [`LeadLoader::finish`].
        saved: Option<SavedPragmas>,
    },
    Postgres {
        store: PgStore,
        /// Whether this connection's role may skip the per-row checks
        /// (see [`PgCopy::Unchecked`]); asked once, at the first batch.
        unchecked: Option<bool>,
    },
}

/// SQLite's page cache for a bulk load's connection, in KiB (`PRAGMA
/// cache_size` negative): large enough to hold the leaf pages of the
/// random-order indexes of `leads` at 1,000,000 leads (about 90 MB), so a
/// large transaction neither spills dirty pages into the WAL before its
/// commit nor reads them back. Kept from one commit to the next (shrinking
/// it at a commit dropped the pages the next transaction needs again) and
/// restored when the load ends; a bound, whatever the file's size.
const SQLITE_LOAD_CACHE_KIB: i64 = 256 * 1024;

/// WAL pages after which a bulk load's commit checkpoints (`PRAGMA
/// wal_autocheckpoint`; SQLite's default is 1,000). Every commit of the
/// load rewrites most leaf pages of the random-order indexes of `leads`
/// (about 80 MB at 1,000,000 leads), so with the default every commit was
/// followed by a checkpoint copying all of them into the database file
/// and syncing it. A checkpoint copies each page once however many
/// commits rewrote it since the last one, so checkpointing after this many
/// pages copies the same pages once for several commits. The WAL file then
/// grows to about this many pages (256 MB) plus one commit; it is reused,
/// not grown, afterwards.
const SQLITE_LOAD_CHECKPOINT_PAGES: i64 = 65_536;

/// The writer connection's own settings, saved before a bulk load changes
/// them and restored when it ends.
#[derive(Debug, Clone, Copy)]
struct SavedPragmas {
    cache_size: i64,
    wal_autocheckpoint: i64,
}

async fn sqlite_pragma(store: &SqliteStore, name: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(&format!("PRAGMA {name}"))
        .fetch_one(store.write_pool())
        .await?)
}

/// A bulk load's SQLite transaction, open on the writer connection, which
/// it holds until [`LoadTx::commit`].
///
/// Foreign keys are off on the connection meanwhile (`PRAGMA foreign_keys`
/// can only change outside a transaction, so it is set before `BEGIN` and
/// set back after `COMMIT`). Every child row a bulk batch writes points at a
/// parent the same transaction inserted (a contact at its lead, a phone at
/// its contact, an opportunity at its lead; ids taken under the write
/// lock), except a custom value's field, which [`sqlite_check_fields`]
/// finds inside the transaction before anything of the batch is written
/// (no one can delete it before the commit: the transaction holds the
/// only write lock). So the checks could only re-find what the transaction
/// guarantees, as on PostgreSQL's [`PgCopy::Unchecked`]; and with them on,
/// every multi-row insert into a child table kept a statement journal (a
/// copy of each page it changed first, for undoing the statement on a
/// violation) besides looking its parents up (BENCHMARKS.md "Lead
/// import"). Every other writer keeps the foreign keys: the connection
/// goes back to the pool only with them on again, and is closed instead
/// (which rolls the transaction back) when the load drops it in between.
///
/// The statement journals go to memory meanwhile (`temp_store = MEMORY`,
/// set back after `COMMIT` as well). A multi-row insert into a table with
/// an index on an expression that calls a function (`lower(status)` of
/// `leads`, `lower(value_text)` of `lead_custom_values`) keeps a
/// statement journal whatever its conflict clause, foreign keys or not
/// (SQLite codes every such call as one that may abort the statement): a
/// copy of each page of the transaction the statement changes again, one
/// `pwrite` of a temp file per page by default, 20 % of the load's
/// samples (BENCHMARKS.md "Lead import"). In memory it is a copy into
/// 1 KiB chunks, freed at the end of each statement.
struct LoadTx {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    /// Foreign keys off or a transaction open: the connection must not go
    /// back to the pool as it is.
    dirty: bool,
    /// The connection's own `temp_store`, restored at the commit.
    temp_store: i64,
}

impl LoadTx {
    /// Takes the writer connection, sets it up for the load (page cache,
    /// checkpoint interval, foreign keys off; again at every transaction:
    /// the pool may have replaced its connection after an idle timeout or
    /// its lifetime) and begins the transaction (`BEGIN IMMEDIATE`, see
    /// [`SqliteStore::begin_write`]).
    ///
    /// `temp_store = MEMORY` made the load three times slower while each
    /// batch had a savepoint (since removed): SQLite truncates an in-memory
    /// sub-journal to the savepoint's offset by walking it from the first
    /// chunk, and the savepoint kept it tens of MB long
    /// (`sqlite3BtreeSavepoint` 41 % of the import's profile). Without it,
    /// each statement's journal is freed whole at the statement's end.
    async fn begin(store: &SqliteStore) -> Result<LoadTx, StoreError> {
        let mut conn = store.write_pool().acquire().await?;
        let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
            .fetch_one(&mut *conn)
            .await?;
        let mut tx = LoadTx {
            conn,
            dirty: true,
            temp_store,
        };
        for statement in [
            format!("PRAGMA cache_size = -{SQLITE_LOAD_CACHE_KIB}"),
            format!("PRAGMA wal_autocheckpoint = {SQLITE_LOAD_CHECKPOINT_PAGES}"),
            "PRAGMA foreign_keys = OFF".to_string(),
            "PRAGMA temp_store = MEMORY".to_string(),
            "BEGIN IMMEDIATE".to_string(),
        ] {
            sqlx::query(&statement).execute(&mut *tx.conn).await?;
        }
        Ok(tx)
    }

    /// Commits, turns foreign keys back on and gives the connection back.
    async fn commit(mut self) -> Result<(), StoreError> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        sqlx::query("PRAGMA foreign_keys = ON")
            .execute(&mut *self.conn)
            .await?;
        sqlx::query(&format!("PRAGMA temp_store = {}", self.temp_store))
            .execute(&mut *self.conn)
            .await?;
        self.dirty = false;
        Ok(())
    }
}

impl Drop for LoadTx {
    fn drop(&mut self) {
        if self.dirty {
            // Closing rolls the open transaction back; the pool opens a
            // fresh connection (foreign keys on) for the next writer.
            self.conn.close_on_drop();
        }
    }
}

impl super::Store {
    /// A loader for a bulk load of new leads (see [`LeadLoader`]).
    pub fn lead_loader(&self) -> LeadLoader {
        let inner = match self {
            super::Store::Sqlite(s) => Loader::Sqlite {
                store: s.clone(),
                tx: None,
                saved: None,
            },
            super::Store::Postgres(p) => Loader::Postgres {
                store: p.clone(),
                unchecked: None,
            },
        };
        LeadLoader { inner, pending: 0 }
    }

    /// How many [`LeadLoader`]s a bulk load should run at once: SQLite has
    /// one writer, PostgreSQL a server process per connection.
    pub fn bulk_lanes(&self) -> usize {
        match self {
            super::Store::Sqlite(_) => 1,
            super::Store::Postgres(_) => PG_LANES,
        }
    }
}

impl LeadLoader {
    /// Inserts one batch, all or none, and returns the ids in input order.
    /// On SQLite the batch is stored but not committed until
    /// [`LeadLoader::commit`]; a refused batch leaves the earlier ones in.
    pub async fn insert(
        &mut self,
        leads: &[ValidLead],
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        let ids = match &mut self.inner {
            Loader::Sqlite { store, tx, saved } => {
                if tx.is_none() {
                    if saved.is_none() {
                        *saved = Some(SavedPragmas {
                            cache_size: sqlite_pragma(store, "cache_size").await?,
                            wal_autocheckpoint: sqlite_pragma(store, "wal_autocheckpoint").await?,
                        });
                    }
                    *tx = Some(LoadTx::begin(store).await?);
                }
                let open = &mut *tx
                    .as_mut()
                    .ok_or(StoreError::Corrupt("bulk transaction"))?
                    .conn;
                // Refused before anything of the batch is written: the
                // transaction keeps the earlier batches, as a savepoint
                // rolled back would.
                sqlite_check_fields(open, leads).await?;
                match sqlite_insert_rows(open, leads, now_ms).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        // Part of the batch may be in: the whole open
                        // transaction rolls back (dropped), and the error
                        // is one the import does not retry row by row.
                        *tx = None;
                        self.pending = 0;
                        return Err(match e {
                            StoreError::Invalid(_) | StoreError::Conflict(_) => {
                                StoreError::Corrupt("a bulk batch refused past its checks")
                            }
                            other => other,
                        });
                    }
                }
            }
            Loader::Postgres { store, unchecked } => {
                let may = match *unchecked {
                    Some(may) => may,
                    None => *unchecked.insert(store.may_skip_triggers().await?),
                };
                // The opportunity counts are kept by a trigger
                // (migration 0051): a batch with opportunities keeps it.
                let mode = if may && leads.iter().all(|l| l.opportunities.is_empty()) {
                    PgCopy::Unchecked
                } else {
                    PgCopy::Bulk
                };
                store.copy_leads(leads, now_ms, mode).await?
            }
        };
        self.pending += ids.len();
        Ok(ids)
    }

    /// Leads inserted since the last commit.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Commits what was inserted (SQLite; PostgreSQL's batches are
    /// committed already).
    pub async fn commit(&mut self) -> Result<(), StoreError> {
        if let Loader::Sqlite { tx, .. } = &mut self.inner {
            if let Some(tx) = tx.take() {
                tx.commit().await?;
            }
        }
        self.pending = 0;
        Ok(())
    }

    /// Commits what was inserted and gives the writer connection its own
    /// page cache back (SQLite), or makes the committed batches durable
    /// (PostgreSQL). Call once, when the load ends, also after an error.
    pub async fn finish(&mut self) -> Result<(), StoreError> {
        let committed = self.commit().await;
        match &mut self.inner {
            Loader::Sqlite { store, saved, .. } => {
                if let Some(saved) = saved.take() {
                    sqlx::query(&format!("PRAGMA cache_size = {}", saved.cache_size))
                        .execute(store.write_pool())
                        .await?;
                    sqlx::query(&format!(
                        "PRAGMA wal_autocheckpoint = {}",
                        saved.wal_autocheckpoint
                    ))
                    .execute(store.write_pool())
                    .await?;
                }
            }
            Loader::Postgres { store: pg, .. } => {
                // A transaction with an id commits synchronously: its
                // commit waits until the WAL is flushed up to it, which
                // covers every batch committed before (`copy_leads`).
                let mut tx = pg.begin_write().await?;
                sqlx::query("SELECT txid_current()")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        committed
    }
}

/// Appends `s` as one field of PostgreSQL's COPY text format: backslash,
/// tab, newline and carriage return escaped (PostgreSQL docs, COPY "Text
/// Format").
fn copy_text(buf: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

/// Appends a field separator (tab).
fn copy_sep(buf: &mut Vec<u8>) {
    buf.push(b'\t');
}

/// Appends an integer field.
fn copy_int(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(v.to_string().as_bytes());
}

/// Appends an optional field: `\N` is NULL.
fn copy_opt<T>(buf: &mut Vec<u8>, v: Option<T>, f: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => f(buf, v),
        None => buf.extend_from_slice(b"\\N"),
    }
}

/// Appends a DOUBLE PRECISION field in the spelling PostgreSQL reads
/// (Rust's `inf` is PostgreSQL's `Infinity`).
fn copy_float(buf: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        buf.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        buf.extend_from_slice(if v > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else {
        // `{:?}` prints the shortest text that reads back as the same f64.
        buf.extend_from_slice(format!("{v:?}").as_bytes());
    }
}

/// Bytes sent per CopyData message: large enough to amortise the
/// per-message cost, small enough to keep memory flat.
const COPY_CHUNK: usize = 256 * 1024;

/// Streams `rows` (each encoded by `encode`, without its newline) into
/// `statement` (a `COPY … FROM STDIN`).
async fn copy_in<T>(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    rows: impl IntoIterator<Item = T>,
    mut encode: impl FnMut(&mut Vec<u8>, T),
) -> Result<(), sqlx::Error> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut buf = Vec::with_capacity(COPY_CHUNK + 1024);
    let mut failed = None;
    for row in rows {
        encode(&mut buf, row);
        buf.push(b'\n');
        if buf.len() >= COPY_CHUNK {
            if let Err(e) = copy.send(std::mem::take(&mut buf)).await {
                failed = Some(e);
                break;
            }
            buf.reserve(COPY_CHUNK + 1024);
        }
    }
    if let Some(e) = failed {
        // The connection must leave COPY mode before it is used again.
        let _ = copy.abort("send failed").await;
        return Err(e);
    }
    if !buf.is_empty() {
        if let Err(e) = copy.send(buf).await {
            let _ = copy.abort("send failed").await;
            return Err(e);
        }
    }
    copy.finish().await?;
    Ok(())
}

impl PgStore {
    /// `n` fresh ids from `sequence`, in one round trip.
    async fn take_ids(
        conn: &mut sqlx::PgConnection,
        sequence: &str,
        n: usize,
    ) -> Result<Vec<i64>, sqlx::Error> {
        if n == 0 {
            return Ok(Vec::new());
        }
        sqlx::query_scalar("SELECT nextval($1::regclass) FROM generate_series(1, $2)")
            .bind(sequence)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .fetch_all(conn)
            .await
    }

    /// Inserts leads in one transaction (all or none) with `COPY` and
    /// returns their ids in input order (see the module comment).
    pub(crate) async fn insert_leads(
        &self,
        leads: &[ValidLead],
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.copy_leads(leads, now_ms, PgCopy::Single).await
    }

    /// Whether this store's role may set `session_replication_role` (a
    /// superuser, or `GRANT SET ON PARAMETER session_replication_role`,
    /// PostgreSQL 15+), which [`PgCopy::Unchecked`] needs.
    async fn may_skip_triggers(&self) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let set = sqlx::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await;
        tx.rollback().await?;
        match set {
            Ok(_) => Ok(true),
            // insufficient_privilege
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// [`insert_leads`](Self::insert_leads) as `mode` says; in a bulk mode the commit does
    /// not wait for its WAL to reach the disk (`synchronous_commit = off`
    /// for this transaction only): a bulk load's batches are made durable
    /// together by [`LeadLoader::finish`], whose synchronous commit flushes
    /// the WAL up to it, the earlier commits included (PostgreSQL docs,
    /// "Asynchronous Commit"). A server crash before then loses the last
    /// batches whole, never part of one, as SQLite's `synchronous =
    /// NORMAL` does before the import's checkpoint.
    async fn copy_leads(
        &self,
        leads: &[ValidLead],
        now_ms: i64,
        mode: PgCopy,
    ) -> Result<Vec<i64>, StoreError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        match mode {
            PgCopy::Single => {}
            PgCopy::Bulk => {
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
            }
            PgCopy::Unchecked => {
                sqlx::query(
                    "SELECT set_config('synchronous_commit', 'off', true), \
                     set_config('session_replication_role', 'replica', true)",
                )
                .execute(&mut *tx)
                .await?;
                pg_lock_fields(&mut tx, leads).await?;
            }
        }
        let lead_ids = Self::take_ids(&mut tx, "leads_id_seq", leads.len()).await?;
        let contact_ids = Self::take_ids(&mut tx, "contacts_id_seq", contact_count(leads)).await?;
        if lead_ids.len() != leads.len() {
            return Err(StoreError::Corrupt("leads_id_seq"));
        }
        let rows = rows(leads, &lead_ids, &contact_ids);
        copy_in(
            &mut tx,
            "COPY leads (id, name, status, created_ms, updated_ms, do_not_call) FROM STDIN",
            leads_by_created(leads, &lead_ids),
            |buf, (l, id)| {
                copy_int(buf, id);
                copy_sep(buf);
                copy_text(buf, &l.name);
                copy_sep(buf);
                copy_text(buf, &l.status);
                copy_sep(buf);
                copy_int(buf, l.created_ms);
                copy_sep(buf);
                copy_int(buf, now_ms);
                copy_sep(buf);
                copy_int(buf, i64::from(l.do_not_call));
            },
        )
        .await
        .map_err(lead_err)?;
        copy_in(
            &mut tx,
            "COPY contacts (id, lead_id, position, name, emails) FROM STDIN",
            &rows.contacts,
            |buf, (id, lead_id, pos, name, emails)| {
                copy_int(buf, *id);
                copy_sep(buf);
                copy_int(buf, *lead_id);
                copy_sep(buf);
                copy_int(buf, i64::from(*pos));
                copy_sep(buf);
                copy_text(buf, name);
                copy_sep(buf);
                copy_opt(buf, emails.as_deref(), copy_text);
            },
        )
        .await
        .map_err(lead_err)?;
        copy_in(
            &mut tx,
            "COPY phones (contact_id, position, number) FROM STDIN",
            &rows.phones,
            |buf, (contact_id, pos, number)| {
                copy_int(buf, *contact_id);
                copy_sep(buf);
                copy_int(buf, i64::from(*pos));
                copy_sep(buf);
                copy_text(buf, number);
            },
        )
        .await
        .map_err(lead_err)?;
        copy_in(
            &mut tx,
            "COPY lead_custom_values (lead_id, field_id, value_text, value_num, value_ms) FROM STDIN",
            &rows.custom,
            |buf, (lead_id, field_id, text, num, ms)| {
                copy_int(buf, *lead_id);
                copy_sep(buf);
                copy_int(buf, *field_id);
                copy_sep(buf);
                copy_opt(buf, *text, copy_text);
                copy_sep(buf);
                copy_opt(buf, *num, copy_float);
                copy_sep(buf);
                copy_opt(buf, *ms, copy_int);
            },
        )
        .await
        .map_err(lead_err)?;
        copy_in(
            &mut tx,
            "COPY opportunities (lead_id, status_type, created_ms, value) FROM STDIN",
            &rows.opportunities,
            |buf, (lead_id, o)| {
                copy_int(buf, *lead_id);
                copy_sep(buf);
                copy_text(buf, o.status_type.as_str());
                copy_sep(buf);
                copy_int(buf, o.created_ms);
                copy_sep(buf);
                copy_opt(buf, o.value, copy_float);
            },
        )
        .await
        .map_err(lead_err)?;
        if mode == PgCopy::Unchecked {
            // What the statement triggers of migrations 0010 and 0049 send
            // (R6 across instances), which do not fire in this mode: one
            // notification, as PostgreSQL folds a transaction's duplicates.
            sqlx::query(
                "SELECT pg_notify('powerdial_leads', \
                 'leads ' || coalesce(current_setting('application_name', true), ''))",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(lead_ids)
    }
}

/// How [`PgStore::copy_leads`] writes a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgCopy {
    /// A transaction committed as any other (`POST /api/v1/leads`).
    Single,
    /// A bulk load's batch: the commit does not wait for the WAL flush
    /// ([`LeadLoader::finish`] makes the load durable).
    Bulk,
    /// [`PgCopy::Bulk`] without the per-row foreign-key checks, for a batch
    /// without opportunities whose role may skip them. A foreign-key check
    /// is a query per child row (`SELECT 1 … FOR KEY SHARE` on its parent):
    /// about five a lead (its contact, phones and custom values), half of
    /// the server's CPU in a 1,000,000-lead COPY (BENCHMARKS.md "Lead
    /// import"). Here they would only re-find parents the transaction
    /// itself guarantees: a batch's contacts, phones and custom values
    /// point at the batch's own leads and contacts, inserted by this
    /// transaction with ids it took from the sequences, which no other
    /// transaction can see, let alone delete, before it commits; the one
    /// other parent, a custom field, is locked `FOR KEY SHARE` by
    /// [`pg_lock_fields`] as the checks would (a concurrent delete of the
    /// field waits for the commit, then cascades to these rows), and a
    /// batch naming a missing field is refused before anything is written.
    /// `session_replication_role = replica` for this transaction only
    /// (`SET LOCAL`) turns off the constraint triggers and the other
    /// ordinary triggers of the tables written: their change notification
    /// is sent by hand, and the opportunity counts' trigger is why a batch
    /// with opportunities takes [`PgCopy::Bulk`]. Every other writer keeps
    /// the foreign keys.
    Unchecked,
}

/// The custom fields `leads`' values name, each once, in order.
fn field_ids(leads: &[ValidLead]) -> Vec<i64> {
    let mut ids: Vec<i64> = leads
        .iter()
        .flat_map(|l| l.custom.iter().map(|(id, _)| *id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Locks the custom fields that `leads`' values name `FOR KEY SHARE` (what
/// the foreign key's per-row check does, once per field) and refuses the
/// batch if one no longer exists: see [`PgCopy::Unchecked`].
async fn pg_lock_fields(
    conn: &mut sqlx::PgConnection,
    leads: &[ValidLead],
) -> Result<(), StoreError> {
    let ids = field_ids(leads);
    if ids.is_empty() {
        return Ok(());
    }
    let found: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM custom_fields WHERE id = ANY($1) FOR KEY SHARE")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
    if found.len() != ids.len() {
        return Err(StoreError::Invalid(Entity::Lead));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(name: &str) -> ValidLead {
        ValidLead {
            name: name.into(),
            status: "Potential".into(),
            created_ms: 1_790_000_000_000,
            contacts: Vec::new(),
            custom: Vec::new(),
            opportunities: Vec::new(),
            do_not_call: false,
        }
    }

    /// A store on a real SQLite file in `dir` (the load's pragmas apply
    /// only there, not to an in-memory database).
    async fn sqlite_file_store(dir: &tempfile::TempDir) -> crate::store::Store {
        crate::store::connect(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap()
    }

    fn sqlite_of(store: &crate::store::Store) -> &SqliteStore {
        let crate::store::Store::Sqlite(s) = store else {
            panic!("not SQLite");
        };
        s
    }

    /// A bulk load keeps its page cache across its commits and gives the
    /// writer connection its own back when it ends (real SQLite file: the
    /// pragma only applies there).
    #[tokio::test]
    async fn a_sqlite_load_keeps_its_settings_until_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_file_store(&dir).await;
        let s = sqlite_of(&store);
        let pragma = |name: &'static str| async move {
            sqlx::query_scalar::<_, i64>(&format!("PRAGMA {name}"))
                .fetch_one(s.write_pool())
                .await
                .unwrap()
        };
        let cache = pragma("cache_size").await;
        let checkpoint = pragma("wal_autocheckpoint").await;
        assert_ne!(checkpoint, SQLITE_LOAD_CHECKPOINT_PAGES);
        assert_eq!(pragma("foreign_keys").await, 1);
        let mut loader = store.lead_loader();
        loader.insert(&[lead("A")], 0).await.unwrap();
        loader.commit().await.unwrap();
        assert_eq!(pragma("cache_size").await, -SQLITE_LOAD_CACHE_KIB);
        assert_eq!(
            pragma("wal_autocheckpoint").await,
            SQLITE_LOAD_CHECKPOINT_PAGES
        );
        // Off (in memory) only while the load's transaction is open.
        assert_eq!(pragma("foreign_keys").await, 1);
        assert_eq!(pragma("temp_store").await, 0);
        loader.insert(&[lead("B")], 0).await.unwrap();
        loader.finish().await.unwrap();
        assert_eq!(pragma("cache_size").await, cache);
        assert_eq!(pragma("wal_autocheckpoint").await, checkpoint);
        assert_eq!(pragma("foreign_keys").await, 1);
        assert_eq!(store.count_leads().await.unwrap(), 2);
        store.close().await;
    }

    /// A load dropped with its transaction open (an import cancelled
    /// between commits) leaves none of it stored, and the writer
    /// connection the next writer gets has its foreign keys on.
    #[tokio::test]
    async fn a_dropped_sqlite_load_rolls_back_and_leaves_foreign_keys_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_file_store(&dir).await;
        let s = sqlite_of(&store);
        let mut loader = store.lead_loader();
        loader.insert(&[lead("A"), lead("B")], 0).await.unwrap();
        drop(loader);
        assert_eq!(store.count_leads().await.unwrap(), 0);
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(s.write_pool())
            .await
            .unwrap();
        assert_eq!(fk, 1);
        // The writer refuses an orphan again.
        let orphan = sqlx::query("INSERT INTO contacts (lead_id, position) VALUES (12345, 0)")
            .execute(s.write_pool())
            .await;
        assert!(orphan.is_err(), "{orphan:?}");
        store.close().await;
    }

    /// A load written with the connection's foreign keys off stores only
    /// rows whose parents exist: every kind of child row, checked by
    /// SQLite's own `foreign_key_check` afterwards.
    #[tokio::test]
    async fn a_sqlite_load_passes_the_foreign_key_check() {
        use crate::leads::model::{
            Contact, CustomFieldKind, CustomValue, NewCustomField, OpportunityStatus,
        };
        use crate::leads::phone::PhoneE164;
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_file_store(&dir).await;
        let s = sqlite_of(&store);
        let field = store
            .define_custom_field(&NewCustomField {
                name: "Source".into(),
                kind: CustomFieldKind::Text,
                choices: Vec::new(),
            })
            .await
            .unwrap();
        let full = |i: i64| ValidLead {
            contacts: vec![Contact {
                name: format!("C{i}"),
                phones: vec![
                    PhoneE164::parse(&format!("415 555 {:04}", 100 + i), "US").unwrap(),
                    PhoneE164::parse("+44 20 7946 0958", "US").unwrap(),
                ],
                emails: vec![format!("c{i}@example.com")],
            }],
            custom: vec![(field.id, CustomValue::Text(format!("S{i}")))],
            opportunities: if i % 2 == 0 {
                vec![ValidOpportunity {
                    status_type: OpportunityStatus::Won,
                    created_ms: 5,
                    value: Some(1.0),
                }]
            } else {
                Vec::new()
            },
            created_ms: 1_790_000_000_000 - i,
            ..lead(&format!("L{i}"))
        };
        let mut loader = store.lead_loader();
        let first: Vec<ValidLead> = (0..3).map(full).collect();
        let second: Vec<ValidLead> = (3..7).map(full).collect();
        loader.insert(&first, 0).await.unwrap();
        loader.commit().await.unwrap();
        loader.insert(&second, 0).await.unwrap();
        loader.finish().await.unwrap();
        let count = |table: &'static str| async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(s.pool())
                .await
                .unwrap()
        };
        assert_eq!(count("leads").await, 7);
        assert_eq!(count("contacts").await, 7);
        assert_eq!(count("phones").await, 14);
        assert_eq!(count("lead_custom_values").await, 7);
        assert_eq!(count("opportunities").await, 4);
        let violations = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(s.write_pool())
            .await
            .unwrap();
        assert!(violations.is_empty(), "{} violations", violations.len());
        store.close().await;
    }

    /// A batch of a thousand rows of each kind, text and NULL values
    /// mixed, stores every row under the right parent with the right
    /// values: a slip by one in the ids, or a binding left over from the
    /// row before, would move later rows' values onto their neighbours.
    #[tokio::test]
    async fn a_large_batch_keeps_every_row_in_place() {
        use crate::leads::model::{Contact, CustomFieldKind, CustomValue, NewCustomField};
        use crate::leads::phone::PhoneE164;
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_file_store(&dir).await;
        let field = store
            .define_custom_field(&NewCustomField {
                name: "Source".into(),
                kind: CustomFieldKind::Text,
                choices: Vec::new(),
            })
            .await
            .unwrap();
        let n = 1_007;
        let leads: Vec<ValidLead> = (0..n)
            .map(|i| ValidLead {
                status: format!("S{}", i % 3),
                created_ms: 1_790_000_000_000 - (i as i64 * 7919) % 1000,
                contacts: vec![Contact {
                    name: format!("C{i}"),
                    phones: vec![
                        PhoneE164::parse(&format!("415 555 {:04}", i), "US").unwrap(),
                        PhoneE164::parse(&format!("212 555 {:04}", i), "US").unwrap(),
                    ],
                    emails: if i % 2 == 0 {
                        vec![format!("c{i}@example.com")]
                    } else {
                        Vec::new()
                    },
                }],
                custom: if i % 4 == 0 {
                    Vec::new()
                } else {
                    vec![(field.id, CustomValue::Text(format!("V{i}")))]
                },
                ..lead(&format!("L{i}"))
            })
            .collect();
        let mut loader = store.lead_loader();
        let ids = loader.insert(&leads, 0).await.unwrap();
        loader.finish().await.unwrap();
        assert_eq!(ids.len(), n);
        let stored = store.get_leads(&ids).await.unwrap();
        assert_eq!(stored.len(), n);
        for (i, (id, got)) in ids.iter().zip(&stored).enumerate() {
            assert_eq!(got.id, *id);
            assert_eq!(got.name, format!("L{i}"), "lead {i}");
            assert_eq!(got.status, format!("S{}", i % 3), "lead {i}");
            assert_eq!(
                got.created.timestamp_millis(),
                leads[i].created_ms,
                "lead {i}"
            );
            assert_eq!(got.contacts.len(), 1, "lead {i}");
            assert_eq!(got.contacts[0], leads[i].contacts[0], "lead {i}");
            let value = got.custom.get("Source");
            if i % 4 == 0 {
                assert_eq!(value, None, "lead {i}");
            } else {
                assert_eq!(value, Some(&CustomValue::Text(format!("V{i}"))), "lead {i}");
            }
        }
        store.close().await;
    }

    /// Rows are written in `created_ms` order (ties in input order), each
    /// lead keeping the id of its input position.
    #[test]
    fn leads_are_written_by_created_with_their_own_ids() {
        let mut leads: Vec<ValidLead> = ["A", "B", "C", "D"].iter().map(|n| lead(n)).collect();
        leads[0].created_ms = 30;
        leads[1].created_ms = 10;
        leads[2].created_ms = 30;
        leads[3].created_ms = 20;
        let order: Vec<(&str, i64)> = leads_by_created(&leads, &[1, 2, 3, 4])
            .into_iter()
            .map(|(l, id)| (l.name.as_str(), id))
            .collect();
        assert_eq!(order, vec![("B", 2), ("D", 4), ("A", 1), ("C", 3)]);
    }

    #[test]
    fn copy_text_escapes_what_the_text_format_reserves() {
        let mut buf = Vec::new();
        copy_text(&mut buf, "a\\b\tc\nd\re");
        assert_eq!(buf, b"a\\\\b\\tc\\nd\\re");
        let mut buf = Vec::new();
        copy_float(&mut buf, f64::INFINITY);
        copy_sep(&mut buf);
        copy_float(&mut buf, 0.1);
        copy_sep(&mut buf);
        copy_opt(&mut buf, None::<i64>, copy_int);
        assert_eq!(buf, b"Infinity\t0.1\t\\N");
    }
}
